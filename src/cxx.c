/* C++'s operator new and delete, defined by hakmem so that the call site of
 * a `new` is the code that wrote it.  Without them libstdc++'s operator new
 * calls malloc from one place, and every `new` of a C++ program is one site
 * of the site table: per-site statistics and learning would be global.
 *
 * Cost: one relaxed load and a predicted branch (is operator new replaced?)
 * on top of malloc's fast path; a `new` is one call (here) instead of two
 * (libstdc++, then malloc).
 *
 * A program may replace operator new or delete (the executable comes first
 * in symbol lookup, so its definitions win over these).  The standard then
 * has the forms it did not replace call the ones it did (new[] calls new,
 * sized delete calls delete, nothrow calls the throwing form): when the
 * program defines any of the four base forms, every form here hands the
 * request to libstdc++'s own, which does exactly that.
 *
 * The C++ semantics without linking libstdc++ (a C program under LD_PRELOAD
 * must not load it): the throwing forms call the new_handler until it gives
 * up, then throw std::bad_alloc, through libstdc++'s own functions, looked
 * up when allocation fails (libstdc++ may have been loaded by dlopen since,
 * even privately to the plugin that called: then through the caller's own
 * link map).  This file is compiled with -fexceptions so the exception
 * unwinds through it.  The nothrow forms return NULL when allocation fails
 * and no new_handler is installed; with one, they hand the request to
 * libstdc++'s nothrow form, which catches what the handler throws. */
#ifndef HAK_SHIM
#error "cxx.c is built only by the //src:hakmem_malloc target (defines HAK_SHIM)"
#endif

#define _GNU_SOURCE 1 /* dladdr1 */
#include <dlfcn.h>
#include <link.h>
#include <stdlib.h>
#include <unistd.h>

#include "internal.h"

#define HAK_SHIM_API __attribute__((visibility("default")))
#define CALLER __builtin_return_address(0)

typedef void (*new_handler_t)(void);

/* libstdc++'s function name: found globally, else through the link map of
 * the object that called (a plugin opened RTLD_LOCAL and its libstdc++). */
static void* cxx_sym(const char* name, const void* caller) {
  void* f = dlsym(RTLD_DEFAULT, name);
  if (f == NULL && caller != NULL) {
    Dl_info info;
    struct link_map* lm = NULL;
    if (dladdr1(caller, &info, (void**)&lm, RTLD_DL_LINKMAP) != 0 && lm != NULL) f = dlsym(lm, name);
  }
  return f;
}

static new_handler_t new_handler(const void* caller) {
  new_handler_t (*get)(void) = (new_handler_t (*)(void))cxx_sym("_ZSt15get_new_handlerv", caller);
  return get != NULL ? get() : NULL;
}

static HAK_NOINLINE void* new_failed(size_t size, size_t align, const void* site) {
  for (;;) {
    new_handler_t h = new_handler(site);
    if (h == NULL) {
      void (*throw_bad_alloc)(void) = (void (*)(void))cxx_sym("_ZSt17__throw_bad_allocv", site);
      if (throw_bad_alloc != NULL) throw_bad_alloc();
      static const char msg[] = "hakmem: error: out of memory in operator new, and no C++ runtime to throw\n";
      (void)!write(STDERR_FILENO, msg, sizeof(msg) - 1);
      abort();
    }
    h();
    void* p = align > HAK_ALIGN ? _hak_aligned(align, size, site) : hak_alloc_fast(size, site);
    if (p != NULL) return p;
  }
}

/* ---- a program that replaces operator new or delete -------------------- */

