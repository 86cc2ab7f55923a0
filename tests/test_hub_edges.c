/*
 * test_hub_edges.c - sockets waited on by coroutines through the socket
 * layer: the hub registers each once, edge-triggered, and keeps a
 * read-ready and a write-ready flag per descriptor (src/hub.c, "fd
 * records").  These tests try every way an edge could be lost: data that
 * arrives between an operation's EAGAIN and the park (injected by wrapping
 * recv and send), a peer writing many small pieces, a writer blocked on a
 * full buffer, a reader and a writer of one socket, a timeout or a kill
 * and then a new wait, a number reused by a new socket while the old file
 * lives on in a copy (a dup, a forked child's), a dup'd socket closed, a
 * level wait (conc_fd_wait) on a socket registered edge-triggered, Unix
 * datagrams, sockets shared between two hubs and a plain thread, and the
 * coroutine server's listening socket.  The registration itself is
 * read from /proc/self/fdinfo of the process's epoll instances.
 *
 * Criterion runs every test in its own process.
 */
#include <criterion/criterion.h>

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conc.h"
#include "support/epoll_regs.h"
#include "support/fork_sanitizers.h"
#include "support/pieces.h"
#include "support/sockcall_wrap.h"

#if SANITIZED
#define ROUNDS 300
#else
#define ROUNDS 3000
#endif

#define GUARD 20.0              /* hang guard of every blocking call */

/* ------------------------------------------------- injection at EAGAIN */

/*
 * recv and send are wrapped: when the socket layer's operation on the
 * armed descriptor says EAGAIN, the wrapper makes the descriptor ready
 * again (writes a byte into its peer, or drains the peer) before it
 * returns EAGAIN, that is between the EAGAIN and the wait that follows.
 * A hub that loses that edge never wakes the waiter.
 */
static int inj_fd = -1, inj_peer = -1;  /* atomic */
static int inj_left;                    /* atomic: injections still to make */
static int inj_done;                    /* atomic: injections made */
static size_t inj_drained;              /* bytes drained by send's injection */
static unsigned char inj_next;          /* the pattern drained bytes must follow */
static int inj_bad;

typedef ssize_t (*recv_fn)(int, void *, size_t, int);
typedef ssize_t (*send_fn)(int, const void *, size_t, int);

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

static send_fn real_send(void)
{
    static send_fn f;
    send_fn r = __atomic_load_n(&f, __ATOMIC_ACQUIRE);
    if (!r) {
        void *p = dlsym(RTLD_NEXT, "send");
        memcpy(&r, &p, sizeof r);
        __atomic_store_n(&f, r, __ATOMIC_RELEASE);
    }
    return r;
}

static bool inject_now(int fd)
{
    if (fd < 0 || fd != __atomic_load_n(&inj_fd, __ATOMIC_RELAXED))
        return false;
    if (__atomic_load_n(&inj_left, __ATOMIC_RELAXED) <= 0)
        return false;
    __atomic_sub_fetch(&inj_left, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&inj_done, 1, __ATOMIC_RELAXED);
    return true;
}

ssize_t recv(int fd, void *buf, size_t len, int flags)
{
    ssize_t n = real_recv()(fd, buf, len, flags);
    if (n < 0 && errno == EAGAIN && inject_now(fd)) {
        int e = errno;
        char c = 'k';
        if (write(__atomic_load_n(&inj_peer, __ATOMIC_RELAXED), &c, 1) != 1)
            inj_bad = 1;
        errno = e;
    }
    return n;
}

ssize_t send(int fd, const void *buf, size_t len, int flags)
{
    ssize_t n = real_send()(fd, buf, len, flags);
    if (n < 0 && errno == EAGAIN && inject_now(fd)) {
        int e = errno;
        unsigned char tmp[4096];
        int peer = __atomic_load_n(&inj_peer, __ATOMIC_RELAXED);
        for (;;) {
            ssize_t k = real_recv()(peer, tmp, sizeof tmp, MSG_DONTWAIT);
            if (k <= 0)
                break;
            for (ssize_t i = 0; i < k; i++)
                if (tmp[i] != inj_next++)
                    inj_bad = 1;
            inj_drained += (size_t)k;
        }
        errno = e;
    }
    return n;
}

static void inject_arm(int fd, int peer, int times)
{
    inj_done = 0;
    inj_drained = 0;
    inj_next = 0;
    inj_bad = 0;
    __atomic_store_n(&inj_peer, peer, __ATOMIC_RELAXED);
    __atomic_store_n(&inj_left, times, __ATOMIC_RELAXED);
    __atomic_store_n(&inj_fd, fd, __ATOMIC_RELAXED);
}

