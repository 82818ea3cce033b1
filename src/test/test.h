/* A tiny test framework: TEST(name) { ... } blocks registered by
 * constructor, EXPECT_* (record and continue) and ASSERT_* (stop the test),
 * plus death tests that run a function in a forked child and check how it
 * died and what it printed on stderr. */
#ifndef HAK_TEST_H
#define HAK_TEST_H

#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

typedef void (*hak_test_fn)(void);
typedef struct {
  const char* name;
  hak_test_fn fn;
} hak_test_case;

#define HAK_TEST_MAX 256
static hak_test_case hak_tests[HAK_TEST_MAX];
static int hak_test_count;
static int hak_test_failed_checks;
static const char* hak_test_current;

#define TEST(name)                                                          \
  static void test_##name(void);                                            \
  __attribute__((constructor)) static void register_##name(void) {          \
    hak_tests[hak_test_count++] = (hak_test_case){#name, test_##name};      \
  }                                                                         \
  static void test_##name(void)

#define HAK_FAIL_AT(...)                                                    \
  do {                                                                      \
    fprintf(stderr, "%s:%d: [%s] ", __FILE__, __LINE__, hak_test_current);  \
    fprintf(stderr, __VA_ARGS__);                                           \
    fprintf(stderr, "\n");                                                  \
    hak_test_failed_checks++;                                               \
  } while (0)

