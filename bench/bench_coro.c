/*
 * bench_coro.c - conc's coroutine switch against swapcontext, Boost.Context
 * and Python's greenlet, in one run.
 *
 *   switch   ns per switch: the thread's main coroutine and one coroutine
 *            switch back and forth, passing a value; a round trip is two
 *            switches.  conc (conc_coro_switch), ucontext (glibc
 *            swapcontext), boost (Boost.Context's fcontext jump_fcontext,
 *            the fastest layer of Boost.Context, called in this process,
 *            conc and boost taking turns), greenlet (g.switch)
 *   switch_ratio  conc's switch time over Boost.Context's: the median and
 *            the upper quartile (conc-q3) of the rounds' ratios (target
 *            <= 1.1)
 *   create   ns to create a coroutine, switch into it, let its function
 *            return a value to the creator and free it (a short-lived task):
 *            conc (pooled stacks), ucontext and boost (64 KiB stacks from
 *            malloc, as Boost's fixedsize_stack does), greenlet
 *
 * The hub (gevent's model), against gevent:
 *
 *   spawn_join        ns per conc_greenlet_spawn + conc_greenlet_join + conc_greenlet_free of
 *                     a greenlet that returns at once (gevent.spawn(f).join());
 *                     conc's target is <= 60 ns
 *   yield             ns per conc_sleep(0) while two greenlets take turns
 *                     (each call hands the thread to the other one);
 *                     gevent.sleep(0); conc-copied: the two greenlets on
 *                     the hub's shared stack (each turn copies one out and
 *                     the other in: what a park and a resume cost then)
 *   queue_pingpong    round trips per second: two greenlets of one thread
 *                     pass a value back and forth through two conc_queue of
 *                     maxsize 1 (gevent.queue.Queue(1)); Go's unbuffered
 *                     channels between two goroutines (GOMAXPROCS=1) when
 *                     `go` is installed, not under --quick (go run compiles)
 *   rss_per_sleeping  bytes of resident memory per sleeping greenlet: spawn N
 *                     greenlets that each sleep an hour, let them all start,
 *                     divide the growth of the RSS (/proc/self/statm) by N,
 *                     then kill and join them.  N = 100000 (10000 under
 *                     --quick); rss_per_sleeping_1m is N = 1000000, not run
 *                     under --quick, with gevent capped at N = 100000.
 *                     Measured first, in a fresh process for gevent; Go
 *                     (goroutines that sleep an hour) beside them.
 *   sleepers_1m       seconds for examples/coro-sleepers' job: spawn
 *                     1,000,000 greenlets that each sleep 1 s and join them
 *                     all (10,000 under --quick), in a child process of its
 *                     own; Go's goroutines (GOMAXPROCS=1, sync.WaitGroup)
 *                     beside it, not under --quick
 *   sleepers_1m_bytes that job's peak RSS (VmHWM) less the RSS before it,
 *                     per sleeper
 *
 * The memory metrics and sleepers_1m run conc twice: "conc" (greenlets with
 * stacks of their own, the default) and "conc-copied" (CONC_STACK_COPIED:
 * the hub's shared stack, a parked greenlet's frames copied out).
 *
 * Self-checks, reported as FAILED: the values that come back (switch: the
 * last value echoed; create: the sum of the return values).  Boost's create
 * runs as the C++ program bench/peers/coro_boost.cpp, built by CMake when
 * Boost.Context is installed (libboost-context-dev; `make bench` installs
 * it), which then also links bench_coro for the switch; greenlet as bench/peers/coro_greenlet.py (python3-greenlet).  A peer
 * that is missing is reported as skipped.
 */
#include <errno.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include "conc.h"
#include "benchlib.h"

#ifndef CONC_BOOST_PEER
#define CONC_BOOST_PEER ""
#endif
#ifndef CONC_BENCH_BOOST_CONTEXT
#define CONC_BENCH_BOOST_CONTEXT 0
#endif

static const bench_metric metrics[] = {
    { "switch", "ns", "one switch (a round trip main -> coroutine -> main is two), with a value" },
    { "switch_ratio", "x", "conc's switch over Boost.Context's, in turns: median round (conc), upper quartile (conc-q3)" },
    { "create", "ns", "create a coroutine, switch in, it returns a value, free it" },
    { "spawn_join", "ns", "spawn + join + free a greenlet that returns at once (target: conc <= 60 ns)" },
    { "yield", "ns", "one conc_sleep(0) / gevent.sleep(0), two greenlets taking turns" },
    { "queue_pingpong", "ops/s", "round trips between two greenlets through two queues of maxsize 1 (go: unbuffered channels)" },
    { "rss_per_sleeping", "bytes", "resident memory per sleeping greenlet, N = 100000 (--quick: 10000)" },
    { "rss_per_sleeping_1m", "bytes", "resident memory per sleeping greenlet, N = 1000000 (gevent: N capped at 100000)" },
    { "sleepers_1m", "s", "spawn 1,000,000 greenlets that each sleep 1 s, join them all (coro-sleepers; --quick: 10,000)" },
    { "sleepers_1m_bytes", "bytes", "peak RSS growth per sleeper in sleepers_1m" },
};

