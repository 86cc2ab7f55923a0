/*
 * test_pool.c - conc/pool.h: the process Pool and the ThreadPool.
 *
 * Values of apply, map (chunked, and the starmap form over structs), imap
 * and imap_unordered under every start method; callbacks and
 * error_callback; the initializer; maxtasksperchild; a worker that dies
 * mid-task (-ECHILD with its signal or exit code, or run again with
 * retries); workers killed at random during many tasks (every task
 * reported exactly once, the pool usable after); imap over an endless
 * input stays bounded; terminate releases every waiter; waits from
 * coroutines; no descriptor or process left behind; the ThreadPool's
 * equivalents.
 *
 * Worker processes never assert: they report through results and exit
 * codes.  Timeouts are hang guards only.
 */
#include <criterion/criterion.h>

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conc.h"
#include "support/fd_count.h"

#include "support/fork_sanitizers.h"
#include "support/task_state.h"

#include "support/sanitized.h"

#define GUARD 60.0

static const conc_start_method methods[] = { CONC_START_FORK, CONC_START_FORKSERVER,
                                              CONC_START_SPAWN };

/* ============================================================ tasks */

static int give_i64(int64_t v, void **result, size_t *len)
{
    int64_t *b = malloc(sizeof *b);
    if (!b)
        return -ENOMEM;
    *b = v;
    *result = b;
    *len = sizeof *b;
    return 0;
}

static int64_t arg_i64(const void *arg, size_t len)
{
    int64_t v = 0;
    if (len == sizeof v)
        memcpy(&v, arg, sizeof v);
    return v;
}

/* i -> i*i; a negative i fails with -EDOM. */
static int square(const void *arg, size_t len, void **result, size_t *rlen)
{
    if (len != sizeof(int64_t))
        return -EINVAL;
    int64_t v = arg_i64(arg, len);
    if (v < 0)
        return -EDOM;
    return give_i64(v * v, result, rlen);
}

/* The worker's pid. */
static int my_pid(const void *arg, size_t len, void **result, size_t *rlen)
{
    (void)arg;
    (void)len;
    return give_i64(getpid(), result, rlen);
}

/* Ends its worker: 1 SIGKILL, 2 abort, 3 exit(7). */
static int die(const void *arg, size_t len, void **result, size_t *rlen)
{
    (void)result;
    (void)rlen;
    int64_t how = arg_i64(arg, len);
    if (how == 1)
        raise(SIGKILL);
    if (how == 2)
        abort();
    _exit(7);
}

/* Sleeps until killed. */
static _Noreturn int block_forever(const void *arg, size_t len, void **result, size_t *rlen)
{
    (void)arg;
    (void)len;
    (void)result;
    (void)rlen;
    for (;;)
        pause();
}

static int64_t init_value;

static int init_set(const void *arg, size_t len)
{
    init_value = arg_i64(arg, len);
    return 0;
}

static int read_init(const void *arg, size_t len, void **result, size_t *rlen)
{
    (void)arg;
    (void)len;
    return give_i64(init_value, result, rlen);
}

/* starmap: the arguments in a struct. */
struct pair {
    int64_t a, b;
};

static int add_pair(const void *arg, size_t len, void **result, size_t *rlen)
{
    struct pair p;
    if (len != sizeof p)
        return -EINVAL;
    memcpy(&p, arg, sizeof p);
    return give_i64(p.a + p.b, result, rlen);
}

/* Echoes its argument (any size). */
static int echo(const void *arg, size_t len, void **result, size_t *rlen)
{
    void *b = malloc(len ? len : 1);
    if (!b)
        return -ENOMEM;
    if (len)
        memcpy(b, arg, len);
    *result = b;
    *rlen = len;
    return 0;
}

/* ============================================================ helpers */

static conc_pool *mkpool(int procs, conc_start_method m, const conc_pool_opts *base)
{
    conc_pool_opts o = CONC_POOL_OPTS_INIT;
    if (base)
        o = *base;
    o.processes = procs;
    o.method = m;
    conc_pool *p = NULL;
    int r = conc_pool_new(&p, &o);
    cr_assert_eq(r, 0, "conc_pool_new: %s", conc_strerror(r));
    return p;
}

static void endpool(conc_pool *p)
{
    cr_assert_eq(conc_pool_close(p), 0);
    cr_assert_eq(conc_pool_join(p, GUARD), 0);
    conc_pool_free(p);
    cr_assert_eq(conc_process_active_children(NULL, 0), 0, "a worker was left running");
}

static int64_t result_i64(conc_pool_result *r, size_t i)
{
    void *d;
    size_t l;
    int st = conc_pool_result_item(r, i, &d, &l);
    cr_assert_eq(st, 0, "item %zu: %s", i, conc_strerror(st));
    cr_assert_eq(l, sizeof(int64_t));
    return arg_i64(d, l);
}

/* ============================================================ values */

Test(pool, apply_every_method, .timeout = 120)
{
    for (size_t m = 0; m < 3; m++) {
        conc_pool *p = mkpool(2, methods[m], NULL);
        cr_assert_eq(conc_pool_processes(p), 2);
        for (int64_t i = 0; i < 20; i++) {
            void *res;
            size_t len;
            cr_assert_eq(conc_pool_apply(p, square, &i, sizeof i, &res, &len), 0);
            cr_assert_eq(len, sizeof(int64_t));
            cr_assert_eq(arg_i64(res, len), i * i);
            free(res);
        }
        int64_t neg = -3;
        void *res = NULL;
        size_t len;
        cr_assert_eq(conc_pool_apply(p, square, &neg, sizeof neg, &res, &len), -EDOM);
        cr_assert_null(res);
        /* Empty and large arguments. */
        cr_assert_eq(conc_pool_apply(p, echo, NULL, 0, &res, &len), 0);
        cr_assert_eq(len, 0);
        free(res);
        size_t big = 3u << 20;
        unsigned char *b = malloc(big);
        for (size_t i = 0; i < big; i++)
            b[i] = (unsigned char)(i * 7 + m);
        cr_assert_eq(conc_pool_apply(p, echo, b, big, &res, &len), 0);
        cr_assert_eq(len, big);
        cr_assert_eq(memcmp(res, b, big), 0);
        free(res);
        free(b);
        endpool(p);
    }
}

Test(pool, map_chunks_and_starmap, .timeout = 120)
{
    conc_pool *p = mkpool(3, CONC_START_FORKSERVER, NULL);
    enum { N = 1000 };
    int64_t *v = malloc(N * sizeof *v);
    conc_pool_item *items = malloc(N * sizeof *items);
    for (int i = 0; i < N; i++) {
        v[i] = i;
        items[i] = (conc_pool_item){ &v[i], sizeof v[i] };
    }
    size_t chunks[] = { 0, 1, 7, 1000, 5000 };
    for (size_t c = 0; c < sizeof chunks / sizeof chunks[0]; c++) {
        conc_pool_task_opts o = CONC_POOL_TASK_OPTS_INIT;
        o.chunksize = chunks[c];
        conc_pool_result *r = NULL;
        cr_assert_eq(conc_pool_map(p, square, items, N, &o, &r), 0);
        cr_assert_eq(conc_pool_result_count(r), N);
        cr_assert_eq(conc_pool_result_successful(r), 1);
        for (int i = 0; i < N; i++)
            cr_assert_eq(result_i64(r, (size_t)i), (int64_t)i * i);
        conc_pool_result_free(r);
    }
    /* One failing item: map reports it, the others keep their values. */
    v[500] = -1;
    conc_pool_result *r = NULL;
    cr_assert_eq(conc_pool_map(p, square, items, N, NULL, &r), -EDOM);
    cr_assert_eq(conc_pool_result_successful(r), 0);
    cr_assert_eq(conc_pool_result_item(r, 500, NULL, NULL), -EDOM);
    cr_assert_eq(result_i64(r, 499), 499 * 499);
    conc_pool_result_free(r);
    /* An empty map is done at once. */
    cr_assert_eq(conc_pool_map(p, square, NULL, 0, NULL, &r), 0);
    cr_assert_eq(conc_pool_result_count(r), 0);
    conc_pool_result_free(r);
    /* starmap: the arguments in a struct. */
    struct pair pairs[50];
    conc_pool_item pi[50];
    for (int i = 0; i < 50; i++) {
        pairs[i] = (struct pair){ i, 1000 * i };
        pi[i] = (conc_pool_item){ &pairs[i], sizeof pairs[i] };
    }
    cr_assert_eq(conc_pool_map(p, add_pair, pi, 50, NULL, &r), 0);
    for (int i = 0; i < 50; i++)
        cr_assert_eq(result_i64(r, (size_t)i), 1001 * i);
    conc_pool_result_free(r);
    free(v);
    free(items);
    endpool(p);
}

/* imap input: 0..limit-1 (limit < 0: endless). */
struct counter {
    int64_t next, limit, cur;
};

static int count_next(void *ctx, const void **arg, size_t *len)
{
    struct counter *c = ctx;
    if (c->limit >= 0 && c->next >= c->limit)
        return 0;
    c->cur = c->next++;
    *arg = &c->cur;
    *len = sizeof c->cur;
    return 1;
}

