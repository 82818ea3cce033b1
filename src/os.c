/* The OS layer: the only file that calls mmap, munmap, madvise and the
 * clock.  Everything goes through the _hak_os table so tests and fuzzers can
 * substitute a fake OS and a fake clock. */
#define _GNU_SOURCE /* RUSAGE_THREAD */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/auxv.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

/* Files hakmem reads (/proc, sysfs) and writes (reports): raw system calls,
 * never libc's open, read, pread, write or close, which are cancellation
 * points.  malloc and free are not (glibc's are not; programs cancel
 * threads that allocate): review L's cancel1-3.c, a thread with a cancel
 * pending died in open() inside free (its 20 MiB never went back) or
 * under huge_lock (every later huge malloc and fork hung). */
#ifndef HAK_FAULT_CANCELLABLE_IO
#define RAW_OPEN(path, flags, mode) ((int)syscall(SYS_openat, AT_FDCWD, path, flags, mode))
#define RAW_READ(fd, buf, n) syscall(SYS_read, fd, buf, n)
#define RAW_PREAD(fd, buf, n, at) syscall(SYS_pread64, fd, buf, n, at)
#define RAW_WRITE(fd, buf, n) syscall(SYS_write, fd, buf, n)
#define RAW_CLOSE(fd) syscall(SYS_close, fd)
#define RAW_SETFL(fd, flags) syscall(SYS_fcntl, fd, F_SETFL, flags)
#else /* fault injection: libc's calls, cancellation points */
#define RAW_OPEN(path, flags, mode) open(path, flags, mode)
#define RAW_READ(fd, buf, n) read(fd, buf, n)
#define RAW_PREAD(fd, buf, n, at) pread(fd, buf, n, at)
#define RAW_WRITE(fd, buf, n) write(fd, buf, n)
#define RAW_CLOSE(fd) close(fd)
#define RAW_SETFL(fd, flags) fcntl(fd, F_SETFL, flags)
#endif
static int sys_open(const char* path) { return RAW_OPEN(path, O_RDONLY | O_CLOEXEC, 0); }
static ssize_t sys_read(int fd, void* buf, size_t n) {
  ssize_t r = RAW_READ(fd, buf, n);
  if (r > 0) hak_track_defined(buf, (size_t)r); /* MemorySanitizer: the kernel wrote them */
  return r;
}
static ssize_t sys_pread(int fd, void* buf, size_t n, off_t at) {
  ssize_t r = RAW_PREAD(fd, buf, n, at);
  if (r > 0) hak_track_defined(buf, (size_t)r);
  return r;
}
static void sys_close(int fd) { RAW_CLOSE(fd); }
ssize_t _hak_os_write(int fd, const void* buf, size_t n) { return RAW_WRITE(fd, buf, n); }
/* Non-blocking while it opens (a FIFO with no reader: ENXIO, not an exit
 * that waits forever, review N), blocking for the write. */
int _hak_os_open_append(const char* path, bool follow) {
  int fd = RAW_OPEN(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NONBLOCK | (follow ? 0 : O_NOFOLLOW), 0644);
  if (fd >= 0) RAW_SETFL(fd, O_APPEND);
  return fd;
}
void _hak_os_close(int fd) { sys_close(fd); }

/* A report's write (errors, warnings, statistics): SIGPIPE blocked around
 * it, and the one it raised taken back, so a reader that went away costs
 * the report, not the process (review N: HAKMEM_STATS=1 into a closed pipe
 * turned exit(7) into death by SIGPIPE, status 141). */
#define KERNEL_SIGSET_BYTES 8
ssize_t _hak_os_write_report(int fd, const void* buf, size_t n) {
  uint64_t pipe_set = (uint64_t)1 << (SIGPIPE - 1), old = 0, pending = 0;
#ifdef HAK_FAULT_REPORT_SIGPIPE /* fault injection: the write as it is */
  return _hak_os_write(fd, buf, n);
#endif
  syscall(SYS_rt_sigprocmask, SIG_BLOCK, &pipe_set, &old, KERNEL_SIGSET_BYTES);
  syscall(SYS_rt_sigpending, &pending, KERNEL_SIGSET_BYTES);
  ssize_t r = _hak_os_write(fd, buf, n);
  int err = errno;
  if (r < 0 && err == EPIPE && !(pending & pipe_set)) {
    struct timespec zero = {0, 0};
    syscall(SYS_rt_sigtimedwait, &pipe_set, NULL, &zero, KERNEL_SIGSET_BYTES);
  }
  syscall(SYS_rt_sigprocmask, SIG_SETMASK, &old, NULL, KERNEL_SIGSET_BYTES);
  errno = err;
  return r;
}

