/* hakmem internal interface: prototypes grouped by the file that defines
 * them, and the inline fast paths shared by alloc.c and shim.c.
 * Cross-file internals are prefixed _hak_ and hidden from the .so's ABI. */
#ifndef HAK_INTERNAL_H
#define HAK_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h> /* ssize_t */

#include "track.h"
#include "types.h"

#define hak_likely(x) __builtin_expect(!!(x), 1)
#define hak_unlikely(x) __builtin_expect(!!(x), 0)
#define HAK_NOINLINE __attribute__((noinline))
#define HAK_INTERNAL __attribute__((visibility("hidden")))

/* Relaxed counter bump by the single writer: a plain load/add/store, no
 * lock prefix, yet race-free for concurrent readers (stats). */
#define hak_count(c, n) \
  atomic_store_explicit(&(c), atomic_load_explicit(&(c), memory_order_relaxed) + (n), memory_order_relaxed)
#define hak_atomic_add(c, n) atomic_fetch_add_explicit(&(c), (n), memory_order_relaxed)

/* ---- locks ---------------------------------------------------------------
 * The allocator's mutexes, and the fork protocol (init.c).  Between fork's
 * prepare and its parent/child handlers the forking thread holds every one
 * of them, and other libraries' prepare handlers (registered before
 * hakmem's, so run after it) still run:
 *  - the forking thread may allocate in them: for it locking is a no-op (it
 *    owns every lock; all other threads are outside);
 *  - they may wait for a lock of their own that another thread holds while
 *    it calls malloc.  So no other thread may block on an allocator lock
 *    while a fork is pending: hak_lock returns false instead, and the caller
 *    takes a path that touches nothing the lock guards (a fresh mapping
 *    instead of a cached one, munmap instead of the batch queue, ...).
 * Otherwise these are plain mutex calls; hak_lock waits in 1 ms slices.
 *
 * Each lock has its place in the one order every path takes them (fork's
 * prepare takes them in it), and a thread records which it holds.  A
 * thread asking for a lock while it holds that one or a later one can only
 * be a signal handler that interrupted the holder: it never waits then (for
 * its own thread, or for a thread that waits for a lock its own thread
 * holds), it takes the lock only if it is free and not its own thread's,
 * else gets the answer a pending fork gets (the TSan CI run of the storm
 * test: TSan delivers signals as pthread_mutex_trylock returns, and the
 * handler's batch-queue tick waited for the lock that trylock had taken). */
typedef enum { HAK_LOCK_HUGE, HAK_LOCK_HEAP, HAK_LOCK_SEGMENT, HAK_LOCK_FLUSH, HAK_LOCK_QUEUE, HAK_LOCK_POLICY } hak_lock_rank_t;
typedef struct {
  pthread_mutex_t m;
  unsigned bit; /* 1 << its rank */
} hak_mutex_t;
#define HAK_MUTEX_INIT(rank) {PTHREAD_MUTEX_INITIALIZER, 1u << (rank)}
HAK_INTERNAL extern __thread bool _hak_forking __attribute__((tls_model("initial-exec")));
HAK_INTERNAL extern _Atomic(bool) _hak_fork_pending;
HAK_INTERNAL bool _hak_lock_wait(pthread_mutex_t* m); /* false: a fork is pending */
#define hak_forking() _hak_forking
/* The fork gate: a change of shared state made in several steps without a
 * lock (a huge block between its state and BigCache or the batch queue, a
 * mapping between mmap, the segment map and its header, a cached block
 * between its slot and the queue) runs inside the gate, and fork's prepare
 * waits until no thread is inside: otherwise the child, where that thread
 * does not exist, finds the block in neither place (mapped, never reused or
 * unmapped).  A thread arriving while a fork is pending waits for it, but
 * once hakmem's prepare is done (its locks taken) at most ~1 ms a fork: a
 * prepare handler registered before hakmem's (run after it) may wait for a
 * lock that thread holds, which then costs that fork 1 ms instead of a
 * deadlock; what a thread that gave up has in transit may be cut, and the
 * child's checker allows for it (_hak_fork_transits).  A thread holding an
 * allocator lock never waits (the fork waits for the lock anyway).
 * Nestable (a signal handler on a thread that waits at the gate enters on
 * its own); per entry a load and an atomic add on the thread's own slot
 * and a load of the fork's state, for paths of microseconds (huge blocks,
 * segments, the caches' tick). */
HAK_INTERNAL void _hak_gate_enter(void);
HAK_INTERNAL void _hak_gate_exit(void);
HAK_INTERNAL void _hak_fork_stats(hak_stats_t* st);
HAK_INTERNAL void _hak_gate_thread_exit(void); /* its slot back */
/* Threads that were alive at a fork of this process's line and vanished
 * in the child: each may have been freeing a block (into its own heap or
 * another's) or taking in a list of freed blocks (collect, the delayed
 * list), which stay tagged freed on no list in the child, leaked: the
 * checker does not count them as lost once this is not 0. */
HAK_INTERNAL extern size_t _hak_fork_cuts;
/* Blocks or segments that threads which gave up waiting at the fork gate
 * (in a fork of this line) may have had half moved when the fork came, two
 * per such thread inside the gate then: leaked in the child, and allowed
 * for by the checker. */
HAK_INTERNAL extern size_t _hak_fork_transits;
/* Allocator locks this thread holds, one bit each by rank, from before it
 * takes one to after it lets it go: a thread that holds any enters the
 * fork gate without waiting (the fork waits for that lock anyway, and the
 * holder must not wait for the fork), and a signal handler meanwhile never
 * waits for one (above). */
HAK_INTERNAL extern __thread unsigned _hak_locks_held __attribute__((tls_model("initial-exec")));
/* A signal handler interrupted code holding l or a later lock (no path
 * takes them out of order): l only if free and not its own thread's. */
static inline bool hak_lock_reentered(hak_mutex_t* l) {
#ifdef HAK_FAULT_HANDLER_WAITS_FOR_HELD_LOCK /* fault injection: a handler waits like any caller */
  if (!hak_forking() && pthread_mutex_trylock(&l->m) != 0 && !_hak_lock_wait(&l->m)) return false;
  _hak_locks_held |= l->bit;
  return true;
#endif
  if (_hak_locks_held & l->bit) return false; /* its own thread's, or being taken or let go */
  _hak_locks_held |= l->bit;
  atomic_signal_fence(memory_order_seq_cst);
  if (hak_forking() || pthread_mutex_trylock(&l->m) == 0) return true;
  _hak_locks_held &= ~l->bit;
  return false;
}
__attribute__((warn_unused_result)) static inline bool hak_lock(hak_mutex_t* l) {
  if (hak_unlikely(_hak_locks_held >= l->bit)) return hak_lock_reentered(l);
  _hak_locks_held |= l->bit;
  atomic_signal_fence(memory_order_seq_cst); /* counted before it is taken */
#ifdef HAK_FAULT_FORK_SELF_LOCK /* fault injection: plain blocking locks, as before the fix */
  pthread_mutex_lock(&l->m);
  return true;
#endif
  if (hak_unlikely(hak_forking())) return true;
  if (hak_likely(pthread_mutex_trylock(&l->m) == 0)) return true;
  if (_hak_lock_wait(&l->m)) return true;
  _hak_locks_held &= ~l->bit;
  return false;
}
/* Counted until after it is let go: a signal handler in between passes the
 * fork gate as a holder (marked unguarded if a fork is pending) rather than
 * wait at it for a fork that waits for this lock (review I: a handler
 * waited while the code it interrupted held pol_lock, taken by a trylock
 * not yet counted), and does not take it. */
