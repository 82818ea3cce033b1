/* Segments: 4 MiB aligned regions owned by one heap, cut into 64 slices of
 * 64 KiB.  Slice 0 holds a guard page (PROT_NONE: an overflow out of the
 * mapping below stops there) and behind it the segment header and the page
 * descriptors; runs of the other slices become pages (small) or single
 * large blocks.
 *
 * A heap keeps one empty segment of its own; further empty segments go to a
 * process-wide cache (cache_limit: HAKMEM_SEGMENT_CACHE of them, or an
 * eighth of the segments in use) and beyond it back to the OS.  Only the
 * owner thread touches a segment's slices and mask. */
#include <string.h>

#include "internal.h"

static hak_mutex_t seg_lock = HAK_MUTEX_INIT(HAK_LOCK_SEGMENT);
static hak_segment_t* seg_cache;      /* empty segments, linked by next */
static _Atomic(size_t) seg_cache_count; /* written under seg_lock */
static _Atomic(uint64_t) seg_current;  /* owned by heaps */

/* The header only: the slice descriptors of an empty segment are zero
 * already (fresh from the OS, or every page's freed: _hak_segment_free_slices),
 * and writing 16 KiB of them would fault in 4 pages of a fresh segment. */
static void segment_init(hak_segment_t* seg, hak_heap_t* heap) {
  memset(seg, 0, offsetof(hak_segment_t, slices));
  seg->magic = HAK_SEGMENT_MAGIC;
  seg->heap = heap;
  seg->free_mask = ~(uint64_t)1; /* slice 0 is the header */
  seg->slices[0].kind = HAK_SLICE_META;
  seg->slices[0].slice_count = 1;
}

/* ---- the heap's index of segments by longest free run ------------------ */
static unsigned longest_run(uint64_t m) { /* one step per run of free slices */
  unsigned best = 0;
  while (m != 0) {
    m >>= __builtin_ctzll(m); /* a run starts at bit 0 */
    if (~m == 0) return 64; /* every bit: a whole free mask */
    unsigned n = (unsigned)__builtin_ctzll(~m);
    if (n > best) best = n;
    m >>= n;
  }
  return best;
}

static void run_unlink(hak_heap_t* heap, hak_segment_t* seg) {
  if (seg->run_prev) seg->run_prev->run_next = seg->run_next;
  else heap->by_run[seg->max_run] = seg->run_next;
  if (seg->run_next) seg->run_next->run_prev = seg->run_prev;
  if (heap->by_run[seg->max_run] == NULL) heap->run_mask &= ~((uint64_t)1 << seg->max_run);
  seg->run_next = seg->run_prev = NULL;
}

static void run_link(hak_heap_t* heap, hak_segment_t* seg) {
  seg->max_run = longest_run(seg->free_mask);
  seg->run_prev = NULL;
  seg->run_next = heap->by_run[seg->max_run];
  if (seg->run_next) seg->run_next->run_prev = seg;
  heap->by_run[seg->max_run] = seg;
  heap->run_mask |= (uint64_t)1 << seg->max_run;
}

static void run_reindex(hak_heap_t* heap, hak_segment_t* seg) {
  if (longest_run(seg->free_mask) == seg->max_run) return;
  run_unlink(heap, seg);
  run_link(heap, seg);
}

/* In the fork gate (internal.h), as _hak_segment_release: a fork does not
 * come between the cache or the mapping, the segment map, the header and
 * the count of segments in use. */
static hak_segment_t* segment_alloc_gated(hak_heap_t* heap) {
  hak_segment_t* seg = NULL;
  if (hak_lock(&seg_lock)) { /* else a fork is pending: a fresh segment */
    seg = seg_cache;
    if (seg != NULL) {
      seg_cache = seg->next;
      seg_cache_count--;
    }
    hak_unlock(&seg_lock);
  }
  if (seg == NULL) {
    uint8_t* base = _hak_os_alloc_aligned(HAK_SEGMENT_SIZE, HAK_SEGMENT_SIZE);
    if (base == NULL) return NULL;
#ifndef HAK_FAULT_SEGMENT_UNGUARDED /* fault injection: no guard page */
    _hak_os_guard(base, true);
#endif
    seg = hak_segment_of(base);
    segment_init(seg, heap);
    _hak_segmap_set((uintptr_t)base, HAK_SEGMENT_SIZE, false);
  } else {
    uint64_t dirty = seg->dirty_mask; /* not purged yet */
    segment_init(seg, heap);
    seg->dirty_mask = dirty;
    heap->dirty_slices += (size_t)__builtin_popcountll(dirty);
  }
  seg->next = heap->segments;
  if (heap->segments) heap->segments->prev = seg;
  heap->segments = seg;
  heap->segment_count++;
  run_link(heap, seg);
  hak_atomic_add(seg_current, 1);
  if (seg->dirty_mask) _hak_purge_dirtied(heap);
  return seg;
}
static hak_segment_t* segment_alloc(hak_heap_t* heap) {
  _hak_gate_enter();
  hak_segment_t* seg = segment_alloc_gated(heap);
  _hak_gate_exit();
  return seg;
}

