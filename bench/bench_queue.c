/*
 * bench_queue.c - conc's queues and pipes against a pthread queue, Go
 * channels, a plain pipe, a raw socketpair and Python's queue and
 * multiprocessing, in one run.
 *
 * Between threads (conc_queue FIFO of maxsize 1024):
 *
 *   thread_queue_stream    msg/s: one producer thread puts 1..n, one
 *                          consumer thread gets them and checks their
 *                          order.  pthread: a 1024-slot ring under a mutex
 *                          and two condition variables (below); python:
 *                          queue.Queue(1024); go: a channel of capacity
 *                          1024 between two goroutines; go-unbuffered: an
 *                          unbuffered channel
 *   thread_queue_pingpong  round trips/s: one thread puts i into queue
 *                          `ping` and waits for it on queue `pong`, the
 *                          other gets from ping and puts into pong (same
 *                          queues and peers as above)
 *
 * Between processes (conc_mpqueue with its default options):
 *
 *   proc_queue_stream_64        msg/s: 64-byte messages, 1 producer
 *                               process -> 1 consumer process
 *   proc_queue_stream_64_2x2    2 producers -> 2 consumers, one queue
 *   proc_queue_stream_4k        4096-byte messages, 1 -> 1
 *   proc_queue_stream_4k_2x2    4096-byte messages, 2 -> 2
 *   pipe_pingpong               round trips/s of a 64-byte message between
 *                               two processes: conc_conn_pipe (duplex),
 *                               send_bytes + recv_bytes, echoed back
 *
 * Peers of the streams: pipe, a plain pipe: each message is a 4-byte length
 * and the bytes, written with one write(); with one consumer it reads the
 * byte stream in 64 KiB blocks and cuts the messages out of it; with two
 * consumers sharing the pipe each message must reach one consumer whole, so
 * the pipe is in packet mode (O_DIRECT) and each read() takes one message,
 * which works while a message and its length fit in PIPE_BUF (a write of at
 * most PIPE_BUF bytes is atomic): the 4 KiB messages of 4k_2x2 do not, and
 * the pipe is skipped there.  python: multiprocessing.Queue().  Peers of
 * pipe_pingpong: socketpair, a raw AF_UNIX socketpair carrying conc's wire
 * format (an 8-byte length and the bytes, one write(), read() until the
 * message is whole); python: multiprocessing.Pipe().
 *
 * The threads of conc and pthread are plain pthreads, the processes of conc
 * and pipe fork()ed children (Python's too), created before the clock starts
 * and released together by a barrier; worker k is pinned to the k-th CPU
 * (see bench_cpu; --no-pin turns that off; producers come first, then
 * consumers).  A stream is timed from the first worker's start to the last
 * one's end (its last message received).
 *
 * Self-checks, reported as FAILED: every item and message is checked on
 * arrival: thread items arrive in order; each process message carries its
 * producer, size and sequence number at the start and the sequence number
 * again at the end, with a known pattern in between; a consumer checks all
 * of it and that each producer's sequence numbers increase, and the counts
 * and sums of the sequence numbers must add up to every message sent, once.
 * A consumer ends at the first empty message; each producer sends one after
 * its own.  A worker that fails ends the others (they could wait forever
 * for its messages); a lost wake-up shows as a hang, which benchlib's
 * watchdog turns into an error exit.  Python runs as
 * bench/peers/queue_threading.py and bench/peers/queue_mp.py; Go as
 * bench/peers/queue_go.go, built with `go build` next to this program when
 * `go` is installed (else reported as skipped).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdalign.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "conc.h"
#include "benchlib.h"

static const bench_metric metrics[] = {
    { "thread_queue_stream", "msg/s", "1 producer thread -> FIFO queue (maxsize 1024) -> 1 consumer thread" },
    { "thread_queue_pingpong", "ops/s", "round trips of one item between two threads through two queues" },
    { "proc_queue_stream_64", "msg/s", "64-byte messages, 1 producer process -> 1 consumer process" },
    { "proc_queue_stream_64_2x2", "msg/s", "64-byte messages, 2 producer processes -> 2 consumer processes" },
    { "proc_queue_stream_4k", "msg/s", "4096-byte messages, 1 producer process -> 1 consumer process" },
    { "proc_queue_stream_4k_2x2", "msg/s", "4096-byte messages, 2 producer processes -> 2 consumer processes" },
    { "pipe_pingpong", "ops/s", "round trips of a 64-byte message between two processes" },
};

/* A body that finds a wrong result says why on stderr and returns this. */
#define WRONG_RESULT (-EPROTO)

/* The thread queues' maxsize (Go: the channel's capacity). */
#define MAXSIZE 1024

/* ============================================================ threads */

/* The pthread peer: queue.Queue(maxsize) as a C programmer writes it, a
 * ring under a mutex with two condition variables. */
typedef struct pqueue {
    pthread_mutex_t m;
    pthread_cond_t not_empty, not_full;
    size_t head, count;
    void *slot[MAXSIZE];
} pqueue;

