/* Options: one table, read once at process start from HAKMEM_<NAME>.
 * A bad value is reported on stderr and the default kept.  README.md's
 * options table lists exactly these rows (options_test checks it). */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

typedef struct hak_option_desc_s {
  const char* name;        /* environment variable is HAKMEM_<name>         */
  long def, min, max;
  const char* const* words; /* accepted words (value = index), or NULL      */
  bool is_string;
  const char* doc;
  bool unsafe; /* weakens checks or writes files: ignored when AT_SECURE */
} hak_option_desc_t;

static const char* const on_error_words[] = {"abort", "report", NULL};
static const char* const stats_words[] = {"0", "1", "json", NULL};
static const char* const mode_words[] = {"baseline", "evolving", NULL};

#define KiB 1024L
#define MiB (1024L * 1024L)

static const hak_option_desc_t option_descs[HAK_OPT_COUNT] = {
    [HAK_OPT_ON_ERROR] = {"ON_ERROR", 0, 0, 1, on_error_words, false,
                          "abort: report misuse and abort; report: report and leave the block alone", true},
    [HAK_OPT_STATS] = {"STATS", 0, 0, 2, stats_words, false,
                       "0: nothing; 1: statistics as text at exit; json: one JSON line at exit", false},
    [HAK_OPT_SEGMENT_CACHE] = {"SEGMENT_CACHE", 4, 0, 1024, NULL, false,
                               "empty 4 MiB segments kept for reuse (decommitted once cached a purge delay) before unmapping; more while the heap is large (an eighth of the segments in use, up to 256), the surplus unmapped once cached two purge delays; 0: none", false},
    [HAK_OPT_HUGE_THRESHOLD] = {"HUGE_THRESHOLD", 2 * MiB, 256 * KiB, 256 * MiB, NULL, false,
                                "bytes; requests this large or larger are mapped directly", false},
    [HAK_OPT_STATS_FILE] = {"STATS_FILE", 0, 0, 0, NULL, true,
                            "append the statistics to this file instead of stderr", true},
    [HAK_OPT_THP] = {"THP", 1, 0, 1, NULL, false,
                     "1: advise transparent huge pages for blocks of 2 MiB or more of a call site and size range whose last probed block had 3/4 of its first 2 MiB written (its first two blocks of at most 4 MiB meanwhile)", false},
    [HAK_OPT_BIGCACHE_BYTES] = {"BIGCACHE_BYTES", 64 * MiB, 0, 64 * 1024 * MiB, NULL, false,
                                "bytes of freed huge blocks BigCache keeps mapped for reuse (the memory they may hold: their pages less those moved out); during a burst of frees (each within PURGE_DELAY_MS of the last), up to twice this, as far as the live huge blocks' peak less what is live allows", false},
    [HAK_OPT_BIGCACHE_SLOTS] = {"BIGCACHE_SLOTS", 4, 0, 8, NULL, false,
                                "blocks kept per (call site, size class)", false},
    [HAK_OPT_BIGCACHE_EXPIRY_MS] = {"BIGCACHE_EXPIRY_MS", 2000, 0, 3600000, NULL, false,
                                    "a block idle in BigCache this long goes to the batch queue", false},
    [HAK_OPT_BATCH_BYTES] = {"BATCH_BYTES", 8 * MiB, 0, 1024 * MiB, NULL, false,
                             "the batch queue is released (madvise) once it holds this many bytes", false},
    [HAK_OPT_BATCH_RANGES] = {"BATCH_RANGES", 256, 1, 256, NULL, false,
                              "... or this many ranges", false},
    [HAK_OPT_BATCH_DEADLINE_MS] = {"BATCH_DEADLINE_MS", 100, 0, 60000, NULL, false,
                                   "... or when its oldest range has waited this long", false},
    [HAK_OPT_RETAIN_BYTES] = {"RETAIN_BYTES", 16 * MiB, 0, 64 * 1024 * MiB, NULL, false,
                              "released mappings kept for reuse; beyond this they are unmapped", false},
    [HAK_OPT_PURGE_DELAY_MS] = {"PURGE_DELAY_MS", 25, 0, 3600000, NULL, false,
                                "free slices and retained mappings idle this long (up to twice) are decommitted; 0: at once", false},
    [HAK_OPT_MODE] = {"MODE", 1, 0, 1, mode_words, false,
                      "baseline: fixed HUGE_THRESHOLD; evolving: per-site thresholds learned (UCB1, ELO)", false},
    [HAK_OPT_SEED] = {"SEED", 0, 0, __LONG_MAX__, NULL, false,
                      "seed of the learners' random choices; 0: a random seed", false},
    [HAK_OPT_SECURE] = {"SECURE", 0, 0, 2, NULL, false,
                        "hardening beyond the default: 1 canaries, zero-on-free checked at reuse, random carving; 2 also a quarantine of freed blocks, guard pages after large blocks, freed huge blocks kept PROT_NONE (README: Hardening)", false},
    [HAK_OPT_WRAPPERS] = {"WRAPPERS", 1, 0, 1, NULL, false,
                          "1: a call site whose function allocates for 4 or more callers (xmalloc-style) counts as its caller's, up to 4 callers up (x86-64); 0: the immediate caller", false},
};

