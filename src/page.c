/* Pages: a run of slices carved lazily into blocks of one size class, and
 * the per-heap queues that hold them.
 *
 * Each bin has a queue of pages with (possibly) free blocks; heap->direct
 * caches the page the fast path pops from.  A page found without free
 * blocks moves to the heap's full list; it comes back when its owner frees
 * into it (page_free_slow) or when a sweep takes in the blocks other threads
 * freed into it (the heap's delayed list).  A page whose blocks are all free is
 * retired to its segment unless it is its bin's only page. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* The page every bin of an uninitialized heap points to: no free block, so
 * the fast path falls through to the generic path. */
hak_page_t _hak_page_empty;

static void queue_push_front(hak_page_queue_t* q, hak_page_t* page) {
  page->prev = NULL;
  page->next = q->first;
  if (q->first) q->first->prev = page;
  else q->last = page;
  q->first = page;
}

static void queue_push_back(hak_page_queue_t* q, hak_page_t* page) {
  page->next = NULL;
  page->prev = q->last;
  if (q->last) q->last->next = page;
  else q->first = page;
  q->last = page;
}

static void queue_remove(hak_page_queue_t* q, hak_page_t* page) {
  if (page->prev) page->prev->next = page->next;
  else q->first = page->next;
  if (page->next) page->next->prev = page->prev;
  else q->last = page->prev;
  page->next = page->prev = NULL;
}

static hak_page_queue_t* page_queue(hak_heap_t* heap, hak_page_t* page) {
  return page->in_full ? &heap->full : &heap->bins[page->bin];
}

/* The page a bin allocates from: kept even when empty.  Under HAKMEM_SECURE
 * heap->direct stays empty (secure.c), and the bin's only page is kept. */
static bool page_is_current(const hak_heap_t* heap, const hak_page_t* page) {
  if (heap->direct[page->bin] == page) return true;
  return _hak_secure && heap->bins[page->bin].first == page && page->next == NULL;
}

static size_t page_bytes(const hak_page_t* page) { return (size_t)page->slice_count << HAK_SLICE_SHIFT; }

/* A kept page (page_emptied) in use again, or retired. */
static void page_unkeep(hak_heap_t* heap, hak_page_t* page) {
  if (page->kept == HAK_KEPT_NO) return;
  page->kept = HAK_KEPT_NO;
  heap->kept_bytes -= page_bytes(page);
  hak_segment_of(page)->kept_slices -= page->slice_count;
}

/* A segment that holds nothing but kept pages would be released if they
 * were retired: they must not pin it (nor its free slices, which only the
 * owner's tick purges).  kept_note marks the heap when a keep or a
 * retirement (of leaving slices) leaves such a segment; kept_unpin, at the
 * end of the paths that keep or retire pages (never inside a walk of a
 * queue), retires those kept pages, so the segment goes as before.  The
 * heap's last segment stays anyway (segment.c). */
static void kept_note(hak_heap_t* heap, const hak_segment_t* seg, uint32_t leaving) {
  if (seg->kept_slices != 0 && seg->used_slices - leaving == seg->kept_slices) heap->kept_pinned = true;
}
static void page_retire_as(hak_heap_t* heap, hak_page_t* page, bool idle);
static void kept_unpin(hak_heap_t* heap) {
  if (!heap->kept_pinned) return;
  heap->kept_pinned = false;
#ifdef HAK_FAULT_KEEP_PINS_SEGMENTS /* fault injection: kept pages hold their segments */
  return;
#endif
  for (size_t bin = 0; bin < HAK_BINS && heap->kept_bytes != 0; bin++) {
    hak_page_t* next;
    for (hak_page_t* page = heap->bins[bin].first; page != NULL && heap->segment_count > 1; page = next) {
      next = page->next; /* a live or kept page: its segment stays */
      hak_segment_t* seg = hak_segment_of(page);
      if (page->kept != HAK_KEPT_NO && page->used == 0 && seg->used_slices == seg->kept_slices)
        page_retire_as(heap, page, false);
    }
  }
}

/* After a racing double free was found: the two pushes of one block wrote
 * its link twice, so the owner's list may have lost its tail, loop, or
 * (the heap's delayed list) continue into other pages' blocks.  The list
 * is cut at the first link that is not a freed block of this page, or
 * dropped if it does not end, and used is set again from what it holds.
 * The blocks lost stay counted as used: the page leaks them, it never
 * hands one out twice. */
