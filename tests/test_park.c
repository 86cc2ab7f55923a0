/*
 * test_park.c - the parking layer (src/sys/park.h) on its own: many
 * waiters and wakers, threads and coroutines mixed, lose no wake-up and
 * take nothing twice; a timed wait ends with -ETIMEDOUT and leaves the
 * spot's count as it found it; a wake-up of all claims every sleeper; the
 * spin setting (conc_park_set_spin) checks its argument and every budget,
 * 0 included, keeps the waits correct; and a program that never uses
 * coroutines has no hub registered with the wait primitive.
 *
 * The layer is internal: this test links the static library and includes
 * the internal headers.  Criterion runs every test in its own process.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "conc.h"
#include "sys/park.h"
#include "sys/wait.h"
#include "support/task_state.h"

#define GUARD_NS (60 * 1000000000LL)

/* ------------------------------------------------- a token bucket */

/* Tokens guarded by a parking spot: the smallest user of the layer, with
 * the argument every user makes (count, then look; change, then wake). */
struct bucket {
    struct conc__park park;
    uint32_t tokens;
    uint32_t taken;             /* by all takers */
    uint32_t timeouts;          /* waits that hit the guard: must stay 0 */
};

static bool bucket_try(struct bucket *b)
{
    uint32_t v = __atomic_load_n(&b->tokens, __ATOMIC_SEQ_CST);
    while (v > 0)
        if (__atomic_compare_exchange_n(&b->tokens, &v, v - 1, false, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST))
            return true;
    return false;
}

static void bucket_put(struct bucket *b)
{
    __atomic_fetch_add(&b->tokens, 1, __ATOMIC_SEQ_CST);
    conc__park_wake(&b->park, 1, 0);
}

/* Takes one token; false when the guard passed first. */
static bool bucket_take(struct bucket *b, int64_t deadline)
{
    for (;;) {
        if (bucket_try(b))
            break;
        uint32_t key = conc__park_prepare(&b->park);
        if (bucket_try(b)) {
            conc__park_cancel(&b->park, key);
            break;
        }
        int r = conc__park_wait(&b->park, key, deadline, 0, 0);
        if (bucket_try(b))
            break;
        if (r < 0) {
            if (__atomic_load_n(&b->tokens, __ATOMIC_SEQ_CST) > 0)
                conc__park_wake(&b->park, 1, 0);
            __atomic_fetch_add(&b->timeouts, 1, __ATOMIC_RELAXED);
            return false;
        }
    }
    __atomic_fetch_add(&b->taken, 1, __ATOMIC_RELAXED);
    return true;
}

struct role {
    struct bucket *b;
    unsigned n;                 /* tokens to put or take */
    bool put;
};

static void *role_run(void *arg)
{
    struct role *r = arg;
    int64_t deadline = conc_now() + GUARD_NS;
    for (unsigned i = 0; i < r->n; i++) {
        if (r->put) {
            bucket_put(r->b);
            if ((i & 31) == 0)
                conc__yield();  /* let takers sleep now and then */
        } else if (!bucket_take(r->b, deadline)) {
            break;
        }
    }
    return NULL;
}

/* A thread whose hub runs `count` greenlets, each playing `r`. */
struct hub_role {
    struct role r;
    unsigned count;
};

static void *greenlet_role(void *arg)
{
    return role_run(arg);
}

static void *hub_thread(void *arg)
{
    struct hub_role *h = arg;
    conc_greenlet *g[16];
    cr_assert_leq(h->count, 16);
    for (unsigned i = 0; i < h->count; i++)
        cr_assert_eq(conc_greenlet_spawn(&g[i], greenlet_role, &h->r, NULL), 0);
    cr_assert_eq(conc_hub_run(), 0);
    for (unsigned i = 0; i < h->count; i++)
        conc_greenlet_free(g[i]);
    cr_assert_eq(conc_hub_free(), 0);
    return NULL;
}

/* Puts and takes `per` tokens in each of the roles: plain putters and
 * takers, and hubs of greenlet putters and takers.  Every token is taken
 * once, nothing is left, no wait hit the guard. */
