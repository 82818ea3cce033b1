/* Call sites: a table keyed by return address.  Open addressing with a
 * bounded probe of 8 slots; when all 8 are taken, the coldest of them
 * (fewest allocations) is evicted, its learning state reset.  Updated on
 * large and huge allocations and on the small generic path (one sample per
 * 64 page refills), never on the small fast path.  Counters are relaxed
 * atomics: a site being evicted while another thread counts into it loses
 * a few counts, never memory safety.
 *
 * A slot of the index holds 1 + the number of its site's entry, and the
 * entries are taken in order of first sight, so a program's first sites
 * share a page or two (entries of ~690 bytes hashed over 700 KiB touched a
 * page per site: a fault each at first sight, and 4 KiB of RSS for every
 * ~6 sites a program has).  A slot is claimed (SITE_CLAIMED) while its new
 * entry is set up. */
#include <string.h>

#include "internal.h"

#define SITE_SLOTS 1024       /* entries */
/* slots (2 KiB): as many as entries, so that entries run out only when
 * every slot is taken and eviction then compares a full probe window
 * (review K: with twice as many slots, sites beyond 1,024 found holes and
 * went untracked, or evicted a hot site among one or two candidates) */
#define SITE_INDEX SITE_SLOTS
#define SITE_PROBE 8
#define SITE_CLAIMED 0xffffu
_Static_assert(SITE_SLOTS < SITE_CLAIMED, "slot values fit 16 bits");

static _Atomic(uint16_t) site_index[SITE_INDEX];
static hak_site_t sites[SITE_SLOTS];
static _Atomic(uint32_t) sites_used; /* entries taken: one per slot claimed */
static _Atomic(uint64_t) site_samples;

static size_t site_hash(uintptr_t k) {
  k ^= k >> 17;
  k *= 0xed5ad4bbU;
  k ^= k >> 11;
  return (size_t)(k & (SITE_INDEX - 1));
}

bool _hak_site_trylock(hak_site_t* s) {
  int expected = 0;
  return atomic_compare_exchange_strong_explicit(&s->lock, &expected, 1, memory_order_acquire, memory_order_relaxed);
}

void _hak_site_unlock(hak_site_t* s) { atomic_store_explicit(&s->lock, 0, memory_order_release); }

/* Clears a slot for a new key; false if its learner is busy.  A fresh
 * slot's counters are zero already and are not cleared: another thread may
 * have found the key and counted since the CAS that published it (8
 * threads meeting a new site lost up to 3 of its requests:
 * wrapper_test's threads_learn_one_table under TSan). */
static bool site_reset(hak_site_t* s, bool fresh) {
  if (!_hak_site_trylock(s)) return false;
  if (fresh) goto learner;
  atomic_store_explicit(&s->allocs, 0, memory_order_relaxed);
  atomic_store_explicit(&s->frees, 0, memory_order_relaxed);
  atomic_store_explicit(&s->bytes, 0, memory_order_relaxed);
  for (int i = 0; i < HAK_SITE_HIST; i++) atomic_store_explicit(&s->hist[i], 0, memory_order_relaxed);
  atomic_store_explicit(&s->threshold, 0, memory_order_relaxed);
  atomic_store_explicit(&s->large_count, 0, memory_order_relaxed);
  atomic_store_explicit(&s->period_log, 0, memory_order_relaxed);
  atomic_store_explicit(&s->big_allocs, 0, memory_order_relaxed);
learner:
  /* the learner's state, under the lock: everything after it */
  _hak_policy_drop_epoch(s);
  memset(&s->epoch_kind, 0, sizeof(*s) - offsetof(hak_site_t, epoch_kind));
  /* UCB1's arm in force: the largest at most the default threshold */
  int arm = 0;
  while (arm + 1 < HAK_UCB_ARMS && _hak_ucb_thresholds[arm + 1] <= (size_t)hak_option(HAK_OPT_HUGE_THRESHOLD)) arm++;
  _hak_ucb_init(&s->ucb, arm);
  _hak_site_unlock(s);
  return true;
}

/* A new entry for key in the claimed slot, or NULL (every entry taken
 * meanwhile: the slot is given back, a hole). */
