/*
 * broker_executor.c - the distributed executor and its workers on RabbitMQ
 * (conc/broker_executor.h), through rabbitmq-c.
 *
 * Wire format (AMQP 0-9-1 messages on the default exchange):
 *   task    to the work queue, persistent, mandatory; properties: type =
 *           the function name, correlation_id = the task id ("<n>.<t>":
 *           the client's sequence number n in decimal and t, 16 hex digits
 *           of a keyed hash of n under a random key of the client's, so that
 *           nobody who has not seen the task can name it), reply_to = the
 *           client's reply queue ("<work queue>.reply.<16 hex digits>");
 *           body = the argument bytes.
 *   result  to reply_to, persistent; properties: correlation_id = the
 *           task's; headers: "conc-error" (int, 0 or a negative errno) and,
 *           with an error, "conc-detail" (int); body = the result bytes
 *           (empty with an error).
 * With an authkey, a task and a result also carry a header "conc-mac": the
 * HMAC-SHA256 under the key (hex) over everything the other side acts on,
 * each part prefixed with its length: for a task "conc-task", its id, the
 * function name, the reply queue and the argument; for a result
 * "conc-result", the task id, the reply queue, the error and detail (32-bit
 * little-endian) and the body.  A task whose tag is missing or wrong is
 * dead-lettered unrun (and, when its reply queue has a client's form,
 * answered with an untagged -EACCES); a result whose tag is missing or
 * wrong is never used: it fails its task's future with -EACCES (a keyless
 * worker's answers, or a worker's refusal of a task under another key).
 * Everything read from a message is checked before use: a result whose id
 * does not parse or names no pending task is dropped, one whose error is
 * out of range fails its future with -EPROTO; a task without an id, or
 * without a reply queue of the form a client makes, is dead-lettered
 * (a worker sends results to clients' reply queues only).
 *
 * Nothing confirmed is lost.  Both sides publish in confirm mode.  A
 * client keeps each task it sent until the broker confirmed it, and sends
 * the unconfirmed ones again on a new connection (a task that reached the
 * queue anyway runs twice; its second result is dropped by id).  Its reply
 * queue is durable and not exclusive, named by the client, and expires
 * (x-expires) once no client has used it for result_expires seconds, so
 * results sent while the client was away wait for it, and results for a
 * client that is gone for good do not pile up.  Results are taken with
 * acknowledgements (one basic.ack with multiple=true per batch read), so a
 * result in flight when the connection drops is delivered again.  A worker
 * acknowledges a task only once the broker confirmed the task's result.
 *
 * Over plain TCP everything sent after setup (tasks, results,
 * acknowledgements and rejections) is framed here (bk_frame_publish and
 * bk_frame_method, shared with the broker queue) into an out-buffer and
 * written to a socket that never blocks; a full socket is waited for
 * through conc's wait layer.  Over TLS the same frames are encrypted into
 * the connection's TLS session (bk_send_some), under the same rules.
 *
 * The executor's connection is shared by the submitting threads and its
 * result thread under conn_lock, which nobody holds while waiting: a
 * submit appends its task's frames to the out-buffer, writes what the
 * socket takes and waits for room for the rest without the lock (a
 * coroutine of the same hub that submits meanwhile queues behind it).  The
 * result thread waits for the socket (or its stop or wake descriptors)
 * through conc_wait, then takes the lock, writes what is left in the
 * out-buffer and reads what came without waiting; rabbitmq-c reads only
 * while the out-buffer is empty, since it may send a heartbeat, which must
 * not come between the bytes of a frame written in part.  It also makes the connection again after a loss.  The
 * pending tasks (id -> future) are an open-addressing table under `lock`,
 * which is never held while a future is finished (its callbacks may
 * submit); neither is conn_lock.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <sodium.h>

#include "conc/broker_executor.h"
#include "conc/wait.h"
#include "broker_internal.h"
#include "internal.h"

#define BX_CHANNEL 1
#define BX_PROBE_CHANNEL 2      /* the passive look at the reply queue */
#define BX_QUEUE_NAME_MAX 200
/* The longest sleep between two looks at the connection's heartbeats. */
#define BX_SLICE_NS (2 * 1000000000LL)
/* The executor's AMQP heartbeat, in seconds: its result thread answers
 * them.  A worker has none, since a task may run longer than the broker
 * waits for a heartbeat; TCP keepalives stand in for them. */
#define BX_HEARTBEAT 30
#define BX_ERR_KEY "conc-error"
#define BX_DETAIL_KEY "conc-detail"
#define BX_MAC_KEY "conc-mac"
/* The longest authkey, in bytes (as the manager's). */
#define BX_AUTHKEY_MAX 1024
/* A tag as sent: HMAC-SHA256 in lower-case hex. */
#define BX_MAC_HEX (2 * crypto_auth_hmacsha256_BYTES)
/* Pauses between reconnection attempts: from the first, doubling, up to
 * the last. */
#define BX_RETRY_MIN 0.1
#define BX_RETRY_MAX 5.0
/* A reply queue's life without its client, by default (seconds). */
#define BX_RESULT_EXPIRES 300.0
/* Results read before their acknowledgement is sent at the latest. */
#define BX_ACK_BATCH 256
/* How long a worker waits for the confirmations of the results it sent
 * before run returns. */
#define BX_DRAIN_NS (10 * 1000000000LL)

/* ------------------------------------------------------------ connection */

static int64_t bx_now(void)
{
    return conc_now();
}

/* Where and how a client or worker connects (kept for reconnecting). */
struct bx_cfg {
    char *url;
    char *cacert, *cert, *key;
    bool insecure;
    bool ssl;                   /* amqps: what is framed here is
                                   encrypted into rabbitmq-c's TLS session
                                   (bk_tls_session) */
    int heartbeat;              /* seconds, 0: none (TCP keepalives) */
    double connect_timeout;     /* seconds */
};

static void bx_cfg_free(struct bx_cfg *c)
{
    free(c->url);
    free(c->cacert);
    free(c->cert);
    free(c->key);
}

static int bx_cfg_init(struct bx_cfg *c, const char *url, const char *cacert, const char *cert,
                       const char *key, bool insecure, int heartbeat, double connect_timeout)
{
    memset(c, 0, sizeof *c);
    c->url = strdup(url);
    c->cacert = cacert ? strdup(cacert) : NULL;
    c->cert = cert ? strdup(cert) : NULL;
    c->key = key ? strdup(key) : NULL;
    c->insecure = insecure;
    c->ssl = strncasecmp(url, "amqps:", 6) == 0;
    c->heartbeat = heartbeat;
    c->connect_timeout = connect_timeout ? connect_timeout : 10.0;
    if (!c->url || (cacert && !c->cacert) || (cert && !c->cert) || (key && !c->key)) {
        bx_cfg_free(c);
        return -ENOMEM;
    }
    return 0;
}

/* Checks a URL without connecting: -EINVAL when it does not parse. */
static int bx_check_url(const char *url)
{
    char *copy = strdup(url);
    if (!copy)
        return -ENOMEM;
    struct amqp_connection_info info;
    amqp_default_connection_info(&info);
    int r = amqp_parse_url(copy, &info) != AMQP_STATUS_OK || !info.host || !*info.host ||
            info.port <= 0 || info.port > 65535 ? -EINVAL : 0;
    free(copy);
    return r;
}

/* The options an executor and a worker share: the work queue's name (the
 * default when NULL), max_deliveries, the connect and reconnect timeouts
 * (*deadline: the connect's, 10 s when 0), then the URL.  0, -EINVAL or
 * the URL's error. */
static int bx_check_common(const char *url, const char *queue_opt, int max_deliveries,
                           double connect_timeout, double reconnect_timeout,
                           const char **queue, int64_t *deadline)
{
    const char *q = queue_opt ? queue_opt : CONC_BROKER_DEFAULT_QUEUE;
    if (!*q || strlen(q) > BX_QUEUE_NAME_MAX || max_deliveries < 0 || connect_timeout < 0 ||
        connect_timeout != connect_timeout || reconnect_timeout != reconnect_timeout)
        return -EINVAL;
    if (conc_deadline(connect_timeout ? connect_timeout : 10.0, deadline))
        return -EINVAL;
    *queue = q;
    return bx_check_url(url);
}

/* The code of a channel.close or connection.close from the broker. */
static int bx_close_code(uint16_t code)
{
    switch (code) {
    case AMQP_ACCESS_REFUSED:
    case AMQP_NOT_ALLOWED: return -EACCES;
    case AMQP_PRECONDITION_FAILED: return -EEXIST;
    case AMQP_NOT_FOUND: return -ENOENT;
    default: return -EPROTO;
    }
}

/* Sends method id on channel ch and waits until deadline for its reply
 * (`reply` on ch), parking only the calling coroutine: rabbitmq-c reads
 * without waiting, the socket is waited on through conc's wait layer.  A
 * channel.close is answered and gives its code, as a connection.close
 * does; other frames are dropped (during setup none come).  0, the
 * broker's refusal (-EACCES, -EEXIST, -ENOENT, -EPROTO), -ETIMEDOUT,
 * -ECANCELED, -ENOMEM or -EPIPE. */
static int bx_call(amqp_connection_state_t c, uint16_t ch, amqp_method_number_t id, void *args,
                   amqp_method_number_t reply, int64_t deadline)
{
    if (amqp_send_method(c, ch, id, args) != AMQP_STATUS_OK)
        return -EPIPE;
    int fd = amqp_get_sockfd(c);
    for (;;) {
        amqp_frame_t f;
        struct timeval zero = { 0, 0 };
        int st = amqp_simple_wait_frame_noblock(c, &f, &zero);
        if (st == AMQP_STATUS_TIMEOUT) {
            int r = conc_fd_wait_until(fd, POLLIN, deadline);
            if (r == -ETIMEDOUT || r == -ECANCELED || r == -ENOMEM)
                return r;
            if (r < 0)
                return -EPIPE;
            continue;
        }
        if (st != AMQP_STATUS_OK)
            return st == AMQP_STATUS_NO_MEMORY ? -ENOMEM : -EPIPE;
        if (f.frame_type != AMQP_FRAME_METHOD)
            continue;
        amqp_method_number_t got = f.payload.method.id;
        if (got == AMQP_CONNECTION_CLOSE_METHOD)
            return bx_close_code(((amqp_connection_close_t *)f.payload.method.decoded)->reply_code);
        if (f.channel != ch)
            continue;
        if (got == AMQP_CHANNEL_CLOSE_METHOD) {
            int r = bx_close_code(((amqp_channel_close_t *)f.payload.method.decoded)->reply_code);
            amqp_channel_close_ok_t ok = { 0 };
            amqp_send_method(c, ch, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
            amqp_maybe_release_buffers(c);
            return r;
        }
        if (got == reply) {
            amqp_maybe_release_buffers(c);
            return 0;
        }
    }
}

static int bx_channel_open(amqp_connection_state_t c, uint16_t ch, int64_t deadline)
{
    amqp_channel_open_t o = { .out_of_band = amqp_empty_bytes };
    return bx_call(c, ch, AMQP_CHANNEL_OPEN_METHOD, &o, AMQP_CHANNEL_OPEN_OK_METHOD, deadline);
}

/* Connects (TCP, or TLS for amqps:// with the server's certificate and
 * host name verified unless insecure), logs in (with AMQP heartbeats
 * every cfg->heartbeat seconds, or none for 0) and opens the channel.
 * From a coroutine only the coroutine waits (conc__broker_open). */
static int bx_connect(amqp_connection_state_t *out, const struct bx_cfg *cfg, int64_t deadline)
{
    char *copy = strdup(cfg->url);
    if (!copy)
        return -ENOMEM;
    struct amqp_connection_info info;
    amqp_default_connection_info(&info);
    if (amqp_parse_url(copy, &info) != AMQP_STATUS_OK || !info.host || info.port <= 0 ||
        info.port > 65535) {
        free(copy);
        return -EINVAL;
    }
    /* "amqp://host/" names the empty vhost, which RabbitMQ cannot have:
     * take it for the default one, as pika does. */
    if (!info.vhost || !*info.vhost)
        info.vhost = "/";
    struct bk_target t = { .host = info.host, .vhost = info.vhost, .user = info.user,
                           .pass = info.password, .cacert = cfg->cacert, .cert = cfg->cert,
                           .key = cfg->key, .port = info.port, .ssl = info.ssl,
                           .insecure = cfg->insecure, .heartbeat = cfg->heartbeat,
                           .frame_max = 131072 };
    amqp_connection_state_t c = NULL;
    int r = conc__broker_open(&t, deadline, &c);
    free(copy);
    if (r)
        return r == -ECONNRESET ? -EPIPE : r == -ENETUNREACH ? -EHOSTUNREACH : r;
    if (!cfg->heartbeat) {
        /* No AMQP heartbeats: TCP keepalives find a peer that is gone. */
        int fd = amqp_get_sockfd(c), on = 1, idle = 30, intvl = 10, cnt = 3;
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
    }
    r = bx_channel_open(c, BX_CHANNEL, deadline);
    if (r) {
        amqp_destroy_connection(c);
        return r;
    }
    *out = c;
    return 0;
}

/* rabbitmq-c takes a signal that interrupts a wait of its own for a
 * broken connection: the result thread, whose publishes may wait for room
 * in the socket, takes no signals.  (The waits for replies are conc's.) */
static void bx_hold_signals(sigset_t *old)
{
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, old);
}

