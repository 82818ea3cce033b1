/* Huge blocks: one direct mapping each, 4 MiB aligned and a multiple of
 * 4 MiB long (so no other mapping shares a chunk of the segment map), with
 * a checked header in the 64 bytes below the user pointer (types.h).
 *
 *   base         base + offset - 64   base + offset            base + map_size
 *   |  (unused)  | hak_huge_t         | user block (size) ...  |
 *
 * Allocation: BigCache (same site and class) first, then cached blocks'
 * pages gathered by mremap (huge_gather), then a retained mapping of the
 * batch queue, then mmap.  Blocks of 2 MiB and more start
 * 2 MiB into the mapping, 2 MiB aligned, advised MADV_HUGEPAGE up to 4 MiB,
 * and beyond when their call site allocated that size range before and has
 * freed blocks.
 * Guard page (PROT_NONE): the page right behind the block (a BigCache
 * class's fixed size may leave more of the mapping behind it; the 2 and
 * 6 MiB classes take a chunk more of address space for it, never memory),
 * so an overflow out of the block faults at once instead of running on.
 * It stays while the mapping lives (BigCache and the batch queue keep
 * whole mappings); a retained mapping reused for a block of another size
 * has it moved; realloc by mremap lifts it and sets it at the new end.
 * Free: BigCache (a class's row, or the row past the classes), else the
 * batch queue; munmap happens only there and when a gather empties a
 * cached block.
 * The segment map marks every chunk with its distance to the head chunk,
 * so a pointer's header is found without reading unmapped memory.  Freed
 * user pointers are remembered in a small ring so that a second free of
 * an unmapped block is still reported as a double free. */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "internal.h"

#define RECENT 64
#define THP_SIZE ((size_t)2 << 20)

static _Atomic(uint64_t) huge_allocs, huge_frees, huge_grown;
/* held while a block is in transit between its old mapping (or BigCache)
 * and a new one (grow, realloc by mremap): a fork waits, so a child never
 * finds a registered mapping that is neither live, cached nor queued */
static hak_mutex_t huge_lock = HAK_MUTEX_INIT(HAK_LOCK_HUGE);

void _hak_huge_lock(bool lock) {
  if (lock) pthread_mutex_lock(&huge_lock.m);
  else pthread_mutex_unlock(&huge_lock.m);
}
void _hak_huge_fork_child(void) { pthread_mutex_unlock(&huge_lock.m); /* held since prepare */ }
static _Atomic(uint64_t) huge_live_bytes; /* mapping bytes of live blocks */
/* their usable bytes (what BigCache's weights count), and its high-water
 * marks in this window and the one before (BigCache's budget and its
 * windows: bigcache.c) */
static _Atomic(uint64_t) huge_live_usable, huge_live_peak, huge_live_peak_prev;

static void huge_live_add(const hak_huge_t* h) {
  atomic_fetch_add_explicit(&huge_live_bytes, h->map_size, memory_order_relaxed);
  uint64_t live = atomic_fetch_add_explicit(&huge_live_usable, h->size, memory_order_relaxed) + h->size;
  uint64_t peak = atomic_load_explicit(&huge_live_peak, memory_order_relaxed);
  while (live > peak &&
         !atomic_compare_exchange_weak_explicit(&huge_live_peak, &peak, live, memory_order_relaxed, memory_order_relaxed)) {
  }
}
static void huge_live_sub(const hak_huge_t* h) {
  atomic_fetch_sub_explicit(&huge_live_bytes, h->map_size, memory_order_relaxed);
  atomic_fetch_sub_explicit(&huge_live_usable, h->size, memory_order_relaxed);
}
static _Atomic(uintptr_t) recent[RECENT];
static _Atomic(size_t) recent_next;

/* p was a live block and is no more: a free of it is a double free */
static void recent_note(const void* p) {
  size_t slot = atomic_fetch_add_explicit(&recent_next, 1, memory_order_relaxed) % RECENT;
  atomic_store_explicit(&recent[slot], (uintptr_t)p, memory_order_relaxed);
}

/* Keyed and non-linear in the key: the fields are mixed, xored with one
 * key, multiplied by another (odd), folded and multiplied again, so one
 * header read does not give away how to forge another. */
static uint64_t huge_checksum(const hak_huge_t* h) {
  uint64_t x = h->magic ^ (h->map_size * 0x9e3779b97f4a7c15ULL) ^ (h->size << 1) ^ ((uint64_t)h->offset << 7) ^
               (uint64_t)h->base ^ ((uint64_t)(uint32_t)h->cls << 40);
  x = (x ^ _hak_keys.sum0) * _hak_keys.sum1;
  x ^= x >> 29;
  return x * 0xff51afd7ed558ccdULL;
}

/* The guard page of a mapping whose block ends at block_end.  Sanitizer
 * and Valgrind builds keep it at the mapping's end: there the tool reports
 * a write past the block (it was told the rest is off limits) with its
 * stack, where a fault would say less. */
