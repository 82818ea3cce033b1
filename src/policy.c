/* Policy: which tier serves a large request, per call site.
 *
 * The decision is a threshold: a request of size >= threshold is mapped
 * directly (huge tier: BigCache, batch queue); a smaller one is served by
 * the size classes or by slice runs in segments.  It is made before the
 * block is allocated and is what routes it.
 *
 * baseline (HAKMEM_MODE=baseline): the fixed HAKMEM_HUGE_THRESHOLD (2 MiB).
 * evolving (HAKMEM_MODE=evolving), for requests of 64 KiB and more:
 *  - outside an experiment a request uses its site's snapshot: the arm its
 *    UCB1 bandit adopted (64 KiB .. 2 MiB), else the ELO champion among 12
 *    global candidates (512 KiB .. 32 MiB) once ELO has played, else the
 *    default;
 *  - while learning (lifecycle LEARN, or CANARY for 5 % of epochs) a site
 *    runs epochs, one every 64 of its requests (the 56 in between cost one
 *    counter): HAK_POLICY_EPOCH (8) consecutive requests routed by one
 *    choice, the site's UCB1 arm (epoch started by a request under 2 MiB)
 *    or an epsilon-greedy ELO candidate (2 MiB and more).  An epoch's cost
 *    is measured from its first request to the first request of the next
 *    epoch, so it includes the page faults the program takes touching the
 *    blocks (thread's fault counter, through the OS layer): per request,
 *    0.4 x time in the allocator (relative to 20 us) + 0.3 x faults per
 *    page requested + 0.3 x bytes reserved beyond the request (relative),
 *    each clamped to [0, 1]; the UCB1 reward is 1 - cost, ELO gets the raw
 *    per-request means (it normalizes per match);
 *  - every 4 closed epochs a site's UCB1 evaluates (adopt after 3 wins of
 *    8 %, at most once per 180 s) and the adopted arm becomes the site's
 *    snapshot; a window of 10,000 large requests or 2 s closes with the p99
 *    of the timed requests and the size mix into the lifecycle (LEARN ->
 *    FROZEN -> LEARN / CANARY; LEARN lasts at least 400 explored epochs)
 *    and plays ELO's pending matches.
 * In FROZEN no experiment runs; one request in 8 is timed for the window.
 * Learning never touches the small fast path; its work is guarded by
 * try-locks, so a busy learner skips instead of waiting.  Every random
 * choice comes from HAKMEM_SEED; time and faults come from the OS layer. */
#include <string.h>

#include "internal.h"

#define HAK_POLICY_EPOCH 8
#define HAK_POLICY_GAP 56 /* unmeasured requests between two epochs */
#define HAK_POLICY_EVAL 4
#define HAK_POLICY_TIMED 8
#define HAK_POLICY_MIN (64u << 10)
#define WINDOW_OPS 10000
#define WINDOW_NS (2ull * 1000000000ull)
#define UCB_SPLIT (2u << 20)
/* LEARN may not end before this many epochs were explored since it began:
 * a flat p99 alone (the estimator's buckets are coarse) is no convergence. */
#define FREEZE_MIN_EPOCHS 400

static pthread_mutex_t pol_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
  bool ready;
  hak_elo_t elo;
  hak_lifecycle_t lc;
  hak_p99_t p99;
  uint64_t mix[HAK_MIX_BUCKETS];
  uint64_t window_start;
  uint64_t learn_mark; /* st_explored when LEARN was last entered */
  hak_rng_t rng;
} pol;
static _Atomic(uint32_t) elo_threshold; /* champion, once a match is played */
static _Atomic(int) lc_state;
static _Atomic(uint64_t) window_ops;
static _Atomic(uint64_t) st_decisions, st_samples, st_explored, st_adoptions, st_matches, st_windows, st_routed_huge;

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
  _hak_p99_reset(&pol.p99);
  pol.window_start = _hak_os->now_ns();
  pol.ready = true;
}

static bool evolving(void) { return hak_option(HAK_OPT_MODE) == 1; }

static double clamp01(double x) { return x != x || x < 0 ? 0 : x > 1 ? 1 : x; }

/* A number for the calling thread, never reused (a tid or a TLS address
 * may be, by a later thread). */
static uint32_t thread_token(void) {
  static _Atomic(uint32_t) next;
  static __thread uint32_t token;
  if (hak_unlikely(token == 0)) token = atomic_fetch_add_explicit(&next, 1, memory_order_relaxed) + 1;
  return token;
}

/* Ends the site's epoch (site lock held): feeds its cost to its learner.
 * The page-fault counter is the thread's own (getrusage RUSAGE_THREAD): an
 * epoch closed by another thread than the one that opened it has no fault
 * count (the difference of two threads' counters, which wrapped to ~1.8e19
 * in the first version) and is dropped unmeasured. */
