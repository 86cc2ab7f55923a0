/*
 * pipe.c - multiprocessing.Pipe and Connection (connection.wait is in
 * wait_objects.c).
 *
 * A connection is a descriptor (one end of a socketpair, or of a pipe) plus
 * a read-ahead buffer.  Each message is an 8-byte little-endian length and
 * the bytes.  Receiving reads as much as the buffer holds, so a small
 * message (or several) costs one read(); a message larger than the buffer
 * is read straight into the caller's memory.  Only a receive reads: poll
 * and conc_wait look at the descriptor with poll(), leaving the bytes to
 * whichever holder of the end receives them.  A receive that times out in
 * the middle of a large message keeps what arrived (the buffer grows to
 * hold it), so nothing is ever lost or delivered in part.
 *
 * Sockets are left blocking: calls with a deadline use MSG_DONTWAIT and
 * wait for readiness through the wait layer; a plain thread without a
 * deadline blocks in recv()/sendmsg() itself, which is what the wait layer
 * would do for it anyway, at one system call instead of three, except for
 * a receive after a short read (below): it waits in poll() for POLLIN and
 * then reads.  A reader asleep in recv() on a Unix stream socket is woken,
 * for nothing, each time its peer takes bytes this end sent (the kernel
 * tells the sender there is room again, on the one queue both directions
 * sleep on; poll() sleeps only for the events it asked for): a client that
 * sends a request and sleeps in recv() for the answer is woken once more
 * per call when the server reads the request.  A socket's
 * receive waits with conc__wait_io, so a coroutine's hub keeps the socket
 * registered edge-triggered and a wait costs no epoll_ctl.  That wait
 * follows a read that said EAGAIN, or a short read of a Unix stream
 * socket: its read takes everything queued up to its size, so a short one
 * emptied the socket as surely as an EAGAIN, and what comes after it
 * raises an edge.  (Not TCP: a read there stops short at urgent data.)  So a connection that reads one request at a time (a
 * server's) goes from its answer straight to the wait, without a read that
 * finds nothing.  Pipes have
 * no per-call flag and are made O_NONBLOCK.  SIGPIPE is never raised:
 * MSG_NOSIGNAL on sockets; on pipes it is blocked in the writing thread
 * around the write and, when the write fails with EPIPE, taken back with
 * sigtimedwait.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "conc/pipe.h"
#include "internal.h"
#include "pipe.h"
#include "sys/wait.h"

#define HDR 8
#define RBUF_DEFAULT ((size_t)64 * 1024)
#define SMALL_MSG 248

/* ------------------------------------------------------------ helpers */

static inline bool passed(int64_t deadline)
{
    return deadline != CONC_NO_DEADLINE && conc_now() >= deadline;
}

/* A plain thread without a deadline may block in the kernel's own call. */
static inline bool may_block(const conc_conn *c, int64_t deadline)
{
    return c->sock && deadline == CONC_NO_DEADLINE && !conc__wait_ops;
}

static void put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* Keys of connections' sockets for conc__wait_io: never 0, never reused,
 * and apart from the socket layer's own keys (which count up from 1), so
 * a number one of them closed and the other reused is registered anew. */
#define KEY_BASE (UINT64_C(1) << 63)
static uint64_t last_key;

static int conn_new(conc_conn **out, int fd, unsigned flags, bool sock, bool stream)
{
    conc_conn *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    c->fd = fd;
    c->flags = flags;
    c->sock = sock;
    c->stream = sock && stream;
    if (sock)
        c->key = KEY_BASE | __atomic_add_fetch(&last_key, 1, __ATOMIC_RELAXED);
    c->max = CONC_PIPE_MSG_MAX;
    *out = c;
    return 0;
}

/* ------------------------------------------------------------ creation */

