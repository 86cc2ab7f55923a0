/*
 * test_effects.c - conc's process-wide effects (docs/building.md,
 * "Process-wide effects"): none is there before the feature that needs it
 * is used, and each setter does what it says: the SIGSEGV overflow
 * reporter and its signal stacks (conc_coro_set_overflow_report), the
 * exit-time join of non-daemon threads (conc_thread_set_exit_join), the
 * exit-time join/terminate of children (conc_process_set_exit_cleanup) and
 * the launcher thread (conc_process_set_launcher).
 *
 * Each scenario runs in a fresh process: the test forks and executes this
 * very binary again with CONC_TEST_EFFECTS=<scenario>:<report fd>:<hold fd>
 * in its environment; the constructor below runs the scenario before
 * Criterion's main and ends the process.  It exits with 0 when every check
 * in it held, or with the number of the check that failed.  It reports
 * progress on the report pipe; its children (where it makes any) block
 * reading the hold pipe until the test closes it.  A fresh process, not a
 * fork of the test process: the Criterion worker has threads and may have
 * used conc already.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conc.h"
#include "support/task_state.h"
#include "support/overflow.h"

#include "support/sanitized.h"

#define EFFECTS_ENV "CONC_TEST_EFFECTS"

/* ------------------------------------------------ the scenarios (child) */

static int report_fd = -1, hold_fd = -1;

static void report(char c)
{
    if (write(report_fd, &c, 1) != 1)
        _exit(2);
}

/* The current handler of sig (its address, whichever form it has). */
static void *handler_of(int sig)
{
    struct sigaction sa;
    if (sigaction(sig, NULL, &sa) != 0)
        _exit(3);
    return (sa.sa_flags & SA_SIGINFO) ? (void *)sa.sa_sigaction : (void *)sa.sa_handler;
}

static stack_t altstack_now(void)
{
    stack_t ss;
    if (sigaltstack(NULL, &ss) != 0)
        _exit(3);
    return ss;
}

static bool same_altstack(stack_t a, stack_t b)
{
    return a.ss_sp == b.ss_sp && a.ss_size == b.ss_size &&
           (a.ss_flags & SS_DISABLE) == (b.ss_flags & SS_DISABLE);
}

/* Whether a thread of this process is named "conc-launcher". */
static bool launcher_running(void)
{
    DIR *d = opendir("/proc/self/task");
    if (!d)
        _exit(3);
    bool found = false;
    struct dirent *e;
    while (!found && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char path[300], comm[32] = { 0 };
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t n = read(fd, comm, sizeof comm - 1);
        close(fd);
        found = n > 0 && strncmp(comm, "conc-launcher", 13) == 0;
    }
    closedir(d);
    return found;
}

static void *coro_body(void *arg, void *value)
{
    (void)arg;
    return value;
}

/* Creates, runs to its end and frees a coroutine; code on failure. */
static void run_coroutine(int code)
{
    conc_coro *c;
    void *out = NULL;
    if (conc_coro_new(&c, coro_body, NULL, NULL) != 0 ||
        conc_coro_switch(c, (void *)7, &out) != 0 || out != (void *)7 ||
        conc_coro_free(c) != 0)
        _exit(code);
}

static void *thread_body(void *arg)
{
    return arg;
}

/* A process body that blocks until the test closes the hold pipe. */
static int hold_body(const void *arg, size_t len)
{
    (void)arg;
    (void)len;
    char c;
    while (read(hold_fd, &c, 1) > 0 || errno == EINTR)
        ;
    return 0;
}

static int quick_body(const void *arg, size_t len)
{
    (void)arg;
    (void)len;
    return 5;
}

/* Starts a child running fn (fork method unless a method is given); code
 * on failure. */
static conc_process *start_child_with(conc_process_fn fn, conc_start_method method, int code)
{
    conc_process_opts o = { .size = sizeof o, .method = method,
                            .daemon = CONC_NOT_DAEMON };
    conc_process *p;
    if (conc_process_new(&p, fn, NULL, 0, &o) != 0 || conc_process_start(p) != 0)
        _exit(code);
    return p;
}

