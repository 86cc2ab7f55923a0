/*
 * test_socket.c - conc/socket.h: every call's errors, timeouts (the
 * socket's and the _until forms), EINTR retried with the time left, no
 * SIGPIPE, partial reads and writes (1 MB messages, pipelined requests), a
 * peer that resets, create_connection over several addresses,
 * create_server's options, the resolver's CONC_EAI_* codes, descriptor
 * passing, sendfile and its fallback, sockets in conc_wait, and no
 * descriptor left behind.  (Calls from greenlets: test_hub_blocking.c.)
 *
 * Nothing waits a fixed time: a peer that must be blocked first is waited
 * for through its state in /proc (support/task_state.h).
 */
#include <criterion/criterion.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <netinet/tcp.h>

#include "conc.h"
#include "support/fd_count.h"
#include "support/task_state.h"

#define GUARD 20.0

/* A listening TCP socket on 127.0.0.1 and a port the kernel picked. */
static conc_socket *server(int *port)
{
    conc_socket *l = NULL;
    cr_assert_eq(conc_socket_create_server(&l, "127.0.0.1", 0, NULL), 0);
    conc_sockaddr a;
    cr_assert_eq(conc_socket_getsockname(l, &a), 0);
    *port = conc_sockaddr_port(&a);
    cr_assert_gt(*port, 0);
    return l;
}

/* A connected TCP pair: *c the client, *s the server's end. */
static void tcp_pair(conc_socket **c, conc_socket **s)
{
    int port;
    conc_socket *l = server(&port);
    cr_assert_eq(conc_socket_create_connection(c, "127.0.0.1", port, GUARD, NULL), 0);
    cr_assert_eq(conc_socket_accept(l, s, NULL), 0);
    conc_socket_free(l);
}

/* ------------------------------------------------------------- errors */

