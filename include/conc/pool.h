/*
 * conc/pool.h - multiprocessing.Pool (worker processes) and
 * multiprocessing.pool.ThreadPool (worker threads).
 *
 * A pool runs tasks on a fixed number of workers.  In a process pool
 * (conc_pool) a task is a function and a bytes argument, and its result is
 * bytes, as for conc_process_new; in a thread pool (conc_threadpool) the
 * argument and the result are pointers.
 *
 * Functions reach the workers as conc_process functions do (conc/process.h):
 * with the fork method by their address, with forkserver and spawn as module
 * + offset, translated in the worker.  A task function must be code of a
 * loaded module (the program or a shared library).
 *
 * Crash safety (Python's Pool hangs forever when a worker dies): every
 * worker has a channel of its own, so the pool knows which tasks each worker
 * holds.  A worker that ends while it holds a task (SIGKILL, the OOM killer,
 * abort, exit) is replaced at once; the task it was running fails with
 * -ECHILD (conc_pool_result_exitcode gives the worker's exit code, or minus
 * the signal), or runs again on another worker when the pool was made with
 * retries; tasks sent to it but not started yet go back to the queue.  The
 * other tasks are not affected and the pool goes on.
 *
 * Workers are daemon processes: terminate, free, and the parent's end (exit,
 * SIGKILL, a SIGINT that kills it) stop them (PR_SET_PDEATHSIG, see
 * conc/process.h), and every waiter of the pool is released.
 *
 * Results: apply_async, map_async (and the blocking forms) give a
 * conc_pool_result with one item per task argument: get/wait/ready/
 * successful (AsyncResult).  imap and imap_unordered give a conc_pool_iter,
 * an iterator that reads its input lazily: at most `window` chunks are in
 * flight, so memory stays bounded on an endless input.
 *
 * Where callbacks run: callback, error_callback and progress run in the
 * parent, on the pool's own thread (a thread pool: on the worker that
 * finished the task), as in Python; they must not wait for other results of
 * the same pool.  Inside callback/error_callback, conc_pool_result_get and
 * _item on that result answer without waiting.
 *
 * Waits (get, wait, join, imap_next, apply, map) go through conc's one wait
 * primitive: from a coroutine they park only the calling coroutine.
 *
 * A task's status: 0 when it succeeded; when it failed, the negative value
 * its function returned (a positive return is reported as -EPROTO), -ECHILD
 * when its worker died while holding it (retries exhausted), -EPIPE when the
 * pool was terminated before it finished.  As in Python, where get() raises
 * the task's own exception, a task's own code may equal one of the call's
 * codes (-ETIMEDOUT); conc_pool_result_ready tells them apart.
 *
 * See docs/pool.md.
 */
#ifndef CONC_POOL_H
#define CONC_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "conc/errors.h"
#include "conc/process.h"
#include "conc/time.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct conc_pool conc_pool;
typedef struct conc_threadpool conc_threadpool;
typedef struct conc_pool_result conc_pool_result;
typedef struct conc_pool_iter conc_pool_iter;

/*
 * A process pool's task, run in a worker: arg/len is the worker's copy of
 * the argument bytes (NULL when len is 0).  To give a result, store a
 * malloc'd buffer in *result and its length in *result_len (the worker frees
 * it once sent; leaving *result NULL gives an empty result).  Return 0 on
 * success or a negative code for failure (Python's exception), delivered
 * to get and error_callback; the result bytes of a failed task are dropped.
 * A result longer than CONC_POOL_ARG_MAX, or one that takes the results of
 * its chunk (map, imap) over twice that, fails with -EMSGSIZE.
 */
typedef int (*conc_pool_fn)(const void *arg, size_t len, void **result, size_t *result_len);

/* A thread pool's task: arg as given; *result is what get returns. */
typedef int (*conc_threadpool_fn)(void *arg, void **result);

/* A process pool's initializer, run once in each new worker before its
 * first task (Pool(initializer=, initargs=)).  A non-zero return ends the
 * worker with that exit code (it is replaced, as in Python). */
typedef int (*conc_pool_init_fn)(const void *arg, size_t len);

/* A thread pool's initializer, run once by each worker thread. */
typedef void (*conc_threadpool_init_fn)(void *arg);

/* One argument of map: len bytes at arg (a thread pool reads only arg). */
typedef struct conc_pool_item {
    const void *arg;
    size_t len;
} conc_pool_item;

