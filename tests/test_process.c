/*
 * test_process.c - conc/process.h: Process objects with the fork, forkserver
 * and spawn start methods, exit codes, join/is_alive/sentinel/close,
 * current/parent process, active_children, cpu_count, daemon rules (no
 * children, terminated at exit, killed with a killed parent), supervision
 * without zombies or descriptor leaks.
 *
 * Criterion runs every test in its own process.  Child processes never
 * assert: they report through their exit code or a pipe, and the test
 * checks what they reported.  Children that wait for something give up
 * after CHILD_GUARD_MS, so a failing test leaves nothing running.
 */
#include <criterion/criterion.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conc.h"
#include "support/fd_count.h"

/* How long a waiting child waits before it gives up (a hang guard). */
#define CHILD_GUARD_MS 20000
/* How long the test waits for something a child does (a hang guard). */
#define GUARD_S 20.0
/* How long the test waits for a process that should die at once: well
 * below CHILD_GUARD_MS, so a child that survives fails the test. */
#define DEATH_GUARD_MS 8000

/* The name of p, in a buffer of the calling thread's (a few calls may be
 * alive in one expression). */
static const char *pname(const conc_process *p)
{
    static __thread char bufs[4][CONC_PROCESS_NAME_MAX + 1];
    static __thread unsigned next;
    char *b = bufs[next++ % 4];
    return conc_process_name(p, b, CONC_PROCESS_NAME_MAX + 1) < 0 ? "(error)" : b;
}

static const conc_start_method all_methods[] = {
    CONC_START_FORK, CONC_START_FORKSERVER, CONC_START_SPAWN,
};
static const char *const method_names[] = { "default", "fork", "forkserver", "spawn" };

#include "support/fork_sanitizers.h"
#include "support/task_state.h"

/* ---------------------------------------------------- child bodies */

enum mode {
    M_RETURN,           /* return value */
    M_EXIT,             /* exit(value) */
    M_SEGV,             /* die of SIGSEGV */
    M_GATE,             /* wait for a byte on fd (or the guard), return value */
    M_PAUSE,            /* wait for the guard only; value bit 1: without the
                           parent-death signal; bit 2: SIGTERM writes "T" to
                           fd and exits */
    M_WRITE,            /* write text to fd, return value */
    M_SLEEP_WRITE,      /* sleep ms, then write text to fd */
    M_REPORT,           /* write a struct report to fd */
    M_TRY_START,        /* start a child; return the error as a positive code */
    M_AFFINITY,         /* pin to one CPU, return conc_process_cpu_count() */
    M_FD_OPEN,          /* return 1 when fd (value) is open, 0 when not */
    M_SUPERVISE,        /* start daemon children of every method (and a
                           forkserver one without the parent-death signal),
                           report their pids on fd, then wait for the guard */
    M_EXIT_WITH_KIDS,   /* start a daemon and a non-daemon child, return */
    M_WAIT_PARENT,      /* wait for parent_process's sentinel, write "P" */
    M_MAKE_GRANDKID,    /* start an M_WAIT_PARENT child (fd passed on), wait */
};

struct job {
    int mode;
    int value;
    int fd;             /* output, or the gate */
    int fd2;            /* a second descriptor (gate of a supervisor) */
    int method;
    int ms;
    char text[32];
};

struct report {
    char name[CONC_PROCESS_NAME_MAX + 1];
    char parent_name[CONC_PROCESS_NAME_MAX + 1];
    char kid_name[CONC_PROCESS_NAME_MAX + 1];
    pid_t pid, getpid, getppid, parent_pid;
    int has_parent, parent_alive, daemon, parent_sentinel_readable;
};

static bool write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        p += n;
        len -= (size_t)n;
    }
    return true;
}

/* Waits up to ms for fd to become readable; true when it did. */
static bool readable(int fd, int ms)
{
    struct pollfd pfd = { .fd = fd, .events = POLLIN };
    int r;
    while ((r = poll(&pfd, 1, ms)) < 0 && errno == EINTR)
        ;
    return r == 1;
}

static int job_main(const void *arg, size_t len);

static int term_fd = -1;

static void on_term(int sig)
{
    (void)sig;
    if (write(term_fd, "T", 1) != 1)
        _exit(2);
    _exit(0);
}

static int start_kid(const struct job *j, int method, int daemon, const int *fds, size_t nfds,
                     conc_process **out)
{
    conc_process_opts o = { .method = method, .daemon = daemon, .pass_fds = fds,
                            .npass_fds = nfds };
    conc_process *p;
    int r = conc_process_new(&p, job_main, j, sizeof *j, &o);
    if (r)
        return r;
    r = conc_process_start(p);
    if (r) {
        conc_process_free(p);
        return r;
    }
    *out = p;
    return 0;
}

