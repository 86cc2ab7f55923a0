/*
 * coro_stack.h - the coroutine stack pool (internal).  The memory model is
 * described in include/conc/coro.h and docs/coro.md; in short:
 *
 * Stacks are carved from slabs: one anonymous MAP_NORESERVE mapping holds
 * up to 1024 stacks (about 64 MiB of address space), so a million stacks
 * need about a thousand mappings, not a million (vm.max_map_count is 65530
 * on a stock kernel).  Untouched pages cost no memory.  Each stack's region
 * (the size asked for plus a page) is
 *
 *     lo                lo + zone                                   hi
 *     | zone (one page) | usable stack (the requested size) ... top |
 *
 * The zone below the usable stack is either a guard page (an overflow
 * faults at once) or, past the guard budget, a canary zone that is never
 * written, so it reads as zeros; an overflow into it is found on the next
 * switch away (conc__stack_zone_ok).  Guard pages are page-table markers
 * where the kernel has them (MADV_GUARD_INSTALL, Linux 6.13): they cost no
 * map entry, so every stack gets one, installed for a whole slab with one
 * system call.  Elsewhere they are PROT_NONE pages, which split the mapping
 * (two map entries per stack), so only conc__stack_guard_limit stacks get
 * one (by default vm.max_map_count / 8: 8191 on a stock kernel); the lowest
 * stack of every slab always has one.
 *
 * Slabs made once the guard budget is spent are canary slabs: there the
 * zone of a stack is not a page of its own (a page read for the first time
 * costs a page fault, about as much as the page a sleeping coroutine
 * touches) but the top CONC__STACK_CANARY bytes of the region below, which
 * the neighbour there never writes:
 *
 *     region k-1                          | region k
 *     ... usable k-1 ... top | zone of k  | usable k ... top | zone of k+1 |
 *                            lo(k)        base(k)           hi(k)
 *
 * A coroutine sleeping near the top of its stack then touches one page in
 * all, its zone check included, and a stack still gets at least the size
 * asked for (its region is the size plus a page, less the zone above it).
 *
 * A stack is a value (conc__stack) that its coroutine keeps: the pool has
 * no memory per stack.  A free stack whose pages are kept is linked through
 * a node written at the top of its own usable area; one whose pages went
 * back to the kernel is kept as one word (its region and flags).
 *
 * Freed stacks are reused most-recently-freed first.  Each thread that runs
 * coroutines keeps a few free stacks of one size in a cache of its own
 * (CONC__STACK_CACHE_MAX, no lock: a spawn/finish cycle reuses the same warm
 * stack without a system call or a lock); the pool keeps up to 256 minus
 * that per size with their pages (the next coroutine touches no new memory);
 * the others are handed back to the kernel (madvise MADV_DONTNEED, in
 * batches) and cost no memory until reused.
 */
#ifndef CONC_CORO_STACK_H
#define CONC_CORO_STACK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "internal.h"
#include "conc/coro.h"
#include "sys/san.h"

struct stack_pool;

typedef struct conc__stack {
    char *lo;                   /* the zone (lowest address) */
    char *hi;                   /* one past the top; NULL: no stack */
    struct stack_pool *pool;
    uint8_t guarded;            /* the zone is a guard page */
    uint8_t slab_guard;         /* the slab's lowest stack: always guarded */
    uint8_t shared_zone;        /* the zone is CONC__STACK_CANARY bytes at the
                                   top of the stack below (canary slabs) */
    uint8_t canary_slab;        /* the top of its region is the next zone */
} conc__stack;

/* The canary zone of a stack in a canary slab: the top bytes of the region
 * below its base, which belong to its lower neighbour (never written by
 * it), so checking the zone touches no page that is not resident anyway. */
#define CONC__STACK_CANARY 1024

/* A free stack whose pages are kept, linked through its own top. */
typedef struct conc__free_stack {
    struct conc__free_stack *next;
    conc__stack s;
} conc__free_stack;

static inline conc__free_stack *conc__stack_node(const conc__stack *s)
{
    return (conc__free_stack *)(((uintptr_t)s->hi - sizeof(conc__free_stack)) & ~(uintptr_t)15);
}

/* A thread's cache of free stacks of one size (no lock: owner only).  `n`
 * and `coros` are written by the owner only, read by conc__stack_stats
 * under the pool's lock (relaxed atomics). */
#define CONC__STACK_CACHE_MAX 16

