/*
 * test_hub.c - the gevent-style hub of conc/coro.h: spawn, join, joinall
 * and their order with sleeps (an event log checked exactly), sleep(0)
 * yields, kill at every kind of blocking point, join timeouts, timeout
 * scopes, locks between coroutines of one thread, wake-ups from other
 * threads (event, queue), the deadlock diagnosis, many sleepers, the
 * coro-sleepers example, joiners of one greenlet, hand-off between yielding
 * greenlets next to a descriptor waiter, and memory per greenlet.
 *
 * Criterion runs every test in its own process.  Coroutines only record
 * what they saw; assertions are made by the test's main coroutine.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conc.h"
#include "support/hub_dump.h"

#ifndef CONC_EXAMPLES_DIR
#error "CONC_EXAMPLES_DIR must name the directory of the example binaries"
#endif

#if defined(__SANITIZE_THREAD__)
#define MANY 2000
#elif defined(__SANITIZE_ADDRESS__)
#define MANY 20000
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MANY 2000
#elif __has_feature(address_sanitizer)
#define MANY 20000
#endif
#endif
#ifndef MANY
#define MANY 100000
#endif

/* ------------------------------------------------------------ event log */

static char logbuf[256];
static size_t loglen;

static void logc(char c)
{
    if (loglen + 1 < sizeof logbuf)
        logbuf[loglen++] = c;
    logbuf[loglen] = '\0';
}

/* ----------------------------------------------------------- interleave */

struct step {
    char name;
    int n;
    double pause;
};

/* The steppers sleep until fixed times after one common start, not for a
 * pause after each step, and are spawned in the order of their first
 * deadlines: the hub ends sleeps in deadline order (also those already
 * passed when armed), so the log is decided by the deadlines alone, never by
 * how late a loaded machine let one of them run. */
static int64_t step_base;

static void *stepper(void *arg)
{
    struct step *s = arg;
    for (int i = 0; i < s->n; i++) {
        logc(s->name);
        conc_sleep_until(step_base + (int64_t)((i + 1) * s->pause * 1e9));
    }
    return (void *)(intptr_t)s->name;
}

Test(hub, spawn_join_order, .timeout = 30)
{
    /* a logs at 0, 30, 60 ms; b at 0, 45, 90 ms. */
    struct step a = { 'a', 3, 0.030 }, b = { 'b', 3, 0.045 };
    conc_greenlet *ga, *gb;
    step_base = conc_now();
    cr_assert_eq(conc_greenlet_spawn(&ga, stepper, &a, NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&gb, stepper, &b, NULL), 0);
    logc('m');                      /* nothing runs before main blocks */
    cr_assert_eq(conc_greenlet_join(gb, CONC_FOREVER), 0);
    logc('j');
    cr_assert_str_eq(logbuf, "mababab" "j");
    cr_assert(conc_greenlet_dead(ga));
    void *r;
    cr_assert_eq(conc_greenlet_result(gb, &r), 0);
    cr_assert_eq((intptr_t)r, 'b');
    cr_assert_eq(conc_greenlet_join(ga, 0), 0);
    conc_greenlet_free(ga);
    conc_greenlet_free(gb);
    cr_assert_eq(conc_hub_free(), 0);
}

Test(hub, joinall_and_run, .timeout = 30)
{
    struct step s[3] = { { 'z', 2, 0.005 }, { 'y', 1, 0.01 }, { 'x', 2, 0.02 } };
    conc_greenlet *g[4] = { NULL };
    step_base = conc_now();
    for (int i = 0; i < 3; i++)
        cr_assert_eq(conc_greenlet_spawn(&g[i], stepper, &s[i], NULL), 0);
    cr_assert_eq(conc_greenlet_joinall(g, 4, 5.0), 0);   /* the NULL entry is skipped */
    cr_assert_str_eq(logbuf, "zyxzx");
    for (int i = 0; i < 3; i++) {
        cr_assert(conc_greenlet_dead(g[i]));
        conc_greenlet_free(g[i]);
    }
    cr_assert_eq(conc_hub_run(), 0);            /* nothing left */
    cr_assert_eq(conc_greenlet_spawn(&g[0], stepper, &s[1], NULL), 0);
    cr_assert_eq(conc_hub_run(), 0);
    cr_assert(conc_greenlet_dead(g[0]));
    conc_greenlet_free(g[0]);
}

static void *yielder(void *arg)
{
    char c = (char)(intptr_t)arg;
    for (int i = 0; i < 3; i++) {
        logc(c);
        cr_assert_eq(conc_sleep(0), 0);
    }
    return NULL;
}

Test(hub, sleep_zero_yields, .timeout = 30)
{
    conc_greenlet *a, *b;
    cr_assert_eq(conc_greenlet_spawn(&a, yielder, (void *)'a', NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&b, yielder, (void *)'b', NULL), 0);
    cr_assert_eq(conc_sleep(0), 0);         /* main yields: both run once */
    logc('m');
    cr_assert_eq(conc_greenlet_join(a, CONC_FOREVER), 0);
    cr_assert_eq(conc_greenlet_join(b, CONC_FOREVER), 0);
    cr_assert_str_eq(logbuf, "abmabab");
    conc_greenlet_free(a);
    conc_greenlet_free(b);
}

/* ---------------------------------------------------------------- kill */

static conc_lock klock = CONC_LOCK_INIT;
static conc_event kevent = CONC_EVENT_INIT;
static conc_cond kcond = CONC_COND_INIT;
static conc_lock kcond_lock = CONC_LOCK_INIT;
static conc_queue *kqueue;
static int kpipe[2];
static int krc[8];

static void *blocker(void *arg)
{
    int kind = (int)(intptr_t)arg;
    int r = -1;
    void *item;
    char c;
    switch (kind) {
    case 0:
        r = conc_sleep(10);
        break;
    case 1:
        r = conc_lock_acquire(&klock, CONC_FOREVER);
        break;
    case 2:
        r = conc_event_wait(&kevent, CONC_FOREVER);
        break;
    case 3:
        conc_lock_acquire(&kcond_lock, CONC_FOREVER);
        r = conc_cond_wait(&kcond, &kcond_lock, CONC_FOREVER);
        conc_lock_release(&kcond_lock);
        break;
    case 4:
        r = conc_queue_get(kqueue, &item, CONC_FOREVER);
        break;
    case 5:
        (void)c;
        r = conc_fd_wait(kpipe[0], POLLIN, CONC_FOREVER);
        break;
    }
    krc[kind] = r;
    return NULL;
}

