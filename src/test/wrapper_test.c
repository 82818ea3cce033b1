/* Wrappers (wrapper.c): the requests of an allocation wrapper called from
 * many places are attributed to its callers, also through a function only
 * one caller calls, with and without frame pointers and with a frame whose
 * size varies; a helper of one or two callers keeps its own site; explicit
 * sites are kept; threads learn the same table; HAKMEM_WRAPPERS=0 turns it
 * off.  The expected sites are the return addresses the wrappers saw
 * (wrapper_fns.h). */
#define _GNU_SOURCE 1 /* clone, RTLD_NEXT */
#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "src/hakmem.h"
#include "src/internal.h"
#include "src/test/test.h"
#include "src/test/wrapper_fns.h"

#define BIG (256u << 10) /* above 128 KiB: every request is recorded */
#define ROUNDS 40

static uint64_t allocs_of(const void* site) {
  static hak_site_info_t info[1024];
  size_t n = hak_sites_get(info, 1024);
  for (size_t i = 0; i < n; i++)
    if (info[i].site == site) return info[i].allocs;
  return 0;
}

static hak_stats_t stats(void) {
  hak_stats_t st;
  hak_stats_get(&st);
  return st;
}

static size_t scratch(void) { /* a frame of varying size */
  static unsigned n;
  return 40 + (n++ * 37) % 400;
}

/* five callers of one function; each notes the return address its call
 * left (the site its requests should have) */
