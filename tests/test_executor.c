/*
 * test_executor.c - ThreadPoolExecutor and ProcessPoolExecutor
 * (conc/executor.h): submit and its futures, the worker limit, the
 * initializer, cancel semantics on queued and running calls, shutdown with
 * and without waiting and cancelling, map's order and bounded read-ahead,
 * waits over executor futures, coroutines, and killed process workers.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include "conc/executor.h"
#include "conc/future.h"
#include "conc/hub.h"
#include "conc/sync.h"
#include "conc/wait.h"
#include "support/wait_helpers.h"
#include "support/fd_count.h"
#include "support/sanitized.h"

static conc_executor *mk_threads(int max_workers)
{
    conc_executor_opts o = CONC_EXECUTOR_OPTS_INIT;
    o.max_workers = max_workers;
    conc_executor *ex = NULL;
    cr_assert_eq(conc_executor_new(&ex, &o), 0);
    cr_assert_not_null(ex);
    return ex;
}

static int square(void *arg, void **result)
{
    intptr_t x = (intptr_t)arg;
    *result = (void *)(x * x);
    return 0;
}

static int fail_with(void *arg, void **result)
{
    *result = (void *)1;        /* ignored: the call failed */
    return (int)(intptr_t)arg;
}

/* A gate the calls wait at, and a count of calls inside. */
static conc_event gate;
static int inside_now, inside_max, started;

static int gated(void *arg, void **result)
{
    int n = __atomic_add_fetch(&inside_now, 1, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&started, 1, __ATOMIC_SEQ_CST);
    int m = __atomic_load_n(&inside_max, __ATOMIC_SEQ_CST);
    while (n > m && !__atomic_compare_exchange_n(&inside_max, &m, n, false, __ATOMIC_SEQ_CST,
                                                 __ATOMIC_SEQ_CST))
        ;
    conc_event_wait(&gate, CONC_FOREVER);
    __atomic_sub_fetch(&inside_now, 1, __ATOMIC_SEQ_CST);
    *result = arg;
    return 0;
}

static void gate_reset(void)
{
    conc_event_init(&gate, 0);
    inside_now = inside_max = started = 0;
}

Test(executor, new_and_bad_options)
{
    conc_executor *ex;
    cr_assert_eq(conc_executor_new(&ex, NULL), 0);
    int cpus = conc_process_cpu_count();
    cr_assert_eq(conc_executor_max_workers(ex), cpus + 4 < 32 ? cpus + 4 : 32);
    cr_assert_eq(conc_executor_kind_of(ex), CONC_EXECUTOR_THREADS);
    cr_assert_eq(conc_executor_free(ex), 0);
    cr_assert_eq(conc_executor_new(NULL, NULL), -EINVAL);
    cr_assert_eq(conc_executor_new(&ex, &(conc_executor_opts){ .max_workers = -1 }), -EINVAL);
    cr_assert_eq(conc_executor_new(&ex, &(conc_executor_opts){
                                            .max_workers = CONC_EXECUTOR_MAX_WORKERS + 1 }),
                 -EINVAL);
    cr_assert_eq(conc_executor_new(&ex, &(conc_executor_opts){ .kind = 7 }), -EINVAL);
    cr_assert_eq(conc_executor_new(&ex, &(conc_executor_opts){ .initarg_len = 3 }), -EINVAL);
    cr_assert_eq(conc_executor_max_workers(NULL), 0);
    cr_assert_eq(conc_executor_free(NULL), 0);
    ex = mk_threads(3);
    cr_assert_eq(conc_executor_max_workers(ex), 3);
    conc_future *f = (conc_future *)1;
    cr_assert_eq(conc_executor_submit(NULL, square, NULL, &f), -EINVAL);
    cr_assert_eq(conc_executor_submit(ex, NULL, NULL, &f), -EINVAL);
    cr_assert_eq(conc_executor_submit(ex, square, NULL, NULL), -EINVAL);
    cr_assert_eq(conc_executor_submit_bytes(ex, NULL, NULL, 0, &f), -EINVAL);
    cr_assert_eq(conc_executor_submit_bytes(ex, NULL, NULL, 4, &f), -EINVAL);
    cr_assert_eq(f, (conc_future *)1, "*out written on failure");
    cr_assert_eq(conc_executor_shutdown(NULL, true, true), -EINVAL);
    cr_assert_eq(conc_executor_join(NULL, 0), -EINVAL);
    cr_assert_eq(conc_executor_join(ex, 0), -EBUSY, "join before shutdown");
    for (size_t i = 0; i < N_BAD_TIMEOUTS; i++)
        cr_assert_eq(conc_executor_join(ex, bad_timeouts[i]), -EINVAL);
    cr_assert_eq(conc_executor_free(ex), 0);
}

Test(executor, submit_gives_each_result)
{
    enum { N = 2000 };
    conc_executor *ex = mk_threads(4);
    conc_future **fs = malloc(N * sizeof *fs);
    for (intptr_t i = 0; i < N; i++)
        cr_assert_eq(conc_executor_submit(ex, square, (void *)i, &fs[i]), 0);
    for (intptr_t i = 0; i < N; i++) {
        void *v = NULL;
        size_t len = 9;
        cr_assert_eq(conc_future_result(fs[i], &v, &len, 60.0), 0);
        cr_assert_eq((intptr_t)v, i * i, "call %ld", (long)i);
        cr_assert_eq(len, 0);
        cr_assert(!conc_future_has_bytes(fs[i]));
        conc_future_free(fs[i]);
    }
    free(fs);
    cr_assert_eq(conc_executor_free(ex), 0);
}

Test(executor, call_errors_are_exceptions)
{
    conc_executor *ex = mk_threads(2);
    conc_future *a, *b;
    cr_assert_eq(conc_executor_submit(ex, fail_with, (void *)(intptr_t)-EIO, &a), 0);
    cr_assert_eq(conc_executor_submit(ex, fail_with, (void *)(intptr_t)5, &b), 0);
    void *v = (void *)7;
    cr_assert_eq(conc_future_result(a, &v, NULL, 60.0), -EIO);
    cr_assert_eq(v, (void *)7);
    int err = 0;
    cr_assert_eq(conc_future_exception(a, &err, NULL, 0), 0);
    cr_assert_eq(err, -EIO);
    cr_assert_eq(conc_future_result(b, &v, NULL, 60.0), -EPROTO, "a positive return");
    conc_future_free(a);
    conc_future_free(b);
    cr_assert_eq(conc_executor_free(ex), 0);
}

static int reverse_bytes(const void *arg, size_t len, void **result, size_t *result_len)
{
    if (len == 0)
        return -ENODATA;
    char *out = malloc(len);
    for (size_t i = 0; i < len; i++)
        out[i] = ((const char *)arg)[len - 1 - i];
    *result = out;
    *result_len = len;
    return 0;
}

Test(executor, bytes_calls_on_threads)
{
    conc_executor *ex = mk_threads(2);
    char buf[] = "abcdef";
    conc_future *f, *g;
    cr_assert_eq(conc_executor_submit_bytes(ex, reverse_bytes, buf, 6, &f), 0);
    memset(buf, 'x', 6);        /* copied at submit */
    cr_assert_eq(conc_executor_submit_bytes(ex, reverse_bytes, NULL, 0, &g), 0);
    void *v;
    size_t len;
    cr_assert_eq(conc_future_result(f, &v, &len, 60.0), 0);
    cr_assert(conc_future_has_bytes(f));
    cr_assert_eq(len, 6);
    cr_assert_eq(memcmp(v, "fedcba", 6), 0);
    cr_assert_eq(conc_future_result(g, &v, &len, 60.0), -ENODATA);
    conc_future_free(f);
    conc_future_free(g);
    cr_assert_eq(conc_executor_free(ex), 0);
}

Test(executor, worker_limit_and_cancel_semantics)
{
    gate_reset();
    conc_executor *ex = mk_threads(2);
    conc_future *fs[4];
    for (intptr_t i = 0; i < 4; i++)
        cr_assert_eq(conc_executor_submit(ex, gated, (void *)i, &fs[i]), 0);
    WAIT_FOR(__atomic_load_n(&started, __ATOMIC_SEQ_CST) == 2);
    WAIT_FOR(conc_future_running(fs[0]) && conc_future_running(fs[1]));
    cr_assert_eq(conc_future_state(fs[2]), CONC_FUTURE_PENDING);
    cr_assert_eq(conc_future_state(fs[3]), CONC_FUTURE_PENDING);
    /* Python: a running call cannot be cancelled, a queued one can. */
    cr_assert_eq(conc_future_cancel(fs[0]), -EBUSY);
    cr_assert_eq(conc_future_cancel(fs[2]), 0);
    cr_assert(conc_future_cancelled(fs[2]));
    conc_event_set(&gate);
    void *v;
    cr_assert_eq(conc_future_result(fs[3], &v, NULL, 60.0), 0);
    cr_assert_eq(v, (void *)3);
    cr_assert_eq(conc_future_result(fs[0], &v, NULL, 60.0), 0);
    cr_assert_eq(conc_future_result(fs[2], &v, NULL, 0), -ECANCELED);
    cr_assert_eq(conc_future_cancel(fs[3]), -EALREADY);
    cr_assert_eq(conc_executor_shutdown(ex, true, false), 0);
    cr_assert_eq(inside_max, 2, "more calls ran at once than max_workers");
    cr_assert_eq(started, 3, "the cancelled call ran");
    for (int i = 0; i < 4; i++)
        conc_future_free(fs[i]);
    cr_assert_eq(conc_executor_free(ex), 0);
}

