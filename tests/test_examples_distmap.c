/*
 * test_examples_distmap.c - runs the distributed-map example from
 * CONC_EXAMPLES_DIR against the private RabbitMQ node the ctest fixture
 * starts: the sum over worker processes it starts, the same sum with one
 * worker killed mid-task, a worker started on its own with --worker, an
 * authkey file (and workers with another one), and bad input.
 */
#include <criterion/criterion.h>

#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conc.h"
#include "support/rabbitmq_node.h"
#include "support/run_example.h"

static void setup(void)
{
    read_url();
}

TestSuite(example_distmap, .init = setup, .timeout = 240);

static void qname(char *buf, size_t cap, const char *what)
{
    snprintf(buf, cap, "conc-example-dm-%s-%d", what, (int)getpid());
}

/* sum of i*i for i in [0, n) */
static uint64_t expected(uint64_t n)
{
    return n == 0 ? 0 : (n - 1) * n * (2 * n - 1) / 6;
}

static void assert_sum(const struct run *r, uint64_t n)
{
    char want[64];
    snprintf(want, sizeof want, "sum=%" PRIu64 "\n", expected(n));
    cr_assert_str_eq(r->out, want, "stdout: %s\nstderr: %s", r->out, r->err);
}

Test(example_distmap, sums_over_workers)
{
    char q[128];
    qname(q, sizeof q, "sum");
    const char *args[] = { "--url", url, "--queue", q, "--tasks", "300", "--workers", "3",
                           NULL };
    struct run r = run_example("distributed-map", args);
    assert_success(&r, "distributed-map");
    assert_sum(&r, 300);
    run_free(&r);
    const char *none[] = { "--url", url, "--queue", q, "--tasks", "0", NULL };
    r = run_example("distributed-map", none);
    assert_success(&r, "distributed-map --tasks 0");
    assert_sum(&r, 0);
    run_free(&r);
}

Test(example_distmap, kill_one_still_sums_right)
{
    char q[128];
    qname(q, sizeof q, "kill");
    const char *args[] = { "--url", url, "--queue", q, "--tasks", "200", "--workers", "2",
                           "--kill-one", NULL };
    struct run r = run_example("distributed-map", args);
    assert_success(&r, "distributed-map --kill-one");
    assert_sum(&r, 200);
    run_free(&r);
}

Test(example_distmap, separate_worker)
{
    char q[128];
    qname(q, sizeof q, "sep");
    /* A worker "on another machine": started on its own, stopped by
     * SIGTERM after the coordinator (with no workers of its own) is done. */
    int out[2];
    cr_assert_eq(pipe(out), 0);
    pid_t w = fork();
    cr_assert_geq(w, 0);
    if (w == 0) {
        dup2(out[1], 1);
        close(out[0]);
        close(out[1]);
        char path[512];
        snprintf(path, sizeof path, "%s/distributed-map", CONC_EXAMPLES_DIR);
        execl(path, path, "--url", url, "--queue", q, "--worker", (char *)NULL);
        _exit(127);
    }
    close(out[1]);
    char line[256];
    FILE *f = fdopen(out[0], "r");
    cr_assert_not_null(fgets(line, sizeof line, f), "the worker said nothing");
    cr_assert(strstr(line, "worker ready"), "%s", line);
    const char *args[] = { "--url", url, "--queue", q, "--tasks", "50", "--workers", "0",
                           NULL };
    struct run r = run_example("distributed-map", args);
    assert_success(&r, "distributed-map --workers 0");
    assert_sum(&r, 50);
    run_free(&r);
    cr_assert_eq(kill(w, SIGTERM), 0);
    int st;
    cr_assert_eq(waitpid(w, &st, 0), w);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "worker status %#x", st);
    fclose(f);
}

/* Writes key to a new temporary file whose name goes to path. */
static void key_file(char *path, size_t cap, const char *key)
{
    snprintf(path, cap, "/tmp/conc-dm-key-XXXXXX");
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, key, strlen(key)), (ssize_t)strlen(key));
    close(fd);
}

/* Starts `distributed-map --worker` with a key file; returns its pid once
 * it said it is ready (*fp: its stdout, to close after). */
