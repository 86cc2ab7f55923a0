/*
 * pool_result.c - what both pools share above their engines: AsyncResult
 * (apply_async, map_async), the blocking apply and map, and the imap
 * iterators, with callbacks and progress; close, terminate and join of
 * both (one lifecycle over the engine).
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "conc/future.h"
#include "conc/pool.h"
#include "pool_internal.h"
#include "sys/wait.h"

#define PROGRESS_NS ((int64_t)CONC_POOL_PROGRESS_MS * 1000000)

struct ritem {
    int status;
    int exitcode;
    void *data;
    size_t len;
};

/* Progress reports: at most one at a time, at most every PROGRESS_NS, and
 * the last one always, after which no other is made. */
struct progress {
    conc_pool_progress_fn fn;
    void *ctx;
    int64_t last;
    uint32_t busy;
    bool ended;                 /* under busy */
    size_t done;
};

/* Counts add finished items; returns the count. */
static size_t progress_add(struct progress *pg, size_t add)
{
    return __atomic_add_fetch(&pg->done, add, __ATOMIC_ACQ_REL);
}

/* A report of d done, unless one was made less than PROGRESS_NS ago, one is
 * being made, or the last one was. */
static void progress_step(struct progress *pg, size_t d, size_t total)
{
    if (!pg->fn)
        return;
    int64_t now = conc_now();
    if (now - __atomic_load_n(&pg->last, __ATOMIC_RELAXED) < PROGRESS_NS)
        return;
    if (__atomic_exchange_n(&pg->busy, 1, __ATOMIC_ACQUIRE))
        return;
    if (!pg->ended && now - __atomic_load_n(&pg->last, __ATOMIC_RELAXED) >= PROGRESS_NS &&
        d < total) {
        __atomic_store_n(&pg->last, now, __ATOMIC_RELAXED);
        pg->fn(pg->ctx, d, total);
    }
    __atomic_store_n(&pg->busy, 0, __ATOMIC_RELEASE);
}

/* The last report: everything is done. */
static void progress_final(struct progress *pg, size_t total)
{
    if (!pg->fn)
        return;
    while (__atomic_exchange_n(&pg->busy, 1, __ATOMIC_ACQUIRE))
        conc__yield();
    if (!pg->ended) {
        pg->ended = true;
        pg->fn(pg->ctx, total, total);
    }
    __atomic_store_n(&pg->busy, 0, __ATOMIC_RELEASE);
}

/* Copies a task's outcomes into items[0..count) (the bytes into one new
 * buffer, stored in *copy); n == 1 < count: one outcome for all. */
/* An outcome's exit code as the results keep it (terminate's mark is not
 * one). */
static int exitcode_of(const struct conc__pool_outcome *o)
{
    return o->exitcode == CONC__POOL_TERMINATED ? 0 : o->exitcode;
}

static void outcomes_store(bool process, struct ritem *items, uint32_t count,
                           const struct conc__pool_outcome *o, uint32_t n, void **copy)
{
    *copy = NULL;
    if (n < count) {
        for (uint32_t i = 0; i < count; i++)
            items[i] = (struct ritem){ o[0].status, exitcode_of(&o[0]), NULL, 0 };
        return;
    }
    if (!process) {
        for (uint32_t i = 0; i < count; i++)
            items[i] = (struct ritem){ o[i].status, exitcode_of(&o[i]), o[i].data, 0 };
        return;
    }
    size_t total = 0;
    for (uint32_t i = 0; i < count; i++)
        total += o[i].len;
    unsigned char *b = malloc(total ? total : 1);
    size_t off = 0;
    for (uint32_t i = 0; i < count; i++) {
        if (!b && o[i].status == 0) {
            items[i] = (struct ritem){ -ENOMEM, 0, NULL, 0 };
            continue;
        }
        items[i] = (struct ritem){ o[i].status, exitcode_of(&o[i]), b ? b + off : NULL,
                                   o[i].len };
        if (o[i].len)
            memcpy(b + off, o[i].data, o[i].len);
        off += o[i].len;
    }
    *copy = b;
}

/* ---------------------------------------------------------------- results */

struct rchunk {
    struct conc__pool_task t;
    conc_pool_result *r;
    size_t first;
    void *copy;
};

struct conc_pool_result {
    struct conc__pool_engine *e;
    uint32_t refs;
    uint32_t ready;             /* futex word: 1 once done and called back */
    uint32_t settled;           /* the items are written */
    size_t n, nchunks;
    size_t remaining;           /* chunks not done */
    struct ritem *items;
    struct rchunk *chunks;
    conc_pool_callback cb, ecb;
    void *ctx;
    struct progress pg;
    bool process;
    bool terminated;            /* a chunk was dropped by terminate */
    int status;                 /* the first failed item's, or 0 */
    size_t status_index;
    pthread_mutex_t fmu;        /* guards fut and finished */
    conc_future *fut;           /* made on the first conc_pool_result_future */
    bool finished;
};

static __thread conc_pool_result *cb_result;