static uintptr_t huge_guard_at(uintptr_t base, size_t block_end, size_t map_size) {
#if HAK_TRACKING
  (void)block_end;
  return base + map_size - HAK_GUARD_SIZE;
#else
  (void)map_size;
  return base + ((block_end + HAK_GUARD_SIZE - 1) & ~(HAK_GUARD_SIZE - 1));
#endif
}

static void huge_guard(uintptr_t at, bool on) {
#ifndef HAK_FAULT_HUGE_UNGUARDED /* fault injection: no guard page */
  _hak_os_guard((void*)at, on);
#else
  (void)at, (void)on;
#endif
}

/* A reused mapping's guard page moves from was to at (behind its new
 * block), emptied first: a guard page is never resident, so the checker's
 * look at resident pages (mincore) never reads one. */
static void huge_guard_move(uintptr_t was, uintptr_t at) {
  if (was == at) return;
  huge_guard(was, false);
  _hak_os_advise((void*)at, HAK_GUARD_SIZE, MADV_DONTNEED);
  huge_guard(at, true);
}

/* The mapping size for a block of size bytes at offset: the block and the
 * guard page behind it, rounded up to whole chunks. */
static size_t huge_map_size(size_t offset, size_t size) {
  return (offset + size + HAK_GUARD_SIZE + HAK_SEGMENT_MASK) & ~(size_t)HAK_SEGMENT_MASK;
}

/* Where the user block starts in its mapping. */
size_t _hak_huge_offset(size_t size, size_t align) {
  size_t off = size >= THP_SIZE ? THP_SIZE : HAK_HUGE_HEADER;
  return align > off ? align : off;
}

/* Writes the header of a new live block at offset in the mapping at base
 * (the block ends at block_end) and counts it; returns the user pointer. */
static void* huge_init(uint8_t* base, size_t map_size, size_t offset, size_t block_end, int cls, const void* site) {
  hak_huge_t* h = (hak_huge_t*)(base + offset - HAK_HUGE_HEADER);
  hak_track_internal(h, HAK_HUGE_HEADER); /* may lie in a reused mapping's old block */
  h->magic = HAK_HUGE_MAGIC;
  h->base = (uintptr_t)base;
  h->map_size = map_size;
  h->size = block_end - offset; /* what may be touched */
  h->offset = (uint32_t)offset;
  h->cls = cls;
  h->site = (uintptr_t)site;
  h->drained = 0;
  h->probe = 0;
  h->checksum = huge_checksum(h);
  /* live last (release: its fields and checksum first): a fork child
   * whose snapshot cut a thread that gave up at the gate here finds the
   * header not live yet, or whole (mt_test's slow forks under TSan with
   * HAKMEM_SECURE=2: live with its checksum not yet written) */
  atomic_store_explicit(&h->state, HAK_HUGE_LIVE, memory_order_release);
  /* sanitizer builds: nothing past the block is the program's */
  hak_track_noaccess((uint8_t*)h + HAK_HUGE_HEADER + h->size, huge_guard_at(0, block_end, map_size) - block_end);
  hak_atomic_add(huge_allocs, 1);
  huge_live_add(h);
  return base + offset;
}

/* Moves h's block onto a fresh 4 MiB-aligned range of map_size bytes by
 * mremap (no copy, no page fault): the pages from its offset to its guard
 * page, which must be one VMA (THP advice splits off only the part in
 * front, the guard the part behind; a block gathered from cached blocks'
 * pages is several, and the kernel refuses to resize those: realloc
 * copies).  The rest of the old mapping holds nothing but the old
 * header (the caller writes the new one) and is unmapped.  The map forgets
 * the old range before it goes back to the kernel (another thread's new
 * mapping may land there the moment mremap returns).  Returns the new
 * base, its guard page set behind block_end; NULL: nothing changed.  The
 * caller owns h. */
#if !HAK_TRACKING /* sanitizer builds: the shadow would not follow the pages */
static uint8_t* huge_move(hak_huge_t* h, size_t map_size, size_t block_end) {
  uintptr_t old_base = h->base;
  size_t old_map = h->map_size, off = h->offset;
  uintptr_t from = old_base + off, to = huge_guard_at(old_base, off + h->size, old_map);
  if ((off & 4095) != 0 || map_size <= old_map || to <= from) return NULL;
  uint8_t* base = _hak_os_alloc_aligned(map_size, HAK_SEGMENT_SIZE); /* reserved: the pages move onto it */
  if (base == NULL) return NULL;
  _hak_segmap_set((uintptr_t)base, map_size, true);
#if !defined(HAK_FAULT_REMAP_MAP_STALE) && !defined(HAK_FAULT_REMAP_CLEAR_LATE) /* fault injection */
  _hak_segmap_clear(old_base, old_map);
#endif
  if (!_hak_os_remap((void*)from, to - from, base + off, map_size - off)) {
    _hak_segmap_clear((uintptr_t)base, map_size);
    _hak_segmap_set(old_base, old_map, true);
    _hak_os_free(base, map_size);
    return NULL;
  }
  _hak_os_free((void*)old_base, off);
  _hak_os_free((void*)to, old_base + old_map - to); /* the guard page and what lies behind it */
#ifdef HAK_FAULT_REMAP_CLEAR_LATE /* fault injection: the old range forgotten after it went back (the first version) */
  _hak_segmap_clear(old_base, old_map);
#endif
  if (_hak_thp_always) _hak_os_advise(base, off & ~(THP_SIZE - 1), MADV_NOHUGEPAGE);
  huge_guard(huge_guard_at((uintptr_t)base, block_end, map_size), true);
  return base;
}
#endif