int conc_conn_pipe(conc_conn **a, conc_conn **b, bool duplex)
{
    if (!a || !b)
        return -EINVAL;
    int fds[2];
    unsigned fa, fb;
    if (duplex) {
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) < 0)
            return -errno;
        fa = fb = CONC_CONN_READABLE | CONC_CONN_WRITABLE;
    } else {
        if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0)
            return -errno;
        fa = CONC_CONN_READABLE;
        fb = CONC_CONN_WRITABLE;
    }
    conc_conn *ca, *cb;
    if (conn_new(&ca, fds[0], fa, duplex, duplex) < 0)
        goto fail;
    if (conn_new(&cb, fds[1], fb, duplex, duplex) < 0) {
        free(ca);
        goto fail;
    }
    *a = ca;
    *b = cb;
    return 0;
fail:
    close(fds[0]);
    close(fds[1]);
    return -ENOMEM;
}

int conc_conn_from_fd(conc_conn **out, int fd, unsigned flags)
{
    if (!out || fd < 0 || (flags & ~(CONC_CONN_READABLE | CONC_CONN_WRITABLE)))
        return -EINVAL;
    if (flags == 0)
        flags = CONC_CONN_READABLE | CONC_CONN_WRITABLE;
    struct stat st;
    if (fstat(fd, &st) < 0)
        return errno == EBADF ? -EBADF : -errno;
    bool sock = S_ISSOCK(st.st_mode);
    int type = 0, domain = 0;
    if (sock) {
        socklen_t tl = sizeof type, dl = sizeof domain;
        if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) < 0 ||
            getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &dl) < 0)
            type = domain = 0;
    } else {
        int fl = fcntl(fd, F_GETFL);
        if (fl < 0 || (!(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0))
            return -errno;
    }
    return conn_new(out, fd, flags, sock, type == SOCK_STREAM && domain == AF_UNIX);
}

int conc_conn_fd(const conc_conn *c)
{
    if (!c)
        return -EINVAL;
    return c->fd < 0 ? -EBADF : c->fd;
}

bool conc_conn_readable(const conc_conn *c)
{
    return c && (c->flags & CONC_CONN_READABLE);
}

bool conc_conn_writable(const conc_conn *c)
{
    return c && (c->flags & CONC_CONN_WRITABLE);
}

bool conc_conn_closed(const conc_conn *c)
{
    return c && c->fd < 0;
}

int conc_conn_set_max_size(conc_conn *c, size_t max)
{
    if (!c || max == 0 || max > CONC_PIPE_MSG_MAX)
        return -EINVAL;
    c->max = max;
    return 0;
}

int conc_conn_close(conc_conn *c)
{
    if (!c)
        return -EINVAL;
    if (c->fd >= 0) {
        if (c->sock)
            conc__wait_fd_close(c->fd);     /* a hub forgets the registration */
        close(c->fd);
        c->fd = -1;
    }
    free(c->rbuf);
    c->rbuf = NULL;
    c->rcap = c->rstart = c->rend = 0;
    return 0;
}

void conc_conn_free(conc_conn *c)
{
    if (!c)
        return;
    conc_conn_close(c);
    free(c);
}

/* ------------------------------------------------------------ sending */

/* writev on a pipe without SIGPIPE: blocked in this thread for the call,
 * and taken back when the write raised it.  Also used by the fork start
 * method's gate (process.c), whose reader may already be dead. */
ssize_t conc__writev_nosigpipe(int fd, const struct iovec *iov, int cnt)
{
    sigset_t pipe_set, old;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    ssize_t r;
    do
        r = writev(fd, iov, cnt);
    while (r < 0 && errno == EINTR);
    int err = errno;
    /* Unblocked before, so a SIGPIPE pending now is the one just raised. */
    if (r < 0 && err == EPIPE && !sigismember(&old, SIGPIPE)) {
        static const struct timespec zero = { 0, 0 };
        while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR)
            ;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    errno = err;
    return r;
}

/* One write attempt of the iovecs.  Returns bytes written (> 0), -EAGAIN,
 * or a negative errno (EPIPE and ECONNRESET as -EPIPE). */
