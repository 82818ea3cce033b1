/* Size classes: 16-byte steps up to 128 B, then four classes per doubling
 * up to 128 KiB (worst-case internal waste 25 %, typical 12 %).
 *   bins 0..7    16, 32, ..., 128
 *   bin 8+4k+j   2^(7+k) + (j+1) * 2^(5+k)        k = 0..9, j = 0..3
 * Pages hold at least 8 blocks: 1 slice (64 KiB) for blocks <= 8 KiB,
 * 4 slices up to 32 KiB, 16 slices (1 MiB) up to 128 KiB.  (512 KiB pages
 * from 4 KiB refilled mid less, but a few blocks kept of a freed population
 * pinned 512 KiB each: review R's sparse.c, 134 MiB peak against 83; the
 * refill's rule for pages of few blocks does it instead: page.c.) */
#include "internal.h"

_Static_assert(HAK_BINS == 8 + 4 * 10, "bin count");
_Static_assert(HAK_BIN_FAST_LAST == 8 + 4 * 2 + 3, "the bin of 1 KiB (internal.h)");

size_t _hak_bin_size(size_t bin) {
  if (bin < 8) return (bin + 1) * 16;
  size_t k = (bin - 8) / 4, j = (bin - 8) % 4;
  return ((size_t)1 << (7 + k)) + (j + 1) * ((size_t)1 << (5 + k));
}

size_t _hak_bin_of(size_t size) {
  if (size <= 128) return size == 0 ? 0 : (size - 1) / 16;
  size_t s = size - 1;
  size_t b = 63 - (size_t)__builtin_clzll(s); /* 2^b <= s < 2^(b+1), b >= 7 */
  return 8 + (b - 7) * 4 + ((s >> (b - 2)) & 3);
}

size_t _hak_bin_slices(size_t bin) {
  size_t bs = _hak_bin_size(bin);
  return bs <= 8192 ? 1 : bs <= 32768 ? 4 : 16;
}

/* The smallest bin whose blocks are >= size and all aligned to align (page
 * starts are slice aligned, so a block size that is a multiple of align
 * keeps every block aligned).  HAK_BINS when no bin fits. */
size_t _hak_bin_aligned(size_t size, size_t align) {
  if (size > HAK_SMALL_MAX || align > HAK_SLICE_SIZE) return HAK_BINS;
  for (size_t bin = _hak_bin_of(size < align ? align : size); bin < HAK_BINS; bin++)
    if ((_hak_bin_size(bin) & (align - 1)) == 0) return bin;
  return HAK_BINS;
}

/* The direct_sz slots of each bin up to 1 KiB (internal.h): the slots i
 * with _hak_bin_lut[i] == b are [_hak_bin_slot[b], _hak_bin_slot[b + 1]). */
const uint8_t _hak_bin_slot[HAK_BIN_FAST_LAST + 2] = {0,  2,  3,  4,  5,  6,  7,  8,  9,  11, 13,
                                                      15, 17, 21, 25, 29, 33, 41, 49, 57, 65};

/* _hak_bin_lut[(size + 15) / 16] == _hak_bin_of(size) for size <= 1 KiB. */
#define L4(a, b, c, d) a, b, c, d
const uint8_t _hak_bin_lut[HAK_SMALL_FAST_MAX / HAK_ALIGN + 1] = {
    0, 0, 1, 2, 3, 4, 5, 6, 7,                   /* 0..128 B   */
    L4(8, 8, 9, 9), L4(10, 10, 11, 11),          /* ..256      */
    L4(12, 12, 12, 12), L4(13, 13, 13, 13),      /* ..384      */
    L4(14, 14, 14, 14), L4(15, 15, 15, 15),      /* ..512      */
    L4(16, 16, 16, 16), L4(16, 16, 16, 16),      /* ..640      */
    L4(17, 17, 17, 17), L4(17, 17, 17, 17),      /* ..768      */
    L4(18, 18, 18, 18), L4(18, 18, 18, 18),      /* ..896      */
    L4(19, 19, 19, 19), L4(19, 19, 19, 19),      /* ..1024     */
};