static void page_recount(hak_page_t* page) {
  uint32_t n = 0;
  hak_block_t* prev = NULL;
  for (hak_block_t* b = page->free; b != NULL; prev = b, b = hak_block_next(b)) {
    if (!hak_page_is_block(page, (uintptr_t)b) || !hak_tag_is_freed(b, atomic_load_explicit(&b->tag, memory_order_relaxed))) {
      if (prev != NULL) hak_block_set_next(prev, NULL);
      else page->free = NULL;
      break;
    }
    if (++n > page->capacity) {
      page->free = NULL;
      n = 0;
      break;
    }
  }
  page->used = page->capacity - n;
}

/* Moves the blocks other threads freed into the owner's free list.  Each
 * must carry the remote tag; one that does not was also freed by the owner
 * (a race: internal.h, HAK_TAG_REMOTE) and may be on the owner's list or
 * handed out again: reported, and the walk stops there (that block's link
 * may now belong to the owner's list; what follows it leaks).  The walk is
 * bounded by used: more frees than blocks handed out is a cycle or a
 * foreign link (a use after free wrote the list), reported as corruption,
 * the list dropped rather than served twice. */
void _hak_page_collect(hak_page_t* page) {
  uintptr_t tf = atomic_load_explicit(&page->thread_free, memory_order_relaxed);
  if ((tf & ~HAK_TF_FULL) == 0) return;
  while (!atomic_compare_exchange_weak_explicit(&page->thread_free, &tf, tf & HAK_TF_FULL, memory_order_acquire,
                                                memory_order_relaxed)) {
  }
  hak_block_t* list = (hak_block_t*)(tf & ~HAK_TF_FULL);
  hak_block_t* last = NULL;
  uint32_t n = 0;
  bool raced = false;
  /* each block is checked before it is kept: its tag, then its link, so a
   * block whose link was overwritten is dropped (it leaks) and named, and
   * the link is never followed */
  for (hak_block_t* b = list; b != NULL;) {
    uintptr_t tag = atomic_load_explicit(&b->tag, memory_order_relaxed);
    hak_block_t* next = hak_block_next(b);
    bool tag_bad = tag != (hak_freed_tag(b) ^ HAK_TAG_REMOTE);
#ifdef HAK_FAULT_REMOTE_TAG_UNCHECKED /* fault injection: a block freed twice is served twice */
    tag_bad = false;
#endif
    bool link_bad = next != NULL && !hak_page_is_block(page, (uintptr_t)next);
#ifdef HAK_FAULT_REMOTE_LINK_LATE /* fault injection: the link is checked when followed (the first version) */
    if (link_bad && last == NULL) link_bad = false;
#endif
    if (hak_unlikely(tag_bad || link_bad)) {
      if (last != NULL) hak_block_set_next(last, NULL);
      else list = NULL;
      if (tag_bad && tag == hak_freed_tag(b)) /* the owner freed it too: a race (internal.h) */
        _hak_error(HAK_ERR_DOUBLE_FREE, HAK_FN_FREE, b);
      else
        _hak_error_what(HAK_ERR_CORRUPT, HAK_FN_MALLOC, b,
                        tag_bad ? "a remotely freed block's tag was overwritten (use after free)"
                                : "a remotely freed block's link was overwritten (use after free)");
      if (!(tag_bad && tag == hak_freed_tag(b))) page->corrupt = 1; /* b and what followed it leak */
      raced = true;
      break;
    }
    last = b;
    n++;
#ifndef HAK_FAULT_COLLECT_UNBOUNDED /* fault injection: the walk follows a cycle forever */
    if (hak_unlikely(n > page->used)) {
      _hak_error(HAK_ERR_CORRUPT, HAK_FN_MALLOC, list);
      return;
    }
#endif
    b = next;
  }
  if (last != NULL) {
    hak_block_set_next(last, page->free);
    page->free = list;
#ifdef HAK_FAULT_USED_OFF_BY_ONE /* fault injection: one block too many counted back */
    page->used -= n + (n >= 3);
#else
    page->used -= n;
#endif
  }
  if (hak_unlikely(raced)) page_recount(page);
}

/* HAKMEM_SECURE's random choices: `bits` (<= 8) random bits at a time,
 * from a pooled random word (below a marker 1: a new word every 63 / bits
 * calls). */
static inline uint32_t secure_bits(hak_heap_t* heap, unsigned bits) {
  if (heap->rng_pool >> bits == 0) heap->rng_pool = _hak_secure_rand(heap) >> 1 | (uint64_t)1 << 63;
  uint32_t r = (uint32_t)(heap->rng_pool & ((1u << bits) - 1));
  heap->rng_pool >>= bits;
  return r;
}

