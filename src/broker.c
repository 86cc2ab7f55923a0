/*
 * broker.c - a connection to a RabbitMQ broker (conc/broker.h): connecting
 * and logging in through rabbitmq-c, reading and dispatching frames,
 * waiting for replies and confirmations, and making the connection again
 * after a loss, with a back-off and the client's declarations repeated.
 *
 * rabbitmq-c never waits here: a frame is read with a zero timeout, and
 * when none is there the socket is waited on through conc's wait layer
 * (conc_fd_wait_until), so a coroutine parks.  The wait wakes at half the
 * heartbeat interval to let rabbitmq-c send its heartbeats and notice the
 * broker's missing ones.  The connect and the AMQP handshake wait the same
 * way: the socket is connected here, without blocking, and handed to
 * rabbitmq-c, and the handshake's methods are sent and read one by one.
 * Only a TLS connection, whose handshake rabbitmq-c does only blocking,
 * runs through conc_offload when called from a coroutine.
 */
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <errno.h>
#include <limits.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <math.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <unistd.h>

#include "conc/hub.h"
#include "conc/offload.h"
#include "conc/wait.h"
#include "broker_internal.h"

#define NS 1000000000LL
#define DEFAULT_CONNECT 10.0
#define DEFAULT_HEARTBEAT 10.0
#define DEFAULT_RETRY_MIN 0.1
#define DEFAULT_RETRY_MAX 5.0
#define DEFAULT_MAX_MESSAGE ((size_t)128 << 20)
#define CLOSE_BOUND_NS (NS / 2)

/* The errno for a rabbitmq-c status code. */
int bk_status_err(int status)
{
    switch (status) {
    case AMQP_STATUS_OK: return 0;
    case AMQP_STATUS_NO_MEMORY: return -ENOMEM;
    case AMQP_STATUS_BAD_URL: return -EINVAL;
    case AMQP_STATUS_HOSTNAME_RESOLUTION_FAILED: return -EHOSTUNREACH;
    case AMQP_STATUS_TIMEOUT: return -ETIMEDOUT;
    case AMQP_STATUS_INCOMPATIBLE_AMQP_VERSION:
    case AMQP_STATUS_BAD_AMQP_DATA:
    case AMQP_STATUS_UNKNOWN_CLASS:
    case AMQP_STATUS_UNKNOWN_METHOD:
    case AMQP_STATUS_UNEXPECTED_STATE:
    case AMQP_STATUS_INVALID_PARAMETER:
        return -EPROTO;
    case AMQP_STATUS_TABLE_TOO_BIG: return -EMSGSIZE;
    case AMQP_STATUS_SSL_HOSTNAME_VERIFY_FAILED:
    case AMQP_STATUS_SSL_PEER_VERIFY_FAILED:
        return -EKEYREJECTED;
    case AMQP_STATUS_SSL_ERROR:
    case AMQP_STATUS_SSL_CONNECTION_FAILED:
        return -ECONNREFUSED;
    case AMQP_STATUS_HEARTBEAT_TIMEOUT:
    case AMQP_STATUS_CONNECTION_CLOSED:
    case AMQP_STATUS_SOCKET_CLOSED:
    case AMQP_STATUS_SOCKET_ERROR:
    case AMQP_STATUS_TCP_ERROR:
    default:
        return -ECONNRESET;
    }
}

/* The errno for an AMQP reply code (channel.close, connection.close). */
static int reply_err(uint16_t code)
{
    switch (code) {
    case 200: return 0;
    case 311: return -EMSGSIZE;     /* content-too-large */
    case 320: return -ECONNRESET;   /* connection-forced: broker stopping */
    case 402: return -EINVAL;       /* invalid-path */
    case 403: return -EPERM;        /* access-refused */
    case 404: return -ENOENT;       /* not-found */
    case 405: return -EBUSY;        /* resource-locked */
    case 406: return -EEXIST;       /* precondition-failed */
    case 530: return -EACCES;       /* not-allowed (vhost) */
    default: return -EIO;
    }
}

static struct timeval tv_of(int64_t ns)
{
    if (ns < 0)
        ns = 0;
    struct timeval tv = { .tv_sec = (time_t)(ns / NS), .tv_usec = (suseconds_t)(ns % NS / 1000) };
    return tv;
}

/* ---- connecting ---- */

struct connect_job {
    char *host, *user, *pass, *vhost, *cacert, *cert, *key;
    int port;
    bool ssl, insecure;
    int heartbeat;
    int frame_max;
    int64_t budget;                 /* ns for the connect plus login */
    amqp_connection_state_t c;      /* out */
    SSL *tls;                       /* out: c's TLS session */
    int err;                        /* out */
};

static void job_free(struct connect_job *j)
{
    if (!j)
        return;
    if (j->c)
        amqp_destroy_connection(j->c);
    free(j->host);
    free(j->user);
    free(j->pass);
    free(j->vhost);
    free(j->cacert);
    free(j->cert);
    free(j->key);
    free(j);
}

static char *dup_or_null(const char *s, bool *fail)
{
    if (!s)
        return NULL;
    char *d = strdup(s);
    if (!d)
        *fail = true;
    return d;
}

static int login_err(amqp_rpc_reply_t r)
{
    switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL:
        return 0;
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD && r.reply.decoded) {
            uint16_t code = ((amqp_connection_close_t *)r.reply.decoded)->reply_code;
            return code == 403 || code == 530 ? -EACCES : reply_err(code);
        }
        return -EPROTO;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        /* RabbitMQ closes the socket on a failed login when the client
         * did not announce authentication_failure_close. */
        if (r.library_error == AMQP_STATUS_CONNECTION_CLOSED ||
            r.library_error == AMQP_STATUS_SOCKET_CLOSED)
            return -EACCES;
        return bk_status_err(r.library_error);
    default:
        return -EPROTO;
    }
}

/* Logs in with PLAIN, asking to be told when the broker cancels a consumer
 * (its queue was deleted) besides rabbitmq-c's own capabilities. */
amqp_rpc_reply_t conc__broker_login(amqp_connection_state_t c, const char *vhost, int frame_max,
                                    int heartbeat, const char *user, const char *pass)
{
    amqp_table_entry_t cap = { .key = amqp_cstring_bytes("consumer_cancel_notify"),
                               .value = { .kind = AMQP_FIELD_KIND_BOOLEAN,
                                          .value = { .boolean = 1 } } };
    amqp_table_entry_t prop = { .key = amqp_cstring_bytes("capabilities"),
                                .value = { .kind = AMQP_FIELD_KIND_TABLE,
                                           .value = { .table = { 1, &cap } } } };
    amqp_table_t props = { 1, &prop };
    return amqp_login_with_properties(c, vhost, 0, frame_max, heartbeat, &props,
                                      AMQP_SASL_METHOD_PLAIN, user, pass);
}

/* Called by OpenSSL as the connection's TLS session starts its handshake:
 * the session (which rabbitmq-c keeps to itself) is noted in the job the
 * context names, so that conc can write its own frames into it. */
static void tls_seen(const SSL *ssl, int where, int ret)
{
    (void)ret;
    if (!(where & SSL_CB_HANDSHAKE_START))
        return;
    struct connect_job *j = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    if (j)
        j->tls = (SSL *)ssl;
}

/* Connects and logs in over TLS (blocking, within j->budget); runs on the
 * caller's thread or on an offload worker.  rabbitmq-c takes a signal
 * that interrupts its waits for a broken connection: the thread's signals
 * are held back meanwhile. */
static void connect_tls(struct connect_job *j);

static void *connect_run(void *arg)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    connect_tls(arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return arg;
}