Test(pool, imap_ordered_and_unordered, .timeout = 120)
{
    conc_pool *p = mkpool(3, CONC_START_FORK, NULL);
    for (int ordered = 0; ordered < 2; ordered++) {
        for (size_t cs = 1; cs <= 4; cs += 3) {
            struct counter c = { 0, 300, 0 };
            conc_pool_task_opts o = CONC_POOL_TASK_OPTS_INIT;
            o.chunksize = cs;
            o.ctx = &c;
            conc_pool_iter *it;
            cr_assert_eq((ordered ? conc_pool_imap : conc_pool_imap_unordered)(p, square,
                                                                               count_next, &o, &it),
                         0);
            static bool seen[300];
            memset(seen, 0, sizeof seen);
            int st;
            void *d;
            size_t l, idx;
            for (int k = 0; k < 300; k++) {
                cr_assert_eq(conc_pool_iter_next(it, &st, &d, &l, &idx, GUARD), 1);
                cr_assert_eq(st, 0);
                if (ordered)
                    cr_assert_eq(idx, (size_t)k);
                cr_assert_lt(idx, 300);
                cr_assert_not(seen[idx]);
                seen[idx] = true;
                cr_assert_eq(arg_i64(d, l), (int64_t)(idx * idx));
            }
            cr_assert_eq(conc_pool_iter_next(it, &st, &d, &l, &idx, GUARD), 0);
            cr_assert_eq(conc_pool_iter_next(it, &st, &d, &l, &idx, GUARD), 0);
            cr_assert_eq(conc_pool_iter_consumed(it), 300);
            cr_assert_eq(conc_pool_iter_produced(it), 300);
            conc_pool_iter_free(it);
        }
    }
    endpool(p);
}

Test(pool, imap_endless_input_stays_bounded, .timeout = 120)
{
    conc_pool *p = mkpool(2, CONC_START_FORKSERVER, NULL);
    struct counter c = { 0, -1, 0 };
    conc_pool_task_opts o = CONC_POOL_TASK_OPTS_INIT;
    o.chunksize = 2;
    o.window = 3;
    o.ctx = &c;
    conc_pool_iter *it;
    cr_assert_eq(conc_pool_imap(p, square, count_next, &o, &it), 0);
    for (int k = 0; k < 2000; k++) {
        int st;
        void *d;
        size_t l, idx;
        cr_assert_eq(conc_pool_iter_next(it, &st, &d, &l, &idx, GUARD), 1);
        cr_assert_eq(st, 0);
        cr_assert_eq(idx, (size_t)k);
        cr_assert_eq(arg_i64(d, l), (int64_t)k * k);
        /* At most window chunks are read ahead of what was given. */
        size_t ahead = conc_pool_iter_consumed(it) - conc_pool_iter_produced(it);
        cr_assert_leq(ahead, 3 * 2, "read %zu ahead", ahead);
    }
    conc_pool_iter_free(it);
    endpool(p);
}

/* ============================================================ callbacks */

struct cbrec {
    atomic_int ok, err;
    atomic_int last_status;
    atomic_long sum;
};

static void on_ok(conc_pool_result *r, void *ctx)
{
    struct cbrec *c = ctx;
    void *d;
    size_t l;
    /* Inside the callback the result answers without waiting. */
    if (conc_pool_result_get(r, &d, &l, 0) == 0 && conc_pool_result_count(r) == 1)
        atomic_fetch_add(&c->sum, arg_i64(d, l));
    atomic_fetch_add(&c->ok, 1);
}

static void on_err(conc_pool_result *r, void *ctx)
{
    struct cbrec *c = ctx;
    atomic_store(&c->last_status, conc_pool_result_get(r, NULL, NULL, 0));
    atomic_fetch_add(&c->err, 1);
}

/* Options that count callbacks (on_ok) and error callbacks (on_err) in c. */
static conc_pool_task_opts cb_opts(struct cbrec *c)
{
    conc_pool_task_opts o = CONC_POOL_TASK_OPTS_INIT;
    o.callback = on_ok;
    o.error_callback = on_err;
    o.ctx = c;
    return o;
}

Test(pool, callbacks_and_error_callback, .timeout = 120)
{
    conc_pool *p = mkpool(2, CONC_START_FORK, NULL);
    struct cbrec c = { 0 };
    conc_pool_task_opts o = cb_opts(&c);
    conc_pool_result *rs[21];
    for (int64_t i = 0; i < 20; i++)
        cr_assert_eq(conc_pool_apply_async(p, square, &i, sizeof i, &o, &rs[i]), 0);
    int64_t neg = -1;
    cr_assert_eq(conc_pool_apply_async(p, square, &neg, sizeof neg, &o, &rs[20]), 0);
    long want = 0;
    for (int i = 0; i < 21; i++) {
        void *d;
        size_t l;
        int st = conc_pool_result_get(rs[i], &d, &l, GUARD);
        /* get returns after the callback ran. */
        if (i < 20) {
            cr_assert_eq(st, 0);
            cr_assert_eq(arg_i64(d, l), (int64_t)i * i);
            want += i * i;
        } else {
            cr_assert_eq(st, -EDOM);
        }
        cr_assert(conc_pool_result_ready(rs[i]));
        conc_pool_result_free(rs[i]);
    }
    cr_assert_eq(atomic_load(&c.ok), 20);
    cr_assert_eq(atomic_load(&c.err), 1);
    cr_assert_eq(atomic_load(&c.last_status), -EDOM);
    cr_assert_eq(atomic_load(&c.sum), want);
    endpool(p);
}

/* Waiting on the same pool from its callback would wait for itself. */
static conc_pool *cb_pool;
static atomic_int cb_apply_rc, cb_join_rc, cb_wait_rc;
static conc_pool_result *cb_other;

static void on_ok_reenter(conc_pool_result *r, void *ctx)
{
    (void)r;
    (void)ctx;
    void *res;
    size_t len;
    int64_t v = 2;
    atomic_store(&cb_apply_rc, conc_pool_apply(cb_pool, square, &v, sizeof v, &res, &len));
    atomic_store(&cb_join_rc, conc_pool_join(cb_pool, GUARD));
    atomic_store(&cb_wait_rc, conc_pool_result_wait(cb_other, GUARD));
}

Test(pool, callback_waiting_on_its_pool_gets_edeadlk, .timeout = 120)
{
    cb_pool = mkpool(1, CONC_START_FORK, NULL);
    cr_assert_eq(conc_pool_apply_async(cb_pool, block_forever, NULL, 0, NULL, &cb_other), 0);
    /* The only worker is busy for good: this one waits in the queue. */
    conc_pool_task_opts o = CONC_POOL_TASK_OPTS_INIT;
    o.callback = on_ok_reenter;
    int64_t v = 4;
    conc_pool_result *r;
    cr_assert_eq(conc_pool_close(cb_pool), 0);
    cr_assert_eq(conc_pool_apply_async(cb_pool, square, &v, sizeof v, &o, &r), -EPIPE);
    conc_pool_free(cb_pool);
    conc_pool_result_free(cb_other);
    cb_pool = mkpool(2, CONC_START_FORK, NULL);
    cr_assert_eq(conc_pool_apply_async(cb_pool, block_forever, NULL, 0, NULL, &cb_other), 0);
    cr_assert_eq(conc_pool_apply_async(cb_pool, square, &v, sizeof v, &o, &r), 0);
    cr_assert_eq(conc_pool_result_wait(r, GUARD), 0);
    cr_assert_eq(atomic_load(&cb_apply_rc), -EDEADLK);
    cr_assert_eq(atomic_load(&cb_join_rc), -EBUSY);   /* not closed: checked first */
    cr_assert_eq(atomic_load(&cb_wait_rc), -EDEADLK);
    conc_pool_result_free(r);
    conc_pool_free(cb_pool);
    cr_assert_eq(conc_pool_result_get(cb_other, NULL, NULL, 0), -EPIPE);
    conc_pool_result_free(cb_other);
}

struct prog {
    atomic_int calls;
    atomic_size_t last_done, last_total;
    atomic_int backwards;
};

static void on_progress(void *ctx, size_t done, size_t total)
{
    struct prog *g = ctx;
    if (done < atomic_load(&g->last_done))
        atomic_fetch_add(&g->backwards, 1);
    atomic_store(&g->last_done, done);
    atomic_store(&g->last_total, total);
    atomic_fetch_add(&g->calls, 1);
}

Test(pool, progress_ends_with_done_equal_total, .timeout = 120)
{
    conc_pool *p = mkpool(2, CONC_START_FORK, NULL);
    enum { N = 2000 };
    int64_t *v = malloc(N * sizeof *v);
    conc_pool_item *items = malloc(N * sizeof *items);
    for (int i = 0; i < N; i++) {
        v[i] = i;
        items[i] = (conc_pool_item){ &v[i], sizeof v[i] };
    }
    struct prog g = { 0 };
    conc_pool_task_opts o = CONC_POOL_TASK_OPTS_INIT;
    o.chunksize = 1;
    o.progress = on_progress;
    o.ctx = &g;
    conc_pool_result *r;
    cr_assert_eq(conc_pool_map(p, square, items, N, &o, &r), 0);
    cr_assert_geq(atomic_load(&g.calls), 1);
    cr_assert_eq(atomic_load(&g.last_done), N);
    cr_assert_eq(atomic_load(&g.last_total), N);
    cr_assert_eq(atomic_load(&g.backwards), 0);
    conc_pool_result_free(r);
    free(v);
    free(items);
    endpool(p);
}

/* ============================================================ futures */

