/* BigCache and the batch queue on a fake clock and a counting OS (real
 * memory, recorded madvise/munmap ranges): hit/miss, eviction order,
 * budget, expiry, batch thresholds, deadline, coalescing, deferred munmap,
 * retained reuse, nothing released twice, hak_collect. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "src/internal.h"
#include "src/test/test.h"

/* Level 0 only: BigCache is off at level 2. */
HAK_TEST_AT_LEVEL_0_ONLY()


#define MiB ((size_t)1 << 20)

static uint64_t fake_now = 1000000000ull;
static uint64_t fake_clock(void) { return fake_now; }
static void advance_ms(uint64_t ms) { fake_now += ms * 1000000ull; }

#define LOG_MAX 4096
static struct {
  uintptr_t base;
  size_t size;
} advised[LOG_MAX], unmapped[LOG_MAX];
static int n_advised, n_unmapped;

static uintptr_t nohuge_base;
static size_t nohuge_size;
static int n_hugepage; /* MADV_HUGEPAGE calls */

static int fake_advise(void* addr, size_t size, int advice) {
  if (advice == MADV_NOHUGEPAGE) nohuge_base = (uintptr_t)addr, nohuge_size = size;
  if (advice == MADV_HUGEPAGE) n_hugepage++;
  if (advice == MADV_FREE || advice == MADV_DONTNEED) {
    if (n_advised < LOG_MAX) advised[n_advised++].base = (uintptr_t)addr, advised[n_advised - 1].size = size;
  }
  return _hak_os_default.advise(addr, size, advice);
}
static int fake_unmap(void* addr, size_t size) {
  if (n_unmapped < LOG_MAX) unmapped[n_unmapped++].base = (uintptr_t)addr, unmapped[n_unmapped - 1].size = size;
  return _hak_os_default.unmap(addr, size);
}

static hak_os_t fake_os;

static void setup(long slots, long budget, long expiry_ms, long batch_bytes, long batch_ranges, long deadline_ms,
                  long retain) {
  hak_collect(); /* start empty */
  fake_os = _hak_os_default;
  fake_os.now_ns = fake_clock;
  fake_os.advise = fake_advise;
  fake_os.unmap = fake_unmap;
  _hak_os = &fake_os;
  _hak_options[HAK_OPT_HUGE_THRESHOLD] = 256 << 10; /* 512 KiB and up are huge */
  _hak_options[HAK_OPT_BIGCACHE_SLOTS] = slots;
  _hak_options[HAK_OPT_BIGCACHE_BYTES] = budget;
  _hak_options[HAK_OPT_BIGCACHE_EXPIRY_MS] = expiry_ms;
  _hak_options[HAK_OPT_BATCH_BYTES] = batch_bytes;
  _hak_options[HAK_OPT_BATCH_RANGES] = batch_ranges;
  _hak_options[HAK_OPT_BATCH_DEADLINE_MS] = deadline_ms;
  _hak_options[HAK_OPT_RETAIN_BYTES] = retain;
  n_advised = n_unmapped = 0;
}

static hak_stats_t stats(void) {
  hak_stats_t s;
  hak_stats_get(&s);
  return s;
}

#define SITE(n) ((const void*)(uintptr_t)(0x400000 + (n) * 64))

TEST(hit_reuses_the_mapping_of_the_same_site_and_class) {
  setup(4, 256 * MiB, 100000, 1024 * MiB, 256, 100000, 1024 * MiB);
  hak_stats_t a = stats();
  char* p = hak_alloc_at(2 * MiB, SITE(1));
  ASSERT_NOT_NULL(p);
  EXPECT_EQ_U((uintptr_t)p % (2 * MiB), 0); /* 2 MiB aligned */
  p[0] = 1;
  hak_free_at(p, SITE(1));
  hak_stats_t before_hit = stats();
  char* q = hak_alloc_at(2 * MiB - 100, SITE(1)); /* same class */
  EXPECT_TRUE(q == p);
  EXPECT_EQ_U(stats().os_mmap_calls, before_hit.os_mmap_calls); /* no system call */
  EXPECT_EQ_U(stats().os_madvise_calls, before_hit.os_madvise_calls);
  char* r = hak_alloc_at(2 * MiB, SITE(2));         /* other site: miss */
  EXPECT_TRUE(r != p);
  hak_stats_t b = stats();
  EXPECT_EQ_U(b.bigcache_hits - a.bigcache_hits, 1);
  EXPECT_EQ_U(b.bigcache_misses - a.bigcache_misses, 2);
  EXPECT_EQ_U(b.bigcache_puts - a.bigcache_puts, 1);
  hak_free_at(q, SITE(1));
  hak_free_at(r, SITE(2));
  EXPECT_EQ_U(_hak_bigcache_check(&(size_t){0}), 0);
}

TEST(a_site_with_an_empty_row_takes_another_sites_block_of_the_class) {
  setup(4, 256 * MiB, 100000, 1024 * MiB, 256, 100000, 1024 * MiB);
  char* p = hak_alloc_at(3 * MiB, SITE(5));
  char* q = hak_alloc_at(3 * MiB, SITE(6));
  char* big = hak_alloc_at(6 * MiB, SITE(6));
  hak_free_at(p, SITE(5));
  hak_free_at(big, SITE(6));
  hak_stats_t a = stats();
  char* r = hak_alloc_at(3 * MiB, SITE(7)); /* own row empty: site 5's block, not a new mapping */
  hak_stats_t b = stats();
  EXPECT_TRUE(r == p);
  EXPECT_EQ_U(b.bigcache_other_site - a.bigcache_other_site, 1);
  EXPECT_EQ_U(b.os_mmap_calls, a.os_mmap_calls);
  hak_free_at(q, SITE(6));
  hak_free_at(r, SITE(7));
  a = stats();
  EXPECT_TRUE(hak_alloc_at(3 * MiB, SITE(6)) == q); /* the site's own block first */
  EXPECT_TRUE(hak_alloc_at(2 * MiB + 1, SITE(8)) == r); /* same class only: not the 6 MiB one */
  b = stats();
  EXPECT_EQ_U(b.bigcache_other_site - a.bigcache_other_site, 1);
  EXPECT_EQ_U(b.bigcache_bytes, 6 * MiB); /* the 6 MiB block stays */
  EXPECT_EQ_U(_hak_bigcache_check(&(size_t){0}), 0);
}

TEST(a_class_with_no_block_takes_the_smallest_larger_one_up_to_twice_its_size) {
  setup(4, 256 * MiB, 100000, 1024 * MiB, 256, 100000, 1024 * MiB);
  char* four = hak_alloc_at(4 * MiB, SITE(1));
  char* eight = hak_alloc_at(8 * MiB, SITE(2));
  char* sixteen = hak_alloc_at(12 * MiB, SITE(3));
  memset(four, 7, 4 * MiB);
  hak_free_at(sixteen, SITE(3));
  hak_free_at(eight, SITE(2));
  hak_free_at(four, SITE(1));
  hak_stats_t a = stats();
  char* p = hak_alloc_at(3 * MiB, SITE(4)); /* class 3 MiB is empty: 4 MiB, not 8 */
  hak_stats_t b = stats();
  EXPECT_TRUE(p == four);
  EXPECT_EQ_U(b.bigcache_larger - a.bigcache_larger, 1);
  EXPECT_EQ_U(b.os_mmap_calls, a.os_mmap_calls);
#if !HAK_TRACKING /* sanitizer builds: the usable size is the request's */
  EXPECT_EQ_U(hak_usable_size(p), 4 * MiB); /* the block keeps its class */
#endif
  EXPECT_EQ_U(_hak_bigcache_check(&(size_t){0}), 0);
  a = stats();
  char* q = hak_alloc_at(3 * MiB, SITE(4)); /* 8 MiB is more than twice 3: a miss */
  b = stats();
  EXPECT_TRUE(q != eight && q != sixteen);
  EXPECT_EQ_U(b.bigcache_larger, a.bigcache_larger);
  EXPECT_EQ_U(b.bigcache_misses - a.bigcache_misses, 1);
  char* r = hak_alloc_at(5 * MiB, SITE(5)); /* class 6 MiB: the 8 MiB block */
  EXPECT_TRUE(r == eight);
  char* t = hak_alloc_at(9 * MiB, SITE(5)); /* class 16 MiB: its own block */
  EXPECT_TRUE(t == sixteen);
  hak_free_at(p, SITE(4)); /* back to the 4 MiB class */
  a = stats();
  EXPECT_TRUE(hak_alloc_at(4 * MiB, SITE(6)) == four);
  b = stats();
  EXPECT_EQ_U(b.bigcache_larger, a.bigcache_larger);
  EXPECT_EQ_U(b.bigcache_hits - a.bigcache_hits, 1);
  hak_free_at(four, SITE(6));
  hak_free_at(q, SITE(4));
  hak_free_at(r, SITE(5));
  hak_free_at(t, SITE(5));
  EXPECT_EQ_U(_hak_bigcache_check(&(size_t){0}), 0);
  EXPECT_EQ_U(hak_check_heap(), 0);
}

