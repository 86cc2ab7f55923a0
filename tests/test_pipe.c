/*
 * test_pipe.c - conc/pipe.h and conc/wait.h: Pipe and Connection (duplex
 * socketpairs and one-way pipes) between threads and between processes,
 * message framing of every size, -EMSGSIZE without loss,
 * recv_size/recv_alloc, poll and timeouts, the peer's close and death (never
 * half a message), conc_wait over connections, queues, process sentinels
 * and plain descriptors, no descriptor leaks, and the pipe-ping example.
 *
 * Criterion runs every test in its own process.  Child processes never
 * assert: they report through their exit code, and the test checks it.
 */
#include <criterion/criterion.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conc.h"
#include "support/epoll_regs.h"
#include "support/fd_count.h"

#ifndef CONC_EXAMPLES_DIR
#error "CONC_EXAMPLES_DIR must name the directory of the example binaries"
#endif

#include "support/fork_sanitizers.h"
#include "support/task_state.h"

/* ------------------------------------------------------------ helpers */

static const size_t sizes[] = { 0, 1, 4095, 4096, 65536, 10u << 20 };
#define NSIZES (sizeof sizes / sizeof sizes[0])

static unsigned char pat(size_t i, unsigned seed)
{
    return (unsigned char)(i * 131u + seed * 7u + (i >> 9));
}

static void fill(unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = pat(i, seed);
}

static bool check(const unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != pat(i, seed))
            return false;
    return true;
}

static unsigned char *pattern(size_t n, unsigned seed)
{
    unsigned char *p = malloc(n ? n : 1);
    cr_assert_not_null(p);
    fill(p, n, seed);
    return p;
}

static bool write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
            struct pollfd pfd = { .fd = fd, .events = POLLOUT };
            poll(&pfd, 1, 100);
            continue;
        }
        if (n <= 0)
            return false;
        p += n;
        len -= (size_t)n;
    }
    return true;
}

static int wait_child(pid_t pid)
{
    int st;
    while (waitpid(pid, &st, 0) < 0)
        cr_assert_eq(errno, EINTR);
    return st;
}

/* ------------------------------------------------- between threads */

struct sender {
    conc_conn *c;
    int rc;
};

static void *send_sizes(void *arg)
{
    struct sender *s = arg;
    s->rc = 0;
    for (size_t k = 0; k < NSIZES && s->rc == 0; k++) {
        unsigned char *p = malloc(sizes[k] ? sizes[k] : 1);
        if (!p) {
            s->rc = -ENOMEM;
            break;
        }
        fill(p, sizes[k], (unsigned)k);
        s->rc = conc_conn_send_bytes(s->c, p, sizes[k], CONC_FOREVER);
        free(p);
    }
    return NULL;
}

static void round_trip_threads(bool duplex)
{
    conc_conn *a, *b;
    cr_assert_eq(conc_conn_pipe(&a, &b, duplex), 0);
    /* Sizes from b to a, received by recv_bytes into a roomy buffer ... */
    struct sender s = { .c = b };
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, send_sizes, &s), 0);
    size_t cap = (10u << 20) + 100;
    unsigned char *buf = malloc(cap);
    for (size_t k = 0; k < NSIZES; k++) {
        ssize_t n = conc_conn_recv_bytes(a, buf, cap, 20.0);
        cr_assert_eq(n, (ssize_t)sizes[k], "size %zu: got %zd", sizes[k], n);
        cr_assert(check(buf, sizes[k], (unsigned)k), "size %zu corrupted", sizes[k]);
    }
    pthread_join(t, NULL);
    cr_assert_eq(s.rc, 0);
    /* ... and again through recv_alloc. */
    cr_assert_eq(pthread_create(&t, NULL, send_sizes, &s), 0);
    for (size_t k = 0; k < NSIZES; k++) {
        void *p;
        size_t len;
        cr_assert_eq(conc_conn_recv_alloc(a, &p, &len, 20.0), 0);
        cr_assert_eq(len, sizes[k]);
        cr_assert(check(p, len, (unsigned)k));
        free(p);
    }
    pthread_join(t, NULL);
    cr_assert_eq(s.rc, 0);
    if (duplex) {           /* the other direction too */
        s.c = a;
        cr_assert_eq(pthread_create(&t, NULL, send_sizes, &s), 0);
        for (size_t k = 0; k < NSIZES; k++) {
            ssize_t n = conc_conn_recv_bytes(b, buf, cap, 20.0);
            cr_assert_eq(n, (ssize_t)sizes[k]);
            cr_assert(check(buf, sizes[k], (unsigned)k));
        }
        pthread_join(t, NULL);
        cr_assert_eq(s.rc, 0);
    }
    free(buf);
    conc_conn_free(a);
    conc_conn_free(b);
}

Test(pipe, sizes_between_threads_duplex, .timeout = 30)
{
    round_trip_threads(true);
}

Test(pipe, sizes_between_threads_one_way, .timeout = 30)
{
    round_trip_threads(false);
}

#define MANY 20000

static void *send_many(void *arg)
{
    struct sender *s = arg;
    for (uint32_t i = 0; i < MANY && s->rc == 0; i++)
        s->rc = conc_conn_send_bytes(s->c, &i, (i % 3) ? sizeof i : 0, CONC_FOREVER);
    return NULL;
}

Test(pipe, many_small_messages_in_order, .timeout = 30)
{
    for (int duplex = 0; duplex < 2; duplex++) {
        conc_conn *a, *b;
        cr_assert_eq(conc_conn_pipe(&a, &b, duplex), 0);
        struct sender s = { .c = b };
        pthread_t t;
        cr_assert_eq(pthread_create(&t, NULL, send_many, &s), 0);
        for (uint32_t i = 0; i < MANY; i++) {
            uint32_t v = UINT32_MAX;
            ssize_t n = conc_conn_recv_bytes(a, &v, sizeof v, 20.0);
            if (i % 3) {
                cr_assert_eq(n, 4);
                cr_assert_eq(v, i);
            } else {
                cr_assert_eq(n, 0);
            }
        }
        pthread_join(t, NULL);
        cr_assert_eq(s.rc, 0);
        conc_conn_free(a);
        conc_conn_free(b);
    }
}

/* ------------------------------------------------- between processes */

/* Child: receive each size on in, check it, send it back on out.  Exit
 * code 0, or 10 + the index of the first failure. */
static int echo_sizes(conc_conn *in, conc_conn *out)
{
    for (size_t k = 0; k < NSIZES; k++) {
        void *p;
        size_t len;
        if (conc_conn_recv_alloc(in, &p, &len, 20.0) != 0)
            return 10 + (int)k;
        if (len != sizes[k] || !check(p, len, (unsigned)k))
            return 20 + (int)k;
        int rc = conc_conn_send_bytes(out, p, len, CONC_FOREVER);
        free(p);
        if (rc != 0)
            return 30 + (int)k;
    }
    return 0;
}

static void round_trip_fork(bool duplex)
{
    conc_conn *a, *b, *a2 = NULL, *b2 = NULL;
    cr_assert_eq(conc_conn_pipe(&a, &b, duplex), 0);
    if (!duplex)        /* the way back: a second one-way pipe */
        cr_assert_eq(conc_conn_pipe(&a2, &b2, false), 0);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        int rc = duplex ? echo_sizes(b, b) : echo_sizes(a, b2);
        _exit(rc);
    }
    conc_conn *to = duplex ? a : b, *from = duplex ? a : a2;
    struct sender s = { .c = to };
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, send_sizes, &s), 0);
    size_t cap = 10u << 20;
    unsigned char *buf = malloc(cap);
    for (size_t k = 0; k < NSIZES; k++) {
        ssize_t n = conc_conn_recv_bytes(from, buf, cap, 20.0);
        cr_assert_eq(n, (ssize_t)sizes[k], "size %zu: got %zd", sizes[k], n);
        cr_assert(check(buf, sizes[k], (unsigned)k));
    }
    pthread_join(t, NULL);
    cr_assert_eq(s.rc, 0);
    int st = wait_child(pid);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %#x", st);
    free(buf);
    conc_conn_free(a);
    conc_conn_free(b);
    conc_conn_free(a2);
    conc_conn_free(b2);
}