static void result_unref(conc_pool_result *r)
{
    if (__atomic_sub_fetch(&r->refs, 1, __ATOMIC_ACQ_REL))
        return;
    for (size_t i = 0; i < r->nchunks; i++) {
        free(r->chunks[i].copy);
        conc__pool_task_release(&r->chunks[i].t);
    }
    free(r->chunks);
    free(r->items);
    conc_future_free(r->fut);
    pthread_mutex_destroy(&r->fmu);
    free(r);
}

/* Finishes f as r ended: its value (apply: the item's bytes or pointer; map:
 * none), or the first failed status with the worker's exit code. */
static void future_settle(conc_pool_result *r, conc_future *f)
{
    if (r->status) {
        int code = 0;
        if (r->status == -ECHILD)
            code = r->items[r->status_index].exitcode;
        conc_future_set_exception(f, r->status, code);
    } else if (r->n == 1 && r->process) {
        if (conc_future_set_result_bytes(f, r->items[0].data, r->items[0].len) == -ENOMEM)
            conc_future_set_exception(f, -ENOMEM, 0);
    } else {
        conc_future_set_result(f, r->n == 1 ? r->items[0].data : NULL);
    }
}

static void result_finish(conc_pool_result *r)
{
    r->status = 0;
    for (size_t i = 0; i < r->n; i++) {
        if (r->items[i].status) {
            r->status = r->items[i].status;
            r->status_index = i;
            break;
        }
    }
    st_release(&r->settled, 1);
    progress_final(&r->pg, r->n);
    conc_pool_callback cb = r->status ? r->ecb : r->cb;
    /* Terminated: no callback, as Python's terminate runs none (its get
     * would wait forever; ours gives -EPIPE). */
    if (cb && !ld_relaxed(&r->terminated)) {
        conc_pool_result *saved = cb_result;
        cb_result = r;
        cb(r, r->ctx);
        cb_result = saved;
    }
    st_release(&r->ready, 1);
    /* The future is done only once r is ready (our reference keeps r). */
    pthread_mutex_lock(&r->fmu);
    r->finished = true;
    conc_future *f = r->fut;
    pthread_mutex_unlock(&r->fmu);
    if (f)
        future_settle(r, f);
    conc__wake(&r->ready, INT_MAX, 0);
    result_unref(r);
}

static void chunk_done(struct conc__pool_task *t, const struct conc__pool_outcome *o, uint32_t n)
{
    struct rchunk *c = (struct rchunk *)t;
    conc_pool_result *r = c->r;
    if (n >= 1 && o[0].status == -EPIPE && o[0].exitcode == CONC__POOL_TERMINATED)
        st_relaxed(&r->terminated, true);   /* published by remaining */
    outcomes_store(r->process, r->items + c->first, t->nitems, o, n, &c->copy);
    size_t d = progress_add(&r->pg, t->nitems);
    conc__pool_task_release(t);
    /* Before the count: once another finisher saw it reach zero, r may be
     * gone (only the last finisher holds it). */
    if (d < r->n)
        progress_step(&r->pg, d, r->n);
    if (__atomic_sub_fetch(&r->remaining, 1, __ATOMIC_ACQ_REL) == 0)
        result_finish(r);
}

static int result_new(struct conc__pool_engine *e, size_t n, size_t nchunks,
                      const conc_pool_task_opts *o, conc_pool_result **out)
{
    conc_pool_result *r = calloc(1, sizeof *r);
    if (!r)
        return -ENOMEM;
    r->e = e;
    r->n = n;
    r->nchunks = nchunks;
    r->items = calloc(n ? n : 1, sizeof *r->items);
    r->chunks = calloc(r->nchunks ? r->nchunks : 1, sizeof *r->chunks);
    if (!r->items || !r->chunks) {
        free(r->items);
        free(r->chunks);
        free(r);
        return -ENOMEM;
    }
    r->refs = 2;
    pthread_mutex_init(&r->fmu, NULL);
    r->remaining = r->nchunks;
    r->process = e->process;
    r->cb = o->callback;
    r->ecb = o->error_callback;
    r->ctx = o->ctx;
    r->pg.fn = o->progress;
    r->pg.ctx = o->ctx;
    r->pg.last = conc_now();
    *out = r;
    return 0;
}

/* The number of items of the chunk that starts at first: chunksize, fewer
 * at the end, and for a process pool fewer where the arguments' bytes
 * would pass CONC__POOL_CHUNK_BYTES (an item is never alone over it). */
static size_t chunk_len(bool process, const conc_pool_item *items, size_t first, size_t n,
                        size_t chunksize)
{
    size_t cn = n - first < chunksize ? n - first : chunksize;
    if (!process)
        return cn;
    uint64_t bytes = 0;
    for (size_t i = 0; i < cn; i++) {
        uint64_t l = items[first + i].len;
        if (i > 0 && (bytes > CONC__POOL_CHUNK_BYTES || l > CONC__POOL_CHUNK_BYTES - bytes))
            return i;
        bytes += l;
    }
    return cn;
}

/* Submits fn over items in chunks of chunksize; the submission errors
 * leave nothing behind (chunks already sent finish on their own). */
