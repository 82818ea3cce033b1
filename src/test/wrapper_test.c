/* Wrappers (wrapper.c): the requests of an allocation wrapper called from
 * many places are attributed to its callers, also through a function only
 * one caller calls, with and without frame pointers and with a frame whose
 * size varies; a helper of one or two callers keeps its own site; explicit
 * sites are kept; threads learn the same table; HAKMEM_WRAPPERS=0 turns it
 * off.  The expected sites are the return addresses the wrappers saw
 * (wrapper_fns.h). */
#include <pthread.h>

#include "src/hakmem.h"
#include "src/internal.h"
#include "src/test/test.h"
#include "src/test/wrapper_fns.h"

#define BIG (256u << 10) /* above 128 KiB: every request is recorded */
#define ROUNDS 40

static uint64_t allocs_of(const void* site) {
  static hak_site_info_t info[1024];
  size_t n = hak_sites_get(info, 1024);
  for (size_t i = 0; i < n; i++)
    if (info[i].site == site) return info[i].allocs;
  return 0;
}

static hak_stats_t stats(void) {
  hak_stats_t st;
  hak_stats_get(&st);
  return st;
}

static size_t scratch(void) { /* a frame of varying size */
  static unsigned n;
  return 40 + (n++ * 37) % 400;
}

/* five callers of one function; each notes the return address its call
 * left (the site its requests should have) */
#define CALLERS(prefix, call, ra)                                                                            \
  static const void* prefix##_site[5];                                                                       \
  __attribute__((noinline)) static void prefix##0(void) { hak_free_at(call, NULL); prefix##_site[0] = ra; } \
  __attribute__((noinline)) static void prefix##1(void) { hak_free_at(call, NULL); prefix##_site[1] = ra; } \
  __attribute__((noinline)) static void prefix##2(void) { hak_free_at(call, NULL); prefix##_site[2] = ra; } \
  __attribute__((noinline)) static void prefix##3(void) { hak_free_at(call, NULL); prefix##_site[3] = ra; } \
  __attribute__((noinline)) static void prefix##4(void) { hak_free_at(call, NULL); prefix##_site[4] = ra; } \
  static void (*const prefix##s[5])(void) = {prefix##0, prefix##1, prefix##2, prefix##3, prefix##4};

CALLERS(x, wt_xmalloc(BIG), wt_last_ra)
CALLERS(ch, wt_outer_fp(BIG, scratch()), wt_last_outer_ra)
CALLERS(off, wt_xmalloc_off(BIG), wt_last_ra)

TEST(a_wrappers_callers_are_the_sites) {
  hak_stats_t before = stats();
  for (int r = 0; r < ROUNDS; r++)
    for (int k = 0; k < 5; k++) xs[k]();
  const void* wrapper_site = wt_last_site;
  /* the first requests, until 4 callers were seen, stay the wrapper's */
  for (int k = 0; k < 5; k++) EXPECT_TRUE(allocs_of(x_site[k]) >= ROUNDS - 1);
  EXPECT_TRUE(allocs_of(wrapper_site) <= 4);
  uint64_t sum = allocs_of(wrapper_site);
  for (int k = 0; k < 5; k++) sum += allocs_of(x_site[k]);
  EXPECT_EQ_U(sum, 5 * ROUNDS);
  hak_stats_t after = stats();
  EXPECT_EQ_U(after.sites_wrappers, before.sites_wrappers + 1);
  EXPECT_EQ_U(after.sites_seen_through, before.sites_seen_through + 5 * ROUNDS - allocs_of(wrapper_site));
}

/* wt_xmalloc_chained has one caller, wt_outer_fp (rbp-based, a variable
 * frame), which five functions call: their requests are theirs. */
TEST(a_chain_to_a_wrapper_is_seen_through) {
  for (int r = 0; r < ROUNDS; r++)
    for (int k = 0; k < 5; k++) chs[k]();
  for (int k = 0; k < 5; k++) EXPECT_TRUE(allocs_of(ch_site[k]) >= ROUNDS - 1);
  EXPECT_TRUE(allocs_of(wt_last_site) <= 4); /* wt_xmalloc_chained's call */
  EXPECT_EQ_U(allocs_of(wt_last_ra), 0);     /* wt_outer_fp's call */
}

static const void *two_a_site, *two_b_site, *one_a_site;
__attribute__((noinline)) static void two_a(void) { hak_free_at(wt_helper_of_two(BIG), NULL); two_a_site = wt_last_ra; }
__attribute__((noinline)) static void two_b(void) { hak_free_at(wt_helper_of_two(BIG), NULL); two_b_site = wt_last_ra; }
__attribute__((noinline)) static void one_a(void) { hak_free_at(wt_helper_of_one(BIG), NULL); one_a_site = wt_last_ra; }

/* A helper two functions call is the purpose of its allocations; one only
 * one function calls, with no wrapper above it, keeps its site too. */
TEST(helpers_of_one_or_two_callers_keep_their_sites) {
  const void *two = NULL, *one = NULL;
  for (int r = 0; r < 100; r++) {
    two_a();
    two_b();
    two = wt_last_site;
    one_a();
    one = wt_last_site;
  }
  EXPECT_EQ_U(allocs_of(two), 200);
  EXPECT_EQ_U(allocs_of(two_a_site) + allocs_of(two_b_site), 0);
  EXPECT_EQ_U(allocs_of(one), 100);
  EXPECT_EQ_U(allocs_of(one_a_site), 0);
}

/* Four calls in one function (a loop the compiler unrolled, say): one
 * caller, not a wrapper's four. */
__attribute__((noinline)) static void four_calls(void) {
  hak_free_at(wt_helper_of_one_function(BIG), NULL);
  hak_free_at(wt_helper_of_one_function(BIG + 1), NULL);
  hak_free_at(wt_helper_of_one_function(BIG + 2), NULL);
  hak_free_at(wt_helper_of_one_function(BIG + 3), NULL);
}

TEST(calls_from_one_function_count_once) {
  for (int r = 0; r < ROUNDS; r++) four_calls();
  EXPECT_EQ_U(allocs_of(wt_last_site), 4 * ROUNDS);
}

/* hak_alloc_at with a site of the program's choosing: that site. */
TEST(explicit_sites_are_kept) {
  static const char label[4][8];
  for (int r = 0; r < ROUNDS; r++)
    for (int k = 0; k < 4; k++) hak_free_at(hak_alloc_at(BIG, label[k]), NULL);
  for (int k = 0; k < 4; k++) EXPECT_EQ_U(allocs_of(label[k]), ROUNDS);
}

/* Eight threads learning the same wrapper from four callers (the table's
 * entries filled and decided concurrently), each freeing the blocks the
 * next thread allocated. */
#define THREADS 8
#define PER_THREAD 200
static void* slots[THREADS][PER_THREAD];
static const void* t_site[THREADS][5]; /* per thread: the callers' sites, the wrapper's */
static _Thread_local int t_self;
#define T_SITE(k)                                                \
  __attribute__((noinline)) static void* t_site##k(void) {       \
    void* p = wt_xmalloc_threads(BIG);                           \
    t_site[t_self][k] = wt_last_ra;                              \
    t_site[t_self][4] = wt_last_site;                            \
    return p;                                                    \
  }
