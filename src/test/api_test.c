/* API conformance: every entry point, every tier, every bad input.
 * Built twice from this file: against the hak_* API (api_test, runs under
 * every sanitizer) and against the libc names with the malloc shim linked
 * in (shim_test, -DUSE_SHIM), which adds the functions only the shim has. */
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "src/hakmem.h"
#include "src/test/test.h"

#ifdef USE_SHIM
#define M_MALLOC malloc
#define M_FREE free
#define M_CALLOC calloc
#define M_REALLOC realloc
#define M_ALIGNED aligned_alloc
#define M_USABLE malloc_usable_size
#else
#define M_MALLOC hak_malloc
#define M_FREE hak_free
#define M_CALLOC hak_calloc
#define M_REALLOC hak_realloc
#define M_ALIGNED hak_aligned_alloc
#define M_USABLE hak_usable_size
#endif

#define KiB ((size_t)1024)
#define MiB (1024 * KiB)

/* Sizes that cross every tier boundary: fast table, size classes, large
 * runs, huge mappings. */
static const size_t tier_sizes[] = {
    0,       1,        15,       16,       17,      100,       128,     129,           1000,
    1024,    1025,     4095,     4096,     8192,    8193,      32 * KiB, 32 * KiB + 1, 100 * KiB,
    128 * KiB, 128 * KiB + 1, 300 * KiB, 1 * MiB, 2 * MiB - 1, 2 * MiB, 2 * MiB + 1, 5 * MiB,
    17 * MiB,
};
#define N_TIER_SIZES (sizeof(tier_sizes) / sizeof(tier_sizes[0]))

static void fill(void* p, size_t n, unsigned seed) {
  unsigned char* c = p;
  for (size_t i = 0; i < n; i++) c[i] = (unsigned char)(seed + i * 131);
}
static bool check(const void* p, size_t n, unsigned seed) {
  const unsigned char* c = p;
  for (size_t i = 0; i < n; i++)
    if (c[i] != (unsigned char)(seed + i * 131)) return false;
  return true;
}

TEST(malloc_zero_returns_distinct_pointers) {
  void* p[64];
  for (int i = 0; i < 64; i++) {
    p[i] = M_MALLOC(0);
    ASSERT_NOT_NULL(p[i]);
    for (int j = 0; j < i; j++) EXPECT_TRUE(p[i] != p[j]);
  }
  for (int i = 0; i < 64; i++) M_FREE(p[i]);
}

TEST(every_tier_aligned_and_full_usable_size_writable) {
  for (size_t i = 0; i < N_TIER_SIZES; i++) {
    size_t n = tier_sizes[i];
    unsigned char* p = M_MALLOC(n);
    ASSERT_NOT_NULL(p);
    EXPECT_EQ_U((uintptr_t)p % 16, 0);
    size_t u = M_USABLE(p);
    EXPECT_TRUE(u >= n);
    fill(p, u, (unsigned)i);
    EXPECT_TRUE(check(p, u, (unsigned)i));
    M_FREE(p);
  }
}

TEST(free_null_and_usable_size_null) {
  M_FREE(NULL);
  EXPECT_EQ_U(M_USABLE(NULL), 0);
}

TEST(aligned_alloc_every_alignment) {
  static const size_t sizes[] = {1, 24, 100, 5000, 70 * KiB, 200 * KiB, 3 * MiB};
  for (size_t align = 16; align <= 8 * MiB; align <<= 1) {
    for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
      void* p = M_ALIGNED(align, sizes[s]);
      ASSERT_NOT_NULL(p);
      EXPECT_EQ_U((uintptr_t)p % align, 0);
      EXPECT_TRUE(M_USABLE(p) >= sizes[s]);
      fill(p, sizes[s], 7);
      EXPECT_TRUE(check(p, sizes[s], 7));
      M_FREE(p);
    }
  }
}

/* Found by api_fuzzer: a zero-size request with an alignment above the
 * slice size produced a zero-byte block at the end of its run. */
