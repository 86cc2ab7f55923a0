/*
 * test_socket_drain.c - drained reads of TCP streams in coroutines.
 *
 * A plain recv on a TCP stream that returns fewer bytes than asked has
 * taken the whole receive queue, so a hub that waits for the socket
 * edge-triggered lets the next read wait first instead of trying and
 * hearing EAGAIN (src/hub.c, "fd records").  These tests check that the
 * EAGAIN really goes (counted by wrapping recv), that it stays for the
 * sockets whose short reads prove nothing (Unix streams, a socket given an
 * upper layer protocol, a socket whose urgent byte was read out of band),
 * and try every way a drained read could leave bytes or an end of file
 * unseen: an urgent byte whose mark stops a read short (inline and out of
 * band), the peer's FIN taken by a short read, data that arrives between a
 * short read and the wait after it, a level wait that takes the edge after
 * a short read, a read whose deadline passes before the hub takes the edge
 * of data already there, and floods of small pieces read with small
 * buffers and with MSG_WAITALL.  Each of these was seen to fail (a read
 * that times out with bytes or an end of file waiting) with its safeguard
 * switched off.
 *
 * Criterion runs every test in its own process.
 */
#include <criterion/criterion.h>

#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <linux/sockios.h>
#include <unistd.h>

#include "conc.h"
#include "support/pieces.h"
#include "support/sockcall_wrap.h"


#define GUARD 20.0              /* hang guard of the blocking calls that must return */
#define STUCK 3.0               /* a read that would hang with a safeguard off */
#define ROUNDS 200              /* requests of the counting tests */

/* ------------------------------------------------- counting EAGAINs */

/* recv is wrapped: the socket layer's reads of count_fd that say EAGAIN
 * are counted, and with inject_left > 0 a short read of count_fd writes a
 * byte into inject_peer before it returns (data that arrives between a
 * drained read and the wait after it). */
static int count_fd = -1;       /* atomic */
static int eagains;             /* atomic */
static int inject_peer = -1;    /* atomic */
static int inject_left;         /* atomic */

typedef ssize_t (*recv_fn)(int, void *, size_t, int);

static recv_fn real_recv(void)
{
    static recv_fn f;
    recv_fn r = __atomic_load_n(&f, __ATOMIC_ACQUIRE);
    if (!r) {
        void *p = dlsym(RTLD_NEXT, "recv");
        memcpy(&r, &p, sizeof r);
        __atomic_store_n(&f, r, __ATOMIC_RELEASE);
    }
    return r;
}

ssize_t recv(int fd, void *buf, size_t len, int flags)
{
    ssize_t n = real_recv()(fd, buf, len, flags);
    int e = errno;
    if (fd >= 0 && fd == __atomic_load_n(&count_fd, __ATOMIC_RELAXED)) {
        if (n < 0 && e == EAGAIN)
            __atomic_add_fetch(&eagains, 1, __ATOMIC_RELAXED);
        if (n > 0 && (size_t)n < len && __atomic_load_n(&inject_left, __ATOMIC_RELAXED) > 0) {
            __atomic_sub_fetch(&inject_left, 1, __ATOMIC_RELAXED);
            char c = 'j';
            if (write(__atomic_load_n(&inject_peer, __ATOMIC_RELAXED), &c, 1) != 1)
                abort();
        }
    }
    errno = e;
    return n;
}

static void count_on(int fd)
{
    __atomic_store_n(&eagains, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&count_fd, fd, __ATOMIC_RELAXED);
}

static int count_off(void)
{
    __atomic_store_n(&count_fd, -1, __ATOMIC_RELAXED);
    return __atomic_load_n(&eagains, __ATOMIC_RELAXED);
}

/* ------------------------------------------------------------ helpers */

/* A connected TCP pair over 127.0.0.1 (a: the accepted end), no Nagle
 * delay, each with the hang guard as its timeout. */
