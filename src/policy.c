/* Policy: which tier serves a large request, per call site.
 *
 * The decision is a threshold: a request of size >= threshold is mapped
 * directly (huge tier: BigCache, batch queue); a smaller one is served by
 * the size classes or by slice runs in segments.  It is made before the
 * block is allocated and is what routes it.
 *
 * baseline (HAKMEM_MODE=baseline): the fixed HAKMEM_HUGE_THRESHOLD (2 MiB).
 * evolving (HAKMEM_MODE=evolving), for requests the size
 * classes do not take (above 128 KiB):
 *  - the policy in force: below 2 MiB the site's own threshold, the arm its
 *    UCB1 bandit adopted (64 KiB .. 2 MiB; the default until one is); from
 *    2 MiB the ELO champion among 12 global candidates (512 KiB .. 32 MiB)
 *    once ELO has played, else the default;
 *  - measurement: a site's requests cycle through 64 positions (512 for a
 *    cheap site, CHEAP_NS; 8, back to back, for a new or a dear one); 0..7 are an
 *    epoch, routed by one choice, whose cost is the wall time from its first
 *    request to the request after it (position 8), per request: it counts
 *    the allocator, the page faults the program takes touching the blocks,
 *    and the frees.  An epoch routed by the policy in force (control)
 *    measures what the site costs; the site earns its exploration budget
 *    from that cost (HAK_EXPLORE_PERMILLE, 2 %, of it: learn.h).  A new
 *    site, and a dear one (DENSE_NS per request of its own: its windows'
 *    cost times its share of the large requests in them), measures back to
 *    back;
 *  - exploration: an epoch routed otherwise (a UCB1 arm below 2 MiB; an
 *    epsilon-greedy ELO candidate from 2 MiB) runs only when the site has
 *    had EXPLORE_MIN_REQUESTS large requests or is dear, is not settled, and its budget
 *    admits a reservation: the estimated excess cost of the epoch; never
 *    toward mapping what a site keeps live past an epoch's window
 *    (EXPLORE_MAP_MAX_LIVE), whose cost the window cannot see.  The
 *    estimate comes from what the site measured per (size bucket, tier)
 *    cell: an arm that routes the site's sizes to tiers already measured is
 *    estimated without being tried, and arms never tried are taken in the
 *    order of their estimates (a never measured cell: a pessimistic prior).
 *    When it closes, its measured excess over the control cost is charged;
 *  - an epoch's cost updates every UCB1 arm that would have routed its
 *    requests the same way (they would have cost the same), so the bandit
 *    learns about arms it never played;
 *  - a site settles (stops exploring) once every alternative's cells are
 *    measured and none is estimated cheaper than the policy in force by
 *    SETTLE_PCT: all arms cost the same within noise, or the one in force is
 *    best.  A new size bucket or a drift of the control cost unsettles it;
 *  - every 4 closed UCB epochs a site's UCB1 evaluates (adopt after 3 wins of
 *    8 %, at most once per 180 s; a dear site adopts at once an arm its
 *    cells show at most half as costly) and the adopted arm becomes the site's
 *    snapshot; a window of 10,000 large requests or 2 s closes with the p99
 *    of the timed requests and the size mix into the lifecycle (LEARN ->
 *    FROZEN -> LEARN / CANARY) and plays ELO's pending matches.
 * In FROZEN only control epochs run; one request in 8 is timed for the
 * window.  Learning never touches the small fast path; its work is guarded
 * by try-locks, so a busy learner skips instead of waiting.  Every random
 * choice comes from HAKMEM_SEED; time and faults come from the OS layer. */
#include <string.h>

#include "internal.h"

#define HAK_POLICY_GAP 56 /* unmeasured requests between two epochs */
#define HAK_POLICY_PERIOD (HAK_POLICY_EPOCH + HAK_POLICY_GAP)
#define HAK_POLICY_EVAL 4
#define HAK_POLICY_TIMED 32
#define WINDOW_OPS 10000
#define WINDOW_NS (2ull * 1000000000ull)
#define UCB_SPLIT (2u << 20)
#define UCB_BUCKETS 5 /* buckets 0..4 (64 KiB .. 2 MiB) are the UCB1 arms' */
/* LEARN may not end before this many epochs were measured since it began:
 * a flat p99 alone (the estimator's buckets are coarse) is no convergence. */
#define FREEZE_MIN_EPOCHS 400
#define EXPLORE_MIN_REQUESTS 256 /* a site's large requests before it explores ... */
/* ... unless they are dear: a site whose requests cost this much each
 * (faulting in hundreds of pages) matters from its first few.  It measures
 * its epochs back to back (timing a request costs ~0.1 us, a 0.2 % of
 * these), explores from its second measured epoch, and adopts an arm whose
 * cells, measured over FAST_MIN epochs, cost at most FAST_RATIO of the
 * policy in force -- by their means and by their cheapest requests, which
 * a stall cannot raise -- without waiting for UCB1's 30 pulls and 3 wins:
 * a program's phase that makes one tier dear may last a few dozen
 * requests.  A site's own cost is its windows' cost times its share of the
 * large requests in them: a window also holds the other sites' requests
 * (200 sites taking turns: each window holds 1,600 requests, 8 the site's).
 * A cheap site measures less often: an epoch costs ~1 us of clock reads and
 * locks, so below CHEAP_NS a request, one epoch per 512 requests. */
