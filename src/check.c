/* The invariant checker: hak_check_heap() walks every structure and checks
 * the invariants written above each struct in types.h (and in bigcache.c,
 * madvq.c), printing one line per violation (without allocating) and
 * returning how many it found.  It reads other threads' heaps, so call it
 * when no other thread is inside the allocator (the tests and stress
 * programs pause the world around it). */
#include <string.h>
#include <unistd.h>

#include "internal.h"

#define WALK_MAX (1u << 20) /* bound on any list walk: a cycle is a violation */

/* _hak_check_heap_structure: count without printing, skip the free lists
 * (the fork child runs it on heaps whose threads vanished). */
static bool silent, shallow;
static const char* first_what; /* first violation of the last check */

const char* _hak_check_first(void) { return first_what; }

static size_t violation(const char* what, const void* where, uint64_t a, uint64_t b) {
  if (first_what == NULL) first_what = what;
  if (silent) return 1;
  HAK_OUT(o, STDERR_FILENO, 512);
  _hak_out_str(&o, "hakmem: check: ");
  _hak_out_str(&o, what);
  _hak_out_str(&o, " at ");
  _hak_out_hex(&o, (uintptr_t)where);
  _hak_out_str(&o, " (");
  _hak_out_u64(&o, a);
  _hak_out_str(&o, ", ");
  _hak_out_u64(&o, b);
  _hak_out_str(&o, ")\n");
  _hak_out_flush(&o);
  return 1;
}

/* Length of a block list, each block checked to be a block of page with the
 * freed tag; UINT32_MAX if the walk does not end (cycle). */
HAK_NO_SANITIZE static uint32_t check_list(const hak_page_t* page, hak_block_t* b, bool remote, size_t* bad) {
  uint32_t n = 0;
  for (; b != NULL; b = hak_block_next(b)) {
    if (++n > WALK_MAX || n > page->capacity) {
      *bad += violation("free list longer than capacity (cycle or double link)", page, n, page->capacity);
      return UINT32_MAX;
    }
    if (!hak_page_is_block(page, (uintptr_t)b)) {
      *bad += violation("free list links a pointer that is not a block of its page", b, n, page->block_size);
      return UINT32_MAX;
    }
    uintptr_t tag = atomic_load_explicit(&b->tag, memory_order_relaxed);
    if (remote ? tag != (hak_freed_tag(b) ^ HAK_TAG_REMOTE) : !hak_tag_is_freed(b, tag))
      *bad += violation(remote ? "block on a remote list without the remote freed tag"
                               : "block on a free list without the freed tag", b, n, 0);
  }
  return n;
}

/* Blocks of page on heap's delayed list (a walk per page: the checker's
 * lists are short); the list itself is checked by check_delayed. */
HAK_NO_SANITIZE static uint32_t delayed_of(const hak_heap_t* heap, const hak_page_t* page) {
  uint32_t n = 0, k = 0;
  for (hak_block_t* b = atomic_load_explicit(&heap->delayed, memory_order_acquire); b != NULL && ++k <= WALK_MAX;
       b = hak_block_next(b))
    n += hak_map_is_segment(hak_segmap_get((uintptr_t)b)) && hak_page_of(b) == page;
  return n;
}

/* Blocks of page in the heap's quarantine (HAKMEM_SECURE=2: freed, tagged,
 * counted in used until they leave it). */
static uint32_t quarantined_of(const hak_heap_t* heap, const hak_page_t* page) {
  uint32_t n = 0;
  for (uint32_t i = 0; i < heap->q_len; i++) n += hak_page_of(heap->quarantine[i]) == page;
  return n;
}

/* Every block on the delayed list is a block of one of the heap's pages
 * with the remote freed tag; the list ends. */
