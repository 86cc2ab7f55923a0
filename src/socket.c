/*
 * socket.c - Python's socket module (conc/socket.h).
 *
 * Every descriptor is O_NONBLOCK whatever the socket's timeout: a call
 * tries the operation, and when the kernel says EAGAIN it waits for the
 * descriptor through the wait layer (conc__wait_fd: a greenlet parks, a
 * thread sleeps in ppoll) until the deadline, then tries again.  The
 * timeout only decides the deadline.  The one exception is a socket a
 * plain thread owns (a threading server's connection, accepted by
 * conc__socket_accept_now): its descriptor blocks, a call without a
 * deadline from a thread without a hub sleeps in the operation itself,
 * and every other call passes MSG_DONTWAIT or first makes the descriptor
 * non-blocking again (unblock), so what the caller sees is the same.
 * EINTR from the operation is retried at once; an interrupted wait
 * returns 0 from the wait layer and the loop tries again with the same
 * deadline, so a signal never shortens or stretches a call.
 *
 * Addresses and the resolver calls are in socket_addr.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "conc/socket.h"
#include "internal.h"
#include "socket.h"
#include "sys/sockcall.h"
#include "sys/wait.h"

/* The default timeout of new sockets, as a double's bits (atomic). */
static double default_timeout = CONC_FOREVER;

static double load_default(void)
{
    double d;
    uint64_t bits = __atomic_load_n((uint64_t *)&default_timeout, __ATOMIC_RELAXED);
    memcpy(&d, &bits, sizeof d);
    return d;
}

/* A timeout in its stored form: CONC_FOREVER for forever (also +inf), or
 * -EINVAL's marker NAN for a bad value. */
static double norm_timeout(double t)
{
    int k = conc__timeout_kind(t);
    if (k < 0)
        return NAN;
    return k == CONC__TIMEOUT_FOREVER ? CONC_FOREVER : t;
}

int conc_socket_set_default_timeout(double timeout)
{
    double t = norm_timeout(timeout);
    if (isnan(t))
        return -EINVAL;
    uint64_t bits;
    memcpy(&bits, &t, sizeof bits);
    __atomic_store_n((uint64_t *)&default_timeout, bits, __ATOMIC_RELAXED);
    return 0;
}

double conc_socket_default_timeout(void)
{
    return load_default();
}

/* ------------------------------------------------- blocking descriptors */

/* True when a call on s until deadline may sleep in the operation: the
 * descriptor blocks, there is no deadline and the caller is a plain
 * thread (a greenlet must park through its hub instead). */
static inline bool may_block(const conc_socket *s, int64_t deadline)
{
    return deadline == CONC_NO_DEADLINE && !conc__wait_ops &&
           atomic_load_explicit(&s->fd_blocks, memory_order_relaxed);
}

/* The flags of a recv or send family call: MSG_DONTWAIT unless it may
 * block. */
static inline int op_flags(const conc_socket *s, int flags, int64_t deadline)
{
    return may_block(s, deadline) ? flags : flags | MSG_DONTWAIT;
}

/* Makes s's descriptor non-blocking again before a call that takes no
 * flags (accept, connect, sendfile, detach). */
static void unblock(conc_socket *s)
{
    if (!atomic_load_explicit(&s->fd_blocks, memory_order_relaxed))
        return;
    int fl = fcntl(s->fd, F_GETFL);
    if (fl >= 0 && !(fl & O_NONBLOCK))
        fcntl(s->fd, F_SETFL, fl | O_NONBLOCK);
    atomic_store_explicit(&s->fd_blocks, false, memory_order_relaxed);
}

/* ----------------------------------------------------------- lifecycle */

/* Handle keys (struct conc_socket): 0 is none. */
static uint64_t last_key;

static inline uint64_t new_key(void)
{
    return __atomic_add_fetch(&last_key, 1, __ATOMIC_RELAXED);
}

/* Whether a short plain read of a socket of this family, type and
 * protocol takes its whole receive queue (the drains field of socket.h):
 * TCP, before any upper layer protocol. */
static inline bool tcp_stream(int family, int type, int proto)
{
    return (family == AF_INET || family == AF_INET6) && type == SOCK_STREAM &&
           proto == IPPROTO_TCP;
}

/* Whether the TCP socket fd, made elsewhere, has no upper layer protocol
 * (TCP_ULP reads back an empty name). */
static bool no_ulp(int fd)
{
    char name[32];
    socklen_t len = sizeof name;
    return getsockopt(fd, IPPROTO_TCP, TCP_ULP, name, &len) == 0 && (len == 0 || name[0] == 0);
}

/* Makes the handle around an open descriptor (already non-blocking and
 * close-on-exec).  Reads family, type and protocol from it; `fresh` says
 * the descriptor was just made here (no upper layer protocol to ask for). */
static int wrap_fd(conc_socket **out, int fd, double timeout, bool fresh)
{
    conc_socket *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    int v;
    socklen_t len = sizeof v;
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &v, &len) == 0)
        s->family = v;
    len = sizeof v;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &v, &len) == 0)
        s->type = v;
    len = sizeof v;
    if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &v, &len) == 0)
        s->proto = v;
    s->fd = fd;
    s->timeout = timeout;
    s->key = new_key();
    if (tcp_stream(s->family, s->type, s->proto) && (fresh || no_ulp(fd)))
        atomic_store_explicit(&s->drains, true, memory_order_relaxed);
    *out = s;
    return 0;
}