TEST(aligned_zero_size_in_every_tier) {
  for (size_t align = 16; align <= 16 * MiB; align <<= 1) {
    void* p = M_ALIGNED(align, 0);
    ASSERT_NOT_NULL(p);
    EXPECT_EQ_U((uintptr_t)p % align, 0);
    EXPECT_TRUE(M_USABLE(p) >= 1);
    *(volatile char*)p = 1;
    M_FREE(p);
  }
}

TEST(aligned_alloc_bad_alignment_is_einval) {
  size_t bad[] = {0, 3, 24, 48, 100};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    errno = 0;
    EXPECT_TRUE(M_ALIGNED(bad[i], 64) == NULL);
    EXPECT_EQ_U(errno, EINVAL);
  }
}

TEST(realloc_across_all_tiers_keeps_contents) {
  unsigned char* p = NULL;
  size_t have = 0;
  /* grow through every tier, then shrink back */
  for (int dir = 0; dir < 2; dir++) {
    for (size_t k = 0; k < N_TIER_SIZES; k++) {
      size_t n = tier_sizes[dir == 0 ? k : N_TIER_SIZES - 1 - k];
      if (n == 0) continue;
      unsigned char* q = M_REALLOC(p, n);
      ASSERT_NOT_NULL(q);
      size_t keep = have < n ? have : n;
      EXPECT_TRUE(check(q, keep, 3));
      fill(q, n, 3);
      p = q;
      have = n;
    }
  }
  M_FREE(p);
}

TEST(realloc_null_is_malloc_and_zero_frees) {
  void* p = M_REALLOC(NULL, 100);
  ASSERT_NOT_NULL(p);
  EXPECT_TRUE(M_USABLE(p) >= 100);
  EXPECT_TRUE(M_REALLOC(p, 0) == NULL); /* glibc semantics: freed */
}

TEST(calloc_zero_even_when_reusing_freed_blocks) {
  for (size_t i = 0; i < N_TIER_SIZES; i++) {
    size_t n = tier_sizes[i];
    for (int round = 0; round < 3; round++) {
      unsigned char* p = M_MALLOC(n);
      ASSERT_NOT_NULL(p);
      memset(p, 0xAB, M_USABLE(p));
      M_FREE(p);
      unsigned char* z = M_CALLOC(1, n);
      ASSERT_NOT_NULL(z);
      for (size_t b = 0; b < n; b++)
        if (z[b] != 0) {
          HAK_FAIL_AT("calloc(%zu) byte %zu is %d", n, b, z[b]);
          break;
        }
      M_FREE(z);
    }
  }
}

TEST(size_overflow_is_enomem) {
  errno = 0;
  EXPECT_TRUE(M_MALLOC(SIZE_MAX) == NULL);
  EXPECT_EQ_U(errno, ENOMEM);
  errno = 0;
  EXPECT_TRUE(M_MALLOC((size_t)PTRDIFF_MAX + 1) == NULL);
  EXPECT_EQ_U(errno, ENOMEM);
  errno = 0;
  EXPECT_TRUE(M_CALLOC(SIZE_MAX / 2, 3) == NULL);
  EXPECT_EQ_U(errno, ENOMEM);
  errno = 0;
  EXPECT_TRUE(M_CALLOC((size_t)1 << 32, (size_t)1 << 32) == NULL);
  EXPECT_EQ_U(errno, ENOMEM);
  errno = 0;
  EXPECT_TRUE(M_ALIGNED(64, SIZE_MAX - 10) == NULL);
  EXPECT_EQ_U(errno, ENOMEM);
  errno = 0;
  EXPECT_TRUE(M_ALIGNED(4096, (size_t)PTRDIFF_MAX) == NULL);
  EXPECT_EQ_U(errno, ENOMEM);
  /* realloc that cannot grow leaves the block intact */
  unsigned char* p = M_MALLOC(64);
  ASSERT_NOT_NULL(p);
  fill(p, 64, 9);
  errno = 0;
  EXPECT_TRUE(M_REALLOC(p, SIZE_MAX) == NULL);
  EXPECT_EQ_U(errno, ENOMEM);
  EXPECT_TRUE(check(p, 64, 9));
  M_FREE(p);
}

