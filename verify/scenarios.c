/* Benchmark scenarios, one per process, run unchanged under every allocator
 * (LD_PRELOAD of this same binary).  Each writes one JSON line to stdout:
 *   {"scenario":..,"iters":..,"ops":..,"seconds":..,"ns_per_iter":..,
 *    "minflt":..,"majflt":..,"maxrss_kib":..,"rss_end_kib":..}
 * Faults and time cover the scenario (setup included); maxrss is the peak
 * resident set (VmHWM), rss_end the resident set when the scenario is done
 * (VmRSS, everything freed: what the allocator kept).
 * The scenarios (README.md "Benchmark" defines them the same way):
 *   json   1000 x: malloc 64 KiB, write one byte per 4 KiB page, free
 *   mir     100 x: the same with 256 KiB
 *   vm      100 x: the same with 2 MiB
 *   mixed   400 x: 64 KiB every iteration, 256 KiB every 4th, 2 MiB every
 *           16th, each written one byte per page, freed at the iteration's
 *           end (newest first)
 *   small  1,000,000 x: free a random one of 10,000 live blocks and
 *           allocate a new one of a random size in 16..1024 B (first and
 *           last byte written)
 *   mid     200,000 x: the same over 1,000 live blocks of 2..32 KiB
 *   large   100,000 x: the same over 4,000 live blocks of 64 KiB..1 MiB
 *   mt      larson-like server: 2 threads x 500,000 x: swap a new block of
 *           16..1024 B into a random one of 2,000 shared slots and free the
 *           block taken out (allocated by either thread: ~half the frees
 *           are cross-thread)
 *   cold    300 x: from one of 64 call sites, malloc a block of 2..24 MiB
 *           (8 sizes), write one byte per page, keep the last 4 live:
 *           beyond any cache budget
 *   prodcons  a producer thread allocates 8 Mi blocks of 512 B and hands
 *           them over (a ring) to a consumer thread, which frees 3 of
 *           every 4 and keeps the 4th: the live set grows to 1 GiB and
 *           most frees are remote frees into the producer's full pages;
 *           also reports the producer's malloc cost over the first and
 *           the last 1 Mi blocks ("malloc_ns_first", "malloc_ns_last")
 *   purge   4 Mi x malloc 256 B (1 GiB), then free all but one block per
 *           4 MiB allocated; then 2 s of light activity (every ms, 16
 *           blocks of 16..1024 B allocated and freed), no malloc_trim: also
 *           reports "rss_free_kib" (VmRSS right after the frees) and
 *           "rss_end_kib" (2 s later); time covers the malloc/free phase
 *   sites   3,000 x, two call sites asking for the same size, 1.5 MiB: a
 *           churn site allocates 4 blocks, writes every page and frees
 *           them; a keep site replaces 8 of 256 long-lived blocks it sizes
 *           for the worst case and writes 2 pages of.  While the keep
 *           site's set fills (the first 32 iterations), its new blocks take
 *           the slices the churn site just freed, and the churn site's next
 *           blocks fault in fresh pages (1,536 faults, ~20 ms an iteration
 *           here; 17 us once the set is full): mapping the churn site
 *           (BigCache keeps its 4 blocks) avoids that, mapping the keep
 *           site costs a mapping per replacement ever after.  A fixed
 *           threshold is wrong for one of them (2 MiB: the churn site;
 *           1 MiB: the keep site), a per-site one for neither -- if it is
 *           learned within the first iterations
 *   wrapped the same, but both sites allocate through the program's
 *           xmalloc, which three setup functions called first as well: a
 *           per-site policy needs the wrapper seen through (HAKMEM_WRAPPERS)
 * An iteration is the unit of "ns_per_iter"; "ops" counts mallocs + frees. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "verify/bench_util.h"

#define KiB ((size_t)1024)
#define MiB (1024 * KiB)


static void touch(volatile char* p, size_t n) {
  for (size_t o = 0; o < n; o += 4096) p[o] = (char)o;
}

static long iters, ops;

static void fixed(size_t size, long n) {
  iters = n;
  ops = 2 * n;
  for (long i = 0; i < n; i++) {
    char* p = malloc(size);
    if (p == NULL) abort();
    touch(p, size);
    free(p);
  }
}

static void mixed(void) {
  iters = 400;
  for (long i = 0; i < iters; i++) {
    char* b[3];
    int n = 0;
    b[n++] = malloc(64 * KiB);
    touch(b[0], 64 * KiB);
    if (i % 4 == 0) touch(b[n++] = malloc(256 * KiB), 256 * KiB);
    if (i % 16 == 0) touch(b[n++] = malloc(2 * MiB), 2 * MiB);
    ops += 2 * n;
    while (n > 0) free(b[--n]);
  }
}

static void replace(long n, int live, size_t lo, size_t hi) {
  char** slot = malloc((size_t)live * sizeof(char*));
  uint64_t s = 88172645463325252ULL;
  for (int i = 0; i < live; i++) {
    size_t k = lo + rnd(&s) % (hi - lo + 1);
    slot[i] = malloc(k);
    slot[i][0] = 1;
  }
  iters = n;
  ops = 2 * n;
  for (long i = 0; i < n; i++) {
    size_t j = (size_t)(rnd(&s) % (uint64_t)live);
    free(slot[j]);
    size_t k = lo + rnd(&s) % (hi - lo + 1);
    slot[j] = malloc(k);
    slot[j][0] = (char)i;
    slot[j][k - 1] = (char)i;
  }
  for (int i = 0; i < live; i++) free(slot[i]);
  free(slot);
}

#define MT_SLOTS 2000
#define MT_ITERS 500000
static _Atomic(char*) mt_slot[MT_SLOTS];

static void* mt_worker(void* arg) {
  uint64_t s = 0x9E3779B97F4A7C15ULL * ((uint64_t)(uintptr_t)arg + 1);
  for (long i = 0; i < MT_ITERS; i++) {
    size_t k = 16 + rnd(&s) % 1009;
    char* p = malloc(k);
    p[0] = 1;
    p[k - 1] = 2;
    char* old = atomic_exchange(&mt_slot[rnd(&s) % MT_SLOTS], p);
    free(old);
  }
  return NULL;
}

static void mt(void) {
  for (int i = 0; i < MT_SLOTS; i++) atomic_store(&mt_slot[i], malloc(64));
  pthread_t t[2];
  for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, mt_worker, (void*)(uintptr_t)i);
  for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
  for (int i = 0; i < MT_SLOTS; i++) free(atomic_load(&mt_slot[i]));
  iters = 2L * MT_ITERS;
  ops = 2 * iters;
}

enum { PC_N = 8 << 20, PC_SIZE = 512, PC_RING = 1 << 16, PC_PHASE = 1 << 20 };
static _Atomic(char*) pc_ring[PC_RING];
static _Atomic(long) pc_head, pc_tail; /* produced, consumed */
static double pc_first_ns, pc_last_ns;