static void inject_disarm(void)
{
    __atomic_store_n(&inj_fd, -1, __ATOMIC_RELAXED);
    __atomic_store_n(&inj_left, 0, __ATOMIC_RELAXED);
}

/* ------------------------------------------------------------ helpers */

/* A deadline 20 ms away: for waits that must time out. */
static int64_t soon(void)
{
    return conc_now() + 20000000;
}

static void pair(conc_socket **a, conc_socket **b)
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
    cr_assert_eq(conc_greenlet_join(g, 2 * GUARD), 0);
    void *v = NULL;
    cr_assert_eq(conc_greenlet_result(g, &v), 0);
    conc_greenlet_free(g);
    return v;
}

/* Edge mode: registered for reading from the start, EPOLLOUT only once a
 * wait for room came (a Unix socket raises EPOLLOUT at every read of its
 * peer, which would wake a hub whose greenlets only read); EPOLLPRI too: an
 * urgent byte turns a socket's drained reads off (the short read that
 * stops at its mark left data behind). */
#define EDGE_MASK ((uint32_t)(EPOLLIN | EPOLLRDHUP | EPOLLPRI | EPOLLET))

/* Reads exactly len bytes through the socket layer. */
static void recv_all(conc_socket *s, void *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = conc_socket_recv(s, (char *)buf + got, len - got, 0);
        cr_assert_gt(n, 0, "recv: %s", conc_strerror((int)n));
        got += (size_t)n;
    }
}

/* --------------------------------------- data between EAGAIN and park */

struct inj_reader {
    conc_socket *s;
    int want;
};

/* Every byte this reader gets was written between one of its EAGAINs and
 * the wait after it: nothing else writes to its peer. */
static void *inj_read_body(void *arg)
{
    struct inj_reader *r = arg;
    for (int i = 0; i < r->want; i++) {
        char c = 0;
        ssize_t n = conc_socket_recv(r->s, &c, 1, 0);
        if (n != 1 || c != 'k')
            return (void *)(intptr_t)(n == 1 ? -1000 : n);
    }
    return NULL;
}

Test(hub_edges, data_between_eagain_and_park, .timeout = 60)
{
    conc_socket *a, *b;
    pair(&a, &b);
    struct inj_reader r = { a, 200 };
    inject_arm(conc_socket_fd(a), conc_socket_fd(b), r.want);
    intptr_t rc = (intptr_t)in_greenlet(inj_read_body, &r);
    inject_disarm();
    cr_assert_eq(rc, 0, "reader: %s", conc_strerror((int)rc));
    cr_assert_eq(inj_done, r.want);     /* the wrapper really ran each time */
    cr_assert_eq(inj_bad, 0);
    uint32_t ev = 0;
    cr_assert_eq(epoll_registrations(conc_socket_fd(a), &ev), 1);
    cr_assert_eq(ev & EDGE_MASK, EDGE_MASK, "events 0x%x", ev);
    cr_assert_not(ev & EPOLLOUT, "a reader's socket: events 0x%x", ev);
    conc_socket_free(a);
    conc_socket_free(b);
    cr_assert_eq(conc_hub_free(), 0);
}

struct inj_writer {
    conc_socket *s;
    size_t len;
};

static void *inj_write_body(void *arg)
{
    struct inj_writer *w = arg;
    unsigned char *buf = malloc(w->len);
    for (size_t i = 0; i < w->len; i++)
        buf[i] = (unsigned char)i;
    size_t sent = 0;
    int rc = conc_socket_sendall(w->s, buf, w->len, 0, &sent);
    free(buf);
    return (void *)(intptr_t)(rc < 0 ? rc : sent == w->len ? 0 : -1000);
}

/* The writer's socket is full; the wrapper drains its peer between the
 * EAGAIN and the wait, so only that edge can wake it. */
Test(hub_edges, space_between_eagain_and_park, .timeout = 60)
{
    conc_socket *a, *b;
    pair(&a, &b);
    struct inj_writer w = { a, (size_t)4 << 20 };
    inject_arm(conc_socket_fd(a), conc_socket_fd(b), 1 << 30);
    intptr_t rc = (intptr_t)in_greenlet(inj_write_body, &w);
    inject_disarm();
    cr_assert_eq(rc, 0, "writer: %s", conc_strerror((int)rc));
    cr_assert_gt(inj_done, 1);
    cr_assert_eq(inj_bad, 0);
    /* The rest, still in the buffer, follows the pattern too. */
    unsigned char tmp[4096];
    while (inj_drained < w.len) {
        ssize_t k = conc_socket_recv(b, tmp, sizeof tmp, 0);
        cr_assert_gt(k, 0);
        for (ssize_t i = 0; i < k; i++)
            cr_assert_eq(tmp[i], inj_next++);
        inj_drained += (size_t)k;
    }
    cr_assert_eq(inj_drained, w.len);
    /* The waits for room added EPOLLOUT to the edge registration. */
    uint32_t ev = 0;
    cr_assert_eq(epoll_registrations(conc_socket_fd(a), &ev), 1);
    cr_assert_eq(ev & (EDGE_MASK | EPOLLOUT), EDGE_MASK | EPOLLOUT, "events 0x%x", ev);
    conc_socket_free(a);
    conc_socket_free(b);
    cr_assert_eq(conc_hub_free(), 0);
}

