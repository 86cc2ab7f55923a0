/*
 * test_sync.c - conc/sync.h: Lock, RLock, Semaphore, BoundedSemaphore,
 * Event, Condition, Barrier.
 *
 * Threads are plain pthreads; assertions run on the test's main thread only
 * (worker threads record what they saw and the main thread checks it).
 * Timeouts in here are hang guards or "at least this long" checks, never
 * speed budgets.
 *
 * Every test has the same .timeout: Criterion 2.4's BoxFort keeps its
 * timeout queue sorted but drops (and leaks) the queued requests when a
 * later test gets an earlier deadline, which LeakSanitizer reports and which
 * disarms the dropped tests' hang guards.  Equal timeouts keep the deadlines
 * in start order.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include "conc/hub.h"
#include "conc/sync.h"
#include "conc/thread.h"

#include "support/wait_helpers.h"

static intptr_t join(pthread_t t)
{
    void *res = NULL;
    cr_assert_eq(pthread_join(t, &res), 0);
    return (intptr_t)res;
}

#define RET(x) ((void *)(intptr_t)(x))

/* ================================================================ Lock */

Test(lock, acquire_release, .timeout = 30)
{
    conc_lock l;
    cr_assert_eq(conc_lock_init(&l, 0), 0);
    cr_assert(!conc_lock_locked(&l));
    cr_assert(!conc_lock_held(&l));

    cr_assert_eq(conc_lock_acquire(&l, CONC_FOREVER), 0);
    cr_assert(conc_lock_locked(&l));
    cr_assert(conc_lock_held(&l));
    cr_assert_eq(conc_lock_release(&l), 0);
    cr_assert(!conc_lock_locked(&l));
    cr_assert(!conc_lock_held(&l));

    /* a free lock is taken at once whatever the timeout */
    cr_assert_eq(conc_lock_acquire(&l, 0), 0);
    cr_assert(conc_lock_held(&l));
    cr_assert_eq(conc_lock_release(&l), 0);
    cr_assert_eq(conc_lock_acquire(&l, 1.0), 0);
    cr_assert_eq(conc_lock_release(&l), 0);
    cr_assert_eq(conc_lock_acquire(&l, INFINITY), 0);
    cr_assert_eq(conc_lock_release(&l), 0);
    cr_assert_eq(conc_lock_acquire_until(&l, CONC_NO_DEADLINE), 0);
    cr_assert_eq(conc_lock_release(&l), 0);
    /* a passed deadline still succeeds when the lock is free */
    cr_assert_eq(conc_lock_acquire_until(&l, conc_now() - NS), 0);
    cr_assert(conc_lock_held(&l));
    cr_assert_eq(conc_lock_release(&l), 0);
    cr_assert_eq(conc_lock_acquire_until(&l, 0), 0);
    cr_assert_eq(conc_lock_release(&l), 0);
    cr_assert(!conc_lock_locked(&l));
}

Test(lock, release_unlocked_is_eperm, .timeout = 30)
{
    conc_lock l = CONC_LOCK_INIT;
    cr_assert_eq(conc_lock_release(&l), -EPERM);
    cr_assert_eq(conc_lock_release(&l), -EPERM);
    cr_assert(!conc_lock_locked(&l));
    cr_assert_eq(conc_lock_acquire(&l, CONC_FOREVER), 0);
    cr_assert_eq(conc_lock_release(&l), 0);
    cr_assert_eq(conc_lock_release(&l), -EPERM);
    cr_assert(!conc_lock_locked(&l));
    /* still usable */
    cr_assert_eq(conc_lock_acquire(&l, 0), 0);
    cr_assert_eq(conc_lock_release(&l), 0);
}

Test(lock, held_lock_poll_and_timeouts, .timeout = 30)
{
    conc_lock l = CONC_LOCK_INIT;
    cr_assert_eq(conc_lock_acquire(&l, CONC_FOREVER), 0);

    /* non-recursive: the owner's own acquire fails like anybody else's */
    cr_assert_eq(conc_lock_acquire(&l, 0), -EAGAIN);
    cr_assert(conc_lock_locked(&l));
    cr_assert(conc_lock_held(&l));

    int64_t t0 = conc_now();
    cr_assert_eq(conc_lock_acquire(&l, 0.05), -ETIMEDOUT);
    cr_assert_geq(conc_now() - t0, 50000000LL);
    cr_assert(conc_lock_held(&l));

    cr_assert_eq(conc_lock_acquire_until(&l, conc_now() - 1), -ETIMEDOUT);
    cr_assert_eq(conc_lock_acquire_until(&l, 0), -ETIMEDOUT);
    int64_t d = conc_now() + 30000000LL;
    cr_assert_eq(conc_lock_acquire_until(&l, d), -ETIMEDOUT);
    cr_assert_geq(conc_now(), d);

    cr_assert(conc_lock_locked(&l));
    cr_assert(conc_lock_held(&l));
    cr_assert_eq(conc_lock_release(&l), 0);
    cr_assert(!conc_lock_locked(&l));
}

Test(lock, bad_arguments, .timeout = 30)
{
    conc_lock l = CONC_LOCK_INIT;
    cr_assert_eq(conc_lock_init(NULL, 0), -EINVAL);
    cr_assert_eq(conc_lock_acquire(NULL, CONC_FOREVER), -EINVAL);
    cr_assert_eq(conc_lock_acquire(NULL, 0), -EINVAL);
    cr_assert_eq(conc_lock_acquire_until(NULL, CONC_NO_DEADLINE), -EINVAL);
    cr_assert_eq(conc_lock_release(NULL), -EINVAL);

    /* a bad timeout is rejected and takes nothing, free or held */
    for (size_t i = 0; i < N_BAD_TIMEOUTS; i++) {
        cr_assert_eq(conc_lock_acquire(&l, bad_timeouts[i]), -EINVAL, "timeout %g", bad_timeouts[i]);
        cr_assert(!conc_lock_locked(&l), "timeout %g took the lock", bad_timeouts[i]);
    }
    cr_assert_eq(conc_lock_acquire(&l, CONC_FOREVER), 0);
    for (size_t i = 0; i < N_BAD_TIMEOUTS; i++)
        cr_assert_eq(conc_lock_acquire(&l, bad_timeouts[i]), -EINVAL, "timeout %g", bad_timeouts[i]);
    cr_assert(conc_lock_held(&l));
    cr_assert_eq(conc_lock_release(&l), 0);
}

Test(lock, init_flags, .timeout = 30)
{
    conc_lock l;
    cr_assert_eq(conc_lock_init(&l, 0x2), -EINVAL);
    cr_assert_eq(conc_lock_init(&l, 0x4), -EINVAL);
    cr_assert_eq(conc_lock_init(&l, 0x80000000u), -EINVAL);
    cr_assert_eq(conc_lock_init(&l, CONC_SYNC_SHARED | 0x10), -EINVAL);
    cr_assert_eq(conc_lock_init(&l, CONC_SYNC_SHARED), 0);
    cr_assert(!conc_lock_locked(&l));
    cr_assert_eq(conc_lock_acquire(&l, 0), 0);
    cr_assert_eq(conc_lock_release(&l), 0);

    /* init resets a lock that was left locked (it is not in use) */
    cr_assert_eq(conc_lock_acquire(&l, 0), 0);
    cr_assert_eq(conc_lock_init(&l, 0), 0);
    cr_assert(!conc_lock_locked(&l));
}

struct lock_probe {
    conc_lock *l;
    bool locked, held;
    int r_poll, r_timed, r_until;
};

static void *lock_probe_fn(void *p)
{
    struct lock_probe *a = p;
    a->locked = conc_lock_locked(a->l);
    a->held = conc_lock_held(a->l);
    a->r_poll = conc_lock_acquire(a->l, 0);
    a->r_timed = conc_lock_acquire(a->l, 0.02);
    a->r_until = conc_lock_acquire_until(a->l, conc_now() - 1);
    return NULL;
}

Test(lock, other_thread_sees_locked_not_held, .timeout = 30)
{
    conc_lock l = CONC_LOCK_INIT;
    cr_assert_eq(conc_lock_acquire(&l, CONC_FOREVER), 0);
    struct lock_probe a = { .l = &l };
    join(spawn(lock_probe_fn, &a));
    cr_assert(a.locked);
    cr_assert(!a.held);
    cr_assert_eq(a.r_poll, -EAGAIN);
    cr_assert_eq(a.r_timed, -ETIMEDOUT);
    cr_assert_eq(a.r_until, -ETIMEDOUT);
    cr_assert(conc_lock_held(&l));
    cr_assert_eq(conc_lock_release(&l), 0);
}

static void *release_fn(void *p)
{
    return RET(conc_lock_release(p));
}

Test(lock, release_by_another_thread, .timeout = 30)
{
    conc_lock l = CONC_LOCK_INIT;
    cr_assert_eq(conc_lock_acquire(&l, CONC_FOREVER), 0);
    cr_assert_eq(join(spawn(release_fn, &l)), 0);
    cr_assert(!conc_lock_locked(&l));
    cr_assert(!conc_lock_held(&l));
    cr_assert_eq(conc_lock_release(&l), -EPERM);
    cr_assert_eq(join(spawn(release_fn, &l)), -EPERM);
    cr_assert_eq(conc_lock_acquire(&l, 0), 0);
    cr_assert_eq(conc_lock_release(&l), 0);
}

struct lock_blocker {
    conc_lock *l;
    double timeout;
    atomic_int done;
    int rc;
    bool held_after;
};

static void *lock_blocker_fn(void *p)
{
    struct lock_blocker *a = p;
    a->rc = conc_lock_acquire(a->l, a->timeout);
    a->held_after = conc_lock_held(a->l);
    atomic_store(&a->done, 1);
    if (a->rc == 0)
        conc_lock_release(a->l);
    return NULL;
}

Test(lock, waiter_blocks_until_release, .timeout = 30)
{
    const double timeouts[] = { CONC_FOREVER, 20.0 };
    for (int i = 0; i < 2; i++) {
        conc_lock l = CONC_LOCK_INIT;
        cr_assert_eq(conc_lock_acquire(&l, CONC_FOREVER), 0);
        struct lock_blocker a = { .l = &l, .timeout = timeouts[i] };
        pid_t tid;
        pthread_t t = spawn_tid(lock_blocker_fn, &a, &tid);
        wait_thread_blocked(tid, BLOCKED_GUARD);
        cr_assert_eq(atomic_load(&a.done), 0, "acquire returned while the lock was held");
        cr_assert_eq(conc_lock_release(&l), 0);
        join(t);
        cr_assert_eq(a.rc, 0);
        cr_assert(a.held_after);
        cr_assert(!conc_lock_locked(&l));
    }
}

struct late_release {
    conc_lock *l;
    pid_t owner_tid;        /* released once this thread sleeps on the lock */
};

static void *late_release_fn(void *p)
{
    struct late_release *a = p;
    if (!await_task_blocked(getpid(), a->owner_tid, BLOCKED_GUARD))
        return RET(-ESRCH);
    return RET(conc_lock_release(a->l));
}

Test(lock, owner_reacquire_blocks_until_another_thread_releases, .timeout = 30)
{
    /* Python: a second acquire by the same thread waits for a release by
     * somebody else (Lock is not recursive, but anyone may release it). */
    conc_lock l = CONC_LOCK_INIT;
    cr_assert_eq(conc_lock_acquire(&l, CONC_FOREVER), 0);
    struct late_release a = { .l = &l, .owner_tid = gettid() };
    pthread_t t = spawn(late_release_fn, &a);
    cr_assert_eq(conc_lock_acquire(&l, 20.0), 0);
    cr_assert_eq(join(t), 0);
    cr_assert(conc_lock_held(&l));
    cr_assert_eq(conc_lock_release(&l), 0);
    cr_assert(!conc_lock_locked(&l));
}

/* ---- mutual exclusion */

static conc_lock static_lock = CONC_LOCK_INIT;

struct incr {
    conc_lock *l;
    long *counter;
    int iters;
    int mode;
    int err;
};

static void *lock_incr_fn(void *p)
{
    struct incr *a = p;
    for (int i = 0; i < a->iters; i++) {
        int rc;
        switch (a->mode) {
        case 0: rc = conc_lock_acquire(a->l, CONC_FOREVER); break;
        case 1: rc = conc_lock_acquire(a->l, 60.0); break;
        case 2:
            while ((rc = conc_lock_acquire(a->l, 0)) == -EAGAIN)
                sched_yield();
            break;
        default: rc = conc_lock_acquire_until(a->l, CONC_NO_DEADLINE); break;
        }
        if (rc != 0) {
            a->err = rc;
            return NULL;
        }
        long v = *a->counter;
        if (i % 64 == 0)
            sched_yield(); /* widen the window a broken lock would expose */
        *a->counter = v + 1;
        rc = conc_lock_release(a->l);
        if (rc != 0) {
            a->err = rc ? rc : -1;
            return NULL;
        }
    }
    return NULL;
}

static void run_lock_stress(conc_lock *l, int nthreads, int iters, bool mixed)
{
    long counter = 0;
    struct incr a[8];
    pthread_t t[8];
    for (int i = 0; i < nthreads; i++) {
        a[i] = (struct incr){ .l = l, .counter = &counter, .iters = iters,
                              .mode = mixed ? i % 4 : 0 };
        t[i] = spawn(lock_incr_fn, &a[i]);
    }
    for (int i = 0; i < nthreads; i++) {
        join(t[i]);
        cr_assert_eq(a[i].err, 0, "thread %d: %s", i, conc_errname(a[i].err));
    }
    cr_assert_eq(counter, (long)nthreads * iters);
    cr_assert(!conc_lock_locked(l));
}

Test(lock, mutual_exclusion_stress, .timeout = 30)
{
    run_lock_stress(&static_lock, 4, 100000, false);
}

Test(lock, mutual_exclusion_mixed_waits, .timeout = 30)
{
    conc_lock l;
    cr_assert_eq(conc_lock_init(&l, 0), 0);
    run_lock_stress(&l, 4, 20000, true);
}

Test(lock, shared_flag_between_threads, .timeout = 30)
{
    conc_lock a = CONC_LOCK_INIT_SHARED;
    run_lock_stress(&a, 3, 20000, true);
    conc_lock b;
    cr_assert_eq(conc_lock_init(&b, CONC_SYNC_SHARED), 0);
    run_lock_stress(&b, 3, 20000, false);
}

/* Two locks used as binary semaphores: each thread releases the lock the
 * other one acquired (allowed for Lock), forcing strict alternation. */
struct pingpong {
    conc_lock a, b;
    long x;
    int n;
    int err;
};

static void *pp_a(void *p)
{
    struct pingpong *s = p;
    for (int i = 0; i < s->n; i++) {
        if (conc_lock_acquire(&s->a, CONC_FOREVER) != 0)
            return RET(1);
        if (s->x != 2L * i)
            return RET(2);
        s->x++;
        if (conc_lock_release(&s->b) != 0)
            return RET(3);
    }
    return RET(0);
}

static void *pp_b(void *p)
{
    struct pingpong *s = p;
    for (int i = 0; i < s->n; i++) {
        if (conc_lock_acquire(&s->b, CONC_FOREVER) != 0)
            return RET(1);
        if (s->x != 2L * i + 1)
            return RET(2);
        s->x++;
        if (conc_lock_release(&s->a) != 0)
            return RET(3);
    }
    return RET(0);
}

Test(lock, handoff_release_by_other_thread_stress, .timeout = 30)
{
    struct pingpong s = { .a = CONC_LOCK_INIT, .b = CONC_LOCK_INIT, .n = 20000 };
    cr_assert_eq(conc_lock_acquire(&s.b, CONC_FOREVER), 0); /* b starts locked */
    pthread_t ta = spawn(pp_a, &s), tb = spawn(pp_b, &s);
    cr_assert_eq(join(ta), 0);
    cr_assert_eq(join(tb), 0);
    cr_assert_eq(s.x, 2L * s.n);
    /* the last step was b's thread releasing a; a's last release left b free
     * for b's thread, which now holds it */
    cr_assert(!conc_lock_locked(&s.a));
    cr_assert(conc_lock_locked(&s.b));
    cr_assert(!conc_lock_held(&s.b)); /* held by b's (ended) thread, not us */
    cr_assert_eq(conc_lock_release(&s.b), 0);
}

/* =============================================================== RLock */

