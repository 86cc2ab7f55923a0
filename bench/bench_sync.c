/*
 * bench_sync.c - conc's Lock, Event, Condition and Thread against plain
 * pthreads, a raw futex and Python's threading, in one run.
 *
 *   lock_uncontended   ns per acquire+release, one thread
 *   lock_contended     ops/s, 2 threads each doing acquire; counter++; release
 *   event_pingpong     round trips/s between two threads over two events
 *   cond_prodcons      items/s through a 64-slot buffer (one lock, two conditions)
 *   thread_start_join  threads/s started (empty function) and joined
 *
 * The harness threads are plain pthreads for every system, so only the
 * primitive under test differs; the two workers of a two-thread metric are
 * pinned to two different CPUs (see bench_cpu; --no-pin turns that off).
 * lock_contended and cond_prodcons check their result (the counter, the sum
 * of the items), thread_start_join the thread's return value: a wrong one
 * is reported as FAILED.  A lost wake-up shows as a hang, which benchlib's
 * watchdog turns into an error exit.  An error returned by a conc call in a
 * worker ends the program with a message.  Python runs as
 * bench/peers/sync_threading.py.
 */
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "conc.h"
#include "benchlib.h"

static const bench_metric metrics[] = {
    { "lock_uncontended", "ns", "acquire+release pair, one thread" },
    { "lock_contended", "ops/s", "2 threads: acquire; counter++; release" },
    { "event_pingpong", "ops/s", "round trips: A sets e1, waits e2; B waits e1, clears, sets e2" },
    { "cond_prodcons", "ops/s", "items, 1 producer -> 64-slot buffer -> 1 consumer, lock + 2 conds" },
    { "thread_start_join", "ops/s", "start a thread running an empty function, join it" },
};

/* A body that finds a wrong result says why on stderr and returns this. */
#define WRONG_RESULT (-EPROTO)

static void die_on(int err, const char *what)
{
    if (err)
        bench_die(what, err);
}

/* ------------------------------------------------------ lock_uncontended */

static int64_t lock_unc_conc(void *arg, long iters)
{
    (void)arg;
    conc_lock l = CONC_LOCK_INIT;
    int64_t t0 = bench_now();
    for (long i = 0; i < iters; i++) {
        if (conc_lock_acquire(&l, CONC_FOREVER) != 0 || conc_lock_release(&l) != 0)
            return -EIO;
    }
    return bench_now() - t0;
}

static int64_t lock_unc_pthread(void *arg, long iters)
{
    (void)arg;
    pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
    int64_t t0 = bench_now();
    for (long i = 0; i < iters; i++) {
        if (pthread_mutex_lock(&m) != 0 || pthread_mutex_unlock(&m) != 0)
            return -EIO;
    }
    return bench_now() - t0;
}

/* -------------------------------------------------------- lock_contended */

typedef struct contended {
    conc_lock cl;
    pthread_mutex_t pm;
    long counter;
} contended;

static void contended_conc_side(void *ctx, int side, long iters)
{
    (void)side;
    contended *c = ctx;
    for (long i = 0; i < iters; i++) {
        die_on(conc_lock_acquire(&c->cl, CONC_FOREVER), "conc_lock_acquire");
        c->counter++;
        die_on(conc_lock_release(&c->cl), "conc_lock_release");
    }
}

static void contended_pthread_side(void *ctx, int side, long iters)
{
    (void)side;
    contended *c = ctx;
    for (long i = 0; i < iters; i++) {
        pthread_mutex_lock(&c->pm);
        c->counter++;
        pthread_mutex_unlock(&c->pm);
    }
}

static int64_t contended_run(bench_side_fn fn, long iters)
{
    static contended c = { CONC_LOCK_INIT, PTHREAD_MUTEX_INITIALIZER, 0 };
    long half = iters / 2 > 0 ? iters / 2 : 1;
    c.counter = 0;
    int64_t ns = bench_run_pair(fn, &c, half);
    if (c.counter != 2 * half) {
        fprintf(stderr, "bench_sync: lock_contended: counter %ld, expected %ld (mutual exclusion broken)\n",
                c.counter, 2 * half);
        return WRONG_RESULT;
    }
    return (int64_t)((double)ns * (double)iters / (double)(2 * half));
}