/* HAKMEM_SECURE carves a run cut into up to CARVE_PARTS parts, each taken
 * in address order, every next block from a random part: where the next
 * allocation lands is not predictable (next to the previous one about one
 * time in CARVE_PARTS).  Random placement costs locality, objects
 * allocated together no longer being neighbours: CPython churn at level 1
 * took 1.49 s with a full shuffle of the run, 1.39 s with 8 parts, 1.11 s
 * with 2 and 0.96 s in address order (level 0: 0.69 s). */
#define CARVE_PARTS 8
#define CARVE_BITS 3 /* random bits per choice of a part */
_Static_assert(CARVE_PARTS == 1 << CARVE_BITS, "a part is chosen from CARVE_BITS random bits");

/* Carves more never-used blocks (about 4 KiB worth, at least 4) onto the
 * free list, in address order (HAKMEM_SECURE: the order above), each
 * tagged free. */
static void page_extend(hak_page_t* page) {
  uint32_t cap = page->capacity;
  uint32_t n = 4096 / page->block_size;
  if (n < 4) n = 4;
  if (n > page->reserved - cap) n = page->reserved - cap;
  uint8_t* first = page->start + (size_t)cap * page->block_size;
  hak_block_t* head = page->free;
  /* HAKMEM_SECURE: zero what old data the slices may hold (a pop checks
   * the zeroes), and carve in a random order of parts */
  uint16_t order[4096 / 16];
  if (_hak_secure) {
    if (!page->zero) {
      hak_track_internal(first, (size_t)n * page->block_size); /* the tools' builds: uncarved space */
      memset(first, 0, (size_t)n * page->block_size);
      hak_track_noaccess(first, (size_t)n * page->block_size);
    }
    uint32_t k = n < CARVE_PARTS ? n : CARVE_PARTS, next[CARVE_PARTS], end[CARVE_PARTS];
    for (uint32_t j = 0; j < k; j++) next[j] = j * n / k, end[j] = (j + 1) * n / k;
    for (uint32_t i = 0; i < n; i++) {
      uint32_t j;
      do j = secure_bits(page->heap, CARVE_BITS);
      while (j >= k);
      while (next[j] == end[j]) j = (j + 1) % k; /* that part is used up */
      order[i] = (uint16_t)next[j]++;
#ifdef HAK_FAULT_SECURE_CARVE_ORDERED /* fault injection: address order after all */
      order[i] = (uint16_t)i;
#endif
    }
  }
  for (uint32_t i = n; i-- > 0;) {
    hak_block_t* b = (hak_block_t*)(first + (size_t)(_hak_secure ? order[i] : i) * page->block_size);
    hak_track_internal(b, HAK_TRACK_HEADER); /* a freed block's header */
    hak_block_set_next(b, head);
    atomic_store_explicit(&b->tag, hak_freed_tag(b), memory_order_relaxed);
    head = b;
  }
#ifdef HAK_FAULT_FREELIST_TWICE /* fault injection: the second block links back to the first */
  if (n >= 2 && cap == 0) hak_block_set_next((hak_block_t*)(first + page->block_size), (hak_block_t*)first);
#endif
  /* capacity before the list: a fork that comes between (this thread
   * vanishes in the child) leaves the new blocks carved and unreachable,
   * leaked, rather than reachable and carved again, served twice */
  page->capacity = cap + n;
  atomic_signal_fence(memory_order_seq_cst);
  page->free = head;
  atomic_store_explicit(&page->carved, (cap + n) * page->block_size, memory_order_release);
}

enum { KEPT_RELEASE_AGED, KEPT_RELEASE_ALL };
static bool kept_release(hak_heap_t* heap, int how);
static void page_retire(hak_heap_t* heap, hak_page_t* page);

/* A kept page whose own slices hold a run of n, in a segment that retiring
 * it leaves in use (an aged one first), or NULL.  The kept pages of a bin
 * are at the front of its queue. */
static hak_page_t* kept_victim(hak_heap_t* heap, size_t n) {
  hak_page_t* young = NULL;
  for (size_t bin = 0; bin < HAK_BINS; bin++) {
    if (_hak_bin_slices(bin) < n) continue;
    for (hak_page_t* page = heap->bins[bin].first; page != NULL && page->kept != HAK_KEPT_NO; page = page->next) {
      if (page->used != 0 || page_is_current(heap, page) || hak_segment_of(page)->used_slices <= page->slice_count)
        continue;
      if (page->kept == HAK_KEPT_AGED) return page;
      if (young == NULL) young = page;
    }
  }
  return young;
}