#define WRONG_RESULT (-EPROTO)
#define PEER_STACK (64 * 1024)

/* ----------------------------------------------------------------- switch */

/* The switch loops' clock: the calling thread's CPU time, so that time
 * spent descheduled on a busy machine counts for no side (the loops make no
 * system call but ucontext's sigprocmask, whose kernel time counts too). */
static int64_t switch_clock(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Echoes every value back to the main coroutine, forever. */
static void *echo(void *arg, void *value)
{
    conc_coro *main_coro = arg;
    for (;;)
        conc_coro_switch(main_coro, value, &value);
    return NULL;
}

static int64_t switch_conc(void *arg, long iters)
{
    (void)arg;
    long rounds = iters / 2 > 0 ? iters / 2 : 1;
    conc_coro *c;
    int rc = conc_coro_new(&c, echo, conc_coro_main(), NULL);
    if (rc < 0)
        return rc;
    void *v = NULL;
    conc_coro_switch(c, NULL, &v);           /* start it */
    int64_t t0 = switch_clock();
    for (long i = 0; i < rounds; i++)
        conc_coro_switch(c, (void *)(uintptr_t)i, &v);
    int64_t ns = switch_clock() - t0;
    conc_coro_free(c);                      /* suspended: discarded */
    if ((uintptr_t)v != (uintptr_t)(rounds - 1)) {
        fprintf(stderr, "bench_coro: switch: conc echoed %lu, expected %ld\n",
                (unsigned long)(uintptr_t)v, rounds - 1);
        return WRONG_RESULT;
    }
    return (int64_t)((double)ns * (double)iters / (double)(2 * rounds));
}

#if CONC_BENCH_BOOST_CONTEXT
/* Boost.Context's fcontext layer, called from C: jump_fcontext and
 * make_fcontext are assembly with C linkage, and transfer_t (two pointers)
 * comes back in rax:rdx (x86-64) or x0:x1 (aarch64) in C as in C++.  The
 * library is the system's shared one, linked as a C++ program links it. */
typedef struct boost_transfer {
    void *fctx;
    void *data;
} boost_transfer;
extern boost_transfer jump_fcontext(void *to, void *vp);
extern void *make_fcontext(void *sp, size_t size, void (*fn)(boost_transfer));

/* Echoes every value back to whoever jumped to it, forever. */
static void boost_echo(boost_transfer t)
{
    for (;;)
        t = jump_fcontext(t.fctx, t.data);
}

/* The same loop as switch_conc: main and one context jump back and forth. */
static int64_t switch_boost(void *arg, long iters)
{
    (void)arg;
    long rounds = iters / 2 > 0 ? iters / 2 : 1;
    char *stack = malloc(PEER_STACK);
    if (!stack)
        return -ENOMEM;
    boost_transfer t = jump_fcontext(make_fcontext(stack + PEER_STACK, PEER_STACK, boost_echo),
                                     NULL);                         /* start it */
    int64_t t0 = switch_clock();
    for (long i = 0; i < rounds; i++)
        t = jump_fcontext(t.fctx, (void *)(uintptr_t)i);
    int64_t ns = switch_clock() - t0;
    free(stack);
    if ((uintptr_t)t.data != (uintptr_t)(rounds - 1)) {
        fprintf(stderr, "bench_coro: switch: boost echoed %lu, expected %ld\n",
                (unsigned long)(uintptr_t)t.data, rounds - 1);
        return WRONG_RESULT;
    }
    return (int64_t)((double)ns * (double)iters / (double)(2 * rounds));
}
#endif

static ucontext_t uc_main, uc_co;
static void *volatile uc_value;

static void uc_echo(void)
{
    for (;;)
        swapcontext(&uc_co, &uc_main);      /* uc_value passes through */
}

static int64_t switch_ucontext(void *arg, long iters)
{
    (void)arg;
    long rounds = iters / 2 > 0 ? iters / 2 : 1;
    void *stack = malloc(PEER_STACK);
    if (!stack)
        return -ENOMEM;
    getcontext(&uc_co);
    uc_co.uc_stack.ss_sp = stack;
    uc_co.uc_stack.ss_size = PEER_STACK;
    uc_co.uc_link = NULL;
    makecontext(&uc_co, uc_echo, 0);
    swapcontext(&uc_main, &uc_co);          /* start it */
    int64_t t0 = switch_clock();
    for (long i = 0; i < rounds; i++) {
        uc_value = (void *)(uintptr_t)i;
        swapcontext(&uc_main, &uc_co);
    }
    int64_t ns = switch_clock() - t0;
    free(stack);
    if ((uintptr_t)uc_value != (uintptr_t)(rounds - 1))
        return WRONG_RESULT;
    return (int64_t)((double)ns * (double)iters / (double)(2 * rounds));
}

/* Orders doubles, for the medians. */
static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median_of(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/*
 * switch: conc and Boost.Context in turns in this process, on one pinned
 * CPU, timed in thread CPU time: 4 x --reps + 1 short rounds (a busy
 * machine disturbs fewer of them), the same number of switches for both
 * (they are within a few per cent of each other), each round starting with
 * the other one.  Recorded: each one's median round, and switch_ratio: the
 * median and the upper quartile of the rounds' conc/boost ratios.  ucontext (about
 * 30 times slower) runs alone afterwards.
 */
static void switch_compare(void)
{
    static const struct {
        const char *system;
        bench_body body;
    } sys[] = {
        { "conc", switch_conc },
#if CONC_BENCH_BOOST_CONTEXT
        { "boost", switch_boost },
#endif
    };
    enum { N_SYS = BENCH_ARRAY_LEN(sys) };
    bool on[N_SYS];
    int n_on = 0;
    for (size_t s = 0; s < N_SYS; s++)
        n_on += on[s] = bench_enabled("switch", sys[s].system);
    if (!CONC_BENCH_BOOST_CONTEXT) {
        bench_skip("switch", "boost", NULL, "Boost.Context was not found when configuring "
                   "(install libboost-context-dev, or run make bench)");
        bench_skip("switch_ratio", "conc", NULL, "no Boost.Context to compare with");
    }
    if (n_on > 0) {
        cpu_set_t before;
        bool pinned = sched_getaffinity(0, sizeof before, &before) == 0 && bench_pin_self(0) == 0;
        int rounds = 4 * bench_reps() + 1;
        long iters = bench_iters(6000000, 200000);
        double (*ns)[N_SYS] = calloc((size_t)rounds, sizeof *ns);
        double *ratio = calloc((size_t)rounds, sizeof *ratio);
        bool ok[N_SYS];
        for (size_t s = 0; s < N_SYS; s++) {
            ok[s] = on[s];
            if (on[s] && ns) {
                int64_t w = sys[s].body(NULL, iters / 10);       /* warm-up */
                if (w < 0) {
                    bench_fail("switch", sys[s].system, "error %d (%s)", (int)w,
                               strerror((int)-w));
                    ok[s] = false;
                }
            }
        }
        for (int r = 0; ns && ratio && r < rounds; r++) {
            for (size_t k = 0; k < N_SYS; k++) {
                size_t s = (k + (size_t)r) % N_SYS;
                if (!ok[s])
                    continue;
                int64_t t = sys[s].body(NULL, iters);
                if (t < 0) {
                    bench_fail("switch", sys[s].system, "error %d (%s)", (int)t,
                               strerror((int)-t));
                    ok[s] = false;
                    continue;
                }
                ns[r][s] = (double)t / (double)iters;
            }
            if (N_SYS > 1 && ok[0] && ok[N_SYS - 1])
                ratio[r] = ns[r][0] / ns[r][N_SYS - 1];
        }
        double *col = calloc((size_t)rounds, sizeof *col);
        for (size_t s = 0; s < N_SYS && col && ns && ratio; s++) {
            if (!ok[s])
                continue;
            for (int r = 0; r < rounds; r++)
                col[r] = ns[r][s];
            bench_record("switch", sys[s].system, median_of(col, rounds), "ns");
        }
        if (N_SYS > 1 && ok[0] && ok[N_SYS - 1] && ratio) {
            bench_record("switch_ratio", "conc", median_of(ratio, rounds), "x");
            /* sorted by median_of: the upper quartile (one round that the
             * host disturbed would make a maximum meaningless) */
            bench_record("switch_ratio", "conc-q3", ratio[(3 * (rounds - 1) + 3) / 4], "x");
        }
        if (!ns || !ratio || !col)
            bench_fail("switch", "conc", "out of memory");
        free(col);
        free(ratio);
        free(ns);
        if (pinned)
            sched_setaffinity(0, sizeof before, &before);
    }
    bench_run("switch", "ucontext", switch_ucontext, NULL, bench_iters(100000000, 2000000),
              BENCH_MEDIAN);
}

/* ----------------------------------------------------------------- create */

static void *add_one(void *arg, void *value)
{
    (void)arg;
    return (void *)((uintptr_t)value + 1);
}

static int64_t create_conc(void *arg, long iters)
{
    (void)arg;
    uintptr_t sum = 0;
    int64_t t0 = bench_now();
    for (long i = 0; i < iters; i++) {
        conc_coro *c;
        void *v = NULL;
        int rc = conc_coro_new(&c, add_one, NULL, NULL);
        if (rc < 0)
            return rc;
        conc_coro_switch(c, (void *)(uintptr_t)i, &v);
        sum += (uintptr_t)v;
        conc_coro_free(c);
    }
    int64_t ns = bench_now() - t0;
    if (sum != (uintptr_t)iters * (uintptr_t)(iters + 1) / 2) {
        fprintf(stderr, "bench_coro: create: conc sum %lu\n", (unsigned long)sum);
        return WRONG_RESULT;
    }
    return ns;
}

static uintptr_t uc_arg;

static void uc_add_one(void)
{
    uc_value = (void *)(uc_arg + 1);        /* returns through uc_link */
}

static int64_t create_ucontext(void *arg, long iters)
{
    (void)arg;
    uintptr_t sum = 0;
    int64_t t0 = bench_now();
    for (long i = 0; i < iters; i++) {
        void *stack = malloc(PEER_STACK);
        if (!stack)
            return -ENOMEM;
        getcontext(&uc_co);
        uc_co.uc_stack.ss_sp = stack;
        uc_co.uc_stack.ss_size = PEER_STACK;
        uc_co.uc_link = &uc_main;
        makecontext(&uc_co, uc_add_one, 0);
        uc_arg = (uintptr_t)i;
        swapcontext(&uc_main, &uc_co);
        sum += (uintptr_t)uc_value;
        free(stack);
    }
    int64_t ns = bench_now() - t0;
    if (sum != (uintptr_t)iters * (uintptr_t)(iters + 1) / 2)
        return WRONG_RESULT;
    return ns;
}

/* -------------------------------------------------------------- the hub */

static void *plus_one(void *arg)
{
    return (void *)((uintptr_t)arg + 1);
}

static int64_t spawn_join_conc(void *arg, long iters)
{
    (void)arg;
    uintptr_t sum = 0;
    int64_t t0 = bench_now();
    for (long i = 0; i < iters; i++) {
        conc_greenlet *g;
        int rc = conc_greenlet_spawn(&g, plus_one, (void *)(uintptr_t)i, NULL);
        if (rc < 0)
            return rc;
        rc = conc_greenlet_join(g, CONC_FOREVER);
        void *v = NULL;
        if (rc == 0)
            rc = conc_greenlet_result(g, &v);
        conc_greenlet_free(g);
        if (rc < 0)
            return rc;
        sum += (uintptr_t)v;
    }
    int64_t ns = bench_now() - t0;
    if (sum != (uintptr_t)iters * (uintptr_t)(iters + 1) / 2) {
        fprintf(stderr, "bench_coro: spawn_join: conc sum %lu\n", (unsigned long)sum);
        return WRONG_RESULT;
    }
    return ns;
}

struct yielder {
    long rounds;
    long done;
    int rc;
};

static void *yield_loop(void *arg)
{
    struct yielder *y = arg;
    for (long i = 0; i < y->rounds; i++) {
        int rc = conc_sleep(0);
        if (rc < 0) {
            y->rc = rc;
            break;
        }
        y->done++;
    }
    return NULL;
}

/* arg: NULL, or the conc_spawn_opts of both greenlets. */
static int64_t yield_conc(void *arg, long iters)
{
    const conc_spawn_opts *so = arg;
    long half = iters / 2 > 0 ? iters / 2 : 1;
    struct yielder y[2] = { { half, 0, 0 }, { half, 0, 0 } };
    conc_greenlet *g[2] = { NULL, NULL };
    int64_t t0 = bench_now();
    int rc = conc_greenlet_spawn(&g[0], yield_loop, &y[0], so);
    if (rc == 0)
        rc = conc_greenlet_spawn(&g[1], yield_loop, &y[1], so);
    if (rc == 0)
        rc = conc_greenlet_joinall(g, 2, CONC_FOREVER);
    int64_t ns = bench_now() - t0;
    if (rc < 0) {       /* a spawn failed: the other one ends on its own */
        if (g[0])
            conc_greenlet_join(g[0], CONC_FOREVER);
        conc_greenlet_free(g[0]);
        conc_greenlet_free(g[1]);
        return rc;
    }
    conc_greenlet_free(g[0]);
    conc_greenlet_free(g[1]);
    if (y[0].rc < 0 || y[1].rc < 0)
        return y[0].rc < 0 ? y[0].rc : y[1].rc;
    if (y[0].done + y[1].done != 2 * half) {
        fprintf(stderr, "bench_coro: yield: conc made %ld yields, expected %ld\n",
                y[0].done + y[1].done, 2 * half);
        return WRONG_RESULT;
    }
    return (int64_t)((double)ns * (double)iters / (double)(2 * half));
}

struct pingpong {
    conc_queue *ping, *pong;
    long rounds;
    long bad;           /* wrong values seen by the pinger */
    int rc;
};

static void *pinger(void *arg)
{
    struct pingpong *p = arg;
    for (long i = 0; i < p->rounds; i++) {
        void *v = NULL;
        int rc = conc_queue_put(p->ping, (void *)(uintptr_t)(i + 1), CONC_FOREVER);
        if (rc == 0)
            rc = conc_queue_get(p->pong, &v, CONC_FOREVER);
        if (rc < 0) {
            p->rc = rc;
            break;
        }
        if ((uintptr_t)v != (uintptr_t)(i + 1))
            p->bad++;
    }
    conc_queue_put(p->ping, NULL, CONC_FOREVER);    /* tells the ponger to end */
    return NULL;
}

static void *ponger(void *arg)
{
    struct pingpong *p = arg;
    for (;;) {
        void *v = NULL;
        if (conc_queue_get(p->ping, &v, CONC_FOREVER) < 0 || v == NULL)
            break;
        if (conc_queue_put(p->pong, v, CONC_FOREVER) < 0)
            break;
    }
    return NULL;
}

static int64_t pingpong_conc(void *arg, long iters)
{
    (void)arg;
    struct pingpong p = { NULL, NULL, iters, 0, 0 };
    conc_queue_opts o = { 0 };
    o.maxsize = 1;
    int rc = conc_queue_new(&p.ping, &o);
    if (rc == 0)
        rc = conc_queue_new(&p.pong, &o);
    if (rc < 0) {
        conc_queue_free(p.ping);
        return rc;
    }
    conc_greenlet *g[2] = { NULL, NULL };
    int64_t t0 = bench_now();
    rc = conc_greenlet_spawn(&g[0], ponger, &p, NULL);
    if (rc == 0)
        rc = conc_greenlet_spawn(&g[1], pinger, &p, NULL);
    if (rc == 0)
        rc = conc_greenlet_joinall(g, 2, CONC_FOREVER);
    int64_t ns = bench_now() - t0;
    if (rc < 0 && g[0] && !g[1]) {      /* the ponger waits for nothing else */
        conc_greenlet_kill(g[0]);
        conc_greenlet_join(g[0], CONC_FOREVER);
    }
    conc_greenlet_free(g[0]);
    conc_greenlet_free(g[1]);
    conc_queue_free(p.ping);
    conc_queue_free(p.pong);
    if (rc < 0)
        return rc;
    if (p.rc < 0)
        return p.rc;
    if (p.bad) {
        fprintf(stderr, "bench_coro: queue_pingpong: conc echoed %ld wrong values\n", p.bad);
        return WRONG_RESULT;
    }
    return ns;
}

/* The resident set size of this process in bytes, or -1. */
static long rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f)
        return -1;
    long size, resident;
    int n = fscanf(f, "%ld %ld", &size, &resident);
    fclose(f);
    return n == 2 ? resident * sysconf(_SC_PAGESIZE) : -1;
}

