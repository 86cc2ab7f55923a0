/*
 * test_queue.c - conc/queue.h and conc/deque.h: Queue, LifoQueue,
 * PriorityQueue, SimpleQueue and deque between threads.
 *
 * Threads are plain pthreads; assertions run on the test's main thread only
 * (worker threads record what they saw and the main thread checks it).
 * Timeouts in here are hang guards or "at least this long" checks, never
 * speed budgets.  Every test has the same .timeout (see test_sync.c for why:
 * Criterion 2.4 misbehaves when one binary mixes timeouts).
 */
#include <criterion/criterion.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "conc/deque.h"
#include "conc/queue.h"
#include "conc/sync.h"

#include "support/wait_helpers.h"

#define P(x) ((void *)(intptr_t)(x))
#define I(p) ((intptr_t)(p))

static void join(pthread_t t)
{
    cr_assert_eq(pthread_join(t, NULL), 0);
}

static conc_queue *mkq(conc_queue_kind kind, size_t maxsize)
{
    conc_queue *q = NULL;
    conc_queue_opts o = { .kind = kind, .maxsize = maxsize };
    cr_assert_eq(conc_queue_new(&q, &o), 0);
    cr_assert_not_null(q);
    return q;
}

/* Counts (and sums) the items a drop callback receives. */
struct drops {
    atomic_long n;
    atomic_long sum;
};

static void count_drop(void *item, void *arg)
{
    struct drops *d = arg;
    atomic_fetch_add(&d->n, 1);
    atomic_fetch_add(&d->sum, I(item));
}

/* ============================================================ creation */

static int cmp_int(const void *a, const void *b, void *arg)
{
    (void)arg;
    intptr_t x = I(a), y = I(b);
    return (x > y) - (x < y);
}

Test(queue, new_and_bad_options, .timeout = 30)
{
    conc_queue *q = NULL;
    cr_assert_eq(conc_queue_new(NULL, NULL), -EINVAL);
    cr_assert_eq(conc_queue_new(&q, &(conc_queue_opts){ .kind = (conc_queue_kind)4 }), -EINVAL);
    cr_assert_eq(conc_queue_new(&q, &(conc_queue_opts){ .kind = (conc_queue_kind)-1 }), -EINVAL);
    cr_assert_eq(conc_queue_new(&q, &(conc_queue_opts){ .kind = CONC_QUEUE_SIMPLE, .maxsize = 3 }),
                 -EINVAL);
    cr_assert_eq(conc_queue_new(&q, &(conc_queue_opts){ .kind = CONC_QUEUE_FIFO, .cmp = cmp_int }),
                 -EINVAL);
    cr_assert_eq(conc_queue_new(&q, &(conc_queue_opts){ .kind = CONC_QUEUE_LIFO, .cmp = cmp_int }),
                 -EINVAL);
    cr_assert_null(q);

    /* NULL options: an unbounded FIFO */
    cr_assert_eq(conc_queue_new(&q, NULL), 0);
    cr_assert_eq(conc_queue_maxsize(q), 0);
    cr_assert(conc_queue_empty(q));
    cr_assert(!conc_queue_full(q));
    cr_assert_eq(conc_queue_qsize(q), 0);
    cr_assert_eq(conc_queue_unfinished(q), 0);
    cr_assert(!conc_queue_is_shutdown(q));
    for (intptr_t i = 0; i < 1000; i++)     /* grows past the initial slots */
        cr_assert_eq(conc_queue_put(q, P(i), 0), 0);
    for (intptr_t i = 0; i < 1000; i++) {
        void *v;
        cr_assert_eq(conc_queue_get(q, &v, 0), 0);
        cr_assert_eq(I(v), i);
    }
    conc_queue_free(q);
    conc_queue_free(NULL);

    /* a capacity hint, and a huge maxsize, are fine */
    cr_assert_eq(conc_queue_new(&q, &(conc_queue_opts){ .capacity = 3, .maxsize = SIZE_MAX }), 0);
    cr_assert_eq(conc_queue_maxsize(q), SIZE_MAX);
    conc_queue_free(q);
    cr_assert_eq(conc_queue_new(&q, &(conc_queue_opts){ .kind = CONC_QUEUE_PRIORITY,
                                                        .capacity = 1 }), 0);
    conc_queue_free(q);
}

Test(queue, bad_arguments, .timeout = 30)
{
    conc_queue *q = mkq(CONC_QUEUE_FIFO, 0);
    void *v = P(77);
    cr_assert_eq(conc_queue_put(NULL, P(1), 0), -EINVAL);
    cr_assert_eq(conc_queue_put_until(NULL, P(1), CONC_NO_DEADLINE), -EINVAL);
    cr_assert_eq(conc_queue_put_nowait(NULL, P(1)), -EINVAL);
    cr_assert_eq(conc_queue_put_prio(NULL, P(1), 0, 0), -EINVAL);
    cr_assert_eq(conc_queue_put_prio(q, P(1), 0, 0), -EINVAL);        /* not a priority queue */
    cr_assert_eq(conc_queue_put_prio_until(q, P(1), 0, 0), -EINVAL);
    cr_assert_eq(conc_queue_get(NULL, &v, 0), -EINVAL);
    cr_assert_eq(conc_queue_get(q, NULL, 0), -EINVAL);
    cr_assert_eq(conc_queue_get_until(q, NULL, 0), -EINVAL);
    cr_assert_eq(conc_queue_get_nowait(q, NULL), -EINVAL);
    cr_assert_eq(conc_queue_get_prio(q, NULL, NULL, 0), -EINVAL);
    cr_assert_eq(conc_queue_task_done(NULL), -EINVAL);
    cr_assert_eq(conc_queue_join(NULL, 0), -EINVAL);
    cr_assert_eq(conc_queue_join_until(NULL, 0), -EINVAL);
    cr_assert_eq(conc_queue_shutdown(NULL, false), -EINVAL);
    cr_assert_eq(conc_queue_fd(NULL), -EINVAL);
    cr_assert_eq(conc_queue_qsize(NULL), 0);
    cr_assert(conc_queue_empty(NULL));
    cr_assert(!conc_queue_full(NULL));
    cr_assert(!conc_queue_is_shutdown(NULL));
    for (size_t i = 0; i < N_BAD_TIMEOUTS; i++) {
        double t = bad_timeouts[i];
        cr_assert_eq(conc_queue_put(q, P(1), t), -EINVAL, "put timeout %g", t);
        cr_assert_eq(conc_queue_get(q, &v, t), -EINVAL, "get timeout %g", t);
        cr_assert_eq(conc_queue_join(q, t), -EINVAL, "join timeout %g", t);
    }
    /* nothing was added by the rejected calls */
    cr_assert_eq(conc_queue_qsize(q), 0);
    cr_assert_eq(conc_queue_unfinished(q), 0);
    /* a bad timeout is rejected even when the call could succeed */
    cr_assert_eq(conc_queue_put(q, P(5), 0), 0);
    for (size_t i = 0; i < N_BAD_TIMEOUTS; i++)
        cr_assert_eq(conc_queue_get(q, &v, bad_timeouts[i]), -EINVAL);
    cr_assert_eq(conc_queue_qsize(q), 1);
    cr_assert_eq(I(v), 77, "*out written on failure");
    conc_queue_free(q);
}

/* ============================================================== order */

Test(queue, fifo_order, .timeout = 30)
{
    conc_queue *q = mkq(CONC_QUEUE_FIFO, 0);
    for (intptr_t i = 0; i < 100; i++) {
        cr_assert_eq(conc_queue_put(q, P(i), CONC_FOREVER), 0);
        cr_assert_eq(conc_queue_qsize(q), (size_t)i + 1);
    }
    cr_assert(!conc_queue_empty(q));
    cr_assert(!conc_queue_full(q));
    cr_assert_eq(conc_queue_unfinished(q), 100);
    /* interleaved puts and gets wrap around the ring */
    for (intptr_t i = 0; i < 1000; i++) {
        void *v;
        cr_assert_eq(conc_queue_get(q, &v, CONC_FOREVER), 0);
        cr_assert_eq(I(v), i);
        cr_assert_eq(conc_queue_put_nowait(q, P(i + 100)), 0);
    }
    for (intptr_t i = 1000; i < 1100; i++) {
        void *v;
        cr_assert_eq(conc_queue_get_nowait(q, &v), 0);
        cr_assert_eq(I(v), i);
    }
    cr_assert(conc_queue_empty(q));
    /* NULL is an item like any other */
    cr_assert_eq(conc_queue_put(q, NULL, 0), 0);
    void *v = P(1);
    cr_assert_eq(conc_queue_get(q, &v, 0), 0);
    cr_assert_null(v);
    conc_queue_free(q);
}

Test(queue, lifo_order, .timeout = 30)
{
    conc_queue *q = mkq(CONC_QUEUE_LIFO, 0);
    for (intptr_t i = 0; i < 100; i++)
        cr_assert_eq(conc_queue_put(q, P(i), 0), 0);
    for (intptr_t i = 99; i >= 50; i--) {
        void *v;
        cr_assert_eq(conc_queue_get(q, &v, 0), 0);
        cr_assert_eq(I(v), i);
    }
    cr_assert_eq(conc_queue_put(q, P(1000), 0), 0);
    void *v;
    cr_assert_eq(conc_queue_get(q, &v, 0), 0);
    cr_assert_eq(I(v), 1000);
    for (intptr_t i = 49; i >= 0; i--) {
        cr_assert_eq(conc_queue_get(q, &v, 0), 0);
        cr_assert_eq(I(v), i);
    }
    cr_assert_eq(conc_queue_get(q, &v, 0), -EAGAIN);
    cr_assert_eq(conc_queue_unfinished(q), 101);
    conc_queue_free(q);
}