static void tcp_pair(conc_socket **a, conc_socket **b)
{
    conc_socket *l;
    cr_assert_eq(conc_socket_new(&l, AF_INET, SOCK_STREAM, 0), 0);
    conc_sockaddr addr;
    cr_assert_eq(conc_sockaddr_inet(&addr, AF_INET, "127.0.0.1", 0), 0);
    cr_assert_eq(conc_socket_bind(l, &addr), 0);
    cr_assert_eq(conc_socket_listen(l, 1), 0);
    cr_assert_eq(conc_socket_getsockname(l, &addr), 0);
    cr_assert_eq(conc_socket_new(b, AF_INET, SOCK_STREAM, 0), 0);
    cr_assert_eq(conc_socket_set_timeout(*b, GUARD), 0);
    cr_assert_eq(conc_socket_connect(*b, &addr), 0);
    cr_assert_eq(conc_socket_set_timeout(l, GUARD), 0);
    cr_assert_eq(conc_socket_accept(l, a, NULL), 0);
    conc_socket_free(l);
    cr_assert_eq(conc_socket_set_timeout(*a, GUARD), 0);
    cr_assert_eq(conc_socket_setsockopt_int(*a, IPPROTO_TCP, TCP_NODELAY, 1), 0);
    cr_assert_eq(conc_socket_setsockopt_int(*b, IPPROTO_TCP, TCP_NODELAY, 1), 0);
}

static void unix_pair(conc_socket **a, conc_socket **b)
{
    cr_assert_eq(conc_socket_pair(a, b, AF_UNIX, SOCK_STREAM, 0), 0);
    cr_assert_eq(conc_socket_set_timeout(*a, GUARD), 0);
    cr_assert_eq(conc_socket_set_timeout(*b, GUARD), 0);
}

/* Runs fn(arg) in a greenlet of this thread's hub and returns its result. */
static void *in_greenlet(void *(*fn)(void *), void *arg)
{
    conc_greenlet *g;
    cr_assert_eq(conc_greenlet_spawn(&g, fn, arg, NULL), 0);
    cr_assert_eq(conc_greenlet_join(g, 3 * GUARD), 0);
    void *v = (void *)1;
    cr_assert_eq(conc_greenlet_result(g, &v), 0);
    conc_greenlet_free(g);
    return v;
}

/* Spins (without letting the hub run) until everything the sender fd
 * sent has been acknowledged, that is queued at its peer (over loopback),
 * so that it is all there before the hub next looks for events: one edge
 * then carries all of it.  (The receiver's SIOCINQ stops at an urgent
 * mark.) */
static void delivered(int fd)
{
    int64_t until = conc_now() + (int64_t)(GUARD * 1e9);
    for (;;) {
        int q = 0;
        cr_assert_eq(ioctl(fd, SIOCOUTQ, &q), 0);
        if (q == 0)
            return;
        cr_assert_lt(conc_now(), until, "%d bytes not acknowledged", q);
        sched_yield();
    }
}

/* Spins until fd has seen its peer's FIN. */
static void fin_queued(int fd)
{
    int64_t until = conc_now() + (int64_t)(GUARD * 1e9);
    for (;;) {
        struct pollfd p = { .fd = fd, .events = POLLRDHUP };
        if (poll(&p, 1, 0) == 1 && (p.revents & POLLRDHUP))
            return;
        cr_assert_lt(conc_now(), until, "no FIN");
        sched_yield();
    }
}

static void *send_x(void *arg)
{
    return (void *)(intptr_t)conc_socket_send(arg, "X", 1, 0);
}

/* Leaves a registered with this thread's hub and drained: a greenlet sends
 * "X" while this one waits in a read of a, which gets it and asked for
 * more.  The edge of "X" woke the read: no edge of a is left. */
static void drain_once(conc_socket *a, conc_socket *b)
{
    conc_greenlet *w;
    cr_assert_eq(conc_greenlet_spawn(&w, send_x, b, NULL), 0);
    char buf[64];
    cr_assert_eq(conc_socket_recv(a, buf, sizeof buf, 0), 1);
    cr_assert_eq(buf[0], 'X');
    cr_assert_eq(conc_greenlet_join(w, GUARD), 0);
    void *v = NULL;
    cr_assert_eq(conc_greenlet_result(w, &v), 0);
    cr_assert_eq((intptr_t)v, 1);
    conc_greenlet_free(w);
}

/* ------------------------------------------- EAGAINs counted per socket */

struct echo {
    conc_socket *a, *b;
    int rounds;
    int bad;
};