/* MemAvailable from /proc/meminfo in bytes, or -1. */
static long mem_available(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f)
        return -1;
    char line[256];
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %ld kB", &kb) == 1)
            break;
    fclose(f);
    return kb < 0 ? -1 : kb * 1024;
}

static long sleepers_started;

static void *sleeper(void *arg)
{
    (void)arg;
    sleepers_started++;
    conc_sleep(3600.0);         /* -ECANCELED when killed */
    return NULL;
}

/* Spawn n sleeping greenlets, record the RSS growth per greenlet, kill and
 * join them.  system "conc": stacks of their own; "conc-copied": the hub's
 * shared stack (CONC_STACK_COPIED). */
static void rss_conc(const char *metric, const char *system, long n)
{
    if (!bench_enabled(metric, system))
        return;
    int mode = strcmp(system, "conc") == 0 ? CONC_STACK_OWN : CONC_STACK_COPIED;
    /* ~4 KiB each (a stack page, the greenlet's objects on it): ask for 6. */
    long want = n * 6144L + (256L << 20), avail = mem_available();
    if (avail >= 0 && avail < want) {
        char why[128];
        snprintf(why, sizeof why, "%ld MiB available, %ld greenlets want about %ld MiB",
                 avail >> 20, n, want >> 20);
        bench_skip(metric, system, NULL, why);
        return;
    }
    conc_greenlet **g = calloc((size_t)n, sizeof *g);
    if (!g) {
        bench_skip(metric, system, NULL, "no memory for the handles");
        return;
    }
    /* The handle array is the benchmark's, not the greenlets': make it
     * resident before the first reading. */
    for (size_t off = 0; off < (size_t)n * sizeof *g; off += 4096)
        ((volatile char *)g)[off] = 0;
    conc_coro_trim();
    malloc_trim(0);
    sleepers_started = 0;
    int old_mode = conc_hub_set_stacks(mode);
    long before = rss_bytes(), after = -1, spawned = 0;
    int rc = old_mode < 0 ? old_mode : 0;
    for (; spawned < n && rc == 0; spawned++) {
        rc = conc_greenlet_spawn(&g[spawned], sleeper, NULL, NULL);
        if (rc < 0)
            break;
    }
    while (sleepers_started < spawned && rc == 0)
        rc = conc_sleep(0);
    if (rc == 0)
        after = rss_bytes();
    for (long i = 0; i < spawned; i++)
        conc_greenlet_kill(g[i]);
    int jrc = conc_greenlet_joinall(g, (size_t)spawned, CONC_FOREVER);
    for (long i = 0; i < spawned; i++)
        conc_greenlet_free(g[i]);
    free(g);
    if (old_mode > 0)
        conc_hub_set_stacks(old_mode);
    conc_coro_trim();
    malloc_trim(0);
    if (rc < 0 || jrc < 0) {
        bench_fail(metric, system, "%s after %ld greenlets", strerror(rc < 0 ? -rc : -jrc), spawned);
        return;
    }
    if (before < 0 || after < 0) {
        bench_skip(metric, system, NULL, "cannot read /proc/self/statm");
        return;
    }
    bench_record(metric, system, (double)(after - before) / (double)n, "bytes");
}

