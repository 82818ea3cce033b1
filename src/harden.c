/* Hardening at the default level: the per-process keys, and what happens
 * when a check finds the heap overwritten.
 *
 * - Keys: drawn once at init from _hak_os_random (AT_RANDOM, ASLR, clock).
 *   link0/link1 encode free-list links (internal.h, hak_link_enc), tag0
 *   with the same mix makes the freed tag, sum0/sum1 the huge header
 *   checksum, can0/can1 the HAKMEM_SECURE canaries.  The mixes are
 *   cheap and non-linear in the keys (an xor, then a multiply by an odd
 *   key), so one leaked word gives away neither the key nor a
 *   way to forge another block's tag or link; they are not a cryptographic
 *   MAC: an attacker who can read many freed blocks and headers can solve
 *   for the keys.
 * - A corrupt free list (a pop found a freed block whose tag or link was
 *   overwritten) is reported as heap corruption with what was wrong; then,
 *   under HAKMEM_ON_ERROR=report, the page's list is dropped: its free
 *   blocks count as used and leak, nothing on it is ever served. */
#include "internal.h"

hak_keys_t _hak_keys;

void _hak_harden_init(void) {
  _hak_keys.link0 = (uintptr_t)_hak_os_random();
  _hak_keys.link1 = (uintptr_t)_hak_os_random() | 1;
  _hak_keys.tag0 = (uintptr_t)_hak_os_random();
  _hak_keys.sum0 = (uintptr_t)_hak_os_random();
  _hak_keys.sum1 = (uintptr_t)_hak_os_random() | 1;
  _hak_keys.can0 = (uintptr_t)_hak_os_random();
  _hak_keys.can1 = (uintptr_t)_hak_os_random() | 1;
}

void _hak_freelist_corrupt(hak_page_t* page, const hak_block_t* b) {
  bool tag = hak_tag_is_freed(b, atomic_load_explicit(&b->tag, memory_order_relaxed));
  _hak_error_what(HAK_ERR_CORRUPT, HAK_FN_MALLOC, b,
                  tag ? "a freed block's link was overwritten (use after free or overflow)"
                      : "a freed block's tag was overwritten (use after free or overflow)");
  _hak_page_drop_list(page);
}

void _hak_page_drop_list(hak_page_t* page) {
  page->free = NULL;
  page->used = page->capacity;
  page->corrupt = 1;
}

void* _hak_alloc_corrupt(hak_heap_t* heap, hak_page_t* page, const hak_block_t* b, size_t size, const void* site) {
  _hak_freelist_corrupt(page, b);
  return _hak_alloc_generic(heap, size, 0, site);
}