/* Answers each 64-byte request on a until b's side closes. */
static void *echo_server(void *arg)
{
    struct echo *e = arg;
    char buf[4096];
    for (;;) {
        ssize_t n = conc_socket_recv(e->a, buf, sizeof buf, 0);
        if (n <= 0)
            return (void *)(intptr_t)n;
        if (conc_socket_sendall(e->a, buf, (size_t)n, 0, NULL) != 0)
            e->bad = 1;
    }
}

static void *echo_client(void *arg)
{
    struct echo *e = arg;
    for (int i = 0; i < e->rounds; i++) {
        char req[64], rep[64];
        memset(req, 'a' + i % 26, sizeof req);
        if (conc_socket_sendall(e->b, req, sizeof req, 0, NULL) != 0)
            e->bad = 1;
        size_t got = 0;
        while (got < sizeof rep) {
            ssize_t n = conc_socket_recv(e->b, rep + got, sizeof rep - got, 0);
            if (n <= 0)
                return (void *)(intptr_t)(n == 0 ? -EPIPE : n);
            got += (size_t)n;
        }
        if (memcmp(req, rep, sizeof req) != 0)
            e->bad = 1;
    }
    conc_socket_shutdown(e->b, SHUT_WR);
    return NULL;
}

/* ROUNDS requests from a client greenlet to a server greenlet over a and
 * b; returns how many of the server's reads of a said EAGAIN. */
static int echo_eagains(conc_socket *a, conc_socket *b)
{
    struct echo e = { a, b, ROUNDS, 0 };
    count_on(conc_socket_fd(a));
    conc_greenlet *s, *c;
    cr_assert_eq(conc_greenlet_spawn(&s, echo_server, &e, NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&c, echo_client, &e, NULL), 0);
    void *v = (void *)1;
    cr_assert_eq(conc_greenlet_join(c, 3 * GUARD), 0);
    cr_assert_eq(conc_greenlet_result(c, &v), 0);
    cr_assert_eq((intptr_t)v, 0, "client: %s", conc_strerror((int)(intptr_t)v));
    cr_assert_eq(conc_greenlet_join(s, 3 * GUARD), 0);
    cr_assert_eq(conc_greenlet_result(s, &v), 0);
    cr_assert_eq((intptr_t)v, 0, "server: %s", conc_strerror((int)(intptr_t)v));
    cr_assert_eq(e.bad, 0);
    conc_greenlet_free(s);
    conc_greenlet_free(c);
    return count_off();
}

/* The server's reads after its replies wait first: its EAGAINs are the
 * one that registered the socket and the one before the end of file, not
 * one per request (ROUNDS on the old code). */
Test(socket_drain, tcp_reads_wait_without_eagain, .timeout = 120)
{
    conc_socket *a, *b;
    tcp_pair(&a, &b);
    int n = echo_eagains(a, b);
    cr_assert_leq(n, 3, "%d EAGAINs in %d requests", n, ROUNDS);
    conc_socket_free(a);
    conc_socket_free(b);
    cr_assert_eq(conc_hub_free(), 0);
}

/* A Unix stream's read stops at a message's passed descriptors: a short
 * read proves nothing, each request costs its EAGAIN. */
Test(socket_drain, unix_reads_keep_their_eagain, .timeout = 120)
{
    conc_socket *a, *b;
    unix_pair(&a, &b);
    int n = echo_eagains(a, b);
    cr_assert_geq(n, ROUNDS / 2, "%d EAGAINs in %d requests", n, ROUNDS);
    conc_socket_free(a);
    conc_socket_free(b);
    cr_assert_eq(conc_hub_free(), 0);
}

/* An upper layer protocol (kTLS reads stop at record boundaries) set
 * through conc turns the rule off for the socket, whether the kernel has
 * the protocol or not, and for a dup of it (the same file). */
