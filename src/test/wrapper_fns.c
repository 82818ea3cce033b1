/* Allocation wrappers for wrapper_test, compiled as programs compile theirs:
 * -O2 without a frame pointer (the CFA is rsp plus the frame's size), and
 * one with a frame pointer and a variable-length array (the CFA is rbp
 * based: the frame's size is not known until run time).  Each checks its
 * result after the call, so the call of the allocator is not a tail call. */
#include <stdlib.h>

#include "src/hakmem.h"
#include "src/test/wrapper_fns.h"

_Thread_local const void* volatile wt_last_site;
_Thread_local const void* volatile wt_last_ra;

/* the test's malloc: a shim as libhakmem's, the caller's return address */
__attribute__((noinline)) void* wt_malloc(size_t n) {
  wt_last_site = __builtin_return_address(0);
  return hak_alloc_at(n, __builtin_return_address(0));
}

#define WRAPPER(name)                                \
  __attribute__((noinline)) void* name(size_t n) {  \
    wt_last_ra = __builtin_return_address(0);       \
    void* p = wt_malloc(n);                         \
    if (p == NULL) abort();                         \
    return p;                                       \
  }
WRAPPER(wt_xmalloc)
WRAPPER(wt_xmalloc_chained)
WRAPPER(wt_helper_of_two)
WRAPPER(wt_helper_of_one)
WRAPPER(wt_xmalloc_threads)
WRAPPER(wt_xmalloc_off)
WRAPPER(wt_helper_of_one_function)
WRAPPER(wt_helper_of_three)
WRAPPER(wt_xmalloc_slow_turns)
WRAPPER(wt_xmalloc_under_alloca)
WRAPPER(wt_xmalloc_clone)
WRAPPER(wt_xmalloc_late)
WRAPPER(wt_xmalloc_small)
WRAPPER(wt_xmalloc_fork)
WRAPPER(wt_inner_startup)

/* A wrapper above a helper only it calls (PyMem_RawMalloc above
 * _PyMem_RawMalloc): the site is the helper's call, the wrapper is one
 * level up. */
__attribute__((noinline)) void* wt_outer_startup(size_t n) {
  wt_last_outer_ra = __builtin_return_address(0);
  void* p = wt_inner_startup(n);
  if (p == NULL) abort();
  return p;
}

/* Runs fn on the stack below top with the usual inline asm: this
 * function's rules (rsp plus its frame, no frame pointer) do not know rsp
 * moved, so they claim a return address above top. */
__attribute__((noinline)) void wt_call_on_stack(void* top, void (*fn)(void)) {
  __asm__ volatile("mov %%rsp, %%rbx\n\t"
                   "mov %0, %%rsp\n\t"
                   "call *%1\n\t"
                   "mov %%rbx, %%rsp"
                   :
                   : "r"(top), "r"(fn)
                   : "rbx", "rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "memory", "cc");
}

/* A first frame, as a thread's or a clone child's start: its unwind rule
 * says it has no caller (DW_CFA_undefined on the return address). */
__asm__(".text\n"
        ".globl wt_first_frame\n"
        ".type wt_first_frame, @function\n"
        "wt_first_frame:\n"
        ".cfi_startproc\n"
        ".cfi_undefined rip\n"
        "  nop\n"
        ".globl wt_first_frame_inside\n"
        "wt_first_frame_inside:\n"
        "  nop\n"
        "  ret\n"
        ".cfi_endproc\n"
        ".size wt_first_frame, .-wt_first_frame\n");