static void* pc_consumer(void* arg) {
  char** kept = arg;
  long n = 0;
  for (long i = 0; i < PC_N; i++) {
    while (atomic_load_explicit(&pc_head, memory_order_acquire) <= i) {
    }
    char* p = atomic_load_explicit(&pc_ring[i % PC_RING], memory_order_relaxed);
    atomic_store_explicit(&pc_tail, i + 1, memory_order_release);
    if (i % 4 == 3) kept[n++] = p;
    else free(p);
  }
  return NULL;
}

static void prodcons(void) {
  char** kept = malloc(PC_N / 4 * sizeof(char*));
  if (kept == NULL) abort();
  pthread_t t;
  pthread_create(&t, NULL, pc_consumer, kept);
  double phase_t0 = 0, malloc_s = 0;
  for (long i = 0; i < PC_N; i++) {
    while (i - atomic_load_explicit(&pc_tail, memory_order_acquire) >= PC_RING) {
    }
    if (i % 64 == 0) phase_t0 = now(); /* timed in groups of 64 mallocs */
    char* p = malloc(PC_SIZE);
    if (p == NULL) abort();
    p[0] = 1;
    if (i % 64 == 63) malloc_s += now() - phase_t0;
    atomic_store_explicit(&pc_ring[i % PC_RING], p, memory_order_relaxed);
    atomic_store_explicit(&pc_head, i + 1, memory_order_release);
    if (i + 1 == PC_PHASE) pc_first_ns = malloc_s * 1e9 / PC_PHASE, malloc_s = 0;
    if (i + 1 == PC_N - PC_PHASE) malloc_s = 0;
  }
  pc_last_ns = malloc_s * 1e9 / PC_PHASE;
  pthread_join(t, NULL);
  for (long i = 0; i < PC_N / 4; i++) free(kept[i]);
  free(kept);
  iters = PC_N;
  ops = 2L * PC_N;
}