Test(rlock, recursion_depth, .timeout = 30)
{
    conc_rlock l;
    cr_assert_eq(conc_rlock_init(&l, 0), 0);
    cr_assert(!conc_rlock_is_owned(&l));
    cr_assert_eq(conc_rlock_depth(&l), 0);

    cr_assert_eq(conc_rlock_acquire(&l, CONC_FOREVER), 0);
    cr_assert(conc_rlock_is_owned(&l));
    cr_assert_eq(conc_rlock_depth(&l), 1);
    cr_assert_eq(conc_rlock_acquire(&l, 0), 0); /* owner: never -EAGAIN */
    cr_assert_eq(conc_rlock_depth(&l), 2);
    cr_assert_eq(conc_rlock_acquire(&l, 1.0), 0);
    cr_assert_eq(conc_rlock_depth(&l), 3);
    cr_assert_eq(conc_rlock_acquire_until(&l, conc_now() - NS), 0); /* passed deadline, owner */
    cr_assert_eq(conc_rlock_depth(&l), 4);

    for (unsigned d = 4; d > 0; d--) {
        cr_assert(conc_rlock_is_owned(&l));
        cr_assert_eq(conc_rlock_depth(&l), d);
        cr_assert_eq(conc_rlock_release(&l), 0);
    }
    cr_assert(!conc_rlock_is_owned(&l));
    cr_assert_eq(conc_rlock_depth(&l), 0);
    cr_assert_eq(conc_rlock_release(&l), -EPERM);
    cr_assert_eq(conc_rlock_depth(&l), 0);

    /* deep recursion */
    for (int i = 0; i < 1000; i++)
        cr_assert_eq(conc_rlock_acquire(&l, CONC_FOREVER), 0);
    cr_assert_eq(conc_rlock_depth(&l), 1000);
    for (int i = 0; i < 1000; i++)
        cr_assert_eq(conc_rlock_release(&l), 0);
    cr_assert(!conc_rlock_is_owned(&l));
}

Test(rlock, release_when_free_is_eperm, .timeout = 30)
{
    conc_rlock l = CONC_RLOCK_INIT;
    cr_assert_eq(conc_rlock_release(&l), -EPERM);
    cr_assert_eq(conc_rlock_release(&l), -EPERM);
    cr_assert_eq(conc_rlock_acquire(&l, 0), 0);
    cr_assert_eq(conc_rlock_release(&l), 0);
    cr_assert_eq(conc_rlock_release(&l), -EPERM);
    cr_assert_eq(conc_rlock_depth(&l), 0);
}

Test(rlock, bad_arguments, .timeout = 30)
{
    conc_rlock l = CONC_RLOCK_INIT;
    cr_assert_eq(conc_rlock_init(NULL, 0), -EINVAL);
    cr_assert_eq(conc_rlock_acquire(NULL, CONC_FOREVER), -EINVAL);
    cr_assert_eq(conc_rlock_acquire_until(NULL, CONC_NO_DEADLINE), -EINVAL);
    cr_assert_eq(conc_rlock_release(NULL), -EINVAL);
    for (size_t i = 0; i < N_BAD_TIMEOUTS; i++) {
        cr_assert_eq(conc_rlock_acquire(&l, bad_timeouts[i]), -EINVAL, "timeout %g", bad_timeouts[i]);
        cr_assert(!conc_rlock_is_owned(&l));
    }
    cr_assert_eq(conc_rlock_acquire(&l, CONC_FOREVER), 0);
    for (size_t i = 0; i < N_BAD_TIMEOUTS; i++)
        cr_assert_eq(conc_rlock_acquire(&l, bad_timeouts[i]), -EINVAL, "timeout %g", bad_timeouts[i]);
    cr_assert_eq(conc_rlock_depth(&l), 1, "a rejected acquire changed the depth");
    cr_assert_eq(conc_rlock_release(&l), 0);
}

Test(rlock, init_flags, .timeout = 30)
{
    conc_rlock l;
    cr_assert_eq(conc_rlock_init(&l, 0x2), -EINVAL);
    cr_assert_eq(conc_rlock_init(&l, 0x100), -EINVAL);
    cr_assert_eq(conc_rlock_init(&l, CONC_SYNC_SHARED), 0);
    cr_assert_eq(conc_rlock_acquire(&l, 0), 0);
    cr_assert_eq(conc_rlock_acquire(&l, 0), 0);
    cr_assert_eq(conc_rlock_depth(&l), 2);
    cr_assert_eq(conc_rlock_release(&l), 0);
    cr_assert_eq(conc_rlock_release(&l), 0);
    conc_rlock s = CONC_RLOCK_INIT_SHARED;
    cr_assert_eq(conc_rlock_acquire(&s, 0), 0);
    cr_assert_eq(conc_rlock_depth(&s), 1);
    cr_assert_eq(conc_rlock_release(&s), 0);
}

struct rlock_probe {
    conc_rlock *l;
    bool owned;
    unsigned depth;
    int r_release, r_poll, r_timed, r_until;
};

static void *rlock_probe_fn(void *p)
{
    struct rlock_probe *a = p;
    a->owned = conc_rlock_is_owned(a->l);
    a->depth = conc_rlock_depth(a->l);
    a->r_release = conc_rlock_release(a->l);
    a->r_poll = conc_rlock_acquire(a->l, 0);
    a->r_timed = conc_rlock_acquire(a->l, 0.03);
    a->r_until = conc_rlock_acquire_until(a->l, conc_now() - 1);
    return NULL;
}

Test(rlock, non_owner, .timeout = 30)
{
    conc_rlock l = CONC_RLOCK_INIT;
    cr_assert_eq(conc_rlock_acquire(&l, CONC_FOREVER), 0);
    cr_assert_eq(conc_rlock_acquire(&l, CONC_FOREVER), 0);
    struct rlock_probe a = { .l = &l };
    join(spawn(rlock_probe_fn, &a));
    cr_assert(!a.owned);
    cr_assert_eq(a.depth, 0);
    cr_assert_eq(a.r_release, -EPERM);
    cr_assert_eq(a.r_poll, -EAGAIN);
    cr_assert_eq(a.r_timed, -ETIMEDOUT);
    cr_assert_eq(a.r_until, -ETIMEDOUT);
    /* the non-owner's release dropped nothing */
    cr_assert(conc_rlock_is_owned(&l));
    cr_assert_eq(conc_rlock_depth(&l), 2);
    cr_assert_eq(conc_rlock_release(&l), 0);
    cr_assert_eq(conc_rlock_release(&l), 0);
}

struct rlock_blocker {
    conc_rlock *l;
    atomic_int done;
    int rc;
    bool owned;
    unsigned depth;
};

static void *rlock_blocker_fn(void *p)
{
    struct rlock_blocker *a = p;
    a->rc = conc_rlock_acquire(a->l, CONC_FOREVER);
    a->owned = conc_rlock_is_owned(a->l);
    a->depth = conc_rlock_depth(a->l);
    atomic_store(&a->done, 1);
    if (a->rc == 0)
        conc_rlock_release(a->l);
    return NULL;
}

Test(rlock, other_thread_blocked_until_last_release, .timeout = 30)
{
    conc_rlock l = CONC_RLOCK_INIT;
    for (int i = 0; i < 3; i++)
        cr_assert_eq(conc_rlock_acquire(&l, CONC_FOREVER), 0);
    struct rlock_blocker a = { .l = &l };
    pid_t tid;
    pthread_t t = spawn_tid(rlock_blocker_fn, &a, &tid);
    wait_thread_blocked(tid, BLOCKED_GUARD);
    cr_assert_eq(atomic_load(&a.done), 0);
    cr_assert_eq(conc_rlock_release(&l), 0);
    cr_assert_eq(conc_rlock_release(&l), 0);
    /* woken by those releases, it would be running or done; it must sleep */
    wait_thread_blocked(tid, BLOCKED_GUARD);
    cr_assert_eq(atomic_load(&a.done), 0, "acquired while the owner still had depth 1");
    cr_assert(conc_rlock_is_owned(&l));
    cr_assert_eq(conc_rlock_release(&l), 0);
    join(t);
    cr_assert_eq(a.rc, 0);
    cr_assert(a.owned);
    cr_assert_eq(a.depth, 1);
    cr_assert(!conc_rlock_is_owned(&l));
    cr_assert_eq(conc_rlock_acquire(&l, 0), 0);
    cr_assert_eq(conc_rlock_release(&l), 0);
}

struct rincr {
    conc_rlock *l;
    long *counter;
    int iters;
    int err;
};

static void *rlock_incr_fn(void *p)
{
    struct rincr *a = p;
    for (int i = 0; i < a->iters; i++) {
        int depth = 1 + i % 3;
        for (int d = 0; d < depth; d++) {
            int rc = (i & 1) ? conc_rlock_acquire(a->l, 60.0) : conc_rlock_acquire(a->l, CONC_FOREVER);
            if (rc) {
                a->err = rc;
                return NULL;
            }
        }
        if (conc_rlock_depth(a->l) != (unsigned)depth) {
            a->err = -1000;
            return NULL;
        }
        long v = *a->counter;
        if (i % 64 == 0)
            sched_yield();
        *a->counter = v + 1;
        for (int d = 0; d < depth; d++) {
            int rc = conc_rlock_release(a->l);
            if (rc) {
                a->err = rc;
                return NULL;
            }
        }
    }
    return NULL;
}

Test(rlock, mutual_exclusion_stress, .timeout = 30)
{
    static conc_rlock l = CONC_RLOCK_INIT;
    long counter = 0;
    struct rincr a[4];
    pthread_t t[4];
    for (int i = 0; i < 4; i++) {
        a[i] = (struct rincr){ .l = &l, .counter = &counter, .iters = 30000 };
        t[i] = spawn(rlock_incr_fn, &a[i]);
    }
    for (int i = 0; i < 4; i++) {
        join(t[i]);
        cr_assert_eq(a[i].err, 0, "thread %d: %d", i, a[i].err);
    }
    cr_assert_eq(counter, 4L * 30000);
    cr_assert_eq(conc_rlock_acquire(&l, 0), 0);
    cr_assert_eq(conc_rlock_release(&l), 0);
}

/* ========================================================== Semaphore */

Test(sem, values_and_polling, .timeout = 30)
{
    conc_sem s;
    cr_assert_eq(conc_sem_init(&s, 2, 0), 0);
    cr_assert_eq(conc_sem_value(&s), 2);
    cr_assert_eq(conc_sem_acquire(&s, CONC_FOREVER), 0);
    cr_assert_eq(conc_sem_value(&s), 1);
    cr_assert_eq(conc_sem_acquire(&s, 0), 0);
    cr_assert_eq(conc_sem_value(&s), 0);
    cr_assert_eq(conc_sem_acquire(&s, 0), -EAGAIN);
    int64_t t0 = conc_now();
    cr_assert_eq(conc_sem_acquire(&s, 0.05), -ETIMEDOUT);
    cr_assert_geq(conc_now() - t0, 50000000LL);
    cr_assert_eq(conc_sem_acquire_until(&s, conc_now() - 1), -ETIMEDOUT);
    int64_t d = conc_now() + 20000000LL;
    cr_assert_eq(conc_sem_acquire_until(&s, d), -ETIMEDOUT);
    cr_assert_geq(conc_now(), d);
    cr_assert_eq(conc_sem_value(&s), 0);

    cr_assert_eq(conc_sem_release(&s, 1), 0);
    cr_assert_eq(conc_sem_value(&s), 1);
    cr_assert_eq(conc_sem_release(&s, 5), 0); /* plain semaphore: no bound */
    cr_assert_eq(conc_sem_value(&s), 6);
    cr_assert_eq(conc_sem_acquire_until(&s, conc_now() - NS), 0); /* passed deadline, available */
    cr_assert_eq(conc_sem_acquire_until(&s, CONC_NO_DEADLINE), 0);
    cr_assert_eq(conc_sem_value(&s), 4);

    conc_sem z = CONC_SEM_INIT(0);
    cr_assert_eq(conc_sem_value(&z), 0);
    cr_assert_eq(conc_sem_acquire(&z, 0), -EAGAIN);
    conc_sem three = CONC_SEM_INIT(3);
    cr_assert_eq(conc_sem_value(&three), 3);
}

Test(sem, bad_arguments, .timeout = 30)
{
    conc_sem s = CONC_SEM_INIT(1);
    cr_assert_eq(conc_sem_init(NULL, 0, 0), -EINVAL);
    cr_assert_eq(conc_sem_acquire(NULL, CONC_FOREVER), -EINVAL);
    cr_assert_eq(conc_sem_acquire_until(NULL, CONC_NO_DEADLINE), -EINVAL);
    cr_assert_eq(conc_sem_release(NULL, 1), -EINVAL);
    cr_assert_eq(conc_sem_release(&s, 0), -EINVAL);
    cr_assert_eq(conc_sem_value(&s), 1);
    for (size_t i = 0; i < N_BAD_TIMEOUTS; i++) {
        cr_assert_eq(conc_sem_acquire(&s, bad_timeouts[i]), -EINVAL, "timeout %g", bad_timeouts[i]);
        cr_assert_eq(conc_sem_value(&s), 1, "a rejected acquire took a unit");
    }
}

Test(sem, init_flags_and_limits, .timeout = 30)
{
    conc_sem s;
    cr_assert_eq(conc_sem_init(&s, 1, 0x4), -EINVAL);
    cr_assert_eq(conc_sem_init(&s, 1, 0x80000000u), -EINVAL);
    cr_assert_eq(conc_sem_init(&s, 1, CONC_SYNC_SHARED | CONC_SEM_BOUNDED | 0x8), -EINVAL);
    cr_assert_eq(conc_sem_init(&s, CONC_SEM_VALUE_MAX + 1u, 0), -EINVAL);
    cr_assert_eq(conc_sem_init(&s, UINT32_MAX, CONC_SEM_BOUNDED), -EINVAL);
    cr_assert_eq(conc_sem_init(&s, 3, CONC_SYNC_SHARED), 0);
    cr_assert_eq(conc_sem_value(&s), 3);
    cr_assert_eq(conc_sem_init(&s, 3, CONC_SYNC_SHARED | CONC_SEM_BOUNDED), 0);
    cr_assert_eq(conc_sem_release(&s, 1), -EOVERFLOW);
    cr_assert_eq(conc_sem_init(&s, 0, 0), 0);
    cr_assert_eq(conc_sem_value(&s), 0);

    /* the counter never passes CONC_SEM_VALUE_MAX */
    cr_assert_eq(conc_sem_init(&s, CONC_SEM_VALUE_MAX, 0), 0);
    cr_assert_eq(conc_sem_value(&s), CONC_SEM_VALUE_MAX);
    cr_assert_eq(conc_sem_release(&s, 1), -EOVERFLOW);
    cr_assert_eq(conc_sem_value(&s), CONC_SEM_VALUE_MAX);
    cr_assert_eq(conc_sem_acquire(&s, 0), 0);
    cr_assert_eq(conc_sem_release(&s, 2), -EOVERFLOW);
    cr_assert_eq(conc_sem_value(&s), CONC_SEM_VALUE_MAX - 1);
    cr_assert_eq(conc_sem_release(&s, 1), 0);
    cr_assert_eq(conc_sem_value(&s), CONC_SEM_VALUE_MAX);

    cr_assert_eq(conc_sem_init(&s, 0, 0), 0);
    cr_assert_eq(conc_sem_release(&s, UINT32_MAX), -EOVERFLOW);
    cr_assert_eq(conc_sem_release(&s, CONC_SEM_VALUE_MAX + 1u), -EOVERFLOW);
    cr_assert_eq(conc_sem_value(&s), 0);
    cr_assert_eq(conc_sem_release(&s, CONC_SEM_VALUE_MAX), 0);
    cr_assert_eq(conc_sem_value(&s), CONC_SEM_VALUE_MAX);
    cr_assert_eq(conc_sem_release(&s, UINT32_MAX), -EOVERFLOW);
    cr_assert_eq(conc_sem_value(&s), CONC_SEM_VALUE_MAX);
}

Test(sem, bounded_over_release, .timeout = 30)
{
    conc_sem s;
    cr_assert_eq(conc_sem_init(&s, 2, CONC_SEM_BOUNDED), 0);
    cr_assert_eq(conc_sem_value(&s), 2);
    cr_assert_eq(conc_sem_release(&s, 1), -EOVERFLOW);
    cr_assert_eq(conc_sem_value(&s), 2);
    cr_assert_eq(conc_sem_acquire(&s, 0), 0);
    cr_assert_eq(conc_sem_acquire(&s, 0), 0);
    cr_assert_eq(conc_sem_acquire(&s, 0), -EAGAIN);
    cr_assert_eq(conc_sem_value(&s), 0);
    cr_assert_eq(conc_sem_release(&s, 3), -EOVERFLOW);
    cr_assert_eq(conc_sem_value(&s), 0, "a failed release added units");
    cr_assert_eq(conc_sem_release(&s, 1), 0);
    cr_assert_eq(conc_sem_release(&s, 2), -EOVERFLOW);
    cr_assert_eq(conc_sem_value(&s), 1, "a failed release added units");
    cr_assert_eq(conc_sem_release(&s, 1), 0);
    cr_assert_eq(conc_sem_value(&s), 2);
    cr_assert_eq(conc_sem_release(&s, 1), -EOVERFLOW);
    cr_assert_eq(conc_sem_value(&s), 2);

    /* release(n) up to the bound at once */
    cr_assert_eq(conc_sem_acquire(&s, 0), 0);
    cr_assert_eq(conc_sem_acquire(&s, 0), 0);
    cr_assert_eq(conc_sem_release(&s, 2), 0);
    cr_assert_eq(conc_sem_value(&s), 2);

    conc_sem b = CONC_BSEM_INIT(1);
    cr_assert_eq(conc_sem_release(&b, 1), -EOVERFLOW);
    cr_assert_eq(conc_sem_value(&b), 1);
    cr_assert_eq(conc_sem_acquire(&b, 0), 0);
    cr_assert_eq(conc_sem_release(&b, 1), 0);

    conc_sem bz = CONC_BSEM_INIT(0);
    cr_assert_eq(conc_sem_release(&bz, 1), -EOVERFLOW);
    cr_assert_eq(conc_sem_value(&bz), 0);

    conc_sem bs = CONC_BSEM_INIT_SHARED(2);
    cr_assert_eq(conc_sem_acquire(&bs, 0), 0);
    cr_assert_eq(conc_sem_release(&bs, 2), -EOVERFLOW);
    cr_assert_eq(conc_sem_release(&bs, 1), 0);
    cr_assert_eq(conc_sem_value(&bs), 2);
}

