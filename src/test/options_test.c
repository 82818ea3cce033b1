/* Options: junk and out-of-range values are reported and the default kept;
 * good values (with k/m/g suffixes) are taken; README.md's options table is
 * exactly what the code's table prints. */
#include "src/internal.h"
#include "src/test/test.h"

static char captured[4096];

static void reload_child(void* arg) {
  (void)arg;
  _hak_options_reload();
}

/* Sets NAME=VALUE, re-reads the options, and returns the option's value;
 * stderr of the re-read lands in captured. */
static long with_env(const char* name, const char* value, hak_option_t opt) {
  setenv(name, value, 1);
  hak_run_child(reload_child, NULL, captured, sizeof(captured));
  _hak_options_reload();
  unsetenv(name);
  long v = hak_option(opt);
  _hak_options_reload();
  return v;
}

#define EXPECT_REJECTED(name, value, opt, def)                                       \
  do {                                                                               \
    EXPECT_EQ_U(with_env(name, value, opt), def);                                     \
    if (strstr(captured, "hakmem: warning: " name "=") == NULL ||                    \
        strstr(captured, "is invalid; using the default") == NULL)                   \
      HAK_FAIL_AT("no warning for %s=%s: \"%s\"", name, value, captured);            \
  } while (0)

#define EXPECT_TAKEN(name, value, opt, want)          \
  do {                                                \
    EXPECT_EQ_U(with_env(name, value, opt), want);    \
    if (captured[0] != 0) HAK_FAIL_AT("unexpected warning: %s", captured); \
  } while (0)

TEST(defaults_without_environment) {
  _hak_options_reload();
  EXPECT_EQ_U(hak_option(HAK_OPT_ON_ERROR), 0);
  EXPECT_EQ_U(hak_option(HAK_OPT_STATS), 0);
  EXPECT_EQ_U(hak_option(HAK_OPT_SEGMENT_CACHE), 4);
  EXPECT_EQ_U(hak_option(HAK_OPT_HUGE_THRESHOLD), 2 << 20);
  EXPECT_TRUE(_hak_stats_file == NULL);
}

TEST(good_values_are_taken) {
  EXPECT_TAKEN("HAKMEM_ON_ERROR", "report", HAK_OPT_ON_ERROR, 1);
  EXPECT_TAKEN("HAKMEM_ON_ERROR", "abort", HAK_OPT_ON_ERROR, 0);
  EXPECT_TAKEN("HAKMEM_STATS", "json", HAK_OPT_STATS, 2);
  EXPECT_TAKEN("HAKMEM_STATS", "1", HAK_OPT_STATS, 1);
  EXPECT_TAKEN("HAKMEM_STATS", "text", HAK_OPT_STATS, 1);
  EXPECT_TAKEN("HAKMEM_SEGMENT_CACHE", "0", HAK_OPT_SEGMENT_CACHE, 0);
  EXPECT_TAKEN("HAKMEM_SEGMENT_CACHE", "1024", HAK_OPT_SEGMENT_CACHE, 1024);
  EXPECT_TAKEN("HAKMEM_HUGE_THRESHOLD", "4m", HAK_OPT_HUGE_THRESHOLD, 4 << 20);
  EXPECT_TAKEN("HAKMEM_HUGE_THRESHOLD", "512K", HAK_OPT_HUGE_THRESHOLD, 512 << 10);
  EXPECT_TAKEN("HAKMEM_HUGE_THRESHOLD", "262144", HAK_OPT_HUGE_THRESHOLD, 262144);
}

