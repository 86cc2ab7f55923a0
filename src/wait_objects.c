/*
 * wait_objects.c - multiprocessing.connection.wait (conc/wait.h): wait until
 * one of several connections, thread queues, processes, process queues,
 * sockets, futures, broker queues or descriptors is ready.
 *
 * Every entry becomes one descriptor of a single poll set (a queue's
 * readiness eventfd, a process's pidfd sentinel, a connection's own
 * descriptor, a future's eventfd), waited on through the wait layer, so a coroutine parks.  A
 * connection with bytes read ahead is ready without its descriptor; nothing
 * is read from it.  A process queue is asked directly whether a get could
 * succeed, because its eventfd may say yes after another consumer took the
 * message, or (a process killed at the wrong instant) no while a message
 * waits: waits that include one look again every MPQ_RECHECK_NS.
 */
#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include "conc/future.h"
#include "conc/mpqueue.h"
#include "conc/process.h"
#include "conc/queue.h"
#include "conc/wait.h"
#include "internal.h"
#include "mpqueue.h"
#include "pipe.h"
#include "socket.h"
#include "sys/wait.h"
#include "wait_source.h"

#define WAIT_STACK 32
#define MPQ_RECHECK_NS 50000000
#define BROKER_RECHECK_NS 1000000000

/* A broker queue's answer: 1 (or an error, which its get reports) when it
 * is ready, 0 with *fd to poll when it is not. */
static int broker_check(struct conc_broker_queue *bq, int *fd)
{
    const struct conc__wait_source *const *src = (const void *)bq;
    return (*src)->check(bq, fd);
}

int conc_wait_until(conc_waitable *objs, size_t n, int64_t deadline)
{
    if (n == 0) {
        if (deadline == CONC_NO_DEADLINE)
            return -EINVAL;
        int r = conc__sleep_until(deadline);
        return r == -ECANCELED ? r : -ETIMEDOUT;
    }
    if (!objs || n > (size_t)INT32_MAX)
        return -EINVAL;
    struct pollfd stack[WAIT_STACK], *fds = stack;
    int count = 0, r = 0;
    bool mpq = false, bkq = false;

    /* Check every entry before allocating anything. */
    for (size_t i = 0; i < n; i++) {
        conc_waitable *w = &objs[i];
        w->ready = false;
        switch (w->kind) {
        case CONC_WAIT_CONN:
            r = check_recv(w->u.conn);
            if (r == -EPIPE)        /* broken: a receive fails at once */
                r = 0;
            break;
        case CONC_WAIT_QUEUE:
        case CONC_WAIT_PROCESS:
            r = w->u.queue ? 0 : -EINVAL;
            break;
        case CONC_WAIT_FD:
            r = w->u.fd >= 0 ? 0 : -EINVAL;
            break;
        case CONC_WAIT_MPQUEUE:
            r = w->u.mpqueue ? 0 : -EINVAL;
            break;
        case CONC_WAIT_SOCKET:
            r = !w->u.socket ? -EINVAL : w->u.socket->fd < 0 ? -EBADF : 0;
            break;
        case CONC_WAIT_FUTURE:
            r = w->u.future ? 0 : -EINVAL;
            break;
        case CONC_WAIT_BROKER:
            r = w->u.broker_queue ? 0 : -EINVAL;
            break;
        default:
            r = -EINVAL;
        }
        if (r < 0)
            return r;
    }
    if (n > WAIT_STACK) {
        fds = malloc(n * sizeof *fds);
        if (!fds)
            return -ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        conc_waitable *w = &objs[i];
        fds[i].events = POLLIN;
        fds[i].revents = 0;
        switch (w->kind) {
        case CONC_WAIT_CONN:
            /* Bytes read ahead make it ready now; the descriptor itself is
             * polled with the others (nothing is read out of it here). */
            if (w->u.conn->rbroken || buffered(w->u.conn) > 0 || w->u.conn->eof) {
                w->ready = true;
                count++;
            }
            fds[i].fd = w->u.conn->fd;
            r = 0;
            break;
        case CONC_WAIT_QUEUE:
            r = conc_queue_fd(w->u.queue);
            fds[i].fd = r;
            break;
        case CONC_WAIT_PROCESS:
            r = conc_process_sentinel(w->u.process);
            fds[i].fd = r;
            break;
        case CONC_WAIT_MPQUEUE:
            r = conc_mpqueue_fd(w->u.mpqueue, POLLIN);
            fds[i].fd = r;
            mpq = true;
            if (r >= 0 && conc__mpqueue_ready(w->u.mpqueue)) {
                w->ready = true;
                count++;
            }
            break;
        case CONC_WAIT_SOCKET:
            fds[i].fd = w->u.socket->fd;
            if (w->events)
                fds[i].events = w->events;
            r = 0;
            break;
        case CONC_WAIT_FUTURE:
            r = conc_future_fd(w->u.future);
            fds[i].fd = r;
            if (r >= 0 && conc_future_done(w->u.future)) {
                w->ready = true;
                count++;
            }
            break;
        case CONC_WAIT_BROKER: {
            int fd = -1;
            bkq = true;
            if (broker_check(w->u.broker_queue, &fd) != 0) {
                w->ready = true;
                count++;
            }
            fds[i].fd = fd;
            r = 0;
            break;
        }
        default:
            fds[i].fd = w->u.fd;
            if (w->events)
                fds[i].events = w->events;
            r = 0;
            break;
        }
        if (r < 0)
            goto out;
    }

    for (;;) {
        /* A process queue's eventfd may be readable with nothing to get
         * (re-checked below), and a producer killed at the wrong instant
         * may leave it unreadable: such waits look again now and then. */
        int64_t until = count ? 0 : deadline;
        if ((mpq || bkq) && !count) {
            int64_t slice = conc_now() + (mpq ? MPQ_RECHECK_NS : BROKER_RECHECK_NS);
            if (slice < until)
                until = slice;
        }
        r = conc__wait_fds(fds, n, until);
        if (r == -ETIMEDOUT && until == deadline)
            break;
        if (r < 0 && r != -ETIMEDOUT)
            goto out;
        if (r == 0)
            continue;               /* interrupted: wait again */
        for (size_t i = 0; i < n; i++) {
            short re = r > 0 ? fds[i].revents : 0;
            if (re & POLLNVAL) {
                r = -EBADF;
                goto out;
            }
            if (objs[i].ready)
                continue;
            if (objs[i].kind == CONC_WAIT_MPQUEUE) {
                if ((re || r < 0) && conc__mpqueue_ready(objs[i].u.mpqueue)) {
                    objs[i].ready = true;
                    count++;
                }
            } else if (objs[i].kind == CONC_WAIT_BROKER) {
                /* Readable, or time to look again: frames came (perhaps a
                 * heartbeat only); the queue says whether a get would wait,
                 * and its descriptor may have changed (a reconnection). */
                if (re || r < 0) {
                    int fd = -1;
                    if (broker_check(objs[i].u.broker_queue, &fd) != 0) {
                        objs[i].ready = true;
                        count++;
                    }
                    fds[i].fd = fd;
                }
            } else if (re & (fds[i].events | POLLERR | POLLHUP)) {
                objs[i].ready = true;
                count++;
            }
        }
        if (count)
            break;
    }
    r = count ? count : -ETIMEDOUT;
out:
    if (fds != stack)
        free(fds);
    return r;
}

int conc_wait(conc_waitable *objs, size_t n, double timeout)
{
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return (int)conc__timeout_code(poll, conc_wait_until(objs, n, deadline));
}