static conc_process *start_child(conc_process_fn fn, int code)
{
    return start_child_with(fn, CONC_START_FORK, code);
}

/* A thread that starts a quick child (fork method, or the method *arg),
 * joins it and checks its exit code. */
static void *starter_body(void *arg)
{
    conc_start_method m = arg ? *(const conc_start_method *)arg : CONC_START_FORK;
    conc_process *p = start_child_with(quick_body, m, 40);
    int code = -1;
    if (conc_process_join(p, CONC_FOREVER) != 0 || conc_process_exitcode(p, &code) != 0 ||
        code != 5)
        _exit(41);
    conc_process_free(p);
    return NULL;
}

static void run_thread_arg(void *(*fn)(void *), void *arg, int code)
{
    conc_thread *t;
    if (conc_thread_new(&t, fn, arg, NULL) != 0 || conc_thread_start(t) != 0 ||
        conc_thread_join(t, CONC_FOREVER) != 0)
        _exit(code);
    conc_thread_free(t);
}

static void run_thread(void *(*fn)(void *), int code)
{
    run_thread_arg(fn, NULL, code);
}

/* Threads, queues, locks and a child started from the main thread install
 * nothing: no signal handler, no signal stack, no launcher thread.  The
 * first coroutine installs the SIGSEGV handler; only
 * conc_process_cleanup_on_signals installs the SIGTERM one. */
static void scenario_fresh(void)
{
    void *segv = handler_of(SIGSEGV), *term = handler_of(SIGTERM);
    void *intr = handler_of(SIGINT), *hup = handler_of(SIGHUP);
    stack_t ss = altstack_now();
    if (!SANITIZED && (segv != (void *)SIG_DFL || !(ss.ss_flags & SS_DISABLE)))
        _exit(10);
    run_thread(thread_body, 11);
    conc_queue *q;
    void *item = NULL;
    if (conc_queue_new(&q, 0) != 0 || conc_queue_put(q, &item, CONC_FOREVER) != 0 ||
        conc_queue_get(q, &item, CONC_FOREVER) != 0)
        _exit(12);
    conc_queue_free(q);
    conc_lock lk;
    conc_lock_init(&lk, 0);
    if (conc_lock_acquire(&lk, CONC_FOREVER) != 0 || conc_lock_release(&lk) != 0)
        _exit(13);
    starter_body(NULL);             /* a child, started from the main thread */
    if (handler_of(SIGSEGV) != segv)
        _exit(14);
    if (!same_altstack(altstack_now(), ss))
        _exit(15);
    if (launcher_running())
        _exit(16);
    if (handler_of(SIGTERM) != term || handler_of(SIGINT) != intr || handler_of(SIGHUP) != hup)
        _exit(17);
    run_coroutine(18);
    if (handler_of(SIGSEGV) == segv)
        _exit(19);                  /* the first coroutine installs it */
    if (conc_coro_set_overflow_report(false) != -EBUSY)
        _exit(20);
    if (handler_of(SIGTERM) != term)
        _exit(21);
    if (conc_process_cleanup_on_signals(1) != 0 || handler_of(SIGTERM) == term)
        _exit(22);
    exit(0);
}

/* The reporter off: coroutines run, and no handler or signal stack
 * appears; turning it on later installs both at the next coroutine, after
 * which it cannot be turned off. */
static void scenario_overflow_off(void)
{
    void *segv = handler_of(SIGSEGV);
    stack_t ss = altstack_now();
    if (conc_coro_set_overflow_report(false) != 0 || conc_coro_set_overflow_report(false) != 0)
        _exit(10);
    run_coroutine(11);
    run_coroutine(12);
    if (handler_of(SIGSEGV) != segv)
        _exit(13);
    if (!same_altstack(altstack_now(), ss))
        _exit(14);
    if (conc_coro_set_overflow_report(true) != 0 || conc_coro_set_overflow_report(true) != 0)
        _exit(15);
    if (handler_of(SIGSEGV) != segv)
        _exit(16);                  /* nothing until a coroutine is made */
    run_coroutine(17);
    if (handler_of(SIGSEGV) == segv)
        _exit(18);
    stack_t now = altstack_now();
    if ((ss.ss_flags & SS_DISABLE) && (now.ss_flags & SS_DISABLE))
        _exit(19);                  /* this thread got its signal stack now */
    if (conc_coro_set_overflow_report(false) != -EBUSY)
        _exit(20);
    if (conc_coro_set_overflow_report(true) != 0)
        _exit(21);
    exit(0);
}

