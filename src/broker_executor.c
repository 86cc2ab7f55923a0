/*
 * broker_executor.c - the distributed executor and its workers on RabbitMQ
 * (conc/broker_executor.h), through rabbitmq-c.
 *
 * Wire format (AMQP 0-9-1 messages on the default exchange):
 *   task    to the work queue, persistent; properties: type = the function
 *           name, correlation_id = the task id (the client's sequence
 *           number in decimal), reply_to = the client's reply queue; body =
 *           the argument bytes.
 *   result  to reply_to, transient; properties: correlation_id = the
 *           task's; headers: "conc-error" (int, 0 or a negative errno) and,
 *           with an error, "conc-detail" (int); body = the result bytes
 *           (empty with an error).
 * Everything read from a message is checked before use: a result whose id
 * does not parse or names no pending task is dropped, one whose error is
 * out of range fails its future with -EPROTO; a task without a reply queue
 * or an id is dead-lettered.
 *
 * The executor's connection is shared by the submitting threads and its
 * result thread under conn_lock.  The result thread never holds the lock
 * while it sleeps: it waits for the socket (or its stop descriptor) through
 * conc_wait, then takes the lock and reads what came without waiting.  The
 * pending tasks (id -> future) are an open-addressing table under `lock`,
 * which is never held while a future is finished (its callbacks may
 * submit).
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
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>

#include "conc/broker_executor.h"
#include "conc/wait.h"
#include "internal.h"

#define BX_CHANNEL 1
#define BX_QUEUE_NAME_MAX 200
/* The longest sleep between two looks at the connection's heartbeats. */
#define BX_SLICE_NS (2 * 1000000000LL)
/* The executor's AMQP heartbeat, in seconds: its result thread answers
 * them.  A worker has none, since a task may run longer than the broker
 * waits for a heartbeat; TCP keepalives stand in for them. */
#define BX_HEARTBEAT 30
#define BX_ERR_KEY "conc-error"
#define BX_DETAIL_KEY "conc-detail"

/* ------------------------------------------------------------ connection */

static int64_t bx_now(void)
{
    return conc_now();
}

/* A deadline as what rabbitmq-c takes: the time left, at least 1 ms. */
static struct timeval bx_tv(int64_t deadline)
{
    int64_t left = deadline == CONC_NO_DEADLINE ? 3600 * 1000000000LL : deadline - bx_now();
    if (left < 1000000)
        left = 1000000;
    struct timeval tv = { .tv_sec = left / 1000000000LL,
                          .tv_usec = (left % 1000000000LL) / 1000 };
    return tv;
}

/* A library status as a conc code. */
static int bx_status(int status)
{
    switch (status) {
    case AMQP_STATUS_OK: return 0;
    case AMQP_STATUS_NO_MEMORY: return -ENOMEM;
    case AMQP_STATUS_TIMEOUT: return -ETIMEDOUT;
    case AMQP_STATUS_HOSTNAME_RESOLUTION_FAILED: return -EHOSTUNREACH;
    case AMQP_STATUS_BAD_URL:
    case AMQP_STATUS_INVALID_PARAMETER: return -EINVAL;
    default: return -EPIPE;
    }
}

/* What an RPC's reply means; `login` tells a close during the handshake
 * (the broker's answer to a wrong password) from a broken connection. */
static int bx_reply(amqp_rpc_reply_t r, bool login)
{
    switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL:
        return 0;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        if (login && r.library_error == AMQP_STATUS_CONNECTION_CLOSED)
            return -EACCES;
        return bx_status(r.library_error);
    case AMQP_RESPONSE_SERVER_EXCEPTION: {
        int code = 0;
        if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD && r.reply.decoded)
            code = ((amqp_connection_close_t *)r.reply.decoded)->reply_code;
        else if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD && r.reply.decoded)
            code = ((amqp_channel_close_t *)r.reply.decoded)->reply_code;
        switch (code) {
        case AMQP_ACCESS_REFUSED:
        case AMQP_NOT_ALLOWED: return -EACCES;
        case AMQP_PRECONDITION_FAILED: return -EEXIST;
        default: return -EPROTO;
        }
    }
    default:
        return -EPROTO;
    }
}

