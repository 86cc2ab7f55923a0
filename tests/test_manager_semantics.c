/*
 * test_manager_semantics.c - conc/manager.h where its objects must do what
 * Python's do (threading's objects in a SyncManager's server):
 *   - Event.set() wakes every waiter that waits at that moment, also when
 *     clear() follows at once (a "pulse"): threading.Event.wait returns True
 *     to them; it must not miss the set because the flag was down again by
 *     the time the waiter looked.
 *   - A SyncManager's Queue is a queue.Queue: it has task_done and join,
 *     as its JoinableQueue does.
 * and where they do better than Python's:
 *   - A call with a timeout returns, also when the server does not run
 *     (where Python's proxy waits for ever); so does one without a timeout,
 *     which looks whether the server still greets a new connection.
 *   - A Queue.get, or a list's or dict's pop, whose client is gone before
 *     its answer loses no message or item.
 *   - Typed Values and Arrays made with a first value; Queue.full(); an
 *     address with a service name; an idle server that sleeps.
 *
 * Criterion runs every test in its own process.
 */
#include <criterion/criterion.h>

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conc.h"
#include "support/task_state.h"

/* Children of this test never report leaks (a started manager's server is
 * a fork of it that exits without freeing what the test made). */
#define CONC_TEST_TSAN_OPTIONS "atexit_sleep_ms=0:die_after_fork=0"
#include "support/fork_sanitizers.h"

#define GUARD 30.0                      /* a hang guard, never reached when correct */
#define WAIT_LIMIT 5.0                  /* a waiter that missed the set gives up here */

/* A request as src/manager_wire.h lays it out: a 48-byte head, no strings. */
static size_t raw_req(uint8_t *buf, uint8_t op, uint64_t id)
{
    memset(buf, 0, 48);
    buf[0] = 1;
    buf[1] = op;
    memcpy(buf + 8, &id, 8);
    int64_t none = -1;
    memcpy(buf + 16, &none, 8);
    return 48;
}

enum { OP_E_SET = 35, OP_E_CLEAR = 36 };   /* src/manager_wire.h */

/* Waits until every thread of the stopped server shows state 'T' (a
 * SIGSTOP stops the threads one by one: one that runs yet could still
 * serve a request sent meanwhile). */
static void await_stopped(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    int64_t guard = conc_now() + (int64_t)(GUARD * 1e9);
    for (;;) {
        DIR *d = opendir(path);
        cr_assert_not_null(d);
        bool all = true;
        struct dirent *e;
        while ((e = readdir(d)) != NULL)
            if (e->d_name[0] != '.' && task_state(pid, (pid_t)atoi(e->d_name)) != 'T')
                all = false;
        closedir(d);
        if (all)
            return;
        cr_assert_lt(conc_now(), guard, "the server did not stop");
        usleep(1000);
    }
}

struct waiter {
    conc_proxy *e;
    int r;
};

static void *event_waiter(void *arg)
{
    struct waiter *w = arg;
    w->r = conc_proxy_event_wait(w->e, WAIT_LIMIT);
    return NULL;
}

Test(manager_semantics, event_pulse_wakes_the_waiters, .timeout = 60)
{
    conc_manager *m;
    cr_assert_eq(conc_manager_new(&m, NULL), 0);
    cr_assert_eq(conc_manager_start(m), 0);
    char addr[128];
    cr_assert_gt(conc_manager_address(m, addr, sizeof addr), 0);
    conc_proxy *e;
    cr_assert_eq(conc_manager_create(m, &e, CONC_PROXY_EVENT, "e", 0, 0), 0);

    enum { N = 3 };
    struct waiter w[N];
    pthread_t t[N];
    for (int i = 0; i < N; i++) {
        cr_assert_eq(conc_proxy_dup(&w[i].e, e), 0);
        w[i].r = 1;
        pid_t tid;
        t[i] = spawn_tid(event_waiter, &w[i], &tid);
        wait_thread_blocked(tid, GUARD);            /* its request is sent */
    }
    /* One more round trip: the server has taken the waits by now. */
    cr_expect_eq(conc_proxy_event_is_set(e), 0);

    /* set() and clear() in one write: the server reads both at once and
     * runs them one after the other, before any waiter looks again. */
    conc_conn *c;
    cr_assert_eq(conc_client_connect(&c, addr, NULL, GUARD), 0);
    char hello[64];
    cr_assert_gt(conc_conn_recv_bytes(c, hello, sizeof hello, GUARD), 0);
    uint8_t set[48], clear[48];
    raw_req(set, OP_E_SET, conc_proxy_id(e));
    raw_req(clear, OP_E_CLEAR, conc_proxy_id(e));
    uint8_t both[2 * (8 + 48)];
    uint64_t len = 48;
    memcpy(both, &len, 8);
    memcpy(both + 8, set, 48);
    memcpy(both + 56, &len, 8);
    memcpy(both + 64, clear, 48);
    int fd = conc_conn_fd(c);
    cr_assert_eq(write(fd, both, sizeof both), (ssize_t)sizeof both);
    for (int i = 0; i < 2; i++) {
        void *ans;
        size_t alen;
        cr_assert_eq(conc_conn_recv_alloc(c, &ans, &alen, GUARD), 0);
        int32_t st;
        memcpy(&st, ans, 4);
        free(ans);
        cr_expect_eq(st, 0);
    }
    conc_conn_free(c);

    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        cr_expect_eq(w[i].r, 0, "waiter %d: %d (it missed the set)", i, w[i].r);
        conc_proxy_free(w[i].e);
    }
    cr_expect_eq(conc_proxy_event_is_set(e), 0);    /* cleared */
    /* A wait that starts after the pulse waits for the next set. */
    cr_expect_eq(conc_proxy_event_wait(e, 0), -EAGAIN);
    conc_proxy_free(e);
    conc_manager_free(m);
}