HAK_NO_SANITIZE static size_t check_delayed(const hak_heap_t* heap) {
  size_t bad = 0, n = 0;
  for (hak_block_t* b = atomic_load_explicit(&heap->delayed, memory_order_acquire); b != NULL; b = hak_block_next(b)) {
    if (++n > WALK_MAX) return bad + violation("delayed list does not end", heap, n, 0);
    const hak_page_t* page = hak_map_is_segment(hak_segmap_get((uintptr_t)b)) ? hak_page_of(b) : NULL;
    if (page == NULL || page->heap != heap || !hak_page_is_block(page, (uintptr_t)b))
      return bad + violation("delayed list links a pointer that is not a block of the heap", b, n, 0);
    if (atomic_load_explicit(&b->tag, memory_order_relaxed) != (hak_freed_tag(b) ^ HAK_TAG_REMOTE))
      bad += violation("block on the delayed list without the remote freed tag", b, n, 0);
  }
  return bad;
}

static size_t check_page(const hak_heap_t* heap, hak_page_t* page, bool full, bool quiet) {
  size_t bad = 0;
  if (page->heap != heap) bad += violation("page owned by another heap", page, 0, 0);
  if (page->in_full != full) bad += violation("page on the wrong queue", page, page->in_full, full);
  /* acquire: the blocks pushed so far are visible (their next fields) */
  uintptr_t tf = atomic_load_explicit(&page->thread_free, memory_order_acquire);
  /* the resource oracles (nobody told, memory stranded) need a still world
   * and, in a fork child, no vanished thread that was telling (internal.h,
   * _hak_fork_cuts): what it left half told is leaked there */
  bool oracles = quiet && _hak_fork_cuts == 0;
  /* the flag is cleared by the first remote free into a full page, whose
   * block then waits on the heap's delayed list */
  if ((tf & HAK_TF_FULL) && !full) bad += violation("full flag of thread_free disagrees", page, tf & 1, full);
  if (oracles && full && !(tf & HAK_TF_FULL) && delayed_of(heap, page) == 0)
    bad += violation("full page with its flag clear and nothing on the delayed list", page, 0, page->used);
  if (page->capacity > page->reserved) bad += violation("capacity > reserved", page, page->capacity, page->reserved);
  if (atomic_load(&page->carved) != page->capacity * page->block_size)
    bad += violation("carved != capacity * block_size", page, atomic_load(&page->carved), page->capacity);
  if (page->kind == HAK_SLICE_SMALL) {
    if (page->block_size != _hak_bin_size(page->bin)) bad += violation("block size of bin", page, page->block_size, page->bin);
  } else if (page->kind != HAK_SLICE_LARGE) {
    return bad + violation("queued page is not a page", page, page->kind, 0);
  }
  if (shallow) return bad;
  uint32_t nfree = check_list(page, page->free, false, &bad);
  uint32_t nremote = check_list(page, (hak_block_t*)(tf & ~HAK_TF_FULL), true, &bad);
  /* and the page's blocks on the heap's delayed list (checked there) */
  if (nremote != UINT32_MAX) nremote += delayed_of(heap, page);
  /* every block carrying the freed tag is on one of the two lists: a freed
   * block on neither was lost (a live block never carries the tag).  Only
   * when the world is still: a remote free tags its block before the push. */
  if (quiet && nfree != UINT32_MAX && nremote != UINT32_MAX && !page->corrupt) {
    uint32_t tagged = 0;
    for (uint32_t i = 0; i < page->capacity; i++) {
      const hak_block_t* b = (const hak_block_t*)(page->start + (size_t)i * page->block_size);
      tagged += hak_tag_is_freed(b, hak_tag_peek(b));
    }
    uint32_t held = quarantined_of(heap, page);
    /* unless threads vanished at a fork: the frees they had in flight
     * (internal.h, _hak_fork_cuts) */
    if (tagged < nfree + nremote + held || (tagged > nfree + nremote + held && _hak_fork_cuts == 0))
      bad += violation("freed blocks missing from the free lists", page, tagged, nfree + nremote + held);
  }
  if (nremote != UINT32_MAX && nremote > page->used) bad += violation("more remote frees than used", page, nremote, page->used);
  if (nfree != UINT32_MAX && nremote != UINT32_MAX && page->used + nfree != page->capacity)
    bad += violation("used + |free| != capacity", page, page->used + nfree, page->capacity);
  /* resource oracles (world still): remote frees nobody was told about
   * stay on their page forever */
  if (oracles && nremote != UINT32_MAX && nremote > 0) {
    bool abandoned = atomic_load_explicit(&heap->abandoned, memory_order_relaxed);
    if (abandoned && !atomic_load_explicit(&_hak_heaps_dirty, memory_order_relaxed))
      bad += violation("remote frees into an exited thread's heap and no reclaim requested", page, nremote, 0);
  }
  /* a full page whose flag is set has told nobody: its own list must be empty */
  if (oracles && full && (tf & HAK_TF_FULL) && (tf & ~HAK_TF_FULL) != 0)
    bad += violation("full page with remote frees on its own list and nobody told", page, 0, page->used);
  /* an exited thread's heap keeps no empty page once it was abandoned or
   * reclaimed (a remote free since then requests a reclaim) */
  if (oracles && nremote != UINT32_MAX && nfree != UINT32_MAX && page->used == nremote &&
      atomic_load_explicit(&heap->abandoned, memory_order_relaxed) &&
      !atomic_load_explicit(&_hak_heaps_dirty, memory_order_relaxed))
    bad += violation("empty page stranded in an exited thread's heap", page, page->used, nremote);
  return bad;
}