/* A "Name:   N kB" line of /proc/self/status in bytes, or -1. */
static long status_bytes(const char *name)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return -1;
    char line[256];
    long kb = -1;
    size_t len = strlen(name);
    while (fgets(line, sizeof line, f))
        if (strncmp(line, name, len) == 0 && line[len] == ':') {
            if (sscanf(line + len + 1, "%ld", &kb) != 1)
                kb = -1;
            break;
        }
    fclose(f);
    return kb < 0 ? -1 : kb * 1024;
}

static long sleepers_done;

static void *sleep_one_second(void *arg)
{
    (void)arg;
    if (conc_sleep(1.0) == 0)
        sleepers_done++;
    return NULL;
}

/* coro-sleepers' job in this (child) process, greenlets spawned with
 * stacks `mode`: {seconds, peak bytes per sleeper}, or a negative errno in
 * out[0]. */
static void sleepers_job(long n, int mode, double out[2])
{
    if (conc_hub_set_stacks(mode) < 0) {
        out[0] = -ENOMEM;
        return;
    }
    long before = rss_bytes();
    conc_greenlet **g = calloc((size_t)n, sizeof *g);
    if (!g || before < 0) {
        out[0] = -ENOMEM;
        return;
    }
    int64_t t0 = bench_now();
    long spawned = 0;
    int rc = 0;
    for (; spawned < n; spawned++) {
        rc = conc_greenlet_spawn(&g[spawned], sleep_one_second, NULL, NULL);
        if (rc < 0)
            break;
    }
    int jrc = conc_greenlet_joinall(g, (size_t)spawned, CONC_FOREVER);
    int64_t ns = bench_now() - t0;
    long peak = status_bytes("VmHWM");
    if (rc == 0)
        rc = jrc;
    if (rc == 0 && sleepers_done != n)
        rc = WRONG_RESULT;
    out[0] = rc < 0 ? rc : (double)ns / 1e9;
    out[1] = peak < 0 ? -1 : (double)(peak - before) / (double)n;
}