struct sem_waiter {
    conc_sem *s;
    double timeout;
    atomic_int *acquired;
    int rc;
};

static void *sem_waiter_fn(void *p)
{
    struct sem_waiter *a = p;
    a->rc = conc_sem_acquire(a->s, a->timeout);
    if (a->rc == 0)
        atomic_fetch_add(a->acquired, 1);
    return NULL;
}

Test(sem, acquire_blocks_at_zero, .timeout = 30)
{
    conc_sem s = CONC_SEM_INIT(0);
    atomic_int acquired = 0;
    struct sem_waiter a = { .s = &s, .timeout = CONC_FOREVER, .acquired = &acquired };
    pid_t tid;
    pthread_t t = spawn_tid(sem_waiter_fn, &a, &tid);
    wait_thread_blocked(tid, BLOCKED_GUARD);
    cr_assert_eq(atomic_load(&acquired), 0);
    cr_assert_eq(conc_sem_release(&s, 1), 0);
    join(t);
    cr_assert_eq(a.rc, 0);
    cr_assert_eq(atomic_load(&acquired), 1);
    cr_assert_eq(conc_sem_value(&s), 0);
}

Test(sem, release_n_wakes_n_waiters, .timeout = 30)
{
    enum { N = 6 };
    conc_sem s = CONC_SEM_INIT(0);
    atomic_int acquired = 0;
    struct sem_waiter a[N];
    pthread_t t[N];
    pid_t tid[N];
    for (int i = 0; i < N; i++) {
        a[i] = (struct sem_waiter){ .s = &s, .timeout = (i & 1) ? 60.0 : CONC_FOREVER,
                                    .acquired = &acquired };
        t[i] = spawn_tid(sem_waiter_fn, &a[i], &tid[i]);
    }
    for (int i = 0; i < N; i++)
        wait_thread_blocked(tid[i], BLOCKED_GUARD);
    cr_assert_eq(atomic_load(&acquired), 0);

    /* A waiter that acquires counts itself and exits; each one that did not
     * must be asleep again before the count is checked. */
    cr_assert_eq(conc_sem_release(&s, 4), 0);
    WAIT_FOR(atomic_load(&acquired) >= 4);
    wait_threads_quiet(tid, N);
    cr_assert_eq(atomic_load(&acquired), 4);
    cr_assert_eq(conc_sem_value(&s), 0);

    cr_assert_eq(conc_sem_release(&s, 1), 0);
    WAIT_FOR(atomic_load(&acquired) >= 5);
    wait_threads_quiet(tid, N);
    cr_assert_eq(atomic_load(&acquired), 5);

    /* more units than waiters: the rest stays in the counter */
    cr_assert_eq(conc_sem_release(&s, 3), 0);
    for (int i = 0; i < N; i++) {
        join(t[i]);
        cr_assert_eq(a[i].rc, 0);
    }
    cr_assert_eq(atomic_load(&acquired), N);
    cr_assert_eq(conc_sem_value(&s), 2);
}

Test(sem, timed_acquire_succeeds_when_released, .timeout = 30)
{
    conc_sem s = CONC_BSEM_INIT(1);
    cr_assert_eq(conc_sem_acquire(&s, 0), 0);
    atomic_int acquired = 0;
    struct sem_waiter a = { .s = &s, .timeout = 20.0, .acquired = &acquired };
    pid_t tid;
    pthread_t t = spawn_tid(sem_waiter_fn, &a, &tid);
    wait_thread_blocked(tid, BLOCKED_GUARD);
    cr_assert_eq(atomic_load(&acquired), 0);
    cr_assert_eq(conc_sem_release(&s, 1), 0);
    join(t);
    cr_assert_eq(a.rc, 0);
    cr_assert_eq(conc_sem_value(&s), 0);
}

struct sem_gate {
    conc_sem *s;
    atomic_int *inside, *max_inside;
    long *counter;    /* protected by the semaphore when its value is 1 */
    int iters;
    int err;
};

static void *sem_gate_fn(void *p)
{
    struct sem_gate *a = p;
    for (int i = 0; i < a->iters; i++) {
        int rc = (i & 1) ? conc_sem_acquire(a->s, 60.0) : conc_sem_acquire(a->s, CONC_FOREVER);
        if (rc) {
            a->err = rc;
            return NULL;
        }
        int in = atomic_fetch_add(a->inside, 1) + 1;
        int m = atomic_load(a->max_inside);
        while (in > m && !atomic_compare_exchange_weak(a->max_inside, &m, in))
            ;
        if (a->counter)
            (*a->counter)++;
        if (i % 32 == 0)
            sched_yield();
        atomic_fetch_sub(a->inside, 1);
        rc = conc_sem_release(a->s, 1);
        if (rc) {
            a->err = rc;
            return NULL;
        }
    }
    return NULL;
}

static void run_sem_gate(conc_sem *s, unsigned limit, int nthreads, int iters)
{
    atomic_int inside = 0, max_inside = 0;
    long counter = 0;
    struct sem_gate a[8];
    pthread_t t[8];
    for (int i = 0; i < nthreads; i++) {
        a[i] = (struct sem_gate){ .s = s, .inside = &inside, .max_inside = &max_inside,
                                  .counter = limit == 1 ? &counter : NULL, .iters = iters };
        t[i] = spawn(sem_gate_fn, &a[i]);
    }
    for (int i = 0; i < nthreads; i++) {
        join(t[i]);
        cr_assert_eq(a[i].err, 0, "thread %d: %s", i, conc_errname(a[i].err));
    }
    cr_assert_leq(atomic_load(&max_inside), (int)limit);
    cr_assert_geq(atomic_load(&max_inside), 1);
    if (limit == 1)
        cr_assert_eq(counter, (long)nthreads * iters);
    cr_assert_eq(conc_sem_value(s), limit);
}

Test(sem, limits_concurrency_stress, .timeout = 30)
{
    conc_sem one = CONC_SEM_INIT(1);
    run_sem_gate(&one, 1, 4, 20000);
    conc_sem three;
    cr_assert_eq(conc_sem_init(&three, 3, CONC_SEM_BOUNDED), 0);
    run_sem_gate(&three, 3, 6, 10000);
    conc_sem shared = CONC_SEM_INIT_SHARED(2);
    run_sem_gate(&shared, 2, 4, 10000);
}

/* =============================================================== Event */

Test(event, set_clear_wait, .timeout = 30)
{
    conc_event e;
    cr_assert_eq(conc_event_init(&e, 0), 0);
    cr_assert(!conc_event_is_set(&e));
    cr_assert_eq(conc_event_wait(&e, 0), -EAGAIN);
    cr_assert_eq(conc_event_wait_until(&e, conc_now() - 1), -ETIMEDOUT);
    cr_assert(!conc_event_is_set(&e));

    cr_assert_eq(conc_event_set(&e), 0);
    cr_assert(conc_event_is_set(&e));
    cr_assert_eq(conc_event_wait(&e, CONC_FOREVER), 0);
    cr_assert_eq(conc_event_wait(&e, 0), 0);
    cr_assert_eq(conc_event_wait(&e, 1.0), 0);
    cr_assert_eq(conc_event_wait_until(&e, conc_now() - NS), 0);
    cr_assert_eq(conc_event_wait_until(&e, CONC_NO_DEADLINE), 0);
    cr_assert(conc_event_is_set(&e), "wait cleared the event");
    cr_assert_eq(conc_event_set(&e), 0); /* set twice is fine */
    cr_assert(conc_event_is_set(&e));

    cr_assert_eq(conc_event_clear(&e), 0);
    cr_assert(!conc_event_is_set(&e));
    cr_assert_eq(conc_event_clear(&e), 0);
    cr_assert(!conc_event_is_set(&e));
    cr_assert_eq(conc_event_wait(&e, 0), -EAGAIN);

    conc_event s = CONC_EVENT_INIT;
    cr_assert(!conc_event_is_set(&s));
    conc_event sh = CONC_EVENT_INIT_SHARED;
    cr_assert_eq(conc_event_set(&sh), 0);
    cr_assert_eq(conc_event_wait(&sh, 0), 0);
}

Test(event, timeouts, .timeout = 30)
{
    conc_event e = CONC_EVENT_INIT;
    int64_t t0 = conc_now();
    cr_assert_eq(conc_event_wait(&e, 0.05), -ETIMEDOUT);
    cr_assert_geq(conc_now() - t0, 50000000LL);
    int64_t d = conc_now() + 20000000LL;
    cr_assert_eq(conc_event_wait_until(&e, d), -ETIMEDOUT);
    cr_assert_geq(conc_now(), d);
    cr_assert(!conc_event_is_set(&e));
}

Test(event, bad_arguments, .timeout = 30)
{
    conc_event e = CONC_EVENT_INIT;
    cr_assert_eq(conc_event_init(NULL, 0), -EINVAL);
    cr_assert_eq(conc_event_init(&e, 0x2), -EINVAL);
    cr_assert_eq(conc_event_init(&e, 0x80000000u), -EINVAL);
    cr_assert_eq(conc_event_init(&e, CONC_SYNC_SHARED), 0);
    cr_assert_eq(conc_event_set(NULL), -EINVAL);
    cr_assert_eq(conc_event_clear(NULL), -EINVAL);
    cr_assert_eq(conc_event_wait(NULL, 0), -EINVAL);
    cr_assert_eq(conc_event_wait_until(NULL, CONC_NO_DEADLINE), -EINVAL);
    for (size_t i = 0; i < N_BAD_TIMEOUTS; i++)
        cr_assert_eq(conc_event_wait(&e, bad_timeouts[i]), -EINVAL, "timeout %g", bad_timeouts[i]);
    cr_assert_eq(conc_event_set(&e), 0);
    for (size_t i = 0; i < N_BAD_TIMEOUTS; i++)
        cr_assert_eq(conc_event_wait(&e, bad_timeouts[i]), -EINVAL, "timeout %g (set)", bad_timeouts[i]);
}

struct ev_waiter {
    conc_event *e;
    double timeout;
    atomic_int *returned;
    int rc;
};

static void *ev_waiter_fn(void *p)
{
    struct ev_waiter *a = p;
    a->rc = conc_event_wait(a->e, a->timeout);
    atomic_fetch_add(a->returned, 1);
    return NULL;
}

Test(event, set_wakes_all_waiters, .timeout = 30)
{
    enum { N = 8 };
    static conc_event e = CONC_EVENT_INIT;
    atomic_int returned = 0;
    struct ev_waiter a[N];
    pthread_t t[N];
    pid_t tid[N];
    for (int i = 0; i < N; i++) {
        a[i] = (struct ev_waiter){ .e = &e, .timeout = (i & 1) ? 60.0 : CONC_FOREVER,
                                   .returned = &returned };
        t[i] = spawn_tid(ev_waiter_fn, &a[i], &tid[i]);
    }
    for (int i = 0; i < N; i++)
        wait_thread_blocked(tid[i], BLOCKED_GUARD);
    cr_assert_eq(atomic_load(&returned), 0);
    cr_assert_eq(conc_event_set(&e), 0);
    for (int i = 0; i < N; i++) {
        join(t[i]);
        cr_assert_eq(a[i].rc, 0, "waiter %d: %s", i, conc_errname(a[i].rc));
    }
    cr_assert_eq(atomic_load(&returned), N);
    cr_assert(conc_event_is_set(&e));
}

Test(event, clear_after_set_then_wait_again, .timeout = 30)
{
    conc_event e = CONC_EVENT_INIT_SHARED;
    atomic_int returned = 0;
    for (int round = 0; round < 5; round++) {
        struct ev_waiter a = { .e = &e, .timeout = CONC_FOREVER, .returned = &returned };
        pid_t tid;
        pthread_t t = spawn_tid(ev_waiter_fn, &a, &tid);
        wait_thread_blocked(tid, BLOCKED_GUARD);
        cr_assert_eq(conc_event_set(&e), 0);
        join(t);
        cr_assert_eq(a.rc, 0);
        cr_assert_eq(conc_event_clear(&e), 0);
        cr_assert_eq(conc_event_wait(&e, 0), -EAGAIN);
    }
    cr_assert_eq(atomic_load(&returned), 5);
}

/* Many set/clear cycles racing with waiters: a waiter either sees the set
 * (0) or times out; nobody hangs, no error code other than those two. */
struct ev_race {
    conc_event *go, *ack;
    int rounds;
    int err;
};

static void *ev_race_waiter(void *p)
{
    struct ev_race *a = p;
    for (int i = 0; i < a->rounds; i++) {
        int rc = conc_event_wait(a->go, CONC_FOREVER);
        if (rc) {
            a->err = rc;
            return NULL;
        }
        rc = conc_event_clear(a->go);
        if (rc) {
            a->err = rc;
            return NULL;
        }
        conc_event_set(a->ack);
    }
    return NULL;
}

Test(event, ping_pong_stress, .timeout = 30)
{
    conc_event go = CONC_EVENT_INIT, ack = CONC_EVENT_INIT;
    struct ev_race a = { .go = &go, .ack = &ack, .rounds = 5000 };
    pthread_t t = spawn(ev_race_waiter, &a);
    for (int i = 0; i < a.rounds; i++) {
        cr_assert_eq(conc_event_set(&go), 0);
        cr_assert_eq(conc_event_wait(&ack, CONC_FOREVER), 0);
        cr_assert_eq(conc_event_clear(&ack), 0);
    }
    join(t);
    cr_assert_eq(a.err, 0);
    cr_assert(!conc_event_is_set(&go));
}

/* ---- signals never interrupt a wait */

static void on_signal(int sig)
{
    (void)sig;
}

static void install_handler(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: a raw futex wait gets EINTR */
    sigemptyset(&sa.sa_mask);
    cr_assert_eq(sigaction(SIGUSR1, &sa, NULL), 0);
}

static void pester(pthread_t t, int times)
{
    for (int i = 0; i < times; i++) {
        cr_assert_eq(pthread_kill(t, SIGUSR1), 0);
        usleep(5000);
    }
}

Test(event, signals_do_not_interrupt_wait, .timeout = 30)
{
    install_handler();
    conc_event e = CONC_EVENT_INIT;
    atomic_int returned = 0;

    struct ev_waiter forever = { .e = &e, .timeout = CONC_FOREVER, .returned = &returned };
    pid_t tid;
    pthread_t t = spawn_tid(ev_waiter_fn, &forever, &tid);
    wait_thread_blocked(tid, BLOCKED_GUARD);
    pester(t, 20);
    wait_thread_blocked(tid, BLOCKED_GUARD);      /* asleep again, not returned */
    cr_assert_eq(atomic_load(&returned), 0, "a signal ended the wait (rc %d)", forever.rc);
    cr_assert_eq(conc_event_set(&e), 0);
    join(t);
    cr_assert_eq(forever.rc, 0);
    cr_assert_eq(conc_event_clear(&e), 0);

    struct ev_waiter timed = { .e = &e, .timeout = 0.3, .returned = &returned };
    int64_t t0 = conc_now();
    t = spawn(ev_waiter_fn, &timed);
    pester(t, 20);
    join(t);
    cr_assert_eq(timed.rc, -ETIMEDOUT);
    cr_assert_geq(conc_now() - t0, 300000000LL);
}

Test(lock, signals_do_not_interrupt_acquire, .timeout = 30)
{
    install_handler();
    conc_lock l = CONC_LOCK_INIT;
    cr_assert_eq(conc_lock_acquire(&l, CONC_FOREVER), 0);
    struct lock_blocker a = { .l = &l, .timeout = CONC_FOREVER };
    pid_t tid;
    pthread_t t = spawn_tid(lock_blocker_fn, &a, &tid);
    wait_thread_blocked(tid, BLOCKED_GUARD);
    pester(t, 20);
    wait_thread_blocked(tid, BLOCKED_GUARD);      /* asleep again, not returned */
    cr_assert_eq(atomic_load(&a.done), 0, "a signal ended the acquire (rc %d)", a.rc);
    cr_assert_eq(conc_lock_release(&l), 0);
    join(t);
    cr_assert_eq(a.rc, 0);

    cr_assert_eq(conc_lock_acquire(&l, CONC_FOREVER), 0);
    struct lock_blocker b = { .l = &l, .timeout = 0.3 };
    int64_t t0 = conc_now();
    t = spawn(lock_blocker_fn, &b);
    pester(t, 20);
    join(t);
    cr_assert_eq(b.rc, -ETIMEDOUT);
    cr_assert_geq(conc_now() - t0, 300000000LL);
    cr_assert_eq(conc_lock_release(&l), 0);
}