Test(pool, results_as_futures, .timeout = 120)
{
    conc_pool *p = mkpool(2, CONC_START_FORK, NULL);
    /* Asked for before the task ends, and after. */
    int64_t v = 11;
    conc_pool_result *r;
    cr_assert_eq(conc_pool_apply_async(p, square, &v, sizeof v, NULL, &r), 0);
    conc_future *f = conc_pool_result_future(r);
    cr_assert_not_null(f);
    conc_waitable w = { .kind = CONC_WAIT_FUTURE, .u.future = f };
    cr_assert_eq(conc_wait(&w, 1, GUARD), 1);
    cr_assert(w.ready);
    cr_assert(conc_pool_result_ready(r));
    void *d;
    size_t l;
    cr_assert_eq(conc_future_result(f, &d, &l, 0), 0);
    cr_assert_eq(arg_i64(d, l), 121);
    cr_assert_eq(conc_future_cancel(f), -EALREADY);
    conc_future *again = conc_pool_result_future(r);
    cr_assert_eq(again, f);
    conc_future_free(again);
    conc_pool_result_free(r);
    /* The future outlives the result. */
    cr_assert_eq(conc_future_result(f, &d, &l, 0), 0);
    cr_assert_eq(arg_i64(d, l), 121);
    conc_future_free(f);
    /* A failure: the code, and the worker's exit code as detail. */
    int64_t how = 1;
    cr_assert_eq(conc_pool_apply_async(p, die, &how, sizeof how, NULL, &r), 0);
    cr_assert_eq(conc_pool_result_wait(r, GUARD), 0);
    f = conc_pool_result_future(r);
    int err, detail;
    cr_assert_eq(conc_future_exception(f, &err, &detail, 0), 0);
    cr_assert_eq(err, -ECHILD);
    cr_assert_eq(detail, -SIGKILL);
    conc_future_free(f);
    conc_pool_result_free(r);
    /* map: done when every item is; the values stay in the result. */
    int64_t vals[20];
    conc_pool_item items[20];
    for (int i = 0; i < 20; i++) {
        vals[i] = i;
        items[i] = (conc_pool_item){ &vals[i], sizeof vals[i] };
    }
    conc_pool_result *m;
    cr_assert_eq(conc_pool_map_async(p, square, items, 20, NULL, &m), 0);
    conc_future *mf = conc_pool_result_future(m);
    conc_future *fs[1] = { mf };
    cr_assert_eq(conc_future_wait_many(fs, 1, CONC_ALL_COMPLETED, NULL, GUARD), 1);
    cr_assert_eq(conc_future_result(mf, &d, NULL, 0), 0);
    cr_assert_null(d);
    cr_assert_eq(result_i64(m, 19), 361);
    conc_future_free(mf);
    conc_pool_result_free(m);
    endpool(p);
}

/* imap's progress: the total is unknown (SIZE_MAX) until the input ends,
 * and the last report has done == total. */
struct counted_prog {
    struct counter c;
    struct prog g;
    atomic_int unknown_total;
};

static int cp_next(void *ctx, const void **arg, size_t *len)
{
    return count_next(&((struct counted_prog *)ctx)->c, arg, len);
}

static void cp_progress(void *ctx, size_t done, size_t total)
{
    struct counted_prog *cp = ctx;
    if (total == SIZE_MAX)
        atomic_fetch_add(&cp->unknown_total, 1);
    on_progress(&cp->g, done, total);
}

Test(pool, imap_progress, .timeout = 120)
{
    conc_pool *p = mkpool(2, CONC_START_FORK, NULL);
    for (int ordered = 0; ordered < 2; ordered++) {
        struct counted_prog cp = { .c = { 0, 500, 0 } };
        conc_pool_task_opts o = CONC_POOL_TASK_OPTS_INIT;
        o.ctx = &cp;
        o.progress = cp_progress;
        o.chunksize = 3;
        conc_pool_iter *it;
        cr_assert_eq((ordered ? conc_pool_imap : conc_pool_imap_unordered)(p, square, cp_next, &o,
                                                                           &it),
                     0);
        int st, n = 0;
        while (conc_pool_iter_next(it, &st, NULL, NULL, NULL, GUARD) == 1) {
            cr_assert_eq(st, 0);
            n++;
        }
        cr_assert_eq(n, 500);
        cr_assert_geq(atomic_load(&cp.g.calls), 1);
        cr_assert_eq(atomic_load(&cp.g.last_done), 500);
        cr_assert_eq(atomic_load(&cp.g.last_total), 500);
        cr_assert_eq(atomic_load(&cp.g.backwards), 0);
        conc_pool_iter_free(it);
    }
    endpool(p);
}

/* ============================================================ workers */

Test(pool, initializer_runs_in_every_worker, .timeout = 120)
{
    for (size_t m = 0; m < 3; m++) {
        conc_pool_opts po = CONC_POOL_OPTS_INIT;
        int64_t iv = 4242 + (int64_t)m;
        po.initializer = init_set;
        po.initarg = &iv;
        po.initarg_len = sizeof iv;
        conc_pool *p = mkpool(2, methods[m], &po);
        for (int i = 0; i < 6; i++) {
            void *res;
            size_t len;
            cr_assert_eq(conc_pool_apply(p, read_init, NULL, 0, &res, &len), 0);
            cr_assert_eq(arg_i64(res, len), iv);
            free(res);
        }
        endpool(p);
    }
}

Test(pool, maxtasksperchild_replaces_workers, .timeout = 120)
{
    conc_pool_opts po = CONC_POOL_OPTS_INIT;
    po.maxtasksperchild = 2;
    conc_pool *p = mkpool(1, CONC_START_FORK, &po);
    int64_t pids[6];
    for (int i = 0; i < 6; i++) {
        void *res;
        size_t len;
        cr_assert_eq(conc_pool_apply(p, my_pid, NULL, 0, &res, &len), 0);
        pids[i] = arg_i64(res, len);
        free(res);
    }
    for (int i = 0; i < 6; i += 2) {
        cr_assert_eq(pids[i], pids[i + 1], "a worker ran fewer than 2 tasks");
        if (i)
            cr_assert_neq(pids[i], pids[i - 1], "a worker ran more than 2 tasks");
    }
    endpool(p);
}

Test(pool, dead_worker_fails_its_task_only, .timeout = 120)
{
    for (size_t m = 0; m < 3; m++) {
        conc_pool *p = mkpool(2, methods[m], NULL);
        int codes[3] = { -SIGKILL, -SIGABRT, 7 };
        for (int64_t how = 1; how <= 3; how++) {
            conc_pool_result *r;
            cr_assert_eq(conc_pool_apply_async(p, die, &how, sizeof how, NULL, &r), 0);
            cr_assert_eq(conc_pool_result_get(r, NULL, NULL, GUARD), -ECHILD);
            int code = 0;
            cr_assert_eq(conc_pool_result_exitcode(r, &code), 0);
            cr_assert_eq(code, codes[how - 1], "how %d: code %d", (int)how, code);
            conc_pool_result_free(r);
            /* The pool goes on. */
            int64_t i = 9;
            void *res;
            size_t len;
            cr_assert_eq(conc_pool_apply(p, square, &i, sizeof i, &res, &len), 0);
            cr_assert_eq(arg_i64(res, len), 81);
            free(res);
        }
        endpool(p);
    }
}

/* Dies on its first run (a counter shared with the fork workers). */
static atomic_int *runs;

static int die_once(const void *arg, size_t len, void **result, size_t *rlen)
{
    if (atomic_fetch_add(runs, 1) == 0)
        raise(SIGKILL);
    return square(arg, len, result, rlen);
}

Test(pool, retries_run_the_task_again, .timeout = 120)
{
    runs = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(runs, MAP_FAILED);
    conc_pool_opts po = CONC_POOL_OPTS_INIT;
    po.retries = 1;
    conc_pool *p = mkpool(1, CONC_START_FORK, &po);
    int64_t i = 5;
    void *res;
    size_t len;
    cr_assert_eq(conc_pool_apply(p, die_once, &i, sizeof i, &res, &len), 0);
    cr_assert_eq(arg_i64(res, len), 25);
    free(res);
    cr_assert_eq(atomic_load(runs), 2);
    endpool(p);
    /* Without retries the same task fails. */
    atomic_store(runs, 0);
    p = mkpool(1, CONC_START_FORK, NULL);
    cr_assert_eq(conc_pool_apply(p, die_once, &i, sizeof i, &res, &len), -ECHILD);
    cr_assert_eq(atomic_load(runs), 1);
    endpool(p);
    munmap(runs, 4096);
}

/* Counts its runs per item in a shared page; item 150 kills its worker on
 * its first run. */
static atomic_int *item_runs;

static int count_runs(const void *arg, size_t len, void **result, size_t *rlen)
{
    int64_t i = arg_i64(arg, len);
    if (atomic_fetch_add(&item_runs[i], 1) == 0 && i == 150)
        raise(SIGKILL);
    return square(arg, len, result, rlen);
}

/* A worker streaming short tasks sends its results in batches: when it
 * dies, only the task it was running fails; the results it still held and
 * the tasks it had not started are produced by its successor. */