#define CALLERS(prefix, call, ra)                                                                            \
  static const void* prefix##_site[5];                                                                       \
  __attribute__((noinline)) static void prefix##0(void) { hak_free_at(call, NULL); prefix##_site[0] = ra; } \
  __attribute__((noinline)) static void prefix##1(void) { hak_free_at(call, NULL); prefix##_site[1] = ra; } \
  __attribute__((noinline)) static void prefix##2(void) { hak_free_at(call, NULL); prefix##_site[2] = ra; } \
  __attribute__((noinline)) static void prefix##3(void) { hak_free_at(call, NULL); prefix##_site[3] = ra; } \
  __attribute__((noinline)) static void prefix##4(void) { hak_free_at(call, NULL); prefix##_site[4] = ra; } \
  static void (*const prefix##s[5])(void) = {prefix##0, prefix##1, prefix##2, prefix##3, prefix##4};

CALLERS(x, wt_xmalloc(BIG), wt_last_ra)
CALLERS(ch, wt_outer_fp(BIG, scratch()), wt_last_outer_ra)
CALLERS(off, wt_xmalloc_off(BIG), wt_last_ra)
CALLERS(fk, wt_xmalloc_fork(BIG), wt_last_ra)

TEST(a_wrappers_callers_are_the_sites) {
  hak_stats_t before = stats();
  for (int r = 0; r < ROUNDS; r++)
    for (int k = 0; k < 5; k++) xs[k]();
  const void* wrapper_site = wt_last_site;
  /* the first requests, until 4 callers were seen, stay the wrapper's */
  for (int k = 0; k < 5; k++) EXPECT_TRUE(allocs_of(x_site[k]) >= ROUNDS - 1);
  EXPECT_TRUE(allocs_of(wrapper_site) <= 4);
  uint64_t sum = allocs_of(wrapper_site);
  for (int k = 0; k < 5; k++) sum += allocs_of(x_site[k]);
  EXPECT_EQ_U(sum, 5 * ROUNDS);
  hak_stats_t after = stats();
  EXPECT_EQ_U(after.sites_wrappers, before.sites_wrappers + 1);
  EXPECT_EQ_U(after.sites_seen_through, before.sites_seen_through + 5 * ROUNDS - allocs_of(wrapper_site));
}

/* A fork while another thread claims the table's slot of a return
 * address (its rule being looked up: _dl_find_object, interposed here,
 * holds it until the fork is done): the child, where that thread does not
 * exist, must look the address up again, not find its slot claimed
 * forever (the wrapper would never be seen through there). */
static _Atomic(int) fk_state; /* 1: held in the lookup, 2: forked */
static _Atomic(bool) fk_armed;
int _dl_find_object(void* pc, struct dl_find_object* result) {
  static int (*real)(void*, struct dl_find_object*);
  if (real == NULL) real = (int (*)(void*, struct dl_find_object*))dlsym(RTLD_NEXT, "_dl_find_object");
  uintptr_t off = (uintptr_t)pc - (uintptr_t)wt_xmalloc_fork;
  if (off < 256 && atomic_exchange(&fk_armed, false)) {
    atomic_store(&fk_state, 1);
    for (int i = 0; i < 3000 && atomic_load(&fk_state) != 2; i++) usleep(1000);
  }
  return real == NULL ? -1 : real(pc, result);
}
static void* fk_first(void* arg) {
  (void)arg;
  fks[0]();
  return NULL;
}
static void fork_during_a_claim(void) {
  atomic_store(&fk_armed, true);
  pthread_t t;
  pthread_create(&t, NULL, fk_first, NULL);
  for (int i = 0; i < 3000 && atomic_load(&fk_state) != 1; i++) usleep(1000);
  CHILD_CHECK(atomic_load(&fk_state) == 1);
  pid_t pid = fork();
  if (pid == 0) {
    hak_stats_t before = stats();
    for (int r = 0; r < ROUNDS; r++)
      for (int k = 0; k < 5; k++) fks[k]();
    hak_stats_t after = stats();
    /* the wrapper found: its callers' requests are theirs */
    CHILD_CHECK(after.sites_wrappers == before.sites_wrappers + 1);
    CHILD_CHECK(allocs_of(wt_last_site) <= 4);
    _exit(0);
  }
  atomic_store(&fk_state, 2);
  int st = 0;
  waitpid(pid, &st, 0);
  pthread_join(t, NULL);
  CHILD_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}
TEST(a_fork_child_looks_up_what_a_vanished_thread_was_looking_up) { EXPECT_CHILD_OK(fork_during_a_claim, 30); }

/* wt_xmalloc_chained has one caller, wt_outer_fp (rbp-based, a variable
 * frame), which five functions call: their requests are theirs. */
TEST(a_chain_to_a_wrapper_is_seen_through) {
  for (int r = 0; r < ROUNDS; r++)
    for (int k = 0; k < 5; k++) chs[k]();
  for (int k = 0; k < 5; k++) EXPECT_TRUE(allocs_of(ch_site[k]) >= ROUNDS - 1);
  EXPECT_TRUE(allocs_of(wt_last_site) <= 4); /* wt_xmalloc_chained's call */
  EXPECT_EQ_U(allocs_of(wt_last_ra), 0);     /* wt_outer_fp's call */
}

static const void *two_a_site, *two_b_site, *one_a_site;
__attribute__((noinline)) static void two_a(void) { hak_free_at(wt_helper_of_two(BIG), NULL); two_a_site = wt_last_ra; }
__attribute__((noinline)) static void two_b(void) { hak_free_at(wt_helper_of_two(BIG), NULL); two_b_site = wt_last_ra; }
__attribute__((noinline)) static void one_a(void) { hak_free_at(wt_helper_of_one(BIG), NULL); one_a_site = wt_last_ra; }

/* A helper two functions call is the purpose of its allocations; one only
 * one function calls, with no wrapper above it, keeps its site too. */
TEST(helpers_of_one_or_two_callers_keep_their_sites) {
  const void *two = NULL, *one = NULL;
  for (int r = 0; r < 100; r++) {
    two_a();
    two_b();
    two = wt_last_site;
    one_a();
    one = wt_last_site;
  }
  EXPECT_EQ_U(allocs_of(two), 200);
  EXPECT_EQ_U(allocs_of(two_a_site) + allocs_of(two_b_site), 0);
  EXPECT_EQ_U(allocs_of(one), 100);
  EXPECT_EQ_U(allocs_of(one_a_site), 0);
}

/* Four calls in one function (a loop the compiler unrolled, say): one
 * caller, not a wrapper's four. */
__attribute__((noinline)) static void four_calls(void) {
  hak_free_at(wt_helper_of_one_function(BIG), NULL);
  hak_free_at(wt_helper_of_one_function(BIG + 1), NULL);
  hak_free_at(wt_helper_of_one_function(BIG + 2), NULL);
  hak_free_at(wt_helper_of_one_function(BIG + 3), NULL);
}

TEST(calls_from_one_function_count_once) {
  for (int r = 0; r < ROUNDS; r++) four_calls();
  EXPECT_EQ_U(allocs_of(wt_last_site), 4 * ROUNDS);
}

/* A helper three functions call, each of them called from four places
 * (so each looks like a wrapper): the helper is plain, whichever of its
 * callers a request comes from.  (Review: the caller's position in the
 * recorded list was taken for their number, and requests from the first
 * went up through it to its callers: 12 sites.) */
#define P(k) /* not a tail call: p##k stays on the stack */ \
  __attribute__((noinline)) static void* p##k(void) {        \
    void* p = wt_helper_of_three(BIG);                       \
    if (p == NULL) abort();                                  \
    return p;                                                \
  }