/* n free slices for a page.  The kept pages give theirs back before the
 * heap faults in memory for it: every one when no segment has a free run
 * that long (a new segment would be mapped); one that can hold the run,
 * which then takes its slices, when the heap's free slices that may be
 * resident are fewer than n (the run it would get is fresh).  A kept page
 * is worth keeping while its bin may take it again, not while the heap
 * faults in memory for others (gcc -O2: 2 MiB of its peak RSS in pages
 * kept for bins it no longer used). */
static hak_page_t* slices_alloc(hak_heap_t* heap, size_t n) {
  if (heap->kept_bytes == 0) return _hak_segment_alloc_slices(heap, n, NULL);
  if (n >= HAK_SLICES || (heap->run_mask & (~(uint64_t)0 << n)) == 0) {
    kept_release(heap, KEPT_RELEASE_ALL);
    return _hak_segment_alloc_slices(heap, n, NULL);
  }
  hak_page_t* victim = NULL;
#ifndef HAK_FAULT_KEEP_OVER_FRESH /* fault injection: kept pages stay while fresh memory is faulted in */
  if (heap->dirty_slices < n) victim = kept_victim(heap, n);
#else
  if (heap->dirty_slices < n && false) victim = kept_victim(heap, n);
#endif
  if (victim == NULL) return _hak_segment_alloc_slices(heap, n, NULL);
  hak_segment_t* seg = hak_segment_of(victim); /* stays the heap's: kept_victim */
  page_retire(heap, victim);
  return _hak_segment_alloc_slices(heap, n, seg);
}

static hak_page_t* page_new(hak_heap_t* heap, size_t bin) {
  hak_page_t* page = slices_alloc(heap, _hak_bin_slices(bin));
  if (page == NULL) return NULL;
  size_t bs = _hak_bin_size(bin);
  hak_track_noaccess(page->start, (size_t)page->slice_count << HAK_SLICE_SHIFT); /* nothing carved yet */
  page->kind = HAK_SLICE_SMALL;
  page->bin = (uint8_t)bin;
  page->block_size = (uint32_t)bs;
  page->div_check = UINT64_MAX / bs + 1;
  page->reserved = (uint32_t)((page->slice_count << HAK_SLICE_SHIFT) / bs);
  page->free = NULL;
  page->used = 0;
  page->capacity = 0;
  page->corrupt = 0;
  atomic_store_explicit(&page->carved, 0, memory_order_relaxed);
  page->heap = heap;
  queue_push_front(&heap->bins[bin], page);
  hak_count(heap->counters.pages_init, 1);
  return page;
}

/* Remote frees into a full page go to the heap's delayed list: the flag bit
 * in thread_free is set here by an atomic OR, and a remote push's CAS sees
 * it.  Blocks pushed before the OR are collected here: the page then has
 * free blocks and stays in its bin (false). */
static bool page_to_full(hak_heap_t* heap, hak_page_t* page) {
  for (;;) {
    uintptr_t tf = atomic_fetch_or_explicit(&page->thread_free, HAK_TF_FULL, memory_order_acq_rel);
    if ((tf & ~HAK_TF_FULL) == 0) break;
    atomic_fetch_and_explicit(&page->thread_free, ~HAK_TF_FULL, memory_order_relaxed);
    _hak_page_collect(page);
    if (page->free != NULL) return false;
  }
  page_unkeep(heap, page); /* reused as the current page, and filled */
  queue_remove(&heap->bins[page->bin], page);
  page->in_full = 1;
  queue_push_front(&heap->full, page);
  return true;
}

static void page_unfull(hak_heap_t* heap, hak_page_t* page) {
  queue_remove(&heap->full, page);
  page->in_full = 0;
  atomic_fetch_and_explicit(&page->thread_free, ~HAK_TF_FULL, memory_order_relaxed);
  queue_push_front(&heap->bins[page->bin], page);
}

/* HAKMEM_SECURE=2: large blocks with a guard page now.  Each splits its
 * segment's mapping in three, and the kernel allows 65,530 mappings per
 * process (vm.max_map_count): beyond LARGE_GUARDS_MAX, large blocks get
 * none. */
#define LARGE_GUARDS_MAX 8192
static _Atomic(uint32_t) large_guards;