Test(socket_drain, tcp_ulp_turns_the_rule_off, .timeout = 120)
{
    conc_socket *a, *b, *d;
    tcp_pair(&a, &b);
    int rc = conc_socket_setsockopt(a, IPPROTO_TCP, TCP_ULP, "tls", 3);
    cr_assert(rc == 0 || rc == -ENOENT || rc == -EOPNOTSUPP, "%s", conc_strerror(rc));
    cr_assert_eq(conc_socket_dup(a, &d), 0);
    int n = echo_eagains(a, b);
    cr_assert_geq(n, ROUNDS / 2, "%d EAGAINs in %d requests", n, ROUNDS);
    conc_socket_free(a);
    conc_socket_free(b);
    /* a dup made after the setting keeps it (on a fresh connection) */
    conc_socket *c;
    tcp_pair(&a, &c);
    conc_socket_free(d);
    cr_assert_eq(conc_socket_setsockopt(a, IPPROTO_TCP, TCP_ULP, "tls", 3), rc);
    cr_assert_eq(conc_socket_dup(a, &d), 0);
    conc_socket_free(a);
    cr_assert_eq(conc_socket_set_timeout(d, GUARD), 0);
    n = echo_eagains(d, c);
    cr_assert_geq(n, ROUNDS / 2, "%d EAGAINs in %d requests", n, ROUNDS);
    conc_socket_free(d);
    conc_socket_free(c);
    cr_assert_eq(conc_hub_free(), 0);
}

/* A socket wrapped from a descriptor made elsewhere (conc_socket_from_fd)
 * is asked for its upper layer protocol: none, so the rule holds. */
Test(socket_drain, from_fd_without_ulp_keeps_the_rule, .timeout = 120)
{
    conc_socket *a, *b, *w;
    tcp_pair(&a, &b);
    int fd = conc_socket_detach(a);
    cr_assert_geq(fd, 0);
    conc_socket_free(a);
    cr_assert_eq(conc_socket_from_fd(&w, fd), 0);
    cr_assert_eq(conc_socket_set_timeout(w, GUARD), 0);
    int n = echo_eagains(w, b);
    cr_assert_leq(n, 3, "%d EAGAINs in %d requests", n, ROUNDS);
    conc_socket_free(w);
    conc_socket_free(b);
    cr_assert_eq(conc_hub_free(), 0);
}

/* ---------------------------------------------------- urgent data */

struct urgent {
    conc_socket *a, *b;
    bool inline_oob, read_oob;
    char got[32];
    size_t len;
    char oob;
};

/*
 * The peer sends "AAAA", an urgent "B" and "CCCC" while a is drained and
 * the hub does not run, then a is read: the first read stops at the
 * urgent mark with "CCCC" still queued.  Inline (SO_OOBINLINE) the "B"
 * comes in the stream; out of band it is skipped, or read first with
 * MSG_OOB (read_oob), after which no event says a mark is there.
 */
static void *urgent_body(void *arg)
{
    struct urgent *u = arg;
    if (u->inline_oob)
        cr_assert_eq(conc_socket_setsockopt_int(u->a, SOL_SOCKET, SO_OOBINLINE, 1), 0);
    drain_once(u->a, u->b);
    cr_assert_eq(conc_socket_send(u->b, "AAAA", 4, 0), 4);
    cr_assert_eq(conc_socket_send(u->b, "B", 1, MSG_OOB), 1);
    cr_assert_eq(conc_socket_send(u->b, "CCCC", 4, 0), 4);
    delivered(conc_socket_fd(u->b));
    if (u->read_oob) {
        cr_assert_eq(conc_socket_recv(u->a, &u->oob, 1, MSG_OOB), 1);
        cr_assert_eq(u->oob, 'B');
    }
    size_t want = u->inline_oob ? 9 : 8;
    int reads = 0;
    while (u->len < want) {
        ssize_t n = conc_socket_recv_until(u->a, u->got + u->len, sizeof u->got - u->len, 0,
                                           conc_now() + (int64_t)(STUCK * 1e9));
        if (n <= 0)
            return (void *)(intptr_t)(n == 0 ? -EPIPE : n);
        u->len += (size_t)n;
        reads++;
    }
    /* the mark stopped the first read after its 4 bytes */
    cr_assert_geq(reads, 2);
    return NULL;
}