static _Atomic(uint64_t) huge_moved_bytes;

#if !HAK_TRACKING
/* A cached block back to BigCache, or to the batch queue if it has no room. */
static void huge_recache(hak_huge_t* h) {
  if (!_hak_bigcache_put(h, false)) _hak_madvq_push(h->base, h->map_size, h->offset + h->size, h->size + 4096);
}

/* Pages move in steps of one 2 MiB frame, each one VMA: every VMA boundary
 * inside a block lies on a frame boundary or at its guard page (gathered
 * pieces start and end on frames, filling the block's last frame past its
 * end; drained fronts end on frames; THP advice is frame-rounded; a guard
 * page lifted merges back into its VMA), so no step spans two VMAs.  A
 * move of several VMAs at once may fail part way (Linux 6.17 and later:
 * some VMAs moved; before: the destination unmapped first, nothing
 * moved); a move of one VMA fails whole or not at all. */
#define FRAME THP_SIZE
static size_t frame_up(size_t n) { return (n + FRAME - 1) & ~(FRAME - 1); }

/* Moves the pages of [src, src + len) onto dst, frame by frame, leaving
 * src mapped and empty; src and dst start on frames.  Returns the bytes
 * moved (all of them, or the steps before one the kernel refused);
 * *spoiled: the bytes from dst that may hold moved pages.  A refused step
 * that left holes (a broken invariant above, or a kernel that moves part
 * of a range) has them mapped again with fresh pages, and counts as
 * spoiled; one that cannot be repaired (a hole beside mapped pages, which
 * may be another thread's mapping that landed there) aborts with a
 * diagnosis rather than hand out a block with a hole or a stranger's
 * pages. */