typedef struct conc__stack_cache {
    conc__free_stack *head;
    struct stack_pool *pool;    /* of the cached stacks */
    size_t size;                /* its size */
    size_t n;
    long coros;                 /* coroutines made minus freed by the thread */
    struct conc__stack_cache *prev, *next;     /* the pool's registry */
    bool registered;
} conc__stack_cache;

/* The size of a guard zone: one page (set when the library loads). */
extern CONC_HIDDEN size_t conc__stack_zone_bytes;
static inline size_t conc__stack_zone(void)
{
    return conc__stack_zone_bytes;
}

static inline size_t conc__stack_zone_of(const conc__stack *s)
{
    return s->shared_zone ? CONC__STACK_CANARY : conc__stack_zone();
}

/* The lowest address of the usable stack. */
static inline char *conc__stack_base(const conc__stack *s)
{
    return s->lo + conc__stack_zone_of(s);
}

CONC_HIDDEN int conc__stack_get_slow(conc__stack_cache *c, size_t size, conc__stack *out);
CONC_HIDDEN void conc__stack_put_slow(conc__stack_cache *c, const conc__stack *s);
CONC_HIDDEN void conc__stack_unpoison(const conc__stack *s, const void *sp);

/*
 * conc__stack_get - a stack whose usable part is at least `size` bytes (a
 * multiple of the page size), from the calling thread's cache `c` when it
 * has one (NULL: no cache).  Returns 0 and stores it in *out; -ENOMEM when
 * no memory or address space is left.  Thread-safe (c belongs to the
 * calling thread).
 */
static inline int conc__stack_get(conc__stack_cache *c, size_t size, conc__stack *out)
{
    conc__free_stack *f;
    if (likely(c && (f = c->head) != NULL && c->size == size)) {
        c->head = f->next;
        __atomic_store_n(&c->n, c->n - 1, __ATOMIC_RELAXED);
        *out = f->s;
        return 0;
    }
    return conc__stack_get_slow(c, size, out);
}

/*
 * conc__stack_put - give a stack back: to the calling thread's cache `c`
 * (NULL: none) or to the pool.  `sp` is the lowest stack address its last
 * user may have reached at the end (a suspended context's stack pointer;
 * NULL: unknown), which bounds the ASan shadow to clear.  *s may lie on the
 * stack itself.  Nothing may run on the stack any more.  Thread-safe.
 */
static inline void conc__stack_put(conc__stack_cache *c, const conc__stack *s, const void *sp)
{
    conc__stack v = *s;
#if CONC_SAN_ADDRESS
    conc__stack_unpoison(&v, sp);
#else
    (void)sp;
#endif
    if (likely(c && c->registered && c->n < CONC__STACK_CACHE_MAX && c->pool == v.pool)) {
        conc__free_stack *f = conc__stack_node(&v);
        f->s = v;
        f->next = c->head;
        c->head = f;
        __atomic_store_n(&c->n, c->n + 1, __ATOMIC_RELAXED);
        return;
    }
    conc__stack_put_slow(c, &v);
}

/* conc__stack_cache_drain - give every stack of the cache back to the pool
 * and forget the cache (its thread ends). */
CONC_HIDDEN void conc__stack_cache_drain(conc__stack_cache *c);

/* conc__stack_zone_ok - whether an unguarded stack's canary zone still
 * reads as zeros where it is checked: its top 256 bytes and one word every
 * 256 bytes below. */
static inline bool conc__stack_zone_ok(const conc__stack *s)
{
    const uint64_t *z = (const uint64_t *)s->lo;
    size_t words = conc__stack_zone_of(s) / sizeof(uint64_t);
    uint64_t acc = 0;
    for (size_t i = words - 32; i < words; i++)
        acc |= z[i];
    for (size_t i = 0; i < words - 32; i += 32)
        acc |= z[i];
    return acc == 0;
}

/* conc__stack_guard_limit - see conc_coro_guard_limit and
 * conc_coro_set_guard_limit: n >= 0 sets the limit, n < 0 leaves it; returns
 * the limit in force before the call. */
CONC_HIDDEN long conc__stack_guard_limit(long n);

/* conc__stack_trim - see conc_coro_trim; c: the calling thread's cache
 * (emptied first), or NULL. */
CONC_HIDDEN void conc__stack_trim(conc__stack_cache *c);

