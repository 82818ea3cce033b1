/* Thread heaps: creation, thread exit, abandonment, reclaim, adoption.
 *
 * Every thread starts on _hak_heap_empty (all bins point at an empty page),
 * so its first allocation falls into the generic path, which gives it a
 * heap: an abandoned one if any (memory of exited threads is reused by new
 * ones), else a new one.  A pthread key's destructor abandons the heap at
 * thread exit: its empty pages and segments are released and it waits on
 * the abandoned list.
 *
 * Abandoned heaps are not dead weight: other threads keep freeing blocks
 * into them (remote frees), and any thread reclaims them (_hak_heaps_reclaim:
 * remote frees collected, empty pages and segments released) from its slow
 * path when a remote free landed in one, and in hak_collect().  Their owner
 * then is whoever holds heap_lock.
 *
 * A thread whose exit destructor already ran may still allocate (another
 * key's destructor in a later round, or after the last one): it borrows an
 * abandoned heap for that one allocation and puts it back, so no heap is
 * left owned by a thread that no longer exists.
 *
 * A thread whose first allocation comes in the last round of key
 * destructors gets a heap no destructor will abandon.  So each heap records
 * its owner's kernel tid, and a thread about to create a heap first looks
 * at a few heaps (a rotating cursor) for one whose owner no longer exists:
 * that heap is taken over instead (its owner ran no code since it exited).
 *
 * Invariants: a heap is owned by exactly one thread, or is on heaps_free
 * with abandoned set (owned by heap_lock's holder), or is borrowed by one
 * exited thread for one call.  Heaps are never freed (heaps_all). */
#include <string.h>

#include "internal.h"

__thread hak_heap_t* _hak_heap_tls __attribute__((tls_model("initial-exec"))) = &_hak_heap_empty;
/* this thread's exit destructor has run: allocations borrow a heap */
static __thread bool thread_exited __attribute__((tls_model("initial-exec")));

hak_heap_t _hak_heap_empty = {.direct = {[0 ... HAK_BINS - 1] = &_hak_page_empty},
                               .direct_sz = {[0 ... HAK_SMALL_FAST_MAX / HAK_ALIGN] = &_hak_page_empty}};
_Atomic(bool) _hak_heaps_dirty;

static hak_mutex_t heap_lock = HAK_MUTEX_INIT(HAK_LOCK_HEAP); /* heaps_free + meta */
static _Atomic(hak_heap_t*) heaps_all;     /* every heap, append-only      */
static hak_heap_t* heaps_free;             /* abandoned, waiting           */
static _Atomic(uint64_t) heaps_created, heaps_reused, heaps_abandoned_now;
static pthread_key_t heap_key;

/* ---- metadata: bump allocation from 1 MiB mappings, never freed -------- */
static uint8_t* meta_cur;
static size_t meta_left;

void* _hak_meta_alloc(size_t size) {
  size = (size + 63) & ~(size_t)63;
  if (!hak_lock(&heap_lock)) /* a fork is pending: a mapping of its own */
    return _hak_os_alloc_aligned((size + 4095) & ~(size_t)4095, 4096);
  if (meta_left < size) {
    size_t chunk = size > (1u << 20) ? size : (1u << 20);
    uint8_t* p = _hak_os_alloc_aligned(chunk, 4096);
    if (p == NULL) {
      hak_unlock(&heap_lock);
      return NULL;
    }
    meta_cur = p;
    meta_left = chunk;
  }
  void* r = meta_cur;
  meta_cur += size;
  meta_left -= size;
  hak_unlock(&heap_lock);
  return r;
}

static void heap_reset_direct(hak_heap_t* heap) {
  for (size_t i = 0; i < HAK_BINS; i++) hak_heap_set_direct(heap, i, &_hak_page_empty);
}

/* ---- abandoning and taking heaps --------------------------------------- */

/* Puts a heap the caller owns on the abandoned list (heap_lock held). */
static void heap_push_abandoned(hak_heap_t* heap) {
  atomic_store_explicit(&heap->abandoned, true, memory_order_relaxed);
  heap->next_free = heaps_free;
  heaps_free = heap;
  hak_atomic_add(heaps_abandoned_now, 1);
  if (heap->purge_next_ns != 0) hak_purge_global_due(); /* its idle slices: purge.c */
}

/* Heaps abandoned while a fork was pending (heap_lock unavailable): a
 * lock-free stack, moved to heaps_free by the next holder of the lock. */
