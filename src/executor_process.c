/*
 * executor_process.c - concurrent.futures.ProcessPoolExecutor on the
 * process Pool's task engine (conc/executor.h, src/pool_internal.h).
 *
 * Each call is a `struct ptask`: the engine's task, embedded, and the
 * call's future.  The engine reports the task done (the future gets the bytes, the
 * call's code, or -ECHILD with the dead worker's exit code).
 *
 * A ptask has two references: the engine's (dropped after done, or when the
 * engine gave the task back) and the future callback's (dropped when that
 * callback has run); submit holds a third until it returns.
 *
 * The future stays PENDING while the task waits in the queue or at a
 * worker that holds it ahead; it is RUNNING once the worker began it (the
 * worker takes the task's gate, which the future's state queries look at:
 * probe).
 * A cancel until then asks the engine first (veto), so a cancelled call
 * never runs and a call that began is never reported cancelled.  The last one releases the task, the executor's
 * reference to the future and the outstanding count that join waits on.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>

#include "conc/pool.h"
#include "executor.h"
#include "future.h"
#include "pool_internal.h"
#include "sys/wait.h"

struct ptask {
    struct conc__pool_task t;
    conc_future *f;
    struct conc__executor_proc *pe;
    struct ptask *prev, *next;          /* the outstanding list */
    uint32_t refs;
    bool taken_back;                    /* cancelled with no done to come */
};

struct conc__executor_proc {
    conc_pool *pool;
    struct conc__pool_engine *eng;
    pthread_mutex_t mu;
    struct ptask *list;                 /* calls not over */
    uint32_t outstanding;               /* futex word: how many */
};

static void ptask_unref(struct ptask *pt, uint32_t n)
{
    if (__atomic_sub_fetch(&pt->refs, n, __ATOMIC_ACQ_REL) != 0)
        return;
    struct conc__executor_proc *pe = pt->pe;
    pthread_mutex_lock(&pe->mu);
    if (pt->prev)
        pt->prev->next = pt->next;
    else
        pe->list = pt->next;
    if (pt->next)
        pt->next->prev = pt->prev;
    bool last = __atomic_sub_fetch(&pe->outstanding, 1, __ATOMIC_RELEASE) == 0;
    pthread_mutex_unlock(&pe->mu);
    conc__pool_task_release(&pt->t);
    conc_future_free(pt->f);
    free(pt);
    if (last)
        conc__wake(&pe->outstanding, INT_MAX, 0);
}

static void on_started(struct conc__pool_task *t)
{
    struct ptask *pt = t->ctx;
    conc_future_set_running(pt->f);     /* -ECANCELED: the result is dropped */
}

static void on_done(struct conc__pool_task *t, const struct conc__pool_outcome *items, uint32_t n)
{
    struct ptask *pt = t->ctx;
    if (n < 1)
        conc_future_set_exception(pt->f, -EPROTO, 0);
    else if (items[0].status == 0) {
        /* No memory for the copy: the future must still finish. */
        if (conc_future_set_result_bytes(pt->f, items[0].data, items[0].len) == -ENOMEM)
            conc_future_set_exception(pt->f, -ENOMEM, 0);
    } else
        conc_future_set_exception(pt->f, items[0].status,
                                  items[0].status == -ECHILD ? items[0].exitcode : 0);
    ptask_unref(pt, 1);
}

/* A cancel of the future asks the engine first (under the future's lock):
 * a task no worker began is taken back (no done will come) or skipped by
 * the worker that holds it (done comes with -ECANCELED); one that began
 * stays, and the future turns RUNNING. */
static int veto(void *arg)
{
    struct ptask *pt = arg;
    int r = conc__pool_cancel(pt->pe->eng, &pt->t);
    if (r == 0)
        pt->taken_back = true;
    return r < 0 ? r : 0;
}

/* Whether a worker began the call (asked by the future's state queries:
 * the worker does not tell). */
static bool probe(void *arg)
{
    struct ptask *pt = arg;
    return conc__pool_begun(pt->pe->eng, &pt->t);
}

/* The future is done: when the engine gave the task back, done will never
 * come, and its reference is ours. */
static void on_future_done(conc_future *f, void *arg)
{
    struct ptask *pt = arg;
    ptask_unref(pt, conc_future_cancelled(f) && pt->taken_back ? 2 : 1);
}

