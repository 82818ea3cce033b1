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

/* The fork gate (internal.h): threads inside, counted in stripes (a line
 * each, a thread always in the same one: huge-block traffic of several
 * threads does not share one counter), and this thread's nesting. */
#define GATE_STRIPES 16
static struct {
  _Alignas(64) _Atomic(unsigned) n;
} gate_count[GATE_STRIPES];
static _Atomic(unsigned) gate_next_stripe;
static __thread unsigned gate_stripe __attribute__((tls_model("initial-exec"))); /* 1 + its stripe */
/* this thread's entries inside the gate; > 0 exactly while its count is
 * raised (0 during its waits: a signal handler that allocates then enters
 * on its own, and a fork in that handler does not wait for itself) */
static __thread unsigned gate_depth __attribute__((tls_model("initial-exec")));
/* this thread is forking (from hakmem's prepare to its parent or child
 * handler's end): a signal handler that allocates meanwhile must not wait
 * for the fork it interrupted (review E's sigalloc.c: the process hung) */
static __thread bool gate_forker __attribute__((tls_model("initial-exec")));
__thread unsigned _hak_locks_held __attribute__((tls_model("initial-exec")));
/* Past hakmem's prepare (its locks taken) the fork waits for other prepare
 * handlers, then the kernel: a thread at the gate waits at most this long
 * then (x 500 us), since such a handler may wait for a lock it holds (review
 * E's forklat.c, a library's prepare locking what threads hold while they
 * allocate: 20 waits made its forks 11.9 ms at the median, cur 0.39 ms);
 * it goes on unguarded, and the child allows for what it had in transit. */
#define GATE_WAITS_LOCKED 2
/* 1 + the fork this thread waited that long for: it does not wait again */
static __thread uint64_t gave_up __attribute__((tls_model("initial-exec")));

/* The fork in flight: (forks done << 2) | FORK_LOCKED (hakmem's prepare is
 * done) | FORK_PENDING, one word read in the load that follows the raise
 * of a thread's count (64 bits: the generation never wraps onto gave_up's
 * 0, review G's wrap.c). */
#define FORK_PENDING 1u
#define FORK_LOCKED 2u
static _Atomic(uint64_t) fork_state;
/* Threads inside the gate that the fork in flight does not wait for (they
 * gave up waiting), raised before their transit and lowered after it: a
 * child whose snapshot has any of a thread's transit has its raise and not
 * its lowering (each thread's stores reach the child in order), so it
 * counts exactly the transits the fork may have cut.  (Counted by fork
 * generation before, read apart from the raise of the thread's count: a
 * thread preempted between the two counted its give-up for the fork before
 * the one that cut it, CI on 4b57cf5 and 1654696.) */
static _Atomic(size_t) gate_unguarded;
static __thread bool gate_unguarded_own __attribute__((tls_model("initial-exec")));
/* a transit holds at most two blocks: BigCache's put holds its block and
 * the one it evicts from a full row (review G's rowfull.c) */
#define TRANSIT_BLOCKS 2
size_t _hak_fork_transits;
static _Atomic(uint64_t) st_forks, st_gate_waits, st_gate_give_ups;
void _hak_fork_stats(hak_stats_t* st) {
  st->fork_forks = atomic_load_explicit(&st_forks, memory_order_relaxed);
  st->fork_gate_waits = atomic_load_explicit(&st_gate_waits, memory_order_relaxed);
  st->fork_gate_give_ups = atomic_load_explicit(&st_gate_give_ups, memory_order_relaxed);
}

/* gate_depth as a signal handler on this thread sees it */
static void gate_depth_set(unsigned d) {
  atomic_signal_fence(memory_order_seq_cst);
  gate_depth = d;
  atomic_signal_fence(memory_order_seq_cst);
}

void _hak_gate_enter(void) {
  if (gate_depth > 0) { /* nested: its count is raised, a fork waits for it */
    gate_depth++;
    return;
  }
  if (hak_unlikely(gate_stripe == 0))
    gate_stripe = 1 + atomic_fetch_add_explicit(&gate_next_stripe, 1, memory_order_relaxed) % GATE_STRIPES;
  _Atomic(unsigned)* count = &gate_count[gate_stripe - 1].n;
  /* seq_cst both: either prepare sees this thread inside, or this thread
   * sees the fork pending (fork_prepare); no fork pending: done */
  atomic_fetch_add_explicit(count, 1, memory_order_seq_cst);
  gate_depth_set(1);
  uint64_t s = atomic_load_explicit(&fork_state, memory_order_seq_cst);
  if (hak_likely(!(s & FORK_PENDING))) return;
#ifdef HAK_FAULT_FORK_CUTS_TRANSIT /* fault injection: the gate never waits */
  return;
#endif
#ifdef HAK_FAULT_GATE_WAITS_FOR_ITSELF /* fault injection: a signal handler on the forking thread waits */
  gate_forker = false;
#endif
  for (unsigned waits = 0;;) {
    /* s: loaded after this thread's count was raised */
    uint64_t gen = s >> 2;
    if (!(s & FORK_PENDING) || gate_forker || _hak_locks_held > 0) return;
    if (waits == GATE_WAITS_LOCKED || gave_up == gen + 1) {
      if (gave_up != gen + 1) hak_atomic_add(st_gate_give_ups, 1);
      gave_up = gen + 1;
#ifndef HAK_FAULT_GATE_GIVE_UP_UNCOUNTED /* fault injection: the child does not allow for it */
      atomic_fetch_add_explicit(&gate_unguarded, 1, memory_order_seq_cst); /* before its transit */
      gate_unguarded_own = true;
#endif
      return;
    }
    gate_depth_set(0); /* before the count goes down */
    atomic_fetch_sub_explicit(count, 1, memory_order_release);
    hak_atomic_add(st_gate_waits, 1);
#ifdef HAK_FAULT_GATE_DEPTH_KEPT /* fault injection: a signal handler meanwhile takes itself for nested (the first version) */
    gate_depth_set(1);
#endif
    _hak_os_pause_us(500);
    atomic_fetch_add_explicit(count, 1, memory_order_seq_cst);
    gate_depth_set(1);
    uint64_t n = atomic_load_explicit(&fork_state, memory_order_seq_cst);
    /* unbounded while hakmem's prepare runs (it waits for nothing a thread
     * at the gate holds); back to back forks: counted from the latest */
    waits = n >> 2 == s >> 2 ? waits + ((n & FORK_LOCKED) != 0) : 0;
    s = n;
  }
}
void _hak_gate_exit(void) {
  if (gate_depth > 1) {
    gate_depth--;
    return;
  }
  if (gate_unguarded_own) { /* after its transit */
    gate_unguarded_own = false;
    atomic_fetch_sub_explicit(&gate_unguarded, 1, memory_order_release);
  }
  gate_depth_set(0);
  atomic_fetch_sub_explicit(&gate_count[gate_stripe - 1].n, 1, memory_order_release);
}

