/*
 * manager-counter - multiprocessing.Manager: a dict held by a manager
 * process, changed by many processes through proxies, under a manager Lock.
 *
 * The manager starts (a child process serving on a private Unix socket);
 * the program makes a manager dict {"count": K} and a manager Lock, then
 * --procs N processes (conc_process, fork) each take the Lock, read
 * d["count"], write it back one less and release the Lock.  The parent
 * joins them and prints
 *
 *   count=K-N
 *
 * (the number).  The proxies are inherited by the forked processes; each
 * opens its own connection to the manager on its first call.  A process
 * that fails or is killed is named on stderr and the exit status is 1.
 *
 *   manager-counter --procs N [--start K]      (K defaults to 100)
 *
 * Python original:
 *   m = Manager(); d = m.dict({"count": 100}); lock = m.Lock()
 *   each Process runs `with lock: d["count"] -= 1`; the parent prints d.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conc.h"
#include "conc/manager.h"
#include "cli.h"

static const char *prog = "manager-counter";

#define MAX_PROCS 256
#define MAX_START 1000000000L

static conc_proxy *dict, *lock;

/* d["count"] as a number (it is stored as decimal text). */
static int get_count(long *out)
{
    void *v;
    size_t n;
    int rc = conc_proxy_dict_get(dict, "count", 5, &v, &n);
    if (rc < 0)
        return rc;
    char text[32];
    bool ok = n > 0 && n < sizeof text;
    if (ok) {
        memcpy(text, v, n);
        text[n] = 0;
        ok = parse_long(text, -MAX_START - MAX_PROCS, MAX_START, out);
    }
    free(v);
    return ok ? 0 : -EPROTO;
}

static int set_count(long c)
{
    char text[32];
    int n = snprintf(text, sizeof text, "%ld", c);
    return conc_proxy_dict_set(dict, "count", 5, text, (size_t)n);
}

/* The body of each process: with lock: d["count"] -= 1. */
static int decrement(const void *arg, size_t len)
{
    (void)arg;
    (void)len;
    long c;
    int rc = conc_proxy_acquire(lock, CONC_FOREVER);
    if (rc == 0) {
        rc = get_count(&c);
        if (rc == 0)
            rc = set_count(c - 1);
        int r2 = conc_proxy_release(lock);
        if (rc == 0)
            rc = r2;
    }
    if (rc < 0) {
        fprintf(stderr, "%s: %s\n", prog, conc_strerror(rc));
        return 1;
    }
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: %s --procs N [--start K]\n"
               "  --procs N   processes, 1 to %d, each takes one off the count\n"
               "  --start K   the count to start from, 0 to %ld (default 100)\n",
            prog, MAX_PROCS, MAX_START);
}

int main(int argc, char **argv)
{
    long nprocs = 0, start = 100;
    const struct opt opts[] = {
        { "procs", OPT_INT, &nprocs, 1, MAX_PROCS, NULL },
        { "start", OPT_INT, &start, 0, MAX_START, NULL },
    };
    int rc = parse_options(argc, argv, opts, OPTS_COUNT(opts), usage);
    if (rc >= 0)
        return rc;
    if (nprocs == 0)
        return fail("%s", "--procs N is required (try --help)");

    conc_manager *m;
    if ((rc = conc_manager_new(&m, NULL)) < 0)
        return die("Manager", rc);
    if ((rc = conc_manager_start(m)) < 0)          /* m = Manager() */
        return die("Manager start", rc);
    if ((rc = conc_manager_create(m, &dict, CONC_PROXY_DICT, NULL, 0, 0)) < 0 ||
        (rc = set_count(start)) < 0)                /* d = m.dict({"count": K}) */
        return die("manager dict", rc);
    if ((rc = conc_manager_create(m, &lock, CONC_PROXY_LOCK, NULL, 0, 0)) < 0)
        return die("manager Lock", rc);

    conc_process **procs = calloc((size_t)nprocs, sizeof *procs);
    if (!procs)
        return die("calloc", -ENOMEM);
    fflush(stdout);
    int failed = 0;
    long started = 0;
    for (long i = 0; i < nprocs; i++) {
        if (start_process(&procs[i], decrement, NULL, 0, "process", i + 1) < 0) {
            failed = 1;
            break;
        }
        started++;
    }
    for (long i = 0; i < started; i++)
        if (join_process(procs[i], "process", i + 1) != 0)
            failed = 1;
    free(procs);

    long count;
    if ((rc = get_count(&count)) < 0) {
        failed = 1;
        die("manager dict", rc);
    } else {
        printf("count=%ld\n", count);
    }
    conc_proxy_free(dict);
    conc_proxy_free(lock);
    conc_manager_free(m);                           /* shuts the manager down */
    return failed;
}
