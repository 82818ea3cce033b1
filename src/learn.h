/* hakmem learners: a seedable PRNG, UCB1 per call site over the mmap
 * thresholds, ELO selection among threshold strategies, the LEARN/FROZEN/
 * CANARY lifecycle and an allocation-free p99 estimator.  Hermetic: no
 * allocation, no I/O, no clock, no libm, no global mutable state; every
 * learner lives in a caller-provided struct and is deterministic given its
 * inputs and seed.  Not thread-safe: the caller serializes access to each
 * struct.  The design note is at the top of learn.c. */
#ifndef HAK_LEARN_H
#define HAK_LEARN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HAK_LEARN_API __attribute__((visibility("hidden")))

/* ---- math without libm (exposed for tests) ------------------------------ */
HAK_LEARN_API double _hak_learn_sqrt(double x);  /* x <= 0 or NaN -> 0     */
HAK_LEARN_API double _hak_learn_ln(double x);    /* x <= 0 or NaN -> -1e308 */
HAK_LEARN_API double _hak_learn_pow10(double x); /* x clamped to +-300     */

/* ---- PRNG: splitmix64 ---------------------------------------------------- */
typedef struct {
  uint64_t s;
} hak_rng_t;
HAK_LEARN_API void _hak_rng_seed(hak_rng_t* r, uint64_t seed);
HAK_LEARN_API uint64_t _hak_rng_next(hak_rng_t* r);
HAK_LEARN_API double _hak_rng_unit(hak_rng_t* r); /* uniform in [0,1) */

/* ---- UCB1 per call site over the mmap-threshold arms --------------------- */
#define HAK_UCB_ARMS 6
#define HAK_UCB_MIN_PULLS 30 /* an arm's mean counts in evaluate from here */
#define HAK_UCB_MARGIN 1.08  /* challenger mean >= 1.08 x current mean     */
#define HAK_UCB_STREAK 3     /* ... on this many consecutive evaluations   */
#define HAK_UCB_COOLDOWN_NS (180ull * 1000000000ull) /* the original's    */
HAK_LEARN_API extern const size_t _hak_ucb_thresholds[HAK_UCB_ARMS];

/* Invariants: sum of pulls[] == total; 0 <= reward[a] <= pulls[a];
 * 0 <= current < HAK_UCB_ARMS; challenger == -1 or (in range and
 * != current); 0 <= streak <= HAK_UCB_STREAK, and streak == 0 iff
 * challenger == -1; adoptions == 0 implies last_adopt_ns == 0. */
typedef struct {
  uint64_t pulls[HAK_UCB_ARMS];
  double reward[HAK_UCB_ARMS]; /* sum of clamped rewards */
  uint64_t total;
  int current;    /* adopted arm: the one whose threshold is in force */
  int challenger; /* arm currently beating current, or -1             */
  int streak;     /* consecutive evaluations challenger has won       */
  uint64_t last_adopt_ns;
  uint64_t adoptions;
  uint64_t evaluations;
} hak_ucb_t;

/* initial_arm out of range -> the last arm (2 MiB, the default policy). */
HAK_LEARN_API void _hak_ucb_init(hak_ucb_t* u, int initial_arm);
/* Unplayed arms first (lowest index), else argmax of
 * mean + sqrt(2 ln(total) / pulls); ties -> lower index. */
HAK_LEARN_API int _hak_ucb_select(const hak_ucb_t* u);
/* reward in [0,1], higher is better; NaN -> 0, else clamped to [0,1].
 * An out-of-range arm is ignored. */
HAK_LEARN_API void _hak_ucb_update(hak_ucb_t* u, int arm, double reward);
/* One evaluation (see learn.c); true when it adopted a new arm. */
HAK_LEARN_API bool _hak_ucb_evaluate(hak_ucb_t* u, uint64_t now_ns, uint64_t cooldown_ns);
/* Adopts arm now (the caller has decisive evidence of another kind), under
 * the same cooldown as evaluate; true when it did. */
HAK_LEARN_API bool _hak_ucb_adopt(hak_ucb_t* u, int arm, uint64_t now_ns, uint64_t cooldown_ns);
HAK_LEARN_API double _hak_ucb_mean(const hak_ucb_t* u, int arm); /* 0 if unplayed */
HAK_LEARN_API size_t _hak_ucb_threshold(const hak_ucb_t* u);