/* ----------------------------------------------------- many small pieces */

/* Four sockets, each fed by a thread in many small pieces and read by a
 * greenlet with a 3-byte buffer: every byte arrives once, in order. */
Test(hub_edges, peer_writes_many_small_pieces, .timeout = 120)
{
    static const size_t sizes[4] = { 3, 3, 3, 3 };
    static const int flags[4] = { 0 };
    pieces_flood(4, pair, sizes, flags, 100.0);
}

/* ------------------------------------ a reader and a writer, one socket */

struct drain_thread {
    int fd;
    size_t len;
    int bad;
};

/* Reads len bytes of the pattern i & 0xff in pieces, then answers "done". */
static void *drain_then_answer(void *arg)
{
    struct drain_thread *d = arg;
    size_t got = 0;
    unsigned char buf[1000];
    while (got < d->len) {
        ssize_t n = read(d->fd, buf, sizeof buf);
        if (n < 0 && errno == EAGAIN) {
            struct pollfd p = { .fd = d->fd, .events = POLLIN };
            poll(&p, 1, 1000);
            continue;
        }
        if (n <= 0) {
            d->bad = 1;
            return NULL;
        }
        for (ssize_t i = 0; i < n; i++)
            if (buf[i] != (unsigned char)(got + (size_t)i))
                d->bad = 1;
        got += (size_t)n;
    }
    if (write(d->fd, "done", 4) != 4)
        d->bad = 1;
    return NULL;
}

static void *read_done_body(void *arg)
{
    char buf[4];
    recv_all(arg, buf, sizeof buf);
    return memcmp(buf, "done", 4) == 0 ? NULL : (void *)1;
}

/* A writer blocked on a full buffer and a reader parked on the same
 * socket: each is woken by its own direction's edges. */
Test(hub_edges, writer_blocked_on_full_buffer_and_reader, .timeout = 60)
{
    conc_socket *a, *b;
    pair(&a, &b);
    conc_greenlet *rd, *wr;
    struct inj_writer w = { a, (size_t)2 << 20 };
    cr_assert_eq(conc_greenlet_spawn(&rd, read_done_body, a, NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&wr, inj_write_body, &w, NULL), 0);
    cr_assert_eq(conc_sleep(0), 0);     /* both run until they park */
    struct drain_thread d = { conc_socket_fd(b), w.len, 0 };
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, drain_then_answer, &d), 0);
    void *v = (void *)1;
    cr_assert_eq(conc_greenlet_join(wr, GUARD), 0);
    cr_assert_eq(conc_greenlet_result(wr, &v), 0);
    cr_assert_null(v);
    cr_assert_eq(conc_greenlet_join(rd, GUARD), 0);
    cr_assert_eq(conc_greenlet_result(rd, &v), 0);
    cr_assert_null(v);
    pthread_join(t, NULL);
    cr_assert_eq(d.bad, 0);
    conc_greenlet_free(rd);
    conc_greenlet_free(wr);
    conc_socket_free(a);
    conc_socket_free(b);
    cr_assert_eq(conc_hub_free(), 0);
}

/* ------------------------------------------- timeout, kill, a new wait */

static void *recv_one_body(void *arg)
{
    char c = 0;
    ssize_t n = conc_socket_recv(arg, &c, 1, 0);
    return (void *)(intptr_t)(n == 1 ? c : n);
}

static void *recv_short_timeout_body(void *arg)
{
    char c = 0;
    ssize_t n = conc_socket_recv_until(arg, &c, 1, 0, soon());
    return (void *)(intptr_t)n;
}

