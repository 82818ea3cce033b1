/* hakmem learners.
 *
 * Design note.  Four small, independent learners, each a plain struct the
 * caller owns and serializes; no allocation, I/O, clock or libm (sqrt, ln
 * and 10^x are below), deterministic given the inputs and seeds.
 *
 * - UCB1 (one per call site) picks which of 6 mmap thresholds (64 KiB ..
 *   2 MiB) to *try* for the next huge request: unplayed arms first, then
 *   argmax mean + sqrt(2 ln N / n).  Trying is not adopting: the threshold
 *   in force (`current`) changes only in _hak_ucb_evaluate, when the best
 *   arm by mean (>= 30 pulls) beats current's mean by >= 8 % on 3
 *   consecutive evaluations, and at most once per cooldown (the original
 *   used 180 s), so policy does not flap on noise -- or in _hak_ucb_adopt,
 *   when the caller has decisive evidence of another kind (a dear site's
 *   measured cells: policy.c), under the same cooldown.
 * - ELO ranks 12 global threshold strategies (512 KiB .. 32 MiB,
 *   geometric).  Epsilon-greedy (10 %) selection gathers cost samples;
 *   candidates with >= 50 samples since their last match play each other
 *   (K = 32), the lower scale-free cost 40 % CPU + 30 % faults + 30 % memory
 *   winning; the champion (best rating) is the policy in force.  Once every candidate has played, only the top 6 stay active,
 *   so exploration is not wasted on losers.
 * - The lifecycle turns learning off once p99 has converged (FROZEN) and
 *   back on when the workload changes (p99 degrades, or the size mix
 *   shifts), trying a candidate on 5 % of traffic (CANARY) first.
 * - The p99 estimator is a fixed log-linear histogram (4 sub-buckets per
 *   power of two, <= 25 % relative error) filled per window.
 */
#include "src/learn.h"

#include <float.h>

/* ---- math ------------------------------------------------------------------ */
#define HAK_LN2 0.69314718055994530942
#define HAK_LOG2_10 3.32192809488736234787
#define HAK_SQRT2 1.41421356237309504880

typedef union {
  double d;
  uint64_t u;
} hak_bits_t;

static bool finite_nonneg(double x) { return x >= 0 && x <= DBL_MAX; }

double _hak_learn_sqrt(double x) {
  if (!(x > 0)) return 0;
  if (x > DBL_MAX) return x;
  hak_bits_t v = {x};
  v.u = (v.u >> 1) + 0x1ff8000000000000ull; /* halve the exponent */
  double y = 0.5 * (v.d + x / v.d);         /* now y >= sqrt(x) (AM-GM) */
  for (;;) {                                /* Newton decreases strictly */
    double n = 0.5 * (y + x / y);
    if (!(n < y)) return y;
    y = n;
  }
}

/* ln x = e ln 2 + 2 atanh((m - 1) / (m + 1)), m in [sqrt(1/2), sqrt(2)). */
double _hak_learn_ln(double x) {
  if (!(x > 0)) return -1e308;
  if (x > DBL_MAX) return x;
  int e = 0;
  if (x < DBL_MIN) {
    x *= 0x1p54;
    e = -54;
  }
  hak_bits_t v = {x};
  e += (int)((v.u >> 52) & 0x7ff) - 1023;
  v.u = (v.u & 0x000fffffffffffffull) | 0x3ff0000000000000ull;
  double m = v.d;
  if (m > HAK_SQRT2) {
    m *= 0.5;
    e++;
  }
  double s = (m - 1) / (m + 1), s2 = s * s, term = s, sum = 0; /* |s| < 0.172 */
  for (int k = 1; k < 40; k += 2) {
    sum += term / k;
    term *= s2;
  }
  return e * HAK_LN2 + 2 * sum;
}

