/*
 * test_robust.c - process-shared locks survive the death of their holder;
 * the other shared primitives survive the death of their waiters, also of
 * a waiter that dies right after its wake-up; four processes on one Lock or
 * RLock, one killed at a random instant, never leave a survivor asleep and
 * never lose an increment.
 *
 * Every test has the same .timeout (a hang guard, long enough for the kill
 * stress): Criterion 2.4 leaks its queued timeout requests, which
 * LeakSanitizer reports, when a later test gets an earlier deadline.
 */
#include <criterion/criterion.h>
#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include "conc/sync.h"
#include "conc/thread.h"
#include "conc/time.h"

#include "support/fork_sanitizers.h"
#include "support/task_state.h"

struct shared {
    conc_lock lock;
    conc_rlock rlock;
    conc_cond cond;
    conc_event event;
    conc_sem sem;
    conc_barrier barrier;
    conc_event ready;           /* the child got where it should be */
    int data;
    int notified;
};

static struct shared *shared_new(void)
{
    struct shared *s = mmap(NULL, sizeof *s, PROT_READ | PROT_WRITE,
                            MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(s, MAP_FAILED);
    cr_assert_eq(conc_lock_init(&s->lock, CONC_SYNC_SHARED), 0);
    cr_assert_eq(conc_rlock_init(&s->rlock, CONC_SYNC_SHARED), 0);
    cr_assert_eq(conc_cond_init(&s->cond, CONC_SYNC_SHARED), 0);
    cr_assert_eq(conc_event_init(&s->event, CONC_SYNC_SHARED), 0);
    cr_assert_eq(conc_event_init(&s->ready, CONC_SYNC_SHARED), 0);
    cr_assert_eq(conc_sem_init(&s->sem, 0, CONC_SYNC_SHARED), 0);
    cr_assert_eq(conc_barrier_init(&s->barrier, 2, CONC_SYNC_SHARED), 0);
    return s;
}

static void reap(pid_t pid, int *status)
{
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    if (status)
        *status = st;
}

/* A child that takes the lock and then dies in the way given. */
static pid_t holder(struct shared *s, int how)
{
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        int r = how == 2 ? conc_rlock_acquire(&s->rlock, CONC_FOREVER)
                         : conc_lock_acquire(&s->lock, CONC_FOREVER);
        if (r != 0)
            _exit(10);
        s->data = 1;            /* a half-done update */
        conc_event_set(&s->ready);
        if (how == 1)
            _exit(0);           /* exits without releasing */
        for (;;)
            pause();            /* killed by the parent */
    }
    cr_assert_eq(conc_event_wait(&s->ready, 20.0), 0);
    return pid;
}

Test(robust, dead_holder_gives_eownerdead, .timeout = 300)
{
    struct shared *s = shared_new();
    pid_t pid = holder(s, 0);
    kill(pid, SIGKILL);
    reap(pid, NULL);
    cr_assert_eq(conc_lock_acquire(&s->lock, 5.0), -EOWNERDEAD);
    cr_assert(conc_lock_held(&s->lock), "the new owner holds it");
    cr_assert_eq(s->data, 1);
    /* Released without repair: the next acquirer is told again. */
    cr_assert_eq(conc_lock_release(&s->lock), 0);
    cr_assert_eq(conc_lock_acquire(&s->lock, 5.0), -EOWNERDEAD);
    s->data = 0;
    cr_assert_eq(conc_lock_consistent(&s->lock), 0);
    cr_assert_eq(conc_lock_consistent(&s->lock), -EINVAL, "not marked any more");
    cr_assert_eq(conc_lock_release(&s->lock), 0);
    cr_assert_eq(conc_lock_acquire(&s->lock, 5.0), 0);
    cr_assert_eq(conc_lock_release(&s->lock), 0);
    munmap(s, sizeof *s);
}