P(1) P(2) P(3)
#define Q(i, p) __attribute__((noinline)) static void q##i(void) { hak_free_at(p(), NULL); }
Q(11, p1) Q(12, p1) Q(13, p1) Q(14, p1) Q(21, p2) Q(22, p2) Q(23, p2) Q(24, p2) Q(31, p3) Q(32, p3) Q(33, p3) Q(34, p3)

TEST(a_helper_of_three_callers_stays_its_own_site) {
  void (*const q[3][4])(void) = {{q11, q12, q13, q14}, {q21, q22, q23, q24}, {q31, q32, q33, q34}};
  for (int i = 0; i < 600; i++) q[i % 3][(i / 3) % 4]();
  EXPECT_EQ_U(allocs_of(wt_last_site), 600);
}

/* Five callers taking turns slowly (30 requests each in a row): the
 * wrapper is found when the fourth comes, after 90 requests.  (Review: a
 * site decided after 64 requests from three callers stayed plain.) */
static const void* slow_site[5];
#define SLOW(k) \
  __attribute__((noinline)) static void slow##k(void) { hak_free_at(wt_xmalloc_slow_turns(BIG), NULL); slow_site[k] = wt_last_ra; }
SLOW(0) SLOW(1) SLOW(2) SLOW(3) SLOW(4)

TEST(a_wrapper_whose_callers_come_slowly_is_found) {
  void (*const slow[5])(void) = {slow0, slow1, slow2, slow3, slow4};
  for (int k = 0; k < 5; k++)
    for (int r = 0; r < 30; r++) slow[k]();
  const void* wrapper_site = wt_last_site;
  EXPECT_EQ_U(allocs_of(wrapper_site), 90);
  EXPECT_EQ_U(allocs_of(slow_site[3]), 30);
  EXPECT_EQ_U(allocs_of(slow_site[4]), 30);
  for (int k = 0; k < 5; k++) slow[k]();
  for (int k = 0; k < 5; k++) EXPECT_EQ_U(allocs_of(slow_site[k]), k < 3 ? 1 : 31);
}

/* A wrapper one level above the site (PyMem_RawMalloc above
 * _PyMem_RawMalloc) whose other callers each come once, after a run from
 * one of them: found when they come, whenever they come, since every
 * learning request walks the whole stack.  (Reviews M and N: learning walks
 * sampled once a site was quiet missed them, in 18 of 20 runs when they came
 * after 70 requests, for good: the site's 2,073 requests stayed the
 * helper's.) */
