/* Segments, the segment map and the OS layer, white-box: slice runs are
 * carved first-fit and given back; the map marks exactly the owned chunks;
 * empty segments go to the cache or the OS; aligned OS allocation trims
 * correctly on a fake OS that returns misaligned mappings. */
#include <sys/mman.h>

#include "src/internal.h"
#include "src/test/test.h"

static void heap_init(hak_heap_t* h) {
  memset(h, 0, sizeof(*h));
  for (size_t i = 0; i < HAK_BINS; i++) h->direct[i] = &_hak_page_empty;
}

static int popcount(uint64_t x) { return __builtin_popcountll(x); }

TEST(slice_runs_and_invariants) {
  hak_heap_t heap;
  heap_init(&heap);
  hak_page_t* runs[8];
  size_t sizes[8] = {1, 4, 16, 2, 1, 30, 7, 3};
  for (int i = 0; i < 8; i++) {
    if (i == 5) {
      /* free the 16-slice run: a 10-slice request reuses its place */
      uint8_t* hole = runs[2]->start;
      _hak_segment_free_slices(&heap, runs[2], false);
      hak_page_t* again = _hak_segment_alloc_slices(&heap, 10, NULL);
      ASSERT_NOT_NULL(again);
      EXPECT_TRUE(again->start == hole);
      again->kind = HAK_SLICE_LARGE;
      runs[2] = again;
      sizes[2] = 10;
    }
    runs[i] = _hak_segment_alloc_slices(&heap, sizes[i], NULL);
    ASSERT_NOT_NULL(runs[i]);
    runs[i]->kind = HAK_SLICE_LARGE;
    EXPECT_EQ_U(runs[i]->slice_count, sizes[i]);
    EXPECT_EQ_U((uintptr_t)runs[i]->start % HAK_SLICE_SIZE, 0);
    /* every address of the run resolves to the head descriptor */
    for (size_t k = 0; k < sizes[i]; k++)
      EXPECT_TRUE(hak_page_of(runs[i]->start + k * HAK_SLICE_SIZE + 100) == runs[i]);
  }
  /* 1+4+10+2+1+30+7 = 55 fit the first segment; 3 more too */
  EXPECT_EQ_U(heap.segment_count, 1);
  hak_page_t* big = _hak_segment_alloc_slices(&heap, 40, NULL); /* needs a second */
  ASSERT_NOT_NULL(big);
  big->kind = HAK_SLICE_LARGE;
  EXPECT_EQ_U(heap.segment_count, 2);
  for (hak_segment_t* s = heap.segments; s; s = s->next) {
    EXPECT_EQ_U(s->magic, HAK_SEGMENT_MAGIC);
    EXPECT_EQ_U(s->free_mask & 1, 0);
    EXPECT_EQ_U((uint64_t)s->used_slices, (uint64_t)(63 - popcount(s->free_mask)));
    uint8_t want = _hak_secure ? HAK_MAP_SECURE : HAK_MAP_SEGMENT; /* the kind the fast free path tests */
    EXPECT_EQ_U(hak_segmap_get((uintptr_t)hak_segment_base(s)), want);
    EXPECT_EQ_U(hak_segmap_get((uintptr_t)hak_segment_base(s) + HAK_SEGMENT_SIZE - 1), want);
    for (int i = 1; i < 64; i++)
      EXPECT_EQ_U((s->free_mask >> i) & 1, s->slices[i].kind == HAK_SLICE_FREE);
  }
  hak_stats_t st;
  hak_stats_get(&st);
  uint64_t cached_before = st.segments_cached;
  for (int i = 0; i < 8; i++) _hak_segment_free_slices(&heap, runs[i], false);
  _hak_segment_free_slices(&heap, big, false);
  /* one empty segment stays with the heap, the other goes to the cache */
  EXPECT_EQ_U(heap.segment_count, 1);
  hak_stats_get(&st);
  EXPECT_EQ_U(st.segments_cached, cached_before + 1);
  _hak_segment_release(&heap, heap.segments);
  EXPECT_EQ_U(heap.segment_count, 0);
}

TEST(segmap_marks_huge_mappings_with_distance) {
  /* 20 MiB bypasses BigCache: offset 2 MiB, mapping 24 MiB = 6 chunks */
  uint64_t maps = atomic_load(&_hak_os_map_count);
  _hak_options[HAK_OPT_RETAIN_BYTES] = 64 << 20; /* retained when freed */
  uint8_t* p = hak_malloc(20 << 20);
  ASSERT_NOT_NULL(p);
  EXPECT_TRUE(atomic_load(&_hak_os_map_count) > maps); /* a fresh mapping */
  uintptr_t head = (uintptr_t)p & ~(uintptr_t)HAK_SEGMENT_MASK;
  EXPECT_EQ_U((uintptr_t)p - head, 2 << 20);
  for (int i = 0; i < 6; i++) EXPECT_EQ_U(hak_segmap_get(head + (uintptr_t)i * HAK_SEGMENT_SIZE), HAK_MAP_HUGE + i);
  EXPECT_TRUE(hak_segmap_get(head + 6 * HAK_SEGMENT_SIZE) != HAK_MAP_HUGE + 6);
  hak_free(p);
  /* released to the batch queue and retained, still registered */
  EXPECT_EQ_U(hak_segmap_get(head), HAK_MAP_HUGE);
  hak_collect();
  EXPECT_EQ_U(hak_segmap_get(head), HAK_MAP_NONE);
  EXPECT_TRUE(_hak_huge_recently_freed(p));
  EXPECT_EQ_U(hak_segmap_get(UINTPTR_MAX), HAK_MAP_NONE);
}

/* ---- a fake OS that hands out misaligned mappings ---------------------- */
static int fake_maps, fake_unmaps;
static size_t fake_unmapped_bytes;
static void* fake_map(void* hint, size_t size) {
  (void)hint;
  fake_maps++;
  /* map one page more and return it one page in: never 4 MiB aligned */
  uint8_t* p = _hak_os_default.map(NULL, size + 2 * HAK_SEGMENT_SIZE);
  if (p == NULL) return NULL;
  uint8_t* aligned = (uint8_t*)(((uintptr_t)p + HAK_SEGMENT_MASK) & ~(uintptr_t)HAK_SEGMENT_MASK);
  return aligned + 4096;
}
static int fake_unmap(void* addr, size_t size) {
  (void)addr;
  fake_unmaps++;
  fake_unmapped_bytes += size;
  return 0; /* leak on purpose: the test checks the arithmetic */
}

TEST(aligned_os_allocation_trims_both_ends) {
  hak_os_t fake = _hak_os_default;
  fake.map = fake_map;
  fake.unmap = fake_unmap;
  _hak_os = &fake;
  uint8_t* p = _hak_os_alloc_aligned(HAK_SEGMENT_SIZE, HAK_SEGMENT_SIZE);
  _hak_os = &_hak_os_default;
  ASSERT_NOT_NULL(p);
  EXPECT_EQ_U((uintptr_t)p % HAK_SEGMENT_SIZE, 0);
  EXPECT_EQ_U(fake_maps, 2);      /* first try, then over-map */
  /* the misaligned first try, then the head and tail of the over-mapping */
  EXPECT_EQ_U(fake_unmaps, 3);
  EXPECT_EQ_U(fake_unmapped_bytes, 2 * HAK_SEGMENT_SIZE);
}

TEST_MAIN()
