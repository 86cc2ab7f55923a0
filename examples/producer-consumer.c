/*
 * producer-consumer - the producer/consumer pattern over a queue:
 * multiprocessing.Queue and JoinableQueue between processes, queue.Queue
 * between threads.
 *
 * --producers P producers each put --items N items on one queue; --consumers
 * C consumers take items until they are told to stop.  Each item carries
 * its producer's number, its sequence number (0..N-1) and a check value
 * computed from both, so a consumer can tell every item apart and notice a
 * damaged one.  Processes (conc_process, fork method) share a conc_mpqueue;
 * with --threads, threads share a conc_queue (queue.Queue(1024)) of
 * malloc'd items.
 *
 * How the consumers stop:
 *   default     the main process joins the producers, then puts C sentinels
 *               (an empty message; NULL between threads): each consumer
 *               stops at the first one it takes (the tutorial's None).
 *   --joinable  the queue is a JoinableQueue: consumers call task_done
 *               after each item; the main process joins the producers,
 *               waits in join() until every item is done, then shuts the
 *               queue down (Python 3.13's Queue.shutdown), which ends the
 *               consumers' gets.
 *
 * Each consumer keeps one bit per (producer, sequence) it took and hands
 * that record to the main process (a Pipe per consumer process; a thread
 * leaves it in memory), which prints
 *
 *   consumer I: consumed X        (one line per consumer, I = 0..C-1)
 *   total=S                       (the sum of the X: P*N)
 *
 * and checks that every item was consumed exactly once.  If not (an item
 * lost, taken twice or damaged, a worker that failed), one line on stderr
 * says what went wrong and the exit status is 1.  A producer or consumer
 * process killed on the way hangs nobody: the main process notices, shuts
 * the queue down (immediate) and says which one died ("consumer 1 killed
 * by SIGKILL (exit code -9)").  Interrupting the main process alone
 * (SIGINT, SIGTERM, SIGHUP) stops the producers and consumers as well
 * (conc_process_cleanup_on_signals) and nothing is left behind.  Bad input (a missing
 * or invalid number, P or C outside 1..64, N outside 0..1000000, an unknown
 * option): one line on stderr, exit 2.
 *
 *   producer-consumer --producers P --consumers C --items N [--joinable] [--threads]
 *
 * Python originals:
 *   q = Queue(); Process(target=producer, args=(name, q)) puts items,
 *   Process(target=consumer, args=(name, q)) loops `res = q.get(); if res
 *   is None: break`; the main process joins the producer and puts None.
 *   With q = JoinableQueue() the consumer calls q.task_done() per item and
 *   q.join() waits until all are done.  queue.Queue with threading.Thread
 *   is the same between threads.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conc.h"
#include "cli.h"

static const char *prog = "producer-consumer";

#define MAX_WORKERS 64
#define MAX_ITEMS 1000000L
#define THREAD_QUEUE_MAXSIZE 1024

static long nproducers, nconsumers, nitems;
static bool joinable, use_threads;

/* ---------------------------------------------------------------- items */

/* What crosses the queue: 16 bytes. */
struct item {
    uint32_t producer;          /* 0..P-1 */
    uint32_t seq;               /* 0..N-1 */
    uint64_t check;             /* item_check(producer, seq) */
};

