/*
 * test_broker_faults.c - the paths of a broker queue's deliveries that a
 * well-behaved broker and a machine with memory never take: a body longer
 * than its header announced, a header announcing more than max_message,
 * and a delivery the client has no memory for (held, and given back to the
 * queue after a pause that grows, instead of coming straight back).
 *
 * The delivery code is internal: this test links the static library,
 * includes the internal header and makes allocations fail through its
 * hook (bk_delivery_alloc).  The first tests feed it crafted frames on a
 * connection whose far end is a socket pair the test reads (no broker);
 * the last ones run against the private RabbitMQ node of the other broker
 * tests, the ctest fixture's.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>

#include "conc/broker.h"
#include "conc/hub.h"
#include "conc/wait.h"
#include "broker_internal.h"
#include "support/rabbitmq_node.h"

#define HANG 30.0       /* a hang guard, never a speed */

/* ---- making allocations fail ---- */

static atomic_int alloc_calls;      /* calls of the hook */
static atomic_int fail_all;         /* every call fails */
static atomic_int fail_call;        /* this call (1-based) fails, 0: none */

static void *faulty_alloc(size_t n)
{
    int k = atomic_fetch_add(&alloc_calls, 1) + 1;
    if (atomic_load(&fail_all) || k == atomic_load(&fail_call))
        return NULL;
    return malloc(n);
}

static void faults(int all, int call)
{
    atomic_store(&alloc_calls, 0);
    atomic_store(&fail_all, all);
    atomic_store(&fail_call, call);
}

/* ---- a connection whose far end the test reads ---- */

struct fake {
    conc_broker b;
    conc_broker_queue q;
    int far;                        /* the far end of the socket pair */
};

#define CH 5

static void fake_open(struct fake *f, size_t max_message, size_t prefetch)
{
    memset(f, 0, sizeof *f);
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    f->b.c = amqp_new_connection();
    cr_assert_not_null(f->b.c);
    amqp_socket_t *s = amqp_tcp_socket_new(f->b.c);
    cr_assert_not_null(s);
    amqp_tcp_socket_set_sockfd(s, sv[0]);
    f->b.fd = sv[0];
    f->b.epoch = 1;
    f->b.opts.max_message = max_message;
    f->b.queues = &f->q;
    f->far = sv[1];
    f->q.b = &f->b;
    f->q.channel = CH;
    f->q.chan_epoch = 1;
    f->q.chan_open = true;
    f->q.opts.prefetch = (uint16_t)prefetch;
    f->q.held = calloc(prefetch, sizeof *f->q.held);
    cr_assert_not_null(f->q.held);
    f->q.held_cap = prefetch;
    bk_delivery_alloc = faulty_alloc;
    faults(0, 0);
}

static void fake_close(struct fake *f)
{
    struct bk_msg *m = f->q.head;
    while (m) {
        struct bk_msg *n = m->next;
        free(m->m.data);
        free(m);
        m = n;
    }
    if (f->q.partial) {
        free(f->q.partial->m.data);
        free(f->q.partial);
    }
    free(f->q.held);
    free(f->q.taken);
    free(f->q.taken_epoch);
    free(f->b.out.buf);
    amqp_destroy_connection(f->b.c);
    close(f->far);
}

static void deliver(struct fake *f, uint64_t tag)
{
    amqp_basic_deliver_t d = { .consumer_tag = amqp_cstring_bytes("c"),
                               .delivery_tag = tag,
                               .exchange = amqp_empty_bytes,
                               .routing_key = amqp_cstring_bytes("q") };
    amqp_frame_t fr;
    memset(&fr, 0, sizeof fr);
    fr.frame_type = AMQP_FRAME_METHOD;
    fr.channel = CH;
    fr.payload.method.id = AMQP_BASIC_DELIVER_METHOD;
    fr.payload.method.decoded = &d;
    bk_queue_deliver(&f->b, CH, &fr);
}

static void header(struct fake *f, uint64_t size)
{
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof p);
    amqp_frame_t fr;
    memset(&fr, 0, sizeof fr);
    fr.frame_type = AMQP_FRAME_HEADER;
    fr.channel = CH;
    fr.payload.properties.class_id = AMQP_BASIC_CLASS;
    fr.payload.properties.body_size = size;
    fr.payload.properties.decoded = &p;
    bk_queue_deliver(&f->b, CH, &fr);
}

