/* hakmem: a call-site aware memory allocator.  Public API.
 *
 * Every function is thread-safe.  The malloc family (malloc, free, ...) is
 * provided by libhakmem.so (LD_PRELOAD) and forwards to these functions. */
#ifndef HAKMEM_H
#define HAKMEM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define HAK_API __attribute__((visibility("default")))

/* malloc/free/calloc/realloc with the C semantics; sizes above PTRDIFF_MAX
 * and overflowing products return NULL with errno == ENOMEM. */
HAK_API void* hak_malloc(size_t size);
HAK_API void hak_free(void* ptr);
HAK_API void* hak_calloc(size_t count, size_t size);
HAK_API void* hak_realloc(void* ptr, size_t size);

/* alignment: a power of two (any, up to 1 GiB); size: any.  NULL with errno
 * EINVAL for a bad alignment, ENOMEM when out of memory. */
HAK_API void* hak_aligned_alloc(size_t alignment, size_t size);

/* Bytes usable from ptr (>= the size asked for); 0 for NULL. */
HAK_API size_t hak_usable_size(const void* ptr);

/* Call-site entry points: site is the caller's return address (the malloc
 * shim passes its caller's), the label the allocator keeps statistics and
 * policy under. */
HAK_API void* hak_alloc_at(size_t size, const void* site);
HAK_API void hak_free_at(void* ptr, const void* site);

/* Statistics.  One list of fields generates the struct, the text dump and
 * the JSON dump (HAKMEM_STATS=1 / json at exit).  JSON key = group.name. */
#define HAK_STATS_FIELDS(X)                                                 \
  X(served, small, "allocations served by size classes (<= 128 KiB)")      \
  X(served, large, "allocations served by slice runs in segments")         \
  X(served, huge, "allocations served by direct mmap")                     \
  X(freed, small, "small blocks freed")                                    \
  X(freed, large, "large blocks freed")                                    \
  X(freed, huge, "huge blocks freed")                                      \
  X(freed, remote, "frees by a thread other than the owner")               \
  X(bigcache, hits, "huge allocations served from BigCache")              \
  X(bigcache, other_site, "hits served from another site's row (own empty)") \
  X(bigcache, larger, "hits served by a block of a larger class (up to 2x)") \
  X(bigcache, grown, "misses served with cached blocks' pages (mremap)") \
  X(bigcache, moved_bytes, "bytes of cached blocks' pages moved into such misses") \
  X(bigcache, misses, "cacheable huge allocations BigCache could not serve") \
  X(bigcache, puts, "freed huge blocks offered to BigCache")               \
  X(bigcache, evictions, "blocks sent from BigCache to the batch queue")   \
  X(bigcache, expired, "evictions of blocks idle past the expiry")         \
  X(bigcache, bytes, "bytes cached now (the chunks their blocks span)")    \
  X(batch, queued, "mappings queued for release")                          \
  X(batch, flushes, "releases of the queue")                               \
  X(batch, madvise_calls, "madvise calls made by releases")                \
  X(batch, bytes_advised, "bytes released with madvise")                   \
  X(batch, munmaps, "mappings unmapped beyond the retained budget")        \
  X(batch, reused, "huge allocations served by a retained mapping")        \
  X(batch, taken_back, "huge allocations served by a still-queued mapping") \
  X(batch, retained_bytes, "released mappings kept for reuse now")         \
  X(learn, decisions, "large requests routed by the policy (evolving; each thread's counted 32 at a time)")    \
  X(learn, samples, "sampled (timed) large requests")                      \
  X(learn, explored, "epochs routed otherwise than the policy in force")   \
  X(learn, adoptions, "UCB1 arms adopted by sites")                        \
  X(learn, matches, "ELO matches played")                                  \
  X(learn, windows, "lifecycle windows closed")                            \
  X(learn, routed_huge, "requests >= 64 KiB the policy sent to mmap")      \
  X(learn, explore_ns, "excess cost of exploring epochs, ns (what learning spent)") \
  X(learn, denied, "explorations the sites' budgets did not admit")       \
  X(learn, settled, "times a site stopped exploring (every arm measured, none cheaper)") \
  X(os, mmap_calls, "mmap system calls")                                   \
  X(os, munmap_calls, "munmap system calls")                               \
  X(os, madvise_calls, "madvise system calls")                             \
  X(os, guard_pages, "guard pages set up (mprotect PROT_NONE calls)")       \
  X(os, mapped_bytes, "bytes currently mapped")                            \
  X(os, mapped_bytes_peak, "peak of mapped_bytes")                         \
  X(fork, forks, "forks of the process (hakmem's prepare handler runs)")  \
  X(fork, gate_waits, "waits of 500 us at the fork gate (a huge block or segment call while a fork was pending)") \
  X(fork, gate_give_ups, "threads that stopped waiting for a fork past hakmem's prepare (their transit may leak in the child)") \
  X(purge, runs, "runs of idle free memory decommitted (slices, segments, mappings)") \
  X(purge, bytes, "bytes decommitted by purges (MADV_DONTNEED)")           \
  X(segments, current, "segments owned by heaps")                          \
  X(segments, cached, "empty segments kept for reuse")                     \
  X(pages, initialized, "size-class pages set up")                         \
  X(pages, retired, "pages given back to their segment")                   \
  X(pages, refills, "small allocations that found their page empty (a page search)") \
  X(heaps, created, "thread heaps created")                                \
  X(heaps, reused, "thread heaps taken over from exited threads")          \
  X(heaps, abandoned, "heaps of exited threads waiting for a thread")      \
  X(sites, tracked, "call sites in the site table")                        \
  X(sites, sampled, "allocations recorded in the site table")              \
  X(sites, wrappers, "call sites found to be allocation wrappers (seen through)") \
  X(sites, seen_through, "requests attributed to a wrapper's caller")      \
  X(sites, unresolved, "requests not seen through: the wrapper table was full") \
  X(sites, walks, "requests whose site was looked at up the stack (learning, rechecks, wrappers)") \
  X(errors, double_free, "double frees detected")                          \
  X(errors, invalid_free, "frees of pointers hakmem never returned")       \
  X(errors, freed_usable_size, "usable_size asked of a freed block")     \
  X(errors, corrupt, "overwritten allocator metadata detected")

