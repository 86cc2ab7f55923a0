/*
 * test_robust.c - process-shared locks survive the death of their holder;
 * the other shared primitives survive the death of their waiters.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include "conc/sync.h"
#include "conc/thread.h"
#include "conc/time.h"

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

Test(robust, dead_holder_gives_eownerdead, .timeout = 30)
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

Test(robust, holder_exits_without_release, .timeout = 30)
{
    struct shared *s = shared_new();
    pid_t pid = holder(s, 1);
    reap(pid, NULL);
    cr_assert_eq(conc_lock_acquire(&s->lock, 0), -EOWNERDEAD, "a poll takes it over too");
    cr_assert_eq(conc_lock_consistent(&s->lock), 0);
    cr_assert_eq(conc_lock_release(&s->lock), 0);
    munmap(s, sizeof *s);
}

Test(robust, rlock_dead_owner, .timeout = 30)
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
Test(robust, sleeping_waiter_wakes_on_death, .timeout = 30)
{
    struct shared *s = shared_new();
    pid_t pid = holder(s, 0);
    pid_t killer = fork();
    cr_assert_geq(killer, 0);
    if (killer == 0) {
        conc_sleep(0.2);        /* let the parent fall asleep on the lock */
        kill(pid, SIGKILL);
        _exit(0);
    }
    cr_assert_eq(conc_lock_acquire(&s->lock, 20.0), -EOWNERDEAD);
    reap(killer, NULL);
    reap(pid, NULL);
    cr_assert_eq(conc_lock_consistent(&s->lock), 0);
    cr_assert_eq(conc_lock_release(&s->lock), 0);
    munmap(s, sizeof *s);
}

static void *hold_and_end(void *arg)
{
    return (void *)(intptr_t)conc_lock_acquire(arg, CONC_FOREVER);
}

Test(robust, thread_ending_with_lock, .timeout = 30)
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

Test(robust, shared_release_by_other_thread_is_eperm, .timeout = 30)
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
Test(robust, many_locks_any_order, .timeout = 30)
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
Test(robust, kill_while_waiting_rounds, .timeout = 30)
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
    /* A condition whose dead waiters were counted still wakes a live one. */
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
    conc_event_clear(&s->ready);
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