Test(pipe, sizes_with_fork_child_duplex, .timeout = 30)
{
    round_trip_fork(true);
}

Test(pipe, sizes_with_fork_child_one_way, .timeout = 30)
{
    round_trip_fork(false);
}

/* ------------------------------------------------- directions, errors */

Test(pipe, one_way_directions, .timeout = 30)
{
    conc_conn *a, *b;
    char c = 'x';
    cr_assert_eq(conc_conn_pipe(&a, &b, false), 0);
    cr_assert(conc_conn_readable(a));
    cr_assert_not(conc_conn_writable(a));
    cr_assert(conc_conn_writable(b));
    cr_assert_not(conc_conn_readable(b));
    cr_assert_eq(conc_conn_send_bytes(a, &c, 1, CONC_FOREVER), -EPERM);
    cr_assert_eq(conc_conn_recv_bytes(b, &c, 1, 0), -EPERM);
    cr_assert_eq(conc_conn_poll(b, 0), -EPERM);
    cr_assert_eq(conc_conn_recv_size(b, 0), -EPERM);
    cr_assert_eq(conc_conn_send_bytes(b, &c, 1, CONC_FOREVER), 0);
    cr_assert_eq(conc_conn_recv_bytes(a, &c, 1, 1.0), 1);
    conc_conn_free(a);
    conc_conn_free(b);

    cr_assert_eq(conc_conn_pipe(&a, &b, true), 0);
    cr_assert(conc_conn_readable(a) && conc_conn_writable(a));
    cr_assert(conc_conn_readable(b) && conc_conn_writable(b));
    conc_conn_free(a);
    conc_conn_free(b);
}

Test(pipe, bad_arguments_and_closed, .timeout = 30)
{
    conc_conn *a, *b;
    char buf[8];
    cr_assert_eq(conc_conn_pipe(NULL, &b, true), -EINVAL);
    cr_assert_eq(conc_conn_pipe(&a, NULL, false), -EINVAL);
    cr_assert_eq(conc_conn_send_bytes(NULL, buf, 1, CONC_FOREVER), -EINVAL);
    cr_assert_eq(conc_conn_recv_bytes(NULL, buf, 1, 0), -EINVAL);
    cr_assert_eq(conc_conn_poll(NULL, 0), -EINVAL);
    cr_assert_eq(conc_conn_fd(NULL), -EINVAL);
    cr_assert_eq(conc_conn_close(NULL), -EINVAL);
    conc_conn_free(NULL);
    cr_assert_not(conc_conn_closed(NULL), "a predicate answers false for NULL");
    cr_assert_not(conc_conn_readable(NULL));
    cr_assert_not(conc_conn_writable(NULL));

    cr_assert_eq(conc_conn_pipe(&a, &b, true), 0);
    cr_assert_eq(conc_conn_send_bytes(a, NULL, 1, CONC_FOREVER), -EINVAL);
    cr_assert_eq(conc_conn_send_bytes(a, NULL, 0, CONC_FOREVER), 0);
    cr_assert_eq(conc_conn_recv_bytes(b, NULL, 0, 1.0), 0);
    cr_assert_eq(conc_conn_recv_bytes(b, NULL, 4, 0), -EINVAL);
    cr_assert_eq(conc_conn_recv_bytes(b, buf, 8, -2.0), -EINVAL);
    cr_assert_eq(conc_conn_poll(b, -0.5), -EINVAL);
    cr_assert_eq(conc_conn_send_bytes(a, buf, 1, -3.0), -EINVAL);
    void *p;
    size_t len;
    cr_assert_eq(conc_conn_recv_alloc(b, NULL, &len, 0), -EINVAL);
    cr_assert_eq(conc_conn_recv_alloc(b, &p, NULL, 0), -EINVAL);
    cr_assert_eq(conc_conn_set_max_size(a, 0), -EINVAL);
    cr_assert_eq(conc_conn_set_max_size(a, CONC_PIPE_MSG_MAX + 1), -EINVAL);

    cr_assert_geq(conc_conn_fd(a), 0);
    cr_assert_not(conc_conn_closed(a));
    cr_assert_eq(conc_conn_close(a), 0);
    cr_assert(conc_conn_closed(a));
    cr_assert_eq(conc_conn_close(a), 0);
    cr_assert_eq(conc_conn_fd(a), -EBADF);
    cr_assert_eq(conc_conn_send_bytes(a, buf, 1, CONC_FOREVER), -EBADF);
    cr_assert_eq(conc_conn_recv_bytes(a, buf, 8, 0), -EBADF);
    cr_assert_eq(conc_conn_poll(a, 0), -EBADF);
    cr_assert_eq(conc_conn_recv_size(a, 0), -EBADF);
    conc_conn_free(a);
    conc_conn_free(b);
}

Test(pipe, max_size_gives_emsgsize, .timeout = 30)
{
    conc_conn *a, *b;
    cr_assert_eq(conc_conn_pipe(&a, &b, true), 0);
    char buf[200] = { 0 };
    cr_assert_eq(conc_conn_set_max_size(b, 100), 0);
    cr_assert_eq(conc_conn_send_bytes(b, buf, 101, CONC_FOREVER), -EMSGSIZE);
    cr_assert_eq(conc_conn_send_bytes(b, buf, 100, CONC_FOREVER), 0);
    /* The receiver refuses a message over its own maximum. */
    cr_assert_eq(conc_conn_set_max_size(a, 50), 0);
    cr_assert_eq(conc_conn_recv_size(a, 1.0), -EMSGSIZE);
    cr_assert_eq(conc_conn_recv_bytes(a, buf, sizeof buf, 1.0), -EMSGSIZE);
    cr_assert_eq(conc_conn_set_max_size(a, 100), 0);
    cr_assert_eq(conc_conn_recv_bytes(a, buf, sizeof buf, 1.0), 100);
    conc_conn_free(a);
    conc_conn_free(b);
}

/* ------------------------------------------------- nothing lost */

Test(pipe, emsgsize_keeps_the_message, .timeout = 30)
{
    for (int duplex = 0; duplex < 2; duplex++) {
        conc_conn *a, *b;
        cr_assert_eq(conc_conn_pipe(&a, &b, duplex), 0);
        unsigned char *m = pattern(100, 1);
        cr_assert_eq(conc_conn_send_bytes(b, m, 100, CONC_FOREVER), 0);
        cr_assert_eq(conc_conn_send_bytes(b, "next", 4, CONC_FOREVER), 0);
        unsigned char small[10], big[100];
        cr_assert_eq(conc_conn_recv_bytes(a, small, sizeof small, 1.0), -EMSGSIZE);
        cr_assert_eq(conc_conn_recv_bytes(a, small, sizeof small, 0), -EMSGSIZE);
        cr_assert_eq(conc_conn_recv_size(a, 0), 100);
        cr_assert_eq(conc_conn_recv_size(a, 1.0), 100);
        cr_assert_eq(conc_conn_recv_bytes(a, big, sizeof big, 1.0), 100);
        cr_assert(check(big, 100, 1));
        cr_assert_eq(conc_conn_recv_bytes(a, small, sizeof small, 1.0), 4);
        cr_assert_eq(memcmp(small, "next", 4), 0);
        free(m);
        conc_conn_free(a);
        conc_conn_free(b);
    }
}

static void *send_one_big(void *arg)
{
    struct sender *s = arg;
    unsigned char *p = pattern(3u << 20, 9);
    s->rc = conc_conn_send_bytes(s->c, p, 3u << 20, CONC_FOREVER);
    free(p);
    return NULL;
}