static int wrap(conc_socket **out, int fd, double timeout)
{
    return wrap_fd(out, fd, timeout, true);
}

int conc__socket_wrap(conc_socket **out, int fd)
{
    return wrap_fd(out, fd, load_default(), false);
}

#define TYPE_FLAGS (SOCK_NONBLOCK | SOCK_CLOEXEC)

int conc_socket_new(conc_socket **out, int family, int type, int proto)
{
    if (!out)
        return -EINVAL;
    int base = type & ~TYPE_FLAGS;
    if (base <= 0 || base > 0xff)
        return -EINVAL;
    int fd = socket(family, base | SOCK_NONBLOCK | SOCK_CLOEXEC, proto);
    if (fd < 0)
        return -errno;
    int r = wrap(out, fd, (type & SOCK_NONBLOCK) ? 0 : load_default());
    if (r < 0)
        close(fd);
    return r;
}

/* Checks that fd is an open socket; 0, -EBADF or -ENOTSOCK. */
static int check_socket_fd(int fd)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return -errno;
    return S_ISSOCK(st.st_mode) ? 0 : -ENOTSOCK;
}

/* Makes fd non-blocking and close-on-exec. */
static int make_ours(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || (!(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0))
        return -errno;
    int fdfl = fcntl(fd, F_GETFD);
    if (fdfl < 0 || (!(fdfl & FD_CLOEXEC) && fcntl(fd, F_SETFD, fdfl | FD_CLOEXEC) != 0))
        return -errno;
    return 0;
}

int conc_socket_from_fd(conc_socket **out, int fd)
{
    if (!out || fd < 0)
        return -EINVAL;
    int r = check_socket_fd(fd);
    if (r == 0)
        r = make_ours(fd);
    if (r == 0)
        r = conc__socket_wrap(out, fd);
    return r;
}

int conc_socket_attach(conc_socket **out, int fd)
{
    if (!out || fd < 0)
        return -EINVAL;
    int r = check_socket_fd(fd);
    if (r < 0)
        return r;
    int d = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (d < 0)
        return -errno;
    r = make_ours(d);
    if (r == 0)
        r = conc__socket_wrap(out, d);
    if (r < 0)
        close(d);
    return r;
}

int conc_socket_pair(conc_socket **a, conc_socket **b, int family, int type, int proto)
{
    if (!a || !b)
        return -EINVAL;
    if (family == 0)
        family = AF_UNIX;
    int base = type & ~TYPE_FLAGS;
    if (base == 0)
        base = SOCK_STREAM;
    if (base < 0 || base > 0xff)
        return -EINVAL;
    int sv[2];
    if (socketpair(family, base | SOCK_NONBLOCK | SOCK_CLOEXEC, proto, sv) != 0)
        return -errno;
    double t = (type & SOCK_NONBLOCK) ? 0 : load_default();
    conc_socket *x = NULL, *y = NULL;
    int r = wrap(&x, sv[0], t);
    if (r == 0)
        r = wrap(&y, sv[1], t);
    if (r < 0) {
        free(x);
        close(sv[0]);
        close(sv[1]);
        return r;
    }
    *a = x;
    *b = y;
    return 0;
}

int conc_socket_dup(conc_socket *s, conc_socket **out)
{
    if (!s || !out)
        return -EINVAL;
    if (s->fd < 0)
        return -EBADF;
    int d = fcntl(s->fd, F_DUPFD_CLOEXEC, 0);
    if (d < 0)
        return -errno;
    int r = wrap(out, d, s->timeout);
    if (r < 0) {
        close(d);
    } else {        /* the same open file: blocking if s's is, draining if s's does */
        atomic_store_explicit(&(*out)->fd_blocks,
                              atomic_load_explicit(&s->fd_blocks, memory_order_relaxed),
                              memory_order_relaxed);
        atomic_store_explicit(&(*out)->drains,
                              atomic_load_explicit(&s->drains, memory_order_relaxed),
                              memory_order_relaxed);
    }
    return r;
}

int conc_socket_close(conc_socket *s)
{
    if (!s)
        return -EINVAL;
    if (s->fd >= 0) {
        conc__wait_fd_close(s->fd);
        close(s->fd);           /* the descriptor is gone whatever it says */
        s->fd = -1;
    }
    return 0;
}

int conc_socket_detach(conc_socket *s)
{
    if (!s)
        return -EINVAL;
    int fd = s->fd;
    if (fd < 0)
        return -EBADF;
    unblock(s);
    s->fd = -1;
    return fd;
}

void conc_socket_free(conc_socket *s)
{
    if (!s)
        return;
    conc_socket_close(s);
    free(s);
}

/* ---------------------------------------------------------- attributes */

int conc_socket_fd(const conc_socket *s)
{
    if (!s)
        return -EINVAL;
    return s->fd >= 0 ? s->fd : -EBADF;
}

