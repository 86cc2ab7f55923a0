/*
 * broker_queue.c - queues and publish/subscribe on a broker connection
 * (conc/broker.h): declarations (repeated after a reconnection), confirmed
 * and pipelined puts, gets from a consumer with a bounded prefetch (or a
 * basic.get for a get that may not wait), acknowledgements, and the hook
 * conc_wait uses.
 *
 * Each consuming queue has a channel of its own, so its prefetch is its
 * own and a channel error (a deleted queue) touches nothing else; puts and
 * publishes share the connection's confirm-mode channel, declarations the
 * control channel (broker.c).
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conc/time.h"
#include "broker_internal.h"

#define NS 1000000000LL
#define DEFAULT_PREFETCH 16
#define SIMPLE_PREFETCH 64

void *(*bk_delivery_alloc)(size_t n) = malloc;

static int wait_check(void *obj, int *fd);
static const struct conc__wait_source queue_source = { wait_check };

/* The deadline for the round trips a call needs before it can look at its
 * data (connecting, declaring, starting to consume): a call that may not
 * wait (timeout 0) still gets one connection attempt and its round trips,
 * bounded by the connect timeout. */
static int64_t setup_limit(conc_broker *b, int64_t deadline)
{
    int64_t now = conc_now();
    b->poll_call = deadline <= now;
    if (b->poll_call)
        return now + (int64_t)(b->opts.connect_timeout * NS);
    return deadline;
}

/* Whether a call should try again after r: the connection turned out to
 * be lost (found only when it was used) and time remains. */
static bool again(conc_broker *b, int r, int64_t lim, int *tries)
{
    return r < 0 && !b->c && r != -ENOMEM && r != -ECANCELED && r != -EINVAL &&
           (*tries)++ < 3 && conc_now() < lim;
}

/* One method on the control channel and its reply (ok_id), tried again
 * while again() says so.  Returns 0 or -errno. */
static int ctl_rpc(conc_broker *b, amqp_method_number_t id, void *args,
                   amqp_method_number_t ok_id, int64_t lim)
{
    int r, tries = 0;
    do {
        r = bk_ctl_ready(b, lim);
        if (r == 0)
            r = bk_rpc(b, BK_CH_CTL, id, args, ok_id, lim);
    } while (again(b, r, lim, &tries));
    return r;
}

static bool name_ok(const char *s, bool empty_ok)
{
    if (!s)
        return false;
    size_t n = strnlen(s, 256);
    return n < 256 && (empty_ok || n > 0);
}

static void msg_free(struct bk_msg *m)
{
    if (!m)
        return;
    free(m->m.data);
    free(m);
}

/* Drops what was delivered and not taken (the broker delivers it again),
 * and forgets the channel. */
static void drop_local(conc_broker_queue *q)
{
    struct bk_msg *m = q->head;
    while (m) {
        struct bk_msg *n = m->next;
        msg_free(m);
        m = n;
    }
    q->head = q->tail = NULL;
    q->nlocal = 0;
    msg_free(q->partial);
    q->partial = NULL;
}

/* Frames the batched acknowledgement of the deliveries task_done finished
 * (when their channel still lives: else the broker has them back), sent
 * with the connection's buffer (bk_send_small). */
void bk_queue_flush_acks(conc_broker_queue *q)
{
    conc_broker *b = q->b;
    if (!q->ack_n)
        return;
    q->ack_n = 0;
    if (!b->c || !q->chan_open || q->ack_when != (q->cgen | (b->epoch << 32)))
        return;
    amqp_basic_ack_t a = { .delivery_tag = q->ack_tag, .multiple = 1 };
    bk_send_small(b, q->channel, AMQP_BASIC_ACK_METHOD, &a, false);
}

/* Frames a basic.reject (bk_send_small; sent with the buffer). */
static void reject_later(conc_broker *b, uint16_t ch, uint64_t tag, bool requeue)
{
    amqp_basic_reject_t a = { .delivery_tag = tag, .requeue = requeue };
    bk_send_small(b, ch, AMQP_BASIC_REJECT_METHOD, &a, false);
}

void bk_queue_reset(conc_broker_queue *q)
{
    q->ack_n = 0;
    q->nheld = 0;               /* the broker has them back */
    drop_local(q);
    q->chan_open = false;
    q->consuming = false;
    q->get_empty = false;
}

void bk_queue_channel_closed(conc_broker_queue *q, int err)
{
    bk_queue_reset(q);
    q->chan_held = false;       /* its close-ok was sent */
    q->chan_err = err;
    if (err == -ENOENT)
        q->cancelled = true;
}

/* ---- channel numbers ---- */

void bk_channels_reset(conc_broker *b)
{
    memset(b->chan_used, 0, sizeof b->chan_used);
}

/* A queue channel number not in use on the connection (the lowest), or 0
 * when all the connection may open are taken. */
static uint16_t channel_take(conc_broker *b)
{
    int max = b->c ? amqp_get_channel_max(b->c) : 0;
    if (max <= 0 || max > BK_CH_MAX)
        max = BK_CH_MAX;
    for (int ch = BK_CH_FIRST_QUEUE; ch <= max; ch++) {
        uint64_t bit = (uint64_t)1 << (ch % 64);
        if (!(b->chan_used[ch / 64] & bit)) {
            b->chan_used[ch / 64] |= bit;
            return (uint16_t)ch;
        }
    }
    return 0;
}

/* Gives q's channel number back for another queue, when the broker is
 * known to have closed that channel on this connection. */
static void channel_give(conc_broker_queue *q)
{
    conc_broker *b = q->b;
    uint16_t ch = q->channel;
    if (!b->c || ch < BK_CH_FIRST_QUEUE || ch > BK_CH_MAX || q->chan_epoch != b->epoch ||
        q->chan_held)
        return;
    b->chan_used[ch / 64] &= ~((uint64_t)1 << (ch % 64));
    q->channel = 0;
}

