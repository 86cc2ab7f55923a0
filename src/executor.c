/*
 * executor.c - concurrent.futures.ThreadPoolExecutor and the parts every
 * executor shares: submit, shutdown, join, free, map (conc/executor.h).
 *
 * A thread executor queues its calls as futures (linked through the
 * producer fields of struct conc_future, so a submit allocates the future
 * and, for bytes, their copy, and nothing else).  A submit pushes its call
 * onto the inbox with one compare-and-swap and takes no lock once every
 * worker is started; a worker, under the executor's mutex, moves the inbox
 * whole to the end of the queue, oldest first, and takes the oldest call
 * (submitters and workers never wait for each other's lock; only the
 * workers share it).  Idle workers spin on the inbox for a while, then
 * sleep on a futex word (`work`) that a submit bumps only when one sleeps
 * there, and shutdown always.  They are started by submit when more calls
 * are queued than workers are idle, up to max_workers, as Python's
 * _adjust_thread_count does.  A worker takes the oldest call, moves its
 * future to RUNNING (a cancelled one is skipped), runs it and finishes the
 * future, whose callbacks then run on the worker.
 *
 * The workers end once the executor is shut down and the queue is empty;
 * the last one to leave bumps `alive` to zero and wakes joiners, which wait
 * on that word through the wait layer (a coroutine parks).  free joins the
 * threads, so nothing touches the executor after it is gone.
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "conc/executor.h"
#include "conc/process.h"
#include "executor.h"
#include "future.h"
#include "internal.h"
#include "sys/park.h"
#include "sys/wait.h"

/* The executor whose worker runs on this thread (NULL elsewhere). */
static __thread conc_executor *worker_of;

int conc__executor_future(conc_executor *ex, conc_future **out)
{
    conc_future_opts fo = CONC_FUTURE_OPTS_INIT;
    fo.drop = ex->drop;
    fo.drop_arg = ex->drop_arg;
    int r = conc_future_new(out, &fo);
    if (r == 0)
        conc_future_ref(*out);
    return r;
}

/* A call's return value as a future's exception code. */
static int call_error(int r)
{
    return r < 0 ? r : -EPROTO;
}

static void run_call(conc_future *f)
{
    if (conc_future_set_running(f) == 0) {
        if (f->p_kind == EX_CALL_PTR) {
            void *res = NULL;
            int r = ((conc_executor_fn)f->p_fn)(f->p_arg, &res);
            if (r)
                conc_future_set_exception(f, call_error(r), 0);
            else
                conc_future_set_result(f, res);
        } else {
            void *res = NULL;
            size_t len = 0;
            int r = ((conc_executor_bytes_fn)f->p_fn)(f->p_len ? f->p_arg : NULL, f->p_len,
                                                      &res, &len);
            if (r) {
                free(res);
                conc_future_set_exception(f, call_error(r), 0);
            } else if (conc_future_set_result_owned(f, res, res ? len : 0) != 0) {
                free(res);
            }
        }
    }
    if (f->p_kind == EX_CALL_BYTES)
        free(f->p_arg);
    f->p_arg = NULL;
    conc_future_free(f);
}

#define INBOX_CLOSED ((uintptr_t)1)

/* Moves the calls of the inbox to the end of the queue, oldest first (ex
 * locked); the closed bit stays. */