static void connect_tls(struct connect_job *j)
{
    int64_t start = conc_now();
    amqp_connection_state_t c = amqp_new_connection();
    if (!c) {
        j->err = -ENOMEM;
        return;
    }
    amqp_socket_t *s;
    if (j->ssl) {
        s = amqp_ssl_socket_new(c);
        if (!s) {
            amqp_destroy_connection(c);
            j->err = -EPROTONOSUPPORT;
            return;
        }
        /* conc writes whole TLS records without waiting (a partial write
         * returns what went out, and the bytes may move between tries);
         * rabbitmq-c's own send loops over partial writes. */
        SSL_CTX *ctx = amqp_ssl_socket_get_context(s);
        SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
                              SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
        SSL_CTX_set_app_data(ctx, j);
        SSL_CTX_set_info_callback(ctx, tls_seen);
        amqp_ssl_socket_set_verify_peer(s, !j->insecure);
        amqp_ssl_socket_set_verify_hostname(s, !j->insecure);
        if ((j->cacert && amqp_ssl_socket_set_cacert(s, j->cacert) != AMQP_STATUS_OK) ||
            (j->cert && j->key && amqp_ssl_socket_set_key(s, j->cert, j->key) != AMQP_STATUS_OK)) {
            amqp_destroy_connection(c);
            j->err = -EPROTONOSUPPORT;
            return;
        }
    } else {
        s = amqp_tcp_socket_new(c);
        if (!s) {
            amqp_destroy_connection(c);
            j->err = -ENOMEM;
            return;
        }
    }
    struct timeval tv = tv_of(j->budget);
    errno = 0;
    int st = amqp_socket_open_noblock(s, j->host, j->port, &tv);
    int e = errno;
    if (j->ssl) {
        /* The session is known once the handshake started; the job may
         * be freed before the connection, so the context keeps the
         * session instead (bk_tls_session). */
        SSL_CTX *ctx = amqp_ssl_socket_get_context(s);
        SSL_CTX_set_info_callback(ctx, NULL);
        SSL_CTX_set_app_data(ctx, j->tls);
        if (st == AMQP_STATUS_OK && !j->tls)
            st = AMQP_STATUS_SSL_CONNECTION_FAILED;
    }
    if (st != AMQP_STATUS_OK) {
        amqp_destroy_connection(c);
        if (st == AMQP_STATUS_SOCKET_ERROR || st == AMQP_STATUS_TCP_ERROR)
            j->err = e == ECONNREFUSED || e == EHOSTUNREACH || e == ENETUNREACH ||
                     e == ETIMEDOUT || e == EADDRNOTAVAIL ? -e : -ECONNREFUSED;
        else
            j->err = bk_status_err(st);
        return;
    }
    tv = tv_of(j->budget - (conc_now() - start));
    if (tv.tv_sec == 0 && tv.tv_usec == 0)
        tv.tv_usec = 1000;
    amqp_set_handshake_timeout(c, &tv);
    amqp_set_rpc_timeout(c, &tv);
    amqp_rpc_reply_t r = conc__broker_login(c, j->vhost, j->frame_max, j->heartbeat, j->user,
                                            j->pass);
    int err = login_err(r);
    if (err) {
        amqp_destroy_connection(c);
        j->err = err;
        return;
    }
    amqp_set_rpc_timeout(c, NULL);
    j->c = c;
    j->err = 0;
    return;
}

void *bk_tls_session(amqp_connection_state_t c)
{
    return SSL_CTX_get_app_data(amqp_ssl_socket_get_context(amqp_get_socket(c)));
}

static void connect_abandon(void *arg, void *result)
{
    (void)result;
    job_free(arg);
}

/* ---- connecting without blocking the thread ---- */

struct resolve_job {
    char *host;
    char port[8];
    struct addrinfo *res;       /* out */
    int err;                    /* out: getaddrinfo's code */
};

static void *resolve_run(void *arg)
{
    struct resolve_job *j = arg;
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_NUMERICSERV | AI_ADDRCONFIG };
    j->err = getaddrinfo(j->host, j->port, &hints, &j->res);
    return j;
}

static void resolve_free(struct resolve_job *j)
{
    if (j->res)
        freeaddrinfo(j->res);
    free(j->host);
    free(j);
}

static void resolve_abandon(void *arg, void *result)
{
    (void)result;
    resolve_free(arg);
}

/* The addresses of host:port.  A numeric host needs no lookup; a name is
 * looked up (getaddrinfo only blocks) through conc_offload from a
 * coroutine.  0, -EHOSTUNREACH, -ETIMEDOUT, -ECANCELED or -ENOMEM. */
static int resolve(const char *host, int port, int64_t deadline, struct addrinfo **out)
{
    char ps[8];
    snprintf(ps, sizeof ps, "%d", port);
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV };
    int e = getaddrinfo(host, ps, &hints, out);
    if (e == 0)
        return 0;
    if (e == EAI_MEMORY)
        return -ENOMEM;
    struct resolve_job *j = calloc(1, sizeof *j);
    if (!j || !(j->host = strdup(host))) {
        free(j);
        return -ENOMEM;
    }
    memcpy(j->port, ps, sizeof ps);
    if (conc_greenlet_current()) {
        conc_offload_opts oo = CONC_OFFLOAD_OPTS_INIT;
        oo.abandon = resolve_abandon;
        int r = conc_offload_opts_until(resolve_run, j, NULL, deadline, &oo);
        if (r == -EAGAIN || r == -ENOMEM || r == -EINVAL) {
            resolve_free(j);                        /* not taken */
            return -ENOMEM;
        }
        if (r < 0)
            return r;                               /* the worker frees j */
    } else {
        resolve_run(j);
    }
    e = j->err;
    *out = j->res;
    j->res = NULL;
    resolve_free(j);
    return e == 0 ? 0 : e == EAI_MEMORY ? -ENOMEM : -EHOSTUNREACH;
}

/* A TCP connection to host:port, made within deadline with the wait
 * parked in conc's wait layer.  Returns the socket (non-blocking,
 * close-on-exec, TCP_NODELAY), or -ECONNREFUSED, -EHOSTUNREACH,
 * -ENETUNREACH, -ETIMEDOUT, -ECANCELED, -ENOMEM. */
static int tcp_connect(const char *host, int port, int64_t deadline)
{
    struct addrinfo *ai = NULL;
    int err = resolve(host, port, deadline, &ai);
    if (err)
        return err;
    err = -ECONNREFUSED;
    int fd = -1;
    for (struct addrinfo *a = ai; a; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            err = errno == ENOMEM || errno == ENOBUFS ? -ENOMEM : -ECONNREFUSED;
            continue;
        }
        int r = connect(fd, a->ai_addr, a->ai_addrlen) == 0 ? 0 : -errno;
        while (r == -EINPROGRESS || r == -EINTR) {
            r = conc_fd_wait_until(fd, POLLOUT, deadline);
            if (r < 0)
                break;
            struct pollfd p = { .fd = fd, .events = POLLOUT };
            if (poll(&p, 1, 0) == 0) {
                r = -EINPROGRESS;   /* interrupted: wait again */
                continue;
            }
            int so = 0;
            socklen_t sl = sizeof so;
            r = getsockopt(fd, SOL_SOCKET, SO_ERROR, &so, &sl) < 0 ? -errno : -so;
        }
        if (r == 0) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            break;
        }
        close(fd);
        fd = -1;
        err = r == -EHOSTUNREACH || r == -ENETUNREACH || r == -ETIMEDOUT || r == -ECANCELED ||
              r == -ENOMEM ? r : -ECONNREFUSED;
        if (r == -ETIMEDOUT || r == -ECANCELED)
            break;
    }
    freeaddrinfo(ai);
    return fd >= 0 ? fd : err;
}

/* The next method on channel 0 during the handshake, waited for until
 * deadline.  `authed`: the credentials were sent, so a close of the socket
 * is the broker's refusal of them. */
static int hs_next(amqp_connection_state_t c, int fd, int64_t deadline, bool authed,
                   amqp_method_t *m)
{
    for (;;) {
        amqp_frame_t f;
        struct timeval zero = { 0, 0 };
        int st = amqp_simple_wait_frame_noblock(c, &f, &zero);
        if (st == AMQP_STATUS_OK) {
            if (f.frame_type != AMQP_FRAME_METHOD || f.channel != 0)
                return -EPROTO;
            *m = f.payload.method;
            return 0;
        }
        if (st == AMQP_STATUS_CONNECTION_CLOSED || st == AMQP_STATUS_SOCKET_CLOSED)
            return authed ? -EACCES : -ECONNRESET;
        if (st != AMQP_STATUS_TIMEOUT) {
            int r = bk_status_err(st);
            return r == -ETIMEDOUT ? -ECONNRESET : r;
        }
        int r = conc_fd_wait_until(fd, POLLIN, deadline);
        if (r < 0)
            return r == -ETIMEDOUT || r == -ECANCELED || r == -ENOMEM ? r : -ECONNRESET;
    }
}