/* ---- ELO strategy selection ---------------------------------------------- */
#define HAK_ELO_CANDIDATES 12
#define HAK_ELO_SURVIVORS 6
#define HAK_ELO_MIN_SAMPLES 50
#define HAK_ELO_K 32.0
#define HAK_ELO_INITIAL 1500.0
/* 512 KiB * 2^(6k/11) rounded to 4 KiB: 512 KiB .. 32 MiB. */
HAK_LEARN_API extern const size_t _hak_elo_thresholds[HAK_ELO_CANDIDATES];

/* Invariants: threshold == _hak_elo_thresholds[index]; rating is finite;
 * n <= samples; cpu_ns, page_faults, bytes are finite sums of n
 * non-negative samples (all 0 when n == 0); an inactive candidate has
 * n == 0. */
typedef struct {
  size_t threshold;
  double rating;
  uint64_t samples; /* accepted samples, lifetime      */
  bool active;
  uint64_t matches; /* matches played, lifetime        */
  uint64_t wins;
  uint64_t n; /* samples since this candidate's last match  */
  double cpu_ns, page_faults, bytes; /* their sums          */
} hak_elo_cand_t;

/* Invariants: the sum of ratings is 12 * 1500 (each match moves +d / -d);
 * before `pruned` all candidates are active, after it exactly
 * HAK_ELO_SURVIVORS are; pruned becomes true at the end of the first
 * _hak_elo_play after which every candidate has played a match. */
typedef struct {
  hak_elo_cand_t c[HAK_ELO_CANDIDATES];
  hak_rng_t rng;
  double epsilon; /* exploration probability, 0.1 */
  uint64_t matches;
  uint64_t selections, explorations;
  bool pruned;
} hak_elo_t;

HAK_LEARN_API void _hak_elo_init(hak_elo_t* e, uint64_t seed);
/* Epsilon-greedy: with probability epsilon a uniformly random active
 * candidate, else the champion. */
HAK_LEARN_API int _hak_elo_select(hak_elo_t* e);
/* One cost sample.  Ignored: cand out of range or inactive, any value NaN,
 * infinite or negative. */
HAK_LEARN_API void _hak_elo_record(hak_elo_t* e, int cand, double cpu_ns, double page_faults, double bytes);
/* Plays every pending match (rules in learn.c); returns how many. */
HAK_LEARN_API int _hak_elo_play(hak_elo_t* e);
/* Highest rating among active, ties -> lower index. */
HAK_LEARN_API int _hak_elo_champion(const hak_elo_t* e);
HAK_LEARN_API size_t _hak_elo_threshold(const hak_elo_t* e);

/* ---- learning lifecycle --------------------------------------------------- */
typedef enum { HAK_LEARN = 0, HAK_FROZEN = 1, HAK_CANARY = 2 } hak_learn_state_t;
#define HAK_MIX_BUCKETS 8
#define HAK_LC_STABLE_PCT 0.01    /* converged: within 1 % of previous ... */
#define HAK_LC_STABLE_WINDOWS 3   /* ... on 3 consecutive windows          */
#define HAK_LC_MAX_LEARN_NS (180ull * 1000000000ull)
#define HAK_LC_DEGRADE 1.20       /* degraded: p99 >= 1.2 x baseline       */
#define HAK_LC_DEGRADE_WINDOWS 3
#define HAK_LC_MIX_SHIFT 0.25     /* total variation distance            */
#define HAK_LC_CANARY_FRACTION 0.05

/* Invariants: state is one of the three; stable <= HAK_LC_STABLE_WINDOWS;
 * degraded == 0 in LEARN and FROZEN, 1 <= degraded < HAK_LC_DEGRADE_WINDOWS
 * in CANARY; base_mix sums to 1 when base_mix_valid, is all 0 otherwise. */