struct joiner {
    conc_proxy *q;
    int r;
};

static void *queue_joiner(void *arg)
{
    struct joiner *j = arg;
    j->r = conc_proxy_queue_join(j->q, GUARD);
    return NULL;
}

Test(manager_semantics, plain_queue_has_task_done_and_join, .timeout = 60)
{
    conc_manager *m;
    cr_assert_eq(conc_manager_new(&m, NULL), 0);
    cr_assert_eq(conc_manager_start(m), 0);
    conc_proxy *q;
    cr_assert_eq(conc_manager_create(m, &q, CONC_PROXY_QUEUE, NULL, 0, 0), 0);
    cr_expect_eq(conc_proxy_queue_join(q, 0), 0);           /* nothing put yet */
    cr_expect_eq(conc_proxy_queue_task_done(q), -EOVERFLOW); /* ValueError */
    cr_assert_eq(conc_proxy_queue_put(q, "a", 1, GUARD), 0);
    cr_assert_eq(conc_proxy_queue_put(q, "b", 1, GUARD), 0);
    cr_expect_eq(conc_proxy_queue_join(q, 0), -EAGAIN);

    struct joiner j = { .r = 1 };
    cr_assert_eq(conc_proxy_dup(&j.q, q), 0);
    pid_t tid;
    pthread_t t = spawn_tid(queue_joiner, &j, &tid);
    wait_thread_blocked(tid, GUARD);
    void *v;
    size_t n;
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(conc_proxy_queue_get(q, &v, &n, GUARD), 0);
        free(v);
        cr_expect_eq(__atomic_load_n(&j.r, __ATOMIC_ACQUIRE), 1, "join returned early");
        cr_expect_eq(conc_proxy_queue_task_done(q), 0);
    }
    pthread_join(t, NULL);
    cr_expect_eq(j.r, 0);
    cr_expect_eq(conc_proxy_queue_task_done(q), -EOVERFLOW);
    conc_proxy_free(j.q);
    conc_proxy_free(q);
    conc_manager_free(m);
}

/* A server that does not answer at all (stopped, or its thread held up):
 * a call with a timeout gives up some time after it (10 s), with
 * -ECONNRESET, and its proxy is broken (the answer could still come);
 * the call does not wait for ever.  Other proxies work again once the
 * server runs. */
struct getter {
    conc_proxy *q;
    int r;
};

static void *timed_getter(void *arg)
{
    struct getter *g = arg;
    void *v = NULL;
    size_t n;
    int r = conc_proxy_queue_get(g->q, &v, &n, 0.2);
    free(v);
    __atomic_store_n(&g->r, r, __ATOMIC_RELEASE);
    return NULL;
}

static void *timed_acquirer(void *arg)
{
    struct getter *g = arg;
    __atomic_store_n(&g->r, conc_proxy_acquire(g->q, 0.2), __ATOMIC_RELEASE);
    return NULL;
}

Test(manager_semantics, a_timed_call_to_a_stopped_server_gives_up, .timeout = 90)
{
    conc_manager *m;
    cr_assert_eq(conc_manager_new(&m, NULL), 0);
    cr_assert_eq(conc_manager_start(m), 0);
    conc_proxy *q, *d, *lk, *lk2;
    cr_assert_eq(conc_manager_create(m, &q, CONC_PROXY_QUEUE, "q", 0, 0), 0);
    cr_assert_eq(conc_manager_create(m, &d, CONC_PROXY_DICT, "d", 0, 0), 0);
    cr_assert_eq(conc_manager_create(m, &lk, CONC_PROXY_LOCK, "l", 0, 0), 0);
    cr_assert_eq(conc_manager_create(m, &lk2, CONC_PROXY_LOCK, "l", 0, 0), 0);
    cr_assert_eq(conc_proxy_acquire(lk, 5.0), 0);
    pid_t pid = conc_manager_pid(m);
    cr_assert_eq(kill(pid, SIGSTOP), 0);
    await_stopped(pid);
    struct getter g = { .q = q, .r = 1 }, a = { .q = lk, .r = 1 };
    pthread_t t, ta;
    cr_assert_eq(pthread_create(&t, NULL, timed_getter, &g), 0);
    cr_assert_eq(pthread_create(&ta, NULL, timed_acquirer, &a), 0);
    /* A hang guard: the calls must end by themselves well before it. */
    int64_t guard = conc_now() + 60 * (int64_t)1000000000;
    while ((__atomic_load_n(&g.r, __ATOMIC_ACQUIRE) == 1 ||
            __atomic_load_n(&a.r, __ATOMIC_ACQUIRE) == 1) &&
           conc_now() < guard)
        usleep(10000);
    int r = __atomic_load_n(&g.r, __ATOMIC_ACQUIRE), ra = __atomic_load_n(&a.r, __ATOMIC_ACQUIRE);
    cr_assert_eq(kill(pid, SIGCONT), 0);
    pthread_join(t, NULL);
    pthread_join(ta, NULL);
    cr_expect_eq(r, -ECONNRESET, "the timed get from a stopped server: %d", r);
    cr_expect_eq(ra, -ECONNRESET, "the timed acquire from a stopped server: %d", ra);
    cr_expect_eq(conc_proxy_queue_qsize(q), -EPIPE, "its proxy is broken");
    cr_expect_eq(conc_proxy_dict_set(d, "k", 1, "v", 1), 0, "another proxy works again");
    /* The given-up proxy's connection was closed: the Lock it held is
     * released once the server runs. */
    cr_expect_eq(conc_proxy_acquire(lk2, GUARD), 0);
    conc_proxy_free(q);
    conc_proxy_free(d);
    conc_proxy_free(lk);
    conc_proxy_free(lk2);
    conc_manager_free(m);
}

