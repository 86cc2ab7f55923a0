/*
 * bench_broker - conc on RabbitMQ beside Python's pika and a raw rabbitmq-c
 * loop (system `raw`: the broker-bound floor), on the same broker in the
 * same run.
 *
 *   bench_broker [--url URL | --node DIR] [the common options]
 *
 * Without --url it starts a private node with scripts/rabbitmq.sh under
 * the build tree and stops it at the end; --node DIR uses (or starts) the
 * node of DIR and leaves it running (the ctest smoke run shares the test
 * fixture's node this way).
 *
 * Metrics:
 *   broker_publish_confirmed  persistent 100-byte messages to a durable
 *                             queue, confirmed by the broker (conc: a
 *                             stream of put_async, then flush; raw: the
 *                             same pipelined on rabbitmq-c; pika: each
 *                             publish waits for its confirmation); conc
 *                             and raw use one queue for every run and
 *                             empty it between runs (not timed)
 *   broker_consume_ack        the messages taken from the queue with
 *                             prefetch 64, each acknowledged (conc: get +
 *                             task_done)
 *   broker_rpc_rtt            distributed executor round trips, one
 *                             client, one worker: submit, wait for the
 *                             result, again (conc only)
 *   broker_executor_throughput  tasks through the distributed executor
 *                             with 2 workers, all submitted then waited
 *                             for (conc only)
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "benchlib.h"
#include "conc/broker.h"
#include "conc/broker_executor.h"
#include "conc/future.h"

#ifndef CONC_RABBITMQ_SCRIPT
#error "CONC_RABBITMQ_SCRIPT must name scripts/rabbitmq.sh"
#endif
#ifndef CONC_BENCH_RABBITMQ_DIR
#error "CONC_BENCH_RABBITMQ_DIR must name the private node's directory"
#endif
#ifndef CONC_BROKER_RAW_PEER
#define CONC_BROKER_RAW_PEER ""
#endif

static const bench_metric metrics[] = {
    { "broker_publish_confirmed", "msg/s", "persistent messages confirmed by the broker" },
    { "broker_consume_ack", "msg/s", "messages consumed, each acknowledged (prefetch 64)" },
    { "broker_rpc_rtt", "req/s", "distributed executor round trips, one client" },
    { "broker_executor_throughput", "ops/s", "distributed executor tasks, 2 workers" },
};

#define SIZE 100
#define PREFETCH 64

static char url[512];
static int serial;

static void name_queue(char *buf, size_t size, const char *what)
{
    snprintf(buf, size, "bench.conc.%s.%d.%d", what, (int)getpid(), serial++);
}

static int open_queue(conc_broker **b, conc_broker_queue **q, const char *what)
{
    char name[128];
    name_queue(name, sizeof name, what);
    int r = conc_broker_new(b, url, NULL);
    if (r)
        return r;
    conc_broker_queue_opts o = { .size = sizeof o, .prefetch = PREFETCH };
    r = conc_broker_queue_new(q, *b, name, &o, 30.0);
    if (r)
        conc_broker_free(*b);
    return r;
}

static int fill(conc_broker *b, conc_broker_queue *q, long n)
{
    static char body[SIZE];
    for (long i = 0; i < n; i++) {
        int r = conc_broker_queue_put_async(q, body, sizeof body, 30.0);
        if (r)
            return r;
    }
    return conc_broker_flush(b, 120.0);
}

/* Takes n messages from q, each acknowledged. */
static int drain(conc_broker_queue *q, long n)
{
    int r = 0;
    for (long i = 0; i < n && !r; i++) {
        conc_broker_msg m;
        r = conc_broker_queue_get(q, &m, 30.0);
        if (!r) {
            if (m.len != SIZE)
                r = -EPROTO;
            conc_broker_msg_clear(&m);
        }
        if (!r)
            r = conc_broker_queue_task_done(q);
    }
    return r;
}

/* As the raw peer does: one connection and queue for every run, each run
 * timed until the last confirmation, then emptied (not timed). */
static conc_broker *pub_b;
static conc_broker_queue *pub_q;

static int64_t publish_conc(void *arg, long n)
{
    (void)arg;
    int r = 0;
    if (!pub_b && (r = open_queue(&pub_b, &pub_q, "pub")) != 0) {
        pub_b = NULL;
        return r;
    }
    int64_t t0 = bench_now();
    r = fill(pub_b, pub_q, n);
    int64_t t = bench_now() - t0;
    if (!r)
        r = drain(pub_q, n);
    return r ? r : t;
}

static void publish_done(void)
{
    if (!pub_b)
        return;
    conc_broker_queue_delete(pub_q, 30.0);
    conc_broker_free(pub_b);
    pub_b = NULL;
}

