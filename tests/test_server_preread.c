/*
 * test_server_preread.c - the coroutine server's reads made by its hub.
 *
 * A greenlet of the coroutine server parked in a plain recv of its
 * connection has the read made by the hub when the hub takes the
 * socket's edge, into the hub's own arena, before any greenlet of the
 * batch runs (src/hub.c, "pre-reads").  These tests check that no byte is
 * lost, duplicated or reordered by it (requests bigger than the pre-read's
 * cap, whose rest comes through the greenlet's own reads; reads that fill
 * the handler's small buffer, which must not count as draining the
 * socket: with that mistake the small-reads test hangs), that a reset
 * reaches the handler, and that a kill or a timeout that lands in the same
 * pass as the data keeps the bytes.
 *
 * The last two arrange the pass: a greenlet of the server's hub blocks the
 * hub's thread in a plain read of a pipe (no hub can run meanwhile) while
 * the test makes both things happen; once let go, the hub finds them
 * together.
 *
 * Criterion runs every test in its own process.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conc.h"
#include "support/server_test.h"

#define GUARD SERVER_TEST_GUARD

/* ------------------------------------------------------------ serving */

struct running {
    conc_server *s;
    pthread_t t;
    _Atomic pid_t tid;
    int rc;
};

static void *serve_main(void *arg)
{
    struct running *r = arg;
    atomic_store(&r->tid, conc_thread_get_native_id());
    r->rc = conc_server_serve_forever(r->s, 0.5);
    return NULL;
}

/* A coroutine server of one hub with handler h on 127.0.0.1, serving in a
 * thread of its own; *port is its port. */
static void start(struct running *r, const conc_server_handler *h, int stack, int *port)
{
    conc_sockaddr a;
    cr_assert_eq(conc_sockaddr_inet(&a, AF_INET, "127.0.0.1", 0), 0);
    conc_server_opts o = CONC_SERVER_OPTS_INIT;
    o.model = CONC_SERVER_COROUTINE;
    o.workers = 1;
    o.request_queue_size = 64;
    o.stack = stack;
    memset(r, 0, sizeof *r);
    int rc = conc_server_new(&r->s, SOCK_STREAM, &a, h, &o);
    cr_assert_eq(rc, 0, "new: %s", conc_strerror(rc));
    conc_sockaddr bound;
    cr_assert_eq(conc_server_address(r->s, &bound), 0);
    *port = ntohs(bound.u.in.sin_port);
    r->rc = 1;
    cr_assert_eq(pthread_create(&r->t, NULL, serve_main, r), 0);
}

static void stop(struct running *r, conc_server_stats *st)
{
    cr_assert_eq(conc_server_shutdown_wait(r->s, GUARD), 0);
    pthread_join(r->t, NULL);
    cr_assert_eq(r->rc, 0, "serve_forever: %s", conc_strerror(r->rc));
    cr_assert_eq(conc_server_get_stats(r->s, st), 0);
    cr_assert_eq(st->active, 0);
    conc_server_free(r->s);
}

/* A blocking client connection to 127.0.0.1:port. */
static int dial(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0, "connect: %s",
                 strerror(errno));
    struct timeval tv = { .tv_sec = (time_t)GUARD };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return fd;
}

static bool send_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        ssize_t m = send(fd, c, n, MSG_NOSIGNAL);
        if (m <= 0)
            return false;
        c += m;
        n -= (size_t)m;
    }
    return true;
}

static bool recv_all(int fd, void *p, size_t n)
{
    char *c = p;
    while (n > 0) {
        ssize_t m = recv(fd, c, n, 0);
        if (m <= 0)
            return false;
        c += m;
        n -= (size_t)m;
    }
    return true;
}

/* --------------------------------------------------------- many sizes */

/* Echoes upper-cased until the client closes, through a buffer of the
 * size the handler's user pointer gives: bigger than the pre-read's cap
 * (4 KiB), or smaller than most requests (every read fills it: none of
 * them drains the socket). */
static int big_echo(conc_server_request *req)
{
    size_t cap = (size_t)(uintptr_t)req->user;
    char *buf = malloc(cap);
    if (!buf)
        return -ENOMEM;
    int rc = 0;
    for (;;) {
        ssize_t n = conc_socket_recv(req->sock, buf, cap, 0);
        if (n <= 0) {
            rc = (int)n;
            break;
        }
        upper(buf, (size_t)n);
        rc = conc_socket_sendall(req->sock, buf, (size_t)n, 0, NULL);
        if (rc < 0)
            break;
    }
    free(buf);
    return rc;
}