#if !HAK_TRACKING /* sanitizer builds never grow a block (the shadow would not follow its pages) */
/* The pages of [p, p + n) that are resident (mincore). */
static size_t resident_pages(const void* p, size_t n) {
  static unsigned char vec[(64 * MiB) / 4096];
  uintptr_t a = (uintptr_t)p & ~(uintptr_t)4095;
  size_t pages = ((uintptr_t)p + n - a + 4095) / 4096, r = 0;
  if (pages > sizeof(vec) || mincore((void*)a, pages * 4096, vec) != 0) return (size_t)-1;
  for (size_t i = 0; i < pages; i++) r += vec[i] & 1;
  return r;
}

/* The bytes of [p, p + n) whose first byte of every page is v. */
static size_t pages_holding(const char* p, size_t n, char v) {
  size_t same = 0;
  for (size_t i = 0; i < n; i += 4096) same += p[i] == v;
  return same * 4096;
}

TEST(a_request_nothing_cached_fits_gathers_the_pages_of_cached_blocks_in_place_of_faults) {
  setup(4, 256 * MiB, 100000, 1024 * MiB, 256, 100000, 1024 * MiB);
  char* six = hak_alloc_at(6 * MiB, SITE(20));
  char* twelve = hak_alloc_at(12 * MiB, SITE(21)); /* class 16 MiB: its last 4 MiB untouched */
  memset(six, 0x5a, 6 * MiB);
  memset(twelve, 0x6b, 12 * MiB);
  hak_free_at(six, SITE(20));
  hak_free_at(twelve, SITE(21));
  EXPECT_EQ_U(stats().bigcache_bytes, 22 * MiB); /* the memory the blocks may hold */
  hak_stats_t a = stats();
  char* p = hak_alloc_at(24 * MiB, SITE(22)); /* no class: the 16 MiB block's pages, then the 6's */
  hak_stats_t b = stats();
  ASSERT_NOT_NULL(p);
  EXPECT_EQ_U(b.bigcache_grown - a.bigcache_grown, 1);
  EXPECT_EQ_U(b.bigcache_moved_bytes - a.bigcache_moved_bytes, 22 * MiB);
  EXPECT_EQ_U(b.bigcache_bytes, 0);
  EXPECT_EQ_U(b.os_mmap_calls - a.os_mmap_calls, 1); /* the new block's range */
  /* past the classes: all of its mapping (28 MiB from 2 MiB in, less the
   * guard page), as a fresh block, so realloc can grow it in place */
  EXPECT_EQ_U(hak_usable_size(p), 26 * MiB - 4096);
  /* moved, not copied: resident, holding the old bytes where they were
   * resident; what no cached page covered is untouched */
  EXPECT_EQ_U(resident_pages(p, 12 * MiB), 12 * MiB / 4096);
  EXPECT_EQ_U(pages_holding(p, 12 * MiB, 0x6b), 12 * MiB);
  EXPECT_EQ_U(resident_pages(p + 12 * MiB, 4 * MiB), 0);
  EXPECT_EQ_U(pages_holding(p + 16 * MiB, 6 * MiB, 0x5a), 6 * MiB);
  EXPECT_EQ_U(resident_pages(p + 22 * MiB, 4 * MiB - 4096), 0);
  memset(p, 1, 26 * MiB - 4096);
  EXPECT_EQ_U(hak_check_heap(), 0);
  /* freed, a block past the classes is kept for its pages too: a class
   * request takes what it needs from it and leaves the rest cached */
  hak_free_at(p, SITE(22));
  EXPECT_EQ_U(stats().bigcache_bytes, 26 * MiB - 4096);
  a = stats();
  char* q = hak_alloc_at(10 * MiB, SITE(23)); /* class 16 MiB */
  b = stats();
  ASSERT_NOT_NULL(q);
  EXPECT_EQ_U(b.bigcache_grown - a.bigcache_grown, 1);
  EXPECT_EQ_U(b.bigcache_moved_bytes - a.bigcache_moved_bytes, 16 * MiB);
  EXPECT_EQ_U(b.bigcache_bytes, 10 * MiB - 4096);
  EXPECT_EQ_U(hak_usable_size(q), 16 * MiB);
  EXPECT_EQ_U(pages_holding(q, 16 * MiB, 1), 16 * MiB);
  memset(q, 2, 16 * MiB);
  hak_free_at(q, SITE(23)); /* back to the 16 MiB class */
  EXPECT_TRUE(hak_alloc_at(16 * MiB, SITE(24)) == q);
  hak_free_at(q, SITE(24));
  EXPECT_EQ_U(_hak_bigcache_check(&(size_t){0}), 0);
  EXPECT_EQ_U(hak_check_heap(), 0);
}

TEST(a_small_request_takes_the_front_of_a_larger_block_which_stays_cached_and_is_filled_again) {
  setup(4, 256 * MiB, 100000, 1024 * MiB, 256, 100000, 1024 * MiB);
  char* big = hak_alloc_at(16 * MiB, SITE(50));
  memset(big, 0x11, 16 * MiB);
  hak_free_at(big, SITE(50));
  hak_stats_t a = stats();
  char* p = hak_alloc_at(2 * MiB, SITE(51)); /* 16 MiB is more than twice 2: a miss, and part of it */
  hak_stats_t b = stats();
  ASSERT_NOT_NULL(p);
  EXPECT_TRUE(p != big);
  EXPECT_EQ_U(b.bigcache_misses - a.bigcache_misses, 1);
  EXPECT_EQ_U(b.bigcache_grown - a.bigcache_grown, 1);
  EXPECT_EQ_U(b.bigcache_moved_bytes - a.bigcache_moved_bytes, 2 * MiB);
  EXPECT_EQ_U(pages_holding(p, 2 * MiB, 0x11), 2 * MiB); /* the big block's first 2 MiB */
  EXPECT_EQ_U(b.bigcache_bytes, 14 * MiB);              /* the rest stays */
  EXPECT_EQ_U(resident_pages(big, 2 * MiB), 0);
  EXPECT_EQ_U(resident_pages(big + 2 * MiB, 14 * MiB), 14 * MiB / 4096);
  EXPECT_EQ_U(_hak_bigcache_check(&(size_t){0}), 0);
  memset(p, 0x22, 2 * MiB);
  hak_free_at(p, SITE(51));
  /* the big block served again: its moved-out front is filled again from
   * the small block's pages, nothing faults */
  a = stats();
  char* q = hak_alloc_at(16 * MiB, SITE(50));
  b = stats();
  EXPECT_TRUE(q == big);
  EXPECT_EQ_U(b.bigcache_moved_bytes - a.bigcache_moved_bytes, 2 * MiB);
  EXPECT_EQ_U(b.bigcache_bytes, 0);
  EXPECT_EQ_U(resident_pages(q, 16 * MiB), 16 * MiB / 4096);
  EXPECT_EQ_U(pages_holding(q, 2 * MiB, 0x22), 2 * MiB);
  EXPECT_EQ_U(pages_holding(q + 2 * MiB, 14 * MiB, 0x11), 14 * MiB);
  memset(q, 3, 16 * MiB);
  hak_free_at(q, SITE(50));
  EXPECT_EQ_U(stats().bigcache_bytes, 16 * MiB);
  EXPECT_EQ_U(_hak_bigcache_check(&(size_t){0}), 0);
  EXPECT_EQ_U(hak_check_heap(), 0);
}

