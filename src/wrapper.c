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
 * - Finding the caller: the site's slot on the stack is where the entry
 *   point saw it (_hak_site_slot: the shim tail-called it), else it is
 *   found by stepping from _hak_site_see_through's own frame up through
 *   hakmem's frames; each step uses the CFA rule of its return address
 *   (cfi.c).  A rule is looked up once per return address and kept in a
 *   table of WR_SLOTS, never evicted (a full table: the site as it is,
 *   counted in sites.unresolved).
 * - Deciding: a site records the functions its requests came from (a
 *   function calling from several places, a loop the compiler unrolled,
 *   counts once).  WR_CALLERS of them make it a wrapper at once; after
 *   WR_LEARN requests one makes it a chain (its caller's, but only when a
 *   wrapper is found above it), two or three make it plain (a helper
 *   called from a few places is the purpose of its allocations).  While
 *   it learns, a single caller so far counts as a chain, and the site is
 *   its own until a wrapper is found.  A walk that saw every level above
 *   an entry decided, and no wrapper, marks it own: a final state, like
 *   plain, that the thread then caches (hak_site_resolve, ~8 instructions).
 * - Cost: only requests the policy routes (above 128 KiB) and 1 in 64
 *   small refills (the sampled ones) are resolved; nothing on the fast
 *   paths.  Measured (callgrind, malloc(1.5 MiB)/free at ~1,160
 *   instructions): +6 instructions a request from a site of its own, +115
 *   through a wrapper (its caller known to be its own: one step, cached
 *   per thread), a few hundred while a site learns.
 * - Safety: every read is a return address or a saved rbp the rules point
 *   to, inside the running thread's stack: [sp, the thread's descriptor)
 *   for a glibc thread (it sits at the top of the thread's stack), [sp,
 *   __libc_stack_end] for the main thread; on any other stack (a
 *   coroutine's, a raw clone's) nothing is read.  A frame whose rule says
 *   it has no caller (a thread's or the program's first) ends the walk.  A
 *   return address into a library unloaded and replaced at the same
 *   address keeps the first library's rule: a wrong caller, still read
 *   within the stack.
 * x86-64 only (the CFA rules are read for it); HAKMEM_WRAPPERS=0 turns it
 * off. */
#include <pthread.h>

#include "internal.h"

#define WR_SLOTS 4096  /* return addresses with a rule (~300 KiB of BSS, touched as used) */
#define WR_PROBE 16
#ifdef HAK_FAULT_WRAPPER_LEARN_SHORT /* fault injection: decided after 64 requests */
#define WR_LEARN 64
#else
#define WR_LEARN 1024 /* requests a site records callers from */
#endif
#define WR_CALLERS 4   /* different callers that make it a wrapper */
#define WR_DEPTH 4     /* levels looked at above a site, or above a wrapper's caller */
#define WR_CLIMB 8     /* hakmem's own frames stepped to reach the site */
#define WR_FRAME_MAX (64 * 1024) /* a step further up: not believed */
#define WR_STACK_MAX (1ull << 30) /* a thread's stack, at most */

extern void* __libc_stack_end __attribute__((weak)); /* the main thread's first frame (ld.so) */

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
/* wrappers whose callers were found to be their own, by site: one step
 * resolves them (~80 instructions instead of ~220 for the walk) */
static __thread wr_entry_t* wr_wrapper_cache[HAK_SITE_OWN_CACHE];
static _Atomic(uint64_t) st_wrappers; /* seen_through, unresolved: per heap */

static void count_seen_through(void) {
  hak_heap_t* heap = _hak_heap_tls;
  if (heap != &_hak_heap_empty) hak_count(heap->counters.seen_through, 1);
}

/* A request whose walk met a return address the full table cannot hold. */
static void count_unresolved(void) {
  hak_heap_t* heap = _hak_heap_tls;
  if (heap != &_hak_heap_empty) hak_count(heap->counters.unresolved, 1);
}

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
  uintptr_t hi; /* reads stay below: the top of the running thread's stack */
} wr_frame_t;

/* The top of the stack sp is on, if it is a glibc thread's or the main
 * thread's; 0: another stack (nothing is read). */
static uintptr_t stack_top(uintptr_t sp) {
  uintptr_t self = (uintptr_t)pthread_self();
  if (sp < self && self - sp < WR_STACK_MAX) return self;
  uintptr_t main_top = __libc_stack_end != NULL ? (uintptr_t)__libc_stack_end + 8 : 0;
  if (sp < main_top && main_top - sp < WR_STACK_MAX) return main_top;
  return 0;
}

/* One frame up: where the function containing *f->at keeps its own return
 * address, by its CFA rule.  false: no rule, or a step out of bounds. */