/* The end of a page's run of slices. */
static uint8_t* page_run_end(hak_page_t* page) {
  hak_segment_t* seg = hak_segment_of(page);
  return hak_slice_addr(seg, page->slice_index + page->slice_count);
}

/* idle: the page has been empty a whole purge tick (its slices are purged
 * at the tick that retires it) */
static void page_retire_as(hak_heap_t* heap, hak_page_t* page, bool idle) {
  page_unkeep(heap, page);
  kept_note(heap, hak_segment_of(page), page->slice_count);
  if (hak_unlikely(_hak_secure) && page->kind == HAK_SLICE_SMALL) _hak_secure_retire(page);
  queue_remove(page_queue(heap, page), page);
  if (page->kind == HAK_SLICE_LARGE && page->guarded) {
    _hak_os_guard(page_run_end(page) - HAK_GUARD_SIZE, false);
    page->guarded = 0;
    atomic_fetch_sub_explicit(&large_guards, 1, memory_order_relaxed);
  }
  if (page->kind == HAK_SLICE_SMALL) {
    if (heap->direct[page->bin] == page) {
      hak_page_t* next = heap->bins[page->bin].first;
      hak_heap_set_direct(heap, page->bin, next && !_hak_secure ? next : &_hak_page_empty);
    }
  }
  hak_count(heap->counters.pages_retired, 1);
  _hak_segment_free_slices(heap, page, idle);
  HAK_VERIFY_POINT();
}
static void page_retire(hak_heap_t* heap, hak_page_t* page) { page_retire_as(heap, page, false); }

/* Empty pages kept.  A small page whose last block is freed stays on its
 * bin's queue, at the front, for the bin's next allocations, up to
 * HAK_KEEP_BYTES per heap: a bin whose live count swings around a page
 * boundary would otherwise retire a page and set up a new one, in slices
 * that may never have been touched (the mid scenario: one allocation in
 * 300 faulted in fresh memory, 1.4x mimalloc's time).  A kept page that
 * stays empty from one purge tick to the next (between one and two
 * HAKMEM_PURGE_DELAY_MS) is retired with its slices marked idle, so that
 * tick purges them; hak_collect, thread exit, and a request for slices
 * that no free run holds retire kept pages at once. */

/* The page is empty and not the bin's current one: kept or retired. */
static void page_emptied(hak_heap_t* heap, hak_page_t* page) {
#ifndef HAK_FAULT_KEEP_UNBOUNDED /* fault injection: kept pages are not counted against the bound */
  if (page->kept == HAK_KEPT_NO && heap->kept_bytes + page_bytes(page) > HAK_KEEP_BYTES) {
    page_retire(heap, page);
    return;
  }
#endif
  if (page->kept == HAK_KEPT_NO) {
    heap->kept_bytes += page_bytes(page);
    hak_segment_of(page)->kept_slices += page->slice_count;
  }
  page->kept = HAK_KEPT_YOUNG;
  kept_note(heap, hak_segment_of(page), 0);
  if (page->in_full) { /* back on its bin's queue, at the front */
    page_unfull(heap, page);
  } else {
    queue_remove(&heap->bins[page->bin], page);
    queue_push_front(&heap->bins[page->bin], page);
  }
  _hak_purge_dirtied(heap); /* the heap's tick ages it */
}

/* Retires the kept pages: those kept across a whole tick (and the others
 * age: KEPT_RELEASE_AGED), or every one (KEPT_RELEASE_ALL: their slices
 * are marked idle only if they were aged); a kept page that was reused is
 * no longer kept.  The walk stops once every kept page was seen.  True if
 * some stay kept. */
static bool kept_release(hak_heap_t* heap, int how) {
  size_t total = heap->kept_bytes, seen = 0;
  for (size_t bin = 0; bin < HAK_BINS && seen < total; bin++) {
    hak_page_t* next;
    for (hak_page_t* page = heap->bins[bin].first; page != NULL && seen < total; page = next) {
      next = page->next;
      if (page->kept == HAK_KEPT_NO) continue;
      seen += page_bytes(page);
      if (page->used != 0 || page_is_current(heap, page)) {
        page_unkeep(heap, page);
#ifndef HAK_FAULT_KEEP_NEVER_RETIRED /* fault injection: kept pages stay forever */
      } else if (how == KEPT_RELEASE_ALL || page->kept == HAK_KEPT_AGED) {
        page_retire_as(heap, page, page->kept == HAK_KEPT_AGED);
#endif
      } else {
        page->kept = HAK_KEPT_AGED;
      }
    }
  }
  kept_unpin(heap);
  return heap->kept_bytes != 0;
}