/* A client that sends Queue.get and is gone before its answer is written
 * (killed, or it closed) does not take the message with it: the server,
 * whose answer cannot be sent, puts the message back in its place in the
 * queue (by the order of the puts, also when several connections give
 * theirs back at once), and the next get has it. */
enum { OP_Q_GET = 29 };                 /* src/manager_wire.h */

/* The descriptors pid has open whose link starts with kind ("socket:"),
 * or all of them (kind NULL). */
static int fds_of(pid_t pid, const char *kind)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    cr_assert_not_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (e->d_name[0] == '.')
            continue;
        char link[PATH_MAX], what[64] = "";
        snprintf(link, sizeof link, "%s/%s", path, e->d_name);
        if (kind && readlink(link, what, sizeof what - 1) < 0)
            continue;
        n += !kind || strncmp(what, kind, strlen(kind)) == 0;
    }
    closedir(d);
    return n;
}

/* The sockets pid has open (its other descriptors, the event descriptors
 * of the loops it makes as connections come, do not count). */
static int sockets_of(pid_t pid)
{
    return fds_of(pid, "socket:");
}

/* Waits (hang guard) until pid has at most n sockets open. */
static void await_sockets(pid_t pid, int n)
{
    int64_t guard = conc_now() + (int64_t)(GUARD * 1e9);
    while (sockets_of(pid) > n) {
        cr_assert_lt(conc_now(), guard, "the server never closed the connections");
        usleep(1000);
    }
}

Test(manager_semantics, a_get_whose_client_is_gone_gives_the_message_back, .timeout = 60)
{
    conc_manager *m;
    cr_assert_eq(conc_manager_new(&m, NULL), 0);
    cr_assert_eq(conc_manager_start(m), 0);
    char addr[128];
    cr_assert_gt(conc_manager_address(m, addr, sizeof addr), 0);
    conc_proxy *q;
    cr_assert_eq(conc_manager_create(m, &q, CONC_PROXY_QUEUE, "q", 0, 0), 0);
    cr_assert_eq(conc_proxy_queue_put(q, "first", 5, GUARD), 0);
    cr_assert_eq(conc_proxy_queue_put(q, "second", 6, GUARD), 0);

    pid_t pid = conc_manager_pid(m);
    int base = sockets_of(pid);
    conc_conn *c[3];
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(conc_client_connect(&c[i], addr, NULL, GUARD), 0);
        char hello[64];
        cr_assert_gt(conc_conn_recv_bytes(c[i], hello, sizeof hello, GUARD), 0);
    }
    /* Stopped, the server reads the requests only after their clients
     * closed: its answers cannot be sent. */
    cr_assert_eq(kill(pid, SIGSTOP), 0);
    await_stopped(pid);
    for (int i = 0; i < 3; i++) {
        uint8_t get[48];
        raw_req(get, OP_Q_GET, conc_proxy_id(q));
        cr_assert_eq(conc_conn_send_bytes(c[i], get, sizeof get, GUARD), 0);
        conc_conn_free(c[i]);           /* gone before the answer */
    }
    cr_assert_eq(kill(pid, SIGCONT), 0);
    /* Once the server has ended the three connections, each has given
     * back what it took (a get read sooner could see one given back
     * while the other is still out). */
    await_sockets(pid, base);
    cr_assert_eq(conc_proxy_queue_qsize(q), 2);
    void *v;
    size_t n;
    cr_assert_eq(conc_proxy_queue_get(q, &v, &n, 5.0), 0, "the first message was lost");
    cr_expect(n == 5 && memcmp(v, "first", 5) == 0, "got '%.*s'", (int)n, (char *)v);
    free(v);
    cr_assert_eq(conc_proxy_queue_get(q, &v, &n, 5.0), 0, "the second message was lost");
    cr_expect(n == 6 && memcmp(v, "second", 6) == 0, "got '%.*s'", (int)n, (char *)v);
    free(v);
    cr_expect_eq(conc_proxy_queue_qsize(q), 0);
    conc_proxy_free(q);
    conc_manager_free(m);
}