CALLERS(st, wt_outer_startup(BIG), wt_last_outer_ra)
TEST(a_wrapper_above_a_helper_whose_callers_come_once_is_found) {
  for (int r = 0; r < 100; r++) st0();
  for (int k = 1; k < 4; k++) sts[k]();
  for (int r = 0; r < 200; r++) st0();
  const void* helper_site = wt_last_site;
  if (allocs_of(st_site[0]) < 200)
    fprintf(stderr, "helper %llu, first caller %llu\n", (unsigned long long)allocs_of(helper_site),
            (unsigned long long)allocs_of(st_site[0]));
  EXPECT_TRUE(allocs_of(st_site[0]) >= 200);
  EXPECT_TRUE(allocs_of(helper_site) <= 104);
}

/* A step that fails once (an alloca of 100 KiB in a frame: beyond a step's
 * bound) decides nothing: afterwards the requests still reach the
 * wrapper's callers.  (Review: the walk marked the entry below the failed
 * step as having no wrapper above it, for good.) */
static _Thread_local const void* deep_ra; /* h_of_alloca's caller's call */
__attribute__((noinline)) static void* h_of_alloca(size_t pad) {
  deep_ra = __builtin_return_address(0);
  void* p = wt_alloca_caller(BIG, pad);
  if (p == NULL) abort(); /* not a tail call */
  return p;
}
static const void* deep_site[4];
#define DEEP(k)                                                                                       \
  __attribute__((noinline)) static void deep##k(size_t pad) { hak_free_at(h_of_alloca(pad), NULL); deep_site[k] = deep_ra; }
DEEP(0) DEEP(1) DEEP(2) DEEP(3)
__attribute__((noinline)) static void direct_a(void) { hak_free_at(wt_xmalloc_under_alloca(BIG), NULL); }
__attribute__((noinline)) static void direct_b(void) { hak_free_at(wt_xmalloc_under_alloca(BIG), NULL); }
__attribute__((noinline)) static void direct_c(void) { hak_free_at(wt_xmalloc_under_alloca(BIG), NULL); }

TEST(a_step_that_fails_once_decides_nothing) {
  void (*const deep[4])(size_t) = {deep0, deep1, deep2, deep3};
  for (int r = 0; r < 1100; r++) { /* every entry decided (1,024 requests) */
    direct_a(), direct_b(), direct_c();
    for (int k = 0; k < 4; k++) deep[k](64);
  }
  uint64_t before[4];
  for (int k = 0; k < 4; k++) before[k] = allocs_of(deep_site[k]);
  deep0(100 << 10); /* one step out of bounds */
  for (int r = 0; r < 300; r++)
    for (int k = 0; k < 4; k++) deep[k](64);
  for (int k = 0; k < 4; k++) EXPECT_TRUE(allocs_of(deep_site[k]) >= before[k] + 300);
}

/* The rules read from .eh_frame: a function built without a frame pointer
 * has its CFA at rsp plus its frame; a first frame (its return address
 * undefined) has none: the walk ends there. */
TEST(cfi_rules_say_where_the_caller_is) {
  hak_cfa_rule_t r;
  uintptr_t func = 0;
  hak_free_at(wt_xmalloc(BIG), NULL); /* wt_last_site: its call in a -O2 wrapper */
  ASSERT_TRUE(_hak_cfa_rule((uintptr_t)wt_last_site - 1, &r, &func));
  EXPECT_EQ_U(r.reg, 7); /* rsp */
  EXPECT_TRUE(r.off >= 8 && r.off % 8 == 0);
  EXPECT_TRUE(func != 0 && func < (uintptr_t)wt_last_site);
  EXPECT_TRUE(!_hak_cfa_rule((uintptr_t)wt_first_frame_inside, &r, &func));
}

/* A clone()d child on a stack with nothing mapped above it: the walk ends
 * at the child's first frame, whose rule says it has no caller.  (Review:
 * the rule's "return address undefined" was ignored and the walk read the
 * word above the stack: SIGSEGV.) */
