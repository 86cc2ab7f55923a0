/*
 * conc/executor.h - concurrent.futures.ThreadPoolExecutor and
 * ProcessPoolExecutor: run calls on a set of workers, each submit giving a
 * conc_future (conc/future.h) for its outcome.
 *
 * One handle type for both kinds (conc_executor_opts.kind):
 *   CONC_EXECUTOR_THREADS    worker threads of this process, started on
 *                            demand (a submit that finds no idle worker
 *                            starts one) up to max_workers; they run with
 *                            every signal blocked.
 *   CONC_EXECUTOR_PROCESSES  worker processes of a process Pool
 *                            (conc/pool.h), with its start method, its
 *                            crash safety and its rules for reaching
 *                            functions (code of a loaded module).
 *
 * What a call is:
 *   conc_executor_submit        fn(arg, &result) with pointers: thread
 *                               executors only (a pointer means nothing in
 *                               another process).  The future gets the
 *                               pointer result (conc_future_set_result).
 *   conc_executor_submit_bytes  fn(bytes, &result, &result_len), bytes in
 *                               and out: both kinds (a thread executor runs
 *                               it on a copy of the bytes).  The future gets
 *                               the result buffer (conc_future_has_bytes).
 * A call that returns 0 finishes its future with its result; a call that
 * returns a negative code finishes it with that exception (a positive
 * return is reported as -EPROTO, its result dropped).  A process worker
 * that dies while it runs a call (killed, OOM, abort, exit) fails that
 * call's future alone with -ECHILD (the detail is the worker's exit code,
 * or minus the signal); the executor replaces the worker and goes on, where
 * Python's ProcessPoolExecutor breaks for every caller.  A process
 * executor's future is RUNNING once a worker begins its call, not when the
 * call is handed to the worker (the pool sends calls ahead while its queue
 * is long): until then cancel takes it back (the worker skips it), from
 * then cancel fails with -EBUSY.  The calls a dead worker held but had not
 * begun go back to the queue, PENDING, and can be cancelled at once.
 *
 * Lifecycle: conc_executor_new, any number of submits and maps,
 * conc_executor_shutdown (no more submits; optionally cancel what has not
 * started), conc_executor_join (wait for the workers to end), and
 * conc_executor_free, which shuts down and joins first (Python's `with`
 * block).  Every future keeps working after the executor is freed.
 *
 * Where callbacks run: a future's done callbacks run on the worker thread
 * that finished the call (threads), or on the process pool's thread
 * (processes); they must not wait for another call of the same executor.
 *
 * Waiting (join, map) parks only the calling coroutine when called from
 * one; timeouts follow conc/time.h, with an _until form for each.
 *
 * Process-wide effects: a thread executor's workers are plain threads,
 * not listed by conc_thread_enumerate and not joined at exit (free or join
 * the executor before main returns: calls still running then end with the
 * process).  A process executor's are those of conc_pool_new.  Use an
 * executor in the process that made it (a forked child gets no workers).
 *
 * Python reference: concurrent.futures.Executor, ThreadPoolExecutor,
 * ProcessPoolExecutor.  See docs/executor.md.
 */
#ifndef CONC_EXECUTOR_H
#define CONC_EXECUTOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "conc/errors.h"
#include "conc/future.h"
#include "conc/process.h"
#include "conc/time.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct conc_executor conc_executor;
typedef struct conc_executor_map conc_executor_map;

typedef enum conc_executor_kind {
    CONC_EXECUTOR_THREADS = 0,      /* ThreadPoolExecutor (the default) */
    CONC_EXECUTOR_PROCESSES = 1     /* ProcessPoolExecutor */
} conc_executor_kind;

/* A call with pointers (thread executors): store the result in *result
 * (NULL when left alone) and return 0, or return a negative code. */
typedef int (*conc_executor_fn)(void *arg, void **result);

/* A call with bytes: arg/len is the worker's copy of the argument (NULL
 * when len is 0).  Store a malloc'd buffer in *result and its length in
 * *result_len (the future takes it; leave *result NULL for an empty
 * result) and return 0, or return a negative code (a result buffer is then
 * freed).  The same type as conc_pool_fn. */
typedef int (*conc_executor_bytes_fn)(const void *arg, size_t len, void **result,
                                      size_t *result_len);

/* The initializer, run once by each worker before its first call, on
 * initarg/initarg_len.  Threads: the pointer as given; a non-zero return
 * breaks the executor as in Python (BrokenThreadPool): queued calls fail
 * with -EPIPE and later submits give -EPIPE.  Processes: a copy of the
 * bytes; a non-zero return ends that worker with the value as its exit
 * code, and it is replaced (conc_pool_opts.initializer). */