#define DENSE_NS 50000.0
#define CHEAP_NS 4000.0
#define FAST_MIN 2
#define FAST_RATIO 0.5
#define PERIOD_LOG_DENSE 3  /* 8: back to back */
#define PERIOD_LOG_SPARSE 6 /* 64 */
#define PERIOD_LOG_CHEAP 9  /* 512 */
/* A site with more blocks live than this (its requests minus its frees:
 * in a steady state, its blocks' mean lifetime in its own requests) keeps
 * them beyond an epoch's window, which ends one request after the epoch:
 * what a mapped block costs after that (its munmap, a mapping per block
 * living on in the page tables and the address space, the faults that get
 * dearer for it) is charged to nobody.  Measured on `large` (4,000 live):
 * explorations charged 44 ms and cost the run ~310 ms; on `sites`, a site
 * filling a set of 256 adopted mapping while the set was young.  Such a
 * site neither explores nor adopts an arm that maps what the policy in
 * force does not; the segments serve long-lived blocks, which is what the
 * fixed policy does. */
#define EXPLORE_MAP_MAX_LIVE (2 * HAK_POLICY_EPOCH)
#define SETTLE_PCT 0.05          /* cheaper by less than this: the same  */
#define SETTLE_MIN 4             /* epochs' worth of requests in a cell before it counts */
#define SETTLE_DRIFT 0.25        /* control cost moved this much: unsettle */
#define COST_MAX_NS 100000000.0  /* a request's measured cost is clamped to 100 ms */
/* Priors for a cell never measured, as an excess over the other tier's
 * cost (pessimistic: a reservation must cover the epoch): mapping costs the
 * system calls and may fault in every page; fresh slices may fault too. */
#define PRIOR_MAP_NS 20000.0
#define PRIOR_PAGE_NS 250.0

/* What freeing a mapped block costs, by size bucket (ns, a moving average
 * every thread updates: a lost update is one sample less).  The free of a
 * block happens long after its epoch when the program keeps it: its munmap,
 * madvise and the flush of the batch queue would land in whichever epoch of
 * whichever site is open then (a control epoch, so exploring looked cheap
 * and the policy in force dear).  An epoch's window leaves out the time its
 * own thread spent freeing mapped blocks (tls_free_ns) and charges each
 * request it mapped the bucket's free cost instead. */
static _Atomic(uint32_t) free_cost[HAK_LEARN_BUCKETS];
static __thread uint64_t tls_free_ns;

/* The process-wide cap: the sites' budgets are each 2 % of what the site's
 * windows cost, and windows of different sites overlap (each counts the
 * whole program while it is open), so K sites would earn K x 2 %.  Every
 * exploration also reserves from 2 % of the process's wall time since
 * learning began (never a lock: explorations admitted at the same instant
 * may overshoot by a reservation or two).  An exploring epoch its site
 * never closes (the site went quiet) keeps its reservation until the site
 * comes back or its slot is reused: at most one per site, and the limit
 * grows with the wall time. */
static _Atomic(uint64_t) g_t0, g_reserved, g_spent;

static hak_mutex_t pol_lock = HAK_MUTEX_INIT(HAK_LOCK_POLICY);
static struct {
  bool ready;
  hak_elo_t elo;
  hak_lifecycle_t lc;
  hak_p99_t p99;
  uint64_t mix[HAK_MIX_BUCKETS];
  uint64_t window_start;
  uint64_t window_dec0; /* st_decisions when the window opened */
  uint64_t learn_mark; /* st_epochs when LEARN was last entered */
  hak_rng_t rng;
} pol;
static _Atomic(uint32_t) elo_threshold; /* champion, once a match is played */
static _Atomic(int) lc_state;
static _Atomic(uint64_t) st_decisions, st_samples, st_explored, st_adoptions, st_matches, st_windows, st_routed_huge,
    st_explore_ns, st_denied, st_settled, st_epochs;

/* Every site's large requests: each thread adds its own 32 at a time (a
 * shared counter per request cost ~10 ns, more across threads); the
 * thread's pending part counts in what it reads. */
#define DECISIONS_BATCH 32
static __thread uint32_t tls_decisions;

static void count_decision(void) {
  if (hak_unlikely(++tls_decisions == DECISIONS_BATCH)) {
    hak_atomic_add(st_decisions, DECISIONS_BATCH);
    tls_decisions = 0;
  }
}

static uint64_t decisions_now(void) { return atomic_load_explicit(&st_decisions, memory_order_relaxed) + tls_decisions; }

static uint64_t policy_seed(void) {
  long s = hak_option(HAK_OPT_SEED);
  return s != 0 ? (uint64_t)s : _hak_os_random();
}

/* Called with pol_lock held. */
static void policy_ready(void) {
  if (pol.ready) return;
  uint64_t seed = policy_seed();
  _hak_elo_init(&pol.elo, seed);
  _hak_rng_seed(&pol.rng, seed ^ 0x5bd1e995u);
  _hak_lifecycle_init(&pol.lc, _hak_os->now_ns());
  /* pol.p99 and pol.mix start zero (static, and ready happens once): no
   * reset here, whose 2 KiB memset was most of a program's first large
   * request's learning cost */
  pol.window_start = _hak_os->now_ns();
  pol.ready = true;
}

static bool evolving(void) { return hak_option(HAK_OPT_MODE) == 1; }

/* A number for the calling thread, never reused (a tid or a TLS address
 * may be, by a later thread). */
static uint32_t thread_token(void) {
  static _Atomic(uint32_t) next;
  static __thread uint32_t token;
  if (hak_unlikely(token == 0)) token = atomic_fetch_add_explicit(&next, 1, memory_order_relaxed) + 1;
  return token;
}

static int bucket_of(size_t size);

