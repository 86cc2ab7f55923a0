/*
 * queue.c - queue.Queue, LifoQueue, PriorityQueue and SimpleQueue between
 * threads.
 *
 * queue.Queue and SimpleQueue (FIFO) run on a two-lock ring of their own
 * (src/queue_fifo.c): producers and consumers never take turns on one lock.
 * For them this file only checks the arguments and hands each call over.
 *
 * LifoQueue and PriorityQueue, below, keep the shape of Python's
 * queue.Queue: one mutex (a conc_lock) and three conditions over it,
 * not_empty (getters wait), not_full (putters of a bounded queue wait) and
 * all_done (joiners wait).  Every change of state happens under the mutex
 * and notifies the condition whose predicate it may have made true.  A
 * conc_cond only costs a notify a system call when a thread actually sleeps
 * on it, so the uncontended path is: take the lock, store or fetch a
 * pointer, one atomic load per notify, release the lock.
 *
 * Storage: FIFO and SimpleQueue keep their items in queue_fifo.c's own
 * ring; the LIFO queue uses a ring buffer (ring.h), popped at the back; the
 * priority queue a binary min-heap of (priority, sequence, item), where the
 * sequence number makes equal ranks come out in insertion order.  Each
 * grows by doubling and never shrinks, so the steady state allocates
 * nothing.
 *
 * Fields read without the lock by the snapshot queries (the item count,
 * unfinished, shutdown) are written with relaxed atomic stores under it.
 */
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include "conc/queue.h"
#include "conc/sync.h"
#include "internal.h"
#include "queue_fifo.h"
#include "ring.h"
#include "sys/park.h"
#include "sys/wait.h"

#define DEFAULT_CAP 16u
/* A bounded queue up to this size gets all its slots at creation. */
#define PREALLOC_MAX 4096u

struct pq_entry {
    int64_t prio;
    uint64_t seq;
    void *item;
};

struct conc_queue {
    struct conc__fifo *fifo;    /* FIFO and SimpleQueue: all the state */
    conc_lock lock;
    conc_cond not_empty;
    conc_cond not_full;
    conc_cond all_done;
    conc_queue_kind kind;
    bool shutdown;
    bool fd_on;             /* the eventfd counter is non-zero */
    int efd;                /* readiness eventfd, -1 until conc_queue_fd */
    size_t maxsize;
    size_t unfinished;
    struct conc__ring ring; /* LIFO */
    struct pq_entry *heap;  /* PRIORITY */
    size_t hcap;
    size_t hcount;
    uint64_t seq;
    conc_queue_cmp cmp;
    void *cmp_arg;
    conc_drop_fn drop;
    void *drop_arg;
};

/* ------------------------------------------------------------ waiting */

static inline int qlock(conc_queue *q);
static inline void qunlock(conc_queue *q);

/*
 * Before a put or get sleeps: a plain thread of a process with several CPUs
 * first watches the queue for a few microseconds with the lock released.
 * The peer usually makes the wait unnecessary by then, and sleeping would
 * cost both sides a system call and the sleeper a wake-up latency.  Returns
 * true when it spun (the lock is held again; the caller re-checks).
 */
static bool spin_unlocked(conc_queue *q, conc_cond *cond, struct conc__limit *l)
{
    struct conc__spin s;
    if (l->spun || cond == &q->all_done || !conc__spin_begin(&s, l->deadline))
        return false;
    l->spun = true;
    bool want_items = cond == &q->not_empty;
    const size_t *count = q->kind == CONC_QUEUE_PRIORITY ? &q->hcount : &q->ring.count;
    qunlock(q);
    while (conc__spin_step(&s, 1)) {
        size_t n = ld_relaxed(count);
        if ((want_items ? n > 0 : n < q->maxsize) || ld_relaxed(&q->shutdown))
            break;
    }
    (void)qlock(q);     /* a plain thread: waits for ever, never fails */
    return true;
}

/*
 * Waits once on cond with the queue's lock held (released while waiting,
 * held again on return).  Returns 0 after a wake-up (the caller re-checks
 * its predicate), -EAGAIN for a poll (nothing waited), -ETIMEDOUT when the
 * deadline passed, or another negative code from the wait (a cancelled
 * coroutine).
 */