Test(hub_edges, timeout_or_kill_then_new_wait, .timeout = 60)
{
    conc_socket *a, *b;
    pair(&a, &b);
    for (int round = 0; round < 3; round++) {
        /* A wait that times out leaves the registration; the next one
         * parks again and the edge of the data written after reaches it. */
        cr_assert_eq((intptr_t)in_greenlet(recv_short_timeout_body, a), -ETIMEDOUT);
        conc_greenlet *g;
        cr_assert_eq(conc_greenlet_spawn(&g, recv_one_body, a, NULL), 0);
        cr_assert_eq(conc_sleep(0), 0);
        cr_assert_not(conc_greenlet_dead(g));
        cr_assert_eq(conc_socket_send(b, "y", 1, 0), 1);
        void *v = NULL;
        cr_assert_eq(conc_greenlet_join(g, GUARD), 0);
        cr_assert_eq(conc_greenlet_result(g, &v), 0);
        cr_assert_eq((intptr_t)v, 'y');
        conc_greenlet_free(g);
        /* A killed waiter leaves its place to the next. */
        cr_assert_eq(conc_greenlet_spawn(&g, recv_one_body, a, NULL), 0);
        cr_assert_eq(conc_sleep(0), 0);
        cr_assert_eq(conc_greenlet_kill(g), 0);
        cr_assert_eq(conc_greenlet_join(g, GUARD), 0);
        cr_assert_eq(conc_greenlet_result(g, &v), 0);
        cr_assert_eq((intptr_t)v, -ECANCELED);
        conc_greenlet_free(g);
        cr_assert_eq(conc_greenlet_spawn(&g, recv_one_body, a, NULL), 0);
        cr_assert_eq(conc_sleep(0), 0);
        cr_assert_not(conc_greenlet_dead(g));
        cr_assert_eq(conc_socket_send(b, "z", 1, 0), 1);
        cr_assert_eq(conc_greenlet_join(g, GUARD), 0);
        cr_assert_eq(conc_greenlet_result(g, &v), 0);
        cr_assert_eq((intptr_t)v, 'z');
        conc_greenlet_free(g);
    }
    uint32_t ev = 0;
    cr_assert_eq(epoll_registrations(conc_socket_fd(a), &ev), 1);
    cr_assert_eq(ev & EDGE_MASK, EDGE_MASK, "events 0x%x", ev);
    conc_socket_free(a);
    conc_socket_free(b);
    cr_assert_eq(conc_hub_free(), 0);
}

/* ------------------------------------------------- reused fd numbers */

/* Puts a new socket pair's first end at number want. */
static void pair_at(int want, conc_socket **a, conc_socket **b)
{
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    if (sv[1] == want) {
        int t = sv[0];
        sv[0] = sv[1];
        sv[1] = t;
    }
    if (sv[0] != want) {
        cr_assert_eq(dup3(sv[0], want, O_CLOEXEC), want);
        close(sv[0]);
        sv[0] = want;
    }
    cr_assert_eq(conc_socket_from_fd(a, sv[0]), 0);
    cr_assert_eq(conc_socket_from_fd(b, sv[1]), 0);
    cr_assert_eq(conc_socket_set_timeout(*a, GUARD), 0);
    cr_assert_eq(conc_socket_set_timeout(*b, GUARD), 0);
}

/* A greenlet parked in recv on s, woken by a byte sent to peer. */
static char wait_then_send(conc_socket *s, conc_socket *peer, char c)
{
    conc_greenlet *g;
    cr_assert_eq(conc_greenlet_spawn(&g, recv_one_body, s, NULL), 0);
    cr_assert_eq(conc_sleep(0), 0);
    cr_assert_not(conc_greenlet_dead(g));
    cr_assert_eq(conc_socket_send(peer, &c, 1, 0), 1);
    cr_assert_eq(conc_greenlet_join(g, GUARD), 0);
    void *v = NULL;
    cr_assert_eq(conc_greenlet_result(g, &v), 0);
    conc_greenlet_free(g);
    return (char)(intptr_t)v;
}

/*
 * The number of a socket registered edge-triggered is reused by a new
 * socket while the old file lives on in a copy, so the old registration
 * stays in the hub's epoll set: the new socket must be registered as
 * itself (a wait on the old registration would never wake), and the old
 * file's edges must not count as the new one's.  Four ways: the socket
 * layer's close (which takes the registration away first), a close behind
 * its back (conc_socket_detach, close), the same file taken over by a new
 * handle, and the socket layer's close with the copy in a forked child.
 */