/* ---- the process-wide exploration budget ------------------------------ */

static bool global_fits(uint64_t reserve, uint64_t now) {
#ifdef HAK_FAULT_BUDGET_SITES_ONLY /* fault injection: K sites earn K x 2 % */
  return true;
#endif
  uint64_t t0 = atomic_load_explicit(&g_t0, memory_order_relaxed);
  if (t0 == 0 || now <= t0) return false;
  uint64_t limit = (now - t0) / 1000 * HAK_EXPLORE_PERMILLE;
  return atomic_load_explicit(&g_spent, memory_order_relaxed) +
             atomic_load_explicit(&g_reserved, memory_order_relaxed) + reserve <=
         limit;
}

/* The process-wide budget and the site's admit it, or nothing is counted. */
static bool budget_admit(hak_site_t* s, double excess_per_request, uint64_t now) {
  uint64_t r = excess_per_request > 0 ? (uint64_t)(excess_per_request * HAK_POLICY_EPOCH) : 0;
  if (r == 0) r = 1;
  if (!global_fits(r, now)) return false;
  /* reserved globally first: a fork between the two leaves the child a
   * global reservation without a site's (held for good, harmless), never a
   * site's without a global one (its release would wrap g_reserved) */
  atomic_fetch_add_explicit(&g_reserved, r, memory_order_relaxed);
  if (_hak_budget_admit(&s->budget, r)) return true;
  atomic_fetch_sub_explicit(&g_reserved, r, memory_order_relaxed);
  return false;
}

/* Charges an exploration that closed (or was dropped: its reservation). */
static void budget_settle(hak_site_t* s, uint64_t excess) {
  uint64_t r = s->budget.reserved_ns;
  if (r == 0) return; /* none open */
  _hak_budget_settle(&s->budget, excess);
  atomic_fetch_sub_explicit(&g_reserved, r, memory_order_relaxed);
  atomic_fetch_add_explicit(&g_spent, excess, memory_order_relaxed);
  hak_atomic_add(st_explore_ns, excess);
}

void _hak_policy_drop_epoch(hak_site_t* s) {
  s->epoch_kind = 0;
  budget_settle(s, s->budget.reserved_ns); /* unmeasured: charged what it reserved */
}

uint64_t _hak_policy_free_begin(void) { return evolving() ? _hak_os->now_ns() : 0; }

void _hak_policy_freed(size_t size, uint64_t t0) {
  uint64_t now = _hak_os->now_ns();
  uint64_t ns = now > t0 ? now - t0 : 0;
  if (ns > (uint64_t)COST_MAX_NS) ns = (uint64_t)COST_MAX_NS;
  tls_free_ns += ns;
  _Atomic(uint32_t)* c = &free_cost[bucket_of(size)];
  uint32_t old = atomic_load_explicit(c, memory_order_relaxed);
  int64_t d = (int64_t)ns - (int64_t)old;
  atomic_store_explicit(c, old == 0 ? (uint32_t)(ns ? ns : 1) : (uint32_t)((int64_t)old + d / 16), memory_order_relaxed);
}

/* ---- what a site has measured: (size bucket, tier) cells ---------------- */

/* 64K, 128K, ..., 1M: one bucket per UCB1 arm below 2 MiB; 2-4M; more. */
static int bucket_of(size_t size) {
  int b = 0;
  for (size_t edge = 128u << 10; b < HAK_LEARN_BUCKETS - 1 && size >= edge; edge <<= 1) b++;
  return b;
}

/* Does UCB1 arm a map requests of bucket b (< UCB_BUCKETS)? */
static bool arm_huge(int a, int b) { return b >= a; }

/* The UCB1 arm the site's policy in force is, below 2 MiB. */
static int arm_in_force(const hak_site_t* s) { return s->ucb.current; }

static double pages_of(int b) { return (double)((size_t)(96u << 10) << b) / 4096.0; /* 1.5 x the bucket's start */ }

/* Estimated cost per request of serving bucket b from tier huge/large. */
static double cell_est(const hak_site_t* s, int b, int huge) {
  if (s->cell_n[b][huge] > 0) return s->cell_ns[b][huge];
  double other = s->cell_n[b][!huge] > 0 ? s->cell_ns[b][!huge] : 0;
  return other + (huge ? PRIOR_MAP_NS : 0) + pages_of(b) * PRIOR_PAGE_NS;
}

static bool cell_known(const hak_site_t* s, int b, int huge, uint32_t epochs) {
  return s->cell_n[b][huge] >= epochs * HAK_POLICY_EPOCH;
}

/* cap: 8x the cell's mean before the epoch (0: none).  Only that: a tier's
 * cost comes in rare slow windows too (a purge refaulting what the program
 * touches), and clipping them hides it, but one stall (a preempted thread:
 * 20 ms over 8 requests of 60 us) would hold the cell at 20x for a hundred
 * samples. */
static void cell_add(hak_site_t* s, int b, int huge, double ns, double cap) {
  uint32_t n = s->cell_n[b][huge];
  if (cap > 0 && ns > cap) ns = cap;
  if (n < UINT32_MAX) s->cell_n[b][huge] = ++n;
  if (n == 1 || ns < s->cell_min[b][huge]) s->cell_min[b][huge] = (float)ns;
  /* a mean over the first 16, then a moving average: tiers' costs drift */
  s->cell_ns[b][huge] += (float)((ns - s->cell_ns[b][huge]) / (n < 16 ? n : 16));
}

