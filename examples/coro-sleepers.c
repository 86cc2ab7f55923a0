/*
 * coro-sleepers - gevent's classic: spawn N greenlets that each sleep S
 * seconds, join them all, print how long it took.  With a hub the sleeps
 * overlap: a million sleepers of 0.1 s take about as long as it takes to
 * create them, not a million times 0.1 s.
 *
 *   coro-sleepers --count N [--sleep S] [--own-stacks]
 *
 * The greenlets run on the hub's shared stack (CONC_STACK_COPIED, set with
 * conc_hub_set_stacks): a sleeping one keeps the few hundred bytes of stack
 * it used, copied aside, and its records, under 1 KiB in all.
 * --own-stacks gives each a stack of its own, the hub's default (about
 * 4 KiB each: the page it touched).
 *
 * Prints "joined N in T s" (T: elapsed seconds).  Bad input (N outside 1 to
 * 1,000,000, S outside 0 to 3600 s): one line on stderr, exit status 2.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conc.h"
#include "cli.h"

static const char *prog = "coro-sleepers";

/* A sleeping greenlet costs under 1 KiB (about 4 KiB with --own-stacks):
 * a million of them is 1 GB (4 GB), what a big machine can give; more
 * would only end in "out of memory" after a long wait. */
#define MAX_COUNT 1000000L

static double pause_s = 0.1;

static void *sleeper(void *arg)
{
    long *done = arg;
    conc_sleep(pause_s);
    (*done)++;
    return NULL;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: %s --count N [--sleep S] [--own-stacks]\n"
               "  --count N      greenlets, 1 to %ld (each takes under 1 KiB while it sleeps)\n"
               "  --sleep S      seconds each sleeps, 0 to 3600 (default 0.1)\n"
               "  --own-stacks   a stack for each greenlet (about 4 KiB each) instead of\n"
               "                 the hub's shared stack\n",
            prog, MAX_COUNT);
}

int main(int argc, char **argv)
{
    long count = 0;
    bool own_stacks = false;
    const struct opt opts[] = {
        { "count", OPT_INT, &count, 1, MAX_COUNT, NULL },
        { "sleep", OPT_SECONDS, &pause_s, 0, 3600, NULL },
        { "own-stacks", OPT_FLAG, &own_stacks, 0, 0, NULL },
    };
    int rc = parse_options(argc, argv, opts, OPTS_COUNT(opts), usage);
    if (rc >= 0)
        return rc;
    if (count == 0)
        return fail("%s", "--count N is required (try --help)");

    rc = conc_hub_set_stacks(own_stacks ? CONC_STACK_OWN : CONC_STACK_COPIED);
    if (rc < 0)
        return die("conc_hub_set_stacks", rc);
    conc_greenlet **g = malloc((size_t)count * sizeof *g);
    if (!g)
        return die("malloc", -ENOMEM);
    long done = 0;
    int64_t t0 = conc_now();
    for (long i = 0; i < count; i++) {
        int rc = conc_greenlet_spawn(&g[i], sleeper, &done, NULL);
        if (rc < 0) {
            fprintf(stderr, "%s: spawn %ld: %s\n", prog, i, conc_strerror(rc));
            return 1;
        }
    }
    rc = conc_greenlet_joinall(g, (size_t)count, CONC_FOREVER);
    double elapsed = (double)(conc_now() - t0) / 1e9;
    if (rc < 0 || done != count) {
        fprintf(stderr, "%s: join: %s\n", prog, conc_strerror(rc));
        return 1;
    }
    printf("joined %ld in %.3f s\n", done, elapsed);
    for (long i = 0; i < count; i++)
        conc_greenlet_free(g[i]);
    free(g);
    return conc_hub_free() == 0 ? 0 : 1;
}
