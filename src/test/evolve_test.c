/* Evolving mode end to end: a site whose best mmap threshold is known
 * moves to it.  The workload allocates 8 blocks of 1 MiB from one site,
 * touches them and frees them, over and over.  With no segment cache
 * (HAKMEM_SEGMENT_CACHE=0) the segment tier maps and faults in fresh
 * segments every round, while the huge tier recycles the 8 mappings through
 * BigCache (8 slots per row) with no system call and no fault: every
 * threshold <= 1 MiB is better than the default 2 MiB, and the site's
 * UCB1 must adopt one of them.  Baseline mode on the same workload never
 * moves.  HAKMEM_SEED makes the run repeatable. */
#include <pthread.h>
#include <stdint.h>

#include "src/hakmem.h"
#include "src/internal.h"
#include "src/test/test.h"

/* Level 0 only: the adoption of mapping once BigCache makes it cheap: at level 2 freed huge blocks stay PROT_NONE and mapping is dear. */
HAK_TEST_AT_LEVEL_0_ONLY()


#define MiB ((size_t)1 << 20)

static uint64_t site_threshold(const void* site) {
  hak_site_info_t info[1024];
  size_t n = hak_sites_get(info, 1024);
  for (size_t i = 0; i < n && i < 1024; i++)
    if (info[i].site == site) return info[i].threshold;
  return UINT64_MAX;
}

static void rounds(const void* site, int n) {
  for (int r = 0; r < n; r++) {
    char* p[8];
    for (int i = 0; i < 8; i++) {
      p[i] = hak_alloc_at(1 * MiB, site);
      if (p[i] == NULL) abort();
      for (size_t o = 0; o < 1 * MiB; o += 4096) p[i][o] = (char)o;
    }
    for (int i = 0; i < 8; i++) hak_free_at(p[i], site);
  }
}

TEST(evolving_site_moves_to_the_known_best_threshold) {
  static int site;
  _hak_options[HAK_OPT_MODE] = 1;
  _hak_fast_limit = (64u << 10) - 1;
  hak_stats_t a, b;
  hak_stats_get(&a);
  int r = 0;
  for (; r < 5000 && (site_threshold(&site) == 0 || site_threshold(&site) == UINT64_MAX); r += 50) rounds(&site, 50);
  hak_stats_get(&b);
  uint64_t t = site_threshold(&site);
  printf("adopted threshold %lu after %d rounds; samples %lu, explored %lu, adoptions %lu\n", (unsigned long)t, r,
         (unsigned long)(b.learn_samples - a.learn_samples), (unsigned long)(b.learn_explored - a.learn_explored),
         (unsigned long)(b.learn_adoptions - a.learn_adoptions));
  hak_site_t* st = _hak_site_alloc(&site, 0);
  if (st != NULL)
    for (int arm = 0; arm < HAK_UCB_ARMS; arm++)
      printf("  arm %zu KiB: pulls %lu mean %.3f%s\n", _hak_ucb_thresholds[arm] >> 10, (unsigned long)st->ucb.pulls[arm],
             _hak_ucb_mean(&st->ucb, arm), arm == st->ucb.current ? " (current)" : "");
  EXPECT_TRUE(t != 0 && t != UINT64_MAX);
  EXPECT_TRUE(t <= 1 * MiB); /* the known best: mapped and recycled */
  EXPECT_TRUE(b.learn_adoptions > a.learn_adoptions);
  /* the adopted threshold is what routes the site now */
  hak_stats_get(&a);
  rounds(&site, 20);
  hak_stats_get(&b);
  EXPECT_TRUE(b.served_huge - a.served_huge >= 140); /* 160 requests, minus samples */
}

TEST(baseline_never_moves) {
  static int site2;
  _hak_options[HAK_OPT_MODE] = 0;
  _hak_fast_limit = HAK_SMALL_MAX;
  hak_stats_t a, b;
  hak_stats_get(&a);
  rounds(&site2, 200);
  hak_stats_get(&b);
  EXPECT_EQ_U(site_threshold(&site2), 0);
  EXPECT_EQ_U(b.learn_samples, a.learn_samples);
  EXPECT_EQ_U(b.served_huge, a.served_huge); /* 1 MiB < the fixed 2 MiB */
}

/* An epoch opened on one thread and closed on another: the page-fault
 * counter is per thread (getrusage RUSAGE_THREAD), so the difference of two
 * threads' counters wrapped to ~1.8e19 faults per request and the ELO
 * learner recorded it (found by .clusterfuzzlite/check.sh: api_mt_fuzzer
 * under UBSan with unsigned-overflow reports on).  A fake OS whose fault
 * counter differs per thread makes it certain: the learner's fault sums
 * must stay what one thread could have seen. */
static __thread uint64_t thread_faults;
static uint64_t fake_faults(void) { return thread_faults; }
static hak_os_t faults_os;
static void big_allocations(const void* site, int n) {
  for (int i = 0; i < n; i++) {
    void* p = hak_alloc_at(3 * MiB, site);
    if (p == NULL) abort();
    hak_free_at(p, site);
  }
}
static void* closing_thread(void* site) {
  thread_faults = 5; /* this thread has faulted little */
  big_allocations(site, 64);
  return NULL;
}
TEST(an_epoch_closed_on_another_thread_records_no_wrapped_fault_count) {
  _hak_options[HAK_OPT_MODE] = 1;
  faults_os = _hak_os_default;
  faults_os.faults = fake_faults;
  _hak_os = &faults_os;
  static int site;
  thread_faults = 1000000; /* this thread has faulted a lot */
  /* a site's requests 0..7 are an epoch: it opens here (faults0 = 1e6) */
  big_allocations(&site, 8);
  pthread_t t; /* request 8 closes it, on another thread */
  pthread_create(&t, NULL, closing_thread, &site);
  pthread_join(t, NULL);
  _hak_os = &_hak_os_default;
  hak_elo_t elo;
  ASSERT_TRUE(_hak_policy_elo(&elo));
  double faults = 0;
  for (int i = 0; i < HAK_ELO_CANDIDATES; i++) faults += elo.c[i].page_faults;
  fprintf(stderr, "ELO fault sums: %g\n", faults);
  EXPECT_TRUE(faults < 1e7);
  _hak_options[HAK_OPT_MODE] = 0;
}

TEST_MAIN()
