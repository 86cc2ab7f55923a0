/*
 * test_examples.c - runs the example programs (build/examples/NAME) and
 * checks their exit status and what they print.
 *
 * The output of each example is its proof: traffic-light prints under the
 * lock the light switches with, condition-notify prints under the
 * condition's lock, so the order of the lines is the order of the events.
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
#include "support/run_example.h"


/* Parses "<prefix><number><suffix>" exactly. */
static bool match_num(const char *line, const char *prefix, const char *suffix, long *num)
{
    size_t pl = strlen(prefix);
    if (strncmp(line, prefix, pl) != 0)
        return false;
    const char *p = line + pl;
    if (*p < '0' || *p > '9')
        return false;
    char *end;
    long v = strtol(p, &end, 10);
    if (strcmp(end, suffix) != 0)
        return false;
    *num = v;
    return true;
}

/* -------------------------------------------------------- traffic-light */

enum { MAX_LINES = 20000 };

/* Checks a traffic-light run with `cycles` cycles and `cars` cars. */
static void check_traffic(const char *const *args, long cycles, long cars)
{
    struct run r = run_example("traffic-light", args);
    assert_success(&r, "traffic-light");
    char **lines = calloc(MAX_LINES, sizeof *lines);
    bool *passed = calloc((size_t)cars + 1, sizeof *passed);
    cr_assert(lines && passed);
    char *text = strdup(r.out);
    int n = split_lines(text, lines, MAX_LINES);

    long greens = 0, reds = 0, passes = 0;
    bool green = false;
    for (int i = 0; i < n; i++) {
        long k;
        if (strcmp(lines[i], "light green") == 0) {
            cr_assert_not(green, "line %d: green twice in a row", i + 1);
            green = true;
            greens++;
            memset(passed, 0, ((size_t)cars + 1) * sizeof *passed);
        } else if (strcmp(lines[i], "light red") == 0) {
            cr_assert(green, "line %d: red without green before it", i + 1);
            green = false;
            reds++;
        } else if (match_num(lines[i], "car ", " passes", &k)) {
            cr_assert(green, "line %d: '%s' while the light is red\n%s", i + 1, lines[i], r.out);
            cr_assert(k >= 1 && k <= cars, "line %d: no car %ld", i + 1, k);
            cr_assert_not(passed[k], "line %d: car %ld passed twice in one green phase\n%s",
                          i + 1, k, r.out);
            passed[k] = true;
            passes++;
        } else {
            cr_assert_fail("line %d: unexpected output '%s'", i + 1, lines[i]);
        }
    }
    cr_assert_eq(greens, cycles, "green lines\n%s", r.out);
    cr_assert_eq(reds, cycles, "red lines\n%s", r.out);
    cr_assert_not(green, "the light ends red");
    cr_assert_geq(passes, 1, "no car ever passed\n%s", r.out);
    cr_assert_leq(passes, cycles * cars);
    free(text);
    free(lines);
    free(passed);
    run_free(&r);
}

Test(traffic_light, defaults, .timeout = 60)
{
    const char *args[] = { NULL };
    check_traffic(args, 3, 5);
}

Test(traffic_light, short_period, .timeout = 60)
{
    const char *args[] = { "--period", "0.05", NULL };
    check_traffic(args, 3, 5);
}

Test(traffic_light, many_cycles_and_cars, .timeout = 60)
{
    const char *args[] = { "--cycles", "6", "--cars", "12", "--period", "0.02", NULL };
    check_traffic(args, 6, 12);
}

Test(traffic_light, one_car_one_cycle, .timeout = 60)
{
    const char *args[] = { "--cycles=1", "--cars=1", "--period=0.2", NULL };
    check_traffic(args, 1, 1);
}

