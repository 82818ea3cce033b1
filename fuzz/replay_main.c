/* Replays files (or every file of directories) through a fuzz target's
 * LLVMFuzzerTestOneInput: the corpus and regression test of bazel test,
 * and a way to reproduce a finding without libFuzzer.  Fails if it found
 * nothing to replay. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

static int replay_file(const char* path) {
  FILE* f = fopen(path, "rb");
  if (f == NULL) {
    perror(path);
    exit(2);
  }
  static uint8_t buf[1 << 20];
  size_t n = fread(buf, 1, sizeof(buf), f);
  fclose(f);
  LLVMFuzzerTestOneInput(buf, n);
  return 1;
}

static int cmp(const void* a, const void* b) { return strcmp(*(char* const*)a, *(char* const*)b); }

static int replay(const char* path) {
  struct stat st;
  if (stat(path, &st) != 0) {
    fprintf(stderr, "replay: %s does not exist, skipped\n", path);
    return 0;
  }
  if (!S_ISDIR(st.st_mode)) return replay_file(path);
  DIR* d = opendir(path);
  struct dirent* e;
  char* names[4096];
  int n = 0, done = 0;
  while ((e = readdir(d)) != NULL && n < 4096)
    if (e->d_name[0] != '.') names[n++] = strdup(e->d_name);
  closedir(d);
  qsort(names, (size_t)n, sizeof(char*), cmp);
  for (int i = 0; i < n; i++) {
    char full[4096];
    snprintf(full, sizeof(full), "%s/%s", path, names[i]);
    done += replay(full);
    free(names[i]);
  }
  return done;
}

int main(int argc, char** argv) {
  int done = 0;
  for (int i = 1; i < argc; i++) done += replay(argv[i]);
  printf("replayed %d inputs\n", done);
  return done > 0 ? 0 : 1;
}
