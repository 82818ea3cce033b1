/* Learners: the libm-free math, the PRNG, UCB1 convergence and its adoption
 * rules (8 % margin, 3 consecutive evaluations, cooldown), ELO convergence,
 * conservation, survivors and determinism, the LEARN/FROZEN/CANARY
 * lifecycle on synthetic p99 streams, and the p99 histogram.  All seeds
 * are fixed. */
#include "src/learn.h"

#include "src/test/test.h"

static double absd(double x) { return x < 0 ? -x : x; }
static bool near(double a, double b, double rel) { return absd(a - b) <= rel * (absd(b) > 1e-300 ? absd(b) : 1); }

/* ---- math and PRNG ---- */
TEST(math_without_libm) {
  for (double x = 1e-300; x < 1e300; x *= 7.77) {
    double s = _hak_learn_sqrt(x);
    if (!near(s * s, x, 1e-14)) HAK_FAIL_AT("sqrt(%g) = %.17g", x, s);
    /* ln(x) vs ln(x / 7.77) + ln(7.77) is circular; check exp via pow10 */
    double l = _hak_learn_ln(x);
    double back = _hak_learn_pow10(l / 2.30258509299404568402);
    if (!near(back, x, 1e-12)) HAK_FAIL_AT("ln(%g) = %.17g -> %.17g", x, l, back);
  }
  EXPECT_TRUE(near(_hak_learn_sqrt(2), 1.41421356237309504880, 1e-15));
  EXPECT_TRUE(near(_hak_learn_sqrt(4.9406564584124654e-324), 2.2227587494850775e-162, 1e-15));
  EXPECT_TRUE(_hak_learn_sqrt(0) == 0 && _hak_learn_sqrt(-1) == 0 && _hak_learn_sqrt(0.0 / 0.0) == 0);
  EXPECT_TRUE(near(_hak_learn_ln(2.71828182845904523536), 1, 1e-15));
  EXPECT_TRUE(near(_hak_learn_ln(1024), 10 * 0.69314718055994530942, 1e-15));
  EXPECT_TRUE(_hak_learn_ln(1) == 0);
  EXPECT_TRUE(near(_hak_learn_ln(1e-310), -713.8013788281542, 1e-13)); /* subnormal */
  EXPECT_TRUE(near(_hak_learn_pow10(2), 100, 1e-15));
  EXPECT_TRUE(near(_hak_learn_pow10(-1), 0.1, 1e-15));
  EXPECT_TRUE(near(_hak_learn_pow10(0.5), 3.16227766016837933200, 1e-15));
  EXPECT_TRUE(near(_hak_learn_pow10(1000), 1e300, 1e-13)); /* clamped */
}

TEST(rng_is_seeded_and_uniform) {
  hak_rng_t a, b, c;
  _hak_rng_seed(&a, 42);
  _hak_rng_seed(&b, 42);
  _hak_rng_seed(&c, 43);
  int differ = 0;
  double sum = 0;
  for (int i = 0; i < 100000; i++) {
    uint64_t x = _hak_rng_next(&a);
    EXPECT_EQ_U(x, _hak_rng_next(&b));
    differ += x != _hak_rng_next(&c);
    double u = _hak_rng_unit(&a);
    _hak_rng_unit(&b);
    if (!(u >= 0 && u < 1)) HAK_FAIL_AT("unit %g", u);
    sum += u;
  }
  EXPECT_TRUE(differ > 99990);
  EXPECT_TRUE(absd(sum / 100000 - 0.5) < 0.005);
}

/* ---- UCB1 ---- */
static int most_pulled(const hak_ucb_t* u) {
  int best = 0;
  for (int a = 1; a < HAK_UCB_ARMS; a++)
    if (u->pulls[a] > u->pulls[best]) best = a;
  return best;
}

static void ucb_check_invariants(const hak_ucb_t* u) {
  uint64_t sum = 0;
  for (int a = 0; a < HAK_UCB_ARMS; a++) {
    sum += u->pulls[a];
    double m = _hak_ucb_mean(u, a);
    if (!(m >= 0 && m <= 1)) HAK_FAIL_AT("arm %d mean %g", a, m);
  }
  EXPECT_EQ_U(sum, u->total);
  EXPECT_TRUE(u->current >= 0 && u->current < HAK_UCB_ARMS);
  EXPECT_TRUE(u->challenger == -1 || (u->challenger >= 0 && u->challenger < HAK_UCB_ARMS && u->challenger != u->current));
  EXPECT_TRUE(u->streak >= 0 && u->streak <= HAK_UCB_STREAK && (u->streak == 0) == (u->challenger == -1));
}

