/* api_mt_fuzzer: the api_fuzzer's ops over 2-4 threads in rounds (workers
 * that live for the whole input, each round started at a barrier), blocks
 * handed from thread to thread between rounds (cross-thread frees and
 * reallocs), checked by the shadow heap and hak_check_heap() between
 * rounds.  The first byte: 2 + byte % 3 threads; 0x80 runs the input in
 * evolving mode (the per-site policy learns while threads race; a dumped
 * trace replays so with HAKMEM_MODE=evolving); 0x40 ends it by reading
 * everything hakmem reports (statistics text or, with 0x20, JSON, the
 * per-site table, mallinfo-style heap info, malloc_trim); 0x10 sets the
 * purge delay to 0, so idle free memory is decommitted at almost every
 * slow path while the threads race (a purge that touched a live block
 * would zero it: the shadow heap checks every block's contents). */
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include "fuzz/decode.h"
#include "src/internal.h"

static void read_reports(int json) {
  static int devnull = -1;
  if (devnull < 0) devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
  hak_stats_print(devnull, json);
  static hak_site_info_t sites[64];
  if (hak_sites_get(sites, 64) > 64) abort();
  hak_heapinfo_t hi;
  _hak_heapinfo(&hi);
  (void)_hak_trim();
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  int threads = 2 + data[0] % 3;
  int mode = hak_option(HAK_OPT_MODE);
  long delay = hak_option(HAK_OPT_PURGE_DELAY_MS);
  size_t fast_limit = _hak_fast_limit;
  if (data[0] & 0x80) { /* evolving, as HAKMEM_MODE=evolving sets it up */
    _hak_options[HAK_OPT_MODE] = 1;
    _hak_fast_limit = (64u << 10) - 1;
  }
  if (data[0] & 0x10) _hak_options[HAK_OPT_PURGE_DELAY_MS] = 0;
  trace_t t;
  trace_init(&t, threads);
  decode_ops(data + 1, size - 1, threads, 2000, &t);
  trace_dump_if_asked(&t);
  if (!trace_run(&t, 0x5eed)) abort();
  trace_free(&t);
  if (data[0] & 0x40) read_reports(data[0] & 0x20);
  _hak_options[HAK_OPT_MODE] = mode;
  _hak_fast_limit = fast_limit;
  _hak_options[HAK_OPT_PURGE_DELAY_MS] = delay;
  return 0;
}
