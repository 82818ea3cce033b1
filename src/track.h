/* Telling ASan, MSan and Valgrind's memcheck about hakmem's own heap.
 *
 * To those tools hakmem's mappings are one big valid, initialized region;
 * these hooks describe the blocks in it, so a use after free, an overflow
 * into a block's slack or an uninitialized read of a block hakmem served is
 * reported by the tool as it would be for its own allocator.  In every
 * other build they are empty and cost nothing.
 *
 *                 live block             freed block           uncarved page space
 *   ASan          [0,size) addressable;  [0,16) addressable    poisoned
 *                 [size,usable) poisoned (next + tag), rest
 *                                         poisoned
 *   MSan          [0,size) uninitialized (calloc: initialized); realloc's
 *                 copy keeps the source's state (MSan's memcpy)
 *   memcheck      MALLOCLIKE [0,size),   FREELIKE; [0,16)      no access
 *                 undefined (calloc:     defined (next + tag)
 *                 defined); [size,usable) no access
 *
 * The first 16 bytes of a freed block stay accessible because hakmem keeps
 * its free-list link and freed tag there; a stray write to them is what
 * hakmem's own checks look at.  A block's requested size is found again
 * from the tool (ASan's shadow: the first poisoned byte; memcheck: the
 * first unaddressable byte, by bisection), so realloc copies and
 * malloc_usable_size reports only what the program may touch, as the
 * tools' own allocators do.  Valgrind: build with --config=valgrind
 * (HAK_TRACK_VALGRIND), for tests and for libhakmem.so under valgrind. */
#ifndef HAK_TRACK_H
#define HAK_TRACK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HAK_TRACK_ASAN 1
#endif
#if __has_feature(memory_sanitizer)
#define HAK_TRACK_MSAN 1
#endif
#endif

#ifdef HAK_TRACK_ASAN
#include <sanitizer/asan_interface.h>
#endif
#ifdef HAK_TRACK_MSAN
#include <sanitizer/msan_interface.h>
#endif
#ifdef HAK_TRACK_VALGRIND
#include <valgrind/memcheck.h>
#include <valgrind/valgrind.h>
#endif

#define HAK_TRACK_HEADER 16 /* bytes of a freed block hakmem uses */

#if defined(HAK_TRACK_ASAN) || defined(HAK_TRACK_MSAN) || defined(HAK_TRACK_VALGRIND)
#define HAK_TRACKING 1
/* Reads of user memory that the checker and misuse paths make on purpose. */
#define HAK_NO_SANITIZE __attribute__((no_sanitize("address", "memory")))
#else
#define HAK_TRACKING 0
#define HAK_NO_SANITIZE
#endif

/* A block handed to the program: size bytes asked, usable in all. */
static inline void hak_track_alloc(void* p, size_t size, size_t usable) {
  (void)p, (void)size, (void)usable;
#ifdef HAK_TRACK_ASAN
  if (size == 0) size = 1; /* hakmem's zero-size blocks have a usable byte */
  ASAN_UNPOISON_MEMORY_REGION(p, size);
  if (usable > size) ASAN_POISON_MEMORY_REGION((char*)p + size, usable - size);
#endif
#ifdef HAK_TRACK_MSAN
  __msan_allocated_memory(p, size);
#endif
#ifdef HAK_TRACK_VALGRIND
  if (size == 0) size = 1;
  VALGRIND_MALLOCLIKE_BLOCK(p, size, 0, 0);
  if (usable > size) VALGRIND_MAKE_MEM_NOACCESS((char*)p + size, usable - size);
#endif
}

/* Bytes of block p (usable bytes in all) that the program asked for:
 * what realloc may copy, and what malloc_usable_size reports under ASan
 * (as ASan's own allocator does: the slack is poisoned). */
