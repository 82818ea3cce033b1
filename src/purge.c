/* Purge: free memory inside live structures goes back to the OS once it has
 * been idle for HAKMEM_PURGE_DELAY_MS, without hak_collect().
 *
 * What is purged, with MADV_DONTNEED (resident pages are dropped at once
 * and come back as zero pages when touched again):
 *  - the free slice runs of every heap's segments (retired pages, freed
 *    large blocks), by the heap's owner; empty pages kept for their bin are
 *    retired first once kept a whole tick (page.c);
 *  - cached empty segments, once cached a delay (segment.c);
 *  - mappings the batch queue retains: released with MADV_FREE (cheap, but
 *    counted in RSS until the kernel needs the memory), then decommitted
 *    once retained a delay (madvq.c).
 * The huge tier's own clocks (BigCache expiry, the batch deadline) run from
 * here too, so a program that stops using huge blocks still gets them back.
 *
 * Two generations per segment: dirty_mask holds the free slices that may be
 * resident.  At each of the heap's purge ticks, one delay apart, the slices
 * that were dirty at the previous tick as well (aged_mask) are purged and
 * the others age.  A slice is so purged after an idle time between one and
 * two delays, and a slice reused in between (allocation clears both bits)
 * is never purged.
 *
 * When: a heap with dirty slices has a deadline (purge_next_ns); the slow
 * paths of every tier (small refill, page retire, large and huge allocation
 * and free) call hak_purge_tick, which does nothing unless the heap or the
 * caches hold purgeable memory, and then reads the clock every 8th call.
 * hak_collect() and malloc_trim() purge at once.  Only a heap's owner purges
 * its segments (an abandoned heap's: the holder of the heap lock). */
#include <sys/mman.h>

#include "internal.h"

_Atomic(bool) _hak_purge_global;
static _Atomic(uint64_t) global_next_ns; /* next tick of the caches */
static _Atomic(uint64_t) st_runs, st_bytes;

#define TICK_EVERY 8 /* slow-path calls per clock read while something is dirty */

/* This thread is flushing its quarantine inside a purge: the pages that
 * empties reach the slow paths' tick, which must not purge again (at
 * delay 0 a nested purge would flush the block a free is putting in; a
 * nested caches' tick could take heap_lock under itself). */
static __thread bool purging __attribute__((tls_model("initial-exec")));

static uint64_t delay_ns(void) { return (uint64_t)hak_option(HAK_OPT_PURGE_DELAY_MS) * 1000000u; }

void _hak_purge_count(size_t bytes) {
  hak_atomic_add(st_runs, 1);
  hak_atomic_add(st_bytes, bytes);
}

void _hak_purge_dirtied(hak_heap_t* heap) {
  if (heap->purge_next_ns == 0) heap->purge_next_ns = _hak_os->now_ns() + delay_ns();
}

/* Decommits the free slices of seg that were dirty at the last tick too
 * (all: every dirty one), one madvise per run; the rest age.  Nothing but
 * free slices is ever advised: the masks are cut down to free_mask. */
size_t _hak_purge_segment(hak_segment_t* seg, bool all) {
#ifdef HAK_FAULT_PURGE_LIVE /* fault injection (with segment.c's): the free mask is not consulted */
  uint64_t m = all ? seg->dirty_mask : seg->dirty_mask & seg->aged_mask;
#else
  uint64_t m = (all ? seg->dirty_mask : seg->dirty_mask & seg->aged_mask) & seg->free_mask;
#endif
  size_t bytes = 0;
  seg->dirty_mask &= ~m;
  if (seg->heap != NULL) seg->heap->dirty_slices -= (size_t)__builtin_popcountll(m); /* NULL: cached */
  while (m != 0) {
    unsigned start = (unsigned)__builtin_ctzll(m);
    uint64_t rest = ~(m >> start);
    unsigned len = rest == 0 ? 64 - start : (unsigned)__builtin_ctzll(rest);
    uint64_t run = (len == 64 ? ~(uint64_t)0 : (((uint64_t)1 << len) - 1)) << start;
    m &= ~run;
    _hak_os_advise(hak_slice_addr(seg, start), (size_t)len << HAK_SLICE_SHIFT, MADV_DONTNEED);
    _hak_purge_count((size_t)len << HAK_SLICE_SHIFT);
    bytes += (size_t)len << HAK_SLICE_SHIFT;
  }
  seg->aged_mask = seg->dirty_mask;
  return bytes;
}