TEST(ucb_thresholds) {
  EXPECT_EQ_U(_hak_ucb_thresholds[0], 64 << 10);
  for (int a = 1; a < HAK_UCB_ARMS; a++) EXPECT_EQ_U(_hak_ucb_thresholds[a], 2 * _hak_ucb_thresholds[a - 1]);
  hak_ucb_t u;
  _hak_ucb_init(&u, 99);
  EXPECT_EQ_U(_hak_ucb_threshold(&u), 2 << 20);
  _hak_ucb_init(&u, 2);
  EXPECT_EQ_U(_hak_ucb_threshold(&u), 256 << 10);
}

TEST(ucb_tries_unplayed_arms_first) {
  hak_ucb_t u;
  _hak_ucb_init(&u, 5);
  _hak_ucb_update(&u, 2, 1.0);
  int want[] = {0, 1, 3, 4, 5};
  for (int i = 0; i < 5; i++) {
    EXPECT_EQ_U(_hak_ucb_select(&u), want[i]);
    _hak_ucb_update(&u, _hak_ucb_select(&u), 0.0);
  }
  EXPECT_EQ_U(_hak_ucb_select(&u), 2); /* all played: the only rewarded arm */
  ucb_check_invariants(&u);
}

TEST(ucb_clamps_bad_rewards) {
  hak_ucb_t u;
  _hak_ucb_init(&u, 0);
  double bad[] = {0.0 / 0.0, 1.0 / 0.0, -1.0 / 0.0, -5, 7, 0.5, -0.0};
  for (int r = 0; r < 200; r++)
    for (int i = 0; i < 7; i++) {
      int a = _hak_ucb_select(&u);
      ASSERT_TRUE(a >= 0 && a < HAK_UCB_ARMS);
      _hak_ucb_update(&u, a, bad[(i + r) % 7]);
    }
  _hak_ucb_update(&u, -1, 1.0); /* ignored */
  _hak_ucb_update(&u, HAK_UCB_ARMS, 1.0);
  EXPECT_EQ_U(u.total, 1400);
  /* NaN -> 0, +inf -> 1, -inf -> 0, -5 -> 0, 7 -> 1, 0.5, -0 -> 0 */
  double sum = 0;
  for (int a = 0; a < HAK_UCB_ARMS; a++) sum += u.reward[a];
  EXPECT_TRUE(near(sum, 200 * 2.5, 1e-12));
  ucb_check_invariants(&u);
  _hak_ucb_evaluate(&u, 0, 0);
  ucb_check_invariants(&u);
}

/* Bernoulli rewards; arm 3 has mean 0.8, the others <= 0.6. */
TEST(ucb_converges_to_best_arm) {
  static const double mean[HAK_UCB_ARMS] = {0.3, 0.45, 0.6, 0.8, 0.55, 0.2};
  hak_ucb_t u;
  hak_rng_t r;
  _hak_ucb_init(&u, 5);
  _hak_rng_seed(&r, 1);
  int adoptions = 0;
  for (int i = 1; i <= 5000; i++) {
    int a = _hak_ucb_select(&u);
    ASSERT_TRUE(a >= 0 && a < HAK_UCB_ARMS);
    _hak_ucb_update(&u, a, _hak_rng_unit(&r) < mean[a] ? 1.0 : 0.0);
    if (i % 100 == 0) adoptions += _hak_ucb_evaluate(&u, (uint64_t)i * 1000, 0);
  }
  EXPECT_EQ_U(most_pulled(&u), 3);
  EXPECT_TRUE(u.pulls[3] > 3000);
  EXPECT_EQ_U(u.current, 3);
  EXPECT_EQ_U(_hak_ucb_threshold(&u), 512 << 10);
  EXPECT_EQ_U(u.adoptions, (uint64_t)adoptions);
  EXPECT_TRUE(adoptions >= 1 && adoptions <= 3);
  EXPECT_EQ_U(u.evaluations, 50);
  ucb_check_invariants(&u);
}

static void feed(hak_ucb_t* u, int arm, int n, double reward) {
  for (int i = 0; i < n; i++) _hak_ucb_update(u, arm, reward);
}

