/* Process life cycle: initialization (once, on the first allocation or at
 * load), the fork protocol, statistics at exit, hak_collect.
 *
 * Init is re-entrant-safe: a signal handler that allocates while its own
 * thread is inside init gets NULL (ENOMEM) instead of waiting for itself;
 * other threads wait for the initializing one.
 * Fork: prepare takes every allocator lock (heap, segment, batch queue,
 * policy: the one order any path takes them), after which the forking
 * thread may still allocate (internal.h, locks); the parent and the child
 * release them (the forking thread owns them in both), and the child
 * adopts what vanished threads left. */
#include <sched.h>

#include "internal.h"

size_t _hak_fast_limit = HAK_SMALL_FAST_MAX; /* until the options are read */
__thread bool _hak_forking __attribute__((tls_model("initial-exec")));
_Atomic(bool) _hak_fork_pending;
/* a fork from inside an atfork handler (the locks are held already) */
static __thread unsigned fork_depth __attribute__((tls_model("initial-exec")));

bool _hak_lock_wait(pthread_mutex_t* m) {
  for (;;) {
#ifndef HAK_FAULT_LOCK_BLOCKS_IN_FORK /* fault injection: wait even while a fork is pending */
    if (atomic_load_explicit(&_hak_fork_pending, memory_order_acquire)) return false;
#endif
    if (_hak_os_timedlock(m, 1000000)) return true;
  }
}

static _Atomic(int) init_state;            /* 0 no, 1 running, 2 done      */
static __thread bool init_self __attribute__((tls_model("initial-exec")));

static void fork_prepare(void) {
  if (_hak_forking) { /* nested: this thread holds every lock already */
    fork_depth++;
    return;
  }
  atomic_store_explicit(&_hak_fork_pending, true, memory_order_seq_cst);
  _hak_huge_lock(true);
  _hak_heap_lock(true);
  _hak_segment_lock(true);
  _hak_madvq_lock(true);
  _hak_policy_lock(true);
  _hak_forking = true;
}
static void fork_parent(void) {
  if (fork_depth > 0) {
    fork_depth--;
    return;
  }
  _hak_forking = false;
  _hak_policy_lock(false);
  _hak_madvq_lock(false);
  _hak_segment_lock(false);
  _hak_heap_lock(false);
  _hak_huge_lock(false);
  atomic_store_explicit(&_hak_fork_pending, false, memory_order_release);
}
static void fork_child(void) {
  if (fork_depth > 0) {
    fork_depth--;
    return;
  }
  atomic_store_explicit(&_hak_fork_pending, false, memory_order_relaxed);
  _hak_forking = false;
  _hak_policy_fork_child();
  _hak_madvq_fork_child();
  _hak_segment_fork_child();
  _hak_site_fork_child();
  _hak_wrapper_fork_child();
  _hak_heap_fork_child();
  _hak_huge_fork_child();
}

/* True once the process is initialized; false only for a call that
 * re-entered init on the initializing thread (a signal handler). */
bool _hak_thp_always;

bool _hak_init(void) {
  int expected = 0;
  if (hak_likely(atomic_load_explicit(&init_state, memory_order_acquire) == 2)) return true;
  if (!atomic_compare_exchange_strong(&init_state, &expected, 1)) {
#ifndef HAK_FAULT_INIT_SPIN /* fault injection: the initializing thread waits for itself */
    if (init_self) return false;
#endif
    while (atomic_load_explicit(&init_state, memory_order_acquire) != 2) sched_yield();
    return true;
  }
  init_self = true;
  for (size_t i = 0; i < HAK_BINS; i++) _hak_heap_empty.direct[i] = &_hak_page_empty;
  _hak_harden_init();
  _hak_options_init();
  _hak_secure_init();
  _hak_fast_limit = HAK_SMALL_MAX;
  _hak_thp_always = _hak_os_thp_always();
  _hak_heap_init_key();
  atomic_store_explicit(&init_state, 2, memory_order_release);
  init_self = false;
  return true;
}

/* Runs when the library is loaded: make sure init happened and register the
 * fork handlers (outside any allocator lock, since registering may call
 * malloc). */
__attribute__((constructor)) static void hak_constructor(void) {
  _hak_init();
  _hak_options_init(); /* no-op unless the first read came before environ */
  _hak_fast_limit = HAK_SMALL_MAX;
  _hak_wrapper_init();
  pthread_atfork(fork_prepare, fork_parent, fork_child);
}

__attribute__((destructor)) static void hak_destructor(void) { _hak_stats_at_exit(); }

void hak_collect(void) {
  hak_heap_t* heap = _hak_heap_tls;
  if (heap != &_hak_heap_empty) {
    _hak_quarantine_flush(heap);
    _hak_heap_release_empty(heap);
  }
  _hak_heaps_reclaim();
  _hak_bigcache_drain();
  _hak_madvq_flush(true);
  _hak_segment_trim();
  _hak_purge_now(); /* what stays: idle free slices of live segments */
  HAK_VERIFY_POINT();
}
