/* Heap corruption: what a memory-safety bug does to the heap, and the
 * diagnosis each hardening level promises (README, "Hardening").  Every
 * case runs in a child; the table `expect` says, per level, whether the
 * child must abort with a given diagnosis (kind, function, address), die on
 * a guard page (SIGSEGV), or finish with the corruption undetected (and, in
 * every case, never hand out a block twice or a pointer that is not a
 * block).  The level is HAKMEM_SECURE of the test's environment (BUILD
 * runs it at 0, 1 and 2).
 *
 * The children do what the bugs do (writes after free, past the end, before
 * the start): undefined behaviour on purpose, so the test is not built
 * with sanitizers, which would report the bug before hakmem could. */
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "src/internal.h"
#include "src/test/test.h"

static int level;

/* What a case must end in at a level (MAYBE: detected or not, by chance). */
typedef enum { UNDETECTED, ABORTS, SEGV, MAYBE } outcome_t;

static void child_says(const char* msg) {
  (void)!write(2, msg, strlen(msg));
  _exit(1);
}

/* The block the diagnosis must name, told to the parent on stderr. */
static void expect_addr(const void* p) {
  char buf[64];
  int n = snprintf(buf, sizeof(buf), "expect (%p)\n", p);
  (void)!write(2, buf, (size_t)n);
}

/* A fault reports its address ("segv at (addr)") and kills the child with
 * SIGSEGV: the parent checks it is the announced guard page. */
static void on_segv(int sig, siginfo_t* si, void* ctx) {
  char buf[64];
  int n = snprintf(buf, sizeof(buf), "segv at (%p)\n", si->si_addr);
  (void)!write(2, buf, (size_t)n);
  signal(SIGSEGV, SIG_DFL);
  raise(SIGSEGV);
}
static void catch_segv(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_sigaction = on_segv;
  sa.sa_flags = SA_SIGINFO;
  sigaction(SIGSEGV, &sa, NULL);
}

/* Two adjacent blocks of one page: y == x + block size; x and y live. */
static void adjacent(size_t n, char** x, char** y) {
  static char* pool[512];
  for (int i = 0; i < 512; i++) pool[i] = hak_malloc(n);
  size_t bs = hak_page_of(pool[0])->block_size;
  for (int i = 0; i < 512; i++)
    for (int j = 0; j < 512; j++)
      if (pool[j] == pool[i] + bs) {
        *x = pool[i];
        *y = pool[j];
        for (int k = 0; k < 512; k++)
          if (k != i && k != j) hak_free(pool[k]);
        return;
      }
  child_says("no two adjacent blocks\n");
}

/* Allocates until `want` is served (or 4096 times; then frees them all and
 * tries again, 4 rounds: under HAKMEM_SECURE a page with few free blocks
 * may be passed over until others empty); a block served twice or a
 * pointer outside every page is a failure of the hardening. */
static void drain_for(size_t n, const void* want) {
  static char* got[4096];
  for (int round = 0; round < 4; round++) {
    int i;
    for (i = 0; i < 4096; i++) {
      got[i] = hak_malloc(n);
      if (got[i] == NULL) child_says("allocation failed\n");
      if (!hak_map_is_segment(hak_segmap_get((uintptr_t)got[i]))) child_says("served a pointer outside the heap\n");
      for (int j = 0; j < i; j++)
        if (got[j] == got[i]) child_says("served one block twice\n");
      if (got[i] == want) return;
    }
    while (i-- > 0) hak_free(got[i]);
  }
}

/* ---- the cases -------------------------------------------------------- */
static char a_global[256];

/* free-list poisoning: word 0 of a freed block pointed at a global */
static void poison_to_global(void* arg) {
  char* p = hak_malloc(48);
  char* q = hak_malloc(48);
  hak_free(q);
  hak_free(p);
  expect_addr(p);
  *(void**)p = a_global;
  drain_for(48, p); /* checks every block served is the heap's */
  hak_collect();
  drain_for(48, p);
}

/* use after free: a write to a word of a freed 256-byte block (word 0, 1,
 * 4, 16: its middle) or, for LAST_WORD, to its last usable word */
#define LAST_WORD 1000
static void uaf_word(void* arg) {
  size_t word = (size_t)(uintptr_t)arg;
  char* p = hak_malloc(256);
  if (word == LAST_WORD) word = hak_usable_size(p) / 8 - 1;
  hak_free(p);
  expect_addr(p);
  ((uint64_t*)p)[word] = 0x4141414141414141ull;
  drain_for(256, p);
  hak_collect();
  drain_for(256, p);
}

/* double free after a use after free wrote the freed tag */
static void double_free_after_uaf(void* arg) {
  char* p = hak_malloc(64);
  hak_free(p);
  expect_addr(p);
  ((uint64_t*)p)[1] = 0x4242424242424242ull;
  hak_free(p);
  drain_for(64, NULL);
}