static int init_calls;
static const void *init_seen;
static int count_init(const void *arg, size_t len)
{
    cr_assert_eq(len, 5);
    __atomic_store_n(&init_seen, arg, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&init_calls, 1, __ATOMIC_SEQ_CST);
    return 0;
}

Test(executor, initializer_runs_once_per_worker)
{
    gate_reset();
    static const char tag[] = "tag!";
    conc_executor_opts o = CONC_EXECUTOR_OPTS_INIT;
    o.max_workers = 3;
    o.initializer = count_init;
    o.initarg = tag;
    o.initarg_len = 5;
    conc_executor *ex;
    cr_assert_eq(conc_executor_new(&ex, &o), 0);
    cr_assert_eq(init_calls, 0, "a thread started before the first submit");
    conc_future *fs[3];
    for (intptr_t i = 0; i < 3; i++)
        cr_assert_eq(conc_executor_submit(ex, gated, (void *)i, &fs[i]), 0);
    WAIT_FOR(__atomic_load_n(&started, __ATOMIC_SEQ_CST) == 3);
    conc_event_set(&gate);
    for (int i = 0; i < 20; i++) {
        conc_future *f;
        cr_assert_eq(conc_executor_submit(ex, square, (void *)2, &f), 0);
        cr_assert_eq(conc_future_result(f, NULL, NULL, 60.0), 0);
        conc_future_free(f);
    }
    cr_assert_eq(conc_executor_free(ex), 0);
    cr_assert_eq(init_calls, 3);
    cr_assert_eq(init_seen, tag);
    for (int i = 0; i < 3; i++)
        conc_future_free(fs[i]);
}

static int failing_init(const void *arg, size_t len)
{
    (void)arg;
    (void)len;
    return -EIO;
}

Test(executor, failed_initializer_breaks_the_executor)
{
    conc_executor_opts o = CONC_EXECUTOR_OPTS_INIT;
    o.max_workers = 1;
    o.initializer = failing_init;
    conc_executor *ex;
    cr_assert_eq(conc_executor_new(&ex, &o), 0);
    conc_future *f;
    cr_assert_eq(conc_executor_submit(ex, square, (void *)3, &f), 0);
    cr_assert_eq(conc_future_result(f, NULL, NULL, 60.0), -EPIPE);
    conc_future *g = (conc_future *)1;
    WAIT_FOR(conc_executor_submit(ex, square, NULL, &g) == -EPIPE);
    cr_assert_eq(g, (conc_future *)1);
    conc_future_free(f);
    cr_assert_eq(conc_executor_free(ex), 0);
}

Test(executor, shutdown_cancel_futures)
{
    gate_reset();
    conc_executor *ex = mk_threads(1);
    conc_future *fs[5];
    for (intptr_t i = 0; i < 5; i++)
        cr_assert_eq(conc_executor_submit(ex, gated, (void *)i, &fs[i]), 0);
    WAIT_FOR(conc_future_running(fs[0]));
    cr_assert_eq(conc_executor_shutdown(ex, false, true), 0);
    for (int i = 1; i < 5; i++)
        cr_assert(conc_future_cancelled(fs[i]), "queued call %d not cancelled", i);
    cr_assert(conc_future_running(fs[0]), "shutdown touched the running call");
    conc_future *g = (conc_future *)1;
    cr_assert_eq(conc_executor_submit(ex, square, NULL, &g), -EPIPE);
    cr_assert_eq(conc_executor_submit_bytes(ex, reverse_bytes, "a", 1, &g), -EPIPE);
    cr_assert_eq(g, (conc_future *)1);
    cr_assert_eq(conc_executor_join(ex, 0), -EAGAIN);
    cr_assert_eq(conc_executor_join(ex, 0.01), -ETIMEDOUT);
    cr_assert_eq(conc_executor_join_until(ex, 0), -ETIMEDOUT);
    conc_event_set(&gate);
    cr_assert_eq(conc_executor_join(ex, 60.0), 0);
    cr_assert_eq(conc_future_result(fs[0], NULL, NULL, 0), 0);
    cr_assert_eq(started, 1);
    cr_assert_eq(conc_executor_shutdown(ex, true, true), 0, "shutdown twice");
    cr_assert_eq(conc_executor_join(ex, 0), 0);
    for (int i = 0; i < 5; i++)
        conc_future_free(fs[i]);
    cr_assert_eq(conc_executor_free(ex), 0);
}

struct blocked_shutdown {
    conc_executor *ex;
    pid_t tid;
    int rc;
};

static void *shutdown_waiting(void *arg)
{
    struct blocked_shutdown *b = arg;
    __atomic_store_n(&b->tid, gettid(), __ATOMIC_RELEASE);
    b->rc = conc_executor_shutdown(b->ex, true, false);
    return NULL;
}

Test(executor, shutdown_wait_runs_the_queue_out)
{
    gate_reset();
    conc_executor *ex = mk_threads(2);
    conc_future *fs[6];
    for (intptr_t i = 0; i < 6; i++)
        cr_assert_eq(conc_executor_submit(ex, gated, (void *)i, &fs[i]), 0);
    struct blocked_shutdown b = { ex, 0, 1 };
    pthread_t t = spawn(shutdown_waiting, &b);
    WAIT_FOR(__atomic_load_n(&b.tid, __ATOMIC_ACQUIRE) != 0);
    wait_thread_blocked(b.tid, BLOCKED_GUARD);
    cr_assert_eq(__atomic_load_n(&b.rc, __ATOMIC_SEQ_CST), 1, "shutdown(wait) returned early");
    conc_event_set(&gate);
    pthread_join(t, NULL);
    cr_assert_eq(b.rc, 0);
    for (int i = 0; i < 6; i++) {
        cr_assert(conc_future_done(fs[i]), "shutdown(wait) returned before call %d", i);
        void *v;
        cr_assert_eq(conc_future_result(fs[i], &v, NULL, 0), 0);
        cr_assert_eq((intptr_t)v, i);
        conc_future_free(fs[i]);
    }
    cr_assert_eq(started, 6);
    cr_assert_eq(conc_executor_free(ex), 0);
}

static conc_executor *self_ex;
static int self_rc[3];
static int shutdown_self(void *arg, void **result)
{
    (void)arg;
    (void)result;
    self_rc[0] = conc_executor_shutdown(self_ex, true, false);
    self_rc[1] = conc_executor_join(self_ex, 0);
    self_rc[2] = conc_executor_free(self_ex);
    return 0;
}

Test(executor, waiting_for_itself_is_refused)
{
    self_ex = mk_threads(1);
    conc_future *f;
    cr_assert_eq(conc_executor_submit(self_ex, shutdown_self, NULL, &f), 0);
    cr_assert_eq(conc_future_result(f, NULL, NULL, 60.0), 0);
    cr_assert_eq(self_rc[0], -EDEADLK);
    cr_assert_eq(self_rc[1], -EDEADLK);
    cr_assert_eq(self_rc[2], -EBUSY);
    conc_future_free(f);
    cr_assert_eq(conc_executor_free(self_ex), 0);
}

static pthread_t cb_thread;
static int cb_runs;
static void on_done(conc_future *f, void *arg)
{
    (void)arg;
    cr_assert(conc_future_done(f));
    cb_thread = pthread_self();
    __atomic_add_fetch(&cb_runs, 1, __ATOMIC_SEQ_CST);
}

static pthread_t call_thread;
static int record_thread(void *arg, void **result)
{
    (void)arg;
    (void)result;
    call_thread = pthread_self();
    conc_event_wait(&gate, CONC_FOREVER);
    return 0;
}

Test(executor, callbacks_run_on_the_worker)
{
    gate_reset();
    conc_executor *ex = mk_threads(1);
    conc_future *f;
    cr_assert_eq(conc_executor_submit(ex, record_thread, NULL, &f), 0);
    cr_assert_eq(conc_future_add_done_callback(f, on_done, NULL), 0);
    conc_event_set(&gate);
    cr_assert_eq(conc_executor_shutdown(ex, true, false), 0);
    cr_assert_eq(cb_runs, 1);
    cr_assert(pthread_equal(cb_thread, call_thread));
    cr_assert(!pthread_equal(cb_thread, pthread_self()));
    conc_future_free(f);
    cr_assert_eq(conc_executor_free(ex), 0);
}

Test(executor, futures_outlive_the_executor)
{
    conc_executor *ex = mk_threads(2);
    conc_future *f;
    cr_assert_eq(conc_executor_submit(ex, square, (void *)9, &f), 0);
    cr_assert_eq(conc_executor_free(ex), 0);    /* waits for the call */
    cr_assert(conc_future_done(f));
    void *v;
    cr_assert_eq(conc_future_result(f, &v, NULL, 0), 0);
    cr_assert_eq((intptr_t)v, 81);
    conc_future_free(f);
}

/* ------------------------------------------------------------------ map */

