/*
 * test_examples_distmap.c - runs the distributed-map example from
 * CONC_EXAMPLES_DIR against the private RabbitMQ node the ctest fixture
 * starts: the sum over worker processes it starts, the same sum with one
 * worker killed mid-task, a worker started on its own with --worker, and
 * bad input.
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

    /* A broker that is not there: one line, status 1. */
    const char *down[] = { "--url", "amqp://guest:guest@127.0.0.1:1/", "--tasks", "3",
                           "--workers", "0", NULL };
    struct run r = run_example("distributed-map", down);
    cr_assert(exited_with(&r, 1), "status %#x, stderr %s", r.status, r.err);
    cr_assert_str_eq(r.out, "");
    cr_assert(strstr(r.err, "distributed-map: connecting to the broker"), "%s", r.err);
    run_free(&r);
}