static _Atomic(hak_heap_t*) heaps_orphans;

static void heaps_adopt_orphans(void) { /* heap_lock held */
  hak_heap_t* h = atomic_exchange_explicit(&heaps_orphans, NULL, memory_order_acquire);
  while (h != NULL) {
    hak_heap_t* next = h->next_free;
    heap_push_abandoned(h);
    h = next;
  }
}

/* An abandoned heap's sweep (heap_lock held, or a fork pending): remote
 * frees taken in, empty pages and segments released, and the purge asked
 * for the slices the sweep left dirty (purge.c). */
static void heap_sweep(hak_heap_t* heap) {
  _hak_heap_release_empty(heap);
#ifndef HAK_FAULT_ABANDON_PURGE_LOST /* fault injection: the swept pages are never purged */
  if (heap->purge_next_ns != 0) hak_purge_global_due();
#endif
}

/* The heap is marked abandoned before it is swept, so a remote free that
 * the sweep misses sees the mark (free_remote, alloc.c) and requests a
 * reclaim; the store and the sweep's loads against the free's push and its
 * loads are sequentially consistent (a fence here, seq_cst there), or both
 * could miss each other.  The sweep runs under heap_lock, after the heap is
 * on the abandoned list: a reclaim that clears the request is then either
 * wholly before (and this sweep comes after it) or sees the heap listed. */
static void heap_abandon(hak_heap_t* heap) {
  _hak_quarantine_flush(heap); /* HAKMEM_SECURE=2: nobody else would */
  atomic_store_explicit(&heap->owner_tid, 0, memory_order_relaxed);
  atomic_store_explicit(&heap->abandoned, true, memory_order_seq_cst);
  atomic_thread_fence(memory_order_seq_cst);
#ifdef HAK_FAULT_ABANDON_SWEEP_UNLOCKED /* fault injection: swept before the lock (the first version) */
  heap_sweep(heap);
#endif
  if (!hak_lock(&heap_lock)) { /* a fork is pending: the lock's next holder adopts it */
    heap_sweep(heap);
    hak_heap_t* head = atomic_load_explicit(&heaps_orphans, memory_order_relaxed);
    do heap->next_free = head;
    while (!atomic_compare_exchange_weak_explicit(&heaps_orphans, &head, heap, memory_order_release,
                                                  memory_order_relaxed));
    atomic_store_explicit(&_hak_heaps_dirty, true, memory_order_seq_cst); /* swept by that adoption */
    return;
  }
  heap_push_abandoned(heap);
#ifndef HAK_FAULT_ABANDON_SWEEP_UNLOCKED
  heap_sweep(heap);
#endif
  hak_unlock(&heap_lock);
}

/* A heap whose owning thread has exited without abandoning it, now the
 * caller's; NULL if none of the few looked at is one. */
static _Atomic(hak_heap_t*) dead_cursor;
static hak_heap_t* heap_take_dead(void) {
#ifdef HAK_FAULT_DEAD_OWNER_IGNORED /* fault injection: such heaps stay owned forever */
  return NULL;
#endif
  /* the newest heaps first (the likeliest: threads that just ended; the
   * kernel may take a moment to reap the last one), then 4 more from a
   * cursor that goes round the whole registry */
  hak_heap_t* h = atomic_load(&heaps_all);
  hak_heap_t* cursor = atomic_load_explicit(&dead_cursor, memory_order_relaxed);
  for (int i = 0; i < 8 && h != NULL; i++) {
    int tid = atomic_load_explicit(&h->owner_tid, memory_order_acquire);
    if (tid > 0 && !atomic_load_explicit(&h->abandoned, memory_order_relaxed) && !_hak_os_thread_alive(tid) &&
        atomic_compare_exchange_strong(&h->owner_tid, &tid, -1)) { /* claimed */
      hak_atomic_add(heaps_reused, 1);
      return h;
    }
    if (i < 4) h = h->next_all;
    else h = cursor = cursor != NULL && cursor->next_all != NULL ? cursor->next_all : atomic_load(&heaps_all);
    if (i >= 4) atomic_store_explicit(&dead_cursor, cursor, memory_order_relaxed);
  }
  return NULL;
}