struct counter_input {
    intptr_t next, end;         /* end < 0: endless */
    int err;                    /* returned at the end instead of 0 */
};

static int count_input(void *ctx, const void **arg, size_t *len)
{
    struct counter_input *c = ctx;
    if (c->end >= 0 && c->next >= c->end)
        return c->err;
    *arg = (const void *)c->next++;
    *len = 0;
    return 1;
}

/* Later inputs finish first: call 0 waits until calls 1, 2 and 3 are done. */
static int later_done;
static int first_waits(void *arg, void **result)
{
    intptr_t x = (intptr_t)arg;
    if (x == 0)
        conc_event_wait(&gate, CONC_FOREVER);
    *result = (void *)(x * x);
    if (x >= 1 && x <= 3 && __atomic_add_fetch(&later_done, 1, __ATOMIC_SEQ_CST) == 3)
        conc_event_set(&gate);
    return 0;
}

Test(executor, map_keeps_input_order)
{
    gate_reset();
    conc_executor *ex = mk_threads(4);
    struct counter_input in = { 0, 100, 0 };
    conc_executor_map *m;
    cr_assert_eq(conc_executor_map_new(&m, ex, first_waits, count_input, &in, NULL), 0);
    for (intptr_t i = 0; i < 100; i++) {
        void *v = NULL;
        int err = 1;
        cr_assert_eq(conc_executor_map_next(m, &v, NULL, &err, 60.0), 1);
        cr_assert_eq(err, 0);
        cr_assert_eq((intptr_t)v, i * i, "item %ld", (long)i);
    }
    int err;
    cr_assert_eq(conc_executor_map_next(m, NULL, NULL, &err, 60.0), 0);
    cr_assert_eq(conc_executor_map_next(m, NULL, NULL, &err, 0), 0);
    cr_assert_eq(conc_executor_map_submitted(m), 100);
    conc_executor_map_free(m);
    cr_assert_eq(conc_executor_free(ex), 0);
}

Test(executor, map_reads_ahead_a_bounded_amount)
{
    gate_reset();
    conc_executor *ex = mk_threads(2);
    struct counter_input in = { 0, -1, 0 };     /* endless */
    conc_executor_map_opts mo = CONC_EXECUTOR_MAP_OPTS_INIT;
    mo.read_ahead = 5;
    conc_executor_map *m;
    cr_assert_eq(conc_executor_map_new(&m, ex, gated, count_input, &in, &mo), 0);
    cr_assert_eq(in.next, 5, "read %ld ahead, not 5", (long)in.next);
    cr_assert_eq(conc_executor_map_submitted(m), 5);
    int err;
    void *v;
    cr_assert_eq(conc_executor_map_next(m, &v, NULL, &err, 0), -EAGAIN);
    cr_assert_eq(conc_executor_map_next(m, &v, NULL, &err, 0.01), -ETIMEDOUT);
    cr_assert_eq(in.next, 5, "a timed-out next read more input");
    conc_event_set(&gate);
    for (intptr_t consumed = 1; consumed <= 200; consumed++) {
        cr_assert_eq(conc_executor_map_next(m, &v, NULL, &err, 60.0), 1);
        cr_assert_eq(err, 0);
        cr_assert_eq((intptr_t)v, consumed - 1);
        cr_assert_eq(in.next, consumed + 5, "after %ld results, %ld submitted", (long)consumed,
                     (long)in.next);
    }
    conc_executor_map_free(m);      /* cancels what has not started */
    cr_assert_eq(conc_executor_free(ex), 0);
    cr_assert_leq(started, 205);
}

static int odd_fails(void *arg, void **result)
{
    intptr_t x = (intptr_t)arg;
    if (x % 2)
        return -EDOM;
    *result = (void *)x;
    return 0;
}

Test(executor, map_errors_in_place_then_the_input_error)
{
    conc_executor *ex = mk_threads(3);
    struct counter_input in = { 0, 6, -EBADMSG };
    conc_executor_map *m;
    cr_assert_eq(conc_executor_map_new(&m, ex, odd_fails, count_input, &in,
                                       &(conc_executor_map_opts){ .read_ahead = 2 }), 0);
    for (intptr_t i = 0; i < 6; i++) {
        void *v = (void *)77;
        int err = 1;
        cr_assert_eq(conc_executor_map_next(m, &v, NULL, &err, 60.0), 1);
        if (i % 2) {
            cr_assert_eq(err, -EDOM);
            cr_assert_null(v);
        } else {
            cr_assert_eq(err, 0);
            cr_assert_eq((intptr_t)v, i);
        }
    }
    int err;
    cr_assert_eq(conc_executor_map_next(m, NULL, NULL, &err, 60.0), -EBADMSG);
    cr_assert_eq(conc_executor_map_next(m, NULL, NULL, &err, 60.0), 0, "reported twice");
    conc_executor_map_free(m);
    cr_assert_eq(conc_executor_map_new(&m, ex, NULL, count_input, &in, NULL), -EINVAL);
    cr_assert_eq(conc_executor_map_new(&m, ex, square, NULL, &in, NULL), -EINVAL);
    cr_assert_eq(conc_executor_map_new(NULL, ex, square, count_input, &in, NULL), -EINVAL);
    cr_assert_eq(conc_executor_map_next(NULL, NULL, NULL, &err, 0), -EINVAL);
    cr_assert_eq(conc_executor_map_submitted(NULL), 0);
    conc_executor_map_free(NULL);
    cr_assert_eq(conc_executor_shutdown(ex, false, false), 0);
    cr_assert_eq(conc_executor_map_new(&m, ex, square, count_input, &in, NULL), -EPIPE);
    cr_assert_eq(conc_executor_free(ex), 0);
}

struct byte_input {
    int i, n;
    char buf[8];
};

static int bytes_input(void *ctx, const void **arg, size_t *len)
{
    struct byte_input *b = ctx;
    if (b->i >= b->n)
        return 0;
    int k = b->i++;
    for (int j = 0; j <= k % 7; j++)
        b->buf[j] = (char)('a' + j);
    *arg = b->buf;
    *len = (size_t)(k % 7) + 1;
    return 1;
}

Test(executor, map_bytes_on_threads)
{
    conc_executor *ex = mk_threads(2);
    struct byte_input in = { 0, 30, { 0 } };
    conc_executor_map *m;
    cr_assert_eq(conc_executor_map_bytes_new(&m, ex, reverse_bytes, bytes_input, &in, NULL), 0);
    for (int k = 0; k < 30; k++) {
        void *v;
        size_t len;
        int err;
        cr_assert_eq(conc_executor_map_next(m, &v, &len, &err, 60.0), 1);
        cr_assert_eq(err, 0);
        cr_assert_eq(len, (size_t)(k % 7) + 1);
        for (size_t j = 0; j < len; j++)
            cr_assert_eq(((char *)v)[j], 'a' + (int)(len - 1 - j));
        free(v);
    }
    conc_executor_map_free(m);
    cr_assert_eq(conc_executor_free(ex), 0);
}

/* ---------------------------------------- waits over executor futures */

Test(executor, wait_and_as_completed_on_calls)
{
    gate_reset();
    conc_executor *ex = mk_threads(4);
    conc_future *fs[4];
    cr_assert_eq(conc_executor_submit(ex, gated, (void *)0, &fs[0]), 0);
    cr_assert_eq(conc_executor_submit(ex, square, (void *)3, &fs[1]), 0);
    cr_assert_eq(conc_executor_submit(ex, fail_with, (void *)(intptr_t)-EIO, &fs[2]), 0);
    cr_assert_eq(conc_executor_submit(ex, gated, (void *)1, &fs[3]), 0);
    /* square(3) is let finish first: FIRST_EXCEPTION returns as soon as
     * the failure is in, with the count done by then, which is 1 when the
     * failure beats square(3). */
    cr_assert_eq(conc_future_wait(fs[1], 60.0), 0);
    bool done[4];
    cr_assert_eq(conc_future_wait_many(fs, 4, CONC_FIRST_EXCEPTION, done, 60.0), 2);
    cr_assert(done[1] && done[2] && !done[0] && !done[3]);
    cr_assert_eq(conc_future_wait_many(fs, 4, CONC_ALL_COMPLETED, done, 0.01), -ETIMEDOUT);
    conc_as_completed *it;
    cr_assert_eq(conc_as_completed_new(&it, fs, 4), 0);
    conc_future *got[4];
    cr_assert_eq(conc_as_completed_next(it, &got[0], 60.0), 1);
    cr_assert_eq(conc_as_completed_next(it, &got[1], 60.0), 1);
    cr_assert(got[0] == fs[1] || got[0] == fs[2]);
    cr_assert(got[1] == fs[1] || got[1] == fs[2]);
    cr_assert_eq(conc_as_completed_next(it, &got[2], 0.01), -ETIMEDOUT);
    conc_event_set(&gate);
    cr_assert_eq(conc_as_completed_next(it, &got[2], 60.0), 1);
    cr_assert_eq(conc_as_completed_next(it, &got[3], 60.0), 1);
    cr_assert(got[2] != got[3] && (got[2] == fs[0] || got[2] == fs[3]) &&
              (got[3] == fs[0] || got[3] == fs[3]));
    cr_assert_eq(conc_as_completed_next(it, &got[0], 60.0), 0);
    conc_as_completed_free(it);
    cr_assert_eq(conc_future_wait_many(fs, 4, CONC_ALL_COMPLETED, done, 60.0), 4);
    for (int i = 0; i < 4; i++)
        conc_future_free(fs[i]);
    cr_assert_eq(conc_executor_free(ex), 0);
}