Test(queue, priority_order_and_ties, .timeout = 30)
{
    conc_queue *q = mkq(CONC_QUEUE_PRIORITY, 0);
    /* items 0..19 with priorities 5,4,3,2,1 repeating: each priority gets
     * four items, which must come out in insertion order */
    for (intptr_t i = 0; i < 20; i++)
        cr_assert_eq(conc_queue_put_prio(q, P(i), 5 - i % 5, 0), 0);
    cr_assert_eq(conc_queue_put_prio(q, P(100), INT64_MIN, 0), 0);
    cr_assert_eq(conc_queue_put_prio(q, P(101), INT64_MAX, 0), 0);
    cr_assert_eq(conc_queue_put(q, P(102), 0), 0);            /* priority 0 */
    cr_assert_eq(conc_queue_qsize(q), 23);

    void *v;
    int64_t p = 42;
    cr_assert_eq(conc_queue_get_prio(q, &v, &p, 0), 0);
    cr_assert_eq(I(v), 100);
    cr_assert_eq(p, INT64_MIN);
    cr_assert_eq(conc_queue_get_prio(q, &v, &p, 0), 0);
    cr_assert_eq(I(v), 102);
    cr_assert_eq(p, 0);
    for (int64_t prio = 1; prio <= 5; prio++) {
        for (intptr_t k = 0; k < 4; k++) {
            cr_assert_eq(conc_queue_get_prio(q, &v, &p, 0), 0);
            cr_assert_eq(p, prio);
            cr_assert_eq(I(v), (5 - prio) + 5 * k, "prio %ld, #%ld: got %ld", (long)prio,
                         (long)k, (long)I(v));
        }
    }
    cr_assert_eq(conc_queue_get_prio(q, &v, NULL, 0), 0);
    cr_assert_eq(I(v), 101);
    cr_assert_eq(conc_queue_get(q, &v, 0), -EAGAIN);
    conc_queue_free(q);
}

Test(queue, priority_many_random, .timeout = 30)
{
    conc_queue *q = mkq(CONC_QUEUE_PRIORITY, 0);
    enum { N = 20000 };
    static int64_t prio_of[N];
    srand(12345);
    for (intptr_t i = 0; i < N; i++) {
        prio_of[i] = rand() % 50 - 25;      /* many ties */
        cr_assert_eq(conc_queue_put_prio(q, P(i), prio_of[i], 0), 0);
    }
    int64_t last_p = INT64_MIN;
    intptr_t last_i = -1;
    for (int k = 0; k < N; k++) {
        void *v;
        int64_t p;
        cr_assert_eq(conc_queue_get_prio(q, &v, &p, 0), 0);
        intptr_t i = I(v);
        cr_assert_eq(p, prio_of[i]);
        cr_assert(p > last_p || (p == last_p && i > last_i),
                  "out of order: (%ld,%ld) after (%ld,%ld)", (long)p, (long)i, (long)last_p,
                  (long)last_i);
        last_p = p;
        last_i = i;
    }
    cr_assert(conc_queue_empty(q));
    conc_queue_free(q);
}

struct job {
    const char *name;
    int rank;
};

static int cmp_job(const void *a, const void *b, void *arg)
{
    const struct job *x = a, *y = b;
    (*(int *)arg)++;
    return (x->rank > y->rank) - (x->rank < y->rank);
}

Test(queue, priority_user_comparator, .timeout = 30)
{
    int calls = 0;
    conc_queue *q = NULL;
    conc_queue_opts o = { .kind = CONC_QUEUE_PRIORITY, .cmp = cmp_job, .cmp_arg = &calls };
    cr_assert_eq(conc_queue_new(&q, &o), 0);
    struct job jobs[] = {
        { "c1", 3 }, { "a1", 1 }, { "b1", 2 }, { "a2", 1 }, { "c2", 3 }, { "b2", 2 }, { "a3", 1 },
    };
    for (size_t i = 0; i < sizeof jobs / sizeof jobs[0]; i++)
        cr_assert_eq(conc_queue_put(q, &jobs[i], 0), 0);
    const char *want[] = { "a1", "a2", "a3", "b1", "b2", "c1", "c2" };
    for (size_t i = 0; i < 7; i++) {
        void *v;
        cr_assert_eq(conc_queue_get(q, &v, 0), 0);
        cr_assert_str_eq(((struct job *)v)->name, want[i]);
    }
    cr_assert_gt(calls, 0);
    cr_assert_eq(conc_queue_qsize(q), 0);

    /* the priority ranks before cmp */
    static struct job lo = { "lo", 9 }, hi = { "hi", 0 };
    cr_assert_eq(conc_queue_put_prio(q, &hi, 1, 0), 0);
    cr_assert_eq(conc_queue_put_prio(q, &lo, 0, 0), 0);
    void *v;
    cr_assert_eq(conc_queue_get(q, &v, 0), 0);
    cr_assert_eq(v, &lo);
    cr_assert_eq(conc_queue_get(q, &v, 0), 0);
    cr_assert_eq(v, &hi);
    conc_queue_free(q);
}

Test(queue, simple_queue, .timeout = 30)
{
    conc_queue *q = mkq(CONC_QUEUE_SIMPLE, 0);
    for (intptr_t i = 0; i < 50; i++)
        cr_assert_eq(conc_queue_put(q, P(i), i % 2 ? CONC_FOREVER : 0), 0);
    cr_assert_eq(conc_queue_qsize(q), 50);
    cr_assert(!conc_queue_full(q));
    cr_assert_eq(conc_queue_unfinished(q), 0);
    cr_assert_eq(conc_queue_task_done(q), -EINVAL);
    cr_assert_eq(conc_queue_join(q, 0), -EINVAL);
    cr_assert_eq(conc_queue_join_until(q, CONC_NO_DEADLINE), -EINVAL);
    for (intptr_t i = 0; i < 50; i++) {
        void *v;
        cr_assert_eq(conc_queue_get(q, &v, 0), 0);
        cr_assert_eq(I(v), i);
    }
    void *v;
    cr_assert_eq(conc_queue_get(q, &v, 0), -EAGAIN);
    cr_assert_eq(conc_queue_get(q, &v, 0.02), -ETIMEDOUT);
    cr_assert(conc_queue_empty(q));
    cr_assert_eq(conc_queue_shutdown(q, false), 0);
    cr_assert_eq(conc_queue_put(q, P(1), 0), -EPIPE);
    cr_assert_eq(conc_queue_get(q, &v, CONC_FOREVER), -EPIPE);
    conc_queue_free(q);
}

/* =================================================== timeouts, maxsize */

Test(queue, poll_and_timeout_codes, .timeout = 30)
{
    conc_queue *q = mkq(CONC_QUEUE_FIFO, 2);
    void *v = P(9);
    cr_assert_eq(conc_queue_get(q, &v, 0), -EAGAIN);
    cr_assert_eq(conc_queue_get_nowait(q, &v), -EAGAIN);
    int64_t t0 = conc_now();
    cr_assert_eq(conc_queue_get(q, &v, 0.05), -ETIMEDOUT);
    cr_assert_geq(conc_now() - t0, 50000000LL);
    cr_assert_eq(conc_queue_get_until(q, &v, conc_now() - 1), -ETIMEDOUT);
    cr_assert_eq(conc_queue_get_until(q, &v, 0), -ETIMEDOUT);
    int64_t d = conc_now() + 30000000LL;
    cr_assert_eq(conc_queue_get_until(q, &v, d), -ETIMEDOUT);
    cr_assert_geq(conc_now(), d);
    cr_assert_eq(I(v), 9, "*out written on failure");

    cr_assert_eq(conc_queue_put(q, P(1), 0), 0);
    cr_assert_eq(conc_queue_put_until(q, P(2), conc_now() - NS), 0);  /* room: succeeds */
    cr_assert(conc_queue_full(q));
    cr_assert_eq(conc_queue_put(q, P(3), 0), -EAGAIN);
    cr_assert_eq(conc_queue_put_nowait(q, P(3)), -EAGAIN);
    t0 = conc_now();
    cr_assert_eq(conc_queue_put(q, P(3), 0.05), -ETIMEDOUT);
    cr_assert_geq(conc_now() - t0, 50000000LL);
    cr_assert_eq(conc_queue_put_until(q, P(3), conc_now() - 1), -ETIMEDOUT);
    d = conc_now() + 30000000LL;
    cr_assert_eq(conc_queue_put_until(q, P(3), d), -ETIMEDOUT);
    cr_assert_geq(conc_now(), d);
    cr_assert_eq(conc_queue_qsize(q), 2);
    cr_assert_eq(conc_queue_unfinished(q), 2);

    /* items present: every timeout form succeeds at once */
    cr_assert_eq(conc_queue_get_until(q, &v, 0), 0);
    cr_assert_eq(I(v), 1);
    cr_assert_eq(conc_queue_get(q, &v, INFINITY), 0);
    cr_assert_eq(I(v), 2);
    cr_assert(conc_queue_empty(q));
    conc_queue_free(q);
}

