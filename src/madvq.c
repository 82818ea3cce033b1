/* The batch queue: huge mappings leaving BigCache wait here and are
 * released to the OS in batches, so that TLB shootdowns and system calls
 * are amortized.
 *
 * - madvq_push adds a mapping [base, base+size) whose block ends at
 *   base + used and of which `bytes` may be resident.  The queue is
 *   released when those bytes reach HAKMEM_BATCH_BYTES (8 MiB) or it holds
 *   HAKMEM_BATCH_RANGES (256)
 *   ranges, when its oldest range has waited HAKMEM_BATCH_DEADLINE_MS
 *   (checked on every huge allocation and free), or on hak_collect().
 * - Release sorts the ranges by address and coalesces neighbouring
 *   mappings (usually placed back to back), then advises each run, from
 *   its first base to its last mapping's used end, with MADV_FREE
 *   (MADV_DONTNEED where the kernel lacks it): one system call per run,
 *   not per block (advising never-touched tails in between costs nothing).
 * - A huge allocation whose mapping size matches a queued range takes it
 *   back before it is ever advised (no system call, no page fault).
 * - Released mappings stay mapped and registered, retained for reuse by
 *   the next huge allocation of the same mapping size (no mmap).  Only when
 *   more than HAKMEM_RETAIN_BYTES are retained are the oldest unmapped, and
 *   when a fresh mapping must be made anyway (none fits) as many bytes of
 *   the oldest go first (_hak_madvq_shed).
 *   hak_collect() unmaps everything.
 * - MADV_FREE'd pages still count in RSS (and a cgroup's memory) until the
 *   kernel is short of memory: a mapping retained for HAKMEM_PURGE_DELAY_MS
 *   is decommitted with MADV_DONTNEED (_hak_madvq_purge, from purge.c's
 *   tick).  While that call runs the range is marked busy, and reuse skips
 *   it.
 * - Flushing never allocates and uses almost no stack: ranges are copied to
 *   static buffers owned by flush_lock (flushes are serialized; system
 *   calls run under it).  q_lock guards the queue and the retained list;
 *   no system call runs under it.  Lock order: flush_lock, q_lock.
 *
 * Invariants: queued and retained ranges are disjoint, 4 MiB aligned, each
 * a whole registered huge mapping that no live block and no BigCache slot
 * uses; queue_bytes == sum of queued sizes; retained_bytes likewise. */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "internal.h"

#define QUEUE_MAX 256
#define RETAINED_MAX 512

typedef struct range_s {
  uintptr_t base;
  size_t size;  /* the whole mapping */
  size_t used;  /* bytes from base to the end of the block */
  size_t bytes; /* bytes that may be resident (block and header page) */
  uint64_t since_ns; /* retained: since when */
  bool purged;       /* retained: decommitted (MADV_DONTNEED) since */
  bool busy;         /* retained: being decommitted, not to be reused */
} range_t;

static hak_mutex_t q_lock = HAK_MUTEX_INIT(HAK_LOCK_QUEUE);
static hak_mutex_t flush_lock = HAK_MUTEX_INIT(HAK_LOCK_FLUSH);
/* flush_lock's: the batch being released and the mappings to unmap */
static range_t flush_batch[QUEUE_MAX];
static range_t flush_unmap[RETAINED_MAX + QUEUE_MAX];
static range_t queue[QUEUE_MAX];
static size_t queue_len, queue_bytes;
static uint64_t queue_oldest_ns;
static range_t retained[RETAINED_MAX]; /* oldest first */
static size_t retained_len, retained_bytes;

static _Atomic(size_t) q_pending; /* queue_len, readable without the lock */
static _Atomic(uint64_t) st_requeued; /* taken back from the queue unadvised */
static _Atomic(uint64_t) st_queued, st_flushes, st_madvise_calls, st_bytes_advised, st_munmaps,
    st_reused, st_retained_bytes;

