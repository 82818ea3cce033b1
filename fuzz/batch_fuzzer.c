/* batch_fuzzer: huge blocks released through the batch queue with small
 * thresholds, a deadline on a fake clock, retained-budget munmaps, reuse
 * of queued and retained mappings, and collects.  Checked: no madvise or
 * munmap ever covers a live block (fake OS), reused mappings hold the
 * block and are writable, the queue and retained ranges stay disjoint
 * (checker), and the counters add up (every flush advises, munmaps never
 * exceed what was queued). */
#include "fuzz/huge_os.h"

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fz_install();
  _hak_options[HAK_OPT_BIGCACHE_BYTES] = 0; /* everything goes to the queue */
  _hak_options[HAK_OPT_BATCH_RANGES] = 1 + (size ? data[0] % 8 : 0);
  _hak_options[HAK_OPT_BATCH_BYTES] = (size > 1 ? data[1] % 32 : 8) << 20;
  _hak_options[HAK_OPT_BATCH_DEADLINE_MS] = 20;
  _hak_options[HAK_OPT_RETAIN_BYTES] = (size > 2 ? data[2] % 64 : 16) << 20;
  hak_stats_t a, b;
  hak_stats_get(&a);
  for (size_t i = 3; i + 1 < size; i += 2) {
    uint8_t op = data[i], arg = data[i + 1];
    int k = arg % LIVE_MAX;
    switch (op % 4) {
      case 0:
      case 1:
        if (!fz_live[k].p) {
          size_t n = ((size_t)1 + op % 12) << 19; /* 512 KiB .. 6 MiB */
          char* p = hak_alloc_at(n, (const void*)(uintptr_t)(0x2000 + (op & 0x30)));
          if (p == NULL) abort();
          fz_live[k] = (live_t){p, n, NULL};
          fz_touch(p, n, (char)k);
        }
        break;
      case 2:
        if (fz_live[k].p) {
          if (!fz_intact(fz_live[k].p, fz_live[k].size, (char)k)) abort();
          char* p = fz_live[k].p;
          fz_live[k].p = NULL;
          hak_free(p);
        }
        break;
      default:
        if (arg < 16) hak_collect();
        else fz_now += (uint64_t)(arg % 64) * 1000000u;
        break;
    }
    if (_hak_madvq_check() != 0) abort();
  }
  hak_stats_get(&b);
  if (b.batch_munmaps - a.batch_munmaps > b.batch_queued - a.batch_queued) abort(); /* each input starts collected */
  if (b.batch_flushes > a.batch_flushes && b.batch_madvise_calls == a.batch_madvise_calls) abort();
  if (hak_check_heap() != 0) abort();
  for (int k = 0; k < LIVE_MAX; k++)
    if (fz_live[k].p) {
      char* p = fz_live[k].p;
      fz_live[k].p = NULL;
      hak_free(p);
    }
  hak_collect();
  return 0;
}
