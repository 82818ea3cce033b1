/* verify:replay TRACE...: runs traces (see trace.h) through hakmem with the
 * shadow heap and the invariant checker; exit 1 on the first violation. */
#include <stdio.h>

#include "verify/trace.h"

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s TRACE...\n", argv[0]);
    return 2;
  }
  for (int i = 1; i < argc; i++) {
    FILE* f = fopen(argv[i], "r");
    if (f == NULL) {
      perror(argv[i]);
      return 2;
    }
    trace_t t;
    bool parsed = trace_parse(&t, f);
    fclose(f);
    if (!parsed) return 2;
    bool ok = trace_run(&t, 0x5eed);
    printf("%s: %zu ops, %d threads: %s\n", argv[i], t.n, t.threads, ok ? "ok" : "VIOLATION");
    trace_free(&t);
    if (!ok) return 1;
  }
  return 0;
}