static int submit_map(struct conc__pool_engine *e, void *fn, const conc_pool_item *items,
                      size_t n, size_t chunksize, const conc_pool_task_opts *o, bool direct,
                      conc_pool_result **out)
{
    if (chunksize > CONC__POOL_CHUNK_MAX)
        chunksize = CONC__POOL_CHUNK_MAX;
    size_t nchunks = 0;
    for (size_t first = 0; first < n; nchunks++)
        first += chunk_len(e->process, items, first, n, chunksize);
    conc_pool_result *r;
    int err = result_new(e, n, nchunks, o, &r);
    if (err)
        return err;
    size_t k = 0, first = 0;
    for (; k < r->nchunks; k++) {
        struct rchunk *c = &r->chunks[k];
        c->r = r;
        c->first = first;
        size_t cn = chunk_len(e->process, items, first, n, chunksize);
        first += cn;
        err = e->process ? conc__pool_task_prepare(&c->t, (conc_pool_fn)fn, items + c->first, cn)
                         : conc__pool_task_prepare_ptr(&c->t, (conc_threadpool_fn)fn,
                                                       items + c->first, cn);
        if (err)
            break;
        c->t.done = chunk_done;
        err = direct ? conc__pool_run_direct(e, &c->t) : -EAGAIN;
        if (err == -ECANCELED) {
            /* Handed over; the caller's wait was cancelled. */
            *out = r;
            return err;
        }
        if (err == -EAGAIN)
            err = conc__pool_submit(e, &c->t);
        if (err) {
            conc__pool_task_release(&c->t);
            break;
        }
    }
    if (err) {
        /* Take back what no worker has yet; the rest finishes alone. */
        r->cb = NULL;
        r->ecb = NULL;
        while (__atomic_exchange_n(&r->pg.busy, 1, __ATOMIC_ACQUIRE))
            conc__yield();
        r->pg.ended = true;     /* no report for a call that failed */
        __atomic_store_n(&r->pg.busy, 0, __ATOMIC_RELEASE);
        size_t unsent = r->nchunks - k;
        for (size_t i = 0; i < k; i++) {
            if (conc__pool_cancel(e, &r->chunks[i].t) == 0) {
                conc__pool_task_release(&r->chunks[i].t);
                unsent++;
            }
        }
        if (__atomic_sub_fetch(&r->remaining, unsent, __ATOMIC_ACQ_REL) == 0)
            result_unref(r);
        result_unref(r);
        return err;
    }
    if (n == 0)
        result_finish(r);
    *out = r;
    return 0;
}

int conc_pool_result_wait_until(conc_pool_result *r, int64_t deadline)
{
    if (!r)
        return -EINVAL;
    if (cb_result == r)
        return 0;
    if (ld_acquire(&r->ready))
        return 0;
    if (conc__pool_in_callback(r->e))
        return deadline == 0 ? -ETIMEDOUT : -EDEADLK;
    while (!ld_acquire(&r->ready)) {
        int e = conc__wait(&r->ready, 0, deadline, 0);
        if (e < 0 && e != -EAGAIN)
            return ld_acquire(&r->ready) ? 0 : e;
    }
    return 0;
}

int conc_pool_result_wait(conc_pool_result *r, double timeout)
{
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return (int)conc__timeout_code(poll, conc_pool_result_wait_until(r, deadline));
}

int conc_pool_result_get_until(conc_pool_result *r, void **out, size_t *len, int64_t deadline)
{
    int e = conc_pool_result_wait_until(r, deadline);
    if (e)
        return e;
    if (r->status)
        return r->status;
    if (r->n) {
        if (out)
            *out = r->items[0].data;
        if (len)
            *len = r->items[0].len;
    }
    return 0;
}

int conc_pool_result_get(conc_pool_result *r, void **out, size_t *len, double timeout)
{
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return (int)conc__timeout_code(poll, conc_pool_result_get_until(r, out, len, deadline));
}

static bool result_done(const conc_pool_result *r)
{
    return ld_acquire(&r->ready) || (cb_result == r && ld_acquire(&r->settled));
}

bool conc_pool_result_ready(const conc_pool_result *r)
{
    return r && result_done(r);
}

int conc_pool_result_successful(const conc_pool_result *r)
{
    if (!r)
        return -EINVAL;
    if (!result_done(r))
        return -EBUSY;
    return r->status == 0;
}

size_t conc_pool_result_count(const conc_pool_result *r)
{
    return r ? r->n : 0;
}

int conc_pool_result_item(const conc_pool_result *r, size_t i, void **out, size_t *len)
{
    if (!r || i >= r->n)
        return -EINVAL;
    if (!result_done(r))
        return -EBUSY;
    const struct ritem *it = &r->items[i];
    if (it->status == 0) {
        if (out)
            *out = it->data;
        if (len)
            *len = it->len;
    }
    return it->status;
}

int conc_pool_result_exitcode(const conc_pool_result *r, int *code)
{
    if (!r || !code)
        return -EINVAL;
    if (!result_done(r))
        return -EBUSY;
    for (size_t i = 0; i < r->n; i++) {
        if (r->items[i].status == -ECHILD) {
            *code = r->items[i].exitcode;
            return 0;
        }
    }
    return -ENOENT;
}