/* Python's m.Value('i', 5) and m.Array('i', [1, 2, 3]): a typed Value or
 * Array made with its first value, which the server sets as it makes the
 * object (so another process that asks for the name never sees it zero);
 * a name found keeps the value it has. */
Test(manager_semantics, typed_value_and_array_with_a_first_value, .timeout = 60)
{
    conc_manager *m;
    cr_assert_eq(conc_manager_new(&m, NULL), 0);
    cr_assert_eq(conc_manager_start(m), 0);
    conc_proxy *v, *v2, *vd, *vdi, *a, *af, *bad;
    int64_t x;
    double d;
    cr_assert_eq(conc_manager_value_int(m, &v, "count", 'i', 5), 0);
    cr_expect_eq(conc_proxy_typecode(v), 'i');
    cr_expect_eq(conc_proxy_value_get_int(v, &x), 0);
    cr_expect_eq(x, 5);
    cr_expect_eq(conc_proxy_value_set_int(v, 6), 0);
    /* The name is found: its value stays, the new first value is not set. */
    cr_assert_eq(conc_manager_value_int(m, &v2, "count", 'i', 99), 0);
    cr_expect_eq(conc_proxy_id(v2), conc_proxy_id(v));
    cr_expect_eq(conc_proxy_value_get_int(v2, &x), 0);
    cr_expect_eq(x, 6);
    cr_expect_eq(conc_manager_value_int(m, &bad, "count", 'q', 1), -EEXIST);

    cr_assert_eq(conc_manager_value_float(m, &vd, NULL, 'd', -2.5), 0);
    cr_expect_eq(conc_proxy_value_get_float(vd, &d), 0);
    cr_expect(d == -2.5, "%g", d);
    cr_assert_eq(conc_manager_value_int(m, &vdi, NULL, 'f', 3), 0);   /* converted */
    cr_expect_eq(conc_proxy_value_get_float(vdi, &d), 0);
    cr_expect(d == 3.0, "%g", d);

    int64_t xs[] = { 1, -2, 3 };
    cr_assert_eq(conc_manager_array_int(m, &a, "arr", 'h', xs, 3), 0);
    cr_expect_eq(conc_proxy_array_len(a), 3);
    for (int i = 0; i < 3; i++) {
        cr_expect_eq(conc_proxy_array_get_int(a, i, &x), 0);
        cr_expect_eq(x, xs[i], "item %d: %lld", i, (long long)x);
    }
    double fs[] = { 0.5, -1.25 };
    cr_assert_eq(conc_manager_array_float(m, &af, NULL, 'f', fs, 2), 0);
    cr_expect_eq(conc_proxy_array_get_float(af, 1, &d), 0);
    cr_expect(d == -1.25, "%g", d);

    /* Bad first values make nothing: the name is still free afterwards. */
    int64_t out_of_range[] = { 1, -1 };
    cr_expect_eq(conc_manager_array_int(m, &bad, "never", 'B', out_of_range, 2), -ERANGE);
    cr_expect_eq(conc_manager_value_int(m, &bad, "never", 'b', 128), -ERANGE);
    cr_expect_eq(conc_manager_value_float(m, &bad, "never", 'i', 1.5), -EINVAL);
    cr_expect_eq(conc_manager_array_int(m, &bad, "never", 'i', NULL, 2), -EINVAL);
    cr_expect_eq(conc_manager_array_int(m, &bad, "never", 'i', xs, 0), -EINVAL);
    cr_expect_eq(conc_manager_value_int(m, &bad, "never", 'x', 1), -EINVAL);
    cr_expect_eq(conc_manager_value_int(NULL, &bad, NULL, 'i', 1), -EINVAL);
    cr_expect_eq(conc_manager_value_int(m, NULL, NULL, 'i', 1), -EINVAL);
    conc_proxy *fresh;
    cr_assert_eq(conc_manager_array(m, &fresh, "never", 'B', 2), 0);
    cr_expect_eq(conc_proxy_array_get_int(fresh, 1, &x), 0);
    cr_expect_eq(x, 0, "made fresh by the plain call: zero");

    conc_proxy *all[] = { v, v2, vd, vdi, a, af, fresh };
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        conc_proxy_free(all[i]);
    conc_manager_free(m);
}

/* The server checks a first value as every other field: a CREATE whose
 * first value is not exactly the object's bytes, or comes without a
 * typecode, is refused with -EINVAL and the connection stays usable. */
enum { OP_CREATE = 3 };                 /* src/manager_wire.h */

static size_t put_str(uint8_t *buf, size_t pos, const void *p, uint32_t len)
{
    memcpy(buf + pos, &len, 4);
    memcpy(buf + pos + 4, p, len);
    return pos + 4 + len;
}

