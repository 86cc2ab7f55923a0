/*
 * test_broker_executor.c - the distributed executor on a real RabbitMQ node
 * (conc/broker_executor.h): round trips and their errors, many tasks each
 * completed exactly once, a worker killed mid-task, a task that kills its
 * workers going to the dead-letter queue, a duplicate or malformed result
 * dropped, and a client that is gone.
 *
 * The node is the private one the ctest fixture starts
 * (scripts/rabbitmq.sh; tests/support/rabbitmq_node.h), which one test
 * stops and starts again under load.  Each test uses work queues of its
 * own and deletes them.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>

#include "conc/broker_executor.h"
#include "conc/future.h"
#include "conc/hub.h"
#include "conc/time.h"
#include "conc/wait.h"

#define GUARD 60.0

#include "support/rabbitmq_node.h"

static void setup(void)
{
    read_url();
}

TestSuite(broker_executor, .init = setup, .timeout = 240);

/* A queue name no other test (or run) uses. */
static void qname(char *buf, size_t size, const char *what)
{
    snprintf(buf, size, "bxtest.%s.%d", what, (int)getpid());
}

/* ------------------------------------------------- a raw AMQP connection */

static amqp_connection_state_t raw_open(void)
{
    char *copy = strdup(url);
    struct amqp_connection_info info;
    cr_assert_eq(amqp_parse_url(copy, &info), AMQP_STATUS_OK);
    if (!*info.vhost)
        info.vhost = "/";
    amqp_connection_state_t c = amqp_new_connection();
    amqp_socket_t *s = amqp_tcp_socket_new(c);
    cr_assert_eq(amqp_socket_open(s, info.host, info.port), AMQP_STATUS_OK);
    amqp_rpc_reply_t r = amqp_login(c, info.vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN,
                                    info.user, info.password);
    cr_assert_eq(r.reply_type, AMQP_RESPONSE_NORMAL);
    amqp_channel_open(c, 1);
    cr_assert_eq(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
    free(copy);
    return c;
}

static void raw_close(amqp_connection_state_t c)
{
    amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(c);
}

/* Messages in a queue; -1 when it does not exist, -2 when it is another
 * connection's exclusive queue (the channel is closed by the broker then:
 * each look takes a fresh connection). */
static long raw_count(const char *queue)
{
    amqp_connection_state_t c = raw_open();
    amqp_queue_declare_ok_t *ok = amqp_queue_declare(c, 1, amqp_cstring_bytes(queue), 1, 0, 0,
                                                     0, amqp_empty_table);
    long n = -2;
    if (ok) {
        n = (long)ok->message_count;
    } else {
        amqp_rpc_reply_t r = amqp_get_rpc_reply(c);
        if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
            r.reply.id == AMQP_CHANNEL_CLOSE_METHOD &&
            ((amqp_channel_close_t *)r.reply.decoded)->reply_code == AMQP_NOT_FOUND)
            n = -1;
    }
    amqp_destroy_connection(c);
    return n;
}

/* Waits until a queue holds `want` messages (what a worker or client sent
 * may reach the queue a moment after the call that sent it returned);
 * returns the last count seen, after GUARD seconds at most. */
static long wait_count(const char *queue, long want)
{
    long n = raw_count(queue);
    for (int i = 0; n != want && i < (int)(GUARD * 20); i++) {
        usleep(50 * 1000);
        n = raw_count(queue);
    }
    return n;
}

static void raw_delete(const char *queue)
{
    amqp_connection_state_t c = raw_open();
    amqp_queue_delete(c, 1, amqp_cstring_bytes(queue), 0, 0);
    raw_close(c);
}

static void delete_queues(const char *queue)
{
    char dead[256];
    snprintf(dead, sizeof dead, "%s.dead", queue);
    raw_delete(queue);
    raw_delete(dead);
}

/* ------------------------------------------------------- task functions */

static int square(const void *data, size_t len, void **result, size_t *rlen, void *arg)
{
    (void)arg;
    uint64_t x;
    if (len != sizeof x)
        return -EINVAL;
    memcpy(&x, data, sizeof x);
    uint64_t *y = malloc(sizeof *y);
    if (!y)
        return -ENOMEM;
    *y = x * x;
    *result = y;
    *rlen = sizeof *y;
    return 0;
}

static int echo(const void *data, size_t len, void **result, size_t *rlen, void *arg)
{
    (void)arg;
    if (len) {
        *result = malloc(len);
        memcpy(*result, data, len);
        *rlen = len;
    }
    return 0;
}

static int fails(const void *data, size_t len, void **result, size_t *rlen, void *arg)
{
    (void)data, (void)len, (void)result, (void)rlen, (void)arg;
    return -EDOM;
}

static int positive(const void *data, size_t len, void **result, size_t *rlen, void *arg)
{
    (void)data, (void)len, (void)result, (void)rlen, (void)arg;
    return 7;
}

/* ------------------------------------------------------ worker threads */

struct wthread {
    conc_broker_worker *w;
    pthread_t t;
    int rc;
};

static void *wthread_main(void *arg)
{
    struct wthread *wt = arg;
    wt->rc = conc_broker_worker_run(wt->w, CONC_FOREVER);
    return NULL;
}

static void wthread_start(struct wthread *wt, const char *queue, int max_deliveries)
{
    conc_broker_worker_opts o = CONC_BROKER_WORKER_OPTS_INIT;
    o.queue = queue;
    o.max_deliveries = max_deliveries;
    cr_assert_eq(conc_broker_worker_new(&wt->w, url, &o), 0);
    cr_assert_eq(conc_broker_worker_register(wt->w, "square", square, NULL), 0);
    cr_assert_eq(conc_broker_worker_register(wt->w, "echo", echo, NULL), 0);
    cr_assert_eq(conc_broker_worker_register(wt->w, "fails", fails, NULL), 0);
    cr_assert_eq(conc_broker_worker_register(wt->w, "positive", positive, NULL), 0);
    wt->rc = 1;
    cr_assert_eq(pthread_create(&wt->t, NULL, wthread_main, wt), 0);
}

static uint64_t wthread_stop(struct wthread *wt)
{
    cr_assert_eq(conc_broker_worker_stop(wt->w), 0);
    cr_assert_eq(pthread_join(wt->t, NULL), 0);
    cr_assert_eq(wt->rc, 0);
    uint64_t n = conc_broker_worker_tasks(wt->w);
    conc_broker_worker_free(wt->w);
    return n;
}

static conc_broker_executor *mk_executor(const char *queue, int max_deliveries)
{
    conc_broker_executor_opts o = CONC_BROKER_EXECUTOR_OPTS_INIT;
    o.queue = queue;
    o.max_deliveries = max_deliveries;
    conc_broker_executor *ex = NULL;
    cr_assert_eq(conc_broker_executor_new(&ex, url, &o), 0);
    return ex;
}

static conc_future *submit_u64(conc_broker_executor *ex, const char *fn, uint64_t x)
{
    conc_future *f = NULL;
    cr_assert_eq(conc_broker_executor_submit(ex, fn, &x, sizeof x, &f), 0);
    return f;
}

static uint64_t result_u64(conc_future *f)
{
    void *v = NULL;
    size_t len = 0;
    int r = conc_future_result(f, &v, &len, GUARD);
    cr_assert_eq(r, 0, "result: %d", r);
    cr_assert_eq(len, sizeof(uint64_t));
    uint64_t y;
    memcpy(&y, v, sizeof y);
    return y;
}

static void expect_error(conc_future *f, int code, int detail)
{
    int err = 0, det = -1;
    cr_assert_eq(conc_future_exception(f, &err, &det, GUARD), 0);
    cr_assert_eq(err, code, "error %d, wanted %d", err, code);
    if (detail >= 0)
        cr_assert_eq(det, detail, "detail %d, wanted %d", det, detail);
    cr_assert_eq(conc_future_result(f, NULL, NULL, 0), code);
}

/* ------------------------------------------------------------- tests */

Test(broker_executor, round_trips_and_errors)
{
    char q[128];
    qname(q, sizeof q, "round");
    struct wthread wt;
    wthread_start(&wt, q, 0);
    conc_broker_executor *ex = mk_executor(q, 0);
    cr_assert_str_neq(conc_broker_executor_reply_queue(ex), "");

    conc_future *f = submit_u64(ex, "square", 12);
    cr_assert_eq(result_u64(f), 144);
    conc_future_free(f);

    /* Bytes as they are, empty ones too. */
    const char msg[] = "bytes \0 with a nul";
    cr_assert_eq(conc_broker_executor_submit(ex, "echo", msg, sizeof msg, &f), 0);
    void *v;
    size_t len;
    cr_assert_eq(conc_future_result(f, &v, &len, GUARD), 0);
    cr_assert_eq(len, sizeof msg);
    cr_assert_eq(memcmp(v, msg, len), 0);
    conc_future_free(f);
    cr_assert_eq(conc_broker_executor_submit(ex, "echo", NULL, 0, &f), 0);
    cr_assert_eq(conc_future_result(f, &v, &len, GUARD), 0);
    cr_assert_eq(len, 0);
    conc_future_free(f);

    /* The function's error, a positive return, a name nobody knows. */
    f = submit_u64(ex, "fails", 1);
    expect_error(f, -EDOM, 0);
    conc_future_free(f);
    f = submit_u64(ex, "positive", 1);
    expect_error(f, -EPROTO, -1);
    conc_future_free(f);
    f = submit_u64(ex, "no-such-function", 1);
    expect_error(f, -ENOENT, -1);
    conc_future_free(f);
    cr_assert_eq(conc_broker_executor_pending(ex), 0);

    /* Bad arguments. */
    cr_assert_eq(conc_broker_executor_submit(NULL, "echo", NULL, 0, &f), -EINVAL);
    cr_assert_eq(conc_broker_executor_submit(ex, NULL, NULL, 0, &f), -EINVAL);
    cr_assert_eq(conc_broker_executor_submit(ex, "", NULL, 0, &f), -EINVAL);
    cr_assert_eq(conc_broker_executor_submit(ex, "echo", NULL, 1, &f), -EINVAL);
    cr_assert_eq(conc_broker_executor_submit(ex, "echo", msg, 1, NULL), -EINVAL);
    cr_assert_eq(conc_broker_executor_submit(ex, "echo", msg, CONC_BROKER_TASK_MAX + 1, &f),
                 -EMSGSIZE);
    char longname[CONC_BROKER_NAME_MAX + 2];
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    cr_assert_eq(conc_broker_executor_submit(ex, longname, NULL, 0, &f), -EINVAL);
    cr_assert_eq(conc_broker_worker_register(wt.w, "late", echo, NULL), -EBUSY);

    cr_assert_eq(wthread_stop(&wt), 6);
    conc_broker_executor_free(ex);
    delete_queues(q);
}

