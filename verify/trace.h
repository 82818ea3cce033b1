/* Traces: op sequences in a text format, and the executor that runs them
 * through hakmem with the shadow heap and the invariant checker.  Fuzzers
 * decode their bytes into these ops and run the same executor, so every
 * finding can be dumped as a trace and replayed without the fuzzer.
 *
 * Format (one op per line, '#' starts a comment):
 *   hakmem-trace 1
 *   threads N                   (1..8; ops run in rounds, see below)
 *   round                       (barrier: all threads finish the round)
 *   t<k> alloc <id> <size>
 *   t<k> calloc <id> <count> <size>
 *   t<k> memalign <id> <align> <size>
 *   t<k> realloc <id> <size>
 *   t<k> free <id>
 *   check                       (hak_check_heap, between rounds)
 * Within a round each thread runs its ops in order, concurrently with the
 * others; an id is used by one thread per round, so a block allocated by
 * one thread and freed by another in a later round is a cross-thread free.
 * Ops on ids in the wrong state (alloc of a live id, free of a dead one)
 * are skipped, so any byte string decodes to a valid trace. */
#ifndef HAK_TRACE_H
#define HAK_TRACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum { OP_ALLOC, OP_CALLOC, OP_MEMALIGN, OP_REALLOC, OP_FREE, OP_ROUND, OP_CHECK } trace_kind_t;

typedef struct {
  trace_kind_t kind;
  uint8_t thread;
  uint32_t id;
  size_t a, b; /* size; or count, size; or align, size */
} trace_op_t;

typedef struct {
  int threads;
  size_t n, cap;
  trace_op_t* ops; /* mmap'd: not from the allocator under test */
} trace_t;

#define TRACE_MAX_IDS 4096

void trace_init(trace_t* t, int threads);
void trace_free(trace_t* t);
void trace_push(trace_t* t, trace_op_t op);
bool trace_parse(trace_t* t, FILE* f);  /* false on a syntax error (reported) */
void trace_print(const trace_t* t, FILE* f);
/* Runs the trace through hak_*; returns false on the first violation the
 * shadow heap or hak_check_heap reports.  Frees what is left at the end. */
bool trace_run(const trace_t* t, uint64_t seed);
/* Fuzzers: writes the trace to $HAKMEM_TRACE_OUT if set. */
void trace_dump_if_asked(const trace_t* t);

#endif
