/*
 * test_coro_pool.c - coroutine pools (conc_cpool_*, gevent.pool.Pool) and
 * offloading blocking calls to worker threads (conc_offload,
 * gevent's threadpool.apply).
 *
 * Pools: the size limits how many members run at once, spawn parks while
 * the pool is full and resumes when a member ends, timeout 0 gives -EAGAIN,
 * join and kill (also of members that never started), free_count, full,
 * wait_available, unbounded pools, bad arguments.
 *
 * Offload: many coroutines offload blocking calls at once and the others
 * keep running meanwhile (checked by order and progress: a writer coroutine
 * must run for the blocked reads to end), the calls really run in
 * parallel, kill and timeouts give -ECANCELED / -ETIMEDOUT while the call
 * completes on its worker (abandon callback), plain threads, fork, the idle
 * exit and the worker limit.
 *
 * Criterion runs every test in its own process.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conc.h"
#include "support/sanitized.h"
#include "support/wait_helpers.h"


static char logbuf[256];
static size_t loglen;

static void logc(char c)
{
    if (loglen + 1 < sizeof logbuf)
        logbuf[loglen++] = c;
    logbuf[loglen] = '\0';
}

/* ================================================================ pools */

static int running, max_running, finished;

static void *busy_member(void *arg)
{
    (void)arg;
    running++;
    if (running > max_running)
        max_running = running;
    for (int i = 0; i < 3; i++)
        conc_sleep(0.002);
    running--;
    finished++;
    return arg;
}

Test(cpool, size_limits_concurrency, .timeout = 30)
{
    conc_cpool *p;
    cr_assert_eq(conc_cpool_new(&p, 3), 0);
    cr_assert_eq(conc_cpool_size(p), 3);
    conc_greenlet *g[12];
    for (intptr_t i = 0; i < 12; i++) {
        cr_assert_eq(conc_cpool_spawn(p, &g[i], busy_member, (void *)i, NULL, CONC_FOREVER), 0);
        cr_assert_leq(conc_cpool_len(p), 3);
    }
    cr_assert_eq(conc_cpool_join(p, CONC_FOREVER), 0);
    cr_assert_eq(finished, 12);
    cr_assert_eq(max_running, 3);
    cr_assert_eq(conc_cpool_len(p), 0);
    cr_assert_eq(conc_cpool_free_count(p), 3);
    for (intptr_t i = 0; i < 12; i++) {
        void *r;
        cr_assert(conc_greenlet_dead(g[i]));
        cr_assert_eq(conc_greenlet_result(g[i], &r), 0);
        cr_assert_eq(r, (void *)i);
        conc_greenlet_free(g[i]);
    }
    cr_assert_eq(conc_cpool_free(p), 0);
}

/* A member that runs until told to stop. */
static int stop_flag;

static void *held_member(void *arg)
{
    char c = (char)(intptr_t)arg;
    logc(c);
    while (!stop_flag)
        conc_sleep(0.001);
    logc((char)(c - 'A' + 'a'));
    return NULL;
}

static void *quick_member(void *arg)
{
    logc((char)(intptr_t)arg);
    return arg;
}

static conc_cpool *shared_pool;

static void *spawner(void *arg)
{
    (void)arg;
    logc('1');
    conc_greenlet *g;
    int rc = conc_cpool_spawn(shared_pool, &g, quick_member, (void *)'B', NULL, CONC_FOREVER);
    logc(rc == 0 ? '2' : 'E');
    if (rc == 0)
        conc_greenlet_free(g);
    return NULL;
}

static void *stopper(void *arg)
{
    (void)arg;
    logc('s');
    stop_flag = 1;
    return NULL;
}