/* An abandoned heap, now the caller's, or a new one; NULL without memory. */
static hak_heap_t* heap_take(void) {
  hak_heap_t* heap = NULL;
  if (hak_lock(&heap_lock)) { /* else a fork is pending: a new heap */
    heaps_adopt_orphans();
    heap = heaps_free;
    if (heap != NULL) {
#ifndef HAK_FAULT_HEAP_HANDED_TWICE /* fault injection: the heap stays on the list */
      heaps_free = heap->next_free;
#endif
      atomic_fetch_sub_explicit(&heaps_abandoned_now, 1, memory_order_relaxed);
      hak_atomic_add(heaps_reused, 1);
    }
    hak_unlock(&heap_lock);
  }
  if (heap == NULL) heap = heap_take_dead();
  if (heap == NULL) {
    heap = _hak_meta_alloc(sizeof(hak_heap_t));
    if (heap == NULL) return NULL;
    memset(heap, 0, sizeof(*heap));
    heap_reset_direct(heap);
    hak_heap_t* head = atomic_load(&heaps_all);
    do heap->next_all = head;
    while (!atomic_compare_exchange_weak(&heaps_all, &head, heap));
    hak_atomic_add(heaps_created, 1);
  }
  atomic_store_explicit(&heap->abandoned, false, memory_order_relaxed);
  atomic_store_explicit(&heap->owner_tid, _hak_os_tid(), memory_order_relaxed);
  heap->next_free = NULL;
  return heap;
}

/* ---- thread exit --------------------------------------------------------- */
static void heap_thread_exit(void* arg) {
  hak_heap_t* heap = arg;
  if (heap == NULL || heap == &_hak_heap_empty) return;
  _hak_heap_tls = &_hak_heap_empty;
#ifndef HAK_FAULT_EXIT_REARM /* fault injection: later allocations make a heap of their own */
  thread_exited = true;
#endif
  heap_abandon(heap);
  _hak_gate_thread_exit(); /* after the abandon, which enters the gate (review I's slots.c: none came back) */
}

bool _hak_heap_exited(void) { return thread_exited; }

/* A heap for one allocation of an exited thread; give it back with
 * _hak_heap_unborrow. */
hak_heap_t* _hak_heap_borrow(void) { return heap_take(); }

void _hak_heap_unborrow(hak_heap_t* heap) { heap_abandon(heap); }

void _hak_heap_init_key(void) { pthread_key_create(&heap_key, heap_thread_exit); }

/* The calling thread's heap, set up on first use. */
hak_heap_t* _hak_heap_get(void) {
  hak_heap_t* heap = _hak_heap_tls;
  if (hak_likely(heap != &_hak_heap_empty)) return heap;
  if (!_hak_init()) return NULL; /* re-entered during init: not ready */
  heap = heap_take();
  if (heap == NULL) return NULL;
  /* TLS first: pthread_setspecific may allocate, which now finds the heap */
  _hak_heap_tls = heap;
  pthread_setspecific(heap_key, heap);
  return heap;
}

/* ---- reclaim -------------------------------------------------------------- */

/* Collects every abandoned heap: frees other threads made into it are taken
 * in, empty pages and segments go back.  heap_lock makes the caller their
 * owner meanwhile (lock order: heap_lock, then the segment lock). */
void _hak_heaps_reclaim(void) {
  if (!hak_lock(&heap_lock)) return; /* a fork is pending: later */
  /* cleared before the sweep, ordered against remote frees (heap_abandon) */
  atomic_store_explicit(&_hak_heaps_dirty, false, memory_order_seq_cst);
  atomic_thread_fence(memory_order_seq_cst);
  heaps_adopt_orphans();
  for (hak_heap_t* h = heaps_free; h != NULL; h = h->next_free) heap_sweep(h);
  hak_unlock(&heap_lock);
}

/* Purges the abandoned heaps whose purge tick is due (all: every one). */
bool _hak_heaps_purge_abandoned(uint64_t now, bool all) {
  if (atomic_load_explicit(&heaps_abandoned_now, memory_order_relaxed) == 0) return false;
  if (!hak_lock(&heap_lock)) return true; /* a fork is pending: later */
  bool more = false;
  for (hak_heap_t* h = heaps_free; h != NULL; h = h->next_free) {
    if (h->purge_next_ns == 0) continue;
    if (all || now >= h->purge_next_ns) _hak_purge_heap(h, now, all);
    more |= h->purge_next_ns != 0;
  }
  hak_unlock(&heap_lock);
  return more;
}

/* ---- fork ------------------------------------------------------------------ */
void _hak_heap_lock(bool lock) {
  if (lock) pthread_mutex_lock(&heap_lock.m);
  else pthread_mutex_unlock(&heap_lock.m);
}