/* Runs the job in a child, so that its memory is measured alone and given
 * back whole. */
static void sleepers_conc(const char *system, long n)
{
    int mode = strcmp(system, "conc") == 0 ? CONC_STACK_OWN : CONC_STACK_COPIED;
    bool timed = bench_enabled("sleepers_1m", system);
    bool sized = bench_enabled("sleepers_1m_bytes", system);
    if (!timed && !sized)
        return;
    long want = n * 6144L + (256L << 20), avail = mem_available();
    if (avail >= 0 && avail < want) {
        char why[128];
        snprintf(why, sizeof why, "%ld MiB available, %ld sleepers want about %ld MiB",
                 avail >> 20, n, want >> 20);
        if (timed)
            bench_skip("sleepers_1m", system, NULL, why);
        if (sized)
            bench_skip("sleepers_1m_bytes", system, NULL, why);
        return;
    }
    int fd[2];
    if (pipe(fd) != 0) {
        bench_fail("sleepers_1m", system, "pipe: %s", strerror(errno));
        return;
    }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        close(fd[0]);
        double out[2] = { -EPROTO, -1 };
        sleepers_job(n, mode, out);
        ssize_t w = write(fd[1], out, sizeof out);
        _exit(w == (ssize_t)sizeof out ? 0 : 1);
    }
    close(fd[1]);
    double out[2] = { -EPROTO, -1 };
    ssize_t got = pid > 0 ? read(fd[0], out, sizeof out) : -1;
    close(fd[0]);
    if (pid > 0)
        waitpid(pid, NULL, 0);
    if (got != (ssize_t)sizeof out || out[0] < 0) {
        int err = got == (ssize_t)sizeof out ? (int)-out[0] : pid < 0 ? errno : EPROTO;
        bench_fail("sleepers_1m", system, "%s", strerror(err));
        return;
    }
    if (timed)
        bench_record("sleepers_1m", system, out[0], "s");
    if (sized && out[1] >= 0)
        bench_record("sleepers_1m_bytes", system, out[1], "bytes");
}

