/* learn_fuzzer: arbitrary reward and cost streams into UCB1, ELO and the
 * lifecycle (NaN, infinities, negatives included).  Never a NaN mean or
 * rating, never an out-of-range arm or candidate, the rating sum conserved,
 * exactly the survivors active once pruned, and the same input replays to
 * the identical state (determinism).  Also the numerics the policy uses
 * without libm (sqrt, ln, 10^x: within 1e-12 of libm's) and the p99
 * estimator (never below the true 99th percentile of what it was fed, at
 * most a bucket, 25 %, above it). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "src/learn.h"

static double decode_double(const uint8_t* d) {
  static const double special[] = {0.0, -1.0, 1.0, 0.5, 1e300, -1e300, 2.0, 1e-300};
  if (d[0] < 8) return special[d[0]];
  if (d[0] == 8) return NAN;
  if (d[0] == 9) return INFINITY;
  uint64_t bits;
  memcpy(&bits, d, sizeof(bits));
  double x;
  memcpy(&x, &bits, sizeof(x));
  return x;
}

typedef struct {
  hak_ucb_t ucb;
  hak_elo_t elo;
  hak_lifecycle_t lc;
  hak_rng_t rng;
  hak_p99_t p99;
  hak_budget_t budget;
  uint64_t samples[256]; /* what p99 was fed, for the check */
  unsigned nsamples;
} state_t;

static void check_close(double got, double want, double scale) {
  if (!(fabs(got - want) <= 1e-12 * scale)) abort();
}

static void check_numerics(double x) {
  double ax = fabs(x);
  if (ax >= 1e-300 && ax <= 1e300) {
    check_close(_hak_learn_sqrt(ax), sqrt(ax), sqrt(ax));
    check_close(_hak_learn_ln(ax), log(ax), fabs(log(ax)) > 1 ? fabs(log(ax)) : 1);
  }
  if (_hak_learn_sqrt(-ax) != 0 || _hak_learn_ln(-ax) > -1e300) abort(); /* out of the domain: 0 and "-inf" */
  double y = fmod(x, 300);
  if (isfinite(y)) check_close(_hak_learn_pow10(y), pow(10, y), pow(10, y));
}

static int cmp_u64(const void* a, const void* b) {
  uint64_t x = *(const uint64_t*)a, y = *(const uint64_t*)b;
  return x < y ? -1 : x > y;
}

static void check_p99(state_t* st, uint64_t v) {
  if (st->nsamples == 256) {
    _hak_p99_reset(&st->p99);
    st->nsamples = 0;
  }
  _hak_p99_add(&st->p99, v);
  st->samples[st->nsamples++] = v;
  if (_hak_p99_count(&st->p99) != st->nsamples) abort();
  uint64_t sorted[256];
  memcpy(sorted, st->samples, st->nsamples * sizeof(uint64_t));
  qsort(sorted, st->nsamples, sizeof(uint64_t), cmp_u64);
  double truth = (double)sorted[st->nsamples - st->nsamples / 100 - 1], got = _hak_p99_get(&st->p99);
  if (!(got >= truth) || got > 1.25 * truth + 1) abort(); /* >=: (double)v rounds up near 2^64 */
}

/* The exploration budget: an operation (earn, admit, settle) of any
 * amount, then its invariant: what was spent and is reserved never exceeds
 * the limit plus what the estimates missed; an admission fits the limit;
 * a settle charges exactly its excess (unless the sum saturates). */
static void check_budget(hak_budget_t* b, int op, uint64_t v) {
  hak_budget_t before = *b;
  switch (op) {
    case 0: _hak_budget_earn(b, v); break;
    case 1:
      if (_hak_budget_admit(b, v)) {
        uint64_t r = v ? v : 1;
        if (before.reserved_ns != 0 || b->reserved_ns != r || before.spent_ns + r < before.spent_ns ||
            before.spent_ns + r > _hak_budget_limit(&before))
          abort();
      } else if (b->reserved_ns != before.reserved_ns || b->spent_ns != before.spent_ns) {
        abort();
      }
      break;
    case 2:
      _hak_budget_settle(b, v);
      if (before.reserved_ns == 0 ? b->spent_ns != before.spent_ns
                                  : b->reserved_ns != 0 || (before.spent_ns + v >= before.spent_ns &&
                                                             b->spent_ns != before.spent_ns + v))
        abort();
      break;
    default: _hak_budget_earn(b, v << 20); break;
  }
  uint64_t room = _hak_budget_limit(b) + b->overrun_ns;
  if (room < b->overrun_ns) room = UINT64_MAX;
  if (b->spent_ns > room || b->reserved_ns > room - b->spent_ns) abort();
  if (_hak_budget_limit(b) < _hak_budget_limit(&before)) abort(); /* the limit only grows */
}