Test(pool, dead_worker_streaming_fails_only_the_running_task, .timeout = 120)
{
    enum { N = 400 };
    item_runs = mmap(NULL, N * sizeof *item_runs, PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(item_runs, MAP_FAILED);
    conc_pool *p = mkpool(1, CONC_START_FORK, NULL);
    int64_t v[N];
    conc_pool_item items[N];
    for (int i = 0; i < N; i++) {
        v[i] = i;
        items[i] = (conc_pool_item){ &v[i], sizeof v[i] };
    }
    conc_pool_task_opts o = CONC_POOL_TASK_OPTS_INIT;
    o.chunksize = 1;
    conc_pool_result *r = NULL;
    cr_assert_eq(conc_pool_map(p, count_runs, items, N, &o, &r), -ECHILD);
    for (int i = 0; i < N; i++) {
        cr_assert_geq(atomic_load(&item_runs[i]), 1, "item %d never ran", i);
        if (i == 150)
            continue;
        cr_assert_eq(conc_pool_result_item(r, (size_t)i, NULL, NULL), 0, "item %d", i);
        cr_assert_eq(result_i64(r, (size_t)i), (int64_t)i * i);
    }
    cr_assert_eq(conc_pool_result_item(r, 150, NULL, NULL), -ECHILD);
    cr_assert_eq(atomic_load(&item_runs[150]), 1);
    int code = 0;
    cr_assert_eq(conc_pool_result_exitcode(r, &code), 0);
    cr_assert_eq(code, -SIGKILL);
    conc_pool_result_free(r);
    endpool(p);
    munmap(item_runs, N * sizeof *item_runs);
}

/* Kills a random worker every few milliseconds until told to stop. */
static atomic_bool killer_stop;
static atomic_int kills;

static void *killer(void *arg)
{
    (void)arg;
    unsigned seed = 12345;
    while (!atomic_load(&killer_stop)) {
        conc_process *kids[64];
        int n = conc_process_active_children(kids, 64);
        if (n > 64)
            n = 64;
        if (n > 0) {
            int k = (int)(rand_r(&seed) % (unsigned)n);
            if (conc_process_kill(kids[k]) == 0)
                atomic_fetch_add(&kills, 1);
        }
        for (int i = 0; i < n; i++)
            conc_process_free(kids[i]);
        conc_sleep(0.002 + (rand_r(&seed) % 8) / 1000.0);
    }
    return NULL;
}

struct tally {
    atomic_int *seen;
    atomic_int ok, failed, wrong;
};

static struct tally tl;

static void tally_ok(conc_pool_result *r, void *ctx)
{
    intptr_t i = (intptr_t)ctx;
    void *d;
    size_t l;
    if (conc_pool_result_get(r, &d, &l, 0) != 0 || arg_i64(d, l) != (int64_t)i * i)
        atomic_fetch_add(&tl.wrong, 1);
    atomic_fetch_add(&tl.seen[i], 1);
    atomic_fetch_add(&tl.ok, 1);
}

static void tally_err(conc_pool_result *r, void *ctx)
{
    intptr_t i = (intptr_t)ctx;
    if (conc_pool_result_get(r, NULL, NULL, 0) != -ECHILD)
        atomic_fetch_add(&tl.wrong, 1);
    atomic_fetch_add(&tl.seen[i], 1);
    atomic_fetch_add(&tl.failed, 1);
}

Test(pool, random_kills_every_task_reported_once, .timeout = 600)
{
    int n = SANITIZED ? 10000 : 100000;
    int base = count_fds();
    conc_pool *p = mkpool(4, CONC_START_FORK, NULL);
    tl.seen = calloc((size_t)n, sizeof *tl.seen);
    conc_pool_result **rs = calloc((size_t)n, sizeof *rs);
    pthread_t kt;
    atomic_store(&killer_stop, false);
    cr_assert_eq(pthread_create(&kt, NULL, killer, NULL), 0);
    for (intptr_t i = 0; i < n; i++) {
        conc_pool_task_opts o = CONC_POOL_TASK_OPTS_INIT;
        o.callback = tally_ok;
        o.error_callback = tally_err;
        o.ctx = (void *)i;
        int64_t v = i;
        cr_assert_eq(conc_pool_apply_async(p, square, &v, sizeof v, &o, &rs[i]), 0);
    }
    for (int i = 0; i < n; i++) {
        int st = conc_pool_result_wait(rs[i], GUARD);
        cr_assert_eq(st, 0, "task %d not done: %s", i, conc_strerror(st));
    }
    atomic_store(&killer_stop, true);
    pthread_join(kt, NULL);
    for (int i = 0; i < n; i++) {
        cr_assert_eq(atomic_load(&tl.seen[i]), 1, "task %d reported %d times", i,
                     atomic_load(&tl.seen[i]));
        conc_pool_result_free(rs[i]);
    }
    cr_assert_eq(atomic_load(&tl.wrong), 0);
    cr_assert_eq(atomic_load(&tl.ok) + atomic_load(&tl.failed), n);
    cr_assert_gt(atomic_load(&kills), 0);
    cr_assert_leq(atomic_load(&tl.failed), atomic_load(&kills));
    /* Usable afterwards. */
    int64_t i = 12;
    void *res;
    size_t len;
    cr_assert_eq(conc_pool_apply(p, square, &i, sizeof i, &res, &len), 0);
    cr_assert_eq(arg_i64(res, len), 144);
    free(res);
    endpool(p);
    free(tl.seen);
    free(rs);
    cr_assert_eq(count_fds(), base, "descriptors leaked");
}

/* Blocking applies from several threads (the direct path, the calling
 * thread talking to an idle worker) while workers are killed: each returns
 * the right value or -ECHILD, never hangs. */
struct applier {
    conc_pool *p;
    int n, ok, died, wrong;
};

static void *applier_main(void *arg)
{
    struct applier *a = arg;
    for (int64_t i = 0; i < a->n; i++) {
        void *res;
        size_t len;
        int st = conc_pool_apply(a->p, square, &i, sizeof i, &res, &len);
        if (st == 0) {
            if (len != sizeof(int64_t) || arg_i64(res, len) != i * i)
                a->wrong++;
            free(res);
            a->ok++;
        } else if (st == -ECHILD) {
            a->died++;
        } else {
            a->wrong++;
        }
    }
    return NULL;
}

Test(pool, blocking_apply_from_threads_with_kills, .timeout = 600)
{
    int base = count_fds();
    conc_pool *p = mkpool(3, CONC_START_FORK, NULL);
    enum { T = 4 };
    struct applier a[T];
    pthread_t th[T];
    atomic_store(&killer_stop, false);
    atomic_store(&kills, 0);
    pthread_t kt;
    cr_assert_eq(pthread_create(&kt, NULL, killer, NULL), 0);
    for (int i = 0; i < T; i++) {
        a[i] = (struct applier){ p, SANITIZED ? 1000 : 10000, 0, 0, 0 };
        cr_assert_eq(pthread_create(&th[i], NULL, applier_main, &a[i]), 0);
    }
    int died = 0;
    for (int i = 0; i < T; i++) {
        pthread_join(th[i], NULL);
        cr_assert_eq(a[i].wrong, 0);
        cr_assert_eq(a[i].ok + a[i].died, a[i].n);
        died += a[i].died;
    }
    atomic_store(&killer_stop, true);
    pthread_join(kt, NULL);
    cr_assert_gt(atomic_load(&kills), 0);
    cr_assert_leq(died, atomic_load(&kills));
    int64_t v = 3;
    void *res;
    size_t len;
    cr_assert_eq(conc_pool_apply(p, square, &v, sizeof v, &res, &len), 0);
    cr_assert_eq(arg_i64(res, len), 9);
    free(res);
    endpool(p);
    cr_assert_eq(count_fds(), base, "descriptors leaked");
}

/* ============================================================ stopping */

struct getter {
    conc_pool_result *r;
    int status;
};

static void *get_thread(void *arg)
{
    struct getter *g = arg;
    g->status = conc_pool_result_get(g->r, NULL, NULL, GUARD);
    return NULL;
}

Test(pool, terminate_releases_every_waiter, .timeout = 120)
{
    int base = count_fds();
    conc_pool *p = mkpool(2, CONC_START_FORK, NULL);
    enum { W = 6 };
    struct getter g[W];
    pthread_t t[W];
    pid_t tids[W];
    for (int i = 0; i < W; i++) {
        cr_assert_eq(conc_pool_apply_async(p, block_forever, NULL, 0, NULL, &g[i].r), 0);
        g[i].status = 1;
        t[i] = spawn_tid(get_thread, &g[i], &tids[i]);
    }
    for (int i = 0; i < W; i++)
        wait_thread_blocked(tids[i], GUARD);
    cr_assert_eq(conc_pool_join(p, 0), -EBUSY);
    cr_assert_eq(conc_pool_terminate(p), 0);
    for (int i = 0; i < W; i++) {
        pthread_join(t[i], NULL);
        cr_assert_eq(g[i].status, -EPIPE, "waiter %d: %d", i, g[i].status);
        conc_pool_result_free(g[i].r);
    }
    int64_t v = 1;
    conc_pool_result *r;
    cr_assert_eq(conc_pool_apply_async(p, square, &v, sizeof v, NULL, &r), -EPIPE);
    cr_assert_eq(conc_pool_join(p, GUARD), 0);
    conc_pool_free(p);
    cr_assert_eq(conc_process_active_children(NULL, 0), 0);
    cr_assert_eq(count_fds(), base, "descriptors leaked");
}

struct blocked_apply {
    conc_pool *p;
    int status;
};

/* Blocks for good on the one byte 'x'; squares anything else. */
static int block_on_x(const void *arg, size_t len, void **result, size_t *rlen)
{
    if (len == 1 && *(const char *)arg == 'x')
        block_forever(arg, len, result, rlen);
    return square(arg, len, result, rlen);
}

static void *apply_block_thread(void *arg)
{
    struct blocked_apply *a = arg;
    void *res = NULL;
    size_t len = 0;
    a->status = conc_pool_apply(a->p, block_on_x, "x", 1, &res, &len);
    free(res);
    return NULL;
}

/* Waits until every other thread of this process sleeps (the pool's
 * thread among them: it has given its idle workers back by then). */
static void wait_other_threads_blocked(void)
{
    DIR *d = opendir("/proc/self/task");
    cr_assert_not_null(d);
    pid_t self = (pid_t)gettid();
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        pid_t tid = (pid_t)atoi(e->d_name);
        if (tid > 0 && tid != self)
            wait_thread_blocked(tid, GUARD);
    }
    closedir(d);
}