HAK_NO_SANITIZE_STACK static bool wr_step(const wr_entry_t* e, wr_frame_t* f) {
  const hak_cfa_rule_t* r = &e->rule;
  uintptr_t sp = (uintptr_t)(f->at + 1); /* rsp when the call was made */
  uintptr_t base = r->reg == 6 ? f->rbp : sp;
  if (base < sp || base - sp > WR_FRAME_MAX) return false;
  uintptr_t cfa = base + (uintptr_t)r->off;
  if (cfa - sp > WR_FRAME_MAX || (cfa & 7) != 0 || cfa > f->hi) return false;
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
  bool known = false;
  for (int i = 0; i < WR_CALLERS; i++) {
    uintptr_t c = atomic_load_explicit(&e->callers[i], memory_order_relaxed);
    if (c == 0 && !known &&
        atomic_compare_exchange_strong_explicit(&e->callers[i], &c, caller, memory_order_relaxed, memory_order_relaxed))
      c = caller;
    known |= c == caller;
    n += c != 0; /* every caller recorded, wherever this one is */
#ifdef HAK_FAULT_WRAPPER_POSITION_COUNT /* fault injection: the caller's position taken for their number */
    if (c == caller) break;
#endif
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
  uintptr_t* fp = (uintptr_t*)__builtin_frame_address(0);
  uintptr_t hi = stack_top((uintptr_t)fp);
  if (hi == 0) return site; /* a stack of unknown extent */
  uintptr_t* slot = _hak_site_slot; /* set by this request's entry point */
  wr_frame_t f;
  if (slot != NULL && slot > fp && (uintptr_t)slot < hi && *slot == (uintptr_t)site) {
    f = (wr_frame_t){slot, slot[-1], hi};
  } else {
    f = (wr_frame_t){fp + 1, fp[0], hi};
    for (int i = 0; *f.at != (uintptr_t)site; i++) {
      wr_entry_t* e = i < WR_CLIMB ? wr_get(*f.at) : NULL;
      if (e == NULL || atomic_load_explicit(&e->state, memory_order_acquire) == WR_NORULE || !wr_step(e, &f))
        return site; /* not called through the shim (hak_alloc_at) */
    }
  }
  /* a wrapper whose caller is its own: one step */
  wr_entry_t* w = wr_wrapper_cache[hak_site_own_slot(site)];
  if (w != NULL && atomic_load_explicit(&w->ra, memory_order_relaxed) == (uintptr_t)site) {
    wr_frame_t g = f;
    if (wr_step(w, &g)) {
      const void* caller = (const void*)*g.at;
      if (_hak_site_own[hak_site_own_slot(caller)] == caller) {
        count_seen_through();
        return caller;
      }
    }
  }
  /* up the callers: through wrappers and the functions only one caller
   * calls (they are that caller's), to the caller of the topmost wrapper.
   * A decided walk that found no wrapper above an entry marks it WR_OWN:
   * the next walk stops there (~100 instructions a request, not ~450). */
  uintptr_t result = (uintptr_t)site;
  wr_entry_t* tail = NULL; /* the first entry above the last wrapper */
  int tail_depth = 0;
  bool decided = true; /* every entry from tail on is decided, and the walk saw all it needs */
  wr_entry_t* e = wr_get((uintptr_t)site), *first = e;
  int depth = 0;
  for (;; depth++) {
    /* WR_DEPTH levels from the site or, above a wrapper, from the entry
     * above it: then that entry has been seen with all it may see */
    if (depth == (tail != NULL ? tail_depth : depth) + WR_DEPTH) break;
    if (depth == 2 * WR_DEPTH) {
      decided = false;
      break;
    }
    if (e == NULL) {
      decided = false;
      count_unresolved();
      break;
    }
    uint32_t state = atomic_load_explicit(&e->state, memory_order_acquire);
    if (tail == NULL && state != WR_WRAPPER) tail = e, tail_depth = depth;
    if (state != WR_LEARNING && state != WR_CHAIN && state != WR_WRAPPER) { /* plain, own, no rule */
      if (depth == 0) _hak_site_own[hak_site_own_slot(site)] = site; /* final: never walked again */
      break;
    }
    if (!wr_step(e, &f)) { /* out of bounds this time (alloca, a deep frame) */
#ifndef HAK_FAULT_WRAPPER_FAILED_STEP_DECIDES /* fault injection: the walk counts as complete */
      decided = false;
#endif
      break;
    }
    uintptr_t caller = *f.at;
    if (caller < 4096) break; /* no caller: the first frame */
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
  if (tail != NULL && tail_depth == 1 && atomic_load_explicit(&tail->state, memory_order_relaxed) == WR_OWN) {
    /* the site a wrapper, its caller its own: both final, cached */
    _hak_site_own[hak_site_own_slot((const void*)result)] = (const void*)result;
    wr_wrapper_cache[hak_site_own_slot(site)] = first;
  }
  if (result != (uintptr_t)site) count_seen_through();
  return (const void*)result;
#else
  return site;
#endif
}

/* Fork child: an entry a thread that did not survive was filling would
 * stay unusable; its rule is looked up again (one thread runs now). */
void _hak_wrapper_fork_child(void) {
  for (size_t i = 0; i < WR_SLOTS; i++) {
    wr_entry_t* e = &wr_table[i];
    uintptr_t ra = atomic_load_explicit(&e->ra, memory_order_relaxed);
    if (ra == 0 || atomic_load_explicit(&e->state, memory_order_relaxed) != WR_FILLING) continue;
    bool ok = _hak_cfa_rule(ra - 1, &e->rule, &e->func);
    atomic_store_explicit(&e->state, ok ? WR_LEARNING : WR_NORULE, memory_order_release);
  }
}

void _hak_wrapper_stats(hak_stats_t* st) {
  st->sites_wrappers = atomic_load(&st_wrappers);
}