static void run(const uint8_t* data, size_t size, state_t* st) {
  memset(st, 0, sizeof(*st));
  _hak_ucb_init(&st->ucb, size ? data[0] % 8 : 0);
  _hak_elo_init(&st->elo, 42);
  _hak_lifecycle_init(&st->lc, 0);
  _hak_rng_seed(&st->rng, 7);
  uint64_t now = 0;
  for (size_t i = 1; i + 9 <= size; i += 9) {
    uint8_t op = data[i];
    double x = decode_double(data + i + 1);
    now += (uint64_t)(op & 0x0f) * 100000000ull;
    switch (op % 7) {
      case 0: {
        int arm = _hak_ucb_select(&st->ucb);
        if (arm < 0 || arm >= HAK_UCB_ARMS) abort();
        _hak_ucb_update(&st->ucb, op & 0x40 ? arm : (int)(op % 9) - 1, x);
        break;
      }
      case 1:
        if (op & 0x10) {
          /* a dear site's direct adoption: any arm, in range or not */
          int arm = (int)(op >> 5) - 1, before = st->ucb.current;
          bool adopted = _hak_ucb_adopt(&st->ucb, arm, now, op & 0x80 ? 0 : HAK_UCB_COOLDOWN_NS);
          if (adopted != (st->ucb.current != before) || (adopted && (st->ucb.current != arm || st->ucb.streak != 0)))
            abort();
        } else {
          _hak_ucb_evaluate(&st->ucb, now, op & 0x20 ? 0 : HAK_UCB_COOLDOWN_NS);
        }
        break;
      case 2: {
        int c = _hak_elo_select(&st->elo);
        if (c < 0 || c >= HAK_ELO_CANDIDATES || !st->elo.c[c].active) abort();
        for (int k = 0; k < 60; k++) _hak_elo_record(&st->elo, (op & 0x80) ? c : (int)(op % 14) - 1, x * k, x, -x);
        break;
      }
      case 3: _hak_elo_play(&st->elo); break;
      case 4: {
        check_numerics(x);
        uint64_t v;
        memcpy(&v, data + i + 1, sizeof(v));
        check_budget(&st->budget, (op >> 4) & 3, v >> (op & 0x0f) * 4);
        break;
      }
      case 5: {
        uint64_t v;
        memcpy(&v, data + i + 1, sizeof(v));
        check_p99(st, v >> (op & 0x3f)); /* any magnitude */
        break;
      }
      default: {
        uint64_t mix[HAK_MIX_BUCKETS];
        for (int b = 0; b < HAK_MIX_BUCKETS; b++) mix[b] = data[i + 1 + b % 8];
        uint64_t other[HAK_MIX_BUCKETS];
        for (int b = 0; b < HAK_MIX_BUCKETS; b++) other[b] = data[i + 1 + (b + 3) % 8] >> (b % 3);
        double d = _hak_mix_distance(mix, other);
        if (!(d >= 0 && d <= 1) || d != _hak_mix_distance(other, mix) || _hak_mix_distance(mix, mix) != 0) abort();
        hak_learn_state_t s = _hak_lifecycle_window(&st->lc, x, op & 1 ? mix : NULL, now);
        if (s != HAK_LEARN && s != HAK_FROZEN && s != HAK_CANARY) abort();
        _hak_lifecycle_canary(&st->lc, &st->rng);
        break;
      }
    }
    for (int a = 0; a < HAK_UCB_ARMS; a++)
      if (isnan(_hak_ucb_mean(&st->ucb, a)) || _hak_ucb_mean(&st->ucb, a) < 0 || _hak_ucb_mean(&st->ucb, a) > 1) abort();
    if (st->ucb.current < 0 || st->ucb.current >= HAK_UCB_ARMS) abort();
    double sum = 0;
    int active = 0;
    for (int c = 0; c < HAK_ELO_CANDIDATES; c++) {
      if (!isfinite(st->elo.c[c].rating)) abort();
      sum += st->elo.c[c].rating;
      active += st->elo.c[c].active;
    }
    if (fabs(sum - HAK_ELO_CANDIDATES * HAK_ELO_INITIAL) > 1e-6) abort();
    if (st->elo.pruned && active != HAK_ELO_SURVIVORS) abort();
    int champ = _hak_elo_champion(&st->elo);
    if (champ < 0 || champ >= HAK_ELO_CANDIDATES) abort();
    if (_hak_elo_threshold(&st->elo) != st->elo.c[champ].threshold) abort();
    if (_hak_ucb_threshold(&st->ucb) != _hak_ucb_thresholds[st->ucb.current]) abort();
    if (strcmp(_hak_learn_state_name(st->lc.state), "unknown") == 0) abort();
  }
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static state_t a, b;
  run(data, size, &a);
  run(data, size, &b);
  if (memcmp(&a, &b, sizeof(a)) != 0) abort(); /* deterministic replay */
  return 0;
}