static int64_t consume_conc(void *arg, long n)
{
    (void)arg;
    conc_broker *b;
    conc_broker_queue *q;
    int r = open_queue(&b, &q, "con");
    if (r)
        return r;
    r = fill(b, q, n);
    int64_t t0 = bench_now();
    if (!r)
        r = drain(q, n);
    int64_t t = bench_now() - t0;
    conc_broker_queue_delete(q, 30.0);
    conc_broker_free(b);
    return r ? r : t;
}

/* ------------------------------------------------------------ executor */

static int square(const void *data, size_t len, void **result, size_t *rlen, void *arg)
{
    (void)arg;
    uint64_t x;
    if (len != sizeof x)
        return -EINVAL;
    memcpy(&x, data, sizeof x);
    uint64_t *y = malloc(sizeof *y);
    if (!y)
        return -ENOMEM;
    *y = x * x;
    *result = y;
    *rlen = sizeof *y;
    return 0;
}

struct wt {
    conc_broker_worker *w;
    pthread_t t;
};

static void *serve(void *arg)
{
    conc_broker_worker_run(((struct wt *)arg)->w, CONC_FOREVER);
    return NULL;
}

static int start_workers(struct wt *ws, int n, const char *queue, int prefetch)
{
    for (int i = 0; i < n; i++) {
        conc_broker_worker_opts o = CONC_BROKER_WORKER_OPTS_INIT;
        o.queue = queue;
        o.prefetch = prefetch;
        int r = conc_broker_worker_new(&ws[i].w, url, &o);
        if (r)
            return r;
        conc_broker_worker_register(ws[i].w, "square", square, NULL);
        pthread_create(&ws[i].t, NULL, serve, &ws[i]);
    }
    return 0;
}

static void stop_workers(struct wt *ws, int n)
{
    for (int i = 0; i < n; i++) {
        conc_broker_worker_stop(ws[i].w);
        pthread_join(ws[i].t, NULL);
        conc_broker_worker_free(ws[i].w);
    }
}

static void drop_queue(const char *name)
{
    conc_broker *b;
    conc_broker_queue *q;
    char dead[160];
    snprintf(dead, sizeof dead, "%s.dead", name);
    if (conc_broker_new(&b, url, NULL))
        return;
    conc_broker_queue_opts o = { .size = sizeof o, .passive = true };
    if (conc_broker_queue_new(&q, b, name, &o, 30.0) == 0)
        conc_broker_queue_delete(q, 30.0);
    if (conc_broker_queue_new(&q, b, dead, &o, 30.0) == 0)
        conc_broker_queue_delete(q, 30.0);
    conc_broker_free(b);
}

static int64_t run_executor(long n, int nworkers, bool one_at_a_time)
{
    char name[128];
    name_queue(name, sizeof name, "ex");
    struct wt ws[2];
    conc_broker_executor *ex;
    conc_broker_executor_opts eo = CONC_BROKER_EXECUTOR_OPTS_INIT;
    eo.queue = name;
    int r = conc_broker_executor_new(&ex, url, &eo);
    if (r)
        return r;
    r = start_workers(ws, nworkers, name, one_at_a_time ? 1 : 32);
    if (r) {
        conc_broker_executor_free(ex);
        return r;
    }
    conc_future **fs = calloc((size_t)n, sizeof *fs);
    int64_t t0 = bench_now();
    for (long i = 0; i < n && !r; i++) {
        uint64_t x = (uint64_t)i;
        r = conc_broker_executor_submit(ex, "square", &x, sizeof x, &fs[i]);
        if (!r && one_at_a_time) {
            void *v;
            size_t len;
            r = conc_future_result(fs[i], &v, &len, 60.0);
            if (!r && (len != sizeof x || memcmp(v, &(uint64_t){ x * x }, sizeof x)))
                r = -EPROTO;
        }
    }
    if (!r && !one_at_a_time) {
        for (long i = 0; i < n && !r; i++) {
            void *v;
            size_t len;
            r = conc_future_result(fs[i], &v, &len, 120.0);
            uint64_t want = (uint64_t)i * (uint64_t)i;
            if (!r && (len != sizeof want || memcmp(v, &want, sizeof want)))
                r = -EPROTO;
        }
    }
    int64_t t = bench_now() - t0;
    for (long i = 0; i < n; i++)
        conc_future_free(fs[i]);
    free(fs);
    stop_workers(ws, nworkers);
    conc_broker_executor_free(ex);
    drop_queue(name);
    return r ? r : t;
}

