/*
 * queue_fifo.c - the FIFO behind queue.Queue and SimpleQueue: a ring of
 * item pointers with one lock for the producers and another for the
 * consumers, so a producer and a consumer never wait for each other (the
 * single mutex of Python's queue.py makes them take turns on every item).
 *
 * Positions are counters that only grow; an item sits at buf[pos & mask].
 * A producer (plock held) stores the item and then publishes it by a
 * release store of tail; a consumer (clock held) reads the item at head and
 * frees the slot by a release store of head.  Only a producer that finds
 * the ring full grows it, holding both locks (plock first), so buf and mask
 * never change under either side.
 *
 * Sleeping: a getter that found nothing parks on the spot `getters`
 * (sys/park.h: it counts itself, re-checks, spins, sleeps); a putter that
 * published claims and wakes one sleeper when one is counted (wait_on has
 * the lost-wake-up argument).  A sleeper that leaves without an item
 * (timeout, kill) while items wait passes the wake-up on.  Putters of a
 * bounded queue and joiners do the same on their own spots.  All of it goes
 * through conc's wait primitive, so coroutines park.
 */
#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include "conc/sync.h"
#include "queue_fifo.h"
#include "sys/park.h"
#include "sys/wait.h"

#define SIDE _Alignas(128)
/* How often a spinning waiter looks whether it was woken: adapted between
 * these bounds to what the waits see (see wait_on). */
#define SPIN_LOOK_MIN_NS 125u
#define SPIN_LOOK_MAX_NS 4000u

/* A side's sleepers: their parking spot (sys/park.h), and the side's
 * spinning heuristic. */
struct waiters {
    struct conc__park park;
    uint32_t look_ns;       /* how often a spinning waiter looks (adapted) */
    size_t last_pos;        /* the side's position at the last wait */
};

struct conc__fifo {
    /* Read-only after creation. */
    size_t maxsize;
    bool simple;
    conc_drop_fn drop;
    void *drop_arg;
    /* Producers' own line: each side keeps a copy of the ring's address and
     * a cached view of the other side's position, so that in a steady
     * stream neither reads the other's lines on every item. */
    SIDE conc_lock plock;
    void **pbuf;
    size_t pmask;
    size_t head_seen;       /* head as last read (<= the real one) */
    /* Consumers' own line. */
    SIDE conc_lock clock;
    void **cbuf;
    size_t cmask;
    size_t tail_seen;       /* tail as last read (<= the real one) */
    /* The positions, each on its own line. */
    SIDE size_t tail;
    SIDE size_t head;
    /* Rarely written. */
    SIDE struct waiters getters, putters, joiners;
    bool shutdown;
    int efd;                /* readiness eventfd, -1 until asked for */
    bool efd_set;           /* it was written and not drained since */
    conc_lock efd_lock;     /* guards efd_set and the eventfd's counter */
    SIDE size_t unfinished;
};

static inline void fifo_lock_both(struct conc__fifo *f)
{
    conc_lock_acquire(&f->plock, CONC_FOREVER);
    conc_lock_acquire(&f->clock, CONC_FOREVER);
}

static inline void fifo_unlock_both(struct conc__fifo *f)
{
    conc_lock_release(&f->clock);
    conc_lock_release(&f->plock);
}

static inline size_t count_of(const struct conc__fifo *f)
{
    size_t h = __atomic_load_n(&f->head, __ATOMIC_SEQ_CST);
    return __atomic_load_n(&f->tail, __ATOMIC_SEQ_CST) - h;
}

/* ------------------------------------------------------------ waiting */

/*
 * Wakes one sleeper of w (n == 1) or all of them: the parking layer's
 * claim (sys/park.h).  The change that may let sleepers go on was a
 * seq_cst store (or read-modify-write).
 */
static inline void wake(struct waiters *w, int n)
{
    conc__park_wake(&w->park, n, 0);
}

static bool can_get(struct conc__fifo *f)
{
    return count_of(f) > 0 || __atomic_load_n(&f->shutdown, __ATOMIC_SEQ_CST);
}

static bool can_put(struct conc__fifo *f)
{
    return count_of(f) < f->maxsize || __atomic_load_n(&f->shutdown, __ATOMIC_SEQ_CST);
}

static bool all_done(struct conc__fifo *f)
{
    return __atomic_load_n(&f->unfinished, __ATOMIC_SEQ_CST) == 0;
}

/*
 * Waits until ready(f) may hold.  Returns 0 to re-check, -EAGAIN for a
 * poll, -ETIMEDOUT, -ECANCELED, -EDEADLK, -EINVAL (bad timeout).  A plain
 * thread of a process with several CPUs first spins a little: the peer
 * usually makes the wait unnecessary within microseconds, and sleeping
 * costs both sides a system call and the sleeper a wake-up latency.
 */
