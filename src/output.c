/* Formatted output without stdio and without allocating: a fixed buffer
 * flushed with write(2).  Used by error reports, warnings and statistics,
 * which may run inside malloc. */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

void _hak_out_flush(hak_out_t* o) {
  int saved_errno = errno; /* reports happen inside free, which keeps errno */
  size_t done = 0;
  while (done < o->len) {
    ssize_t n = _hak_os_write_report(o->fd, o->buf + done, o->len - done); /* no cancellation, no SIGPIPE */
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += (size_t)n;
  }
  o->len = 0;
#ifndef HAK_FAULT_ERRNO_CLOBBER
  errno = saved_errno;
#else
  (void)saved_errno;
#endif
}

static void out_char(hak_out_t* o, char c) {
  if (o->len == o->cap) _hak_out_flush(o);
  o->buf[o->len++] = c;
}

void _hak_out_str(hak_out_t* o, const char* s) {
  while (*s) out_char(o, *s++);
}

void _hak_out_u64(hak_out_t* o, uint64_t v) {
  char tmp[24];
  size_t n = 0;
  do {
    tmp[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v != 0);
  while (n > 0) out_char(o, tmp[--n]);
}

void _hak_out_hex(hak_out_t* o, uintptr_t v) {
  static const char digits[] = "0123456789abcdef";
  char tmp[2 * sizeof(v)];
  size_t n = 0;
  do {
    tmp[n++] = digits[v & 15];
    v >>= 4;
  } while (v != 0);
  _hak_out_str(o, "0x");
  while (n > 0) out_char(o, tmp[--n]);
}
