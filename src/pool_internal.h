/*
 * pool_internal.h - the task engine under conc/pool.h, for the pools'
 * results, map and imap (pool_result.c) and for executors built on the same
 * workers.  Not installed.
 *
 * An engine (a process pool or a thread pool) runs tasks.  A task is a
 * struct conc__pool_task that the submitter owns (embed it in your own
 * object): fill it with conc__pool_task_prepare (process pool) or
 * conc__pool_task_prepare_ptr (thread pool), set done (and started, ctx),
 * and submit it.  Then exactly one of these happens:
 *   - conc__pool_cancel returns 0: the task never reached a worker, done is
 *     never called (a task cancelled before it was submitted is refused by
 *     submit with -ECANCELED);
 *   - done(t, items, n) is called once, on the pool's thread (process pool)
 *     or the worker thread (thread pool; the terminating thread for tasks
 *     terminate drops), with no lock of the engine held.  n is the task's
 *     number of items, or 1 when every item has that same outcome (a task
 *     that failed as a whole: -ECHILD, -EPIPE).
 * started(t), when set: a thread pool calls it when a worker thread begins
 * the task, a process pool when a caller of apply hands it to a worker
 * itself (conc__pool_run_direct); a process pool's worker begins tasks
 * without telling (that would cost a write per task): ask
 * conc__pool_begun.  A process task with started set that a worker holds
 * but has not begun can still be cancelled: cancel returns 1, the worker
 * skips it, and done comes with -ECANCELED for every item.  Once a worker
 * began it, cancel gives -EBUSY.
 * The submitter may free its task memory only after done returned or
 * cancel gave 0; call conc__pool_task_release (frees what prepare
 * allocated) then.
 */
#ifndef CONC_POOL_INTERNAL_H
#define CONC_POOL_INTERNAL_H

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "conc/pool.h"
#include "internal.h"

/* One item's outcome.  status: 0, the task's failure, -ECHILD (exitcode
 * tells how the worker ended), -EPIPE (terminated: exitcode
 * CONC__POOL_TERMINATED, and no callback runs for it, as in Python).  data/len: the result
 * (process pool: bytes valid only during the done call, copy them; thread
 * pool: the task's pointer, len 0). */
struct conc__pool_outcome {
    int status;
    int exitcode;
    void *data;
    size_t len;
};

struct conc__pool_task;
typedef void (*conc__pool_done_fn)(struct conc__pool_task *t,
                                   const struct conc__pool_outcome *items, uint32_t n);

struct conc__pool_task {
    /* the submitter's */
    conc__pool_done_fn done;
    void (*started)(struct conc__pool_task *t);     /* may be NULL */
    void *ctx;
    /* the engine's (set by prepare and submit) */
    void *fn;
    unsigned char *buf;         /* process: the wire frame; thread: void *[n] */
    size_t buflen;
    uint32_t nitems;
    int state;
    unsigned tries;
    struct conc__pool_task *next, *prev;
    void *worker;
    uint32_t ord;               /* its number at its worker (process pool) */
    bool told;                  /* started was called */
};

/* A queue of tasks, oldest first, linked through next/prev; each engine
 * keeps one under its lock. */
struct conc__pool_queue {
    struct conc__pool_task *head, *tail;
    size_t len;
};

static inline void conc__pool_q_push_back(struct conc__pool_queue *q, struct conc__pool_task *t)
{
    q->len++;
    t->next = NULL;
    t->prev = q->tail;
    if (q->tail)
        q->tail->next = t;
    else
        q->head = t;
    q->tail = t;
}

/* Puts t first (a is NULL) or right after a, which is in q. */
static inline void conc__pool_q_insert_after(struct conc__pool_queue *q,
                                             struct conc__pool_task *a,
                                             struct conc__pool_task *t)
{
    q->len++;
    t->prev = a;
    t->next = a ? a->next : q->head;
    if (t->next)
        t->next->prev = t;
    else
        q->tail = t;
    if (a)
        a->next = t;
    else
        q->head = t;
}

