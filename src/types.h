/* hakmem internal types.  Each struct carries its invariants in the comment
 * above it; the checker (a later issue) asserts exactly those sentences. */
#ifndef HAK_TYPES_H
#define HAK_TYPES_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hakmem.h"
#include "learn.h"

/* ---------------------------------------------------------------------------
 * Geometry.  All tier boundaries live here.
 * ------------------------------------------------------------------------- */
#define HAK_SEGMENT_SHIFT 22                          /* 4 MiB segments   */
#define HAK_SEGMENT_SIZE ((size_t)1 << HAK_SEGMENT_SHIFT)
#define HAK_SEGMENT_MASK (HAK_SEGMENT_SIZE - 1)
#define HAK_SLICE_SHIFT 16                            /* 64 KiB slices    */
#define HAK_SLICE_SIZE ((size_t)1 << HAK_SLICE_SHIFT)
#define HAK_SLICES (HAK_SEGMENT_SIZE / HAK_SLICE_SIZE) /* 64, slice 0 = meta */

#define HAK_ALIGN 16            /* minimum alignment of every block          */
#define HAK_SMALL_FAST_MAX 1024 /* sizes served through the lookup table      */
#define HAK_SMALL_MAX (128 * 1024) /* largest size-class block                */
#define HAK_HUGE_THRESHOLD_DEFAULT (2 * 1024 * 1024) /* >= this: direct mmap  */
#define HAK_LARGE_MAX_SLICES (HAK_SLICES - 1)

#define HAK_BINS 48             /* size classes: 16 B ... 128 KiB           */

/* Address space covered by the ownership map: user space of x86-64 with
 * 4-level paging (47 bits) and of arm64 (48 bits): 64 MiB of BSS, resident
 * only where touched.  A mapping above it is refused (os.c). */
#define HAK_VA_BITS 48
#define HAK_SEGMAP_ENTRIES ((size_t)1 << (HAK_VA_BITS - HAK_SEGMENT_SHIFT))

/* Segment map values, one byte per 4 MiB chunk of address space:
 *   0                 not hakmem's
 *   HAK_MAP_SEGMENT   a segment (small and large blocks) starts here
 *   HAK_MAP_SECURE    the same under HAKMEM_SECURE >= 1: the fast free path
 *                     tests for HAK_MAP_SEGMENT only, so every free of a
 *                     secure segment's block takes the checked path (secure.c)
 *   HAK_MAP_GONE      a segment was here and was unmapped: an aligned pointer
 *                     into it was a block (a free of it is a double free),
 *                     unless the kernel gave the range to a mapping not
 *                     hakmem's since, which no free may name either
 *   HAK_MAP_HUGE + d  chunk d chunks after the head chunk of a huge mapping
 *                     (d <= HAK_MAP_HUGE_FAR - HAK_MAP_HUGE - 1)
 *   HAK_MAP_HUGE_FAR  further inside a huge mapping (only interior pointers) */
enum {
  HAK_MAP_NONE = 0,
  HAK_MAP_SEGMENT = 1,
  HAK_MAP_SECURE = 2,
  HAK_MAP_GONE = 3,
  HAK_MAP_HUGE = 4,
  HAK_MAP_HUGE_FAR = 255,
};

/* ---------------------------------------------------------------------------
 * Blocks.  A free block stores its successor in word 0, encoded (harden.c:
 * keyed, mixed with the address it is stored at), and a "freed" tag in word
 * 1: tag == hak_freed_tag(address), a keyed multiplicative mix.  Allocation
 * clears the tag, so a second free of the same block finds the tag and is
 * reported; a pop checks the tag of the block it serves and that the
 * successor decodes to a block of the same page, so a use after free that
 * wrote either word is reported (heap corruption) instead of served.
 * ------------------------------------------------------------------------- */
typedef struct hak_block_s {
  uintptr_t link;          /* hak_link_enc(this, next); never read raw    */
  _Atomic(uintptr_t) tag;
} hak_block_t;

/* Guard pages (PROT_NONE, one mprotect each, counted in os.guard_pages):
 * the first page of every segment, in front of its header, and the last
 * page of every huge mapping, behind its block. */
#define HAK_GUARD_SIZE ((size_t)4096)

struct hak_heap_s;
struct hak_segment_s;

typedef enum {
  HAK_SLICE_FREE = 0, /* not part of a page                                 */
  HAK_SLICE_META,     /* slice 0: segment header and page descriptors       */
  HAK_SLICE_SMALL,    /* head slice of a size-class page                    */
  HAK_SLICE_LARGE,    /* head slice of a one-block large run                */
  HAK_SLICE_INTERIOR, /* inside a multi-slice page; slice_back -> head      */
} hak_slice_kind_t;