#define EXPECT_TRUE(c) do { if (!(c)) HAK_FAIL_AT("expected %s", #c); } while (0)
#define ASSERT_TRUE(c) do { if (!(c)) { HAK_FAIL_AT("assertion %s", #c); return; } } while (0)
#define EXPECT_EQ_U(a, b) do { uint64_t _a = (uint64_t)(a), _b = (uint64_t)(b); \
    if (_a != _b) HAK_FAIL_AT("%s == %s: %" PRIu64 " != %" PRIu64, #a, #b, _a, _b); } while (0)
#define ASSERT_EQ_U(a, b) do { uint64_t _a = (uint64_t)(a), _b = (uint64_t)(b); \
    if (_a != _b) { HAK_FAIL_AT("%s == %s: %" PRIu64 " != %" PRIu64, #a, #b, _a, _b); return; } } while (0)
#define ASSERT_NOT_NULL(p) ASSERT_TRUE((p) != NULL)

/* Runs fn(arg) in a child with stderr captured.  Returns the wait status and
 * copies the child's stderr into out (NUL terminated). */
/* An empty file made for a test: path receives /tmp/<stem>-XXXXXX
 * (cap >= strlen(stem) + 12); false if it could not be made. */
static inline bool hak_temp_file(char* path, size_t cap, const char* stem) {
  if (snprintf(path, cap, "/tmp/%s-XXXXXX", stem) >= (int)cap) return false;
  int fd = mkstemp(path);
  if (fd < 0) return false;
  close(fd);
  return true;
}

static inline int hak_run_child(void (*fn)(void*), void* arg, char* out, size_t cap) {
  int fds[2];
  if (pipe(fds) != 0) return -1;
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    dup2(fds[1], 2);
    fn(arg);
    _exit(0);
  }
  close(fds[1]);
  size_t len = 0;
  ssize_t n;
  while (len + 1 < cap && (n = read(fds[0], out + len, cap - 1 - len)) > 0) len += (size_t)n;
  out[len] = 0;
  char sink[256];
  while (read(fds[0], sink, sizeof(sink)) > 0) {
  }
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return status;
}

/* The child must die of SIGABRT having printed `want` (and, if addr is not
 * NULL, the address in hex). */
#define EXPECT_DEATH(fn, arg, want, addr)                                          \
  do {                                                                             \
    char _out[4096];                                                               \
    int _st = hak_run_child(fn, arg, _out, sizeof(_out));                          \
    if (!(WIFSIGNALED(_st) && WTERMSIG(_st) == SIGABRT))                            \
      HAK_FAIL_AT("%s: child did not abort (status %d), stderr: %s", #fn, _st, _out); \
    if (strstr(_out, want) == NULL) HAK_FAIL_AT("%s: stderr lacks \"%s\": %s", #fn, want, _out); \
    if ((addr) != NULL) {                                                          \
      char _hex[32];                                                               \
      snprintf(_hex, sizeof(_hex), "(%p)", (void*)(addr));                         \
      if (strstr(_out, _hex) == NULL) HAK_FAIL_AT("%s: stderr lacks address %s: %s", #fn, _hex, _out); \
    }                                                                              \
  } while (0)

/* Liveness bound of a child: a hang is reported as HANG, not a timeout. */
static void hak_test_on_alarm(int sig) {
  static const char msg[] = "HANG: the child did not finish before its alarm\n";
  (void)!write(2, msg, sizeof(msg) - 1);
  _exit(3);
}
static void (*hak_bounded_fn)(void);
static unsigned hak_bounded_secs;
static inline void hak_bounded_child(void* arg) {
  (void)arg;
  signal(SIGALRM, hak_test_on_alarm);
  alarm(hak_bounded_secs);
  hak_bounded_fn();
  _exit(0);
}

/* Runs fn() in a child that must exit 0 within secs seconds; its stderr is
 * shown when it does not.  CHILD_CHECK fails the child with the line. */
#define EXPECT_CHILD_OK(fn, secs)                                                            \
  do {                                                                                       \
    char _out[8192];                                                                         \
    hak_bounded_fn = fn;                                                                     \
    hak_bounded_secs = secs;                                                                 \
    int _st = hak_run_child(hak_bounded_child, NULL, _out, sizeof(_out));                    \
    if (!WIFEXITED(_st) || WEXITSTATUS(_st) != 0)                                            \
      HAK_FAIL_AT("%s: child %s %d, stderr: %s", #fn, WIFEXITED(_st) ? "exited" : "killed by signal", \
                  WIFEXITED(_st) ? WEXITSTATUS(_st) : WTERMSIG(_st), _out);                  \
    else if (getenv("HAK_TEST_VERBOSE")) fprintf(stderr, "%s: %s", #fn, _out);              \
  } while (0)
#define CHILD_CHECK(c)                                                  \
  do {                                                                  \
    if (!(c)) {                                                         \
      fprintf(stderr, "failed: %s (line %d)\n", #c, __LINE__);          \
      _exit(1);                                                         \
    }                                                                   \
  } while (0)

/* A test whose subject exists at hardening level 0 only (BigCache, pages
 * kept for their bin, the invariant checker's planted BigCache slots,
 * learned routing that depends on them: level 2 turns them off or changes
 * them on purpose) runs at level 0 when .ci/run sets HAKMEM_SECURE for the
 * whole suite: a constructor rewrites the variable in place and executes
 * the test again (libc's start-up may already have allocated through the
 * shim, which read the options). */
#define HAK_TEST_AT_LEVEL_0_ONLY()                                                    \
  __attribute__((constructor(101))) static void hak_test_level0(int argc, char** argv, char** envp) { \
    (void)argc;                                                                      \
    for (char** e = envp; e != NULL && *e != NULL; e++)                              \
      if (strncmp(*e, "HAKMEM_SECURE=", 14) == 0 && strcmp(*e + 14, "0") != 0) {     \
        (*e)[14] = '0', (*e)[15] = '\0';                                             \
        execve("/proc/self/exe", argv, envp);                                        \
        perror("execve /proc/self/exe");                                            \
        _exit(2);                                                                    \
      }                                                                              \
  }

static inline int hak_test_main(int argc, char** argv) {
  const char* only = argc > 1 ? argv[1] : NULL;
  int failed_tests = 0, ran = 0;
  for (int i = 0; i < hak_test_count; i++) {
    if (only && strcmp(only, hak_tests[i].name) != 0) continue;
    /* child_* tests are bodies of re-executed children: run only by name */
    if (!only && strncmp(hak_tests[i].name, "child_", 6) == 0) continue;
    hak_test_current = hak_tests[i].name;
    int before = hak_test_failed_checks;
    hak_tests[i].fn();
    ran++;
    int bad = hak_test_failed_checks != before;
    failed_tests += bad;
    printf("[%s] %s\n", bad ? "FAIL" : " OK ", hak_tests[i].name);
    fflush(stdout);
  }
  printf("%d tests, %d failed\n", ran, failed_tests);
  return failed_tests == 0 && ran > 0 ? 0 : 1;
}

#define TEST_MAIN() \
  int main(int argc, char** argv) { return hak_test_main(argc, argv); }

/* Deterministic PRNG for tests (xorshift64*). */
static inline uint64_t hak_test_rand(uint64_t* s) {
  uint64_t x = *s;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *s = x;
  return x * 0x2545F4914F6CDD1DULL;
}

/* Sanitizer builds are slower: tests scale their loops by this. */
#if defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer) || __has_feature(memory_sanitizer)
#define HAK_TEST_SCALE 4
#endif
#endif
#ifndef HAK_TEST_SCALE
#define HAK_TEST_SCALE 1
#endif

/* Tests that touch big blocks touch one byte per this many: every page,
 * but under TSan one per 64 KiB (a page first touched faults in its shadow
 * too: tens of MiB per iteration made such tests take minutes). */
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define HAK_TEST_PAGE_STRIDE 65536
#endif
#endif
#ifndef HAK_TEST_PAGE_STRIDE
#define HAK_TEST_PAGE_STRIDE 4096
#endif

#endif