static conc_broker_queue *by_channel(conc_broker *b, uint16_t ch)
{
    for (conc_broker_queue *q = b->queues; q; q = q->next)
        if (q->chan_open && q->channel == ch)
            return q;
    return NULL;
}

static void copy_bytes(char *dst, amqp_bytes_t src)
{
    size_t n = src.len < 255 ? src.len : 255;
    if (n)
        memcpy(dst, src.bytes, n);      /* empty ones may have no bytes */
    dst[n] = '\0';
}

/* The x-delivery-count header of a quorum queue's message, or 0. */
static uint32_t delivery_count(const amqp_table_t *h)
{
    for (int i = 0; i < h->num_entries; i++) {
        const amqp_table_entry_t *e = &h->entries[i];
        if (e->key.len != 16 || memcmp(e->key.bytes, "x-delivery-count", 16) != 0)
            continue;
        int64_t v;
        switch (e->value.kind) {
        case AMQP_FIELD_KIND_I8: v = e->value.value.i8; break;
        case AMQP_FIELD_KIND_U8: v = e->value.value.u8; break;
        case AMQP_FIELD_KIND_I16: v = e->value.value.i16; break;
        case AMQP_FIELD_KIND_U16: v = e->value.value.u16; break;
        case AMQP_FIELD_KIND_I32: v = e->value.value.i32; break;
        case AMQP_FIELD_KIND_U32: v = e->value.value.u32; break;
        case AMQP_FIELD_KIND_I64: v = e->value.value.i64; break;
        case AMQP_FIELD_KIND_U64:
            v = e->value.value.u64 > UINT32_MAX ? UINT32_MAX : (int64_t)e->value.value.u64;
            break;
        default: return 0;
        }
        return v < 0 ? 0 : v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
    }
    return 0;
}

static void complete(conc_broker_queue *q)
{
    struct bk_msg *m = q->partial;
    q->partial = NULL;
    if (q->tail)
        q->tail->next = m;
    else
        q->head = m;
    q->tail = m;
    q->nlocal++;
}

/* Rejects a delivery the client cannot take (requeued, or to the
 * dead-letter path when it never could be taken), so that it does not hold
 * a prefetch slot until the connection closes, and counts it. */
static void refuse(conc_broker *b, conc_broker_queue *q, uint16_t ch, uint64_t tag,
                   bool requeue)
{
    reject_later(b, ch, tag, requeue);
    __atomic_fetch_add(&q->refused, 1, __ATOMIC_RELAXED);
}

/* Refuses a delivery the client has no memory for.  Given back at once,
 * it would come straight back while memory stays short: it is held (its
 * prefetch slot too, so the broker sends no more in its place once all
 * slots are held) and given back after a pause that doubles while such
 * refusals go on.  Given back at once only when no more can be held (a
 * basic.get beyond the prefetch). */
static void refuse_for_memory(conc_broker *b, conc_broker_queue *q, uint16_t ch, uint64_t tag)
{
    if (q->nheld >= q->held_cap) {
        refuse(b, q, ch, tag, true);
        return;
    }
    int64_t now = conc_now();
    if (q->nheld == 0) {
        q->held_until = now + q->held_pause;
        q->held_pause = q->held_pause ? 2 * q->held_pause : BK_HELD_PAUSE_MIN;
        if (q->held_pause > BK_HELD_PAUSE_MAX)
            q->held_pause = BK_HELD_PAUSE_MAX;
        if (q->held_until <= now)
            q->held_until = now + BK_HELD_PAUSE_MIN;
    }
    q->held[q->nheld++] = tag;
    __atomic_fetch_add(&q->refused, 1, __ATOMIC_RELAXED);
}

/* Gives the held deliveries back to the queue (basic.reject, requeued)
 * when their pause is over, or all of them at once.  Returns when the
 * held ones are due (CONC_NO_DEADLINE: none held). */
int64_t bk_queue_release_held(conc_broker_queue *q, bool all)
{
    conc_broker *b = q->b;
    if (!q->nheld)
        return CONC_NO_DEADLINE;
    if (!all && conc_now() < q->held_until)
        return q->held_until;
    size_t n = q->nheld;
    q->nheld = 0;
    if (!b->c || !q->chan_open)
        return CONC_NO_DEADLINE;
    for (size_t i = 0; i < n; i++)
        reject_later(b, q->channel, q->held[i], true);
    return CONC_NO_DEADLINE;
}

/* Whether a delivery older than tag is held (an acknowledgement with
 * multiple=true up to tag would take it for done). */
static bool held_before(const conc_broker_queue *q, uint64_t tag)
{
    for (size_t i = 0; i < q->nheld; i++)
        if (q->held[i] < tag)
            return true;
    return false;
}

/* A delivery's frames (basic.deliver or get-ok, header, body), or a
 * consumer cancelled by the broker, on a queue's channel. */