#define CLONE_STACK (64 << 10)
__attribute__((noinline)) static int clone_child(void* arg) {
  (void)arg;
  for (int i = 0; i < 100; i++) hak_free_at(wt_malloc(BIG), NULL); /* through the first frame's rule */
  for (int i = 0; i < 100; i++) hak_free_at(wt_xmalloc_clone(BIG), NULL);
  return 0;
}

TEST(a_clone_child_walks_no_further_than_its_first_frame) {
  char* m = mmap(NULL, CLONE_STACK + 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_TRUE(m != MAP_FAILED);
  munmap(m + CLONE_STACK, 4096); /* nothing mapped above the stack */
  pid_t pid = clone(clone_child, m + CLONE_STACK, SIGCHLD, NULL);
  ASSERT_TRUE(pid > 0);
  int st = 0;
  ASSERT_TRUE(waitpid(pid, &st, 0) == pid);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  if (WIFSIGNALED(st)) fprintf(stderr, "clone child killed by signal %d\n", WTERMSIG(st));
  munmap(m, CLONE_STACK);
}

/* A wrapper called from one function 1,100 times (start-up: decided a
 * chain, then its own, and cached) and then from four: the later callers
 * are found, within WR_RECHECK cached requests.  (Review: decisions were
 * final; the four stayed the wrapper's 1,500.) */
__attribute__((noinline)) static void late_load(void) { hak_free_at(wt_xmalloc_late(BIG), NULL); }
static const void* late_site[4];
#define LATE(k) \
  __attribute__((noinline)) static void late##k(void) { hak_free_at(wt_xmalloc_late(BIG), NULL); late_site[k] = wt_last_ra; }
LATE(0) LATE(1) LATE(2) LATE(3)

TEST(callers_that_come_late_are_found) {
  void (*const late[4])(void) = {late0, late1, late2, late3};
  for (int r = 0; r < 1100; r++) late_load();
  for (int r = 0; r < 400; r++)
    for (int k = 0; k < 4; k++) late[k]();
  for (int k = 0; k < 4; k++) EXPECT_TRUE(allocs_of(late_site[k]) >= 300);
}

/* A function run on a stack the program switched to with the usual inline
 * asm (the enclosing function's rules do not know rsp moved), a guard
 * page right above it: nothing of that stack is read beyond what is
 * there.  (Review: a main thread's mmap'd stack lay just below its
 * descriptor, which passed for the top of the stack: SIGSEGV.) */
#define SWITCH_STACK (64 << 10)
static void switched_body(void) {
  for (int i = 0; i < 100; i++) hak_free_at(wt_malloc(BIG), NULL);
}
/* A stack with a guard page right above it, mapped just below ceiling (a
 * thread's descriptor or its stack): where a descriptor taken for the top
 * of the stack would let reads run into the guard page. */
static char* map_stack_below(uintptr_t ceiling) {
  for (uintptr_t at = (ceiling & ~(uintptr_t)0xfff) - (SWITCH_STACK + 4096); at > ceiling - (7u << 20); at -= 4096) {
    char* m = mmap((void*)at, SWITCH_STACK + 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
                   -1, 0);
    if (m == (char*)at) return m;
    if (m != MAP_FAILED) munmap(m, SWITCH_STACK + 4096);
  }
  /* none free there (TSan's shadow, say): anywhere, still guarded */
  char* m = mmap(NULL, SWITCH_STACK + 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return m == MAP_FAILED ? NULL : m;
}
static void switched_run(uintptr_t ceiling) {
  char* m = map_stack_below(ceiling);
  CHILD_CHECK(m != NULL);
  CHILD_CHECK(mprotect(m + SWITCH_STACK, 4096, PROT_NONE) == 0); /* guard page right above */
  wt_call_on_stack(m + SWITCH_STACK, switched_body);
}
static void switched_child(void) { switched_run((uintptr_t)pthread_self()); }
static void* switched_thread(void* arg) {
  (void)arg;
  pthread_attr_t a;
  void* lo;
  size_t size;
  CHILD_CHECK(pthread_getattr_np(pthread_self(), &a) == 0 && pthread_attr_getstack(&a, &lo, &size) == 0);
  switched_run((uintptr_t)lo - (64 << 10)); /* below its stack and guard */
  return NULL;
}
static void switched_child_in_thread(void) {
  pthread_t t;
  pthread_attr_t a;
  pthread_attr_init(&a);
  pthread_attr_setstacksize(&a, 256 << 10);
  CHILD_CHECK(pthread_create(&t, &a, switched_thread, NULL) == 0);
  pthread_join(t, NULL);
}

TEST(a_switched_stack_is_not_read_past_its_top) {
  EXPECT_CHILD_OK(switched_child, 10);
  EXPECT_CHILD_OK(switched_child_in_thread, 10);
}

/* hak_alloc_at with a site of the program's choosing: that site. */
TEST(explicit_sites_are_kept) {
  static const char label[4][8];
  for (int r = 0; r < ROUNDS; r++)
    for (int k = 0; k < 4; k++) hak_free_at(hak_alloc_at(BIG, label[k]), NULL);
  for (int k = 0; k < 4; k++) EXPECT_EQ_U(allocs_of(label[k]), ROUNDS);
}

/* Eight threads learning the same wrapper from four callers (the table's
 * entries filled and decided concurrently), each freeing the blocks the
 * next thread allocated. */
#define THREADS 8
#define PER_THREAD 200
static void* slots[THREADS][PER_THREAD];
static const void* t_site[THREADS][5]; /* per thread: the callers' sites, the wrapper's */
static _Thread_local int t_self;
#define T_SITE(k)                                                \
  __attribute__((noinline)) static void* t_site##k(void) {       \
    void* p = wt_xmalloc_threads(BIG);                           \
    t_site[t_self][k] = wt_last_ra;                              \
    t_site[t_self][4] = wt_last_site;                            \
    return p;                                                    \
  }
T_SITE(0) T_SITE(1) T_SITE(2) T_SITE(3)
static void* (*const t_sites[4])(void) = {t_site0, t_site1, t_site2, t_site3};
static pthread_barrier_t barrier;

static void* thread_main(void* arg) {
  int t = (int)(intptr_t)arg;
  t_self = t;
  for (int i = 0; i < PER_THREAD; i++) slots[t][i] = t_sites[(i + t) % 4]();
  pthread_barrier_wait(&barrier);
  for (int i = 0; i < PER_THREAD; i++) hak_free_at(slots[(t + 1) % THREADS][i], NULL);
  return NULL;
}

TEST(threads_learn_one_table) {
  pthread_t th[THREADS];
  pthread_barrier_init(&barrier, NULL, THREADS);
  for (int t = 0; t < THREADS; t++) ASSERT_TRUE(pthread_create(&th[t], NULL, thread_main, (void*)(intptr_t)t) == 0);
  for (int t = 0; t < THREADS; t++) pthread_join(th[t], NULL);
  pthread_barrier_destroy(&barrier);
  for (int t = 1; t < THREADS; t++) ASSERT_TRUE(memcmp(t_site[t], t_site[0], sizeof(t_site[0])) == 0);
  uint64_t sum = allocs_of(t_site[0][4]);
  if (sum > 4 * THREADS) fprintf(stderr, "the wrapper's own site took %" PRIu64 "\n", sum);
  EXPECT_TRUE(sum <= 4 * THREADS); /* each thread's first requests, at most */
  for (int k = 0; k < 4; k++) {
    uint64_t n = allocs_of(t_site[0][k]);
    EXPECT_TRUE(n >= THREADS * PER_THREAD / 4 - 4 * THREADS);
    sum += n;
  }
  if (sum != THREADS * PER_THREAD) { /* which site took the others */
    static hak_site_info_t info[1024];
    size_t n = hak_sites_get(info, 1024);
    for (size_t i = 0; i < n; i++) fprintf(stderr, "site %p allocs %" PRIu64 "\n", info[i].site, info[i].allocs);
    fprintf(stderr, "expected %p %p %p %p %p\n", t_site[0][4], t_site[0][0], t_site[0][1], t_site[0][2], t_site[0][3]);
  }
  EXPECT_EQ_U(sum, THREADS * PER_THREAD);
  EXPECT_EQ_U(hak_check_heap(), 0);
}

/* Small requests' samples (1 in 64 refills) look no unwind rule up: the
 * pages a lookup reads of the program's binary count in its RSS (clang++
 * -O1: 3.6 MiB), and a small request's site only counts.  Through a
 * wrapper never seen by a large request they stay the wrapper's; once
 * large requests have looked its rules up, they are seen through. */
#define SMALL_ROUNDS 1000
static void* small_blocks[2 * SMALL_ROUNDS * 5];
static size_t small_count;
static const void* sm_site[5];
#define SM(k)                                                   \
  __attribute__((noinline)) static void sm##k(size_t n) {      \
    void* p = wt_xmalloc_small(n);                              \
    sm_site[k] = wt_last_ra;                                    \
    if (n > HAK_SMALL_MAX) hak_free(p);                         \
    else small_blocks[small_count++] = p;                       \
  }
