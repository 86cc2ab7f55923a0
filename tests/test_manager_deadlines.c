/*
 * test_manager_deadlines.c - the _until forms of conc/manager.h's waiting
 * proxy calls (queue put, get and join, acquire, Event.wait,
 * Condition.wait, Barrier.wait): an absolute CLOCK_MONOTONIC deadline.
 * A call that can succeed at once does so whatever the deadline; one that
 * must wait gives -ETIMEDOUT, for a deadline that passed already (never
 * -EAGAIN: that is the timeout-0 form's code) and for one ahead, and then
 * not before the deadline; CONC_NO_DEADLINE waits until the call can
 * succeed.
 *
 * Criterion runs every test in its own process.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conc.h"
#include "support/task_state.h"

/* Children of this test never report leaks (a started manager's server is
 * a fork of it that exits without freeing what the test made). */
#define CONC_TEST_TSAN_OPTIONS "atexit_sleep_ms=0:die_after_fork=0"
#include "support/fork_sanitizers.h"

#define GUARD 30.0                      /* a hang guard, never reached when correct */
#define AHEAD_NS 20000000LL             /* a deadline 20 ms ahead */

static conc_manager *m;

static void start(void)
{
    cr_assert_eq(conc_manager_new(&m, NULL), 0);
    cr_assert_eq(conc_manager_start(m), 0);
}

static void stop(void)
{
    conc_manager_free(m);
}

static conc_proxy *make(conc_proxy_type t, uint64_t n)
{
    conc_proxy *p;
    cr_assert_eq(conc_manager_create(m, &p, t, NULL, n, 0), 0);
    return p;
}

/* A deadline that passed, and one ahead. */
static int64_t passed(void)
{
    return conc_now() - 1;
}

static int64_t ahead(void)
{
    return conc_now() + AHEAD_NS;
}

/* f(deadline) must time out: at once for a passed deadline, and not
 * before a deadline ahead. */
