/*
 * conc/listener.h - Python's multiprocessing.connection.Listener, Client,
 * deliver_challenge and answer_challenge: message connections between
 * processes over Unix and TCP sockets, optionally authenticated.
 *
 * Link: these calls live in libconc_remote (pkg-config conc-remote, CMake
 * target conc::conc_remote), which links libconc and libsodium.  The core
 * libconc uses libc and the kernel only.
 *
 * The connections are conc_conn handles (conc/pipe.h): the same framing
 * (an 8-byte little-endian length, then the bytes), so conc_conn_send_bytes,
 * conc_conn_recv_bytes, conc_conn_poll and conc_wait work on them as on a
 * Pipe, and conc_conn_free closes them.
 *
 * Addresses are text (conc_address_parse), told apart in this order:
 *   "@name"             a Linux abstract Unix socket named "\0name"
 *   "/path", "./a:b"    a Unix socket at that path: any text with a '/'
 *   "name"              a Unix socket in the current directory: text
 *                       without a '/' and without a ':'
 *   "HOST:SERVICE"      TCP: any other text (it has a ':'); HOST an IPv4
 *   "[IPV6]:SERVICE"    literal, a name to resolve, empty (every IPv4
 *                       interface), or an IPv6 literal in brackets;
 *                       SERVICE a port 0..65535 (0: a free port, see
 *                       conc_listener_address) or a TCP service name of
 *                       the services database ("localhost:http" is
 *                       port 80)
 *                       (no file, no permissions: use an authkey)
 *   NULL                (listener only) a Unix socket in a new private
 *                       directory (mode 0700; the socket 0600), both
 *                       removed by conc_listener_close.  The directory is
 *                       made in /tmp, named after the process that made
 *                       it (/tmp/conc-listener-PID-START-XXXXXX, START its
 *                       start time): when that process was killed before
 *                       it could remove them, the next default-address
 *                       listener of the same user removes them.
 *
 * The authkey handshake (when both sides have an authkey; Python's
 * deliver_challenge then answer_challenge on the listener, the reverse on
 * the client): the listener sends a challenge (a version tag and 32 random
 * bytes from libsodium's randombytes), the client answers with
 * HMAC-SHA256(authkey, challenge), the listener compares it in constant
 * time (sodium_memcmp) and sends WELCOME or FAILURE; then the client
 * challenges the listener the same way.  Each side thereby proves it holds
 * the key without sending it.  A wrong key fails on both sides with
 * -EACCES, and the connection is closed.  Handshake messages are at most
 * CONC_LISTENER_HANDSHAKE_MAX bytes: a peer sending more is dropped
 * before anything of it is buffered.
 *
 * TCP without an authkey lets anyone who reaches the port talk to the
 * program: conc_listener_new refuses it (-EPERM) unless the options say
 * insecure = true.
 *
 * Timeouts follow conc/time.h: CONC_FOREVER blocks, 0 tries once (-EAGAIN),
 * t > 0 gives -ETIMEDOUT after t seconds; a negative timeout other than
 * CONC_FOREVER, or NaN, is -EINVAL.  Each blocking call has an _until form
 * with an absolute CLOCK_MONOTONIC deadline in ns.  Every wait goes through
 * conc's one wait primitive: from a greenlet only the greenlet parks.
 *
 * Python's exceptions become error codes:
 *   AuthenticationError (wrong key, either side)   -EACCES
 *   AuthenticationError (a peer that broke the
 *     handshake: garbage, too long, gone, stalled)  -ECONNABORTED
 *   ConnectionRefusedError, FileNotFoundError       -ECONNREFUSED, -ENOENT
 */
#ifndef CONC_LISTENER_H
#define CONC_LISTENER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "conc/errors.h"
#include "conc/time.h"
#include "conc/pipe.h"
#include "conc/socket.h"