/* The reporter off, a coroutine overflows its guard page: a plain SIGSEGV,
 * no report (the test reads stderr). */
static void scenario_overflow_off_fault(void)
{
    if (conc_coro_set_overflow_report(false) != 0)
        _exit(10);
    conc_coro_opts o = { .stack_size = CONC_CORO_STACK_MIN, .name = "deep" };
    conc_coro *c;
    if (conc_coro_new(&c, overflow_fn, NULL, &o) != 0)
        _exit(11);
    conc_coro_switch(c, NULL, NULL);
    _exit(12);
}

/* A non-daemon thread blocked for good does not hold up exit when the
 * exit join is off. */
static conc_event reported = CONC_EVENT_INIT;

static void *blocked_forever(void *arg)
{
    (void)arg;
    static conc_event never = CONC_EVENT_INIT;
    report('S');
    conc_event_set(&reported);
    conc_event_wait(&never, CONC_FOREVER);
    return NULL;
}

static void scenario_exit_join_off(void)
{
    if (conc_thread_set_exit_join(false) != 0)
        _exit(10);
    conc_thread *t;
    if (conc_thread_new(&t, blocked_forever, NULL, NULL) != 0 || conc_thread_start(t) != 0)
        _exit(11);
    conc_thread_free(t);
    if (conc_event_wait(&reported, CONC_FOREVER) != 0)    /* it runs, and blocks */
        _exit(12);
    exit(0);
}

/* Writes 'J' once the main thread sleeps (in the exit-time join): it can
 * only be seen when the join ran. */
static void *joined_writer(void *arg)
{
    (void)arg;
    if (!await_task_blocked(getpid(), getpid(), BLOCKED_GUARD))
        _exit(4);
    report('J');
    return NULL;
}

/* Off when the thread starts (no atexit handler), on again before exit:
 * the join runs. */
static void scenario_exit_join_late(void)
{
    if (conc_thread_set_exit_join(false) != 0)
        _exit(10);
    conc_thread *t;
    if (conc_thread_new(&t, joined_writer, NULL, NULL) != 0 || conc_thread_start(t) != 0)
        _exit(11);
    conc_thread_free(t);
    if (conc_thread_set_exit_join(true) != 0)
        _exit(12);
    exit(0);
}

/* A non-daemon child blocked for good does not hold up exit when the exit
 * cleanup is off. */
static void scenario_cleanup_off(void)
{
    if (conc_process_set_exit_cleanup(false) != 0)
        _exit(10);
    conc_process *p = start_child(hold_body, 11);
    conc_process_free(p);
    report('S');
    exit(0);
}

/* Off at the start (no atexit handler), on again before exit: the exit
 * waits for the child. */
static void scenario_cleanup_late(void)
{
    if (conc_process_set_exit_cleanup(false) != 0)
        _exit(10);
    conc_process *p = start_child(hold_body, 11);
    conc_process_free(p);
    if (conc_process_set_exit_cleanup(true) != 0)
        _exit(12);
    report('E');
    exit(0);
}

/* A child started from another thread: made on the launcher by default,
 * which cannot be turned off then. */
static void scenario_launcher_on(void)
{
    if (launcher_running())
        _exit(10);
    run_thread(starter_body, 11);
    if (!launcher_running())
        _exit(12);
    if (conc_process_set_launcher(false) != -EBUSY)
        _exit(13);
    exit(0);
}

/* The launcher off: the child is made on the starting thread, and no
 * launcher thread appears. */