Test(socket, bad_arguments)
{
    conc_socket *s = NULL;
    cr_expect_eq(conc_socket_new(NULL, AF_INET, SOCK_STREAM, 0), -EINVAL);
    cr_expect_eq(conc_socket_new(&s, AF_INET, 0, 0), -EINVAL);
    cr_expect_eq(conc_socket_new(&s, AF_INET, SOCK_STREAM | 0x100000, 0), -EINVAL);
    cr_expect_eq(conc_socket_new(&s, 12345, SOCK_STREAM, 0), -EAFNOSUPPORT);
    cr_expect_eq(conc_socket_new(&s, AF_INET, SOCK_STREAM, IPPROTO_UDP), -EPROTONOSUPPORT);
    cr_expect_null(s);
    cr_expect_eq(conc_socket_from_fd(&s, -1), -EINVAL);
    cr_expect_eq(conc_socket_from_fd(NULL, 0), -EINVAL);
    int p[2];
    cr_assert_eq(pipe(p), 0);
    cr_expect_eq(conc_socket_from_fd(&s, p[0]), -ENOTSOCK);
    cr_expect_eq(conc_socket_attach(&s, p[0]), -ENOTSOCK);
    close(p[0]);
    close(p[1]);
    cr_expect_eq(conc_socket_from_fd(&s, p[0]), -EBADF);
    cr_expect_null(s);

    cr_expect_eq(conc_socket_fd(NULL), -EINVAL);
    cr_expect_eq(conc_socket_family(NULL), 0);
    cr_expect(conc_socket_closed(NULL));
    cr_expect_not(conc_socket_blocking(NULL));
    cr_expect_eq(conc_socket_timeout(NULL), CONC_FOREVER);
    cr_expect_eq(conc_socket_close(NULL), -EINVAL);
    conc_socket_free(NULL);
    cr_expect_eq(conc_socket_recv(NULL, p, 1, 0), -EINVAL);
    cr_expect_eq(conc_socket_send(NULL, p, 1, 0), -EINVAL);
    cr_expect_eq(conc_socket_sendall(NULL, p, 1, 0, NULL), -EINVAL);
    cr_expect_eq(conc_socket_accept(NULL, &s, NULL), -EINVAL);
    cr_expect_eq(conc_socket_connect(NULL, NULL), -EINVAL);
    cr_expect_eq(conc_socket_set_default_timeout(NAN), -EINVAL);
    cr_expect_eq(conc_socket_set_default_timeout(-2), -EINVAL);

    cr_assert_eq(conc_socket_new(&s, AF_INET, SOCK_STREAM, 0), 0);
    cr_expect_eq(conc_socket_family(s), AF_INET);
    cr_expect_eq(conc_socket_type(s), SOCK_STREAM);
    cr_expect_eq(conc_socket_proto(s), IPPROTO_TCP);
    int fd = conc_socket_fd(s);
    cr_expect_geq(fd, 0);
    cr_expect(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    cr_expect(fcntl(fd, F_GETFL) & O_NONBLOCK);
    char b[4];
    cr_expect_eq(conc_socket_set_timeout(s, NAN), -EINVAL);
    cr_expect_eq(conc_socket_set_timeout(s, -0.5), -EINVAL);
    cr_expect_eq(conc_socket_recv(s, NULL, 4, 0), -EINVAL);
    cr_expect_eq(conc_socket_recv(s, b, 4, MSG_DONTWAIT), -EINVAL);
    cr_expect_eq(conc_socket_send(s, b, 4, MSG_DONTWAIT), -EINVAL);
    cr_expect_eq(conc_socket_recv(s, b, 4, 0), -ENOTCONN);
    cr_expect_eq(conc_socket_send(s, b, 4, 0), -EPIPE);
    cr_expect_eq(conc_socket_shutdown(s, 7), -EINVAL);
    cr_expect_eq(conc_socket_shutdown(s, SHUT_RDWR), -ENOTCONN);
    cr_expect_eq(conc_socket_accept(s, &(conc_socket *){ NULL }, NULL), -EINVAL);
    conc_sockaddr a = { .len = 0 };
    cr_expect_eq(conc_socket_bind(s, &a), -EINVAL);
    cr_expect_eq(conc_socket_getpeername(s, &a), -ENOTCONN);
    cr_expect_eq(conc_socket_setsockopt_int(s, SOL_SOCKET, 99999, 1), -ENOPROTOOPT);
    int v = -1;
    cr_expect_eq(conc_socket_getsockopt_int(s, SOL_SOCKET, SO_TYPE, &v), 0);
    cr_expect_eq(v, SOCK_STREAM);
    cr_expect_eq(conc_socket_getsockopt_int(s, SOL_SOCKET, SO_TYPE, NULL), -EINVAL);
    cr_expect_eq(conc_socket_sendfile(s, 0, -2, 0, NULL), -EINVAL);

    /* Closed: -EBADF everywhere, attributes kept, closing again is fine. */
    cr_expect_eq(conc_socket_close(s), 0);
    cr_expect_eq(conc_socket_close(s), 0);
    cr_expect(conc_socket_closed(s));
    cr_expect_eq(conc_socket_fd(s), -EBADF);
    cr_expect_eq(conc_socket_family(s), AF_INET);
    cr_expect_eq(conc_socket_recv(s, b, 4, 0), -EBADF);
    cr_expect_eq(conc_socket_send(s, b, 4, 0), -EBADF);
    cr_expect_eq(conc_socket_listen(s, 1), -EBADF);
    cr_expect_eq(conc_socket_detach(s), -EBADF);
    cr_expect_eq(conc_socket_set_timeout(s, 1), -EBADF);
    cr_expect_eq(conc_socket_dup(s, &(conc_socket *){ NULL }), -EBADF);
    conc_socket_free(s);
}

Test(socket, timeouts_and_blocking_mode)
{
    cr_assert_eq(conc_socket_default_timeout(), CONC_FOREVER);
    conc_socket *a, *b;
    cr_assert_eq(conc_socket_pair(&a, &b, 0, 0, 0), 0);
    cr_expect_eq(conc_socket_timeout(a), CONC_FOREVER);
    cr_expect(conc_socket_blocking(a));
    cr_assert_eq(conc_socket_set_blocking(a, false), 0);
    cr_expect_eq(conc_socket_timeout(a), 0);
    cr_expect_not(conc_socket_blocking(a));
    char buf[8];
    cr_expect_eq(conc_socket_recv(a, buf, sizeof buf, 0), -EAGAIN);
    cr_expect_eq(conc_socket_recv_until(a, buf, sizeof buf, 0, 0), -ETIMEDOUT);
    cr_expect_eq(conc_socket_recv_until(a, buf, sizeof buf, 0, conc_now() + 10000000),
                 -ETIMEDOUT);
    cr_assert_eq(conc_socket_set_timeout(a, 0.02), 0);
    cr_expect_eq(conc_socket_timeout(a), 0.02);
    cr_expect(conc_socket_blocking(a));
    cr_expect_eq(conc_socket_recv(a, buf, sizeof buf, 0), -ETIMEDOUT);
    cr_assert_eq(conc_socket_set_timeout(a, INFINITY), 0);
    cr_expect_eq(conc_socket_timeout(a), CONC_FOREVER);

    /* A ready socket wins over a passed deadline. */
    cr_assert_eq(conc_socket_send(b, "hi", 2, 0), 2);
    cr_expect_eq(conc_socket_recv_until(a, buf, sizeof buf, 0, 0), 2);

    /* The default timeout goes to sockets made afterwards. */
    cr_assert_eq(conc_socket_set_default_timeout(0.5), 0);
    conc_socket *c, *d;
    cr_assert_eq(conc_socket_pair(&c, &d, AF_UNIX, SOCK_DGRAM, 0), 0);
    cr_expect_eq(conc_socket_timeout(c), 0.5);
    cr_expect_eq(conc_socket_timeout(a), CONC_FOREVER);
    cr_assert_eq(conc_socket_set_default_timeout(CONC_FOREVER), 0);
    conc_socket *e;
    cr_assert_eq(conc_socket_new(&e, AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0), 0);
    cr_expect_eq(conc_socket_timeout(e), 0);
    cr_expect_eq(conc_socket_type(e), SOCK_DGRAM);

    /* Accept and sendall on a full socket time out too. */
    int port;
    conc_socket *l = server(&port), *x = NULL;
    cr_assert_eq(conc_socket_set_timeout(l, 0), 0);
    cr_expect_eq(conc_socket_accept(l, &x, NULL), -EAGAIN);
    cr_expect_eq(conc_socket_accept_until(l, &x, NULL, conc_now() + 1000000), -ETIMEDOUT);
    cr_expect_null(x);
    static char big[1 << 20];
    size_t sent = 12345;
    cr_assert_eq(conc_socket_set_timeout(c, 0), 0);
    cr_assert_eq(conc_socket_set_timeout(b, 0.02), 0);
    int r = conc_socket_sendall(b, big, sizeof big, 0, &sent);
    cr_expect_eq(r, -ETIMEDOUT);
    cr_expect_gt(sent, 0);
    cr_expect_lt(sent, sizeof big);
    /* What was sent is what arrives. */
    size_t got = 0;
    ssize_t n;
    cr_assert_eq(conc_socket_set_timeout(a, 0), 0);
    while ((n = conc_socket_recv(a, big, sizeof big, 0)) > 0)
        got += (size_t)n;
    cr_expect_eq(n, -EAGAIN);
    cr_expect_eq(got, sent);
    conc_socket_free(a);
    conc_socket_free(b);
    conc_socket_free(c);
    conc_socket_free(d);
    conc_socket_free(e);
    conc_socket_free(l);
}

/* ------------------------------------------------------------- EINTR */

static int hits;

static void on_usr1(int sig)
{
    (void)sig;
    __atomic_fetch_add(&hits, 1, __ATOMIC_RELAXED);
}

static int hits_now(void)
{
    return __atomic_load_n(&hits, __ATOMIC_RELAXED);
}

struct reader {
    conc_socket *s;
    double timeout;
    ssize_t rc;
    char buf[16];
};

static void *reader_main(void *arg)
{
    struct reader *r = arg;
    conc_socket_set_timeout(r->s, r->timeout);
    r->rc = conc_socket_recv(r->s, r->buf, sizeof r->buf, 0);
    return NULL;
}

Test(socket, eintr_is_retried, .timeout = 60)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;            /* no SA_RESTART */
    sigemptyset(&sa.sa_mask);
    cr_assert_eq(sigaction(SIGUSR1, &sa, NULL), 0);
    conc_socket *a, *b;
    cr_assert_eq(conc_socket_pair(&a, &b, 0, 0, 0), 0);
    struct reader r = { .s = a, .timeout = CONC_FOREVER };
    pid_t tid;
    pthread_t th = spawn_tid(reader_main, &r, &tid);
    for (int i = 0; i < 5; i++) {
        wait_thread_blocked(tid, GUARD);
        int before = hits_now();
        pthread_kill(th, SIGUSR1);
        for (int k = 0; hits_now() == before && k < 20000; k++)
            usleep(100);
        cr_assert_gt(hits_now(), before);
    }
    wait_thread_blocked(tid, GUARD);
    cr_assert_eq(conc_socket_send(b, "data", 4, 0), 4);
    pthread_join(th, NULL);
    cr_expect_eq(r.rc, 4, "recv gave %zd", r.rc);
    cr_expect_eq(memcmp(r.buf, "data", 4), 0);

    /* With a timeout: signals do not end the wait early, it still ends in
     * -ETIMEDOUT (never -EINTR). */
    struct reader t = { .s = a, .timeout = 0.3 };
    th = spawn_tid(reader_main, &t, &tid);
    for (int i = 0; i < 3; i++) {
        if (!await_task_blocked(getpid(), tid, GUARD))
            break;
        pthread_kill(th, SIGUSR1);
    }
    pthread_join(th, NULL);
    cr_expect_eq(t.rc, -ETIMEDOUT, "recv gave %zd", t.rc);
    conc_socket_free(a);
    conc_socket_free(b);
}