/*
 * The input of imap / imap_unordered, called in the thread that calls
 * conc_pool_iter_next, only when there is room for more tasks.  Store the
 * next argument (pointer and length; a thread pool reads only *arg) and
 * return 1; return 0 at the end of the input, or a negative code to end it
 * with an error (conc_pool_iter_next then reports it).  The bytes must stay
 * valid until the next call of the function.
 */
typedef int (*conc_pool_next_fn)(void *ctx, const void **arg, size_t *len);

/* callback / error_callback: r is done; see "Where callbacks run" above. */
typedef void (*conc_pool_callback)(conc_pool_result *r, void *ctx);

/* progress: done of total items are finished (total is SIZE_MAX while an
 * imap's input has not ended).  Called at most every CONC_POOL_PROGRESS_MS
 * milliseconds and once more when everything finished (done == total). */
typedef void (*conc_pool_progress_fn)(void *ctx, size_t done, size_t total);

#define CONC_POOL_PROGRESS_MS 5

/* Options of conc_pool_new; all-zero (or NULL) means the defaults. */
typedef struct conc_pool_opts {
    uint32_t size;              /* sizeof(conc_pool_opts), or 0: this version */
    int processes;              /* workers; 0: conc_process_cpu_count() */
    conc_start_method method;   /* CONC_START_DEFAULT: the global method */
    conc_pool_init_fn initializer;      /* NULL: none */
    const void *initarg;        /* copied at conc_pool_new */
    size_t initarg_len;
    unsigned maxtasksperchild;  /* 0: workers live as long as the pool;
                                   else a worker is replaced after that many
                                   tasks (a chunk counts as one) */
    unsigned retries;           /* how many times a task whose worker died
                                   runs again before it fails with -ECHILD */
} conc_pool_opts;

#define CONC_POOL_OPTS_INIT { .size = sizeof(conc_pool_opts) }

/* The most workers a pool may have. */
#define CONC_POOL_MAX_WORKERS 1024

/* Options of conc_threadpool_new. */
typedef struct conc_threadpool_opts {
    uint32_t size;              /* sizeof(conc_threadpool_opts), or 0 */
    int threads;                /* workers; 0: conc_process_cpu_count() */
    conc_threadpool_init_fn initializer;
    void *initarg;
} conc_threadpool_opts;

#define CONC_THREADPOOL_OPTS_INIT { .size = sizeof(conc_threadpool_opts) }

/* Options of the calls that submit tasks (apply_async, map, map_async, imap,
 * imap_unordered, and the thread pool's); fields a call does not use are
 * ignored. */
typedef struct conc_pool_task_opts {
    uint32_t size;              /* sizeof(conc_pool_task_opts), or 0 */
    size_t chunksize;           /* map: items per task; 0: Python's default
                                   (n / (4 * workers), rounded up); imap: 0 is 1 */
    conc_pool_callback callback;        /* apply_async, map_async: on success */
    conc_pool_callback error_callback;  /* ... and on failure */
    conc_pool_progress_fn progress;     /* map, map_async, imap, imap_unordered */
    void *ctx;                  /* passed to the three functions above */
    size_t window;              /* imap: chunks in flight at most; 0: twice
                                   the number of workers */
} conc_pool_task_opts;

#define CONC_POOL_TASK_OPTS_INIT { .size = sizeof(conc_pool_task_opts) }

/* The largest task argument or result of a process pool. */
#define CONC_POOL_ARG_MAX (64u * 1024u * 1024u)

/* ------------------------------------------------------------ process pool */

/*
 * conc_pool_new - multiprocessing.Pool(processes, initializer, initargs,
 * maxtasksperchild), plus a start method and retries.  Starts the workers
 * and the pool's thread (which sends tasks, collects results, replaces
 * workers and runs callbacks).  Returns 0; -EINVAL (NULL out, processes < 0
 * or > CONC_POOL_MAX_WORKERS, a bad method, initarg NULL with a length,
 * initarg_len > CONC_POOL_ARG_MAX); -EPERM from a daemon process (it may
 * not start children); the errors of conc_process_start (-ENOSYS,
 * -EAGAIN, -EMFILE...); -ENOMEM.  Nothing is left running on failure.
 */
CONC_API int conc_pool_new(conc_pool **out, const conc_pool_opts *opts);

/* conc_pool_processes - the number of workers (0 for NULL). */
CONC_API int conc_pool_processes(const conc_pool *p);

