/*
 * test_examples_cli.c - every example's command line through the shared
 * parser: --help answers with the usage and exit 0, --name=value works,
 * a flag given a value and an unknown --name=value are refused naming the
 * option as written, and values over a limit are refused with the real
 * limit in the message.
 */
#include <criterion/criterion.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conc.h"
#include "support/run_example.h"

static const char *const examples[] = {
    "condition-notify", "coro-sleepers", "coro-tour", "crawler", "custom-thread-pool",
    "echo-upper-client", "echo-upper-server", "ftp-client", "ftp-server", "hotline-client",
    "hotline-server", "manager-counter", "parallel-map", "pipe-ping", "process-basics",
    "producer-consumer", "queue-client", "queue-server", "shared-counter", "thread-basics",
    "ticket-grab", "traffic-light", "udp-upper-server",
};
#define NEXAMPLES (sizeof examples / sizeof examples[0])

Test(examples_cli, every_example_answers_help, .timeout = 120)
{
    for (size_t i = 0; i < NEXAMPLES; i++) {
        const char *forms[][2] = { { "--help", NULL }, { "-h", NULL } };
        for (size_t k = 0; k < 2; k++) {
            struct run r = run_example(examples[i], forms[k]);
            char what[96];
            snprintf(what, sizeof what, "%s %s", examples[i], forms[k][0]);
            assert_success(&r, what);
            cr_assert_eq(strncmp(r.out, "usage: ", 7), 0, "%s: '%s'", what, r.out);
            cr_assert_not_null(strstr(r.out, examples[i]), "%s names the program", what);
            run_free(&r);
        }
    }
}

/* The message of a refused command line; the program must name `needle`. */
static void refused_naming(const char *name, const char *const *args, const char *needle)
{
    assert_refused(name, args);
    struct run r = run_example(name, args);
    cr_assert_not_null(strstr(r.err, needle), "%s: want '%s' in: %s", name, needle, r.err);
    run_free(&r);
}

Test(examples_cli, a_flag_given_a_value_is_refused_by_its_name, .timeout = 120)
{
    const char *sc[] = { "--procs", "2", "--iters", "10", "--no-lock=1", NULL };
    refused_naming("shared-counter", sc, "option '--no-lock' takes no value");
    const char *tg[] = { "--db", "/dev/null", "--buyers", "1", "--no-lock=yes", NULL };
    refused_naming("ticket-grab", tg, "option '--no-lock' takes no value");
    const char *pc1[] = { "--producers", "1", "--consumers", "1", "--items", "1",
                          "--threads=yes", NULL };
    refused_naming("producer-consumer", pc1, "option '--threads' takes no value");
    const char *pc2[] = { "--producers", "1", "--consumers", "1", "--items", "1",
                          "--joinable=", NULL };
    refused_naming("producer-consumer", pc2, "option '--joinable' takes no value");
    const char *help[] = { "--help=1", NULL };
    for (size_t i = 0; i < NEXAMPLES; i++)
        refused_naming(examples[i], help, "option '--help' takes no value");
}

Test(examples_cli, unknown_options_are_named_as_written, .timeout = 120)
{
    const char *eq[] = { "--bogus=1", NULL };
    const char *plain[] = { "--bogus", NULL };
    const char *shortopt[] = { "-x", NULL };
    for (size_t i = 0; i < NEXAMPLES; i++) {
        refused_naming(examples[i], eq, "unknown option '--bogus'");
        refused_naming(examples[i], plain, "unknown option '--bogus'");
        refused_naming(examples[i], shortopt, "unknown option '-x'");
    }
}