conc_future *conc_pool_result_future(conc_pool_result *r)
{
    if (!r)
        return NULL;
    pthread_mutex_lock(&r->fmu);
    if (!r->fut) {
        conc_future *f;
        if (conc_future_new(&f, NULL)) {
            pthread_mutex_unlock(&r->fmu);
            return NULL;
        }
        /* The task was handed to the pool already: it cannot be taken back
         * through the future. */
        conc_future_set_running(f);
        if (r->finished)
            future_settle(r, f);
        r->fut = f;
    }
    conc_future *f = conc_future_ref(r->fut);
    pthread_mutex_unlock(&r->fmu);
    return f;
}

void conc_pool_result_free(conc_pool_result *r)
{
    if (r)
        result_unref(r);
}

/* ------------------------------------------------- apply and map, both pools */

static const conc_pool_task_opts no_opts;

static int opts_read(const conc_pool_task_opts *in, conc_pool_task_opts *o)
{
    CONC__OPTS_COPY(o, in, sizeof(conc_pool_task_opts));
    return 0;
}

static int do_apply_async(struct conc__pool_engine *e, void *fn, const void *arg, size_t len,
                          const conc_pool_task_opts *opts, bool direct, conc_pool_result **out)
{
    if (!e || !fn || !out || (e->process && ((!arg && len) || len > CONC_POOL_ARG_MAX)))
        return -EINVAL;
    conc_pool_task_opts o;
    opts_read(opts, &o);
    conc_pool_item it = { arg, len };
    return submit_map(e, fn, &it, 1, 1, &o, direct, out);
}

static size_t default_chunksize(struct conc__pool_engine *e, size_t n)
{
    size_t w = (size_t)(e->workers > 0 ? e->workers : 1) * 4;
    size_t c = n / w + (n % w ? 1 : 0);
    return c ? c : 1;
}

static int do_map_async(struct conc__pool_engine *e, void *fn, const conc_pool_item *items,
                        size_t n, const conc_pool_task_opts *opts, conc_pool_result **out)
{
    if (!e || !fn || !out || (!items && n))
        return -EINVAL;
    conc_pool_task_opts o;
    opts_read(opts, &o);
    size_t cs = o.chunksize ? o.chunksize : default_chunksize(e, n);
    return submit_map(e, fn, items, n, cs, &o, false, out);
}

static int do_map(struct conc__pool_engine *e, void *fn, const conc_pool_item *items, size_t n,
                  const conc_pool_task_opts *opts, conc_pool_result **out)
{
    if (e && conc__pool_in_callback(e))
        return -EDEADLK;
    conc_pool_result *r;
    int err = do_map_async(e, fn, items, n, opts, &r);
    if (err)
        return err;
    err = conc_pool_result_wait_until(r, CONC_NO_DEADLINE);
    if (err) {
        conc_pool_result_free(r);
        return err;
    }
    *out = r;
    return r->status;
}

int conc_pool_apply_async(conc_pool *p, conc_pool_fn fn, const void *arg, size_t len,
                          const conc_pool_task_opts *opts, conc_pool_result **out)
{
    return do_apply_async(conc__pool_engine(p), (void *)fn, arg, len, opts, false, out);
}

/*
 * A blocking apply from a plain thread: one task on the caller's stack,
 * handed to an idle worker by the caller itself (or queued), with no result
 * object: its bytes are copied once, into the buffer the caller gets.  A
 * round trip is the part of apply that callers repeat, and the result
 * object's allocations, clock read and lock cost more user time than the
 * rest of the caller's side together.  (A coroutine takes the result
 * object's path: its wait can be cancelled, and a task it leaves behind
 * must outlive its stack.)
 *
 * ready: 0, then APPLY_SETTLED once done ran; done that runs on another
 * thread (the pool's thread settles the task of a worker that ended, or
 * hands on a queued one) stores APPLY_WAKING first and wakes the caller,
 * and touches nothing of the call after the last store, so the caller
 * waits for that one, not the first.
 */
#define APPLY_WAKING 1u
#define APPLY_SETTLED 2u

struct apply_call {
    struct conc__pool_task t;   /* first: done gets &t */
    const char *caller;         /* the calling thread's apply_mark */
    uint32_t ready;
    int status;
    void *data;
    size_t len;
};

static __thread char apply_mark;

static void apply_done(struct conc__pool_task *t, const struct conc__pool_outcome *o, uint32_t n)
{
    struct apply_call *a = (struct apply_call *)t;
    int st = n >= 1 ? o[0].status : -EPROTO;
    if (st == 0) {
        a->data = malloc(o[0].len ? o[0].len : 1);
        if (!a->data)
            st = -ENOMEM;
        else if (o[0].len)
            memcpy(a->data, o[0].data, o[0].len);
        a->len = o[0].len;
    }
    a->status = st;
    if (a->caller == &apply_mark) {
        st_release(&a->ready, APPLY_SETTLED);     /* the caller is this thread */
        return;
    }
    __atomic_store_n(&a->ready, APPLY_WAKING, __ATOMIC_SEQ_CST);
    conc__wake(&a->ready, INT_MAX, 0);
    st_release(&a->ready, APPLY_SETTLED);
}

