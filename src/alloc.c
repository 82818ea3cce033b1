/* The public API and the generic (slow) paths behind the inline fast paths
 * of internal.h: tier selection, remote (cross-thread) frees, validation and
 * misuse reports, realloc, calloc, aligned allocation, usable size. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#ifdef HAK_FAULT_BROKEN_BUILD /* the mutation script's self-test */
#error "a mutant that does not compile (verify/mutants_selftest.sh)"
#endif

/* Tier selection.  Up to 128 KiB (and for the size classes' own alignment)
 * the size classes serve; above it the policy (policy.c) decides first
 * whether the request goes straight to a mapping (huge), and that decision
 * is what routes it. */
static void reclaim_now(void) {
#ifdef HAK_FAULT_LARGE_NO_RECLAIM /* fault injection: only the small path reclaims */
  return;
#endif
  static _Atomic(uint64_t) last;
  uint64_t now = _hak_os->now_ns(), t = atomic_load_explicit(&last, memory_order_relaxed);
  if (now - t < 1000000 || !atomic_compare_exchange_strong(&last, &t, now)) return;
  _hak_heaps_reclaim();
}

/* dirty (calloc; NULL otherwise): set to the bytes from the block's start
 * that may not be zero when the tier knows the rest is (SIZE_MAX: any). */