#define EXPECT_TIMES_OUT(call_with_deadline)                                                   \
    do {                                                                                       \
        int64_t d_ = passed();                                                                 \
        cr_expect_eq(({ int64_t deadline = d_; call_with_deadline; }), -ETIMEDOUT,             \
                     "passed deadline: %s", #call_with_deadline);                              \
        d_ = ahead();                                                                          \
        cr_expect_eq(({ int64_t deadline = d_; call_with_deadline; }), -ETIMEDOUT,             \
                     "deadline ahead: %s", #call_with_deadline);                               \
        cr_expect_geq(conc_now(), d_, "returned before its deadline: %s",                      \
                      #call_with_deadline);                                                    \
    } while (0)

Test(manager_deadlines, queue_put_get_join_until, .timeout = 60, .init = start, .fini = stop)
{
    conc_proxy *q = make(CONC_PROXY_QUEUE, 1);
    void *v = NULL;
    size_t n;
    EXPECT_TIMES_OUT(conc_proxy_queue_get_until(q, &v, &n, deadline));
    cr_expect_eq(conc_proxy_queue_put_until(q, "a", 1, passed()), 0);   /* room: at once */
    EXPECT_TIMES_OUT(conc_proxy_queue_put_until(q, "b", 1, deadline));  /* full */
    EXPECT_TIMES_OUT(conc_proxy_queue_join_until(q, deadline));          /* one unfinished */
    cr_assert_eq(conc_proxy_queue_get_until(q, &v, &n, passed()), 0);   /* there: at once */
    cr_expect(n == 1 && memcmp(v, "a", 1) == 0);
    free(v);
    cr_expect_eq(conc_proxy_queue_task_done(q), 0);
    cr_expect_eq(conc_proxy_queue_join_until(q, passed()), 0);
    cr_expect_eq(conc_proxy_queue_put_until(q, "c", 1, CONC_NO_DEADLINE), 0);
    cr_assert_eq(conc_proxy_queue_get_until(q, &v, &n, CONC_NO_DEADLINE), 0);
    free(v);
    conc_proxy_free(q);
}

Test(manager_deadlines, acquire_until, .timeout = 60, .init = start, .fini = stop)
{
    static const conc_proxy_type kinds[] = { CONC_PROXY_LOCK, CONC_PROXY_RLOCK,
                                             CONC_PROXY_SEMAPHORE, CONC_PROXY_BOUNDED_SEMAPHORE,
                                             CONC_PROXY_CONDITION };
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        conc_proxy *a = make(kinds[i], kinds[i] == CONC_PROXY_SEMAPHORE ||
                                               kinds[i] == CONC_PROXY_BOUNDED_SEMAPHORE
                                           ? 1
                                           : 0);
        conc_proxy *b;
        cr_assert_eq(conc_proxy_dup(&b, a), 0);
        cr_expect_eq(conc_proxy_acquire_until(a, passed()), 0, "kind %d: free, at once",
                     kinds[i]);
        EXPECT_TIMES_OUT(conc_proxy_acquire_until(b, deadline));   /* another holds it */
        cr_expect_eq(conc_proxy_release(a), 0);
        cr_expect_eq(conc_proxy_acquire_until(b, CONC_NO_DEADLINE), 0);
        cr_expect_eq(conc_proxy_release(b), 0);
        conc_proxy_free(a);
        conc_proxy_free(b);
    }
}

Test(manager_deadlines, event_and_condition_wait_until, .timeout = 60, .init = start,
     .fini = stop)
{
    conc_proxy *e = make(CONC_PROXY_EVENT, 0);
    EXPECT_TIMES_OUT(conc_proxy_event_wait_until(e, deadline));
    cr_expect_eq(conc_proxy_event_set(e), 0);
    cr_expect_eq(conc_proxy_event_wait_until(e, passed()), 0);
    cr_expect_eq(conc_proxy_event_wait_until(e, CONC_NO_DEADLINE), 0);
    conc_proxy_free(e);

    conc_proxy *c = make(CONC_PROXY_CONDITION, 0);
    cr_expect_eq(conc_proxy_cond_wait_until(c, ahead()), -EPERM);   /* not held */
    cr_assert_eq(conc_proxy_acquire(c, GUARD), 0);
    cr_assert_eq(conc_proxy_acquire(c, GUARD), 0);                  /* depth 2 */
    EXPECT_TIMES_OUT(conc_proxy_cond_wait_until(c, deadline));
    /* It holds the lock again, at the same depth. */
    cr_expect_eq(conc_proxy_release(c), 0);
    cr_expect_eq(conc_proxy_release(c), 0);
    cr_expect_eq(conc_proxy_release(c), -EPERM);
    conc_proxy_free(c);
}

struct waiter {
    conc_proxy *p;
    int r;
};

static void *barrier_party(void *arg)
{
    struct waiter *w = arg;
    w->r = conc_proxy_barrier_wait_until(w->p, CONC_NO_DEADLINE);
    return NULL;
}

Test(manager_deadlines, barrier_wait_until, .timeout = 60, .init = start, .fini = stop)
{
    conc_proxy *b = make(CONC_PROXY_BARRIER, 2);
    cr_expect_eq(conc_proxy_barrier_wait_until(b, passed()), -ETIMEDOUT);
    cr_expect_eq(conc_proxy_barrier_broken(b), 1);       /* as Python's: broken */
    cr_expect_eq(conc_proxy_barrier_wait_until(b, ahead()), -EPIPE);
    cr_expect_eq(conc_proxy_barrier_reset(b), 0);
    int64_t d = ahead();
    cr_expect_eq(conc_proxy_barrier_wait_until(b, d), -ETIMEDOUT);
    cr_expect_geq(conc_now(), d);
    cr_expect_eq(conc_proxy_barrier_reset(b), 0);

    struct waiter w = { .r = -1 };
    cr_assert_eq(conc_proxy_dup(&w.p, b), 0);
    pid_t tid;
    pthread_t t = spawn_tid(barrier_party, &w, &tid);
    wait_thread_blocked(tid, GUARD);
    int mine = conc_proxy_barrier_wait_until(b, CONC_NO_DEADLINE);
    pthread_join(t, NULL);
    cr_expect((mine == 0 && w.r == 1) || (mine == 1 && w.r == 0), "indexes %d and %d", mine,
              w.r);
    conc_proxy_free(w.p);
    conc_proxy_free(b);
}
