/* Statistics: collected from each module on demand and printed from the one
 * field list in hakmem.h (HAK_STATS_FIELDS), as text or as one JSON object
 * with a nested object per group.  Printing never allocates. */
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

void hak_stats_get(hak_stats_t* st) {
  memset(st, 0, sizeof(*st));
  _hak_heap_stats(st);
  _hak_huge_stats(st);
  _hak_bigcache_stats(st);
  _hak_madvq_stats(st);
  _hak_os_stats(st);
  _hak_segment_stats(st);
  _hak_purge_stats(st);
  _hak_site_stats(st);
  _hak_wrapper_stats(st);
  _hak_error_stats(st);
  _hak_policy_stats(st);
  _hak_remote_heapless_stats(st);
  _hak_fork_stats(st);
}

static void out_double(hak_out_t* o, double v) {
  if (v != v) v = 0;
  if (v < 0) {
    _hak_out_str(o, "-");
    v = -v;
  }
  uint64_t whole = (uint64_t)v;
  _hak_out_u64(o, whole);
  _hak_out_str(o, ".");
  uint64_t frac = (uint64_t)((v - (double)whole) * 10.0);
  _hak_out_u64(o, frac > 9 ? 9 : frac);
}

/* The sites learning worked at (evolving mode): the HAK_TOP_SITES with the
 * most requests the policy routed, copied into static tables held by
 * site_buf_busy from the copy to the end of the printing (a report that
 * finds them busy, another thread printing, leaves the sites out). */
#define HAK_TOP_SITES 8
static hak_site_info_t site_buf[1024];
static _Atomic(bool) site_buf_busy;

/* Fills top and returns how many, with site_buf_busy taken: the caller
 * releases it with top_sites_done() once it has printed them. */
static size_t top_sites(hak_site_info_t top[HAK_TOP_SITES]) {
  size_t n = hak_sites_get(site_buf, 1024), k = 0;
  if (n > 1024) n = 1024;
  for (size_t i = 0; i < n; i++) {
    if (site_buf[i].large == 0) continue;
    size_t j = k < HAK_TOP_SITES ? k++ : HAK_TOP_SITES;
    while (j > 0 && top[j - 1].large < site_buf[i].large) {
      if (j < HAK_TOP_SITES) top[j] = top[j - 1];
      j--;
    }
    if (j < HAK_TOP_SITES) top[j] = site_buf[i];
  }
  return k;
}

static bool top_sites_take(void) { return !atomic_exchange_explicit(&site_buf_busy, true, memory_order_acquire); }
static void top_sites_done(void) { atomic_store_explicit(&site_buf_busy, false, memory_order_release); }

static hak_site_info_t top_buf[HAK_TOP_SITES];

