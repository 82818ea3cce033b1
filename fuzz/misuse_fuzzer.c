/* misuse_fuzzer: sequences that mix valid operations with double frees,
 * frees of interior, misaligned, stack and wild pointers, realloc and
 * usable_size of freed blocks, on every tier and across threads' blocks.
 * In report mode (HAKMEM_ON_ERROR=report) every misuse must be diagnosed
 * (the error counters rise by exactly one), and nothing may be corrupted:
 * the live blocks keep their contents and hak_check_heap() holds.
 *
 * Several threads: an op byte with its top bit set runs on a helper thread
 * (synchronously, so the error counts stay exact), so blocks are allocated,
 * freed, double-freed and misused from a thread other than their owner's;
 * op 0xff retires the helper (it exits with its blocks still live, whose
 * heap is then abandoned) and starts a new one.
 *
 * Heap corruption: a write after free to word 0 or word 1 of a freed small
 * block on its page's list (HAKMEM_SECURE=1: to any word), then
 * allocations until that block's turn comes: a corruption the level checks
 * must be diagnosed exactly once (errors.corrupt + 1) and the block never
 * handed out; one it does not check must not be reported. */
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "src/internal.h"

#define N 32
static char* live[N];
static size_t len[N];
static char* dead[N]; /* freed blocks, for double frees */

static const size_t sizes[] = {1, 24, 100, 1000, 5000, 40000, 200000, 700000, 3000000};

static uint64_t errors(void) {
  hak_stats_t s;
  hak_stats_get(&s);
  return s.errors_double_free + s.errors_invalid_free + s.errors_freed_usable_size + s.errors_corrupt;
}

static void expect_one_error(uint64_t before) {
  if (errors() != before + 1) abort(); /* misuse not diagnosed (or twice) */
}

/* On this thread's local list of its page (not a remote list). */
static bool on_local_list(hak_page_t* page, const void* p) {
  uint32_t n = 0;
  for (hak_block_t* b = page->free; b != NULL && n++ <= page->capacity; b = hak_block_next(b))
    if (b == p) return true;
  return false;
}

/* Whether the level catches a write after free to word w of a freed block
 * of bs bytes (README "Hardening"): words 0 and 1 always (the pop's
 * check); level 1 also the block's first and last 64 bytes (all of it
 * under 80 bytes); level 2 would check all of it up to 4 KiB, but its
 * blocks wait in the quarantine, not on the list this test drains. */
static bool level_checks(size_t w, size_t bs) {
  if (w < 2) return true;
  if (_hak_secure != 1) return false;
  return bs < 80 || w * 8 < 64 || w * 8 >= bs - 64;
}

/* The write after free itself (the sanitizer builds hold the block's
 * body poisoned: this is the bug under test, not the fuzzer's). */
HAK_NO_SANITIZE static void write_after_free(uint64_t* at, uint64_t x) { *at ^= x; }

static bool corrupt_freed(char* d, uint8_t arg) {
  if (!hak_map_is_segment(hak_segmap_get((uintptr_t)d))) return false;
  hak_page_t* page = hak_page_of(d);
  hak_heap_t* heap = _hak_heap_tls;
  /* (a kept page is empty and waits for its bin: taking from it here would
   * bypass its bookkeeping) */
  if (page->kind != HAK_SLICE_SMALL || page->heap != heap || _hak_secure >= 2 || page->kept != HAK_KEPT_NO ||
      !on_local_list(page, d))
    return false;
  /* level 1: a word counted from the block's start or (arg's top bit) its end */
  size_t bs = page->block_size, words = bs / 8;
  size_t w = !_hak_secure ? arg & 1u : arg & 128u ? words - 1 - (arg & 127u) % words : (arg & 127u) % words;
  bool caught = level_checks(w, bs);
  hak_stats_t s0, s1;
  hak_stats_get(&s0);
  write_after_free((uint64_t*)d + w, 0x5a5a5a5a5a5a5a5aull + ((uint64_t)arg << 4));
  /* take blocks from that page until d's turn comes: level 0 by
   * allocating with the page as the bin's direct page; level 1 by popping
   * its list as the secure allocation does (which may pass over a page
   * with few free blocks for a new one, and d's turn would never come) */
  static char* got[16384];
  uint32_t n = 0;
  bool served = false;
  if (!_hak_secure) {
    heap->direct[page->bin] = page;
    while (n < page->capacity + 1 && n < 16384) {
      got[n] = hak_malloc(bs);
      if (got[n] == NULL) abort();
      if (got[n++] == d) abort(); /* the corrupt block was served */
      hak_stats_get(&s1);
      if (s1.errors_corrupt != s0.errors_corrupt) break;
    }
  } else {
    while (n < 16384) {
      hak_block_t* b = hak_page_pop(page); /* NULL: the list is used up, or was found corrupt */
      if (b != NULL && !_hak_secure_pop(page, b)) {
        _hak_page_drop_list(page);
        b = NULL;
      }
      if (b == NULL) break;
      hak_count(heap->counters.small_allocs, 1);
      hak_track_alloc(b, bs - HAK_CANARY, bs - HAK_CANARY);
      got[n++] = (char*)b;
      served = (char*)b == d;
      if (served && caught) abort(); /* the corrupt block was served */
      if (served) break;
    }
  }
  while (n-- > 0) hak_free(got[n]);
  hak_stats_get(&s1);
  if (caught && s1.errors_corrupt != s0.errors_corrupt + 1) abort(); /* missed, or reported twice */
  if (!caught && (s1.errors_corrupt != s0.errors_corrupt || (_hak_secure && !served))) abort(); /* a false report */
  return true;
}