static inline void conc__pool_q_unlink(struct conc__pool_queue *q, struct conc__pool_task *t)
{
    q->len--;
    if (t->prev)
        t->prev->next = t->next;
    else
        q->head = t->next;
    if (t->next)
        t->next->prev = t->prev;
    else
        q->tail = t->prev;
    t->next = t->prev = NULL;
}

/* Empties q; returns its tasks, still linked through next. */
static inline struct conc__pool_task *conc__pool_q_take_all(struct conc__pool_queue *q)
{
    struct conc__pool_task *all = q->head;
    q->head = q->tail = NULL;
    q->len = 0;
    return all;
}

/* The exitcode of an outcome that terminate dropped. */
#define CONC__POOL_TERMINATED INT_MIN

/* Task states. */
#define CONC__TASK_NEW 0
#define CONC__TASK_QUEUED 1
#define CONC__TASK_SENT 2
#define CONC__TASK_DONE 3
#define CONC__TASK_CANCELLED 4

/* The engine's part of a task both prepares fill alike: a new task of n
 * items of fn, its frame or argument array in buf. */
static inline void conc__pool_task_init(struct conc__pool_task *t, void *fn, unsigned char *buf,
                                        size_t buflen, uint32_t n)
{
    t->fn = fn;
    t->buf = buf;
    t->buflen = buflen;
    t->nitems = n;
    t->state = CONC__TASK_NEW;
    t->tries = 0;
    t->next = t->prev = NULL;
    t->worker = NULL;
}

/*
 * What submit and cancel of both engines decide alike, under the engine's
 * lock.  conc__pool_admit: whether t may be queued (0); -ECANCELED when
 * it was cancelled before its submit, -EINVAL when it is not new, -EPIPE
 * when the engine is closed.  conc__pool_take_back: a task no worker has
 * (new, or queued in q: taken out) becomes CANCELLED (0); -EBUSY when a
 * worker has it or it is done.
 */
static inline int conc__pool_admit(const struct conc__pool_task *t, bool closed)
{
    int state = __atomic_load_n(&t->state, __ATOMIC_RELAXED);
    if (state != CONC__TASK_NEW)
        return state == CONC__TASK_CANCELLED ? -ECANCELED : -EINVAL;
    return closed ? -EPIPE : 0;
}

static inline int conc__pool_take_back(struct conc__pool_queue *q, struct conc__pool_task *t)
{
    int state = __atomic_load_n(&t->state, __ATOMIC_RELAXED);
    if (state == CONC__TASK_QUEUED)
        conc__pool_q_unlink(q, t);
    else if (state != CONC__TASK_NEW)
        return -EBUSY;
    __atomic_store_n(&t->state, CONC__TASK_CANCELLED, __ATOMIC_RELAXED);
    return 0;
}

/* The largest number of items in one task (a chunk). *//* The largest number of items in one task (a chunk). */
#define CONC__POOL_CHUNK_MAX (1u << 20)

/* The most argument bytes one process task carries: map cuts a chunk
 * before the item that would take it over. */
#define CONC__POOL_CHUNK_BYTES ((uint64_t)CONC_POOL_ARG_MAX * 2)

/* The two engines behind one interface.  Their lifecycle is one: close and
 * terminate set `stopping` and call stop; the engine's threads (a process
 * pool's thread, a thread pool's workers) count themselves in `live` and
 * the last one out wakes the joiners. */
struct conc__pool_engine {
    int (*submit)(struct conc__pool_engine *e, struct conc__pool_task *t);
    int (*cancel)(struct conc__pool_engine *e, struct conc__pool_task *t);
    bool (*begun)(struct conc__pool_engine *e, struct conc__pool_task *t);  /* may be NULL */
    /* close (terminate false) or terminate: no more submits; with
     * terminate, what is queued fails with -EPIPE */
    void (*stop)(struct conc__pool_engine *e, bool terminate);
    int workers;
    bool process;               /* conc_pool: items are bytes */
    uint32_t stopping;          /* close or terminate was called */
    uint32_t live;              /* futex word: the engine's threads running */
};

/*
 * conc__pool_task_prepare - fill t for a process pool: fn on the n items
 * (a chunk; n >= 1).  The bytes are copied.  Returns 0; -EINVAL (n == 0 or
 * over CONC__POOL_CHUNK_MAX, an item NULL with a length or over
 * CONC_POOL_ARG_MAX); -ENOMEM.  conc__pool_task_prepare_ptr is the thread
 * pool's: fn is a conc_threadpool_fn, items' arg pointers are kept.
 */
