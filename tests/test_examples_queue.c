/*
 * test_examples_queue.c - runs the queue example (producer-consumer) from
 * CONC_EXAMPLES_DIR with processes and with threads, plain and joinable,
 * and checks what it prints and how it exits.
 */
#include <criterion/criterion.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conc.h"
#include "support/run_example.h"

/* ---------------------------------------------------- producer-consumer */

/* Runs producer-consumer with P producers, C consumers and N items each
 * (and --joinable / --threads as asked) and checks its output: one line
 * "consumer I: consumed X" per consumer, I = 0..C-1 in order, whose X add
 * up to P*N, then "total=P*N"; nothing on stderr, exit 0. */
static void pc_run(long p, long c, long n, bool joinable, bool threads)
{
    char ps[16], cs[16], ns[24];
    snprintf(ps, sizeof ps, "%ld", p);
    snprintf(cs, sizeof cs, "%ld", c);
    snprintf(ns, sizeof ns, "%ld", n);
    const char *args[10] = { "--producers", ps, "--consumers", cs, "--items", ns };
    int argc = 6;
    if (joinable)
        args[argc++] = "--joinable";
    if (threads)
        args[argc++] = "--threads";
    args[argc] = NULL;

    char what[128];
    snprintf(what, sizeof what, "producer-consumer %ldx%ld N=%ld%s%s", p, c, n,
             joinable ? " --joinable" : "", threads ? " --threads" : "");
    struct run r = run_example("producer-consumer", args);
    assert_success(&r, what);

    char *lines[80];
    int count = split_lines(r.out, lines, 80);
    cr_assert_eq(count, c + 1, "%s: want %ld consumer lines and total=, got:\n%s", what, c,
                 r.out);
    long sum = 0;
    for (long i = 0; i < c; i++) {
        long id, x;
        int used = -1;
        int f = sscanf(lines[i], "consumer %ld: consumed %ld%n", &id, &x, &used);
        cr_assert(f == 2 && used == (int)strlen(lines[i]), "%s: line '%s'", what, lines[i]);
        cr_assert_eq(id, i, "%s: consumer lines in order from 0: '%s'", what, lines[i]);
        cr_assert(x >= 0 && x <= p * n, "%s: '%s'", what, lines[i]);
        sum += x;
    }
    long total;
    int used = -1;
    cr_assert_eq(sscanf(lines[c], "total=%ld%n", &total, &used), 1, "%s: last line '%s'", what,
                 lines[c]);
    cr_assert_eq(used, (int)strlen(lines[c]), "%s: last line '%s'", what, lines[c]);
    cr_assert_eq(sum, p * n, "%s: the consumers took %ld items, want %ld", what, sum, p * n);
    cr_assert_eq(total, p * n, "%s: total=%ld, want %ld", what, total, p * n);
    run_free(&r);
}

/* ------------------------------------------------------------ processes */

Test(producer_consumer, processes_one_by_one, .timeout = 30)
{
    pc_run(1, 1, 1000, false, false);
}

Test(producer_consumer, processes_three_by_two, .timeout = 30)
{
    pc_run(3, 2, 1000, false, false);
}

Test(producer_consumer, processes_two_by_four, .timeout = 30)
{
    pc_run(2, 4, 1000, false, false);
}

Test(producer_consumer, processes_large, .timeout = 30)
{
    pc_run(3, 2, 20000, false, false);
    pc_run(2, 4, 20000, false, false);
}

Test(producer_consumer, processes_no_items, .timeout = 30)
{
    pc_run(1, 1, 0, false, false);
    pc_run(2, 4, 0, false, false);
}

Test(producer_consumer, processes_one_item_many_consumers, .timeout = 30)
{
    pc_run(1, 8, 1, false, false);
}

Test(producer_consumer, processes_joinable, .timeout = 30)
{
    pc_run(1, 1, 1000, true, false);
    pc_run(3, 2, 1000, true, false);
    pc_run(2, 4, 1000, true, false);
}

Test(producer_consumer, processes_joinable_large, .timeout = 30)
{
    pc_run(3, 2, 20000, true, false);
}

Test(producer_consumer, processes_joinable_no_items, .timeout = 30)
{
    pc_run(1, 1, 0, true, false);
    pc_run(2, 4, 0, true, false);
}

/* -------------------------------------------------------------- threads */

Test(producer_consumer, threads_one_by_one, .timeout = 30)
{
    pc_run(1, 1, 1000, false, true);
}

Test(producer_consumer, threads_three_by_two, .timeout = 30)
{
    pc_run(3, 2, 1000, false, true);
}