/* ------------------------------------------------------------------ peers */

static const char *const coro_metrics[] = { "switch", "create", NULL };
static const char *const hub_metrics[] = { "spawn_join", "yield", "queue_pingpong", NULL };

/*
 * Run a peer for those of `which` (NULL-terminated) that are enabled for
 * `system`: PROG [SCRIPT] --reps N [extra...] SCALE METRIC...  Metrics the
 * peer does not report are recorded as skipped.
 */
static void run_peer(const char *system, const char *prog, const char *script,
                     const char *const extra[], double scale, const char *const which[])
{
    char scale_s[32], reps[16];
    snprintf(scale_s, sizeof scale_s, "%g", scale);
    snprintf(reps, sizeof reps, "%d", bench_reps());
    char *argv[32];
    const char *expect[16];
    size_t n = 0, k = 0;
    argv[n++] = (char *)prog;
    if (script)
        argv[n++] = (char *)script;
    argv[n++] = "--reps";
    argv[n++] = reps;
    for (size_t i = 0; extra && extra[i]; i++)
        argv[n++] = (char *)extra[i];
    argv[n++] = scale_s;
    for (size_t i = 0; which[i]; i++)
        if (bench_enabled(which[i], system)) {
            argv[n++] = (char *)which[i];
            expect[k++] = which[i];
        }
    if (k == 0)
        return;
    argv[n] = NULL;
    expect[k] = NULL;
    bench_peer_run_for(system, expect, argv, 600.0);
}

