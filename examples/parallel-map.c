/*
 * parallel-map - Pool.map and Pool.imap_unordered, with a progress bar.
 *
 * Sums f(i) = i*i for i = 0 .. N-1 (N = --tasks) on a process Pool of
 * --workers W worker processes (default: the CPU count), twice: once with
 * map over the N arguments and once with imap_unordered, which reads its
 * input lazily (the arguments are made one at a time as the pool has room
 * for them) and gives the results as they finish.  Each argument is the
 * 8 bytes of i, each result the 8 bytes of i*i.  It prints
 *
 *   map: sum=S
 *   imap_unordered: sum=S
 *   sum=S
 *
 * where S = N(N-1)(2N-1)/6, the sum of the squares of 0 .. N-1; the last
 * line is printed only when both ways agree and imap_unordered gave every
 * index exactly once (otherwise one line on stderr says what went wrong
 * and the exit status is 1).
 *
 * --chunksize C sends C arguments per task (map's default is Python's:
 * N / (4 W), rounded up; imap_unordered's is 1).  --progress reports the
 * progress on stderr, from the pool's progress callback (called at most
 * every few milliseconds and once at the end): a bar redrawn in place when
 * stderr is a terminal, else plain lines "map: DONE/N" (one each time
 * another tenth is done, and the last at N/N), then the same for
 * imap_unordered.
 *
 *   parallel-map --tasks N [--workers W] [--chunksize C] [--progress]
 *
 * Bad input (N outside 0..3000000, W outside 1..256, C outside
 * 1..1000000, no --tasks, an unknown option): one line on stderr, exit 2.
 *
 * Python original:
 *   with Pool(W) as pool:
 *       print(sum(pool.map(f, range(N), chunksize=C)))
 *       print(sum(pool.imap_unordered(f, range(N))))
 * (with tqdm around the iterator for the progress bar).
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conc.h"
#include "conc/pool.h"
#include "cli.h"

static const char *prog = "parallel-map";

#define MAX_TASKS 3000000L      /* the sum of the squares stays below 2^64 */
#define MAX_WORKERS 256L
#define MAX_CHUNK 1000000L
#define BAR_WIDTH 40

/* ------------------------------------------------------------- the task */

/* f(i) = i*i: 8 bytes in, 8 bytes out. */
static int square(const void *arg, size_t len, void **result, size_t *result_len)
{
    uint64_t i;
    if (len != sizeof i)
        return -EINVAL;
    memcpy(&i, arg, sizeof i);
    uint64_t *out = malloc(sizeof *out);
    if (!out)
        return -ENOMEM;
    *out = i * i;
    *result = out;
    *result_len = sizeof *out;
    return 0;
}

/* A result's value, or false when it is not 8 bytes. */
static bool result_value(const void *v, size_t len, uint64_t *out)
{
    if (len != sizeof *out || !v)
        return false;
    memcpy(out, v, sizeof *out);
    return true;
}

/* ------------------------------------------------------------ progress */

struct progress {
    const char *label;
    size_t total;
    bool tty;
    size_t last_tenth;          /* the last tenth printed as a line */
    bool ended;
};

/* The pool's progress callback (on the pool's thread). */
static void show_progress(void *ctx, size_t done, size_t total)
{
    struct progress *p = ctx;
    (void)total;                /* SIZE_MAX while imap's input runs: use N */
    if (p->ended || done > p->total)
        return;
    if (p->tty) {
        int fill = p->total ? (int)(done * BAR_WIDTH / p->total) : BAR_WIDTH;
        int pct = p->total ? (int)(done * 100 / p->total) : 100;
        fprintf(stderr, "\r%-15s [%.*s%*s] %3d%% %zu/%zu", p->label, fill,
                "########################################", BAR_WIDTH - fill, "", pct, done,
                p->total);
        if (done == p->total)
            fputc('\n', stderr);
    } else {
        size_t tenth = p->total ? done * 10 / p->total : 10;
        if (tenth > p->last_tenth || done == p->total) {
            fprintf(stderr, "%s: %zu/%zu\n", p->label, done, p->total);
            p->last_tenth = tenth;
        }
    }
    if (done == p->total)
        p->ended = true;
    fflush(stderr);
}

/* ------------------------------------------------------------------ map */

static int sum_map(conc_pool *pool, long n, long chunksize, struct progress *pr, uint64_t *sum)
{
    uint64_t *args = malloc(((size_t)n + 1) * sizeof *args);
    conc_pool_item *items = malloc(((size_t)n + 1) * sizeof *items);
    if (!args || !items) {
        free(args);
        free(items);
        return die("map", -ENOMEM);
    }
    for (long i = 0; i < n; i++) {
        args[i] = (uint64_t)i;
        items[i] = (conc_pool_item){ &args[i], sizeof args[i] };
    }
    conc_pool_task_opts to = CONC_POOL_TASK_OPTS_INIT;
    to.chunksize = (size_t)chunksize;
    if (pr) {
        to.progress = show_progress;
        to.ctx = pr;
    }
    conc_pool_result *r = NULL;
    int rc = conc_pool_map(pool, square, items, (size_t)n, &to, &r);
    free(items);
    free(args);
    if (rc < 0) {
        conc_pool_result_free(r);
        return die("map", rc);
    }
    *sum = 0;
    for (long i = 0; i < n; i++) {
        void *v;
        size_t len;
        uint64_t x;
        rc = conc_pool_result_item(r, (size_t)i, &v, &len);
        if (rc < 0 || !result_value(v, len, &x) || x != (uint64_t)i * (uint64_t)i) {
            conc_pool_result_free(r);
            fprintf(stderr, "%s: map: item %ld: %s\n", prog, i,
                    rc < 0 ? conc_strerror(rc) : "wrong result");
            return 1;
        }
        *sum += x;
    }
    conc_pool_result_free(r);
    return 0;
}