int conc_socket_family(const conc_socket *s)
{
    return s ? s->family : 0;
}

int conc_socket_type(const conc_socket *s)
{
    return s ? s->type : 0;
}

int conc_socket_proto(const conc_socket *s)
{
    return s ? s->proto : 0;
}

bool conc_socket_closed(const conc_socket *s)
{
    return !s || s->fd < 0;
}

int conc_socket_set_timeout(conc_socket *s, double timeout)
{
    if (!s)
        return -EINVAL;
    double t = norm_timeout(timeout);
    if (isnan(t))
        return -EINVAL;
    if (s->fd < 0)
        return -EBADF;
    s->timeout = t;
    return 0;
}

double conc_socket_timeout(const conc_socket *s)
{
    return s ? s->timeout : CONC_FOREVER;
}

int conc_socket_set_blocking(conc_socket *s, bool blocking)
{
    return conc_socket_set_timeout(s, blocking ? CONC_FOREVER : 0);
}

bool conc_socket_blocking(const conc_socket *s)
{
    return s && s->timeout != 0;
}

/* --------------------------------------------------------- the waiting */

/* The deadline of a call in the seconds form: from the socket's timeout.
 * *poll is set for non-blocking mode. */
static int64_t sock_deadline(const conc_socket *s, bool *poll)
{
    int64_t d;
    if (conc__timeout_parse(s->timeout, &d, poll))
        d = CONC_NO_DEADLINE;          /* cannot happen: checked when set */
    return d;
}

/*
 * Waits for fd's events after an operation said EAGAIN.  *waited counts
 * the waits of this call: once the deadline passed, a second EAGAIN after
 * a wait that said "ready" (a datagram with a bad checksum, a connection
 * another thread accepted) ends the call instead of looping.  Returns 0 to
 * try again, -ETIMEDOUT, -ECANCELED, -EBADF.
 */
static int wait_ready(int fd, short events, int64_t deadline, int *waited)
{
    if (*waited && deadline != CONC_NO_DEADLINE && conc_now() >= deadline)
        return -ETIMEDOUT;
    (*waited)++;
    return conc__wait_fd(fd, events, deadline);
}

/*
 * wait_ready for s itself, after its operation said EAGAIN: the loops
 * below try again after every 0, so a hub may wait edge-triggered
 * (conc__wait_io).  Not for POLLPRI (urgent data), and not for the way
 * out of a datagram or sequenced-packet socket: those rarely wait, and a
 * Unix one's room is its receiver's queue, whose draining the kernel
 * relays to the sender's waiters; a level wait asks the socket afresh.
 */
static int wait_sock(conc_socket *s, short events, int64_t deadline, int *waited)
{
    if (*waited && deadline != CONC_NO_DEADLINE && conc_now() >= deadline)
        return -ETIMEDOUT;
    (*waited)++;
    if (events == POLLIN || (events == POLLOUT && s->type == SOCK_STREAM))
        return conc__wait_io(s->fd, s->key, events, deadline);
    return conc__wait_fd(s->fd, events, deadline);
}

/* wait_sock for a read of up to len bytes into buf that a hub may make
 * itself (conc__wait_io_read): 1 with *n its result, or what wait_sock
 * returns. */
static int wait_sock_read(conc_socket *s, void *buf, size_t len, int64_t deadline,
                          int *waited, ssize_t *n)
{
    if (*waited && deadline != CONC_NO_DEADLINE && conc_now() >= deadline)
        return -ETIMEDOUT;
    (*waited)++;
    return conc__wait_io_read(s->fd, s->key, buf, len, deadline, n);
}

int conc__socket_wait(conc_socket *s, short events, int64_t deadline)
{
    int waited = 0;
    return wait_ready(s->fd, events, deadline, &waited);
}

/* The kernel's errno for a failed operation: EWOULDBLOCK is EAGAIN. */
static inline int op_err(void)
{
    int e = errno;
    return e == EWOULDBLOCK ? -EAGAIN : -e;
}

/* ------------------------------------------------ addresses and options */

static int check_addr(const conc_sockaddr *a)
{
    return a && a->len > 0 && a->len <= sizeof a->u ? 0 : -EINVAL;
}

int conc_socket_bind(conc_socket *s, const conc_sockaddr *addr)
{
    if (!s || check_addr(addr))
        return -EINVAL;
    if (s->fd < 0)
        return -EBADF;
    return bind(s->fd, &addr->u.sa, addr->len) == 0 ? 0 : -errno;
}

