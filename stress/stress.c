/* Stress programs over hakmem's shared structures, each checking its own
 * results: every block carries a pattern derived from its id, checked when
 * it is freed (by whichever thread frees it); every block allocated is
 * freed exactly once (counted); and at checkpoints the workers stop at a
 * barrier while one of them runs hak_check_heap() on the still world.
 *
 *   stress MODE [--threads N] [--ops N | --seconds S] [--seed X]
 *   MODE: churn     random sizes over all tiers, blocks handed between
 *                   threads (all-to-all through shared slots) and through
 *                   producer/consumer rings
 *         bigcache  huge blocks from shared and private sites, a tiny
 *                   BigCache budget: evictions race with hits
 *         batch     huge blocks with tiny batch thresholds and a 1 ms
 *                   deadline; every worker calls hak_collect() every 64
 *                   ops, racing the others' frees and flushes
 *         threads   thousands of short-lived threads; their blocks freed by
 *                   the long-lived ones
 *         fork      fork() while the other threads allocate; children
 *                   allocate on every tier; realloc storms between forks
 * Prints "stress MODE: T threads, N ops in S s: R ops/s" and exits 0, or
 * names the first violation and exits 1. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "verify/bench_util.h"

#include "src/hakmem.h"
#include "src/internal.h"

#define KiB ((size_t)1024)
#define MiB (1024 * KiB)

static int nthreads = 4;
static long ops_per_thread = 20000;
static double seconds = 0;
static uint64_t seed = 1;
static const char* mode;
static double t_start;
static _Atomic(long) total_ops, allocated, freed, bad;
static pthread_barrier_t barrier;


/* A block: [size_t size][uint64_t id] then the pattern, checked at free. */
typedef struct {
  size_t size;
  uint64_t id;
} head_t;

/* Blocks above 64 KiB get one byte per stride: per page, or under TSan
 * one per 64 KiB (each page first touched costs TSan faults on its shadow
 * too, which made the huge modes' 32k blocks of up to 5 MiB take minutes;
 * the allocator's races, not the touching, are what is under test). */
#ifndef __has_feature
#define __has_feature(x) 0
#endif
#if __has_feature(thread_sanitizer) || defined(__SANITIZE_THREAD__)
#define BIG_STRIDE (64 * KiB)
#else
#define BIG_STRIDE 4096
#endif

static uint8_t pat(uint64_t id, size_t i) { return (uint8_t)((id * 0x9e3779b97f4a7c15ULL) >> 56) ^ (uint8_t)(i * 7); }

static void* block_new(size_t size, uint64_t id, const void* site) {
  if (size < sizeof(head_t)) size = sizeof(head_t);
  uint8_t* p = site ? hak_alloc_at(size, site) : hak_malloc(size);
  if (p == NULL) {
    fprintf(stderr, "stress %s: allocation of %zu failed\n", mode, size);
    exit(1);
  }
  *(head_t*)p = (head_t){size, id};
  size_t step = size > 64 * KiB ? BIG_STRIDE : 1;
  for (size_t i = sizeof(head_t); i < size; i += step) p[i] = pat(id, i);
  p[size - 1] = pat(id, size - 1);
  atomic_fetch_add(&allocated, 1);
  return p;
}

static bool block_ok(const uint8_t* p) {
  head_t h = *(const head_t*)p;
  size_t step = h.size > 64 * KiB ? BIG_STRIDE : 1;
  for (size_t i = sizeof(head_t); i < h.size; i += step)
    if (p[i] != pat(h.id, i)) return false;
  return p[h.size - 1] == pat(h.id, h.size - 1) && hak_usable_size(p) >= h.size;
}

static void block_free(void* p, const void* site) {
  if (p == NULL) return;
  if (!block_ok(p)) {
    fprintf(stderr, "stress %s: block %p (id %llu) corrupted\n", mode, p, (unsigned long long)((head_t*)p)->id);
    atomic_fetch_add(&bad, 1);
  }
  if (site) hak_free_at(p, site);
  else hak_free(p);
  atomic_fetch_add(&freed, 1);
}