static void json_sites(hak_out_t* o) {
  bool mine = top_sites_take();
  size_t k = mine ? top_sites(top_buf) : 0;
  _hak_out_str(o, ",\"sites\":[");
  for (size_t i = 0; i < k; i++) {
    const hak_site_info_t* t = &top_buf[i];
    _hak_out_str(o, i ? ",{\"site\":\"" : "{\"site\":\"");
    _hak_out_hex(o, (uintptr_t)t->site);
#define SITE_FIELD(name) \
  _hak_out_str(o, ",\"" #name "\":");   \
  _hak_out_u64(o, t->name);
    _hak_out_str(o, "\"");
    SITE_FIELD(allocs) SITE_FIELD(large) SITE_FIELD(threshold) SITE_FIELD(epochs) SITE_FIELD(explored)
    SITE_FIELD(cost_ns) SITE_FIELD(explore_ns) SITE_FIELD(overrun_ns)
#undef SITE_FIELD
    _hak_out_str(o, t->settled ? ",\"settled\":true}" : ",\"settled\":false}");
  }
  _hak_out_str(o, "]");
  if (mine) top_sites_done();
}

static void text_sites(hak_out_t* o) {
  if (!top_sites_take()) return;
  size_t k = top_sites(top_buf);
  _hak_out_str(o, "  sites (most requests above 128 KiB first): threshold learned, epochs measured / explored,\n"
                  "  the site's cost and what exploring it cost (budget: 2 % of the cost)\n");
  _hak_out_str(o, "    site                large  threshold KiB  epochs  explored  cost us  explore us  settled\n");
  for (size_t i = 0; i < k; i++) {
    const hak_site_info_t* t = &top_buf[i];
    _hak_out_str(o, "    ");
    _hak_out_hex(o, (uintptr_t)t->site);
    _hak_out_str(o, "  ");
    _hak_out_u64(o, t->large);
    _hak_out_str(o, "  ");
    if (t->threshold) _hak_out_u64(o, t->threshold >> 10);
    else _hak_out_str(o, "default");
    _hak_out_str(o, "  ");
    _hak_out_u64(o, t->epochs);
    _hak_out_str(o, "  ");
    _hak_out_u64(o, t->explored);
    _hak_out_str(o, "  ");
    _hak_out_u64(o, t->cost_ns / 1000);
    _hak_out_str(o, "  ");
    _hak_out_u64(o, t->explore_ns / 1000);
    _hak_out_str(o, t->settled ? "  yes\n" : "  no\n");
  }
  top_sites_done();
}

/* The learn group's non-numeric members: mode, state, the ELO table. */
static void json_learn_extras(hak_out_t* o) {
  _hak_out_str(o, ",\"mode\":\"");
  _hak_out_str(o, _hak_policy_mode_name());
  _hak_out_str(o, "\",\"state\":\"");
  _hak_out_str(o, _hak_policy_state_name());
  _hak_out_str(o, "\",\"elo\":[");
  hak_elo_t elo;
  if (_hak_policy_elo(&elo)) {
    for (int i = 0; i < HAK_ELO_CANDIDATES; i++) {
      _hak_out_str(o, i ? ",{\"threshold\":" : "{\"threshold\":");
      _hak_out_u64(o, elo.c[i].threshold);
      _hak_out_str(o, ",\"rating\":");
      out_double(o, elo.c[i].rating);
      _hak_out_str(o, ",\"samples\":");
      _hak_out_u64(o, elo.c[i].samples);
      _hak_out_str(o, elo.c[i].active ? ",\"active\":true}" : ",\"active\":false}");
    }
  }
  _hak_out_str(o, "]");
  json_sites(o);
}

/* The ELO leaderboard, best first (text statistics, evolving mode). */
static void text_leaderboard(hak_out_t* o) {
  hak_elo_t elo;
  if (!_hak_policy_elo(&elo)) {
    _hak_out_str(o, "  ELO leaderboard: no large allocation sampled yet\n");
    return;
  }
  int order[HAK_ELO_CANDIDATES];
  for (int i = 0; i < HAK_ELO_CANDIDATES; i++) order[i] = i;
  for (int i = 1; i < HAK_ELO_CANDIDATES; i++)
    for (int j = i; j > 0 && elo.c[order[j]].rating > elo.c[order[j - 1]].rating; j--) {
      int t = order[j];
      order[j] = order[j - 1];
      order[j - 1] = t;
    }
  _hak_out_str(o, "  ELO leaderboard (mmap threshold candidates)\n");
  _hak_out_str(o, "    rank  threshold KiB  rating  samples  active\n");
  for (int r = 0; r < HAK_ELO_CANDIDATES; r++) {
    const hak_elo_cand_t* c = &elo.c[order[r]];
    _hak_out_str(o, "    ");
    _hak_out_u64(o, (uint64_t)r + 1);
    _hak_out_str(o, r + 1 < 10 ? "     " : "    ");
    _hak_out_u64(o, c->threshold >> 10);
    _hak_out_str(o, "  ");
    out_double(o, c->rating);
    _hak_out_str(o, "  ");
    _hak_out_u64(o, c->samples);
    _hak_out_str(o, c->active ? "  yes\n" : "  no\n");
  }
}

/* The output buffer: a report goes out in one write(2), so lines of
 * processes appending to one file never interleave.  It is static, not on
 * the stack (a thread's stack may be small); a print that finds it busy
 * (another thread printing) writes through a small stack buffer instead,
 * in several writes. */
static char print_buf[16384];
static _Atomic(bool) print_busy;

void hak_stats_print(int fd, int json) {
  hak_stats_t st;
  hak_stats_get(&st);
#ifdef HAK_FAULT_STATS_ON_STACK /* fault injection: 16 KiB on the stack */
  HAK_OUT(o, fd, 16384);
  bool mine = false;
  (void)print_buf;
#else
  char small[256];
  bool mine = !atomic_exchange_explicit(&print_busy, true, memory_order_acquire);
  hak_out_t o = {.fd = fd, .len = 0, .cap = mine ? sizeof(print_buf) : sizeof(small), .buf = mine ? print_buf : small};
#endif
  const char* group = NULL;
  if (json) {
    _hak_out_str(&o, "{\"pid\":");
    _hak_out_u64(&o, (uint64_t)getpid());
    _hak_out_str(&o, ",\"secure\":"); /* HAKMEM_SECURE's level */
    _hak_out_u64(&o, (uint64_t)_hak_secure);
#define HAK_X(g, n, doc)                                           \
  if (group == NULL || strcmp(group, #g) != 0) {                   \
    if (group != NULL && strcmp(group, "learn") == 0) json_learn_extras(&o); \
    _hak_out_str(&o, group ? "},\"" #g "\":{" : ",\"" #g "\":{"); \
    group = #g;                                                    \
  } else {                                                         \
    _hak_out_str(&o, ",");                                         \
  }                                                                \
  _hak_out_str(&o, "\"" #n "\":");                                 \
  _hak_out_u64(&o, st.g##_##n);
    HAK_STATS_FIELDS(HAK_X)
#undef HAK_X
    if (group != NULL && strcmp(group, "learn") == 0) json_learn_extras(&o);
    _hak_out_str(&o, "}}\n");
  } else {
    _hak_out_str(&o, "hakmem statistics (pid ");
    _hak_out_u64(&o, (uint64_t)getpid());
    _hak_out_str(&o, ", mode ");
    _hak_out_str(&o, _hak_policy_mode_name());
    _hak_out_str(&o, ", learning ");
    _hak_out_str(&o, _hak_policy_state_name());
    _hak_out_str(&o, ", secure level ");
    _hak_out_u64(&o, (uint64_t)_hak_secure);
    _hak_out_str(&o, ")\n");
#define HAK_X(g, n, doc)                           \
  _hak_out_str(&o, "  " #g "." #n);                \
  for (size_t pad = strlen(#g "." #n); pad < 28; pad++) _hak_out_str(&o, " "); \
  _hak_out_u64(&o, st.g##_##n);                    \
  _hak_out_str(&o, "\n");
    HAK_STATS_FIELDS(HAK_X)
#undef HAK_X
    if (hak_option(HAK_OPT_MODE) == 1) {
      text_leaderboard(&o);
      text_sites(&o);
    }
  }
  _hak_out_flush(&o);
  if (mine) atomic_store_explicit(&print_busy, false, memory_order_release);
}

void _hak_heapinfo(hak_heapinfo_t* hi) {
  hak_stats_t st;
  hak_stats_get(&st);
  hi->arena = (st.segments_current + st.segments_cached) * HAK_SEGMENT_SIZE;
  hi->fordblks = st.segments_cached * HAK_SEGMENT_SIZE;
  hi->uordblks = hi->arena - hi->fordblks;
  hi->hblks = st.served_huge - st.freed_huge;
  hi->hblkhd = _hak_huge_live_bytes();
  hi->keepcost = hi->fordblks + st.bigcache_bytes + st.batch_retained_bytes;
}

int _hak_trim(void) {
  hak_stats_t a, b;
  hak_stats_get(&a);
  hak_collect();
  hak_stats_get(&b);
  /* unmapped, advised from the batch queue, or decommitted in place */
#ifndef HAK_FAULT_TRIM_IGNORES_PURGE /* fault injection: the first version counted unmaps and batch advice only */
  if (b.purge_bytes > a.purge_bytes) return 1;
#endif
  return b.os_mapped_bytes < a.os_mapped_bytes || b.batch_bytes_advised > a.batch_bytes_advised;
}

/* The stderr the program started with: exit statistics without a file go
 * there only if fd 2 is still that file.  A program that closed stderr
 * and opened a data file on fd 2 found 70 lines of statistics appended to
 * it (review L's fd2.c); one that closes stderr at exit (gnulib's
 * close_stdout: sort, xz) gets none: HAKMEM_STATS_FILE catches them. */
static uint64_t stderr_id;
void _hak_stats_note_stderr(void) { stderr_id = _hak_os_fd_id(STDERR_FILENO); }
static bool stderr_is_original(void) {
#ifdef HAK_FAULT_STATS_ANY_STDERR /* fault injection: whatever fd 2 is at exit */
  return true;
#endif
  return stderr_id != 0 && _hak_os_fd_id(STDERR_FILENO) == stderr_id;
}

/* HAKMEM_STATS=1|json: print at exit, to stderr or appended to
 * HAKMEM_STATS_FILE (one line per process for json); a file that cannot
 * be opened falls back to stderr, under the same rule.  The file is opened
 * and closed with raw system calls: a cancel pending on the exiting
 * thread must not act there (review M's c2.c: exit(7) from a thread with
 * a cancel pending hung, or from main returned 0). */
void _hak_stats_at_exit(void) {
  long mode = hak_option(HAK_OPT_STATS);
  if (mode == 0) return;
  int fd = -1;
  /* a file that names stderr itself (never opened: O_NOFOLLOW refuses
   * /dev/stderr, a link) is fd 2 whatever it is now: asked for (review N) */
  const char* f = _hak_stats_file;
  bool named_stderr = f != NULL && (strcmp(f, "/dev/stderr") == 0 || strcmp(f, "/dev/fd/2") == 0 ||
                                    strcmp(f, "/proc/self/fd/2") == 0);
  if (named_stderr) fd = STDERR_FILENO;
  else if (_hak_stats_file != NULL) {
#ifdef HAK_FAULT_STATS_FOLLOWS_SYMLINK /* fault injection */
    fd = _hak_os_open_append(_hak_stats_file, true);
#else
    fd = _hak_os_open_append(_hak_stats_file, false);
#endif
    if (fd < 0 && stderr_is_original()) _hak_warning("cannot open HAKMEM_STATS_FILE ", _hak_stats_file);
  }
  if (fd < 0) {
    if (!stderr_is_original()) return;
    fd = STDERR_FILENO;
  }
  hak_stats_print(fd, mode == 2);
  if (fd != STDERR_FILENO) _hak_os_close(fd);
}