static int32_t create_status(conc_conn *c, int64_t type, int64_t n, int64_t size,
                             const char *tc, const void *init, uint32_t init_len)
{
    uint8_t buf[256];
    raw_req(buf, OP_CREATE, 0);
    uint32_t nargs = tc ? (init ? 3 : 2) : 1;
    memcpy(buf + 4, &nargs, 4);
    memcpy(buf + 24, &type, 8);
    memcpy(buf + 32, &n, 8);
    memcpy(buf + 40, &size, 8);
    size_t pos = put_str(buf, 48, "", 0);
    if (tc)
        pos = put_str(buf, pos, tc, (uint32_t)strlen(tc));
    if (init)
        pos = put_str(buf, pos, init, init_len);
    cr_assert_eq(conc_conn_send_bytes(c, buf, pos, GUARD), 0);
    uint8_t ans[64];
    ssize_t got = conc_conn_recv_bytes(c, ans, sizeof ans, GUARD);
    cr_assert_geq(got, 16, "an answer: %zd", got);
    int32_t st;
    memcpy(&st, ans, 4);
    return st;
}

Test(manager_semantics, a_first_value_is_checked_by_the_server, .timeout = 60)
{
    conc_manager *m;
    cr_assert_eq(conc_manager_new(&m, NULL), 0);
    cr_assert_eq(conc_manager_start(m), 0);
    char addr[128];
    cr_assert_gt(conc_manager_address(m, addr, sizeof addr), 0);
    conc_conn *c;
    cr_assert_eq(conc_client_connect(&c, addr, NULL, GUARD), 0);
    char hello[64];
    cr_assert_gt(conc_conn_recv_bytes(c, hello, sizeof hello, GUARD), 0);
    int32_t four = 4;
    uint8_t eight[8] = { 0 };
    cr_expect_eq(create_status(c, CONC_PROXY_VALUE, 4, 0, "i", &four, 4), 0);
    cr_expect_eq(create_status(c, CONC_PROXY_VALUE, 4, 0, "i", eight, 3), -EINVAL);
    cr_expect_eq(create_status(c, CONC_PROXY_VALUE, 4, 0, "i", eight, 8), -EINVAL);
    cr_expect_eq(create_status(c, CONC_PROXY_ARRAY, 2, 4, "i", eight, 8), 0);
    cr_expect_eq(create_status(c, CONC_PROXY_ARRAY, 2, 4, "i", eight, 4), -EINVAL);
    cr_expect_eq(create_status(c, CONC_PROXY_ARRAY, 2, 4, "i", eight, 0), -EINVAL);
    cr_expect_eq(create_status(c, CONC_PROXY_DICT, 0, 0, "i", eight, 4), -EINVAL);
    conc_conn_free(c);
    conc_manager_free(m);
}

/* Queue.full() and Queue.empty() (the proxy of Python's Queue has both),
 * and the maxsize the queue was made with, as the server knows it: a
 * proxy that found the queue by name or id sees the same bound. */
Test(manager_semantics, queue_full_empty_and_maxsize, .timeout = 60)
{
    conc_manager *m;
    cr_assert_eq(conc_manager_new(&m, NULL), 0);
    cr_assert_eq(conc_manager_start(m), 0);
    conc_proxy *q, *q2, *jq, *uq, *d;
    cr_assert_eq(conc_manager_create(m, &q, CONC_PROXY_QUEUE, "bounded", 2, 0), 0);
    cr_assert_eq(conc_manager_open(m, &q2, conc_proxy_id(q)), 0);
    cr_expect_eq(conc_proxy_queue_maxsize(q), 2);
    cr_expect_eq(conc_proxy_queue_maxsize(q2), 2);
    cr_expect_eq(conc_proxy_queue_empty(q), 1);
    cr_expect_eq(conc_proxy_queue_full(q), 0);
    cr_assert_eq(conc_proxy_queue_put(q, "a", 1, GUARD), 0);
    cr_expect_eq(conc_proxy_queue_empty(q2), 0);
    cr_expect_eq(conc_proxy_queue_full(q2), 0);
    cr_assert_eq(conc_proxy_queue_put(q2, "b", 1, GUARD), 0);
    cr_expect_eq(conc_proxy_queue_full(q), 1);
    cr_expect_eq(conc_proxy_queue_full(q2), 1);
    cr_expect_eq(conc_proxy_queue_put(q, "c", 1, 0), -EAGAIN, "full() agrees with put");
    void *v;
    size_t n;
    cr_assert_eq(conc_proxy_queue_get(q, &v, &n, GUARD), 0);
    free(v);
    cr_expect_eq(conc_proxy_queue_full(q), 0);
    cr_expect_eq(conc_proxy_queue_empty(q), 0);

    cr_assert_eq(conc_manager_create(m, &jq, CONC_PROXY_JOINABLE_QUEUE, NULL, 1, 0), 0);
    cr_expect_eq(conc_proxy_queue_maxsize(jq), 1);
    cr_assert_eq(conc_proxy_queue_put(jq, "x", 1, GUARD), 0);
    cr_expect_eq(conc_proxy_queue_full(jq), 1);

    /* maxsize 0: no bound, never full. */
    cr_assert_eq(conc_manager_create(m, &uq, CONC_PROXY_QUEUE, NULL, 0, 0), 0);
    cr_expect_eq(conc_proxy_queue_maxsize(uq), 0);
    for (int i = 0; i < 100; i++)
        cr_assert_eq(conc_proxy_queue_put(uq, "u", 1, GUARD), 0);
    cr_expect_eq(conc_proxy_queue_full(uq), 0);
    cr_expect_eq(conc_proxy_queue_empty(uq), 0);

    cr_assert_eq(conc_manager_create(m, &d, CONC_PROXY_DICT, NULL, 0, 0), 0);
    cr_expect_eq(conc_proxy_queue_full(d), -EINVAL);
    cr_expect_eq(conc_proxy_queue_empty(d), -EINVAL);
    cr_expect_eq(conc_proxy_queue_maxsize(d), -EINVAL);
    cr_expect_eq(conc_proxy_queue_full(NULL), -EINVAL);
    conc_proxy *all[] = { q, q2, jq, uq, d };
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        conc_proxy_free(all[i]);
    conc_manager_free(m);
}