/* Every thread calls this every 4096 ops; the last to arrive checks. */
static void checkpoint(void) {
  int r = pthread_barrier_wait(&barrier);
  if (r == PTHREAD_BARRIER_SERIAL_THREAD) {
    if (hak_check_heap() != 0) {
      fprintf(stderr, "stress %s: hak_check_heap found violations\n", mode);
      atomic_fetch_add(&bad, 1);
    }
  }
  pthread_barrier_wait(&barrier);
}

/* ---- churn ---------------------------------------------------------------- */
#define SLOTS 1024
static _Atomic(uintptr_t) slots[SLOTS];

static size_t churn_size(uint64_t* s) {
  uint64_t r = rnd(s);
  switch (r % 32) {
    case 0: return 128 * KiB + r % (900 * KiB);
    case 1: return r % 512 == 1 ? 2 * MiB + r % (3 * MiB) : 100;
    case 2: case 3: case 4: return 1 * KiB + r % (127 * KiB);
    default: return 16 + r % 1024;
  }
}

/* rounds of ops; all threads run the same number of rounds so the
 * checkpoint barrier is met by everyone */
static long rounds_for(void) { return seconds > 0 ? 0 : (ops_per_thread + 4095) / 4096; }
static _Atomic(int) go_on = 1;

static void round_loop(void (*body)(uint64_t*, long), uint64_t* s) {
  long rounds = rounds_for();
  for (long r = 0; seconds > 0 ? atomic_load(&go_on) : r < rounds; r++) {
    for (long i = 0; i < 4096; i++) body(s, r * 4096 + i);
    atomic_fetch_add(&total_ops, 4096);
    /* in timed runs, thread 0 decides when to stop; all see it after the barrier */
    checkpoint();
    if (seconds > 0 && now() - t_start >= seconds) atomic_store(&go_on, 0);
    pthread_barrier_wait(&barrier);
  }
}

static void churn_body(uint64_t* s, long i) {
  size_t k = rnd(s) % SLOTS;
  void* p = block_new(churn_size(s), rnd(s), NULL);
  void* old = (void*)atomic_exchange(&slots[k], (uintptr_t)p);
  block_free(old, NULL); /* allocated by any thread */
  (void)i;
}

/* ---- bigcache / batch ------------------------------------------------------- */
static int sites_shared[4], sites_private[64];

static void huge_body(uint64_t* s, long i) {
  uint64_t r = rnd(s);
  static const size_t sizes[] = {600 * KiB, 1 * MiB, 2 * MiB, 3 * MiB, 5 * MiB};
  const void* site = r & 1 ? (const void*)&sites_shared[r % 4] : (const void*)&sites_private[r % 64];
  size_t k = (r >> 8) % 64;
  void* p = block_new(sizes[(r >> 16) % 5], r, site);
  void* old = (void*)atomic_exchange(&slots[k], (uintptr_t)p);
  if (old) block_free(old, NULL);
  if (strcmp(mode, "batch") == 0 && i % 64 == 0) hak_collect(); /* races with frees */
}

/* ---- threads ---------------------------------------------------------------- */
static void* short_thread(void* arg) {
  uint64_t s = (uint64_t)(uintptr_t)arg | 1;
  for (int i = 0; i < 16; i++) {
    void* p = block_new(churn_size(&s), rnd(&s), NULL);
    void* old = (void*)atomic_exchange(&slots[rnd(&s) % SLOTS], (uintptr_t)p);
    block_free(old, NULL);
  }
  return NULL;
}

static void threads_body(uint64_t* s, long i) {
  if (i % 64 == 0) { /* spawn a short-lived thread; others free its blocks */
    pthread_t t;
    if (pthread_create(&t, NULL, short_thread, (void*)(uintptr_t)rnd(s)) == 0) pthread_join(t, NULL);
  }
  churn_body(s, i);
}