int conc__socket_bind_reuse_port(conc_socket *s, const conc_sockaddr *addr)
{
    if (!s || check_addr(addr))
        return -EINVAL;
    if (s->fd < 0)
        return -EBADF;
    int one = 1;
    int family = addr->u.sa.sa_family;
    bool any_port = (family == AF_INET || family == AF_INET6) && conc_sockaddr_port(addr) == 0;
    if (!any_port && setsockopt(s->fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0)
        return -errno;
    if (bind(s->fd, &addr->u.sa, addr->len) < 0)
        return -errno;
    if (any_port && setsockopt(s->fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0)
        return -errno;
    return 0;
}

int conc_socket_listen(conc_socket *s, int backlog)
{
    if (!s)
        return -EINVAL;
    if (s->fd < 0)
        return -EBADF;
    if (backlog < 0)
        backlog = 0;
    return listen(s->fd, backlog) == 0 ? 0 : -errno;
}

static int name_of(conc_socket *s, conc_sockaddr *out, bool peer)
{
    if (!s || !out)
        return -EINVAL;
    if (s->fd < 0)
        return -EBADF;
    memset(out, 0, sizeof *out);
    socklen_t len = sizeof out->u;
    int r = peer ? getpeername(s->fd, &out->u.sa, &len) : getsockname(s->fd, &out->u.sa, &len);
    if (r != 0)
        return -errno;
    out->len = len < sizeof out->u ? len : sizeof out->u;
    return 0;
}

int conc_socket_getsockname(conc_socket *s, conc_sockaddr *out)
{
    return name_of(s, out, false);
}

int conc_socket_getpeername(conc_socket *s, conc_sockaddr *out)
{
    return name_of(s, out, true);
}

int conc_socket_setsockopt(conc_socket *s, int level, int name, const void *value,
                           socklen_t len)
{
    if (!s || (!value && len > 0))
        return -EINVAL;
    if (s->fd < 0)
        return -EBADF;
    if (level == IPPROTO_TCP && name == TCP_ULP)   /* reads may stop at its records */
        atomic_store_explicit(&s->drains, false, memory_order_relaxed);
    return setsockopt(s->fd, level, name, value, len) == 0 ? 0 : -errno;
}

int conc_socket_setsockopt_int(conc_socket *s, int level, int name, int value)
{
    return conc_socket_setsockopt(s, level, name, &value, sizeof value);
}

int conc_socket_getsockopt(conc_socket *s, int level, int name, void *value, socklen_t *len)
{
    if (!s || !len || (!value && *len > 0))
        return -EINVAL;
    if (s->fd < 0)
        return -EBADF;
    return getsockopt(s->fd, level, name, value, len) == 0 ? 0 : -errno;
}

int conc_socket_getsockopt_int(conc_socket *s, int level, int name, int *value)
{
    if (!value)
        return -EINVAL;
    int v = 0;
    socklen_t len = sizeof v;
    int r = conc_socket_getsockopt(s, level, name, &v, &len);
    if (r == 0)
        *value = v;
    return r;
}

int conc_socket_shutdown(conc_socket *s, int how)
{
    if (!s || (how != SHUT_RD && how != SHUT_WR && how != SHUT_RDWR))
        return -EINVAL;
    if (s->fd < 0)
        return -EBADF;
    return shutdown(s->fd, how) == 0 ? 0 : -errno;
}

/* ------------------------------------------------------ accept, connect */

/* One accept4 on s (non-blocking); the connection's descriptor blocks
 * when `blocks` (fd_blocks in socket.h).  Returns 0 or -errno. */
static int accept_once(conc_socket *s, conc_socket **out, conc_sockaddr *peer, bool blocks)
{
    conc_sockaddr a;
    memset(&a, 0, sizeof a);
    socklen_t len = sizeof a.u;
    int fd = accept4(s->fd, &a.u.sa, &len, blocks ? SOCK_CLOEXEC : SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
        return op_err();
    /* The connection has the listener's family, type and protocol: no
     * need to ask the kernel. */
    conc_socket *c = malloc(sizeof *c);
    if (!c) {
        close(fd);
        return -ENOMEM;
    }
    *c = (conc_socket){ .fd = fd, .family = s->family, .type = s->type, .proto = s->proto,
                        .timeout = load_default(), .fd_blocks = blocks,
                        .key = new_key(),
                        .drains = tcp_stream(s->family, s->type, s->proto) };
    *out = c;
    if (peer) {
        a.len = len < sizeof a.u ? len : sizeof a.u;
        *peer = a;
    }
    return 0;
}

int conc__socket_accept_now(conc_socket *s, conc_socket **out, conc_sockaddr *peer,
                            bool blocks)
{
    if (!s || !out)
        return -EINVAL;
    if (s->fd < 0)
        return -EBADF;
    unblock(s);
    return accept_once(s, out, peer, blocks);
}

int conc_socket_accept_until(conc_socket *s, conc_socket **out, conc_sockaddr *peer,
                             int64_t deadline)
{
    if (!s || !out)
        return -EINVAL;
    if (s->fd < 0)
        return -EBADF;
    unblock(s);
    int waited = 0;
    for (;;) {
        int e = accept_once(s, out, peer, false);
        if (e == 0)
            return 0;
        if (e == -EINTR || e == -ECONNABORTED || e == -EPROTO)
            continue;
        if (e != -EAGAIN)
            return e;
        int w = wait_sock(s, POLLIN, deadline, &waited);
        if (w < 0)
            return w;
    }
}

int conc_socket_accept(conc_socket *s, conc_socket **out, conc_sockaddr *peer)
{
    if (!s || !out)
        return -EINVAL;
    bool poll;
    int64_t d = sock_deadline(s, &poll);
    return (int)conc__timeout_code(poll, conc_socket_accept_until(s, out, peer, d));
}

/* A Unix stream socket whose listener's backlog is full says EAGAIN and
 * gives nothing to wait on: try again after a pause that doubles from 50
 * microseconds up to 10 ms, until the deadline. */
static int unix_connect_backoff(int64_t *pause, int64_t deadline)
{
    int64_t now = conc_now();
    if (deadline != CONC_NO_DEADLINE && now >= deadline)
        return -ETIMEDOUT;
    int64_t until = now + *pause;
    if (until > deadline)
        until = deadline;
    if (*pause < 10000000)
        *pause *= 2;
    return conc__sleep_until(until);
}

int conc_socket_connect_until(conc_socket *s, const conc_sockaddr *addr, int64_t deadline)
{
    if (!s || check_addr(addr))
        return -EINVAL;
    if (s->fd < 0)
        return -EBADF;
    unblock(s);
    int64_t pause = 50000;
    int waited = 0;
    for (;;) {
        if (connect(s->fd, &addr->u.sa, addr->len) == 0)
            return 0;
        int e = errno;
        if (e == EINTR)
            continue;
        if (e == EAGAIN && s->family == AF_UNIX) {
            int r = unix_connect_backoff(&pause, deadline);
            if (r < 0)
                return r;
            continue;
        }
        if (e != EINPROGRESS && e != EALREADY)
            return -e;
        break;
    }
    /* In progress: writable once it is decided; SO_ERROR tells how. */
    for (;;) {
        int w = wait_sock(s, POLLOUT, deadline, &waited);
        if (w < 0)
            return w;
        struct pollfd p = { .fd = s->fd, .events = POLLOUT };
        if (poll(&p, 1, 0) <= 0)
            continue;                   /* interrupted or spurious */
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
            return -errno;
        return -err;
    }
}

int conc_socket_connect(conc_socket *s, const conc_sockaddr *addr)
{
    if (!s || check_addr(addr))
        return -EINVAL;
    bool poll;
    int64_t d = sock_deadline(s, &poll);
    return (int)conc__timeout_code(poll, conc_socket_connect_until(s, addr, d));
}

/* ---------------------------------------------------------- receiving */

#define BAD_FLAGS MSG_DONTWAIT

/* A read of urgent data out of band: the mark it leaves stops later reads
 * with no event to say so (the drains field of socket.h). */
static void oob_read(conc_socket *s)
{
    if (atomic_load_explicit(&s->drains, memory_order_relaxed))
        atomic_store_explicit(&s->drains, false, memory_order_relaxed);
}

/* Whether a read of s with these flags that returns fewer bytes than asked
 * has taken the whole receive queue (plain reads of a TCP stream). */
static inline bool read_drains(const conc_socket *s, int flags)
{
    return (flags & ~MSG_WAITALL) == 0 &&
           atomic_load_explicit(&s->drains, memory_order_relaxed);
}

ssize_t conc_socket_recvmsg_until(conc_socket *s, struct msghdr *msg, int flags,
                                  int64_t deadline)
{
    if (!s || !msg || (flags & BAD_FLAGS))
        return -EINVAL;
    if (s->fd < 0)
        return -EBADF;
    if (flags & MSG_OOB)
        oob_read(s);
    int waited = 0;
    for (;;) {
        ssize_t n = recvmsg(s->fd, msg, op_flags(s, flags, deadline) | MSG_CMSG_CLOEXEC);
        if (n >= 0)
            return n;
        ssize_t e = op_err();
        if (e == -EINTR)
            continue;
        if (e != -EAGAIN)
            return e;
        int w = wait_sock(s, (flags & MSG_OOB) ? POLLPRI : POLLIN, deadline, &waited);
        if (w < 0)
            return w;
    }
}

/* MSG_WAITALL on a non-blocking descriptor returns what is there: the
 * rest is gathered here, each part waited for.
 *
 * After a read of a TCP stream that took the whole receive queue (fewer
 * bytes than asked), a hub knows the socket has nothing to read until its
 * next edge (src/hub.c, "fd records"): the next read that may wait waits
 * first, and MSG_WAITALL waits for its next part at once, instead of a
 * recv that says EAGAIN. */
static ssize_t recv_common(conc_socket *s, void *buf, size_t len, int flags,
                           conc_sockaddr *from, int64_t deadline)
{
    if (!s || (!buf && len > 0) || (flags & BAD_FLAGS))
        return -EINVAL;
    if (s->fd < 0)
        return -EBADF;
    if (from)
        memset(from, 0, sizeof *from);
    if (flags & MSG_OOB)
        oob_read(s);
    size_t got = 0;
    bool all = (flags & MSG_WAITALL) && s->type == SOCK_STREAM && !(flags & MSG_PEEK);
    bool drains = read_drains(s, flags);
    /* a read the hub may make for us when it takes the socket's edge */
    bool pre = drains && flags == 0 && !from && s->preread && len > 0;
    int fl = op_flags(s, flags & ~MSG_WAITALL, deadline);
    int waited = 0;
    ssize_t staged;
    if (drains && len > 0 && (deadline == CONC_NO_DEADLINE || deadline > conc_now()) &&
        conc__wait_io_empty(s->fd, s->key)) {
        /* A timeout still tries once: data may have come before the call
         * whose edge the hub had not taken yet (a ready socket wins over a
         * passed deadline, as everywhere). */
        int w = pre ? wait_sock_read(s, buf, len, deadline, &waited, &staged)
                    : wait_sock(s, POLLIN, deadline, &waited);
        if (w == 1)
            return staged;
        if (w < 0 && w != -ETIMEDOUT)
            return w;
    }
    for (;;) {
        ssize_t n;
        if (from) {
            socklen_t alen = sizeof from->u;
            n = recvfrom(s->fd, (char *)buf + got, len - got, fl, &from->u.sa, &alen);
            if (n >= 0)
                from->len = alen < sizeof from->u ? alen : sizeof from->u;
        } else {
            /* a call that cannot block skips glibc's cancellation
             * switches (sys/sockcall.h) */
            n = (fl & MSG_DONTWAIT) ? conc__recv_nb(s->fd, (char *)buf + got, len - got, fl)
                                    : recv(s->fd, (char *)buf + got, len - got, fl);
        }
        bool drained = drains && n > 0 && (size_t)n < len - got &&
                       conc__wait_io_drained(s->fd, s->key);
        if (n > 0 && all) {
            got += (size_t)n;
            if (got == len)
                return (ssize_t)got;
            if (!drained)
                continue;
            int w = wait_sock(s, POLLIN, deadline, &waited);
            if (w < 0 && w != -ETIMEDOUT)
                return (ssize_t)got;
            continue;               /* after a timeout, one more try */
        }
        if (n >= 0)
            return all ? (ssize_t)got : n;
        ssize_t e = op_err();
        if (e == -EINTR)
            continue;
        if (e != -EAGAIN)
            return got ? (ssize_t)got : e;
        int w = pre ? wait_sock_read(s, buf, len, deadline, &waited, &staged)
                    : wait_sock(s, (flags & MSG_OOB) ? POLLPRI : POLLIN, deadline, &waited);
        if (w == 1)
            return staged;      /* pre: never gathering (got is 0) */
        if (w < 0)
            return got ? (ssize_t)got : w;
    }
}

ssize_t conc_socket_recv_until(conc_socket *s, void *buf, size_t len, int flags,
                               int64_t deadline)
{
    return recv_common(s, buf, len, flags, NULL, deadline);
}

ssize_t conc_socket_recv(conc_socket *s, void *buf, size_t len, int flags)
{
    if (!s)
        return -EINVAL;
    bool poll;
    int64_t d = sock_deadline(s, &poll);
    return conc__timeout_code(poll, recv_common(s, buf, len, flags, NULL, d));
}

ssize_t conc_socket_recvfrom_until(conc_socket *s, void *buf, size_t len, int flags,
                                   conc_sockaddr *from, int64_t deadline)
{
    return recv_common(s, buf, len, flags, from, deadline);
}

ssize_t conc_socket_recvfrom(conc_socket *s, void *buf, size_t len, int flags,
                             conc_sockaddr *from)
{
    if (!s)
        return -EINVAL;
    bool poll;
    int64_t d = sock_deadline(s, &poll);
    return conc__timeout_code(poll, recv_common(s, buf, len, flags, from, d));
}

ssize_t conc_socket_recvmsg(conc_socket *s, struct msghdr *msg, int flags)
{
    if (!s)
        return -EINVAL;
    bool poll;
    int64_t d = sock_deadline(s, &poll);
    return conc__timeout_code(poll, conc_socket_recvmsg_until(s, msg, flags, d));
}

ssize_t conc_socket_recv_fds_until(conc_socket *s, void *buf, size_t len, int *fds,
                                   size_t maxfds, size_t *nfds, int flags, int64_t deadline)
{
    if (!s || !fds || !nfds || maxfds < 1 || maxfds > CONC_SOCKET_MAX_FDS ||
        (!buf && len > 0))
        return -EINVAL;
    *nfds = 0;
    union {
        char buf[CMSG_SPACE(CONC_SOCKET_MAX_FDS * sizeof(int))];
        struct cmsghdr align;
    } ctl;
    memset(&ctl, 0, sizeof ctl);
    struct iovec iov = { .iov_base = buf, .iov_len = len };
    struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
                        .msg_controllen = CMSG_SPACE(maxfds * sizeof(int)) };
    ssize_t n = conc_socket_recvmsg_until(s, &m, flags, deadline);
    if (n < 0)
        return n;
    /* What another process sent is checked before it is trusted: only
     * SCM_RIGHTS of whole ints, no more than maxfds kept. */
    size_t kept = 0;
    bool over = (m.msg_flags & MSG_CTRUNC) != 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS ||
            c->cmsg_len < CMSG_LEN(0))
            continue;
        size_t cnt = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        const unsigned char *p = CMSG_DATA(c);
        for (size_t i = 0; i < cnt; i++) {
            int fd;
            memcpy(&fd, p + i * sizeof(int), sizeof fd);
            if (fd < 0)
                continue;
            if (kept < maxfds)
                fds[kept++] = fd;
            else {
                close(fd);
                over = true;
            }
        }
    }
    *nfds = kept;
    return over ? -EMSGSIZE : n;
}