Test(sem, signals_do_not_interrupt_acquire, .timeout = 30)
{
    install_handler();
    conc_sem s = CONC_SEM_INIT(0);
    atomic_int acquired = 0;
    struct sem_waiter a = { .s = &s, .timeout = CONC_FOREVER, .acquired = &acquired };
    pid_t tid;
    pthread_t t = spawn_tid(sem_waiter_fn, &a, &tid);
    wait_thread_blocked(tid, BLOCKED_GUARD);
    pester(t, 20);
    wait_thread_blocked(tid, BLOCKED_GUARD);      /* asleep again, not returned */
    cr_assert_eq(atomic_load(&acquired), 0);
    cr_assert_eq(conc_sem_release(&s, 1), 0);
    join(t);
    cr_assert_eq(a.rc, 0);
}

/* =========================================================== Condition */

Test(cond, wait_without_lock_is_eperm, .timeout = 30)
{
    conc_cond c = CONC_COND_INIT;
    conc_lock l = CONC_LOCK_INIT;
    conc_rlock rl = CONC_RLOCK_INIT;

    cr_assert_eq(conc_cond_wait(&c, &l, CONC_FOREVER), -EPERM);
    cr_assert_eq(conc_cond_wait(&c, &l, 0), -EPERM);
    cr_assert_eq(conc_cond_wait_until(&c, &l, CONC_NO_DEADLINE), -EPERM);
    cr_assert(!conc_lock_locked(&l), "a failed wait left the lock locked");
    cr_assert_eq(conc_cond_wait_r(&c, &rl, CONC_FOREVER), -EPERM);
    cr_assert_eq(conc_cond_wait_r_until(&c, &rl, CONC_NO_DEADLINE), -EPERM);
    cr_assert(!conc_rlock_is_owned(&rl));
    cr_assert_eq(conc_rlock_acquire(&rl, 0), 0, "a failed wait_r left the rlock taken");
    cr_assert_eq(conc_rlock_release(&rl), 0);
    /* nobody is waiting after the failed calls */
    cr_assert_eq(conc_cond_notify_all(&c), 0);
}

struct cond_intruder {
    conc_cond *c;
    conc_lock *l;
    conc_rlock *rl;
    int rc_wait, rc_wait0, rc_until, rc_wait_for;
    int pred_calls;
};

static int pred_true_counting(void *arg)
{
    (*(int *)arg)++;
    return 1;
}

static void *cond_intruder_fn(void *p)
{
    struct cond_intruder *a = p;
    if (a->rl) {
        a->rc_wait = conc_cond_wait_r(a->c, a->rl, CONC_FOREVER);
        a->rc_wait0 = conc_cond_wait_r(a->c, a->rl, 0);
        a->rc_until = conc_cond_wait_r_until(a->c, a->rl, CONC_NO_DEADLINE);
        a->rc_wait_for = conc_cond_wait_for_r(a->c, a->rl, pred_true_counting, &a->pred_calls,
                                              CONC_FOREVER);
    } else {
        a->rc_wait = conc_cond_wait(a->c, a->l, CONC_FOREVER);
        a->rc_wait0 = conc_cond_wait(a->c, a->l, 0);
        a->rc_until = conc_cond_wait_until(a->c, a->l, CONC_NO_DEADLINE);
        a->rc_wait_for = conc_cond_wait_for(a->c, a->l, pred_true_counting, &a->pred_calls,
                                            CONC_FOREVER);
    }
    return NULL;
}

Test(cond, wait_on_lock_held_by_another_thread_is_eperm, .timeout = 30)
{
    conc_cond c = CONC_COND_INIT;
    conc_lock l = CONC_LOCK_INIT;
    cr_assert_eq(conc_lock_acquire(&l, CONC_FOREVER), 0);
    struct cond_intruder a = { .c = &c, .l = &l };
    join(spawn(cond_intruder_fn, &a));
    cr_assert_eq(a.rc_wait, -EPERM);
    cr_assert_eq(a.rc_wait0, -EPERM);
    cr_assert_eq(a.rc_until, -EPERM);
    cr_assert_eq(a.rc_wait_for, -EPERM);
    cr_assert_eq(a.pred_calls, 0, "the predicate ran without the lock");
    /* nothing was released: the lock is still ours */
    cr_assert(conc_lock_locked(&l));
    cr_assert(conc_lock_held(&l));
    cr_assert_eq(conc_lock_acquire(&l, 0), -EAGAIN);
    cr_assert_eq(conc_lock_release(&l), 0);

    conc_rlock rl = CONC_RLOCK_INIT;
    cr_assert_eq(conc_rlock_acquire(&rl, CONC_FOREVER), 0);
    cr_assert_eq(conc_rlock_acquire(&rl, CONC_FOREVER), 0);
    struct cond_intruder b = { .c = &c, .rl = &rl };
    join(spawn(cond_intruder_fn, &b));
    cr_assert_eq(b.rc_wait, -EPERM);
    cr_assert_eq(b.rc_wait0, -EPERM);
    cr_assert_eq(b.rc_until, -EPERM);
    cr_assert_eq(b.rc_wait_for, -EPERM);
    cr_assert_eq(b.pred_calls, 0);
    cr_assert(conc_rlock_is_owned(&rl));
    cr_assert_eq(conc_rlock_depth(&rl), 2);
    cr_assert_eq(conc_rlock_release(&rl), 0);
    cr_assert_eq(conc_rlock_release(&rl), 0);
}

Test(cond, bad_arguments, .timeout = 30)
{
    conc_cond c = CONC_COND_INIT;
    conc_lock l = CONC_LOCK_INIT;
    conc_rlock rl = CONC_RLOCK_INIT;
    int calls = 0;
    cr_assert_eq(conc_cond_init(NULL, 0), -EINVAL);
    cr_assert_eq(conc_cond_init(&c, 0x2), -EINVAL);
    cr_assert_eq(conc_cond_init(&c, 0x40000000u), -EINVAL);
    cr_assert_eq(conc_cond_init(&c, CONC_SYNC_SHARED), 0);
    cr_assert_eq(conc_cond_init(&c, 0), 0);
    cr_assert_eq(conc_cond_notify(NULL, 1), -EINVAL);
    cr_assert_eq(conc_cond_notify_all(NULL), -EINVAL);

    cr_assert_eq(conc_lock_acquire(&l, CONC_FOREVER), 0);
    cr_assert_eq(conc_cond_wait(NULL, &l, 0), -EINVAL);
    cr_assert_eq(conc_cond_wait(&c, NULL, 0), -EINVAL);
    cr_assert_eq(conc_cond_wait_until(NULL, &l, 0), -EINVAL);
    cr_assert_eq(conc_cond_wait_until(&c, NULL, 0), -EINVAL);
    cr_assert_eq(conc_cond_wait_for(&c, &l, NULL, NULL, 0), -EINVAL);
    cr_assert_eq(conc_cond_wait_for(NULL, &l, pred_true_counting, &calls, 0), -EINVAL);
    cr_assert_eq(conc_cond_wait_for(&c, NULL, pred_true_counting, &calls, 0), -EINVAL);
    cr_assert_eq(conc_cond_wait_for_until(&c, &l, NULL, NULL, CONC_NO_DEADLINE), -EINVAL);
    for (size_t i = 0; i < N_BAD_TIMEOUTS; i++) {
        cr_assert_eq(conc_cond_wait(&c, &l, bad_timeouts[i]), -EINVAL, "timeout %g", bad_timeouts[i]);
        cr_assert_eq(conc_cond_wait_for(&c, &l, pred_true_counting, &calls, bad_timeouts[i]),
                     -EINVAL, "timeout %g", bad_timeouts[i]);
    }
    cr_assert(conc_lock_held(&l), "a rejected wait released the lock");
    cr_assert_eq(conc_lock_release(&l), 0);

    cr_assert_eq(conc_rlock_acquire(&rl, CONC_FOREVER), 0);
    cr_assert_eq(conc_cond_wait_r(NULL, &rl, 0), -EINVAL);
    cr_assert_eq(conc_cond_wait_r(&c, NULL, 0), -EINVAL);
    cr_assert_eq(conc_cond_wait_r_until(&c, NULL, 0), -EINVAL);
    cr_assert_eq(conc_cond_wait_for_r(&c, &rl, NULL, NULL, 0), -EINVAL);
    cr_assert_eq(conc_cond_wait_for_r_until(&c, &rl, NULL, NULL, 0), -EINVAL);
    for (size_t i = 0; i < N_BAD_TIMEOUTS; i++)
        cr_assert_eq(conc_cond_wait_r(&c, &rl, bad_timeouts[i]), -EINVAL, "timeout %g", bad_timeouts[i]);
    cr_assert_eq(conc_rlock_depth(&rl), 1);
    cr_assert_eq(conc_rlock_release(&rl), 0);
    cr_assert_eq(conc_cond_notify_all(&c), 0, "a rejected wait left a waiter behind");
}

Test(cond, notify_without_waiters, .timeout = 30)
{
    conc_cond c = CONC_COND_INIT;
    conc_lock l = CONC_LOCK_INIT;
    cr_assert_eq(conc_cond_notify(&c, 1), 0);
    cr_assert_eq(conc_cond_notify(&c, 100), 0);
    cr_assert_eq(conc_cond_notify(&c, 0), 0);
    cr_assert_eq(conc_cond_notify_all(&c), 0);
    /* notifications are not remembered for later waiters */
    cr_assert_eq(conc_lock_acquire(&l, CONC_FOREVER), 0);
    cr_assert_eq(conc_cond_notify(&c, 5), 0);
    cr_assert_eq(conc_cond_wait(&c, &l, 0.02), -ETIMEDOUT);
    cr_assert(conc_lock_held(&l));
    cr_assert_eq(conc_lock_release(&l), 0);
}

Test(cond, wait_timeout_reacquires, .timeout = 30)
{
    conc_cond c = CONC_COND_INIT;
    conc_lock l = CONC_LOCK_INIT;
    cr_assert_eq(conc_lock_acquire(&l, CONC_FOREVER), 0);

    int64_t t0 = conc_now();
    cr_assert_eq(conc_cond_wait(&c, &l, 0.05), -ETIMEDOUT);
    cr_assert_geq(conc_now() - t0, 50000000LL);
    cr_assert(conc_lock_held(&l));

    cr_assert_eq(conc_cond_wait(&c, &l, 0), -ETIMEDOUT); /* not -EAGAIN: Python returns False */
    cr_assert(conc_lock_held(&l));
    cr_assert_eq(conc_cond_wait_until(&c, &l, conc_now() - 1), -ETIMEDOUT);
    cr_assert(conc_lock_held(&l));
    int64_t d = conc_now() + 20000000LL;
    cr_assert_eq(conc_cond_wait_until(&c, &l, d), -ETIMEDOUT);
    cr_assert_geq(conc_now(), d);
    cr_assert(conc_lock_held(&l));
    cr_assert_eq(conc_lock_release(&l), 0);
    cr_assert_eq(conc_lock_release(&l), -EPERM, "the lock was held twice");

    conc_rlock rl = CONC_RLOCK_INIT;
    for (int i = 0; i < 3; i++)
        cr_assert_eq(conc_rlock_acquire(&rl, CONC_FOREVER), 0);
    t0 = conc_now();
    cr_assert_eq(conc_cond_wait_r(&c, &rl, 0.03), -ETIMEDOUT);
    cr_assert_geq(conc_now() - t0, 30000000LL);
    cr_assert_eq(conc_rlock_depth(&rl), 3);
    cr_assert_eq(conc_cond_wait_r(&c, &rl, 0), -ETIMEDOUT);
    cr_assert_eq(conc_rlock_depth(&rl), 3);
    cr_assert_eq(conc_cond_wait_r_until(&c, &rl, conc_now() - 1), -ETIMEDOUT);
    cr_assert_eq(conc_rlock_depth(&rl), 3);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(conc_rlock_release(&rl), 0);
    cr_assert(!conc_rlock_is_owned(&rl));
}

/* The lock is really released during a timed wait: another thread can take
 * it meanwhile. */
struct grabber {
    conc_lock *l;
    conc_rlock *rl;
    int rc;
};

static void *grabber_fn(void *p)
{
    struct grabber *g = p;
    if (g->rl) {
        g->rc = conc_rlock_acquire(g->rl, 20.0);
        if (g->rc == 0)
            conc_rlock_release(g->rl);
    } else {
        g->rc = conc_lock_acquire(g->l, 20.0);
        if (g->rc == 0)
            conc_lock_release(g->l);
    }
    return NULL;
}

Test(cond, wait_releases_the_lock, .timeout = 30)
{
    conc_cond c = CONC_COND_INIT;
    conc_lock l = CONC_LOCK_INIT;
    cr_assert_eq(conc_lock_acquire(&l, CONC_FOREVER), 0);
    struct grabber g = { .l = &l };
    pthread_t t = spawn(grabber_fn, &g);
    /* the grabber can only finish while we wait */
    while (pthread_tryjoin_np(t, NULL) == EBUSY)
        cr_assert_eq(conc_cond_wait(&c, &l, 0.01), -ETIMEDOUT);
    cr_assert_eq(g.rc, 0);
    cr_assert(conc_lock_held(&l));
    cr_assert_eq(conc_lock_release(&l), 0);

    conc_rlock rl = CONC_RLOCK_INIT;
    for (int i = 0; i < 3; i++)
        cr_assert_eq(conc_rlock_acquire(&rl, CONC_FOREVER), 0);
    struct grabber h = { .rl = &rl };
    t = spawn(grabber_fn, &h);
    while (pthread_tryjoin_np(t, NULL) == EBUSY)
        cr_assert_eq(conc_cond_wait_r(&c, &rl, 0.01), -ETIMEDOUT);
    cr_assert_eq(h.rc, 0);
    cr_assert_eq(conc_rlock_depth(&rl), 3);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(conc_rlock_release(&rl), 0);
}

/* ---- notify counts */

struct cwaiter {
    conc_cond *c;
    conc_lock *l;
    conc_rlock *rl;
    unsigned depth;       /* rlock levels to hold while waiting */
    int *ready;           /* protected by the lock */
    atomic_int *woken;
    int rc;
    bool held_after;
    unsigned depth_after;
};

static void *cwaiter_fn(void *p)
{
    struct cwaiter *a = p;
    if (a->rl) {
        for (unsigned d = 0; d < a->depth; d++)
            conc_rlock_acquire(a->rl, CONC_FOREVER);
        (*a->ready)++;
        a->rc = conc_cond_wait_r(a->c, a->rl, CONC_FOREVER);
        a->held_after = conc_rlock_is_owned(a->rl);
        a->depth_after = conc_rlock_depth(a->rl);
        atomic_fetch_add(a->woken, 1);
        for (unsigned d = 0; d < a->depth_after; d++)
            conc_rlock_release(a->rl);
    } else {
        conc_lock_acquire(a->l, CONC_FOREVER);
        (*a->ready)++;
        a->rc = conc_cond_wait(a->c, a->l, CONC_FOREVER);
        a->held_after = conc_lock_held(a->l);
        atomic_fetch_add(a->woken, 1);
        if (a->held_after)
            conc_lock_release(a->l);
    }
    return NULL;
}

/* Acquire the lock and keep it once `n` waiters have announced themselves.
 * Each waiter announces under the lock and then waits, which releases it:
 * when we hold the lock and see n, all n are registered as waiting. */
static void lock_when_ready(conc_lock *l, conc_rlock *rl, int *ready, int n)
{
    int64_t end = conc_now() + GUARD_NS;
    for (;;) {
        if (rl)
            cr_assert_eq(conc_rlock_acquire(rl, CONC_FOREVER), 0);
        else
            cr_assert_eq(conc_lock_acquire(l, CONC_FOREVER), 0);
        if (*ready == n)
            return;
        if (rl)
            cr_assert_eq(conc_rlock_release(rl), 0);
        else
            cr_assert_eq(conc_lock_release(l), 0);
        cr_assert_lt(conc_now(), end, "waiters never got ready");
        usleep(1000);
    }
}

static void unlock_either(conc_lock *l, conc_rlock *rl)
{
    if (rl)
        cr_assert_eq(conc_rlock_release(rl), 0);
    else
        cr_assert_eq(conc_lock_release(l), 0);
}

