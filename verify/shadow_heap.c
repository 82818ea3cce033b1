/* The shadow heap (see shadow_heap.h).  Its memory comes from mmap, never
 * from the allocator under test: an id -> block hash table and an array of
 * live blocks sorted by address (binary search finds the neighbours for
 * the overlap check; insertion and removal move the tail, fine for the
 * tens of thousands of live blocks fuzzers and stress programs keep).
 * Contents: blocks up to 64 KiB are filled and checked whole; larger ones
 * in their first and last 4 KiB and one byte in every 4 KiB page. */
#include "verify/shadow_heap.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#define TABLE_BITS 16 /* 65,536 ids, 32,768 live blocks */
#define TABLE_SIZE ((size_t)1 << TABLE_BITS)
#define LIVE_MAX (TABLE_SIZE / 2)
#define FULL_CHECK (64 * 1024)

typedef struct {
  uint64_t id; /* 0 = empty slot; ids are stored + 1 */
  uintptr_t addr;
  size_t size, align;
  uint64_t op; /* operation that created it */
} entry_t;

typedef struct {
  uintptr_t addr, end;
  uint64_t id;
} range_t;

struct shadow_heap {
  pthread_mutex_t lock;
  uint64_t seed, ops;
  bool failed;
  size_t (*usable)(const void*);
  entry_t* table;
  range_t* sorted;
  size_t live;
};