CONC_HIDDEN int conc__pool_task_prepare(struct conc__pool_task *t, conc_pool_fn fn,
                                        const conc_pool_item *items, size_t n);
CONC_HIDDEN int conc__pool_task_prepare_ptr(struct conc__pool_task *t, conc_threadpool_fn fn,
                                            const conc_pool_item *items, size_t n);
CONC_HIDDEN void conc__pool_task_release(struct conc__pool_task *t);

/*
 * conc__pool_submit - queue a prepared task.  Returns 0; -EPIPE when the
 * pool is closed or terminated; -EINVAL for NULL or a task that is not
 * prepared or already submitted; with forkserver/spawn, -EINVAL for a
 * function that is not code of a loaded module.
 */
CONC_HIDDEN int conc__pool_submit(struct conc__pool_engine *e, struct conc__pool_task *t);

/*
 * conc__pool_run_direct - run a prepared task on an idle worker, talking to
 * it from the calling thread (no hop through the pool's thread: the
 * round trip of a blocking apply).  Returns 0 once done ran (or, when the
 * worker died, once the pool's thread took the task over: done runs
 * there); -ECANCELED when the calling coroutine was killed while it waited
 * (the pool's thread took the task over); -EAGAIN when no worker is idle or
 * the engine has no such path (nothing happened: submit it); -EINVAL for a
 * function that cannot reach the workers.
 */
CONC_HIDDEN int conc__pool_run_direct(struct conc__pool_engine *e, struct conc__pool_task *t);

/*
 * conc__pool_cancel - take a task back if no worker began it.  Returns 0
 * when no worker had it (done will never be called), 1 when a worker holds
 * it and will skip it (a task with started set: done comes with
 * -ECANCELED), -EBUSY when a worker began it or it is done.
 */
CONC_HIDDEN int conc__pool_cancel(struct conc__pool_engine *e, struct conc__pool_task *t);

/*
 * conc__pool_begun - whether a worker of a process pool began t (a task
 * with started set; its worker took its gate).  False for a task in the
 * queue or held ahead, and for a thread pool's (it calls started).
 */
CONC_HIDDEN bool conc__pool_begun(struct conc__pool_engine *e, struct conc__pool_task *t);

/*
 * conc__pool_stop - close (terminate false) or terminate e.  Returns 0;
 * -EINVAL for NULL.
 */
CONC_HIDDEN int conc__pool_stop(struct conc__pool_engine *e, bool terminate);

/*
 * conc__pool_join_until - wait until e's threads ended (after close or
 * terminate).  Returns 0; -EBUSY before close or terminate; -EDEADLK from
 * one of e's callbacks; -ETIMEDOUT; -ECANCELED (a killed coroutine);
 * -EINVAL for NULL.  conc__pool_join takes a timeout in seconds.
 */
CONC_HIDDEN int conc__pool_join_until(struct conc__pool_engine *e, int64_t deadline);
CONC_HIDDEN int conc__pool_join(struct conc__pool_engine *e, double timeout);

/* conc__pool_live_add - count n threads of e in (n > 0) or out (n < 0; the
 * last one out wakes the joiners).  conc__pool_end: terminate e and wait
 * until its threads ended (free). */
CONC_HIDDEN void conc__pool_live_add(struct conc__pool_engine *e, int n);
CONC_HIDDEN void conc__pool_end(struct conc__pool_engine *e);

/* The engine of each pool kind (NULL for NULL). */
CONC_HIDDEN struct conc__pool_engine *conc__pool_engine(conc_pool *p);
CONC_HIDDEN struct conc__pool_engine *conc__threadpool_engine(conc_threadpool *p);

/* Whether the calling thread is one the engine runs callbacks on (the pool's
 * thread or a thread pool worker): a wait for that pool from there would
 * wait for itself. */
CONC_HIDDEN bool conc__pool_in_callback(const struct conc__pool_engine *e);
extern __thread const struct conc__pool_engine *conc__pool_cb_engine;

#endif