static void take_inbox(conc_executor *ex)
{
    uintptr_t v = __atomic_load_n(&ex->inbox, __ATOMIC_RELAXED);
    while ((v & ~INBOX_CLOSED) &&
           !__atomic_compare_exchange_n(&ex->inbox, &v, v & INBOX_CLOSED, true,
                                        __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
        ;
    conc_future *in = (conc_future *)(v & ~INBOX_CLOSED), *order = NULL;
    if (!in)
        return;
    conc_future *newest = in;
    while (in) {
        conc_future *next = in->p_next;
        in->p_next = order;
        order = in;
        in = next;
        ex->queued++;
    }
    if (ex->tail)
        ex->tail->p_next = order;
    else
        ex->head = order;
    ex->tail = newest;
}

/* Closes the inbox (ex locked): every later submit fails.  A push that
 * got in first is in the inbox, which the workers still take. */
static void close_inbox(conc_executor *ex)
{
    __atomic_fetch_or(&ex->inbox, INBOX_CLOSED, __ATOMIC_SEQ_CST);
}

/* Takes every queued call (ex locked): the futures go to the list
 * returned. */
static conc_future *take_queue(conc_executor *ex)
{
    take_inbox(ex);
    conc_future *list = ex->head;
    ex->head = ex->tail = NULL;
    ex->queued = 0;
    return list;
}

/* Spins, then sleeps, until the inbox is no longer empty and open, or the
 * word moves from seen (read under mu, with the queue found empty). */
static void wait_inbox(conc_executor *ex, uint32_t seen)
{
    struct conc__spin s;
    if (conc__spin_begin(&s, CONC_NO_DEADLINE))
        while (conc__spin_step(&s, 1))
            if (__atomic_load_n(&ex->inbox, __ATOMIC_ACQUIRE) != 0 ||
                __atomic_load_n(&ex->work, __ATOMIC_ACQUIRE) != seen)
                return;
    /* The count before the look: a submit pushes, then reads the count,
     * and bumps the word when it is not 0. */
    __atomic_fetch_add(&ex->sleepers, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&ex->inbox, __ATOMIC_SEQ_CST) == 0)
        conc__wait(&ex->work, seen, CONC_NO_DEADLINE, 0);
    __atomic_fetch_sub(&ex->sleepers, 1, __ATOMIC_SEQ_CST);
}

/* Tells an idle worker that calls are left on the queue (ex locked): the
 * others wait for the inbox and the word, not for the queue. */
static void pass_on(conc_executor *ex)
{
    __atomic_fetch_add(&ex->work, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&ex->sleepers, __ATOMIC_SEQ_CST) > 0)
        conc__wake(&ex->work, 1, 0);
}

/* Finishes (cancel, or fail with err) and releases the calls of a list
 * taken from the queue. */
static void drop_calls(conc_future *list, int err)
{
    while (list) {
        conc_future *f = list;
        list = f->p_next;
        f->p_next = NULL;
        if (err)
            conc_future_set_exception(f, err, 0);
        else
            conc_future_cancel(f);
        if (f->p_kind == EX_CALL_BYTES)
            free(f->p_arg);
        f->p_arg = NULL;
        conc_future_free(f);
    }
}

static void *worker_main(void *arg)
{
    conc_executor *ex = arg;
    worker_of = ex;
    if (ex->init && ex->init(ex->initarg, ex->initarg_len) != 0) {
        /* BrokenThreadPool: what is queued fails, later submits fail. */
        pthread_mutex_lock(&ex->mu);
        close_inbox(ex);
        conc_future *list = take_queue(ex);
        pthread_mutex_unlock(&ex->mu);
        drop_calls(list, -EPIPE);
        pthread_mutex_lock(&ex->mu);
        ex->idle--;
        goto out;
    }
    pthread_mutex_lock(&ex->mu);
    for (;;) {
        uint32_t seen = __atomic_load_n(&ex->work, __ATOMIC_SEQ_CST);
        if (!ex->head)
            take_inbox(ex);
        conc_future *f = ex->head;
        if (f) {
            ex->head = f->p_next;
            if (!ex->head)
                ex->tail = NULL;
            ex->queued--;
            ex->idle--;
            if (ex->head && ex->idle > 0)
                pass_on(ex);
            pthread_mutex_unlock(&ex->mu);
            f->p_next = NULL;
            run_call(f);
            pthread_mutex_lock(&ex->mu);
            ex->idle++;
            continue;
        }
        /* Closed and empty: no submit can push any more. */
        uintptr_t in = __atomic_load_n(&ex->inbox, __ATOMIC_ACQUIRE);
        if (in == INBOX_CLOSED)
            break;
        if (in != 0)
            continue;
        pthread_mutex_unlock(&ex->mu);
        /* A burst of submits is caught by spinning a little; only a
         * worker that really sleeps costs its submitter a system call. */
        wait_inbox(ex, seen);
        pthread_mutex_lock(&ex->mu);
    }
    ex->idle--;
out:;
    /* The last one out wakes the joiners; free joins the threads, so the
     * wake-up after the unlock still finds the executor. */
    bool last = __atomic_sub_fetch(&ex->alive, 1, __ATOMIC_RELEASE) == 0;
    pthread_mutex_unlock(&ex->mu);
    if (last)
        conc__wake(&ex->alive, INT_MAX, 0);
    worker_of = NULL;
    return NULL;
}