/* ---------------------------------------------------- data, large and small */

Test(socket, tcp_round_trip_and_addresses)
{
    int before = count_fds();
    conc_socket *c, *s;
    tcp_pair(&c, &s);
    conc_sockaddr la, pa;
    cr_assert_eq(conc_socket_getsockname(c, &la), 0);
    cr_assert_eq(conc_socket_getpeername(s, &pa), 0);
    char t1[CONC_SOCKADDR_STRLEN], t2[CONC_SOCKADDR_STRLEN];
    cr_assert_gt(conc_sockaddr_str(&la, t1, sizeof t1), 0);
    cr_assert_gt(conc_sockaddr_str(&pa, t2, sizeof t2), 0);
    cr_expect_str_eq(t1, t2);
    cr_expect_eq(strncmp(t1, "127.0.0.1:", 10), 0, "%s", t1);
    cr_expect_eq(conc_socket_family(s), AF_INET);   /* the listener's */
    cr_expect_eq(conc_socket_type(s), SOCK_STREAM);
    cr_expect_eq(conc_socket_proto(s), IPPROTO_TCP);
    cr_expect_eq(conc_socket_timeout(c), GUARD);   /* create_connection's */
    cr_expect_eq(conc_socket_timeout(s), CONC_FOREVER);
    cr_assert_eq(conc_socket_sendall(c, "hello", 5, 0, NULL), 0);
    char buf[16];
    cr_assert_eq(conc_socket_recv(s, buf, 5, MSG_WAITALL), 5);
    cr_expect_eq(memcmp(buf, "hello", 5), 0);
    cr_assert_eq(conc_socket_shutdown(c, SHUT_WR), 0);
    cr_expect_eq(conc_socket_recv(s, buf, sizeof buf, 0), 0);     /* end of stream */
    conc_socket_free(c);
    conc_socket_free(s);
    cr_expect_eq(count_fds(), before);
}

struct mb {
    conc_socket *s;
    unsigned char *buf;
    size_t len;
    int rc;
};

static void *send_all_main(void *arg)
{
    struct mb *m = arg;
    size_t sent = 0;
    m->rc = conc_socket_sendall(m->s, m->buf, m->len, 0, &sent);
    if (m->rc == 0 && sent != m->len)
        m->rc = -1000;
    return NULL;
}

Test(socket, one_megabyte_both_ways, .timeout = 60)
{
    size_t len = 1 << 20;
    unsigned char *out = malloc(len), *in = malloc(len);
    for (size_t i = 0; i < len; i++)
        out[i] = (unsigned char)(i * 131 + (i >> 9));
    conc_socket *c, *s;
    tcp_pair(&c, &s);
    /* A small receive buffer makes the writes partial. */
    cr_assert_eq(conc_socket_setsockopt_int(s, SOL_SOCKET, SO_RCVBUF, 4096), 0);
    struct mb m = { .s = c, .buf = out, .len = len };
    pthread_t th;
    pthread_create(&th, NULL, send_all_main, &m);
    /* Reads of odd sizes: every byte in order, none lost or doubled. */
    size_t got = 0, reads = 0;
    while (got < len) {
        size_t want = 1 + (reads * 7919) % 65536;
        if (want > len - got)
            want = len - got;
        ssize_t n = conc_socket_recv(s, in + got, want, 0);
        cr_assert_gt(n, 0, "recv gave %zd at %zu", n, got);
        got += (size_t)n;
        reads++;
    }
    pthread_join(th, NULL);
    cr_expect_eq(m.rc, 0);
    cr_expect_eq(memcmp(in, out, len), 0);
    /* And back with MSG_WAITALL. */
    m = (struct mb){ .s = s, .buf = out, .len = len };
    pthread_create(&th, NULL, send_all_main, &m);
    memset(in, 0, len);
    cr_expect_eq(conc_socket_recv(c, in, len, MSG_WAITALL), (ssize_t)len);
    pthread_join(th, NULL);
    cr_expect_eq(m.rc, 0);
    cr_expect_eq(memcmp(in, out, len), 0);
    conc_socket_free(c);
    conc_socket_free(s);
    free(out);
    free(in);
}

/* Requests "NNNN\n" sent in one go, answered one by one: each answer comes
 * back complete and in order, whatever way the stream was cut. */
static void *pipeline_server(void *arg)
{
    conc_socket *s = arg;
    char buf[64], line[16];
    size_t ll = 0;
    ssize_t n;
    while ((n = conc_socket_recv(s, buf, 1 + (size_t)(rand() % 63), 0)) > 0) {
        for (ssize_t i = 0; i < n; i++) {
            line[ll++] = buf[i];
            if (buf[i] == '\n') {
                char reply[32];
                int k = snprintf(reply, sizeof reply, "ok %.*s", (int)ll, line);
                if (conc_socket_sendall(s, reply, (size_t)k, 0, NULL) != 0)
                    return (void *)1;
                ll = 0;
            }
        }
    }
    conc_socket_shutdown(s, SHUT_WR);
    return n == 0 ? NULL : (void *)2;
}

