/*
 * deque.c - collections.deque of void *, thread-safe.
 *
 * A ring buffer (ring.h) under one conc_lock.  With a maxlen, adding to a
 * full deque first drops an item from the other end, like Python; the ring
 * never grows past the power of two that holds maxlen items.  Rotation moves
 * items one slot at a time through the free part of the ring, choosing the
 * shorter direction, or only moves the head when the ring is exactly full.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include "conc/deque.h"
#include "conc/sync.h"
#include "internal.h"
#include "ring.h"

#define DEFAULT_CAP 16u

struct conc_deque {
    conc_lock lock;
    struct conc__ring ring;
    size_t maxlen;
    conc_drop_fn drop;
    void *drop_arg;
};

static inline int dlock(conc_deque *d)
{
    return conc_lock_acquire(&d->lock, CONC_FOREVER);
}

static inline void dunlock(conc_deque *d)
{
    conc_lock_release(&d->lock);
}

static inline void dropped(conc_deque *d, void *item)
{
    if (d->drop)
        d->drop(item, d->drop_arg);
}

int conc_deque_new(conc_deque **out, const conc_deque_opts *opts)
{
    conc_deque_opts o;
    if (!out)
        return -EINVAL;
    CONC__OPTS_COPY(&o, opts, CONC__OPTS_V1(conc_deque_opts, capacity));
    opts = &o;
    size_t cap = opts->capacity ? opts->capacity : DEFAULT_CAP;
    if (opts->maxlen && cap > opts->maxlen)
        cap = opts->maxlen;
    conc_deque *d;
    if (posix_memalign((void **)&d, 64, sizeof *d))
        return -ENOMEM;
    memset(d, 0, sizeof *d);
    conc_lock_init(&d->lock, 0);
    d->maxlen = opts->maxlen;
    d->drop = opts->drop;
    d->drop_arg = opts->drop_arg;
    if (ring_init(&d->ring, cap)) {
        free(d);
        return -ENOMEM;
    }
    *out = d;
    return 0;
}

static void drop_all(conc_deque *d)
{
    struct conc__ring *r = &d->ring;
    if (d->drop)
        for (size_t i = 0; i < r->count; i++)
            d->drop(ring_at(r, i), d->drop_arg);
    ring_clear(r);
}

void conc_deque_free(conc_deque *d)
{
    if (!d)
        return;
    drop_all(d);
    ring_destroy(&d->ring);
    free(d);
}

/* Room for `n` more items (fewer when maxlen caps the length).  0 or
 * -ENOMEM (nothing changed). */
static inline int reserve_more(conc_deque *d, size_t n)
{
    size_t need = d->ring.count + n;
    if (need < n)
        return -ENOMEM;
    if (d->maxlen && need > d->maxlen)
        need = d->maxlen;
    return ring_reserve(&d->ring, need);
}

/* Adds n items on one side; returns how many were dropped from the other
 * side, or -ENOMEM. */
static int push_items(conc_deque *d, void *const *items, size_t n, bool left)
{
    int r = dlock(d);
    if (unlikely(r))
        return r;
    r = reserve_more(d, n);
    if (unlikely(r))
        goto out;
    struct conc__ring *ring = &d->ring;
    for (size_t i = 0; i < n; i++) {
        if (d->maxlen && ring->count == d->maxlen) {
            dropped(d, left ? ring_pop_back(ring) : ring_pop_front(ring));
            r++;
        }
        if (left)
            ring_push_front(ring, items[i]);
        else
            ring_push_back(ring, items[i]);
    }
out:
    dunlock(d);
    return r;
}

int conc_deque_append(conc_deque *d, void *item)
{
    if (unlikely(!d))
        return -EINVAL;
    return push_items(d, &item, 1, false);
}

int conc_deque_appendleft(conc_deque *d, void *item)
{
    if (unlikely(!d))
        return -EINVAL;
    return push_items(d, &item, 1, true);
}