static int wait_once(conc_queue *q, conc_cond *cond, struct conc__limit *l)
{
    if (l->poll)
        return -EAGAIN;
    if (conc__limit_resolve(l))
        return -EINVAL;
    if (spin_unlocked(q, cond, l))
        return 0;
    return conc_cond_wait_until(cond, &q->lock, l->deadline);
}

/* Takes the queue's lock.  0, or a negative code when a coroutine waiting
 * for it was cancelled. */
static inline int qlock(conc_queue *q)
{
    return conc_lock_acquire(&q->lock, CONC_FOREVER);
}

static inline void qunlock(conc_queue *q)
{
    conc_lock_release(&q->lock);
}

/* ------------------------------------------------------------ storage */

static inline size_t qlen(const conc_queue *q)
{
    return q->kind == CONC_QUEUE_PRIORITY ? q->hcount : q->ring.count;
}

/* True when a are ranked before b. */
static inline bool pq_before(const conc_queue *q, const struct pq_entry *a,
                             const struct pq_entry *b)
{
    if (a->prio != b->prio)
        return a->prio < b->prio;
    if (q->cmp) {
        int c = q->cmp(a->item, b->item, q->cmp_arg);
        if (c)
            return c < 0;
    }
    return a->seq < b->seq;
}

static int heap_reserve(conc_queue *q, size_t need)
{
    if (likely(need <= q->hcap))
        return 0;
    size_t ncap = q->hcap ? q->hcap : DEFAULT_CAP;
    while (ncap < need) {
        if (ncap > SIZE_MAX / 2 / sizeof(struct pq_entry))
            return -ENOMEM;
        ncap *= 2;
    }
    struct pq_entry *nh = realloc(q->heap, ncap * sizeof *nh);
    if (!nh)
        return -ENOMEM;
    q->heap = nh;
    q->hcap = ncap;
    return 0;
}

static int heap_push(conc_queue *q, void *item, int64_t prio)
{
    int r = heap_reserve(q, q->hcount + 1);
    if (unlikely(r))
        return r;
    struct pq_entry e = { prio, q->seq++, item };
    struct pq_entry *h = q->heap;
    size_t i = q->hcount;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!pq_before(q, &e, &h[parent]))
            break;
        h[i] = h[parent];
        i = parent;
    }
    h[i] = e;
    st_relaxed(&q->hcount, q->hcount + 1);
    return 0;
}

static struct pq_entry heap_pop(conc_queue *q)
{
    struct pq_entry *h = q->heap;
    struct pq_entry top = h[0];
    size_t n = q->hcount - 1;
    st_relaxed(&q->hcount, n);
    if (n == 0)
        return top;
    /* Sift the last entry down from the root. */
    struct pq_entry last = h[n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && pq_before(q, &h[c + 1], &h[c]))
            c++;
        if (!pq_before(q, &h[c], &last))
            break;
        h[i] = h[c];
        i = c;
    }
    h[i] = last;
    return top;
}

/* Stores one item.  0 or -ENOMEM (nothing stored). */
static inline int store(conc_queue *q, void *item, int64_t prio)
{
    if (q->kind == CONC_QUEUE_PRIORITY)
        return heap_push(q, item, prio);
    int r = ring_reserve(&q->ring, q->ring.count + 1);
    if (unlikely(r))
        return r;
    ring_push_back(&q->ring, item);
    return 0;
}

/* Removes the next item; the queue must not be empty. */
static inline void *take(conc_queue *q, int64_t *prio)
{
    switch (q->kind) {
    case CONC_QUEUE_PRIORITY: {
        struct pq_entry e = heap_pop(q);
        *prio = e.prio;
        return e.item;
    }
    case CONC_QUEUE_LIFO:
        *prio = 0;
        return ring_pop_back(&q->ring);
    default:
        *prio = 0;
        return ring_pop_front(&q->ring);
    }
}

/* ------------------------------------------------------- readiness fd */

static void fd_raise(conc_queue *q)
{
    uint64_t one = 1;
    int saved = errno;
    while (write(q->efd, &one, sizeof one) < 0 && errno == EINTR)
        ;
    errno = saved;
    q->fd_on = true;
}