/* Every form, in the order of the table of libstdc++'s own. */
enum {
  F_NEW, F_NEW_A, F_NEW_AL, F_NEW_A_AL, F_NEW_NT, F_NEW_A_NT, F_NEW_AL_NT, F_NEW_A_AL_NT,
  F_DEL, F_DEL_A, F_DEL_S, F_DEL_A_S, F_DEL_AL, F_DEL_A_AL, F_DEL_S_AL, F_DEL_A_S_AL,
  F_DEL_NT, F_DEL_A_NT, F_DEL_AL_NT, F_DEL_A_AL_NT, F_COUNT
};
static const char* const form_names[F_COUNT] = {
    "_Znwm", "_Znam", "_ZnwmSt11align_val_t", "_ZnamSt11align_val_t",
    "_ZnwmRKSt9nothrow_t", "_ZnamRKSt9nothrow_t", "_ZnwmSt11align_val_tRKSt9nothrow_t",
    "_ZnamSt11align_val_tRKSt9nothrow_t",
    "_ZdlPv", "_ZdaPv", "_ZdlPvm", "_ZdaPvm", "_ZdlPvSt11align_val_t", "_ZdaPvSt11align_val_t",
    "_ZdlPvmSt11align_val_t", "_ZdaPvmSt11align_val_t", "_ZdlPvRKSt9nothrow_t", "_ZdaPvRKSt9nothrow_t",
    "_ZdlPvSt11align_val_tRKSt9nothrow_t", "_ZdaPvSt11align_val_tRKSt9nothrow_t",
};
static _Atomic(void*) next_form[F_COUNT]; /* libstdc++'s, looked up once */
static _Atomic(int) replaced_state;       /* 0: not looked, 1: ours, 2: replaced */

HAK_SHIM_API void* _Znwm(size_t size);
HAK_SHIM_API void _ZdlPv(void* p);
HAK_SHIM_API void* _ZnwmSt11align_val_t(size_t size, size_t align);
HAK_SHIM_API void _ZdlPvSt11align_val_t(void* p, size_t align);
/* our own definitions' addresses (the global names may resolve to the
 * program's) */
extern __typeof(_Znwm) hak_self_new __attribute__((alias("_Znwm"), visibility("hidden")));
extern __typeof(_ZdlPv) hak_self_delete __attribute__((alias("_ZdlPv"), visibility("hidden")));
extern __typeof(_ZnwmSt11align_val_t) hak_self_new_al __attribute__((alias("_ZnwmSt11align_val_t"), visibility("hidden")));
extern __typeof(_ZdlPvSt11align_val_t) hak_self_delete_al
    __attribute__((alias("_ZdlPvSt11align_val_t"), visibility("hidden")));

static HAK_NOINLINE bool probe_replaced(void) {
  void* const ours[4] = {(void*)hak_self_new, (void*)hak_self_delete, (void*)hak_self_new_al, (void*)hak_self_delete_al};
  static const int forms[4] = {F_NEW, F_DEL, F_NEW_AL, F_DEL_AL};
  bool replaced = false;
  for (int i = 0; i < 4; i++) {
    void* f = dlsym(RTLD_DEFAULT, form_names[forms[i]]);
    replaced |= f != NULL && f != ours[i];
  }
#ifdef HAK_FAULT_CXX_REPLACED_IGNORED /* fault injection: the first version served every form itself */
  replaced = false;
#endif
  atomic_store_explicit(&replaced_state, replaced ? 2 : 1, memory_order_relaxed);
  return replaced;
}

/* Does the program define operator new or delete itself? */
static inline bool replaced(void) {
  int r = atomic_load_explicit(&replaced_state, memory_order_relaxed);
  return hak_likely(r == 1) ? false : r == 2 || probe_replaced();
}

/* libstdc++'s own form (which calls the program's); NULL: none loaded. */
static HAK_NOINLINE void* next(int form) {
  void* f = atomic_load_explicit(&next_form[form], memory_order_relaxed);
  if (f == NULL) {
    f = dlsym(RTLD_NEXT, form_names[form]);
    atomic_store_explicit(&next_form[form], f, memory_order_relaxed);
  }
  return f;
}

typedef void* (*new_fn)(size_t);
typedef void* (*new_al_fn)(size_t, size_t);
typedef void* (*new_nt_fn)(size_t, const void*);
typedef void* (*new_al_nt_fn)(size_t, size_t, const void*);
typedef void (*del_fn)(void*);
typedef void (*del_2_fn)(void*, size_t);
typedef void (*del_3_fn)(void*, size_t, size_t);
typedef void (*del_nt_fn)(void*, const void*);
typedef void (*del_al_nt_fn)(void*, size_t, const void*);

