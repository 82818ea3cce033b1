/* The invariant checker: silent on a healthy heap after real work, and on
 * each kind of violation it knows, planted by hand (then undone), it
 * reports that kind first. */
#include <pthread.h>
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#include "src/hakmem.h"
#include "src/internal.h"
#include "src/test/test.h"

/* Level 0 only: it plants faults in BigCache slots, off at level 2. */
HAK_TEST_AT_LEVEL_0_ONLY()


static char* blocks[4096];

static void work(void) {
  uint64_t rng = 7;
  for (int i = 0; i < 4096; i++) blocks[i] = hak_malloc(hak_test_rand(&rng) % 3000);
  for (int i = 0; i < 4096; i += 3) {
    hak_free(blocks[i]);
    blocks[i] = NULL;
  }
  char* big[3] = {hak_malloc(300 << 10), hak_malloc(3 << 20), hak_malloc(1 << 20)};
  hak_free(big[1]);
  hak_free(big[0]);
  (void)big;
}

TEST(healthy_heap_has_no_violation) {
  work();
  EXPECT_EQ_U(hak_check_heap(), 0);
}

/* Plants a violation, expects the checker to report `kind` first, undoes
 * it and expects silence again. */
#define PLANT(kind, plant, undo)                                                        \
  do {                                                                                  \
    plant;                                                                              \
    size_t _bad = hak_check_heap();                                                     \
    const char* _first = _hak_check_first();                                            \
    if (_bad == 0 || _first == NULL || strstr(_first, kind) == NULL)                    \
      HAK_FAIL_AT("planted \"%s\": %zu violations, first \"%s\"", kind, _bad, _first ? _first : "(none)"); \
    undo;                                                                               \
    EXPECT_EQ_U(hak_check_heap(), 0);                                                   \
  } while (0)

/* A live small block's page with free blocks. */
static hak_page_t* some_page(char** out) {
  for (int i = 0; i < 4096; i++)
    if (blocks[i] != NULL && hak_map_is_segment(hak_segmap_get((uintptr_t)blocks[i]))) { /* SECURE: HAK_MAP_SECURE */
      hak_page_t* p = hak_page_of(blocks[i]);
      if (p->kind == HAK_SLICE_SMALL && p->free != NULL && hak_block_next(p->free) != NULL) {
        *out = blocks[i];
        return p;
      }
    }
  return NULL;
}

TEST(page_counts) {
  char* b;
  hak_page_t* page = some_page(&b);
  ASSERT_NOT_NULL(page);
  PLANT("used + |free| != capacity", page->used++, page->used--);
  PLANT("capacity > reserved", page->capacity += page->reserved, page->capacity -= page->reserved);
  uint32_t carved = atomic_load(&page->carved);
  PLANT("carved != capacity * block_size", atomic_store(&page->carved, carved + 16), atomic_store(&page->carved, carved));
  PLANT("block size of bin", (page->block_size += 16, atomic_store(&page->carved, page->capacity * page->block_size)),
        (page->block_size -= 16, atomic_store(&page->carved, carved)));
}

TEST(free_lists) {
  char* b;
  hak_page_t* page = some_page(&b);
  ASSERT_NOT_NULL(page);
  hak_block_t* first = page->free;
  hak_block_t* saved = hak_block_next(first);
  PLANT("free list longer than capacity", hak_block_set_next(first, first), hak_block_set_next(first, saved));
  PLANT("not a block of its page", page->free = (hak_block_t*)((char*)first + 8), page->free = first);
  uintptr_t tag = atomic_load(&first->tag);
  PLANT("without the freed tag", atomic_store(&first->tag, 0), atomic_store(&first->tag, tag));
  /* a freed block on no list: lost */
  PLANT("freed blocks missing from the free lists", (page->free = saved, page->used++), (page->free = first, page->used--));
}

