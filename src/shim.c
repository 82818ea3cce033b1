/* The malloc shim: the only file that defines malloc and friends.  It only
 * forwards to the allocator (fast paths inlined), passing the caller's
 * return address as the call site.  Linked into libhakmem.so and into the
 * shim tests; never into //src:hakmem. */
#ifndef HAK_SHIM
#error "shim.c is built only by the //src:hakmem_malloc target (defines HAK_SHIM)"
#endif

#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "internal.h"

#define HAK_SHIM_API __attribute__((visibility("default")))
#define CALLER __builtin_return_address(0)

#ifdef HAK_FAULT_SLOW_MALLOC /* self-test of the nightly gate: every malloc spends ~40 ns more */
HAK_SHIM_API void* malloc(size_t size) {
  for (volatile int i = 0; i < 40; i++) {
  }
  return hak_alloc_fast(size, CALLER);
}
#else
HAK_SHIM_API void* malloc(size_t size) { return hak_alloc_fast(size, CALLER); }
#endif

HAK_SHIM_API void free(void* p) { hak_free_fast(p, HAK_FN_FREE); }

HAK_SHIM_API void* calloc(size_t n, size_t size) { return _hak_calloc(n, size, CALLER); }

HAK_SHIM_API void* realloc(void* p, size_t size) { return _hak_realloc(p, size, CALLER); }

HAK_SHIM_API void* reallocarray(void* p, size_t n, size_t size) {
  size_t total;
  if (__builtin_mul_overflow(n, size, &total)) {
    errno = ENOMEM;
    return NULL;
  }
  return _hak_realloc(p, total, CALLER);
}

HAK_SHIM_API int posix_memalign(void** out, size_t align, size_t size) {
  if (align % sizeof(void*) != 0 || (align & (align - 1)) != 0 || align == 0) return EINVAL;
  int saved = errno;
  void* p = _hak_aligned(align, size, CALLER);
  if (p == NULL) {
    int err = errno;
    errno = saved;
    return err == EINVAL ? EINVAL : ENOMEM;
  }
  *out = p;
  return 0;
}

HAK_SHIM_API void* aligned_alloc(size_t align, size_t size) { return _hak_aligned(align, size, CALLER); }

/* glibc's memalign rounds an alignment that is not a power of two up (up
 * to 2^63, which then finds no memory: ENOMEM); one past SIZE_MAX / 2 + 1
 * is EINVAL. */
HAK_SHIM_API void* memalign(size_t align, size_t size) {
  if (align != 0 && (align & (align - 1)) != 0) {
    if (align > ((size_t)1 << 63)) {
      errno = EINVAL;
      return NULL;
    }
    size_t a = 1;
    while (a < align) a <<= 1;
    align = a;
  }
  return _hak_aligned(align == 0 ? 1 : align, size, CALLER);
}

HAK_SHIM_API void* valloc(size_t size) { return _hak_aligned((size_t)getpagesize(), size, CALLER); }

HAK_SHIM_API void* pvalloc(size_t size) {
  size_t page = (size_t)getpagesize();
  if (size > PTRDIFF_MAX) {
    errno = ENOMEM;
    return NULL;
  }
  size = size == 0 ? page : (size + page - 1) & ~(page - 1);
  return _hak_aligned(page, size, CALLER);
}

HAK_SHIM_API size_t malloc_usable_size(void* p) { return _hak_usable_size(p, HAK_FN_USABLE_SIZE); }

/* glibc's extensions, in hakmem's terms (stats.c:_hak_heapinfo). */
#ifndef HAK_FAULT_TRIM_TO_GLIBC /* fault injection: glibc's malloc_trim trims its idle arena */
HAK_SHIM_API int malloc_trim(size_t pad) { return _hak_trim(); }
#endif

HAK_SHIM_API struct mallinfo2 mallinfo2(void) {
  hak_heapinfo_t hi;
  _hak_heapinfo(&hi);
  return (struct mallinfo2){.arena = hi.arena, .hblks = hi.hblks, .hblkhd = hi.hblkhd, .uordblks = hi.uordblks,
                            .fordblks = hi.fordblks, .keepcost = hi.keepcost};
}

static int clamp_int(size_t v) { return v > (size_t)__INT_MAX__ ? __INT_MAX__ : (int)v; }
HAK_SHIM_API struct mallinfo mallinfo(void) {
  struct mallinfo2 m = mallinfo2();
  return (struct mallinfo){.arena = clamp_int(m.arena), .hblks = clamp_int(m.hblks), .hblkhd = clamp_int(m.hblkhd),
                           .uordblks = clamp_int(m.uordblks), .fordblks = clamp_int(m.fordblks),
                           .keepcost = clamp_int(m.keepcost)};
}

/* Accepted and ignored, with glibc's answers (1; 0 for an M_MXFAST out of
 * its range): hakmem's knobs are its HAKMEM_* options. */
HAK_SHIM_API int mallopt(int param, int value) {
  if (param == M_MXFAST) return value >= 0 && (size_t)value <= 80 * sizeof(size_t) / 4;
  return 1;
}

HAK_SHIM_API void malloc_stats(void) { hak_stats_print(STDERR_FILENO, 0); }

HAK_SHIM_API int malloc_info(int options, FILE* fp) {
  if (options != 0) {
    errno = EINVAL;
    return -1;
  }
  struct mallinfo2 m = mallinfo2();
  fprintf(fp,
          "<malloc version=\"hakmem-1\">\n<heap nr=\"0\">\n"
          "<system type=\"current\" size=\"%zu\"/>\n<total type=\"mmap\" count=\"%zu\" size=\"%zu\"/>\n"
          "<total type=\"rest\" size=\"%zu\"/>\n</heap>\n</malloc>\n",
          m.arena, m.hblks, m.hblkhd, m.keepcost);
  return 0;
}

/* glibc's internal names, which some libraries call directly: same
 * functions, so a block never crosses allocators. */
void* __libc_malloc(size_t size);
void __libc_free(void* p);
void* __libc_calloc(size_t n, size_t size);
void* __libc_realloc(void* p, size_t size);
void* __libc_memalign(size_t align, size_t size);
void* __libc_valloc(size_t size);
void* __libc_pvalloc(size_t size);
HAK_SHIM_API void* __libc_malloc(size_t size) { return hak_alloc_fast(size, CALLER); }
HAK_SHIM_API void __libc_free(void* p) { hak_free_fast(p, HAK_FN_FREE); }
HAK_SHIM_API void* __libc_calloc(size_t n, size_t size) { return _hak_calloc(n, size, CALLER); }
HAK_SHIM_API void* __libc_realloc(void* p, size_t size) { return _hak_realloc(p, size, CALLER); }
HAK_SHIM_API void* __libc_memalign(size_t align, size_t size) { return memalign(align, size); }
HAK_SHIM_API void* __libc_valloc(size_t size) { return valloc(size); }
HAK_SHIM_API void* __libc_pvalloc(size_t size) { return pvalloc(size); }
