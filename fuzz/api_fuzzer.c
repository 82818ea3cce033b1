/* api_fuzzer: bytes decoded into alloc/calloc/memalign/realloc/free
 * sequences over every tier, one thread, checked by the shadow heap and by
 * hak_check_heap().  Builds as a libFuzzer target (--config=libfuzzer), as
 * an AFL++ persistent target (fuzz/afl.sh) and, with replay_main.c, as the
 * corpus replayer that bazel test runs.  HAKMEM_TRACE_OUT=FILE dumps the
 * input as a trace for verify:replay. */
#include <stdlib.h>

#include "fuzz/decode.h"

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  trace_t t;
  trace_init(&t, 1);
  decode_ops(data, size, 1, 4000, &t);
  trace_dump_if_asked(&t);
  if (!trace_run(&t, 0x5eed)) abort();
  trace_free(&t);
  return 0;
}