/* q_lock with flush_lock held, waiting even while a fork is pending (its
 * forking thread takes flush_lock first).  A signal handler that
 * interrupted a later lock's holder polls instead of blocking (it waits for
 * no lock its own thread holds: it got q_lock earlier in the same call,
 * so the interrupted code does not hold it; a blocking wait there is an
 * order inversion to TSan). */
static void q_lock_blocking(void) {
  bool reentered = _hak_locks_held >= q_lock.bit;
  _hak_locks_held |= q_lock.bit;
  atomic_signal_fence(memory_order_seq_cst);
  if (hak_forking()) return;
  if (hak_likely(!reentered)) {
    pthread_mutex_lock(&q_lock.m);
    return;
  }
  while (pthread_mutex_trylock(&q_lock.m) != 0) _hak_os->pause_us(20);
}

static bool flush_due(uint64_t now) {
  if (queue_len == 0) return false;
  return queue_bytes >= (size_t)hak_option(HAK_OPT_BATCH_BYTES) ||
         queue_len >= (size_t)hak_option(HAK_OPT_BATCH_RANGES) || queue_len == QUEUE_MAX ||
         now - queue_oldest_ns >= (uint64_t)hak_option(HAK_OPT_BATCH_DEADLINE_MS) * 1000000u;
}

/* A mapping released at once, not queued (a fork is pending). */
static void release_now(uintptr_t base, size_t size) {
  _hak_segmap_clear(base, size);
  _hak_os_free((void*)base, size);
  hak_atomic_add(st_munmaps, 1);
}

void _hak_madvq_push(uintptr_t base, size_t size, size_t used, size_t bytes) {
  uint64_t now = _hak_os->now_ns();
  bool full;
  if (!hak_lock(&q_lock)) {
    release_now(base, size);
    return;
  }
  while (queue_len == QUEUE_MAX) { /* only if flushes lag behind pushes */
    hak_unlock(&q_lock);
    /* a flush that cannot run leaves the queue full: at once then (a
     * signal handler over its own thread's flush spun here for good:
     * review J's pushloop2.c) */
    bool flushed = _hak_madvq_flush(false);
#ifdef HAK_FAULT_PUSH_RETRIES_FLUSH /* fault injection: the push tries again regardless */
    flushed = true;
#endif
    if (!flushed || !hak_lock(&q_lock)) {
      release_now(base, size);
      return;
    }
  }
  if (queue_len == 0) queue_oldest_ns = now;
  queue[queue_len++] = (range_t){base, size, used, bytes, now, false, false};
  atomic_store_explicit(&q_pending, queue_len, memory_order_relaxed);
  queue_bytes += bytes;
  full = flush_due(now);
  hak_unlock(&q_lock);
  hak_purge_global_due(); /* the deadline is kept by the purge tick too */
  hak_atomic_add(st_queued, 1);
  if (full) _hak_madvq_flush(false);
}

void _hak_madvq_tick(void) {
  if (atomic_load_explicit(&q_pending, memory_order_relaxed) == 0) return;
  uint64_t now = _hak_os->now_ns();
  if (!hak_lock(&q_lock)) return; /* a fork is pending: later */
  bool due = flush_due(now);
  hak_unlock(&q_lock);
  if (due) _hak_madvq_flush(false);
}

static void sort_ranges(range_t* r, size_t n) {
  for (size_t i = 1; i < n; i++) {
    range_t x = r[i];
    size_t j = i;
    for (; j > 0 && r[j - 1].base > x.base; j--) r[j] = r[j - 1];
    r[j] = x;
  }
}

static void advise_run(uintptr_t base, size_t size) {
  hak_atomic_add(st_madvise_calls, 1);
  if (_hak_os_advise((void*)base, size, MADV_FREE) == EINVAL) {
    hak_atomic_add(st_madvise_calls, 1);
    _hak_os_advise((void*)base, size, MADV_DONTNEED);
  }
  hak_atomic_add(st_bytes_advised, size);
}