void _hak_purge_heap(hak_heap_t* heap, uint64_t now, bool all) {
  /* HAKMEM_SECURE=2: a quarantine that took no block since the last tick
   * gives its blocks back (their pages may then empty and be purged); a
   * busy one keeps delaying reuse.  The owner's only: an abandoned heap's
   * ring was emptied at its abandonment, but a fork child's heaps of
   * vanished threads keep theirs (their puts may have been cut short) */
#ifndef HAK_FAULT_QUARANTINE_HELD_IDLE /* fault injection: an idle thread's quarantine pins its pages */
  if (heap->q_len != 0 && heap == _hak_heap_tls && (all || heap->q_puts == heap->q_puts_tick)) {
    purging = true; /* the pages it empties tick no nested purge (which returns at once: no nesting here) */
    _hak_quarantine_flush(heap);
    purging = false;
  }
#endif
  heap->q_puts_tick = heap->q_puts;
  bool dirty = _hak_page_age_kept(heap, all); /* first: what it retires is purged now */
  for (hak_segment_t* seg = heap->segments; seg != NULL; seg = seg->next) {
    if (seg->dirty_mask == 0) continue;
    _hak_purge_segment(seg, all);
    dirty |= seg->dirty_mask != 0;
  }
  dirty |= heap->q_len != 0; /* ticks go on while it holds blocks */
  heap->purge_next_ns = dirty ? now + delay_ns() : 0;
}

/* The caches' tick: exited threads' heaps swept and purged, the segment
 * cache's surplus, retained mappings, BigCache expiry, the batch deadline.  One thread at a time runs it (the
 * deadline is advanced by a CAS). */
static void purge_global(uint64_t now, bool all) {
  /* cleared first: a thread that has something new raises it again after */
  atomic_store_explicit(&_hak_purge_global, false, memory_order_relaxed);
  _hak_madvq_tick();
  /* what other threads freed into exited threads' heaps: swept here too,
   * so their pages are purged also when no thread refills (alloc.c) */
  if (atomic_load_explicit(&_hak_heaps_dirty, memory_order_relaxed)) _hak_heaps_reclaim();
  _hak_gate_enter(); /* expired blocks between their slot and the queue */
  bool more = _hak_bigcache_expire(now);
  _hak_gate_exit();
  more |= _hak_segment_purge_cached(now, all);
  more |= _hak_madvq_purge(now, all);
  more |= _hak_heaps_purge_abandoned(now, all);
  if (more) atomic_store_explicit(&_hak_purge_global, true, memory_order_relaxed);
}

static void purge_tick_global(uint64_t now) {
  uint64_t next = atomic_load_explicit(&global_next_ns, memory_order_relaxed);
  if (now < next) return;
  /* the delay is the caches' tick too, but at most 100 ms apart so that
   * BigCache expiry and the batch deadline keep their resolution */
  uint64_t step = delay_ns() < 100000000u ? delay_ns() : 100000000u;
  if (!atomic_compare_exchange_strong(&global_next_ns, &next, now + step)) return;
  purge_global(now, false);
}

void _hak_purge_tick_slow(hak_heap_t* heap) {
  heap->purge_countdown = TICK_EVERY - 1;
  if (purging) return;
  uint64_t now = _hak_os->now_ns();
  if (heap->purge_next_ns != 0 && now >= heap->purge_next_ns) _hak_purge_heap(heap, now, false);
  if (atomic_load_explicit(&_hak_purge_global, memory_order_relaxed)) purge_tick_global(now);
}

/* The huge free path, whose thread may have no heap: the caches' tick only
 * (huge calls cost microseconds; the clock is read at each). */
void _hak_purge_tick_any(void) {
  if (purging) return;
  hak_heap_t* heap = _hak_heap_tls;
  if (heap != &_hak_heap_empty) {
    hak_purge_tick(heap);
    return;
  }
  if (atomic_load_explicit(&_hak_purge_global, memory_order_relaxed)) purge_tick_global(_hak_os->now_ns());
}

void _hak_purge_now(void) {
  uint64_t now = _hak_os->now_ns();
  hak_heap_t* heap = _hak_heap_tls;
  if (heap != &_hak_heap_empty) _hak_purge_heap(heap, now, true);
  purge_global(now, true);
}

void _hak_purge_stats(hak_stats_t* st) {
  st->purge_runs = atomic_load(&st_runs);
  st->purge_bytes = atomic_load(&st_bytes);
}