/* 10^x = 2^n * e^(f ln 2), y = x log2 10 = n + f, |f| <= 1/2. */
double _hak_learn_pow10(double x) {
  if (x != x) x = 0;
  if (x > 300) x = 300;
  if (x < -300) x = -300;
  double y = x * HAK_LOG2_10;
  int n = (int)(y < 0 ? y - 0.5 : y + 0.5);
  double t = (y - n) * HAK_LN2, term = 1, sum = 1;
  for (int k = 1; k < 20; k++) {
    term *= t / k;
    sum += term;
  }
  hak_bits_t p = {.u = (uint64_t)(n + 1023) << 52}; /* n in [-997, 997] */
  return sum * p.d;
}

/* ---- PRNG: splitmix64 -------------------------------------------------------- */
void _hak_rng_seed(hak_rng_t* r, uint64_t seed) { r->s = seed; }

uint64_t _hak_rng_next(hak_rng_t* r) {
  uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

double _hak_rng_unit(hak_rng_t* r) { return (double)(_hak_rng_next(r) >> 11) * 0x1p-53; }

/* ---- UCB1 ------------------------------------------------------------------------ */
const size_t _hak_ucb_thresholds[HAK_UCB_ARMS] = {
    64u << 10, 128u << 10, 256u << 10, 512u << 10, 1u << 20, 2u << 20,
};

void _hak_ucb_init(hak_ucb_t* u, int initial_arm) {
  *u = (hak_ucb_t){0};
  u->current = initial_arm >= 0 && initial_arm < HAK_UCB_ARMS ? initial_arm : HAK_UCB_ARMS - 1;
  u->challenger = -1;
}

double _hak_ucb_mean(const hak_ucb_t* u, int arm) {
  if (arm < 0 || arm >= HAK_UCB_ARMS || u->pulls[arm] == 0) return 0;
  return u->reward[arm] / (double)u->pulls[arm];
}

int _hak_ucb_select(const hak_ucb_t* u) {
  for (int a = 0; a < HAK_UCB_ARMS; a++)
    if (u->pulls[a] == 0) return a;
  double ln_total = _hak_learn_ln((double)u->total);
  int best = 0;
  double best_score = -1;
  for (int a = 0; a < HAK_UCB_ARMS; a++) {
    double score = _hak_ucb_mean(u, a) + _hak_learn_sqrt(2.0 * ln_total / (double)u->pulls[a]);
    if (score > best_score) {
      best_score = score;
      best = a;
    }
  }
  return best;
}

void _hak_ucb_update(hak_ucb_t* u, int arm, double reward) {
  if (arm < 0 || arm >= HAK_UCB_ARMS) return;
  if (!(reward > 0)) reward = 0; /* NaN, -inf, negative */
  if (reward > 1) reward = 1;    /* +inf */
  u->pulls[arm]++;
  u->reward[arm] += reward;
  u->total++;
}

/* One evaluation.  The challenger is the arm with the highest mean among
 * those with >= HAK_UCB_MIN_PULLS pulls (ties -> lower index).  It "wins"
 * when it is not current and its mean is >= HAK_UCB_MARGIN x current's and
 * strictly greater.  Current's own pull count is not required: UCB stops
 * pulling a bad arm, and a bad current arm must still be replaceable
 * (unplayed, its mean counts as 0).  A win
 * by the same arm as last time extends the streak, a win by another arm
 * restarts it at 1, anything else clears it.  With the streak at
 * HAK_UCB_STREAK the challenger is adopted, unless an earlier adoption
 * happened less than cooldown_ns ago (the first adoption has no cooldown; a
 * clock going backwards counts as no time elapsed); a blocked streak stays
 * at HAK_UCB_STREAK, so it adopts once the cooldown ends if it still wins. */
bool _hak_ucb_evaluate(hak_ucb_t* u, uint64_t now_ns, uint64_t cooldown_ns) {
  u->evaluations++;
  int best = -1;
  for (int a = 0; a < HAK_UCB_ARMS; a++)
    if (u->pulls[a] >= HAK_UCB_MIN_PULLS && (best < 0 || _hak_ucb_mean(u, a) > _hak_ucb_mean(u, best))) best = a;
  double mb = _hak_ucb_mean(u, best), mc = _hak_ucb_mean(u, u->current);
  if (best < 0 || best == u->current || !(mb >= HAK_UCB_MARGIN * mc && mb > mc)) {
    u->challenger = -1;
    u->streak = 0;
    return false;
  }
  if (best == u->challenger) {
    if (u->streak < HAK_UCB_STREAK) u->streak++;
  } else {
    u->challenger = best;
    u->streak = 1;
  }
  if (u->streak < HAK_UCB_STREAK) return false;
  return _hak_ucb_adopt(u, best, now_ns, cooldown_ns);
}

bool _hak_ucb_adopt(hak_ucb_t* u, int arm, uint64_t now_ns, uint64_t cooldown_ns) {
  if (arm < 0 || arm >= HAK_UCB_ARMS || arm == u->current) return false;
  if (u->adoptions > 0 && (now_ns < u->last_adopt_ns || now_ns - u->last_adopt_ns < cooldown_ns)) return false;
  u->current = arm;
  u->challenger = -1;
  u->streak = 0;
  u->last_adopt_ns = now_ns;
  u->adoptions++;
  return true;
}

size_t _hak_ucb_threshold(const hak_ucb_t* u) { return _hak_ucb_thresholds[u->current]; }

/* ---- ELO ---------------------------------------------------------------------------
 * Matches: at _hak_elo_play every pair of ready candidates (active, with
 * >= HAK_ELO_MIN_SAMPLES samples since their last match) plays once, in
 * index order (0-1, 0-2, ..., 1-2, ...), each match using the means
 * accumulated so far and the ratings as updated by the previous match; then
 * the accumulators of everyone who played are reset.  The champion gets
 * ~90 % of the samples, so it is ready at nearly every call and meets each
 * challenger as that one becomes ready; challengers ready at the same call
 * also meet each other, which orders the losers (champion-only matches would
 * leave them all at about the same rating, making the cut arbitrary).
 * Calling play at window boundaries rather than per sample lets more
 * challengers become ready together.  Pruning starts once every candidate
 * has played at least one match (so none is eliminated on its untested
 * initial rating); from then on, after each play that played a match,
 * exactly the top HAK_ELO_SURVIVORS of all 12 by rating (ties -> lower
 * index) are active: a survivor that keeps losing can fall below an
 * eliminated candidate's frozen rating, which brings that one back. */
const size_t _hak_elo_thresholds[HAK_ELO_CANDIDATES] = {
    524288, 765952, 1118208, 1630208, 2379776, 3473408,
    5066752, 7393280, 10792960, 15753216, 22990848, 33554432,
};

void _hak_elo_init(hak_elo_t* e, uint64_t seed) {
  *e = (hak_elo_t){0};
  for (int i = 0; i < HAK_ELO_CANDIDATES; i++) {
    e->c[i].threshold = _hak_elo_thresholds[i];
    e->c[i].rating = HAK_ELO_INITIAL;
    e->c[i].active = true;
  }
  _hak_rng_seed(&e->rng, seed);
  e->epsilon = 0.1;
}

int _hak_elo_champion(const hak_elo_t* e) {
  int best = -1;
  for (int i = 0; i < HAK_ELO_CANDIDATES; i++)
    if (e->c[i].active && (best < 0 || e->c[i].rating > e->c[best].rating)) best = i;
  return best < 0 ? 0 : best;
}

size_t _hak_elo_threshold(const hak_elo_t* e) { return e->c[_hak_elo_champion(e)].threshold; }

int _hak_elo_select(hak_elo_t* e) {
  e->selections++;
  if (_hak_rng_unit(&e->rng) >= e->epsilon) return _hak_elo_champion(e); /* NaN epsilon: never explore */
  int active = 0;
  for (int i = 0; i < HAK_ELO_CANDIDATES; i++) active += e->c[i].active;
  if (active == 0) return _hak_elo_champion(e);
  int pick = (int)(_hak_rng_unit(&e->rng) * active);
  e->explorations++;
  for (int i = 0; i < HAK_ELO_CANDIDATES; i++)
    if (e->c[i].active && pick-- == 0) return i;
  return _hak_elo_champion(e); /* not reached */
}

void _hak_elo_record(hak_elo_t* e, int cand, double cpu_ns, double page_faults, double bytes) {
  if (cand < 0 || cand >= HAK_ELO_CANDIDATES || !e->c[cand].active) return;
  hak_elo_cand_t* c = &e->c[cand];
  if (!finite_nonneg(cpu_ns) || !finite_nonneg(page_faults) || !finite_nonneg(bytes)) return;
  if (!finite_nonneg(c->cpu_ns + cpu_ns) || !finite_nonneg(c->page_faults + page_faults) ||
      !finite_nonneg(c->bytes + bytes))
    return; /* the sums would overflow */
  c->cpu_ns += cpu_ns;
  c->page_faults += page_faults;
  c->bytes += bytes;
  c->n++;
  c->samples++;
}

/* x's share of x + y (0.5 when both are 0). */
static double share(double x, double y) { return x + y > 0 ? x / (x + y) : 0.5; }

static void elo_match(hak_elo_t* e, int ia, int ib) {
  hak_elo_cand_t *a = &e->c[ia], *b = &e->c[ib];
  double na = (double)a->n, nb = (double)b->n;
  double cost_a = 0.4 * share(a->cpu_ns / na, b->cpu_ns / nb) + 0.3 * share(a->page_faults / na, b->page_faults / nb) +
                  0.3 * share(a->bytes / na, b->bytes / nb);
  double cost_b = 0.4 * share(b->cpu_ns / nb, a->cpu_ns / na) + 0.3 * share(b->page_faults / nb, a->page_faults / na) +
                  0.3 * share(b->bytes / nb, a->bytes / na);
  double score = cost_a < cost_b - 1e-9 ? 1 : cost_b < cost_a - 1e-9 ? 0 : 0.5;
  double expect = 1 / (1 + _hak_learn_pow10((b->rating - a->rating) / 400));
  double d = HAK_ELO_K * (score - expect);
  a->rating += d;
  b->rating -= d; /* the sum is conserved */
  a->matches++;
  b->matches++;
  a->wins += score == 1;
  b->wins += score == 0;
  e->matches++;
}

static void elo_reset(hak_elo_cand_t* c) {
  c->n = 0;
  c->cpu_ns = c->page_faults = c->bytes = 0;
}

int _hak_elo_play(hak_elo_t* e) {
  bool ready[HAK_ELO_CANDIDATES], done[HAK_ELO_CANDIDATES] = {false};
  for (int i = 0; i < HAK_ELO_CANDIDATES; i++) ready[i] = e->c[i].active && e->c[i].n >= HAK_ELO_MIN_SAMPLES;
  int played = 0;
  for (int i = 0; i < HAK_ELO_CANDIDATES; i++)
    for (int j = i + 1; j < HAK_ELO_CANDIDATES && ready[i]; j++) {
      if (!ready[j]) continue;
      elo_match(e, i, j);
      done[i] = done[j] = true;
      played++;
    }
  if (played == 0) return 0;
  bool all_played = true;
  for (int i = 0; i < HAK_ELO_CANDIDATES; i++) {
    if (done[i]) elo_reset(&e->c[i]);
    all_played &= e->c[i].matches > 0;
  }
  e->pruned |= all_played;
  if (!e->pruned) return played;
  for (int i = 0; i < HAK_ELO_CANDIDATES; i++) {
    int above = 0;
    for (int j = 0; j < HAK_ELO_CANDIDATES; j++)
      above += e->c[j].rating > e->c[i].rating || (e->c[j].rating == e->c[i].rating && j < i);
    e->c[i].active = above < HAK_ELO_SURVIVORS;
    if (!e->c[i].active) elo_reset(&e->c[i]);
  }
  return played;
}

/* ---- lifecycle ------------------------------------------------------------------------
 * Windows with a NaN, infinite or negative p99 are ignored entirely.
 * LEARN:  a window is "stable" when its p99 is within 1 % of the previous
 *         accepted window's (|p - prev| <= 0.01 prev); after 3 consecutive
 *         stable windows (so the 4th window of a flat stream), or on any
 *         window arriving >= 180 s after LEARN was entered, -> FROZEN.
 *         Freezing records that window's p99 and normalized mix as the
 *         baseline (an all-zero or NULL mix leaves the baseline mix unset;
 *         the next window with a mix sets it).
 * FROZEN: mix shift (total variation distance to the baseline >= 0.25)
 *         -> LEARN.  Else a degraded window (p99 >= 1.2 x baseline and
 *         > baseline) -> CANARY (degraded = 1).  Else stay.
 * CANARY: mix shift -> LEARN.  Degraded window: degraded + 1, and at 3
 *         (the 3rd consecutive degraded window) -> LEARN.  A window that is
 *         not degraded -> FROZEN with the same baseline.
 * Entering LEARN restarts the 180 s clock and the stable count, with the
 * triggering window as the previous one. */
static bool mix_normalize(const uint64_t* mix, double out[HAK_MIX_BUCKETS]) {
  double total = 0;
  for (int i = 0; i < HAK_MIX_BUCKETS; i++) total += mix ? (double)mix[i] : 0;
  for (int i = 0; i < HAK_MIX_BUCKETS; i++) out[i] = total > 0 ? (double)mix[i] / total : 0;
  return total > 0;
}

static double tvd(const double a[HAK_MIX_BUCKETS], const double b[HAK_MIX_BUCKETS]) {
  double d = 0;
  for (int i = 0; i < HAK_MIX_BUCKETS; i++) d += a[i] > b[i] ? a[i] - b[i] : b[i] - a[i];
#ifdef HAK_FAULT_MIX_UNCLAMPED /* fault injection: the distance may round above 1 */
  return d / 2;
#else
  return d >= 2 ? 1 : d / 2; /* rounding can sum disjoint mixes to 2 + 1 ulp */
#endif
}

double _hak_mix_distance(const uint64_t a[HAK_MIX_BUCKETS], const uint64_t b[HAK_MIX_BUCKETS]) {
  double na[HAK_MIX_BUCKETS], nb[HAK_MIX_BUCKETS];
  if (!mix_normalize(a, na) || !mix_normalize(b, nb)) return 0;
  return tvd(na, nb);
}

void _hak_lifecycle_init(hak_lifecycle_t* l, uint64_t now_ns) {
  *l = (hak_lifecycle_t){0};
  l->state = HAK_LEARN;
  l->learn_since_ns = now_ns;
}

static void lc_learn(hak_lifecycle_t* l, uint64_t now_ns) {
  l->state = HAK_LEARN;
  l->learn_since_ns = now_ns;
  l->stable = l->degraded = 0;
  l->relearns++;
}

hak_learn_state_t _hak_lifecycle_window(hak_lifecycle_t* l, double p99, const uint64_t mix[HAK_MIX_BUCKETS],
                                        uint64_t now_ns) {
  if (!finite_nonneg(p99)) return l->state;
  double m[HAK_MIX_BUCKETS];
  bool has_mix = mix_normalize(mix, m);
  bool stable = l->have_prev && (p99 > l->prev_p99 ? p99 - l->prev_p99 : l->prev_p99 - p99) <= HAK_LC_STABLE_PCT * l->prev_p99;
  l->windows++;
  l->prev_p99 = p99;
  l->have_prev = true;
  if (l->state == HAK_LEARN) {
    l->stable = stable ? l->stable + (l->stable < HAK_LC_STABLE_WINDOWS) : 0;
    uint64_t spent = now_ns >= l->learn_since_ns ? now_ns - l->learn_since_ns : 0;
    if (l->stable >= HAK_LC_STABLE_WINDOWS || spent >= HAK_LC_MAX_LEARN_NS) {
      l->state = HAK_FROZEN;
      l->stable = l->degraded = 0;
      l->base_p99 = p99;
      l->base_mix_valid = has_mix;
      for (int i = 0; i < HAK_MIX_BUCKETS; i++) l->base_mix[i] = m[i];
      l->freezes++;
    }
    return l->state;
  }
  if (has_mix && !l->base_mix_valid) {
    for (int i = 0; i < HAK_MIX_BUCKETS; i++) l->base_mix[i] = m[i];
    l->base_mix_valid = true;
  }
  if (has_mix && tvd(m, l->base_mix) >= HAK_LC_MIX_SHIFT) {
    lc_learn(l, now_ns);
  } else if (!(p99 >= HAK_LC_DEGRADE * l->base_p99 && p99 > l->base_p99)) {
    l->state = HAK_FROZEN;
    l->degraded = 0;
  } else if (++l->degraded >= HAK_LC_DEGRADE_WINDOWS) {
    lc_learn(l, now_ns);
  } else if (l->state == HAK_FROZEN) {
    l->state = HAK_CANARY;
    l->canaries++;
  }
  return l->state;
}

bool _hak_lifecycle_canary(const hak_lifecycle_t* l, hak_rng_t* r) {
  return l->state == HAK_CANARY && _hak_rng_unit(r) < HAK_LC_CANARY_FRACTION;
}

const char* _hak_learn_state_name(hak_learn_state_t s) {
  switch (s) {
    case HAK_LEARN: return "learn";
    case HAK_FROZEN: return "frozen";
    case HAK_CANARY: return "canary";
  }
  return "unknown";
}

/* ---- exploration budget ------------------------------------------------------------ */
static uint64_t sat_add(uint64_t a, uint64_t b) { return a + b < a ? UINT64_MAX : a + b; }

uint64_t _hak_budget_limit(const hak_budget_t* b) {
  /* earned / 1000 * permille: no overflow for any earned */
  return b->earned_ns / 1000 * HAK_EXPLORE_PERMILLE + b->earned_ns % 1000 * HAK_EXPLORE_PERMILLE / 1000;
}

void _hak_budget_earn(hak_budget_t* b, uint64_t ns) { b->earned_ns = sat_add(b->earned_ns, ns); }

bool _hak_budget_admit(hak_budget_t* b, uint64_t reserve_ns) {
  if (reserve_ns == 0) reserve_ns = 1; /* no budget, no exploration, however cheap it looks */
  uint64_t need = sat_add(b->spent_ns, reserve_ns);
#ifdef HAK_FAULT_BUDGET_IGNORED /* fault injection: exploration never waits for its budget */
  need = 0;
#endif
  if (b->reserved_ns != 0 || need > _hak_budget_limit(b)) {
    b->denied++;
    return false;
  }
  b->reserved_ns = reserve_ns;
  b->admitted++;
  return true;
}

void _hak_budget_settle(hak_budget_t* b, uint64_t excess_ns) {
  if (b->reserved_ns == 0) return;
  b->spent_ns = sat_add(b->spent_ns, excess_ns);
  if (excess_ns > b->reserved_ns) b->overrun_ns = sat_add(b->overrun_ns, excess_ns - b->reserved_ns);
  b->reserved_ns = 0;
}

/* ---- p99 estimator ---------------------------------------------------------------------- */
static unsigned p99_index(uint64_t v) {
  if (v < 4) return (unsigned)v;
  unsigned e = 63u - (unsigned)__builtin_clzll(v); /* 2 .. 63 */
  return 4 * (e - 1) + (unsigned)((v >> (e - 2)) & 3);
}

/* Exclusive upper edge of bucket i. */
static double p99_upper(unsigned i) {
  if (i < 4) return i + 1;
  unsigned e = i / 4 + 1, sub = i % 4;
  return (double)(5 + sub) * (double)(1ull << (e - 2));
}

void _hak_p99_reset(hak_p99_t* h) { *h = (hak_p99_t){0}; }

void _hak_p99_add(hak_p99_t* h, uint64_t ns) {
  h->b[p99_index(ns)]++;
  h->n++;
}

uint64_t _hak_p99_count(const hak_p99_t* h) { return h->n; }

double _hak_p99_get(const hak_p99_t* h) {
  if (h->n == 0) return 0;
  uint64_t rank = h->n - h->n / 100, seen = 0; /* ceil(0.99 n) >= 1 */
  for (unsigned i = 0; i < HAK_P99_BUCKETS; i++) {
    seen += h->b[i];
    if (seen >= rank) return p99_upper(i);
  }
  return 0; /* not reached: seen ends at n */
}