bool _hak_page_age_kept(hak_heap_t* heap, bool all) {
  if (heap->kept_bytes == 0) return false;
  return kept_release(heap, all ? KEPT_RELEASE_ALL : KEPT_RELEASE_AGED);
}

/* Takes in the blocks other threads freed into full pages (the delayed
 * list, taken whole): each becomes a local free of its page, with the
 * frees that followed it on the page's own list; the page leaves the full
 * list (it has free blocks now) or, empty, is retired; large blocks end
 * here.  Cost: the notifying blocks, never the number of full pages.
 * Each block must be a block of one of this heap's pages and carry the
 * remote tag (as in collect); one that does not was also freed by the owner
 * (a race) or the list was overwritten: reported, and the walk stops (what
 * follows leaks; the page's own list is cut where it runs into it). */
void _hak_heap_sweep_full(hak_heap_t* heap) {
  if (atomic_load_explicit(&heap->delayed, memory_order_relaxed) == NULL) return;
  hak_block_t* b = atomic_exchange_explicit(&heap->delayed, NULL, memory_order_acquire);
  while (b != NULL) {
    hak_page_t* page = hak_map_is_segment(hak_segmap_get((uintptr_t)b)) ? hak_page_of(b) : NULL;
    if (hak_unlikely(page == NULL || page->heap != heap || !hak_page_is_block(page, (uintptr_t)b) || page->used == 0)) {
      _hak_error_what(HAK_ERR_CORRUPT, HAK_FN_MALLOC, b, "delayed-free link");
      return;
    }
    uintptr_t tag = atomic_load_explicit(&b->tag, memory_order_relaxed);
    hak_block_t* next = hak_block_next(b); /* read only once b is known to be a block */
#ifndef HAK_FAULT_REMOTE_TAG_UNCHECKED /* fault injection: a block freed twice is served twice */
    if (hak_unlikely(tag != (hak_freed_tag(b) ^ HAK_TAG_REMOTE))) {
      if (tag == hak_freed_tag(b)) { /* the owner freed it too: a race */
        _hak_error(HAK_ERR_DOUBLE_FREE, HAK_FN_FREE, b);
        page_recount(page);
      } else {
        _hak_error_what(HAK_ERR_CORRUPT, HAK_FN_MALLOC, b, "a remotely freed block's tag was overwritten (use after free)");
        page->corrupt = 1; /* b leaks */
      }
      return;
    }
#endif
    /* its link must lead to another block of this heap, or end the list:
     * else it was overwritten, and b is dropped (it leaks) and named */
    hak_page_t* np = next == NULL || !hak_map_is_segment(hak_segmap_get((uintptr_t)next)) ? NULL : hak_page_of(next);
    if (hak_unlikely(next != NULL && (np == NULL || np->heap != heap || !hak_page_is_block(np, (uintptr_t)next)))) {
      _hak_error_what(HAK_ERR_CORRUPT, HAK_FN_MALLOC, b, "a remotely freed block's link was overwritten (use after free)");
      page->corrupt = 1;
      return;
    }
    atomic_store_explicit(&b->tag, hak_freed_tag(b), memory_order_relaxed);
    hak_block_set_next(b, page->free);
    page->free = b;
    page->used--;
    if (page->kind == HAK_SLICE_LARGE) _hak_site_free((const void*)page->site);
    else _hak_page_collect(page);
    if (page->used == 0 && page->kind == HAK_SLICE_LARGE) page_retire(heap, page);
    else if (page->used == 0 && !page_is_current(heap, page)) page_emptied(heap, page);
    else if (page->in_full) page_unfull(heap, page);
    b = next;
  }
  kept_unpin(heap);
}

/* A large block: one block in a run of slices, kept on the full list so a
 * sweep collects it when another thread frees it.  align <= the run. */