/* A page: a run of slices carved into blocks of one size class (small) or
 * holding exactly one block (large).  The descriptor lives in the segment
 * header, indexed by slice; interior slices point back to the head.
 *
 * Invariants (owner thread's view, thread_free drained):
 *   used == capacity - |free|;  carved == capacity * block_size
 *   every block of free lies in [start, start + carved) at a multiple of
 *     block_size, and carries the freed tag
 *   capacity <= reserved; blocks past capacity were never handed out
 *   used == 0 && !is the bin's current page  =>  page is retired or kept
 *   kept  =>  small, on its bin queue, counted in heap->kept_bytes
 *   in_full == 1  <=>  page is on the heap's full list, else on its bin queue
 * thread_free: blocks freed by other threads, pushed with CAS, taken whole by
 * the owner (page_collect), which then subtracts them from used.  Its bit 0
 * (HAK_TF_FULL) is set when the page goes on the full list: the first remote
 * free that finds it clears it and pushes its block on the owner heap's
 * delayed list instead, so the owner learns of the page without looking at
 * any full page; the freer never touches the page after its push (the
 * owner may retire it at once).  So: full flag set => on the full list; on
 * the full list with the flag clear => one of its blocks is on the delayed
 * list. */
/* An empty small page kept on its bin's queue instead of retired (page.c):
 * not kept, kept since the last purge tick, kept across a whole tick. */
enum { HAK_KEPT_NO = 0, HAK_KEPT_YOUNG = 1, HAK_KEPT_AGED = 2 };

typedef struct hak_page_s {
  /* line 0: read-mostly, also read by other threads' frees */
  struct hak_heap_s* heap;      /* owning heap, NULL when not a live page   */
  uint8_t* start;               /* first block                              */
  uint64_t div_check;           /* ceil(2^64 / block_size): off is a block
                                   start iff off * div_check < div_check    */
  _Atomic(uint32_t) carved;     /* bytes carved: capacity * block_size      */
  uint32_t block_size;          /* bytes per block (large: usable bytes)    */
  uint8_t kind;                 /* hak_slice_kind_t                         */
  uint8_t bin;                  /* size class (small)                       */
  uint8_t slice_back;           /* interior slices: distance to head slice  */
  uint8_t zero;                 /* its slices were never used or purged since: all zero */
  uint32_t reserved;            /* blocks that fit                          */
  uint32_t slice_count;         /* slices in this page (head only)          */
  uint32_t slice_index;         /* index of the head slice                  */
  uintptr_t site;               /* call site of a large block               */
  uint8_t _pad1[8];
  /* line 1: written by the owner on every allocation and free */
  hak_block_t* free;            /* owner-only free list                     */
  uint32_t used;                /* blocks handed out and not yet collected  */
  uint8_t in_full;              /* on the heap's full list (owner only)     */
  uint8_t corrupt;              /* its list was found corrupt and dropped:
                                   freed blocks leak (tagged, on no list)   */
  uint8_t guarded;              /* a large block with a guard page behind it */
  uint8_t kept;                 /* HAK_KEPT_*: empty and kept for its bin   */
  uint32_t capacity;            /* blocks carved so far                     */
  uint32_t _pad3;
  struct hak_page_s* next;      /* bin queue or full list                   */
  struct hak_page_s* prev;
  uint8_t _pad4[24];
  /* line 2: written by other threads' frees */
  _Atomic(uintptr_t) thread_free; /* frees from other threads | HAK_TF_FULL */
  uint8_t _pad5[56 + 64];
} hak_page_t;

/* Lines apart so that other threads' frees (reading line 0, pushing on
 * line 2) do not bounce the line the owner writes (line 1). */
_Static_assert(sizeof(hak_page_t) == 256, "page descriptor is 256 bytes");
_Static_assert(offsetof(hak_page_t, free) == 64 && offsetof(hak_page_t, thread_free) == 128, "layout");
#define HAK_TF_FULL ((uintptr_t)1)

/* A segment: 4 MiB aligned, registered in the segment map.  Slice 0 holds
 * a guard page and, behind it, this header; slices 1..63 hold pages.
 * Invariants: bit i of free_mask set <=> slices[i].kind == HAK_SLICE_FREE;
 *   bit 0 never set; used_slices == 63 - popcount(free_mask);
 *   aged_mask within dirty_mask within free_mask; dirty_mask == 0 while
 *   cached (purged when it leaves its heap);
 *   max_run == the longest run of set bits of free_mask, and the segment is
 *   on its heap's by_run[max_run] list;
 *   every live page's heap == this segment's heap. */