int conc_deque_extend(conc_deque *d, void *const *items, size_t n)
{
    if (unlikely(!d || (!items && n) || n > INT_MAX))
        return -EINVAL;
    return n ? push_items(d, items, n, false) : 0;
}

int conc_deque_extendleft(conc_deque *d, void *const *items, size_t n)
{
    if (unlikely(!d || (!items && n) || n > INT_MAX))
        return -EINVAL;
    return n ? push_items(d, items, n, true) : 0;
}

/* Pops (remove) or peeks at one end. */
static int take_end(conc_deque *d, void **out, bool left, bool remove)
{
    if (unlikely(!d || !out))
        return -EINVAL;
    int r = dlock(d);
    if (unlikely(r))
        return r;
    struct conc__ring *ring = &d->ring;
    if (ring->count == 0) {
        r = -EAGAIN;
    } else if (remove) {
        *out = left ? ring_pop_front(ring) : ring_pop_back(ring);
    } else {
        *out = ring_at(ring, left ? 0 : ring->count - 1);
    }
    dunlock(d);
    return r;
}

int conc_deque_pop(conc_deque *d, void **out)
{
    return take_end(d, out, false, true);
}

int conc_deque_popleft(conc_deque *d, void **out)
{
    return take_end(d, out, true, true);
}

int conc_deque_peek(conc_deque *d, void **out)
{
    return take_end(d, out, false, false);
}

int conc_deque_peekleft(conc_deque *d, void **out)
{
    return take_end(d, out, true, false);
}

int conc_deque_rotate(conc_deque *d, int64_t n)
{
    if (unlikely(!d))
        return -EINVAL;
    int r = dlock(d);
    if (unlikely(r))
        return r;
    struct conc__ring *ring = &d->ring;
    size_t len = ring->count;
    if (len > 1 && n != 0) {
        /* Steps to the right, in 0..len-1, computed without overflow. */
        size_t right;
        if (n > 0)
            right = (size_t)((uint64_t)n % len);
        else
            right = (len - (size_t)((0 - (uint64_t)n) % len)) % len;
        size_t mask = ring->mask;
        if (right == 0) {
            /* nothing to do */
        } else if (len == ring_cap(ring)) {
            ring->head = (ring->head - right) & mask;
        } else if (right <= len / 2) {
            /* Move the last `right` items, one by one, before the head. */
            for (size_t i = 0; i < right; i++) {
                ring->head = (ring->head - 1) & mask;
                ring->buf[ring->head] = ring->buf[(ring->head + len) & mask];
            }
        } else {
            /* Move the first len - right items after the tail. */
            for (size_t i = right; i < len; i++) {
                ring->buf[(ring->head + len) & mask] = ring->buf[ring->head];
                ring->head = (ring->head + 1) & mask;
            }
        }
    }
    dunlock(d);
    return 0;
}

int conc_deque_reverse(conc_deque *d)
{
    if (unlikely(!d))
        return -EINVAL;
    int r = dlock(d);
    if (unlikely(r))
        return r;
    struct conc__ring *ring = &d->ring;
    size_t mask = ring->mask;
    for (size_t i = 0, j = ring->count; i + 1 < j; i++, j--) {
        void **a = &ring->buf[(ring->head + i) & mask];
        void **b = &ring->buf[(ring->head + j - 1) & mask];
        void *t = *a;
        *a = *b;
        *b = t;
    }
    dunlock(d);
    return 0;
}

int conc_deque_clear(conc_deque *d)
{
    if (unlikely(!d))
        return -EINVAL;
    int r = dlock(d);
    if (unlikely(r))
        return r;
    drop_all(d);
    dunlock(d);
    return 0;
}

size_t conc_deque_len(const conc_deque *d)
{
    return d ? ring_len(&d->ring) : 0;
}

size_t conc_deque_maxlen(const conc_deque *d)
{
    return d ? d->maxlen : 0;
}
