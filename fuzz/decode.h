/* Bytes -> trace ops, shared by the API fuzzers.  Every byte string is a
 * valid op sequence: sizes cover every tier (with a rare impossible size),
 * ids come from a small space so frees and reallocs hit live blocks. */
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

static inline size_t decode_size(bytes_t* b) {
  unsigned t = next_byte(b);
  if (t == 0xff) return SIZE_MAX - next_byte(b);        /* impossible */
  unsigned tier = t >> 4;
  if (tier < 10) return next_u16(b) % 1025;              /* small        */
  if (tier < 13) return 1024 + next_u16(b) * 2u % (127u << 10); /* size classes */
  if (tier < 15) return (128u << 10) + (size_t)next_u16(b) * 32 % (2u << 20); /* large */
  return (2u << 20) + (size_t)next_u16(b) * 256 % (14u << 20); /* huge */
}

/* Decodes up to max_ops ops for `threads` threads; a round ends every 24
 * ops (and on op 7 when threads > 1); a check closes every 4th round. */
static inline void decode_ops(const uint8_t* data, size_t size, int threads, size_t max_ops, trace_t* t) {
  bytes_t b = {data, data + size};
  size_t ops = 0, rounds = 0;
  while (b.p < b.end && ops < max_ops) {
    unsigned c = next_byte(&b);
    trace_op_t o = {.thread = (uint8_t)((c >> 3) % (unsigned)threads), .id = next_byte(&b) % 64};
    switch (c & 7) {
      case 0: case 1: case 2: o.kind = OP_ALLOC; o.a = decode_size(&b); break;
      case 3: o.kind = OP_CALLOC; o.a = 1 + next_byte(&b) % 16; o.b = decode_size(&b) / o.a; break;
      case 4: o.kind = OP_MEMALIGN; o.a = (size_t)1 << (3 + next_byte(&b) % 19); o.b = decode_size(&b); break;
      case 5: o.kind = OP_REALLOC; o.a = decode_size(&b); break;
      case 6: o.kind = OP_FREE; break;
      default: o.kind = threads > 1 ? OP_ROUND : OP_FREE; break;
    }
    if (o.kind == OP_MEMALIGN && (next_byte(&b) & 31) == 0) o.a = 24; /* a bad alignment, now and then */
    trace_push(t, o);
    if (o.kind == OP_ROUND || ++ops % 24 == 0) {
      if (o.kind != OP_ROUND) trace_push(t, (trace_op_t){.kind = OP_ROUND});
      if (++rounds % 4 == 0) trace_push(t, (trace_op_t){.kind = OP_CHECK});
    }
  }
  trace_push(t, (trace_op_t){.kind = OP_CHECK});
}

#endif
