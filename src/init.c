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

/* The fork gate (internal.h).  Each thread counts its entries in a slot of
 * its own, on a line of its own: the drain sums the slots, and a signal
 * handler on the thread reads the same word to know whether the thread is
 * inside (nested: the drain waits for it) or not (it enters on its own),
 * with no window between the two (review H's sigwin.c: a count raised but
 * a separate depth still 0 let a handler wait for a fork that waited for
 * its own thread: a hang within seconds).  Slots are taken at a thread's
 * first entry and given back when it exits (or, once all are taken, taken
 * from threads that are gone); a thread beyond GATE_SLOTS is never waited
 * for and always counted unguarded (gate_shared). */
#define GATE_SLOTS 1024
typedef struct {
  _Alignas(64) _Atomic(unsigned) n; /* entries inside */
  /* the thread gave up waiting for the fork in flight and went on: from
   * before its transit to after it, so a child whose snapshot has any of
   * the transit has this (each thread's stores reach the child in order) */
  _Atomic(unsigned) unguarded;
  _Atomic(int) tid; /* owner, 0: free */
} gate_slot_t;
static gate_slot_t gate_slots[GATE_SLOTS];
static _Atomic(unsigned) gate_slots_hi; /* slots ever taken */
static gate_slot_t gate_shared;         /* threads beyond GATE_SLOTS: .unguarded only */
static __thread gate_slot_t* gate_slot __attribute__((tls_model("initial-exec")));
static __thread unsigned gate_shared_depth __attribute__((tls_model("initial-exec")));
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

static bool gate_slot_claim(gate_slot_t* g, int tid, bool dead_only) {
  int was = atomic_load_explicit(&g->tid, memory_order_relaxed);
  if (dead_only ? (was == 0 || atomic_load_explicit(&g->n, memory_order_relaxed) != 0 || _hak_os_tid_alive(was))
                : was != 0)
    return false;
  return atomic_compare_exchange_strong_explicit(&g->tid, &was, tid, memory_order_acquire, memory_order_relaxed);
}
/* This thread's slot, taken at its first entry. */
static HAK_NOINLINE gate_slot_t* gate_slot_take(void) {
  int tid = _hak_os_tid();
  unsigned hi = atomic_load_explicit(&gate_slots_hi, memory_order_acquire);
  for (unsigned i = 0; i < hi; i++)
    if (gate_slot_claim(&gate_slots[i], tid, false)) return gate_slot = &gate_slots[i];
  while (hi < GATE_SLOTS)
    if (atomic_compare_exchange_weak_explicit(&gate_slots_hi, &hi, hi + 1, memory_order_acq_rel, memory_order_acquire)) {
      /* claimed as any free slot: another thread's scan may see it first */
      if (gate_slot_claim(&gate_slots[hi], tid, false)) return gate_slot = &gate_slots[hi];
      hi = atomic_load_explicit(&gate_slots_hi, memory_order_acquire);
    }
  for (unsigned i = 0; i < GATE_SLOTS; i++) /* threads that exited without giving theirs back */
    if (gate_slot_claim(&gate_slots[i], tid, true)) return gate_slot = &gate_slots[i];
  return gate_slot = &gate_shared;
}
/* Thread exit (heap.c): the slot goes back (the thread is not inside). */
void _hak_gate_thread_exit(void) {
  gate_slot_t* g = gate_slot;
  if (g == NULL || g == &gate_shared || atomic_load_explicit(&g->n, memory_order_relaxed) != 0) return;
  gate_slot = NULL;
  atomic_store_explicit(&g->tid, 0, memory_order_release);
}