ssize_t conc_socket_recv_fds(conc_socket *s, void *buf, size_t len, int *fds, size_t maxfds,
                             size_t *nfds, int flags)
{
    if (!s)
        return -EINVAL;
    bool poll;
    int64_t d = sock_deadline(s, &poll);
    return conc__timeout_code(poll,
                              conc_socket_recv_fds_until(s, buf, len, fds, maxfds, nfds, flags, d));
}

/* ------------------------------------------------------------ sending */

ssize_t conc_socket_sendmsg_until(conc_socket *s, const struct msghdr *msg, int flags,
                                  int64_t deadline)
{
    if (!s || !msg || (flags & BAD_FLAGS))
        return -EINVAL;
    if (s->fd < 0)
        return -EBADF;
    int waited = 0;
    for (;;) {
        ssize_t n = sendmsg(s->fd, msg, op_flags(s, flags, deadline) | MSG_NOSIGNAL);
        if (n >= 0)
            return n;
        ssize_t e = op_err();
        if (e == -EINTR)
            continue;
        if (e != -EAGAIN)
            return e;
        int w = wait_sock(s, POLLOUT, deadline, &waited);
        if (w < 0)
            return w;
    }
}

ssize_t conc_socket_sendmsg(conc_socket *s, const struct msghdr *msg, int flags)
{
    if (!s)
        return -EINVAL;
    bool poll;
    int64_t d = sock_deadline(s, &poll);
    return conc__timeout_code(poll, conc_socket_sendmsg_until(s, msg, flags, d));
}

