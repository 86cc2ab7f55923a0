/*
 * custom-thread-pool - the tutorial's hand-made thread pool, rebuilt on
 * conc's primitives, beside the same job on conc's ThreadPool.
 *
 * The hand-made pool is the tutorial's class ThreadPool(max_num,
 * max_task_num): a task queue (conc_queue, bounded by --queue when given),
 * worker threads (conc_thread) created on demand while no worker is free, up
 * to --workers of them, a StopEvent sentinel that ends a worker when it
 * takes it from the queue, and a state RUN / CLOSE / TERMINATE:
 *   run(func, arg, callback)  queues a task; the worker that takes it runs
 *                             func(arg) and then callback(ok, result)
 *   close()                   no more tasks; one StopEvent per worker goes
 *                             behind the queued tasks, so every task runs
 *   terminate()               the tasks still queued are dropped, each
 *                             worker stops after the task it is running
 *   join()                    waits for the workers (the tutorial's join
 *                             polled qsize; here the threads are joined)
 *
 * The same job on conc's ThreadPool (multiprocessing.pool.ThreadPool) is
 * conc_threadpool_apply_async per task with a callback and an
 * error_callback (they run on the worker, as the hand-made pool's do), then
 * close() or terminate() and join().
 *
 * The job: task i (i = 0..N-1) computes i*i and fails (the tutorial's
 * exception: callback(false, ...)) when i % 10 == 9; the callbacks count the
 * tasks done and failed and add up the squares.  Each pool prints one line,
 *
 *   hand-made pool: done=D failed=F sum=S
 *   ThreadPool:     done=D failed=F sum=S
 *
 * and with close() both lines carry the same figures: D = N, F = N/10
 * (rounded down), S the sum of i*i over the i that did not fail.  With
 * --terminate each task first waits at a gate that opens only once
 * terminate() has returned, so only the tasks the workers had already taken
 * run (at most W); a last line per pool says how many were dropped:
 *
 *   hand-made pool: terminated, dropped=X (done+dropped=N)
 *
 * (With --queue the gate opens as soon as the queue is full: the tutorial
 * warns that a bounded queue can block run() for good, and here the
 * workers at the gate would never make room.)
 *
 *   custom-thread-pool [--workers W] [--tasks N] [--queue Q] [--terminate]
 *
 * Bad input (W outside 1..64, N outside 0..1000000, Q outside 0..1000000,
 * an unknown option): one line on stderr, exit 2.
 *
 * Python original: pool = ThreadPool(5, 5); for i in range(200):
 * pool.run(action, (i,), callback); pool.close() (or pool.terminate()).
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "conc.h"
#include "conc/pool.h"
#include "cli.h"

static const char *prog = "custom-thread-pool";

#define MAX_WORKERS 64
#define MAX_TASKS 1000000L

static long nworkers = 5, ntasks = 200, queue_max;
static bool terminate_mode;

/* ------------------------------------------------------------- the job */

/* The gate every task waits at with --terminate. */
static conc_event gate = CONC_EVENT_INIT;

/* What the callbacks add up (they run in the workers). */
struct tally {
    atomic_long done, failed;
    atomic_ullong sum;
};

/* The tutorial's action(i): i*i, failing for i % 10 == 9.  Returns false
 * for a failure. */
static bool action(long i, unsigned long long *result)
{
    if (terminate_mode)
        conc_event_wait(&gate, CONC_FOREVER);
    if (i % 10 == 9)
        return false;
    *result = (unsigned long long)i * (unsigned long long)i;
    return true;
}

static void callback(struct tally *t, bool ok, unsigned long long result)
{
    atomic_fetch_add(&t->done, 1);
    if (ok)
        atomic_fetch_add(&t->sum, result);
    else
        atomic_fetch_add(&t->failed, 1);
}

static void print_tally(const char *who, struct tally *t)
{
    printf("%-15s done=%ld failed=%ld sum=%llu\n", who, atomic_load(&t->done),
           atomic_load(&t->failed), atomic_load(&t->sum));
}

/* ------------------------------------------------ the hand-made pool */

enum { RUN, CLOSE, TERMINATE };

/* The sentinel a worker stops at (the tutorial's StopEvent = object()). */
static char stop_event_tag;
#define STOP_EVENT ((void *)&stop_event_tag)

struct task {
    long i;
    struct tally *tally;
};

struct hpool {
    conc_queue *q;
    long max_num;
    atomic_int state;
    conc_lock lock;                     /* guards the fields below */
    conc_thread *threads[MAX_WORKERS];  /* generate_list */
    long generated;
    long free_workers;                  /* free_list: workers waiting for a task */
};