/* Coroutines made minus freed by threads without a registered cache (and
 * by threads that ended); conc__stack_stats adds the caches' counts. */
extern CONC_HIDDEN long conc__coros_global;

/* conc__stack_stats - fill the pool's part of conc_coro_stats, and coros. */
CONC_HIDDEN void conc__stack_stats(conc_coro_stats *st);

/*
 * conc__coro_new_embedded - conc_coro_new for the hub: the coroutine object
 * and `extra` bytes of its user's (returned in *extra_out, 16-byte aligned,
 * not zeroed; fn's arg is that block) live at the top of the coroutine's
 * own stack, so a coroutine sleeping a few calls deep costs one page in
 * all.  The stack stays with the object until conc_coro_free and the last
 * reference are gone (not until the coroutine dies); the object is invalid
 * after that.  `parent` NULL means the calling coroutine; a parent given
 * here gets no reference (it must outlive the coroutine's run, not its
 * object).  Errors as conc_coro_new; -EPERM when parent belongs to another
 * thread.
 */
CONC_HIDDEN int conc__coro_new_embedded(conc_coro **out, conc_coro_fn fn, size_t stack_size,
                                        const char *name, conc_coro *parent, size_t extra,
                                        void **extra_out);

/* conc__coro_switch_same_site - conc_coro_switch(target, NULL, NULL) for
 * the hub's switches between greenlets, which often continue where the
 * caller would return (a greenlet yielding to another that yielded). */
CONC_HIDDEN int conc__coro_switch_same_site(conc_coro *target);

/* conc__coro_set_next - where a coroutine made by conc__coro_new_embedded
 * with a parent goes when its function returns (no reference is taken:
 * `next` must not be freed before that). */
CONC_HIDDEN void conc__coro_set_next(conc_coro *c, conc_coro *next);

/*
 * Copied stacks (a hub's option, src/hub.c).  Coroutines made by
 * conc__coro_new_copied run on one stack they share, their object and
 * `extra` in a heap block of their own: the coroutine whose frames are on
 * the shared stack is its `owner`; when another one is switched to, the
 * owner's used part (from its saved stack pointer to the top) is copied to
 * a buffer of that size, and the new one's copied back (or its first frame
 * made), before the machine switch.  So a parked coroutine holds its
 * object and the bytes it used, not a stack.  The copy runs on the stack
 * of the coroutine that switches, which therefore must not be the shared
 * stack's owner: such a switch gives -EBUSY (the hub switches to a copied
 * coroutine from its loop, never from another copied one).
 */
struct conc__shstack {
    conc__stack s;
    conc_coro *owner;           /* whose frames are on it, or NULL (its
                                   thread only) */
    uint32_t refs;              /* atomic: its maker's, one per coroutine */
};

/* conc__shstack_new - a shared stack of at least `size` usable bytes, one
 * reference held by the caller: 0 or -ENOMEM, -EINVAL (the size, as
 * conc_coro_opts.stack_size). */
CONC_HIDDEN int conc__shstack_new(struct conc__shstack **out, size_t size);
/* conc__shstack_unref - drops the caller's reference; the stack goes back
 * with the last one (each coroutine made on it holds one till its object
 * goes). */
CONC_HIDDEN void conc__shstack_unref(struct conc__shstack *ss);
/* conc__shstack_size - its usable bytes. */
static inline size_t conc__shstack_size(const struct conc__shstack *ss)
{
    return (size_t)(ss->s.hi - conc__stack_base(&ss->s));
}

/*
 * conc__coro_new_copied - conc__coro_new_embedded for a coroutine on the
 * shared stack ss: the object and `extra` bytes (16-byte aligned, not
 * zeroed) in one heap block, freed with the last reference.
 */
CONC_HIDDEN int conc__coro_new_copied(conc_coro **out, conc_coro_fn fn, struct conc__shstack *ss,
                                      const char *name, conc_coro *parent, size_t extra,
                                      void **extra_out);

/* conc__coro_saved_bytes - the stack bytes a suspended copied coroutine
 * keeps in its buffer (0: none, or not copied). */
CONC_HIDDEN size_t conc__coro_saved_bytes(const conc_coro *c);

/* conc__coro_owner - c's lock-owner identity: what conc__owner_id()
 * (internal.h) reads while c runs; 0 for a thread's main coroutine. */
CONC_HIDDEN uint64_t conc__coro_owner(const conc_coro *c);

#endif