static void run_mixed(unsigned thread_putters, unsigned thread_takers, unsigned hub_putters,
                      unsigned hub_takers, unsigned greenlets, unsigned per)
{
    struct bucket b = { 0 };
    pthread_t t[64];
    struct role roles[64];
    struct hub_role hubs[64];
    unsigned n = 0;
    for (unsigned i = 0; i < thread_takers; i++, n++) {
        roles[n] = (struct role){ &b, per, false };
        cr_assert_eq(pthread_create(&t[n], NULL, role_run, &roles[n]), 0);
    }
    for (unsigned i = 0; i < hub_takers; i++, n++) {
        hubs[n] = (struct hub_role){ { &b, per, false }, greenlets };
        cr_assert_eq(pthread_create(&t[n], NULL, hub_thread, &hubs[n]), 0);
    }
    for (unsigned i = 0; i < thread_putters; i++, n++) {
        roles[n] = (struct role){ &b, per, true };
        cr_assert_eq(pthread_create(&t[n], NULL, role_run, &roles[n]), 0);
    }
    for (unsigned i = 0; i < hub_putters; i++, n++) {
        hubs[n] = (struct hub_role){ { &b, per, true }, greenlets };
        cr_assert_eq(pthread_create(&t[n], NULL, hub_thread, &hubs[n]), 0);
    }
    for (unsigned i = 0; i < n; i++)
        pthread_join(t[i], NULL);
    unsigned takers = thread_takers + hub_takers * greenlets;
    unsigned putters = thread_putters + hub_putters * greenlets;
    cr_assert_eq(takers, putters, "the test puts as many as it takes");
    cr_expect_eq(b.timeouts, 0, "%u waits lost their wake-up", b.timeouts);
    cr_expect_eq(b.taken, takers * per);
    cr_expect_eq(b.tokens, 0);
}

Test(park, threads_lose_no_wakeup, .timeout = 120)
{
    run_mixed(4, 4, 0, 0, 0, 20000);
}

Test(park, threads_lose_no_wakeup_without_spinning, .timeout = 120)
{
    cr_assert_eq(conc_park_set_spin(0), 0);
    run_mixed(4, 4, 0, 0, 0, 20000);
}

Test(park, coroutines_lose_no_wakeup, .timeout = 120)
{
    run_mixed(0, 0, 2, 2, 8, 2000);
}

Test(park, threads_and_coroutines_mixed, .timeout = 120)
{
    /* 3 thread takers + 2 hubs of 4 greenlet takers, as many putters. */
    run_mixed(3, 3, 2, 2, 4, 4000);
}

Test(park, mixed_without_spinning, .timeout = 120)
{
    cr_assert_eq(conc_park_set_spin(0), 0);
    run_mixed(3, 3, 2, 2, 4, 4000);
}

/* ------------------------------------------------------- timeouts */

static uint32_t count_of(struct conc__park *p)
{
    return (uint32_t)__atomic_load_n(&p->word, __ATOMIC_SEQ_CST);
}

Test(park, timed_wait_ends_and_uncounts, .timeout = 60)
{
    struct conc__park p = { 0 };
    uint32_t key = conc__park_prepare(&p);
    cr_assert_eq(count_of(&p), 1);
    cr_expect_eq(conc__park_wait(&p, key, conc_now() + 20000000, 0, 0), -ETIMEDOUT);
    cr_expect_eq(count_of(&p), 0, "a waiter that timed out is off the count");
    cr_expect_eq(conc__park_seq(&p), key, "nobody was claimed");
    /* A deadline already passed: no spin, no sleep. */
    key = conc__park_prepare(&p);
    cr_expect_eq(conc__park_wait(&p, key, 0, 0, 0), -ETIMEDOUT);
    cr_expect_eq(conc__park_wait(&p, conc__park_prepare(&p), conc_now() - 1, 0, 0),
                 -ETIMEDOUT);
    cr_expect_eq(count_of(&p), 0);
    /* A waker that comes after a timeout claims nobody. */
    cr_expect_eq(conc__park_wake(&p, 1, 0), 0);
    cr_expect_eq(conc__park_seq(&p), key);
}

Test(park, cancel_after_prepare_uncounts, .timeout = 60)
{
    struct conc__park p = { 0 };
    uint32_t a = conc__park_prepare(&p), b = conc__park_prepare(&p);
    cr_assert_eq(a, b);
    cr_assert_eq(count_of(&p), 2);
    conc__park_cancel(&p, a);
    cr_expect_eq(count_of(&p), 1);
    /* A claim since: the leaver counts it as its own (never too low). */
    cr_expect_eq(conc__park_wake(&p, 1, 0), 1);
    cr_expect_eq(count_of(&p), 0);
    conc__park_cancel(&p, b);
    cr_expect_eq(count_of(&p), 0);
    cr_expect_neq(conc__park_seq(&p), a);
}