TEST(remote_lists) {
  char* b;
  hak_page_t* page = some_page(&b);
  ASSERT_NOT_NULL(page);
  hak_heap_t* heap = page->heap;
  hak_block_t* blk = (hak_block_t*)b; /* live: pretend another thread freed it */
  uintptr_t tf = atomic_load(&page->thread_free);
  hak_block_set_next(blk, NULL);
  /* more remote frees than blocks in use: two, when used is one */
  uint32_t used = page->used;
  hak_block_t* other = page->free;
  uintptr_t other_tag = atomic_load(&other->tag);
  PLANT("more remote frees than used",
        (page->used = 1, atomic_store(&blk->tag, hak_freed_tag(blk) ^ HAK_TAG_REMOTE), hak_block_set_next(blk, NULL),
         atomic_store(&other->tag, hak_freed_tag(other) ^ HAK_TAG_REMOTE),
         page->free = hak_block_next(other), hak_block_set_next(other, blk), atomic_store(&page->thread_free, (uintptr_t)other | tf)),
        (page->used = used, atomic_store(&blk->tag, 0), atomic_store(&other->tag, other_tag),
         hak_block_set_next(other, page->free), page->free = other, atomic_store(&page->thread_free, tf)));
  /* a block on the remote list that its owner also freed (a race) */
  PLANT("block on a remote list without the remote freed tag",
        (page->used = used, atomic_store(&blk->tag, hak_freed_tag(blk)), hak_block_set_next(blk, NULL),
         atomic_store(&page->thread_free, (uintptr_t)blk | tf)),
        (atomic_store(&blk->tag, 0), atomic_store(&page->thread_free, tf)));
  PLANT("full flag of thread_free disagrees", atomic_store(&page->thread_free, tf | HAK_TF_FULL),
        atomic_store(&page->thread_free, tf));
  (void)heap;
}

/* A page moved to the full list with a remote free on its own list, where
 * nobody looks (they belong on the heap's delayed list); and a delayed list
 * holding a block without the remote tag. */
TEST(remote_free_without_notification) {
  char* b;
  hak_page_t* page = some_page(&b);
  ASSERT_NOT_NULL(page);
  hak_heap_t* heap = page->heap;
  hak_page_queue_t* q = &heap->bins[page->bin];
  hak_block_t* blk = (hak_block_t*)b;
  uintptr_t tf = atomic_load(&page->thread_free);
  hak_page_t* direct = heap->direct[page->bin];
  /* move to full by hand: unlink from the bin queue, push on full */
#define UNLINK(q, p)                                \
  do {                                              \
    if ((p)->prev) (p)->prev->next = (p)->next;     \
    else (q)->first = (p)->next;                    \
    if ((p)->next) (p)->next->prev = (p)->prev;     \
    else (q)->last = (p)->prev;                     \
    (p)->next = (p)->prev = NULL;                   \
  } while (0)
#define PUSH(q, p)                                  \
  do {                                              \
    (p)->next = (q)->first;                         \
    if ((q)->first) (q)->first->prev = (p);         \
    else (q)->last = (p);                           \
    (q)->first = (p);                               \
  } while (0)
  UNLINK(q, page);
  PUSH(&heap->full, page);
  page->in_full = 1;
  if (direct == page) heap->direct[page->bin] = &_hak_page_empty;
  atomic_store(&blk->tag, hak_freed_tag(blk) ^ HAK_TAG_REMOTE);
  hak_block_set_next(blk, NULL);
  uintptr_t remote_tag = hak_freed_tag(blk) ^ HAK_TAG_REMOTE;
  atomic_store(&blk->tag, 0);
  atomic_store(&page->thread_free, tf | HAK_TF_FULL); /* blk: a live block */
  EXPECT_EQ_U(hak_check_heap(), 0);
  PLANT("full page with remote frees on its own list",
        (atomic_store(&blk->tag, remote_tag), hak_block_set_next(blk, NULL), atomic_store(&page->thread_free, (uintptr_t)blk | HAK_TF_FULL)),
        (atomic_store(&blk->tag, 0), atomic_store(&page->thread_free, tf | HAK_TF_FULL)));
  PLANT("block on the delayed list without the remote freed tag",
        (hak_block_set_next(blk, NULL), atomic_store(&heap->delayed, blk)), atomic_store(&heap->delayed, NULL));
  PLANT("delayed list links a pointer that is not a block of the heap",
        (atomic_store(&blk->tag, remote_tag), hak_block_set_next(blk, (hak_block_t*)((char*)blk + 8)), atomic_store(&heap->delayed, blk)),
        (atomic_store(&blk->tag, 0), hak_block_set_next(blk, NULL), atomic_store(&heap->delayed, NULL)));
  atomic_store(&page->thread_free, tf);
  atomic_store(&blk->tag, 0);
  UNLINK(&heap->full, page);
  PUSH(q, page);
  page->in_full = 0;
  heap->direct[page->bin] = direct;
  EXPECT_EQ_U(hak_check_heap(), 0);
}