static int64_t contended_conc(void *arg, long iters)
{
    (void)arg;
    return contended_run(contended_conc_side, iters);
}

static int64_t contended_pthread(void *arg, long iters)
{
    (void)arg;
    return contended_run(contended_pthread_side, iters);
}

/* -------------------------------------------------------- event_pingpong */

/* A: set e1, wait e2, clear e2.  B: wait e1, clear e1, set e2. */
typedef struct pingpong_conc {
    conc_event e1, e2;
} pingpong_conc;

static void pingpong_conc_side(void *ctx, int side, long iters)
{
    pingpong_conc *p = ctx;
    for (long i = 0; i < iters; i++) {
        if (side == 0) {
            die_on(conc_event_set(&p->e1), "conc_event_set");
            die_on(conc_event_wait(&p->e2, CONC_FOREVER), "conc_event_wait");
            die_on(conc_event_clear(&p->e2), "conc_event_clear");
        } else {
            die_on(conc_event_wait(&p->e1, CONC_FOREVER), "conc_event_wait");
            die_on(conc_event_clear(&p->e1), "conc_event_clear");
            die_on(conc_event_set(&p->e2), "conc_event_set");
        }
    }
}

static int64_t pingpong_conc_body(void *arg, long iters)
{
    (void)arg;
    pingpong_conc p = { CONC_EVENT_INIT, CONC_EVENT_INIT };
    return bench_run_pair(pingpong_conc_side, &p, iters);
}

/* The floor: one futex word, each side sleeps in FUTEX_WAIT until the other
 * flips it and always calls FUTEX_WAKE (no spinning, no waiter tracking).
 * 0: start, 1: A's ping is up, 2: B answered. */
static long sys_futex(atomic_uint *word, int op, unsigned val)
{
    return syscall(SYS_futex, (unsigned *)word, op, val, NULL, NULL, 0);
}

static void pingpong_futex_side(void *ctx, int side, long iters)
{
    atomic_uint *w = ctx;
    for (long i = 0; i < iters; i++) {
        if (side == 0) {
            atomic_store_explicit(w, 1, memory_order_release);
            sys_futex(w, FUTEX_WAKE_PRIVATE, 1);
            while (atomic_load_explicit(w, memory_order_acquire) == 1)
                sys_futex(w, FUTEX_WAIT_PRIVATE, 1);
        } else {
            unsigned v;
            while ((v = atomic_load_explicit(w, memory_order_acquire)) != 1)
                sys_futex(w, FUTEX_WAIT_PRIVATE, v);
            atomic_store_explicit(w, 2, memory_order_release);
            sys_futex(w, FUTEX_WAKE_PRIVATE, 1);
        }
    }
}

static int64_t pingpong_futex_body(void *arg, long iters)
{
    (void)arg;
    atomic_uint w = 0;
    return bench_run_pair(pingpong_futex_side, &w, iters);
}

/* threading.Event the pthread way: a flag under a mutex, a condvar. */
typedef struct pevent {
    pthread_mutex_t m;
    pthread_cond_t c;
    int flag;
} pevent;

static void pevent_set(pevent *e)
{
    pthread_mutex_lock(&e->m);
    e->flag = 1;
    pthread_cond_broadcast(&e->c);
    pthread_mutex_unlock(&e->m);
}

static void pevent_clear(pevent *e)
{
    pthread_mutex_lock(&e->m);
    e->flag = 0;
    pthread_mutex_unlock(&e->m);
}

static void pevent_wait(pevent *e)
{
    pthread_mutex_lock(&e->m);
    while (!e->flag)
        pthread_cond_wait(&e->c, &e->m);
    pthread_mutex_unlock(&e->m);
}

typedef struct pingpong_pthread {
    pevent e1, e2;
} pingpong_pthread;