Test(examples_cli, name_equals_value_works_everywhere, .timeout = 120)
{
    const char *sc[] = { "--procs=2", "--iters=10", NULL };
    struct run r = run_example("shared-counter", sc);
    assert_success(&r, "shared-counter --procs=2 --iters=10");
    cr_assert_str_eq(r.out, "counter=20\nexpected=20\n");
    run_free(&r);

    const char *cs[] = { "--count=10", "--sleep=0", NULL };
    r = run_example("coro-sleepers", cs);
    assert_success(&r, "coro-sleepers --count=10 --sleep=0");
    cr_assert_eq(strncmp(r.out, "joined 10 in ", 13), 0, "%s", r.out);
    run_free(&r);

    const char *pp[] = { "--messages=3", "--size=8", NULL };
    r = run_example("pipe-ping", pp);
    assert_success(&r, "pipe-ping --messages=3 --size=8");
    cr_assert_str_eq(r.out, "ok 3\n");
    run_free(&r);

    const char *pc[] = { "--producers=1", "--consumers=1", "--items=10", NULL };
    r = run_example("producer-consumer", pc);
    assert_success(&r, "producer-consumer --producers=1 ...");
    cr_assert_str_eq(r.out, "consumer 0: consumed 10\ntotal=10\n");
    run_free(&r);

    const char *cn[] = { "--threads=3", "--batches=1,2", NULL };
    r = run_example("condition-notify", cn);
    assert_success(&r, "condition-notify --threads=3 --batches=1,2");
    cr_assert_not_null(strstr(r.out, "done: 3 threads ran, 0 never notified"), "%s", r.out);
    run_free(&r);

    const char *mc[] = { "--procs=3", "--start=5", NULL };
    r = run_example("manager-counter", mc);
    assert_success(&r, "manager-counter --procs=3 --start=5");
    cr_assert_str_eq(r.out, "count=2\n");
    run_free(&r);

    const char *ct[] = { "--part=1", NULL };
    r = run_example("coro-tour", ct);
    assert_success(&r, "coro-tour --part=1");
    run_free(&r);

    char db[] = "/tmp/conc-cli-XXXXXX";
    int fd = mkstemp(db);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, "{\"count\": 2}\n", 13), 13);
    close(fd);
    char dbarg[64];
    snprintf(dbarg, sizeof dbarg, "--db=%s", db);
    const char *tg[] = { dbarg, "--buyers=1", NULL };
    r = run_example("ticket-grab", tg);
    assert_success(&r, "ticket-grab --db=FILE --buyers=1");
    cr_assert_str_eq(r.out, "buyer 1: got a ticket\nsold 1 of 2 tickets; the database says "
                            "count=1\n");
    run_free(&r);
    unlink(db);
}

Test(examples_cli, limits_are_real_and_named, .timeout = 120)
{
    const char *cs[] = { "--count", "1000001", NULL };
    refused_naming("coro-sleepers", cs, "--count wants a whole number from 1 to 1000000");
    const char *pp[] = { "--messages", "1000001", NULL };
    refused_naming("pipe-ping", pp, "--messages wants a whole number from 1 to 1000000");
    const char *pp2[] = { "--messages", "1000", "--size", "67108864", NULL };
    refused_naming("pipe-ping", pp2, "--messages times --size is at most 4294967296 bytes");
    const char *sc[] = { "--procs", "257", "--iters", "1", NULL };
    refused_naming("shared-counter", sc, "--procs wants a whole number from 1 to 256");
    const char *tl[] = { "--period", "3601", NULL };
    refused_naming("traffic-light", tl, "--period wants seconds > 0 (at most 3600)");
    const char *ct[] = { "--delay=61", NULL };
    refused_naming("coro-tour", ct, "--delay wants seconds from 0 to 60");
    const char *pm[] = { "--tasks", "3000001", NULL };
    refused_naming("parallel-map", pm, "--tasks wants a whole number from 0 to 3000000");
    const char *cr[] = { "--procs=65", "http://127.0.0.1:1/", NULL };
    refused_naming("crawler", cr, "--procs wants a whole number from 1 to 64");
    const char *mc[] = { "--procs", "257", NULL };
    refused_naming("manager-counter", mc, "--procs wants a whole number from 1 to 256");
    const char *mc2[] = { "--procs", "1", "--start", "-1", NULL };
    refused_naming("manager-counter", mc2, "--start wants a whole number from 0 to 1000000000");
    const char *qc[] = { "--timeout", "86401", "get", NULL };
    refused_naming("queue-client", qc, "--timeout wants seconds from 0 to 86400");
    const char *ctp[] = { "--workers", "65", NULL };
    refused_naming("custom-thread-pool", ctp, "--workers wants a whole number from 1 to 64");
    const char *fs[] = { "--max-size", "1099511627777", "0", NULL };
    refused_naming("ftp-server", fs, "--max-size wants a whole number from 0 to 1099511627776");
    const char *fc[] = { "--timeout=86401", "h", "1", NULL };
    refused_naming("ftp-client", fc, "--timeout wants seconds > 0 (at most 86400)");
    const char *hc[] = { "--timeout=86401", "h", "1", NULL };
    refused_naming("hotline-client", hc, "--timeout wants seconds > 0 (at most 86400)");

    /* 1001 batches of 1: the real limit is 1000 numbers. */
    size_t cap = 1001 * 2 + 16;
    char *list = malloc(cap);
    cr_assert_not_null(list);
    char *p = list;
    for (int i = 0; i < 1001; i++)
        p += sprintf(p, i ? ",1" : "1");
    const char *cn[] = { "--threads", "1000", "--batches", list, NULL };
    refused_naming("condition-notify", cn, "--batches takes at most 1000 numbers");
    free(list);
}
