/*
 * bench_pool.c - conc's process Pool, ThreadPool and executors against
 * Python's multiprocessing.Pool and concurrent.futures, and against the
 * floor of a task round trip between two processes, in one run.
 *
 * The task is square(x) = x * x on a 64-bit integer (in a process pool its
 * 8 bytes go in and 8 bytes come back); every pool and executor has
 * WORKERS (2) workers, started and warmed up (each has answered a task)
 * before the clock starts; Python's are made the same way, with the "fork"
 * start method, as are conc's.  Metrics, all in tasks/s:
 *
 *   pool_map_chunk1              map(square, 0..n-1) with chunksize 1
 *   pool_map_default             map(square, 0..n-1), the default chunksize
 *   pool_apply_rtt               apply(square, i), one after another: round
 *                                trips per second.  floor: a raw fork()ed
 *                                child and its parent hand the argument and
 *                                the result back and forth through a shared
 *                                page, each side sleeping on a futex(2) word
 *                                until the other wakes it: what a round trip
 *                                between two processes costs at least.
 *                                The floor never spins; conc's slot does,
 *                                under the library's spin policy, when the
 *                                other side last ran on another CPU (so on
 *                                an idle machine conc's round trip makes no
 *                                system call).  Neither arms a timer for
 *                                its sleep.  The two take turns
 *                                within each repetition, a block of
 *                                round trips each (rtt_compare says why)
 *   pool_apply_async             apply_async(square, i) n times, then get()
 *                                each
 *   threadpool_executor_submit   ThreadPoolExecutor: submit(square, i) n
 *                                times, then result() each
 *   processpool_executor_submit  ProcessPoolExecutor: the same
 *
 * Nothing is pinned: the pools' workers are scheduled as the kernel likes,
 * for every system alike.  Self-checks, reported as FAILED: every result is
 * compared with i * i.  The floor's child dies with the parent
 * (PR_SET_PDEATHSIG); a lost wake-up shows as a hang, which benchlib's
 * watchdog turns into an error exit.  Python runs as bench/peers/pool_mp.py.
 */
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <signal.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conc.h"
#include "conc/executor.h"
#include "conc/pool.h"
#include "benchlib.h"

#define WORKERS 2

static const bench_metric metrics[] = {
    { "pool_map_chunk1", "tasks/s", "Pool map(square, 0..n-1), chunksize 1" },
    { "pool_map_default", "tasks/s", "Pool map(square, 0..n-1), the default chunksize" },
    { "pool_apply_rtt", "tasks/s", "Pool apply(square, i) one after another (round trips/s)" },
    { "pool_apply_async", "tasks/s", "Pool apply_async(square, i) n times, then get() each" },
    { "threadpool_executor_submit", "tasks/s", "ThreadPoolExecutor submit(square, i) n times, then result() each" },
    { "processpool_executor_submit", "tasks/s", "ProcessPoolExecutor submit(square, i) n times, then result() each" },
};

/* A body that finds a wrong result says why on stderr and returns this. */
#define WRONG_RESULT (-EPROTO)

static int64_t square(int64_t x)
{
    return x * x;
}

/* ------------------------------------------------------------------ floor */

/* The page the floor's two processes share: the request and the answer,
 * each with its own futex word (a sequence number) on its own cache line. */
typedef struct floor_area {
    alignas(64) _Atomic uint32_t req_seq;
    int64_t arg;
    alignas(64) _Atomic uint32_t resp_seq;
    int64_t result;
} floor_area;

static void futex_wait(_Atomic uint32_t *word, uint32_t old)
{
    /* Shared futex (no FUTEX_PRIVATE_FLAG): the word is in MAP_SHARED memory. */
    syscall(SYS_futex, word, FUTEX_WAIT, old, NULL, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *word)
{
    syscall(SYS_futex, word, FUTEX_WAKE, 1, NULL, NULL, 0);
}

/* Waits until *word differs from old; returns its new value. */
static uint32_t wait_change(_Atomic uint32_t *word, uint32_t old)
{
    uint32_t v;
    while ((v = atomic_load_explicit(word, memory_order_acquire)) == old)
        futex_wait(word, old);
    return v;
}

/* The child: answer every request; arg INT64_MIN ends it. */
static void floor_child(floor_area *a, pid_t parent)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(1);
    uint32_t seen = 0;
    for (;;) {
        seen = wait_change(&a->req_seq, seen);
        int64_t x = a->arg;
        if (x == INT64_MIN)
            _exit(0);
        a->result = square(x);
        atomic_fetch_add_explicit(&a->resp_seq, 1, memory_order_release);
        futex_wake(&a->resp_seq);
    }
}