Test(pipe, large_emsgsize_then_alloc, .timeout = 30)
{
    conc_conn *a, *b;
    cr_assert_eq(conc_conn_pipe(&a, &b, true), 0);
    struct sender s = { .c = b };
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, send_one_big, &s), 0);
    unsigned char small[4096];
    cr_assert_eq(conc_conn_recv_bytes(a, small, sizeof small, 10.0), -EMSGSIZE);
    cr_assert_eq(conc_conn_recv_size(a, 10.0), 3u << 20);
    void *p;
    size_t len;
    cr_assert_eq(conc_conn_recv_alloc(a, &p, &len, 10.0), 0);
    cr_assert_eq(len, 3u << 20);
    cr_assert(check(p, len, 9));
    free(p);
    pthread_join(t, NULL);
    cr_assert_eq(s.rc, 0);
    conc_conn_free(a);
    conc_conn_free(b);
}

Test(pipe, empty_message_alloc, .timeout = 30)
{
    conc_conn *a, *b;
    cr_assert_eq(conc_conn_pipe(&a, &b, false), 0);
    cr_assert_eq(conc_conn_send_bytes(b, NULL, 0, CONC_FOREVER), 0);
    cr_assert_eq(conc_conn_recv_size(a, 1.0), 0);
    void *p = NULL;
    size_t len = 99;
    cr_assert_eq(conc_conn_recv_alloc(a, &p, &len, 1.0), 0);
    cr_assert_not_null(p);
    cr_assert_eq(len, 0);
    free(p);
    cr_assert_eq(conc_conn_recv_alloc(a, &p, &len, 0), -EAGAIN);
    conc_conn_free(a);
    conc_conn_free(b);
}

/* A writer that sends a message's header and first part raw, waits for a
 * go, then sends the rest. */
struct raw_writer {
    int fd;
    size_t len, first;
    conc_event go;
    bool ok;
};

static void *write_in_two_parts(void *arg)
{
    struct raw_writer *w = arg;
    unsigned char hdr[8];
    for (int i = 0; i < 8; i++)
        hdr[i] = (unsigned char)((uint64_t)w->len >> (8 * i));
    unsigned char *p = pattern(w->len, 5);
    w->ok = write_all(w->fd, hdr, 8) && write_all(w->fd, p, w->first);
    if (w->ok) {
        w->ok = conc_event_wait(&w->go, 20.0) == 0 &&
                write_all(w->fd, p + w->first, w->len - w->first);
    }
    free(p);
    return NULL;
}

static void timeout_mid_message(size_t len, size_t first)
{
    conc_conn *a, *b;
    cr_assert_eq(conc_conn_pipe(&a, &b, true), 0);
    struct raw_writer w = { .fd = conc_conn_fd(b), .len = len, .first = first,
                            .go = CONC_EVENT_INIT };
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, write_in_two_parts, &w), 0);
    unsigned char *buf = malloc(len);
    cr_assert_eq(conc_conn_recv_bytes(a, buf, len, 0.3), -ETIMEDOUT);
    cr_assert_eq(conc_conn_recv_bytes(a, buf, len, 0), -EAGAIN);
    cr_assert_eq(conc_conn_recv_size(a, 0), (ssize_t)len);
    conc_event_set(&w.go);
    memset(buf, 0, len);
    cr_assert_eq(conc_conn_recv_bytes(a, buf, len, 20.0), (ssize_t)len);
    cr_assert(check(buf, len, 5));
    pthread_join(t, NULL);
    cr_assert(w.ok);
    /* The connection is in step: the next message comes whole. */
    cr_assert_eq(conc_conn_send_bytes(b, "after", 5, CONC_FOREVER), 0);
    char tail[8];
    cr_assert_eq(conc_conn_recv_bytes(a, tail, sizeof tail, 5.0), 5);
    cr_assert_eq(memcmp(tail, "after", 5), 0);
    free(buf);
    conc_conn_free(a);
    conc_conn_free(b);
}

Test(pipe, recv_timeout_mid_large_message_keeps_it, .timeout = 30)
{
    timeout_mid_message(2u << 20, 700u << 10);
}

Test(pipe, recv_timeout_mid_small_message_keeps_it, .timeout = 30)
{
    timeout_mid_message(1000, 300);
}

/* ------------------------------------------------- poll and timeouts */

Test(pipe, poll_and_timeouts, .timeout = 30)
{
    for (int duplex = 0; duplex < 2; duplex++) {
        conc_conn *a, *b;
        char buf[16];
        cr_assert_eq(conc_conn_pipe(&a, &b, duplex), 0);
        cr_assert_eq(conc_conn_poll(a, 0), -EAGAIN);
        int64_t t0 = conc_now();
        cr_assert_eq(conc_conn_poll(a, 0.1), -ETIMEDOUT);
        cr_assert_geq(conc_now() - t0, 90000000);
        t0 = conc_now();
        cr_assert_eq(conc_conn_recv_bytes(a, buf, sizeof buf, 0.1), -ETIMEDOUT);
        cr_assert_geq(conc_now() - t0, 90000000);
        cr_assert_eq(conc_conn_recv_bytes(a, buf, sizeof buf, 0), -EAGAIN);
        cr_assert_eq(conc_conn_recv_size(a, 0.05), -ETIMEDOUT);
        cr_assert_eq(conc_conn_recv_bytes_until(a, buf, sizeof buf, conc_now() + 50000000),
                     -ETIMEDOUT);
        cr_assert_eq(conc_conn_send_bytes(b, "hello", 5, CONC_FOREVER), 0);
        cr_assert_eq(conc_conn_poll(a, 0), 0);
        cr_assert_eq(conc_conn_poll(a, CONC_FOREVER), 0);
        cr_assert_eq(conc_conn_poll_until(a, 0), 0);
        cr_assert_eq(conc_conn_recv_bytes(a, buf, sizeof buf, 0), 5);
        cr_assert_eq(conc_conn_poll(a, 0), -EAGAIN);
        conc_conn_free(a);
        conc_conn_free(b);
    }
}

/* Python's _TestPoll.test_boundaries: poll() never takes bytes out of the
 * descriptor, so another holder of the same receive end gets every message
 * whole.  Here a second handle on a dup of the descriptor. */
Test(pipe, poll_leaves_bytes_to_another_holder, .timeout = 30)
{
    for (int duplex = 0; duplex < 2; duplex++) {
        conc_conn *a, *b, *other;
        char buf[64];
        cr_assert_eq(conc_conn_pipe(&a, &b, duplex), 0);
        int fd2 = dup(conc_conn_fd(a));
        cr_assert_geq(fd2, 0);
        cr_assert_eq(conc_conn_from_fd(&other, fd2, CONC_CONN_READABLE), 0);
        cr_assert_eq(conc_conn_send_bytes(b, "first", 5, CONC_FOREVER), 0);
        cr_assert_eq(conc_conn_poll(a, 5.0), 0);
        cr_assert_eq(conc_conn_poll(a, 0), 0, "still there");
        cr_assert_eq(conc_conn_recv_bytes(other, buf, sizeof buf, 0), 5,
                     "the other holder gets the whole first message");
        cr_assert_eq(memcmp(buf, "first", 5), 0);

        /* conc_wait does not take them either. */
        cr_assert_eq(conc_conn_send_bytes(b, "second", 6, CONC_FOREVER), 0);
        conc_waitable w = { .kind = CONC_WAIT_CONN, .u.conn = a };
        cr_assert_eq(conc_wait(&w, 1, 5.0), 1);
        cr_assert(w.ready);
        struct pollfd pfd = { .fd = fd2, .events = POLLIN };
        cr_assert_eq(poll(&pfd, 1, 0), 1, "the bytes are still in the descriptor");
        cr_assert_eq(conc_conn_recv_bytes(other, buf, sizeof buf, 0), 6);
        cr_assert_eq(memcmp(buf, "second", 6), 0);

        /* Nothing left for anybody: both report it. */
        cr_assert_eq(conc_conn_poll(a, 0), -EAGAIN);
        cr_assert_eq(conc_wait(&w, 1, 0), -EAGAIN);
        cr_assert_eq(conc_conn_recv_bytes(a, buf, sizeof buf, 0), -EAGAIN);

        /* The peer's close is seen by poll and wait, and taken by nobody. */
        conc_conn_free(b);
        cr_assert_eq(conc_conn_poll(a, 5.0), 0);
        cr_assert_eq(conc_wait(&w, 1, 5.0), 1);
        cr_assert_eq(conc_conn_recv_bytes(other, buf, sizeof buf, 0), -EPIPE);
        cr_assert_eq(conc_conn_recv_bytes(a, buf, sizeof buf, 0), -EPIPE);
        conc_conn_free(other);
        conc_conn_free(a);
    }
}