/* Releases the queue; with all, also unmaps every retained mapping.  false:
 * it could not run (a fork is pending, or a signal handler interrupted its
 * own thread's flush). */
bool _hak_madvq_flush(bool all) {
#ifdef HAK_FAULT_FLUSH_ON_STACK /* fault injection: 32 KiB of ranges on the stack */
  range_t batch[QUEUE_MAX];
  range_t unmap[RETAINED_MAX + QUEUE_MAX];
  (void)flush_batch;
#else
  range_t* batch = flush_batch;
  range_t* unmap = flush_unmap;
#endif
  size_t n, nu = 0;
  uint64_t now = _hak_os->now_ns();
  if (!hak_lock(&flush_lock)) return false; /* a fork is pending: later */
  if (!hak_lock(&q_lock)) {
    hak_unlock(&flush_lock);
    return false;
  }
  n = queue_len;
  memcpy(batch, queue, n * sizeof(range_t));
  queue_len = queue_bytes = 0;
  atomic_store_explicit(&q_pending, 0, memory_order_relaxed);
  hak_unlock(&q_lock);

  if (n > 0) {
    hak_atomic_add(st_flushes, 1);
    sort_ranges(batch, n);
    size_t first = 0;
    for (size_t i = 1; i <= n; i++) {
      if (i < n && batch[i].base == batch[i - 1].base + batch[i - 1].size) continue;
#ifdef HAK_FAULT_MADVQ_HEADER_PAGE /* fault injection: the run reaches into the next mapping's header page */
      advise_run(batch[first].base, batch[i - 1].base + batch[i - 1].size + 4096 - batch[first].base);
#else
      advise_run(batch[first].base, batch[i - 1].base + batch[i - 1].used - batch[first].base);
#endif
      first = i;
    }
  }

  if (!hak_lock(&q_lock)) { /* a fork is pending: what was advised is released */
    for (size_t i = 0; i < n; i++) release_now(batch[i].base, batch[i].size);
    hak_unlock(&flush_lock);
    return true;
  }
  for (size_t i = 0; i < n; i++) {
    if (retained_len == RETAINED_MAX) { /* table full: the oldest goes */
      unmap[nu++] = retained[0];
      retained_bytes -= retained[0].size;
      memmove(retained, retained + 1, --retained_len * sizeof(range_t));
    }
    batch[i].since_ns = now;
    batch[i].purged = batch[i].busy = false;
    retained[retained_len++] = batch[i];
    retained_bytes += batch[i].size;
  }
  size_t budget = all ? 0 : (size_t)hak_option(HAK_OPT_RETAIN_BYTES);
  size_t drop = 0;
  while (drop < retained_len && retained_bytes > budget) {
    unmap[nu++] = retained[drop];
    retained_bytes -= retained[drop].size;
    drop++;
  }
  retained_len -= drop;
  memmove(retained, retained + drop, retained_len * sizeof(range_t));
  atomic_store(&st_retained_bytes, retained_bytes);
  bool retaining = retained_len > 0;
  hak_unlock(&q_lock);
  if (retaining) hak_purge_global_due(); /* decommitted after the purge delay */

  for (size_t i = 0; i < nu; i++) { /* deferred munmap, beyond the budget */
    _hak_segmap_clear(unmap[i].base, unmap[i].size);
    _hak_os_free((void*)unmap[i].base, unmap[i].size);
    hak_atomic_add(st_munmaps, 1);
  }
  hak_unlock(&flush_lock);
  return true;
}

/* A fresh mapping of size bytes is about to be made although mappings are
 * retained (none fits): the oldest retained ones, as many bytes, are
 * unmapped first, so that what no request could reuse does not stay
 * resident (MADV_FREE'd pages count until the kernel is short) while the
 * heap grows by as much. */