static size_t check_queue(const hak_heap_t* heap, const hak_page_queue_t* q, bool full, int bin, size_t* pages,
                          size_t* kept, bool quiet) {
  size_t bad = 0, n = 0;
  hak_page_t* prev = NULL;
  for (hak_page_t* p = q->first; p != NULL; prev = p, p = p->next) {
    if (++n > WALK_MAX) return bad + violation("page queue does not end", q, n, 0);
    if (p->prev != prev) bad += violation("page queue back link", p, (uintptr_t)p->prev, (uintptr_t)prev);
    if (!full && p->bin != bin) bad += violation("page in another bin's queue", p, p->bin, (uint64_t)bin);
    /* a kept empty page (page.c) waits on its bin's queue */
    if (p->kept > HAK_KEPT_AGED || (p->kept != HAK_KEPT_NO && (full || p->kind != HAK_SLICE_SMALL)))
      bad += violation("kept page on the full list, not small, or a bad mark", p, p->kept, full);
    if (p->kept != HAK_KEPT_NO) *kept += (size_t)p->slice_count << HAK_SLICE_SHIFT;
    bad += check_page(heap, p, full, quiet);
  }
  if (q->last != prev) bad += violation("page queue last", q, (uintptr_t)q->last, (uintptr_t)prev);
  *pages += n;
  return bad;
}

/* A free slice's descriptor is all zero, an interior's all but its kind
 * and slice_back (back): segment_init and a page's free rely on it, and a
 * stale heap or start would let a free into the slice pass the fast path. */
static bool slice_clear(const hak_page_t* s, unsigned back) {
  hak_page_t z;
  memset(&z, 0, sizeof(z));
  if (back != 0) z.kind = HAK_SLICE_INTERIOR, z.slice_back = (uint8_t)back;
  return memcmp(&z, s, sizeof(z)) == 0;
}