Test(broker_executor, bad_connections)
{
    conc_broker_executor *ex = NULL;
    conc_broker_worker *w = NULL;
    cr_assert_eq(conc_broker_executor_new(NULL, url, NULL), -EINVAL);
    cr_assert_eq(conc_broker_executor_new(&ex, NULL, NULL), -EINVAL);
    cr_assert_eq(conc_broker_executor_new(&ex, "http://nope", NULL), -EINVAL);
    cr_assert_eq(conc_broker_worker_new(&w, url, &(conc_broker_worker_opts){
                     .prefetch = -1 }), -EINVAL);

    /* A wrong password: a clear error, quickly. */
    char bad[512];
    const char *at = strchr(url, '@');
    const char *host = at ? at + 1 : url + strlen("amqp://");
    snprintf(bad, sizeof bad, "amqp://guest:wrong@%s", host);
    cr_assert_eq(conc_broker_executor_new(&ex, bad, NULL), -EACCES);
    cr_assert_eq(conc_broker_worker_new(&w, bad, NULL), -EACCES);
    cr_assert_null(ex);
    cr_assert_null(w);

    /* Nothing listens: refused (a port of this process, just closed). */
    cr_assert_eq(conc_broker_executor_new(&ex, "amqp://guest:guest@127.0.0.1:1/", NULL),
                 -ECONNREFUSED);

    /* The work queue with other arguments. */
    char q[128];
    qname(q, sizeof q, "args");
    ex = mk_executor(q, 3);
    conc_broker_executor *ex2 = NULL;
    cr_assert_eq(conc_broker_executor_new(&ex2, url, &(conc_broker_executor_opts){
                     .queue = q, .max_deliveries = 5 }), -EEXIST);
    conc_broker_executor_free(ex);
    delete_queues(q);
}

Test(broker_executor, many_tasks_exactly_once)
{
    char q[128];
    qname(q, sizeof q, "many");
    struct wthread a, b;
    wthread_start(&a, q, 0);
    wthread_start(&b, q, 0);
    conc_broker_executor *ex = mk_executor(q, 0);
    enum { N = 400 };
    static conc_future *fs[N];
    for (uint64_t i = 0; i < N; i++)
        fs[i] = submit_u64(ex, "square", i);
    cr_assert_eq(conc_future_wait_many(fs, N, CONC_ALL_COMPLETED, NULL, GUARD), N);
    for (uint64_t i = 0; i < N; i++) {
        cr_assert_eq(result_u64(fs[i]), i * i);
        conc_future_free(fs[i]);
    }
    cr_assert_eq(conc_broker_executor_pending(ex), 0);
    uint64_t na = wthread_stop(&a), nb = wthread_stop(&b);
    cr_assert_eq(na + nb, N, "ran %" PRIu64 " + %" PRIu64, na, nb);
    conc_broker_executor_free(ex);
    cr_assert_eq(raw_count(q), 0);
    delete_queues(q);
}

/* --------------------------------------------------- worker processes */

/* A worker in a child process: "square", plus "hang", which tells the
 * parent through `started` and then waits to be killed. */
static int started_fd = -1;

static int hang(const void *data, size_t len, void **result, size_t *rlen, void *arg)
{
    (void)data, (void)len, (void)result, (void)rlen, (void)arg;
    char c = 'h';
    if (write(started_fd, &c, 1) != 1)
        _exit(3);
    for (;;)
        pause();
}

static int suicide(const void *data, size_t len, void **result, size_t *rlen, void *arg)
{
    (void)data, (void)len, (void)result, (void)rlen, (void)arg;
    char c = 'k';
    if (write(started_fd, &c, 1) != 1)
        _exit(3);
    raise(SIGKILL);
    return 0;
}

/* Reads the one-byte note a worker's task sends when it starts (a hang
 * guard of GUARD seconds, in case the worker died before). */
static char read_note(int fd)
{
    struct pollfd p = { .fd = fd, .events = POLLIN };
    cr_assert_eq(poll(&p, 1, (int)(GUARD * 1000)), 1, "no worker started the task");
    char c;
    cr_assert_eq(read(fd, &c, 1), 1);
    return c;
}

static pid_t fork_worker(const char *queue, int max_deliveries, int started_w)
{
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        started_fd = started_w;
        conc_broker_worker *w;
        conc_broker_worker_opts o = CONC_BROKER_WORKER_OPTS_INIT;
        o.queue = queue;
        o.max_deliveries = max_deliveries;
        if (conc_broker_worker_new(&w, url, &o))
            _exit(2);
        conc_broker_worker_register(w, "square", square, NULL);
        conc_broker_worker_register(w, "hang", hang, NULL);
        conc_broker_worker_register(w, "suicide", suicide, NULL);
        conc_broker_worker_run(w, GUARD);
        _exit(4);
    }
    return pid;
}

static void kill_and_reap(pid_t pid)
{
    kill(pid, SIGKILL);
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
}

Test(broker_executor, worker_killed_mid_task)
{
    char q[128];
    qname(q, sizeof q, "kill");
    int p[2];
    cr_assert_eq(pipe(p), 0);
    /* The victim starts before any thread of this process. */
    pid_t victim = fork_worker(q, 0, p[1]);
    conc_broker_executor *ex = mk_executor(q, 0);
    conc_future *h = submit_u64(ex, "hang", 0);
    cr_assert_eq(read_note(p[0]), 'h');
    /* The victim holds "hang" (prefetch 1); these wait in the queue. */
    enum { N = 50 };
    conc_future *fs[N];
    for (uint64_t i = 0; i < N; i++)
        fs[i] = submit_u64(ex, "square", i + 1);
    cr_assert_eq(conc_future_done(h), false);
    kill_and_reap(victim);

    /* The survivor gets "hang" again; its "hang" squares instead. */
    conc_broker_worker_opts o = CONC_BROKER_WORKER_OPTS_INIT;
    o.queue = q;
    struct wthread wt;
    cr_assert_eq(conc_broker_worker_new(&wt.w, url, &o), 0);
    cr_assert_eq(conc_broker_worker_register(wt.w, "square", square, NULL), 0);
    cr_assert_eq(conc_broker_worker_register(wt.w, "hang", square, NULL), 0);
    cr_assert_eq(pthread_create(&wt.t, NULL, wthread_main, &wt), 0);
    cr_assert_eq(result_u64(h), 0);
    for (uint64_t i = 0; i < N; i++) {
        cr_assert_eq(result_u64(fs[i]), (i + 1) * (i + 1));
        conc_future_free(fs[i]);
    }
    conc_future_free(h);
    cr_assert_eq(wthread_stop(&wt), N + 1);
    cr_assert_eq(conc_broker_executor_pending(ex), 0);
    conc_broker_executor_free(ex);
    close(p[0]);
    close(p[1]);
    cr_assert_eq(raw_count(q), 0);
    delete_queues(q);
}

Test(broker_executor, poison_task_dead_lettered)
{
    char q[128], dead[160];
    qname(q, sizeof q, "poison");
    snprintf(dead, sizeof dead, "%s.dead", q);
    int p[2];
    cr_assert_eq(pipe(p), 0);
    /* A first worker, forked before this process has threads; later ones
     * are forked while the executor's thread runs, and only connect and
     * run. */
    pid_t w = fork_worker(q, 2, p[1]);
    conc_broker_executor *ex = mk_executor(q, 2);
    conc_future *f = submit_u64(ex, "suicide", 0);
    int kills = 0;
    /* Each worker that takes it dies; a new one replaces it, until the
     * third delivery, which is not run but dead-lettered. */
    while (kills < 2) {
        cr_assert_eq(read_note(p[0]), 'k');
        int st;
        cr_assert_eq(waitpid(w, &st, 0), w);
        cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
        kills++;
        w = fork_worker(q, 2, p[1]);
    }
    expect_error(f, -ECHILD, 2);
    conc_future_free(f);
    /* The worker that dead-lettered it goes on serving. */
    f = submit_u64(ex, "square", 9);
    cr_assert_eq(result_u64(f), 81);
    conc_future_free(f);
    /* A worker settles a task once its result is confirmed; with prefetch
     * 1 it takes "hang" only after that, so then the queue holds "hang"
     * alone, given back when the worker is killed. */
    conc_future *h = submit_u64(ex, "hang", 0);
    cr_assert_eq(read_note(p[0]), 'h');
    kill_and_reap(w);
    conc_broker_executor_free(ex);
    expect_error(h, -EPIPE, 0);
    conc_future_free(h);
    close(p[0]);
    close(p[1]);
    /* The worker answers before it moves the task: wait for the move. */
    cr_assert_eq(wait_count(dead, 1), 1);
    cr_assert_eq(wait_count(q, 1), 1);
    delete_queues(q);
}

Test(broker_executor, duplicate_and_malformed_results_dropped)
{
    char q[128];
    qname(q, sizeof q, "dup");
    conc_broker_executor *ex = mk_executor(q, 0);
    conc_future *x = submit_u64(ex, "square", 3);
    conc_future *y = submit_u64(ex, "square", 4);
    conc_future *z = submit_u64(ex, "square", 5);

    /* This test is the worker: it takes the three tasks itself. */
    amqp_connection_state_t c = raw_open();
    amqp_bytes_t ids[3], reply = amqp_empty_bytes;
    for (int i = 0; i < 3; i++) {
        /* A submit does not wait for the broker: the task may not be in
         * the queue yet (get-empty); look again, for GUARD at most. */
        amqp_rpc_reply_t r;
        for (int tries = 0;; tries++) {
            r = amqp_basic_get(c, 1, amqp_cstring_bytes(q), 1);
            cr_assert_eq(r.reply_type, AMQP_RESPONSE_NORMAL);
            if (r.reply.id != AMQP_BASIC_GET_EMPTY_METHOD)
                break;
            cr_assert_lt(tries, (int)(GUARD * 100), "task %d never came", i);
            usleep(10 * 1000);
        }
        cr_assert_eq(r.reply.id, AMQP_BASIC_GET_OK_METHOD);
        amqp_message_t m;
        cr_assert_eq(amqp_read_message(c, 1, &m, 0).reply_type, AMQP_RESPONSE_NORMAL);
        cr_assert(m.properties._flags & AMQP_BASIC_CORRELATION_ID_FLAG);
        cr_assert(m.properties._flags & AMQP_BASIC_REPLY_TO_FLAG);
        cr_assert_eq(m.properties.type.len, strlen("square"));
        ids[i] = amqp_bytes_malloc_dup(m.properties.correlation_id);
        if (i == 0)
            reply = amqp_bytes_malloc_dup(m.properties.reply_to);
        amqp_destroy_message(&m);
    }
    cr_assert_eq(reply.len, strlen(conc_broker_executor_reply_queue(ex)));

    /* Results sent in order on one connection arrive in order. */
    struct { int id; int err; bool has_err; uint64_t v; const char *cid; } sends[] = {
        { 0, 0, true, 111, NULL },          /* x: the first result wins */
        { 0, 0, true, 222, NULL },          /* x again: dropped */
        { 0, 0, true, 333, "abc" },         /* an id that does not parse */
        { 0, 0, true, 444, "999999" },      /* nobody's id */
        { 1, 5, true, 0, NULL },            /* y: an error out of range */
        { 2, 0, false, 0, NULL },           /* z: no error field */
    };
    for (size_t i = 0; i < sizeof sends / sizeof sends[0]; i++) {
        amqp_table_entry_t e;
        e.key = amqp_cstring_bytes("conc-error");
        e.value.kind = AMQP_FIELD_KIND_I32;
        e.value.value.i32 = sends[i].err;
        amqp_basic_properties_t p;
        memset(&p, 0, sizeof p);
        p._flags = AMQP_BASIC_CORRELATION_ID_FLAG | AMQP_BASIC_HEADERS_FLAG;
        p.correlation_id = sends[i].cid ? amqp_cstring_bytes(sends[i].cid) : ids[sends[i].id];
        p.headers.num_entries = sends[i].has_err ? 1 : 0;
        p.headers.entries = &e;
        amqp_bytes_t body = { .len = sizeof sends[i].v, .bytes = &sends[i].v };
        cr_assert_eq(amqp_basic_publish(c, 1, amqp_empty_bytes, reply, 0, 0, &p, body), 0);
    }
    cr_assert_eq(result_u64(x), 111);
    expect_error(y, -EPROTO, -1);
    expect_error(z, -EPROTO, -1);
    cr_assert_eq(conc_broker_executor_pending(ex), 0);
    /* The two ids the client did not make were counted (in order, before
     * z's result). */
    cr_assert_eq(conc_broker_executor_rejected(ex), 2);
    conc_future_free(x);
    conc_future_free(y);
    conc_future_free(z);
    for (int i = 0; i < 3; i++)
        amqp_bytes_free(ids[i]);
    amqp_bytes_free(reply);
    raw_close(c);
    conc_broker_executor_free(ex);
    delete_queues(q);
}