static ssize_t write_once(conc_conn *c, struct iovec *iov, int cnt, bool block)
{
    ssize_t r;
    if (c->sock) {
        struct msghdr m = { .msg_iov = iov, .msg_iovlen = (size_t)cnt };
        int fl = MSG_NOSIGNAL | (block ? 0 : MSG_DONTWAIT);
        do
            r = cnt == 1 ? send(c->fd, iov->iov_base, iov->iov_len, fl)
                         : sendmsg(c->fd, &m, fl);
        while (r < 0 && errno == EINTR);
    } else {
        r = conc__writev_nosigpipe(c->fd, iov, cnt);
    }
    if (r >= 0)
        return r;
    if (errno == EAGAIN || errno == EWOULDBLOCK)
        return -EAGAIN;
    if (errno == ECONNRESET)
        return -EPIPE;
    return -errno;
}

int conc_conn_send_bytes_until(conc_conn *c, const void *buf, size_t len, int64_t deadline)
{
    if (!c || (!buf && len > 0))
        return -EINVAL;
    if (c->fd < 0)
        return -EBADF;
    if (!(c->flags & CONC_CONN_WRITABLE))
        return -EPERM;
    if (c->wbroken)
        return -EPIPE;
    if (len > c->max)
        return -EMSGSIZE;

    /* A small message is copied behind its header and goes out in one
     * plain send()/write(); a larger one is gathered from two iovecs. */
    unsigned char hdr[HDR + SMALL_MSG];
    put_le64(hdr, len);
    struct iovec iov[2] = {
        { .iov_base = hdr, .iov_len = HDR },
        { .iov_base = (void *)buf, .iov_len = len },
    };
    int cnt = len ? 2 : 1;
    if (len > 0 && len <= SMALL_MSG) {
        memcpy(hdr + HDR, buf, len);
        iov[0].iov_len = HDR + len;
        cnt = 1;
    }
    struct iovec *cur = iov;
    size_t done = 0, total = HDR + len;
    bool block = may_block(c, deadline);

    while (done < total) {
        ssize_t r = write_once(c, cur, cnt, block);
        if (r > 0) {
            done += (size_t)r;
            size_t n = (size_t)r;
            while (cnt > 0 && n >= cur->iov_len) {
                n -= cur->iov_len;
                cur++;
                cnt--;
            }
            if (cnt > 0) {
                cur->iov_base = (char *)cur->iov_base + n;
                cur->iov_len -= n;
            }
            continue;
        }
        if (r == -EAGAIN) {
            r = passed(deadline) ? -ETIMEDOUT : conc__wait_fd(c->fd, POLLOUT, deadline);
            if (r == 0)
                continue;
        }
        if (done > 0) {
            /* Part of the message went out: the stream can't carry another
             * one.  Make the peer see the cut now where we can. */
            c->wbroken = true;
            if (c->sock)
                shutdown(c->fd, SHUT_WR);
        }
        return (int)r;
    }
    return 0;
}

int conc_conn_send_bytes(conc_conn *c, const void *buf, size_t len, double timeout)
{
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return (int)conc__timeout_code(poll, conc_conn_send_bytes_until(c, buf, len, deadline));
}

/* ------------------------------------------------------------ receiving */

/* One read attempt.  Returns bytes (> 0), 0 at end of file (a reset
 * connection counts as closed), -EAGAIN, or a negative errno. */
static ssize_t read_once(conc_conn *c, void *p, size_t n, bool block)
{
    ssize_t r;
    do {
        if (c->sock)
            r = recv(c->fd, p, n, block ? 0 : MSG_DONTWAIT);
        else
            r = read(c->fd, p, n);
    } while (r < 0 && errno == EINTR);
    if (r >= 0)
        return r;
    if (errno == EAGAIN || errno == EWOULDBLOCK)
        return -EAGAIN;
    if (errno == ECONNRESET)
        return 0;
    return -errno;
}

/* Reads at most n bytes into p, waiting until some arrive or the deadline
 * passes.  Returns bytes (> 0), 0 at end of file, or a negative code. */
