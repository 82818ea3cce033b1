/* api_mt_fuzzer: the api_fuzzer's ops over 2-4 threads in rounds, blocks
 * handed from thread to thread between rounds (cross-thread frees and
 * reallocs), checked by the shadow heap and hak_check_heap() between
 * rounds.  The first byte chooses the thread count. */
#include <stdlib.h>

#include "fuzz/decode.h"

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  int threads = 2 + data[0] % 3;
  trace_t t;
  trace_init(&t, threads);
  decode_ops(data + 1, size - 1, threads, 2000, &t);
  trace_dump_if_asked(&t);
  if (!trace_run(&t, 0x5eed)) abort();
  trace_free(&t);
  return 0;
}