static hak_site_t* site_take(_Atomic(uint16_t)* slot, uintptr_t key) {
  uint32_t n = atomic_load_explicit(&sites_used, memory_order_relaxed);
  do
    if (n == SITE_SLOTS) {
      atomic_store_explicit(slot, 0, memory_order_release);
      return NULL;
    }
  while (!atomic_compare_exchange_weak_explicit(&sites_used, &n, n + 1, memory_order_relaxed, memory_order_relaxed));
  hak_site_t* s = &sites[n];
  site_reset(s, true);
  atomic_store_explicit(&s->key, key, memory_order_relaxed);
  atomic_store_explicit(slot, (uint16_t)(n + 1), memory_order_release);
  return s;
}

static hak_site_t* site_find(uintptr_t key, bool insert) {
  size_t h = site_hash(key);
  hak_site_t* coldest = NULL;
  for (size_t i = 0; i < SITE_PROBE; i++) {
    _Atomic(uint16_t)* slot = &site_index[(h + i) & (SITE_INDEX - 1)];
    uint16_t x = atomic_load_explicit(slot, memory_order_acquire);
    if (x == 0) {
      /* every entry taken (a fork cut a claim): the slot stays a hole */
      if (!insert || atomic_load_explicit(&sites_used, memory_order_relaxed) == SITE_SLOTS) continue;
      if (atomic_compare_exchange_strong_explicit(slot, &x, SITE_CLAIMED, memory_order_acquire, memory_order_acquire)) {
        hak_site_t* s = site_take(slot, key);
        if (s != NULL) return s;
        continue; /* taken meanwhile: a hole */
      }
    }
    /* another thread is setting it up (maybe for key): a few hundred
     * instructions, waited for (returning NULL lost the requests of 8
     * threads meeting a new site: wrapper_test's threads_learn_one_table,
     * 1,598 of 1,600 in CI); bounded: a signal handler may have
     * interrupted the claim on this very thread */
    for (int spins = 0; x == SITE_CLAIMED && spins < 4096; spins++) {
#if defined(__x86_64__)
      __builtin_ia32_pause();
#endif
      x = atomic_load_explicit(slot, memory_order_acquire);
    }
    if (x == SITE_CLAIMED) return NULL;
    if (x == 0) continue; /* given back: a hole */
    hak_site_t* s = &sites[x - 1];
    uintptr_t k = atomic_load_explicit(&s->key, memory_order_acquire);
    if (k == key) return s;
    if (!insert) continue;
    if (coldest == NULL || atomic_load_explicit(&s->allocs, memory_order_relaxed) <
                               atomic_load_explicit(&coldest->allocs, memory_order_relaxed))
      coldest = s;
  }
  if (!insert || coldest == NULL) return NULL;
  uintptr_t old = atomic_load_explicit(&coldest->key, memory_order_relaxed);
  if (!atomic_compare_exchange_strong(&coldest->key, &old, key)) return NULL;
  site_reset(coldest, false);
  return coldest;
}

static int hist_bucket(size_t size) {
  static const size_t edges[HAK_SITE_HIST - 1] = {64u << 10, 256u << 10, 512u << 10, 1u << 20,
                                                  2u << 20, 4u << 20, 16u << 20};
  int b = 0;
  while (b < HAK_SITE_HIST - 1 && size >= edges[b]) b++;
  return b;
}

hak_site_t* _hak_site_alloc(const void* site, size_t size) {
  if (site == NULL) return NULL;
  hak_site_t* s = site_find((uintptr_t)site, true);
  hak_atomic_add(site_samples, 1);
  if (s == NULL) return NULL;
  hak_atomic_add(s->allocs, 1);
  hak_atomic_add(s->bytes, size);
  hak_atomic_add(s->hist[hist_bucket(size)], 1);
  return s;
}