static void kill_at(int kind)
{
    krc[kind] = 1;
    conc_greenlet *g;
    cr_assert_eq(conc_greenlet_spawn(&g, blocker, (void *)(intptr_t)kind, NULL), 0);
    cr_assert_eq(conc_sleep(0.02), 0);       /* it runs and parks */
    cr_assert_eq(krc[kind], 1, "kind %d did not block", kind);
    cr_assert_not(conc_greenlet_dead(g));
    cr_assert_eq(conc_greenlet_kill(g), 0);
    cr_assert_eq(conc_greenlet_join(g, 5.0), 0);
    cr_assert_eq(krc[kind], -ECANCELED, "kind %d returned %d", kind, krc[kind]);
    cr_assert_eq(conc_greenlet_kill(g), 0);           /* finished: nothing happens */
    conc_greenlet_free(g);
}

Test(hub, kill_sleep, .timeout = 30)
{
    kill_at(0);
}

Test(hub, kill_lock_acquire, .timeout = 30)
{
    cr_assert_eq(conc_lock_acquire(&klock, CONC_FOREVER), 0);
    kill_at(1);
    cr_assert_eq(conc_lock_release(&klock), 0);
}

Test(hub, kill_event_wait, .timeout = 30)
{
    kill_at(2);
}

Test(hub, kill_condition_wait, .timeout = 30)
{
    kill_at(3);
}

Test(hub, kill_queue_get, .timeout = 30)
{
    cr_assert_eq(conc_queue_new(&kqueue, NULL), 0);
    kill_at(4);
    conc_queue_free(kqueue);
}

Test(hub, kill_fd_wait, .timeout = 30)
{
    cr_assert_eq(pipe(kpipe), 0);
    kill_at(5);
    close(kpipe[0]);
    close(kpipe[1]);
}

static void *logger(void *arg)
{
    logc((char)(intptr_t)arg);
    return arg;
}

Test(hub, kill_before_start, .timeout = 30)
{
    conc_greenlet *a, *b;
    cr_assert_eq(conc_greenlet_spawn(&a, logger, (void *)'a', NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&b, logger, (void *)'b', NULL), 0);
    cr_assert_eq(conc_greenlet_kill(a), 0);
    cr_assert_eq(conc_greenlet_joinall((conc_greenlet *[]){ a, b }, 2, 5.0), 0);
    cr_assert_str_eq(logbuf, "b");
    void *r = (void *)1;
    cr_assert_eq(conc_greenlet_result(a, &r), -ECANCELED);
    cr_assert_eq(conc_greenlet_result(b, &r), 0);
    cr_assert_eq((intptr_t)r, 'b');
    conc_greenlet_free(a);
    conc_greenlet_free(b);
}

static void *fd_reader(void *arg)
{
    int *fds = arg;
    int r = conc_fd_wait(fds[0], POLLIN, 5.0);
    char c = 0;
    if (r == 0 && read(fds[0], &c, 1) == 1)
        logc(c);
    return (void *)(intptr_t)r;
}

static void *fd_writer(void *arg)
{
    int *fds = arg;
    conc_sleep(0.01);
    logc('w');
    ssize_t n = write(fds[1], "r", 1);
    (void)n;
    return NULL;
}

Test(hub, fd_wait_wakes, .timeout = 30)
{
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    conc_greenlet *a, *b;
    cr_assert_eq(conc_greenlet_spawn(&a, fd_reader, fds, NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&b, fd_writer, fds, NULL), 0);
    cr_assert_eq(conc_greenlet_joinall((conc_greenlet *[]){ a, b }, 2, 5.0), 0);
    cr_assert_str_eq(logbuf, "wr");
    void *r;
    cr_assert_eq(conc_greenlet_result(a, &r), 0);
    cr_assert_eq((intptr_t)r, 0);
    cr_assert_eq(conc_fd_wait(fds[0], POLLIN, 0.02), -ETIMEDOUT);
    cr_assert_eq(conc_fd_wait(-1, POLLIN, 0), -EBADF);
    conc_greenlet_free(a);
    conc_greenlet_free(b);
    close(fds[0]);
    close(fds[1]);
}

/* ------------------------------------------------------------ timeouts */

static void *long_sleeper(void *arg)
{
    (void)arg;
    conc_sleep(0.3);
    return NULL;
}

/* Runs until its event is set (no sleep whose length races the joins). */
static void *held_by_event(void *arg)
{
    conc_event_wait(arg, CONC_FOREVER);
    return NULL;
}

Test(hub, join_timeout, .timeout = 30)
{
    conc_event hold = CONC_EVENT_INIT;
    conc_greenlet *g;
    cr_assert_eq(conc_greenlet_spawn(&g, held_by_event, &hold, NULL), 0);
    int64_t t0 = conc_now();
    cr_assert_eq(conc_greenlet_join(g, 0.05), -ETIMEDOUT);
    cr_assert_geq(conc_now() - t0, 40000000);
    cr_assert_eq(conc_greenlet_join(g, 0), -EAGAIN);
    cr_assert_not(conc_greenlet_dead(g));
    cr_assert_eq(conc_greenlet_join_until(g, conc_now() - 1), -ETIMEDOUT);
    cr_assert_eq(conc_greenlet_joinall(&g, 1, 0), -EAGAIN);
    cr_assert_eq(conc_greenlet_joinall_until(&g, 1, 0), -ETIMEDOUT);
    cr_assert_eq(conc_greenlet_joinall(&g, 1, 0.01), -ETIMEDOUT);
    cr_assert_eq(conc_event_set(&hold), 0);
    cr_assert_eq(conc_greenlet_join(g, CONC_FOREVER), 0);
    cr_assert_eq(conc_greenlet_join(NULL, 1), -EINVAL);
    cr_assert_eq(conc_greenlet_join(g, -2), -EINVAL);
    conc_greenlet_free(g);
}