/* The site's sampled UCB-domain buckets, as a mask. */
static uint32_t ucb_mix(const hak_site_t* s) {
  uint32_t m = 0;
  for (int b = 0; b < UCB_BUCKETS; b++) m |= (s->mix[b] != 0) << b;
  return m;
}

/* Do arms a and c route every bucket of mask m the same way? */
static bool arms_same(int a, int c, uint32_t m) {
  for (int b = 0; b < UCB_BUCKETS; b++)
    if ((m >> b & 1) && arm_huge(a, b) != arm_huge(c, b)) return false;
  return true;
}

/* Does arm a map a bucket of mask m that arm c does not? */
static bool arm_maps_more(int a, int c, uint32_t m) {
  for (int b = 0; b < UCB_BUCKETS; b++)
    if ((m >> b & 1) && arm_huge(a, b) && !arm_huge(c, b)) return true;
  return false;
}

/* The site's blocks live past an epoch's window (EXPLORE_MAP_MAX_LIVE). */
static bool keeps_blocks(const hak_site_t* s) {
  /* both count the site's large and huge blocks, where they were served
   * and where they were freed (page.c, huge.c); 32-bit, wrapping alike */
  uint32_t allocs = atomic_load_explicit(&s->big_allocs, memory_order_relaxed);
  uint32_t frees = (uint32_t)atomic_load_explicit(&s->frees, memory_order_relaxed);
#ifdef HAK_FAULT_EXPLORE_KEPT /* fault injection: lifetimes are ignored */
  (void)allocs, (void)frees;
  return false;
#else
  return (int32_t)(allocs - frees) > EXPLORE_MAP_MAX_LIVE;
#endif
}

/* The site's own cost per request: its windows' cost times its share of
 * the large requests in them. */
static double own_ns(const hak_site_t* s) {
#ifdef HAK_FAULT_SHARE_IGNORED /* fault injection: the window's whole cost is the site's */
  return s->ctl_ns;
#endif
  return s->ctl_ns * (s->share > 0 ? s->share : 1);
}
static bool dear(const hak_site_t* s) { return own_ns(s) >= DENSE_NS; }

/* Estimated excess cost per request of arm a over arm c on the site's mix;
 * *known: every cell a needs is measured (SETTLE_MIN epochs' worth). */
static double arm_excess(const hak_site_t* s, int a, int c, bool* known) {
  double total = 0, excess = 0;
  *known = true;
  for (int b = 0; b < UCB_BUCKETS; b++) {
    if (s->mix[b] == 0) continue;
    total += s->mix[b];
    if (arm_huge(a, b) == arm_huge(c, b)) continue;
    *known &= cell_known(s, b, arm_huge(a, b), SETTLE_MIN);
    excess += s->mix[b] * (cell_est(s, b, arm_huge(a, b)) - cell_est(s, b, arm_huge(c, b)));
  }
  return total > 0 ? excess / total : 0;
}

/* The site's cost per request under arm a, from its cells: their means,
 * or (least) their cheapest requests; *known: every cell is measured over
 * `epochs` epochs' worth of requests. */
static double arm_cost(const hak_site_t* s, int a, bool least, uint32_t epochs, bool* known) {
  double total = 0, cost = 0;
  *known = true;
  for (int b = 0; b < UCB_BUCKETS; b++) {
    if (s->mix[b] == 0) continue;
    int h = arm_huge(a, b);
    total += s->mix[b];
    *known &= cell_known(s, b, h, epochs);
    cost += s->mix[b] * (least && s->cell_n[b][h] > 0 ? s->cell_min[b][h] : cell_est(s, b, h));
  }
  return total > 0 ? cost / total : 0;
}

/* A dear site's decisive arm: among those whose cells are measured over
 * FAST_MIN epochs and cost at most FAST_RATIO of the policy in force's, by
 * their means and by their cheapest requests, the cheapest, the nearest to
 * the arm in force on a tie (the least change); -1: none. */
static int fast_arm(const hak_site_t* s) {
  uint32_t m = ucb_mix(s);
  int c = arm_in_force(s), best = -1;
  double best_cost = 0;
#ifdef HAK_FAULT_FAST_ADOPT_OFF /* fault injection: UCB1's evaluation only */
  m = 0;
#endif
  if (m == 0 || !dear(s)) return -1;
  bool keeps = keeps_blocks(s), known, known_least;
  double cur = arm_cost(s, c, false, FAST_MIN, &known), cur_least = arm_cost(s, c, true, FAST_MIN, &known_least);
  if (!known) return -1;
  for (int a = 0; a < HAK_UCB_ARMS; a++) {
    if (arms_same(a, c, m) || (keeps && arm_maps_more(a, c, m))) continue;
    double x = arm_cost(s, a, false, FAST_MIN, &known), least = arm_cost(s, a, true, FAST_MIN, &known_least);
#ifdef HAK_FAULT_FAST_ADOPT_ON_MEANS /* fault injection: a stall's mean decides */
    least = cur_least = 0;
#endif
    if (!known || x > FAST_RATIO * cur || least > FAST_RATIO * cur_least) continue;
    bool nearer = best >= 0 && x == best_cost && (a > c ? a - c : c - a) < (best > c ? best - c : c - best);
    if (best < 0 || x < best_cost || nearer) best = a, best_cost = x;
  }
  return best;
}

/* Settled: every arm that routes the site's mix otherwise than the one in
 * force is estimated from measured cells, and none is cheaper by
 * SETTLE_PCT.  Exploration stops (until the mix or the cost moves). */
