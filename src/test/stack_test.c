/* Stack use of every allocator path (issue 10, item 11): malloc, free,
 * realloc and calloc on every tier, huge frees that release the batch
 * queue and unmap retained mappings, hak_collect, misuse reports and the
 * statistics, all run on a small stack of our own (as on a coroutine, a
 * JVM thread or a sigaltstack).  The stack is pre-filled with a pattern;
 * the deepest byte changed is the high-water mark, which must stay below
 * HAK_STACK_BOUND.  A guard page below turns an overflow into a crash. */
#include <fcntl.h>
#include <sys/mman.h>
#include <ucontext.h>

#include "src/hakmem.h"
#include "src/internal.h"
#include "src/test/test.h"

#define STACK_SIZE (128u << 10)
#define HAK_STACK_BOUND (4u << 10) /* the bound README promises */

static ucontext_t main_ctx, work_ctx;

static void workload(void) {
  _hak_options[HAK_OPT_ON_ERROR] = 1; /* report and go on */
  _hak_options[HAK_OPT_BATCH_RANGES] = 256;
  _hak_options[HAK_OPT_BATCH_BYTES] = 1 << 30;
  _hak_options[HAK_OPT_RETAIN_BYTES] = 0;
  _hak_options[HAK_OPT_BIGCACHE_SLOTS] = 0;
  static void* p[300];
  for (int round = 0; round < 2; round++) {
    for (int i = 0; i < 300; i++) {
      size_t size = i % 3 == 0 ? (size_t)(i + 1) * 24 : i % 3 == 1 ? (size_t)(i + 1) * 700 : (2u << 20) + (size_t)i * 4096;
      p[i] = hak_malloc(size);
      p[i] = hak_realloc(p[i], size + 100);
    }
    for (int i = 0; i < 300; i++) hak_free(p[i]); /* a full queue: flush with 256 ranges */
    hak_free(hak_calloc(100, 100));
  }
  hak_collect();
  int fd = open("/dev/null", O_WRONLY);
  hak_stats_print(fd, 1);
  hak_stats_print(fd, 0);
  close(fd);
  void* q = hak_malloc(64);
  hak_free(q);
  int err = dup(2);
  int null = open("/dev/null", O_WRONLY);
  dup2(null, 2);
  hak_free(q); /* a double free, reported */
  hak_free((void*)0x1234560);
  dup2(err, 2);
  close(null);
  close(err);
}

static void on_stack(void) { workload(); }

TEST(every_path_fits_a_small_stack) {
  hak_free(hak_malloc(1)); /* the thread's heap exists */
  uint8_t* region = mmap(NULL, STACK_SIZE + 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_TRUE(region != MAP_FAILED);
  mprotect(region, 4096, PROT_NONE); /* guard */
  uint8_t* stack = region + 4096;
  memset(stack, 0xa5, STACK_SIZE);
  getcontext(&work_ctx);
  work_ctx.uc_stack.ss_sp = stack;
  work_ctx.uc_stack.ss_size = STACK_SIZE;
  work_ctx.uc_link = &main_ctx;
  makecontext(&work_ctx, on_stack, 0);
  swapcontext(&main_ctx, &work_ctx);
  size_t untouched = 0;
  while (untouched < STACK_SIZE && stack[untouched] == 0xa5) untouched++;
  size_t used = STACK_SIZE - untouched;
  printf("stack high-water mark: %zu bytes (bound %u)\n", used, HAK_STACK_BOUND);
  EXPECT_TRUE(used <= HAK_STACK_BOUND);
  munmap(region, STACK_SIZE + 4096);
}

TEST_MAIN()