#ifdef __cplusplus
extern "C" {
#endif

/* conc_listener - a listening socket that hands out connections
 * (multiprocessing.connection.Listener). */
typedef struct conc_listener conc_listener;

/* The largest handshake message (a challenge, an answer, WELCOME/FAILURE). */
#define CONC_LISTENER_HANDSHAKE_MAX 256

/* The longest authkey conc takes, in bytes. */
#define CONC_AUTHKEY_MAX 1024

/* The handshake's time limit when the options leave it 0: 10 seconds. */
#define CONC_LISTENER_HANDSHAKE_TIMEOUT 10.0

/*
 * conc_listener_opts - options of conc_listener_new; NULL or all zero
 * means the defaults.  Fill size with sizeof (CONC_LISTENER_OPTS_INIT) or
 * leave it 0.
 *   authkey, authkey_len  the shared secret (1..CONC_AUTHKEY_MAX bytes);
 *                         NULL: no handshake
 *   insecure              allow a TCP listener without an authkey
 *   backlog               listen() backlog; 0: CONC_SOCKET_BACKLOG
 *   handshake_timeout     seconds a connecting peer has to finish the
 *                         handshake; 0: CONC_LISTENER_HANDSHAKE_TIMEOUT;
 *                         CONC_FOREVER: no limit
 *   max_message           the largest message the accepted connections
 *                         take (conc_conn_set_max_size); 0: CONC_PIPE_MSG_MAX
 *   max_pending           connections in the handshake at once; more wait
 *                         in the kernel's queue; 0: 64
 */
typedef struct conc_listener_opts {
    uint32_t size;
    const void *authkey;
    size_t authkey_len;
    bool insecure;
    int backlog;
    double handshake_timeout;
    size_t max_message;
    unsigned max_pending;
} conc_listener_opts;

#define CONC_LISTENER_OPTS_INIT { .size = sizeof(conc_listener_opts) }

/*
 * conc_client_opts - options of conc_client_connect; NULL or all zero
 * means the defaults.
 *   authkey, authkey_len  the shared secret; NULL: no handshake (the
 *                         listener must have none either)
 *   max_message           as for the listener; 0: CONC_PIPE_MSG_MAX
 */
typedef struct conc_client_opts {
    uint32_t size;
    const void *authkey;
    size_t authkey_len;
    size_t max_message;
} conc_client_opts;

#define CONC_CLIENT_OPTS_INIT { .size = sizeof(conc_client_opts) }

/*
 * conc_address_parse - turn an address text (see above) into a socket
 * address.  A TCP host that is not a literal is resolved
 * (conc_socket_getaddrinfo: a greenlet parks meanwhile), the first result
 * taken.  Returns 0; -EINVAL for NULL, "" or a bad port or service
 * ("h:99999", "h:", "h:a b", "[::1", "::1:80": an IPv6 literal needs its
 * brackets); CONC_EAI_SERVICE for a service name the services database
 * does not know ("localhost:nosuch"); -ENAMETOOLONG for a path over 107
 * bytes; a CONC_EAI_* code when the host name does not resolve.
 */
CONC_API int conc_address_parse(conc_sockaddr *out, const char *address);

/*
 * conc_listener_new - Listener(address, authkey=...): bind and listen.
 * address as above (NULL: a private Unix socket).  A Unix path socket is
 * made mode 0600 (right after bind, which creates it with the umask's
 * mode); an existing file at the path is not replaced (-EADDRINUSE).  Returns 0 and stores the handle; -EINVAL for NULL out,
 * a bad address, an authkey_len of 0 or over CONC_AUTHKEY_MAX with a
 * non-NULL authkey, a bad handshake_timeout or max_message; -EPERM for
 * TCP without an authkey and without insecure; -EADDRINUSE, -EACCES,
 * -ENOENT (a missing directory), a CONC_EAI_* code; -EMFILE, -ENOMEM.
 * Nothing is left behind on failure.
 */
CONC_API int conc_listener_new(conc_listener **out, const char *address,
                               const conc_listener_opts *opts);

/*
 * conc_listener_accept - Listener.accept(): the next connection that
 * finished its handshake (at once when there is no authkey).  Handshakes
 * run side by side inside the call: a peer that stalls delays no other;
 * one that is not done within handshake_timeout is dropped.  Returns 0
 * and stores a new conc_conn in *out (the caller frees it); -EAGAIN
 * (timeout 0) or -ETIMEDOUT when no connection is ready in time (the
 * handshakes in progress go on at the next call); -EACCES when a peer
 * failed the handshake with a wrong key, -ECONNABORTED when one broke or
 * stalled it (its connection is closed; call again for the next);
 * -EPIPE after conc_listener_close; -ECANCELED (a killed greenlet);
 * -EINVAL for NULL or a bad timeout; -EMFILE, -ENFILE (the connection
 * stays queued); -ENOMEM.  Several threads or greenlets may accept on one
 * listener: they take turns (each waits, within its own timeout, while
 * another is inside accept), and each connection goes to one of them.
 * Closing or freeing a listener another thread uses is undefined.
 */
CONC_API int conc_listener_accept(conc_listener *l, conc_conn **out, double timeout);
CONC_API int conc_listener_accept_until(conc_listener *l, conc_conn **out, int64_t deadline);

/*
 * conc_listener_address - Listener.address: the bound address as text, in
 * the form conc_address_parse reads ("127.0.0.1:40123", "[::1]:80", the
 * path, "@name"), with the port the kernel chose for port 0.  Writes at
 * most cap bytes with the NUL (CONC_SOCKADDR_STRLEN always suffice) and
 * returns the length; -EINVAL for NULL l or buf; -ENOSPC when cap is too
 * small.
 */
CONC_API int conc_listener_address(const conc_listener *l, char *buf, size_t cap);

/*
 * conc_listener_last_accepted - Listener.last_accepted: the peer address
 * of the last connection accept returned.  Returns 0; -ENOTCONN before
 * the first; -EINVAL for NULL.
 */
CONC_API int conc_listener_last_accepted(const conc_listener *l, conc_sockaddr *out);

/*
 * conc_listener_fd - the listening descriptor (readable when a connection
 * waits in the kernel's queue; a handshake may still follow).  Returns it;
 * -EPIPE when closed; -EINVAL for NULL.  Do not close it.
 */
CONC_API int conc_listener_fd(const conc_listener *l);

/*
 * conc_listener_close - Listener.close(): stop listening, drop the
 * connections still in their handshake, remove the Unix socket file (and
 * the private directory conc made), in the process that made them only.
 * The handle stays valid: accept gives -EPIPE.  Returns 0 (also when
 * closed before); -EINVAL for NULL.
 */
CONC_API int conc_listener_close(conc_listener *l);

/* conc_listener_free - close (if needed) and free.  NULL is fine. */
CONC_API void conc_listener_free(conc_listener *l);

/*
 * conc_client_connect - Client(address, authkey=...): connect to a
 * listener and, with an authkey, run the handshake; the timeout covers
 * both.  Returns 0 and stores a new conc_conn in *out; -EINVAL for NULL
 * out or address, a bad address or authkey length, a bad timeout;
 * -ECONNREFUSED, -ENOENT (no such Unix socket), -ENETUNREACH...;
 * -EACCES when the listener refused this key or failed to prove its own
 * (the connection is closed); -ECONNABORTED when the listener broke the
 * handshake (closed, garbage); -EAGAIN, -ETIMEDOUT; -ECANCELED; -EMFILE,
 * -ENOMEM; a CONC_EAI_* code.
 */
CONC_API int conc_client_connect(conc_conn **out, const char *address,
                                 const conc_client_opts *opts, double timeout);
CONC_API int conc_client_connect_until(conc_conn **out, const char *address,
                                       const conc_client_opts *opts, int64_t deadline);

/*
 * conc_conn_deliver_challenge - deliver_challenge(connection, authkey):
 * challenge the peer to prove it holds key (keylen 1..CONC_AUTHKEY_MAX
 * bytes) and tell it the verdict.  conc_conn_answer_challenge -
 * answer_challenge(connection, authkey): answer the peer's challenge.
 * The two run on the two ends of any connection (a Pipe too); Listener
 * and Client call them for you.  Returns 0 when the peer proved the key
 * (deliver) or accepted the answer (answer); -EACCES when it did not (the
 * connection is left open; close it); -ECONNABORTED when the peer sent
 * something that is not a handshake message (over
 * CONC_LISTENER_HANDSHAKE_MAX bytes, or not the expected form); the
 * errors of conc_conn_send_bytes and conc_conn_recv_bytes (-EPIPE when
 * the peer is gone, -ETIMEDOUT...); -EINVAL for NULL or a bad key length.
 */
CONC_API int conc_conn_deliver_challenge(conc_conn *c, const void *key, size_t keylen,
                                         double timeout);
CONC_API int conc_conn_deliver_challenge_until(conc_conn *c, const void *key, size_t keylen,
                                               int64_t deadline);
CONC_API int conc_conn_answer_challenge(conc_conn *c, const void *key, size_t keylen,
                                        double timeout);
CONC_API int conc_conn_answer_challenge_until(conc_conn *c, const void *key, size_t keylen,
                                              int64_t deadline);

#ifdef __cplusplus
}
#endif
#endif /* CONC_LISTENER_H */