long _hak_options[HAK_OPT_COUNT] = {
    [HAK_OPT_ON_ERROR] = 0,
    [HAK_OPT_STATS] = 0,
    [HAK_OPT_SEGMENT_CACHE] = 4,
    [HAK_OPT_HUGE_THRESHOLD] = 2 * MiB,
    [HAK_OPT_THP] = 1,
    [HAK_OPT_BIGCACHE_BYTES] = 64 * MiB,
    [HAK_OPT_BIGCACHE_SLOTS] = 4,
    [HAK_OPT_BIGCACHE_EXPIRY_MS] = 2000,
    [HAK_OPT_BATCH_BYTES] = 8 * MiB,
    [HAK_OPT_BATCH_RANGES] = 256,
    [HAK_OPT_BATCH_DEADLINE_MS] = 100,
    [HAK_OPT_RETAIN_BYTES] = 16 * MiB,
    [HAK_OPT_PURGE_DELAY_MS] = 25,
};
const char* _hak_stats_file;
int _hak_options_secure = -1;
/* A copy: programs rewrite their environment block (process titles). */
static char stats_file_buf[4096];

/* Options are read at the first allocation, which can come before libc has
 * set up the environment (ld.so allocates through us); then they are read
 * again from the library constructor, once the environment exists. */
static bool options_read;

/* Tests: read the environment again. */
void _hak_options_reload(void) {
  options_read = false;
  _hak_stats_file = NULL;
  _hak_options_init();
}

/* Parses a decimal number with an optional k/m/g suffix. */
static bool parse_long(const char* s, long* out) {
  if (*s == '\0') return false;
  long v = 0;
  for (; *s >= '0' && *s <= '9'; s++) {
    if (v > (__LONG_MAX__ - 9) / 10) return false;
    v = v * 10 + (*s - '0');
  }
  long mul = 1;
  if (*s == 'k' || *s == 'K') mul = KiB, s++;
  else if (*s == 'm' || *s == 'M') mul = MiB, s++;
  else if (*s == 'g' || *s == 'G') mul = 1024 * MiB, s++;
  if (*s != '\0' || v > __LONG_MAX__ / mul) return false;
  *out = v * mul;
  return true;
}

static void option_bad(const hak_option_desc_t* d, const char* value) {
  HAK_OUT(o, 2, 512);
  _hak_out_str(&o, "hakmem: warning: HAKMEM_");
  _hak_out_str(&o, d->name);
  _hak_out_str(&o, "=\"");
  for (size_t i = 0; value[i] && i < 64; i++) {
    char c[2] = {value[i] >= 32 && value[i] < 127 ? value[i] : '?', 0};
    _hak_out_str(&o, c);
  }
  _hak_out_str(&o, "\" is invalid; using the default ");
  if (d->words) _hak_out_str(&o, d->words[d->def]);
  else _hak_out_u64(&o, (uint64_t)d->def);
  _hak_out_str(&o, "\n");
  _hak_out_flush(&o);
}