typedef struct hak_segment_s {
  uint64_t magic;                 /* HAK_SEGMENT_MAGIC while registered    */
  struct hak_heap_s* heap;        /* owner; NULL while in the cache         */
  uint64_t free_mask;             /* free slices                            */
  uint64_t dirty_mask;            /* free slices that may be resident (purge.c) */
  uint64_t aged_mask;             /* of those, dirty at the last purge tick */
  uint32_t used_slices;
  uint32_t max_run;               /* longest run of free slices (heap index) */
  uint32_t kept_slices;           /* slices of its kept pages (page.c)       */
  uint32_t cached_ms;             /* when it entered the cache, ms (segment.c) */
  struct hak_segment_s* next;     /* heap's segment list / cache list      */
  struct hak_segment_s* prev;
  struct hak_segment_s* run_next; /* heap->by_run[max_run] list             */
  struct hak_segment_s* run_prev;
  hak_page_t slices[HAK_SLICES];
  /* each free slice's last page: its first block's offset from the segment
   * and its block size (0: never a page's since the segment was mapped),
   * so that a free there names a double free or an invalid pointer
   * (alloc.c).  Past the descriptors: segment_init leaves it as it was. */
  struct {
    uint32_t start, block_size;
  } former[HAK_SLICES];
} hak_segment_t;

#define HAK_SEGMENT_MAGIC 0x48414b4d454d5347ULL /* "HAKMEMSG" */

typedef struct hak_page_queue_s {
  hak_page_t* first;
  hak_page_t* last;
} hak_page_queue_t;

/* Per-thread counters: plain fields written by the owner only (relaxed
 * atomics so a concurrent hak_stats_get is not a data race), summed by
 * stats.c.  Fields are listed once in HAK_HEAP_COUNTERS. */
#define HAK_HEAP_COUNTERS(X) \
  X(small_allocs) X(small_frees) X(large_allocs) X(large_frees) \
  X(pages_init) X(pages_retired) X(refills) \
  X(remote_small_frees) X(remote_large_frees) /* by this heap's thread, of other heaps' blocks */ \
  X(seen_through) X(unresolved) X(walks) /* wrapper.c: requests attributed to a wrapper's caller; not walked (table full); walked */

typedef struct hak_heap_counters_s {
#define HAK_X(n) _Atomic(uint64_t) n;
  HAK_HEAP_COUNTERS(HAK_X)
#undef HAK_X
} hak_heap_counters_t;

/* A thread heap.  Owned by exactly one thread at a time (or by none while
 * on the abandoned list, when only remote frees and the holder of the heap
 * lock touch it: heap.c).
 * Invariants: direct[b] is a page of bin b on bins[b] or &_hak_page_empty;
 *   direct_sz[i] == direct[bin of size i * 16] (i <= 64);
 *   every page on bins[b] has bin b and in_full == 0; every page on full has
 *   in_full == 1; every segment on segments has heap == this. */
typedef struct hak_heap_s {
  /* the page each bin allocates from; and by (size + 15) / 16 up to 1 KiB,
   * so that a small malloc loads its page with no size-class lookup */
  hak_page_t* direct_sz[HAK_SMALL_FAST_MAX / HAK_ALIGN + 1];
  hak_page_t* direct[HAK_BINS];
  hak_page_queue_t bins[HAK_BINS];
  hak_page_queue_t full;
  hak_segment_t* segments;
  size_t segment_count;
  /* segments by their longest free run: by_run[r] lists those whose
   * longest run is r slices; bit r of run_mask: by_run[r] is not empty */
  hak_segment_t* by_run[HAK_SLICES];
  uint64_t run_mask;
  /* blocks other threads freed into this heap's full pages (and large
   * blocks), linked by next, taken whole by the owner (page.c).  On its own
   * cache line: other threads push while the owner updates the rest. */
  _Alignas(64) _Atomic(hak_block_t*) delayed;
  char _pad_delayed[56];
  uint32_t sample_countdown;      /* small refills until the next site sample */
  uint32_t purge_countdown;       /* slow-path calls until the clock is read */
  uint64_t purge_next_ns;         /* next purge tick of its segments, 0: none dirty */
  size_t kept_bytes;              /* bytes of its pages marked kept (page.c) */
  size_t dirty_slices;            /* free slices of its segments that may be
                                     resident: popcount of their dirty_masks */
  bool kept_pinned;               /* a segment may hold only kept pages */
  uint64_t rng;                   /* HAKMEM_SECURE: this heap's random choices */
  uint64_t rng_pool;              /* ... random bits not used yet, above them a 1 */
  /* HAKMEM_SECURE=2: freed blocks of this heap held back from reuse (a ring
   * in which each free takes a random place: secure.c) */
  hak_block_t** quarantine;
  uint32_t q_len;
  uint32_t q_puts, q_puts_tick;   /* blocks put in, and as of the last purge tick */
  size_t q_bytes;                 /* block bytes held                       */
  hak_heap_counters_t counters;
  struct hak_heap_s* next_all;    /* registry of every heap ever made      */
  struct hak_heap_s* next_free;   /* abandoned heaps waiting for a thread  */
  _Atomic(bool) abandoned;        /* on the abandoned list (or borrowed)   */
  bool forked;                    /* taken over by a fork child from a thread
                                     that vanished mid-whatever (check.c) */
  _Atomic(int) owner_tid;         /* kernel tid of the owning thread, 0: none,
                                     HAK_HEAP_LOST: a fork child's, left mid-update */
} hak_heap_t;
#define HAK_HEAP_LOST (-2)