#define CLIENTS 50
#define MAX_REQ (20 * 1024)

struct client {
    int port, id;
    _Atomic int ok;
    char what[128];
};

static uint32_t next_rand(uint32_t *s)
{
    *s = *s * 1103515245u + 12345u;
    return *s >> 8;
}

/* Requests of 1 byte to 20 KiB, each a pattern of its own in lower case:
 * every byte must come back upper-cased, in order, and then the end of
 * the stream once the client is done. */
static void *client_main(void *arg)
{
    struct client *c = arg;
    static const size_t fixed[] = { 1, 2, 4095, 4096, 4097, 8192, MAX_REQ };
    char *out = malloc(MAX_REQ), *in = malloc(MAX_REQ);
    int fd = dial(c->port);
    uint32_t seed = (uint32_t)c->id * 7919u + 1;
    bool ok = out && in;
    for (int round = 0; ok && round < 24; round++) {
        size_t n = round < 7 ? fixed[round] : 1 + next_rand(&seed) % MAX_REQ;
        for (size_t i = 0; i < n; i++)
            out[i] = (char)('a' + (next_rand(&seed) + i) % 26);
        if (!send_all(fd, out, n) || !recv_all(fd, in, n)) {
            snprintf(c->what, sizeof c->what, "round %d (%zu bytes): %s", round, n,
                     strerror(errno));
            ok = false;
            break;
        }
        upper(out, n);
        if (memcmp(in, out, n) != 0) {
            size_t i = 0;
            while (in[i] == out[i])
                i++;
            snprintf(c->what, sizeof c->what, "round %d (%zu bytes): byte %zu differs", round,
                     n, i);
            ok = false;
        }
    }
    if (ok) {
        shutdown(fd, SHUT_WR);
        char x;
        ssize_t m = recv(fd, &x, 1, 0);
        if (m != 0) {
            snprintf(c->what, sizeof c->what, "no end of stream: %zd (%s)", m,
                     m < 0 ? strerror(errno) : "a byte");
            ok = false;
        }
    }
    close(fd);
    free(out);
    free(in);
    atomic_store(&c->ok, ok);
    return NULL;
}

static void many_sizes(int stack, size_t buf)
{
    int fds = base_fds();
    struct running r;
    int port;
    conc_server_handler h = { .handle = big_echo, .user = (void *)(uintptr_t)buf };
    start(&r, &h, stack, &port);
    static struct client cl[CLIENTS];
    pthread_t t[CLIENTS];
    for (int i = 0; i < CLIENTS; i++) {
        cl[i] = (struct client){ .port = port, .id = i };
        cr_assert_eq(pthread_create(&t[i], NULL, client_main, &cl[i]), 0);
    }
    for (int i = 0; i < CLIENTS; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < CLIENTS; i++)
        cr_assert(atomic_load(&cl[i].ok), "client %d: %s", i, cl[i].what);
    conc_server_stats st;
    stop(&r, &st);
    cr_assert_eq(st.accepted, CLIENTS);
    cr_assert_eq(st.finished, CLIENTS);
    cr_assert_eq(st.failed, 0);
    cr_assert_eq(count_fds(), fds);
}

Test(server_preread, fifty_clients_every_size, .timeout = 120)
{
    many_sizes(CONC_STACK_OWN, 32768);
}

Test(server_preread, fifty_clients_every_size_copied_stacks, .timeout = 120)
{
    many_sizes(CONC_STACK_COPIED, 32768);
}

Test(server_preread, fifty_clients_every_size_small_reads, .timeout = 120)
{
    many_sizes(CONC_STACK_OWN, 512);
}

/* -------------------------------------------------------------- reset */

static _Atomic int first_len = -1000, reset_rc = -1000;
static _Atomic int parked_once;

/* Answers one request, then reads again and records what that read says. */
static int answer_then_record(conc_server_request *req)
{
    char buf[256];
    ssize_t n = conc_socket_recv(req->sock, buf, sizeof buf, 0);
    atomic_store(&first_len, (int)n);
    if (n <= 0)
        return (int)n;
    upper(buf, (size_t)n);
    int rc = conc_socket_sendall(req->sock, buf, (size_t)n, 0, NULL);
    if (rc < 0)
        return rc;
    atomic_store(&parked_once, 1);
    n = conc_socket_recv(req->sock, buf, sizeof buf, 0);
    atomic_store(&reset_rc, (int)n);
    return n < 0 ? (int)n : 0;
}

static const conc_server_handler record_handler = { .handle = answer_then_record };