static void body(struct fake *f, const char *bytes, size_t len)
{
    amqp_frame_t fr;
    memset(&fr, 0, sizeof fr);
    fr.frame_type = AMQP_FRAME_BODY;
    fr.channel = CH;
    fr.payload.body_fragment = (amqp_bytes_t){ .len = len, .bytes = (void *)bytes };
    bk_queue_deliver(&f->b, CH, &fr);
}

static uint64_t be(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

/* Reads the next frame the client sent, which must be a basic.reject on
 * the queue's channel, and gives its tag and requeue flag.  A rejection
 * made while reading is framed into the connection's buffer, which the
 * connection sends once it has read what came (or before it waits): sent
 * here as it would be. */
static void expect_reject(struct fake *f, uint64_t tag, bool requeue)
{
    cr_assert_eq(bk_out_flush(&f->b), 0);
    unsigned char buf[64];
    size_t have = 0;
    while (have < 7 || have < 8 + be(buf + 3, 4)) {
        struct pollfd p = { .fd = f->far, .events = POLLIN };
        cr_assert_eq(poll(&p, 1, (int)(HANG * 1000)), 1, "no frame came");
        ssize_t n = read(f->far, buf + have, have < 7 ? 7 - have : 8 + be(buf + 3, 4) - have);
        cr_assert_gt(n, 0);
        have += (size_t)n;
        cr_assert_leq(have, sizeof buf);
    }
    cr_assert_eq(buf[0], AMQP_FRAME_METHOD);
    cr_assert_eq(be(buf + 1, 2), CH);
    cr_assert_eq(be(buf + 3, 4), 13, "a basic.reject's payload");
    cr_assert_eq(be(buf + 7, 4), AMQP_BASIC_REJECT_METHOD);
    cr_assert_eq(be(buf + 11, 8), tag);
    cr_assert_eq(buf[19], requeue ? 1 : 0, "requeue");
    cr_assert_eq(buf[20], AMQP_FRAME_END);
}

/* Nothing more was sent. */
static void expect_silence(struct fake *f)
{
    cr_assert_eq(bk_out_flush(&f->b), 0);
    struct pollfd p = { .fd = f->far, .events = POLLIN };
    cr_assert_eq(poll(&p, 1, 0), 0, "the client sent a frame");
}

Test(broker_faults, body_longer_than_announced_rejected_unqueued)
{
    struct fake f;
    fake_open(&f, 1024, 4);
    deliver(&f, 1);
    header(&f, 5);
    body(&f, "abc", 3);
    body(&f, "defgh", 5);           /* 8 of 5 */
    expect_reject(&f, 1, false);
    cr_assert_null(f.q.head);
    cr_assert_null(f.q.partial);
    cr_assert_eq(conc_broker_queue_refused(&f.q), 1);
    /* A late fragment of it is ignored; the next delivery is whole. */
    body(&f, "ij", 2);
    deliver(&f, 2);
    header(&f, 5);
    body(&f, "ab", 2);
    body(&f, "cde", 3);
    expect_silence(&f);
    cr_assert_eq(f.q.nlocal, 1);
    cr_assert_eq(f.q.head->m.tag, 2);
    cr_assert_eq(f.q.head->m.len, 5);
    cr_assert_str_eq(f.q.head->m.data, "abcde");
    cr_assert_eq(conc_broker_queue_refused(&f.q), 1);
    fake_close(&f);
}

Test(broker_faults, header_over_max_message_rejected_unqueued)
{
    struct fake f;
    fake_open(&f, 16, 4);
    deliver(&f, 7);
    header(&f, 17);
    expect_reject(&f, 7, false);
    body(&f, "0123456789abcdefg", 17);  /* its body is ignored */
    expect_silence(&f);
    cr_assert_null(f.q.head);
    deliver(&f, 8);
    header(&f, 16);
    body(&f, "0123456789abcdef", 16);
    cr_assert_eq(f.q.nlocal, 1);
    cr_assert_eq(conc_broker_queue_refused(&f.q), 1);
    fake_close(&f);
}

/* A delivery with no memory for its record, then one with none for its
 * body: neither is given back at once; both go back together once the
 * pause is over, requeued; the pause doubles while refusals go on, and
 * is short again once a delivery fits. */
Test(broker_faults, no_memory_delivery_held_then_requeued_after_a_pause)
{
    struct fake f;
    fake_open(&f, 1024, 4);
    faults(1, 0);
    deliver(&f, 1);                 /* its record */
    header(&f, 3);
    body(&f, "abc", 3);
    faults(0, 2);
    deliver(&f, 2);
    header(&f, 3);                  /* its body */
    body(&f, "abc", 3);
    expect_silence(&f);
    cr_assert_null(f.q.head);
    cr_assert_eq(f.q.nheld, 2);
    cr_assert_eq(conc_broker_queue_refused(&f.q), 2);
    int64_t now = conc_now();
    cr_assert_gt(f.q.held_until, now - 1);
    cr_assert_eq(f.q.held_pause, BK_HELD_PAUSE_MIN);
    /* Not yet due: kept. */
    f.q.held_until = now + 3600LL * 1000000000;
    cr_assert_eq(bk_queue_release_held(&f.q, false), f.q.held_until);
    expect_silence(&f);
    /* Due. */
    f.q.held_until = now - 1;
    cr_assert_eq(bk_queue_release_held(&f.q, false), CONC_NO_DEADLINE);
    expect_reject(&f, 1, true);
    expect_reject(&f, 2, true);
    cr_assert_eq(f.q.nheld, 0);
    /* Refused again: a longer pause, then longer again. */
    faults(1, 0);
    deliver(&f, 3);
    cr_assert_eq(f.q.held_pause, 2 * BK_HELD_PAUSE_MIN);
    cr_assert_geq(f.q.held_until, now + BK_HELD_PAUSE_MIN);
    cr_assert_eq(bk_queue_release_held(&f.q, true), CONC_NO_DEADLINE);
    expect_reject(&f, 3, true);
    deliver(&f, 4);
    cr_assert_eq(f.q.held_pause, 4 * BK_HELD_PAUSE_MIN);
    cr_assert_eq(bk_queue_release_held(&f.q, true), CONC_NO_DEADLINE);
    expect_reject(&f, 4, true);
    /* Memory again: taken, and the next pause is the least. */
    faults(0, 0);
    deliver(&f, 5);
    header(&f, 1);
    body(&f, "x", 1);
    cr_assert_eq(f.q.nlocal, 1);
    cr_assert_eq(f.q.held_pause, 0);
    expect_silence(&f);
    fake_close(&f);
}

/* ---- acknowledgements and rejections into a full socket ---- */

/* Fills the client's side of the socket until it takes no more; returns
 * how many bytes went in. */
static size_t fill_socket(struct fake *f)
{
    int fl = fcntl(f->far, F_GETFL);
    cr_assert_eq(fcntl(f->far, F_SETFL, fl | O_NONBLOCK), 0);
    static unsigned char junk[65536];
    memset(junk, 0xAA, sizeof junk);
    size_t total = 0;
    for (;;) {
        ssize_t n = send(f->b.fd, junk, sizeof junk, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0) {
            cr_assert(errno == EAGAIN || errno == EWOULDBLOCK, "send: %d", errno);
            return total;
        }
        total += (size_t)n;
    }
}

/* A settling call into a full socket, and what the far end read. */
struct full_ack {
    struct fake *f;
    uint64_t tag;
    bool ack;                   /* task_done, else reject (requeued) */
    int rc;
    atomic_int busy;            /* the settling call is under way */
    int drained_while_busy;     /* reads made while it waited */
    unsigned char *got;
    size_t len, cap;
};

/* Reads what the far end has, without waiting, into s->got. */
static void drain(struct full_ack *s)
{
    for (;;) {
        if (s->cap - s->len < 65536) {
            s->cap = s->cap ? 2 * s->cap : 1 << 20;
            s->got = realloc(s->got, s->cap);
            cr_assert_not_null(s->got);
        }
        ssize_t n = read(s->f->far, s->got + s->len, s->cap - s->len);
        if (n <= 0)
            return;
        s->len += (size_t)n;
    }
}

static void *settler(void *arg)
{
    struct full_ack *s = arg;
    s->rc = s->ack ? conc_broker_queue_task_done(&s->f->q)
                   : conc_broker_queue_reject(&s->f->q, s->tag, true);
    atomic_store(&s->busy, 0);
    return NULL;
}

/* Runs only once the settling call parked: on a blocked thread it would
 * never run, and the socket would stay full. */
static void *reader(void *arg)
{
    struct full_ack *s = arg;
    while (atomic_load(&s->busy)) {
        drain(s);
        s->drained_while_busy++;
        conc_sleep(0.01);
    }
    return NULL;
}

/* task_done's acknowledgement, or a rejection, meets a socket the broker
 * does not read: the wait for room goes through conc's wait layer, so
 * only the calling coroutine parks; once the far end reads, the frame goes
 * out whole, after what filled the socket. */
static void settle_into_a_full_socket(bool ack)
{
    struct fake f;
    fake_open(&f, 1024, 1);
    deliver(&f, 7);
    header(&f, 3);
    body(&f, "abc", 3);
    conc_broker_msg m;
    cr_assert_eq(conc_broker_queue_get_nowait(&f.q, &m), 0);
    cr_assert_eq(m.tag, 7);
    conc_broker_msg_clear(&m);
    expect_silence(&f);
    size_t filled = fill_socket(&f);
    cr_assert_gt(filled, 0);
    static struct full_ack s;
    memset(&s, 0, sizeof s);
    s.f = &f;
    s.tag = 7;
    s.ack = ack;
    s.rc = 1;
    atomic_store(&s.busy, 1);
    conc_greenlet *g1, *g2;
    cr_assert_eq(conc_greenlet_spawn(&g1, settler, &s, NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&g2, reader, &s, NULL), 0);
    cr_assert_eq(conc_hub_run(), 0);
    conc_greenlet_free(g1);
    conc_greenlet_free(g2);
    cr_assert_eq(conc_hub_free(), 0);
    cr_assert_eq(s.rc, 0);
    cr_assert_gt(s.drained_while_busy, 0, "the other coroutine did not run");
    cr_assert_not_null(f.b.c, "the connection was dropped");
    drain(&s);
    /* The filler, then exactly one frame. */
    cr_assert_eq(s.len, filled + 21);
    for (size_t i = 0; i < filled; i++)
        cr_assert_eq(s.got[i], 0xAA);
    const unsigned char *fr = s.got + filled;
    cr_assert_eq(fr[0], AMQP_FRAME_METHOD);
    cr_assert_eq(be(fr + 1, 2), CH);
    cr_assert_eq(be(fr + 3, 4), 13);
    cr_assert_eq(be(fr + 7, 4), ack ? AMQP_BASIC_ACK_METHOD : AMQP_BASIC_REJECT_METHOD);
    cr_assert_eq(be(fr + 11, 8), 7);
    /* task_done's acknowledgement covers every earlier delivery
     * (multiple); the rejection requeues. */
    cr_assert_eq(fr[19], 1, "%s", ack ? "multiple" : "requeue");
    cr_assert_eq(fr[20], AMQP_FRAME_END);
    free(s.got);
    fake_close(&f);
}

Test(broker_faults, task_done_into_a_full_socket_parks_only_its_coroutine)
{
    settle_into_a_full_socket(true);
}

Test(broker_faults, reject_into_a_full_socket_parks_only_its_coroutine)
{
    settle_into_a_full_socket(false);
}

/* No more are held than the prefetch lets through (a basic.get beyond
 * it): the one beyond goes back at once. */
Test(broker_faults, no_memory_beyond_the_prefetch_requeued_at_once)
{
    struct fake f;
    fake_open(&f, 1024, 2);
    faults(1, 0);
    deliver(&f, 1);
    deliver(&f, 2);
    expect_silence(&f);
    deliver(&f, 3);
    expect_reject(&f, 3, true);
    cr_assert_eq(f.q.nheld, 2);
    cr_assert_eq(conc_broker_queue_refused(&f.q), 3);
    /* A lost channel gives them all back at the broker: none is sent. */
    bk_queue_reset(&f.q);
    cr_assert_eq(f.q.nheld, 0);
    cr_assert_eq(bk_queue_release_held(&f.q, true), CONC_NO_DEADLINE);
    expect_silence(&f);
    fake_close(&f);
}

/* ---- against the private node ---- */

static void setup_node(void)
{
    read_url();
    bk_delivery_alloc = faulty_alloc;
    faults(0, 0);
}

static void qname(char *buf, size_t cap, const char *what)
{
    snprintf(buf, cap, "conc-test-faults-%s-%d", what, (int)getpid());
}

/* While memory stays short, a refused message does not circle between
 * the broker and the client at full speed: a get of half a second sees a
 * handful of attempts (a delivery given back at once comes back within a
 * round trip: thousands).  Once memory is back it is delivered, with the
 * redelivered flag, once. */
Test(broker_faults, no_memory_refusals_back_off_and_the_message_comes, .init = setup_node,
     .timeout = 120)
{
    char name[128];
    qname(name, sizeof name, "backoff");
    conc_broker *b = NULL;
    cr_assert_eq(conc_broker_new(&b, url, NULL), 0);
    conc_broker_queue *q = NULL;
    cr_assert_eq(conc_broker_queue_new(&q, b, name, NULL, HANG), 0);
    cr_assert_eq(conc_broker_queue_put(q, "short", 5, HANG), 0);
    faults(1, 0);
    conc_broker_msg m = { 0 };
    cr_assert_eq(conc_broker_queue_get(q, &m, 0.5), -ETIMEDOUT);
    int tries = atomic_load(&alloc_calls);
    cr_assert_geq(tries, 1);
    cr_assert_leq(tries, 20, "%d attempts in half a second", tries);
    cr_assert_geq(conc_broker_queue_refused(q), 1);
    faults(0, 0);
    cr_assert_eq(conc_broker_queue_get(q, &m, HANG), 0);
    cr_assert_str_eq(m.data, "short");
    cr_assert(m.redelivered);
    conc_broker_msg_clear(&m);
    cr_assert_eq(conc_broker_queue_task_done(q), 0);
    cr_assert_eq(conc_broker_queue_get_nowait(q, &m), -EAGAIN);
    /* A handle that holds a refused delivery is ready for conc_wait: a get
     * gives it back when its pause is over, which the handle's descriptor
     * cannot tell.  (One held, as the refusal would leave it.) */
    conc_waitable w = { .kind = CONC_WAIT_BROKER, .u.broker_queue = q };
    cr_assert_eq(conc_wait(&w, 1, 0), -EAGAIN);
    q->held[0] = 1;
    q->nheld = 1;
    q->held_until = conc_now() + 3600LL * 1000000000;
    cr_assert_eq(conc_wait(&w, 1, 0), 1);
    q->nheld = 0;
    cr_assert_eq(conc_wait(&w, 1, 0), -EAGAIN);
    cr_assert_eq(conc_broker_queue_delete(q, HANG), 0);
    conc_broker_free(b);
}

/* A message held for want of memory between two taken ones: the batched
 * acknowledgement of the later one (multiple=true) must not cover it, so
 * it comes back and nothing is lost or given twice. */
Test(broker_faults, held_message_not_covered_by_a_batched_ack, .init = setup_node,
     .timeout = 120)
{
    char name[128];
    qname(name, sizeof name, "batch");
    conc_broker *b = NULL;
    cr_assert_eq(conc_broker_new(&b, url, NULL), 0);
    conc_broker_queue_opts o = CONC_BROKER_QUEUE_OPTS_INIT;
    o.prefetch = 4;
    conc_broker_queue *q = NULL;
    cr_assert_eq(conc_broker_queue_new(&q, b, name, &o, HANG), 0);
    cr_assert_eq(conc_broker_queue_put(q, "A", 1, HANG), 0);
    cr_assert_eq(conc_broker_queue_put(q, "B", 1, HANG), 0);
    cr_assert_eq(conc_broker_queue_put(q, "C", 1, HANG), 0);
    faults(0, 3);       /* A's record and body, then B's record fails */
    conc_broker_msg m = { 0 };
    cr_assert_eq(conc_broker_queue_get(q, &m, HANG), 0);
    cr_assert_str_eq(m.data, "A");
    conc_broker_msg_clear(&m);
    cr_assert_eq(conc_broker_queue_get(q, &m, HANG), 0);
    cr_assert_str_eq(m.data, "C");
    conc_broker_msg_clear(&m);
    cr_assert_eq(conc_broker_queue_refused(q), 1);
    cr_assert_eq(conc_broker_queue_task_done(q), 0);
    cr_assert_eq(conc_broker_queue_task_done(q), 0);
    cr_assert_eq(conc_broker_queue_get(q, &m, HANG), 0);
    cr_assert_str_eq(m.data, "B");
    cr_assert(m.redelivered);
    conc_broker_msg_clear(&m);
    cr_assert_eq(conc_broker_queue_task_done(q), 0);
    cr_assert_eq(conc_broker_queue_get_nowait(q, &m), -EAGAIN);
    conc_broker_queue_free(q);
    /* Settled in the broker: a new consumer finds nothing. */
    cr_assert_eq(conc_broker_queue_new(&q, b, name, NULL, HANG), 0);
    cr_assert_eq(conc_broker_queue_qsize(q, HANG), 0);
    cr_assert_eq(conc_broker_queue_get_nowait(q, &m), -EAGAIN);
    cr_assert_eq(conc_broker_queue_delete(q, HANG), 0);
    conc_broker_free(b);
}
