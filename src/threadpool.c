/*
 * threadpool.c - the thread pool's engine: worker threads taking tasks
 * from one queue.  Results, map and imap are pool_result.c's.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include "conc/pool.h"
#include "conc/process.h"
#include "pool_internal.h"
#include "sys/wait.h"

struct conc_threadpool {
    struct conc__pool_engine e;
    conc_threadpool_opts o;
    pthread_mutex_t mu;
    struct conc__pool_queue q;                 /* under mu */
    bool closed;                               /* under mu */
    unsigned sleepers;                         /* under mu */
    uint32_t qword;             /* futex word: bumped under mu on news */
    pthread_t *threads;
    int n;
};

struct conc__pool_engine *conc__threadpool_engine(conc_threadpool *p)
{
    return p ? &p->e : NULL;
}

int conc_threadpool_threads(const conc_threadpool *p)
{
    return p ? p->e.workers : 0;
}

int conc__pool_task_prepare_ptr(struct conc__pool_task *t, conc_threadpool_fn fn,
                                const conc_pool_item *items, size_t n)
{
    if (!t || !fn || !items || n == 0 || n > CONC__POOL_CHUNK_MAX)
        return -EINVAL;
    /* The arguments, then room for the outcomes. */
    size_t sz = n * (sizeof(void *) + sizeof(struct conc__pool_outcome));
    unsigned char *b = malloc(sz);
    if (!b)
        return -ENOMEM;
    void **args = (void **)b;
    for (size_t i = 0; i < n; i++)
        args[i] = (void *)items[i].arg;
    conc__pool_task_init(t, (void *)fn, b, sz, (uint32_t)n);
    return 0;
}

static int tp_submit(struct conc__pool_engine *e, struct conc__pool_task *t)
{
    conc_threadpool *p = (conc_threadpool *)e;
    if (!t || !t->buf || !t->done)
        return -EINVAL;
    pthread_mutex_lock(&p->mu);
    /* The state under mu: a cancel may come before the submit. */
    int r = conc__pool_admit(t, p->closed);
    if (r) {
        pthread_mutex_unlock(&p->mu);
        return r;
    }
    conc__pool_q_push_back(&p->q, t);
    st_relaxed(&t->state, CONC__TASK_QUEUED);
    bool wake = p->sleepers > 0;
    if (wake)
        __atomic_add_fetch(&p->qword, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&p->mu);
    if (wake)
        conc__wake(&p->qword, 1, 0);
    return 0;
}

static int tp_cancel(struct conc__pool_engine *e, struct conc__pool_task *t)
{
    conc_threadpool *p = (conc_threadpool *)e;
    pthread_mutex_lock(&p->mu);
    int r = conc__pool_take_back(&p->q, t);
    pthread_mutex_unlock(&p->mu);
    return r;
}

static void run_task(struct conc__pool_task *t)
{
    void **args = (void **)t->buf;
    struct conc__pool_outcome *o =
        (struct conc__pool_outcome *)(t->buf + t->nitems * sizeof(void *));
    conc_threadpool_fn fn = (conc_threadpool_fn)t->fn;
    for (uint32_t i = 0; i < t->nitems; i++) {
        void *res = NULL;
        int st = fn(args[i], &res);
        if (st > 0)
            st = -EPROTO;
        o[i] = (struct conc__pool_outcome){ st, 0, st ? NULL : res, 0 };
    }
    st_release(&t->state, CONC__TASK_DONE);
    t->done(t, o, t->nitems);
}

static void *tp_worker(void *arg)
{
    conc_threadpool *p = arg;
    conc__pool_cb_engine = &p->e;
    if (p->o.initializer)
        p->o.initializer(p->o.initarg);
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->q.head && !p->closed) {
            uint32_t w = __atomic_load_n(&p->qword, __ATOMIC_ACQUIRE);
            p->sleepers++;
            pthread_mutex_unlock(&p->mu);
            conc__wait(&p->qword, w, CONC_NO_DEADLINE, 0);
            pthread_mutex_lock(&p->mu);
            p->sleepers--;
        }
        struct conc__pool_task *t = p->q.head;
        if (!t)
            break;
        conc__pool_q_unlink(&p->q, t);
        st_relaxed(&t->state, CONC__TASK_SENT);
        pthread_mutex_unlock(&p->mu);
        if (t->started)
            t->started(t);
        run_task(t);
        pthread_mutex_lock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    conc__pool_live_add(&p->e, -1);
    return NULL;
}

/* Close: the workers run the queue out and end; terminate: the queue
 * fails with -EPIPE, and each worker ends after the task it runs. */
static void tp_stop(struct conc__pool_engine *e, bool terminate)
{
    conc_threadpool *p = (conc_threadpool *)e;
    pthread_mutex_lock(&p->mu);
    p->closed = true;
    struct conc__pool_task *q = NULL;
    if (terminate) {
        q = conc__pool_q_take_all(&p->q);
    }
    __atomic_add_fetch(&p->qword, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&p->mu);
    conc__wake(&p->qword, INT_MAX, 0);
    for (struct conc__pool_task *t = q, *nx; t; t = nx) {
        nx = t->next;
        t->next = t->prev = NULL;
        struct conc__pool_outcome one = { -EPIPE, CONC__POOL_TERMINATED, NULL, 0 };
        st_release(&t->state, CONC__TASK_DONE);
        t->done(t, &one, 1);
    }
}

int conc_threadpool_new(conc_threadpool **out, const conc_threadpool_opts *opts)
{
    conc_threadpool_opts o;
    CONC__OPTS_COPY(&o, opts, sizeof(conc_threadpool_opts));
    if (!out || o.threads < 0 || o.threads > CONC_POOL_MAX_WORKERS)
        return -EINVAL;
    if (o.threads == 0)
        o.threads = conc_process_cpu_count();
    if (o.threads > CONC_POOL_MAX_WORKERS)
        o.threads = CONC_POOL_MAX_WORKERS;
    conc_threadpool *p = calloc(1, sizeof *p);
    if (!p)
        return -ENOMEM;
    p->threads = calloc((size_t)o.threads, sizeof *p->threads);
    if (!p->threads) {
        free(p);
        return -ENOMEM;
    }
    pthread_mutex_init(&p->mu, NULL);
    p->o = o;
    p->e.submit = tp_submit;
    p->e.cancel = tp_cancel;
    p->e.stop = tp_stop;
    p->e.workers = o.threads;
    p->e.process = false;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int err = 0;
    for (int i = 0; i < o.threads; i++) {
        conc__pool_live_add(&p->e, 1);
        int e = pthread_create(&p->threads[i], NULL, tp_worker, p);
        if (e) {
            conc__pool_live_add(&p->e, -1);
            err = -e;
            break;
        }
        p->n++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err) {
        conc_threadpool_free(p);
        return err == -EPERM ? -EAGAIN : err;
    }
    *out = p;
    return 0;
}

void conc_threadpool_free(conc_threadpool *p)
{
    if (!p)
        return;
    conc__pool_end(&p->e);
    for (int i = 0; i < p->n; i++)
        pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    free(p->threads);
    free(p);
}
