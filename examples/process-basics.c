/*
 * process-basics - a guided tour of conc/process.h, Python's
 * multiprocessing.Process: start/join, exit codes, names and pids,
 * current_process/parent_process, join with a timeout, is_alive and
 * terminate, daemon processes, the subclass form, the three start methods,
 * and what zombies and orphans are and how conc prevents them.  Each step
 * prints a one-line explanation and then what it shows.
 *
 *   process-basics
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "conc.h"
#include "cli.h"

static const char *prog = "process-basics";

static conc_process *start(conc_process_fn fn, const void *arg, size_t len,
                           const conc_process_opts *o)
{
    conc_process *p;
    check(conc_process_new(&p, fn, arg, len, o), "conc_process_new");
    check(conc_process_start(p), "conc_process_start");
    return p;
}

static int join_code(conc_process *p)
{
    int code = 0;
    check(conc_process_join(p, CONC_FOREVER), "join");
    check(conc_process_exitcode(p, &code), "exitcode");
    return code;
}

/* The state letter of /proc/PID/stat: R running, S sleeping, Z zombie;
 * '-' when the process is gone. */
static char proc_state(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return '-';
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *close_paren = strrchr(buf, ')');
    return close_paren && close_paren[1] == ' ' ? close_paren[2] : '?';
}

/* The parent pid in /proc/PID/stat, 0 when the process is gone. */
static int proc_ppid(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *close_paren = strrchr(buf, ')');
    char state;
    int ppid = 0;
    if (!close_paren || sscanf(close_paren + 1, " %c %d", &state, &ppid) != 2)
        return 0;
    return ppid;
}

/* Waits up to ms for fd to become readable. */
static bool readable(int fd, int ms)
{
    struct pollfd pfd = { .fd = fd, .events = POLLIN };
    return poll(&pfd, 1, ms) == 1;
}

/* ------------------------------------------------------------- bodies */

struct sum_job {
    int n;
};

/* Sums 1..n and returns the sum modulo 256: an exit code is one byte. */
static int sum_to(const void *arg, size_t len)
{
    if (len != sizeof(struct sum_job))
        return 255;
    const struct sum_job *j = arg;
    long s = 0;
    for (int i = 1; i <= j->n; i++)
        s += i;
    printf("   [child %d] sum of 1..%d is %ld, exiting with %ld %% 256 = %ld\n", (int)getpid(),
           j->n, s, s, s % 256);
    return (int)(s % 256);
}

static int who_am_i(const void *arg, size_t len)
{
    (void)arg;
    (void)len;
    conc_process *me = conc_process_current(), *parent = conc_process_parent();
    char name[CONC_PROCESS_NAME_MAX + 1], pname[CONC_PROCESS_NAME_MAX + 1] = "none";
    conc_process_name(me, name, sizeof name);
    if (parent)
        conc_process_name(parent, pname, sizeof pname);
    printf("   [child] current_process: %s, pid %d (getpid %d); parent_process: %s, pid %d "
           "(getppid %d)\n",
           name, (int)conc_process_pid(me), (int)getpid(), pname,
           parent ? (int)conc_process_pid(parent) : 0, (int)getppid());
    return 0;
}

static int call_exit(const void *arg, size_t len)
{
    (void)len;
    exit(*(const int *)arg);
}

static int crash(const void *arg, size_t len)
{
    (void)arg;
    (void)len;
    signal(SIGSEGV, SIG_DFL);
    raise(SIGSEGV);
    return 0;
}

/* Waits until the parent writes to fd (or 30 s pass), returns 0. */
static int wait_for_go(const void *arg, size_t len)
{
    (void)len;
    int fd = *(const int *)arg;
    char c;
    if (readable(fd, 30000) && read(fd, &c, 1) == 1)
        return 0;
    return 1;
}

static int sleep_forever(const void *arg, size_t len)
{
    (void)arg;
    (void)len;
    for (int i = 0; i < 300; i++)
        conc_sleep(0.1);
    return 0;
}