static void skip_all(const char *system, const char *const which[], const char *why)
{
    for (size_t i = 0; which[i]; i++)
        if (bench_enabled(which[i], system))
            bench_skip(which[i], system, NULL, why);
}

static void run_boost(void)
{
    /* switch runs in this process (switch_compare). */
    static const char *const peer_metrics[] = { "create", NULL };
    if (CONC_BOOST_PEER[0] == '\0') {
        skip_all("boost", peer_metrics,
                 "Boost.Context was not found when configuring "
                 "(install libboost-context-dev, or run make bench)");
        return;
    }
    run_peer("boost", CONC_BOOST_PEER, NULL, NULL,
             bench_scale() * (bench_quick() ? 0.1 : 1.0), peer_metrics);
}

static void run_greenlet(void)
{
    /* Python is ~50x slower per switch: the script has its own, smaller
     * iteration counts. */
    run_peer("greenlet", bench_python(), bench_peer_path("coro_greenlet.py"), NULL,
             bench_scale() * (bench_quick() ? 0.05 : 1.0), coro_metrics);
}

/* gevent's RSS measurement, alone in a fresh interpreter. */
static void run_gevent_rss(const char *metric, long n)
{
    const char *const which[] = { metric, NULL };
    char n_s[32];
    snprintf(n_s, sizeof n_s, "%ld", n);
    const char *const extra[] = { "--n", n_s, NULL };
    run_peer("gevent", bench_python(), bench_peer_path("coro_gevent.py"), extra, 1.0, which);
}