Test(socket, pipelined_requests, .timeout = 60)
{
    conc_socket *c, *s;
    tcp_pair(&c, &s);
    pthread_t th;
    pthread_create(&th, NULL, pipeline_server, s);
    enum { N = 2000 };
    static char req[N * 5];
    for (int i = 0; i < N; i++) {
        char one[8];
        snprintf(one, sizeof one, "%04d\n", i);
        memcpy(req + i * 5, one, 5);
    }
    cr_assert_eq(conc_socket_sendall(c, req, sizeof req, 0, NULL), 0);
    cr_assert_eq(conc_socket_shutdown(c, SHUT_WR), 0);
    static char resp[N * 8 + 1];
    ssize_t n = conc_socket_recv(c, resp, sizeof resp, MSG_WAITALL);
    cr_assert_eq(n, N * 8);
    for (int i = 0; i < N; i++) {
        char want[9];
        snprintf(want, sizeof want, "ok %04d\n", i);
        cr_assert_eq(memcmp(resp + i * 8, want, 8), 0, "answer %d", i);
    }
    char x;
    cr_expect_eq(conc_socket_recv(c, &x, 1, 0), 0);
    void *rv;
    pthread_join(th, &rv);
    cr_expect_null(rv);
    conc_socket_free(c);
    conc_socket_free(s);
}

