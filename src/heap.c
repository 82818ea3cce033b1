/* Thread heaps and process life cycle.
 *
 * Every thread starts on _hak_heap_empty (all bins point at an empty page),
 * so the first allocation falls into the generic path, which initializes
 * the process once and gives the thread a heap: an abandoned one if any
 * (memory of exited threads is reused by new ones), else a new one.  A
 * pthread key's destructor abandons the heap at thread exit.
 * Fork: the allocator's locks are taken around fork(); in the child, heaps
 * of the threads that did not survive are left as they were (never reused,
 * since they may have been mid-update), so the child is always consistent. */
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "internal.h"

__thread hak_heap_t* _hak_heap_tls __attribute__((tls_model("initial-exec"))) = &_hak_heap_empty;

hak_heap_t _hak_heap_empty = {.direct = {[0 ... HAK_BINS - 1] = &_hak_page_empty}};
uintptr_t _hak_free_key;
size_t _hak_fast_limit = HAK_SMALL_FAST_MAX; /* until the options are read */

static pthread_mutex_t heap_lock = PTHREAD_MUTEX_INITIALIZER; /* pool + meta */
static _Atomic(hak_heap_t*) heaps_all;     /* every heap, append-only      */
static hak_heap_t* heaps_free;             /* abandoned, waiting           */
static uint64_t heaps_created, heaps_reused, heaps_abandoned_now;
static pthread_key_t heap_key;
static _Atomic(int) init_state;            /* 0 no, 1 running, 2 done      */

/* ---- metadata: bump allocation from 1 MiB mappings, never freed -------- */
static uint8_t* meta_cur;
static size_t meta_left;

void* _hak_meta_alloc(size_t size) {
  size = (size + 63) & ~(size_t)63;
  hak_lock(&heap_lock);
  if (meta_left < size) {
    size_t chunk = size > (1u << 20) ? size : (1u << 20);
    uint8_t* p = _hak_os_alloc_aligned(chunk, 4096);
    if (p == NULL) {
      hak_unlock(&heap_lock);
      return NULL;
    }
    meta_cur = p;
    meta_left = chunk;
  }
  void* r = meta_cur;
  meta_cur += size;
  meta_left -= size;
  hak_unlock(&heap_lock);
  return r;
}

static void heap_reset_direct(hak_heap_t* heap) {
  for (size_t i = 0; i < HAK_BINS; i++) heap->direct[i] = &_hak_page_empty;
}

/* ---- thread exit --------------------------------------------------------- */
static void heap_thread_exit(void* arg) {
  hak_heap_t* heap = arg;
  if (heap == NULL || heap == &_hak_heap_empty) return;
  _hak_heap_tls = &_hak_heap_empty;
  heap->abandoned = true;
  _hak_heap_release_empty(heap);
  hak_lock(&heap_lock);
  heap->next_free = heaps_free;
  heaps_free = heap;
  heaps_abandoned_now++;
  hak_unlock(&heap_lock);
}

/* ---- fork ---------------------------------------------------------------- */
__thread bool _hak_forking __attribute__((tls_model("initial-exec")));

/* Every lock, in the one order any path takes them; then the forking thread
 * may allocate on (internal.h, locks) until parent/child. */
void _hak_heap_lock(bool lock) {
  if (lock) pthread_mutex_lock(&heap_lock);
  else pthread_mutex_unlock(&heap_lock);
}

static void fork_prepare(void) {
  _hak_heap_lock(true);
  _hak_segment_lock(true);
  _hak_madvq_lock(true);
  _hak_policy_lock(true);
  _hak_forking = true;
}
static void fork_parent(void) {
  _hak_forking = false;
  _hak_policy_lock(false);
  _hak_madvq_lock(false);
  _hak_segment_lock(false);
  _hak_heap_lock(false);
}
static void fork_child(void) {
  _hak_forking = false;
  _hak_policy_fork_child();
  _hak_madvq_fork_child();
  _hak_segment_fork_child();
  pthread_mutex_init(&heap_lock, NULL);
}

