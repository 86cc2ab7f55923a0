/*
 * conc/pipe.h - Python's multiprocessing.Pipe and Connection.
 * (multiprocessing.connection.wait, over connections and other objects, is
 * in conc/wait.h.)
 *
 * conc_conn_pipe makes two connected conc_conn handles that carry messages of
 * bytes, between the threads of one process or between processes (a fork
 * child inherits both; a forkserver or spawn child gets the descriptor
 * through pass_fds and wraps it with conc_conn_from_fd).
 *
 * Messages: each send_bytes is one message of any length from 0 bytes to
 * the connection's maximum (CONC_PIPE_MSG_MAX unless set otherwise); the
 * receiver gets exactly that message, whole, or an error: a message cut by
 * the death of its sender is never delivered in part.  On the wire each
 * message is an 8-byte little-endian length followed by the bytes.
 *
 * Timeouts follow conc/time.h: CONC_FOREVER blocks, 0 never blocks (-EAGAIN
 * when the call cannot succeed at once), t > 0 gives -ETIMEDOUT after t
 * seconds; a negative timeout other than CONC_FOREVER, or NaN, is -EINVAL.
 * Each has an _until form with an absolute CLOCK_MONOTONIC deadline in ns.
 * Every wait goes through conc's one wait primitive (coroutine-aware);
 * signals never interrupt a call (EINTR is retried) and never raise SIGPIPE.
 *
 * Python's exceptions become error codes:
 *   EOFError (peer closed, nothing left)   -EPIPE from recv
 *   BrokenPipeError (peer closed)          -EPIPE from send
 *   OSError "handle is closed"             -EBADF
 *   OSError "connection is read-only" /
 *           "connection is write-only"     -EPERM
 *   OSError "bad message length"           -EMSGSIZE
 *   BufferTooShort (recv_bytes_into)       -EMSGSIZE, and the message stays
 *                                          pending (nothing is lost)
 *
 * Threads: one thread at a time may send on a connection and one at a time
 * may receive from it (a duplex connection may send in one thread while it
 * receives in another).  Closing or freeing a connection another thread is
 * using is undefined, as for a file descriptor.
 *
 * Several holders of one end (a forked child and its parent, a dup of the
 * descriptor): conc_conn_poll and conc_wait never take bytes out of the
 * descriptor, so whichever holder receives next gets the message whole.  A
 * receive reads ahead (up to 64 KiB): messages it read ahead belong to that
 * handle, and the other holders do not see them.
 */
#ifndef CONC_PIPE_H
#define CONC_PIPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "conc/errors.h"
#include "conc/time.h"

