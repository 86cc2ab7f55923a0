/*
 * test_server_serving.c - serve_forever's loop against Python's: it runs
 * service_actions in every model, idle or busy (Python's runs it after
 * every pass); a shutdown asked while nothing serves is kept for the next
 * serve_forever (Python's flag), also one racing its start; and a request
 * whose thread cannot start is shown to handle_error, its connection
 * closed, while the server goes on serving; and FORKING children past the
 * shutdown timeout get SIGTERM, then SIGKILL.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "conc.h"
#include "support/server_test.h"

#define GUARD SERVER_TEST_GUARD

/* Reads one piece and sends it back upper-cased. */
static int once_handle(conc_server_request *req)
{
    char buf[64];
    ssize_t n = conc_socket_recv(req->sock, buf, sizeof buf, 0);
    if (n <= 0)
        return n < 0 ? (int)n : 0;
    upper(buf, (size_t)n);
    return conc_socket_sendall(req->sock, buf, (size_t)n, 0, NULL);
}

static _Atomic int errors_seen;
static _Atomic int last_error;

static void note_error(conc_server_request *req, int err)
{
    if (req->sock && req->peer.u.sa.sa_family == AF_INET)
        atomic_store(&last_error, err);
    atomic_fetch_add(&errors_seen, 1);
}

static const conc_server_handler once_handler = {
    .handle = once_handle, .handle_error = note_error,
};

static const conc_server_reactor_handler reactor_handler = { .on_data = upper_on_data };

static const conc_server_model models[] = {
    CONC_SERVER_SYNC,    CONC_SERVER_THREADING, CONC_SERVER_FORKING,
    CONC_SERVER_PREFORK, CONC_SERVER_COROUTINE, CONC_SERVER_REACTOR,
};

static conc_server *make(conc_server_model model, const conc_server_opts *extra)
{
    conc_sockaddr a;
    cr_assert_eq(conc_sockaddr_inet(&a, AF_INET, "127.0.0.1", 0), 0);
    conc_server_opts o = extra ? *extra : (conc_server_opts)CONC_SERVER_OPTS_INIT;
    o.size = sizeof o;
    o.model = model;
    o.request_queue_size = 128;
    if (model == CONC_SERVER_PREFORK)
        o.workers = 1;
    conc_server *s = NULL;
    int rc = model == CONC_SERVER_REACTOR
                 ? conc_server_new_reactor(&s, &a, &reactor_handler, &o)
                 : conc_server_new(&s, SOCK_STREAM, &a, &once_handler, &o);
    cr_assert_eq(rc, 0, "%s: new: %s", conc_server_model_name(model), conc_strerror(rc));
    return s;
}

/* A connection to a, or a negative errno. */
static int connect_to(const conc_sockaddr *a, conc_socket **out)
{
    int rc = conc_socket_new(out, AF_INET, SOCK_STREAM, 0);
    if (rc < 0)
        return rc;
    conc_socket_set_timeout(*out, GUARD);
    rc = conc_socket_connect(*out, a);
    if (rc < 0)
        conc_socket_free(*out);
    return rc;
}

static conc_sockaddr address_of(conc_server *s)
{
    conc_sockaddr a;
    cr_assert_eq(conc_server_address(s, &a), 0);
    return a;
}

/* One request on a connection of its own to a: "abc" in, "ABC" expected
 * back.  Returns 0 when it came, or a negative errno. */
static int request_to(const conc_sockaddr *a)
{
    conc_socket *c;
    int rc = connect_to(a, &c);
    if (rc < 0)
        return rc;
    char buf[8] = { 0 };
    rc = conc_socket_sendall(c, "abc", 3, 0, NULL);
    ssize_t got = 0;
    while (rc == 0 && got < 3) {
        ssize_t n = conc_socket_recv(c, buf + got, sizeof buf - 1 - (size_t)got, 0);
        if (n <= 0) {
            rc = n == 0 ? -ECONNRESET : (int)n;
            break;
        }
        got += n;
    }
    conc_socket_free(c);
    if (rc == 0 && memcmp(buf, "ABC", 3) != 0)
        rc = -EPROTO;
    return rc;
}

static int one_request(conc_server *s)
{
    conc_sockaddr a = address_of(s);
    return request_to(&a);
}

/* ------------------------------------------------------ serving thread */

struct running {
    conc_server *s;
    pthread_t t;
    int rc;
    double poll;
};

static void *serve_main(void *arg)
{
    struct running *r = arg;
    r->rc = conc_server_serve_forever(r->s, r->poll > 0 ? r->poll : 0.5);
    return NULL;
}