typedef struct hak_stats_s {
#define HAK_STATS_GROUP_MEMBER(group, name, doc) uint64_t group##_##name;
  HAK_STATS_FIELDS(HAK_STATS_GROUP_MEMBER)
#undef HAK_STATS_GROUP_MEMBER
} hak_stats_t;

/* Fills *out with a snapshot of the process-wide counters. */
HAK_API void hak_stats_get(hak_stats_t* out);

/* Writes the statistics to fd: as text (json == 0) or one JSON line. */
HAK_API void hak_stats_print(int fd, int json);

/* Prints the options table (README.md's format) to fd. */
HAK_API void hak_options_print_markdown(int fd);

/* Call-site record, as kept by the site table. */
typedef struct hak_site_info_s {
  const void* site;
  uint64_t allocs;
  uint64_t frees;
  uint64_t bytes;
  uint64_t threshold; /* learned mmap threshold (evolving mode), 0: default */
  /* evolving mode: what learning measured and spent at this site */
  uint64_t large;      /* requests the policy routed (above 128 KiB)      */
  uint64_t epochs;     /* measured epochs (8 requests each)               */
  uint64_t explored;   /* of which routed otherwise than the policy in force */
  uint64_t cost_ns;    /* the site's estimated cost under the policy in force */
  uint64_t explore_ns; /* excess cost of its explorations (<= 2 % of cost_ns, plus overrun) */
  uint64_t overrun_ns; /* part of explore_ns beyond the explorations' estimates */
  int settled;         /* 1: stopped exploring (every arm measured, none cheaper) */
} hak_site_info_t;

/* Empties BigCache and the batch queue, unmaps retained and cached memory
 * and the calling thread's empty pages: returns memory to the OS. */
HAK_API void hak_collect(void);

/* Walks every structure of the allocator and checks its invariants;
 * prints each violation on stderr and returns how many there were.  Call it
 * when no other thread is inside the allocator. */
HAK_API size_t hak_check_heap(void);

/* Copies up to max sites (most allocations first); returns how many. */
HAK_API size_t hak_sites_get(hak_site_info_t* out, size_t max);

#ifdef __cplusplus
}
#endif

#endif /* HAKMEM_H */