Test(hub_edges, fd_number_reused_by_new_socket, .timeout = 60)
{
    for (int how = 0; how < 4; how++) {
        conc_socket *a, *b;
        pair(&a, &b);
        int n = conc_socket_fd(a);
        cr_assert_eq((intptr_t)in_greenlet(recv_short_timeout_body, a), -ETIMEDOUT);
        cr_assert_eq(wait_then_send(a, b, 'a'), 'a');
        cr_assert_eq(epoll_registrations(n, NULL), 1);
        int copy = fcntl(n, F_DUPFD_CLOEXEC, 0);
        cr_assert_geq(copy, 0);
        conc_socket *c, *d;
        int gate[2] = { -1, -1 };
        pid_t child = -1;
        if (how == 3) {
            /* The child holds copies of everything until the gate closes. */
            cr_assert_eq(pipe2(gate, O_CLOEXEC), 0);
            child = fork();
            cr_assert_geq(child, 0);
            if (child == 0) {
                close(gate[1]);
                char ch;
                while (read(gate[0], &ch, 1) < 0 && errno == EINTR) {
                }
                _exit(0);
            }
            close(gate[0]);
            close(copy);
            copy = -1;
        }
        if (how == 0 || how == 3) {
            cr_assert_eq(conc_socket_close(a), 0);
            /* Taken out of the hub's set, though the file lives on. */
            cr_assert_eq(epoll_registrations(n, NULL), 0);
            pair_at(n, &c, &d);
        } else if (how == 1) {
            cr_assert_eq(conc_socket_detach(a), n);
            close(n);
            cr_assert_eq(epoll_registrations(n, NULL), 1);     /* the old file's */
            pair_at(n, &c, &d);
        } else {
            /* The same file under a new handle: nothing stale, a new key. */
            cr_assert_eq(conc_socket_detach(a), n);
            cr_assert_eq(conc_socket_from_fd(&c, n), 0);
            cr_assert_eq(conc_socket_set_timeout(c, GUARD), 0);
            d = b;
            b = NULL;
        }
        cr_assert_eq(conc_socket_fd(c), n);
        if (b) {
            /* The old file becomes readable: an edge of the old
             * registration, in the hub's next poll. */
            cr_assert_eq(conc_socket_send(b, "o", 1, 0), 1);
        }
        cr_assert_eq(wait_then_send(c, d, 'n'), 'n');
        cr_assert_eq((intptr_t)in_greenlet(recv_short_timeout_body, c), -ETIMEDOUT);
        cr_assert_eq(wait_then_send(c, d, 'm'), 'm');
        if (b && copy >= 0) {
            char ch = 0;
            cr_assert_eq(read(copy, &ch, 1), 1);
            cr_assert_eq(ch, 'o');
        }
        uint32_t ev = 0;
        cr_assert_eq(epoll_registrations(n, &ev), how == 1 ? 2 : 1);
        cr_assert_eq(ev & EDGE_MASK, EDGE_MASK, "events 0x%x", ev);
        if (copy >= 0)
            close(copy);
        if (child > 0) {
            close(gate[1]);
            int st = -1;
            cr_assert_eq(waitpid(child, &st, 0), child);
            cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        }
        conc_socket_free(a);
        conc_socket_free(b);
        conc_socket_free(c);
        conc_socket_free(d);
    }
    cr_assert_eq(conc_hub_free(), 0);
}

/* A socket and its dup: two numbers of one file, each registered; closing
 * one leaves the other's registration and waits working. */
Test(hub_edges, dup_socket_closed, .timeout = 60)
{
    conc_socket *a, *b, *a2;
    pair(&a, &b);
    cr_assert_eq(conc_socket_dup(a, &a2), 0);
    cr_assert_eq(conc_socket_set_timeout(a2, GUARD), 0);
    int n = conc_socket_fd(a), n2 = conc_socket_fd(a2);
    conc_greenlet *g1, *g2;
    cr_assert_eq(conc_greenlet_spawn(&g1, recv_one_body, a, NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&g2, recv_one_body, a2, NULL), 0);
    cr_assert_eq(conc_sleep(0), 0);
    cr_assert_eq(epoll_registrations(n, NULL), 1);
    cr_assert_eq(epoll_registrations(n2, NULL), 1);
    /* Two bytes, one each (either may take either). */
    cr_assert_eq(conc_socket_send(b, "pq", 2, 0), 2);
    void *v1 = NULL, *v2 = NULL;
    cr_assert_eq(conc_greenlet_join(g1, GUARD), 0);
    cr_assert_eq(conc_greenlet_join(g2, GUARD), 0);
    cr_assert_eq(conc_greenlet_result(g1, &v1), 0);
    cr_assert_eq(conc_greenlet_result(g2, &v2), 0);
    cr_assert((intptr_t)v1 + (intptr_t)v2 == 'p' + 'q' && v1 != v2);
    conc_greenlet_free(g1);
    conc_greenlet_free(g2);
    cr_assert_eq(conc_socket_close(a), 0);
    cr_assert_eq(epoll_registrations(n, NULL), 0);
    cr_assert_eq(epoll_registrations(n2, NULL), 1);
    cr_assert_eq(wait_then_send(a2, b, 'r'), 'r');
    conc_socket_free(a);
    conc_socket_free(a2);
    conc_socket_free(b);
    cr_assert_eq(conc_hub_free(), 0);
}

/* ------------------------------------- a level wait on an edge record */