T_SITE(0) T_SITE(1) T_SITE(2) T_SITE(3)
static void* (*const t_sites[4])(void) = {t_site0, t_site1, t_site2, t_site3};
static pthread_barrier_t barrier;

static void* thread_main(void* arg) {
  int t = (int)(intptr_t)arg;
  t_self = t;
  for (int i = 0; i < PER_THREAD; i++) slots[t][i] = t_sites[(i + t) % 4]();
  pthread_barrier_wait(&barrier);
  for (int i = 0; i < PER_THREAD; i++) hak_free_at(slots[(t + 1) % THREADS][i], NULL);
  return NULL;
}

TEST(threads_learn_one_table) {
  pthread_t th[THREADS];
  pthread_barrier_init(&barrier, NULL, THREADS);
  for (int t = 0; t < THREADS; t++) ASSERT_TRUE(pthread_create(&th[t], NULL, thread_main, (void*)(intptr_t)t) == 0);
  for (int t = 0; t < THREADS; t++) pthread_join(th[t], NULL);
  pthread_barrier_destroy(&barrier);
  for (int t = 1; t < THREADS; t++) ASSERT_TRUE(memcmp(t_site[t], t_site[0], sizeof(t_site[0])) == 0);
  uint64_t sum = allocs_of(t_site[0][4]);
  EXPECT_TRUE(sum <= 4 * THREADS); /* each thread's first requests, at most */
  for (int k = 0; k < 4; k++) {
    uint64_t n = allocs_of(t_site[0][k]);
    EXPECT_TRUE(n >= THREADS * PER_THREAD / 4 - 4 * THREADS);
    sum += n;
  }
  EXPECT_EQ_U(sum, THREADS * PER_THREAD);
  EXPECT_EQ_U(hak_check_heap(), 0);
}

TEST(wrappers_off_keeps_the_immediate_caller) {
  setenv("HAKMEM_WRAPPERS", "0", 1);
  _hak_options_reload();
  for (int r = 0; r < ROUNDS; r++)
    for (int k = 0; k < 5; k++) offs[k]();
  unsetenv("HAKMEM_WRAPPERS");
  _hak_options_reload();
  EXPECT_EQ_U(allocs_of(wt_last_site), 5 * ROUNDS);
  for (int k = 0; k < 5; k++) EXPECT_EQ_U(allocs_of(off_site[k]), 0);
}

TEST_MAIN()