/* Connects, logs in (with AMQP heartbeats every `heartbeat` seconds, or
 * none for 0) and opens the channel. */
static int bx_connect(amqp_connection_state_t *out, const char *url, int heartbeat,
                      int64_t deadline)
{
    size_t ulen = strlen(url);
    char *copy = malloc(ulen + 1);
    if (!copy)
        return -ENOMEM;
    memcpy(copy, url, ulen + 1);
    struct amqp_connection_info info;
    amqp_default_connection_info(&info);
    if (amqp_parse_url(copy, &info) != AMQP_STATUS_OK || info.ssl || !info.host ||
        info.port <= 0 || info.port > 65535) {
        free(copy);
        return -EINVAL;
    }
    /* "amqp://host/" names the empty vhost, which RabbitMQ cannot have:
     * take it for the default one, as pika does. */
    if (!info.vhost || !*info.vhost)
        info.vhost = "/";
    int r = 0;
    amqp_connection_state_t c = amqp_new_connection();
    amqp_socket_t *s = c ? amqp_tcp_socket_new(c) : NULL;
    if (!s) {
        r = -ENOMEM;
        goto out;
    }
    struct timeval tv = bx_tv(deadline);
    errno = 0;
    int st = amqp_socket_open_noblock(s, info.host, info.port, &tv);
    if (st != AMQP_STATUS_OK) {
        if (st == AMQP_STATUS_SOCKET_ERROR || st == AMQP_STATUS_TCP_ERROR)
            r = errno == ETIMEDOUT ? -ETIMEDOUT
                : errno == EHOSTUNREACH || errno == ENETUNREACH ? -errno : -ECONNREFUSED;
        else
            r = bx_status(st);
        goto out;
    }
    tv = bx_tv(deadline);
    amqp_set_handshake_timeout(c, &tv);
    amqp_set_rpc_timeout(c, &tv);
    if (!heartbeat) {
        /* No AMQP heartbeats: TCP keepalives find a peer that is gone. */
        int fd = amqp_get_sockfd(c), on = 1, idle = 30, intvl = 10, cnt = 3;
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
    }
    r = bx_reply(amqp_login(c, info.vhost, 0, 131072, heartbeat, AMQP_SASL_METHOD_PLAIN,
                            info.user, info.password), true);
    if (r)
        goto out;
    amqp_channel_open(c, BX_CHANNEL);
    r = bx_reply(amqp_get_rpc_reply(c), false);
out:
    free(copy);
    if (r) {
        if (c)
            amqp_destroy_connection(c);
        return r;
    }
    *out = c;
    return 0;
}

/* rabbitmq-c takes a signal that interrupts its wait for a reply for a
 * broken connection: the calls that wait for one (connecting, declaring,
 * the consumer's start, closing) run with the calling thread's signals
 * held back, and the signals are delivered after. */
static void bx_hold_signals(sigset_t *old)
{
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, old);
}

static void bx_release_signals(const sigset_t *old)
{
    pthread_sigmask(SIG_SETMASK, old, NULL);
}

/* Closes politely (bounded), then frees. */
static void bx_close(amqp_connection_state_t c)
{
    if (!c)
        return;
    struct timeval tv = { .tv_sec = 1, .tv_usec = 0 };
    amqp_set_rpc_timeout(c, &tv);
    amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(c);
}

/* Declares the work queue (a quorum queue that dead-letters to
 * "<queue>.dead" after max deliveries) and the dead-letter queue. */
