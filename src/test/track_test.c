/* The tools see inside hakmem's heap (track.h): a one-byte overflow, a use
 * after free and an uninitialized read of blocks hakmem served, on every
 * tier, are reported by the tool the test was built for -- ASan, MSan, or
 * memcheck (HAK_TRACK_VALGRIND, run under valgrind) -- each in a child,
 * whose report is checked.  A child that the tool did not stop exits 0 and
 * fails the test. */
#include "src/hakmem.h"
#include "src/internal.h"
#include "src/test/test.h"

#if defined(HAK_TRACK_ASAN)
#define TOOL "asan"
#elif defined(HAK_TRACK_MSAN)
#define TOOL "msan"
#elif defined(HAK_TRACK_VALGRIND)
#define TOOL "memcheck"
#else
/* Under another --config (TSan, UBSan) this target is built but not run
 * (tagged no_<config>): there is no tool to check. */
#define TOOL "none"
#endif

static const size_t sizes[] = {24, 1000, 40000, 300u << 10, 3u << 20}; /* small, mid, large, huge */
#define NSIZES (sizeof(sizes) / sizeof(sizes[0]))
static volatile int sink;

/* The byte just past the requested size. */
static size_t edge(void* p, size_t n) { return n; }

__attribute__((noinline)) static void child_overflow(void* arg) {
  size_t n = *(size_t*)arg;
  char* p = hak_malloc(n);
  ((volatile char*)p)[edge(p, n)] = 1; /* one byte too far */
  _exit(0);
}

__attribute__((noinline)) static void child_use_after_free(void* arg) {
  size_t n = *(size_t*)arg;
  char* p = hak_malloc(n);
  memset(p, 1, n);
  hak_free(p);
  sink = ((volatile char*)p)[n / 2 < HAK_TRACK_HEADER ? HAK_TRACK_HEADER : n / 2]; /* freed (past the header
                                                                                hakmem keeps using) */
  _exit(0);
}

/* A write after free just past the requested size (the block's slack,
 * where HAKMEM_SECURE keeps its canary and fill). */
__attribute__((noinline)) static void child_write_slack_after_free(void* arg) {
  size_t n = *(size_t*)arg;
  char* p = hak_malloc(n);
  hak_free(p);
  ((volatile char*)p)[edge(p, n)] = 1;
  _exit(0);
}

__attribute__((noinline)) static void child_uninitialized(void* arg) {
  size_t n = *(size_t*)arg;
  char* p = hak_malloc(n);
  if (p[n / 2] == 42) sink = 1; /* a branch on a never-written byte */
  _exit(0);
}

#if defined(HAK_TRACK_VALGRIND)
/* memcheck writes to the log it opened at start, not to the child's fd 2:
 * track_valgrind.sh gives each process its own log file (%p). */
static int run_child_vg(void (*fn)(void*), void* arg, char* out, size_t cap) {
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid == 0) {
    fn(arg);
    _exit(0);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  char path[512];
  snprintf(path, sizeof(path), "%s/vg.%d", getenv("TRACK_VG_LOGDIR"), (int)pid);
  FILE* f = fopen(path, "r");
  size_t len = f ? fread(out, 1, cap - 1, f) : 0;
  if (f) fclose(f);
  out[len] = 0;
  return st;
}
#define hak_run_child run_child_vg
#endif

/* A child must not exit 0 and its stderr must hold every string of want. */
static void expect_report(void (*fn)(void*), size_t n, const char* what, const char* const* want) {
  char out[16384];
  int st = hak_run_child(fn, &n, out, sizeof(out));
  if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
    HAK_FAIL_AT("%s of %zu bytes: %s did not report it", what, n, TOOL);
    return;
  }
  for (int i = 0; want[i]; i++)
    if (strstr(out, want[i]) == NULL) HAK_FAIL_AT("%s of %zu bytes: report lacks \"%s\": %.1500s", what, n, want[i], out);
}