/* Empty segments the cache keeps: HAKMEM_SEGMENT_CACHE, or an eighth of
 * the segments in use when that is more (up to CACHE_MAX); 0: none.  A
 * heap of hundreds of segments whose blocks come and go empties some now
 * and then, and unmapping them costs the next segment its faults, page
 * tables and guard page: on //verify:bench large (530 segments) keeping 4
 * cost 1.1x mimalloc's time, keeping 64 matched it.  What a cached
 * segment holds is purged once it has been cached a purge delay: the cache
 * keeps address space, and its memory only for a heap that takes the
 * segment back soon (a block spanning much of a segment, freed and
 * allocated in turn: the sites scenario; bursts a few milliseconds apart). */
#define CACHE_MAX 256
static size_t cache_limit(void) {
  size_t min = (size_t)hak_option(HAK_OPT_SEGMENT_CACHE);
  size_t share = atomic_load_explicit(&seg_current, memory_order_relaxed) / 8;
  if (min == 0) return 0;
  if (share > CACHE_MAX) share = CACHE_MAX;
  return share > min ? share : min;
}

static void segment_unmap(hak_segment_t* seg) {
  seg->magic = 0;
#ifndef HAK_FAULT_SEGMAP_NOT_CLEARED /* fault injection: the map still names an unmapped segment */
  _hak_segmap_clear((uintptr_t)hak_segment_base(seg), HAK_SEGMENT_SIZE);
#endif
  _hak_os_free(hak_segment_base(seg), HAK_SEGMENT_SIZE);
}

/* Gives an empty segment back: to the cache, or to the OS. */
static void segment_release(hak_heap_t* heap, hak_segment_t* seg) {
  run_unlink(heap, seg);
#ifdef HAK_FAULT_SEGMENT_PURGED_WHEN_CACHED /* fault injection: purged as it goes (this session's first version) */
  _hak_purge_segment(seg, true);
#endif
  heap->dirty_slices -= (size_t)__builtin_popcountll(seg->dirty_mask);
  if (seg->prev) seg->prev->next = seg->next;
  else heap->segments = seg->next;
  if (seg->next) seg->next->prev = seg->prev;
  heap->segment_count--;
  atomic_fetch_sub(&seg_current, 1);
  seg->heap = NULL;
  seg->prev = NULL;
  if (hak_lock(&seg_lock)) { /* else a fork is pending: straight to the OS */
    bool cached = seg_cache_count < cache_limit();
    if (cached) {
      seg->next = seg_cache;
      seg_cache = seg;
      seg_cache_count++;
      seg->aged_mask = 0;
      seg->cached_ms = (uint32_t)(_hak_os->now_ns() / 1000000u); /* its idle time in the cache starts now */
    }
    /* the caches' tick purges it, and unmaps a surplus: the heap shrinking
     * (this release) can make the cache one, though this one went to the OS */
#ifndef HAK_FAULT_SEGMENT_SURPLUS_UNNOTICED /* fault injection: only a dirty segment cached starts the tick */
    if ((cached && seg->dirty_mask) || seg_cache_count > (size_t)hak_option(HAK_OPT_SEGMENT_CACHE)) hak_purge_global_due();
#else
    if (cached && (seg->dirty_mask || seg_cache_count > (size_t)hak_option(HAK_OPT_SEGMENT_CACHE))) hak_purge_global_due();
#endif
    if (cached) seg = NULL;
    hak_unlock(&seg_lock);
  }
  if (seg != NULL) segment_unmap(seg);
}
void _hak_segment_release(hak_heap_t* heap, hak_segment_t* seg) {
  _hak_gate_enter();
  segment_release(heap, seg);
  _hak_gate_exit();
}

/* First run of n set bits in mask, or -1: after the steps, bit i of m is
 * set iff bits i .. i+have-1 of mask are, have doubling up to n (log n
 * steps, not n). */
static int mask_find_run(uint64_t mask, size_t n) {
  uint64_t m = mask;
  size_t have = 1;
  while (have < n && m) {
    size_t step = have <= n - have ? have : n - have;
    m &= m >> step;
    have += step;
  }
  return m ? __builtin_ctzll(m) : -1;
}

