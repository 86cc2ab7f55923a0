/*
 * coro_pool.c - gevent.pool.Pool: a bounded group of greenlets of one hub.
 *
 * A member is a greenlet spawned through the pool whose function is a
 * trampoline: it marks the member started, runs the user's function and,
 * before the greenlet finishes, unlinks the member, bumps the pool's word
 * and wakes the coroutines waiting for room or for the pool to empty.
 *
 * The one way a member finishes without running its trampoline is a
 * conc_greenlet_kill on it before it started (the hub then finishes it at its next
 * turn).  The pool never reads a member's greenlet once that may have
 * happened (the handle may be freed by then); instead a waiting call lets
 * the hub run once (conc__yield): the hub runs coroutines in the order they
 * became ready, so every member spawned before the yield has either started
 * by the time it returns or was killed before starting.  Those still
 * unstarted are removed then.
 *
 * Everything here runs on the pool's thread, one coroutine at a time, so
 * the pool's state needs no lock; the counters are read atomically only so
 * that other threads may ask for them.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>

#include "conc/cpool.h"
#include "internal.h"
#include "sys/wait.h"
#include "hub_internal.h"

struct member {
    struct conc_cpool *pool;
    conc_greenlet *g;
    conc_greenlet_fn fn;
    void *arg;
    uint64_t seq;               /* spawn order */
    uint8_t started;            /* the trampoline runs */
    uint8_t cancel;             /* killed by the pool before it started */
    uint8_t killed;             /* conc_cpool_kill dealt with it */
    struct member *prev, *next;
};

struct conc_cpool {
    size_t size;                /* 0: unbounded */
    size_t n;                   /* members (atomic for readers) */
    size_t unstarted;
    uint32_t word;              /* bumped whenever a member leaves */
    uint32_t waiters;           /* coroutines parked on word */
    uint64_t next_seq;
    pthread_t owner;
    struct member *head, *tail;
};

static void unlink_member(conc_cpool *p, struct member *m)
{
    if (m->prev)
        m->prev->next = m->next;
    else
        p->head = m->next;
    if (m->next)
        m->next->prev = m->prev;
    else
        p->tail = m->prev;
    if (!m->started)
        p->unstarted--;
    __atomic_store_n(&p->n, p->n - 1, __ATOMIC_RELAXED);
    __atomic_store_n(&p->word, p->word + 1, __ATOMIC_RELEASE);
    if (p->waiters)
        conc__hub_wake(&p->word, INT_MAX);     /* waiters are this hub's coroutines */
}

static void *member_entry(void *arg)
{
    struct member *m = arg;
    conc_cpool *p = m->pool;
    m->started = 1;
    p->unstarted--;
    void *r = NULL;
    if (!m->cancel)
        r = m->fn(m->arg);
    unlink_member(p, m);
    free(m);
    return r;
}

/* Removes the members spawned before `mark` that never started: they were
 * killed before their first turn (see above). */
static void reap_unstarted(conc_cpool *p, uint64_t mark)
{
    for (struct member *m = p->head, *next; m; m = next) {
        next = m->next;
        if (!m->started && m->seq < mark) {
            unlink_member(p, m);
            free(m);
        }
    }
}

static inline bool on_owner(const conc_cpool *p)
{
    return pthread_equal(p->owner, pthread_self());
}

/* True when the caller is a coroutine that the hub runs (or may run): a
 * spawned greenlet or the thread's main coroutine. */
static inline bool hub_runnable(void)
{
    return conc_greenlet_current() != NULL || conc_coro_current() == conc_coro_main();
}

/* The member record of the calling greenlet, if it belongs to p. */
static struct member *self_member(const conc_cpool *p)
{
    conc_greenlet *me = conc_greenlet_current();
    if (!me)
        return NULL;
    for (struct member *m = p->head; m; m = m->next)
        if (m->started && m->g == me)
            return m;
    return NULL;
}

static inline bool has_room(const conc_cpool *p)
{
    return p->size == 0 || p->n < p->size;
}

/* Waits until has_room (empty == false) or until no member other than the
 * caller is left (empty == true). */
static int pool_wait(conc_cpool *p, bool empty, int64_t deadline)
{
    for (;;) {
        if (empty ? p->n - (self_member(p) != NULL) == 0 : has_room(p))
            return 0;
        if (deadline != CONC_NO_DEADLINE && deadline <= conc_now())
            return -ETIMEDOUT;
        if (p->unstarted) {
            uint64_t mark = p->next_seq;
            conc__yield();
            reap_unstarted(p, mark);
            continue;
        }
        uint32_t v = p->word;
        p->waiters++;
        int r = conc__wait(&p->word, v, deadline, 0);
        p->waiters--;
        if (r == -ETIMEDOUT || r == -ECANCELED || r == -EDEADLK) {
            if (empty ? p->n - (self_member(p) != NULL) == 0 : has_room(p))
                return 0;
            return r;
        }
    }
}