static int job_main(const void *arg, size_t len)
{
    if (len != sizeof(struct job))
        return 99;
    const struct job *j = arg;
    switch (j->mode) {
    case M_RETURN:
        return j->value;
    case M_EXIT:
        exit(j->value);
    case M_SEGV:
        signal(SIGSEGV, SIG_DFL);       /* no sanitizer report: just die */
        raise(SIGSEGV);
        return 98;
    case M_PAUSE:
        if (j->value & 1)
            prctl(PR_SET_PDEATHSIG, 0);
        if (j->value & 2) {
            term_fd = j->fd;
            signal(SIGTERM, on_term);
        }
        poll(NULL, 0, CHILD_GUARD_MS);
        return 0;
    case M_GATE: {
        char c;
        if (readable(j->fd, CHILD_GUARD_MS) && read(j->fd, &c, 1) == 1)
            return j->value;
        return 97;
    }
    case M_WRITE:
        return write_all(j->fd, j->text, strlen(j->text)) ? j->value : 96;
    case M_SLEEP_WRITE:
        conc_sleep(j->ms / 1000.0);
        return write_all(j->fd, j->text, strlen(j->text)) ? j->value : 96;
    case M_REPORT: {
        struct report r;
        memset(&r, 0, sizeof r);
        conc_process *me = conc_process_current(), *parent = conc_process_parent();
        snprintf(r.name, sizeof r.name, "%s", pname(me));
        r.pid = conc_process_pid(me);
        r.getpid = getpid();
        r.getppid = getppid();
        r.daemon = conc_process_daemon(me);
        r.has_parent = parent != NULL;
        if (parent) {
            snprintf(r.parent_name, sizeof r.parent_name, "%s", pname(parent));
            r.parent_pid = conc_process_pid(parent);
            r.parent_alive = conc_process_is_alive(parent);
            int s = conc_process_sentinel(parent);
            r.parent_sentinel_readable = s < 0 ? -1 : readable(s, 0);
        }
        conc_process *kid;
        if (conc_process_new(&kid, job_main, j, sizeof *j, NULL) == 0) {
            snprintf(r.kid_name, sizeof r.kid_name, "%s", pname(kid));
            conc_process_free(kid);
        }
        return write_all(j->fd, &r, sizeof r) ? 0 : 96;
    }
    case M_TRY_START: {
        struct job k = { .mode = M_RETURN, .value = 0 };
        conc_process *kid;
        int r = start_kid(&k, j->method, 0, NULL, 0, &kid);
        if (r == 0) {
            conc_process_join(kid, CONC_FOREVER);
            conc_process_free(kid);
        }
        return -r;
    }
    case M_AFFINITY: {
        cpu_set_t set;
        if (sched_getaffinity(0, sizeof set, &set) != 0)
            return 95;
        int first = -1;
        for (int i = 0; i < CPU_SETSIZE && first < 0; i++)
            if (CPU_ISSET(i, &set))
                first = i;
        CPU_ZERO(&set);
        CPU_SET(first, &set);
        if (sched_setaffinity(0, sizeof set, &set) != 0)
            return 94;
        return conc_process_cpu_count();
    }
    case M_FD_OPEN:
        return fcntl(j->value, F_GETFD) >= 0;
    case M_SUPERVISE: {
        /* Daemon children that only wait: only the death of this
         * supervisor ends them. */
        struct job k = { .mode = M_PAUSE, .value = 0 };
        pid_t pids[4];
        for (int i = 0; i < 4; i++) {
            conc_process *kid;
            /* The last one is left to the forkserver's backup. */
            int method = i < 3 ? all_methods[i] : CONC_START_FORKSERVER;
            if (i == 3)
                k.value = 1;
            if (start_kid(&k, method, CONC_DAEMON, NULL, 0, &kid) != 0)
                return 92;
            pids[i] = conc_process_pid(kid);
            conc_process_free(kid);
        }
        if (!write_all(j->fd, pids, sizeof pids))
            return 91;
        readable(j->fd2, CHILD_GUARD_MS);      /* killed before this returns */
        return 0;
    }
    case M_EXIT_WITH_KIDS: {
        struct job d = { .mode = M_PAUSE, .fd = j->fd, .value = 2 };
        conc_process *kid;
        if (start_kid(&d, j->method, CONC_DAEMON, &j->fd, 1, &kid) != 0)
            return 92;
        pid_t pid = conc_process_pid(kid);
        conc_process_free(kid);
        if (!write_all(j->fd, &pid, sizeof pid))
            return 91;
        struct job n = { .mode = M_SLEEP_WRITE, .fd = j->fd, .ms = 200, .text = "N" };
        if (start_kid(&n, j->method, CONC_NOT_DAEMON, &j->fd, 1, &kid) != 0)
            return 90;
        conc_process_free(kid);
        return 0;                       /* exit joins N, terminates D */
    }
    case M_WAIT_PARENT: {
        conc_process *parent = conc_process_parent();
        if (!parent)
            return 89;
        if (!readable(conc_process_sentinel(parent), CHILD_GUARD_MS))
            return 88;
        return write_all(j->fd, "P", 1) ? 0 : 96;
    }
    case M_MAKE_GRANDKID: {
        struct job k = { .mode = M_WAIT_PARENT, .fd = j->fd };
        conc_process *kid;
        if (start_kid(&k, j->method, CONC_NOT_DAEMON, &j->fd, 1, &kid) != 0)
            return 92;
        pid_t pid = conc_process_pid(kid);
        conc_process_free(kid);
        if (!write_all(j->fd, &pid, sizeof pid))
            return 91;
        readable(j->fd2, CHILD_GUARD_MS);
        return 0;
    }
    }
    return 100;
}

/* The subclass form. */
struct counter_def {
    conc_process_def base;
    int fd;
    int start;
    int add;
};

static int counter_run(conc_process_def *self)
{
    struct counter_def *c = (struct counter_def *)self;
    char buf[32];
    int n = snprintf(buf, sizeof buf, "sum=%d", c->start + c->add);
    return write_all(c->fd, buf, (size_t)n) ? c->start + c->add : 96;
}

/* ---------------------------------------------------- test helpers */

static conc_process *make(const struct job *j, int method, int daemon, const int *fds,
                          size_t nfds)
{
    conc_process_opts o = { .method = method, .daemon = daemon, .pass_fds = fds,
                            .npass_fds = nfds };
    conc_process *p = NULL;
    int r = conc_process_new(&p, job_main, j, sizeof *j, &o);
    cr_assert_eq(r, 0, "conc_process_new: %s", conc_errname(r));
    cr_assert_not_null(p);
    return p;
}

static conc_process *spawn(const struct job *j, int method, int daemon, const int *fds,
                           size_t nfds)
{
    conc_process *p = make(j, method, daemon, fds, nfds);
    int r = conc_process_start(p);
    cr_assert_eq(r, 0, "conc_process_start (%s): %s", method_names[method], conc_errname(r));
    cr_assert_gt(conc_process_pid(p), 0);
    return p;
}

/* Joins with a hang guard (the child is killed if it does not end) and
 * returns the exit code. */
static int join_code(conc_process *p)
{
    int r = conc_process_join(p, GUARD_S);
    if (r == -ETIMEDOUT) {
        conc_process_kill(p);
        conc_process_join(p, CONC_FOREVER);
    }
    cr_assert_eq(r, 0, "join %s: %s", pname(p), conc_errname(r));
    int code = 12345;
    r = conc_process_exitcode(p, &code);
    cr_assert_eq(r, 0, "exitcode: %s", conc_errname(r));
    return code;
}

static int run_code(const struct job *j, int method)
{
    conc_process *p = spawn(j, method, 0, NULL, 0);
    int code = join_code(p);
    conc_process_free(p);
    return code;
}

/* Reads exactly len bytes with a hang guard. */
static void read_exact(int fd, void *buf, size_t len)
{
    char *p = buf;
    while (len > 0) {
        cr_assert(readable(fd, (int)(GUARD_S * 1000)), "nothing to read from the child");
        ssize_t n = read(fd, p, len);
        cr_assert_gt(n, 0, "EOF or error reading from the child");
        p += n;
        len -= (size_t)n;
    }
}

/* True when pid is no longer our child: reaped, not a zombie. */
static bool reaped(pid_t pid)
{
    siginfo_t si;
    memset(&si, 0, sizeof si);
    return waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) == -1 && errno == ECHILD;
}

