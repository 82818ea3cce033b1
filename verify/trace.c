/* Traces: parsing, printing and the executor (see trace.h). */
#include "verify/trace.h"

#include <errno.h>
#include <stdatomic.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "src/hakmem.h"
#include "verify/shadow_heap.h"

void trace_init(trace_t* t, int threads) {
  memset(t, 0, sizeof(*t));
  t->threads = threads < 1 ? 1 : threads > 8 ? 8 : threads;
}

void trace_free(trace_t* t) {
  if (t->ops) munmap(t->ops, t->cap * sizeof(trace_op_t));
  t->ops = NULL;
  t->n = t->cap = 0;
}

void trace_push(trace_t* t, trace_op_t op) {
  if (t->n == t->cap) {
    size_t cap = t->cap ? t->cap * 2 : 4096;
    trace_op_t* ops = mmap(NULL, cap * sizeof(trace_op_t), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ops == MAP_FAILED) abort();
    if (t->ops) {
      memcpy(ops, t->ops, t->n * sizeof(trace_op_t));
      munmap(t->ops, t->cap * sizeof(trace_op_t));
    }
    t->ops = ops;
    t->cap = cap;
  }
  t->ops[t->n++] = op;
}

static const char* const names[] = {"alloc", "calloc", "memalign", "realloc", "free", "round", "check"};

void trace_print(const trace_t* t, FILE* f) {
  fprintf(f, "hakmem-trace 1\nthreads %d\n", t->threads);
  for (size_t i = 0; i < t->n; i++) {
    const trace_op_t* o = &t->ops[i];
    switch (o->kind) {
      case OP_ROUND: fprintf(f, "round\n"); break;
      case OP_CHECK: fprintf(f, "check\n"); break;
      case OP_FREE: fprintf(f, "t%d free %u\n", o->thread, o->id); break;
      case OP_ALLOC:
      case OP_REALLOC: fprintf(f, "t%d %s %u %zu\n", o->thread, names[o->kind], o->id, o->a); break;
      default: fprintf(f, "t%d %s %u %zu %zu\n", o->thread, names[o->kind], o->id, o->a, o->b); break;
    }
  }
}

bool trace_parse(trace_t* t, FILE* f) {
  char line[256];
  int lineno = 0;
  trace_init(t, 1);
  while (fgets(line, sizeof(line), f)) {
    lineno++;
    char* hash = strchr(line, '#');
    if (hash) *hash = 0;
    char word[32];
    int th, n;
    unsigned id;
    size_t a = 0, b = 0;
    if (sscanf(line, " %31s", word) != 1) continue;
    if (strcmp(word, "hakmem-trace") == 0) continue;
    if (sscanf(line, " threads %d", &th) == 1) {
      t->threads = th < 1 ? 1 : th > 8 ? 8 : th;
      continue;
    }
    if (strcmp(word, "round") == 0) {
      trace_push(t, (trace_op_t){.kind = OP_ROUND});
      continue;
    }
    if (strcmp(word, "check") == 0) {
      trace_push(t, (trace_op_t){.kind = OP_CHECK});
      continue;
    }
    if (sscanf(line, " t%d %31s %u %zu %zu%n", &th, word, &id, &a, &b, &n) >= 3 && th >= 0 && th < 8) {
      trace_op_t o = {.thread = (uint8_t)th, .id = id % TRACE_MAX_IDS, .a = a, .b = b};
      int k;
      for (k = 0; k < 5 && strcmp(word, names[k]) != 0; k++) {
      }
      if (k < 5) {
        o.kind = (trace_kind_t)k;
        trace_push(t, o);
        continue;
      }
    }
    fprintf(stderr, "trace: line %d: cannot parse: %s", lineno, line);
    return false;
  }
  return true;
}

/* ---- the executor -------------------------------------------------------- */
typedef struct {
  const trace_t* t;
  shadow_heap_t* shadow;
  size_t begin, end; /* the round's ops */
  int thread;
  bool ok;
} worker_t;

static bool live[TRACE_MAX_IDS];      /* distinct ids: distinct bytes, no race */
static int8_t owner[TRACE_MAX_IDS];   /* the one thread using an id this round */
/* Bytes live at once are bounded (the shadow heap touches every page of a
 * block): a request past the budget is skipped, so a NULL for a request
 * that fits is a violation, never the machine running out of memory. */
#define TRACE_LIVE_BUDGET ((size_t)256 << 20)
static _Atomic(size_t) live_bytes;

static bool budget_take(size_t size) {
  size_t now = atomic_load(&live_bytes);
  do
    if (size > TRACE_LIVE_BUDGET || now + size > TRACE_LIVE_BUDGET) return false;
  while (!atomic_compare_exchange_weak(&live_bytes, &now, now + size));
  return true;
}
static void budget_give(size_t size) { atomic_fetch_sub(&live_bytes, size); }

