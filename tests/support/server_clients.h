/*
 * server_clients.h - what the server tests' clients and serving threads
 * share: serve_forever in a thread of its own (start, stop), and clients
 * that run in a process of their own (client_proc) with plain blocking
 * sockets: CHECK, the pipe handshake, dial, recv_retry, read_exact and
 * exchange (a message sent in pieces, its upper-cased echo checked).
 *
 * Clients run in a process of their own, with one thread (TSan allows no
 * thread in a child forked from a process with several, so the clients
 * are forked before the server's threads start): a forking server's
 * children would otherwise hold copies of the clients' sockets, made in
 * the same process, and never see them close.  There a failed check exits
 * with 3 instead of reporting to Criterion.
 */
#ifndef CONC_TEST_SERVER_CLIENTS_H
#define CONC_TEST_SERVER_CLIENTS_H

#include <criterion/criterion.h>

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conc.h"
#include "support/server_test.h"

/* ------------------------------------------------------------- serving */

/* serve_forever in a thread of its own: start, then stop (shutdown_wait,
 * the thread joined, serve_forever's 0 checked). */
struct running {
    conc_server *s;
    pthread_t t;
    pid_t tid;                      /* the serving thread, once it runs */
    int rc;
    double poll;                    /* poll_interval; 0: 0.5 */
};

static inline void *serve_main(void *arg)
{
    struct running *r = arg;
    r->tid = conc_thread_get_native_id();
    r->rc = conc_server_serve_forever(r->s, r->poll > 0 ? r->poll : 0.5);
    return NULL;
}

static inline void start(struct running *r, conc_server *s)
{
    memset(r, 0, sizeof *r);
    r->s = s;
    r->rc = 1;
    cr_assert_eq(pthread_create(&r->t, NULL, serve_main, r), 0);
}

static inline void stop(struct running *r)
{
    cr_assert_eq(conc_server_shutdown_wait(r->s, SERVER_TEST_GUARD), 0);
    pthread_join(r->t, NULL);
    cr_assert_eq(r->rc, 0, "serve_forever: %s", conc_strerror(r->rc));
}

/* ------------------------------------------------------------- clients */

static bool in_client_proc;

#define CHECK(cond, ...)                                                     \
    do {                                                                     \
        if (!(cond)) {                                                       \
            if (in_client_proc) {                                            \
                fprintf(stderr, "client line %d: ", __LINE__);               \
                fprintf(stderr, __VA_ARGS__);                                \
                fputc('\n', stderr);                                         \
                _exit(3);                                                    \
            }                                                                \
            cr_assert_fail(__VA_ARGS__);                                     \
        }                                                                    \
    } while (0)

static inline pid_t client_proc(void (*fn)(void *), void *arg)
{
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        in_client_proc = true;
        fn(arg);
        _exit(0);
    }
    return pid;
}

static inline void client_proc_wait(pid_t pid)
{
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the clients failed (status %#x)", st);
}

/* A one-byte handshake over a pipe between the test and its clients. */
static inline void hs_send(int fd)
{
    CHECK(write(fd, "x", 1) == 1, "handshake write");
}

static inline void hs_recv(int fd)
{
    char c;
    ssize_t n;
    do
        n = read(fd, &c, 1);
    while (n < 0 && errno == EINTR);
    CHECK(n == 1, "handshake read");
}

/* The hang guard on a client's socket: its blocking calls fail with
 * EAGAIN after SERVER_TEST_GUARD seconds. */
static inline void guard(int fd)
{
    struct timeval tv = { .tv_sec = (time_t)SERVER_TEST_GUARD };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

/* A client connected to the stream server s (its address, its family),
 * with a receive buffer of rcvbuf bytes set before the connect (0: the
 * kernel's default, growing as it likes). */
static inline int dial_rcvbuf(conc_server *s, int rcvbuf)
{
    conc_sockaddr a;
    cr_assert_eq(conc_server_address(s, &a), 0);
    int fd = socket(a.u.sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0, "socket");
    guard(fd);
    if (rcvbuf > 0)
        CHECK(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf) == 0,
              "SO_RCVBUF: %s", strerror(errno));
    CHECK(connect(fd, &a.u.sa, a.len) == 0, "connect: %s", strerror(errno));
    return fd;
}

static inline int dial(conc_server *s)
{
    return dial_rcvbuf(s, 0);
}

/* recv(2), again after a signal (the forking server's children end). */
static inline ssize_t recv_retry(int fd, void *buf, size_t n, int flags)
{
    ssize_t m;
    do
        m = recv(fd, buf, n, flags);
    while (m < 0 && errno == EINTR);
    return m;
}

static inline void read_exact(int fd, char *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t m = recv_retry(fd, buf + got, n - got, 0);
        CHECK(m > 0, "recv: %zd %s (got %zu of %zu)", m, strerror(errno), got, n);
        got += (size_t)m;
    }
}

/* Sends msg in pieces of `piece` bytes and checks the upper-cased echo. */
static inline void exchange(int fd, const char *msg, size_t piece)
{
    size_t n = strlen(msg);
    for (size_t off = 0; off < n; off += piece) {
        size_t k = n - off < piece ? n - off : piece;
        CHECK(send(fd, msg + off, k, MSG_NOSIGNAL) == (ssize_t)k, "send: %s", strerror(errno));
    }
    char *want = strdup(msg), *got = calloc(1, n + 1);
    CHECK(want && got, "out of memory");
    upper(want, n);
    read_exact(fd, got, n);
    CHECK(strcmp(got, want) == 0, "got '%s', want '%s'", got, want);
    free(want);
    free(got);
}

#endif
