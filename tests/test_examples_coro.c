/*
 * test_examples_coro.c - runs the coroutine tour (coro-tour) from
 * CONC_EXAMPLES_DIR: the exact output of its greenlet and spawn/joinall
 * parts, and for its crawler that every URL arrived whole (size and
 * checksum recomputed here), the total, and that the server saw more than
 * one connection at once.
 */
#include <criterion/criterion.h>

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conc.h"
#include "support/run_example.h"

#define PART1                                                                              \
    "== 1. greenlet: test1 and test2 hand control to each other with switch\n"             \
    "12\n"                                                                                 \
    "56\n"                                                                                 \
    "34\n"                                                                                 \
    "78\n"                                                                                 \
    "back in main when test2 returned: gr2 dead: yes; gr1 dead: no "                       \
    "(test1 still waits in its second switch, as with greenlet)\n"

#define PART2                                                                              \
    "== 2. gevent.spawn and joinall: greenlets take turns whenever the running one "       \
    "sleeps\n"                                                                             \
    "-- foo and bar yield with sleep(0):\n"                                                \
    "Running in foo\n"                                                                     \
    "Explicit context to bar\n"                                                            \
    "Explicit context switch to foo again\n"                                               \
    "Implicit context switch back to bar\n"                                                \
    "-- a, b and c each print 3 lines, sleeping 0.125 s, 0.050 s and 0.075 s between "     \
    "them:\n"                                                                              \
    "   a: line 1 at 0.000 s\n"                                                            \
    "   b: line 1 at 0.000 s\n"                                                            \
    "   c: line 1 at 0.000 s\n"                                                            \
    "   b: line 2 at 0.050 s\n"                                                            \
    "   c: line 2 at 0.075 s\n"                                                            \
    "   b: line 3 at 0.100 s\n"                                                            \
    "   a: line 2 at 0.125 s\n"                                                            \
    "   c: line 3 at 0.150 s\n"                                                            \
    "   a: line 3 at 0.250 s\n"                                                            \
    "joinall: the sleeps overlapped: yes (0.500 s of sleeps in about 0.250 s)\n"

#define PART3_HEADING                                                                      \
    "== 3. gevent + monkey.patch_all + requests.get: one greenlet per URL, libcurl's "     \
    "sockets parked on with conc_fd_wait\n"

/* What the server sends for /page/I: 10000 * I bytes, byte J being
 * 'a' + (I + J) % 26; its FNV-1a (32 bits). */
static uint32_t page_checksum(long page)
{
    uint32_t h = 0x811c9dc5u;
    for (size_t j = 0; j < (size_t)page * 10000; j++)
        h = (h ^ (uint32_t)('a' + ((size_t)page + j) % 26)) * 0x01000193u;
    return h;
}

/* Part 2's ticker lines ("   a: line 2 at 0.125 s") come in the order the
 * greenlets woke.  A machine that stalls the program for longer than the
 * 25 ms between two deadlines can wake two of them in one pass, in either
 * order, so the lines are put back in the order of the times they state
 * (a stable sort: the three lines at 0.000 s stay in spawn order, and each
 * greenlet's own lines are in order whatever happened).  What is checked is
 * that every line is there once and each greenlet kept its own order. */
static int ticker_line(const char *l, double *at)
{
    char who;
    int k;
    return sscanf(l, "   %c: line %d at %lf s", &who, &k, at) == 3;
}

static void order_ticker_lines(char *out)
{
    char *lines[64];
    double at[64];
    size_t n = 0;
    char *start = NULL;
    for (char *l = out; *l && n < 64;) {
        char *end = strchr(l, '\n');
        if (!end)
            break;
        double t;
        if (ticker_line(l, &t)) {
            if (!start)
                start = l;
            lines[n] = strndup(l, (size_t)(end - l + 1));
            cr_assert_not_null(lines[n]);
            at[n++] = t;
        } else if (start) {
            break;
        }
        l = end + 1;
    }
    for (size_t i = 1; i < n; i++)         /* insertion sort: stable */
        for (size_t j = i; j > 0 && at[j - 1] > at[j]; j--) {
            char *tl = lines[j];
            lines[j] = lines[j - 1];
            lines[j - 1] = tl;
            double tt = at[j];
            at[j] = at[j - 1];
            at[j - 1] = tt;
        }
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(lines[i]);
        memcpy(start, lines[i], len);
        start += len;
        free(lines[i]);
    }
}

static void run_exact(const char *const *args, const char *want)
{
    struct run r = run_example("coro-tour", args);
    assert_success(&r, "coro-tour");
    order_ticker_lines(r.out);
    cr_assert_str_eq(r.out, want);
    run_free(&r);
}

Test(coro_tour, greenlet_switch, .timeout = 30)
{
    const char *args[] = { "--part", "1", NULL };
    run_exact(args, PART1);
}

Test(coro_tour, spawn_joinall_interleave, .timeout = 30)
{
    const char *args[] = { "--part", "2", NULL };
    run_exact(args, PART2);
}

/* Checks the crawler's lines (text starts at its heading): the server
 * line, the N GET lines in spawn order, then one line per URL in any order
 * with the right size and checksum, the total, and the server's count of
 * connections open at once. */