Test(queue, maxsize_full, .timeout = 30)
{
    conc_queue *q = mkq(CONC_QUEUE_LIFO, 3);
    cr_assert_eq(conc_queue_maxsize(q), 3);
    for (intptr_t i = 0; i < 3; i++) {
        cr_assert(!conc_queue_full(q));
        cr_assert_eq(conc_queue_put(q, P(i), 0), 0);
    }
    cr_assert(conc_queue_full(q));
    cr_assert_eq(conc_queue_qsize(q), 3);
    cr_assert_eq(conc_queue_put(q, P(9), 0), -EAGAIN);
    void *v;
    cr_assert_eq(conc_queue_get(q, &v, 0), 0);
    cr_assert_eq(I(v), 2);
    cr_assert(!conc_queue_full(q));
    cr_assert_eq(conc_queue_put(q, P(9), 0), 0);
    cr_assert(conc_queue_full(q));
    cr_assert_eq(conc_queue_get(q, &v, 0), 0);
    cr_assert_eq(I(v), 9);

    /* a priority queue with a maxsize */
    conc_queue *pq = mkq(CONC_QUEUE_PRIORITY, 2);
    cr_assert_eq(conc_queue_put_prio(pq, P(1), 5, 0), 0);
    cr_assert_eq(conc_queue_put_prio(pq, P(2), 1, 0), 0);
    cr_assert_eq(conc_queue_put_prio(pq, P(3), 0, 0), -EAGAIN);
    cr_assert(conc_queue_full(pq));
    cr_assert_eq(conc_queue_get(pq, &v, 0), 0);
    cr_assert_eq(I(v), 2);
    conc_queue_free(pq);
    conc_queue_free(q);
}

/* ====================================================== blocking calls */

struct waiter {
    conc_queue *q;
    double timeout;
    void *item;
    atomic_int done;
    int rc;
};

static void *getter_fn(void *p)
{
    struct waiter *w = p;
    w->rc = conc_queue_get(w->q, &w->item, w->timeout);
    atomic_store(&w->done, 1);
    return NULL;
}

static void *putter_fn(void *p)
{
    struct waiter *w = p;
    w->rc = conc_queue_put(w->q, w->item, w->timeout);
    atomic_store(&w->done, 1);
    return NULL;
}

static void *joiner_fn(void *p)
{
    struct waiter *w = p;
    w->rc = conc_queue_join(w->q, w->timeout);
    atomic_store(&w->done, 1);
    return NULL;
}

Test(queue, get_blocks_until_put, .timeout = 30)
{
    conc_queue_kind kinds[] = { CONC_QUEUE_FIFO, CONC_QUEUE_LIFO, CONC_QUEUE_PRIORITY,
                                CONC_QUEUE_SIMPLE };
    for (size_t k = 0; k < 4; k++) {
        conc_queue *q = mkq(kinds[k], 0);
        struct waiter w = { .q = q, .timeout = CONC_FOREVER };
        struct waiter w2 = { .q = q, .timeout = 10.0 };
        pid_t tid, tid2;
        pthread_t t = spawn_tid(getter_fn, &w, &tid), t2 = spawn_tid(getter_fn, &w2, &tid2);
        wait_thread_blocked(tid, BLOCKED_GUARD);
        wait_thread_blocked(tid2, BLOCKED_GUARD);
        cr_assert_eq(atomic_load(&w.done), 0);
        cr_assert_eq(atomic_load(&w2.done), 0);
        cr_assert_eq(conc_queue_put(q, P(41), 0), 0);
        cr_assert_eq(conc_queue_put(q, P(42), 0), 0);
        join(t);
        join(t2);
        cr_assert_eq(w.rc, 0);
        cr_assert_eq(w2.rc, 0);
        cr_assert_eq(I(w.item) + I(w2.item), 83);
        cr_assert_neq(I(w.item), I(w2.item));
        cr_assert(conc_queue_empty(q));
        conc_queue_free(q);
    }
}

Test(queue, put_blocks_while_full, .timeout = 30)
{
    conc_queue *q = mkq(CONC_QUEUE_FIFO, 1);
    cr_assert_eq(conc_queue_put(q, P(1), 0), 0);
    struct waiter w = { .q = q, .timeout = CONC_FOREVER, .item = P(2) };
    struct waiter w2 = { .q = q, .timeout = 10.0, .item = P(3) };
    pid_t tid, tid2;
    pthread_t t = spawn_tid(putter_fn, &w, &tid);
    wait_thread_blocked(tid, BLOCKED_GUARD);
    pthread_t t2 = spawn_tid(putter_fn, &w2, &tid2);
    wait_thread_blocked(tid2, BLOCKED_GUARD);
    cr_assert_eq(atomic_load(&w.done), 0);
    cr_assert_eq(atomic_load(&w2.done), 0);
    cr_assert_eq(conc_queue_qsize(q), 1);

    void *v;
    cr_assert_eq(conc_queue_get(q, &v, 0), 0);
    cr_assert_eq(I(v), 1);
    cr_assert_eq(conc_queue_get(q, &v, 10.0), 0);
    cr_assert(I(v) == 2 || I(v) == 3);
    cr_assert_eq(conc_queue_get(q, &v, 10.0), 0);
    cr_assert(I(v) == 2 || I(v) == 3);
    join(t);
    join(t2);
    cr_assert_eq(w.rc, 0);
    cr_assert_eq(w2.rc, 0);
    cr_assert(conc_queue_empty(q));
    cr_assert_eq(conc_queue_unfinished(q), 3);
    conc_queue_free(q);
}

Test(queue, blocked_get_times_out, .timeout = 30)
{
    conc_queue *q = mkq(CONC_QUEUE_FIFO, 0);
    struct waiter w = { .q = q, .timeout = 0.1, .item = P(5) };
    int64_t t0 = conc_now();
    pthread_t t = spawn(getter_fn, &w);
    join(t);
    cr_assert_eq(w.rc, -ETIMEDOUT);
    cr_assert_geq(conc_now() - t0, 100000000LL);
    cr_assert_eq(I(w.item), 5);
    /* the queue still works */
    cr_assert_eq(conc_queue_put(q, P(6), 0), 0);
    void *v;
    cr_assert_eq(conc_queue_get(q, &v, 0), 0);
    cr_assert_eq(I(v), 6);
    conc_queue_free(q);
}

/* ================================================== task_done and join */

Test(queue, task_done_and_join, .timeout = 30)
{
    conc_queue *q = mkq(CONC_QUEUE_FIFO, 0);
    cr_assert_eq(conc_queue_join(q, 0), 0);               /* nothing unfinished */
    cr_assert_eq(conc_queue_join(q, CONC_FOREVER), 0);
    cr_assert_eq(conc_queue_join_until(q, 0), 0);
    cr_assert_eq(conc_queue_task_done(q), -EOVERFLOW);
    for (intptr_t i = 0; i < 3; i++)
        cr_assert_eq(conc_queue_put(q, P(i), 0), 0);
    cr_assert_eq(conc_queue_unfinished(q), 3);
    cr_assert_eq(conc_queue_join(q, 0), -EAGAIN);
    int64_t t0 = conc_now();
    cr_assert_eq(conc_queue_join(q, 0.05), -ETIMEDOUT);
    cr_assert_geq(conc_now() - t0, 50000000LL);
    cr_assert_eq(conc_queue_join_until(q, conc_now() - 1), -ETIMEDOUT);

    /* task_done does not need a get first (Python only counts) */
    cr_assert_eq(conc_queue_task_done(q), 0);
    cr_assert_eq(conc_queue_unfinished(q), 2);
    cr_assert_eq(conc_queue_qsize(q), 3);

    struct waiter j1 = { .q = q, .timeout = CONC_FOREVER };
    struct waiter j2 = { .q = q, .timeout = 20.0 };
    pid_t tid1, tid2;
    pthread_t t1 = spawn_tid(joiner_fn, &j1, &tid1), t2 = spawn_tid(joiner_fn, &j2, &tid2);
    wait_thread_blocked(tid1, BLOCKED_GUARD);
    wait_thread_blocked(tid2, BLOCKED_GUARD);
    cr_assert_eq(atomic_load(&j1.done), 0);
    cr_assert_eq(atomic_load(&j2.done), 0);
    cr_assert_eq(conc_queue_task_done(q), 0);
    /* A joiner woken by that task_done is running (or gone) at once; one that
     * is asleep again after it re-checked the count has not returned. */
    wait_thread_blocked(tid1, BLOCKED_GUARD);
    wait_thread_blocked(tid2, BLOCKED_GUARD);
    cr_assert_eq(atomic_load(&j1.done), 0, "join returned with a task unfinished");
    cr_assert_eq(conc_queue_task_done(q), 0);
    join(t1);
    join(t2);
    cr_assert_eq(j1.rc, 0);
    cr_assert_eq(j2.rc, 0);
    cr_assert_eq(conc_queue_unfinished(q), 0);
    cr_assert_eq(conc_queue_task_done(q), -EOVERFLOW);    /* ValueError */
    cr_assert_eq(conc_queue_unfinished(q), 0);
    cr_assert_eq(conc_queue_join(q, 0), 0);
    conc_queue_free(q);
}