static void fd_lower(conc_queue *q)
{
    uint64_t v;
    int saved = errno;
    while (read(q->efd, &v, sizeof v) < 0 && errno == EINTR)
        ;
    errno = saved;
    q->fd_on = false;
}

int conc_queue_fd(conc_queue *q)
{
    if (unlikely(!q))
        return -EINVAL;
    if (q->fifo)
        return conc__fifo_fd(q->fifo);
    int r = qlock(q);
    if (r)
        return r;
    if (q->efd < 0) {
        int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (fd < 0) {
            r = -errno;
        } else {
            q->efd = fd;
            q->fd_on = false;
            if (qlen(q) > 0 || q->shutdown)
                fd_raise(q);
        }
    }
    if (r == 0)
        r = q->efd;
    qunlock(q);
    return r;
}

/* ---------------------------------------------------------- lifecycle */

int conc_queue_new(conc_queue **out, const conc_queue_opts *opts)
{
    conc_queue_opts o;
    if (!out)
        return -EINVAL;
    CONC__OPTS_COPY(&o, opts, CONC__OPTS_V1(conc_queue_opts, capacity));
    opts = &o;
    if ((unsigned)opts->kind > CONC_QUEUE_SIMPLE)
        return -EINVAL;
    if (opts->kind == CONC_QUEUE_SIMPLE && opts->maxsize)
        return -EINVAL;
    if (opts->cmp && opts->kind != CONC_QUEUE_PRIORITY)
        return -EINVAL;

    size_t cap = opts->capacity;
    if (!cap)
        cap = opts->maxsize && opts->maxsize <= PREALLOC_MAX ? opts->maxsize : DEFAULT_CAP;
    if (opts->maxsize && cap > opts->maxsize)
        cap = opts->maxsize;

    conc_queue *q;
    if (posix_memalign((void **)&q, 64, sizeof *q))
        return -ENOMEM;
    memset(q, 0, sizeof *q);
    conc_lock_init(&q->lock, 0);
    conc_cond_init(&q->not_empty, 0);
    conc_cond_init(&q->not_full, 0);
    conc_cond_init(&q->all_done, 0);
    q->kind = opts->kind;
    q->maxsize = opts->maxsize;
    q->efd = -1;
    q->cmp = opts->cmp;
    q->cmp_arg = opts->cmp_arg;
    q->drop = opts->drop;
    q->drop_arg = opts->drop_arg;
    int r;
    if (q->kind == CONC_QUEUE_FIFO || q->kind == CONC_QUEUE_SIMPLE) {
        q->fifo = conc__fifo_new(q->maxsize, cap, q->kind == CONC_QUEUE_SIMPLE, q->drop,
                                 q->drop_arg);
        r = q->fifo ? 0 : -ENOMEM;
    } else {
        r = q->kind == CONC_QUEUE_PRIORITY ? heap_reserve(q, cap) : ring_init(&q->ring, cap);
    }
    if (r) {
        free(q);
        return r;
    }
    *out = q;
    return 0;
}

/* Empties the queue into the drop callback; returns how many items went. */
static size_t discard_all(conc_queue *q)
{
    size_t n = 0;
    int64_t prio;
    while (qlen(q) > 0) {
        void *item = take(q, &prio);
        if (q->drop)
            q->drop(item, q->drop_arg);
        n++;
    }
    return n;
}

void conc_queue_free(conc_queue *q)
{
    if (!q)
        return;
    if (q->fifo) {
        conc__fifo_free(q->fifo);
        free(q);
        return;
    }
    discard_all(q);
    if (q->efd >= 0)
        close(q->efd);
    if (q->kind == CONC_QUEUE_PRIORITY)
        free(q->heap);
    else
        ring_destroy(&q->ring);
    free(q);
}

/* ---------------------------------------------------------- put / get */