/* The code of the broker's connection.close during the handshake. */
static int hs_close_err(const amqp_method_t *m)
{
    uint16_t code = ((const amqp_connection_close_t *)m->decoded)->reply_code;
    return code == 403 || code == 530 ? -EACCES : reply_err(code) ? reply_err(code) : -EPROTO;
}

static bool has_plain(amqp_bytes_t mechs)
{
    const char *p = mechs.bytes, *end = p + mechs.len;
    while (p && p < end) {
        const char *sp = memchr(p, ' ', (size_t)(end - p));
        size_t n = (size_t)((sp ? sp : end) - p);
        if (n == 5 && memcmp(p, "PLAIN", 5) == 0)
            return true;
        p = sp ? sp + 1 : end;
    }
    return false;
}

static amqp_table_entry_t bool_entry(const char *key)
{
    return (amqp_table_entry_t){ .key = amqp_cstring_bytes(key),
                                 .value = { .kind = AMQP_FIELD_KIND_BOOLEAN,
                                            .value = { .boolean = 1 } } };
}

/* The AMQP handshake on c (its socket fd connected): protocol header,
 * start / start-ok (PLAIN), tune / tune-ok, open / open-ok, each reply
 * waited for until deadline through conc's wait layer.  The client asks
 * to be told of a failed login by a close (not a dropped socket) and of a
 * consumer the broker cancelled (its queue was deleted). */
static int handshake(amqp_connection_state_t c, int fd, const struct bk_target *t,
                     int64_t deadline)
{
    if (amqp_send_header(c) != AMQP_STATUS_OK)
        return -ECONNRESET;
    amqp_method_t m;
    int r = hs_next(c, fd, deadline, false, &m);
    if (r)
        return r;
    if (m.id != AMQP_CONNECTION_START_METHOD)
        return m.id == AMQP_CONNECTION_CLOSE_METHOD ? hs_close_err(&m) : -EPROTO;
    const amqp_connection_start_t *st = m.decoded;
    if (st->version_major != 0 || st->version_minor != 9 || !has_plain(st->mechanisms))
        return -EPROTO;
    size_t ulen = strlen(t->user), plen = strlen(t->pass);
    char *resp = malloc(ulen + plen + 2);
    if (!resp)
        return -ENOMEM;
    resp[0] = '\0';
    memcpy(resp + 1, t->user, ulen);
    resp[ulen + 1] = '\0';
    memcpy(resp + ulen + 2, t->pass, plen);
    amqp_table_entry_t caps[3] = { bool_entry("authentication_failure_close"),
                                   bool_entry("consumer_cancel_notify"),
                                   bool_entry("exchange_exchange_bindings") };
    amqp_table_entry_t props[2] = {
        { .key = amqp_cstring_bytes("product"),
          .value = { .kind = AMQP_FIELD_KIND_UTF8,
                     .value = { .bytes = amqp_cstring_bytes("conc") } } },
        { .key = amqp_cstring_bytes("capabilities"),
          .value = { .kind = AMQP_FIELD_KIND_TABLE, .value = { .table = { 3, caps } } } },
    };
    amqp_connection_start_ok_t so = {
        .client_properties = { 2, props },
        .mechanism = amqp_cstring_bytes("PLAIN"),
        .response = { .len = ulen + plen + 2, .bytes = resp },
        .locale = amqp_cstring_bytes("en_US"),
    };
    int sst = amqp_send_method(c, 0, AMQP_CONNECTION_START_OK_METHOD, &so);
    explicit_bzero(resp, ulen + plen + 2);
    free(resp);
    amqp_maybe_release_buffers(c);
    if (sst != AMQP_STATUS_OK)
        return -ECONNRESET;
    r = hs_next(c, fd, deadline, true, &m);
    if (r)
        return r;
    if (m.id == AMQP_CONNECTION_CLOSE_METHOD)
        return hs_close_err(&m);
    if (m.id != AMQP_CONNECTION_TUNE_METHOD)
        return -EPROTO;
    const amqp_connection_tune_t *tu = m.decoded;
    int channel_max = tu->channel_max ? tu->channel_max : 65535;
    int frame_max = tu->frame_max && tu->frame_max < (uint32_t)t->frame_max ? (int)tu->frame_max
                                                                             : t->frame_max;
    int heartbeat = tu->heartbeat && tu->heartbeat < t->heartbeat ? tu->heartbeat : t->heartbeat;
    if (frame_max < 4096)
        return -EPROTO;
    amqp_maybe_release_buffers(c);
    if (amqp_tune_connection(c, channel_max, frame_max, heartbeat) != AMQP_STATUS_OK)
        return -ENOMEM;
    amqp_connection_tune_ok_t tok = { .channel_max = (uint16_t)channel_max,
                                      .frame_max = (uint32_t)frame_max,
                                      .heartbeat = (uint16_t)heartbeat };
    if (amqp_send_method(c, 0, AMQP_CONNECTION_TUNE_OK_METHOD, &tok) != AMQP_STATUS_OK)
        return -ECONNRESET;
    amqp_connection_open_t op = { .virtual_host = amqp_cstring_bytes(t->vhost),
                                  .capabilities = amqp_empty_bytes, .insist = 1 };
    if (amqp_send_method(c, 0, AMQP_CONNECTION_OPEN_METHOD, &op) != AMQP_STATUS_OK)
        return -ECONNRESET;
    r = hs_next(c, fd, deadline, true, &m);
    if (r)
        return r;
    if (m.id == AMQP_CONNECTION_CLOSE_METHOD)
        return hs_close_err(&m);
    amqp_maybe_release_buffers(c);
    return m.id == AMQP_CONNECTION_OPEN_OK_METHOD ? 0 : -EPROTO;
}

int conc__broker_open(const struct bk_target *t, int64_t deadline, amqp_connection_state_t *out)
{
    if (t->ssl) {
        struct connect_job *j = calloc(1, sizeof *j);
        if (!j)
            return -ENOMEM;
        bool fail = false;
        j->host = dup_or_null(t->host, &fail);
        j->user = dup_or_null(t->user, &fail);
        j->pass = dup_or_null(t->pass, &fail);
        j->vhost = dup_or_null(t->vhost, &fail);
        j->cacert = dup_or_null(t->cacert, &fail);
        j->cert = dup_or_null(t->cert, &fail);
        j->key = dup_or_null(t->key, &fail);
        if (fail) {
            job_free(j);
            return -ENOMEM;
        }
        j->port = t->port;
        j->ssl = true;
        j->insecure = t->insecure;
        j->heartbeat = t->heartbeat;
        j->frame_max = t->frame_max;
        int64_t now = conc_now();
        j->budget = deadline == CONC_NO_DEADLINE ? 3600 * NS : deadline - now;
        if (j->budget < NS / 1000)
            j->budget = NS / 1000;
        if (conc_greenlet_current()) {
            conc_offload_opts oo = CONC_OFFLOAD_OPTS_INIT;
            oo.abandon = connect_abandon;
            int r = conc_offload_opts_until(connect_run, j, NULL, now + j->budget + NS, &oo);
            if (r == -EAGAIN || r == -ENOMEM || r == -EINVAL) {
                job_free(j);                            /* not taken */
                return -ENOMEM;
            }
            if (r < 0)
                return r;                               /* the worker frees j */
        } else {
            connect_run(j);
        }
        int err = j->err;
        if (!err) {
            *out = j->c;
            j->c = NULL;
        }
        job_free(j);
        return err;
    }
    int fd = tcp_connect(t->host, t->port, deadline);
    if (fd < 0)
        return fd;
    amqp_connection_state_t c = amqp_new_connection();
    amqp_socket_t *s = c ? amqp_tcp_socket_new(c) : NULL;
    if (!s) {
        if (c)
            amqp_destroy_connection(c);
        close(fd);
        return -ENOMEM;
    }
    amqp_tcp_socket_set_sockfd(s, fd);      /* c owns fd now */
    int r = handshake(c, fd, t, deadline);
    if (r) {
        amqp_destroy_connection(c);
        return r;
    }
    *out = c;
    return 0;
}