/* Takes one message from a queue with a raw connection (GUARD at most),
 * acknowledged at once, or (keep) left unacknowledged: given back when the
 * connection closes. */
static void raw_get_keep(amqp_connection_state_t c, const char *queue, amqp_message_t *m,
                         bool keep)
{
    amqp_rpc_reply_t r;
    for (int tries = 0;; tries++) {
        r = amqp_basic_get(c, 1, amqp_cstring_bytes(queue), !keep);
        cr_assert_eq(r.reply_type, AMQP_RESPONSE_NORMAL);
        if (r.reply.id != AMQP_BASIC_GET_EMPTY_METHOD)
            break;
        cr_assert_lt(tries, (int)(GUARD * 100), "nothing came to %s", queue);
        usleep(10 * 1000);
    }
    cr_assert_eq(r.reply.id, AMQP_BASIC_GET_OK_METHOD);
    cr_assert_eq(amqp_read_message(c, 1, m, 0).reply_type, AMQP_RESPONSE_NORMAL);
}

static void raw_get(amqp_connection_state_t c, const char *queue, amqp_message_t *m)
{
    raw_get_keep(c, queue, m, false);
}

/* A publisher's own x-delivery-count on a task's first delivery (a quorum
 * queue passes it on) does not make the worker take it for a task that
 * killed its workers: the task runs. */
Test(broker_executor, forged_delivery_count_on_a_fresh_task_runs)
{
    char q[128], reply[200];
    qname(q, sizeof q, "count");
    snprintf(reply, sizeof reply, "%s.reply.%016x", q, 0x5eedu);
    struct wthread wt;
    wthread_start(&wt, q, 2);
    amqp_connection_state_t c = raw_open();
    cr_assert_not_null(amqp_queue_declare(c, 1, amqp_cstring_bytes(reply), 0, 0, 0, 1,
                                          amqp_empty_table));
    amqp_table_entry_t e;
    e.key = amqp_cstring_bytes("x-delivery-count");
    e.value.kind = AMQP_FIELD_KIND_I64;
    e.value.value.i64 = 99;
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof p);
    p._flags = AMQP_BASIC_CORRELATION_ID_FLAG | AMQP_BASIC_REPLY_TO_FLAG | AMQP_BASIC_TYPE_FLAG |
               AMQP_BASIC_HEADERS_FLAG;
    p.correlation_id = amqp_cstring_bytes("1");
    p.reply_to = amqp_cstring_bytes(reply);
    p.type = amqp_cstring_bytes("square");
    p.headers.num_entries = 1;
    p.headers.entries = &e;
    uint64_t x = 9;
    amqp_bytes_t body = { .len = sizeof x, .bytes = &x };
    cr_assert_eq(amqp_basic_publish(c, 1, amqp_empty_bytes, amqp_cstring_bytes(q), 0, 0, &p,
                                    body), 0);
    amqp_message_t m;
    raw_get(c, reply, &m);
    int64_t err = 1;
    cr_assert(m.properties._flags & AMQP_BASIC_HEADERS_FLAG);
    for (int i = 0; i < m.properties.headers.num_entries; i++)
        if (m.properties.headers.entries[i].key.len == 10 &&
            memcmp(m.properties.headers.entries[i].key.bytes, "conc-error", 10) == 0)
            err = m.properties.headers.entries[i].value.value.i32;
    cr_assert_eq(err, 0, "the task failed with %d", (int)err);
    cr_assert_eq(m.body.len, sizeof x);
    uint64_t y;
    memcpy(&y, m.body.bytes, sizeof y);
    cr_assert_eq(y, 81);
    amqp_destroy_message(&m);
    cr_assert_eq(wthread_stop(&wt), 1);
    amqp_queue_delete(c, 1, amqp_cstring_bytes(reply), 0, 0);
    raw_close(c);
    delete_queues(q);
}

/* Publishes a success result (value v) with correlation id cid to queue. */
static void forge_result(amqp_connection_state_t c, const char *queue, const char *cid,
                         uint64_t v)
{
    amqp_table_entry_t e;
    e.key = amqp_cstring_bytes("conc-error");
    e.value.kind = AMQP_FIELD_KIND_I32;
    e.value.value.i32 = 0;
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof p);
    p._flags = AMQP_BASIC_CORRELATION_ID_FLAG | AMQP_BASIC_HEADERS_FLAG;
    p.correlation_id = amqp_cstring_bytes(cid);
    p.headers.num_entries = 1;
    p.headers.entries = &e;
    amqp_bytes_t body = { .len = sizeof v, .bytes = &v };
    cr_assert_eq(amqp_basic_publish(c, 1, amqp_empty_bytes, amqp_cstring_bytes(queue), 0, 0, &p,
                                     body), 0);
}

/* Waits (GUARD at most) until the executor counted `want` rejected results. */
static void wait_rejected(conc_broker_executor *ex, uint64_t want)
{
    for (int i = 0; conc_broker_executor_rejected(ex) < want && i < (int)(GUARD * 100); i++)
        usleep(10 * 1000);
    cr_assert_eq(conc_broker_executor_rejected(ex), want);
}

/* Another connection of the vhost sends results to a client's reply queue
 * (its name is in every task) for the ids a client numbering its tasks
 * would use: they name no task of the client's, are dropped and counted,
 * and the pending future keeps the worker's real result. */
Test(broker_executor, forged_result_for_a_pending_task_ignored)
{
    char q[128];
    qname(q, sizeof q, "forge");
    conc_broker_executor *ex = mk_executor(q, 0);
    conc_future *f = submit_u64(ex, "square", 3);
    amqp_connection_state_t c = raw_open();
    const char *reply = conc_broker_executor_reply_queue(ex);
    const char *guesses[] = { "1", "0", "2", "1.0000000000000000", "1.", ".1" };
    size_t n = sizeof guesses / sizeof guesses[0];
    for (size_t i = 0; i < n; i++)
        forge_result(c, reply, guesses[i], 666);
    wait_rejected(ex, n);
    cr_assert_not(conc_future_done(f));
    struct wthread wt;
    wthread_start(&wt, q, 0);
    cr_assert_eq(result_u64(f), 9);
    conc_future_free(f);
    cr_assert_eq(wthread_stop(&wt), 1);
    cr_assert_eq(conc_broker_executor_rejected(ex), n);
    raw_close(c);
    conc_broker_executor_free(ex);
    delete_queues(q);
}

/* A task naming as its reply queue one no client makes (here, another
 * application's queue) is not run: the worker dead-letters it and sends
 * nothing there; a task without an id likewise. */
Test(broker_executor, task_with_a_foreign_reply_queue_not_run)
{
    char q[128], victim[160], dead[160];
    qname(q, sizeof q, "foreign");
    snprintf(victim, sizeof victim, "%s.victim", q);
    snprintf(dead, sizeof dead, "%s.dead", q);
    struct wthread wt;
    wthread_start(&wt, q, 0);
    amqp_connection_state_t c = raw_open();
    cr_assert_not_null(amqp_queue_declare(c, 1, amqp_cstring_bytes(victim), 0, 0, 0, 1,
                                          amqp_empty_table));
    char near[200];
    snprintf(near, sizeof near, "%s.reply.%015x", q, 1u);    /* one digit short */
    const char *replies[] = { victim, near, "" };
    for (int i = 0; i < 3; i++) {
        amqp_basic_properties_t p;
        memset(&p, 0, sizeof p);
        p._flags = AMQP_BASIC_CORRELATION_ID_FLAG | AMQP_BASIC_REPLY_TO_FLAG |
                   AMQP_BASIC_TYPE_FLAG;
        p.correlation_id = amqp_cstring_bytes(i == 2 ? "" : "7");
        p.reply_to = amqp_cstring_bytes(i == 2 ? victim : replies[i]);
        p.type = amqp_cstring_bytes("echo");
        cr_assert_eq(amqp_basic_publish(c, 1, amqp_empty_bytes, amqp_cstring_bytes(q), 0, 0,
                                        &p, amqp_cstring_bytes("spam")), 0);
    }
    cr_assert_eq(wait_count(dead, 3), 3);
    cr_assert_eq(conc_broker_worker_rejected(wt.w), 3);
    cr_assert_eq(wthread_stop(&wt), 0);
    cr_assert_eq(raw_count(victim), 0);
    amqp_queue_delete(c, 1, amqp_cstring_bytes(victim), 0, 0);
    raw_close(c);
    delete_queues(q);
}

/* ------------------------------------------------------------ authkeys */

static conc_broker_executor *mk_keyed_executor(const char *queue, const char *key)
{
    conc_broker_executor_opts o = CONC_BROKER_EXECUTOR_OPTS_INIT;
    o.queue = queue;
    o.authkey = key;
    o.authkey_len = key ? strlen(key) : 0;
    conc_broker_executor *ex = NULL;
    cr_assert_eq(conc_broker_executor_new(&ex, url, &o), 0);
    return ex;
}

static void keyed_worker_start(struct wthread *wt, const char *queue, const char *key)
{
    conc_broker_worker_opts o = CONC_BROKER_WORKER_OPTS_INIT;
    o.queue = queue;
    o.authkey = key;
    o.authkey_len = key ? strlen(key) : 0;
    cr_assert_eq(conc_broker_worker_new(&wt->w, url, &o), 0);
    cr_assert_eq(conc_broker_worker_register(wt->w, "square", square, NULL), 0);
    cr_assert_eq(conc_broker_worker_register(wt->w, "echo", echo, NULL), 0);
    wt->rc = 1;
    cr_assert_eq(pthread_create(&wt->t, NULL, wthread_main, wt), 0);
}

/* A header "conc-mac" (a tag of the right shape, or any string). */
static void mac_header(amqp_table_entry_t *e, const char *hex)
{
    e->key = amqp_cstring_bytes("conc-mac");
    e->value.kind = AMQP_FIELD_KIND_UTF8;
    e->value.value.bytes = amqp_cstring_bytes(hex);
}

#define WRONG_TAG "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

Test(broker_executor, authkey_option_checked)
{
    conc_broker_executor_opts eo = CONC_BROKER_EXECUTOR_OPTS_INIT;
    conc_broker_worker_opts wo = CONC_BROKER_WORKER_OPTS_INIT;
    conc_broker_executor *ex = NULL;
    conc_broker_worker *w = NULL;
    static char big[1025];
    struct { const void *key; size_t len; } bad[] = { { "k", 0 }, { NULL, 3 }, { big, 1025 } };
    for (int i = 0; i < 3; i++) {
        eo.authkey = wo.authkey = bad[i].key;
        eo.authkey_len = wo.authkey_len = bad[i].len;
        cr_assert_eq(conc_broker_executor_new(&ex, url, &eo), -EINVAL);
        cr_assert_eq(conc_broker_worker_new(&w, url, &wo), -EINVAL);
    }
    cr_assert_null(ex);
    cr_assert_null(w);
}

