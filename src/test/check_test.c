/* The invariant checker: silent on a healthy heap after real work, and it
 * bites on each kind of corruption planted by hand (then undone). */
#include "src/hakmem.h"
#include "src/internal.h"
#include "src/test/test.h"

static char* blocks[4096];

static void work(void) {
  uint64_t rng = 7;
  for (int i = 0; i < 4096; i++) blocks[i] = hak_malloc(hak_test_rand(&rng) % 3000);
  for (int i = 0; i < 4096; i += 3) {
    hak_free(blocks[i]);
    blocks[i] = NULL;
  }
  char* big[3] = {hak_malloc(300 << 10), hak_malloc(3 << 20), hak_malloc(1 << 20)};
  hak_free(big[1]);
  hak_free(big[0]);
  (void)big;
}

TEST(healthy_heap_has_no_violation) {
  work();
  EXPECT_EQ_U(hak_check_heap(), 0);
}

/* A live small block's page. */
static hak_page_t* some_page(char** out) {
  for (int i = 0; i < 4096; i++)
    if (blocks[i] != NULL && hak_segmap_get((uintptr_t)blocks[i]) == HAK_MAP_SEGMENT) {
      hak_page_t* p = hak_page_of(blocks[i]);
      if (p->kind == HAK_SLICE_SMALL && p->free != NULL) {
        *out = blocks[i];
        return p;
      }
    }
  return NULL;
}

TEST(used_count_off_by_one_is_caught) {
  char* b;
  hak_page_t* page = some_page(&b);
  ASSERT_NOT_NULL(page);
  page->used++;
  EXPECT_TRUE(hak_check_heap() > 0);
  page->used--;
  EXPECT_EQ_U(hak_check_heap(), 0);
}

TEST(block_linked_twice_is_caught) {
  char* b;
  hak_page_t* page = some_page(&b);
  ASSERT_NOT_NULL(page);
  hak_block_t* first = page->free;
  hak_block_t* saved = first->next;
  first->next = first; /* a block linked to itself: a cycle */
  EXPECT_TRUE(hak_check_heap() > 0);
  first->next = saved;
  EXPECT_EQ_U(hak_check_heap(), 0);
}

TEST(free_block_without_tag_is_caught) {
  char* b;
  hak_page_t* page = some_page(&b);
  ASSERT_NOT_NULL(page);
  uintptr_t tag = atomic_load(&page->free->tag);
  atomic_store(&page->free->tag, 0);
  EXPECT_TRUE(hak_check_heap() > 0);
  atomic_store(&page->free->tag, tag);
  EXPECT_EQ_U(hak_check_heap(), 0);
}

TEST(interior_pointer_on_a_free_list_is_caught) {
  char* b;
  hak_page_t* page = some_page(&b);
  ASSERT_NOT_NULL(page);
  hak_block_t* saved = page->free;
  page->free = (hak_block_t*)((char*)saved + 8);
  EXPECT_TRUE(hak_check_heap() > 0);
  page->free = saved;
  EXPECT_EQ_U(hak_check_heap(), 0);
}

TEST(segment_mask_disagreement_is_caught) {
  char* b;
  hak_page_t* page = some_page(&b);
  ASSERT_NOT_NULL(page);
  hak_segment_t* seg = hak_segment_of(b);
  uint64_t mask = seg->free_mask;
  seg->free_mask ^= (uint64_t)1 << page->slice_index; /* claim a used slice free */
  EXPECT_TRUE(hak_check_heap() > 0);
  seg->free_mask = mask;
  EXPECT_EQ_U(hak_check_heap(), 0);
}

TEST(wrong_direct_page_is_caught) {
  char* b;
  hak_page_t* page = some_page(&b);
  ASSERT_NOT_NULL(page);
  hak_heap_t* heap = page->heap;
  int other = page->bin == 0 ? 1 : 0;
  hak_page_t* saved = heap->direct[other];
  heap->direct[other] = page;
  EXPECT_TRUE(hak_check_heap() > 0);
  heap->direct[other] = saved;
  EXPECT_EQ_U(hak_check_heap(), 0);
}

TEST_MAIN()