int conc__executor_proc_new(conc_executor *ex, const conc_executor_opts *o)
{
    struct conc__executor_proc *pe = calloc(1, sizeof *pe);
    if (!pe)
        return -ENOMEM;
    if (pthread_mutex_init(&pe->mu, NULL) != 0) {
        free(pe);
        return -ENOMEM;
    }
    conc_pool_opts po = CONC_POOL_OPTS_INIT;
    po.processes = ex->max_workers;
    po.method = o->method;
    po.initializer = o->initializer;
    po.initarg = o->initarg;
    po.initarg_len = o->initarg_len;
    po.maxtasksperchild = o->max_tasks_per_child;
    int r = conc_pool_new(&pe->pool, &po);
    if (r) {
        pthread_mutex_destroy(&pe->mu);
        free(pe);
        return r;
    }
    pe->eng = conc__pool_engine(pe->pool);
    /* The pool copied the bytes; the executor does not need them. */
    ex->initarg = NULL;
    ex->initarg_len = 0;
    ex->proc = pe;
    return 0;
}

int conc__executor_proc_submit(conc_executor *ex, conc_executor_bytes_fn fn, const void *arg,
                               size_t len, conc_future **out)
{
    struct conc__executor_proc *pe = ex->proc;
    if (ld_acquire(&ex->shutdown))
        return -EPIPE;
    struct ptask *pt = calloc(1, sizeof *pt);
    if (!pt)
        return -ENOMEM;
    conc_pool_item item = { arg, len };
    int r = conc__pool_task_prepare(&pt->t, (conc_pool_fn)fn, &item, 1);
    if (r) {
        free(pt);
        return r;
    }
    conc_future *f;
    r = conc__executor_future(ex, &f);
    if (r) {
        conc__pool_task_release(&pt->t);
        free(pt);
        return r;
    }
    pt->f = f;
    pt->pe = pe;
    pt->refs = 3;               /* the engine's, the future callback's, ours */
    pt->t.done = on_done;
    pt->t.started = on_started;
    pt->t.ctx = pt;
    f->p_veto = veto;
    f->p_probe = probe;
    f->p_hook_arg = pt;
    r = conc_future_add_done_callback(f, on_future_done, pt);
    if (r == 0) {
        pthread_mutex_lock(&pe->mu);
        pt->next = pe->list;
        if (pe->list)
            pe->list->prev = pt;
        pe->list = pt;
        __atomic_add_fetch(&pe->outstanding, 1, __ATOMIC_RELAXED);
        pthread_mutex_unlock(&pe->mu);
        r = conc__pool_submit(pe->eng, &pt->t);
        /* -ECANCELED: a shutdown(cancel_futures) cancelled the future
         * between the listing and the submit (the engine refused it). */
        if (r == 0 || r == -ECANCELED) {
            ptask_unref(pt, 1);
            *out = f;
            return 0;
        }
        /* Not queued: finish the future (its callback drops one reference)
         * and drop the engine's. */
        conc_future_ref(f);
        conc_future_set_exception(f, r, 0);
        ptask_unref(pt, 2);
        /* The caller gets the error, not the future. */
        conc_future_free(f);
        conc_future_free(f);
        return r;
    }
    conc__pool_task_release(&pt->t);
    free(pt);
    conc_future_free(f);
    conc_future_free(f);
    return r;
}

void conc__executor_proc_shutdown(conc_executor *ex, bool cancel_futures)
{
    struct conc__executor_proc *pe = ex->proc;
    if (cancel_futures) {
        /* Collect the calls under the lock, cancel outside it (cancelling
         * runs callbacks that take it). */
        pthread_mutex_lock(&pe->mu);
        size_t n = ld_relaxed(&pe->outstanding), k = 0;
        conc_future **fs = n ? malloc(n * sizeof *fs) : NULL;
        for (struct ptask *pt = pe->list; fs && pt && k < n; pt = pt->next)
            fs[k++] = conc_future_ref(pt->f);
        pthread_mutex_unlock(&pe->mu);
        for (size_t i = 0; i < k; i++) {
            conc_future_cancel(fs[i]);
            conc_future_free(fs[i]);
        }
        free(fs);
    }
    conc_pool_close(pe->pool);
}

int conc__executor_proc_join_until(conc_executor *ex, int64_t deadline)
{
    struct conc__executor_proc *pe = ex->proc;
    for (;;) {
        uint32_t n = ld_acquire(&pe->outstanding);
        if (n == 0)
            break;
        int r = conc__wait(&pe->outstanding, n, deadline, 0);
        if ((r == -ETIMEDOUT || r == -ECANCELED) && ld_acquire(&pe->outstanding) != 0)
            return r;
    }
    return conc_pool_join_until(pe->pool, deadline);
}

bool conc__executor_proc_in_callback(conc_executor *ex)
{
    return conc__pool_in_callback(ex->proc->eng);
}

void conc__executor_proc_free(conc_executor *ex)
{
    struct conc__executor_proc *pe = ex->proc;
    conc_pool_free(pe->pool);
    pthread_mutex_destroy(&pe->mu);
    free(pe);
    ex->proc = NULL;
}