static void *fd_wait_body(void *arg)
{
    return (void *)(intptr_t)conc_fd_wait(*(int *)arg, POLLIN, GUARD);
}

struct level_args {
    conc_socket *a, *b, *e, *f;
};

static void *level_body(void *arg)
{
    struct level_args *l = arg;
    int na = conc_socket_fd(l->a), ne = conc_socket_fd(l->e);
    /* Registered edge-triggered by a wait that timed out. */
    cr_assert_eq(conc_socket_recv_until(l->a, &(char){ 0 }, 1, 0, soon()),
                 -ETIMEDOUT);
    /* Data for a, whose edge the hub takes while nobody waits on a: it
     * polls for a waiter of e, made ready by the second write. */
    conc_greenlet *w;
    cr_assert_eq(conc_greenlet_spawn(&w, fd_wait_body, &ne, NULL), 0);
    cr_assert_eq(conc_sleep(0), 0);
    cr_assert_eq(conc_socket_send(l->b, "x", 1, 0), 1);
    cr_assert_eq(conc_socket_send(l->f, "e", 1, 0), 1);
    cr_assert_eq(conc_greenlet_join(w, GUARD), 0);
    void *v = (void *)1;
    cr_assert_eq(conc_greenlet_result(w, &v), 0);
    cr_assert_eq((intptr_t)v, 0);
    conc_greenlet_free(w);
    /* That edge is gone; a level wait must still see a readable. */
    cr_assert_eq(conc_fd_wait(na, POLLIN, GUARD), 0);
    cr_assert_eq(conc_fd_wait(na, POLLOUT, GUARD), 0);
    char c = 0;
    cr_assert_eq(conc_socket_recv(l->a, &c, 1, 0), 1);
    cr_assert_eq(c, 'x');
    cr_assert_eq(conc_fd_wait(na, POLLIN, 0.02), -ETIMEDOUT);
    /* And the socket layer still waits edge-triggered afterwards. */
    uint32_t ev = 0;
    cr_assert_eq(epoll_registrations(na, &ev), 1);
    cr_assert_eq(ev & EDGE_MASK, EDGE_MASK, "events 0x%x", ev);
    return NULL;
}

Test(hub_edges, level_wait_on_edge_registered_socket, .timeout = 60)
{
    struct level_args l;
    pair(&l.a, &l.b);
    pair(&l.e, &l.f);
    cr_assert_null(in_greenlet(level_body, &l));
    cr_assert_eq(wait_then_send(l.a, l.b, 's'), 's');
    conc_socket_free(l.a);
    conc_socket_free(l.b);
    conc_socket_free(l.e);
    conc_socket_free(l.f);
    cr_assert_eq(conc_hub_free(), 0);
}