static int scope_rc[4];

static void *scoped(void *arg)
{
    (void)arg;
    conc_event ev = CONC_EVENT_INIT;
    cr_assert_eq(conc_hub_timeout_push_until(conc_now() + 30000000), 0);
    scope_rc[0] = conc_event_wait(&ev, CONC_FOREVER);
    scope_rc[1] = conc_sleep(1.0);
    cr_assert_eq(conc_hub_timeout_pop(), 0);
    scope_rc[2] = conc_sleep(0.001);
    scope_rc[3] = conc_hub_timeout_pop();
    return NULL;
}

Test(hub, timeout_scope, .timeout = 30)
{
    conc_greenlet *g;
    cr_assert_eq(conc_greenlet_spawn(&g, scoped, NULL, NULL), 0);
    int64_t t0 = conc_now();
    cr_assert_eq(conc_greenlet_join(g, 5.0), 0);
    cr_assert_lt(conc_now() - t0, 900000000);   /* the 1 s sleep was cut */
    cr_assert_eq(scope_rc[0], -ETIMEDOUT);
    cr_assert_eq(scope_rc[1], -ETIMEDOUT);
    cr_assert_eq(scope_rc[2], 0);
    cr_assert_eq(scope_rc[3], -EINVAL);
    conc_greenlet_free(g);
    /* In the main coroutine too. */
    conc_lock l = CONC_LOCK_INIT;
    cr_assert_eq(conc_lock_acquire(&l, CONC_FOREVER), 0);
    cr_assert_eq(conc_hub_timeout_push_until(conc_now() + 20000000), 0);
    cr_assert_eq(conc_hub_timeout_push_until(CONC_NO_DEADLINE), 0);  /* outer still wins */
    cr_assert_eq(conc_lock_acquire(&l, CONC_FOREVER), -ETIMEDOUT);
    cr_assert_eq(conc_hub_timeout_pop(), 0);
    cr_assert_eq(conc_hub_timeout_pop(), 0);
    cr_assert_eq(conc_hub_timeout_pop(), -EINVAL);
    /* The seconds form: 0 is a scope already over, CONC_FOREVER has no
     * deadline, a bad timeout opens nothing. */
    cr_assert_eq(conc_hub_timeout_push(NAN), -EINVAL);
    cr_assert_eq(conc_hub_timeout_push(-2.0), -EINVAL);
    cr_assert_eq(conc_hub_timeout_pop(), -EINVAL);
    cr_assert_eq(conc_hub_timeout_push(CONC_FOREVER), 0);
    cr_assert_eq(conc_lock_acquire(&l, 0), -EAGAIN);
    cr_assert_eq(conc_hub_timeout_push(0), 0);
    cr_assert_eq(conc_lock_acquire(&l, CONC_FOREVER), -ETIMEDOUT);
    cr_assert_eq(conc_hub_timeout_pop(), 0);
    cr_assert_eq(conc_hub_timeout_pop(), 0);
    cr_assert_eq(conc_hub_timeout_pop(), -EINVAL);
    cr_assert_eq(conc_lock_release(&l), 0);
}

/* Every nesting level up to CONC_TIMEOUT_DEPTH, the innermost one already
 * over, then one too many; the greenlet ends with its scopes still open
 * (they go with it: the sanitizer build finds a leak). */
static void *deep_scopes(void *arg)
{
    int *rc = arg;
    for (int i = 0; i < CONC_TIMEOUT_DEPTH - 1; i++)
        if (conc_hub_timeout_push(CONC_FOREVER) != 0)
            return NULL;
    rc[0] = conc_sleep(0.001);                  /* no deadline yet */
    rc[1] = conc_hub_timeout_push(0);           /* the 16th */
    rc[2] = conc_hub_timeout_push(CONC_FOREVER);
    rc[3] = conc_sleep(1.0);
    rc[4] = conc_hub_timeout_pop();
    rc[5] = conc_sleep(0.001);
    return NULL;
}

Test(hub, timeout_scopes_full_depth_own_and_copied, .timeout = 30)
{
    for (int copied = 0; copied < 2; copied++) {
        int rc[6] = { 1, 1, 1, 1, 1, 1 };
        conc_spawn_opts o = { .size = sizeof o,
                              .stack = copied ? CONC_STACK_COPIED : CONC_STACK_OWN };
        conc_greenlet *g;
        cr_assert_eq(conc_greenlet_spawn(&g, deep_scopes, rc, &o), 0);
        cr_assert_eq(conc_greenlet_join(g, 10.0), 0);
        cr_assert_eq(rc[0], 0, "copied %d", copied);
        cr_assert_eq(rc[1], 0);
        cr_assert_eq(rc[2], -EOVERFLOW);
        cr_assert_eq(rc[3], -ETIMEDOUT);
        cr_assert_eq(rc[4], 0);
        cr_assert_eq(rc[5], 0);
        conc_greenlet_free(g);
    }
}

/* ------------------------------------------- lock between coroutines */

static conc_lock shared_lock = CONC_LOCK_INIT;

static void *locker(void *arg)
{
    char c = (char)(intptr_t)arg;
    cr_assert_eq(conc_lock_acquire(&shared_lock, CONC_FOREVER), 0);
    logc(c);
    conc_sleep(0.02);                  /* holds it while sleeping */
    logc((char)(c - 'a' + 'A'));
    conc_lock_release(&shared_lock);
    return NULL;
}

Test(hub, lock_between_coroutines, .timeout = 30)
{
    conc_greenlet *g[3];
    for (int i = 0; i < 3; i++)
        cr_assert_eq(conc_greenlet_spawn(&g[i], locker, (void *)(intptr_t)('a' + i), NULL), 0);
    cr_assert_eq(conc_greenlet_joinall(g, 3, 5.0), 0);
    cr_assert_str_eq(logbuf, "aAbBcC");
    for (int i = 0; i < 3; i++)
        conc_greenlet_free(g[i]);
}

/* ------------------------------------------------------ other threads */

static conc_event xevent = CONC_EVENT_INIT;

/* Sets the event once the ticker has ticked twice while the waiter waits
 * (not after a pause that a slow ticker could outlast). */