TEST(many_live_blocks_do_not_overlap) {
  enum { N = 20000 };
  static unsigned char* p[N];
  static size_t sz[N];
  static unsigned id[N];
  uint64_t rng = 42;
  for (int i = 0; i < N; i++) {
    uint64_t r = hak_test_rand(&rng);
    sz[i] = (r % 16 == 0) ? r % (300 * KiB) : r % 2048;
    p[i] = M_MALLOC(sz[i]);
    ASSERT_NOT_NULL(p[i]);
    id[i] = (unsigned)i;
    fill(p[i], sz[i], id[i]);
  }
  for (int i = 0; i < N; i++)
    if (!check(p[i], sz[i], id[i])) HAK_FAIL_AT("block %d (size %zu) overwritten", i, sz[i]);
  /* free in a shuffled order, re-allocating half of them on the way */
  for (int i = N - 1; i > 0; i--) {
    int j = (int)(hak_test_rand(&rng) % (uint64_t)(i + 1));
    unsigned char* t = p[i]; p[i] = p[j]; p[j] = t;
    size_t s = sz[i]; sz[i] = sz[j]; sz[j] = s;
    unsigned d = id[i]; id[i] = id[j]; id[j] = d;
  }
  /* free half, allocate fresh blocks in their place, then check everything */
  for (int i = 0; i < N; i += 2) {
    M_FREE(p[i]);
    sz[i] = hak_test_rand(&rng) % 4096;
    p[i] = M_MALLOC(sz[i]);
    ASSERT_NOT_NULL(p[i]);
    fill(p[i], sz[i], id[i]);
  }
  EXPECT_EQ_U(hak_check_heap(), 0);
  for (int i = 0; i < N; i++) {
    if (!check(p[i], sz[i], id[i])) HAK_FAIL_AT("block %u (size %zu) overwritten", id[i], sz[i]);
    M_FREE(p[i]);
  }
  EXPECT_EQ_U(hak_check_heap(), 0);
}

/* ---- misuse: death tests ------------------------------------------------ */
static void* g_addr;

static void double_free_now(void* arg) {
  void* p = M_MALLOC((size_t)(uintptr_t)arg);
  g_addr = p;
  M_FREE(p);
  M_FREE(p);
}

static void double_free_after_others(void* arg) {
  size_t n = (size_t)(uintptr_t)arg;
  void* keep[8];
  void* p = M_MALLOC(n);
  for (int i = 0; i < 8; i++) keep[i] = M_MALLOC(n);
  M_FREE(p);
  for (int i = 0; i < 8; i++) M_FREE(keep[i]);
  M_FREE(p);
}

/* the block's page (small, large) or mapping (huge) given back to the OS
 * before the second free: the freed tag is gone with the memory */
static void double_free_after_collect(void* arg) {
  void* p = M_MALLOC((size_t)(uintptr_t)arg);
  M_FREE(p);
  hak_collect();
  M_FREE(p);
}

/* A block of another class in p's segment (4 MiB aligned), or NULL: new
 * pages of other bins go where the heap has room. */
static void* keep_near(const void* p, size_t size) {
  void* spare[160];
  void* got = NULL;
  int n = 0;
  for (size_t s = 24; got == NULL && n < 160; s += 40) {
    /* a large block: another one of its size is another run (or page) */
    void* q = M_MALLOC(size >= 64 * KiB && n % 2 ? size : s);
    if (((uintptr_t)q >> 22) == ((uintptr_t)p >> 22)) got = q;
    else spare[n++] = q;
  }
  while (n > 0) M_FREE(spare[--n]);
  return got;
}

/* the same with a block of another class kept in the segment: the block's
 * page or run retired and purged, the segment still mapped */
static void double_free_after_collect_kept(void* arg) {
  void* p = M_MALLOC((size_t)(uintptr_t)arg);
  void* keep = keep_near(p, (size_t)(uintptr_t)arg);
  if (keep == NULL) keep = M_MALLOC((size_t)(uintptr_t)arg); /* none: one of its own size (its page, when the
                                                              heap has no room elsewhere, stays live then) */
  M_FREE(p);
  hak_collect();
  M_FREE(p);
  M_FREE(keep);
}

/* an interior pointer of such a block: still an invalid pointer (the
 * review's misdiag.c: the first version called any aligned pointer into a
 * freed slice a double free) */