/* A block past the classes is cached only for its pages; once a gather
 * has taken every whole frame of it, what is left (less than a frame, which
 * no gather can take) is let go, not cached: twenty rounds of a 24 MiB
 * block gathered from the one freed before it each move all 24 MiB, and
 * the cache holds one block at a time (the reading of the cold scenario:
 * such remnants filled the cache, and a gather that met eight of them gave
 * up and faulted its whole block in). */
TEST(a_block_past_the_classes_that_gave_its_last_whole_frame_is_let_go) {
  setup(8, 256 * MiB, 100000, 1024 * MiB, 256, 100000, 1024 * MiB);
  char* p = hak_alloc_at(24 * MiB, SITE(100));
  memset(p, 0x44, 24 * MiB);
  size_t usable = hak_usable_size(p);
  hak_free_at(p, SITE(100));
  for (int i = 1; i <= 20; i++) {
    hak_stats_t a = stats();
    char* q = hak_alloc_at(24 * MiB, SITE(100 + i));
    hak_stats_t b = stats();
    ASSERT_NOT_NULL(q);
    EXPECT_EQ_U(b.bigcache_moved_bytes - a.bigcache_moved_bytes, 24 * MiB);
    EXPECT_EQ_U(pages_holding(q, 24 * MiB, (char)(0x44 + i - 1)), 24 * MiB);
    EXPECT_EQ_U(b.bigcache_bytes, 0); /* the remnant went to the kernel */
    memset(q, 0x44 + i, 24 * MiB);
    hak_free_at(q, SITE(100 + i));
    EXPECT_EQ_U(stats().bigcache_bytes, usable);
  }
  EXPECT_EQ_U(_hak_bigcache_check(&(size_t){0}), 0);
  EXPECT_EQ_U(hak_check_heap(), 0);
}

/* Cached blocks with no whole frame left to give (a 3 MiB block whose
 * first 2 MiB a gather took: it stays cached, a hit fills its front again)
 * do not count against a gather's donors: 72 of them ahead of a larger
 * block that has the pages (more than the eight donors, than the 16 set
 * aside at first, review P, and than the 64 after it, review R), and the
 * request still gets all of its pages moved, none faulted in. */
TEST(cached_blocks_with_no_whole_frame_to_give_do_not_stop_a_gather) {
  setup(8, 256 * MiB, 100000, 1024 * MiB, 256, 100000, 1024 * MiB);
  enum { N = 72 };
  char* three[N];
  for (int i = 0; i < N; i++) {
    three[i] = hak_alloc_at(3 * MiB, SITE(200 + i));
    memset(three[i], 0x55, 3 * MiB);
  }
  for (int i = 0; i < N; i++) hak_free_at(three[i], SITE(200 + i));
  char* sixteen[N / 8];
  for (int j = 0; j < N / 8; j++) {
    hak_stats_t a = stats();
    sixteen[j] = hak_alloc_at(16 * MiB, SITE(230 + j)); /* 2 MiB from each of 8: 1 MiB left in each */
    hak_stats_t b = stats();
    ASSERT_NOT_NULL(sixteen[j]);
    EXPECT_EQ_U(b.bigcache_moved_bytes - a.bigcache_moved_bytes, 16 * MiB);
    memset(sixteen[j], 0x66, 16 * MiB);
  }
  EXPECT_EQ_U(stats().bigcache_bytes, N * MiB);
  for (int j = 0; j < N / 8; j++) hak_free_at(sixteen[j], SITE(230 + j));
  /* class 4 MiB: none cached, none up to twice it; the 3 MiB blocks come
   * first as donors and have nothing to give, then a 16 MiB block */
  hak_stats_t a = stats();
  char* four = hak_alloc_at(4 * MiB, SITE(241));
  hak_stats_t b = stats();
  ASSERT_NOT_NULL(four);
  EXPECT_EQ_U(b.bigcache_moved_bytes - a.bigcache_moved_bytes, 4 * MiB);
  EXPECT_EQ_U(pages_holding(four, 4 * MiB, 0x66), 4 * MiB);
  EXPECT_EQ_U(b.bigcache_bytes, N * MiB + (N / 8 * 16 - 4) * MiB); /* the remnants stay, for hits */
  hak_free_at(four, SITE(241));
  /* a remnant served by a hit gets its front filled again */
  a = stats();
  char* again = hak_alloc_at(3 * MiB, SITE(200));
  b = stats();
  EXPECT_EQ_U(b.bigcache_moved_bytes - a.bigcache_moved_bytes, 2 * MiB);
  EXPECT_EQ_U(resident_pages(again, 3 * MiB), 3 * MiB / 4096);
  hak_free_at(again, SITE(200));
  EXPECT_EQ_U(_hak_bigcache_check(&(size_t){0}), 0);
  EXPECT_EQ_U(hak_check_heap(), 0);
}

TEST(a_grown_block_gets_huge_pages_only_as_a_fresh_one_would) {
  setup(4, 256 * MiB, 100000, 1024 * MiB, 256, 100000, 1024 * MiB);
  char* three = hak_alloc_at(3 * MiB, SITE(40)); /* 2-4 MiB: advised huge pages */
  memset(three, 1, 3 * MiB);
  hak_free_at(three, SITE(40));
  hak_stats_t a = stats();
  char* p = hak_alloc_at(40 * MiB, SITE(41)); /* a one-off buffer, touched sparsely */
  EXPECT_EQ_U(stats().bigcache_grown - a.bigcache_grown, 1);
  for (size_t o = 4 * MiB; o < 40 * MiB; o += 2 * MiB) p[o] = 1;
  /* 18 pages touched past the moved ones: 18 resident, not 18 huge pages */
  EXPECT_TRUE(resident_pages(p + 4 * MiB, 36 * MiB) <= 18);
  hak_free_at(p, SITE(41));
  EXPECT_EQ_U(hak_check_heap(), 0);
}

/* MADV_HUGEPAGE calls a fresh block of size for site got (the caches
 * emptied first: nothing to gather or hit); freed unwritten (if it was
 * probed, its range now reads sparse). */
static int hugepage_advice_of_fresh_block(size_t size, const void* site) {
  hak_collect();
  int before = n_hugepage;
  char* p = hak_alloc_at(size, site);
  if (p == NULL) abort();
  int got = n_hugepage - before;
  hak_free_at(p, site);
  return got;
}

/* Huge pages by site and size range (site.c).  Found by the adversarial
 * reviews: with every block of 2-4 MiB advised, 500 live 3 MB buffers
 * written at both ends took 1 GB (thp1.c); the first density rule then
 * advised a 512 MiB buffer after four dense 2.5 MB ones (thp_big.c), took
 * pages only read for written ones (thp_read.c), never probed a dense site
 * again (thp_ds.c: 365 MB) and learned nothing from probes that stayed
 * live. */