/* ---- fork + realloc storms ---------------------------------------------------- */
static void fork_body(uint64_t* s, long i) {
  if (i % 1024 == 0 && (rnd(s) & 1)) {
    pid_t pid = fork();
    if (pid == 0) {
      uint64_t cs = 99;
      for (int k = 0; k < 300; k++) {
        void* p = block_new(churn_size(&cs), k, NULL);
        if (!block_ok(p)) _exit(3);
        hak_free(p);
      }
      _exit(0);
    }
    int st = 0;
    if (pid < 0 || waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      fprintf(stderr, "stress fork: child failed (%d)\n", st);
      atomic_fetch_add(&bad, 1);
    }
  }
  /* realloc storm on a private block */
  size_t k = rnd(s) % SLOTS;
  uint8_t* p = (uint8_t*)atomic_exchange(&slots[k], 0);
  if (p) {
    if (!block_ok(p)) {
      fprintf(stderr, "stress fork: block %p corrupted before realloc\n", (void*)p);
      atomic_fetch_add(&bad, 1);
    }
    head_t h = *(head_t*)p;
    size_t n = churn_size(s);
    if (n < sizeof(head_t)) n = sizeof(head_t);
    uint8_t* q = hak_realloc(p, n);
    size_t keep = h.size < n ? h.size : n;
    size_t step = h.size > 64 * KiB ? BIG_STRIDE : 1; /* the bytes the fill wrote */
    for (size_t b = sizeof(head_t); b < keep; b += step)
      if (q[b] != pat(h.id, b)) {
        fprintf(stderr, "stress fork: realloc %p -> %p lost byte %zu of %zu\n", (void*)p, (void*)q, b, h.size);
        atomic_fetch_add(&bad, 1);
        break;
      }
    atomic_fetch_add(&freed, 1);
    p = q;
    *(head_t*)p = (head_t){n, h.id};
    for (size_t b = sizeof(head_t); b < n; b += n > 64 * KiB ? 4096 : 1) p[b] = pat(h.id, b);
    p[n - 1] = pat(h.id, n - 1);
    atomic_fetch_add(&allocated, 1);
    p = (uint8_t*)atomic_exchange(&slots[k], (uintptr_t)p);
    block_free(p, NULL);
  } else {
    churn_body(s, i);
  }
}

static void (*body)(uint64_t*, long);