static void interior_after_collect_kept(void* arg) {
  char* p = M_MALLOC((size_t)(uintptr_t)arg);
  void* keep = keep_near(p, (size_t)(uintptr_t)arg);
  /* no neighbour (a heap with no room left in p's segment, HAKMEM_SECURE's
   * placement): the segment may go, where any aligned pointer reads as a
   * double free (README); the interior pointer of the live block then */
  if (keep == NULL) M_FREE(p + 16);
  M_FREE(p);
  hak_collect();
  M_FREE(p + 16);
  M_FREE(keep);
}

/* a huge block realloc moved to a larger mapping: the old pointer is freed */
static void free_after_realloc_moved(void* arg) {
  size_t n = (size_t)(uintptr_t)arg;
  void* p = M_MALLOC(n);
  void* q = M_REALLOC(p, 2 * n);
  if (q == NULL || q == p) _exit(3); /* not moved: nothing to test */
  M_FREE(p);
}
static void realloc_after_realloc_moved(void* arg) {
  size_t n = (size_t)(uintptr_t)arg;
  void* p = M_MALLOC(n);
  void* q = M_REALLOC(p, 2 * n);
  if (q == NULL || q == p) _exit(3);
  (void)M_REALLOC(p, 10);
}

static void free_pointer(void* arg) { M_FREE(arg); }
static void realloc_pointer(void* arg) { (void)M_REALLOC(arg, 10); }
static void usable_size_of_freed(void* arg) {
  void* p = M_MALLOC((size_t)(uintptr_t)arg);
  M_FREE(p);
  (void)M_USABLE(p);
}
static void realloc_freed(void* arg) {
  void* p = M_MALLOC((size_t)(uintptr_t)arg);
  M_FREE(p);
  (void)M_REALLOC(p, 1);
}

static const size_t misuse_sizes[] = {1, 48, 1000, 5000, 100 * KiB, 600 * KiB, 3 * MiB};
#define N_MISUSE (sizeof(misuse_sizes) / sizeof(misuse_sizes[0]))

TEST(double_free_is_reported_on_every_tier) {
  for (size_t i = 0; i < N_MISUSE; i++) {
    void* arg = (void*)(uintptr_t)misuse_sizes[i];
    EXPECT_DEATH(double_free_now, arg, "double free in free(", NULL);
    EXPECT_DEATH(double_free_after_others, arg, "double free in free(", NULL);
  }
}

static void double_free_told(void* arg) {
  void* p = M_MALLOC(40);
  char buf[64];
  int n = snprintf(buf, sizeof(buf), "block (%p)\n", p); /* snprintf: no allocation */
  (void)!write(2, buf, (size_t)n);
  M_FREE(p);
  M_FREE(p);
}

TEST(double_free_is_reported_after_the_memory_went_back) {
  for (size_t i = 0; i < N_MISUSE; i++) {
    EXPECT_DEATH(double_free_after_collect, (void*)(uintptr_t)misuse_sizes[i], "double free in free(", NULL);
    EXPECT_DEATH(double_free_after_collect_kept, (void*)(uintptr_t)misuse_sizes[i], "double free in free(", NULL);
    if (misuse_sizes[i] > 16) /* past a 16-byte block, p + 16 is the next block */
      EXPECT_DEATH(interior_after_collect_kept, (void*)(uintptr_t)misuse_sizes[i], "invalid pointer (not allocated by hakmem) in free(", NULL);
  }
  /* past BigCache's classes, moved by mremap (or copied: the same) */
  EXPECT_DEATH(free_after_realloc_moved, (void*)(uintptr_t)(20 * MiB), "double free in free(", NULL);
  EXPECT_DEATH(realloc_after_realloc_moved, (void*)(uintptr_t)(20 * MiB), "double free in realloc(", NULL);
}

TEST(double_free_message_names_the_address) {
  /* the child tells its block's address (HAKMEM_SECURE carves in a random
   * order: the parent cannot know it) */
  char out[4096];
  int st = hak_run_child(double_free_told, NULL, out, sizeof(out));
  EXPECT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
  const char* told = strstr(out, "block (");
  const char* line = strstr(out, "hakmem: error: double free in free(");
  ASSERT_TRUE(told != NULL && line != NULL);
  char addr[40];
  snprintf(addr, sizeof(addr), "%.*s", (int)strcspn(told + 6, "\n"), told + 6);
  if (strstr(line, addr) == NULL) HAK_FAIL_AT("the report does not name %s: %s", addr, out);
}