static void run_gevent_timed(void)
{
    run_peer("gevent", bench_python(), bench_peer_path("coro_gevent.py"), NULL,
             bench_scale() * (bench_quick() ? 0.05 : 1.0), hub_metrics);
}

/* The Go peer for one group of its metrics (each group in a process of its
 * own: the memory metrics measure the whole process); n: its --n. */
static void run_go_metrics(const char *const which[], long n)
{
    bool any = false;
    for (size_t i = 0; which[i]; i++)
        any = any || bench_enabled(which[i], "go");
    if (!any)
        return;
    if (!bench_in_path("go")) {
        skip_all("go", which, "go is not installed");
        return;
    }
    if (bench_quick()) {
        skip_all("go", which, "not under --quick (go run compiles the peer)");
        return;
    }
    char reps[16], scale_s[32], n_s[32];
    snprintf(reps, sizeof reps, "%d", bench_reps());
    snprintf(scale_s, sizeof scale_s, "%g", bench_scale());
    snprintf(n_s, sizeof n_s, "%ld", n);
    char *argv[] = { "go", "run", (char *)bench_peer_path("coro_go.go"), "--reps", reps,
                     "--n", n_s, scale_s, (char *)which[0], NULL };
    bench_peer_run_for("go", which, argv, 600.0);
}

static void run_go(long n_rss)
{
    static const char *const pingpong[] = { "queue_pingpong", NULL };
    static const char *const rss[] = { "rss_per_sleeping", NULL };
    static const char *const rss_1m[] = { "rss_per_sleeping_1m", NULL };
    static const char *const sleepers[] = { "sleepers_1m", "sleepers_1m_bytes", NULL };
    run_go_metrics(pingpong, 0);
    run_go_metrics(rss, n_rss);
    run_go_metrics(rss_1m, 1000000);
    run_go_metrics(sleepers, 1000000);
}

int main(int argc, char **argv)
{
    bench_init(argc, argv, "bench_coro: conc coroutines and hub vs ucontext, Boost.Context, "
               "greenlet, gevent, Go",
               metrics, BENCH_ARRAY_LEN(metrics));

    /* Memory first, while the heap is fresh; the sleepers' job in a child
     * made before this process has a hub. */
    long n_sleepers = bench_quick() ? 10000 : 1000000;
    sleepers_conc("conc", n_sleepers);
    sleepers_conc("conc-copied", n_sleepers);
    long n_rss = bench_quick() ? 10000 : 100000;
    rss_conc("rss_per_sleeping", "conc", n_rss);
    rss_conc("rss_per_sleeping", "conc-copied", n_rss);
    if (!bench_quick()) {
        rss_conc("rss_per_sleeping_1m", "conc", 1000000);
        rss_conc("rss_per_sleeping_1m", "conc-copied", 1000000);
    }

    switch_compare();

    static const bench_case cr[] = {
        { "conc", create_conc, NULL },
        { "ucontext", create_ucontext, NULL },
    };
    bench_compare("create", cr, BENCH_ARRAY_LEN(cr), bench_iters(10000000, 200000), BENCH_BEST);

    bench_run("spawn_join", "conc", spawn_join_conc, NULL, bench_iters(20000000, 500000), BENCH_BEST);
    static conc_spawn_opts copied = CONC_SPAWN_OPTS_INIT;
    copied.stack = CONC_STACK_COPIED;
    const bench_case yl[] = {
        { "conc", yield_conc, NULL },
        { "conc-copied", yield_conc, &copied },
    };
    bench_compare("yield", yl, BENCH_ARRAY_LEN(yl), bench_iters(50000000, 1000000), BENCH_BEST);
    bench_run("queue_pingpong", "conc", pingpong_conc, NULL, bench_iters(20000000, 500000), BENCH_BEST);

    run_boost();
    run_greenlet();
    run_gevent_rss("rss_per_sleeping", n_rss);
    if (!bench_quick())
        run_gevent_rss("rss_per_sleeping_1m", 100000);  /* capped: see the metric */
    run_gevent_timed();
    run_go(n_rss);
    return bench_report();
}