/* Value of one option from its string; false if invalid. */
static bool option_parse(const hak_option_desc_t* d, const char* value, long* out) {
  if (d->words) {
    for (long i = 0; d->words[i]; i++)
      if (strcmp(value, d->words[i]) == 0) return (*out = i), true;
    if (d->words == stats_words && strcmp(value, "text") == 0) return (*out = 1), true;
    return false;
  }
  return parse_long(value, out) && *out >= d->min && *out <= d->max;
}


void _hak_options_init(void) {
  extern char** environ;
  if (options_read || environ == NULL) return;
  options_read = true;
  bool secure = _hak_options_secure >= 0 ? _hak_options_secure == 1 : _hak_os_secure();
  char name[64];
  for (int i = 0; i < HAK_OPT_COUNT; i++) {
    const hak_option_desc_t* d = &option_descs[i];
    strcpy(name, "HAKMEM_");
    strcat(name, d->name);
    const char* value = getenv(name);
    _hak_options[i] = d->def;
#ifdef HAK_FAULT_SECURE_IGNORED /* fault injection: set-uid programs obey HAKMEM_* */
    secure = false;
#endif
    if (d->unsafe && secure) value = NULL;
    if (value == NULL) continue;
    if (d->is_string) {
      size_t len = strlen(value), at = 0;
      /* a relative path is the start directory's, not the exit one's */
#ifdef HAK_FAULT_STATS_FILE_RELATIVE /* fault injection: resolved against the exit-time directory */
      if (0) {
#else
      if (i == HAK_OPT_STATS_FILE && len > 0 && value[0] != '/' && _hak_os_cwd(stats_file_buf, sizeof(stats_file_buf))) {
#endif
        at = strlen(stats_file_buf);
        stats_file_buf[at++] = '/';
      }
      if (i == HAK_OPT_STATS_FILE && len > 0 && at + len >= sizeof(stats_file_buf)) option_bad(d, value);
      else if (i == HAK_OPT_STATS_FILE && len > 0) {
        memcpy(stats_file_buf + at, value, len + 1);
        _hak_stats_file = stats_file_buf;
#ifdef HAK_FAULT_STATS_FILE_ENV_POINTER /* fault injection: keep a pointer into the environment */
        _hak_stats_file = value;
#endif
      }
      continue;
    }
    long v;
    if (option_parse(d, value, &v)) _hak_options[i] = v;
    else option_bad(d, value);
  }
}

/* Prints the table as README.md's markdown rows (used by options_test). */
void hak_options_print_markdown(int fd) {
  HAK_OUT(o, fd, 512);
  for (int i = 0; i < HAK_OPT_COUNT; i++) {
    const hak_option_desc_t* d = &option_descs[i];
    _hak_out_str(&o, "| `HAKMEM_");
    _hak_out_str(&o, d->name);
    _hak_out_str(&o, "` | ");
    if (d->is_string) _hak_out_str(&o, "(unset)");
    else if (d->words) _hak_out_str(&o, d->words[d->def]);
    else _hak_out_u64(&o, (uint64_t)d->def);
    _hak_out_str(&o, " | ");
    if (d->is_string) _hak_out_str(&o, "path");
    else if (d->words) {
      for (int w = 0; d->words[w]; w++) {
        if (w) _hak_out_str(&o, ", ");
        _hak_out_str(&o, d->words[w]);
      }
    } else {
      _hak_out_u64(&o, (uint64_t)d->min);
      _hak_out_str(&o, " .. ");
      _hak_out_u64(&o, (uint64_t)d->max);
    }
    _hak_out_str(&o, " | ");
    _hak_out_str(&o, d->doc);
    _hak_out_str(&o, " |\n");
  }
  _hak_out_flush(&o);
}