static void *event_setter(void *arg)
{
    int *ticks = arg;
    while (__atomic_load_n(ticks, __ATOMIC_ACQUIRE) < 2)
        usleep(1000);
    conc_event_set(&xevent);
    return NULL;
}

static void *event_waiter(void *arg)
{
    (void)arg;
    return (void *)(intptr_t)conc_event_wait(&xevent, 10.0);
}

static void *ticker(void *arg)
{
    int *ticks = arg;
    while (!conc_event_is_set(&xevent)) {
        __atomic_store_n(ticks, *ticks + 1, __ATOMIC_RELEASE);
        conc_sleep(0.005);
    }
    return NULL;
}

Test(hub, event_set_by_other_thread, .timeout = 30)
{
    int ticks = 0;
    conc_greenlet *w, *t;
    cr_assert_eq(conc_greenlet_spawn(&w, event_waiter, NULL, NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&t, ticker, &ticks, NULL), 0);
    conc_thread *th;
    cr_assert_eq(conc_thread_new(&th, event_setter, &ticks, NULL), 0);
    cr_assert_eq(conc_thread_start(th), 0);
    cr_assert_eq(conc_greenlet_join(w, 10.0), 0);
    void *r;
    cr_assert_eq(conc_greenlet_result(w, &r), 0);
    cr_assert_eq((intptr_t)r, 0);
    cr_assert_gt(ticks, 1);            /* the thread's coroutines kept running */
    cr_assert_eq(conc_greenlet_join(t, 10.0), 0);
    cr_assert_eq(conc_thread_join(th, CONC_FOREVER), 0);
    conc_thread_free(th);
    conc_greenlet_free(w);
    conc_greenlet_free(t);
}

static conc_queue *xqueue;

static void *feeder(void *arg)
{
    (void)arg;
    for (intptr_t i = 1; i <= 50; i++) {
        conc_queue_put(xqueue, (void *)i, CONC_FOREVER);
        if (i % 10 == 0)
            conc_sleep(0.005);
    }
    return NULL;
}

static void *consumer(void *arg)
{
    intptr_t *sum = arg;
    for (int i = 0; i < 25; i++) {
        void *item;
        if (conc_queue_get(xqueue, &item, 10.0) != 0)
            return (void *)1;
        *sum += (intptr_t)item;
    }
    return NULL;
}

Test(hub, queue_fed_by_other_thread, .timeout = 30)
{
    cr_assert_eq(conc_queue_new(&xqueue, NULL), 0);
    intptr_t sum[2] = { 0, 0 };
    conc_greenlet *c[2];
    cr_assert_eq(conc_greenlet_spawn(&c[0], consumer, &sum[0], NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&c[1], consumer, &sum[1], NULL), 0);
    cr_assert_eq(conc_sleep(0.01), 0);          /* both park on the queue */
    conc_thread *th;
    cr_assert_eq(conc_thread_new(&th, feeder, NULL, NULL), 0);
    cr_assert_eq(conc_thread_start(th), 0);
    cr_assert_eq(conc_greenlet_joinall(c, 2, 10.0), 0);
    cr_assert_eq(sum[0] + sum[1], 50 * 51 / 2);
    for (int i = 0; i < 2; i++) {
        void *r;
        cr_assert_eq(conc_greenlet_result(c[i], &r), 0);
        cr_assert_null(r);
        conc_greenlet_free(c[i]);
    }
    cr_assert_eq(conc_thread_join(th, CONC_FOREVER), 0);
    conc_thread_free(th);
    conc_queue_free(xqueue);
}

/* Two hub threads and two plain threads pass items through one queue
 * while the consumers time out and get killed: nothing is lost or
 * duplicated. */
#define STRESS_ITEMS 4000
static conc_queue *squeue;
static intptr_t stress_got[2];

static void *stress_consumer(void *arg)
{
    intptr_t *got = arg;
    for (;;) {
        void *item;
        int r = conc_queue_get(squeue, &item, 0.002);
        if (r == -ETIMEDOUT)
            continue;
        if (r != 0) {
            return (void *)(intptr_t)r;       /* killed */
        }
        if ((intptr_t)item < 0)
            return NULL;                     /* the end */
        __atomic_add_fetch(got, (intptr_t)item, __ATOMIC_RELAXED);
    }
}

static void *stress_hub_thread(void *arg)
{
    intptr_t *got = arg;
    conc_greenlet *g[8];
    for (int i = 0; i < 8; i++)
        if (conc_greenlet_spawn(&g[i], stress_consumer, got, NULL) != 0)
            return (void *)1;
    conc_sleep(0.02);
    conc_greenlet_kill(g[0]);                        /* one leaves early */
    for (int i = 0; i < 8; i++) {
        if (conc_greenlet_join(g[i], 20.0) != 0) {
            conc_hub_dump(STDERR_FILENO);
            return (void *)2;
        }
        conc_greenlet_free(g[i]);
    }
    return (void *)(intptr_t)conc_hub_free();
}

static void *stress_producer(void *arg)
{
    intptr_t base = (intptr_t)arg;
    for (intptr_t i = 1; i <= STRESS_ITEMS; i++) {
        conc_queue_put(squeue, (void *)(base + i), CONC_FOREVER);
        if (i % 500 == 0)
            conc_sleep(0.001);
    }
    return NULL;
}

Test(hub, cross_thread_stress, .timeout = 30)
{
    cr_assert_eq(conc_queue_new(&squeue, NULL), 0);
    conc_thread *hubs[2], *prods[2];
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(conc_thread_new(&hubs[i], stress_hub_thread, &stress_got[i], NULL), 0);
        cr_assert_eq(conc_thread_start(hubs[i]), 0);
    }
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(conc_thread_new(&prods[i], stress_producer, (void *)(intptr_t)(i * 100000), NULL), 0);
        cr_assert_eq(conc_thread_start(prods[i]), 0);
    }
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(conc_thread_join(prods[i], CONC_FOREVER), 0);
        conc_thread_free(prods[i]);
    }
    /* One end marker per consumer: the killed ones may or may not have
     * left before (a kill reaches a woken greenlet at its next wait). */
    for (int i = 0; i < 16; i++)
        cr_assert_eq(conc_queue_put(squeue, (void *)(intptr_t)-1, CONC_FOREVER), 0);
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(conc_thread_join(hubs[i], CONC_FOREVER), 0);
        void *r;
        cr_assert_eq(conc_thread_result(hubs[i], &r), 0);
        cr_assert_null(r, "hub thread %d: %ld", i, (long)(intptr_t)r);
        conc_thread_free(hubs[i]);
    }
    intptr_t want = 2 * (STRESS_ITEMS * (STRESS_ITEMS + 1) / 2) + (intptr_t)STRESS_ITEMS * 100000;
    cr_assert_eq(stress_got[0] + stress_got[1], want);
    conc_queue_free(squeue);
}