static bool null_for_possible(const char* what, size_t a, size_t b) {
  fprintf(stderr, "trace: %s(%zu, %zu) returned NULL for a possible request (errno %d)\n", what, a, b, errno);
  return false;
}

static bool run_op(shadow_heap_t* s, const trace_op_t* o) {
  uint32_t id = o->id;
  switch (o->kind) {
    case OP_ALLOC:
    case OP_CALLOC:
    case OP_MEMALIGN: {
      if (live[id]) return true; /* skipped */
      void* p;
      size_t size = o->kind == OP_ALLOC ? o->a : o->b;
      size_t align = 0;
      bool impossible = false;
      size_t charge = o->kind == OP_CALLOC ? (o->b != 0 && o->a > SIZE_MAX / o->b ? 0 : o->a * o->b) : size;
      if (charge > PTRDIFF_MAX) charge = 0; /* impossible: refused below, nothing live */
      if (!budget_take(charge)) return true; /* skipped: past the live budget */
      if (o->kind == OP_ALLOC) {
        p = hak_malloc(size);
        impossible = size > PTRDIFF_MAX;
      } else if (o->kind == OP_CALLOC) {
        p = hak_calloc(o->a, o->b);
        size = o->a * o->b;
        impossible = o->b != 0 && o->a > SIZE_MAX / o->b;
        if (!impossible && size > PTRDIFF_MAX) impossible = true;
      } else {
        align = o->a;
        p = hak_aligned_alloc(align, size);
        impossible = align == 0 || (align & (align - 1)) != 0 || align > ((size_t)1 << 30) || size > PTRDIFF_MAX;
      }
      if (impossible) {
        budget_give(charge);
        if (p != NULL) {
          fprintf(stderr, "trace: impossible request (%zu, %zu) returned %p\n", o->a, o->b, p);
          return false;
        }
        return true;
      }
      if (p == NULL) {
        budget_give(charge);
        return null_for_possible(o->kind == OP_ALLOC ? "malloc" : o->kind == OP_CALLOC ? "calloc" : "aligned_alloc",
                                 o->a, o->b);
      }
      bool ok = shadow_on_alloc(s, id, p, size, align, o->kind == OP_CALLOC, false);
      live[id] = true;
      return ok;
    }
    case OP_REALLOC: {
      if (o->a > PTRDIFF_MAX) return true;
      if (!live[id]) { /* realloc(NULL, n) allocates */
        if (!budget_take(o->a)) return true;
        void* p = hak_realloc(NULL, o->a);
        if (p == NULL) {
          budget_give(o->a);
          return null_for_possible("realloc", 0, o->a);
        }
        live[id] = true;
        return shadow_on_alloc(s, id, p, o->a, 0, false, false);
      }
      if (o->a == 0) { /* realloc(p, 0) frees and returns NULL (glibc) */
        size_t old_size = 0;
        shadow_lookup(s, id, &old_size);
        void* p = shadow_on_free(s, id);
        void* q = hak_realloc(p, 0);
        live[id] = false;
        budget_give(old_size);
        if (q != NULL) {
          fprintf(stderr, "trace: realloc(%p, 0) returned %p, not NULL\n", p, q);
          return false;
        }
        return shadow_ok(s);
      }
      void* old;
      size_t old_size;
      shadow_lookup(s, id, &old_size);
      if (o->a > old_size && !budget_take(o->a - old_size)) return true;
      if (!shadow_before_realloc(s, id, &old, &old_size)) return false;
      void* q = hak_realloc(old, o->a);
      if (q == NULL) {
        if (o->a > old_size) budget_give(o->a - old_size);
        shadow_after_realloc(s, id, old, old_size, q, o->a);
        return null_for_possible("realloc", old_size, o->a);
      }
      if (o->a < old_size) budget_give(old_size - o->a);
      return shadow_after_realloc(s, id, old, old_size, q, o->a);
    }
    case OP_FREE: {
      if (!live[id]) return true;
      size_t old_size = 0;
      shadow_lookup(s, id, &old_size);
      void* p = shadow_on_free(s, id);
      hak_free(p);
      live[id] = false;
      budget_give(old_size);
      return shadow_ok(s);
    }
    default: return true;
  }
}

static void run_round(worker_t* w) {
  for (size_t i = w->begin; i < w->end && w->ok; i++)
    if (owner[w->t->ops[i].id] == w->thread) w->ok = run_op(w->shadow, &w->t->ops[i]);
}

/* Multithreaded traces run on workers that live for the whole trace: every
 * round starts at one barrier, so the threads' operations really overlap
 * (threads created per round would mostly run one after another), and ends
 * at another, where the main thread (worker 0) checks the heap. */
typedef struct {
  pthread_barrier_t start, end;
  worker_t w[8];
  bool done;
} pool_t;

typedef struct {
  pool_t* pool;
  int k;
} pool_arg_t;