/* Closes politely (waiting a second at most for the broker's answer,
 * parking only a calling coroutine), then frees. */
static void bx_close(amqp_connection_state_t c)
{
    if (!c)
        return;
    int64_t until = bx_now() + 1000000000LL;
    amqp_connection_close_t cl = { .reply_code = AMQP_REPLY_SUCCESS,
                                   .reply_text = amqp_empty_bytes };
    bx_call(c, 0, AMQP_CONNECTION_CLOSE_METHOD, &cl, AMQP_CONNECTION_CLOSE_OK_METHOD, until);
    amqp_destroy_connection(c);
}

/* Deletes the client's reply queue (waiting a second at most). */
static int bx_reply_delete(conc_broker_executor *ex);

/* queue.declare of name on ch, until deadline: durable with args, or
 * passive (only a look: -ENOENT when it is not there). */
static int bx_queue_declare(amqp_connection_state_t c, uint16_t ch, const char *name,
                            bool passive, amqp_table_t args, int64_t deadline)
{
    amqp_queue_declare_t d = { .queue = amqp_cstring_bytes(name), .passive = passive,
                               .durable = !passive, .arguments = args };
    return bx_call(c, ch, AMQP_QUEUE_DECLARE_METHOD, &d, AMQP_QUEUE_DECLARE_OK_METHOD,
                   deadline);
}

/* Declares the work queue (a quorum queue that dead-letters to
 * "<queue>.dead" after max deliveries) and the dead-letter queue. */
static int bx_declare(amqp_connection_state_t c, const char *queue, int max_deliveries,
                      int64_t deadline)
{
    char dead[BX_QUEUE_NAME_MAX + 8];
    snprintf(dead, sizeof dead, "%s.dead", queue);
    int r = bx_queue_declare(c, BX_CHANNEL, dead, false, amqp_empty_table, deadline);
    if (r)
        return r;
    amqp_table_entry_t e[4];
    e[0].key = amqp_cstring_bytes("x-queue-type");
    e[0].value.kind = AMQP_FIELD_KIND_UTF8;
    e[0].value.value.bytes = amqp_cstring_bytes("quorum");
    e[1].key = amqp_cstring_bytes("x-dead-letter-exchange");
    e[1].value.kind = AMQP_FIELD_KIND_UTF8;
    e[1].value.value.bytes = amqp_cstring_bytes("");
    e[2].key = amqp_cstring_bytes("x-dead-letter-routing-key");
    e[2].value.kind = AMQP_FIELD_KIND_UTF8;
    e[2].value.value.bytes = amqp_cstring_bytes(dead);
    e[3].key = amqp_cstring_bytes("x-delivery-limit");
    e[3].value.kind = AMQP_FIELD_KIND_I64;
    e[3].value.value.i64 = max_deliveries;
    amqp_table_t args = { .num_entries = 4, .entries = e };
    return bx_queue_declare(c, BX_CHANNEL, queue, false, args, deadline);
}

/* Puts the channel in confirm mode. */
static int bx_confirm_select(amqp_connection_state_t c, int64_t deadline)
{
    amqp_confirm_select_t cs = { 0 };
    return bx_call(c, BX_CHANNEL, AMQP_CONFIRM_SELECT_METHOD, &cs,
                   AMQP_CONFIRM_SELECT_OK_METHOD, deadline);
}

/* basic.consume on queue (acknowledged deliveries). */
static int bx_basic_consume(amqp_connection_state_t c, const char *queue, int64_t deadline)
{
    amqp_basic_consume_t bc = { .queue = amqp_cstring_bytes(queue),
                                .consumer_tag = amqp_empty_bytes,
                                .arguments = amqp_empty_table };
    return bx_call(c, BX_CHANNEL, AMQP_BASIC_CONSUME_METHOD, &bc, AMQP_BASIC_CONSUME_OK_METHOD,
                   deadline);
}

/* An integer field of a table (any of AMQP's integer kinds). */
static bool bx_table_int(const amqp_table_t *t, const char *key, int64_t *out)
{
    size_t klen = strlen(key);
    for (int i = 0; i < t->num_entries; i++) {
        const amqp_table_entry_t *e = &t->entries[i];
        if (e->key.len != klen || memcmp(e->key.bytes, key, klen) != 0)
            continue;
        const amqp_field_value_t *v = &e->value;
        switch (v->kind) {
        case AMQP_FIELD_KIND_I8: *out = v->value.i8; return true;
        case AMQP_FIELD_KIND_U8: *out = v->value.u8; return true;
        case AMQP_FIELD_KIND_I16: *out = v->value.i16; return true;
        case AMQP_FIELD_KIND_U16: *out = v->value.u16; return true;
        case AMQP_FIELD_KIND_I32: *out = v->value.i32; return true;
        case AMQP_FIELD_KIND_U32: *out = v->value.u32; return true;
        case AMQP_FIELD_KIND_I64: *out = v->value.i64; return true;
        case AMQP_FIELD_KIND_U64:
            *out = v->value.u64 > INT64_MAX ? INT64_MAX : (int64_t)v->value.u64;
            return true;
        default: return false;
        }
    }
    return false;
}

/* Parses a task id: decimal digits only, > 0. */
static bool bx_parse_id(amqp_bytes_t b, uint64_t *out)
{
    if (b.len == 0 || b.len > 20)
        return false;
    uint64_t v = 0;
    const unsigned char *p = b.bytes;
    for (size_t i = 0; i < b.len; i++) {
        if (p[i] < '0' || p[i] > '9')
            return false;
        uint64_t d = p[i] - '0';
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return v != 0;
}

/* The longest task id on the wire: "<20 digits>.<16 hex digits>". */
#define BX_CID_MAX 37

/* A client's task id for sequence number n: "<n>.<keyed hash of n>". */
static void bx_cid(const unsigned char key[crypto_shorthash_KEYBYTES], uint64_t n,
                   char buf[BX_CID_MAX + 1])
{
    unsigned char in[8], h[crypto_shorthash_BYTES];
    for (int i = 0; i < 8; i++)
        in[i] = (unsigned char)(n >> (8 * i));
    crypto_shorthash(h, in, sizeof in, key);
    int k = snprintf(buf, BX_CID_MAX + 1, "%" PRIu64 ".", n);
    sodium_bin2hex(buf + k, (size_t)(BX_CID_MAX + 1 - k), h, sizeof h);
}

/* Parses a task id of this client's (key): its sequence number, or false
 * for one the client did not make. */
static bool bx_parse_cid(const unsigned char key[crypto_shorthash_KEYBYTES], amqp_bytes_t b,
                         uint64_t *out)
{
    const char *p = b.bytes;
    const char *dot = b.len ? memchr(p, '.', b.len) : NULL;
    uint64_t n;
    if (!dot || !bx_parse_id((amqp_bytes_t){ .len = (size_t)(dot - p), .bytes = b.bytes }, &n))
        return false;
    char want[BX_CID_MAX + 1];
    bx_cid(key, n, want);
    size_t wl = strlen(want);
    if (b.len != wl || sodium_memcmp(want, p, wl) != 0)
        return false;
    *out = n;
    return true;
}

/* A task id as a worker takes it: 1 to BX_CID_MAX digits, lower-case hex
 * digits and dots (it only sends it back). */
static bool bx_cid_shape(amqp_bytes_t b)
{
    if (b.len == 0 || b.len > BX_CID_MAX)
        return false;
    const unsigned char *p = b.bytes;
    for (size_t i = 0; i < b.len; i++)
        if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f') || p[i] == '.'))
            return false;
    return true;
}

/* Whether name is a reply queue a client of work queue `queue` makes:
 * "<queue>.reply.<16 lower-case hex digits>". */
static bool bx_reply_shape(amqp_bytes_t name, const char *queue)
{
    size_t ql = strlen(queue);
    const char *p = name.bytes;
    if (name.len != ql + 7 + 16 || memcmp(p, queue, ql) != 0 || memcmp(p + ql, ".reply.", 7) != 0)
        return false;
    for (size_t i = ql + 7; i < name.len; i++)
        if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f')))
            return false;
    return true;
}

/* An authkey, ready to tag messages: HMAC-SHA256 with the key absorbed. */
struct bx_mac {
    bool on;
    crypto_auth_hmacsha256_state base;
};

/* Checks and takes an authkey (NULL with 0: none).  0 or -EINVAL. */
static int bx_mac_init(struct bx_mac *m, const void *key, size_t len)
{
    memset(m, 0, sizeof *m);
    if (!key && !len)
        return 0;
    if (!key || len == 0 || len > BX_AUTHKEY_MAX)
        return -EINVAL;
    if (sodium_init() < 0)
        return -EIO;
    crypto_auth_hmacsha256_init(&m->base, key, len);
    m->on = true;
    return 0;
}

static void bx_mac_part(crypto_auth_hmacsha256_state *st, const void *p, size_t len)
{
    unsigned char n[8];
    for (int i = 0; i < 8; i++)
        n[i] = (unsigned char)((uint64_t)len >> (8 * i));
    crypto_auth_hmacsha256_update(st, n, sizeof n);
    if (len)
        crypto_auth_hmacsha256_update(st, p, len);
}

static void bx_mac_i32(crypto_auth_hmacsha256_state *st, int32_t v)
{
    unsigned char b[4];
    for (int i = 0; i < 4; i++)
        b[i] = (unsigned char)((uint32_t)v >> (8 * i));
    bx_mac_part(st, b, sizeof b);
}

/* A task's tag: over its id, function name, reply queue and argument. */
static void bx_mac_task(const struct bx_mac *m, amqp_bytes_t cid, amqp_bytes_t fn,
                        amqp_bytes_t reply, amqp_bytes_t body, char hex[BX_MAC_HEX + 1])
{
    crypto_auth_hmacsha256_state st = m->base;
    bx_mac_part(&st, "conc-task", 9);
    bx_mac_part(&st, cid.bytes, cid.len);
    bx_mac_part(&st, fn.bytes, fn.len);
    bx_mac_part(&st, reply.bytes, reply.len);
    bx_mac_part(&st, body.bytes, body.len);
    unsigned char mac[crypto_auth_hmacsha256_BYTES];
    crypto_auth_hmacsha256_final(&st, mac);
    sodium_bin2hex(hex, BX_MAC_HEX + 1, mac, sizeof mac);
    sodium_memzero(&st, sizeof st);
}

/* A result's tag: over the task id, the reply queue, error, detail, body. */
static void bx_mac_result(const struct bx_mac *m, amqp_bytes_t cid, amqp_bytes_t reply,
                          int32_t err, int32_t detail, amqp_bytes_t body,
                          char hex[BX_MAC_HEX + 1])
{
    crypto_auth_hmacsha256_state st = m->base;
    bx_mac_part(&st, "conc-result", 11);
    bx_mac_part(&st, cid.bytes, cid.len);
    bx_mac_part(&st, reply.bytes, reply.len);
    bx_mac_i32(&st, err);
    bx_mac_i32(&st, detail);
    bx_mac_part(&st, body.bytes, body.len);
    unsigned char mac[crypto_auth_hmacsha256_BYTES];
    crypto_auth_hmacsha256_final(&st, mac);
    sodium_bin2hex(hex, BX_MAC_HEX + 1, mac, sizeof mac);
    sodium_memzero(&st, sizeof st);
}

/* Whether a message's headers carry the tag `want` (compared in constant
 * time). */
static bool bx_mac_ok(const amqp_basic_properties_t *p, const char want[BX_MAC_HEX + 1])
{
    if (!(p->_flags & AMQP_BASIC_HEADERS_FLAG))
        return false;
    size_t klen = strlen(BX_MAC_KEY);
    for (int i = 0; i < p->headers.num_entries; i++) {
        const amqp_table_entry_t *e = &p->headers.entries[i];
        if (e->key.len != klen || memcmp(e->key.bytes, BX_MAC_KEY, klen) != 0)
            continue;
        if ((e->value.kind != AMQP_FIELD_KIND_UTF8 && e->value.kind != AMQP_FIELD_KIND_BYTES) ||
            e->value.value.bytes.len != BX_MAC_HEX)
            return false;
        return sodium_memcmp(e->value.value.bytes.bytes, want, BX_MAC_HEX) == 0;
    }
    return false;
}

/* What a look at the connection found besides a delivery. */
struct bx_event {
    amqp_method_number_t id;    /* 0: nothing; basic.ack, basic.nack or
                                   basic.return */
    uint64_t tag;
    bool multiple;
    uint64_t returned_id;       /* basic.return: the task id, or 0 */
};

/* A message being read frame by frame, and the connection's heartbeat
 * count (bk_read_gate).  rabbitmq-c's own readers (amqp_consume_message,
 * amqp_read_message) wait for a message's header and body frames with no
 * deadline once its method came, which on a slow broker would hold the
 * executor's connection lock (and the threads of the coroutines that
 * submit) or a worker's thread; here each look takes the frames that came
 * and returns. */
struct bx_in {
    amqp_method_number_t kind;  /* 0, or the basic.deliver or basic.return
                                   being read */
    uint16_t channel;
    bool have_header;
    size_t got;                 /* body bytes so far */
    amqp_envelope_t env;        /* its properties in env.message.pool */
    int64_t hb_sent;            /* rabbitmq-c's last send */
};

/* Forgets a message read in part (its connection is gone). */
static void bx_in_reset(struct bx_in *in)
{
    if (in->kind)
        amqp_destroy_envelope(&in->env);
    in->kind = 0;
    in->hb_sent = bx_now();
}

/* Copies bytes b into the message's pool.  0 or -ENOMEM. */
static int bx_in_dup(amqp_pool_t *pool, amqp_bytes_t *b)
{
    if (!b->len) {
        *b = amqp_empty_bytes;
        return 0;
    }
    amqp_bytes_t d;
    amqp_pool_alloc_bytes(pool, b->len, &d);
    if (!d.bytes)
        return -ENOMEM;
    memcpy(d.bytes, b->bytes, b->len);
    *b = d;
    return 0;
}

/* The properties of a content header, copied into the message's pool
 * (the frame's own are released with rabbitmq-c's buffers). */
static int bx_in_props(amqp_envelope_t *env, const amqp_basic_properties_t *src)
{
    amqp_basic_properties_t *p = &env->message.properties;
    amqp_pool_t *pool = &env->message.pool;
    *p = *src;
    amqp_bytes_t *fields[] = { &p->content_type, &p->content_encoding, &p->correlation_id,
                               &p->reply_to, &p->expiration, &p->message_id, &p->type,
                               &p->user_id, &p->app_id, &p->cluster_id };
    amqp_flags_t flags[] = { AMQP_BASIC_CONTENT_TYPE_FLAG, AMQP_BASIC_CONTENT_ENCODING_FLAG,
                             AMQP_BASIC_CORRELATION_ID_FLAG, AMQP_BASIC_REPLY_TO_FLAG,
                             AMQP_BASIC_EXPIRATION_FLAG, AMQP_BASIC_MESSAGE_ID_FLAG,
                             AMQP_BASIC_TYPE_FLAG, AMQP_BASIC_USER_ID_FLAG,
                             AMQP_BASIC_APP_ID_FLAG, AMQP_BASIC_CLUSTER_ID_FLAG };
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        if (!(p->_flags & flags[i]))
            *fields[i] = amqp_empty_bytes;
        else if (bx_in_dup(pool, fields[i]) < 0)
            return -ENOMEM;
    }
    p->headers = amqp_empty_table;
    if ((src->_flags & AMQP_BASIC_HEADERS_FLAG) &&
        amqp_table_clone(&src->headers, &p->headers, pool) != AMQP_STATUS_OK)
        return -ENOMEM;
    return 0;
}