struct worker {
    conc_queue *q;
    atomic_long processed;
};

static void *task_worker(void *p)
{
    struct worker *w = p;
    void *v;
    while (conc_queue_get(w->q, &v, CONC_FOREVER) == 0) {
        atomic_fetch_add(&w->processed, I(v));
        conc_queue_task_done(w->q);
    }
    return NULL;
}

Test(queue, join_waits_for_workers, .timeout = 30)
{
    conc_queue *q = mkq(CONC_QUEUE_FIFO, 8);
    struct worker w = { .q = q };
    pthread_t t[3];
    for (int i = 0; i < 3; i++)
        t[i] = spawn(task_worker, &w);
    long want = 0;
    for (intptr_t i = 1; i <= 1000; i++) {
        cr_assert_eq(conc_queue_put(q, P(i), CONC_FOREVER), 0);
        want += i;
    }
    cr_assert_eq(conc_queue_join(q, CONC_FOREVER), 0);
    cr_assert_eq(atomic_load(&w.processed), want);     /* every task was done */
    cr_assert_eq(conc_queue_unfinished(q), 0);
    cr_assert_eq(conc_queue_shutdown(q, false), 0);    /* releases the workers */
    for (int i = 0; i < 3; i++)
        join(t[i]);
    conc_queue_free(q);
}

/* ============================================================ shutdown */

Test(queue, shutdown_normal, .timeout = 30)
{
    struct drops dr = { 0 };
    conc_queue *q = NULL;
    cr_assert_eq(conc_queue_new(&q, &(conc_queue_opts){ .drop = count_drop, .drop_arg = &dr }), 0);
    for (intptr_t i = 1; i <= 3; i++)
        cr_assert_eq(conc_queue_put(q, P(i), 0), 0);
    cr_assert_eq(conc_queue_shutdown(q, false), 0);
    cr_assert(conc_queue_is_shutdown(q));
    cr_assert_eq(conc_queue_put(q, P(4), 0), -EPIPE);
    cr_assert_eq(conc_queue_put(q, P(4), CONC_FOREVER), -EPIPE);
    cr_assert_eq(conc_queue_put_until(q, P(4), CONC_NO_DEADLINE), -EPIPE);
    cr_assert_eq(conc_queue_qsize(q), 3);
    /* the items already queued are still handed out, then ShutDown */
    void *v;
    cr_assert_eq(conc_queue_get(q, &v, CONC_FOREVER), 0);
    cr_assert_eq(I(v), 1);
    cr_assert_eq(conc_queue_get(q, &v, 0), 0);
    cr_assert_eq(I(v), 2);
    cr_assert_eq(conc_queue_get_until(q, &v, 0), 0);
    cr_assert_eq(I(v), 3);
    cr_assert_eq(conc_queue_get(q, &v, 0), -EPIPE);
    cr_assert_eq(conc_queue_get(q, &v, 0.5), -EPIPE);
    cr_assert_eq(conc_queue_get(q, &v, CONC_FOREVER), -EPIPE);
    cr_assert_eq(conc_queue_get_until(q, &v, 0), -EPIPE);
    /* task accounting goes on */
    cr_assert_eq(conc_queue_unfinished(q), 3);
    cr_assert_eq(conc_queue_join(q, 0), -EAGAIN);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(conc_queue_task_done(q), 0);
    cr_assert_eq(conc_queue_join(q, 0), 0);
    cr_assert_eq(conc_queue_shutdown(q, false), 0);    /* again: harmless */
    cr_assert_eq(atomic_load(&dr.n), 0);
    conc_queue_free(q);
    cr_assert_eq(atomic_load(&dr.n), 0);
}

Test(queue, shutdown_releases_getters, .timeout = 30)
{
    conc_queue *q = mkq(CONC_QUEUE_FIFO, 0);
    enum { N = 4 };
    struct waiter w[N];
    pthread_t t[N];
    pid_t tid[N];
    for (int i = 0; i < N; i++) {
        w[i] = (struct waiter){ .q = q, .timeout = i % 2 ? CONC_FOREVER : 20.0 };
        t[i] = spawn_tid(getter_fn, &w[i], &tid[i]);
    }
    for (int i = 0; i < N; i++)
        wait_thread_blocked(tid[i], BLOCKED_GUARD);
    for (int i = 0; i < N; i++)
        cr_assert_eq(atomic_load(&w[i].done), 0);
    cr_assert_eq(conc_queue_shutdown(q, false), 0);
    for (int i = 0; i < N; i++) {
        join(t[i]);
        cr_assert_eq(w[i].rc, -EPIPE, "getter %d: %d", i, w[i].rc);
    }
    conc_queue_free(q);
}

Test(queue, shutdown_releases_putters, .timeout = 30)
{
    conc_queue *q = mkq(CONC_QUEUE_FIFO, 2);
    cr_assert_eq(conc_queue_put(q, P(1), 0), 0);
    cr_assert_eq(conc_queue_put(q, P(2), 0), 0);
    enum { N = 4 };
    struct waiter w[N];
    pthread_t t[N];
    pid_t tid[N];
    for (int i = 0; i < N; i++) {
        w[i] = (struct waiter){ .q = q, .timeout = i % 2 ? CONC_FOREVER : 20.0,
                                .item = P(100 + i) };
        t[i] = spawn_tid(putter_fn, &w[i], &tid[i]);
    }
    for (int i = 0; i < N; i++)
        wait_thread_blocked(tid[i], BLOCKED_GUARD);
    for (int i = 0; i < N; i++)
        cr_assert_eq(atomic_load(&w[i].done), 0);
    cr_assert_eq(conc_queue_shutdown(q, false), 0);
    for (int i = 0; i < N; i++) {
        join(t[i]);
        cr_assert_eq(w[i].rc, -EPIPE, "putter %d: %d", i, w[i].rc);
    }
    /* the queued items are still there */
    void *v;
    cr_assert_eq(conc_queue_qsize(q), 2);
    cr_assert_eq(conc_queue_get(q, &v, 0), 0);
    cr_assert_eq(I(v), 1);
    cr_assert_eq(conc_queue_get(q, &v, 0), 0);
    cr_assert_eq(I(v), 2);
    cr_assert_eq(conc_queue_get(q, &v, CONC_FOREVER), -EPIPE);
    cr_assert_eq(conc_queue_unfinished(q), 2);
    conc_queue_free(q);
}

Test(queue, shutdown_immediate, .timeout = 30)
{
    struct drops dr = { 0 };
    conc_queue *q = NULL;
    conc_queue_opts o = { .kind = CONC_QUEUE_PRIORITY, .drop = count_drop, .drop_arg = &dr };
    cr_assert_eq(conc_queue_new(&q, &o), 0);
    for (intptr_t i = 1; i <= 5; i++)
        cr_assert_eq(conc_queue_put_prio(q, P(i), -i, 0), 0);
    void *v;
    cr_assert_eq(conc_queue_get(q, &v, 0), 0);      /* taken, task not done */
    cr_assert_eq(I(v), 5);
    cr_assert_eq(conc_queue_unfinished(q), 5);

    /* a joiner waits for the taken item's task_done even after shutdown */
    struct waiter j = { .q = q, .timeout = CONC_FOREVER };
    pid_t tid;
    pthread_t t = spawn_tid(joiner_fn, &j, &tid);
    wait_thread_blocked(tid, BLOCKED_GUARD);
    cr_assert_eq(atomic_load(&j.done), 0);

    cr_assert_eq(conc_queue_shutdown(q, true), 0);
    cr_assert(conc_queue_is_shutdown(q));
    cr_assert_eq(conc_queue_qsize(q), 0);
    cr_assert_eq(atomic_load(&dr.n), 4);
    cr_assert_eq(atomic_load(&dr.sum), 1 + 2 + 3 + 4);
    cr_assert_eq(conc_queue_unfinished(q), 1);
    cr_assert_eq(conc_queue_get(q, &v, 0), -EPIPE);
    cr_assert_eq(conc_queue_get(q, &v, CONC_FOREVER), -EPIPE);
    cr_assert_eq(conc_queue_put(q, P(9), 0), -EPIPE);
    /* woken by the shutdown, the joiner must have gone back to sleep */
    wait_thread_blocked(tid, BLOCKED_GUARD);
    cr_assert_eq(atomic_load(&j.done), 0);
    cr_assert_eq(conc_queue_task_done(q), 0);
    join(t);
    cr_assert_eq(j.rc, 0);
    cr_assert_eq(conc_queue_task_done(q), -EOVERFLOW);
    conc_queue_free(q);
    cr_assert_eq(atomic_load(&dr.n), 4);
}

