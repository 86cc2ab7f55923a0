/*
 * pipe.h - a connection's inside, shared by pipe.c (Pipe, Connection) and
 * wait_objects.c (connection.wait, which looks at a connection's read-ahead
 * without reading); not installed.
 */
#ifndef CONC_PIPE_INTERNAL_H
#define CONC_PIPE_INTERNAL_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "conc/pipe.h"
#include "internal.h"

struct conc_conn {
    int fd;                 /* -1 once closed */
    unsigned flags;         /* CONC_CONN_READABLE | CONC_CONN_WRITABLE */
    bool sock;              /* a socket (MSG_DONTWAIT / MSG_NOSIGNAL) */
    bool stream;            /* a Unix stream socket: a short read empties it */
    bool drained;           /* stream: the last read was short, and no wait
                               returned since (pipe.c, read_some) */
    uint64_t key;           /* sockets: the handle's key for conc__wait_io */
    bool eof;               /* the peer closed: read gave 0 */
    bool rbroken;           /* a partial message could not be kept */
    bool wbroken;           /* a timed-out send cut a message */
    size_t max;             /* largest message sent or accepted */
    unsigned char *rbuf;    /* read-ahead; NULL until first needed */
    size_t rcap, rstart, rend;
};

/* 0 when c may receive; the error a receive gives at once otherwise. */
static inline int check_recv(const conc_conn *c)
{
    if (!c)
        return -EINVAL;
    if (c->fd < 0)
        return -EBADF;
    if (!(c->flags & CONC_CONN_READABLE))
        return -EPERM;
    if (c->rbroken)
        return -EPIPE;
    return 0;
}

/* Bytes read ahead and not yet received. */
static inline size_t buffered(const conc_conn *c)
{
    return c->rend - c->rstart;
}

#endif
