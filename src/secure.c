/* HAKMEM_SECURE levels 1 and 2: checks that cost more than the default
 * level's (harden.c), on the generic paths only.
 *
 * Level 1
 * - Canary: the last 8 bytes of every small block (HAK_CANARY) hold
 *   hak_canary(block), a keyed mix of its address; a request is given a
 *   class 8 bytes larger, and the usable size excludes the canary.  free
 *   and realloc check it: an overflow past the block (of any length, into
 *   a live or a free neighbour) or an underflow into the block before is
 *   reported as heap corruption naming the block whose canary broke.
 * - Zero on free: a freed block's first and last 64 bytes (all of it up
 *   to 128 bytes) are zeroed past its link and tag (words 0 and 1, which
 *   the default level checks), and a pop checks the zeroes, so a write
 *   after free there is reported when the block is reused.  These are the
 *   cache lines a free and a pop touch anyway (the header's, the
 *   canary's): zeroing and checking whole blocks made level 1 cost 5-8x
 *   level 0 on small-block churn (README "Hardening" has what it costs
 *   now).  New blocks are zeroed when carved from slices that may hold
 *   old data.
 * - Random carving: the blocks a page carves go on its list in a random
 *   order, and one pop in eight carves fresh blocks first when the page
 *   has room: where the next block comes from is not predictable.
 * - A page retiring checks every block on its list as a pop would, so a
 *   corruption is reported even when its block is never reused.
 * Level 2, also
 * - Whole blocks zeroed and checked: up to 4 KiB, their first and last
 *   KiB beyond: a write after free into the middle of a block is reported.
 * - Quarantine: a freed block waits in its heap's ring of QUARANTINE slots
 *   (and QUARANTINE_BYTES), at a random place (the block it displaces is
 *   freed for real), so reuse is delayed by up to ~QUARANTINE frees and its
 *   order is random; a block
 *   leaving it is checked (tag, zero link, zero fill) before it goes on its
 *   page's list.  Thread exit and hak_collect empty the ring, and so does
 *   the heap's purge tick when no block went in since the tick before (an
 *   idle thread's ring would otherwise keep its pages from emptying).
 * - Large blocks get a guard page after them (page.c), freed huge blocks
 *   are made PROT_NONE until reused and skip BigCache (huge.c).
 * Not detected: an overflow that stays within a block's slack before the
 * canary, a read after free, corruption of a live block's contents, a write
 * after free beyond a block's first and last 64 bytes at level 1, an
 * overflow out of a large block at level 1 or of a huge block into its own
 * slack; the keys are not a cryptographic MAC (harden.c). */
#include <string.h>

#include "internal.h"

#define QUARANTINE 256                 /* blocks held at most ... */
#define QUARANTINE_BYTES ((size_t)2 << 20) /* ... and bytes */
/* What of a freed small block is zeroed and checked, past words 0 and 1:
 * the whole block up to *_ALL bytes, its first and last *_EDGE bytes
 * beyond (the header's word pair counts in the first edge). */
#define L1_ALL 128
#define L1_EDGE 64
#define L2_ALL 4096
#define L2_EDGE 1024

int _hak_secure;

void _hak_secure_init(void) { _hak_secure = (int)hak_option(HAK_OPT_SECURE); }

uint64_t _hak_secure_rand(hak_heap_t* heap) {
  if (heap->rng == 0) heap->rng = (_hak_keys.can0 ^ (uintptr_t)heap) | 1;
  uint64_t x = heap->rng; /* xorshift64* */
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  heap->rng = x;
  return x * 0x2545f4914f6cdd1dULL;
}

__attribute__((always_inline)) static inline bool zero_range(const uint8_t* p, size_t n) {
  uint64_t acc = 0;
  for (size_t i = 0; i + 8 <= n; i += 8) {
    uint64_t w;
    memcpy(&w, p + i, 8);
    acc |= w;
  }
  return acc == 0;
}

/* The block's fill (past words 0 and 1) is intact.  Level 1's edges are
 * constants (they overlap for blocks of 80..128 bytes): a few vector
 * loads. */
HAK_NO_SANITIZE static inline bool fill_intact_(const uint8_t* b, size_t bs) {
  if (_hak_secure == 1 && bs >= L1_EDGE + 16) { /* the last edge misses the header */
    uint64_t acc = 0, w;
    for (size_t i = 16; i < L1_EDGE; i += 8) memcpy(&w, b + i, 8), acc |= w;
#ifndef HAK_FAULT_SECURE_TAIL_UNCHECKED /* fault injection: the last edge is not looked at */
    for (size_t i = bs - L1_EDGE; i < bs; i += 8) memcpy(&w, b + i, 8), acc |= w;
#endif
    return acc == 0;
  }
  if (bs <= (_hak_secure == 1 ? L1_ALL : L2_ALL)) return zero_range(b + 16, bs - 16);
  return zero_range(b + 16, L2_EDGE - 16) && zero_range(b + bs - L2_EDGE, L2_EDGE);
}

