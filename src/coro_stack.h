/*
 * coro_stack.h - the coroutine stack pool (internal).  The memory model is
 * described in include/conc/coro.h and docs/coro.md; in short:
 *
 * Stacks are carved from slabs: one anonymous MAP_NORESERVE mapping holds
 * up to 1024 stacks (about 64 MiB of address space), so a million stacks
 * need about a thousand mappings, not a million (vm.max_map_count is 65530
 * on a stock kernel).  Untouched pages cost no memory.  Each stack is
 *
 *     lo                lo + zone                                   hi
 *     | zone (one page) | usable stack (the requested size) ... top |
 *
 * The zone below the usable stack is either a guard page (PROT_NONE: an
 * overflow faults at once) or, past the guard budget, a canary zone that is
 * never written, so it reads as zeros from the kernel's shared zero page and
 * costs no memory; an overflow into it is found on the next switch away
 * (conc__stack_zone_ok).  Guard pages split the mapping (two map entries per
 * stack), so only conc__stack_guard_limit stacks get one (by default
 * vm.max_map_count / 8: 8191 on a stock kernel); the lowest stack of every
 * slab always has one.
 *
 * Freed stacks are reused most-recently-freed first.  Up to
 * CONC__STACK_HOT_MAX free stacks per size keep their pages (the next
 * coroutine touches no new memory); the others are handed back to the kernel
 * (madvise MADV_DONTNEED, in batches) and cost no memory until reused.
 */
#ifndef CONC_CORO_STACK_H
#define CONC_CORO_STACK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "internal.h"
#include "conc/coro.h"

typedef struct conc__stack {
    char *lo;                   /* the zone (lowest address) */
    char *hi;                   /* one past the top */
    struct conc__stack *next;   /* free lists */
    struct stack_pool *pool;
    uint8_t guarded;            /* the zone is a PROT_NONE guard page */
    uint8_t slab_guard;         /* the slab's lowest stack: always guarded */
    uint8_t dirty;              /* may hold resident pages */
} conc__stack;

/* The size of the zone: one page (set when the library loads). */
extern CONC_HIDDEN size_t conc__stack_zone_bytes;
static inline size_t conc__stack_zone(void)
{
    return conc__stack_zone_bytes;
}

/* The lowest address of the usable stack. */
static inline char *conc__stack_base(const conc__stack *s)
{
    return s->lo + conc__stack_zone();
}

/*
 * conc__stack_get - a stack whose usable part is `size` bytes (a multiple of
 * the page size).  Returns 0 and stores it in *out; -ENOMEM when no memory
 * or address space is left.  Thread-safe.
 */
CONC_HIDDEN int conc__stack_get(size_t size, conc__stack **out);

/*
 * conc__stack_put - give a stack back to the pool.  `sp` is the lowest stack
 * address its last user may have reached at the end (a suspended context's
 * stack pointer; NULL: unknown), which bounds the ASan shadow to clear.
 * Thread-safe.
 */
CONC_HIDDEN void conc__stack_put(conc__stack *s, const void *sp);

/* conc__stack_zone_ok - whether an unguarded stack's canary zone still
 * reads as zeros where it is checked: its top 256 bytes and one word every
 * 256 bytes below. */
static inline bool conc__stack_zone_ok(const conc__stack *s)
{
    const uint64_t *z = (const uint64_t *)s->lo;
    size_t words = conc__stack_zone() / sizeof(uint64_t);
    uint64_t acc = 0;
    for (size_t i = words - 32; i < words; i++)
        acc |= z[i];
    for (size_t i = 0; i < words - 32; i += 32)
        acc |= z[i];
    return acc == 0;
}

/* conc__stack_guard_limit - see conc_coro_guard_limit. */
CONC_HIDDEN long conc__stack_guard_limit(long n);

/* conc__stack_trim - see conc_coro_trim. */
CONC_HIDDEN void conc__stack_trim(void);

/* conc__stack_stats - fill the pool's part of conc_coro_stats. */
CONC_HIDDEN void conc__stack_stats(conc_coro_stats *st);

#endif
