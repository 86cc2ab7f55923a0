/*
 * wait_helpers.h - shared by the thread-level tests: the invalid timeouts
 * every waiting call must refuse, a polling hang guard, a checked pthread
 * start, and (task_state.h) waiting until a peer is blocked in the kernel.
 * There is no fixed pause here: a test that needs a peer in its wait uses
 * wait_thread_blocked / wait_proc_blocked, and one that checks nobody else
 * was woken uses wait_threads_quiet.
 */
#ifndef CONC_TESTS_WAIT_HELPERS_H
#define CONC_TESTS_WAIT_HELPERS_H

#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <unistd.h>
#include "conc/time.h"
#include "task_state.h"

#define NS 1000000000LL
/* Hang guard for polling loops on the main thread. */
#define GUARD_NS (20 * NS)

static const double bad_timeouts[] = { -2.0, -0.5, -1e-9, -1.0000001, -INFINITY, NAN };
#define N_BAD_TIMEOUTS (sizeof bad_timeouts / sizeof bad_timeouts[0])

/* Waits until each of the n threads (gettid() values) is asleep or has
 * exited, all at once: passes over them until one pass finds none running.
 * After a wake-up meant for some of them, the ones not meant to return must
 * be back asleep; a thread woken by mistake shows as running until it has
 * returned and left (or woken the next one on its way out). */
static inline void wait_threads_quiet(const pid_t *tid, int n)
{
    int64_t end = conc_now() + GUARD_NS;
    for (bool clean = false; !clean;) {
        clean = true;
        for (int i = 0; i < n; i++) {
            char s = task_state(getpid(), tid[i]);
            if (s == 0 || s == 'S' || s == 'D')
                continue;
            clean = false;
            cr_assert_lt(conc_now(), end, "thread %d neither slept nor exited (state %c)",
                         (int)tid[i], s);
            usleep(200);
        }
    }
}

/* Poll until cond holds; fail (rather than hang) after GUARD_NS. */
#define WAIT_FOR(cond)                                                          \
    do {                                                                        \
        int64_t wf_end_ = conc_now() + GUARD_NS;                                \
        while (!(cond)) {                                                       \
            cr_assert_lt(conc_now(), wf_end_, "gave up waiting for: %s", #cond); \
            usleep(1000);                                                       \
        }                                                                       \
    } while (0)

static inline pthread_t spawn(void *(*fn)(void *), void *arg)
{
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, fn, arg), 0);
    return t;
}

#endif