static ssize_t read_some(conc_conn *c, void *p, size_t n, int64_t deadline)
{
    bool block = may_block(c, deadline);
    /* After a short read of a Unix stream socket the read would find nothing:
     * wait first (see the top of the file), also in a plain thread that
     * could block in recv().  A call that may not wait (a passed
     * deadline) still reads once. */
    bool skip = c->drained && !passed(deadline);
    for (;;) {
        if (!skip) {
            ssize_t r = read_once(c, p, n, block);
            if (r != -EAGAIN) {
                c->drained = c->stream && r > 0 && (size_t)r < n;
                return r;
            }
            if (passed(deadline)) {
                c->drained = false;
                return -ETIMEDOUT;
            }
        }
        skip = false;
        block = false;          /* another holder of the end may read first */
        /* Whatever the wait gives, it may have taken the edge of bytes
         * that came: the next call reads before it waits. */
        c->drained = false;
        int w = c->sock ? conc__wait_io(c->fd, c->key, POLLIN, deadline)
                        : conc__wait_fd(c->fd, POLLIN, deadline);
        if (w < 0)
            return w;
    }
}

static int rbuf_ready(conc_conn *c)
{
    if (!c->rbuf) {
        c->rbuf = malloc(RBUF_DEFAULT);
        if (!c->rbuf)
            return -ENOMEM;
        c->rcap = RBUF_DEFAULT;
        c->rstart = c->rend = 0;
    }
    return 0;
}

static void consume(conc_conn *c, size_t n)
{
    c->rstart += n;
    if (c->rstart == c->rend) {
        c->rstart = c->rend = 0;
        if (c->rcap > RBUF_DEFAULT) {       /* grown for a large message */
            free(c->rbuf);
            c->rbuf = NULL;
            c->rcap = 0;
        }
    }
}

/* Drops a message cut by the peer's close, and reports the close. */
static int cut(conc_conn *c)
{
    c->rstart = c->rend = 0;
    return -EPIPE;
}

/* Makes at least need (<= rcap) bytes buffered.  Returns 0, -EPIPE at end
 * of file before that, or another negative code. */
static int fill(conc_conn *c, size_t need, int64_t deadline)
{
    while (buffered(c) < need) {
        if (c->eof)
            return cut(c);
        if (c->rstart + need > c->rcap) {
            memmove(c->rbuf, c->rbuf + c->rstart, buffered(c));
            c->rend -= c->rstart;
            c->rstart = 0;
        }
        ssize_t r = read_some(c, c->rbuf + c->rend, c->rcap - c->rend, deadline);
        if (r == 0) {
            c->eof = true;
            return cut(c);
        }
        if (r < 0)
            return (int)r;
        c->rend += (size_t)r;
    }
    return 0;
}

/* Waits for the next message's header; stores its length. */
static int next_header(conc_conn *c, int64_t deadline, size_t *len)
{
    int r = rbuf_ready(c);
    if (r < 0)
        return r;
    r = fill(c, HDR, deadline);
    if (r < 0)
        return r;
    uint64_t n = get_le64(c->rbuf + c->rstart);
    if (n > c->max)
        return -EMSGSIZE;
    *len = (size_t)n;
    return 0;
}

/* Keeps got bytes of a large message (at buf) after its header, for the
 * next receive.  Returns 0 or -ENOMEM. */
static int keep_partial(conc_conn *c, const void *buf, size_t got)
{
    unsigned char hdr[HDR];
    memcpy(hdr, c->rbuf + c->rstart, HDR);
    size_t need = HDR + got;
    if (need > c->rcap) {
        unsigned char *nb = malloc(need);
        if (!nb)
            return -ENOMEM;
        free(c->rbuf);
        c->rbuf = nb;
        c->rcap = need;
    }
    memcpy(c->rbuf, hdr, HDR);
    memcpy(c->rbuf + HDR, buf, got);
    c->rstart = 0;
    c->rend = need;
    return 0;
}

