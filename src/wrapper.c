/* Wrappers: the call site seen through an allocation wrapper.
 *
 * A program that allocates through xmalloc, g_malloc, a runtime's
 * PyMem_RawMalloc or its own make_buffer() has one call site, the
 * wrapper's call of malloc, for every use: per-site statistics, BigCache
 * rows and learned thresholds would be global.  A site whose function is
 * called from many places is a wrapper; its requests are attributed to the
 * wrapper's caller instead, up to WR_DEPTH callers up, through wrappers
 * and through functions only one caller calls (PyMem_RawMalloc calls
 * _PyMem_RawMalloc, which calls malloc).
 *
 * - Finding the caller: the site's slot on the stack is found by stepping
 *   from _hak_site_see_through's own frame up through hakmem's frames (the
 *   shim's, operator new's, alloc_tier's: at -O2 one step, the shim's
 *   malloc tail-calls), each step with the CFA rule of its return address
 *   (cfi.c); the next return address is where the rule says, at most
 *   WR_FRAME_MAX above.  A rule is looked up once per return address and
 *   kept in a table of WR_SLOTS, never evicted (a full table: the site as
 *   it is).
 * - Deciding: a site's first WR_LEARN requests record their callers; a
 *   site with WR_CALLERS different callers among them is a wrapper; one
 *   with a single caller is a chain (its caller's, but only when a wrapper
 *   is found above it); one with two or three is plain (a helper called
 *   from a few places is the purpose of its allocations).  While it
 *   learns, its single caller so far counts as a chain, and the site is
 *   its own until a wrapper is found.
 * - Cost: only requests the policy routes (above 128 KiB) and 1 in 64
 *   small refills (the sampled ones) are resolved: a table probe per frame
 *   stepped, ~10 ns at -O2; nothing on the fast paths.
 * - Safety: every step stays within WR_FRAME_MAX above the previous frame,
 *   on the stack the program is running on.  A return address into a
 *   library unloaded and replaced at the same address keeps the first
 *   library's rule (a wrong caller, bounded like any step).
 * x86-64 only (the CFA rules are read for it); HAKMEM_WRAPPERS=0 turns it
 * off. */
#include "internal.h"

#define WR_SLOTS 1024  /* return addresses with a rule */
#define WR_PROBE 16
#define WR_LEARN 64    /* requests a site records callers from */
#define WR_CALLERS 4   /* different callers that make it a wrapper */
#define WR_DEPTH 4     /* callers stepped up through (wrappers, chains) */
#define WR_CLIMB 8     /* hakmem's own frames stepped to reach the site */
#define WR_FRAME_MAX (16 * 1024)

/* A return address's state: its rule is being looked up, it has none, its
 * callers are being recorded, it has two or three (plain), one (chain),
 * one and no wrapper above (own), four or more (wrapper). */
enum { WR_FILLING, WR_NORULE, WR_LEARNING, WR_PLAIN, WR_CHAIN, WR_OWN, WR_WRAPPER };

typedef struct {
  _Atomic(uintptr_t) ra;
  _Atomic(uint32_t) state;
  _Atomic(uint32_t) seen;
  hak_cfa_rule_t rule; /* written before state leaves WR_FILLING */
  uintptr_t func;      /* the start of its function (0: no rule) */
  _Atomic(uintptr_t) callers[WR_CALLERS]; /* the functions that called it */
} wr_entry_t;

static wr_entry_t wr_table[WR_SLOTS];
__thread uintptr_t* _hak_site_slot;
__thread const void* _hak_site_own[HAK_SITE_OWN_CACHE];
static _Atomic(uint64_t) st_wrappers; /* seen_through: per heap */

/* The entry of return address ra, its rule looked up on first sight; NULL:
 * the table is full around it, or another thread is filling it. */
