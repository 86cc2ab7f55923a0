/*
 * condition-notify - threading.Condition: notify(n) lets exactly n waiting
 * threads go.
 *
 * --threads N threads wait on a Condition.  For each batch size K of
 * --batches, main prints "notify K", calls notify(K) and waits (on a second
 * Condition over the same lock) until K threads have reported
 * "thread I runs" before it starts the next batch.  No thread runs twice.
 * Threads that no batch woke are sent home at the end without running.
 *
 *   condition-notify [--threads N] [--batches 1,2,3]
 *
 * Python original: threads call con.acquire(); con.wait(); print(i);
 * con.release(), and the main thread reads a number n and calls
 * con.notify(n).
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conc.h"
#include "cli.h"

static const char *prog = "condition-notify";

#define MAX_THREADS 1000
#define MAX_BATCHES 1000

struct stage {
    conc_lock lock;
    conc_cond go;           /* the workers wait here for notify(K) */
    conc_cond reported;     /* main waits here for the workers' reports */
    long waiting;           /* workers inside go's wait */
    long tickets;           /* wake-ups granted and not yet taken */
    long ran;               /* workers that ran */
    bool closing;           /* the batches are over */
};

struct worker {
    struct stage *st;
    long index;             /* 0-based */
};

static void *worker_fn(void *arg)
{
    struct worker *w = arg;
    struct stage *st = w->st;
    conc_lock_acquire(&st->lock, CONC_FOREVER);
    st->waiting++;
    conc_cond_notify_all(&st->reported); /* main waits until all wait */
    while (st->tickets == 0 && !st->closing)
        conc_cond_wait(&st->go, &st->lock, CONC_FOREVER);
    st->waiting--;
    if (st->tickets > 0) {
        st->tickets--;
        printf("thread %ld runs\n", w->index);
        st->ran++;
        conc_cond_notify_all(&st->reported);
    }
    conc_lock_release(&st->lock);
    return NULL;
}

struct target {
    struct stage *st;
    long count;
};

static int reached_waiting(void *arg)
{
    struct target *t = arg;
    return t->st->waiting >= t->count;
}

static int reached_ran(void *arg)
{
    struct target *t = arg;
    return t->st->ran >= t->count;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: %s [--threads N] [--batches K1,K2,...]\n"
               "  --threads N    waiting threads, 1 to %d (default 6)\n"
               "  --batches LIST how many to notify each time (default 1,2,3;\n"
               "                 at most %d numbers, each >= 1, the sum at most N)\n",
            prog, MAX_THREADS, MAX_BATCHES);
}

/* Parses "1,2,3" into batches[]; returns the count, -1 for a bad list, or
 * -2 for more than MAX_BATCHES numbers. */
static int parse_batches(const char *s, long *batches)
{
    int n = 0;
    const char *p = s;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char item[32];
        if (n == MAX_BATCHES)
            return -2;
        if (len == 0 || len >= sizeof item)
            return -1;
        memcpy(item, p, len);
        item[len] = '\0';
        if (!parse_long(item, 1, MAX_THREADS, &batches[n]))
            return -1;
        n++;
        if (!comma)
            return n;
        p = comma + 1;
    }
}

int main(int argc, char **argv)
{
    static long batches[MAX_BATCHES] = { 1, 2, 3 };
    int nbatches = 3;
    long nthreads = 6;
    const char *batch_list = NULL;
    const struct opt opts[] = {
        { "threads", OPT_INT, &nthreads, 1, MAX_THREADS, NULL },
        { "batches", OPT_TEXT, &batch_list, 0, 0, NULL },
    };
    int rc = parse_options(argc, argv, opts, OPTS_COUNT(opts), usage);
    if (rc >= 0)
        return rc;
    if (batch_list && (nbatches = parse_batches(batch_list, batches)) == -2) {
        fprintf(stderr, "%s: --batches takes at most %d numbers\n", prog, MAX_BATCHES);
        return 2;
    }
    if (batch_list && nbatches < 0)
        return fail("--batches wants a comma-separated list of whole numbers from 1 to 1000, "
                    "not '%.200s'", batch_list);
    long sum = 0;
    for (int i = 0; i < nbatches; i++)
        sum += batches[i];
    if (sum > nthreads) {
        fprintf(stderr, "%s: the batches notify %ld threads but only %ld wait\n",
                prog, sum, nthreads);
        return 2;
    }

    struct stage st = {
        .lock = CONC_LOCK_INIT, .go = CONC_COND_INIT, .reported = CONC_COND_INIT,
    };
    struct worker *workers = calloc((size_t)nthreads, sizeof *workers);
    conc_thread **threads = calloc((size_t)nthreads, sizeof *threads);
    if (!workers || !threads)
        return die("calloc", -ENOMEM);
    for (long i = 0; i < nthreads; i++) {
        workers[i].st = &st;
        workers[i].index = i;
        /* Daemons, so that exit never waits for a worker left behind on an
         * error path. */
        conc_thread_opts o = { .daemon = CONC_DAEMON };
        if ((rc = conc_thread_new(&threads[i], worker_fn, &workers[i], &o)) < 0 ||
            (rc = conc_thread_start(threads[i])) < 0)
            return die("worker thread", rc);
    }

    conc_lock_acquire(&st.lock, CONC_FOREVER);
    /* Wait until every worker sits in the Condition, so that each notify
     * finds them all there. */
    struct target t = { &st, nthreads };
    conc_cond_wait_for(&st.reported, &st.lock, reached_waiting, &t, CONC_FOREVER);
    for (int b = 0; b < nbatches; b++) {
        printf("notify %ld\n", batches[b]);
        st.tickets += batches[b];
        conc_cond_notify(&st.go, (unsigned)batches[b]);
        t.count = st.ran + batches[b];
        conc_cond_wait_for(&st.reported, &st.lock, reached_ran, &t, CONC_FOREVER);
    }
    st.closing = true;
    long left = st.waiting;
    conc_cond_notify_all(&st.go);
    conc_lock_release(&st.lock);

    for (long i = 0; i < nthreads; i++) {
        conc_thread_join(threads[i], CONC_FOREVER);
        conc_thread_free(threads[i]);
    }
    printf("done: %ld threads ran, %ld never notified\n", st.ran, left);
    free(threads);
    free(workers);
    return 0;
}