/* A value only this (producer, seq) has (splitmix64's finalizer). */
static uint64_t item_check(uint32_t producer, uint32_t seq)
{
    uint64_t z = ((uint64_t)producer << 32 | seq) + 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static struct item make_item(long producer, long seq)
{
    return (struct item){ (uint32_t)producer, (uint32_t)seq,
                          item_check((uint32_t)producer, (uint32_t)seq) };
}

/* ---------------------------------------------------------- the tallies */

/* What a consumer reports: its counts and one bit per (producer, seq)
 * taken, bit producer * N + seq.  Sent as it is through a Pipe. */
struct tally {
    uint64_t consumed;          /* items taken (sentinels not counted) */
    uint64_t repeats;           /* items this consumer took more than once */
    uint64_t first_repeat;      /* the bit of the first of them */
    uint64_t malformed;         /* messages that were not a valid item */
    uint64_t bits[];
};

static size_t tally_words(void)
{
    return ((size_t)nproducers * (size_t)nitems + 63) / 64;
}

static size_t tally_size(void)
{
    return sizeof(struct tally) + tally_words() * sizeof(uint64_t);
}

static struct tally *tally_new(void)
{
    return calloc(1, tally_size());
}

/* Counts one consumed message of len bytes. */
static void tally_add(struct tally *t, const void *data, size_t len)
{
    struct item it;
    t->consumed++;
    if (len != sizeof it) {
        t->malformed++;
        return;
    }
    memcpy(&it, data, sizeof it);
    if (it.producer >= nproducers || it.seq >= nitems ||
        it.check != item_check(it.producer, it.seq)) {
        t->malformed++;
        return;
    }
    size_t bit = (size_t)it.producer * (size_t)nitems + it.seq;
    uint64_t mask = (uint64_t)1 << (bit % 64);
    if ((t->bits[bit / 64] & mask) && t->repeats++ == 0)
        t->first_repeat = bit;
    t->bits[bit / 64] |= mask;
}

/* --------------------------------------------------- between processes */

static conc_mpqueue *mpq;
static conc_conn *report_r[MAX_WORKERS];    /* main's ends: it receives */
static conc_conn *report_w[MAX_WORKERS];    /* consumer i sends on report_w[i] */

/* In a child: keep only its own report end (keep = -1: none), so that the
 * main process sees a consumer's Pipe close when that consumer ends. */
static void keep_report_end(long keep)
{
    for (long i = 0; i < nconsumers; i++) {
        conc_conn_free(report_r[i]);
        report_r[i] = NULL;
        if (i != keep) {
            conc_conn_free(report_w[i]);
            report_w[i] = NULL;
        }
    }
}

static int producer_process(const void *arg, size_t len)
{
    long id;
    if (len != sizeof id)
        return 1;
    memcpy(&id, arg, sizeof id);
    keep_report_end(-1);
    int status = 0;
    for (long seq = 0; seq < nitems; seq++) {
        struct item it = make_item(id, seq);
        int rc = conc_mpqueue_put(mpq, &it, sizeof it, CONC_FOREVER);     /* q.put(item) */
        if (rc < 0) {
            if (rc != -EPIPE)               /* -EPIPE: main shut it down and says why */
                fprintf(stderr, "%s: producer %ld: put: %s\n", prog, id, conc_strerror(rc));
            status = 1;
            break;
        }
    }
    conc_mpqueue_free(mpq);                 /* q.close() */
    return status;
}

static int consumer_process(const void *arg, size_t len)
{
    long id;
    if (len != sizeof id)
        return 1;
    memcpy(&id, arg, sizeof id);
    keep_report_end(id);
    struct tally *t = tally_new();
    if (!t) {
        fprintf(stderr, "%s: consumer %ld: %s\n", prog, id, conc_strerror(-ENOMEM));
        return 1;
    }
    int status = 0;
    for (;;) {
        unsigned char buf[64];
        ssize_t n = conc_mpqueue_get(mpq, buf, sizeof buf, CONC_FOREVER);  /* q.get() */
        if (n == -EPIPE)
            break;                          /* shut down and empty: done */
        if (n == -EMSGSIZE) {               /* too long to be an item */
            void *big;
            size_t big_len;
            n = conc_mpqueue_get_alloc(mpq, &big, &big_len, CONC_FOREVER);
            if (n == 0) {
                tally_add(t, big, big_len);
                free(big);
            }
        } else if (n == 0) {
            break;                          /* the sentinel: `if res is None: break` */
        } else if (n > 0) {
            tally_add(t, buf, (size_t)n);
        }
        if (n < 0) {
            fprintf(stderr, "%s: consumer %ld: get: %s\n", prog, id, conc_strerror((int)n));
            status = 1;
            break;
        }
        if (joinable && (n = conc_mpqueue_task_done(mpq)) < 0) {
            fprintf(stderr, "%s: consumer %ld: task_done: %s\n", prog, id,
                    conc_strerror((int)n));
            status = 1;
            break;
        }
    }
    if (status == 0) {
        int rc = conc_conn_send_bytes(report_w[id], t, tally_size(), CONC_FOREVER);
        if (rc < 0) {
            fprintf(stderr, "%s: consumer %ld: report: %s\n", prog, id, conc_strerror(rc));
            status = 1;
        }
    }
    free(t);
    conc_conn_free(report_w[id]);
    report_w[id] = NULL;
    conc_mpqueue_free(mpq);
    return status;
}

/* Starts a fork child running fn(id); returns 0 or the error. */
static int start_child(conc_process **out, conc_process_fn fn, long id)
{
    conc_process_opts po = { .method = CONC_START_FORK };
    int rc = conc_process_new(out, fn, &id, sizeof id, &po);
    if (rc == 0 && (rc = conc_process_start(*out)) < 0) {
        conc_process_free(*out);
        *out = NULL;
    }
    return rc;
}

/* Joins a child; false (after a line on stderr) when it failed. */
static bool join_child(conc_process *p, const char *what, long id)
{
    int code = 0;
    int rc = conc_process_join(p, CONC_FOREVER);
    if (rc == 0)
        rc = conc_process_exitcode(p, &code);
    if (rc < 0) {
        fprintf(stderr, "%s: %s %ld: %s\n", prog, what, id, conc_strerror(rc));
        return false;
    }
    if (code == 1)
        return false;                       /* it said why on stderr */
    if (code < 0) {
        say_killed(what, id, code);
        return false;
    }
    if (code != 0) {
        fprintf(stderr, "%s: %s %ld failed (exit code %d)\n", prog, what, id, code);
        return false;
    }
    return true;
}

/* True when a consumer has ended before it was told to stop: its share of
 * the items would never be taken (or never task_done), and the producers or
 * join() would wait for ever. */
static bool consumer_ended(conc_process *const *consumers)
{
    for (long i = 0; i < nconsumers; i++)
        if (consumers[i] && !conc_process_is_alive(consumers[i]))
            return true;
    return false;
}

/* Runs the processes; fills tallies[i] (NULL when consumer i reported
 * nothing).  Returns 0, or 1 when something failed (already reported). */
static int run_processes(struct tally **tallies)
{
    /* Interrupted (SIGINT, SIGTERM, SIGHUP to this process alone), the
     * program stops its producers and consumers before it ends: a consumer
     * would otherwise wait for ever for items nobody will put. */
    int rc = conc_process_cleanup_on_signals(1.0);
    if (rc < 0)
        return die("cleanup on signals", rc);
    conc_mpqueue_opts qo = { .kind = joinable ? CONC_MPQUEUE_JOINABLE : CONC_MPQUEUE_QUEUE };
    rc = conc_mpqueue_new(&mpq, &qo);
    if (rc < 0)
        return die("Queue", rc);
    for (long i = 0; i < nconsumers; i++)
        if ((rc = conc_conn_pipe(&report_r[i], &report_w[i], false)) < 0)
            return die("Pipe", rc);

    conc_process *consumers[MAX_WORKERS] = { NULL }, *producers[MAX_WORKERS] = { NULL };
    int status = 0;
    fflush(stdout);
    for (long i = 0; i < nconsumers && status == 0; i++)
        if ((rc = start_child(&consumers[i], consumer_process, i)) < 0)
            status = die("start a consumer", rc);
    for (long i = 0; i < nproducers && status == 0; i++)
        if ((rc = start_child(&producers[i], producer_process, i)) < 0)
            status = die("start a producer", rc);
    for (long i = 0; i < nconsumers; i++) {
        conc_conn_free(report_w[i]);        /* the consumers' ends are theirs */
        report_w[i] = NULL;
    }

    /* Wait for the producers, then (--joinable) until every item is
     * task_done, looking every 0.1 s whether a consumer died meanwhile. */
    bool broken = false;
    for (long i = 0; i < nproducers && status == 0 && !broken; i++)
        while (producers[i] && conc_process_join(producers[i], 0.1) == -ETIMEDOUT)
            if ((broken = consumer_ended(consumers)))
                break;
    if (joinable && status == 0 && !broken) {
        while ((rc = conc_mpqueue_join(mpq, 0.1)) == -ETIMEDOUT)  /* q.join() */
            if ((broken = consumer_ended(consumers)))
                break;
        if (rc < 0 && !broken)
            status = die("join", rc);
    }
    if (broken) {
        status = 1;                         /* joining that consumer says why */
        conc_mpqueue_shutdown(mpq, true);   /* releases the producers */
    }
    for (long i = 0; i < nproducers; i++)
        if (producers[i] && !join_child(producers[i], "producer", i))
            status = 1;
    if (joinable || status != 0) {
        /* Ends every consumer's get (at once when something failed). */
        conc_mpqueue_shutdown(mpq, status != 0);
    } else {
        for (long i = 0; i < nconsumers; i++)
            if ((rc = conc_mpqueue_put(mpq, NULL, 0, CONC_FOREVER)) < 0) {  /* q.put(None) */
                status = die("put a sentinel", rc);
                conc_mpqueue_shutdown(mpq, true);
                break;
            }
    }

    for (long i = 0; i < nconsumers; i++) {
        if (!consumers[i])
            continue;
        void *msg;
        size_t len;
        rc = conc_conn_recv_alloc(report_r[i], &msg, &len, CONC_FOREVER);
        if (rc == 0 && len == tally_size()) {
            tallies[i] = msg;
        } else if (rc == 0) {
            fprintf(stderr, "%s: consumer %ld sent a report of %zu bytes\n", prog, i, len);
            free(msg);
            status = 1;
        } else if (rc != -EPIPE) {
            status = die("receive a report", rc);
        }
        /* -EPIPE: it ended without a report; join_child says why. */
    }
    for (long i = 0; i < nconsumers; i++)
        if (consumers[i] && !join_child(consumers[i], "consumer", i))
            status = 1;
        else if (consumers[i] && !tallies[i]) {
            fprintf(stderr, "%s: consumer %ld ended without a report\n", prog, i);
            status = 1;
        }

    for (long i = 0; i < MAX_WORKERS; i++) {
        conc_process_free(producers[i]);
        conc_process_free(consumers[i]);
        conc_conn_free(report_r[i]);
        report_r[i] = NULL;
    }
    conc_mpqueue_free(mpq);
    return status;
}

/* ------------------------------------------------------ between threads */

static conc_queue *tq;

struct worker {
    long id;
    int err;                    /* the first failed call's error, or 0 */
    const char *what;           /* and which call */
    struct tally *tally;        /* consumers only */
};

static void *producer_thread(void *arg)
{
    struct worker *w = arg;
    for (long seq = 0; seq < nitems; seq++) {
        struct item *it = malloc(sizeof *it);
        if (!it) {
            w->err = -ENOMEM;
            w->what = "malloc";
            break;
        }
        *it = make_item(w->id, seq);
        int rc = conc_queue_put(tq, it, CONC_FOREVER);    /* q.put(item) */
        if (rc < 0) {
            free(it);
            w->err = rc;
            w->what = "put";
            break;
        }
    }
    return NULL;
}

static void *consumer_thread(void *arg)
{
    struct worker *w = arg;
    for (;;) {
        void *p;
        int rc = conc_queue_get(tq, &p, CONC_FOREVER);     /* q.get() */
        if (rc == -EPIPE)
            break;                          /* shut down and empty: done */
        if (rc < 0) {
            w->err = rc;
            w->what = "get";
            break;
        }
        if (!p)
            break;                          /* the sentinel (None) */
        tally_add(w->tally, p, sizeof(struct item));
        free(p);
        if (joinable && (rc = conc_queue_task_done(tq)) < 0) {
            w->err = rc;
            w->what = "task_done";
            break;
        }
    }
    return NULL;
}

/* Starts a thread; 0 or the error. */
static int start_thread(conc_thread **out, conc_thread_fn fn, struct worker *w)
{
    int rc = conc_thread_new(out, fn, w, NULL);
    if (rc == 0 && (rc = conc_thread_start(*out)) < 0) {
        conc_thread_free(*out);
        *out = NULL;
    }
    return rc;
}

/* Joins a thread; false (after a line on stderr) when it failed. */
static bool join_thread(conc_thread *t, const struct worker *w, const char *what)
{
    int rc = conc_thread_join(t, CONC_FOREVER);
    if (rc < 0) {
        fprintf(stderr, "%s: %s %ld: join: %s\n", prog, what, w->id, conc_strerror(rc));
        return false;
    }
    if (w->err) {
        fprintf(stderr, "%s: %s %ld: %s: %s\n", prog, what, w->id, w->what,
                conc_strerror(w->err));
        return false;
    }
    return true;
}

static void free_item(void *item, void *arg)
{
    (void)arg;
    free(item);
}

/* As run_processes, with threads and a queue.Queue. */
static int run_threads(struct tally **tallies)
{
    conc_queue_opts qo = { .maxsize = THREAD_QUEUE_MAXSIZE, .drop = free_item };
    int rc = conc_queue_new(&tq, &qo);
    if (rc < 0)
        return die("Queue", rc);
    struct worker consumers[MAX_WORKERS] = { { 0 } }, producers[MAX_WORKERS] = { { 0 } };
    conc_thread *ct[MAX_WORKERS] = { NULL }, *pt[MAX_WORKERS] = { NULL };
    int status = 0;
    for (long i = 0; i < nconsumers && status == 0; i++) {
        consumers[i].id = i;
        if (!(consumers[i].tally = tally_new()))
            status = die("calloc", -ENOMEM);
        else if ((rc = start_thread(&ct[i], consumer_thread, &consumers[i])) < 0)
            status = die("start a consumer", rc);
    }
    for (long i = 0; i < nproducers && status == 0; i++) {
        producers[i].id = i;
        if ((rc = start_thread(&pt[i], producer_thread, &producers[i])) < 0)
            status = die("start a producer", rc);
    }

    for (long i = 0; i < nproducers; i++)
        if (pt[i] && !join_thread(pt[i], &producers[i], "producer"))
            status = 1;
    if (joinable && status == 0 && (rc = conc_queue_join(tq, CONC_FOREVER)) < 0)
        status = die("join", rc);           /* every item task_done */
    if (joinable || status != 0) {
        conc_queue_shutdown(tq, status != 0);
    } else {
        for (long i = 0; i < nconsumers; i++)
            if ((rc = conc_queue_put(tq, NULL, CONC_FOREVER)) < 0) {       /* q.put(None) */
                status = die("put a sentinel", rc);
                conc_queue_shutdown(tq, true);
                break;
            }
    }
    for (long i = 0; i < nconsumers; i++) {
        if (ct[i] && join_thread(ct[i], &consumers[i], "consumer")) {
            tallies[i] = consumers[i].tally;
            consumers[i].tally = NULL;
        } else if (ct[i]) {
            status = 1;
        }
    }

    for (long i = 0; i < MAX_WORKERS; i++) {
        conc_thread_free(pt[i]);
        conc_thread_free(ct[i]);
        free(consumers[i].tally);
    }
    conc_queue_free(tq);                    /* frees sentinels left over */
    return status;
}

/* -------------------------------------------------------- the checking */

/* " (what: producer P item S)" for the item of bit number bit. */
static void describe(char *buf, size_t cap, const char *what, size_t bit)
{
    snprintf(buf, cap, " (%s: producer %zu item %zu)", what, bit / (size_t)nitems,
             bit % (size_t)nitems);
}

/* Prints the counts of the consumers (all reported) and checks that every
 * item was consumed exactly once.  Returns 0, or 1 after one line on
 * stderr. */
static int report(struct tally **tallies)
{
    size_t words = tally_words();
    uint64_t *seen = calloc(words ? words : 1, sizeof *seen);
    if (!seen)
        return die("calloc", -ENOMEM);
    uint64_t total = 0, repeats = 0, malformed = 0;
    size_t first_repeat = SIZE_MAX;
    for (long i = 0; i < nconsumers; i++) {
        const struct tally *t = tallies[i];
        if (!t)
            continue;
        printf("consumer %ld: consumed %llu\n", i, (unsigned long long)t->consumed);
        total += t->consumed;
        if (t->repeats && first_repeat == SIZE_MAX)
            first_repeat = (size_t)t->first_repeat;
        repeats += t->repeats;
        malformed += t->malformed;
        for (size_t w = 0; w < words; w++) {
            uint64_t twice = seen[w] & t->bits[w];
            if (twice) {
                repeats += (uint64_t)__builtin_popcountll(twice);
                if (first_repeat == SIZE_MAX)
                    first_repeat = w * 64 + (size_t)__builtin_ctzll(twice);
            }
            seen[w] |= t->bits[w];
        }
    }
    printf("total=%llu\n", (unsigned long long)total);
    fflush(stdout);

    size_t items = (size_t)nproducers * (size_t)nitems;
    uint64_t missing = 0;
    size_t first_missing = SIZE_MAX;
    for (size_t bit = 0; bit < items; bit++)
        if (!(seen[bit / 64] >> (bit % 64) & 1)) {
            if (first_missing == SIZE_MAX)
                first_missing = bit;
            missing++;
        }
    free(seen);

    if (missing == 0 && repeats == 0 && malformed == 0 && total == items)
        return 0;
    char example[96] = "";
    if (missing)
        describe(example, sizeof example, "first missing", first_missing);
    else if (first_repeat != SIZE_MAX)
        describe(example, sizeof example, "taken again", first_repeat);
    fprintf(stderr, "%s: not every item consumed exactly once: %llu of %zu never consumed, "
                    "%llu taken again, %llu malformed%s\n",
            prog, (unsigned long long)missing, items, (unsigned long long)repeats,
            (unsigned long long)malformed, example);
    return 1;
}

/* ------------------------------------------------------------------ main */

static void usage(FILE *f)
{
    fprintf(f, "usage: %s --producers P --consumers C --items N [--joinable] [--threads]\n"
               "  --producers P  producers, 1 to %d, each putting N items\n"
               "  --consumers C  consumers, 1 to %d\n"
               "  --items N      items per producer, 0 to %ld\n"
               "  --joinable     a JoinableQueue: task_done per item, join() in main,\n"
               "                 then shutdown (default: one sentinel per consumer)\n"
               "  --threads      threads and queue.Queue instead of processes and\n"
               "                 multiprocessing.Queue\n",
            prog, MAX_WORKERS, MAX_WORKERS, MAX_ITEMS);
}

int main(int argc, char **argv)
{
    bool have_items = false;
    const struct opt opts[] = {
        { "producers", OPT_INT, &nproducers, 1, MAX_WORKERS, NULL },
        { "consumers", OPT_INT, &nconsumers, 1, MAX_WORKERS, NULL },
        { "items", OPT_INT, &nitems, 0, MAX_ITEMS, &have_items },
        { "joinable", OPT_FLAG, &joinable, 0, 0, NULL },
        { "threads", OPT_FLAG, &use_threads, 0, 0, NULL },
    };
    int rc = parse_options(argc, argv, opts, OPTS_COUNT(opts), usage);
    if (rc >= 0)
        return rc;
    if (nproducers == 0)
        return fail("%s", "--producers P is required (try --help)");
    if (nconsumers == 0)
        return fail("%s", "--consumers C is required (try --help)");
    if (!have_items)
        return fail("%s", "--items N is required (try --help)");

    struct tally *tallies[MAX_WORKERS] = { NULL };
    int status = use_threads ? run_threads(tallies) : run_processes(tallies);
    if (status == 0)
        status = report(tallies);
    for (long i = 0; i < MAX_WORKERS; i++)
        free(tallies[i]);
    return status;
}