/* ---------------------------------------------------------- coroutines */

static char co_log[32];
static conc_executor *co_ex;

static void co_append(char c)
{
    size_t n = strlen(co_log);
    cr_assert_lt(n + 1, sizeof co_log);
    co_log[n] = c;
}

static void *co_submitter(void *arg)
{
    (void)arg;
    conc_future *f;
    co_append('s');
    cr_assert_eq(conc_executor_submit(co_ex, gated, (void *)5, &f), 0);
    void *v;
    cr_assert_eq(conc_future_result(f, &v, NULL, 60.0), 0);   /* parks */
    cr_assert_eq(v, (void *)5);
    co_append('S');
    conc_future_free(f);
    cr_assert_eq(conc_executor_shutdown(co_ex, true, false), 0); /* parks */
    co_append('J');
    return NULL;
}

static void *co_opener(void *arg)
{
    (void)arg;
    co_append('o');
    /* Runs only because the submitter parked; the call is inside. */
    while (__atomic_load_n(&started, __ATOMIC_SEQ_CST) == 0)
        conc_sleep(0.001);
    conc_event_set(&gate);
    co_append('O');
    return NULL;
}

Test(executor, coroutines_park_on_calls_and_shutdown)
{
    gate_reset();
    co_ex = mk_threads(2);
    conc_greenlet *a, *b;
    cr_assert_eq(conc_greenlet_spawn(&a, co_submitter, NULL, NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&b, co_opener, NULL, NULL), 0);
    cr_assert_eq(conc_hub_run(), 0);
    cr_assert_str_eq(co_log, "soOSJ");
    conc_greenlet_free(a);
    conc_greenlet_free(b);
    cr_assert_eq(conc_executor_free(co_ex), 0);
    cr_assert_eq(conc_hub_free(), 0);
}

/* Many threads submit to one executor at once: nothing lost or doubled. */
struct submitter {
    conc_executor *ex;
    intptr_t base;
    long sum;
};

static void *submit_many(void *arg)
{
    struct submitter *s = arg;
    conc_future *fs[500];
    for (intptr_t i = 0; i < 500; i++)
        cr_assert_eq(conc_executor_submit(s->ex, square, (void *)(s->base + i), &fs[i]), 0);
    for (int i = 0; i < 500; i++) {
        void *v;
        cr_assert_eq(conc_future_result(fs[i], &v, NULL, 60.0), 0);
        s->sum += (long)(intptr_t)v;
        conc_future_free(fs[i]);
    }
    return NULL;
}

Test(executor, concurrent_submitters)
{
    conc_executor *ex = mk_threads(3);
    struct submitter s[4];
    pthread_t t[4];
    for (int k = 0; k < 4; k++) {
        s[k] = (struct submitter){ ex, k * 500, 0 };
        t[k] = spawn(submit_many, &s[k]);
    }
    long total = 0;
    for (int k = 0; k < 4; k++) {
        pthread_join(t[k], NULL);
        total += s[k].sum;
    }
    long n = 2000, want = (n - 1) * n * (2 * n - 1) / 6;
    cr_assert_eq(total, want);
    cr_assert_eq(conc_executor_free(ex), 0);
}

/* The order calls run in on one worker: each appends its argument. */
#define ORDER_N 20000
static intptr_t *order_log;
static int order_len;

static int log_order(void *arg, void **result)
{
    order_log[order_len++] = (intptr_t)arg;     /* one worker: no race */
    *result = arg;
    return 0;
}

Test(executor, one_worker_runs_calls_in_submission_order)
{
    /* Submits land in batches of every size while the worker drains them:
     * it must still start them oldest first, each once. */
    order_log = calloc(ORDER_N, sizeof *order_log);
    order_len = 0;
    conc_executor *ex = mk_threads(1);
    conc_future **fs = calloc(ORDER_N, sizeof *fs);
    for (intptr_t i = 0; i < ORDER_N; i++) {
        cr_assert_eq(conc_executor_submit(ex, log_order, (void *)i, &fs[i]), 0);
        if (i % 997 == 0)       /* let the worker catch up now and then */
            cr_assert_eq(conc_future_result(fs[i], NULL, NULL, 60.0), 0);
    }
    cr_assert_eq(conc_executor_shutdown(ex, true, false), 0);
    cr_assert_eq(order_len, ORDER_N);
    for (intptr_t i = 0; i < ORDER_N; i++) {
        cr_assert_eq(order_log[i], i, "call %ld ran in place %ld", (long)order_log[i], (long)i);
        void *v;
        cr_assert_eq(conc_future_result(fs[i], &v, NULL, 0), 0);
        cr_assert_eq((intptr_t)v, i);
        conc_future_free(fs[i]);
    }
    cr_assert_eq(conc_executor_free(ex), 0);
    free(fs);
    free(order_log);
}

Test(executor, an_idle_worker_takes_a_call_queued_behind_a_running_one, .timeout = 300)
{
    /* Two calls that each wait at the gate: the second must start on the
     * other worker, whichever worker took both off the inbox at once. */
    conc_executor *ex = mk_threads(2);
    for (int round = 0; round < 300; round++) {
        gate_reset();
        conc_future *a, *b;
        cr_assert_eq(conc_executor_submit(ex, gated, (void *)1, &a), 0);
        cr_assert_eq(conc_executor_submit(ex, gated, (void *)2, &b), 0);
        WAIT_FOR(__atomic_load_n(&started, __ATOMIC_SEQ_CST) == 2);
        conc_event_set(&gate);
        void *v;
        cr_assert_eq(conc_future_result(a, &v, NULL, 60.0), 0);
        cr_assert_eq((intptr_t)v, 1);
        cr_assert_eq(conc_future_result(b, &v, NULL, 60.0), 0);
        cr_assert_eq((intptr_t)v, 2);
        cr_assert_eq(inside_max, 2, "round %d", round);
        conc_future_free(a);
        conc_future_free(b);
        if (round % 3 == 0)     /* now and then with both workers asleep */
            usleep(2000);
    }
    cr_assert_eq(conc_executor_free(ex), 0);
}

/* Submits until refused; counts each call that runs. */
#define RACE_CALLS 4096
struct thread_racer {
    conc_executor *ex;
    conc_future *fs[RACE_CALLS];
    int n, refused;
};
static int race_ran[4][RACE_CALLS];

static int count_run(void *arg, void **result)
{
    intptr_t k = (intptr_t)arg;
    __atomic_add_fetch(&race_ran[k / RACE_CALLS][k % RACE_CALLS], 1, __ATOMIC_SEQ_CST);
    *result = (void *)(k * 3);
    return 0;
}

struct racer_slot {
    struct thread_racer *rc;
    int k;
};

static void *submit_until_refused(void *arg)
{
    struct racer_slot *sl = arg;
    struct thread_racer *rc = sl->rc;
    for (int i = 0; i < RACE_CALLS; i++) {
        conc_future *f = (conc_future *)1;
        int r = conc_executor_submit(rc->ex, count_run, (void *)(intptr_t)(sl->k * RACE_CALLS + i), &f);
        if (r == -EPIPE) {
            cr_assert_eq(f, (conc_future *)1, "a refused submit gave a future");
            rc->refused = 1;
            break;
        }
        cr_assert_eq(r, 0, "submit: %s", conc_errname(r));
        rc->fs[i] = f;
        __atomic_store_n(&rc->n, i + 1, __ATOMIC_SEQ_CST);
    }
    return NULL;
}

/* Three threads that submit to ex until refused. */
static void start_racers(conc_executor *ex, struct thread_racer *rc, struct racer_slot *sl,
                         pthread_t *t)
{
    for (int k = 0; k < 3; k++) {
        memset(&rc[k], 0, sizeof rc[k]);
        rc[k].ex = ex;
        sl[k] = (struct racer_slot){ &rc[k], k };
        t[k] = spawn(submit_until_refused, &sl[k]);
    }
}

/* Every call a submit accepted ends: with its result, having run once, or
 * cancelled (when cancel) or failed -EPIPE (when broken), never run. */
static void check_racers(struct thread_racer *rc, int nrc, bool cancel, bool broken)
{
    for (int k = 0; k < nrc; k++)
        for (int i = 0; i < rc[k].n; i++) {
            conc_future *f = rc[k].fs[i];
            void *v = NULL;
            int r = conc_future_result(f, &v, NULL, 60.0);
            int ran = __atomic_load_n(&race_ran[k][i], __ATOMIC_SEQ_CST);
            if (broken) {
                cr_assert_eq(r, -EPIPE, "submitter %d call %d: %s", k, i, conc_errname(r));
                cr_assert_eq(ran, 0);
            } else if (cancel && conc_future_cancelled(f)) {
                cr_assert_eq(ran, 0, "submitter %d: cancelled call %d ran", k, i);
            } else {
                cr_assert_eq(r, 0, "submitter %d call %d: %s", k, i, conc_errname(r));
                cr_assert_eq((intptr_t)v, (intptr_t)(k * RACE_CALLS + i) * 3);
                cr_assert_eq(ran, 1, "submitter %d call %d ran %d times", k, i, ran);
            }
            conc_future_free(f);
        }
}