/* A returned message's task id (0: not one of ours). */
static uint64_t bx_returned_id(const amqp_basic_properties_t *p, const unsigned char *cid_key)
{
    uint64_t id = 0;
    if (!cid_key || !(p->_flags & AMQP_BASIC_CORRELATION_ID_FLAG) ||
        !bx_parse_cid(cid_key, p->correlation_id, &id))
        id = 0;
    return id;
}

/* Looks at the connection without waiting, taking the frames that came.
 * Returns 1 with a delivery in *env, 2 with a confirmation or a returned
 * message in *ev, 0 when nothing (or only part of a message, or a frame
 * of no interest) was there, 3 when the socket must have room before
 * rabbitmq-c may read (bk_read_gate: wait for POLLOUT), or a negative code
 * when the connection or channel is gone. */
static int bx_poll_message(amqp_connection_state_t c, struct bx_in *in, amqp_envelope_t *env,
                           struct bx_event *ev, const unsigned char *cid_key)
{
    for (;;) {
        int g = bk_read_gate(c, amqp_get_sockfd(c), &in->hb_sent);
        if (g <= 0)
            return g == 0 ? 3 : -EPIPE;
        struct timeval zero = { 0, 0 };
        amqp_maybe_release_buffers(c);
        amqp_frame_t f;
        int st = amqp_simple_wait_frame_noblock(c, &f, &zero);
        if (st == AMQP_STATUS_TIMEOUT)
            return 0;
        if (st != AMQP_STATUS_OK)
            return -EPIPE;
        if (in->kind && f.channel == in->channel) {
            amqp_envelope_t *e = &in->env;
            if (!in->have_header) {
                if (f.frame_type != AMQP_FRAME_HEADER)
                    return -EPIPE;
                if (bx_in_props(e, f.payload.properties.decoded) < 0)
                    return -EPIPE;      /* no memory: given back unread */
                uint64_t size = f.payload.properties.body_size;
                if (size > SIZE_MAX / 2)
                    return -EPIPE;
                e->message.body = size ? amqp_bytes_malloc((size_t)size) : amqp_empty_bytes;
                if (size && !e->message.body.bytes)
                    return -EPIPE;
                in->have_header = true;
                in->got = 0;
            } else if (f.frame_type == AMQP_FRAME_BODY) {
                amqp_bytes_t frag = f.payload.body_fragment;
                if (frag.len > e->message.body.len - in->got)
                    return -EPIPE;
                memcpy((char *)e->message.body.bytes + in->got, frag.bytes, frag.len);
                in->got += frag.len;
            } else {
                return -EPIPE;
            }
            if (in->got < e->message.body.len)
                continue;
            amqp_method_number_t kind = in->kind;
            in->kind = 0;
            if (kind == AMQP_BASIC_DELIVER_METHOD) {
                *env = *e;
                return 1;
            }
            *ev = (struct bx_event){ .id = AMQP_BASIC_RETURN_METHOD,
                                     .returned_id = bx_returned_id(&e->message.properties,
                                                                   cid_key) };
            amqp_destroy_envelope(e);
            return 2;
        }
        if (f.frame_type != AMQP_FRAME_METHOD)
            continue;
        const void *d = f.payload.method.decoded;
        switch (f.payload.method.id) {
        case AMQP_CHANNEL_CLOSE_METHOD:
        case AMQP_CONNECTION_CLOSE_METHOD:
        case AMQP_BASIC_CANCEL_METHOD:
            return -EPIPE;
        case AMQP_BASIC_ACK_METHOD: {
            const amqp_basic_ack_t *a = d;
            *ev = (struct bx_event){ .id = AMQP_BASIC_ACK_METHOD, .tag = a->delivery_tag,
                                     .multiple = a->multiple };
            if (f.channel == BX_CHANNEL)
                return 2;
            continue;
        }
        case AMQP_BASIC_NACK_METHOD: {
            const amqp_basic_nack_t *a = d;
            *ev = (struct bx_event){ .id = AMQP_BASIC_NACK_METHOD, .tag = a->delivery_tag,
                                     .multiple = a->multiple };
            if (f.channel == BX_CHANNEL)
                return 2;
            continue;
        }
        case AMQP_BASIC_DELIVER_METHOD:
        case AMQP_BASIC_RETURN_METHOD: {
            if (in->kind)
                return -EPIPE;          /* another channel's, half read */
            memset(&in->env, 0, sizeof in->env);
            in->env.channel = f.channel;
            if (f.payload.method.id == AMQP_BASIC_DELIVER_METHOD) {
                const amqp_basic_deliver_t *dv = d;
                in->env.delivery_tag = dv->delivery_tag;
                in->env.redelivered = dv->redelivered;
            }
            init_amqp_pool(&in->env.message.pool, 4096);
            in->kind = f.payload.method.id;
            in->channel = f.channel;
            in->have_header = false;
            in->got = 0;
            continue;
        }
        default:
            continue;
        }
    }
}

/* Waits until the socket is ready for events (0), the stop descriptor is
 * readable (1), the wake descriptor is (2, read), or the deadline passes
 * (-ETIMEDOUT); at most one slice (0 when it ends). */
static int bx_wait(int sockfd, short events, int stopfd, int wakefd, int64_t deadline)
{
    int64_t slice = bx_now() + BX_SLICE_NS;
    bool last = deadline <= slice;
    conc_waitable w[3] = {
        { .kind = CONC_WAIT_FD, .u.fd = sockfd, .events = events },
        { .kind = CONC_WAIT_FD, .u.fd = stopfd, .events = POLLIN },
        { .kind = CONC_WAIT_FD, .u.fd = wakefd, .events = POLLIN },
    };
    size_t n = wakefd >= 0 ? 3 : 2;
    int r = conc_wait_until(sockfd >= 0 ? w : w + 1, sockfd >= 0 ? n : n - 1,
                            last ? deadline : slice);
    if (r > 0) {
        if (w[1].ready)
            return 1;
        if (wakefd >= 0 && w[2].ready) {
            uint64_t v;
            if (read(wakefd, &v, sizeof v) < 0) {
                /* Nothing to read: someone else took it. */
            }
            return 2;
        }
        return 0;
    }
    if (r == -ETIMEDOUT)
        return last ? -ETIMEDOUT : 0;
    return r;
}

/* A pause between reconnection attempts: 1 when the stop descriptor
 * became readable, 0 after the pause. */
static int bx_pause(int stopfd, double seconds, int64_t deadline)
{
    int64_t until = bx_now() + (int64_t)(seconds * 1e9);
    if (deadline != CONC_NO_DEADLINE && deadline < until)
        until = deadline;
    for (;;) {
        int r = bx_wait(-1, POLLIN, stopfd, -1, until);
        if (r == 1)
            return 1;
        if (r == -ETIMEDOUT || bx_now() >= until)
            return 0;
        if (r < 0)
            return r;
    }
}

/* ---------------------------------------------------------------- executor */

struct bx_slot {
    uint64_t id;            /* 0: empty */
    conc_future *f;
};

/* A task the broker has not confirmed yet (kept to be sent again). */
struct bx_task {
    struct bx_task *next;
    uint64_t id;
    uint64_t seq;           /* its confirm sequence number on the current
                               connection; 0: not sent on it */
    size_t len;
    size_t fnlen;
    char bytes[];           /* the function name, '\0', the argument */
};

/* A future to fail once the locks are released. */
struct bx_fail {
    uint64_t id;
    int err;
};

struct conc_broker_executor {
    pthread_mutex_t conn_lock;  /* conn, pub_seq, the unconfirmed tasks */
    amqp_connection_state_t conn;   /* NULL while down */
    struct bx_in in;            /* conn's reading (under conn_lock) */
    int sockfd;
    bool lost;              /* a publish failed: the result thread makes
                               the connection again */
    bool dead;              /* given up: no task is taken any more */
    uint64_t pub_seq;
    struct bx_task *uhead, *utail;
    /* Frames not yet sent (everything the executor sends after setup:
     * tasks and acknowledgements).  out.buf[0..osent) is out; obase counts
     * the bytes sent before out.buf[0] on this connection, and gen the
     * connections, so a submit knows when its own bytes are out.  Nobody
     * waits for room while holding conn_lock: a submit appends, sends what
     * the socket takes, and waits for room without the lock. */
    struct bk_out out;
    size_t osent;
    uint64_t obase;
    uint64_t gen;
    int64_t ostall;         /* out had bytes and none went out since */
    struct bx_fail *fails;  /* result thread only */
    size_t nfails, fails_cap;

