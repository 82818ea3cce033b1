/* The shadow heap: an independent record of every live block, on its own
 * memory (mmap), checking the allocator under test at every operation:
 * the block is non-NULL when it must be, aligned as asked, usable size >=
 * size, overlapping no live block; its contents (a pattern derived from
 * the seed and the block's id) are intact at free and realloc; realloc
 * keeps the prefix; calloc is zero.  The first violation is reported with
 * the operation number and both blocks involved; later calls return false.
 * Thread-safe (one lock: it is a checker, not a hot path). */
#ifndef HAK_SHADOW_HEAP_H
#define HAK_SHADOW_HEAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct shadow_heap shadow_heap_t;

/* usable: the allocator's usable-size function (may be NULL). */
shadow_heap_t* shadow_create(uint64_t seed, size_t (*usable)(const void*));
void shadow_destroy(shadow_heap_t* s);

/* After the allocator returned p for (size, align); zeroed: calloc.  Checks
 * the block, records it under id and fills it with its pattern.  A NULL p
 * is accepted only when allowed_null (an impossible size). */
bool shadow_on_alloc(shadow_heap_t* s, uint64_t id, void* p, size_t size, size_t align, bool zeroed,
                     bool allowed_null);
/* Before the allocator frees id's block: checks its contents, forgets it.
 * Returns the pointer to free (NULL if id is not live). */
void* shadow_on_free(shadow_heap_t* s, uint64_t id);
/* Pointer and size of a live id (NULL if none). */
void* shadow_lookup(shadow_heap_t* s, uint64_t id, size_t* size);
/* Before a realloc of id: checks contents, forgets the old placement. */
bool shadow_before_realloc(shadow_heap_t* s, uint64_t id, void** old_p, size_t* old_size);
/* After realloc returned q for new_size (q may be NULL on failure, then the
 * old block must be intact and is re-recorded): checks the kept prefix. */
bool shadow_after_realloc(shadow_heap_t* s, uint64_t id, void* old_p, size_t old_size, void* q, size_t new_size);

bool shadow_ok(const shadow_heap_t* s);
uint64_t shadow_ops(const shadow_heap_t* s);
size_t shadow_live(shadow_heap_t* s);
/* Checks every live block's contents (e.g. at the end of a run). */
bool shadow_check_all(shadow_heap_t* s);

#endif