Test(cpool, spawn_parks_while_full, .timeout = 30)
{
    cr_assert_eq(conc_cpool_new(&shared_pool, 1), 0);
    conc_greenlet *a, *x, *s;
    cr_assert_eq(conc_cpool_spawn(shared_pool, &a, held_member, (void *)'A', NULL, 0), 0);
    cr_assert(conc_cpool_full(shared_pool));
    cr_assert_eq(conc_cpool_free_count(shared_pool), 0);
    cr_assert(conc_cpool_contains(shared_pool, a));
    cr_assert_eq(conc_greenlet_spawn(&x, spawner, NULL, NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&s, stopper, NULL, NULL), 0);
    /* A starts and polls; the spawner parks (pool full); the stopper lets A
     * end, which makes room: only then does the spawner go on and B run. */
    cr_assert_eq(conc_greenlet_join(x, CONC_FOREVER), 0);
    cr_assert_eq(conc_cpool_join(shared_pool, CONC_FOREVER), 0);
    cr_assert_str_eq(logbuf, "A1sa2B");
    cr_assert_not(conc_cpool_contains(shared_pool, a));
    cr_assert_not(conc_cpool_full(shared_pool));
    conc_greenlet_free(a);
    conc_greenlet_free(x);
    conc_greenlet_free(s);
    cr_assert_eq(conc_cpool_free(shared_pool), 0);
}

Test(cpool, timeouts_when_full, .timeout = 30)
{
    conc_cpool *p;
    cr_assert_eq(conc_cpool_new(&p, 2), 0);
    cr_assert_eq(conc_cpool_wait_available(p, 0), 2);
    stop_flag = 0;
    cr_assert_eq(conc_cpool_spawn(p, NULL, held_member, (void *)'A', NULL, 0), 0);
    cr_assert_eq(conc_cpool_free_count(p), 1);
    cr_assert_eq(conc_cpool_wait_available(p, 0), 1);
    cr_assert_eq(conc_cpool_spawn(p, NULL, held_member, (void *)'B', NULL, 0), 0);
    cr_assert_eq(conc_cpool_len(p), 2);
    conc_greenlet *g = NULL;
    cr_assert_eq(conc_cpool_spawn(p, &g, quick_member, (void *)'C', NULL, 0), -EAGAIN);
    cr_assert_null(g);
    cr_assert_eq(conc_cpool_spawn_until(p, &g, quick_member, (void *)'C', NULL, conc_now()),
                 -ETIMEDOUT);
    cr_assert_eq(conc_cpool_spawn(p, &g, quick_member, (void *)'C', NULL, 0.02), -ETIMEDOUT);
    cr_assert_eq(conc_cpool_wait_available(p, 0), -EAGAIN);
    cr_assert_eq(conc_cpool_wait_available_until(p, conc_now()), -ETIMEDOUT);
    cr_assert_eq(conc_cpool_wait_available(p, 0.02), -ETIMEDOUT);
    cr_assert_eq(conc_cpool_join(p, 0), -EAGAIN);
    cr_assert_eq(conc_cpool_join_until(p, conc_now()), -ETIMEDOUT);
    cr_assert_eq(conc_cpool_join(p, 0.02), -ETIMEDOUT);
    cr_assert_eq(conc_cpool_free(p), -EBUSY);
    /* The members ran while we waited. */
    cr_assert_str_eq(logbuf, "AB");
    stop_flag = 1;
    cr_assert_geq(conc_cpool_wait_available(p, CONC_FOREVER), 1);
    cr_assert_eq(conc_cpool_join(p, CONC_FOREVER), 0);
    cr_assert_eq(conc_cpool_wait_available(p, 0), 2);
    cr_assert(!strcmp(logbuf, "ABab") || !strcmp(logbuf, "ABba"), "log %s", logbuf);
    cr_assert_eq(conc_cpool_free(p), 0);
}

/* Records what its blocking call returned. */
static int sleep_rc[8];

static void *sleeper_member(void *arg)
{
    intptr_t i = (intptr_t)arg;
    sleep_rc[i] = conc_sleep(10);
    return (void *)(i + 100);
}

static int ran_unstarted;

static void *never_member(void *arg)
{
    (void)arg;
    ran_unstarted = 1;
    return (void *)1;
}

