/* What HAKMEM_SECURE changes besides detection (corrupt_test): where blocks
 * are placed and how much of a block the program gets.  Run at every level
 * (the BUILD sets HAKMEM_SECURE); the expectations follow _hak_secure. */
#include <pthread.h>

#include "src/internal.h"
#include "src/test/test.h"

enum { N = 64 };

/* A fresh thread's first N blocks of one size: its heap has no page yet,
 * so they are carved from one new page. */
static void* carve_n(void* arg) {
  void** out = arg;
  for (int i = 0; i < N; i++) out[i] = hak_malloc(40);
  return NULL;
}

static void carve_in_thread(void** out) {
  pthread_t t;
  pthread_create(&t, NULL, carve_n, out);
  pthread_join(t, NULL);
}

/* How many of the N - 1 successive pairs are neighbours in memory. */
static int adjacent_pairs(void** b) {
  size_t bs = hak_page_of(b[0])->block_size;
  int adj = 0;
  for (int i = 0; i + 1 < N; i++) adj += (uintptr_t)b[i + 1] == (uintptr_t)b[i] + bs;
  return adj;
}

TEST(carving_is_address_ordered_at_level_0_and_random_above) {
  void *a[N], *b[N];
  carve_in_thread(a);
  carve_in_thread(b);
  int adj_a = adjacent_pairs(a), adj_b = adjacent_pairs(b);
  printf("level %d: %d and %d of %d successive blocks are neighbours\n", _hak_secure, adj_a, adj_b, N - 1);
  if (_hak_secure == 0) {
    EXPECT_TRUE(adj_a >= N - 4 && adj_b >= N - 4);
  } else {
    /* next to the previous block about 1 time in 8 (page.c, CARVE_PARTS):
     * 24 of 63 is 7 standard deviations away */
    EXPECT_TRUE(adj_a <= 24 && adj_b <= 24);
    /* and the two heaps drew different orders */
    int same = 0;
    for (int i = 0; i < N; i++) {
      uintptr_t page_a = (uintptr_t)hak_page_of(a[i])->start, page_b = (uintptr_t)hak_page_of(b[i])->start;
      same += (uintptr_t)a[i] - page_a == (uintptr_t)b[i] - page_b;
    }
    EXPECT_TRUE(same < N / 2);
  }
  for (int i = 0; i < N; i++) hak_free(a[i]), hak_free(b[i]);
}

TEST(the_canary_takes_8_bytes_of_the_block_above_level_0) {
  for (size_t size = 1; size <= 4096; size += 37) {
    void* p = hak_malloc(size);
    /* the block's usable size (hak_usable_size: what a sanitizer build
     * lets the program touch, the size asked) */
    size_t bs = hak_page_of(p)->block_size, usable = _hak_usable_size(p, HAK_FN_MALLOC);
    EXPECT_TRUE(usable >= size);
    EXPECT_EQ_U(usable, _hak_secure ? bs - HAK_CANARY : bs);
    hak_free(p);
  }
}

/* A heap whose quarantine (level 2) has taken no block for a purge tick
 * gives the blocks back to their pages, so an idle thread's pages can
 * empty and be purged like any others; below level 2 nothing is held.
 * On a fake clock, ordinary activity (large blocks, never quarantined)
 * running the ticks. */
static uint64_t fake_ns;
static uint64_t fake_now(void) { return fake_ns; }

TEST(an_idle_quarantine_goes_back_to_its_pages) {
  static hak_os_t os;
  fake_ns = _hak_os_default.now_ns(); /* the deadlines set so far are on the real clock */
  os = _hak_os_default;
  os.now_ns = fake_now;
  _hak_os = &os;
  _hak_options[HAK_OPT_PURGE_DELAY_MS] = 100;
  void* b[N];
  for (int i = 0; i < N; i++) b[i] = hak_malloc(64);
  for (int i = 0; i < N; i++) hak_free(b[i]);
  hak_heap_t* heap = _hak_heap_tls;
  EXPECT_TRUE(_hak_secure >= 2 ? heap->q_len >= N : heap->q_len == 0);
  for (int i = 0; i < 200; i++) { /* 1 s: ten delays */
    fake_ns += 5000000ull;
    char* volatile p = hak_malloc(1 << 20);
    p[0] = 1;
    hak_free(p);
  }
  EXPECT_EQ_U(heap->q_len, 0);
  EXPECT_EQ_U(hak_check_heap(), 0);
  _hak_os = &_hak_os_default;
}

TEST_MAIN()