/* A manager's address is read as conc_address_parse reads it: HOST:SERVICE
 * with a service name is TCP (so it needs an authkey), a text with a '/'
 * is a path whatever follows its ':'. */
Test(manager_semantics, a_service_name_address_is_tcp, .timeout = 60)
{
    conc_manager *m = NULL;
    conc_manager_opts o = CONC_MANAGER_OPTS_INIT;
    o.address = "localhost:http";
    cr_expect_eq(conc_manager_new(&m, &o), -EINVAL, "TCP without an authkey");
    o.address = "[::1]:http";
    cr_expect_eq(conc_manager_new(&m, &o), -EINVAL, "TCP without an authkey");
    o.address = "./sock:http";
    cr_assert_eq(conc_manager_new(&m, &o), 0, "a path");
    conc_manager_free(m);
    o.address = "localhost:no-such-service-here";
    o.authkey = "key";
    o.authkey_len = 3;
    cr_assert_eq(conc_manager_new(&m, &o), 0);
    cr_expect_eq(conc_manager_connect(m), CONC_EAI_SERVICE);
    conc_manager_free(m);
}

/* ------------------------------------------------ an idle server sleeps */

/* The server's voluntary context switches, over all its threads (the
 * accept loop's and the others that serve connections): each wake-up from
 * a wait is one. */
static long server_switches(pid_t pid)
{
    char path[320], line[256];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    cr_assert_not_null(d);
    long total = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "/proc/%d/task/%s/status", (int)pid, e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        long n = 0;
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "voluntary_ctxt_switches: %ld", &n) == 1)
                break;
        fclose(f);
        total += n;
    }
    closedir(d);
    return total;
}

/* Waits until every thread of the server sleeps. */
static bool await_all_blocked(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    int64_t guard = conc_now() + (int64_t)(GUARD * 1e9);
    while (conc_now() < guard) {
        DIR *d = opendir(path);
        if (!d)
            return false;
        bool all = true;
        struct dirent *e;
        while ((e = readdir(d)) != NULL)
            if (e->d_name[0] != '.' && !task_blocked(pid, (pid_t)atoi(e->d_name)))
                all = false;
        closedir(d);
        if (all)
            return true;
        usleep(1000);
    }
    return false;
}

/* An idle server sleeps in its accept without a time limit: nothing wakes
 * it while no client does anything (the accept loop looked at its stop
 * flag every 50 ms before, waking ten times in this window). */
Test(manager_semantics, an_idle_server_does_not_wake, .timeout = 60)
{
    conc_manager *m;
    cr_assert_eq(conc_manager_new(&m, NULL), 0);
    cr_assert_eq(conc_manager_start(m), 0);
    conc_proxy *d;
    cr_assert_eq(conc_manager_create(m, &d, CONC_PROXY_DICT, NULL, 0, 0), 0);
    cr_assert_eq(conc_proxy_dict_set(d, "k", 1, "v", 1), 0);
    pid_t pid = conc_manager_pid(m);
    cr_assert(await_all_blocked(pid), "the server never slept");
    long before = server_switches(pid);
    /* An observation window, not a synchronisation: nothing may happen. */
    struct timespec half = { 0, 500000000 };
    nanosleep(&half, NULL);
    long after = server_switches(pid);
    cr_expect_leq(after - before, 1, "an idle server woke %ld times", after - before);
    cr_expect_eq(conc_proxy_dict_len(d), 1, "and it still serves");
    conc_proxy_free(d);
    cr_expect_eq(conc_manager_shutdown(m), 0);
    conc_manager_free(m);
}

/* The server's open descriptors. */
static int server_fds(pid_t pid)
{
    return fds_of(pid, NULL);
}

/* A connection that ends wakes the accept loop, which frees it (and its
 * socket) at once, not at the next client's arrival. */