static ssize_t send_common(conc_socket *s, const void *buf, size_t len, int flags,
                           const conc_sockaddr *to, int64_t deadline)
{
    if (!s || (!buf && len > 0) || (flags & BAD_FLAGS) || (to && check_addr(to)))
        return -EINVAL;
    if (s->fd < 0)
        return -EBADF;
    int waited = 0;
    int fl = op_flags(s, flags, deadline) | MSG_NOSIGNAL;
    for (;;) {
        ssize_t n = to                     ? sendto(s->fd, buf, len, fl, &to->u.sa, to->len)
                    : (fl & MSG_DONTWAIT) ? conc__send_nb(s->fd, buf, len, fl)
                                          : send(s->fd, buf, len, fl);
        if (n >= 0)
            return n;
        ssize_t e = op_err();
        if (e == -EINTR)
            continue;
        if (e != -EAGAIN)
            return e;
        int w = wait_sock(s, POLLOUT, deadline, &waited);
        if (w < 0)
            return w;
    }
}

ssize_t conc_socket_send_until(conc_socket *s, const void *buf, size_t len, int flags,
                               int64_t deadline)
{
    return send_common(s, buf, len, flags, NULL, deadline);
}

ssize_t conc_socket_send(conc_socket *s, const void *buf, size_t len, int flags)
{
    if (!s)
        return -EINVAL;
    bool poll;
    int64_t d = sock_deadline(s, &poll);
    return conc__timeout_code(poll, send_common(s, buf, len, flags, NULL, d));
}

