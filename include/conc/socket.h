/*
 * conc/socket.h - Python's socket module: sockets of the families AF_UNIX,
 * AF_INET and AF_INET6, of the types SOCK_STREAM and SOCK_DGRAM (SOCK_RAW
 * and SOCK_SEQPACKET where the kernel permits), with create_connection,
 * create_server, getaddrinfo and getnameinfo.
 *
 * Timeouts, as in Python.  Every socket has a timeout, set by
 * conc_socket_set_timeout (settimeout) and read by conc_socket_timeout
 * (gettimeout); a new socket takes the default timeout
 * (conc_socket_set_default_timeout, CONC_FOREVER unless changed):
 *   CONC_FOREVER   blocking mode: a call waits as long as it takes
 *   0              non-blocking mode: a call that cannot succeed at once
 *                  gives -EAGAIN (Python's BlockingIOError)
 *   t > 0          timeout mode: a call that cannot succeed in t seconds
 *                  gives -ETIMEDOUT (Python's TimeoutError)
 * The timeout covers one call (a sendall, a create_connection, an accept),
 * from its start to its return.  Each blocking call also has an _until form
 * that ignores the socket's timeout and takes an absolute CLOCK_MONOTONIC
 * deadline in ns (CONC_NO_DEADLINE: none); a deadline already passed tries
 * once and gives -ETIMEDOUT when the call cannot succeed at once.
 *
 * Coroutines: every wait goes through conc's one wait primitive.  From a
 * greenlet (conc/hub.h) a call that has to wait parks only that greenlet
 * (the hub's epoll watches the descriptor) and the thread runs the others;
 * conc_greenlet_kill ends the wait with -ECANCELED and an enclosing timeout
 * scope (conc_hub_timeout_push) with -ETIMEDOUT.  From a plain thread the
 * thread blocks.  conc_socket_getaddrinfo and conc_socket_getnameinfo,
 * which the resolver runs to completion, are handed to a worker thread
 * (conc/offload.h) when called from a greenlet, so they park it too.
 *
 * Signals: a call interrupted by a signal handler (installed without
 * SA_RESTART or with it) goes on waiting for the time that is left (PEP
 * 475); it never returns -EINTR.  SIGPIPE is never raised: a send to a peer
 * that is gone gives -EPIPE.
 *
 * The descriptor: conc keeps every socket's descriptor in O_NONBLOCK mode
 * (the waiting is conc's, whatever the timeout) and close-on-exec.  A
 * descriptor handed to conc_socket_from_fd or conc_socket_attach is made
 * O_NONBLOCK too, which every copy of it shares.  One exception: the
 * connection a threading server (conc/server.h) hands to its request
 * thread, when it has no request timeout, has a blocking descriptor, as
 * Python's request socket has: a call with no deadline from a thread
 * without a hub then sleeps in the kernel's recv or send itself, one
 * system call instead of a try, a poll and a second try.  The calls behave
 * the same: those that must not block (timeout 0 or a deadline, a
 * greenlet's) pass MSG_DONTWAIT, and accept, connect, a sendfile that must
 * not block and conc_socket_detach make the descriptor O_NONBLOCK again.
 *
 * Errors: every call returns 0 (or a count, length or descriptor) on
 * success and a negative errno on failure, as in conc/errors.h.  Codes
 * common to the calls below, not repeated in each:
 *   -EINVAL     a NULL handle or pointer that must not be NULL, a bad flag,
 *               length or timeout (NaN, negative other than CONC_FOREVER)
 *   -EBADF      the socket was closed (conc_socket_close, _detach)
 *   -EAGAIN     the socket is in non-blocking mode (timeout 0) and the
 *               call cannot succeed at once (an _until call whose
 *               deadline passed gives -ETIMEDOUT instead)
 *   -ETIMEDOUT  the timeout or deadline passed first
 *   -ECANCELED  the calling greenlet was killed while it waited
 * Whatever else the kernel reports comes back as its negative errno
 * (-ECONNREFUSED, -ECONNRESET, -EADDRINUSE, -ENOTCONN, -EMFILE...), with
 * two exceptions: a send to a closed peer is -EPIPE (never a signal) and
 * EINTR is never returned.  getaddrinfo's and getnameinfo's own errors are
 * the CONC_EAI_* codes of conc/errors.h, told apart from errno values by
 * CONC_IS_EAI and named by conc_strerror and conc_errname.
 *
 * Threads: one thread may receive while another sends on the same socket,
 * as with a descriptor.  Closing or freeing a socket another thread is
 * using is undefined, as for a descriptor.
 */