static pid_t start_keyed_worker(const char *q, const char *keyfile, FILE **fp)
{
    int out[2];
    cr_assert_eq(pipe(out), 0);
    pid_t w = fork();
    cr_assert_geq(w, 0);
    if (w == 0) {
        dup2(out[1], 1);
        close(out[0]);
        close(out[1]);
        char path[512];
        snprintf(path, sizeof path, "%s/distributed-map", CONC_EXAMPLES_DIR);
        execl(path, path, "--url", url, "--queue", q, "--worker", "--authkey-file", keyfile,
              (char *)NULL);
        _exit(127);
    }
    close(out[1]);
    char line[256];
    *fp = fdopen(out[0], "r");
    cr_assert_not_null(fgets(line, sizeof line, *fp), "the worker said nothing");
    cr_assert(strstr(line, "worker ready"), "%s", line);
    return w;
}

static void stop_worker(pid_t w, FILE *f)
{
    cr_assert_eq(kill(w, SIGTERM), 0);
    int st;
    cr_assert_eq(waitpid(w, &st, 0), w);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "worker status %#x", st);
    fclose(f);
}

/* With the same --authkey-file everywhere the sum comes; a worker with
 * another key runs nothing, and the coordinator says so (status 1). */
Test(example_distmap, authkey_file)
{
    char q[128], ka[64], kb[64];
    qname(q, sizeof q, "key");
    key_file(ka, sizeof ka, "sesame\n");
    key_file(kb, sizeof kb, "open sesame");
    const char *args[] = { "--url", url, "--queue", q, "--tasks", "40", "--workers", "2",
                           "--authkey-file", ka, NULL };
    struct run r = run_example("distributed-map", args);
    assert_success(&r, "distributed-map --authkey-file");
    assert_sum(&r, 40);
    run_free(&r);
    FILE *f;
    pid_t w = start_keyed_worker(q, kb, &f);
    const char *other[] = { "--url", url, "--queue", q, "--tasks", "3", "--workers", "0",
                            "--authkey-file", ka, NULL };
    r = run_example("distributed-map", other);
    cr_assert(exited_with(&r, 1), "status %#x, stderr %s", r.status, r.err);
    cr_assert_str_eq(r.out, "");
    cr_assert(strstr(r.err, "distributed-map: a result: "), "%s", r.err);
    cr_assert(strstr(r.err, "ermission denied"), "%s", r.err);
    run_free(&r);
    stop_worker(w, f);
    unlink(ka);
    unlink(kb);
}

Test(example_distmap, bad_input)
{
    const char *cases[][8] = {
        { "--tasks", "5", NULL },                                   /* no --url */
        { "--url", "amqp://localhost", NULL },                      /* no --tasks */
        { "--url", "amqp://localhost", "--tasks", "-1", NULL },
        { "--url", "amqp://localhost", "--tasks", "x", NULL },
        { "--url", "amqp://localhost", "--tasks", "5", "--workers", "65", NULL },
        { "--url", "amqp://localhost", "--tasks", "5", "--workers", "1", "--kill-one", NULL },
        { "--url", "amqp://localhost", "--worker", "--tasks", "5", NULL },
        { "--url", "amqp://localhost", "--bogus", NULL },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        assert_refused("distributed-map", cases[i]);
    /* Key files that cannot serve: missing, empty, too long. */
    char empty[64], longer[64];
    key_file(empty, sizeof empty, "\n");
    char big[1100];
    memset(big, 'k', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    key_file(longer, sizeof longer, big);
    const char *files[] = { "/nonexistent/key", empty, longer };
    for (int i = 0; i < 3; i++) {
        const char *a[] = { "--url", "amqp://localhost", "--tasks", "1", "--authkey-file",
                            files[i], NULL };
        struct run kr = run_example("distributed-map", a);
        cr_assert(exited_with(&kr, 2), "status %#x, stderr %s", kr.status, kr.err);
        cr_assert(strstr(kr.err, "--authkey-file"), "%s", kr.err);
        run_free(&kr);
    }
    unlink(empty);
    unlink(longer);

    /* A broker that is not there: one line, status 1. */
    const char *down[] = { "--url", "amqp://guest:guest@127.0.0.1:1/", "--tasks", "3",
                           "--workers", "0", NULL };
    struct run r = run_example("distributed-map", down);
    cr_assert(exited_with(&r, 1), "status %#x, stderr %s", r.status, r.err);
    cr_assert_str_eq(r.out, "");
    cr_assert(strstr(r.err, "distributed-map: connecting to the broker"), "%s", r.err);
    run_free(&r);
}