/* heap overflow by k bytes past the end of x into y, freed (arg > 0) or
 * live (arg < 0); then x is freed and blocks are allocated until y returns */
static void overflow_next(void* arg) {
  long k = (long)(intptr_t)arg;
  int live = k < 0;
  if (live) k = -k;
  char *x, *y;
  adjacent(40, &x, &y);
  if (!live) hak_free(y);
  expect_addr(level >= 1 ? x : y); /* the canary of x, or the link of y */
  /* every byte changed (a written byte that happens to equal the canary's,
   * 1 in 256, is no corruption at all) */
  char* past = x + hak_usable_size(x);
  for (long i = 0; i < k; i++) past[i] ^= (char)0xa5;
  hak_free(x);
  if (live) hak_free(y);
  drain_for(40, y);
}

/* heap underflow: 8 bytes before y, the end of x */
static void underflow(void* arg) {
  char *x, *y;
  adjacent(40, &x, &y);
  expect_addr(x); /* the canary at the end of x */
  memset(y - 8, 'U', 8);
  hak_free(y);
  hak_free(x);
  drain_for(40, x);
}

/* a linear overflow out of a segment's last page into the next segment */
static void overflow_into_next_segment(void* arg) {
  static char* blocks[16384];
  for (int i = 0; i < 16384; i++) blocks[i] = hak_malloc(1000);
  for (int i = 0; i < 16384; i++) {
    char* p = blocks[i];
    uintptr_t next = ((uintptr_t)p & ~(uintptr_t)HAK_SEGMENT_MASK) + HAK_SEGMENT_SIZE;
    if (hak_map_is_segment(hak_segmap_get(next)) && next - (uintptr_t)p < HAK_SLICE_SIZE) {
      expect_addr((void*)next); /* its first page is the guard */
      catch_segv();
      memset(p, 'O', next - (uintptr_t)p + 64); /* into the next one's first page */
      hak_check_heap();
      child_says("overflowed into the next segment unnoticed\n");
    }
  }
  child_says("no segment followed by another\n");
}

/* writes past the end of a huge block (20 MiB: guard page behind), with
 * a mapping of the program's right after the usable end (where the kernel
 * would place the next one), unless that address is hakmem's already */