static void pqueue_init(pqueue *q)
{
    pthread_mutex_init(&q->m, NULL);
    pthread_cond_init(&q->not_empty, NULL);
    pthread_cond_init(&q->not_full, NULL);
    q->head = q->count = 0;
}

static void pqueue_destroy(pqueue *q)
{
    pthread_mutex_destroy(&q->m);
    pthread_cond_destroy(&q->not_empty);
    pthread_cond_destroy(&q->not_full);
}

static void pqueue_put(pqueue *q, void *item)
{
    pthread_mutex_lock(&q->m);
    while (q->count == MAXSIZE)
        pthread_cond_wait(&q->not_full, &q->m);
    q->slot[(q->head + q->count) % MAXSIZE] = item;
    q->count++;
    pthread_cond_signal(&q->not_empty);
    pthread_mutex_unlock(&q->m);
}

static void *pqueue_get(pqueue *q)
{
    pthread_mutex_lock(&q->m);
    while (q->count == 0)
        pthread_cond_wait(&q->not_empty, &q->m);
    void *item = q->slot[q->head];
    q->head = (q->head + 1) % MAXSIZE;
    q->count--;
    pthread_cond_signal(&q->not_full);
    pthread_mutex_unlock(&q->m);
    return item;
}

/* The two queues of a measurement (a stream uses the first) and the number
 * of items that arrived wrong. */
typedef struct tq {
    conc_queue *c[2];
    pqueue *p[2];
    long wrong;
} tq;

static void tq_put(tq *t, int which, void *item)
{
    if (t->c[which]) {
        int e = conc_queue_put(t->c[which], item, CONC_FOREVER);
        if (e != 0)
            bench_die("conc_queue_put", e);
    } else {
        pqueue_put(t->p[which], item);
    }
}

static void *tq_get(tq *t, int which)
{
    if (!t->c[which])
        return pqueue_get(t->p[which]);
    void *item = NULL;
    int e = conc_queue_get(t->c[which], &item, CONC_FOREVER);
    if (e != 0)
        bench_die("conc_queue_get", e);
    return item;
}

static void stream_side(void *ctx, int side, long iters)
{
    tq *t = ctx;
    if (side == 0) {
        for (long i = 1; i <= iters; i++)
            tq_put(t, 0, (void *)(uintptr_t)i);
    } else {
        long wrong = 0;
        for (long i = 1; i <= iters; i++)
            wrong += (uintptr_t)tq_get(t, 0) != (uintptr_t)i;
        t->wrong = wrong;
    }
}

static void pingpong_side(void *ctx, int side, long iters)
{
    tq *t = ctx;
    if (side == 0) {
        long wrong = 0;
        for (long i = 1; i <= iters; i++) {
            tq_put(t, 0, (void *)(uintptr_t)i);
            wrong += (uintptr_t)tq_get(t, 1) != (uintptr_t)i;
        }
        t->wrong = wrong;
    } else {
        for (long i = 0; i < iters; i++)
            tq_put(t, 1, tq_get(t, 0));
    }
}

/* Whether a measurement runs on conc's queues or the pthread ones. */
enum { SYS_CONC, SYS_PTHREAD };

static int64_t thread_run(bench_side_fn fn, int sys, long iters, const char *metric)
{
    tq t = { { NULL, NULL }, { NULL, NULL }, -1 };
    static pqueue pq[2];
    int64_t ns = 0;
    for (int i = 0; i < 2; i++) {
        if (sys == SYS_CONC) {
            conc_queue_opts o = { .kind = CONC_QUEUE_FIFO, .maxsize = MAXSIZE };
            int e = conc_queue_new(&t.c[i], &o);
            if (e < 0) {
                conc_queue_free(t.c[0]);
                return e;
            }
        } else {
            pqueue_init(&pq[i]);
            t.p[i] = &pq[i];
        }
    }
    ns = bench_run_pair(fn, &t, iters);
    size_t left = 0;
    for (int i = 0; i < 2; i++) {
        if (sys == SYS_CONC) {
            left += conc_queue_qsize(t.c[i]);
            conc_queue_free(t.c[i]);
        } else {
            left += pq[i].count;
            pqueue_destroy(&pq[i]);
        }
    }
    if (t.wrong != 0 || left != 0) {
        fprintf(stderr, "bench_queue: %s: %ld items arrived wrong, %zu left in the queues\n",
                metric, t.wrong, left);
        return WRONG_RESULT;
    }
    return ns;
}

static int64_t stream_conc(void *arg, long iters)
{
    (void)arg;
    return thread_run(stream_side, SYS_CONC, iters, "thread_queue_stream");
}

static int64_t stream_pthread(void *arg, long iters)
{
    (void)arg;
    return thread_run(stream_side, SYS_PTHREAD, iters, "thread_queue_stream");
}

static int64_t pingpong_conc(void *arg, long iters)
{
    (void)arg;
    return thread_run(pingpong_side, SYS_CONC, iters, "thread_queue_pingpong");
}

