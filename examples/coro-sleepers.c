/*
 * coro-sleepers - gevent's classic: spawn N greenlets that each sleep S
 * seconds, join them all, print how long it took.  With a hub the sleeps
 * overlap: a million sleepers of 0.1 s take about as long as it takes to
 * create them, not a million times 0.1 s.
 *
 *   coro-sleepers --count N [--sleep S]
 *
 * Prints "joined N in T s" (T: elapsed seconds).  Bad input: one line on
 * stderr, exit status 2.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conc.h"
#include "cli.h"

static double pause_s = 0.1;

static void *sleeper(void *arg)
{
    long *done = arg;
    conc_sleep(pause_s);
    (*done)++;
    return NULL;
}

static int usage(const char *msg)
{
    fprintf(stderr, "coro-sleepers: %s (usage: coro-sleepers --count N [--sleep S])\n", msg);
    return 2;
}

int main(int argc, char **argv)
{
    long count = -1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--count") == 0 && i + 1 < argc) {
            if (!parse_long(argv[++i], 1, 100000000, &count))
                return usage("--count wants an integer from 1 to 100000000");
        } else if (strcmp(argv[i], "--sleep") == 0 && i + 1 < argc) {
            const char *s = argv[++i];
            if (strcmp(s, "0") != 0 && !parse_seconds(s, &pause_s))
                return usage("--sleep wants seconds, 0 to 3600");
            if (strcmp(s, "0") == 0)
                pause_s = 0;
        } else {
            return usage("unknown or incomplete argument");
        }
    }
    if (count < 0)
        return usage("--count is required");

    conc_greenlet **g = malloc((size_t)count * sizeof *g);
    if (!g)
        return usage("out of memory");
    long done = 0;
    int64_t t0 = conc_now();
    for (long i = 0; i < count; i++) {
        int rc = conc_spawn(&g[i], sleeper, &done, NULL);
        if (rc < 0) {
            fprintf(stderr, "coro-sleepers: spawn %ld: %s\n", i, conc_strerror(rc));
            return 1;
        }
    }
    int rc = conc_joinall(g, (size_t)count, CONC_FOREVER);
    double elapsed = (double)(conc_now() - t0) / 1e9;
    if (rc < 0 || done != count) {
        fprintf(stderr, "coro-sleepers: join: %s\n", conc_strerror(rc));
        return 1;
    }
    printf("joined %ld in %.3f s\n", done, elapsed);
    for (long i = 0; i < count; i++)
        conc_greenlet_free(g[i]);
    free(g);
    return conc_hub_destroy() == 0 ? 0 : 1;
}