TEST(segments_and_queues) {
  char* b;
  hak_page_t* page = some_page(&b);
  ASSERT_NOT_NULL(page);
  hak_segment_t* seg = hak_segment_of(b);
  hak_heap_t* heap = page->heap;
  uint64_t mask = seg->free_mask;
  PLANT("free_mask disagrees with slice kind", (seg->free_mask ^= (uint64_t)1 << page->slice_index, seg->used_slices--),
        (seg->free_mask = mask, seg->used_slices++));
  PLANT("slice 0 marked free", seg->free_mask |= 1, seg->free_mask = mask);
  uint64_t dirty = seg->dirty_mask;
  PLANT("purge masks", seg->dirty_mask |= (uint64_t)1 << page->slice_index, seg->dirty_mask = dirty);
  PLANT("used_slices disagrees", seg->used_slices++, seg->used_slices--);
  PLANT("segment_count", heap->segment_count++, heap->segment_count--);
  PLANT("wrong run index list", seg->max_run ^= 1, seg->max_run ^= 1);
  uint64_t run_mask = heap->run_mask;
  PLANT("run index mask disagrees", heap->run_mask ^= (uint64_t)1 << 63 >> (seg->max_run == 0), heap->run_mask = run_mask);
  uint64_t magic = seg->magic;
  PLANT("segment magic", seg->magic = 1, seg->magic = magic);
  int other = page->bin == 0 ? 1 : 0;
  hak_page_t* saved = heap->direct[other];
  PLANT("direct page of another bin or heap", heap->direct[other] = page, heap->direct[other] = saved);
  hak_page_t* prev = page->prev;
  PLANT("page queue back link", page->prev = page, page->prev = prev);
  PLANT("page on the wrong queue", page->in_full = 1, page->in_full = 0);
}

/* The segment cache: a cached segment is owned by nobody, empty, its
 * masks consistent, and counted. */
TEST(segment_cache) {
  enum { N = 3 * 4096 };
  static char* many[N];
  char* keep = hak_malloc(100);
  for (int i = 0; i < N; i++) many[i] = hak_malloc(1000); /* about 3 segments */
  hak_segment_t* segs[8];
  int nsegs = 0;
  for (int i = 0; i < N && nsegs < 8; i++)
    if (nsegs == 0 || segs[nsegs - 1] != hak_segment_of(many[i])) segs[nsegs++] = hak_segment_of(many[i]);
  for (int i = N - 1; i >= 0; i--) hak_free(many[i]);
  hak_segment_t* seg = NULL; /* one that emptied while the heap had others: cached, still mapped */
  for (int i = 0; i < nsegs && seg == NULL; i++)
    if (hak_map_is_segment(hak_segmap_get((uintptr_t)hak_segment_base(segs[i]))) && segs[i]->heap == NULL) seg = segs[i];
  ASSERT_NOT_NULL(seg);
  EXPECT_EQ_U(hak_check_heap(), 0);
  PLANT("segment cache", seg->dirty_mask |= 1, seg->dirty_mask &= ~(uint64_t)1); /* slice 0 is never free */
  PLANT("segment cache", seg->heap = _hak_heap_tls, seg->heap = NULL);
  PLANT("segment cache", seg->free_mask ^= 4, seg->free_mask ^= 4);
  hak_free(keep);
  hak_collect();
  EXPECT_EQ_U(hak_check_heap(), 0);
}