Test(cpool, kill_members, .timeout = 30)
{
    conc_cpool *p;
    cr_assert_eq(conc_cpool_new(&p, 4), 0);
    conc_greenlet *g[4];
    for (intptr_t i = 0; i < 3; i++)
        cr_assert_eq(conc_cpool_spawn(p, &g[i], sleeper_member, (void *)i, NULL, 0), 0);
    cr_assert_eq(conc_sleep(0), 0);     /* they start and park in sleep */
    cr_assert_eq(conc_cpool_spawn(p, &g[3], never_member, NULL, NULL, 0), 0);
    cr_assert_eq(conc_cpool_len(p), 4);
    cr_assert_eq(conc_cpool_kill(p, CONC_FOREVER), 0);
    cr_assert_eq(conc_cpool_len(p), 0);
    for (int i = 0; i < 3; i++) {
        void *r;
        cr_assert_eq(sleep_rc[i], -ECANCELED);
        cr_assert(conc_greenlet_dead(g[i]));
        cr_assert_eq(conc_greenlet_result(g[i], &r), 0);
        cr_assert_eq(r, (void *)(intptr_t)(i + 100));
    }
    void *r = (void *)1;
    cr_assert(conc_greenlet_dead(g[3]));
    cr_assert_eq(conc_greenlet_result(g[3], &r), 0);
    cr_assert_null(r);
    cr_assert_eq(ran_unstarted, 0);
    for (int i = 0; i < 4; i++)
        conc_greenlet_free(g[i]);
    /* An empty pool: kill and join return at once. */
    cr_assert_eq(conc_cpool_kill(p, 0), 0);
    cr_assert_eq(conc_cpool_join(p, 0), 0);
    cr_assert_eq(conc_cpool_free(p), 0);
}

Test(cpool, kill_without_waiting, .timeout = 30)
{
    conc_cpool *p;
    cr_assert_eq(conc_cpool_new(&p, 0), 0);
    for (intptr_t i = 0; i < 2; i++)
        cr_assert_eq(conc_cpool_spawn(p, NULL, sleeper_member, (void *)i, NULL, 0), 0);
    cr_assert_eq(conc_sleep(0), 0);
    cr_assert_eq(conc_cpool_kill(p, 0), -EAGAIN);       /* block=False */
    cr_assert_eq(conc_cpool_len(p), 2);
    cr_assert_eq(conc_cpool_join(p, CONC_FOREVER), 0);
    cr_assert_eq(sleep_rc[0], -ECANCELED);
    cr_assert_eq(sleep_rc[1], -ECANCELED);
    cr_assert_eq(conc_cpool_free(p), 0);
}

Test(cpool, member_killed_before_start_leaves, .timeout = 30)
{
    conc_cpool *p;
    cr_assert_eq(conc_cpool_new(&p, 1), 0);
    conc_greenlet *g;
    cr_assert_eq(conc_cpool_spawn(p, &g, never_member, NULL, NULL, 0), 0);
    cr_assert_eq(conc_greenlet_kill(g), 0);
    conc_greenlet_free(g);                      /* allowed: the pool does not need it */
    /* The slot frees once the pool waits. */
    cr_assert_eq(conc_cpool_spawn(p, NULL, quick_member, (void *)'Q', NULL, CONC_FOREVER), 0);
    cr_assert_eq(conc_cpool_join(p, CONC_FOREVER), 0);
    cr_assert_eq(ran_unstarted, 0);
    cr_assert_str_eq(logbuf, "Q");
    cr_assert_eq(conc_cpool_free(p), 0);
}

/* A member that joins (and kills) its own pool: it leaves itself out. */
static int sibling_join_rc = 1, sibling_kill_rc = 1;

static void *joining_member(void *arg)
{
    conc_cpool *p = arg;
    logc('J');
    sibling_join_rc = conc_cpool_join(p, CONC_FOREVER);
    logc('j');
    conc_cpool_spawn(p, NULL, sleeper_member, (void *)5, NULL, 0);
    conc_sleep(0);                      /* it starts and parks */
    sibling_kill_rc = conc_cpool_kill(p, CONC_FOREVER);
    logc('k');
    return NULL;
}