static int a_static[16];

TEST(invalid_pointers_are_reported) {
  int on_stack[16];
  EXPECT_DEATH(free_pointer, on_stack, "invalid pointer (not allocated by hakmem) in free(", on_stack);
  EXPECT_DEATH(free_pointer, a_static, "invalid pointer", a_static);
  EXPECT_DEATH(free_pointer, (void*)(uintptr_t)0x1000, "invalid pointer", (void*)0x1000);
  EXPECT_DEATH(free_pointer, (void*)(uintptr_t)0xdeadbeef000ULL, "invalid pointer", NULL);
  EXPECT_DEATH(free_pointer, (void*)(uintptr_t)0xffff800000000000ULL, "invalid pointer", NULL);
  for (size_t i = 0; i < N_MISUSE; i++) {
    unsigned char* p = M_MALLOC(misuse_sizes[i]);
    ASSERT_NOT_NULL(p);
    EXPECT_DEATH(free_pointer, p + 1, "invalid pointer", p + 1);  /* misaligned */
    EXPECT_DEATH(free_pointer, p + 8, "invalid pointer", p + 8);   /* interior  */
    if (misuse_sizes[i] > 16) EXPECT_DEATH(free_pointer, p + 16, "invalid pointer", p + 16);
    if (misuse_sizes[i] >= 8192) EXPECT_DEATH(free_pointer, p + 4096, "invalid pointer", p + 4096);
    EXPECT_DEATH(realloc_pointer, p + 8, "invalid pointer (not allocated by hakmem) in realloc(", p + 8);
    M_FREE(p);
  }
  EXPECT_DEATH(realloc_pointer, on_stack, "in realloc(", on_stack);
}

TEST(freed_blocks_are_reported_by_usable_size_and_realloc) {
  for (size_t i = 0; i < N_MISUSE; i++) {
    void* arg = (void*)(uintptr_t)misuse_sizes[i];
    EXPECT_DEATH(usable_size_of_freed, arg, "use of freed block in malloc_usable_size(", NULL);
    EXPECT_DEATH(realloc_freed, arg, "double free in realloc(", NULL);
  }
}

/* HAKMEM_ON_ERROR=report: the same misuse is reported, the process goes on
 * and nothing else is disturbed.  Runs in a re-executed child. */
TEST(child_report_mode) {
  hak_stats_t before, after;
  hak_stats_get(&before);
  for (size_t i = 0; i < N_MISUSE; i++) {
    size_t n = misuse_sizes[i];
    unsigned char* keep = M_MALLOC(n);
    unsigned char* p = M_MALLOC(n);
    ASSERT_TRUE(keep && p);
    fill(keep, n, 5);
    M_FREE(p);
    M_FREE(p);               /* double free: reported, ignored */
    M_FREE(keep + 8);        /* interior: reported, ignored    */
    EXPECT_TRUE(M_REALLOC(keep + 8, 8) == NULL);
    EXPECT_TRUE(check(keep, n, 5));
    EXPECT_TRUE(M_USABLE(keep) >= n);
    /* the allocator still works and keeps handing out distinct blocks */
    unsigned char* q = M_MALLOC(n);
    unsigned char* r = M_MALLOC(n);
    ASSERT_TRUE(q && r && q != r && q != keep && r != keep);
    M_FREE(q);
    M_FREE(r);
    M_FREE(keep);
  }
  hak_stats_get(&after);
  EXPECT_EQ_U(after.errors_double_free - before.errors_double_free, N_MISUSE);
  EXPECT_EQ_U(after.errors_invalid_free - before.errors_invalid_free, 2 * N_MISUSE);
}

static const char* self_path = "/proc/self/exe";