/* One round trip: hand x to the child, wait for its answer. */
static int64_t floor_call(floor_area *a, int64_t x)
{
    uint32_t before = atomic_load_explicit(&a->resp_seq, memory_order_relaxed);
    a->arg = x;
    atomic_fetch_add_explicit(&a->req_seq, 1, memory_order_release);
    futex_wake(&a->req_seq);
    wait_change(&a->resp_seq, before);
    return a->result;
}

/* A floor child, started and warmed up (it has answered calls) like a
 * pool. */
typedef struct floor_side {
    floor_area *a;
    pid_t pid;
} floor_side;

/* Ends the child; rc, or the child's failure when rc is 0. */
static int floor_stop(floor_side *f, int rc)
{
    f->a->arg = INT64_MIN;
    atomic_fetch_add_explicit(&f->a->req_seq, 1, memory_order_release);
    futex_wake(&f->a->req_seq);
    int st;
    while (waitpid(f->pid, &st, 0) < 0)
        if (errno != EINTR)
            bench_die("waitpid", -errno);
    munmap(f->a, sizeof *f->a);
    if (rc == 0 && (!WIFEXITED(st) || WEXITSTATUS(st) != 0)) {
        fprintf(stderr, "bench_pool: floor child ended with status %#x\n", st);
        rc = -EIO;
    }
    return rc;
}