/*
 * conc_pool_apply - Pool.apply(fn, (arg,)): run fn in a worker and wait.
 * Returns the task's status (see above: 0, its own code, -ECHILD, -EPIPE);
 * on 0 stores the result in a malloc'd buffer (*result, free it; at least
 * one byte is allocated) and its length.  Also -EINVAL (NULL p, fn, result
 * or result_len; arg NULL with len > 0; len > CONC_POOL_ARG_MAX; with
 * forkserver/spawn a function that is not code of a loaded module); -EPIPE
 * when the pool is closed or terminated; -ECANCELED when the calling
 * coroutine was killed (the task still runs); -EDEADLK from a callback of
 * the same pool (it would wait for itself); -ENOMEM.  When a worker is
 * idle the calling thread talks to it directly (the round trip of one
 * task), else the task is queued.
 */
CONC_API int conc_pool_apply(conc_pool *p, conc_pool_fn fn, const void *arg, size_t len,
                             void **result, size_t *result_len);

/*
 * conc_pool_apply_async - Pool.apply_async(fn, (arg,), callback=,
 * error_callback=).  The bytes are copied now.  Returns 0 and stores a new
 * result of one item (conc_pool_result_free it); the submission errors of
 * conc_pool_apply.  opts: callback, error_callback, ctx.
 */
CONC_API int conc_pool_apply_async(conc_pool *p, conc_pool_fn fn, const void *arg, size_t len,
                                   const conc_pool_task_opts *opts, conc_pool_result **out);

/*
 * conc_pool_map_async - Pool.map_async(fn, items, chunksize, callback,
 * error_callback): fn on each of the n items, chunksize items per task
 * (fewer where a task's arguments would pass twice CONC_POOL_ARG_MAX bytes).
 * Returns 0 and stores a result of n items (n == 0: done at once); -EINVAL
 * (NULL p, fn or out; items NULL with n > 0; an item over the size limit
 * or NULL with a length); -EPIPE when closed or terminated; -ENOMEM.
 * opts: chunksize, callback, error_callback, progress, ctx.
 */
CONC_API int conc_pool_map_async(conc_pool *p, conc_pool_fn fn, const conc_pool_item *items,
                                 size_t n, const conc_pool_task_opts *opts,
                                 conc_pool_result **out);

/*
 * conc_pool_map - Pool.map: conc_pool_map_async, then wait for every item.
 * Returns 0 when every item succeeded, else the status of the first failed
 * item (Python raises it); in both cases *out holds the result, whose
 * items (conc_pool_result_item) give every value and status.  Other errors
 * (submission, -ECANCELED, -EDEADLK from a callback of the same pool) leave
 * *out untouched.  starmap: C has no
 * argument tuples; put the arguments in a struct and map over those
 * (docs/pool.md).
 */
CONC_API int conc_pool_map(conc_pool *p, conc_pool_fn fn, const conc_pool_item *items,
                           size_t n, const conc_pool_task_opts *opts, conc_pool_result **out);

/*
 * conc_pool_imap / conc_pool_imap_unordered - Pool.imap(fn, iterable,
 * chunksize) and imap_unordered: fn on each argument that next(ctx, ...)
 * gives, read lazily by conc_pool_iter_next.  Results come in the order of
 * the input (imap) or as they finish (imap_unordered).  Returns 0 and
 * stores a new iterator (conc_pool_iter_free it); -EINVAL (NULL p, fn,
 * next or out, chunksize * window over 2^26); -ENOMEM.  A pool closed or
 * terminated makes conc_pool_iter_next end with -EPIPE.
 * opts: chunksize, window, progress, ctx (also next's ctx).
 */
CONC_API int conc_pool_imap(conc_pool *p, conc_pool_fn fn, conc_pool_next_fn next,
                            const conc_pool_task_opts *opts, conc_pool_iter **out);
CONC_API int conc_pool_imap_unordered(conc_pool *p, conc_pool_fn fn, conc_pool_next_fn next,
                                      const conc_pool_task_opts *opts, conc_pool_iter **out);

/*
 * conc_pool_close - Pool.close(): accept no more tasks; the workers end
 * once the queued tasks are done.  Returns 0 (also when closed before),
 * -EINVAL for NULL.
 */
CONC_API int conc_pool_close(conc_pool *p);

/*
 * conc_pool_terminate - Pool.terminate(): kill the workers (SIGKILL) at
 * once; every task not finished fails with -EPIPE and every waiter is
 * released.  As in Python, no callback or error_callback runs for the
 * tasks it drops.  Returns 0 (also when terminated before), -EINVAL for NULL.
 */
CONC_API int conc_pool_terminate(conc_pool *p);