/* A replaced base form with no libstdc++ after us: call the program's. */
static void* program_new(size_t size, size_t align) {
  if (align > HAK_ALIGN) {
    new_al_fn f = (new_al_fn)dlsym(RTLD_DEFAULT, form_names[F_NEW_AL]);
    return f != NULL ? f(size, align) : new_failed(size, align, NULL);
  }
  new_fn f = (new_fn)dlsym(RTLD_DEFAULT, form_names[F_NEW]);
  return f != NULL ? f(size) : new_failed(size, 0, NULL);
}
static void program_delete(void* p, size_t align) {
  del_fn f = (del_fn)dlsym(RTLD_DEFAULT, form_names[align > HAK_ALIGN ? F_DEL_AL : F_DEL]);
  if (f != NULL && align <= HAK_ALIGN) f(p);
  else if (f != NULL) ((del_2_fn)f)(p, align);
  else hak_free_fast(p, HAK_FN_DELETE);
}

/* ---- the forms --------------------------------------------------------- */

static inline void* new_(size_t size, const void* site) {
  void* p = hak_alloc_fast(size, site);
  return hak_likely(p != NULL) ? p : new_failed(size, 0, site);
}
static inline void* new_aligned(size_t size, size_t align, const void* site) {
  void* p = _hak_aligned(align, size, site);
  return hak_likely(p != NULL) ? p : new_failed(size, align, site);
}

/* nothrow: NULL, unless a new_handler may free memory or throw; then
 * libstdc++'s own nothrow form, which catches the throw. */
static HAK_NOINLINE void* new_nothrow_failed(int form, size_t size, size_t align, const void* site) {
  if (new_handler(site) == NULL) return NULL;
  void* f = next(form);
  if (f == NULL) return NULL;
  if (align > HAK_ALIGN) return ((new_al_nt_fn)f)(size, align, NULL);
  return ((new_nt_fn)f)(size, NULL);
}

/* Mangled names (Itanium C++ ABI, size_t = unsigned long). */
HAK_SHIM_API void* _Znam(size_t size);
HAK_SHIM_API void* _ZnamSt11align_val_t(size_t size, size_t align);
HAK_SHIM_API void* _ZnwmRKSt9nothrow_t(size_t size, const void* nt);
HAK_SHIM_API void* _ZnamRKSt9nothrow_t(size_t size, const void* nt);
HAK_SHIM_API void* _ZnwmSt11align_val_tRKSt9nothrow_t(size_t size, size_t align, const void* nt);
HAK_SHIM_API void* _ZnamSt11align_val_tRKSt9nothrow_t(size_t size, size_t align, const void* nt);

/* Each new form: served here, or (replaced) by libstdc++'s form, or (none
 * loaded after us) by the program's base form. */
#define NEW_PLAIN(name, form)                                              \
  HAK_SHIM_API void* name(size_t size) {                                   \
    if (hak_unlikely(replaced())) {                                        \
      new_fn f = (new_fn)next(form);                                       \
      return f != NULL ? f(size) : program_new(size, 0);                   \
    }                                                                      \
    return new_(size, CALLER);                                             \
  }
#define NEW_ALIGNED(name, form)                                            \
  HAK_SHIM_API void* name(size_t size, size_t align) {                     \
    if (hak_unlikely(replaced())) {                                        \
      new_al_fn f = (new_al_fn)next(form);                                 \
      return f != NULL ? f(size, align) : program_new(size, align);        \
    }                                                                      \
    return new_aligned(size, align, CALLER);                               \
  }
