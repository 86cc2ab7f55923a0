/*
 * task_state.h - wait until a peer is really blocked, by its scheduler state
 * in /proc, instead of sleeping a fixed time and hoping it got there.
 *
 * A test that needs a peer asleep in a call first (to check that a signal
 * does not end the wait, that a wake-up reaches a sleeper, ...) starts the
 * peer, then waits here until the kernel shows it sleeping: state 'S'
 * (interruptible sleep, e.g. a futex or poll wait) or 'D'.  Conc's waits
 * may spin briefly first; they show 'R' until they sleep.
 *
 * Usable from any test file (it defines nothing that clashes with a test's
 * own helpers): task_state, task_blocked, await_task_blocked,
 * wait_task_blocked, wait_thread_blocked, wait_proc_blocked, spawn_tid.
 */
#ifndef CONC_TESTS_TASK_STATE_H
#define CONC_TESTS_TASK_STATE_H

#include <criterion/criterion.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>
#include "conc/time.h"

/* Hang guard for the waits below, in seconds. */
#define BLOCKED_GUARD 20.0

/* The state letter of /proc/<pid>/task/<tid>/stat ('R', 'S', 'D', 'Z'...),
 * or 0 when the task is gone. */
static inline char task_state(pid_t pid, pid_t tid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/task/%d/stat", (int)pid, (int)tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    /* "tid (comm) S ...": comm may hold anything, so look after the last ')'. */
    char *p = strrchr(buf, ')');
    return (p && p[1] == ' ') ? p[2] : 0;
}

static inline bool task_blocked(pid_t pid, pid_t tid)
{
    char s = task_state(pid, tid);
    return s == 'S' || s == 'D';
}

/* Waits until the task sleeps.  Returns true once it does; false when it is
 * gone or guard seconds passed first.  Asserts nothing: usable from helper
 * threads and children. */
static inline bool await_task_blocked(pid_t pid, pid_t tid, double guard)
{
    int64_t end = conc_now() + (int64_t)(guard * 1e9);
    for (;;) {
        char s = task_state(pid, tid);
        if (s == 'S' || s == 'D')
            return true;
        if (s == 0 || conc_now() >= end)
            return false;
        usleep(200);
    }
}

/* As await_task_blocked, failing the test when the task never blocked.
 * Call it from the test's own thread. */
static inline void wait_task_blocked(pid_t pid, pid_t tid, double guard)
{
    if (!await_task_blocked(pid, tid, guard)) {
        char s = task_state(pid, tid);
        cr_assert_fail("task %d/%d never blocked (state %c)", (int)pid, (int)tid,
                       s ? s : '-');
    }
}

/* Waits until thread tid (a gettid() value) of this process sleeps. */
static inline void wait_thread_blocked(pid_t tid, double guard)
{
    wait_task_blocked(getpid(), tid, guard);
}

/* Waits until the main thread of child process pid sleeps. */
static inline void wait_proc_blocked(pid_t pid, double guard)
{
    wait_task_blocked(pid, pid, guard);
}

/* spawn_tid - pthread_create(fn, arg) that also gives the new thread's
 * kernel id (recorded by the thread itself before it calls fn). */
struct spawn_tid_start {
    void *(*fn)(void *);
    void *arg;
    pid_t tid;
};

static inline void *spawn_tid_trampoline(void *p)
{
    struct spawn_tid_start *s = p;
    void *(*fn)(void *) = s->fn;
    void *arg = s->arg;
    __atomic_store_n(&s->tid, gettid(), __ATOMIC_RELEASE);
    return fn(arg);
}

static inline pthread_t spawn_tid(void *(*fn)(void *), void *arg, pid_t *tid)
{
    struct spawn_tid_start s = { fn, arg, 0 };
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, spawn_tid_trampoline, &s), 0);
    int64_t end = conc_now() + (int64_t)(BLOCKED_GUARD * 1e9);
    while ((*tid = __atomic_load_n(&s.tid, __ATOMIC_ACQUIRE)) == 0) {
        cr_assert_lt(conc_now(), end, "the new thread never ran");
        usleep(100);
    }
    return t;
}

#endif