/* The same with a forked child that polls while the parent sends: the
 * parent then receives both messages, whole and in order. */
Test(pipe, poll_in_child_leaves_messages_to_parent, .timeout = 30)
{
    for (int duplex = 0; duplex < 2; duplex++) {
        conc_conn *a, *b;
        cr_assert_eq(conc_conn_pipe(&a, &b, duplex), 0);
        fflush(NULL);
        pid_t pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
            conc_conn_free(b);
            int rc = conc_conn_poll(a, 20.0);
            _exit(rc == 0 ? 0 : 1);
        }
        /* The child is asleep in its poll before anything is sent. */
        wait_proc_blocked(pid, BLOCKED_GUARD);
        cr_assert_eq(conc_conn_send_bytes(b, "first", 5, CONC_FOREVER), 0);
        cr_assert_eq(conc_conn_send_bytes(b, "second", 6, CONC_FOREVER), 0);
        conc_conn_free(b);
        int st = wait_child(pid);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %#x", st);
        char buf[64];
        cr_assert_eq(conc_conn_recv_bytes(a, buf, sizeof buf, 5.0), 5);
        cr_assert_eq(memcmp(buf, "first", 5), 0);
        cr_assert_eq(conc_conn_recv_bytes(a, buf, sizeof buf, 5.0), 6);
        cr_assert_eq(memcmp(buf, "second", 6), 0);
        cr_assert_eq(conc_conn_recv_bytes(a, buf, sizeof buf, 5.0), -EPIPE);
        conc_conn_free(a);
    }
}

/* The test's thread, for helpers that act only once it sleeps in its wait. */
static pid_t test_tid;

static void *send_later(void *arg)
{
    struct sender *s = arg;
    if (!await_task_blocked(getpid(), test_tid, BLOCKED_GUARD)) {
        s->rc = -ETIMEDOUT;
        return NULL;
    }
    s->rc = conc_conn_send_bytes(s->c, "late", 4, CONC_FOREVER);
    return NULL;
}

Test(pipe, blocking_recv_and_poll_wake_up, .timeout = 30)
{
    conc_conn *a, *b;
    cr_assert_eq(conc_conn_pipe(&a, &b, true), 0);
    struct sender s = { .c = b };
    pthread_t t;
    char buf[8];
    test_tid = gettid();
    cr_assert_eq(pthread_create(&t, NULL, send_later, &s), 0);
    cr_assert_eq(conc_conn_recv_bytes(a, buf, sizeof buf, CONC_FOREVER), 4);
    pthread_join(t, NULL);
    cr_assert_eq(s.rc, 0);
    cr_assert_eq(pthread_create(&t, NULL, send_later, &s), 0);
    cr_assert_eq(conc_conn_poll(a, 10.0), 0);
    cr_assert_eq(conc_conn_recv_bytes(a, buf, sizeof buf, 10.0), 4);
    pthread_join(t, NULL);
    cr_assert_eq(s.rc, 0);
    conc_conn_free(a);
    conc_conn_free(b);
}

Test(pipe, send_timeout_when_peer_does_not_read, .timeout = 30)
{
    for (int duplex = 0; duplex < 2; duplex++) {
        conc_conn *a, *b;
        cr_assert_eq(conc_conn_pipe(&a, &b, duplex), 0);
        size_t len = 16u << 20;
        unsigned char *p = pattern(len, 3);
        int64_t t0 = conc_now();
        cr_assert_eq(conc_conn_send_bytes(b, p, len, 0.1), -ETIMEDOUT);
        cr_assert_geq(conc_now() - t0, 90000000);
        /* Part of it went out: the connection is broken for sending ... */
        cr_assert_eq(conc_conn_send_bytes(b, "x", 1, CONC_FOREVER), -EPIPE);
        /* ... and the receiver never gets half of it. */
        if (!duplex)
            conc_conn_close(b);
        unsigned char *buf = malloc(len);
        cr_assert_eq(conc_conn_recv_bytes(a, buf, len, 10.0), -EPIPE);
        free(buf);
        free(p);
        conc_conn_free(a);
        conc_conn_free(b);
    }
}

Test(pipe, send_timeout_zero_on_full_pipe, .timeout = 30)
{
    conc_conn *a, *b;
    cr_assert_eq(conc_conn_pipe(&a, &b, false), 0);
    char m[512] = { 0 };
    int rc, sent = 0;
    /* 512-byte messages fit the pipe whole (PIPE_BUF writes are atomic):
     * -EAGAIN once it is full, and nothing was cut. */
    while ((rc = conc_conn_send_bytes(b, m, 500, 0)) == 0)
        sent++;
    cr_assert_eq(rc, -EAGAIN);
    cr_assert_gt(sent, 0);
    cr_assert_eq(conc_conn_send_bytes(b, m, 500, 0.05), -ETIMEDOUT);
    for (int i = 0; i < sent; i++)
        cr_assert_eq(conc_conn_recv_bytes(a, m, sizeof m, 1.0), 500);
    cr_assert_eq(conc_conn_recv_bytes(a, m, sizeof m, 0), -EAGAIN);
    cr_assert_eq(conc_conn_send_bytes(b, m, 500, 0), 0);
    conc_conn_free(a);
    conc_conn_free(b);
}

/* ------------------------------------------------- close and death */

Test(pipe, peer_close_gives_epipe_after_draining, .timeout = 30)
{
    for (int duplex = 0; duplex < 2; duplex++) {
        conc_conn *a, *b;
        cr_assert_eq(conc_conn_pipe(&a, &b, duplex), 0);
        cr_assert_eq(conc_conn_send_bytes(b, "one", 3, CONC_FOREVER), 0);
        cr_assert_eq(conc_conn_send_bytes(b, "two", 3, CONC_FOREVER), 0);
        cr_assert_eq(conc_conn_send_bytes(b, "", 0, CONC_FOREVER), 0);
        conc_conn_free(b);
        char buf[8];
        cr_assert_eq(conc_conn_recv_bytes(a, buf, sizeof buf, 1.0), 3);
        cr_assert_eq(memcmp(buf, "one", 3), 0);
        cr_assert_eq(conc_conn_recv_bytes(a, buf, sizeof buf, 1.0), 3);
        cr_assert_eq(memcmp(buf, "two", 3), 0);
        cr_assert_eq(conc_conn_recv_bytes(a, buf, sizeof buf, 1.0), 0);
        cr_assert_eq(conc_conn_poll(a, 0), 0);          /* EOF is "ready" */
        cr_assert_eq(conc_conn_recv_bytes(a, buf, sizeof buf, 1.0), -EPIPE);
        cr_assert_eq(conc_conn_recv_bytes(a, buf, sizeof buf, CONC_FOREVER), -EPIPE);
        cr_assert_eq(conc_conn_recv_size(a, 0), -EPIPE);
        if (duplex)
            cr_assert_eq(conc_conn_send_bytes(a, "x", 1, CONC_FOREVER), -EPIPE);
        conc_conn_free(a);
    }
}