static wr_entry_t* wr_get(uintptr_t ra) {
  uintptr_t h = ra * 0x9e3779b97f4a7c15ull;
  for (unsigned i = 0; i < WR_PROBE; i++) {
    wr_entry_t* e = &wr_table[((h >> 40) + i) % WR_SLOTS];
    uintptr_t k = atomic_load_explicit(&e->ra, memory_order_acquire);
    if (k == 0) {
      if (!atomic_compare_exchange_strong_explicit(&e->ra, &k, ra, memory_order_acq_rel, memory_order_acquire)) {
        if (k != ra) continue;
      } else {
        bool ok = _hak_cfa_rule(ra - 1, &e->rule, &e->func); /* the call instruction's rule */
        atomic_store_explicit(&e->state, ok ? WR_LEARNING : WR_NORULE, memory_order_release);
        return e;
      }
    }
    if (k != ra) continue;
    return atomic_load_explicit(&e->state, memory_order_acquire) == WR_FILLING ? NULL : e;
  }
  return NULL;
}

/* A frame: the slot holding a return address, and rbp as the function
 * that address returns into has it. */
typedef struct {
  uintptr_t* at;
  uintptr_t rbp;
} wr_frame_t;

/* One frame up: where the function containing *f->at keeps its own return
 * address, by its CFA rule.  false: no rule, or a step out of bounds. */
HAK_NO_SANITIZE_STACK static bool wr_step(const wr_entry_t* e, wr_frame_t* f) {
  const hak_cfa_rule_t* r = &e->rule;
  uintptr_t sp = (uintptr_t)(f->at + 1); /* rsp when the call was made */
  uintptr_t base = r->reg == 6 ? f->rbp : sp;
  if (base < sp || base - sp > WR_FRAME_MAX) return false;
  uintptr_t cfa = base + (uintptr_t)r->off;
  if (cfa - sp > WR_FRAME_MAX || (cfa & 7) != 0) return false;
  uintptr_t rbp = f->rbp;
  if (r->rbp == HAK_CFA_RBP_SAVED) {
    uintptr_t at = cfa + (uintptr_t)(intptr_t)r->rbp_off;
    if (at < sp || at >= cfa || (at & 7) != 0) return false;
    rbp = *(const uintptr_t*)at;
  } else if (r->rbp == HAK_CFA_RBP_UNKNOWN) {
    rbp = 0; /* a later rbp-based rule fails its bound */
  }
  f->at = (uintptr_t*)(cfa - 8);
  f->rbp = rbp;
  return true;
}

/* A site still learning records the function its request came from (the
 * calls of one function count once: a loop the compiler unrolled calls
 * from several places); returns its state after this request. */
static uint32_t wr_learn(wr_entry_t* e, uintptr_t caller, int* distinct) {
  int n = 0;
  for (int i = 0; i < WR_CALLERS; i++) {
    uintptr_t c = atomic_load_explicit(&e->callers[i], memory_order_relaxed);
    if (c == 0 && atomic_compare_exchange_strong_explicit(&e->callers[i], &c, caller, memory_order_relaxed,
                                                          memory_order_relaxed))
      c = caller;
    if (c != 0) n++;
    if (c == caller) break;
  }
  *distinct = n;
  uint32_t seen = atomic_fetch_add_explicit(&e->seen, 1, memory_order_relaxed) + 1;
  uint32_t state = WR_LEARNING;
#ifdef HAK_FAULT_WRAPPER_BLIND /* fault injection: no site is ever a wrapper */
  n = 1;
#endif
  if (n >= WR_CALLERS) {
    if (atomic_compare_exchange_strong(&e->state, &state, WR_WRAPPER)) hak_atomic_add(st_wrappers, 1);
    return WR_WRAPPER;
  }
  if (seen >= WR_LEARN) {
    atomic_compare_exchange_strong(&e->state, &state, n == 1 ? WR_CHAIN : WR_PLAIN);
    return n == 1 ? WR_CHAIN : WR_PLAIN;
  }
  return WR_LEARNING;
}