static void run_notify_exact(bool use_rlock)
{
    enum { N = 8 };
    conc_cond c = CONC_COND_INIT;
    conc_lock l = CONC_LOCK_INIT;
    conc_rlock rl = CONC_RLOCK_INIT;
    conc_rlock *rlp = use_rlock ? &rl : NULL;
    int ready = 0;
    atomic_int woken = 0;
    struct cwaiter a[N];
    pthread_t t[N];
    pid_t tid[N];
    for (int i = 0; i < N; i++) {
        a[i] = (struct cwaiter){ .c = &c, .l = &l, .rl = rlp, .depth = 1 + i % 3,
                                 .ready = &ready, .woken = &woken };
        t[i] = spawn_tid(cwaiter_fn, &a[i], &tid[i]);
    }
    lock_when_ready(&l, rlp, &ready, N);
    cr_assert_eq(conc_cond_notify(&c, 3), 3);
    unlock_either(&l, rlp);

    /* a woken waiter counts itself and exits; the others must sleep again */
    WAIT_FOR(atomic_load(&woken) >= 3);
    wait_threads_quiet(tid, N);
    cr_assert_eq(atomic_load(&woken), 3, "notify(3) woke %d threads", atomic_load(&woken));

    lock_when_ready(&l, rlp, &ready, N);
    cr_assert_eq(conc_cond_notify(&c, 1), 1);
    unlock_either(&l, rlp);
    WAIT_FOR(atomic_load(&woken) >= 4);
    wait_threads_quiet(tid, N);
    cr_assert_eq(atomic_load(&woken), 4, "notify(1) woke more than one");

    lock_when_ready(&l, rlp, &ready, N);
    cr_assert_eq(conc_cond_notify_all(&c), N - 4);
    cr_assert_eq(conc_cond_notify_all(&c), 0, "woken waiters were counted twice");
    unlock_either(&l, rlp);
    for (int i = 0; i < N; i++) {
        join(t[i]);
        cr_assert_eq(a[i].rc, 0, "waiter %d: %s", i, conc_errname(a[i].rc));
        cr_assert(a[i].held_after, "waiter %d returned without the lock", i);
        if (use_rlock)
            cr_assert_eq(a[i].depth_after, a[i].depth, "waiter %d: depth %u, expected %u", i,
                         a[i].depth_after, a[i].depth);
    }
    cr_assert_eq(atomic_load(&woken), N);
    cr_assert_eq(conc_cond_notify_all(&c), 0);
    /* every waiter gave the lock back */
    if (use_rlock) {
        cr_assert_eq(conc_rlock_acquire(&rl, 0), 0);
        cr_assert_eq(conc_rlock_release(&rl), 0);
    } else {
        cr_assert_eq(conc_lock_acquire(&l, 0), 0);
        cr_assert_eq(conc_lock_release(&l), 0);
    }
}

Test(cond, notify_wakes_exactly_n_lock, .timeout = 30)
{
    run_notify_exact(false);
}

Test(cond, notify_wakes_exactly_n_rlock, .timeout = 30)
{
    run_notify_exact(true);
}

Test(cond, notify_more_than_waiting, .timeout = 30)
{
    enum { N = 3 };
    conc_cond c = CONC_COND_INIT;
    conc_lock l = CONC_LOCK_INIT;
    int ready = 0;
    atomic_int woken = 0;
    struct cwaiter a[N];
    pthread_t t[N];
    for (int i = 0; i < N; i++) {
        a[i] = (struct cwaiter){ .c = &c, .l = &l, .ready = &ready, .woken = &woken };
        t[i] = spawn(cwaiter_fn, &a[i]);
    }
    lock_when_ready(&l, NULL, &ready, N);
    cr_assert_eq(conc_cond_notify(&c, 10), N);
    cr_assert_eq(conc_cond_notify(&c, 10), 0);
    cr_assert_eq(conc_lock_release(&l), 0);
    for (int i = 0; i < N; i++) {
        join(t[i]);
        cr_assert_eq(a[i].rc, 0);
    }
}

/* A wake-up belongs to the threads that were waiting when notify was
 * called: a thread that starts waiting afterwards must not take it (it was
 * not counted), and every counted waiter returns. */
static void run_notify_not_stolen(unsigned nwaiters, unsigned n)
{
    conc_cond c = CONC_COND_INIT;
    conc_lock l = CONC_LOCK_INIT;
    int ready = 0;
    atomic_int woken = 0;
    struct cwaiter a[8];
    pthread_t t[8];
    pid_t tid[8];
    for (unsigned i = 0; i < nwaiters; i++) {
        a[i] = (struct cwaiter){ .c = &c, .l = &l, .ready = &ready, .woken = &woken };
        t[i] = spawn_tid(cwaiter_fn, &a[i], &tid[i]);
    }
    lock_when_ready(&l, NULL, &ready, (int)nwaiters);
    int k = n ? conc_cond_notify(&c, n) : conc_cond_notify_all(&c);
    unsigned expect = n && n < nwaiters ? n : nwaiters;
    cr_assert_eq(k, (int)expect);
    /* we start waiting right after the notify: nobody notifies us */
    cr_assert_eq(conc_cond_wait(&c, &l, 0), -ETIMEDOUT,
                 "a wait that began after notify took a wake-up meant for earlier waiters");
    cr_assert_eq(conc_cond_wait(&c, &l, 0.02), -ETIMEDOUT,
                 "a wait that began after notify took a wake-up meant for earlier waiters");
    cr_assert(conc_lock_held(&l));
    cr_assert_eq(conc_lock_release(&l), 0);
    WAIT_FOR(atomic_load(&woken) >= (int)expect);
    wait_threads_quiet(tid, (int)nwaiters);
    cr_assert_eq(atomic_load(&woken), (int)expect);
    cr_assert_eq(conc_lock_acquire(&l, CONC_FOREVER), 0);
    cr_assert_eq(conc_cond_notify_all(&c), (int)(nwaiters - expect));
    cr_assert_eq(conc_lock_release(&l), 0);
    for (unsigned i = 0; i < nwaiters; i++) {
        join(t[i]);
        cr_assert_eq(a[i].rc, 0);
    }
}

Test(cond, wakeups_not_taken_by_later_waiters, .timeout = 30)
{
    for (int round = 0; round < 3; round++) {
        run_notify_not_stolen(4, 0);
        run_notify_not_stolen(1, 1);
        run_notify_not_stolen(4, 2);
    }
}

Test(cond, notify_zero_wakes_nobody, .timeout = 30)
{
    conc_cond c = CONC_COND_INIT;
    conc_lock l = CONC_LOCK_INIT;
    int ready = 0;
    atomic_int woken = 0;
    struct cwaiter a = { .c = &c, .l = &l, .ready = &ready, .woken = &woken };
    pid_t tid;
    pthread_t t = spawn_tid(cwaiter_fn, &a, &tid);
    lock_when_ready(&l, NULL, &ready, 1);
    cr_assert_eq(conc_cond_notify(&c, 0), 0);
    cr_assert_eq(conc_lock_release(&l), 0);
    wait_threads_quiet(&tid, 1);
    cr_assert_eq(atomic_load(&woken), 0);
    cr_assert_eq(conc_lock_acquire(&l, CONC_FOREVER), 0);
    cr_assert_eq(conc_cond_notify(&c, 1), 1);
    cr_assert_eq(conc_lock_release(&l), 0);
    join(t);
    cr_assert_eq(a.rc, 0);
}

/* RLock at depth 3: every level is released during the wait (another
 * thread can take the RLock) and restored afterwards. */
struct rdeep {
    conc_cond *c;
    conc_rlock *rl;
    int ready;
    int rc;
    unsigned depth_after;
    bool owned_after;
    int rc_extra_release;
};

static void *rdeep_fn(void *p)
{
    struct rdeep *a = p;
    for (int i = 0; i < 3; i++)
        conc_rlock_acquire(a->rl, CONC_FOREVER);
    a->ready = 1;
    a->rc = conc_cond_wait_r(a->c, a->rl, CONC_FOREVER);
    a->depth_after = conc_rlock_depth(a->rl);
    a->owned_after = conc_rlock_is_owned(a->rl);
    for (int i = 0; i < 3; i++)
        conc_rlock_release(a->rl);
    a->rc_extra_release = conc_rlock_release(a->rl);
    return NULL;
}

Test(cond, rlock_depth_restored_after_wait, .timeout = 30)
{
    conc_cond c = CONC_COND_INIT;
    conc_rlock rl = CONC_RLOCK_INIT;
    struct rdeep a = { .c = &c, .rl = &rl };
    pthread_t t = spawn(rdeep_fn, &a);
    /* taking the RLock at all proves the waiter released all three levels */
    int64_t end = conc_now() + GUARD_NS;
    for (;;) {
        cr_assert_eq(conc_rlock_acquire(&rl, CONC_FOREVER), 0);
        if (a.ready)
            break;
        cr_assert_eq(conc_rlock_release(&rl), 0);
        cr_assert_lt(conc_now(), end);
        usleep(1000);
    }
    cr_assert_eq(conc_rlock_depth(&rl), 1);
    cr_assert_eq(conc_cond_notify(&c, 1), 1);
    cr_assert_eq(conc_rlock_release(&rl), 0);
    join(t);
    cr_assert_eq(a.rc, 0);
    cr_assert(a.owned_after);
    cr_assert_eq(a.depth_after, 3);
    cr_assert_eq(a.rc_extra_release, -EPERM);
    cr_assert_eq(conc_rlock_acquire(&rl, 0), 0);
    cr_assert_eq(conc_rlock_release(&rl), 0);
}

/* ---- wait_for */

struct flag_state {
    int value;     /* protected by the lock */
    int want;
    int calls;     /* predicate calls, protected by the lock */
    conc_lock *l;
    conc_rlock *rl;
    bool bad;      /* predicate ran without the lock */
};

static int pred_value_reached(void *arg)
{
    struct flag_state *s = arg;
    s->calls++;
    if (s->rl ? !conc_rlock_is_owned(s->rl) : !conc_lock_held(s->l))
        s->bad = true;
    return s->value >= s->want;
}

Test(cond, wait_for_true_at_once, .timeout = 30)
{
    conc_cond c = CONC_COND_INIT;
    conc_lock l = CONC_LOCK_INIT;
    struct flag_state s = { .value = 1, .want = 1, .l = &l };
    cr_assert_eq(conc_lock_acquire(&l, CONC_FOREVER), 0);
    cr_assert_eq(conc_cond_wait_for(&c, &l, pred_value_reached, &s, 0), 0);
    cr_assert_eq(s.calls, 1);
    cr_assert_eq(conc_cond_wait_for(&c, &l, pred_value_reached, &s, CONC_FOREVER), 0);
    cr_assert_eq(s.calls, 2);
    cr_assert_eq(conc_cond_wait_for_until(&c, &l, pred_value_reached, &s, conc_now() - NS), 0);
    cr_assert_eq(s.calls, 3);
    cr_assert(!s.bad);
    cr_assert(conc_lock_held(&l));
    cr_assert_eq(conc_lock_release(&l), 0);

    conc_rlock rl = CONC_RLOCK_INIT;
    struct flag_state r = { .value = 5, .want = 2, .rl = &rl };
    cr_assert_eq(conc_rlock_acquire(&rl, CONC_FOREVER), 0);
    cr_assert_eq(conc_rlock_acquire(&rl, CONC_FOREVER), 0);
    cr_assert_eq(conc_cond_wait_for_r(&c, &rl, pred_value_reached, &r, 0), 0);
    cr_assert_eq(conc_cond_wait_for_r_until(&c, &rl, pred_value_reached, &r, CONC_NO_DEADLINE), 0);
    cr_assert_eq(r.calls, 2);
    cr_assert(!r.bad);
    cr_assert_eq(conc_rlock_depth(&rl), 2);
    cr_assert_eq(conc_rlock_release(&rl), 0);
    cr_assert_eq(conc_rlock_release(&rl), 0);
}

Test(cond, wait_for_times_out, .timeout = 30)
{
    conc_cond c = CONC_COND_INIT;
    conc_lock l = CONC_LOCK_INIT;
    struct flag_state s = { .value = 0, .want = 1, .l = &l };
    cr_assert_eq(conc_lock_acquire(&l, CONC_FOREVER), 0);
    int64_t t0 = conc_now();
    cr_assert_eq(conc_cond_wait_for(&c, &l, pred_value_reached, &s, 0.05), -ETIMEDOUT);
    cr_assert_geq(conc_now() - t0, 50000000LL);
    cr_assert_geq(s.calls, 1);
    cr_assert(conc_lock_held(&l));
    s.calls = 0;
    cr_assert_eq(conc_cond_wait_for(&c, &l, pred_value_reached, &s, 0), -ETIMEDOUT);
    cr_assert_geq(s.calls, 1);
    cr_assert(conc_lock_held(&l));
    cr_assert_eq(conc_cond_wait_for_until(&c, &l, pred_value_reached, &s, conc_now() - 1),
                 -ETIMEDOUT);
    cr_assert(conc_lock_held(&l));
    cr_assert(!s.bad);
    cr_assert_eq(conc_lock_release(&l), 0);

    conc_rlock rl = CONC_RLOCK_INIT;
    struct flag_state r = { .value = 0, .want = 1, .rl = &rl };
    for (int i = 0; i < 3; i++)
        cr_assert_eq(conc_rlock_acquire(&rl, CONC_FOREVER), 0);
    t0 = conc_now();
    cr_assert_eq(conc_cond_wait_for_r(&c, &rl, pred_value_reached, &r, 0.03), -ETIMEDOUT);
    cr_assert_geq(conc_now() - t0, 30000000LL);
    cr_assert_eq(conc_cond_wait_for_r(&c, &rl, pred_value_reached, &r, 0), -ETIMEDOUT);
    cr_assert_eq(conc_rlock_depth(&rl), 3);
    cr_assert(!r.bad);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(conc_rlock_release(&rl), 0);
}

struct stepper {
    conc_cond *c;
    struct flag_state *s;
    int steps;
    pid_t waiter_tid;       /* each step waits until this thread sleeps */
    bool lost;              /* it never did */
};

/* Raise the value one step at a time, notifying after each step: the
 * waiter's predicate is false after the first wake-ups, true at the last. */
static void *stepper_fn(void *p)
{
    struct stepper *a = p;
    for (int i = 0; i < a->steps; i++) {
        if (!await_task_blocked(getpid(), a->waiter_tid, BLOCKED_GUARD)) {
            a->lost = true;
            return NULL;
        }
        if (a->s->rl) {
            conc_rlock_acquire(a->s->rl, CONC_FOREVER);
            a->s->value++;
            conc_cond_notify_all(a->c);
            conc_rlock_release(a->s->rl);
        } else {
            conc_lock_acquire(a->s->l, CONC_FOREVER);
            a->s->value++;
            conc_cond_notify_all(a->c);
            conc_lock_release(a->s->l);
        }
    }
    return NULL;
}

Test(cond, wait_for_becomes_true_later, .timeout = 30)
{
    conc_cond c = CONC_COND_INIT;
    conc_lock l = CONC_LOCK_INIT;
    struct flag_state s = { .value = 0, .want = 3, .l = &l };
    struct stepper st = { .c = &c, .s = &s, .steps = 5, .waiter_tid = gettid() };
    cr_assert_eq(conc_lock_acquire(&l, CONC_FOREVER), 0);
    pthread_t t = spawn(stepper_fn, &st);
    cr_assert_eq(conc_cond_wait_for(&c, &l, pred_value_reached, &s, CONC_FOREVER), 0);
    cr_assert(conc_lock_held(&l));
    cr_assert_geq(s.value, 3);
    cr_assert_geq(s.calls, 2);
    cr_assert(!s.bad);
    /* a timed wait_for that succeeds before its timeout */
    s.want = 5;
    cr_assert_eq(conc_cond_wait_for(&c, &l, pred_value_reached, &s, 20.0), 0);
    cr_assert_eq(s.value, 5);
    cr_assert_eq(conc_lock_release(&l), 0);
    join(t);
    cr_assert(!st.lost, "the waiter never slept between steps");

    conc_rlock rl = CONC_RLOCK_INIT;
    struct flag_state r = { .value = 0, .want = 2, .rl = &rl };
    struct stepper rt = { .c = &c, .s = &r, .steps = 2, .waiter_tid = gettid() };
    cr_assert_eq(conc_rlock_acquire(&rl, CONC_FOREVER), 0);
    cr_assert_eq(conc_rlock_acquire(&rl, CONC_FOREVER), 0);
    t = spawn(stepper_fn, &rt);
    cr_assert_eq(conc_cond_wait_for_r_until(&c, &rl, pred_value_reached, &r, CONC_NO_DEADLINE), 0);
    cr_assert_eq(r.value, 2);
    cr_assert_eq(conc_rlock_depth(&rl), 2);
    cr_assert(!r.bad);
    cr_assert_eq(conc_rlock_release(&rl), 0);
    cr_assert_eq(conc_rlock_release(&rl), 0);
    join(t);
    cr_assert(!rt.lost, "the waiter never slept between steps");
}

Test(cond, wait_for_without_lock_is_eperm, .timeout = 30)
{
    conc_cond c = CONC_COND_INIT;
    conc_lock l = CONC_LOCK_INIT;
    conc_rlock rl = CONC_RLOCK_INIT;
    int calls = 0;
    cr_assert_eq(conc_cond_wait_for(&c, &l, pred_true_counting, &calls, CONC_FOREVER), -EPERM);
    cr_assert_eq(conc_cond_wait_for_until(&c, &l, pred_true_counting, &calls, 0), -EPERM);
    cr_assert_eq(conc_cond_wait_for_r(&c, &rl, pred_true_counting, &calls, 0), -EPERM);
    cr_assert_eq(conc_cond_wait_for_r_until(&c, &rl, pred_true_counting, &calls, 0), -EPERM);
    cr_assert_eq(calls, 0);
    cr_assert(!conc_lock_locked(&l));
    cr_assert(!conc_rlock_is_owned(&rl));
}

