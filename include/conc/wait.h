/*
 * conc/wait.h - Python's multiprocessing.connection.wait: wait until one of
 * several objects is ready.  The objects may be any mix of connections
 * (conc/pipe.h), thread queues (conc/queue.h), processes (conc/process.h),
 * process queues (conc/mpqueue.h), sockets (conc/socket.h), futures
 * (conc/future.h), broker queues (conc/broker.h, in libconc_broker) and
 * plain file descriptors.
 *
 * Timeouts follow conc/time.h: CONC_FOREVER blocks, 0 never blocks (-EAGAIN
 * when nothing is ready at once), t > 0 gives -ETIMEDOUT after t seconds; a
 * negative timeout other than CONC_FOREVER, or NaN, is -EINVAL.  The _until
 * form takes an absolute CLOCK_MONOTONIC deadline in ns.  The wait goes
 * through conc's one wait primitive (called from a coroutine it parks only
 * the coroutine); signals never interrupt it.
 *
 * Nothing is read from a connection (as with conc_conn_poll): when several
 * processes hold one end, whichever receives next gets the message whole.
 * A process queue's readiness fd can lag behind the queue after a process
 * was killed at the wrong instant (see conc_mpqueue_fd): while it waits on
 * one, conc_wait looks at the queue itself again every 50 ms.
 */
#ifndef CONC_WAIT_H
#define CONC_WAIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "conc/errors.h"
#include "conc/time.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The objects an entry can refer to, declared in their own headers. */
struct conc_conn;
struct conc_queue;
struct conc_process;
struct conc_mpqueue;
struct conc_socket;
struct conc_future;
struct conc_broker_queue;

/* What a conc_waitable refers to. */
typedef enum conc_wait_kind {
    CONC_WAIT_CONN = 1,     /* .conn: ready when conc_conn_poll would be */
    CONC_WAIT_QUEUE = 2,    /* .queue: a thread queue, ready while it has
                               items or is shut down (conc_queue_fd) */
    CONC_WAIT_PROCESS = 3,  /* .process: a started process, ready once it
                               ended (its sentinel) */
    CONC_WAIT_FD = 4,       /* .fd: any descriptor, ready on .events (0:
                               POLLIN), an error or a hang-up */
    CONC_WAIT_MPQUEUE = 5,  /* .mpqueue: a process queue, ready while a get
                               could succeed (a message is queued, or it is
                               shut down) */
    CONC_WAIT_SOCKET = 6,   /* .socket: a socket, ready on .events (0:
                               POLLIN: a recv or accept would not wait), an
                               error or a hang-up */
    CONC_WAIT_FUTURE = 7,   /* .future: a future, ready once it is done
                               (finished or cancelled; conc_future_fd) */
    CONC_WAIT_BROKER = 8    /* .broker_queue: a broker queue, ready while
                               a get would not wait (a message has arrived,
                               or the connection failed: get reports it);
                               it starts consuming if it did not yet */
} conc_wait_kind;

/* One entry of conc_wait's list: set kind and the matching member; conc_wait
 * sets ready. */
typedef struct conc_waitable {
    conc_wait_kind kind;
    union {
        struct conc_conn *conn;
        struct conc_queue *queue;
        struct conc_process *process;
        struct conc_mpqueue *mpqueue;
        struct conc_socket *socket;
        struct conc_future *future;
        struct conc_broker_queue *broker_queue;
        int fd;
    } u;
    short events;           /* CONC_WAIT_FD and CONC_WAIT_SOCKET only: poll()
                               events, 0 = POLLIN */
    bool ready;             /* out: true when this entry is ready */
} conc_waitable;

/*
 * conc_wait - multiprocessing.connection.wait(object_list, timeout): wait
 * until at least one of the n entries is ready (see conc_wait_kind),
 * then mark every ready one (ready = true, the others false).  A connection
 * with read-ahead data is ready without waiting; nothing is read from a
 * connection (as conc_conn_poll).  Returns how many are
 * ready (> 0); -EAGAIN (timeout 0) or -ETIMEDOUT when none became ready in
 * time (Python's empty list); -EINVAL for NULL objs with n > 0, an unknown
 * kind, NULL handles, a negative fd, a process not started, a bad timeout,
 * or n == 0 with no time limit; -EBADF for a closed connection or socket,
 * or a descriptor that is not open; -EPERM for a send-only connection; -ENOMEM;
 * an error of conc_queue_fd or conc_future_fd (-EMFILE, -ENFILE).  With n == 0
 * it sleeps until the timeout.
 */
CONC_API int conc_wait(conc_waitable *objs, size_t n, double timeout);
CONC_API int conc_wait_until(conc_waitable *objs, size_t n, int64_t deadline);

/*
 * conc_fd_wait - gevent.socket.wait(fd, event, timeout): wait until fd
 * reports one of the poll() events (POLLIN, POLLOUT...), an error or a
 * hang-up.  In a hub thread the calling coroutine parks (the descriptor is
 * watched by the hub's epoll); elsewhere the thread blocks in ppoll.
 * Returns 0 when fd is ready (or the wait was interrupted: re-check);
 * -EAGAIN when timeout is 0 and fd is not ready; -ETIMEDOUT when the
 * timeout passed first; -EBADF when fd is negative or not open;
 * -ECANCELED when the coroutine was killed; -EINVAL for a bad timeout;
 * -ENOMEM; another -errno from epoll_ctl or ppoll.  A regular file is
 * always ready.
 */
CONC_API int conc_fd_wait(int fd, short events, double timeout);
/* conc_fd_wait_until - conc_fd_wait with an absolute CLOCK_MONOTONIC
 * deadline in ns (CONC_NO_DEADLINE for none); a passed deadline still
 * looks once, and gives -ETIMEDOUT when fd is not ready. */
CONC_API int conc_fd_wait_until(int fd, short events, int64_t deadline);

#ifdef __cplusplus
}
#endif
#endif /* CONC_WAIT_H */