/* Common checks of the calls that may wait. */
static int check_caller(const conc_cpool *p)
{
    if (!p)
        return -EINVAL;
    if (!on_owner(p) || !hub_runnable())
        return -EPERM;
    return 0;
}

/* ---------------------------------------------------------------- API */

int conc_cpool_new(conc_cpool **out, size_t size)
{
    if (!out)
        return -EINVAL;
    conc_cpool *p = calloc(1, sizeof *p);
    if (!p)
        return -ENOMEM;
    p->size = size;
    p->owner = pthread_self();
    *out = p;
    return 0;
}

int conc_cpool_free(conc_cpool *p)
{
    if (!p)
        return 0;
    if (!on_owner(p))
        return -EPERM;
    if (p->n)
        return -EBUSY;
    free(p);
    return 0;
}

int conc_cpool_spawn_until(conc_cpool *p, conc_greenlet **out, conc_greenlet_fn fn, void *arg,
                           const conc_spawn_opts *opts, int64_t deadline)
{
    int rc = check_caller(p);
    if (rc)
        return rc;
    if (!fn)
        return -EINVAL;
    if (!has_room(p)) {
        rc = pool_wait(p, false, deadline);
        if (rc)
            return rc;
    }
    struct member *m = calloc(1, sizeof *m);
    if (!m)
        return -ENOMEM;
    m->pool = p;
    m->fn = fn;
    m->arg = arg;
    rc = conc_greenlet_spawn(&m->g, member_entry, m, opts);
    if (rc) {
        free(m);
        return rc;
    }
    m->seq = p->next_seq++;
    m->prev = p->tail;
    if (p->tail)
        p->tail->next = m;
    else
        p->head = m;
    p->tail = m;
    p->unstarted++;
    __atomic_store_n(&p->n, p->n + 1, __ATOMIC_RELAXED);
    if (out)
        *out = m->g;
    else
        conc_greenlet_free(m->g);       /* it runs on and releases itself */
    return 0;
}

int conc_cpool_spawn(conc_cpool *p, conc_greenlet **out, conc_greenlet_fn fn, void *arg,
                     const conc_spawn_opts *opts, double timeout)
{
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return (int)conc__timeout_code(poll, conc_cpool_spawn_until(p, out, fn, arg, opts, deadline));
}

int conc_cpool_join_until(conc_cpool *p, int64_t deadline)
{
    int rc = check_caller(p);
    if (rc)
        return rc;
    return pool_wait(p, true, deadline);
}

int conc_cpool_join(conc_cpool *p, double timeout)
{
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return (int)conc__timeout_code(poll, conc_cpool_join_until(p, deadline));
}

int conc_cpool_kill_until(conc_cpool *p, int64_t deadline)
{
    int rc = check_caller(p);
    if (rc)
        return rc;
    for (;;) {
        struct member *self = self_member(p);
        for (struct member *m = p->head; m; m = m->next) {
            if (m == self || m->killed)
                continue;
            m->killed = 1;
            if (m->started)
                conc_greenlet_kill(m->g);        /* alive: its trampoline has not returned */
            else
                m->cancel = 1;          /* its function will not run */
        }
        /* Members spawned while we wait are killed too, as gevent does. */
        rc = pool_wait(p, true, deadline);
        if (rc != 0 || p->n - (self_member(p) != NULL) == 0)
            return rc;
    }
}

int conc_cpool_kill(conc_cpool *p, double timeout)
{
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return (int)conc__timeout_code(poll, conc_cpool_kill_until(p, deadline));
}

int conc_cpool_wait_available_until(conc_cpool *p, int64_t deadline)
{
    int rc = check_caller(p);
    if (rc)
        return rc;
    rc = pool_wait(p, false, deadline);
    if (rc)
        return rc;
    size_t n = conc_cpool_free_count(p);
    return n > INT_MAX ? INT_MAX : (int)n;
}

int conc_cpool_wait_available(conc_cpool *p, double timeout)
{
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return (int)conc__timeout_code(poll, conc_cpool_wait_available_until(p, deadline));
}

size_t conc_cpool_size(const conc_cpool *p)
{
    return p ? p->size : 0;
}

size_t conc_cpool_len(const conc_cpool *p)
{
    return p ? __atomic_load_n(&p->n, __ATOMIC_RELAXED) : 0;
}

size_t conc_cpool_free_count(const conc_cpool *p)
{
    if (!p)
        return 0;
    if (p->size == 0)
        return SIZE_MAX;
    size_t n = __atomic_load_n(&p->n, __ATOMIC_RELAXED);
    return n < p->size ? p->size - n : 0;
}

bool conc_cpool_full(const conc_cpool *p)
{
    return p && conc_cpool_free_count(p) == 0;
}

bool conc_cpool_contains(const conc_cpool *p, const conc_greenlet *g)
{
    if (!p || !g || !on_owner(p))
        return false;
    for (const struct member *m = p->head; m; m = m->next)
        if (m->g == g)
            return true;
    return false;
}