Test(queue, shutdown_immediate_settles_join, .timeout = 30)
{
    conc_queue *q = mkq(CONC_QUEUE_FIFO, 3);
    for (intptr_t i = 0; i < 3; i++)
        cr_assert_eq(conc_queue_put(q, P(i), 0), 0);
    struct waiter j[2] = { { .q = q, .timeout = CONC_FOREVER }, { .q = q, .timeout = 20.0 } };
    struct waiter p = { .q = q, .timeout = CONC_FOREVER, .item = P(7) };
    pid_t tid[3];
    pthread_t tj0 = spawn_tid(joiner_fn, &j[0], &tid[0]);
    pthread_t tj1 = spawn_tid(joiner_fn, &j[1], &tid[1]);
    pthread_t tp = spawn_tid(putter_fn, &p, &tid[2]);
    for (int i = 0; i < 3; i++)
        wait_thread_blocked(tid[i], BLOCKED_GUARD);
    cr_assert_eq(atomic_load(&j[0].done) + atomic_load(&j[1].done) + atomic_load(&p.done), 0);
    cr_assert_eq(conc_queue_shutdown(q, true), 0);
    join(tj0);
    join(tj1);
    join(tp);
    cr_assert_eq(j[0].rc, 0);
    cr_assert_eq(j[1].rc, 0);
    cr_assert_eq(p.rc, -EPIPE);
    cr_assert_eq(conc_queue_unfinished(q), 0);
    cr_assert_eq(conc_queue_qsize(q), 0);
    cr_assert_eq(conc_queue_join(q, 0), 0);
    /* an immediate shutdown after a normal one still empties the queue */
    conc_queue *q2 = mkq(CONC_QUEUE_LIFO, 0);
    cr_assert_eq(conc_queue_put(q2, P(1), 0), 0);
    cr_assert_eq(conc_queue_put(q2, P(2), 0), 0);
    cr_assert_eq(conc_queue_shutdown(q2, false), 0);
    cr_assert_eq(conc_queue_qsize(q2), 2);
    cr_assert_eq(conc_queue_shutdown(q2, true), 0);
    cr_assert_eq(conc_queue_qsize(q2), 0);
    cr_assert_eq(conc_queue_unfinished(q2), 0);
    void *v;
    cr_assert_eq(conc_queue_get(q2, &v, 0), -EPIPE);
    conc_queue_free(q2);
    conc_queue_free(q);
}

Test(queue, free_drops_items, .timeout = 30)
{
    conc_queue_kind kinds[] = { CONC_QUEUE_FIFO, CONC_QUEUE_LIFO, CONC_QUEUE_PRIORITY,
                                CONC_QUEUE_SIMPLE };
    for (size_t k = 0; k < 4; k++) {
        struct drops dr = { 0 };
        conc_queue *q = NULL;
        conc_queue_opts o = { .kind = kinds[k], .drop = count_drop, .drop_arg = &dr };
        cr_assert_eq(conc_queue_new(&q, &o), 0);
        for (intptr_t i = 1; i <= 100; i++)
            cr_assert_eq(conc_queue_put(q, P(i), 0), 0);
        void *v;
        cr_assert_eq(conc_queue_get(q, &v, 0), 0);
        conc_queue_free(q);
        cr_assert_eq(atomic_load(&dr.n), 99);
        cr_assert_eq(atomic_load(&dr.sum), 5050 - I(v));
    }
}

/* ================================================ producers, consumers */

enum { PRODUCERS = 4, CONSUMERS = 4, PER_PRODUCER = 20000 };
#define TOTAL (PRODUCERS * PER_PRODUCER)

struct mpmc {
    conc_queue *q;
    bool priority;          /* put with a priority */
    bool fifo;              /* check each producer's order */
    bool task_done;         /* consumers call task_done */
    atomic_int next_id;
    atomic_uchar seen[TOTAL];
    atomic_llong sum;
    atomic_long count;
    atomic_int dup;         /* an item seen twice */
    atomic_int disorder;    /* FIFO: one producer's items out of order */
    atomic_int errors;      /* an unexpected return code */
};

static void *mpmc_producer(void *p)
{
    struct mpmc *m = p;
    int id = atomic_fetch_add(&m->next_id, 1);
    for (intptr_t i = 0; i < PER_PRODUCER; i++) {
        intptr_t item = (intptr_t)id * PER_PRODUCER + i + 1;    /* never NULL */
        int r = m->priority ? conc_queue_put_prio(m->q, P(item), i % 7, CONC_FOREVER)
                            : conc_queue_put(m->q, P(item), i % 3 ? CONC_FOREVER : 10.0);
        if (r != 0)
            atomic_fetch_add(&m->errors, 1);
    }
    return NULL;
}

static void *mpmc_consumer(void *p)
{
    struct mpmc *m = p;
    intptr_t last[PRODUCERS];
    for (int i = 0; i < PRODUCERS; i++)
        last[i] = -1;
    for (unsigned n = 0;; n++) {
        void *v;
        /* mix blocking forms: forever, a timeout, and polling */
        int r = n % 3 == 0 ? conc_queue_get(m->q, &v, CONC_FOREVER)
              : n % 3 == 1 ? conc_queue_get(m->q, &v, 10.0)
                           : conc_queue_get(m->q, &v, 0);
        if (r == -EAGAIN)
            continue;
        if (r == -EPIPE)
            break;
        if (r != 0) {
            atomic_fetch_add(&m->errors, 1);
            break;
        }
        intptr_t item = I(v) - 1;
        if (item < 0 || item >= TOTAL) {
            atomic_fetch_add(&m->errors, 1);
            continue;
        }
        if (atomic_exchange(&m->seen[item], 1))
            atomic_fetch_add(&m->dup, 1);
        int prod = (int)(item / PER_PRODUCER);
        if (m->fifo) {
            if (item <= last[prod])
                atomic_fetch_add(&m->disorder, 1);
            last[prod] = item;
        }
        atomic_fetch_add(&m->sum, (long long)item);
        atomic_fetch_add(&m->count, 1);
        if (m->task_done && conc_queue_task_done(m->q) != 0)
            atomic_fetch_add(&m->errors, 1);
    }
    return NULL;
}

static void run_mpmc(conc_queue_kind kind, size_t maxsize)
{
    struct mpmc *m = calloc(1, sizeof *m);
    cr_assert_not_null(m);
    m->q = mkq(kind, maxsize);
    m->priority = kind == CONC_QUEUE_PRIORITY;
    m->fifo = kind == CONC_QUEUE_FIFO || kind == CONC_QUEUE_SIMPLE;
    m->task_done = kind != CONC_QUEUE_SIMPLE;
    pthread_t prod[PRODUCERS], cons[CONSUMERS];
    for (int i = 0; i < CONSUMERS; i++)
        cons[i] = spawn(mpmc_consumer, m);
    for (int i = 0; i < PRODUCERS; i++)
        prod[i] = spawn(mpmc_producer, m);
    for (int i = 0; i < PRODUCERS; i++)
        join(prod[i]);
    if (m->task_done)
        cr_assert_eq(conc_queue_join(m->q, CONC_FOREVER), 0);
    /* the consumers drain what is left, then get ShutDown */
    cr_assert_eq(conc_queue_shutdown(m->q, false), 0);
    for (int i = 0; i < CONSUMERS; i++)
        join(cons[i]);

    cr_assert_eq(atomic_load(&m->errors), 0);
    cr_assert_eq(atomic_load(&m->dup), 0);
    cr_assert_eq(atomic_load(&m->disorder), 0);
    cr_assert_eq(atomic_load(&m->count), TOTAL);
    long long n = TOTAL;
    cr_assert_eq(atomic_load(&m->sum), n * (n - 1) / 2);
    for (long i = 0; i < TOTAL; i++)
        cr_assert_eq(atomic_load(&m->seen[i]), 1, "item %ld never consumed", i);
    cr_assert(conc_queue_empty(m->q));
    cr_assert_eq(conc_queue_unfinished(m->q), 0);
    conc_queue_free(m->q);
    free(m);
}

/* Getters that give up (timeout) while others keep waiting: a wake-up a
 * waker meant for a getter that is leaving must reach one that stays, so
 * every item put is received, by a waiting getter, exactly once. */
struct giveup {
    conc_queue *q;
    double timeout;
    atomic_int stop;        /* quick getters leave at their next timeout */
    atomic_long got;
    atomic_long sum;
    atomic_int errors;
};

static void *giveup_getter(void *p)
{
    struct giveup *g = p;
    for (;;) {
        void *v;
        int r = conc_queue_get(g->q, &v, g->timeout);
        if (r == -ETIMEDOUT) {
            if (atomic_load(&g->stop))
                return NULL;
            continue;           /* give up, come back at once */
        }
        if (r == -EPIPE)
            return NULL;
        if (r != 0) {
            atomic_fetch_add(&g->errors, 1);
            return NULL;
        }
        atomic_fetch_add(&g->got, 1);
        atomic_fetch_add(&g->sum, I(v));
    }
}