static int try_to_have_a_child(const void *arg, size_t len)
{
    (void)arg;
    (void)len;
    conc_process *p;
    check(conc_process_new(&p, sleep_forever, NULL, 0, NULL), "conc_process_new");
    int rc = conc_process_start(p);
    printf("   [daemon child] starting a child of my own: %s\n", conc_errname(rc));
    conc_process_free(p);
    return rc == -EPERM ? 0 : 1;
}

/* The subclass form: the child runs run() on its own copy of the struct. */
struct greeter {
    conc_process_def base;      /* first member */
    char greeting[32];
    int times;
};

static int greeter_run(conc_process_def *self)
{
    struct greeter *g = (struct greeter *)self;
    char name[CONC_PROCESS_NAME_MAX + 1];
    conc_process_name(conc_process_current(), name, sizeof name);
    for (int i = 0; i < g->times; i++)
        printf("   [%s] %s #%d\n", name, g->greeting, i + 1);
    g->times = 0;               /* changes the child's copy only */
    return 0;
}

/* A middle process for the orphan demonstration: starts a daemon child and
 * a non-daemon child, reports their pids, then waits to be killed. */
struct family {
    int out;                    /* write end of a pipe for the pids */
};

static int family_head(const void *arg, size_t len)
{
    (void)len;
    const struct family *f = arg;
    conc_process_opts d = { .daemon = CONC_DAEMON }, n = { .daemon = CONC_NOT_DAEMON };
    conc_process *daemon_kid = start(sleep_forever, NULL, 0, &d);
    conc_process *plain_kid = start(sleep_forever, NULL, 0, &n);
    pid_t pids[2] = { conc_process_pid(daemon_kid), conc_process_pid(plain_kid) };
    if (write(f->out, pids, sizeof pids) != (ssize_t)sizeof pids)
        return 1;
    sleep_forever(NULL, 0);
    return 0;
}

/* --------------------------------------------------------------- tour */

static void usage(FILE *f)
{
    fprintf(f, "usage: %s\n  walks through conc's multiprocessing.Process API step by step\n",
            prog);
}