/* A run of n free slices from one of the heap's segments (a new segment if
 * none has room), set up as a page head plus interior descriptors: the
 * first free run of prefer's (one of the heap's segments, or NULL) that is
 * all resident, else the first run of the segment whose longest free run
 * is the shortest that fits (one bit scan). */
hak_page_t* _hak_segment_alloc_slices(hak_heap_t* heap, size_t n, hak_segment_t* prefer) {
  hak_segment_t* seg = prefer;
  int start = prefer != NULL ? mask_find_run(prefer->free_mask & prefer->dirty_mask, n) : -1;
  if (start < 0) {
    uint64_t fits = n < HAK_SLICES ? heap->run_mask & (~(uint64_t)0 << n) : 0;
    seg = fits ? heap->by_run[__builtin_ctzll(fits)] : NULL;
    start = seg != NULL ? mask_find_run(seg->free_mask, n) : -1;
  }
  if (seg == NULL) {
    seg = segment_alloc(heap);
    if (seg == NULL) return NULL;
    start = mask_find_run(seg->free_mask, n);
  }
  uint64_t bits = (n == 64 ? ~(uint64_t)0 : (((uint64_t)1 << n) - 1)) << start;
  bool zero = (seg->dirty_mask & bits) == 0; /* fresh from the OS or purged since */
#ifdef HAK_FAULT_CALLOC_LARGE_DIRTY /* fault injection: reused slices taken for zero */
  zero = true;
#endif
  seg->free_mask &= ~bits;
#ifndef HAK_FAULT_PURGE_LIVE /* fault injection (with purge.c's): reused slices stay dirty */
  heap->dirty_slices -= (size_t)__builtin_popcountll(seg->dirty_mask & bits);
  seg->dirty_mask &= ~bits; /* in use: never purged */
  seg->aged_mask &= ~bits;
#endif
  run_reindex(heap, seg);
  seg->used_slices += (uint32_t)n;
  hak_page_t* page = &seg->slices[start];
  for (size_t i = 1; i < n; i++) {
    hak_page_t* s = &seg->slices[start + i];
    s->kind = HAK_SLICE_INTERIOR;
    s->slice_back = (uint8_t)i;
  }
  page->slice_count = (uint32_t)n;
  page->zero = zero;
  page->slice_index = (uint32_t)start;
  page->slice_back = 0;
  page->start = hak_slice_addr(seg, (size_t)start);
  return page;
}

/* Returns a retired page's slices; an empty segment is released unless it
 * is the heap's last one. */
void _hak_segment_free_slices(hak_heap_t* heap, hak_page_t* page, bool idle) {
  hak_segment_t* seg = hak_segment_of(page);
  size_t start = page->slice_index, n = page->slice_count;
  for (size_t i = 0; i < n; i++) { /* what a stale pointer into the run was */
    seg->former[start + i].start = (uint32_t)(page->start - hak_segment_base(seg));
    seg->former[start + i].block_size = page->block_size;
  }
  /* the head's descriptor whole; an interior's holds only its kind and
   * slice_back (the rest stayed zero since its last time as a head): one
   * line each, not four (a 1 MiB block has 16 interiors) */
  memset(page, 0, sizeof(hak_page_t));
  for (size_t i = 1; i < n; i++) {
    hak_page_t* s = &seg->slices[start + i];
#ifndef HAK_FAULT_INTERIOR_NOT_RESET /* fault injection: freed slices stay interiors */
    s->kind = HAK_SLICE_FREE;
#endif
    s->slice_back = 0;
  }
  uint64_t bits = (n == 64 ? ~(uint64_t)0 : (((uint64_t)1 << n) - 1)) << start;
  seg->free_mask |= bits;
  heap->dirty_slices += (size_t)__builtin_popcountll(~seg->dirty_mask & bits);
  seg->dirty_mask |= bits; /* purged once idle (purge.c) */
  if (idle) seg->aged_mask |= bits; /* idle already: purged at this tick */
  seg->used_slices -= (uint32_t)n;
#ifndef HAK_FAULT_RUN_INDEX_STALE /* fault injection: freed runs are not found again */
  run_reindex(heap, seg);
#endif
  _hak_purge_dirtied(heap);
  if (seg->used_slices == 0 && (heap->segment_count > 1 || atomic_load_explicit(&heap->abandoned, memory_order_relaxed)))
    _hak_segment_release(heap, seg);
}

/* The caches' purge tick (purge.c, at now_ns): purges the cached segments
 * cached a purge delay or longer (all: every one), and
 * unmaps those beyond cache_limit() that are clean and have been cached two
 * purge delays (the cache grew with a heap that has shrunk since).  The
 * madvise calls run under seg_lock (CACHE_MAX segments at most); true while
 * a later tick has work. */