    int stopfd;
    int wakefd;
    pthread_t reader;

    pthread_mutex_t lock;   /* slots, count, next_id, broken */
    struct bx_slot *slots;
    size_t cap;             /* a power of two */
    size_t count;
    uint64_t next_id;
    int broken;             /* 0, or the code later submits get */

    struct bx_cfg cfg;
    int max_deliveries;
    double result_expires;
    double reconnect_timeout;
    uint64_t reconnects;    /* atomic */
    uint64_t rejected;      /* atomic: results dropped unread */
    unsigned char cid_key[crypto_shorthash_KEYBYTES];
    struct bx_mac mac;
    char queue[BX_QUEUE_NAME_MAX + 1];
    char reply[256];
};

static size_t bx_hash(uint64_t id, size_t cap)
{
    id ^= id >> 33;
    id *= 0xff51afd7ed558ccdULL;
    id ^= id >> 33;
    return (size_t)id & (cap - 1);
}

static int bx_table_put(conc_broker_executor *ex, uint64_t id, conc_future *f)
{
    if ((ex->count + 1) * 2 > ex->cap) {
        size_t ncap = ex->cap ? ex->cap * 2 : 64;
        struct bx_slot *ns = calloc(ncap, sizeof *ns);
        if (!ns)
            return -ENOMEM;
        for (size_t i = 0; i < ex->cap; i++) {
            if (!ex->slots[i].id)
                continue;
            size_t j = bx_hash(ex->slots[i].id, ncap);
            while (ns[j].id)
                j = (j + 1) & (ncap - 1);
            ns[j] = ex->slots[i];
        }
        free(ex->slots);
        ex->slots = ns;
        ex->cap = ncap;
    }
    size_t j = bx_hash(id, ex->cap);
    while (ex->slots[j].id)
        j = (j + 1) & (ex->cap - 1);
    ex->slots[j].id = id;
    ex->slots[j].f = f;
    ex->count++;
    return 0;
}

/* Removes id and returns its future (NULL when it is not there). */
static conc_future *bx_table_take(conc_broker_executor *ex, uint64_t id)
{
    if (!ex->cap)
        return NULL;
    size_t mask = ex->cap - 1, i = bx_hash(id, ex->cap);
    while (ex->slots[i].id && ex->slots[i].id != id)
        i = (i + 1) & mask;
    if (!ex->slots[i].id)
        return NULL;
    conc_future *f = ex->slots[i].f;
    ex->slots[i].id = 0;
    ex->count--;
    /* Backward shift: move up the entries the hole would hide. */
    size_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (!ex->slots[j].id)
            break;
        size_t home = bx_hash(ex->slots[j].id, ex->cap);
        bool movable = i <= j ? (home <= i || home > j) : (home <= i && home > j);
        if (movable) {
            ex->slots[i] = ex->slots[j];
            ex->slots[j].id = 0;
            i = j;
        }
    }
    return f;
}

/* Fails the future of task id with err, when it is still pending. */
static void bx_fail_one(conc_broker_executor *ex, uint64_t id, int err)
{
    pthread_mutex_lock(&ex->lock);
    conc_future *f = bx_table_take(ex, id);
    pthread_mutex_unlock(&ex->lock);
    if (f) {
        conc_future_set_exception(f, err, 0);
        conc_future_free(f);
    }
}

/* Marks the executor broken with err, forgets the unconfirmed tasks and
 * fails every pending future. */
static void bx_fail_all(conc_broker_executor *ex, int err)
{
    pthread_mutex_lock(&ex->conn_lock);
    ex->dead = true;
    struct bx_task *t = ex->uhead;
    ex->uhead = ex->utail = NULL;
    pthread_mutex_unlock(&ex->conn_lock);
    while (t) {
        struct bx_task *n = t->next;
        free(t);
        t = n;
    }
    pthread_mutex_lock(&ex->lock);
    if (!ex->broken)
        ex->broken = err;
    struct bx_slot *slots = ex->slots;
    size_t cap = ex->cap;
    ex->slots = NULL;
    ex->cap = 0;
    ex->count = 0;
    pthread_mutex_unlock(&ex->lock);
    for (size_t i = 0; i < cap; i++) {
        if (slots[i].id) {
            conc_future_set_exception(slots[i].f, err, 0);
            conc_future_free(slots[i].f);
        }
    }
    free(slots);
}

/* A bound on how long frames wait to be sent without any of their bytes
 * going out: the connection is then taken for lost (a broker that stopped
 * reading), and what the broker had not confirmed is sent again on a new
 * one. */
#define BX_STALL_NS (30 * 1000000000LL)
/* An out-buffer larger than this is freed once it is empty. */
#define BX_OUT_KEEP ((size_t)1 << 20)

static void bx_wake(conc_broker_executor *ex)
{
    uint64_t one = 1;
    while (write(ex->wakefd, &one, sizeof one) < 0 && errno == EINTR)
        ;
}

/* Before frames are added to out (conn_lock held): an empty out starts
 * its stall clock. */
static void bx_out_begin(conc_broker_executor *ex)
{
    if (ex->osent == ex->out.len)
        ex->ostall = bx_now();
}

/* Forgets what out holds (conn_lock held; a new connection). */
static void bx_out_clear(conc_broker_executor *ex)
{
    ex->out.len = 0;
    ex->osent = 0;
    ex->obase = 0;
    ex->gen++;
    if (ex->out.cap > BX_OUT_KEEP) {
        free(ex->out.buf);
        ex->out.buf = NULL;
        ex->out.cap = 0;
    }
}

/* Sends what the socket takes of out without waiting (conn_lock held).
 * Returns 0 once out is empty, -EAGAIN while the socket is full, -EPIPE
 * when the connection is down, failed, or stalled for BX_STALL_NS (then
 * marked lost: the result thread makes it again, and the caller wakes
 * it). */
static int bx_out_push(conc_broker_executor *ex)
{
    if (!ex->conn || ex->lost)
        return -EPIPE;
    if (ex->osent < ex->out.len) {
        struct iovec v = { .iov_base = ex->out.buf + ex->osent,
                           .iov_len = ex->out.len - ex->osent };
        struct iovec *iv = &v;
        int n = 1;
        short want;
        int r = bk_send_some(ex->sockfd, ex->cfg.ssl ? bk_tls_session(ex->conn) : NULL, &iv, &n,
                             &want);
        size_t sent = n ? ex->out.len - v.iov_len : ex->out.len;
        if (sent > ex->osent) {
            ex->osent = sent;
            ex->ostall = bx_now();
        }
        if (r == -EAGAIN && bx_now() - ex->ostall > BX_STALL_NS)
            r = -ECONNRESET;
        if (r == -ECONNRESET) {
            ex->lost = true;
            return -EPIPE;
        }
        if (r == -EAGAIN)
            return r;
    }
    ex->obase += ex->out.len;
    ex->out.len = ex->osent = 0;
    if (ex->out.cap > BX_OUT_KEEP) {
        free(ex->out.buf);
        ex->out.buf = NULL;
        ex->out.cap = 0;
    }
    return 0;
}

/* Waits until the bytes of out up to upto (counted from the start of
 * connection gen) are sent, sending them as the socket takes them.
 * conn_lock is held on entry and on return and released while waiting
 * for room, which goes through conc's wait layer: a coroutine parks, and
 * no other caller (a coroutine of the same hub, the result thread) ever
 * waits for the lock while this one waits for the socket.  Returns 0 once
 * they are out, 1 when the connection was lost first (its unconfirmed
 * tasks are sent again on the next one), -ETIMEDOUT at deadline or
 * -ECANCELED. */
static int bx_out_wait(conc_broker_executor *ex, uint64_t gen, uint64_t upto, int64_t deadline)
{
    for (;;) {
        if (ex->gen != gen || !ex->conn || ex->lost)
            return 1;
        if (ex->obase + ex->osent >= upto)
            return 0;
        int r = bx_out_push(ex);
        if (r == -EPIPE)
            return 1;
        if (r == 0)
            continue;
        if (bx_now() >= deadline)
            return -ETIMEDOUT;
        /* In slices: the result thread may drop the connection (and
         * close its socket) meanwhile. */
        int fd = ex->sockfd;
        int64_t until = bx_now() + BX_SLICE_NS;
        if (deadline < until)
            until = deadline;
        pthread_mutex_unlock(&ex->conn_lock);
        r = conc_fd_wait_until(fd, POLLOUT, until);
        pthread_mutex_lock(&ex->conn_lock);
        /* Cancelled: given up only while the task is still this
         * connection's to send (once the connection is lost, the result
         * thread sends it again on the next one: it is submitted). */
        if (r == -ECANCELED && ex->gen == gen && ex->conn && !ex->lost &&
            ex->obase + ex->osent < upto)
            return r;
    }
}

/* Frames a task into out for the current connection (conn_lock held).
 * 0, or -ENOMEM or -EPROTO with nothing added. */
static int bx_publish_task(conc_broker_executor *ex, const struct bx_task *t)
{
    char cid[BX_CID_MAX + 1];
    bx_cid(ex->cid_key, t->id, cid);
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof p);
    p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
               AMQP_BASIC_CORRELATION_ID_FLAG | AMQP_BASIC_REPLY_TO_FLAG | AMQP_BASIC_TYPE_FLAG;
    p.content_type = amqp_cstring_bytes("application/octet-stream");
    p.delivery_mode = 2;
    p.correlation_id = amqp_cstring_bytes(cid);
    p.reply_to = amqp_cstring_bytes(ex->reply);
    p.type = (amqp_bytes_t){ .len = t->fnlen, .bytes = (void *)t->bytes };
    amqp_bytes_t body = { .len = t->len, .bytes = (void *)(t->bytes + t->fnlen + 1) };
    char tag[BX_MAC_HEX + 1];
    amqp_table_entry_t e;
    if (ex->mac.on) {
        bx_mac_task(&ex->mac, p.correlation_id, p.type, p.reply_to, body, tag);
        e.key = amqp_cstring_bytes(BX_MAC_KEY);
        e.value.kind = AMQP_FIELD_KIND_UTF8;
        e.value.value.bytes = (amqp_bytes_t){ .len = BX_MAC_HEX, .bytes = tag };
        p._flags |= AMQP_BASIC_HEADERS_FLAG;
        p.headers.num_entries = 1;
        p.headers.entries = &e;
    }
    bx_out_begin(ex);
    return bk_frame_publish(&ex->out, (size_t)amqp_get_frame_max(ex->conn), BX_CHANNEL,
                            amqp_empty_bytes, amqp_cstring_bytes(ex->queue), true, &p, body,
                            true);
}

static void bx_add_fail(conc_broker_executor *ex, uint64_t id, int err)
{
    if (ex->nfails == ex->fails_cap) {
        size_t cap = ex->fails_cap ? ex->fails_cap * 2 : 16;
        struct bx_fail *n = realloc(ex->fails, cap * sizeof *n);
        if (!n)
            return;     /* the future then waits for a result */
        ex->fails = n;
        ex->fails_cap = cap;
    }
    ex->fails[ex->nfails++] = (struct bx_fail){ .id = id, .err = err };
}

/* A confirmation (conn_lock held): the tasks it settles are forgotten; a
 * negative one fails their futures with -EIO (after the lock). */
static void bx_settle(conc_broker_executor *ex, const struct bx_event *ev)
{
    if (ev->id == AMQP_BASIC_RETURN_METHOD) {
        /* Unroutable: the work queue is gone.  Its ack follows. */
        if (ev->returned_id)
            bx_add_fail(ex, ev->returned_id, -ENOENT);
        return;
    }
    bool nack = ev->id == AMQP_BASIC_NACK_METHOD;
    struct bx_task *prev = NULL, *t = ex->uhead;
    while (t && t->seq && t->seq <= ev->tag) {
        struct bx_task *next = t->next;
        if (ev->multiple || t->seq == ev->tag) {
            if (prev)
                prev->next = next;
            else
                ex->uhead = next;
            if (ex->utail == t)
                ex->utail = prev;
            if (nack)
                bx_add_fail(ex, t->id, -EIO);
            free(t);
        } else {
            prev = t;
        }
        t = next;
    }
}

