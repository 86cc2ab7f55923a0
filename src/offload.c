/*
 * offload.c - run blocking foreign calls on a process-wide pool of worker
 * threads, parking only the calling coroutine (gevent's threadpool.apply).
 *
 * A call is a task: fn, arg, the result and a futex word `state` (PENDING,
 * DONE, ABANDONED), shared by the caller and the worker that runs it, each
 * holding one reference.  The caller waits on `state` through conc's wait
 * primitive, so a coroutine parks and a plain thread sleeps in the kernel.
 * The worker stores the result, moves the state PENDING -> DONE and wakes
 * the caller; a caller that gives up (killed, timed out) moves it PENDING ->
 * ABANDONED instead, and then the worker hands arg and result to the
 * abandon callback.  Whichever side drops the last reference frees the task.
 *
 * A coroutine waiting for a worker is never taken for a deadlock (a hub
 * reports one only when its coroutines all wait for each other), so the
 * wait needs no timer of its own.
 *
 * Workers are made on demand (when more tasks are queued than workers are
 * idle) up to max_workers, run with every signal blocked, and exit after
 * idle_ns without work.  A forked child starts with no workers and an empty
 * queue (the tasks queued in the parent belong to the parent's callers).
 * Nothing is torn down at exit: a worker still running a call when the
 * process exits simply ends with it.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <time.h>

#include "conc/offload.h"
#include "internal.h"
#include "sys/wait.h"

enum { T_PENDING, T_DONE, T_ABANDONED };

struct task {
    conc_offload_fn fn;
    void *arg;
    void *result;
    void (*abandon)(void *arg, void *result);
    uint32_t state;             /* futex word: T_* */
    uint32_t refs;
    struct task *next;
};

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cond;        /* work queued (CLOCK_MONOTONIC) */
    struct task *head, *tail;
    size_t queued;
    size_t workers;
    size_t idle;
    size_t max_workers;         /* 0: not decided yet */
    int64_t idle_ns;
} S = {
    .mu = PTHREAD_MUTEX_INITIALIZER,
    .idle_ns = (int64_t)CONC_OFFLOAD_IDLE_DEFAULT * 1000000000LL,
};

static void cond_init(void)
{
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(&S.cond, &a);
    pthread_condattr_destroy(&a);
}

static void offload_atfork_child(void)
{
    /* Only the forking thread lives on: no workers, nobody waits for the
     * queued tasks (leaked: they belong to the parent's callers).  Memory
     * only: the handler never waits, parks or takes a lock. */
    pthread_mutex_init(&S.mu, NULL);
    cond_init();
    S.head = S.tail = NULL;
    S.queued = S.workers = S.idle = 0;
}

__attribute__((constructor(CONC__CTOR_MODULE))) static void offload_module_init(void)
{
    cond_init();
}

/* The fork handler is registered by the first call that queues work
 * (docs/building.md, "Process-wide effects"): a program that never
 * offloads has none. */
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void atfork_register(void)
{
    pthread_atfork(NULL, NULL, offload_atfork_child);
}

static size_t default_max(void)
{
    cpu_set_t set;
    long n = 1;
    if (sched_getaffinity(0, sizeof set, &set) == 0)
        n = CPU_COUNT(&set);
    long m = 4 * n;
    if (m < CONC_OFFLOAD_MIN_DEFAULT)
        m = CONC_OFFLOAD_MIN_DEFAULT;
    if (m > CONC_OFFLOAD_MAX_DEFAULT)
        m = CONC_OFFLOAD_MAX_DEFAULT;
    return (size_t)m;
}

/* Under S.mu. */
static size_t max_workers_locked(void)
{
    if (!S.max_workers)
        S.max_workers = default_max();
    return S.max_workers;
}

static void task_unref(struct task *t)
{
    if (__atomic_sub_fetch(&t->refs, 1, __ATOMIC_ACQ_REL) == 0)
        free(t);
}

static void task_run(struct task *t)
{
    void *r = t->fn(t->arg);
    t->result = r;
    uint32_t expect = T_PENDING;
    if (__atomic_compare_exchange_n(&t->state, &expect, T_DONE, false,
                                    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        conc__wake(&t->state, 1, 0);
    } else if (t->abandon) {
        t->abandon(t->arg, r);
    }
    task_unref(t);
}

static void *worker_main(void *unused)
{
    (void)unused;
    pthread_mutex_lock(&S.mu);
    for (;;) {
        while (!S.head) {
            if (S.workers > max_workers_locked()) {     /* the limit was lowered */
                S.workers--;
                pthread_mutex_unlock(&S.mu);
                return NULL;
            }
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            int64_t end = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec + S.idle_ns;
            ts.tv_sec = end / 1000000000LL;
            ts.tv_nsec = end % 1000000000LL;
            S.idle++;
            int r = pthread_cond_timedwait(&S.cond, &S.mu, &ts);
            S.idle--;
            if (r == ETIMEDOUT && !S.head) {
                S.workers--;
                pthread_mutex_unlock(&S.mu);
                return NULL;
            }
        }
        struct task *t = S.head;
        S.head = t->next;
        if (!S.head)
            S.tail = NULL;
        S.queued--;
        pthread_mutex_unlock(&S.mu);
        task_run(t);
        pthread_mutex_lock(&S.mu);
        if (S.workers > max_workers_locked()) {     /* the limit was lowered */
            S.workers--;
            pthread_mutex_unlock(&S.mu);
            return NULL;
        }
    }
}

/* Under S.mu: start one worker.  Returns 0 or -errno. */
static int worker_start_locked(void)
{
    pthread_attr_t a;
    if (pthread_attr_init(&a) != 0)
        return -ENOMEM;
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);   /* the worker inherits it */
    pthread_t tid;
    int e = pthread_create(&tid, &a, worker_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&a);
    if (e)
        return -e;
    S.workers++;
    return 0;
}