static int64_t pingpong_pthread(void *arg, long iters)
{
    (void)arg;
    return thread_run(pingpong_side, SYS_PTHREAD, iters, "thread_queue_pingpong");
}

/* ========================================================== processes */

#define MAX_SIDE 2              /* producers, consumers */
#define MAX_WORKERS (2 * MAX_SIDE)
#define BIG_MSG 4096
#define MAGIC UINT64_C(0x9E3779B97F4A7C15)  /* the trailer is seq ^ MAGIC */

/* What one consumer found, per producer. */
typedef struct consumer_result {
    long errors;
    uint64_t count[MAX_SIDE], sum[MAX_SIDE], sumsq[MAX_SIDE];
} consumer_result;

/* Everything the processes of a measurement share (MAP_SHARED, mapped
 * before any fork). */
typedef struct shared_area {
    alignas(64) pthread_barrier_t start;
    alignas(64) int64_t t0[MAX_WORKERS], t1[MAX_WORKERS];
    consumer_result res[MAX_SIDE];
} shared_area;

static shared_area *area;

static void map_area(void)
{
    void *p = mmap(NULL, sizeof *area, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        bench_die("mmap(MAP_SHARED)", -errno);
    area = p;
}

/* A message: producer, size and sequence number (16 bytes), then byte k of
 * the middle is producer * 131 + k * 7 + 1, then seq ^ MAGIC (8 bytes). */
typedef struct msg_head {
    uint32_t producer, size;
    uint64_t seq;
} msg_head;

#define MSG_OVERHEAD (sizeof(msg_head) + sizeof(uint64_t))

static void fill_middle(unsigned char *mid, uint32_t producer, size_t len)
{
    for (size_t k = 0; k < len; k++)
        mid[k] = (unsigned char)(producer * 131u + k * 7u + 1u);
}

static void stamp(unsigned char *msg, uint32_t producer, size_t size, uint64_t seq)
{
    msg_head h = { producer, (uint32_t)size, seq };
    uint64_t tail = seq ^ MAGIC;
    memcpy(msg, &h, sizeof h);
    memcpy(msg + size - sizeof tail, &tail, sizeof tail);
}

/*
 * A channel between processes, as the streams see it.  open runs in the
 * parent before the fork; role in each child (producer or not) to drop what
 * it does not use; put sends one message (len 0: the end mark); get takes
 * one into buf and returns its length; close runs in the parent once the
 * workers are forked.  put and get return negative errno values on error.
 */
typedef struct chan_ops {
    int (*open)(void *ch, int consumers);
    void (*role)(void *ch, bool producer);
    int (*put)(void *ch, const void *msg, size_t len);
    ssize_t (*get)(void *ch, void *buf, size_t cap);
    void (*close)(void *ch);
} chan_ops;

/* ---- conc_mpqueue */

typedef struct mpq_chan {
    conc_mpqueue *q;
} mpq_chan;

static int mpq_open(void *ch, int consumers)
{
    (void)consumers;
    return conc_mpqueue_new(&((mpq_chan *)ch)->q, NULL);
}

static void mpq_role(void *ch, bool producer)
{
    (void)ch;
    (void)producer;
}

static int mpq_put(void *ch, const void *msg, size_t len)
{
    return conc_mpqueue_put(((mpq_chan *)ch)->q, msg, len, CONC_FOREVER);
}

static ssize_t mpq_get(void *ch, void *buf, size_t cap)
{
    return conc_mpqueue_get(((mpq_chan *)ch)->q, buf, cap, CONC_FOREVER);
}

static void mpq_close(void *ch)
{
    conc_mpqueue_free(((mpq_chan *)ch)->q);
    ((mpq_chan *)ch)->q = NULL;
}

static const chan_ops mpq_ops = { mpq_open, mpq_role, mpq_put, mpq_get, mpq_close };

/* ---- a plain pipe */

#define PIPE_BLOCK 65536

typedef struct pipe_chan {
    int fd[2];
    bool packets;               /* O_DIRECT: one read() per message */
    unsigned char frame[4 + BIG_MSG];   /* the writer's length + message */
    size_t have, used;          /* the stream reader's buffer */
    unsigned char block[PIPE_BLOCK];
} pipe_chan;

static int pipe_open(void *ch, int consumers)
{
    pipe_chan *p = ch;
    p->packets = consumers > 1;
    p->have = p->used = 0;
    return pipe2(p->fd, O_CLOEXEC | (p->packets ? O_DIRECT : 0)) == 0 ? 0 : -errno;
}

static void pipe_role(void *ch, bool producer)
{
    pipe_chan *p = ch;
    close(p->fd[producer ? 0 : 1]);
}

static int pipe_put(void *ch, const void *msg, size_t len)
{
    pipe_chan *p = ch;
    uint32_t n = (uint32_t)len;
    memcpy(p->frame, &n, 4);
    memcpy(p->frame + 4, msg, len);
    ssize_t w;
    while ((w = write(p->fd[1], p->frame, 4 + len)) < 0 && errno == EINTR)
        ;
    if (w < 0)
        return -errno;
    /* A pipe writes everything a blocking write() is given (short writes
     * only come from signals, which none of ours get). */
    return w == (ssize_t)(4 + len) ? 0 : -EIO;
}

/* Read at least `want` bytes into the stream buffer (0: EOF). */
static int pipe_fill(pipe_chan *p, size_t want)
{
    if (p->used > 0) {
        memmove(p->block, p->block + p->used, p->have - p->used);
        p->have -= p->used;
        p->used = 0;
    }
    while (p->have < want) {
        ssize_t r = read(p->fd[0], p->block + p->have, sizeof p->block - p->have);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        if (r == 0)
            return 0;
        p->have += (size_t)r;
    }
    return 1;
}

static ssize_t pipe_get(void *ch, void *buf, size_t cap)
{
    pipe_chan *p = ch;
    uint32_t n;
    if (p->packets) {
        ssize_t r;
        while ((r = read(p->fd[0], p->frame, sizeof p->frame)) < 0 && errno == EINTR)
            ;
        if (r < 0)
            return -errno;
        if (r < 4)
            return -EPIPE;
        memcpy(&n, p->frame, 4);
        if ((size_t)r != 4 + (size_t)n || n > cap)
            return -EMSGSIZE;
        memcpy(buf, p->frame + 4, n);
        return n;
    }
    if (p->have - p->used < 4) {
        int e = pipe_fill(p, 4);
        if (e <= 0)
            return e < 0 ? e : -EPIPE;
    }
    memcpy(&n, p->block + p->used, 4);
    if (n > cap || n > PIPE_BLOCK - 4)
        return -EMSGSIZE;
    if (p->have - p->used < 4 + (size_t)n) {
        int e = pipe_fill(p, 4 + (size_t)n);
        if (e <= 0)
            return e < 0 ? e : -EPIPE;
    }
    memcpy(buf, p->block + p->used + 4, n);
    p->used += 4 + (size_t)n;
    return n;
}

static void pipe_close(void *ch)
{
    pipe_chan *p = ch;
    close(p->fd[0]);
    close(p->fd[1]);
}

static const chan_ops pipe_ops = { pipe_open, pipe_role, pipe_put, pipe_get, pipe_close };

/* ---- workers */

typedef struct stream_cfg {
    const chan_ops *ops;
    void *ch;
    size_t size;
    int producers, consumers;
    long per;                   /* messages per producer */
} stream_cfg;

static void worker_start(int slot, pid_t parent)
{
    bench_worker_enter(slot, parent);
    pthread_barrier_wait(&area->start);
    area->t0[slot] = bench_now();
}

static void worker_end(int slot)
{
    area->t1[slot] = bench_now();
    _exit(0);
}

static void worker_fail(const char *who, int err)
{
    fprintf(stderr, "bench_queue: %s: %s\n", who, strerror(err < 0 ? -err : err));
    _exit(1);
}

static void producer_main(const stream_cfg *s, int p, pid_t parent)
{
    static unsigned char msg[BIG_MSG];
    s->ops->role(s->ch, true);
    fill_middle(msg + sizeof(msg_head), (uint32_t)p, s->size - MSG_OVERHEAD);
    worker_start(p, parent);
    for (long seq = 0; seq < s->per; seq++) {
        stamp(msg, (uint32_t)p, s->size, (uint64_t)seq);
        int e = s->ops->put(s->ch, msg, s->size);
        if (e < 0)
            worker_fail("producer: put", e);
    }
    int e = s->ops->put(s->ch, msg, 0);
    if (e < 0)
        worker_fail("producer: put (end mark)", e);
    worker_end(p);
}

static void consumer_main(const stream_cfg *s, int c, pid_t parent)
{
    static unsigned char mid[MAX_SIDE][BIG_MSG], buf[2 * BIG_MSG];
    s->ops->role(s->ch, false);
    consumer_result r = { 0 };
    int64_t last[MAX_SIDE];
    size_t mid_len = s->size - MSG_OVERHEAD;
    for (int p = 0; p < s->producers; p++) {
        fill_middle(mid[p], (uint32_t)p, mid_len);
        last[p] = -1;
    }
    int slot = s->producers + c;
    worker_start(slot, parent);
    for (;;) {
        ssize_t n = s->ops->get(s->ch, buf, sizeof buf);
        if (n < 0)
            worker_fail("consumer: get", (int)n);
        if (n == 0)
            break;
        msg_head h;
        uint64_t tail;
        memcpy(&h, buf, sizeof h);
        memcpy(&tail, buf + s->size - sizeof tail, sizeof tail);
        if ((size_t)n != s->size || h.producer >= (uint32_t)s->producers || h.size != s->size
            || (int64_t)h.seq <= last[h.producer] || tail != (h.seq ^ MAGIC)
            || memcmp(buf + sizeof h, mid[h.producer], mid_len) != 0) {
            r.errors++;
            continue;
        }
        last[h.producer] = (int64_t)h.seq;
        r.count[h.producer]++;
        r.sum[h.producer] += h.seq;
        r.sumsq[h.producer] += h.seq * h.seq;
    }
    area->res[c] = r;
    worker_end(slot);
}

/* Wait for the n workers; when one fails, end the others (they may wait for
 * a message that will never come).  Returns 0 or -EIO. */
static int reap(pid_t *pid, int n, const char *metric)
{
    int rc = 0, left = n;
    while (left > 0) {
        int st;
        pid_t w = waitpid(-1, &st, 0);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            bench_die("waitpid", -errno);
        }
        int i = 0;
        while (i < n && pid[i] != w)
            i++;
        if (i == n)
            continue;
        pid[i] = -1;
        left--;
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            if (rc == 0)
                fprintf(stderr, "bench_queue: %s: worker %d ended with status %#x\n", metric, i, st);
            rc = -EIO;
            for (int k = 0; k < n; k++)
                if (pid[k] > 0)
                    kill(pid[k], SIGKILL);
        }
    }
    return rc;
}