Test(robust, holder_exits_without_release, .timeout = 300)
{
    struct shared *s = shared_new();
    pid_t pid = holder(s, 1);
    reap(pid, NULL);
    cr_assert_eq(conc_lock_acquire(&s->lock, 0), -EOWNERDEAD, "a poll takes it over too");
    cr_assert_eq(conc_lock_consistent(&s->lock), 0);
    cr_assert_eq(conc_lock_release(&s->lock), 0);
    munmap(s, sizeof *s);
}

Test(robust, rlock_dead_owner, .timeout = 300)
{
    struct shared *s = shared_new();
    pid_t pid = holder(s, 2);
    kill(pid, SIGKILL);
    reap(pid, NULL);
    cr_assert_eq(conc_rlock_acquire(&s->rlock, 5.0), -EOWNERDEAD);
    cr_assert_eq(conc_rlock_depth(&s->rlock), 1);
    cr_assert_eq(conc_rlock_consistent(&s->rlock), 0);
    cr_assert_eq(conc_rlock_acquire(&s->rlock, 5.0), 0);
    cr_assert_eq(conc_rlock_depth(&s->rlock), 2);
    cr_assert_eq(conc_rlock_release(&s->rlock), 0);
    cr_assert_eq(conc_rlock_release(&s->rlock), 0);
    cr_assert_not(conc_rlock_is_owned(&s->rlock));
    munmap(s, sizeof *s);
}

/* A waiter already asleep on the lock is woken by the owner's death. */
Test(robust, sleeping_waiter_wakes_on_death, .timeout = 300)
{
    struct shared *s = shared_new();
    pid_t pid = holder(s, 0);
    pid_t parent = getpid(), me = gettid();
    pid_t killer = fork();
    cr_assert_geq(killer, 0);
    if (killer == 0) {
        /* the holder dies once this test thread sleeps on the lock */
        bool asleep = await_task_blocked(parent, me, BLOCKED_GUARD);
        kill(pid, SIGKILL);
        _exit(asleep ? 0 : 1);
    }
    cr_assert_eq(conc_lock_acquire(&s->lock, 20.0), -EOWNERDEAD);
    int st;
    reap(killer, &st);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the holder was killed before the waiter slept");
    reap(pid, NULL);
    cr_assert_eq(conc_lock_consistent(&s->lock), 0);
    cr_assert_eq(conc_lock_release(&s->lock), 0);
    munmap(s, sizeof *s);
}

static void *hold_and_end(void *arg)
{
    return (void *)(intptr_t)conc_lock_acquire(arg, CONC_FOREVER);
}

Test(robust, thread_ending_with_lock, .timeout = 300)
{
    struct shared *s = shared_new();
    conc_thread *t;
    cr_assert_eq(conc_thread_new(&t, hold_and_end, &s->lock, NULL), 0);
    cr_assert_eq(conc_thread_start(t), 0);
    cr_assert_eq(conc_thread_join(t, CONC_FOREVER), 0);
    conc_thread_free(t);
    cr_assert_eq(conc_lock_acquire(&s->lock, 5.0), -EOWNERDEAD);
    cr_assert_eq(conc_lock_consistent(&s->lock), 0);
    cr_assert_eq(conc_lock_release(&s->lock), 0);
    munmap(s, sizeof *s);
}

Test(robust, shared_release_by_other_thread_is_eperm, .timeout = 300)
{
    struct shared *s = shared_new();
    cr_assert_eq(conc_lock_acquire(&s->lock, CONC_FOREVER), 0);
    pid_t pid = fork();
    if (pid == 0)
        _exit(conc_lock_release(&s->lock) == -EPERM ? 0 : 1);
    int st;
    reap(pid, &st);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    cr_assert_eq(conc_lock_release(&s->lock), 0);
    cr_assert_eq(conc_lock_release(&s->lock), -EPERM);
    munmap(s, sizeof *s);
}

/* Many shared locks held at once, released in any order: the robust list
 * stays sound (a later death still reports every one of them). */
