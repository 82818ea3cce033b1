/* C++'s operator new and delete, defined by hakmem so that the call site of
 * a `new` is the code that wrote it.  Without them libstdc++'s operator new
 * calls malloc from one place, and every `new` of a C++ program is one site
 * of the site table: per-site statistics and learning would be global.
 *
 * Cost: none; a `new` is one call (here) instead of two (libstdc++, then
 * malloc), the same fast path as malloc.  An executable that defines its own
 * operator new keeps it (the executable comes first in symbol lookup).
 *
 * The C++ semantics without linking libstdc++ (a C program under LD_PRELOAD
 * must not load it): the throwing forms call the new_handler until it gives
 * up, then throw std::bad_alloc, through libstdc++'s own functions, found as
 * weak symbols (a program that calls operator new has them).  This file is
 * compiled with -fexceptions so the exception unwinds through it.  The
 * nothrow forms return NULL when allocation fails and no new_handler is
 * installed; with one, they hand the request to libstdc++'s nothrow form,
 * which catches what the handler throws. */
#ifndef HAK_SHIM
#error "cxx.c is built only by the //src:hakmem_malloc target (defines HAK_SHIM)"
#endif

#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>

#include "internal.h"

#define HAK_SHIM_API __attribute__((visibility("default")))
#define CALLER __builtin_return_address(0)

typedef void (*new_handler_t)(void);
/* libstdc++: std::get_new_handler(), std::__throw_bad_alloc() */
extern new_handler_t _ZSt15get_new_handlerv(void) __attribute__((weak));
extern void _ZSt17__throw_bad_allocv(void) __attribute__((weak, noreturn));

static HAK_NOINLINE void* new_failed(size_t size, size_t align, const void* site) {
  for (;;) {
    new_handler_t h = _ZSt15get_new_handlerv ? _ZSt15get_new_handlerv() : NULL;
    if (h == NULL) {
      if (_ZSt17__throw_bad_allocv) _ZSt17__throw_bad_allocv();
      static const char msg[] = "hakmem: error: out of memory in operator new, and no C++ runtime to throw\n";
      (void)!write(STDERR_FILENO, msg, sizeof(msg) - 1);
      abort();
    }
    h();
    void* p = align > HAK_ALIGN ? _hak_aligned(align, size, site) : hak_alloc_fast(size, site);
    if (p != NULL) return p;
  }
}

/* nothrow: NULL, unless a new_handler may free memory or throw; then
 * libstdc++'s own nothrow form (name), which catches the throw. */
static HAK_NOINLINE void* new_nothrow_failed(const char* name, size_t size, size_t align) {
  new_handler_t h = _ZSt15get_new_handlerv ? _ZSt15get_new_handlerv() : NULL;
  if (h == NULL) return NULL;
  void* f = dlsym(RTLD_NEXT, name);
  if (f == NULL) return NULL;
  if (align > HAK_ALIGN) return ((void* (*)(size_t, size_t, const void*))f)(size, align, NULL);
  return ((void* (*)(size_t, const void*))f)(size, NULL);
}

static inline void* new_(size_t size, const void* site) {
  void* p = hak_alloc_fast(size, site);
  return hak_likely(p != NULL) ? p : new_failed(size, 0, site);
}
static inline void* new_aligned(size_t size, size_t align, const void* site) {
  void* p = _hak_aligned(align, size, site);
  return hak_likely(p != NULL) ? p : new_failed(size, align, site);
}

/* Mangled names (Itanium C++ ABI, size_t = unsigned long). */
HAK_SHIM_API void* _Znwm(size_t size);
HAK_SHIM_API void* _Znam(size_t size);
HAK_SHIM_API void* _ZnwmSt11align_val_t(size_t size, size_t align);
HAK_SHIM_API void* _ZnamSt11align_val_t(size_t size, size_t align);
HAK_SHIM_API void* _ZnwmRKSt9nothrow_t(size_t size, const void* nt);
HAK_SHIM_API void* _ZnamRKSt9nothrow_t(size_t size, const void* nt);
HAK_SHIM_API void* _ZnwmSt11align_val_tRKSt9nothrow_t(size_t size, size_t align, const void* nt);
HAK_SHIM_API void* _ZnamSt11align_val_tRKSt9nothrow_t(size_t size, size_t align, const void* nt);
HAK_SHIM_API void* _Znwm(size_t size) { return new_(size, CALLER); }
HAK_SHIM_API void* _Znam(size_t size) { return new_(size, CALLER); }
HAK_SHIM_API void* _ZnwmSt11align_val_t(size_t size, size_t align) { return new_aligned(size, align, CALLER); }
HAK_SHIM_API void* _ZnamSt11align_val_t(size_t size, size_t align) { return new_aligned(size, align, CALLER); }

HAK_SHIM_API void* _ZnwmRKSt9nothrow_t(size_t size, const void* nt) {
  void* p = hak_alloc_fast(size, CALLER);
  return hak_likely(p != NULL) ? p : new_nothrow_failed("_ZnwmRKSt9nothrow_t", size, 0);
}
HAK_SHIM_API void* _ZnamRKSt9nothrow_t(size_t size, const void* nt) {
  void* p = hak_alloc_fast(size, CALLER);
  return hak_likely(p != NULL) ? p : new_nothrow_failed("_ZnamRKSt9nothrow_t", size, 0);
}
HAK_SHIM_API void* _ZnwmSt11align_val_tRKSt9nothrow_t(size_t size, size_t align, const void* nt) {
  void* p = _hak_aligned(align, size, CALLER);
  return hak_likely(p != NULL) ? p : new_nothrow_failed("_ZnwmSt11align_val_tRKSt9nothrow_t", size, align);
}
HAK_SHIM_API void* _ZnamSt11align_val_tRKSt9nothrow_t(size_t size, size_t align, const void* nt) {
  void* p = _hak_aligned(align, size, CALLER);
  return hak_likely(p != NULL) ? p : new_nothrow_failed("_ZnamSt11align_val_tRKSt9nothrow_t", size, align);
}

/* Every delete is a free: hakmem finds the size and the alignment itself. */
#define DELETE(name, ...)                          \
  HAK_SHIM_API void name(void* p, ##__VA_ARGS__); \
  HAK_SHIM_API void name(void* p, ##__VA_ARGS__) { hak_free_fast(p, CALLER, HAK_FN_DELETE); }
DELETE(_ZdlPv)
DELETE(_ZdaPv)
DELETE(_ZdlPvm, size_t size)
DELETE(_ZdaPvm, size_t size)
DELETE(_ZdlPvSt11align_val_t, size_t align)
DELETE(_ZdaPvSt11align_val_t, size_t align)
DELETE(_ZdlPvmSt11align_val_t, size_t size, size_t align)
DELETE(_ZdaPvmSt11align_val_t, size_t size, size_t align)
DELETE(_ZdlPvRKSt9nothrow_t, const void* nt)
DELETE(_ZdaPvRKSt9nothrow_t, const void* nt)
DELETE(_ZdlPvSt11align_val_tRKSt9nothrow_t, size_t align, const void* nt)
DELETE(_ZdaPvSt11align_val_tRKSt9nothrow_t, size_t align, const void* nt)
