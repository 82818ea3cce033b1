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
 *   to, inside the stack the thread runs on: below __libc_stack_end within
 *   RLIMIT_STACK on the main thread's own stack, else within the readable
 *   mapping holding sp, looked up in /proc/self/maps (raw system calls, a
 *   512-byte buffer), cached per thread for a second and looked up at most
 *   every 10 ms (a thread switching among many stacks resolves some
 *   requests as they are).  A frame whose rule says it has no caller (a
 *   thread's or the program's first) ends the walk.  A return address into
 *   a library unloaded and replaced at the same address keeps the first
 *   library's rule: a wrong caller, still read within the stack.
 * - Decisions are rechecked: one resolution in WR_RECHECK walks through the
 *   decided entries too, and one that meets a new calling function learns
 *   again (a wrapper called from one place at start-up, from many later);
 *   wr_generation tells every thread to drop what it cached.
 * - Known limits: a function split by the compiler into hot and cold parts
 *   (gcc's .cold) has two FDEs and counts as two callers; the table holds
 *   WR_SLOTS return addresses (about 1,800 sites with large requests), the
 *   rest resolve as they are (sites.unresolved).
 * x86-64 only (the CFA rules are read for it); HAKMEM_WRAPPERS=0 turns it
 * off. */
#include <pthread.h>
#include <string.h>

#include "internal.h"

#define WR_SLOTS 4096  /* return addresses with a rule (~300 KiB of BSS, touched in order of use) */
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
#define WR_RECHECK 256 /* cached resolutions per walk that rechecks decisions (~2 instructions a request) */
#define WR_THREAD_STACK_MAX (8u << 20)
#define WR_STACK_TTL 1000000000ull  /* a stack's mapping is looked up again after 1 s ... */
#define WR_STACK_RETRY 10000000ull  /* ... at most every 10 ms a thread (~100 us each) */

extern void* __libc_stack_end __attribute__((weak)); /* the main thread's first frame (ld.so) */

/* The stacks reads may touch (_hak_wrapper_init): the main thread's, below
 * __libc_stack_end within RLIMIT_STACK; another glibc thread's, below its
 * descriptor within glibc's default thread stack size. */
static uintptr_t wr_main_self;
static size_t wr_main_max, wr_thread_max; /* wr_thread_max: the stack_by_self mutant only */
static bool wr_ready;

/* A return address's state: not in use yet, it has no rule, its
 * callers are being recorded, it has two or three (plain), one (chain),
 * one and no wrapper above (own), four or more (wrapper). */
enum { WR_UNUSED, WR_NORULE, WR_LEARNING, WR_PLAIN, WR_CHAIN, WR_OWN, WR_WRAPPER };

typedef struct {
  _Atomic(uintptr_t) ra;
  _Atomic(uint32_t) state;
  _Atomic(uint32_t) seen;
  hak_cfa_rule_t rule; /* written before the entry is in its slot */
  uintptr_t func;      /* the start of its function (0: no rule) */
  _Atomic(uintptr_t) callers[WR_CALLERS]; /* the functions that called it */
} wr_entry_t;

/* The table: by hash of the return address, a slot holds 1 + the number
 * of its entry, and the entries are taken in order of first sight, so the
 * first dozens share a page or two (a table of entries hashed over ~300
 * KiB touched a page per return address, read then written: 2 faults
 * each, 9-12 of a short program's first large requests; //verify:bench mir
 * had 77 faults to jemalloc's 64).  A slot is claimed (WR_CLAIMED) while
 * its entry's rule is looked up. */
#define WR_CLAIMED 0xffffu
_Static_assert(WR_SLOTS < WR_CLAIMED, "slot values fit 16 bits");
static _Atomic(uint16_t) wr_index[WR_SLOTS]; /* 8 KiB */
static wr_entry_t wr_table[WR_SLOTS];
static _Atomic(uint32_t) wr_used; /* entries taken: one per slot claimed */
__thread uintptr_t* _hak_site_slot;
__thread const void* _hak_site_own[HAK_SITE_OWN_CACHE];
/* wrappers whose callers were found to be their own, by site: one step
 * resolves them (~80 instructions instead of ~220 for the walk) */
static __thread wr_entry_t* wr_wrapper_cache[HAK_SITE_OWN_CACHE];
__thread uint32_t _hak_site_recheck;
static _Atomic(uint32_t) wr_generation;  /* decisions taken back */
static __thread uint32_t wr_tls_generation; /* ... when this thread's caches were good */
static _Atomic(uint64_t) st_wrappers; /* seen_through, unresolved: per heap */

static void count_seen_through(void) {
  hak_heap_t* heap = _hak_heap_tls;
  if (heap != &_hak_heap_empty) hak_count(heap->counters.seen_through, 1);
}

static void count_walk(void) {
  hak_heap_t* heap = _hak_heap_tls;
  if (heap != &_hak_heap_empty) hak_count(heap->counters.walks, 1);
}

/* A request whose walk met a return address the full table cannot hold. */
static void count_unresolved(void) {
  hak_heap_t* heap = _hak_heap_tls;
  if (heap != &_hak_heap_empty) hak_count(heap->counters.unresolved, 1);
}

/* The entry of return address ra, its rule looked up on first sight; NULL:
 * the table is full around it, another thread is filling it, or (look_up
 * false) it has none yet. */
static wr_entry_t* wr_get(uintptr_t ra, bool look_up) {
  uintptr_t h = ra * 0x9e3779b97f4a7c15ull;
  for (unsigned i = 0; i < WR_PROBE; i++) {
    _Atomic(uint16_t)* slot = &wr_index[((h >> 40) + i) % WR_SLOTS];
    uint16_t x = atomic_load_explicit(slot, memory_order_acquire);
    if (x == 0) {
#ifndef HAK_FAULT_WRAPPER_SAMPLE_LOOKS_UP /* fault injection: every resolution may look rules up */
      if (!look_up) return NULL;
#endif
      if (atomic_compare_exchange_strong_explicit(slot, &x, WR_CLAIMED, memory_order_acquire, memory_order_acquire)) {
        /* a slot claimed takes one entry (but for claims a fork cut: the
         * child frees their slots, not their entries) */
        uint32_t n = atomic_load_explicit(&wr_used, memory_order_relaxed);
        do
          if (n == WR_SLOTS) {
            atomic_store_explicit(slot, 0, memory_order_relaxed);
            break;
          }
        while (!atomic_compare_exchange_weak_explicit(&wr_used, &n, n + 1, memory_order_relaxed, memory_order_relaxed));
        if (n == WR_SLOTS) break;
        wr_entry_t* e = &wr_table[n];
        atomic_store_explicit(&e->ra, ra, memory_order_relaxed);
        bool ok = _hak_cfa_rule(ra - 1, &e->rule, &e->func); /* the call instruction's rule */
        atomic_store_explicit(&e->state, ok ? WR_LEARNING : WR_NORULE, memory_order_relaxed);
        atomic_store_explicit(slot, (uint16_t)(e - wr_table + 1), memory_order_release);
        return e;
      }
    }
    if (x == WR_CLAIMED) return NULL; /* another thread is filling it (or one around ra): next time */
    wr_entry_t* e = &wr_table[x - 1];
    if (atomic_load_explicit(&e->ra, memory_order_relaxed) == ra) return e;
  }
  count_unresolved(); /* the table is full around it */
  return NULL;
}

/* A frame: the slot holding a return address, and rbp as the function
 * that address returns into has it. */
typedef struct {
  uintptr_t* at;
  uintptr_t rbp;
  uintptr_t hi; /* reads stay below: the top of the running thread's stack */
} wr_frame_t;

/* The top of the stack sp is on: the main thread's own stack (below
 * __libc_stack_end, within RLIMIT_STACK), or else the readable mapping
 * holding sp, from /proc/self/maps, cached per thread for WR_STACK_TTL
 * (a coroutine's stack, a signal stack, a stack the program switched to,
 * any thread's: reads never leave it).  0: unknown (nothing is read). */
static __thread uintptr_t wr_stack_lo, wr_stack_hi;
static __thread uint64_t wr_stack_until, wr_stack_retry;

static uintptr_t stack_top(uintptr_t sp) {
  if (!wr_ready) return 0;
  if ((uintptr_t)pthread_self() == wr_main_self) {
    uintptr_t top = &__libc_stack_end != NULL && __libc_stack_end != NULL ? (uintptr_t)__libc_stack_end + 8 : 0;
    if (sp < top && top - sp < wr_main_max) return top;
  }
#ifdef HAK_FAULT_WRAPPER_STACK_BY_SELF /* fault injection: the thread's descriptor taken for its stack's top */
  uintptr_t self = (uintptr_t)pthread_self();
  if (sp < self && self - sp < wr_thread_max) return self;
#endif
  uint64_t now = 0;
  if (sp >= wr_stack_lo && sp < wr_stack_hi) {
    now = _hak_os->now_ns();
    if (now < wr_stack_until) return wr_stack_hi;
  }
  if (now == 0) now = _hak_os->now_ns();
  if (now < wr_stack_retry) return 0; /* looked up not long ago: a stack switching thread */
  wr_stack_retry = now + WR_STACK_RETRY;
  uintptr_t lo, hi;
  if (!_hak_os_mapping_of(sp, &lo, &hi)) return 0;
  wr_stack_lo = lo, wr_stack_hi = hi, wr_stack_until = now + WR_STACK_TTL;
  return hi;
}

void _hak_wrapper_init(void) {
  size_t lim = _hak_os_stack_limit();
  wr_main_max = lim != 0 ? lim : WR_THREAD_STACK_MAX;
  wr_thread_max = lim != 0 && lim < WR_THREAD_STACK_MAX ? lim : WR_THREAD_STACK_MAX;
  if (_hak_os_is_main_thread()) wr_main_self = (uintptr_t)pthread_self();
  /* the index and the first entries resident and writable: each was
   * first read, then written, at a program's first large request (two
   * faults each) */
  _hak_os_prefault(wr_index, sizeof(wr_index));
  _hak_os_prefault(wr_table, 4096);
  wr_ready = true;
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

/* Records the function a request came from (the calls of one function
 * count once: a loop the compiler unrolled calls from several places) and
 * returns the entry's state after it.  A learning entry decides: 4
 * functions make a wrapper at once; after WR_LEARN requests one makes a
 * chain, two or three plain.  A decided entry met by a rechecking walk
 * (plain, chain, own) that sees a new function learns again (wr_generation
 * tells the threads to drop what they cached). */
static uint32_t wr_learn(wr_entry_t* e, uint32_t state, uintptr_t caller, int* distinct) {
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
#ifdef HAK_FAULT_WRAPPER_BLIND /* fault injection: no site is ever a wrapper */
  n = 1;
#endif
  if (state != WR_LEARNING) { /* a decided entry, rechecked */
    if (n < WR_CALLERS && n <= (state == WR_PLAIN ? 3 : 1)) return state;
    if (!atomic_compare_exchange_strong(&e->state, &state, WR_LEARNING)) return state;
    atomic_store_explicit(&e->seen, 0, memory_order_relaxed);
    atomic_fetch_add(&wr_generation, 1);
    state = WR_LEARNING;
  }
  uint32_t seen = atomic_fetch_add_explicit(&e->seen, 1, memory_order_relaxed) + 1;
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

/* What this thread cached is dropped when a decision was taken back (by
 * any thread: this one sees it at its next walk, within WR_RECHECK cached
 * resolutions). */
static void wr_sync_caches(void) {
  uint32_t gen = atomic_load_explicit(&wr_generation, memory_order_relaxed);
  if (gen == wr_tls_generation) return;
  memset(_hak_site_own, 0, sizeof(_hak_site_own));
  memset(wr_wrapper_cache, 0, sizeof(wr_wrapper_cache));
  wr_tls_generation = gen;
}

HAK_NOINLINE HAK_NO_SANITIZE_STACK const void* _hak_site_see_through(const void* site, bool look_up) {
#if HAK_CFI_SUPPORTED
  if (!hak_option(HAK_OPT_WRAPPERS) || site == NULL) return site;
  wr_sync_caches();
  /* one resolution in WR_RECHECK walks through decided entries too */
#ifdef HAK_FAULT_WRAPPER_FINAL /* fault injection: decided entries are never rechecked */
  bool recheck = false;
#else
  bool recheck = _hak_site_recheck == 0 || _hak_site_recheck > WR_RECHECK;
#endif
  if (recheck) _hak_site_recheck = WR_RECHECK;
  size_t own_slot = hak_site_own_slot(site);
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
      wr_entry_t* e = i < WR_CLIMB ? wr_get(*f.at, true) : NULL; /* hakmem's frames */
      if (e == NULL && i < WR_CLIMB) return site; /* another thread is filling it: next time */
      if (e == NULL || atomic_load_explicit(&e->state, memory_order_acquire) == WR_NORULE || !wr_step(e, &f)) {
        _hak_site_own[own_slot] = site; /* not called through the shim (hak_alloc_at): until a recheck */
        return site;
      }
    }
  }
  /* a wrapper whose caller is its own: one step */
  wr_entry_t* w = wr_wrapper_cache[own_slot];
  if (!recheck && w != NULL && atomic_load_explicit(&w->ra, memory_order_relaxed) == (uintptr_t)site) {
    wr_frame_t g = f;
    if (wr_step(w, &g)) {
      const void* caller = (const void*)*g.at;
      if (_hak_site_own[hak_site_own_slot(caller)] == caller) {
        _hak_site_recheck--; /* counts toward the next recheck, as the inline hits do */
        count_seen_through();
        return caller;
      }
    }
  }
  count_walk();
  /* up the callers: through wrappers and the functions only one caller
   * calls (they are that caller's), to the caller of the topmost wrapper.
   * A decided walk that found no wrapper above an entry marks it own: the
   * next walk stops there. */
  uintptr_t result = (uintptr_t)site;
  wr_entry_t* tail = NULL; /* the first entry above the last wrapper */
  int tail_depth = 0;
  bool decided = true; /* every entry from tail on is decided, and the walk saw all it needs */
  wr_entry_t* e = wr_get((uintptr_t)site, look_up), *first = e;
  int depth = 0;
  for (;; depth++) {
    /* WR_DEPTH levels from the site or, above a wrapper, from the entry
     * above it: then that entry has been seen with all it may see */
    if (depth == (tail != NULL ? tail_depth : depth) + WR_DEPTH) break;
    if (depth == 2 * WR_DEPTH || e == NULL) {
      decided = false;
      break;
    }
    uint32_t state = atomic_load_explicit(&e->state, memory_order_acquire);
    if (tail == NULL && state != WR_WRAPPER) tail = e, tail_depth = depth;
    bool walks = state == WR_LEARNING || state == WR_CHAIN || state == WR_WRAPPER;
    bool rechecks = recheck && (state == WR_PLAIN || state == WR_CHAIN || state == WR_OWN);
    if (!walks && !rechecks) { /* plain, own, no rule */
      if (depth == 0) _hak_site_own[own_slot] = site; /* final, until a recheck */
      break;
    }
    if (!wr_step(e, &f)) { /* out of bounds this time (alloca, a deep frame) */
#ifndef HAK_FAULT_WRAPPER_FAILED_STEP_DECIDES /* fault injection: the walk counts as complete */
      decided = false;
#endif
      if (depth == 0) _hak_site_own[own_slot] = site; /* until a recheck */
      break;
    }
    uintptr_t caller = *f.at;
    if (caller < 4096) break; /* no caller: the first frame */
    wr_entry_t* ce = wr_get(caller, look_up);
    if (state != WR_WRAPPER) {
      if (ce == NULL) {
        decided = false;
        break;
      }
      int distinct;
#ifdef HAK_FAULT_WRAPPER_BY_ADDRESS /* fault injection: every call instruction is a caller of its own */
      state = wr_learn(e, state, caller, &distinct);
#else
      state = wr_learn(e, state, ce->func != 0 ? ce->func : caller, &distinct);
#endif
      if (state == WR_PLAIN || state == WR_OWN) break;
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
  wr_sync_caches(); /* this walk may have taken a decision back */
  uint32_t chain = WR_CHAIN;
  if (tail != NULL && decided && atomic_load_explicit(&tail->state, memory_order_relaxed) == WR_CHAIN)
    atomic_compare_exchange_strong(&tail->state, &chain, WR_OWN);
  if (tail != NULL && tail_depth == 1 && atomic_load_explicit(&tail->state, memory_order_relaxed) == WR_OWN) {
    /* the site a wrapper, its caller its own: both final, cached */
    _hak_site_own[hak_site_own_slot((const void*)result)] = (const void*)result;
    wr_wrapper_cache[own_slot] = first;
  }
  if (result != (uintptr_t)site) count_seen_through();
  return (const void*)result;
#else
  (void)look_up;
  return site;
#endif
}

/* Fork child: a slot a thread that did not survive was claiming would
 * stay unusable; its return address is looked up again (the entry it may
 * have taken is left unused: one thread runs now). */
void _hak_wrapper_fork_child(void) {
#ifdef HAK_FAULT_WRAPPER_CLAIM_KEPT /* fault injection: a vanished thread's claim stays */
  return;
#endif
  for (size_t i = 0; i < WR_SLOTS; i++)
    if (atomic_load_explicit(&wr_index[i], memory_order_relaxed) == WR_CLAIMED)
      atomic_store_explicit(&wr_index[i], 0, memory_order_relaxed);
}

void _hak_wrapper_stats(hak_stats_t* st) {
  st->sites_wrappers = atomic_load(&st_wrappers);
}