Test(executor, shutdown_racing_submitters_loses_no_call, .timeout = 300)
{
    /* Three threads submit while shutdown comes, with and without
     * cancel_futures: a submit is either refused or its call ends, and the
     * workers never leave a call behind (its future would wait for ever). */
    static struct thread_racer rc[3];
    for (int round = 0; round < 60; round++) {
        bool cancel = round % 2;
        memset(race_ran, 0, sizeof race_ran);
        conc_executor *ex = mk_threads(1 + round % 3);
        struct racer_slot sl[3];
        pthread_t t[3];
        start_racers(ex, rc, sl, t);
        WAIT_FOR(__atomic_load_n(&rc[round % 3].n, __ATOMIC_SEQ_CST) >= 1 + round * 7);
        cr_assert_eq(conc_executor_shutdown(ex, true, cancel), 0);
        for (int k = 0; k < 3; k++)
            pthread_join(t[k], NULL);
        check_racers(rc, 3, cancel, false);
        cr_assert_eq(conc_executor_free(ex), 0);
    }
}

static int fail_init_slowly(const void *arg, size_t len)
{
    (void)arg;
    (void)len;
    sched_yield();
    return -EIO;
}

Test(executor, failed_initializer_racing_submitters_fails_every_call, .timeout = 300)
{
    /* A failing initializer breaks the executor while three threads
     * submit: every call accepted fails with -EPIPE, none is left. */
    static struct thread_racer rc[3];
    for (int round = 0; round < 40; round++) {
        conc_executor_opts o = CONC_EXECUTOR_OPTS_INIT;
        o.max_workers = 1 + round % 2;
        o.initializer = fail_init_slowly;
        memset(race_ran, 0, sizeof race_ran);
        conc_executor *ex;
        cr_assert_eq(conc_executor_new(&ex, &o), 0);
        struct racer_slot sl[3];
        pthread_t t[3];
        start_racers(ex, rc, sl, t);
        for (int k = 0; k < 3; k++)
            pthread_join(t[k], NULL);
        check_racers(rc, 3, false, true);
        conc_future *g = (conc_future *)1;
        WAIT_FOR(conc_executor_submit(ex, square, NULL, &g) == -EPIPE);
        cr_assert_eq(g, (conc_future *)1);
        cr_assert_eq(conc_executor_free(ex), 0);
    }
}

/* ---------------------------------------------------- process executor */

static conc_executor *mk_procs(int max_workers)
{
    conc_executor_opts o = CONC_EXECUTOR_OPTS_INIT;
    o.kind = CONC_EXECUTOR_PROCESSES;
    o.max_workers = max_workers;
    conc_executor *ex = NULL;
    cr_assert_eq(conc_executor_new(&ex, &o), 0);
    cr_assert_eq(conc_executor_kind_of(ex), CONC_EXECUTOR_PROCESSES);
    return ex;
}

/* The argument is a long; the result its square and the worker's pid. */
struct sq_out {
    long square;
    pid_t pid;
};

static int proc_square(const void *arg, size_t len, void **result, size_t *result_len)
{
    long x;
    if (len != sizeof x)
        return -EMSGSIZE;
    memcpy(&x, arg, sizeof x);
    if (x < 0)
        return (int)x;
    struct sq_out *o = malloc(sizeof *o);
    o->square = x * x;
    o->pid = getpid();
    *result = o;
    *result_len = sizeof *o;
    return 0;
}

static conc_future *submit_long(conc_executor *ex, conc_executor_bytes_fn fn, long x)
{
    conc_future *f = NULL;
    cr_assert_eq(conc_executor_submit_bytes(ex, fn, &x, sizeof x, &f), 0);
    return f;
}

static long square_of(conc_future *f)
{
    void *v;
    size_t len;
    int r = conc_future_result(f, &v, &len, 60.0);
    cr_assert_eq(r, 0, "result: %s", conc_errname(r));
    cr_assert(conc_future_has_bytes(f));
    cr_assert_eq(len, sizeof(struct sq_out));
    struct sq_out o;
    memcpy(&o, v, sizeof o);
    cr_assert_neq(o.pid, getpid(), "the call ran in the parent");
    return o.square;
}

Test(executor, processes_run_bytes_calls)
{
    int fds = count_fds();
    conc_executor *ex = mk_procs(2);
    cr_assert_eq(conc_executor_max_workers(ex), 2);
    conc_future *g = (conc_future *)1;
    cr_assert_eq(conc_executor_submit(ex, square, NULL, &g), -EINVAL, "pointers to processes");
    conc_executor_map *m;
    struct counter_input in = { 0, 3, 0 };
    cr_assert_eq(conc_executor_map_new(&m, ex, square, count_input, &in, NULL), -EINVAL);
    cr_assert_eq(g, (conc_future *)1);
    enum { N = 40 };
    conc_future *fs[N];
    for (long i = 0; i < N; i++)
        fs[i] = submit_long(ex, proc_square, i);
    for (long i = 0; i < N; i++) {
        cr_assert_eq(square_of(fs[i]), i * i);
        conc_future_free(fs[i]);
    }
    conc_future *bad = submit_long(ex, proc_square, -EDOM);
    cr_assert_eq(conc_future_result(bad, NULL, NULL, 60.0), -EDOM);
    int err = 0, detail = 1;
    cr_assert_eq(conc_future_exception(bad, &err, &detail, 0), 0);
    cr_assert_eq(err, -EDOM);
    cr_assert_eq(detail, 0);
    conc_future_free(bad);
    cr_assert_eq(conc_executor_free(ex), 0);
    cr_assert_eq(count_fds(), fds, "descriptors left behind");
}

static int kill_self(const void *arg, size_t len, void **result, size_t *result_len)
{
    (void)result;
    (void)result_len;
    int how;
    cr_assert_eq(len, sizeof how);
    memcpy(&how, arg, sizeof how);
    if (how > 0)
        raise(how);
    _exit(-how);
}

/* Memory the parent shares with the workers (made before the executor, so
 * the fork of each worker maps it too): a worker reports its pid there and
 * waits at the gate.  Workers do not inherit the parent's other
 * descriptors, so no pipe would do. */
struct shared {
    conc_event gate;
    pid_t pid;
};

static struct shared *shared_new(void)
{
    struct shared *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                             -1, 0);
    cr_assert_neq(sh, MAP_FAILED);
    cr_assert_eq(conc_event_init(&sh->gate, CONC_SYNC_SHARED), 0);
    return sh;
}

static struct shared *sh;

/* Reports its pid, then waits at the gate (or to be killed); gives the
 * byte it was sent. */
static int report_and_wait(const void *arg, size_t len, void **result, size_t *result_len)
{
    __atomic_store_n(&sh->pid, getpid(), __ATOMIC_SEQ_CST);
    conc_event_wait(&sh->gate, CONC_FOREVER);
    if (len) {
        *result = malloc(len);
        memcpy(*result, arg, len);
        *result_len = len;
    }
    return 0;
}

Test(executor, a_killed_worker_fails_only_its_call)
{
    sh = shared_new();
    conc_executor *ex = mk_procs(2);
    conc_future *victim;
    cr_assert_eq(conc_executor_submit_bytes(ex, report_and_wait, NULL, 0, &victim), 0);
    conc_future *others[10];
    for (long i = 0; i < 10; i++)
        others[i] = submit_long(ex, proc_square, i);
    WAIT_FOR(__atomic_load_n(&sh->pid, __ATOMIC_SEQ_CST) != 0);
    pid_t pid = sh->pid;
    wait_proc_blocked(pid, BLOCKED_GUARD);
    cr_assert(conc_future_running(victim));
    cr_assert_eq(kill(pid, SIGKILL), 0);
    cr_assert_eq(conc_future_result(victim, NULL, NULL, 60.0), -ECHILD);
    int err, detail;
    cr_assert_eq(conc_future_exception(victim, &err, &detail, 0), 0);
    cr_assert_eq(err, -ECHILD);
    cr_assert_eq(detail, -SIGKILL);
    for (long i = 0; i < 10; i++) {
        cr_assert_eq(square_of(others[i]), i * i);
        conc_future_free(others[i]);
    }
    /* Calls that end their own worker: a signal, an exit. */
    int how[2] = { SIGKILL, -3 };
    conc_future *self[2];
    for (int i = 0; i < 2; i++)
        cr_assert_eq(conc_executor_submit_bytes(ex, kill_self, &how[i], sizeof how[i], &self[i]), 0);
    cr_assert_eq(conc_future_exception(self[0], &err, &detail, 60.0), 0);
    cr_assert_eq(err, -ECHILD);
    cr_assert_eq(detail, -SIGKILL);
    cr_assert_eq(conc_future_exception(self[1], &err, &detail, 60.0), 0);
    cr_assert_eq(err, -ECHILD);
    cr_assert_eq(detail, 3);
    /* The executor goes on, with both workers. */
    conc_future *after[6];
    for (long i = 0; i < 6; i++)
        after[i] = submit_long(ex, proc_square, i + 100);
    for (long i = 0; i < 6; i++) {
        cr_assert_eq(square_of(after[i]), (i + 100) * (i + 100));
        conc_future_free(after[i]);
    }
    conc_future_free(victim);
    conc_future_free(self[0]);
    conc_future_free(self[1]);
    cr_assert_eq(conc_executor_free(ex), 0);
    munmap(sh, sizeof *sh);
}

