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
#include "support/run_example.h"


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
    int count = split_lines(out, lines, 1100);
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
    struct run o = run_example("ticket-grab", args);
    assert_success(&o, "ticket-grab");
    long left;
    long got = check_buyers(o.out, buyers, stock, &left);
    long want_got = stock < buyers ? stock : buyers;
    long want_left = stock > buyers ? stock - buyers : 0;
    cr_assert_eq(got, want_got, "with the lock exactly min(K, N) buyers get one");
    cr_assert_eq(left, want_left);
    cr_assert_eq(db_count(&d), want_left, "the file ends with max(0, K - N)");
    run_free(&o);
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
    struct run o = run_example("ticket-grab", args);
    assert_success(&o, "ticket-grab --no-lock");
    bool says_oversold = strstr(o.out, "(oversold by ") != NULL;
    long left;
    long got = check_buyers(o.out, 4, 1, &left);
    cr_assert_geq(got, 1, "somebody bought the ticket");
    cr_assert_eq(left, 0);
    cr_assert_eq(db_count(&d), 0);
    cr_assert_eq(says_oversold, got > 1, "the summary says whether it oversold");
    run_free(&o);
    db_remove(&d);
}

Test(ticket_grab, whitespace_in_the_database, .timeout = 30)
{
    struct db d = db_new(" \n{ \t\"count\"\r\n:\n 2 }\n\n");
    const char *args[] = { "--db", d.path, "--buyers", "3", NULL };
    struct run o = run_example("ticket-grab", args);
    assert_success(&o, "ticket-grab");
    long left;
    cr_assert_eq(check_buyers(o.out, 3, 2, &left), 2);
    cr_assert_eq(db_count(&d), 0);
    run_free(&o);
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
    struct run o = run_example("shared-counter", args);
    assert_success(&o, "shared-counter");
    char *lines[4];
    int n = split_lines(o.out, lines, 4);
    cr_assert_geq(n, 2, "output:\n%s", o.out);
    char tail;
    cr_assert_eq(sscanf(lines[0], "counter=%ld%c", total, &tail), 1, "'%s'", lines[0]);
    cr_assert_eq(sscanf(lines[1], "expected=%ld%c", expected, &tail), 1, "'%s'", lines[1]);
    if (*total == *expected)
        cr_assert_eq(n, 2);
    else
        cr_assert_eq(n, 3, "a third line says how many were lost");
    run_free(&o);
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