void _hak_madvq_shed(size_t size) {
  if (atomic_load_explicit(&st_retained_bytes, memory_order_relaxed) == 0) return;
#ifdef HAK_FAULT_MADVQ_NO_SHED /* fault injection: retained mappings stay while the heap grows */
  return;
#endif
  if (!hak_lock(&flush_lock)) return; /* a fork is pending: later */
  if (!hak_lock(&q_lock)) {
    hak_unlock(&flush_lock);
    return;
  }
  range_t* unmap = flush_unmap;
  size_t nu = 0, shed = 0;
  while (nu < retained_len && shed < size && !retained[nu].busy) {
    shed += retained[nu].size;
    unmap[nu] = retained[nu];
    nu++;
  }
  retained_len -= nu;
  retained_bytes -= shed;
  memmove(retained, retained + nu, retained_len * sizeof(range_t));
  atomic_store(&st_retained_bytes, retained_bytes);
  hak_unlock(&q_lock);
  for (size_t i = 0; i < nu; i++) {
    _hak_segmap_clear(unmap[i].base, unmap[i].size);
    _hak_os_free((void*)unmap[i].base, unmap[i].size);
    hak_atomic_add(st_munmaps, 1);
  }
  hak_unlock(&flush_lock);
}

/* Best fit among [size, 4 x size] in r[0..n), newest first on ties; -1. */
static long best_fit(const range_t* r, size_t n, size_t size) {
  long best = -1;
  for (size_t i = n; i-- > 0;)
    if (!r[i].busy && r[i].size >= size && r[i].size <= 4 * size && (best < 0 || r[i].size < r[best].size))
      best = (long)i;
  return best;
}

/* A mapping of at least size bytes (at most 4x: the rest stays virtual)
 * to reuse, or 0; *got is its size, *used where its last block ended (so
 * the caller knows where that block's guard page is).  First one still waiting in the queue
 * (never advised: no system call, no page fault), then a retained one. */
uintptr_t _hak_madvq_reuse(size_t size, size_t* got, size_t* used) {
  uintptr_t base = 0;
  if (atomic_load_explicit(&q_pending, memory_order_relaxed) == 0 &&
      atomic_load_explicit(&st_retained_bytes, memory_order_relaxed) == 0)
    return 0;
  if (!hak_lock(&q_lock)) return 0; /* a fork is pending: a fresh mapping */
  long i = best_fit(queue, queue_len, size);
  if (i >= 0) {
    base = queue[i].base;
    *got = queue[i].size;
    *used = queue[i].used;
#ifndef HAK_FAULT_MADVQ_LIVE /* fault injection: the range stays queued */
    queue_bytes -= queue[i].bytes;
    queue[i] = queue[--queue_len];
#endif
    atomic_store_explicit(&q_pending, queue_len, memory_order_relaxed);
    hak_unlock(&q_lock);
    hak_atomic_add(st_requeued, 1);
    return base;
  }
  i = best_fit(retained, retained_len, size);
  if (i >= 0) {
    base = retained[i].base;
    *got = retained[i].size;
    *used = retained[i].used;
    retained_bytes -= retained[i].size;
    memmove(retained + i, retained + i + 1, (--retained_len - (size_t)i) * sizeof(range_t));
    atomic_store(&st_retained_bytes, retained_bytes);
  }
  hak_unlock(&q_lock);
  if (base) hak_atomic_add(st_reused, 1);
  return base;
}