/* Fork the workers (producers get slots 0.., consumers the next ones),
 * wait for them; returns the nanoseconds from the first start to the last
 * end, or a negative error. */
static int64_t run_workers(stream_cfg *s, const char *metric)
{
    int n = s->producers + s->consumers;
    pthread_barrierattr_t ba;
    pthread_barrierattr_init(&ba);
    pthread_barrierattr_setpshared(&ba, PTHREAD_PROCESS_SHARED);
    int e = pthread_barrier_init(&area->start, &ba, (unsigned)n);
    pthread_barrierattr_destroy(&ba);
    if (e)
        return -e;
    pid_t self = getpid(), pid[MAX_WORKERS];
    fflush(stdout);
    fflush(stderr);
    int started = 0;
    for (; started < n; started++) {
        pid[started] = fork();
        if (pid[started] < 0)
            break;
        if (pid[started] == 0) {
            if (started < s->producers)
                producer_main(s, started, self);
            else
                consumer_main(s, started - s->producers, self);
        }
    }
    e = started < n ? -errno : 0;
    s->ops->close(s->ch);
    if (e < 0) {
        for (int k = 0; k < started; k++)
            kill(pid[k], SIGKILL);
    }
    int rc = reap(pid, started, metric);
    pthread_barrier_destroy(&area->start);
    if (e < 0)
        return e;
    if (rc < 0)
        return rc;
    int64_t t0 = INT64_MAX, t1 = INT64_MIN;
    for (int i = 0; i < n; i++) {
        t0 = area->t0[i] < t0 ? area->t0[i] : t0;
        t1 = area->t1[i] > t1 ? area->t1[i] : t1;
    }
    return t1 - t0;
}