Test(socket, peer_reset_mid_request_and_no_sigpipe, .timeout = 30)
{
    /* SIGPIPE keeps its default action: a raised one would kill us. */
    signal(SIGPIPE, SIG_DFL);
    conc_socket *c, *s;
    tcp_pair(&c, &s);
    cr_assert_eq(conc_socket_sendall(c, "GET /half", 9, 0, NULL), 0);
    struct linger lg = { .l_onoff = 1, .l_linger = 0 };
    cr_assert_eq(conc_socket_setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
    conc_socket_free(c);                /* RST */
    char buf[64];
    ssize_t n;
    size_t got = 0;
    while ((n = conc_socket_recv(s, buf, sizeof buf, 0)) > 0)
        got += (size_t)n;
    cr_expect_eq(n, -ECONNRESET, "recv gave %zd", n);
    cr_expect_leq(got, 9);
    /* Sending to the reset peer: an error, never a signal. */
    size_t sent;
    int r;
    do
        r = conc_socket_sendall(s, buf, sizeof buf, 0, &sent);
    while (r == 0);
    cr_expect(r == -EPIPE || r == -ECONNRESET, "sendall gave %d", r);
    conc_socket_free(s);

    /* A peer that closed: -EPIPE from send, still no signal. */
    conc_socket *a, *b;
    cr_assert_eq(conc_socket_pair(&a, &b, 0, 0, 0), 0);
    conc_socket_free(b);
    cr_expect_eq(conc_socket_send(a, "x", 1, 0), -EPIPE);
    cr_expect_eq(conc_socket_sendall(a, "x", 1, 0, NULL), -EPIPE);
    struct msghdr m = { 0 };
    struct iovec iov = { .iov_base = "x", .iov_len = 1 };
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    cr_expect_eq(conc_socket_sendmsg(a, &m, 0), -EPIPE);
    conc_socket_free(a);
}

/* ------------------------------------------------------ connect, servers */

Test(socket, connect_errors_and_connect_ex)
{
    int port;
    conc_socket *l = server(&port);
    conc_socket_free(l);                /* nobody listens there now */
    conc_socket *c = NULL;
    int before = count_fds();
    cr_expect_eq(conc_socket_create_connection(&c, "127.0.0.1", port, GUARD, NULL),
                 -ECONNREFUSED);
    cr_expect_null(c);
    cr_expect_eq(count_fds(), before);
    cr_expect_eq(conc_socket_create_connection(&c, "127.0.0.1", 70000, GUARD, NULL), -EINVAL);
    cr_expect_eq(conc_socket_create_connection(NULL, "127.0.0.1", 1, GUARD, NULL), -EINVAL);
    cr_expect_eq(conc_socket_create_connection(&c, "127.0.0.1", 1, NAN, NULL), -EINVAL);
    cr_assert_eq(conc_socket_new(&c, AF_INET, SOCK_STREAM, 0), 0);
    conc_sockaddr a;
    cr_assert_eq(conc_sockaddr_inet(&a, AF_INET, "127.0.0.1", port), 0);
    int ex = -conc_socket_connect(c, &a);        /* connect_ex */
    cr_expect_eq(ex, ECONNREFUSED);
    conc_socket_free(c);
    /* Non-blocking connect: -EAGAIN while in progress, then -EISCONN. */
    l = server(&port);
    cr_assert_eq(conc_socket_new(&c, AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), 0);
    cr_assert_eq(conc_sockaddr_inet(&a, AF_INET, "127.0.0.1", port), 0);
    int r = conc_socket_connect(c, &a);
    cr_assert(r == 0 || r == -EAGAIN, "%d", r);
    struct pollfd pw = { .fd = conc_socket_fd(c), .events = POLLOUT };
    cr_assert_eq(conc_selector_poll_fds(&pw, 1, GUARD), 1);
    r = conc_socket_connect(c, &a);
    cr_expect(r == 0 || r == -EISCONN, "%d", r);
    cr_expect_eq(conc_socket_connect(c, &a), -EISCONN);
    conc_socket_free(c);
    conc_socket_free(l);
    /* A Unix path that is not there. */
    cr_assert_eq(conc_socket_new(&c, AF_UNIX, SOCK_STREAM, 0), 0);
    cr_assert_eq(conc_sockaddr_unix(&a, "/nonexistent/conc.sock", 0), 0);
    cr_expect_eq(conc_socket_connect(c, &a), -ENOENT);
    cr_expect_eq(conc_socket_connect(c, NULL), -EINVAL);
    conc_socket_free(c);
}

Test(socket, create_connection_tries_every_address)
{
    /* No host: the loopback addresses, usually ::1 then 127.0.0.1.  The
     * server listens on the second family only, so the first attempt is
     * refused and the call goes on to the next address. */
    conc_addrinfo *ai = NULL;
    int n = conc_socket_getaddrinfo(NULL, "80", 0, SOCK_STREAM, 0, 0, &ai);
    cr_assert_gt(n, 0, "%s", conc_strerror(n));
    int first = ai[0].family, second = 0;
    for (int i = 1; i < n && !second; i++)
        if (ai[i].family != first)
            second = ai[i].family;
    free(ai);
    int port;
    conc_socket *l, *c, *s;
    if (second) {
        conc_socket_server_opts so = CONC_SOCKET_SERVER_OPTS_INIT;
        so.family = second;
        cr_assert_eq(conc_socket_create_server(&l, second == AF_INET ? "127.0.0.1" : "::1", 0,
                                               &so), 0);
        conc_sockaddr la;
        cr_assert_eq(conc_socket_getsockname(l, &la), 0);
        port = conc_sockaddr_port(&la);
        cr_assert_eq(conc_socket_create_connection(&c, NULL, port, GUARD, NULL), 0);
        cr_expect_eq(conc_socket_family(c), second);
        cr_assert_eq(conc_socket_accept(l, &s, NULL), 0);
        conc_socket_free(c);
        conc_socket_free(s);
        conc_socket_free(l);
        /* Nobody listens: the first address's error. */
        cr_expect_eq(conc_socket_create_connection(&c, NULL, port, GUARD, NULL), -ECONNREFUSED);
    } else {
        cr_log_warn("one loopback family only: the fallback is not exercised");
    }

    l = server(&port);
    cr_assert_eq(conc_socket_create_connection(&c, "localhost", port, GUARD, NULL), 0);
    cr_assert_eq(conc_socket_accept(l, &s, NULL), 0);
    cr_expect_eq(conc_socket_family(c), AF_INET);
    conc_socket_free(c);
    conc_socket_free(s);
    /* A source address. */
    conc_sockaddr src;
    cr_assert_eq(conc_sockaddr_inet(&src, AF_INET, "127.0.0.1", 0), 0);
    conc_socket_connect_opts o = CONC_SOCKET_CONNECT_OPTS_INIT;
    o.source = &src;
    o.family = AF_INET;
    cr_assert_eq(conc_socket_create_connection_until(&c, "127.0.0.1", port, CONC_NO_DEADLINE, &o),
                 0);
    cr_expect_eq(conc_socket_timeout(c), CONC_FOREVER);
    conc_socket_free(c);
    o.family = AF_UNIX;
    cr_expect_eq(conc_socket_create_connection(&c, "127.0.0.1", port, GUARD, &o), -EINVAL);
    conc_socket_free(l);
}

Test(socket, create_server_options)
{
    conc_socket *a, *b;
    conc_socket_server_opts o = CONC_SOCKET_SERVER_OPTS_INIT;
    o.reuse_port = true;
    o.backlog = 1024;
    cr_assert_eq(conc_socket_create_server(&a, "127.0.0.1", 0, &o), 0);
    int v = 0;
    cr_expect_eq(conc_socket_getsockopt_int(a, SOL_SOCKET, SO_REUSEADDR, &v), 0);
    cr_expect_neq(v, 0);
    cr_expect_eq(conc_socket_getsockopt_int(a, SOL_SOCKET, SO_ACCEPTCONN, &v), 0);
    cr_expect_neq(v, 0);
    conc_sockaddr sa;
    cr_assert_eq(conc_socket_getsockname(a, &sa), 0);
    int port = conc_sockaddr_port(&sa);
    /* SO_REUSEPORT: a second server on the same port. */
    cr_expect_eq(conc_socket_create_server(&b, "127.0.0.1", port, &o), 0);
    conc_socket_free(b);
    o.reuse_port = false;
    cr_expect_eq(conc_socket_create_server(&b, "127.0.0.1", port, &o), -EADDRINUSE);
    conc_socket_free(a);

    /* A datagram server is bound, not listening. */
    o.type = SOCK_DGRAM;
    cr_assert_eq(conc_socket_create_server(&a, NULL, 0, &o), 0);
    cr_expect_eq(conc_socket_type(a), SOCK_DGRAM);
    conc_socket_free(a);
    o.type = SOCK_SEQPACKET;
    cr_expect_eq(conc_socket_create_server(&a, NULL, 0, &o), -EINVAL);
    o.type = 0;
    o.dualstack_ipv6 = true;             /* needs AF_INET6 */
    cr_expect_eq(conc_socket_create_server(&a, NULL, 0, &o), -EINVAL);
    o.dualstack_ipv6 = false;
    cr_expect_eq(conc_socket_create_server(&a, "::1", 0, &o), -EINVAL);   /* not AF_INET */
    cr_expect_eq(conc_socket_create_server(&a, "x", 0, &o), -EINVAL);
    cr_expect_eq(conc_socket_create_server(&a, NULL, -1, &o), -EINVAL);
    cr_expect_eq(conc_socket_create_server(NULL, NULL, 0, &o), -EINVAL);

    /* Dual stack: IPv4 clients reach an AF_INET6 server. */
    if (!conc_socket_has_dualstack_ipv6())
        return;
    o.family = AF_INET6;
    o.dualstack_ipv6 = true;
    if (conc_socket_create_server(&a, "", 0, &o) != 0)
        return;                         /* no IPv6 here */
    cr_assert_eq(conc_socket_getsockname(a, &sa), 0);
    cr_expect_eq(conc_socket_getsockopt_int(a, IPPROTO_IPV6, IPV6_V6ONLY, &v), 0);
    cr_expect_eq(v, 0);
    conc_socket *c, *s;
    cr_assert_eq(conc_socket_create_connection(&c, "127.0.0.1", conc_sockaddr_port(&sa), GUARD,
                                               NULL), 0);
    conc_sockaddr peer;
    cr_assert_eq(conc_socket_accept(a, &s, &peer), 0);
    char t[CONC_SOCKADDR_STRLEN];
    cr_assert_gt(conc_sockaddr_str(&peer, t, sizeof t), 0);
    cr_expect(strstr(t, "::ffff:127.0.0.1") != NULL, "%s", t);
    conc_socket_free(c);
    conc_socket_free(s);
    conc_socket_free(a);
}

/* ------------------------------------------------------------- resolver */

Test(socket, resolver_errors_are_told_apart)
{
    conc_addrinfo *ai = NULL;
    int r = conc_socket_getaddrinfo("not a number", "80", 0, 0, 0, AI_NUMERICHOST, &ai);
    cr_expect_eq(r, CONC_EAI_NONAME);
    cr_expect(CONC_IS_EAI(r));
    cr_expect_not(CONC_IS_EAI(-EINVAL));
    cr_expect_not(CONC_IS_EAI(-4095));
    cr_expect_str_eq(conc_errname(r), "EAI_NONAME");
    cr_expect_str_eq(conc_errname(-r), "EAI_NONAME");
    cr_expect_str_eq(conc_strerror(r), "name or service not known");
    r = conc_socket_getaddrinfo("127.0.0.1", "no-such-service-here", 0, SOCK_STREAM, 0, 0, &ai);
    cr_expect_eq(r, CONC_EAI_SERVICE, "%d %s", r, conc_errname(r));
    cr_expect_str_eq(conc_errname(CONC_EAI_SERVICE), "EAI_SERVICE");
    cr_expect_eq(conc_socket_getaddrinfo("127.0.0.1", "80", 0, 0, 0, 0x7fff0000, &ai),
                 CONC_EAI_BADFLAGS);
    cr_expect_eq(conc_socket_getaddrinfo("127.0.0.1", "80", 12345, 0, 0, 0, &ai),
                 CONC_EAI_FAMILY);
    cr_expect_eq(conc_socket_getaddrinfo(NULL, NULL, 0, 0, 0, 0, &ai), -EINVAL);
    cr_expect_eq(conc_socket_getaddrinfo("x", "1", 0, 0, 0, 0, NULL), -EINVAL);
    cr_expect_null(ai);
    /* Every CONC_EAI_* code has a name and a text. */
    const int codes[] = { CONC_EAI_BADFLAGS, CONC_EAI_NONAME, CONC_EAI_AGAIN, CONC_EAI_FAIL,
                          CONC_EAI_NODATA, CONC_EAI_FAMILY, CONC_EAI_SOCKTYPE,
                          CONC_EAI_SERVICE, CONC_EAI_ADDRFAMILY, CONC_EAI_OVERFLOW,
                          CONC_EAI_OTHER };
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        cr_expect(CONC_IS_EAI(codes[i]));
        cr_expect_eq(strncmp(conc_errname(codes[i]), "EAI_", 4), 0);
        cr_expect_str_neq(conc_strerror(codes[i]), "unknown error");
    }

    /* Results: a literal and a service name, canonname. */
    int n = conc_socket_getaddrinfo("127.0.0.1", "http", AF_INET, SOCK_STREAM, 0,
                                    AI_CANONNAME, &ai);
    cr_assert_eq(n, 1, "%d %s", n, conc_strerror(n));
    cr_expect_eq(ai[0].family, AF_INET);
    cr_expect_eq(ai[0].type, SOCK_STREAM);
    cr_expect_eq(conc_sockaddr_port(&ai[0].addr), 80);
    cr_expect_not_null(ai[0].canonname);
    free(ai);

    /* getnameinfo */
    conc_sockaddr a;
    cr_assert_eq(conc_sockaddr_inet(&a, AF_UNSPEC, "::1", 8080), 0);
    char host[64], serv[16];
    cr_assert_eq(conc_socket_getnameinfo(&a, NI_NUMERICHOST | NI_NUMERICSERV, host, sizeof host,
                                         serv, sizeof serv), 0);
    cr_expect_str_eq(host, "::1");
    cr_expect_str_eq(serv, "8080");
    cr_expect_eq(conc_socket_getnameinfo(&a, NI_NUMERICHOST, host, 2, NULL, 0), CONC_EAI_OVERFLOW);
    cr_expect_eq(conc_socket_getnameinfo(&a, 0, NULL, 0, NULL, 0), -EINVAL);
    cr_expect_eq(conc_socket_getnameinfo(NULL, 0, host, sizeof host, NULL, 0), -EINVAL);
}