static void check_crawler(char *text, long n, double delay)
{
    char *lines[200];
    int count = split_lines(text, lines, 200);
    cr_assert_eq(count, 1 + 1 + n + n + 2, "want %ld URLs' lines:\n%s", n, text);
    cr_assert_eq(strncmp(lines[0], PART3_HEADING, strlen(lines[0])), 0, "heading '%s'",
                 lines[0]);
    cr_assert_eq(strlen(lines[0]) + 1, strlen(PART3_HEADING));

    int port;
    long last;
    double said_delay;
    char tail;
    int f = sscanf(lines[1], "server: http://127.0.0.1:%d/page/1 to /page/%ld, waits %lf s "
                             "before each answer%c", &port, &last, &said_delay, &tail);
    cr_assert_eq(f, 3, "server line '%s'", lines[1]);
    cr_assert(port > 0 && port < 65536);
    cr_assert_eq(last, n);
    cr_assert_float_eq(said_delay, delay, 1e-9);

    char want[128];
    for (long i = 1; i <= n; i++) {
        snprintf(want, sizeof want, "GET: http://127.0.0.1:%d/page/%ld", port, i);
        cr_assert_str_eq(lines[1 + i], want, "every GET goes out before any answer");
    }

    bool seen[65] = { false };
    unsigned long long total = 0;
    for (long k = 0; k < n; k++) {
        const char *line = lines[2 + n + k];
        size_t size;
        int p;
        long page;
        unsigned sum;
        f = sscanf(line, "%zu bytes received from http://127.0.0.1:%d/page/%ld (fnv-1a %8x)%c",
                   &size, &p, &page, &sum, &tail);
        cr_assert_eq(f, 5, "line '%s'", line);
        cr_assert_eq(tail, '.', "line '%s'", line);
        cr_assert_eq(p, port);
        cr_assert(page >= 1 && page <= n, "line '%s'", line);
        cr_assert_not(seen[page], "page %ld printed twice", page);
        seen[page] = true;
        cr_assert_eq(size, (size_t)page * 10000, "line '%s'", line);
        cr_assert_eq(sum, page_checksum(page), "line '%s': want fnv-1a %08x", line,
                     page_checksum(page));
        total += size;
    }

    long urls, sent;
    unsigned long long bytes;
    double took, sequential;
    f = sscanf(lines[2 + 2 * n], "total: %ld URLs, %llu bytes in %lf s (one after another: "
                                 "at least %lf s%c", &urls, &bytes, &took, &sequential, &tail);
    cr_assert_eq(f, 5, "total line '%s'", lines[2 + 2 * n]);
    cr_assert_eq(urls, n);
    cr_assert_eq(bytes, total);
    cr_assert_float_eq(sequential, n * delay, 1e-3);
    if (n > 1 && delay > 0)
        cr_assert_lt(took, sequential, "the fetches overlap: %s", lines[2 + 2 * n]);

    int most;
    f = sscanf(lines[3 + 2 * n], "server: %ld pages sent, at most %d connections open at "
                                 "once%c", &sent, &most, &tail);
    cr_assert_eq(f, 2, "server line '%s'", lines[3 + 2 * n]);
    cr_assert_eq(sent, n);
    if (n > 1)
        cr_assert_gt(most, 1, "the server saw the fetches overlap: %s", lines[3 + 2 * n]);
    cr_assert_leq(most, n);
}

static void crawl(const char *const *args, long n, double delay)
{
    struct run r = run_example("coro-tour", args);
    assert_success(&r, "coro-tour");
    check_crawler(r.out, n, delay);
    run_free(&r);
}

Test(coro_tour, crawler_defaults, .timeout = 30)
{
    const char *args[] = { "--part", "3", NULL };
    crawl(args, 5, 0.2);
}

Test(coro_tour, crawler_many_urls, .timeout = 30)
{
    const char *args[] = { "--part", "3", "--urls", "40", "--delay", "0.3", NULL };
    crawl(args, 40, 0.3);
}

Test(coro_tour, crawler_one_url_no_delay, .timeout = 30)
{
    const char *args[] = { "--part", "3", "--urls", "1", "--delay", "0", NULL };
    crawl(args, 1, 0);
}

Test(coro_tour, all_parts_in_order, .timeout = 30)
{
    const char *args[] = { "--urls", "3", "--delay", "0.1", NULL };
    struct run r = run_example("coro-tour", args);
    assert_success(&r, "coro-tour");
    order_ticker_lines(r.out);
    const char *head = PART1 "\n" PART2 "\n";
    cr_assert_eq(strncmp(r.out, head, strlen(head)), 0, "parts 1 and 2 first:\n%s", r.out);
    check_crawler(r.out + strlen(head), 3, 0.1);
    run_free(&r);
}

Test(coro_tour, bad_input, .timeout = 30)
{
    const char *a1[] = { "--part", "4", NULL };
    const char *a2[] = { "--part", "0", NULL };
    const char *a3[] = { "--part", "x", NULL };
    const char *a4[] = { "--urls", "0", NULL };
    const char *a5[] = { "--urls", "65", NULL };
    const char *a6[] = { "--urls", "5x", NULL };
    const char *a7[] = { "--delay", "-1", NULL };
    const char *a8[] = { "--delay", "61", NULL };
    const char *a9[] = { "--delay", "nan", NULL };
    const char *a10[] = { "--urls", NULL };
    const char *a11[] = { "--bogus", NULL };
    const char *a12[] = { "stray", NULL };
    const char *a13[] = { "--part", "", NULL };
    const char *const *all[] = { a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13 };
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        assert_refused("coro-tour", all[i]);
}

Test(coro_tour, help, .timeout = 30)
{
    const char *args[] = { "--help", NULL };
    struct run r = run_example("coro-tour", args);
    assert_success(&r, "coro-tour --help");
    cr_assert_not_null(strstr(r.out, "--urls"));
    cr_assert_not_null(strstr(r.out, "--delay"));
    cr_assert_not_null(strstr(r.out, "--part"));
    run_free(&r);
}