/* A result message: finish its future, or drop it. */
static void bx_on_result(conc_broker_executor *ex, const amqp_envelope_t *env)
{
    const amqp_basic_properties_t *p = &env->message.properties;
    uint64_t id;
    if (!(p->_flags & AMQP_BASIC_CORRELATION_ID_FLAG) ||
        !bx_parse_cid(ex->cid_key, p->correlation_id, &id)) {
        __atomic_fetch_add(&ex->rejected, 1, __ATOMIC_RELAXED);
        return;
    }
    int64_t err = -EPROTO, detail = 0;
    const amqp_bytes_t *b = &env->message.body;
    bool untrusted = false;
    if (ex->mac.on) {
        /* Over the values as sent: a worker always sends an error field,
         * and a detail field with an error. */
        int64_t we = 0, wd = 0;
        if (p->_flags & AMQP_BASIC_HEADERS_FLAG) {
            bx_table_int(&p->headers, BX_ERR_KEY, &we);
            bx_table_int(&p->headers, BX_DETAIL_KEY, &wd);
        }
        char want[BX_MAC_HEX + 1];
        bx_mac_result(&ex->mac, p->correlation_id, amqp_cstring_bytes(ex->reply), (int32_t)we,
                      (int32_t)wd, *b, want);
        if (!bx_mac_ok(p, want)) {
            /* Not from a worker with our key: a worker with another key
             * (which refuses the task with an untagged -EACCES), one
             * without a key (which ran it and answers untagged), or
             * someone who saw the task.  Its content is never used: the
             * task's future fails with -EACCES, so that a client and
             * workers whose keys differ fail clearly instead of waiting
             * for ever.  Counted, but for a worker's refusal. */
            if (we != -EACCES || b->len != 0)
                __atomic_fetch_add(&ex->rejected, 1, __ATOMIC_RELAXED);
            untrusted = true;
        }
    }
    pthread_mutex_lock(&ex->lock);
    conc_future *f = bx_table_take(ex, id);
    pthread_mutex_unlock(&ex->lock);
    if (!f)
        return;     /* a second result for the task, or not ours */
    if (untrusted) {
        conc_future_set_exception(f, -EACCES, 0);
        conc_future_free(f);
        return;
    }
    if (p->_flags & AMQP_BASIC_HEADERS_FLAG) {
        if (!bx_table_int(&p->headers, BX_ERR_KEY, &err) || err > 0 || err < -4095)
            err = -EPROTO;
        if (!bx_table_int(&p->headers, BX_DETAIL_KEY, &detail) || detail < INT_MIN ||
            detail > INT_MAX)
            detail = 0;
    }
    if (err == 0 && b->len > CONC_BROKER_TASK_MAX)
        err = -EMSGSIZE;
    if (err == 0) {
        int r = conc_future_set_result_bytes(f, b->len ? b->bytes : NULL, b->len);
        if (r == -ENOMEM)
            conc_future_set_exception(f, -ENOMEM, 0);
    } else {
        conc_future_set_exception(f, (int)err, err == -EPROTO ? 0 : (int)detail);
    }
    conc_future_free(f);
}

/* Connects and sets up a client: the work queues, the reply queue (first
 * looked at passively when `again`: *gone tells that it expired while the
 * client was away), its consumer, confirm mode. */
