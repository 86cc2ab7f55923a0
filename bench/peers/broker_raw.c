/*
 * broker_raw.c - the floor for bench_broker: the same work as conc's broker
 * queue, written straight on rabbitmq-c with nothing around it.
 *
 *   broker_raw URL N REPS
 *   broker_raw URL N --rounds
 *
 * broker_publish_confirmed: N persistent 100-byte messages to a durable
 * queue in confirm mode, pipelined (at most WINDOW unconfirmed, as conc's
 * connection allows), timed until the last confirmation, then taken out
 * again (not timed).  broker_consume_ack: N messages put there first (not
 * timed), then consumed with prefetch PREFETCH and each acknowledged.
 * Each run starts and ends with the queue empty.  Prints the best of REPS
 * runs of each as METRIC<TAB>raw<TAB>VALUE<TAB>msg/s.
 *
 * With --rounds it runs one round per line read from standard input
 * ("publish" or "consume") and answers each with the round's nanoseconds
 * on a line of its own, so that bench_broker runs its rounds in turns with
 * conc's on the same broker.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>

#define WINDOW 4096
#define PREFETCH 64
#define SIZE 100

static amqp_connection_state_t conn;
static char queue[64];

static void die(const char *what)
{
    fprintf(stderr, "broker_raw: %s failed\n", what);
    exit(1);
}

static void check(amqp_rpc_reply_t r, const char *what)
{
    if (r.reply_type != AMQP_RESPONSE_NORMAL)
        die(what);
}

static int64_t now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Reads confirmations until at most `left` are outstanding. */
static void read_acks(uint64_t *confirmed, uint64_t sent, uint64_t left)
{
    while (sent - *confirmed > left) {
        amqp_frame_t f;
        if (amqp_simple_wait_frame(conn, &f) != AMQP_STATUS_OK)
            die("waiting for a confirmation");
        if (f.frame_type != AMQP_FRAME_METHOD)
            continue;
        if (f.payload.method.id == AMQP_BASIC_ACK_METHOD) {
            amqp_basic_ack_t *a = f.payload.method.decoded;
            *confirmed = a->delivery_tag;   /* multiple or not: in order */
        } else if (f.payload.method.id == AMQP_BASIC_NACK_METHOD) {
            die("a publish (nacked)");
        }
    }
}

static uint64_t tag_base;   /* delivery tags of the confirm channel so far */

static void publish(long n)
{
    static char body[SIZE];
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof p);
    p._flags = AMQP_BASIC_DELIVERY_MODE_FLAG;
    p.delivery_mode = 2;
    amqp_bytes_t b = { .len = sizeof body, .bytes = body };
    uint64_t confirmed = tag_base, sent = tag_base;
    for (long i = 0; i < n; i++) {
        if (amqp_basic_publish(conn, 1, amqp_empty_bytes, amqp_cstring_bytes(queue), 0, 0, &p,
                               b) != AMQP_STATUS_OK)
            die("publish");
        sent++;
        read_acks(&confirmed, sent, WINDOW);
    }
    read_acks(&confirmed, sent, 0);
    tag_base = sent;
}

static void consume(long n)
{
    amqp_basic_qos(conn, 2, 0, PREFETCH, 0);
    check(amqp_get_rpc_reply(conn), "basic.qos");
    amqp_basic_consume_ok_t *ok = amqp_basic_consume(conn, 2, amqp_cstring_bytes(queue),
                                                     amqp_empty_bytes, 0, 0, 0,
                                                     amqp_empty_table);
    check(amqp_get_rpc_reply(conn), "basic.consume");
    amqp_bytes_t tag = amqp_bytes_malloc_dup(ok->consumer_tag);
    for (long i = 0; i < n; i++) {
        amqp_envelope_t env;
        amqp_maybe_release_buffers(conn);
        check(amqp_consume_message(conn, &env, NULL, 0), "consume");
        if (env.message.body.len != SIZE)
            die("a message of the wrong size");
        if (amqp_basic_ack(conn, 2, env.delivery_tag, 0) != AMQP_STATUS_OK)
            die("ack");
        amqp_destroy_envelope(&env);
    }
    amqp_basic_cancel(conn, 2, tag);
    check(amqp_get_rpc_reply(conn), "basic.cancel");
    amqp_bytes_free(tag);
}

/* The --rounds loop: a round per command line, its time printed. */
static void rounds(long n)
{
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        int64_t t0, t;
        if (strcmp(line, "publish\n") == 0) {
            t0 = now();
            publish(n);
            t = now() - t0;
            consume(n);
        } else if (strcmp(line, "consume\n") == 0) {
            publish(n);
            t0 = now();
            consume(n);
            t = now() - t0;
        } else {
            die("reading a round's command");
        }
        printf("%lld\n", (long long)t);
        fflush(stdout);
    }
}

int main(int argc, char **argv)
{
    if (argc != 4)
        die("usage: broker_raw URL N REPS|--rounds; parsing the command line");
    bool by_rounds = strcmp(argv[3], "--rounds") == 0;
    long n = atol(argv[2]), reps = by_rounds ? 1 : atol(argv[3]);
    if (n <= 0 || reps <= 0)
        die("parsing N and REPS");
    struct amqp_connection_info info;
    char *url = strdup(argv[1]);
    if (amqp_parse_url(url, &info) != AMQP_STATUS_OK)
        die("parsing the URL");
    if (!*info.vhost)
        info.vhost = "/";
    conn = amqp_new_connection();
    amqp_socket_t *s = amqp_tcp_socket_new(conn);
    if (amqp_socket_open(s, info.host, info.port) != AMQP_STATUS_OK)
        die("connecting");
    check(amqp_login(conn, info.vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, info.user,
                     info.password), "login");
    amqp_channel_open(conn, 1);
    check(amqp_get_rpc_reply(conn), "channel.open 1");
    amqp_channel_open(conn, 2);
    check(amqp_get_rpc_reply(conn), "channel.open 2");
    amqp_confirm_select(conn, 1);
    check(amqp_get_rpc_reply(conn), "confirm.select");
    snprintf(queue, sizeof queue, "bench.raw.%d", (int)getpid());
    amqp_queue_declare(conn, 1, amqp_cstring_bytes(queue), 0, 1, 0, 0, amqp_empty_table);
    check(amqp_get_rpc_reply(conn), "queue.declare");

    if (by_rounds) {
        rounds(n);
        reps = 0;
    }
    double best_pub = 0, best_con = 0;
    for (long r = 0; r < reps; r++) {
        int64_t t0 = now();
        publish(n);
        double rate = n / ((now() - t0) / 1e9);
        if (rate > best_pub)
            best_pub = rate;
        t0 = now();
        consume(n);
        rate = n / ((now() - t0) / 1e9);
        if (rate > best_con)
            best_con = rate;
    }
    amqp_queue_delete(conn, 1, amqp_cstring_bytes(queue), 0, 0);
    amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(conn);
    free(url);
    if (!by_rounds) {
        printf("broker_publish_confirmed\traw\t%.0f\tmsg/s\n", best_pub);
        printf("broker_consume_ack\traw\t%.0f\tmsg/s\n", best_con);
    }
    return 0;
}