/* n threads each in a blocking apply of a task that never ends, all
 * asleep; terminate releases every one with -EPIPE, and the pool, joined
 * and freed, leaves no child and no descriptor beyond the `base` count. */
static void terminate_releases(conc_pool *p, int n, int base)
{
    struct blocked_apply a[8];
    pthread_t t[8];
    pid_t tids[8];
    cr_assert_leq(n, 8);
    for (int i = 0; i < n; i++) {
        a[i] = (struct blocked_apply){ p, 1 };
        t[i] = spawn_tid(apply_block_thread, &a[i], &tids[i]);
    }
    for (int i = 0; i < n; i++)
        wait_thread_blocked(tids[i], GUARD);
    cr_assert_eq(conc_pool_terminate(p), 0);
    for (int i = 0; i < n; i++) {
        pthread_join(t[i], NULL);
        cr_assert_eq(a[i].status, -EPIPE, "caller %d: %s", i, conc_errname(a[i].status));
    }
    cr_assert_eq(conc_pool_join(p, GUARD), 0);
    conc_pool_free(p);
    cr_assert_eq(conc_process_active_children(NULL, 0), 0);
    cr_assert_eq(count_fds(), base, "descriptors leaked");
}

/* Threads in a blocking apply talk to idle workers themselves, sleeping
 * with no timer on the slot; terminate kills those workers and the pool's
 * thread wakes each caller, whose apply gives -EPIPE. */
Test(pool, terminate_releases_callers_of_apply, .timeout = 120)
{
    int base = count_fds();
    conc_pool *p = mkpool(2, CONC_START_FORK, NULL);
    /* Both workers ready and knowing the function (a worker that does
     * not gets it on its socket first): each apply below takes one of
     * them and goes through its slot. */
    int64_t args[8];
    conc_pool_item items[8];
    for (int i = 0; i < 8; i++) {
        args[i] = i;
        items[i] = (conc_pool_item){ &args[i], sizeof args[i] };
    }
    conc_pool_task_opts to = CONC_POOL_TASK_OPTS_INIT;
    to.chunksize = 1;
    conc_pool_result *r;
    cr_assert_eq(conc_pool_map(p, block_on_x, items, 8, &to, &r), 0);
    conc_pool_result_free(r);
    wait_other_threads_blocked();
    terminate_releases(p, 2, base);
}

/* More threads in a blocking apply than workers: two talk to the workers,
 * the others' tasks wait in the queue (each on its caller's stack) and are
 * settled by the pool's thread; terminate releases all of them. */
Test(pool, terminate_releases_queued_callers_of_apply, .timeout = 120)
{
    int base = count_fds();
    conc_pool *p = mkpool(2, CONC_START_FORK, NULL);
    terminate_releases(p, 5, base);
}

Test(pool, terminate_runs_no_callback_for_dropped_tasks, .timeout = 120)
{
    /* As Python: the tasks terminate drops (the running one, killed, and
     * the queued ones) get -EPIPE and run no callback. */
    conc_pool *p = mkpool(1, CONC_START_FORK, NULL);
    struct cbrec c = { 0 };
    conc_pool_task_opts o = cb_opts(&c);
    int64_t i = 3;
    conc_pool_result *done, *rs[4];
    cr_assert_eq(conc_pool_apply_async(p, square, &i, sizeof i, &o, &done), 0);
    cr_assert_eq(conc_pool_result_wait(done, GUARD), 0);
    cr_assert_eq(atomic_load(&c.ok), 1);
    cr_assert_eq(conc_pool_apply_async(p, block_forever, NULL, 0, &o, &rs[0]), 0);
    for (int k = 1; k < 4; k++)
        cr_assert_eq(conc_pool_apply_async(p, square, &i, sizeof i, &o, &rs[k]), 0);
    cr_assert_eq(conc_pool_terminate(p), 0);
    for (int k = 0; k < 4; k++) {
        cr_assert_eq(conc_pool_result_get(rs[k], NULL, NULL, GUARD), -EPIPE, "task %d", k);
        conc_pool_result_free(rs[k]);
    }
    cr_assert_eq(conc_pool_join(p, GUARD), 0);
    cr_assert_eq(atomic_load(&c.err), 0, "error_callback ran for a dropped task");
    cr_assert_eq(atomic_load(&c.ok), 1);
    conc_pool_result_free(done);
    conc_pool_free(p);
}

Test(pool, close_finishes_queued_tasks, .timeout = 120)
{
    conc_pool *p = mkpool(2, CONC_START_FORKSERVER, NULL);
    conc_pool_result *rs[50];
    for (int64_t i = 0; i < 50; i++)
        cr_assert_eq(conc_pool_apply_async(p, square, &i, sizeof i, NULL, &rs[i]), 0);
    cr_assert_eq(conc_pool_close(p), 0);
    int64_t v = 1;
    conc_pool_result *r;
    cr_assert_eq(conc_pool_apply_async(p, square, &v, sizeof v, NULL, &r), -EPIPE);
    cr_assert_eq(conc_pool_join(p, GUARD), 0);
    for (int i = 0; i < 50; i++) {
        void *d;
        size_t l;
        cr_assert_eq(conc_pool_result_get(rs[i], &d, &l, 0), 0);
        cr_assert_eq(arg_i64(d, l), (int64_t)i * i);
        conc_pool_result_free(rs[i]);
    }
    conc_pool_free(p);
    cr_assert_eq(conc_process_active_children(NULL, 0), 0);
}

/* A close while a blocking apply talks to a worker directly: the pool
 * still ends once that apply is answered. */
static int gate_fds[2] = { -1, -1 }, running_fds[2] = { -1, -1 };

static int wait_gate(const void *arg, size_t len, void **result, size_t *rlen)
{
    char c = 'r';
    if (write(running_fds[1], &c, 1) != 1 || read(gate_fds[0], &c, 1) != 1)
        return -EIO;
    return square(arg, len, result, rlen);
}

struct gated {
    conc_pool *p;
    int status;
};

static void *gated_apply(void *arg)
{
    struct gated *g = arg;
    int64_t v = 8;
    void *res;
    size_t len;
    g->status = conc_pool_apply(g->p, wait_gate, &v, sizeof v, &res, &len);
    if (g->status == 0) {
        if (arg_i64(res, len) != 64)
            g->status = -EPROTO;
        free(res);
    }
    return NULL;
}

Test(pool, close_during_a_direct_apply, .timeout = 120)
{
    cr_assert_eq(pipe(gate_fds), 0);
    cr_assert_eq(pipe(running_fds), 0);
    conc_pool *p = mkpool(1, CONC_START_FORK, NULL);
    int64_t v = 1;
    void *res;
    size_t len;
    cr_assert_eq(conc_pool_apply(p, square, &v, sizeof v, &res, &len), 0);     /* ready */
    free(res);
    struct gated g = { p, 1 };
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, gated_apply, &g), 0);
    char c;
    cr_assert_eq(read(running_fds[0], &c, 1), 1);
    cr_assert_eq(conc_pool_close(p), 0);
    cr_assert_eq(write(gate_fds[1], "g", 1), 1);
    pthread_join(t, NULL);
    cr_assert_eq(g.status, 0);
    cr_assert_eq(conc_pool_join(p, GUARD), 0);
    conc_pool_free(p);
    cr_assert_eq(conc_process_active_children(NULL, 0), 0);
    for (int i = 0; i < 2; i++) {
        close(gate_fds[i]);
        close(running_fds[i]);
    }
}

/* A result of arg MiB, every byte 0x5a. */
static int big_result(const void *arg, size_t len, void **result, size_t *rlen)
{
    size_t n = (size_t)arg_i64(arg, len) << 20;
    void *b = malloc(n);
    if (!b)
        return -ENOMEM;
    memset(b, 0x5a, n);
    *result = b;
    *rlen = n;
    return 0;
}

Test(pool, chunk_results_over_the_frame_limit, .timeout = 120)
{
    /* Three results of 48 MiB in one chunk: each is under
     * CONC_POOL_ARG_MAX, together they are more than one answer may carry.
     * The one that does not fit fails with -EMSGSIZE; the worker is not
     * taken for a broken one (-ECHILD for all three). */
    conc_pool *p = mkpool(1, CONC_START_FORK, NULL);
    int64_t mib[3] = { 48, 48, 48 };
    conc_pool_item items[3];
    for (int i = 0; i < 3; i++)
        items[i] = (conc_pool_item){ &mib[i], sizeof mib[i] };
    conc_pool_task_opts o = CONC_POOL_TASK_OPTS_INIT;
    o.chunksize = 3;
    conc_pool_result *r = NULL;
    cr_assert_eq(conc_pool_map(p, big_result, items, 3, &o, &r), -EMSGSIZE);
    for (size_t i = 0; i < 2; i++) {
        void *d;
        size_t l;
        cr_assert_eq(conc_pool_result_item(r, i, &d, &l), 0, "item %zu", i);
        cr_assert_eq(l, (size_t)48 << 20);
        cr_assert_eq(((unsigned char *)d)[0], 0x5a);
        cr_assert_eq(((unsigned char *)d)[l - 1], 0x5a);
    }
    cr_assert_eq(conc_pool_result_item(r, 2, NULL, NULL), -EMSGSIZE);
    conc_pool_result_free(r);
    endpool(p);
}