/* Huge block header, the 64 bytes just below the user pointer.  The mapping
 * starts at base (4 MiB aligned, a multiple of 4 MiB long); the user block
 * starts at base + offset: 64 for blocks under 2 MiB, 2 MiB for larger ones
 * (so they are 2 MiB aligned for transparent huge pages), the alignment for
 * aligned requests.  checksum covers the fields that never change while
 * the mapping lives (magic, base, map_size, size, offset, cls). */
typedef struct hak_huge_s {
  uint64_t magic;
  uintptr_t base;                 /* start of the mapping                   */
  size_t map_size;                /* bytes mapped                           */
  size_t size;                    /* usable bytes from the user pointer     */
  uint32_t offset;                /* user pointer - base (<= 1 GiB)         */
  int32_t cls;                    /* BigCache class, -1 if not cacheable    */
  uintptr_t site;                 /* call site of the last allocation       */
  _Atomic(uint32_t) state;        /* HAK_HUGE_LIVE / HAK_HUGE_FREED         */
  uint32_t probe : 1;             /* a fresh mapping its site's THP choice
                                     left unadvised to see how densely the
                                     site touches its blocks (site.c) */
  uint32_t drained : 31;          /* cached: pages at the block's end that
                                     were moved out (empty); a hint       */
  uint64_t checksum;
} hak_huge_t;

#define HAK_HUGE_HEADER 64
_Static_assert(sizeof(hak_huge_t) <= HAK_HUGE_HEADER, "huge header fits 64 bytes");
#define HAK_HUGE_MAGIC 0x48414b4d48554745ULL /* "HAKMHUGE" */
#define HAK_HUGE_LIVE 0x4c495645u
#define HAK_HUGE_FREED 0x46524545u

/* A call site (site.c).  Keyed by return address; counters are relaxed
 * atomics.  The policy fields: threshold is the snapshot every large
 * allocation of the site reads (0: the global default); ucb is guarded by
 * lock (a try-lock: a busy site skips learning for that sample).
 * Invariants: key != 0 for a used slot; hist sums to <= allocs;
 * threshold is 0 or one of _hak_ucb_thresholds. */