static void scenario_launcher_off(void)
{
    if (conc_process_set_launcher(false) != 0)
        _exit(10);
    run_thread(starter_body, 11);
    run_thread(starter_body, 12);
    if (launcher_running())
        _exit(13);
    /* The forkserver too is started (and its children made) on the thread. */
    static const conc_start_method fs = CONC_START_FORKSERVER;
    run_thread_arg(starter_body, (void *)&fs, 14);
    run_thread_arg(starter_body, (void *)&fs, 15);
    if (launcher_running())
        _exit(16);
    if (conc_process_set_launcher(true) != 0)
        _exit(17);
    exit(0);
}

static const struct {
    const char *name;
    void (*fn)(void);
} scenarios[] = {
    { "fresh", scenario_fresh },
    { "overflow_off", scenario_overflow_off },
    { "overflow_off_fault", scenario_overflow_off_fault },
    { "exit_join_off", scenario_exit_join_off },
    { "exit_join_late", scenario_exit_join_late },
    { "cleanup_off", scenario_cleanup_off },
    { "cleanup_late", scenario_cleanup_late },
    { "launcher_on", scenario_launcher_on },
    { "launcher_off", scenario_launcher_off },
};

__attribute__((constructor)) static void effects_child_main(void)
{
    const char *spec = getenv(EFFECTS_ENV);
    if (!spec)
        return;
    char kind[32];
    if (sscanf(spec, "%31[^:]:%d:%d", kind, &report_fd, &hold_fd) != 3)
        _exit(7);
    for (size_t i = 0; i < sizeof scenarios / sizeof scenarios[0]; i++)
        if (strcmp(kind, scenarios[i].name) == 0)
            scenarios[i].fn();
    _exit(8);
}

/* ------------------------------------------------------- the tests */

struct child {
    pid_t pid;
    int report;                 /* read end of the report pipe */
    int hold;                   /* write end of the hold pipe */
    int err;                    /* read end of the child's stderr */
};

extern char **environ;

static struct child spawn_scenario(const char *kind)
{
    int rep[2], hold[2], err[2];
    cr_assert_eq(pipe(rep), 0);
    cr_assert_eq(pipe(hold), 0);
    cr_assert_eq(pipe(err), 0);
    size_t n = 0;
    while (environ[n])
        n++;
    char **envp = calloc(n + 2, sizeof *envp);
    cr_assert_not_null(envp);
    static char spec[96];
    snprintf(spec, sizeof spec, EFFECTS_ENV "=%s:%d:%d", kind, rep[1], hold[0]);
    envp[0] = spec;
    memcpy(envp + 1, environ, n * sizeof *envp);
    char *argv[] = { "test_effects-child", NULL };
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        close(rep[0]);
        close(hold[1]);
        close(err[0]);
        dup2(err[1], STDERR_FILENO);
        close(err[1]);
        execve("/proc/self/exe", argv, envp);
        _exit(127);
    }
    free(envp);
    close(rep[1]);
    close(hold[0]);
    close(err[1]);
    return (struct child){ .pid = pid, .report = rep[0], .hold = hold[1], .err = err[0] };
}

/* Reads one byte with a hang guard: 1 and the byte, 0 at EOF, -1 on timeout. */
static int read_byte(int fd, char *c)
{
    struct pollfd pfd = { .fd = fd, .events = POLLIN };
    if (poll(&pfd, 1, 20000) <= 0)
        return -1;
    return read(fd, c, 1) == 1 ? 1 : 0;
}

/* The child's stderr (what it wrote until it closed it), for messages. */
static void read_err(struct child *ch, char *buf, size_t cap)
{
    size_t n = 0;
    struct pollfd pfd = { .fd = ch->err, .events = POLLIN };
    while (n + 1 < cap && poll(&pfd, 1, 20000) > 0) {
        ssize_t k = read(ch->err, buf + n, cap - 1 - n);
        if (k <= 0)
            break;
        n += (size_t)k;
    }
    buf[n] = '\0';
}