#ifndef CONC_SOCKET_H
#define CONC_SOCKET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <sys/un.h>
#include "conc/errors.h"
#include "conc/time.h"

#ifdef __cplusplus
extern "C" {
#endif

/* conc_socket - one socket (Python's socket.socket). */
typedef struct conc_socket conc_socket;

/*
 * conc_sockaddr - a socket address of any family with its length: what
 * Python writes as ("host", port), ("host", port, flowinfo, scope_id) or
 * "/path".  Pass &a.u.sa and a.len to the kernel's own calls; conc's calls
 * take the struct.  len is the number of bytes of u in use (0: empty).
 */
typedef struct conc_sockaddr {
    union {
        struct sockaddr sa;
        struct sockaddr_in in;          /* AF_INET */
        struct sockaddr_in6 in6;        /* AF_INET6 */
        struct sockaddr_un un;          /* AF_UNIX */
        struct sockaddr_storage storage;
    } u;
    socklen_t len;
} conc_sockaddr;

/* The longest text conc_sockaddr_str writes, with its NUL: an IPv6
 * address with a scope, brackets and a port, or a Unix path. */
#define CONC_SOCKADDR_STRLEN 128

/*
 * conc_sockaddr_inet - fill *a with the address of a numeric host and a
 * port (Python's ("127.0.0.1", 80) or ("::1", 80)).  host is an IPv4
 * dotted quad or an IPv6 literal (a scope as "fe80::1%eth0" is taken);
 * NULL or "" is the wildcard address of family (INADDR_ANY, in6addr_any);
 * family is AF_INET, AF_INET6, or AF_UNSPEC to take it from host (the
 * wildcard is then IPv4).  Names are not resolved: use
 * conc_socket_getaddrinfo.  Returns 0; -EINVAL for a NULL a, a port
 * outside 0..65535, a host that is not a literal of family, or another
 * family.
 */
CONC_API int conc_sockaddr_inet(conc_sockaddr *a, int family, const char *host, int port);

/*
 * conc_sockaddr_unix - fill *a with a Unix socket address: the path (a
 * file name), or, when path starts with '\0', a Linux abstract name of
 * len bytes (the leading '\0' included).  For a path len is ignored (pass
 * 0).  Returns 0; -EINVAL for NULL a or path, an empty path;
 * -ENAMETOOLONG when it does not fit sun_path (108 bytes with the NUL).
 */
CONC_API int conc_sockaddr_unix(conc_sockaddr *a, const char *path, size_t len);

/*
 * conc_sockaddr_str - write a as text into buf (cap bytes, NUL included):
 * "1.2.3.4:80", "[::1]:80", "[fe80::1%2]:80", a Unix path, "@name" for an
 * abstract name ('\0' bytes inside shown as '@'), "" for an unnamed Unix
 * socket.  CONC_SOCKADDR_STRLEN bytes are always enough.  Returns the
 * length written (without the NUL); -EINVAL for NULL a or buf, or an
 * address whose length does not suit its family; -EAFNOSUPPORT for
 * another family; -ENOSPC when cap is too small (buf then holds "" when
 * cap > 0).
 */
CONC_API int conc_sockaddr_str(const conc_sockaddr *a, char *buf, size_t cap);

/*
 * conc_sockaddr_port - the port of an AF_INET or AF_INET6 address (0..65535);
 * -EINVAL for NULL; -EAFNOSUPPORT for another family.
 */
CONC_API int conc_sockaddr_port(const conc_sockaddr *a);

/* -------------------------------------------------------- lifecycle */

/*
 * conc_socket_new - socket.socket(family, type, proto): a new socket.
 * family: AF_UNIX, AF_INET, AF_INET6 (others as the kernel allows); type:
 * SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET, SOCK_RAW, optionally or'ed with
 * SOCK_NONBLOCK (the socket starts in non-blocking mode, timeout 0, as in
 * Python) and SOCK_CLOEXEC (always set anyway); proto: 0 for the default.
 * The timeout is the default timeout (conc_socket_default_timeout) unless
 * SOCK_NONBLOCK is given.  Returns 0 and stores the handle in *out (free
 * it with conc_socket_free); -EINVAL for NULL out or unknown type flags;
 * -EAFNOSUPPORT, -EPROTONOSUPPORT, -ESOCKTNOSUPPORT, -EPROTOTYPE for a
 * combination the kernel does not offer; -EACCES / -EPERM (a raw socket
 * without the privilege); -EMFILE, -ENFILE; -ENOMEM.  Nothing is stored on
 * failure.
 */
CONC_API int conc_socket_new(conc_socket **out, int family, int type, int proto);

/*
 * conc_socket_from_fd - socket.socket(fileno=fd): a socket that takes an
 * open socket descriptor over.  Family, type and protocol are read from
 * the descriptor.  The socket owns fd from then on (conc_socket_close and
 * conc_socket_free close it) and the caller must not close it; on failure
 * it stays the caller's, unchanged.  fd is made O_NONBLOCK and
 * close-on-exec; the timeout is the default timeout.  Like
 * conc_conn_from_fd (and unlike an _attach), it does not duplicate.
 * Returns 0; -EINVAL for NULL out or a negative fd; -EBADF when fd is not
 * open; -ENOTSOCK when it is not a socket; -ENOMEM.
 */
CONC_API int conc_socket_from_fd(conc_socket **out, int fd);

/*
 * conc_socket_attach - socket.fromfd(fd, ...): a socket over a duplicate of
 * fd (close-on-exec).  The caller keeps fd and closes it when it likes
 * (the attach rule of docs/design.md).  The two descriptors share one open
 * file: the O_NONBLOCK mode conc sets is seen through fd too.  Returns as
 * conc_socket_from_fd, and -EMFILE when no descriptor is left for the
 * duplicate.
 */
CONC_API int conc_socket_attach(conc_socket **out, int fd);

/*
 * conc_socket_pair - socket.socketpair(family, type, proto): two connected
 * sockets.  family 0 means AF_UNIX (the only family Linux pairs), type 0
 * SOCK_STREAM.  Both get the default timeout (SOCK_NONBLOCK in type: 0).
 * Returns 0 and stores both handles; -EINVAL for a NULL pointer;
 * -EOPNOTSUPP / -EAFNOSUPPORT for a family or type that cannot be paired;
 * -EMFILE, -ENFILE; -ENOMEM.  Nothing is stored on failure.
 */
CONC_API int conc_socket_pair(conc_socket **a, conc_socket **b, int family, int type, int proto);

/*
 * conc_socket_dup - socket.dup(): a new socket over a duplicate of s's
 * descriptor, with s's timeout.  Returns 0 and stores it in *out; -EINVAL;
 * -EBADF when s is closed; -EMFILE; -ENOMEM.
 */
CONC_API int conc_socket_dup(conc_socket *s, conc_socket **out);

/*
 * conc_socket_close - socket.close(): close the descriptor and keep the
 * handle; later calls on it give -EBADF, conc_socket_fd gives -EBADF.
 * Closing twice is allowed (0).  A close interrupted or failed in the
 * kernel still releases the descriptor.  Returns 0; -EINVAL for NULL.
 */
CONC_API int conc_socket_close(conc_socket *s);

/*
 * conc_socket_detach - socket.detach(): the socket lets go of its
 * descriptor without closing it and behaves as closed from then on.
 * Returns the descriptor (now the caller's, still O_NONBLOCK); -EINVAL
 * for NULL; -EBADF when already closed or detached.
 */
CONC_API int conc_socket_detach(conc_socket *s);

/* conc_socket_free - close the socket (when open) and free the handle.
 * NULL is a no-op. */
CONC_API void conc_socket_free(conc_socket *s);

/* -------------------------------------------------------- attributes */

/*
 * conc_socket_fd - socket.fileno(): the descriptor, to watch with a
 * selector or poll.  Returns it; -EBADF when closed (Python's -1);
 * -EINVAL for NULL.  Do not close it (conc_socket_detach takes it).
 */
CONC_API int conc_socket_fd(const conc_socket *s);

/* conc_socket_family / conc_socket_type / conc_socket_proto - socket.family,
 * .type (without SOCK_NONBLOCK/SOCK_CLOEXEC), .proto; 0 for NULL.  Kept
 * after close. */
CONC_API int conc_socket_family(const conc_socket *s);
CONC_API int conc_socket_type(const conc_socket *s);
CONC_API int conc_socket_proto(const conc_socket *s);

/* conc_socket_closed - true once the socket is closed or detached (and
 * for NULL). */
CONC_API bool conc_socket_closed(const conc_socket *s);

/*
 * conc_socket_set_timeout - socket.settimeout(t): CONC_FOREVER (None)
 * blocking mode, 0 non-blocking mode, t > 0 timeout mode (see the top of
 * this header).  +INFINITY is CONC_FOREVER.  Returns 0; -EINVAL for NULL, NaN or a negative value other than
 * CONC_FOREVER; -EBADF when closed.
 */
CONC_API int conc_socket_set_timeout(conc_socket *s, double timeout);

/* conc_socket_timeout - socket.gettimeout(): CONC_FOREVER (None), 0 or the
 * seconds; CONC_FOREVER for NULL. */
CONC_API double conc_socket_timeout(const conc_socket *s);

/*
 * conc_socket_set_blocking - socket.setblocking(flag): true is
 * set_timeout(CONC_FOREVER), false is set_timeout(0).  Returns 0; -EINVAL
 * for NULL; -EBADF when closed.
 */
CONC_API int conc_socket_set_blocking(conc_socket *s, bool blocking);

/* conc_socket_blocking - socket.getblocking(): true unless the timeout is
 * 0 (a socket in timeout mode is blocking, as in Python); false for NULL. */
CONC_API bool conc_socket_blocking(const conc_socket *s);

/*
 * conc_socket_set_default_timeout - socket.setdefaulttimeout(t): the
 * timeout new sockets get (process-wide; CONC_FOREVER at start).  Sockets
 * made before keep theirs.  Returns 0; -EINVAL for NaN or a negative value
 * other than CONC_FOREVER.
 */
CONC_API int conc_socket_set_default_timeout(double timeout);

/* conc_socket_default_timeout - socket.getdefaulttimeout(). */
CONC_API double conc_socket_default_timeout(void);

/* ------------------------------------------------ addresses, options */

/*
 * conc_socket_bind - socket.bind(address).  Returns 0; -EINVAL (also for a
 * socket bound already); -EADDRINUSE; -EADDRNOTAVAIL; -EACCES (a port
 * below 1024, a Unix path without permission); -EAFNOSUPPORT for an
 * address of another family; -ENOENT, -ENOTDIR for a Unix path.
 */
CONC_API int conc_socket_bind(conc_socket *s, const conc_sockaddr *addr);

/*
 * conc_socket_listen - socket.listen(backlog): accept connections, at most
 * backlog waiting (the kernel caps it at net.core.somaxconn); a negative
 * backlog is 0, as in Python; CONC_SOCKET_BACKLOG is Python's default of
 * listen().  Returns 0; -EOPNOTSUPP for a datagram socket; -EADDRINUSE.
 */
CONC_API int conc_socket_listen(conc_socket *s, int backlog);

/* listen()'s default backlog in Python: min(SOMAXCONN, 128). */
#define CONC_SOCKET_BACKLOG 128

/*
 * conc_socket_accept - socket.accept(): wait for a connection and return
 * it as a new socket (close-on-exec, with the default timeout, as in
 * Python); its peer's address goes to *peer unless peer is NULL.  Returns
 * 0 and stores the socket in *out; -EINVAL for a socket that does not
 * listen or a NULL out; -EAGAIN, -ETIMEDOUT, -ECANCELED; -EMFILE, -ENFILE
 * (the connection stays queued); -ENOMEM.  A connection that was reset
 * before it was taken (ECONNABORTED) is skipped and the wait goes on.
 */
CONC_API int conc_socket_accept(conc_socket *s, conc_socket **out, conc_sockaddr *peer);
CONC_API int conc_socket_accept_until(conc_socket *s, conc_socket **out, conc_sockaddr *peer,
                                      int64_t deadline);

/*
 * conc_socket_connect - socket.connect(address): connect, waiting until
 * the connection is made (a stream socket) or at once (a datagram socket
 * sets its default peer).  Python's connect_ex(address) is the same call
 * with the sign changed: -conc_socket_connect(...) is its errno.  Returns
 * 0; -ECONNREFUSED; -ENETUNREACH, -EHOSTUNREACH; -EADDRNOTAVAIL; -EISCONN
 * when connected already; -ENOENT, -EACCES for a Unix path; -EAGAIN,
 * -ETIMEDOUT, -ECANCELED: the attempt is then abandoned and the socket
 * cannot be used to connect again (close it), as in Python.  In
 * non-blocking mode the attempt goes on after -EAGAIN: call again (it
 * waits for the attempt once more, -EAGAIN while it is in progress, its
 * error when it failed) or wait for POLLOUT; once connected, a further
 * call gives -EISCONN.
 */
CONC_API int conc_socket_connect(conc_socket *s, const conc_sockaddr *addr);
CONC_API int conc_socket_connect_until(conc_socket *s, const conc_sockaddr *addr,
                                       int64_t deadline);

/* conc_socket_getsockname / conc_socket_getpeername - socket.getsockname(),
 * getpeername(): the local or remote address into *out.  Returns 0;
 * -ENOTCONN (no peer). */
CONC_API int conc_socket_getsockname(conc_socket *s, conc_sockaddr *out);
CONC_API int conc_socket_getpeername(conc_socket *s, conc_sockaddr *out);

/*
 * conc_socket_setsockopt - socket.setsockopt(level, name, value) with a
 * buffer of len bytes; conc_socket_setsockopt_int the integer form
 * (setsockopt(level, name, int)).  Returns 0; -ENOPROTOOPT for an unknown
 * option; -EINVAL for a bad value or length.  TCP_ULP (IPPROTO_TCP), set
 * or only tried, also tells the socket that its reads may stop at the
 * protocol's record boundaries: coroutine reads of it then never take a
 * short read for an empty receive queue (conc_socket_recv).
 */
CONC_API int conc_socket_setsockopt(conc_socket *s, int level, int name, const void *value,
                                    socklen_t len);
CONC_API int conc_socket_setsockopt_int(conc_socket *s, int level, int name, int value);

/*
 * conc_socket_getsockopt - socket.getsockopt(level, name, buflen): the
 * option's bytes into value (*len bytes on entry, the option's length on
 * return); conc_socket_getsockopt_int the integer form (getsockopt(level,
 * name)).  Returns 0; -ENOPROTOOPT; -EINVAL.
 */
CONC_API int conc_socket_getsockopt(conc_socket *s, int level, int name, void *value,
                                    socklen_t *len);
CONC_API int conc_socket_getsockopt_int(conc_socket *s, int level, int name, int *value);

/*
 * conc_socket_shutdown - socket.shutdown(how): SHUT_RD, SHUT_WR or
 * SHUT_RDWR.  The descriptor stays open.  Returns 0; -ENOTCONN; -EINVAL
 * for another how.
 */
CONC_API int conc_socket_shutdown(conc_socket *s, int how);

/* -------------------------------------------------------- receiving */

/*
 * conc_socket_recv - socket.recv(bufsize, flags) and recv_into(buffer,
 * nbytes, flags): wait until data (or the end of the stream) arrives and
 * receive up to len bytes into buf.  flags are recv(2)'s (MSG_PEEK,
 * MSG_WAITALL, MSG_TRUNC...; MSG_DONTWAIT is conc's own and refused).
 * With MSG_WAITALL it waits until len bytes came, the stream ended or the
 * time ran out (what came by then is returned; -ETIMEDOUT only when
 * nothing came).  Returns the number of bytes received, 0 at the end of
 * the stream (the peer shut down or closed, or len 0); -ECONNRESET when
 * the peer reset the connection; -ENOTCONN; -EAGAIN, -ETIMEDOUT,
 * -ECANCELED (nothing received).
 *
 * In a greenlet, a read of a TCP stream with flags 0 or MSG_WAITALL that
 * returns fewer bytes than asked has emptied the receive queue: the
 * socket's next read that may wait waits for the next edge before it
 * tries, saving the recv that would say EAGAIN.  Urgent data, the end of
 * the stream, errors, MSG_OOB reads and TCP_ULP set through
 * conc_socket_setsockopt turn that off for the socket (docs/socket.md,
 * "Drained reads").
 */
CONC_API ssize_t conc_socket_recv(conc_socket *s, void *buf, size_t len, int flags);
CONC_API ssize_t conc_socket_recv_until(conc_socket *s, void *buf, size_t len, int flags,
                                        int64_t deadline);

/*
 * conc_socket_recvfrom - socket.recvfrom(bufsize, flags) and
 * recvfrom_into: as conc_socket_recv, and the sender's address into *from
 * unless from is NULL (from->len 0 for a connected stream socket).  A
 * datagram longer than len is cut to len (MSG_TRUNC in flags: the
 * datagram's real length is returned).
 */
CONC_API ssize_t conc_socket_recvfrom(conc_socket *s, void *buf, size_t len, int flags,
                                      conc_sockaddr *from);
CONC_API ssize_t conc_socket_recvfrom_until(conc_socket *s, void *buf, size_t len, int flags,
                                            conc_sockaddr *from, int64_t deadline);

/*
 * conc_socket_recvmsg - socket.recvmsg / recvmsg_into: recvmsg(2) with the
 * waiting and flags of conc_socket_recv.  Descriptors received with
 * SCM_RIGHTS are close-on-exec (MSG_CMSG_CLOEXEC is always added).
 * Returns the number of bytes received, as conc_socket_recv; msg's fields
 * are updated as by recvmsg(2).  -EINVAL for NULL msg.
 */
CONC_API ssize_t conc_socket_recvmsg(conc_socket *s, struct msghdr *msg, int flags);
CONC_API ssize_t conc_socket_recvmsg_until(conc_socket *s, struct msghdr *msg, int flags,
                                           int64_t deadline);

/* The most descriptors conc_socket_recv_fds takes in one message. */
#define CONC_SOCKET_MAX_FDS 253

/*
 * conc_socket_recv_fds - socket.recv_fds(sock, bufsize, maxfds) (AF_UNIX):
 * receive up to len bytes and up to maxfds (1..CONC_SOCKET_MAX_FDS)
 * descriptors sent with them.  The descriptors (close-on-exec, now the
 * caller's) go to fds and their number to *nfds; descriptors beyond maxfds
 * that arrived anyway are closed and the call gives -EMSGSIZE after the
 * bytes were taken (*nfds then counts those kept, which are the caller's
 * too).  Returns the number of bytes received, as conc_socket_recv.
 * -EINVAL for NULL fds or nfds, maxfds out of range.
 */
CONC_API ssize_t conc_socket_recv_fds(conc_socket *s, void *buf, size_t len, int *fds,
                                      size_t maxfds, size_t *nfds, int flags);
CONC_API ssize_t conc_socket_recv_fds_until(conc_socket *s, void *buf, size_t len, int *fds,
                                            size_t maxfds, size_t *nfds, int flags,
                                            int64_t deadline);

/* ---------------------------------------------------------- sending */

/*
 * conc_socket_send - socket.send(bytes, flags): wait until some of buf can
 * be sent and send as much as goes at once (a stream socket may take less
 * than len).  flags are send(2)'s (MSG_OOB, MSG_MORE...; MSG_DONTWAIT is
 * refused; MSG_NOSIGNAL is always added).  Returns the number of bytes
 * sent (> 0, or 0 when len is 0); -EPIPE when the peer closed or the
 * socket was shut down for writing (no SIGPIPE); -ECONNRESET; -EMSGSIZE
 * for a datagram too large; -EDESTADDRREQ / -ENOTCONN when there is no
 * peer; -EAGAIN, -ETIMEDOUT, -ECANCELED (nothing sent).
 */
CONC_API ssize_t conc_socket_send(conc_socket *s, const void *buf, size_t len, int flags);
CONC_API ssize_t conc_socket_send_until(conc_socket *s, const void *buf, size_t len, int flags,
                                        int64_t deadline);

/*
 * conc_socket_sendall - socket.sendall(bytes, flags): send all len bytes,
 * waiting as often as needed; the timeout bounds the whole call.  *sent
 * (unless sent is NULL) gets the number of bytes sent, also on failure:
 * what Python leaves unknown after a timeout.  Returns 0 once everything
 * was sent; otherwise the error of the send that failed (-EPIPE,
 * -ECONNRESET, -EAGAIN, -ETIMEDOUT, -ECANCELED...) with *sent < len.
 */
CONC_API int conc_socket_sendall(conc_socket *s, const void *buf, size_t len, int flags,
                                 size_t *sent);
CONC_API int conc_socket_sendall_until(conc_socket *s, const void *buf, size_t len, int flags,
                                       size_t *sent, int64_t deadline);

/*
 * conc_socket_sendto - socket.sendto(bytes, flags, address): send to addr
 * (a datagram socket's destination; a connected stream socket ignores or
 * refuses it, as the kernel does).  Returns as conc_socket_send.
 */
CONC_API ssize_t conc_socket_sendto(conc_socket *s, const void *buf, size_t len, int flags,
                                    const conc_sockaddr *addr);
CONC_API ssize_t conc_socket_sendto_until(conc_socket *s, const void *buf, size_t len,
                                          int flags, const conc_sockaddr *addr,
                                          int64_t deadline);

/*
 * conc_socket_sendmsg - socket.sendmsg(buffers, ancdata, flags, address):
 * sendmsg(2) with the waiting and flags of conc_socket_send.  Returns the
 * number of bytes sent, as conc_socket_send; -EINVAL for NULL msg.
 */
CONC_API ssize_t conc_socket_sendmsg(conc_socket *s, const struct msghdr *msg, int flags);
CONC_API ssize_t conc_socket_sendmsg_until(conc_socket *s, const struct msghdr *msg, int flags,
                                           int64_t deadline);

/*
 * conc_socket_send_fds - socket.send_fds(sock, buffers, fds) (AF_UNIX):
 * send len bytes (at least 1) with nfds descriptors (1..CONC_SOCKET_MAX_FDS)
 * in one message.  The descriptors stay the caller's.  Returns the number
 * of bytes sent, as conc_socket_send (the descriptors go with the first
 * byte); -EINVAL for len 0, NULL fds, nfds out of range; -EBADF for a
 * descriptor in fds that is not open.
 */
CONC_API ssize_t conc_socket_send_fds(conc_socket *s, const void *buf, size_t len,
                                      const int *fds, size_t nfds, int flags);
CONC_API ssize_t conc_socket_send_fds_until(conc_socket *s, const void *buf, size_t len,
                                            const int *fds, size_t nfds, int flags,
                                            int64_t deadline);

/*
 * conc_socket_sendfile - socket.sendfile(file, offset, count): send count
 * bytes (0: up to the end of the file) of the open file in_fd, starting at
 * offset, on a connected stream socket.  Zero-copy (sendfile(2)) where the
 * kernel can; a file it cannot send from (a pipe, a socket, a file system
 * without it) is read and sent in chunks instead, with the same result.
 * offset >= 0 reads from that offset and leaves in_fd's file position
 * alone; offset -1 reads from the file position and advances it by what
 * was sent (Python's file.tell() afterwards).  The timeout bounds the
 * whole call.  *sent (unless NULL) gets the number of bytes sent, also on
 * failure.  Returns 0 once count bytes were sent or the end of the file
 * was reached; -EBADF when in_fd is not open for reading; -EINVAL for
 * offset < -1; -EPIPE, -ECONNRESET; -EAGAIN, -ETIMEDOUT, -ECANCELED; a
 * read error of in_fd (-EIO...).
 */
CONC_API int conc_socket_sendfile(conc_socket *s, int in_fd, off_t offset, size_t count,
                                  size_t *sent);
CONC_API int conc_socket_sendfile_until(conc_socket *s, int in_fd, off_t offset, size_t count,
                                        size_t *sent, int64_t deadline);

/* ----------------------------------------------- connection helpers */

/* Options of conc_socket_create_connection; all-zero (or NULL) means the
 * defaults. */
typedef struct conc_socket_connect_opts {
    uint32_t size;          /* sizeof(conc_socket_connect_opts), or 0: this
                               first version */
    int family;             /* AF_INET or AF_INET6 only; 0: any */
    const conc_sockaddr *source;  /* source_address: bind to it first;
                               NULL: none */
} conc_socket_connect_opts;
#define CONC_SOCKET_CONNECT_OPTS_INIT { .size = sizeof(conc_socket_connect_opts) }

/*
 * conc_socket_create_connection - socket.create_connection((host, port),
 * timeout, source_address): resolve host (a name or a literal; NULL is
 * the local host) and port with getaddrinfo (SOCK_STREAM) and try every
 * address in the order given, each on a new socket, until one connects.
 * timeout bounds the whole call (Python gives it to each attempt) and
 * becomes the returned socket's timeout, as in Python; CONC_FOREVER
 * leaves it at the default timeout.  Returns 0 and stores the connected
 * socket; the first address's error when every attempt failed (Python's
 * exceptions[0]: -ECONNREFUSED...); -ETIMEDOUT / -EAGAIN when time ran
 * out; -ECANCELED; a CONC_EAI_* code when the name could not be resolved;
 * -EINVAL for NULL out, a port outside 0..65535 or bad options.  Sockets
 * of failed attempts are closed.  A numeric host needs no lookup; a name
 * is looked up on an offload worker (conc/offload.h) when the call has a
 * time limit or comes from a hub thread, so that the limit holds and the
 * thread is not blocked.
 */
CONC_API int conc_socket_create_connection(conc_socket **out, const char *host, int port,
                                           double timeout,
                                           const conc_socket_connect_opts *opts);
/* conc_socket_create_connection_until - the same with an absolute
 * deadline; the socket keeps the default timeout. */
CONC_API int conc_socket_create_connection_until(conc_socket **out, const char *host, int port,
                                                 int64_t deadline,
                                                 const conc_socket_connect_opts *opts);

/* Options of conc_socket_create_server; all-zero (or NULL) means the
 * defaults. */
typedef struct conc_socket_server_opts {
    uint32_t size;          /* sizeof(conc_socket_server_opts), or 0: this
                               first version */
    int family;             /* AF_INET (0 means AF_INET, Python's default)
                               or AF_INET6 */
    int type;               /* SOCK_STREAM (0) or SOCK_DGRAM: bound, no
                               listen */
    int backlog;            /* listen()'s backlog; 0: CONC_SOCKET_BACKLOG */
    bool reuse_port;        /* set SO_REUSEPORT (-ENOTSUP where the kernel
                               lacks it); with port 0 it is set right
                               after bind: Linux would give a UDP socket
                               that has it the port of another program's
                               group */
    bool dualstack_ipv6;    /* AF_INET6 taking IPv4 connections too
                               (IPV6_V6ONLY off); -EINVAL with AF_INET */
} conc_socket_server_opts;
#define CONC_SOCKET_SERVER_OPTS_INIT { .size = sizeof(conc_socket_server_opts) }

/*
 * conc_socket_create_server - socket.create_server((host, port), family,
 * backlog, reuse_port, dualstack_ipv6): a socket bound to host (a literal
 * of the family; NULL or "" for every interface) and port (0: the kernel
 * picks one; conc_socket_getsockname tells it) with SO_REUSEADDR set, and
 * listening for a stream socket.  An AF_INET6 socket without
 * dualstack_ipv6 is IPv6-only (IPV6_V6ONLY on), as in Python.  Returns 0
 * and stores the socket (with the default timeout); -EINVAL for NULL out,
 * a port outside 0..65535, a host that is not a literal of the family,
 * bad options; -EADDRINUSE; -EACCES; -ENOTSUP (reuse_port or dual stack
 * unsupported); -EMFILE; -ENOMEM.
 */
CONC_API int conc_socket_create_server(conc_socket **out, const char *host, int port,
                                       const conc_socket_server_opts *opts);

/* conc_socket_has_dualstack_ipv6 - socket.has_dualstack_ipv6(): true when
 * an AF_INET6 socket can take IPv4 connections too. */
CONC_API bool conc_socket_has_dualstack_ipv6(void);

/* ------------------------------------------------------- resolving */

/* One result of conc_socket_getaddrinfo: Python's (family, type, proto,
 * canonname, sockaddr). */
typedef struct conc_addrinfo {
    int family;
    int type;
    int proto;
    const char *canonname;  /* AI_CANONNAME: the first entry's canonical
                               name ("" elsewhere); points into the array */
    conc_sockaddr addr;
} conc_addrinfo;

/*
 * conc_socket_getaddrinfo - socket.getaddrinfo(host, port, family, type,
 * proto, flags): resolve host (a name or a literal; NULL for the local
 * host or, with AI_PASSIVE, the wildcard) and port (a number or a service
 * name as "http"; NULL for 0) into addresses.  family (AF_UNSPEC = 0),
 * type, proto and flags (AI_PASSIVE, AI_CANONNAME, AI_NUMERICHOST,
 * AI_NUMERICSERV, AI_ADDRCONFIG, AI_V4MAPPED, AI_ALL) are getaddrinfo(3)'s.
 * Stores a newly allocated array of the results in *out (release it with
 * free()) and returns their number (> 0).  Errors: a CONC_EAI_* code
 * (conc/errors.h) for the resolver's own failures (CONC_EAI_NONAME: no
 * such name; CONC_EAI_AGAIN: try again later; CONC_EAI_SERVICE...),
 * -ENOMEM, a negative errno for a system error (the resolver's
 * EAI_SYSTEM); -EINVAL for NULL out, NULL host and port together;
 * -ECANCELED when the calling greenlet was killed (the lookup finishes on
 * its worker and is dropped).  Blocks without a time limit (the resolver's
 * own timeouts apply, as in Python).
 */
CONC_API int conc_socket_getaddrinfo(const char *host, const char *port, int family, int type,
                                     int proto, int flags, conc_addrinfo **out);

/*
 * conc_socket_getnameinfo - socket.getnameinfo(sockaddr, flags): the host
 * and service of an address, as text into host (hostlen bytes) and serv
 * (servlen bytes); either may be NULL with length 0 when not wanted.
 * flags are getnameinfo(3)'s (NI_NUMERICHOST, NI_NUMERICSERV, NI_NAMEREQD,
 * NI_DGRAM, NI_NOFQDN).  Returns 0; a CONC_EAI_* code (CONC_EAI_NONAME
 * with NI_NAMEREQD and no name, CONC_EAI_OVERFLOW when a buffer is too
 * small, CONC_EAI_FAMILY); a negative errno; -EINVAL for NULL addr or both
 * buffers NULL; -ECANCELED as for getaddrinfo.
 */
CONC_API int conc_socket_getnameinfo(const conc_sockaddr *addr, int flags, char *host,
                                     size_t hostlen, char *serv, size_t servlen);

#ifdef __cplusplus
}
#endif
#endif /* CONC_SOCKET_H */