Test(queue, getters_giving_up_lose_no_wakeup, .timeout = 30)
{
    conc_queue_kind kinds[] = { CONC_QUEUE_FIFO, CONC_QUEUE_SIMPLE, CONC_QUEUE_LIFO };
    for (size_t k = 0; k < 3; k++) {
        struct giveup quick = { .q = mkq(kinds[k], 0), .timeout = 0.0005 };
        struct giveup slow = { .q = quick.q, .timeout = CONC_FOREVER };
        pthread_t t[6];
        for (int i = 0; i < 3; i++)
            t[i] = spawn(giveup_getter, &quick);
        for (int i = 3; i < 6; i++)
            t[i] = spawn(giveup_getter, &slow);
        long n = 3000, want = 0;
        for (long i = 1; i <= n; i++) {
            cr_assert_eq(conc_queue_put(quick.q, P(i), 0), 0);
            want += i;
            if (i % 50 == 0)
                usleep(200);    /* let getters sleep and give up */
        }
        /* The quick getters leave; the slow ones, asleep, must still be
         * woken for each item (a sleeper count gone wrong would leave them
         * asleep with items queued). */
        atomic_store(&quick.stop, 1);
        for (int i = 0; i < 3; i++)
            join(t[i]);
        for (int round = 0; round < 200; round++) {
            usleep(100);
            n++;
            cr_assert_eq(conc_queue_put(quick.q, P(n), 0), 0);
            want += n;
        }
        for (int spins = 0; conc_queue_qsize(quick.q) != 0 && spins < 20000; spins++)
            usleep(500);
        cr_assert_eq(conc_queue_qsize(quick.q), 0, "items left with getters waiting");
        cr_assert_eq(conc_queue_shutdown(quick.q, false), 0);
        for (int i = 3; i < 6; i++)
            join(t[i]);
        cr_assert_eq(atomic_load(&quick.errors) + atomic_load(&slow.errors), 0);
        cr_assert_eq(atomic_load(&quick.got) + atomic_load(&slow.got), n);
        cr_assert_eq(atomic_load(&quick.sum) + atomic_load(&slow.sum), want);
        conc_queue_free(quick.q);
    }
}

Test(queue, mpmc_fifo_unbounded, .timeout = 30)
{
    run_mpmc(CONC_QUEUE_FIFO, 0);
}

Test(queue, mpmc_fifo_bounded, .timeout = 30)
{
    run_mpmc(CONC_QUEUE_FIFO, 16);
}

Test(queue, mpmc_lifo_bounded, .timeout = 30)
{
    run_mpmc(CONC_QUEUE_LIFO, 64);
}

Test(queue, mpmc_priority, .timeout = 30)
{
    run_mpmc(CONC_QUEUE_PRIORITY, 100);
}

Test(queue, mpmc_simple, .timeout = 30)
{
    run_mpmc(CONC_QUEUE_SIMPLE, 0);
}

/* ====================================================== readiness fd */

static bool readable(int fd, int ms)
{
    struct pollfd p = { .fd = fd, .events = POLLIN };
    int r = poll(&p, 1, ms);
    cr_assert_geq(r, 0);
    return r == 1 && (p.revents & POLLIN);
}

struct poller {
    int fd;
    atomic_int done;
    int r;
};

static void *poller_fn(void *p)
{
    struct poller *pl = p;
    struct pollfd pfd = { .fd = pl->fd, .events = POLLIN };
    pl->r = poll(&pfd, 1, 20000);
    atomic_store(&pl->done, 1);
    return NULL;
}

Test(queue, readiness_fd, .timeout = 30)
{
    conc_queue *q = mkq(CONC_QUEUE_FIFO, 0);
    int fd = conc_queue_fd(q);
    cr_assert_geq(fd, 0);
    cr_assert_eq(conc_queue_fd(q), fd);         /* the same fd every time */
    cr_assert(!readable(fd, 0));

    cr_assert_eq(conc_queue_put(q, P(1), 0), 0);
    cr_assert(readable(fd, 0));
    cr_assert_eq(conc_queue_put(q, P(2), 0), 0);
    cr_assert(readable(fd, 0));
    void *v;
    cr_assert_eq(conc_queue_get(q, &v, 0), 0);
    cr_assert(readable(fd, 0), "one item left");
    cr_assert_eq(conc_queue_get(q, &v, 0), 0);
    cr_assert(!readable(fd, 0), "empty but readable");
    cr_assert_eq(conc_queue_get(q, &v, 0), -EAGAIN);
    cr_assert(!readable(fd, 0));

    /* a thread blocked in poll wakes up on put */
    struct poller pl = { .fd = fd };
    pid_t tid;
    pthread_t t = spawn_tid(poller_fn, &pl, &tid);
    wait_thread_blocked(tid, BLOCKED_GUARD);
    cr_assert_eq(atomic_load(&pl.done), 0);
    cr_assert_eq(conc_queue_put(q, P(3), 0), 0);
    join(t);
    cr_assert_eq(pl.r, 1);
    cr_assert_eq(conc_queue_get(q, &v, 0), 0);
    cr_assert(!readable(fd, 0));

    /* shut down: readable for good (get no longer blocks) */
    cr_assert_eq(conc_queue_put(q, P(4), 0), 0);
    cr_assert_eq(conc_queue_shutdown(q, false), 0);
    cr_assert(readable(fd, 0));
    cr_assert_eq(conc_queue_get(q, &v, 0), 0);
    cr_assert(readable(fd, 0));
    cr_assert_eq(conc_queue_get(q, &v, 0), -EPIPE);
    cr_assert(readable(fd, 0));
    conc_queue_free(q);
}

Test(queue, readiness_fd_created_late, .timeout = 30)
{
    conc_queue_kind kinds[] = { CONC_QUEUE_LIFO, CONC_QUEUE_PRIORITY, CONC_QUEUE_SIMPLE };
    for (size_t k = 0; k < 3; k++) {
        conc_queue *q = mkq(kinds[k], 0);
        cr_assert_eq(conc_queue_put(q, P(1), 0), 0);
        cr_assert_eq(conc_queue_put(q, P(2), 0), 0);
        int fd = conc_queue_fd(q);                /* created with items present */
        cr_assert_geq(fd, 0);
        cr_assert(readable(fd, 0));
        void *v;
        cr_assert_eq(conc_queue_get(q, &v, 0), 0);
        cr_assert(readable(fd, 0));
        cr_assert_eq(conc_queue_get(q, &v, 0), 0);
        cr_assert(!readable(fd, 0));
        conc_queue_free(q);
    }
    /* created after a shutdown: readable */
    conc_queue *q = mkq(CONC_QUEUE_FIFO, 0);
    cr_assert_eq(conc_queue_shutdown(q, true), 0);
    int fd = conc_queue_fd(q);
    cr_assert_geq(fd, 0);
    cr_assert(readable(fd, 0));
    conc_queue_free(q);
}

/* poll-driven consumers: wait on the fd, then get without blocking */
struct fd_consumer {
    conc_queue *q;
    int fd;
    atomic_long got;
    atomic_llong sum;
    atomic_int errors;
};

static void *fd_consumer_fn(void *p)
{
    struct fd_consumer *c = p;
    for (;;) {
        struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
        if (poll(&pfd, 1, 20000) != 1) {
            atomic_fetch_add(&c->errors, 1);
            return NULL;
        }
        void *v;
        int r = conc_queue_get(c->q, &v, 0);
        if (r == -EAGAIN)
            continue;               /* another consumer was faster */
        if (r == -EPIPE)
            return NULL;
        if (r != 0) {
            atomic_fetch_add(&c->errors, 1);
            return NULL;
        }
        atomic_fetch_add(&c->got, 1);
        atomic_fetch_add(&c->sum, (long long)I(v));
    }
}

Test(queue, readiness_fd_consumers, .timeout = 30)
{
    struct fd_consumer c = { .q = mkq(CONC_QUEUE_FIFO, 0) };
    c.fd = conc_queue_fd(c.q);
    cr_assert_geq(c.fd, 0);
    pthread_t t[3];
    for (int i = 0; i < 3; i++)
        t[i] = spawn(fd_consumer_fn, &c);
    long long want = 0;
    for (intptr_t i = 1; i <= 20000; i++) {
        cr_assert_eq(conc_queue_put(c.q, P(i), 0), 0);
        want += i;
        if (i % 1000 == 0)
            usleep(1000);
    }
    cr_assert_eq(conc_queue_shutdown(c.q, false), 0);
    for (int i = 0; i < 3; i++)
        join(t[i]);
    cr_assert_eq(atomic_load(&c.errors), 0);
    cr_assert_eq(atomic_load(&c.got), 20000);
    cr_assert_eq(atomic_load(&c.sum), want);
    conc_queue_free(c.q);
}

/* =============================================================== deque */

static conc_deque *mkd(size_t maxlen)
{
    conc_deque *d = NULL;
    cr_assert_eq(conc_deque_new(&d, &(conc_deque_opts){ .maxlen = maxlen }), 0);
    cr_assert_not_null(d);
    return d;
}

/* Checks that the deque holds exactly want[0..n-1], left to right, by
 * rotating it through a full turn (which leaves it as it was). */
static void expect_deque(conc_deque *d, const intptr_t *want, size_t n)
{
    cr_assert_eq(conc_deque_len(d), n);
    for (size_t i = 0; i < n; i++) {
        void *v;
        cr_assert_eq(conc_deque_peekleft(d, &v), 0);
        cr_assert_eq(I(v), want[i], "position %zu: got %ld, want %ld", i, (long)I(v),
                     (long)want[i]);
        cr_assert_eq(conc_deque_rotate(d, -1), 0);
    }
}