/* HAKMEM_THP=1: transparent huge pages by site and size.  A huge page
 * spares 511 faults when its 2 MiB are all written, and costs 2 MiB of RSS
 * for one written page: 500 live 3 MB buffers written at both ends took
 * 1 GB with every block of 2-4 MiB advised (8 MB unadvised).  So a site's
 * blocks of a size range (2-4, 4-16, 16+ MiB, classes rounded up) get huge pages once one of
 * them was seen written densely: a fresh mapping left unadvised is probed,
 * and the pages the program wrote in three windows of it are counted
 * (thp_dense: 3/4 of each, dense; less: sparse).  Both verdicts are probed again, a dense range one
 * fresh block in THP_REPROBE_DENSE, a sparse one in THP_REPROBE_SPARSE, and
 * the last probe decides: a site whose use changes follows within a few
 * blocks (one dense block among sparse ones costs at most that many).
 * A probe still live at the site's next fresh block of that range is read
 * then (a site that keeps its blocks: 200 live sparse 3 MB buffers after 4
 * dense ones took 365 MB while their probes waited for frees that came at
 * exit); a block not written yet reads sparse, which costs faults, never
 * RSS.
 * Until a verdict, a site's first THP_TRIALS blocks of at most 4 MiB get
 * huge pages, at most THP_TRIALS_ALL in the process (a short-lived buffer,
 * as the vm scenario's, is served at once; sparse ones waste at most that). */
#define THP_TRIALS 2
#define THP_TRIALS_ALL 8
#define THP_TRIAL_MAX ((size_t)4 << 20)
#define THP_REPROBE_DENSE 8
#define THP_REPROBE_SPARSE 16
static _Atomic(uint32_t) thp_trials_all;

static int thp_range(size_t size) { return size <= ((size_t)4 << 20) ? 0 : size <= ((size_t)16 << 20) ? 1 : 2; }

/* A probed block of size bytes at p (page aligned): 3/4 of the pages
 * written in each of three 256 KiB windows, at 0, 1/8 and 3/8 of it (the
 * first half: a request BigCache rounded up to its class uses at least
 * that)?
 * (Its first 2 MiB alone: a block whose head was written whole and the
 * rest sparsely read dense, and 40 live 32 MiB such blocks took 1.2 GB
 * against glibc's 160 MB: the review's first2.c.)  Reads no memory: the
 * block may be gone (its pages then read as not written). */
#define THP_WINDOW ((size_t)256 << 10)
static bool thp_dense(const void* p, size_t size) {
  size_t at[3] = {0, (size / 8) & ~(size_t)4095, (size / 8 * 3) & ~(size_t)4095};
#ifdef HAK_FAULT_THP_PROBE_FIRST_FRAME /* fault injection: the first 2 MiB alone */
  return _hak_os_written_pages((void*)p, (size_t)2 << 20) * 4 >= 3 * 512;
#endif
  for (int i = 0; i < 3; i++)
    if (_hak_os_written_pages((uint8_t*)p + at[i], THP_WINDOW) * 4 * 4096 < 3 * THP_WINDOW) return false;
  return true;
}

int _hak_site_thp(hak_site_t* s, size_t size) {
  if (size < ((size_t)2 << 20) || s == NULL) return HAK_THP_NO;
  bool thp = hak_option(HAK_OPT_THP) != 0; /* 0: the probes still tell (huge.c's gathers ask) */
  int r = thp_range(size);
#ifndef HAK_FAULT_THP_PROBE_AT_FREE_ONLY /* fault injection: a live probe tells nothing until freed */
  uintptr_t live = atomic_exchange_explicit(&s->thp_live_probe, 0, memory_order_relaxed);
  size_t live_size = atomic_load_explicit(&s->thp_live_size, memory_order_relaxed); /* racy: a verdict, never a read */
  if (live != 0 && (int)(live & 3) == r && live_size >= ((size_t)2 << 20))
    atomic_store_explicit(&s->thp[r], thp_dense((const void*)(live & ~(uintptr_t)3), live_size) ? HAK_SITE_THP_DENSE : HAK_SITE_THP_SPARSE,
                          memory_order_relaxed);
  else if (live != 0)
    atomic_store_explicit(&s->thp_live_probe, live, memory_order_relaxed); /* another range's: kept */
#endif
  switch (atomic_load_explicit(&s->thp[r], memory_order_relaxed)) {
    case HAK_SITE_THP_DENSE:
#ifndef HAK_FAULT_THP_DENSE_FOR_GOOD /* fault injection: a dense verdict is never probed again */
      if ((atomic_fetch_add_explicit(&s->thp_probes, 1, memory_order_relaxed) + 1) % THP_REPROBE_DENSE == 0) return HAK_THP_PROBE;
#endif
      return thp ? HAK_THP_YES : HAK_THP_NO;
    case HAK_SITE_THP_SPARSE:
      return atomic_fetch_add_explicit(&s->thp_probes, 1, memory_order_relaxed) % THP_REPROBE_SPARSE == 0
                 ? HAK_THP_PROBE
                 : HAK_THP_NO;
    default:
#ifndef HAK_FAULT_THP_UNBOUNDED_TRIALS /* fault injection: every block of 2-4 MiB advised (the first rule) */
      if (thp && size <= THP_TRIAL_MAX && atomic_fetch_add_explicit(&s->thp_trials, 1, memory_order_relaxed) < THP_TRIALS &&
          atomic_fetch_add_explicit(&thp_trials_all, 1, memory_order_relaxed) < THP_TRIALS_ALL)
        return HAK_THP_YES;
#else
      (void)thp_trials_all;
      if (thp && size <= THP_TRIAL_MAX) return HAK_THP_YES;
#endif
      return HAK_THP_PROBE;
  }
}