static int wait_on(struct conc__fifo *f, struct waiters *w, bool (*ready)(struct conc__fifo *),
                   struct conc__limit *l, size_t pos)
{
    if (l->poll)
        return -EAGAIN;
    if (conc__limit_resolve(l))
        return -EINVAL;
    /* No lost wake-up: counted (seq_cst) before ready() looks (seq_cst),
     * against a change (seq_cst) before the waker's look at the count. */
    uint32_t key = conc__park_prepare(&w->park);
    if (ready(f)) {
        conc__park_cancel(&w->park, key);
        return 0;
    }
    unsigned flags = CONC__PARK_NOSPIN;
    uint32_t every = 0;
    if (!l->spun && conc__may_spin()) {
        /* How often a spinning waiter looks adapts to the traffic.  When
         * this side moved by one item since its last wait, the other side
         * hands items over one at a time (a ping-pong): look often, latency
         * is all.  When it moved by more, items come in a stream: look
         * seldom, so that a batch gathers instead of each item paying the
         * hand-over.  (A heuristic shared by the side's waiters.) */
        l->spun = true;
        flags = 0;
        size_t moved = pos - ld_relaxed(&w->last_pos);
        st_relaxed(&w->last_pos, pos);
        every = ld_relaxed(&w->look_ns);
        if (moved <= 1)
            every = every / 2 < SPIN_LOOK_MIN_NS ? SPIN_LOOK_MIN_NS : every / 2;
        else
            every = every * 2 > SPIN_LOOK_MAX_NS ? SPIN_LOOK_MAX_NS : every * 2;
        st_relaxed(&w->look_ns, every);
    }
    int r = conc__park_wait(&w->park, key, l->deadline, flags, every);
    /* Leaving for good: a wake-up meant for us goes to another sleeper. */
    if (r < 0 && ready(f))
        wake(w, 1);
    return r < 0 ? r : 0;
}

/* ------------------------------------------------------------ readiness */

/* The readiness fd follows the queue exactly: raised and lowered under a
 * lock of its own (only taken once the fd exists), lowered only after
 * checking, under that lock, that nothing can be got. */
static void fd_raise(struct conc__fifo *f)
{
    conc_lock_acquire(&f->efd_lock, CONC_FOREVER);
    if (!f->efd_set) {
        uint64_t one = 1;
        ssize_t n = write(f->efd, &one, sizeof one);
        (void)n;
        f->efd_set = true;
    }
    conc_lock_release(&f->efd_lock);
}

static void fd_lower(struct conc__fifo *f)
{
    conc_lock_acquire(&f->efd_lock, CONC_FOREVER);
    if (f->efd_set && !can_get(f)) {
        uint64_t v;
        ssize_t n = read(f->efd, &v, sizeof v);
        (void)n;
        f->efd_set = false;
    }
    conc_lock_release(&f->efd_lock);
}

int conc__fifo_fd(struct conc__fifo *f)
{
    fifo_lock_both(f);
    int r = ld_relaxed(&f->efd);
    if (r < 0) {
        r = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (r < 0) {
            r = -errno;
        } else {
            __atomic_store_n(&f->efd, r, __ATOMIC_SEQ_CST);
            if (can_get(f))
                fd_raise(f);
        }
    }
    fifo_unlock_both(f);
    return r;
}

/* ------------------------------------------------------------ storage */

/* Doubles the ring (plock held; takes clock).  0 or -ENOMEM. */
static int grow(struct conc__fifo *f)
{
    size_t cap = f->pmask + 1;
    if (cap > SIZE_MAX / 2 / sizeof(void *))
        return -ENOMEM;
    void **nb = malloc(2 * cap * sizeof *nb);
    if (!nb)
        return -ENOMEM;
    conc_lock_acquire(&f->clock, CONC_FOREVER);
    size_t nmask = 2 * cap - 1;
    for (size_t p = f->head; p != f->tail; p++)
        nb[p & nmask] = f->pbuf[p & f->pmask];
    void **old = f->pbuf;
    f->pbuf = f->cbuf = nb;
    f->pmask = f->cmask = nmask;
    conc_lock_release(&f->clock);
    free(old);
    return 0;
}

struct conc__fifo *conc__fifo_new(size_t maxsize, size_t cap, bool simple, conc_drop_fn drop,
                                  void *drop_arg)
{
    size_t c = 4;
    while (c < cap && c <= SIZE_MAX / 4 / sizeof(void *))
        c *= 2;
    void *mem;
    if (posix_memalign(&mem, 128, sizeof(struct conc__fifo)))
        return NULL;
    struct conc__fifo *f = mem;
    memset(f, 0, sizeof *f);
    f->pbuf = f->cbuf = malloc(c * sizeof *f->pbuf);
    if (!f->pbuf) {
        free(f);
        return NULL;
    }
    f->pmask = f->cmask = c - 1;
    f->maxsize = maxsize ? maxsize : SIZE_MAX;
    f->simple = simple;
    f->drop = drop;
    f->drop_arg = drop_arg;
    f->efd = -1;
    conc_lock_init(&f->plock, 0);
    conc_lock_init(&f->clock, 0);
    conc_lock_init(&f->efd_lock, 0);
    f->getters.look_ns = f->putters.look_ns = f->joiners.look_ns = SPIN_LOOK_MAX_NS;
    return f;
}