/* The fill lives in memory the tools (track.h) hold as freed or as the
 * program's slack: hakmem's own reads of it are not the program's. */
static inline bool fill_intact(const uint8_t* b, size_t bs) {
  hak_track_quiet(true);
  bool ok = fill_intact_(b, bs);
  hak_track_quiet(false);
  hak_track_defined(&ok, sizeof(ok)); /* memcheck: bytes it holds no-access read as undefined */
  return ok;
}

HAK_NO_SANITIZE bool _hak_secure_pop(hak_page_t* page, hak_block_t* b) {
  size_t bs = page->block_size;
#ifndef HAK_FAULT_SECURE_FILL_UNCHECKED /* fault injection: reuse trusts the fill */
  if (hak_unlikely(!fill_intact((const uint8_t*)b, bs))) {
    _hak_error_what(HAK_ERR_CORRUPT, HAK_FN_MALLOC, b, "a freed block was written after free");
    return false;
  }
#endif
  uintptr_t c = hak_canary(b);
  hak_track_quiet(true);
  memcpy((uint8_t*)b + bs - HAK_CANARY, &c, sizeof(c));
  hak_track_quiet(false);
  return true;
}

HAK_NO_SANITIZE bool _hak_secure_check(const hak_page_t* page, const void* p, hak_fn_t fn) {
  if (page->kind != HAK_SLICE_SMALL) return true;
  uintptr_t c;
  hak_track_quiet(true); /* beyond the block's usable size: the tools' slack */
  memcpy(&c, (const uint8_t*)p + page->block_size - HAK_CANARY, sizeof(c));
  hak_track_quiet(false);
  hak_track_defined(&c, sizeof(c));
#ifndef HAK_FAULT_SECURE_CANARY_UNCHECKED /* fault injection: the canary is not looked at */
  if (hak_unlikely(c != hak_canary(p))) {
    _hak_error_what(HAK_ERR_CORRUPT, fn, p, "the block's canary was overwritten (heap overflow or underflow)");
    return false;
  }
#endif
  return true;
}

__attribute__((always_inline)) static inline void fill(const hak_page_t* page, void* p) {
  if (page->kind != HAK_SLICE_SMALL) return;
  uint8_t* b = p;
  size_t bs = page->block_size;
  hak_track_internal(b, bs); /* the tools' builds: writable until the end */
  if (_hak_secure == 1 && bs >= L1_EDGE + 16) { /* constant sizes: inline stores */
    memset(b + 16, 0, L1_EDGE - 16);
    memset(b + bs - L1_EDGE, 0, L1_EDGE); /* overlaps the first up to 128 B */
  } else if (bs <= (_hak_secure == 1 ? L1_ALL : L2_ALL)) {
    memset(b + 16, 0, bs - 16);
  } else {
    memset(b + 16, 0, L2_EDGE - 16);
    memset(b + bs - L2_EDGE, 0, L2_EDGE);
  }
  hak_track_noaccess(b + HAK_TRACK_HEADER, bs - HAK_TRACK_HEADER); /* freed: all but the header */
}

void _hak_secure_fill(const hak_page_t* page, void* p) { fill(page, p); }

/* A free of block b of page, which this thread owns: the block start,
 * not freed (checked by the caller).  Its canary is checked, its fill
 * written, then it is freed into its page (level 2: into the quarantine).
 * About 45 instructions at level 1 past the caller's checks. */
__attribute__((always_inline)) static inline void free_local(hak_heap_t* heap, hak_page_t* page, hak_block_t* b, uintptr_t tag, hak_fn_t fn) {
  if (!_hak_secure_check(page, b, fn)) return;
  fill(page, b);
  hak_track_free(b, page->block_size, HAK_TRACK_HEADER);
  atomic_store_explicit(&b->tag, tag, memory_order_relaxed);
  hak_count(heap->counters.small_frees, 1);
  if (_hak_secure >= 2 && page->kind == HAK_SLICE_SMALL) {
    _hak_quarantine_put(heap, b); /* held back; others may leave */
    return;
  }
  hak_block_set_next(b, page->free);
  page->free = b;
  if (--page->used == 0 || page->in_full) _hak_page_free_slow(heap, page);
}

void _hak_secure_free_local(hak_heap_t* heap, hak_page_t* page, hak_block_t* b, hak_fn_t fn) {
  free_local(heap, page, b, hak_freed_tag(b), fn);
}