static int apply_direct(struct conc__pool_engine *e, conc_pool_fn fn, const void *arg,
                        size_t len, void **result, size_t *result_len)
{
    struct apply_call a = { .caller = &apply_mark };
    conc_pool_item it = { arg, len };
    int err = conc__pool_task_prepare(&a.t, fn, &it, 1);
    if (err)
        return err;
    a.t.done = apply_done;
    err = conc__pool_run_direct(e, &a.t);
    if (err == -EAGAIN && ld_relaxed(&a.t.state) == CONC__TASK_NEW)
        err = conc__pool_submit(e, &a.t);
    if (err && ld_relaxed(&a.t.state) == CONC__TASK_NEW) {
        conc__pool_task_release(&a.t);
        return err;
    }
    /* The task was handed on: done runs exactly once (conc/pool.h's
     * engine promise), on this thread or another. */
    uint32_t v;
    while ((v = ld_acquire(&a.ready)) != APPLY_SETTLED) {
        if (v == APPLY_WAKING)
            conc__yield();      /* its waker is between two stores */
        else
            conc__wait(&a.ready, 0, CONC_NO_DEADLINE, 0);
    }
    conc__pool_task_release(&a.t);
    if (a.status == 0) {
        *result = a.data;
        *result_len = a.len;
    }
    return a.status;
}

int conc_pool_apply(conc_pool *p, conc_pool_fn fn, const void *arg, size_t len, void **result,
                    size_t *result_len)
{
    struct conc__pool_engine *e = conc__pool_engine(p);
    if (!result || !result_len)
        return -EINVAL;
    if (e && conc__pool_in_callback(e))
        return -EDEADLK;
    if (e && fn && !conc__wait_ops)
        return apply_direct(e, fn, arg, len, result, result_len);
    conc_pool_result *r;
    int err = do_apply_async(e, (void *)fn, arg, len, &no_opts, true, &r);
    if (err == -ECANCELED)
        conc_pool_result_free(r);
    if (err)
        return err;
    void *data;
    size_t dl;
    err = conc_pool_result_get_until(r, &data, &dl, CONC_NO_DEADLINE);
    if (err == 0) {
        void *c = malloc(dl ? dl : 1);
        if (!c) {
            err = -ENOMEM;
        } else {
            if (dl)
                memcpy(c, data, dl);
            *result = c;
            *result_len = dl;
        }
    }
    conc_pool_result_free(r);
    return err;
}

/* ------------------------------------------ close, terminate and join */

int conc__pool_stop(struct conc__pool_engine *e, bool terminate)
{
    if (!e)
        return -EINVAL;
    /* Before the engine hears of it: a join that sees the word waits for
     * threads that are about to end. */
    __atomic_store_n(&e->stopping, 1, __ATOMIC_RELEASE);
    e->stop(e, terminate);
    return 0;
}

void conc__pool_live_add(struct conc__pool_engine *e, int n)
{
    if (__atomic_add_fetch(&e->live, (uint32_t)n, __ATOMIC_ACQ_REL) == 0)
        conc__wake(&e->live, INT_MAX, 0);
}

/* Waits until no thread of e runs; 0, or the wait's error. */
static int live_wait(struct conc__pool_engine *e, int64_t deadline)
{
    for (;;) {
        uint32_t v = __atomic_load_n(&e->live, __ATOMIC_ACQUIRE);
        if (v == 0)
            return 0;
        int r = conc__wait(&e->live, v, deadline, 0);
        if (r < 0 && r != -EAGAIN)
            return __atomic_load_n(&e->live, __ATOMIC_ACQUIRE) == 0 ? 0 : r;
    }
}

int conc__pool_join_until(struct conc__pool_engine *e, int64_t deadline)
{
    if (!e)
        return -EINVAL;
    if (!__atomic_load_n(&e->stopping, __ATOMIC_ACQUIRE))
        return -EBUSY;
    if (conc__pool_in_callback(e))
        return -EDEADLK;
    return live_wait(e, deadline);
}

int conc__pool_join(struct conc__pool_engine *e, double timeout)
{
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return (int)conc__timeout_code(poll, conc__pool_join_until(e, deadline));
}

void conc__pool_end(struct conc__pool_engine *e)
{
    conc__pool_stop(e, true);
    live_wait(e, CONC_NO_DEADLINE);
}

int conc_pool_close(conc_pool *p)
{
    return conc__pool_stop(conc__pool_engine(p), false);
}

int conc_pool_terminate(conc_pool *p)
{
    return conc__pool_stop(conc__pool_engine(p), true);
}

int conc_pool_join_until(conc_pool *p, int64_t deadline)
{
    return conc__pool_join_until(conc__pool_engine(p), deadline);
}

int conc_pool_join(conc_pool *p, double timeout)
{
    return conc__pool_join(conc__pool_engine(p), timeout);
}

int conc_threadpool_close(conc_threadpool *p)
{
    return conc__pool_stop(conc__threadpool_engine(p), false);
}

int conc_threadpool_terminate(conc_threadpool *p)
{
    return conc__pool_stop(conc__threadpool_engine(p), true);
}

int conc_threadpool_join_until(conc_threadpool *p, int64_t deadline)
{
    return conc__pool_join_until(conc__threadpool_engine(p), deadline);
}

int conc_threadpool_join(conc_threadpool *p, double timeout)
{
    return conc__pool_join(conc__threadpool_engine(p), timeout);
}

/* ------------------------------------------------------------- map */