static void overflow_huge(void* arg) {
  char* p = hak_malloc((size_t)20 << 20);
  size_t n = hak_usable_size(p);
  (void)mmap(p + n, 65536, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  p[n - 1] = 1;
  expect_addr(p + n);
  catch_segv();
  memset(p + n, 'H', 8192);
  child_says("wrote past a huge block unnoticed\n");
}

/* a huge block's header overwritten, then freed */
static void corrupt_huge_header(void* arg) {
  char* p = hak_malloc((size_t)3 << 20);
  expect_addr(p);
  ((uint64_t*)p)[-6] ^= 0x400000; /* the mapping size */
  hak_free(p);
}

/* an overflow past a BigCache class block (2 or 6 MiB, which would fill
 * their mapping but for the guard page), with a mapping of the program's
 * right behind the block unless that address is hakmem's */
static void overflow_huge_class(void* arg) {
  size_t n = (size_t)(uintptr_t)arg;
  char* p = hak_malloc(n);
  size_t u = hak_usable_size(p);
  (void)mmap(p + u, 65536, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  p[u - 1] = 1;
  expect_addr(p + u);
  catch_segv();
  memset(p + u, 'C', (size_t)1 << 20);
  child_says("wrote past a class block unnoticed\n");
}

/* a write after free into blocks another thread freed: word 0 (arg 0) or
 * word 1 (arg 1) of the second of two */
static char* remote_blocks[2];
static void* free_two(void* unused) {
  hak_free(remote_blocks[0]);
  hak_free(remote_blocks[1]);
  return NULL;
}
static void remote_uaf(void* arg) {
  size_t word = (size_t)(uintptr_t)arg;
  remote_blocks[0] = hak_malloc(48);
  remote_blocks[1] = hak_malloc(48);
  pthread_t t;
  pthread_create(&t, NULL, free_two, NULL);
  pthread_join(t, NULL);
  expect_addr(remote_blocks[1]);
  ((uint64_t*)remote_blocks[1])[word] ^= 0x5a5a5a5a5a5a5a5aull;
  drain_for(48, remote_blocks[1]);
  hak_collect();
  drain_for(48, remote_blocks[1]);
}

/* misuse near a guard page: a free of the address right past a huge block,
 * and (arg 1) of a pointer into a freed huge block */
static void free_near_guard(void* arg) {
  char* p = hak_malloc((size_t)20 << 20);
  char* q = (uintptr_t)arg == 0 ? p + hak_usable_size(p) + 64 : p + 8192;
  if ((uintptr_t)arg == 1) hak_free(p);
  expect_addr(q);
  hak_free(q);
}

/* many large blocks: HAKMEM_SECURE=2's guard pages must not exhaust the
 * kernel's mappings (vm.max_map_count) */
static void many_large(void* arg) {
  static char* blocks[40000];
  for (int i = 0; i < 40000; i++)
    if ((blocks[i] = hak_malloc(128 << 10)) == NULL) child_says("out of memory (mappings?)\n");
  for (int i = 0; i < 40000; i++) hak_free(blocks[i]);
}

/* a write into a huge block after its free (level 2: PROT_NONE until its
 * mapping is reused) */
static void uaf_huge(void* arg) {
  /* BigCache keeps it mapped below level 2 (a block past its classes and
   * the retained budget would be unmapped: a plain fault) */
  char* p = hak_malloc((size_t)10 << 20);
  memset(p, 1, 8192);
  hak_free(p);
  expect_addr(p + 4096);
  catch_segv();
  p[4096] = 2;
}

/* an overflow past a large block (level 2: a guard page behind it) */
static void overflow_large(void* arg) {
  char* p = hak_malloc(200 << 10);
  char* q = hak_malloc(200 << 10); /* something behind it */
  (void)q;
  size_t u = hak_usable_size(p);
  expect_addr(p + u);
  catch_segv();
  memset(p + u, 'L', 4096);
}

/* ---- the table -------------------------------------------------------- */
typedef struct {
  const char* name;
  void (*fn)(void*);
  long arg;
  outcome_t at[3]; /* SECURE=0, 1, 2 */
  const char* want; /* the diagnosis (ABORTS), on the line that names the
                       address the child announced */
} case_t;

static const case_t cases[] = {
    {"poisoning toward a global", poison_to_global, 0, {ABORTS, ABORTS, ABORTS}, "heap corruption in "},
    /* level 2: found when the block leaves the quarantine (in a free) */
    {"use after free, word 0", uaf_word, 0, {ABORTS, ABORTS, ABORTS}, "heap corruption in "},
    {"use after free, word 1", uaf_word, 1, {ABORTS, ABORTS, ABORTS}, "heap corruption in "},
    /* level 1 fills and checks a freed block's first and last 64 bytes,
     * level 2 all of it (up to 4 KiB) */
    {"use after free, word 4", uaf_word, 4, {UNDETECTED, ABORTS, ABORTS}, "heap corruption in "},
    {"use after free, last word", uaf_word, LAST_WORD, {UNDETECTED, ABORTS, ABORTS}, "heap corruption in "},
    {"use after free, middle", uaf_word, 16, {UNDETECTED, UNDETECTED, ABORTS}, "heap corruption in "},
    /* level 0: the block's second pop; levels 1, 2: the second free finds
     * the canary zeroed */
    {"double free after use after free", double_free_after_uaf, 0, {ABORTS, ABORTS, ABORTS}, "heap corruption in "},
    {"overflow by 1 into a free block", overflow_next, 1, {MAYBE, ABORTS, ABORTS}, "heap corruption in "},
    {"overflow by 8 into a free block", overflow_next, 8, {ABORTS, ABORTS, ABORTS}, "heap corruption in "},
    {"overflow by 64 into a free block", overflow_next, 64, {ABORTS, ABORTS, ABORTS}, "heap corruption in "},
    {"overflow by 1 into a live block", overflow_next, -1, {UNDETECTED, ABORTS, ABORTS}, "heap corruption in free("},
    {"overflow by 8 into a live block", overflow_next, -8, {UNDETECTED, ABORTS, ABORTS}, "heap corruption in free("},
    {"overflow by 64 into a live block", overflow_next, -64, {UNDETECTED, ABORTS, ABORTS}, "heap corruption in free("},
    {"underflow by 8", underflow, 0, {UNDETECTED, ABORTS, ABORTS}, "heap corruption in free("},
    {"overflow into the next segment's header", overflow_into_next_segment, 0, {SEGV, SEGV, SEGV}, NULL},
    {"overflow past a huge block", overflow_huge, 0, {SEGV, SEGV, SEGV}, NULL},
    {"corrupted huge header", corrupt_huge_header, 0, {ABORTS, ABORTS, ABORTS}, "heap corruption in free("},
    {"overflow past a 2 MiB class block", overflow_huge_class, 2 << 20, {SEGV, SEGV, SEGV}, NULL},
    {"overflow past a 6 MiB class block", overflow_huge_class, 6 << 20, {SEGV, SEGV, SEGV}, NULL},
    {"use after free of a remote free, word 0", remote_uaf, 0, {ABORTS, ABORTS, ABORTS}, "heap corruption in "},
    {"use after free of a remote free, word 1", remote_uaf, 1, {ABORTS, ABORTS, ABORTS}, "heap corruption in "},
    {"free of the address past a huge block", free_near_guard, 0, {ABORTS, ABORTS, ABORTS},
     "invalid pointer (not allocated by hakmem) in free("},
    {"free into a freed huge block", free_near_guard, 1, {ABORTS, ABORTS, ABORTS}, "invalid pointer (not allocated by hakmem) in free("},
    {"40,000 large blocks", many_large, 0, {UNDETECTED, UNDETECTED, UNDETECTED}, NULL},
    {"use after free of a huge block", uaf_huge, 0, {UNDETECTED, UNDETECTED, SEGV}, NULL},
    {"overflow past a large block", overflow_large, 0, {UNDETECTED, UNDETECTED, SEGV}, NULL},
};

TEST(every_corruption_gets_the_outcome_its_level_promises) {
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    const case_t* c = &cases[i];
    char out[4096];
    int st = hak_run_child(c->fn, (void*)(intptr_t)c->arg, out, sizeof(out));
    outcome_t want = c->at[level];
    bool aborted = WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT;
    bool segv = WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV;
    bool clean = WIFEXITED(st) && WEXITSTATUS(st) == 0;
    printf("%-42s level %d: %s\n", c->name, level,
           aborted ? "diagnosed" : segv ? "SIGSEGV" : clean ? "undetected" : "FAILED");
    /* the diagnosis: one line, naming the announced address, printed once */
    const char* line = strstr(out, "hakmem: error: ");
    const char* exp = strstr(out, "expect (");
    bool named = false;
    if (line != NULL && exp != NULL) {
      char addr[40];
      size_t n = strcspn(exp + 7, "\n");
      snprintf(addr, sizeof(addr), "%.*s", (int)n, exp + 7);
      const char* eol = strchr(line, '\n');
      const char* at = strstr(line, addr);
      named = at != NULL && (eol == NULL || at < eol);
    }
    bool diagnosed = aborted && line != NULL && c->want != NULL && strstr(line, c->want) == line + 15 && named &&
                     strstr(line + 1, "hakmem: error: ") == NULL;
#ifdef HAK_VERIFY
    /* the verify build runs the checker at assertion points: it may see the
     * corruption (and abort) before the allocator's own check does */
    if (aborted && strstr(out, "verify: heap invariants violated") != NULL) diagnosed = true;
#endif
    if (want == MAYBE) want = clean ? UNDETECTED : ABORTS;
    if (want == ABORTS && !diagnosed)
      HAK_FAIL_AT("%s: expected one \"%s\" naming the block and an abort, got status %d: %s", c->name, c->want, st,
                  out);
    if (want == SEGV) {
      const char* fault = strstr(out, "segv at (");
      bool guard = exp != NULL && fault != NULL && strncmp(exp + 7, fault + 8, strcspn(exp + 7, "\n")) == 0;
      if (!segv || !guard)
        HAK_FAIL_AT("%s: expected death on the announced guard page, got status %d: %s", c->name, st, out);
    }
    if (want == UNDETECTED && !clean) HAK_FAIL_AT("%s: expected a clean run, got status %d: %s", c->name, st, out);
  }
}

/* HAKMEM_ON_ERROR=report: a case the level diagnoses is reported, the
 * program goes on, and what was dropped or leaked leaves a heap the
 * checker accepts (after hak_collect, which retires what it can). */
static void in_report_mode(void* arg) {
  const case_t* c = arg;
  _hak_options[HAK_OPT_ON_ERROR] = 1;
  c->fn((void*)(intptr_t)c->arg);
  hak_collect();
  size_t violations = hak_check_heap();
  if (violations != 0) child_says("the checker found the heap inconsistent after the report\n");
  _exit(0);
}

TEST(a_reported_corruption_leaves_a_consistent_heap) {
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    const case_t* c = &cases[i];
    /* a huge header the program overwrote stays as it is (its mapping
     * leaks): the checker rightly finds it corrupt */
    if (c->at[level] != ABORTS || c->fn == corrupt_huge_header) continue;
    char out[4096];
    int st = hak_run_child(in_report_mode, (void*)c, out, sizeof(out));
    const char* line = strstr(out, "hakmem: error: ");
    bool reported = line != NULL && strstr(line, c->want) == line + 15;
    printf("%-42s level %d, report mode: %s\n", c->name, level,
           WIFEXITED(st) && WEXITSTATUS(st) == 0 ? (reported ? "reported, consistent" : "not reported") : "FAILED");
    if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0 && reported))
      HAK_FAIL_AT("%s: expected a report and a consistent heap, got status %d: %s", c->name, st, out);
  }
}

int main(int argc, char** argv) {
  const char* s = getenv("HAKMEM_SECURE");
  level = s != NULL ? atoi(s) : 0;
  if (level < 0 || level > 2) level = 0;
  return hak_test_main(argc, argv);
}