ssize_t conc_socket_sendto_until(conc_socket *s, const void *buf, size_t len, int flags,
                                 const conc_sockaddr *addr, int64_t deadline)
{
    if (!addr)
        return -EINVAL;
    return send_common(s, buf, len, flags, addr, deadline);
}

ssize_t conc_socket_sendto(conc_socket *s, const void *buf, size_t len, int flags,
                           const conc_sockaddr *addr)
{
    if (!s || !addr)
        return -EINVAL;
    bool poll;
    int64_t d = sock_deadline(s, &poll);
    return conc__timeout_code(poll, send_common(s, buf, len, flags, addr, d));
}

int conc_socket_sendall_until(conc_socket *s, const void *buf, size_t len, int flags,
                              size_t *sent, int64_t deadline)
{
    size_t done = 0;
    int r = 0;
    if (sent)
        *sent = 0;
    if (!s || (!buf && len > 0) || (flags & BAD_FLAGS))
        return -EINVAL;
    do {
        ssize_t n = send_common(s, (const char *)buf + done, len - done, flags, NULL, deadline);
        if (n < 0) {
            r = (int)n;
            break;
        }
        done += (size_t)n;
    } while (done < len);
    if (sent)
        *sent = done;
    return r;
}

int conc_socket_sendall(conc_socket *s, const void *buf, size_t len, int flags, size_t *sent)
{
    if (sent)
        *sent = 0;
    if (!s)
        return -EINVAL;
    bool poll;
    int64_t d = sock_deadline(s, &poll);
    return (int)conc__timeout_code(poll, conc_socket_sendall_until(s, buf, len, flags, sent, d));
}