/* An exited thread's heap: remote frees with no reclaim requested, and an
 * empty page kept. */
static char* exited_block;
static void* exiting_thread(void* arg) {
  exited_block = hak_malloc(100);
  (void)hak_malloc(100); /* keeps the page live after exited_block is freed */
  return NULL;
}
TEST(exited_threads_heap) {
  pthread_t t;
  pthread_create(&t, NULL, exiting_thread, NULL);
  pthread_join(t, NULL);
  EXPECT_EQ_U(hak_check_heap(), 0);
  hak_free(exited_block); /* a remote free: a reclaim is requested */
  EXPECT_TRUE(atomic_load(&_hak_heaps_dirty));
  EXPECT_EQ_U(hak_check_heap(), 0);
  PLANT("remote frees into an exited thread's heap and no reclaim requested",
        atomic_store(&_hak_heaps_dirty, false), atomic_store(&_hak_heaps_dirty, true));
  hak_collect();
  EXPECT_EQ_U(hak_check_heap(), 0);
}

/* A segment-aligned address where nothing is mapped (a fixed one is not:
 * TSan and MSan reserve large ranges PROT_NONE). */
static uintptr_t unmapped_chunk(void) {
  void* r = mmap(NULL, 2 * HAK_SEGMENT_SIZE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (r == MAP_FAILED) abort();
  munmap(r, 2 * HAK_SEGMENT_SIZE);
  return ((uintptr_t)r + HAK_SEGMENT_MASK) & ~(uintptr_t)HAK_SEGMENT_MASK;
}

TEST(segment_map) {
  hak_segment_t* seg = hak_segment_of(blocks[1]);
  uintptr_t base = (uintptr_t)hak_segment_base(seg);
  PLANT("segment not in the segment map", _hak_segmap_clear(base, HAK_SEGMENT_SIZE),
        _hak_segmap_set(base, HAK_SEGMENT_SIZE, false));
  /* a chunk registered for a segment that does not exist */
  uintptr_t nowhere = unmapped_chunk();
  PLANT("registered segments != owned + cached", _hak_segmap_set(nowhere, HAK_SEGMENT_SIZE, false),
        _hak_segmap_clear(nowhere, HAK_SEGMENT_SIZE));
  PLANT("registered huge mappings", _hak_segmap_set(nowhere, HAK_SEGMENT_SIZE, true),
        _hak_segmap_clear(nowhere, HAK_SEGMENT_SIZE));
  /* ... and over memory mapped PROT_NONE, as a fixed address is under
   * TSan and MSan (their reserved ranges): the checker read the segment's
   * magic there and crashed (the first sanitizer night) */
  void* r = mmap(NULL, 2 * HAK_SEGMENT_SIZE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  ASSERT_TRUE(r != MAP_FAILED);
  uintptr_t none = ((uintptr_t)r + HAK_SEGMENT_MASK) & ~(uintptr_t)HAK_SEGMENT_MASK;
  PLANT("registered segments != owned + cached", _hak_segmap_set(none, HAK_SEGMENT_SIZE, false),
        _hak_segmap_clear(none, HAK_SEGMENT_SIZE));
  PLANT("registered huge mappings", _hak_segmap_set(none, HAK_SEGMENT_SIZE, true),
        _hak_segmap_clear(none, HAK_SEGMENT_SIZE));
  munmap(r, 2 * HAK_SEGMENT_SIZE);
}

/* The same over memory written and then made PROT_NONE (resident: mincore
 * says 1), where process_vm_readv is denied (seccomp, some containers): the
 * checker read it directly then, and crashed (review of the fix above). */
static void deny_process_vm_readv(void) {
  struct sock_filter f[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_process_vm_readv, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {sizeof(f) / sizeof(f[0]), f};
  CHILD_CHECK(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 && prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0);
}
static void resident_protected_registration(void) {
  char* r = mmap(NULL, 2 * HAK_SEGMENT_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  CHILD_CHECK(r != MAP_FAILED);
  uintptr_t none = ((uintptr_t)r + HAK_SEGMENT_MASK) & ~(uintptr_t)HAK_SEGMENT_MASK;
  memset((void*)none, 0, 16384);
  CHILD_CHECK(mprotect((void*)none, HAK_SEGMENT_SIZE, PROT_NONE) == 0);
  CHILD_CHECK(_hak_os_resident((void*)(none + 4096)) == 1);
  deny_process_vm_readv();
  _hak_segmap_set(none, HAK_SEGMENT_SIZE, false);
  CHILD_CHECK(hak_check_heap() > 0); /* diagnosed, not a crash */
}
TEST(protected_registration_without_process_vm_readv) { EXPECT_CHILD_OK(resident_protected_registration, 60); }

TEST(bigcache_and_batch_queue) {
  static int site;
  char* p = hak_alloc_at(3u << 20, &site);
  hak_free_at(p, &site); /* cached */
  hak_huge_t* h = (hak_huge_t*)(p - HAK_HUGE_HEADER);
  EXPECT_EQ_U(hak_check_heap(), 0);
  PLANT("BigCache slots", atomic_store(&h->state, HAK_HUGE_LIVE), atomic_store(&h->state, HAK_HUGE_FREED));
  PLANT("BigCache slots", h->cls ^= 1, h->cls ^= 1);
}

TEST(huge_mappings) {
  static int site;
  char* p = hak_alloc_at(3u << 20, &site); /* 2 MiB into an 8 MiB mapping */
  ASSERT_NOT_NULL(p);
  hak_huge_t* h = (hak_huge_t*)(p - HAK_HUGE_HEADER);
  EXPECT_EQ_U(hak_check_heap(), 0);
  PLANT("live huge header invalid for its mapping", h->size += 4096, h->size -= 4096);
  PLANT("live huge header invalid for its mapping", h->map_size += HAK_SEGMENT_SIZE, h->map_size -= HAK_SEGMENT_SIZE);
  PLANT("live huge headers in the mappings != huge blocks served - freed", atomic_store(&h->state, HAK_HUGE_FREED),
        atomic_store(&h->state, HAK_HUGE_LIVE));
  /* a second live header further into the mapping */
  hak_huge_t* copy = (hak_huge_t*)((char*)h->base + (4u << 20) - HAK_HUGE_HEADER);
  ASSERT_TRUE(h->map_size > (4u << 20));
  PLANT("two live huge headers in one mapping", (memcpy(copy, h, sizeof *h), copy->offset = 4u << 20),
        memset(copy, 0, sizeof *copy));
  /* a registration moved to where nothing is mapped: the counts agree */
  uintptr_t nowhere = unmapped_chunk();
  size_t map_size = h->map_size;
  PLANT("segment map names a mapping that does not exist",
        (_hak_segmap_clear(h->base, map_size), _hak_segmap_set(nowhere, HAK_SEGMENT_SIZE, true)),
        (_hak_segmap_clear(nowhere, HAK_SEGMENT_SIZE), _hak_segmap_set(h->base, map_size, true)));
  hak_free_at(p, &site);
  EXPECT_EQ_U(hak_check_heap(), 0);
}

TEST(site_thresholds) {
  static int site;
  hak_free_at(hak_alloc_at(300u << 10, &site), &site);
  hak_site_t* s = _hak_site_alloc(&site, 300u << 10);
  ASSERT_NOT_NULL(s);
  uint32_t t = atomic_load(&s->threshold);
  PLANT("site threshold that is not a UCB1 arm", atomic_store(&s->threshold, 12345), atomic_store(&s->threshold, t));
}

TEST_MAIN()