/* A client that resets while the handler waits in recv: the hub's read
 * takes the reset (the socket's error, cleared by the read that reports
 * it), which the handler's recv returns; the connection ends, nothing
 * leaks. */
Test(server_preread, reset_reaches_the_handler, .timeout = 60)
{
    int fds = base_fds();
    struct running r;
    int port;
    start(&r, &record_handler, CONC_STACK_OWN, &port);
    int fd = dial(port);
    cr_assert(send_all(fd, "abc", 3));
    char in[3];
    cr_assert(recv_all(fd, in, 3));
    cr_assert_eq(memcmp(in, "ABC", 3), 0);
    /* the handler parks in its second recv, the hub in epoll_wait */
    while (!atomic_load(&parked_once))
        sched_yield();
    wait_thread_blocked(atomic_load(&r.tid), GUARD);
    struct linger lg = { .l_onoff = 1, .l_linger = 0 };
    cr_assert_eq(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
    close(fd);                          /* sends a reset */
    conc_server_stats st;
    int64_t end = conc_now() + (int64_t)(GUARD * 1e9);
    for (;;) {
        cr_assert_eq(conc_server_get_stats(r.s, &st), 0);
        if (st.finished + st.failed == 1)
            break;
        cr_assert_lt(conc_now(), end, "the connection never ended");
        conc_sleep(0.001);
    }
    stop(&r, &st);
    cr_assert_eq(atomic_load(&first_len), 3);
    /* the hub's read took the error (a read after it would say 0) */
    int got = atomic_load(&reset_rc);
    cr_assert_eq(got, -ECONNRESET, "recv after the reset: %d", got);
    cr_assert_eq(st.failed, 1);
    cr_assert_eq(count_fds(), fds);
}

/* ------------------------------------------------- one pass, two things */

/* The handler's greenlet blocks its hub's thread in a plain read of a pipe
 * until the test writes to it: meanwhile the test makes the data arrive and
 * the other thing happen, which the hub then finds in one pass. */
static int hold[2] = { -1, -1 };        /* the pipe that holds the hub */
static int trigger[2] = { -1, -1 };     /* the killer's pipe */
static _Atomic int holding;

static void *holder_main(void *arg)
{
    (void)arg;
    atomic_store(&holding, 1);
    char x;
    ssize_t n = read(hold[0], &x, 1);   /* the whole thread sleeps */
    (void)n;
    return NULL;
}

static void *killer_main(void *arg)
{
    conc_greenlet *victim = arg;
    int rc = conc_fd_wait(trigger[0], POLLIN, GUARD);
    if (rc == 0)
        conc_greenlet_kill(victim);
    return NULL;
}

static _Atomic int got_len = -1000, after_rc = -1000, reader_done;
static char got[64];

/* Spawns the killer (waits for trigger, then kills this greenlet) and the
 * holder, then reads: the killer's wake-up and the data come in one batch,
 * the killer's first, so it kills this greenlet after the hub made the
 * read for it and made it ready.  The bytes must come back; the kill lands
 * at the next blocking call. */
static int killed_reader(conc_server_request *req)
{
    conc_greenlet *k, *h;
    if (conc_greenlet_spawn(&k, killer_main, conc_greenlet_current(), NULL) != 0)
        return -ENOMEM;
    if (conc_greenlet_spawn(&h, holder_main, NULL, NULL) != 0)
        return -ENOMEM;
    char buf[64];
    ssize_t n = conc_socket_recv(req->sock, buf, sizeof buf, 0);
    if (n > 0)
        memcpy(got, buf, (size_t)n);
    atomic_store(&got_len, (int)n);
    if (n > 0) {
        /* the kill is delivered here at the latest, or the bytes read now
         * are the ones the first read should have had */
        ssize_t m = conc_socket_recv(req->sock, buf, sizeof buf, 0);
        if (m > 0)
            memcpy(got + n, buf, (size_t)m);
        atomic_store(&after_rc, (int)m);
    }
    conc_greenlet_join(k, GUARD);
    conc_greenlet_join(h, GUARD);
    conc_greenlet_free(k);
    conc_greenlet_free(h);
    atomic_store(&reader_done, 1);
    return 0;
}

static const conc_server_handler killed_handler = { .handle = killed_reader };

static void open_pipes(void)
{
    cr_assert_eq(pipe2(hold, O_CLOEXEC), 0);
    cr_assert_eq(pipe2(trigger, O_CLOEXEC), 0);
}

static void close_pipes(void)
{
    close(hold[0]);
    close(hold[1]);
    close(trigger[0]);
    close(trigger[1]);
}

/* Opens the pipes, starts a server with handler h (own stacks) and
 * connects a client; returns the client's socket once the handler's
 * holder greenlet has blocked the hub's thread in the pipe's read. */
static int start_held(struct running *r, const conc_server_handler *h)
{
    open_pipes();
    int port;
    start(r, h, CONC_STACK_OWN, &port);
    int fd = dial(port);
    while (!atomic_load(&holding))
        sched_yield();
    wait_thread_blocked(atomic_load(&r->tid), GUARD);   /* in the pipe's read */
    return fd;
}

/* Ends what start_held began: the client's socket, the server (its one
 * connection finished), the pipes. */
static void stop_held(struct running *r, int fd)
{
    close(fd);
    conc_server_stats st;
    stop(r, &st);
    cr_assert_eq(st.finished, 1);
    close_pipes();
}

Test(server_preread, kill_in_the_pass_of_the_data_keeps_the_bytes, .timeout = 60)
{
    int fds = base_fds();
    struct running r;
    int fd = start_held(&r, &killed_handler);
    cr_assert_eq(write(trigger[1], "k", 1), 1);         /* the killer's event first */
    cr_assert(send_all(fd, "hello", 5));                /* then the data's */
    cr_assert_eq(write(hold[1], "h", 1), 1);
    int64_t end = conc_now() + (int64_t)(GUARD * 1e9);
    while (!atomic_load(&reader_done)) {
        cr_assert_lt(conc_now(), end, "the handler never ended");
        conc_sleep(0.001);
    }
    cr_assert_eq(atomic_load(&got_len), 5, "the first read: %d", atomic_load(&got_len));
    cr_assert_eq(memcmp(got, "hello", 5), 0);
    cr_assert_eq(atomic_load(&after_rc), -ECANCELED, "the second read: %d",
                 atomic_load(&after_rc));
    stop_held(&r, fd);
    cr_assert_eq(count_fds(), fds);
}

/* A read whose timeout expires while the hub is held, with the data there
 * too: the read returns the data, or times out and leaves it to the next
 * read; never both lost. */
static _Atomic int64_t read_deadline;
static _Atomic int timed_rc = -1000, next_rc = -1000;
static char timed_got[16];

static int timed_reader(conc_server_request *req)
{
    conc_greenlet *h;
    if (conc_greenlet_spawn(&h, holder_main, NULL, NULL) != 0)
        return -ENOMEM;
    char buf[16];
    int64_t d = conc_now() + 50 * 1000000;
    atomic_store(&read_deadline, d);
    ssize_t n = conc_socket_recv_until(req->sock, buf, sizeof buf, 0, d);
    if (n > 0)
        memcpy(timed_got, buf, (size_t)n);
    atomic_store(&timed_rc, (int)n);
    if (n == -ETIMEDOUT) {
        n = conc_socket_recv_until(req->sock, buf, sizeof buf, 0,
                                   conc_now() + (int64_t)(GUARD * 1e9));
        if (n > 0)
            memcpy(timed_got, buf, (size_t)n);
        atomic_store(&next_rc, (int)n);
    }
    conc_greenlet_join(h, GUARD);
    conc_greenlet_free(h);
    return 0;
}

static const conc_server_handler timed_handler = { .handle = timed_reader };

Test(server_preread, timeout_in_the_pass_of_the_data_keeps_the_bytes, .timeout = 60)
{
    int fds = base_fds();
    struct running r;
    int fd = start_held(&r, &timed_handler);
    cr_assert(send_all(fd, "tick", 4));
    while (conc_now() <= atomic_load(&read_deadline))   /* the timeout is due */
        conc_sleep(0.005);
    cr_assert_eq(write(hold[1], "h", 1), 1);
    int64_t end = conc_now() + (int64_t)(GUARD * 1e9);
    while (atomic_load(&timed_rc) == -1000 ||
           (atomic_load(&timed_rc) == -ETIMEDOUT && atomic_load(&next_rc) == -1000)) {
        cr_assert_lt(conc_now(), end, "the handler's reads never ended");
        conc_sleep(0.001);
    }
    int first = atomic_load(&timed_rc);
    cr_assert(first == 4 || (first == -ETIMEDOUT && atomic_load(&next_rc) == 4),
              "reads: %d then %d", first, atomic_load(&next_rc));
    cr_assert_eq(memcmp(timed_got, "tick", 4), 0);
    stop_held(&r, fd);
    cr_assert_eq(count_fds(), fds);
}
