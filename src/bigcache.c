/* BigCache: freed huge blocks kept mapped, per (call site, size class), so
 * that the next allocation of that class from that site reuses the mapping
 * with no system call and no page fault.
 *
 * - Classes (the original's): 512 KiB, 1, 2, 3, 4, 6, 8, 16 MiB.  A huge
 *   request of a class is mapped at the class size so any later request of
 *   the class fits.  Blocks past the classes (at the standard 2 MiB
 *   offset) are cached in a row of their own, for their pages only.
 * - Rows: 256 site buckets x (8 classes + that one), HAKMEM_BIGCACHE_SLOTS
 *   (4) slots each.  A slot holds a mapping's base (4 MiB aligned) with the time it
 *   was cached in the low 22 bits (milliseconds, modulo 2^22), so expiry
 *   never reads a block another thread may have taken; put and get claim
 *   slots with one compare-and-swap: thread-safe without a lock.
 * - Budget: at most HAKMEM_BIGCACHE_BYTES (64 MiB) cached in all, or,
 *   while the program frees huge blocks, what its live huge blocks held at
 *   their peak less what they hold now (bc_budget), counting the memory
 *   each block may hold (bc_weight: its pages less those moved out of it); a
 *   block that does not fit displaces the blocks cached longest ago (up to
 *   16; else it is evicted itself); those, the oldest block of a full row,
 *   and a block idle for HAKMEM_BIGCACHE_EXPIRY_MS (2 s) are evicted: to
 *   the batch queue, never straight to munmap.
 * - Get: the site's own row first; when it is empty, a block of the same
 *   class cached by another site (scanned from a rotating cursor, at most
 *   every row, only while the class holds any), then a block of a larger
 *   class up to twice the size (the smallest first): a fresh mapping would
 *   cost its page faults, and a program whose big buffers come from many
 *   sites, in many sizes, would otherwise fault in a new block while the
 *   cache holds one it fits in.  A larger block keeps its class (and its
 *   usable size), and goes back to that class's row when freed.  When
 *   nothing cached fits, huge.c gathers the request's pages from cached
 *   blocks (_hak_bigcache_get_donor, then mremap): the largest smaller
 *   ones whole, then part of a larger one, which is cached again with
 *   what is left; only what they could not give faults in.
 * - Expiry is checked on puts to the row and by a sweep of 1/16 of the
 *   table on every 16th put; hak_collect() evicts everything.
 *
 * Invariants: a slot's block has state FREED and cls == the slot's class
 * (-1 in the row past the classes); no block is in two slots or in a slot
 * and the batch queue; bc_bytes == the sum of the slots' weights,
 * bc_count[c] == the blocks in class c's slots (when quiescent; while
 * threads put and take, never less: a put counts before its slot). */
#include "internal.h"

#define BC_SITES 256
#define BC_CLASSES 8
/* the row past the classes: blocks larger than every class (at the
 * standard 2 MiB offset), kept only for their pages (huge.c gathers them
 * into other requests); no request asks for one by its size */
#define BC_PAST BC_CLASSES
#define BC_ROWS (BC_CLASSES + 1)
#define BC_SLOTS_MAX 8

static const size_t bc_class_size[BC_CLASSES] = {
    512u << 10, 1u << 20, 2u << 20, 3u << 20, 4u << 20, 6u << 20, 8u << 20, 16u << 20,
};

#define TIME_BITS 22
#define TIME_MASK ((uintptr_t)HAK_SEGMENT_MASK)
_Static_assert(HAK_SEGMENT_SHIFT == TIME_BITS, "slot packs time into the base's zero bits");

static _Atomic(uintptr_t) bc_slots[BC_SITES][BC_ROWS][BC_SLOTS_MAX];
static _Atomic(uint64_t) bc_bytes;
static _Atomic(uint32_t) bc_count[BC_ROWS]; /* blocks cached per class */
static _Atomic(uint64_t) st_hits, st_other_site, st_larger, st_misses, st_puts, st_evictions, st_expired;
static _Atomic(uint32_t) bc_sweep_cursor, bc_put_count;