HAK_NOINLINE HAK_NO_SANITIZE_STACK const void* _hak_site_see_through(const void* site) {
#if HAK_CFI_SUPPORTED
  if (!hak_option(HAK_OPT_WRAPPERS) || site == NULL) return site;
  /* the site's slot as the entry point saw it (its frame's saved rbp is
   * the caller's), else from this function's frame (it has a frame
   * pointer: rbp is its own) through hakmem's frames up to the site */
  uintptr_t* slot = _hak_site_slot; /* set by this request's entry point */
  wr_frame_t f;
  if (slot != NULL && *slot == (uintptr_t)site) {
    f = (wr_frame_t){slot, slot[-1]};
  } else {
    uintptr_t* fp = (uintptr_t*)__builtin_frame_address(0);
    f = (wr_frame_t){fp + 1, fp[0]};
    for (int i = 0; *f.at != (uintptr_t)site; i++) {
      wr_entry_t* e = i < WR_CLIMB ? wr_get(*f.at) : NULL;
      if (e == NULL || atomic_load_explicit(&e->state, memory_order_acquire) == WR_NORULE || !wr_step(e, &f))
        return site; /* not called through the shim (hak_alloc_at) */
    }
  }
  /* up the callers: through wrappers and the functions only one caller
   * calls (they are that caller's), to the caller of the topmost wrapper.
   * A decided walk that found no wrapper above an entry marks it WR_OWN:
   * the next walk stops there (~100 instructions a request, not ~450). */
  uintptr_t result = (uintptr_t)site;
  wr_entry_t* tail = NULL; /* the first entry above the last wrapper */
  bool decided = true;     /* every entry from tail on is decided */
  wr_entry_t* e = wr_get((uintptr_t)site);
  for (int depth = 0; depth < WR_DEPTH; depth++) {
    if (e == NULL) {
      decided = false;
      break;
    }
    uint32_t state = atomic_load_explicit(&e->state, memory_order_acquire);
    if (tail == NULL && state != WR_WRAPPER) tail = e;
    if (state != WR_LEARNING && state != WR_CHAIN && state != WR_WRAPPER) { /* plain, own, no rule */
      if (depth == 0) _hak_site_own[hak_site_own_slot(site)] = site; /* final: never walked again */
      break;
    }
    if (!wr_step(e, &f)) break;
    uintptr_t caller = *f.at;
    if (caller < 4096) break;
    wr_entry_t* ce = wr_get(caller);
    if (state == WR_LEARNING) {
      if (ce == NULL) {
        decided = false;
        break;
      }
      int distinct;
#ifdef HAK_FAULT_WRAPPER_BY_ADDRESS /* fault injection: every call instruction is a caller of its own */
      state = wr_learn(e, caller, &distinct);
#else
      state = wr_learn(e, ce->func != 0 ? ce->func : caller, &distinct);
#endif
      if (state == WR_PLAIN) break;
      if (state == WR_LEARNING) { /* one caller so far: a chain so far */
        decided = false;
        if (distinct != 1) break;
        state = WR_CHAIN;
      }
    }
    if (state == WR_WRAPPER) {
      result = caller;
      tail = NULL;
      decided = true;
    }
    e = ce;
  }
  uint32_t chain = WR_CHAIN;
  if (tail != NULL && decided && atomic_load_explicit(&tail->state, memory_order_relaxed) == WR_CHAIN)
    atomic_compare_exchange_strong(&tail->state, &chain, WR_OWN);
  hak_heap_t* heap = _hak_heap_tls;
  if (result != (uintptr_t)site && heap != &_hak_heap_empty) hak_count(heap->counters.seen_through, 1);
  return (const void*)result;
#else
  return site;
#endif
}

void _hak_wrapper_stats(hak_stats_t* st) {
  st->sites_wrappers = atomic_load(&st_wrappers);
}