static inline void hak_unlock(hak_mutex_t* l) {
#ifdef HAK_FAULT_FORK_SELF_LOCK
  pthread_mutex_unlock(&l->m);
  _hak_locks_held &= ~l->bit;
  return;
#endif
  if (hak_likely(!hak_forking())) pthread_mutex_unlock(&l->m);
  atomic_signal_fence(memory_order_seq_cst);
  _hak_locks_held &= ~l->bit;
}
static inline int hak_trylock(hak_mutex_t* l) {
  if (hak_unlikely(_hak_locks_held & l->bit)) return 1; /* a handler: its own thread's */
  _hak_locks_held |= l->bit;
  atomic_signal_fence(memory_order_seq_cst);
  int r = hak_forking() ? 0 : pthread_mutex_trylock(&l->m);
  if (r != 0) _hak_locks_held &= ~l->bit;
  return r;
}

/* The API function a generic path reports errors under. */
typedef enum {
  HAK_FN_FREE, HAK_FN_REALLOC, HAK_FN_USABLE_SIZE, HAK_FN_MALLOC, HAK_FN_DELETE, HAK_FN_COUNT
} hak_fn_t;

/* ---- os.c: the only file that calls mmap/munmap/madvise/clock ---------- */
typedef struct hak_os_s {
  void* (*map)(void* hint, size_t size);     /* rw anonymous or NULL        */
  int (*unmap)(void* addr, size_t size);     /* 0 or errno                  */
  int (*advise)(void* addr, size_t size, int advice); /* 0 or errno         */
  uint64_t (*now_ns)(void);                  /* monotonic clock             */
  uint64_t (*faults)(void);                  /* this thread's page faults   */
  int (*protect)(void* addr, size_t size, bool none); /* PROT_NONE or rw; 0 or errno */
  int (*remap)(void* old, size_t old_size, void* dst, size_t new_size); /* mremap; 0 or errno */
  int (*move_keep)(void* src, size_t size, void* dst); /* mremap, src kept mapped; 0 or errno */
  void (*pause_us)(unsigned us);             /* a wait (not a cancellation point) */
} hak_os_t;
HAK_INTERNAL extern const hak_os_t _hak_os_default;
HAK_INTERNAL extern const hak_os_t* _hak_os;   /* tests swap in a fake     */
/* size and align: multiples of the OS page; align a power of two. */
HAK_INTERNAL void* _hak_os_alloc_aligned(size_t size, size_t align);
HAK_INTERNAL void _hak_os_free(void* addr, size_t size);
HAK_INTERNAL bool _hak_os_remap(void* old, size_t old_size, void* dst, size_t new_size); /* false: untouched */
HAK_INTERNAL bool _hak_os_move_keep(void* src, size_t size, void* dst); /* false: untouched */
HAK_INTERNAL bool _hak_os_mapped(void* addr, size_t size); /* no hole in the range */
HAK_INTERNAL size_t _hak_os_written_pages(void* addr, size_t size); /* written pages, size <= 2 MiB */
HAK_INTERNAL bool _hak_os_refill(void* addr, size_t size); /* a range that is all hole mapped again */
HAK_INTERNAL int _hak_os_advise(void* addr, size_t size, int advice); /* counted */
HAK_INTERNAL void _hak_os_prefault(const void* addr, size_t size); /* resident and writable, kept */
/* [addr, addr + HAK_GUARD_SIZE) becomes a guard page (on) or rw again (off);
 * counted.  A failure is harmless (no guard): the mapping stays usable. */
HAK_INTERNAL void _hak_os_guard(void* addr, bool on);
/* Any page-aligned range PROT_NONE (none) or rw again; not counted. */
HAK_INTERNAL void _hak_os_protect(void* addr, size_t size, bool none);
HAK_INTERNAL extern _Atomic(uint64_t) _hak_os_map_count;
HAK_INTERNAL void _hak_os_stats(hak_stats_t* st);
HAK_INTERNAL uint64_t _hak_os_random(void);   /* no allocation, no syscall */
HAK_INTERNAL bool _hak_os_secure(void);       /* AT_SECURE                */
HAK_INTERNAL bool _hak_os_thp_always(void);   /* THP on every mapping     */
HAK_INTERNAL bool _hak_os_cwd(char* buf, size_t size);
HAK_INTERNAL int _hak_os_tid(void);
HAK_INTERNAL bool _hak_os_tid_alive(int tid); /* a thread of this process */
HAK_INTERNAL bool _hak_os_is_main_thread(void);
HAK_INTERNAL bool _hak_os_mapping_of(uintptr_t addr, uintptr_t* lo, uintptr_t* hi); /* readable, /proc/self/maps */
HAK_INTERNAL size_t _hak_os_stack_limit(void); /* RLIMIT_STACK, 0: unlimited */
HAK_INTERNAL bool _hak_os_thread_alive(int tid);
HAK_INTERNAL bool _hak_os_timedlock(pthread_mutex_t* m, uint64_t ns); /* true: taken */
/* the checker: -1 the page is not mapped, 0 mapped but not resident, 1 resident */
HAK_INTERNAL int _hak_os_resident(const void* page);
/* the checker: copies n bytes at addr; false if they cannot be read */
HAK_INTERNAL bool _hak_os_peek(const void* addr, void* out, size_t n);
HAK_INTERNAL ssize_t _hak_os_write(int fd, const void* buf, size_t n); /* write(2), not a cancellation point */
HAK_INTERNAL ssize_t _hak_os_write_report(int fd, const void* buf, size_t n); /* the same, never raising SIGPIPE */
HAK_INTERNAL uint64_t _hak_os_fd_id(int fd); /* the file fd is (never 0), 0: none */
HAK_INTERNAL int _hak_os_open_append(const char* path, bool follow); /* the statistics file, or -1 */
HAK_INTERNAL void _hak_os_close(int fd);
/* the loader: .eh_frame_hdr of the object containing pc, or NULL */
HAK_INTERNAL const uint8_t* _hak_os_eh_frame_hdr(uintptr_t pc);