static void* os_map(void* hint, size_t size) {
  void* p = mmap(hint, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

static int os_unmap(void* addr, size_t size) { return munmap(addr, size) == 0 ? 0 : errno; }

static int os_advise(void* addr, size_t size, int advice) {
  return madvise(addr, size, advice) == 0 ? 0 : errno;
}

static int os_protect(void* addr, size_t size, bool none) {
  return mprotect(addr, size, none ? PROT_NONE : PROT_READ | PROT_WRITE) == 0 ? 0 : errno;
}

/* mremap: dst == old resizes in place (no move), else moves onto dst
 * (MREMAP_FIXED: whatever dst held goes) */
static int os_remap(void* old, size_t old_size, void* dst, size_t new_size) {
  void* r = dst == old ? mremap(old, old_size, new_size, 0)
                       : mremap(old, old_size, new_size, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
  return r == MAP_FAILED ? errno : 0;
}

/* mremap with MREMAP_DONTUNMAP: the pages move onto dst, src stays mapped
 * and empty (Linux 5.13 and later for anonymous memory; EINVAL before) */
static int os_move_keep(void* src, size_t size, void* dst) {
#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4
#endif
  void* r = mremap(src, size, size, MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP, dst);
  return r == MAP_FAILED ? errno : 0;
}

static uint64_t os_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t os_faults(void) {
  struct rusage ru;
  if (getrusage(RUSAGE_THREAD, &ru) != 0) return 0;
  return (uint64_t)ru.ru_minflt + (uint64_t)ru.ru_majflt;
}

/* errno belongs to the program: every call below leaves it as it was (free
 * must, POSIX.1-2024); errors travel as return values. */
#ifdef HAK_FAULT_ERRNO_CLOBBER /* fault injection: the OS calls' errno leaks out */
#define KEEP_ERRNO(stmt) stmt
#else
#define KEEP_ERRNO(stmt)       \
  do {                         \
    int saved_errno_ = errno;  \
    stmt;                      \
    errno = saved_errno_;      \
  } while (0)
#endif

/* The checker only (not in the table: it asks about real mappings, which
 * the fake OSes hand out too). */
int _hak_os_resident(const void* page) {
  unsigned char vec = 0;
  int rc;
  KEEP_ERRNO(rc = mincore((void*)((uintptr_t)page & ~(uintptr_t)4095), 1, &vec));
  return rc != 0 ? -1 : (vec & 1);
}

/* Where the call is not allowed (seccomp, some containers: EPERM, ENOSYS),
 * through a pipe: write() of unreadable memory fails with EFAULT too.  Never
 * a direct read: a page written and then made PROT_NONE is resident (a
 * review crashed the checker so). */
HAK_NO_SANITIZE bool _hak_os_peek(const void* addr, void* out, size_t n) {
  struct iovec local = {out, n}, remote = {(void*)addr, n};
  ssize_t r;
  int err = 0;
  KEEP_ERRNO({
    r = process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
    err = errno;
  });
  if (r == (ssize_t)n) return true;
  if (r >= 0 || err == EFAULT || n > 4096) return false;
  bool ok = false;
  KEEP_ERRNO({
    int fd[2];
    if (pipe2(fd, O_CLOEXEC) == 0) {
#ifdef HAK_FAULT_PEEK_DIRECT /* fault injection: the first version read it directly */
      memcpy(out, addr, n);
      ok = true;
#else
      ok = _hak_os_write(fd[1], addr, n) == (ssize_t)n && sys_read(fd[0], out, n) == (ssize_t)n;
#endif
      sys_close(fd[0]);
      sys_close(fd[1]);
    }
  });
  return ok;
}

/* A wait of us microseconds: the raw system call, not nanosleep, which is
 * a cancellation point (malloc and free are not: review H's cancel.c, a
 * thread cancelled in free at the fork gate leaked its block). */
static void os_pause_us(unsigned us) {
  struct timespec ts = {0, (long)us * 1000};
  int saved = errno;
  syscall(SYS_nanosleep, &ts, NULL);
  errno = saved;
}

const hak_os_t _hak_os_default = {os_map,     os_unmap,   os_advise,    os_now_ns,  os_faults,
                                  os_protect, os_remap,   os_move_keep, os_pause_us};
const hak_os_t* _hak_os = &_hak_os_default;

static _Atomic(uint64_t) os_munmap_calls, os_madvise_calls, os_guard_pages;
_Atomic(uint64_t) _hak_os_map_count; /* mmap calls: also tells the policy a block was fresh */
static _Atomic(uint64_t) os_mapped, os_mapped_peak;
static _Atomic(uintptr_t) os_hint; /* where the next aligned mapping may go */

static void os_account(size_t size, bool map) {
  if (map) {
    uint64_t now = hak_atomic_add(os_mapped, size) + size;
    uint64_t peak = atomic_load_explicit(&os_mapped_peak, memory_order_relaxed);
    while (now > peak && !atomic_compare_exchange_weak_explicit(&os_mapped_peak, &peak, now,
                                                                 memory_order_relaxed, memory_order_relaxed)) {
    }
  } else {
    atomic_fetch_sub_explicit(&os_mapped, size, memory_order_relaxed);
  }
}

static void os_unmap_counted(void* addr, size_t size) {
  if (size == 0) return;
  hak_atomic_add(os_munmap_calls, 1);
  KEEP_ERRNO(_hak_os->unmap(addr, size));
}

/* A mapping of size bytes whose address is a multiple of align.  First try
 * the hinted address (usually right after the previous aligned mapping);
 * otherwise over-map by align and trim both ends. */
static void* os_alloc_aligned(size_t size, size_t align) {
  uintptr_t hint = atomic_load_explicit(&os_hint, memory_order_relaxed);
  hak_atomic_add(_hak_os_map_count, 1);
  uint8_t* p;
  KEEP_ERRNO(p = _hak_os->map((void*)hint, size));
  if (p == NULL) return NULL;
  if (((uintptr_t)p & (align - 1)) != 0) {
    os_unmap_counted(p, size);
    if (size + align < size) return NULL;
    hak_atomic_add(_hak_os_map_count, 1);
    uint8_t* raw;
    KEEP_ERRNO(raw = _hak_os->map(NULL, size + align));
    if (raw == NULL) return NULL;
    p = (uint8_t*)(((uintptr_t)raw + align - 1) & ~(uintptr_t)(align - 1));
    os_unmap_counted(raw, (size_t)(p - raw));
    os_unmap_counted(p + size, (size_t)((raw + size + align) - (p + size)));
  }
  atomic_store_explicit(&os_hint, (uintptr_t)p + size, memory_order_relaxed);
  os_account(size, true);
  return p;
}

/* A mapping the segment map cannot describe (above 2^HAK_VA_BITS: 5-level
 * paging with a high hint) is given back: the caller sees an ordinary
 * failure, never a block that no free could find. */
void* _hak_os_alloc_aligned(size_t size, size_t align) {
  uint8_t* p = os_alloc_aligned(size, align);
#ifndef HAK_FAULT_VA_UNCHECKED /* fault injection: any address is accepted */
  if (p != NULL && (uintptr_t)p + size > ((uintptr_t)1 << HAK_VA_BITS)) {
    atomic_store_explicit(&os_hint, 0, memory_order_relaxed);
    os_unmap_counted(p, size); /* not _hak_os_free: no shadow to clear up there */
    os_account(size, false);
    return NULL;
  }
#endif
  return p;
}

int _hak_os_advise(void* addr, size_t size, int advice) {
  hak_atomic_add(os_madvise_calls, 1);
  int r;
  KEEP_ERRNO(r = _hak_os->advise(addr, size, advice));
  return r;
}

/* The pages of [addr, addr + size) made resident and writable in one call
 * (MADV_POPULATE_WRITE, Linux 5.14; older kernels: nothing), their
 * contents kept: tables first read then written (a read maps the zero page,
 * the write faults again) cost no fault at their first use. */
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
void _hak_os_prefault(const void* addr, size_t size) {
  uintptr_t lo = (uintptr_t)addr & ~(uintptr_t)4095, hi = ((uintptr_t)addr + size + 4095) & ~(uintptr_t)4095;
  _hak_os_advise((void*)lo, hi - lo, MADV_POPULATE_WRITE);
}

/* Moves the pages of [old, old + old_size) onto dst, a range of new_size
 * bytes reserved with _hak_os_alloc_aligned (mremap: no copy; the old range
 * is unmapped), or, with dst == old and a smaller new_size, shrinks the
 * mapping in place (the tail is unmapped).  false if it cannot: nothing
 * changed then.  The caller clears the segment map of what goes back
 * first: the kernel may hand that range to another thread at once. */
bool _hak_os_remap(void* old, size_t old_size, void* dst, size_t new_size) {
  int rc;
  KEEP_ERRNO(rc = _hak_os->remap(old, old_size, dst, new_size));
  if (rc != 0) return false; /* e.g. the range spans several VMAs (madvised parts) */
  hak_atomic_add(os_munmap_calls, 1); /* shrunk, or the old range is gone (dst was counted when reserved) */
  os_account(dst == old ? old_size - new_size : old_size, false);
  return true;
}

/* Moves the pages of [src, src + size) onto dst, inside a range reserved
 * with _hak_os_alloc_aligned, and leaves src mapped and empty (it reads as
 * zeros again): the pages change owner without a copy or a fault, and the
 * range they left needs no segment-map change.  false: nothing changed
 * (an old kernel, or src spans several VMAs). */
bool _hak_os_move_keep(void* src, size_t size, void* dst) {
  int rc;
  KEEP_ERRNO(rc = _hak_os->move_keep(src, size, dst));
  return rc == 0;
}

/* Whether every page of [addr, addr + size) is mapped (mincore fails with
 * ENOMEM on a hole). */
bool _hak_os_mapped(void* addr, size_t size) {
  unsigned char vec[512]; /* one 2 MiB frame's pages */
  for (size_t done = 0; done < size; done += sizeof(vec) * 4096) {
    size_t n = size - done < sizeof(vec) * 4096 ? size - done : sizeof(vec) * 4096;
    int r;
    KEEP_ERRNO(r = mincore((char*)addr + done, n, vec) == 0 ? 0 : errno);
    if (r == ENOMEM) return false;
  }
  return true;
}

/* Resident pages of [addr, addr + size), size at most 2 MiB (one mincore
 * call); 0 on failure. */
static size_t resident_pages(void* addr, size_t size) {
  unsigned char vec[512];
  size_t n = (size < sizeof(vec) * 4096 ? size : sizeof(vec) * 4096) / 4096, got = 0;
  int r;
  KEEP_ERRNO(r = mincore(addr, n * 4096, vec));
  if (r != 0) return 0;
  for (size_t i = 0; i < n; i++) got += vec[i] & 1;
  return got;
}

/* Pages of [addr, addr + size) (at most 2 MiB) the program wrote: present
 * and mapped by this process alone (/proc/self/pagemap bits 63 and 56,
 * preads of 64 entries: 512 bytes of stack), which a page only read is not
 * (the shared zero page); mincore, which counts those too, if the file
 * cannot be read (a sandbox). */
size_t _hak_os_written_pages(void* addr, size_t size) {
  uint64_t e[64];
  size_t n = (size < (size_t)512 * 4096 ? size : (size_t)512 * 4096) / 4096, got = 0;
  bool ok = false;
  KEEP_ERRNO({
    int fd = sys_open("/proc/self/pagemap");
    ok = fd >= 0;
    for (size_t at = 0; ok && at < n; at += 64) {
      size_t k = n - at < 64 ? n - at : 64;
      ok = sys_pread(fd, e, k * 8, (off_t)(((uintptr_t)addr / 4096 + at) * 8)) == (ssize_t)(k * 8);
      for (size_t i = 0; ok && i < k; i++) got += (e[i] >> 63 & 1) && (e[i] >> 56 & 1);
    }
    if (fd >= 0) sys_close(fd);
  });
#ifdef HAK_FAULT_THP_PROBE_MINCORE /* fault injection: pages only read count as written */
  ok = false;
#endif
  return ok ? got : resident_pages(addr, size);
}

/* Maps fresh rw pages over [addr, addr + size) if any of it is a hole:
 * the range whole (MAP_FIXED_NOREPLACE, never over a mapping), which works
 * only when all of it is a hole (what a kernel before 6.17 leaves of an
 * mremap destination it unmapped and then refused); false otherwise
 * (part of it mapped: pages of ours or another thread's mapping that
 * landed in the hole, which cannot be told apart). */
bool _hak_os_refill(void* addr, size_t size) {
  if (_hak_os_mapped(addr, size)) return true;
  int saved = errno;
  void* r = mmap(addr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE,
                 -1, 0);
  if (r != addr && r != MAP_FAILED) munmap(r, size); /* a kernel without NOREPLACE took it for a hint */
  errno = saved;
  return r == addr;
}

void _hak_os_guard(void* addr, bool on) {
  int r;
  KEEP_ERRNO(r = _hak_os->protect(addr, HAK_GUARD_SIZE, on));
  if (r == 0 && on) hak_atomic_add(os_guard_pages, 1);
}

void _hak_os_protect(void* addr, size_t size, bool none) {
  if (size == 0) return;
  KEEP_ERRNO(_hak_os->protect(addr, size, none));
}

void _hak_os_free(void* addr, size_t size) {
  hak_track_unmapped(addr, size);
  os_unmap_counted(addr, size);
  os_account(size, false);
}

/* Random bits without allocating or making a system call: the kernel's
 * AT_RANDOM bytes mixed with addresses (ASLR) and the clock. */
uint64_t _hak_os_random(void) {
  uint64_t x = (uint64_t)(uintptr_t)&os_hint ^ ((uint64_t)(uintptr_t)&x << 17);
  const void* r = (const void*)getauxval(AT_RANDOM); /* 16 bytes, unaligned */
  if (r != NULL) {
    uint64_t w[2];
    memcpy(w, r, sizeof(w));
    x ^= w[0] ^ (w[1] << 1);
  }
  x ^= _hak_os->now_ns();
  /* splitmix64 finalizer */
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

/* Waits up to ns for m (CLOCK_REALTIME, as pthread_mutex_timedlock asks). */
bool _hak_os_timedlock(pthread_mutex_t* m, uint64_t ns) {
  struct timespec ts;
  int saved = errno;
  clock_gettime(CLOCK_REALTIME, &ts);
  uint64_t t = (uint64_t)ts.tv_nsec + ns;
  ts.tv_sec += (time_t)(t / 1000000000u);
  ts.tv_nsec = (long)(t % 1000000000u);
  bool got = pthread_mutex_timedlock(m, &ts) == 0;
  errno = saved;
  return got;
}


/* What file fd is (device and inode, mixed; never 0), or 0 if none. */
uint64_t _hak_os_fd_id(int fd) {
  struct stat st;
  int r;
  KEEP_ERRNO(r = (int)syscall(SYS_fstat, fd, &st));
  if (r != 0) return 0;
  hak_track_defined(&st, sizeof(st));
  uint64_t id = ((uint64_t)st.st_dev * 0x9e3779b97f4a7c15ull) ^ (uint64_t)st.st_ino;
  return id != 0 ? id : 1;
}

/* The working directory into buf (no allocation); false if it does not fit. */
bool _hak_os_cwd(char* buf, size_t size) {
  int saved = errno;
  bool ok = getcwd(buf, size - 1) != NULL;
  errno = saved;
  return ok;
}

/* The calling thread's kernel id, and whether a thread of this process
 * with that id still exists (an exited one does not; ids are reused, so
 * "alive" may be a newer thread, never the other way round). */
int _hak_os_tid(void) { return (int)syscall(SYS_gettid); }

/* Whether thread tid of this process still exists. */
bool _hak_os_tid_alive(int tid) {
  int saved = errno;
  bool alive = syscall(SYS_tgkill, getpid(), tid, 0) == 0 || errno != ESRCH;
  errno = saved;
  return alive;
}
bool _hak_os_is_main_thread(void) { return syscall(SYS_gettid) == getpid(); }

/* The readable mapping holding addr, from /proc/self/maps read with plain
 * system calls into a 512-byte buffer (no allocation; ~100 us for a few
 * hundred mappings).  false: none, or /proc cannot be read. */
static bool maps_lookup(uintptr_t addr, uintptr_t* lo, uintptr_t* hi) {
  char buf[512];
  bool found = false, skipping = false; /* skipping: the rest of a line longer than buf */
  int fd = sys_open("/proc/self/maps");
  if (fd < 0) return false;
  size_t len = 0;
  bool eof = false;
  while (!found && !(eof && len == 0)) {
    if (!eof) {
      ssize_t n = sys_read(fd, buf + len, sizeof(buf) - len);
      if (n <= 0) eof = true;
      else len += (size_t)n;
    }
    char* nl = memchr(buf, '\n', len);
    if (nl == NULL && !eof && len < sizeof(buf)) continue;
    char* end = nl != NULL ? nl : buf + len; /* a line, or the first 512 bytes of one */
    if (!skipping) {
      /* "start-end perms ...": hex numbers */
      uintptr_t a = 0, b = 0;
      char* c = buf;
      for (; c < end && *c != '-'; c++) a = a * 16 + (uintptr_t)(*c <= '9' ? *c - '0' : (*c | 32) - 'a' + 10);
      for (c++; c < end && *c != ' '; c++) b = b * 16 + (uintptr_t)(*c <= '9' ? *c - '0' : (*c | 32) - 'a' + 10);
      if (c + 1 < end && a <= addr && addr < b && c[1] == 'r') {
        *lo = a;
        *hi = b;
        found = true;
      }
    }
    skipping = nl == NULL;
    size_t used = nl != NULL ? (size_t)(nl + 1 - buf) : len;
    memmove(buf, buf + used, len - used);
    len -= used;
  }
  sys_close(fd);
  return found;
}

bool _hak_os_mapping_of(uintptr_t addr, uintptr_t* lo, uintptr_t* hi) {
  bool found = false;
  KEEP_ERRNO(found = maps_lookup(addr, lo, hi));
  return found;
}
/* RLIMIT_STACK's soft limit: the main stack's largest size and glibc's
 * default thread stack size; 0: unlimited */
size_t _hak_os_stack_limit(void) {
  struct rlimit r;
  if (getrlimit(RLIMIT_STACK, &r) != 0 || r.rlim_cur == RLIM_INFINITY) return 0;
  return (size_t)r.rlim_cur;
}
bool _hak_os_thread_alive(int tid) {
  int saved = errno;
  bool alive = syscall(SYS_tgkill, getpid(), tid, 0) == 0 || errno != ESRCH;
  errno = saved;
  return alive;
}

/* The loader's unwind-table index (.eh_frame_hdr) of the object holding
 * pc: _dl_find_object (glibc 2.35), which allocates nothing, takes no lock
 * and makes no system call; referenced weakly (older glibc: none). */
#ifdef DLFO_EH_SEGMENT_TYPE
extern __typeof(_dl_find_object) _dl_find_object __attribute__((weak));
const uint8_t* _hak_os_eh_frame_hdr(uintptr_t pc) {
  struct dl_find_object o;
  memset(&o, 0, sizeof(o)); /* MSan: the loader is not instrumented */
  if (_dl_find_object == NULL || _dl_find_object((void*)pc, &o) != 0) return NULL;
  return (const uint8_t*)o.dlfo_eh_frame;
}
#else
const uint8_t* _hak_os_eh_frame_hdr(uintptr_t pc) {
  (void)pc;
  return NULL;
}
#endif

/* The kernel marked the process secure (set-uid, set-gid, capabilities). */
bool _hak_os_secure(void) { return getauxval(AT_SECURE) != 0; }

/* Transparent huge pages on every anonymous mapping ("[always]" selected in
 * sysfs): read once at init with plain system calls (no allocation). */
bool _hak_os_thp_always(void) {
  char buf[128];
  ssize_t n = -1;
  KEEP_ERRNO({
    int fd = sys_open("/sys/kernel/mm/transparent_hugepage/enabled");
    if (fd >= 0) {
      n = sys_read(fd, buf, sizeof(buf) - 1);
      sys_close(fd);
    }
  });
  if (n <= 0) return false;
  buf[n] = 0;
  return strstr(buf, "[always]") != NULL;
}

void _hak_os_stats(hak_stats_t* st) {
  st->os_mmap_calls = atomic_load(&_hak_os_map_count);
  st->os_munmap_calls = atomic_load(&os_munmap_calls);
  st->os_madvise_calls = atomic_load(&os_madvise_calls);
  st->os_guard_pages = atomic_load(&os_guard_pages);
  st->os_mapped_bytes = atomic_load(&os_mapped);
  st->os_mapped_bytes_peak = atomic_load(&os_mapped_peak);
}
