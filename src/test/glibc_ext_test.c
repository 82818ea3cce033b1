/* glibc's extensions to the malloc API (issue 10, item 12), through the
 * shim: they must describe and act on hakmem's heap, not glibc's idle
 * arena. */
#include <errno.h>
#include <malloc.h>

#include "src/hakmem.h"
#include "src/internal.h"
#include "src/test/test.h"

static hak_stats_t stats(void) {
  hak_stats_t st;
  hak_stats_get(&st);
  return st;
}

TEST(malloc_trim_gives_hakmems_memory_back) {
  enum { N = 1 << 19 };
  static void* p[N];
  for (int i = 0; i < N; i++) p[i] = malloc(100); /* 64 MiB of pages */
  for (int i = 0; i < N; i++) free(p[i]);
  void* big = malloc(5u << 20);
  free(big); /* BigCache */
  uint64_t before = stats().os_mapped_bytes;
  size_t keep = mallinfo2().keepcost; /* cached segments, BigCache, retained */
  EXPECT_TRUE(keep >= (8u << 20));
  EXPECT_EQ_U(malloc_trim(0), 1);
  uint64_t after = stats().os_mapped_bytes;
  EXPECT_TRUE(after + keep <= before);
  EXPECT_EQ_U(mallinfo2().keepcost, 0);
  EXPECT_EQ_U(malloc_trim(0), 0); /* nothing more to give */
}

/* Memory given back inside live segments (free slice runs decommitted,
 * nothing unmapped) counts as memory that went back.  (Review L's
 * trim1.c: RSS 102 -> 11 MiB, malloc_trim returned 0.) */
TEST(malloc_trim_counts_what_it_decommits_inside_live_segments) {
  enum { N = 1 << 19, KEEP = 4096 };
  static void* p[N];
  /* no purge tick in between (HAKMEM_SECURE=2's frees are slow enough for
   * the 25 ms delay to pass while they run: CI on a01121a, a tick had
   * purged all but a few MiB before the trim) */
  long delay = _hak_options[HAK_OPT_PURGE_DELAY_MS];
  _hak_options[HAK_OPT_PURGE_DELAY_MS] = 3600 * 1000;
  malloc_trim(0); /* nothing cached from earlier tests */
  for (int i = 0; i < N; i++) p[i] = malloc(100); /* 16 segments of pages */
  for (int i = 0; i < N; i++)
    if (i % KEEP != 0) free(p[i]); /* every segment keeps live blocks */
  hak_stats_t a = stats();
  EXPECT_EQ_U(malloc_trim(0), 1);
  hak_stats_t b = stats();
  EXPECT_TRUE(b.purge_bytes - a.purge_bytes >= (16u << 20));
  EXPECT_EQ_U(b.os_mapped_bytes, a.os_mapped_bytes); /* nothing unmapped: segments stay */
  for (int i = 0; i < N; i += KEEP) free(p[i]);
  _hak_options[HAK_OPT_PURGE_DELAY_MS] = delay;
}

TEST(mallinfo_describes_hakmems_heap) {
  void* big = malloc(9u << 20);
  void* small = malloc(1000);
  struct mallinfo2 mi = mallinfo2();
  EXPECT_TRUE(mi.hblks >= 1);
  EXPECT_TRUE(mi.hblkhd >= (9u << 20));
  EXPECT_TRUE(mi.arena >= (4u << 20)); /* at least one segment */
  EXPECT_TRUE(mi.uordblks + mi.fordblks <= mi.arena);
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  struct mallinfo old = mallinfo(); /* deprecated, still called by programs */
#pragma GCC diagnostic pop
  EXPECT_EQ_U((size_t)old.hblks, mi.hblks);
  free(big);
  free(small);
}

TEST(mallopt_is_accepted_as_glibc_does) {
  EXPECT_EQ_U(mallopt(M_MMAP_THRESHOLD, 1 << 20), 1);
  EXPECT_EQ_U(mallopt(M_TRIM_THRESHOLD, 1 << 20), 1);
  EXPECT_EQ_U(mallopt(M_ARENA_MAX, 2), 1);
  EXPECT_EQ_U(mallopt(M_MXFAST, 1 << 20), 0); /* out of glibc's range */
}

static void print_stats(void* arg) { malloc_stats(); }
TEST(malloc_stats_prints_hakmems_statistics) {
  char out[16384];
  hak_run_child(print_stats, NULL, out, sizeof(out));
  EXPECT_TRUE(strstr(out, "hakmem statistics") != NULL && strstr(out, "served.small") != NULL);
}

TEST(malloc_info_writes_xml) {
  char* buf = NULL;
  size_t len = 0;
  FILE* f = open_memstream(&buf, &len);
  ASSERT_TRUE(f != NULL);
  EXPECT_EQ_U(malloc_info(0, f), 0);
  fclose(f);
  EXPECT_TRUE(buf != NULL && strstr(buf, "<malloc version=\"hakmem-1\">") != NULL && strstr(buf, "</malloc>") != NULL);
  free(buf);
  errno = 0;
  EXPECT_TRUE(malloc_info(1, stderr) == -1 && errno == EINVAL);
}

/* A pointer hakmem did not allocate (as ld.so's, from before hakmem was
 * loaded) is reported, never freed into hakmem. */
static char foreign[64] __attribute__((aligned(16)));
static void free_foreign(void* arg) { free(foreign); }
TEST(foreign_pointer_is_reported) { EXPECT_DEATH(free_foreign, NULL, "invalid pointer", foreign); }

TEST_MAIN()