/* One attempt to connect, within deadline.  On success b->c is set. */
static int connect_once(conc_broker *b, int64_t deadline)
{
    int64_t now = conc_now();
    int64_t budget = (int64_t)(b->opts.connect_timeout * NS);
    if (deadline != CONC_NO_DEADLINE && deadline - now < budget)
        budget = deadline - now;
    if (budget < NS / 1000)
        budget = NS / 1000;
    struct bk_target t = { .host = b->host, .vhost = b->vhost, .user = b->user,
                           .pass = b->pass, .cacert = b->cacert, .cert = b->cert,
                           .key = b->key, .port = b->port, .ssl = b->ssl,
                           .insecure = b->opts.insecure,
                           .heartbeat = b->heartbeat > 0 ? (int)ceil(b->heartbeat) : 0,
                           .frame_max = AMQP_DEFAULT_FRAME_SIZE };
    int err = conc__broker_open(&t, now + budget, &b->c);
    if (!err) {
        b->fd = amqp_get_sockfd(b->c);
        b->tls = b->ssl ? bk_tls_session(b->c) : NULL;
        b->hb_sent = now;           /* before any send of rabbitmq-c's */
    }
    return err;
}

/* Holds back (on) or lets go (off) the connection's partial TCP segments:
 * a stream of async publishes is sent in full segments, fewer of them for
 * the broker to read. */
void bk_cork(conc_broker *b, bool on)
{
    if (b->corked == on || b->fd < 0)
        return;
    int v = on;
    setsockopt(b->fd, IPPROTO_TCP, TCP_CORK, &v, sizeof v);
    b->corked = on;
}

/* ---- publishes, framed here ---- */

#define OBUF_SEND_NS (30 * NS)  /* a bound on waiting for room to send */

static void put_be(unsigned char *p, uint64_t v, int n)
{
    for (int i = n - 1; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)v;
}

/* Moves *iov and *n past k bytes that went out. */
static void iov_skip(struct iovec **iovp, int *np, size_t k)
{
    struct iovec *iov = *iovp;
    int n = *np;
    while (n > 0 && k >= iov->iov_len) {
        k -= iov->iov_len;
        iov++;
        n--;
    }
    if (n > 0) {
        iov->iov_base = (char *)iov->iov_base + k;
        iov->iov_len -= k;
    }
    *iovp = iov;
    *np = n;
}

/* Moves *iovp and *np past empty buffers; false once none is left. */
static bool iov_next(struct iovec **iovp, int *np)
{
    while (*np > 0 && (*iovp)->iov_len == 0) {
        (*iovp)++;
        (*np)--;
    }
    return *np > 0;
}

/* Plain bytes per TLS record at most (and per gathered write). */
#define TLS_RECORD 16384

/* bk_send_some over TLS: the bytes are encrypted into the connection's
 * session (rabbitmq-c's, which never holds a record in part between its
 * own calls, and reads only once conc's frames are out whole).  Small
 * buffers are gathered into one record; a record that did not go out
 * whole is sent first on the next call (the session keeps it: the next
 * call offers the same bytes again, from wherever they are).  OpenSSL
 * writes with write(2), which raises SIGPIPE on a connection the peer
 * reset: it is held back and taken away here. */
static int tls_send_some(SSL *ssl, struct iovec **iovp, int *np, short *want)
{
    sigset_t pipe, old;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, &old);
    int r = 0;
    for (;;) {
        if (!iov_next(iovp, np))
            break;
        unsigned char gather[TLS_RECORD];
        const void *p = (*iovp)->iov_base;
        size_t len = (*iovp)->iov_len;
        if (len < TLS_RECORD && *np > 1) {
            len = 0;
            for (int i = 0; i < *np && len < TLS_RECORD; i++) {
                size_t k = (*iovp)[i].iov_len;
                if (k > TLS_RECORD - len)
                    k = TLS_RECORD - len;
                memcpy(gather + len, (*iovp)[i].iov_base, k);
                len += k;
            }
            p = gather;
        } else if (len > (size_t)INT_MAX / 2) {
            len = (size_t)INT_MAX / 2;
        }
        ERR_clear_error();
        int k = SSL_write(ssl, p, (int)len);
        if (k > 0) {
            iov_skip(iovp, np, (size_t)k);
            continue;
        }
        int e = SSL_get_error(ssl, k);
        ERR_clear_error();
        if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
            *want = e == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN;
            r = -EAGAIN;
        } else {
            r = -ECONNRESET;
        }
        break;
    }
    if (r == -ECONNRESET && !sigismember(&old, SIGPIPE)) {
        struct timespec zero = { 0, 0 };
        sigtimedwait(&pipe, NULL, &zero);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return r;
}

/* Sends what it can of the *n buffers at *iov on fd (over TLS: into the
 * session tls) without waiting, moving *iov and *n past what went out.
 * Returns 0 once everything is out, -EAGAIN when the socket is full (*want
 * says what to wait for: POLLOUT, or POLLIN when the TLS session must read
 * first), -ECONNRESET when it failed. */
int bk_send_some(int fd, void *tls, struct iovec **iovp, int *np, short *want)
{
    *want = POLLOUT;
    if (tls)
        return tls_send_some(tls, iovp, np, want);
    int r = 0;
    for (;;) {
        if (!iov_next(iovp, np))
            break;
        struct msghdr mh = { .msg_iov = *iovp, .msg_iovlen = (size_t)*np };
        ssize_t k = sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (k > 0) {
            iov_skip(iovp, np, (size_t)k);
            continue;
        }
        if (k < 0 && errno == EINTR)
            continue;
        r = k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) ? -EAGAIN : -ECONNRESET;
        break;
    }
    return r;
}

/* Sends the n buffers of iov (changed as they go) on fd, a socket that
 * never blocks (over TLS: into the session tls): when it is full (a broker
 * that reads slowly, or not at all), the wait for room goes through conc's
 * wait layer, so a coroutine parks, and ends at deadline.  Returns 0,
 * -ETIMEDOUT, -ECANCELED or -ECONNRESET; after an error a frame may have
 * gone out cut, so the caller drops the connection. */
int bk_sendv_until(int fd, void *tls, struct iovec *iov, int n, int64_t deadline)
{
    for (;;) {
        short want;
        int r = bk_send_some(fd, tls, &iov, &n, &want);
        if (r != -EAGAIN)
            return r;
        r = conc_fd_wait_until(fd, want, deadline);
        if (r == 0 || r == -EINTR)
            continue;
        return r == -ETIMEDOUT || r == -ECANCELED ? r : -ECONNRESET;
    }
}