static void* pool_worker(void* arg) {
  pool_arg_t* a = arg;
  for (;;) {
    pthread_barrier_wait(&a->pool->start);
    if (a->pool->done) return NULL;
    run_round(&a->pool->w[a->k]);
    pthread_barrier_wait(&a->pool->end);
  }
}
static size_t blocks_size(const void* p) { return hak_usable_size(p); }

bool trace_run(const trace_t* t, uint64_t seed) {
  shadow_heap_t* s = shadow_create(seed, blocks_size);
  if (s == NULL) return false;
  hak_stats_t st0;
  hak_stats_get(&st0);
  memset(live, 0, sizeof(live));
  atomic_store(&live_bytes, 0);
  int threads = t->threads < 1 ? 1 : t->threads > 8 ? 8 : t->threads;
  pool_t pool = {.done = false};
  pthread_t th[8];
  pool_arg_t args[8];
  if (threads > 1) {
    pthread_barrier_init(&pool.start, NULL, (unsigned)threads);
    pthread_barrier_init(&pool.end, NULL, (unsigned)threads);
    for (int k = 1; k < threads; k++) {
      args[k] = (pool_arg_t){&pool, k};
      if (pthread_create(&th[k], NULL, pool_worker, &args[k]) != 0) abort();
    }
  }
  bool ok = true;
  size_t i = 0;
  while (i < t->n && ok) {
    size_t end = i;
    while (end < t->n && t->ops[end].kind != OP_ROUND && t->ops[end].kind != OP_CHECK) end++;
    /* an id is used by one thread per round: the thread of its first op in
     * the round (a hand-written trace may name others) */
    memset(owner, -1, sizeof(owner));
    for (size_t k = i; k < end; k++)
      if (owner[t->ops[k].id] < 0) owner[t->ops[k].id] = (int8_t)(t->ops[k].thread % threads);
    for (int k = 0; k < threads; k++) pool.w[k] = (worker_t){t, s, i, end, k, true};
    if (threads > 1) pthread_barrier_wait(&pool.start);
    run_round(&pool.w[0]);
    if (threads > 1) pthread_barrier_wait(&pool.end);
    for (int k = 0; k < threads; k++) ok = ok && pool.w[k].ok;
    if (ok && end < t->n && t->ops[end].kind == OP_CHECK && hak_check_heap() != 0) {
      fprintf(stderr, "trace: hak_check_heap found violations after op %zu\n", end);
      ok = false;
    }
    i = end + 1;
  }
  if (threads > 1) {
    pool.done = true;
    pthread_barrier_wait(&pool.start);
    for (int k = 1; k < threads; k++) pthread_join(th[k], NULL);
    pthread_barrier_destroy(&pool.start);
    pthread_barrier_destroy(&pool.end);
  }
  ok = ok && shadow_check_all(s) && shadow_ok(s);
  for (uint32_t id = 0; id < TRACE_MAX_IDS; id++)
    if (live[id]) {
      hak_free(shadow_on_free(s, id));
      live[id] = false;
    }
  if (ok && hak_check_heap() != 0) {
    fprintf(stderr, "trace: hak_check_heap found violations at the end\n");
    ok = false;
  }
  shadow_destroy(s);
  hak_collect(); /* the next input starts from a clean allocator */
  /* resource oracles from hakmem's own counters: every block served was
   * freed, and once everything is freed and the caches given back, what
   * stays mapped is bounded (the workers exited: their heaps keep nothing;
   * the main heap keeps its last segment; metadata) */
  hak_stats_t st;
  hak_stats_get(&st);
  uint64_t served = (st.served_small + st.served_large + st.served_huge) - (st0.served_small + st0.served_large + st0.served_huge);
  uint64_t freed = (st.freed_small + st.freed_large + st.freed_huge) - (st0.freed_small + st0.freed_large + st0.freed_huge);
  uint64_t bound = 16u << 20; /* two 4 MiB segments and 8 MiB of metadata */
  if (ok && served != freed) {
    fprintf(stderr, "trace: hakmem served %llu blocks and freed %llu\n", (unsigned long long)served, (unsigned long long)freed);
    ok = false;
  }
  if (ok && (st.os_mapped_bytes > bound || st.bigcache_bytes != 0 || st.batch_retained_bytes != 0)) {
    fprintf(stderr, "trace: after hak_collect %llu KiB stay mapped (bound %llu KiB), BigCache %llu, retained %llu\n",
            (unsigned long long)(st.os_mapped_bytes >> 10), (unsigned long long)(bound >> 10),
            (unsigned long long)st.bigcache_bytes, (unsigned long long)st.batch_retained_bytes);
    ok = false;
  }
  return ok;
}

void trace_dump_if_asked(const trace_t* t) {
  const char* path = getenv("HAKMEM_TRACE_OUT");
  if (path == NULL || *path == 0) return;
  FILE* f = fopen(path, "w");
  if (f == NULL) {
    fprintf(stderr, "trace: cannot write %s: %s\n", path, strerror(errno));
    return;
  }
  trace_print(t, f);
  fclose(f);
}
