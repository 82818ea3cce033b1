/* A C host that opens a C++ plugin (argv[1], RTLD_LOCAL or, with argv[2] ==
 * "global", RTLD_GLOBAL) and runs it: prints whether libstdc++ was mapped
 * before the plugin (it must not be: hakmem does not load it into C
 * programs) and what the plugin returned (111: bad_alloc caught after one
 * new_handler call, and nothrow new gave NULL). */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

static int libstdcxx_mapped(void) {
  FILE* f = fopen("/proc/self/maps", "r");
  char line[512];
  int found = 0;
  while (f != NULL && fgets(line, sizeof(line), f))
    if (strstr(line, "libstdc++") != NULL) found = 1;
  if (f != NULL) fclose(f);
  return found;
}

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  int before = libstdcxx_mapped();
  int mode = argc > 2 && strcmp(argv[2], "global") == 0 ? RTLD_GLOBAL : RTLD_LOCAL;
  void* h = dlopen(argv[1], RTLD_NOW | mode);
  if (h == NULL) {
    printf("dlopen: %s\n", dlerror());
    return 1;
  }
  int (*run)(void) = (int (*)(void))dlsym(h, "plugin_run");
  int r = run != NULL ? run() : -1;
  printf("libstdc++ before the plugin: %d; plugin: %d\n", before, r);
  return before == 0 && r == 111 ? 0 : 1;
}