Test(socket, sockaddr_helpers)
{
    conc_sockaddr a;
    char t[CONC_SOCKADDR_STRLEN];
    cr_assert_eq(conc_sockaddr_inet(&a, AF_INET, NULL, 80), 0);
    cr_assert_eq(conc_sockaddr_str(&a, t, sizeof t), 10);
    cr_expect_str_eq(t, "0.0.0.0:80");
    cr_assert_eq(conc_sockaddr_inet(&a, AF_INET6, "", 1), 0);
    cr_assert_gt(conc_sockaddr_str(&a, t, sizeof t), 0);
    cr_expect_str_eq(t, "[::]:1");
    cr_assert_eq(conc_sockaddr_inet(&a, AF_INET6, "fe80::1%7", 1), 0);
    cr_assert_gt(conc_sockaddr_str(&a, t, sizeof t), 0);
    cr_expect_str_eq(t, "[fe80::1%7]:1");
    cr_expect_eq(conc_sockaddr_inet(&a, AF_INET, "::1", 1), -EINVAL);
    cr_expect_eq(conc_sockaddr_inet(&a, AF_INET6, "1.2.3.4", 1), -EINVAL);
    cr_expect_eq(conc_sockaddr_inet(&a, AF_INET, "1.2.3.4", 65536), -EINVAL);
    cr_expect_eq(conc_sockaddr_inet(&a, AF_UNIX, "1.2.3.4", 1), -EINVAL);
    cr_expect_eq(conc_sockaddr_inet(NULL, AF_INET, "1.2.3.4", 1), -EINVAL);
    cr_expect_eq(conc_sockaddr_str(&a, t, 3), -ENOSPC);
    cr_expect_str_eq(t, "");
    cr_assert_eq(conc_sockaddr_unix(&a, "/tmp/x.sock", 0), 0);
    cr_assert_eq(conc_sockaddr_str(&a, t, sizeof t), 11);
    cr_expect_str_eq(t, "/tmp/x.sock");
    cr_assert_eq(conc_sockaddr_unix(&a, "\0abs", 4), 0);
    cr_assert_eq(conc_sockaddr_str(&a, t, sizeof t), 4);
    cr_expect_str_eq(t, "@abs");
    char longp[200];
    memset(longp, 'a', sizeof longp - 1);
    longp[sizeof longp - 1] = '\0';
    cr_expect_eq(conc_sockaddr_unix(&a, longp, 0), -ENAMETOOLONG);
    cr_expect_eq(conc_sockaddr_unix(&a, "", 0), -EINVAL);
    cr_expect_eq(conc_sockaddr_port(&a), -EAFNOSUPPORT);
    cr_expect_eq(conc_sockaddr_port(NULL), -EINVAL);
}

/* ------------------------------------------------- Unix, UDP, descriptors */