#define NEW_NOTHROW(name, form)                                            \
  HAK_SHIM_API void* name(size_t size, const void* nt) {                   \
    if (hak_unlikely(replaced())) {                                        \
      new_nt_fn f = (new_nt_fn)next(form);                                 \
      return f != NULL ? f(size, nt) : NULL;                               \
    }                                                                      \
    void* p = hak_alloc_fast(size, CALLER);                                \
    return hak_likely(p != NULL) ? p : new_nothrow_failed(form, size, 0, CALLER); \
  }
#define NEW_ALIGNED_NOTHROW(name, form)                                    \
  HAK_SHIM_API void* name(size_t size, size_t align, const void* nt) {     \
    if (hak_unlikely(replaced())) {                                        \
      new_al_nt_fn f = (new_al_nt_fn)next(form);                           \
      return f != NULL ? f(size, align, nt) : NULL;                        \
    }                                                                      \
    void* p = _hak_aligned(align, size, CALLER);                           \
    return hak_likely(p != NULL) ? p : new_nothrow_failed(form, size, align, CALLER); \
  }

NEW_PLAIN(_Znwm, F_NEW)
NEW_PLAIN(_Znam, F_NEW_A)
NEW_ALIGNED(_ZnwmSt11align_val_t, F_NEW_AL)
NEW_ALIGNED(_ZnamSt11align_val_t, F_NEW_A_AL)
NEW_NOTHROW(_ZnwmRKSt9nothrow_t, F_NEW_NT)
NEW_NOTHROW(_ZnamRKSt9nothrow_t, F_NEW_A_NT)
NEW_ALIGNED_NOTHROW(_ZnwmSt11align_val_tRKSt9nothrow_t, F_NEW_AL_NT)
NEW_ALIGNED_NOTHROW(_ZnamSt11align_val_tRKSt9nothrow_t, F_NEW_A_AL_NT)

/* Every delete is a free: hakmem finds the size and the alignment itself.
 * Replaced: libstdc++'s form, which calls the program's delete. */
#define DELETE(name, form, fn_t, args, al, ...)                           \
  HAK_SHIM_API void name(void* p, ##__VA_ARGS__);                          \
  HAK_SHIM_API void name(void* p, ##__VA_ARGS__) {                         \
    if (hak_unlikely(replaced())) {                                        \
      fn_t f = (fn_t)next(form);                                           \
      if (f != NULL) f args;                                               \
      else program_delete(p, al);                                          \
      return;                                                              \
    }                                                                      \
    hak_free_fast(p, HAK_FN_DELETE);                                       \
  }
DELETE(_ZdlPv, F_DEL, del_fn, (p), 0)
DELETE(_ZdaPv, F_DEL_A, del_fn, (p), 0)
DELETE(_ZdlPvm, F_DEL_S, del_2_fn, (p, size), 0, size_t size)
DELETE(_ZdaPvm, F_DEL_A_S, del_2_fn, (p, size), 0, size_t size)
DELETE(_ZdlPvSt11align_val_t, F_DEL_AL, del_2_fn, (p, align), align, size_t align)
DELETE(_ZdaPvSt11align_val_t, F_DEL_A_AL, del_2_fn, (p, align), align, size_t align)
DELETE(_ZdlPvmSt11align_val_t, F_DEL_S_AL, del_3_fn, (p, size, align), align, size_t size, size_t align)
DELETE(_ZdaPvmSt11align_val_t, F_DEL_A_S_AL, del_3_fn, (p, size, align), align, size_t size, size_t align)
DELETE(_ZdlPvRKSt9nothrow_t, F_DEL_NT, del_nt_fn, (p, nt), 0, const void* nt)
DELETE(_ZdaPvRKSt9nothrow_t, F_DEL_A_NT, del_nt_fn, (p, nt), 0, const void* nt)
DELETE(_ZdlPvSt11align_val_tRKSt9nothrow_t, F_DEL_AL_NT, del_al_nt_fn, (p, align, nt), align, size_t align,
       const void* nt)
DELETE(_ZdaPvSt11align_val_tRKSt9nothrow_t, F_DEL_A_AL_NT, del_al_nt_fn, (p, align, nt), align, size_t align,
       const void* nt)
