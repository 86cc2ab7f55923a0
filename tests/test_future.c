/*
 * test_future.c - concurrent.futures.Future, wait and as_completed
 * (conc/future.h): every state transition and its error codes, results of
 * both kinds and who owns them, done callbacks, waking waiters, the
 * readiness descriptor and conc_wait, waits over several futures, and the
 * same from coroutines.
 */
#include <criterion/criterion.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "conc/future.h"
#include "conc/hub.h"
#include "conc/pipe.h"
#include "conc/queue.h"
#include "conc/wait.h"
#include "support/wait_helpers.h"

static conc_future *mk(void)
{
    conc_future *f = NULL;
    cr_assert_eq(conc_future_new(&f, NULL), 0);
    cr_assert_not_null(f);
    return f;
}

static bool fd_readable(int fd)
{
    struct pollfd p = { .fd = fd, .events = POLLIN };
    return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

/* ------------------------------------------------------- transitions */

Test(future, new_is_pending)
{
    conc_future *f = mk();
    cr_assert_eq(conc_future_state(f), CONC_FUTURE_PENDING);
    cr_assert(!conc_future_done(f));
    cr_assert(!conc_future_running(f));
    cr_assert(!conc_future_cancelled(f));
    cr_assert(!conc_future_has_bytes(f));
    void *v = (void *)1;
    size_t len = 7;
    cr_assert_eq(conc_future_result(f, &v, &len, 0), -EAGAIN);
    cr_assert_eq(conc_future_result(f, &v, &len, 0.01), -ETIMEDOUT);
    cr_assert_eq(conc_future_result_until(f, &v, &len, 0), -ETIMEDOUT);
    cr_assert_eq(conc_future_exception(f, NULL, NULL, 0), -EAGAIN);
    cr_assert_eq(conc_future_exception_until(f, NULL, NULL, conc_now() + 1000000), -ETIMEDOUT);
    cr_assert_eq(conc_future_wait(f, 0), -EAGAIN);
    cr_assert_eq(conc_future_wait_until(f, 0), -ETIMEDOUT);
    cr_assert_eq(v, (void *)1, "an unfinished result call wrote *value");
    cr_assert_eq(len, 7);
    for (size_t i = 0; i < N_BAD_TIMEOUTS; i++) {
        cr_assert_eq(conc_future_result(f, &v, &len, bad_timeouts[i]), -EINVAL);
        cr_assert_eq(conc_future_result_take(f, &v, &len, bad_timeouts[i]), -EINVAL);
        cr_assert_eq(conc_future_exception(f, NULL, NULL, bad_timeouts[i]), -EINVAL);
        cr_assert_eq(conc_future_wait(f, bad_timeouts[i]), -EINVAL);
    }
    conc_future_free(f);
}

Test(future, null_arguments)
{
    cr_assert_eq(conc_future_new(NULL, NULL), -EINVAL);
    cr_assert_eq(conc_future_state(NULL), CONC_FUTURE_PENDING);
    cr_assert(!conc_future_done(NULL));
    cr_assert(!conc_future_running(NULL));
    cr_assert(!conc_future_cancelled(NULL));
    cr_assert(!conc_future_has_bytes(NULL));
    cr_assert_null(conc_future_ref(NULL));
    conc_future_free(NULL);
    cr_assert_eq(conc_future_result(NULL, NULL, NULL, 0), -EINVAL);
    cr_assert_eq(conc_future_result_until(NULL, NULL, NULL, 0), -EINVAL);
    cr_assert_eq(conc_future_result_take(NULL, NULL, NULL, 0), -EINVAL);
    cr_assert_eq(conc_future_result_take_until(NULL, NULL, NULL, 0), -EINVAL);
    cr_assert_eq(conc_future_exception(NULL, NULL, NULL, 0), -EINVAL);
    cr_assert_eq(conc_future_exception_until(NULL, NULL, NULL, 0), -EINVAL);
    cr_assert_eq(conc_future_wait(NULL, 0), -EINVAL);
    cr_assert_eq(conc_future_wait_until(NULL, 0), -EINVAL);
    cr_assert_eq(conc_future_cancel(NULL), -EINVAL);
    cr_assert_eq(conc_future_set_running(NULL), -EINVAL);
    cr_assert_eq(conc_future_set_result(NULL, NULL), -EINVAL);
    cr_assert_eq(conc_future_set_result_bytes(NULL, "x", 1), -EINVAL);
    cr_assert_eq(conc_future_set_result_owned(NULL, NULL, 0), -EINVAL);
    cr_assert_eq(conc_future_set_exception(NULL, -EIO, 0), -EINVAL);
    cr_assert_eq(conc_future_add_done_callback(NULL, NULL, NULL), -EINVAL);
    cr_assert_eq(conc_future_fd(NULL), -EINVAL);
    conc_future *f = mk();
    cr_assert_eq(conc_future_add_done_callback(f, NULL, NULL), -EINVAL);
    cr_assert_eq(conc_future_set_result_bytes(f, NULL, 3), -EINVAL);
    cr_assert_eq(conc_future_set_result_owned(f, NULL, 3), -EINVAL);
    cr_assert_eq(conc_future_set_exception(f, 0, 0), -EINVAL);
    cr_assert_eq(conc_future_set_exception(f, EIO, 0), -EINVAL);
    cr_assert_eq(conc_future_state(f), CONC_FUTURE_PENDING, "a refused call changed the state");
    conc_future_free(f);
}

Test(future, running_then_result)
{
    conc_future *f = mk();
    int x = 42;
    cr_assert_eq(conc_future_set_running(f), 0);
    cr_assert_eq(conc_future_state(f), CONC_FUTURE_RUNNING);
    cr_assert(conc_future_running(f));
    cr_assert(!conc_future_done(f));
    cr_assert_eq(conc_future_set_running(f), -EALREADY);
    cr_assert_eq(conc_future_cancel(f), -EBUSY, "a running future was cancelled");
    cr_assert_eq(conc_future_state(f), CONC_FUTURE_RUNNING);
    cr_assert_eq(conc_future_result(f, NULL, NULL, 0), -EAGAIN);
    cr_assert_eq(conc_future_set_result(f, &x), 0);
    cr_assert_eq(conc_future_state(f), CONC_FUTURE_FINISHED);
    cr_assert(conc_future_done(f));
    cr_assert(!conc_future_running(f));
    cr_assert(!conc_future_cancelled(f));
    cr_assert(!conc_future_has_bytes(f));
    void *v = NULL;
    size_t len = 99;
    cr_assert_eq(conc_future_result(f, &v, &len, 0), 0);
    cr_assert_eq(v, &x);
    cr_assert_eq(len, 0);
    v = NULL;
    cr_assert_eq(conc_future_result(f, &v, NULL, CONC_FOREVER), 0, "result is readable again");
    cr_assert_eq(v, &x);
    int err = 5, detail = 5;
    cr_assert_eq(conc_future_exception(f, &err, &detail, 0), 0);
    cr_assert_eq(err, 0);
    cr_assert_eq(detail, 0);
    cr_assert_eq(conc_future_wait(f, 0), 0);
    /* Finished is final. */
    cr_assert_eq(conc_future_set_result(f, NULL), -EALREADY);
    cr_assert_eq(conc_future_set_result_bytes(f, "ab", 2), -EALREADY);
    cr_assert_eq(conc_future_set_exception(f, -EIO, 0), -EALREADY);
    cr_assert_eq(conc_future_set_running(f), -EALREADY);
    cr_assert_eq(conc_future_cancel(f), -EALREADY);
    cr_assert_eq(conc_future_result(f, &v, NULL, 0), 0);
    cr_assert_eq(v, &x, "a refused set changed the result");
    conc_future_free(f);
}

Test(future, pending_straight_to_result)
{
    conc_future *f = mk();
    cr_assert_eq(conc_future_set_result(f, (void *)7), 0);
    cr_assert_eq(conc_future_state(f), CONC_FUTURE_FINISHED);
    cr_assert_eq(conc_future_set_running(f), -EALREADY);
    void *v;
    cr_assert_eq(conc_future_result(f, &v, NULL, 0), 0);
    cr_assert_eq(v, (void *)7);
    conc_future_free(f);
}

Test(future, cancel_pending)
{
    conc_future *f = mk();
    cr_assert_eq(conc_future_cancel(f), 0);
    cr_assert_eq(conc_future_state(f), CONC_FUTURE_CANCELLED);
    cr_assert(conc_future_cancelled(f));
    cr_assert(conc_future_done(f));
    cr_assert(!conc_future_running(f));
    cr_assert_eq(conc_future_cancel(f), 0, "cancelling twice is Python's True");
    cr_assert_eq(conc_future_set_running(f), -ECANCELED);
    cr_assert_eq(conc_future_set_result(f, NULL), -ECANCELED);
    cr_assert_eq(conc_future_set_exception(f, -EIO, 1), -ECANCELED);
    void *buf = malloc(4);
    cr_assert_eq(conc_future_set_result_owned(f, buf, 4), -ECANCELED);
    free(buf);      /* refused: still ours */
    void *v = (void *)3;
    cr_assert_eq(conc_future_result(f, &v, NULL, 0), -ECANCELED);
    cr_assert_eq(conc_future_result(f, &v, NULL, CONC_FOREVER), -ECANCELED);
    cr_assert_eq(conc_future_result_take(f, &v, NULL, 0), -ECANCELED);
    cr_assert_eq(v, (void *)3);
    cr_assert_eq(conc_future_exception(f, NULL, NULL, 0), -ECANCELED);
    cr_assert_eq(conc_future_wait(f, 0), 0);
    cr_assert_eq(conc_future_state(f), CONC_FUTURE_CANCELLED);
    conc_future_free(f);
}

Test(future, exception_and_detail)
{
    conc_future *f = mk();
    cr_assert_eq(conc_future_set_running(f), 0);
    cr_assert_eq(conc_future_set_exception(f, -ECHILD, -9), 0);
    cr_assert_eq(conc_future_state(f), CONC_FUTURE_FINISHED);
    cr_assert(!conc_future_cancelled(f));
    cr_assert(!conc_future_has_bytes(f));
    void *v = (void *)5;
    cr_assert_eq(conc_future_result(f, &v, NULL, 0), -ECHILD);
    cr_assert_eq(conc_future_result_take(f, &v, NULL, 0), -ECHILD);
    cr_assert_eq(v, (void *)5);
    int err = 0, detail = 0;
    cr_assert_eq(conc_future_exception(f, &err, &detail, 0), 0);
    cr_assert_eq(err, -ECHILD);
    cr_assert_eq(detail, -9);
    cr_assert_eq(conc_future_exception(f, &err, NULL, CONC_FOREVER), 0);
    cr_assert_eq(conc_future_set_exception(f, -EIO, 0), -EALREADY);
    cr_assert_eq(conc_future_set_result(f, NULL), -EALREADY);
    cr_assert_eq(conc_future_cancel(f), -EALREADY);
    cr_assert_eq(conc_future_exception(f, &err, &detail, 0), 0);
    cr_assert_eq(err, -ECHILD, "a refused set changed the exception");
    conc_future_free(f);
}

/* ------------------------------------------------------ result kinds */

Test(future, bytes_are_copied_and_lent)
{
    conc_future *f = mk();
    char src[] = "hello";
    cr_assert_eq(conc_future_set_result_bytes(f, src, 5), 0);
    src[0] = 'J';
    cr_assert(conc_future_has_bytes(f));
    void *v = NULL;
    size_t len = 0;
    cr_assert_eq(conc_future_result(f, &v, &len, 0), 0);
    cr_assert_eq(len, 5);
    cr_assert_not_null(v);
    cr_assert_neq(v, (void *)src);
    cr_assert_eq(memcmp(v, "hello", 5), 0);
    void *v2 = NULL;
    cr_assert_eq(conc_future_result(f, &v2, &len, 0), 0);
    cr_assert_eq(v2, v, "the lent buffer is the same each time");
    conc_future_free(f);        /* ASan: frees the buffer */
}

Test(future, take_hands_over_once)
{
    conc_future *f = mk();
    cr_assert_eq(conc_future_set_result_bytes(f, "abc", 3), 0);
    void *v = NULL;
    size_t len = 0;
    cr_assert_eq(conc_future_result_take(f, &v, &len, 0), 0);
    cr_assert_eq(len, 3);
    cr_assert_eq(memcmp(v, "abc", 3), 0);
    void *again = (void *)9;
    cr_assert_eq(conc_future_result_take(f, &again, &len, 0), -EALREADY);
    cr_assert_eq(conc_future_result(f, &again, &len, 0), -EALREADY);
    cr_assert_eq(again, (void *)9);
    int err = 1;
    cr_assert_eq(conc_future_exception(f, &err, NULL, 0), 0);
    cr_assert_eq(err, 0);
    conc_future_free(f);
    free(v);                    /* ours now; ASan reports a double free otherwise */
}

Test(future, owned_buffer_and_empty_bytes)
{
    conc_future *f = mk();
    char *buf = malloc(4);
    memcpy(buf, "wxyz", 4);
    cr_assert_eq(conc_future_set_result_owned(f, buf, 4), 0);
    void *v = NULL;
    size_t len = 0;
    cr_assert_eq(conc_future_result(f, &v, &len, 0), 0);
    cr_assert_eq(v, buf, "an owned buffer is not copied");
    cr_assert_eq(len, 4);
    conc_future_free(f);

    f = mk();
    cr_assert_eq(conc_future_set_result_bytes(f, NULL, 0), 0);
    cr_assert(conc_future_has_bytes(f));
    v = (void *)1;
    len = 1;
    cr_assert_eq(conc_future_result(f, &v, &len, 0), 0);
    cr_assert_null(v);
    cr_assert_eq(len, 0);
    conc_future_free(f);

    f = mk();
    cr_assert_eq(conc_future_set_result_owned(f, malloc(1), 0), 0);
    cr_assert_eq(conc_future_result_take(f, &v, &len, 0), 0);
    cr_assert_null(v);
    cr_assert_eq(len, 0);
    conc_future_free(f);
}

static int drops;
static void *dropped;
static void count_drop(void *item, void *arg)
{
    cr_assert_eq(arg, &drops);
    drops++;
    dropped = item;
}

Test(future, pointer_result_drop_and_refs)
{
    conc_future_opts o = CONC_FUTURE_OPTS_INIT;
    o.drop = count_drop;
    o.drop_arg = &drops;
    conc_future *f;
    int x;
    cr_assert_eq(conc_future_new(&f, &o), 0);
    cr_assert_eq(conc_future_ref(f), f);
    cr_assert_eq(conc_future_set_result(f, &x), 0);
    conc_future_free(f);
    cr_assert_eq(drops, 0, "dropped while a reference remained");
    void *v;
    cr_assert_eq(conc_future_result(f, &v, NULL, 0), 0);
    cr_assert_eq(v, &x);
    conc_future_free(f);
    cr_assert_eq(drops, 1);
    cr_assert_eq(dropped, &x);

    /* A taken pointer is not dropped; an exception drops nothing. */
    cr_assert_eq(conc_future_new(&f, &o), 0);
    cr_assert_eq(conc_future_set_result(f, &x), 0);
    cr_assert_eq(conc_future_result_take(f, &v, NULL, 0), 0);
    conc_future_free(f);
    cr_assert_eq(drops, 1);
    cr_assert_eq(conc_future_new(&f, &(conc_future_opts){ .drop = count_drop,
                                                         .drop_arg = &drops }), 0);
    cr_assert_eq(conc_future_set_exception(f, -EIO, 0), 0);
    conc_future_free(f);
    cr_assert_eq(conc_future_new(&f, &o), 0);
    cr_assert_eq(conc_future_set_result(f, NULL), 0);
    conc_future_free(f);
    cr_assert_eq(drops, 1, "a NULL result or an exception was dropped");
}

/* ------------------------------------------------------ done callbacks */

#define LOGMAX 32
static struct {
    pthread_mutex_t mu;
    int n;
    int order[LOGMAX];
    pthread_t who[LOGMAX];
} cblog = { .mu = PTHREAD_MUTEX_INITIALIZER };

static void log_cb(conc_future *f, void *arg)
{
    cr_assert(conc_future_done(f), "a callback ran before the future was done");
    pthread_mutex_lock(&cblog.mu);
    cr_assert_lt(cblog.n, LOGMAX);
    cblog.order[cblog.n] = (int)(intptr_t)arg;
    cblog.who[cblog.n] = pthread_self();
    cblog.n++;
    pthread_mutex_unlock(&cblog.mu);
}

static int log_count(void)
{
    pthread_mutex_lock(&cblog.mu);
    int n = cblog.n;
    pthread_mutex_unlock(&cblog.mu);
    return n;
}

static void *finish_thread(void *arg)
{
    cr_assert_eq(conc_future_set_result(arg, (void *)1), 0);
    return NULL;
}

Test(future, callbacks_in_order_in_the_finishing_thread)
{
    conc_future *f = mk();
    for (intptr_t i = 1; i <= 5; i++)
        cr_assert_eq(conc_future_add_done_callback(f, log_cb, (void *)i), 0);
    cr_assert_eq(log_count(), 0, "a callback ran before the future was done");
    pthread_t t = spawn(finish_thread, f);
    pthread_join(t, NULL);
    cr_assert_eq(log_count(), 5);
    for (int i = 0; i < 5; i++) {
        cr_assert_eq(cblog.order[i], i + 1, "callback %d ran out of order", i);
        cr_assert(pthread_equal(cblog.who[i], t), "callback %d ran elsewhere", i);
    }
    /* Done already: runs now, in the caller. */
    cr_assert_eq(conc_future_add_done_callback(f, log_cb, (void *)6), 0);
    cr_assert_eq(log_count(), 6);
    cr_assert_eq(cblog.order[5], 6);
    cr_assert(pthread_equal(cblog.who[5], pthread_self()));
    conc_future_free(f);
    cr_assert_eq(log_count(), 6, "a callback ran twice");
}

Test(future, callbacks_run_on_cancel_and_exception)
{
    conc_future *f = mk();
    cr_assert_eq(conc_future_add_done_callback(f, log_cb, (void *)1), 0);
    cr_assert_eq(conc_future_add_done_callback(f, log_cb, (void *)2), 0);
    cr_assert_eq(conc_future_cancel(f), 0);
    cr_assert_eq(log_count(), 2, "cancel returned before the callbacks ran");
    cr_assert(pthread_equal(cblog.who[0], pthread_self()));
    cr_assert_eq(conc_future_cancel(f), 0);
    cr_assert_eq(log_count(), 2, "a second cancel ran the callbacks again");
    conc_future_free(f);

    f = mk();
    cr_assert_eq(conc_future_add_done_callback(f, log_cb, (void *)3), 0);
    cr_assert_eq(conc_future_set_running(f), 0);
    cr_assert_eq(log_count(), 2, "set_running ran a callback");
    cr_assert_eq(conc_future_set_exception(f, -EIO, 0), 0);
    cr_assert_eq(log_count(), 3);
    cr_assert_eq(cblog.order[2], 3);
    conc_future_free(f);
}

/* A callback that drops the last reference, and one that adds a callback. */
static void free_cb(conc_future *f, void *arg)
{
    (void)arg;
    conc_future_free(f);
}

static void adder_cb(conc_future *f, void *arg)
{
    cr_assert_eq(conc_future_add_done_callback(f, log_cb, arg), 0);
}

Test(future, callbacks_may_free_and_add)
{
    conc_future *f = mk();
    cr_assert_eq(conc_future_add_done_callback(f, adder_cb, (void *)7), 0);
    cr_assert_eq(conc_future_add_done_callback(f, free_cb, NULL), 0);
    cr_assert_eq(conc_future_add_done_callback(f, log_cb, (void *)8), 0);
    cr_assert_eq(conc_future_set_result(f, NULL), 0);   /* ASan: f stays valid */
    cr_assert_eq(log_count(), 2);
    cr_assert_eq(cblog.order[0], 7, "a callback added by a callback runs at once");
    cr_assert_eq(cblog.order[1], 8);
}

/* ------------------------------------------------------------ waiting */

struct waiter {
    conc_future *f;
    pid_t tid;
    int rc;
    void *v;
    double timeout;
};

static void *result_waiter(void *arg)
{
    struct waiter *w = arg;
    __atomic_store_n(&w->tid, gettid(), __ATOMIC_RELEASE);
    w->rc = conc_future_result(w->f, &w->v, NULL, w->timeout);
    return NULL;
}

static pthread_t start_waiter(struct waiter *w)
{
    pthread_t t = spawn(result_waiter, w);
    WAIT_FOR(__atomic_load_n(&w->tid, __ATOMIC_ACQUIRE) != 0);
    wait_thread_blocked(w->tid, BLOCKED_GUARD);
    return t;
}

Test(future, result_wakes_every_waiter)
{
    conc_future *f = mk();
    struct waiter w[3];
    pthread_t t[3];
    for (int i = 0; i < 3; i++) {
        w[i] = (struct waiter){ .f = f, .rc = 1, .timeout = i == 2 ? 60.0 : CONC_FOREVER };
        t[i] = start_waiter(&w[i]);
    }
    cr_assert_eq(conc_future_set_running(f), 0);
    int x;
    cr_assert_eq(conc_future_set_result(f, &x), 0);
    for (int i = 0; i < 3; i++) {
        pthread_join(t[i], NULL);
        cr_assert_eq(w[i].rc, 0);
        cr_assert_eq(w[i].v, &x);
    }
    conc_future_free(f);
}

Test(future, cancel_and_exception_wake_waiters)
{
    conc_future *f = mk();
    struct waiter w = { .f = f, .rc = 1, .timeout = CONC_FOREVER };
    pthread_t t = start_waiter(&w);
    cr_assert_eq(conc_future_cancel(f), 0);
    pthread_join(t, NULL);
    cr_assert_eq(w.rc, -ECANCELED);
    conc_future_free(f);

    f = mk();
    w = (struct waiter){ .f = f, .rc = 1, .timeout = CONC_FOREVER };
    t = start_waiter(&w);
    cr_assert_eq(conc_future_set_exception(f, -ECHILD, 3), 0);
    pthread_join(t, NULL);
    cr_assert_eq(w.rc, -ECHILD);
    conc_future_free(f);
}

Test(future, fd_becomes_readable_when_done)
{
    conc_future *f = mk();
    int fd = conc_future_fd(f);
    cr_assert_geq(fd, 0);
    cr_assert_eq(conc_future_fd(f), fd, "a second fd");
    cr_assert(!fd_readable(fd));
    cr_assert_eq(conc_future_set_running(f), 0);
    cr_assert(!fd_readable(fd));
    cr_assert_eq(conc_future_set_result(f, NULL), 0);
    cr_assert(fd_readable(fd));
    cr_assert(fd_readable(fd), "the fd stays readable");
    conc_future_free(f);
    cr_assert_eq(fcntl(fd, F_GETFD), -1, "the fd outlived the future");

    /* Asked for after the future is done: readable from the start. */
    f = mk();
    cr_assert_eq(conc_future_cancel(f), 0);
    fd = conc_future_fd(f);
    cr_assert_geq(fd, 0);
    cr_assert(fd_readable(fd));
    conc_future_free(f);
}

static void *finish_later(void *arg)
{
    struct waiter *w = arg;     /* tid: the thread to wait for */
    wait_thread_blocked(w->tid, BLOCKED_GUARD);
    cr_assert_eq(conc_future_set_result(w->f, (void *)2), 0);
    return NULL;
}

Test(future, in_conc_wait_beside_other_objects)
{
    conc_future *f = mk(), *g = mk();
    conc_queue *q;
    cr_assert_eq(conc_queue_new(&q, NULL), 0);
    conc_conn *a, *b;
    cr_assert_eq(conc_conn_pipe(&a, &b, true), 0);
    conc_waitable ws[4] = {
        { .kind = CONC_WAIT_QUEUE, .u.queue = q },
        { .kind = CONC_WAIT_FUTURE, .u.future = f },
        { .kind = CONC_WAIT_CONN, .u.conn = a },
        { .kind = CONC_WAIT_FUTURE, .u.future = g },
    };
    cr_assert_eq(conc_wait(ws, 4, 0), -EAGAIN);
    cr_assert_eq(conc_wait(ws, 4, 0.01), -ETIMEDOUT);

    struct waiter w = { .f = g, .tid = gettid() };
    pthread_t t = spawn(finish_later, &w);
    int r = conc_wait(ws, 4, 60.0);
    pthread_join(t, NULL);
    cr_assert_eq(r, 1);
    cr_assert(ws[3].ready);
    cr_assert(!ws[0].ready && !ws[1].ready && !ws[2].ready);

    /* Done ones are ready at once, cancelled ones too. */
    cr_assert_eq(conc_future_cancel(f), 0);
    cr_assert_eq(conc_wait(ws, 4, 0), 2);
    cr_assert(ws[1].ready && ws[3].ready);
    ws[1].u.future = NULL;
    cr_assert_eq(conc_wait(ws, 4, 0), -EINVAL);
    conc_conn_free(a);
    conc_conn_free(b);
    conc_queue_free(q);
    conc_future_free(f);
    conc_future_free(g);
}

/* --------------------------------------------------- several futures */

Test(future, wait_many_first_completed)
{
    conc_future *fs[3] = { mk(), mk(), mk() };
    bool done[3] = { true, true, true };
    cr_assert_eq(conc_future_wait_many(fs, 3, CONC_FIRST_COMPLETED, done, 0), -EAGAIN);
    cr_assert(!done[0] && !done[1] && !done[2], "done[] not filled on a poll");
    cr_assert_eq(conc_future_wait_many(fs, 3, CONC_FIRST_COMPLETED, done, 0.01), -ETIMEDOUT);
    struct waiter w = { .f = fs[1], .tid = gettid() };
    pthread_t t = spawn(finish_later, &w);
    cr_assert_eq(conc_future_wait_many(fs, 3, CONC_FIRST_COMPLETED, done, 60.0), 1);
    pthread_join(t, NULL);
    cr_assert(!done[0] && done[1] && !done[2]);
    /* Done already: returns at once. */
    cr_assert_eq(conc_future_wait_many(fs, 3, CONC_FIRST_COMPLETED, NULL, 0), 1);
    /* A cancel counts as done. */
    cr_assert_eq(conc_future_cancel(fs[0]), 0);
    cr_assert_eq(conc_future_wait_many(fs, 3, CONC_FIRST_COMPLETED, done, 0), 2);
    cr_assert(done[0] && done[1] && !done[2]);
    for (int i = 0; i < 3; i++)
        conc_future_free(fs[i]);
}

Test(future, wait_many_first_exception)
{
    conc_future *fs[3] = { mk(), mk(), mk() };
    bool done[3];
    /* A result and a cancel are not exceptions. */
    cr_assert_eq(conc_future_set_result(fs[0], NULL), 0);
    cr_assert_eq(conc_future_cancel(fs[1]), 0);
    cr_assert_eq(conc_future_wait_many(fs, 3, CONC_FIRST_EXCEPTION, done, 0), -EAGAIN);
    cr_assert(done[0] && done[1] && !done[2]);
    cr_assert_eq(conc_future_wait_many(fs, 3, CONC_FIRST_EXCEPTION, done, 0.01), -ETIMEDOUT);
    /* An exception ends it. */
    conc_future *gs[3] = { mk(), mk(), fs[0] };
    struct waiter w = { .f = gs[1], .tid = gettid() };
    (void)w;
    cr_assert_eq(conc_future_set_exception(gs[1], -EIO, 0), 0);
    cr_assert_eq(conc_future_wait_many(gs, 3, CONC_FIRST_EXCEPTION, done, 0), 2);
    cr_assert(!done[0] && done[1] && done[2]);
    /* All done without an exception ends it too. */
    cr_assert_eq(conc_future_set_result(fs[2], NULL), 0);
    cr_assert_eq(conc_future_wait_many(fs, 3, CONC_FIRST_EXCEPTION, done, 0), 3);
    for (int i = 0; i < 3; i++)
        conc_future_free(fs[i]);
    conc_future_free(gs[0]);
    conc_future_free(gs[1]);
}

struct exc_later {
    conc_future *ok, *bad;
    pid_t tid;
};

static void *exception_later(void *arg)
{
    struct exc_later *e = arg;
    wait_thread_blocked(e->tid, BLOCKED_GUARD);
    cr_assert_eq(conc_future_set_result(e->ok, NULL), 0);
    /* Back asleep after the result: a result does not end the wait. */
    wait_thread_blocked(e->tid, BLOCKED_GUARD);
    cr_assert_eq(conc_future_set_exception(e->bad, -EIO, 0), 0);
    return NULL;
}

Test(future, wait_many_first_exception_sleeps_through_results)
{
    conc_future *fs[3] = { mk(), mk(), mk() };
    struct exc_later e = { fs[0], fs[2], gettid() };
    pthread_t t = spawn(exception_later, &e);
    bool done[3];
    cr_assert_eq(conc_future_wait_many(fs, 3, CONC_FIRST_EXCEPTION, done, 60.0), 2);
    pthread_join(t, NULL);
    cr_assert(done[0] && !done[1] && done[2]);
    for (int i = 0; i < 3; i++)
        conc_future_free(fs[i]);
}

struct finisher {
    conc_future **fs;
    int n;
    pid_t tid;
};

static void *finish_all_one_by_one(void *arg)
{
    struct finisher *fin = arg;
    for (int i = 0; i < fin->n; i++) {
        wait_thread_blocked(fin->tid, BLOCKED_GUARD);
        if (i % 2)
            cr_assert_eq(conc_future_set_exception(fin->fs[i], -EIO, i), 0);
        else
            cr_assert_eq(conc_future_set_result(fin->fs[i], NULL), 0);
    }
    return NULL;
}

Test(future, wait_many_all_completed)
{
    enum { N = 5 };
    conc_future *fs[N + 1];
    for (int i = 0; i < N; i++)
        fs[i] = mk();
    fs[N] = fs[0];          /* a duplicate entry */
    bool done[N + 1];
    cr_assert_eq(conc_future_wait_many(fs, N + 1, CONC_ALL_COMPLETED, done, 0), -EAGAIN);
    struct finisher fin = { fs, N, gettid() };
    pthread_t t = spawn(finish_all_one_by_one, &fin);
    cr_assert_eq(conc_future_wait_many(fs, N + 1, CONC_ALL_COMPLETED, done, 60.0), N + 1);
    pthread_join(t, NULL);
    for (int i = 0; i <= N; i++)
        cr_assert(done[i]);
    for (int i = 0; i < N; i++)
        conc_future_free(fs[i]);
}

Test(future, wait_many_bad_arguments)
{
    conc_future *f = mk();
    conc_future *fs[2] = { f, NULL };
    cr_assert_eq(conc_future_wait_many(NULL, 1, CONC_ALL_COMPLETED, NULL, 0), -EINVAL);
    cr_assert_eq(conc_future_wait_many(fs, 2, CONC_ALL_COMPLETED, NULL, 0), -EINVAL);
    cr_assert_eq(conc_future_wait_many(fs, 1, (conc_future_when)0, NULL, 0), -EINVAL);
    cr_assert_eq(conc_future_wait_many(fs, 1, (conc_future_when)4, NULL, 0), -EINVAL);
    for (size_t i = 0; i < N_BAD_TIMEOUTS; i++)
        cr_assert_eq(conc_future_wait_many(fs, 1, CONC_ALL_COMPLETED, NULL, bad_timeouts[i]),
                     -EINVAL);
    cr_assert_eq(conc_future_wait_many(NULL, 0, CONC_ALL_COMPLETED, NULL, CONC_FOREVER), 0);
    conc_future_free(f);
}

Test(future, as_completed_order)
{
    enum { N = 6 };
    conc_future *fs[N + 2];
    for (int i = 0; i < N; i++)
        fs[i] = mk();
    fs[N] = fs[3];          /* duplicates are given once */
    fs[N + 1] = fs[3];
    /* 4 and 1 are done before the iterator exists: they come first, in
     * the order of fs[]. */
    cr_assert_eq(conc_future_set_result(fs[4], NULL), 0);
    cr_assert_eq(conc_future_cancel(fs[1]), 0);
    conc_as_completed *it;
    cr_assert_eq(conc_as_completed_new(&it, fs, N + 2), 0);
    /* Then in the order they finish. */
    cr_assert_eq(conc_future_set_exception(fs[5], -EIO, 0), 0);
    cr_assert_eq(conc_future_set_result(fs[0], NULL), 0);
    cr_assert_eq(conc_future_cancel(fs[3]), 0);
    int want[] = { 1, 4, 5, 0, 3 };
    for (int k = 0; k < 5; k++) {
        conc_future *got = NULL;
        cr_assert_eq(conc_as_completed_next(it, &got, 0), 1);
        cr_assert_eq(got, fs[want[k]], "step %d", k);
    }
    conc_future *got = NULL;
    cr_assert_eq(conc_as_completed_next(it, &got, 0), -EAGAIN);
    cr_assert_eq(conc_as_completed_next(it, &got, 0.01), -ETIMEDOUT);
    cr_assert_eq(conc_as_completed_next_until(it, &got, 0), -ETIMEDOUT);
    for (size_t i = 0; i < N_BAD_TIMEOUTS; i++)
        cr_assert_eq(conc_as_completed_next(it, &got, bad_timeouts[i]), -EINVAL);
    /* Still there after timeouts. */
    struct waiter w = { .f = fs[2], .tid = gettid() };
    pthread_t t = spawn(finish_later, &w);
    cr_assert_eq(conc_as_completed_next(it, &got, 60.0), 1);
    pthread_join(t, NULL);
    cr_assert_eq(got, fs[2]);
    cr_assert_eq(conc_as_completed_next(it, &got, CONC_FOREVER), 0, "more than N given");
    cr_assert_eq(conc_as_completed_next(it, &got, 0), 0);
    /* The iterator holds references: the futures outlive ours. */
    for (int i = 0; i < N; i++)
        conc_future_free(fs[i]);
    cr_assert(conc_future_done(got));
    conc_as_completed_free(it);
}

Test(future, as_completed_edges)
{
    conc_as_completed *it;
    cr_assert_eq(conc_as_completed_new(&it, NULL, 0), 0);
    conc_future *got;
    cr_assert_eq(conc_as_completed_next(it, &got, CONC_FOREVER), 0);
    cr_assert_eq(conc_as_completed_next(it, NULL, 0), -EINVAL);
    cr_assert_eq(conc_as_completed_next(NULL, &got, 0), -EINVAL);
    conc_as_completed_free(it);
    conc_as_completed_free(NULL);
    conc_future *fs[2] = { mk(), NULL };
    cr_assert_eq(conc_as_completed_new(NULL, fs, 1), -EINVAL);
    cr_assert_eq(conc_as_completed_new(&it, NULL, 1), -EINVAL);
    cr_assert_eq(conc_as_completed_new(&it, fs, 2), -EINVAL);
    /* Freed with futures pending: their later finish touches nothing. */
    cr_assert_eq(conc_as_completed_new(&it, fs, 1), 0);
    conc_as_completed_free(it);
    cr_assert_eq(conc_future_set_result(fs[0], NULL), 0);
    conc_future_free(fs[0]);
}

/* Many threads finish many futures while as_completed and wait_many watch:
 * each is given exactly once. */
struct storm {
    conc_future **fs;
    int from, to;
};

static void *storm_finish(void *arg)
{
    struct storm *s = arg;
    for (int i = s->from; i < s->to; i++) {
        if (i % 3 == 0)
            conc_future_cancel(s->fs[i]);
        else
            conc_future_set_result(s->fs[i], (void *)(intptr_t)i);
    }
    return NULL;
}

Test(future, as_completed_under_concurrent_finishing)
{
    enum { N = 2000, T = 4 };
    conc_future **fs = malloc(N * sizeof *fs);
    for (int i = 0; i < N; i++)
        fs[i] = mk();
    conc_as_completed *it;
    cr_assert_eq(conc_as_completed_new(&it, fs, N), 0);
    struct storm s[T];
    pthread_t t[T];
    for (int k = 0; k < T; k++) {
        s[k] = (struct storm){ fs, k * N / T, (k + 1) * N / T };
        t[k] = spawn(storm_finish, &s[k]);
    }
    bool *seen = calloc(N, 1);
    conc_future *got;
    int count = 0, r;
    while ((r = conc_as_completed_next(it, &got, 60.0)) == 1) {
        int idx = -1;
        for (int i = 0; i < N; i++)
            if (fs[i] == got)
                idx = i;
        cr_assert_geq(idx, 0);
        cr_assert(!seen[idx], "future %d given twice", idx);
        cr_assert(conc_future_done(got));
        seen[idx] = true;
        count++;
    }
    cr_assert_eq(r, 0);
    cr_assert_eq(count, N);
    for (int k = 0; k < T; k++)
        pthread_join(t[k], NULL);
    cr_assert_eq(conc_future_wait_many(fs, N, CONC_ALL_COMPLETED, NULL, 0), N);
    conc_as_completed_free(it);
    for (int i = 0; i < N; i++)
        conc_future_free(fs[i]);
    free(fs);
    free(seen);
}

/* ---------------------------------------------------------- coroutines */

static conc_future *co_f;
static char co_log[16];
static int co_rc;

static void co_append(char c)
{
    size_t n = strlen(co_log);
    cr_assert_lt(n + 1, sizeof co_log);
    co_log[n] = c;
}

static void *co_waiter(void *arg)
{
    (void)arg;
    co_append('w');
    void *v = NULL;
    co_rc = conc_future_result(co_f, &v, NULL, CONC_FOREVER);
    cr_assert_eq(v, (void *)co_log);
    co_append('W');
    return NULL;
}

static void *co_setter(void *arg)
{
    (void)arg;
    co_append('s');
    cr_assert_eq(conc_future_set_result(co_f, co_log), 0);
    co_append('S');
    return NULL;
}

Test(future, coroutine_parks_in_result)
{
    co_f = mk();
    conc_greenlet *w, *s;
    cr_assert_eq(conc_greenlet_spawn(&w, co_waiter, NULL, NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&s, co_setter, NULL, NULL), 0);
    cr_assert_eq(conc_hub_run(), 0);
    /* The waiter parked (the setter ran in the same thread) and woke. */
    cr_assert_str_eq(co_log, "wsSW");
    cr_assert_eq(co_rc, 0);
    conc_greenlet_free(w);
    conc_greenlet_free(s);
    conc_future_free(co_f);
    cr_assert_eq(conc_hub_free(), 0);
}

static void *co_wait_many(void *arg)
{
    conc_future **fs = arg;
    co_append('w');
    co_rc = conc_future_wait_many(fs, 2, CONC_ALL_COMPLETED, NULL, CONC_FOREVER);
    co_append('W');
    return NULL;
}

static void *co_as_completed(void *arg)
{
    conc_future **fs = arg;
    conc_as_completed *it;
    cr_assert_eq(conc_as_completed_new(&it, fs, 2), 0);
    conc_future *got;
    co_append('a');
    cr_assert_eq(conc_as_completed_next(it, &got, CONC_FOREVER), 1);
    cr_assert_eq(got, fs[1]);
    co_append('A');
    conc_as_completed_free(it);
    return NULL;
}

static void *co_finish_two(void *arg)
{
    conc_future **fs = arg;
    co_append('s');
    cr_assert_eq(conc_future_set_result(fs[1], NULL), 0);
    conc_sleep(0);      /* as_completed's greenlet runs, wait_many's parks on */
    co_append('t');
    cr_assert_eq(conc_future_cancel(fs[0]), 0);
    return NULL;
}

Test(future, coroutines_park_in_wait_many_and_as_completed)
{
    conc_future *fs[2] = { mk(), mk() };
    conc_greenlet *g[3];
    co_rc = 1;
    cr_assert_eq(conc_greenlet_spawn(&g[0], co_wait_many, fs, NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&g[1], co_as_completed, fs, NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&g[2], co_finish_two, fs, NULL), 0);
    cr_assert_eq(conc_hub_run(), 0);
    cr_assert_str_eq(co_log, "wasAtW");
    cr_assert_eq(co_rc, 2);
    for (int i = 0; i < 3; i++)
        conc_greenlet_free(g[i]);
    conc_future_free(fs[0]);
    conc_future_free(fs[1]);
    cr_assert_eq(conc_hub_free(), 0);
}

static void *co_killed_waiter(void *arg)
{
    co_rc = conc_future_result(arg, NULL, NULL, CONC_FOREVER);
    return NULL;
}

Test(future, killed_coroutine_leaves_the_future_alone)
{
    conc_future *f = mk();
    conc_greenlet *g;
    co_rc = 1;
    cr_assert_eq(conc_greenlet_spawn(&g, co_killed_waiter, f, NULL), 0);
    conc_sleep(0);                  /* g parks in result */
    cr_assert_eq(conc_greenlet_kill(g), 0);
    cr_assert_eq(conc_greenlet_join(g, 60.0), 0);
    cr_assert_eq(co_rc, -ECANCELED);
    cr_assert(!conc_future_cancelled(f), "killing the waiter cancelled the future");
    cr_assert_eq(conc_future_state(f), CONC_FUTURE_PENDING);
    conc_greenlet_free(g);
    cr_assert_eq(conc_future_set_result(f, NULL), 0);
    conc_future_free(f);
    cr_assert_eq(conc_hub_free(), 0);
}