__attribute__((unused)) static unsigned gate_sum(void) {
  unsigned n = 0;
  for (int i = 0; i < GATE_STRIPES; i++) n += atomic_load_explicit(&gate_count[i].n, memory_order_seq_cst);
  return n;
}

/* Waits for the threads inside the gate to leave it (not this one, if a
 * signal handler forks inside it).  They do not wait for the fork (it is
 * pending) nor for a lock (hak_lock gives up while it is). */
static void gate_drain(void) {
#ifndef HAK_FAULT_FORK_CUTS_TRANSIT
  unsigned own = gate_depth > 0;
  while (gate_sum() != own) sched_yield();
#endif
}

static _Atomic(int) init_state;            /* 0 no, 1 running, 2 done      */
static __thread bool init_self __attribute__((tls_model("initial-exec")));

/* One fork at a time: the pending flag and the gate's drain belong to it
 * (two threads forking at once: the first one's parent handler would clear
 * the flag while the second one waits for the locks, and threads would go
 * into their transits unseen; review E's forkcc.c: 10-23 bad children of
 * 400-670). */
#ifndef HAK_FAULT_FORKS_CONCURRENT /* fault injection: forks at once share the flag */
static pthread_mutex_t fork_mutex = PTHREAD_MUTEX_INITIALIZER;
#endif

static void fork_prepare(void) {
  if (_hak_forking) { /* nested: this thread holds every lock already */
    fork_depth++;
    return;
  }
#ifndef HAK_FAULT_FORKS_CONCURRENT
  pthread_mutex_lock(&fork_mutex);
#endif
  gate_forker = true;
  hak_atomic_add(st_forks, 1);
  atomic_store_explicit(&_hak_fork_pending, true, memory_order_seq_cst);
  atomic_fetch_or_explicit(&fork_state, FORK_PENDING, memory_order_seq_cst);
  gate_drain();
  _hak_huge_lock(true);
  _hak_heap_lock(true);
  _hak_segment_lock(true);
  _hak_madvq_lock(true);
  _hak_policy_lock(true);
  _hak_forking = true;
  atomic_fetch_or_explicit(&fork_state, FORK_LOCKED, memory_order_relaxed);
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
  /* the next generation, neither pending nor locked (forks are one at a time) */
  uint64_t s = atomic_load_explicit(&fork_state, memory_order_relaxed);
  atomic_store_explicit(&fork_state, ((s >> 2) + 1) << 2, memory_order_release);
  atomic_store_explicit(&_hak_fork_pending, false, memory_order_release);
#ifndef HAK_FAULT_FORKS_CONCURRENT
  pthread_mutex_unlock(&fork_mutex);
#endif
  gate_forker = false;
}
static void fork_child(void) {
  if (fork_depth > 0) {
    fork_depth--;
    return;
  }
  atomic_store_explicit(&_hak_fork_pending, false, memory_order_relaxed);
  _hak_forking = false;
  /* the child's own forks are the next ones */
  uint64_t gen = atomic_load_explicit(&fork_state, memory_order_relaxed) >> 2;
  atomic_store_explicit(&fork_state, (gen + 1) << 2, memory_order_relaxed);
  for (int i = 0; i < GATE_STRIPES; i++) /* the others vanished */
    atomic_store_explicit(&gate_count[i].n, gate_stripe == (unsigned)i + 1 && gate_depth > 0, memory_order_relaxed);
  /* the transits of vanished threads the fork did not wait for (this
   * thread's own goes on here) */
  size_t unguarded = atomic_load_explicit(&gate_unguarded, memory_order_relaxed) - gate_unguarded_own;
  _hak_fork_transits += TRANSIT_BLOCKS * unguarded;
  atomic_store_explicit(&gate_unguarded, gate_unguarded_own, memory_order_relaxed);
  _hak_policy_fork_child();
  _hak_madvq_fork_child();
  _hak_segment_fork_child();
  _hak_site_fork_child();
  _hak_wrapper_fork_child();
  _hak_heap_fork_child();
  _hak_huge_fork_child();
#ifndef HAK_FAULT_FORKS_CONCURRENT
  pthread_mutex_unlock(&fork_mutex);
#endif
  gate_forker = false;
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
  _hak_gate_enter(); /* evicted blocks between their slot and the queue */
  _hak_bigcache_drain();
  _hak_gate_exit();
  _hak_madvq_flush(true);
  _hak_segment_trim();
  _hak_purge_now(); /* what stays: idle free slices of live segments */
  HAK_VERIFY_POINT();
}