/* The correlation id of message m, into cid. */
static void cid_of(const amqp_message_t *m, char *cid, size_t cap)
{
    snprintf(cid, cap, "%.*s", (int)m->properties.correlation_id.len,
             (char *)m->properties.correlation_id.bytes);
}

/* With an authkey, a result from someone who has seen the task (it read
 * the work queue) but lacks the key is never used: untagged or tagged
 * wrong, it fails the future with -EACCES instead of completing it with
 * its own value; the real worker's result, later, is a second one and
 * dropped, and the keyed pair goes on working. */
Test(broker_executor, authkey_forged_result_by_a_reader_fails_eacces)
{
    char q[128];
    qname(q, sizeof q, "keyres");
    conc_broker_executor *ex = mk_keyed_executor(q, "sesame");
    conc_future *f1 = submit_u64(ex, "square", 5);
    conc_future *f2 = submit_u64(ex, "square", 7);
    amqp_connection_state_t c = raw_open();
    amqp_message_t m;
    char cid1[64], cid2[64];
    raw_get_keep(c, q, &m, true);  /* given back at the close below */
    cr_assert(m.properties._flags & AMQP_BASIC_HEADERS_FLAG, "a keyed task carries its tag");
    cid_of(&m, cid1, sizeof cid1);
    amqp_destroy_message(&m);
    raw_get_keep(c, q, &m, true);
    cid_of(&m, cid2, sizeof cid2);
    amqp_destroy_message(&m);
    cr_assert_str_neq(cid1, cid2);
    amqp_connection_state_t c2 = raw_open();
    const char *reply = conc_broker_executor_reply_queue(ex);
    forge_result(c2, reply, cid1, 666);         /* untagged */
    expect_error(f1, -EACCES, 0);
    cr_assert_not(conc_future_done(f2));
    /* Tagged, but not under the key. */
    amqp_table_entry_t e[2];
    e[0].key = amqp_cstring_bytes("conc-error");
    e[0].value.kind = AMQP_FIELD_KIND_I32;
    e[0].value.value.i32 = 0;
    mac_header(&e[1], WRONG_TAG);
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof p);
    p._flags = AMQP_BASIC_CORRELATION_ID_FLAG | AMQP_BASIC_HEADERS_FLAG;
    p.correlation_id = amqp_cstring_bytes(cid2);
    p.headers.num_entries = 2;
    p.headers.entries = e;
    uint64_t v = 777;
    cr_assert_eq(amqp_basic_publish(c2, 1, amqp_empty_bytes, amqp_cstring_bytes(reply), 0, 0,
                                    &p, (amqp_bytes_t){ .len = sizeof v, .bytes = &v }), 0);
    expect_error(f2, -EACCES, 0);
    cr_assert_eq(conc_broker_executor_rejected(ex), 2);
    conc_future_free(f1);
    conc_future_free(f2);
    raw_close(c);           /* the tasks go back to the queue */
    struct wthread wt;
    keyed_worker_start(&wt, q, "sesame");
    conc_future *f = submit_u64(ex, "square", 6);
    cr_assert_eq(result_u64(f), 36);
    conc_future_free(f);
    cr_assert_eq(wthread_stop(&wt), 3);
    /* The real results of the first two came second: dropped, uncounted. */
    cr_assert_eq(conc_broker_executor_rejected(ex), 2);
    raw_close(c2);
    conc_broker_executor_free(ex);
    delete_queues(q);
}

/* A worker without a key runs a keyed client's task and answers untagged:
 * the future fails with -EACCES rather than waiting for ever (and the
 * other way round, a keyed worker refuses a keyless client's task:
 * authkey_mismatch_fails_eacces). */
Test(broker_executor, keyless_worker_keyed_client_fails_eacces)
{
    char q[128];
    qname(q, sizeof q, "keyless");
    conc_broker_executor *ex = mk_keyed_executor(q, "sesame");
    struct wthread wt;
    wthread_start(&wt, q, 0);
    conc_future *f = submit_u64(ex, "square", 4);
    expect_error(f, -EACCES, 0);
    conc_future_free(f);
    cr_assert_eq(wthread_stop(&wt), 1);     /* it ran */
    cr_assert_eq(conc_broker_executor_rejected(ex), 1);
    conc_broker_executor_free(ex);
    delete_queues(q);
}

/* A keyed worker runs no task whose tag is missing or wrong: each goes to
 * the dead-letter queue, and the reply queue gets an untagged -EACCES. */
Test(broker_executor, authkey_forged_task_not_run)
{
    char q[128], reply[200], dead[160];
    qname(q, sizeof q, "keytask");
    snprintf(reply, sizeof reply, "%s.reply.%016x", q, 0xbadu);
    snprintf(dead, sizeof dead, "%s.dead", q);
    struct wthread wt;
    keyed_worker_start(&wt, q, "sesame");
    amqp_connection_state_t c = raw_open();
    cr_assert_not_null(amqp_queue_declare(c, 1, amqp_cstring_bytes(reply), 0, 0, 0, 1,
                                          amqp_empty_table));
    for (int i = 0; i < 2; i++) {
        amqp_table_entry_t e;
        mac_header(&e, WRONG_TAG);
        amqp_basic_properties_t p;
        memset(&p, 0, sizeof p);
        p._flags = AMQP_BASIC_CORRELATION_ID_FLAG | AMQP_BASIC_REPLY_TO_FLAG |
                   AMQP_BASIC_TYPE_FLAG | (i ? AMQP_BASIC_HEADERS_FLAG : 0);
        p.correlation_id = amqp_cstring_bytes(i ? "2.00" : "1.00");
        p.reply_to = amqp_cstring_bytes(reply);
        p.type = amqp_cstring_bytes("echo");
        p.headers.num_entries = 1;
        p.headers.entries = &e;
        cr_assert_eq(amqp_basic_publish(c, 1, amqp_empty_bytes, amqp_cstring_bytes(q), 0, 0,
                                        &p, amqp_cstring_bytes("run me")), 0);
    }
    for (int i = 0; i < 2; i++) {
        amqp_message_t m;
        raw_get(c, reply, &m);
        cr_assert_eq(m.body.len, 0, "the task ran");
        int64_t err = 0;
        for (int k = 0; k < m.properties.headers.num_entries; k++)
            if (m.properties.headers.entries[k].key.len == 10 &&
                memcmp(m.properties.headers.entries[k].key.bytes, "conc-error", 10) == 0)
                err = m.properties.headers.entries[k].value.value.i32;
        cr_assert_eq(err, -EACCES);
        amqp_destroy_message(&m);
    }
    cr_assert_eq(wait_count(dead, 2), 2);
    cr_assert_eq(conc_broker_worker_rejected(wt.w), 2);
    cr_assert_eq(wthread_stop(&wt), 0);
    amqp_queue_delete(c, 1, amqp_cstring_bytes(reply), 0, 0);
    raw_close(c);
    delete_queues(q);
}

/* A client and a worker with different keys: the task is not run and its
 * future fails with -EACCES at once, rather than waiting for ever. */
Test(broker_executor, authkey_mismatch_fails_eacces)
{
    char q[128], dead[160];
    qname(q, sizeof q, "keymis");
    snprintf(dead, sizeof dead, "%s.dead", q);
    conc_broker_executor *ex = mk_keyed_executor(q, "sesame");
    struct wthread wt;
    keyed_worker_start(&wt, q, "open sesame");
    conc_future *f = submit_u64(ex, "square", 4);
    expect_error(f, -EACCES, 0);
    conc_future_free(f);
    /* A client without a key meets the same refusal. */
    conc_broker_executor *plain = mk_keyed_executor(q, NULL);
    f = submit_u64(plain, "square", 4);
    expect_error(f, -EACCES, 0);
    conc_future_free(f);
    cr_assert_eq(wait_count(dead, 2), 2);
    cr_assert_eq(conc_broker_worker_rejected(wt.w), 2);
    cr_assert_eq(wthread_stop(&wt), 0);
    conc_broker_executor_free(plain);
    conc_broker_executor_free(ex);
    delete_queues(q);
}

/* The client of client_gone_results_expire, when this program is run with
 * BXTEST_CLIENT_* set: submit square(6) to the queue named, write the reply
 * queue's name (and a NUL) to the descriptor named, wait to be killed. */
__attribute__((constructor)) static void gone_client(void)
{
    const char *u = getenv("BXTEST_CLIENT_URL");
    const char *q = getenv("BXTEST_CLIENT_QUEUE");
    const char *fd = getenv("BXTEST_CLIENT_FD");
    if (!u || !q || !fd)
        return;
    conc_broker_executor *ex;
    conc_broker_executor_opts o = CONC_BROKER_EXECUTOR_OPTS_INIT;
    o.queue = q;
    o.result_expires = 1.0;
    if (conc_broker_executor_new(&ex, u, &o))
        _exit(2);
    conc_future *f;
    uint64_t x = 6;
    if (conc_broker_executor_submit(ex, "square", &x, sizeof x, &f))
        _exit(3);
    const char *name = conc_broker_executor_reply_queue(ex);
    if (write(atoi(fd), name, strlen(name) + 1) < 0)
        _exit(4);
    for (;;)
        pause();
}