/* ---- signals during a condition wait: no spurious return */

Test(cond, signals_do_not_wake_waiter, .timeout = 30)
{
    install_handler();
    conc_cond c = CONC_COND_INIT;
    conc_lock l = CONC_LOCK_INIT;
    int ready = 0;
    atomic_int woken = 0;
    struct cwaiter a = { .c = &c, .l = &l, .ready = &ready, .woken = &woken };
    pid_t tid;
    pthread_t t = spawn_tid(cwaiter_fn, &a, &tid);
    lock_when_ready(&l, NULL, &ready, 1);
    cr_assert_eq(conc_lock_release(&l), 0);
    wait_thread_blocked(tid, BLOCKED_GUARD);
    pester(t, 20);
    wait_thread_blocked(tid, BLOCKED_GUARD);      /* asleep again, not returned */
    cr_assert_eq(atomic_load(&woken), 0, "a signal woke a condition waiter (rc %d)", a.rc);
    cr_assert_eq(conc_lock_acquire(&l, CONC_FOREVER), 0);
    cr_assert_eq(conc_cond_notify(&c, 1), 1);
    cr_assert_eq(conc_lock_release(&l), 0);
    join(t);
    cr_assert_eq(a.rc, 0);
}

/* ---- stress: bounded buffer, two conditions sharing one lock */

#define BB_CAP 8
#define BB_PRODUCERS 4
#define BB_CONSUMERS 4
#define BB_PER_PRODUCER 5000
#define BB_TOTAL (BB_PRODUCERS * BB_PER_PRODUCER)

struct bbuf {
    conc_lock lock;
    conc_cond not_full, not_empty;
    long buf[BB_CAP];
    int head, count;
    long taken;
    unsigned char seen[BB_TOTAL + 1];
};

struct bb_worker {
    struct bbuf *b;
    int id;
    long sum, n;
    int err;
};

static int bb_can_take(void *arg)
{
    struct bbuf *b = arg;
    return b->count > 0 || b->taken == BB_TOTAL;
}

static void *bb_producer(void *p)
{
    struct bb_worker *w = p;
    struct bbuf *b = w->b;
    for (int k = 0; k < BB_PER_PRODUCER; k++) {
        long v = (long)w->id * BB_PER_PRODUCER + k + 1;
        int rc = conc_lock_acquire(&b->lock, CONC_FOREVER);
        if (rc) {
            w->err = rc;
            return NULL;
        }
        while (b->count == BB_CAP) {
            /* odd producers use a short timeout and retry: exercises the
             * timed path racing with notifications */
            rc = conc_cond_wait(&b->not_full, &b->lock, (w->id & 1) ? 0.001 : CONC_FOREVER);
            if (rc && rc != -ETIMEDOUT) {
                w->err = rc;
                conc_lock_release(&b->lock);
                return NULL;
            }
            if (!conc_lock_held(&b->lock)) {
                w->err = -1000;
                return NULL;
            }
        }
        b->buf[(b->head + b->count) % BB_CAP] = v;
        b->count++;
        rc = conc_cond_notify(&b->not_empty, 1);
        if (rc < 0 || rc > 1)
            w->err = rc < 0 ? rc : -1001;
        conc_lock_release(&b->lock);
        w->sum += v;
        w->n++;
        if (w->err)
            return NULL;
    }
    return NULL;
}

static void *bb_consumer(void *p)
{
    struct bb_worker *w = p;
    struct bbuf *b = w->b;
    for (;;) {
        int rc = conc_lock_acquire(&b->lock, CONC_FOREVER);
        if (rc) {
            w->err = rc;
            return NULL;
        }
        if (w->id & 1) {
            rc = conc_cond_wait_for(&b->not_empty, &b->lock, bb_can_take, b, CONC_FOREVER);
        } else {
            rc = 0;
            while (rc == 0 && b->count == 0 && b->taken < BB_TOTAL)
                rc = conc_cond_wait(&b->not_empty, &b->lock, CONC_FOREVER);
        }
        if (rc) {
            w->err = rc;
            conc_lock_release(&b->lock);
            return NULL;
        }
        if (b->count == 0) { /* everything was taken */
            conc_lock_release(&b->lock);
            return NULL;
        }
        long v = b->buf[b->head];
        b->head = (b->head + 1) % BB_CAP;
        b->count--;
        b->taken++;
        if (v >= 1 && v <= BB_TOTAL)
            b->seen[v]++;
        else
            w->err = -1002;
        if (b->taken == BB_TOTAL)
            conc_cond_notify_all(&b->not_empty);
        conc_cond_notify(&b->not_full, 1);
        conc_lock_release(&b->lock);
        w->sum += v;
        w->n++;
        if (w->err)
            return NULL;
    }
}

Test(cond, bounded_buffer_stress, .timeout = 30)
{
    static struct bbuf b = {
        .lock = CONC_LOCK_INIT, .not_full = CONC_COND_INIT, .not_empty = CONC_COND_INIT,
    };
    struct bb_worker prod[BB_PRODUCERS], cons[BB_CONSUMERS];
    pthread_t tp[BB_PRODUCERS], tc[BB_CONSUMERS];
    for (int i = 0; i < BB_CONSUMERS; i++) {
        cons[i] = (struct bb_worker){ .b = &b, .id = i };
        tc[i] = spawn(bb_consumer, &cons[i]);
    }
    for (int i = 0; i < BB_PRODUCERS; i++) {
        prod[i] = (struct bb_worker){ .b = &b, .id = i };
        tp[i] = spawn(bb_producer, &prod[i]);
    }
    long psum = 0, pn = 0, csum = 0, cn = 0;
    for (int i = 0; i < BB_PRODUCERS; i++) {
        join(tp[i]);
        cr_assert_eq(prod[i].err, 0, "producer %d: %d", i, prod[i].err);
        psum += prod[i].sum;
        pn += prod[i].n;
    }
    for (int i = 0; i < BB_CONSUMERS; i++) {
        join(tc[i]);
        cr_assert_eq(cons[i].err, 0, "consumer %d: %d", i, cons[i].err);
        csum += cons[i].sum;
        cn += cons[i].n;
    }
    const long n = BB_TOTAL;
    cr_assert_eq(pn, n);
    cr_assert_eq(cn, n);
    cr_assert_eq(psum, n * (n + 1) / 2);
    cr_assert_eq(csum, n * (n + 1) / 2);
    cr_assert_eq(b.taken, n);
    cr_assert_eq(b.count, 0);
    for (long v = 1; v <= n; v++)
        cr_assert_eq(b.seen[v], 1, "item %ld seen %d times", v, b.seen[v]);
    cr_assert_eq(conc_cond_notify_all(&b.not_full), 0);
    cr_assert_eq(conc_cond_notify_all(&b.not_empty), 0);
}

/* ---- stress: notify's count matches the waiters that returned 0, even
 * when timeouts race with notifications */

#define NC_WAITERS 6
#define NC_ROUNDS 300

struct ncount {
    conc_cond c;
    conc_lock l;
    conc_rlock rl;
    bool use_rlock;
    atomic_long woken, timeouts;
    long notified;            /* under the lock */
    atomic_int done;
    atomic_int err;
};

static void *nc_waiter(void *p)
{
    struct ncount *s = p;
    for (int r = 0; r < NC_ROUNDS; r++) {
        int rc;
        bool held;
        double to = (r % 4 == 0) ? 0 : 0.002;
        if (s->use_rlock) {
            conc_rlock_acquire(&s->rl, CONC_FOREVER);
            conc_rlock_acquire(&s->rl, CONC_FOREVER);
            rc = conc_cond_wait_r(&s->c, &s->rl, to);
            held = conc_rlock_depth(&s->rl) == 2;
            conc_rlock_release(&s->rl);
            conc_rlock_release(&s->rl);
        } else {
            conc_lock_acquire(&s->l, CONC_FOREVER);
            rc = conc_cond_wait(&s->c, &s->l, to);
            held = conc_lock_held(&s->l);
            conc_lock_release(&s->l);
        }
        if (rc == 0)
            atomic_fetch_add(&s->woken, 1);
        else if (rc == -ETIMEDOUT)
            atomic_fetch_add(&s->timeouts, 1);
        else
            atomic_store(&s->err, rc);
        if (!held)
            atomic_store(&s->err, -1000);
    }
    atomic_fetch_add(&s->done, 1);
    return NULL;
}

static void *nc_notifier(void *p)
{
    struct ncount *s = p;
    for (unsigned i = 0; atomic_load(&s->done) < NC_WAITERS; i++) {
        int n;
        if (s->use_rlock)
            conc_rlock_acquire(&s->rl, CONC_FOREVER);
        else
            conc_lock_acquire(&s->l, CONC_FOREVER);
        n = (i % 7 == 0) ? conc_cond_notify_all(&s->c) : conc_cond_notify(&s->c, 1 + i % 3);
        if (n < 0 || (i % 7 != 0 && n > (int)(1 + i % 3)) || n > NC_WAITERS)
            atomic_store(&s->err, n < 0 ? n : -1001);
        else
            s->notified += n;
        if (s->use_rlock)
            conc_rlock_release(&s->rl);
        else
            conc_lock_release(&s->l);
        if (i % 3 == 0)
            usleep(100);
        else
            sched_yield();
    }
    return NULL;
}

static void run_notify_count_stress(bool use_rlock)
{
    static struct ncount s;
    memset(&s, 0, sizeof s);
    cr_assert_eq(conc_cond_init(&s.c, 0), 0);
    cr_assert_eq(conc_lock_init(&s.l, 0), 0);
    cr_assert_eq(conc_rlock_init(&s.rl, 0), 0);
    s.use_rlock = use_rlock;
    pthread_t tw[NC_WAITERS], tn[2];
    for (int i = 0; i < NC_WAITERS; i++)
        tw[i] = spawn(nc_waiter, &s);
    for (int i = 0; i < 2; i++)
        tn[i] = spawn(nc_notifier, &s);
    for (int i = 0; i < NC_WAITERS; i++)
        join(tw[i]);
    for (int i = 0; i < 2; i++)
        join(tn[i]);
    cr_assert_eq(atomic_load(&s.err), 0, "error %d", atomic_load(&s.err));
    cr_assert_eq(atomic_load(&s.woken) + atomic_load(&s.timeouts), (long)NC_WAITERS * NC_ROUNDS);
    cr_assert_eq(s.notified, atomic_load(&s.woken),
                 "notify reported %ld wake-ups but %ld waiters returned 0", s.notified,
                 atomic_load(&s.woken));
    cr_assert_eq(conc_cond_notify_all(&s.c), 0);
}

Test(cond, notify_count_matches_wakeups_stress_lock, .timeout = 30)
{
    run_notify_count_stress(false);
}

Test(cond, notify_count_matches_wakeups_stress_rlock, .timeout = 30)
{
    run_notify_count_stress(true);
}

/* ---- stress: a barrier built on one Condition, as Python builds
 * threading.Barrier: the last arrival of a generation bumps it and calls
 * notify_all; the others wait_for the generation to change.  Progress needs
 * every thread counted by a notify_all to return, whoever else starts
 * waiting meanwhile (a thread of the next generation taking the wake-up of
 * a slow thread of the previous one would deadlock the next round). */

#define GB_THREADS 4
#define GB_ROUNDS 2000

struct genbar {
    conc_lock l;
    conc_cond c;
    int arrived;     /* under l */
    long gen;        /* under l */
};

struct gb_arg {
    struct genbar *g;
    long my_gen;
    int err;
};

static int gen_moved(void *p)
{
    struct gb_arg *a = p;
    return a->g->gen != a->my_gen;
}

static void *gb_fn(void *p)
{
    struct gb_arg *a = p;
    struct genbar *g = a->g;
    for (int r = 0; r < GB_ROUNDS; r++) {
        conc_lock_acquire(&g->l, CONC_FOREVER);
        a->my_gen = g->gen;
        if (a->my_gen != r)
            a->err = -1000;
        if (++g->arrived == GB_THREADS) {
            g->arrived = 0;
            g->gen++;
            int n = conc_cond_notify_all(&g->c);
            if (n != GB_THREADS - 1)
                a->err = n < 0 ? n : -1001;
        } else {
            int rc = conc_cond_wait_for(&g->c, &g->l, gen_moved, a, CONC_FOREVER);
            if (rc)
                a->err = rc;
        }
        conc_lock_release(&g->l);
        if (a->err)
            return NULL;
    }
    return NULL;
}

Test(cond, generation_barrier_stress, .timeout = 30)
{
    static struct genbar g = { .l = CONC_LOCK_INIT, .c = CONC_COND_INIT };
    struct gb_arg a[GB_THREADS];
    pthread_t t[GB_THREADS];
    for (int i = 0; i < GB_THREADS; i++) {
        a[i] = (struct gb_arg){ .g = &g };
        t[i] = spawn(gb_fn, &a[i]);
    }
    for (int i = 0; i < GB_THREADS; i++) {
        join(t[i]);
        cr_assert_eq(a[i].err, 0, "thread %d: %d", i, a[i].err);
    }
    cr_assert_eq(g.gen, GB_ROUNDS);
}

/* ---- ping-pong over one condition with the shared-flag primitives */

struct turns {
    conc_lock l;
    conc_cond c;
    int turn;     /* whose turn: 0 or 1 */
    int rounds;
    long x;
};

struct turn_arg {
    struct turns *t;
    int me;
    int err;
};

static void *turn_fn(void *p)
{
    struct turn_arg *a = p;
    struct turns *t = a->t;
    for (int i = 0; i < t->rounds; i++) {
        conc_lock_acquire(&t->l, CONC_FOREVER);
        while (t->turn != a->me) {
            int rc = conc_cond_wait(&t->c, &t->l, CONC_FOREVER);
            if (rc) {
                a->err = rc;
                conc_lock_release(&t->l);
                return NULL;
            }
        }
        if (t->x != 2L * i + a->me)
            a->err = -1000;
        t->x++;
        t->turn = !a->me;
        conc_cond_notify(&t->c, 1);
        conc_lock_release(&t->l);
        if (a->err)
            return NULL;
    }
    return NULL;
}

Test(cond, shared_flag_ping_pong, .timeout = 30)
{
    static struct turns t = { .l = CONC_LOCK_INIT_SHARED, .c = CONC_COND_INIT_SHARED,
                              .rounds = 3000 };
    struct turn_arg a0 = { .t = &t, .me = 0 }, a1 = { .t = &t, .me = 1 };
    pthread_t p0 = spawn(turn_fn, &a0), p1 = spawn(turn_fn, &a1);
    join(p0);
    join(p1);
    cr_assert_eq(a0.err, 0, "%d", a0.err);
    cr_assert_eq(a1.err, 0, "%d", a1.err);
    cr_assert_eq(t.x, 2L * t.rounds);
}

/* ============================================================= Barrier */

Test(barrier, init_and_accessors, .timeout = 30)
{
    conc_barrier b;
    cr_assert_eq(conc_barrier_init(&b, 0, 0), -EINVAL);
    cr_assert_eq(conc_barrier_init(NULL, 2, 0), -EINVAL);
    cr_assert_eq(conc_barrier_init(&b, 2, 0x2), -EINVAL);
    cr_assert_eq(conc_barrier_init(&b, 2, 0x80000000u), -EINVAL);
    cr_assert_eq(conc_barrier_init(&b, 2, CONC_SYNC_SHARED), 0);
    cr_assert_eq(conc_barrier_init(&b, 5, 0), 0);
    cr_assert_eq(conc_barrier_parties(&b), 5);
    cr_assert_eq(conc_barrier_n_waiting(&b), 0);
    cr_assert(!conc_barrier_broken(&b));

    conc_barrier s = CONC_BARRIER_INIT(3);
    cr_assert_eq(conc_barrier_parties(&s), 3);
    cr_assert_eq(conc_barrier_n_waiting(&s), 0);
    cr_assert(!conc_barrier_broken(&s));
    conc_barrier sh = CONC_BARRIER_INIT_SHARED(4);
    cr_assert_eq(conc_barrier_parties(&sh), 4);
    cr_assert(!conc_barrier_broken(&sh));

    cr_assert_eq(conc_barrier_wait(NULL, CONC_FOREVER), -EINVAL);
    cr_assert_eq(conc_barrier_wait_until(NULL, CONC_NO_DEADLINE), -EINVAL);
    cr_assert_eq(conc_barrier_wait_action(NULL, CONC_FOREVER, NULL, NULL), -EINVAL);
    cr_assert_eq(conc_barrier_wait_action_until(NULL, CONC_NO_DEADLINE, NULL, NULL), -EINVAL);
    cr_assert_eq(conc_barrier_abort(NULL), -EINVAL);
    cr_assert_eq(conc_barrier_reset(NULL), -EINVAL);
    /* a bad timeout is rejected without entering (or breaking) the barrier */
    for (size_t i = 0; i < N_BAD_TIMEOUTS; i++) {
        cr_assert_eq(conc_barrier_wait(&b, bad_timeouts[i]), -EINVAL, "timeout %g", bad_timeouts[i]);
        cr_assert_eq(conc_barrier_n_waiting(&b), 0);
        cr_assert(!conc_barrier_broken(&b));
    }
}