Test(pipe, send_to_closed_reader_is_epipe_not_sigpipe, .timeout = 30)
{
    for (int duplex = 0; duplex < 2; duplex++) {
        conc_conn *a, *b;
        cr_assert_eq(conc_conn_pipe(&a, &b, duplex), 0);
        conc_conn_free(a);
        cr_assert_eq(conc_conn_send_bytes(b, "x", 1, CONC_FOREVER), -EPIPE);
        cr_assert_eq(conc_conn_send_bytes(b, "x", 1, 0), -EPIPE);
        /* No SIGPIPE is left pending for this thread either. */
        sigset_t pend;
        sigpending(&pend);
        cr_assert_not(sigismember(&pend, SIGPIPE));
        conc_conn_free(b);
    }
}

/* Child: one whole message, then a header claiming 1 MiB, half of it, and
 * SIGKILL. */
static void die_mid_message(int fd)
{
    unsigned char hdr[8] = { 0 };
    size_t len = 1u << 20;
    hdr[0] = 5;
    write_all(fd, hdr, 8);
    write_all(fd, "whole", 5);
    for (int i = 0; i < 8; i++)
        hdr[i] = (unsigned char)(len >> (8 * i));
    unsigned char *p = pattern(len / 2, 2);
    write_all(fd, hdr, 8);
    write_all(fd, p, len / 2);
    raise(SIGKILL);
    _exit(99);
}

Test(pipe, peer_killed_mid_message_gives_epipe, .timeout = 30)
{
    for (int duplex = 0; duplex < 2; duplex++) {
        for (int alloc = 0; alloc < 2; alloc++) {
            conc_conn *a, *b;
            cr_assert_eq(conc_conn_pipe(&a, &b, duplex), 0);
            fflush(NULL);
            pid_t pid = fork();
            cr_assert_geq(pid, 0);
            if (pid == 0)
                die_mid_message(conc_conn_fd(b));
            conc_conn_free(b);       /* our copy of the child's end */
            size_t cap = 1u << 20;
            unsigned char *buf = malloc(cap);
            cr_assert_eq(conc_conn_recv_bytes(a, buf, cap, 20.0), 5);
            cr_assert_eq(memcmp(buf, "whole", 5), 0);
            if (alloc) {
                void *p = NULL;
                size_t len = 0;
                cr_assert_eq(conc_conn_recv_alloc(a, &p, &len, 20.0), -EPIPE);
                cr_assert_null(p);
            } else {
                cr_assert_eq(conc_conn_recv_bytes(a, buf, cap, 20.0), -EPIPE);
            }
            cr_assert_eq(conc_conn_recv_bytes(a, buf, cap, 1.0), -EPIPE);
            int st = wait_child(pid);
            cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
            free(buf);
            conc_conn_free(a);
        }
    }
}

/* ------------------------------------------- receiving in a greenlet */

#define ECHO_ROUNDS 600

/* The size of message k of round i: small ones, some that fill the
 * read-ahead buffer's end, and large ones read in many pieces. */
static size_t echo_size(unsigned i, unsigned k)
{
    unsigned v = i * 7u + k * 13u;
    if (v % 23 == 0)
        return (size_t)300000 + v % 4099;
    if (v % 7 == 0)
        return (size_t)65536 - 8 - v % 5;
    return v % 300;
}

/* Echoes every message until the peer closes. */
static void *echo_body(void *arg)
{
    conc_conn *c = arg;
    intptr_t n = 0;
    for (;;) {
        void *buf;
        size_t len;
        int r = conc_conn_recv_alloc(c, &buf, &len, CONC_FOREVER);
        if (r == -EPIPE)
            return (void *)n;
        if (r)
            return (void *)(intptr_t)(r - 1000000);
        r = conc_conn_send_bytes(c, buf, len, CONC_FOREVER);
        free(buf);
        if (r)
            return (void *)(intptr_t)(r - 2000000);
        n++;
    }
}

struct echo_peer {
    conc_conn *c;
    int rc;
    unsigned sent;
};

/* Sends 1 to 4 messages at once, then reads their echoes and checks them. */
static void *echo_peer_body(void *arg)
{
    struct echo_peer *p = arg;
    unsigned char *buf = malloc(310000), *got = malloc(310000);
    for (unsigned i = 0; i < ECHO_ROUNDS && p->rc == 0; i++) {
        unsigned burst = 1 + i % 4;
        for (unsigned k = 0; k < burst && p->rc == 0; k++) {
            size_t n = echo_size(i, k);
            fill(buf, n, i + k);
            p->rc = conc_conn_send_bytes(p->c, buf, n, CONC_FOREVER);
            p->sent++;
        }
        for (unsigned k = 0; k < burst && p->rc == 0; k++) {
            size_t n = echo_size(i, k);
            ssize_t r = conc_conn_recv_bytes(p->c, got, 310000, 20.0);
            if (r != (ssize_t)n || !check(got, n, i + k))
                p->rc = r < 0 ? (int)r : -EPROTO;
        }
    }
    free(buf);
    free(got);
    conc_conn_close(p->c);
    return NULL;
}

/* A greenlet's receive waits in the hub edge-triggered (no epoll_ctl per
 * wait), goes from a short read straight to the wait, and loses nothing:
 * bursts of messages in one read, messages that end at the buffer's end,
 * messages larger than the buffer. */
Test(pipe, greenlet_receives_edge_triggered, .timeout = 60)
{
    conc_conn *a, *b;
    cr_assert_eq(conc_conn_pipe(&a, &b, true), 0);
    conc_greenlet *g;
    cr_assert_eq(conc_greenlet_spawn(&g, echo_body, a, NULL), 0);
    struct echo_peer p = { .c = b };
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, echo_peer_body, &p), 0);
    cr_assert_eq(conc_greenlet_join(g, 30.0), 0);
    void *v = NULL;
    cr_assert_eq(conc_greenlet_result(g, &v), 0);
    conc_greenlet_free(g);
    cr_assert_eq(pthread_join(t, NULL), 0);
    cr_assert_eq(p.rc, 0, "peer: %s", conc_strerror(p.rc));
    cr_assert_eq((intptr_t)v, (intptr_t)p.sent);
    /* The socket stayed registered edge-triggered (the large answers'
     * waits for room added EPOLLOUT to it). */
    uint32_t ev = 0;
    int fd = conc_conn_fd(a);
    cr_assert_eq(epoll_registrations(fd, &ev), 1);
    cr_assert(ev & EPOLLET, "events 0x%x", ev);
    cr_assert_not(ev & EPOLLONESHOT, "events 0x%x", ev);
    /* Its close takes the registration out of the hub even while a copy
     * of the socket lives on. */
    int copy = dup(fd);
    cr_assert_geq(copy, 0);
    conc_conn_free(a);
    cr_assert_eq(epoll_registrations(fd, &ev), 0);
    close(copy);
    conc_conn_free(b);
    cr_assert_eq(conc_hub_free(), 0);
}

/* Deadlines after a short read (the drained path), in a greenlet or a
 * plain thread: a try gives -EAGAIN, a short timeout -ETIMEDOUT, and a
 * message already there is taken, by a try as by a wait.  Returns 0, or
 * the line that failed. */