int _hak_bigcache_class(size_t size) {
  for (int c = 0; c < BC_CLASSES; c++)
#ifdef HAK_FAULT_BIGCACHE_CLASS_DOWN /* fault injection: a page above a boundary maps to the lower class */
    if (size <= bc_class_size[c] + 4096) return c;
#else
    if (size <= bc_class_size[c]) return c;
#endif
  return -1;
}

size_t _hak_bigcache_class_size(int cls) { return bc_class_size[cls]; }

static size_t bc_row(uintptr_t site) {
  site ^= site >> 15;
  site *= 0x2c1b3c6dU;
  site ^= site >> 12;
  return site % BC_SITES;
}

static uintptr_t now_ms(uint64_t now_ns) { return (uintptr_t)(now_ns / 1000000u) & TIME_MASK; }

/* What a cached block counts against the budget: the memory its block may
 * hold (its pages less those moved out of it), not the address space its
 * mapping spans.  drained changes only while a block is out of the cache,
 * so a block counts the same when it leaves as when it came. */
static size_t bc_weight(const hak_huge_t* h) {
  size_t moved = (size_t)h->drained * 4096;
  return moved < h->size ? h->size - moved : 0;
}

/* The budget: HAKMEM_BIGCACHE_BYTES; while the program keeps freeing huge
 * blocks (its last free less than a purge delay ago), up to twice that: as
 * much as its live huge blocks held at their recent peak less what they
 * hold now, so that what it caches, with what is live, stays within a
 * footprint the program had when it caches it (the cold scenario: 4 live
 * blocks of 2-24 MiB, ~90 MiB at their peak, faulted ~30 MiB a second back
 * in for want of a cache that could hold what the live blocks gave back).
 * Recent: the peak is kept per window of HAKMEM_BIGCACHE_EXPIRY_MS, this
 * one and the last, so a spike long past stops counting (review P: a spike
 * at startup kept 126 MiB cached under a steady free every 5 ms).  No free
 * for a purge delay: the peak settles to what is live.  The tick rolls the
 * windows and evicts what the budget no longer covers, oldest first.  A
 * program that goes idle (no slow path: no tick) right after a burst keeps
 * up to twice the option cached, as it keeps the option's worth after
 * quieter frees. */
static _Atomic(uint64_t) bc_free_ns, bc_window_ns; /* the last free's put; the window's start */
static bool bc_busy(uint64_t now, uint64_t last) {
  /* signed: another thread's later stamp is "just now", not long ago */
  return (int64_t)(now - last) < (int64_t)hak_option(HAK_OPT_PURGE_DELAY_MS) * 1000000;
}
static uint64_t bc_budget(bool busy) {
  uint64_t opt = (uint64_t)hak_option(HAK_OPT_BIGCACHE_BYTES);
#ifdef HAK_FAULT_BUDGET_FIXED /* fault injection: the option's budget only (the first version) */
  busy = false;
#endif
  if (opt == 0 || !busy) return opt;
  uint64_t live, peak = _hak_huge_live_peak(&live);
  uint64_t b = peak > live + opt ? peak - live : opt;
  return b < 2 * opt ? b : 2 * opt;
}

static hak_huge_t* slot_header(uintptr_t v, int cls) {
  size_t offset = cls == BC_PAST ? _hak_huge_offset(2u << 20, 0) : _hak_huge_offset(bc_class_size[cls], 0);
  return (hak_huge_t*)((v & ~TIME_MASK) + offset - HAK_HUGE_HEADER);
}

static void bc_evict(uintptr_t v, int cls) {
  hak_huge_t* h = slot_header(v, cls);
  atomic_fetch_sub_explicit(&bc_bytes, bc_weight(h), memory_order_relaxed);
  atomic_fetch_sub_explicit(&bc_count[cls], 1, memory_order_relaxed);
  hak_atomic_add(st_evictions, 1);
  _hak_madvq_push(h->base, h->map_size, h->offset + h->size, h->size + 4096);
}