Test(broker_executor, client_gone_results_expire)
{
    char q[128];
    qname(q, sizeof q, "gone");
    int p[2];
    cr_assert_eq(pipe(p), 0);
    /* The client is another program (this one again, run afresh: a child
     * forked from a process with threads must not start threads of its
     * own under TSan) that submits a task and is killed before a worker
     * takes it. */
    char fdtext[16];
    snprintf(fdtext, sizeof fdtext, "%d", p[1]);
    const char *u = url;
    pid_t client = fork();
    cr_assert_geq(client, 0);
    if (client == 0) {
        setenv("BXTEST_CLIENT_URL", u, 1);
        setenv("BXTEST_CLIENT_QUEUE", q, 1);
        setenv("BXTEST_CLIENT_FD", fdtext, 1);
        execl("/proc/self/exe", "test_broker_executor", (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    char name[256];
    size_t got = 0;
    while (got == 0 || name[got - 1] != '\0') {
        ssize_t n = read(p[0], name + got, sizeof name - got);
        cr_assert_gt(n, 0);
        got += (size_t)n;
    }
    /* The reply queue is not exclusive: it outlives its connection. */
    cr_assert_eq(raw_count(name), 0);
    cr_assert_eq(wait_count(q, 1), 1);  /* its task is in the queue */
    kill_and_reap(client);

    /* A worker runs the orphan task; its result goes to the reply queue
     * nobody reads, and the worker goes on. */
    struct wthread wt;
    wthread_start(&wt, q, 0);
    conc_broker_executor *ex = mk_executor(q, 0);
    conc_future *f = submit_u64(ex, "square", 7);
    cr_assert_eq(result_u64(f), 49);
    conc_future_free(f);
    cr_assert_eq(wthread_stop(&wt), 2);
    /* Unused for result_expires (1 s), the queue goes with its result.  A
     * look at it counts as a use: look less often than that. */
    long n = raw_count(name);
    for (int i = 0; i < (int)GUARD && n != -1; i++) {
        usleep(1500 * 1000);
        n = raw_count(name);
    }
    cr_assert_eq(n, -1);
    conc_broker_executor_free(ex);
    close(p[0]);
    delete_queues(q);
}

Test(broker_executor, free_fails_unfinished_futures)
{
    char q[128];
    qname(q, sizeof q, "free");
    conc_broker_executor *ex = mk_executor(q, 0);
    conc_future *f = submit_u64(ex, "square", 2);
    cr_assert_eq(conc_broker_executor_pending(ex), 1);
    conc_broker_executor_free(ex);
    expect_error(f, -EPIPE, 0);
    conc_future_free(f);
    /* The task stays queued for a worker. */
    cr_assert_eq(wait_count(q, 1), 1);
    delete_queues(q);
}

Test(broker_executor, worker_run_timeout_and_stop)
{
    char q[128];
    qname(q, sizeof q, "run");
    conc_broker_worker *w;
    cr_assert_eq(conc_broker_worker_new(&w, url, &(conc_broker_worker_opts){ .queue = q }),
                 0);
    cr_assert_eq(conc_broker_worker_run(w, 0), -EAGAIN);
    cr_assert_eq(conc_broker_worker_run(w, 0.05), -ETIMEDOUT);
    cr_assert_eq(conc_broker_worker_run(w, -2), -EINVAL);
    cr_assert_eq(conc_broker_worker_stop(w), 0);
    cr_assert_eq(conc_broker_worker_run(w, GUARD), 0);   /* a stop asked before */
    cr_assert_eq(conc_broker_worker_register(w, NULL, echo, NULL), -EINVAL);
    cr_assert_eq(conc_broker_worker_register(w, "x", NULL, NULL), -EINVAL);
    cr_assert_eq(conc_broker_worker_stop(NULL), -EINVAL);
    cr_assert_eq(conc_broker_worker_run(NULL, 0), -EINVAL);
    conc_broker_worker_free(w);
    conc_broker_worker_free(NULL);
    conc_broker_executor_free(NULL);
    delete_queues(q);
}

/* A worker and a client as two greenlets of one thread: the worker's waits
 * park only its coroutine, so the client's greenlet runs, and its waits on
 * futures park it while the worker runs the tasks. */
struct coro_pair {
    conc_broker_worker *w;
    conc_broker_executor *ex;
    int run_rc;
    int client_rc;
};

static void *coro_worker(void *arg)
{
    struct coro_pair *cp = arg;
    cp->run_rc = conc_broker_worker_run(cp->w, GUARD);
    return NULL;
}

static void *coro_client(void *arg)
{
    struct coro_pair *cp = arg;
    enum { N = 20 };
    conc_future *fs[N];
    int rc = 0;
    for (uint64_t i = 0; i < N; i++)
        if (conc_broker_executor_submit(cp->ex, "square", &i, sizeof i, &fs[i]))
            return cp->client_rc = -1, NULL;
    for (uint64_t i = 0; i < N; i++) {
        void *v;
        size_t len;
        uint64_t y = 0;
        if (conc_future_result(fs[i], &v, &len, GUARD) || len != sizeof y)
            rc = -2;
        else
            memcpy(&y, v, sizeof y);
        if (y != i * i)
            rc = -3;
        conc_future_free(fs[i]);
    }
    cp->client_rc = rc;
    conc_broker_worker_stop(cp->w);
    return NULL;
}

Test(broker_executor, worker_and_client_in_coroutines)
{
    char q[128];
    qname(q, sizeof q, "coro");
    struct coro_pair cp = { .run_rc = 1, .client_rc = 1 };
    cr_assert_eq(conc_broker_worker_new(&cp.w, url, &(conc_broker_worker_opts){ .queue = q }),
                 0);
    cr_assert_eq(conc_broker_worker_register(cp.w, "square", square, NULL), 0);
    cp.ex = mk_executor(q, 0);
    conc_greenlet *gw, *gc;
    cr_assert_eq(conc_greenlet_spawn(&gw, coro_worker, &cp, NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&gc, coro_client, &cp, NULL), 0);
    cr_assert_eq(conc_hub_run(), 0);
    cr_assert_eq(cp.client_rc, 0);
    cr_assert_eq(cp.run_rc, 0);
    cr_assert_eq(conc_broker_worker_tasks(cp.w), 20);
    conc_greenlet_free(gw);
    conc_greenlet_free(gc);
    conc_hub_free();
    conc_broker_executor_free(cp.ex);
    conc_broker_worker_free(cp.w);
    delete_queues(q);
}

/* A task sent to a work queue that is gone comes back unroutable: its
 * future fails with -ENOENT, and the executor goes on. */
Test(broker_executor, unroutable_task_fails_enoent)
{
    char q[128];
    qname(q, sizeof q, "unroutable");
    conc_broker_executor *ex = mk_executor(q, 0);
    raw_delete(q);
    conc_future *f = submit_u64(ex, "square", 3);
    expect_error(f, -ENOENT, 0);
    conc_future_free(f);
    cr_assert_eq(conc_broker_executor_pending(ex), 0);
    conc_broker_executor_free(ex);
    delete_queues(q);
}

Test(broker_executor, amqps_verifies_the_server_and_runs_tasks)
{
    char tls[256];
    tls_url_or_skip(tls, sizeof tls);
    char q[128];
    qname(q, sizeof q, "tls");
    /* The test CA is not among the system's: the server is refused. */
    conc_broker_executor *ex = NULL;
    conc_broker_executor_opts eo = CONC_BROKER_EXECUTOR_OPTS_INIT;
    eo.queue = q;
    cr_assert_eq(conc_broker_executor_new(&ex, tls, &eo), -EKEYREJECTED);
    conc_broker_worker *w = NULL;
    conc_broker_worker_opts wo = CONC_BROKER_WORKER_OPTS_INIT;
    wo.queue = q;
    cr_assert_eq(conc_broker_worker_new(&w, tls, &wo), -EKEYREJECTED);
    /* A CA file that does not load. */
    eo.cacert = CONC_RABBITMQ_DIR "/no-such-ca.pem";
    cr_assert_eq(conc_broker_executor_new(&ex, tls, &eo), -EPROTONOSUPPORT);

    eo.cacert = wo.cacert = CONC_RABBITMQ_DIR "/tls/ca.pem";
    cr_assert_eq(conc_broker_executor_new(&ex, tls, &eo), 0);
    struct wthread wt;
    cr_assert_eq(conc_broker_worker_new(&wt.w, tls, &wo), 0);
    cr_assert_eq(conc_broker_worker_register(wt.w, "square", square, NULL), 0);
    wt.rc = 1;
    cr_assert_eq(pthread_create(&wt.t, NULL, wthread_main, &wt), 0);
    enum { N = 20 };
    conc_future *fs[N];
    for (uint64_t i = 0; i < N; i++)
        fs[i] = submit_u64(ex, "square", i);
    for (uint64_t i = 0; i < N; i++) {
        cr_assert_eq(result_u64(fs[i]), i * i);
        conc_future_free(fs[i]);
    }
    cr_assert_eq(wthread_stop(&wt), N);
    conc_broker_executor_free(ex);
    delete_queues(q);
}

/* Counts how many times each future of the restart test finished. */
static int finished[600];

static void count_done(conc_future *f, void *arg)
{
    (void)f;
    __atomic_fetch_add(&finished[(uintptr_t)arg], 1, __ATOMIC_RELAXED);
}

/* Waits (GUARD seconds at most) until task i's done callback has run. */
static void wait_finished(uint64_t i)
{
    for (int k = 0; k < (int)(GUARD * 1000); k++) {
        if (__atomic_load_n(&finished[i], __ATOMIC_RELAXED) > 0)
            return;
        struct timespec ms = { 0, 1000000 };
        nanosleep(&ms, NULL);
    }
}

/* The broker stopped and started again while tasks are submitted and run:
 * the client keeps taking tasks while it is down, both sides reconnect,
 * and every future completes exactly once with its value. */
Test(broker_executor, broker_restarted_under_load_every_future_once)
{
    char q[128];
    qname(q, sizeof q, "restart");
    struct wthread wa, wb;
    wthread_start(&wa, q, 0);
    wthread_start(&wb, q, 0);
    conc_broker_executor *ex = mk_executor(q, 0);
    enum { N = 600, PART = N / 3 };
    conc_future *fs[N];
    uint64_t i = 0;
    for (; i < PART; i++) {
        fs[i] = submit_u64(ex, "square", i);
        cr_assert_eq(conc_future_add_done_callback(fs[i], count_done, (void *)(uintptr_t)i), 0);
    }
    /* Some done before the stop, the rest in flight or queued. */
    cr_assert_eq(result_u64(fs[0]), 0);
    node("stop");
    for (; i < 2 * PART; i++) {
        fs[i] = submit_u64(ex, "square", i);
        cr_assert_eq(conc_future_add_done_callback(fs[i], count_done, (void *)(uintptr_t)i), 0);
    }
    node("start");
    for (; i < N; i++) {
        fs[i] = submit_u64(ex, "square", i);
        cr_assert_eq(conc_future_add_done_callback(fs[i], count_done, (void *)(uintptr_t)i), 0);
    }
    for (i = 0; i < N; i++) {
        cr_assert_eq(result_u64(fs[i]), i * i, "task %" PRIu64, i);
        conc_future_free(fs[i]);
    }
    cr_assert_eq(conc_broker_executor_pending(ex), 0);
    /* A done callback runs on the thread that settled the future, after
     * its waiters were woken: result() may return before it has run. */
    for (i = 0; i < N; i++)
        wait_finished(i);
    for (i = 0; i < N; i++)
        cr_assert_eq(__atomic_load_n(&finished[i], __ATOMIC_RELAXED), 1, "task %" PRIu64, i);
    cr_assert_geq(conc_broker_executor_reconnects(ex), 1);
    cr_assert_geq(conc_broker_worker_reconnects(wa.w), 1);
    cr_assert_geq(conc_broker_worker_reconnects(wb.w), 1);
    /* Each task ran at least once (some twice: sent again, or given back
     * by the broker when their worker's connection went). */
    uint64_t ran = wthread_stop(&wa) + wthread_stop(&wb);
    cr_assert_geq(ran, N);
    conc_broker_executor_free(ex);
    delete_queues(q);
}

/* The broker drops every connection (as a lost network does) while tasks
 * run: both sides connect again at once and every future completes once. */
Test(broker_executor, connections_dropped_under_load_every_future_once)
{
    char q[128];
    qname(q, sizeof q, "dropped");
    struct wthread wt;
    wthread_start(&wt, q, 0);
    conc_broker_executor *ex = mk_executor(q, 0);
    enum { N = 400 };
    conc_future *fs[N];
    for (uint64_t i = 0; i < N / 2; i++)
        fs[i] = submit_u64(ex, "square", i);
    ctl("close_all_connections dropped-by-test");
    for (uint64_t i = N / 2; i < N; i++)
        fs[i] = submit_u64(ex, "square", i);
    for (uint64_t i = 0; i < N; i++) {
        cr_assert_eq(result_u64(fs[i]), i * i, "task %" PRIu64, i);
        conc_future_free(fs[i]);
    }
    cr_assert_eq(conc_broker_executor_pending(ex), 0);
    cr_assert_geq(conc_broker_executor_reconnects(ex), 1);
    cr_assert_geq(conc_broker_worker_reconnects(wt.w), 1);
    cr_assert_geq(wthread_stop(&wt), N);
    conc_broker_executor_free(ex);
    delete_queues(q);
}

/* The reply queue vanished while the client was away (here: deleted under
 * it): the futures of tasks the broker had confirmed fail with -EPIPE, as
 * their results are lost; the client goes on with a new reply queue. */
Test(broker_executor, reply_queue_gone_fails_confirmed_futures)
{
    char q[128];
    qname(q, sizeof q, "replygone");
    conc_broker_executor *ex = mk_executor(q, 0);
    conc_future *a = submit_u64(ex, "square", 4);
    cr_assert_eq(wait_count(q, 1), 1);     /* confirmed: in the queue */
    raw_delete(conc_broker_executor_reply_queue(ex));
    expect_error(a, -EPIPE, 0);
    conc_future_free(a);
    cr_assert_geq(conc_broker_executor_reconnects(ex), 1);
    cr_assert_eq(raw_count(conc_broker_executor_reply_queue(ex)), 0);
    struct wthread wt;
    wthread_start(&wt, q, 0);
    conc_future *b = submit_u64(ex, "square", 5);
    cr_assert_eq(result_u64(b), 25);
    conc_future_free(b);
    cr_assert_eq(wthread_stop(&wt), 2);     /* the orphan ran too */
    conc_broker_executor_free(ex);
    delete_queues(q);
}

/* A task the broker refuses (nacks) fails with -EIO and nothing else is
 * lost or run twice: a policy bounds the work queue so that the broker
 * refuses the tasks beyond the first few.  Each submit is followed until
 * its fate is known (in the queue, or its future failed); once the bound
 * is gone a worker runs exactly the tasks that were taken, each future
 * finishing once with its own value. */
Test(broker_executor, refused_task_fails_eio)
{
    enum { N = 6 };
    char q[128], policy[160];
    qname(q, sizeof q, "refused");
    snprintf(policy, sizeof policy, "%s.bound", q);
    bound_queue(policy, q, 2);
    conc_broker_executor *ex = mk_executor(q, 0);
    conc_future *fs[N];
    bool refused[N];
    long taken = 0, nrefused = 0;
    for (uint64_t i = 0; i < N; i++) {
        fs[i] = submit_u64(ex, "square", i + 1);
        refused[i] = false;
        for (int k = 0;; k++) {
            cr_assert_lt(k, (int)(GUARD * 20), "task %d: neither queued nor refused",
                         (int)i);
            if (conc_future_done(fs[i])) {
                expect_error(fs[i], -EIO, 0);
                refused[i] = true;
                nrefused++;
                break;
            }
            if (raw_count(q) == taken + 1) {
                taken++;
                break;
            }
            usleep(20 * 1000);
        }
    }
    /* A quorum queue takes one message beyond its bound at most; once
     * full, it refuses every later one. */
    cr_assert(taken >= 2 && taken <= 3, "taken %ld", taken);
    cr_assert_eq(nrefused, N - taken);
    for (int i = 0; i < N; i++)
        cr_assert_eq(refused[i], i >= taken, "task %d", i);
    cr_assert_eq(conc_broker_executor_pending(ex), (size_t)taken);
    struct wthread wt;
    wthread_start(&wt, q, 0);
    for (int i = 0; i < N; i++) {
        if (!refused[i])
            cr_assert_eq(result_u64(fs[i]), (uint64_t)(i + 1) * (i + 1));
        else
            expect_error(fs[i], -EIO, 0);
        conc_future_free(fs[i]);
    }
    /* The executor goes on after a refusal: the queue has room again once
     * the worker's acknowledgements of the tasks it ran reach the broker,
     * and a task refused before is submitted again. */
    int err = -EIO, tries = 0;
    while (err == -EIO) {
        cr_assert_lt(tries++, (int)(GUARD * 20), "still refused");
        conc_future *f = submit_u64(ex, "square", 9);
        cr_assert_eq(conc_future_wait(f, GUARD), 0);
        cr_assert_eq(conc_future_exception(f, &err, NULL, 0), 0);
        if (err == 0)
            cr_assert_eq(result_u64(f), 81);
        else
            cr_assert_eq(err, -EIO);
        conc_future_free(f);
        if (err)
            usleep(50 * 1000);
    }
    cr_assert_eq(conc_broker_executor_pending(ex), 0);
    cr_assert_eq(wthread_stop(&wt), (uint64_t)taken + 1);
    cr_assert_eq(raw_count(q), 0);
    conc_broker_executor_free(ex);
    unbound_queue(policy);
    delete_queues(q);
}

/* The client is away (the broker closed its connection and lets it make
 * no other, through a connection limit on its own user) longer than
 * result_expires: the broker itself deletes its reply queue, with the
 * result a worker sent meanwhile.  Back, the client fails the future of
 * the task the broker had confirmed (-EPIPE: its result is lost), sends
 * again the task it could not send while away (it runs and its result
 * comes), and goes on with its reply queue declared again. */
Test(broker_executor, reply_queue_expires_while_the_client_is_away)
{
    char q[128], user[64], args[256], away_url[512];
    qname(q, sizeof q, "away");
    snprintf(user, sizeof user, "bxaway%d", (int)getpid());
    snprintf(args, sizeof args, "add_user '%s' pw", user);
    ctl(args);
    snprintf(args, sizeof args, "set_permissions -p / '%s' '.*' '.*' '.*'", user);
    ctl(args);
    const char *at = strchr(url, '@');
    cr_assert_not_null(at);
    snprintf(away_url, sizeof away_url, "amqp://%s:pw%s", user, at);
    conc_broker_executor_opts o = CONC_BROKER_EXECUTOR_OPTS_INIT;
    o.queue = q;
    o.result_expires = 1.0;
    conc_broker_executor *ex = NULL;
    cr_assert_eq(conc_broker_executor_new(&ex, away_url, &o), 0);
    char reply[256];
    snprintf(reply, sizeof reply, "%s", conc_broker_executor_reply_queue(ex));

    /* Task b reaches the queue; the broker's confirmation reaches the
     * client long before the next rabbitmqctl call has started. */
    conc_future *b = submit_u64(ex, "square", 4);
    cr_assert_eq(wait_count(q, 1), 1);
    snprintf(args, sizeof args, "set_user_limits '%s' '{\"max-connections\": 0}'", user);
    ctl(args);
    snprintf(args, sizeof args, "close_all_user_connections '%s' away-by-test", user);
    ctl(args);

    /* A worker runs b while the client is away: the result waits in the
     * reply queue, which nobody uses now. */
    struct wthread wt;
    wthread_start(&wt, q, 0);
    for (int i = 0; conc_broker_worker_tasks(wt.w) < 1; i++) {
        cr_assert_lt(i, (int)(GUARD * 20), "the worker did not run the task");
        usleep(50 * 1000);
    }
    cr_assert_not(conc_future_done(b));
    /* Unused for result_expires, the queue goes with the result.  A look
     * at it counts as a use: look less often than that. */
    long n = raw_count(reply);
    for (int i = 0; i < (int)GUARD && n != -1; i++) {
        usleep(1500 * 1000);
        n = raw_count(reply);
    }
    cr_assert_eq(n, -1, "the reply queue did not expire");

    /* Submitted while away: sent once the client is back. */
    conc_future *c = submit_u64(ex, "square", 5);
    snprintf(args, sizeof args, "clear_user_limits '%s' max-connections", user);
    ctl(args);
    expect_error(b, -EPIPE, 0);
    cr_assert_eq(result_u64(c), 25);
    conc_future_free(b);
    conc_future_free(c);
    cr_assert_geq(conc_broker_executor_reconnects(ex), 1);
    cr_assert_eq(conc_broker_executor_pending(ex), 0);
    cr_assert_eq(raw_count(conc_broker_executor_reply_queue(ex)), 0);
    cr_assert_eq(wthread_stop(&wt), 2);
    conc_broker_executor_free(ex);
    snprintf(args, sizeof args, "delete_user '%s'", user);
    ctl(args);
    delete_queues(q);
}

/* A connect to a listener that never answers (the kernel completes the
 * TCP connection, nobody sends the AMQP greeting) parks only its
 * coroutine: another coroutine of the hub runs while it waits (it sees
 * the connection arrive at the listener before the connect returned), and
 * the connect gives up with -ETIMEDOUT at its connect_timeout. */
struct silent {
    const char *url;
    int lfd;
    bool worker;            /* conc_broker_worker_new, else executor_new */
    int rc;
    bool done;
    bool seen_while_connecting;
    int64_t took;
};

static void *silent_connect(void *arg)
{
    struct silent *s = arg;
    int64_t t0 = conc_now();
    if (s->worker) {
        conc_broker_worker_opts o = CONC_BROKER_WORKER_OPTS_INIT;
        o.connect_timeout = 0.5;
        conc_broker_worker *w = NULL;
        s->rc = conc_broker_worker_new(&w, s->url, &o);
        conc_broker_worker_free(w);
    } else {
        conc_broker_executor_opts o = CONC_BROKER_EXECUTOR_OPTS_INIT;
        o.connect_timeout = 0.5;
        conc_broker_executor *ex = NULL;
        s->rc = conc_broker_executor_new(&ex, s->url, &o);
        conc_broker_executor_free(ex);
    }
    s->took = conc_now() - t0;
    s->done = true;
    return NULL;
}

static void *silent_watch(void *arg)
{
    struct silent *s = arg;
    /* Ready once a connection waits in the listener's backlog. */
    if (conc_fd_wait(s->lfd, POLLIN, GUARD) == 0)
        s->seen_while_connecting = !s->done;
    return NULL;
}

static void silent_listener_case(bool worker)
{
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(lfd, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t al = sizeof a;
    cr_assert_eq(bind(lfd, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(getsockname(lfd, (struct sockaddr *)&a, &al), 0);
    cr_assert_eq(listen(lfd, 8), 0);
    char u[128];
    snprintf(u, sizeof u, "amqp://guest:guest@127.0.0.1:%d/", ntohs(a.sin_port));
    struct silent s = { .url = u, .lfd = lfd, .worker = worker, .rc = 1 };
    conc_greenlet *gc, *gw;
    cr_assert_eq(conc_greenlet_spawn(&gc, silent_connect, &s, NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&gw, silent_watch, &s, NULL), 0);
    cr_assert_eq(conc_hub_run(), 0);
    cr_assert(s.done);
    cr_assert_eq(s.rc, -ETIMEDOUT, "%s: %d", worker ? "worker" : "executor", s.rc);
    cr_assert(s.seen_while_connecting, "the connect held the thread");
    cr_assert_geq(s.took, 500000000LL, "gave up before its timeout");
    conc_greenlet_free(gc);
    conc_greenlet_free(gw);
    conc_hub_free();
    close(lfd);
}

Test(broker_executor, connect_from_a_coroutine_parks_only_the_coroutine)
{
    silent_listener_case(true);
    silent_listener_case(false);
}

/* ------------------------------------- a broker that stops reading */

/* Counts its runs per task (by the argument's first byte) and answers
 * with that byte. */
static atomic_int tally_runs[8];

static int tally(const void *data, size_t len, void **result, size_t *rlen, void *arg)
{
    (void)arg;
    if (len == 0)
        return -EINVAL;
    unsigned char k = ((const unsigned char *)data)[0] & 7;
    atomic_fetch_add(&tally_runs[k], 1);
    unsigned char *y = malloc(1);
    if (!y)
        return -ENOMEM;
    *y = k;
    *result = y;
    *rlen = 1;
    return 0;
}

static unsigned char result_byte(conc_future *f)
{
    void *v = NULL;
    size_t len = 0;
    int r = conc_future_result(f, &v, &len, GUARD);
    cr_assert_eq(r, 0, "result: %s", conc_strerror(r));
    cr_assert_eq(len, 1);
    return *(unsigned char *)v;
}

/* A submit to a broker that stops reading: a large task that does not fit
 * in the socket's buffers, and a small one queued behind it. */
struct full_state {
    conc_broker_executor *ex;
    unsigned char *big;
    size_t len;
    int big_rc, small_rc;
    conc_future *small_f;
    atomic_int busy;            /* submits under way */
    atomic_int ticks;           /* the other coroutine's turns */
    int ticks_during;           /* its turns while the large submit waited */
};

static void *full_big(void *arg)
{
    struct full_state *s = arg;
    conc_future *f = NULL;
    s->big_rc = conc_broker_executor_submit_until(s->ex, "tally", s->big, s->len,
                                                  conc_now() + 1000000000LL, &f);
    s->ticks_during = atomic_load(&s->ticks);
    if (f)
        conc_future_free(f);
    atomic_fetch_sub(&s->busy, 1);
    return NULL;
}

static void *full_small(void *arg)
{
    struct full_state *s = arg;
    unsigned char k = 2;
    /* Queued behind the large one, with no deadline: it comes back once
     * the connection is given up, the task kept to be sent again. */
    s->small_rc = conc_broker_executor_submit(s->ex, "tally", &k, 1, &s->small_f);
    atomic_fetch_sub(&s->busy, 1);
    return NULL;
}

static void *full_ticker(void *arg)
{
    struct full_state *s = arg;
    while (atomic_load(&s->busy)) {
        atomic_fetch_add(&s->ticks, 1);
        conc_sleep(0.01);
    }
    return NULL;
}

/* A submit whose bytes the broker does not read waits for room through
 * conc's wait layer: only its coroutine parks (another one keeps running,
 * a third submits behind it on the same hub without waiting for a lock
 * the first holds), and it ends at its deadline with -ETIMEDOUT, the task
 * not submitted.  The connection, which carried part of a frame, is made
 * again once the broker reads again; the task queued behind is sent
 * again; every task runs once, the timed-out one never. */
static void submit_full_on(const char *u, const char *cacert)
{
    char q[128];
    qname(q, sizeof q, "full");
    for (int i = 0; i < 8; i++)
        atomic_store(&tally_runs[i], 0);
    conc_broker_worker *w = NULL;
    conc_broker_worker_opts wo = CONC_BROKER_WORKER_OPTS_INIT;
    wo.queue = q;
    wo.cacert = cacert;
    cr_assert_eq(conc_broker_worker_new(&w, u, &wo), 0);
    cr_assert_eq(conc_broker_worker_register(w, "tally", tally, NULL), 0);
    struct wthread wt = { .w = w, .rc = 1 };
    cr_assert_eq(pthread_create(&wt.t, NULL, wthread_main, &wt), 0);
    conc_broker_executor_opts o = CONC_BROKER_EXECUTOR_OPTS_INIT;
    o.queue = q;
    o.connect_timeout = 2;
    o.cacert = cacert;
    conc_broker_executor *ex = NULL;
    cr_assert_eq(conc_broker_executor_new(&ex, u, &o), 0);
    unsigned char k = 1;
    conc_future *before = NULL;
    cr_assert_eq(conc_broker_executor_submit(ex, "tally", &k, 1, &before), 0);
    cr_assert_eq(result_byte(before), 1);
    static struct full_state s;
    memset(&s, 0, sizeof s);
    s.ex = ex;
    s.len = 15u << 20;      /* more than the socket buffers hold; the node
                               takes up to 16 MiB */
    s.big = calloc(1, s.len);
    cr_assert_not_null(s.big);
    s.big[0] = 3;
    atomic_store(&s.busy, 2);
    pid_t guard = node_cont_guard(GUARD);
    node_signal(SIGSTOP);
    conc_greenlet *g1, *g2, *g3;
    cr_assert_eq(conc_greenlet_spawn(&g1, full_big, &s, NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&g2, full_small, &s, NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&g3, full_ticker, &s, NULL), 0);
    int hr = conc_hub_run();
    node_signal(SIGCONT);
    guard_end(guard);
    cr_assert_eq(hr, 0);
    cr_assert_eq(s.big_rc, -ETIMEDOUT, "large submit: %s", conc_strerror(s.big_rc));
    cr_assert_gt(s.ticks_during, 0, "the other coroutine did not run during the submit");
    cr_assert_eq(s.small_rc, 0, "small submit: %s", conc_strerror(s.small_rc));
    conc_greenlet_free(g1);
    conc_greenlet_free(g2);
    conc_greenlet_free(g3);
    cr_assert_eq(conc_hub_free(), 0);
    free(s.big);
    /* The task behind it is sent again on the new connection and runs. */
    cr_assert_eq(result_byte(s.small_f), 2);
    cr_assert_geq(conc_broker_executor_reconnects(ex), 1);
    k = 4;
    conc_future *after = NULL;
    cr_assert_eq(conc_broker_executor_submit(ex, "tally", &k, 1, &after), 0);
    cr_assert_eq(result_byte(after), 4);
    cr_assert_eq(conc_broker_executor_pending(ex), 0);
    cr_assert_eq(atomic_load(&tally_runs[1]), 1);
    cr_assert_eq(atomic_load(&tally_runs[2]), 1);
    cr_assert_eq(atomic_load(&tally_runs[3]), 0, "the timed-out task ran");
    cr_assert_eq(atomic_load(&tally_runs[4]), 1);
    conc_future_free(before);
    conc_future_free(s.small_f);
    conc_future_free(after);
    conc_broker_executor_free(ex);
    cr_assert_eq(conc_broker_worker_stop(w), 0);
    cr_assert_eq(pthread_join(wt.t, NULL), 0);
    cr_assert_eq(wt.rc, 0);
    cr_assert_eq(conc_broker_worker_tasks(w), 4 - 1);
    cr_assert_eq(conc_broker_worker_rejected(w), 0);
    conc_broker_worker_free(w);
    delete_queues(q);
}

Test(broker_executor, submit_to_a_broker_that_stops_reading_parks_and_times_out)
{
    submit_full_on(url, NULL);
}

/* The same over amqps: the task's frames are encrypted by conc into the
 * connection's TLS session and written without blocking, so the submit
 * parks only its coroutine and times out the same way. */
Test(broker_executor, submit_over_tls_to_a_broker_that_stops_reading_parks_and_times_out)
{
    char tls[256];
    tls_url_or_skip(tls, sizeof tls);
    submit_full_on(tls, CONC_RABBITMQ_DIR "/tls/ca.pem");
}

/* The first call stops the node and answers with more than the socket's
 * buffers hold; a later one answers "ok". */
static atomic_int stall_calls;

static int stall_fn(const void *data, size_t len, void **result, size_t *rlen, void *arg)
{
    (void)data, (void)len, (void)arg;
    if (atomic_fetch_add(&stall_calls, 1) == 0) {
        node_signal(SIGSTOP);
        *rlen = 15u << 20;
        *result = calloc(1, *rlen);
    } else {
        *rlen = 2;
        *result = malloc(2);
        if (*result)
            memcpy(*result, "ok", 2);
    }
    return *result ? 0 : -ENOMEM;
}

struct stall_state {
    conc_broker_worker *w;
    int run_rc;
    atomic_int running;
    atomic_int ticks;           /* the other coroutine's turns while the
                                   result waited for room */
    bool stopped_after;         /* the node was still stopped when run
                                   returned */
};

static void *stall_runner(void *arg)
{
    struct stall_state *s = arg;
    s->run_rc = conc_broker_worker_run(s->w, 2.0);
    s->stopped_after = node_stopped();
    atomic_store(&s->running, 0);
    return NULL;
}

static void *stall_ticker(void *arg)
{
    struct stall_state *s = arg;
    while (atomic_load(&s->running)) {
        if (atomic_load(&stall_calls) > 0)
            atomic_fetch_add(&s->ticks, 1);
        conc_sleep(0.01);
    }
    return NULL;
}

/* A worker in a coroutine whose result the broker does not read: the
 * result waits for room through conc's wait layer (another coroutine keeps
 * running) until the run's timeout, which drops the connection; once the
 * broker reads again, the task comes back, runs again, and its future
 * completes once. */
static void result_stall_on(const char *u, const char *cacert)
{
    char q[128];
    qname(q, sizeof q, "stall");
    atomic_store(&stall_calls, 0);
    static struct stall_state s;
    memset(&s, 0, sizeof s);
    conc_broker_worker_opts wo = CONC_BROKER_WORKER_OPTS_INIT;
    wo.queue = q;
    wo.cacert = cacert;
    cr_assert_eq(conc_broker_worker_new(&s.w, u, &wo), 0);
    cr_assert_eq(conc_broker_worker_register(s.w, "stall", stall_fn, NULL), 0);
    conc_broker_executor_opts eo = CONC_BROKER_EXECUTOR_OPTS_INIT;
    eo.queue = q;
    eo.cacert = cacert;
    conc_broker_executor *ex = NULL;
    cr_assert_eq(conc_broker_executor_new(&ex, u, &eo), 0);
    conc_future *f = NULL;
    cr_assert_eq(conc_broker_executor_submit(ex, "stall", "x", 1, &f), 0);
    atomic_store(&s.running, 1);
    pid_t guard = node_cont_guard(GUARD);
    conc_greenlet *g1, *g2;
    cr_assert_eq(conc_greenlet_spawn(&g1, stall_runner, &s, NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&g2, stall_ticker, &s, NULL), 0);
    int hr = conc_hub_run();
    node_signal(SIGCONT);
    guard_end(guard);
    cr_assert_eq(hr, 0);
    cr_assert_eq(atomic_load(&stall_calls), 1);
    cr_assert_eq(s.run_rc, -ETIMEDOUT, "run: %s", conc_strerror(s.run_rc));
    cr_assert(s.stopped_after, "run returned only once the node went on");
    cr_assert_gt(atomic_load(&s.ticks), 0, "the other coroutine did not run");
    conc_greenlet_free(g1);
    conc_greenlet_free(g2);
    cr_assert_eq(conc_hub_free(), 0);
    /* The broker gives the task back; it runs again, answered once. */
    struct wthread wt = { .w = s.w, .rc = 1 };
    cr_assert_eq(pthread_create(&wt.t, NULL, wthread_main, &wt), 0);
    void *v = NULL;
    size_t len = 0;
    int r = conc_future_result(f, &v, &len, GUARD);
    cr_assert_eq(r, 0, "result: %s", conc_strerror(r));
    if (cacert) {
        /* Over TLS the result not sent whole was kept, and the next run
         * sent the rest first: the first run's result, the task run once
         * (RabbitMQ would not notice a TLS connection cut in the middle of
         * a record, nor give its task back). */
        cr_assert_eq(len, 15u << 20);
    } else {
        cr_assert_eq(len, 2);
        cr_assert_eq(memcmp(v, "ok", 2), 0);
    }
    cr_assert_eq(conc_broker_worker_stop(s.w), 0);
    cr_assert_eq(pthread_join(wt.t, NULL), 0);
    cr_assert_eq(wt.rc, 0);
    cr_assert_eq(atomic_load(&stall_calls), cacert ? 1 : 2);
    cr_assert_eq(conc_broker_worker_tasks(s.w), 1);
    cr_assert_eq(conc_broker_executor_pending(ex), 0);
    conc_future_free(f);
    conc_broker_executor_free(ex);
    conc_broker_worker_free(s.w);
    delete_queues(q);
}

Test(broker_executor, result_to_a_broker_that_stops_reading_parks_the_worker_only)
{
    result_stall_on(url, NULL);
}

/* The same over amqps: the worker's result is encrypted by conc into the
 * connection's TLS session and written without blocking. */
Test(broker_executor, result_over_tls_to_a_broker_that_stops_reading_parks_the_worker_only)
{
    char tls[256];
    tls_url_or_skip(tls, sizeof tls);
    result_stall_on(tls, CONC_RABBITMQ_DIR "/tls/ca.pem");
}

/* A relay between the executor and the node that can hold back what the
 * broker sends: once `allow` more bytes went to the client it forwards
 * nothing more from the broker until released (a broker that stalls in
 * the middle of a message). */
struct relay {
    int lfd, cfd, bfd, wake;
    int port, node_port;
    pthread_t t;
    atomic_long allow;          /* bytes still let through; < 0: all */
    atomic_int holding;         /* bytes wait and none may go */
    atomic_int stop;
};

static void relay_kick(struct relay *r)
{
    uint64_t one = 1;
    cr_assert_eq(write(r->wake, &one, sizeof one), (ssize_t)sizeof one);
}

/* Moves up to `most` bytes from one socket to the other.  The bytes moved,
 * or -1 when either side is done. */
static ssize_t relay_copy(int from, int to, size_t most)
{
    static char buf[65536];
    ssize_t n = read(from, buf, most < sizeof buf ? most : sizeof buf);
    if (n <= 0)
        return -1;
    for (ssize_t off = 0; off < n;) {
        ssize_t k = write(to, buf + off, (size_t)(n - off));
        if (k <= 0)
            return -1;
        off += k;
    }
    return n;
}

static void *relay_main(void *arg)
{
    struct relay *r = arg;
    r->cfd = accept(r->lfd, NULL, NULL);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)r->node_port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    r->bfd = socket(AF_INET, SOCK_STREAM, 0);
    if (r->cfd < 0 || r->bfd < 0 || connect(r->bfd, (struct sockaddr *)&a, sizeof a) < 0)
        return NULL;
    while (!atomic_load(&r->stop)) {
        long allow = atomic_load(&r->allow);
        bool held = allow == 0;
        /* Held: the broker's side is looked at until it has more to send,
         * which is then left unread. */
        short bev = !held || !atomic_load(&r->holding) ? POLLIN : 0;
        struct pollfd p[3] = { { .fd = r->cfd, .events = POLLIN },
                               { .fd = r->bfd, .events = bev },
                               { .fd = r->wake, .events = POLLIN } };
        if (poll(p, 3, -1) < 0)
            break;
        if (p[2].revents) {
            uint64_t v;
            if (read(r->wake, &v, sizeof v) < 0)
                break;
            continue;
        }
        if (p[0].revents && relay_copy(r->cfd, r->bfd, 65536) < 0)
            break;
        if (p[1].revents) {
            if (held) {
                atomic_store(&r->holding, 1);
                continue;
            }
            ssize_t n = relay_copy(r->bfd, r->cfd, allow < 0 ? 65536 : (size_t)allow);
            if (n < 0)
                break;
            if (allow > 0)
                atomic_fetch_sub(&r->allow, n);
        }
    }
    return NULL;
}

static void relay_start(struct relay *r)
{
    memset(r, 0, sizeof *r);
    const char *colon = strrchr(url, ':');
    cr_assert_not_null(colon);
    r->node_port = atoi(colon + 1);
    cr_assert_gt(r->node_port, 0);
    r->lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    cr_assert_eq(bind(r->lfd, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(listen(r->lfd, 1), 0);
    socklen_t len = sizeof a;
    cr_assert_eq(getsockname(r->lfd, (struct sockaddr *)&a, &len), 0);
    r->port = ntohs(a.sin_port);
    r->wake = eventfd(0, 0);
    cr_assert_geq(r->wake, 0);
    atomic_store(&r->allow, -1);
    cr_assert_eq(pthread_create(&r->t, NULL, relay_main, r), 0);
}

/* Lets `n` more bytes from the broker through, then holds (n < 0: all). */
static void relay_limit(struct relay *r, long n)
{
    atomic_store(&r->holding, 0);
    atomic_store(&r->allow, n);
    relay_kick(r);
}

static void relay_stop(struct relay *r)
{
    atomic_store(&r->stop, 1);
    relay_kick(r);
    cr_assert_eq(pthread_join(r->t, NULL), 0);
    close(r->lfd);
    close(r->cfd);
    close(r->bfd);
    close(r->wake);
}

/* Returns a 4 MiB result. */
static int big_result(const void *data, size_t len, void **result, size_t *rlen, void *arg)
{
    (void)data, (void)len, (void)arg;
    *rlen = 4u << 20;
    *result = malloc(*rlen);
    if (!*result)
        return -ENOMEM;
    memset(*result, 'b', *rlen);
    return 0;
}

struct held_state {
    conc_broker_executor *ex;
    struct relay *relay;
    int rc;
    conc_future *f;
    int held_at_return;         /* the relay still held the result back
                                   when the submit returned */
    atomic_int busy;
    atomic_int ticks;
};

static void *held_submitter(void *arg)
{
    struct held_state *s = arg;
    unsigned char k = 2;
    s->rc = conc_broker_executor_submit(s->ex, "tally", &k, 1, &s->f);
    s->held_at_return = atomic_load(&s->relay->holding);
    atomic_store(&s->busy, 0);
    return NULL;
}

static void *held_ticker(void *arg)
{
    struct held_state *s = arg;
    while (atomic_load(&s->busy)) {
        atomic_fetch_add(&s->ticks, 1);
        conc_sleep(0.01);
    }
    return NULL;
}

struct relay_guard_arg {
    struct relay *r;
    int end[2];                 /* a pipe: written to end the guard */
};

static void *relay_guard(void *arg)
{
    /* A hang guard only: lets everything through after GUARD seconds. */
    struct relay_guard_arg *g = arg;
    struct pollfd p = { .fd = g->end[0], .events = POLLIN };
    if (poll(&p, 1, (int)(GUARD * 1000)) == 0)
        relay_limit(g->r, -1);
    return NULL;
}

/* A result whose body the broker has not sent whole yet (it stalls in the
 * middle of the message): the executor's result thread takes what came and
 * goes back to waiting, holding no lock, so a coroutine that submits
 * meanwhile gets its future at once and other coroutines of its hub keep
 * running (rabbitmq-c's reader waited for the rest under the connection's
 * lock, blocking the hub's thread on it). */
Test(broker_executor, result_read_in_part_holds_no_lock)
{
    char q[128];
    qname(q, sizeof q, "held");
    for (int i = 0; i < 8; i++)
        atomic_store(&tally_runs[i], 0);
    static struct relay rl;
    relay_start(&rl);
    conc_broker_worker *w = NULL;
    cr_assert_eq(conc_broker_worker_new(&w, url, &(conc_broker_worker_opts){ .queue = q }), 0);
    cr_assert_eq(conc_broker_worker_register(w, "tally", tally, NULL), 0);
    cr_assert_eq(conc_broker_worker_register(w, "big", big_result, NULL), 0);
    struct wthread wt = { .w = w, .rc = 1 };
    cr_assert_eq(pthread_create(&wt.t, NULL, wthread_main, &wt), 0);
    char via[256];
    snprintf(via, sizeof via, "amqp://guest:guest@127.0.0.1:%d/%%2f", rl.port);
    conc_broker_executor_opts o = CONC_BROKER_EXECUTOR_OPTS_INIT;
    o.queue = q;
    conc_broker_executor *ex = NULL;
    cr_assert_eq(conc_broker_executor_new(&ex, via, &o), 0);
    unsigned char k = 1;
    conc_future *before = NULL;
    cr_assert_eq(conc_broker_executor_submit(ex, "tally", &k, 1, &before), 0);
    cr_assert_eq(result_byte(before), 1);
    /* The big result's first 64 KiB reach the client, the rest waits. */
    relay_limit(&rl, 64 * 1024);
    conc_future *fb = NULL;
    cr_assert_eq(conc_broker_executor_submit(ex, "big", "x", 1, &fb), 0);
    for (int i = 0; i < (int)(GUARD * 100) && !atomic_load(&rl.holding); i++)
        usleep(10 * 1000);      /* a hang guard on a flag, not a wait */
    cr_assert(atomic_load(&rl.holding), "the broker never had more to send");
    /* The executor's socket (the relay's client) has nothing left unread:
     * its result thread took what came. */
    struct sockaddr_in peer;
    socklen_t plen = sizeof peer;
    cr_assert_eq(getpeername(rl.cfd, (struct sockaddr *)&peer, &plen), 0);
    int xfd = -1;
    for (int fd = 0; fd < 1024 && xfd < 0; fd++) {
        struct sockaddr_in me;
        socklen_t mlen = sizeof me;
        if (fd != rl.bfd && getsockname(fd, (struct sockaddr *)&me, &mlen) == 0 &&
            me.sin_family == AF_INET && me.sin_port == peer.sin_port)
            xfd = fd;
    }
    cr_assert_geq(xfd, 0, "the executor's socket was not found");
    int unread = 1;
    for (int i = 0; i < (int)(GUARD * 100); i++) {
        cr_assert_eq(ioctl(xfd, FIONREAD, &unread), 0);
        if (!unread)
            break;
        usleep(10 * 1000);      /* a hang guard on a count, not a wait */
    }
    cr_assert_eq(unread, 0);
    static struct relay_guard_arg ga;
    ga.r = &rl;
    cr_assert_eq(pipe(ga.end), 0);
    pthread_t guard;
    cr_assert_eq(pthread_create(&guard, NULL, relay_guard, &ga), 0);
    static struct held_state s;
    memset(&s, 0, sizeof s);
    s.ex = ex;
    s.relay = &rl;
    atomic_store(&s.busy, 1);
    conc_greenlet *g1, *g2;
    cr_assert_eq(conc_greenlet_spawn(&g2, held_ticker, &s, NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&g1, held_submitter, &s, NULL), 0);
    int hr = conc_hub_run();
    cr_assert_eq(hr, 0);
    cr_assert_eq(s.rc, 0, "submit: %s", conc_strerror(s.rc));
    cr_assert(s.held_at_return, "the submit returned only once the result came whole");
    conc_greenlet_free(g1);
    conc_greenlet_free(g2);
    cr_assert_eq(conc_hub_free(), 0);
    /* The rest comes: both futures complete. */
    relay_limit(&rl, -1);
    void *v = NULL;
    size_t len = 0;
    int r = conc_future_result(fb, &v, &len, GUARD);
    cr_assert_eq(r, 0, "big: %s", conc_strerror(r));
    cr_assert_eq(len, 4u << 20);
    cr_assert_eq(((unsigned char *)v)[0], 'b');
    cr_assert_eq(((unsigned char *)v)[len - 1], 'b');
    cr_assert_eq(result_byte(s.f), 2);
    conc_future_free(before);
    conc_future_free(fb);
    conc_future_free(s.f);
    conc_broker_executor_free(ex);
    cr_assert_eq(write(ga.end[1], "x", 1), 1);
    cr_assert_eq(pthread_join(guard, NULL), 0);
    close(ga.end[0]);
    close(ga.end[1]);
    cr_assert_eq(conc_broker_worker_stop(w), 0);
    cr_assert_eq(pthread_join(wt.t, NULL), 0);
    cr_assert_eq(wt.rc, 0);
    conc_broker_worker_free(w);
    relay_stop(&rl);
    delete_queues(q);
}