TEST(junk_and_out_of_range_keep_the_default) {
  EXPECT_REJECTED("HAKMEM_ON_ERROR", "bogus", HAK_OPT_ON_ERROR, 0);
  EXPECT_REJECTED("HAKMEM_ON_ERROR", "", HAK_OPT_ON_ERROR, 0);
  EXPECT_REJECTED("HAKMEM_ON_ERROR", "REPORT ", HAK_OPT_ON_ERROR, 0);
  EXPECT_REJECTED("HAKMEM_STATS", "2", HAK_OPT_STATS, 0);
  EXPECT_REJECTED("HAKMEM_SEGMENT_CACHE", "-1", HAK_OPT_SEGMENT_CACHE, 4);
  EXPECT_REJECTED("HAKMEM_SEGMENT_CACHE", "1025", HAK_OPT_SEGMENT_CACHE, 4);
  EXPECT_REJECTED("HAKMEM_SEGMENT_CACHE", "12abc", HAK_OPT_SEGMENT_CACHE, 4);
  EXPECT_REJECTED("HAKMEM_SEGMENT_CACHE", "", HAK_OPT_SEGMENT_CACHE, 4);
  EXPECT_REJECTED("HAKMEM_SEGMENT_CACHE", "99999999999999999999999", HAK_OPT_SEGMENT_CACHE, 4);
  EXPECT_REJECTED("HAKMEM_HUGE_THRESHOLD", "1k", HAK_OPT_HUGE_THRESHOLD, 2 << 20);
  EXPECT_REJECTED("HAKMEM_HUGE_THRESHOLD", "9999999999g", HAK_OPT_HUGE_THRESHOLD, 2 << 20);
  EXPECT_REJECTED("HAKMEM_HUGE_THRESHOLD", "4mb", HAK_OPT_HUGE_THRESHOLD, 2 << 20);
  /* control characters are not echoed raw */
  EXPECT_REJECTED("HAKMEM_ON_ERROR", "a\033[2Jb", HAK_OPT_ON_ERROR, 0);
  EXPECT_TRUE(strchr(captured, '\033') == NULL);
}

TEST(stats_file_is_a_path) {
  setenv("HAKMEM_STATS_FILE", "/tmp/x.json", 1);
  _hak_options_reload();
  EXPECT_TRUE(_hak_stats_file != NULL && strcmp(_hak_stats_file, "/tmp/x.json") == 0);
  unsetenv("HAKMEM_STATS_FILE");
  _hak_options_reload();
  EXPECT_TRUE(_hak_stats_file == NULL);
}

/* README.md's rows starting with "| `HAKMEM_" are the code's table. */
TEST(readme_options_table_matches_the_code) {
  const char* srcdir = getenv("TEST_SRCDIR");
  const char* ws = getenv("TEST_WORKSPACE");
  char path[4096];
  snprintf(path, sizeof(path), "%s/%s/README.md", srcdir ? srcdir : ".", ws ? ws : ".");
  FILE* f = fopen(path, "r");
  ASSERT_TRUE(f != NULL);
  static char readme[8192];
  size_t len = 0;
  char line[1024];
  while (fgets(line, sizeof(line), f))
    if (strncmp(line, "| `HAKMEM_", 10) == 0 && len + strlen(line) < sizeof(readme)) {
      strcpy(readme + len, line);
      len += strlen(line);
    }
  fclose(f);
  int fds[2];
  ASSERT_TRUE(pipe(fds) == 0);
  hak_options_print_markdown(fds[1]);
  close(fds[1]);
  static char code[8192];
  ssize_t n = read(fds[0], code, sizeof(code) - 1);
  close(fds[0]);
  ASSERT_TRUE(n > 0);
  code[n] = 0;
  if (strcmp(readme, code) != 0)
    HAK_FAIL_AT("README.md options table differs from the code's:\n--- README\n%s--- code\n%s", readme, code);
}

/* ---- issue 10, item 13 --------------------------------------------------- */
#include <fcntl.h>
#include <sys/stat.h>

static char stats_path[64];
/* A program that rewrites its environment block for its process title
 * (nginx, postgres): the exit-time statistics still go to the file named
 * at start. */