#define HAK_POLICY_EPOCH 8   /* requests routed by one choice (policy.c)  */
#define HAK_LEARN_BUCKETS 7  /* 64K, 128K, ..., 1M, 2M, 4M: one per UCB arm, then 2-4M, more */
#define HAK_SITE_HIST 8 /* < 64K, < 256K, < 512K, < 1M, < 2M, < 4M, < 16M, more */
typedef struct hak_site_s {
  _Atomic(uintptr_t) key;
  _Atomic(uint64_t) allocs, frees, bytes;
  _Atomic(uint64_t) hist[HAK_SITE_HIST];
  _Atomic(uint32_t) threshold;
  _Atomic(uint32_t) large_count; /* large/huge allocations: sampling     */
  _Atomic(uint32_t) period_log;  /* log2 of the measuring period (policy.c); 0: 8, new */
  _Atomic(uint32_t) big_allocs;  /* blocks the large and huge tiers served (frees: theirs) */
  _Atomic(uint8_t) thp[3];       /* HAK_SITE_THP_*: how its huge blocks of 2-4, 4-16, 16+ MiB were used (site.c) */
  _Atomic(uint32_t) thp_trials, thp_probes;
  _Atomic(uintptr_t) thp_live_probe; /* its last probed block, still live (| its size range) */
  _Atomic(size_t) thp_live_size;     /* ... and its size */
  _Atomic(int) lock;
  /* evolving (policy.c), under lock: the epoch being measured ... */
  int epoch_kind;                /* 0 none, else HAK_DECIDE_UCB / _ELO     */
  int epoch_arm;
  bool epoch_explore;            /* routed otherwise than the policy in force */
  uint32_t epoch_left;           /* requests still to route by epoch_arm  */
  uint32_t epoch_seq;
  uint32_t epochs;               /* closed UCB epochs                     */
  uint32_t epoch_n;
  uint32_t epoch_thread;         /* who opened it: faults are per thread  */
  uint32_t epoch_count0;         /* large_count when it opened            */
  uint64_t epoch_t0, epoch_faults0, epoch_waste;
  uint64_t epoch_free0;           /* the opener's time freeing mapped blocks, then */
  uint64_t epoch_dec0;            /* every site's large requests, then */
  uint32_t period_want;           /* log2 of the period the site's cost asks for */
  uint8_t epoch_cell[HAK_POLICY_EPOCH]; /* each request's bucket * 2 + huge */
  uint32_t epoch_kib[HAK_POLICY_EPOCH];
  /* ... and what the site has learned: cost per request (ns, window wall
   * time) of each (size bucket, tier) cell, the requests sampled per
   * bucket, the cost of the policy in force, the exploration budget */
  float cell_ns[HAK_LEARN_BUCKETS][2];
  float cell_min[HAK_LEARN_BUCKETS][2]; /* the cheapest request seen: stalls only add */
  uint32_t cell_n[HAK_LEARN_BUCKETS][2];
  uint32_t mix[HAK_LEARN_BUCKETS];
  uint32_t earned_count;         /* large_count when the budget last earned */
  uint32_t settled_mix;          /* buckets seen when exploration stopped, 0: not settled */
  uint64_t epochs_all, epochs_explored;
  double ctl_ns;                 /* per request, policy in force; 0: unknown */
  double share;                  /* the site's part of its windows' large requests; 0: unknown */
  double settle_ctl_ns;          /* ctl_ns when it settled */
  hak_budget_t budget;
  hak_ucb_t ucb;
} hak_site_t;

/* The kinds of misuse reported by error.c. */
typedef enum {
  HAK_ERR_DOUBLE_FREE,
  HAK_ERR_INVALID_FREE,
  HAK_ERR_FREED_USABLE_SIZE,
  HAK_ERR_CORRUPT,
} hak_error_t;

/* Options (options.c): one row per knob. */
typedef enum {
  HAK_OPT_ON_ERROR,        /* 0 abort, 1 report                             */
  HAK_OPT_STATS,           /* 0 off, 1 text, 2 json                         */
  HAK_OPT_SEGMENT_CACHE,   /* empty segments kept for reuse                 */
  HAK_OPT_HUGE_THRESHOLD,  /* bytes; >= goes straight to mmap               */
  HAK_OPT_STATS_FILE,      /* path the statistics are appended to           */
  HAK_OPT_THP,             /* advise huge pages for blocks >= 2 MiB         */
  HAK_OPT_BIGCACHE_BYTES,  /* BigCache budget                               */
  HAK_OPT_BIGCACHE_SLOTS,  /* slots per (site, class) row                   */
  HAK_OPT_BIGCACHE_EXPIRY_MS, /* idle blocks leave BigCache after this      */
  HAK_OPT_BATCH_BYTES,     /* batch queue flushes at this many bytes ...    */
  HAK_OPT_BATCH_RANGES,    /* ... or this many ranges ...                   */
  HAK_OPT_BATCH_DEADLINE_MS, /* ... or when the oldest waited this long     */
  HAK_OPT_RETAIN_BYTES,    /* advised mappings kept for reuse before munmap */
  HAK_OPT_PURGE_DELAY_MS,  /* idle free memory is decommitted after this    */
  HAK_OPT_MODE,            /* 0 baseline, 1 evolving                        */
  HAK_OPT_SEED,            /* learners' random seed (0: from the OS)        */
  HAK_OPT_SECURE,          /* hardening level 0, 1, 2 (secure.c)            */
  HAK_OPT_WRAPPERS,        /* see through allocation wrappers (wrapper.c)   */
  HAK_OPT_COUNT
} hak_option_t;

#endif /* HAK_TYPES_H */