static int pidfd_of(pid_t pid)
{
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

/* Waits (hang guard) for the process behind pidfd to end; kills it and
 * fails when it does not. */
static void expect_dies(int pidfd, const char *what)
{
    bool died = readable(pidfd, DEATH_GUARD_MS);
    if (!died)
        syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
    close(pidfd);
    cr_assert(died, "%s is still running", what);
}

static void pipe_ok(int p[2])
{
    cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
}

/* ------------------------------------------------------ objects */

Test(process, new_errors, .timeout = 30)
{
    conc_process *p = NULL;
    struct job j = { .mode = M_RETURN };
    cr_assert_eq(conc_process_new(NULL, job_main, &j, sizeof j, NULL), -EINVAL);
    cr_assert_eq(conc_process_new(&p, NULL, &j, sizeof j, NULL), -EINVAL);
    cr_assert_eq(conc_process_new(&p, job_main, NULL, 4, NULL), -EINVAL);
    cr_assert_eq(conc_process_new(&p, job_main, &j, CONC_PROCESS_ARG_MAX + 1u, NULL), -EINVAL);
    conc_process_opts bad_daemon = { .daemon = 2 };
    cr_assert_eq(conc_process_new(&p, job_main, &j, sizeof j, &bad_daemon), -EINVAL);
    conc_process_opts bad_method = { .method = (conc_start_method)7 };
    cr_assert_eq(conc_process_new(&p, job_main, &j, sizeof j, &bad_method), -EINVAL);
    int neg = -1;
    conc_process_opts bad_fd = { .pass_fds = &neg, .npass_fds = 1 };
    cr_assert_eq(conc_process_new(&p, job_main, &j, sizeof j, &bad_fd), -EINVAL);
    conc_process_opts too_many = { .pass_fds = &neg, .npass_fds = CONC_PROCESS_PASS_FDS_MAX + 1 };
    cr_assert_eq(conc_process_new(&p, job_main, &j, sizeof j, &too_many), -EINVAL);
    conc_process_def nodef = { NULL };
    cr_assert_eq(conc_process_new_def(&p, &nodef, sizeof nodef, NULL), -EINVAL);
    struct counter_def c = { { counter_run }, 1, 2, 3 };
    cr_assert_eq(conc_process_new_def(&p, &c.base, sizeof c.base - 1, NULL), -EINVAL);
    cr_assert_eq(conc_process_new_def(NULL, &c.base, sizeof c, NULL), -EINVAL);
    cr_assert_null(p, "nothing is stored on error");
    /* An empty argument is fine. */
    cr_assert_eq(conc_process_new(&p, job_main, NULL, 0, NULL), 0);
    conc_process_free(p);
    conc_process_free(NULL);
}

Test(process, unstarted_object, .timeout = 30)
{
    struct job j = { .mode = M_RETURN };
    conc_process *a = make(&j, 0, 0, NULL, 0), *b = make(&j, 0, 0, NULL, 0);
    int na, nb;
    cr_assert_eq(sscanf(pname(a), "Process-%d", &na), 1, "%s", pname(a));
    cr_assert_eq(sscanf(pname(b), "Process-%d", &nb), 1);
    cr_assert_eq(nb, na + 1, "names count up: %s, %s", pname(a),
                 pname(b));
    cr_assert_eq(conc_process_set_name(a, "worker"), 0);
    cr_assert_str_eq(pname(a), "worker");
    cr_assert_eq(conc_process_set_name(a, NULL), -EINVAL);
    char longname[200];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    cr_assert_eq(conc_process_set_name(a, longname), 0);
    cr_assert_eq(strlen(pname(a)), CONC_PROCESS_NAME_MAX);
    /* The copy is cut as snprintf cuts; the result is the whole length. */
    char small[4] = "zzz";
    cr_assert_eq(conc_process_name(a, small, sizeof small), CONC_PROCESS_NAME_MAX);
    cr_assert_str_eq(small, "xxx");
    cr_assert_eq(conc_process_name(a, NULL, 0), CONC_PROCESS_NAME_MAX);
    cr_assert_eq(conc_process_name(a, NULL, 5), -EINVAL);
    cr_assert_eq(conc_process_name(NULL, small, sizeof small), -EINVAL);
    conc_process_opts named = { .name = "given" };
    conc_process *c;
    cr_assert_eq(conc_process_new(&c, job_main, &j, sizeof j, &named), 0);
    cr_assert_str_eq(pname(c), "given");
    conc_process_free(c);

    int code = 777;
    cr_assert_eq(conc_process_pid(a), 0);
    cr_assert_eq(conc_process_exitcode(a, &code), -EBUSY);
    cr_assert_eq(code, 777);
    cr_assert_eq(conc_process_exitcode(NULL, &code), -EINVAL);
    cr_assert_eq(conc_process_sentinel(a), -EINVAL);
    cr_assert_eq(conc_process_join(a, 0), -EINVAL);
    cr_assert_eq(conc_process_join(a, 1.0), -EINVAL);
    cr_assert_eq(conc_process_terminate(a), -EINVAL);
    cr_assert_eq(conc_process_kill(a), -EINVAL);
    cr_assert_not(conc_process_is_alive(a));
    cr_assert_not(conc_process_is_alive(NULL));
    cr_assert_eq(conc_process_start(NULL), -EINVAL);
    cr_assert_eq(conc_process_join(NULL, 1), -EINVAL);

    /* daemon: inherited from the current process (not a daemon), settable
     * before start. */
    cr_assert_not(conc_process_daemon(a));
    cr_assert_eq(conc_process_set_daemon(a, true), 0);
    cr_assert(conc_process_daemon(a));
    conc_process_opts d = { .daemon = CONC_DAEMON };
    cr_assert_eq(conc_process_new(&c, job_main, &j, sizeof j, &d), 0);
    cr_assert(conc_process_daemon(c));
    conc_process_free(c);

    /* close before start: fine, and final. */
    cr_assert_eq(conc_process_close(b), 0);
    cr_assert_eq(conc_process_close(b), 0);
    cr_assert_eq(conc_process_start(b), -EINVAL);
    cr_assert_eq(conc_process_exitcode(b, &code), -EBUSY);
    conc_process_free(a);
    conc_process_free(b);
}

Test(process, start_method_setting, .timeout = 30)
{
    cr_assert_eq(conc_process_start_method(), CONC_START_FORK);
    cr_assert_eq(conc_process_set_start_method(CONC_START_DEFAULT), -EINVAL);
    cr_assert_eq(conc_process_set_start_method((conc_start_method)9), -EINVAL);
    cr_assert_eq(conc_process_start_method(), CONC_START_FORK);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(conc_process_set_start_method(all_methods[i]), 0);
        cr_assert_eq(conc_process_start_method(), all_methods[i]);
    }
}

Test(process, cpu_count_matches_affinity, .timeout = 30)
{
    cpu_set_t set;
    cr_assert_eq(sched_getaffinity(0, sizeof set, &set), 0);
    cr_assert_eq(conc_process_cpu_count(), CPU_COUNT(&set));
    cr_assert_geq(conc_process_cpu_count(), 1);
    struct job j = { .mode = M_AFFINITY };
    cr_assert_eq(run_code(&j, CONC_START_FORK), 1, "a child pinned to one CPU counts one");
}

/* --------------------------------------------------- exit codes */

static void check_exit_codes(int method)
{
    struct job ret = { .mode = M_RETURN, .value = 7 };
    cr_assert_eq(run_code(&ret, method), 7, "%s: return 7", method_names[method]);
    struct job zero = { .mode = M_RETURN, .value = 0 };
    cr_assert_eq(run_code(&zero, method), 0);
    struct job ex = { .mode = M_EXIT, .value = 3 };
    cr_assert_eq(run_code(&ex, method), 3, "%s: exit(3)", method_names[method]);
    struct job segv = { .mode = M_SEGV };
    cr_assert_eq(run_code(&segv, method), -SIGSEGV, "%s: SIGSEGV", method_names[method]);

    /* terminate and kill a blocked child. */
    int gate[2];
    pipe_ok(gate);
    struct job g = { .mode = M_GATE, .fd = gate[0], .value = 5 };
    conc_process *t = spawn(&g, method, 0, &gate[0], 1);
    conc_process *k = spawn(&g, method, 0, &gate[0], 1);
    cr_assert_eq(conc_process_terminate(t), 0);
    cr_assert_eq(join_code(t), -SIGTERM, "%s: terminate", method_names[method]);
    cr_assert_eq(conc_process_kill(k), 0);
    cr_assert_eq(join_code(k), -SIGKILL, "%s: kill", method_names[method]);
    /* Signalling an ended child is harmless. */
    cr_assert_eq(conc_process_terminate(t), 0);
    cr_assert_eq(conc_process_kill(k), 0);
    conc_process_free(t);
    conc_process_free(k);
    close(gate[0]);
    close(gate[1]);
}

