/* AFL++ persistent-mode driver for a harness's LLVMFuzzerTestOneInput
 * (built by fuzz/afl.sh with afl-clang-fast, shared-memory test cases).
 * Built with another compiler it reads one input from a file or stdin. */
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

#ifdef __AFL_FUZZ_TESTCASE_LEN
__AFL_FUZZ_INIT();
int main(void) {
  __AFL_INIT();
  unsigned char* buf = __AFL_FUZZ_TESTCASE_BUF;
  while (__AFL_LOOP(10000)) LLVMFuzzerTestOneInput(buf, (size_t)__AFL_FUZZ_TESTCASE_LEN);
  return 0;
}
#else
int main(int argc, char** argv) {
  static uint8_t buf[1 << 20];
  FILE* f = argc > 1 ? fopen(argv[1], "rb") : stdin;
  if (f == NULL) return 2;
  size_t n = fread(buf, 1, sizeof(buf), f);
  LLVMFuzzerTestOneInput(buf, n);
  return 0;
}
#endif
