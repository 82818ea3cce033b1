/* The shadow heap bites: overlap, changed contents, lost realloc prefix,
 * non-zero calloc, misalignment, short usable size, unexpected NULL; and
 * stays silent on correct use.  Blocks come from a plain array here, so
 * every fault can be planted by hand. */
#include "src/test/test.h"
#include "verify/shadow_heap.h"

static _Alignas(4096) unsigned char arena[1 << 16];

static size_t usable_small(const void* p) { return p == arena + 512 ? 8 : 1 << 12; }

TEST(correct_use_is_silent) {
  shadow_heap_t* s = shadow_create(1, NULL);
  ASSERT_TRUE(shadow_on_alloc(s, 1, arena, 100, 16, false, false));
  ASSERT_TRUE(shadow_on_alloc(s, 2, arena + 128, 100, 64, false, false));
  memset(arena + 4096, 0, 200);
  ASSERT_TRUE(shadow_on_alloc(s, 3, arena + 4096, 200, 4096, true, false));
  void* old;
  size_t old_size;
  ASSERT_TRUE(shadow_before_realloc(s, 1, &old, &old_size));
  memmove(arena + 8192, old, old_size); /* a correct realloc: move, keep prefix */
  ASSERT_TRUE(shadow_after_realloc(s, 1, old, old_size, arena + 8192, 300));
  EXPECT_TRUE(shadow_on_free(s, 2) == arena + 128);
  EXPECT_TRUE(shadow_check_all(s));
  EXPECT_EQ_U(shadow_live(s), 2);
  EXPECT_TRUE(shadow_on_alloc(s, 9, NULL, SIZE_MAX, 0, false, true)); /* refused impossible size */
  shadow_destroy(s);
}

TEST(overlap_is_caught) {
  shadow_heap_t* s = shadow_create(1, NULL);
  ASSERT_TRUE(shadow_on_alloc(s, 1, arena, 100, 16, false, false));
  EXPECT_TRUE(!shadow_on_alloc(s, 2, arena + 96, 32, 16, false, false));
  shadow_destroy(s);
}

TEST(changed_contents_are_caught_at_free) {
  shadow_heap_t* s = shadow_create(1, NULL);
  ASSERT_TRUE(shadow_on_alloc(s, 1, arena, 100, 16, false, false));
  arena[50] ^= 1;
  shadow_on_free(s, 1);
  EXPECT_TRUE(!shadow_ok(s));
  shadow_destroy(s);
}

TEST(lost_realloc_prefix_is_caught) {
  shadow_heap_t* s = shadow_create(1, NULL);
  ASSERT_TRUE(shadow_on_alloc(s, 1, arena, 100, 16, false, false));
  void* old;
  size_t old_size;
  ASSERT_TRUE(shadow_before_realloc(s, 1, &old, &old_size));
  memmove(arena + 8192, old, old_size - 1); /* one byte too few */
  arena[8192 + 99] = 0;
  arena[8192 + 99] ^= (unsigned char)~arena[99];
  EXPECT_TRUE(!shadow_after_realloc(s, 1, old, old_size, arena + 8192, 200));
  shadow_destroy(s);
}

TEST(non_zero_calloc_is_caught) {
  shadow_heap_t* s = shadow_create(1, NULL);
  memset(arena + 1024, 0, 64);
  arena[1024 + 63] = 1;
  EXPECT_TRUE(!shadow_on_alloc(s, 1, arena + 1024, 64, 16, true, false));
  shadow_destroy(s);
}

TEST(misalignment_short_usable_and_null_are_caught) {
  shadow_heap_t* s = shadow_create(1, NULL);
  EXPECT_TRUE(!shadow_on_alloc(s, 1, arena + 16, 10, 64, false, false));
  shadow_destroy(s);
  s = shadow_create(1, usable_small);
  EXPECT_TRUE(!shadow_on_alloc(s, 1, arena + 512, 10, 16, false, false));
  shadow_destroy(s);
  s = shadow_create(1, NULL);
  EXPECT_TRUE(!shadow_on_alloc(s, 1, NULL, 10, 16, false, false));
  shadow_destroy(s);
}

TEST_MAIN()