Test(manager_semantics, an_ended_connection_is_freed_without_a_new_one, .timeout = 60)
{
    conc_manager *m;
    cr_assert_eq(conc_manager_new(&m, NULL), 0);
    cr_assert_eq(conc_manager_start(m), 0);
    conc_proxy *d;
    cr_assert_eq(conc_manager_create(m, &d, CONC_PROXY_DICT, "d", 0, 0), 0);
    pid_t pid = conc_manager_pid(m);
    conc_proxy *p[8];
    for (int i = 0; i < 8; i++)
        cr_assert_eq(conc_manager_create(m, &p[i], CONC_PROXY_DICT, "d", 0, 0), 0);
    /* Each of the server's threads serves some of them by now: the
     * descriptors of their hubs are counted in this. */
    int base = server_fds(pid) - 8;
    for (int i = 0; i < 8; i++)
        conc_proxy_free(p[i]);
    int64_t guard = conc_now() + (int64_t)(GUARD * 1e9);
    while (server_fds(pid) > base && conc_now() < guard)
        usleep(1000);
    cr_expect_eq(server_fds(pid), base, "the ended connections' sockets are still open");
    conc_proxy_free(d);
    conc_manager_free(m);
}

/* ------------------------------------------- pops whose client is gone */

enum { OP_D_POP = 13, OP_L_POP = 19 };  /* src/manager_wire.h */


/* Sends each request on a raw connection of its own and closes it at once,
 * while the server is stopped: the server reads them only after their
 * clients closed, so every answer fails to be sent.  Returns once the
 * server, running again, has ended the connections (its descriptors are
 * back to what they were). */
static void send_and_vanish(conc_manager *m, uint8_t (*req)[128], const size_t *len, int n)
{
    char addr[128];
    cr_assert_gt(conc_manager_address(m, addr, sizeof addr), 0);
    pid_t pid = conc_manager_pid(m);
    int base = sockets_of(pid);
    conc_conn *c[8];
    for (int i = 0; i < n; i++) {
        cr_assert_eq(conc_client_connect(&c[i], addr, NULL, GUARD), 0);
        char hello[64];
        cr_assert_gt(conc_conn_recv_bytes(c[i], hello, sizeof hello, GUARD), 0);
    }
    cr_assert_eq(kill(pid, SIGSTOP), 0);
    await_stopped(pid);
    for (int i = 0; i < n; i++) {
        cr_assert_eq(conc_conn_send_bytes(c[i], req[i], len[i], GUARD), 0);
        conc_conn_free(c[i]);           /* gone before the answer */
    }
    cr_assert_eq(kill(pid, SIGCONT), 0);
    await_sockets(pid, base);
}

/* A list's or a dict's pop whose client is gone before the answer gives
 * the item back, in its place (as a Queue.get does): nothing is lost. */
Test(manager_semantics, a_pop_whose_client_is_gone_gives_the_item_back, .timeout = 60)
{
    conc_manager *m;
    cr_assert_eq(conc_manager_new(&m, NULL), 0);
    cr_assert_eq(conc_manager_start(m), 0);
    conc_proxy *l, *d;
    cr_assert_eq(conc_manager_create(m, &l, CONC_PROXY_LIST, NULL, 0, 0), 0);
    cr_assert_eq(conc_manager_create(m, &d, CONC_PROXY_DICT, NULL, 0, 0), 0);
    const char *items[] = { "a", "b", "c", "d" };
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(conc_proxy_list_append(l, items[i], 1), 0);
        char k[3] = { 'k', (char)('1' + i), 0 };
        cr_assert_eq(conc_proxy_dict_set(d, k, 2, items[i], 1), 0);
    }
    uint8_t req[4][128];
    size_t len[4];
    len[0] = raw_req(req[0], OP_L_POP, conc_proxy_id(l));
    int64_t one = 1, last = -1;
    memcpy(req[0] + 24, &one, 8);       /* l.pop(1): "b" */
    len[1] = raw_req(req[1], OP_L_POP, conc_proxy_id(l));
    memcpy(req[1] + 24, &last, 8);      /* l.pop(): "d" */
    for (int i = 2; i < 4; i++) {       /* d.pop("k2"), d.pop("k4") */
        len[i] = raw_req(req[i], OP_D_POP, conc_proxy_id(d));
        uint32_t nargs = 1, klen = 2;
        memcpy(req[i] + 4, &nargs, 4);
        memcpy(req[i] + 48, &klen, 4);
        memcpy(req[i] + 52, i == 2 ? "k2" : "k4", 2);
        len[i] += 6;
    }
    /* One at a time: pops given back at once are each put back at the
     * index they were taken from, and with two pops of one list in
     * flight, whose indexes depend on each other, the items can come
     * back in another order (docs/manager.md). */
    for (int i = 0; i < 4; i++)
        send_and_vanish(m, &req[i], &len[i], 1);

    conc_proxy_items *it;
    cr_assert_eq(conc_proxy_list_slice(l, 0, INT64_MAX, &it), 0);
    cr_expect_eq(it->count, 4, "the list lost items: %zu left", it->count);
    for (size_t i = 0; i < it->count && i < 4; i++)
        cr_expect(it->item[i].len == 1 && memcmp(it->item[i].data, items[i], 1) == 0,
                  "item %zu is '%.*s', not '%s'", i, (int)it->item[i].len,
                  (const char *)it->item[i].data, items[i]);
    free(it);
    cr_assert_eq(conc_proxy_dict_items(d, &it), 0);
    cr_expect_eq(it->count, 8, "the dict lost entries: %zu strings", it->count);
    for (size_t i = 0; i + 1 < it->count && i < 8; i += 2) {
        char k[3] = { 'k', (char)('1' + i / 2), 0 };
        cr_expect(it->item[i].len == 2 && memcmp(it->item[i].data, k, 2) == 0 &&
                      it->item[i + 1].len == 1 &&
                      memcmp(it->item[i + 1].data, items[i / 2], 1) == 0,
                  "entry %zu is '%.*s': '%.*s'", i / 2, (int)it->item[i].len,
                  (const char *)it->item[i].data, (int)it->item[i + 1].len,
                  (const char *)it->item[i + 1].data);
    }
    free(it);
    conc_proxy_free(l);
    conc_proxy_free(d);
    conc_manager_free(m);
}