/* 64 distinct call sites (no tail calls, so each has its own return address) */
static void* volatile sink;
#define SITE(n) \
  static __attribute__((noinline)) void* cold_site##n(size_t s) { void* p = malloc(s); sink = p; return p; }
#define SITE8(n) SITE(n##0) SITE(n##1) SITE(n##2) SITE(n##3) SITE(n##4) SITE(n##5) SITE(n##6) SITE(n##7)
SITE8(1) SITE8(2) SITE8(3) SITE8(4) SITE8(5) SITE8(6) SITE8(7) SITE8(8)
#define REF8(n) cold_site##n##0, cold_site##n##1, cold_site##n##2, cold_site##n##3, \
                cold_site##n##4, cold_site##n##5, cold_site##n##6, cold_site##n##7
static void* (*const cold_sites[64])(size_t) = {REF8(1), REF8(2), REF8(3), REF8(4),
                                                 REF8(5), REF8(6), REF8(7), REF8(8)};

static void cold(void) {
  static const size_t sizes[8] = {2 * MiB, 3 * MiB, 4 * MiB, 6 * MiB, 8 * MiB, 12 * MiB, 16 * MiB, 24 * MiB};
  char* live[4] = {0};
  uint64_t s = 12345;
  iters = 300;
  for (long i = 0; i < iters; i++) {
    uint64_t r = rnd(&s);
    size_t n = sizes[r % 8];
    free(live[i % 4]);
    live[i % 4] = cold_sites[(r >> 8) % 64](n);
    touch(live[i % 4], n);
  }
  for (int i = 0; i < 4; i++) free(live[i]);
  ops = 2 * iters;
}

static double sites_churn_ns = -1; /* the churn site's share of an iteration */
static __attribute__((noinline)) void* churn_site(size_t n) { void* p = malloc(n); sink = p; return p; }
static __attribute__((noinline)) void* keep_site(size_t n) { void* p = malloc(n); sink = p; return p; }

/* the wrapped scenario: a program's xmalloc, its setup, its two sites */
static __attribute__((noinline)) void* xmalloc_(size_t n) {
  void* p = malloc(n);
  if (p == NULL) abort();
  return p;
}
static __attribute__((noinline)) void* wrapped_churn(size_t n) { void* p = xmalloc_(n); sink = p; return p; }
static __attribute__((noinline)) void* wrapped_keep(size_t n) { void* p = xmalloc_(n); sink = p; return p; }
static __attribute__((noinline)) void setup_a(void) { char* p = xmalloc_(256 * KiB); p[0] = 1; free(p); }
static __attribute__((noinline)) void setup_b(void) { char* p = xmalloc_(512 * KiB); p[0] = 1; free(p); }
static __attribute__((noinline)) void setup_c(void) { char* p = xmalloc_(200 * KiB); p[0] = 1; free(p); }

#define SITES_KEEP 256
static void sites(void* (*churn_at)(size_t), void* (*keep_at)(size_t)) {
  const size_t n = 3 * MiB / 2;
  static char* keep[SITES_KEEP];
  iters = 3000;
  double churn = 0, t;
  for (long i = 0; i < iters; i++) {
    char* c[4];
    t = now();
    for (int j = 0; j < 4; j++) touch(c[j] = churn_at(n), n);
    for (int j = 3; j >= 0; j--) free(c[j]);
    churn += now() - t;
    for (int j = 0; j < 8; j++) {
      char** k = &keep[(i * 8 + j) % SITES_KEEP];
      free(*k);
      *k = keep_at(n);
      touch(*k, 8 * KiB);
    }
    ops += 4 * 2 + 8 * 2;
  }
  for (int i = 0; i < SITES_KEEP; i++) free(keep[i]);
  sites_churn_ns = churn * 1e9 / (double)iters;
}

/* Peak (VmHWM) or current (VmRSS) resident set of this process image, from
 * /proc (getrusage's ru_maxrss survives exec and would report the parent's
 * peak). */
static long status_kib(const char* key) {
  FILE* f = fopen("/proc/self/status", "r");
  char line[256];
  long kib = -1;
  if (f == NULL) return -1;
  while (fgets(line, sizeof(line), f))
    if (strncmp(line, key, strlen(key)) == 0) kib = atol(line + strlen(key));
  fclose(f);
  return kib;
}