static int bx_client_setup(conc_broker_executor *ex, amqp_connection_state_t *out, bool again,
                           bool *gone)
{
    int64_t deadline;
    conc_deadline(ex->cfg.connect_timeout, &deadline);
    amqp_connection_state_t c = NULL;
    int r = bx_connect(&c, &ex->cfg, deadline);
    if (r)
        return r;
    r = bx_declare(c, ex->queue, ex->max_deliveries, deadline);
    if (r)
        goto fail;
    if (again) {
        r = bx_channel_open(c, BX_PROBE_CHANNEL, deadline);
        if (r)
            goto fail;
        r = bx_queue_declare(c, BX_PROBE_CHANNEL, ex->reply, true, amqp_empty_table, deadline);
        if (r == -ENOENT) {
            *gone = true;   /* the broker closed the probe channel */
        } else if (r) {
            goto fail;
        } else {
            amqp_channel_close_t cl = { .reply_code = AMQP_REPLY_SUCCESS,
                                        .reply_text = amqp_empty_bytes };
            r = bx_call(c, BX_PROBE_CHANNEL, AMQP_CHANNEL_CLOSE_METHOD, &cl,
                        AMQP_CHANNEL_CLOSE_OK_METHOD, deadline);
            if (r)
                goto fail;
        }
    }
    amqp_table_entry_t e = { .key = amqp_cstring_bytes("x-expires"),
                             .value = { .kind = AMQP_FIELD_KIND_I64,
                                        .value.i64 = (int64_t)(ex->result_expires * 1000) } };
    amqp_table_t args = { .num_entries = 1, .entries = &e };
    r = bx_queue_declare(c, BX_CHANNEL, ex->reply, false, args, deadline);
    if (r)
        goto fail;
    /* Confirm mode before the consumer: once it consumes, results may
     * come, and no other reply is awaited after. */
    r = bx_confirm_select(c, deadline);
    if (r)
        goto fail;
    r = bx_basic_consume(c, ex->reply, deadline);
    if (r)
        goto fail;
    *out = c;
    return 0;
fail:
    bx_close(c);
    return r;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The reply queue expired while the client was away: the results of the
 * tasks the broker had confirmed are lost; fail their futures.  Called
 * while the connection is down (no confirmation comes meanwhile); a task
 * is in the table and not in the unconfirmed list only once confirmed,
 * since submit adds it to both under conn_lock. */
static void bx_fail_confirmed(conc_broker_executor *ex)
{
    pthread_mutex_lock(&ex->conn_lock);
    size_t n = 0;
    for (struct bx_task *t = ex->uhead; t; t = t->next)
        n++;
    uint64_t *ids = malloc((n ? n : 1) * sizeof *ids);
    n = 0;
    if (ids)
        for (struct bx_task *t = ex->uhead; t; t = t->next)
            ids[n++] = t->id;
    qsort(ids, ids ? n : 0, sizeof *ids, cmp_u64);
    struct bx_slot *lostf = NULL;
    size_t nl = 0;
    pthread_mutex_lock(&ex->lock);
    if (ids && ex->count)
        lostf = malloc(ex->count * sizeof *lostf);
    for (size_t i = 0; lostf && i < ex->cap; i++) {
        uint64_t id = ex->slots[i].id;
        if (id && !bsearch(&id, ids, n, sizeof *ids, cmp_u64))
            lostf[nl++] = ex->slots[i];
    }
    for (size_t i = 0; i < nl; i++)
        bx_table_take(ex, lostf[i].id);
    pthread_mutex_unlock(&ex->lock);
    pthread_mutex_unlock(&ex->conn_lock);
    for (size_t i = 0; i < nl; i++) {
        conc_future_set_exception(lostf[i].f, -EPIPE, 0);
        conc_future_free(lostf[i].f);
    }
    free(lostf);
    free(ids);
}

/* Makes the connection again after a loss, with a back-off, and sends the
 * unconfirmed tasks again.  Returns 0 once up, 1 when the executor is
 * being freed, or a negative code after reconnect_timeout. */
static int bx_reconnect(conc_broker_executor *ex)
{
    if (ex->reconnect_timeout < 0)
        return -EPIPE;
    int64_t give_up = CONC_NO_DEADLINE;
    if (ex->reconnect_timeout > 0)
        conc_deadline(ex->reconnect_timeout, &give_up);
    double pause = BX_RETRY_MIN;
    for (;;) {
        amqp_connection_state_t c = NULL;
        bool gone = false;
        int64_t start = bx_now();   /* before any send of rabbitmq-c's */
        int r = bx_client_setup(ex, &c, true, &gone);
        if (r == 0) {
            /* counted before the futures below fail, so a caller woken by
             * one of them sees the reconnection */
            __atomic_fetch_add(&ex->reconnects, 1, __ATOMIC_RELAXED);
            if (gone)
                bx_fail_confirmed(ex);
            pthread_mutex_lock(&ex->conn_lock);
            ex->conn = c;
            ex->sockfd = amqp_get_sockfd(c);
            ex->in.hb_sent = start;
            ex->lost = false;
            ex->pub_seq = 0;
            bx_out_clear(ex);
            /* Framed here, sent by the result thread's loop as the socket
             * takes them. */
            for (struct bx_task *t = ex->uhead; t && !ex->lost; t = t->next) {
                t->seq = ++ex->pub_seq;
                if (bx_publish_task(ex, t) < 0)
                    ex->lost = true;
            }
            pthread_mutex_unlock(&ex->conn_lock);
            return 0;
        }
        if (give_up != CONC_NO_DEADLINE && bx_now() >= give_up)
            return -EPIPE;
        if (bx_pause(ex->stopfd, pause, give_up) == 1)
            return 1;
        pause = pause * 2 > BX_RETRY_MAX ? BX_RETRY_MAX : pause * 2;
    }
}

/* Forgets a lost connection: every unconfirmed task is to be sent again. */
static void bx_drop(conc_broker_executor *ex)
{
    pthread_mutex_lock(&ex->conn_lock);
    if (ex->conn) {
        bk_reset_on_close(ex->sockfd);
        amqp_destroy_connection(ex->conn);
    }
    bx_in_reset(&ex->in);
    ex->conn = NULL;
    ex->sockfd = -1;
    bx_out_clear(ex);
    for (struct bx_task *t = ex->uhead; t; t = t->next)
        t->seq = 0;
    pthread_mutex_unlock(&ex->conn_lock);
}

/* Whether the socket has room now (rabbitmq-c may send a heartbeat while
 * it reads, and would wait for room inside its send). */
static bool bx_writable(int fd)
{
    struct pollfd p = { .fd = fd, .events = POLLOUT };
    return poll(&p, 1, 0) == 1 && (p.revents & POLLOUT);
}

/* Reads results and confirmations while the connection lasts, and sends
 * what out holds (tasks framed by submits, acknowledgements).  rabbitmq-c
 * reads only while out is empty, so that nothing it may send (a heartbeat)
 * comes between the bytes of a frame that went out in part.  Returns 1
 * when the executor is being freed, -EPIPE when the connection is lost. */
static int bx_pump(conc_broker_executor *ex)
{
    uint64_t ack_tag = 0;       /* the last result read, not acknowledged */
    unsigned unacked = 0;
    for (;;) {
        pthread_mutex_lock(&ex->conn_lock);
        if (ex->lost) {
            pthread_mutex_unlock(&ex->conn_lock);
            return -EPIPE;
        }
        bool buffered = amqp_data_in_buffer(ex->conn) || amqp_frames_enqueued(ex->conn);
        if ((!buffered && ack_tag) || unacked >= BX_ACK_BATCH) {
            amqp_basic_ack_t ack = { .delivery_tag = ack_tag, .multiple = 1 };
            bx_out_begin(ex);
            if (bk_frame_method(&ex->out, BX_CHANNEL, AMQP_BASIC_ACK_METHOD, &ack) < 0)
                ex->lost = true;    /* the results come again */
            ack_tag = 0;
            unacked = 0;
        }
        int pr = bx_out_push(ex);
        int sockfd = ex->sockfd;
        bool room = pr == 0 && (buffered || bx_writable(sockfd));
        pthread_mutex_unlock(&ex->conn_lock);
        if (pr == -EPIPE)
            return -EPIPE;
        if (!room || !buffered) {
            int w = bx_wait(sockfd, room ? POLLIN : POLLOUT, ex->stopfd, ex->wakefd,
                            CONC_NO_DEADLINE);
            if (w == 1)
                return 1;
            if (w == 2 || !room)
                continue;   /* a submit framed tasks, or saw the connection
                               fail; or room to send */
            if (w < 0 && w != -ETIMEDOUT)
                return -EPIPE;
        }
        amqp_envelope_t env;
        struct bx_event ev = { 0 };
        pthread_mutex_lock(&ex->conn_lock);
        if (ex->lost || ex->out.len) {
            /* A submit's frames may be out in part: they go first. */
            pthread_mutex_unlock(&ex->conn_lock);
            continue;
        }
        int r = bx_poll_message(ex->conn, &ex->in, &env, &ev, ex->cid_key);
        if (r == 2)
            bx_settle(ex, &ev);
        pthread_mutex_unlock(&ex->conn_lock);
        if (r == 3) {
            /* rabbitmq-c's heartbeat is due and the socket has no room. */
            int w = bx_wait(sockfd, POLLOUT, ex->stopfd, ex->wakefd, CONC_NO_DEADLINE);
            if (w == 1)
                return 1;
            if (w < 0 && w != -ETIMEDOUT)
                return -EPIPE;
            continue;
        }
        for (size_t i = 0; i < ex->nfails; i++)
            bx_fail_one(ex, ex->fails[i].id, ex->fails[i].err);
        ex->nfails = 0;
        if (r == 1) {
            bx_on_result(ex, &env);
            ack_tag = env.delivery_tag;
            unacked++;
            amqp_destroy_envelope(&env);
        } else if (r < 0 && r != -ENOMEM) {
            return -EPIPE;
        }
    }
}

static void *bx_reader(void *arg)
{
    conc_broker_executor *ex = arg;
    /* rabbitmq-c takes an interrupted wait for a lost connection: this
     * thread takes no signals. */
    sigset_t old;
    bx_hold_signals(&old);
    for (;;) {
        if (bx_pump(ex) == 1)
            return NULL;
        bx_drop(ex);
        int r = bx_reconnect(ex);
        if (r == 1)
            return NULL;
        if (r < 0)
            break;
    }
    bx_fail_all(ex, -EPIPE);
    return NULL;
}

static int bx_reply_delete(conc_broker_executor *ex)
{
    amqp_queue_delete_t d = { .queue = amqp_cstring_bytes(ex->reply) };
    return bx_call(ex->conn, BX_CHANNEL, AMQP_QUEUE_DELETE_METHOD, &d,
                   AMQP_QUEUE_DELETE_OK_METHOD, bx_now() + 1000000000LL);
}

/* A reply queue name of the client's own: "<queue>.reply.<16 hex>". */
static int bx_reply_name(char *buf, size_t size, const char *queue)
{
    uint64_t v = 0;
    size_t got = 0;
    while (got < sizeof v) {
        ssize_t n = getrandom((char *)&v + got, sizeof v - got, 0);
        if (n < 0 && errno != EINTR)
            return -errno;
        if (n > 0)
            got += (size_t)n;
    }
    snprintf(buf, size, "%s.reply.%016" PRIx64, queue, v);
    return 0;
}

int conc_broker_executor_new(conc_broker_executor **out, const char *url,
                             const conc_broker_executor_opts *opts)
{
    conc_broker_executor_opts o;
    CONC__OPTS_COPY(&o, opts, CONC__OPTS_V1(conc_broker_executor_opts, connect_timeout));
    if (!out || !url)
        return -EINVAL;
    if (o.result_expires < 0 || o.result_expires != o.result_expires ||
        o.result_expires > 86400.0 * 365)
        return -EINVAL;
    const char *queue;
    int64_t deadline;
    int r = bx_check_common(url, o.queue, o.max_deliveries, o.connect_timeout,
                            o.reconnect_timeout, &queue, &deadline);
    if (r)
        return r;
    conc_broker_executor *ex = calloc(1, sizeof *ex);
    if (!ex)
        return -ENOMEM;
    r = bx_mac_init(&ex->mac, o.authkey, o.authkey_len);
    if (r) {
        free(ex);
        return r;
    }
    strcpy(ex->queue, queue);
    ex->max_deliveries = o.max_deliveries ? o.max_deliveries : 3;
    ex->result_expires = o.result_expires ? o.result_expires : BX_RESULT_EXPIRES;
    if (ex->result_expires < 0.001)
        ex->result_expires = 0.001;
    ex->reconnect_timeout = o.reconnect_timeout;
    ex->stopfd = ex->wakefd = -1;
    r = bx_cfg_init(&ex->cfg, url, o.cacert, o.cert, o.key, o.insecure, BX_HEARTBEAT,
                    o.connect_timeout);
    if (r) {
        sodium_memzero(&ex->mac, sizeof ex->mac);
        free(ex);
        return r;
    }
    r = bx_reply_name(ex->reply, sizeof ex->reply, queue);
    if (r)
        goto fail_cfg;
    if (sodium_init() < 0) {
        r = -EIO;
        goto fail_cfg;
    }
    crypto_shorthash_keygen(ex->cid_key);
    ex->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    ex->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (ex->stopfd < 0 || ex->wakefd < 0) {
        r = -errno;
        goto fail_cfg;
    }
    int64_t start = bx_now();       /* before any send of rabbitmq-c's */
    r = bx_client_setup(ex, &ex->conn, false, NULL);
    if (r)
        goto fail_cfg;
    ex->sockfd = amqp_get_sockfd(ex->conn);
    ex->in.hb_sent = start;
    pthread_mutex_init(&ex->conn_lock, NULL);
    pthread_mutex_init(&ex->lock, NULL);
    r = -pthread_create(&ex->reader, NULL, bx_reader, ex);
    if (r) {
        pthread_mutex_destroy(&ex->conn_lock);
        pthread_mutex_destroy(&ex->lock);
        bx_reply_delete(ex);
        bx_close(ex->conn);
        goto fail_cfg;
    }
    *out = ex;
    return 0;
fail_cfg:
    if (ex->stopfd >= 0)
        close(ex->stopfd);
    if (ex->wakefd >= 0)
        close(ex->wakefd);
    bx_cfg_free(&ex->cfg);
    sodium_memzero(&ex->mac, sizeof ex->mac);
    free(ex);
    return r;
}

/* Takes back a task whose submit ran out of time before its bytes were
 * all sent (conn_lock held): it leaves the unconfirmed list and the
 * table.  Frames of its own at the end of out, none of whose bytes went
 * out, are cut off; otherwise the connection is dropped (a frame may have
 * gone out in part, and the broker drops a message cut short), and the
 * result thread makes it again and sends the other unconfirmed tasks.
 * Returns true when the result thread must be woken. */
static bool bx_withdraw(conc_broker_executor *ex, struct bx_task *t, uint64_t gen,
                        uint64_t start, uint64_t end)
{
    struct bx_task *prev = NULL;
    for (struct bx_task *u = ex->uhead; u; prev = u, u = u->next) {
        if (u != t)
            continue;
        if (prev)
            prev->next = t->next;
        else
            ex->uhead = t->next;
        if (ex->utail == t)
            ex->utail = prev;
        break;
    }
    pthread_mutex_lock(&ex->lock);
    bx_table_take(ex, t->id);
    pthread_mutex_unlock(&ex->lock);
    if (ex->gen != gen || !ex->conn || ex->lost)
        return false;
    if (ex->obase + ex->osent <= start && ex->obase + ex->out.len == end &&
        t->seq == ex->pub_seq) {
        ex->out.len = (size_t)(start - ex->obase);
        ex->pub_seq--;
        return false;
    }
    ex->lost = true;
    return true;
}

int conc_broker_executor_submit_until(conc_broker_executor *ex, const char *fn,
                                      const void *data, size_t len, int64_t deadline,
                                      conc_future **out)
{
    if (!ex || !fn || !out || (!data && len))
        return -EINVAL;
    size_t flen = strlen(fn);
    if (flen == 0 || flen > CONC_BROKER_NAME_MAX)
        return -EINVAL;
    if (len > CONC_BROKER_TASK_MAX)
        return -EMSGSIZE;
    struct bx_task *t = malloc(sizeof *t + flen + 1 + len);
    if (!t)
        return -ENOMEM;
    t->next = NULL;
    t->seq = 0;
    t->len = len;
    t->fnlen = flen;
    memcpy(t->bytes, fn, flen + 1);
    if (len)
        memcpy(t->bytes + flen + 1, data, len);
    conc_future *f;
    int r = conc_future_new(&f, NULL);
    if (r) {
        free(t);
        return r;
    }
    conc_future_ref(f);     /* the table's */
    /* The table and the unconfirmed list take the task under conn_lock
     * together (bx_fail_confirmed counts on it). */
    bool wake = false;
    pthread_mutex_lock(&ex->conn_lock);
    pthread_mutex_lock(&ex->lock);
    r = ex->broken ? ex->broken : ex->dead ? -EPIPE : 0;
    if (!r) {
        t->id = ++ex->next_id;
        r = bx_table_put(ex, t->id, f);
    }
    pthread_mutex_unlock(&ex->lock);
    if (!r) {
        if (ex->utail)
            ex->utail->next = t;
        else
            ex->uhead = t;
        ex->utail = t;
        if (ex->conn && !ex->lost) {
            /* Framed into out and sent as the socket takes it: a full
             * socket is waited for without the lock, parking only a
             * calling coroutine, until the deadline. */
            uint64_t gen = ex->gen, start = ex->obase + ex->out.len;
            t->seq = ++ex->pub_seq;
            r = bx_publish_task(ex, t);
            uint64_t end = ex->obase + ex->out.len;
            if (r == -EPIPE) {
                /* Over TLS rabbitmq-c's send failed: kept, sent again on
                 * the next connection. */
                ex->lost = true;
                wake = true;
                r = 0;
            } else if (r == 0) {
                r = bx_out_wait(ex, gen, end, deadline);
                if (r == 1) {
                    wake = true;    /* kept: sent again on the next
                                       connection */
                    r = 0;
                }
            }
            if (r < 0)
                wake = bx_withdraw(ex, t, gen, start, end);
        }
    }
    pthread_mutex_unlock(&ex->conn_lock);
    if (wake)
        bx_wake(ex);
    if (r) {
        free(t);
        conc_future_free(f);
        conc_future_free(f);
        return r;
    }
    *out = f;
    return 0;
}

int conc_broker_executor_submit(conc_broker_executor *ex, const char *fn, const void *data,
                                size_t len, conc_future **out)
{
    return conc_broker_executor_submit_until(ex, fn, data, len, CONC_NO_DEADLINE, out);
}

size_t conc_broker_executor_pending(const conc_broker_executor *ex)
{
    if (!ex)
        return 0;
    conc_broker_executor *m = (conc_broker_executor *)ex;
    pthread_mutex_lock(&m->lock);
    size_t n = m->count;
    pthread_mutex_unlock(&m->lock);
    return n;
}

const char *conc_broker_executor_reply_queue(const conc_broker_executor *ex)
{
    return ex ? ex->reply : "";
}

uint64_t conc_broker_executor_reconnects(const conc_broker_executor *ex)
{
    return ex ? __atomic_load_n(&ex->reconnects, __ATOMIC_RELAXED) : 0;
}

uint64_t conc_broker_executor_rejected(const conc_broker_executor *ex)
{
    return ex ? __atomic_load_n(&ex->rejected, __ATOMIC_RELAXED) : 0;
}

void conc_broker_executor_free(conc_broker_executor *ex)
{
    if (!ex)
        return;
    uint64_t one = 1;
    while (write(ex->stopfd, &one, sizeof one) < 0 && errno == EINTR)
        ;
    pthread_join(ex->reader, NULL);
    if (ex->conn && ex->osent < ex->out.len) {
        /* Frames still to send go first (a second at most): rabbitmq-c's
         * must not come between the bytes of one. */
        struct iovec v = { .iov_base = ex->out.buf + ex->osent,
                           .iov_len = ex->out.len - ex->osent };
        if (ex->lost ||
            bk_sendv_until(ex->sockfd, ex->cfg.ssl ? bk_tls_session(ex->conn) : NULL, &v, 1,
                           bx_now() + 1000000000LL) < 0) {
            amqp_destroy_connection(ex->conn);
            ex->conn = NULL;
        }
    }
    if (ex->conn) {
        /* Results still to come are dropped with the reply queue. */
        bx_reply_delete(ex);
        bx_close(ex->conn);
        ex->conn = NULL;
    }
    free(ex->out.buf);
    bx_fail_all(ex, -EPIPE);
    close(ex->stopfd);
    close(ex->wakefd);
    pthread_mutex_destroy(&ex->conn_lock);
    pthread_mutex_destroy(&ex->lock);
    free(ex->fails);
    bx_cfg_free(&ex->cfg);
    sodium_memzero(ex->cid_key, sizeof ex->cid_key);
    sodium_memzero(&ex->mac, sizeof ex->mac);
    bx_in_reset(&ex->in);
    free(ex);
}

/* ------------------------------------------------------------------ worker */

struct bx_fn {
    char *name;
    size_t len;
    conc_broker_fn fn;
    void *arg;
};

/* A task whose result waits for the broker's confirmation before the task
 * is settled. */
struct bx_unsettled {
    uint64_t seq;           /* the result's confirm sequence number */
    uint64_t tag;           /* the task's delivery tag */
    bool dead;              /* settle by dead-lettering it (nack) */
};

/* A task delivered while run was returning, run by the next run. */
struct bx_ahead {
    struct bx_ahead *next;
    amqp_envelope_t env;
};

struct conc_broker_worker {
    amqp_connection_state_t conn;   /* NULL while down */
    struct bx_in in;                /* conn's reading */
    /* Results, acknowledgements and rejections are framed here and sent
     * without blocking: a full socket is waited for through conc's wait
     * layer until send_until (run's deadline), BX_STALL_NS at most. */
    struct bk_out out;
    int64_t send_until;
    struct bx_ahead *ahead, *ahead_tail;
    int sockfd;
    int stopfd;
    int running;            /* atomic: 1 while run runs */
    int broken;
    bool consuming;
    bool ever_consumed;
    int prefetch;
    int max_deliveries;
    double reconnect_timeout;
    uint64_t tasks;         /* atomic */
    uint64_t reconnects;    /* atomic */
    uint64_t rejected;      /* atomic: tasks dead-lettered unrun */
    struct bx_mac mac;
    uint64_t pub_seq;
    struct bx_unsettled *uns;   /* in sequence order */
    size_t nuns, uns_cap;
    struct bx_fn *fns;
    size_t nfns;
    struct bx_cfg cfg;
    char queue[BX_QUEUE_NAME_MAX + 1];
};

int conc_broker_worker_new(conc_broker_worker **out, const char *url,
                           const conc_broker_worker_opts *opts)
{
    conc_broker_worker_opts o;
    CONC__OPTS_COPY(&o, opts, CONC__OPTS_V1(conc_broker_worker_opts, connect_timeout));
    if (!out || !url)
        return -EINVAL;
    if (o.prefetch < 0 || o.prefetch > 65535)
        return -EINVAL;
    const char *queue;
    int64_t deadline;
    int r = bx_check_common(url, o.queue, o.max_deliveries, o.connect_timeout,
                            o.reconnect_timeout, &queue, &deadline);
    if (r)
        return r;
    conc_broker_worker *w = calloc(1, sizeof *w);
    if (!w)
        return -ENOMEM;
    r = bx_mac_init(&w->mac, o.authkey, o.authkey_len);
    if (r) {
        free(w);
        return r;
    }
    strcpy(w->queue, queue);
    w->prefetch = o.prefetch ? o.prefetch : 1;
    w->max_deliveries = o.max_deliveries ? o.max_deliveries : 3;
    w->reconnect_timeout = o.reconnect_timeout;
    r = bx_cfg_init(&w->cfg, url, o.cacert, o.cert, o.key, o.insecure, 0, o.connect_timeout);
    if (r) {
        free(w);
        return r;
    }
    w->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (w->stopfd < 0) {
        int e = -errno;
        bx_cfg_free(&w->cfg);
        sodium_memzero(&w->mac, sizeof w->mac);
        free(w);
        return e;
    }
    r = bx_connect(&w->conn, &w->cfg, deadline);
    if (!r)
        r = bx_declare(w->conn, queue, w->max_deliveries, deadline);
    if (r)
        bx_close(w->conn);
    if (r) {
        close(w->stopfd);
        bx_cfg_free(&w->cfg);
        sodium_memzero(&w->mac, sizeof w->mac);
        free(w);
        return r;
    }
    w->sockfd = amqp_get_sockfd(w->conn);
    *out = w;
    return 0;
}

int conc_broker_worker_register(conc_broker_worker *w, const char *name, conc_broker_fn fn,
                                void *arg)
{
    if (!w || !name || !fn)
        return -EINVAL;
    size_t len = strlen(name);
    if (len == 0 || len > CONC_BROKER_NAME_MAX)
        return -EINVAL;
    if (__atomic_load_n(&w->running, __ATOMIC_ACQUIRE))
        return -EBUSY;
    for (size_t i = 0; i < w->nfns; i++) {
        if (w->fns[i].len == len && memcmp(w->fns[i].name, name, len) == 0) {
            w->fns[i].fn = fn;
            w->fns[i].arg = arg;
            return 0;
        }
    }
    struct bx_fn *n = realloc(w->fns, (w->nfns + 1) * sizeof *n);
    if (!n)
        return -ENOMEM;
    w->fns = n;
    char *copy = malloc(len + 1);
    if (!copy)
        return -ENOMEM;
    memcpy(copy, name, len + 1);
    w->fns[w->nfns++] = (struct bx_fn){ .name = copy, .len = len, .fn = fn, .arg = arg };
    return 0;
}

/* Sends what out holds, waiting for room through conc's wait layer until
 * send_until (run's deadline, but BX_SEND_GRACE_NS from now at least, so
 * that a run with a short timeout still finishes the task it ran) and for
 * BX_STALL_NS at most.  Returns 0; -ETIMEDOUT when that passed,
 * -ECANCELED, or -EPIPE (failed, or stalled).  Over plain TCP the caller
 * then drops the connection, since a frame may have gone out in part.
 * Over TLS a timeout or cancel keeps what did not go out in out, to be
 * sent first by the next run (bx_worker_kept): RabbitMQ does not notice
 * that a TLS connection cut in the middle of a record was closed, and
 * would hold the tasks delivered on it for ever (a worker has no
 * heartbeats). */
#define BX_SEND_GRACE_NS 1000000000LL
static int bx_worker_flush(conc_broker_worker *w)
{
    if (!w->out.len)
        return 0;
    struct iovec v = { .iov_base = w->out.buf, .iov_len = w->out.len };
    w->out.len = 0;
    if (!w->conn)
        return -EPIPE;
    int64_t now = bx_now(), until = now + BX_STALL_NS;
    int64_t want = w->send_until < now + BX_SEND_GRACE_NS ? now + BX_SEND_GRACE_NS
                                                           : w->send_until;
    bool stall = want > until;
    int r = bk_sendv_until(w->sockfd, w->cfg.ssl ? bk_tls_session(w->conn) : NULL, &v, 1,
                           stall ? until : want);
    if (r == -ETIMEDOUT && stall)
        r = -EPIPE;
    if (w->cfg.ssl && (r == -ETIMEDOUT || r == -ECANCELED)) {
        /* A single buffer not sent whole: v is what is left. */
        memmove(w->out.buf, v.iov_base, v.iov_len);
        w->out.len = v.iov_len;
        return r;
    }
    if (w->out.cap > BX_OUT_KEEP) {
        free(w->out.buf);
        w->out.buf = NULL;
        w->out.cap = 0;
    }
    return r == 0 || r == -ETIMEDOUT || r == -ECANCELED ? r : -EPIPE;
}

/* Whether error r of a send left its frames in out, to go first at the
 * next run, with the connection kept (over TLS only: bx_worker_flush). */
static bool bx_worker_kept(const conc_broker_worker *w, int r)
{
    return (r == -ETIMEDOUT || r == -ECANCELED) && w->out.len > 0;
}

/* Frames a method without content (an acknowledgement, a rejection) and
 * sends it (bx_worker_flush). */
static int bx_worker_method(conc_broker_worker *w, amqp_method_number_t id, void *args)
{
    int r = bk_frame_method(&w->out, BX_CHANNEL, id, args);
    if (r < 0)
        return r == -ENOMEM ? r : -EPIPE;
    return bx_worker_flush(w);
}

static int bx_worker_ack(conc_broker_worker *w, uint64_t tag)
{
    amqp_basic_ack_t a = { .delivery_tag = tag };
    return bx_worker_method(w, AMQP_BASIC_ACK_METHOD, &a);
}

static int bx_worker_nack(conc_broker_worker *w, uint64_t tag, bool requeue)
{
    amqp_basic_nack_t a = { .delivery_tag = tag, .requeue = requeue };
    return bx_worker_method(w, AMQP_BASIC_NACK_METHOD, &a);
}

/* Sends a task's result (or error) to its client; the task is settled
 * (acknowledged, or dead-lettered when `dead`) once the broker confirmed
 * the result.  Returns 0, -ENOMEM, or bx_worker_flush's errors. */
static int bx_send_result(conc_broker_worker *w, const amqp_envelope_t *env, int err,
                          int detail, const void *data, size_t len, bool dead)
{
    if (w->nuns == w->uns_cap) {
        size_t cap = w->uns_cap ? w->uns_cap * 2 : 16;
        struct bx_unsettled *n = realloc(w->uns, cap * sizeof *n);
        if (!n)
            return -ENOMEM;
        w->uns = n;
        w->uns_cap = cap;
    }
    const amqp_basic_properties_t *task = &env->message.properties;
    amqp_table_entry_t e[3];
    e[0].key = amqp_cstring_bytes(BX_ERR_KEY);
    e[0].value.kind = AMQP_FIELD_KIND_I32;
    e[0].value.value.i32 = err;
    e[1].key = amqp_cstring_bytes(BX_DETAIL_KEY);
    e[1].value.kind = AMQP_FIELD_KIND_I32;
    e[1].value.value.i32 = detail;
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof p);
    p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
               AMQP_BASIC_CORRELATION_ID_FLAG | AMQP_BASIC_HEADERS_FLAG;
    p.content_type = amqp_cstring_bytes("application/octet-stream");
    p.delivery_mode = 2;
    p.correlation_id = task->correlation_id;
    p.headers.num_entries = err ? 2 : 1;
    p.headers.entries = e;
    amqp_bytes_t body = { .len = err ? 0 : len, .bytes = err ? NULL : (void *)data };
    char tag[BX_MAC_HEX + 1];
    amqp_table_entry_t *t = &e[p.headers.num_entries];
    if (w->mac.on) {
        bx_mac_result(&w->mac, task->correlation_id, task->reply_to, err, err ? detail : 0, body,
                      tag);
        t->key = amqp_cstring_bytes(BX_MAC_KEY);
        t->value.kind = AMQP_FIELD_KIND_UTF8;
        t->value.value.bytes = (amqp_bytes_t){ .len = BX_MAC_HEX, .bytes = tag };
        p.headers.num_entries++;
    }
    int r = bk_frame_publish(&w->out, (size_t)amqp_get_frame_max(w->conn), BX_CHANNEL,
                             amqp_empty_bytes, task->reply_to, false, &p, body, true);
    if (r == 0)
        r = bx_worker_flush(w);
    if (r < 0 && !bx_worker_kept(w, r))
        return r == -EPROTO ? -EPIPE : r;
    /* Sent, or kept to go out first at the next run. */
    w->uns[w->nuns++] = (struct bx_unsettled){ .seq = ++w->pub_seq, .tag = env->delivery_tag,
                                               .dead = dead };
    return r;
}

