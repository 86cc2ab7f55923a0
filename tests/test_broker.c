/*
 * test_broker.c - conc/broker.h against a real RabbitMQ: the private node
 * scripts/rabbitmq.sh starts for these tests (the ctest fixture starts it
 * once and stops it after; the tests run one at a time, since some stop and
 * start it).  Round trips, pipelined confirmed puts, task_done and
 * redelivery after a consumer is killed, durable messages across a broker
 * restart, the broker stopped under load, wrong credentials, oversized
 * messages, publish/subscribe with patterns, conc_wait, coroutines.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>

#include "conc/broker.h"
#include "conc/time.h"
#include "conc/hub.h"
#include "conc/wait.h"
#include "support/rabbitmq_node.h"

#define HANG 30.0       /* a hang guard, never a speed */

/* A queue name of its own for each test (and run). */
static void qname(char *buf, size_t cap, const char *what)
{
    snprintf(buf, cap, "conc-test-%s-%d", what, (int)getpid());
}

static conc_broker *connect_ok(void)
{
    conc_broker *b = NULL;
    int r = conc_broker_new(&b, url, NULL);
    cr_assert_eq(r, 0, "connect %s: %s", url, conc_strerror(r));
    return b;
}

static conc_broker_queue *queue_ok(conc_broker *b, const char *name,
                                   const conc_broker_queue_opts *o)
{
    conc_broker_queue *q = NULL;
    int r = conc_broker_queue_new(&q, b, name, o, HANG);
    cr_assert_eq(r, 0, "queue %s: %s", name, conc_strerror(r));
    return q;
}

static void get_str(conc_broker_queue *q, const char *want_body, const char *want_key)
{
    conc_broker_msg m = { 0 };
    int r = conc_broker_queue_get(q, &m, HANG);
    cr_assert_eq(r, 0, "get: %s", conc_strerror(r));
    cr_assert_str_eq((char *)m.data, want_body);
    if (want_key)
        cr_assert_str_eq(m.routing_key, want_key);
    conc_broker_msg_clear(&m);
}

/* A queue of its own (qname(what)) whose dead letters go, through the
 * default exchange, to a second queue "<name>-dead": o gets the
 * dead-letter fields; both queues are made on b. */
struct dead_pair {
    char name[128], dead[140];
    conc_broker_queue *q, *dq;
};

static void dead_pair_ok(struct dead_pair *d, conc_broker *b, const char *what,
                         conc_broker_queue_opts *o)
{
    qname(d->name, sizeof d->name, what);
    snprintf(d->dead, sizeof d->dead, "%s-dead", d->name);
    d->dq = queue_ok(b, d->dead, NULL);
    o->dead_letter_exchange = "";
    o->dead_letter_key = d->dead;
    d->q = queue_ok(b, d->name, o);
}

static void setup(void)
{
    read_url();
}

TestSuite(broker, .init = setup, .timeout = 240);

Test(broker, round_trip_in_order_and_task_done)
{
    char name[128];
    qname(name, sizeof name, "rt");
    conc_broker *b = connect_ok();
    conc_broker_queue *q = queue_ok(b, name, NULL);
    cr_assert_str_eq(conc_broker_queue_name(q), name);
    const char *words[] = { "one", "two", "three" };
    for (int i = 0; i < 3; i++)
        cr_assert_eq(conc_broker_queue_put(q, words[i], strlen(words[i]), HANG), 0);
    cr_assert_eq(conc_broker_queue_qsize(q, HANG), 3);
    for (int i = 0; i < 3; i++) {
        conc_broker_msg m = { 0 };
        cr_assert_eq(conc_broker_queue_get(q, &m, HANG), 0);
        cr_assert_eq(m.len, strlen(words[i]));
        cr_assert_str_eq((char *)m.data, words[i]);
        cr_assert_not(m.redelivered);
        cr_assert_str_eq(m.routing_key, name);
        cr_assert_str_eq(m.exchange, "");
        conc_broker_msg_clear(&m);
        cr_assert_null(m.data);
    }
    cr_assert_eq(conc_broker_queue_unfinished(q), 3);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(conc_broker_queue_task_done(q), 0);
    cr_assert_eq(conc_broker_queue_task_done(q), -EOVERFLOW);
    cr_assert_eq(conc_broker_queue_unfinished(q), 0);
    conc_broker_msg m = { 0 };
    cr_assert_eq(conc_broker_queue_get_nowait(q, &m), -EAGAIN);
    cr_assert_eq(conc_broker_queue_get(q, &m, 0.2), -ETIMEDOUT);
    cr_assert_eq(conc_broker_queue_delete(q, HANG), 0);
    conc_broker_free(b);
}

Test(broker, empty_message_and_binary_bytes)
{
    char name[128];
    qname(name, sizeof name, "bin");
    conc_broker *b = connect_ok();
    conc_broker_queue *q = queue_ok(b, name, NULL);
    unsigned char bin[300];
    for (size_t i = 0; i < sizeof bin; i++)
        bin[i] = (unsigned char)(i * 7);
    cr_assert_eq(conc_broker_queue_put(q, NULL, 0, HANG), 0);
    cr_assert_eq(conc_broker_queue_put(q, bin, sizeof bin, HANG), 0);
    conc_broker_msg m = { 0 };
    cr_assert_eq(conc_broker_queue_get_nowait(q, &m), 0);
    cr_assert_eq(m.len, 0);
    conc_broker_msg_clear(&m);
    cr_assert_eq(conc_broker_queue_get(q, &m, HANG), 0);
    cr_assert_eq(m.len, sizeof bin);
    cr_assert_eq(memcmp(m.data, bin, sizeof bin), 0);
    conc_broker_msg_clear(&m);
    cr_assert_eq(conc_broker_queue_delete(q, HANG), 0);
    conc_broker_free(b);
}

Test(broker, pipelined_puts_then_flush_nothing_lost_or_duplicated)
{
    enum { N = 2000 };
    char name[128];
    qname(name, sizeof name, "pipe");
    conc_broker *b = connect_ok();
    conc_broker_queue *q = queue_ok(b, name, NULL);
    for (int i = 0; i < N; i++) {
        char buf[32];
        int n = snprintf(buf, sizeof buf, "%d", i);
        cr_assert_eq(conc_broker_queue_put_async(q, buf, (size_t)n, HANG), 0);
    }
    cr_assert_eq(conc_broker_flush(b, HANG), 0);
    cr_assert_eq(conc_broker_flush(b, 0), 0);         /* nothing left */
    cr_assert_eq(conc_broker_queue_qsize(q, HANG), N);
    static bool seen[N];
    memset(seen, 0, sizeof seen);
    for (int i = 0; i < N; i++) {
        conc_broker_msg m = { 0 };
        cr_assert_eq(conc_broker_queue_get(q, &m, HANG), 0);
        int v = atoi(m.data);
        cr_assert_eq(v, i, "out of order: %d at %d", v, i);
        cr_assert_not(seen[v]);
        seen[v] = true;
        conc_broker_msg_clear(&m);
        cr_assert_eq(conc_broker_queue_task_done(q), 0);
    }
    cr_assert_eq(conc_broker_queue_delete(q, HANG), 0);
    conc_broker_free(b);
}