static void urgent_case(bool inline_oob, bool read_oob)
{
    struct urgent u = { .inline_oob = inline_oob, .read_oob = read_oob };
    tcp_pair(&u.a, &u.b);
    intptr_t rc = (intptr_t)in_greenlet(urgent_body, &u);
    cr_assert_eq(rc, 0, "read: %s (%zu bytes: %.*s)", conc_strerror((int)rc), u.len,
                 (int)u.len, u.got);
    const char *want = inline_oob ? "AAAABCCCC" : "AAAACCCC";
    cr_assert_eq(u.len, strlen(want));
    cr_assert_arr_eq(u.got, want, u.len);
    conc_socket_free(u.a);
    conc_socket_free(u.b);
    cr_assert_eq(conc_hub_free(), 0);
}

/* The hub saw EPOLLPRI before the read that stopped at the mark. */
Test(socket_drain, urgent_mark_stops_a_read_out_of_band, .timeout = 60)
{
    urgent_case(false, false);
}

Test(socket_drain, urgent_mark_stops_a_read_inline, .timeout = 60)
{
    urgent_case(true, false);
}

/* The urgent byte read with MSG_OOB before the hub looked: no EPOLLPRI
 * ever comes, the socket layer turns the rule off itself. */
Test(socket_drain, urgent_byte_read_with_msg_oob, .timeout = 60)
{
    urgent_case(false, true);
}

/* ------------------------------------------------------- end of file */

/* The peer's "AAAA" and FIN come while a is drained: the read that takes
 * the bytes takes the FIN too, and the next one must say 0 at once. */
static void *fin_body(void *arg)
{
    conc_socket **s = arg;
    drain_once(s[0], s[1]);
    cr_assert_eq(conc_socket_send(s[1], "AAAA", 4, 0), 4);
    cr_assert_eq(conc_socket_shutdown(s[1], SHUT_WR), 0);
    delivered(conc_socket_fd(s[1]));
    fin_queued(conc_socket_fd(s[0]));
    char buf[64];
    ssize_t n = conc_socket_recv_until(s[0], buf, sizeof buf, 0,
                                       conc_now() + (int64_t)(STUCK * 1e9));
    cr_assert_eq(n, 4, "%s", conc_strerror((int)n));
    cr_assert_arr_eq(buf, "AAAA", 4);
    n = conc_socket_recv_until(s[0], buf, sizeof buf, 0, conc_now() + (int64_t)(STUCK * 1e9));
    cr_assert_eq(n, 0, "after the FIN: %s", conc_strerror((int)n));
    /* and again */
    cr_assert_eq(conc_socket_recv(s[0], buf, sizeof buf, 0), 0);
    return NULL;
}

Test(socket_drain, fin_taken_by_a_short_read, .timeout = 60)
{
    conc_socket *s[2];
    tcp_pair(&s[0], &s[1]);
    cr_assert_null(in_greenlet(fin_body, s));
    conc_socket_free(s[0]);
    conc_socket_free(s[1]);
    cr_assert_eq(conc_hub_free(), 0);
}

/* --------------------------------- data between a short read and a wait */

static void *inject_body(void *arg)
{
    conc_socket *a = arg;
    /* every read but the last gets one byte, short, and the wrapper sends
     * the next byte before the read returns */
    for (int i = 0; i < ROUNDS; i++) {
        char buf[16];
        ssize_t n = conc_socket_recv(a, buf, sizeof buf, 0);
        if (n != 1 || buf[0] != 'j')
            return (void *)(intptr_t)(n == 1 ? -1000 : n);
    }
    return NULL;
}

Test(socket_drain, data_between_short_read_and_wait, .timeout = 60)
{
    conc_socket *a, *b;
    tcp_pair(&a, &b);
    __atomic_store_n(&inject_peer, conc_socket_fd(b), __ATOMIC_RELAXED);
    __atomic_store_n(&inject_left, ROUNDS - 1, __ATOMIC_RELAXED);
    count_on(conc_socket_fd(a));
    cr_assert_eq(conc_socket_send(b, "j", 1, 0), 1);
    intptr_t rc = (intptr_t)in_greenlet(inject_body, a);
    count_off();
    cr_assert_eq(rc, 0, "%s", conc_strerror((int)rc));
    cr_assert_eq(__atomic_load_n(&inject_left, __ATOMIC_RELAXED), 0);
    char c;
    cr_assert_eq(conc_socket_recv_until(a, &c, 1, 0, conc_now()), -ETIMEDOUT, "nothing left");
    conc_socket_free(a);
    conc_socket_free(b);
    cr_assert_eq(conc_hub_free(), 0);
}