static void settle_check(hak_site_t* s) {
  uint32_t m = ucb_mix(s);
  int c = arm_in_force(s);
  if (m == 0 || s->ctl_ns <= 0) return;
  for (int a = 0; a < HAK_UCB_ARMS; a++) {
    if (arms_same(a, c, m)) continue;
    bool known;
    double x = arm_excess(s, a, c, &known);
    if (!known || x < -SETTLE_PCT * s->ctl_ns) return;
  }
  if (s->settled_mix == 0) hak_atomic_add(st_settled, 1);
  s->settled_mix = m;
  s->settle_ctl_ns = s->ctl_ns;
}

static bool settled(hak_site_t* s) {
  if (s->settled_mix == 0) return false;
  double drift = s->ctl_ns > s->settle_ctl_ns ? s->ctl_ns - s->settle_ctl_ns : s->settle_ctl_ns - s->ctl_ns;
  if (s->settled_mix != ucb_mix(s) || drift > SETTLE_DRIFT * s->settle_ctl_ns) s->settled_mix = 0;
  return s->settled_mix != 0;
}

/* The UCB1 arm to explore: the arms never played (none that routes the
 * site's mix as the policy in force does, none that maps more when the
 * site keeps its blocks) in the order of their estimated excess, then
 * UCB1's own choice; -1: nothing to explore. */
static int ucb_explore_arm(const hak_site_t* s, double* excess) {
  uint32_t m = ucb_mix(s);
  int c = arm_in_force(s), best = -1;
  double best_x = 0;
  bool known, keeps = keeps_blocks(s);
  for (int a = 0; a < HAK_UCB_ARMS; a++) {
    if (s->ucb.pulls[a] != 0 || arms_same(a, c, m) || (keeps && arm_maps_more(a, c, m))) continue;
    double x = arm_excess(s, a, c, &known);
    if (best < 0 || x < best_x) best = a, best_x = x;
  }
  if (best < 0) {
    best = _hak_ucb_select(&s->ucb);
    if (arms_same(best, c, m) || (keeps && arm_maps_more(best, c, m))) return -1;
    best_x = arm_excess(s, best, c, &known);
  }
  *excess = best_x;
  return best;
}

/* ELO: does candidate threshold t map a request of this size? */
static bool thr_huge(size_t t, size_t size) {
  return size >= t || size + HAK_ALIGN > (size_t)HAK_LARGE_MAX_SLICES << HAK_SLICE_SHIFT;
}

/* Ends the site's epoch (site lock held): its cost per request (window wall
 * time) goes to the cells, to every UCB1 arm that would have routed it
 * alike, to ELO, to the control cost and the budget.  The page-fault
 * counter ELO also uses is the thread's own (getrusage RUSAGE_THREAD): an
 * epoch closed by another thread than the one that opened it has no fault
 * count (the difference of two threads' counters, which wrapped to ~1.8e19
 * in the first version), and ELO does not get it. */