Test(fork, exit_codes, .timeout = 30)
{
    check_exit_codes(CONC_START_FORK);
}

Test(forkserver, exit_codes, .timeout = 30)
{
    check_exit_codes(CONC_START_FORKSERVER);
}

Test(spawn, exit_codes, .timeout = 30)
{
    check_exit_codes(CONC_START_SPAWN);
}

/* ----------------------------------------- join, sentinel, close */

Test(process, join_timeout_and_is_alive, .timeout = 30)
{
    int gate[2];
    pipe_ok(gate);
    struct job g = { .mode = M_GATE, .fd = gate[0], .value = 4 };
    conc_process *p = spawn(&g, CONC_START_FORK, 0, NULL, 0);
    cr_assert(conc_process_is_alive(p));
    int64_t t0 = conc_now();
    cr_assert_eq(conc_process_join(p, 0.05), -ETIMEDOUT);
    cr_assert_geq(conc_now() - t0, 40000000, "join(0.05) returned early");
    cr_assert_eq(conc_process_join(p, 0), -EAGAIN);
    cr_assert_eq(conc_process_join_until(p, conc_now() - 1), -ETIMEDOUT);
    cr_assert_eq(conc_process_join(p, -2.0), -EINVAL);
    int code;
    cr_assert_eq(conc_process_exitcode(p, &code), -EBUSY);
    cr_assert(conc_process_is_alive(p));
    cr_assert_eq(conc_process_start(p), -EALREADY);
    cr_assert_eq(conc_process_set_daemon(p, true), -EALREADY);
    cr_assert_eq(write(gate[1], "x", 1), 1);
    cr_assert_eq(join_code(p), 4);
    cr_assert_not(conc_process_is_alive(p));
    cr_assert_eq(conc_process_join(p, 0), 0, "joining again is fine");
    cr_assert_eq(conc_process_join(p, CONC_FOREVER), 0);
    cr_assert_eq(conc_process_start(p), -EALREADY);
    conc_process_free(p);
    close(gate[0]);
    close(gate[1]);
}

/* The kernel id a thread stored at *slot when it began. */
static pid_t await_tid(pid_t *slot)
{
    int64_t end = conc_now() + (int64_t)(GUARD_S * 1e9);
    pid_t tid;
    while ((tid = __atomic_load_n(slot, __ATOMIC_ACQUIRE)) == 0) {
        cr_assert_lt(conc_now(), end, "the thread never ran");
        usleep(100);
    }
    return tid;
}

struct joiner {
    conc_process *p;
    int rc;
    pid_t tid;              /* the joining thread's kernel id */
};

static void *join_thread(void *arg)
{
    struct joiner *j = arg;
    __atomic_store_n(&j->tid, gettid(), __ATOMIC_RELEASE);
    __atomic_store_n(&j->rc, conc_process_join(j->p, GUARD_S), __ATOMIC_RELEASE);
    return NULL;
}

Test(process, many_joiners, .timeout = 30)
{
    int gate[2];
    pipe_ok(gate);
    struct job g = { .mode = M_GATE, .fd = gate[0], .value = 6 };
    conc_process *p = spawn(&g, CONC_START_FORK, 0, NULL, 0);
    struct joiner js[3];
    conc_thread *t[3];
    for (int i = 0; i < 3; i++) {
        js[i] = (struct joiner){ p, 1, 0 };
        cr_assert_eq(conc_thread_new(&t[i], join_thread, &js[i], NULL), 0);
        cr_assert_eq(conc_thread_start(t[i]), 0);
    }
    /* every joiner asleep in its join before the child may end */
    for (int i = 0; i < 3; i++) {
        pid_t tid = await_tid(&js[i].tid);
        wait_thread_blocked(tid, BLOCKED_GUARD);
        cr_assert_eq(__atomic_load_n(&js[i].rc, __ATOMIC_ACQUIRE), 1,
                     "joiner %d returned early", i);
    }
    cr_assert_eq(write(gate[1], "x", 1), 1);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(conc_thread_join(t[i], CONC_FOREVER), 0);
        conc_thread_free(t[i]);
        cr_assert_eq(js[i].rc, 0, "joiner %d: %s", i, conc_errname(js[i].rc));
    }
    cr_assert_eq(join_code(p), 6);
    cr_assert(reaped(conc_process_pid(p)));
    conc_process_free(p);
    close(gate[0]);
    close(gate[1]);
}

static void check_sentinel(int method)
{
    int gate[2];
    pipe_ok(gate);
    struct job g = { .mode = M_GATE, .fd = gate[0], .value = 0 };
    conc_process *p = spawn(&g, method, 0, &gate[0], 1);
    int s = conc_process_sentinel(p);
    cr_assert_geq(s, 0);
    cr_assert_not(readable(s, 0), "sentinel readable while the child runs");
    cr_assert_eq(write(gate[1], "x", 1), 1);
    cr_assert(readable(s, (int)(GUARD_S * 1000)), "sentinel not readable after the end");
    /* Not reaped yet: the sentinel says it ended, join reaps it. */
    cr_assert_eq(join_code(p), 0);
    cr_assert_eq(conc_process_sentinel(p), s, "valid until close");
    cr_assert(readable(s, 0), "stays readable");
    cr_assert_eq(conc_process_close(p), 0);
    cr_assert_eq(conc_process_sentinel(p), -EINVAL);
    conc_process_free(p);
    close(gate[0]);
    close(gate[1]);
}

Test(process, sentinel_polls_readable_at_end, .timeout = 30)
{
    check_sentinel(CONC_START_FORK);
    check_sentinel(CONC_START_FORKSERVER);
}

Test(process, close_rules, .timeout = 30)
{
    int gate[2];
    pipe_ok(gate);
    struct job g = { .mode = M_GATE, .fd = gate[0], .value = 9 };
    conc_process *p = spawn(&g, CONC_START_FORK, 0, NULL, 0);
    int s = conc_process_sentinel(p);
    cr_assert_eq(conc_process_close(p), -EBUSY);
    cr_assert(conc_process_is_alive(p), "a refused close changes nothing");
    cr_assert_eq(conc_process_sentinel(p), s);
    cr_assert_eq(write(gate[1], "x", 1), 1);
    /* close reaps an ended child itself. */
    cr_assert(readable(s, (int)(GUARD_S * 1000)));
    cr_assert_eq(conc_process_close(p), 0);
    cr_assert_eq(fcntl(s, F_GETFD), -1, "the pidfd is closed");
    int code = 0;
    cr_assert_eq(conc_process_exitcode(p, &code), 0);
    cr_assert_eq(code, 9);
    cr_assert_gt(conc_process_pid(p), 0);
    cr_assert(reaped(conc_process_pid(p)));
    cr_assert_eq(conc_process_join(p, 0), -EINVAL);
    cr_assert_eq(conc_process_sentinel(p), -EINVAL);
    cr_assert_eq(conc_process_terminate(p), -EINVAL);
    cr_assert_eq(conc_process_kill(p), -EINVAL);
    cr_assert_eq(conc_process_start(p), -EINVAL);
    cr_assert_not(conc_process_is_alive(p));
    cr_assert_eq(conc_process_close(p), 0);
    cr_assert_eq(conc_process_close(NULL), -EINVAL);
    conc_process_free(p);
    close(gate[0]);
    close(gate[1]);
}