void _hak_gate_enter(void) {
  gate_slot_t* g = gate_slot;
  if (hak_unlikely(g == NULL)) g = gate_slot_take();
  if (hak_unlikely(g == &gate_shared)) {
    /* beyond GATE_SLOTS: no fork waits for it, each outermost entry is
     * counted unguarded from before its transit to after it (a handler
     * between the count and the depth counts itself too: over by 2) */
    if (gate_shared_depth == 0) atomic_fetch_add_explicit(&gate_shared.unguarded, 1, memory_order_seq_cst);
    gate_shared_depth++;
    return;
  }
  if (atomic_load_explicit(&g->n, memory_order_relaxed) > 0) {
    /* nested: its count is up (one word: a signal handler reads it as the
     * drain does).  A fork pending may have drained before that count
     * went up (a handler between the outer entry's raise and its look at
     * the fork): unguarded then, until the outermost exit (review I's
     * sigwin2.c: 2 bad children in 11,806) */
    atomic_fetch_add_explicit(&g->n, 1, memory_order_seq_cst);
    if (atomic_load_explicit(&fork_state, memory_order_seq_cst) & FORK_PENDING)
      atomic_store_explicit(&g->unguarded, 1, memory_order_seq_cst);
    return;
  }
  /* seq_cst both: either prepare sees this thread inside, or this thread
   * sees the fork pending (fork_prepare); no fork pending: done */
  atomic_fetch_add_explicit(&g->n, 1, memory_order_seq_cst);
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
    if (!(s & FORK_PENDING) || gate_forker) return;
    if (_hak_locks_held > 0) { /* the fork waits for its lock, or it is between taking one and counting it */
      atomic_store_explicit(&g->unguarded, 1, memory_order_seq_cst);
      return;
    }
    if (waits == GATE_WAITS_LOCKED || gave_up == gen + 1) {
      if (gave_up != gen + 1) hak_atomic_add(st_gate_give_ups, 1);
      gave_up = gen + 1;
#ifndef HAK_FAULT_GATE_GIVE_UP_UNCOUNTED /* fault injection: the child does not allow for it */
      atomic_store_explicit(&g->unguarded, 1, memory_order_seq_cst); /* before its transit */
#endif
      return;
    }
    /* down while it waits: a signal handler meanwhile enters on its own */
    _Atomic(unsigned)* down = &g->n;
    atomic_fetch_sub_explicit(down, 1, memory_order_release);
    hak_atomic_add(st_gate_waits, 1);
    _hak_os->pause_us(500);
    atomic_fetch_add_explicit(down, 1, memory_order_seq_cst);
    uint64_t n = atomic_load_explicit(&fork_state, memory_order_seq_cst);
    /* unbounded while hakmem's prepare runs (it waits for nothing a thread
     * at the gate holds); back to back forks: counted from the latest */
    waits = n >> 2 == s >> 2 ? waits + ((n & FORK_LOCKED) != 0) : 0;
    s = n;
  }
}
void _hak_gate_exit(void) {
  gate_slot_t* g = gate_slot;
  if (hak_unlikely(g == &gate_shared)) {
    if (--gate_shared_depth == 0) atomic_fetch_sub_explicit(&gate_shared.unguarded, 1, memory_order_release);
    return;
  }
  if (atomic_load_explicit(&g->n, memory_order_relaxed) > 1) { /* nested */
    atomic_fetch_sub_explicit(&g->n, 1, memory_order_relaxed);
    return;
  }
  if (atomic_load_explicit(&g->unguarded, memory_order_relaxed) != 0)
    atomic_store_explicit(&g->unguarded, 0, memory_order_release); /* after its transit */
  atomic_fetch_sub_explicit(&g->n, 1, memory_order_release);
}

__attribute__((unused)) static unsigned gate_sum(void) {
  unsigned n = 0;
  unsigned hi = atomic_load_explicit(&gate_slots_hi, memory_order_acquire);
  for (unsigned i = 0; i < hi; i++) n += atomic_load_explicit(&gate_slots[i].n, memory_order_seq_cst);
  return n;
}

/* Waits for the threads inside the gate to leave it (not this one, if a
 * signal handler forks inside it: its own count, read from its slot).
 * They do not wait for the fork (it is pending) nor for a lock (hak_lock
 * gives up while it is). */
static void gate_drain(void) {
#ifndef HAK_FAULT_FORK_CUTS_TRANSIT
  gate_slot_t* g = gate_slot;
  unsigned own = g == NULL || g == &gate_shared ? 0 : atomic_load_explicit(&g->n, memory_order_relaxed);
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
  /* the others vanished: their slots go back, and the transits of those
   * the fork did not wait for are allowed for (this thread's own goes on) */
  unsigned hi = atomic_load_explicit(&gate_slots_hi, memory_order_relaxed);
  for (unsigned i = 0; i < hi; i++) {
    gate_slot_t* g = &gate_slots[i];
    if (g == gate_slot) continue;
    _hak_fork_transits += TRANSIT_BLOCKS * (atomic_load_explicit(&g->unguarded, memory_order_relaxed) != 0);
    atomic_store_explicit(&g->n, 0, memory_order_relaxed);
    atomic_store_explicit(&g->unguarded, 0, memory_order_relaxed);
    atomic_store_explicit(&g->tid, 0, memory_order_relaxed);
  }
  /* the threads beyond GATE_SLOTS inside then (this one's entry goes on) */
  size_t own_shared = gate_slot == &gate_shared && gate_shared_depth > 0;
  size_t shared = atomic_load_explicit(&gate_shared.unguarded, memory_order_relaxed);
  _hak_fork_transits += TRANSIT_BLOCKS * (shared > own_shared ? shared - own_shared : 0);
  atomic_store_explicit(&gate_shared.unguarded, own_shared, memory_order_relaxed);
  if (gate_slot != NULL && gate_slot != &gate_shared) /* its tid in the child */
    atomic_store_explicit(&gate_slot->tid, _hak_os_tid(), memory_order_relaxed);
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
  for (size_t i = 0; i < HAK_BINS; i++) hak_heap_set_direct(&_hak_heap_empty, i, &_hak_page_empty);
  _hak_harden_init();
  _hak_options_init();
  /* the stderr exit statistics may go to: noted at the first allocation,
   * before other libraries' constructors (one that opens a file on a
   * closed fd 2 must not receive them, review N) */
  _hak_stats_note_stderr();
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
  _hak_site_init();
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
