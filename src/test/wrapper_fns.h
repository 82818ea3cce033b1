/* wrapper_test's wrappers (wrapper_fns.c, wrapper_fns_fp.c) */
#ifndef HAK_WRAPPER_FNS_H
#define HAK_WRAPPER_FNS_H
#include <stddef.h>
/* the return addresses of the last calls: wt_malloc's (a wrapper's call
 * site), a wrapper's (its caller's), wt_outer_fp's */
extern _Thread_local const void* volatile wt_last_site;
extern _Thread_local const void* volatile wt_last_ra;
extern _Thread_local const void* volatile wt_last_outer_ra;
void* wt_malloc(size_t n);
void* wt_xmalloc(size_t n);
void* wt_xmalloc_chained(size_t n);
void* wt_helper_of_two(size_t n);
void* wt_helper_of_one(size_t n);
void* wt_xmalloc_threads(size_t n);
void* wt_xmalloc_off(size_t n);
void* wt_helper_of_one_function(size_t n);
void* wt_helper_of_three(size_t n);
void* wt_xmalloc_slow_turns(size_t n);
void* wt_xmalloc_under_alloca(size_t n);
void* wt_xmalloc_clone(size_t n);
void* wt_xmalloc_late(size_t n);
void* wt_xmalloc_small(size_t n);
void* wt_xmalloc_fork(size_t n);
void* wt_inner_startup(size_t n);
void* wt_outer_startup(size_t n); /* calls wt_inner_startup */
/* calls wt_xmalloc_under_alloca with pad bytes of alloca in its frame */
void* wt_alloca_caller(size_t n, size_t pad);
void* wt_outer_fp(size_t n, size_t scratch);
void wt_call_on_stack(void* top, void (*fn)(void));
void wt_first_frame(void); /* asm: .cfi_undefined rip */
extern char wt_first_frame_inside[];
#endif