SM(0) SM(1) SM(2) SM(3) SM(4)
static void (*const sms[5])(size_t) = {sm0, sm1, sm2, sm3, sm4};

TEST(small_samples_look_no_rule_up) {
  hak_stats_t before = stats();
  /* 8 KiB blocks: a refill every 4 (carved 4 at a time), a sample every 256 */
  for (int r = 0; r < SMALL_ROUNDS; r++)
    for (int k = 0; k < 5; k++) sms[k](8192);
  const void* wrapper_site = wt_last_site;
  hak_stats_t after = stats();
  EXPECT_TRUE(after.sites_sampled - before.sites_sampled >= 10);
  EXPECT_TRUE(allocs_of(wrapper_site) >= 10); /* every sample the wrapper's */
  for (int k = 0; k < 5; k++) EXPECT_EQ_U(allocs_of(sm_site[k]), 0);
  EXPECT_EQ_U(after.sites_wrappers, before.sites_wrappers);
  /* large requests through it: rules looked up, the wrapper found */
  for (int r = 0; r < ROUNDS; r++)
    for (int k = 0; k < 5; k++) sms[k](BIG);
  EXPECT_EQ_U(stats().sites_wrappers, after.sites_wrappers + 1);
  uint64_t small_before[5];
  for (int k = 0; k < 5; k++) small_before[k] = allocs_of(sm_site[k]);
  uint64_t sampled = stats().sites_sampled;
  for (int r = 0; r < SMALL_ROUNDS; r++)
    for (int k = 0; k < 5; k++) sms[k](8192);
  EXPECT_TRUE(stats().sites_sampled - sampled >= 10);
  uint64_t seen = 0;
  for (int k = 0; k < 5; k++) seen += allocs_of(sm_site[k]) - small_before[k];
  EXPECT_TRUE(seen >= 10); /* the samples now count at the callers */
  for (size_t i = 0; i < small_count; i++) hak_free(small_blocks[i]);
  small_count = 0;
  EXPECT_EQ_U(hak_check_heap(), 0);
}

TEST(wrappers_off_keeps_the_immediate_caller) {
  setenv("HAKMEM_WRAPPERS", "0", 1);
  _hak_options_reload();
  for (int r = 0; r < ROUNDS; r++)
    for (int k = 0; k < 5; k++) offs[k]();
  unsetenv("HAKMEM_WRAPPERS");
  _hak_options_reload();
  EXPECT_EQ_U(allocs_of(wt_last_site), 5 * ROUNDS);
  for (int k = 0; k < 5; k++) EXPECT_EQ_U(allocs_of(off_site[k]), 0);
}

TEST_MAIN()