/* A confirmation of results: settles their tasks.  A result the broker
 * refused gives its task back to be run again. */
static int bx_worker_settle(conc_broker_worker *w, const struct bx_event *ev)
{
    if (ev->id != AMQP_BASIC_ACK_METHOD && ev->id != AMQP_BASIC_NACK_METHOD)
        return 0;
    bool nack = ev->id == AMQP_BASIC_NACK_METHOD;
    size_t keep = 0;
    int r = 0;
    for (size_t i = 0; i < w->nuns; i++) {
        struct bx_unsettled *u = &w->uns[i];
        bool hit = ev->multiple ? u->seq <= ev->tag : u->seq == ev->tag;
        if (!hit || r) {
            w->uns[keep++] = *u;
            continue;
        }
        int st;
        if (nack)
            st = bx_worker_nack(w, u->tag, true);
        else if (u->dead)
            st = bx_worker_nack(w, u->tag, false);
        else
            st = bx_worker_ack(w, u->tag);
        if (st < 0)
            r = st;
        if ((st == 0 || bx_worker_kept(w, st)) && !nack && !u->dead)
            __atomic_fetch_add(&w->tasks, 1, __ATOMIC_RELAXED);
    }
    w->nuns = keep;
    return r;
}

/* Runs one delivered task and sends its result.  Returns 0, -ENOMEM, or
 * -EPIPE when the connection failed. */