/* Check what the consumers received: every message of every producer, once. */
static int check_stream(const stream_cfg *s, const char *metric, const char *system)
{
    uint64_t per = (uint64_t)s->per;
    uint64_t want_sum = per * (per - 1) / 2;
    uint64_t want_sumsq = 0;            /* modulo 2^64, as the consumers add */
    for (uint64_t i = 0; i < per; i++)
        want_sumsq += i * i;
    long errors = 0;
    for (int c = 0; c < s->consumers; c++)
        errors += area->res[c].errors;
    if (errors) {
        fprintf(stderr, "bench_queue: %s/%s: %ld messages arrived damaged or out of order\n",
                metric, system, errors);
        return WRONG_RESULT;
    }
    for (int p = 0; p < s->producers; p++) {
        uint64_t count = 0, sum = 0, sumsq = 0;
        for (int c = 0; c < s->consumers; c++) {
            count += area->res[c].count[p];
            sum += area->res[c].sum[p];
            sumsq += area->res[c].sumsq[p];
        }
        if (count != per || sum != want_sum || sumsq != want_sumsq) {
            fprintf(stderr, "bench_queue: %s/%s: producer %d: %llu of %llu messages arrived%s\n",
                    metric, system, p, (unsigned long long)count, (unsigned long long)per,
                    count == per ? " (some twice, others lost)" : "");
            return WRONG_RESULT;
        }
    }
    return 0;
}

/* A stream measurement: which metric, which channel, its shape. */
typedef struct stream_case {
    const char *metric;
    const char *system;
    const chan_ops *ops;
    size_t size;
    int pairs;                  /* producers = consumers = pairs */
} stream_case;

static int64_t stream_body(void *arg, long iters)
{
    const stream_case *sc = arg;
    static mpq_chan mpq;
    static pipe_chan pc;
    stream_cfg s = {
        .ops = sc->ops, .ch = sc->ops == &mpq_ops ? (void *)&mpq : (void *)&pc,
        .size = sc->size, .producers = sc->pairs, .consumers = sc->pairs,
    };
    s.per = iters / s.producers > 0 ? iters / s.producers : 1;
    memset(area->res, 0, sizeof area->res);
    int e = s.ops->open(s.ch, s.consumers);
    if (e < 0)
        return e;
    int64_t ns = run_workers(&s, sc->metric);
    if (ns < 0)
        return ns;
    e = check_stream(&s, sc->metric, sc->system);
    if (e < 0)
        return e;
    return (int64_t)((double)ns * (double)iters / (double)(s.per * s.producers));
}