void bk_queue_deliver(conc_broker *b, uint16_t ch, const amqp_frame_t *f)
{
    conc_broker_queue *q = by_channel(b, ch);
    if (!q)
        return;
    if (f->frame_type == AMQP_FRAME_METHOD) {
        amqp_method_number_t id = f->payload.method.id;
        void *d = f->payload.method.decoded;
        if (id == AMQP_BASIC_CANCEL_METHOD) {
            q->cancelled = true;
            q->consuming = false;
            return;
        }
        if (id == AMQP_BASIC_GET_EMPTY_METHOD) {
            q->get_empty = true;
            return;
        }
        msg_free(q->partial);
        q->partial = NULL;
        uint64_t tag = id == AMQP_BASIC_DELIVER_METHOD
                           ? ((amqp_basic_deliver_t *)d)->delivery_tag
                           : ((amqp_basic_get_ok_t *)d)->delivery_tag;
        struct bk_msg *m = bk_delivery_alloc(sizeof *m);
        if (!m) {
            /* Given back later; its header and body are ignored. */
            refuse_for_memory(b, q, ch, tag);
            return;
        }
        memset(m, 0, sizeof *m);
        if (id == AMQP_BASIC_DELIVER_METHOD) {
            amqp_basic_deliver_t *dv = d;
            m->m.tag = dv->delivery_tag;
            m->m.redelivered = dv->redelivered;
            copy_bytes(m->m.exchange, dv->exchange);
            copy_bytes(m->m.routing_key, dv->routing_key);
        } else {
            amqp_basic_get_ok_t *g = d;
            m->m.tag = g->delivery_tag;
            m->m.redelivered = g->redelivered;
            copy_bytes(m->m.exchange, g->exchange);
            copy_bytes(m->m.routing_key, g->routing_key);
        }
        q->partial = m;
        return;
    }
    struct bk_msg *m = q->partial;
    if (!m)
        return;
    if (f->frame_type == AMQP_FRAME_HEADER) {
        uint64_t size = f->payload.properties.body_size;
        if (size > b->opts.max_message) {
            /* It can never be taken here: to the dead-letter exchange, if
             * any (requeued, it would come back for ever). */
            refuse(b, q, ch, m->m.tag, false);
            msg_free(m);
            q->partial = NULL;
            return;
        }
        const amqp_basic_properties_t *p = f->payload.properties.decoded;
        if (p) {
            if (p->_flags & AMQP_BASIC_CORRELATION_ID_FLAG)
                copy_bytes(m->m.correlation_id, p->correlation_id);
            if (p->_flags & AMQP_BASIC_REPLY_TO_FLAG)
                copy_bytes(m->m.reply_to, p->reply_to);
            /* The broker sets the count on a redelivery; on a first
             * delivery the header may be the publisher's own. */
            if (m->m.redelivered && (p->_flags & AMQP_BASIC_HEADERS_FLAG))
                m->m.delivery_count = delivery_count(&p->headers);
        }
        m->want = (size_t)size;
        m->m.data = bk_delivery_alloc(m->want + 1);
        if (!m->m.data) {
            refuse_for_memory(b, q, ch, m->m.tag);     /* may fit later */
            msg_free(m);
            q->partial = NULL;
            return;
        }
        q->held_pause = 0;          /* memory again: the next pause is short */
        m->have_header = true;
        ((char *)m->m.data)[m->want] = '\0';
        if (m->want == 0)
            complete(q);
        return;
    }
    if (f->frame_type == AMQP_FRAME_BODY && m->have_header) {
        amqp_bytes_t body = f->payload.body_fragment;
        if (body.len > m->want - m->m.len) {
            /* More body than its header announced: malformed, and it
             * would be malformed again. */
            refuse(b, q, ch, m->m.tag, false);
            msg_free(m);
            q->partial = NULL;
            return;
        }
        memcpy((char *)m->m.data + m->m.len, body.bytes, body.len);
        m->m.len += body.len;
        if (m->m.len == m->want)
            complete(q);
    }
}

/* ---- declarations ---- */

static const char *kind_name(conc_broker_exchange_kind k)
{
    return k == CONC_BROKER_TOPIC ? "topic" : k == CONC_BROKER_DIRECT ? "direct" : "fanout";
}

int bk_exchange_declare_one(conc_broker *b, const struct bk_exchange *e, int64_t deadline)
{
    int r = bk_ctl_ready(b, deadline);
    if (r < 0)
        return r;
    amqp_exchange_declare_t d = {
        .exchange = amqp_cstring_bytes(e->name),
        .type = amqp_cstring_bytes(kind_name(e->kind)),
        .durable = !e->transient,
        .arguments = amqp_empty_table,
    };
    return bk_rpc(b, BK_CH_CTL, AMQP_EXCHANGE_DECLARE_METHOD, &d,
                  AMQP_EXCHANGE_DECLARE_OK_METHOD, deadline);
}

/* Records exchange e (once) for the declarations after a reconnection. */
static int remember_exchange(conc_broker *b, const char *name, conc_broker_exchange_kind kind,
                             bool transient)
{
    for (struct bk_exchange *e = b->exchanges; e; e = e->next)
        if (strcmp(e->name, name) == 0)
            return 0;
    struct bk_exchange *e = calloc(1, sizeof *e);
    if (!e)
        return -ENOMEM;
    strcpy(e->name, name);
    e->kind = kind;
    e->transient = transient;
    e->next = b->exchanges;
    b->exchanges = e;
    return 0;
}