int conc_pool_map_async(conc_pool *p, conc_pool_fn fn, const conc_pool_item *items, size_t n,
                        const conc_pool_task_opts *opts, conc_pool_result **out)
{
    return do_map_async(conc__pool_engine(p), (void *)fn, items, n, opts, out);
}

int conc_pool_map(conc_pool *p, conc_pool_fn fn, const conc_pool_item *items, size_t n,
                  const conc_pool_task_opts *opts, conc_pool_result **out)
{
    return do_map(conc__pool_engine(p), (void *)fn, items, n, opts, out);
}

int conc_threadpool_apply_async(conc_threadpool *p, conc_threadpool_fn fn, void *arg,
                                const conc_pool_task_opts *opts, conc_pool_result **out)
{
    return do_apply_async(conc__threadpool_engine(p), (void *)fn, arg, 0, opts, false, out);
}

int conc_threadpool_apply(conc_threadpool *p, conc_threadpool_fn fn, void *arg, void **result)
{
    struct conc__pool_engine *e = conc__threadpool_engine(p);
    if (!result)
        return -EINVAL;
    if (e && conc__pool_in_callback(e))
        return -EDEADLK;
    conc_pool_result *r;
    int err = do_apply_async(e, (void *)fn, arg, 0, &no_opts, false, &r);
    if (err)
        return err;
    void *data;
    err = conc_pool_result_get_until(r, &data, NULL, CONC_NO_DEADLINE);
    if (err == 0)
        *result = data;
    conc_pool_result_free(r);
    return err;
}

int conc_threadpool_map_async(conc_threadpool *p, conc_threadpool_fn fn,
                              const conc_pool_item *items, size_t n,
                              const conc_pool_task_opts *opts, conc_pool_result **out)
{
    return do_map_async(conc__threadpool_engine(p), (void *)fn, items, n, opts, out);
}

int conc_threadpool_map(conc_threadpool *p, conc_threadpool_fn fn, const conc_pool_item *items,
                        size_t n, const conc_pool_task_opts *opts, conc_pool_result **out)
{
    return do_map(conc__threadpool_engine(p), (void *)fn, items, n, opts, out);
}

/* -------------------------------------------------------------------- imap */

struct islot {
    struct conc__pool_task t;
    conc_pool_iter *it;
    int state;                  /* 0 free, 1 in flight, 2 done */
    size_t seq, first;
    uint32_t n, delivered;
    struct ritem *items;        /* chunksize of them */
    void *copy;
};

struct conc_pool_iter {
    struct conc__pool_engine *e;
    void *fn;
    conc_pool_next_fn next;
    void *ctx;
    bool ordered;
    size_t chunksize, window;
    pthread_mutex_t mu;
    uint32_t word;              /* futex word: bumped on every completion */
    uint32_t refs;              /* the caller's + one per chunk in flight */
    bool abandoned;             /* under mu */
    struct islot *slots;
    struct ritem *itemspace;
    conc_pool_item *tmp;
    bool *tmp_staged;
    unsigned char *stage;       /* copies of a chunk's arguments */
    size_t stage_cap;
    size_t seq_in, seq_out;
    size_t consumed, produced;
    bool input_end, end_reported;
    int input_err;
    struct islot *cur;
    struct progress pg;
    /* An item read but left for the next chunk (this one had its bytes):
     * next's bytes stay valid until its next call. */
    conc_pool_item held;
    bool has_held;
};

static void iter_unref(conc_pool_iter *it)
{
    if (__atomic_sub_fetch(&it->refs, 1, __ATOMIC_ACQ_REL))
        return;
    for (size_t i = 0; i < it->window; i++) {
        free(it->slots[i].copy);
        conc__pool_task_release(&it->slots[i].t);
    }
    pthread_mutex_destroy(&it->mu);
    free(it->slots);
    free(it->itemspace);
    free(it->tmp);
    free(it->tmp_staged);
    free(it->stage);
    free(it);
}

static void islot_done(struct conc__pool_task *t, const struct conc__pool_outcome *o, uint32_t n)
{
    struct islot *s = (struct islot *)t;
    conc_pool_iter *it = s->it;
    void *copy;
    outcomes_store(it->e->process, s->items, t->nitems, o, n, &copy);
    /* Reported before the result is visible: the iterator's last report
     * comes after every other. */
    size_t d = progress_add(&it->pg, t->nitems);
    size_t consumed = __atomic_load_n(&it->consumed, __ATOMIC_ACQUIRE);
    bool ended = __atomic_load_n(&it->input_end, __ATOMIC_ACQUIRE);
    progress_step(&it->pg, d, ended ? consumed : SIZE_MAX);
    conc__pool_task_release(t);
    pthread_mutex_lock(&it->mu);
    bool gone = it->abandoned;
    if (gone) {
        free(copy);
        s->state = 0;
    } else {
        s->copy = copy;
        s->state = 2;
    }
    pthread_mutex_unlock(&it->mu);
    if (!gone) {
        __atomic_add_fetch(&it->word, 1, __ATOMIC_RELEASE);
        conc__wake(&it->word, INT_MAX, 0);
    }
    iter_unref(it);
}

/* Reads input and submits chunks while a slot is free (the iterating
 * thread only). */