Test(process, no_zombie_after_join, .timeout = 30)
{
    for (int i = 0; i < 3; i++) {
        struct job j = { .mode = M_RETURN, .value = 1 };
        conc_process *p = spawn(&j, all_methods[i], 0, NULL, 0);
        pid_t pid = conc_process_pid(p);
        cr_assert_eq(join_code(p), 1);
        cr_assert(reaped(pid), "%s: pid %d is still a child (zombie)", method_names[i + 1],
                  (int)pid);
        char path[64];
        snprintf(path, sizeof path, "/proc/%d", (int)pid);
        cr_assert_neq(access(path, F_OK), 0, "%s still exists", path);
        conc_process_free(p);
    }
}

/* ---------------------------------------------- active_children */

Test(process, active_children_reaps, .timeout = 30)
{
    int gate[2];
    pipe_ok(gate);
    struct job quick = { .mode = M_RETURN, .value = 2 };
    struct job slow = { .mode = M_GATE, .fd = gate[0], .value = 3 };
    cr_assert_eq(conc_process_active_children(NULL, 0), 0);
    cr_assert_eq(conc_process_active_children(NULL, 1), -EINVAL);
    conc_process *q = spawn(&quick, CONC_START_FORK, 0, NULL, 0);
    conc_process *s1 = spawn(&slow, CONC_START_FORK, 0, NULL, 0);
    conc_process *s2 = spawn(&slow, CONC_START_FORKSERVER, 0, &gate[0], 1);
    pid_t qpid = conc_process_pid(q);
    /* The quick one ends; nobody joins it. */
    cr_assert(readable(conc_process_sentinel(q), (int)(GUARD_S * 1000)));
    cr_assert_not(reaped(qpid), "ended but not reaped yet");
    conc_process_free(q);               /* the handle is gone, the registry reaps */

    conc_process *out[8];
    int n = conc_process_active_children(out, 8);
    cr_assert_eq(n, 2);
    cr_assert(reaped(qpid), "active_children reaped the ended child");
    cr_assert_eq(out[0], s1, "oldest first");
    cr_assert_eq(out[1], s2);
    for (int i = 0; i < n; i++)
        conc_process_free(out[i]);
    cr_assert_eq(conc_process_active_children(out, 1), 2, "the count, even past cap");
    conc_process_free(out[0]);

    cr_assert_eq(write(gate[1], "xx", 2), 2);
    /* Freed running handles are reaped by active_children too. */
    pid_t p1 = conc_process_pid(s1), p2 = conc_process_pid(s2);
    int s1fd = dup(conc_process_sentinel(s1)), s2fd = dup(conc_process_sentinel(s2));
    conc_process_free(s1);
    conc_process_free(s2);
    cr_assert(readable(s1fd, (int)(GUARD_S * 1000)));
    cr_assert(readable(s2fd, (int)(GUARD_S * 1000)));
    close(s1fd);
    close(s2fd);
    cr_assert_eq(conc_process_active_children(out, 8), 0);
    cr_assert(reaped(p1));
    cr_assert(reaped(p2));
    close(gate[0]);
    close(gate[1]);
}

/* ------------------------------------ current and parent process */

struct renamer {
    conc_process *p;
    atomic_int stop;
};

static void *rename_loop(void *arg)
{
    struct renamer *r = arg;
    static const char *names[] = { "a", "a-much-longer-name-of-a-worker-process" };
    for (unsigned i = 0; !atomic_load(&r->stop); i++)
        conc_process_set_name(r->p, names[i % 2]);
    return NULL;
}

/* A name read while another thread renames is one name or the other, whole
 * (the old pointer getter handed out a buffer being rewritten). */
Test(process, name_read_whole_while_renamed, .timeout = 60)
{
    struct job j = { .mode = M_RETURN };
    struct renamer r = { .p = make(&j, 0, 0, NULL, 0) };
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, rename_loop, &r), 0);
    for (int i = 0; i < 200000; i++) {
        char b[CONC_PROCESS_NAME_MAX + 1];
        int n = conc_process_name(r.p, b, sizeof b);
        cr_assert(n >= 0 && (size_t)n == strlen(b));
        cr_assert(strcmp(b, "a") == 0 || strcmp(b, "a-much-longer-name-of-a-worker-process") == 0 ||
                      strncmp(b, "Process-", 8) == 0,
                  "torn name '%s'", b);
    }
    atomic_store(&r.stop, 1);
    pthread_join(t, NULL);
    conc_process_free(r.p);
}

Test(process, current_and_parent_in_main, .timeout = 30)
{
    conc_process *me = conc_process_current();
    cr_assert_not_null(me);
    cr_assert_str_eq(pname(me), "MainProcess");
    cr_assert_eq(conc_process_pid(me), getpid());
    cr_assert_not(conc_process_daemon(me));
    cr_assert(conc_process_is_alive(me));
    cr_assert_eq(conc_process_start(me), -EALREADY);
    cr_assert_eq(conc_process_join(me, 0), -EINVAL);
    cr_assert_eq(conc_process_sentinel(me), -EINVAL);
    cr_assert_eq(conc_process_terminate(me), -EINVAL);
    cr_assert_eq(conc_process_close(me), -EINVAL);
    int code;
    cr_assert_eq(conc_process_exitcode(me, &code), -EBUSY);
    cr_assert_eq(conc_process_ref(me), me);
    conc_process_free(me);              /* borrowed: ignored */
    cr_assert_str_eq(pname(conc_process_current()), "MainProcess");
    cr_assert_null(conc_process_parent(), "conc did not start this process");
}

static void check_child_identity(int method)
{
    int out[2];
    pipe_ok(out);
    struct job j = { .mode = M_REPORT, .fd = out[1] };
    conc_process_opts o = { .method = method, .name = "reporter", .pass_fds = &out[1],
                            .npass_fds = 1 };
    conc_process *p;
    cr_assert_eq(conc_process_new(&p, job_main, &j, sizeof j, &o), 0);
    char ident[32];
    conc_process *probe = make(&j, method, 0, NULL, 0);
    /* "Process-N": the reporter is number N - 1. */
    int n = 0;
    cr_assert_eq(sscanf(pname(probe), "Process-%d", &n), 1);
    snprintf(ident, sizeof ident, "Process-%d:1", n - 1);
    conc_process_free(probe);
    cr_assert_eq(conc_process_set_name(conc_process_current(), "Boss"), 0);
    cr_assert_eq(conc_process_start(p), 0);
    struct report r;
    read_exact(out[0], &r, sizeof r);
    cr_assert_eq(join_code(p), 0);
    cr_assert_str_eq(r.name, "reporter", "%s", method_names[method]);
    cr_assert_eq(r.pid, r.getpid);
    cr_assert_eq(r.getpid, conc_process_pid(p));
    cr_assert_eq(r.getppid, getpid(), "%s: the child's parent is the starter",
                 method_names[method]);
    cr_assert(r.has_parent);
    cr_assert_str_eq(r.parent_name, "Boss");
    cr_assert_eq(r.parent_pid, getpid());
    cr_assert(r.parent_alive);
    cr_assert_eq(r.parent_sentinel_readable, 0);
    cr_assert_not(r.daemon);
    cr_assert_str_eq(r.kid_name, ident, "%s: a child's children are named after it",
                     method_names[method]);
    conc_process_free(p);
    conc_process_set_name(conc_process_current(), "MainProcess");
    close(out[0]);
    close(out[1]);
}

