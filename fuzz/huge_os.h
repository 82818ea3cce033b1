/* A fake OS and clock for the BigCache and batch-queue fuzzers: real
 * mappings (hakmem writes headers into them), a clock the input advances,
 * and checks on every madvise, munmap and mremap against the blocks the
 * harness knows to be live: releasing live memory, moving pages out of or
 * onto it, or unmapping a range twice, is a finding. */
#ifndef HAK_FUZZ_HUGE_OS_H
#define HAK_FUZZ_HUGE_OS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "src/internal.h"

#define LIVE_MAX 64
typedef struct {
  char* p;
  size_t size;
  const void* site;
} live_t;

static live_t fz_live[LIVE_MAX];
static uint64_t fz_now = 1000000000ull;
static int fz_in_collect;

static uint64_t fz_clock(void) { return fz_now; }

static void fz_check_range(const char* what, void* addr, size_t size) {
  uintptr_t a = (uintptr_t)addr, e = a + size;
  for (int i = 0; i < LIVE_MAX; i++) {
    if (fz_live[i].p == NULL) continue;
    /* the block and the page holding its header (the 64 bytes below it) */
    uintptr_t la = ((uintptr_t)fz_live[i].p - HAK_HUGE_HEADER) & ~(uintptr_t)4095, le = (uintptr_t)fz_live[i].p + fz_live[i].size;
    if (a < le && la < e) {
      fprintf(stderr, "fuzz: %s of [%#lx, %#lx) covers live block %d at %p size %zu\n", what, (unsigned long)a,
              (unsigned long)e, i, (void*)fz_live[i].p, fz_live[i].size);
      abort();
    }
  }
}

static int fz_advise(void* addr, size_t size, int advice) {
  if (advice == MADV_FREE || advice == MADV_DONTNEED) fz_check_range("madvise", addr, size);
  return _hak_os_default.advise(addr, size, advice);
}

static int fz_unmap(void* addr, size_t size) {
  fz_check_range("munmap", addr, size);
  return _hak_os_default.unmap(addr, size);
}

/* Pages moved out of a live block, or onto one, are a finding too. */
static int fz_remap(void* old, size_t old_size, void* dst, size_t new_size) {
  fz_check_range("mremap from", old, old_size);
  if (dst != old) fz_check_range("mremap onto", dst, new_size);
  return _hak_os_default.remap(old, old_size, dst, new_size);
}

static int fz_move_keep(void* src, size_t size, void* dst) {
  fz_check_range("mremap (kept) from", src, size);
  fz_check_range("mremap (kept) onto", dst, size);
  return _hak_os_default.move_keep(src, size, dst);
}

static hak_os_t fz_os;

static void fz_install(void) {
  fz_os = _hak_os_default;
  fz_os.now_ns = fz_clock;
  fz_os.advise = fz_advise;
  fz_os.unmap = fz_unmap;
  fz_os.remap = fz_remap;
  fz_os.move_keep = fz_move_keep;
  _hak_os = &fz_os;
  /* the huge tier under a fixed threshold: with the (default) evolving
   * policy a site may learn to put 1 MiB blocks in the segments, which
   * have no header page (the API fuzzers cover the policy) */
  _hak_options[HAK_OPT_MODE] = 0;
  _hak_options[HAK_OPT_HUGE_THRESHOLD] = 256 << 10;
}

/* Touches a block's first and last page and a page in the middle. */
static void fz_touch(char* p, size_t n, char v) {
  p[0] = v;
  p[n / 2] = v;
  p[n - 1] = v;
}

static int fz_intact(const char* p, size_t n, char v) { return p[0] == v && p[n / 2] == v && p[n - 1] == v; }

#endif