static size_t huge_move_frames(uintptr_t src, size_t len, uintptr_t dst, size_t* spoiled) {
  size_t done = 0;
  *spoiled = 0;
  while (done < len) {
    size_t n = len - done < FRAME ? len - done : FRAME;
#ifdef HAK_FAULT_GATHER_ONE_MOVE /* fault injection: the whole range in one mremap (the first version) */
    n = len - done;
#endif
    if (!_hak_os_move_keep((void*)(src + done), n, (void*)(dst + done))) {
      if (!_hak_os_mapped((void*)(dst + done), n) || !_hak_os_mapped((void*)(src + done), n)) {
#ifdef HAK_FAULT_GATHER_HOLE_ABORTS /* fault injection: no repair (the second version) */
        if (true) {
#else
        if (!_hak_os_refill((void*)(dst + done), n) || !_hak_os_refill((void*)(src + done), n)) {
#endif
          _hak_warning("mremap left a hole that could not be mapped again: ", "aborting");
          abort();
        }
        *spoiled = done + n;
      }
      break;
    }
    done += n;
  }
  if (*spoiled < done) *spoiled = done;
  return done;
}

/* The bytes at a cached block's start whose pages were moved out (empty
 * now), a whole number of frames: drained is a hint, clamped to the block. */
static size_t huge_drained(const hak_huge_t* h) {
  size_t moved = frame_up((size_t)h->drained * 4096);
  return moved < h->size ? moved : h->size;
}

/* Moves pages of cached block d (taken from BigCache) to dst, from the
 * front of what it still holds (a block's start is what a program touched
 * first, a class block's end often nothing): want bytes if it holds that
 * many (the piece that completes the block), else whole frames of them
 * (a piece in the middle of a block starts and ends on frames).  d goes
 * back to the kernel if that empties it (the map forgets it first), else
 * back to BigCache, its drained front counting what it gave up to the
 * next frame (so its next piece starts on one; the pages short of it are
 * let go, so every page it keeps is counted).  Returns the bytes moved;
 * 0 with *kept: d has no whole frame to give, and the caller keeps it.
 * *spoiled: the bytes from dst that may hold its pages. */
static size_t huge_take(hak_huge_t* d, uintptr_t dst, size_t want, bool* kept, size_t* spoiled) {
  size_t lo = huge_drained(d), end = d->size & ~(size_t)4095;
  size_t avail = end > lo ? end - lo : 0;
  size_t take = avail >= want ? want : avail & ~(FRAME - 1);
  uintptr_t from = d->base + d->offset;
  *kept = take == 0;
  *spoiled = 0;
  if (take == 0) return 0;
  size_t got = huge_move_frames(from + lo, take, dst, spoiled);
  size_t next = frame_up(lo + got) < end ? frame_up(lo + got) : end;
  /* emptied; or a block past the classes (cached for its pages only: no
   * request hits it) left with less than a frame, which no gather takes:
   * cached again, such remnants would fill the cache's slots and donor
   * picks (the cold scenario: 24 MiB blocks, 2 MiB short of a frame each) */
#ifdef HAK_FAULT_GATHER_KEEPS_REMNANT /* fault injection: the remnant cached again (the first version) */
  if (next == end) {
#else
  if (next == end || (d->cls < 0 && end - next < FRAME)) {
#endif
    _hak_segmap_clear(d->base, d->map_size);
    _hak_os_free((void*)d->base, d->map_size);
    return got;
  }
  if (next != lo + got) _hak_os_advise((void*)(from + lo + got), next - (lo + got), MADV_DONTNEED);
#ifndef HAK_FAULT_GATHER_DRAIN_FORGOTTEN /* fault injection: the donor keeps counting the pages it gave */
  d->drained = (uint32_t)(next / 4096);
#endif
  huge_recache(d);
  return got;
}

#define GATHER_DONORS 8 /* cached blocks a request may take pages from */
/* and those it may find with no whole frame to give: 3 MiB class blocks
 * whose first 2 MiB a gather took, 1 MiB each, kept for hits (a hit fills
 * their front again; letting them go instead cost cold 150 -> 203 us and
 * 21 -> 29 k faults): as many as twice the default budget holds (review
 * R's aside64.c met 64) */
#define GATHER_ASIDE 128

/* Fills [block + filled, block + need) with cached blocks' pages, from
 * donor d (if not NULL) and then from BigCache; filled and need are on
 * frames.  Returns the bytes moved; *dirty_end: where the bytes that may
 * not be zero end.  The caller holds huge_lock. */
static size_t huge_fill(uintptr_t block, size_t filled, size_t need, hak_huge_t* d, size_t* dirty_end) {
  /* donors with no whole frame to give (a class block whose front a
   * gather took: kept for hits) are set aside until the end, so each is
   * met once, and do not count as donors: a cache holding many of them
   * still gives its pages */
  hak_huge_t* aside[GATHER_ASIDE];
  size_t moved = 0, n_aside = 0;
  *dirty_end = filled;
  for (int k = 0; k < GATHER_DONORS && n_aside < GATHER_ASIDE && filled < need;) {
    if (d == NULL) d = _hak_bigcache_get_donor(need - filled);
    if (d == NULL) break;
    bool kept;
    size_t spoiled, want = need - filled, got = huge_take(d, block + filled, want, &kept, &spoiled);
    if (kept) aside[n_aside++] = d;
#ifdef HAK_FAULT_GATHER_ASIDE_COUNTS /* fault injection: every donor met counts (the first version) */
    k++;
#else
    else k++;
#endif
    d = NULL;
    if (filled + spoiled > *dirty_end) *dirty_end = filled + spoiled;
    filled += got;
    moved += got;
    if (!kept && (got == 0 || spoiled > got)) break; /* the kernel refused, or a hole was repaired */
  }
  for (size_t i = 0; i < n_aside; i++) huge_recache(aside[i]);
  hak_atomic_add(huge_moved_bytes, moved);
  return moved;
}

/* A block BigCache served whose start was moved out (drained): that start
 * is filled again from other cached blocks where they have pages to give
 * (what they cannot give faults in). */
static void huge_refill(hak_huge_t* h) {
  size_t lo = huge_drained(h);
#ifdef HAK_FAULT_GATHER_NO_REFILL /* fault injection: a drained block faults its front in */
  lo = 0;
#endif
  size_t dirty_end;
  if (lo != 0 && hak_lock(&huge_lock)) {
    huge_fill(h->base + h->offset, 0, lo, NULL, &dirty_end);
    hak_unlock(&huge_lock);
  }
  h->drained = 0;
}
#endif

/* A huge request nothing cached fits: its pages are gathered from cached
 * blocks by mremap (no copy, no page fault: moving a resident page costs
 * ~1/100 of faulting in a fresh one): the largest cached blocks that fit
 * whole first, then the front of a larger one, which stays cached with
 * the rest; only what they could not give faults in.  The block is a fresh
 * mapping, or a cached block's own when it has room behind its block (its
 * guard page is lifted and set again at the new end).  The cache's resident pages thus serve any request
 * size, and a program whose big buffers come in many sizes (or at many
 * sites) faults in about its peak, not every block.  NULL: nothing cached
 * (or a fork is pending). */
static void* huge_gather(size_t size, int cls, const void* site, hak_site_t* s, size_t* dirty) {
#if HAK_TRACKING
  (void)size, (void)cls, (void)site, (void)s, (void)dirty;
  return NULL; /* sanitizer builds: the shadow would not follow the pages */
#else
  size_t offset = _hak_huge_offset(size, 0);
  if (offset != THP_SIZE || !hak_lock(&huge_lock)) return NULL; /* a fork is pending: a fresh mapping */
  hak_huge_t* d = _hak_bigcache_get_donor(size);
  if (d == NULL) {
    hak_unlock(&huge_lock);
    return NULL;
  }
  size_t map_size = huge_map_size(offset, size), filled = 0, moved;
  uint8_t* base;
  if (d->offset == offset && d->size <= size && map_size <= d->map_size && d->drained == 0 &&
      (d->size & (FRAME - 1)) == 0) {
    /* a retained mapping with room enough: the block grows in place (its
     * old end, where the guard page was, on a frame) */
    base = (uint8_t*)d->base;
    map_size = d->map_size;
    filled = d->size;
  } else {
    base = _hak_os_alloc_aligned(map_size, HAK_SEGMENT_SIZE);
    if (base == NULL) {
      huge_recache(d);
      hak_unlock(&huge_lock);
      return NULL;
    }
    /* THP=always: the first 2 MiB holds nothing but the header */
    if (_hak_thp_always) _hak_os_advise(base, offset & ~(THP_SIZE - 1), MADV_NOHUGEPAGE);
  }
  /* a block past BigCache's classes gets all of its mapping, as a fresh one */
  size_t block_end = cls >= 0 ? offset + size : map_size - HAK_GUARD_SIZE;
  /* whole frames, the last past the block's end when it ends inside one
   * (fits: the mapping is whole chunks, past the block and its guard) */
  size_t need = frame_up(size), dirty_end;
#ifdef HAK_FAULT_GATHER_ENDS_OFF_FRAME /* fault injection: the last piece ends at the block's end (the second version) */
  if (need > block_end - offset) need = block_end - offset;
#endif
  uintptr_t d_base = d->base, guard = huge_guard_at((uintptr_t)base, block_end, map_size);
  bool in_place = (uintptr_t)base == d_base;
  if (in_place) {
    huge_guard(huge_guard_at(d_base, offset + d->size, map_size), false); /* the block grows past it */
    d = NULL;
  } else {
    _hak_segmap_set((uintptr_t)base, map_size, true);
  }
  moved = huge_fill((uintptr_t)base + offset, filled, need, d, &dirty_end);
  filled += moved;
  /* past the block's end nothing is the program's: what was moved there
   * goes (a guard page is never resident), then the guard page */
  uintptr_t moved_end = (uintptr_t)base + offset + dirty_end;
  if (in_place || moved_end > guard)
    _hak_os_advise((void*)guard, (moved_end > guard + HAK_GUARD_SIZE ? moved_end : guard + HAK_GUARD_SIZE) - guard,
                   MADV_DONTNEED);
  huge_guard(guard, true);
  /* what may not be zero: the moved pages at the front, or all of a grown
   * cached block's mapping (a retained one may hold stale bytes past it) */
  *dirty = in_place ? SIZE_MAX : dirty_end;
#ifdef HAK_FAULT_GATHER_COUNTS_CLEAN /* fault injection: moved pages taken for zero pages */
  *dirty = 0;
#endif
  if (filled != 0) hak_atomic_add(huge_grown, 1);
  /* the pages moved with their advice: huge pages only as a fresh block
   * of this size would get them (never probed: its pages were others') */
#ifndef HAK_FAULT_GROW_KEEPS_ADVICE /* fault injection: the first version */
  if (hak_option(HAK_OPT_THP))
    _hak_os_advise(base + offset, (map_size - offset) & ~(THP_SIZE - 1),
                   _hak_site_thp(s, size) == HAK_THP_YES ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
#endif
  void* p = huge_init(base, map_size, offset, block_end, cls, site);
  hak_unlock(&huge_lock);
  return p;
#endif
}

static void* huge_alloc(size_t size, size_t align, const void* site, hak_site_t* s, size_t* dirty) {
  _hak_madvq_tick();
  int cls = align <= HAK_HUGE_HEADER ? _hak_bigcache_class(size) : -1;
  if (cls >= 0) {
    size = _hak_bigcache_class_size(cls); /* reusable by any request of the class */
    hak_huge_t* h = _hak_bigcache_get(site, cls);
    if (h != NULL) {
      h->site = (uintptr_t)site;
      atomic_store_explicit(&h->state, HAK_HUGE_LIVE, memory_order_relaxed);
      hak_atomic_add(huge_allocs, 1);
      huge_live_add(h);
#if !HAK_TRACKING
      /* live first: a fork that waited for the refill's lock finds it live */
      if (h->drained != 0) huge_refill(h);
#endif
      *dirty = SIZE_MAX;
      return (uint8_t*)h->base + h->offset;
    }
  }
  /* pages gathered serve a site that touches them; one that touches a few
   * of its blocks' pages is served fresh zero pages faster (the review's
   * hugechurn.c, 64 live blocks of 2-6 MiB with 65 bytes of each written:
   * 0.71 s gathering, 0.24 s not; glibc 0.17 s) */
#ifndef HAK_FAULT_GATHER_FOR_SPARSE /* fault injection: gathers for every site */
  bool gather = !_hak_site_sparse(s, size);
#else
  bool gather = true;
#endif
  if (align <= HAK_HUGE_HEADER && _hak_secure < 2 && gather) {
    void* p = huge_gather(size, cls, site, s, dirty);
    if (p != NULL) return p;
  }
  size_t offset = _hak_huge_offset(size, align);
  if (size > PTRDIFF_MAX - offset - HAK_SEGMENT_SIZE || align > ((size_t)1 << 30)) return NULL;
  size_t map_size = huge_map_size(offset, size);
  uint8_t* base = NULL;
  size_t old_end = 0;
  if (align <= HAK_SEGMENT_SIZE) base = (uint8_t*)_hak_madvq_reuse(map_size, &map_size, &old_end); /* stale contents */
  size_t block_end = offset + (cls >= 0 ? size : map_size - offset - HAK_GUARD_SIZE);
  if (base != NULL) {
    uintptr_t was = huge_guard_at((uintptr_t)base, old_end, map_size);
    uintptr_t at = huge_guard_at((uintptr_t)base, block_end, map_size);
    /* HAKMEM_SECURE=2: the freed block was made PROT_NONE (huge_free) */
    if (_hak_secure >= 2) _hak_os_protect(base, was - (uintptr_t)base, false);
    huge_guard_move(was, at); /* the last block's guard is not where this one needs it */
  }
  *dirty = base == NULL ? 0 : SIZE_MAX;
  int thp = HAK_THP_NO;
  if (base == NULL) {
    _hak_madvq_shed(map_size); /* what no request reused goes before the heap grows */
    base = _hak_os_alloc_aligned(map_size, align > HAK_SEGMENT_SIZE ? align : HAK_SEGMENT_SIZE);
    if (base == NULL) return NULL;
    /* huge pages for a site that uses its blocks densely, or as its first
     * trials (site.c); a block left unadvised may be probed at its free */
    thp = _hak_site_thp(s, size);
    if (thp == HAK_THP_YES) _hak_os_advise(base + offset, (map_size - offset) & ~(THP_SIZE - 1), MADV_HUGEPAGE);
    /* THP=always: the header's write would fault in the whole first 2 MiB
     * (which holds nothing else) as a huge page */
#ifndef HAK_FAULT_THP_HEADER /* fault injection */
    if (_hak_thp_always && offset >= THP_SIZE) _hak_os_advise(base, offset & ~(THP_SIZE - 1), MADV_NOHUGEPAGE);
#endif
    huge_guard(huge_guard_at((uintptr_t)base, block_end, map_size), true);
    _hak_segmap_set((uintptr_t)base, map_size, true);
  }
  void* p = huge_init(base, map_size, offset, block_end, cls, site);
  hak_huge_t* h = (hak_huge_t*)((uint8_t*)p - HAK_HUGE_HEADER);
  if (thp == HAK_THP_PROBE && ((uintptr_t)p & 4095) == 0) {
    h->probe = 1;
    _hak_site_thp_probing(s, p, h->size);
  }
  return p;
}

/* *dirty: the bytes from the block's start that may not be zero (0: a
 * fresh mapping; SIZE_MAX: any).  In the fork gate: a fork does not come
 * between the block's slot or mapping and its header (internal.h). */
void* _hak_huge_alloc(size_t size, size_t align, const void* site, hak_site_t* s, size_t* dirty) {
  _hak_gate_enter();
  void* p = huge_alloc(size, align, site, s, dirty);
  _hak_gate_exit();
  return p;
}

/* The header of a live or freed huge block p, or NULL if p is not the user
 * pointer of a huge block (interior, wild, misaligned); *err says which
 * error to report then: a header whose magic is right but whose checksum
 * or base is wrong was overwritten (HAK_ERR_CORRUPT).  Chunks further than
 * the map's distance field reaches (blocks aligned to 1 GiB sit 256 chunks
 * into their mapping) are walked back to the first chunk that has one. */
static hak_huge_t* huge_lookup_raw(const void* p, hak_error_t* err);
/* The 64 bytes below an invalid pointer may be the program's memory. */
static hak_huge_t* huge_lookup(const void* p, hak_error_t* err) {
  hak_track_quiet(true);
  hak_huge_t* h = huge_lookup_raw(p, err);
  hak_track_quiet(false);
  return h;
}

HAK_NO_SANITIZE static hak_huge_t* huge_lookup_raw(const void* p, hak_error_t* err) {
  uintptr_t a = (uintptr_t)p;
  *err = HAK_ERR_INVALID_FREE;
  size_t chunk = a >> HAK_SEGMENT_SHIFT;
  uint8_t m = hak_segmap_get(a);
#ifndef HAK_FAULT_ALIGN_FAR /* fault injection: far chunks are not walked back */
  while (m == HAK_MAP_HUGE_FAR && chunk > 0) m = hak_segmap_get(--chunk << HAK_SEGMENT_SHIFT);
#endif
  if (m < HAK_MAP_HUGE || m == HAK_MAP_HUGE_FAR) return NULL;
  uintptr_t head = (chunk - (uintptr_t)(m - HAK_MAP_HUGE)) << HAK_SEGMENT_SHIFT;
  /* a block starts 64 bytes, 2 MiB or its alignment into its mapping: a
   * power of two; anything else is not a block, and is told so without
   * reading memory (the page below may be a guard page) */
  uintptr_t d = a - head;
  if (a < head + HAK_HUGE_HEADER || (d & (d - 1)) != 0) return NULL;
  hak_huge_t* h = (hak_huge_t*)(a - HAK_HUGE_HEADER); /* inside the mapping */
  /* HAKMEM_SECURE=2: a freed block is PROT_NONE, and so may be where a
   * pointer into it puts the header: read through the kernel */
  hak_huge_t copy;
  const hak_huge_t* hv = h;
  if (_hak_secure >= 2) {
    if (!_hak_os_peek(h, &copy, sizeof(copy))) return NULL;
    hv = &copy;
  }
  if (hv->magic != HAK_HUGE_MAGIC) return NULL;
#ifdef HAK_FAULT_HUGE_CHECKSUM_UNCHECKED /* fault injection */
  if (hv->base != head || head + hv->offset != a) {
#else
  if (hv->base != head || hv->checksum != huge_checksum(hv) || head + hv->offset != a) {
#endif
#ifndef HAK_FAULT_CORRUPT_AS_INVALID /* fault injection: corruption reported as an invalid pointer */
    *err = HAK_ERR_CORRUPT;
#endif
    return NULL;
  }
  return h;
}

/* What a pointer huge_lookup refused is: a huge block freed lately whose
 * range another mapping took since is a freed block, not a wild pointer
 * (review R's dfree2.c: a 24 MiB block freed, its range a 40 MiB block's). */
static hak_error_t huge_misuse(const void* p, hak_error_t err, hak_fn_t fn) {
#ifdef HAK_FAULT_HUGE_MISUSE_WILD /* fault injection: the ring not asked (the first version) */
  return err;
#endif
  if (err != HAK_ERR_INVALID_FREE || !_hak_huge_recently_freed(p)) return err;
  return fn == HAK_FN_USABLE_SIZE ? HAK_ERR_FREED_USABLE_SIZE : HAK_ERR_DOUBLE_FREE;
}

hak_huge_t* _hak_huge_header(const void* p, hak_fn_t fn) {
  hak_error_t err;
  hak_huge_t* h = huge_lookup(p, &err);
  if (h == NULL) {
    _hak_error(huge_misuse(p, err, fn), fn, p);
    return NULL;
  }
  if (atomic_load_explicit(&h->state, memory_order_relaxed) != HAK_HUGE_LIVE) {
    _hak_error(fn == HAK_FN_USABLE_SIZE ? HAK_ERR_FREED_USABLE_SIZE : HAK_ERR_DOUBLE_FREE, fn, p);
    return NULL;
  }
  return h;
}

static size_t huge_free(void* p, hak_fn_t fn) {
  hak_error_t err;
  hak_huge_t* h = huge_lookup(p, &err);
  if (h == NULL) {
    _hak_error(huge_misuse(p, err, fn), fn, p);
    return 0;
  }
  if (atomic_exchange_explicit(&h->state, HAK_HUGE_FREED, memory_order_acq_rel) != HAK_HUGE_LIVE) {
    _hak_error(HAK_ERR_DOUBLE_FREE, fn, p);
    return 0;
  }
  _hak_site_free((const void*)h->site);
  if (h->probe) { /* how densely its site used it (site.c) */
    h->probe = 0;
    _hak_site_thp_freed((const void*)h->site, p, h->size);
  }
  size_t size = h->size;
  hak_atomic_add(huge_frees, 1);
  huge_live_sub(h);
  hak_track_free(p, h->size, 0); /* before another thread can take it back */
  recent_note(p);
  if (_hak_secure >= 2) {
    /* HAKMEM_SECURE=2: no BigCache; the block (past its header's page) is
     * PROT_NONE until the mapping is reused or unmapped, so a use after
     * free faults */
    uintptr_t from = (h->base + h->offset + 4095) & ~(uintptr_t)4095;
    uintptr_t to = (h->base + h->offset + h->size) & ~(uintptr_t)4095;
#ifdef HAK_FAULT_HUGE_FREED_ACCESSIBLE /* fault injection: freed huge blocks stay accessible */
    to = from;
#endif
    if (to > from) _hak_os_protect((void*)from, to - from, true);
  } else {
    /* a class block, or one past the classes kept for its pages (its
     * drained count reset: the program may have touched them all) */
    bool cacheable = h->cls >= 0 || h->offset == THP_SIZE;
#ifdef HAK_FAULT_GATHER_PAST_UNCACHED /* fault injection: blocks past the classes go to the batch queue (the first version) */
    cacheable = h->cls >= 0;
#endif
    h->drained = 0;
    if (cacheable && _hak_bigcache_put(h, true)) return size;
  }
  _hak_madvq_push(h->base, h->map_size, h->offset + h->size, h->size + 4096);
  return size;
}

/* In the fork gate: a fork does not come between the block's state and
 * its slot or place in the queue (internal.h). */
size_t _hak_huge_free(void* p, hak_fn_t fn) {
  _hak_gate_enter();
  size_t size = huge_free(p, fn);
  _hak_gate_exit();
  return size;
}

bool _hak_huge_header_valid(const hak_huge_t* h, size_t map_size) {
  if (h->checksum != huge_checksum(h) || h->map_size != map_size || h->offset > map_size ||
      h->size > map_size - h->offset)
    return false;
  return h->cls < 0 || _hak_bigcache_class(h->size) == h->cls; /* a cached class holds its class size */
}

/* realloc of a huge block without copying: the mapping grows by moving its
 * pages (mremap) or shrinks in place, and the header follows.  Only blocks
 * and sizes outside BigCache's classes (their mapping sizes are the
 * class's), at the standard offset; NULL: use the copy path. */
void* _hak_huge_realloc(void* p, size_t size) {
#if HAK_TRACKING
  (void)p, (void)size;
  return NULL; /* sanitizer builds: the shadow would not follow the pages */
#else
  hak_huge_t* h = _hak_huge_header(p, HAK_FN_REALLOC);
  if (h == NULL || h->cls >= 0 || _hak_bigcache_class(size) >= 0) return NULL;
  size_t offset = _hak_huge_offset(size, 0);
  if (offset != h->offset || size > PTRDIFF_MAX - offset - HAK_SEGMENT_SIZE) return NULL;
  size_t map_size = huge_map_size(offset, size);
  if (map_size == h->map_size) return NULL;
  uintptr_t old_base = h->base;
  size_t old_map = h->map_size;
  /* The map forgets what goes back to the kernel before it goes: another
   * thread's new mapping may land there the moment mremap returns.  Only
   * this thread may use the block meanwhile (the caller owns it).  A
   * shrink lifts the guard page first (mremap resizes one VMA, and the
   * guard is another) and sets it at the new end; a growth moves only the
   * block's pages (huge_move). */
  uint8_t* base = (uint8_t*)old_base;
  if (!hak_lock(&huge_lock)) return NULL; /* a fork is pending: the copy path */
  huge_live_sub(h); /* first, and added back after: the peak is not both */
  if (map_size < old_map) { /* in place: the tail goes, the guard moves in front of it */
    uintptr_t old_guard = huge_guard_at(old_base, h->offset + h->size, old_map);
    huge_guard(old_guard, false);
    _hak_segmap_clear(old_base + map_size, old_map - map_size); /* the tail's chunks */
    if (!_hak_os_remap((void*)old_base, old_map, base, map_size)) {
      _hak_segmap_clear(old_base, map_size);
      _hak_segmap_set(old_base, old_map, true); /* as it was */
      huge_guard(old_guard, true);
      huge_live_add(h);
      hak_unlock(&huge_lock);
      return NULL;
    }
    huge_guard((uintptr_t)base + map_size - HAK_GUARD_SIZE, true);
  } else {
    uintptr_t site = h->site;
    base = huge_move(h, map_size, map_size - HAK_GUARD_SIZE);
    if (base == NULL) {
      huge_live_add(h);
      hak_unlock(&huge_lock);
      return NULL;
    }
#ifndef HAK_FAULT_REALLOC_MOVE_UNNOTED /* fault injection: the old pointer is forgotten */
    if (base != (uint8_t*)old_base) recent_note(p); /* its old place: a free of it is a double free */
#endif
    h = (hak_huge_t*)(base + offset - HAK_HUGE_HEADER); /* a fresh page: the header anew */
    h->magic = HAK_HUGE_MAGIC;
    h->offset = (uint32_t)offset;
    h->cls = -1;
    h->site = site;
    atomic_store_explicit(&h->state, HAK_HUGE_LIVE, memory_order_relaxed);
  }
  h = (hak_huge_t*)(base + offset - HAK_HUGE_HEADER);
  h->base = (uintptr_t)base;
  h->map_size = map_size;
  h->size = map_size - offset - HAK_GUARD_SIZE;
  h->checksum = huge_checksum(h);
  huge_live_add(h);
  hak_unlock(&huge_lock);
  return base + offset;
#endif
}

size_t _hak_huge_usable(const void* p) { return ((const hak_huge_t*)((uintptr_t)p - HAK_HUGE_HEADER))->size; }

bool _hak_huge_recently_freed(const void* p) {
  for (size_t i = 0; i < RECENT; i++)
    if (atomic_load_explicit(&recent[i], memory_order_relaxed) == (uintptr_t)p) return true;
  return false;
}

uint64_t _hak_huge_live_bytes(void) { return atomic_load_explicit(&huge_live_bytes, memory_order_relaxed); }

uint64_t _hak_huge_live_peak(uint64_t* live) {
  *live = atomic_load_explicit(&huge_live_usable, memory_order_relaxed);
  uint64_t a = atomic_load_explicit(&huge_live_peak, memory_order_relaxed);
  uint64_t b = atomic_load_explicit(&huge_live_peak_prev, memory_order_relaxed);
  return a > b ? a : b;
}

void _hak_huge_live_roll(bool settle) {
  uint64_t live = atomic_load_explicit(&huge_live_usable, memory_order_relaxed);
  uint64_t peak = atomic_exchange_explicit(&huge_live_peak, live, memory_order_relaxed);
  atomic_store_explicit(&huge_live_peak_prev, settle ? live : peak, memory_order_relaxed);
}

void _hak_huge_stats(hak_stats_t* st) {
  st->served_huge = atomic_load(&huge_allocs);
  st->freed_huge = atomic_load(&huge_frees);
  st->bigcache_grown = atomic_load(&huge_grown);
  st->bigcache_moved_bytes = atomic_load(&huge_moved_bytes);
}
