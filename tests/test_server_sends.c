/*
 * test_server_sends.c - the coroutine model's sends, gathered for the end
 * of the hub's pass (src/hub.c, "gathered sends"): a handler that answers
 * with many small pieces, one too large to be gathered among them, then
 * closes, on several connections at once: every client gets every byte in
 * order, then EOF; a send lets the pass's other greenlets run before it
 * returns (one whose deadline has passed does not: it tries once, as
 * before); a client that resets while the send is pending makes it fail
 * with the kernel's error; a sender killed while its send is pending has
 * it made (it returns the bytes taken) and the kill comes at its next
 * blocking call; a shutdown by another greenlet comes after the bytes
 * gathered before it.  On both stack modes; every test checks that the
 * descriptor count is back to its start.
 *
 * Nothing waits a fixed time: the order of the greenlets in a pass is set
 * by who wakes whom (an event, a sleep of 0, which ends at the start of
 * the hub's next turn).
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "conc.h"
#include "support/server_test.h"

#define GUARD 20.0

/* ------------------------------------------------------------- serving */

struct running {
    conc_server *s;
    pthread_t t;
    int rc;
};

static void *serve_main(void *arg)
{
    struct running *r = arg;
    r->rc = conc_server_serve_forever(r->s, 0.5);
    return NULL;
}

/* A coroutine server on one hub with handler h, stacks of mode stack,
 * serving in a thread of its own. */
static void start(struct running *r, const conc_server_handler *h, int stack)
{
    conc_sockaddr a;
    cr_assert_eq(conc_sockaddr_inet(&a, AF_INET, "127.0.0.1", 0), 0);
    conc_server_opts o = CONC_SERVER_OPTS_INIT;
    o.model = CONC_SERVER_COROUTINE;
    o.workers = 1;
    o.request_queue_size = 64;
    o.stack = stack;
    memset(r, 0, sizeof *r);
    r->rc = 1;
    int rc = conc_server_new(&r->s, SOCK_STREAM, &a, h, &o);
    cr_assert_eq(rc, 0, "new: %s", conc_strerror(rc));
    cr_assert_eq(pthread_create(&r->t, NULL, serve_main, r), 0);
}

/* Stops the server and checks that `finished` requests ended well. */
static void stop(struct running *r, uint64_t finished)
{
    cr_assert_eq(conc_server_shutdown_wait(r->s, GUARD), 0);
    pthread_join(r->t, NULL);
    cr_assert_eq(r->rc, 0, "serve_forever: %s", conc_strerror(r->rc));
    conc_server_stats st;
    cr_assert_eq(conc_server_get_stats(r->s, &st), 0);
    cr_assert_eq(st.finished, finished, "%llu finished", (unsigned long long)st.finished);
    cr_assert_eq(st.failed, 0, "%llu failed", (unsigned long long)st.failed);
    conc_server_free(r->s);
}

