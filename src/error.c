/* Misuse reports: one line on stderr naming the error, the API function and
 * the address, written without allocating; then abort() unless
 * HAKMEM_ON_ERROR=report, in which case the caller leaves the block alone. */
#include <stdlib.h>
#include <unistd.h>

#include "internal.h"

static _Atomic(uint64_t) err_counts[HAK_ERR_CORRUPT + 1];

static const char* const err_names[] = {
    [HAK_ERR_DOUBLE_FREE] = "double free",
    [HAK_ERR_INVALID_FREE] = "invalid pointer (not allocated by hakmem)",
    [HAK_ERR_FREED_USABLE_SIZE] = "use of freed block",
    [HAK_ERR_CORRUPT] = "heap corruption",
};

static const char* const fn_names[] = {
    [HAK_FN_FREE] = "free",
    [HAK_FN_REALLOC] = "realloc",
    [HAK_FN_USABLE_SIZE] = "malloc_usable_size",
    [HAK_FN_MALLOC] = "malloc",
    [HAK_FN_DELETE] = "operator delete",
};

void _hak_error(hak_error_t err, hak_fn_t fn, const void* p) { _hak_error_what(err, fn, p, NULL); }

/* what: the check that failed (heap corruption), or NULL. */
void _hak_error_what(hak_error_t err, hak_fn_t fn, const void* p, const char* what) {
  hak_atomic_add(err_counts[err], 1);
  HAK_OUT(o, STDERR_FILENO, 512);
  _hak_out_str(&o, "hakmem: error: ");
  _hak_out_str(&o, err_names[err]);
  _hak_out_str(&o, " in ");
  _hak_out_str(&o, fn_names[fn]);
  _hak_out_str(&o, "(");
  _hak_out_hex(&o, (uintptr_t)p);
  _hak_out_str(&o, ")");
  if (what != NULL) {
    _hak_out_str(&o, ": ");
    _hak_out_str(&o, what);
  }
  _hak_out_str(&o, " [pid ");
  _hak_out_u64(&o, (uint64_t)getpid());
  _hak_out_str(&o, hak_option(HAK_OPT_ON_ERROR) == 0 ? "], aborting\n" : "], ignored\n");
  _hak_out_flush(&o);
  if (hak_option(HAK_OPT_ON_ERROR) == 0) abort();
}

void _hak_warning(const char* msg, const char* detail) {
  HAK_OUT(o, STDERR_FILENO, 512);
  _hak_out_str(&o, "hakmem: warning: ");
  _hak_out_str(&o, msg);
  if (detail != NULL) _hak_out_str(&o, detail);
  _hak_out_str(&o, "\n");
  _hak_out_flush(&o);
}

void _hak_error_stats(hak_stats_t* st) {
  st->errors_double_free = atomic_load(&err_counts[HAK_ERR_DOUBLE_FREE]);
  st->errors_invalid_free = atomic_load(&err_counts[HAK_ERR_INVALID_FREE]);
  st->errors_freed_usable_size = atomic_load(&err_counts[HAK_ERR_FREED_USABLE_SIZE]);
  st->errors_corrupt = atomic_load(&err_counts[HAK_ERR_CORRUPT]);
}
