/* End to end through malloc (the shim is linked in): the original's VM
 * scenario is served by BigCache with no page faults beyond the first
 * touch; a cold churn over many sites and sizes beyond BigCache's budget
 * is released through the batch queue in batches, and hak_collect() gives
 * the memory back to the OS. */
#include <stdint.h>
#include <sys/resource.h>

#include "src/hakmem.h"
#include "src/test/test.h"

/* Level 0 only: the VM scenario through BigCache and the batch queue: level 2 keeps freed huge blocks PROT_NONE instead. */
HAK_TEST_AT_LEVEL_0_ONLY()


static long minflt(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_minflt;
}

static long rss_kib(void) {
  FILE* f = fopen("/proc/self/statm", "r");
  long pages = 0, resident = 0;
  if (f == NULL) return -1;
  if (fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = -1;
  fclose(f);
  return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

TEST(vm_scenario_is_served_by_bigcache_without_page_faults) {
  enum { ITERS = 100, SIZE = 2 << 20 };
  hak_stats_t a, b;
  hak_stats_get(&a);
  long f0 = minflt();
  for (int i = 0; i < ITERS; i++) {
    volatile char* p = malloc(SIZE);
    ASSERT_NOT_NULL(p);
    for (size_t k = 0; k < SIZE; k += 4096) p[k] = (char)k; /* one byte per page */
    free((void*)p);
  }
  long faults = minflt() - f0;
  hak_stats_get(&b);
  uint64_t hits = b.bigcache_hits - a.bigcache_hits, misses = b.bigcache_misses - a.bigcache_misses;
  printf("vm: %d iterations, bigcache hits %lu misses %lu, minor faults %ld\n", ITERS, (unsigned long)hits,
         (unsigned long)misses, faults);
  EXPECT_EQ_U(hits + misses, ITERS);
  EXPECT_TRUE(hits * 100 >= (hits + misses) * 99);
  /* the first touch of one block needs at most SIZE/4096 faults (a first
   * block of its site gets no huge page), the allocator's own metadata
   * touched for the first time (site table, BigCache, stats) a few dozen;
   * nothing after: 99 iterations of 512 pages each would be 50,000 */
  EXPECT_TRUE(faults <= SIZE / 4096 + 64);
  EXPECT_EQ_U(b.served_huge - a.served_huge, ITERS);
}

TEST(cold_churn_is_released_in_batches_and_collect_returns_memory) {
  static const size_t sizes[] = {512 << 10, 700 << 10, 1 << 20, 1536 << 10, 2 << 20, 3 << 20, 4 << 20};
  enum { LIVE = 8, OPS = 3000 };
  char* live[LIVE] = {0};
  const void* site[LIVE] = {0};
  uint64_t rng = 12345;
  hak_stats_t a, b;
  hak_stats_get(&a);
  for (int i = 0; i < OPS; i++) {
    int k = i % LIVE;
    if (live[k]) hak_free_at(live[k], site[k]);
    uint64_t r = hak_test_rand(&rng);
    size_t n = sizes[r % 7];
    site[k] = (const void*)(uintptr_t)(0x10000 + (r >> 8) % 200 * 16); /* 200 sites */
    live[k] = hak_alloc_at(n, site[k]);
    ASSERT_NOT_NULL(live[k]);
    for (size_t o = 0; o < n; o += 4096) live[k][o] = 1;
  }
  for (int k = 0; k < LIVE; k++) hak_free_at(live[k], site[k]);
  long before = rss_kib();
  hak_collect();
  long after = rss_kib();
  hak_stats_get(&b);
  uint64_t ev = b.bigcache_evictions - a.bigcache_evictions;
  uint64_t flushes = b.batch_flushes - a.batch_flushes;
  uint64_t madv = b.batch_madvise_calls - a.batch_madvise_calls;
  printf("churn: evictions %lu, flushes %lu, madvise calls %lu, taken back %lu, rss %ld -> %ld KiB\n",
         (unsigned long)ev, (unsigned long)flushes, (unsigned long)madv,
         (unsigned long)(b.batch_taken_back - a.batch_taken_back), before, after);
  EXPECT_TRUE(ev > OPS / 16); /* beyond the budget: many blocks leave BigCache (a larger class,
                               * cached blocks' pages gathered, and a burst's budget up to the
                               * live peak serve some of what missed before) */
  EXPECT_TRUE(flushes > 0);
  EXPECT_TRUE(flushes * 2 < ev);  /* batches, not one release per block */
  EXPECT_TRUE(madv * 3 <= ev);    /* and a third of the system calls or fewer (a quarter before
                                  * misses gathered cached blocks' pages: fewer blocks reach
                                  * the queue, from less adjacent mappings) */
  EXPECT_TRUE(after * 4 < before); /* hak_collect returned the memory */
  EXPECT_EQ_U(b.batch_retained_bytes, 0);
  EXPECT_EQ_U(b.bigcache_bytes, 0);
}

/* A huge block past BigCache's classes grows by moving its pages (no copy:
 * no page of the old contents is touched again) and shrinks in place
 * (the tail goes back: mapped bytes drop). */
TEST(huge_realloc_remaps_instead_of_copying) {
  enum { OLD = 20 << 20, BIG = 100 << 20, SMALL = 40 << 20 };
  char* p = malloc(OLD);
  ASSERT_NOT_NULL(p);
  for (size_t k = 0; k < OLD; k += 4096) p[k] = (char)(k >> 12);
  hak_stats_t a, b;
  hak_stats_get(&a);
  long f0 = minflt();
  char* q = realloc(p, BIG);
  long faults = minflt() - f0;
  ASSERT_NOT_NULL(q);
  printf("realloc 20 -> 100 MiB: %ld minor faults (a copy: about %d)\n", faults, OLD / 4096);
  EXPECT_TRUE(faults < 256);
  for (size_t k = 0; k < OLD; k += 4096) EXPECT_EQ_U((unsigned char)q[k], (unsigned char)(k >> 12));
  EXPECT_TRUE(hak_usable_size(q) >= BIG);
  q[BIG - 1] = 1;
  EXPECT_EQ_U(hak_check_heap(), 0);
  hak_stats_get(&a);
  char* r = realloc(q, SMALL);
  ASSERT_NOT_NULL(r);
  EXPECT_TRUE(r == q); /* in place */
  hak_stats_get(&b);
  EXPECT_TRUE(a.os_mapped_bytes - b.os_mapped_bytes >= (uint64_t)(BIG - SMALL - (4 << 20)));
  for (size_t k = 0; k < OLD; k += 4096) EXPECT_EQ_U((unsigned char)r[k], (unsigned char)(k >> 12));
  EXPECT_EQ_U(hak_check_heap(), 0);
  free(r);
  EXPECT_EQ_U(hak_check_heap(), 0);
}

TEST_MAIN()