static void rewrite_env_then_exit(void* arg) {
  char* v = getenv("HAKMEM_STATS_FILE");
  memset(v, 'x', strlen(v)); /* the title overwrites the environment strings */
  _hak_options[HAK_OPT_STATS] = 2;
  _hak_stats_note_stderr(); /* the pipe the test reads: this child's stderr from its start */
  _hak_stats_at_exit();
}
TEST(stats_file_survives_environment_rewrite) {
  strcpy(stats_path, "/tmp/hakmem-envtitle-XXXXXX");
  int fd = mkstemp(stats_path);
  ASSERT_TRUE(fd >= 0);
  close(fd);
  setenv("HAKMEM_STATS_FILE", stats_path, 1);
  _hak_options_reload();
  char out[4096];
  hak_run_child(rewrite_env_then_exit, NULL, out, sizeof(out));
  unsetenv("HAKMEM_STATS_FILE");
  _hak_options_reload();
  struct stat st;
  EXPECT_TRUE(stat(stats_path, &st) == 0 && st.st_size > 100);
  EXPECT_TRUE(strstr(out, "cannot open") == NULL);
  unlink(stats_path);
}

/* Exit statistics without a file go to the stderr the program started
 * with, never to a file it opened on fd 2 after closing stderr (review L's
 * fd2.c: 70 lines of statistics appended to a data file). */
static char data_path[64];
static void reopen_fd2_then_exit(void* arg) {
  (void)arg;
  _hak_options[HAK_OPT_STATS] = 1;
  _hak_stats_note_stderr(); /* the pipe: this child's stderr from its start */
  _hak_stats_at_exit();     /* printed: the same stderr */
  close(2);
  int fd = open(data_path, O_WRONLY | O_APPEND);
  if (fd != 2) _exit(7);
  _hak_stats_at_exit(); /* fd 2 is a data file now: nothing */
  _hak_stats_file = "/nonexistent/hakmem/stats"; /* cannot be opened: no falling back to that fd 2 either */
  _hak_stats_at_exit();
  _exit(0);
}
TEST(exit_statistics_never_go_to_a_file_opened_on_fd_2) {
  ASSERT_TRUE(hak_temp_file(data_path, sizeof(data_path), "hakmem-fd2"));
  char out[16384];
  int st = hak_run_child(reopen_fd2_then_exit, NULL, out, sizeof(out));
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  EXPECT_TRUE(strstr(out, "hakmem statistics") != NULL);
  struct stat sb;
  EXPECT_TRUE(stat(data_path, &sb) == 0);
  EXPECT_EQ_U((uint64_t)sb.st_size, 0);
  unlink(data_path);
}

/* HAKMEM_STATS_FILE=/dev/stderr is whatever fd 2 is at exit (a program
 * that sends stderr to its log on purpose); a reader that went away costs
 * the report, not the exit status (SIGPIPE); a FIFO nobody reads is no
 * reason to hang at exit.  (Review N: 0 lines in the log; status 141; a
 * hang.) */
static void named_stderr_then_exit(void* arg) {
  (void)arg;
  _hak_options[HAK_OPT_STATS] = 1;
  _hak_stats_file = "/dev/stderr"; /* fd 2: the test's pipe, not the stderr noted at start */
  _hak_stats_at_exit();
  _exit(7);
}
static char fifo_path[64];
static void closed_pipe_and_fifo_then_exit(void) {
  int p[2];
  if (pipe(p) != 0) _exit(8);
  close(p[0]);
  dup2(p[1], 2);
  _hak_stats_note_stderr();
  _hak_options[HAK_OPT_STATS] = 1;
  _hak_stats_at_exit(); /* EPIPE, not SIGPIPE */
  _hak_stats_file = fifo_path;
  _hak_stats_at_exit(); /* nobody reads it: no wait */
  _exit(7);
}
TEST(exit_statistics_go_where_they_are_sent_and_never_block_or_kill) {
  char out[16384];
  int st = hak_run_child(named_stderr_then_exit, NULL, out, sizeof(out));
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 7);
  EXPECT_TRUE(strstr(out, "hakmem statistics") != NULL);
  snprintf(fifo_path, sizeof(fifo_path), "/tmp/hakmem-fifo-%d", (int)getpid());
  unlink(fifo_path);
  ASSERT_TRUE(mkfifo(fifo_path, 0600) == 0);
  hak_bounded_fn = closed_pipe_and_fifo_then_exit;
  hak_bounded_secs = 10;
  st = hak_run_child(hak_bounded_child, NULL, out, sizeof(out));
  if (WIFSIGNALED(st)) fprintf(stderr, "killed by signal %d\n", WTERMSIG(st));
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 7);
  unlink(fifo_path);
}