static void pingpong_pthread_side(void *ctx, int side, long iters)
{
    pingpong_pthread *p = ctx;
    for (long i = 0; i < iters; i++) {
        if (side == 0) {
            pevent_set(&p->e1);
            pevent_wait(&p->e2);
            pevent_clear(&p->e2);
        } else {
            pevent_wait(&p->e1);
            pevent_clear(&p->e1);
            pevent_set(&p->e2);
        }
    }
}

static int64_t pingpong_pthread_body(void *arg, long iters)
{
    (void)arg;
    pingpong_pthread p = {
        { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0 },
        { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0 },
    };
    return bench_run_pair(pingpong_pthread_side, &p, iters);
}

/* --------------------------------------------------------- cond_prodcons */

#define SLOTS 64

typedef struct prodcons {
    conc_lock cl;
    conc_cond c_not_full, c_not_empty;
    pthread_mutex_t pm;
    pthread_cond_t p_not_full, p_not_empty;
    long buf[SLOTS];
    unsigned head, count;
    long sum;
} prodcons;

static void prodcons_conc_side(void *ctx, int side, long iters)
{
    prodcons *q = ctx;
    if (side == 0) {
        for (long i = 1; i <= iters; i++) {
            die_on(conc_lock_acquire(&q->cl, CONC_FOREVER), "conc_lock_acquire");
            while (q->count == SLOTS)
                die_on(conc_cond_wait(&q->c_not_full, &q->cl, CONC_FOREVER), "conc_cond_wait");
            q->buf[(q->head + q->count) % SLOTS] = i;
            q->count++;
            conc_cond_notify(&q->c_not_empty, 1);
            die_on(conc_lock_release(&q->cl), "conc_lock_release");
        }
    } else {
        long sum = 0;
        for (long i = 0; i < iters; i++) {
            die_on(conc_lock_acquire(&q->cl, CONC_FOREVER), "conc_lock_acquire");
            while (q->count == 0)
                die_on(conc_cond_wait(&q->c_not_empty, &q->cl, CONC_FOREVER), "conc_cond_wait");
            sum += q->buf[q->head];
            q->head = (q->head + 1) % SLOTS;
            q->count--;
            conc_cond_notify(&q->c_not_full, 1);
            die_on(conc_lock_release(&q->cl), "conc_lock_release");
        }
        q->sum = sum;
    }
}

static void prodcons_pthread_side(void *ctx, int side, long iters)
{
    prodcons *q = ctx;
    if (side == 0) {
        for (long i = 1; i <= iters; i++) {
            pthread_mutex_lock(&q->pm);
            while (q->count == SLOTS)
                pthread_cond_wait(&q->p_not_full, &q->pm);
            q->buf[(q->head + q->count) % SLOTS] = i;
            q->count++;
            pthread_cond_signal(&q->p_not_empty);
            pthread_mutex_unlock(&q->pm);
        }
    } else {
        long sum = 0;
        for (long i = 0; i < iters; i++) {
            pthread_mutex_lock(&q->pm);
            while (q->count == 0)
                pthread_cond_wait(&q->p_not_empty, &q->pm);
            sum += q->buf[q->head];
            q->head = (q->head + 1) % SLOTS;
            q->count--;
            pthread_cond_signal(&q->p_not_full);
            pthread_mutex_unlock(&q->pm);
        }
        q->sum = sum;
    }
}

static int64_t prodcons_run(bench_side_fn fn, long iters)
{
    static prodcons q = {
        .cl = CONC_LOCK_INIT, .c_not_full = CONC_COND_INIT, .c_not_empty = CONC_COND_INIT,
        .pm = PTHREAD_MUTEX_INITIALIZER,
        .p_not_full = PTHREAD_COND_INITIALIZER, .p_not_empty = PTHREAD_COND_INITIALIZER,
    };
    q.head = q.count = 0;
    q.sum = -1;
    int64_t ns = bench_run_pair(fn, &q, iters);
    long want = iters * (iters + 1) / 2;
    if (q.sum != want || q.count != 0) {
        fprintf(stderr, "bench_sync: cond_prodcons: sum %ld (expected %ld), %u left in the buffer\n",
                q.sum, want, q.count);
        return WRONG_RESULT;
    }
    return ns;
}