Test(traffic_light, bad_flags, .timeout = 60)
{
    const char *a1[] = { "--cycles", "0", NULL };
    const char *a2[] = { "--cycles", "three", NULL };
    const char *a3[] = { "--period", "-1", NULL };
    const char *a4[] = { "--period", "0", NULL };
    const char *a5[] = { "--period", "0.1s", NULL };
    const char *a6[] = { "--cars", "0", NULL };
    const char *a7[] = { "--bogus", NULL };
    const char *a8[] = { "stray", NULL };
    const char *a9[] = { "--cars", NULL };
    const char *a10[] = { "--period", "nan", NULL };
    const char *const *all[] = { a1, a2, a3, a4, a5, a6, a7, a8, a9, a10 };
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        assert_refused("traffic-light", all[i]);
}

Test(traffic_light, help, .timeout = 60)
{
    const char *args[] = { "--help", NULL };
    struct run r = run_example("traffic-light", args);
    assert_success(&r, "traffic-light --help");
    cr_assert_not_null(strstr(r.out, "--cycles"));
    run_free(&r);
}

/* ----------------------------------------------------- condition-notify */

/* Checks a condition-notify run: each "notify K" is followed by exactly K
 * "thread I runs" lines of distinct threads before the next notify. */
static void check_notify(const char *const *args, long nthreads, const long *batches,
                         int nbatches)
{
    struct run r = run_example("condition-notify", args);
    assert_success(&r, "condition-notify");
    char **lines = calloc(MAX_LINES, sizeof *lines);
    bool *ran = calloc((size_t)nthreads, sizeof *ran);
    cr_assert(lines && ran);
    char *text = strdup(r.out);
    int n = split_lines(text, lines, MAX_LINES);

    int batch = -1;         /* index of the current batch */
    long in_batch = 0, total = 0;
    bool done = false;
    for (int i = 0; i < n; i++) {
        long v;
        cr_assert_not(done, "line %d after the summary: '%s'", i + 1, lines[i]);
        if (match_num(lines[i], "notify ", "", &v)) {
            if (batch >= 0)
                cr_assert_eq(in_batch, batches[batch], "batch %d: %ld threads ran, not %ld\n%s",
                             batch, in_batch, batches[batch], r.out);
            batch++;
            cr_assert_lt(batch, nbatches, "more notifies than batches\n%s", r.out);
            cr_assert_eq(v, batches[batch], "line %d: '%s'", i + 1, lines[i]);
            in_batch = 0;
        } else if (match_num(lines[i], "thread ", " runs", &v)) {
            cr_assert_geq(batch, 0, "line %d: a thread ran before any notify", i + 1);
            cr_assert(v >= 0 && v < nthreads, "line %d: no thread %ld", i + 1, v);
            cr_assert_not(ran[v], "line %d: thread %ld ran twice\n%s", i + 1, v, r.out);
            ran[v] = true;
            in_batch++;
            total++;
        } else if (strncmp(lines[i], "done: ", 6) == 0) {
            long x, m;
            cr_assert_eq(sscanf(lines[i], "done: %ld threads ran, %ld never notified", &x, &m),
                         2, "line %d: '%s'", i + 1, lines[i]);
            cr_assert_eq(x, total);
            cr_assert_eq(m, nthreads - total);
            done = true;
        } else {
            cr_assert_fail("line %d: unexpected output '%s'", i + 1, lines[i]);
        }
    }
    cr_assert_eq(batch, nbatches - 1, "%d notifies, want %d\n%s", batch + 1, nbatches, r.out);
    cr_assert_eq(in_batch, batches[batch], "last batch: %ld threads ran, not %ld\n%s", in_batch,
                 batches[batch], r.out);
    cr_assert(done, "no summary line");
    long sum = 0;
    for (int b = 0; b < nbatches; b++)
        sum += batches[b];
    cr_assert_eq(total, sum);
    free(text);
    free(lines);
    free(ran);
    run_free(&r);
}

Test(condition_notify, defaults, .timeout = 60)
{
    const char *args[] = { NULL };
    const long b[] = { 1, 2, 3 };
    check_notify(args, 6, b, 3);
}