typedef struct {
  hak_learn_state_t state;
  uint64_t learn_since_ns; /* when LEARN was last entered         */
  double prev_p99;         /* previous accepted window (have_prev) */
  bool have_prev;
  int stable;   /* LEARN: consecutive windows within 1 % of their previous */
  int degraded; /* CANARY: consecutive degraded windows                    */
  double base_p99; /* FROZEN/CANARY: baseline at freezing                  */
  double base_mix[HAK_MIX_BUCKETS];
  bool base_mix_valid;
  uint64_t windows, freezes, relearns, canaries; /* counters */
} hak_lifecycle_t;

HAK_LEARN_API void _hak_lifecycle_init(hak_lifecycle_t* l, uint64_t now_ns);
/* Feeds one closed window; mix may be NULL (no mix information).
 * Returns the new state. */
HAK_LEARN_API hak_learn_state_t _hak_lifecycle_window(hak_lifecycle_t* l, double p99_ns,
                                                      const uint64_t mix[HAK_MIX_BUCKETS], uint64_t now_ns);
/* In CANARY: true for ~5 % of calls (draws from r); otherwise false. */
HAK_LEARN_API bool _hak_lifecycle_canary(const hak_lifecycle_t* l, hak_rng_t* r);
HAK_LEARN_API const char* _hak_learn_state_name(hak_learn_state_t s);
/* Total variation distance of two count vectors (normalized inside);
 * 0 when either is all zero. */
HAK_LEARN_API double _hak_mix_distance(const uint64_t a[HAK_MIX_BUCKETS], const uint64_t b[HAK_MIX_BUCKETS]);

/* ---- exploration budget (one per call site) --------------------------------
 * Exploration is paid for out of what the site has cost under the policy in
 * force: its excess cost (measured cost of an exploring epoch beyond what
 * the policy in force would have cost) may reach HAK_EXPLORE_PERMILLE / 1000
 * of it.  An exploring epoch is admitted only with a reservation (the
 * estimate of its excess) that fits; when it closes, its measured excess is
 * charged, and whatever it cost beyond its reservation is also counted as
 * overrun (the estimate was wrong; it still counts against later
 * admissions, which need spent + reserve <= limit).  Invariant, at every
 * step:
 *   spent_ns + reserved_ns <= limit + overrun_ns,  limit = earned_ns * permille / 1000
 * and at most one reservation is open. */
#define HAK_EXPLORE_PERMILLE 20
typedef struct {
  uint64_t earned_ns;   /* the site's cost under the policy in force     */
  uint64_t spent_ns;    /* excess cost of exploration, as measured       */
  uint64_t overrun_ns;  /* part of spent_ns beyond each reservation      */
  uint64_t reserved_ns; /* the open exploration's reservation, 0: none   */
  uint64_t admitted, denied;
} hak_budget_t;

HAK_LEARN_API uint64_t _hak_budget_limit(const hak_budget_t* b);
/* Adds to the site's cost (saturating). */
HAK_LEARN_API void _hak_budget_earn(hak_budget_t* b, uint64_t ns);
/* Opens an exploration reserving reserve_ns (at least 1): true when none is
 * open and spent + reserve fits the limit. */
HAK_LEARN_API bool _hak_budget_admit(hak_budget_t* b, uint64_t reserve_ns);
/* Closes the open exploration, charging its measured excess (no-op when
 * none is open). */
HAK_LEARN_API void _hak_budget_settle(hak_budget_t* b, uint64_t excess_ns);

/* ---- p99 estimator --------------------------------------------------------- */
/* Values 0..3 have a bucket each; a value v >= 4 with e = floor(log2 v)
 * falls in one of 4 equal sub-buckets of [2^e, 2^(e+1)), so a bucket's upper
 * edge is at most 25 % above any value in it. */
#define HAK_P99_BUCKETS 256

/* Invariant: n == sum of b[]; b[i] == 0 for i >= 252. */
typedef struct {
  uint64_t n;
  uint64_t b[HAK_P99_BUCKETS];
} hak_p99_t;

HAK_LEARN_API void _hak_p99_reset(hak_p99_t* h);
HAK_LEARN_API void _hak_p99_add(hak_p99_t* h, uint64_t ns);
HAK_LEARN_API uint64_t _hak_p99_count(const hak_p99_t* h);
/* Upper edge of the bucket holding the ceil(0.99 n)-th smallest value;
 * 0 if empty. */
HAK_LEARN_API double _hak_p99_get(const hak_p99_t* h);

#endif
