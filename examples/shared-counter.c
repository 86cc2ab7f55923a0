/*
 * shared-counter - multiprocessing.Value and its lock.
 *
 * --procs N processes (conc_process, fork method) each add 1 to a shared
 * Value('l', 0) --iters M times, every addition under the Value's own lock
 * (get_lock(), a process-shared RLock).  The parent joins them and prints
 *
 *   counter=TOTAL
 *   expected=N*M
 *
 * With the lock TOTAL is exactly N*M.  With --no-lock the read-add-write
 * steps of different processes interleave and additions are lost: TOTAL may
 * be less (a third line then says how many were lost).  A process that
 * fails or is killed is named on stderr with how it ended ("process 3
 * killed by SIGKILL (exit code -9)"), the third line then says that
 * additions are missing because not every process finished, and the exit
 * status is 1.  Interrupting the program (SIGINT, SIGTERM, SIGHUP) stops
 * its processes too (conc_process_cleanup_on_signals).
 *
 *   shared-counter --procs N --iters M [--no-lock]
 *
 * Python original: v = Value('i', 0); each Process runs
 * `with v.get_lock(): v.value += 1` in a loop; the parent prints v.value.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include "conc.h"
#include "conc/process.h"
#include "cli.h"

static const char *prog = "shared-counter";

#define MAX_PROCS 256
#define MAX_ITERS 100000000L

static conc_value *counter;
static long iters;
static bool use_lock = true;

/* The body of each process: the Value is inherited through fork. */
static int adder(const void *arg, size_t len)
{
    (void)arg;
    (void)len;
    volatile long *n = conc_value_ptr(counter);
    conc_rlock *lock = conc_value_get_lock(counter);
    for (long i = 0; i < iters; i++) {
        if (use_lock) {
            int rc = conc_rlock_acquire(lock, CONC_FOREVER);
            if (rc == -EOWNERDEAD) {
                conc_rlock_consistent(lock);    /* a process died mid-addition */
            } else if (rc < 0) {
                fprintf(stderr, "%s: lock: %s\n", prog, conc_strerror(rc));
                return 1;
            }
        }
        *n = *n + 1;                            /* v.value += 1 */
        if (use_lock)
            conc_rlock_release(lock);
    }
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: %s --procs N --iters M [--no-lock]\n"
               "  --procs N   processes, 1 to %d\n"
               "  --iters M   additions per process, 1 to %ld\n"
               "  --no-lock   add without the Value's lock (loses updates)\n",
            prog, MAX_PROCS, MAX_ITERS);
}

int main(int argc, char **argv)
{
    long nprocs = 0;
    bool no_lock = false;
    const struct opt opts[] = {
        { "procs", OPT_INT, &nprocs, 1, MAX_PROCS, NULL },
        { "iters", OPT_INT, &iters, 1, MAX_ITERS, NULL },
        { "no-lock", OPT_FLAG, &no_lock, 0, 0, NULL },
    };
    int rc = parse_options(argc, argv, opts, OPTS_COUNT(opts), usage);
    if (rc >= 0)
        return rc;
    use_lock = !no_lock;
    if (nprocs == 0)
        return fail("%s", "--procs N is required (try --help)");
    if (iters == 0)
        return fail("%s", "--iters M is required (try --help)");

    /* Ctrl-C or a SIGTERM to this process alone stops the adders too. */
    if ((rc = conc_process_cleanup_on_signals(1.0)) < 0)
        return die("cleanup on signals", rc);
    rc = conc_value_new(&counter, 'l', &(long){ 0 }, 0);   /* Value('l', 0) */
    if (rc < 0)
        return die("Value", rc);

    conc_process **procs = calloc((size_t)nprocs, sizeof *procs);
    if (!procs)
        return die("calloc", -ENOMEM);
    fflush(stdout);
    int failed = 0;
    long started = 0;
    for (long i = 0; i < nprocs; i++) {
        if (start_process(&procs[i], adder, NULL, 0, "process", i + 1) < 0) {
            failed = 1;
            break;
        }
        started++;
    }
    bool unfinished = failed;
    for (long i = 0; i < started; i++) {
        int code = join_process(procs[i], "process", i + 1);   /* says which signal */
        if (code > 1)
            fprintf(stderr, "%s: process %ld exited with %d\n", prog, i + 1, code);
        if (code != 0)
            unfinished = true;
    }
    if (unfinished)
        failed = 1;
    free(procs);

    long total = *(long *)conc_value_ptr(counter);
    long expected = started * iters;
    printf("counter=%ld\n", total);
    printf("expected=%ld\n", expected);
    if (total != expected && unfinished) {
        /* Not the lock's fault: a process stopped before its last addition
         * (it said why on stderr above). */
        printf("%ld additions missing: not every process finished\n", expected - total);
    } else if (total != expected) {
        printf("lost %ld updates%s\n", expected - total, use_lock ? "" : " without the lock");
        if (use_lock) {
            fprintf(stderr, "%s: %ld updates lost with the lock\n", prog, expected - total);
            failed = 1;                         /* cannot happen: the lock is exact */
        }
    }
    conc_value_free(counter);
    return failed;
}