Test(broker, simple_queue_acks_at_get)
{
    char name[128];
    qname(name, sizeof name, "simple");
    conc_broker *b = connect_ok();
    conc_broker_queue_opts o = CONC_BROKER_QUEUE_OPTS_INIT;
    o.simple = true;
    conc_broker_queue *q = queue_ok(b, name, &o);
    cr_assert_eq(conc_broker_queue_put(q, "x", 1, HANG), 0);
    conc_broker_msg m = { 0 };
    cr_assert_eq(conc_broker_queue_get(q, &m, HANG), 0);
    conc_broker_msg_clear(&m);
    cr_assert_eq(conc_broker_queue_task_done(q), -EINVAL);
    cr_assert_eq(conc_broker_queue_unfinished(q), 0);
    conc_broker_queue_free(q);
    /* Acknowledged: a new consumer finds nothing. */
    q = queue_ok(b, name, &o);
    cr_assert_eq(conc_broker_queue_qsize(q, HANG), 0);
    cr_assert_eq(conc_broker_queue_delete(q, HANG), 0);
    conc_broker_free(b);
}

Test(broker, unacknowledged_message_goes_back_when_handle_freed)
{
    char name[128];
    qname(name, sizeof name, "back");
    conc_broker *b = connect_ok();
    conc_broker_queue *q = queue_ok(b, name, NULL);
    cr_assert_eq(conc_broker_queue_put(q, "again", 5, HANG), 0);
    conc_broker_msg m = { 0 };
    cr_assert_eq(conc_broker_queue_get(q, &m, HANG), 0);
    cr_assert_not(m.redelivered);
    conc_broker_msg_clear(&m);
    conc_broker_queue_free(q);              /* no task_done */
    q = queue_ok(b, name, NULL);
    cr_assert_eq(conc_broker_queue_get(q, &m, HANG), 0);
    cr_assert_str_eq((char *)m.data, "again");
    cr_assert(m.redelivered);
    cr_assert_eq(conc_broker_queue_ack(q, m.tag + 1000), -ENOENT);
    cr_assert_eq(conc_broker_queue_ack(q, m.tag), 0);
    conc_broker_msg_clear(&m);
    cr_assert_eq(conc_broker_queue_delete(q, HANG), 0);
    conc_broker_free(b);
}

/* A freed queue's channel number is used again: one connection makes and
 * frees more queue handles than it has channels (RabbitMQ's channel_max,
 * 2047), and each opens its channel; a handle that lives through it all
 * keeps its own channel and its messages. */
Test(broker, channels_of_freed_queues_are_used_again)
{
    char name[128], kept_name[140];
    qname(name, sizeof name, "chans");
    snprintf(kept_name, sizeof kept_name, "%s-kept", name);
    conc_broker *b = connect_ok();
    conc_broker_queue *kept = queue_ok(b, kept_name, NULL);
    conc_broker_msg m = { 0 };
    cr_assert_eq(conc_broker_queue_get_nowait(kept, &m), -EAGAIN);  /* opens its channel */
    for (int i = 0; i < 2100; i++) {
        conc_broker_queue *q = queue_ok(b, name, NULL);
        int r = conc_broker_queue_get_nowait(q, &m);
        cr_assert_eq(r, -EAGAIN, "handle %d: %s", i, conc_strerror(r));
        conc_broker_queue_free(q);
    }
    cr_assert_eq(conc_broker_reconnects(b), 0);
    /* A consuming handle still works, beside the one that lived through it. */
    conc_broker_queue *q = queue_ok(b, name, NULL);
    cr_assert_eq(conc_broker_queue_put(q, "late", 4, HANG), 0);
    cr_assert_eq(conc_broker_queue_put(kept, "kept", 4, HANG), 0);
    get_str(q, "late", NULL);
    get_str(kept, "kept", NULL);
    cr_assert_eq(conc_broker_queue_task_done(q), 0);
    cr_assert_eq(conc_broker_queue_task_done(kept), 0);
    cr_assert_eq(conc_broker_queue_delete(q, HANG), 0);
    cr_assert_eq(conc_broker_queue_delete(kept, HANG), 0);
    conc_broker_free(b);
}

Test(broker, consumer_killed_before_task_done_message_redelivered)
{
    char name[128];
    qname(name, sizeof name, "kill");
    conc_broker *b = connect_ok();
    conc_broker_queue *q = queue_ok(b, name, NULL);
    cr_assert_eq(conc_broker_queue_put(q, "job-1", 5, HANG), 0);
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        /* The consumer: its own connection; takes the job, never acks. */
        close(fds[0]);
        conc_broker *cb;
        conc_broker_queue *cq;
        conc_broker_msg m = { 0 };
        if (conc_broker_new(&cb, url, NULL) || conc_broker_queue_new(&cq, cb, name, NULL, HANG) ||
            conc_broker_queue_get(cq, &m, HANG))
            _exit(1);
        char c = m.len == 5 && memcmp(m.data, "job-1", 5) == 0 ? 'y' : 'n';
        if (write(fds[1], &c, 1) != 1)
            _exit(1);
        for (;;)
            pause();
    }
    close(fds[1]);
    char c = 0;
    cr_assert_eq(read(fds[0], &c, 1), 1, "the consumer did not take the job");
    cr_assert_eq(c, 'y');
    cr_assert_eq(kill(pid, SIGKILL), 0);
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    close(fds[0]);
    conc_broker_msg m = { 0 };
    cr_assert_eq(conc_broker_queue_get(q, &m, HANG), 0);
    cr_assert_eq(m.len, 5);
    cr_assert_eq(memcmp(m.data, "job-1", 5), 0);
    cr_assert(m.redelivered, "a message taken by a killed consumer comes back redelivered");
    conc_broker_msg_clear(&m);
    cr_assert_eq(conc_broker_queue_task_done(q), 0);
    cr_assert_eq(conc_broker_queue_get(q, &m, 0.2), -ETIMEDOUT);    /* exactly once */
    cr_assert_eq(conc_broker_queue_delete(q, HANG), 0);
    conc_broker_free(b);
}

Test(broker, wrong_credentials_eacces)
{
    char bad[300];
    const char *at = strchr(url, '@');
    cr_assert_not_null(at);
    snprintf(bad, sizeof bad, "amqp://guest:wrong%s", at);
    conc_broker *b = NULL;
    cr_assert_eq(conc_broker_new(&b, bad, NULL), -EACCES);
    cr_assert_null(b);
    snprintf(bad, sizeof bad, "amqp://nobody:guest%s", at);
    cr_assert_eq(conc_broker_new(&b, bad, NULL), -EACCES);
}

