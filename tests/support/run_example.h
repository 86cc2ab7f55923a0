/*
 * run_example.h - for the example tests: run build/examples/NAME with
 * arguments, capture its output, and check how it exited.
 */
#ifndef CONC_TESTS_RUN_EXAMPLE_H
#define CONC_TESTS_RUN_EXAMPLE_H

#include <criterion/criterion.h>

#include <dirent.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <grp.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conc.h"

#ifndef CONC_EXAMPLES_DIR
#error "CONC_EXAMPLES_DIR must name the directory of the example binaries"
#endif

/* When >= 0, run_example runs the program as this user and group (no
 * supplementary groups): tests of what an unprivileged user sees. */
static int run_example_uid = -1;

struct run {
    int status;             /* as from waitpid */
    char *out;              /* NUL-terminated stdout */
    char *err;              /* NUL-terminated stderr */
};

struct buf {
    char *data;
    size_t len, cap;
};

static void buf_add(struct buf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->data = realloc(b->data, b->cap);
        cr_assert_not_null(b->data);
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

/* The command line of CONC_EXAMPLES_DIR/name with the given arguments
 * (NULL-terminated, at most 30): its path in path, argv NULL-terminated. */
static inline void example_argv(const char *name, const char *const *args, char *path,
                                size_t size, const char *argv[32])
{
    snprintf(path, size, "%s/%s", CONC_EXAMPLES_DIR, name);
    cr_assert_eq(access(path, X_OK), 0, "example binary %s is missing", path);
    int argc = 0;
    argv[argc++] = path;
    for (int i = 0; args && args[i]; i++) {
        cr_assert_lt(argc, 31);
        argv[argc++] = args[i];
    }
    argv[argc] = NULL;
}

/* Runs CONC_EXAMPLES_DIR/name with the given arguments (NULL-terminated),
 * capturing stdout and stderr, with `input` (unless NULL) as its standard
 * input.  A program still running after 60 s is killed and the test fails
 * (a hang guard, not a speed limit). */
static struct run run_example_input(const char *name, const char *const *args,
                                    const char *input)
{
    char path[512];
    const char *argv[32];
    example_argv(name, args, path, sizeof path, argv);
    FILE *in = NULL;
    if (input) {
        in = tmpfile();
        cr_assert_not_null(in);
        size_t len = strlen(input);
        cr_assert_eq(fwrite(input, 1, len, in), len);
        cr_assert_eq(fflush(in), 0);
        rewind(in);
    }

    int out[2], err[2];
    cr_assert_eq(pipe(out), 0);
    cr_assert_eq(pipe(err), 0);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        dup2(out[1], STDOUT_FILENO);
        dup2(err[1], STDERR_FILENO);
        close(out[0]);
        close(out[1]);
        close(err[0]);
        close(err[1]);
        if (in)
            dup2(fileno(in), STDIN_FILENO);
        if (run_example_uid >= 0 &&
            (setgroups(0, NULL) != 0 || setgid((gid_t)run_example_uid) != 0 ||
             setuid((uid_t)run_example_uid) != 0))
            _exit(126);
        execv(path, (char *const *)argv);
        _exit(127);
    }
    close(out[1]);
    close(err[1]);
    if (in)
        fclose(in);

    struct buf bo = { 0 }, be = { 0 };
    buf_add(&bo, "", 0);
    buf_add(&be, "", 0);
    struct pollfd pfd[2] = { { .fd = out[0], .events = POLLIN }, { .fd = err[0], .events = POLLIN } };
    int open_fds = 2;
    int64_t deadline = conc_now() + 60LL * 1000000000LL;
    bool hung = false;
    while (open_fds > 0) {
        int64_t left_ms = (deadline - conc_now()) / 1000000;
        if (left_ms <= 0) {
            hung = true;
            break;
        }
        int r = poll(pfd, 2, (int)left_ms);
        if (r < 0)
            continue;
        for (int i = 0; i < 2; i++) {
            if (pfd[i].fd < 0 || !(pfd[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            char chunk[4096];
            ssize_t n = read(pfd[i].fd, chunk, sizeof chunk);
            if (n > 0) {
                buf_add(i == 0 ? &bo : &be, chunk, (size_t)n);
            } else {
                close(pfd[i].fd);
                pfd[i].fd = -1;
                open_fds--;
            }
        }
    }
    if (hung)
        kill(pid, SIGKILL);
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    for (int i = 0; i < 2; i++)
        if (pfd[i].fd >= 0)
            close(pfd[i].fd);
    cr_assert_not(hung, "%s hung; output so far:\n%s", name, bo.data);
    return (struct run){ status, bo.data, be.data };
}

static inline struct run run_example(const char *name, const char *const *args)
{
    return run_example_input(name, args, NULL);
}

static void run_free(struct run *r)
{
    free(r->out);
    free(r->err);
}

static bool exited_with(const struct run *r, int code)
{
    return WIFEXITED(r->status) && WEXITSTATUS(r->status) == code;
}

static void assert_success(const struct run *r, const char *what)
{
    cr_assert(exited_with(r, 0), "%s: status %#x\nstdout:\n%s\nstderr:\n%s", what, r->status,
              r->out, r->err);
    cr_assert_str_empty(r->err, "%s wrote to stderr:\n%s", what, r->err);
}

/* A refused command line: exit 2, one line on stderr, nothing on stdout. */
static void assert_refused(const char *name, const char *const *args)
{
    struct run r = run_example(name, args);
    char cmd[256] = "";
    for (int i = 0; args[i]; i++) {
        strncat(cmd, " ", sizeof cmd - strlen(cmd) - 1);
        strncat(cmd, args[i], sizeof cmd - strlen(cmd) - 1);
    }
    cr_assert(exited_with(&r, 2), "%s%s: status %#x, want exit 2", name, cmd, r.status);
    size_t len = strlen(r.err);
    cr_assert_gt(len, 0, "%s%s: no message on stderr", name, cmd);
    cr_assert_eq(r.err[len - 1], '\n', "%s%s: message not a full line", name, cmd);
    cr_assert_null(memchr(r.err, '\n', len - 1), "%s%s: more than one line:\n%s", name, cmd,
                   r.err);
    cr_assert_str_empty(r.out, "%s%s: printed on stdout:\n%s", name, cmd, r.out);
    run_free(&r);
}

/* Splits text into lines in place; returns the count. */
static inline int split_lines(char *text, char **lines, int cap)
{
    int n = 0;
    for (char *p = text; *p;) {
        char *nl = strchr(p, '\n');
        cr_assert_not_null(nl, "last line not terminated: '%s'", p);
        *nl = '\0';
        cr_assert_lt(n, cap, "too many lines");
        lines[n++] = p;
        p = nl + 1;
    }
    return n;
}

/* ------------------------------------------- running one in the background */

/* A program started by start_example: its pid and the files that take its
 * stdout and stderr. */
struct bg {
    pid_t pid;
    FILE *out, *err;
};

/* Starts CONC_EXAMPLES_DIR/name with the given arguments (NULL-terminated)
 * in the background, stdout going to out_fd when it is >= 0, else (and
 * stderr always) to temporary files.  The child starts with the default
 * dispositions and no blocked signals, as from a shell's foreground. */
static inline struct bg start_example_out(const char *name, const char *const *args, int out_fd)
{
    char path[512];
    const char *argv[32];
    example_argv(name, args, path, sizeof path, argv);
    struct bg b = { .out = tmpfile(), .err = tmpfile() };
    cr_assert(b.out && b.err);
    fflush(NULL);
    b.pid = fork();
    cr_assert_geq(b.pid, 0);
    if (b.pid == 0) {
        dup2(out_fd >= 0 ? out_fd : fileno(b.out), STDOUT_FILENO);
        dup2(fileno(b.err), STDERR_FILENO);
        int sigs[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGCHLD };
        for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
            signal(sigs[i], SIG_DFL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execv(path, (char *const *)argv);
        _exit(127);
    }
    return b;
}

static inline struct bg start_example(const char *name, const char *const *args)
{
    return start_example_out(name, args, -1);
}

/* Reads the children of process pid (its main thread's list, where a
 * single-threaded program's children are); returns how many (at most cap),
 * 0 when the process is gone. */
static inline int children_of(pid_t pid, pid_t *kids, int cap)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task/%d/children", (int)pid, (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    int n = 0;
    long k;
    while (n < cap && fscanf(f, "%ld", &k) == 1)
        kids[n++] = (pid_t)k;
    fclose(f);
    return n;
}

/* Waits (a 60 s hang guard) until process pid has at least want children
 * and returns their pids (creation order), or fails the test when pid
 * ended first. */
static inline int wait_for_children(pid_t pid, int want, pid_t *kids, int cap)
{
    int64_t deadline = conc_now() + 60LL * 1000000000LL;
    for (;;) {
        int n = children_of(pid, kids, cap);
        if (n >= want)
            return n;
        int status;
        cr_assert_eq(waitpid(pid, &status, WNOHANG), 0,
                     "the program ended (status %#x) before it had %d children", status, want);
        cr_assert_lt(conc_now(), deadline, "no %d children after 60 s", want);
        usleep(1000);
    }
}

/* Waits for the program (a 60 s hang guard: then it is killed and the test
 * fails) and returns its status; fills *out and *err (free them) with what
 * it wrote. */
static inline int finish_example(struct bg *b, char **out, char **err)
{
    int status;
    int64_t deadline = conc_now() + 60LL * 1000000000LL;
    pid_t r;
    while ((r = waitpid(b->pid, &status, WNOHANG)) == 0 && conc_now() < deadline)
        usleep(2000);
    if (r == 0) {
        kill(b->pid, SIGKILL);
        waitpid(b->pid, &status, 0);
    }
    FILE *files[2] = { b->out, b->err };
    char **texts[2] = { out, err };
    for (int i = 0; i < 2; i++) {
        struct stat st;
        cr_assert_eq(fstat(fileno(files[i]), &st), 0);
        char *t = malloc((size_t)st.st_size + 1);
        cr_assert_not_null(t);
        ssize_t got = pread(fileno(files[i]), t, (size_t)st.st_size, 0);
        t[got > 0 ? got : 0] = '\0';
        fclose(files[i]);
        *texts[i] = t;
    }
    cr_assert_neq(r, 0, "the program hung; stderr:\n%s", *err);
    return status;
}

/* How many entries /dev/shm has that conc made for process pid (the names
 * it gives unnamed segments: "conc-PID-N"). */
static inline int shm_entries_of(pid_t pid)
{
    DIR *d = opendir("/dev/shm");
    if (!d)
        return 0;
    char prefix[32];
    int len = snprintf(prefix, sizeof prefix, "conc-%d-", (int)pid);
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        n += strncmp(e->d_name, prefix, (size_t)len) == 0;
    closedir(d);
    return n;
}

/* Sends sig to process pid, and under TSan sends it again every 100 ms
 * until pid has ended (then reaps nothing: finish_example does).  TSan's
 * runtime takes every signal a program handles and calls the program's
 * handler later, from a point it thinks safe; on a loaded machine it was
 * seen to drop one now and then (the program ran to its normal end, no
 * signal pending or blocked, its handler never called), so one kill would
 * fail a correct program.  Sending it again is what a user does when
 * Ctrl-C seems lost; a build without TSan gets exactly one signal. */
static inline void signal_until_gone(pid_t pid, int sig)
{
    cr_assert_eq(kill(pid, sig), 0);
#if defined(__SANITIZE_THREAD__)
    int64_t deadline = conc_now() + 60LL * 1000000000LL;
    siginfo_t si;
    for (;;) {
        memset(&si, 0, sizeof si);
        if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) != 0 || si.si_pid != 0)
            return;                     /* ended (left for the caller to reap) */
        if (conc_now() >= deadline)
            return;                     /* finish_example's hang guard fails it */
        usleep(100 * 1000);
        kill(pid, sig);
    }
#endif
}

/* Starts the example (stdout to out_fd when >= 0, see start_example_out),
 * waits until it has nkids children, sends sig to the main process alone
 * (signal_until_gone), and checks that it ends killed by sig, that none of
 * its children is left (their pids are gone as it ends: it reaped them),
 * and that none of them left a segment in /dev/shm.  The test process
 * becomes a subreaper: children a failing run leaves behind come to it and
 * are killed and reaped here rather than left to init. */
static inline void interrupt_example_out(const char *name, const char *const *args, int nkids,
                                         int sig, int out_fd)
{
    cr_assert_eq(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
    struct bg b = start_example_out(name, args, out_fd);
    pid_t kids[64];
    int n = wait_for_children(b.pid, nkids, kids, 64);
    signal_until_gone(b.pid, sig);
    char *out, *err;
    int status = finish_example(&b, &out, &err);
    int left = 0;
    for (int i = 0; i < n; i++)
        if (kill(kids[i], 0) == 0) {
            left++;
            kill(kids[i], SIGKILL);
            waitpid(kids[i], NULL, 0);
        }
    cr_assert_eq(left, 0, "%s: %d of the %d children left behind after %s", name, left, n,
                 strsignal(sig));
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == sig,
              "%s: status %#x: want killed by %s\nstderr:\n%s", name, status, strsignal(sig), err);
    int shm_left = shm_entries_of(b.pid);
    for (int i = 0; i < n; i++)
        shm_left += shm_entries_of(kids[i]);
    cr_assert_eq(shm_left, 0, "%s: segments left in /dev/shm", name);
    free(out);
    free(err);
}

static inline void interrupt_example(const char *name, const char *const *args, int nkids,
                                     int sig)
{
    interrupt_example_out(name, args, nkids, sig, -1);
}

#endif