/* Queues t (one reference for the worker).  Returns 0 or -EAGAIN when no
 * worker exists and none can be started. */
static int submit(struct task *t)
{
    pthread_mutex_lock(&S.mu);
    t->next = NULL;
    if (S.tail)
        S.tail->next = t;
    else
        S.head = t;
    S.tail = t;
    S.queued++;
    if (S.queued > S.idle && S.workers < max_workers_locked()) {
        int e = worker_start_locked();
        if (e && S.workers == 0) {
            /* Nobody could ever run it: take it back. */
            struct task **pp = &S.head, *prev = NULL;
            while (*pp != t) {
                prev = *pp;
                pp = &(*pp)->next;
            }
            *pp = NULL;
            S.tail = prev;
            S.queued--;
            pthread_mutex_unlock(&S.mu);
            return e == -ENOMEM ? -ENOMEM : -EAGAIN;
        }
    }
    if (S.idle)
        pthread_cond_signal(&S.cond);
    pthread_mutex_unlock(&S.mu);
    return 0;
}

int conc_offload_opts_until(conc_offload_fn fn, void *arg, void **result, int64_t deadline,
                            const conc_offload_opts *opts)
{
    if (!fn)
        return -EINVAL;
    conc_offload_opts o;
    CONC__OPTS_COPY(&o, opts, CONC__OPTS_V1(conc_offload_opts, abandon));
    pthread_once(&atfork_once, atfork_register);
    struct task *t = calloc(1, sizeof *t);
    if (!t)
        return -ENOMEM;
    t->fn = fn;
    t->arg = arg;
    t->abandon = o.abandon;
    t->state = T_PENDING;
    t->refs = 2;
    int rc = submit(t);
    if (rc) {
        free(t);
        return rc;
    }
    for (;;) {
        if (__atomic_load_n(&t->state, __ATOMIC_ACQUIRE) == T_DONE) {
            rc = 0;
            break;
        }
        int r = conc__wait(&t->state, T_PENDING, deadline, 0);
        if (r == -ETIMEDOUT || r == -ECANCELED || r == -EDEADLK) {
            uint32_t expect = T_PENDING;
            if (__atomic_compare_exchange_n(&t->state, &expect, T_ABANDONED, false,
                                            __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
                task_unref(t);
                return r;
            }
            rc = 0;             /* it finished meanwhile: the result wins */
            break;
        }
    }
    if (result)
        *result = t->result;
    task_unref(t);
    return rc;
}

int conc_offload_until(conc_offload_fn fn, void *arg, void **result, int64_t deadline)
{
    return conc_offload_opts_until(fn, arg, result, deadline, NULL);
}

int conc_offload(conc_offload_fn fn, void *arg, void **result, double timeout)
{
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return (int)conc__timeout_code(poll, conc_offload_opts_until(fn, arg, result, deadline,
                                                                 NULL));
}

long conc_offload_max_workers(void)
{
    pthread_mutex_lock(&S.mu);
    long n = (long)max_workers_locked();
    pthread_mutex_unlock(&S.mu);
    return n;
}

int conc_offload_set_max_workers(long n)
{
    if (n <= 0)
        return -EINVAL;
    pthread_mutex_lock(&S.mu);
    S.max_workers = (size_t)n;
    if (S.idle)
        pthread_cond_broadcast(&S.cond);    /* let extra idle workers go */
    pthread_mutex_unlock(&S.mu);
    return 0;
}

double conc_offload_idle_timeout(void)
{
    pthread_mutex_lock(&S.mu);
    double seconds = (double)S.idle_ns / 1e9;
    pthread_mutex_unlock(&S.mu);
    return seconds;
}

int conc_offload_set_idle_timeout(double seconds)
{
    if (!(seconds >= 0))                        /* negative or NaN */
        return -EINVAL;
    pthread_mutex_lock(&S.mu);
    S.idle_ns = seconds >= 1e9 ? (int64_t)1e18 : (int64_t)(seconds * 1e9);
    if (S.idle)
        pthread_cond_broadcast(&S.cond);        /* re-arm with the new time */
    pthread_mutex_unlock(&S.mu);
    return 0;
}

int conc_offload_get_stats(conc_offload_stats *out)
{
    if (!out)
        return -EINVAL;
    pthread_mutex_lock(&S.mu);
    out->workers = S.workers;
    out->idle = S.idle;
    out->queued = S.queued;
    out->max_workers = max_workers_locked();
    pthread_mutex_unlock(&S.mu);
    return 0;
}
