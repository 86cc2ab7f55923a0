/*
 * pieces.h - floods of small pieces: n stream socket pairs, each fed by a
 * plain thread in PIECES pieces of 1 to 5 bytes (each its own send, with a
 * yield now and then) and read by a greenlet of the calling thread's hub
 * with a small buffer of its own size and recv flags.  Every byte must
 * arrive once and in order (a pattern of its offset), the reader must see
 * the whole stream, MSG_WAITALL reads must be whole.  A hub that loses an
 * edge leaves a reader waiting with bytes there (the join's guard fails).
 */
#ifndef CONC_TEST_PIECES_H
#define CONC_TEST_PIECES_H

#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <sys/socket.h>

#include "conc.h"
#include "sanitized.h"

#if SANITIZED
#define PIECES 4000
#else
#define PIECES 40000
#endif

static inline unsigned char pieces_pat(size_t i)
{
    return (unsigned char)(i * 7 + i / 251);
}

static inline size_t pieces_total(int pieces)
{
    size_t t = 0;
    for (int i = 0; i < pieces; i++)
        t += (size_t)(i % 5) + 1;
    return t;
}

/* A plain thread: PIECES pieces of 1 to 5 bytes into the socket *arg. */
static inline void *pieces_write_thread(void *arg)
{
    int fd = *(int *)arg;
    size_t off = 0;
    for (int i = 0; i < PIECES; i++) {
        unsigned char buf[5];
        size_t k = (size_t)(i % 5) + 1;
        for (size_t j = 0; j < k; j++)
            buf[j] = pieces_pat(off + j);
        size_t put = 0;
        while (put < k) {
            ssize_t n = send(fd, buf + put, k - put, MSG_NOSIGNAL);
            if (n < 0 && errno == EAGAIN) {
                struct pollfd p = { .fd = fd, .events = POLLOUT };
                poll(&p, 1, 1000);
                continue;
            }
            if (n <= 0)
                return (void *)1;
            put += (size_t)n;
        }
        off += k;
        if (i % 64 == 0)
            sched_yield();
    }
    return NULL;
}

struct pieces_reader {
    conc_socket *s;
    size_t total, got, bufsize;
    int flags;
    int bad;
};

/* A greenlet: reads the whole stream, bufsize (at most 64) at a time. */
static inline void *pieces_read_body(void *arg)
{
    struct pieces_reader *r = arg;
    while (r->got < r->total) {
        unsigned char buf[64];
        size_t want = r->bufsize;
        if (want > r->total - r->got)
            want = r->total - r->got;
        ssize_t n = conc_socket_recv(r->s, buf, want, r->flags);
        if (n <= 0)
            return (void *)(intptr_t)(n == 0 ? -EPIPE : n);
        if ((r->flags & MSG_WAITALL) && (size_t)n != want)
            r->bad = 1;
        for (ssize_t i = 0; i < n; i++)
            if (buf[i] != pieces_pat(r->got + (size_t)i))
                r->bad = 1;
        r->got += (size_t)n;
    }
    return NULL;
}

/* The flood over n (at most 8) pairs made by pair (a: the end read),
 * reader i with bufsize[i] and flags[i]; each reader joined within join
 * seconds; the sockets freed and the hub freed after. */
static inline void pieces_flood(int n, void (*pair)(conc_socket **, conc_socket **),
                                const size_t *bufsize, const int *flags, double join)
{
    conc_socket *a[8], *b[8];
    pthread_t t[8];
    int fds[8];
    struct pieces_reader r[8];
    conc_greenlet *g[8];
    cr_assert_leq(n, 8);
    for (int i = 0; i < n; i++) {
        pair(&a[i], &b[i]);
        r[i] = (struct pieces_reader){ a[i], pieces_total(PIECES), 0, bufsize[i], flags[i], 0 };
        cr_assert_eq(conc_greenlet_spawn(&g[i], pieces_read_body, &r[i], NULL), 0);
    }
    for (int i = 0; i < n; i++) {
        fds[i] = conc_socket_fd(b[i]);
        cr_assert_eq(pthread_create(&t[i], NULL, pieces_write_thread, &fds[i]), 0);
    }
    for (int i = 0; i < n; i++) {
        cr_assert_eq(conc_greenlet_join(g[i], join), 0);
        void *v = (void *)1;
        cr_assert_eq(conc_greenlet_result(g[i], &v), 0);
        cr_assert_eq((intptr_t)v, 0, "reader %d: %s", i, conc_strerror((int)(intptr_t)v));
        cr_assert_eq(r[i].got, r[i].total);
        cr_assert_eq(r[i].bad, 0, "reader %d", i);
        void *tv;
        pthread_join(t[i], &tv);
        cr_assert_null(tv);
        conc_greenlet_free(g[i]);
        conc_socket_free(a[i]);
        conc_socket_free(b[i]);
    }
    cr_assert_eq(conc_hub_free(), 0);
}

#endif