static size_t check_segment(const hak_heap_t* heap, hak_segment_t* seg, size_t* pages) {
  size_t bad = 0;
  if (seg->magic != HAK_SEGMENT_MAGIC) return violation("segment magic", seg, seg->magic, 0);
  if (seg->heap != heap) bad += violation("segment owned by another heap", seg, 0, 0);
  if (!hak_map_is_segment(hak_segmap_get((uintptr_t)hak_segment_base(seg)))) bad += violation("segment not in the segment map", seg, 0, 0);
  if (seg->free_mask & 1) bad += violation("slice 0 marked free", seg, 0, 0);
  if ((seg->dirty_mask & ~seg->free_mask) || (seg->aged_mask & ~seg->dirty_mask))
    bad += violation("purge masks: a slice in use marked dirty, or aged and not dirty", seg, seg->dirty_mask, seg->aged_mask);
  uint32_t kept = 0;
  for (size_t i = 1; i < HAK_SLICES; i++)
    if (seg->slices[i].kind == HAK_SLICE_SMALL && seg->slices[i].kept != HAK_KEPT_NO) kept += seg->slices[i].slice_count;
  if (kept != seg->kept_slices) bad += violation("kept_slices disagrees with the segment's kept pages", seg, kept, seg->kept_slices);
  if (seg->used_slices != 63u - (uint32_t)__builtin_popcountll(seg->free_mask))
    bad += violation("used_slices disagrees with free_mask", seg, seg->used_slices, seg->free_mask);
  for (size_t i = 1; i < HAK_SLICES;) {
    hak_page_t* s = &seg->slices[i];
    bool free_bit = (seg->free_mask >> i) & 1;
    if (free_bit != (s->kind == HAK_SLICE_FREE)) bad += violation("free_mask disagrees with slice kind", s, free_bit, s->kind);
    if (s->kind == HAK_SLICE_SMALL || s->kind == HAK_SLICE_LARGE) {
      (*pages)++;
      if (s->slice_index != i || s->slice_count == 0 || i + s->slice_count > HAK_SLICES)
        bad += violation("page slice range", s, s->slice_index, s->slice_count);
      for (size_t k = 1; k < s->slice_count && i + k < HAK_SLICES; k++) {
        hak_page_t* in = &seg->slices[i + k];
        if (in->kind != HAK_SLICE_INTERIOR || in->slice_back != k) bad += violation("interior slice", in, in->kind, in->slice_back);
        else if (!slice_clear(in, k)) bad += violation("interior slice's descriptor not zero past its kind", in, i + k, 0);
      }
      i += s->slice_count ? s->slice_count : 1;
      continue;
    }
    if (s->kind == HAK_SLICE_INTERIOR) bad += violation("interior slice without a head", s, i, 0);
    else if (!slice_clear(s, 0)) bad += violation("free slice's descriptor not zero", s, i, s->kind);
    i++;
  }
  return bad;
}

static size_t check_heap(const hak_heap_t* heap, bool quiet) {
  size_t bad = 0, queued = 0, in_segments = 0;
  if (!shallow) {
    bad += check_delayed(heap);
    if (bad) return bad; /* the pages' counts would follow a bad list */
  }
  size_t kept = 0;
  for (int b = 0; b < HAK_BINS; b++) {
    bad += check_queue(heap, &heap->bins[b], false, b, &queued, &kept, quiet);
    hak_page_t* d = heap->direct[b];
    if (d != &_hak_page_empty && (d->heap != heap || d->bin != b || d->kind != HAK_SLICE_SMALL))
      bad += violation("direct page of another bin or heap", d, d->bin, (uint64_t)b);
  }
  for (size_t i = 0; i <= HAK_SMALL_FAST_MAX / HAK_ALIGN; i++)
    if (heap->direct_sz[i] != heap->direct[_hak_bin_lut[i]])
      bad += violation("direct page by size is not its bin's", heap->direct_sz[i], i, _hak_bin_lut[i]);
  bad += check_queue(heap, &heap->full, true, -1, &queued, &kept, quiet);
  if (kept != heap->kept_bytes || kept > HAK_KEEP_BYTES)
    bad += violation("kept pages' bytes disagree with kept_bytes, or past the bound", heap, kept, heap->kept_bytes);
  size_t nseg = 0, dirty = 0;
  for (hak_segment_t* s = heap->segments; s != NULL; s = s->next) {
    if (++nseg > WALK_MAX) return bad + violation("segment list does not end", heap, nseg, 0);
    bad += check_segment(heap, s, &in_segments);
    dirty += (size_t)__builtin_popcountll(s->dirty_mask);
  }
  if (nseg != heap->segment_count) bad += violation("segment_count", heap, nseg, heap->segment_count);
  if (dirty != heap->dirty_slices) bad += violation("dirty_slices disagrees with the segments' dirty masks", heap, dirty, heap->dirty_slices);
  /* the index by longest free run: each segment once, on its run's list */
  size_t indexed = 0;
  for (unsigned r = 0; r < HAK_SLICES; r++) {
    if (((heap->run_mask >> r) & 1) != (heap->by_run[r] != NULL))
      bad += violation("run index mask disagrees with its lists", heap, r, heap->run_mask);
    size_t k = 0;
    for (hak_segment_t* s = heap->by_run[r]; s != NULL && k <= nseg; s = s->run_next, k++) {
      uint64_t m = s->free_mask;
      unsigned longest = 0;
      for (; m != 0; longest++) m &= m << 1;
      if (s->heap != heap || s->max_run != r || longest != r)
        bad += violation("segment on the wrong run index list (longest free run)", s, longest, r);
    }
    indexed += k;
  }
  if (indexed != nseg) bad += violation("segments in the run index != segments", heap, indexed, nseg);
  if (queued != in_segments) bad += violation("pages in segments != pages on queues", heap, in_segments, queued);
  return bad;
}