/* In the child only the forking thread lives.  Every other heap is
 * abandoned, so its memory is reclaimed and reused: the abandoned list is
 * built again from the registry, since a thread may have vanished between
 * marking its heap abandoned and listing it (heap_abandon while a fork was
 * pending), or while taking one.  A heap in which a vanished thread was
 * mid-update (no lock guards a heap's own structures) does not pass the
 * structural check and is left alone, its memory lost to the child but
 * nothing corrupted. */
size_t _hak_fork_cuts;
void _hak_heap_fork_child(void) {
  /* the forking thread holds every lock (prepare): released at the end */
  hak_heap_t* self = _hak_heap_tls;
  if (self != &_hak_heap_empty) atomic_store_explicit(&self->owner_tid, _hak_os_tid(), memory_order_relaxed); /* a new tid */
#ifndef HAK_FAULT_FORK_KEEPS_DEAD_HEAPS /* fault injection: vanished threads' heaps stay owned */
#ifndef HAK_FAULT_FORK_LISTS_KEPT /* fault injection: the lists as the fork found them */
  heaps_free = NULL;
  atomic_store_explicit(&heaps_orphans, NULL, memory_order_relaxed);
  atomic_store_explicit(&heaps_abandoned_now, 0, memory_order_relaxed);
#endif
  for (hak_heap_t* h = atomic_load(&heaps_all); h != NULL; h = h->next_all) {
#ifdef HAK_FAULT_FORK_LISTS_KEPT
    if (h == self || atomic_load_explicit(&h->abandoned, memory_order_relaxed)) continue;
#else
    if (h == self) continue;
#endif
    /* its thread, alive or exiting at the fork, may have been mid-free */
    if (atomic_load_explicit(&h->owner_tid, memory_order_relaxed) != HAK_HEAP_LOST) _hak_fork_cuts++;
    if (_hak_check_heap_structure(h) != 0) { /* mid-update: never taken over */
      atomic_store_explicit(&h->owner_tid, HAK_HEAP_LOST, memory_order_relaxed);
      atomic_store_explicit(&h->abandoned, false, memory_order_relaxed);
      continue;
    }
    atomic_store_explicit(&h->owner_tid, 0, memory_order_relaxed);
    h->forked = true;
    heap_push_abandoned(h);
  }
  atomic_store_explicit(&_hak_heaps_dirty, true, memory_order_relaxed);
#endif
  pthread_mutex_unlock(&heap_lock.m);
}

/* ---- registry and statistics ---------------------------------------------- */
hak_heap_t* _hak_heaps_first(void) { return atomic_load(&heaps_all); }

/* Lock-free: exit-time statistics must not wait for a lock that the
 * interrupted program may hold. */
void _hak_heap_stats(hak_stats_t* st) {
  struct {
#define HAK_X(n) uint64_t n;
    HAK_HEAP_COUNTERS(HAK_X)
#undef HAK_X
  } sum = {0};
  for (hak_heap_t* h = atomic_load(&heaps_all); h != NULL; h = h->next_all) {
#define HAK_X(n) sum.n += atomic_load_explicit(&h->counters.n, memory_order_relaxed);
    HAK_HEAP_COUNTERS(HAK_X)
#undef HAK_X
  }
  st->served_small = sum.small_allocs;
  st->served_large = sum.large_allocs;
  st->freed_small += sum.small_frees + sum.remote_small_frees;
  st->freed_large += sum.large_frees + sum.remote_large_frees;
  st->freed_remote += sum.remote_small_frees + sum.remote_large_frees;
  st->pages_initialized = sum.pages_init;
  st->pages_retired = sum.pages_retired;
  st->pages_refills = sum.refills;
  st->sites_seen_through = sum.seen_through;
  st->sites_unresolved = sum.unresolved;
  st->sites_walks = sum.walks;
#ifdef HAK_FAULT_EXIT_STATS_LOCK /* fault injection: statistics wait for the heap lock */
  pthread_mutex_lock(&heap_lock.m);
  pthread_mutex_unlock(&heap_lock.m);
#endif
  st->heaps_created = atomic_load_explicit(&heaps_created, memory_order_relaxed);
  st->heaps_reused = atomic_load_explicit(&heaps_reused, memory_order_relaxed);
  st->heaps_abandoned = atomic_load_explicit(&heaps_abandoned_now, memory_order_relaxed);
}
