/*
 * test_examples_manager.c - the manager examples from CONC_EXAMPLES_DIR:
 * manager-counter (count=K-N for many processes, exactly), queue-server
 * and queue-client over TCP and a Unix socket (put then get, first in first
 * out, a get that waits for a later put, a get with a timeout), a wrong
 * authkey and an unreachable server (one line, exit 1), the server stopped
 * by SIGTERM (exit 0, its socket and its manager process gone), and bad
 * command lines (exit 2).
 *
 * The server listens on port 0 or a fresh path and its address is read
 * from its ready line, so tests never race for an address; no test sleeps
 * to synchronise.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define GUARD_MS 60000          /* hang guard for every wait here */

#include "conc.h"
#include "support/example_server.h"

/* ------------------------------------------------------ manager-counter */

static void counter_case(const char *procs, const char *start, const char *want)
{
    const char *args[] = { "--procs", procs, start ? "--start" : NULL, start, NULL };
    struct run r = run_example("manager-counter", args);
    assert_success(&r, "manager-counter");
    cr_expect_str_eq(r.out, want, "--procs %s --start %s", procs, start ? start : "(100)");
    run_free(&r);
}

Test(examples_manager, manager_counter_exact, .timeout = 300)
{
    counter_case("1", NULL, "count=99\n");
    counter_case("20", "100", "count=80\n");
    counter_case("3", "0", "count=-3\n");
    counter_case("64", "1000", "count=936\n");
}

/* ------------------------------------------------- queue server, client */

struct qsrv {
    struct srv srv;             /* the process, its stdout and stderr */
    char addr[320];
    char key[64];
};

static void write_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
}

/* Starts queue-server on address with the key "secret\n" in a fresh file
 * and reads its ready line "serving on ADDR". */
static struct qsrv start_qserver(const char *address)
{
    struct qsrv s;
    snprintf(s.key, sizeof s.key, "/tmp/conc-qkey-%d", (int)getpid());
    write_file(s.key, "secret\n");
    const char *args[] = { "--address", address, "--authkey-file", s.key, NULL };
    s.srv = spawn_server("queue-server", args);
    const char *line = s.srv.ready;
    cr_assert_eq(strncmp(line, "serving on ", 11), 0, "ready line '%s'", line);
    snprintf(s.addr, sizeof s.addr, "%.300s", line + 11);
    return s;
}

/* Stops the server with sig; it must exit 0 and leave no manager process. */
static void stop_qserver(struct qsrv *s, int sig)
{
    pid_t kids[8];
    int nk = children_of(s->srv.pid, kids, 8);
    cr_assert_eq(nk, 1, "queue-server runs its manager as one child");
    cr_assert_eq(kill(s->srv.pid, sig), 0);
    int status;
    cr_assert_eq(waitpid(s->srv.pid, &status, 0), s->srv.pid);
    char err[512] = "";
    ssize_t n = pread(fileno(s->srv.err), err, sizeof err - 1, 0);
    err[n > 0 ? n : 0] = 0;
    cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %#x, stderr: %s", status,
              err);
    cr_expect_str_empty(err);
    cr_expect_eq(kill(kids[0], 0), -1, "the manager process is gone");
    close(s->srv.out);
    fclose(s->srv.err);
    unlink(s->key);
}

static struct run client(const struct qsrv *s, const char *key, const char *cmd,
                         const char *msg)
{
    const char *args[] = { "--address", s->addr, "--authkey-file", key, cmd, msg, NULL };
    return run_example("queue-client", args);
}

static void put_ok(const struct qsrv *s, const char *msg)
{
    struct run r = client(s, s->key, "put", msg);
    assert_success(&r, "queue-client put");
    cr_expect_str_empty(r.out);
    run_free(&r);
}

static void get_is(const struct qsrv *s, const char *want)
{
    struct run r = client(s, s->key, "get", NULL);
    assert_success(&r, "queue-client get");
    cr_expect_str_eq(r.out, want);
    run_free(&r);
}

/* One line on stderr, nothing on stdout, exit 1; the line holds needle. */
static void one_line_failure(struct run *r, const char *needle)
{
    cr_expect(exited_with(r, 1), "status %#x, stderr: %s", r->status, r->err);
    size_t len = strlen(r->err);
    cr_assert_gt(len, 0);
    cr_expect_eq(r->err[len - 1], '\n');
    cr_expect_null(memchr(r->err, '\n', len - 1), "more than one line: %s", r->err);
    cr_expect_not_null(strstr(r->err, needle), "want '%s' in: %s", needle, r->err);
    cr_expect_str_empty(r->out);
    run_free(r);
}