bool _hak_madvq_purge(uint64_t now, bool all) {
  if (atomic_load_explicit(&st_retained_bytes, memory_order_relaxed) == 0)
    return atomic_load_explicit(&q_pending, memory_order_relaxed) != 0; /* the deadline needs ticks */
  uint64_t delay = (uint64_t)hak_option(HAK_OPT_PURGE_DELAY_MS) * 1000000u;
  range_t* batch = flush_batch;
  size_t n = 0;
  bool more = false;
  if (!hak_lock(&flush_lock)) return true; /* a fork is pending: later */
  if (!hak_lock(&q_lock)) {
    hak_unlock(&flush_lock);
    return true;
  }
  for (size_t i = 0; i < retained_len; i++) {
    range_t* r = &retained[i];
    if (r->purged) continue;
    if (all || now - r->since_ns >= delay) {
      if (n == QUEUE_MAX) {
        more = true;
        break;
      }
      r->busy = true;
      batch[n++] = *r;
    } else {
      more = true;
    }
  }
  hak_unlock(&q_lock);
  for (size_t i = 0; i < n; i++) { /* flush_lock held: no flush unmaps them */
    _hak_os_advise((void*)batch[i].base, batch[i].used, MADV_DONTNEED);
    _hak_purge_count(batch[i].used);
  }
  /* not hak_lock: its "a fork is pending" answer would leave the ranges
   * busy (never reused).  Blocking is safe: a forking thread waits for
   * flush_lock, held here, before it takes q_lock. */
  q_lock_blocking();
  for (size_t i = 0; i < retained_len; i++)
    if (retained[i].busy) {
      retained[i].busy = false;
      retained[i].purged = true;
    }
  more |= queue_len != 0;
  hak_unlock(&q_lock);
  hak_unlock(&flush_lock);
  return more;
}

/* Checker: queued and retained ranges are disjoint and aligned. */
size_t _hak_madvq_check(void) {
  size_t bad = 0;
  if (!hak_lock(&flush_lock)) return 0; /* its buffer, not 24 KiB of stack */
  range_t* all = flush_unmap;
  if (!hak_lock(&q_lock)) {
    hak_unlock(&flush_lock);
    return 0;
  }
  size_t n = 0;
  for (size_t i = 0; i < queue_len; i++) all[n++] = queue[i];
  for (size_t i = 0; i < retained_len; i++) all[n++] = retained[i];
  hak_unlock(&q_lock);
  sort_ranges(all, n);
  for (size_t i = 0; i < n; i++) {
    if ((all[i].base & HAK_SEGMENT_MASK) || (all[i].size & HAK_SEGMENT_MASK)) bad++;
    if (i > 0 && all[i - 1].base + all[i - 1].size > all[i].base) bad++;
  }
  hak_unlock(&flush_lock);
  return bad;
}

/* Checker: mappings queued or retained (*n), and whether base is one. */
bool _hak_madvq_holds(uintptr_t base, size_t* n) {
  bool found = false;
  if (n) *n = 0;
  if (!hak_lock(&q_lock)) return false;
  for (size_t i = 0; i < queue_len; i++) found |= queue[i].base == base;
  for (size_t i = 0; i < retained_len; i++) found |= retained[i].base == base;
  if (n) *n = queue_len + retained_len;
  hak_unlock(&q_lock);
  return found;
}

void _hak_madvq_lock(bool lock) {
  if (lock) {
    pthread_mutex_lock(&flush_lock.m);
    pthread_mutex_lock(&q_lock.m);
  } else {
    pthread_mutex_unlock(&q_lock.m);
    pthread_mutex_unlock(&flush_lock.m);
  }
}
void _hak_madvq_fork_child(void) {
  pthread_mutex_unlock(&q_lock.m); /* held by the forking thread since prepare */
  pthread_mutex_unlock(&flush_lock.m);
}

void _hak_madvq_stats(hak_stats_t* st) {
  st->batch_queued = atomic_load(&st_queued);
  st->batch_flushes = atomic_load(&st_flushes);
  st->batch_madvise_calls = atomic_load(&st_madvise_calls);
  st->batch_bytes_advised = atomic_load(&st_bytes_advised);
  st->batch_munmaps = atomic_load(&st_munmaps);
  st->batch_reused = atomic_load(&st_reused);
  st->batch_taken_back = atomic_load(&st_requeued);
  st->batch_retained_bytes = atomic_load(&st_retained_bytes);
}