static void *greenlet_timed_wait(void *arg)
{
    struct conc__park *p = arg;
    uint32_t key = conc__park_prepare(p);
    return (void *)(intptr_t)conc__park_wait(p, key, conc_now() + 20000000, 0, 0);
}

Test(park, coroutine_timed_wait_ends, .timeout = 60)
{
    struct conc__park p = { 0 };
    conc_greenlet *g[4];
    for (int i = 0; i < 4; i++)
        cr_assert_eq(conc_greenlet_spawn(&g[i], greenlet_timed_wait, &p, NULL), 0);
    cr_assert_eq(conc_hub_run(), 0);
    for (int i = 0; i < 4; i++) {
        void *r;
        cr_assert_eq(conc_greenlet_result(g[i], &r), 0);
        cr_expect_eq((int)(intptr_t)r, -ETIMEDOUT);
        conc_greenlet_free(g[i]);
    }
    cr_expect_eq(count_of(&p), 0);
    cr_assert_eq(conc_hub_free(), 0);
}

/* ------------------------------------------------------ wake all */

struct sleeper {
    struct conc__park *p;
    int result;
    pid_t tid;
    atomic_int ready;
};

static void *sleeper_run(void *arg)
{
    struct sleeper *s = arg;
    s->tid = (pid_t)syscall(SYS_gettid);
    uint32_t key = conc__park_prepare(s->p);
    atomic_store(&s->ready, 1);
    s->result = conc__park_wait(s->p, key, conc_now() + GUARD_NS, 0, 0);
    return NULL;
}

Test(park, wake_all_claims_every_sleeper, .timeout = 120)
{
    struct conc__park p = { 0 };
    enum { N = 6 };
    struct sleeper s[N];
    pthread_t t[N];
    for (int i = 0; i < N; i++) {
        s[i] = (struct sleeper){ .p = &p };
        cr_assert_eq(pthread_create(&t[i], NULL, sleeper_run, &s[i]), 0);
    }
    for (int i = 0; i < N; i++) {
        while (!atomic_load(&s[i].ready))
            sched_yield();
        wait_thread_blocked(s[i].tid, BLOCKED_GUARD);
    }
    cr_assert_eq(count_of(&p), N);
    cr_expect_eq(conc__park_wake(&p, INT_MAX, 0), N);
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        cr_expect_eq(s[i].result, 1, "sleeper %d: %d", i, s[i].result);
    }
    cr_expect_eq(count_of(&p), 0);
}

Test(park, wake_one_claims_one, .timeout = 120)
{
    struct conc__park p = { 0 };
    enum { N = 3 };
    struct sleeper s[N];
    pthread_t t[N];
    for (int i = 0; i < N; i++) {
        s[i] = (struct sleeper){ .p = &p };
        cr_assert_eq(pthread_create(&t[i], NULL, sleeper_run, &s[i]), 0);
    }
    for (int i = 0; i < N; i++) {
        while (!atomic_load(&s[i].ready))
            sched_yield();
        wait_thread_blocked(s[i].tid, BLOCKED_GUARD);
    }
    for (int k = 1; k <= N; k++) {
        cr_expect_eq(conc__park_wake(&p, 1, 0), 1);
        cr_expect_eq(count_of(&p), (uint32_t)(N - k));
    }
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        cr_expect_eq(s[i].result, 1);
    }
}

/* --------------------------------------------------- spin setting */

Test(park, spin_setting_checks_its_argument)
{
    cr_expect_eq(conc_park_spin(), CONC_PARK_SPIN_DEFAULT);
    cr_expect_eq(conc_park_set_spin(-1), -EINVAL);
    cr_expect_eq(conc_park_set_spin(INT64_MIN), -EINVAL);
    cr_expect_eq(conc_park_set_spin(CONC_PARK_SPIN_MAX + 1), -EINVAL);
    cr_expect_eq(conc_park_set_spin(INT64_MAX), -EINVAL);
    cr_expect_eq(conc_park_spin(), CONC_PARK_SPIN_DEFAULT, "a refused value changes nothing");
    cr_expect_eq(conc_park_set_spin(0), 0);
    cr_expect_eq(conc_park_spin(), 0);
    cr_expect_eq(conc_park_set_spin(CONC_PARK_SPIN_MAX), 0);
    cr_expect_eq(conc_park_spin(), CONC_PARK_SPIN_MAX);
    cr_expect_eq(conc_park_set_spin(CONC_PARK_SPIN_DEFAULT), 0);
    cr_expect_eq(conc_park_spin(), CONC_PARK_SPIN_DEFAULT);
}