/* A plain thread joins a greenlet: it blocks the thread, the hub's
 * finishing greenlet wakes it. */
static void *thread_joiner(void *arg)
{
    return (void *)(intptr_t)conc_greenlet_join(arg, 10.0);
}

Test(hub, join_from_other_thread, .timeout = 30)
{
    conc_greenlet *g;
    cr_assert_eq(conc_greenlet_spawn(&g, long_sleeper, NULL, NULL), 0);
    conc_thread *th;
    cr_assert_eq(conc_thread_new(&th, thread_joiner, g, NULL), 0);
    cr_assert_eq(conc_thread_start(th), 0);
    cr_assert_eq(conc_hub_run(), 0);
    cr_assert_eq(conc_thread_join(th, CONC_FOREVER), 0);
    void *r = (void *)1;
    cr_assert_eq(conc_thread_result(th, &r), 0);
    cr_assert_eq((intptr_t)r, 0);
    conc_thread_free(th);
    conc_greenlet_free(g);
}

/* A process-shared event set by another process: the parked coroutine
 * notices it by re-checking the word (the other process cannot see the
 * hub's table). */
static void *shared_waiter(void *arg)
{
    return (void *)(intptr_t)conc_event_wait(arg, 10.0);
}

Test(hub, shared_event_set_by_other_process, .timeout = 30)
{
    conc_event *ev = mmap(NULL, sizeof *ev, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                          -1, 0);
    cr_assert_neq(ev, MAP_FAILED);
    cr_assert_eq(conc_event_init(ev, CONC_SYNC_SHARED), 0);
    conc_greenlet *g;
    cr_assert_eq(conc_greenlet_spawn(&g, shared_waiter, ev, NULL), 0);
    cr_assert_eq(conc_sleep(0.01), 0);          /* it parks */
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        /* The child has no hub: this sleep blocks the thread. */
        conc_sleep(0.05);
        conc_event_set(ev);
        _exit(0);
    }
    cr_assert_eq(conc_greenlet_join(g, 10.0), 0);
    void *r;
    cr_assert_eq(conc_greenlet_result(g, &r), 0);
    cr_assert_eq((intptr_t)r, 0);
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    conc_greenlet_free(g);
    munmap(ev, sizeof *ev);
}

/* ------------------------------------------------------------ deadlock */

static conc_greenlet *cycle[2];

static void *join_partner(void *arg)
{
    intptr_t i = (intptr_t)arg;
    return (void *)(intptr_t)conc_greenlet_join(cycle[1 - i], CONC_FOREVER);
}

/* Greenlets joining each other can never finish: the main coroutine's join
 * and conc_hub_run say -EDEADLK (the diagnosis is certain: only this hub
 * finishes its greenlets), the dump names every wait, a timeout is not a
 * deadlock, and killing one ends it.  (A wait that something outside the
 * hub could end is no deadlock: tests/test_hub_wakers.c.) */
Test(hub, deadlock_diagnosis, .timeout = 30)
{
    cr_assert_eq(conc_greenlet_spawn(&cycle[0], join_partner, (void *)0, NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&cycle[1], join_partner, (void *)1, NULL), 0);
    cr_assert_eq(conc_greenlet_join(cycle[0], CONC_FOREVER), -EDEADLK);
    cr_assert_eq(conc_hub_run(), -EDEADLK);
    cr_assert_eq(conc_greenlet_joinall(cycle, 2, CONC_FOREVER), -EDEADLK);
    /* The dump names the three waits. */
    int lines;
    char *text = hub_dump_text(&lines);
    cr_assert_not_null(text);
    cr_assert_eq(lines, 3);
    int words = 0;
    for (const char *p = text; (p = strstr(p, "word 0x")); p++)
        words++;
    cr_assert_eq(words, 2, "dump: %s", text);
    cr_assert(strstr(text, "main"), "dump: %s", text);
    free(text);
    cr_assert_eq(conc_hub_free(), -EBUSY);
    /* A timeout is not a deadlock. */
    cr_assert_eq(conc_greenlet_join(cycle[0], 0.01), -ETIMEDOUT);
    cr_assert_eq(conc_greenlet_kill(cycle[0]), 0);
    cr_assert_eq(conc_hub_run(), 0);
    void *r;
    cr_assert_eq(conc_greenlet_result(cycle[0], &r), 0);
    cr_assert_eq((intptr_t)r, -ECANCELED);
    cr_assert_eq(conc_greenlet_result(cycle[1], &r), 0);
    cr_assert_eq((intptr_t)r, 0);
    conc_greenlet_free(cycle[0]);
    conc_greenlet_free(cycle[1]);
    cr_assert_eq(conc_hub_free(), 0);
    cr_assert_eq(conc_hub_dump(STDERR_FILENO), 0);
    cr_assert_eq(conc_hub_dump(-1), -EBADF);
}

/* -------------------------------------------------------------- errors */

