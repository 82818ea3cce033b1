/* Call sites: a fixed table keyed by return address.  Open addressing with
 * a bounded probe of 8 slots; when all 8 are taken, the coldest of them
 * (fewest allocations) is evicted.  Updated only on large and huge
 * allocations and on the small generic path (one sample per page refill),
 * never on the small fast path.  Counters are relaxed atomics: a site being
 * evicted while another thread counts into it loses a few counts, never
 * memory safety. */
#include <string.h>

#include "internal.h"

#define SITE_SLOTS 1024
#define SITE_PROBE 8

typedef struct site_s {
  _Atomic(uintptr_t) key;
  _Atomic(uint64_t) allocs, frees, bytes;
} site_t;

static site_t sites[SITE_SLOTS];
static _Atomic(uint64_t) site_samples;

static size_t site_hash(uintptr_t k) {
  k ^= k >> 17;
  k *= 0xed5ad4bbU;
  k ^= k >> 11;
  return (size_t)(k & (SITE_SLOTS - 1));
}

static site_t* site_find(uintptr_t key, bool insert) {
  size_t h = site_hash(key);
  site_t* coldest = NULL;
  for (size_t i = 0; i < SITE_PROBE; i++) {
    site_t* s = &sites[(h + i) & (SITE_SLOTS - 1)];
    uintptr_t k = atomic_load_explicit(&s->key, memory_order_relaxed);
    if (k == key) return s;
    if (!insert) continue;
    if (k == 0) {
      if (atomic_compare_exchange_strong(&s->key, &k, key)) return s;
      if (k == key) return s;
    }
    if (coldest == NULL || atomic_load_explicit(&s->allocs, memory_order_relaxed) <
                               atomic_load_explicit(&coldest->allocs, memory_order_relaxed))
      coldest = s;
  }
  if (!insert || coldest == NULL) return NULL;
  uintptr_t old = atomic_load_explicit(&coldest->key, memory_order_relaxed);
  if (!atomic_compare_exchange_strong(&coldest->key, &old, key)) return NULL;
  atomic_store_explicit(&coldest->allocs, 0, memory_order_relaxed);
  atomic_store_explicit(&coldest->frees, 0, memory_order_relaxed);
  atomic_store_explicit(&coldest->bytes, 0, memory_order_relaxed);
  return coldest;
}

void _hak_site_alloc(const void* site, size_t size) {
  if (site == NULL) return;
  site_t* s = site_find((uintptr_t)site, true);
  hak_atomic_add(site_samples, 1);
  if (s == NULL) return;
  hak_atomic_add(s->allocs, 1);
  hak_atomic_add(s->bytes, size);
}

void _hak_site_free(const void* site) {
  if (site == NULL) return;
  site_t* s = site_find((uintptr_t)site, false);
  if (s != NULL) hak_atomic_add(s->frees, 1);
}

void _hak_site_stats(hak_stats_t* st) {
  uint64_t n = 0;
  for (size_t i = 0; i < SITE_SLOTS; i++) n += atomic_load_explicit(&sites[i].key, memory_order_relaxed) != 0;
  st->sites_tracked = n;
  st->sites_sampled = atomic_load(&site_samples);
}

void _hak_site_reset(void) {
  for (size_t i = 0; i < SITE_SLOTS; i++) {
    atomic_store(&sites[i].key, 0);
    atomic_store(&sites[i].allocs, 0);
    atomic_store(&sites[i].frees, 0);
    atomic_store(&sites[i].bytes, 0);
  }
}

size_t hak_sites_get(hak_site_info_t* out, size_t max) {
  size_t n = 0;
  for (size_t i = 0; i < SITE_SLOTS; i++) {
    uintptr_t k = atomic_load_explicit(&sites[i].key, memory_order_relaxed);
    if (k == 0) continue;
    hak_site_info_t info = {(const void*)k, atomic_load(&sites[i].allocs), atomic_load(&sites[i].frees),
                            atomic_load(&sites[i].bytes)};
    /* insertion into the top-max list, most allocations first */
    size_t j = n < max ? n++ : max;
    while (j > 0 && out[j - 1].allocs < info.allocs) {
      if (j < max) out[j] = out[j - 1];
      j--;
    }
    if (j < max) out[j] = info;
  }
  return n;
}