Test(process, current_and_parent_in_child, .timeout = 30)
{
    check_child_identity(CONC_START_FORK);
    check_child_identity(CONC_START_FORKSERVER);
    check_child_identity(CONC_START_SPAWN);
}

Test(process, parent_sentinel_readable_when_parent_dies, .timeout = 30)
{
    int out[2], hold[2];
    pipe_ok(out);
    pipe_ok(hold);
    for (int i = 0; i < 2; i++) {
        /* S starts C (method i); C waits for S's death through
         * parent_process' sentinel. */
        struct job s = { .mode = M_MAKE_GRANDKID, .fd = out[1], .fd2 = hold[0],
                         .method = all_methods[i] };
        conc_process *sp = spawn(&s, CONC_START_FORK, 0, NULL, 0);
        pid_t kid;
        read_exact(out[0], &kid, sizeof kid);
        int kfd = pidfd_of(kid);
        cr_assert_geq(kfd, 0);
        cr_assert_not(readable(out[0], 50), "C wrote before S died");
        cr_assert_eq(conc_process_kill(sp), 0);
        cr_assert_eq(join_code(sp), -SIGKILL);
        char c = 0;
        read_exact(out[0], &c, 1);
        cr_assert_eq(c, 'P');
        expect_dies(kfd, "the orphan");
        conc_process_free(sp);
    }
    close(out[0]);
    close(out[1]);
    close(hold[0]);
    close(hold[1]);
}

/* ----------------------------------------------------- daemons */

Test(daemon, may_not_start_children, .timeout = 30)
{
    for (int i = 0; i < 3; i++) {
        struct job j = { .mode = M_TRY_START, .method = all_methods[i] };
        conc_process *p = spawn(&j, all_methods[i], CONC_DAEMON, NULL, 0);
        cr_assert_eq(join_code(p), EPERM, "%s daemon started a child", method_names[i + 1]);
        conc_process_free(p);
        /* A non-daemon may. */
        p = spawn(&j, all_methods[i], CONC_NOT_DAEMON, NULL, 0);
        cr_assert_eq(join_code(p), 0);
        conc_process_free(p);
    }
    /* The same rule in this process once it is a daemon. */
    struct job r = { .mode = M_RETURN };
    conc_process *p = make(&r, 0, 0, NULL, 0);
    cr_assert_eq(conc_process_set_daemon(conc_process_current(), true), 0);
    conc_process *q = make(&r, 0, 0, NULL, 0);
    cr_assert(conc_process_daemon(q), "inherits the current process's flag");
    cr_assert_eq(conc_process_start(p), -EPERM);
    cr_assert_eq(conc_process_set_daemon(conc_process_current(), false), 0);
    cr_assert_eq(conc_process_start(p), 0, "a refused start can be retried");
    cr_assert_eq(join_code(p), 0);
    conc_process_free(p);
    conc_process_free(q);
}

Test(daemon, killed_with_a_killed_parent, .timeout = 30)
{
    /* S (non-daemon) starts daemon children with every method, then is
     * SIGKILLed: they must die with it, and so must S's forkserver. */
    int out[2], hold[2];
    pipe_ok(out);
    pipe_ok(hold);
    struct job s = { .mode = M_SUPERVISE, .fd = out[1], .fd2 = hold[0] };
    conc_process *sp = spawn(&s, CONC_START_FORK, 0, NULL, 0);
    pid_t pids[4];
    read_exact(out[0], pids, sizeof pids);

    /* Every child of S (any of its threads): the daemons and its forkserver. */
    int fds[16], n = 0;
    char path[96];
    snprintf(path, sizeof path, "/proc/%d/task", (int)conc_process_pid(sp));
    DIR *d = opendir(path);
    cr_assert_not_null(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char cpath[400];
        snprintf(cpath, sizeof cpath, "%s/%s/children", path, e->d_name);
        FILE *f = fopen(cpath, "r");
        if (!f)
            continue;
        int kid;
        while (fscanf(f, "%d", &kid) == 1 && n < 16)
            fds[n++] = pidfd_of(kid);
        fclose(f);
    }
    closedir(d);
    for (int i = 0; i < 4; i++) {
        bool seen = false;
        for (int k = 0; k < n; k++) {
            if (fds[k] >= 0) {
                char fdinfo[64];
                snprintf(fdinfo, sizeof fdinfo, "/proc/self/fdinfo/%d", fds[k]);
                FILE *f = fopen(fdinfo, "r");
                char line[128];
                while (f && fgets(line, sizeof line, f)) {
                    int pid;
                    if (sscanf(line, "Pid: %d", &pid) == 1 && pid == pids[i])
                        seen = true;
                }
                if (f)
                    fclose(f);
            }
        }
        cr_assert(seen, "daemon %d (%d) is not a child of its starter", i, (int)pids[i]);
    }
    cr_assert_geq(n, 5, "the four daemons and the forkserver");

    cr_assert_eq(conc_process_kill(sp), 0);
    cr_assert_eq(join_code(sp), -SIGKILL);
    for (int k = 0; k < n; k++) {
        cr_assert_geq(fds[k], 0);
        expect_dies(fds[k], "a child of the killed supervisor");
    }
    conc_process_free(sp);
    close(out[0]);
    close(out[1]);
    close(hold[0]);
    close(hold[1]);
}

static void check_exit_handling(int method)
{
    /* S starts a daemon D (waits; writes "T" on SIGTERM) and a non-daemon N
     * (writes "N" after 0.2 s), then returns: exit joins N first, then
     * terminates D. */
    int out[2];
    pipe_ok(out);
    struct job s = { .mode = M_EXIT_WITH_KIDS, .fd = out[1], .method = method };
    conc_process *sp = spawn(&s, CONC_START_FORK, 0, NULL, 0);
    pid_t dpid;
    read_exact(out[0], &dpid, sizeof dpid);
    int dfd = pidfd_of(dpid);
    cr_assert_geq(dfd, 0);
    cr_assert_eq(join_code(sp), 0, "%s", method_names[method]);
    char c = 0;
    cr_assert(readable(out[0], 0), "%s: the non-daemon child was not joined at exit",
              method_names[method]);
    cr_assert_eq(read(out[0], &c, 1), 1);
    cr_assert_eq(c, 'N');
    cr_assert(readable(out[0], 0), "%s: the daemon child got no SIGTERM",
              method_names[method]);
    cr_assert_eq(read(out[0], &c, 1), 1);
    cr_assert_eq(c, 'T');
    cr_assert(readable(dfd, 0), "%s: the daemon child outlived its parent's exit",
              method_names[method]);
    close(dfd);
    conc_process_free(sp);
    close(out[0]);
    close(out[1]);
}