Test(robust, many_locks_any_order, .timeout = 300)
{
    enum { N = 16 };
    conc_lock *locks = mmap(NULL, N * sizeof *locks, PROT_READ | PROT_WRITE,
                            MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    conc_event *ready = mmap(NULL, sizeof *ready, PROT_READ | PROT_WRITE,
                             MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    conc_event_init(ready, CONC_SYNC_SHARED);
    for (int i = 0; i < N; i++)
        conc_lock_init(&locks[i], CONC_SYNC_SHARED);
    pid_t pid = fork();
    if (pid == 0) {
        for (int i = 0; i < N; i++)
            conc_lock_acquire(&locks[i], CONC_FOREVER);
        for (int i = 1; i < N; i += 2)      /* release the odd ones, out of order */
            conc_lock_release(&locks[N - i]);
        conc_event_set(ready);
        for (;;)
            pause();
    }
    cr_assert_eq(conc_event_wait(ready, 20.0), 0);
    kill(pid, SIGKILL);
    reap(pid, NULL);
    for (int i = 0; i < N; i++) {
        int expect = ((N - i) % 2 == 1) ? 0 : -EOWNERDEAD;
        cr_assert_eq(conc_lock_acquire(&locks[i], 5.0), expect, "lock %d", i);
        if (expect)
            conc_lock_consistent(&locks[i]);
        conc_lock_release(&locks[i]);
    }
    munmap(locks, N * sizeof *locks);
    munmap(ready, sizeof *ready);
}

/* A thousand rounds of killing a process while it waits on each shared
 * primitive: the survivors never hang and the primitives stay usable. */
Test(robust, kill_while_waiting_rounds, .timeout = 300)
{
    struct shared *s = shared_new();
    for (int round = 0; round < 1000; round++) {
        int kind = round % 5;
        conc_event_clear(&s->ready);
        if (kind == 0)
            cr_assert_eq(conc_lock_acquire(&s->lock, 5.0), 0);
        pid_t pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
            conc_event_set(&s->ready);
            switch (kind) {
            case 0: conc_lock_acquire(&s->lock, CONC_FOREVER); break;
            case 1: conc_lock_acquire(&s->lock, CONC_FOREVER);
                    conc_cond_wait(&s->cond, &s->lock, CONC_FOREVER); break;
            case 2: conc_event_wait(&s->event, CONC_FOREVER); break;
            case 3: conc_sem_acquire(&s->sem, CONC_FOREVER); break;
            case 4: conc_barrier_wait(&s->barrier, CONC_FOREVER); break;
            }
            _exit(0);
        }
        cr_assert_eq(conc_event_wait(&s->ready, 20.0), 0);
        if (round % 3 == 0)
            conc_sleep(0.0005);     /* sometimes let it fall asleep first */
        kill(pid, SIGKILL);
        reap(pid, NULL);
        if (kind == 0)
            cr_assert_eq(conc_lock_release(&s->lock), 0);
        if (kind == 4)
            conc_barrier_reset(&s->barrier);
        /* Every primitive still works for the survivors. */
        int r = conc_lock_acquire(&s->lock, 5.0);
        cr_assert(r == 0 || r == -EOWNERDEAD, "round %d: lock gave %d", round, r);
        if (r == -EOWNERDEAD)
            conc_lock_consistent(&s->lock);
        cr_assert_eq(conc_cond_wait(&s->cond, &s->lock, 0), -ETIMEDOUT);
        cr_assert_eq(conc_lock_release(&s->lock), 0);
        cr_assert_eq(conc_sem_release(&s->sem, 1), 0);
        cr_assert_eq(conc_sem_acquire(&s->sem, 5.0), 0);
        cr_assert_eq(conc_event_wait(&s->event, 0), -EAGAIN);
    }
    /* A condition whose dead waiters were counted still wakes a live one.
     * (ready is cleared before the fork: the child may set it before the
     * parent runs again.) */
    conc_event_clear(&s->ready);
    pid_t pid = fork();
    if (pid == 0) {
        conc_lock_acquire(&s->lock, CONC_FOREVER);
        conc_event_set(&s->ready);
        int r = 0;
        while (!s->notified && r == 0)
            r = conc_cond_wait(&s->cond, &s->lock, 20.0);
        conc_lock_release(&s->lock);
        _exit(r == 0 ? 0 : 1);
    }
    cr_assert_eq(conc_event_wait(&s->ready, 20.0), 0);
    cr_assert_eq(conc_lock_acquire(&s->lock, 5.0), 0);
    s->notified = 1;
    cr_assert_geq(conc_cond_notify_all(&s->cond), 1);
    cr_assert_eq(conc_lock_release(&s->lock), 0);
    int st;
    reap(pid, &st);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    munmap(s, sizeof *s);
}

/* ------------------------------------------- waiters that die when woken */

/* The scheduler state of process pid ('R', 'S', 'Z'...), 0 once it is gone. */
static char proc_state(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    return p && p[1] == ' ' ? p[2] : 0;
}

/* Waits until pid sleeps (state 'S'); fails rather than hang. */
static void wait_sleeping(pid_t pid)
{
    int64_t end = conc_now() + 20 * (int64_t)1000000000;
    while (proc_state(pid) != 'S') {
        cr_assert_lt(conc_now(), end, "process %d never went to sleep", (int)pid);
        usleep(200);
    }
}

/* Reaps pid, failing (and killing it) when it has not ended within secs. */
static int reap_guarded(pid_t pid, double secs)
{
    int64_t end = conc_now() + (int64_t)(secs * 1e9);
    int st;
    pid_t r;
    while ((r = waitpid(pid, &st, WNOHANG)) == 0 && conc_now() < end)
        usleep(200);
    if (r == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
        cr_assert_fail("process %d still blocked after %.0f s", (int)pid, secs);
    }
    cr_assert_eq(r, pid);
    return st;
}

/* A bare futex waiter on word (which must hold expect): when woken it leaves
 * without taking anything, as a waiter killed right after its wake-up does.
 * It is the first in the word's wait queue when it returns. */
static pid_t woken_then_gone(uint32_t *word, uint32_t expect)
{
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        syscall(SYS_futex, word, FUTEX_WAIT, expect, NULL, NULL, 0);
        _exit(0);
    }
    wait_sleeping(pid);
    return pid;
}

