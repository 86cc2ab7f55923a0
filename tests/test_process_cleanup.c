/*
 * test_process_cleanup.c - conc_process_cleanup_on_signals: a process
 * interrupted by SIGINT/SIGTERM/SIGHUP stops its children (SIGTERM, then
 * SIGKILL after the grace), reaps them, and still ends killed by the
 * signal; signals the program ignores or handles are left alone.
 *
 * Each test runs the program under test in a forked "parent" process, so
 * that the test process itself is never the one signalled.  The test
 * process is a subreaper: children a failing parent leaves behind come to
 * it and are killed and reaped here.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conc.h"
#include "support/fork_sanitizers.h"

#define KIDS 3

/* A child that sleeps until it is signalled (ignore_term: SIGTERM does
 * not end it, only SIGKILL does). */
static int sleeper(const void *arg, size_t len)
{
    (void)len;
    if (*(const bool *)arg)
        signal(SIGTERM, SIG_IGN);
    for (;;)
        pause();
    return 0;
}

/* The parent process: installs the handler with grace, starts KIDS
 * sleepers, writes their pids to fd, and waits in join for ever. */
static _Noreturn void parent_main(int fd, double grace, bool ignore_term)
{
    if (conc_process_cleanup_on_signals(grace) != 0)
        _exit(10);
    pid_t pids[KIDS];
    conc_process *p[KIDS];
    for (int i = 0; i < KIDS; i++) {
        conc_process_opts po = { .method = CONC_START_FORK };
        if (conc_process_new(&p[i], sleeper, &ignore_term, sizeof ignore_term, &po) != 0 ||
            conc_process_start(p[i]) != 0)
            _exit(11);
        pids[i] = conc_process_pid(p[i]);
    }
    if (write(fd, pids, sizeof pids) != (ssize_t)sizeof pids)
        _exit(12);
    conc_process_join(p[0], CONC_FOREVER);
    _exit(13);
}

/* Waits (a 60 s hang guard) for pid to end; returns its status.  On the
 * guard, its nkids children are killed too (they come to this subreaper),
 * so none is left holding the test's output open. */
static int wait_guarded(pid_t pid, const pid_t *kids, int nkids)
{
    int64_t deadline = conc_now() + 60LL * 1000000000LL;
    int status;
    pid_t r;
    while ((r = waitpid(pid, &status, WNOHANG)) == 0 && conc_now() < deadline)
        usleep(2000);
    if (r == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        for (int i = 0; i < nkids; i++) {
            kill(kids[i], SIGKILL);
            waitpid(kids[i], NULL, 0);
        }
        cr_assert_fail("the parent did not end within 60 s");
    }
    return status;
}

/* Sends sig to pid.  Under TSan, again every 100 ms until pid ends: TSan
 * can hold a signal back from the program's handler for good (nothing
 * pending or blocked, the handler never called), and a user whose Ctrl-C
 * seems lost sends it again; other builds send exactly one. */
static void signal_until_gone(pid_t pid, int sig)
{
    cr_assert_eq(kill(pid, sig), 0);
#if defined(__SANITIZE_THREAD__)
    int64_t deadline = conc_now() + 60LL * 1000000000LL;
    for (;;) {
        siginfo_t si;
        memset(&si, 0, sizeof si);
        if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) != 0 || si.si_pid != 0)
            return;                     /* ended, left for wait_guarded */
        if (conc_now() >= deadline)
            return;                     /* wait_guarded's guard fails it */
        usleep(100 * 1000);
        kill(pid, sig);
    }
#endif
}

/* Runs a parent, waits until it has its children (their pids arrived),
 * sends it sig alone, and checks it ended killed by sig with none of its
 * children left. */
static void interrupt_parent(int sig, double grace, bool ignore_term)
{
    cr_assert_eq(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
    int p[2];
    cr_assert_eq(pipe(p), 0);
    fflush(NULL);
    pid_t parent = fork();
    cr_assert_geq(parent, 0);
    if (parent == 0) {
        close(p[0]);
        parent_main(p[1], grace, ignore_term);
    }
    close(p[1]);
    pid_t kids[KIDS];
    ssize_t n = read(p[0], kids, sizeof kids);
    close(p[0]);
    if (n != (ssize_t)sizeof kids) {
        int status = wait_guarded(parent, NULL, 0);
        cr_assert_fail("the parent did not start its children (status %#x)", status);
    }
    signal_until_gone(parent, sig);
    int status = wait_guarded(parent, kids, KIDS);
    int left = 0;
    for (int i = 0; i < KIDS; i++)
        if (kill(kids[i], 0) == 0) {
            left++;
            kill(kids[i], SIGKILL);
            waitpid(kids[i], NULL, 0);
        }
    cr_assert_eq(left, 0, "%d of %d children left behind", left, KIDS);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == sig,
              "status %#x: want killed by %s", status, strsignal(sig));
}

Test(cleanup, sigterm_stops_the_children_and_ends_the_process_by_it, .timeout = 120)
{
    interrupt_parent(SIGTERM, 5.0, false);
}

Test(cleanup, sigint_stops_the_children_and_ends_the_process_by_it, .timeout = 120)
{
    interrupt_parent(SIGINT, 5.0, false);
}

Test(cleanup, sighup_stops_the_children_and_ends_the_process_by_it, .timeout = 120)
{
    interrupt_parent(SIGHUP, 5.0, false);
}

Test(cleanup, children_that_ignore_sigterm_are_killed_after_the_grace, .timeout = 120)
{
    interrupt_parent(SIGTERM, 0.2, true);
}

Test(cleanup, grace_zero_kills_at_once, .timeout = 120)
{
    interrupt_parent(SIGINT, 0, true);
}

static void own_handler(int sig)
{
    (void)sig;
}

Test(cleanup, bad_grace_and_signals_the_program_keeps, .timeout = 60)
{
    cr_assert_eq(conc_process_cleanup_on_signals(-1), -EINVAL);
    cr_assert_eq(conc_process_cleanup_on_signals(NAN), -EINVAL);
    cr_assert_eq(conc_process_cleanup_on_signals(3601), -EINVAL);

    /* In a child: this test process's own dispositions stay as they are. */
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        struct sigaction sa = { .sa_handler = own_handler }, got;
        sigemptyset(&sa.sa_mask);
        signal(SIGHUP, SIG_IGN);
        sigaction(SIGINT, &sa, NULL);
        signal(SIGTERM, SIG_DFL);
        if (conc_process_cleanup_on_signals(1.0) != 0)
            _exit(1);
        sigaction(SIGHUP, NULL, &got);
        if (got.sa_handler != SIG_IGN)
            _exit(2);                   /* an ignored signal stays ignored */
        sigaction(SIGINT, NULL, &got);
        if (got.sa_handler != own_handler)
            _exit(3);                   /* the program's handler stays */
        sigaction(SIGTERM, NULL, &got);
        if (got.sa_handler == SIG_DFL || got.sa_handler == SIG_IGN)
            _exit(4);                   /* the default one is taken over */
        struct sigaction before = got;
        if (conc_process_cleanup_on_signals(0.5) != 0)
            _exit(5);                   /* again: fine, same handler */
        sigaction(SIGTERM, NULL, &got);
        if (got.sa_handler != before.sa_handler)
            _exit(6);
        _exit(0);
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %#x", status);
}