/* ------------------------------------ a timeout with data waiting */

/* Data for a drained socket whose edge the hub has not taken, read with a
 * deadline a few hundred nanoseconds away: the read waits first, and the
 * loop may find the deadline passed before it looks for events.  The byte
 * was there before the call, so the read must return it, not -ETIMEDOUT
 * (each round's short read drains the socket again). */
static void *timeout_body(void *arg)
{
    conc_socket **s = arg;
    drain_once(s[0], s[1]);
    for (int i = 0; i < ROUNDS; i++) {
        char c = (char)('a' + i % 26), buf[16];
        cr_assert_eq(conc_socket_send(s[1], &c, 1, 0), 1);
        delivered(conc_socket_fd(s[1]));
        ssize_t n = conc_socket_recv_until(s[0], buf, sizeof buf, 0,
                                           conc_now() + 100 * (i % 16));
        cr_assert_eq(n, 1, "round %d: %s", i, conc_strerror((int)n));
        cr_assert_eq(buf[0], c);
    }
    /* MSG_WAITALL: a part, then the time runs out; what came is returned */
    cr_assert_eq(conc_socket_send(s[1], "P", 1, 0), 1);
    delivered(conc_socket_fd(s[1]));
    char buf[2];
    ssize_t n = conc_socket_recv_until(s[0], buf, 2, MSG_WAITALL, conc_now() + 20000000);
    cr_assert_eq(n, 1, "%s", conc_strerror((int)n));
    cr_assert_eq(buf[0], 'P');
    return NULL;
}

Test(socket_drain, timeout_with_data_waiting_returns_the_data, .timeout = 60)
{
    conc_socket *s[2];
    tcp_pair(&s[0], &s[1]);
    cr_assert_null(in_greenlet(timeout_body, s));
    conc_socket_free(s[0]);
    conc_socket_free(s[1]);
    cr_assert_eq(conc_hub_free(), 0);
}

/* ----------------------------- a level wait that takes the edge after */

static void *send_y(void *arg)
{
    conc_socket *b = arg;
    return (void *)(intptr_t)conc_socket_send(b, "Y", 1, 0);
}

static void *level_body(void *arg)
{
    conc_socket **s = arg;
    drain_once(s[0], s[1]);
    /* a level wait through the same record: the edge of "Y" wakes it */
    conc_greenlet *w;
    cr_assert_eq(conc_greenlet_spawn(&w, send_y, s[1], NULL), 0);
    cr_assert_eq(conc_fd_wait(conc_socket_fd(s[0]), POLLIN, GUARD), 0);
    cr_assert_eq(conc_greenlet_join(w, GUARD), 0);
    conc_greenlet_free(w);
    char buf[16];
    ssize_t n = conc_socket_recv_until(s[0], buf, sizeof buf, 0,
                                       conc_now() + (int64_t)(STUCK * 1e9));
    cr_assert_eq(n, 1, "%s", conc_strerror((int)n));
    cr_assert_eq(buf[0], 'Y');
    return NULL;
}

Test(socket_drain, level_wait_takes_the_edge_after_a_short_read, .timeout = 60)
{
    conc_socket *s[2];
    tcp_pair(&s[0], &s[1]);
    cr_assert_null(in_greenlet(level_body, s));
    conc_socket_free(s[0]);
    conc_socket_free(s[1]);
    cr_assert_eq(conc_hub_free(), 0);
}

/* ------------------------------------------------------------- floods */

/* Four TCP sockets, each fed by a thread in many small pieces and read by
 * a greenlet: two with small buffers (short and full reads mixed), one
 * with a large one (short reads nearly always), one with MSG_WAITALL
 * (whose parts wait at once after a short read).  Every byte arrives
 * once, in order. */
Test(socket_drain, floods_of_small_pieces, .timeout = 180)
{
    static const size_t sizes[4] = { 3, 7, 64, 50 };
    static const int flags[4] = { 0, 0, 0, MSG_WAITALL };
    pieces_flood(4, tcp_pair, sizes, flags, 150.0);
}