TEST(overflow_by_one_is_reported) {
#if defined(HAK_TRACK_ASAN)
  static const char* const want[] = {"AddressSanitizer: use-after-poison", "child_overflow", NULL};
#elif defined(HAK_TRACK_VALGRIND)
  static const char* const want[] = {"Invalid write of size 1", "0 bytes after a block of size", "hak_malloc", NULL};
#else
  static const char* const want[] = {NULL}; /* MSan does not track addressability */
  return;
#endif
  for (size_t i = 0; i < NSIZES; i++) expect_report(child_overflow, sizes[i], "overflow", want);
}

TEST(use_after_free_is_reported) {
#if defined(HAK_TRACK_ASAN)
  static const char* const want[] = {"AddressSanitizer: use-after-poison", "child_use_after_free", NULL};
#elif defined(HAK_TRACK_VALGRIND)
  static const char* const want[] = {"Invalid read of size 1", "free'd", "hak_free", NULL};
#else
  static const char* const want[] = {NULL};
  return;
#endif
  for (size_t i = 0; i < NSIZES; i++) expect_report(child_use_after_free, sizes[i], "use after free", want);
}

TEST(write_after_free_past_the_size_is_reported) {
#if defined(HAK_TRACK_ASAN)
  static const char* const want[] = {"AddressSanitizer: use-after-poison", "child_write_slack_after_free", NULL};
#elif defined(HAK_TRACK_VALGRIND)
  static const char* const want[] = {"Invalid write of size 1", "child_write_slack_after_free", NULL};
#else
  static const char* const want[] = {NULL};
  return;
#endif
  for (size_t i = 0; i < NSIZES; i++) expect_report(child_write_slack_after_free, sizes[i], "write after free past the size", want);
}

TEST(uninitialized_read_is_reported) {
#if defined(HAK_TRACK_MSAN)
  static const char* const want[] = {"MemorySanitizer: use-of-uninitialized-value", "child_uninitialized",
                                     "Memory was marked as uninitialized", "hak_malloc", NULL};
#elif defined(HAK_TRACK_VALGRIND)
  static const char* const want[] = {"Conditional jump or move depends on uninitialised value", "child_uninitialized",
                                     NULL};
#else
  static const char* const want[] = {NULL}; /* ASan does not track initialization */
  return;
#endif
  for (size_t i = 0; i < NSIZES; i++) expect_report(child_uninitialized, sizes[i], "uninitialized read", want);
}

/* The tool stays quiet on correct use: calloc, realloc's copy, usable size. */
TEST(correct_use_is_not_reported) {
  for (size_t i = 0; i < NSIZES; i++) {
    char* p = hak_calloc(1, sizes[i]);
    ASSERT_NOT_NULL(p);
    int z = 0;
    for (size_t k = 0; k < sizes[i]; k += 97) z |= p[k];
    EXPECT_EQ_U(z, 0);
    memset(p, 3, sizes[i]);
    p = hak_realloc(p, sizes[i] * 2 + 1);
    ASSERT_NOT_NULL(p);
    EXPECT_EQ_U(p[sizes[i] - 1], 3);
    size_t u = hak_usable_size(p);
    memset(p, 4, u);
    hak_free(p);
  }
  EXPECT_EQ_U(hak_check_heap(), 0);
}

int main(int argc, char** argv) {
#if !HAK_TRACKING
  fprintf(stderr, "track_test was built without ASan, MSan or Valgrind tracking: nothing to check\n");
  return 1;
#endif
#if defined(HAK_TRACK_VALGRIND)
  if (!RUNNING_ON_VALGRIND || getenv("TRACK_VG_LOGDIR") == NULL) {
    fprintf(stderr, "track_test (memcheck) must run under valgrind (src/test/track_valgrind.sh)\n");
    return 1;
  }
#endif
  return hak_test_main(argc, argv);
}