/* A pipe waited on with conc_fd_wait stays one-shot (level semantics). */
Test(hub_edges, pipe_waits_stay_one_shot, .timeout = 60)
{
    int p[2];
    cr_assert_eq(pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
    conc_greenlet *g;
    cr_assert_eq(conc_greenlet_spawn(&g, fd_wait_body, &p[0], NULL), 0);
    cr_assert_eq(conc_sleep(0), 0);
    uint32_t ev = 0;
    cr_assert_eq(epoll_registrations(p[0], &ev), 1);
    cr_assert(ev & EPOLLONESHOT, "events 0x%x", ev);
    cr_assert_not(ev & EPOLLET, "events 0x%x", ev);
    cr_assert_eq(write(p[1], "1", 1), 1);
    cr_assert_eq(conc_greenlet_join(g, GUARD), 0);
    void *v = (void *)1;
    cr_assert_eq(conc_greenlet_result(g, &v), 0);
    cr_assert_eq((intptr_t)v, 0);
    conc_greenlet_free(g);
    /* Not read: still readable for the next level wait. */
    cr_assert_eq((intptr_t)in_greenlet(fd_wait_body, &p[0]), 0);
    close(p[0]);
    close(p[1]);
    cr_assert_eq(conc_hub_free(), 0);
}

/* ------------------------------------------------------ Unix datagrams */

struct dgram_reader {
    int fd;
    int want;
    int bad;
};

static void *dgram_thread(void *arg)
{
    struct dgram_reader *r = arg;
    for (int i = 0; i < r->want;) {
        int v = -1;
        ssize_t n = read(r->fd, &v, sizeof v);
        if (n < 0 && errno == EAGAIN) {
            struct pollfd p = { .fd = r->fd, .events = POLLIN };
            poll(&p, 1, 1000);
            continue;
        }
        if (n != sizeof v || v != i)
            r->bad = 1;
        i++;
    }
    return NULL;
}

enum { DGRAMS = 5000 };

static void *dgram_send_body(void *arg)
{
    conc_socket *s = arg;
    for (int i = 0; i < DGRAMS; i++) {
        ssize_t n = conc_socket_send(s, &i, sizeof i, 0);
        if (n != sizeof i)
            return (void *)(intptr_t)(n < 0 ? n : -1000);
    }
    return NULL;
}

/* A Unix datagram sender blocked on its receiver's full queue (the
 * receiver bound, not connected back, so its queue length is what blocks)
 * is woken when the receiver reads, a wake-up the kernel relays from the
 * receiver's queue to the sender's waiters. */
Test(hub_edges, unix_datagram_sender_blocked, .timeout = 60)
{
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    int len = snprintf(addr.sun_path + 1, sizeof addr.sun_path - 1, "conc-hub-edges-%d",
                       (int)getpid());
    socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)len);
    int rfd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int sfd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(rfd, 0);
    cr_assert_geq(sfd, 0);
    cr_assert_eq(bind(rfd, (struct sockaddr *)&addr, alen), 0);
    cr_assert_eq(connect(sfd, (struct sockaddr *)&addr, alen), 0);
    conc_socket *a, *b;
    cr_assert_eq(conc_socket_from_fd(&a, sfd), 0);
    cr_assert_eq(conc_socket_from_fd(&b, rfd), 0);
    cr_assert_eq(conc_socket_set_timeout(a, GUARD), 0);
    conc_greenlet *g;
    cr_assert_eq(conc_greenlet_spawn(&g, dgram_send_body, a, NULL), 0);
    cr_assert_eq(conc_sleep(0), 0);     /* sends until the queue is full */
    cr_assert_not(conc_greenlet_dead(g));
    struct dgram_reader r = { conc_socket_fd(b), DGRAMS, 0 };
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, dgram_thread, &r), 0);
    cr_assert_eq(conc_greenlet_join(g, GUARD), 0);
    void *v = (void *)1;
    cr_assert_eq(conc_greenlet_result(g, &v), 0);
    cr_assert_null(v, "sender: %s", conc_strerror((int)(intptr_t)v));
    pthread_join(t, NULL);
    cr_assert_eq(r.bad, 0);
    conc_greenlet_free(g);
    conc_socket_free(a);
    conc_socket_free(b);
    cr_assert_eq(conc_hub_free(), 0);
}

/* ------------------------------------- two hubs and a plain thread */

enum { PER_HUB = 8 };

struct ping {
    conc_socket *s;
    int first;                  /* sends first */
    int bad;
};

static void *ping_body(void *arg)
{
    struct ping *p = arg;
    for (int r = 0; r < ROUNDS; r++) {
        uint32_t out = (uint32_t)(2 * r + (p->first ? 0 : 1)), in = 0;
        if (!p->first) {
            recv_all(p->s, &in, sizeof in);
            if (in != out - 1)
                p->bad = 1;
        }
        if (conc_socket_sendall(p->s, &out, sizeof out, 0, NULL) != 0)
            p->bad = 1;
        if (p->first) {
            recv_all(p->s, &in, sizeof in);
            if (in != out + 1)
                p->bad = 1;
        }
    }
    return NULL;
}

/* A thread with a hub: its greenlets play their ends. */
static void *hub_thread(void *arg)
{
    struct ping *p = arg;
    conc_greenlet *g[PER_HUB];
    for (int i = 0; i < PER_HUB; i++)
        if (conc_greenlet_spawn(&g[i], ping_body, &p[i], NULL) != 0)
            return (void *)1;
    for (int i = 0; i < PER_HUB; i++) {
        if (conc_greenlet_join(g[i], 100.0) != 0)
            return (void *)2;
        conc_greenlet_free(g[i]);
    }
    return conc_hub_free() == 0 ? NULL : (void *)3;
}

/* Sockets between the greenlets of two hubs (two epoll sets, one
 * registration in each), and a plain thread playing one more end through
 * the same calls (its waits block the thread: no hub). */