/* Drops every queued item (both locks held).  Returns how many. */
static size_t discard_all(struct conc__fifo *f)
{
    size_t n = 0;
    for (size_t p = f->head; p != f->tail; p++, n++)
        if (f->drop)
            f->drop(f->cbuf[p & f->cmask], f->drop_arg);
    __atomic_store_n(&f->head, f->tail, __ATOMIC_SEQ_CST);
    f->tail_seen = f->head_seen = f->tail;
    return n;
}

void conc__fifo_free(struct conc__fifo *f)
{
    if (!f)
        return;
    discard_all(f);
    if (f->efd >= 0)
        close(f->efd);
    free(f->pbuf);
    free(f);
}

/* ------------------------------------------------------------ put / get */

int conc__fifo_put(struct conc__fifo *f, void *item, struct conc__limit *l)
{
    for (;;) {
        int r = conc_lock_acquire(&f->plock, CONC_FOREVER);
        if (unlikely(r))
            return r;
        if (unlikely(ld_relaxed(&f->shutdown))) {
            conc_lock_release(&f->plock);
            return -EPIPE;
        }
        size_t t = f->tail;
        size_t used = t - f->head_seen;
        if (used >= f->maxsize || used > f->pmask) {
            f->head_seen = ld_acquire(&f->head);
            used = t - f->head_seen;
        }
        if (used < f->maxsize) {
            if (unlikely(used > f->pmask)) {
                r = grow(f);
                if (r) {
                    conc_lock_release(&f->plock);
                    return r;
                }
            }
            f->pbuf[t & f->pmask] = item;
            if (!f->simple)
                __atomic_fetch_add(&f->unfinished, 1, __ATOMIC_RELAXED);
            __atomic_store_n(&f->tail, t + 1, __ATOMIC_SEQ_CST);
            conc_lock_release(&f->plock);
            wake(&f->getters, 1);
            if (unlikely(ld_relaxed(&f->efd) >= 0))
                fd_raise(f);
            return 0;
        }
        conc_lock_release(&f->plock);
        r = wait_on(f, &f->putters, can_put, l, ld_relaxed(&f->tail));
        if (r)
            return r;
    }
}

int conc__fifo_get(struct conc__fifo *f, void **out, struct conc__limit *l)
{
    for (;;) {
        int r = conc_lock_acquire(&f->clock, CONC_FOREVER);
        if (unlikely(r))
            return r;
        size_t h = f->head;
        if (h == f->tail_seen)
            f->tail_seen = ld_acquire(&f->tail);
        if (h != f->tail_seen) {
            *out = f->cbuf[h & f->cmask];
            __atomic_store_n(&f->head, h + 1, __ATOMIC_SEQ_CST);
            conc_lock_release(&f->clock);
            if (f->maxsize != SIZE_MAX)
                wake(&f->putters, 1);
            if (unlikely(ld_relaxed(&f->efd) >= 0) && !can_get(f))
                fd_lower(f);
            return 0;
        }
        conc_lock_release(&f->clock);
        if (ld_acquire(&f->shutdown))
            return -EPIPE;
        r = wait_on(f, &f->getters, can_get, l, ld_relaxed(&f->head));
        if (r)
            return r;
    }
}

/* ------------------------------------------------------------ the rest */

size_t conc__fifo_qsize(const struct conc__fifo *f)
{
    return count_of(f);
}

size_t conc__fifo_unfinished(const struct conc__fifo *f)
{
    return ld_acquire(&f->unfinished);
}

bool conc__fifo_is_shutdown(const struct conc__fifo *f)
{
    return ld_acquire(&f->shutdown);
}

int conc__fifo_task_done(struct conc__fifo *f)
{
    size_t u = ld_acquire(&f->unfinished);
    do {
        if (u == 0)
            return -EOVERFLOW;
    } while (!__atomic_compare_exchange_n(&f->unfinished, &u, u - 1, false, __ATOMIC_SEQ_CST,
                                          __ATOMIC_ACQUIRE));
    if (u == 1)
        wake(&f->joiners, INT_MAX);
    return 0;
}

int conc__fifo_join(struct conc__fifo *f, struct conc__limit *l)
{
    while (!all_done(f)) {
        int r = wait_on(f, &f->joiners, all_done, l, 0);
        if (r)
            return r;
    }
    return 0;
}

int conc__fifo_shutdown(struct conc__fifo *f, bool immediate)
{
    fifo_lock_both(f);
    __atomic_store_n(&f->shutdown, true, __ATOMIC_SEQ_CST);
    if (immediate) {
        size_t n = discard_all(f);
        if (!f->simple) {
            size_t u = ld_acquire(&f->unfinished);
            while (!__atomic_compare_exchange_n(&f->unfinished, &u, u > n ? u - n : 0, false,
                                                __ATOMIC_SEQ_CST, __ATOMIC_ACQUIRE))
                ;
        }
    }
    fifo_unlock_both(f);
    /* Getters re-check (items left, or ShutDown); putters get ShutDown. */
    wake(&f->getters, INT_MAX);
    wake(&f->putters, INT_MAX);
    wake(&f->joiners, INT_MAX);
    if (ld_relaxed(&f->efd) >= 0)
        fd_raise(f);
    return 0;
}
