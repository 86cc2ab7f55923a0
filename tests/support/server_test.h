/*
 * server_test.h - what the server tests share: the upper-casing the echo
 * handlers do, the descriptor count to come back to once a hub has been
 * made, the children of the test process (a forking or prefork server's,
 * found in every thread's list) and the check that none is left, and the
 * wait for a prefork worker to serve (asleep in its hub's epoll).
 */
#ifndef CONC_TEST_SERVER_TEST_H
#define CONC_TEST_SERVER_TEST_H

#include <criterion/criterion.h>

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>

#include "conc.h"
#include "support/fd_count.h"
#include "support/task_state.h"

/* The hang guard of a wait in seconds (a test file may set its own). */
#ifndef SERVER_TEST_GUARD
#define SERVER_TEST_GUARD 20.0
#endif

static inline void upper(char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] >= 'a' && p[i] <= 'z')
            p[i] = (char)(p[i] - 'a' + 'A');
}

/* A reactor's on_data that sends back what came, upper-cased. */
static inline int upper_on_data(conc_server_conn *c, const void *data, size_t len, void *user)
{
    (void)user;
    char buf[65536];
    if (len > sizeof buf)
        len = sizeof buf;           /* read_size is at most 64 KiB here */
    memcpy(buf, data, len);
    upper(buf, len);
    return conc_server_conn_write(c, buf, len);
}

static inline void *server_test_nothing(void *arg)
{
    return arg;
}

/* The descriptor count to come back to, taken after the first coroutine
 * stack of the process was made (its pidfd, opened once, is kept). */
static inline int base_fds(void)
{
    conc_greenlet *g;
    cr_assert_eq(conc_greenlet_spawn(&g, server_test_nothing, NULL, NULL), 0);
    cr_assert_eq(conc_greenlet_join(g, SERVER_TEST_GUARD), 0);
    conc_greenlet_free(g);
    cr_assert_eq(conc_hub_free(), 0);
    return count_fds();
}

/* Fails the test when a child of this process is left (not reaped). */
static inline void no_children(void)
{
    siginfo_t si;
    memset(&si, 0, sizeof si);
    int rc = waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT);
    cr_assert(rc == -1 && errno == ECHILD, "a child is left (pid %d)", (int)si.si_pid);
}

/* The pids of this process's children, up to cap, from /proc: every
 * thread's list (a server's thread forks them). */
static inline int children(pid_t *out, int cap)
{
    DIR *d = opendir("/proc/self/task");
    cr_assert_not_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && n < cap) {
        if (e->d_name[0] == '.')
            continue;
        char path[64];
        snprintf(path, sizeof path, "/proc/self/task/%.16s/children", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        int pid;
        while (n < cap && fscanf(f, "%d", &pid) == 1)
            out[n++] = pid;
        fclose(f);
    }
    closedir(d);
    return n;
}

/* Waits until process pid sleeps in epoll (a prefork worker whose loop
 * serves: every greenlet of its hub parked), not in a step of its start. */
static inline void wait_proc_in_epoll(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/syscall", (int)pid);
    int64_t end = conc_now() + (int64_t)(SERVER_TEST_GUARD * 1e9);
    for (;;) {
        long nr = -1;
        FILE *f = fopen(path, "r");
        if (f) {
            if (fscanf(f, "%ld", &nr) != 1)
                nr = -1;
            fclose(f);
        }
        bool in_epoll = nr == SYS_epoll_pwait;
#ifdef SYS_epoll_wait
        in_epoll |= nr == SYS_epoll_wait;
#endif
#ifdef SYS_epoll_pwait2
        in_epoll |= nr == SYS_epoll_pwait2;
#endif
        if (in_epoll && task_blocked(pid, pid))
            return;
        cr_assert_lt(conc_now(), end, "worker %d never waited in epoll (system call %ld)",
                     (int)pid, nr);
        conc_sleep(0.001);
    }
}

#endif