static void run_report_child(void* arg) {
  setenv("HAKMEM_ON_ERROR", "report", 1);
  dup2(2, 1); /* the child's own test report goes to the captured stream */
  /* argv[0], not /proc/self/exe: under valgrind that names valgrind's tool */
  execl(self_path, "api_test", "child_report_mode", (char*)NULL);
  execl("/proc/self/exe", "api_test", "child_report_mode", (char*)NULL);
  _exit(127);
}

TEST(report_mode_continues_after_misuse) {
  char out[16384];
  int st = hak_run_child(run_report_child, NULL, out, sizeof(out));
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  EXPECT_TRUE(strstr(out, "double free in free(") != NULL);
  EXPECT_TRUE(strstr(out, "], ignored") != NULL);
  if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0)) fprintf(stderr, "child output:\n%s\n", out);
}

TEST(stats_count_what_was_served) {
  hak_stats_t a, b;
  hak_stats_get(&a);
  void* s = M_MALLOC(100);
  void* l = M_MALLOC(500 * KiB);
  void* h = M_MALLOC(4 * MiB);
  M_FREE(s);
  M_FREE(l);
  M_FREE(h);
  hak_stats_get(&b);
  EXPECT_TRUE(b.served_small > a.served_small);
  EXPECT_EQ_U(b.served_large - a.served_large, 1);
  EXPECT_EQ_U(b.served_huge - a.served_huge, 1);
  EXPECT_EQ_U(b.freed_huge - a.freed_huge, 1);
  EXPECT_EQ_U(b.freed_large - a.freed_large, 1);
}

TEST(call_sites_are_recorded) {
  int site_a, site_b;
  for (int i = 0; i < 10; i++) hak_free_at(hak_alloc_at(400 * KiB, &site_a), &site_a);
  hak_free_at(hak_alloc_at(3 * MiB, &site_b), &site_b);
  hak_site_info_t info[1024];
  size_t n = hak_sites_get(info, 1024);
  bool found_a = false, found_b = false;
  for (size_t i = 0; i < n; i++) {
    if (info[i].site == &site_a) {
      found_a = true;
      EXPECT_EQ_U(info[i].allocs, 10);
      EXPECT_EQ_U(info[i].frees, 10);
      EXPECT_EQ_U(info[i].bytes, 10 * 400 * KiB);
    }
    if (info[i].site == &site_b) found_b = info[i].allocs == 1;
  }
  EXPECT_TRUE(found_a);
  EXPECT_TRUE(found_b);
}

/* More sites than the table holds: hot sites met after 1,100 one-off
 * sites are tracked and keep their counts (review K: with twice as many
 * index slots as entries, 41-54 of 100 were, the others untracked for
 * good or evicting each other among one or two candidates; the first
 * table and this one: 89-98, as the addresses hash).  In a child: the
 * table stays full. */
static char fill_sites[1100], hot_sites[100];
static void hot_sites_after_a_full_table(void) {
  for (int i = 0; i < 1100; i++) hak_free_at(hak_alloc_at(200 * KiB, &fill_sites[i]), &fill_sites[i]);
  for (int r = 0; r < 200; r++)
    for (int i = 0; i < 100; i++) hak_free_at(hak_alloc_at(200 * KiB, &hot_sites[i]), &hot_sites[i]);
  static hak_site_info_t info[1024];
  size_t n = hak_sites_get(info, 1024);
  int tracked = 0;
  for (size_t i = 0; i < n; i++) {
    const char* site = info[i].site;
    tracked += site >= hot_sites && site < hot_sites + 100 && info[i].allocs >= 190;
  }
  fprintf(stderr, "%zu sites listed, hot sites tracked %d of 100\n", n, tracked);
  CHILD_CHECK(tracked >= 80);
  CHILD_CHECK(hak_check_heap() == 0);
}
TEST(hot_sites_are_tracked_beyond_a_full_table) { EXPECT_CHILD_OK(hot_sites_after_a_full_table, 60); }

#ifdef USE_SHIM
TEST(shim_serves_malloc) {
  hak_stats_t a, b;
  hak_stats_get(&a);
  void* p[1000];
  for (int i = 0; i < 1000; i++) p[i] = malloc(32);
  for (int i = 0; i < 1000; i++) free(p[i]);
  char* s = strdup("served by hakmem?"); /* libc-internal malloc */
  hak_stats_get(&b);
  EXPECT_TRUE(b.served_small - a.served_small >= 1001);
  EXPECT_TRUE(hak_usable_size(s) >= 18);
  free(s);
}