static int floor_start(floor_side *f)
{
    f->a = mmap(NULL, sizeof *f->a, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (f->a == MAP_FAILED)
        return -errno;
    pid_t self = getpid();
    fflush(stdout);
    fflush(stderr);
    f->pid = fork();
    if (f->pid < 0) {
        int e = -errno;
        munmap(f->a, sizeof *f->a);
        return e;
    }
    if (f->pid == 0)
        floor_child(f->a, self);
    for (int64_t i = 0; i < WORKERS * 4; i++)       /* warm-up, as for the pools */
        if (floor_call(f->a, i) != i * i)
            return floor_stop(f, WRONG_RESULT);
    return 0;
}
/* Round trips from..from+n-1 through the floor; 0 or WRONG_RESULT. */
static int floor_block(floor_side *f, long from, long n)
{
    for (long i = from; i < from + n; i++)
        if (floor_call(f->a, i) != square(i)) {
            fprintf(stderr, "bench_pool: pool_apply_rtt/floor: result %lld for %ld\n",
                    (long long)f->a->result, i);
            return WRONG_RESULT;
        }
    return 0;
}

/* ------------------------------------------------------- conc: the task */

/* A process pool's square: 8 bytes in, 8 bytes out. */
static int square_bytes(const void *arg, size_t len, void **result, size_t *result_len)
{
    int64_t x;
    if (len != sizeof x)
        return -EINVAL;
    memcpy(&x, arg, sizeof x);
    int64_t *out = malloc(sizeof *out);
    if (!out)
        return -ENOMEM;
    *out = square(x);
    *result = out;
    *result_len = sizeof *out;
    return 0;
}

/* A thread executor's square: the integer travels in the pointer. */
static int square_ptr(void *arg, void **result)
{
    *result = (void *)(intptr_t)square((int64_t)(intptr_t)arg);
    return 0;
}

/* Checks one bytes result of task i. */
static int check_bytes(const char *metric, long i, int status, const void *v, size_t len)
{
    int64_t got;
    if (status != 0 || len != sizeof got) {
        fprintf(stderr, "bench_pool: %s: task %ld: status %d, %zu bytes\n", metric, i, status,
                len);
        return WRONG_RESULT;
    }
    memcpy(&got, v, sizeof got);
    if (got != square(i)) {
        fprintf(stderr, "bench_pool: %s: task %ld gave %lld\n", metric, i, (long long)got);
        return WRONG_RESULT;
    }
    return 0;
}

/* ---------------------------------------------- threadpool_executor_submit */

static int64_t tpe_conc(void *arg, long iters)
{
    (void)arg;
    conc_executor_opts eo = CONC_EXECUTOR_OPTS_INIT;
    eo.kind = CONC_EXECUTOR_THREADS;
    eo.max_workers = WORKERS;
    conc_executor *ex;
    int e = conc_executor_new(&ex, &eo);
    if (e < 0)
        return e;
    conc_future **fs = calloc((size_t)iters + WORKERS * 4, sizeof *fs);
    if (!fs) {
        conc_executor_free(ex);
        return -ENOMEM;
    }
    int64_t rc = 0, t0 = 0, ns = 0;
    /* Warm-up: every worker thread is started and has run a call. */
    for (long pass = 0; pass < 2 && rc == 0; pass++) {
        long n = pass == 0 ? WORKERS * 4 : iters;
        if (pass == 1)
            t0 = bench_now();
        long submitted = 0;
        for (long i = 0; i < n; i++, submitted++)
            if ((e = conc_executor_submit(ex, square_ptr, (void *)(intptr_t)i, &fs[i])) < 0) {
                rc = e;
                break;
            }
        for (long i = 0; i < submitted; i++) {
            void *v = NULL;
            e = conc_future_result(fs[i], &v, NULL, CONC_FOREVER);
            if (rc == 0 && (e != 0 || (int64_t)(intptr_t)v != square(i))) {
                fprintf(stderr, "bench_pool: threadpool_executor_submit: call %ld: %d, %lld\n",
                        i, e, (long long)(intptr_t)v);
                rc = e < 0 ? e : WRONG_RESULT;
            }
            conc_future_free(fs[i]);
        }
        if (pass == 1)
            ns = bench_now() - t0;
    }
    free(fs);
    conc_executor_free(ex);
    return rc < 0 ? rc : ns;
}

/* --------------------------------------------------------- process Pool */

/* A process pool of WORKERS workers (fork), warmed up: every worker has
 * answered a task. */
static int pool_ready(conc_pool **out)
{
    conc_pool_opts po = CONC_POOL_OPTS_INIT;
    po.processes = WORKERS;
    po.method = CONC_START_FORK;
    int e = conc_pool_new(out, &po);
    if (e < 0)
        return e;
    int64_t args[WORKERS * 4];
    conc_pool_item items[WORKERS * 4];
    for (int i = 0; i < WORKERS * 4; i++) {
        args[i] = i;
        items[i] = (conc_pool_item){ &args[i], sizeof args[i] };
    }
    conc_pool_task_opts to = CONC_POOL_TASK_OPTS_INIT;
    to.chunksize = 1;
    conc_pool_result *r = NULL;
    e = conc_pool_map(*out, square_bytes, items, WORKERS * 4, &to, &r);
    conc_pool_result_free(r);
    if (e < 0)
        conc_pool_free(*out);
    return e;
}

/* The arguments 0..n-1 as map items (args holds their bytes). */
static conc_pool_item *items_new(long n, int64_t **args)
{
    *args = malloc((size_t)n * sizeof **args);
    conc_pool_item *items = malloc((size_t)n * sizeof *items);
    if (!*args || !items) {
        free(*args);
        free(items);
        return NULL;
    }
    for (long i = 0; i < n; i++) {
        (*args)[i] = i;
        items[i] = (conc_pool_item){ &(*args)[i], sizeof (*args)[i] };
    }
    return items;
}

/* arg: the chunksize (0: the default). */
static int64_t map_conc(void *arg, long iters)
{
    size_t chunksize = (size_t)(uintptr_t)arg;
    const char *metric = chunksize == 1 ? "pool_map_chunk1" : "pool_map_default";
    int64_t *args;
    conc_pool_item *items = items_new(iters, &args);
    if (!items)
        return -ENOMEM;
    conc_pool *p;
    int e = pool_ready(&p);
    if (e < 0) {
        free(items);
        free(args);
        return e;
    }
    conc_pool_task_opts to = CONC_POOL_TASK_OPTS_INIT;
    to.chunksize = chunksize;
    conc_pool_result *r = NULL;
    int64_t t0 = bench_now();
    e = conc_pool_map(p, square_bytes, items, (size_t)iters, &to, &r);
    int64_t ns = bench_now() - t0;
    int64_t rc = e;
    for (long i = 0; i < iters && rc == 0; i++) {
        void *v = NULL;
        size_t len = 0;
        int st = conc_pool_result_item(r, (size_t)i, &v, &len);
        rc = check_bytes(metric, i, st, v, len);
    }
    conc_pool_result_free(r);
    conc_pool_free(p);
    free(items);
    free(args);
    return rc < 0 ? rc : ns;
}

/* Round trips from..from+n-1 through apply; 0 or a failure. */
static int rtt_conc_block(conc_pool *p, long from, long n)
{
    int rc = 0;
    for (long i = from; i < from + n && rc == 0; i++) {
        int64_t x = i;
        void *v = NULL;
        size_t len = 0;
        int st = conc_pool_apply(p, square_bytes, &x, sizeof x, &v, &len);
        rc = check_bytes("pool_apply_rtt", i, st, v, len);
        free(v);
    }
    return rc;
}

/*
 * pool_apply_rtt: conc and the floor take turns in the same repetition, in
 * blocks of RTT_BLOCK round trips (about a millisecond), each repetition
 * with a new pool and a new floor child, and which of the two goes first
 * alternates from block to block.  Repetitions of their own (as
 * bench_compare runs them) each last a budget, and a machine shared with
 * other work changes within one: a burst of other load, or the scheduler
 * putting the two sides of a round trip on one CPU or on two (a round trip
 * across two idle CPUs costs several times one on a single CPU), decided
 * the ratio of a run more than either system did.  Taking turns this often
 * puts both through the same stretches of the machine; the caller is the
 * same thread for both.  The two figures come from one repetition, the one
 * whose conc/floor ratio is the median of the repetitions' ratios (the
 * lower of the middle two for an even count): the figures in a ratio were
 * measured through the same stretch, where each system's own median
 * repetition could come from different ones (with five repetitions on a
 * loaded machine, that ratio swung twice as far).  A system measured alone
 * gives its median repetition.
 */
#define RTT_BLOCK 256

/* One repetition of n round trips each; ns[0] conc's time, ns[1] the
 * floor's (a system not selected: 0).  0 or the first failure. */
static int rtt_rep(long n, int first, bool use[2], int64_t ns[2])
{
    conc_pool *p = NULL;
    floor_side f = { NULL, 0 };
    int rc = 0;
    ns[0] = ns[1] = 0;
    if (use[0] && (rc = pool_ready(&p)) < 0)
        return rc;
    if (use[1] && (rc = floor_start(&f)) < 0) {
        if (p)
            conc_pool_free(p);
        return rc;
    }
    for (long done = 0, k = 0; done < n && rc == 0; k++) {
        long b = n - done < RTT_BLOCK ? n - done : RTT_BLOCK;
        for (int j = 0; j < 2 && rc == 0; j++) {
            int s = (int)((first + k + j) % 2);
            if (!use[s])
                continue;
            int64_t t0 = bench_now();
            rc = s == 0 ? rtt_conc_block(p, done, b) : floor_block(&f, done, b);
            ns[s] += bench_now() - t0;
        }
        done += b;
    }
    if (p)
        conc_pool_free(p);
    if (use[1])
        rc = floor_stop(&f, rc);
    return rc;
}

static int cmp_ns(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int64_t median_ns(int64_t *t, int reps)
{
    qsort(t, (size_t)reps, sizeof *t, cmp_ns);
    return reps % 2 ? t[reps / 2] : (t[reps / 2 - 1] + t[reps / 2]) / 2;
}

/* The repetition whose ratio of conc's rate to the floor's (t: conc's
 * times, then the floor's) is the median one; the lower of the middle two
 * for an even count. */
static int median_pair(const int64_t *t, int reps)
{
    int order[reps];
    double q[reps];
    for (int r = 0; r < reps; r++) {
        order[r] = r;
        q[r] = t[r] > 0 ? (double)t[reps + r] / (double)t[r] : 0;
    }
    for (int i = 1; i < reps; i++)          /* a handful: insertion sort */
        for (int j = i; j > 0 && q[order[j]] < q[order[j - 1]]; j--) {
            int x = order[j];
            order[j] = order[j - 1];
            order[j - 1] = x;
        }
    return order[(reps - 1) / 2];
}

static void rtt_compare(long iters)
{
    static const char *const sys[2] = { "conc", "floor" };
    bool use[2] = { bench_enabled("pool_apply_rtt", "conc"),
                    bench_enabled("pool_apply_rtt", "floor") };
    if (!use[0] && !use[1])
        return;
    int reps = bench_reps();
    int64_t *t = calloc((size_t)reps * 2, sizeof *t);
    if (!t)
        bench_die("calloc", ENOMEM);
    /* A hang (a lost wake-up) ends the program, as in bench_compare. */
    alarm((unsigned)(30 * (reps + 1) * (bench_scale() > 1 ? bench_scale() : 1)));
    /* Calibration: the slower system's speed decides n, so that its part of
     * a repetition fits the budget (~150 ms, 15 ms with --quick). */
    int64_t ns[2];
    long n = iters / 100 > RTT_BLOCK ? iters / 100 : RTT_BLOCK;
    int rc = rtt_rep(n, 0, use, ns);
    if (rc == 0) {
        double budget = (bench_quick() ? 15e6 : 150e6) * bench_scale();
        double per = (double)(ns[0] > ns[1] ? ns[0] : ns[1]) / (double)n;
        double fit = per > 0 ? budget / per : (double)iters;
        n = fit >= (double)iters ? iters : fit < RTT_BLOCK ? RTT_BLOCK : (long)fit;
    }
    for (int r = 0; r < reps && rc == 0; r++) {
        rc = rtt_rep(n, r % 2, use, ns);
        t[r] = ns[0];
        t[reps + r] = ns[1];
    }
    alarm(0);
    int pick = rc == 0 && use[0] && use[1] ? median_pair(t, reps) : -1;
    for (int s = 0; s < 2; s++) {
        if (!use[s])
            continue;
        if (rc < 0) {
            int e = rc < -4095 ? -EIO : rc;
            bench_fail("pool_apply_rtt", sys[s], "error %d (%s)", e, strerror(-e));
            continue;
        }
        int64_t *ts = t + (size_t)s * (size_t)reps;
        double per = (double)(pick >= 0 ? ts[pick] : median_ns(ts, reps)) / (double)n;
        bench_record("pool_apply_rtt", sys[s], per > 0 ? 1e9 / per : 0, "tasks/s");
    }
    free(t);
}

static int64_t async_conc(void *arg, long iters)
{
    (void)arg;
    conc_pool_result **rs = calloc((size_t)iters, sizeof *rs);
    if (!rs)
        return -ENOMEM;
    conc_pool *p;
    int e = pool_ready(&p);
    if (e < 0) {
        free(rs);
        return e;
    }
    int64_t rc = 0;
    long submitted = 0;
    int64_t t0 = bench_now();
    for (; submitted < iters; submitted++) {
        int64_t x = submitted;
        if ((e = conc_pool_apply_async(p, square_bytes, &x, sizeof x, NULL, &rs[submitted])) < 0) {
            rc = e;
            break;
        }
    }
    for (long i = 0; i < submitted; i++) {
        void *v = NULL;
        size_t len = 0;
        int st = conc_pool_result_get(rs[i], &v, &len, CONC_FOREVER);
        if (rc == 0)
            rc = check_bytes("pool_apply_async", i, st, v, len);
    }
    int64_t ns = bench_now() - t0;
    for (long i = 0; i < submitted; i++)
        conc_pool_result_free(rs[i]);
    free(rs);
    conc_pool_free(p);
    return rc < 0 ? rc : ns;
}

/* --------------------------------------------- processpool_executor_submit */

static int ppe_new(conc_executor **ex)
{
    conc_executor_opts eo = CONC_EXECUTOR_OPTS_INIT;
    eo.kind = CONC_EXECUTOR_PROCESSES;
    eo.max_workers = WORKERS;
    eo.method = CONC_START_FORK;
    return conc_executor_new(ex, &eo);
}

static int64_t ppe_conc(void *arg, long iters)
{
    (void)arg;
    conc_executor *ex;
    int e = ppe_new(&ex);
    if (e < 0)
        return e;
    conc_future **fs = calloc((size_t)iters + WORKERS * 4, sizeof *fs);
    if (!fs) {
        conc_executor_free(ex);
        return -ENOMEM;
    }
    int64_t rc = 0, t0 = 0, ns = 0;
    for (long pass = 0; pass < 2 && rc == 0; pass++) {
        long n = pass == 0 ? WORKERS * 4 : iters;      /* pass 0: the warm-up */
        if (pass == 1)
            t0 = bench_now();
        long submitted = 0;
        for (long i = 0; i < n; i++, submitted++) {
            int64_t x = i;
            if ((e = conc_executor_submit_bytes(ex, square_bytes, &x, sizeof x, &fs[i])) < 0) {
                rc = e;
                break;
            }
        }
        for (long i = 0; i < submitted; i++) {
            void *v = NULL;
            size_t len = 0;
            e = conc_future_result(fs[i], &v, &len, CONC_FOREVER);
            if (rc == 0)
                rc = check_bytes("processpool_executor_submit", i, e, v, len);
            conc_future_free(fs[i]);
        }
        if (pass == 1)
            ns = bench_now() - t0;
    }
    free(fs);
    conc_executor_free(ex);
    return rc < 0 ? rc : ns;
}

/* ------------------------------------------------------------------ main */

static const char *const py_metrics[] = {
    "pool_map_chunk1", "pool_map_default", "pool_apply_rtt", "pool_apply_async",
    "threadpool_executor_submit", "processpool_executor_submit", NULL,
};

int main(int argc, char **argv)
{
    bench_init(argc, argv,
               "bench_pool: conc Pool, ThreadPool and executors vs Python multiprocessing.Pool "
               "and concurrent.futures, and a raw futex round trip",
               metrics, BENCH_ARRAY_LEN(metrics));
    bench_become_multithreaded();

    const bench_case chunk1[] = {
        { "conc", map_conc, (void *)(uintptr_t)1 },
    };
    bench_compare("pool_map_chunk1", chunk1, BENCH_ARRAY_LEN(chunk1),
                  bench_iters(2000000, 200000), BENCH_MEDIAN);
    const bench_case chunkdef[] = {
        { "conc", map_conc, (void *)(uintptr_t)0 },
    };
    bench_compare("pool_map_default", chunkdef, BENCH_ARRAY_LEN(chunkdef),
                  bench_iters(20000000, 2000000), BENCH_MEDIAN);
    rtt_compare(bench_iters(2000000, 200000));
    const bench_case async[] = {
        { "conc", async_conc, NULL },
    };
    bench_compare("pool_apply_async", async, BENCH_ARRAY_LEN(async),
                  bench_iters(2000000, 200000), BENCH_MEDIAN);
    const bench_case tpe[] = {
        { "conc", tpe_conc, NULL },
    };
    bench_compare("threadpool_executor_submit", tpe, BENCH_ARRAY_LEN(tpe),
                  bench_iters(2000000, 200000), BENCH_MEDIAN);

    /* The process executor may be missing from a build: then it is skipped. */
    if (bench_enabled("processpool_executor_submit", "conc")) {
        conc_executor *probe;
        int e = ppe_new(&probe);
        if (e == -ENOTSUP || e == -ENOSYS) {
            bench_skip("processpool_executor_submit", "conc", NULL,
                       "this build has no process executor");
        } else {
            if (e == 0)
                conc_executor_free(probe);
            const bench_case ppe[] = {
                { "conc", ppe_conc, NULL },
            };
            bench_compare("processpool_executor_submit", ppe, BENCH_ARRAY_LEN(ppe),
                          bench_iters(2000000, 200000), BENCH_MEDIAN);
        }
    }

    /* Python is 10-1000x slower per task: its script has its own, smaller
     * iteration counts; we pass the scale and the repetitions. */
    bench_peer_run_metrics("python", false, bench_python(), bench_peer_path("pool_mp.py"),
                           (bench_reps() + 1) / 2, NULL, bench_scale() * (bench_quick() ? 0.05 : 1.0),
                           py_metrics);
    return bench_report();
}