Test(producer_consumer, threads_two_by_four, .timeout = 30)
{
    pc_run(2, 4, 1000, false, true);
}

Test(producer_consumer, threads_large, .timeout = 30)
{
    pc_run(3, 2, 20000, false, true);
    pc_run(2, 4, 20000, false, true);
}

Test(producer_consumer, threads_no_items, .timeout = 30)
{
    pc_run(1, 1, 0, false, true);
    pc_run(2, 4, 0, false, true);
}

Test(producer_consumer, threads_one_item_many_consumers, .timeout = 30)
{
    pc_run(1, 8, 1, false, true);
}

Test(producer_consumer, threads_joinable, .timeout = 30)
{
    pc_run(1, 1, 1000, true, true);
    pc_run(3, 2, 1000, true, true);
    pc_run(2, 4, 1000, true, true);
}

Test(producer_consumer, threads_joinable_large, .timeout = 30)
{
    pc_run(3, 2, 20000, true, true);
}

Test(producer_consumer, threads_joinable_no_items, .timeout = 30)
{
    pc_run(1, 1, 0, true, true);
    pc_run(2, 4, 0, true, true);
}

/* ------------------------------------------------------------ bad input */

Test(producer_consumer, bad_input, .timeout = 30)
{
    const char *const cases[][9] = {
        /* missing numbers */
        { NULL },
        { "--consumers", "2", "--items", "10", NULL },
        { "--producers", "2", "--items", "10", NULL },
        { "--producers", "2", "--consumers", "2", NULL },
        { "--producers", "2", "--consumers", "2", "--items", NULL },
        { "--producers", NULL },
        { "--threads", "--joinable", NULL },
        /* out of range */
        { "--producers", "0", "--consumers", "2", "--items", "10", NULL },
        { "--producers", "65", "--consumers", "2", "--items", "10", NULL },
        { "--producers", "-1", "--consumers", "2", "--items", "10", NULL },
        { "--producers", "2", "--consumers", "0", "--items", "10", NULL },
        { "--producers", "2", "--consumers", "65", "--items", "10", NULL },
        { "--producers", "2", "--consumers", "-3", "--items", "10", NULL },
        { "--producers", "2", "--consumers", "2", "--items", "-1", NULL },
        { "--producers", "2", "--consumers", "2", "--items", "1000001", NULL },
        { "--producers", "2", "--consumers", "2", "--items", "99999999999999999999", NULL },
        /* not numbers */
        { "--producers", "two", "--consumers", "2", "--items", "10", NULL },
        { "--producers", "2", "--consumers", "2x", "--items", "10", NULL },
        { "--producers", "2", "--consumers", "2", "--items", "1e3", NULL },
        { "--producers", "2", "--consumers", "2", "--items", "", NULL },
        { "--producers", "2.5", "--consumers", "2", "--items", "10", NULL },
        /* unknown options and stray arguments */
        { "--producers", "2", "--consumers", "2", "--items", "10", "--bogus", NULL },
        { "--producers", "2", "--consumers", "2", "--items", "10", "-x", NULL },
        { "--producers", "2", "--consumers", "2", "--items", "10", "extra", NULL },
        { "--producers", "2", "--consumers", "2", "--items", "10", "--threads=1", NULL },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        assert_refused("producer-consumer", cases[i]);
}

Test(producer_consumer, help, .timeout = 30)
{
    const char *args[] = { "--help", NULL };
    struct run r = run_example("producer-consumer", args);
    assert_success(&r, "producer-consumer --help");
    cr_assert_not_null(strstr(r.out, "usage: producer-consumer --producers P"), "%s", r.out);
    run_free(&r);
}

/* ------------------------------------------------------ interrupted */

/* Interrupting the main process alone stops its producers and consumers:
 * none is left, nothing in /dev/shm, and it ends killed by the signal. */
static void pc_interrupt(int sig, bool joinable)
{
    const char *args[] = { "--producers", "2", "--consumers", "2", "--items", "1000000",
                           joinable ? "--joinable" : NULL, NULL };
    interrupt_example("producer-consumer", args, 4, sig);
}

Test(producer_consumer, sigterm_to_the_parent_stops_the_children, .timeout = 30)
{
    pc_interrupt(SIGTERM, false);
}

Test(producer_consumer, sigint_to_the_parent_stops_the_children, .timeout = 30)
{
    pc_interrupt(SIGINT, false);
}

Test(producer_consumer, sighup_to_the_joinable_parent_stops_the_children, .timeout = 30)
{
    pc_interrupt(SIGHUP, true);
}