/* Starts one more worker (ex locked).  0, or -errno. */
static int start_worker(conc_executor *ex)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    ex->idle++;
    __atomic_fetch_add(&ex->alive, 1, __ATOMIC_RELAXED);
    int r = pthread_create(&ex->threads[ex->nthreads], NULL, worker_main, ex);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (r) {
        ex->idle--;
        __atomic_fetch_sub(&ex->alive, 1, __ATOMIC_RELAXED);
        return -r;
    }
    __atomic_store_n(&ex->nthreads, ex->nthreads + 1, __ATOMIC_RELEASE);
    return 0;
}

/* Pushes f onto the inbox.  0, or -EPIPE when it is closed. */
static int push(conc_executor *ex, conc_future *f)
{
    uintptr_t v = __atomic_load_n(&ex->inbox, __ATOMIC_RELAXED);
    do {
        if (v & INBOX_CLOSED)
            return -EPIPE;
        f->p_next = (conc_future *)v;
    } while (!__atomic_compare_exchange_n(&ex->inbox, &v, (uintptr_t)f, true, __ATOMIC_SEQ_CST,
                                          __ATOMIC_RELAXED));
    return 0;
}

/* The number of calls in the inbox (ex locked: nobody takes any, and
 * pushes only add in front of those counted).  Workers leave the inbox as
 * it is until they take it whole: they wait for it, not for the queue. */
static size_t inbox_len(conc_executor *ex)
{
    size_t n = 0;
    uintptr_t v = __atomic_load_n(&ex->inbox, __ATOMIC_ACQUIRE) & ~INBOX_CLOSED;
    for (conc_future *f = (conc_future *)v; f; f = f->p_next)
        n++;
    return n;
}

/* Takes f, which nobody can run, off the queue (ex locked). */
static void unlink_call(conc_executor *ex, conc_future *f)
{
    conc_future **at = &ex->head, *prev = NULL;
    while (*at && *at != f) {
        prev = *at;
        at = &(*at)->p_next;
    }
    if (!*at)
        return;
    *at = f->p_next;
    if (ex->tail == f)
        ex->tail = prev;
    ex->queued--;
    f->p_next = NULL;
}

/* Queues f (its p_ fields set).  0, or -EPIPE, -ENOMEM, -EAGAIN.
 *
 * While fewer than max_workers run, the push and the start of a worker
 * happen under the mutex, as shutdown's closing does: a shutdown then sees
 * the call and the worker that will run it, or refuses the call.  A worker
 * starts when more calls are queued than workers are idle.  Once every
 * worker runs, a submit only pushes (no lock), and wakes a worker only when
 * one sleeps. */
static int enqueue(conc_executor *ex, conc_future *f)
{
    int r;
    if (__atomic_load_n(&ex->nthreads, __ATOMIC_ACQUIRE) < (size_t)ex->max_workers) {
        pthread_mutex_lock(&ex->mu);
        r = push(ex, f);
        if (r == 0 && ex->nthreads < (size_t)ex->max_workers &&
            ex->queued + inbox_len(ex) > ex->idle && (r = start_worker(ex)) != 0) {
            if (ex->nthreads == 0) {
                /* Nobody could ever run it: take it back. */
                take_inbox(ex);
                unlink_call(ex, f);
                r = r == -ENOMEM ? r : -EAGAIN;
            } else {
                r = 0;
            }
        }
        pthread_mutex_unlock(&ex->mu);
    } else {
        r = push(ex, f);
    }
    /* After the push, the count (wait_inbox). */
    if (r == 0 && __atomic_load_n(&ex->sleepers, __ATOMIC_SEQ_CST) > 0) {
        __atomic_fetch_add(&ex->work, 1, __ATOMIC_SEQ_CST);
        conc__wake(&ex->work, 1, 0);
    }
    return r;
}