TEST(posix_memalign_contract) {
  void* p = (void*)0x1234;
  EXPECT_EQ_U(posix_memalign(&p, 3, 64), EINVAL);
  EXPECT_EQ_U(posix_memalign(&p, 4, 64), EINVAL); /* not a multiple of sizeof(void*) */
  EXPECT_EQ_U(posix_memalign(&p, 24, 64), EINVAL);
  EXPECT_TRUE(p == (void*)0x1234);                /* untouched */
  EXPECT_EQ_U(posix_memalign(&p, 8, 64), 0);
  EXPECT_EQ_U((uintptr_t)p % 8, 0);
  free(p);
  for (size_t a = 8; a <= 4 * MiB; a <<= 1) {
    ASSERT_EQ_U(posix_memalign(&p, a, a + 1), 0);
    EXPECT_EQ_U((uintptr_t)p % a, 0);
    memset(p, 1, a + 1);
    free(p);
  }
  p = (void*)0x1234;
  EXPECT_EQ_U(posix_memalign(&p, 64, SIZE_MAX - 100), ENOMEM);
  EXPECT_TRUE(p == (void*)0x1234);
}

TEST(memalign_valloc_pvalloc_reallocarray) {
  size_t page = (size_t)getpagesize();
  void* p = memalign(64, 100);
  EXPECT_EQ_U((uintptr_t)p % 64, 0);
  free(p);
  volatile size_t odd = 48;
  p = memalign(odd, 100); /* glibc rounds to 64 */
  ASSERT_NOT_NULL(p);
  EXPECT_EQ_U((uintptr_t)p % 64, 0);
  free(p);
  p = valloc(10);
  EXPECT_EQ_U((uintptr_t)p % page, 0);
  free(p);
  p = pvalloc(1);
  EXPECT_EQ_U((uintptr_t)p % page, 0);
  EXPECT_TRUE(malloc_usable_size(p) >= page);
  free(p);
  p = pvalloc(0);
  ASSERT_NOT_NULL(p);
  free(p);
  errno = 0;
  EXPECT_TRUE(memalign(64, SIZE_MAX) == NULL);
  EXPECT_EQ_U(errno, ENOMEM);
  /* as glibc: rounded up to 2^63 (no memory), or past SIZE_MAX / 2 + 1 */
  volatile size_t odd_huge = ((size_t)1 << 62) + 1, past = ((size_t)1 << 63) + 1;
  errno = 0;
  EXPECT_TRUE(memalign(odd_huge, 16) == NULL);
  EXPECT_EQ_U(errno, ENOMEM);
  errno = 0;
  EXPECT_TRUE(memalign(past, 16) == NULL);
  EXPECT_EQ_U(errno, EINVAL);
  errno = 0;
  EXPECT_TRUE(pvalloc(SIZE_MAX) == NULL);
  EXPECT_EQ_U(errno, ENOMEM);
  errno = 0;
  EXPECT_TRUE(valloc(SIZE_MAX) == NULL);
  EXPECT_EQ_U(errno, ENOMEM);
  errno = 0;
  EXPECT_TRUE(aligned_alloc(64, SIZE_MAX) == NULL);
  EXPECT_EQ_U(errno, ENOMEM);
  int* a = reallocarray(NULL, 10, sizeof(int));
  ASSERT_NOT_NULL(a);
  for (int i = 0; i < 10; i++) a[i] = i;
  errno = 0;
  EXPECT_TRUE(reallocarray(a, SIZE_MAX / 2, 4) == NULL);
  EXPECT_EQ_U(errno, ENOMEM);
  a = reallocarray(a, 1000, sizeof(int));
  ASSERT_NOT_NULL(a);
  for (int i = 0; i < 10; i++) EXPECT_EQ_U(a[i], i);
  free(a);
}
#endif

int main(int argc, char** argv) {
  if (strchr(argv[0], '/') != NULL) self_path = argv[0];
  return hak_test_main(argc, argv);
}