static int bx_declare(amqp_connection_state_t c, const char *queue, int max_deliveries)
{
    char dead[BX_QUEUE_NAME_MAX + 8];
    snprintf(dead, sizeof dead, "%s.dead", queue);
    amqp_queue_declare(c, BX_CHANNEL, amqp_cstring_bytes(dead), 0, 1, 0, 0, amqp_empty_table);
    int r = bx_reply(amqp_get_rpc_reply(c), false);
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
    amqp_queue_declare(c, BX_CHANNEL, amqp_cstring_bytes(queue), 0, 1, 0, 0, args);
    return bx_reply(amqp_get_rpc_reply(c), false);
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

/* One look at the connection without waiting.  Returns 1 with a delivery
 * in *env, 0 when nothing (or only a frame of no interest) was there, or a
 * negative code when the connection or channel is gone. */
static int bx_poll_message(amqp_connection_state_t c, amqp_envelope_t *env)
{
    struct timeval zero = { 0, 0 };
    amqp_maybe_release_buffers(c);
    amqp_rpc_reply_t r = amqp_consume_message(c, env, &zero, 0);
    if (r.reply_type == AMQP_RESPONSE_NORMAL)
        return 1;
    if (r.reply_type != AMQP_RESPONSE_LIBRARY_EXCEPTION)
        return -EPIPE;
    if (r.library_error == AMQP_STATUS_TIMEOUT)
        return 0;
    if (r.library_error != AMQP_STATUS_UNEXPECTED_STATE)
        return bx_status(r.library_error) == -ENOMEM ? -ENOMEM : -EPIPE;
    /* Another frame: a close of the channel or connection ends us, any
     * other (a basic.ack, a consumer cancel...) is read and dropped. */
    amqp_frame_t f;
    if (amqp_simple_wait_frame_noblock(c, &f, &zero) != AMQP_STATUS_OK)
        return -EPIPE;
    if (f.frame_type == AMQP_FRAME_METHOD &&
        (f.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD ||
         f.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD ||
         f.payload.method.id == AMQP_BASIC_CANCEL_METHOD))
        return -EPIPE;
    return 0;
}

/* Waits until the socket has data (or stopfd is readable: returns 1), or
 * the deadline passes (-ETIMEDOUT), at most one slice; 0 when the socket
 * is ready or the slice ended. */
static int bx_wait(int sockfd, int stopfd, int64_t deadline)
{
    int64_t slice = bx_now() + BX_SLICE_NS;
    bool last = deadline <= slice;
    conc_waitable w[2] = {
        { .kind = CONC_WAIT_FD, .u.fd = sockfd, .events = POLLIN },
        { .kind = CONC_WAIT_FD, .u.fd = stopfd, .events = POLLIN },
    };
    int r = conc_wait_until(w, 2, last ? deadline : slice);
    if (r > 0)
        return w[1].ready ? 1 : 0;
    if (r == -ETIMEDOUT)
        return last ? -ETIMEDOUT : 0;
    return r;
}

/* ---------------------------------------------------------------- executor */

struct bx_slot {
    uint64_t id;            /* 0: empty */
    conc_future *f;
};

struct conc_broker_executor {
    pthread_mutex_t conn_lock;
    amqp_connection_state_t conn;
    int sockfd;
    int stopfd;
    pthread_t reader;

    pthread_mutex_t lock;   /* slots, count, next_id, broken */
    struct bx_slot *slots;
    size_t cap;             /* a power of two */
    size_t count;
    uint64_t next_id;
    int broken;             /* 0, or the code later submits get */

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

/* Marks the executor broken with err and fails every pending future. */
static void bx_fail_all(conc_broker_executor *ex, int err)
{
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

/* A result message: finish its future, or drop it. */
static void bx_on_result(conc_broker_executor *ex, const amqp_envelope_t *env)
{
    const amqp_basic_properties_t *p = &env->message.properties;
    uint64_t id;
    if (!(p->_flags & AMQP_BASIC_CORRELATION_ID_FLAG) || !bx_parse_id(p->correlation_id, &id))
        return;
    pthread_mutex_lock(&ex->lock);
    conc_future *f = bx_table_take(ex, id);
    pthread_mutex_unlock(&ex->lock);
    if (!f)
        return;     /* a second result for the task, or not ours */
    int64_t err = -EPROTO, detail = 0;
    if (p->_flags & AMQP_BASIC_HEADERS_FLAG) {
        if (!bx_table_int(&p->headers, BX_ERR_KEY, &err) || err > 0 || err < -4095)
            err = -EPROTO;
        if (!bx_table_int(&p->headers, BX_DETAIL_KEY, &detail) || detail < INT_MIN ||
            detail > INT_MAX)
            detail = 0;
    }
    const amqp_bytes_t *b = &env->message.body;
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

static void *bx_reader(void *arg)
{
    conc_broker_executor *ex = arg;
    int err = 0;
    for (;;) {
        pthread_mutex_lock(&ex->conn_lock);
        bool buffered = amqp_data_in_buffer(ex->conn) || amqp_frames_enqueued(ex->conn);
        pthread_mutex_unlock(&ex->conn_lock);
        if (!buffered) {
            int w = bx_wait(ex->sockfd, ex->stopfd, CONC_NO_DEADLINE);
            if (w == 1)
                return NULL;        /* freed */
            if (w < 0 && w != -ETIMEDOUT) {
                err = -EPIPE;
                break;
            }
        }
        amqp_envelope_t env;
        pthread_mutex_lock(&ex->conn_lock);
        int r = bx_poll_message(ex->conn, &env);
        pthread_mutex_unlock(&ex->conn_lock);
        if (r == 1) {
            bx_on_result(ex, &env);
            amqp_destroy_envelope(&env);
        } else if (r < 0 && r != -ENOMEM) {
            err = r;
            break;
        }
    }
    bx_fail_all(ex, err);
    return NULL;
}

int conc_broker_executor_new(conc_broker_executor **out, const char *url,
                             const conc_broker_executor_opts *opts)
{
    conc_broker_executor_opts o;
    CONC__OPTS_COPY(&o, opts, sizeof o);
    if (!out || !url)
        return -EINVAL;
    const char *queue = o.queue ? o.queue : CONC_BROKER_DEFAULT_QUEUE;
    if (!*queue || strlen(queue) > BX_QUEUE_NAME_MAX || o.max_deliveries < 0 ||
        o.connect_timeout < 0 || o.connect_timeout != o.connect_timeout)
        return -EINVAL;
    int64_t deadline;
    if (conc_deadline(o.connect_timeout ? o.connect_timeout : 10.0, &deadline))
        return -EINVAL;
    conc_broker_executor *ex = calloc(1, sizeof *ex);
    if (!ex)
        return -ENOMEM;
    strcpy(ex->queue, queue);
    ex->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (ex->stopfd < 0) {
        int e = -errno;
        free(ex);
        return e;
    }
    sigset_t old;
    bx_hold_signals(&old);
    int r = bx_connect(&ex->conn, url, BX_HEARTBEAT, deadline);
    if (r)
        goto fail;
    r = bx_declare(ex->conn, queue, o.max_deliveries ? o.max_deliveries : 3);
    if (r)
        goto fail;
    amqp_queue_declare_ok_t *ok = amqp_queue_declare(ex->conn, BX_CHANNEL, amqp_empty_bytes, 0,
                                                     0, 1, 1, amqp_empty_table);
    r = bx_reply(amqp_get_rpc_reply(ex->conn), false);
    if (r)
        goto fail;
    if (!ok || ok->queue.len == 0 || ok->queue.len >= sizeof ex->reply) {
        r = -EPROTO;
        goto fail;
    }
    memcpy(ex->reply, ok->queue.bytes, ok->queue.len);
    ex->reply[ok->queue.len] = '\0';
    amqp_basic_consume(ex->conn, BX_CHANNEL, amqp_cstring_bytes(ex->reply), amqp_empty_bytes, 0,
                       1, 1, amqp_empty_table);
    r = bx_reply(amqp_get_rpc_reply(ex->conn), false);
    if (r)
        goto fail;
    ex->sockfd = amqp_get_sockfd(ex->conn);
    pthread_mutex_init(&ex->conn_lock, NULL);
    pthread_mutex_init(&ex->lock, NULL);
    r = -pthread_create(&ex->reader, NULL, bx_reader, ex);
    if (r) {
        pthread_mutex_destroy(&ex->conn_lock);
        pthread_mutex_destroy(&ex->lock);
        goto fail;
    }
    bx_release_signals(&old);
    *out = ex;
    return 0;
fail:
    bx_close(ex->conn);
    bx_release_signals(&old);
    close(ex->stopfd);
    free(ex);
    return r;
}

int conc_broker_executor_submit(conc_broker_executor *ex, const char *fn, const void *data,
                                size_t len, conc_future **out)
{
    if (!ex || !fn || !out || (!data && len))
        return -EINVAL;
    size_t flen = strlen(fn);
    if (flen == 0 || flen > CONC_BROKER_NAME_MAX)
        return -EINVAL;
    if (len > CONC_BROKER_TASK_MAX)
        return -EMSGSIZE;
    conc_future *f;
    int r = conc_future_new(&f, NULL);
    if (r)
        return r;
    conc_future_ref(f);     /* the table's */
    pthread_mutex_lock(&ex->lock);
    uint64_t id = 0;
    r = ex->broken;
    if (!r) {
        id = ++ex->next_id;
        r = bx_table_put(ex, id, f);
    }
    pthread_mutex_unlock(&ex->lock);
    if (r) {
        conc_future_free(f);
        conc_future_free(f);
        return r;
    }
    char cid[24];
    snprintf(cid, sizeof cid, "%" PRIu64, id);
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof p);
    p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
               AMQP_BASIC_CORRELATION_ID_FLAG | AMQP_BASIC_REPLY_TO_FLAG | AMQP_BASIC_TYPE_FLAG;
    p.content_type = amqp_cstring_bytes("application/octet-stream");
    p.delivery_mode = 2;
    p.correlation_id = amqp_cstring_bytes(cid);
    p.reply_to = amqp_cstring_bytes(ex->reply);
    p.type = amqp_cstring_bytes(fn);
    amqp_bytes_t body = { .len = len, .bytes = (void *)data };
    pthread_mutex_lock(&ex->conn_lock);
    int st = amqp_basic_publish(ex->conn, BX_CHANNEL, amqp_empty_bytes,
                                amqp_cstring_bytes(ex->queue), 0, 0, &p, body);
    pthread_mutex_unlock(&ex->conn_lock);
    if (st != AMQP_STATUS_OK) {
        r = bx_status(st) == -ENOMEM ? -ENOMEM : -EPIPE;
        pthread_mutex_lock(&ex->lock);
        conc_future *mine = bx_table_take(ex, id);
        pthread_mutex_unlock(&ex->lock);
        if (mine)
            conc_future_free(mine);
        conc_future_free(f);
        if (r == -EPIPE)
            bx_fail_all(ex, -EPIPE);
        return r;
    }
    *out = f;
    return 0;
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

void conc_broker_executor_free(conc_broker_executor *ex)
{
    if (!ex)
        return;
    uint64_t one = 1;
    while (write(ex->stopfd, &one, sizeof one) < 0 && errno == EINTR)
        ;
    pthread_join(ex->reader, NULL);
    sigset_t old;
    bx_hold_signals(&old);
    bx_close(ex->conn);
    bx_release_signals(&old);
    bx_fail_all(ex, -EPIPE);
    close(ex->stopfd);
    pthread_mutex_destroy(&ex->conn_lock);
    pthread_mutex_destroy(&ex->lock);
    free(ex);
}

/* ------------------------------------------------------------------ worker */

struct bx_fn {
    char *name;
    size_t len;
    conc_broker_fn fn;
    void *arg;
};

struct conc_broker_worker {
    amqp_connection_state_t conn;
    int sockfd;
    int stopfd;
    int running;            /* atomic: 1 while run runs */
    int broken;
    bool consuming;
    int prefetch;
    int max_deliveries;
    uint64_t tasks;         /* atomic */
    struct bx_fn *fns;
    size_t nfns;
    char *url;              /* for connecting again (bx_start_consumer) */
    char queue[BX_QUEUE_NAME_MAX + 1];
};

int conc_broker_worker_new(conc_broker_worker **out, const char *url,
                           const conc_broker_worker_opts *opts)
{
    conc_broker_worker_opts o;
    CONC__OPTS_COPY(&o, opts, sizeof o);
    if (!out || !url)
        return -EINVAL;
    const char *queue = o.queue ? o.queue : CONC_BROKER_DEFAULT_QUEUE;
    if (!*queue || strlen(queue) > BX_QUEUE_NAME_MAX || o.max_deliveries < 0 ||
        o.prefetch < 0 || o.prefetch > 65535 || o.connect_timeout < 0 ||
        o.connect_timeout != o.connect_timeout)
        return -EINVAL;
    int64_t deadline;
    if (conc_deadline(o.connect_timeout ? o.connect_timeout : 10.0, &deadline))
        return -EINVAL;
    conc_broker_worker *w = calloc(1, sizeof *w);
    if (!w)
        return -ENOMEM;
    strcpy(w->queue, queue);
    w->url = strdup(url);
    if (!w->url) {
        free(w);
        return -ENOMEM;
    }
    w->prefetch = o.prefetch ? o.prefetch : 1;
    w->max_deliveries = o.max_deliveries ? o.max_deliveries : 3;
    w->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (w->stopfd < 0) {
        int e = -errno;
        free(w->url);
        free(w);
        return e;
    }
    sigset_t old;
    bx_hold_signals(&old);
    int r = bx_connect(&w->conn, url, 0, deadline);
    if (!r)
        r = bx_declare(w->conn, queue, w->max_deliveries);
    if (r)
        bx_close(w->conn);
    bx_release_signals(&old);
    if (r) {
        close(w->stopfd);
        free(w->url);
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

/* Sends a task's result (or error) to its client. */
static int bx_send_result(conc_broker_worker *w, const amqp_basic_properties_t *task, int err,
                          int detail, const void *data, size_t len)
{
    amqp_table_entry_t e[2];
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
    p.delivery_mode = 1;
    p.correlation_id = task->correlation_id;
    p.headers.num_entries = err ? 2 : 1;
    p.headers.entries = e;
    amqp_bytes_t body = { .len = err ? 0 : len, .bytes = err ? NULL : (void *)data };
    int st = amqp_basic_publish(w->conn, BX_CHANNEL, amqp_empty_bytes, task->reply_to, 0, 0, &p,
                                body);
    return st == AMQP_STATUS_OK ? 0 : -EPIPE;
}

/* Runs one delivered task and settles it.  Returns 0, or -EPIPE when the
 * connection failed. */
static int bx_on_task(conc_broker_worker *w, amqp_envelope_t *env)
{
    const amqp_basic_properties_t *p = &env->message.properties;
    uint64_t id;
    if (!(p->_flags & AMQP_BASIC_REPLY_TO_FLAG) || p->reply_to.len == 0 ||
        !(p->_flags & AMQP_BASIC_CORRELATION_ID_FLAG) || !bx_parse_id(p->correlation_id, &id)) {
        /* Nobody to answer: to the dead-letter queue. */
        return amqp_basic_nack(w->conn, BX_CHANNEL, env->delivery_tag, 0, 0) ? -EPIPE : 0;
    }
    int64_t count = 0;
    if (p->_flags & AMQP_BASIC_HEADERS_FLAG)
        bx_table_int(&p->headers, "x-delivery-count", &count);
    if (count >= w->max_deliveries) {
        /* Its workers died max_deliveries times: do not run it again. */
        int r = bx_send_result(w, p, -ECHILD, count > INT_MAX ? INT_MAX : (int)count, NULL, 0);
        if (r)
            return r;
        return amqp_basic_nack(w->conn, BX_CHANNEL, env->delivery_tag, 0, 0) ? -EPIPE : 0;
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
    int r = bx_send_result(w, p, err, 0, res, res ? rlen : 0);
    free(res);
    if (r)
        return r;
    if (amqp_basic_ack(w->conn, BX_CHANNEL, env->delivery_tag, 0))
        return -EPIPE;
    __atomic_fetch_add(&w->tasks, 1, __ATOMIC_RELAXED);
    return 0;
}

/* Reads the stop descriptor: true when a stop was asked for. */
static bool bx_stopped(conc_broker_worker *w)
{
    uint64_t v;
    return read(w->stopfd, &v, sizeof v) == (ssize_t)sizeof v;
}

/* basic.qos and basic.consume on the work queue. */
static int bx_consume(conc_broker_worker *w)
{
    amqp_basic_qos(w->conn, BX_CHANNEL, 0, (uint16_t)w->prefetch, 0);
    int r = bx_reply(amqp_get_rpc_reply(w->conn), false);
    if (r)
        return r;
    amqp_basic_consume(w->conn, BX_CHANNEL, amqp_cstring_bytes(w->queue), amqp_empty_bytes, 0,
                       0, 0, amqp_empty_table);
    return bx_reply(amqp_get_rpc_reply(w->conn), false);
}

/*
 * Starts the worker's consumer.  RabbitMQ 3.10 may close the connection
 * with INTERNAL_ERROR when a consumer comes while a quorum queue just
 * declared (by this client or another) is still starting: then connect
 * again and retry, with a growing pause (0.1 s doubling to 1 s), for
 * BX_CONSUME_RETRY_S seconds at most.
 */
#define BX_CONSUME_RETRY_S 20.0
static int bx_start_consumer(conc_broker_worker *w)
{
    sigset_t old;
    bx_hold_signals(&old);
    int64_t until;
    conc_deadline(BX_CONSUME_RETRY_S, &until);
    double pause = 0.1;
    int r = bx_consume(w);
    while (r && r != -ENOMEM && r != -EACCES && r != -EEXIST && bx_now() < until) {
        bx_close(w->conn);
        w->conn = NULL;
        conc_sleep(pause);
        pause = pause * 2 > 1.0 ? 1.0 : pause * 2;
        int64_t deadline;
        conc_deadline(10.0, &deadline);
        r = bx_connect(&w->conn, w->url, 0, deadline);
        if (!r)
            r = bx_declare(w->conn, w->queue, w->max_deliveries);
        if (!r) {
            w->sockfd = amqp_get_sockfd(w->conn);
            r = bx_consume(w);
        }
    }
    bx_release_signals(&old);
    return r;
}

static int bx_run(conc_broker_worker *w, int64_t deadline)
{
    if (w->broken)
        return w->broken;
    if (!w->consuming) {
        int r = bx_start_consumer(w);
        if (r == -ENOMEM)
            return r;
        if (r) {
            w->broken = -EPIPE;
            return -EPIPE;
        }
        w->consuming = true;
    }
    for (;;) {
        if (bx_stopped(w))
            return 0;
        if (!amqp_data_in_buffer(w->conn) && !amqp_frames_enqueued(w->conn)) {
            int r = bx_wait(w->sockfd, w->stopfd, deadline);
            if (r == 1) {
                bx_stopped(w);
                return 0;
            }
            if (r == -ETIMEDOUT || r == -ECANCELED || r == -ENOMEM)
                return r;
            if (r < 0) {
                w->broken = -EPIPE;
                return -EPIPE;
            }
        }
        amqp_envelope_t env;
        int r = bx_poll_message(w->conn, &env);
        if (r == 1) {
            r = bx_on_task(w, &env);
            amqp_destroy_envelope(&env);
        }
        if (r == -ENOMEM)
            return r;
        if (r < 0) {
            w->broken = -EPIPE;
            return -EPIPE;
        }
    }
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

void conc_broker_worker_free(conc_broker_worker *w)
{
    if (!w)
        return;
    sigset_t old;
    bx_hold_signals(&old);
    bx_close(w->conn);
    bx_release_signals(&old);
    close(w->stopfd);
    for (size_t i = 0; i < w->nfns; i++)
        free(w->fns[i].name);
    free(w->fns);
    free(w->url);
    free(w);
}