static void *drained_deadlines_body(void *arg)
{
    conc_conn **ab = arg, *a = ab[0], *b = ab[1];
    for (int i = 0; i < 200; i++) {
        uint32_t v = (uint32_t)i, w = UINT32_MAX;
        if (conc_conn_send_bytes(b, &v, sizeof v, 0) != 0 ||
            conc_conn_recv_bytes(a, &w, sizeof w, 5.0) != 4 || w != v)
            return (void *)(intptr_t)__LINE__;
        if (i % 50 == 0 && (conc_conn_recv_bytes(a, &w, sizeof w, 0) != -EAGAIN ||
                            conc_conn_recv_bytes(a, &w, sizeof w, 0.01) != -ETIMEDOUT))
            return (void *)(intptr_t)__LINE__;
        w = UINT32_MAX;
        if (conc_conn_send_bytes(b, &v, sizeof v, 0) != 0 ||
            conc_conn_recv_bytes(a, &w, sizeof w, i % 2 ? 0 : 5.0) != 4 || w != v)
            return (void *)(intptr_t)__LINE__;
    }
    return NULL;
}

Test(pipe, drained_receive_deadlines, .timeout = 60)
{
    for (int in_hub = 0; in_hub < 2; in_hub++) {
        conc_conn *ab[2];
        cr_assert_eq(conc_conn_pipe(&ab[0], &ab[1], true), 0);
        void *v = NULL;
        if (in_hub) {
            conc_greenlet *g;
            cr_assert_eq(conc_greenlet_spawn(&g, drained_deadlines_body, ab, NULL), 0);
            cr_assert_eq(conc_greenlet_join(g, 30.0), 0);
            cr_assert_eq(conc_greenlet_result(g, &v), 0);
            conc_greenlet_free(g);
        } else {
            v = drained_deadlines_body(ab);
        }
        cr_assert_null(v, "failed at line %d (in a hub: %d)", (int)(intptr_t)v, in_hub);
        conc_conn_free(ab[0]);
        conc_conn_free(ab[1]);
    }
    cr_assert_eq(conc_hub_free(), 0);
}

/* Answers each 16-byte request with the same 16 bytes, framed by hand:
 * every third answer in two writes (its header, then its bytes), so the
 * caller's receive finds half a message after a short read.  Until EOF. */
static void *answer_body(void *arg)
{
    conc_conn *c = arg;
    int fd = conc_conn_fd(c);
    unsigned char req[16], msg[24] = { 16 };
    for (unsigned i = 0; conc_conn_recv_bytes(c, req, sizeof req, CONC_FOREVER) == 16; i++) {
        memcpy(msg + 8, req, 16);
        if (i % 3 == 0) {
            if (write(fd, msg, 8) != 8)
                break;
            sched_yield();
            if (write(fd, msg + 8, 16) != 16)
                break;
        } else if (write(fd, msg, 24) != 24) {
            break;
        }
    }
    return NULL;
}

#define CALLS 3000

/* A plain thread's request and answer without a deadline: after the short
 * read of each answer the next receive waits in poll() first (pipe.c);
 * every answer arrives whole and in order, also one that comes in two
 * pieces. */
Test(pipe, request_answer_in_plain_threads, .timeout = 60)
{
    conc_conn *a, *b;
    cr_assert_eq(conc_conn_pipe(&a, &b, true), 0);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, answer_body, b), 0);
    unsigned char req[16] = "0123456789abcdef", ans[16];
    for (int i = 0; i < CALLS; i++) {
        req[0] = (unsigned char)i;
        req[1] = (unsigned char)(i >> 8);
        cr_assert_eq(conc_conn_send_bytes(a, req, 16, CONC_FOREVER), 0);
        cr_assert_eq(conc_conn_recv_bytes(a, ans, 16, CONC_FOREVER), 16);
        cr_assert_eq(memcmp(req, ans, 16), 0, "call %d", i);
    }
    conc_conn_free(a);
    cr_assert_eq(pthread_join(t, NULL), 0);
    conc_conn_free(b);
}

/* ------------------------------------------------- conc_wait */

/* Exits with 7 once a byte (or EOF) arrives on the descriptor in arg. */
static int exit_when_told(const void *arg, size_t len)
{
    (void)len;
    int fd;
    memcpy(&fd, arg, sizeof fd);
    char c;
    while (read(fd, &c, 1) < 0 && errno == EINTR)
        ;
    return 7;
}

/* Writes one byte to fd once the test's thread sleeps. */
struct teller {
    int fd;
    int rc;
};

static void *tell_when_blocked(void *arg)
{
    struct teller *t = arg;
    t->rc = await_task_blocked(getpid(), test_tid, BLOCKED_GUARD) &&
            write(t->fd, "x", 1) == 1 ? 0 : -1;
    return NULL;
}

static int ready_mask(const conc_waitable *w, size_t n)
{
    int m = 0;
    for (size_t i = 0; i < n; i++)
        if (w[i].ready)
            m |= 1 << i;
    return m;
}

Test(wait, mix_of_connections_queue_process_fd, .timeout = 30)
{
    conc_conn *a1, *b1, *a2, *b2;
    cr_assert_eq(conc_conn_pipe(&a1, &b1, true), 0);
    cr_assert_eq(conc_conn_pipe(&a2, &b2, false), 0);
    conc_queue *q;
    cr_assert_eq(conc_queue_new(&q, NULL), 0);
    int pfd[2];
    cr_assert_eq(pipe(pfd), 0);
    int go[2];
    cr_assert_eq(pipe(go), 0);
    conc_process *p;
    cr_assert_eq(conc_process_new(&p, exit_when_told, &go[0], sizeof go[0],
                                  &(conc_process_opts){ .method = CONC_START_FORK }), 0);
    cr_assert_eq(conc_process_start(p), 0);

    conc_waitable w[5] = {
        { .kind = CONC_WAIT_CONN, .u.conn = a1 },
        { .kind = CONC_WAIT_CONN, .u.conn = a2 },
        { .kind = CONC_WAIT_QUEUE, .u.queue = q },
        { .kind = CONC_WAIT_PROCESS, .u.process = p },
        { .kind = CONC_WAIT_FD, .u.fd = pfd[0] },
    };
    cr_assert_eq(conc_wait(w, 5, 0), -EAGAIN);
    cr_assert_eq(ready_mask(w, 5), 0);
    cr_assert_eq(conc_wait(w, 5, 0.05), -ETIMEDOUT);

    cr_assert_eq(conc_conn_send_bytes(b2, "m", 1, CONC_FOREVER), 0);
    cr_assert_eq(conc_wait(w, 5, 5.0), 1);
    cr_assert_eq(ready_mask(w, 5), 1 << 1);

    cr_assert_eq(conc_queue_put(q, (void *)1, 0), 0);
    cr_assert_eq(conc_wait(w, 5, 5.0), 2);
    cr_assert_eq(ready_mask(w, 5), (1 << 1) | (1 << 2));

    cr_assert_eq(write(pfd[1], "z", 1), 1);
    cr_assert_eq(conc_conn_send_bytes(b1, "n", 1, CONC_FOREVER), 0);
    cr_assert_eq(conc_wait(w, 5, 5.0), 4);
    cr_assert_eq(ready_mask(w, 5), 0x17);

    /* Drain all but the process; then the process alone wakes us. */
    char c;
    void *item;
    cr_assert_eq(conc_conn_recv_bytes(a1, &c, 1, 0), 1);
    cr_assert_eq(conc_conn_recv_bytes(a2, &c, 1, 0), 1);
    cr_assert_eq(conc_queue_get(q, &item, 0), 0);
    cr_assert_eq(read(pfd[0], &c, 1), 1);
    struct teller tell = { .fd = go[1], .rc = 1 };
    pthread_t tt;
    test_tid = gettid();
    cr_assert_eq(pthread_create(&tt, NULL, tell_when_blocked, &tell), 0);
    cr_assert_eq(conc_wait(w, 5, 20.0), 1);
    cr_assert_eq(ready_mask(w, 5), 1 << 3);
    cr_assert_eq(pthread_join(tt, NULL), 0);
    cr_assert_eq(tell.rc, 0, "the process ended before the wait slept");
    close(go[0]);
    close(go[1]);
    int code;
    cr_assert_eq(conc_process_join(p, 5.0), 0);
    cr_assert_eq(conc_process_exitcode(p, &code), 0);
    cr_assert_eq(code, 7);

    conc_process_free(p);
    conc_queue_free(q);
    close(pfd[0]);
    close(pfd[1]);
    conc_conn_free(a1);
    conc_conn_free(b1);
    conc_conn_free(a2);
    conc_conn_free(b2);
}

