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
 *                             same pipelined on rabbitmq-c, with as many
 *                             unconfirmed as conc's connection allows;
 *                             pika: each publish waits for its
 *                             confirmation)
 *   broker_consume_ack        the messages taken from the queue with
 *                             prefetch 64, each acknowledged (conc: get +
 *                             task_done)
 * conc, raw and pika each keep one connection and one queue for every
 * run; a run starts with the queue empty and its consumer gone, and leaves
 * it so (the filling or emptying is not timed).  Their runs take turns
 * (the order rotates from round to round) and each reports its median
 * run, so that a broker whose speed drifts (its disk, the machine's other
 * load) treats them alike.  pika publishes a quarter of the messages (each
 * of its publishes waits for its confirmation) and consumes as many as
 * the others (the rest put there untimed).  broker_rpc_rtt and
 * broker_executor_throughput report conc's best run.
 *   broker_rpc_rtt            distributed executor round trips, one
 *                             client, one worker: submit, wait for the
 *                             result, again (conc only)
 *   broker_executor_throughput  tasks through the distributed executor
 *                             with 2 workers, all submitted then waited
 *                             for (conc only)
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
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
static bool verbose;            /* --verbose: every run's rate on stderr */

static void name_queue(char *buf, size_t size, const char *what)
{
    snprintf(buf, size, "bench.conc.%s.%d.%d", what, (int)getpid(), serial++);
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

/* As the raw peer does: one connection and one queue for every run; a
 * run opens a handle on the queue (not timed) and frees it at the end, so
 * that no consumer is there while the next run publishes. */
static conc_broker *pub_b;
static char pub_name[128];

static int pub_open(conc_broker_queue **q)
{
    int r;
    if (!pub_b) {
        name_queue(pub_name, sizeof pub_name, "pub");
        if ((r = conc_broker_new(&pub_b, url, NULL)) != 0) {
            pub_b = NULL;
            return r;
        }
    }
    conc_broker_queue_opts o = { .size = sizeof o, .prefetch = PREFETCH };
    return conc_broker_queue_new(q, pub_b, pub_name, &o, 30.0);
}

/* One run: `publish` times the puts until the last confirmation (then
 * empties the queue), otherwise the gets and acknowledgements (after the
 * queue was filled).  Returns the nanoseconds timed or an error. */
static int64_t round_conc(bool publish, long n)
{
    conc_broker_queue *q;
    int r = pub_open(&q);
    if (r)
        return r;
    int64_t t0 = bench_now(), t = 0;
    if (publish) {
        r = fill(pub_b, q, n);
        t = bench_now() - t0;
        if (!r)
            r = drain(q, n);
    } else {
        r = fill(pub_b, q, n);
        t0 = bench_now();
        if (!r)
            r = drain(q, n);
        t = bench_now() - t0;
    }
    conc_broker_queue_free(q);
    return r ? r : t;
}

static void pub_done(void)
{
    if (!pub_b)
        return;
    conc_broker_queue_opts o = { .size = sizeof o, .passive = true };
    conc_broker_queue *q;
    if (conc_broker_queue_new(&q, pub_b, pub_name, &o, 30.0) == 0)
        conc_broker_queue_delete(q, 30.0);
    conc_broker_free(pub_b);
    pub_b = NULL;
}

/* A peer in its --rounds mode (raw, pika): a round per line written to
 * it, answered with the round's nanoseconds. */
struct raw_peer {
    pid_t pid;
    FILE *to, *from;
    long n;                     /* messages of its publish rounds */
};

static bool peer_start(struct raw_peer *p, char *const argv_peer[])
{
    int in[2], out[2];
    if (pipe2(in, O_CLOEXEC) < 0)
        return false;
    if (pipe2(out, O_CLOEXEC) < 0) {
        close(in[0]);
        close(in[1]);
        return false;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    extern char **environ;
    int e = posix_spawn(&p->pid, argv_peer[0], &fa, NULL, argv_peer, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(in[0]);
    close(out[1]);
    p->to = e ? NULL : fdopen(in[1], "w");
    p->from = e ? NULL : fdopen(out[0], "r");
    if (!p->to || !p->from) {
        if (p->to)
            fclose(p->to);
        else
            close(in[1]);
        if (p->from)
            fclose(p->from);
        else
            close(out[0]);
        if (!e)
            waitpid(p->pid, NULL, 0);
        return false;
    }
    return true;
}

static bool raw_start(struct raw_peer *p, long n)
{
    if (!CONC_BROKER_RAW_PEER[0])
        return false;
    char ns[32];
    snprintf(ns, sizeof ns, "%ld", n);
    char *argv_raw[] = { (char *)CONC_BROKER_RAW_PEER, url, ns, (char *)"--rounds", NULL };
    p->n = n;
    return peer_start(p, argv_raw);
}

/* pika publishes npub messages a round (each waits for its confirmation)
 * and consumes n. */
static bool pika_start(struct raw_peer *p, long npub, long n)
{
    char ns[32], cs[32];
    snprintf(ns, sizeof ns, "%ld", npub);
    snprintf(cs, sizeof cs, "%ld", n);
    char *argv_pika[] = { (char *)bench_python(), (char *)bench_peer_path("broker_pika.py"),
                          url, ns, (char *)"--rounds", cs, NULL };
    p->n = npub;
    return peer_start(p, argv_pika);
}

/* One round of the peer: its nanoseconds; -ENOENT when it says it cannot
 * run (pika is not installed). */
static int64_t round_raw(struct raw_peer *p, bool publish)
{
    char line[64];
    if (fprintf(p->to, "%s\n", publish ? "publish" : "consume") < 0 || fflush(p->to) != 0 ||
        !fgets(line, sizeof line, p->from))
        return -EPIPE;
    if (strncmp(line, "skipped", 7) == 0)
        return -ENOENT;
    long long t = atoll(line);
    return t > 0 ? (int64_t)t : -EPROTO;
}

static void raw_stop(struct raw_peer *p)
{
    fclose(p->to);      /* end of its input: it cleans up and exits */
    fclose(p->from);
    waitpid(p->pid, NULL, 0);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static double median_ns(int64_t *t, int k)
{
    qsort(t, (size_t)k, sizeof *t, cmp_i64);
    return k % 2 ? (double)t[k / 2] : ((double)t[k / 2 - 1] + (double)t[k / 2]) / 2;
}

/* conc, raw and pika in turns, bench_reps() runs each (at least 7 but
 * with --quick); the order rotates from round to round, and each system's
 * median run becomes its rate.  conc and raw move n messages a run, pika
 * as many but for its publish runs (pika->n: each waits for its
 * confirmation).  --verbose also prints the median of the rounds' conc/raw
 * and conc/pika ratios (the runs of a round see much the same machine). */
enum { SYS_CONC, SYS_RAW, SYS_PIKA, NSYS };
static const char *const sys_name[NSYS] = { "conc", "raw", "pika" };

static void run_turns(const char *metric, bool publish, long n, struct raw_peer *raw,
                      bool have_raw, struct raw_peer *pika, bool have_pika)
{
    bool on[NSYS] = { bench_enabled(metric, "conc"), have_raw && bench_enabled(metric, "raw"),
                      have_pika && bench_enabled(metric, "pika") };
    long msgs[NSYS] = { n, n, publish && have_pika ? pika->n : n };
    int reps = bench_reps(), k[NSYS] = { 0 };
    if (!bench_quick() && reps < 7)
        reps = 7;
    int64_t *t[NSYS], err[NSYS] = { 0 };
    for (int i = 0; i < NSYS; i++)
        if (!(t[i] = calloc((size_t)reps, sizeof *t[i])))
            bench_die("allocating the runs' times", -ENOMEM);
    for (int r = 0; r < reps; r++) {
        for (int j = 0; j < NSYS; j++) {
            int i = (r + j) % NSYS;
            if (!on[i] || err[i])
                continue;
            int64_t ns = i == SYS_CONC ? round_conc(publish, n)
                         : round_raw(i == SYS_RAW ? raw : pika, publish);
            if (ns < 0)
                err[i] = ns;
            else
                t[i][k[i]++] = ns;
            if (verbose && ns > 0)
                fprintf(stderr, "%s run %d: %s %.0f msg/s\n", metric, r + 1, sys_name[i],
                        msgs[i] / (ns / 1e9));
        }
    }
    for (int i = SYS_RAW; i < NSYS && verbose; i++) {
        if (k[SYS_CONC] != reps || k[i] != reps)
            continue;
        int64_t *rt = calloc((size_t)reps, sizeof *rt);
        if (!rt)
            continue;
        /* The times are still in run order here; scaled to keep order. */
        for (int r = 0; r < reps; r++)
            rt[r] = (int64_t)((double)t[i][r] / msgs[i] / ((double)t[SYS_CONC][r] / n) * 1e6);
        fprintf(stderr, "%s: median of the rounds' conc/%s ratios %.2f\n", metric, sys_name[i],
                median_ns(rt, reps) / 1e6);
        free(rt);
    }
    const char *unit = bench_metric_unit(metric);
    for (int i = 0; i < NSYS; i++) {
        if (!on[i])
            continue;
        if (err[i] == -ENOENT && i == SYS_PIKA)
            bench_skip(metric, "pika", NULL, "pika is not installed (Debian python3-pika)");
        else if (err[i])
            bench_fail(metric, sys_name[i], "%s", i == SYS_CONC
                                                      ? strerror((int)-err[i])
                                                      : "the peer's round failed");
        else
            bench_record(metric, sys_name[i], msgs[i] / (median_ns(t[i], k[i]) / 1e9), unit);
    }
    for (int i = 0; i < NSYS; i++)
        free(t[i]);
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
        if (strcmp(argv[i], "--verbose") == 0 || strcmp(argv[i], "-v") == 0)
            verbose = true;     /* and left for bench_init */
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

    /* conc, raw and pika in turns, the same messages each (but pika's
     * publishes: fewer, each waits for its confirmation, which keeps its
     * runs short); each peer is one process for every run. */
    struct raw_peer raw, pika;
    bool want_raw = bench_enabled("broker_publish_confirmed", "raw") ||
                    bench_enabled("broker_consume_ack", "raw");
    bool have_raw = want_raw && raw_start(&raw, n);
    if (want_raw && !have_raw) {
        const char *why = CONC_BROKER_RAW_PEER[0] ? "the raw peer did not start"
                                                  : "the raw peer was not built";
        bench_skip("broker_publish_confirmed", "raw", NULL, why);
        bench_skip("broker_consume_ack", "raw", NULL, why);
    }
    bool want_pika = bench_enabled("broker_publish_confirmed", "pika") ||
                     bench_enabled("broker_consume_ack", "pika");
    bool have_pika = want_pika && pika_start(&pika, quick ? n : n / 4, n);
    if (want_pika && !have_pika) {
        bench_skip("broker_publish_confirmed", "pika", NULL, "the pika peer did not start");
        bench_skip("broker_consume_ack", "pika", NULL, "the pika peer did not start");
    }
    run_turns("broker_publish_confirmed", true, n, &raw, have_raw, &pika, have_pika);
    run_turns("broker_consume_ack", false, n, &raw, have_raw, &pika, have_pika);
    if (have_raw)
        raw_stop(&raw);
    if (have_pika)
        raw_stop(&pika);
    pub_done();
    run_fixed("broker_rpc_rtt", rpc_conc, rpc);
    run_fixed("broker_executor_throughput", throughput_conc, n / 2);

    if (own)
        node_cmd("stop", own, NULL, 0);
    return bench_report();
}
