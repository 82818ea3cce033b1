/* A library that, like many real ones (a logging or RPC runtime), registers
 * pthread_atfork handlers that allocate.  Loaded before the allocator's own
 * constructor runs, its prepare handler runs after the allocator's: the
 * allocator must let the forking thread allocate between prepare and
 * parent/child (issue 10, item 1).  Its prepare handler also takes the
 * library's own lock, which the library's worker function holds while it
 * allocates: while a fork is pending, that allocation must not wait for an
 * allocator lock the forking thread holds (found by an adversarial review:
 * the fork deadlocked). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static void* keep;
static pthread_mutex_t lib_lock = PTHREAD_MUTEX_INITIALIZER;

static void prepare(void) {
  pthread_mutex_lock(&lib_lock);
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
  pthread_mutex_unlock(&lib_lock);
}
static void child(void) {
  free(keep);
  keep = malloc(256);
  pthread_mutex_unlock(&lib_lock);
}

/* The library's own work: allocation on every tier under its lock. */
__attribute__((visibility("default"))) void atfork_lib_work(unsigned seed) {
  pthread_mutex_lock(&lib_lock);
  void* volatile a = malloc(20u << 20);                /* huge, past BigCache: the batch queue */
  void* volatile b = malloc(300u << 10 << (seed & 1)); /* large */
  void* volatile c = malloc(16u + seed % 1000);        /* small */
  free(a);
  free(b);
  free(c);
  pthread_mutex_unlock(&lib_lock);
}

__attribute__((constructor)) static void atfork_lib_init(void) { pthread_atfork(prepare, parent, child); }

/* The program calls this so the linker keeps the library. */
__attribute__((visibility("default"))) int atfork_lib_present(void) { return 1; }