/* The budget is applied: with 0 nobody spins (conc__spin_begin refuses),
 * with a budget a plain thread of a process with several CPUs does. */
Test(park, spin_setting_is_applied)
{
    struct conc__spin s = { 0 };
    cr_assert_eq(conc_park_set_spin(0), 0);
    cr_expect(!conc__spin_begin(&s, CONC_NO_DEADLINE), "budget 0: no spin");
    cr_assert_eq(conc_park_set_spin(CONC_PARK_SPIN_MAX), 0);
    cpu_set_t set;
    cr_assert_eq(sched_getaffinity(getpid(), sizeof set, &set), 0);
    if (CPU_COUNT(&set) > 1) {
        cr_assert(conc__spin_begin(&s, CONC_NO_DEADLINE));
        cr_expect_leq(s.end - s.now, CONC_PARK_SPIN_MAX);
        cr_expect_gt(s.end - s.now, CONC_PARK_SPIN_MAX / 2);
        int64_t near = conc_now() + 1000;
        cr_expect(!conc__spin_begin(&s, near) || s.end <= near, "never past the deadline");
    }
    cr_expect(!conc__spin_begin(&s, 0), "a passed deadline: no spin");
}

/* Semaphores, conditions and queues under budget 0: every hand-off
 * sleeps, and the counts still come out right. */
struct pingpong {
    conc_sem a, b;
    conc_queue *q;
    unsigned n;
};

static void *pong(void *arg)
{
    struct pingpong *pp = arg;
    for (unsigned i = 0; i < pp->n; i++) {
        cr_assert_eq(conc_sem_acquire(&pp->a, 60), 0);
        void *item;
        cr_assert_eq(conc_queue_get(pp->q, &item, 60), 0);
        cr_assert_eq((uintptr_t)item, i + 1);
        cr_assert_eq(conc_sem_release(&pp->b, 1), 0);
    }
    return NULL;
}

static void pingpong_run(unsigned n)
{
    struct pingpong pp = { .n = n };
    conc_sem_init(&pp.a, 0, 0);
    conc_sem_init(&pp.b, 0, 0);
    cr_assert_eq(conc_queue_new(&pp.q, NULL), 0);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, pong, &pp), 0);
    for (unsigned i = 0; i < n; i++) {
        cr_assert_eq(conc_queue_put(pp.q, (void *)(uintptr_t)(i + 1), 60), 0);
        cr_assert_eq(conc_sem_release(&pp.a, 1), 0);
        cr_assert_eq(conc_sem_acquire(&pp.b, 60), 0);
    }
    pthread_join(t, NULL);
    cr_expect_eq(conc_sem_value(&pp.a), 0);
    cr_expect_eq(conc_sem_value(&pp.b), 0);
    cr_expect_eq(conc_queue_qsize(pp.q), 0);
    conc_queue_free(pp.q);
}

Test(park, primitives_correct_without_spinning, .timeout = 120)
{
    cr_assert_eq(conc_park_set_spin(0), 0);
    pingpong_run(5000);
}

Test(park, primitives_correct_with_the_longest_spin, .timeout = 120)
{
    cr_assert_eq(conc_park_set_spin(CONC_PARK_SPIN_MAX), 0);
    pingpong_run(5000);
}

/* ------------------------------------------------- the hub backend */

static void *noop(void *arg)
{
    return arg;
}

Test(park, no_hub_backend_without_coroutines, .timeout = 60)
{
    /* Every kind of wait and wake-up of threads, but no coroutine. */
    pingpong_run(200);
    conc_lock l = CONC_LOCK_INIT;
    cr_assert_eq(conc_lock_acquire(&l, 1), 0);
    cr_assert_eq(conc_lock_release(&l), 0);
    conc_event e;
    conc_event_init(&e, 0);
    cr_assert_eq(conc_event_set(&e), 0);
    cr_assert_eq(conc_event_wait(&e, 1), 0);
    cr_expect_null(conc__wake_backend(), "no hub: conc__wake knows no coroutines");
    /* The first hub registers its wake half before any coroutine parks. */
    conc_greenlet *g;
    cr_assert_eq(conc_greenlet_spawn(&g, noop, NULL, NULL), 0);
    cr_expect_not_null(conc__wake_backend());
    cr_assert_eq(conc_greenlet_join(g, 10), 0);
    conc_greenlet_free(g);
    cr_assert_eq(conc_hub_free(), 0);
    cr_expect_not_null(conc__wake_backend(), "never removed");
}