static void* worker(void* arg) {
  uint64_t s = seed * 0x9e3779b97f4a7c15ULL + (uint64_t)(uintptr_t)arg * 7919 + 1;
  round_loop(body, &s);
  return NULL;
}

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s churn|bigcache|batch|threads|fork [--threads N] [--ops N | --seconds S] [--seed X]\n", argv[0]);
    return 2;
  }
  mode = argv[1];
  for (int i = 2; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--threads") == 0) nthreads = atoi(argv[i + 1]);
    else if (strcmp(argv[i], "--ops") == 0) ops_per_thread = atol(argv[i + 1]);
    else if (strcmp(argv[i], "--seconds") == 0) seconds = atof(argv[i + 1]);
    else if (strcmp(argv[i], "--seed") == 0) seed = strtoull(argv[i + 1], NULL, 0);
  }
  if (nthreads < 1 || nthreads > 64) nthreads = 4;
  if (strcmp(mode, "churn") == 0) body = churn_body;
  else if (strcmp(mode, "bigcache") == 0 || strcmp(mode, "batch") == 0) body = huge_body;
  else if (strcmp(mode, "threads") == 0) body = threads_body;
  else if (strcmp(mode, "fork") == 0) body = fork_body;
  else {
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
  }
  if (strcmp(mode, "bigcache") == 0) { /* evictions race with hits */
    _hak_options[HAK_OPT_BIGCACHE_BYTES] = 24 << 20;
    _hak_options[HAK_OPT_BIGCACHE_SLOTS] = 2;
    _hak_options[HAK_OPT_HUGE_THRESHOLD] = 512 << 10;
  }
  if (strcmp(mode, "batch") == 0) { /* flushes race with frees and collects */
    _hak_options[HAK_OPT_BIGCACHE_BYTES] = 4 << 20;
    _hak_options[HAK_OPT_BATCH_RANGES] = 2;
    _hak_options[HAK_OPT_BATCH_BYTES] = 2 << 20;
    _hak_options[HAK_OPT_BATCH_DEADLINE_MS] = 1;
    _hak_options[HAK_OPT_RETAIN_BYTES] = 8 << 20;
    _hak_options[HAK_OPT_HUGE_THRESHOLD] = 512 << 10;
  }
  fprintf(stderr, "stress %s: seed %llu (rerun with --seed %llu)\n", mode, (unsigned long long)seed,
          (unsigned long long)seed);
  hak_stats_t st0;
  hak_stats_get(&st0);
  pthread_barrier_init(&barrier, NULL, (unsigned)nthreads);
  pthread_t t[64];
  t_start = now();
  for (int i = 0; i < nthreads; i++) pthread_create(&t[i], NULL, worker, (void*)(uintptr_t)i);
  for (int i = 0; i < nthreads; i++) pthread_join(t[i], NULL);
  double elapsed = now() - t_start;
  for (int k = 0; k < SLOTS; k++) block_free((void*)atomic_exchange(&slots[k], 0), NULL);
  hak_collect();
  long a = atomic_load(&allocated), f = atomic_load(&freed);
  if (a != f) {
    fprintf(stderr, "stress %s: %ld blocks allocated, %ld freed\n", mode, a, f);
    atomic_fetch_add(&bad, 1);
  }
  if (hak_check_heap() != 0) atomic_fetch_add(&bad, 1);
  hak_stats_t st;
  hak_stats_get(&st);
  if (st.errors_double_free || st.errors_invalid_free || st.errors_corrupt) atomic_fetch_add(&bad, 1);
  /* resource oracles from hakmem's own counters: every block hakmem served
   * was freed, and after hak_collect() (everything freed, caches given
   * back) what stays mapped is bounded: the workers have exited (their
   * heaps keep nothing), main's heap its last segment, and metadata */
  uint64_t served = (st.served_small + st.served_large + st.served_huge) -
                    (st0.served_small + st0.served_large + st0.served_huge);
  uint64_t released = (st.freed_small + st.freed_large + st.freed_huge) -
                      (st0.freed_small + st0.freed_large + st0.freed_huge);
  if (served != released) {
    fprintf(stderr, "stress %s: hakmem served %llu blocks and freed %llu\n", mode, (unsigned long long)served,
            (unsigned long long)released);
    atomic_fetch_add(&bad, 1);
  }
  uint64_t bound = 2 * HAK_SEGMENT_SIZE + (8u << 20); /* the main heap's last segment, metadata */
  if (st.os_mapped_bytes > bound || st.bigcache_bytes != 0 || st.batch_retained_bytes != 0) {
    fprintf(stderr, "stress %s: after hak_collect %llu MiB stay mapped (bound %llu MiB), BigCache %llu, retained %llu\n",
            mode, (unsigned long long)(st.os_mapped_bytes >> 20), (unsigned long long)(bound >> 20),
            (unsigned long long)st.bigcache_bytes, (unsigned long long)st.batch_retained_bytes);
    atomic_fetch_add(&bad, 1);
  }
  long ops = atomic_load(&total_ops);
  printf("stress %s: %d threads, %ld ops in %.2f s: %.0f ops/s%s\n", mode, nthreads, ops, elapsed, ops / elapsed,
         atomic_load(&bad) ? ", FAILED" : "");
  return atomic_load(&bad) ? 1 : 0;
}