static int queue_put(conc_queue *q, void *item, int64_t prio, struct conc__limit *l)
{
    if (q->fifo)
        return conc__fifo_put(q->fifo, item, l);
    int r = qlock(q);
    if (unlikely(r))
        return r;
    if (unlikely(q->shutdown)) {
        r = -EPIPE;
        goto out;
    }
    if (q->maxsize) {
        bool woken = false, timed_out = false;
        while (qlen(q) >= q->maxsize) {
            if (timed_out) {
                r = -ETIMEDOUT;
                goto out;
            }
            r = wait_once(q, &q->not_full, l);
            if (r == -ETIMEDOUT)
                timed_out = true;
            else if (r < 0)
                goto out;
            woken = true;
            if (q->shutdown) {
                r = -EPIPE;
                goto out;
            }
        }
        r = store(q, item, prio);
        if (unlikely(r)) {
            if (woken)      /* pass the wake-up on: a slot is still free */
                conc_cond_notify(&q->not_full, 1);
            goto out;
        }
    } else {
        r = store(q, item, prio);
        if (unlikely(r))
            goto out;
    }
    if (q->kind != CONC_QUEUE_SIMPLE)
        st_relaxed(&q->unfinished, q->unfinished + 1);
    if (unlikely(q->efd >= 0) && !q->fd_on)
        fd_raise(q);
    conc_cond_notify(&q->not_empty, 1);
    r = 0;
out:
    qunlock(q);
    return r;
}

static int queue_get(conc_queue *q, void **out, int64_t *prio, struct conc__limit *l)
{
    if (q->fifo) {
        if (prio)
            *prio = 0;
        return conc__fifo_get(q->fifo, out, l);
    }
    int r = qlock(q);
    if (unlikely(r))
        return r;
    bool timed_out = false;
    while (qlen(q) == 0) {
        if (q->shutdown) {
            r = -EPIPE;
            goto out;
        }
        if (timed_out) {
            r = -ETIMEDOUT;
            goto out;
        }
        r = wait_once(q, &q->not_empty, l);
        if (r == -ETIMEDOUT)
            timed_out = true;
        else if (r < 0)
            goto out;
    }
    int64_t p;
    *out = take(q, &p);
    if (prio)
        *prio = p;
    if (unlikely(q->efd >= 0) && q->fd_on && qlen(q) == 0 && !q->shutdown)
        fd_lower(q);
    if (q->maxsize)
        conc_cond_notify(&q->not_full, 1);
    r = 0;
out:
    qunlock(q);
    return r;
}

int conc_queue_put(conc_queue *q, void *item, double timeout)
{
    struct conc__limit l;
    if (unlikely(!q || conc__limit_timeout(&l, timeout)))
        return -EINVAL;
    return queue_put(q, item, 0, &l);
}

int conc_queue_put_until(conc_queue *q, void *item, int64_t deadline)
{
    if (unlikely(!q))
        return -EINVAL;
    struct conc__limit l;
    conc__limit_until(&l, deadline);
    return queue_put(q, item, 0, &l);
}

int conc_queue_put_nowait(conc_queue *q, void *item)
{
    return conc_queue_put(q, item, 0);
}

int conc_queue_put_prio(conc_queue *q, void *item, int64_t priority, double timeout)
{
    struct conc__limit l;
    if (unlikely(!q || q->kind != CONC_QUEUE_PRIORITY || conc__limit_timeout(&l, timeout)))
        return -EINVAL;
    return queue_put(q, item, priority, &l);
}

int conc_queue_put_prio_until(conc_queue *q, void *item, int64_t priority,
                              int64_t deadline)
{
    if (unlikely(!q || q->kind != CONC_QUEUE_PRIORITY))
        return -EINVAL;
    struct conc__limit l;
    conc__limit_until(&l, deadline);
    return queue_put(q, item, priority, &l);
}

int conc_queue_get(conc_queue *q, void **out, double timeout)
{
    struct conc__limit l;
    if (unlikely(!q || !out || conc__limit_timeout(&l, timeout)))
        return -EINVAL;
    return queue_get(q, out, NULL, &l);
}

int conc_queue_get_until(conc_queue *q, void **out, int64_t deadline)
{
    if (unlikely(!q || !out))
        return -EINVAL;
    struct conc__limit l;
    conc__limit_until(&l, deadline);
    return queue_get(q, out, NULL, &l);
}

int conc_queue_get_nowait(conc_queue *q, void **out)
{
    return conc_queue_get(q, out, 0);
}

int conc_queue_get_prio(conc_queue *q, void **out, int64_t *priority, double timeout)
{
    struct conc__limit l;
    if (unlikely(!q || !out || conc__limit_timeout(&l, timeout)))
        return -EINVAL;
    return queue_get(q, out, priority, &l);
}