Test(hub, errors, .timeout = 30)
{
    conc_greenlet *g;
    cr_assert_eq(conc_greenlet_spawn(NULL, logger, NULL, NULL), -EINVAL);
    cr_assert_eq(conc_greenlet_spawn(&g, NULL, NULL, NULL), -EINVAL);
    conc_coro_opts co = { .stack_size = 1 };
    conc_spawn_opts o = { .coro = &co };
    cr_assert_eq(conc_greenlet_spawn(&g, logger, NULL, &o), -EINVAL);
    /* A size that does not cover a field leaves it at its default. */
    o.size = offsetof(conc_spawn_opts, coro);
    cr_assert_eq(conc_greenlet_spawn(&g, logger, (void *)'d', &o), 0);
    conc_greenlet_free(g);
    o = (conc_spawn_opts)CONC_SPAWN_OPTS_INIT;
    o.coro = &co;
    co = (conc_coro_opts)CONC_CORO_OPTS_INIT;
    co.stack_size = 1;
    cr_assert_eq(conc_greenlet_spawn(&g, logger, NULL, &o), -EINVAL);
    co.size = offsetof(conc_coro_opts, stack_size);
    cr_assert_eq(conc_greenlet_spawn(&g, logger, (void *)'e', &o), 0);
    conc_greenlet_free(g);
    cr_assert_eq(conc_greenlet_kill(NULL), -EINVAL);
    cr_assert_eq(conc_greenlet_result(NULL, NULL), -EINVAL);
    cr_assert_not(conc_greenlet_dead(NULL));
    cr_assert_str_eq(conc_greenlet_name(NULL), "");
    cr_assert_null(conc_greenlet_current());
    cr_assert_eq(conc_hub_timeout_pop(), -EINVAL);
    o = (conc_spawn_opts){ .coro = &(conc_coro_opts){ .name = "worker" } };
    cr_assert_eq(conc_greenlet_spawn(&g, logger, (void *)'w', &o), 0);
    cr_assert_str_eq(conc_greenlet_name(g), "worker");
    void *r;
    cr_assert_eq(conc_greenlet_result(g, &r), -EBUSY);
    cr_assert_eq(conc_hub_free(), -EBUSY);
    cr_assert_eq(conc_hub_run(), 0);
    conc_greenlet_free(g);
    cr_assert_eq(conc_hub_free(), 0);
}

/* ----------------------------------------------------------- at scale */

static void *brief(void *arg)
{
    int *count = arg;
    conc_sleep(0.01);
    (*count)++;
    return NULL;
}

Test(hub, many_sleepers, .timeout = 30)
{
    conc_greenlet **g = calloc(MANY, sizeof *g);
    cr_assert_not_null(g);
    int count = 0;
    for (int i = 0; i < MANY; i++)
        cr_assert_eq(conc_greenlet_spawn(&g[i], brief, &count, NULL), 0);
    cr_assert_eq(conc_greenlet_joinall(g, MANY, CONC_FOREVER), 0);
    cr_assert_eq(count, MANY);
    for (int i = 0; i < MANY; i++)
        conc_greenlet_free(g[i]);
    free(g);
    cr_assert_eq(conc_hub_free(), 0);
}

/* ------------------------------------------------------------- example */

Test(hub, example_coro_sleepers, .timeout = 30)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "%s/coro-sleepers --count 1000 --sleep 0.05", CONC_EXAMPLES_DIR);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    char out[256] = "";
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = '\0';
    int st = pclose(p);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %d: %s", st, out);
    cr_assert(strncmp(out, "joined 1000 ", 12) == 0, "output: %s", out);

    snprintf(cmd, sizeof cmd, "%s/coro-sleepers --count 1000 --sleep 0.05 --own-stacks",
             CONC_EXAMPLES_DIR);
    p = popen(cmd, "r");
    cr_assert_not_null(p);
    n = fread(out, 1, sizeof out - 1, p);
    out[n] = '\0';
    st = pclose(p);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %d: %s", st, out);
    cr_assert(strncmp(out, "joined 1000 ", 12) == 0, "output: %s", out);

    snprintf(cmd, sizeof cmd, "%s/coro-sleepers --count nope 2>&1", CONC_EXAMPLES_DIR);
    p = popen(cmd, "r");
    cr_assert_not_null(p);
    n = fread(out, 1, sizeof out - 1, p);
    out[n] = '\0';
    st = pclose(p);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2, "status %d", st);
    cr_assert_eq(strchr(out, '\n'), out + strlen(out) - 1, "one line: %s", out);
}

/* ------------------------------------- joins, hand-off, memory per greenlet */

struct joiner {
    conc_greenlet *target;
    double timeout;
    char name;
    int rc;
};

static void *join_and_log(void *arg)
{
    struct joiner *j = arg;
    j->rc = conc_greenlet_join(j->target, j->timeout);
    logc(j->name);
    return NULL;
}

static void *wait_then_7(void *arg)
{
    conc_event_wait(arg, CONC_FOREVER);
    return (void *)7;
}

/* Coroutines joining a greenlet of their hub wake in the order they came,
 * one whose timeout passes first leaves alone, a killed one sees
 * -ECANCELED, and the greenlet's end wakes the rest.  Each step waits for
 * the one before (b's log, then the kill, then t's release), so the order
 * does not hang on how long b's timeout takes to pass. */
Test(hub, joiners_of_one_greenlet, .timeout = 30)
{
    loglen = 0;
    conc_event t_go = CONC_EVENT_INIT;
    conc_greenlet *t, *j[4];
    cr_assert_eq(conc_greenlet_spawn(&t, wait_then_7, &t_go, NULL), 0);
    struct joiner js[4] = {
        { t, CONC_FOREVER, 'a', 1 }, { t, 0.01, 'b', 1 },
        { t, CONC_FOREVER, 'c', 1 }, { t, CONC_FOREVER, 'd', 1 },
    };
    for (int i = 0; i < 4; i++)
        cr_assert_eq(conc_greenlet_spawn(&j[i], join_and_log, &js[i], NULL), 0);
    cr_assert_eq(conc_greenlet_join(j[1], CONC_FOREVER), 0);     /* b timed out */
    cr_assert_str_eq(logbuf, "b");
    cr_assert_eq(conc_greenlet_kill(j[2]), 0);
    cr_assert_eq(conc_event_set(&t_go), 0);
    cr_assert_eq(conc_greenlet_join(t, CONC_FOREVER), 0);
    cr_assert_eq(conc_greenlet_joinall(j, 4, CONC_FOREVER), 0);
    cr_assert_str_eq(logbuf, "bcad");
    cr_assert_eq(js[0].rc, 0);
    cr_assert_eq(js[1].rc, -ETIMEDOUT);
    cr_assert_eq(js[2].rc, -ECANCELED);
    cr_assert_eq(js[3].rc, 0);
    void *v = NULL;
    cr_assert_eq(conc_greenlet_result(t, &v), 0);
    cr_assert_eq((uintptr_t)v, 7);
    conc_greenlet_free(t);
    for (int i = 0; i < 4; i++)
        conc_greenlet_free(j[i]);
    cr_assert_eq(conc_hub_free(), 0);
}