Test(wait, buffered_data_counts_as_ready, .timeout = 30)
{
    conc_conn *a, *b;
    cr_assert_eq(conc_conn_pipe(&a, &b, true), 0);
    cr_assert_eq(conc_conn_send_bytes(b, "1", 1, CONC_FOREVER), 0);
    cr_assert_eq(conc_conn_send_bytes(b, "2", 1, CONC_FOREVER), 0);
    char c;
    /* The first receive reads both messages ahead. */
    cr_assert_eq(conc_conn_recv_bytes(a, &c, 1, 1.0), 1);
    struct pollfd pfd = { .fd = conc_conn_fd(a), .events = POLLIN };
    cr_assert_eq(poll(&pfd, 1, 0), 0);      /* the fd itself is drained */
    conc_waitable w = { .kind = CONC_WAIT_CONN, .u.conn = a };
    cr_assert_eq(conc_wait(&w, 1, 0), 1);
    cr_assert(w.ready);
    cr_assert_eq(conc_conn_poll(a, 0), 0);
    cr_assert_eq(conc_conn_recv_bytes(a, &c, 1, 0), 1);
    cr_assert_eq(c, '2');
    cr_assert_eq(conc_wait(&w, 1, 0), -EAGAIN);
    cr_assert_not(w.ready);
    /* The peer's close makes it ready too (recv then gives -EPIPE). */
    conc_conn_close(b);
    cr_assert_eq(conc_wait(&w, 1, 5.0), 1);
    cr_assert_eq(conc_conn_recv_bytes(a, &c, 1, 0), -EPIPE);
    conc_conn_free(a);
    conc_conn_free(b);
}

static void *put_later(void *arg)
{
    if (!await_task_blocked(getpid(), test_tid, BLOCKED_GUARD))
        return (void *)1;
    conc_queue_put(arg, (void *)2, CONC_FOREVER);
    return NULL;
}

Test(wait, blocks_until_a_thread_puts, .timeout = 30)
{
    conc_queue *q;
    cr_assert_eq(conc_queue_new(&q, NULL), 0);
    conc_waitable w = { .kind = CONC_WAIT_QUEUE, .u.queue = q };
    pthread_t t;
    test_tid = gettid();
    cr_assert_eq(pthread_create(&t, NULL, put_later, q), 0);
    cr_assert_eq(conc_wait(&w, 1, CONC_FOREVER), 1);
    cr_assert(w.ready);
    void *late = NULL;
    pthread_join(t, &late);
    cr_assert_null(late, "the wait never slept");
    conc_queue_free(q);
}

Test(wait, errors, .timeout = 30)
{
    conc_conn *a, *b;
    cr_assert_eq(conc_conn_pipe(&a, &b, false), 0);
    conc_waitable w = { .kind = CONC_WAIT_CONN, .u.conn = b };
    cr_assert_eq(conc_wait(&w, 1, 0), -EPERM);          /* send-only */
    w.kind = 99;
    cr_assert_eq(conc_wait(&w, 1, 0), -EINVAL);
    w = (conc_waitable){ .kind = CONC_WAIT_CONN, .u.conn = NULL };
    cr_assert_eq(conc_wait(&w, 1, 0), -EINVAL);
    w = (conc_waitable){ .kind = CONC_WAIT_FD, .u.fd = -1 };
    cr_assert_eq(conc_wait(&w, 1, 0), -EINVAL);
    cr_assert_eq(conc_wait(NULL, 1, 0), -EINVAL);
    cr_assert_eq(conc_wait(NULL, 0, CONC_FOREVER), -EINVAL);
    cr_assert_eq(conc_wait(NULL, 0, 0), -EAGAIN);
    cr_assert_eq(conc_wait(NULL, 0, 0.05), -ETIMEDOUT);
    w = (conc_waitable){ .kind = CONC_WAIT_CONN, .u.conn = a };
    cr_assert_eq(conc_wait(&w, 1, -2.0), -EINVAL);
    conc_conn_close(a);
    cr_assert_eq(conc_wait(&w, 1, 0), -EBADF);          /* closed */
    /* An fd that is not open. */
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    close(fds[0]);
    close(fds[1]);
    w = (conc_waitable){ .kind = CONC_WAIT_FD, .u.fd = fds[0] };
    cr_assert_eq(conc_wait(&w, 1, 0), -EBADF);
    /* A process not started. */
    conc_process *p;
    int zero = 0;
    cr_assert_eq(conc_process_new(&p, exit_when_told, &zero, sizeof zero, NULL), 0);
    w = (conc_waitable){ .kind = CONC_WAIT_PROCESS, .u.process = p };
    cr_assert_eq(conc_wait(&w, 1, 0), -EINVAL);
    conc_process_free(p);
    conc_conn_free(a);
    conc_conn_free(b);
}

Test(wait, many_entries_and_fd_events, .timeout = 30)
{
    enum { N = 40 };        /* over the on-stack limit */
    conc_conn *a[N], *b[N];
    conc_waitable w[N + 1];
    for (int i = 0; i < N; i++) {
        cr_assert_eq(conc_conn_pipe(&a[i], &b[i], i % 2), 0);
        w[i] = (conc_waitable){ .kind = CONC_WAIT_CONN, .u.conn = a[i] };
    }
    /* An fd waited on for POLLOUT: an empty pipe's write end is ready. */
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    w[N] = (conc_waitable){ .kind = CONC_WAIT_FD, .u.fd = fds[1], .events = POLLOUT };
    cr_assert_eq(conc_wait(w, N + 1, 0), 1);
    cr_assert(w[N].ready);
    for (int i = 3; i < N; i += 7)
        cr_assert_eq(conc_conn_send_bytes(b[i], "x", 1, CONC_FOREVER), 0);
    cr_assert_eq(conc_wait(w, N, 5.0), 6);
    for (int i = 0; i < N; i++)
        cr_assert_eq(w[i].ready, i >= 3 && (i - 3) % 7 == 0, "entry %d", i);
    for (int i = 0; i < N; i++) {
        conc_conn_free(a[i]);
        conc_conn_free(b[i]);
    }
    close(fds[0]);
    close(fds[1]);
}

/* ------------------------------------------------- descriptors */

Test(pipe, from_fd, .timeout = 30)
{
    conc_conn *r, *w;
    cr_assert_eq(conc_conn_from_fd(NULL, 0, 0), -EINVAL);
    cr_assert_eq(conc_conn_from_fd(&r, -1, 0), -EINVAL);
    cr_assert_eq(conc_conn_from_fd(&r, 0, 0x10), -EINVAL);
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    cr_assert_eq(conc_conn_from_fd(&r, fds[0], CONC_CONN_READABLE), 0);
    cr_assert_eq(conc_conn_from_fd(&w, fds[1], CONC_CONN_WRITABLE), 0);
    cr_assert_eq(conc_conn_fd(r), fds[0]);
    cr_assert_eq(conc_conn_send_bytes(w, "fd", 2, CONC_FOREVER), 0);
    char buf[4];
    cr_assert_eq(conc_conn_recv_bytes(r, buf, sizeof buf, 1.0), 2);
    cr_assert_eq(conc_conn_recv_bytes(r, buf, sizeof buf, 0.05), -ETIMEDOUT);
    cr_assert_eq(conc_conn_send_bytes(r, "x", 1, CONC_FOREVER), -EPERM);
    conc_conn_free(r);
    conc_conn_free(w);
    /* The connection owned the fds: both are closed now. */
    cr_assert_eq(fcntl(fds[0], F_GETFD), -1);
    cr_assert_eq(fcntl(fds[1], F_GETFD), -1);
    cr_assert_eq(conc_conn_from_fd(&r, fds[0], 0), -EBADF);

    /* A socket passed on (as to a forkserver child): both ways. */
    conc_conn *a, *b, *c;
    cr_assert_eq(conc_conn_pipe(&a, &b, true), 0);
    int dup_fd = dup(conc_conn_fd(b));
    cr_assert_geq(dup_fd, 0);
    conc_conn_free(b);
    cr_assert_eq(conc_conn_from_fd(&c, dup_fd, 0), 0);
    cr_assert_eq(conc_conn_send_bytes(c, "via", 3, CONC_FOREVER), 0);
    cr_assert_eq(conc_conn_recv_bytes(a, buf, sizeof buf, 1.0), 3);
    cr_assert_eq(conc_conn_send_bytes(a, "back", 4, CONC_FOREVER), 0);
    cr_assert_eq(conc_conn_recv_bytes(c, buf, sizeof buf, 1.0), 4);
    cr_assert_eq(memcmp(buf, "back", 4), 0);
    conc_conn_free(a);
    conc_conn_free(c);
}