/* The length of its argument and its last byte. */
static int arg_len(const void *arg, size_t len, void **result, size_t *rlen)
{
    int64_t v = (int64_t)len * 256 + (len ? ((const unsigned char *)arg)[len - 1] : 0);
    return give_i64(v, result, rlen);
}

Test(pool, map_chunk_args_over_the_frame_limit, .timeout = 120)
{
    /* Three arguments of 60 MiB, each under CONC_POOL_ARG_MAX, asked for
     * as one chunk: map splits what one task cannot carry instead of
     * refusing the call. */
    conc_pool *p = mkpool(2, CONC_START_FORK, NULL);
    size_t big = (size_t)60 << 20;
    conc_pool_item items[4];
    unsigned char *bufs[3];
    for (int i = 0; i < 3; i++) {
        bufs[i] = malloc(big);
        cr_assert_not_null(bufs[i]);
        memset(bufs[i], i + 1, big);
        items[i] = (conc_pool_item){ bufs[i], big };
    }
    unsigned char small = 9;
    items[3] = (conc_pool_item){ &small, 1 };
    conc_pool_task_opts o = CONC_POOL_TASK_OPTS_INIT;
    o.chunksize = 4;
    conc_pool_result *r = NULL;
    cr_assert_eq(conc_pool_map(p, arg_len, items, 4, &o, &r), 0);
    cr_assert_eq(conc_pool_result_count(r), 4);
    for (size_t i = 0; i < 3; i++)
        cr_assert_eq(result_i64(r, i), (int64_t)big * 256 + (int64_t)i + 1, "item %zu", i);
    cr_assert_eq(result_i64(r, 3), 256 + 9);
    conc_pool_result_free(r);
    for (int i = 0; i < 3; i++)
        free(bufs[i]);
    endpool(p);
}

/* imap's input: n arguments of `big` bytes (one buffer, refilled with the
 * byte i + 1 on each call: the bytes are valid until the next call only),
 * then one byte 9. */
struct big_input {
    unsigned char *buf;
    size_t big;
    int i, n;
    unsigned char small;
};

static int big_next(void *ctx, const void **arg, size_t *len)
{
    struct big_input *b = ctx;
    if (b->i > b->n)
        return 0;
    if (b->i == b->n) {
        b->small = 9;
        *arg = &b->small;
        *len = 1;
    } else {
        memset(b->buf, b->i + 1, b->big);
        *arg = b->buf;
        *len = b->big;
    }
    b->i++;
    return 1;
}

Test(pool, imap_chunk_args_over_the_frame_limit, .timeout = 120)
{
    /* Three arguments of 50 MiB and a small one, chunksize 4: more bytes
     * than one task carries.  imap starts a new chunk instead of failing
     * with -EINVAL, and every result comes, in order. */
    conc_pool *p = mkpool(2, CONC_START_FORK, NULL);
    struct big_input in = { NULL, (size_t)50 << 20, 0, 3, 0 };
    in.buf = malloc(in.big);
    cr_assert_not_null(in.buf);
    conc_pool_task_opts o = CONC_POOL_TASK_OPTS_INIT;
    o.chunksize = 4;
    conc_pool_iter *it;
    o.ctx = &in;
    cr_assert_eq(conc_pool_imap(p, arg_len, big_next, &o, &it), 0);
    for (int64_t i = 0; i < 4; i++) {
        int st = 1;
        void *d = NULL;
        size_t l = 0, idx = 99;
        cr_assert_eq(conc_pool_iter_next(it, &st, &d, &l, &idx, GUARD), 1, "result %d", (int)i);
        cr_assert_eq(st, 0, "result %d: %s", (int)i, conc_strerror(st));
        cr_assert_eq(idx, (size_t)i);
        int64_t want = i < 3 ? (int64_t)in.big * 256 + i + 1 : 256 + 9;
        cr_assert_eq(arg_i64(d, l), want, "result %d", (int)i);
    }
    int st;
    cr_assert_eq(conc_pool_iter_next(it, &st, NULL, NULL, NULL, GUARD), 0);
    conc_pool_iter_free(it);
    free(in.buf);
    endpool(p);
}

/* ============================================================ corrupt worker */

/* A fork worker's channel to its pool: the Unix socket its parent made. */
static int worker_channel(void)
{
    for (int fd = 3; fd < 1024; fd++) {
        struct ucred cr;
        socklen_t cl = sizeof cr;
        int dom = 0;
        socklen_t dl = sizeof dom;
        if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &dom, &dl) == 0 && dom == AF_UNIX &&
            getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &cl) == 0 && cr.pid == getppid())
            return fd;
    }
    return -1;
}

/* Sends the pool frames of the kind its argument names (an int64), 4096
 * per write: kind 10 (READY) without end, a worker that floods its channel
 * with status frames; any other kind once, then it sleeps until killed, a
 * broken worker that stays alive. */
static int forge_frames(const void *arg, size_t len, void **result, size_t *rlen)
{
    (void)result;
    (void)rlen;
    int64_t kind = arg_i64(arg, len);
    int fd = worker_channel();
    if (fd < 0)
        return -ENOTSOCK;
    static struct {
        uint32_t kind, n;
        uint64_t len;
    } frs[4096];
    for (size_t i = 0; i < 4096; i++)
        frs[i].kind = (uint32_t)kind;
    while (kind == 10)
        if (write(fd, frs, sizeof frs) < 0 && errno != EINTR)
            break;
    if (kind != 10 && write(fd, frs, sizeof frs[0]) != (ssize_t)sizeof frs[0])
        return -EIO;
    for (;;)
        pause();
}

static const int64_t READY_KIND = 10, BAD_KIND = 99;

Test(pool, worker_flooding_status_frames_is_ended, .timeout = 120)
{
    /* A second READY breaks the protocol: the worker is ended and its task
     * fails, the pool's thread is not held reading the flood, and the pool
     * goes on.  The flood too through a blocking apply, and at terminate. */
    conc_pool *p = mkpool(1, CONC_START_FORK, NULL);
    conc_pool_result *r;
    cr_assert_eq(conc_pool_apply_async(p, forge_frames, &READY_KIND, sizeof READY_KIND, NULL, &r), 0);
    cr_assert_eq(conc_pool_result_get(r, NULL, NULL, GUARD), -ECHILD);
    conc_pool_result_free(r);
    int64_t i = 7;
    void *res = NULL;
    size_t len;
    cr_assert_eq(conc_pool_apply(p, square, &i, sizeof i, &res, &len), 0);
    cr_assert_eq(arg_i64(res, len), 49);
    free(res);
    res = NULL;
    cr_assert_eq(conc_pool_apply(p, forge_frames, &READY_KIND, sizeof READY_KIND, &res, &len), -ECHILD);
    cr_assert_null(res);
    cr_assert_eq(conc_pool_apply(p, square, &i, sizeof i, &res, &len), 0);
    cr_assert_eq(arg_i64(res, len), 49);
    free(res);
    endpool(p);
}

/* A result of the size the argument gives (an int64), byte k = k * 7. */
static int sized_result(const void *arg, size_t len, void **result, size_t *rlen)
{
    size_t n = (size_t)arg_i64(arg, len);
    unsigned char *b = malloc(n ? n : 1);
    if (!b)
        return -ENOMEM;
    for (size_t k = 0; k < n; k++)
        b[k] = (unsigned char)(k * 7);
    *result = b;
    *rlen = n;
    return 0;
}

Test(pool, blocking_apply_sizes_and_dead_workers, .timeout = 120)
{
    /* Around the sizes a blocking apply carries in the page it shares with
     * the worker (16 KiB each way) and well over them, both ways, for
     * every start method; a worker that dies in a blocking apply gives
     * -ECHILD and is replaced. */
    static const size_t sizes[] = { 0, 1, 8, 16383, 16384, 16385, 65536, 1u << 20 };
    for (size_t m = 0; m < 3; m++) {
        conc_pool *p = mkpool(1, methods[m], NULL);
        for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
            size_t n = sizes[k];
            unsigned char *a = malloc(n ? n : 1);
            cr_assert_not_null(a);
            for (size_t j = 0; j < n; j++)
                a[j] = (unsigned char)(j * 13 + k);
            void *res = NULL;
            size_t len = 1;
            cr_assert_eq(conc_pool_apply(p, echo, a, n, &res, &len), 0, "echo %zu", n);
            cr_assert_eq(len, n);
            cr_assert(n == 0 || memcmp(res, a, n) == 0, "echo %zu: other bytes", n);
            free(res);
            free(a);
            int64_t want = (int64_t)n;
            res = NULL;
            cr_assert_eq(conc_pool_apply(p, sized_result, &want, sizeof want, &res, &len), 0);
            cr_assert_eq(len, n);
            for (size_t j = 0; j < n; j++)
                cr_assert_eq(((unsigned char *)res)[j], (unsigned char)(j * 7), "byte %zu of %zu", j, n);
            free(res);
        }
        for (int64_t how = 1; how <= 3; how++) {
            void *res = NULL;
            size_t len;
            cr_assert_eq(conc_pool_apply(p, die, &how, sizeof how, &res, &len), -ECHILD);
            cr_assert_null(res);
            int64_t i = -3;
            cr_assert_eq(conc_pool_apply(p, square, &i, sizeof i, &res, &len), -EDOM);
            i = 12;
            cr_assert_eq(conc_pool_apply(p, square, &i, sizeof i, &res, &len), 0);
            cr_assert_eq(arg_i64(res, len), 144);
            free(res);
        }
        endpool(p);
    }
}

