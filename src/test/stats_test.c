/* Statistics output: JSON lines are written whole. */
#include <fcntl.h>
#include <sys/wait.h>

#include "src/hakmem.h"
#include "src/internal.h"
#include "src/test/test.h"

/* Found by the preload test: a JSON line longer than the output buffer went
 * out in two writes, and processes appending to one file interleaved. */
TEST(stats_json_lines_stay_whole_when_processes_append_together) {
  /* evolving mode with the learners started: the line carries the ELO table */
  _hak_options[HAK_OPT_MODE] = 1;
  static int site;
  for (int i = 0; i < 64; i++) hak_free_at(hak_alloc_at(3 << 20, &site), &site);
  char path[] = "/tmp/hakmem-stats-XXXXXX";
  int fd = mkstemp(path);
  ASSERT_TRUE(fd >= 0);
  close(fd);
  enum { KIDS = 6, LINES = 40 };
  for (int k = 0; k < KIDS; k++) {
    if (fork() == 0) {
      int f = open(path, O_WRONLY | O_APPEND);
      for (int i = 0; i < LINES; i++) hak_stats_print(f, 1);
      _exit(0);
    }
  }
  for (int k = 0; k < KIDS; k++) wait(NULL);
  FILE* f = fopen(path, "r");
  ASSERT_TRUE(f != NULL);
  static char line[65536];
  int n = 0;
  size_t longest = 0;
  while (fgets(line, sizeof(line), f)) {
    n++;
    size_t len = strlen(line);
    if (len > longest) longest = len;
    int depth = 0, ok = strncmp(line, "{\"pid\":", 7) == 0 && len > 3 && strcmp(line + len - 3, "}}\n") == 0;
    for (size_t i = 0; i < len && ok; i++) {
      depth += line[i] == '{' ? 1 : line[i] == '}' ? -1 : 0;
      if (depth < 0) ok = 0;
    }
    if (!ok || depth != 0) HAK_FAIL_AT("line %d is not one whole JSON object: %.80s", n, line);
  }
  fclose(f);
  unlink(path);
  EXPECT_EQ_U(n, KIDS * LINES);
  EXPECT_TRUE(longest > 1024); /* longer than the old buffer */
}

TEST_MAIN()