TEST(huge_pages_follow_how_densely_a_site_writes_its_blocks) {
  setup(4, 256 * MiB, 100000, 1024 * MiB, 256, 100000, 1024 * MiB);
  _hak_options[HAK_OPT_THP] = 1;
  /* a sparse site: at most its two trials advised */
  enum { N = 8 };
  char* b[N];
  int huge0 = n_hugepage;
  for (int i = 0; i < N; i++) {
    b[i] = hak_alloc_at(3 * MiB, SITE(60));
    ASSERT_NOT_NULL(b[i]);
    b[i][0] = 1, b[i][3 * MiB - 1] = 1;
  }
  EXPECT_TRUE(n_hugepage - huge0 <= 2);
  for (int i = 0; i < N; i++) hak_free_at(b[i], SITE(60)); /* cached */
  /* no pages gathered for it: class 4 MiB, nothing of it cached, the 3 MiB blocks could give theirs */
  hak_stats_t a = stats();
  huge0 = n_hugepage;
  char* p = hak_alloc_at(3 * MiB + 900 * 1024, SITE(60));
  ASSERT_NOT_NULL(p);
  p[0] = 1;
  EXPECT_EQ_U(stats().bigcache_grown - a.bigcache_grown, 0);
  EXPECT_EQ_U(n_hugepage - huge0, 0);
  hak_free_at(p, SITE(60));
  /* a dense site: a probed 10 MiB block (past the trials) written
   * throughout; its next ones of 4-16 MiB get huge pages, a 64 MiB one
   * (another range) does not */
  hak_collect();
  char* d = hak_alloc_at(10 * MiB, SITE(61));
  ASSERT_NOT_NULL(d);
  memset(d, 1, 10 * MiB);
  hak_free_at(d, SITE(61));
  hak_collect();
  huge0 = n_hugepage;
  enum { M = 16 };
  char* m[M];
  int hinted[M];
  for (int i = 0; i < M; i++) { /* live, written sparsely: the site's use changed */
    int h = n_hugepage;
    m[i] = hak_alloc_at(10 * MiB, SITE(61));
    ASSERT_NOT_NULL(m[i]);
    hinted[i] = n_hugepage - h;
    m[i][0] = 1;
  }
  EXPECT_EQ_U(hinted[0], 1); /* dense: advised */
  /* a probe (one block in 8), read at the next block while still live, turns it sparse */
  for (int i = M - 4; i < M; i++) EXPECT_EQ_U(hinted[i], 0);
  for (int i = 0; i < M; i++) hak_free_at(m[i], SITE(61));
  EXPECT_EQ_U(hugepage_advice_of_fresh_block(64 * MiB, SITE(61)), 0);
  /* a block whose first 2 MiB were written whole and the rest sparsely
   * (a header, then a sparse table: the review's first2.c) is sparse */
  hak_collect();
  char* h = hak_alloc_at(12 * MiB, SITE(63));
  ASSERT_NOT_NULL(h);
  memset(h, 1, 2 * MiB);
  for (size_t o = 2 * MiB; o < 12 * MiB; o += 64 * 1024) h[o] = 1;
  hak_free_at(h, SITE(63));
  EXPECT_EQ_U(hugepage_advice_of_fresh_block(12 * MiB, SITE(63)), 0);
  /* pages only read are not written: the shared zero page */
  hak_collect();
  char* r = hak_alloc_at(10 * MiB, SITE(62));
  ASSERT_NOT_NULL(r);
  unsigned sum = 0;
  for (size_t o = 0; o < 10 * MiB; o += 4096) sum += ((volatile char*)r)[o]; /* every page the probe may count */
  r[0] = (char)(sum + 1);
  hak_free_at(r, SITE(62));
  EXPECT_EQ_U(hugepage_advice_of_fresh_block(10 * MiB, SITE(62)), 0);
  EXPECT_EQ_U(hak_check_heap(), 0);
}

/* Mappings of this process (lines of /proc/self/maps), read without stdio. */
static int count_maps(void) {
  static char buf[1 << 16];
  int n = 0, fd = open("/proc/self/maps", O_RDONLY);
  ssize_t r;
  while (fd >= 0 && (r = read(fd, buf, sizeof(buf))) > 0)
    for (ssize_t i = 0; i < r; i++) n += buf[i] == '\n';
  if (fd >= 0) close(fd);
  return n;
}

static int max_map_count(void) {
  char b[32] = {0};
  int fd = open("/proc/sys/vm/max_map_count", O_RDONLY);
  if (fd < 0) return 65530;
  ssize_t r = read(fd, b, sizeof(b) - 1);
  close(fd);
  return r > 0 ? atoi(b) : 65530;
}

/* A gathered block is several VMAs, and the kernel may run out of them
 * while moving its pages again: with the process a few mappings short of
 * vm.max_map_count, calloc of a block gathered from it must still get a
 * block that is mapped throughout and all zero.  (The first version moved
 * a donor of several VMAs in one mremap, which Linux 6.17+ may complete
 * only in part: it counted nothing moved, and calloc returned the old
 * bytes and an unmapped hole.) */
TEST(a_gather_the_kernel_stops_part_way_leaves_no_hole_and_calloc_zeroes) {
  setup(4, 256 * MiB, 100000, 1024 * MiB, 256, 100000, 1024 * MiB);
  char* x = hak_alloc_at(8 * MiB, SITE(60));
  char* y = hak_alloc_at(8 * MiB, SITE(61));
  memset(x, 'X', 8 * MiB);
  memset(y, 'Y', 8 * MiB);
  hak_free_at(x, SITE(60));
  hak_free_at(y, SITE(61));
  char* z = hak_alloc_at(20 * MiB, SITE(62)); /* gathered from both: several VMAs */
  ASSERT_NOT_NULL(z);
  memset(z, 'Z', 20 * MiB);
  hak_free_at(z, SITE(62)); /* cached past the classes */
  int limit = max_map_count(), failed = 0;
  for (int slack = 0; slack < 16; slack++) {
    pid_t pid = fork();
    ASSERT_TRUE(pid >= 0);
    if (pid == 0) {
      /* use up mappings: every other page of a reserve made readable */
      size_t pages = (size_t)limit + 64;
      char* r = mmap(NULL, pages * 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (r == MAP_FAILED) _exit(10);
      int c = count_maps();
      for (size_t i = 1; c + 2 <= limit - slack && i < pages; i += 2, c += 2) mprotect(r + i * 4096, 4096, PROT_READ);
      if (c < limit - slack) mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0); /* to the count */
      char* p = hak_calloc(1, 17 * MiB);
      munmap(r, pages * 4096);
      if (p == NULL) _exit(11);
      static unsigned char vec[17 * MiB / 4096];
      if (mincore(p, 17 * MiB, vec) != 0) _exit(12); /* ENOMEM: a hole */
      for (size_t o = 0; o < 17 * MiB; o += 4096)
        if (p[o] != 0 || p[o + 4095] != 0) _exit(13);
      hak_free(p);
      _exit(hak_check_heap() == 0 ? 0 : 14);
    }
    int st;
    waitpid(pid, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      fprintf(stderr, "slack %d: child status %#x\n", slack, st);
      failed++;
    }
  }
  EXPECT_EQ_U(failed, 0);
  hak_collect();
}

/* calloc of a block gathered in part zeroes the moved pages only: the
 * rest is a fresh mapping's, zero and not yet resident (a sparse buffer
 * stays sparse). */