Test(broker, broker_down_and_bad_urls)
{
    /* A port nothing listens on: the node's own, plus one, is not ours to
     * guess; bind one, close it, and use it. */
    int s = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(s, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t al = sizeof a;
    cr_assert_eq(bind(s, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(getsockname(s, (struct sockaddr *)&a, &al), 0);
    close(s);
    char down[128];
    snprintf(down, sizeof down, "amqp://guest:guest@127.0.0.1:%d/", ntohs(a.sin_port));
    conc_broker *b = NULL;
    cr_assert_eq(conc_broker_new(&b, down, NULL), -ECONNREFUSED);
    cr_assert_eq(conc_broker_new(&b, "http://x/", NULL), -EINVAL);
    cr_assert_eq(conc_broker_new(&b, "amqp://h:99999/", NULL), -EINVAL);
    cr_assert_eq(conc_broker_new(&b, "", NULL), -EINVAL);
    cr_assert_eq(conc_broker_new(NULL, url, NULL), -EINVAL);
    cr_assert_eq(conc_broker_new(&b, NULL, NULL), -EINVAL);
    b = connect_ok();
    conc_broker_queue *q = NULL;
    cr_assert_eq(conc_broker_queue_new(&q, b, "", NULL, HANG), -EINVAL);
    char longname[300];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    cr_assert_eq(conc_broker_queue_new(&q, b, longname, NULL, HANG), -EINVAL);
    conc_broker_queue_opts o = CONC_BROKER_QUEUE_OPTS_INIT;
    o.passive = true;
    cr_assert_eq(conc_broker_queue_new(&q, b, "conc-test-no-such-queue", &o, HANG), -ENOENT);
    /* The connection is still usable after a refused declaration. */
    char name[128];
    qname(name, sizeof name, "after");
    q = queue_ok(b, name, NULL);
    cr_assert_eq(conc_broker_queue_put(q, "ok", 2, HANG), 0);
    /* Declaring it again as transient conflicts with the durable one. */
    conc_broker_queue *q2 = NULL;
    o = (conc_broker_queue_opts)CONC_BROKER_QUEUE_OPTS_INIT;
    o.transient = true;
    cr_assert_eq(conc_broker_queue_new(&q2, b, name, &o, HANG), -EEXIST);
    cr_assert_eq(conc_broker_queue_qsize(q, HANG), 1);
    cr_assert_eq(conc_broker_publish(b, "conc-test-no-such-exchange", "k", "x", 1, HANG),
                 -ENOENT);
    cr_assert_eq(conc_broker_queue_put(q, "ok", 2, HANG), 0);    /* puts work again */
    cr_assert_eq(conc_broker_queue_qsize(q, HANG), 2);
    cr_assert_eq(conc_broker_queue_delete(q, HANG), 0);
    conc_broker_free(b);
}

Test(broker, oversized_message_emsgsize)
{
    char name[128];
    qname(name, sizeof name, "big");
    conc_broker_opts bo = CONC_BROKER_OPTS_INIT;
    bo.max_message = 4096;
    conc_broker *b = NULL;
    cr_assert_eq(conc_broker_new(&b, url, &bo), 0);
    conc_broker_queue *q = queue_ok(b, name, NULL);
    char *big = calloc(1, 8192);
    cr_assert_not_null(big);
    cr_assert_eq(conc_broker_queue_put(q, big, 4097, HANG), -EMSGSIZE);
    cr_assert_eq(conc_broker_queue_put_async(q, big, 8192, HANG), -EMSGSIZE);
    cr_assert_eq(conc_broker_publish(b, "amq.fanout", "", big, 4097, HANG), -EMSGSIZE);
    cr_assert_eq(conc_broker_queue_put(q, big, 4096, HANG), 0);  /* the limit itself */
    cr_assert_eq(conc_broker_queue_qsize(q, HANG), 1);
    /* Larger than a frame (frame_max 128 KiB) still makes one message. */
    conc_broker *b2 = connect_ok();
    conc_broker_queue *q2 = queue_ok(b2, name, NULL);
    size_t n = 300000;
    char *huge = malloc(n);
    cr_assert_not_null(huge);
    for (size_t i = 0; i < n; i++)
        huge[i] = (char)('a' + i % 26);
    cr_assert_eq(conc_broker_queue_put(q2, huge, n, HANG), 0);
    conc_broker_msg m = { 0 };
    cr_assert_eq(conc_broker_queue_get(q2, &m, HANG), 0);
    cr_assert_eq(m.len, 4096);
    conc_broker_msg_clear(&m);
    cr_assert_eq(conc_broker_queue_get(q2, &m, HANG), 0);
    cr_assert_eq(m.len, n);
    cr_assert_eq(memcmp(m.data, huge, n), 0);
    conc_broker_msg_clear(&m);
    /* Over the broker's own limit (the private node's max_message_size is
     * 16 MiB) but within the client's: the broker refuses it. */
    conc_broker_opts lo = CONC_BROKER_OPTS_INIT;
    lo.max_message = 32 << 20;
    conc_broker *b3 = NULL;
    cr_assert_eq(conc_broker_new(&b3, url, &lo), 0);
    conc_broker_queue *q3 = queue_ok(b3, name, NULL);
    size_t over = (16 << 20) + 1;
    char *obig = calloc(1, over);
    cr_assert_not_null(obig);
    cr_assert_eq(conc_broker_queue_put(q3, obig, over, HANG), -EMSGSIZE);
    cr_assert_eq(conc_broker_queue_put(q3, "fits", 4, HANG), 0);    /* and goes on */
    free(obig);
    conc_broker_queue_free(q3);
    conc_broker_free(b3);
    free(big);
    free(huge);
    cr_assert_eq(conc_broker_queue_delete(q2, HANG), 0);
    conc_broker_queue_free(q);
    conc_broker_free(b2);
    conc_broker_free(b);
}

/* A consumer with prefetch 1 whose size limit is below a message's: the
 * message is refused (counted, to the dead-letter queue), and the small one
 * behind it is still delivered. */
Test(broker, oversized_delivery_refused_and_next_one_delivered)
{
    conc_broker_opts bo = CONC_BROKER_OPTS_INIT;
    bo.max_message = 64;
    conc_broker *b = NULL;
    cr_assert_eq(conc_broker_new(&b, url, &bo), 0);
    conc_broker_queue_opts o = CONC_BROKER_QUEUE_OPTS_INIT;
    o.prefetch = 1;
    struct dead_pair d;
    dead_pair_ok(&d, b, "refuse", &o);
    /* Sent by a connection without the limit. */
    conc_broker *pb = connect_ok();
    conc_broker_queue *pq = queue_ok(pb, d.name, &o);
    char big[200];
    memset(big, 'x', sizeof big);
    cr_assert_eq(conc_broker_queue_put(pq, big, sizeof big, HANG), 0);
    cr_assert_eq(conc_broker_queue_put(pq, "small", 5, HANG), 0);
    cr_assert_eq(conc_broker_queue_refused(d.q), 0);
    get_str(d.q, "small", NULL);
    cr_assert_eq(conc_broker_queue_task_done(d.q), 0);
    cr_assert_eq(conc_broker_queue_refused(d.q), 1);
    conc_broker_msg m = { 0 };
    cr_assert_eq(conc_broker_queue_get_nowait(d.q, &m), -EAGAIN);
    /* The big one waits in the dead-letter queue, whole. */
    conc_broker_queue *pdq = queue_ok(pb, d.dead, NULL);
    cr_assert_eq(conc_broker_queue_get(pdq, &m, HANG), 0);
    cr_assert_eq(m.len, sizeof big);
    cr_assert_eq(memcmp(m.data, big, sizeof big), 0);
    conc_broker_msg_clear(&m);
    cr_assert_eq(conc_broker_queue_task_done(pdq), 0);
    cr_assert_eq(conc_broker_queue_refused(pdq), 0);
    cr_assert_eq(conc_broker_queue_refused(NULL), 0);
    cr_assert_eq(conc_broker_queue_delete(pq, HANG), 0);
    cr_assert_eq(conc_broker_queue_delete(pdq, HANG), 0);
    conc_broker_queue_free(d.q);
    conc_broker_queue_free(d.dq);
    conc_broker_free(pb);
    conc_broker_free(b);
}

Test(broker, topic_subscriptions_match_patterns)
{
    char ex[128];
    qname(ex, sizeof ex, "topic");
    conc_broker *b = connect_ok();
    conc_broker_queue *nyse, *stocks, *all;
    const char *p1[] = { "stock.*.nyse" };
    const char *p2[] = { "stock.#", "index.*" };
    const char *p3[] = { "#" };
    cr_assert_eq(conc_broker_subscribe(&nyse, b, ex, CONC_BROKER_TOPIC, p1, 1, NULL, HANG), 0);
    cr_assert_eq(conc_broker_subscribe(&stocks, b, ex, CONC_BROKER_TOPIC, p2, 2, NULL, HANG), 0);
    cr_assert_eq(conc_broker_subscribe(&all, b, ex, CONC_BROKER_TOPIC, p3, 1, NULL, HANG), 0);
    cr_assert_str_neq(conc_broker_queue_name(nyse), "");
    conc_broker *pb = connect_ok();
    const char *topics[] = { "stock.ibm.nyse", "stock.ibm.lse", "weather.paris", "index.dow",
                             "end" };
    for (int i = 0; i < 5; i++)
        cr_assert_eq(conc_broker_publish(pb, ex, topics[i], topics[i], strlen(topics[i]), HANG),
                     0);
    /* Each subscriber sees what matches, in order; "end" matches only "#". */
    get_str(nyse, "stock.ibm.nyse", "stock.ibm.nyse");
    get_str(stocks, "stock.ibm.nyse", NULL);
    get_str(stocks, "stock.ibm.lse", NULL);
    get_str(stocks, "index.dow", NULL);
    for (int i = 0; i < 5; i++)
        get_str(all, topics[i], topics[i]);
    cr_assert_eq(conc_broker_queue_qsize(nyse, HANG), 0);
    cr_assert_eq(conc_broker_queue_qsize(stocks, HANG), 0);
    /* Nothing more was queued for them: a last message to all arrives
     * next. */
    cr_assert_eq(conc_broker_publish(pb, ex, "stock.x.nyse", "last", 4, HANG), 0);
    get_str(nyse, "last", NULL);
    get_str(stocks, "last", NULL);
    conc_broker_queue_free(nyse);
    conc_broker_queue_free(stocks);
    conc_broker_queue_free(all);
    conc_broker_free(pb);
    conc_broker_free(b);
}

Test(broker, fanout_every_subscriber_gets_every_message)
{
    char ex[128];
    qname(ex, sizeof ex, "fan");
    conc_broker *b = connect_ok();
    cr_assert_eq(conc_broker_exchange_declare(b, ex, CONC_BROKER_FANOUT, false, HANG), 0);
    cr_assert_eq(conc_broker_exchange_declare(b, ex, CONC_BROKER_TOPIC, false, HANG), -EEXIST);
    cr_assert_eq(conc_broker_exchange_declare(b, "amq.x", CONC_BROKER_TOPIC, true, HANG),
                 -EINVAL);
    conc_broker_queue *s[3];
    conc_broker_queue_opts o = CONC_BROKER_QUEUE_OPTS_INIT;
    o.simple = true;
    for (int i = 0; i < 3; i++)
        cr_assert_eq(conc_broker_subscribe(&s[i], b, ex, CONC_BROKER_FANOUT, NULL, 0, &o, HANG),
                     0);
    for (int k = 0; k < 10; k++) {
        char buf[16];
        snprintf(buf, sizeof buf, "m%d", k);
        cr_assert_eq(conc_broker_publish_async(b, ex, "ignored", buf, strlen(buf), HANG), 0);
    }
    cr_assert_eq(conc_broker_flush(b, HANG), 0);
    for (int i = 0; i < 3; i++)
        for (int k = 0; k < 10; k++) {
            char buf[16];
            snprintf(buf, sizeof buf, "m%d", k);
            get_str(s[i], buf, "ignored");
        }
    for (int i = 0; i < 3; i++)
        conc_broker_queue_free(s[i]);
    conc_broker_free(b);
}

Test(broker, conc_wait_on_a_broker_queue)
{
    char name[128];
    qname(name, sizeof name, "wait");
    conc_broker *b = connect_ok();
    conc_broker_queue *q = queue_ok(b, name, NULL);
    int efd[2];
    cr_assert_eq(pipe(efd), 0);
    conc_waitable w[2] = { { .kind = CONC_WAIT_BROKER, .u.broker_queue = q },
                           { .kind = CONC_WAIT_FD, .u.fd = efd[0] } };
    cr_assert_eq(conc_wait(w, 2, 0), -EAGAIN);
    cr_assert_eq(conc_wait(w, 2, 0.2), -ETIMEDOUT);
    conc_broker *pb = connect_ok();
    conc_broker_queue *pq = queue_ok(pb, name, NULL);
    cr_assert_eq(conc_broker_queue_put(pq, "ready", 5, HANG), 0);
    cr_assert_eq(conc_wait(w, 2, HANG), 1);
    cr_assert(w[0].ready);
    cr_assert_not(w[1].ready);
    conc_broker_msg m = { 0 };
    cr_assert_eq(conc_broker_queue_get_nowait(q, &m), 0);
    cr_assert_str_eq((char *)m.data, "ready");
    conc_broker_msg_clear(&m);
    cr_assert_eq(conc_broker_queue_task_done(q), 0);
    cr_assert_eq(conc_wait(w, 2, 0), -EAGAIN);
    struct conc_waitable bad = { .kind = CONC_WAIT_BROKER };
    cr_assert_eq(conc_wait(&bad, 1, 0), -EINVAL);
    close(efd[0]);
    close(efd[1]);
    conc_broker_queue_free(pq);
    cr_assert_eq(conc_broker_queue_delete(q, HANG), 0);
    conc_broker_free(pb);
    conc_broker_free(b);
}

/* Coroutines: a get parks only its coroutine. */
struct coro_state {
    char name[128];
    atomic_int getting;         /* the getter is about to call get */
    atomic_int putter_ran;      /* the putter ran while the getter waited */
    int get_result;
    int saw_putter;
    char got[16];
    int put_result;
};

static void *coro_getter(void *arg)
{
    struct coro_state *s = arg;
    conc_broker *b;
    conc_broker_queue *q;
    s->get_result = -1;
    if (conc_broker_new(&b, url, NULL))
        return NULL;
    if (conc_broker_queue_new(&q, b, s->name, NULL, HANG) == 0) {
        conc_broker_msg m = { 0 };
        atomic_store(&s->getting, 1);   /* no switch between this and get */
        s->get_result = conc_broker_queue_get(q, &m, HANG);
        s->saw_putter = atomic_load(&s->putter_ran);
        if (s->get_result == 0) {
            snprintf(s->got, sizeof s->got, "%s", (char *)m.data);
            conc_broker_queue_task_done(q);
        }
        conc_broker_msg_clear(&m);
        conc_broker_queue_delete(q, HANG);
    }
    conc_broker_free(b);
    return NULL;
}

static void *coro_putter(void *arg)
{
    struct coro_state *s = arg;
    conc_broker *b;
    conc_broker_queue *q;
    s->put_result = -1;
    if (conc_broker_new(&b, url, NULL))
        return NULL;
    if (conc_broker_queue_new(&q, b, s->name, NULL, HANG) == 0) {
        /* Coroutines switch only where they wait: once the getter has
         * said it is getting and this one runs again, the getter is parked
         * inside its get. */
        while (!atomic_load(&s->getting))
            conc_sleep(0);
        atomic_store(&s->putter_ran, 1);
        s->put_result = conc_broker_queue_put(q, "from-coro", 9, HANG);
        conc_broker_queue_free(q);
    }
    conc_broker_free(b);
    return NULL;
}

Test(broker, calls_from_coroutines_park_only_the_coroutine)
{
    static struct coro_state s;
    memset(&s, 0, sizeof s);
    qname(s.name, sizeof s.name, "coro");
    /* The queue exists before either coroutine starts. */
    conc_broker *b = connect_ok();
    conc_broker_queue *q = queue_ok(b, s.name, NULL);
    conc_broker_queue_free(q);
    conc_broker_free(b);
    conc_greenlet *g1, *g2;
    cr_assert_eq(conc_greenlet_spawn(&g1, coro_getter, &s, NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&g2, coro_putter, &s, NULL), 0);
    cr_assert_eq(conc_hub_run(), 0);
    cr_assert_eq(s.put_result, 0);
    cr_assert_eq(s.get_result, 0, "get: %s", conc_strerror(s.get_result));
    cr_assert_str_eq(s.got, "from-coro");
    cr_assert(s.saw_putter, "the getter returned before the putter ran");
    conc_greenlet_free(g1);
    conc_greenlet_free(g2);
    cr_assert_eq(conc_hub_free(), 0);
}

Test(broker, durable_messages_survive_a_broker_restart)
{
    char name[128];
    qname(name, sizeof name, "durable");
    conc_broker *b = connect_ok();
    conc_broker_queue *q = queue_ok(b, name, NULL);
    cr_assert_eq(conc_broker_queue_put(q, "kept", 4, HANG), 0);
    conc_broker_queue_opts to = CONC_BROKER_QUEUE_OPTS_INIT;
    to.transient = true;
    char tname[140];
    snprintf(tname, sizeof tname, "%s-t", name);
    conc_broker_queue *tq = queue_ok(b, tname, &to);
    cr_assert_eq(conc_broker_queue_put(tq, "lost", 4, HANG), 0);
    conc_broker_queue_free(tq);
    /* Kept across the restart: a transient queue, and a subscription to a
     * transient exchange; the reconnection declares them again. */
    char kname[140], ex[140];
    snprintf(kname, sizeof kname, "%s-k", name);
    snprintf(ex, sizeof ex, "%s-x", name);
    conc_broker_queue *kq = queue_ok(b, kname, &to);
    cr_assert_eq(conc_broker_exchange_declare(b, ex, CONC_BROKER_TOPIC, true, HANG), 0);
    const char *pat[] = { "a.*" };
    conc_broker_queue *sub;
    cr_assert_eq(conc_broker_subscribe(&sub, b, ex, CONC_BROKER_TOPIC, pat, 1, NULL, HANG), 0);
    node("stop");
    /* While it is down: a clear error, quickly, not a hang. */
    conc_broker_msg m = { 0 };
    int r = conc_broker_queue_get(q, &m, 0.5);
    cr_assert(r == -ECONNRESET || r == -ECONNREFUSED, "get with the broker down: %s",
              conc_strerror(r));
    node("start");
    /* The same handle reconnects and finds the persisted message. */
    r = conc_broker_queue_get(q, &m, HANG);
    cr_assert_eq(r, 0, "get after the restart: %s", conc_strerror(r));
    cr_assert_str_eq((char *)m.data, "kept");
    conc_broker_msg_clear(&m);
    cr_assert_eq(conc_broker_queue_task_done(q), 0);
    cr_assert_geq(conc_broker_reconnects(b), 1);
    conc_broker_queue_opts po = CONC_BROKER_QUEUE_OPTS_INIT;
    po.passive = true;
    cr_assert_eq(conc_broker_queue_new(&tq, b, tname, &po, HANG), -ENOENT,
                 "a transient queue does not survive a restart");
    cr_assert_eq(conc_broker_queue_put(kq, "k", 1, HANG), 0);
    get_str(kq, "k", kname);
    cr_assert_eq(conc_broker_queue_task_done(kq), 0);
    cr_assert_eq(conc_broker_publish(b, ex, "a.b", "routed", 6, HANG), 0);
    get_str(sub, "routed", "a.b");
    cr_assert_eq(conc_broker_queue_task_done(sub), 0);
    conc_broker_queue_free(sub);
    conc_broker_queue_free(kq);
    cr_assert_eq(conc_broker_queue_delete(q, HANG), 0);
    conc_broker_free(b);
}

/* The broker stopped under load: a thread puts, confirmed, numbered
 * messages while the node is stopped and started again. */
struct load {
    char name[128];
    atomic_int confirmed_count;
    atomic_int errors;
    atomic_int stop;
    bool confirmed[100000];
    int bad_error;
    int sent;
};

static void *load_run(void *arg)
{
    struct load *l = arg;
    conc_broker_opts o = CONC_BROKER_OPTS_INIT;
    o.retry_max = 0.5;
    conc_broker *b;
    if (conc_broker_new(&b, url, &o))
        return NULL;
    conc_broker_queue *q;
    if (conc_broker_queue_new(&q, b, l->name, NULL, HANG)) {
        conc_broker_free(b);
        return NULL;
    }
    for (int i = 0; i < 100000 && !atomic_load(&l->stop); i++) {
        char buf[16];
        int n = snprintf(buf, sizeof buf, "%d", i);
        l->sent = i + 1;
        int r = conc_broker_queue_put(q, buf, (size_t)n, 2.0);
        if (r == 0) {
            l->confirmed[i] = true;
            atomic_fetch_add(&l->confirmed_count, 1);
        } else if (r == -ECONNRESET || r == -ECONNREFUSED || r == -ETIMEDOUT) {
            atomic_fetch_add(&l->errors, 1);
        } else {
            l->bad_error = r;
            break;
        }
    }
    conc_broker_queue_free(q);
    conc_broker_free(b);
    return NULL;
}

Test(broker, broker_stopped_under_load_nothing_confirmed_is_lost)
{
    static struct load l;
    memset(&l, 0, sizeof l);
    qname(l.name, sizeof l.name, "load");
    conc_broker *b = connect_ok();
    conc_broker_queue *q = queue_ok(b, l.name, NULL);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, load_run, &l), 0);
    int64_t guard = conc_now() + (int64_t)(HANG * 1e9);
    while (atomic_load(&l.confirmed_count) < 200 && conc_now() < guard)
        conc_sleep(0.01);
    cr_assert_geq(atomic_load(&l.confirmed_count), 200);
    node("stop");
    while (atomic_load(&l.errors) < 2 && conc_now() < guard)
        conc_sleep(0.01);
    cr_assert_geq(atomic_load(&l.errors), 2, "puts with the broker down gave no error");
    int before = atomic_load(&l.confirmed_count);
    node("start");
    guard = conc_now() + (int64_t)(HANG * 1e9);
    while (atomic_load(&l.confirmed_count) < before + 200 && conc_now() < guard)
        conc_sleep(0.01);
    atomic_store(&l.stop, 1);
    cr_assert_eq(pthread_join(t, NULL), 0);
    cr_assert_eq(l.bad_error, 0, "unexpected put error %s", conc_strerror(l.bad_error));
    cr_assert_geq(atomic_load(&l.confirmed_count), before + 200, "puts did not resume");
    /* Every confirmed message is in the queue (unconfirmed ones may be). */
    static bool got[100000];
    memset(got, 0, sizeof got);
    for (;;) {
        conc_broker_msg m = { 0 };
        int r = conc_broker_queue_get(q, &m, 1.0);
        if (r == -ETIMEDOUT)
            break;
        cr_assert_eq(r, 0, "get: %s", conc_strerror(r));
        int v = atoi(m.data);
        cr_assert(v >= 0 && v < l.sent);
        got[v] = true;
        conc_broker_msg_clear(&m);
        cr_assert_eq(conc_broker_queue_task_done(q), 0);
    }
    int missing = 0;
    for (int i = 0; i < l.sent; i++)
        if (l.confirmed[i] && !got[i])
            missing++;
    cr_assert_eq(missing, 0, "%d confirmed messages lost", missing);
    cr_assert_eq(conc_broker_queue_delete(q, HANG), 0);
    conc_broker_free(b);
}

Test(broker, properties_for_request_reply)
{
    char name[128];
    qname(name, sizeof name, "props");
    conc_broker *b = connect_ok();
    conc_broker_queue *q = queue_ok(b, name, NULL);
    conc_broker_props p = CONC_BROKER_PROPS_INIT;
    p.correlation_id = "task-42";
    p.reply_to = "replies-7";
    cr_assert_eq(conc_broker_publish_props(b, "", name, "req", 3, &p, HANG), 0);
    cr_assert_eq(conc_broker_publish_props_async(b, "", name, "plain", 5, NULL, HANG), 0);
    cr_assert_eq(conc_broker_flush(b, HANG), 0);
    conc_broker_msg m = { 0 };
    cr_assert_eq(conc_broker_queue_get(q, &m, HANG), 0);
    cr_assert_str_eq((char *)m.data, "req");
    cr_assert_str_eq(m.correlation_id, "task-42");
    cr_assert_str_eq(m.reply_to, "replies-7");
    cr_assert_eq(m.delivery_count, 0);
    conc_broker_msg_clear(&m);
    cr_assert_eq(conc_broker_queue_get(q, &m, HANG), 0);
    cr_assert_str_eq((char *)m.data, "plain");
    cr_assert_str_eq(m.correlation_id, "");
    cr_assert_str_eq(m.reply_to, "");
    conc_broker_msg_clear(&m);
    char longp[300];
    memset(longp, 'x', sizeof longp - 1);
    longp[sizeof longp - 1] = '\0';
    p.correlation_id = longp;
    cr_assert_eq(conc_broker_publish_props(b, "", name, "x", 1, &p, HANG), -EINVAL);
    cr_assert_eq(conc_broker_queue_delete(q, HANG), 0);
    conc_broker_free(b);
}

Test(broker, delivery_limit_dead_letters_a_poison_message)
{
    conc_broker *b = connect_ok();
    conc_broker_queue_opts o = CONC_BROKER_QUEUE_OPTS_INIT;
    o.delivery_limit = 2;
    struct dead_pair d;
    dead_pair_ok(&d, b, "poison", &o);
    conc_broker_queue *q = d.q, *dq = d.dq;
    cr_assert_eq(conc_broker_queue_put(q, "poison", 6, HANG), 0);
    /* Every delivery is given back (as a crashing worker would); the count
     * grows until the broker stops delivering it. */
    uint32_t last = 0;
    int deliveries = 0;
    for (;;) {
        conc_broker_msg m = { 0 };
        int r = conc_broker_queue_get(q, &m, deliveries == 0 ? HANG : 2.0);
        if (r == -ETIMEDOUT)
            break;
        cr_assert_eq(r, 0, "get: %s", conc_strerror(r));
        cr_assert_eq(m.delivery_count, (uint32_t)deliveries, "delivery %d counted %u",
                     deliveries, m.delivery_count);
        last = m.delivery_count;
        deliveries++;
        cr_assert_leq(deliveries, 3, "delivered past its limit");
        cr_assert_eq(conc_broker_queue_reject(q, m.tag, true), 0);
        conc_broker_msg_clear(&m);
    }
    cr_assert_eq(deliveries, 3);
    cr_assert_eq(last, 2);
    get_str(dq, "poison", NULL);
    cr_assert_eq(conc_broker_queue_task_done(dq), 0);
    conc_broker_queue_opts bad = CONC_BROKER_QUEUE_OPTS_INIT;
    bad.delivery_limit = 1;
    bad.exclusive = true;
    conc_broker_queue *x = NULL;
    cr_assert_eq(conc_broker_queue_new(&x, b, "conc-test-bad", &bad, HANG), -EINVAL);
    cr_assert_eq(conc_broker_queue_delete(q, HANG), 0);
    cr_assert_eq(conc_broker_queue_delete(dq, HANG), 0);
    conc_broker_free(b);
}

/* Publishes body to queue through a connection of rabbitmq-c's own, with
 * an x-delivery-count header set by the publisher. */
static void raw_publish_count(const char *queue, const char *body, int64_t count)
{
    char *copy = strdup(url);
    struct amqp_connection_info info;
    cr_assert_eq(amqp_parse_url(copy, &info), AMQP_STATUS_OK);
    if (!*info.vhost)
        info.vhost = "/";
    amqp_connection_state_t c = amqp_new_connection();
    amqp_socket_t *s = amqp_tcp_socket_new(c);
    cr_assert_eq(amqp_socket_open(s, info.host, info.port), AMQP_STATUS_OK);
    cr_assert_eq(amqp_login(c, info.vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, info.user,
                            info.password).reply_type, AMQP_RESPONSE_NORMAL);
    amqp_channel_open(c, 1);
    cr_assert_eq(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
    amqp_confirm_select(c, 1);
    cr_assert_eq(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
    amqp_table_entry_t e;
    e.key = amqp_cstring_bytes("x-delivery-count");
    e.value.kind = AMQP_FIELD_KIND_I64;
    e.value.value.i64 = count;
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof p);
    p._flags = AMQP_BASIC_HEADERS_FLAG;
    p.headers.num_entries = 1;
    p.headers.entries = &e;
    cr_assert_eq(amqp_basic_publish(c, 1, amqp_empty_bytes, amqp_cstring_bytes(queue), 0, 0,
                                    &p, amqp_cstring_bytes(body)), AMQP_STATUS_OK);
    /* Its confirmation: the message is in the queue. */
    amqp_frame_t f;
    cr_assert_eq(amqp_simple_wait_frame(c, &f), AMQP_STATUS_OK);
    cr_assert_eq(f.payload.method.id, AMQP_BASIC_ACK_METHOD);
    amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(c);
    free(copy);
}

/* A publisher's own x-delivery-count on a quorum queue's first delivery is
 * not the count get reports: the broker's is read only on a redelivery. */
Test(broker, forged_delivery_count_not_reported)
{
    char name[128];
    qname(name, sizeof name, "fcount");
    conc_broker *b = connect_ok();
    conc_broker_queue_opts o = CONC_BROKER_QUEUE_OPTS_INIT;
    o.delivery_limit = 3;
    conc_broker_queue *q = queue_ok(b, name, &o);
    raw_publish_count(name, "fresh", 99);
    conc_broker_msg m = { 0 };
    cr_assert_eq(conc_broker_queue_get(q, &m, HANG), 0);
    cr_assert_str_eq((char *)m.data, "fresh");
    cr_assert_not(m.redelivered);
    cr_assert_eq(m.delivery_count, 0, "reported the publisher's count %u", m.delivery_count);
    cr_assert_eq(conc_broker_queue_reject(q, m.tag, true), 0);
    conc_broker_msg_clear(&m);
    cr_assert_eq(conc_broker_queue_get(q, &m, HANG), 0);
    cr_assert(m.redelivered);
    cr_assert_eq(m.delivery_count, 1);
    conc_broker_msg_clear(&m);
    cr_assert_eq(conc_broker_queue_task_done(q), 0);
    cr_assert_eq(conc_broker_queue_delete(q, HANG), 0);
    conc_broker_free(b);
}

Test(broker, expired_messages_are_dead_lettered)
{
    conc_broker *b = connect_ok();
    conc_broker_queue_opts o = CONC_BROKER_QUEUE_OPTS_INIT;
    o.message_ttl = 0.05;
    struct dead_pair d;
    dead_pair_ok(&d, b, "ttl", &o);
    conc_broker_queue *q = d.q, *dq = d.dq;
    cr_assert_eq(conc_broker_queue_put(q, "stale", 5, HANG), 0);
    /* A per-message expiration (properties) dead-letters the same way. */
    conc_broker_props p = CONC_BROKER_PROPS_INIT;
    p.expiration = 0.05;
    cr_assert_eq(conc_broker_publish_props(b, "", d.name, "stale-2", 7, &p, HANG), 0);
    get_str(dq, "stale", NULL);
    get_str(dq, "stale-2", NULL);
    cr_assert_eq(conc_broker_queue_qsize(q, HANG), 0);
    cr_assert_eq(conc_broker_queue_delete(q, HANG), 0);
    cr_assert_eq(conc_broker_queue_delete(dq, HANG), 0);
    conc_broker_free(b);
}

Test(broker, amqps_verifies_the_server_certificate)
{
    char tls[256];
    tls_url_or_skip(tls, sizeof tls);
    /* Signed by the test CA: accepted with it, refused without it. */
    conc_broker_opts o = CONC_BROKER_OPTS_INIT;
    o.cacert = CONC_RABBITMQ_DIR "/tls/ca.pem";
    conc_broker *b = NULL;
    int r = conc_broker_new(&b, tls, &o);
    cr_assert_eq(r, 0, "amqps with the CA: %s", conc_strerror(r));
    char name[128];
    qname(name, sizeof name, "tls");
    conc_broker_queue *q = queue_ok(b, name, NULL);
    cr_assert_eq(conc_broker_queue_put(q, "secret", 6, HANG), 0);
    get_str(q, "secret", name);
    cr_assert_eq(conc_broker_queue_task_done(q), 0);
    cr_assert_eq(conc_broker_queue_delete(q, HANG), 0);
    conc_broker_free(b);
    b = NULL;
    o.cacert = NULL;        /* the system's CAs do not know the test CA */
    cr_assert_eq(conc_broker_new(&b, tls, &o), -EKEYREJECTED);
    cr_assert_null(b);
    o.insecure = true;
    cr_assert_eq(conc_broker_new(&b, tls, &o), 0);
    conc_broker_free(b);
}

Test(broker, queue_deleted_under_a_consumer_enoent)
{
    char name[128];
    qname(name, sizeof name, "gone");
    conc_broker *b = connect_ok();
    conc_broker_queue *q = queue_ok(b, name, NULL);
    conc_broker_msg m = { 0 };
    cr_assert_eq(conc_broker_queue_get(q, &m, 0.1), -ETIMEDOUT);    /* consuming now */
    conc_broker *b2 = connect_ok();
    conc_broker_queue *q2 = queue_ok(b2, name, NULL);
    cr_assert_eq(conc_broker_queue_delete(q2, HANG), 0);
    conc_broker_free(b2);
    cr_assert_eq(conc_broker_queue_get(q, &m, HANG), -ENOENT);
    cr_assert_eq(conc_broker_queue_get_nowait(q, &m), -ENOENT);
    conc_broker_queue_free(q);
    conc_broker_free(b);
}

/* Signals the node's whole process group (the node, its epmd). */
Test(broker, a_silent_broker_is_noticed_by_heartbeats)
{
    char name[128];
    qname(name, sizeof name, "silent");
    conc_broker_opts o = CONC_BROKER_OPTS_INIT;
    o.heartbeat = 1;
    o.connect_timeout = 2;
    conc_broker *b = NULL;
    cr_assert_eq(conc_broker_new(&b, url, &o), 0);
    conc_broker_queue *q = queue_ok(b, name, NULL);
    cr_assert_eq(conc_broker_queue_put(q, "before", 6, HANG), 0);
    /* The broker stops answering, as behind a lost network: no close, no
     * reset.  The missing heartbeats end the put long before its own
     * timeout would. */
    node_signal(SIGSTOP);
    int r = conc_broker_queue_put(q, "during", 6, 3 * HANG);
    node_signal(SIGCONT);
    cr_assert_eq(r, -ECONNRESET,
              "put to a silent broker: %s", conc_strerror(r));
    /* It answers again: the connection is made again. */
    cr_assert_eq(conc_broker_queue_put(q, "after", 5, HANG), 0);
    cr_assert_geq(conc_broker_reconnects(b), 1);
    get_str(q, "before", NULL);
    cr_assert_eq(conc_broker_queue_delete(q, HANG), 0);
    conc_broker_free(b);
}

/* A put into a broker that stops reading: the message does not fit in the
 * socket's buffers, and the wait for room parks only the putting
 * coroutine (another one keeps running) and ends at the put's timeout. */
struct stuck_state {
    conc_broker_queue *q;
    void *big;
    size_t len;
    int put_result;
    atomic_int putting;         /* the put is under way */
    atomic_int ticks;           /* the other coroutine's turns */
    int ticks_during;           /* its turns while the put waited */
};

static void *stuck_putter(void *arg)
{
    struct stuck_state *s = arg;
    atomic_store(&s->putting, 1);
    s->put_result = conc_broker_queue_put(s->q, s->big, s->len, 1.0);
    s->ticks_during = atomic_load(&s->ticks);
    atomic_store(&s->putting, 0);
    return NULL;
}

static void *stuck_ticker(void *arg)
{
    struct stuck_state *s = arg;
    while (atomic_load(&s->putting)) {
        atomic_fetch_add(&s->ticks, 1);
        conc_sleep(0.01);
    }
    return NULL;
}

/* The stuck put on a connection to u (o: its options). */
static void stuck_put_on(const char *u, const conc_broker_opts *o)
{
    char name[128];
    qname(name, sizeof name, "stuck");
    conc_broker *b = NULL;
    int r = conc_broker_new(&b, u, o);
    cr_assert_eq(r, 0, "connect %s: %s", u, conc_strerror(r));
    conc_broker_queue *q = queue_ok(b, name, NULL);
    cr_assert_eq(conc_broker_queue_put(q, "before", 6, HANG), 0);
    static struct stuck_state s;
    memset(&s, 0, sizeof s);
    s.q = q;
    s.len = 15u << 20;      /* more than the socket buffers hold; the
                               node takes up to 16 MiB */
    s.big = calloc(1, s.len);
    cr_assert_not_null(s.big);
    pid_t guard = node_cont_guard(HANG);
    node_signal(SIGSTOP);
    conc_greenlet *g1, *g2;
    cr_assert_eq(conc_greenlet_spawn(&g1, stuck_putter, &s, NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&g2, stuck_ticker, &s, NULL), 0);
    int hr = conc_hub_run();
    node_signal(SIGCONT);
    guard_end(guard);
    cr_assert_eq(hr, 0);
    cr_assert_eq(s.put_result, -ETIMEDOUT, "put: %s", conc_strerror(s.put_result));
    cr_assert_gt(s.ticks_during, 0, "the other coroutine did not run during the put");
    conc_greenlet_free(g1);
    conc_greenlet_free(g2);
    cr_assert_eq(conc_hub_free(), 0);
    free(s.big);
    /* The connection was given up (a message went out cut); the next call
     * makes it again, and what was confirmed is there. */
    cr_assert_eq(conc_broker_queue_put(q, "after", 5, HANG), 0);
    cr_assert_geq(conc_broker_reconnects(b), 1);
    get_str(q, "before", NULL);
    get_str(q, "after", NULL);
    cr_assert_eq(conc_broker_queue_delete(q, HANG), 0);
    conc_broker_free(b);
}

Test(broker, put_to_a_broker_that_stops_reading_parks_and_times_out)
{
    stuck_put_on(url, NULL);
}

/* Over amqps the frames are encrypted by conc into the connection's TLS
 * session and written without blocking too: the put parks only its
 * coroutine and times out, and the queue works again after the node
 * resumes. */
Test(broker, put_over_tls_to_a_broker_that_stops_reading_parks_and_times_out)
{
    char tls[256];
    tls_url_or_skip(tls, sizeof tls);
    conc_broker_opts o = CONC_BROKER_OPTS_INIT;
    o.cacert = CONC_RABBITMQ_DIR "/tls/ca.pem";
    stuck_put_on(tls, &o);
}

/* task_done's acknowledgements go out in batches (one basic.ack with
 * multiple=true): mixed with out-of-order acks and rejects, waits through
 * conc_wait and a small prefetch, each message is settled as asked, none
 * is lost and none comes back after the handle is freed. */
Test(broker, batched_acknowledgements_settle_each_message_once)
{
    char name[128];
    qname(name, sizeof name, "acks");
    conc_broker *b = connect_ok();
    conc_broker_queue_opts o = CONC_BROKER_QUEUE_OPTS_INIT;
    o.prefetch = 4;
    conc_broker_queue *q = queue_ok(b, name, &o);
    enum { N = 60 };
    for (int i = 0; i < N; i++) {
        char body[16];
        snprintf(body, sizeof body, "m%d", i);
        cr_assert_eq(conc_broker_queue_put_async(q, body, strlen(body), HANG), 0);
    }
    cr_assert_eq(conc_broker_flush(b, HANG), 0);
    int seen[N] = { 0 }, requeued = 0;
    conc_waitable w = { .kind = CONC_WAIT_BROKER, .u.broker_queue = q };
    for (int got = 0; got < N + requeued;) {
        /* Waiting with nothing delivered: the acknowledgements held back
         * must reach the broker, or with prefetch 4 nothing more comes. */
        cr_assert_eq(conc_wait(&w, 1, HANG), 1);
        conc_broker_msg a = { 0 }, c = { 0 };
        cr_assert_eq(conc_broker_queue_get_nowait(q, &a), 0);
        got++;
        int ia = atoi((char *)a.data + 1);
        bool two = conc_broker_queue_get_nowait(q, &c) == 0;
        if (two)
            got++;
        if (two && got % 3 == 0 && !a.redelivered) {
            /* Give the first back once; settle the second out of order. */
            cr_assert_eq(conc_broker_queue_ack(q, c.tag), 0);
            cr_assert_eq(conc_broker_queue_reject(q, a.tag, true), 0);
            seen[atoi((char *)c.data + 1)]++;
            requeued++;
        } else {
            cr_assert_eq(conc_broker_queue_task_done(q), 0);
            seen[ia]++;
            if (two) {
                cr_assert_eq(conc_broker_queue_task_done(q), 0);
                seen[atoi((char *)c.data + 1)]++;
            }
        }
        conc_broker_msg_clear(&a);
        conc_broker_msg_clear(&c);
    }
    cr_assert_eq(conc_broker_queue_unfinished(q), 0);
    for (int i = 0; i < N; i++)
        cr_assert_eq(seen[i], 1, "message %d settled %d times", i, seen[i]);
    conc_broker_queue_free(q);
    /* Freed: nothing was left unacknowledged to come back. */
    q = queue_ok(b, name, NULL);
    cr_assert_eq(conc_broker_queue_qsize(q, HANG), 0);
    cr_assert_eq(conc_broker_queue_delete(q, HANG), 0);
    conc_broker_free(b);
}

/* A put the broker refuses (nacks) fails with -EIO and leaves the queue as
 * it was: here a policy bounds the queue to two messages and makes the
 * broker refuse what comes beyond them.  Waited-for puts and a stream of
 * async puts each learn of the refusal; what was confirmed is there once,
 * in order; a put after a get has room again. */
Test(broker, put_refused_by_the_broker_eio)
{
    char name[128], policy[160];
    qname(name, sizeof name, "full");
    snprintf(policy, sizeof policy, "%s-bound", name);
    bound_queue(policy, name, 2);
    conc_broker *b = connect_ok();
    conc_broker_queue *q = queue_ok(b, name, NULL);
    cr_assert_eq(conc_broker_queue_put(q, "a", 2, HANG), 0);
    cr_assert_eq(conc_broker_queue_put(q, "b", 2, HANG), 0);
    cr_assert_eq(conc_broker_queue_put(q, "c", 2, HANG), -EIO);
    cr_assert_eq(conc_broker_queue_put_async(q, "d", 2, HANG), 0);
    cr_assert_eq(conc_broker_queue_put_async(q, "e", 2, HANG), 0);
    cr_assert_eq(conc_broker_flush(b, HANG), -EIO);
    cr_assert_eq(conc_broker_flush(b, 0), 0);         /* reported once */
    cr_assert_eq(conc_broker_queue_qsize(q, HANG), 2);
    /* The connection and its publishing channel go on. */
    get_str(q, "a", NULL);
    cr_assert_eq(conc_broker_queue_task_done(q), 0);
    cr_assert_eq(conc_broker_queue_put(q, "f", 2, HANG), 0);
    get_str(q, "b", NULL);
    cr_assert_eq(conc_broker_queue_task_done(q), 0);
    get_str(q, "f", NULL);
    cr_assert_eq(conc_broker_queue_task_done(q), 0);
    conc_broker_msg m = { 0 };
    cr_assert_eq(conc_broker_queue_get_nowait(q, &m), -EAGAIN);
    unbound_queue(policy);
    cr_assert_eq(conc_broker_queue_delete(q, HANG), 0);
    conc_broker_free(b);
}

/* conc_broker_new from a coroutine against a listener that never answers
 * (the TCP connection is made by the kernel, no AMQP greeting comes):
 * another coroutine runs while the handshake waits (it sees the connection
 * arrive before conc_broker_new returned), and the connect gives up with
 * -ETIMEDOUT at its connect_timeout. */
struct silent_b {
    char url[128];
    int lfd;
    int rc;
    bool done, seen_while_connecting;
    int64_t took;
};

static void *silent_b_connect(void *arg)
{
    struct silent_b *s = arg;
    conc_broker_opts o = { .size = sizeof o, .connect_timeout = 0.5 };
    conc_broker *b = NULL;
    int64_t t0 = conc_now();
    s->rc = conc_broker_new(&b, s->url, &o);
    s->took = conc_now() - t0;
    conc_broker_free(b);
    s->done = true;
    return NULL;
}

static void *silent_b_watch(void *arg)
{
    struct silent_b *s = arg;
    if (conc_fd_wait(s->lfd, POLLIN, HANG) == 0)
        s->seen_while_connecting = !s->done;
    return NULL;
}

Test(broker, connect_from_a_coroutine_parks_only_the_coroutine)
{
    static struct silent_b s;
    memset(&s, 0, sizeof s);
    s.rc = 1;
    s.lfd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(s.lfd, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t al = sizeof a;
    cr_assert_eq(bind(s.lfd, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(getsockname(s.lfd, (struct sockaddr *)&a, &al), 0);
    cr_assert_eq(listen(s.lfd, 8), 0);
    snprintf(s.url, sizeof s.url, "amqp://guest:guest@127.0.0.1:%d/", ntohs(a.sin_port));
    conc_greenlet *gc, *gw;
    cr_assert_eq(conc_greenlet_spawn(&gc, silent_b_connect, &s, NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&gw, silent_b_watch, &s, NULL), 0);
    cr_assert_eq(conc_hub_run(), 0);
    cr_assert(s.done);
    cr_assert_eq(s.rc, -ETIMEDOUT, "%d", s.rc);
    cr_assert(s.seen_while_connecting, "the connect held the thread");
    cr_assert_geq(s.took, 500000000LL, "gave up before its timeout");
    conc_greenlet_free(gc);
    conc_greenlet_free(gw);
    cr_assert_eq(conc_hub_free(), 0);
    close(s.lfd);
}
