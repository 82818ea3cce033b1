/* Bytes -> trace ops, shared by the API fuzzers.  Every byte string is a
 * valid op sequence.  Reaches every state the API has:
 *  - ids 0..1023 (2 bytes), so pages fill and empty and many blocks live;
 *  - odd sizes on every tier: small, size classes, large runs, huge blocks
 *    up to 64 MiB (past BigCache's largest class), a rare impossible size;
 *  - alignments 1 B .. 1 GiB, and now and then a bad one;
 *  - realloc(NULL, n) (realloc of a dead id), realloc(p, 0), calloc with an
 *    overflowing product, bulk allocations and frees of id ranges.
 * Op byte: low 4 bits the kind, high 4 bits the thread. */
#ifndef HAK_FUZZ_DECODE_H
#define HAK_FUZZ_DECODE_H

#include <stdint.h>

#include "verify/trace.h"

typedef struct {
  const uint8_t* p;
  const uint8_t* end;
} bytes_t;

static inline unsigned next_byte(bytes_t* b) { return b->p < b->end ? *b->p++ : 0; }
static inline unsigned next_u16(bytes_t* b) { return next_byte(b) | next_byte(b) << 8; }

#define DECODE_IDS 1024

static inline size_t decode_size(bytes_t* b) {
  unsigned t = next_byte(b);
  if (t == 0xff) return SIZE_MAX - next_byte(b);        /* impossible */
  unsigned tier = t >> 4, odd = t & 15;
  size_t v = next_u16(b);
  if (tier < 9) return v % 1025;                         /* small        */
  if (tier < 12) return 1024 + (v * 2 + (odd & 1)) % (127u << 10); /* size classes */
  if (tier < 14) return (128u << 10) + (v * 32 + odd) % (2u << 20); /* large */
  /* (0xff is taken above: the first version tested odd != 15 here, and
   * no size past BigCache was ever decoded; fuzz/coverage.sh showed huge
   * realloc's remap path unreached) */
  if (tier == 14 || odd != 14) return (2u << 20) + (v * 256 + odd) % (14u << 20); /* huge, cached classes */
  return (16u << 20) + (v * 1024 + odd) % (48u << 20);  /* huge, past BigCache (0xfe: 1 in 256) */
}

/* 1 B .. 1 GiB; 1 in 32 a bad alignment (not a power of two). */
static inline size_t decode_align(bytes_t* b) {
  unsigned v = next_byte(b);
  if ((v & 31) == 31) return 24;
  return (size_t)1 << ((v >> 3) % 31);
}

/* Decodes up to max_ops ops for `threads` threads; a round ends every 24
 * ops (and on kind 7 when threads > 1); a check closes every 4th round. */
static inline void decode_ops(const uint8_t* data, size_t size, int threads, size_t max_ops, trace_t* t) {
  bytes_t b = {data, data + size};
  size_t ops = 0, rounds = 0;
  while (b.p < b.end && ops < max_ops) {
    unsigned c = next_byte(&b);
    uint8_t thread = (uint8_t)((c >> 4) % (unsigned)threads);
    uint32_t id = next_u16(&b) % DECODE_IDS;
    trace_op_t o = {.thread = thread, .id = id};
    unsigned bulk = 0;
    switch (c & 15) {
      case 0: case 1: case 2: case 13: case 14: case 15: o.kind = OP_ALLOC; o.a = decode_size(&b); break;
      case 3: o.kind = OP_CALLOC; o.a = 1 + next_byte(&b) % 16; o.b = decode_size(&b) / o.a; break;
      case 4: o.kind = OP_MEMALIGN; o.a = decode_align(&b); o.b = decode_size(&b); break;
      case 5: o.kind = OP_REALLOC; o.a = decode_size(&b); break; /* a dead id: realloc(NULL, n) */
      case 6: o.kind = OP_FREE; break;
      case 7: o.kind = threads > 1 ? OP_ROUND : OP_FREE; break;
      case 8: o.kind = OP_ALLOC; o.a = decode_size(&b); bulk = 8 + next_byte(&b) % 57; break; /* 8..64 blocks */
      case 9: o.kind = OP_FREE; bulk = 8 + next_byte(&b) % 57; break;
      case 10: o.kind = OP_REALLOC; o.a = 0; break; /* realloc(p, 0): frees */
      default: /* 11: a calloc whose product overflows */
        o.kind = OP_CALLOC;
        o.a = ((size_t)1 << 33) + next_byte(&b);
        o.b = ((size_t)1 << 31) + next_byte(&b);
        break;
    }
    for (unsigned k = 0; k <= bulk && ops < max_ops; k++) {
      trace_op_t e = o;
      e.id = (o.id + k) % DECODE_IDS;
      trace_push(t, e);
      if (e.kind == OP_ROUND || ++ops % 24 == 0) {
        if (e.kind != OP_ROUND) trace_push(t, (trace_op_t){.kind = OP_ROUND});
        if (++rounds % 4 == 0) trace_push(t, (trace_op_t){.kind = OP_CHECK});
      }
    }
  }
  trace_push(t, (trace_op_t){.kind = OP_CHECK});
}

#endif