static bool segment_purge_cached(uint64_t now_ns, bool all) {
  bool more = false;
  hak_segment_t* surplus = NULL;
  if (!hak_lock(&seg_lock)) return true; /* a fork is pending: later */
  size_t keep = cache_limit();
  uint32_t now_ms = (uint32_t)(now_ns / 1000000u), idle_ms = 2 * (uint32_t)hak_option(HAK_OPT_PURGE_DELAY_MS);
  uint32_t purge_ms = (uint32_t)hak_option(HAK_OPT_PURGE_DELAY_MS);
  bool purge_all = all;
#ifdef HAK_FAULT_SEGMENT_CACHE_UNPURGED /* fault injection: cached segments keep their pages */
  purge_ms = UINT32_MAX, purge_all = false;
#endif
  for (hak_segment_t** link = &seg_cache; *link != NULL;) {
    hak_segment_t* seg = *link;
    if (seg->dirty_mask != 0 && (purge_all || (uint32_t)(now_ms - seg->cached_ms) >= purge_ms))
      _hak_purge_segment(seg, true);
    more |= seg->dirty_mask != 0;
#ifndef HAK_FAULT_SEGMENT_CACHE_KEPT /* fault injection: the cache never shrinks back */
    if (seg->dirty_mask == 0 && seg_cache_count > keep && (all || (uint32_t)(now_ms - seg->cached_ms) >= idle_ms)) {
#else
    if (false && (all || (uint32_t)(now_ms - seg->cached_ms) >= idle_ms)) {
#endif
      *link = seg->next;
      seg_cache_count--;
      seg->next = surplus;
      surplus = seg;
      continue;
    }
    link = &seg->next;
  }
  more |= seg_cache_count > keep; /* surplus not idle long enough yet */
  hak_unlock(&seg_lock);
  while (surplus != NULL) {
    hak_segment_t* next = surplus->next;
    segment_unmap(surplus);
    surplus = next;
  }
  return more;
}

/* In the fork gate: a surplus segment leaves the cache, then the map. */
bool _hak_segment_purge_cached(uint64_t now_ns, bool all) {
  _hak_gate_enter();
  bool more = segment_purge_cached(now_ns, all);
  _hak_gate_exit();
  return more;
}

/* The segment cache's violations (hak_check_heap): a cached segment that
 * is not registered, is owned, holds a page, or marks slices aged that are
 * not dirty; the count; *first: the first one. */
size_t _hak_segment_check_cached(const void** first) {
  size_t bad = 0, n = 0;
  *first = NULL;
  if (!hak_lock(&seg_lock)) return 0; /* a fork is pending: not now */
  for (hak_segment_t* seg = seg_cache; seg != NULL && n <= CACHE_MAX + 1024; seg = seg->next, n++) {
    bool ok = seg->magic == HAK_SEGMENT_MAGIC && seg->heap == NULL && seg->used_slices == 0 &&
              seg->free_mask == ~(uint64_t)1 && (seg->dirty_mask & ~seg->free_mask) == 0 &&
              (seg->aged_mask & ~seg->dirty_mask) == 0 && seg->kept_slices == 0 &&
              hak_map_is_segment(hak_segmap_get((uintptr_t)hak_segment_base(seg)));
    if (!ok && bad++ == 0) *first = seg;
  }
  /* exactly: the list and its count change together under seg_lock, which
   * a fork takes (no thread that gave up at the gate holds it then) */
  if (n != seg_cache_count && bad++ == 0) *first = seg_cache;
  hak_unlock(&seg_lock);
  return bad;
}

/* Unmaps every cached empty segment (hak_collect). */
void _hak_segment_trim(void) {
  _hak_gate_enter(); /* a segment leaves the cache, then the map */
  hak_segment_t* list = NULL;
  if (hak_lock(&seg_lock)) { /* else a fork is pending: later */
    list = seg_cache;
    seg_cache = NULL;
    seg_cache_count = 0;
    hak_unlock(&seg_lock);
  }
  while (list != NULL) {
    hak_segment_t* next = list->next;
    segment_unmap(list);
    list = next;
  }
  _hak_gate_exit();
}

void _hak_segment_stats(hak_stats_t* st) {
  st->segments_current = atomic_load(&seg_current);
  st->segments_cached = atomic_load_explicit(&seg_cache_count, memory_order_relaxed); /* no lock: exit */
}

void _hak_segment_lock(bool lock) {
  if (lock) pthread_mutex_lock(&seg_lock.m);
  else pthread_mutex_unlock(&seg_lock.m);
}

void _hak_segment_fork_child(void) { pthread_mutex_unlock(&seg_lock.m); /* held since prepare */ }
