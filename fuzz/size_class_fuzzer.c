/* size_class_fuzzer: any size and alignment.  The class of a size is the
 * smallest that holds it, the lookup table agrees with the formula, an
 * aligned class is aligned and large enough, and an allocation of that
 * size and alignment through hakmem is usable and aligned. */
#include <stdlib.h>
#include <string.h>

#include "src/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  for (size_t i = 0; i + 4 <= size; i += 4) {
    size_t s = (size_t)(data[i] | data[i + 1] << 8 | (data[i + 2] & 1) << 16) % (HAK_SMALL_MAX + 1);
    size_t align = (size_t)1 << (data[i + 3] % 18);
    size_t bin = _hak_bin_of(s);
    if (bin >= HAK_BINS || _hak_bin_size(bin) < s) abort();
    if (bin > 0 && _hak_bin_size(bin - 1) >= s && s > 0) abort();
    if (s <= HAK_SMALL_FAST_MAX && _hak_bin_lut[(s + 15) / 16] != bin) abort();
    if (s > HAK_SMALL_FAST_MAX && hak_bin_of_mid(s) != bin) abort();
    size_t ab = _hak_bin_aligned(s, align);
    if (ab < HAK_BINS && (_hak_bin_size(ab) < s || _hak_bin_size(ab) % align != 0)) abort();
    char* p = hak_aligned_alloc(align, s);
    if (p == NULL || (uintptr_t)p % align != 0 || hak_usable_size(p) < s) abort();
    memset(p, 0x5a, s);
    hak_free(p);
  }
  return 0;
}