static void *short_member(void *arg)
{
    logc((char)(intptr_t)arg);
    conc_sleep(0.01);
    logc((char)((intptr_t)arg - 'A' + 'a'));
    return NULL;
}

Test(cpool, member_joins_siblings, .timeout = 30)
{
    conc_cpool *p;
    cr_assert_eq(conc_cpool_new(&p, 3), 0);
    cr_assert_eq(conc_cpool_spawn(p, NULL, joining_member, p, NULL, 0), 0);
    cr_assert_eq(conc_cpool_spawn(p, NULL, short_member, (void *)'A', NULL, 0), 0);
    cr_assert_eq(conc_cpool_spawn(p, NULL, short_member, (void *)'B', NULL, 0), 0);
    cr_assert_eq(conc_cpool_join(p, CONC_FOREVER), 0);
    cr_assert_eq(sibling_join_rc, 0);
    cr_assert_eq(sibling_kill_rc, 0);
    cr_assert_eq(sleep_rc[5], -ECANCELED);
    cr_assert_str_eq(logbuf, "JABabjk");
    cr_assert_eq(conc_cpool_free(p), 0);
}

Test(cpool, unbounded, .timeout = 30)
{
    conc_cpool *p;
    cr_assert_eq(conc_cpool_new(&p, CONC_CPOOL_UNBOUNDED), 0);
    for (int i = 0; i < 200; i++)
        cr_assert_eq(conc_cpool_spawn(p, NULL, busy_member, NULL, NULL, 0), 0);
    cr_assert_eq(conc_cpool_len(p), 200);
    cr_assert_not(conc_cpool_full(p));
    cr_assert_eq(conc_cpool_free_count(p), SIZE_MAX);
    cr_assert_eq(conc_cpool_wait_available(p, 0), INT_MAX);
    cr_assert_eq(conc_cpool_join(p, CONC_FOREVER), 0);
    cr_assert_eq(max_running, 200);
    cr_assert_eq(finished, 200);
    cr_assert_eq(conc_cpool_free(p), 0);
}

static void *other_thread_calls(void *arg)
{
    conc_cpool *p = arg;
    intptr_t bad = 0;
    bad |= conc_cpool_join(p, 0) != -EPERM;
    bad |= conc_cpool_kill(p, 0) != -EPERM;
    bad |= conc_cpool_wait_available(p, 0) != -EPERM;
    bad |= conc_cpool_spawn(p, NULL, quick_member, NULL, NULL, 0) != -EPERM;
    bad |= conc_cpool_free(p) != -EPERM;
    bad |= conc_cpool_size(p) != 2;
    bad |= conc_cpool_free_count(p) != 2;
    return (void *)bad;
}

Test(cpool, bad_arguments, .timeout = 30)
{
    conc_cpool *p;
    cr_assert_eq(conc_cpool_new(NULL, 1), -EINVAL);
    cr_assert_eq(conc_cpool_new(&p, 2), 0);
    cr_assert_eq(conc_cpool_spawn(NULL, NULL, quick_member, NULL, NULL, 0), -EINVAL);
    cr_assert_eq(conc_cpool_spawn(p, NULL, NULL, NULL, NULL, 0), -EINVAL);
    for (size_t i = 0; i < N_BAD_TIMEOUTS; i++) {
        cr_assert_eq(conc_cpool_spawn(p, NULL, quick_member, NULL, NULL, bad_timeouts[i]), -EINVAL);
        cr_assert_eq(conc_cpool_join(p, bad_timeouts[i]), -EINVAL);
        cr_assert_eq(conc_cpool_kill(p, bad_timeouts[i]), -EINVAL);
        cr_assert_eq(conc_cpool_wait_available(p, bad_timeouts[i]), -EINVAL);
    }
    cr_assert_eq(conc_cpool_join(NULL, 0), -EINVAL);
    cr_assert_eq(conc_cpool_kill(NULL, 0), -EINVAL);
    cr_assert_eq(conc_cpool_wait_available(NULL, 0), -EINVAL);
    cr_assert_eq(conc_cpool_len(NULL), 0);
    cr_assert_eq(conc_cpool_size(NULL), 0);
    cr_assert_eq(conc_cpool_free_count(NULL), 0);
    cr_assert_not(conc_cpool_full(NULL));
    cr_assert_not(conc_cpool_contains(NULL, NULL));
    cr_assert_eq(conc_cpool_free(NULL), 0);
    conc_spawn_opts tiny = { .coro = &(conc_coro_opts){ .stack_size = 1 } };
    cr_assert_eq(conc_cpool_spawn(p, NULL, quick_member, NULL, &tiny, 0), -EINVAL);
    cr_assert_eq(conc_cpool_len(p), 0);
    void *bad;
    pthread_join(spawn(other_thread_calls, p), &bad);
    cr_assert_null(bad);
    cr_assert_eq(conc_cpool_free(p), 0);
}