static void *hpool_call(void *arg)
{
    struct hpool *p = arg;
    for (;;) {
        conc_lock_acquire(&p->lock, CONC_FOREVER);
        p->free_workers++;
        conc_lock_release(&p->lock);
        void *event;
        int rc = conc_queue_get(p->q, &event, CONC_FOREVER);
        conc_lock_acquire(&p->lock, CONC_FOREVER);
        p->free_workers--;
        conc_lock_release(&p->lock);
        if (rc < 0 || event == STOP_EVENT)
            break;
        struct task *t = event;
        unsigned long long result = 0;
        bool ok = action(t->i, &result);
        callback(t->tally, ok, result);
        free(t);
        if (atomic_load(&p->state) == TERMINATE)
            break;
    }
    return NULL;
}

static int hpool_init(struct hpool *p, long max_num, long max_task_num)
{
    *p = (struct hpool){ .max_num = max_num, .state = RUN };
    conc_lock_init(&p->lock, 0);
    conc_queue_opts qo = CONC_QUEUE_OPTS_INIT;
    qo.maxsize = (size_t)max_task_num;      /* 0: unbounded */
    return conc_queue_new(&p->q, &qo);
}

/* Starts one more worker (generate_thread). */
static int hpool_generate(struct hpool *p)
{
    conc_thread *t;
    int rc = conc_thread_new(&t, hpool_call, p, NULL);
    if (rc < 0)
        return rc;
    if ((rc = conc_thread_start(t)) < 0) {
        conc_thread_free(t);
        return rc;
    }
    p->threads[p->generated++] = t;
    return 0;
}

/* pool.run(func, args, callback): -EPIPE once closed or terminated. */
static int hpool_run(struct hpool *p, long i, struct tally *tally)
{
    if (atomic_load(&p->state) != RUN)
        return -EPIPE;
    conc_lock_acquire(&p->lock, CONC_FOREVER);
    int rc = 0;
    if (p->free_workers == 0 && p->generated < p->max_num)
        rc = hpool_generate(p);
    conc_lock_release(&p->lock);
    if (rc < 0)
        return rc;
    struct task *t = malloc(sizeof *t);
    if (!t)
        return -ENOMEM;
    *t = (struct task){ i, tally };
    rc = conc_queue_put_nowait(p->q, t);
    if (rc == -EAGAIN) {
        /* The queue is full (--queue): with --terminate the workers wait
         * at the gate and would never make room, so it opens now. */
        conc_event_set(&gate);
        rc = conc_queue_put(p->q, t, CONC_FOREVER);
    }
    if (rc < 0)
        free(t);
    return rc;
}

/* Puts one StopEvent per worker behind whatever is queued. */
static void hpool_stop_workers(struct hpool *p)
{
    conc_lock_acquire(&p->lock, CONC_FOREVER);
    long n = p->generated;
    conc_lock_release(&p->lock);
    for (long k = 0; k < n; k++)
        conc_queue_put(p->q, STOP_EVENT, CONC_FOREVER);
}

static void hpool_close(struct hpool *p)
{
    int run = RUN;
    if (atomic_compare_exchange_strong(&p->state, &run, CLOSE))
        hpool_stop_workers(p);
}

/* Drops the queued tasks and stops the workers; returns how many tasks
 * were dropped. */
static long hpool_terminate(struct hpool *p)
{
    int before = atomic_exchange(&p->state, TERMINATE);
    long dropped = 0;
    void *event;
    while (conc_queue_get_nowait(p->q, &event) == 0) {
        if (event != STOP_EVENT) {
            free(event);
            dropped++;
        }
    }
    if (before != TERMINATE)
        hpool_stop_workers(p);
    return dropped;
}

static void hpool_join(struct hpool *p)
{
    for (long k = 0; k < p->generated; k++) {
        conc_thread_join(p->threads[k], CONC_FOREVER);
        conc_thread_free(p->threads[k]);
    }
    p->generated = 0;
    void *event;                    /* StopEvents nobody took */
    while (conc_queue_get_nowait(p->q, &event) == 0)
        if (event != STOP_EVENT)
            free(event);
    conc_queue_free(p->q);
}

static int run_handmade(void)
{
    struct tally tally = { 0 };
    struct hpool pool;
    int rc = hpool_init(&pool, nworkers, queue_max);
    if (rc < 0)
        return die("queue", rc);
    conc_event_clear(&gate);
    for (long i = 0; i < ntasks; i++)
        if ((rc = hpool_run(&pool, i, &tally)) < 0) {
            hpool_terminate(&pool);
            conc_event_set(&gate);
            hpool_join(&pool);
            return die("hand-made pool: run", rc);
        }
    long dropped = 0;
    if (terminate_mode) {
        dropped = hpool_terminate(&pool);
        conc_event_set(&gate);
    } else {
        hpool_close(&pool);
    }
    hpool_join(&pool);
    print_tally("hand-made pool:", &tally);
    if (terminate_mode)
        printf("%-15s terminated, dropped=%ld (done+dropped=%ld)\n", "hand-made pool:", dropped,
               atomic_load(&tally.done) + dropped);
    return 0;
}