/* ---- process init ------------------------------------------------------- */
void _hak_init(void) {
  int expected = 0;
  if (atomic_load_explicit(&init_state, memory_order_acquire) == 2) return;
  if (!atomic_compare_exchange_strong(&init_state, &expected, 1)) {
    while (atomic_load_explicit(&init_state, memory_order_acquire) != 2) sched_yield();
    return;
  }
  heap_reset_direct(&_hak_heap_empty);
  _hak_free_key = (uintptr_t)_hak_os_random() | 1;
  _hak_options_init();
  _hak_fast_limit = hak_option(HAK_OPT_MODE) == 1 ? (64u << 10) - 1 : HAK_SMALL_MAX;
  pthread_key_create(&heap_key, heap_thread_exit);
  atomic_store_explicit(&init_state, 2, memory_order_release);
}

/* Runs when the library is loaded: make sure init happened and register the
 * fork handlers (outside any allocator lock, since registering may call
 * malloc). */
__attribute__((constructor)) static void hak_constructor(void) {
  _hak_init();
  _hak_options_init(); /* no-op unless the first read came before environ */
  _hak_fast_limit = hak_option(HAK_OPT_MODE) == 1 ? (64u << 10) - 1 : HAK_SMALL_MAX;
  pthread_atfork(fork_prepare, fork_parent, fork_child);
}

__attribute__((destructor)) static void hak_destructor(void) { _hak_stats_at_exit(); }

/* The calling thread's heap, set up on first use. */
hak_heap_t* _hak_heap_get(void) {
  hak_heap_t* heap = _hak_heap_tls;
  if (hak_likely(heap != &_hak_heap_empty)) return heap;
  _hak_init();
  hak_lock(&heap_lock);
  heap = heaps_free;
  if (heap != NULL) {
    heaps_free = heap->next_free;
    heaps_abandoned_now--;
    heaps_reused++;
  }
  hak_unlock(&heap_lock);
  if (heap == NULL) {
    heap = _hak_meta_alloc(sizeof(hak_heap_t));
    if (heap == NULL) return NULL;
    memset(heap, 0, sizeof(*heap));
    heap_reset_direct(heap);
    hak_heap_t* head = atomic_load(&heaps_all);
    do heap->next_all = head;
    while (!atomic_compare_exchange_weak(&heaps_all, &head, heap));
    hak_lock(&heap_lock);
    heaps_created++;
    hak_unlock(&heap_lock);
  }
  heap->abandoned = false;
  heap->next_free = NULL;
  /* TLS first: pthread_setspecific may allocate, which now finds the heap */
  _hak_heap_tls = heap;
  pthread_setspecific(heap_key, heap);
  return heap;
}

hak_heap_t* _hak_heaps_first(void) { return atomic_load(&heaps_all); }

void _hak_heap_stats(hak_stats_t* st) {
  struct {
#define HAK_X(n) uint64_t n;
    HAK_HEAP_COUNTERS(HAK_X)
#undef HAK_X
  } sum = {0};
  for (hak_heap_t* h = atomic_load(&heaps_all); h != NULL; h = h->next_all) {
#define HAK_X(n) sum.n += atomic_load_explicit(&h->counters.n, memory_order_relaxed);
    HAK_HEAP_COUNTERS(HAK_X)
#undef HAK_X
  }
  st->served_small = sum.small_allocs;
  st->served_large = sum.large_allocs;
  st->freed_small += sum.small_frees;
  st->freed_large += sum.large_frees;
  st->pages_initialized = sum.pages_init;
  st->pages_retired = sum.pages_retired;
  st->pages_refills = sum.refills;
  hak_lock(&heap_lock);
  st->heaps_created = heaps_created;
  st->heaps_reused = heaps_reused;
  st->heaps_abandoned = heaps_abandoned_now;
  hak_unlock(&heap_lock);
}

void hak_collect(void) {
  hak_heap_t* heap = _hak_heap_tls;
  if (heap != &_hak_heap_empty) _hak_heap_release_empty(heap);
  _hak_bigcache_drain();
  _hak_madvq_flush(true);
  _hak_segment_trim();
  HAK_VERIFY_POINT();
}