static int64_t rpc_conc(void *arg, long n)
{
    (void)arg;
    return run_executor(n, 1, true);
}

static int64_t throughput_conc(void *arg, long n)
{
    (void)arg;
    return run_executor(n, 2, false);
}

/* Runs body with n operations, bench_reps() times, and records conc's
 * best as a rate. */
static void run_fixed(const char *metric, bench_body body, long n)
{
    if (!bench_enabled(metric, "conc"))
        return;
    double ns;
    int r = bench_measure(body, NULL, n, 0, BENCH_BEST, &ns);
    if (r)
        bench_fail(metric, "conc", "%s", strerror(-r));
    else
        bench_record(metric, "conc", 1e9 / ns, bench_metric_unit(metric));
}

/* -------------------------------------------------------------- the node */

/* Pulls --url URL and --node DIR out of argv (bench_init knows neither). */
static void take_args(int *argc, char **argv, const char **node)
{
    int o = 1;
    for (int i = 1; i < *argc; i++) {
        if ((strcmp(argv[i], "--url") == 0 || strcmp(argv[i], "--node") == 0) &&
            i + 1 < *argc) {
            if (argv[i][2] == 'u')
                snprintf(url, sizeof url, "%s", argv[i + 1]);
            else
                *node = argv[i + 1];
            i++;
            continue;
        }
        argv[o++] = argv[i];
    }
    *argc = o;
    argv[o] = NULL;
}

static bool node_cmd(const char *what, const char *dir, char *out, size_t size)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "sh '%s' %s '%s'%s", CONC_RABBITMQ_SCRIPT, what, dir,
             out ? "" : " >/dev/null 2>&1");
    FILE *p = popen(cmd, "r");
    if (!p)
        return false;
    bool ok = true;
    if (out) {
        ok = fgets(out, (int)size, p) != NULL;
        if (ok)
            out[strcspn(out, "\n")] = '\0';
    }
    return pclose(p) == 0 && ok;
}

int main(int argc, char **argv)
{
    const char *node = NULL;
    take_args(&argc, argv, &node);
    bench_init(argc, argv, "bench_broker", metrics, BENCH_ARRAY_LEN(metrics));
    bench_become_multithreaded();
    const char *own = NULL;
    if (!url[0]) {
        const char *dir = node ? node : CONC_BENCH_RABBITMQ_DIR;
        if (!bench_tsv())
            fprintf(stderr, "bench_broker: starting a RabbitMQ node under %s\n", dir);
        if (!node_cmd("start", dir, url, sizeof url)) {
            for (size_t i = 0; i < BENCH_ARRAY_LEN(metrics); i++)
                bench_skip(metrics[i].name, "conc", NULL,
                           "no broker: scripts/rabbitmq.sh start failed (give --url)");
            return bench_report();
        }
        own = node ? NULL : dir;
    }
    long quick = bench_quick();
    long n = quick ? 200 : 20000;
    long rpc = quick ? 50 : 2000;

    /* Every system does the same number of operations per run and reports
     * its best run (the peers do the same). */
    run_fixed("broker_publish_confirmed", publish_conc, n);
    publish_done();
    run_fixed("broker_consume_ack", consume_conc, n);
    run_fixed("broker_rpc_rtt", rpc_conc, rpc);
    run_fixed("broker_executor_throughput", throughput_conc, n / 2);

    static const char *const peer_metrics[] = { "broker_publish_confirmed", "broker_consume_ack",
                                                NULL };
    char ns[32], reps[32], pika_n[32];
    snprintf(ns, sizeof ns, "%ld", n);
    snprintf(reps, sizeof reps, "%d", bench_reps());
    /* pika waits for each confirmation: fewer messages keep its run short. */
    snprintf(pika_n, sizeof pika_n, "%ld", quick ? n : n / 4);
    if (bench_enabled(NULL, "raw")) {
        if (!CONC_BROKER_RAW_PEER[0]) {
            for (int i = 0; peer_metrics[i]; i++)
                bench_skip(peer_metrics[i], "raw", NULL, "the raw peer was not built");
        } else {
            char *argv_raw[] = { (char *)CONC_BROKER_RAW_PEER, url, ns, reps, NULL };
            bench_peer_run_for("raw", peer_metrics, argv_raw, 600.0);
        }
    }
    if (bench_enabled(NULL, "pika")) {
        char *argv_pika[] = { (char *)bench_python(), (char *)bench_peer_path("broker_pika.py"),
                              url, pika_n, reps, NULL };
        bench_peer_run_for("pika", peer_metrics, argv_pika, 600.0);
    }
    if (own)
        node_cmd("stop", own, NULL, 0);
    return bench_report();
}