typedef int (*conc_executor_init_fn)(const void *arg, size_t len);

/* Options for conc_executor_new; all-zero (or NULL) means a thread
 * executor with the defaults. */
typedef struct conc_executor_opts {
    uint32_t size;                  /* sizeof(conc_executor_opts), or 0: the
                                       first version (conc reads a field
                                       only when size covers it) */
    conc_executor_kind kind;
    int max_workers;                /* 0: Python's default: threads
                                       min(32, CPUs + 4), processes the
                                       CPUs (conc_process_cpu_count) */
    conc_executor_init_fn initializer;  /* NULL: none */
    const void *initarg;            /* threads: passed as is (it must stay
                                       valid while the executor lives);
                                       processes: copied by new */
    size_t initarg_len;
    conc_drop_fn drop;              /* each future's drop function for a
                                       pointer result nobody took (see
                                       conc_future_opts) */
    void *drop_arg;
    conc_start_method method;       /* processes: CONC_START_DEFAULT, the
                                       global method */
    unsigned max_tasks_per_child;   /* processes: 0, workers live as long as
                                       the executor; else a worker is
                                       replaced after that many calls */
} conc_executor_opts;

#define CONC_EXECUTOR_OPTS_INIT { .size = sizeof(conc_executor_opts) }

/* The most workers an executor may have. */
#define CONC_EXECUTOR_MAX_WORKERS 1024

/*
 * conc_executor_new - ThreadPoolExecutor(max_workers, initializer=,
 * initargs=) or ProcessPoolExecutor(max_workers, mp_context=, initializer=,
 * initargs=, max_tasks_per_child=).  A thread executor starts no thread
 * until the first submit; a process executor starts its workers now.
 * Returns 0 and sets *out; -EINVAL for a NULL out, an unknown kind,
 * max_workers < 0 or over CONC_EXECUTOR_MAX_WORKERS, initarg NULL with a
 * length, or a bad start method; for processes, the errors of conc_pool_new
 * (-EPERM from a daemon process, -ENOSYS, -EAGAIN, -EMFILE...); -ENOMEM.
 */
CONC_API int conc_executor_new(conc_executor **out, const conc_executor_opts *opts);

/* conc_executor_max_workers - the worker limit (0 for NULL). */
CONC_API int conc_executor_max_workers(const conc_executor *ex);

/* conc_executor_kind_of - the kind of executor (CONC_EXECUTOR_THREADS for
 * NULL). */
CONC_API conc_executor_kind conc_executor_kind_of(const conc_executor *ex);

/*
 * conc_executor_submit - Executor.submit(fn, arg): queue fn(arg, &result)
 * and give its future in *out (a new reference: conc_future_free it).  arg
 * must stay valid until the call is over.  Returns 0; -EINVAL for NULL ex,
 * fn or out, or a process executor; -EPIPE after shutdown, or when the
 * executor is broken (a failed initializer); -EAGAIN when no worker thread
 * could be started and none exists; -ENOMEM.  *out is untouched on
 * failure.
 */
CONC_API int conc_executor_submit(conc_executor *ex, conc_executor_fn fn, void *arg,
                                  conc_future **out);

/*
 * conc_executor_submit_bytes - Executor.submit(fn, data): queue fn on a
 * copy of the len bytes at arg (copied now) and give its future in *out (a
 * new reference).  Returns 0; -EINVAL for NULL ex, fn or out, arg NULL with
 * len > 0, a process executor given more than CONC_POOL_ARG_MAX bytes, or
 * (forkserver, spawn) a function that is not code of a loaded module;
 * -EPIPE after shutdown or when broken; -EAGAIN as conc_executor_submit;
 * -ENOMEM.
 */
CONC_API int conc_executor_submit_bytes(conc_executor *ex, conc_executor_bytes_fn fn,
                                        const void *arg, size_t len, conc_future **out);

/*
 * conc_executor_shutdown - Executor.shutdown(wait, cancel_futures): accept
 * no more calls.  With cancel_futures, every call that has not started is
 * cancelled (its future becomes CANCELLED and its callbacks run, here).
 * The others run to the end; with wait, the call returns once they have and
 * the workers are gone (conc_executor_join with no time limit).  Calling
 * it again is fine (it can still cancel or wait).  Returns 0; -EINVAL for
 * NULL; with wait, -EDEADLK from a call or callback of the same executor
 * and -ECANCELED when the calling coroutine was killed (the shutdown
 * itself is done).
 */
CONC_API int conc_executor_shutdown(conc_executor *ex, bool wait, bool cancel_futures);