static int count_action(void *arg)
{
    atomic_fetch_add((atomic_int *)arg, 1);
    return 0;
}

Test(barrier, single_party, .timeout = 30)
{
    conc_barrier b = CONC_BARRIER_INIT(1);
    atomic_int actions = 0;
    for (int i = 0; i < 5; i++) {
        cr_assert_eq(conc_barrier_wait(&b, CONC_FOREVER), 0);
        cr_assert_eq(conc_barrier_wait(&b, 0), 0, "timeout 0 completing the round must succeed");
        cr_assert_eq(conc_barrier_wait_until(&b, conc_now() - NS), 0);
        cr_assert_eq(conc_barrier_wait_action(&b, 0, count_action, &actions), 0);
        cr_assert_eq(conc_barrier_wait_action_until(&b, CONC_NO_DEADLINE, count_action, &actions), 0);
        cr_assert_eq(conc_barrier_wait_action(&b, CONC_FOREVER, NULL, NULL), 0);
    }
    cr_assert_eq(atomic_load(&actions), 10);
    cr_assert(!conc_barrier_broken(&b));
    cr_assert_eq(conc_barrier_n_waiting(&b), 0);
}

/* ---- several rounds: distinct indexes, action once per round by the
 * thread that gets parties-1, before anybody is released */

#define BR_PARTIES 4
#define BR_ROUNDS 200

struct br_round {
    conc_barrier b;
    atomic_int actions;
    pthread_t runner[BR_ROUNDS];
    int idx[BR_ROUNDS][BR_PARTIES];
    int seen_actions[BR_ROUNDS][BR_PARTIES];
    bool ran_action[BR_ROUNDS][BR_PARTIES];
};

struct br_arg {
    struct br_round *r;
    int me;
};

static int round_action(void *arg)
{
    struct br_round *r = arg;
    int n = atomic_fetch_add(&r->actions, 1);
    if (n < BR_ROUNDS)
        r->runner[n] = pthread_self();
    return 0;
}

static void *br_fn(void *p)
{
    struct br_arg *a = p;
    struct br_round *r = a->r;
    for (int k = 0; k < BR_ROUNDS; k++) {
        int idx;
        switch (k % 3) {
        case 0: idx = conc_barrier_wait_action(&r->b, CONC_FOREVER, round_action, r); break;
        case 1: idx = conc_barrier_wait_action(&r->b, 60.0, round_action, r); break;
        default: idx = conc_barrier_wait_action_until(&r->b, CONC_NO_DEADLINE, round_action, r); break;
        }
        r->idx[k][a->me] = idx;
        r->seen_actions[k][a->me] = atomic_load(&r->actions);
        r->ran_action[k][a->me] = idx == BR_PARTIES - 1 && pthread_equal(r->runner[k], pthread_self());
        if (idx < 0)
            return NULL;
    }
    return NULL;
}

Test(barrier, rounds_indexes_and_action, .timeout = 30)
{
    static struct br_round r;
    memset(&r, 0, sizeof r);
    cr_assert_eq(conc_barrier_init(&r.b, BR_PARTIES, 0), 0);
    struct br_arg a[BR_PARTIES];
    pthread_t t[BR_PARTIES];
    for (int i = 0; i < BR_PARTIES; i++) {
        a[i] = (struct br_arg){ .r = &r, .me = i };
        t[i] = spawn(br_fn, &a[i]);
    }
    for (int i = 0; i < BR_PARTIES; i++)
        join(t[i]);
    cr_assert_eq(atomic_load(&r.actions), BR_ROUNDS);
    for (int k = 0; k < BR_ROUNDS; k++) {
        unsigned mask = 0;
        int runners = 0;
        for (int i = 0; i < BR_PARTIES; i++) {
            int idx = r.idx[k][i];
            cr_assert(idx >= 0 && idx < BR_PARTIES, "round %d thread %d: %d", k, i, idx);
            mask |= 1u << idx;
            cr_assert_eq(r.seen_actions[k][i], k + 1,
                         "round %d: thread %d saw %d actions (released before the action?)", k, i,
                         r.seen_actions[k][i]);
            runners += r.ran_action[k][i];
        }
        cr_assert_eq(mask, (1u << BR_PARTIES) - 1, "round %d: indexes not distinct", k);
        cr_assert_eq(runners, 1, "round %d: the action did not run in the parties-1 thread", k);
    }
    cr_assert(!conc_barrier_broken(&r.b));
    cr_assert_eq(conc_barrier_n_waiting(&r.b), 0);
}

struct bwaiter {
    conc_barrier *b;
    double timeout;
    int (*action)(void *);
    void *arg;
    int rc;
    atomic_int done;
};

static void *bwaiter_fn(void *p)
{
    struct bwaiter *a = p;
    if (a->action)
        a->rc = conc_barrier_wait_action(a->b, a->timeout, a->action, a->arg);
    else
        a->rc = conc_barrier_wait(a->b, a->timeout);
    atomic_store(&a->done, 1);
    return NULL;
}

/* Start n waiters and wait until they are all inside the barrier. */
static void start_waiters(conc_barrier *b, struct bwaiter *a, pthread_t *t, int n)
{
    for (int i = 0; i < n; i++) {
        a[i].b = b;
        if (a[i].timeout == 0)
            a[i].timeout = CONC_FOREVER;
        t[i] = spawn(bwaiter_fn, &a[i]);
    }
    WAIT_FOR(conc_barrier_n_waiting(b) == (unsigned)n);
}

/* One full round with `parties` threads (the caller included): checks the
 * barrier works. */
static void full_round(conc_barrier *b, unsigned parties)
{
    struct bwaiter a[8];
    pthread_t t[8];
    memset(a, 0, sizeof a);
    start_waiters(b, a, t, (int)parties - 1);
    int mine = conc_barrier_wait(b, CONC_FOREVER);
    cr_assert_eq(mine, (int)parties - 1, "the last to arrive got %d", mine);
    unsigned mask = 1u << mine;
    for (unsigned i = 0; i + 1 < parties; i++) {
        join(t[i]);
        cr_assert(a[i].rc >= 0 && a[i].rc < (int)parties - 1, "waiter %u: %d", i, a[i].rc);
        mask |= 1u << a[i].rc;
    }
    cr_assert_eq(mask, (1u << parties) - 1);
    cr_assert(!conc_barrier_broken(b));
    cr_assert_eq(conc_barrier_n_waiting(b), 0);
}

Test(barrier, last_arriver_gets_parties_minus_one, .timeout = 30)
{
    conc_barrier b = CONC_BARRIER_INIT(3);
    for (int i = 0; i < 3; i++)
        full_round(&b, 3);
    static conc_barrier s;
    cr_assert_eq(conc_barrier_init(&s, 5, CONC_SYNC_SHARED), 0);
    full_round(&s, 5);
    full_round(&s, 5);
}

static int failing_action(void *arg)
{
    atomic_fetch_add((atomic_int *)arg, 1);
    return 1;
}

Test(barrier, failing_action_breaks_barrier, .timeout = 30)
{
    conc_barrier b = CONC_BARRIER_INIT(3);
    atomic_int calls = 0;
    struct bwaiter a[2];
    pthread_t t[2];
    memset(a, 0, sizeof a);
    start_waiters(&b, a, t, 2);
    cr_assert_eq(conc_barrier_wait_action(&b, CONC_FOREVER, failing_action, &calls), -EPIPE);
    for (int i = 0; i < 2; i++) {
        join(t[i]);
        cr_assert_eq(a[i].rc, -EPIPE, "waiter %d: %s", i, conc_errname(a[i].rc));
    }
    cr_assert_eq(atomic_load(&calls), 1);
    cr_assert(conc_barrier_broken(&b));
    cr_assert_eq(conc_barrier_n_waiting(&b), 0);
    cr_assert_eq(conc_barrier_wait(&b, CONC_FOREVER), -EPIPE);
    cr_assert_eq(conc_barrier_wait(&b, 0), -EPIPE);

    cr_assert_eq(conc_barrier_reset(&b), 0);
    cr_assert(!conc_barrier_broken(&b));
    full_round(&b, 3);
}

Test(barrier, failing_action_from_a_waiter_thread, .timeout = 30)
{
    /* the action runs in whichever thread completes the round */
    conc_barrier b = CONC_BARRIER_INIT(2);
    atomic_int calls = 0;
    struct bwaiter a[1];
    pthread_t t[1];
    memset(a, 0, sizeof a);
    start_waiters(&b, a, t, 1);
    struct bwaiter last = { .b = &b, .timeout = 20.0, .action = failing_action, .arg = &calls };
    join(spawn(bwaiter_fn, &last));
    join(t[0]);
    cr_assert_eq(last.rc, -EPIPE);
    cr_assert_eq(a[0].rc, -EPIPE);
    cr_assert_eq(atomic_load(&calls), 1);
    cr_assert(conc_barrier_broken(&b));
}

Test(barrier, abort_breaks_for_current_and_later_waiters, .timeout = 30)
{
    conc_barrier b = CONC_BARRIER_INIT(3);
    struct bwaiter a[2];
    pthread_t t[2];
    memset(a, 0, sizeof a);
    a[1].timeout = 60.0;
    start_waiters(&b, a, t, 2);
    cr_assert(!conc_barrier_broken(&b));
    cr_assert_eq(conc_barrier_abort(&b), 0);
    for (int i = 0; i < 2; i++) {
        join(t[i]);
        cr_assert_eq(a[i].rc, -EPIPE, "waiter %d: %s", i, conc_errname(a[i].rc));
    }
    cr_assert(conc_barrier_broken(&b));
    cr_assert_eq(conc_barrier_n_waiting(&b), 0);
    cr_assert_eq(conc_barrier_wait(&b, CONC_FOREVER), -EPIPE);
    cr_assert_eq(conc_barrier_wait(&b, 0), -EPIPE);
    cr_assert_eq(conc_barrier_wait_until(&b, CONC_NO_DEADLINE), -EPIPE);
    atomic_int calls = 0;
    cr_assert_eq(conc_barrier_wait_action(&b, CONC_FOREVER, count_action, &calls), -EPIPE);
    cr_assert_eq(atomic_load(&calls), 0);
    cr_assert_eq(conc_barrier_abort(&b), 0); /* aborting twice is fine */
    cr_assert(conc_barrier_broken(&b));

    cr_assert_eq(conc_barrier_reset(&b), 0);
    cr_assert(!conc_barrier_broken(&b));
    cr_assert_eq(conc_barrier_parties(&b), 3);
    full_round(&b, 3);
}

Test(barrier, reset_releases_waiters_and_is_reusable, .timeout = 30)
{
    conc_barrier b = CONC_BARRIER_INIT(3);
    struct bwaiter a[2];
    pthread_t t[2];
    memset(a, 0, sizeof a);
    start_waiters(&b, a, t, 2);
    cr_assert_eq(conc_barrier_reset(&b), 0);
    for (int i = 0; i < 2; i++) {
        join(t[i]);
        cr_assert_eq(a[i].rc, -EPIPE, "waiter %d: %s", i, conc_errname(a[i].rc));
    }
    cr_assert(!conc_barrier_broken(&b), "reset left the barrier broken");
    cr_assert_eq(conc_barrier_n_waiting(&b), 0);
    full_round(&b, 3);
    full_round(&b, 3);
    /* reset of an idle barrier is harmless */
    cr_assert_eq(conc_barrier_reset(&b), 0);
    full_round(&b, 3);
}

Test(barrier, timeout_breaks_for_the_others, .timeout = 30)
{
    conc_barrier b = CONC_BARRIER_INIT(3);
    struct bwaiter a[1];
    pthread_t t[1];
    memset(a, 0, sizeof a);
    start_waiters(&b, a, t, 1);
    int64_t t0 = conc_now();
    cr_assert_eq(conc_barrier_wait(&b, 0.05), -ETIMEDOUT);
    cr_assert_geq(conc_now() - t0, 50000000LL);
    join(t[0]);
    cr_assert_eq(a[0].rc, -EPIPE);
    cr_assert(conc_barrier_broken(&b));
    cr_assert_eq(conc_barrier_n_waiting(&b), 0);
    cr_assert_eq(conc_barrier_wait(&b, 0.05), -EPIPE, "broken barrier must say -EPIPE, not wait");

    cr_assert_eq(conc_barrier_reset(&b), 0);
    full_round(&b, 3);

    /* a timeout in a waiter thread breaks it for the main thread */
    struct bwaiter w = { .b = &b, .timeout = 0.05 };
    struct bwaiter f = { .b = &b, .timeout = CONC_FOREVER };
    pthread_t tw = spawn(bwaiter_fn, &w), tf = spawn(bwaiter_fn, &f);
    join(tw);
    join(tf);
    cr_assert_eq(w.rc, -ETIMEDOUT);
    cr_assert_eq(f.rc, -EPIPE);
    cr_assert(conc_barrier_broken(&b));
}

Test(barrier, zero_timeout_and_passed_deadline, .timeout = 30)
{
    conc_barrier b = CONC_BARRIER_INIT(2);
    cr_assert_eq(conc_barrier_wait(&b, 0), -ETIMEDOUT);
    cr_assert(conc_barrier_broken(&b));
    cr_assert_eq(conc_barrier_n_waiting(&b), 0);
    cr_assert_eq(conc_barrier_reset(&b), 0);
    cr_assert_eq(conc_barrier_wait_until(&b, conc_now() - 1), -ETIMEDOUT);
    cr_assert(conc_barrier_broken(&b));
    cr_assert_eq(conc_barrier_reset(&b), 0);

    /* timeout 0 succeeds when the call completes the round */
    struct bwaiter a[1];
    pthread_t t[1];
    memset(a, 0, sizeof a);
    start_waiters(&b, a, t, 1);
    atomic_int calls = 0;
    cr_assert_eq(conc_barrier_wait_action(&b, 0, count_action, &calls), 1);
    join(t[0]);
    cr_assert_eq(a[0].rc, 0);
    cr_assert_eq(atomic_load(&calls), 1);
    cr_assert(!conc_barrier_broken(&b));
}

/* ===================================================== static, shared */

static conc_lock s_lock = CONC_LOCK_INIT;
static conc_rlock s_rlock = CONC_RLOCK_INIT;
static conc_sem s_sem = CONC_SEM_INIT(0);
static conc_sem s_bsem = CONC_BSEM_INIT(2);
static conc_event s_event = CONC_EVENT_INIT;
static conc_cond s_cond = CONC_COND_INIT;
static conc_barrier s_barrier = CONC_BARRIER_INIT(2);
static int s_value; /* under s_lock */

static void *static_partner(void *p)
{
    (void)p;
    int errs = 0;
    /* 1. wait for the event */
    errs += conc_event_wait(&s_event, CONC_FOREVER) != 0;
    /* 2. post the semaphore */
    errs += conc_sem_release(&s_sem, 1) != 0;
    /* 3. set the value under the lock and notify */
    errs += conc_lock_acquire(&s_lock, CONC_FOREVER) != 0;
    s_value = 42;
    errs += conc_cond_notify(&s_cond, 1) != 1;
    errs += conc_lock_release(&s_lock) != 0;
    /* 4. meet at the barrier */
    errs += conc_barrier_wait(&s_barrier, CONC_FOREVER) < 0;
    /* 5. rlock is free now */
    errs += conc_rlock_acquire(&s_rlock, CONC_FOREVER) != 0;
    errs += conc_rlock_release(&s_rlock) != 0;
    return RET(errs);
}

Test(static_init, all_primitives_between_threads, .timeout = 30)
{
    cr_assert_eq(conc_sem_value(&s_bsem), 2);
    cr_assert_eq(conc_sem_release(&s_bsem, 1), -EOVERFLOW);
    cr_assert_eq(conc_rlock_acquire(&s_rlock, CONC_FOREVER), 0);
    cr_assert_eq(conc_rlock_acquire(&s_rlock, CONC_FOREVER), 0);

    cr_assert_eq(conc_lock_acquire(&s_lock, CONC_FOREVER), 0);
    pthread_t t = spawn(static_partner, NULL);
    cr_assert_eq(conc_event_set(&s_event), 0);
    /* wait for the value with the lock: the partner needs the lock first,
     * and only notifies after the semaphore */
    while (s_value != 42)
        cr_assert_eq(conc_cond_wait(&s_cond, &s_lock, CONC_FOREVER), 0);
    cr_assert_eq(conc_lock_release(&s_lock), 0);
    cr_assert_eq(conc_sem_acquire(&s_sem, CONC_FOREVER), 0);
    int idx = conc_barrier_wait(&s_barrier, CONC_FOREVER);
    cr_assert(idx == 0 || idx == 1);
    cr_assert_eq(conc_rlock_release(&s_rlock), 0);
    cr_assert_eq(conc_rlock_release(&s_rlock), 0);
    cr_assert_eq(join(t), 0);
}

/* Process-shared primitives in a MAP_SHARED mapping, used across fork(). */
struct xproc {
    conc_lock lock;
    conc_cond cond;
    conc_event go;
    conc_sem sem;
    conc_barrier barrier;
    long counter;
    int turn;
};