/* --------------------------------------------------------- pipe_pingpong */

#define PING_SIZE 64

/* A duplex byte channel between the pinger and the echoer. */
typedef struct ping_ops {
    int (*open)(void *ch);
    void (*role)(void *ch, int side);       /* 0: pinger, 1: echoer */
    int (*send)(void *ch, int side, const void *msg, size_t len);
    ssize_t (*recv)(void *ch, int side, void *buf, size_t cap);
    void (*close)(void *ch, int side);      /* -1: the parent's copies */
} ping_ops;

typedef struct conn_chan {
    conc_conn *end[2];
} conn_chan;

static int conn_open(void *ch)
{
    conn_chan *c = ch;
    return conc_conn_pipe(&c->end[0], &c->end[1], true);
}

static void conn_role(void *ch, int side)
{
    conn_chan *c = ch;
    conc_conn_free(c->end[1 - side]);
    c->end[1 - side] = NULL;
}

static int conn_send(void *ch, int side, const void *msg, size_t len)
{
    return conc_conn_send_bytes(((conn_chan *)ch)->end[side], msg, len, CONC_FOREVER);
}

static ssize_t conn_recv(void *ch, int side, void *buf, size_t cap)
{
    return conc_conn_recv_bytes(((conn_chan *)ch)->end[side], buf, cap, CONC_FOREVER);
}

static void conn_close(void *ch, int side)
{
    conn_chan *c = ch;
    for (int i = 0; i < 2; i++)
        if (side < 0 || i == side) {
            conc_conn_free(c->end[i]);
            c->end[i] = NULL;
        }
}

static const ping_ops conn_ops = { conn_open, conn_role, conn_send, conn_recv, conn_close };

/* The raw socketpair: conc's wire format (8-byte length, the bytes), one
 * write() per message, read() until the message is whole. */
typedef struct sock_chan {
    int fd[2];
    unsigned char frame[8 + PING_SIZE];
} sock_chan;

static int sock_open(void *ch)
{
    sock_chan *s = ch;
    return socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s->fd) == 0 ? 0 : -errno;
}

static void sock_role(void *ch, int side)
{
    sock_chan *s = ch;
    close(s->fd[1 - side]);
    s->fd[1 - side] = -1;
}

static int sock_send(void *ch, int side, const void *msg, size_t len)
{
    sock_chan *s = ch;
    uint64_t n = len;
    if (len > PING_SIZE)
        return -EMSGSIZE;
    memcpy(s->frame, &n, 8);
    memcpy(s->frame + 8, msg, len);
    ssize_t w;
    while ((w = write(s->fd[side], s->frame, 8 + len)) < 0 && errno == EINTR)
        ;
    if (w < 0)
        return -errno;
    return w == (ssize_t)(8 + len) ? 0 : -EIO;
}

static ssize_t sock_recv(void *ch, int side, void *buf, size_t cap)
{
    sock_chan *s = ch;
    size_t have = 0;
    uint64_t n = 0;
    for (;;) {
        if (have >= 8) {
            memcpy(&n, s->frame, 8);
            if (n > PING_SIZE || n > cap)
                return -EMSGSIZE;
            if (have == 8 + n)
                break;
        }
        size_t want = have < 8 ? sizeof s->frame - have : 8 + n - have;
        ssize_t r = read(s->fd[side], s->frame + have, want);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        if (r == 0)
            return -EPIPE;
        have += (size_t)r;
    }
    memcpy(buf, s->frame + 8, n);
    return (ssize_t)n;
}

static void sock_close(void *ch, int side)
{
    sock_chan *s = ch;
    for (int i = 0; i < 2; i++)
        if ((side < 0 || i == side) && s->fd[i] >= 0) {
            close(s->fd[i]);
            s->fd[i] = -1;
        }
}

static const ping_ops sock_ops = { sock_open, sock_role, sock_send, sock_recv, sock_close };

static void pinger_main(const ping_ops *ops, void *ch, long iters, pid_t parent)
{
    unsigned char msg[PING_SIZE], back[2 * PING_SIZE];
    ops->role(ch, 0);
    fill_middle(msg + sizeof(msg_head), 0, PING_SIZE - MSG_OVERHEAD);
    worker_start(0, parent);
    for (long seq = 0; seq < iters; seq++) {
        stamp(msg, 0, PING_SIZE, (uint64_t)seq);
        int e = ops->send(ch, 0, msg, PING_SIZE);
        if (e < 0)
            worker_fail("pinger: send", e);
        ssize_t n = ops->recv(ch, 0, back, sizeof back);
        if (n < 0)
            worker_fail("pinger: recv", (int)n);
        if (n != PING_SIZE || memcmp(back, msg, PING_SIZE) != 0) {
            fprintf(stderr, "bench_queue: pipe_pingpong: message %ld came back wrong\n", seq);
            _exit(1);
        }
    }
    area->t1[0] = bench_now();
    ops->close(ch, 0);          /* the echoer sees the end */
    _exit(0);
}