/* ============================================================== offload */

/* Blocks in read(2) on a pipe, which the hub knows nothing of. */
static void *blocking_read(void *arg)
{
    int fd = (int)(intptr_t)arg;
    unsigned char c = 0;
    ssize_t n = read(fd, &c, 1);
    return (void *)(intptr_t)(n == 1 ? c : -1);
}

#define NREAD 6
static int rfd[NREAD][2];
static void *read_result[NREAD];
static int read_rc[NREAD];
static int read_done[NREAD];

static void *offloading_reader(void *arg)
{
    intptr_t i = (intptr_t)arg;
    logc((char)('a' + i));
    read_rc[i] = conc_offload(blocking_read, (void *)(intptr_t)rfd[i][0], &read_result[i],
                              CONC_FOREVER);
    logc((char)('A' + i));
    read_done[i] = 1;
    return NULL;
}

static void *pipe_writer(void *arg)
{
    (void)arg;
    /* Runs only while every reader is parked: their reads block workers,
     * not this thread.  Feeds them in reverse order, each once the one
     * before has finished. */
    logc('w');
    for (int i = NREAD - 1; i >= 0; i--) {
        unsigned char c = (unsigned char)(10 + i);
        cr_assert_eq(write(rfd[i][1], &c, 1), 1);
        while (!read_done[i])
            conc_sleep(0.001);
    }
    return NULL;
}

Test(offload, blocking_reads_park_only_their_coroutine, .timeout = 30)
{
    conc_greenlet *g[NREAD], *w;
    for (intptr_t i = 0; i < NREAD; i++) {
        cr_assert_eq(pipe(rfd[i]), 0);
        cr_assert_eq(conc_greenlet_spawn(&g[i], offloading_reader, (void *)i, NULL), 0);
    }
    cr_assert_eq(conc_greenlet_spawn(&w, pipe_writer, NULL, NULL), 0);
    cr_assert_eq(conc_greenlet_joinall(g, NREAD, CONC_FOREVER), 0);
    cr_assert_eq(conc_greenlet_join(w, CONC_FOREVER), 0);
    for (int i = 0; i < NREAD; i++) {
        cr_assert_eq(read_rc[i], 0);
        cr_assert_eq(read_result[i], (void *)(intptr_t)(10 + i));
        conc_greenlet_free(g[i]);
        close(rfd[i][0]);
        close(rfd[i][1]);
    }
    conc_greenlet_free(w);
    /* All started and parked before the writer ran; the writer fed the
     * last reader first, and each finished as it was fed. */
    cr_assert_str_eq(logbuf, "abcdefwFEDCBA");
}

/* Every call waits at a barrier for all the others: they can only pass it
 * when they run at the same time on different workers. */
#define NPAR 8
static pthread_barrier_t barrier;
static int ticks;

static void *barrier_call(void *arg)
{
    pthread_barrier_wait(&barrier);
    return (void *)((intptr_t)arg * 2);
}

static void *offload_barrier(void *arg)
{
    void *r = NULL;
    int rc = conc_offload(barrier_call, arg, &r, CONC_FOREVER);
    return rc == 0 ? r : (void *)-1;
}