Test(hub_edges, sockets_between_two_hubs_and_a_plain_thread, .timeout = 120)
{
    struct ping x[PER_HUB], y[PER_HUB], plain[2];
    for (int i = 0; i < PER_HUB; i++) {
        conc_socket *a, *b;
        pair(&a, &b);
        x[i] = (struct ping){ a, i % 2, 0 };
        y[i] = (struct ping){ b, !(i % 2), 0 };
    }
    conc_socket *a, *b;
    pair(&a, &b);
    plain[0] = (struct ping){ a, 1, 0 };
    plain[1] = (struct ping){ b, 0, 0 };
    pthread_t tx, ty, tp;
    cr_assert_eq(pthread_create(&tx, NULL, hub_thread, x), 0);
    cr_assert_eq(pthread_create(&ty, NULL, hub_thread, y), 0);
    cr_assert_eq(pthread_create(&tp, NULL, ping_body, &plain[0]), 0);
    conc_greenlet *g;
    cr_assert_eq(conc_greenlet_spawn(&g, ping_body, &plain[1], NULL), 0);
    cr_assert_eq(conc_greenlet_join(g, 100.0), 0);     /* runs this hub */
    conc_greenlet_free(g);
    void *v;
    cr_assert_eq(pthread_join(tx, &v), 0);
    cr_assert_null(v);
    cr_assert_eq(pthread_join(ty, &v), 0);
    cr_assert_null(v);
    cr_assert_eq(pthread_join(tp, &v), 0);
    for (int i = 0; i < PER_HUB; i++) {
        cr_assert_eq(x[i].bad, 0);
        cr_assert_eq(y[i].bad, 0);
        conc_socket_free(x[i].s);
        conc_socket_free(y[i].s);
    }
    cr_assert_eq(plain[0].bad, 0);
    cr_assert_eq(plain[1].bad, 0);
    conc_socket_free(a);
    conc_socket_free(b);
    cr_assert_eq(conc_hub_free(), 0);
}

/* ------------------------------------ the coroutine server's acceptor */

static int acc_handle(conc_server_request *req)
{
    char buf[256];
    for (;;) {
        ssize_t n = conc_socket_recv(req->sock, buf, sizeof buf, 0);
        if (n <= 0)
            return n == 0 ? 0 : (int)n;
        int rc = conc_socket_sendall(req->sock, buf, (size_t)n, 0, NULL);
        if (rc < 0)
            return rc;
    }
}

struct serving {
    conc_server *s;
    int rc;
};

static void *serve_main(void *arg)
{
    struct serving *v = arg;
    v->rc = conc_server_serve_forever(v->s, CONC_SERVER_POLL_INTERVAL);
    return NULL;
}

/* The acceptor takes connections through the socket layer: its listening
 * socket is registered once, edge-triggered, and connections that come in
 * rounds, each after the acceptor waited, are all served. */
Test(hub_edges, coroutine_acceptor_waits_edge_triggered, .timeout = 60)
{
    conc_sockaddr addr;
    cr_assert_eq(conc_sockaddr_inet(&addr, AF_INET, "127.0.0.1", 0), 0);
    conc_server_opts o = CONC_SERVER_OPTS_INIT;
    o.model = CONC_SERVER_COROUTINE;
    o.workers = 1;
    o.request_queue_size = 64;      /* a round's connects all in the backlog */
    conc_server *s;
    cr_assert_eq(conc_server_new(&s, SOCK_STREAM, &addr,
                                 &(conc_server_handler){ .handle = acc_handle }, &o), 0);
    cr_assert_eq(conc_server_address(s, &addr), 0);
    int lfd = conc_server_fd(s);
    cr_assert_geq(lfd, 0);
    struct serving v = { s, -1 };
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, serve_main, &v), 0);
    enum { ROUNDS_OF = 5, PER_ROUND = 8 };
    for (int round = 0; round < ROUNDS_OF; round++) {
        conc_socket *c[PER_ROUND];
        for (int i = 0; i < PER_ROUND; i++) {
            cr_assert_eq(conc_socket_new(&c[i], AF_INET, SOCK_STREAM, 0), 0);
            cr_assert_eq(conc_socket_set_timeout(c[i], GUARD), 0);
            cr_assert_eq(conc_socket_connect(c[i], &addr), 0);
        }
        for (int i = 0; i < PER_ROUND; i++) {
            char msg[2] = { (char)('a' + round), (char)('0' + i) }, got[2];
            cr_assert_eq(conc_socket_sendall(c[i], msg, 2, 0, NULL), 0);
            recv_all(c[i], got, 2);
            cr_assert_arr_eq(got, msg, 2);
        }
        for (int i = 0; i < PER_ROUND; i++)
            conc_socket_free(c[i]);
    }
    uint32_t ev = 0;
    cr_assert_eq(epoll_registrations(lfd, &ev), 1);
    cr_assert_eq(ev & EDGE_MASK, EDGE_MASK, "events 0x%x", ev);
    cr_assert_not(ev & EPOLLONESHOT, "events 0x%x", ev);
    cr_assert_eq(conc_server_shutdown(s), 0);
    cr_assert_eq(pthread_join(t, NULL), 0);
    cr_assert_eq(v.rc, 0, "serve_forever: %s", conc_strerror(v.rc));
    conc_server_stats st;
    cr_assert_eq(conc_server_get_stats(s, &st), 0);
    cr_assert_eq(st.accepted, (uint64_t)(ROUNDS_OF * PER_ROUND));
    cr_assert_eq(st.failed, 0);
    conc_server_free(s);
}