int conc_executor_new(conc_executor **out, const conc_executor_opts *opts)
{
    conc_executor_opts o;
    CONC__OPTS_COPY(&o, opts, CONC__OPTS_V1(conc_executor_opts, max_tasks_per_child));
    if (!out || (o.kind != CONC_EXECUTOR_THREADS && o.kind != CONC_EXECUTOR_PROCESSES) ||
        o.max_workers < 0 || o.max_workers > CONC_EXECUTOR_MAX_WORKERS ||
        (!o.initarg && o.initarg_len))
        return -EINVAL;
    conc_executor *ex;          /* its inbox starts a cache line of its own */
    if (posix_memalign((void **)&ex, _Alignof(conc_executor), sizeof *ex))
        return -ENOMEM;
    memset(ex, 0, sizeof *ex);
    ex->kind = o.kind;
    ex->init = o.initializer;
    ex->initarg = o.initarg;
    ex->initarg_len = o.initarg_len;
    ex->drop = o.drop;
    ex->drop_arg = o.drop_arg;
    if (pthread_mutex_init(&ex->mu, NULL) != 0) {
        free(ex);
        return -ENOMEM;
    }
    int r = 0;
    if (o.kind == CONC_EXECUTOR_THREADS) {
        int cpus = conc_process_cpu_count();
        ex->max_workers = o.max_workers ? o.max_workers : (cpus + 4 < 32 ? cpus + 4 : 32);
        ex->threads = calloc((size_t)ex->max_workers, sizeof *ex->threads);
        if (!ex->threads)
            r = -ENOMEM;
    } else {
        ex->max_workers = o.max_workers ? o.max_workers : conc_process_cpu_count();
        r = conc__executor_proc_new(ex, &o);
    }
    if (r) {
        pthread_mutex_destroy(&ex->mu);
        free(ex->threads);
        free(ex);
        return r;
    }
    *out = ex;
    return 0;
}

int conc_executor_max_workers(const conc_executor *ex)
{
    return ex ? ex->max_workers : 0;
}

conc_executor_kind conc_executor_kind_of(const conc_executor *ex)
{
    return ex ? ex->kind : CONC_EXECUTOR_THREADS;
}

int conc_executor_submit(conc_executor *ex, conc_executor_fn fn, void *arg, conc_future **out)
{
    if (!ex || !fn || !out || ex->kind != CONC_EXECUTOR_THREADS)
        return -EINVAL;
    conc_future *f;
    int r = conc__executor_future(ex, &f);
    if (r)
        return r;
    f->p_fn = (void (*)(void))fn;
    f->p_arg = arg;
    f->p_kind = EX_CALL_PTR;
    r = enqueue(ex, f);
    if (r) {
        conc_future_free(f);
        conc_future_free(f);
        return r;
    }
    *out = f;
    return 0;
}

int conc_executor_submit_bytes(conc_executor *ex, conc_executor_bytes_fn fn, const void *arg,
                               size_t len, conc_future **out)
{
    if (!ex || !fn || !out || (!arg && len))
        return -EINVAL;
    if (ex->kind == CONC_EXECUTOR_PROCESSES)
        return conc__executor_proc_submit(ex, fn, arg, len, out);
    void *copy = NULL;
    if (len) {
        copy = malloc(len);
        if (!copy)
            return -ENOMEM;
        memcpy(copy, arg, len);
    }
    conc_future *f;
    int r = conc__executor_future(ex, &f);
    if (r) {
        free(copy);
        return r;
    }
    f->p_fn = (void (*)(void))fn;
    f->p_arg = copy;
    f->p_len = len;
    f->p_kind = EX_CALL_BYTES;
    r = enqueue(ex, f);
    if (r) {
        free(copy);
        conc_future_free(f);
        conc_future_free(f);
        return r;
    }
    *out = f;
    return 0;
}