static int parallel_done;

static void *ticker(void *arg)
{
    (void)arg;
    while (!parallel_done) {
        ticks++;
        conc_sleep(0.001);
    }
    return NULL;
}

Test(offload, calls_run_in_parallel, .timeout = 30)
{
    cr_assert_geq(conc_offload_max_workers(), NPAR);
    cr_assert_eq(pthread_barrier_init(&barrier, NULL, NPAR + 1), 0);
    conc_greenlet *g[NPAR], *t;
    for (intptr_t i = 0; i < NPAR; i++)
        cr_assert_eq(conc_greenlet_spawn(&g[i], offload_barrier, (void *)i, NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&t, ticker, NULL, NULL), 0);
    /* Let them all park, then see the ticker run while they are held. */
    while (ticks < 5)
        cr_assert_eq(conc_sleep(0.001), 0);
    conc_offload_stats st;
    cr_assert_eq(conc_offload_get_stats(&st), 0);
    cr_assert_eq(st.workers, NPAR);
    /* Each worker takes its call when it gets to run. */
    WAIT_FOR(({
        conc_offload_get_stats(&st);
        st.queued == 0;
    }));
    pthread_barrier_wait(&barrier);     /* the ninth party: release them */
    cr_assert_eq(conc_greenlet_joinall(g, NPAR, CONC_FOREVER), 0);
    parallel_done = 1;
    cr_assert_eq(conc_greenlet_join(t, CONC_FOREVER), 0);
    for (intptr_t i = 0; i < NPAR; i++) {
        void *r;
        cr_assert_eq(conc_greenlet_result(g[i], &r), 0);
        cr_assert_eq(r, (void *)(i * 2));
        conc_greenlet_free(g[i]);
    }
    conc_greenlet_free(t);
    pthread_barrier_destroy(&barrier);
}

static void *add_one(void *arg)
{
    return (void *)((intptr_t)arg + 1);
}

Test(offload, main_coroutine_and_plain_thread, .timeout = 30)
{
    /* A plain thread (no hub): blocks until the result is there. */
    void *r = NULL;
    cr_assert_eq(conc_offload(add_one, (void *)41, &r, CONC_FOREVER), 0);
    cr_assert_eq(r, (void *)42);
    cr_assert_eq(conc_offload(add_one, (void *)1, NULL, 5.0), 0);
    /* The main coroutine of a hub thread with nothing else to run: a
     * pending call is not mistaken for a deadlock. */
    conc_greenlet *g;
    cr_assert_eq(conc_greenlet_spawn(&g, quick_member, (void *)'x', NULL), 0);
    cr_assert_eq(conc_greenlet_join(g, CONC_FOREVER), 0);
    conc_greenlet_free(g);
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    unsigned char c = 7;
    cr_assert_eq(write(fds[1], &c, 1), 1);
    cr_assert_eq(conc_offload(blocking_read, (void *)(intptr_t)fds[0], &r, CONC_FOREVER), 0);
    cr_assert_eq(r, (void *)7);
    cr_assert_eq(conc_offload_until(add_one, (void *)2, &r, CONC_NO_DEADLINE), 0);
    cr_assert_eq(r, (void *)3);
    close(fds[0]);
    close(fds[1]);
}

/* Kill while waiting: -ECANCELED, the call completes on its worker and the
 * abandon callback gets arg and result. */
static int kill_fds[2];
static int killed_rc = 1;
static uint32_t abandoned;
static void *abandoned_arg, *abandoned_result;

static void on_abandon(void *arg, void *result)
{
    abandoned_arg = arg;
    abandoned_result = result;
    __atomic_store_n(&abandoned, 1, __ATOMIC_RELEASE);
}