#ifdef __cplusplus
extern "C" {
#endif

/* conc_conn - one end of a pipe (multiprocessing.connection.Connection). */
typedef struct conc_conn conc_conn;

/* The default (and largest settable) message size: 1 GiB. */
#define CONC_PIPE_MSG_MAX ((size_t)1 << 30)

/* Directions of a connection (conc_conn_from_fd). */
#define CONC_CONN_READABLE 0x1u
#define CONC_CONN_WRITABLE 0x2u

/*
 * conc_conn_pipe - multiprocessing.Pipe(duplex).  With duplex both ends send and
 * receive (a socketpair(AF_UNIX, SOCK_STREAM)); without it *a only
 * receives and *b only sends (a pipe), as in Python ("conn1 can only be
 * used for receiving, conn2 only for sending").  The descriptors are
 * close-on-exec.  Returns 0 and stores both handles; -EINVAL for a NULL
 * pointer; -EMFILE / -ENFILE when out of descriptors; -ENOMEM.  Nothing is
 * stored on failure.
 */
CONC_API int conc_conn_pipe(conc_conn **a, conc_conn **b, bool duplex);

/*
 * conc_conn_from_fd - wrap an open descriptor (a socket or one end of a
 * pipe, e.g. passed to a forkserver child with pass_fds) as a connection
 * that sends and/or receives (flags: CONC_CONN_READABLE, CONC_CONN_WRITABLE;
 * 0 means both).  The connection takes fd over, as Python's
 * Connection(handle) does: conc_conn_close (or conc_conn_free) closes it,
 * and the caller must not.  (It is not an _attach: those duplicate.)  A descriptor that is not a socket is made O_NONBLOCK (shared
 * with every copy of it).  Returns 0; -EBADF when fd is not open; -EINVAL
 * for a NULL out, a negative fd or unknown flags; -ENOMEM (fd stays the
 * caller's on failure).
 */
CONC_API int conc_conn_from_fd(conc_conn **out, int fd, unsigned flags);

/*
 * conc_conn_fd - Connection.fileno(): the descriptor, for poll/epoll.
 * Bytes conc already read ahead are not visible to poll: use
 * conc_conn_poll or conc_wait, which count them.  Returns the fd, -EBADF
 * when closed, -EINVAL for NULL.  Do not read, write or close it.
 */
CONC_API int conc_conn_fd(const conc_conn *c);

/* conc_conn_readable / conc_conn_writable / conc_conn_closed -
 * Connection.readable, .writable, .closed (false for NULL, as every
 * predicate of conc answers for NULL). */
CONC_API bool conc_conn_readable(const conc_conn *c);
CONC_API bool conc_conn_writable(const conc_conn *c);
CONC_API bool conc_conn_closed(const conc_conn *c);

/*
 * conc_conn_set_max_size - the largest message this connection sends or
 * accepts, 1 to CONC_PIPE_MSG_MAX (the default).  Returns 0 or -EINVAL.
 */
CONC_API int conc_conn_set_max_size(conc_conn *c, size_t max);

/*
 * conc_conn_send_bytes / _until - Connection.send_bytes(buf): send len bytes
 * as one message, blocking while the peer does not read, at most timeout
 * seconds (CONC_FOREVER: no limit) or until the deadline.  Returns 0 once
 * the whole message is written; -EAGAIN (timeout 0) or -ETIMEDOUT when the
 * peer does not read in time; -EPIPE when the peer has closed its end (or
 * an earlier send broke the connection, see below); -EMSGSIZE when len is
 * over the maximum size; -EPERM on a receive-only end; -EBADF when closed;
 * -EINVAL for NULL c, NULL buf with len > 0, or a bad timeout.
 * When the time runs out with nothing of the message written, nothing
 * changes.  When it runs out with part of it written, the sending direction
 * is broken: later sends give -EPIPE, and the receiver gets -EPIPE at the
 * cut message (at once on a duplex connection, which is shut down for
 * writing; on a one-way pipe once this end is closed) - it never gets half
 * a message.
 */
CONC_API int conc_conn_send_bytes(conc_conn *c, const void *buf, size_t len, double timeout);
CONC_API int conc_conn_send_bytes_until(conc_conn *c, const void *buf, size_t len,
                                        int64_t deadline);

/*
 * conc_conn_recv_bytes - Connection.recv_bytes_into(buf): receive the next
 * message into buf (cap bytes), waiting for it.  Returns its length (>= 0);
 * -EMSGSIZE when it is longer than cap (Python's BufferTooShort) or than
 * the maximum size: the message stays pending, nothing is lost, and
 * conc_conn_recv_size tells its size; -EPIPE when the peer closed its end
 * and every whole message was received (EOFError), also when the peer
 * closed it in the middle of a message (which is dropped); -EAGAIN
 * (timeout 0) or -ETIMEDOUT when no whole message arrived in time (what
 * arrived of it is kept); -EPERM on a send-only end; -EBADF when closed;
 * -EINVAL for NULL c, NULL buf with cap > 0, or a bad timeout; -ENOMEM when
 * a partly received large message could not be kept (the connection is
 * then broken: later calls give -EPIPE).  On error the contents of buf are
 * unspecified.
 */
CONC_API ssize_t conc_conn_recv_bytes(conc_conn *c, void *buf, size_t cap, double timeout);
CONC_API ssize_t conc_conn_recv_bytes_until(conc_conn *c, void *buf, size_t cap,
                                            int64_t deadline);

/*
 * conc_conn_recv_size - the length of the next message, waiting until its
 * header arrived (the message itself stays pending).  Returns the length;
 * the errors of conc_conn_recv_bytes (-EMSGSIZE when over the maximum).
 */
CONC_API ssize_t conc_conn_recv_size(conc_conn *c, double timeout);
CONC_API ssize_t conc_conn_recv_size_until(conc_conn *c, int64_t deadline);

/*
 * conc_conn_recv_alloc - Connection.recv_bytes(): receive the next message
 * into a new malloc'd buffer (*out, free it; at least 1 byte is allocated
 * so an empty message still gives a non-NULL pointer) and store its length
 * in *len.  Returns 0; the errors of conc_conn_recv_bytes; -EINVAL for a
 * NULL out or len; -ENOMEM (the message stays pending).  *out and *len are
 * only written on success.
 */
CONC_API int conc_conn_recv_alloc(conc_conn *c, void **out, size_t *len, double timeout);
CONC_API int conc_conn_recv_alloc_until(conc_conn *c, void **out, size_t *len,
                                        int64_t deadline);

/*
 * conc_conn_poll - Connection.poll(timeout): wait until there is something
 * to receive: a message (or part of one) or the peer's close (after which
 * recv gives -EPIPE).  It reads nothing: the bytes stay in the descriptor
 * for whichever holder of this end receives them.  Returns 0 when there
 * is; -EAGAIN (timeout 0) or
 * -ETIMEDOUT when not; -EPERM on a send-only end; -EBADF when closed;
 * -EINVAL for NULL or a bad timeout.  Python's poll() with no argument is
 * conc_conn_poll(c, 0); poll(None) is CONC_FOREVER.
 */
CONC_API int conc_conn_poll(conc_conn *c, double timeout);
CONC_API int conc_conn_poll_until(conc_conn *c, int64_t deadline);

/*
 * conc_conn_close - Connection.close(): close the descriptor (the peer's
 * recv gives -EPIPE once it drained what was sent, its send -EPIPE) and
 * drop read-ahead data.  The handle stays valid (closed state: calls give
 * -EBADF) until conc_conn_free.  Returns 0 (also when closed before), or
 * -EINVAL for NULL.
 */
CONC_API int conc_conn_close(conc_conn *c);

/* conc_conn_free - close (if needed) and free the handle.  NULL is fine. */
CONC_API void conc_conn_free(conc_conn *c);

#ifdef __cplusplus
}
#endif
#endif /* CONC_PIPE_H */