static void start(struct running *r, conc_server *s, double poll)
{
    memset(r, 0, sizeof *r);
    r->s = s;
    r->rc = 1;
    r->poll = poll;
    cr_assert_eq(pthread_create(&r->t, NULL, serve_main, r), 0);
}

/* Joins r's thread within the guard; false when it still serves (then it
 * is stopped and joined, so the test can fail cleanly). */
static bool joined(struct running *r)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += (time_t)GUARD;
    if (pthread_timedjoin_np(r->t, NULL, &ts) == 0)
        return true;
    conc_server_shutdown(r->s);
    pthread_join(r->t, NULL);
    return false;
}

/* ------------------------------------------------------ service_actions */

static _Atomic int actions;
static _Atomic int stop_after;

static void count_action(conc_server *s, void *user)
{
    (void)user;
    if (atomic_fetch_add(&actions, 1) + 1 == atomic_load(&stop_after))
        conc_server_shutdown(s);
}

/* Idle, every model runs service_actions every poll_interval, in the
 * thread that called serve_forever, and none after the shutdown. */
Test(server_serving, service_actions_run_in_every_model_while_idle, .timeout = 120)
{
    int fds = base_fds();
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++) {
        conc_server_opts o = CONC_SERVER_OPTS_INIT;
        o.service_actions = count_action;
        conc_server *s = make(models[i], &o);
        atomic_store(&actions, 0);
        atomic_store(&stop_after, 3);
        int rc = conc_server_serve_forever(s, 0.005);
        cr_assert_eq(rc, 0, "%s: %s", conc_server_model_name(models[i]), conc_strerror(rc));
        cr_assert_eq(atomic_load(&actions), 3, "%s: %d calls",
                     conc_server_model_name(models[i]), atomic_load(&actions));
        conc_server_free(s);
        conc_hub_free();
        no_children();
    }
    cr_assert_eq(count_fds(), fds);
}

struct load {
    conc_sockaddr addr;             /* the server's (taken before the load) */
    pthread_t t;
    _Atomic bool stop;
    _Atomic long served, failed;
};

/* Keeps the listener busy: one connection after another, each a request. */
static void *load_main(void *arg)
{
    struct load *l = arg;
    while (!atomic_load(&l->stop)) {
        if (request_to(&l->addr) == 0)
            atomic_fetch_add(&l->served, 1);
        else
            atomic_fetch_add(&l->failed, 1);
    }
    conc_hub_free();
    return NULL;
}

/* Busy, too: with a client always waiting in the backlog the sync model
 * never timed out in its wait and never ran service_actions, and the
 * coroutine and reactor models ran it never at all. */
Test(server_serving, service_actions_run_under_steady_load, .timeout = 120)
{
    int fds = base_fds();
    const conc_server_model busy[] = { CONC_SERVER_SYNC, CONC_SERVER_THREADING,
                                       CONC_SERVER_COROUTINE, CONC_SERVER_REACTOR };
    for (size_t i = 0; i < sizeof busy / sizeof busy[0]; i++) {
        conc_server_opts o = CONC_SERVER_OPTS_INIT;
        o.service_actions = count_action;
        conc_server *s = make(busy[i], &o);
        atomic_store(&actions, 0);
        atomic_store(&stop_after, 1000000);     /* not before the load runs */
        struct load l = { .addr = address_of(s) };
        cr_assert_eq(pthread_create(&l.t, NULL, load_main, &l), 0);
        struct running r;
        start(&r, s, 0.02);
        /* service_actions counts from the first served request on */
        int64_t end = conc_now() + (int64_t)(GUARD * 1e9);
        while (atomic_load(&l.served) == 0 && conc_now() < end)
            conc_sleep(0.001);
        cr_assert_gt(atomic_load(&l.served), 0, "%s: nothing served",
                     conc_server_model_name(busy[i]));
        atomic_store(&stop_after, atomic_load(&actions) + 5);
        bool ended = joined(&r);
        atomic_store(&l.stop, true);
        /* a client left in the backlog is reset, not left to its timeout */
        cr_assert_eq(conc_server_close(s), 0);
        pthread_join(l.t, NULL);
        cr_assert(ended, "%s: service_actions ran %d times under load, serve_forever "
                  "did not stop", conc_server_model_name(busy[i]), atomic_load(&actions));
        cr_assert_eq(r.rc, 0);
        cr_assert_eq(atomic_load(&l.failed) > 0 && atomic_load(&l.served) == 0, false);
        conc_server_free(s);
    }
    cr_assert_eq(count_fds(), fds);
}

/* ------------------------------------------------------------ shutdown */

/* A shutdown_wait while nothing serves returns at once and is kept: the
 * next serve_forever returns at once without serving, and the one after
 * serves. */