static void dialog(struct qsrv *s)
{
    put_ok(s, "hello");
    put_ok(s, "second message");
    get_is(s, "hello\n");
    get_is(s, "second message\n");

    /* A get waits for a put that comes later. */
    const char *args[] = { "--address", s->addr, "--authkey-file", s->key, "get", NULL };
    struct bg g = start_example("queue-client", args);
    put_ok(s, "late");
    char *out, *err;
    int st = finish_example(&g, &out, &err);
    cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %#x: %s", st, err);
    cr_expect_str_eq(out, "late\n");
    free(out);
    free(err);

    /* An empty queue and a timeout: one line, exit 1. */
    const char *targs[] = { "--address", s->addr, "--authkey-file", s->key, "--timeout", "0.05",
                            "get", NULL };
    struct run r = run_example("queue-client", targs);
    one_line_failure(&r, "no message within 0.05 s");

    /* A wrong key is refused and puts nothing. */
    char wrong[96];
    snprintf(wrong, sizeof wrong, "%s-wrong", s->key);
    write_file(wrong, "not the secret\n");
    r = client(s, wrong, "put", "intruder");
    one_line_failure(&r, "authentication failed");
    r = client(s, wrong, "get", NULL);
    one_line_failure(&r, "authentication failed");
    unlink(wrong);
    put_ok(s, "after");
    get_is(s, "after\n");                   /* not "intruder" */
}

Test(examples_manager, queue_over_tcp, .timeout = 300)
{
    struct qsrv s = start_qserver("127.0.0.1:0");
    cr_assert_neq(strcmp(s.addr, "127.0.0.1:0"), 0, "the port it got: %s", s.addr);
    dialog(&s);
    stop_qserver(&s, SIGTERM);
    /* Nothing listens there now. */
    struct run r = client(&s, "/dev/null", "get", NULL);
    cr_expect(exited_with(&r, 2), "an empty key file is bad input");
    run_free(&r);
}

Test(examples_manager, queue_over_unix_socket, .timeout = 300)
{
    char path[128];
    snprintf(path, sizeof path, "/tmp/conc-qsock-%d", (int)getpid());
    unlink(path);
    struct qsrv s = start_qserver(path);
    cr_assert_str_eq(s.addr, path);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_expect_eq(st.st_mode & 0777, 0600);
    dialog(&s);
    stop_qserver(&s, SIGINT);
    cr_expect_neq(stat(path, &st), 0, "the socket is removed");
}

Test(examples_manager, unreachable_server, .timeout = 120)
{
    char key[64];
    snprintf(key, sizeof key, "/tmp/conc-qkey-u-%d", (int)getpid());
    write_file(key, "secret");
    const char *tcp[] = { "--address", "127.0.0.1:1", "--authkey-file", key, "get", NULL };
    struct run r = run_example("queue-client", tcp);
    one_line_failure(&r, "127.0.0.1:1");
    const char *unix_[] = { "--address", "/tmp/conc-no-such-socket", "--authkey-file", key,
                            "put", "x", NULL };
    r = run_example("queue-client", unix_);
    one_line_failure(&r, "/tmp/conc-no-such-socket");
    unlink(key);
}

Test(examples_manager, bad_command_lines, .timeout = 120)
{
    char key[64], empty[64];
    snprintf(key, sizeof key, "/tmp/conc-qkey-b-%d", (int)getpid());
    snprintf(empty, sizeof empty, "/tmp/conc-qkey-e-%d", (int)getpid());
    write_file(key, "secret");
    write_file(empty, "");
    const char *a1[] = { "--authkey-file", key, "get", NULL };                /* no address */
    assert_refused("queue-client", a1);
    const char *a2[] = { "--address", "/tmp/x", "get", NULL };                 /* no key file */
    assert_refused("queue-client", a2);
    const char *a3[] = { "--address", "/tmp/x", "--authkey-file", key, "put", NULL };
    assert_refused("queue-client", a3);
    const char *a4[] = { "--address", "/tmp/x", "--authkey-file", key, "frob", NULL };
    assert_refused("queue-client", a4);
    const char *a5[] = { "--address", "/tmp/x", "--authkey-file", key, "get", "extra", NULL };
    assert_refused("queue-client", a5);
    const char *a6[] = { "--address", "/tmp/x", "--authkey-file", "/tmp/conc-no-such-key",
                         "get", NULL };
    assert_refused("queue-client", a6);
    const char *a7[] = { "--address", "/tmp/x", "--authkey-file", empty, "get", NULL };
    assert_refused("queue-client", a7);
    const char *a8[] = { "--address", "/tmp/x", "--authkey-file", key, NULL };
    assert_refused("queue-client", a8);
    const char *s1[] = { "--authkey-file", key, NULL };
    assert_refused("queue-server", s1);
    const char *s2[] = { "--address", "127.0.0.1:0", NULL };
    assert_refused("queue-server", s2);
    const char *s3[] = { "--address", "127.0.0.1:0", "--authkey-file", empty, NULL };
    assert_refused("queue-server", s3);
    const char *m1[] = { NULL };
    assert_refused("manager-counter", m1);
    const char *m2[] = { "--procs", "0", NULL };
    assert_refused("manager-counter", m2);
    unlink(key);
    unlink(empty);
}