static void epoch_close(hak_site_t* s, uint64_t now) {
  if (s->epoch_kind == 0) return;
  int kind = s->epoch_kind;
  s->epoch_kind = 0;
  /* unmeasured: an epoch nobody recorded into, a clock gone backwards, and
   * the site's first, which pays for warming up whatever it touches */
  uint32_t count = atomic_load_explicit(&s->large_count, memory_order_relaxed);
  uint32_t span = count - s->epoch_count0 - 1; /* the site's requests in the window */
  /* ... and one whose window held more than a period of the site's
   * requests: closes and opens failed their try-locks meanwhile (a thread
   * preempted holding the lock), and the window is not the epoch's */
  if (s->epoch_n == 0 || now < s->epoch_t0 || s->epoch_count0 < HAK_POLICY_EPOCH || span > HAK_POLICY_PERIOD) {
    budget_settle(s, s->budget.reserved_ns); /* unmeasured: charged its reservation */
    return;
  }
  double n = (double)(span > s->epoch_n ? span : s->epoch_n);
  double window = (double)(now - s->epoch_t0);
  /* the site's share of the window's large requests (its span and the
   * closing one, of everyone's) */
  uint64_t d = decisions_now(), all = d > s->epoch_dec0 ? d - s->epoch_dec0 : 0; /* another thread's pending part */
  double share = all > span ? (double)(span + 1) / (double)all : 1;
  s->share = s->share > 0 ? s->share + (share - s->share) / 4 : share;
  /* the frees of mapped blocks in the window are their tiers' cost, not
   * this epoch's; its own mapped requests are charged their free instead
   * (known only for the thread that opened it) */
  bool own = s->epoch_thread == thread_token();
  if (own) {
    double f = (double)(tls_free_ns - s->epoch_free0);
    window = window > f ? window - f : 0;
  }
  if (window > COST_MAX_NS * n) window = COST_MAX_NS * n;
  /* cells: the window split over the requests by size, plus the free of
   * each mapped one; the recorded requests (k) stand for all the window's
   * (n): an epoch cut short or closed late records fewer */
  uint32_t m = 0;
  double kib = 0, freed = 0;
  uint32_t k = s->epoch_n < HAK_POLICY_EPOCH ? s->epoch_n : HAK_POLICY_EPOCH;
  float before[HAK_LEARN_BUCKETS][2];
  memcpy(before, s->cell_ns, sizeof(before));
  for (uint32_t i = 0; i < k; i++) kib += s->epoch_kib[i] ? s->epoch_kib[i] : 1;
  for (uint32_t i = 0; i < k; i++) {
    int b = s->epoch_cell[i] >> 1, huge = s->epoch_cell[i] & 1;
    double f = own && huge ? (double)atomic_load_explicit(&free_cost[b], memory_order_relaxed) : 0;
    freed += f;
    double cap = s->cell_n[b][huge] >= 16 ? 8 * (double)before[b][huge] : 0;
#ifndef HAK_FAULT_CELLS_UNSCALED /* fault injection: the recorded requests take the whole window */
    cell_add(s, b, huge, window * (s->epoch_kib[i] ? s->epoch_kib[i] : 1) / kib * k / n + f, cap);
#else
    cell_add(s, b, huge, window * (s->epoch_kib[i] ? s->epoch_kib[i] : 1) / kib + f, cap);
#endif
    if (b < UCB_BUCKETS) m |= 1u << b;
  }
  double cost = (window + freed) / n;
  /* the budget: the site earns what its requests since the last close cost
   * under the policy in force; an exploration is charged its excess */
  if (s->epoch_explore) {
    /* against what the policy in force costs: its control cost, or its
     * cells' cheapest requests when lower (a stall raised the control
     * cost, and exploring would look free) */
    bool known;
    double ref = arm_cost(s, arm_in_force(s), true, FAST_MIN, &known);
    if (!known || !(ref < s->ctl_ns) || kind != HAK_DECIDE_UCB) ref = s->ctl_ns;
    double excess = s->ctl_ns > 0 ? (cost - ref) * n : window;
    uint64_t x = excess > 0 ? (uint64_t)excess : 0;
    budget_settle(s, x);
  } else {
    /* one slow window moves the cost the budget is earned from by at most
     * its own size: a stall must not buy exploration */
    double c = s->ctl_ns > 0 && cost > 4 * s->ctl_ns ? 4 * s->ctl_ns : cost;
    s->ctl_ns = s->ctl_ns > 0 ? s->ctl_ns + (c - s->ctl_ns) / 4 : c;
  }
  /* the measuring period the site's own cost asks for (applied by decide,
   * on the period's boundaries) */
  s->period_want = dear(s) ? PERIOD_LOG_DENSE : own_ns(s) >= CHEAP_NS ? PERIOD_LOG_SPARSE : PERIOD_LOG_CHEAP;
#ifdef HAK_FAULT_DENSE_OFF /* fault injection: one epoch per 64 requests, always */
  s->period_want = PERIOD_LOG_SPARSE;
#endif
  if (s->ctl_ns > 0) _hak_budget_earn(&s->budget, (uint64_t)(s->ctl_ns * (double)(uint32_t)(count - s->earned_count)));
  s->earned_count = count;
  s->epochs_all++;
  hak_atomic_add(st_epochs, 1);
  if (kind == HAK_DECIDE_UCB && m != 0) {
    /* relative to the policy in force as measured now: 0.5 for as costly,
     * more for cheaper (the scale drifts with the program, both sides alike) */
    double reward = s->ctl_ns > 0 ? s->ctl_ns / (s->ctl_ns + cost) : 0.5;
    for (int a = 0; a < HAK_UCB_ARMS; a++)
      if (arms_same(a, s->epoch_arm, m)) _hak_ucb_update(&s->ucb, a, reward);
    int prev = s->ucb.current;
    bool evaluate = ++s->epochs % HAK_POLICY_EVAL == 0;
    if (_hak_ucb_adopt(&s->ucb, fast_arm(s), now, HAK_UCB_COOLDOWN_NS) ||
        (evaluate && _hak_ucb_evaluate(&s->ucb, now, HAK_UCB_COOLDOWN_NS))) {
      atomic_store_explicit(&s->threshold, (uint32_t)_hak_ucb_threshold(&s->ucb), memory_order_relaxed);
      bool known;
      s->ctl_ns += arm_excess(s, s->ucb.current, prev, &known); /* the new arm's estimate */
      if (s->ctl_ns < 1) s->ctl_ns = 1;
      hak_atomic_add(st_adoptions, 1);
    }
  } else if (kind == HAK_DECIDE_ELO && s->epoch_arm >= 0) {
    uint64_t f = _hak_os->faults();
#ifndef HAK_FAULT_EPOCH_CROSS_THREAD /* fault injection: the first version */
    bool faults_ok = s->epoch_thread == thread_token() && f >= s->epoch_faults0;
#else
    bool faults_ok = true;
#endif
    if (faults_ok && hak_trylock(&pol_lock) == 0) {
      policy_ready();
      _hak_elo_record(&pol.elo, s->epoch_arm, cost, (double)(f - s->epoch_faults0) / n, (double)s->epoch_waste / n);
      hak_unlock(&pol_lock);
    }
  }
  settle_check(s);
}

/* Starts an epoch for a request of this size (site lock held): an
 * exploration when the site may and its budget admits it, else a control
 * epoch (the policy in force, measured). */