/* Every mapping the segment map names exists; a segment's starts with its
 * magic; a huge mapping holds at most one live block, whose header is valid
 * for the mapping (checksum, base, offset, sizes); and the live headers found
 * are exactly the huge blocks served and not freed.  A live header lies 64
 * bytes below its user pointer, which is 64 bytes or a power of two from
 * 128 B to 1 GiB into the mapping (_hak_huge_offset): each candidate is read
 * if its page is resident (a live header's page always is, swap aside;
 * reading the others would fault them in, a whole huge page under THP).
 * A mapping held by BigCache or the batch queue has only freed or stale
 * headers, never a live one. */
static bool near(uint64_t a, uint64_t b, size_t slack) { return a <= b + slack && b <= a + slack; }

HAK_NO_SANITIZE static size_t check_mappings(uint64_t live_expected, size_t* transits) {
  size_t lo, hi, bad = 0;
  uint64_t live = 0;
  _hak_segmap_range(&lo, &hi);
  for (size_t i = lo; i <= hi && i < HAK_SEGMAP_ENTRIES; i++) {
    uint8_t m = atomic_load_explicit(&_hak_segmap[i], memory_order_relaxed);
    if (!hak_map_is_segment(m) && m != HAK_MAP_HUGE) continue;
    uintptr_t base = (uintptr_t)i << HAK_SEGMENT_SHIFT;
    if (_hak_os_resident((void*)base) < 0) {
      bad += violation("segment map names a mapping that does not exist", (void*)base, m, 0);
      continue;
    }
    if (hak_map_is_segment(m)) {
      /* a bad registration may name memory mapped PROT_NONE (a guard, a
       * sanitizer's reserved range): read through the kernel (a swapped
       * out header page comes back; one never written reads as zeros) */
      uint64_t magic = 0;
      const uint64_t* at = &hak_segment_of((const void*)base)->magic;
#ifdef HAK_FAULT_CHECK_READS_PROTECTED /* fault injection: the first version read it directly */
      magic = *at;
#else
      if (!_hak_os_peek(at, &magic, sizeof(magic))) magic = 0;
#endif
      if (magic != HAK_SEGMENT_MAGIC && (*transits == 0 || (*transits)-- == 0))
        bad += violation("segment map names a segment without its magic", (void*)base, 0, 0);
      continue;
    }
    size_t chunks = 1;
    while (i + chunks < HAK_SEGMAP_ENTRIES) {
      uint8_t next = atomic_load_explicit(&_hak_segmap[i + chunks], memory_order_relaxed);
      uint8_t want = chunks < HAK_MAP_HUGE_FAR - HAK_MAP_HUGE ? (uint8_t)(HAK_MAP_HUGE + chunks) : HAK_MAP_HUGE_FAR;
      if (next != want) break;
      chunks++;
    }
    size_t extent = chunks << HAK_SEGMENT_SHIFT;
    uint64_t found = 0;
    bool resident = false;
    for (size_t off = HAK_HUGE_HEADER; off < extent && off <= ((size_t)1 << 30); off = off == HAK_HUGE_HEADER ? 128 : off * 2) {
      const hak_huge_t* at = (const hak_huge_t*)(base + off - HAK_HUGE_HEADER);
      if (off > 4096 || off == HAK_HUGE_HEADER) /* one look at page 0 serves the offsets up to 4 KiB */
        resident = _hak_os_resident(at) > 0;
      if (!resident) continue;
      /* read through the kernel: the page may be a guard page, or a freed
       * block made PROT_NONE (HAKMEM_SECURE=2), by now */
      hak_huge_t copy;
      if (!_hak_os_peek(at, &copy, sizeof(copy))) continue;
      const hak_huge_t* h = &copy;
      if (h->magic != HAK_HUGE_MAGIC || h->base != base || h->offset != off ||
          atomic_load_explicit(&h->state, memory_order_relaxed) != HAK_HUGE_LIVE)
        continue;
      if (++found == 2) bad += violation("two live huge headers in one mapping", at, off, 0);
      else if (!_hak_huge_header_valid(h, extent)) bad += violation("live huge header invalid for its mapping", at, h->size, h->map_size);
    }
    live += found;
    i += chunks - 1;
  }
  if (!near(live, live_expected, *transits))
    bad += violation("live huge headers in the mappings != huge blocks served - freed", NULL, live, live_expected);
  return bad;
}