static int exit_code(int st)
{
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* Two waiters sleep on a shared Lock; the release wakes the first, which
 * leaves without the lock; another taker (this process, which never slept)
 * takes the free lock and releases it.  The second waiter must still get
 * the lock: the first one's wake-up must not be the only one. */
Test(robust, lock_waiter_woken_then_gone, .timeout = 300)
{
    struct shared *s = shared_new();
    cr_assert_eq(conc_lock_acquire(&s->lock, CONC_FOREVER), 0);
    /* The word in the kernel's robust-futex format: our id, waiters. */
    uint32_t word = __atomic_or_fetch(&s->lock._word, FUTEX_WAITERS, __ATOMIC_SEQ_CST);
    pid_t first = woken_then_gone(&s->lock._word, word);
    pid_t second = fork();
    cr_assert_geq(second, 0);
    if (second == 0) {
        int r = conc_lock_acquire(&s->lock, CONC_FOREVER);
        if (r == 0) {
            s->data = 7;
            r = conc_lock_release(&s->lock);
        }
        _exit(r == 0 ? 0 : 1);
    }
    wait_sleeping(second);
    cr_assert_eq(conc_lock_release(&s->lock), 0);
    reap(first, NULL);
    cr_assert_eq(conc_lock_acquire(&s->lock, CONC_FOREVER), 0);
    cr_assert_eq(conc_lock_release(&s->lock), 0);
    cr_assert_eq(exit_code(reap_guarded(second, 20)), 0);
    cr_assert_eq(s->data, 7);
    cr_assert_eq(conc_lock_acquire(&s->lock, 0), 0, "free and consistent");
    cr_assert_eq(conc_lock_release(&s->lock), 0);
    munmap(s, sizeof *s);
}

/* A primitive's parking spot (src/sys/park.h): sleepers' count in the low
 * half of a 64-bit word, the futex word they sleep on in the high half.
 * Counts a sleeper, as conc__park_prepare does, and returns its futex word
 * and the value to sleep on. */
static uint32_t *park_count_sleeper(uint64_t *park, uint32_t *key)
{
    uint64_t v = __atomic_fetch_add(park, 1, __ATOMIC_SEQ_CST);
    *key = (uint32_t)(v >> 32);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return (uint32_t *)park + 1;
#else
    return (uint32_t *)park;
#endif
}

/* The same for a Semaphore: the unit released for the waiter that left
 * must reach the one still asleep. */
Test(robust, sem_waiter_woken_then_gone, .timeout = 300)
{
    struct shared *s = shared_new();
    uint32_t key;
    uint32_t *word = park_count_sleeper(&s->sem._park, &key);
    pid_t first = woken_then_gone(word, key);
    pid_t second = fork();
    cr_assert_geq(second, 0);
    if (second == 0)
        _exit(conc_sem_acquire(&s->sem, CONC_FOREVER) == 0 ? 0 : 1);
    wait_sleeping(second);
    cr_assert_eq(conc_sem_release(&s->sem, 1), 0);
    reap(first, NULL);
    cr_assert_eq(exit_code(reap_guarded(second, 20)), 0);
    cr_assert_eq(conc_sem_value(&s->sem), 0);
    munmap(s, sizeof *s);
}

/* The same for a Condition: notify(1) wakes the first sleeper, a waiter
 * (counted as one) that leaves; the notification must reach the other. */
Test(robust, cond_waiter_woken_then_gone, .timeout = 300)
{
    struct shared *s = shared_new();
    /* The first waiter counts itself as waiting and as a sleeper, as
     * conc_cond_wait does. */
    __atomic_fetch_add(&s->cond._counts, 1, __ATOMIC_SEQ_CST);
    uint32_t key;
    uint32_t *word = park_count_sleeper(&s->cond._park, &key);
    pid_t first = woken_then_gone(word, key);
    pid_t second = fork();
    cr_assert_geq(second, 0);
    if (second == 0) {
        int r = conc_lock_acquire(&s->lock, CONC_FOREVER);
        if (r == 0)
            r = conc_cond_wait(&s->cond, &s->lock, CONC_FOREVER);
        if (r == 0)
            r = conc_lock_release(&s->lock);
        _exit(r == 0 ? 0 : 1);
    }
    wait_sleeping(second);
    cr_assert_eq(conc_lock_acquire(&s->lock, 5.0), 0);
    cr_assert_eq(conc_cond_notify(&s->cond, 1), 1);
    cr_assert_eq(conc_lock_release(&s->lock), 0);
    reap(first, NULL);
    cr_assert_eq(exit_code(reap_guarded(second, 20)), 0);
    munmap(s, sizeof *s);
}

/* ------------------------------------------------ kill stress, 4 processes */

/*
 * STRESS_PROCS processes increment a shared counter in a tight loop under a
 * shared Lock (even rounds) or RLock (odd rounds, sometimes two levels
 * deep); the test kills one of them with SIGKILL at a random instant:
 * after a random delay, while it sleeps in the kernel (a waiter), or just
 * as it leaves that sleep (a waiter woken, before it retakes the lock).
 * Every survivor must end (no waiter left asleep on a free lock) and no
 * increment may be lost: each process counts its own increments under the
 * lock, so the counter is the sum of those counts plus the increments that
 * died with a holder between its two writes, which the next taker finds
 * (-EOWNERDEAD) and accounts for, exactly.
 */
enum { STRESS_PROCS = 4 };

struct stress {
    conc_lock lock;
    conc_rlock rlock;
    uint64_t counter;
    uint64_t done[STRESS_PROCS];    /* each process's completed increments */
    uint64_t repaired;              /* increments a dead holder left in doubt */
    uint32_t holder;                /* 1 + index of the process inside */
    uint32_t dead_found;            /* -EOWNERDEAD returned this round */
    uint32_t dead_holder;           /* `holder` as the finder saw it */
    uint32_t bad;                   /* something impossible was seen */
    uint32_t stop;
};

/* Volatile accesses: a process may die between any two of them. */
#define V(x) (*(volatile __typeof__(x) *)&(x))

/* After -EOWNERDEAD: the holder died inside; settle what it left. */
static void stress_repair(struct stress *s)
{
    uint64_t sum = V(s->repaired);
    for (int i = 0; i < STRESS_PROCS; i++)
        sum += V(s->done[i]);
    uint64_t doubt = V(s->counter) - sum;
    if (doubt > 1)
        V(s->bad) = 1;
    V(s->repaired) += doubt;
    V(s->dead_holder) = V(s->holder);
    V(s->holder) = 0;
    V(s->dead_found)++;
}

static int stress_take(struct stress *s, bool rlock)
{
    int r = rlock ? conc_rlock_acquire(&s->rlock, CONC_FOREVER)
                  : conc_lock_acquire(&s->lock, CONC_FOREVER);
    if (r == -EOWNERDEAD) {
        stress_repair(s);
        r = rlock ? conc_rlock_consistent(&s->rlock) : conc_lock_consistent(&s->lock);
    }
    return r;
}

static void stress_child(struct stress *s, int me, bool rlock)
{
    for (uint64_t n = 0; !__atomic_load_n(&s->stop, __ATOMIC_RELAXED); n++) {
        if (stress_take(s, rlock) != 0)
            _exit(2);
        bool nested = rlock && (n & 1);
        if (nested && conc_rlock_acquire(&s->rlock, CONC_FOREVER) != 0)
            _exit(3);
        V(s->holder) = (uint32_t)me + 1;
        V(s->counter)++;
        V(s->done[me])++;
        V(s->holder) = 0;
        if (nested && conc_rlock_release(&s->rlock) != 0)
            _exit(4);
        if ((rlock ? conc_rlock_release(&s->rlock) : conc_lock_release(&s->lock)) != 0)
            _exit(5);
    }
    _exit(0);
}

static uint64_t stress_rand(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

static uint64_t stress_total(struct stress *s)
{
    uint64_t sum = 0;
    for (int i = 0; i < STRESS_PROCS; i++)
        sum += __atomic_load_n(&s->done[i], __ATOMIC_RELAXED);
    return sum;
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define STRESS_ROUNDS 300
#else
#define STRESS_ROUNDS 2000
#endif

/* The longest time the survivors of a round took to end once told to
 * (reported, not checked: a lost wake-up shows as a stall here). */
static int64_t stress_slowest_end;

/* One round; returns 1 when the victim was killed asleep (or waking). */
static int stress_round(struct stress *s, int round, uint64_t *rng)
{
    bool rlock = round & 1;
    pid_t pids[STRESS_PROCS];
    for (int i = 0; i < STRESS_PROCS; i++) {
        pids[i] = fork();
        cr_assert_geq(pids[i], 0);
        if (pids[i] == 0)
            stress_child(s, i, rlock);
    }
    /* Let them run into the loop (two of them at least: contention). */
    int64_t end = conc_now() + 20 * (int64_t)1000000000;
    for (;;) {
        int running = 0;
        for (int i = 0; i < STRESS_PROCS; i++)
            running += __atomic_load_n(&s->done[i], __ATOMIC_RELAXED) > 0;
        if (running >= 2)
            break;
        cr_assert_lt(conc_now(), end, "round %d: the processes never ran", round);
        sched_yield();
    }
    int victim = (int)(stress_rand(rng) % STRESS_PROCS);
    pid_t vpid = pids[victim];
    int how = (int)(stress_rand(rng) % 3), asleep = 0;
    if (how == 0) {
        usleep((useconds_t)(stress_rand(rng) % 500));
    } else {
        /* Until it sleeps in the kernel; then, for the second way, until it
         * has been woken and runs again. */
        int64_t until = conc_now() + 20000000;
        while (proc_state(vpid) != 'S' && conc_now() < until)
            ;
        asleep = proc_state(vpid) == 'S';
        if (how == 2)
            while (proc_state(vpid) == 'S' && conc_now() < until)
                ;
    }
    kill(vpid, SIGKILL);
    cr_assert_eq(exit_code(reap_guarded(vpid, 30)), 128 + SIGKILL);
    __atomic_store_n(&s->stop, 1, __ATOMIC_RELAXED);
    int64_t stopped = conc_now();
    /* Every survivor ends: none is left asleep on a free lock. */
    int64_t guard = conc_now() + 30 * (int64_t)1000000000;
    for (int i = 0; i < STRESS_PROCS; i++) {
        if (i == victim)
            continue;
        int st;
        pid_t r;
        while ((r = waitpid(pids[i], &st, WNOHANG)) == 0 && conc_now() < guard)
            usleep(100);
        if (r == 0) {
            uint32_t w = __atomic_load_n(rlock ? &s->rlock._lock._word : &s->lock._word,
                                         __ATOMIC_RELAXED);
            char state = proc_state(pids[i]);
            for (int j = 0; j < STRESS_PROCS; j++)
                if (j != victim)
                    kill(pids[j], SIGKILL);
            while (wait(NULL) > 0)
                ;
            cr_assert_fail("round %d (%s, kill way %d, victim %d): process %d still in state "
                           "'%c' after 30 s; lock word 0x%08x",
                           round, rlock ? "RLock" : "Lock", how, victim, i, state, w);
        }
        cr_assert_eq(exit_code(st), 0, "round %d: process %d", round, i);
    }
    if (conc_now() - stopped > stress_slowest_end)
        stress_slowest_end = conc_now() - stopped;
    /* The lock is free; a death nobody saw since is settled here. */
    int r = stress_take(s, rlock);
    cr_assert_eq(r, 0, "round %d: taking the lock at the end gave %d", round, r);
    cr_assert_eq(s->bad, 0, "round %d: an increment was lost", round);
    cr_assert_eq(s->counter, stress_total(s) + s->repaired, "round %d", round);
    cr_assert_leq(s->dead_found, 1, "round %d", round);
    if (s->dead_found)
        cr_assert(s->dead_holder == 0 || s->dead_holder == (uint32_t)victim + 1,
                  "round %d: holder %u died, not the victim %d", round, s->dead_holder, victim);
    cr_assert_eq(rlock ? conc_rlock_release(&s->rlock) : conc_lock_release(&s->lock), 0);
    return asleep;
}

Test(robust, kill_one_of_four_at_random, .timeout = 300)
{
    struct stress *s = mmap(NULL, sizeof *s, PROT_READ | PROT_WRITE,
                            MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(s, MAP_FAILED);
    cr_assert_eq(conc_lock_init(&s->lock, CONC_SYNC_SHARED), 0);
    cr_assert_eq(conc_rlock_init(&s->rlock, CONC_SYNC_SHARED), 0);
    int rounds = STRESS_ROUNDS;
    const char *env = getenv("CONC_TEST_ROUNDS");
    if (env && atoi(env) > 0)
        rounds = atoi(env);
    uint64_t rng = (uint64_t)conc_now() | 1;
    cr_log_info("kill stress: %d rounds, seed %llu", rounds, (unsigned long long)rng);
    int asleep = 0;
    for (int round = 0; round < rounds; round++) {
        s->counter = s->repaired = 0;
        for (int i = 0; i < STRESS_PROCS; i++)
            s->done[i] = 0;
        s->holder = s->dead_found = s->dead_holder = s->bad = s->stop = 0;
        asleep += stress_round(s, round, &rng);
    }
    cr_log_info("kill stress: %d of %d victims were asleep in the kernel; survivors ended "
                "at most %.1f ms after being told to", asleep, rounds, stress_slowest_end / 1e6);
    munmap(s, sizeof *s);
}