/* A relative path names a file in the directory the program started in,
 * even if it changes directory before it exits (found by the review). */
static char start_dir[256], other_dir[256];
static void chdir_then_exit(void* arg) {
  if (chdir(other_dir) != 0) _exit(9);
  _hak_options[HAK_OPT_STATS] = 2;
  _hak_stats_at_exit();
}
TEST(relative_stats_file_is_the_start_directorys) {
  strcpy(start_dir, "/tmp/hakmem-cwd-XXXXXX");
  strcpy(other_dir, "/tmp/hakmem-cwd2-XXXXXX");
  ASSERT_TRUE(mkdtemp(start_dir) != NULL && mkdtemp(other_dir) != NULL);
  char old[512];
  ASSERT_TRUE(getcwd(old, sizeof(old)) != NULL);
  ASSERT_TRUE(chdir(start_dir) == 0);
  setenv("HAKMEM_STATS_FILE", "rel.json", 1);
  _hak_options_reload();
  char out[4096];
  hak_run_child(chdir_then_exit, NULL, out, sizeof(out));
  unsetenv("HAKMEM_STATS_FILE");
  _hak_options_reload();
  ASSERT_TRUE(chdir(old) == 0);
  char path[600];
  struct stat st;
  snprintf(path, sizeof(path), "%s/rel.json", start_dir);
  EXPECT_TRUE(stat(path, &st) == 0 && st.st_size > 100);
  snprintf(path, sizeof(path), "%s/rel.json", other_dir);
  EXPECT_TRUE(stat(path, &st) != 0);
  snprintf(path, sizeof(path), "rm -rf %s %s", start_dir, other_dir);
  (void)!system(path);
}

/* The statistics file is never written through a symbolic link. */
TEST(stats_file_does_not_follow_symlinks) {
  char target[] = "/tmp/hakmem-target-XXXXXX";
  int fd = mkstemp(target);
  ASSERT_TRUE(fd >= 0);
  close(fd);
  char link[64];
  snprintf(link, sizeof(link), "%s.lnk", target);
  ASSERT_TRUE(symlink(target, link) == 0);
  setenv("HAKMEM_STATS_FILE", link, 1);
  _hak_options_reload();
  char out[8192];
  hak_run_child(rewrite_env_then_exit, NULL, out, sizeof(out));
  unsetenv("HAKMEM_STATS_FILE");
  _hak_options_reload();
  struct stat st;
  EXPECT_TRUE(stat(target, &st) == 0 && st.st_size == 0);
  EXPECT_TRUE(strstr(out, "cannot open HAKMEM_STATS_FILE") != NULL);
  unlink(link);
  unlink(target);
}

/* In a set-uid/set-gid program (AT_SECURE) the options that weaken checks
 * or write files are ignored. */
TEST(secure_mode_ignores_weakening_options) {
  setenv("HAKMEM_ON_ERROR", "report", 1);
  setenv("HAKMEM_STATS_FILE", "/tmp/hakmem-secure-test", 1);
  setenv("HAKMEM_SEGMENT_CACHE", "7", 1);
  _hak_options_secure = 1;
  _hak_options_reload();
  EXPECT_EQ_U(hak_option(HAK_OPT_ON_ERROR), 0);
  EXPECT_TRUE(_hak_stats_file == NULL);
  EXPECT_EQ_U(hak_option(HAK_OPT_SEGMENT_CACHE), 7); /* harmless ones still apply */
  _hak_options_secure = -1;
  _hak_options_reload();
  EXPECT_EQ_U(hak_option(HAK_OPT_ON_ERROR), 1);
  unsetenv("HAKMEM_ON_ERROR");
  unsetenv("HAKMEM_STATS_FILE");
  unsetenv("HAKMEM_SEGMENT_CACHE");
  _hak_options_reload();
}

TEST_MAIN()
