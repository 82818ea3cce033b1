/* Clock and generator shared by the benchmark and stress programs (which
 * stay allocator-agnostic: nothing here allocates). */
#ifndef HAK_BENCH_UTIL_H
#define HAK_BENCH_UTIL_H

#include <stdint.h>
#include <time.h>

static inline double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* xorshift64: *s must not be 0 */
static inline uint64_t rnd(uint64_t* s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

#endif