static void iter_refill(conc_pool_iter *it)
{
    while (!it->input_end) {
        struct islot *s = NULL;
        pthread_mutex_lock(&it->mu);
        for (size_t i = 0; i < it->window; i++) {
            if (it->slots[i].state == 0) {
                s = &it->slots[i];
                break;
            }
        }
        pthread_mutex_unlock(&it->mu);
        if (!s)
            return;
        size_t k = 0, staged = 0;
        uint64_t bytes = 0;
        int err = 0;
        bool ended = false;
        while (k < it->chunksize) {
            const void *a = NULL;
            size_t l = 0;
            if (it->has_held) {
                a = it->held.arg;
                l = it->held.len;
                it->has_held = false;
            } else {
                int r = it->next(it->ctx, &a, &l);
                if (r <= 0) {
                    err = r;
                    ended = true;
                    break;
                }
            }
            if (it->e->process && ((!a && l) || l > CONC_POOL_ARG_MAX)) {
                err = -EINVAL;
                ended = true;
                break;
            }
            if (it->e->process && k > 0 && l > CONC__POOL_CHUNK_BYTES - bytes) {
                /* One task carries so many bytes at most (as map cuts its
                 * chunks): this item starts the next chunk. */
                it->held = (conc_pool_item){ a, l };
                it->has_held = true;
                break;
            }
            bytes += l;
            if (it->e->process && k + 1 < it->chunksize) {
                /* The bytes are valid only until the next call: keep a copy. */
                if (it->stage_cap - staged < l) {
                    size_t cap = it->stage_cap ? it->stage_cap : 4096;
                    while (cap - staged < l)
                        cap *= 2;
                    unsigned char *nb = realloc(it->stage, cap);
                    if (!nb) {
                        err = -ENOMEM;
                        ended = true;
                        break;
                    }
                    it->stage = nb;
                    it->stage_cap = cap;
                }
                if (l)
                    memcpy(it->stage + staged, a, l);
                a = (const void *)(uintptr_t)staged;    /* an offset for now */
                staged += l;
                it->tmp_staged[k] = true;
            } else {
                it->tmp_staged[k] = false;
            }
            it->tmp[k++] = (conc_pool_item){ a, l };
        }
        for (size_t i = 0; i < k; i++)
            if (it->tmp_staged[i])
                it->tmp[i].arg = it->stage + (uintptr_t)it->tmp[i].arg;
        if (ended) {
            it->input_err = err;
            __atomic_store_n(&it->input_end, true, __ATOMIC_RELEASE);
        }
        if (k == 0)
            return;
        s->it = it;
        s->seq = it->seq_in;
        s->first = it->consumed;
        s->n = (uint32_t)k;
        s->delivered = 0;
        int e = it->e->process ? conc__pool_task_prepare(&s->t, (conc_pool_fn)it->fn, it->tmp, k)
                               : conc__pool_task_prepare_ptr(&s->t, (conc_threadpool_fn)it->fn,
                                                             it->tmp, k);
        if (!e) {
            s->t.done = islot_done;
            s->state = 1;       /* not yet visible to anyone but this thread */
            __atomic_add_fetch(&it->refs, 1, __ATOMIC_ACQ_REL);
            e = conc__pool_submit(it->e, &s->t);
            if (e) {
                __atomic_sub_fetch(&it->refs, 1, __ATOMIC_ACQ_REL);
                conc__pool_task_release(&s->t);
                s->state = 0;
            }
        }
        if (e) {
            /* These items cannot run: the iterator ends with the error. */
            it->input_err = e;
            __atomic_store_n(&it->input_end, true, __ATOMIC_RELEASE);
            return;
        }
        it->seq_in++;
        __atomic_add_fetch(&it->consumed, k, __ATOMIC_RELEASE);
    }
}

int conc_pool_iter_next_until(conc_pool_iter *it, int *status, void **out, size_t *len,
                              size_t *index, int64_t deadline)
{
    if (!it || !status)
        return -EINVAL;
    if (it->cur && it->cur->delivered == it->cur->n) {
        pthread_mutex_lock(&it->mu);
        free(it->cur->copy);
        it->cur->copy = NULL;
        it->cur->state = 0;
        pthread_mutex_unlock(&it->mu);
        if (it->ordered)
            it->seq_out++;
        it->cur = NULL;
    }
    for (;;) {
        uint32_t w = __atomic_load_n(&it->word, __ATOMIC_ACQUIRE);
        iter_refill(it);
        pthread_mutex_lock(&it->mu);
        struct islot *s = it->cur;
        size_t inflight = 0;
        for (size_t i = 0; i < it->window && !s; i++) {
            struct islot *c = &it->slots[i];
            if (c->state == 2 && (!it->ordered || c->seq == it->seq_out))
                s = c;
        }
        for (size_t i = 0; i < it->window; i++)
            inflight += it->slots[i].state != 0;
        pthread_mutex_unlock(&it->mu);
        if (s) {
            it->cur = s;
            const struct ritem *ri = &s->items[s->delivered];
            *status = ri->status;
            if (out)
                *out = ri->status ? NULL : ri->data;
            if (len)
                *len = ri->status ? 0 : ri->len;
            if (index)
                *index = s->first + s->delivered;
            s->delivered++;
            it->produced++;
            return 1;
        }
        if (inflight == 0 && it->input_end) {
            if (!it->end_reported) {
                it->end_reported = true;
                progress_final(&it->pg, it->consumed);
                if (it->input_err)
                    return it->input_err;
            }
            return 0;
        }
        int e = conc__wait(&it->word, w, deadline, 0);
        if (e == -ETIMEDOUT || e == -ECANCELED || e == -EDEADLK)
            return e;
    }
}