ssize_t conc_conn_recv_bytes_until(conc_conn *c, void *buf, size_t cap, int64_t deadline)
{
    int r = check_recv(c);
    if (r < 0)
        return r;
    if (!buf && cap > 0)
        return -EINVAL;
    size_t len;
    r = next_header(c, deadline, &len);
    if (r < 0)
        return r;
    if (len > cap)
        return -EMSGSIZE;
    size_t total = HDR + len;
    if (total <= c->rcap) {
        r = fill(c, total, deadline);
        if (r < 0)
            return r;
        if (len)
            memcpy(buf, c->rbuf + c->rstart + HDR, len);
        consume(c, total);
        return (ssize_t)len;
    }
    /* Larger than the buffer: everything buffered belongs to this
     * message; the rest goes straight to the caller's memory. */
    size_t got = buffered(c) - HDR;
    memcpy(buf, c->rbuf + c->rstart + HDR, got);
    while (got < len) {
        ssize_t n = c->eof ? 0 : read_some(c, (char *)buf + got, len - got, deadline);
        if (n > 0) {
            got += (size_t)n;
            continue;
        }
        if (n == 0) {
            c->eof = true;
            return cut(c);
        }
        if (keep_partial(c, buf, got) < 0) {
            c->rbroken = true;
            return -ENOMEM;
        }
        return n;
    }
    consume(c, buffered(c));
    return (ssize_t)len;
}

ssize_t conc_conn_recv_bytes(conc_conn *c, void *buf, size_t cap, double timeout)
{
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return (ssize_t)conc__timeout_code(poll, conc_conn_recv_bytes_until(c, buf, cap, deadline));
}

ssize_t conc_conn_recv_size_until(conc_conn *c, int64_t deadline)
{
    int r = check_recv(c);
    if (r < 0)
        return r;
    size_t len;
    r = next_header(c, deadline, &len);
    return r < 0 ? r : (ssize_t)len;
}

ssize_t conc_conn_recv_size(conc_conn *c, double timeout)
{
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return (ssize_t)conc__timeout_code(poll, conc_conn_recv_size_until(c, deadline));
}

int conc_conn_recv_alloc_until(conc_conn *c, void **out, size_t *len, int64_t deadline)
{
    if (!out || !len)
        return -EINVAL;
    ssize_t n = conc_conn_recv_size_until(c, deadline);
    if (n < 0)
        return (int)n;
    void *p = malloc(n ? (size_t)n : 1);
    if (!p)
        return -ENOMEM;
    ssize_t r = conc_conn_recv_bytes_until(c, p, (size_t)n, deadline);
    if (r < 0) {
        free(p);
        return (int)r;
    }
    *out = p;
    *len = (size_t)r;
    return 0;
}

int conc_conn_recv_alloc(conc_conn *c, void **out, size_t *len, double timeout)
{
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return (int)conc__timeout_code(poll, conc_conn_recv_alloc_until(c, out, len, deadline));
}

/* True when a receive would not wait: bytes read ahead, or the descriptor
 * is readable (data, the peer's close or an error).  Never takes bytes out
 * of the descriptor, so another holder of this end (a forked process, a
 * dup) still receives them, as with Python's poll(). */
static int has_input(const conc_conn *c)
{
    if (buffered(c) > 0 || c->eof)
        return 1;
    struct pollfd p = { .fd = c->fd, .events = POLLIN, .revents = 0 };
    int r;
    do
        r = poll(&p, 1, 0);
    while (r < 0 && errno == EINTR);
    if (r < 0)
        return -errno;
    if (r > 0 && (p.revents & POLLNVAL))
        return -EBADF;
    return r > 0;
}

int conc_conn_poll_until(conc_conn *c, int64_t deadline)
{
    int r = check_recv(c);
    if (r < 0)
        return r;
    for (;;) {
        r = has_input(c);
        if (r != 0)
            return r > 0 ? 0 : r;
        if (passed(deadline))
            return -ETIMEDOUT;
        r = conc__wait_fd(c->fd, POLLIN, deadline);
        if (r < 0)
            return r;
    }
}

int conc_conn_poll(conc_conn *c, double timeout)
{
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return (int)conc__timeout_code(poll, conc_conn_poll_until(c, deadline));
}
