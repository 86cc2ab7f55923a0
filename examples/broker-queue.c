/*
 * broker-queue - the tutorial's producer and consumer on a queue that lives
 * in RabbitMQ, so they may run on different machines: what a Python
 * multiprocessing.Queue cannot do, since it lives in one process's memory.
 *
 *   broker-queue --url URL [--queue NAME] [--timeout S] put MESSAGE...
 *   broker-queue --url URL [--queue NAME] [--timeout S] get [--count N] [--hold]
 *
 * put sends every MESSAGE to the durable queue NAME (default task_queue) as
 * persistent messages, pipelined, and prints "sent MESSAGE" for each once
 * the broker has confirmed them all: they are on the broker's disk and
 * survive its restart.
 *
 * get takes N messages (default 1), printing "received MESSAGE" (with
 * " (redelivered)" when the broker had given it to a consumer before), and
 * marks each done (task_done, the acknowledgement) after printing it.  A
 * consumer killed before that gives the message back: the next consumer
 * gets it, redelivered.  --hold shows it: the consumer prints the message,
 * does not mark it done, and waits until it is killed.  Each message is
 * waited for at most --timeout seconds (default 30); then the consumer says
 * so and exits with status 1.  A broker that is down or refuses the login
 * is one line on stderr and status 1; bad arguments are status 2.
 *
 * Python (pika) originals:
 *   channel.queue_declare(queue='task_queue', durable=True)
 *   channel.basic_publish(exchange='', routing_key='task_queue', body=msg,
 *       properties=pika.BasicProperties(delivery_mode=2))
 *   channel.basic_qos(prefetch_count=1)
 *   channel.basic_consume(queue='task_queue', on_message_callback=callback)
 *   ... ch.basic_ack(delivery_tag=method.delivery_tag)
 */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conc/broker.h"
#include "conc/errors.h"
#include "conc/time.h"

static const char *prog = "broker-queue";

/* Bad input: one line on stderr, status 2. */
static int usage(const char *why, const char *arg)
{
    fprintf(stderr, "%s: ", prog);
    fprintf(stderr, why, arg);
    fprintf(stderr, " (try --help)\n");
    return 2;
}

static int help(void)
{
    printf("usage: %s --url URL [--queue NAME] [--timeout S] put MESSAGE...\n"
           "       %s --url URL [--queue NAME] [--timeout S] get [--count N] [--hold]\n",
           prog, prog);
    return 0;
}

static int die(const char *what, int err)
{
    fprintf(stderr, "%s: %s: %s\n", prog, what, conc_strerror(err));
    return 1;
}

static int do_put(conc_broker *b, conc_broker_queue *q, char **msgs, int n, double timeout)
{
    for (int i = 0; i < n; i++) {
        int r = conc_broker_queue_put_async(q, msgs[i], strlen(msgs[i]), timeout);
        if (r < 0)
            return die("put", r);
    }
    int r = conc_broker_flush(b, timeout);
    if (r < 0)
        return die("put (waiting for the broker's confirmations)", r);
    for (int i = 0; i < n; i++)
        printf("sent %s\n", msgs[i]);
    return 0;
}

static int do_get(conc_broker_queue *q, long count, bool hold, double timeout)
{
    for (long i = 0; i < count; i++) {
        conc_broker_msg m = { 0 };
        int r = conc_broker_queue_get(q, &m, timeout);
        if (r == -ETIMEDOUT) {
            fprintf(stderr, "%s: no message within %g s (%ld of %ld received)\n", prog, timeout,
                    i, count);
            return 1;
        }
        if (r < 0)
            return die("get", r);
        printf("received %.*s%s\n", (int)m.len, (char *)m.data,
               m.redelivered ? " (redelivered)" : "");
        fflush(stdout);
        conc_broker_msg_clear(&m);
        if (hold) {
            /* Never done: a kill now gives the message back. */
            for (;;)
                pause();
        }
        r = conc_broker_queue_task_done(q);
        if (r < 0)
            return die("task_done", r);
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *url = NULL, *queue = "task_queue", *cmd = NULL;
    double timeout = 30;
    long count = 1;
    bool hold = false;
    int i = 1;
    for (; i < argc; i++) {
        const char *a = argv[i];
        if (cmd && strcmp(cmd, "put") == 0)
            break;                          /* the messages */
        if (strcmp(a, "--url") == 0 || strcmp(a, "--queue") == 0 ||
            strcmp(a, "--timeout") == 0 || strcmp(a, "--count") == 0) {
            if (i + 1 >= argc)
                return usage("%s needs a value", a);
            const char *v = argv[++i];
            if (strcmp(a, "--url") == 0) {
                url = v;
            } else if (strcmp(a, "--queue") == 0) {
                if (!*v || strlen(v) > 255)
                    return usage("bad queue name '%s'", v);
                queue = v;
            } else {
                char *end;
                errno = 0;
                double d = strtod(v, &end);
                if (errno || end == v || *end || !isfinite(d) || d <= 0 ||
                    (a[2] == 'c' && (d != floor(d) || d > 1000000)) ||
                    (a[2] == 't' && d > 86400))
                    return usage("bad value '%s'", v);
                if (a[2] == 'c')
                    count = (long)d;
                else
                    timeout = d;
            }
        } else if (strcmp(a, "--help") == 0) {
            return help();
        } else if (strcmp(a, "--hold") == 0) {
            hold = true;
        } else if (!cmd && (strcmp(a, "put") == 0 || strcmp(a, "get") == 0)) {
            cmd = a;
        } else {
            return usage("unexpected argument '%s'", a);
        }
    }
    if (!url)
        return usage("%s", "--url is required");
    if (!cmd)
        return usage("%s", "say put or get");
    if (strcmp(cmd, "put") == 0 && i >= argc)
        return usage("%s", "put needs at least one MESSAGE");
    if (strcmp(cmd, "put") == 0 && hold)
        return usage("%s", "--hold is for get");

    conc_broker *b;
    conc_broker_opts o = CONC_BROKER_OPTS_INIT;
    o.connect_timeout = timeout < 10 ? timeout : 10;
    int r = conc_broker_new(&b, url, &o);
    if (r < 0)
        return die("connect", r);
    conc_broker_queue *q;
    conc_broker_queue_opts qo = CONC_BROKER_QUEUE_OPTS_INIT;
    qo.prefetch = 1;                        /* fair dispatch, as the tutorial */
    r = conc_broker_queue_new(&q, b, queue, &qo, timeout);
    if (r < 0) {
        conc_broker_free(b);
        return die(queue, r);
    }
    int status = strcmp(cmd, "put") == 0 ? do_put(b, q, argv + i, argc - i, timeout)
                                         : do_get(q, count, hold, timeout);
    conc_broker_queue_free(q);
    conc_broker_free(b);
    return status;
}