Test(executor, processes_cancel_and_shutdown)
{
    sh = shared_new();
    conc_executor *ex = mk_procs(1);
    conc_future *first;
    cr_assert_eq(conc_executor_submit_bytes(ex, report_and_wait, "z", 1, &first), 0);
    WAIT_FOR(conc_future_running(first));
    cr_assert_eq(conc_future_cancel(first), -EBUSY);
    /* The pool hands a worker calls ahead of the one it runs (up to 64
     * while its queue is long); they stay PENDING until the worker begins
     * them, and can be cancelled until then. */
    enum { Q = 200 };
    conc_future *queued[Q];
    for (long i = 0; i < Q; i++)
        queued[i] = submit_long(ex, proc_square, i);
    WAIT_FOR(__atomic_load_n(&sh->pid, __ATOMIC_SEQ_CST) != 0);
    cr_assert_eq(conc_future_state(queued[Q - 1]), CONC_FUTURE_PENDING);
    cr_assert_eq(conc_future_cancel(queued[Q - 1]), 0);
    cr_assert(conc_future_cancelled(queued[Q - 1]));
    cr_assert_eq(conc_future_result(queued[Q - 1], NULL, NULL, 0), -ECANCELED);
    int pending = 0;
    for (int i = 0; i < Q - 1; i++)
        pending += conc_future_state(queued[i]) == CONC_FUTURE_PENDING;
    cr_assert_geq(pending, 1, "the pool took every call ahead");
    /* shutdown(cancel_futures) cancels what has not started. */
    cr_assert_eq(conc_executor_shutdown(ex, false, true), 0);
    int cancelled = 0;
    for (int i = 0; i < Q - 1; i++) {
        cr_assert_neq(conc_future_state(queued[i]), CONC_FUTURE_PENDING, "call %d", i);
        cancelled += conc_future_cancelled(queued[i]);
    }
    /* The pool's thread may hand the worker more calls between the count
     * and the shutdown (they start RUNNING): never more cancelled than were
     * pending, and those behind the worker's 64 stay pending until then. */
    cr_assert_leq(cancelled, pending);
    cr_assert_geq(cancelled, 1);
    conc_future *g = (conc_future *)1;
    long x = 1;
    cr_assert_eq(conc_executor_submit_bytes(ex, proc_square, &x, sizeof x, &g), -EPIPE);
    cr_assert_eq(g, (conc_future *)1);
    cr_assert_eq(conc_executor_join(ex, 0), -EAGAIN);
    cr_assert_eq(conc_event_set(&sh->gate), 0);
    cr_assert_eq(conc_executor_join(ex, 60.0), 0);
    void *v;
    size_t len;
    cr_assert_eq(conc_future_result(first, &v, &len, 0), 0);
    cr_assert_eq(len, 1);
    cr_assert_eq(*(char *)v, 'z');
    for (int i = 0; i < Q; i++) {
        cr_assert(conc_future_done(queued[i]));
        if (!conc_future_cancelled(queued[i]))
            cr_assert_eq(square_of(queued[i]), (long)i * i);
        conc_future_free(queued[i]);
    }
    conc_future_free(first);
    cr_assert_eq(conc_executor_free(ex), 0);
    munmap(sh, sizeof *sh);
}

/* Marks made by the calls, in memory the fork workers share (made before
 * the executor). */
#define MARKS 4096
static int *marks;

static int *marks_new(void)
{
    int *m = mmap(NULL, MARKS * sizeof *m, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                  -1, 0);
    cr_assert_neq(m, MAP_FAILED);
    return m;
}

/* proc_square that marks its argument as run. */
static int mark_square(const void *arg, size_t len, void **result, size_t *result_len)
{
    long x;
    if (len != sizeof x)
        return -EMSGSIZE;
    memcpy(&x, arg, sizeof x);
    if (x >= 0 && x < MARKS)
        __atomic_add_fetch(&marks[x], 1, __ATOMIC_SEQ_CST);
    return proc_square(arg, len, result, result_len);
}

Test(executor, processes_cancel_calls_held_but_not_begun)
{
    /* The worker is busy with the first call; the pool hands it calls
     * ahead (up to 64 while the queue is long).  None of them began: all
     * are PENDING and each can be cancelled, and a cancelled one never
     * runs (Python's call queue has them RUNNING already). */
    sh = shared_new();
    marks = marks_new();
    conc_executor *ex = mk_procs(1);
    conc_future *first;
    cr_assert_eq(conc_executor_submit_bytes(ex, report_and_wait, "z", 1, &first), 0);
    enum { Q = 100 };
    conc_future *queued[Q];
    for (long i = 0; i < Q; i++)
        queued[i] = submit_long(ex, mark_square, i);
    WAIT_FOR(__atomic_load_n(&sh->pid, __ATOMIC_SEQ_CST) != 0);
    wait_proc_blocked(sh->pid, BLOCKED_GUARD);
    WAIT_FOR(conc_future_running(first));
    cr_assert_eq(conc_future_cancel(first), -EBUSY);
    for (int i = 0; i < Q; i++)
        cr_assert_eq(conc_future_state(queued[i]), CONC_FUTURE_PENDING, "call %d", i);
    for (int i = 0; i < Q; i += 2) {
        cr_assert_eq(conc_future_cancel(queued[i]), 0, "call %d", i);
        cr_assert(conc_future_cancelled(queued[i]));
        cr_assert_eq(conc_future_result(queued[i], NULL, NULL, 0), -ECANCELED);
    }
    cr_assert_eq(conc_event_set(&sh->gate), 0);
    cr_assert_eq(conc_executor_shutdown(ex, true, false), 0);
    for (int i = 0; i < Q; i++) {
        cr_assert(conc_future_done(queued[i]));
        if (i % 2 == 0) {
            cr_assert(conc_future_cancelled(queued[i]));
            cr_assert_eq(__atomic_load_n(&marks[i], __ATOMIC_SEQ_CST), 0, "cancelled call %d ran", i);
        } else {
            cr_assert_eq(square_of(queued[i]), (long)i * i);
            cr_assert_eq(__atomic_load_n(&marks[i], __ATOMIC_SEQ_CST), 1, "call %d", i);
        }
        conc_future_free(queued[i]);
    }
    conc_future_free(first);
    cr_assert_eq(conc_executor_free(ex), 0);
    munmap(marks, MARKS * sizeof *marks);
    munmap(sh, sizeof *sh);
}

/* Calls a worker held when it was killed go back to the queue as they
 * were before it got them: PENDING, and cancel takes them back at once,
 * here from the done callback of the call that failed, which the pool runs
 * while it puts them back (they kept the state "handed to a worker" until
 * a worker got them again, and cancel gave -EBUSY). */
enum { REQ = 20 };
static conc_future *requeued[REQ];
static int requeued_cancel[REQ];
static conc_future_status requeued_state[REQ];

static void cancel_every_other(conc_future *f, void *arg)
{
    (void)f;
    (void)arg;
    for (int i = 0; i < REQ; i++) {
        requeued_state[i] = conc_future_state(requeued[i]);
        requeued_cancel[i] = i % 2 == 0 ? conc_future_cancel(requeued[i]) : 1;
    }
}

Test(executor, processes_calls_of_a_killed_worker_can_be_cancelled)
{
    sh = shared_new();
    marks = marks_new();
    conc_executor *ex = mk_procs(1);
    conc_future *victim;
    cr_assert_eq(conc_executor_submit_bytes(ex, report_and_wait, NULL, 0, &victim), 0);
    for (long i = 0; i < REQ; i++)
        requeued[i] = submit_long(ex, mark_square, i);
    cr_assert_eq(conc_future_add_done_callback(victim, cancel_every_other, NULL), 0);
    WAIT_FOR(__atomic_load_n(&sh->pid, __ATOMIC_SEQ_CST) != 0);
    pid_t pid = sh->pid;
    wait_proc_blocked(pid, BLOCKED_GUARD);
    WAIT_FOR(conc_future_running(victim));
    cr_assert_eq(kill(pid, SIGKILL), 0);
    int err = 0, detail = 0;
    cr_assert_eq(conc_future_exception(victim, &err, &detail, 60.0), 0);
    cr_assert_eq(err, -ECHILD);
    cr_assert_eq(detail, -SIGKILL);
    cr_assert_eq(conc_executor_shutdown(ex, true, false), 0);
    for (int i = 0; i < REQ; i++) {
        cr_assert_eq(requeued_state[i], CONC_FUTURE_PENDING, "call %d", i);
        cr_assert(conc_future_done(requeued[i]));
        if (i % 2 == 0) {
            cr_assert_eq(requeued_cancel[i], 0, "cancel of call %d: %s", i,
                         conc_errname(requeued_cancel[i]));
            cr_assert(conc_future_cancelled(requeued[i]));
            cr_assert_eq(conc_future_result(requeued[i], NULL, NULL, 0), -ECANCELED);
            cr_assert_eq(__atomic_load_n(&marks[i], __ATOMIC_SEQ_CST), 0, "cancelled call %d ran", i);
        } else {
            cr_assert_eq(square_of(requeued[i]), (long)i * i);
            cr_assert_eq(__atomic_load_n(&marks[i], __ATOMIC_SEQ_CST), 1, "call %d", i);
        }
        conc_future_free(requeued[i]);
    }
    conc_future_free(victim);
    cr_assert_eq(conc_executor_free(ex), 0);
    munmap(marks, MARKS * sizeof *marks);
    munmap(sh, sizeof *sh);
}