static void echoer_main(const ping_ops *ops, void *ch, pid_t parent)
{
    unsigned char buf[2 * PING_SIZE];
    ops->role(ch, 1);
    worker_start(1, parent);
    for (;;) {
        ssize_t n = ops->recv(ch, 1, buf, sizeof buf);
        if (n == -EPIPE)
            break;
        if (n < 0)
            worker_fail("echoer: recv", (int)n);
        int e = ops->send(ch, 1, buf, (size_t)n);
        if (e < 0)
            worker_fail("echoer: send", e);
    }
    _exit(0);
}

static int64_t pingpong_body(void *arg, long iters)
{
    const ping_ops *ops = arg;
    static conn_chan cc;
    static sock_chan sk;
    void *ch = ops == &conn_ops ? (void *)&cc : (void *)&sk;
    int e = ops->open(ch);
    if (e < 0)
        return e;
    pthread_barrierattr_t ba;
    pthread_barrierattr_init(&ba);
    pthread_barrierattr_setpshared(&ba, PTHREAD_PROCESS_SHARED);
    e = pthread_barrier_init(&area->start, &ba, 2);
    pthread_barrierattr_destroy(&ba);
    if (e) {
        ops->close(ch, -1);
        return -e;
    }
    pid_t self = getpid(), pid[2];
    fflush(stdout);
    fflush(stderr);
    int started = 0;
    for (; started < 2; started++) {
        pid[started] = fork();
        if (pid[started] < 0)
            break;
        if (pid[started] == 0) {
            if (started == 0)
                pinger_main(ops, ch, iters, self);
            echoer_main(ops, ch, self);
        }
    }
    e = started < 2 ? -errno : 0;
    ops->close(ch, -1);
    if (e < 0 && started > 0)
        kill(pid[0], SIGKILL);
    int rc = reap(pid, started, "pipe_pingpong");
    pthread_barrier_destroy(&area->start);
    if (e < 0)
        return e;
    if (rc < 0)
        return rc;
    return area->t1[0] - area->t0[0];
}

/* ============================================================== peers */

static void skip_all(const char *system, const char *const which[], const char *why)
{
    for (size_t i = 0; which[i]; i++)
        if (bench_enabled(which[i], system))
            bench_skip(which[i], system, NULL, why);
}

static bool any_enabled(const char *system, const char *const which[])
{
    for (size_t i = 0; which[i]; i++)
        if (bench_enabled(which[i], system))
            return true;
    return false;
}

static const char *const thread_metrics[] = {
    "thread_queue_stream", "thread_queue_pingpong", NULL,
};
static const char *const proc_metrics[] = {
    "proc_queue_stream_64", "proc_queue_stream_64_2x2", "proc_queue_stream_4k",
    "proc_queue_stream_4k_2x2", "pipe_pingpong", NULL,
};

static void run_python(void)
{
    /* Python is ~100x slower per message: its scripts have their own,
     * smaller iteration counts; we pass the scale and the repetitions. */
    double scale = bench_scale() * (bench_quick() ? 0.05 : 1.0);
    int reps = (bench_reps() + 1) / 2;
    char cpus[256];
    snprintf(cpus, sizeof cpus, "%s", bench_cpu_list(2));
    bench_peer_run_metrics("python", false, bench_python(), bench_peer_path("queue_threading.py"),
                           reps, cpus, scale, thread_metrics);
    snprintf(cpus, sizeof cpus, "%s", bench_cpu_list(MAX_WORKERS));
    bench_peer_run_metrics("python", false, bench_python(), bench_peer_path("queue_mp.py"),
                           reps, cpus, scale, proc_metrics);
}

/* Run argv (its output to our stderr) for at most timeout_s seconds; returns
 * its exit status, or -1 when it could not run, died or timed out. */