Test(deque, basics, .timeout = 30)
{
    conc_deque *d = NULL;
    cr_assert_eq(conc_deque_new(NULL, NULL), -EINVAL);
    cr_assert_eq(conc_deque_new(&d, NULL), 0);
    cr_assert_eq(conc_deque_maxlen(d), 0);
    cr_assert_eq(conc_deque_len(d), 0);
    void *v = P(5);
    cr_assert_eq(conc_deque_pop(d, &v), -EAGAIN);         /* IndexError */
    cr_assert_eq(conc_deque_popleft(d, &v), -EAGAIN);
    cr_assert_eq(conc_deque_peek(d, &v), -EAGAIN);
    cr_assert_eq(conc_deque_peekleft(d, &v), -EAGAIN);
    cr_assert_eq(I(v), 5);

    cr_assert_eq(conc_deque_append(d, P(2)), 0);
    cr_assert_eq(conc_deque_append(d, P(3)), 0);
    cr_assert_eq(conc_deque_appendleft(d, P(1)), 0);
    cr_assert_eq(conc_deque_appendleft(d, P(0)), 0);
    cr_assert_eq(conc_deque_len(d), 4);
    cr_assert_eq(conc_deque_peek(d, &v), 0);
    cr_assert_eq(I(v), 3);
    cr_assert_eq(conc_deque_peekleft(d, &v), 0);
    cr_assert_eq(I(v), 0);
    cr_assert_eq(conc_deque_len(d), 4);
    cr_assert_eq(conc_deque_pop(d, &v), 0);
    cr_assert_eq(I(v), 3);
    cr_assert_eq(conc_deque_popleft(d, &v), 0);
    cr_assert_eq(I(v), 0);
    cr_assert_eq(conc_deque_popleft(d, &v), 0);
    cr_assert_eq(I(v), 1);
    cr_assert_eq(conc_deque_pop(d, &v), 0);
    cr_assert_eq(I(v), 2);
    cr_assert_eq(conc_deque_pop(d, &v), -EAGAIN);

    /* growth, wrapping on both sides */
    for (intptr_t i = 0; i < 500; i++) {
        cr_assert_eq(conc_deque_append(d, P(i)), 0);
        cr_assert_eq(conc_deque_appendleft(d, P(-i - 1)), 0);
    }
    cr_assert_eq(conc_deque_len(d), 1000);
    for (intptr_t i = -500; i < 500; i++) {
        cr_assert_eq(conc_deque_popleft(d, &v), 0);
        cr_assert_eq(I(v), i);
    }
    cr_assert_eq(conc_deque_len(d), 0);

    /* bad arguments */
    cr_assert_eq(conc_deque_append(NULL, P(1)), -EINVAL);
    cr_assert_eq(conc_deque_appendleft(NULL, P(1)), -EINVAL);
    cr_assert_eq(conc_deque_pop(NULL, &v), -EINVAL);
    cr_assert_eq(conc_deque_pop(d, NULL), -EINVAL);
    cr_assert_eq(conc_deque_popleft(d, NULL), -EINVAL);
    cr_assert_eq(conc_deque_peek(d, NULL), -EINVAL);
    cr_assert_eq(conc_deque_peekleft(NULL, &v), -EINVAL);
    cr_assert_eq(conc_deque_rotate(NULL, 1), -EINVAL);
    cr_assert_eq(conc_deque_reverse(NULL), -EINVAL);
    cr_assert_eq(conc_deque_clear(NULL), -EINVAL);
    cr_assert_eq(conc_deque_extend(NULL, NULL, 0), -EINVAL);
    cr_assert_eq(conc_deque_extend(d, NULL, 1), -EINVAL);
    cr_assert_eq(conc_deque_extendleft(d, NULL, 1), -EINVAL);
    cr_assert_eq(conc_deque_extend(d, NULL, 0), 0);
    cr_assert_eq(conc_deque_extend(d, &v, (size_t)INT_MAX + 1), -EINVAL);
    cr_assert_eq(conc_deque_len(NULL), 0);
    cr_assert_eq(conc_deque_maxlen(NULL), 0);
    conc_deque_free(d);
    conc_deque_free(NULL);
}

Test(deque, maxlen_drops_other_end, .timeout = 30)
{
    struct drops dr = { 0 };
    conc_deque *d = NULL;
    cr_assert_eq(conc_deque_new(&d, &(conc_deque_opts){ .maxlen = 3, .drop = count_drop,
                                                         .drop_arg = &dr }), 0);
    cr_assert_eq(conc_deque_maxlen(d), 3);
    cr_assert_eq(conc_deque_append(d, P(1)), 0);
    cr_assert_eq(conc_deque_append(d, P(2)), 0);
    cr_assert_eq(conc_deque_append(d, P(3)), 0);
    cr_assert_eq(conc_deque_append(d, P(4)), 1);          /* 1 falls off the left */
    cr_assert_eq(atomic_load(&dr.n), 1);
    cr_assert_eq(atomic_load(&dr.sum), 1);
    expect_deque(d, (intptr_t[]){ 2, 3, 4 }, 3);
    cr_assert_eq(conc_deque_appendleft(d, P(0)), 1);      /* 4 falls off the right */
    cr_assert_eq(atomic_load(&dr.sum), 5);
    expect_deque(d, (intptr_t[]){ 0, 2, 3 }, 3);

    /* extend: like appending one by one */
    cr_assert_eq(conc_deque_extend(d, (void *[]){ P(7), P(8) }, 2), 2);
    expect_deque(d, (intptr_t[]){ 3, 7, 8 }, 3);
    cr_assert_eq(conc_deque_extendleft(d, (void *[]){ P(10), P(11), P(12), P(13), P(14) }, 5), 5);
    expect_deque(d, (intptr_t[]){ 14, 13, 12 }, 3);        /* reversed, like Python */
    cr_assert_eq(atomic_load(&dr.n), 2 + 2 + 5);
    cr_assert_eq(atomic_load(&dr.sum), 5 + 0 + 2 + 3 + 7 + 8 + 10 + 11);

    void *v;
    cr_assert_eq(conc_deque_pop(d, &v), 0);
    cr_assert_eq(I(v), 12);
    cr_assert_eq(conc_deque_append(d, P(20)), 0);          /* room again: no drop */
    cr_assert_eq(conc_deque_clear(d), 0);
    cr_assert_eq(conc_deque_len(d), 0);
    cr_assert_eq(atomic_load(&dr.n), 12);
    cr_assert_eq(conc_deque_append(d, P(30)), 0);
    conc_deque_free(d);
    cr_assert_eq(atomic_load(&dr.n), 13);

    /* maxlen 1 */
    d = mkd(1);
    for (intptr_t i = 0; i < 20; i++)
        cr_assert_eq(conc_deque_append(d, P(i)), i ? 1 : 0);
    expect_deque(d, (intptr_t[]){ 19 }, 1);
    conc_deque_free(d);
}

Test(deque, extend_unbounded_and_reverse, .timeout = 30)
{
    conc_deque *d = mkd(0);
    void *items[100];
    for (intptr_t i = 0; i < 100; i++)
        items[i] = P(i);
    cr_assert_eq(conc_deque_extend(d, items, 50), 0);
    cr_assert_eq(conc_deque_extendleft(d, items + 50, 50), 0);
    intptr_t want[100];
    for (int i = 0; i < 50; i++) {
        want[i] = 99 - i;
        want[50 + i] = i;
    }
    expect_deque(d, want, 100);
    cr_assert_eq(conc_deque_reverse(d), 0);
    for (int i = 0; i < 50; i++) {
        want[i] = 49 - i;
        want[50 + i] = 50 + i;
    }
    expect_deque(d, want, 100);
    conc_deque_free(d);

    d = mkd(0);
    cr_assert_eq(conc_deque_reverse(d), 0);     /* empty */
    cr_assert_eq(conc_deque_append(d, P(1)), 0);
    cr_assert_eq(conc_deque_reverse(d), 0);
    expect_deque(d, (intptr_t[]){ 1 }, 1);
    conc_deque_free(d);
}

/* d.rotate(n) on [0..len-1] gives out[i] = (i - n) mod len */
static void check_rotate(conc_deque *d, size_t len, int64_t n)
{
    cr_assert_eq(conc_deque_rotate(d, n), 0);
    intptr_t want[64];
    int64_t m = (int64_t)len;
    if (m == 0) {
        cr_assert_eq(conc_deque_len(d), 0);
        return;
    }
    for (int64_t i = 0; i < m; i++) {
        int64_t k = ((i - n % m) % m + m) % m;
        want[i] = (intptr_t)k;
    }
    expect_deque(d, want, len);
    /* put it back: the inverse rotation */
    cr_assert_eq(conc_deque_rotate(d, -(n % m)), 0);
    for (int64_t i = 0; i < m; i++)
        want[i] = (intptr_t)i;
    expect_deque(d, want, len);
}