Test(server_serving, a_shutdown_before_serve_forever_is_kept, .timeout = 120)
{
    int fds = base_fds();
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++) {
        const char *name = conc_server_model_name(models[i]);
        conc_server *s = make(models[i], NULL);
        cr_assert_eq(conc_server_shutdown_wait(s, GUARD), 0, "%s", name);
        struct running r;
        start(&r, s, 0.5);
        cr_assert(joined(&r), "%s: serve_forever served on after a shutdown", name);
        cr_assert_eq(r.rc, 0, "%s: %s", name, conc_strerror(r.rc));
        conc_server_stats st;
        cr_assert_eq(conc_server_get_stats(s, &st), 0);
        cr_assert_eq(st.accepted, 0, "%s", name);
        /* the request was used up: this one serves */
        start(&r, s, 0.5);
        int rc = one_request(s);
        cr_assert_eq(rc, 0, "%s: %s", name, conc_strerror(rc));
        cr_assert_eq(conc_server_shutdown_wait(s, GUARD), 0, "%s", name);
        cr_assert(joined(&r), "%s", name);
        cr_assert_eq(r.rc, 0, "%s: %s", name, conc_strerror(r.rc));
        conc_server_free(s);
        no_children();
    }
    cr_assert_eq(count_fds(), fds);
}

/* A shutdown_wait right after serve_forever's thread starts: whichever
 * comes first, serve_forever returns and shutdown_wait says 0. */
Test(server_serving, shutdown_wait_racing_the_start_of_serve_forever, .timeout = 120)
{
    int fds = base_fds();
    const conc_server_model quick[] = { CONC_SERVER_SYNC, CONC_SERVER_COROUTINE,
                                        CONC_SERVER_REACTOR };
    for (size_t i = 0; i < sizeof quick / sizeof quick[0]; i++) {
        conc_server *s = make(quick[i], NULL);
        for (int k = 0; k < 20; k++) {
            struct running r;
            start(&r, s, 0.5);
            cr_assert_eq(conc_server_shutdown_wait(s, GUARD), 0);
            cr_assert(joined(&r), "%s: round %d: serve_forever missed the shutdown",
                      conc_server_model_name(quick[i]), k);
            cr_assert_eq(r.rc, 0);
        }
        conc_server_free(s);
    }
    cr_assert_eq(count_fds(), fds);
}

/* ------------------------------------------------- a request that fails */

/* THREADING with a stack no thread can get (128 TiB): each request's
 * thread fails to start; handle_error sees the error with the connection,
 * which is then closed; handle_request returns 0 (a request was taken, as
 * Python's returns normally), so -EAGAIN and -ETIMEDOUT keep meaning that
 * none came; serve_forever goes on. */
Test(server_serving, a_request_whose_thread_cannot_start_goes_to_handle_error, .timeout = 120)
{
    int fds = base_fds();
    conc_server_opts o = CONC_SERVER_OPTS_INIT;
    o.stack_size = (size_t)1 << 47;
    conc_server *s = make(CONC_SERVER_THREADING, &o);
    atomic_store(&errors_seen, 0);
    atomic_store(&last_error, 0);

    /* handle_request: the error goes to handle_error, the connection is
     * closed, and the call says a request was taken */
    conc_socket *c;
    conc_sockaddr addr = address_of(s);
    cr_assert_eq(connect_to(&addr, &c), 0);
    int rc = conc_server_handle_request(s, GUARD);
    cr_assert_eq(rc, 0, "handle_request: %d (%s)", rc, conc_strerror(rc));
    cr_assert_eq(atomic_load(&errors_seen), 1);
    int err = atomic_load(&last_error);
    cr_assert(err == -EAGAIN || err == -ENOMEM, "handle_error saw %d (%s)", err, conc_strerror(err));
    char b;
    cr_assert_eq(conc_socket_recv(c, &b, 1, 0), 0, "the connection stays open");
    conc_socket_free(c);
    cr_assert_eq(conc_server_handle_request(s, 0), -EAGAIN, "none waits now");
    cr_assert_eq(atomic_load(&errors_seen), 1);

    /* serve_forever: each failure seen, the loop serves on */
    struct running r;
    start(&r, s, 0.5);
    for (int k = 0; k < 3; k++)
        cr_assert_neq(one_request(s), 0);
    cr_assert_eq(conc_server_shutdown_wait(s, GUARD), 0);
    cr_assert(joined(&r));
    cr_assert_eq(r.rc, 0, "serve_forever: %s", conc_strerror(r.rc));
    cr_assert_eq(atomic_load(&errors_seen), 4);
    conc_server_stats st;
    cr_assert_eq(conc_server_get_stats(s, &st), 0);
    cr_assert_eq(st.failed, 4);
    cr_assert_eq(st.finished, 0);
    conc_server_free(s);

    /* stack sizes no greenlet or thread can have are refused up front */
    conc_sockaddr any;
    cr_assert_eq(conc_sockaddr_inet(&any, AF_INET, "127.0.0.1", 0), 0);
    conc_server_opts bad = CONC_SERVER_OPTS_INIT;
    bad.model = CONC_SERVER_COROUTINE;
    bad.stack_size = CONC_CORO_STACK_MAX + 1;
    cr_assert_eq(conc_server_new(&s, SOCK_STREAM, &any, &once_handler, &bad), -EINVAL);
    bad.stack_size = 1024;
    cr_assert_eq(conc_server_new(&s, SOCK_STREAM, &any, &once_handler, &bad), -EINVAL);
    bad.model = CONC_SERVER_THREADING;
    cr_assert_eq(conc_server_new(&s, SOCK_STREAM, &any, &once_handler, &bad), -EINVAL);
    cr_assert_eq(count_fds(), fds);
}