void* _hak_page_alloc_large(hak_heap_t* heap, size_t size, size_t align, const void* site) {
  _hak_heap_sweep_full(heap);
  size_t pad = align > HAK_SLICE_SIZE ? align - HAK_SLICE_SIZE : 0;
#ifdef HAK_FAULT_LARGE_UNGUARDED /* fault injection: large blocks get no guard page */
  size_t guard = 0;
#else
  size_t guard = _hak_secure >= 2 && atomic_load_explicit(&large_guards, memory_order_relaxed) < LARGE_GUARDS_MAX
                     ? HAK_GUARD_SIZE
                     : 0; /* a guard page behind the block */
#endif
  size_t n = (size + pad + guard + HAK_SLICE_SIZE - 1) >> HAK_SLICE_SHIFT;
  if (n > HAK_LARGE_MAX_SLICES) return NULL;
  hak_page_t* page = slices_alloc(heap, n);
  if (page == NULL) return NULL;
  uint8_t* run = page->start;
  uint8_t* p = (uint8_t*)(((uintptr_t)run + align - 1) & ~(uintptr_t)(align - 1));
  page->kind = HAK_SLICE_LARGE;
  page->start = p;
  page->block_size = (uint32_t)((run + (n << HAK_SLICE_SHIFT)) - guard - p);
  page->guarded = guard != 0;
  if (guard) {
    atomic_fetch_add_explicit(&large_guards, 1, memory_order_relaxed);
    _hak_os_guard(run + (n << HAK_SLICE_SHIFT) - guard, true);
  }
  page->div_check = UINT64_MAX / page->block_size + 1;
  page->reserved = 1;
  page->capacity = 1;
  atomic_store_explicit(&page->carved, page->block_size, memory_order_relaxed);
  page->used = 1;
  page->free = NULL;
  page->site = (uintptr_t)site;
  page->heap = heap;
  page->in_full = 1;
  atomic_store_explicit(&page->thread_free, HAK_TF_FULL, memory_order_relaxed);
  queue_push_front(&heap->full, page);
  hak_track_noaccess(run, n << HAK_SLICE_SHIFT); /* alloc_ex opens the block */
  hak_track_internal(p, HAK_TRACK_HEADER);
  atomic_store_explicit(&((hak_block_t*)p)->tag, 0, memory_order_relaxed);
  hak_count(heap->counters.large_allocs, 1);
  return p;
}

/* HAKMEM_SECURE's pop: one pop in eight takes freshly carved blocks first,
 * and the block's fill is checked, its canary written. */
__attribute__((always_inline)) static inline void* page_pop_secure(hak_heap_t* heap, hak_page_t* page) {
  if (page->capacity < page->reserved && secure_bits(heap, 3) == 0) page_extend(page);
  hak_block_t* b = hak_page_pop(page);
  if (b != NULL && !_hak_secure_pop(page, b)) {
    _hak_page_drop_list(page); /* the list may hold more of the same */
    b = NULL;
  }
  if (hak_unlikely(b == NULL)) return _hak_page_alloc_small(heap, page->bin);
  return b;
}

static void* page_pop(hak_heap_t* heap, hak_page_t* page) {
  page_unkeep(heap, page); /* in use again */
  if (hak_unlikely(_hak_secure)) return page_pop_secure(heap, page);
  hak_heap_set_direct(heap, page->bin, page);
  hak_block_t* b = hak_page_pop(page);
  /* its list was found corrupt and dropped: look again (each corrupt page
   * is dropped once, so this ends) */
  if (hak_unlikely(b == NULL)) return _hak_page_alloc_small(heap, page->bin);
  return b;
}

/* HAKMEM_SECURE's small allocations (heap->direct stays empty, so the
 * inline fast path never pops a secure page): a block of the bin's first
 * page, which is the page the last refill chose, or NULL when it lists
 * none (the caller refills through alloc_tier). */
void* _hak_page_alloc_secure(hak_heap_t* heap, size_t bin) {
  hak_page_t* page = heap->bins[bin].first;
  if (page == NULL || page->free == NULL) return NULL;
  page_unkeep(heap, page);
  return page_pop_secure(heap, page);
}

/* The generic small path: a page of this bin with free blocks, found by
 * collecting remote frees, extending, sweeping the full list, or setting up
 * a new page; then one block from it.
 * A page is taken at once if at least 1/PAGE_TAKE of it is free; otherwise
 * the search goes on (at most 8 pages) and a new page is set up rather than
 * switching to a nearly full one every few allocations.  This keeps the
 * fast path hit rate high at the cost of up to ~1/PAGE_TAKE slack per bin.
 * 1/8 left CPython churn's pages with 1/16 to 1/8 free unused while new
 * pages grew its peak RSS by 2 MiB (34.5 MiB, 32.6 at 1/16; mimalloc 31.9);
 * 1/16 costs small 2.6 % more instructions (callgrind), 1/32 6.6 %, and at
 * 1/64 small's time doubles (pages of big blocks then serve a few
 * allocations per refill). */