int bk_queue_declare(conc_broker_queue *q, int64_t deadline)
{
    conc_broker *b = q->b;
    int r = bk_ctl_ready(b, deadline);
    if (r < 0)
        return r;
    amqp_table_entry_t args[6];
    int nargs = 0;
    const conc_broker_queue_opts *o = &q->opts;
    if (o->delivery_limit) {
        args[nargs].key = amqp_cstring_bytes("x-queue-type");
        args[nargs].value.kind = AMQP_FIELD_KIND_UTF8;
        args[nargs++].value.value.bytes = amqp_cstring_bytes("quorum");
        args[nargs].key = amqp_cstring_bytes("x-delivery-limit");
        args[nargs].value.kind = AMQP_FIELD_KIND_I64;
        args[nargs++].value.value.i64 = o->delivery_limit;
    }
    if (o->dead_letter_exchange) {
        args[nargs].key = amqp_cstring_bytes("x-dead-letter-exchange");
        args[nargs].value.kind = AMQP_FIELD_KIND_UTF8;
        args[nargs++].value.value.bytes = amqp_cstring_bytes(o->dead_letter_exchange);
    }
    if (o->dead_letter_key) {
        args[nargs].key = amqp_cstring_bytes("x-dead-letter-routing-key");
        args[nargs].value.kind = AMQP_FIELD_KIND_UTF8;
        args[nargs++].value.value.bytes = amqp_cstring_bytes(o->dead_letter_key);
    }
    if (o->message_ttl > 0) {
        args[nargs].key = amqp_cstring_bytes("x-message-ttl");
        args[nargs].value.kind = AMQP_FIELD_KIND_I64;
        args[nargs++].value.value.i64 = (int64_t)(o->message_ttl * 1000 + 0.5);
    }
    if (o->expires > 0) {
        int64_t ms = (int64_t)(o->expires * 1000 + 0.5);
        args[nargs].key = amqp_cstring_bytes("x-expires");
        args[nargs].value.kind = AMQP_FIELD_KIND_I64;
        args[nargs++].value.value.i64 = ms > 0 ? ms : 1;
    }
    amqp_table_t table = { .num_entries = nargs, .entries = args };
    amqp_queue_declare_t d = {
        .queue = amqp_cstring_bytes(q->server_named ? "" : q->name),
        .passive = q->opts.passive,
        .durable = !q->opts.transient && !q->server_named,
        .exclusive = q->opts.exclusive || q->server_named,
        .auto_delete = q->opts.auto_delete || q->server_named,
        .arguments = q->opts.passive ? amqp_empty_table : table,
    };
    r = bk_rpc(b, BK_CH_CTL, AMQP_QUEUE_DECLARE_METHOD, &d, AMQP_QUEUE_DECLARE_OK_METHOD,
               deadline);
    if (r < 0)
        return r;
    if (q->server_named) {
        strcpy(q->name, b->got_name);
        for (size_t i = 0; i < q->npatterns || (i == 0 && q->npatterns == 0); i++) {
            amqp_queue_bind_t bd = {
                .queue = amqp_cstring_bytes(q->name),
                .exchange = amqp_cstring_bytes(q->exchange),
                .routing_key = amqp_cstring_bytes(q->npatterns ? q->patterns[i] : ""),
                .arguments = amqp_empty_table,
            };
            r = bk_rpc(b, BK_CH_CTL, AMQP_QUEUE_BIND_METHOD, &bd, AMQP_QUEUE_BIND_OK_METHOD,
                       deadline);
            if (r < 0)
                return r;
        }
    }
    q->declared_epoch = b->epoch;
    return 0;
}

/* ---- queue handles ---- */

static void link_queue(conc_broker_queue *q)
{
    q->next = q->b->queues;
    q->b->queues = q;
}

static void unlink_queue(conc_broker_queue *q)
{
    for (conc_broker_queue **p = &q->b->queues; *p; p = &(*p)->next)
        if (*p == q) {
            *p = q->next;
            return;
        }
}

static void queue_release(conc_broker_queue *q)
{
    drop_local(q);
    for (size_t i = 0; i < q->npatterns; i++)
        free(q->patterns[i]);
    free(q->patterns);
    free(q->taken);
    free(q->taken_epoch);
    free(q->held);
    free(q->dlx);
    free(q->dlk);
    free(q);
}

static int queue_make(conc_broker_queue **out, conc_broker *b, const conc_broker_queue_opts *opts)
{
    conc_broker_queue *q = calloc(1, sizeof *q);
    if (!q)
        return -ENOMEM;
    /* size 0 is the first version: the fields up to prefetch. */
    size_t n = 0;
    if (opts) {
        n = opts->size == 0 ? offsetof(conc_broker_queue_opts, delivery_limit)
            : opts->size < sizeof q->opts ? opts->size : sizeof q->opts;
        memcpy(&q->opts, opts, n);
    }
    q->opts.size = sizeof q->opts;
    q->opts.dead_letter_exchange = q->opts.dead_letter_key = NULL;
    if (n >= sizeof q->opts) {
        if ((opts->dead_letter_exchange && !name_ok(opts->dead_letter_exchange, true)) ||
            (opts->dead_letter_key && !name_ok(opts->dead_letter_key, true)) ||
            !(opts->message_ttl >= 0) || !(opts->expires >= 0) ||
            opts->message_ttl > 1e9 || opts->expires > 1e9 ||
            (opts->delivery_limit && (opts->transient || opts->exclusive || opts->auto_delete ||
                                      opts->simple))) {
            free(q);
            return -EINVAL;
        }
        if (opts->dead_letter_exchange) {
            q->dlx = strdup(opts->dead_letter_exchange);
            if (!q->dlx) {
                free(q);
                return -ENOMEM;
            }
        }
        if (opts->dead_letter_key) {
            q->dlk = strdup(opts->dead_letter_key);
            if (!q->dlk) {
                free(q->dlx);
                free(q);
                return -ENOMEM;
            }
        }
        q->opts.dead_letter_exchange = q->dlx;
        q->opts.dead_letter_key = q->dlk;
    } else {
        q->opts.delivery_limit = 0;
        q->opts.message_ttl = q->opts.expires = 0;
    }
    if (q->opts.prefetch == 0)
        q->opts.prefetch = q->opts.simple ? SIMPLE_PREFETCH : DEFAULT_PREFETCH;
    /* Room to hold every delivery the prefetch lets through, made now:
     * it is needed when memory is short. */
    q->held = malloc(q->opts.prefetch * sizeof *q->held);
    if (!q->held) {
        free(q->dlk);
        free(q->dlx);
        free(q);
        return -ENOMEM;
    }
    q->held_cap = q->opts.prefetch;
    q->ws = &queue_source;
    q->b = b;
    *out = q;
    return 0;
}