bool _hak_site_sparse(const hak_site_t* s, size_t size) {
  return s != NULL && atomic_load_explicit(&s->thp[thp_range(size)], memory_order_relaxed) == HAK_SITE_THP_SPARSE;
}

void _hak_site_thp_probing(hak_site_t* s, const void* p, size_t size) {
  if (s != NULL && ((uintptr_t)p & 3) == 0) {
    atomic_store_explicit(&s->thp_live_size, size, memory_order_relaxed);
    atomic_store_explicit(&s->thp_live_probe, (uintptr_t)p | (uintptr_t)thp_range(size), memory_order_relaxed);
  }
}

void _hak_site_thp_freed(const void* site, const void* p, size_t size) {
  hak_site_t* s = site != NULL ? site_find((uintptr_t)site, false) : NULL;
  if (s == NULL || size < ((size_t)2 << 20)) return;
  uintptr_t live = (uintptr_t)p | (uintptr_t)thp_range(size); /* read now: not later, at another block there */
  atomic_compare_exchange_strong_explicit(&s->thp_live_probe, &live, 0, memory_order_relaxed, memory_order_relaxed);
  atomic_store_explicit(&s->thp[thp_range(size)], thp_dense(p, size) ? HAK_SITE_THP_DENSE : HAK_SITE_THP_SPARSE,
                        memory_order_relaxed);
}

void _hak_site_free(const void* site) {
  if (site == NULL) return;
  hak_site_t* s = site_find((uintptr_t)site, false);
  if (s != NULL) hak_atomic_add(s->frees, 1);
}

/* The index and the first entries resident and writable: a first site is
 * looked up (the zero page mapped), then inserted (a second fault). */
void _hak_site_init(void) {
  _hak_os_prefault(site_index, sizeof(site_index));
  _hak_os_prefault(sites, 4096);
}

void _hak_site_stats(hak_stats_t* st) {
  uint64_t n = 0;
  uint32_t used = atomic_load_explicit(&sites_used, memory_order_acquire);
  for (size_t i = 0; i < used; i++) n += atomic_load_explicit(&sites[i].key, memory_order_relaxed) != 0;
  st->sites_tracked = n;
  st->sites_sampled = atomic_load(&site_samples);
}

/* The entries the index's slots name, one bit each; returns the slots
 * that name no entry or one already named (the checker's count).  With
 * free_claims (a fork child: their threads are gone) claimed slots become
 * free. */
static size_t sites_named(uint64_t named[SITE_SLOTS / 64], bool free_claims) {
  size_t bad = 0;
  memset(named, 0, SITE_SLOTS / 8);
  for (size_t i = 0; i < SITE_INDEX; i++) {
    uint16_t x = atomic_load_explicit(&site_index[i], memory_order_acquire);
    if (x == SITE_CLAIMED && free_claims) atomic_store_explicit(&site_index[i], 0, memory_order_relaxed);
    if (x == 0 || x == SITE_CLAIMED) continue;
    if (x > SITE_SLOTS || (named[(x - 1) / 64] >> ((x - 1) % 64) & 1)) {
      bad++;
      continue;
    }
    named[(x - 1) / 64] |= (uint64_t)1 << ((x - 1) % 64);
  }
  return bad;
}
static bool site_named(const uint64_t named[SITE_SLOTS / 64], size_t i) { return named[i / 64] >> (i % 64) & 1; }