Test(daemon, terminated_at_normal_exit, .timeout = 30)
{
    check_exit_handling(CONC_START_FORK);
    check_exit_handling(CONC_START_FORKSERVER);
}

/* A thread that starts a daemon process and ends. */
struct thread_start {
    struct job job;
    int method;
    conc_process *p;
    int rc;
    pid_t tid;              /* the starting thread's kernel id */
};

static void *start_from_thread(void *arg)
{
    struct thread_start *t = arg;
    __atomic_store_n(&t->tid, gettid(), __ATOMIC_RELEASE);
    conc_process_opts o = { .method = t->method, .daemon = CONC_DAEMON,
                            .pass_fds = &t->job.fd, .npass_fds = 1 };
    t->rc = conc_process_new(&t->p, job_main, &t->job, sizeof t->job, &o);
    if (t->rc == 0)
        t->rc = conc_process_start(t->p);
    return NULL;
}

Test(daemon, outlives_the_thread_that_started_it, .timeout = 30)
{
    /* PR_SET_PDEATHSIG fires when the parent *thread* ends: conc starts
     * children from a thread that lives as long as the process. */
    int gate[2];
    pipe_ok(gate);
    for (int i = 0; i < 3; i++) {
        struct thread_start ts = { .job = { .mode = M_GATE, .fd = gate[0], .value = 8 },
                                   .method = all_methods[i] };
        conc_thread *t;
        cr_assert_eq(conc_thread_new(&t, start_from_thread, &ts, NULL), 0);
        cr_assert_eq(conc_thread_start(t), 0);
        cr_assert_eq(conc_thread_join(t, CONC_FOREVER), 0);
        conc_thread_free(t);
        cr_assert_eq(ts.rc, 0, "%s: %s", method_names[i + 1], conc_errname(ts.rc));
        /* Once the thread is gone from the kernel, a death signal tied to it
         * has been sent; the daemon, which would be woken to die by it, must
         * be asleep at its gate. */
        pid_t tid = await_tid(&ts.tid);
        int64_t end = conc_now() + (int64_t)(GUARD_S * 1e9);
        while (task_state(getpid(), tid) != 0) {
            cr_assert_lt(conc_now(), end, "the starting thread never left");
            usleep(200);
        }
        wait_proc_blocked(conc_process_pid(ts.p), BLOCKED_GUARD);
        cr_assert(conc_process_is_alive(ts.p), "%s: the daemon died with its thread",
                  method_names[i + 1]);
        cr_assert_eq(write(gate[1], "x", 1), 1);
        cr_assert_eq(join_code(ts.p), 8);
        conc_process_free(ts.p);
    }
    close(gate[0]);
    close(gate[1]);
}

/* -------------------------------------- forkserver and spawn */

static atomic_int forks_seen;

static void count_fork(void)
{
    atomic_fetch_add(&forks_seen, 1);
}

static void *idle_thread(void *arg)
{
    conc_event_wait((conc_event *)arg, CONC_FOREVER);
    return NULL;
}

static void check_no_fork_in_threaded_parent(int method)
{
    conc_event stop = CONC_EVENT_INIT;
    conc_thread *t[4];
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(conc_thread_new(&t[i], idle_thread, &stop, NULL), 0);
        cr_assert_eq(conc_thread_start(t[i]), 0);
    }
    int before = atomic_load(&forks_seen);
    int out[2];
    pipe_ok(out);
    /* A function pointer. */
    struct job w = { .mode = M_WRITE, .fd = out[1], .value = 11, .text = "hello" };
    conc_process *p = spawn(&w, method, 0, &out[1], 1);
    char buf[16] = "";
    read_exact(out[0], buf, 5);
    cr_assert_str_eq(buf, "hello");
    cr_assert_eq(join_code(p), 11);
    conc_process_free(p);
    /* The subclass form. */
    struct counter_def c = { { counter_run }, out[1], 30, 12 };
    conc_process_opts o = { .method = method, .pass_fds = &out[1], .npass_fds = 1 };
    cr_assert_eq(conc_process_new_def(&p, &c.base, sizeof c, &o), 0);
    cr_assert_eq(conc_process_start(p), 0);
    memset(buf, 0, sizeof buf);
    read_exact(out[0], buf, 6);
    cr_assert_str_eq(buf, "sum=42");
    cr_assert_eq(join_code(p), 42);
    conc_process_free(p);
    cr_assert_eq(atomic_load(&forks_seen), before, "%s forked the threaded parent",
                 method_names[method]);
    conc_event_set(&stop);
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(conc_thread_join(t[i], CONC_FOREVER), 0);
        conc_thread_free(t[i]);
    }
    close(out[0]);
    close(out[1]);
}

Test(forkserver, threaded_parent_is_never_forked, .timeout = 30)
{
    pthread_atfork(count_fork, NULL, NULL);
    check_no_fork_in_threaded_parent(CONC_START_FORKSERVER);
}

Test(spawn, threaded_parent_is_never_forked, .timeout = 30)
{
    pthread_atfork(count_fork, NULL, NULL);
    check_no_fork_in_threaded_parent(CONC_START_SPAWN);
}

Test(forkserver, global_method_is_used, .timeout = 30)
{
    pthread_atfork(count_fork, NULL, NULL);
    cr_assert_eq(conc_process_set_start_method(CONC_START_FORKSERVER), 0);
    struct job j = { .mode = M_RETURN, .value = 21 };
    int before = atomic_load(&forks_seen);
    cr_assert_eq(run_code(&j, CONC_START_DEFAULT), 21);
    cr_assert_eq(atomic_load(&forks_seen), before, "the default method forked");
    cr_assert_eq(run_code(&j, CONC_START_FORK), 21, "opts.method wins");
    cr_assert_eq(atomic_load(&forks_seen), before + 1);
}

/* Set by a child before it starts its own child: a fork grandchild sees it,
 * a fresh image (forkserver, spawn) does not. */
static int touched_before_start;

static int report_method(const void *arg, size_t len)
{
    (void)arg;
    (void)len;
    return touched_before_start * 4 + (int)conc_process_start_method();
}

/* Reports its own start method, and how its child started with the default
 * method was made (and what that one reports): method * 8 + grandchild. */
static int report_methods(const void *arg, size_t len)
{
    (void)arg;
    (void)len;
    int m = (int)conc_process_start_method();
    touched_before_start = 1;
    conc_process *p = NULL;
    if (conc_process_new(&p, report_method, NULL, 0, NULL) != 0 || conc_process_start(p) != 0)
        return 99;
    int code = 98;
    if (conc_process_join(p, GUARD_S) != 0 || conc_process_exitcode(p, &code) != 0)
        code = 97;
    conc_process_free(p);
    return m * 8 + code;
}

/* Python's TestStartMethod.test_context: a child reports the method that
 * started it, and its own children default to that method. */
