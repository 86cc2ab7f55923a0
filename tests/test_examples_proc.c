/*
 * test_examples_proc.c - runs the process examples (ticket-grab,
 * shared-counter) from CONC_EXAMPLES_DIR and checks what they print, what
 * they leave in their files and how they exit.
 */
#include <criterion/criterion.h>

#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conc.h"

#ifndef CONC_EXAMPLES_DIR
#error "CONC_EXAMPLES_DIR must name the directory of the example binaries"
#endif

/* ------------------------------------------------------------- running */

struct output {
    int status;             /* as from waitpid */
    char *out;              /* NUL-terminated stdout */
    char *err;              /* NUL-terminated stderr */
};

static void append(char **buf, size_t *len, const char *data, size_t n)
{
    *buf = realloc(*buf, *len + n + 1);
    cr_assert_not_null(*buf);
    memcpy(*buf + *len, data, n);
    *len += n;
    (*buf)[*len] = '\0';
}

/* Runs CONC_EXAMPLES_DIR/name with args (NULL-terminated), capturing both
 * streams.  A program still running after 60 s is killed and the test
 * fails (a hang guard, not a speed limit). */
static struct output run(const char *name, const char *const *args)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", CONC_EXAMPLES_DIR, name);
    cr_assert_eq(access(path, X_OK), 0, "example binary %s is missing", path);
    const char *argv[32] = { path };
    int argc = 1;
    for (; args[argc - 1]; argc++) {
        cr_assert_lt(argc, 31);
        argv[argc] = args[argc - 1];
    }
    argv[argc] = NULL;

    int po[2], pe[2];
    cr_assert_eq(pipe(po), 0);
    cr_assert_eq(pipe(pe), 0);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        dup2(po[1], STDOUT_FILENO);
        dup2(pe[1], STDERR_FILENO);
        close(po[0]);
        close(po[1]);
        close(pe[0]);
        close(pe[1]);
        execv(path, (char *const *)argv);
        _exit(127);
    }
    close(po[1]);
    close(pe[1]);

    struct output o = { 0 };
    size_t lens[2] = { 0, 0 };
    char **bufs[2] = { &o.out, &o.err };
    append(&o.out, &lens[0], "", 0);
    append(&o.err, &lens[1], "", 0);
    struct pollfd pfd[2] = { { .fd = po[0], .events = POLLIN }, { .fd = pe[0], .events = POLLIN } };
    int open_fds = 2;
    int64_t deadline = conc_now() + 60LL * 1000000000LL;
    bool hung = false;
    while (open_fds > 0) {
        int64_t left_ms = (deadline - conc_now()) / 1000000;
        if (left_ms <= 0) {
            hung = true;
            break;
        }
        if (poll(pfd, 2, (int)left_ms) < 0)
            continue;
        for (int i = 0; i < 2; i++) {
            if (pfd[i].fd < 0 || !(pfd[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            char chunk[4096];
            ssize_t n = read(pfd[i].fd, chunk, sizeof chunk);
            if (n > 0) {
                append(bufs[i], &lens[i], chunk, (size_t)n);
            } else {
                close(pfd[i].fd);
                pfd[i].fd = -1;
                open_fds--;
            }
        }
    }
    if (hung)
        kill(pid, SIGKILL);
    cr_assert_eq(waitpid(pid, &o.status, 0), pid);
    for (int i = 0; i < 2; i++)
        if (pfd[i].fd >= 0)
            close(pfd[i].fd);
    cr_assert_not(hung, "%s hung; output so far:\n%s", name, o.out);
    return o;
}

static void output_free(struct output *o)
{
    free(o->out);
    free(o->err);
}

static bool exited_with(const struct output *o, int code)
{
    return WIFEXITED(o->status) && WEXITSTATUS(o->status) == code;
}

static void assert_ok(const struct output *o, const char *what)
{
    cr_assert(exited_with(o, 0), "%s: status %#x\nstdout:\n%s\nstderr:\n%s", what, o->status,
              o->out, o->err);
    cr_assert_str_empty(o->err, "%s wrote to stderr:\n%s", what, o->err);
}

/* A refused command line: exit 2, exactly one line on stderr, no stdout. */
static void assert_refused(const char *name, const char *const *args)
{
    struct output o = run(name, args);
    char cmd[512] = "";
    for (int i = 0; args[i]; i++) {
        strncat(cmd, " ", sizeof cmd - strlen(cmd) - 1);
        strncat(cmd, args[i], sizeof cmd - strlen(cmd) - 1);
    }
    cr_assert(exited_with(&o, 2), "%s%s: status %#x, want exit 2\nstderr:\n%s", name, cmd,
              o.status, o.err);
    size_t len = strlen(o.err);
    cr_assert_gt(len, 0, "%s%s: no message on stderr", name, cmd);
    cr_assert_eq(o.err[len - 1], '\n', "%s%s: message not a full line", name, cmd);
    cr_assert_null(memchr(o.err, '\n', len - 1), "%s%s: more than one line:\n%s", name, cmd,
                   o.err);
    cr_assert_str_empty(o.out, "%s%s: printed on stdout:\n%s", name, cmd, o.out);
    output_free(&o);
}

/* Splits text into lines in place; returns the count. */
static int lines_of(char *text, char **lines, int cap)
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

/* ------------------------------------------------------- the database */

struct db {
    char path[64];
};

static struct db db_new(const char *contents)
{
    struct db d;
    snprintf(d.path, sizeof d.path, "/tmp/conc-tickets-XXXXXX");
    int fd = mkstemp(d.path);
    cr_assert_geq(fd, 0);
    size_t len = strlen(contents);
    cr_assert_eq(write(fd, contents, len), (ssize_t)len);
    close(fd);
    return d;
}

static void db_remove(struct db *d)
{
    unlink(d->path);
}

/* The count in the file, which must be exactly {"count": N} + newline. */
static long db_count(const struct db *d)
{
    FILE *f = fopen(d->path, "r");
    cr_assert_not_null(f);
    char text[128] = "";
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    long count;
    char tail;
    cr_assert_eq(sscanf(text, "{\"count\": %ld}%c", &count, &tail), 2, "file: '%s'", text);
    cr_assert_eq(tail, '\n');
    return count;
}

/* Checks the lines of a ticket-grab run: one line per buyer 1..n, then the
 * summary.  Returns how many got a ticket. */
static long check_buyers(char *out, long n, long stock, long *left_out)
{
    char *lines[1100];
    int count = lines_of(out, lines, 1100);
    cr_assert_eq(count, n + 1, "want %ld buyer lines and a summary:\n%s", n, out);
    bool seen[1001] = { false };
    long got = 0;
    for (int i = 0; i < n; i++) {
        int id;
        char what[32];
        char tail;
        int f = sscanf(lines[i], "buyer %d: %31[a-z ]%c", &id, what, &tail);
        cr_assert_eq(f, 2, "line '%s'", lines[i]);
        cr_assert(id >= 1 && id <= n, "buyer %d of %ld", id, n);
        cr_assert_not(seen[id], "buyer %d printed twice", id);
        seen[id] = true;
        if (strcmp(what, "got a ticket") == 0)
            got++;
        else
            cr_assert_str_eq(what, "sold out", "line '%s'", lines[i]);
    }
    long sold, of, left;
    int f = sscanf(lines[n], "sold %ld of %ld tickets; the database says count=%ld", &sold, &of,
                   &left);
    cr_assert_eq(f, 3, "summary '%s'", lines[n]);
    cr_assert_eq(sold, got, "the summary counts the buyers that got one");
    cr_assert_eq(of, stock);
    *left_out = left;
    return got;
}

/* ---------------------------------------------------------- ticket-grab */

static void grab(long stock, long buyers)
{
    char init[64], nb[16];
    snprintf(init, sizeof init, "{\"count\": %ld}\n", stock);
    snprintf(nb, sizeof nb, "%ld", buyers);
    struct db d = db_new(init);
    const char *args[] = { "--db", d.path, "--buyers", nb, NULL };
    struct output o = run("ticket-grab", args);
    assert_ok(&o, "ticket-grab");
    long left;
    long got = check_buyers(o.out, buyers, stock, &left);
    long want_got = stock < buyers ? stock : buyers;
    long want_left = stock > buyers ? stock - buyers : 0;
    cr_assert_eq(got, want_got, "with the lock exactly min(K, N) buyers get one");
    cr_assert_eq(left, want_left);
    cr_assert_eq(db_count(&d), want_left, "the file ends with max(0, K - N)");
    output_free(&o);
    db_remove(&d);
}

Test(ticket_grab, fewer_tickets_than_buyers, .timeout = 30)
{
    grab(3, 6);
}

Test(ticket_grab, more_tickets_than_buyers, .timeout = 30)
{
    grab(10, 4);
}

Test(ticket_grab, exactly_enough, .timeout = 30)
{
    grab(5, 5);
}

Test(ticket_grab, sold_out_from_the_start, .timeout = 30)
{
    grab(0, 3);
}

Test(ticket_grab, one_buyer, .timeout = 30)
{
    grab(1, 1);
}

Test(ticket_grab, without_the_lock_oversells, .timeout = 30)
{
    /* Every buyer reads the count during the others' 0.1 s delay, so
     * normally all "buy" the last ticket; the test asserts only what holds
     * however the processes are scheduled. */
    struct db d = db_new("{\"count\": 1}\n");
    const char *args[] = { "--db", d.path, "--buyers", "4", "--no-lock", NULL };
    struct output o = run("ticket-grab", args);
    assert_ok(&o, "ticket-grab --no-lock");
    bool says_oversold = strstr(o.out, "(oversold by ") != NULL;
    long left;
    long got = check_buyers(o.out, 4, 1, &left);
    cr_assert_geq(got, 1, "somebody bought the ticket");
    cr_assert_eq(left, 0);
    cr_assert_eq(db_count(&d), 0);
    cr_assert_eq(says_oversold, got > 1, "the summary says whether it oversold");
    output_free(&o);
    db_remove(&d);
}

Test(ticket_grab, whitespace_in_the_database, .timeout = 30)
{
    struct db d = db_new(" \n{ \t\"count\"\r\n:\n 2 }\n\n");
    const char *args[] = { "--db", d.path, "--buyers", "3", NULL };
    struct output o = run("ticket-grab", args);
    assert_ok(&o, "ticket-grab");
    long left;
    cr_assert_eq(check_buyers(o.out, 3, 2, &left), 2);
    cr_assert_eq(db_count(&d), 0);
    output_free(&o);
    db_remove(&d);
}

Test(ticket_grab, bad_input, .timeout = 30)
{
    const char *bad_json[] = {
        "",
        "{}",
        "{count: 1}",
        "{\"count\": 1,}",
        "{\"count\": -1}",
        "{\"count\": +1}",
        "{\"count\": 01}",
        "{\"count\": 1.5}",
        "{\"count\": \"1\"}",
        "{\"count\": 1} x",
        "{\"count\": 1}}",
        "{\"Count\": 1}",
        "{\"count\": 99999999999999999999}",
        "[1]",
        "{\"count\": 1, \"price\": 2}",
    };
    for (size_t i = 0; i < sizeof bad_json / sizeof bad_json[0]; i++) {
        struct db d = db_new(bad_json[i]);
        const char *args[] = { "--db", d.path, "--buyers", "2", NULL };
        assert_refused("ticket-grab", args);
        db_remove(&d);
    }
    struct db d = db_new("{\"count\": 1}");
    const char *const cases[][6] = {
        { "--db", "/nonexistent/conc-tickets", "--buyers", "2", NULL },
        { "--db", d.path, "--buyers", "0", NULL },
        { "--db", d.path, "--buyers", "-1", NULL },
        { "--db", d.path, "--buyers", "x", NULL },
        { "--db", d.path, "--buyers", "1001", NULL },
        { "--db", d.path, NULL },
        { "--buyers", "2", NULL },
        { "--db", d.path, "--buyers", "2", "--frobnicate", NULL },
        { "--db", d.path, "--buyers", "2", "extra", NULL },
        { "--db", NULL },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        assert_refused("ticket-grab", cases[i]);
    FILE *f = fopen(d.path, "r");
    cr_assert_not_null(f);
    char text[64] = "";
    cr_assert_eq(fread(text, 1, sizeof text - 1, f), 12);
    fclose(f);
    cr_assert_str_eq(text, "{\"count\": 1}", "refused runs leave the file alone");
    db_remove(&d);
}

/* ------------------------------------------------------- shared-counter */

static void counter_run(const char *procs, const char *iters, bool lock, long *total,
                        long *expected)
{
    const char *args[] = { "--procs", procs, "--iters", iters, lock ? NULL : "--no-lock", NULL };
    struct output o = run("shared-counter", args);
    assert_ok(&o, "shared-counter");
    char *lines[4];
    int n = lines_of(o.out, lines, 4);
    cr_assert_geq(n, 2, "output:\n%s", o.out);
    char tail;
    cr_assert_eq(sscanf(lines[0], "counter=%ld%c", total, &tail), 1, "'%s'", lines[0]);
    cr_assert_eq(sscanf(lines[1], "expected=%ld%c", expected, &tail), 1, "'%s'", lines[1]);
    if (*total == *expected)
        cr_assert_eq(n, 2);
    else
        cr_assert_eq(n, 3, "a third line says how many were lost");
    output_free(&o);
}

Test(shared_counter, exact_with_the_lock, .timeout = 30)
{
    long total, expected;
    counter_run("4", "20000", true, &total, &expected);
    cr_assert_eq(expected, 80000);
    cr_assert_eq(total, 80000, "N*M with the Value's lock");
    counter_run("1", "1", true, &total, &expected);
    cr_assert_eq(total, 1);
}

Test(shared_counter, without_the_lock_at_most_exact, .timeout = 30)
{
    long total, expected;
    counter_run("4", "20000", false, &total, &expected);
    cr_assert_eq(expected, 80000);
    cr_assert_leq(total, 80000);
    cr_assert_geq(total, 20000, "at least one process's worth");
}

Test(shared_counter, bad_input, .timeout = 30)
{
    const char *const cases[][6] = {
        { "--procs", "0", "--iters", "10", NULL },
        { "--procs", "257", "--iters", "10", NULL },
        { "--procs", "2", "--iters", "0", NULL },
        { "--procs", "2", "--iters", "-5", NULL },
        { "--procs", "2", "--iters", "1e3", NULL },
        { "--procs", "2", NULL },
        { "--iters", "2", NULL },
        { "--procs", "2", "--iters", "10", "--bogus", NULL },
        { "--procs", "2", "--iters", "10", "extra", NULL },
        { "--procs", NULL },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        assert_refused("shared-counter", cases[i]);
}