/* free() of a pointer in a secure segment (the inline fast path sends
 * HAK_MAP_SECURE here): the owner's free of a valid block is done here,
 * anything else (another thread's block, misuse) by _hak_free_generic. */
void _hak_free_secure(void* p, hak_fn_t fn) {
  hak_page_t* page = hak_page_of(p);
  hak_heap_t* heap = _hak_heap_tls;
  hak_block_t* b = p;
  uintptr_t tag = hak_freed_tag(p);
  if (hak_likely(page->heap == heap && hak_page_is_block(page, (uintptr_t)p) &&
                 (hak_track_free_begin(p),
                  ((atomic_load_explicit(&b->tag, memory_order_relaxed) ^ tag) & ~HAK_TAG_REMOTE) != 0))) {
    free_local(heap, page, b, tag, fn);
    return;
  }
  _hak_free_generic(p, fn);
}

void _hak_secure_retire(hak_page_t* page) {
  uint32_t n = 0;
  for (hak_block_t* b = page->free; b != NULL && n++ < page->capacity;) {
    hak_block_t* next = hak_block_next(b);
    if (hak_unlikely(!hak_pop_ok(page, b, next))) {
      _hak_freelist_corrupt(page, b);
      return;
    }
    if (hak_unlikely(!fill_intact((const uint8_t*)b, page->block_size))) {
      _hak_error_what(HAK_ERR_CORRUPT, HAK_FN_FREE, b, "a freed block was written after free");
      return;
    }
    b = next;
  }
}

/* The checks a block passes when it leaves the quarantine: still freed, and
 * its link (zero while held) and fill untouched. */
static bool quarantine_intact(const hak_page_t* page, const hak_block_t* b) {
#ifdef HAK_FAULT_QUARANTINE_UNCHECKED /* fault injection: blocks leave the quarantine unchecked */
  return true;
#endif
  if (!hak_tag_is_freed(b, atomic_load_explicit(&b->tag, memory_order_relaxed)) || b->link != 0) return false;
  return page->kind != HAK_SLICE_SMALL || fill_intact((const uint8_t*)b, page->block_size);
}

/* A block leaving the quarantine: checked, then freed into its page. */
static void quarantine_release(hak_heap_t* heap, hak_block_t* b) {
  hak_page_t* page = hak_page_of(b);
  heap->q_bytes -= page->block_size;
  if (hak_unlikely(!quarantine_intact(page, b))) {
    _hak_error_what(HAK_ERR_CORRUPT, HAK_FN_FREE, b, "a block in quarantine was written after free");
#ifndef HAK_FAULT_QUARANTINE_LEAK_UNMARKED /* fault injection: the checker is not told */
    page->corrupt = 1; /* b leaks, never served: still counted used, tagged freed */
#endif
    return;
  }
  hak_block_set_next(b, page->free);
  page->free = b;
  if (--page->used == 0 || page->in_full) _hak_page_free_slow(heap, page);
}

void _hak_quarantine_put(hak_heap_t* heap, hak_block_t* b) {
  heap->q_puts++;
  if (heap->purge_next_ns == 0) _hak_purge_dirtied(heap); /* an idle ring is flushed at the purge tick (purge.c) */
  if (heap->quarantine == NULL) {
    heap->quarantine = _hak_meta_alloc(QUARANTINE * sizeof(hak_block_t*));
    if (heap->quarantine == NULL) { /* no room to hold it: freed now */
      heap->q_bytes += hak_page_of(b)->block_size;
      b->link = 0;
      quarantine_release(heap, b);
      return;
    }
  }
  b->link = 0;
  heap->q_bytes += hak_page_of(b)->block_size;
  if (heap->q_len < QUARANTINE) {
    heap->quarantine[heap->q_len++] = b;
  } else { /* b takes a random place; the block there leaves */
    size_t i = (size_t)(_hak_secure_rand(heap) % QUARANTINE);
    hak_block_t* out = heap->quarantine[i];
    heap->quarantine[i] = b;
    quarantine_release(heap, out);
  }
  /* bounded in bytes too: random ones leave until it fits */
  while (heap->q_bytes > QUARANTINE_BYTES && heap->q_len > 1) {
    size_t i = (size_t)(_hak_secure_rand(heap) % heap->q_len);
    hak_block_t* out = heap->quarantine[i];
    heap->quarantine[i] = heap->quarantine[--heap->q_len];
    quarantine_release(heap, out);
  }
}

void _hak_quarantine_flush(hak_heap_t* heap) {
  while (heap->q_len > 0) quarantine_release(heap, heap->quarantine[--heap->q_len]);
}