TEST(calloc_zeroes_what_a_gather_moved_and_leaves_the_fresh_rest_untouched) {
  setup(4, 256 * MiB, 100000, 1024 * MiB, 256, 100000, 1024 * MiB);
  char* six = hak_alloc_at(6 * MiB, SITE(80));
  memset(six, 0x77, 6 * MiB);
  hak_free_at(six, SITE(80));
  hak_stats_t a = stats();
  char* p = hak_calloc(1, 24 * MiB);
  hak_stats_t b = stats();
  ASSERT_NOT_NULL(p);
  EXPECT_EQ_U(b.bigcache_moved_bytes - a.bigcache_moved_bytes, 6 * MiB);
  EXPECT_EQ_U(resident_pages(p, 6 * MiB), 6 * MiB / 4096);
  EXPECT_EQ_U(resident_pages(p + 6 * MiB, 18 * MiB), 0);
  EXPECT_EQ_U(pages_holding(p, 24 * MiB, 0), 24 * MiB);
  for (size_t o = 0; o < 6 * MiB; o += 512) ASSERT_EQ_U((unsigned char)p[o + 511], 0);
  hak_free(p);
  hak_collect();
}

/* /proc/self/maps as text, read without stdio (the fake OS runs inside
 * the allocator), into one buffer; and its next line. */
static const char* read_maps(void) {
  static char buf[1 << 20];
  int fd = open("/proc/self/maps", O_RDONLY);
  size_t len = 0;
  ssize_t r;
  while (fd >= 0 && len < sizeof(buf) - 1 && (r = read(fd, buf + len, sizeof(buf) - 1 - len)) > 0) len += (size_t)r;
  if (fd >= 0) close(fd);
  buf[len] = 0;
  return buf;
}
static const char* next_line(const char* l) {
  const char* nl = strchr(l, '\n');
  return nl != NULL ? nl + 1 : l + strlen(l);
}

/* The end of the VMA holding addr; 0 if none. */
static uintptr_t vma_end(uintptr_t addr) {
  for (const char* l = read_maps(); *l != 0; l = next_line(l)) {
    char* dash;
    uintptr_t lo = strtoul(l, &dash, 16), hi = strtoul(dash + 1, NULL, 16);
    if (lo <= addr && addr < hi) return hi;
  }
  return 0;
}

/* mremap as Linux 6.17+ may do it to a range of several VMAs when it runs
 * out of them: the first VMA moves, the rest of dst is left unmapped,
 * ENOMEM. */
static int move_keep_part_way(void* src, size_t size, void* dst) {
  uintptr_t s = (uintptr_t)src, e = vma_end(s);
  if (e == 0 || s + size <= e) return _hak_os_default.move_keep(src, size, dst);
  int r = _hak_os_default.move_keep(src, e - s, dst);
  if (r == 0) munmap((char*)dst + (e - s), size - (e - s));
  return ENOMEM;
}

/* VMA boundaries strictly inside [p, p + n) that are off a 2 MiB frame
 * from p (the gather's invariant: none). */
static int off_frame_boundaries(const char* p, size_t n) {
  int bad = 0;
  for (const char* l = read_maps(); *l != 0; l = next_line(l)) {
    uintptr_t lo = strtoul(l, NULL, 16);
    if (lo > (uintptr_t)p && lo < (uintptr_t)p + n && (lo - (uintptr_t)p) % (2 * MiB) != 0) bad++;
  }
  return bad;
}

/* mremap as Linux did before 6.17 to a range of several VMAs: dst is
 * unmapped first, then EFAULT. */
static int move_keep_before_6_17(void* src, size_t size, void* dst) {
  uintptr_t s = (uintptr_t)src, e = vma_end(s);
  if (e != 0 && s + size <= e) return _hak_os_default.move_keep(src, size, dst);
  munmap(dst, size);
  return EFAULT;
}

/* A kernel that refuses every move after unmapping its destination (as
 * Linux before 6.17 did for a source of several VMAs, or near
 * vm.max_map_count). */
static int move_keep_refused_after_unmap(void* src, size_t size, void* dst) {
  (void)src;
  munmap(dst, size);
  return ENOMEM;
}

/* A block gathered from several cached blocks is several VMAs, and moving
 * its pages again must never ask the kernel to move more than one at once:
 * such a move may stop part way (above), and the first version then
 * counted nothing moved and served calloc the old bytes and a hole. */
TEST(gathered_blocks_are_moved_again_one_vma_at_a_time) {
  setup(4, 256 * MiB, 100000, 1024 * MiB, 256, 100000, 1024 * MiB);
  fake_os.move_keep = move_keep_part_way;
  char* x = hak_alloc_at(8 * MiB, SITE(70));
  char* y = hak_alloc_at(6 * MiB, SITE(71));
  memset(x, 'X', 8 * MiB);
  memset(y, 'Y', 6 * MiB);
  hak_free_at(x, SITE(70));
  hak_free_at(y, SITE(71));
  hak_stats_t a = stats();
  char* z = hak_alloc_at(20 * MiB, SITE(72)); /* gathered from both: several VMAs */
  ASSERT_NOT_NULL(z);
  EXPECT_EQ_U(stats().bigcache_moved_bytes - a.bigcache_moved_bytes, 14 * MiB);
  memset(z, 'Z', 20 * MiB);
  hak_free_at(z, SITE(72));
  a = stats();
  char* p = hak_calloc(1, 17 * MiB); /* part of z, across its pieces */
  hak_stats_t b = stats();
  ASSERT_NOT_NULL(p);
  EXPECT_EQ_U(b.bigcache_moved_bytes - a.bigcache_moved_bytes, 18 * MiB); /* whole frames */
  unsigned char vec[17 * MiB / 4096];
  EXPECT_EQ_U(mincore(p, 17 * MiB, vec), 0); /* no hole */
  EXPECT_EQ_U(pages_holding(p, 17 * MiB, 0), 17 * MiB);
  hak_free(p);
  fake_os.move_keep = _hak_os_default.move_keep;
  EXPECT_EQ_U(_hak_bigcache_check(&(size_t){0}), 0);
  EXPECT_EQ_U(hak_check_heap(), 0);
  hak_collect();
}

/* A gathered 3 MiB block ends inside a frame; its mapping, retained by the
 * batch queue and reused for a block of another end, must not bring a VMA
 * boundary into the new block off a frame (the second review: the moved
 * piece ended at 3 MiB, the guard page only moved, and the next gather
 * from that block moved a frame of two VMAs, which a kernel before 6.17
 * refuses after unmapping the destination: the abort).  And a step that
 * leaves a hole anyway is repaired, not served. */
TEST(a_reused_mapping_keeps_vma_boundaries_on_frames_and_a_refused_move_leaves_no_hole) {
  setup(4, 18 * MiB, 100000, 1024 * MiB, 256, 100000, 64 * MiB);
  char* y = hak_alloc_at(16 * MiB, SITE(90));
  char* a8 = hak_alloc_at(8 * MiB, SITE(91));
  memset(y, 'Y', 16 * MiB);
  memset(a8, 'A', 8 * MiB);
  hak_free_at(a8, SITE(91));
  char* x = hak_alloc_at(3 * MiB, SITE(92)); /* gathered from the 8 MiB block */
  ASSERT_NOT_NULL(x);
  memset(x, 'X', 3 * MiB);
  EXPECT_EQ_U(off_frame_boundaries(x, 3 * MiB), 0);
  hak_free_at(x, SITE(92));
  advance_ms(100);          /* a put a purge delay after the last: the option's budget */
  hak_free_at(y, SITE(90)); /* past the budget: the older blocks go to the batch queue */
  char* z = hak_aligned_alloc(1 * MiB, 5 * MiB); /* a retained mapping reused, another end */
  ASSERT_NOT_NULL(z);
  EXPECT_EQ_U(off_frame_boundaries(z, hak_usable_size(z)), 0);
  memset(z, 'Z', 5 * MiB);
  hak_free(z); /* past the classes: a donor */
  fake_os.move_keep = move_keep_before_6_17;
  char* p = hak_calloc(1, 4 * MiB);
  fake_os.move_keep = _hak_os_default.move_keep;
  ASSERT_NOT_NULL(p);
  unsigned char vec[4 * MiB / 4096];
  EXPECT_EQ_U(mincore(p, 4 * MiB, vec), 0);
  EXPECT_EQ_U(pages_holding(p, 4 * MiB, 0), 4 * MiB);
  hak_free(p);
  /* a refused step that left a hole: mapped again, and the block is zero */
  char* u = hak_alloc_at(8 * MiB, SITE(93));
  memset(u, 'U', 8 * MiB);
  hak_free_at(u, SITE(93));
  fake_os.move_keep = move_keep_refused_after_unmap;
  hak_stats_t before = stats();
  char* q = hak_calloc(1, 3 * MiB); /* 8 MiB is more than twice 3: part of it, gathered */
  fake_os.move_keep = _hak_os_default.move_keep;
  ASSERT_NOT_NULL(q);
  EXPECT_EQ_U(stats().bigcache_misses - before.bigcache_misses, 1);
  unsigned char vec3[3 * MiB / 4096];
  EXPECT_EQ_U(mincore(q, 3 * MiB, vec3), 0);
  EXPECT_EQ_U(pages_holding(q, 3 * MiB, 0), 3 * MiB);
  hak_free(q);
  EXPECT_EQ_U(_hak_bigcache_check(&(size_t){0}), 0);
  EXPECT_EQ_U(hak_check_heap(), 0);
  hak_collect();
}