static void epoch_start(hak_site_t* s, size_t size, size_t thr, uint32_t count, uint64_t now) {
  int state = atomic_load_explicit(&lc_state, memory_order_relaxed);
  int b = bucket_of(size);
  uint64_t zero = 0; /* learning begins: the process-wide budget's clock */
  if (atomic_load_explicit(&g_t0, memory_order_relaxed) == 0) atomic_compare_exchange_strong(&g_t0, &zero, now);
  if (b < UCB_BUCKETS && s->mix[b] == 0) s->mix[b] = 1; /* seen: the mix decides what exploring means */
  bool may = state != HAK_FROZEN && (count >= EXPLORE_MIN_REQUESTS || dear(s)) && s->ctl_ns > 0 && !settled(s);
  s->epoch_explore = false;
  if (size < UCB_SPLIT) {
    s->epoch_kind = HAK_DECIDE_UCB;
    s->epoch_arm = arm_in_force(s);
    double x;
    int a = may && state != HAK_CANARY /* canaries try ELO candidates */ ? ucb_explore_arm(s, &x) : -1;
    if (a >= 0) {
      if (budget_admit(s, x, now)) {
        s->epoch_arm = a;
        s->epoch_explore = true;
      } else {
        hak_atomic_add(st_denied, 1);
      }
    }
  } else {
    if (hak_trylock(&pol_lock) != 0) return;
    policy_ready();
    int a = _hak_elo_champion(&pol.elo);
    if (may && (state == HAK_LEARN || _hak_lifecycle_canary(&pol.lc, &pol.rng))) a = _hak_elo_select(&pol.elo);
    hak_unlock(&pol_lock);
    /* a candidate that routes this size as the policy in force is a free
     * sample; one that routes it otherwise is an exploration, admitted by
     * the budget or else a control epoch that gives ELO no sample */
    bool huge_c = thr_huge(thr, size), huge_a = thr_huge(_hak_elo_thresholds[a], size);
    s->epoch_kind = HAK_DECIDE_ELO;
    s->epoch_arm = a;
    if (huge_a && !huge_c && keeps_blocks(s)) may = false; /* mapping what it keeps */
    if (huge_a != huge_c) {
      double x = cell_est(s, b, huge_a) - cell_est(s, b, huge_c);
      if (may && budget_admit(s, x, now)) {
        s->epoch_explore = true;
      } else {
        if (may) hak_atomic_add(st_denied, 1);
        s->epoch_arm = -1;
      }
    }
  }
  s->epoch_left = HAK_POLICY_EPOCH;
  s->epoch_seq++;
  s->epoch_n = 0;
  s->epoch_waste = 0;
  /* the page-fault count only ELO uses: a getrusage call, not paid by
   * UCB1's epochs (back to back on a dear site) */
  s->epoch_faults0 = s->epoch_kind == HAK_DECIDE_ELO ? _hak_os->faults() : 0;
  s->epoch_thread = thread_token();
  s->epoch_free0 = tls_free_ns;
  s->epoch_dec0 = decisions_now();
  s->epoch_t0 = now;
  s->epoch_count0 = count;
  if (s->epoch_explore) {
    s->epochs_explored++;
    hak_atomic_add(st_explored, 1);
  }
}

/* Applies the measuring period the site's cost asks for (site lock held,
 * at a close: no epoch open); returns the period in force. */
static uint32_t period_switch(hak_site_t* s, uint32_t lg) {
  uint32_t want = s->period_want;
  if (want == 0 || want == lg) return lg;
  atomic_store_explicit(&s->period_log, want, memory_order_relaxed);
  return want;
}

size_t _hak_policy_decide(hak_site_t* s, size_t size, hak_decision_t* d) {
  d->kind = HAK_DECIDE_NONE;
  size_t def = (size_t)hak_option(HAK_OPT_HUGE_THRESHOLD);
  /* what the size classes serve never reaches the learner, aligned or not */
  if (!evolving() || size <= HAK_SMALL_MAX) return def;
  count_decision();
  /* the policy in force: the site's arm below 2 MiB, ELO's champion above */
  uint32_t t = size < UCB_SPLIT && s ? atomic_load_explicit(&s->threshold, memory_order_relaxed)
                                     : atomic_load_explicit(&elo_threshold, memory_order_relaxed);
  size_t thr = t ? t : def;
  if (s == NULL) return thr;
  /* a site's requests cycle through a period of 64 positions (512 for a
   * cheap site): 0..7 an epoch, 8 closes it, the rest use the snapshot; a
   * dear site's (and a new one's) period is the epoch: back to back, each
   * closing at the next one's first request.  One request in 32 is timed
   * for the window. */
  uint32_t n = atomic_fetch_add_explicit(&s->large_count, 1, memory_order_relaxed);
  uint32_t lg = atomic_load_explicit(&s->period_log, memory_order_relaxed);
  if (lg == 0) lg = PERIOD_LOG_DENSE;
  uint32_t pos = n & ((1u << lg) - 1);
  bool timed = n % HAK_POLICY_TIMED == 0;
  if (pos > HAK_POLICY_EPOCH && !timed) return thr;
  if (!_hak_site_trylock(s)) return thr;
  uint64_t now = _hak_os->now_ns();
  if (timed && s->mix[bucket_of(size)] < UINT32_MAX) s->mix[bucket_of(size)]++;
  bool epoch = false;
  if (pos == HAK_POLICY_EPOCH) {
    epoch_close(s, now); /* its cost includes touching its blocks */
    period_switch(s, lg);
  } else if (pos < HAK_POLICY_EPOCH) {
    if (pos == 0) {
      epoch_close(s, now); /* one left open by a busy lock */
      /* a longer period starts at its own boundary: no epoch until then */
      if (period_switch(s, lg) <= lg || (n & ((1u << s->period_want) - 1)) == 0) epoch_start(s, size, thr, n, now);
    }
    epoch = s->epoch_kind != 0 && s->epoch_left > 0;
  }
  if (!epoch) {
    _hak_site_unlock(s);
    if (timed) {
      d->kind = HAK_DECIDE_TIMED;
      d->size = size;
      d->t0 = now;
      hak_atomic_add(st_samples, 1);
    }
    return thr;
  }
  s->epoch_left--;
  d->kind = (hak_decide_kind_t)s->epoch_kind;
  d->epoch_seq = s->epoch_seq;
  d->site = s;
  d->size = size;
  d->t0 = now;
  /* an epoch routes its own domain's requests by its arm, the others by
   * the policy in force */
  size_t epoch_thr = thr; /* a control epoch: the policy in force, exactly */
  if (s->epoch_explore && s->epoch_kind == HAK_DECIDE_UCB && size < UCB_SPLIT) epoch_thr = _hak_ucb_thresholds[s->epoch_arm];
  if (s->epoch_explore && s->epoch_kind == HAK_DECIDE_ELO && size >= UCB_SPLIT) epoch_thr = _hak_elo_thresholds[s->epoch_arm];
  _hak_site_unlock(s);
  hak_atomic_add(st_samples, 1);
  return epoch_thr;
}