Test(pool, corrupt_frame_ends_its_worker, .timeout = 120)
{
    conc_pool *p = mkpool(1, CONC_START_FORK, NULL);
    int64_t i = 9;
    void *res = NULL;
    size_t len;
    for (int round = 0; round < 2; round++) {
        /* An idle, ready worker: the blocking apply talks to it directly. */
        cr_assert_eq(conc_pool_apply(p, square, &i, sizeof i, &res, &len), 0);
        cr_assert_eq(arg_i64(res, len), 81);
        free(res);
        res = NULL;
        cr_assert_eq(conc_pool_apply(p, forge_frames, &BAD_KIND, sizeof BAD_KIND, &res, &len), -ECHILD);
        cr_assert_null(res);
        /* Through the pool's thread. */
        conc_pool_result *r;
        cr_assert_eq(conc_pool_apply_async(p, forge_frames, &BAD_KIND, sizeof BAD_KIND, NULL, &r), 0);
        cr_assert_eq(conc_pool_result_get(r, NULL, NULL, GUARD), -ECHILD);
        conc_pool_result_free(r);
    }
    endpool(p);
}

Test(pool, free_without_close_and_bad_arguments, .timeout = 120)
{
    conc_pool *p = NULL;
    cr_assert_eq(conc_pool_new(NULL, NULL), -EINVAL);
    cr_assert_eq(conc_pool_new(&p, &(conc_pool_opts){ .size = sizeof(conc_pool_opts),
                                                       .processes = -1 }),
                 -EINVAL);
    cr_assert_eq(conc_pool_new(&p, &(conc_pool_opts){ .size = sizeof(conc_pool_opts),
                                                       .method = (conc_start_method)9 }),
                 -EINVAL);
    cr_assert_null(p);
    p = mkpool(1, CONC_START_FORK, NULL);
    void *res;
    size_t len;
    conc_pool_result *r;
    cr_assert_eq(conc_pool_apply(p, NULL, NULL, 0, &res, &len), -EINVAL);
    cr_assert_eq(conc_pool_apply(p, square, NULL, 4, &res, &len), -EINVAL);
    cr_assert_eq(conc_pool_apply_async(NULL, square, NULL, 0, NULL, &r), -EINVAL);
    cr_assert_eq(conc_pool_map_async(p, square, NULL, 3, NULL, &r), -EINVAL);
    cr_assert_eq(conc_pool_result_wait(NULL, 0), -EINVAL);
    cr_assert_eq(conc_pool_close(NULL), -EINVAL);
    cr_assert_eq(conc_pool_join(NULL, 0), -EINVAL);
    cr_assert_not(conc_pool_result_ready(NULL));
    /* A result not ready yet. */
    cr_assert_eq(conc_pool_apply_async(p, block_forever, NULL, 0, NULL, &r), 0);
    cr_assert_eq(conc_pool_result_get(r, NULL, NULL, 0), -EAGAIN);
    cr_assert_eq(conc_pool_result_wait(r, 0.01), -ETIMEDOUT);
    cr_assert_eq(conc_pool_result_successful(r), -EBUSY);
    cr_assert_eq(conc_pool_result_wait(r, NAN), -EINVAL);
    /* Free terminates; the result is released with -EPIPE. */
    conc_pool_free(p);
    cr_assert_eq(conc_pool_result_get(r, NULL, NULL, 0), -EPIPE);
    conc_pool_result_free(r);
    conc_pool_free(NULL);
    cr_assert_eq(conc_process_active_children(NULL, 0), 0);
}

/* Whether pid ended (gone, or a zombie for its new parent to reap) within
 * guard seconds. */
static bool await_gone(pid_t pid, double guard)
{
    int64_t end = conc_now() + (int64_t)(guard * 1e9);
    for (;;) {
        char path[64], st = 0;
        snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
        FILE *f = fopen(path, "r");
        if (!f)
            return true;
        if (fscanf(f, "%*d %*s %c", &st) != 1)
            st = 0;
        fclose(f);
        if (st == 'Z' || st == 'X')
            return true;
        if (conc_now() > end)
            return false;
        conc_sleep(0.005);
    }
}

/* The owner of a pool (a spawned process, so that it starts threads in a
 * fresh image): writes its workers' pids to the descriptor in arg, then
 * waits to be killed. */
static int pool_owner(const void *arg, size_t len)
{
    int fd;
    if (len != sizeof fd)
        return 1;
    memcpy(&fd, arg, sizeof fd);
    /* A program started in the background by a shell without job control
     * has SIGINT ignored, and an ignored signal stays ignored across exec
     * (so in this spawned process too): the test's SIGINT must end it. */
    signal(SIGINT, SIG_DFL);
    conc_pool *p;
    if (conc_pool_new(&p, &(conc_pool_opts){ .size = sizeof(conc_pool_opts), .processes = 2,
                                              .method = CONC_START_FORKSERVER }))
        return 2;
    conc_pool_result *r;
    if (conc_pool_apply_async(p, block_forever, NULL, 0, NULL, &r))
        return 3;
    conc_process *kids[8];
    int n = conc_process_active_children(kids, 8);
    for (int i = 0; i < n && i < 8; i++) {
        pid_t k = conc_process_pid(kids[i]);
        if (write(fd, &k, sizeof k) != sizeof k)
            return 4;
    }
    close(fd);
    for (;;)
        pause();
}

/* The parent's death (here by SIGINT) takes the workers with it. */
Test(pool, workers_end_with_their_parent, .timeout = 120)
{
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    conc_process_opts po = CONC_PROCESS_OPTS_INIT;
    po.method = CONC_START_SPAWN;
    po.pass_fds = &fds[1];
    po.npass_fds = 1;
    conc_process *owner;
    cr_assert_eq(conc_process_new(&owner, pool_owner, &fds[1], sizeof fds[1], &po), 0);
    cr_assert_eq(conc_process_start(owner), 0);
    close(fds[1]);
    pid_t kids[8];
    int n = 0;
    while (n < 8 && read(fds[0], &kids[n], sizeof kids[n]) == sizeof kids[n])
        n++;
    close(fds[0]);
    /* Two workers; with forkserver its server process is a child too. */
    cr_assert_geq(n, 2);
    cr_assert_eq(kill(conc_process_pid(owner), SIGINT), 0);
    if (conc_process_join(owner, GUARD) != 0) {
        /* Say why it lives on: the signal ignored, or blocked. */
        char path[64], line[128], why[256] = "";
        snprintf(path, sizeof path, "/proc/%d/status", (int)conc_process_pid(owner));
        FILE *f = fopen(path, "r");
        while (f && fgets(line, sizeof line, f))
            if (!strncmp(line, "SigIgn", 6) || !strncmp(line, "SigBlk", 6) ||
                !strncmp(line, "SigPnd", 6) || !strncmp(line, "ShdPnd", 6))
                strncat(why, line, sizeof why - strlen(why) - 1);
        if (f)
            fclose(f);
        conc_process_kill(owner);
        cr_assert_fail("the owner outlived SIGINT: %s", why);
    }
    int code = 0;
    cr_assert_eq(conc_process_exitcode(owner, &code), 0);
    cr_assert_eq(code, -SIGINT);
    conc_process_free(owner);
    /* Each worker goes (they are not our children: they end, and init
     * reaps them). */
    for (int i = 0; i < n; i++)
        cr_assert(await_gone(kids[i], GUARD), "worker %d still runs", (int)kids[i]);
}

/* ============================================================ coroutines */

static conc_pool *cpool_shared;
static atomic_int coro_ticks;

static void *coro_apply(void *arg)
{
    int64_t v = (intptr_t)arg;
    void *res;
    size_t len;
    int st = conc_pool_apply(cpool_shared, square, &v, sizeof v, &res, &len);
    if (st)
        return (void *)(intptr_t)st;
    int64_t got = arg_i64(res, len);
    free(res);
    return (void *)(intptr_t)(got == v * v ? 0 : -EPROTO);
}

static void *coro_tick(void *arg)
{
    (void)arg;
    for (int i = 0; i < 5; i++) {
        conc_sleep(0.001);
        atomic_fetch_add(&coro_ticks, 1);
    }
    return NULL;
}

Test(pool_coro, apply_parks_only_the_greenlet, .timeout = 120)
{
    cpool_shared = mkpool(2, CONC_START_FORK, NULL);
    conc_greenlet *g[4], *t;
    for (intptr_t i = 0; i < 4; i++)
        cr_assert_eq(conc_greenlet_spawn(&g[i], coro_apply, (void *)(i + 3), NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&t, coro_tick, NULL, NULL), 0);
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(conc_greenlet_join(g[i], GUARD), 0);
        void *r;
        cr_assert_eq(conc_greenlet_result(g[i], &r), 0);
        cr_assert_eq((intptr_t)r, 0);
        conc_greenlet_free(g[i]);
    }
    cr_assert_eq(conc_greenlet_join(t, GUARD), 0);
    cr_assert_eq(atomic_load(&coro_ticks), 5);
    conc_greenlet_free(t);
    endpool(cpool_shared);
}

/* A greenlet killed while it waits in apply on the direct path: apply
 * gives -ECANCELED, the task goes on in its worker, and the pool still
 * works and stops cleanly. */