static int bx_on_task(conc_broker_worker *w, amqp_envelope_t *env)
{
    const amqp_basic_properties_t *p = &env->message.properties;
    if (!(p->_flags & AMQP_BASIC_REPLY_TO_FLAG) || !bx_reply_shape(p->reply_to, w->queue) ||
        !(p->_flags & AMQP_BASIC_CORRELATION_ID_FLAG) || !bx_cid_shape(p->correlation_id)) {
        /* Nobody to answer (or a queue no client made): to the
         * dead-letter queue, unrun. */
        __atomic_fetch_add(&w->rejected, 1, __ATOMIC_RELAXED);
        return bx_worker_nack(w, env->delivery_tag, false);
    }
    if (w->mac.on) {
        char want[BX_MAC_HEX + 1];
        bx_mac_task(&w->mac, p->correlation_id,
                    p->_flags & AMQP_BASIC_TYPE_FLAG ? p->type : amqp_empty_bytes, p->reply_to,
                    env->message.body, want);
        if (!bx_mac_ok(p, want)) {
            /* Forged, or sent with another key: not run; its client (if
             * it is one) learns it from an untagged -EACCES, and the task
             * is dead-lettered once that is confirmed. */
            __atomic_fetch_add(&w->rejected, 1, __ATOMIC_RELAXED);
            return bx_send_result(w, env, -EACCES, 0, NULL, 0, true);
        }
    }
    /* The count is the broker's only on a redelivery: on a first delivery
     * a quorum queue passes on whatever the publisher put in the header. */
    int64_t count = 0;
    if (env->redelivered && (p->_flags & AMQP_BASIC_HEADERS_FLAG))
        bx_table_int(&p->headers, "x-delivery-count", &count);
    if (count >= w->max_deliveries) {
        /* Its workers died max_deliveries times: do not run it again. */
        return bx_send_result(w, env, -ECHILD, count > INT_MAX ? INT_MAX : (int)count, NULL, 0,
                              true);
    }
    const struct bx_fn *fn = NULL;
    if (p->_flags & AMQP_BASIC_TYPE_FLAG) {
        for (size_t i = 0; i < w->nfns; i++) {
            if (w->fns[i].len == p->type.len && memcmp(w->fns[i].name, p->type.bytes,
                                                       p->type.len) == 0) {
                fn = &w->fns[i];
                break;
            }
        }
    }
    int err = 0;
    void *res = NULL;
    size_t rlen = 0;
    if (!fn) {
        err = -ENOENT;
    } else {
        const amqp_bytes_t *b = &env->message.body;
        int r = fn->fn(b->len ? b->bytes : NULL, b->len, &res, &rlen, fn->arg);
        if (r != 0) {
            err = r < 0 && r >= -4095 ? r : -EPROTO;
        } else if (res && rlen > CONC_BROKER_TASK_MAX) {
            err = -EMSGSIZE;
        }
    }
    int r = bx_send_result(w, env, err, 0, res, res ? rlen : 0, false);
    free(res);
    return r;
}

/* Reads the stop descriptor: true when a stop was asked for. */
static bool bx_stopped(conc_broker_worker *w)
{
    uint64_t v;
    return read(w->stopfd, &v, sizeof v) == (ssize_t)sizeof v;
}

/* basic.qos, confirm mode and basic.consume on the work queue. */
static int bx_consume(conc_broker_worker *w, int64_t deadline)
{
    amqp_basic_qos_t qos = { .prefetch_count = (uint16_t)w->prefetch };
    int r = bx_call(w->conn, BX_CHANNEL, AMQP_BASIC_QOS_METHOD, &qos, AMQP_BASIC_QOS_OK_METHOD,
                    deadline);
    if (r)
        return r;
    r = bx_confirm_select(w->conn, deadline);
    if (r)
        return r;
    return bx_basic_consume(w->conn, w->queue, deadline);
}

static void bx_ahead_clear(conc_broker_worker *w)
{
    while (w->ahead) {
        struct bx_ahead *a = w->ahead;
        w->ahead = a->next;
        amqp_destroy_envelope(&a->env);
        free(a);
    }
    w->ahead_tail = NULL;
}

/* Forgets a lost connection: the tasks delivered and not settled go back
 * to the queue in the broker, to be delivered again. */
static void bx_worker_drop(conc_broker_worker *w)
{
    if (w->conn) {
        bk_reset_on_close(w->sockfd);
        amqp_destroy_connection(w->conn);
    }
    bx_in_reset(&w->in);
    w->conn = NULL;
    w->sockfd = -1;
    w->consuming = false;
    w->nuns = 0;
    w->pub_seq = 0;
    w->out.len = 0;
    bx_ahead_clear(w);
}

/*
 * Starts the worker's consumer, connecting first when the connection is
 * down, with a growing pause between attempts (0.1 s doubling to 5 s; to
 * 1 s on the first start).
 * RabbitMQ 3.10 may close the connection with INTERNAL_ERROR when a
 * consumer comes while a quorum queue just declared (by this client or
 * another) is still starting, which is retried the same way: the first
 * start keeps trying for BX_CONSUME_RETRY_S seconds at least, a start
 * after a lost connection until the deadline (or reconnect_timeout).
 * Returns 0 when consuming, 1 when a stop came, -EPIPE when the time ran
 * out, or -EACCES, -EEXIST, -ENOMEM.
 */
#define BX_CONSUME_RETRY_S 20.0
static int bx_start_consumer(conc_broker_worker *w, int64_t deadline)
{
    int64_t until = deadline;
    if (!w->ever_consumed) {
        int64_t first;
        conc_deadline(BX_CONSUME_RETRY_S, &first);
        if (until < first)
            until = first;
    } else if (w->reconnect_timeout < 0) {
        return -EPIPE;
    } else if (w->reconnect_timeout > 0) {
        int64_t give_up;
        conc_deadline(w->reconnect_timeout, &give_up);
        if (give_up < until)
            until = give_up;
    }
    double pause = BX_RETRY_MIN;
    for (;;) {
        int r = 0;
        bool fresh = false;
        int64_t cd;
        conc_deadline(w->cfg.connect_timeout, &cd);
        if (!w->conn) {
            r = bx_connect(&w->conn, &w->cfg, cd);
            if (!r)
                r = bx_declare(w->conn, w->queue, w->max_deliveries, cd);
            if (r && w->conn) {
                bx_close(w->conn);
                w->conn = NULL;
            }
            fresh = !r;
        }
        if (!r)
            r = bx_consume(w, cd);
        if (!r) {
            w->sockfd = amqp_get_sockfd(w->conn);
            w->consuming = true;
            if (fresh)      /* new made the first connection */
                __atomic_fetch_add(&w->reconnects, 1, __ATOMIC_RELAXED);
            w->ever_consumed = true;
            return 0;
        }
        if (r == -ENOMEM || r == -EACCES || r == -EEXIST || r == -ECANCELED)
            return r;
        if (w->conn)
            bx_close(w->conn);
        w->conn = NULL;
        if (until != CONC_NO_DEADLINE && bx_now() >= until)
            return -EPIPE;
        r = bx_pause(w->stopfd, pause, until);
        if (r == 1)
            return 1;
        if (r == -ECANCELED)
            return r;
        /* The first start retries a quorum queue still starting: it comes
         * within a second or so. */
        double most = w->ever_consumed ? BX_RETRY_MAX : 1.0;
        pause = pause * 2 > most ? most : pause * 2;
    }
}

/* Waits (bounded) for the confirmations of the results sent, settling
 * their tasks.  Tasks delivered meanwhile (prefetch) are kept for the next
 * run. */
static void bx_drain(conc_broker_worker *w)
{
    if (w->out.len)
        return;     /* kept for the next run, which sends them first */
    int64_t until = bx_now() + BX_DRAIN_NS;
    w->send_until = until;
    while (w->nuns && w->conn) {
        if (!amqp_data_in_buffer(w->conn) && !amqp_frames_enqueued(w->conn)) {
            int r = conc_fd_wait_until(w->sockfd, POLLIN, until);
            if (r == -ETIMEDOUT || r == -ECANCELED)
                return;
            if (r < 0) {
                bx_worker_drop(w);
                return;
            }
        }
        amqp_envelope_t env;
        struct bx_event ev = { 0 };
        int r = bx_poll_message(w->conn, &w->in, &env, &ev, NULL);
        if (r == 1) {
            struct bx_ahead *a = malloc(sizeof *a);
            if (!a) {
                amqp_destroy_envelope(&env);
                bx_worker_drop(w);
                return;
            }
            a->env = env;
            a->next = NULL;
            if (w->ahead_tail)
                w->ahead_tail->next = a;
            else
                w->ahead = a;
            w->ahead_tail = a;
        } else if (r == 2) {
            r = bx_worker_settle(w, &ev);
        }
        if (r < 0) {
            if (!bx_worker_kept(w, r))
                bx_worker_drop(w);
            return;
        }
    }
}

static int bx_run(conc_broker_worker *w, int64_t deadline)
{
    if (w->broken)
        return w->broken;
    w->send_until = deadline;
    int ret;
    for (;;) {
        if (!w->consuming) {
            int r = bx_start_consumer(w, deadline);
            if (r == 1) {
                bx_stopped(w);
                return 0;
            }
            if (r == -ENOMEM || r == -ECANCELED)
                return r;
            if (r == -EACCES || r == -EEXIST)
                return r;       /* refused: a later run tries again */
            if (r) {
                if (w->reconnect_timeout < 0)
                    w->broken = -EPIPE;
                return -EPIPE;
            }
        }
        if (bx_stopped(w)) {
            ret = 0;
            break;
        }
        if (w->out.len) {
            /* Frames an earlier run left (over TLS) go before anything
             * else is read or sent. */
            int r = bx_worker_flush(w);
            if (r == -ETIMEDOUT || r == -ECANCELED) {
                ret = r;
                break;
            }
            if (r < 0)
                bx_worker_drop(w);
            continue;
        }
        if (w->ahead) {
            struct bx_ahead *a = w->ahead;
            w->ahead = a->next;
            if (!w->ahead)
                w->ahead_tail = NULL;
            int r = bx_on_task(w, &a->env);
            amqp_destroy_envelope(&a->env);
            free(a);
            if (r < 0 && r != -ENOMEM && !bx_worker_kept(w, r))
                bx_worker_drop(w);
            if (r == -ENOMEM || r == -ETIMEDOUT || r == -ECANCELED) {
                ret = r;
                break;
            }
            continue;
        }
        if (!amqp_data_in_buffer(w->conn) && !amqp_frames_enqueued(w->conn)) {
            int r = bx_wait(w->sockfd, POLLIN, w->stopfd, -1, deadline);
            if (r == 1) {
                bx_stopped(w);
                ret = 0;
                break;
            }
            if (r == -ETIMEDOUT || r == -ECANCELED || r == -ENOMEM) {
                ret = r;
                break;
            }
            if (r < 0) {
                bx_worker_drop(w);
                continue;
            }
        }
        amqp_envelope_t env;
        struct bx_event ev = { 0 };
        int r = bx_poll_message(w->conn, &w->in, &env, &ev, NULL);
        if (r == 1) {
            r = bx_on_task(w, &env);
            amqp_destroy_envelope(&env);
        } else if (r == 2) {
            r = bx_worker_settle(w, &ev);
        }
        if (r < 0 && r != -ENOMEM && !bx_worker_kept(w, r))
            bx_worker_drop(w);     /* made again at the top */
        if (r == -ENOMEM || r == -ETIMEDOUT || r == -ECANCELED) {
            ret = r;
            break;
        }
    }
    bx_drain(w);
    return ret;
}

int conc_broker_worker_run_until(conc_broker_worker *w, int64_t deadline)
{
    if (!w)
        return -EINVAL;
    int expect = 0;
    if (!__atomic_compare_exchange_n(&w->running, &expect, 1, false, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE))
        return -EBUSY;
    int r = bx_run(w, deadline);
    __atomic_store_n(&w->running, 0, __ATOMIC_RELEASE);
    return r;
}

int conc_broker_worker_run(conc_broker_worker *w, double timeout)
{
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return (int)conc__timeout_code(poll, conc_broker_worker_run_until(w, deadline));
}

int conc_broker_worker_stop(conc_broker_worker *w)
{
    if (!w)
        return -EINVAL;
    uint64_t one = 1;
    ssize_t n;
    do
        n = write(w->stopfd, &one, sizeof one);
    while (n < 0 && errno == EINTR);
    return 0;
}

uint64_t conc_broker_worker_tasks(const conc_broker_worker *w)
{
    return w ? __atomic_load_n(&w->tasks, __ATOMIC_RELAXED) : 0;
}

uint64_t conc_broker_worker_reconnects(const conc_broker_worker *w)
{
    return w ? __atomic_load_n(&w->reconnects, __ATOMIC_RELAXED) : 0;
}

uint64_t conc_broker_worker_rejected(const conc_broker_worker *w)
{
    return w ? __atomic_load_n(&w->rejected, __ATOMIC_RELAXED) : 0;
}

void conc_broker_worker_free(conc_broker_worker *w)
{
    if (!w)
        return;
    bx_ahead_clear(w);
    if (w->out.len && w->conn) {
        /* A frame kept in part (over TLS): no close can follow it. */
        bk_reset_on_close(w->sockfd);
        amqp_destroy_connection(w->conn);
        w->conn = NULL;
    }
    bx_close(w->conn);
    bx_in_reset(&w->in);
    close(w->stopfd);
    for (size_t i = 0; i < w->nfns; i++)
        free(w->fns[i].name);
    free(w->fns);
    free(w->uns);
    free(w->out.buf);
    bx_cfg_free(&w->cfg);
    sodium_memzero(&w->mac, sizeof w->mac);
    free(w);
}