TEST(ucb_adoption_needs_three_consecutive_wins) {
  hak_ucb_t u;
  _hak_ucb_init(&u, 0);
  feed(&u, 0, 30, 0.5);
  feed(&u, 1, 29, 0.6); /* 20 % better but below HAK_UCB_MIN_PULLS */
  for (int i = 0; i < 5; i++) EXPECT_TRUE(!_hak_ucb_evaluate(&u, 0, 0));
  EXPECT_EQ_U(u.streak, 0);
  feed(&u, 1, 1, 0.6);
  EXPECT_TRUE(!_hak_ucb_evaluate(&u, 0, 0));
  EXPECT_TRUE(!_hak_ucb_evaluate(&u, 0, 0));
  EXPECT_EQ_U(u.streak, 2);
  feed(&u, 0, 30, 1.0); /* current now 0.75: the streak breaks */
  EXPECT_TRUE(!_hak_ucb_evaluate(&u, 0, 0));
  EXPECT_EQ_U(u.streak, 0);
  feed(&u, 0, 30, 0.0); /* back to 0.5 */
  EXPECT_TRUE(!_hak_ucb_evaluate(&u, 0, 0));
  EXPECT_TRUE(!_hak_ucb_evaluate(&u, 0, 0));
  EXPECT_EQ_U(u.current, 0);
  EXPECT_TRUE(_hak_ucb_evaluate(&u, 0, 0));
  EXPECT_EQ_U(u.current, 1);
  EXPECT_EQ_U(u.adoptions, 1);
  ucb_check_invariants(&u);
}

TEST(ucb_cooldown_blocks_a_second_adoption) {
  const uint64_t cooldown = HAK_UCB_COOLDOWN_NS, t0 = 5000000000ull; /* 5 s: less than a cooldown */
  hak_ucb_t u;
  _hak_ucb_init(&u, 0);
  feed(&u, 0, 30, 0.5);
  feed(&u, 1, 30, 0.6);
  EXPECT_TRUE(!_hak_ucb_evaluate(&u, t0, cooldown));
  EXPECT_TRUE(!_hak_ucb_evaluate(&u, t0, cooldown));
  EXPECT_TRUE(_hak_ucb_evaluate(&u, t0, cooldown)); /* the first adoption has no cooldown */
  EXPECT_EQ_U(u.current, 1);
  feed(&u, 4, 30, 0.9); /* a far better arm appears */
  for (uint64_t t = t0; t < t0 + cooldown; t += cooldown / 100) {
    if (_hak_ucb_evaluate(&u, t, cooldown)) HAK_FAIL_AT("adopted at +%" PRIu64 " ns", t - t0);
    ucb_check_invariants(&u);
  }
  EXPECT_EQ_U(u.current, 1);
  EXPECT_TRUE(!_hak_ucb_evaluate(&u, t0 - 1, cooldown)); /* clock going back */
  EXPECT_TRUE(_hak_ucb_evaluate(&u, t0 + cooldown, cooldown));
  EXPECT_EQ_U(u.current, 4);
  EXPECT_EQ_U(u.adoptions, 2);
  EXPECT_EQ_U(_hak_ucb_threshold(&u), 1 << 20);
}

/* Adopting on other evidence (a dear site's cells): at once, under the
 * same cooldown, clearing a pending streak; nothing for the current arm or
 * an arm out of range. */
TEST(ucb_adopt_is_immediate_and_keeps_the_cooldown) {
  const uint64_t cooldown = HAK_UCB_COOLDOWN_NS, t0 = 5000000000ull;
  hak_ucb_t u;
  _hak_ucb_init(&u, 5);
  EXPECT_TRUE(!_hak_ucb_adopt(&u, 5, t0, cooldown)); /* already in force */
  EXPECT_TRUE(!_hak_ucb_adopt(&u, -1, t0, cooldown));
  EXPECT_TRUE(!_hak_ucb_adopt(&u, HAK_UCB_ARMS, t0, cooldown));
  EXPECT_EQ_U(u.adoptions, 0);
  feed(&u, 0, 30, 0.5);
  feed(&u, 1, 30, 0.9);
  EXPECT_TRUE(!_hak_ucb_evaluate(&u, t0, cooldown)); /* a streak begins: arm 1 */
  EXPECT_EQ_U(u.streak, 1);
  EXPECT_TRUE(_hak_ucb_adopt(&u, 4, t0, cooldown)); /* no pulls needed, no cooldown for the first */
  EXPECT_EQ_U(u.current, 4);
  EXPECT_EQ_U(u.challenger, -1);
  EXPECT_EQ_U(u.streak, 0);
  ucb_check_invariants(&u);
  EXPECT_TRUE(!_hak_ucb_adopt(&u, 3, t0 + cooldown - 1, cooldown));
  EXPECT_TRUE(!_hak_ucb_adopt(&u, 3, t0 - 1, cooldown)); /* clock going back */
  EXPECT_EQ_U(u.current, 4);
  EXPECT_TRUE(_hak_ucb_adopt(&u, 3, t0 + cooldown, cooldown));
  EXPECT_EQ_U(u.current, 3);
  EXPECT_EQ_U(u.adoptions, 2);
  EXPECT_EQ_U(u.last_adopt_ns, t0 + cooldown);
  ucb_check_invariants(&u);
}