/*
 * conc_pool_join - Pool.join(): wait until the workers and the pool's thread
 * have ended (after close or terminate).  Returns 0; -EBUSY when the pool
 * was neither closed nor terminated (Python's ValueError); -EDEADLK from a
 * callback (the pool's own thread); -ETIMEDOUT / -EAGAIN; -ECANCELED when
 * the calling coroutine was killed; -EINVAL for NULL or a bad timeout.
 */
CONC_API int conc_pool_join(conc_pool *p, double timeout);
CONC_API int conc_pool_join_until(conc_pool *p, int64_t deadline);

/*
 * conc_pool_free - terminate (unless joined), join and free the pool.
 * Results and iterators made by it stay valid (free them as usual); those
 * not finished fail with -EPIPE.  NULL is fine.  Not from a callback.
 */
CONC_API void conc_pool_free(conc_pool *p);

/* ------------------------------------------------------------- thread pool */

/*
 * conc_threadpool_new - multiprocessing.pool.ThreadPool(processes,
 * initializer, initargs).  Returns 0; -EINVAL (NULL out, threads < 0 or >
 * CONC_POOL_MAX_WORKERS); -EAGAIN when a thread cannot be started; -ENOMEM.
 */
CONC_API int conc_threadpool_new(conc_threadpool **out, const conc_threadpool_opts *opts);

/* conc_threadpool_threads - the number of workers (0 for NULL). */
CONC_API int conc_threadpool_threads(const conc_threadpool *p);

/* conc_threadpool_apply - ThreadPool.apply: run fn(arg) on a worker and
 * wait.  Returns the task's status and on 0 stores its result; -EINVAL for
 * NULL p, fn or result; -EPIPE when closed or terminated; -ECANCELED;
 * -ENOMEM. */
CONC_API int conc_threadpool_apply(conc_threadpool *p, conc_threadpool_fn fn, void *arg,
                                   void **result);

/* The other calls as for the process pool; items' len is ignored, and
 * conc_pool_result_get / _item give the pointer a task stored (len 0). */
CONC_API int conc_threadpool_apply_async(conc_threadpool *p, conc_threadpool_fn fn, void *arg,
                                         const conc_pool_task_opts *opts,
                                         conc_pool_result **out);
CONC_API int conc_threadpool_map_async(conc_threadpool *p, conc_threadpool_fn fn,
                                       const conc_pool_item *items, size_t n,
                                       const conc_pool_task_opts *opts, conc_pool_result **out);
CONC_API int conc_threadpool_map(conc_threadpool *p, conc_threadpool_fn fn,
                                 const conc_pool_item *items, size_t n,
                                 const conc_pool_task_opts *opts, conc_pool_result **out);
CONC_API int conc_threadpool_imap(conc_threadpool *p, conc_threadpool_fn fn,
                                  conc_pool_next_fn next, const conc_pool_task_opts *opts,
                                  conc_pool_iter **out);
CONC_API int conc_threadpool_imap_unordered(conc_threadpool *p, conc_threadpool_fn fn,
                                            conc_pool_next_fn next,
                                            const conc_pool_task_opts *opts,
                                            conc_pool_iter **out);

/* close: as conc_pool_close.  terminate: threads cannot be killed; the
 * queued tasks fail with -EPIPE at once (their waiters are released; no
 * callback or error_callback runs for them, as in Python) and the running
 * ones finish.  join, free: as for the process pool. */
CONC_API int conc_threadpool_close(conc_threadpool *p);
CONC_API int conc_threadpool_terminate(conc_threadpool *p);
CONC_API int conc_threadpool_join(conc_threadpool *p, double timeout);
CONC_API int conc_threadpool_join_until(conc_threadpool *p, int64_t deadline);
CONC_API void conc_threadpool_free(conc_threadpool *p);

/* ------------------------------------------------------------------ results */

/*
 * conc_pool_result_wait - AsyncResult.wait(timeout): wait until every item
 * is done (and its callback ran).  Returns 0; -ETIMEDOUT / -EAGAIN;
 * -ECANCELED when the calling coroutine was killed; -EDEADLK when called
 * from a callback of the same pool on another result that is not done
 * (a timeout of 0 gives -EAGAIN there); -EINVAL for NULL or a bad timeout.
 */
CONC_API int conc_pool_result_wait(conc_pool_result *r, double timeout);
CONC_API int conc_pool_result_wait_until(conc_pool_result *r, int64_t deadline);

/*
 * conc_pool_result_get - AsyncResult.get(timeout): wait, then return the
 * status (0, or the first failed item's status).  For an apply result with
 * status 0, *out and *len (either may be NULL) get the result, owned by r
 * (valid until conc_pool_result_free; a thread pool's: the pointer, len
 * 0); for a map result they get the first item's.  Also -ETIMEDOUT /
 * -EAGAIN (not ready: nothing stored), -ECANCELED, -EINVAL.
 */