void bk_reset_on_close(int fd)
{
    struct linger l = { .l_onoff = 1, .l_linger = 0 };
    if (fd >= 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
}

/* Keeps rabbitmq-c's heartbeat timer from running out inside a read
 * (see broker_internal.h). */
#define HB_MARGIN_NS (NS / 4)
int bk_read_gate(amqp_connection_state_t c, int fd, int64_t *last)
{
    int hb = amqp_get_heartbeat(c);
    if (hb <= 0)
        return 1;
    int64_t now = conc_now(), age = now - *last;
    if (age < (int64_t)hb * NS / 2)
        return 1;
    struct pollfd p = { .fd = fd, .events = POLLOUT };
    if (poll(&p, 1, 0) == 1 && (p.revents & POLLOUT)) {
        amqp_frame_t f = { .frame_type = AMQP_FRAME_HEARTBEAT, .channel = 0 };
        if (amqp_send_frame(c, &f) != AMQP_STATUS_OK)
            return -ECONNRESET;
        *last = now;
        return 1;
    }
    return age < (int64_t)hb * NS - HB_MARGIN_NS ? 1 : 0;
}

/* bk_sendv_until on the connection's socket; on any error the connection
 * is dropped. */
static int sendv_until(conc_broker *b, struct iovec *iov, int n, int64_t deadline)
{
    if (!b->c)
        return b->last_err ? b->last_err : -ECONNRESET;
    int r = bk_sendv_until(b->fd, b->tls, iov, n, deadline);
    if (r < 0)
        bk_lost(b, r == -ETIMEDOUT || r == -ECANCELED ? -ECONNRESET : r);
    return r;
}

/* Sends what the buffer holds (all of it, in order, before any other frame
 * of the connection), waiting for room until deadline.  Returns 0, or the
 * error that took the connection down (-ETIMEDOUT and -ECANCELED too: the
 * buffer may have gone out in part). */
int bk_out_flush_until(conc_broker *b, int64_t deadline)
{
    if (!b->out.len)
        return 0;
    struct iovec v = { .iov_base = b->out.buf, .iov_len = b->out.len };
    b->out.len = 0;
    b->out_small = false;
    return sendv_until(b, &v, 1, deadline);
}

int bk_out_flush(conc_broker *b)
{
    return bk_out_flush_until(b, conc_now() + OBUF_SEND_NS);
}

/* Removes the frames of channel ch from o (whole frames only: o never
 * holds a frame in part). */
void bk_out_drop_channel(struct bk_out *o, uint16_t ch)
{
    size_t in = 0, keep = 0;
    while (in + 8 <= o->len) {
        const unsigned char *f = o->buf + in;
        size_t n = 8 + (size_t)(((uint32_t)f[3] << 24) | ((uint32_t)f[4] << 16) |
                                ((uint32_t)f[5] << 8) | f[6]);
        if (n > o->len - in)
            break;
        if ((((unsigned)f[1] << 8) | f[2]) != ch) {
            if (keep != in)
                memmove(o->buf + keep, f, n);
            keep += n;
        }
        in += n;
    }
    o->len = keep;
}

/* Makes room for need more bytes in o.  0 or -ENOMEM. */
static int out_reserve(struct bk_out *o, size_t need)
{
    if (o->cap - o->len >= need)
        return 0;
    size_t cap = o->cap ? o->cap : 65536;
    while (cap - o->len < need)
        cap *= 2;
    unsigned char *n = realloc(o->buf, cap);
    if (!n)
        return -ENOMEM;
    o->buf = n;
    o->cap = cap;
    return 0;
}

/* Frames method id (args: its decoded form) on channel ch at f, which has
 * room for `room` bytes.  Returns the frame's length, or -ENOMEM or
 * -EPROTO. */
static ssize_t frame_method_at(unsigned char *f, size_t room, uint16_t ch,
                               amqp_method_number_t id, void *args)
{
    put_be(f, AMQP_FRAME_METHOD, 1);
    put_be(f + 1, ch, 2);
    put_be(f + 7, id, 4);
    amqp_bytes_t enc = { .len = room - 12, .bytes = f + 11 };
    int n = amqp_encode_method(id, args, enc);
    if (n < 0)
        return n == AMQP_STATUS_NO_MEMORY ? -ENOMEM : -EPROTO;
    size_t plen = 4 + (size_t)n;
    put_be(f + 3, plen, 4);
    f[7 + plen] = AMQP_FRAME_END;
    return (ssize_t)(8 + plen);
}

/* Frames one method without content (an acknowledgement, a rejection)
 * into o.  Returns 0, or -ENOMEM or -EPROTO with nothing added. */
int bk_frame_method(struct bk_out *o, uint16_t ch, amqp_method_number_t id, void *args)
{
    if (out_reserve(o, 256) < 0)
        return -ENOMEM;
    ssize_t k = frame_method_at(o->buf + o->len, o->cap - o->len, ch, id, args);
    if (k < 0)
        return (int)k;
    o->len += (size_t)k;
    return 0;
}

/* Frames one publish into o: its method and content header (rabbitmq-c
 * encodes the method and the properties) and, with with_body, its body
 * frames (none for an empty body), cut at frame_max.  Returns 0, or
 * -ENOMEM or -EPROTO with nothing added. */
int bk_frame_publish(struct bk_out *o, size_t frame_max, uint16_t ch, amqp_bytes_t exchange,
                     amqp_bytes_t key, bool mandatory, const amqp_basic_properties_t *p,
                     amqp_bytes_t body, bool with_body)
{
    size_t chunk = frame_max > 4096 ? frame_max - 8 : 4096 - 8;
    size_t nbody = with_body ? (body.len + chunk - 1) / chunk : 0;
    size_t need = 3 * 8 + 64 + exchange.len + key.len + 1024 + (with_body ? body.len : 0) +
                  8 * nbody;
    if (out_reserve(o, need) < 0)
        return -ENOMEM;
    unsigned char *f = o->buf + o->len;
    /* The basic.publish method frame. */
    amqp_basic_publish_t m = { .exchange = exchange, .routing_key = key,
                               .mandatory = mandatory };
    ssize_t k = frame_method_at(f, o->cap - o->len, ch, AMQP_BASIC_PUBLISH_METHOD, &m);
    if (k < 0)
        return (int)k;
    f += k;
    /* The content header frame. */
    put_be(f, AMQP_FRAME_HEADER, 1);
    put_be(f + 1, ch, 2);
    put_be(f + 7, AMQP_BASIC_CLASS, 2);
    put_be(f + 9, 0, 2);
    put_be(f + 11, body.len, 8);
    amqp_bytes_t enc = { .len = (size_t)(o->buf + o->cap - f) - 20, .bytes = f + 19 };
    int n = amqp_encode_properties(AMQP_BASIC_CLASS, (void *)p, enc);
    if (n < 0)
        return n == AMQP_STATUS_NO_MEMORY ? -ENOMEM : -EPROTO;
    size_t plen = 12 + (size_t)n;
    put_be(f + 3, plen, 4);
    f[7 + plen] = AMQP_FRAME_END;
    f += 8 + plen;
    /* The body frames. */
    for (size_t off = 0; off < (with_body ? body.len : 0); off += chunk) {
        size_t kb = body.len - off < chunk ? body.len - off : chunk;
        put_be(f, AMQP_FRAME_BODY, 1);
        put_be(f + 1, ch, 2);
        put_be(f + 3, kb, 4);
        memcpy(f + 7, (const char *)body.bytes + off, kb);
        f[7 + kb] = AMQP_FRAME_END;
        f += 8 + kb;
    }
    o->len = (size_t)(f - o->buf);
    return 0;
}

/* Frames one publish into the connection's buffer (bk_frame_publish at
 * the connection's frame_max). */
int bk_out_publish(conc_broker *b, uint16_t ch, amqp_bytes_t exchange, amqp_bytes_t key,
                   const amqp_basic_properties_t *p, amqp_bytes_t body, bool with_body)
{
    return bk_frame_publish(&b->out, (size_t)amqp_get_frame_max(b->c), ch, exchange, key, false,
                            p, body, with_body);
}

/* Sends a small method without content (an acknowledgement, a
 * rejection), framed into the connection's buffer after what it holds:
 * with now, the buffer is sent at once (waiting for room through conc's
 * wait layer, OBUF_SEND_NS at most); without, it goes out with the next
 * flush (before the connection next waits, or the next request), which is
 * what code reading the connection's frames does, since it must not drop
 * the connection under its own feet.  Returns 0 or the error that took the
 * connection down (with now; else nothing is dropped). */
int bk_send_small(conc_broker *b, uint16_t ch, amqp_method_number_t id, void *args, bool now)
{
    if (!b->c)
        return b->last_err ? b->last_err : -ENOTCONN;
    int r = bk_frame_method(&b->out, ch, id, args);
    if (r < 0) {
        if (now)
            bk_lost(b, r);
        return r;
    }
    if (!now)
        b->out_small = true;
    return now ? bk_out_flush(b) : 0;
}

/* Sends a publish's body frames straight from the caller's bytes, cut at
 * frame_max, after what the buffer holds (its method and header), waiting
 * for room until deadline.  Returns what sendv_until returns. */
int bk_out_body_until(conc_broker *b, uint16_t ch, amqp_bytes_t body, int64_t deadline)
{
    int r = bk_out_flush_until(b, deadline);
    if (r < 0)
        return r;
    size_t fmax = (size_t)amqp_get_frame_max(b->c);
    size_t chunk = fmax > 4096 ? fmax - 8 : 4096 - 8;
    static const unsigned char end = AMQP_FRAME_END;
    /* Up to 16 frames to a sendmsg. */
    for (size_t off = 0; off < body.len;) {
        unsigned char hd[16][7];
        struct iovec v[48];
        int nv = 0;
        for (int i = 0; i < 16 && off < body.len; i++) {
            size_t k = body.len - off < chunk ? body.len - off : chunk;
            put_be(hd[i], AMQP_FRAME_BODY, 1);
            put_be(hd[i] + 1, ch, 2);
            put_be(hd[i] + 3, k, 4);
            v[nv++] = (struct iovec){ .iov_base = hd[i], .iov_len = 7 };
            v[nv++] = (struct iovec){ .iov_base = (char *)body.bytes + off, .iov_len = k };
            v[nv++] = (struct iovec){ .iov_base = (void *)&end, .iov_len = 1 };
            off += k;
        }
        r = sendv_until(b, v, nv, deadline);
        if (r < 0)
            return r;
    }
    return 0;
}

/* Before the connection waits for the broker: what it holds back goes out
 * (framed and corked publishes, batched acknowledgements, deliveries
 * refused for want of memory whose pause is over).  Returns when the next
 * held delivery is due (CONC_NO_DEADLINE: none), which a wait must not
 * sleep past. */
int64_t bk_before_wait(conc_broker *b)
{
    int64_t due = CONC_NO_DEADLINE;
    /* Acknowledgements and rejections are framed, then sent with the rest
     * of the buffer. */
    for (conc_broker_queue *q = b->queues; q && b->c; q = q->next) {
        bk_queue_flush_acks(q);
        int64_t d = bk_queue_release_held(q, false);
        if (d < due)
            due = d;
    }
    if (b->c && b->out.len)
        bk_out_flush(b);
    bk_cork(b, false);
    return due;
}

/* Forgets the connection: local deliveries are dropped (the broker gives
 * them again), waiting puts learn their confirmations are lost. */
void bk_lost(conc_broker *b, int err)
{
    b->corked = false;
    b->out.len = 0;
    b->out_small = false;
    if (b->c) {
        bk_reset_on_close(b->fd);
        amqp_destroy_connection(b->c);
        b->c = NULL;
    }
    b->fd = -1;
    b->tls = NULL;
    b->last_err = err ? err : -ECONNRESET;
    b->pub_open = b->ctl_open = false;
    b->pub_err = b->last_err;
    if (b->pub_seq > b->pub_confirmed && b->async_pending) {
        b->async_lost = true;
        b->async_err = -ECONNRESET;
    }
    b->pub_gen++;
    b->pub_seq = b->pub_confirmed = 0;
    if (b->win)
        memset(b->win, 0, b->win_cap);
    b->nnacked = 0;
    for (conc_broker_queue *q = b->queues; q; q = q->next)
        bk_queue_reset(q);
    b->got = false;
    b->want_id = 0;
}

/* Declares again what the client declared, on a new connection. */
static int redeclare(conc_broker *b, int64_t deadline)
{
    for (struct bk_exchange *e = b->exchanges; e; e = e->next) {
        int r = bk_exchange_declare_one(b, e, deadline);
        if (r < 0)
            return r;
    }
    for (conc_broker_queue *q = b->queues; q; q = q->next) {
        int r = bk_queue_declare(q, deadline);
        if (r < 0)
            return r;
    }
    return 0;
}

int bk_ensure_up(conc_broker *b, int64_t deadline)
{
    while (!b->c) {
        if (b->opts.no_reconnect && b->ever_up)
            return -ENOTCONN;
        int64_t now = conc_now();
        if (now < b->next_try) {
            if (b->poll_call || deadline < b->next_try)
                return b->last_err;
            int r = conc_sleep_until(b->next_try);
            if (r == -ECANCELED)
                return r;
            now = conc_now();
        }
        int r = connect_once(b, deadline);
        if (r == 0) {
            b->epoch++;
            if (b->ever_up)
                b->reconnects++;
            b->backoff = b->opts.retry_min;
            b->next_try = 0;
            bk_channels_reset(b);
            bool again = b->ever_up;
            b->ever_up = true;
            if (again) {
                r = redeclare(b, deadline);
                if (r < 0 && b->c)
                    return r;       /* a declaration failed: say so */
                if (r < 0)
                    continue;       /* lost again: try again */
            }
            return 0;
        }
        if (r == -ENOMEM || r == -ECANCELED || r == -EINVAL)
            return r;
        b->last_err = r == -ETIMEDOUT && b->last_err ? b->last_err : r;
        if (r == -EACCES || r == -EKEYREJECTED || r == -EPROTONOSUPPORT)
            b->last_err = r;
        b->next_try = conc_now() + (int64_t)(b->backoff * NS);
        b->backoff *= 2;
        if (b->backoff > b->opts.retry_max)
            b->backoff = b->opts.retry_max;
        if (!b->ever_up && (r == -EACCES || r == -EKEYREJECTED || r == -EPROTONOSUPPORT ||
                            r == -EPROTO))
            return r;               /* no point trying again */
        if (b->poll_call || (deadline != CONC_NO_DEADLINE && conc_now() >= deadline))
            return b->last_err;
    }
    return 0;
}

/* ---- frames ---- */

static void confirm_settle(conc_broker *b, uint64_t tag, bool multiple, bool nack)
{
    if (tag <= b->pub_confirmed || tag > b->pub_seq)
        return;
    if (nack) {
        uint64_t lo = multiple ? b->pub_confirmed + 1 : tag;
        for (uint64_t t = lo; t <= tag; t++) {
            if (b->nnacked == b->nacked_cap) {
                size_t cap = b->nacked_cap ? 2 * b->nacked_cap : 16;
                uint64_t *n = realloc(b->nacked, cap * sizeof *n);
                if (!n)
                    break;
                b->nacked = n;
                b->nacked_cap = cap;
            }
            b->nacked[b->nnacked++] = t;
        }
    }
    if (multiple) {
        uint64_t shift = tag - b->pub_confirmed;
        if (shift >= b->win_cap) {
            memset(b->win, 0, b->win_cap);
        } else {
            memmove(b->win, b->win + shift, b->win_cap - shift);
            memset(b->win + b->win_cap - shift, 0, shift);
        }
        b->pub_confirmed = tag;
    } else {
        uint64_t off = tag - b->pub_confirmed - 1;
        if (off < b->win_cap)
            b->win[off] = 1;
    }
    /* Slide over what is settled. */
    size_t k = 0;
    while (k < b->win_cap && b->win[k])
        k++;
    if (k) {
        memmove(b->win, b->win + k, b->win_cap - k);
        memset(b->win + b->win_cap - k, 0, k);
        b->pub_confirmed += k;
    }
}

static void channel_closed(conc_broker *b, uint16_t ch, int err)
{
    if (ch == BK_CH_PUB) {
        /* The broker drops what comes on it now, and after close-ok it
         * would be an error: its framed publishes go. */
        bk_out_drop_channel(&b->out, BK_CH_PUB);
        /* A publish meets no precondition but the broker's own message
         * size limit (max_message_size). */
        if (err == -EEXIST)
            err = -EMSGSIZE;
        b->pub_open = false;
        b->pub_err = err;
        if (b->pub_seq > b->pub_confirmed && b->async_pending) {
            b->async_lost = true;
            b->async_err = err;
        }
        b->pub_gen++;
        b->pub_seq = b->pub_confirmed = 0;
        if (b->win)
            memset(b->win, 0, b->win_cap);
    } else if (ch == BK_CH_CTL) {
        b->ctl_open = false;
        b->ctl_err = err;
    } else {
        for (conc_broker_queue *q = b->queues; q; q = q->next)
            if (q->channel == ch && q->chan_epoch == b->epoch)
                bk_queue_channel_closed(q, err);
    }
    if (b->want_id && b->want_ch == ch) {
        b->got = true;
        b->want_id = 0;
        b->got_count = 0;
        b->rpc_err = err ? err : -EIO;
    }
}

static int dispatch(conc_broker *b, const amqp_frame_t *f)
{
    uint16_t ch = f->channel;
    if (f->frame_type != AMQP_FRAME_METHOD) {
        if (ch >= BK_CH_FIRST_QUEUE)
            bk_queue_deliver(b, ch, f);
        return 0;
    }
    amqp_method_number_t id = f->payload.method.id;
    void *d = f->payload.method.decoded;
    switch (id) {
    case AMQP_BASIC_ACK_METHOD: {
        amqp_basic_ack_t *a = d;
        if (ch == BK_CH_PUB)
            confirm_settle(b, a->delivery_tag, a->multiple, false);
        return 0;
    }
    case AMQP_BASIC_NACK_METHOD: {
        amqp_basic_nack_t *a = d;
        if (ch == BK_CH_PUB)
            confirm_settle(b, a->delivery_tag, a->multiple, true);
        return 0;
    }
    case AMQP_BASIC_DELIVER_METHOD:
    case AMQP_BASIC_CANCEL_METHOD:
        bk_queue_deliver(b, ch, f);
        return 0;
    case AMQP_CHANNEL_CLOSE_METHOD: {
        amqp_channel_close_t *c = d;
        int err = reply_err(c->reply_code);
        amqp_channel_close_ok_t ok = { 0 };
        channel_closed(b, ch, err ? err : -EIO);
        /* After what the buffer holds for other channels, sent before the
         * channel is opened again (bk_rpc sends the buffer first). */
        bk_send_small(b, ch, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok, false);
        return 0;
    }
    case AMQP_CONNECTION_CLOSE_METHOD: {
        amqp_connection_close_t *c = d;
        int err = reply_err(c->reply_code);
        amqp_connection_close_ok_t ok = { 0 };
        /* A courtesy before the connection is dropped: sent if the socket
         * takes it now, never waited for. */
        struct bk_out o = { 0 };
        if (bk_frame_method(&o, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok) == 0) {
            struct iovec v = { .iov_base = o.buf, .iov_len = o.len }, *pv = &v;
            int n = 1;
            short want;
            bk_send_some(b->fd, b->tls, &pv, &n, &want);
        }
        free(o.buf);
        return err == -EACCES ? err : err == -EMSGSIZE ? err : -ECONNRESET;
    }
    default:
        break;
    }
    if (id == AMQP_BASIC_GET_OK_METHOD || id == AMQP_BASIC_GET_EMPTY_METHOD)
        bk_queue_deliver(b, ch, f);
    if (b->want_id && ch == b->want_ch &&
        (id == b->want_id ||
         (b->want_id == AMQP_BASIC_GET_OK_METHOD && id == AMQP_BASIC_GET_EMPTY_METHOD))) {
        if (id == AMQP_QUEUE_DECLARE_OK_METHOD) {
            amqp_queue_declare_ok_t *ok = d;
            b->got_count = ok->message_count;
            size_t n = ok->queue.len < 255 ? ok->queue.len : 255;
            memcpy(b->got_name, ok->queue.bytes, n);
            b->got_name[n] = '\0';
        } else if (id == AMQP_QUEUE_DELETE_OK_METHOD) {
            b->got_count = ((amqp_queue_delete_ok_t *)d)->message_count;
        }
        b->got = true;
        b->want_id = 0;
    }
    return 0;
}

/* Reads and handles the frames there are; waits for one until deadline
 * when none is.  Returns 1 when frames were handled, -ETIMEDOUT, or the
 * error that took the connection down (which is then forgotten). */
int bk_pump(conc_broker *b, int64_t deadline)
{
    if (!b->c)
        return b->last_err ? b->last_err : -ENOTCONN;
    int handled = 0;
    for (;;) {
        int g = bk_read_gate(b->c, b->fd, &b->hb_sent);
        if (g < 0) {
            bk_lost(b, g);
            return g;
        }
        if (g == 0) {
            /* No room for the heartbeat rabbitmq-c would send inside the
             * read: wait for room first (through the wait layer). */
            if (handled)
                return 1;
            int r = conc_fd_wait_until(b->fd, POLLOUT, deadline);
            if (r == -ETIMEDOUT || r == -ECANCELED)
                return r;
            if (r < 0) {
                bk_lost(b, -ECONNRESET);
                return -ECONNRESET;
            }
            continue;
        }
        amqp_frame_t f;
        struct timeval zero = { 0, 0 };
        int st = amqp_simple_wait_frame_noblock(b->c, &f, &zero);
        if (st == AMQP_STATUS_OK) {
            int r = dispatch(b, &f);
            amqp_maybe_release_buffers(b->c);
            if (r < 0) {
                bk_lost(b, r);
                return r;
            }
            handled = 1;
            if (!b->c)
                return -ECONNRESET;
            continue;
        }
        if (st != AMQP_STATUS_TIMEOUT) {
            int r = bk_status_err(st);
            if (r == -ETIMEDOUT)
                r = -ECONNRESET;
            bk_lost(b, r);
            return r;
        }
        if (handled) {
            /* Acknowledgements, rejections or a close-ok framed while
             * reading go out now (a stream of async publishes stays in the
             * buffer, to go out many to one send). */
            if (b->out_small && bk_out_flush(b) < 0)
                return b->last_err ? b->last_err : -ECONNRESET;
            return 1;
        }
        int64_t now = conc_now();
        if (now >= deadline)
            return -ETIMEDOUT;
        int64_t until = deadline;
        if (b->heartbeat > 0) {
            int64_t slice = now + (int64_t)(b->heartbeat * NS / 2);
            if (slice < until)
                until = slice;
        }
        int64_t due = bk_before_wait(b);
        if (!b->c)
            return b->last_err ? b->last_err : -ECONNRESET;
        if (due < until)
            until = due > now ? due : now;
        int r = conc_fd_wait_until(b->fd, POLLIN, until);
        if (r == -ECANCELED)
            return r;
        if (r < 0 && r != -ETIMEDOUT) {
            bk_lost(b, -ECONNRESET);
            return -ECONNRESET;
        }
    }
}

/* Sends method id on channel ch and waits for the reply (reply 0: none
 * expected). */
int bk_rpc(conc_broker *b, uint16_t ch, amqp_method_number_t id, void *args,
           amqp_method_number_t reply, int64_t deadline)
{
    if (!b->c)
        return b->last_err ? b->last_err : -ENOTCONN;
    if (b->out.len) {
        int r = bk_out_flush_until(b, deadline);
        if (r < 0)
            return r;
    }
    /* A full socket is waited for before anything is sent (a timeout
     * then leaves the connection as it was); the method is framed here
     * and written without blocking (rabbitmq-c would wait for room inside
     * its send). */
    struct pollfd pw = { .fd = b->fd, .events = POLLOUT };
    if (poll(&pw, 1, 0) == 0) {
        int r = conc_fd_wait_until(b->fd, POLLOUT, deadline);
        if (r == -ETIMEDOUT || r == -ECANCELED)
            return r;           /* nothing was sent */
    }
    int fr = bk_frame_method(&b->out, ch, id, args);
    if (fr < 0)
        return fr;              /* nothing was added */
    fr = bk_out_flush_until(b, deadline);
    if (fr < 0)
        return fr;              /* the connection was dropped */
    if (!reply)
        return 0;
    uint64_t epoch = b->epoch;
    b->want_ch = ch;
    b->want_id = reply;
    b->got = false;
    b->rpc_err = 0;
    while (!b->got) {
        int r = bk_pump(b, deadline);
        if (r < 0) {
            b->want_id = 0;
            return r;
        }
        if (epoch != b->epoch)
            return -ECONNRESET;
    }
    return b->rpc_err;
}

int bk_channel_open(conc_broker *b, uint16_t ch, int64_t deadline)
{
    amqp_channel_open_t o = { .out_of_band = amqp_empty_bytes };
    return bk_rpc(b, ch, AMQP_CHANNEL_OPEN_METHOD, &o, AMQP_CHANNEL_OPEN_OK_METHOD, deadline);
}

int bk_ctl_ready(conc_broker *b, int64_t deadline)
{
    int r = bk_ensure_up(b, deadline);
    if (r < 0 || b->ctl_open)
        return r;
    r = bk_channel_open(b, BK_CH_CTL, deadline);
    if (r == 0)
        b->ctl_open = true;
    return r;
}

int bk_pub_ready(conc_broker *b, int64_t deadline)
{
    int r = bk_ensure_up(b, deadline);
    if (r < 0 || b->pub_open)
        return r;
    r = bk_channel_open(b, BK_CH_PUB, deadline);
    if (r < 0)
        return r;
    amqp_confirm_select_t cs = { 0 };
    r = bk_rpc(b, BK_CH_PUB, AMQP_CONFIRM_SELECT_METHOD, &cs, AMQP_CONFIRM_SELECT_OK_METHOD,
               deadline);
    if (r == 0) {
        b->pub_open = true;
        b->pub_err = 0;
        b->pub_seq = b->pub_confirmed = 0;
        if (b->win)
            memset(b->win, 0, b->win_cap);
    }
    return r;
}

/* ---- the public connection calls ---- */

static void broker_release(conc_broker *b)
{
    free(b->host);
    free(b->user);
    free(b->pass);
    free(b->vhost);
    free(b->cacert);
    free(b->cert);
    free(b->key);
    free(b->win);
    free(b->nacked);
    free(b->out.buf);
    struct bk_exchange *e = b->exchanges;
    while (e) {
        struct bk_exchange *n = e->next;
        free(e);
        e = n;
    }
    free(b);
}

int conc_broker_new_until(conc_broker **out, const char *url, const conc_broker_opts *opts,
                          int64_t deadline)
{
    if (!out || !url)
        return -EINVAL;
    conc_broker_opts o = { 0 };
    if (opts) {
        size_t n = opts->size && opts->size < sizeof o ? opts->size : sizeof o;
        memcpy(&o, opts, n);
    }
    if (isnan(o.connect_timeout) || o.connect_timeout < 0 || isnan(o.heartbeat) ||
        isnan(o.retry_min) || o.retry_min < 0 || isnan(o.retry_max) || o.retry_max < 0 ||
        o.heartbeat > 65535)
        return -EINVAL;
    if (o.connect_timeout == 0)
        o.connect_timeout = DEFAULT_CONNECT;
    if (o.retry_min == 0)
        o.retry_min = DEFAULT_RETRY_MIN;
    if (o.retry_max == 0)
        o.retry_max = DEFAULT_RETRY_MAX;
    if (o.retry_max < o.retry_min)
        o.retry_max = o.retry_min;
    if (o.max_message == 0)
        o.max_message = DEFAULT_MAX_MESSAGE;
    size_t ulen = strlen(url);
    if (ulen == 0 || ulen > 4096)
        return -EINVAL;
    char *buf = strdup(url);
    if (!buf)
        return -ENOMEM;
    struct amqp_connection_info info;
    amqp_default_connection_info(&info);
    if (amqp_parse_url(buf, &info) != AMQP_STATUS_OK || !info.host || !*info.host ||
        info.port <= 0 || info.port > 65535) {
        free(buf);
        return -EINVAL;
    }
    conc_broker *b = calloc(1, sizeof *b);
    if (!b) {
        free(buf);
        return -ENOMEM;
    }
    bool fail = false;
    b->host = dup_or_null(info.host, &fail);
    b->user = dup_or_null(info.user ? info.user : "guest", &fail);
    b->pass = dup_or_null(info.password ? info.password : "guest", &fail);
    b->vhost = dup_or_null(info.vhost && *info.vhost ? info.vhost : "/", &fail);
    b->cacert = dup_or_null(o.cacert, &fail);
    b->cert = dup_or_null(o.cert, &fail);
    b->key = dup_or_null(o.key, &fail);
    b->port = info.port;
    b->ssl = info.ssl;
    free(buf);
    b->win_cap = 4096;
    b->win = calloc(b->win_cap, 1);
    if (fail || !b->win) {
        broker_release(b);
        return -ENOMEM;
    }
    o.cacert = o.cert = o.key = NULL;
    o.size = sizeof o;
    b->opts = o;
    b->heartbeat = o.heartbeat == 0 ? DEFAULT_HEARTBEAT : o.heartbeat < 0 ? 0 : o.heartbeat;
    b->fd = -1;
    b->backoff = o.retry_min;
    bk_channels_reset(b);
    int r = connect_once(b, deadline);
    if (r < 0) {
        broker_release(b);
        return r;
    }
    b->epoch = 1;
    b->ever_up = true;
    *out = b;
    return 0;
}

int conc_broker_new(conc_broker **out, const char *url, const conc_broker_opts *opts)
{
    return conc_broker_new_until(out, url, opts, CONC_NO_DEADLINE);
}

void conc_broker_free(conc_broker *b)
{
    if (!b)
        return;
    while (b->queues)
        conc_broker_queue_free(b->queues);
    if (b->c && b->out.len)
        bk_out_flush(b);
    if (b->c) {
        bk_cork(b, false);
        /* A polite close, bounded: the reply is awaited briefly. */
        amqp_connection_close_t cl = { .reply_code = 200,
                                       .reply_text = amqp_cstring_bytes("bye") };
        int64_t until = conc_now() + CLOSE_BOUND_NS;
        if (bk_frame_method(&b->out, 0, AMQP_CONNECTION_CLOSE_METHOD, &cl) == 0 &&
            bk_out_flush_until(b, until) == 0) {
            for (;;) {
                if (bk_read_gate(b->c, b->fd, &b->hb_sent) != 1)
                    break;
                amqp_frame_t f;
                struct timeval zero = { 0, 0 };
                int st = amqp_simple_wait_frame_noblock(b->c, &f, &zero);
                if (st == AMQP_STATUS_OK) {
                    bool done = f.frame_type == AMQP_FRAME_METHOD &&
                                f.payload.method.id == AMQP_CONNECTION_CLOSE_OK_METHOD;
                    amqp_maybe_release_buffers(b->c);
                    if (done)
                        break;
                    continue;
                }
                if (st != AMQP_STATUS_TIMEOUT || conc_now() >= until)
                    break;
                if (conc_fd_wait_until(b->fd, POLLIN, until) == -ECANCELED)
                    break;
            }
        }
        if (b->c)
            amqp_destroy_connection(b->c);
        b->c = NULL;
    }
    broker_release(b);
}

int conc_broker_flush_until(conc_broker *b, int64_t deadline)
{
    if (!b)
        return -EINVAL;
    for (;;) {
        if (b->async_lost) {
            int err = b->async_err ? b->async_err : -ECONNRESET;
            b->async_lost = false;
            b->async_pending = false;
            b->nnacked = 0;
            return err;
        }
        if (!b->async_pending || b->async_gen != b->pub_gen ||
            b->pub_confirmed >= b->async_upto) {
            bool lost = b->async_pending && b->async_gen != b->pub_gen;
            bool nack = b->nnacked > 0;
            b->async_pending = false;
            b->nnacked = 0;
            return lost ? -ECONNRESET : nack ? -EIO : 0;
        }
        int r = bk_pump(b, deadline);
        if (r == -ETIMEDOUT || r == -ECANCELED)
            return r;
    }
}

int conc_broker_flush(conc_broker *b, double timeout)
{
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return conc__timeout_code(poll, conc_broker_flush_until(b, deadline));
}

uint64_t conc_broker_reconnects(const conc_broker *b)
{
    return b ? b->reconnects : 0;
}