TEST(ucb_five_percent_better_is_never_adopted) {
  hak_ucb_t u;
  _hak_ucb_init(&u, 0);
  feed(&u, 0, 100, 0.60);
  feed(&u, 1, 100, 0.63);
  for (int i = 0; i < 20; i++) EXPECT_TRUE(!_hak_ucb_evaluate(&u, 0, 0));
  EXPECT_EQ_U(u.streak, 0);
  /* The same with noisy rewards under the bandit's own choices. */
  static const double mean[HAK_UCB_ARMS] = {0.60, 0.63, 0.3, 0.3, 0.3, 0.3};
  hak_rng_t r;
  _hak_rng_seed(&r, 7);
  _hak_ucb_init(&u, 0);
  for (int i = 1; i <= 20000; i++) {
    int a = _hak_ucb_select(&u);
    _hak_ucb_update(&u, a, mean[a] + 0.2 * (_hak_rng_unit(&r) - 0.5));
    if (i % 100 == 0 && _hak_ucb_evaluate(&u, 0, 0)) HAK_FAIL_AT("adopted arm %d at pull %d", u.current, i);
  }
  EXPECT_EQ_U(u.current, 0);
  EXPECT_EQ_U(most_pulled(&u), 1); /* UCB still prefers it for trials */
  ucb_check_invariants(&u);
}

/* ---- ELO ---- */
static double rating_sum(const hak_elo_t* e) {
  double s = 0;
  for (int i = 0; i < HAK_ELO_CANDIDATES; i++) s += e->c[i].rating;
  return s;
}

static int active_count(const hak_elo_t* e) {
  int n = 0;
  for (int i = 0; i < HAK_ELO_CANDIDATES; i++) n += e->c[i].active;
  return n;
}

TEST(elo_thresholds_are_geometric) {
  EXPECT_EQ_U(_hak_elo_thresholds[0], 512 << 10);
  EXPECT_EQ_U(_hak_elo_thresholds[HAK_ELO_CANDIDATES - 1], 32 << 20);
  for (int i = 0; i < HAK_ELO_CANDIDATES; i++) {
    EXPECT_EQ_U(_hak_elo_thresholds[i] % 4096, 0);
    if (i > 0) {
      double ratio = (double)_hak_elo_thresholds[i] / (double)_hak_elo_thresholds[i - 1];
      if (!near(ratio, 1.459480, 0.005)) HAK_FAIL_AT("ratio %d: %g", i, ratio);
    }
  }
  hak_elo_t e;
  _hak_elo_init(&e, 1);
  for (int i = 0; i < HAK_ELO_CANDIDATES; i++) {
    EXPECT_EQ_U(e.c[i].threshold, _hak_elo_thresholds[i]);
    EXPECT_TRUE(e.c[i].rating == 1500 && e.c[i].active);
  }
  EXPECT_EQ_U(_hak_elo_champion(&e), 0);
  EXPECT_EQ_U(_hak_elo_threshold(&e), 512 << 10);
}

TEST(elo_no_update_before_50_samples) {
  hak_elo_t e;
  _hak_elo_init(&e, 1);
  for (int i = 0; i < 49; i++) {
    _hak_elo_record(&e, 0, 100, 10, 1000);
    _hak_elo_record(&e, 1, 50, 5, 500);
  }
  for (int i = 0; i < 1000; i++) _hak_elo_record(&e, 2, 50, 5, 500);
  EXPECT_EQ_U(_hak_elo_play(&e), 0); /* only 2 is ready: no pair */
  _hak_elo_record(&e, 0, 100, 10, 1000);
  EXPECT_EQ_U(_hak_elo_play(&e), 1); /* 0 vs 2; 1 still has 49 */
  EXPECT_TRUE(near(e.c[2].rating, 1516, 1e-12) && near(e.c[0].rating, 1484, 1e-12));
  EXPECT_EQ_U(e.c[2].n, 0);
  EXPECT_EQ_U(e.c[0].n, 0);
  EXPECT_EQ_U(e.c[1].n, 49);
  EXPECT_EQ_U(e.c[2].wins, 1);
  EXPECT_EQ_U(_hak_elo_play(&e), 0); /* nothing pending */
  EXPECT_EQ_U(active_count(&e), 12); /* not all have played: no pruning */
  EXPECT_EQ_U(_hak_elo_champion(&e), 2);
}