/* The calling thread's heap and the shared structures: what a thread can
 * check while others run (the verify build's assertion points). */
size_t _hak_check_own(void) {
  size_t bad = 0;
  hak_track_quiet(true); /* deliberate reads of the program's blocks */
  if (_hak_heap_tls != &_hak_heap_empty) bad += check_heap(_hak_heap_tls, false);
  bad += _hak_madvq_check();
  bad += _hak_site_check();
  hak_track_quiet(false);
  return bad;
}

size_t _hak_check_heap_structure(const hak_heap_t* heap) {
  silent = shallow = true;
  size_t bad = check_heap(heap, false);
  silent = shallow = false;
  return bad;
}

size_t hak_check_heap(void) {
  size_t bad = 0;
  first_what = NULL;
  hak_track_quiet(true); /* deliberate reads of the program's blocks */
  /* a heap a fork child found mid-update is never touched again (heap.c):
   * its half-made change is not this process's inconsistency */
  for (hak_heap_t* h = _hak_heaps_first(); h != NULL; h = h->next_all) {
    if (atomic_load_explicit(&h->owner_tid, memory_order_relaxed) == HAK_HEAP_LOST) continue;
    /* one a fork child took over: its structure, not the pages' lists and
     * counts, which its vanished thread may have been changing (at level
     * 2 a guard page too) */
    shallow = h->forked;
    bad += check_heap(h, true);
    shallow = false;
  }
  size_t cached = 0, queued = 0;
  size_t bc = _hak_bigcache_check(&cached);
  if (bc) bad += violation("BigCache slots: a block not cached, in two places, or bytes miscounted", NULL, bc, 0);
  _hak_madvq_holds(0, &queued);
  const void* seg_bad;
  size_t sc = _hak_segment_check_cached(&seg_bad);
  if (sc) bad += violation("segment cache: a segment owned, in use, unregistered, with bad masks, or miscounted", seg_bad, sc, 0);
  /* the segment map names exactly the segments and huge mappings that exist */
  hak_stats_t st;
  hak_stats_get(&st);
  /* each by up to one per thread that went on into its transit while a
   * fork was pending (internal.h, _hak_fork_transits) */
  size_t transits = _hak_fork_transits;
  if (!near(_hak_segmap_count(false), st.segments_current + st.segments_cached, transits))
    bad += violation("segment map: registered segments != owned + cached", NULL, _hak_segmap_count(false),
                     st.segments_current + st.segments_cached);
  uint64_t huge_live = st.served_huge - st.freed_huge;
  if (!near(_hak_segmap_count(true), huge_live + cached + queued, transits))
    bad += violation("segment map: registered huge mappings != live + cached + queued/retained", NULL,
                     _hak_segmap_count(true), huge_live + cached + queued);
  bad += check_mappings(huge_live, &transits);
  size_t q = _hak_madvq_check();
  if (q) bad += violation("batch queue ranges overlapping or misaligned", NULL, q, 0);
  size_t sites = _hak_site_check();
  if (sites) bad += violation("site threshold that is not a UCB1 arm, or exploration beyond its budget", NULL, sites, 0);
  hak_track_quiet(false);
  return bad;
}