#define PAGE_SEARCH 8
/* Pages of fewer than 32 blocks (more than 2 KiB each) are taken with 2
 * free, not 1: 1/PAGE_TAKE of them is a block or none, and //verify:bench
 * mid (1,000 live blocks of 2-32 KiB freed at random) refilled on 40 % of
 * its allocations, moving to a page with one block free each time; 17 %
 * with this rule: 58 -> 49 ns (mimalloc 50), peak RSS 13.4 -> 14.2 MiB
 * (mimalloc 14.8).  (4 free, or the page with the most among 8, cost review
 * S's churn of 1-2 KiB blocks 12-30 %, and a bin whose pages each had 2-3
 * free a search of 16 pages per refill: 5x.) */
#define FEW_BLOCKS 32
#ifndef HAK_FAULT_PAGE_TAKE_EIGHTH /* fault injection: the first threshold */
#define PAGE_TAKE 16
#else
#define PAGE_TAKE 8
#endif
void* _hak_page_alloc_small(hak_heap_t* heap, size_t bin) {
  hak_page_t* best = NULL;
  uint32_t best_free = 0;
  for (int attempt = 0; attempt < 2; attempt++) {
    hak_page_t* next;
    int visited = 0;
    for (hak_page_t* page = heap->bins[bin].first; page != NULL && visited < PAGE_SEARCH; page = next) {
      next = page->next;
      visited++;
      _hak_page_collect(page);
      uint32_t cap = page->capacity;
      uint32_t avail = page->reserved - page->used; /* free now or carvable */
      if (avail == 0) {
        page_to_full(heap, page);
        continue;
      }
      if (page->free == NULL && cap < page->reserved) page_extend(page);
      uint32_t need = page->reserved / PAGE_TAKE;
#ifndef HAK_FAULT_FEW_BLOCKS_ANY /* fault injection: any free block will do (the first rule) */
      if (page->reserved < FEW_BLOCKS) need = 2;
#endif
      if (avail >= need && page->free != NULL) return page_pop(heap, page);
      if (avail > best_free) best = page, best_free = avail;
      /* rotate: the next search starts with pages not looked at now */
      if (page != heap->bins[bin].last) {
        queue_remove(&heap->bins[bin], page);
        queue_push_back(&heap->bins[bin], page);
      }
    }
    hak_heap_set_direct(heap, bin, &_hak_page_empty);
    if (attempt == 0) _hak_heap_sweep_full(heap);
  }
  hak_page_t* page = page_new(heap, bin);
  if (page == NULL) {
    if (best == NULL) return NULL;
    page = best; /* out of memory for a new page: take what there is */
  }
  if (page->free == NULL && page->capacity < page->reserved) page_extend(page);
  if (page->free == NULL) return NULL; /* best's free blocks were counted, not listed */
  return page_pop(heap, page);
}

/* After a local free left the page empty or on the full list. */
void _hak_page_free_slow(hak_heap_t* heap, hak_page_t* page) {
  if (page->kind == HAK_SLICE_LARGE) {
    /* the fast path counted it as small */
    hak_count(heap->counters.small_frees, (uint64_t)-1);
    hak_count(heap->counters.large_frees, 1);
    _hak_site_free((const void*)page->site);
    page_retire(heap, page);
    kept_unpin(heap);
    hak_purge_tick(heap);
    return;
  }
  if (page->in_full) page_unfull(heap, page);
  if (page->used == 0 && !page_is_current(heap, page)) page_emptied(heap, page);
  kept_unpin(heap);
  hak_purge_tick(heap);
}

/* Retires every page with no live block (thread exit). */
void _hak_heap_release_empty(hak_heap_t* heap) {
  _hak_heap_sweep_full(heap);
  for (size_t bin = 0; bin < HAK_BINS; bin++) {
    hak_page_t* next;
    for (hak_page_t* page = heap->bins[bin].first; page != NULL; page = next) {
      next = page->next;
      _hak_page_collect(page);
      if (page->used == 0) page_retire(heap, page);
      else page_unkeep(heap, page);
    }
    hak_heap_set_direct(heap, bin, heap->bins[bin].first && !_hak_secure ? heap->bins[bin].first : &_hak_page_empty);
  }
  for (hak_segment_t *seg = heap->segments, *next; seg != NULL; seg = next) {
    next = seg->next;
    if (seg->used_slices == 0) _hak_segment_release(heap, seg);
  }
}