/* ------------------------------------------------------- imap_unordered */

/* imap_unordered's input, 0 .. n-1 made one at a time, and its progress:
 * one context serves both the input and the progress callback (which sees
 * the first member). */
struct imap_ctx {
    struct progress pr;
    uint64_t next, n;
    uint64_t current;           /* the bytes handed out last */
};

static int next_arg(void *ctx, const void **arg, size_t *len)
{
    struct imap_ctx *in = ctx;
    if (in->next >= in->n)
        return 0;
    in->current = in->next++;
    *arg = &in->current;
    *len = sizeof in->current;
    return 1;
}

static int sum_imap_unordered(conc_pool *pool, long n, long chunksize, bool progress,
                              bool tty, uint64_t *sum)
{
    struct imap_ctx pi = { { "imap_unordered", (size_t)n, tty, 0, false }, 0, (uint64_t)n, 0 };
    unsigned char *seen = calloc((size_t)n / 8 + 1, 1);
    if (!seen)
        return die("imap_unordered", -ENOMEM);
    conc_pool_task_opts to = CONC_POOL_TASK_OPTS_INIT;
    to.chunksize = (size_t)chunksize;
    to.ctx = &pi;
    if (progress)
        to.progress = show_progress;
    conc_pool_iter *it;
    int rc = conc_pool_imap_unordered(pool, square, next_arg, &to, &it);
    if (rc < 0) {
        free(seen);
        return die("imap_unordered", rc);
    }
    *sum = 0;
    int status;
    void *v;
    size_t len, index;
    long got = 0;
    while ((rc = conc_pool_iter_next(it, &status, &v, &len, &index, CONC_FOREVER)) == 1) {
        uint64_t x = 0;
        const char *why = NULL;
        if (status != 0)
            why = conc_strerror(status);
        else if (index >= (size_t)n)
            why = "an index out of range";
        else if (seen[index / 8] & (1u << (index % 8)))
            why = "an index given twice";
        else if (!result_value(v, len, &x) || x != (uint64_t)index * (uint64_t)index)
            why = "a wrong result";
        if (why) {
            fprintf(stderr, "%s: imap_unordered: item %zu: %s\n", prog, index, why);
            conc_pool_iter_free(it);
            free(seen);
            return 1;
        }
        seen[index / 8] |= (unsigned char)(1u << (index % 8));
        *sum += x;
        got++;
    }
    conc_pool_iter_free(it);
    free(seen);
    if (rc < 0)
        return die("imap_unordered", rc);
    if (got != n) {
        fprintf(stderr, "%s: imap_unordered: %ld results for %ld arguments\n", prog, got, n);
        return 1;
    }
    return 0;
}

/* ------------------------------------------------------------------ main */

static void usage(FILE *f)
{
    fprintf(f, "usage: %s --tasks N [--workers W] [--chunksize C] [--progress]\n"
               "  sums i*i for i = 0 .. N-1 on a process Pool, with map and with\n"
               "  imap_unordered, and prints sum=N(N-1)(2N-1)/6\n"
               "  --tasks N       0 to %ld\n"
               "  --workers W     worker processes, 1 to %ld (default: the CPU count)\n"
               "  --chunksize C   arguments per task, 1 to %ld (default: map's is\n"
               "                  N / (4 W) rounded up, imap_unordered's 1)\n"
               "  --progress      show the progress on stderr (a bar on a terminal)\n",
            prog, MAX_TASKS, MAX_WORKERS, MAX_CHUNK);
}

int main(int argc, char **argv)
{
    long ntasks = 0, workers = 0, chunksize = 0;
    bool have_tasks = false, progress = false;
    const struct opt opts[] = {
        { "tasks", OPT_INT, &ntasks, 0, MAX_TASKS, &have_tasks },
        { "workers", OPT_INT, &workers, 1, MAX_WORKERS, NULL },
        { "chunksize", OPT_INT, &chunksize, 1, MAX_CHUNK, NULL },
        { "progress", OPT_FLAG, &progress, 0, 0, NULL },
    };
    int rc = parse_options(argc, argv, opts, OPTS_COUNT(opts), usage);
    if (rc >= 0)
        return rc;
    if (!have_tasks)
        return fail("%s", "--tasks N is required (try --help)");

    conc_pool_opts po = CONC_POOL_OPTS_INIT;
    po.processes = (int)workers;            /* 0: the CPU count */
    po.method = CONC_START_FORK;
    conc_pool *pool;
    if ((rc = conc_pool_new(&pool, &po)) < 0)
        return die("Pool", rc);

    bool tty = progress && isatty(STDERR_FILENO);
    struct progress pr = { "map", (size_t)ntasks, tty, 0, false };
    uint64_t by_map = 0, by_imap = 0;
    int status = sum_map(pool, ntasks, chunksize, progress ? &pr : NULL, &by_map);
    if (status == 0) {
        printf("map: sum=%llu\n", (unsigned long long)by_map);
        fflush(stdout);
        status = sum_imap_unordered(pool, ntasks, chunksize, progress, tty, &by_imap);
    }
    if (status == 0)
        printf("imap_unordered: sum=%llu\n", (unsigned long long)by_imap);
    conc_pool_close(pool);
    if ((rc = conc_pool_join(pool, CONC_FOREVER)) < 0 && status == 0)
        status = die("join", rc);
    conc_pool_free(pool);
    if (status != 0)
        return status;
    if (by_map != by_imap) {
        fprintf(stderr, "%s: map and imap_unordered disagree\n", prog);
        return 1;
    }
    printf("sum=%llu\n", (unsigned long long)by_map);
    return 0;
}