TEST(elo_match_scoring_is_scale_free_and_ties) {
  hak_elo_t e;
  _hak_elo_init(&e, 1);
  /* 0 is 10x cheaper on CPU (40 %) but 2x dearer on faults and memory
   * (60 %): 0.4/11 + 0.6*2/3 = 0.436 < 0.5, so 0 wins. */
  for (int i = 0; i < 50; i++) {
    _hak_elo_record(&e, 0, 1e3, 2e6, 2e12);
    _hak_elo_record(&e, 1, 1e4, 1e6, 1e12);
  }
  EXPECT_EQ_U(_hak_elo_play(&e), 1);
  EXPECT_EQ_U(e.c[0].wins, 1);
  EXPECT_EQ_U(e.c[1].wins, 0);
  EXPECT_TRUE(e.c[1].rating < 1500 && e.c[0].rating > 1500);
  EXPECT_TRUE(near(rating_sum(&e), 12 * 1500, 1e-12));
  hak_elo_t t;
  _hak_elo_init(&t, 1);
  for (int i = 0; i < 50; i++) {
    _hak_elo_record(&t, 0, 5, 0, 7);
    _hak_elo_record(&t, 1, 5, 0, 7);
  }
  EXPECT_EQ_U(_hak_elo_play(&t), 1);
  EXPECT_TRUE(t.c[0].rating == 1500 && t.c[1].rating == 1500); /* 0.5 each */
}

TEST(elo_record_ignores_bad_samples) {
  hak_elo_t e;
  _hak_elo_init(&e, 1);
  double nan = 0.0 / 0.0, inf = 1.0 / 0.0;
  _hak_elo_record(&e, 0, nan, 1, 1);
  _hak_elo_record(&e, 0, 1, inf, 1);
  _hak_elo_record(&e, 0, 1, 1, -1);
  _hak_elo_record(&e, 0, -inf, 1, 1);
  _hak_elo_record(&e, -1, 1, 1, 1);
  _hak_elo_record(&e, HAK_ELO_CANDIDATES, 1, 1, 1);
  _hak_elo_record(&e, 0, 1.5e308, 1, 1);
  _hak_elo_record(&e, 0, 1.5e308, 1, 1); /* the sum would overflow */
  EXPECT_EQ_U(e.c[0].n, 1);
  EXPECT_EQ_U(e.c[0].samples, 1);
  _hak_elo_record(&e, 0, 0, 0, 0);
  EXPECT_EQ_U(e.c[0].n, 2);
}

TEST(elo_select_is_epsilon_greedy) {
  hak_elo_t e;
  _hak_elo_init(&e, 3);
  int champion = 0, counts[HAK_ELO_CANDIDATES] = {0};
  for (int i = 0; i < 100000; i++) {
    int c = _hak_elo_select(&e);
    ASSERT_TRUE(c >= 0 && c < HAK_ELO_CANDIDATES);
    counts[c]++;
    champion += c == 0;
  }
  /* 90 % + 10 %/12 */
  EXPECT_TRUE(champion > 90000 && champion < 92300);
  for (int i = 1; i < HAK_ELO_CANDIDATES; i++)
    if (counts[i] < 650 || counts[i] > 1050) HAK_FAIL_AT("candidate %d picked %d times", i, counts[i]);
  EXPECT_TRUE(e.explorations > 9500 && e.explorations < 10500);
  e.epsilon = 0;
  for (int i = 0; i < 1000; i++) EXPECT_EQ_U(_hak_elo_select(&e), 0);
}

/* Cost grows with |k - 4| by 40 % per step, with +-20 % seeded noise. */
static void run_elo(uint64_t seed, hak_elo_t* e, int* matches_played) {
  hak_rng_t noise;
  _hak_rng_seed(&noise, seed ^ 0x5eed);
  _hak_elo_init(e, seed);
  *matches_played = 0;
  for (int round = 1; round <= 40000; round++) {
    int k = _hak_elo_select(e);
    double f = 1 + 0.4 * (k > 4 ? k - 4 : 4 - k);
    double n1 = 0.8 + 0.4 * _hak_rng_unit(&noise), n2 = 0.8 + 0.4 * _hak_rng_unit(&noise),
           n3 = 0.8 + 0.4 * _hak_rng_unit(&noise);
    _hak_elo_record(e, k, 20000 * f * n1, 3 * f * n2, (double)(2 << 20) * f * n3);
    if (round % 1000 == 0) { /* at window boundaries */
      *matches_played += _hak_elo_play(e);
      if (!near(rating_sum(e), 12 * 1500, 1e-12)) HAK_FAIL_AT("round %d: rating sum %.9f", round, rating_sum(e));
      int act = active_count(e);
      if (act != (e->pruned ? HAK_ELO_SURVIVORS : HAK_ELO_CANDIDATES)) HAK_FAIL_AT("round %d: %d active", round, act);
    }
  }
}

