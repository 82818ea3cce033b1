/* Size classes: the lookup table agrees with the formula; every size maps
 * to the smallest class that holds it; classes are 16-byte multiples,
 * increasing, waste at most 25 %; pages hold at least 8 blocks; aligned
 * bins are aligned. */
#include "src/internal.h"
#include "src/test/test.h"

TEST(lookup_table_matches_formula) {
  for (size_t s = 0; s <= HAK_SMALL_FAST_MAX; s++)
    if (_hak_bin_lut[(s + 15) / 16] != _hak_bin_of(s)) HAK_FAIL_AT("size %zu: lut %d, formula %zu", s, _hak_bin_lut[(s + 15) / 16], _hak_bin_of(s));
}

TEST(every_size_gets_the_smallest_class_that_fits) {
  for (size_t s = 1; s <= HAK_SMALL_MAX; s++) {
    size_t b = _hak_bin_of(s);
    ASSERT_TRUE(b < HAK_BINS);
    if (_hak_bin_size(b) < s) HAK_FAIL_AT("size %zu in bin %zu of %zu", s, b, _hak_bin_size(b));
    if (b > 0 && _hak_bin_size(b - 1) >= s) HAK_FAIL_AT("size %zu fits the smaller bin %zu", s, b - 1);
    if (s > 128 && (_hak_bin_size(b) - s) * 4 > s) HAK_FAIL_AT("size %zu wastes more than 25%%", s);
  }
  EXPECT_EQ_U(_hak_bin_size(HAK_BINS - 1), HAK_SMALL_MAX);
}

TEST(classes_are_aligned_increasing_and_pages_hold_eight) {
  for (size_t b = 0; b < HAK_BINS; b++) {
    size_t bs = _hak_bin_size(b);
    EXPECT_EQ_U(bs % 16, 0);
    if (b > 0) EXPECT_TRUE(bs > _hak_bin_size(b - 1));
    size_t slices = _hak_bin_slices(b);
    EXPECT_TRUE(slices == 1 || slices == 4 || slices == 16);
    EXPECT_TRUE((slices << HAK_SLICE_SHIFT) / bs >= 8);
  }
}

/* The direct_sz slots of each bin (internal.h, hak_heap_set_direct) are
 * exactly the lookup table's. */
TEST(each_bins_size_slots_are_the_lookup_tables) {
  for (size_t i = 0; i <= HAK_SMALL_FAST_MAX / HAK_ALIGN; i++) {
    size_t b = _hak_bin_lut[i];
    EXPECT_TRUE(b <= HAK_BIN_FAST_LAST);
    EXPECT_TRUE(_hak_bin_slot[b] <= i && i < _hak_bin_slot[b + 1]);
  }
  EXPECT_EQ_U(_hak_bin_slot[0], 0);
  EXPECT_EQ_U(_hak_bin_slot[HAK_BIN_FAST_LAST + 1], HAK_SMALL_FAST_MAX / HAK_ALIGN + 1);
}

TEST(aligned_bins) {
  for (size_t align = 16; align <= HAK_SLICE_SIZE; align <<= 1)
    for (size_t s = 1; s <= HAK_SMALL_MAX; s = s * 3 / 2 + 1) {
      size_t b = _hak_bin_aligned(s, align);
      if (b == HAK_BINS) {
        EXPECT_TRUE(s > HAK_SMALL_MAX / 2 && align > 32768); /* only huge asks */
        continue;
      }
      EXPECT_TRUE(_hak_bin_size(b) >= s);
      EXPECT_EQ_U(_hak_bin_size(b) % align, 0);
    }
  EXPECT_EQ_U(_hak_bin_aligned(10, 2 * HAK_SLICE_SIZE), HAK_BINS);
  EXPECT_EQ_U(_hak_bin_aligned(HAK_SMALL_MAX + 1, 16), HAK_BINS);
}

TEST_MAIN()