Test(deque, rotate_both_ways, .timeout = 30)
{
    static const int64_t ns[] = { 0, 1, -1, 2, -2, 3, -3, 5, -5, 7, -7, 8, -8, 9, -9, 16, -16,
                                  17, -17, 100, -100, 1000003, -1000003, INT64_MAX, INT64_MIN,
                                  INT64_MAX - 1, INT64_MIN + 1 };
    /* lengths below, at and above the ring's capacity steps, with the head
     * in different places */
    for (size_t len = 0; len <= 40; len++) {
        for (int offset = 0; offset < 3; offset++) {
            conc_deque *d = mkd(0);
            for (int k = 0; k < offset * 5; k++) {     /* move the head around */
                void *v;
                cr_assert_eq(conc_deque_append(d, P(-1)), 0);
                cr_assert_eq(conc_deque_popleft(d, &v), 0);
            }
            for (size_t i = 0; i < len; i++)
                cr_assert_eq(conc_deque_append(d, P((intptr_t)i)), 0);
            for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++)
                check_rotate(d, len, ns[k]);
            conc_deque_free(d);
        }
    }

    /* Python's examples: rotate(1) == appendleft(pop()) */
    conc_deque *d = mkd(0);
    for (intptr_t i = 1; i <= 5; i++)
        cr_assert_eq(conc_deque_append(d, P(i)), 0);
    cr_assert_eq(conc_deque_rotate(d, 2), 0);
    expect_deque(d, (intptr_t[]){ 4, 5, 1, 2, 3 }, 5);
    cr_assert_eq(conc_deque_rotate(d, -3), 0);
    expect_deque(d, (intptr_t[]){ 2, 3, 4, 5, 1 }, 5);
    conc_deque_free(d);

    /* a full, bounded ring (maxlen 8 == capacity) */
    d = mkd(8);
    for (intptr_t i = 0; i < 10; i++)
        conc_deque_append(d, P(i));
    cr_assert_eq(conc_deque_rotate(d, 3), 0);
    expect_deque(d, (intptr_t[]){ 7, 8, 9, 2, 3, 4, 5, 6 }, 8);
    cr_assert_eq(conc_deque_rotate(d, -5), 0);
    expect_deque(d, (intptr_t[]){ 4, 5, 6, 7, 8, 9, 2, 3 }, 8);
    cr_assert_eq(conc_deque_append(d, P(10)), 1);
    expect_deque(d, (intptr_t[]){ 5, 6, 7, 8, 9, 2, 3, 10 }, 8);
    conc_deque_free(d);
}

/* Random operations checked against a plain array model. */
Test(deque, random_against_model, .timeout = 30)
{
    enum { MAXM = 4096 };
    static intptr_t model[MAXM];
    for (size_t maxlen = 0; maxlen <= 37; maxlen += 37) {
        conc_deque *d = mkd(maxlen);
        size_t n = 0;
        intptr_t next = 1;
        srand(777 + (unsigned)maxlen);
        for (int step = 0; step < 20000; step++) {
            int op = rand() % 8;
            void *v;
            if (op <= 1 && n < MAXM - 1) {          /* append */
                int r = conc_deque_append(d, P(next));
                if (maxlen && n == maxlen) {
                    cr_assert_eq(r, 1);
                    memmove(model, model + 1, (n - 1) * sizeof *model);
                    n--;
                } else {
                    cr_assert_eq(r, 0);
                }
                model[n++] = next++;
            } else if (op <= 3 && n < MAXM - 1) {   /* appendleft */
                int r = conc_deque_appendleft(d, P(next));
                if (maxlen && n == maxlen) {
                    cr_assert_eq(r, 1);
                    n--;
                } else {
                    cr_assert_eq(r, 0);
                }
                memmove(model + 1, model, n * sizeof *model);
                model[0] = next++;
                n++;
            } else if (op == 4) {                   /* pop */
                int r = conc_deque_pop(d, &v);
                if (n == 0) {
                    cr_assert_eq(r, -EAGAIN);
                } else {
                    cr_assert_eq(r, 0);
                    cr_assert_eq(I(v), model[--n]);
                }
            } else if (op == 5) {                   /* popleft */
                int r = conc_deque_popleft(d, &v);
                if (n == 0) {
                    cr_assert_eq(r, -EAGAIN);
                } else {
                    cr_assert_eq(r, 0);
                    cr_assert_eq(I(v), model[0]);
                    memmove(model, model + 1, (n - 1) * sizeof *model);
                    n--;
                }
            } else if (op == 6 && n > 0) {          /* rotate */
                int64_t k = rand() % (2 * (int)n + 3) - ((int)n + 1);
                cr_assert_eq(conc_deque_rotate(d, k), 0);
                static intptr_t tmp[MAXM];
                int64_t m = (int64_t)n;
                for (int64_t i = 0; i < m; i++)
                    tmp[((i + k) % m + m) % m] = model[i];
                memcpy(model, tmp, n * sizeof *model);
            } else if (op == 7 && rand() % 50 == 0) {
                cr_assert_eq(conc_deque_clear(d), 0);
                n = 0;
            }
            cr_assert_eq(conc_deque_len(d), n);
            if (n) {
                cr_assert_eq(conc_deque_peekleft(d, &v), 0);
                cr_assert_eq(I(v), model[0]);
                cr_assert_eq(conc_deque_peek(d, &v), 0);
                cr_assert_eq(I(v), model[n - 1]);
            }
        }
        expect_deque(d, model, n);
        conc_deque_free(d);
    }
}

struct deque_worker {
    conc_deque *d;
    atomic_int next_id;
    atomic_int producers_done;
    atomic_uchar seen[TOTAL];
    atomic_long count;
    atomic_int dup;
};

static void *deque_producer(void *p)
{
    struct deque_worker *w = p;
    int id = atomic_fetch_add(&w->next_id, 1);
    for (intptr_t i = 0; i < PER_PRODUCER; i++) {
        intptr_t item = (intptr_t)id * PER_PRODUCER + i;
        if (i % 2)
            conc_deque_append(w->d, P(item));
        else
            conc_deque_appendleft(w->d, P(item));
    }
    atomic_fetch_add(&w->producers_done, 1);
    return NULL;
}

static void *deque_consumer(void *p)
{
    struct deque_worker *w = p;
    for (unsigned n = 0;; n++) {
        void *v;
        int r = n % 2 ? conc_deque_pop(w->d, &v) : conc_deque_popleft(w->d, &v);
        if (r == -EAGAIN) {
            if (atomic_load(&w->producers_done) == PRODUCERS && conc_deque_len(w->d) == 0)
                return NULL;
            sched_yield();
            continue;
        }
        if (atomic_exchange(&w->seen[I(v)], 1))
            atomic_fetch_add(&w->dup, 1);
        atomic_fetch_add(&w->count, 1);
    }
}

Test(deque, threads_exact_counts, .timeout = 30)
{
    struct deque_worker *w = calloc(1, sizeof *w);
    cr_assert_not_null(w);
    w->d = mkd(0);
    pthread_t prod[PRODUCERS], cons[CONSUMERS];
    for (int i = 0; i < CONSUMERS; i++)
        cons[i] = spawn(deque_consumer, w);
    for (int i = 0; i < PRODUCERS; i++)
        prod[i] = spawn(deque_producer, w);
    for (int i = 0; i < PRODUCERS; i++)
        join(prod[i]);
    for (int i = 0; i < CONSUMERS; i++)
        join(cons[i]);
    cr_assert_eq(atomic_load(&w->dup), 0);
    cr_assert_eq(atomic_load(&w->count), TOTAL);
    for (long i = 0; i < TOTAL; i++)
        cr_assert_eq(atomic_load(&w->seen[i]), 1, "item %ld lost", i);
    cr_assert_eq(conc_deque_len(w->d), 0);
    conc_deque_free(w->d);
    free(w);
}

/* Options structs can grow: size 0 is the first version (every field read),
 * CONC_X_OPTS_INIT fills size, and a size that stops before a field makes
 * conc leave that field at its default (an older caller's struct). */
Test(queue, options_size, .timeout = 30)
{
    conc_queue *q;
    cr_assert_eq(conc_queue_new(&q, &(conc_queue_opts){ .maxsize = 3 }), 0);
    cr_assert_eq(conc_queue_maxsize(q), 3);
    conc_queue_free(q);

    conc_queue_opts o = CONC_QUEUE_OPTS_INIT;
    cr_assert_eq(o.size, sizeof(conc_queue_opts));
    o.maxsize = 4;
    cr_assert_eq(conc_queue_new(&q, &o), 0);
    cr_assert_eq(conc_queue_maxsize(q), 4);
    conc_queue_free(q);

    o.size = (uint32_t)offsetof(conc_queue_opts, maxsize);
    o.kind = CONC_QUEUE_LIFO;
    cr_assert_eq(conc_queue_new(&q, &o), 0);
    cr_assert_eq(conc_queue_maxsize(q), 0, "maxsize is past the caller's size");
    cr_assert_eq(conc_queue_put(q, (void *)1, 0), 0);
    cr_assert_eq(conc_queue_put(q, (void *)2, 0), 0);
    void *out;
    cr_assert_eq(conc_queue_get(q, &out, 0), 0);
    cr_assert_eq(out, (void *)2, "kind is within the caller's size: a LIFO");
    conc_queue_free(q);

    conc_deque *d;
    conc_deque_opts dopts = CONC_DEQUE_OPTS_INIT;
    cr_assert_eq(dopts.size, sizeof(conc_deque_opts));
    dopts.maxlen = 2;
    cr_assert_eq(conc_deque_new(&d, &dopts), 0);
    cr_assert_eq(conc_deque_maxlen(d), 2);
    conc_deque_free(d);
    dopts.size = (uint32_t)offsetof(conc_deque_opts, maxlen);
    cr_assert_eq(conc_deque_new(&d, &dopts), 0);
    cr_assert_eq(conc_deque_maxlen(d), 0);
    conc_deque_free(d);
    cr_assert_eq(conc_deque_new(&d, &(conc_deque_opts){ .maxlen = 5 }), 0);
    cr_assert_eq(conc_deque_maxlen(d), 5);
    conc_deque_free(d);
}