ssize_t conc_socket_send_fds_until(conc_socket *s, const void *buf, size_t len, const int *fds,
                                   size_t nfds, int flags, int64_t deadline)
{
    if (!s || !buf || len == 0 || !fds || nfds < 1 || nfds > CONC_SOCKET_MAX_FDS)
        return -EINVAL;
    union {
        char buf[CMSG_SPACE(CONC_SOCKET_MAX_FDS * sizeof(int))];
        struct cmsghdr align;
    } ctl;
    memset(&ctl, 0, sizeof ctl);
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
                        .msg_controllen = CMSG_SPACE(nfds * sizeof(int)) };
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
    memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
    return conc_socket_sendmsg_until(s, &m, flags, deadline);
}

ssize_t conc_socket_send_fds(conc_socket *s, const void *buf, size_t len, const int *fds,
                             size_t nfds, int flags)
{
    if (!s)
        return -EINVAL;
    bool poll;
    int64_t d = sock_deadline(s, &poll);
    return conc__timeout_code(poll,
                              conc_socket_send_fds_until(s, buf, len, fds, nfds, flags, d));
}

/* ----------------------------------------------------------- sendfile */

/* sendfile(2) has no MSG_NOSIGNAL: SIGPIPE is blocked around it, and one
 * it raised is taken back before the mask is restored (as
 * conc__writev_nosigpipe does for pipes). */
static ssize_t sendfile_nosigpipe(int out, int in, off_t *off, size_t count)
{
    sigset_t pipe_set, old;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    ssize_t r;
    do
        r = sendfile(out, in, off, count);
    while (r < 0 && errno == EINTR);
    int err = errno;
    if (r < 0 && err == EPIPE && !sigismember(&old, SIGPIPE)) {
        static const struct timespec zero = { 0, 0 };
        while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR)
            ;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    errno = err;
    return r;
}

#define SENDFILE_CHUNK ((size_t)1 << 30)
#define FALLBACK_CHUNK ((size_t)1 << 16)

/* The copy through a buffer, for a file sendfile(2) cannot read. */
static int sendfile_fallback(conc_socket *s, int in, off_t offset, size_t count, size_t *done,
                             int64_t deadline)
{
    char *buf = malloc(FALLBACK_CHUNK);
    if (!buf)
        return -ENOMEM;
    int r = 0;
    for (;;) {
        size_t want = FALLBACK_CHUNK;
        if (count && count - *done < want)
            want = count - *done;
        if (want == 0)
            break;
        ssize_t n;
        if (offset >= 0)
            n = pread(in, buf, want, offset + (off_t)*done);
        else
            n = read(in, buf, want);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {          /* a non-blocking pipe */
            int waited = 0;
            r = wait_ready(in, POLLIN, deadline, &waited);
            if (r < 0)
                break;
            continue;
        }
        if (n < 0) {
            r = -errno;
            break;
        }
        if (n == 0)
            break;
        size_t put = 0;
        r = conc_socket_sendall_until(s, buf, (size_t)n, 0, &put, deadline);
        *done += put;
        if (r < 0) {
            if (offset < 0 && put < (size_t)n)  /* give back what was not sent */
                (void)lseek(in, -(off_t)((size_t)n - put), SEEK_CUR);
            break;
        }
    }
    free(buf);
    return r;
}

int conc_socket_sendfile_until(conc_socket *s, int in_fd, off_t offset, size_t count,
                               size_t *sent, int64_t deadline)
{
    size_t done = 0;
    if (sent)
        *sent = 0;
    if (!s || offset < -1)
        return -EINVAL;
    if (s->fd < 0)
        return -EBADF;
    if (in_fd < 0)
        return -EBADF;
    if (!may_block(s, deadline))
        unblock(s);
    int r = 0, waited = 0;
    for (;;) {
        size_t want = SENDFILE_CHUNK;
        if (count && count - done < want)
            want = count - done;
        if (want == 0)
            break;
        off_t off = offset + (off_t)done;
        ssize_t n = sendfile_nosigpipe(s->fd, in_fd, offset >= 0 ? &off : NULL, want);
        if (n > 0) {
            done += (size_t)n;
            waited = 0;                         /* progress resets the guard */
            continue;
        }
        if (n == 0)
            break;                              /* the end of the file */
        int e = op_err();
        if (e == -EINTR)
            continue;                           /* a blocking descriptor */
        if (e == -EAGAIN) {
            /* The socket is full, or (a non-blocking input) nothing to
             * read: wait for the socket, the usual case.  A level wait:
             * this EAGAIN may be the input's, with the socket writable
             * all along and no edge to come. */
            r = wait_ready(s->fd, POLLOUT, deadline, &waited);
            if (r < 0)
                break;
            continue;
        }
        if ((e == -EINVAL || e == -ENOSYS || e == -EOPNOTSUPP) && done == 0) {
            r = sendfile_fallback(s, in_fd, offset, count, &done, deadline);
            break;
        }
        r = e;
        break;
    }
    if (sent)
        *sent = done;
    return r;
}

int conc_socket_sendfile(conc_socket *s, int in_fd, off_t offset, size_t count, size_t *sent)
{
    if (sent)
        *sent = 0;
    if (!s)
        return -EINVAL;
    bool poll;
    int64_t d = sock_deadline(s, &poll);
    return (int)conc__timeout_code(poll,
                                   conc_socket_sendfile_until(s, in_fd, offset, count, sent, d));
}