struct racer {
    conc_executor *ex;
    conc_future *fs[64];
    int n;
};

static void *submit_racer(void *arg)
{
    struct racer *rc = arg;
    for (long i = 0; i < 64; i++) {
        conc_future *f;
        int r = conc_executor_submit_bytes(rc->ex, mark_square, &i, sizeof i, &f);
        if (r == -EPIPE)
            break;
        cr_assert_eq(r, 0, "submit: %s", conc_errname(r));
        rc->fs[i] = f;
        __atomic_store_n(&rc->n, (int)i + 1, __ATOMIC_SEQ_CST);
    }
    return NULL;
}

Test(executor, processes_shutdown_cancel_racing_submits, .timeout = 300)
{
    /* shutdown(cancel_futures) while another thread submits: every call
     * ends either cancelled (and never ran) or with its result (ran once),
     * whichever moment the shutdown caught it at. */
    marks = marks_new();
    for (int round = 0; round < 400; round++) {
        memset(marks, 0, 64 * sizeof *marks);
        struct racer rc = { mk_procs(1), { 0 }, 0 };
        pthread_t t = spawn(submit_racer, &rc);
        WAIT_FOR(__atomic_load_n(&rc.n, __ATOMIC_SEQ_CST) >= 1 + round % 8);
        cr_assert_eq(conc_executor_shutdown(rc.ex, true, true), 0);
        pthread_join(t, NULL);
        for (int i = 0; i < rc.n; i++) {
            cr_assert(conc_future_done(rc.fs[i]), "round %d call %d", round, i);
            int ran = __atomic_load_n(&marks[i], __ATOMIC_SEQ_CST);
            if (conc_future_cancelled(rc.fs[i])) {
                cr_assert_eq(ran, 0, "round %d: cancelled call %d ran", round, i);
            } else {
                cr_assert_eq(square_of(rc.fs[i]), (long)i * i);
                cr_assert_eq(ran, 1, "round %d call %d ran %d times", round, i, ran);
            }
            conc_future_free(rc.fs[i]);
        }
        cr_assert_eq(conc_executor_free(rc.ex), 0);
    }
    munmap(marks, MARKS * sizeof *marks);
}

Test(executor, processes_shutdown_wait_runs_everything)
{
    conc_executor *ex = mk_procs(2);
    conc_future *fs[20];
    for (long i = 0; i < 20; i++)
        fs[i] = submit_long(ex, proc_square, i);
    cr_assert_eq(conc_executor_shutdown(ex, true, false), 0);
    for (long i = 0; i < 20; i++) {
        cr_assert(conc_future_done(fs[i]), "call %ld not done after shutdown(wait)", i);
        cr_assert_eq(square_of(fs[i]), i * i);
        conc_future_free(fs[i]);
    }
    cr_assert_eq(conc_executor_free(ex), 0);
}

static long init_value;
static int set_init_value(const void *arg, size_t len)
{
    cr_assert_eq(len, sizeof init_value);
    memcpy(&init_value, arg, sizeof init_value);
    return 0;
}

static int give_init_value(const void *arg, size_t len, void **result, size_t *result_len)
{
    (void)arg;
    (void)len;
    long *o = malloc(sizeof *o);
    *o = init_value;
    *result = o;
    *result_len = sizeof *o;
    return 0;
}

Test(executor, processes_initializer_and_map)
{
    long seed = 4242;
    conc_executor_opts o = CONC_EXECUTOR_OPTS_INIT;
    o.kind = CONC_EXECUTOR_PROCESSES;
    o.max_workers = 2;
    o.initializer = set_init_value;
    o.initarg = &seed;
    o.initarg_len = sizeof seed;
    conc_executor *ex;
    cr_assert_eq(conc_executor_new(&ex, &o), 0);
    seed = 0;                   /* copied by new */
    conc_future *f;
    cr_assert_eq(conc_executor_submit_bytes(ex, give_init_value, NULL, 0, &f), 0);
    void *v;
    size_t len;
    cr_assert_eq(conc_future_result(f, &v, &len, 60.0), 0);
    cr_assert_eq(len, sizeof(long));
    cr_assert_eq(*(long *)v, 4242);
    cr_assert_eq(init_value, 0, "the initializer ran in the parent");
    conc_future_free(f);

    struct byte_input in = { 0, 25, { 0 } };
    conc_executor_map *m;
    cr_assert_eq(conc_executor_map_bytes_new(&m, ex, reverse_bytes, bytes_input, &in,
                                             &(conc_executor_map_opts){ .read_ahead = 3 }), 0);
    cr_assert_eq(in.i, 3);
    for (int k = 0; k < 25; k++) {
        int err;
        cr_assert_eq(conc_executor_map_next(m, &v, &len, &err, 60.0), 1);
        cr_assert_eq(err, 0);
        cr_assert_eq(len, (size_t)(k % 7) + 1);
        for (size_t j = 0; j < len; j++)
            cr_assert_eq(((char *)v)[j], 'a' + (int)(len - 1 - j));
        free(v);
        cr_assert_leq(in.i, k + 1 + 3);
    }
    int err;
    cr_assert_eq(conc_executor_map_next(m, &v, &len, &err, 60.0), 0);
    conc_executor_map_free(m);
    cr_assert_eq(conc_executor_free(ex), 0);
}

static void *co_proc_waiter(void *arg)
{
    conc_future *f = arg;
    co_append('w');
    void *v;
    size_t len;
    cr_assert_eq(conc_future_result(f, &v, &len, 60.0), 0);   /* parks */
    cr_assert_eq(len, 1);
    co_append('W');
    return NULL;
}

static void *co_opener_proc(void *arg)
{
    (void)arg;
    co_append('o');
    /* Runs only because the waiter parked: the call waits at the gate. */
    cr_assert_eq(conc_event_set(&sh->gate), 0);
    co_append('O');
    return NULL;
}

Test(executor, processes_futures_in_coroutines_and_conc_wait)
{
    sh = shared_new();
    conc_executor *ex = mk_procs(1);
    conc_future *f;
    cr_assert_eq(conc_executor_submit_bytes(ex, report_and_wait, "c", 1, &f), 0);
    conc_greenlet *a, *b;
    cr_assert_eq(conc_greenlet_spawn(&a, co_proc_waiter, f, NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&b, co_opener_proc, NULL, NULL), 0);
    cr_assert_eq(conc_hub_run(), 0);
    cr_assert_str_eq(co_log, "woOW");
    conc_greenlet_free(a);
    conc_greenlet_free(b);
    cr_assert_eq(conc_hub_free(), 0);
    conc_future_free(f);

    /* conc_wait: the future beside a descriptor that never becomes ready. */
    cr_assert_eq(conc_event_clear(&sh->gate), 0);
    sh->pid = 0;
    int p[2];
    cr_assert_eq(pipe(p), 0);
    conc_future *slow;
    cr_assert_eq(conc_executor_submit_bytes(ex, report_and_wait, "q", 1, &slow), 0);
    conc_waitable ws[2] = {
        { .kind = CONC_WAIT_FD, .u.fd = p[0] },
        { .kind = CONC_WAIT_FUTURE, .u.future = slow },
    };
    cr_assert_eq(conc_wait(ws, 2, 0), -EAGAIN);
    WAIT_FOR(__atomic_load_n(&sh->pid, __ATOMIC_SEQ_CST) != 0);
    cr_assert_eq(conc_wait(ws, 2, 0.01), -ETIMEDOUT);
    cr_assert_eq(conc_event_set(&sh->gate), 0);
    cr_assert_eq(conc_wait(ws, 2, 60.0), 1);
    cr_assert(!ws[0].ready && ws[1].ready);
    cr_assert(conc_future_done(slow));
    conc_future_free(slow);
    close(p[0]);
    close(p[1]);
    cr_assert_eq(conc_executor_free(ex), 0);
    munmap(sh, sizeof *sh);
}

/* Squares its argument after some work, reporting its pid first. */
static int busy_square(const void *arg, size_t len, void **result, size_t *result_len)
{
    __atomic_store_n(&sh->pid, getpid(), __ATOMIC_SEQ_CST);
    volatile long spin = 0;
    for (int i = 0; i < 20000; i++)
        spin += i;
    return proc_square(arg, len, result, result_len);
}

struct killer {
    int rounds;
    int killed;
    bool stop;
};