int conc_queue_get_prio_until(conc_queue *q, void **out, int64_t *priority,
                              int64_t deadline)
{
    if (unlikely(!q || !out))
        return -EINVAL;
    struct conc__limit l;
    conc__limit_until(&l, deadline);
    return queue_get(q, out, priority, &l);
}

/* ------------------------------------------------------------ queries */

size_t conc_queue_qsize(const conc_queue *q)
{
    if (!q)
        return 0;
    if (q->fifo)
        return conc__fifo_qsize(q->fifo);
    return q->kind == CONC_QUEUE_PRIORITY ? ld_relaxed(&q->hcount) : ring_len(&q->ring);
}

bool conc_queue_empty(const conc_queue *q)
{
    return conc_queue_qsize(q) == 0;
}

bool conc_queue_full(const conc_queue *q)
{
    return q && q->maxsize && conc_queue_qsize(q) >= q->maxsize;
}

size_t conc_queue_maxsize(const conc_queue *q)
{
    return q ? q->maxsize : 0;
}

size_t conc_queue_unfinished(const conc_queue *q)
{
    if (q && q->fifo)
        return conc__fifo_unfinished(q->fifo);
    return q ? ld_relaxed(&q->unfinished) : 0;
}

bool conc_queue_is_shutdown(const conc_queue *q)
{
    if (q && q->fifo)
        return conc__fifo_is_shutdown(q->fifo);
    return q && ld_relaxed(&q->shutdown);
}

/* ------------------------------------------------ task_done, join */

int conc_queue_task_done(conc_queue *q)
{
    if (unlikely(!q || q->kind == CONC_QUEUE_SIMPLE))
        return -EINVAL;
    if (q->fifo)
        return conc__fifo_task_done(q->fifo);
    int r = qlock(q);
    if (unlikely(r))
        return r;
    if (q->unfinished == 0) {
        r = -EOVERFLOW;
    } else {
        st_relaxed(&q->unfinished, q->unfinished - 1);
        if (q->unfinished == 0)
            conc_cond_notify_all(&q->all_done);
    }
    qunlock(q);
    return r;
}

static int queue_join(conc_queue *q, struct conc__limit *l)
{
    if (q->fifo)
        return conc__fifo_join(q->fifo, l);
    int r = qlock(q);
    if (unlikely(r))
        return r;
    bool timed_out = false;
    while (q->unfinished) {
        if (timed_out) {
            r = -ETIMEDOUT;
            goto out;
        }
        r = wait_once(q, &q->all_done, l);
        if (r == -ETIMEDOUT)
            timed_out = true;
        else if (r < 0)
            goto out;
    }
    r = 0;
out:
    qunlock(q);
    return r;
}

int conc_queue_join(conc_queue *q, double timeout)
{
    struct conc__limit l;
    if (unlikely(!q || q->kind == CONC_QUEUE_SIMPLE || conc__limit_timeout(&l, timeout)))
        return -EINVAL;
    return queue_join(q, &l);
}

int conc_queue_join_until(conc_queue *q, int64_t deadline)
{
    if (unlikely(!q || q->kind == CONC_QUEUE_SIMPLE))
        return -EINVAL;
    struct conc__limit l;
    conc__limit_until(&l, deadline);
    return queue_join(q, &l);
}

/* ---------------------------------------------------------- shutdown */

int conc_queue_shutdown(conc_queue *q, bool immediate)
{
    if (unlikely(!q))
        return -EINVAL;
    if (q->fifo)
        return conc__fifo_shutdown(q->fifo, immediate);
    int r = qlock(q);
    if (unlikely(r))
        return r;
    st_relaxed(&q->shutdown, true);
    if (immediate) {
        size_t n = discard_all(q);
        if (q->kind != CONC_QUEUE_SIMPLE) {
            st_relaxed(&q->unfinished, q->unfinished > n ? q->unfinished - n : 0);
            conc_cond_notify_all(&q->all_done);
        }
    }
    /* Getters re-check (items left, or ShutDown); putters get ShutDown. */
    conc_cond_notify_all(&q->not_empty);
    conc_cond_notify_all(&q->not_full);
    if (q->efd >= 0 && !q->fd_on)
        fd_raise(q);
    qunlock(q);
    return 0;
}