/* Evicts blocks of one row idle longer than the expiry. */
static void bc_expire_row(_Atomic(uintptr_t)* row, int cls, uint64_t now) {
  uintptr_t expiry = (uintptr_t)hak_option(HAK_OPT_BIGCACHE_EXPIRY_MS);
  uintptr_t t = now_ms(now);
  for (int i = 0; i < BC_SLOTS_MAX; i++) {
    uintptr_t v = atomic_load_explicit(&row[i], memory_order_acquire);
    if (v == 0 || ((t - v) & TIME_MASK) < expiry) continue;
    if (atomic_compare_exchange_strong(&row[i], &v, 0)) {
      hak_atomic_add(st_expired, 1);
      bc_evict(v, cls);
    }
  }
}

/* The classes holding blocks, one bit each: sweeps visit only their rows
 * (bc_count is never below the blocks in a class's slots, so a class it
 * says is empty has none).  A program using one or two classes sweeps a
 * ninth or two of the table: `vm`'s 2 MiB loop spent ~600 instructions a
 * put on rows of empty classes. */
static unsigned bc_classes_held(void) {
  unsigned m = 0;
  for (int c = 0; c < BC_ROWS; c++)
    if (atomic_load_explicit(&bc_count[c], memory_order_relaxed) != 0) m |= 1u << c;
#ifdef HAK_FAULT_SWEEP_ONE_CLASS /* fault injection: the sweeps visit the smallest held class only */
  m &= -m;
#endif
  return m;
}

static void bc_sweep_some(uint64_t now) {
  unsigned held = bc_classes_held();
  if (held == 0) return;
  uint32_t start = atomic_fetch_add(&bc_sweep_cursor, BC_SITES / 16) % BC_SITES;
  for (uint32_t s = start; s < start + BC_SITES / 16; s++)
    for (unsigned m = held; m != 0; m &= m - 1) {
      int c = __builtin_ctz(m);
      bc_expire_row(bc_slots[s % BC_SITES][c], c, now);
    }
}

/* Evicts the block cached longest ago (any row); false if none. */
static bool bc_evict_oldest(uint64_t now) {
  int slots = (int)hak_option(HAK_OPT_BIGCACHE_SLOTS);
  uintptr_t t = now_ms(now), oldest_age = 0;
  _Atomic(uintptr_t)* oldest = NULL;
  int oldest_cls = 0;
  for (int c = 0; c < BC_ROWS; c++) {
    if (atomic_load_explicit(&bc_count[c], memory_order_relaxed) == 0) continue;
    for (int s = 0; s < BC_SITES; s++)
      for (int i = 0; i < slots; i++) {
        uintptr_t v = atomic_load_explicit(&bc_slots[s][c][i], memory_order_relaxed);
        if (v != 0 && (oldest == NULL || ((t - v) & TIME_MASK) > oldest_age))
          oldest = &bc_slots[s][c][i], oldest_age = (t - v) & TIME_MASK, oldest_cls = c;
      }
  }
  if (oldest == NULL) return false;
  uintptr_t v = atomic_load_explicit(oldest, memory_order_acquire);
  if (v != 0 && atomic_compare_exchange_strong(oldest, &v, 0)) bc_evict(v, oldest_cls);
  return true; /* or another thread took it: either way, look again */
}

