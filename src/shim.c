/* The malloc shim: the only file that defines malloc and friends.  It only
 * forwards to the allocator (fast paths inlined), passing the caller's
 * return address as the call site.  Linked into libhakmem.so and into the
 * shim tests; never into //src:hakmem. */
#ifndef HAK_SHIM
#error "shim.c is built only by the //src:hakmem_malloc target (defines HAK_SHIM)"
#endif

#include <errno.h>
#include <malloc.h>
#include <stdlib.h>
#include <unistd.h>

#include "internal.h"

#define HAK_SHIM_API __attribute__((visibility("default")))
#define CALLER __builtin_return_address(0)

HAK_SHIM_API void* malloc(size_t size) { return hak_alloc_fast(size, CALLER); }

HAK_SHIM_API void free(void* p) { hak_free_fast(p, CALLER, HAK_FN_FREE); }

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

/* glibc's memalign rounds an alignment that is not a power of two up. */
HAK_SHIM_API void* memalign(size_t align, size_t size) {
  if (align != 0 && (align & (align - 1)) != 0) {
    if (align > ((size_t)1 << 62)) {
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
HAK_SHIM_API void __libc_free(void* p) { hak_free_fast(p, CALLER, HAK_FN_FREE); }
HAK_SHIM_API void* __libc_calloc(size_t n, size_t size) { return _hak_calloc(n, size, CALLER); }
HAK_SHIM_API void* __libc_realloc(void* p, size_t size) { return _hak_realloc(p, size, CALLER); }
HAK_SHIM_API void* __libc_memalign(size_t align, size_t size) { return memalign(align, size); }
HAK_SHIM_API void* __libc_valloc(size_t size) { return valloc(size); }
HAK_SHIM_API void* __libc_pvalloc(size_t size) { return pvalloc(size); }