/* ------------------------------------------------------ on ThreadPool */

/* The task: the argument is i; a failure is the task's own code. */
static int threadpool_action(void *arg, void **result)
{
    unsigned long long x = 0;
    if (!action((long)(intptr_t)arg, &x))
        return -EDOM;
    *result = (void *)(uintptr_t)x;
    return 0;
}

/* callback and error_callback run on the worker that finished the task.
 * A task that terminate() dropped fails with -EPIPE: it never ran, so it
 * is not counted as done (the hand-made pool never calls back for those). */
static void threadpool_done(conc_pool_result *r, void *ctx)
{
    void *v = NULL;
    int status = conc_pool_result_get(r, &v, NULL, 0);
    if (status == -EPIPE)
        return;
    callback(ctx, status == 0, (unsigned long long)(uintptr_t)v);
}

static int run_threadpool(void)
{
    struct tally tally = { 0 };
    conc_threadpool_opts o = CONC_THREADPOOL_OPTS_INIT;
    o.threads = (int)nworkers;
    conc_threadpool *pool;
    int rc = conc_threadpool_new(&pool, &o);
    if (rc < 0)
        return die("ThreadPool", rc);
    conc_pool_result **results = calloc((size_t)ntasks + 1, sizeof *results);
    if (!results) {
        conc_threadpool_free(pool);
        return die("ThreadPool", -ENOMEM);
    }
    conc_event_clear(&gate);
    conc_pool_task_opts to = CONC_POOL_TASK_OPTS_INIT;
    to.callback = threadpool_done;
    to.error_callback = threadpool_done;
    to.ctx = &tally;
    long submitted = 0;
    for (; submitted < ntasks; submitted++)
        if ((rc = conc_threadpool_apply_async(pool, threadpool_action,
                                              (void *)(intptr_t)submitted, &to,
                                              &results[submitted])) < 0)
            break;
    if (terminate_mode || rc < 0)
        conc_threadpool_terminate(pool);
    else
        conc_threadpool_close(pool);
    conc_event_set(&gate);
    int jrc = conc_threadpool_join(pool, CONC_FOREVER);
    /* terminate: the tasks that never ran failed with -EPIPE, without a
     * callback (Python never calls back for them either). */
    long dropped = 0;
    for (long i = 0; i < submitted; i++) {
        if (conc_pool_result_get(results[i], NULL, NULL, CONC_FOREVER) == -EPIPE)
            dropped++;
        conc_pool_result_free(results[i]);
    }
    free(results);
    conc_threadpool_free(pool);
    if (rc < 0)
        return die("ThreadPool: apply_async", rc);
    if (jrc < 0)
        return die("ThreadPool: join", jrc);
    print_tally("ThreadPool:", &tally);
    if (terminate_mode)
        printf("%-15s terminated, dropped=%ld (done+dropped=%ld)\n", "ThreadPool:", dropped,
               atomic_load(&tally.done) + dropped);
    return 0;
}

/* ------------------------------------------------------------------ main */

static void usage(FILE *f)
{
    fprintf(f, "usage: %s [--workers W] [--tasks N] [--queue Q] [--terminate]\n"
               "  --workers W   worker threads of each pool, 1 to %d (default 5)\n"
               "  --tasks N     tasks i = 0..N-1, each computing i*i (every tenth fails),\n"
               "                0 to %ld (default 200)\n"
               "  --queue Q     the hand-made pool's task queue holds at most Q tasks,\n"
               "                0 (unbounded, the default) to %ld\n"
               "  --terminate   terminate the pools instead of closing them: the tasks\n"
               "                still queued are dropped\n",
            prog, MAX_WORKERS, MAX_TASKS, MAX_TASKS);
}

int main(int argc, char **argv)
{
    const struct opt opts[] = {
        { "workers", OPT_INT, &nworkers, 1, MAX_WORKERS, NULL },
        { "tasks", OPT_INT, &ntasks, 0, MAX_TASKS, NULL },
        { "queue", OPT_INT, &queue_max, 0, MAX_TASKS, NULL },
        { "terminate", OPT_FLAG, &terminate_mode, 0, 0, NULL },
    };
    int rc = parse_options(argc, argv, opts, OPTS_COUNT(opts), usage);
    if (rc >= 0)
        return rc;
    if ((rc = run_handmade()) != 0)
        return rc;
    fflush(stdout);
    return run_threadpool();
}