/* A forkserver (or spawn) child: wraps the descriptor it was passed, gets
 * a message and sends it back reversed.  Exit code 0, or where it failed. */
static int echo_reversed(const void *arg, size_t len)
{
    if (len != sizeof(int))
        return 10;
    conc_conn *c;
    if (conc_conn_from_fd(&c, *(const int *)arg, 0) != 0)
        return 11;
    char buf[64];
    ssize_t n = conc_conn_recv_bytes(c, buf, sizeof buf, 20.0);
    if (n < 0)
        return 12;
    for (ssize_t i = 0; i < n / 2; i++) {
        char t = buf[i];
        buf[i] = buf[n - 1 - i];
        buf[n - 1 - i] = t;
    }
    int rc = conc_conn_send_bytes(c, buf, (size_t)n, CONC_FOREVER) == 0 ? 0 : 13;
    conc_conn_free(c);
    return rc;
}

static void pass_to_child(conc_start_method method)
{
    conc_conn *a, *b;
    cr_assert_eq(conc_conn_pipe(&a, &b, true), 0);
    int fd = conc_conn_fd(b);
    conc_process *p;
    cr_assert_eq(conc_process_new(&p, echo_reversed, &fd, sizeof fd,
                                  &(conc_process_opts){ .method = method,
                                                        .pass_fds = &fd, .npass_fds = 1 }), 0);
    cr_assert_eq(conc_process_start(p), 0);
    conc_conn_free(b);
    cr_assert_eq(conc_conn_send_bytes(a, "stressed", 8, CONC_FOREVER), 0);
    char buf[16];
    cr_assert_eq(conc_conn_recv_bytes(a, buf, sizeof buf, 20.0), 8);
    cr_assert_eq(memcmp(buf, "desserts", 8), 0);
    cr_assert_eq(conc_process_join(p, 20.0), 0);
    int code;
    cr_assert_eq(conc_process_exitcode(p, &code), 0);
    cr_assert_eq(code, 0);
    /* The child's copy is gone with it: EOF. */
    cr_assert_eq(conc_conn_recv_bytes(a, buf, sizeof buf, 5.0), -EPIPE);
    conc_process_free(p);
    conc_conn_free(a);
}

Test(pipe, fd_passed_to_forkserver_child, .timeout = 30)
{
    pass_to_child(CONC_START_FORKSERVER);
}

Test(pipe, fd_passed_to_spawn_child, .timeout = 30)
{
    pass_to_child(CONC_START_SPAWN);
}

Test(pipe, no_descriptor_leak, .timeout = 30)
{
    int base = count_fds();
    for (int i = 0; i < 200; i++) {
        conc_conn *a, *b;
        cr_assert_eq(conc_conn_pipe(&a, &b, i % 2), 0);
        cr_assert_eq(conc_conn_send_bytes(b, "x", 1, CONC_FOREVER), 0);
        conc_waitable w = { .kind = CONC_WAIT_CONN, .u.conn = a };
        cr_assert_eq(conc_wait(&w, 1, 1.0), 1);
        if (i % 3 == 0)
            conc_conn_close(a);
        conc_conn_free(a);
        conc_conn_free(b);
    }
    cr_assert_eq(count_fds(), base);
}

/* ------------------------------------------------- the example */

struct run_result {
    int status;
    char out[256];
    char err[512];
};

static void read_into(int fd, char *buf, size_t cap)
{
    size_t len = 0;
    for (;;) {
        ssize_t n = read(fd, buf + len, cap - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
        if (len == cap - 1)
            break;
    }
    buf[len] = '\0';
}

static struct run_result run_ping(const char *const *args)
{
    char path[512];
    snprintf(path, sizeof path, "%s/pipe-ping", CONC_EXAMPLES_DIR);
    cr_assert_eq(access(path, X_OK), 0, "%s is missing", path);
    const char *argv[16] = { path };
    int argc = 1;
    for (; args[argc - 1]; argc++)
        argv[argc] = args[argc - 1];
    argv[argc] = NULL;
    int po[2], pe[2];
    cr_assert_eq(pipe(po), 0);
    cr_assert_eq(pipe(pe), 0);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        dup2(po[1], 1);
        dup2(pe[1], 2);
        close(po[0]);
        close(po[1]);
        close(pe[0]);
        close(pe[1]);
        execv(path, (char *const *)argv);
        _exit(127);
    }
    close(po[1]);
    close(pe[1]);
    struct run_result r;
    /* Output is short: stderr after stdout does not dead-lock. */
    read_into(po[0], r.out, sizeof r.out);
    read_into(pe[0], r.err, sizeof r.err);
    close(po[0]);
    close(pe[0]);
    r.status = wait_child(pid);
    return r;
}

Test(example, pipe_ping_bounces_and_verifies, .timeout = 30)
{
    struct run_result r = run_ping((const char *[]){ "--messages", "200", "--size", "3000", NULL });
    cr_assert(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0, "status %#x: %s", r.status, r.err);
    cr_assert_str_eq(r.out, "ok 200\n");
    r = run_ping((const char *[]){ "--messages", "3", "--size", "1000000", NULL });
    cr_assert(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0, "status %#x: %s", r.status, r.err);
    cr_assert_str_eq(r.out, "ok 3\n");
    r = run_ping((const char *[]){ "--messages", "50", "--size", "0", NULL });
    cr_assert_eq(WEXITSTATUS(r.status), 0);
    cr_assert_str_eq(r.out, "ok 50\n");
    r = run_ping((const char *[]){ "--messages", "10", NULL });
    cr_assert_eq(WEXITSTATUS(r.status), 0);
    cr_assert_str_eq(r.out, "ok 10\n");
}

Test(example, pipe_ping_bad_flags_exit_2, .timeout = 30)
{
    const char *const *bad[] = {
        (const char *[]){ NULL },
        (const char *[]){ "--messages", "0", NULL },
        (const char *[]){ "--messages", "abc", NULL },
        (const char *[]){ "--messages", "5", "--size", "-1", NULL },
        (const char *[]){ "--messages", "5", "--bogus", NULL },
        (const char *[]){ "--messages", NULL },
        (const char *[]){ "--messages", "5", "extra", NULL },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct run_result r = run_ping(bad[i]);
        cr_assert(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 2,
                  "case %zu: status %#x", i, r.status);
        cr_assert_str_eq(r.out, "", "case %zu", i);
        size_t n = strlen(r.err);
        cr_assert(n > 0 && r.err[n - 1] == '\n' && strchr(r.err, '\n') == r.err + n - 1,
                  "case %zu: stderr '%s' is not one line", i, r.err);
    }
}
