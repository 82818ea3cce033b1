/* options_fuzzer: arbitrary strings as HAKMEM_* values.  Every option ends
 * within its bounds (or at its default), a bad value is reported and never
 * crashes the parser, and the allocator keeps working after the re-read. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "src/internal.h"

static const char* const names[] = {"HAKMEM_ON_ERROR", "HAKMEM_STATS", "HAKMEM_SEGMENT_CACHE",
                                    "HAKMEM_HUGE_THRESHOLD", "HAKMEM_THP", "HAKMEM_BIGCACHE_BYTES",
                                    "HAKMEM_BIGCACHE_SLOTS", "HAKMEM_BATCH_RANGES", "HAKMEM_MODE", "HAKMEM_SEED"};

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static int quiet = -1;
  if (quiet < 0) { /* warnings go nowhere: the fuzzer prints them by the million */
    quiet = dup(2);
  }
  char value[128];
  size_t n = size < sizeof(value) - 1 ? size : sizeof(value) - 1;
  memcpy(value, data, n);
  value[n] = 0;
  const char* name = names[size ? data[0] % (sizeof(names) / sizeof(names[0])) : 0];
  setenv(name, size ? value + 1 : value, 1);
  _hak_options_reload();
  unsetenv(name);
  if (hak_option(HAK_OPT_ON_ERROR) < 0 || hak_option(HAK_OPT_ON_ERROR) > 1) abort();
  if (hak_option(HAK_OPT_STATS) < 0 || hak_option(HAK_OPT_STATS) > 2) abort();
  if (hak_option(HAK_OPT_SEGMENT_CACHE) < 0 || hak_option(HAK_OPT_SEGMENT_CACHE) > 1024) abort();
  if (hak_option(HAK_OPT_HUGE_THRESHOLD) < (256 << 10) || hak_option(HAK_OPT_HUGE_THRESHOLD) > (256L << 20)) abort();
  if (hak_option(HAK_OPT_BIGCACHE_SLOTS) < 0 || hak_option(HAK_OPT_BIGCACHE_SLOTS) > 8) abort();
  if (hak_option(HAK_OPT_BATCH_RANGES) < 1 || hak_option(HAK_OPT_BATCH_RANGES) > 256) abort();
  if (hak_option(HAK_OPT_MODE) < 0 || hak_option(HAK_OPT_MODE) > 1) abort();
  /* the allocator still works under whatever was accepted */
  _hak_options[HAK_OPT_ON_ERROR] = 0;
  void* p = hak_malloc(300 << 10);
  void* q = hak_malloc(3 << 20);
  if (p == NULL || q == NULL) abort();
  hak_free(p);
  hak_free(q);
  _hak_options_reload(); /* back to the defaults */
  return 0;
}