struct spinner {
    long rounds;
    volatile int *stop;
};

static void *yield_until_stopped(void *arg)
{
    struct spinner *s = arg;
    while (!*s->stop) {
        conc_sleep(0);
        s->rounds++;
    }
    return NULL;
}

static void *wait_readable(void *arg)
{
    int *fd = arg;
    return (void *)(intptr_t)conc_fd_wait(*fd, POLLIN, 10.0);
}

static void *write_later(void *arg)
{
    int *fd = arg;
    usleep(20000);
    ssize_t w = write(*fd, "x", 1);
    (void)w;
    return NULL;
}

/* Greenlets that only yield to each other hand the thread over directly;
 * a descriptor waiter is still served (the loop polls while one waits). */
Test(hub, yielders_do_not_starve_fd_waiter, .timeout = 30)
{
    int p[2];
    cr_assert_eq(pipe(p), 0);
    volatile int stop = 0;
    struct spinner s[2] = { { 0, &stop }, { 0, &stop } };
    conc_greenlet *y[2], *w;
    cr_assert_eq(conc_greenlet_spawn(&y[0], yield_until_stopped, &s[0], NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&y[1], yield_until_stopped, &s[1], NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&w, wait_readable, &p[0], NULL), 0);
    conc_thread *th;
    cr_assert_eq(conc_thread_new(&th, write_later, &p[1], NULL), 0);
    cr_assert_eq(conc_thread_start(th), 0);
    cr_assert_eq(conc_greenlet_join(w, 10.0), 0);
    void *v = (void *)1;
    cr_assert_eq(conc_greenlet_result(w, &v), 0);
    cr_assert_eq((intptr_t)v, 0, "the descriptor wait returned %d", (int)(intptr_t)v);
    stop = 1;
    cr_assert_eq(conc_greenlet_joinall(y, 2, CONC_FOREVER), 0);
    cr_assert_gt(s[0].rounds + s[1].rounds, 0);
    cr_assert_eq(conc_thread_join(th, CONC_FOREVER), 0);
    conc_thread_free(th);
    conc_greenlet_free(w);
    conc_greenlet_free(y[0]);
    conc_greenlet_free(y[1]);
    close(p[0]);
    close(p[1]);
    cr_assert_eq(conc_hub_free(), 0);
}

static void *return_arg(void *arg)
{
    return arg;
}

/* A finished greenlet's record lives on its stack: the stack is given back
 * when the handle is freed, not before. */
Test(hub, finished_greenlet_keeps_stack_until_freed, .timeout = 30)
{
    conc_greenlet *g[8];
    for (int i = 0; i < 8; i++)
        cr_assert_eq(conc_greenlet_spawn(&g[i], return_arg, (void *)(uintptr_t)i, NULL), 0);
    cr_assert_eq(conc_greenlet_joinall(g, 8, CONC_FOREVER), 0);
    conc_coro_stats a, b;
    cr_assert_eq(conc_coro_get_stats(&a), 0);
    for (int i = 0; i < 8; i++) {
        void *v = NULL;
        cr_assert_eq(conc_greenlet_result(g[i], &v), 0);
        cr_assert_eq((uintptr_t)v, (uintptr_t)i);
        cr_assert_str_neq(conc_greenlet_name(g[i]), "");
        conc_greenlet_free(g[i]);
    }
    cr_assert_eq(conc_coro_get_stats(&b), 0);
    cr_assert_geq(a.stacks_used, 8 + 1, "the 8 finished ones and the hub's");
    cr_assert_eq(b.stacks_used, a.stacks_used - 8);
    cr_assert_eq(b.coros, a.coros - 8);
    cr_assert_eq(conc_hub_free(), 0);
}

static long started_sleepers;

static void *sleep_long(void *arg)
{
    (void)arg;
    started_sleepers++;
    conc_sleep(3600.0);
    return NULL;
}

static long rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, resident = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &size, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    return resident * sysconf(_SC_PAGESIZE);
}

/* A sleeping greenlet costs the page of its stack it touched and nothing
 * else: its objects live on that page, its timer is in a list. */
Test(hub, sleeping_greenlet_costs_one_page, .timeout = 30)
{
    long n = MANY / 5;
    conc_greenlet **g = calloc((size_t)n, sizeof *g);
    cr_assert_not_null(g);
    memset(g, 0, (size_t)n * sizeof *g);   /* resident before measuring */
    started_sleepers = 0;
    long before = rss_bytes();
    for (long i = 0; i < n; i++)
        cr_assert_eq(conc_greenlet_spawn(&g[i], sleep_long, NULL, NULL), 0);
    while (started_sleepers < n)
        conc_sleep(0);
    long per = (rss_bytes() - before) / n;
    cr_log_info("%ld sleeping greenlets: %ld bytes resident each\n", n, per);
    long page = sysconf(_SC_PAGESIZE);
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
    cr_assert_leq(per, page + 64, "%ld bytes per sleeping greenlet", per);
#else
    (void)page;
#endif
    for (long i = 0; i < n; i++)
        conc_greenlet_kill(g[i]);
    cr_assert_eq(conc_greenlet_joinall(g, (size_t)n, CONC_FOREVER), 0);
    for (long i = 0; i < n; i++)
        conc_greenlet_free(g[i]);
    free(g);
    cr_assert_eq(conc_hub_free(), 0);
}

/* ----------------------------------------------------- descriptor reuse */

/* A socket pair whose first end takes number want (the lowest free one
 * after a close; moved there otherwise). */
