/* bigcache_fuzzer: huge allocations and frees from a few sites and size
 * classes on a fake clock, with a tiny budget and few slots so that hits,
 * evictions, expiry and collects interleave.  Checked against a model: a
 * hit returns a block freed earlier (by any site) in the request's class,
 * or, counted as a larger-class hit, in a class at most twice its size,
 * and not handed out since; no block is live twice; contents of live blocks
 * survive; BigCache never exceeds its budget (the option, or, for a burst of
 * frees, the live blocks' peak less what was live at the last free, at most
 * twice the option: bigcache.c); releases and page moves
 * (a miss gathering cached blocks' pages) never touch live memory (fake
 * OS); hak_check_heap() holds. */
#include "fuzz/huge_os.h"

/* all 8 of BigCache's classes, and sizes past them (cached only for their
 * pages: never a hit, but gathered into misses) */
static const size_t class_size[] = {512u << 10, 1u << 20, 2u << 20, 3u << 20, 4u << 20,
                                    6u << 20,   8u << 20, 16u << 20, 24u << 20};

/* freed-and-cacheable blocks per (site, class): candidates for a hit */
#define SITES 4
#define CLASSES 9
#define FREED_MAX 64
static char* freed[SITES][CLASSES][FREED_MAX];
static int nfreed[SITES][CLASSES];

static int freed_take(int s, int c, char* p) {
  for (int i = 0; i < nfreed[s][c]; i++)
    if (freed[s][c][i] == p) {
      freed[s][c][i] = freed[s][c][--nfreed[s][c]];
      return 1;
    }
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fz_install();
  _hak_options[HAK_OPT_BIGCACHE_BYTES] = 24 << 20;
  _hak_options[HAK_OPT_BIGCACHE_SLOTS] = 2;
  _hak_options[HAK_OPT_BIGCACHE_EXPIRY_MS] = 50;
  memset(nfreed, 0, sizeof(nfreed));
  int cls[LIVE_MAX];
  /* the most a put may have let the cache hold: the option, or the live
   * peak less what is live after the free (huge.c's counts: sanitizer
   * builds report the requested size as usable), at most twice the option */
  uint64_t live = 0, peak = 0, allowed = 24u << 20;
  for (size_t i = 0; i + 1 < size; i += 2) {
    uint8_t op = data[i], arg = data[i + 1];
    int k = arg % LIVE_MAX;
    switch (op % 5) {
      case 0:
      case 1: { /* alloc */
        if (fz_live[k].p) break;
        int s = (op >> 3) % SITES, c = (arg >> 2) % CLASSES;
        const void* site = (const void*)(uintptr_t)(0x1000 + s * 64);
        /* at or below a class size, or just above the one below (the
         * request belongs to class c either way) */
        size_t n = (op & 4) && c > 0 ? class_size[c - 1] + 1 + (arg & 3) * 4096 : class_size[c] - (arg & 3) * 4096;
        hak_stats_t a, b;
        hak_stats_get(&a);
        char* p = hak_alloc_at(n, site);
        hak_stats_get(&b);
        if (p == NULL) abort();
        if (hak_usable_size(p) < n) abort(); /* a block of a lower class */
        for (int j = 0; j < LIVE_MAX; j++)
          if (fz_live[j].p == p) abort(); /* handed out twice */
        int hit = b.bigcache_hits != a.bigcache_hits;
        int larger = b.bigcache_larger != a.bigcache_larger;
        int found = -1; /* rows are site buckets: any site of the class */
        for (int c2 = c; c2 < CLASSES && found < 0 && class_size[c2] <= 2 * class_size[c]; c2++)
          for (int s2 = 0; s2 < SITES && found < 0; s2++)
            if (freed_take(s2, c2, p)) found = c2;
        if (hit && (found < 0 || (found > c) != larger)) {
          fprintf(stderr, "fuzz: BigCache hit %p (larger: %d) was not freed in class %d or one up to 2x (site %d)\n",
                  (void*)p, larger, c, s);
          abort();
        }
        if (larger && !hit) abort();
        /* a block taken from the model some other way (miss that reused a
         * queued mapping) must not remain a hit candidate anywhere */
        for (int s2 = 0; s2 < SITES; s2++)
          for (int c2 = 0; c2 < CLASSES; c2++) freed_take(s2, c2, p);
        if (hit) c = found; /* it goes back to its own class when freed */
        fz_live[k] = (live_t){p, n, site};
        cls[k] = c;

        fz_touch(p, n, (char)k);
        break;
      }
      case 2: { /* free */
        if (!fz_live[k].p) break;
        if (!fz_intact(fz_live[k].p, fz_live[k].size, (char)k)) abort();
        char* p = fz_live[k].p;
        int s = (int)(((uintptr_t)fz_live[k].site - 0x1000) / 64);
        fz_live[k].p = NULL;
        peak = _hak_huge_live_peak(&live);
        hak_free_at(p, fz_live[k].site);
        _hak_huge_live_peak(&live);
        if (peak > live && peak - live > allowed) allowed = peak - live < 48u << 20 ? peak - live : 48u << 20;
        if (nfreed[s][cls[k]] < FREED_MAX) freed[s][cls[k]][nfreed[s][cls[k]]++] = p;
        break;
      }
      case 3: /* time passes */
        fz_now += (uint64_t)(arg % 128) * 1000000u;
        break;
      default: /* collect: everything cached is released */
        if (arg % 8 == 0) {
          hak_collect();
          memset(nfreed, 0, sizeof(nfreed));
        }
        break;
    }
    hak_stats_t st;
    hak_stats_get(&st);
    if (st.bigcache_bytes > allowed) {
      fprintf(stderr, "fuzz: BigCache holds %llu bytes, past its budget %llu (live %llu, peak %llu)\n",
              (unsigned long long)st.bigcache_bytes, (unsigned long long)allowed, (unsigned long long)live,
              (unsigned long long)peak);
      abort();
    }
  }
  if (hak_check_heap() != 0) abort();
  for (int k = 0; k < LIVE_MAX; k++)
    if (fz_live[k].p) {
      if (!fz_intact(fz_live[k].p, fz_live[k].size, (char)k)) abort();
      char* p = fz_live[k].p;
      fz_live[k].p = NULL;
      hak_free_at(p, fz_live[k].site);
    }
  hak_collect();
  return 0;
}