static void* alloc_tier(hak_heap_t* heap, size_t size, size_t align, const void* site, size_t* dirty) {
  if (size < HAK_ALIGN) size = HAK_ALIGN; /* a zero-size block still needs room: aligned ones too */
  void* p;
  /* HAKMEM_SECURE: a size class with room for the canary too */
  size_t need = _hak_secure ? size + HAK_CANARY : size;
  bool mid = need <= HAK_SMALL_MAX;
  if (align <= HAK_ALIGN && mid) {
    size_t bin = _hak_bin_of(need);
    hak_block_t* b = hak_page_pop(heap->direct[bin]);
    if (hak_likely(b != NULL)) { /* sizes past the lookup table: same pop */
      hak_count(heap->counters.small_allocs, 1);
      return b; /* tracked by alloc_ex */
    }
    hak_purge_tick(heap);
    p = _hak_page_alloc_small(heap, bin);
    if (p == NULL) return NULL;
    hak_count(heap->counters.small_allocs, 1);
    hak_count(heap->counters.refills, 1); /* secure levels too: their pops are _hak_alloc_generic's */
#ifdef HAK_VERIFY
    if ((atomic_load_explicit(&heap->counters.refills, memory_order_relaxed) & 1023) == 0) HAK_VERIFY_POINT();
#endif
    /* 1 in 64 refills records its call site: the first, then every 64th */
#ifdef HAK_FAULT_SAMPLE_DEAD /* fault injection: the countdown starts at 0 and wraps */
    if (hak_unlikely(--heap->sample_countdown == 0)) {
#else
    if (hak_unlikely(heap->sample_countdown-- == 0)) {
#endif
      heap->sample_countdown = 63;
      _hak_site_alloc(hak_site_resolve(site, false), size); /* no rule looked up for a sample */
      /* and takes in what other threads freed into exited threads' heaps */
      if (atomic_load_explicit(&_hak_heaps_dirty, memory_order_relaxed)) _hak_heaps_reclaim();
    }
    return p;
  }
  /* large and huge requests take in what other threads freed into exited
   * threads' heaps first (at most once a millisecond) */
  if (hak_unlikely(atomic_load_explicit(&_hak_heaps_dirty, memory_order_relaxed))) reclaim_now();
  hak_purge_tick(heap);
  site = hak_site_resolve(site, true); /* a wrapper's caller: wrapper.c */
  hak_site_t* s = _hak_site_alloc(site, size);
  hak_decision_t d;
  size_t threshold = _hak_policy_decide(s, size, &d);
  bool fresh = false;
  if (size < threshold) {
    if (need <= HAK_SMALL_MAX) {
      size_t bin = align <= HAK_ALIGN ? _hak_bin_of(need) : _hak_bin_aligned(need, align);
      if (bin < HAK_BINS) {
        uint64_t maps = atomic_load_explicit(&_hak_os_map_count, memory_order_relaxed);
        p = _hak_page_alloc_small(heap, bin);
        if (p == NULL) return NULL;
        hak_count(heap->counters.small_allocs, 1);
        fresh = atomic_load_explicit(&_hak_os_map_count, memory_order_relaxed) != maps;
        _hak_policy_record(&d, false, fresh, _hak_bin_size(bin));
        return p;
      }
    }
    if (size + align <= (size_t)HAK_LARGE_MAX_SLICES << HAK_SLICE_SHIFT) {
      uint64_t maps = atomic_load_explicit(&_hak_os_map_count, memory_order_relaxed);
      p = _hak_page_alloc_large(heap, size, align < HAK_ALIGN ? HAK_ALIGN : align, site);
      if (p != NULL) {
        _hak_site_served(s);
        if (dirty) *dirty = hak_page_of(p)->zero ? 0 : SIZE_MAX; /* calloc: no memset of zero pages */
        fresh = atomic_load_explicit(&_hak_os_map_count, memory_order_relaxed) != maps;
        _hak_policy_record(&d, false, fresh, hak_page_of(p)->block_size);
        return p;
      }
    }
  }
  size_t stale;
  p = _hak_huge_alloc(size, align, site, s, &stale);
  if (p == NULL) return NULL;
  _hak_site_served(s);
  _hak_policy_record(&d, true, stale == 0, _hak_huge_usable(p));
  if (dirty) *dirty = stale;
  return p;
}

/* An allocation that the OS cannot back gives the caches back first
 * (BigCache, the batch queue, retained mappings, cached segments, empty
 * pages: hak_collect) and tries once more; only then ENOMEM. */
static void* alloc_ex(hak_heap_t* heap, size_t size, size_t align, const void* site, size_t* dirty) {
  if (hak_unlikely(size > PTRDIFF_MAX)) goto oom;
  for (int attempt = 0;; attempt++) {
    void* p;
    if (hak_unlikely(heap == &_hak_heap_empty) && _hak_heap_exited()) {
      /* after this thread's exit destructor: a heap for this call only */
      hak_heap_t* h = _hak_heap_borrow();
      p = h != NULL ? alloc_tier(h, size, align, site, dirty) : NULL;
      if (h != NULL) _hak_heap_unborrow(h);
    } else {
      if (hak_unlikely(heap == &_hak_heap_empty)) heap = _hak_heap_get();
      p = heap != NULL ? alloc_tier(heap, size, align, site, dirty) : NULL;
    }
    if (hak_likely(p != NULL)) {
#if HAK_TRACKING
      hak_track_alloc(p, size, _hak_usable_size(p, HAK_FN_MALLOC));
#endif
      return p;
    }
#ifdef HAK_FAULT_ENOMEM_KEEPS_CACHES /* fault injection: ENOMEM with the caches full */
    break;
#endif
    if (attempt == 1) break;
    hak_collect();
  }
oom:
  errno = ENOMEM;
  return NULL;
}

void* _hak_alloc_generic(hak_heap_t* heap, size_t size, size_t align, const void* site) {
  HAK_NOTE_SITE_SLOT(site);
  /* HAKMEM_SECURE: every small malloc misses the inline fast path (no
   * direct page); it pops from the bin's page here, before the tier
   * machinery (whose purge tick and site sampling run on refills only, as
   * at level 0) */
  if (_hak_secure && align == 0 && size <= HAK_SMALL_MAX - HAK_CANARY && heap != &_hak_heap_empty) {
    size_t need = (size < HAK_ALIGN ? HAK_ALIGN : size) + HAK_CANARY;
    size_t bin = need <= HAK_SMALL_FAST_MAX ? _hak_bin_lut[(need + HAK_ALIGN - 1) / HAK_ALIGN] : hak_bin_of_mid(need);
    void* p = _hak_page_alloc_secure(heap, bin);
    if (hak_likely(p != NULL)) {
      hak_count(heap->counters.small_allocs, 1);
#if HAK_TRACKING
      hak_track_alloc(p, size, _hak_usable_size(p, HAK_FN_MALLOC));
#endif
      return p;
    }
  }
  return alloc_ex(heap, size, align, site, NULL);
}

/* ---- free ------------------------------------------------------------- */

/* remote frees by threads without a heap (rare): the only shared counters */
static _Atomic(uint64_t) heapless_small, heapless_large;
void _hak_remote_heapless_stats(hak_stats_t* st) {
  uint64_t s = atomic_load(&heapless_small), l = atomic_load(&heapless_large);
  st->freed_small += s;
  st->freed_large += l;
  st->freed_remote += s + l;
}

/* A free of a block of another thread's page: tag it and push it, with one
 * CAS, on the page's thread_free list.  If the page is full (a large
 * block's always is), the free clears the page's full flag and pushes its
 * block on the owner heap's delayed list instead: the owner learns of the
 * page from there, without looking at its full pages (page.c), and the
 * frees that follow go on the page's list again.  The freeing thread counts
 * the free in its own heap: no other shared write.
 * A free that follows another free of the same block (in any thread, as
 * ordered by the program) finds the tag; of two remote frees racing each
 * other, the tag exchange lets exactly one through.  A remote free racing
 * the owner's own free of the block (whose check stays a plain load and
 * store on the fast path) is caught when the owner collects: the remote
 * tag did not survive (internal.h, HAK_TAG_REMOTE). */
static void free_remote(hak_page_t* page, hak_block_t* b, hak_fn_t fn) {
  uintptr_t tag = hak_freed_tag(b) ^ HAK_TAG_REMOTE;
  hak_track_free_begin(b);
  /* one exchange: of two frees racing each other exactly one pushes */
#ifdef HAK_FAULT_REMOTE_CHECK_RACY /* fault injection: test, then set */
  bool was_freed = hak_tag_is_freed(b, atomic_load_explicit(&b->tag, memory_order_relaxed));
  atomic_store_explicit(&b->tag, tag, memory_order_relaxed);
#else
  bool was_freed = hak_tag_is_freed(b, atomic_exchange_explicit(&b->tag, tag, memory_order_relaxed));
#endif
  if (was_freed) {
    _hak_error(HAK_ERR_DOUBLE_FREE, fn, b);
    return;
  }
  if (_hak_secure) { /* the block is this thread's until the push */
    if (!_hak_secure_check(page, b, fn)) return;
    _hak_secure_fill(page, b);
  }
  /* before the push: afterwards the block may be the owner's again */
  hak_track_free(b, page->block_size, HAK_TRACK_HEADER);
#ifdef HAK_FAULT_REMOTE_LOST /* fault injection: one remote free in 16 is dropped */
  static _Atomic(unsigned) lost;
  if (atomic_fetch_add(&lost, 1) % 16 == 15) return;
#endif
  /* everything read from the page is read before the push: afterwards the
   * owner may collect the block and retire the page at once */
  hak_heap_t* owner = page->heap; /* heaps are never freed */
  bool large = page->kind == HAK_SLICE_LARGE;
  uintptr_t tf = atomic_load_explicit(&page->thread_free, memory_order_relaxed);
#ifdef HAK_FAULT_REMOTE_CAS_RELAXED /* fault injection: the push does not publish b->next */
#define PUSH_ORDER memory_order_relaxed
#else
/* seq_cst (on x86 the same lock cmpxchg as release): ordered against the
 * abandon and reclaim sweeps (heap.c, heap_abandon) */
#define PUSH_ORDER memory_order_seq_cst
#endif
  for (;;) {
    if (tf & HAK_TF_FULL) {
      /* the first free into a full page clears the flag and tells the owner
       * (its block on the delayed list); the next ones go on the page */
#ifdef HAK_FAULT_REMOTE_NOTIFY_LOST /* fault injection: pushed on the page, the flag kept, nobody told */
      hak_block_set_next(b, (hak_block_t*)(tf & ~HAK_TF_FULL));
      if (atomic_compare_exchange_weak_explicit(&page->thread_free, &tf, (uintptr_t)b | HAK_TF_FULL, PUSH_ORDER,
                                                memory_order_relaxed))
        break;
      continue;
#endif
      if (!atomic_compare_exchange_weak_explicit(&page->thread_free, &tf, tf & ~HAK_TF_FULL, memory_order_relaxed,
                                                 memory_order_relaxed))
        continue;
      hak_block_t* head = atomic_load_explicit(&owner->delayed, memory_order_relaxed);
      do hak_block_set_next(b, head);
      while (!atomic_compare_exchange_weak_explicit(&owner->delayed, &head, b, PUSH_ORDER, memory_order_relaxed));
      break;
    }
    hak_block_set_next(b, (hak_block_t*)tf);
    /* fails if another push came first or the owner marked the page full */
    if (atomic_compare_exchange_weak_explicit(&page->thread_free, &tf, (uintptr_t)b, PUSH_ORDER, memory_order_relaxed))
      break;
  }
#ifdef HAK_FAULT_REMOTE_READ_AFTER_PUSH /* fault injection: the page is read after the push */
  owner = page->heap;
#endif
  /* an exited thread's heap: nobody sweeps it but a reclaim (heap.c), from
   * the allocation paths and, for a thread that no longer refills or asks
   * for large blocks, from the caches' purge tick */
#ifndef HAK_FAULT_ABANDONED_STRANDED /* fault injection: nobody is told */
  if (atomic_load_explicit(&owner->abandoned, memory_order_seq_cst) &&
      !atomic_load_explicit(&_hak_heaps_dirty, memory_order_seq_cst)) {
    atomic_store_explicit(&_hak_heaps_dirty, true, memory_order_relaxed);
#ifndef HAK_FAULT_RECLAIM_UNTICKED /* fault injection: only the allocation paths reclaim */
    hak_purge_global_due();
#endif
  }
#endif
  /* counted by the freeing thread, in its own heap: no shared write */
  hak_heap_t* self = _hak_heap_tls;
  if (hak_likely(self != &_hak_heap_empty)) {
    if (large) hak_count(self->counters.remote_large_frees, 1);
    else hak_count(self->counters.remote_small_frees, 1);
  } else {
    hak_atomic_add(*(large ? &heapless_large : &heapless_small), 1); /* a thread that never allocated */
  }
}

/* Classifies a pointer inside a registered segment that is not a live
 * block's start: a freed block (double free) or anything else. */
static void segment_misuse(hak_page_t* page, const void* p, hak_fn_t fn) {
  const hak_block_t* b = p;
  bool aligned = ((uintptr_t)p & (HAK_ALIGN - 1)) == 0;
  bool in_page = page->kind == HAK_SLICE_SMALL || page->kind == HAK_SLICE_LARGE;
  bool at_block = in_page ? hak_page_is_block(page, (uintptr_t)p)
                          : page->kind == HAK_SLICE_FREE && aligned;
  /* a block of the page a free slice last held: freed, and the freed tag
   * may be gone with the memory (purged, hak_collect); an interior pointer
   * of one is an invalid pointer still */
  bool freed_slice = false;
#ifndef HAK_FAULT_FREED_SLICE_INVALID /* fault injection: only the freed tag tells */
  if (page->kind == HAK_SLICE_FREE) {
    const hak_segment_t* seg = hak_segment_of(p);
    size_t i = ((uintptr_t)p >> HAK_SLICE_SHIFT) & (HAK_SLICES - 1);
    size_t off = (uintptr_t)p - (uintptr_t)hak_segment_base(seg), start = seg->former[i].start, bs = seg->former[i].block_size;
    freed_slice = bs != 0 && off >= start && (off - start) % bs == 0;
  }
#endif
  /* or a huge block freed lately whose mapping went and a segment took
   * its range (a gather emptied it: huge.c) */
  if ((at_block && (freed_slice || hak_tag_is_freed(p, hak_tag_peek(b)))) || _hak_huge_recently_freed(p))
    _hak_error(fn == HAK_FN_USABLE_SIZE ? HAK_ERR_FREED_USABLE_SIZE : HAK_ERR_DOUBLE_FREE, fn, p);
  else
    _hak_error(HAK_ERR_INVALID_FREE, fn, p);
}

/* A free of a block on another heap's page, from the fast path (which has
 * found the page already). */
void _hak_free_mt(hak_page_t* page, void* p, hak_fn_t fn) {
  if (hak_unlikely(!hak_page_is_block(page, (uintptr_t)p))) {
    segment_misuse(page, p, fn);
    return;
  }
  free_remote(page, p, fn);
}

/* A pointer outside every live mapping of hakmem's was a block: a huge
 * block freed lately (its mapping reused or unmapped), or an aligned
 * address in a segment unmapped since (segmap.c). */
static bool freed_outside(const void* p, uint8_t m) {
  return _hak_huge_recently_freed(p) || (m == HAK_MAP_GONE && ((uintptr_t)p & (HAK_ALIGN - 1)) == 0);
}

void _hak_free_generic(void* p, hak_fn_t fn) {
  if (p == NULL) return;
  uintptr_t a = (uintptr_t)p;
  uint8_t m = hak_segmap_get(a);
  if (hak_map_is_segment(m)) {
    hak_page_t* page = hak_page_of(p);
    hak_heap_t* owner = page->heap;
    if (owner == NULL || !hak_page_is_block(page, a)) {
#ifdef HAK_FAULT_DOUBLE_FREE_LARGE /* fault injection: a freed large run's block is let go */
      if (page->kind == HAK_SLICE_FREE && (a & (HAK_SLICE_SIZE - 1)) == 0) return;
#endif
      segment_misuse(page, p, fn);
      return;
    }
    hak_block_t* b = p;
    if (owner != _hak_heap_tls) {
      free_remote(page, b, fn);
      return;
    }
    hak_track_free_begin(p);
    if (hak_tag_is_freed(p, atomic_load_explicit(&b->tag, memory_order_relaxed))) {
      _hak_error(HAK_ERR_DOUBLE_FREE, fn, p);
      return;
    }
    /* a local free the fast path did not take (not inlined at this call,
     * or a secure segment's) */
    if (_hak_secure) {
      _hak_secure_free_local(owner, page, b, fn);
      return;
    }
    hak_track_free(p, page->block_size, HAK_TRACK_HEADER);
    atomic_store_explicit(&b->tag, hak_freed_tag(p), memory_order_relaxed);
    hak_block_set_next(b, page->free);
    page->free = b;
    hak_count(owner->counters.small_frees, 1);
    if (--page->used == 0 || page->in_full) _hak_page_free_slow(owner, page);
    return;
  }
  if (m >= HAK_MAP_HUGE) {
    uint64_t t0 = _hak_policy_free_begin(); /* ~25 ns, on a path of microseconds */
    size_t size = _hak_huge_free(p, fn);
    if (t0 != 0 && size != 0) _hak_policy_freed(size, t0);
    _hak_purge_tick_any(); /* every tier's: not this block's cost */
    return;
  }
  _hak_error(freed_outside(p, m) ? HAK_ERR_DOUBLE_FREE : HAK_ERR_INVALID_FREE, fn, p);
}

/* ---- usable size, realloc, calloc, aligned ------------------------------ */

size_t _hak_usable_size(const void* p, hak_fn_t fn) {
  if (p == NULL) return 0;
  uintptr_t a = (uintptr_t)p;
  uint8_t m = hak_segmap_get(a);
  if (hak_map_is_segment(m)) {
    hak_page_t* page = hak_page_of(p);
    if (page->heap == NULL || !hak_page_is_block(page, a) ||
        hak_tag_is_freed(p, hak_tag_peek(p))) {
      segment_misuse(page, p, fn);
      return 0;
    }
#ifdef HAK_FAULT_USABLE_PLUS16 /* fault injection */
    return page->block_size + 16;
#endif
    size_t usable = page->block_size;
    if (_hak_secure && page->kind == HAK_SLICE_SMALL) {
      usable -= HAK_CANARY;
      if (fn == HAK_FN_REALLOC && !_hak_secure_check(page, p, fn)) return 0; /* reported */
    }
    return fn == HAK_FN_USABLE_SIZE ? hak_track_requested(p, usable) : usable;
  }
  if (m >= HAK_MAP_HUGE) {
    hak_huge_t* h = _hak_huge_header(p, fn);
    if (h == NULL) return 0;
    return fn == HAK_FN_USABLE_SIZE ? hak_track_requested(p, h->size) : h->size;
  }
  hak_error_t e = fn == HAK_FN_USABLE_SIZE ? HAK_ERR_FREED_USABLE_SIZE : HAK_ERR_DOUBLE_FREE;
  _hak_error(freed_outside(p, m) ? e : HAK_ERR_INVALID_FREE, fn, p);
  return 0;
}

void* _hak_realloc(void* p, size_t size, const void* site) {
  if (p == NULL) return hak_alloc_fast(size, site);
  size_t old = _hak_usable_size(p, HAK_FN_REALLOC);
  if (old == 0) { /* misuse, reported; the block is left alone */
    errno = EINVAL;
    return NULL;
  }
  if (size == 0) { /* as glibc: free and return NULL */
    hak_free_fast(p, HAK_FN_REALLOC);
    return NULL;
  }
  if (size > PTRDIFF_MAX) {
    errno = ENOMEM;
    return NULL;
  }
  if (size <= old && size >= old / 2) {
    hak_track_resize(p, size, old);
    return p;
  }
  /* a huge block past BigCache's classes grows or shrinks by remapping */
  if (old > (16u << 20) && size > (16u << 20) && hak_segmap_get((uintptr_t)p) >= HAK_MAP_HUGE) {
    void* q = _hak_huge_realloc(p, size);
    if (q != NULL) return q;
  }
  void* q = hak_alloc_fast(size, site);
  if (q == NULL) return NULL;
  size_t copy = size < old ? size : old;
  copy = copy < hak_track_requested(p, old) ? copy : hak_track_requested(p, old); /* ASan: not the slack */
#ifdef HAK_FAULT_REALLOC_SHORT /* fault injection */
  copy -= copy > 0;
#endif
  memcpy(q, p, copy);
  hak_free_fast(p, HAK_FN_REALLOC);
  return q;
}

void* _hak_calloc(size_t n, size_t size, const void* site) {
  size_t total;
  if (__builtin_mul_overflow(n, size, &total) || total > PTRDIFF_MAX) {
    errno = ENOMEM;
    return NULL;
  }
  size_t dirty = SIZE_MAX; /* what may not be zero, from the start */
  HAK_NOTE_SITE_SLOT(site);
  void* p = total <= HAK_SMALL_FAST_MAX ? hak_alloc_fast(total, site)
                                        : alloc_ex(_hak_heap_tls, total, 0, site, &dirty);
#ifdef HAK_FAULT_CALLOC_NOZERO /* fault injection: small reused blocks keep their bytes */
  if (total <= HAK_SMALL_FAST_MAX) dirty = 0;
#endif
  if (p != NULL && dirty != 0) memset(p, 0, dirty < total ? dirty : total);
  if (p != NULL) hak_track_zeroed(p, total);
  return p;
}

void* _hak_aligned(size_t align, size_t size, const void* site) {
  if (align == 0 || (align & (align - 1)) != 0) {
    errno = EINVAL;
    return NULL;
  }
  if (align <= HAK_ALIGN) return hak_alloc_fast(size, site);
  if (size > PTRDIFF_MAX || align > ((size_t)1 << 30)) {
    errno = ENOMEM;
    return NULL;
  }
  /* A size class whose block size is a multiple of align serves it from
   * its current page: its pages start 64 KiB aligned, so every block is
   * aligned.  Otherwise (or that page is empty) the generic path, with the
   * alignment: the tier it picks for the size need not be that class. */
  if (size <= _hak_fast_limit && align <= HAK_SLICE_SIZE) {
    size_t bin = _hak_bin_aligned(size, align);
#ifdef HAK_FAULT_ALIGNED_FAST_UNALIGNED /* fault injection: the class is taken without the alignment test */
    bin = _hak_bin_of(size);
#endif
    if (bin < HAK_BINS) {
      void* p = hak_pop_direct(_hak_heap_tls, bin, size);
      if (p != NULL) return p;
    }
  }
  HAK_NOTE_SITE_SLOT(site);
#ifdef HAK_FAULT_ALIGNED_GENERIC_UNALIGNED /* fault injection: the slow path forgets the alignment */
  return alloc_ex(_hak_heap_tls, size, 0, site, NULL);
#endif
  return alloc_ex(_hak_heap_tls, size, align, site, NULL);
}

/* ---- public API ---------------------------------------------------------- */
#define CALLER __builtin_return_address(0)

void* hak_malloc(size_t size) { return hak_alloc_fast(size, CALLER); }
void hak_free(void* p) { hak_free_fast(p, HAK_FN_FREE); }
void* hak_calloc(size_t n, size_t size) { return _hak_calloc(n, size, CALLER); }
void* hak_realloc(void* p, size_t size) { return _hak_realloc(p, size, CALLER); }
void* hak_aligned_alloc(size_t align, size_t size) { return _hak_aligned(align, size, CALLER); }
size_t hak_usable_size(const void* p) { return _hak_usable_size(p, HAK_FN_USABLE_SIZE); }
void* hak_alloc_at(size_t size, const void* site) { return hak_alloc_fast(size, site); }
void hak_free_at(void* p, const void* site) {
  (void)site; /* a free's statistics are its block's site's, kept with the block */
  hak_free_fast(p, HAK_FN_FREE);
}