static int signal_fd = -1;

static int signal_then_block(const void *arg, size_t len, void **result, size_t *rlen)
{
    (void)arg;
    (void)len;
    (void)result;
    (void)rlen;
    char c = 'r';
    if (write(signal_fd, &c, 1) != 1)
        return -EIO;
    for (;;)
        pause();
}

static void *coro_apply_block(void *arg)
{
    (void)arg;
    void *res;
    size_t len;
    int st = conc_pool_apply(cpool_shared, signal_then_block, NULL, 0, &res, &len);
    return (void *)(intptr_t)st;
}

Test(pool_coro, killed_greenlet_in_apply, .timeout = 120)
{
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    signal_fd = fds[1];
    cpool_shared = mkpool(2, CONC_START_FORK, NULL);
    /* Both workers ready (so the greenlet's apply takes the direct path). */
    for (int i = 0; i < 4; i++) {
        int64_t v = i;
        void *res;
        size_t len;
        cr_assert_eq(conc_pool_apply(cpool_shared, square, &v, sizeof v, &res, &len), 0);
        free(res);
    }
    conc_greenlet *g;
    cr_assert_eq(conc_greenlet_spawn(&g, coro_apply_block, NULL, NULL), 0);
    /* The greenlet runs once the main coroutine waits; a worker then
     * holds its task and says so. */
    struct pollfd pf = { fds[0], POLLIN, 0 };
    cr_assert_eq(conc_fd_wait(pf.fd, POLLIN, GUARD), 0);
    char c;
    cr_assert_eq(read(fds[0], &c, 1), 1);
    cr_assert_eq(conc_greenlet_kill(g), 0);
    cr_assert_eq(conc_greenlet_join(g, GUARD), 0);
    void *r;
    cr_assert_eq(conc_greenlet_result(g, &r), 0);
    cr_assert_eq((intptr_t)r, -ECANCELED);
    conc_greenlet_free(g);
    /* The other worker still serves. */
    int64_t v = 6;
    void *res;
    size_t len;
    cr_assert_eq(conc_pool_apply(cpool_shared, square, &v, sizeof v, &res, &len), 0);
    cr_assert_eq(arg_i64(res, len), 36);
    free(res);
    cr_assert_eq(conc_pool_terminate(cpool_shared), 0);
    cr_assert_eq(conc_pool_join(cpool_shared, GUARD), 0);
    conc_pool_free(cpool_shared);
    cr_assert_eq(conc_process_active_children(NULL, 0), 0);
    close(fds[0]);
    close(fds[1]);
}

/* ============================================================ thread pool */

static int tp_square(void *arg, void **result)
{
    intptr_t v = (intptr_t)arg;
    if (v < 0)
        return -EDOM;
    *result = (void *)(v * v);
    return 0;
}

static _Thread_local intptr_t tp_init_value;

static void tp_init(void *arg)
{
    tp_init_value = (intptr_t)arg;
}

static int tp_read_init(void *arg, void **result)
{
    (void)arg;
    *result = (void *)tp_init_value;
    return 0;
}

static atomic_int tp_gate, tp_running;

static int tp_block(void *arg, void **result)
{
    (void)arg;
    (void)result;
    atomic_store(&tp_running, 1);
    while (!atomic_load(&tp_gate))
        conc_sleep(0.001);
    return 0;
}

struct tcounter {
    intptr_t next, limit;
};

static int tcount_next(void *ctx, const void **arg, size_t *len)
{
    struct tcounter *c = ctx;
    if (c->limit >= 0 && c->next >= c->limit)
        return 0;
    *arg = (const void *)c->next++;
    *len = 0;
    return 1;
}

Test(threadpool, values_callbacks_imap, .timeout = 120)
{
    conc_threadpool *p;
    cr_assert_eq(conc_threadpool_new(&p, &(conc_threadpool_opts){
                                             .size = sizeof(conc_threadpool_opts), .threads = 3,
                                             .initializer = tp_init, .initarg = (void *)77 }),
                 0);
    cr_assert_eq(conc_threadpool_threads(p), 3);
    void *res;
    cr_assert_eq(conc_threadpool_apply(p, tp_square, (void *)7, &res), 0);
    cr_assert_eq((intptr_t)res, 49);
    cr_assert_eq(conc_threadpool_apply(p, tp_square, (void *)-7, &res), -EDOM);
    cr_assert_eq(conc_threadpool_apply(p, tp_read_init, NULL, &res), 0);
    cr_assert_eq((intptr_t)res, 77);
    enum { N = 500 };
    conc_pool_item items[N];
    for (intptr_t i = 0; i < N; i++)
        items[i] = (conc_pool_item){ (void *)i, 0 };
    struct prog g = { 0 };
    conc_pool_task_opts o = CONC_POOL_TASK_OPTS_INIT;
    o.chunksize = 3;
    o.progress = on_progress;
    o.ctx = &g;
    conc_pool_result *r;
    cr_assert_eq(conc_threadpool_map(p, tp_square, items, N, &o, &r), 0);
    for (intptr_t i = 0; i < N; i++) {
        void *d;
        cr_assert_eq(conc_pool_result_item(r, (size_t)i, &d, NULL), 0);
        cr_assert_eq((intptr_t)d, i * i);
    }
    cr_assert_eq(atomic_load(&g.last_done), N);
    cr_assert_eq(atomic_load(&g.backwards), 0);
    conc_pool_result_free(r);
    struct cbrec c = { 0 };
    conc_pool_task_opts co = CONC_POOL_TASK_OPTS_INIT;
    co.callback = on_ok;
    co.error_callback = on_err;
    co.ctx = &c;
    conc_pool_result *a, *b;
    cr_assert_eq(conc_threadpool_apply_async(p, tp_square, (void *)5, &co, &a), 0);
    cr_assert_eq(conc_threadpool_apply_async(p, tp_square, (void *)-5, &co, &b), 0);
    cr_assert_eq(conc_pool_result_wait(a, GUARD), 0);
    cr_assert_eq(conc_pool_result_get(b, NULL, NULL, GUARD), -EDOM);
    cr_assert_eq(atomic_load(&c.ok), 1);
    cr_assert_eq(atomic_load(&c.err), 1);
    conc_pool_result_free(a);
    conc_pool_result_free(b);
    for (int ordered = 0; ordered < 2; ordered++) {
        struct tcounter tc = { 0, -1 };
        conc_pool_task_opts io = CONC_POOL_TASK_OPTS_INIT;
        io.ctx = &tc;
        io.window = 4;
        conc_pool_iter *it;
        cr_assert_eq((ordered ? conc_threadpool_imap : conc_threadpool_imap_unordered)(
                         p, tp_square, tcount_next, &io, &it),
                     0);
        for (int k = 0; k < 1000; k++) {
            int st;
            void *d;
            size_t idx;
            cr_assert_eq(conc_pool_iter_next(it, &st, &d, NULL, &idx, GUARD), 1);
            cr_assert_eq(st, 0);
            if (ordered)
                cr_assert_eq(idx, (size_t)k);
            cr_assert_eq((intptr_t)d, (intptr_t)(idx * idx));
            cr_assert_leq(conc_pool_iter_consumed(it) - conc_pool_iter_produced(it), 4);
        }
        conc_pool_iter_free(it);
    }
    cr_assert_eq(conc_threadpool_close(p), 0);
    cr_assert_eq(conc_threadpool_join(p, GUARD), 0);
    conc_threadpool_free(p);
}

Test(threadpool, terminate_releases_queued_waiters, .timeout = 120)
{
    conc_threadpool *p;
    cr_assert_eq(conc_threadpool_new(&p, &(conc_threadpool_opts){
                                             .size = sizeof(conc_threadpool_opts), .threads = 1 }),
                 0);
    atomic_store(&tp_gate, 0);
    /* As Python's terminate, ours runs no callback or error_callback for
     * the tasks it drops (its get waits forever; ours gives -EPIPE). */
    struct cbrec c = { 0 };
    conc_pool_task_opts o = cb_opts(&c);
    conc_pool_result *running, *queued[5];
    cr_assert_eq(conc_threadpool_apply_async(p, tp_block, NULL, NULL, &running), 0);
    while (!atomic_load(&tp_running))
        conc_sleep(0.001);              /* until the worker runs it */
    for (int i = 0; i < 5; i++)
        cr_assert_eq(conc_threadpool_apply_async(p, tp_square, (void *)1, &o, &queued[i]), 0);
    cr_assert_eq(conc_threadpool_join(p, 0), -EBUSY);
    cr_assert_eq(conc_threadpool_terminate(p), 0);
    int ran = 0;
    for (int i = 0; i < 5; i++) {
        /* Unless the worker took it before terminate. */
        int st = conc_pool_result_get(queued[i], NULL, NULL, GUARD);
        cr_assert(st == -EPIPE || st == 0);
        ran += st == 0;
        conc_pool_result_free(queued[i]);
    }
    cr_assert_eq(atomic_load(&c.err), 0, "error_callback ran for a dropped task");
    cr_assert_eq(atomic_load(&c.ok), ran);
    cr_assert_eq(conc_threadpool_apply_async(p, tp_square, (void *)1, NULL, &queued[0]), -EPIPE);
    atomic_store(&tp_gate, 1);
    cr_assert_eq(conc_pool_result_get(running, NULL, NULL, GUARD), 0);
    conc_pool_result_free(running);
    cr_assert_eq(conc_threadpool_join(p, GUARD), 0);
    conc_threadpool_free(p);
}