int conc_broker_queue_new(conc_broker_queue **out, conc_broker *b, const char *name,
                          const conc_broker_queue_opts *opts, double timeout)
{
    int64_t deadline;
    bool poll;
    if (!out || !b || !name_ok(name, false) || conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    conc_broker_queue *q;
    int r = queue_make(&q, b, opts);
    if (r < 0)
        return r;
    strcpy(q->name, name);
    int64_t lim = setup_limit(b, deadline);
    int tries = 0;
    do
        r = bk_queue_declare(q, lim);
    while (again(b, r, lim, &tries));
    if (r < 0) {
        queue_release(q);
        return conc__timeout_code(poll, r);
    }
    link_queue(q);
    *out = q;
    return 0;
}

int conc_broker_subscribe(conc_broker_queue **out, conc_broker *b, const char *exchange,
                          conc_broker_exchange_kind kind, const char *const *patterns, size_t n,
                          const conc_broker_queue_opts *opts, double timeout)
{
    int64_t deadline;
    bool poll;
    if (!out || !b || !name_ok(exchange, false) || (n && !patterns) ||
        (kind != CONC_BROKER_FANOUT && kind != CONC_BROKER_TOPIC &&
         kind != CONC_BROKER_DIRECT) || conc__timeout_parse(timeout, &deadline, &poll) || n > 1024)
        return -EINVAL;
    for (size_t i = 0; i < n; i++)
        if (!name_ok(patterns[i], true))
            return -EINVAL;
    conc_broker_queue *q;
    int r = queue_make(&q, b, opts);
    if (r < 0)
        return r;
    q->server_named = true;
    q->opts.passive = false;
    strcpy(q->exchange, exchange);
    q->kind = kind;
    if (n) {
        q->patterns = calloc(n, sizeof *q->patterns);
        if (!q->patterns) {
            queue_release(q);
            return -ENOMEM;
        }
        for (size_t i = 0; i < n; i++) {
            q->patterns[i] = strdup(patterns[i]);
            if (!q->patterns[i]) {
                q->npatterns = i;
                queue_release(q);
                return -ENOMEM;
            }
        }
        q->npatterns = n;
    }
    int64_t lim = setup_limit(b, deadline);
    struct bk_exchange e = { .kind = kind };
    strcpy(e.name, exchange);
    int tries = 0;
    /* An exchange this connection declared is used as it is (transient,
     * say); another is declared durable, or checked to be so. */
    bool known = false;
    for (struct bk_exchange *k = b->exchanges; k; k = k->next)
        known = known || strcmp(k->name, exchange) == 0;
    r = 0;
    if (!known) {
        do
            r = bk_exchange_declare_one(b, &e, lim);
        while (again(b, r, lim, &tries));
        if (r == 0)
            r = remember_exchange(b, exchange, kind, false);
    }
    if (r == 0) {
        do
            r = bk_queue_declare(q, lim);
        while (again(b, r, lim, &tries));
    }
    if (r < 0) {
        queue_release(q);
        return conc__timeout_code(poll, r);
    }
    link_queue(q);
    *out = q;
    return 0;
}

void conc_broker_queue_free(conc_broker_queue *q)
{
    if (!q)
        return;
    conc_broker *b = q->b;
    bk_queue_flush_acks(q);
    if (b->c && q->chan_open) {
        /* Closing the channel gives back what was taken and not done. */
        amqp_channel_close_t cl = { .reply_code = 200, .reply_text = amqp_cstring_bytes("") };
        if (bk_rpc(b, q->channel, AMQP_CHANNEL_CLOSE_METHOD, &cl, AMQP_CHANNEL_CLOSE_OK_METHOD,
                   conc_now() + NS) == 0)
            q->chan_held = false;
    }
    channel_give(q);
    unlink_queue(q);
    queue_release(q);
}

int conc_broker_queue_delete(conc_broker_queue *q, double timeout)
{
    int64_t deadline;
    bool poll;
    if (!q || conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    conc_broker *b = q->b;
    amqp_queue_delete_t d = { .queue = amqp_cstring_bytes(q->name) };
    int r = ctl_rpc(b, AMQP_QUEUE_DELETE_METHOD, &d, AMQP_QUEUE_DELETE_OK_METHOD,
                    setup_limit(b, deadline));
    conc_broker_queue_free(q);
    return conc__timeout_code(poll, r);
}

const char *conc_broker_queue_name(const conc_broker_queue *q)
{
    return q ? q->name : NULL;
}

/* ---- puts and publishes ---- */

static bool take_nack(conc_broker *b, uint64_t seq)
{
    for (size_t i = 0; i < b->nnacked; i++)
        if (b->nacked[i] == seq) {
            b->nacked[i] = b->nacked[--b->nnacked];
            return true;
        }
    return false;
}

static int publish_full(conc_broker *b, const char *exchange, const char *key,
                        const void *data, size_t len, bool persistent,
                        const conc_broker_props *props, bool wait, int64_t deadline);

static int publish(conc_broker *b, const char *exchange, const char *key, const void *data,
                   size_t len, bool persistent, bool wait, int64_t deadline)
{
    return publish_full(b, exchange, key, data, len, persistent, NULL, wait, deadline);
}

static int publish_full(conc_broker *b, const char *exchange, const char *key,
                        const void *data, size_t len, bool persistent,
                        const conc_broker_props *props, bool wait, int64_t deadline)
{
    char expiration[32] = "";
    if (len > b->opts.max_message)
        return -EMSGSIZE;
    int64_t lim = setup_limit(b, deadline);
    uint64_t seq, gen;
    for (;;) {
        int r = bk_pub_ready(b, lim);
        if (r < 0)
            return r;
        /* At most win_cap confirmations outstanding. */
        while (b->pub_open && b->pub_seq - b->pub_confirmed >= b->win_cap) {
            r = bk_pump(b, lim);
            if (r == -ETIMEDOUT || r == -ECANCELED)
                return r;
        }
        if (!b->pub_open)
            continue;
        amqp_basic_properties_t p = { ._flags = AMQP_BASIC_DELIVERY_MODE_FLAG,
                                      .delivery_mode = persistent ? 2 : 1 };
        if (props && props->correlation_id) {
            p._flags |= AMQP_BASIC_CORRELATION_ID_FLAG;
            p.correlation_id = amqp_cstring_bytes(props->correlation_id);
        }
        if (props && props->reply_to) {
            p._flags |= AMQP_BASIC_REPLY_TO_FLAG;
            p.reply_to = amqp_cstring_bytes(props->reply_to);
        }
        if (props && props->expiration > 0) {
            snprintf(expiration, sizeof expiration, "%lld",
                     (long long)(props->expiration * 1000 + 0.5));
            p._flags |= AMQP_BASIC_EXPIRATION_FLAG;
            p.expiration = amqp_cstring_bytes(expiration);
        }
        amqp_bytes_t body = { .len = len, .bytes = (void *)data };
        /* Framed here and sent without blocking (over TLS, encrypted into
         * the connection's session by conc): a socket found full (a broker
         * that reads slowly or not at all) is waited for through conc's
         * wait layer, until the call's deadline.  A small message is
         * copied into the connection's buffer (async ones go out many to
         * one send), a larger one's body is sent from the caller's
         * bytes. */
        bool inline_body = len <= BK_OBUF_BODY_MAX;
        r = bk_out_publish(b, BK_CH_PUB, amqp_cstring_bytes(exchange), amqp_cstring_bytes(key),
                           &p, body, inline_body);
        if (r < 0)
            return r;               /* nothing was added */
        if (!inline_body) {
            if (!wait)
                bk_cork(b, true);
            r = bk_out_body_until(b, BK_CH_PUB, body, lim);
        } else if (wait || b->out.len >= BK_OBUF_SEND) {
            r = bk_out_flush_until(b, lim);
        }
        if (r == -ETIMEDOUT || r == -ECANCELED)
            return r;               /* the connection was dropped */
        if (r < 0)
            continue;               /* lost: again on a new one */
        seq = ++b->pub_seq;
        gen = b->pub_gen;
        break;
    }
    if (!wait) {
        b->async_pending = true;
        b->async_gen = gen;
        b->async_upto = seq;
        /* Take in the confirmations already there (never waits). */
        if (seq % 64 == 0)
            bk_pump(b, 0);
        return 0;
    }
    for (;;) {
        if (gen != b->pub_gen)
            return b->pub_err && b->pub_err != -ETIMEDOUT ? b->pub_err : -ECONNRESET;
        if (b->pub_confirmed >= seq)
            return take_nack(b, seq) ? -EIO : 0;
        int r = bk_pump(b, deadline);
        if (r == -ETIMEDOUT || r == -ECANCELED)
            return r;
    }
}

int conc_broker_queue_put_until(conc_broker_queue *q, const void *data, size_t len,
                                int64_t deadline)
{
    if (!q || (!data && len))
        return -EINVAL;
    return publish(q->b, "", q->name, data ? data : "", len, !q->opts.transient, true, deadline);
}

int conc_broker_queue_put(conc_broker_queue *q, const void *data, size_t len, double timeout)
{
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return conc__timeout_code(poll, conc_broker_queue_put_until(q, data, len, deadline));
}

int conc_broker_queue_put_async(conc_broker_queue *q, const void *data, size_t len,
                                double timeout)
{
    int64_t deadline;
    bool poll;
    if (!q || (!data && len) || conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return conc__timeout_code(poll, publish(q->b, "", q->name, data ? data : "", len, !q->opts.transient,
                                 false, deadline));
}

int conc_broker_exchange_declare(conc_broker *b, const char *name,
                                 conc_broker_exchange_kind kind, bool transient, double timeout)
{
    int64_t deadline;
    bool poll;
    if (!b || !name_ok(name, false) || strncmp(name, "amq.", 4) == 0 ||
        (kind != CONC_BROKER_FANOUT && kind != CONC_BROKER_TOPIC &&
         kind != CONC_BROKER_DIRECT) || conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    struct bk_exchange e = { .kind = kind, .transient = transient };
    strcpy(e.name, name);
    int64_t lim = setup_limit(b, deadline);
    int r, tries = 0;
    do
        r = bk_exchange_declare_one(b, &e, lim);
    while (again(b, r, lim, &tries));
    if (r == 0)
        r = remember_exchange(b, name, kind, transient);
    return conc__timeout_code(poll, r);
}

static int publish_args(conc_broker *b, const char *exchange, const char *topic,
                        const void *data, size_t len, double timeout, int64_t *deadline,
                        bool *poll)
{
    if (!b || !name_ok(exchange, false) || !name_ok(topic, true) || (!data && len) ||
        conc__timeout_parse(timeout, deadline, poll))
        return -EINVAL;
    return 0;
}

int conc_broker_publish(conc_broker *b, const char *exchange, const char *topic,
                        const void *data, size_t len, double timeout)
{
    int64_t deadline;
    bool poll;
    int r = publish_args(b, exchange, topic, data, len, timeout, &deadline, &poll);
    if (r < 0)
        return r;
    return conc__timeout_code(poll, publish(b, exchange, topic, data ? data : "", len, true, true, deadline));
}

int conc_broker_publish_async(conc_broker *b, const char *exchange, const char *topic,
                              const void *data, size_t len, double timeout)
{
    int64_t deadline;
    bool poll;
    int r = publish_args(b, exchange, topic, data, len, timeout, &deadline, &poll);
    if (r < 0)
        return r;
    return conc__timeout_code(poll, publish(b, exchange, topic, data ? data : "", len, true, false,
                                 deadline));
}

static int props_call(conc_broker *b, const char *exchange, const char *topic,
                      const void *data, size_t len, const conc_broker_props *props,
                      double timeout, bool wait)
{
    int64_t deadline;
    bool poll;
    conc_broker_props pr = { 0 };
    if (props) {
        size_t n = props->size && props->size < sizeof pr ? props->size : sizeof pr;
        memcpy(&pr, props, n);
    }
    if (!b || !name_ok(exchange, true) || !name_ok(topic, true) || (!data && len) ||
        (pr.correlation_id && !name_ok(pr.correlation_id, true)) ||
        (pr.reply_to && !name_ok(pr.reply_to, true)) || !(pr.expiration >= 0) ||
        pr.expiration > 1e9 || conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return conc__timeout_code(poll, publish_full(b, exchange, topic, data ? data : "", len, !pr.transient,
                                      &pr, wait, deadline));
}

int conc_broker_publish_props(conc_broker *b, const char *exchange, const char *topic,
                              const void *data, size_t len, const conc_broker_props *props,
                              double timeout)
{
    return props_call(b, exchange, topic, data, len, props, timeout, true);
}

int conc_broker_publish_props_async(conc_broker *b, const char *exchange, const char *topic,
                                    const void *data, size_t len,
                                    const conc_broker_props *props, double timeout)
{
    return props_call(b, exchange, topic, data, len, props, timeout, false);
}

/* ---- gets ---- */

/* Makes sure q is declared on the current connection and has its channel
 * (with its prefetch); with consume, that it is consuming. */
static int queue_ready(conc_broker_queue *q, bool consume, int64_t lim)
{
    conc_broker *b = q->b;
    int r = bk_ensure_up(b, lim);
    if (r < 0)
        return r;
    if (q->declared_epoch != b->epoch) {
        r = bk_queue_declare(q, lim);
        if (r < 0)
            return r;
    }
    if (!q->chan_open) {
        if (q->chan_epoch != b->epoch || q->channel == 0) {
            q->channel = channel_take(b);
            if (!q->channel)
                return -EMFILE;
            q->chan_epoch = b->epoch;
        }
        q->chan_held = true;
        r = bk_channel_open(b, q->channel, lim);
        if (r < 0)
            return r;
        q->chan_open = true;
        q->chan_err = 0;
        q->cgen++;
        amqp_basic_qos_t qos = { .prefetch_count = q->opts.prefetch };
        r = bk_rpc(b, q->channel, AMQP_BASIC_QOS_METHOD, &qos, AMQP_BASIC_QOS_OK_METHOD, lim);
        if (r < 0)
            return r;
    }
    if (consume && !q->consuming && !q->cancelled) {
        amqp_basic_consume_t c = {
            .queue = amqp_cstring_bytes(q->name),
            .consumer_tag = amqp_empty_bytes,
            .arguments = amqp_empty_table,
        };
        r = bk_rpc(b, q->channel, AMQP_BASIC_CONSUME_METHOD, &c, AMQP_BASIC_CONSUME_OK_METHOD,
                   lim);
        if (r < 0)
            return r == -ENOENT ? r : r;
        q->consuming = true;
    }
    return 0;
}

static int remember_taken(conc_broker_queue *q, uint64_t tag)
{
    if (q->ntaken == q->taken_cap) {
        size_t cap = q->taken_cap ? 2 * q->taken_cap : 16;
        uint64_t *t = realloc(q->taken, cap * sizeof *t);
        if (!t)
            return -ENOMEM;
        q->taken = t;
        uint64_t *e = realloc(q->taken_epoch, cap * sizeof *e);
        if (!e)
            return -ENOMEM;
        q->taken_epoch = e;
        q->taken_cap = cap;
    }
    q->taken[q->ntaken] = tag;
    q->taken_epoch[q->ntaken] = q->cgen | (q->b->epoch << 32);
    q->ntaken++;
    return 0;
}

/* Hands out the oldest delivered message. */
static int take(conc_broker_queue *q, conc_broker_msg *out)
{
    struct bk_msg *m = q->head;
    conc_broker *b = q->b;
    if (q->opts.simple) {
        amqp_basic_ack_t a = { .delivery_tag = m->m.tag };
        if (b->c && bk_send_small(b, q->channel, AMQP_BASIC_ACK_METHOD, &a, true) < 0)
            return -ECONNRESET;     /* the broker gives it again */
    } else if (remember_taken(q, m->m.tag) < 0) {
        return -ENOMEM;
    }
    q->head = m->next;
    if (!q->head)
        q->tail = NULL;
    q->nlocal--;
    *out = m->m;
    free(m);
    return 0;
}

int conc_broker_queue_get_until(conc_broker_queue *q, conc_broker_msg *out, int64_t deadline)
{
    if (!q || !out)
        return -EINVAL;
    conc_broker *b = q->b;
    int64_t lim = setup_limit(b, deadline);
    bool poll = b->poll_call;
    int tries = 0;
    for (;;) {
        if (q->head) {
            int r = take(q, out);
            if (r != -ECONNRESET)
                return r;
            continue;
        }
        /* Nothing here: the broker sends more once it has the
         * acknowledgements (and the held deliveries once their pause is
         * over). */
        bk_queue_flush_acks(q);
        bk_queue_release_held(q, false);
        if (b->c && b->out.len)
            bk_out_flush(b);
        if (q->cancelled)
            return -ENOENT;
        int r = queue_ready(q, !poll, lim);
        if (r < 0 && again(b, r, lim, &tries))
            continue;
        if (r < 0)
            return r;
        if (q->head)
            continue;
        if (poll && !q->consuming) {
            /* A get that may not wait asks the broker (basic.get). */
            amqp_basic_get_t g = { .queue = amqp_cstring_bytes(q->name) };
            q->get_empty = false;
            r = bk_rpc(b, q->channel, AMQP_BASIC_GET_METHOD, &g, AMQP_BASIC_GET_OK_METHOD, lim);
            if (r < 0 && again(b, r, lim, &tries))
                continue;
            if (r < 0)
                return r;
            if (q->get_empty)
                return -ETIMEDOUT;
            while (!q->head && q->partial) {
                r = bk_pump(b, lim);
                if (r < 0)
                    return r;
            }
            if (!q->head)
                return -ETIMEDOUT;
            continue;
        }
        r = bk_pump(b, poll ? 0 : deadline);
        if (r == -ETIMEDOUT || r == -ECANCELED)
            return r;
        if (r < 0 && (poll || conc_now() >= deadline))
            return r;
    }
}

int conc_broker_queue_get(conc_broker_queue *q, conc_broker_msg *out, double timeout)
{
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return conc__timeout_code(poll, conc_broker_queue_get_until(q, out, deadline));
}

int conc_broker_queue_get_nowait(conc_broker_queue *q, conc_broker_msg *out)
{
    return conc_broker_queue_get(q, out, 0);
}

void conc_broker_msg_clear(conc_broker_msg *m)
{
    if (!m)
        return;
    free(m->data);
    memset(m, 0, sizeof *m);
}

/* Acknowledges (or rejects) the taken message at index i. */
static int settle(conc_broker_queue *q, size_t i, bool ack, bool requeue)
{
    conc_broker *b = q->b;
    uint64_t tag = q->taken[i];
    uint64_t when = q->taken_epoch[i];
    memmove(q->taken + i, q->taken + i + 1, (q->ntaken - i - 1) * sizeof *q->taken);
    memmove(q->taken_epoch + i, q->taken_epoch + i + 1,
            (q->ntaken - i - 1) * sizeof *q->taken_epoch);
    q->ntaken--;
    /* A message of a connection or channel since lost is back in the
     * queue already. */
    if (!b->c || !q->chan_open || when != (q->cgen | (b->epoch << 32)))
        return 0;
    if (ack && i == 0 && !held_before(q, tag)) {
        /* The oldest taken: every earlier delivery of the channel is done.
         * One acknowledgement (multiple=true) covers a batch of them; it
         * goes out after prefetch/2 of them, when the handle runs out of
         * delivered messages, or before the connection waits. */
        q->ack_tag = tag;
        q->ack_when = when;
        q->ack_n++;
        unsigned batch = q->opts.prefetch / 2 ? q->opts.prefetch / 2 : 1;
        if (q->ack_n >= batch) {
            bk_queue_flush_acks(q);
            if (b->c && b->out.len)
                bk_out_flush(b);
        }
        return 0;
    }
    bk_queue_flush_acks(q);
    if (!b->c)
        return 0;
    /* Framed and sent at once, waiting for room through conc's wait
     * layer (a lost connection gives the delivery back anyway). */
    if (ack) {
        amqp_basic_ack_t a = { .delivery_tag = tag };
        bk_send_small(b, q->channel, AMQP_BASIC_ACK_METHOD, &a, true);
    } else {
        amqp_basic_reject_t a = { .delivery_tag = tag, .requeue = requeue };
        bk_send_small(b, q->channel, AMQP_BASIC_REJECT_METHOD, &a, true);
    }
    return 0;
}

int conc_broker_queue_task_done(conc_broker_queue *q)
{
    if (!q || q->opts.simple)
        return -EINVAL;
    if (q->ntaken == 0)
        return -EOVERFLOW;
    return settle(q, 0, true, false);
}

static int settle_tag(conc_broker_queue *q, uint64_t tag, bool ack, bool requeue)
{
    if (!q || q->opts.simple)
        return -EINVAL;
    for (size_t i = 0; i < q->ntaken; i++)
        if (q->taken[i] == tag)
            return settle(q, i, ack, requeue);
    return -ENOENT;
}

int conc_broker_queue_ack(conc_broker_queue *q, uint64_t tag)
{
    return settle_tag(q, tag, true, false);
}

int conc_broker_queue_reject(conc_broker_queue *q, uint64_t tag, bool requeue)
{
    return settle_tag(q, tag, false, requeue);
}

size_t conc_broker_queue_unfinished(const conc_broker_queue *q)
{
    return q ? q->ntaken : 0;
}

uint64_t conc_broker_queue_refused(const conc_broker_queue *q)
{
    return q ? __atomic_load_n(&q->refused, __ATOMIC_RELAXED) : 0;
}

int64_t conc_broker_queue_qsize(conc_broker_queue *q, double timeout)
{
    int64_t deadline;
    bool poll;
    if (!q || conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    conc_broker *b = q->b;
    amqp_queue_declare_t d = {
        .queue = amqp_cstring_bytes(q->name),
        .passive = 1,
        .arguments = amqp_empty_table,
    };
    int r = ctl_rpc(b, AMQP_QUEUE_DECLARE_METHOD, &d, AMQP_QUEUE_DECLARE_OK_METHOD,
                    setup_limit(b, deadline));
    if (r < 0)
        return conc__timeout_code(poll, r);
    return (int64_t)b->got_count;
}

/* conc_wait's question: would a get wait?  Starts consuming, takes in the
 * frames already there, and says. */
static int wait_check(void *obj, int *fd)
{
    conc_broker_queue *q = obj;
    conc_broker *b = q->b;
    *fd = -1;
    /* Held deliveries: a get would wait for their pause, which the
     * descriptor cannot tell. */
    if (q->head || q->nheld)
        return 1;
    if (q->cancelled)
        return -ENOENT;
    int r = queue_ready(q, true, setup_limit(b, 0));
    if (r < 0)
        return r;
    r = bk_pump(b, 0);
    if (r < 0 && r != -ETIMEDOUT)
        return r;
    if (q->head)
        return 1;
    bk_before_wait(b);
    if (!b->c)
        return -ECONNRESET;
    *fd = b->fd;
    return 0;
}