Test(socket, unix_and_udp)
{
    char path[64];
    snprintf(path, sizeof path, "/tmp/conc-test-%d.sock", (int)getpid());
    unlink(path);
    conc_sockaddr a;
    cr_assert_eq(conc_sockaddr_unix(&a, path, 0), 0);
    conc_socket *l, *c, *s;
    cr_assert_eq(conc_socket_new(&l, AF_UNIX, SOCK_STREAM, 0), 0);
    cr_assert_eq(conc_socket_bind(l, &a), 0);
    cr_assert_eq(conc_socket_listen(l, -5), 0);       /* negative: 0 */
    cr_assert_eq(conc_socket_new(&c, AF_UNIX, SOCK_STREAM, 0), 0);
    cr_assert_eq(conc_socket_connect(c, &a), 0);
    cr_assert_eq(conc_socket_accept(l, &s, NULL), 0);
    cr_assert_eq(conc_socket_send(c, "u", 1, 0), 1);
    char b[8];
    cr_expect_eq(conc_socket_recv(s, b, sizeof b, 0), 1);
    cr_expect_eq(conc_socket_connect(c, &a), -EISCONN);
    conc_socket_free(c);
    conc_socket_free(s);
    conc_socket_free(l);
    unlink(path);

    /* UDP: sendto/recvfrom tell the peers apart; a datagram is cut to the
     * buffer, MSG_TRUNC tells its length. */
    conc_socket_server_opts o = CONC_SOCKET_SERVER_OPTS_INIT;
    o.type = SOCK_DGRAM;
    conc_socket *u1, *u2;
    cr_assert_eq(conc_socket_create_server(&u1, "127.0.0.1", 0, &o), 0);
    cr_assert_eq(conc_socket_create_server(&u2, "127.0.0.1", 0, &o), 0);
    conc_sockaddr a1, a2, from;
    cr_assert_eq(conc_socket_getsockname(u1, &a1), 0);
    cr_assert_eq(conc_socket_getsockname(u2, &a2), 0);
    cr_assert_eq(conc_socket_sendto(u2, "datagram", 8, 0, &a1), 8);
    cr_assert_eq(conc_socket_recvfrom(u1, b, 4, MSG_TRUNC, &from), 8);
    cr_expect_eq(memcmp(b, "data", 4), 0);
    cr_expect_eq(from.len, a2.len);
    cr_expect_eq(memcmp(&from.u, &a2.u, a2.len), 0);
    cr_expect_eq(conc_socket_sendto(u2, "x", 1, 0, NULL), -EINVAL);
    cr_assert_eq(conc_socket_set_timeout(u1, 0), 0);
    cr_expect_eq(conc_socket_recvfrom(u1, b, sizeof b, 0, &from), -EAGAIN);
    conc_socket_free(u1);
    conc_socket_free(u2);
}

Test(socket, from_fd_attach_detach_dup)
{
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    int before = count_fds();
    conc_socket *a, *b;
    /* attach duplicates: the caller's descriptor stays open after free. */
    cr_assert_eq(conc_socket_attach(&a, sv[0]), 0);
    cr_expect_neq(conc_socket_fd(a), sv[0]);
    cr_expect_eq(count_fds(), before + 1);
    cr_expect(fcntl(sv[0], F_GETFL) & O_NONBLOCK);       /* shared mode */
    conc_socket_free(a);
    cr_expect_eq(count_fds(), before);
    cr_expect_geq(fcntl(sv[0], F_GETFD), 0);
    /* from_fd takes over: freeing closes it. */
    cr_assert_eq(conc_socket_from_fd(&b, sv[1]), 0);
    cr_expect_eq(conc_socket_fd(b), sv[1]);
    cr_expect_eq(conc_socket_family(b), AF_UNIX);
    cr_expect_eq(conc_socket_type(b), SOCK_STREAM);
    conc_socket *d;
    cr_assert_eq(conc_socket_dup(b, &d), 0);
    cr_expect_neq(conc_socket_fd(d), sv[1]);
    conc_socket_free(d);
    int fd = conc_socket_detach(b);
    cr_expect_eq(fd, sv[1]);
    cr_expect(conc_socket_closed(b));
    conc_socket_free(b);
    cr_expect_geq(fcntl(sv[1], F_GETFD), 0);          /* detached: still open */
    cr_assert_eq(conc_socket_from_fd(&b, sv[1]), 0);
    conc_socket_free(b);
    cr_expect_eq(fcntl(sv[1], F_GETFD), -1);          /* closed with the socket */
    close(sv[0]);
}

Test(socket, passing_descriptors)
{
    conc_socket *a, *b;
    cr_assert_eq(conc_socket_pair(&a, &b, AF_UNIX, SOCK_STREAM, 0), 0);
    int p[2];
    cr_assert_eq(pipe(p), 0);
    int before = count_fds();
    cr_assert_eq(conc_socket_send_fds(a, "f", 1, p, 2, 0), 1);
    int got[4] = { -1, -1, -1, -1 };
    size_t n = 9;
    char c;
    cr_assert_eq(conc_socket_recv_fds(b, &c, 1, got, 4, &n, 0), 1);
    cr_assert_eq(n, 2);
    cr_expect_eq(count_fds(), before + 2);
    cr_expect(fcntl(got[0], F_GETFD) & FD_CLOEXEC);
    /* They are the pipe's ends. */
    cr_assert_eq(write(got[1], "z", 1), 1);
    cr_assert_eq(read(p[0], &c, 1), 1);
    cr_expect_eq(c, 'z');
    close(got[0]);
    close(got[1]);
    /* More than maxfds: the rest are closed, -EMSGSIZE. */
    int three[3] = { p[0], p[1], p[0] };
    cr_assert_eq(conc_socket_send_fds(a, "g", 1, three, 3, 0), 1);
    n = 9;
    cr_expect_eq(conc_socket_recv_fds(b, &c, 1, got, 1, &n, 0), -EMSGSIZE);
    cr_expect_eq(n, 1);
    close(got[0]);
    cr_expect_eq(count_fds(), before);
    cr_expect_eq(conc_socket_send_fds(a, "g", 0, p, 1, 0), -EINVAL);
    cr_expect_eq(conc_socket_send_fds(a, "g", 1, p, 0, 0), -EINVAL);
    cr_expect_eq(conc_socket_send_fds(a, "g", 1, p, CONC_SOCKET_MAX_FDS + 1, 0), -EINVAL);
    cr_expect_eq(conc_socket_recv_fds(b, &c, 1, got, 0, &n, 0), -EINVAL);
    int bad = 9999;
    cr_expect_eq(conc_socket_send_fds(a, "g", 1, &bad, 1, 0), -EBADF);
    close(p[0]);
    close(p[1]);
    conc_socket_free(a);
    conc_socket_free(b);
}