static void* map(size_t bytes) {
  void* p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

shadow_heap_t* shadow_create(uint64_t seed, size_t (*usable)(const void*)) {
  shadow_heap_t* s = map(sizeof(*s));
  if (s == NULL) return NULL;
  pthread_mutex_init(&s->lock, NULL);
  s->seed = seed;
  s->usable = usable;
  s->table = map(TABLE_SIZE * sizeof(entry_t));
  s->sorted = map(LIVE_MAX * sizeof(range_t));
  if (s->table == NULL || s->sorted == NULL) return NULL;
  return s;
}

void shadow_destroy(shadow_heap_t* s) {
  munmap(s->table, TABLE_SIZE * sizeof(entry_t));
  munmap(s->sorted, LIVE_MAX * sizeof(range_t));
  munmap(s, sizeof(*s));
}

static uint8_t pattern(const shadow_heap_t* s, uint64_t id, size_t i) {
  uint64_t x = (s->seed ^ (id * 0x9e3779b97f4a7c15ULL)) + i * 0x100000001b3ULL;
  x ^= x >> 29;
  return (uint8_t)(x * 0xbf58476d1ce4e5b9ULL >> 56);
}

/* Offsets a check or fill visits: all, or head, tail and one per page. */
#define FOR_OFFSETS(size, i)                                                             \
  for (size_t i = 0, _step; i < (size); i += _step)                                      \
    if ((_step = ((size) <= FULL_CHECK || i < 4096 || i + 4096 >= (size)) ? 1 : 4096), 1)

static void fill(const shadow_heap_t* s, uint64_t id, uint8_t* p, size_t size) {
  FOR_OFFSETS(size, i) p[i] = pattern(s, id, i);
}

/* First offset below limit, among those a fill of `size` bytes wrote, that
 * lost its pattern. */
static size_t first_bad_upto(const shadow_heap_t* s, uint64_t id, const uint8_t* p, size_t size, size_t limit) {
  FOR_OFFSETS(size, i) if (i < limit && p[i] != pattern(s, id, i)) return i;
  return SIZE_MAX;
}

static size_t first_bad(const shadow_heap_t* s, uint64_t id, const uint8_t* p, size_t size) {
  return first_bad_upto(s, id, p, size, size);
}

static bool fail(shadow_heap_t* s, const char* what, const entry_t* a, const entry_t* b, size_t detail) {
  if (!s->failed) {
    fprintf(stderr, "shadow heap: op %llu: %s", (unsigned long long)s->ops, what);
    if (a) fprintf(stderr, "; block id %llu at %p size %zu align %zu (op %llu)", (unsigned long long)a->id - 1,
                   (void*)a->addr, a->size, a->align, (unsigned long long)a->op);
    if (b) fprintf(stderr, "; other block id %llu at %p size %zu (op %llu)", (unsigned long long)b->id - 1,
                   (void*)b->addr, b->size, (unsigned long long)b->op);
    if (detail != SIZE_MAX) fprintf(stderr, "; at byte %zu", detail);
    fprintf(stderr, "\n");
  }
  s->failed = true;
  return false;
}

static entry_t* slot(shadow_heap_t* s, uint64_t id, bool insert) {
  uint64_t key = id + 1;
  size_t h = (size_t)((key * 0x9e3779b97f4a7c15ULL) >> (64 - TABLE_BITS));
  for (size_t i = 0; i < TABLE_SIZE; i++) {
    entry_t* e = &s->table[(h + i) & (TABLE_SIZE - 1)];
    if (e->id == key) return e;
    if (e->id == 0) return insert ? e : NULL;
  }
  return NULL;
}

/* Removes e keeping the probe chains intact (backward-shift deletion). */
static void slot_remove(shadow_heap_t* s, entry_t* e) {
  size_t i = (size_t)(e - s->table);
  for (;;) {
    s->table[i].id = 0;
    size_t j = i;
    for (;;) {
      j = (j + 1) & (TABLE_SIZE - 1);
      if (s->table[j].id == 0) return;
      size_t h = (size_t)((s->table[j].id * 0x9e3779b97f4a7c15ULL) >> (64 - TABLE_BITS));
      /* can the entry at j move to i? only if its home is not in (i, j] */
      if ((j > i && (h <= i || h > j)) || (j < i && (h <= i && h > j))) break;
    }
    s->table[i] = s->table[j];
    i = j;
  }
}

/* Index of the first live range with addr >= a. */
static size_t lower(const shadow_heap_t* s, uintptr_t a) {
  size_t lo = 0, hi = s->live;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (s->sorted[mid].addr < a) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/* A block occupies its usable size (a program may use all of it), so an
 * overstated usable size shows up as an overlap with a neighbour. */
static bool sorted_insert(shadow_heap_t* s, entry_t* e) {
  size_t extent = s->usable ? s->usable((void*)e->addr) : e->size;
  if (extent < e->size) extent = e->size;
  uintptr_t end = e->addr + (extent ? extent : 1);
  size_t i = lower(s, e->addr);
  if (i < s->live && s->sorted[i].addr < end) return fail(s, "new block overlaps a live block", e, slot(s, s->sorted[i].id, false), SIZE_MAX);
  if (i > 0 && s->sorted[i - 1].end > e->addr) return fail(s, "new block overlaps a live block", e, slot(s, s->sorted[i - 1].id, false), SIZE_MAX);
  if (s->live == LIVE_MAX) return fail(s, "too many live blocks for the shadow heap", e, NULL, SIZE_MAX);
  memmove(&s->sorted[i + 1], &s->sorted[i], (s->live - i) * sizeof(range_t));
  s->sorted[i] = (range_t){e->addr, end, e->id - 1};
  s->live++;
  return true;
}

static void sorted_remove(shadow_heap_t* s, uintptr_t addr) {
  size_t i = lower(s, addr);
  if (i < s->live && s->sorted[i].addr == addr) {
    memmove(&s->sorted[i], &s->sorted[i + 1], (s->live - i - 1) * sizeof(range_t));
    s->live--;
  }
}

/* Records p for id and checks it; caller holds the lock. */
static bool record(shadow_heap_t* s, uint64_t id, void* p, size_t size, size_t align, bool zeroed) {
  entry_t probe = {id + 1, (uintptr_t)p, size, align, s->ops};
  if (align == 0) align = 16;
  if ((uintptr_t)p % align != 0) return fail(s, "block not aligned as asked", &probe, NULL, SIZE_MAX);
  if (s->usable && s->usable(p) < size) return fail(s, "usable size smaller than the size asked", &probe, NULL, s->usable(p));
  if (zeroed)
    FOR_OFFSETS(size, i) if (((uint8_t*)p)[i] != 0) return fail(s, "calloc block not zero", &probe, NULL, i);
  entry_t* e = slot(s, id, true);
  if (e == NULL) return fail(s, "shadow table full", &probe, NULL, SIZE_MAX);
  if (e->id != 0) return fail(s, "id already live (harness error)", &probe, e, SIZE_MAX);
  *e = probe;
  if (!sorted_insert(s, e)) return false;
  fill(s, id, p, size);
  return true;
}

bool shadow_on_alloc(shadow_heap_t* s, uint64_t id, void* p, size_t size, size_t align, bool zeroed,
                     bool allowed_null) {
  pthread_mutex_lock(&s->lock);
  s->ops++;
  bool ok = true;
  if (p == NULL) {
    entry_t probe = {id + 1, 0, size, align, s->ops};
    if (!allowed_null) ok = fail(s, "allocation returned NULL", &probe, NULL, SIZE_MAX);
  } else {
    ok = record(s, id, p, size, align, zeroed);
  }
  pthread_mutex_unlock(&s->lock);
  return ok && !s->failed;
}

/* Checks and forgets id; caller holds the lock. */
static void* forget(shadow_heap_t* s, uint64_t id, size_t* size) {
  entry_t* e = slot(s, id, false);
  if (e == NULL) return NULL;
  size_t bad = first_bad(s, id, (uint8_t*)e->addr, e->size);
  if (bad != SIZE_MAX) fail(s, "block contents changed while it was live", e, NULL, bad);
  void* p = (void*)e->addr;
  if (size) *size = e->size;
  sorted_remove(s, e->addr);
  slot_remove(s, e);
  return p;
}

void* shadow_on_free(shadow_heap_t* s, uint64_t id) {
  pthread_mutex_lock(&s->lock);
  s->ops++;
  void* p = forget(s, id, NULL);
  pthread_mutex_unlock(&s->lock);
  return p;
}

void* shadow_lookup(shadow_heap_t* s, uint64_t id, size_t* size) {
  pthread_mutex_lock(&s->lock);
  entry_t* e = slot(s, id, false);
  void* p = e ? (void*)e->addr : NULL;
  if (e && size) *size = e->size;
  pthread_mutex_unlock(&s->lock);
  return p;
}

bool shadow_before_realloc(shadow_heap_t* s, uint64_t id, void** old_p, size_t* old_size) {
  pthread_mutex_lock(&s->lock);
  s->ops++;
  *old_p = forget(s, id, old_size);
  pthread_mutex_unlock(&s->lock);
  return *old_p != NULL && !s->failed;
}

bool shadow_after_realloc(shadow_heap_t* s, uint64_t id, void* old_p, size_t old_size, void* q, size_t new_size) {
  pthread_mutex_lock(&s->lock);
  bool ok;
  if (q == NULL) { /* failed: the old block must still hold its contents */
    size_t bad = first_bad(s, id, old_p, old_size);
    entry_t probe = {id + 1, (uintptr_t)old_p, old_size, 0, s->ops};
    ok = bad == SIZE_MAX ? record(s, id, old_p, old_size, 0, false)
                         : fail(s, "failed realloc changed the block", &probe, NULL, bad);
  } else {
    size_t keep = old_size < new_size ? old_size : new_size;
    size_t bad = first_bad_upto(s, id, q, old_size, keep);
    entry_t probe = {id + 1, (uintptr_t)q, new_size, 0, s->ops};
    ok = bad == SIZE_MAX ? true : fail(s, "realloc lost the block's prefix", &probe, NULL, bad);
    ok = record(s, id, q, new_size, 0, false) && ok;
  }
  pthread_mutex_unlock(&s->lock);
  return ok && !s->failed;
}

bool shadow_ok(const shadow_heap_t* s) { return !s->failed; }
uint64_t shadow_ops(const shadow_heap_t* s) { return s->ops; }
size_t shadow_live(shadow_heap_t* s) { return s->live; }

bool shadow_check_all(shadow_heap_t* s) {
  pthread_mutex_lock(&s->lock);
  for (size_t i = 0; i < s->live; i++) {
    entry_t* e = slot(s, s->sorted[i].id, false);
    if (e == NULL) {
      fail(s, "sorted live block missing from the table (shadow heap bug)", NULL, NULL, i);
      break;
    }
    size_t bad = first_bad(s, e->id - 1, (uint8_t*)e->addr, e->size);
    if (bad != SIZE_MAX) fail(s, "block contents changed while it was live", e, NULL, bad);
  }
  pthread_mutex_unlock(&s->lock);
  return !s->failed;
}