static void run_op(uint8_t op, uint8_t arg) {
  int stack_var;
  {
    int k = arg % N;
    uint64_t before = errors();
    switch (op % 8) {
      case 0:
      case 1: /* valid alloc */
        if (live[k] == NULL) {
          len[k] = sizes[op / 8 % 9];
          live[k] = hak_malloc(len[k]);
          if (live[k] == NULL) abort();
          memset(live[k], k, len[k] < 4096 ? len[k] : 4096);
          dead[k] = NULL;
        }
        break;
      case 2: /* valid free */
        if (live[k]) {
          hak_free(live[k]);
          dead[k] = live[k];
          live[k] = NULL;
        }
        break;
      case 3: /* double free, possibly after other frees */
        if (dead[k] && !live[k]) {
          /* only while the block is not handed out again: it is not, if no
           * allocation happened since (the harness frees no other block) */
          hak_free(dead[k]);
          expect_one_error(before);
          dead[k] = NULL; /* once */
        }
        break;
      case 4: /* interior / misaligned pointer of a live block */
        if (live[k] && len[k] > 16) {
          hak_free(live[k] + 1 + arg % 15);
          expect_one_error(before);
        }
        break;
      case 5: /* stack or wild pointer; or a huge block whose header was overwritten;
               or a write after free into a small block */
        if ((op & 32) && dead[k] && !live[k] && corrupt_freed(dead[k], arg)) {
          dead[k] = NULL;
          break;
        }
        /* a huge block (the policy may put a 2-4 MiB request in a segment,
         * where the 64 bytes below it are another block's or the page's) */
        if ((op & 16) && live[k] && len[k] >= (2u << 20) && hak_segmap_get((uintptr_t)live[k]) == HAK_MAP_HUGE) {
          hak_huge_t* h = (hak_huge_t*)(live[k] - HAK_HUGE_HEADER);
          hak_stats_t s0, s1;
          hak_stats_get(&s0);
          h->size ^= (size_t)(arg | 1) << 12; /* an overflow from below */
          hak_free(live[k]);
          hak_stats_get(&s1);
          if (s1.errors_corrupt != s0.errors_corrupt + 1) abort(); /* corruption, not "invalid" */
          expect_one_error(before);
          h->size ^= (size_t)(arg | 1) << 12;
          break;
        }
        hak_free(op & 8 ? (void*)&stack_var : (void*)(uintptr_t)(0x10000u + (size_t)arg * 4096));
        expect_one_error(before);
        break;
      case 6: /* usable size or realloc of a freed block */
        if (dead[k] && !live[k]) {
          if (op & 8) (void)hak_usable_size(dead[k]);
          else if (hak_realloc(dead[k], 10) != NULL) abort();
          expect_one_error(before);
          dead[k] = NULL;
        }
        break;
      default: /* valid realloc */
        if (live[k]) {
          size_t n = sizes[arg % 9];
          char* q = hak_realloc(live[k], n);
          if (q == NULL) abort();
          size_t keep = len[k] < n ? len[k] : n;
          for (size_t b = 0; b < keep && b < 4096; b++)
            if (q[b] != (char)k) abort();
          live[k] = q;
          len[k] = n;
          memset(q, k, n < 4096 ? n : 4096);
        }
        break;
    }
    /* any allocation may reuse a dead block: forget them all */
    if (op % 8 <= 1 || op % 8 == 7)
      for (int j = 0; j < N; j++) dead[j] = NULL;
  }
}

/* The helper thread: runs one op at a time, handed over under a mutex. */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int pending; /* 0 idle, 1 op waiting, 2 exit */
static uint8_t p_op, p_arg;
static pthread_t helper;
static int helper_running;

static void* helper_main(void* unused) {
  (void)unused;
  pthread_mutex_lock(&mu);
  for (;;) {
    while (pending == 0) pthread_cond_wait(&cv, &mu);
    if (pending == 2) break;
    run_op(p_op, p_arg);
    pending = 0;
    pthread_cond_broadcast(&cv);
  }
  pending = 0;
  pthread_mutex_unlock(&mu);
  return NULL;
}

static void on_helper(uint8_t op, uint8_t arg) {
  if (!helper_running) {
    if (pthread_create(&helper, NULL, helper_main, NULL) != 0) abort();
    helper_running = 1;
  }
  pthread_mutex_lock(&mu);
  p_op = op;
  p_arg = arg;
  pending = 1;
  pthread_cond_broadcast(&cv);
  while (pending != 0) pthread_cond_wait(&cv, &mu);
  pthread_mutex_unlock(&mu);
}

static void retire_helper(void) {
  if (!helper_running) return;
  pthread_mutex_lock(&mu);
  pending = 2;
  pthread_cond_broadcast(&cv);
  pthread_mutex_unlock(&mu);
  pthread_join(helper, NULL);
  helper_running = 0;
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static int init;
  if (!init) {
    init = 1;
    _hak_options[HAK_OPT_ON_ERROR] = 1; /* report and go on */
  }
  for (size_t i = 0; i + 1 < size; i += 2) {
    uint8_t op = data[i], arg = data[i + 1];
    if (op == 0xff) retire_helper();
    else if (op & 0x80) on_helper(op & 0x7f, arg);
    else run_op(op, arg);
  }
  retire_helper(); /* each input ends with its threads gone */
  for (int j = 0; j < N; j++)
    if (live[j]) {
      for (size_t b = 0; b < len[j] && b < 4096; b++)
        if (live[j][b] != (char)j) abort();
      hak_free(live[j]);
      live[j] = NULL;
      dead[j] = NULL;
    }
  if (hak_check_heap() != 0) abort();
  return 0;
}