/* Takes a block from one row; NULL if it holds none. */
static hak_huge_t* bc_take(_Atomic(uintptr_t)* row, int cls, int slots) {
  for (int i = 0; i < slots; i++) {
    uintptr_t v = atomic_load_explicit(&row[i], memory_order_acquire);
#ifdef HAK_FAULT_BIGCACHE_IN_USE /* fault injection: the slot keeps the block */
    if (v != 0) {
#else
    if (v != 0 && atomic_compare_exchange_strong(&row[i], &v, 0)) {
#endif
      hak_huge_t* h = slot_header(v, cls);
      atomic_fetch_sub_explicit(&bc_bytes, bc_weight(h), memory_order_relaxed);
      atomic_fetch_sub_explicit(&bc_count[cls], 1, memory_order_relaxed);
      return h;
    }
  }
  return NULL;
}

/* Another site's block of class cls (own: a row to skip, BC_SITES for
 * none), or NULL. */
static hak_huge_t* bc_steal(size_t own, int cls, int slots) {
  static _Atomic(uint32_t) bc_steal_cursor;
  if (atomic_load_explicit(&bc_count[cls], memory_order_relaxed) == 0) return NULL;
  uint32_t start = atomic_fetch_add_explicit(&bc_steal_cursor, 1, memory_order_relaxed);
  for (uint32_t r = 0; r < BC_SITES; r++) {
    size_t row = (start + r) % BC_SITES;
    hak_huge_t* h = row != own ? bc_take(bc_slots[row][cls], cls, slots) : NULL;
    if (h != NULL) return h;
  }
  return NULL;
}

/* A cached block of class cls (or a larger one up to twice its size) for
 * this site (or, failing that, another site's), or NULL (a miss). */
hak_huge_t* _hak_bigcache_get(const void* site, int cls) {
  int slots = (int)hak_option(HAK_OPT_BIGCACHE_SLOTS);
  size_t own = bc_row((uintptr_t)site);
  hak_huge_t* h = bc_take(bc_slots[own][cls], cls, slots);
#ifndef HAK_FAULT_BIGCACHE_OWN_ROW_ONLY /* fault injection: no fallback to other sites */
  if (h == NULL) {
    h = bc_steal(own, cls, slots);
    if (h != NULL) hak_atomic_add(st_other_site, 1);
  }
#endif
#ifndef HAK_FAULT_BIGCACHE_EXACT_CLASS /* fault injection: no larger class */
  for (int c = cls + 1; h == NULL && c < BC_CLASSES && bc_class_size[c] <= 2 * bc_class_size[cls]; c++) {
    h = bc_take(bc_slots[own][c], c, slots);
    if (h == NULL) h = bc_steal(own, c, slots);
    if (h != NULL) hak_atomic_add(st_larger, 1);
  }
#endif
  if (h == NULL) {
    hak_atomic_add(st_misses, 1);
    return NULL;
  }
  hak_atomic_add(st_hits, 1);
  return h;
}

/* For a request no cached block fits, a block whose pages huge.c moves
 * into the new one (any site's, classes from 2 MiB: their blocks start
 * page aligned): the largest whose class is at most need bytes (used
 * whole), else the smallest larger one (huge.c takes only what it needs
 * and caches the rest again); NULL if none. */
hak_huge_t* _hak_bigcache_get_donor(size_t need) {
  int slots = (int)hak_option(HAK_OPT_BIGCACHE_SLOTS);
  if (atomic_load_explicit(&bc_bytes, memory_order_relaxed) == 0) return NULL;
  hak_huge_t* h = need > bc_class_size[BC_CLASSES - 1] ? bc_steal(BC_SITES, BC_PAST, slots) : NULL;
  for (int c = BC_CLASSES - 1; h == NULL && c >= 0 && bc_class_size[c] >= (2u << 20); c--)
    if (bc_class_size[c] <= need) h = bc_steal(BC_SITES, c, slots);
#ifndef HAK_FAULT_GATHER_NO_SPLIT /* fault injection: a larger block gives no part of its pages */
  for (int c = 0; h == NULL && c < BC_ROWS; c++)
    if (c == BC_PAST || (bc_class_size[c] >= (2u << 20) && bc_class_size[c] > need)) h = bc_steal(BC_SITES, c, slots);
#endif
  return h;
}

/* Keeps a freed block (state FREED, cls >= 0, site = the row's site);
 * false if it did not fit and must go to the batch queue (counted as an
 * eviction). */
bool _hak_bigcache_put(hak_huge_t* h, bool freed) {
  uint64_t now = _hak_os->now_ns();
  uintptr_t v = h->base | now_ms(now);
  int cls = h->cls >= 0 ? h->cls : BC_PAST;
  hak_atomic_add(st_puts, 1);
  _Atomic(uintptr_t)* row = bc_slots[bc_row(h->site)][cls];
  int slots = (int)hak_option(HAK_OPT_BIGCACHE_SLOTS);
  if ((atomic_fetch_add(&bc_put_count, 1) & 15) == 0) bc_sweep_some(now);
  bc_expire_row(row, cls, now);
  /* a put of a gather's donor (freed: false) is no free of the program's */
  uint64_t last = freed ? atomic_exchange_explicit(&bc_free_ns, now, memory_order_relaxed)
                        : atomic_load_explicit(&bc_free_ns, memory_order_relaxed);
  uint64_t budget = bc_budget(bc_busy(now, last));
  uint64_t w = bc_weight(h);
  /* least recently cached out first: a newer block is likelier to be asked
   * for again (and a big one saves more faults than the small ones it
   * displaces) */
#ifndef HAK_FAULT_BIGCACHE_REJECT_NEW /* fault injection: the newcomer is evicted instead */
  for (int i = 0; i < 16 && slots != 0 && w <= budget && atomic_load(&bc_bytes) + w > budget; i++)
    if (!bc_evict_oldest(now)) break;
#endif
  if (slots == 0 || atomic_fetch_add(&bc_bytes, w) + w > budget) {
    if (slots != 0) atomic_fetch_sub(&bc_bytes, w);
    hak_atomic_add(st_evictions, 1);
    return false;
  }
  /* counted before the slot, as the bytes: a taker's decrement comes after
   * the block is in a slot, so the count is never below the blocks in the
   * slots (after the slot, a take in between made it -1: a fork cutting
   * the put there left the child's count wrapped; the new mt_test fork
   * test, 2-3 runs in 28).  A fork that cuts a put evicting from a full
   * row finds two blocks out of place: the child allows two a transit. */
  atomic_fetch_add_explicit(&bc_count[cls], 1, memory_order_relaxed);
  for (int attempt = 0; attempt < 2; attempt++) {
    for (int i = 0; i < slots; i++) {
      uintptr_t empty = 0;
      if (atomic_compare_exchange_strong(&row[i], &empty, v)) {
        hak_purge_global_due(); /* expiry runs from the purge tick too */
        return true;
      }
    }
    /* row full: evict its oldest block, then try again */
    int oldest = -1;
    uintptr_t oldest_age = 0;
    for (int i = 0; i < slots; i++) {
      uintptr_t o = atomic_load_explicit(&row[i], memory_order_acquire);
      uintptr_t age = (now_ms(now) - o) & TIME_MASK;
      if (o != 0 && (oldest < 0 || age > oldest_age)) oldest = i, oldest_age = age;
    }
    if (oldest >= 0) {
      uintptr_t o = atomic_load_explicit(&row[oldest], memory_order_acquire);
      if (o != 0 && atomic_compare_exchange_strong(&row[oldest], &o, 0)) bc_evict(o, cls);
    }
  }
  atomic_fetch_sub_explicit(&bc_count[cls], 1, memory_order_relaxed);
  atomic_fetch_sub(&bc_bytes, w);
  hak_atomic_add(st_evictions, 1);
  return false;
}

/* Every row's expiry (purge.c's tick: blocks expire even when no huge call
 * comes); true if blocks are still cached. */
bool _hak_bigcache_expire(uint64_t now) {
  bool busy = bc_busy(now, atomic_load_explicit(&bc_free_ns, memory_order_relaxed));
  uint64_t w = atomic_load_explicit(&bc_window_ns, memory_order_relaxed);
  uint64_t window_ns = (uint64_t)hak_option(HAK_OPT_BIGCACHE_EXPIRY_MS) * 1000000u;
  if (!busy) {
#ifndef HAK_FAULT_PEAK_NEVER_SETTLES /* fault injection: an idle spell keeps the peak */
    _hak_huge_live_roll(true);
#endif
    atomic_store_explicit(&bc_window_ns, now, memory_order_relaxed);
  } else if ((int64_t)(now - w) >= (int64_t)window_ns &&
             atomic_compare_exchange_strong_explicit(&bc_window_ns, &w, now, memory_order_relaxed, memory_order_relaxed)) {
#ifndef HAK_FAULT_PEAK_NEVER_ROLLS /* fault injection: one window forever (the first version) */
    _hak_huge_live_roll(false);
#endif
  }
  if (atomic_load_explicit(&bc_bytes, memory_order_relaxed) == 0) return false;
  unsigned held = bc_classes_held();
  for (int s = 0; s < BC_SITES; s++)
    for (unsigned m = held; m != 0; m &= m - 1) {
      int c = __builtin_ctz(m);
      bc_expire_row(bc_slots[s][c], c, now);
    }
  /* past the budget (the peak's share of it settled): the oldest go */
  uint64_t budget = bc_budget(busy);
  for (int i = 0; i < BC_SITES && atomic_load_explicit(&bc_bytes, memory_order_relaxed) > budget; i++)
    if (!bc_evict_oldest(now)) break;
  return atomic_load_explicit(&bc_bytes, memory_order_relaxed) != 0;
}

/* Evicts everything (hak_collect). */
void _hak_bigcache_drain(void) {
  for (int s = 0; s < BC_SITES; s++)
    for (int c = 0; c < BC_ROWS; c++)
      for (int i = 0; i < BC_SLOTS_MAX; i++) {
        uintptr_t v = atomic_exchange(&bc_slots[s][c][i], 0);
        if (v != 0) bc_evict(v, c);
      }
}

/* Checker: every cached block is a freed huge block of its slot's class,
 * in one slot only and not also in the batch queue; the byte count is the
 * sum of the slots'.  (Call when quiescent.) */
static uintptr_t check_bases[BC_SITES * BC_ROWS * BC_SLOTS_MAX]; /* checker scratch, not stack */

size_t _hak_bigcache_check(size_t* cached) {
  size_t bad = 0, n = 0;
  uint64_t bytes = 0;
  uint32_t per_class[BC_ROWS] = {0};
  for (int s = 0; s < BC_SITES; s++)
    for (int c = 0; c < BC_ROWS; c++)
      for (int i = 0; i < BC_SLOTS_MAX; i++) {
        uintptr_t v = atomic_load(&bc_slots[s][c][i]);
        if (v == 0) continue;
        per_class[c]++;
        hak_huge_t* h = slot_header(v, c);
        if (h->magic != HAK_HUGE_MAGIC || h->cls != (c == BC_PAST ? -1 : c) || atomic_load(&h->state) != HAK_HUGE_FREED) {
          bad++;
          continue;
        }
        bytes += bc_weight(h);
        if (_hak_madvq_holds(h->base, NULL)) bad++; /* cached and queued */
        check_bases[n++] = h->base;
      }
  /* the same block in two slots: sort (shell sort, no allocation) */
  for (size_t gap = n / 2; gap > 0; gap /= 2)
    for (size_t i = gap; i < n; i++)
      for (size_t j = i; j >= gap && check_bases[j - gap] > check_bases[j]; j -= gap) {
        uintptr_t t = check_bases[j];
        check_bases[j] = check_bases[j - gap];
        check_bases[j - gap] = t;
      }
  for (size_t i = 1; i < n; i++) bad += check_bases[i] == check_bases[i - 1];
  /* the counts, but for blocks a thread had between a slot and them when
   * a fork came and it did not wait (internal.h, _hak_fork_transits) */
  size_t slack = _hak_fork_transits;
  uint64_t counted = atomic_load(&bc_bytes); /* reserved before the slot: never less */
  if (bytes > counted || (bytes != counted && slack == 0)) bad++;
  for (int c = 0; c < BC_ROWS; c++) { /* never fewer than cached (_hak_bigcache_put) */
    uint32_t want = atomic_load(&bc_count[c]);
    bad += per_class[c] > want || want > per_class[c] + slack;
  }
  *cached = n;
  return bad;
}

void _hak_bigcache_stats(hak_stats_t* st) {
  st->bigcache_hits = atomic_load(&st_hits);
  st->bigcache_other_site = atomic_load(&st_other_site);
  st->bigcache_larger = atomic_load(&st_larger);
  st->bigcache_misses = atomic_load(&st_misses);
  st->bigcache_puts = atomic_load(&st_puts);
  st->bigcache_evictions = atomic_load(&st_evictions);
  st->bigcache_expired = atomic_load(&st_expired);
  st->bigcache_bytes = atomic_load(&bc_bytes);
}