/* True when the caller is one of ex's workers or callbacks. */
static bool inside(conc_executor *ex)
{
    if (ex->kind == CONC_EXECUTOR_PROCESSES)
        return conc__executor_proc_in_callback(ex);
    return worker_of == ex;
}

int conc_executor_join_until(conc_executor *ex, int64_t deadline)
{
    if (!ex)
        return -EINVAL;
    if (!ld_acquire(&ex->shutdown))
        return -EBUSY;
    if (inside(ex))
        return -EDEADLK;
    if (ex->kind == CONC_EXECUTOR_PROCESSES)
        return conc__executor_proc_join_until(ex, deadline);
    for (;;) {
        uint32_t a = ld_acquire(&ex->alive);
        if (a == 0)
            return 0;
        int r = conc__wait(&ex->alive, a, deadline, 0);
        if (r == -ETIMEDOUT || r == -ECANCELED)
            return ld_acquire(&ex->alive) == 0 ? 0 : r;
    }
}

int conc_executor_join(conc_executor *ex, double timeout)
{
    int64_t deadline;
    bool poll;
    if (!ex || conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return (int)conc__timeout_code(poll, conc_executor_join_until(ex, deadline));
}

int conc_executor_shutdown(conc_executor *ex, bool wait, bool cancel_futures)
{
    if (!ex)
        return -EINVAL;
    if (ex->kind == CONC_EXECUTOR_PROCESSES) {
        pthread_mutex_lock(&ex->mu);
        st_release(&ex->shutdown, true);
        pthread_mutex_unlock(&ex->mu);
        conc__executor_proc_shutdown(ex, cancel_futures);
    } else {
        pthread_mutex_lock(&ex->mu);
        st_release(&ex->shutdown, true);
        close_inbox(ex);
        conc_future *list = cancel_futures ? take_queue(ex) : NULL;
        __atomic_fetch_add(&ex->work, 1, __ATOMIC_RELEASE);
        pthread_mutex_unlock(&ex->mu);
        conc__wake(&ex->work, INT_MAX, 0);
        drop_calls(list, 0);
    }
    return wait ? conc_executor_join_until(ex, CONC_NO_DEADLINE) : 0;
}

int conc_executor_free(conc_executor *ex)
{
    if (!ex)
        return 0;
    if (inside(ex)) {
        conc_executor_shutdown(ex, false, false);
        return -EBUSY;
    }
    int r;
    do
        r = conc_executor_shutdown(ex, true, false);
    while (r == -ECANCELED);    /* a killed coroutine still frees */
    if (ex->kind == CONC_EXECUTOR_PROCESSES) {
        conc__executor_proc_free(ex);
    } else {
        for (size_t i = 0; i < ex->nthreads; i++)
            pthread_join(ex->threads[i], NULL);
    }
    pthread_mutex_destroy(&ex->mu);
    free(ex->threads);
    free(ex);
    return 0;
}

/* ------------------------------------------------------------------ map */

struct conc_executor_map {
    conc_executor *ex;
    conc_executor_fn fn;
    conc_executor_bytes_fn bfn;
    conc_executor_next_fn next;
    void *ctx;
    conc_future **ring;         /* submitted, not given; oldest at head */
    size_t cap, head, count;
    size_t submitted;
    bool input_done;
    int input_err;              /* reported once, after the results */
};

/* Reads the input and submits until read_ahead calls are out. */
static void map_fill(conc_executor_map *m)
{
    while (!m->input_done && m->count < m->cap) {
        const void *arg = NULL;
        size_t len = 0;
        int r = m->next(m->ctx, &arg, &len);
        if (r <= 0) {
            m->input_done = true;
            m->input_err = r;
            break;
        }
        conc_future *f;
        if (m->fn)
            r = conc_executor_submit(m->ex, m->fn, (void *)arg, &f);
        else
            r = conc_executor_submit_bytes(m->ex, m->bfn, arg, len, &f);
        if (r) {
            m->input_done = true;
            m->input_err = r;
            break;
        }
        m->ring[(m->head + m->count) % m->cap] = f;
        m->count++;
        m->submitted++;
    }
}

static int map_new(conc_executor_map **out, conc_executor *ex, conc_executor_fn fn,
                   conc_executor_bytes_fn bfn, conc_executor_next_fn next, void *ctx,
                   const conc_executor_map_opts *opts)
{
    conc_executor_map_opts o;
    CONC__OPTS_COPY(&o, opts, CONC__OPTS_V1(conc_executor_map_opts, read_ahead));
    if (!out || !ex || !next || (!fn && !bfn))
        return -EINVAL;
    if (ld_acquire(&ex->shutdown))
        return -EPIPE;
    size_t cap = o.read_ahead ? o.read_ahead : 2 * (size_t)ex->max_workers;
    if (cap > SIZE_MAX / sizeof(conc_future *))
        return -EINVAL;
    conc_executor_map *m = calloc(1, sizeof *m);
    if (!m)
        return -ENOMEM;
    m->ring = malloc(cap * sizeof *m->ring);
    if (!m->ring) {
        free(m);
        return -ENOMEM;
    }
    m->ex = ex;
    m->fn = fn;
    m->bfn = bfn;
    m->next = next;
    m->ctx = ctx;
    m->cap = cap;
    map_fill(m);
    *out = m;
    return 0;
}

int conc_executor_map_new(conc_executor_map **out, conc_executor *ex, conc_executor_fn fn,
                          conc_executor_next_fn next, void *ctx,
                          const conc_executor_map_opts *opts)
{
    if (!fn || (ex && ex->kind != CONC_EXECUTOR_THREADS))
        return -EINVAL;
    return map_new(out, ex, fn, NULL, next, ctx, opts);
}

int conc_executor_map_bytes_new(conc_executor_map **out, conc_executor *ex,
                                conc_executor_bytes_fn fn, conc_executor_next_fn next,
                                void *ctx, const conc_executor_map_opts *opts)
{
    if (!fn)
        return -EINVAL;
    return map_new(out, ex, NULL, fn, next, ctx, opts);
}

int conc_executor_map_next_until(conc_executor_map *m, void **result, size_t *len, int *err,
                                 int64_t deadline)
{
    if (!m || !err)
        return -EINVAL;
    if (m->count == 0) {
        int r = m->input_err;
        m->input_err = 0;
        return r;
    }
    conc_future *f = m->ring[m->head];
    void *v = NULL;
    size_t l = 0;
    int r = conc_future_result_take_until(f, &v, &l, deadline);
    if (!conc_future_done(f))
        return r;               /* a timeout, or the caller was killed */
    if (r == 0) {
        if (result)
            *result = v;
        else if (conc_future_has_bytes(f))
            free(v);
        else if (m->ex->drop && v)
            m->ex->drop(v, m->ex->drop_arg);
        if (len)
            *len = l;
    } else if (result) {
        *result = NULL;
        if (len)
            *len = 0;
    }
    *err = r;
    m->head = (m->head + 1) % m->cap;
    m->count--;
    conc_future_free(f);
    map_fill(m);
    return 1;
}

int conc_executor_map_next(conc_executor_map *m, void **result, size_t *len, int *err,
                           double timeout)
{
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return (int)conc__timeout_code(poll,
                                   conc_executor_map_next_until(m, result, len, err, deadline));
}

size_t conc_executor_map_submitted(const conc_executor_map *m)
{
    return m ? m->submitted : 0;
}

void conc_executor_map_free(conc_executor_map *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->count; i++) {
        conc_future *f = m->ring[(m->head + i) % m->cap];
        conc_future_cancel(f);
        conc_future_free(f);
    }
    free(m->ring);
    free(m);
}