/* Fork child: a site lock held by a thread that did not survive would stay
 * held (the site never learns or resets again).  Its epoch may be half
 * updated: it is dropped. */
void _hak_site_fork_child(void) {
  /* a slot claimed by a vanished thread: free again.  Its entry stays
   * taken, named by no slot: its key is dropped, or the site would be
   * listed twice once it is seen again (review K) */
  uint64_t named[SITE_SLOTS / 64];
  sites_named(named, true);
  uint32_t used = atomic_load_explicit(&sites_used, memory_order_relaxed);
  for (size_t i = 0; i < used; i++)
    if (!site_named(named, i)) atomic_store_explicit(&sites[i].key, 0, memory_order_relaxed);
  for (size_t i = 0; i < used; i++) {
#ifndef HAK_FAULT_FORK_SITE_LOCKS /* fault injection: held locks stay held */
    if (atomic_load_explicit(&sites[i].lock, memory_order_relaxed) != 0) {
      _hak_policy_drop_epoch(&sites[i]);
      atomic_store_explicit(&sites[i].lock, 0, memory_order_relaxed);
    }
#endif
  }
}

size_t hak_sites_get(hak_site_info_t* out, size_t max) {
  size_t n = 0;
  uint32_t used = atomic_load_explicit(&sites_used, memory_order_acquire);
  for (size_t i = 0; i < used; i++) {
    uintptr_t k = atomic_load_explicit(&sites[i].key, memory_order_relaxed);
    if (k == 0) continue;
    hak_site_t* s = &sites[i];
    hak_site_info_t info = {(const void*)k, atomic_load(&s->allocs), atomic_load(&s->frees), atomic_load(&s->bytes),
                            atomic_load(&s->threshold), atomic_load(&s->large_count), 0, 0, 0, 0, 0, 0};
    /* the learner's fields are the site lock's, held for a few hundred
     * instructions at a time: a bounded wait (never blocks; a lock held by
     * a thread this one interrupted leaves them 0) */
    int tries = 0;
    while (!_hak_site_trylock(s) && ++tries < 10000) {
    }
    if (tries < 10000) {
      info.epochs = s->epochs_all;
      info.explored = s->epochs_explored;
      info.cost_ns = s->budget.earned_ns;
      info.explore_ns = s->budget.spent_ns;
      info.overrun_ns = s->budget.overrun_ns;
      info.settled = s->settled_mix != 0;
      _hak_site_unlock(s);
    }
    /* insertion into the top-max list, most allocations first */
    size_t j = n < max ? n++ : max;
    while (j > 0 && out[j - 1].allocs < info.allocs) {
      if (j < max) out[j] = out[j - 1];
      j--;
    }
    if (j < max) out[j] = info;
  }
  return n;
}

/* Checker: the index's slots name distinct entries among those taken;
 * every learned threshold is one of the UCB1 arms, and every site's
 * exploration stays within its budget (learn.h's invariant). */
size_t _hak_site_check(void) {
  size_t bad = 0;
  uint64_t named[SITE_SLOTS / 64];
  bad += sites_named(named, false);
  /* after the index: a slot names an entry only once it is counted */
  uint32_t used = atomic_load_explicit(&sites_used, memory_order_acquire);
  for (size_t i = used; i < SITE_SLOTS; i++) bad += site_named(named, i);
  for (size_t i = 0; i < used; i++) {
    if (_hak_site_trylock(&sites[i])) {
      const hak_budget_t* b = &sites[i].budget;
      uint64_t room = _hak_budget_limit(b) + b->overrun_ns;
      if (room >= b->overrun_ns && (b->spent_ns > room || b->reserved_ns > room - b->spent_ns)) bad++;
      _hak_site_unlock(&sites[i]);
    }
    uint32_t t = atomic_load_explicit(&sites[i].threshold, memory_order_relaxed);
    if (t == 0) continue;
    bool arm = false;
    for (int a = 0; a < HAK_UCB_ARMS; a++) arm |= t == _hak_ucb_thresholds[a];
    if (!arm) bad++;
  }
  return bad;
}