static void *offload_then_log(void *arg)
{
    (void)arg;
    conc_offload_opts o = CONC_OFFLOAD_OPTS_INIT;
    o.abandon = on_abandon;
    void *r = (void *)-5;
    logc('o');
    killed_rc = conc_offload_opts_until(blocking_read, (void *)(intptr_t)kill_fds[0], &r,
                                CONC_NO_DEADLINE, &o);
    logc(r == (void *)-5 ? 'r' : 'R');  /* the result is not stored */
    return NULL;
}

Test(offload, kill_while_waiting, .timeout = 30)
{
    cr_assert_eq(pipe(kill_fds), 0);
    conc_greenlet *g;
    cr_assert_eq(conc_greenlet_spawn(&g, offload_then_log, NULL, NULL), 0);
    cr_assert_eq(conc_sleep(0), 0);     /* it starts and parks */
    cr_assert_str_eq(logbuf, "o");
    cr_assert_eq(conc_greenlet_kill(g), 0);
    cr_assert_eq(conc_greenlet_join(g, CONC_FOREVER), 0);
    cr_assert_eq(killed_rc, -ECANCELED);
    cr_assert_str_eq(logbuf, "or");
    cr_assert_eq(__atomic_load_n(&abandoned, __ATOMIC_ACQUIRE), 0);  /* still reading */
    unsigned char c = 9;
    cr_assert_eq(write(kill_fds[1], &c, 1), 1);
    WAIT_FOR(__atomic_load_n(&abandoned, __ATOMIC_ACQUIRE));
    cr_assert_eq(abandoned_arg, (void *)(intptr_t)kill_fds[0]);
    cr_assert_eq(abandoned_result, (void *)9);
    conc_greenlet_free(g);
}

Test(offload, timeouts, .timeout = 30)
{
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    void *r = (void *)-5;
    void *arg = (void *)(intptr_t)fds[0];
    /* A plain thread. */
    cr_assert_eq(conc_offload(blocking_read, arg, &r, 0.02), -ETIMEDOUT);
    cr_assert_eq(r, (void *)-5);
    /* A coroutine, with a deadline and with a timeout scope. */
    conc_greenlet *g;
    cr_assert_eq(conc_greenlet_spawn(&g, quick_member, (void *)'x', NULL), 0);
    cr_assert_eq(conc_greenlet_join(g, CONC_FOREVER), 0);
    conc_greenlet_free(g);
    cr_assert_eq(conc_offload_until(blocking_read, arg, &r, conc_now() + 20000000), -ETIMEDOUT);
    cr_assert_eq(conc_hub_timeout_push_until(conc_now() + 20000000), 0);
    cr_assert_eq(conc_offload(blocking_read, arg, &r, CONC_FOREVER), -ETIMEDOUT);
    cr_assert_eq(conc_hub_timeout_pop(), 0);
    cr_assert_eq(r, (void *)-5);
    /* Three reads are still pending on workers: feed them. */
    unsigned char c[3] = { 1, 2, 3 };
    cr_assert_eq(write(fds[1], c, 3), 3);
    WAIT_FOR(({
        conc_offload_stats st;
        conc_offload_get_stats(&st);
        st.idle == st.workers;
    }));
    close(fds[0]);
    close(fds[1]);
}

Test(offload, bad_arguments, .timeout = 30)
{
    void *r;
    cr_assert_eq(conc_offload(NULL, NULL, &r, CONC_FOREVER), -EINVAL);
    cr_assert_eq(conc_offload_until(NULL, NULL, &r, CONC_NO_DEADLINE), -EINVAL);
    cr_assert_eq(conc_offload_opts_until(NULL, NULL, &r, CONC_NO_DEADLINE, NULL), -EINVAL);
    for (size_t i = 0; i < N_BAD_TIMEOUTS; i++)
        cr_assert_eq(conc_offload(add_one, NULL, &r, bad_timeouts[i]), -EINVAL);
    cr_assert_eq(conc_offload_get_stats(NULL), -EINVAL);
    conc_offload_stats st;
    cr_assert_eq(conc_offload_get_stats(&st), 0);
    cr_assert_eq(st.workers, 0);        /* nothing was accepted */
}