/* ---- options.c --------------------------------------------------------- */
HAK_INTERNAL extern long _hak_options[HAK_OPT_COUNT];
HAK_INTERNAL extern const char* _hak_stats_file;
HAK_INTERNAL void _hak_options_init(void);
HAK_INTERNAL void _hak_options_reload(void); /* tests */
/* AT_SECURE as read at init (-1: ask the kernel; tests set 0 or 1) */
HAK_INTERNAL extern int _hak_options_secure;
static inline long hak_option(hak_option_t o) { return _hak_options[o]; }

/* ---- output.c: formatted writes without stdio or allocation ------------ */
typedef struct hak_out_s {
  int fd;
  size_t len, cap;
  char* buf;
} hak_out_t;
/* Declares an output of `size` bytes of stack storage: a report that fits
 * goes out in one write(2), so lines of several processes appending to one
 * file never interleave. */
#define HAK_OUT(name, fdv, size) \
  char name##_storage[size];     \
  hak_out_t name = {.fd = (fdv), .len = 0, .cap = (size), .buf = name##_storage}
HAK_INTERNAL void _hak_out_str(hak_out_t* o, const char* s);
HAK_INTERNAL void _hak_out_u64(hak_out_t* o, uint64_t v);
HAK_INTERNAL void _hak_out_hex(hak_out_t* o, uintptr_t v);
HAK_INTERNAL void _hak_out_flush(hak_out_t* o);

/* ---- error.c ----------------------------------------------------------- */
HAK_INTERNAL void _hak_error(hak_error_t err, hak_fn_t fn, const void* p);
HAK_INTERNAL void _hak_error_what(hak_error_t err, hak_fn_t fn, const void* p, const char* what);
HAK_INTERNAL void _hak_error_stats(hak_stats_t* st);
HAK_INTERNAL void _hak_warning(const char* msg, const char* detail);

/* ---- size_class.c ------------------------------------------------------ */
HAK_INTERNAL extern const uint8_t _hak_bin_lut[HAK_SMALL_FAST_MAX / HAK_ALIGN + 1];
HAK_INTERNAL size_t _hak_bin_of(size_t size);            /* size <= SMALL_MAX */
/* The same as _hak_bin_of for 1 KiB < size <= SMALL_MAX, inline. */
static inline size_t hak_bin_of_mid(size_t size) {
#ifdef HAK_FAULT_MID_CLASS_DOWN /* fault injection: 2^k + 1 rounds down one class */
  size_t s = size - 1 - (((size - 1) & (size - 2)) == 0);
#else
  size_t s = size - 1;
#endif
  size_t b = 63 - (size_t)__builtin_clzll(s);
  return 8 + (b - 7) * 4 + ((s >> (b - 2)) & 3);
}
HAK_INTERNAL size_t _hak_bin_size(size_t bin);
HAK_INTERNAL size_t _hak_bin_slices(size_t bin);         /* page size in slices */
HAK_INTERNAL size_t _hak_bin_aligned(size_t size, size_t align); /* HAK_BINS if none */

/* ---- segmap.c: O(1) ownership of any address --------------------------- */
HAK_INTERNAL extern _Atomic(uint8_t) _hak_segmap[HAK_SEGMAP_ENTRIES];
HAK_INTERNAL void _hak_segmap_set(uintptr_t base, size_t size, bool huge);
HAK_INTERNAL void _hak_segmap_clear(uintptr_t base, size_t size);
HAK_INTERNAL size_t _hak_segmap_count(bool huge); /* registered heads */
HAK_INTERNAL void _hak_segmap_range(size_t* lo, size_t* hi); /* entries ever set */
/* A segment's chunk, plain or secure (types.h). */
static inline bool hak_map_is_segment(uint8_t m) { return (uint8_t)(m - HAK_MAP_SEGMENT) <= HAK_MAP_SECURE - HAK_MAP_SEGMENT; }
static inline uint8_t hak_segmap_get(uintptr_t a) {
  size_t i = a >> HAK_SEGMENT_SHIFT;
  if (hak_unlikely(i >= HAK_SEGMAP_ENTRIES)) return HAK_MAP_NONE;
  return atomic_load_explicit(&_hak_segmap[i], memory_order_relaxed);
}

/* ---- segment.c --------------------------------------------------------- */
/* prefer: one of the heap's segments whose resident free run to take first, or NULL */
HAK_INTERNAL hak_page_t* _hak_segment_alloc_slices(hak_heap_t* heap, size_t n, hak_segment_t* prefer);
HAK_INTERNAL void _hak_segment_free_slices(hak_heap_t* heap, hak_page_t* page, bool idle);
HAK_INTERNAL void _hak_segment_release(hak_heap_t* heap, hak_segment_t* seg);
HAK_INTERNAL void _hak_segment_stats(hak_stats_t* st);
HAK_INTERNAL void _hak_segment_trim(void);
HAK_INTERNAL void _hak_segment_lock(bool lock);     /* fork */
HAK_INTERNAL void _hak_segment_fork_child(void);
HAK_INTERNAL bool _hak_segment_purge_cached(uint64_t now_ns, bool all); /* true: a later tick has work */
HAK_INTERNAL size_t _hak_segment_check_cached(const void** first); /* violations of the segment cache */

/* ---- purge.c: idle free memory back to the OS after a delay -------------- */
HAK_INTERNAL extern _Atomic(bool) _hak_purge_global; /* caches hold purgeable memory */
static inline void hak_purge_global_due(void) {
  if (!atomic_load_explicit(&_hak_purge_global, memory_order_relaxed))
    atomic_store_explicit(&_hak_purge_global, true, memory_order_relaxed);
}
HAK_INTERNAL void _hak_purge_dirtied(hak_heap_t* heap); /* slices of heap became dirty */
HAK_INTERNAL size_t _hak_purge_segment(hak_segment_t* seg, bool all); /* bytes */
HAK_INTERNAL void _hak_purge_heap(hak_heap_t* heap, uint64_t now, bool all);
HAK_INTERNAL void _hak_purge_tick_slow(hak_heap_t* heap);
HAK_INTERNAL void _hak_purge_tick_any(void); /* a path with no heap at hand */
HAK_INTERNAL void _hak_purge_now(void);                 /* hak_collect, malloc_trim */
HAK_INTERNAL void _hak_purge_count(size_t bytes);
HAK_INTERNAL void _hak_purge_stats(hak_stats_t* st);
/* From the slow paths of every tier, with a real heap (never the shared
 * empty one: _hak_purge_tick_any).  Cost when nothing is dirty: two loads
 * and a branch; otherwise a countdown, and the clock every 8 calls. */
static inline void hak_purge_tick(hak_heap_t* heap) {
  if (hak_likely(heap->purge_next_ns == 0 && !atomic_load_explicit(&_hak_purge_global, memory_order_relaxed)))
    return;
  if (heap->purge_countdown-- == 0) _hak_purge_tick_slow(heap);
}
/* A segment's header sits behind its guard page: for a pointer, the header
 * is (p & ~mask) + guard, a constant offset the page lookup folds in. */
static inline hak_segment_t* hak_segment_of(const void* p) {
  return (hak_segment_t*)(((uintptr_t)p & ~(uintptr_t)HAK_SEGMENT_MASK) + HAK_GUARD_SIZE);
}
static inline uint8_t* hak_segment_base(const hak_segment_t* seg) { return (uint8_t*)seg - HAK_GUARD_SIZE; }
static inline uint8_t* hak_slice_addr(hak_segment_t* seg, size_t i) {
  return hak_segment_base(seg) + (i << HAK_SLICE_SHIFT);
}
/* Page descriptor for an address inside a registered segment. */
static inline hak_page_t* hak_page_of(const void* p) {
  hak_segment_t* seg = hak_segment_of(p);
  hak_page_t* page = &seg->slices[((uintptr_t)p >> HAK_SLICE_SHIFT) & (HAK_SLICES - 1)];
  return page - page->slice_back;
}

/* ---- page.c ------------------------------------------------------------ */
HAK_INTERNAL extern hak_page_t _hak_page_empty;
HAK_INTERNAL void* _hak_page_alloc_small(hak_heap_t* heap, size_t bin);
HAK_INTERNAL void* _hak_page_alloc_secure(hak_heap_t* heap, size_t bin); /* or NULL */
HAK_INTERNAL void* _hak_page_alloc_large(hak_heap_t* heap, size_t size, size_t align, const void* site);
HAK_INTERNAL void _hak_page_free_slow(hak_heap_t* heap, hak_page_t* page);
HAK_INTERNAL void _hak_page_collect(hak_page_t* page);
HAK_INTERNAL bool _hak_page_age_kept(hak_heap_t* heap, bool all); /* purge tick: true if some stay */
#define HAK_KEEP_BYTES ((size_t)4 << 20) /* empty pages a heap keeps for their bins (page.c) */
HAK_INTERNAL void _hak_heap_sweep_full(hak_heap_t* heap);
HAK_INTERNAL void _hak_heap_release_empty(hak_heap_t* heap);
/* True if a is the start of a carved block of page: one bound test and one
 * exact-divisibility test by multiplication (Lemire et al., "Faster
 * remainder by direct computation", valid for off and block_size < 2^32). */
static inline bool hak_page_is_block(const hak_page_t* page, uintptr_t a) {
  uint64_t off = a - (uintptr_t)page->start;
  return off < atomic_load_explicit(&page->carved, memory_order_relaxed) &&
         off * page->div_check < page->div_check;
}

/* ---- heap.c: thread heaps, thread exit, abandonment, reclaim ------------- */
HAK_INTERNAL extern __thread hak_heap_t* _hak_heap_tls __attribute__((tls_model("initial-exec")));
HAK_INTERNAL extern hak_heap_t _hak_heap_empty;
/* set by a remote free into an abandoned heap: a reclaim is worth it */
HAK_INTERNAL extern _Atomic(bool) _hak_heaps_dirty;
HAK_INTERNAL hak_heap_t* _hak_heap_get(void);       /* init thread if needed */
HAK_INTERNAL bool _hak_heap_exited(void);           /* exit destructor ran   */
HAK_INTERNAL hak_heap_t* _hak_heap_borrow(void);    /* exited thread: one call */
HAK_INTERNAL void _hak_heap_unborrow(hak_heap_t* heap);
HAK_INTERNAL void _hak_heap_init_key(void);
HAK_INTERNAL void _hak_heaps_reclaim(void);         /* collect abandoned heaps */
HAK_INTERNAL void _hak_heap_stats(hak_stats_t* st);
HAK_INTERNAL hak_heap_t* _hak_heaps_first(void);    /* registry, next_all */
HAK_INTERNAL void* _hak_meta_alloc(size_t size);    /* never freed          */
HAK_INTERNAL void _hak_heap_lock(bool lock);        /* fork; tests          */
HAK_INTERNAL void _hak_heap_fork_child(void);
HAK_INTERNAL void _hak_remote_heapless_stats(hak_stats_t* st); /* alloc.c */
HAK_INTERNAL bool _hak_heaps_purge_abandoned(uint64_t now, bool all); /* true: more later */
#define HAK_BIN_FAST_LAST 19 /* the bin of 1 KiB */
HAK_INTERNAL extern const uint8_t _hak_bin_slot[HAK_BIN_FAST_LAST + 2]; /* bin b: [slot[b], slot[b + 1]) */
/* The page bin allocates from, in direct[] and in the direct_sz[] slots of
 * the sizes up to 1 KiB that map to it: (size of the bin below, size of the
 * bin] in steps of 16 (bin sizes are multiples of 16).  Slow paths only. */
static inline void hak_heap_set_direct(hak_heap_t* heap, size_t bin, hak_page_t* page) {
  heap->direct[bin] = page;
  if (bin > HAK_BIN_FAST_LAST) return;
  size_t end = _hak_bin_slot[bin + 1];
#ifdef HAK_FAULT_DIRECT_SZ_STALE /* fault injection: the size slots forget the last size of the bin */
  if (end > _hak_bin_slot[bin] + 1u) end--;
#endif
  for (size_t i = _hak_bin_slot[bin]; i < end; i++) heap->direct_sz[i] = page;
}

/* ---- harden.c: keys, encoded links, heap-corruption reports -------------- */
typedef struct hak_keys_s {
  uintptr_t link0, link1; /* free-list links: xor, then multiply (link1 odd) */
  uintptr_t tag0;         /* freed tag: the link mask xored with this      */
  uintptr_t sum0, sum1;   /* huge header checksum (sum1 odd)               */
  uintptr_t can0, can1;   /* HAKMEM_SECURE canaries (can1 odd)             */
} hak_keys_t;
HAK_INTERNAL extern hak_keys_t _hak_keys;
HAK_INTERNAL void _hak_harden_init(void);
/* A corrupt free list (hak_pop_ok failed for b at its head): reported
 * (HAK_ERR_CORRUPT, with what was wrong); the page's free list is dropped
 * (its blocks leak) so nothing it holds is served.  Cold. */
HAK_INTERNAL void _hak_freelist_corrupt(hak_page_t* page, const hak_block_t* b);
/* Drops page's free list after a corruption was reported: its free blocks
 * count as used and leak, and the page is marked for the checker. */
HAK_INTERNAL void _hak_page_drop_list(hak_page_t* page);
/* The same from the fast path, which then allocates on the generic path. */
HAK_INTERNAL void* _hak_alloc_corrupt(hak_heap_t* heap, hak_page_t* page, const hak_block_t* b, size_t size,
                                      const void* site);

/* The link stored in block `at` to block `next` (NULL too): next xored
 * with a keyed multiplicative mix of the storage address, non-linear in the
 * key (leaking one word does not give it away).  The mix depends only on
 * `at`, so it is computed while word 0 is loaded: decoding adds one xor to
 * the pop's dependency chain, encoding one to the free's. */
static inline uintptr_t hak_link_mask(const void* at) { return ((uintptr_t)at ^ _hak_keys.link0) * _hak_keys.link1; }
static inline uintptr_t hak_link_enc(const void* at, const void* next) { return (uintptr_t)next ^ hak_link_mask(at); }
static inline hak_block_t* hak_link_dec(const void* at, uintptr_t v) { return (hak_block_t*)(v ^ hak_link_mask(at)); }
static inline hak_block_t* hak_block_next(const hak_block_t* b) { return hak_link_dec(b, b->link); }
static inline void hak_block_set_next(hak_block_t* b, const hak_block_t* next) { b->link = hak_link_enc(b, next); }

/* ---- secure.c: HAKMEM_SECURE levels 1 and 2 -------------------------------
 * Level 1: each small block's last 8 bytes hold a canary (the usable size is
 * 8 bytes less), checked on free and realloc; freed small blocks have their
 * first and last 64 bytes zeroed past their link and tag, checked at reuse;
 * new blocks are carved in a random order, and a pop sometimes carves fresh
 * blocks first.  Level 2 also: whole blocks zeroed and checked; freed
 * blocks wait in a per-heap quarantine (a random place in a ring) before
 * reuse; large blocks get a guard page behind them; freed huge blocks are
 * made PROT_NONE and skip BigCache.  The inline fast paths never see a
 * secure page (heap->direct stays empty and segments are HAK_MAP_SECURE):
 * small allocations pop in _hak_alloc_generic (_hak_page_alloc_secure),
 * frees go to _hak_free_secure. */
HAK_INTERNAL extern int _hak_secure; /* the level, fixed at init */
#define HAK_CANARY 8
static inline uintptr_t hak_canary(const void* p) { return ((uintptr_t)p ^ _hak_keys.can0) * _hak_keys.can1; }
HAK_INTERNAL void _hak_secure_init(void);
/* a block leaving a page's list: its fill checked, its canary written;
 * false: corrupt (reported; the block must not be served) */
HAK_INTERNAL bool _hak_secure_pop(hak_page_t* page, hak_block_t* b);
/* a block being freed (or reallocated): its canary checked (false:
 * reported as corrupt, the block left alone), then (free) zero-filled */
HAK_INTERNAL bool _hak_secure_check(const hak_page_t* page, const void* p, hak_fn_t fn);
HAK_INTERNAL void _hak_secure_fill(const hak_page_t* page, void* p);
/* free() of a pointer in a secure segment, from the inline fast path */
HAK_INTERNAL void _hak_free_secure(void* p, hak_fn_t fn);
/* the owner's free of a valid, not freed block of page: canary, fill,
 * then its page's list (level 2: the quarantine) */
HAK_INTERNAL void _hak_secure_free_local(hak_heap_t* heap, hak_page_t* page, hak_block_t* b, hak_fn_t fn);
/* a page about to retire: every block on its list checked as a pop would
 * (a corrupt block is reported even if it was never to be reused) */
HAK_INTERNAL void _hak_secure_retire(hak_page_t* page);
/* level 2: holds b (freed, tagged, still counted used) back; the blocks it
 * displaces are checked and freed into their pages */
HAK_INTERNAL void _hak_quarantine_put(hak_heap_t* heap, hak_block_t* b);
HAK_INTERNAL void _hak_quarantine_flush(hak_heap_t* heap); /* every block held, freed */
/* a random number from the heap's generator */
HAK_INTERNAL uint64_t _hak_secure_rand(hak_heap_t* heap);

/* ---- init.c: process init, fork protocol, hak_collect --------------------- */
/* Largest size the fast path serves: HAK_SMALL_MAX in both modes (the
 * policy never maps a block the size classes serve: a mapping per 64-128
 * KiB block, system calls and faults each time, never paid off). */
HAK_INTERNAL extern size_t _hak_fast_limit;
HAK_INTERNAL bool _hak_init(void); /* false: re-entered on the initializing thread */
HAK_INTERNAL extern bool _hak_thp_always; /* the system backs every mapping with huge pages */

/* ---- huge.c: direct mappings with a checked header ------------------------ */
HAK_INTERNAL void* _hak_huge_alloc(size_t size, size_t align, const void* site, hak_site_t* s, size_t* dirty);
HAK_INTERNAL size_t _hak_huge_free(void* p, hak_fn_t fn); /* its size, 0: misuse */
HAK_INTERNAL hak_huge_t* _hak_huge_header(const void* p, hak_fn_t fn); /* NULL if invalid (reported) */
HAK_INTERNAL bool _hak_huge_recently_freed(const void* p);
HAK_INTERNAL void _hak_huge_stats(hak_stats_t* st);
HAK_INTERNAL uint64_t _hak_huge_live_bytes(void);
/* the high-water mark of the live blocks' usable bytes over this window and
 * the one before (BigCache's budget), and *live: those bytes now */
HAK_INTERNAL uint64_t _hak_huge_live_peak(uint64_t* live);
/* a new window: the mark starts again from the live bytes, and the last
 * window's is kept (settle: forgotten too) */
HAK_INTERNAL void _hak_huge_live_roll(bool settle);
HAK_INTERNAL size_t _hak_huge_offset(size_t size, size_t align);
HAK_INTERNAL size_t _hak_huge_usable(const void* p); /* p: a live huge block */
HAK_INTERNAL void* _hak_huge_realloc(void* p, size_t size); /* NULL: copy instead */
/* the checker: a live header consistent with a mapping of map_size bytes */
HAK_INTERNAL bool _hak_huge_header_valid(const hak_huge_t* h, size_t map_size);

/* ---- bigcache.c: freed huge blocks kept per (site, class) ----------------- */
HAK_INTERNAL int _hak_bigcache_class(size_t size);        /* -1: bypass */
HAK_INTERNAL size_t _hak_bigcache_class_size(int cls);
HAK_INTERNAL hak_huge_t* _hak_bigcache_get(const void* site, int cls);
HAK_INTERNAL hak_huge_t* _hak_bigcache_get_donor(size_t need); /* pages to move (huge.c) */
HAK_INTERNAL void _hak_huge_lock(bool lock); /* fork */
HAK_INTERNAL void _hak_huge_fork_child(void);
HAK_INTERNAL bool _hak_bigcache_put(hak_huge_t* h, bool freed); /* freed: by the program (a burst's put) */
HAK_INTERNAL void _hak_bigcache_drain(void);
HAK_INTERNAL size_t _hak_bigcache_check(size_t* cached); /* violations; blocks cached */
HAK_INTERNAL void _hak_bigcache_stats(hak_stats_t* st);
HAK_INTERNAL bool _hak_bigcache_expire(uint64_t now); /* true: still holds blocks */

/* ---- madvq.c: the batch queue ------------------------------------------- */
HAK_INTERNAL void _hak_madvq_push(uintptr_t base, size_t size, size_t used, size_t bytes);
HAK_INTERNAL void _hak_madvq_tick(void);
HAK_INTERNAL bool _hak_madvq_flush(bool all); /* false: could not run */
HAK_INTERNAL uintptr_t _hak_madvq_reuse(size_t size, size_t* got, size_t* used);
HAK_INTERNAL void _hak_madvq_shed(size_t size); /* a fresh mapping of size is coming */
HAK_INTERNAL size_t _hak_madvq_check(void);
HAK_INTERNAL bool _hak_madvq_holds(uintptr_t base, size_t* n);
HAK_INTERNAL void _hak_madvq_lock(bool lock);
HAK_INTERNAL void _hak_madvq_fork_child(void);
HAK_INTERNAL void _hak_madvq_stats(hak_stats_t* st);
/* retained mappings idle a purge delay (all: every one) are decommitted;
 * true: some are left to purge later */
HAK_INTERNAL bool _hak_madvq_purge(uint64_t now, bool all);

/* ---- site.c: call-site table -------------------------------------------- */
HAK_INTERNAL hak_site_t* _hak_site_alloc(const void* site, size_t size); /* NULL: not tracked */
/* Transparent huge pages for a fresh huge mapping of size bytes for site s
 * (NULL: untracked), and what its free is to tell (site.c). */
enum { HAK_THP_NO, HAK_THP_YES, HAK_THP_PROBE };
enum { HAK_SITE_THP_UNKNOWN, HAK_SITE_THP_DENSE, HAK_SITE_THP_SPARSE };
HAK_INTERNAL int _hak_site_thp(hak_site_t* s, size_t size);
/* huge.c probes p, a fresh block of s (the site reads it at its next fresh
 * block of the size range, if it is still live) ... */
HAK_INTERNAL void _hak_site_thp_probing(hak_site_t* s, const void* p, size_t size);
/* ... or at its free, here (first 2 MiB page aligned) */
HAK_INTERNAL void _hak_site_thp_freed(const void* site, const void* p, size_t size);
/* its last probed block of this size range was used sparsely: huge.c
 * gathers no pages for it */
HAK_INTERNAL bool _hak_site_sparse(const hak_site_t* s, size_t size);
HAK_INTERNAL bool _hak_site_trylock(hak_site_t* s);
HAK_INTERNAL void _hak_site_unlock(hak_site_t* s);
HAK_INTERNAL void _hak_site_free(const void* site);
/* the large or huge tier served the site a block (counted like its frees) */
static inline void _hak_site_served(hak_site_t* s) {
  if (s != NULL) atomic_fetch_add_explicit(&s->big_allocs, 1, memory_order_relaxed);
}
HAK_INTERNAL void _hak_site_stats(hak_stats_t* st);
HAK_INTERNAL void _hak_site_init(void); /* the library constructor */
HAK_INTERNAL size_t _hak_site_check(void);
HAK_INTERNAL void _hak_site_fork_child(void);

/* ---- cfi.c, wrapper.c: the call site seen through allocation wrappers -- */
#if defined(__x86_64__) && defined(__linux__)
#define HAK_CFI_SUPPORTED 1
#else
#define HAK_CFI_SUPPORTED 0
#endif
#if defined(__clang__)
#define HAK_NO_SANITIZE_STACK __attribute__((no_sanitize("address", "memory")))
#else
#define HAK_NO_SANITIZE_STACK __attribute__((no_sanitize_address))
#endif
/* The CFA rule of a function at an address: CFA = reg (6 rbp, 7 rsp) + off;
 * the return address at CFA - 8; the caller's rbp unchanged, saved at
 * CFA + rbp_off, or unknown. */
enum { HAK_CFA_RBP_SAME, HAK_CFA_RBP_SAVED, HAK_CFA_RBP_UNKNOWN };
typedef struct hak_cfa_rule_s {
  uint8_t reg;
  int8_t rbp;
  bool ra_lost; /* the return address is not at CFA - 8 (cfi.c only) */
  int32_t off;
  int32_t rbp_off;
} hak_cfa_rule_t;
/* the rule at pc and the start of its function; false: none understood */
HAK_INTERNAL bool _hak_cfa_rule(uintptr_t pc, hak_cfa_rule_t* out, uintptr_t* func);
/* The site a request is attributed to: the caller of the wrapper whose
 * call of malloc site is (nested up to 3), else site itself.  Called from
 * the allocation paths only (it finds site's slot from its own frame).
 * look_up false: only through return addresses whose rules are known
 * already (a lookup reads the unwind tables of the program's binary, and
 * the pages it touches count in the program's RSS: 3.6 MiB of clang++'s
 * when small requests' samples looked rules up); hakmem's own frames are
 * looked up either way. */
HAK_INTERNAL const void* _hak_site_see_through(const void* site, bool look_up);
/* Sites this thread found to be their own (no wrapper: a final state), a
 * direct-mapped cache (256 bytes a thread) that spares them the walk; one
 * hit in WR_RECHECK walks anyway, so a caller that comes late (a wrapper
 * called from one place at start-up, from many later) is seen. */
#define HAK_SITE_OWN_CACHE 32
HAK_INTERNAL extern __thread const void* _hak_site_own[HAK_SITE_OWN_CACHE] __attribute__((tls_model("initial-exec")));
HAK_INTERNAL extern __thread uint32_t _hak_site_recheck __attribute__((tls_model("initial-exec")));
static inline size_t hak_site_own_slot(const void* site) { /* Fibonacci hashing: call sites 32 bytes apart spread */
  return (size_t)(((uintptr_t)site * 0x9e3779b97f4a7c15ull) >> 59) % HAK_SITE_OWN_CACHE;
}
/* The site a request counts as: ~10 instructions for a site known to be
 * its own or with HAKMEM_WRAPPERS=0.  look_up: as _hak_site_see_through's
 * (large requests, which the policy serves by site: true; small refills'
 * samples, which only count: false). */
static inline const void* hak_site_resolve(const void* site, bool look_up) {
  if (hak_option(HAK_OPT_WRAPPERS) == 0) return site;
  if (_hak_site_own[hak_site_own_slot(site)] == site && _hak_site_recheck-- != 0) return site;
  return _hak_site_see_through(site, look_up);
}
/* Where the slow entry points (_hak_alloc_generic, _hak_calloc,
 * _hak_aligned) found site on the stack: their own return-address slot,
 * when the shim tail-called them (their return address is the site); NULL
 * otherwise (then _hak_site_see_through steps up to it).  Two instructions
 * per slow call, ~150 fewer per resolved request. */
HAK_INTERNAL extern __thread uintptr_t* _hak_site_slot __attribute__((tls_model("initial-exec")));
#define HAK_NOTE_SITE_SLOT(site)                                                                      \
  (_hak_site_slot = __builtin_return_address(0) == (const void*)(site) ? (uintptr_t*)__builtin_frame_address(0) + 1 \
                                                                       : NULL)
HAK_INTERNAL void _hak_wrapper_stats(hak_stats_t* st);
HAK_INTERNAL void _hak_wrapper_fork_child(void);
HAK_INTERNAL void _hak_wrapper_init(void); /* the library constructor: the main thread's stack */

/* ---- policy.c: which tier serves a large request (learned per site) ---- */
typedef enum { HAK_DECIDE_NONE, HAK_DECIDE_TIMED, HAK_DECIDE_UCB, HAK_DECIDE_ELO } hak_decide_kind_t;
typedef struct hak_decision_s {
  hak_decide_kind_t kind;
  uint32_t epoch_seq;
  hak_site_t* site;
  size_t size;
  uint64_t t0;
} hak_decision_t;
HAK_INTERNAL size_t _hak_policy_decide(hak_site_t* s, size_t size, hak_decision_t* d);
HAK_INTERNAL void _hak_policy_record(hak_decision_t* d, bool huge, bool fresh, size_t reserved);
HAK_INTERNAL void _hak_policy_stats(hak_stats_t* st);
/* Around the free of a mapped block (evolving: its cost is the block's
 * tier's, not that of the epoch it happens in): a clock, 0 in baseline. */
HAK_INTERNAL uint64_t _hak_policy_free_begin(void);
HAK_INTERNAL void _hak_policy_freed(size_t size, uint64_t t0);
/* Closes the site's open epoch unmeasured (site lock held or owned). */
HAK_INTERNAL void _hak_policy_drop_epoch(hak_site_t* s);
HAK_INTERNAL const char* _hak_policy_mode_name(void);
HAK_INTERNAL const char* _hak_policy_state_name(void);
HAK_INTERNAL bool _hak_policy_elo(hak_elo_t* out);
HAK_INTERNAL void _hak_policy_lock(bool lock);
HAK_INTERNAL void _hak_policy_fork_child(void);

/* ---- check.c ------------------------------------------------------------ */
HAK_INTERNAL size_t _hak_check_own(void);
/* Violations of a heap's structure (queues, pages, segments; no free-list
 * walk), counted without printing: may the fork child adopt it? */
HAK_INTERNAL size_t _hak_check_heap_structure(const hak_heap_t* heap);
HAK_INTERNAL const char* _hak_check_first(void); /* first violation found by the last check */
/* --config=verify: the checker at assertion points (page retirement, every
 * 1024th refill, collect); a violation aborts. */
#ifdef HAK_VERIFY
#include <stdlib.h> /* abort */
#define HAK_VERIFY_POINT()                                             \
  do {                                                                 \
    if (_hak_check_own() != 0) {                                       \
      _hak_warning("verify: heap invariants violated", NULL);         \
      abort();                                                         \
    }                                                                  \
  } while (0)
#else
#define HAK_VERIFY_POINT() ((void)0)
#endif

/* ---- stats.c ------------------------------------------------------------ */
HAK_INTERNAL void _hak_stats_note_stderr(void); /* at init: the stderr exit statistics may go to */
HAK_INTERNAL void _hak_stats_at_exit(void);
/* glibc's mallinfo2 in hakmem's terms (bytes mapped, not bytes live):
 * arena: segments (small and large tiers), owned and cached; fordblks: the
 * cached segments; uordblks: arena - fordblks; hblks/hblkhd: live huge
 * blocks and their mappings; keepcost: what hak_collect would give back
 * (cached segments, BigCache, retained mappings). */
typedef struct hak_heapinfo_s {
  size_t arena, hblks, hblkhd, uordblks, fordblks, keepcost;
} hak_heapinfo_t;
HAK_INTERNAL void _hak_heapinfo(hak_heapinfo_t* hi);
HAK_INTERNAL int _hak_trim(void); /* hak_collect; 1 if memory went back */

/* ---- alloc.c: generic (slow) paths --------------------------------------- */
HAK_INTERNAL void* _hak_alloc_generic(hak_heap_t* heap, size_t size, size_t align, const void* site);
HAK_INTERNAL void _hak_free_generic(void* p, hak_fn_t fn);
HAK_INTERNAL void _hak_free_mt(hak_page_t* page, void* p, hak_fn_t fn); /* page->heap: another */
HAK_INTERNAL void* _hak_realloc(void* p, size_t size, const void* site);
HAK_INTERNAL void* _hak_calloc(size_t n, size_t size, const void* site);
HAK_INTERNAL void* _hak_aligned(size_t align, size_t size, const void* site);
HAK_INTERNAL size_t _hak_usable_size(const void* p, hak_fn_t fn);

/* The freed tag of block p: the keyed multiplicative mix of its address
 * that also encodes its link, xored with a key of its own: non-linear in
 * the keys, and one mix serves both words (a pop and a free compute it
 * once).  Knowing the mix of one block (from its link and a known
 * successor) lets one forge that block's link, never past the pop's
 * same-page test, nor a freed tag for any other address. */
static inline uintptr_t hak_freed_tag(const void* p) { return hak_link_mask(p) ^ _hak_keys.tag0; }
/* A freed block carries hak_freed_tag(p) when its owner freed it, that ^
 * HAK_TAG_REMOTE when another thread did (every block on a page's remote
 * list has the remote tag).  The owner's free and another thread's free of
 * one block racing each other can both pass their checks; the owner's
 * store then overwrites the remote tag, and page_collect, finding a block
 * on the remote list without it, reports the double free and never serves
 * the block twice. */
#define HAK_TAG_REMOTE ((uintptr_t)2)
static inline bool hak_tag_is_freed(const void* p, uintptr_t tag) {
  return (tag | HAK_TAG_REMOTE) == (hak_freed_tag(p) | HAK_TAG_REMOTE);
}
/* A block's tag as the checker and the misuse paths read it: the block may
 * be the program's (uninitialized, or its slack poisoned); track.h. */
HAK_NO_SANITIZE static inline uintptr_t hak_tag_peek(const void* p) {
  hak_track_quiet(true);
  uintptr_t t = atomic_load_explicit(&((const hak_block_t*)p)->tag, memory_order_relaxed);
  hak_track_quiet(false);
  hak_track_defined(&t, sizeof(t)); /* the copy, not the program's memory */
  return t;
}

/* ---------------------------------------------------------------------------
 * Fast paths.
 *
 * Allocation, sizes <= 1 KiB: 38 instructions on x86-64 in libhakmem.so
 * (clang -O2, counted with objdump): TLS load, the size's page (direct_sz:
 * no size-class lookup on the way), two dependent loads, the pop's checks
 * (19 of the 38: link decode, freed
 * tag, same-page test, harden.c), three stores, one counter add.  No lock,
 * no atomic RMW, no frame (shim.c has none); the exits are tail calls to
 * _hak_alloc_generic, which also initializes the thread.
 * ------------------------------------------------------------------------- */
/* Whether block b, at the head of page's free list, may be popped: what a
 * use after free could have written is checked before the successor
 * becomes the list head: b's freed tag (word 1), and that its link (word
 * 0) decodes to a block of this page (bound and divisibility, as
 * hak_page_is_block) or NULL.  19 instructions with the decode. */
__attribute__((always_inline)) static inline bool hak_pop_ok(const hak_page_t* page, const hak_block_t* b,
                                                             const hak_block_t* next) {
#ifdef HAK_FAULT_POP_UNCHECKED /* fault injection: the pop trusts the block */
  (void)page, (void)b, (void)next;
  return true;
#endif
  /* three predictable branches; NULL (the list's end) fails the bound and
   * is let through on the unlikely side */
  if (hak_unlikely(((atomic_load_explicit(&b->tag, memory_order_relaxed) ^ hak_freed_tag(b)) & ~HAK_TAG_REMOTE) != 0))
    return false;
  uintptr_t off = (uintptr_t)next - (uintptr_t)page->start;
  if (hak_likely(off < atomic_load_explicit(&page->carved, memory_order_relaxed)))
    return hak_likely(off * page->div_check < page->div_check);
  return next == NULL;
}

/* Takes b, checked by hak_pop_ok, off the head of page's list. */
__attribute__((always_inline)) static inline void hak_pop_commit(hak_page_t* page, hak_block_t* b, hak_block_t* next) {
  page->free = next;
  page->used++;
  atomic_store_explicit(&b->tag, 0, memory_order_relaxed); /* no longer freed */
}

/* A free block of page, or NULL (none, or the list was found corrupt and
 * dropped). */
__attribute__((always_inline)) static inline hak_block_t* hak_page_pop(hak_page_t* page) {
  hak_block_t* b = page->free;
  if (hak_likely(b != NULL)) {
    hak_block_t* next = hak_block_next(b);
    if (hak_unlikely(!hak_pop_ok(page, b, next))) {
      _hak_freelist_corrupt(page, b);
      return NULL;
    }
    hak_pop_commit(page, b, next);
  }
  return b;
}

/* A block of bin from the page the bin allocates from, or NULL. */
__attribute__((always_inline)) static inline void* hak_pop_direct(hak_heap_t* heap, size_t bin, size_t size) {
  hak_page_t* page = heap->direct[bin];
  hak_block_t* b = hak_page_pop(page);
  if (hak_likely(b != NULL)) {
    hak_count(heap->counters.small_allocs, 1);
    hak_track_alloc(b, size, page->block_size); /* sanitizer builds only */
  }
  return b;
}

/* Every exit of the fast path is a tail call (no register is live across a
 * call, so no callee-saved register is pushed). */
__attribute__((always_inline)) static inline void* hak_alloc_fast(size_t size, const void* site) {
  hak_heap_t* heap = _hak_heap_tls;
  hak_page_t* page;
  if (hak_likely(size <= HAK_SMALL_FAST_MAX)) page = heap->direct_sz[(size + HAK_ALIGN - 1) / HAK_ALIGN];
  else if (size <= _hak_fast_limit) page = heap->direct[hak_bin_of_mid(size)]; /* 5 more instructions */
  else return _hak_alloc_generic(heap, size, 0, site);
  hak_block_t* b = page->free;
  if (hak_likely(b != NULL)) {
    hak_block_t* next = hak_block_next(b);
    if (hak_unlikely(!hak_pop_ok(page, b, next))) return _hak_alloc_corrupt(heap, page, b, size, site);
    hak_pop_commit(page, b, next);
    hak_count(heap->counters.small_allocs, 1);
    hak_track_alloc(b, size, page->block_size); /* sanitizer builds only */
    return b;
  }
  return _hak_alloc_generic(heap, size, 0, site);
}

/* ---------------------------------------------------------------------------
 * Free of a block owned by this thread: 48 instructions (same build; no
 * frame: a free's call site is not needed, its block's site is kept with
 * the block): map lookup, page lookup, owner test, block-boundary test by
 * multiply, the keyed mix (one multiply for the freed tag and the encoded
 * link), freed tag test, push, used count, counter.  The validity tests (bound, boundary,
 * tag, tag store) are what makes invalid and double frees reportable; they
 * cost 12 instructions (callgrind: 55 vs 43 per free, see the build flag
 * HAK_UNCHECKED_FREE, which exists only to measure this).  Anything
 * unusual (other thread's block, huge block, NULL, misuse, page becoming
 * empty or leaving the full list) goes to _hak_free_generic / page_free_slow.
 * ------------------------------------------------------------------------- */
__attribute__((always_inline)) static inline void hak_free_fast(void* p, hak_fn_t fn) {
  uintptr_t a = (uintptr_t)p;
  if (hak_likely(hak_segmap_get(a) == HAK_MAP_SEGMENT)) {
    hak_page_t* page = hak_page_of(p);
    hak_heap_t* heap = _hak_heap_tls;
    hak_block_t* b = (hak_block_t*)p;
    uintptr_t mask = hak_link_mask(p); /* one multiply for the tag and the link */
    uintptr_t tag = mask ^ _hak_keys.tag0;
#ifdef HAK_UNCHECKED_FREE /* measurement only: the cost of the two checks */
    if (hak_likely(page->heap == heap)) {
#else
    if (hak_likely(page->heap == heap && hak_page_is_block(page, a) &&
                   (hak_track_free_begin(p),
                    ((atomic_load_explicit(&b->tag, memory_order_relaxed) ^ tag) & ~HAK_TAG_REMOTE) != 0))) {
#endif
      hak_track_free(p, page->block_size, HAK_TRACK_HEADER); /* sanitizer builds only */
      uintptr_t link = (uintptr_t)page->free ^ mask;
      atomic_store_explicit(&b->tag, tag, memory_order_relaxed);
      b->link = link;
      page->free = b;
      hak_count(heap->counters.small_frees, 1);
      if (hak_likely(--page->used != 0 && !page->in_full)) return;
      _hak_page_free_slow(heap, page);
      return;
    }
    if (page->heap != heap && page->heap != NULL) { /* another thread's block */
      _hak_free_mt(page, p, fn);
      return;
    }
  } else if (hak_segmap_get(a) == HAK_MAP_SECURE) { /* HAKMEM_SECURE: no cost above */
    _hak_free_secure(p, fn);
    return;
  }
  _hak_free_generic(p, fn);
}

#endif /* HAK_INTERNAL_H */