static void epoch_close(hak_site_t* s, uint64_t now) {
  if (s->epoch_kind == 0 || s->epoch_n == 0) return;
  uint64_t f = _hak_os->faults();
#ifndef HAK_FAULT_EPOCH_CROSS_THREAD /* fault injection: the first version */
  if (s->epoch_thread != thread_token() || f < s->epoch_faults0) {
    s->epoch_kind = 0;
    return;
  }
#endif
  double n = (double)s->epoch_n;
  double cpu = (double)s->epoch_cpu_ns / n;
  double faults = (double)(f - s->epoch_faults0) / n;
  double pages = (double)s->epoch_bytes / 4096.0 / n;
  double waste = (double)s->epoch_waste / n;
  if (s->epoch_kind == HAK_DECIDE_UCB) {
    double cost = 0.4 * clamp01(cpu / 20000.0) + 0.3 * clamp01(faults / (pages > 1 ? pages : 1)) +
                  0.3 * clamp01(waste * n / (double)s->epoch_bytes);
    _hak_ucb_update(&s->ucb, s->epoch_arm, 1.0 - cost);
    if (++s->epochs % HAK_POLICY_EVAL == 0 && _hak_ucb_evaluate(&s->ucb, now, HAK_UCB_COOLDOWN_NS)) {
      atomic_store_explicit(&s->threshold, (uint32_t)_hak_ucb_threshold(&s->ucb), memory_order_relaxed);
      hak_atomic_add(st_adoptions, 1);
    }
  } else if (hak_trylock(&pol_lock) == 0) {
    policy_ready();
    _hak_elo_record(&pol.elo, s->epoch_arm, cpu, faults, waste);
    hak_unlock(&pol_lock);
  }
  s->epoch_kind = 0;
}

/* Starts an epoch for a request of this size (site lock held); false if
 * no experiment should run now. */
static bool epoch_start(hak_site_t* s, size_t size, uint64_t now) {
  int state = atomic_load_explicit(&lc_state, memory_order_relaxed);
  if (state == HAK_FROZEN) return false;
  if (size < UCB_SPLIT) {
    if (state == HAK_CANARY) return false; /* canaries try ELO candidates */
    s->epoch_kind = HAK_DECIDE_UCB;
    s->epoch_arm = _hak_ucb_select(&s->ucb);
  } else {
    if (hak_trylock(&pol_lock) != 0) return false;
    policy_ready();
    bool go = state == HAK_LEARN || _hak_lifecycle_canary(&pol.lc, &pol.rng);
    if (go) s->epoch_arm = _hak_elo_select(&pol.elo);
    hak_unlock(&pol_lock);
    if (!go) return false;
    s->epoch_kind = HAK_DECIDE_ELO;
  }
  s->epoch_left = HAK_POLICY_EPOCH;
  s->epoch_seq++;
  s->epoch_n = 0;
  s->epoch_cpu_ns = s->epoch_bytes = s->epoch_waste = 0;
  s->epoch_faults0 = _hak_os->faults();
  s->epoch_thread = thread_token();
  (void)now;
  hak_atomic_add(st_explored, 1);
  return true;
}

size_t _hak_policy_decide(hak_site_t* s, size_t size, hak_decision_t* d) {
  d->kind = HAK_DECIDE_NONE;
  size_t def = (size_t)hak_option(HAK_OPT_HUGE_THRESHOLD);
  if (!evolving() || size < HAK_POLICY_MIN) return def;
  hak_atomic_add(st_decisions, 1);
  hak_atomic_add(window_ops, 1);
  uint32_t t = s ? atomic_load_explicit(&s->threshold, memory_order_relaxed) : 0;
  uint32_t e = atomic_load_explicit(&elo_threshold, memory_order_relaxed);
  size_t thr = t ? t : e ? e : def;
  if (s == NULL) return thr;
  /* a site's requests cycle through 64 positions: 0..7 an epoch, 8 closes
   * it, 9..63 use the snapshot; one request in 8 is timed for the window */
  uint32_t n = atomic_fetch_add_explicit(&s->large_count, 1, memory_order_relaxed);
  uint32_t pos = n % (HAK_POLICY_EPOCH + HAK_POLICY_GAP);
  bool timed = n % HAK_POLICY_TIMED == 0;
  if (pos > HAK_POLICY_EPOCH && !timed) return thr;
  if (!_hak_site_trylock(s)) return thr;
  uint64_t now = _hak_os->now_ns();
  bool epoch = false;
  if (pos == HAK_POLICY_EPOCH) {
    epoch_close(s, now); /* its cost includes touching its blocks */
  } else if (pos < HAK_POLICY_EPOCH) {
    if (pos == 0) {
      epoch_close(s, now); /* one left open by a busy lock */
      epoch_start(s, size, now);
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
  size_t epoch_thr = s->epoch_kind == HAK_DECIDE_UCB ? _hak_ucb_thresholds[s->epoch_arm] : _hak_elo_thresholds[s->epoch_arm];
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
  uint64_t ops = atomic_load_explicit(&window_ops, memory_order_relaxed);
  if (ops < WINDOW_OPS && (now <= pol.window_start || now - pol.window_start < WINDOW_NS)) return;
  uint64_t explored = atomic_load_explicit(&st_explored, memory_order_relaxed);
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
  atomic_store_explicit(&window_ops, 0, memory_order_relaxed);
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
      s->epoch_n++;
      s->epoch_cpu_ns += cpu;
      s->epoch_bytes += d->size;
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
  st->learn_decisions = atomic_load(&st_decisions);
  st->learn_samples = atomic_load(&st_samples);
  st->learn_explored = atomic_load(&st_explored);
  st->learn_adoptions = atomic_load(&st_adoptions);
  st->learn_matches = atomic_load(&st_matches);
  st->learn_windows = atomic_load(&st_windows);
  st->learn_routed_huge = atomic_load(&st_routed_huge);
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
  if (lock) pthread_mutex_lock(&pol_lock);
  else pthread_mutex_unlock(&pol_lock);
}
void _hak_policy_fork_child(void) { pthread_mutex_unlock(&pol_lock); /* held since prepare */ }
