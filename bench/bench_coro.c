/*
 * bench_coro.c - conc's coroutine switch against swapcontext, Boost.Context
 * and Python's greenlet, in one run.
 *
 *   switch   ns per switch: the thread's main coroutine and one coroutine
 *            switch back and forth, passing a value; a round trip is two
 *            switches.  conc (conc_coro_switch), ucontext (glibc
 *            swapcontext), boost (Boost.Context's fcontext jump_fcontext,
 *            the fastest layer of Boost.Context), greenlet (g.switch)
 *   create   ns to create a coroutine, switch into it, let its function
 *            return a value to the creator and free it (a short-lived task):
 *            conc (pooled stacks), ucontext and boost (64 KiB stacks from
 *            malloc, as Boost's fixedsize_stack does), greenlet
 *
 * Self-checks, reported as FAILED: the values that come back (switch: the
 * last value echoed; create: the sum of the return values).  Boost runs as
 * the C++ program bench/peers/coro_boost.cpp, built by CMake when
 * Boost.Context is installed (libboost-context-dev; `make bench` installs
 * it); greenlet as bench/peers/coro_greenlet.py (python3-greenlet).  A peer
 * that is missing is reported as skipped.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#include "conc.h"
#include "benchlib.h"

#ifndef CONC_BOOST_PEER
#define CONC_BOOST_PEER ""
#endif

static const bench_metric metrics[] = {
    { "switch", "ns", "one switch (a round trip main -> coroutine -> main is two), with a value" },
    { "create", "ns", "create a coroutine, switch in, it returns a value, free it" },
};

#define WRONG_RESULT (-EPROTO)
#define PEER_STACK (64 * 1024)

/* ----------------------------------------------------------------- switch */

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
    int64_t t0 = bench_now();
    for (long i = 0; i < rounds; i++)
        conc_coro_switch(c, (void *)(uintptr_t)i, &v);
    int64_t ns = bench_now() - t0;
    conc_coro_free(c);                      /* suspended: discarded */
    if ((uintptr_t)v != (uintptr_t)(rounds - 1)) {
        fprintf(stderr, "bench_coro: switch: conc echoed %lu, expected %ld\n",
                (unsigned long)(uintptr_t)v, rounds - 1);
        return WRONG_RESULT;
    }
    return (int64_t)((double)ns * (double)iters / (double)(2 * rounds));
}

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
    int64_t t0 = bench_now();
    for (long i = 0; i < rounds; i++) {
        uc_value = (void *)(uintptr_t)i;
        swapcontext(&uc_main, &uc_co);
    }
    int64_t ns = bench_now() - t0;
    free(stack);
    if ((uintptr_t)uc_value != (uintptr_t)(rounds - 1))
        return WRONG_RESULT;
    return (int64_t)((double)ns * (double)iters / (double)(2 * rounds));
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

/* ------------------------------------------------------------------ peers */

/* The metrics enabled for a peer, as arguments; 0 when none. */
static size_t peer_metrics(const char *system, char **argv, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < BENCH_ARRAY_LEN(metrics); i++)
        if (bench_enabled(metrics[i].name, system))
            argv[n + k++] = (char *)metrics[i].name;
    return k;
}

static void run_peer(const char *system, const char *prog, const char *script, double scale)
{
    if (!bench_enabled(NULL, system))
        return;
    char scale_s[32], reps[16];
    snprintf(scale_s, sizeof scale_s, "%g", scale);
    snprintf(reps, sizeof reps, "%d", bench_reps());
    char *argv[8 + BENCH_ARRAY_LEN(metrics)];
    size_t n = 0;
    argv[n++] = (char *)prog;
    if (script)
        argv[n++] = (char *)script;
    argv[n++] = "--reps";
    argv[n++] = reps;
    argv[n++] = scale_s;
    size_t k = peer_metrics(system, argv, n);
    if (k == 0)
        return;
    argv[n + k] = NULL;
    bench_peer_run(system, argv, 600.0);
}

static void run_boost(void)
{
    if (CONC_BOOST_PEER[0] == '\0') {
        for (size_t i = 0; i < BENCH_ARRAY_LEN(metrics); i++)
            if (bench_enabled(metrics[i].name, "boost"))
                bench_skip(metrics[i].name, "boost", NULL,
                           "Boost.Context was not found when configuring "
                           "(install libboost-context-dev, or run make bench)");
        return;
    }
    run_peer("boost", CONC_BOOST_PEER, NULL, bench_scale() * (bench_quick() ? 0.1 : 1.0));
}

static void run_greenlet(void)
{
    /* Python is ~50x slower per switch: the script has its own, smaller
     * iteration counts. */
    run_peer("greenlet", bench_python(), bench_peer_path("coro_greenlet.py"),
             bench_scale() * (bench_quick() ? 0.05 : 1.0));
}

int main(int argc, char **argv)
{
    bench_init(argc, argv, "bench_coro: conc coroutines vs ucontext, Boost.Context, greenlet",
               metrics, BENCH_ARRAY_LEN(metrics));

    static const bench_case sw[] = {
        { "conc", switch_conc, NULL },
        { "ucontext", switch_ucontext, NULL },
    };
    bench_compare("switch", sw, BENCH_ARRAY_LEN(sw), bench_iters(100000000, 2000000), BENCH_BEST);

    static const bench_case cr[] = {
        { "conc", create_conc, NULL },
        { "ucontext", create_ucontext, NULL },
    };
    bench_compare("create", cr, BENCH_ARRAY_LEN(cr), bench_iters(10000000, 200000), BENCH_BEST);

    run_boost();
    run_greenlet();
    return bench_report();
}