/* ------------------------------------------- calls without a time limit */

static void *untimed_getter(void *arg)
{
    struct getter *g = arg;
    void *v = NULL;
    size_t n = 0;
    int r = conc_proxy_queue_get(g->q, &v, &n, CONC_FOREVER);
    if (r == 0 && (n != 4 || memcmp(v, "late", 4) != 0))
        r = -EBADMSG;
    free(v);
    __atomic_store_n(&g->r, r, __ATOMIC_RELEASE);
    return NULL;
}

/* A call without a timeout to a server that does not run any more but
 * keeps its connections (stopped) does not wait for ever: every few
 * seconds it looks whether the server still greets a new connection, and
 * when it does not (10 s), the call fails with -ECONNRESET and its proxy
 * is broken.  Other proxies work again once the server runs. */
Test(manager_semantics, an_untimed_call_to_a_stopped_server_gives_up, .timeout = 120)
{
    conc_manager *m;
    cr_assert_eq(conc_manager_new(&m, NULL), 0);
    cr_assert_eq(conc_manager_start(m), 0);
    conc_proxy *q, *d;
    cr_assert_eq(conc_manager_create(m, &q, CONC_PROXY_QUEUE, "q", 0, 0), 0);
    cr_assert_eq(conc_manager_create(m, &d, CONC_PROXY_DICT, "d", 0, 0), 0);
    pid_t pid = conc_manager_pid(m);
    cr_assert_eq(kill(pid, SIGSTOP), 0);
    await_stopped(pid);
    struct getter g = { .q = q, .r = 1 };
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, untimed_getter, &g), 0);
    int64_t guard = conc_now() + 90 * (int64_t)1000000000;
    while (__atomic_load_n(&g.r, __ATOMIC_ACQUIRE) == 1 && conc_now() < guard)
        usleep(10000);
    int r = __atomic_load_n(&g.r, __ATOMIC_ACQUIRE);
    cr_assert_eq(kill(pid, SIGCONT), 0);
    pthread_join(t, NULL);
    cr_expect_eq(r, -ECONNRESET, "the untimed get from a stopped server: %d", r);
    cr_expect_eq(conc_proxy_queue_qsize(q), -EPIPE, "its proxy is broken");
    cr_expect_eq(conc_proxy_dict_set(d, "k", 1, "v", 1), 0, "another proxy works again");
    conc_proxy_free(q);
    conc_proxy_free(d);
    conc_manager_free(m);
}

/* A server that runs keeps an untimed call waiting however long: the
 * looks at it (a new connection, greeted) do not end the call, which gets
 * the message put after two of them. */
Test(manager_semantics, an_untimed_call_to_a_running_server_waits, .timeout = 120)
{
    conc_manager *m;
    cr_assert_eq(conc_manager_new(&m, NULL), 0);
    cr_assert_eq(conc_manager_start(m), 0);
    conc_proxy *q, *q2;
    cr_assert_eq(conc_manager_create(m, &q, CONC_PROXY_QUEUE, "q", 0, 0), 0);
    cr_assert_eq(conc_manager_create(m, &q2, CONC_PROXY_QUEUE, "q", 0, 0), 0);
    struct getter g = { .q = q, .r = 1 };
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, untimed_getter, &g), 0);
    /* An observation window of two looks (5 s apart): the call waits on. */
    int64_t until = conc_now() + 11 * (int64_t)1000000000;
    while (conc_now() < until && __atomic_load_n(&g.r, __ATOMIC_ACQUIRE) == 1)
        usleep(10000);
    cr_expect_eq(__atomic_load_n(&g.r, __ATOMIC_ACQUIRE), 1, "the call ended: %d", g.r);
    cr_assert_eq(conc_proxy_queue_put(q2, "late", 4, GUARD), 0);
    pthread_join(t, NULL);
    cr_expect_eq(g.r, 0, "the untimed get: %d", g.r);
    conc_proxy_free(q);
    conc_proxy_free(q2);
    conc_manager_free(m);
}