static int run_tool(char *const argv[], double timeout_s, const char *gocache)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        dup2(STDERR_FILENO, STDOUT_FILENO);
        if (gocache)
            setenv("GOCACHE", gocache, 1);
        execvp(argv[0], argv);
        _exit(127);
    }
    int64_t deadline = bench_now() + (int64_t)(timeout_s * 1e9);
    int st;
    for (;;) {
        pid_t w = waitpid(pid, &st, WNOHANG);
        if (w == pid)
            break;
        if (w < 0 && errno != EINTR)
            return -1;
        if (bench_now() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        struct timespec ts = { 0, 20 * 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Build the Go peer next to this program (when missing or older than its
 * source); returns its path, or NULL with the reason in why. */
static const char *build_go_peer(char *why, size_t n)
{
    static char exe[4096], out[4200], tmp[4300], src[4096], cache[4200];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len <= 0) {
        snprintf(why, n, "cannot find this program's directory");
        return NULL;
    }
    exe[len] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash)
        *slash = '\0';
    snprintf(out, sizeof out, "%s/queue_go", exe);
    snprintf(src, sizeof src, "%s", bench_peer_path("queue_go.go"));
    struct stat s_src, s_out;
    if (stat(src, &s_src) != 0) {
        snprintf(why, n, "%.200s not found", src);
        return NULL;
    }
    if (stat(out, &s_out) == 0 && s_out.st_mtime >= s_src.st_mtime && access(out, X_OK) == 0)
        return out;
    /* go needs a build cache: $GOCACHE, else under $XDG_CACHE_HOME or $HOME. */
    const char *gocache = NULL;
    if (!getenv("GOCACHE") && !getenv("XDG_CACHE_HOME") && !getenv("HOME")) {
        snprintf(cache, sizeof cache, "%s/go-cache", exe);
        gocache = cache;
    }
    snprintf(tmp, sizeof tmp, "%s.%ld.tmp", out, (long)getpid());
    char *argv[] = { "go", "build", "-o", tmp, src, NULL };
    int st = run_tool(argv, 600.0, gocache);
    if (st != 0 || rename(tmp, out) != 0) {
        unlink(tmp);
        snprintf(why, n, "go build %.200s failed", src);
        return NULL;
    }
    return out;
}

static void run_go(void)
{
    static const char *const systems[] = { "go", "go-unbuffered" };
    if (!any_enabled(systems[0], thread_metrics) && !any_enabled(systems[1], thread_metrics))
        return;
    char why[256];
    const char *prog = NULL;
    if (!bench_in_path("go"))
        snprintf(why, sizeof why, "go is not installed (golang-go; make bench installs it)");
    else
        prog = build_go_peer(why, sizeof why);
    if (!prog) {
        for (size_t s = 0; s < BENCH_ARRAY_LEN(systems); s++)
            skip_all(systems[s], thread_metrics, why);
        return;
    }
    double scale = bench_scale() * (bench_quick() ? 0.05 : 1.0);
    for (size_t s = 0; s < BENCH_ARRAY_LEN(systems); s++)
        bench_peer_run_metrics(systems[s], true, prog, NULL, bench_reps(), NULL, scale, thread_metrics);
}

/* ================================================================ main */

int main(int argc, char **argv)
{
    bench_init(argc, argv, "bench_queue: conc queues and pipes vs pthread, Go channels, "
               "pipe, socketpair, Python queue and multiprocessing",
               metrics, BENCH_ARRAY_LEN(metrics));
    bench_become_multithreaded();
    map_area();

    bench_compare_pthread("thread_queue_stream", stream_conc, stream_pthread,
                          bench_iters(50000000, 2000000), BENCH_MEDIAN);
    bench_compare_pthread("thread_queue_pingpong", pingpong_conc, pingpong_pthread,
                          bench_iters(5000000, 500000), BENCH_MEDIAN);

    /* Each stream metric: conc, then the pipe (none for 4k_2x2). */
    static const stream_case sc[][2] = {
        { { "proc_queue_stream_64", "conc", &mpq_ops, 64, 1 },
          { "proc_queue_stream_64", "pipe", &pipe_ops, 64, 1 } },
        { { "proc_queue_stream_64_2x2", "conc", &mpq_ops, 64, 2 },
          { "proc_queue_stream_64_2x2", "pipe", &pipe_ops, 64, 2 } },
        { { "proc_queue_stream_4k", "conc", &mpq_ops, BIG_MSG, 1 },
          { "proc_queue_stream_4k", "pipe", &pipe_ops, BIG_MSG, 1 } },
        { { "proc_queue_stream_4k_2x2", "conc", &mpq_ops, BIG_MSG, 2 },
          { NULL, NULL, NULL, 0, 0 } },
    };
    for (size_t i = 0; i < BENCH_ARRAY_LEN(sc); i++) {
        bench_case cases[2];
        size_t n = 0;
        for (size_t k = 0; k < 2 && sc[i][k].metric; k++)
            cases[n++] = (bench_case){ sc[i][k].system, stream_body, (void *)&sc[i][k] };
        bench_compare(sc[i][0].metric, cases, n,
                      bench_iters(sc[i][0].size > 64 ? 5000000 : 20000000, 1000000), BENCH_MEDIAN);
    }
    if (bench_enabled("proc_queue_stream_4k_2x2", "pipe"))
        bench_skip("proc_queue_stream_4k_2x2", "pipe", NULL,
                   "a 4 KiB message and its length are over PIPE_BUF: writes to a shared "
                   "pipe would interleave");

    static const bench_case pp[] = {
        { "conc", pingpong_body, (void *)&conn_ops },
        { "socketpair", pingpong_body, (void *)&sock_ops },
    };
    bench_compare("pipe_pingpong", pp, BENCH_ARRAY_LEN(pp),
                  bench_iters(2000000, 200000), BENCH_MEDIAN);

    run_python();
    run_go();
    return bench_report();
}
