/* A library that, like many real ones (a logging or RPC runtime), registers
 * pthread_atfork handlers that allocate.  Loaded before the allocator's own
 * constructor runs, its prepare handler runs after the allocator's: the
 * allocator must let the forking thread allocate between prepare and
 * parent/child (issue 10, item 1). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static void* keep;

static void prepare(void) {
  /* the forking thread's first malloc (a new heap), a block large enough
   * for a new segment, and a huge block freed (the batch queue) */
  void* a = malloc(64);
  void* b = malloc(3u << 20);
  void* c = malloc(200u << 10);
  memset(a, 1, 64);
  free(b);
  keep = c;
  free(a);
}
static void parent(void) {
  free(keep);
  keep = malloc(128);
}
static void child(void) {
  free(keep);
  keep = malloc(256);
}

__attribute__((constructor)) static void atfork_lib_init(void) { pthread_atfork(prepare, parent, child); }

/* The program calls this so the linker keeps the library. */
__attribute__((visibility("default"))) int atfork_lib_present(void) { return 1; }