static void *kill_workers(void *arg)
{
    struct killer *k = arg;
    for (int i = 0; i < k->rounds && !__atomic_load_n(&k->stop, __ATOMIC_SEQ_CST); i++) {
        pid_t pid = __atomic_exchange_n(&sh->pid, 0, __ATOMIC_SEQ_CST);
        if (pid > 0 && kill(pid, SIGKILL) == 0)
            k->killed++;
        /* The next kill waits until a call of a (maybe new) worker began. */
        int64_t end = conc_now() + GUARD_NS;
        while (__atomic_load_n(&sh->pid, __ATOMIC_SEQ_CST) == 0 &&
               !__atomic_load_n(&k->stop, __ATOMIC_SEQ_CST) && conc_now() < end)
            usleep(500);
    }
    return NULL;
}

/*
 * The replacements of killed workers are forked while the test's other
 * threads run.  A sanitizer's allocator older than LLVM 18's (ASan) or 19's
 * (TSan), such as GCC 12's, does not take its locks around fork(): a lock
 * another thread held at that moment stays taken in the child, and the new
 * worker hangs in its first malloc that needs it (seen here: a worker
 * asleep in the allocator's GetFromAllocator with 64 calls in hand, its
 * pool waiting on it, the call never finished).  The C library's malloc
 * takes its locks around fork(), so the plain build keeps the fork method;
 * under a sanitizer the workers come from the forkserver, a process with
 * one thread, and map the shared page by name in their initializer (they do
 * not inherit it).
 */
static int map_shared_by_name(const void *arg, size_t len)
{
    char name[64];
    if (len == 0 || len >= sizeof name)
        return 1;
    memcpy(name, arg, len);
    name[len] = 0;
    int fd = shm_open(name, O_RDWR, 0);
    if (fd < 0)
        return 2;
    void *m = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED)
        return 3;
    sh = m;
    return 0;
}

static conc_executor *mk_procs_for_kills(int max_workers, char *name, size_t cap)
{
    conc_executor_opts o = CONC_EXECUTOR_OPTS_INIT;
    o.kind = CONC_EXECUTOR_PROCESSES;
    o.max_workers = max_workers;
    o.method = CONC_START_FORK;
    name[0] = 0;
    if (SANITIZED) {
        snprintf(name, cap, "/conc-test-kills-%ld", (long)getpid());
        int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
        cr_assert_geq(fd, 0);
        cr_assert_eq(ftruncate(fd, sizeof *sh), 0);
        sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        close(fd);
        cr_assert_neq(sh, MAP_FAILED);
        o.method = CONC_START_FORKSERVER;
        o.initializer = map_shared_by_name;
        o.initarg = name;
        o.initarg_len = strlen(name);
    } else {
        sh = shared_new();
    }
    conc_executor *ex = NULL;
    cr_assert_eq(conc_executor_new(&ex, &o), 0);
    return ex;
}

Test(executor, killing_workers_under_load_loses_nothing)
{
    enum { N = 1500 };
    char name[64];
    conc_executor *ex = mk_procs_for_kills(3, name, sizeof name);
    conc_future **fs = malloc(N * sizeof *fs);
    for (long i = 0; i < N; i++)
        fs[i] = submit_long(ex, busy_square, i);
    struct killer k = { 25, 0, false };
    pthread_t t = spawn(kill_workers, &k);
    int ok = 0, died = 0;
    for (long i = 0; i < N; i++) {
        void *v;
        size_t len;
        int r = conc_future_result(fs[i], &v, &len, 120.0);
        if (r == 0) {
            struct sq_out o;
            cr_assert_eq(len, sizeof o);
            memcpy(&o, v, sizeof o);
            cr_assert_eq(o.square, i * i, "call %ld", i);
            ok++;
        } else {
            cr_assert_eq(r, -ECHILD, "call %ld: %s", i, conc_errname(r));
            int err, detail;
            cr_assert_eq(conc_future_exception(fs[i], &err, &detail, 0), 0);
            cr_assert_eq(detail, -SIGKILL, "call %ld: detail %d", i, detail);
            died++;
        }
    }
    __atomic_store_n(&k.stop, true, __ATOMIC_SEQ_CST);
    pthread_join(t, NULL);
    cr_log_info("killed %d workers, %d calls failed", k.killed, died);
    cr_assert_eq(ok + died, N);
    cr_assert_leq(died, k.killed, "more calls failed than workers were killed");
    /* Still working afterwards. */
    for (long i = 0; i < 5; i++) {
        conc_future *f = submit_long(ex, proc_square, i);
        cr_assert_eq(square_of(f), i * i);
        conc_future_free(f);
    }
    for (long i = 0; i < N; i++)
        conc_future_free(fs[i]);
    free(fs);
    cr_assert_eq(conc_executor_free(ex), 0);
    munmap(sh, sizeof *sh);
    if (name[0])
        cr_assert_eq(shm_unlink(name), 0);
}

/* Shuts the read side of the worker's end of its channel to the pool (the
 * unnamed stream socket whose peer is the pool's process), so the pool's
 * next write to it fails while the worker lives, then waits at the gate:
 * the pool meets the end of this worker only when it writes, after it
 * looked at the events (what a worker that dies at that moment does). */
static int cut_channel_and_wait(const void *arg, size_t len, void **result, size_t *result_len)
{
    (void)arg;
    (void)len;
    (void)result;
    (void)result_len;
    int cut = 0;
    for (int fd = 3; fd < 1024; fd++) {
        int type;
        socklen_t tl = sizeof type;
        struct ucred cred;
        socklen_t cl = sizeof cred;
        struct sockaddr_un a;
        socklen_t al = sizeof a;
        if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) != 0 || type != SOCK_STREAM ||
            getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) != 0 ||
            cred.pid != getppid() || getsockname(fd, (struct sockaddr *)&a, &al) != 0 ||
            a.sun_family != AF_UNIX || al != sizeof(sa_family_t))
            continue;
        if (shutdown(fd, SHUT_RD) == 0)
            cut++;
    }
    __atomic_store_n(&sh->pid, cut == 1 ? getpid() : -1, __ATOMIC_SEQ_CST);
    conc_event_wait(&sh->gate, CONC_FOREVER);
    return 0;
}

Test(executor, a_worker_found_dead_when_written_to_is_replaced)
{
    /* The pool learns of this worker's end from a failed write of the next
     * call it hands on.  Its calls went back to the queue; with no other
     * worker to wake the pool, they waited there forever. */
    sh = shared_new();
    conc_executor *ex = mk_procs(1);
    conc_future *cut;
    cr_assert_eq(conc_executor_submit_bytes(ex, cut_channel_and_wait, NULL, 0, &cut), 0);
    WAIT_FOR(__atomic_load_n(&sh->pid, __ATOMIC_SEQ_CST) != 0);
    cr_assert_gt(__atomic_load_n(&sh->pid, __ATOMIC_SEQ_CST), 0, "the channel was not found");
    /* Two queued: the busy worker is handed the first ahead. */
    conc_future *next[3];
    for (long i = 0; i < 3; i++)
        next[i] = submit_long(ex, proc_square, i + 2);
    int err, detail;
    cr_assert_eq(conc_future_exception(cut, &err, &detail, 60.0), 0);
    cr_assert_eq(err, -ECHILD);
    cr_assert_eq(detail, -SIGKILL);
    for (long i = 0; i < 3; i++) {
        cr_assert_eq(square_of(next[i]), (i + 2) * (i + 2), "call %ld", i);
        conc_future_free(next[i]);
    }
    conc_future_free(cut);
    cr_assert_eq(conc_executor_free(ex), 0);
    munmap(sh, sizeof *sh);
}

static int drop_count;
static void *drop_last;
static void drop_result(void *item, void *arg)
{
    cr_assert_eq(arg, &drop_count);
    drop_last = item;
    __atomic_add_fetch(&drop_count, 1, __ATOMIC_SEQ_CST);
}

Test(executor, unread_pointer_results_go_to_drop)
{
    conc_executor_opts o = CONC_EXECUTOR_OPTS_INIT;
    o.max_workers = 1;
    o.drop = drop_result;
    o.drop_arg = &drop_count;
    conc_executor *ex;
    cr_assert_eq(conc_executor_new(&ex, &o), 0);
    conc_future *read, *unread, *taken;
    cr_assert_eq(conc_executor_submit(ex, square, (void *)3, &read), 0);
    cr_assert_eq(conc_executor_submit(ex, square, (void *)4, &unread), 0);
    cr_assert_eq(conc_executor_submit(ex, square, (void *)5, &taken), 0);
    cr_assert_eq(conc_executor_free(ex), 0);
    void *v;
    cr_assert_eq(conc_future_result(read, &v, NULL, 0), 0);
    cr_assert_eq(conc_future_result_take(taken, &v, NULL, 0), 0);
    cr_assert_eq((intptr_t)v, 25);
    cr_assert_eq(drop_count, 0, "dropped while referenced");
    conc_future_free(unread);
    cr_assert_eq(drop_count, 1);
    cr_assert_eq((intptr_t)drop_last, 16);
    conc_future_free(read);         /* lent, not taken: dropped */
    cr_assert_eq(drop_count, 2);
    cr_assert_eq((intptr_t)drop_last, 9);
    conc_future_free(taken);
    cr_assert_eq(drop_count, 2, "a taken result was dropped");
}