Test(offload, idle_workers_exit_and_limit, .timeout = 30)
{
    cr_assert_eq(conc_offload_idle_timeout(), CONC_OFFLOAD_IDLE_DEFAULT);
    cr_assert_eq(conc_offload_set_idle_timeout(-1), -EINVAL);
    cr_assert_eq(conc_offload_set_idle_timeout(NAN), -EINVAL);
    cr_assert_eq(conc_offload_idle_timeout(), CONC_OFFLOAD_IDLE_DEFAULT);
    cr_assert_eq(conc_offload_set_idle_timeout(0.05), 0);
    cr_assert_eq(conc_offload_idle_timeout(), 0.05);
    long was = conc_offload_max_workers();
    cr_assert_geq(was, CONC_OFFLOAD_MIN_DEFAULT);
    cr_assert_eq(conc_offload_set_max_workers(0), -EINVAL);
    cr_assert_eq(conc_offload_set_max_workers(-1), -EINVAL);
    cr_assert_eq(conc_offload_max_workers(), was);
    cr_assert_eq(conc_offload_set_max_workers(2), 0);
    cr_assert_eq(conc_offload_max_workers(), 2);
    /* Four blocked calls from four coroutines, two workers: two wait in
     * the queue. */
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    conc_greenlet *g[4];
    for (intptr_t i = 0; i < 4; i++) {
        rfd[i][0] = fds[0];
        cr_assert_eq(conc_greenlet_spawn(&g[i], offloading_reader, (void *)i, NULL), 0);
    }
    cr_assert_eq(conc_sleep(0), 0);     /* each submits its call and parks */
    conc_offload_stats st;
    /* The two workers take a call each when they get to run. */
    WAIT_FOR(({
        conc_offload_get_stats(&st);
        st.queued == 2;
    }));
    cr_assert_eq(st.workers, 2);
    cr_assert_eq(st.max_workers, 2);
    unsigned char c[4] = { 1, 1, 1, 1 };
    cr_assert_eq(write(fds[1], c, 4), 4);
    cr_assert_eq(conc_hub_run(), 0);
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(read_result[i], (void *)1);
        conc_greenlet_free(g[i]);
    }
    /* Idle for 50 ms: they exit. */
    WAIT_FOR(({
        conc_offload_get_stats(&st);
        st.workers == 0;
    }));
    cr_assert_eq(conc_offload(add_one, (void *)1, NULL, CONC_FOREVER), 0);
    close(fds[0]);
    close(fds[1]);
}

Test(offload, fork_child_has_no_workers, .timeout = 30)
{
    void *r;
    cr_assert_eq(conc_offload(add_one, (void *)1, &r, CONC_FOREVER), 0);
    conc_offload_stats st;
    cr_assert_eq(conc_offload_get_stats(&st), 0);
    cr_assert_geq(st.workers, 1);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        int bad = conc_offload_get_stats(&st) != 0 || st.workers != 0 || st.queued != 0;
        if (TSAN)
            _exit(bad);
        bad |= conc_offload(add_one, (void *)5, &r, CONC_FOREVER) != 0 || r != (void *)6;
        conc_offload_get_stats(&st);
        bad |= st.workers != 1;
        _exit(bad);
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status));
    cr_assert_eq(WEXITSTATUS(status), 0);
}

static uint32_t long_call_in;

static void *long_call(void *arg)
{
    (void)arg;
    __atomic_store_n(&long_call_in, 1, __ATOMIC_RELEASE);
    sleep(20);
    return NULL;
}

Test(offload, exit_while_a_call_runs, .timeout = 30)
{
    /* A process exits normally while a worker is still inside a call: the
     * exit does not wait for it. */
    if (TSAN)
        cr_skip_test("ThreadSanitizer cannot start threads in a forked child");
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        int rc = conc_offload(long_call, NULL, NULL, 0);
        while (!__atomic_load_n(&long_call_in, __ATOMIC_ACQUIRE))
            usleep(1000);
        exit(rc == -EAGAIN ? 0 : 1);
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status));
    cr_assert_eq(WEXITSTATUS(status), 0);
}