TEST(elo_converges_conserves_and_replays) {
  hak_elo_t e, again, other;
  int played, played_again, played_other;
  run_elo(2024, &e, &played);
  EXPECT_EQ_U(_hak_elo_champion(&e), 4);
  EXPECT_EQ_U(_hak_elo_threshold(&e), _hak_elo_thresholds[4]);
  EXPECT_TRUE(e.pruned);
  EXPECT_EQ_U(active_count(&e), HAK_ELO_SURVIVORS);
  EXPECT_TRUE(e.c[4].active && e.c[3].active && e.c[5].active);
  EXPECT_TRUE(absd(rating_sum(&e) - 12 * 1500) < 1e-6);
  for (int i = 0; i < HAK_ELO_CANDIDATES; i++) {
    EXPECT_TRUE(e.c[i].rating == e.c[i].rating && e.c[i].rating > 0 && e.c[i].rating < 3000);
    if (i != 4) EXPECT_TRUE(e.c[i].rating < e.c[4].rating);
    EXPECT_TRUE(e.c[i].matches > 0);
  }
  EXPECT_EQ_U(e.matches, (uint64_t)played);
  EXPECT_TRUE(played > 50);
  run_elo(2024, &again, &played_again);
  EXPECT_EQ_U(played_again, played);
  EXPECT_TRUE(memcmp(&e.c, &again.c, sizeof(e.c)) == 0);
  for (int i = 0; i < HAK_ELO_CANDIDATES; i++) EXPECT_TRUE(e.c[i].rating == again.c[i].rating);
  run_elo(99, &other, &played_other); /* another seed, same winner */
  EXPECT_EQ_U(_hak_elo_champion(&other), 4);
  EXPECT_TRUE(memcmp(&e.c, &other.c, sizeof(e.c)) != 0);
}

/* ---- lifecycle ---- */
static const uint64_t mix_a[HAK_MIX_BUCKETS] = {100, 100, 100, 100, 0, 0, 0, 0};
#define SEC ((uint64_t)1000000000)

/* LEARN -> FROZEN on a flat stream: the 4th window is the 3rd in a row
 * within 1 % of its predecessor. */
static void freeze(hak_lifecycle_t* l, uint64_t* t) {
  _hak_lifecycle_init(l, *t);
  double p[] = {1000, 1008, 1000, 1005, 999};
  for (int i = 0; i < 3; i++) {
    *t += 2 * SEC;
    EXPECT_EQ_U(_hak_lifecycle_window(l, p[i], mix_a, *t), HAK_LEARN);
  }
  *t += 2 * SEC;
  EXPECT_EQ_U(_hak_lifecycle_window(l, p[3], mix_a, *t), HAK_FROZEN);
  EXPECT_TRUE(l->base_p99 == 1005);
  EXPECT_EQ_U(l->freezes, 1);
}

TEST(lifecycle_stable_stream_freezes) {
  hak_lifecycle_t l;
  uint64_t t = 7 * SEC;
  freeze(&l, &t);
  for (int i = 0; i < 100; i++) EXPECT_EQ_U(_hak_lifecycle_window(&l, 1100, mix_a, t += 2 * SEC), HAK_FROZEN);
  /* a 2 % wobble restarts the count */
  _hak_lifecycle_init(&l, 0);
  double p[] = {1000, 1005, 1025, 1020, 1015, 1010};
  hak_learn_state_t want[] = {HAK_LEARN, HAK_LEARN, HAK_LEARN, HAK_LEARN, HAK_LEARN, HAK_FROZEN};
  for (int i = 0; i < 6; i++) EXPECT_EQ_U(_hak_lifecycle_window(&l, p[i], NULL, (uint64_t)i * SEC), want[i]);
  EXPECT_TRUE(!l.base_mix_valid);
}