static inline size_t hak_track_requested(const void* p, size_t usable) {
  (void)p;
#ifdef HAK_TRACK_ASAN
  if (usable == 0 || !__asan_address_is_poisoned((const char*)p + usable - 1)) return usable;
  { /* [0,size) addressable, [size,usable) poisoned: bisect, O(log usable) */
    size_t lo = 0, hi = usable - 1; /* the answer is in [lo, hi] */
    while (lo < hi) {
      size_t mid = lo + (hi - lo) / 2;
      if (__asan_address_is_poisoned((const char*)p + mid)) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  }
#endif
#ifdef HAK_TRACK_VALGRIND
  if (RUNNING_ON_VALGRIND) { /* [0,size) addressable, [size,usable) not */
    size_t lo = 1, hi = usable; /* the answer is in [lo, hi] */
    while (lo < hi) {
      size_t mid = lo + (hi - lo + 1) / 2;
      unsigned char vbits;
      if (VALGRIND_GET_VBITS((const char*)p + mid - 1, &vbits, 1) == 3) hi = mid - 1; /* not addressable */
      else lo = mid;
    }
    return lo;
  }
#endif
  return usable;
}

/* A live block kept in place by realloc, now of size bytes (its contents
 * keep their state). */
static inline void hak_track_resize(void* p, size_t size, size_t usable) {
  (void)p, (void)size, (void)usable;
#ifdef HAK_TRACK_ASAN
  ASAN_UNPOISON_MEMORY_REGION(p, size);
  if (usable > size) ASAN_POISON_MEMORY_REGION((char*)p + size, usable - size);
#endif
#ifdef HAK_TRACK_VALGRIND
  VALGRIND_RESIZEINPLACE_BLOCK(p, hak_track_requested(p, usable), size ? size : 1, 0);
  if (usable > size) VALGRIND_MAKE_MEM_NOACCESS((char*)p + (size ? size : 1), usable - (size ? size : 1));
#endif
}

/* The first size bytes of a block just allocated are zero (calloc). */
static inline void hak_track_zeroed(void* p, size_t size) {
  (void)p, (void)size;
#ifdef HAK_TRACK_MSAN
  __msan_unpoison(p, size);
#endif
#ifdef HAK_TRACK_VALGRIND
  VALGRIND_MAKE_MEM_DEFINED(p, size);
#endif
}

/* Before a free looks at the block's tag (the block is hakmem's: its page
 * or header was checked): the header is readable and defined. */
static inline void hak_track_free_begin(void* p) {
  (void)p;
#ifdef HAK_TRACK_ASAN
  ASAN_UNPOISON_MEMORY_REGION(p, HAK_TRACK_HEADER);
#endif
#ifdef HAK_TRACK_MSAN
  __msan_unpoison(p, HAK_TRACK_HEADER);
#endif
#ifdef HAK_TRACK_VALGRIND
  VALGRIND_MAKE_MEM_DEFINED(p, HAK_TRACK_HEADER); /* also the slack of a block under 16 bytes */
#endif
}

/* A block given back: only its header stays accessible.  header: bytes at
 * p that hakmem keeps using (HAK_TRACK_HEADER for blocks on free lists, 0
 * for large and huge blocks). */
static inline void hak_track_free(void* p, size_t usable, size_t header) {
  (void)p, (void)usable, (void)header;
#ifdef HAK_FAULT_TRACK_FREE_SILENT /* fault injection: the tools never hear of a free */
  return;
#endif
#ifdef HAK_TRACK_ASAN
  ASAN_POISON_MEMORY_REGION((char*)p + header, usable - header);
#endif
#ifdef HAK_TRACK_VALGRIND
  VALGRIND_FREELIKE_BLOCK(p, 0);
  if (header) VALGRIND_MAKE_MEM_DEFINED(p, header);
#endif
}

/* Memory hakmem is about to use for itself (a carved block's header, a
 * huge header inside a previous block's space). */
static inline void hak_track_internal(void* p, size_t n) {
  (void)p, (void)n;
#ifdef HAK_TRACK_ASAN
  ASAN_UNPOISON_MEMORY_REGION(p, n);
#endif
#ifdef HAK_TRACK_VALGRIND
  VALGRIND_MAKE_MEM_UNDEFINED(p, n);
#endif
}

/* Space no block occupies (a new page's uncarved part). */
static inline void hak_track_noaccess(void* p, size_t n) {
  (void)p, (void)n;
#ifdef HAK_TRACK_ASAN
  ASAN_POISON_MEMORY_REGION(p, n);
#endif
#ifdef HAK_TRACK_VALGRIND
  VALGRIND_MAKE_MEM_NOACCESS(p, n);
#endif
}

/* A mapping leaves hakmem (munmap): nothing of it is tracked any more. */
static inline void hak_track_unmapped(void* p, size_t n) {
  (void)p, (void)n;
#ifdef HAK_TRACK_ASAN
  ASAN_UNPOISON_MEMORY_REGION(p, n);
#endif
}

/* A value hakmem read on purpose from the program's memory (a copy). */
static inline void hak_track_defined(void* p, size_t n) {
  (void)p, (void)n;
#ifdef HAK_TRACK_VALGRIND
  VALGRIND_MAKE_MEM_DEFINED(p, n);
#endif
#ifdef HAK_TRACK_MSAN /* also what a raw system call wrote: MSan sees only libc's wrappers */
  __msan_unpoison(p, n);
#endif
}

/* Around the checker's and the misuse paths' deliberate reads of memory
 * that may be the program's (uninitialized, or freed). */
static inline void hak_track_quiet(bool on) {
  (void)on;
#ifdef HAK_TRACK_VALGRIND
  if (on) VALGRIND_DISABLE_ERROR_REPORTING;
  else VALGRIND_ENABLE_ERROR_REPORTING;
#endif
}

#endif /* HAK_TRACK_H */