static int dial(conc_server *s)
{
    conc_sockaddr a;
    cr_assert_eq(conc_server_address(s, &a), 0);
    int fd = socket(a.u.sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    struct timeval tv = { .tv_sec = (time_t)GUARD };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    cr_assert_eq(connect(fd, &a.u.sa, a.len), 0, "connect: %s", strerror(errno));
    return fd;
}

/* Reads fd to its end (EOF) into buf; returns the bytes read. */
static size_t read_to_eof(int fd, char *buf, size_t cap)
{
    size_t got = 0;
    for (;;) {
        cr_assert_lt(got, cap, "more bytes than were sent");
        ssize_t n = recv(fd, buf + got, cap - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        cr_assert_geq(n, 0, "recv: %s", strerror(errno));
        if (n == 0)
            return got;
        got += (size_t)n;
    }
}

/* --------------------------------------------- pieces in order, then EOF */

#define CLIENTS 12
#define PIECES 200
#define BIG_PIECE 20000             /* more than one gathered send takes */
#define ANSWER_MAX (PIECES * 200 + BIG_PIECE)

/* Piece i of the answer to request id: its length and bytes. */
static size_t piece(int id, int i, char *out)
{
    if (i == PIECES / 2) {
        for (size_t k = 0; k < BIG_PIECE; k++)
            out[k] = (char)('a' + (id + (int)k) % 26);
        return BIG_PIECE;
    }
    int n = snprintf(out, 64, "<%d.%d>", id, i);
    size_t len = (size_t)n + (size_t)(i * 7 % 120);
    for (size_t k = (size_t)n; k < len; k++)
        out[k] = (char)('A' + (id * 3 + i + (int)k) % 26);
    return len;
}

/* The whole answer to request id, as the client must read it. */
static size_t answer(int id, char *out)
{
    size_t len = 0;
    for (int i = 0; i < PIECES; i++)
        len += piece(id, i, out + len);
    return len;
}

/* Reads the request (its id as text), answers it piece by piece, plain
 * sends and sendall in turn, and ends (the server closes). */
static int pieces_handle(conc_server_request *req)
{
    char in[32];
    ssize_t n = conc_socket_recv(req->sock, in, sizeof in - 1, 0);
    if (n <= 0)
        return n < 0 ? (int)n : -EPROTO;
    in[n] = '\0';
    int id = atoi(in);
    static _Thread_local char buf[BIG_PIECE];    /* shared by the hub's handlers */
    for (int i = 0; i < PIECES; i++) {
        size_t len = piece(id, i, buf);
        if (i % 2) {
            int rc = conc_socket_sendall(req->sock, buf, len, 0, NULL);
            if (rc < 0)
                return rc;
            continue;
        }
        for (size_t off = 0; off < len;) {
            ssize_t m = conc_socket_send(req->sock, buf + off, len - off, 0);
            if (m <= 0)
                return m < 0 ? (int)m : -EIO;
            off += (size_t)m;
        }
    }
    return 0;
}

static void pieces_in_order(int stack)
{
    int fds = base_fds();
    struct running r;
    start(&r, &(conc_server_handler){ .handle = pieces_handle }, stack);
    int c[CLIENTS];
    for (int i = 0; i < CLIENTS; i++) {
        c[i] = dial(r.s);
        char req[16];
        int n = snprintf(req, sizeof req, "%d", i);
        cr_assert_eq(send(c[i], req, (size_t)n, MSG_NOSIGNAL), n);
    }
    static char want[ANSWER_MAX], got[ANSWER_MAX + 1];
    for (int i = 0; i < CLIENTS; i++) {
        size_t wn = answer(i, want);
        size_t gn = read_to_eof(c[i], got, sizeof got);
        cr_assert_eq(gn, wn, "client %d: %zu bytes, %zu sent", i, gn, wn);
        cr_assert_eq(memcmp(got, want, wn), 0, "client %d: the bytes differ", i);
        close(c[i]);
    }
    stop(&r, CLIENTS);
    cr_assert_eq(count_fds(), fds);
}

Test(server_sends, pieces_in_order_then_eof, .timeout = 60)
{
    pieces_in_order(CONC_STACK_OWN);
}

Test(server_sends, copied_stacks_pieces_in_order_then_eof, .timeout = 60)
{
    pieces_in_order(CONC_STACK_COPIED);
}

/* ------------------------------------------- the pass runs, then the sends */

/* One greenlet's work, started by the handler. */
struct side {
    conc_event go;              /* set by the side when it runs */
    conc_greenlet *handler;
    _Atomic int fd;             /* the client's end (reset_act) */
#define NO_FD_YET (-2)
    int server_fd;
    _Atomic int ran;
};

static struct side side;

static _Atomic ssize_t sent;    /* what the handler's send returned */
static _Atomic int after;       /* the next call's result */
static _Atomic int ran_before_return;

static void *mark_main(void *arg)
{
    struct side *sd = arg;
    atomic_store(&sd->ran, 1);
    return NULL;
}

static _Atomic ssize_t tried;   /* what a send that may not wait returned */
static _Atomic int ran_before_try;

/* Spawns a greenlet, then sends: a send whose deadline has passed tries
 * once and returns before anything else runs, as always; a send that may
 * wait returns once the pass's other greenlets (the new one among them)
 * have run. */
static int order_handle(conc_server_request *req)
{
    conc_greenlet *g;
    int rc = conc_greenlet_spawn(&g, mark_main, &side, NULL);
    if (rc < 0)
        return rc;
    atomic_store(&tried, conc_socket_send_until(req->sock, "o", 1, 0, 0));
    atomic_store(&ran_before_try, atomic_load(&side.ran));
    atomic_store(&sent, conc_socket_send(req->sock, "k", 1, 0));
    atomic_store(&ran_before_return, atomic_load(&side.ran));
    conc_greenlet_join(g, GUARD);
    conc_greenlet_free(g);
    return 0;
}

static void order_test(int stack)
{
    int fds = base_fds();
    memset(&side, 0, sizeof side);
    struct running r;
    start(&r, &(conc_server_handler){ .handle = order_handle }, stack);
    int c = dial(r.s);
    char buf[8];
    size_t n = read_to_eof(c, buf, sizeof buf);
    close(c);
    stop(&r, 1);
    cr_assert_eq(n, 2);
    cr_assert_eq(memcmp(buf, "ok", 2), 0);
    cr_assert_eq(atomic_load(&tried), 1);
    cr_assert_eq(atomic_load(&ran_before_try), 0, "a send that may not wait let others run");
    cr_assert_eq(atomic_load(&sent), 1);
    cr_assert_eq(atomic_load(&ran_before_return), 1,
                 "the send returned before the pass's other greenlet ran");
    cr_assert_eq(count_fds(), fds);
}

Test(server_sends, a_send_returns_after_the_pass, .timeout = 60)
{
    order_test(CONC_STACK_OWN);
}

Test(server_sends, copied_stacks_a_send_returns_after_the_pass, .timeout = 60)
{
    order_test(CONC_STACK_COPIED);
}

/*
 * The pass in which the handler's send is pending, with the side greenlet
 * after it: the side sets the event the handler waits on (the handler is
 * ready at the next turn), then sleeps 0 (ready at the start of the next
 * turn, behind the handler), then does its part.  The handler sends "hello"
 * and keeps the result, then tries a recv and keeps that.
 */
static void *(*side_act)(struct side *);

static void *side_main(void *arg)
{
    struct side *sd = arg;
    conc_event_set(&sd->go);
    conc_sleep(0);
    return side_act(sd);
}

static int pending_handle(conc_server_request *req)
{
    side.handler = conc_greenlet_current();
    side.server_fd = conc_socket_fd(req->sock);
    conc_greenlet *g;
    int rc = conc_greenlet_spawn(&g, side_main, &side, NULL);
    if (rc < 0)
        return rc;
    rc = conc_event_wait(&side.go, GUARD);
    if (rc == 0) {
        atomic_store(&sent, conc_socket_send(req->sock, "hello", 5, 0));
        char c;
        atomic_store(&after, (int)conc_socket_recv(req->sock, &c, 1, 0));
    }
    conc_greenlet_join(g, GUARD);
    conc_greenlet_free(g);
    return rc;
}

/* The client resets the connection (SO_LINGER 0, close) and the side waits
 * until the server's socket has taken the reset. */
static void *reset_act(struct side *sd)
{
    struct linger lg = { .l_onoff = 1, .l_linger = 0 };
    int64_t end = conc_now() + (int64_t)(GUARD * 1e9);
    while (atomic_load(&sd->fd) == NO_FD_YET && conc_now() < end)
        sched_yield();          /* the test stores it once connected */
    int fd = atomic_exchange(&sd->fd, -1);
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
    for (;;) {
        struct tcp_info ti;
        socklen_t len = sizeof ti;
        memset(&ti, 0, sizeof ti);
        if (getsockopt(sd->server_fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0 ||
            ti.tcpi_state == TCP_CLOSE || conc_now() > end)
            break;
        sched_yield();
    }
    atomic_store(&sd->ran, 1);
    return NULL;
}

static void reset_test(int stack)
{
    int fds = base_fds();
    memset(&side, 0, sizeof side);
    side_act = reset_act;
    atomic_store(&side.fd, NO_FD_YET);
    atomic_store(&sent, 0);
    struct running r;
    start(&r, &(conc_server_handler){ .handle = pending_handle }, stack);
    atomic_store(&side.fd, dial(r.s));
    int64_t end = conc_now() + (int64_t)(GUARD * 1e9);
    while (!atomic_load(&sent)) {       /* served before the stop */
        cr_assert_lt(conc_now(), end, "the handler never sent");
        conc_sleep(0.001);
    }
    stop(&r, 1);
    ssize_t n = atomic_load(&sent);
    cr_assert(n == -ECONNRESET || n == -EPIPE, "the send gave %zd (%s)", n,
              conc_strerror((int)n));
    cr_assert_eq(atomic_load(&side.fd), -1);
    cr_assert_eq(count_fds(), fds);
}

Test(server_sends, a_reset_while_the_send_is_pending_fails_it, .timeout = 60)
{
    reset_test(CONC_STACK_OWN);
}

Test(server_sends, copied_stacks_a_reset_while_the_send_is_pending_fails_it, .timeout = 60)
{
    reset_test(CONC_STACK_COPIED);
}

/* The side kills the handler while its send is pending. */
static void *kill_act(struct side *sd)
{
    atomic_store(&sd->ran, conc_greenlet_kill(sd->handler) == 0);
    return NULL;
}

static void kill_test(int stack)
{
    int fds = base_fds();
    memset(&side, 0, sizeof side);
    side_act = kill_act;
    atomic_store(&sent, 0);
    atomic_store(&after, 0);
    struct running r;
    start(&r, &(conc_server_handler){ .handle = pending_handle }, stack);
    int c = dial(r.s);
    char buf[16];
    size_t n = read_to_eof(c, buf, sizeof buf);
    close(c);
    stop(&r, 1);
    cr_assert_eq(atomic_load(&side.ran), 1);
    cr_assert_eq(atomic_load(&sent), 5, "the killed send gave %zd", atomic_load(&sent));
    cr_assert_eq(atomic_load(&after), -ECANCELED, "the next call gave %d",
                 atomic_load(&after));
    cr_assert_eq(n, 5);
    cr_assert_eq(memcmp(buf, "hello", 5), 0);
    cr_assert_eq(count_fds(), fds);
}

Test(server_sends, a_kill_while_the_send_is_pending_comes_after_it, .timeout = 60)
{
    kill_test(CONC_STACK_OWN);
}

Test(server_sends, copied_stacks_a_kill_while_the_send_is_pending_comes_after_it,
     .timeout = 60)
{
    kill_test(CONC_STACK_COPIED);
}

/* The side shuts the connection's sending half down while the handler's
 * send is pending: the bytes go first, then the EOF. */
static conc_socket *shut_sock;

static void *shut_act(struct side *sd)
{
    atomic_store(&sd->ran, conc_socket_shutdown(shut_sock, SHUT_WR) == 0);
    return NULL;
}

static int shut_handle(conc_server_request *req)
{
    shut_sock = req->sock;
    return pending_handle(req);
}

static void shutdown_test(int stack)
{
    int fds = base_fds();
    memset(&side, 0, sizeof side);
    side_act = shut_act;
    atomic_store(&sent, 0);
    atomic_store(&after, 1);
    struct running r;
    start(&r, &(conc_server_handler){ .handle = shut_handle }, stack);
    int c = dial(r.s);
    char buf[16];
    size_t n = read_to_eof(c, buf, sizeof buf);
    cr_assert_eq(send(c, "x", 1, MSG_NOSIGNAL), 1);     /* the handler's recv */
    close(c);
    stop(&r, 1);
    cr_assert_eq(atomic_load(&side.ran), 1);
    cr_assert_eq(atomic_load(&sent), 5, "the send gave %zd", atomic_load(&sent));
    cr_assert_eq(atomic_load(&after), 1);
    cr_assert_eq(n, 5);
    cr_assert_eq(memcmp(buf, "hello", 5), 0);
    cr_assert_eq(count_fds(), fds);
}

Test(server_sends, a_shutdown_comes_after_the_pending_send, .timeout = 60)
{
    shutdown_test(CONC_STACK_OWN);
}

Test(server_sends, copied_stacks_a_shutdown_comes_after_the_pending_send, .timeout = 60)
{
    shutdown_test(CONC_STACK_COPIED);
}