static int64_t prodcons_conc(void *arg, long iters)
{
    (void)arg;
    return prodcons_run(prodcons_conc_side, iters);
}

static int64_t prodcons_pthread(void *arg, long iters)
{
    (void)arg;
    return prodcons_run(prodcons_pthread_side, iters);
}

/* ----------------------------------------------------- thread_start_join */

static void *empty_fn(void *arg)
{
    return arg;
}

static int64_t thread_conc(void *arg, long iters)
{
    (void)arg;
    int64_t t0 = bench_now();
    for (long i = 0; i < iters; i++) {
        conc_thread *t;
        int e = conc_thread_new(&t, empty_fn, &iters, NULL);
        if (e < 0)
            return e;
        if ((e = conc_thread_start(t)) < 0 || (e = conc_thread_join(t, CONC_FOREVER)) < 0) {
            conc_thread_free(t);
            return e;
        }
        void *res = NULL;
        if (conc_thread_result(t, &res) != 0 || res != &iters) {
            fprintf(stderr, "bench_sync: thread_start_join: wrong thread result\n");
            conc_thread_free(t);
            return WRONG_RESULT;
        }
        conc_thread_free(t);
    }
    return bench_now() - t0;
}

static int64_t thread_pthread(void *arg, long iters)
{
    (void)arg;
    int64_t t0 = bench_now();
    for (long i = 0; i < iters; i++) {
        pthread_t t;
        void *res = NULL;
        int e = pthread_create(&t, NULL, empty_fn, &iters);
        if (e)
            return -e;
        if ((e = pthread_join(t, &res)) != 0)
            return -e;
        if (res != &iters)
            return WRONG_RESULT;
    }
    return bench_now() - t0;
}

/* ------------------------------------------------------------------ main */

static void run_python(void)
{
    const char *which[BENCH_ARRAY_LEN(metrics) + 1];
    for (size_t i = 0; i < BENCH_ARRAY_LEN(metrics); i++)
        which[i] = metrics[i].name;
    which[BENCH_ARRAY_LEN(metrics)] = NULL;
    /* Python is ~100x slower per operation: its script has its own, smaller
     * iteration counts; we pass the scale and the repetitions. */
    bench_peer_run_metrics("python", false, bench_python(), bench_peer_path("sync_threading.py"),
                           (bench_reps() + 1) / 2, bench_cpu_list(2),
                           bench_scale() * (bench_quick() ? 0.05 : 1.0), which);
}

int main(int argc, char **argv)
{
    bench_init(argc, argv, "bench_sync: conc Lock/Event/Condition/Thread vs pthread, futex, Python threading",
               metrics, BENCH_ARRAY_LEN(metrics));
    bench_become_multithreaded();

    bench_compare_pthread("lock_uncontended", lock_unc_conc, lock_unc_pthread,
                          bench_iters(20000000, 2000000), BENCH_BEST);

    bench_compare_pthread("lock_contended", contended_conc, contended_pthread,
                          bench_iters(10000000, 1000000), BENCH_MEDIAN);

    static const bench_case pingpong[] = {
        { "conc", pingpong_conc_body, NULL },
        { "futex", pingpong_futex_body, NULL },
        { "pthread", pingpong_pthread_body, NULL },
    };
    bench_compare("event_pingpong", pingpong, BENCH_ARRAY_LEN(pingpong),
                  bench_iters(2000000, 200000), BENCH_MEDIAN);

    bench_compare_pthread("cond_prodcons", prodcons_conc, prodcons_pthread,
                          bench_iters(5000000, 500000), BENCH_MEDIAN);

    bench_compare_pthread("thread_start_join", thread_conc, thread_pthread,
                          bench_iters(100000, 10000), BENCH_MEDIAN);

    run_python();
    return bench_report();
}
