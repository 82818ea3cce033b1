/* Huge blocks: one direct mapping each, 4 MiB aligned and a multiple of
 * 4 MiB long (so no other mapping shares a chunk of the segment map), with
 * a checked header at the start of the mapping:
 *
 *   base                          base + offset                  base+map_size
 *   | hak_huge_t ... padding ... | user block (size bytes) ...  |
 *
 * offset is 64 for ordinary requests and the alignment for aligned ones.
 * The segment map marks every chunk with its distance to the head chunk,
 * so a pointer's header is found without reading unmapped memory.  Freed
 * mappings are remembered in a small ring so that a second free of an
 * unmapped block is reported as a double free. */
#include <string.h>

#include "internal.h"

#define HUGE_HEADER 64
#define RECENT 64

static _Atomic(uint64_t) huge_allocs, huge_frees;
static _Atomic(uintptr_t) recent[RECENT];
static _Atomic(size_t) recent_next;

_Static_assert(sizeof(hak_huge_t) <= HUGE_HEADER, "huge header");

static uint64_t huge_checksum(const hak_huge_t* h) {
  uint64_t x = h->magic ^ (h->map_size * 0x9e3779b97f4a7c15ULL) ^ (h->size << 1) ^ (h->offset << 7) ^
               (uint64_t)h->site ^ _hak_free_key;
  return x * 0xff51afd7ed558ccdULL;
}

void* _hak_huge_alloc(size_t size, size_t align, const void* site, bool* fresh) {
  size_t offset = align > HUGE_HEADER ? align : HUGE_HEADER;
  size_t map_align = align > HAK_SEGMENT_SIZE ? align : HAK_SEGMENT_SIZE;
  if (size > PTRDIFF_MAX - offset - HAK_SEGMENT_SIZE) return NULL;
  size_t map_size = (offset + size + HAK_SEGMENT_MASK) & ~(size_t)HAK_SEGMENT_MASK;
  uint8_t* base = _hak_os_alloc_aligned(map_size, map_align);
  if (base == NULL) return NULL;
  hak_huge_t* h = (hak_huge_t*)base;
  h->magic = HAK_HUGE_MAGIC;
  h->map_size = map_size;
  h->size = map_size - offset;
  h->offset = offset;
  h->site = (uintptr_t)site;
  atomic_store_explicit(&h->state, HAK_HUGE_LIVE, memory_order_relaxed);
  h->checksum = huge_checksum(h);
  _hak_segmap_set((uintptr_t)base, map_size, true);
  hak_atomic_add(huge_allocs, 1);
  *fresh = true;
  return base + offset;
}

/* The header of a live or freed huge block p, or NULL if p is not the user
 * pointer of a huge block (interior, wild, misaligned). */
static hak_huge_t* huge_lookup(const void* p) {
  uintptr_t a = (uintptr_t)p;
  uint8_t m = hak_segmap_get(a);
  if (m < HAK_MAP_HUGE || m == HAK_MAP_HUGE_FAR) return NULL;
  uintptr_t head = ((a >> HAK_SEGMENT_SHIFT) - (uintptr_t)(m - HAK_MAP_HUGE)) << HAK_SEGMENT_SHIFT;
  hak_huge_t* h = (hak_huge_t*)head;
  if (h->magic != HAK_HUGE_MAGIC || h->checksum != huge_checksum(h) || head + h->offset != a) return NULL;
  return h;
}

hak_huge_t* _hak_huge_header(const void* p, hak_fn_t fn) {
  hak_huge_t* h = huge_lookup(p);
  if (h == NULL) {
    _hak_error(HAK_ERR_INVALID_FREE, fn, p);
    return NULL;
  }
  if (atomic_load_explicit(&h->state, memory_order_relaxed) != HAK_HUGE_LIVE) {
    _hak_error(fn == HAK_FN_USABLE_SIZE ? HAK_ERR_FREED_USABLE_SIZE : HAK_ERR_DOUBLE_FREE, fn, p);
    return NULL;
  }
  return h;
}

void _hak_huge_free(void* p, hak_fn_t fn, const void* site) {
  hak_huge_t* h = huge_lookup(p);
  if (h == NULL) {
    _hak_error(HAK_ERR_INVALID_FREE, fn, p);
    return;
  }
  if (atomic_exchange_explicit(&h->state, HAK_HUGE_FREED, memory_order_acq_rel) != HAK_HUGE_LIVE) {
    _hak_error(HAK_ERR_DOUBLE_FREE, fn, p);
    return;
  }
  _hak_site_free((const void*)h->site);
  size_t map_size = h->map_size;
  size_t slot = atomic_fetch_add_explicit(&recent_next, 1, memory_order_relaxed) % RECENT;
  atomic_store_explicit(&recent[slot], (uintptr_t)p, memory_order_relaxed);
  _hak_segmap_clear((uintptr_t)h, map_size);
  _hak_os_free(h, map_size);
  hak_atomic_add(huge_frees, 1);
}

bool _hak_huge_recently_freed(const void* p) {
  for (size_t i = 0; i < RECENT; i++)
    if (atomic_load_explicit(&recent[i], memory_order_relaxed) == (uintptr_t)p) return true;
  return false;
}

void _hak_huge_stats(hak_stats_t* st) {
  st->served_huge = atomic_load(&huge_allocs);
  st->freed_huge = atomic_load(&huge_frees);
}