Test(condition_notify, batches_1_2_3, .timeout = 60)
{
    const char *args[] = { "--threads", "6", "--batches", "1,2,3", NULL };
    const long b[] = { 1, 2, 3 };
    for (int round = 0; round < 5; round++)
        check_notify(args, 6, b, 3);
}

Test(condition_notify, other_batches, .timeout = 60)
{
    const char *a1[] = { "--threads", "10", "--batches", "4,1,3", NULL };
    const long b1[] = { 4, 1, 3 };
    const char *a2[] = { "--threads", "5", "--batches", "5", NULL };
    const long b2[] = { 5 };
    const char *a3[] = { "--threads=3", "--batches=1,1", NULL };
    const long b3[] = { 1, 1 };
    const char *a4[] = { "--threads", "32", "--batches", "1,1,1,2,8,16", NULL };
    const long b4[] = { 1, 1, 1, 2, 8, 16 };
    const char *a5[] = { "--threads", "1", "--batches", "1", NULL };
    const long b5[] = { 1 };
    for (int round = 0; round < 2; round++) {
        check_notify(a1, 10, b1, 3);
        check_notify(a2, 5, b2, 1);
        check_notify(a3, 3, b3, 2);
        check_notify(a4, 32, b4, 6);
        check_notify(a5, 1, b5, 1);
    }
}

Test(condition_notify, bad_flags, .timeout = 60)
{
    const char *a1[] = { "--batches", "3,4", NULL };       /* 7 > 6 threads */
    const char *a2[] = { "--threads", "2", "--batches", "1,2", NULL };
    const char *a3[] = { "--batches", "", NULL };
    const char *a4[] = { "--batches", "1,,2", NULL };
    const char *a5[] = { "--batches", "1,x", NULL };
    const char *a6[] = { "--batches", "1,2,", NULL };
    const char *a7[] = { "--batches", "0", NULL };
    const char *a8[] = { "--threads", "0", NULL };
    const char *a9[] = { "--threads", "-3", NULL };
    const char *a10[] = { "--bogus", NULL };
    const char *a11[] = { "extra", NULL };
    const char *const *all[] = { a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11 };
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        assert_refused("condition-notify", all[i]);
}

/* -------------------------------------------------------- thread-basics */

Test(thread_basics, runs, .timeout = 60)
{
    const char *args[] = { NULL };
    struct run r = run_example("thread-basics", args);
    assert_success(&r, "thread-basics");
    /* What each step must have shown. */
    static const char *const shows[] = {
        "sum_to(100) returned 5050",
        "current_thread() is MainThread (main_thread(): yes)",
        "current_thread() is asker (main_thread(): no), its native id matches: yes",
        "a thread created by a daemon is a daemon: yes",
        "MainThread waiter-1 waiter-2 waiter-3",
        "ETIMEDOUT, alive=yes",
        "returned \"ding\" after at least 0.1 s: yes",
        "fn called: no, result: NULL",
        "stored \"red\" and reads back \"red\"",
        "stored \"blue\" and reads back \"blue\"",
        "main reads \"main's value\"",
        "thread-basics: done",
    };
    for (size_t i = 0; i < sizeof shows / sizeof shows[0]; i++)
        cr_assert_not_null(strstr(r.out, shows[i]), "missing '%s' in:\n%s", shows[i], r.out);
    int steps = 0;
    for (const char *p = r.out; (p = strstr(p, "\n== ")) != NULL; p++)
        steps++;
    cr_assert_geq(steps + (strncmp(r.out, "== ", 3) == 0), 8, "fewer steps than expected");
    run_free(&r);
}

Test(thread_basics, bad_flags, .timeout = 60)
{
    const char *a1[] = { "--bogus", NULL };
    const char *a2[] = { "stray", NULL };
    assert_refused("thread-basics", a1);
    assert_refused("thread-basics", a2);
}