static void check_child_start_method(int method)
{
    conc_process_opts o = { .method = method };
    conc_process *p = NULL;
    cr_assert_eq(conc_process_new(&p, report_methods, NULL, 0, &o), 0);
    cr_assert_eq(conc_process_start(p), 0);
    int code = join_code(p);
    conc_process_free(p);
    int grand = method == CONC_START_FORK ? 4 + CONC_START_FORK : method;
    cr_assert_eq(code, method * 8 + grand,
                 "%s child: reports %s, its child %s (touched %d)", method_names[method],
                 method_names[code / 8 % 4], method_names[code % 4], code % 8 / 4);
}

Test(forkserver, child_reports_and_inherits_its_start_method, .timeout = 30)
{
    check_child_start_method(CONC_START_FORKSERVER);
}

Test(spawn, child_reports_and_inherits_its_start_method, .timeout = 30)
{
    check_child_start_method(CONC_START_SPAWN);
}

Test(fork, child_reports_and_inherits_its_start_method, .timeout = 30)
{
    check_child_start_method(CONC_START_FORK);
}

static void check_pass_fds(int method)
{
    int out[2];
    pipe_ok(out);
    /* Under its own number, and under a high number. */
    int high = fcntl(out[1], F_DUPFD_CLOEXEC, 200);
    cr_assert_geq(high, 200);
    int fds[2] = { out[1], high };
    for (int k = 0; k < 2; k++) {
        struct job w = { .mode = M_WRITE, .fd = fds[k], .value = 0, .text = "ok" };
        conc_process *p = spawn(&w, method, 0, &fds[k], 1);
        char buf[3] = "";
        read_exact(out[0], buf, 2);
        cr_assert_str_eq(buf, "ok");
        cr_assert_eq(join_code(p), 0);
        conc_process_free(p);
    }
    /* Descriptors not listed are not in the child (fork: all are). */
    struct job probe = { .mode = M_FD_OPEN, .value = high };
    cr_assert_eq(run_code(&probe, method), method == CONC_START_FORK ? 1 : 0,
                 "%s: unlisted fd", method_names[method]);
    conc_process *p = spawn(&probe, method, 0, &high, 1);
    cr_assert_eq(join_code(p), 1, "%s: listed fd", method_names[method]);
    conc_process_free(p);
    /* A descriptor that is not open. */
    int closed = high + 1;
    conc_process_opts o = { .method = method, .pass_fds = &closed, .npass_fds = 1 };
    cr_assert_eq(conc_process_new(&p, job_main, &probe, sizeof probe, &o), 0);
    if (method != CONC_START_FORK)
        cr_assert_eq(conc_process_start(p), -EBADF);
    conc_process_free(p);
    close(high);
    close(out[0]);
    close(out[1]);
}

Test(forkserver, pass_fds, .timeout = 30)
{
    check_pass_fds(CONC_START_FORKSERVER);
}

Test(spawn, pass_fds, .timeout = 30)
{
    check_pass_fds(CONC_START_SPAWN);
}

Test(forkserver, function_outside_any_module, .timeout = 30)
{
    /* Heap memory is no module's code: it cannot be named to the server. */
    void *heap = malloc(64);
    conc_process *p;
    conc_process_opts o = { .method = CONC_START_FORKSERVER };
    cr_assert_eq(conc_process_new(&p, (conc_process_fn)heap, NULL, 0, &o), 0);
    cr_assert_eq(conc_process_start(p), -EINVAL);
    cr_assert_eq(conc_process_pid(p), 0);
    conc_process_free(p);
    free(heap);
}

Test(forkserver, large_argument, .timeout = 30)
{
    /* A few MiB go through the socket intact. */
    size_t len = 3u << 20;
    unsigned char *buf = malloc(len);
    cr_assert_not_null(buf);
    for (size_t i = 0; i < len; i++)
        buf[i] = (unsigned char)(i * 131u);
    conc_process *p;
    extern int checksum_main(const void *, size_t);
    conc_process_opts o = { .method = CONC_START_FORKSERVER };
    cr_assert_eq(conc_process_new(&p, checksum_main, buf, len, &o), 0);
    free(buf);
    cr_assert_eq(conc_process_start(p), 0);
    cr_assert_eq(join_code(p), 77);
    conc_process_free(p);
}

int checksum_main(const void *arg, size_t len)
{
    const unsigned char *b = arg;
    if (len != 3u << 20)
        return 1;
    for (size_t i = 0; i < len; i++)
        if (b[i] != (unsigned char)(i * 131u))
            return 2;
    return 77;
}

/* The children of this process (any thread's) that are not in `known`. */
static int other_children(const pid_t *known, int nknown, pid_t *out, int cap)
{
    int n = 0;
    DIR *d = opendir("/proc/self/task");
    cr_assert_not_null(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char path[300];
        snprintf(path, sizeof path, "/proc/self/task/%s/children", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        int pid;
        while (fscanf(f, "%d", &pid) == 1) {
            bool mine = false;
            for (int i = 0; i < nknown; i++)
                mine |= known[i] == pid;
            if (!mine && n < cap)
                out[n++] = pid;
        }
        fclose(f);
    }
    closedir(d);
    return n;
}

Test(forkserver, restarts_after_server_death, .timeout = 30)
{
    int gate[2];
    pipe_ok(gate);
    struct job g = { .mode = M_GATE, .fd = gate[0], .value = 1 };
    conc_process *p = spawn(&g, CONC_START_FORKSERVER, 0, &gate[0], 1);
    pid_t known = conc_process_pid(p), server[4];
    cr_assert_eq(other_children(&known, 1, server, 4), 1, "one forkserver, our child");
    int sfd = pidfd_of(server[0]);
    cr_assert_geq(sfd, 0);
    cr_assert_eq(syscall(SYS_pidfd_send_signal, sfd, SIGKILL, NULL, 0), 0);
    cr_assert(readable(sfd, DEATH_GUARD_MS));
    close(sfd);
    /* The child it made is ours and lives on. */
    cr_assert(conc_process_is_alive(p));
    struct job r = { .mode = M_RETURN, .value = 13 };
    cr_assert_eq(run_code(&r, CONC_START_FORKSERVER), 13, "no new forkserver");
    cr_assert(reaped(server[0]), "the dead forkserver was left a zombie");
    cr_assert_eq(write(gate[1], "x", 1), 1);
    cr_assert_eq(join_code(p), 1);
    conc_process_free(p);
    close(gate[0]);
    close(gate[1]);
}

/* ------------------------------------------------------ leaks */

Test(process, no_descriptor_leak, .timeout = 30)
{
    struct job j = { .mode = M_RETURN, .value = 0 };
    /* Warm up: the forkserver and its socket stay for the process. */
    for (int i = 0; i < 3; i++)
        run_code(&j, all_methods[i]);
    int base = count_fds();
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 3; i++) {
            conc_process *p = spawn(&j, all_methods[i], round == 1 ? CONC_DAEMON : 0, NULL, 0);
            cr_assert_eq(join_code(p), 0);
            if (round == 2)
                cr_assert_eq(conc_process_close(p), 0);
            conc_process_free(p);
        }
    }
    cr_assert_eq(count_fds(), base, "descriptors leaked");
    cr_assert_eq(conc_process_active_children(NULL, 0), 0);
}
