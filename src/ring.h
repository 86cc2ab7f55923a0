/*
 * ring.h - a growable ring buffer of void * (the storage behind the LIFO
 * queue and the deque); not installed.
 *
 * The capacity is a power of two, so positions wrap with a mask.  Items sit
 * at head, head+1, ..., head+count-1 (mod cap).  The ring itself does no
 * locking: its owner holds a lock around every call.  `count` is written
 * with relaxed atomic stores so that a size query may read it without the
 * lock (a snapshot, like Python's qsize()).
 */
#ifndef CONC_RING_H
#define CONC_RING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "internal.h"

struct conc__ring {
    void **buf;
    size_t mask;            /* cap - 1 */
    size_t head;            /* position of the first (leftmost) item */
    size_t count;
};

#define RING_MIN_CAP 8u
/* No ring grows past this many slots (keeps cap * sizeof(void *) exact). */
#define RING_MAX_CAP ((size_t)1 << (sizeof(size_t) * 8 - 5))

static inline size_t ring_cap(const struct conc__ring *r)
{
    return r->mask + 1;
}

static inline size_t ring_len(const struct conc__ring *r)
{
    return ld_relaxed(&r->count);
}

static inline void ring_set_count(struct conc__ring *r, size_t n)
{
    st_relaxed(&r->count, n);
}

/* The smallest power of two >= n (at least RING_MIN_CAP, at most
 * RING_MAX_CAP). */
static inline size_t ring_round_cap(size_t n)
{
    if (n <= RING_MIN_CAP)
        return RING_MIN_CAP;
    if (n >= RING_MAX_CAP)
        return RING_MAX_CAP;
    return (size_t)1 << (sizeof(size_t) * 8 - (size_t)__builtin_clzl(n - 1));
}

/* Allocates an empty ring with room for `cap` items (rounded up).
 * Returns 0 or -ENOMEM. */
static inline int ring_init(struct conc__ring *r, size_t cap)
{
    cap = ring_round_cap(cap);
    r->buf = malloc(cap * sizeof(void *));
    if (!r->buf)
        return -ENOMEM;
    r->mask = cap - 1;
    r->head = 0;
    r->count = 0;
    return 0;
}

static inline void ring_destroy(struct conc__ring *r)
{
    free(r->buf);
    r->buf = NULL;
}

/* Makes room for at least `need` items, keeping their order.  Returns 0, or
 * -ENOMEM (the ring is unchanged). */
static inline int ring_reserve(struct conc__ring *r, size_t need)
{
    size_t cap = ring_cap(r);
    if (likely(need <= cap))
        return 0;
    if (need > RING_MAX_CAP)
        return -ENOMEM;
    size_t ncap = cap;
    while (ncap < need)
        ncap *= 2;
    void **nb = malloc(ncap * sizeof(void *));
    if (!nb)
        return -ENOMEM;
    /* Unwrap: the items from head to the end of the buffer, then the rest. */
    size_t first = cap - r->head;
    if (first > r->count)
        first = r->count;
    memcpy(nb, r->buf + r->head, first * sizeof(void *));
    memcpy(nb + first, r->buf, (r->count - first) * sizeof(void *));
    free(r->buf);
    r->buf = nb;
    r->mask = ncap - 1;
    r->head = 0;
    return 0;
}

/* The item at position i (0 = leftmost); i < count. */
static inline void *ring_at(const struct conc__ring *r, size_t i)
{
    return r->buf[(r->head + i) & r->mask];
}

/* Adds on the right; room must have been reserved. */
static inline void ring_push_back(struct conc__ring *r, void *item)
{
    r->buf[(r->head + r->count) & r->mask] = item;
    ring_set_count(r, r->count + 1);
}

/* Adds on the left; room must have been reserved. */
static inline void ring_push_front(struct conc__ring *r, void *item)
{
    r->head = (r->head - 1) & r->mask;
    r->buf[r->head] = item;
    ring_set_count(r, r->count + 1);
}

/* Removes the leftmost item; the ring must not be empty. */
static inline void *ring_pop_front(struct conc__ring *r)
{
    void *item = r->buf[r->head];
    r->head = (r->head + 1) & r->mask;
    ring_set_count(r, r->count - 1);
    return item;
}

/* Removes the rightmost item; the ring must not be empty. */
static inline void *ring_pop_back(struct conc__ring *r)
{
    size_t n = r->count - 1;
    void *item = r->buf[(r->head + n) & r->mask];
    ring_set_count(r, n);
    return item;
}

/* Forgets every item (the buffer stays). */
static inline void ring_clear(struct conc__ring *r)
{
    r->head = 0;
    ring_set_count(r, 0);
}

#endif