/* ------------------------------------ children past the shutdown timeout */

/* FORKING handler, in the child: "T" takes SIGTERM (waited for with
 * sigtimedwait) as its cue to answer "TERM" and end well; "D" leaves it
 * blocked and would sleep past the guard.  Each says "in" once SIGTERM is
 * blocked. */
static int term_handle(conc_server_request *req)
{
    char what;
    if (conc_socket_recv(req->sock, &what, 1, 0) != 1)
        return -EPROTO;
    sigset_t term;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &term, NULL);
    int rc = conc_socket_sendall(req->sock, "in", 2, 0, NULL);
    if (rc < 0)
        return rc;
    if (what != 'T') {
        conc_sleep(GUARD);
        return 0;
    }
    struct timespec tick = { .tv_sec = 0, .tv_nsec = 10 * 1000 * 1000 };
    for (int i = 0; i < (int)(GUARD * 100); i++)
        if (sigtimedwait(&term, NULL, &tick) == SIGTERM)
            return conc_socket_sendall(req->sock, "TERM", 4, 0, NULL);
    return 0;
}

static const conc_server_handler term_handler = { .handle = term_handle };

/* Reads until the end of the stream into buf (NUL-ended); the bytes read. */
static size_t read_to_end(conc_socket *c, char *buf, size_t cap)
{
    size_t got = 0;
    while (got < cap - 1) {
        ssize_t n = conc_socket_recv(c, buf + got, cap - 1 - got, 0);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    buf[got] = 0;
    return got;
}

/* With shutdown_timeout, a FORKING child still serving gets SIGTERM (one
 * that heeds it ends its request well) and, when that does not end it,
 * SIGKILL a grace later: serve_forever returns, nothing is left behind. */
Test(server_serving, forking_children_get_sigterm_then_sigkill, .timeout = 120)
{
    int fds = base_fds();
    conc_sockaddr a;
    cr_assert_eq(conc_sockaddr_inet(&a, AF_INET, "127.0.0.1", 0), 0);
    conc_server_opts o = CONC_SERVER_OPTS_INIT;
    o.model = CONC_SERVER_FORKING;
    o.shutdown_timeout = 0.2;
    conc_server *s;
    cr_assert_eq(conc_server_new(&s, SOCK_STREAM, &a, &term_handler, &o), 0);
    struct running r;
    start(&r, s, 0.05);
    conc_sockaddr at = address_of(s);
    conc_socket *c[2];
    const char *what[2] = { "T", "D" };
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(connect_to(&at, &c[i]), 0);
        cr_assert_eq(conc_socket_sendall(c[i], what[i], 1, 0, NULL), 0);
        char in[3] = { 0 };
        cr_assert_eq(conc_socket_recv(c[i], in, 2, MSG_WAITALL), 2);
        cr_assert_str_eq(in, "in");
    }
    cr_assert_eq(conc_server_shutdown_wait(s, GUARD), 0);
    cr_assert(joined(&r), "serve_forever waits for a child that ignores SIGTERM");
    cr_assert_eq(r.rc, 0);
    char buf[16];
    read_to_end(c[0], buf, sizeof buf);
    cr_assert_str_eq(buf, "TERM", "the child heeding SIGTERM ended its request");
    cr_assert_eq(read_to_end(c[1], buf, sizeof buf), 0, "the deaf child was killed");
    conc_server_stats st;
    cr_assert_eq(conc_server_get_stats(s, &st), 0);
    cr_assert_eq(st.finished, 1);
    cr_assert_eq(st.failed, 1);
    for (int i = 0; i < 2; i++)
        conc_socket_free(c[i]);
    conc_server_free(s);
    no_children();
    cr_assert_eq(count_fds(), fds);
}