int main(int argc, char **argv)
{
    int rc = parse_options(argc, argv, NULL, 0, usage);
    if (rc >= 0)
        return rc;
    /* Interrupted, the tour stops its children before it ends. */
    check(conc_process_cleanup_on_signals(1.0), "conc_process_cleanup_on_signals");
    /* Children print too: line buffering keeps the lines in order. */
    setvbuf(stdout, NULL, _IOLBF, 0);

    /* 1. start and join */
    step("start and join", "a process runs fn(arg, len) in a child; the bytes of the "
                           "argument are copied into it; join waits for its end");
    struct sum_job sj = { 100 };
    conc_process *p;
    check(conc_process_new(&p, sum_to, &sj, sizeof sj, NULL), "conc_process_new");
    int code = 0;
    printf("   before start: pid %d, alive %s, exitcode: %s\n", (int)conc_process_pid(p),
           yes_no(conc_process_is_alive(p)), conc_errname(conc_process_exitcode(p, &code)));
    check(conc_process_start(p), "start");
    code = join_code(p);
    printf("   after join: exitcode %d (5050 %% 256), alive %s; starting it again: %s\n", code,
           yes_no(conc_process_is_alive(p)), conc_errname(conc_process_start(p)));
    conc_process_free(p);

    /* 2. names, pids, current_process, parent_process */
    step("names and pids", "processes are called Process-N unless named; in the child, "
                           "current_process is the child and parent_process its parent");
    conc_process_opts named = { .name = "inspector" };
    p = start(who_am_i, NULL, 0, &named);
    join_code(p);
    char name[CONC_PROCESS_NAME_MAX + 1];
    conc_process_name(conc_process_current(), name, sizeof name);
    printf("   in main: current_process is %s, pid %d; parent_process: %s\n",
           name, (int)conc_process_pid(conc_process_current()),
           conc_process_parent() ? "set" : "none (conc did not start this process)");
    conc_process_free(p);
    check(conc_process_new(&p, who_am_i, NULL, 0, NULL), "conc_process_new");
    conc_process_name(p, name, sizeof name);
    printf("   an unnamed process object: %s\n", name);
    conc_process_free(p);

    /* 3. exit codes */
    step("exit codes", "the function's return value, the status given to exit(), or "
                       "minus the signal that killed the child");
    int seven = 7;
    p = start(call_exit, &seven, sizeof seven, NULL);
    printf("   exit(7): exitcode %d\n", join_code(p));
    conc_process_free(p);
    p = start(crash, NULL, 0, NULL);
    printf("   killed by SIGSEGV: exitcode %d (SIGSEGV is %d)\n", join_code(p), SIGSEGV);
    conc_process_free(p);

    /* 4. join with a timeout, is_alive, terminate, the sentinel */
    step("join with a timeout", "join(timeout) gives up while the child runs; terminate "
                                "sends SIGTERM; the sentinel is a pidfd to poll");
    p = start(sleep_forever, NULL, 0, NULL);
    rc = conc_process_join(p, 0.1);
    printf("   join(0.1) on a sleeping child: %s, alive %s\n", conc_errname(rc),
           yes_no(conc_process_is_alive(p)));
    int sentinel = conc_process_sentinel(p);
    printf("   its sentinel (fd %d) is readable: %s\n", sentinel, yes_no(readable(sentinel, 0)));
    check(conc_process_terminate(p), "terminate");
    printf("   after terminate: sentinel readable within 5 s: %s\n",
           yes_no(readable(sentinel, 5000)));
    printf("   join: exitcode %d (-SIGTERM), alive %s\n", join_code(p),
           yes_no(conc_process_is_alive(p)));
    check(conc_process_close(p), "close");
    printf("   close releases the pidfd; the sentinel now: %s\n",
           conc_errname(conc_process_sentinel(p)));
    conc_process_free(p);

    /* 5. daemon processes */
    step("daemon", "a daemon child is terminated when its parent exits and killed when "
                   "the parent is killed; it may not have children of its own");
    conc_process_opts daemon = { .daemon = CONC_DAEMON };
    p = start(try_to_have_a_child, NULL, 0, &daemon);
    printf("   daemon flag: %s; exitcode %d\n", yes_no(conc_process_daemon(p)), join_code(p));
    printf("   set_daemon after start: %s\n", conc_errname(conc_process_set_daemon(p, false)));
    conc_process_free(p);

    /* 6. the subclass form */
    step("subclass", "embed conc_process_def first in a struct and set run(); the child "
                     "runs it on its own copy of the struct");
    struct greeter g = { { greeter_run }, "hello from the subclass", 2 };
    conc_process_opts gn = { .name = "Greeter" };
    check(conc_process_new_def(&p, &g.base, sizeof g, &gn), "conc_process_new_def");
    check(conc_process_start(p), "start");
    join_code(p);
    printf("   the parent's copy is unchanged: times = %d\n", g.times);
    conc_process_free(p);

    /* 7. start methods */
    step("start methods", "fork copies this process; forkserver asks a server process "
                          "(started once) to fork; spawn runs the program afresh; all "
                          "three make children of this process");
    static const struct { conc_start_method m; const char *name; } methods[] = {
        { CONC_START_FORK, "fork" },
        { CONC_START_FORKSERVER, "forkserver" },
        { CONC_START_SPAWN, "spawn" },
    };
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
        struct sum_job small = { 10 };
        conc_process_opts mo = { .method = methods[i].m, .name = methods[i].name };
        p = start(sum_to, &small, sizeof small, &mo);
        printf("   %-10s -> exitcode %d\n", methods[i].name, join_code(p));
        conc_process_free(p);
    }
    printf("   the default (set_start_method) is %s\n",
           conc_process_start_method() == CONC_START_FORK ? "fork" : "not fork");

    /* 8. zombies */
    step("zombies", "a child that ended stays in the process table as a zombie until "
                    "its parent reaps it; join, is_alive and active_children reap");
    int go[2];
    if (pipe(go) != 0) {
        fprintf(stderr, "%s: pipe: %s\n", prog, strerror(errno));
        return 1;
    }
    p = start(wait_for_go, &go[0], sizeof go[0], NULL);
    pid_t pid = conc_process_pid(p);
    printf("   running child %d: state %c (R running or S sleeping)\n", (int)pid,
           proc_state(pid));
    if (write(go[1], "x", 1) != 1)
        return 1;
    readable(conc_process_sentinel(p), 5000);
    printf("   it ended, nobody reaped it yet: state %c (zombie)\n", proc_state(pid));
    conc_process_free(p);       /* the handle is gone; conc still tracks the child */
    conc_process *alive[4];
    int n = conc_process_active_children(alive, 4);
    printf("   active_children() reaps it: %d alive, its state now %c (gone)\n", n,
           proc_state(pid));
    for (int i = 0; i < n && i < 4; i++)
        conc_process_free(alive[i]);
    close(go[0]);
    close(go[1]);

    /* 9. orphans */
    step("orphans", "when a parent dies first its children are orphans, adopted by "
                    "init; conc kills daemon children with their parent instead");
    int pids_pipe[2];
    if (pipe(pids_pipe) != 0)
        return 1;
    struct family f = { pids_pipe[1] };
    conc_process_opts head_opts = { .name = "family-head" };
    conc_process *head = start(family_head, &f, sizeof f, &head_opts);
    pid_t kids[2];
    if (!readable(pids_pipe[0], 10000) || read(pids_pipe[0], kids, sizeof kids) != sizeof kids) {
        fprintf(stderr, "%s: the family head did not report\n", prog);
        return 1;
    }
    int daemon_fd = (int)syscall(SYS_pidfd_open, kids[0], 0);
    int plain_fd = (int)syscall(SYS_pidfd_open, kids[1], 0);
    printf("   family-head %d started a daemon child %d and a non-daemon child %d\n",
           (int)conc_process_pid(head), (int)kids[0], (int)kids[1]);
    check(conc_process_kill(head), "kill");
    printf("   family-head killed: exitcode %d\n", join_code(head));
    printf("   the daemon child died with it: %s\n",
           yes_no(daemon_fd >= 0 && readable(daemon_fd, 5000)));
    printf("   the non-daemon child lives on as an orphan: %s; its parent is now pid %d "
           "(init, or the nearest subreaper)\n",
           yes_no(plain_fd >= 0 && !readable(plain_fd, 200)), proc_ppid(kids[1]));
    if (plain_fd >= 0) {
        /* Not our child, so not ours to reap: just end it. */
        syscall(SYS_pidfd_send_signal, plain_fd, SIGKILL, NULL, 0);
        readable(plain_fd, 5000);
        close(plain_fd);
    }
    if (daemon_fd >= 0)
        close(daemon_fd);
    conc_process_free(head);
    close(pids_pipe[0]);
    close(pids_pipe[1]);

    /* 10. exit */
    step("at exit", "a normal exit joins non-daemon children, then terminates and joins "
                    "daemon children, so none is left behind");
    printf("   cpu_count (CPUs this process may use): %d\n", conc_process_cpu_count());
    conc_process_opts quiet_daemon = { .daemon = CONC_DAEMON, .name = "left-running" };
    p = start(sleep_forever, NULL, 0, &quiet_daemon);
    printf("   a daemon child (%d) still runs as main returns; active children: %d\n",
           (int)conc_process_pid(p), conc_process_active_children(NULL, 0));
    conc_process_free(p);

    printf("\nprocess-basics: done\n");
    return 0;
}
