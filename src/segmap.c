/* The segment map: one byte per 4 MiB chunk of the user address space
 * (64 MiB of zero-filled BSS for 48 bits; only touched pages become
 * resident).
 * Any pointer's owner is found with one load and never by reading memory
 * that may not be mapped.  Values are described in types.h. */
#include "internal.h"

_Atomic(uint8_t) _hak_segmap[HAK_SEGMAP_ENTRIES];
/* registered segments and huge mappings (head chunks): the checker
 * compares them with what the segment cache, heaps and huge tier hold */
static _Atomic(size_t) map_segments, map_huge;
/* the entries ever set lie in [map_lo, map_hi]: the checker walks only those */
static _Atomic(size_t) map_lo = HAK_SEGMAP_ENTRIES, map_hi;

size_t _hak_segmap_count(bool huge) { return atomic_load(huge ? &map_huge : &map_segments); }

void _hak_segmap_range(size_t* lo, size_t* hi) {
  *lo = atomic_load(&map_lo);
  *hi = atomic_load(&map_hi);
}

static void widen(size_t first, size_t last) {
  size_t v = atomic_load_explicit(&map_lo, memory_order_relaxed);
  while (first < v && !atomic_compare_exchange_weak(&map_lo, &v, first)) {
  }
  v = atomic_load_explicit(&map_hi, memory_order_relaxed);
  while (last > v && !atomic_compare_exchange_weak(&map_hi, &v, last)) {
  }
}

/* Marks [base, base+size) as hakmem's.  base is 4 MiB aligned. */
void _hak_segmap_set(uintptr_t base, size_t size, bool huge) {
  size_t first = base >> HAK_SEGMENT_SHIFT;
  hak_atomic_add(*(huge ? &map_huge : &map_segments), 1);
  size_t n = (size + HAK_SEGMENT_MASK) >> HAK_SEGMENT_SHIFT;
  if (first < HAK_SEGMAP_ENTRIES) widen(first, first + n - 1);
  for (size_t i = 0; i < n && first + i < HAK_SEGMAP_ENTRIES; i++) {
    uint8_t v = _hak_secure ? HAK_MAP_SECURE : HAK_MAP_SEGMENT;
    if (huge) v = (uint8_t)(i < HAK_MAP_HUGE_FAR - HAK_MAP_HUGE ? HAK_MAP_HUGE + i : HAK_MAP_HUGE_FAR);
    atomic_store_explicit(&_hak_segmap[first + i], v, memory_order_release);
  }
}

void _hak_segmap_clear(uintptr_t base, size_t size) {
  size_t first = base >> HAK_SEGMENT_SHIFT;
  uint8_t head = hak_segmap_get(base);
  if (hak_map_is_segment(head)) atomic_fetch_sub_explicit(&map_segments, 1, memory_order_relaxed);
  else if (head == HAK_MAP_HUGE) atomic_fetch_sub_explicit(&map_huge, 1, memory_order_relaxed);
  size_t n = (size + HAK_SEGMENT_MASK) >> HAK_SEGMENT_SHIFT;
#ifndef HAK_FAULT_SEGMENT_GONE_FORGOTTEN /* fault injection: an unmapped segment reads as never hakmem's */
  uint8_t v = hak_map_is_segment(head) ? HAK_MAP_GONE : HAK_MAP_NONE;
#else
  uint8_t v = HAK_MAP_NONE;
#endif
  for (size_t i = 0; i < n && first + i < HAK_SEGMAP_ENTRIES; i++)
    atomic_store_explicit(&_hak_segmap[first + i], v, memory_order_release);
}