/*
 * conc_executor_join - wait until a shut-down executor's calls are over
 * and its workers gone.  Returns 0; -EBUSY when it was not shut down
 * (nothing would end the wait); -EAGAIN (timeout 0) or -ETIMEDOUT when
 * calls still run; -EDEADLK from a call or callback of the same executor;
 * -ECANCELED when the calling coroutine was killed; -EINVAL for NULL or a
 * bad timeout.
 */
CONC_API int conc_executor_join(conc_executor *ex, double timeout);
CONC_API int conc_executor_join_until(conc_executor *ex, int64_t deadline);

/*
 * conc_executor_free - shut down (wait, no cancelling: Python's `with`
 * exit), then free the executor.  Futures it gave stay valid (each holds
 * its own reference).  Returns 0 (also for NULL); -EBUSY from a call or
 * callback of the same executor (it would wait for itself; the executor
 * stays valid and is shut down).
 */
CONC_API int conc_executor_free(conc_executor *ex);

/* ------------------------------------------------------------------ map */

/*
 * The input of a map: called in the thread that calls
 * conc_executor_map_new or _next, only when there is room for another call.
 * Store the next argument (pointer and length; pointer maps read only
 * *arg) and return 1; return 0 at the end, or a negative code to end the
 * input with that error (conc_executor_map_next reports it after the
 * results).  Bytes are copied before the next call of the function.  The
 * same type as conc_pool_next_fn.
 */
typedef int (*conc_executor_next_fn)(void *ctx, const void **arg, size_t *len);

/* Options for the maps; all-zero (or NULL) means the defaults. */
typedef struct conc_executor_map_opts {
    uint32_t size;          /* sizeof(conc_executor_map_opts), or 0 */
    size_t read_ahead;      /* calls submitted and not yet given by _next,
                               at most; 0: twice max_workers */
} conc_executor_map_opts;

#define CONC_EXECUTOR_MAP_OPTS_INIT { .size = sizeof(conc_executor_map_opts) }

/*
 * conc_executor_map_new - Executor.map(fn, iterable, buffersize=): run
 * fn on each argument the input gives, with results in input order.  The
 * input is read lazily: at most read_ahead calls are submitted and not yet
 * given, so an endless input takes bounded memory.  The first calls are
 * submitted now.  Thread executors only (pointers).  Returns 0 and sets
 * *out; -EINVAL for NULL out, ex, fn or next, or a process executor; -EPIPE
 * after shutdown; -ENOMEM.
 */
CONC_API int conc_executor_map_new(conc_executor_map **out, conc_executor *ex,
                                   conc_executor_fn fn, conc_executor_next_fn next,
                                   void *ctx, const conc_executor_map_opts *opts);

/* conc_executor_map_bytes_new - the same with a bytes call (both kinds;
 * results are buffers). */
CONC_API int conc_executor_map_bytes_new(conc_executor_map **out, conc_executor *ex,
                                         conc_executor_bytes_fn fn,
                                         conc_executor_next_fn next, void *ctx,
                                         const conc_executor_map_opts *opts);

/*
 * conc_executor_map_next - the next result, in input order: waits for the
 * oldest call not given yet.  Returns 1 when it gives one: *err is 0 and
 * *result (and *len: bytes) the result, handed over (a bytes buffer is the
 * caller's to free(); *len is 0 for a pointer); or *err is the call's
 * exception (or -ECANCELED when the call was cancelled), *result NULL.
 * Then the input is read for the next call.  Returns 0 when every result
 * was given; the input's negative code once, after the results it gave,
 * when it ended with an error (or a submit failed, e.g. -EPIPE after a
 * shutdown); -EAGAIN (timeout 0) or -ETIMEDOUT when the oldest call has
 * not finished in time (it is still given by a later call); -ECANCELED when
 * the calling coroutine was killed; -EINVAL for NULL m or err, or a bad
 * timeout.  result and len may be NULL (a result not taken is released as
 * the future would: freed, or given to the drop function).
 * Python's map(timeout=) counts from the call: pass one deadline to every
 * conc_executor_map_next_until.
 */
CONC_API int conc_executor_map_next(conc_executor_map *m, void **result, size_t *len,
                                    int *err, double timeout);
CONC_API int conc_executor_map_next_until(conc_executor_map *m, void **result, size_t *len,
                                          int *err, int64_t deadline);

/* conc_executor_map_submitted - how many calls the map has submitted so
 * far (0 for NULL). */
CONC_API size_t conc_executor_map_submitted(const conc_executor_map *m);

/* conc_executor_map_free - cancel the calls not started yet (as Python's
 * map when its iterator is closed), drop the map.  Calls already running
 * finish on their own.  NULL is fine. */
CONC_API void conc_executor_map_free(conc_executor_map *m);

#ifdef __cplusplus
}
#endif
#endif /* CONC_EXECUTOR_H */