TEST(lifecycle_persistent_degradation_relearns_via_canary) {
  hak_lifecycle_t l;
  uint64_t t = 0;
  freeze(&l, &t);
  EXPECT_EQ_U(_hak_lifecycle_window(&l, 1005 * 1.3, mix_a, t += SEC), HAK_CANARY);
  EXPECT_EQ_U(_hak_lifecycle_window(&l, 1005 * 1.3, mix_a, t += SEC), HAK_CANARY);
  EXPECT_EQ_U(_hak_lifecycle_window(&l, 1005 * 1.3, mix_a, t += SEC), HAK_LEARN);
  EXPECT_EQ_U(l.canaries, 1);
  EXPECT_EQ_U(l.relearns, 1);
  EXPECT_EQ_U(l.learn_since_ns, t);
  /* relearning converges on the new level */
  for (int i = 0; i < 2; i++) EXPECT_EQ_U(_hak_lifecycle_window(&l, 1306, mix_a, t += SEC), HAK_LEARN);
  EXPECT_EQ_U(_hak_lifecycle_window(&l, 1306, mix_a, t += SEC), HAK_FROZEN);
  /* 19 % worse is not degraded */
  for (int i = 0; i < 10; i++) EXPECT_EQ_U(_hak_lifecycle_window(&l, 1306 * 1.19, mix_a, t += SEC), HAK_FROZEN);
}

TEST(lifecycle_single_degraded_window_goes_canary_and_back) {
  hak_lifecycle_t l;
  uint64_t t = 0;
  freeze(&l, &t);
  EXPECT_EQ_U(_hak_lifecycle_window(&l, 1005 * 1.3, mix_a, t += SEC), HAK_CANARY);
  EXPECT_EQ_U(_hak_lifecycle_window(&l, 1005, mix_a, t += SEC), HAK_FROZEN);
  /* two degraded, one good, two degraded: never three in a row */
  double p[] = {1400, 1400, 1000, 1400, 1400, 900};
  hak_learn_state_t want[] = {HAK_CANARY, HAK_CANARY, HAK_FROZEN, HAK_CANARY, HAK_CANARY, HAK_FROZEN};
  for (int i = 0; i < 6; i++) EXPECT_EQ_U(_hak_lifecycle_window(&l, p[i], mix_a, t += SEC), want[i]);
  EXPECT_EQ_U(l.relearns, 0);
  EXPECT_EQ_U(l.canaries, 3);
  EXPECT_TRUE(l.base_p99 == 1005);
}

TEST(lifecycle_mix_shift_relearns) {
  hak_lifecycle_t l;
  uint64_t t = 0;
  freeze(&l, &t);
  /* distance 0.2: move 20 % of the mass */
  uint64_t small[HAK_MIX_BUCKETS] = {20, 100, 100, 100, 80, 0, 0, 0};
  EXPECT_TRUE(near(_hak_mix_distance(small, mix_a), 0.2, 1e-12));
  EXPECT_EQ_U(_hak_lifecycle_window(&l, 1005, small, t += SEC), HAK_FROZEN);
  uint64_t zero[HAK_MIX_BUCKETS] = {0};
  EXPECT_EQ_U(_hak_lifecycle_window(&l, 1005, zero, t += SEC), HAK_FROZEN); /* no information */
  /* distance 0.3, p99 unchanged */
  uint64_t shifted[HAK_MIX_BUCKETS] = {40, 40, 100, 100, 0, 0, 120, 0};
  EXPECT_TRUE(near(_hak_mix_distance(shifted, mix_a), 0.3, 1e-12));
  EXPECT_EQ_U(_hak_lifecycle_window(&l, 1005, shifted, t += SEC), HAK_LEARN);
  EXPECT_EQ_U(l.relearns, 1);
  /* also from CANARY, and scale-free */
  freeze(&l, &t);
  EXPECT_EQ_U(_hak_lifecycle_window(&l, 2000, mix_a, t += SEC), HAK_CANARY);
  for (int i = 0; i < HAK_MIX_BUCKETS; i++) shifted[i] *= 1000;
  EXPECT_EQ_U(_hak_lifecycle_window(&l, 1005, shifted, t += SEC), HAK_LEARN);
}

TEST(lifecycle_learn_times_out_after_180s) {
  hak_lifecycle_t l;
  uint64_t t0 = 1000 * SEC, t = t0;
  _hak_lifecycle_init(&l, t0);
  int i = 0;
  while (t + 2 * SEC < t0 + 180 * SEC) {
    t += 2 * SEC;
    double p = i++ % 2 ? 1000 : 1100; /* never within 1 % */
    if (_hak_lifecycle_window(&l, p, mix_a, t) != HAK_LEARN) HAK_FAIL_AT("froze at +%" PRIu64 " s", (t - t0) / SEC);
  }
  EXPECT_EQ_U(_hak_lifecycle_window(&l, 1234, mix_a, t0 + 180 * SEC), HAK_FROZEN);
  EXPECT_TRUE(l.base_p99 == 1234);
}