#define XP_INCR 20000
#define XP_TURNS 300

static int xproc_child(struct xproc *x)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (conc_event_wait(&x->go, 30.0) != 0)
        return 10;
    for (int i = 0; i < XP_INCR; i++) {
        if (conc_lock_acquire(&x->lock, CONC_FOREVER) != 0)
            return 11;
        x->counter++;
        if (conc_lock_release(&x->lock) != 0)
            return 12;
    }
    if (conc_barrier_wait(&x->barrier, 30.0) < 0)
        return 13;
    for (int i = 0; i < XP_TURNS; i++) {
        if (conc_lock_acquire(&x->lock, CONC_FOREVER) != 0)
            return 14;
        while (x->turn != 1)
            if (conc_cond_wait(&x->cond, &x->lock, 30.0) != 0)
                return 15;
        x->turn = 0;
        conc_cond_notify(&x->cond, 1);
        conc_lock_release(&x->lock);
    }
    if (conc_sem_release(&x->sem, 3) != 0)
        return 16;
    return 0;
}

Test(shared, primitives_between_processes, .timeout = 30)
{
    struct xproc *x = mmap(NULL, sizeof *x, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(x, MAP_FAILED);
    cr_assert_eq(conc_lock_init(&x->lock, CONC_SYNC_SHARED), 0);
    cr_assert_eq(conc_cond_init(&x->cond, CONC_SYNC_SHARED), 0);
    cr_assert_eq(conc_event_init(&x->go, CONC_SYNC_SHARED), 0);
    cr_assert_eq(conc_sem_init(&x->sem, 0, CONC_SYNC_SHARED), 0);
    cr_assert_eq(conc_barrier_init(&x->barrier, 2, CONC_SYNC_SHARED), 0);
    x->counter = 0;
    x->turn = 0;

    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0)
        _exit(xproc_child(x));

    wait_proc_blocked(pid, BLOCKED_GUARD); /* the child sleeps on the event */
    cr_assert_eq(conc_event_set(&x->go), 0);
    for (int i = 0; i < XP_INCR; i++) {
        cr_assert_eq(conc_lock_acquire(&x->lock, CONC_FOREVER), 0);
        x->counter++;
        cr_assert_eq(conc_lock_release(&x->lock), 0);
    }
    cr_assert_geq(conc_barrier_wait(&x->barrier, 30.0), 0);
    cr_assert_eq(x->counter, 2L * XP_INCR);
    for (int i = 0; i < XP_TURNS; i++) {
        cr_assert_eq(conc_lock_acquire(&x->lock, CONC_FOREVER), 0);
        while (x->turn != 0)
            cr_assert_eq(conc_cond_wait(&x->cond, &x->lock, 30.0), 0);
        x->turn = 1;
        conc_cond_notify(&x->cond, 1);
        cr_assert_eq(conc_lock_release(&x->lock), 0);
    }
    for (int i = 0; i < 3; i++)
        cr_assert_eq(conc_sem_acquire(&x->sem, 30.0), 0);
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status), "child died: status %#x", status);
    cr_assert_eq(WEXITSTATUS(status), 0, "child failed at step %d", WEXITSTATUS(status));
    cr_assert_eq(conc_sem_value(&x->sem), 0);
    munmap(x, sizeof *x);
}

/* ====================================================== Event generations */

struct gen_waiter {
    conc_event *e;
    atomic_int tid;
    int rc;
};

static void *gen_waiter_fn(void *arg)
{
    struct gen_waiter *w = arg;
    atomic_store(&w->tid, (int)syscall(SYS_gettid));
    w->rc = conc_event_wait(w->e, 10.0);
    return NULL;
}

/* Python's gh-57711: every thread waiting when set() ran returns True, even
 * when clear() follows at once (before the woken threads look at the
 * flag).  The waiters are asleep in the kernel before set() runs. */
Test(event, set_then_clear_releases_every_waiter, .timeout = 30)
{
    enum { N = 4, ROUNDS = 40 };
    conc_event e = CONC_EVENT_INIT;
    for (int round = 0; round < ROUNDS; round++) {
        struct gen_waiter w[N];
        pthread_t t[N];
        for (int i = 0; i < N; i++) {
            w[i] = (struct gen_waiter){ .e = &e, .rc = 1 };
            atomic_init(&w[i].tid, 0);
            t[i] = spawn(gen_waiter_fn, &w[i]);
        }
        for (int i = 0; i < N; i++)
            WAIT_FOR(atomic_load(&w[i].tid) != 0 &&
                     task_state(getpid(), atomic_load(&w[i].tid)) == 'S');
        cr_assert(__atomic_load_n(&e._word, __ATOMIC_RELAXED) & 2, "waiters bit set");
        cr_assert_eq(conc_event_set(&e), 0);
        cr_assert_eq(conc_event_clear(&e), 0);
        for (int i = 0; i < N; i++) {
            join(t[i]);
            cr_assert_eq(w[i].rc, 0, "round %d, waiter %d: %s", round, i, conc_errname(w[i].rc));
        }
        cr_assert_not(conc_event_is_set(&e));
        cr_assert_eq(conc_event_wait(&e, 0), -EAGAIN);
    }
}

/* The same between processes, on a shared Event. */
Test(event, set_then_clear_releases_every_process, .timeout = 30)
{
    enum { N = 3, ROUNDS = 15 };
    conc_event *e = mmap(NULL, sizeof *e, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                         -1, 0);
    cr_assert_neq(e, MAP_FAILED);
    cr_assert_eq(conc_event_init(e, CONC_SYNC_SHARED), 0);
    for (int round = 0; round < ROUNDS; round++) {
        pid_t pid[N];
        for (int i = 0; i < N; i++) {
            pid[i] = fork();
            cr_assert_geq(pid[i], 0);
            if (pid[i] == 0)
                _exit(conc_event_wait(e, 10.0) == 0 ? 0 : 1);
        }
        for (int i = 0; i < N; i++)
            WAIT_FOR(task_state(pid[i], pid[i]) == 'S');
        cr_assert_eq(conc_event_set(e), 0);
        cr_assert_eq(conc_event_clear(e), 0);
        for (int i = 0; i < N; i++) {
            int st;
            cr_assert_eq(waitpid(pid[i], &st, 0), pid[i]);
            cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "round %d, process %d", round, i);
        }
        cr_assert_eq(conc_event_wait(e, 0), -EAGAIN);
    }
    munmap(e, sizeof *e);
}

/* ============================================== owners are coroutines */

struct owner_probe {
    conc_rlock rl, main_rl;
    conc_lock lk;
    conc_cond cv;
    conc_event a_holds, b_done;
    int a_depth, a_owned, a_held, a_rel_lk, a_rel_rl;
    int b_try, b_owned, b_depth, b_held, b_wait, b_locked, b_wait_r, b_release;
    int b_consistent, b_timed, b_main_try, b_main_owned, b_later, b_later_depth;
};

static void *owner_a(void *arg)
{
    struct owner_probe *p = arg;
    if (conc_rlock_acquire(&p->rl, CONC_FOREVER) != 0 ||
        conc_lock_acquire(&p->lk, CONC_FOREVER) != 0)
        return RET(1);
    conc_event_set(&p->a_holds);
    conc_event_wait(&p->b_done, CONC_FOREVER);
    p->a_depth = (int)conc_rlock_depth(&p->rl);
    p->a_owned = conc_rlock_is_owned(&p->rl);
    p->a_held = conc_lock_held(&p->lk);
    p->a_rel_lk = conc_lock_release(&p->lk);
    p->a_rel_rl = conc_rlock_release(&p->rl);
    return RET(0);
}

static void *owner_b(void *arg)
{
    struct owner_probe *p = arg;
    conc_event_wait(&p->a_holds, CONC_FOREVER);
    p->b_try = conc_rlock_acquire(&p->rl, 0);
    p->b_owned = conc_rlock_is_owned(&p->rl);
    p->b_depth = (int)conc_rlock_depth(&p->rl);
    p->b_held = conc_lock_held(&p->lk);
    p->b_wait = conc_cond_wait(&p->cv, &p->lk, 0.01);
    p->b_locked = conc_lock_locked(&p->lk);
    p->b_wait_r = conc_cond_wait_r(&p->cv, &p->rl, 0.01);
    p->b_release = conc_rlock_release(&p->rl);
    p->b_consistent = conc_rlock_consistent(&p->rl);
    p->b_timed = conc_rlock_acquire(&p->rl, 0.02);
    p->b_main_try = conc_rlock_acquire(&p->main_rl, 0);
    p->b_main_owned = conc_rlock_is_owned(&p->main_rl);
    conc_event_set(&p->b_done);
    p->b_later = conc_rlock_acquire(&p->rl, CONC_FOREVER);     /* once A released */
    p->b_later_depth = (int)conc_rlock_depth(&p->rl);
    conc_rlock_release(&p->rl);
    return RET(0);
}

/* gevent's rule: a lock belongs to the greenlet that acquired it, not to
 * its thread.  A holds an RLock and a Lock; B, on the same hub, neither
 * owns nor may release them, and its condition waits over them fail
 * without releasing them.  The main coroutine's RLock is its own too. */
Test(owner, greenlets_of_one_hub, .timeout = 30)
{
    struct owner_probe p;
    memset(&p, 0, sizeof p);
    cr_assert_eq(conc_rlock_init(&p.rl, 0), 0);
    cr_assert_eq(conc_rlock_init(&p.main_rl, 0), 0);
    cr_assert_eq(conc_lock_init(&p.lk, 0), 0);
    cr_assert_eq(conc_cond_init(&p.cv, 0), 0);
    cr_assert_eq(conc_event_init(&p.a_holds, 0), 0);
    cr_assert_eq(conc_event_init(&p.b_done, 0), 0);
    cr_assert_eq(conc_rlock_acquire(&p.main_rl, CONC_FOREVER), 0);
    conc_greenlet *a, *b;
    cr_assert_eq(conc_greenlet_spawn(&a, owner_a, &p, NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&b, owner_b, &p, NULL), 0);
    cr_assert_eq(conc_hub_run(), 0);
    void *ra, *rb;
    cr_assert_eq(conc_greenlet_result(a, &ra), 0);
    cr_assert_eq(conc_greenlet_result(b, &rb), 0);
    cr_assert_null(ra);
    cr_assert_null(rb);
    cr_assert_eq(p.b_try, -EAGAIN, "B's poll of A's RLock: %s", conc_errname(p.b_try));
    cr_assert_eq(p.b_owned, 0);
    cr_assert_eq(p.b_depth, 0);
    cr_assert_eq(p.b_held, 0, "B does not hold A's Lock");
    cr_assert_eq(p.b_wait, -EPERM, "B's wait over A's Lock: %s", conc_errname(p.b_wait));
    cr_assert(p.b_locked, "A's Lock stayed locked");
    cr_assert_eq(p.b_wait_r, -EPERM, "B's wait over A's RLock: %s", conc_errname(p.b_wait_r));
    cr_assert_eq(p.b_release, -EPERM);
    cr_assert_eq(p.b_consistent, -EPERM);
    cr_assert_eq(p.b_timed, -ETIMEDOUT);
    cr_assert_eq(p.b_main_try, -EAGAIN, "main's RLock is not B's");
    cr_assert_eq(p.b_main_owned, 0);
    cr_assert_eq(p.a_depth, 1, "A's depth untouched by B");
    cr_assert(p.a_owned);
    cr_assert(p.a_held);
    cr_assert_eq(p.a_rel_lk, 0);
    cr_assert_eq(p.a_rel_rl, 0);
    cr_assert_eq(p.b_later, 0);
    cr_assert_eq(p.b_later_depth, 1);
    cr_assert(conc_rlock_is_owned(&p.main_rl));
    cr_assert_eq(conc_rlock_depth(&p.main_rl), 1);
    cr_assert_eq(conc_rlock_release(&p.main_rl), 0);
    cr_assert_not(conc_rlock_is_owned(&p.rl));
    cr_assert_not(conc_lock_locked(&p.lk));
    conc_greenlet_free(a);
    conc_greenlet_free(b);
    cr_assert_eq(conc_hub_free(), 0);
}

/* Several hubs: greenlets of two threads take one RLock (two levels deep)
 * and yield inside; a Condition over it is waited on with the depth kept.
 * Nobody else may be inside while one is. */
enum { OWN_THREADS = 2, OWN_GREENLETS = 3, OWN_ITERS = 200 };

static struct {
    conc_rlock rl;
    conc_cond cv;
    int inside;
    long count;
    atomic_int bad;
} own = { CONC_RLOCK_INIT, CONC_COND_INIT, 0, 0, 0 };

static void *own_worker(void *arg)
{
    int me = (int)(intptr_t)arg;
    for (int i = 0; i < OWN_ITERS; i++) {
        conc_sleep(0);          /* the greenlets of a hub take turns here */
        if (conc_rlock_acquire(&own.rl, CONC_FOREVER) != 0 ||
            conc_rlock_acquire(&own.rl, CONC_FOREVER) != 0) {
            atomic_fetch_add(&own.bad, 1);
            return NULL;
        }
        if (i % 16 == 5) {
            int r = conc_cond_wait_r(&own.cv, &own.rl, 0.001);
            if ((r != 0 && r != -ETIMEDOUT) || conc_rlock_depth(&own.rl) != 2)
                atomic_fetch_add(&own.bad, 1);
        }
        if (own.inside != 0)
            atomic_fetch_add(&own.bad, 1);
        own.inside = me;
        conc_sleep(0);          /* the other greenlets of this hub run */
        if (own.inside != me)
            atomic_fetch_add(&own.bad, 1);
        own.inside = 0;
        own.count++;
        if (i % 16 == 8)
            conc_cond_notify_all(&own.cv);
        if (conc_rlock_release(&own.rl) != 0 || conc_rlock_release(&own.rl) != 0)
            atomic_fetch_add(&own.bad, 1);
        if (conc_rlock_is_owned(&own.rl))
            atomic_fetch_add(&own.bad, 1);
    }
    return NULL;
}

static void *own_hub_thread(void *arg)
{
    int base = (int)(intptr_t)arg;
    conc_greenlet *g[OWN_GREENLETS];
    for (int i = 0; i < OWN_GREENLETS; i++)
        if (conc_greenlet_spawn(&g[i], own_worker, (void *)(intptr_t)(base + i + 1), NULL) != 0)
            return RET(1);
    for (int i = 0; i < OWN_GREENLETS; i++) {
        if (conc_greenlet_join(g[i], 20.0) != 0)
            return RET(2);
        conc_greenlet_free(g[i]);
    }
    return RET(conc_hub_free());
}

Test(owner, greenlets_of_several_hubs, .timeout = 30)
{
    conc_thread *t[OWN_THREADS];
    for (int i = 0; i < OWN_THREADS; i++) {
        cr_assert_eq(conc_thread_new(&t[i], own_hub_thread, (void *)(intptr_t)(i * 10), NULL), 0);
        cr_assert_eq(conc_thread_start(t[i]), 0);
    }
    for (int i = 0; i < OWN_THREADS; i++) {
        cr_assert_eq(conc_thread_join(t[i], CONC_FOREVER), 0);
        void *r;
        cr_assert_eq(conc_thread_result(t[i], &r), 0);
        cr_assert_null(r, "hub thread %d: %d", i, (int)(intptr_t)r);
        conc_thread_free(t[i]);
    }
    cr_assert_eq(atomic_load(&own.bad), 0);
    cr_assert_eq(own.count, (long)OWN_THREADS * OWN_GREENLETS * OWN_ITERS);
    cr_assert_not(conc_rlock_is_owned(&own.rl));
}

/* The inline structs keep reserved words, so a field can be added without
 * a layout change: _init and the static initializers leave them zero and
 * agree byte for byte. */
Test(layout, reserved_space_is_zero_and_inits_agree, .timeout = 30)
{
    conc_sem sem, sem0 = CONC_SEM_INIT(3);
    memset(&sem, 0xff, sizeof sem);
    cr_assert_eq(conc_sem_init(&sem, 3, 0), 0);
    cr_assert_eq(memcmp(&sem, &sem0, sizeof sem), 0);
    for (size_t i = 0; i < sizeof sem._reserved / sizeof sem._reserved[0]; i++)
        cr_assert_eq(sem._reserved[i], 0);

    conc_event ev, ev0 = CONC_EVENT_INIT_SHARED;
    memset(&ev, 0xff, sizeof ev);
    cr_assert_eq(conc_event_init(&ev, CONC_SYNC_SHARED), 0);
    cr_assert_eq(memcmp(&ev, &ev0, sizeof ev), 0);
    for (size_t i = 0; i < sizeof ev._reserved / sizeof ev._reserved[0]; i++)
        cr_assert_eq(ev._reserved[i], 0);

    conc_cond cond, cond0 = CONC_COND_INIT;
    memset(&cond, 0xff, sizeof cond);
    cr_assert_eq(conc_cond_init(&cond, 0), 0);
    cr_assert_eq(memcmp(&cond, &cond0, sizeof cond), 0);
    for (size_t i = 0; i < sizeof cond._reserved / sizeof cond._reserved[0]; i++)
        cr_assert_eq(cond._reserved[i], 0);
}
