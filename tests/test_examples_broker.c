/*
 * test_examples_broker.c - runs the broker-queue example from
 * CONC_EXAMPLES_DIR against the private RabbitMQ node of the broker tests
 * (the ctest fixture starts it): the producer/consumer round trip, messages
 * surviving a broker restart, a consumer killed before task_done whose
 * message the next consumer gets redelivered, and bad input.
 */
#include <criterion/criterion.h>

#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conc.h"
#include "support/rabbitmq_node.h"
#include "support/run_example.h"

static void setup(void)
{
    read_url();
}

TestSuite(example_broker, .init = setup, .timeout = 240);

static void qname(char *buf, size_t cap, const char *what)
{
    snprintf(buf, cap, "conc-example-%s-%d", what, (int)getpid());
}

Test(example_broker, put_then_get_in_order)
{
    char q[128];
    qname(q, sizeof q, "rt");
    const char *put[] = { "--url", url, "--queue", q, "put", "first", "second", "third", NULL };
    struct run r = run_example("broker-queue", put);
    assert_success(&r, "broker-queue put");
    cr_assert_str_eq(r.out, "sent first\nsent second\nsent third\n");
    run_free(&r);
    const char *get[] = { "--url", url, "--queue", q, "get", "--count", "3", NULL };
    r = run_example("broker-queue", get);
    assert_success(&r, "broker-queue get");
    cr_assert_str_eq(r.out, "received first\nreceived second\nreceived third\n");
    run_free(&r);
    /* All done: nothing left. */
    const char *none[] = { "--url", url, "--queue", q, "get", "--timeout", "0.3", NULL };
    r = run_example("broker-queue", none);
    cr_assert(exited_with(&r, 1));
    cr_assert_str_empty(r.out);
    cr_assert_not_null(strstr(r.err, "no message"), "%s", r.err);
    run_free(&r);
}

Test(example_broker, messages_survive_a_broker_restart)
{
    char q[128];
    qname(q, sizeof q, "restart");
    const char *put[] = { "--url", url, "--queue", q, "put", "durable-1", "durable-2", NULL };
    struct run r = run_example("broker-queue", put);
    assert_success(&r, "broker-queue put");
    run_free(&r);
    node("stop");
    const char *get[] = { "--url", url, "--queue", q, "get", "--count", "2", NULL };
    r = run_example("broker-queue", get);
    cr_assert(exited_with(&r, 1), "get with the broker down: status %#x", r.status);
    cr_assert_not_null(strstr(r.err, "Connection refused"), "%s", r.err);
    run_free(&r);
    node("start");
    r = run_example("broker-queue", get);
    assert_success(&r, "broker-queue get after the restart");
    cr_assert_str_eq(r.out, "received durable-1\nreceived durable-2\n");
    run_free(&r);
}

/* Waits (a hang guard only) until the file holds a full line. */
static void wait_line(FILE *f)
{
    int64_t guard = conc_now() + 60LL * 1000000000LL;
    for (;;) {
        char buf[256];
        ssize_t n = pread(fileno(f), buf, sizeof buf - 1, 0);
        if (n > 0 && memchr(buf, '\n', (size_t)n))
            return;
        cr_assert_lt(conc_now(), guard, "the consumer printed nothing");
        conc_sleep(0.01);
    }
}

Test(example_broker, consumer_killed_before_done_message_redelivered)
{
    char q[128];
    qname(q, sizeof q, "kill");
    const char *put[] = { "--url", url, "--queue", q, "put", "job", NULL };
    struct run r = run_example("broker-queue", put);
    assert_success(&r, "broker-queue put");
    run_free(&r);
    const char *hold[] = { "--url", url, "--queue", q, "get", "--hold", NULL };
    struct bg b = start_example("broker-queue", hold);
    wait_line(b.out);
    cr_assert_eq(kill(b.pid, SIGKILL), 0);
    char *out, *err;
    int st = finish_example(&b, &out, &err);
    cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    cr_assert_str_eq(out, "received job\n");
    free(out);
    free(err);
    const char *get[] = { "--url", url, "--queue", q, "get", NULL };
    r = run_example("broker-queue", get);
    assert_success(&r, "broker-queue get after the kill");
    cr_assert_str_eq(r.out, "received job (redelivered)\n");
    run_free(&r);
}

Test(example_broker, bad_input_exit_2)
{
    const char *a1[] = { "get", NULL };
    assert_refused("broker-queue", a1);
    const char *a2[] = { "--url", url, NULL };
    assert_refused("broker-queue", a2);
    const char *a3[] = { "--url", url, "put", NULL };
    assert_refused("broker-queue", a3);
    const char *a4[] = { "--url", url, "get", "--count", "0", NULL };
    assert_refused("broker-queue", a4);
    const char *a5[] = { "--url", url, "get", "--bogus", NULL };
    assert_refused("broker-queue", a5);
    const char *a6[] = { "--url", url, "--timeout", "-1", "get", NULL };
    assert_refused("broker-queue", a6);
    /* A wrong password: one line, status 1, no password printed. */
    char bad[300];
    snprintf(bad, sizeof bad, "amqp://guest:sekrit%s", strchr(url, '@'));
    const char *a7[] = { "--url", bad, "get", NULL };
    struct run r = run_example("broker-queue", a7);
    cr_assert(exited_with(&r, 1));
    cr_assert_not_null(strstr(r.err, "Permission denied"), "%s", r.err);
    cr_assert_null(strstr(r.err, "sekrit"));
    run_free(&r);
}