/* The same, and another thread's mapping lands in the hole before hakmem
 * can map it again. */
static int move_keep_refused_and_taken(void* src, size_t size, void* dst) {
  (void)src;
  munmap(dst, size);
  mmap((char*)dst + size / 2, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  return ENOMEM;
}

/* A hole part of which another mapping took is not mapped around and
 * served (the third review: the page-by-page repair took the stranger's
 * page for one of ours, and the block's writes went into it): abort. */
TEST(a_hole_another_mapping_took_part_of_is_not_served) {
  pid_t pid = fork();
  ASSERT_TRUE(pid >= 0);
  if (pid == 0) {
    setup(4, 256 * MiB, 100000, 1024 * MiB, 256, 100000, 1024 * MiB);
    char* u = hak_alloc_at(8 * MiB, SITE(95));
    memset(u, 'U', 8 * MiB);
    hak_free_at(u, SITE(95));
    fake_os.move_keep = move_keep_refused_and_taken;
    int devnull = open("/dev/null", O_WRONLY);
    if (devnull >= 0) dup2(devnull, 2); /* the diagnosis is expected */
    char* q = hak_calloc(1, 3 * MiB); /* a miss: part of the 8 MiB block */
    (void)q;
    _exit(0); /* served: the bug */
  }
  int st;
  waitpid(pid, &st, 0);
  EXPECT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
}

static int failing_remap(void* old, size_t old_size, void* dst, size_t new_size) {
  (void)old, (void)old_size, (void)dst, (void)new_size;
  return EFAULT; /* e.g. a range the kernel split */
}
static int failing_move_keep(void* src, size_t size, void* dst) {
  (void)src, (void)size, (void)dst;
  return EINVAL; /* e.g. a kernel before 5.13 */
}

TEST(a_block_that_cannot_grow_goes_back_and_the_request_is_mapped_fresh) {
  setup(4, 256 * MiB, 100000, 1024 * MiB, 256, 100000, 1024 * MiB);
  char* six = hak_alloc_at(6 * MiB, SITE(30));
  memset(six, 0x33, 6 * MiB);
  hak_free_at(six, SITE(30));
  fake_os.remap = failing_remap;
  fake_os.move_keep = failing_move_keep;
  hak_stats_t a = stats();
  char* p = hak_alloc_at(24 * MiB, SITE(31)); /* would take the 6 MiB block whole */
  char* two = hak_alloc_at(2 * MiB, SITE(33)); /* would take part of it */
  hak_stats_t b = stats();
  fake_os.remap = _hak_os_default.remap;
  fake_os.move_keep = _hak_os_default.move_keep;
  ASSERT_NOT_NULL(p);
  ASSERT_NOT_NULL(two);
  EXPECT_EQ_U(b.bigcache_grown, a.bigcache_grown);
  EXPECT_EQ_U(b.bigcache_moved_bytes, a.bigcache_moved_bytes);
  EXPECT_EQ_U(b.bigcache_bytes, 6 * MiB); /* back in the cache, intact */
  memset(two, 1, 2 * MiB);
  memset(p, 1, 24 * MiB);
  EXPECT_EQ_U(hak_check_heap(), 0);
  char* again = hak_alloc_at(6 * MiB, SITE(32));
  EXPECT_TRUE(again == six);
  EXPECT_EQ_U((unsigned char)again[6 * MiB - 1], 0x33);
  hak_free_at(again, SITE(32));
  hak_free_at(p, SITE(31));
  hak_free_at(two, SITE(33));
  EXPECT_EQ_U(_hak_bigcache_check(&(size_t){0}), 0);
  EXPECT_EQ_U(hak_check_heap(), 0);
}

#endif

TEST(full_row_evicts_its_oldest_block) {
  setup(2, 256 * MiB, 100000, 1024 * MiB, 256, 100000, 1024 * MiB);
  char* p[3];
  for (int i = 0; i < 3; i++) p[i] = hak_alloc_at(1 * MiB, SITE(3));
  hak_stats_t a = stats();
  for (int i = 0; i < 3; i++) {
    hak_free_at(p[i], SITE(3));
    advance_ms(1);
  }
  hak_stats_t b = stats();
  EXPECT_EQ_U(b.bigcache_evictions - a.bigcache_evictions, 1);
  EXPECT_EQ_U(b.batch_queued - a.batch_queued, 1);
  /* p[0] was the oldest: the two left are p[1] and p[2] */
  char* x = hak_alloc_at(1 * MiB, SITE(3));
  char* y = hak_alloc_at(1 * MiB, SITE(3));
  EXPECT_TRUE((x == p[1] && y == p[2]) || (x == p[2] && y == p[1]));
  hak_free_at(x, SITE(3));
  hak_free_at(y, SITE(3));
}

TEST(budget_bounds_cached_bytes) {
  setup(4, 4 * MiB, 100000, 1024 * MiB, 256, 100000, 1024 * MiB); /* two 2 MiB blocks */
  char* p[3];
  for (int i = 0; i < 3; i++) p[i] = hak_alloc_at(2 * MiB, SITE(10 + i));
  hak_stats_t a = stats();
  for (int i = 0; i < 3; i++) {
    hak_free_at(p[i], SITE(10 + i));
    advance_ms(100); /* a purge delay apart: the option's budget */
  }
  hak_stats_t b = stats();
  EXPECT_EQ_U(b.bigcache_bytes, 4 * MiB);
  EXPECT_EQ_U(b.bigcache_evictions - a.bigcache_evictions, 1);
  EXPECT_EQ_U(b.batch_queued - a.batch_queued, 1);
  /* the block cached longest ago made room: the two newest stay */
  EXPECT_TRUE(hak_alloc_at(2 * MiB, SITE(11)) == p[1]);
  EXPECT_TRUE(hak_alloc_at(2 * MiB, SITE(12)) == p[2]);
  EXPECT_EQ_U(stats().bigcache_hits - b.bigcache_hits, 2);
  hak_free_at(p[1], SITE(11));
  hak_free_at(p[2], SITE(12));
  EXPECT_EQ_U(_hak_bigcache_check(&(size_t){0}), 0);
}

/* While frees follow each other (less than a purge delay apart), BigCache
 * keeps what the live blocks give back up to their peak, at most twice its
 * option: cached and live together stay within a footprint the program
 * had.  A purge delay with no free, the tick settles the peak to what is
 * live and evicts down to the option, oldest first; a later burst counts
 * from the settled peak. */
TEST(a_burst_of_frees_is_cached_up_to_the_live_peak_and_settles_after_a_purge_delay) {
  setup(8, 8 * MiB, 100000, 1024 * MiB, 256, 100000, 1024 * MiB);
  char* p[10];
  for (int i = 0; i < 10; i++) p[i] = hak_alloc_at(2 * MiB, SITE(150 + i)); /* 20 MiB live */
  advance_ms(100); /* no put for a purge delay: the first free is the option's */
  hak_stats_t a = stats();
  for (int i = 0; i < 6; i++) hak_free_at(p[i], SITE(150 + i)), advance_ms(1);
  hak_stats_t b = stats();
  EXPECT_EQ_U(b.bigcache_bytes, 12 * MiB); /* 20 at the peak, 8 live */
  EXPECT_EQ_U(b.bigcache_evictions - a.bigcache_evictions, 0);
  for (int i = 6; i < 10; i++) hak_free_at(p[i], SITE(150 + i)), advance_ms(1);
  b = stats();
  EXPECT_EQ_U(b.bigcache_bytes, 16 * MiB); /* twice the option at most */
  EXPECT_EQ_U(b.bigcache_evictions - a.bigcache_evictions, 2);
  advance_ms(100);
  _hak_bigcache_expire(fake_now); /* the purge tick */
  b = stats();
  EXPECT_EQ_U(b.bigcache_bytes, 8 * MiB);
  EXPECT_EQ_U(b.bigcache_evictions - a.bigcache_evictions, 6);
  /* a burst of 512 KiB blocks (nothing they hit or gather from): the peak
   * counts from the settled one, 3 MiB, so the option's budget holds */
  char* q[6];
  for (int i = 0; i < 6; i++) q[i] = hak_alloc_at(512 << 10, SITE(170 + i));
  a = stats();
  for (int i = 0; i < 6; i++) hak_free_at(q[i], SITE(170 + i)), advance_ms(1);
  b = stats();
  EXPECT_EQ_U(b.bigcache_bytes, 7 * MiB);
  EXPECT_EQ_U(b.bigcache_evictions - a.bigcache_evictions, 2); /* the two oldest 2 MiB blocks */
  for (int i = 8; i < 10; i++) EXPECT_TRUE(hak_alloc_at(2 * MiB, SITE(150 + i)) == p[i]); /* the newest stay */
  for (int i = 8; i < 10; i++) hak_free_at(p[i], SITE(150 + i));
  EXPECT_EQ_U(_hak_bigcache_check(&(size_t){0}), 0);
  EXPECT_EQ_U(hak_check_heap(), 0);
}

/* A spike long past stops counting: its peak is kept for this window of
 * HAKMEM_BIGCACHE_EXPIRY_MS and the next, so under steady frees (every 10
 * ms: always a burst) of one block at a time, each a hit, the cache comes
 * down to the option's budget within two windows (review P's steady.c:
 * 126 MiB stayed cached after a 200 MiB spike at startup). */
TEST(the_peak_of_a_spike_long_past_stops_counting_under_steady_frees) {
  setup(8, 8 * MiB, 1000, 1024 * MiB, 256, 100000, 1024 * MiB);
  char* p[10];
  for (int i = 0; i < 10; i++) p[i] = hak_alloc_at(2 * MiB, SITE(180 + i));
  advance_ms(100);
  for (int i = 0; i < 10; i++) hak_free_at(p[i], SITE(180 + i)), advance_ms(1);
  EXPECT_EQ_U(stats().bigcache_bytes, 16 * MiB);
  size_t most_late = 0;
  for (int t = 0; t < 300; t++) { /* 3 s: a free every 10 ms, and the tick */
    int i = t % 10;
    char* q = hak_alloc_at(2 * MiB, SITE(180 + i));
    ASSERT_NOT_NULL(q);
    q[0] = 1;
    advance_ms(10);
    hak_free_at(q, SITE(180 + i));
    _hak_bigcache_expire(fake_now);
    if (t >= 250 && stats().bigcache_bytes > most_late) most_late = stats().bigcache_bytes;
  }
  EXPECT_TRUE(most_late <= 8 * MiB);
  hak_collect();
  EXPECT_EQ_U(_hak_bigcache_check(&(size_t){0}), 0);
}

TEST(idle_blocks_expire_to_the_batch_queue) {
  setup(4, 256 * MiB, 50, 1024 * MiB, 256, 100000, 1024 * MiB);
  char* p = hak_alloc_at(3 * MiB, SITE(20));
  char* q = hak_alloc_at(3 * MiB, SITE(20));
  hak_free_at(p, SITE(20));
  advance_ms(100);
  hak_stats_t a = stats();
  hak_free_at(q, SITE(20)); /* a put to the row expires p */
  hak_stats_t b = stats();
  EXPECT_EQ_U(b.bigcache_expired - a.bigcache_expired, 1);
  EXPECT_EQ_U(b.batch_queued - a.batch_queued, 1);
  EXPECT_TRUE(hak_alloc_at(3 * MiB, SITE(20)) == q);
}

TEST(batch_flushes_at_range_count_and_coalesces) {
  setup(0, 0, 100000, 1024 * MiB, 4, 100000, 1024 * MiB); /* BigCache off */
  char* p[8];
  for (int i = 0; i < 8; i++) p[i] = hak_alloc_at(1 * MiB, SITE(30));
  hak_stats_t a = stats();
  for (int i = 0; i < 3; i++) hak_free_at(p[i], SITE(30));
  EXPECT_EQ_U(stats().batch_flushes - a.batch_flushes, 0);
  EXPECT_EQ_U(n_advised, 0);
  hak_free_at(p[3], SITE(30));
  hak_stats_t b = stats();
  EXPECT_EQ_U(b.batch_flushes - a.batch_flushes, 1);
  /* each 1 MiB block's 4 MiB mapping is advised up to the block's end;
   * coalesced runs also cover the untouched tails between them */
  EXPECT_TRUE(b.batch_bytes_advised - a.batch_bytes_advised >= 4 * (1 * MiB + 64));
  EXPECT_TRUE(b.batch_bytes_advised - a.batch_bytes_advised <= 4 * 4 * MiB);
  /* one madvise per run of adjacent mappings: at most one per range */
  EXPECT_TRUE(b.batch_madvise_calls - a.batch_madvise_calls <= 4);
  EXPECT_EQ_U((uint64_t)n_advised, b.batch_madvise_calls - a.batch_madvise_calls);
  for (int i = 4; i < 8; i++) hak_free_at(p[i], SITE(30));
  EXPECT_EQ_U(stats().batch_flushes - a.batch_flushes, 2);
}

TEST(batch_flushes_at_byte_threshold_and_deadline) {
  setup(0, 0, 100000, 8 * MiB, 256, 100, 1024 * MiB);
  char* p = hak_alloc_at(3 * MiB, SITE(40));
  char* q = hak_alloc_at(3 * MiB, SITE(40));
  char* r = hak_alloc_at(3 * MiB, SITE(40));
  char* t = hak_alloc_at(3 * MiB, SITE(40));
  hak_stats_t a = stats();
  hak_free_at(p, SITE(40)); /* 3 MiB queued */
  hak_free_at(q, SITE(40)); /* 6 MiB: still below 8 MiB */
  EXPECT_EQ_U(stats().batch_flushes, a.batch_flushes);
  hak_free_at(r, SITE(40)); /* 9 MiB: flush */
  EXPECT_EQ_U(stats().batch_flushes, a.batch_flushes + 1);
  hak_free_at(t, SITE(40));
  EXPECT_EQ_U(stats().batch_flushes, a.batch_flushes + 1);
  advance_ms(150);          /* past the deadline: the next huge call flushes */
  char* s = hak_alloc_at(20 * MiB, SITE(41)); /* bypasses BigCache, no reuse */
  EXPECT_EQ_U(stats().batch_flushes, a.batch_flushes + 2);
  hak_free_at(s, SITE(41));
}

TEST(munmap_is_deferred_beyond_the_retained_budget_and_nothing_twice) {
  setup(0, 0, 100000, 1024 * MiB, 6, 100000, 8 * MiB);
  char* p[6];
  for (int i = 0; i < 6; i++) p[i] = hak_alloc_at(1 * MiB, SITE(50));
  n_unmapped = 0; /* from here on only the batch queue unmaps */
  hak_stats_t a = stats();
  for (int i = 0; i < 6; i++) hak_free_at(p[i], SITE(50));
  hak_stats_t b = stats();
  EXPECT_EQ_U(b.batch_flushes - a.batch_flushes, 1);
  EXPECT_EQ_U(b.batch_retained_bytes, 8 * MiB);        /* two 4 MiB mappings kept */
  EXPECT_EQ_U(b.batch_munmaps - a.batch_munmaps, 4);  /* the rest unmapped */
  /* a retained mapping serves the next allocation of its size: no mmap */
  char* r = hak_alloc_at(1 * MiB, SITE(51));
  hak_stats_t c = stats();
  EXPECT_EQ_U(c.batch_reused - b.batch_reused, 1);
  EXPECT_EQ_U(c.os_mmap_calls, b.os_mmap_calls);
  memset(r, 7, 1 * MiB); /* usable */
  hak_free_at(r, SITE(51));
  hak_collect();
  hak_stats_t d = stats();
  EXPECT_EQ_U(d.batch_retained_bytes, 0);
  EXPECT_EQ_U(d.bigcache_bytes, 0);
  /* nothing unmapped twice, nothing advised twice in one flush */
  for (int i = 0; i < n_unmapped; i++)
    for (int j = i + 1; j < n_unmapped; j++)
      if (unmapped[i].base < unmapped[j].base + unmapped[j].size && unmapped[j].base < unmapped[i].base + unmapped[i].size)
        HAK_FAIL_AT("range %#lx unmapped twice", (unsigned long)unmapped[i].base);
  EXPECT_EQ_U(_hak_madvq_check(), 0);
}

TEST(a_fresh_mapping_sheds_as_much_retained_memory_first) {
  setup(0, 0, 100000, 1024 * MiB, 2, 100000, 64 * MiB);
  char* p[2];
  for (int i = 0; i < 2; i++) p[i] = hak_alloc_at(1 * MiB, SITE(60));
  for (int i = 0; i < 2; i++) hak_free_at(p[i], SITE(60)); /* flushed: two 4 MiB mappings retained */
  hak_stats_t a = stats();
  EXPECT_EQ_U(a.batch_retained_bytes, 8 * MiB);
  char* big = hak_alloc_at(5 * MiB, SITE(61)); /* needs 12 MiB: nothing retained fits */
  ASSERT_NOT_NULL(big);
  hak_stats_t b = stats();
  /* mapped: 12 MiB fresh, 8 MiB gone (mmap calls are not counted: an
   * unaligned first try takes a second one) */
  EXPECT_EQ_U(b.os_mapped_bytes - a.os_mapped_bytes, 4 * MiB);
  EXPECT_EQ_U(b.batch_reused, a.batch_reused);
  EXPECT_EQ_U(b.batch_retained_bytes, 0);            /* the oldest, 12 MiB's worth: both */
  EXPECT_EQ_U(b.batch_munmaps - a.batch_munmaps, 2);
  char* small = hak_alloc_at(1 * MiB, SITE(62));    /* ... so this one is fresh too */
  EXPECT_EQ_U(stats().os_mapped_bytes - b.os_mapped_bytes, 4 * MiB);
  hak_free_at(big, SITE(61));
  hak_free_at(small, SITE(62));
  EXPECT_EQ_U(_hak_madvq_check(), 0);
}

TEST(double_free_of_a_cached_block_is_reported) {
  setup(4, 256 * MiB, 100000, 1024 * MiB, 256, 100000, 1024 * MiB);
  _hak_options[HAK_OPT_ON_ERROR] = 1; /* report and go on */
  char* p = hak_alloc_at(2 * MiB, SITE(60));
  hak_stats_t a = stats();
  hak_free_at(p, SITE(60));
  hak_free_at(p, SITE(60)); /* p sits in BigCache: still a double free */
  hak_stats_t b = stats();
  EXPECT_EQ_U(b.errors_double_free - a.errors_double_free, 1);
  EXPECT_EQ_U(b.bigcache_puts - a.bigcache_puts, 1);
  EXPECT_EQ_U(_hak_bigcache_check(&(size_t){0}), 0);
  _hak_options[HAK_OPT_ON_ERROR] = 0;
}

/* A huge block freed and unmapped whose range another huge block's mapping
 * took since: a second free of its pointer (inside the new block, not its
 * start) is a double free, not a wild pointer (review R's dfree2.c; the
 * recently-freed ring tells).  The new mapping is put there by a map that
 * takes the old range's address. */
static uintptr_t map_at;
static void* map_at_fixed(void* hint, size_t size) {
  if (map_at == 0) return _hak_os_default.map(hint, size); /* once */
  void* p = mmap((void*)map_at, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  map_at = 0;
  return p == MAP_FAILED ? NULL : p;
}
TEST(a_second_free_of_a_huge_block_whose_range_another_took_is_a_double_free) {
  setup(4, 256 * MiB, 100000, 1024 * MiB, 256, 100000, 1024 * MiB);
  _hak_options[HAK_OPT_ON_ERROR] = 1; /* report and go on */
  char* p = hak_alloc_at(24 * MiB, SITE(250));
  ASSERT_NOT_NULL(p);
  uintptr_t base = (uintptr_t)p - _hak_huge_offset(24 * MiB, 0);
  hak_free_at(p, SITE(250));
  hak_collect(); /* unmapped */
  map_at = base;
  fake_os.map = map_at_fixed;
  char* q = hak_alloc_at(40 * MiB, SITE(251)); /* its mapping starts where p's did */
  fake_os.map = _hak_os_default.map;
  ASSERT_NOT_NULL(q);
  ASSERT_TRUE((uintptr_t)q < (uintptr_t)p && (uintptr_t)p < (uintptr_t)q + 40 * MiB);
  hak_stats_t a = stats();
  hak_free_at(p, SITE(250));
  hak_stats_t b = stats();
  EXPECT_EQ_U(b.errors_double_free - a.errors_double_free, 1);
  EXPECT_EQ_U(b.errors_invalid_free - a.errors_invalid_free, 0);
  hak_free_at(q, SITE(251));
  EXPECT_EQ_U(hak_check_heap(), 0);
  _hak_options[HAK_OPT_ON_ERROR] = 0;
}

/* THP=always: the first 2 MiB of a huge mapping holds only the header
 * (blocks of 2 MiB and more start 2 MiB in): it must not become a huge
 * page when the header is written.  Not under THP=madvise. */
TEST(thp_always_keeps_the_header_off_a_huge_page) {
  setup(4, 64 * MiB, 2000, 8 * MiB, 256, 100, 64 * MiB);
  bool saved = _hak_thp_always;
  _hak_thp_always = true;
  nohuge_base = 0;
  char* p = hak_malloc(20 * MiB); /* past BigCache's classes: a fresh mapping */
  ASSERT_NOT_NULL(p);
  uintptr_t base = (uintptr_t)p & ~(uintptr_t)HAK_SEGMENT_MASK;
  EXPECT_TRUE(nohuge_base == base);
  EXPECT_EQ_U(nohuge_size, 2 * MiB);
  hak_free(p);
  hak_collect();
  _hak_thp_always = false;
  nohuge_base = 0;
  p = hak_malloc(20 * MiB);
  ASSERT_NOT_NULL(p);
  EXPECT_TRUE(nohuge_base == 0);
  hak_free(p);
  _hak_thp_always = saved;
  hak_collect();
  _hak_os = &_hak_os_default;
}

TEST_MAIN()