int conc_pool_iter_next(conc_pool_iter *it, int *status, void **out, size_t *len,
                        size_t *index, double timeout)
{
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return (int)conc__timeout_code(poll,
                                   conc_pool_iter_next_until(it, status, out, len, index, deadline));
}

size_t conc_pool_iter_consumed(const conc_pool_iter *it)
{
    return it ? __atomic_load_n(&it->consumed, __ATOMIC_ACQUIRE) : 0;
}

size_t conc_pool_iter_produced(const conc_pool_iter *it)
{
    return it ? it->produced : 0;
}

void conc_pool_iter_free(conc_pool_iter *it)
{
    if (!it)
        return;
    /* No report after this (one being made is waited for). */
    while (__atomic_exchange_n(&it->pg.busy, 1, __ATOMIC_ACQUIRE))
        conc__yield();
    it->pg.ended = true;
    __atomic_store_n(&it->pg.busy, 0, __ATOMIC_RELEASE);
    pthread_mutex_lock(&it->mu);
    it->abandoned = true;
    size_t dropped = 0;
    for (size_t i = 0; i < it->window; i++) {
        struct islot *s = &it->slots[i];
        if (s->state == 1 && conc__pool_cancel(it->e, &s->t) == 0) {
            conc__pool_task_release(&s->t);
            s->state = 0;
            dropped++;
        } else if (s->state == 2) {
            free(s->copy);
            s->copy = NULL;
            s->state = 0;
        }
    }
    pthread_mutex_unlock(&it->mu);
    if (dropped)
        __atomic_sub_fetch(&it->refs, dropped, __ATOMIC_ACQ_REL);
    iter_unref(it);
}

static int do_imap(struct conc__pool_engine *e, void *fn, conc_pool_next_fn next, bool ordered,
                   const conc_pool_task_opts *opts, conc_pool_iter **out)
{
    if (!e || !fn || !next || !out)
        return -EINVAL;
    conc_pool_task_opts o;
    opts_read(opts, &o);
    size_t cs = o.chunksize ? o.chunksize : 1;
    if (cs > CONC__POOL_CHUNK_MAX)
        cs = CONC__POOL_CHUNK_MAX;
    size_t win = o.window ? o.window : (size_t)(e->workers > 0 ? e->workers : 1) * 2;
    if (win > 65536)
        win = 65536;
    if (cs * win > ((size_t)1 << 26))
        return -EINVAL;
    conc_pool_iter *it = calloc(1, sizeof *it);
    if (!it)
        return -ENOMEM;
    it->slots = calloc(win, sizeof *it->slots);
    it->itemspace = calloc(win * cs, sizeof *it->itemspace);
    it->tmp = calloc(cs, sizeof *it->tmp);
    it->tmp_staged = calloc(cs, sizeof *it->tmp_staged);
    if (!it->slots || !it->itemspace || !it->tmp || !it->tmp_staged) {
        free(it->tmp_staged);
        free(it->slots);
        free(it->itemspace);
        free(it->tmp);
        free(it);
        return -ENOMEM;
    }
    for (size_t i = 0; i < win; i++)
        it->slots[i].items = it->itemspace + i * cs;
    pthread_mutex_init(&it->mu, NULL);
    it->e = e;
    it->fn = fn;
    it->next = next;
    it->ctx = o.ctx;
    it->ordered = ordered;
    it->chunksize = cs;
    it->window = win;
    it->refs = 1;
    it->pg.fn = o.progress;
    it->pg.ctx = o.ctx;
    it->pg.last = conc_now();
    *out = it;
    return 0;
}

int conc_pool_imap(conc_pool *p, conc_pool_fn fn, conc_pool_next_fn next,
                   const conc_pool_task_opts *opts, conc_pool_iter **out)
{
    return do_imap(conc__pool_engine(p), (void *)fn, next, true, opts, out);
}

int conc_pool_imap_unordered(conc_pool *p, conc_pool_fn fn, conc_pool_next_fn next,
                             const conc_pool_task_opts *opts, conc_pool_iter **out)
{
    return do_imap(conc__pool_engine(p), (void *)fn, next, false, opts, out);
}

int conc_threadpool_imap(conc_threadpool *p, conc_threadpool_fn fn, conc_pool_next_fn next,
                         const conc_pool_task_opts *opts, conc_pool_iter **out)
{
    return do_imap(conc__threadpool_engine(p), (void *)fn, next, true, opts, out);
}

int conc_threadpool_imap_unordered(conc_threadpool *p, conc_threadpool_fn fn,
                                   conc_pool_next_fn next, const conc_pool_task_opts *opts,
                                   conc_pool_iter **out)
{
    return do_imap(conc__threadpool_engine(p), (void *)fn, next, false, opts, out);
}