TEST(lifecycle_ignores_bad_p99) {
  hak_lifecycle_t l;
  uint64_t t = 0;
  freeze(&l, &t);
  uint64_t w = l.windows;
  double bad[] = {0.0 / 0.0, 1.0 / 0.0, -1.0 / 0.0, -1};
  for (int r = 0; r < 3; r++)
    for (int i = 0; i < 4; i++) EXPECT_EQ_U(_hak_lifecycle_window(&l, bad[i], mix_a, t += SEC), HAK_FROZEN);
  EXPECT_EQ_U(l.windows, w);
  EXPECT_TRUE(l.base_p99 == 1005 && l.prev_p99 == 1005);
  EXPECT_EQ_U(_hak_lifecycle_window(&l, 2000, mix_a, t += SEC), HAK_CANARY);
  EXPECT_EQ_U(_hak_lifecycle_window(&l, 0.0 / 0.0, mix_a, t += SEC), HAK_CANARY);
  _hak_lifecycle_init(&l, 0);
  EXPECT_EQ_U(_hak_lifecycle_window(&l, 0.0 / 0.0, mix_a, 500 * SEC), HAK_LEARN); /* not even the timeout */
}

TEST(lifecycle_canary_takes_five_percent) {
  hak_lifecycle_t l;
  hak_rng_t r;
  _hak_rng_seed(&r, 11);
  uint64_t t = 0;
  freeze(&l, &t);
  int hits = 0;
  for (int i = 0; i < 10000; i++) hits += _hak_lifecycle_canary(&l, &r);
  EXPECT_EQ_U(hits, 0); /* FROZEN */
  EXPECT_EQ_U(_hak_lifecycle_window(&l, 5000, mix_a, t += SEC), HAK_CANARY);
  for (int i = 0; i < 10000; i++) hits += _hak_lifecycle_canary(&l, &r);
  if (hits < 300 || hits > 700) HAK_FAIL_AT("%d of 10000 in canary", hits);
  EXPECT_TRUE(strcmp(_hak_learn_state_name(HAK_LEARN), "learn") == 0);
  EXPECT_TRUE(strcmp(_hak_learn_state_name(HAK_FROZEN), "frozen") == 0);
  EXPECT_TRUE(strcmp(_hak_learn_state_name(HAK_CANARY), "canary") == 0);
  EXPECT_TRUE(strcmp(_hak_learn_state_name((hak_learn_state_t)7), "unknown") == 0);
}

/* ---- p99 ---- */
TEST(p99_estimates_within_bucket_resolution) {
  static hak_p99_t h;
  _hak_p99_reset(&h);
  EXPECT_TRUE(_hak_p99_get(&h) == 0);
  for (uint64_t v = 1; v <= 10000; v++) _hak_p99_add(&h, v);
  EXPECT_EQ_U(_hak_p99_count(&h), 10000);
  double p = _hak_p99_get(&h);
  if (!(p >= 9900 && p <= 9900 * 1.25)) HAK_FAIL_AT("p99 %g", p);
  EXPECT_TRUE(p == 10240); /* bucket [8192, 10240) */
  /* a shuffled, skewed set: 990 fast, 10 slow -> p99 is a fast one */
  _hak_p99_reset(&h);
  EXPECT_EQ_U(_hak_p99_count(&h), 0);
  uint64_t s = 5;
  for (int i = 0; i < 1000; i++) _hak_p99_add(&h, i % 100 == 0 ? 1000000 : 100 + hak_test_rand(&s) % 50);
  p = _hak_p99_get(&h);
  EXPECT_TRUE(p >= 150 && p <= 160);
  _hak_p99_add(&h, 1000000);
  EXPECT_TRUE(_hak_p99_get(&h) >= 1000000 && _hak_p99_get(&h) <= 1250000);
  /* every value lands in a bucket whose edge is above it and <= 25 % over */
  for (uint64_t v = 0; v < 200000; v = v * 9 / 8 + 1) {
    _hak_p99_reset(&h);
    _hak_p99_add(&h, v);
    double e = _hak_p99_get(&h);
    if (!(e > (double)v && e <= 1.25 * (double)v + 1)) HAK_FAIL_AT("value %" PRIu64 ": edge %g", v, e);
  }
  _hak_p99_reset(&h);
  _hak_p99_add(&h, UINT64_MAX);
  EXPECT_TRUE(_hak_p99_get(&h) == 18446744073709551616.0);
}

TEST_MAIN()