static int mix_bucket(size_t size) {
  int b = 0;
  for (size_t edge = 128u << 10; b < HAK_MIX_BUCKETS - 1 && size >= edge; edge <<= 1) b++;
  return b;
}

/* Closes the window if it is due (pol_lock held). */
static void window_maybe_close(uint64_t now) {
  uint64_t d = decisions_now(), ops = d > pol.window_dec0 ? d - pol.window_dec0 : 0;
  if (ops < WINDOW_OPS && (now <= pol.window_start || now - pol.window_start < WINDOW_NS)) return;
  uint64_t explored = atomic_load_explicit(&st_epochs, memory_order_relaxed);
  bool learning_young = pol.lc.state == HAK_LEARN && explored - pol.learn_mark < FREEZE_MIN_EPOCHS;
  if (_hak_p99_count(&pol.p99) > 0 && !learning_young) {
    hak_learn_state_t before = pol.lc.state;
    hak_learn_state_t st = _hak_lifecycle_window(&pol.lc, _hak_p99_get(&pol.p99), pol.mix, now);
    if (st == HAK_LEARN && before != HAK_LEARN) pol.learn_mark = explored;
    atomic_store_explicit(&lc_state, (int)st, memory_order_relaxed);
    hak_atomic_add(st_windows, 1);
  }
  int played = _hak_elo_play(&pol.elo);
  if (played > 0) {
    hak_atomic_add(st_matches, (uint64_t)played);
    atomic_store_explicit(&elo_threshold, (uint32_t)_hak_elo_threshold(&pol.elo), memory_order_relaxed);
  }
  _hak_p99_reset(&pol.p99);
  memset(pol.mix, 0, sizeof(pol.mix));
  pol.window_start = now;
  pol.window_dec0 = decisions_now();
}

void _hak_policy_record(hak_decision_t* d, bool huge, bool fresh, size_t reserved) {
  (void)fresh;
  if (huge) hak_atomic_add(st_routed_huge, 1);
  if (d->kind == HAK_DECIDE_NONE) return;
  uint64_t now = _hak_os->now_ns();
  uint64_t cpu = now - d->t0;
  if (d->kind != HAK_DECIDE_TIMED && _hak_site_trylock(d->site)) {
    hak_site_t* s = d->site;
    if (s->epoch_seq == d->epoch_seq && s->epoch_kind != 0) {
      if (s->epoch_n < HAK_POLICY_EPOCH) {
        s->epoch_cell[s->epoch_n] = (uint8_t)(bucket_of(d->size) << 1 | huge);
        s->epoch_kib[s->epoch_n] = (uint32_t)((d->size >> 10) < UINT32_MAX ? d->size >> 10 : UINT32_MAX);
      }
      s->epoch_n++;
      s->epoch_waste += reserved > d->size ? reserved - d->size : 0;
    }
    _hak_site_unlock(s);
  }
  if (hak_trylock(&pol_lock) != 0) return;
  policy_ready();
  _hak_p99_add(&pol.p99, cpu);
  pol.mix[mix_bucket(d->size)]++;
  window_maybe_close(now);
  hak_unlock(&pol_lock);
}

void _hak_policy_stats(hak_stats_t* st) {
  st->learn_decisions = decisions_now(); /* other threads' last < 32 each are not in it */
  st->learn_samples = atomic_load(&st_samples);
  st->learn_explored = atomic_load(&st_explored);
  st->learn_adoptions = atomic_load(&st_adoptions);
  st->learn_matches = atomic_load(&st_matches);
  st->learn_windows = atomic_load(&st_windows);
  st->learn_routed_huge = atomic_load(&st_routed_huge);
  st->learn_explore_ns = atomic_load(&st_explore_ns);
  st->learn_denied = atomic_load(&st_denied);
  st->learn_settled = atomic_load(&st_settled);
}

const char* _hak_policy_mode_name(void) { return evolving() ? "evolving" : "baseline"; }

const char* _hak_policy_state_name(void) {
  if (!evolving()) return "off";
  return _hak_learn_state_name((hak_learn_state_t)atomic_load(&lc_state));
}

/* A copy of the ELO table for printing; false before any evolving work. */
bool _hak_policy_elo(hak_elo_t* out) {
  /* never waits long: exit-time statistics may run with the lock held by
   * the code a signal interrupted */
  int tries = 0;
  while (hak_trylock(&pol_lock) != 0)
    if (++tries == 1000) return false;
  bool ok = pol.ready;
  if (ok) *out = pol.elo;
  hak_unlock(&pol_lock);
  return ok;
}

void _hak_policy_lock(bool lock) {
  if (lock) pthread_mutex_lock(&pol_lock.m);
  else pthread_mutex_unlock(&pol_lock.m);
}
void _hak_policy_fork_child(void) { pthread_mutex_unlock(&pol_lock.m); /* held since prepare */ }
