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
  _hak_site_stats(st);
  _hak_error_stats(st);
  st->freed_small += _hak_remote_small_frees();
  st->freed_large += _hak_remote_large_frees();
}

void hak_stats_print(int fd, int json) {
  hak_stats_t st;
  hak_stats_get(&st);
  hak_out_t o = {.fd = fd};
  const char* group = NULL;
  if (json) {
    _hak_out_str(&o, "{\"pid\":");
    _hak_out_u64(&o, (uint64_t)getpid());
#define HAK_X(g, n, doc)                                  \
  if (group == NULL || strcmp(group, #g) != 0) {          \
    _hak_out_str(&o, group ? "},\"" #g "\":{" : ",\"" #g "\":{"); \
    group = #g;                                           \
  } else {                                                \
    _hak_out_str(&o, ",");                                \
  }                                                       \
  _hak_out_str(&o, "\"" #n "\":");                        \
  _hak_out_u64(&o, st.g##_##n);
    HAK_STATS_FIELDS(HAK_X)
#undef HAK_X
    _hak_out_str(&o, "}}\n");
  } else {
    _hak_out_str(&o, "hakmem statistics (pid ");
    _hak_out_u64(&o, (uint64_t)getpid());
    _hak_out_str(&o, ")\n");
#define HAK_X(g, n, doc)                           \
  _hak_out_str(&o, "  " #g "." #n);                \
  for (size_t pad = strlen(#g "." #n); pad < 28; pad++) _hak_out_str(&o, " "); \
  _hak_out_u64(&o, st.g##_##n);                    \
  _hak_out_str(&o, "\n");
    HAK_STATS_FIELDS(HAK_X)
#undef HAK_X
  }
  _hak_out_flush(&o);
}

/* HAKMEM_STATS=1|json: print at exit, to stderr or appended to
 * HAKMEM_STATS_FILE (one line per process for json). */
void _hak_stats_at_exit(void) {
  long mode = hak_option(HAK_OPT_STATS);
  if (mode == 0) return;
  int fd = STDERR_FILENO;
  if (_hak_stats_file != NULL) {
    fd = open(_hak_stats_file, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
      _hak_warning("cannot open HAKMEM_STATS_FILE ", _hak_stats_file);
      fd = STDERR_FILENO;
    }
  }
  hak_stats_print(fd, mode == 2);
  if (fd != STDERR_FILENO) close(fd);
}