static void pair_at(int want, int sv[2])
{
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    if (sv[1] == want) {
        int t = sv[0];
        sv[0] = sv[1];
        sv[1] = t;
    }
    if (sv[0] != want) {
        cr_assert_eq(dup3(sv[0], want, O_CLOEXEC), want);
        close(sv[0]);
        sv[0] = want;
    }
}

/* The hub keeps a descriptor in its epoll set between waits; a closed
 * number taken by a new socket must be waited on as that socket, and the
 * old file, kept open by a copy, must not wake its waiter. */
static void *reuse_body(void *arg)
{
    (void)arg;
    int a[2], b[2], c[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, a), 0);
    int n = a[0];
    /* Registered, then left armed by a timeout. */
    cr_assert_eq(conc_fd_wait(n, POLLIN, 0.02), -ETIMEDOUT);
    int copy = fcntl(n, F_DUPFD_CLOEXEC, 0);
    cr_assert_geq(copy, 0);
    close(n);                           /* the old file lives on in copy */
    pair_at(n, b);
    /* The old file becomes readable: its registration may report, but
     * for a number that now names another socket. */
    cr_assert_eq(write(a[1], "o", 1), 1);
    cr_assert_eq(conc_fd_wait(n, POLLIN, 0.1), -ETIMEDOUT);
    cr_assert_eq(write(b[1], "n", 1), 1);
    cr_assert_eq(conc_fd_wait(n, POLLIN, 5.0), 0);
    char ch = 0;
    cr_assert_eq(read(n, &ch, 1), 1);
    cr_assert_eq(ch, 'n');
    cr_assert_eq(read(copy, &ch, 1), 1);
    cr_assert_eq(ch, 'o');
    /* Again without a copy: the close takes the old registration away. */
    cr_assert_eq(conc_fd_wait(n, POLLIN, 0.02), -ETIMEDOUT);
    close(n);
    pair_at(n, c);
    cr_assert_eq(write(c[1], "m", 1), 1);
    cr_assert_eq(conc_fd_wait(n, POLLIN, 5.0), 0);
    cr_assert_eq(read(n, &ch, 1), 1);
    cr_assert_eq(ch, 'm');
    cr_assert_eq(conc_fd_wait(n, POLLIN, 0.02), -ETIMEDOUT);
    /* Writable at once, readable never. */
    cr_assert_eq(conc_fd_wait(n, POLLOUT, 5.0), 0);
    close(copy);
    close(a[1]);
    close(b[1]);
    close(c[0]);
    close(c[1]);
    return NULL;
}

Test(hub, fd_number_reused, .timeout = 30)
{
    conc_greenlet *g;
    cr_assert_eq(conc_greenlet_spawn(&g, reuse_body, NULL, NULL), 0);
    cr_assert_eq(conc_greenlet_join(g, 20.0), 0);
    void *v = (void *)1;
    cr_assert_eq(conc_greenlet_result(g, &v), 0);
    conc_greenlet_free(g);
    cr_assert_eq(conc_hub_free(), 0);
}

struct dir_waiter {
    int fd;
    short events;
    char name;
};

static void *dir_wait(void *arg)
{
    struct dir_waiter *w = arg;
    int r = conc_fd_wait(w->fd, w->events, 10.0);
    if (r == 0)
        logc(w->name);
    return (void *)(intptr_t)r;
}

/* Fills fd's way out until a write would block. */
static size_t fill(int fd)
{
    static char junk[4096];
    size_t total = 0;
    for (;;) {
        ssize_t k = send(fd, junk, sizeof junk, MSG_DONTWAIT);
        if (k < 0) {
            cr_assert_eq(errno, EAGAIN);
            return total;
        }
        total += (size_t)k;
    }
}

static void drain(int fd, size_t total)
{
    static char junk[4096];
    while (total > 0) {
        ssize_t k = recv(fd, junk, total < sizeof junk ? total : sizeof junk, 0);
        cr_assert_gt(k, 0);
        total -= (size_t)k;
    }
}

/* One greenlet reads and one writes the same socket: each is woken by its
 * own direction only, in either order. */
Test(hub, reader_and_writer_of_one_socket, .timeout = 30)
{
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    for (int round = 0; round < 2; round++) {
        loglen = 0;
        logbuf[0] = '\0';
        size_t full = fill(sv[0]);
        cr_assert_gt(full, 0);
        struct dir_waiter rd = { sv[0], POLLIN, 'r' }, wr = { sv[0], POLLOUT, 'w' };
        conc_greenlet *r, *w;
        cr_assert_eq(conc_greenlet_spawn(&r, dir_wait, &rd, NULL), 0);
        cr_assert_eq(conc_greenlet_spawn(&w, dir_wait, &wr, NULL), 0);
        conc_greenlet *first = round == 0 ? r : w, *second = round == 0 ? w : r;
        /* Both run until they park. */
        cr_assert_eq(conc_greenlet_join(first, 0.05), -ETIMEDOUT);
        cr_assert_eq(conc_greenlet_join(second, 0.0), -EAGAIN);
        cr_assert_str_eq(logbuf, "");
        if (round == 0)
            cr_assert_eq(write(sv[1], "x", 1), 1);
        else
            drain(sv[1], full);
        cr_assert_eq(conc_greenlet_join(first, 5.0), 0);
        cr_assert_eq(conc_greenlet_join(second, 0.05), -ETIMEDOUT);
        cr_assert_str_eq(logbuf, round == 0 ? "r" : "w");
        if (round == 0)
            drain(sv[1], full);
        else
            cr_assert_eq(write(sv[1], "x", 1), 1);
        cr_assert_eq(conc_greenlet_join(second, 5.0), 0);
        cr_assert_str_eq(logbuf, round == 0 ? "rw" : "wr");
        void *v = (void *)1;
        cr_assert_eq(conc_greenlet_result(r, &v), 0);
        cr_assert_eq((intptr_t)v, 0);
        cr_assert_eq(conc_greenlet_result(w, &v), 0);
        cr_assert_eq((intptr_t)v, 0);
        char ch;
        cr_assert_eq(read(sv[0], &ch, 1), 1);
        conc_greenlet_free(r);
        conc_greenlet_free(w);
    }
    close(sv[0]);
    close(sv[1]);
    cr_assert_eq(conc_hub_free(), 0);
}