CONC_API int conc_pool_result_get(conc_pool_result *r, void **out, size_t *len,
                                  double timeout);
CONC_API int conc_pool_result_get_until(conc_pool_result *r, void **out, size_t *len,
                                        int64_t deadline);

/* conc_pool_result_ready - AsyncResult.ready() (false for NULL). */
CONC_API bool conc_pool_result_ready(const conc_pool_result *r);

/* conc_pool_result_successful - AsyncResult.successful(): 1 when every item
 * succeeded, 0 when one failed, -EBUSY when not ready (Python's
 * ValueError), -EINVAL for NULL. */
CONC_API int conc_pool_result_successful(const conc_pool_result *r);

/* conc_pool_result_count - the number of items (1 for apply; 0 for NULL). */
CONC_API size_t conc_pool_result_count(const conc_pool_result *r);

/*
 * conc_pool_result_item - item i of a done result: its status, and on 0 its
 * value in *out / *len (either may be NULL; owned by r).  Returns the
 * status; -EBUSY when not ready; -EINVAL for NULL r or i out of range.
 */
CONC_API int conc_pool_result_item(const conc_pool_result *r, size_t i, void **out,
                                   size_t *len);

/*
 * conc_pool_result_exitcode - how the worker that held a task ended, for a
 * result whose (first failed) status is -ECHILD: stores its exit code (>=
 * 0) or minus the signal number.  Returns 0; -ENOENT when no item failed
 * with -ECHILD; -EBUSY when not ready; -EINVAL for NULL.
 */
CONC_API int conc_pool_result_exitcode(const conc_pool_result *r, int *code);

/*
 * conc_pool_result_future - the result as a concurrent.futures Future
 * (conc/future.h), for conc_wait (CONC_WAIT_FUTURE), conc_future_wait_many,
 * conc_as_completed and done callbacks beside executors' futures.  The
 * future is RUNNING until r is done (after its callback ran), then
 * FINISHED with: an apply's result (a process pool: a copy of its bytes; a
 * thread pool: its pointer), nothing (NULL) for a map (read the items from
 * r), or the exception (the first failed status; detail: the worker's exit
 * code for -ECHILD).  Returns a new reference (conc_future_free it; the
 * same future each call), or NULL for NULL r or when out of memory.  The
 * future outlives r as long as you hold it; cancelling it does not stop the
 * task (-EBUSY: it runs).
 */
struct conc_future;
CONC_API struct conc_future *conc_pool_result_future(conc_pool_result *r);

/* conc_pool_result_free - drop the result (a running task goes on; its
 * callbacks still run).  NULL is fine. */
CONC_API void conc_pool_result_free(conc_pool_result *r);

/*
 * conc_pool_iter_next - next(it): the next result.  Returns 1 and stores its
 * status (0 or the task's failure), its value (*out / *len, owned by the
 * iterator until the next call or free; either may be NULL) and its index
 * in the input; 0 when the input ended and every result was given
 * (StopIteration); once, after the results before it: the negative code
 * next() returned, -EPIPE when the pool was closed or terminated before
 * every argument was submitted (tasks cut by a termination give results
 * with status -EPIPE), -EINVAL for an argument NULL with a length or over
 * CONC_POOL_ARG_MAX (each of these ends the input); -ETIMEDOUT / -EAGAIN;
 * -ECANCELED; -EINVAL (NULL it or status, a bad timeout).
 * One thread at a time per iterator.
 */
CONC_API int conc_pool_iter_next(conc_pool_iter *it, int *status, void **out, size_t *len,
                                 size_t *index, double timeout);
CONC_API int conc_pool_iter_next_until(conc_pool_iter *it, int *status, void **out,
                                       size_t *len, size_t *index, int64_t deadline);

/* conc_pool_iter_consumed / _produced - how many arguments the iterator has
 * read from its input, and how many results it has given (0 for NULL). */
CONC_API size_t conc_pool_iter_consumed(const conc_pool_iter *it);
CONC_API size_t conc_pool_iter_produced(const conc_pool_iter *it);

/* conc_pool_iter_free - drop the iterator (tasks in flight finish, their
 * results are dropped).  NULL is fine. */
CONC_API void conc_pool_iter_free(conc_pool_iter *it);

#ifdef __cplusplus
}
#endif
#endif /* CONC_POOL_H */