/* waitpid with a hang guard: the child is killed when it does not exit. */
static int wait_child(pid_t pid)
{
    int status = 0;
    for (int i = 0; i < 4000; i++) {
        if (waitpid(pid, &status, WNOHANG) == pid)
            return status;
        usleep(5000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    cr_assert_fail("the child process did not exit (hung at exit?)");
    return status;
}

static void finish(struct child *ch)
{
    close(ch->report);
    close(ch->hold);
    close(ch->err);
}

/* Runs a scenario that only checks: it must exit 0. */
static void expect_clean(const char *kind)
{
    struct child ch = spawn_scenario(kind);
    int st = wait_child(ch.pid);
    char err[4096];
    read_err(&ch, err, sizeof err);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "scenario %s: status %#x (exit code = the failed check); stderr:\n%s", kind, st,
              err);
    finish(&ch);
}

Test(effects, nothing_installed_before_first_use, .timeout = 60)
{
    expect_clean("fresh");
}

Test(effects, overflow_report_off_installs_nothing, .timeout = 60)
{
    expect_clean("overflow_off");
}

Test(effects, overflow_report_off_overflow_is_plain_segv, .timeout = 60)
{
    struct child ch = spawn_scenario("overflow_off_fault");
    char err[4096];
    read_err(&ch, err, sizeof err);
    int st = wait_child(ch.pid);
    cr_assert_null(strstr(err, "stack overflow in coroutine"), "stderr:\n%s", err);
    if (SANITIZED)      /* the sanitizer reports the fault and ends the child */
        cr_assert(WIFSIGNALED(st) || (WIFEXITED(st) && WEXITSTATUS(st) >= 1 &&
                                      WEXITSTATUS(st) != 10 && WEXITSTATUS(st) != 11 &&
                                      WEXITSTATUS(st) != 12),
                  "status %#x, stderr:\n%s", st, err);
    else
        cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV, "status %#x, stderr:\n%s", st,
                  err);
    finish(&ch);
}

Test(effects, exit_join_off_does_not_wait_for_threads, .timeout = 60)
{
    struct child ch = spawn_scenario("exit_join_off");
    char c = 0;
    cr_assert_eq(read_byte(ch.report, &c), 1, "the thread never ran");
    cr_assert_eq(c, 'S');
    int st = wait_child(ch.pid);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %#x", st);
    finish(&ch);
}

Test(effects, exit_join_turned_on_after_start_joins, .timeout = 60)
{
    struct child ch = spawn_scenario("exit_join_late");
    char c = 0;
    cr_assert_eq(read_byte(ch.report, &c), 1, "the non-daemon thread was not joined at exit");
    cr_assert_eq(c, 'J');
    int st = wait_child(ch.pid);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %#x", st);
    finish(&ch);
}

Test(effects, exit_cleanup_off_does_not_wait_for_children, .timeout = 60)
{
    struct child ch = spawn_scenario("cleanup_off");
    char c = 0;
    cr_assert_eq(read_byte(ch.report, &c), 1, "the child was not started");
    cr_assert_eq(c, 'S');
    int st = wait_child(ch.pid);     /* its child still runs (holds the pipe) */
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %#x", st);
    finish(&ch);                     /* the grandchild reads EOF and ends */
}

Test(effects, exit_cleanup_turned_on_after_start_joins, .timeout = 60)
{
    struct child ch = spawn_scenario("cleanup_late");
    char c = 0;
    cr_assert_eq(read_byte(ch.report, &c), 1, "the scenario did not get to exit");
    cr_assert_eq(c, 'E');
    wait_proc_blocked(ch.pid, BLOCKED_GUARD);    /* in the exit-time join */
    int st;
    cr_assert_eq(waitpid(ch.pid, &st, WNOHANG), 0, "exited without joining its child");
    close(ch.hold);                  /* the grandchild ends: the join returns */
    ch.hold = -1;
    st = wait_child(ch.pid);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %#x", st);
    finish(&ch);
}

Test(effects, launcher_starts_for_children_of_other_threads, .timeout = 60)
{
    expect_clean("launcher_on");
}

Test(effects, launcher_off_starts_no_thread, .timeout = 60)
{
    expect_clean("launcher_off");
}
