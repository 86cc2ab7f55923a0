/* socket.h - what other files of the library need of a socket. */
#ifndef CONC_SRC_SOCKET_H
#define CONC_SRC_SOCKET_H

#include <stdatomic.h>
#include <stdbool.h>
#include "conc/socket.h"
#include "internal.h"

struct conc_socket {
    int fd;                 /* -1 once closed or detached */
    int family, type, proto;
    double timeout;         /* CONC_FOREVER, 0 or seconds (checked) */
    /* The descriptor may be in blocking mode, for a plain thread that owns
     * the socket (a threading server's connection, conc__socket_accept_now):
     * a call with no deadline from a thread without a hub then sleeps in
     * the kernel's recv or send itself, one system call instead of a
     * non-blocking try, a poll and a second try.  What callers see stays
     * the same: the recv and send families pass MSG_DONTWAIT whenever they
     * must not block (a deadline, a greenlet), and the calls that take no
     * flags (accept, connect, a sendfile that must not block, detach) make
     * the descriptor non-blocking again first.  false: O_NONBLOCK. */
    _Atomic bool fd_blocks;
    uint64_t key;           /* names this handle to the wait layer
                               (conc__wait_io): unique in the process */
    /* A plain recv that returns fewer bytes than asked has taken the whole
     * receive queue (conc__wait_io_drained): a TCP stream (AF_INET or
     * AF_INET6, IPPROTO_TCP) with no upper layer protocol (TCP_ULP: kTLS
     * reads stop at record boundaries) and whose urgent data was never read
     * with MSG_OOB (its mark then stops reads with no event to say so).
     * Cleared for good by a TCP_ULP set through conc_socket_setsockopt and
     * by a MSG_OOB read. */
    _Atomic bool drains;
    /* Plain reads that wait in a hub ask it to make the read when it takes
     * the socket's edge (conc__wait_io_read): set by the coroutine server
     * on the connections it accepts, before any greenlet reads them. */
    bool preread;
};

/* Wraps an open descriptor (non-blocking, close-on-exec already) with the
 * default timeout.  Returns 0 or -ENOMEM (fd untouched). */
CONC_HIDDEN int conc__socket_wrap(conc_socket **out, int fd);

/* Waits until s's descriptor reports one of events, until deadline:
 * 0 (ready or interrupted: try again), -ETIMEDOUT, -ECANCELED, -EBADF. */
CONC_HIDDEN int conc__socket_wait(conc_socket *s, short events, int64_t deadline);

/* One accept on listener s, without waiting (-EAGAIN when no connection
 * waits; -EINTR, -ECONNABORTED and -EPROTO are returned, not retried).
 * With `blocks` the connection's descriptor is made in blocking mode
 * (fd_blocks above).
 * Returns 0 (*out and, unless NULL, *peer set) or -errno. */
CONC_HIDDEN int conc__socket_accept_now(conc_socket *s, conc_socket **out,
                                        conc_sockaddr *peer, bool blocks);

/* Binds s to addr with SO_REUSEPORT set, for a server that shares its
 * port with sockets of its own.  On an Internet address with port 0 it
 * binds first and sets SO_REUSEPORT after: Linux lets a UDP socket with
 * SO_REUSEPORT that binds port 0 be given the port of any SO_REUSEPORT
 * group of the same user (it counts such a port as free), which would put
 * a stranger's socket in the new server's group and split the datagrams
 * between them.  Bound without it, the socket gets a port no socket holds;
 * sockets bound later to that port (with SO_REUSEPORT) join its group as
 * usual.  Returns 0 or -errno (of setsockopt or bind). */
CONC_HIDDEN int conc__socket_bind_reuse_port(conc_socket *s, const conc_sockaddr *addr);

#endif