static long rss_free_kib = -1, rss_end_kib = -1;
static double purge_idle_s; /* excluded from the scenario's time */

static void purge(void) {
  enum { SIZE = 256, N = (1 << 30) / SIZE, KEEP_EVERY = (4 << 20) / SIZE };
  char** blocks = malloc(N * sizeof(char*));
  if (blocks == NULL) abort();
  for (long i = 0; i < N; i++) {
    blocks[i] = malloc(SIZE);
    if (blocks[i] == NULL) abort();
    blocks[i][0] = (char)i;
  }
  for (long i = 0; i < N; i++)
    if (i % KEEP_EVERY != 0) free(blocks[i]);
  rss_free_kib = status_kib("VmRSS:");
  double t0 = now();
  uint64_t s = 99;
  struct timespec ms = {0, 1000000};
  while (now() - t0 < 2.0) {
    char* p[16];
    for (int k = 0; k < 16; k++) {
      p[k] = malloc(16 + rnd(&s) % 1009);
      if (p[k] == NULL) abort();
      p[k][0] = 1;
    }
    for (int k = 0; k < 16; k++) free(p[k]);
    nanosleep(&ms, NULL);
  }
  purge_idle_s = now() - t0;
  iters = N;
  ops = 2 * (long)N;
  rss_end_kib = status_kib("VmRSS:"); /* the kept blocks still live */
  for (long i = 0; i < N; i += KEEP_EVERY) free(blocks[i]);
  free(blocks);
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s json|mir|vm|mixed|small|mid|large|mt|cold|prodcons|purge|sites|wrapped\n", argv[0]);
    return 2;
  }
  const char* sc = argv[1];
  struct rusage a, b;
  getrusage(RUSAGE_SELF, &a);
  double t0 = now();
  if (strcmp(sc, "json") == 0) fixed(64 * KiB, 1000);
  else if (strcmp(sc, "mir") == 0) fixed(256 * KiB, 100);
  else if (strcmp(sc, "vm") == 0) fixed(2 * MiB, 100);
  else if (strcmp(sc, "mixed") == 0) mixed();
  else if (strcmp(sc, "small") == 0) replace(1000000, 10000, 16, 1024);
  else if (strcmp(sc, "mid") == 0) replace(200000, 1000, 2 * KiB, 32 * KiB);
  else if (strcmp(sc, "large") == 0) replace(100000, 4000, 64 * KiB, 1 * MiB);
  else if (strcmp(sc, "mt") == 0) mt();
  else if (strcmp(sc, "cold") == 0) cold();
  else if (strcmp(sc, "purge") == 0) purge();
  else if (strcmp(sc, "prodcons") == 0) prodcons();
  else if (strcmp(sc, "sites") == 0) sites(churn_site, keep_site);
  else if (strcmp(sc, "wrapped") == 0) {
    setup_a(), setup_b(), setup_c();
    sites(wrapped_churn, wrapped_keep);
  }
  else {
    fprintf(stderr, "unknown scenario %s\n", sc);
    return 2;
  }
  double t = now() - t0 - purge_idle_s;
  getrusage(RUSAGE_SELF, &b);
  if (rss_end_kib < 0) rss_end_kib = status_kib("VmRSS:");
  printf("{\"scenario\":\"%s\",\"iters\":%ld,\"ops\":%ld,\"seconds\":%.6f,\"ns_per_iter\":%.1f,"
         "\"minflt\":%ld,\"majflt\":%ld,\"maxrss_kib\":%ld,\"rss_end_kib\":%ld",
         sc, iters, ops, t, t * 1e9 / (double)iters, b.ru_minflt - a.ru_minflt, b.ru_majflt - a.ru_majflt,
         status_kib("VmHWM:"), rss_end_kib);
  if (rss_free_kib >= 0) printf(",\"rss_free_kib\":%ld", rss_free_kib);
  if (sites_churn_ns >= 0) printf(",\"churn_ns\":%.1f", sites_churn_ns);
  if (pc_first_ns > 0) printf(",\"malloc_ns_first\":%.1f,\"malloc_ns_last\":%.1f", pc_first_ns, pc_last_ns);
  printf("}\n");
  return 0;
}
