/* A wrapper of a wrapper with a frame pointer and a variable-length array
 * (its CFA is rbp plus 16; rsp moves with the array): wrapper_test. */
#include <alloca.h>
#include <stdlib.h>
#include <string.h>

#include "src/test/wrapper_fns.h"

_Thread_local const void* volatile wt_last_outer_ra;

__attribute__((noinline)) void* wt_outer_fp(size_t n, size_t scratch) {
  wt_last_outer_ra = __builtin_return_address(0);
  volatile char buf[scratch + 1]; /* NOLINT: a variable frame, on purpose */
  buf[scratch] = 1;
  void* p = wt_xmalloc_chained(n);
  if (p == NULL || buf[scratch] != 1) abort();
  return p;
}

__attribute__((noinline)) void* wt_alloca_caller(size_t n, size_t pad) {
  volatile char* b = alloca(pad);
  b[0] = 1;
  b[pad - 1] = 1;
  void* p = wt_xmalloc_under_alloca(n);
  if (p == NULL || b[0] != 1) abort();
  return p;
}