/* ------------------------------------------------------------- sendfile */

static void *drain_main(void *arg)
{
    struct mb *m = arg;
    size_t got = 0;
    ssize_t n;
    while (got < m->len && (n = conc_socket_recv(m->s, m->buf + got, m->len - got, 0)) > 0)
        got += (size_t)n;
    m->rc = (int)got;
    return NULL;
}

static void check_sendfile(int in, off_t offset, size_t count, const unsigned char *want,
                           size_t want_len)
{
    conc_socket *c, *s;
    tcp_pair(&c, &s);
    struct mb m = { .s = s, .buf = calloc(1, want_len + 1), .len = want_len };
    pthread_t th;
    pthread_create(&th, NULL, drain_main, &m);
    size_t sent = 0;
    cr_expect_eq(conc_socket_sendfile(c, in, offset, count, &sent), 0);
    cr_expect_eq(sent, want_len);
    pthread_join(th, NULL);
    cr_expect_eq((size_t)m.rc, want_len);
    cr_expect_eq(memcmp(m.buf, want, want_len), 0);
    free(m.buf);
    conc_socket_free(c);
    conc_socket_free(s);
}

Test(socket, sendfile_and_its_fallback, .timeout = 60)
{
    size_t len = 1 << 20;
    unsigned char *data = malloc(len);
    for (size_t i = 0; i < len; i++)
        data[i] = (unsigned char)(i ^ (i >> 8));
    char path[] = "/tmp/conc-sendfile-XXXXXX";
    int f = mkstemp(path);
    cr_assert_geq(f, 0);
    unlink(path);
    cr_assert_eq(write(f, data, len), (ssize_t)len);
    /* Whole file from offset 0: the position is left alone. */
    cr_assert_eq(lseek(f, 5, SEEK_SET), 5);
    check_sendfile(f, 0, 0, data, len);
    cr_expect_eq(lseek(f, 0, SEEK_CUR), 5);
    /* From the file position, count bytes: the position advances. */
    check_sendfile(f, -1, 1000, data + 5, 1000);
    cr_expect_eq(lseek(f, 0, SEEK_CUR), 1005);
    /* A part in the middle. */
    check_sendfile(f, 4096, 70000, data + 4096, 70000);
    close(f);

    /* From a pipe: sendfile(2) cannot read it, the copy does. */
    int p[2];
    cr_assert_eq(pipe(p), 0);
    pid_t w = fork();
    if (w == 0) {
        size_t off = 0;
        while (off < 200000) {
            ssize_t k = write(p[1], data + off, 200000 - off);
            if (k <= 0)
                _exit(1);
            off += (size_t)k;
        }
        _exit(0);
    }
    close(p[1]);
    check_sendfile(p[0], -1, 0, data, 200000);
    close(p[0]);
    int st;
    waitpid(w, &st, 0);
    cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    cr_expect_eq(conc_socket_sendfile(NULL, 0, 0, 0, NULL), -EINVAL);
    free(data);
}

/* ------------------------------------------------------------- conc_wait */

Test(socket, sockets_in_conc_wait)
{
    conc_socket *a, *b;
    cr_assert_eq(conc_socket_pair(&a, &b, 0, 0, 0), 0);
    conc_queue *q;
    cr_assert_eq(conc_queue_new(&q, NULL), 0);
    conc_waitable w[3] = {
        { .kind = CONC_WAIT_SOCKET, .u.socket = a },
        { .kind = CONC_WAIT_QUEUE, .u.queue = q },
        { .kind = CONC_WAIT_SOCKET, .u.socket = b, .events = POLLOUT },
    };
    /* b is writable at once; a is not readable. */
    cr_assert_eq(conc_wait(w, 3, GUARD), 1);
    cr_expect_not(w[0].ready);
    cr_expect_not(w[1].ready);
    cr_expect(w[2].ready);
    cr_assert_eq(conc_wait(w, 2, 0), -EAGAIN);
    cr_assert_eq(conc_socket_send(b, "r", 1, 0), 1);
    cr_assert_eq(conc_wait(w, 2, GUARD), 1);
    cr_expect(w[0].ready);
    /* A closed socket is -EBADF; NULL is -EINVAL. */
    conc_socket_close(b);
    w[2].u.socket = b;
    cr_expect_eq(conc_wait(&w[2], 1, 0), -EBADF);
    w[2].u.socket = NULL;
    cr_expect_eq(conc_wait(&w[2], 1, 0), -EINVAL);
    conc_queue_free(q);
    conc_socket_free(a);
    conc_socket_free(b);
}

Test(socket, seqpacket_and_raw)
{
    /* SOCK_SEQPACKET keeps message boundaries. */
    conc_socket *a, *b;
    cr_assert_eq(conc_socket_pair(&a, &b, AF_UNIX, SOCK_SEQPACKET, 0), 0);
    cr_expect_eq(conc_socket_type(a), SOCK_SEQPACKET);
    cr_assert_eq(conc_socket_send(a, "one", 3, 0), 3);
    cr_assert_eq(conc_socket_send(a, "three", 5, 0), 5);
    char buf[16];
    cr_expect_eq(conc_socket_recv(b, buf, sizeof buf, 0), 3);
    cr_expect_eq(conc_socket_recv(b, buf, sizeof buf, 0), 5);
    conc_socket_free(a);
    conc_socket_free(b);
    cr_expect_eq(conc_socket_pair(&a, &b, AF_INET, SOCK_STREAM, 0), -EOPNOTSUPP);

    /* SOCK_RAW where permitted: made, or refused with the kernel's code. */
    conc_socket *r = NULL;
    int rc = conc_socket_new(&r, AF_INET, SOCK_RAW, IPPROTO_ICMP);
    cr_expect(rc == 0 || rc == -EPERM || rc == -EACCES, "%d", rc);
    if (rc == 0) {
        cr_expect_eq(conc_socket_type(r), SOCK_RAW);
        cr_assert_eq(conc_socket_set_timeout(r, 0), 0);
        ssize_t n = conc_socket_recv(r, buf, sizeof buf, 0);
        cr_expect(n == -EAGAIN || n > 0, "%zd", n);     /* someone's ping may come */
    }
    conc_socket_free(r);
}
