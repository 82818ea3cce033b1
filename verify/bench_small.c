/* Small-object benchmark, run unchanged under each allocator by LD_PRELOAD.
 *   bench_small st  OPS   one thread: random sizes 16..1024 B replacing
 *                         random slots of a live set of 10,000 blocks
 *   bench_small hot OPS   one thread: allocate 64 blocks of random sizes
 *                         16..1024 B, free them, repeat (all blocks stay in
 *                         cache: the cost of the fast paths themselves)
 *   bench_small xt  OPS   two threads: each allocates batches of 64 blocks
 *                         of random sizes 16..1024 B and hands them to the
 *                         other thread, which frees them (cross-thread frees)
 * Prints "<mode> <ops> <seconds> <ns/op>"; an op is one malloc or one free. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "verify/bench_util.h"


static size_t small_size(uint64_t* s) { return 16 + (size_t)(rnd(s) % 1009); }

static double bench_st(long ops) {
  enum { LIVE = 10000 };
  static char* slot[LIVE];
  uint64_t s = 88172645463325252ULL;
  for (int i = 0; i < LIVE; i++) {
    slot[i] = malloc(small_size(&s));
    slot[i][0] = (char)i;
  }
  double t0 = now();
  for (long i = 0; i < ops / 2; i++) {
    size_t k = (size_t)(rnd(&s) % LIVE);
    free(slot[k]);
    size_t n = small_size(&s);
    slot[k] = malloc(n);
    slot[k][0] = (char)i;
    slot[k][n - 1] = (char)i;
  }
  double t = now() - t0;
  for (int i = 0; i < LIVE; i++) free(slot[i]);
  return t;
}

static double bench_hot(long ops) {
  enum { N = 64 };
  char* b[N];
  size_t sz[N];
  uint64_t s = 88172645463325252ULL;
  for (int k = 0; k < N; k++) sz[k] = small_size(&s);
  double t0 = now();
  for (long i = 0; i < ops / (2 * N); i++) {
    for (int k = 0; k < N; k++) {
      b[k] = malloc(sz[k]);
      b[k][0] = (char)k;
    }
    for (int k = 0; k < N; k++) free(b[(k * 37) % N]); /* 37 is coprime to 64 */
  }
  return now() - t0;
}

#define BATCH 64
#define QUEUE 256 /* batches in flight per direction (power of two) */

/* Single-producer single-consumer ring of batches, lock-free, so that the
 * hand-off costs little next to the allocator. */
typedef struct {
  _Atomic(unsigned long) head, tail;
  char** batch[QUEUE];
} queue_t;

static queue_t queues[2];
static long xt_batches;
static pthread_barrier_t xt_done; /* the other thread read our last batch */

static void queue_push(queue_t* q, char** b) {
  unsigned long t = atomic_load_explicit(&q->tail, memory_order_relaxed);
  while (t - atomic_load_explicit(&q->head, memory_order_acquire) == QUEUE) sched_yield();
  q->batch[t % QUEUE] = b;
  atomic_store_explicit(&q->tail, t + 1, memory_order_release);
}

static char** queue_pop(queue_t* q) {
  unsigned long h = atomic_load_explicit(&q->head, memory_order_relaxed);
  while (atomic_load_explicit(&q->tail, memory_order_acquire) == h) sched_yield();
  char** b = q->batch[h % QUEUE];
  atomic_store_explicit(&q->head, h + 1, memory_order_release);
  return b;
}

static void* xt_thread(void* arg) {
  int me = (int)(intptr_t)arg;
  uint64_t s = 0x9E3779B97F4A7C15ULL * (uint64_t)(me + 1);
  enum { POOL = 2 * QUEUE + 2 };
  static char** pools[2][POOL];
  char*** pool = pools[me];
  for (int i = 0; i < POOL; i++) pool[i] = malloc(BATCH * sizeof(char*));
  for (long i = 0; i < xt_batches; i++) {
    char** b = pool[i % POOL];
    for (int k = 0; k < BATCH; k++) {
      size_t n = small_size(&s);
      b[k] = malloc(n);
      b[k][0] = (char)k;
      b[k][n - 1] = (char)k;
    }
    queue_push(&queues[1 - me], b);
    char** theirs = queue_pop(&queues[me]);
    for (int k = 0; k < BATCH; k++) free(theirs[k]); /* cross-thread */
  }
  /* our last batches are in the other thread's hands until it is done:
   * freeing their arrays before was a use after free (hakmem reported the
   * garbage pointers read from them as double frees) */
  pthread_barrier_wait(&xt_done);
  for (int i = 0; i < POOL; i++) free(pool[i]);
  return NULL;
}

static double bench_xt(long ops) {
  xt_batches = ops / (2 * 2 * BATCH);
  pthread_barrier_init(&xt_done, NULL, 2);
  pthread_t t[2];
  double t0 = now();
  for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, xt_thread, (void*)(intptr_t)i);
  for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
  return now() - t0;
}

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s st|xt [ops]\n", argv[0]);
    return 2;
  }
  long ops = argc > 2 ? atol(argv[2]) : 20000000;
  double t;
  if (strcmp(argv[1], "st") == 0) t = bench_st(ops);
  else if (strcmp(argv[1], "xt") == 0) t = bench_xt(ops);
  else if (strcmp(argv[1], "hot") == 0) t = bench_hot(ops);
  else {
    fprintf(stderr, "unknown mode %s\n", argv[1]);
    return 2;
  }
  printf("%s %ld %.4f %.2f\n", argv[1], ops, t, t * 1e9 / (double)ops);
  return 0;
}
