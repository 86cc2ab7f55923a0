/*
 * conc/future.h - concurrent.futures.Future: the result of a call that runs
 * somewhere else, and the calls that wait for several of them
 * (concurrent.futures.wait and as_completed).
 *
 * A conc_future is filled by a producer (an executor, conc/executor.h; a
 * process or thread Pool, whose AsyncResult is a conc_future; or your own
 * code) and read by any number of consumers.  Its state moves only forward:
 *
 *     PENDING --set_running--> RUNNING --set_result/set_exception--> FINISHED
 *        |                                                        ^
 *        +------------------ set_result/set_exception -------------+
 *        +--cancel--> CANCELLED
 *
 * cancel succeeds only while the future is PENDING (as in Python: a call
 * that has started cannot be cancelled).  FINISHED and CANCELLED are final;
 * "done" means either.
 *
 * The result.  One future type carries either kind of result:
 *   - a pointer (conc_future_set_result), what thread executors and
 *     ThreadPool return: the future stores the pointer and never looks at
 *     what it points to.  When the future goes away with a pointer result
 *     nobody took, the drop function of its options (if any) is called on
 *     it, so an unread result can be released.
 *   - bytes (conc_future_set_result_bytes copies them,
 *     conc_future_set_result_owned takes a malloc'd buffer over), what
 *     process executors and the process Pool return: the future owns the
 *     buffer and frees it with free() when it goes away, unless a consumer
 *     took it.
 * conc_future_result lends the result: *value is the pointer, or the
 * future's buffer (valid until the future is freed), and *len is the length
 * of bytes (0 for a pointer).  conc_future_result_take hands it over once:
 * afterwards the buffer is the caller's to free() (a pointer result is no
 * longer dropped), and the future answers -EALREADY to later result calls.
 * conc_future_has_bytes says which kind a finished future holds.
 *
 * The exception.  A call that failed finishes the future with an error code,
 * a negative errno (conc_future_set_exception), and a detail, an int that
 * qualifies it.  The codes conc's producers set:
 *   -ECHILD      the process worker running the call died (killed by a
 *                signal, the OOM killer, abort, exit): detail is its exit
 *                code as conc_process_exitcode gives it (N >= 0: it exited
 *                with status N; -SIG: signal SIG killed it)
 *   -EPIPE       the executor or pool was shut down or terminated before
 *                the call could run
 *   any other    what the call itself returned as its error
 * Cancelling is not an exception: a cancelled future reports -ECANCELED
 * from the result and exception calls, as Python raises CancelledError.
 *
 * Ownership.  A future is reference-counted.  conc_future_new gives the
 * caller one reference; a producer that hands a future to a consumer keeps
 * its own (an executor's submit returns a new reference and keeps one until
 * the call is over); conc_future_ref takes another and conc_future_free
 * drops one.  The future, with its result, goes away with the last
 * reference.
 *
 * Waiting.  Every waiting call takes a timeout in seconds (CONC_FOREVER
 * blocks, 0 never blocks and gives -EAGAIN, t > 0 gives -ETIMEDOUT after t
 * seconds; another negative value or NaN is -EINVAL) and has an _until form
 * taking an absolute CLOCK_MONOTONIC deadline in ns (conc/time.h).  Called
 * from a conc coroutine, a wait parks only that coroutine, and returns
 * -ECANCELED when the coroutine is killed (conc/coro.h; conc_future_cancelled
 * tells the two apart).  Signals never cut a wait short.  A future can also
 * be waited on beside connections, queues, processes and descriptors with
 * conc_wait (conc/wait.h, CONC_WAIT_FUTURE).
 *
 * Done callbacks (conc_future_add_done_callback) run once the future is
 * done, in the order they were added, in the thread that finished or
 * cancelled it (an executor's worker, a pool's result thread, or the thread
 * that called cancel); a callback added to a done future runs at once in
 * the calling thread.  A callback may call any conc_future call on the
 * future, but must not wait for another call of the same executor to
 * finish.
 *
 * Python reference: concurrent.futures.Future, wait, as_completed,
 * multiprocessing.pool.AsyncResult.
 */
#ifndef CONC_FUTURE_H
#define CONC_FUTURE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "conc/errors.h"
#include "conc/time.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct conc_future conc_future;

/* Where a future is (conc_future_state). */
typedef enum conc_future_status {
    CONC_FUTURE_PENDING = 0,    /* not started: may still be cancelled */
    CONC_FUTURE_RUNNING = 1,    /* started (conc_future_set_running) */
    CONC_FUTURE_FINISHED = 2,   /* has a result or an exception */
    CONC_FUTURE_CANCELLED = 3   /* cancelled before it started */
} conc_future_status;

/* A done callback: f is the future (borrowed), arg what was given with it. */
typedef void (*conc_future_cb)(conc_future *f, void *arg);

/* The discard callback (also declared by conc/queue.h and conc/deque.h). */
#ifndef CONC_DROP_FN_DEFINED
#define CONC_DROP_FN_DEFINED
typedef void (*conc_drop_fn)(void *item, void *arg);
#endif

/* Options for conc_future_new; all-zero (or NULL) means the defaults. */
typedef struct conc_future_opts {
    uint32_t size;          /* sizeof(conc_future_opts), or 0: the first
                               version (conc reads a field only when size
                               covers it) */
    conc_drop_fn drop;      /* NULL, or called with a pointer result that
                               was never taken, when the future goes away */
    void *drop_arg;         /* passed to drop */
} conc_future_opts;

#define CONC_FUTURE_OPTS_INIT { .size = sizeof(conc_future_opts) }

/* ------------------------------------------------------------ lifecycle */

/*
 * conc_future_new - Future(): a new PENDING future, for a producer of your
 * own (executors and pools make theirs).  The caller holds one reference.
 * Returns 0 and sets *out; -EINVAL for a NULL out; -ENOMEM.
 */
CONC_API int conc_future_new(conc_future **out, const conc_future_opts *opts);

/* conc_future_ref - take one more reference (dropped by conc_future_free);
 * returns f (NULL for NULL). */
CONC_API conc_future *conc_future_ref(conc_future *f);

/*
 * conc_future_free - drop the caller's reference.  The last one frees the
 * future and its result (a bytes buffer nobody took is freed, a pointer
 * nobody took goes to the drop function).  The call the future stands for
 * is not cancelled: an executor still holds its own reference while the
 * call is queued or runs.  NULL is fine.
 */
CONC_API void conc_future_free(conc_future *f);

/* -------------------------------------------------------------- queries */

/* conc_future_state - where the future is; CONC_FUTURE_PENDING for NULL. */
CONC_API conc_future_status conc_future_state(const conc_future *f);

/* conc_future_cancelled - Future.cancelled(); false for NULL. */
CONC_API bool conc_future_cancelled(const conc_future *f);

/* conc_future_running - Future.running(): started and not finished; false
 * for NULL. */
CONC_API bool conc_future_running(const conc_future *f);

/* conc_future_done - Future.done(): finished or cancelled; false for NULL. */
CONC_API bool conc_future_done(const conc_future *f);

/* conc_future_has_bytes - true when the future finished with a bytes
 * result (set_result_bytes or set_result_owned), false for a pointer
 * result, an exception, a future not finished, and NULL. */
CONC_API bool conc_future_has_bytes(const conc_future *f);

/* ----------------------------------------------------------- consumers */

/*
 * conc_future_result - Future.result(timeout): wait until the future is
 * done, then give its result.  *value gets the pointer result, or the
 * future's bytes buffer (lent: valid until the last reference goes; NULL
 * for empty bytes); *len the length of bytes (0 for a pointer result).
 * Either may be NULL when not wanted; neither is touched unless the call
 * returns 0.
 * Returns 0 with the result; the exception's code (negative) when the call
 * failed (conc_future_exception gives its detail); -ECANCELED when the
 * future was cancelled (or the calling coroutine killed); -EALREADY when
 * the result was taken; -EAGAIN (timeout 0) or -ETIMEDOUT when it is not
 * done in time; -EINVAL for NULL f or a bad timeout.
 */
CONC_API int conc_future_result(conc_future *f, void **value, size_t *len, double timeout);
CONC_API int conc_future_result_until(conc_future *f, void **value, size_t *len,
                                      int64_t deadline);

/*
 * conc_future_result_take - conc_future_result, and the result becomes the
 * caller's: a bytes buffer is then released with free() (NULL for empty
 * bytes), a pointer is no longer given to the drop function.  Only one
 * caller gets it; later result and take calls give -EALREADY.  Returns as
 * conc_future_result.
 */
CONC_API int conc_future_result_take(conc_future *f, void **value, size_t *len,
                                     double timeout);
CONC_API int conc_future_result_take_until(conc_future *f, void **value, size_t *len,
                                           int64_t deadline);

/*
 * conc_future_exception - Future.exception(timeout): wait until the future
 * is done, then give its exception: *err gets the code (0 when the call
 * succeeded) and *detail its detail (0 when none; see the top of this
 * file); either may be NULL.  Returns 0 when the future finished (with a
 * result or an exception); -ECANCELED when it was cancelled (or the calling
 * coroutine killed); -EAGAIN (timeout 0) or -ETIMEDOUT when not done in
 * time; -EINVAL for NULL f or a bad timeout.
 */
CONC_API int conc_future_exception(conc_future *f, int *err, int *detail, double timeout);
CONC_API int conc_future_exception_until(conc_future *f, int *err, int *detail,
                                         int64_t deadline);

/*
 * conc_future_wait - AsyncResult.wait(timeout): wait until the future is
 * done (finished or cancelled), whatever the outcome.  Returns 0 once done;
 * -EAGAIN (timeout 0) or -ETIMEDOUT when not done in time; -ECANCELED when
 * the calling coroutine was killed; -EINVAL for NULL f or a bad timeout.
 */
CONC_API int conc_future_wait(conc_future *f, double timeout);
CONC_API int conc_future_wait_until(conc_future *f, int64_t deadline);

/*
 * conc_future_cancel - Future.cancel(): cancel the call unless it started.
 * A PENDING future becomes CANCELLED, its waiters wake (with -ECANCELED)
 * and its done callbacks run in the calling thread before this returns; the
 * producer will not run the call.
 * Returns 0 when the future is cancelled (now or before: Python's True);
 * -EBUSY when it is running and -EALREADY when it has finished (Python's
 * False); -EINVAL for NULL.
 */
CONC_API int conc_future_cancel(conc_future *f);

/*
 * conc_future_add_done_callback - Future.add_done_callback(fn): call
 * cb(f, arg) once the future is done (see the top of this file for where
 * and in what order); when it is done already, cb runs now, before this
 * returns.  A future holds no reference to arg.  Returns 0 (added, or run);
 * -EINVAL for NULL f or cb; -ENOMEM (cb was not added and will not run).
 */
CONC_API int conc_future_add_done_callback(conc_future *f, conc_future_cb cb, void *arg);

/*
 * conc_future_fd - a descriptor for poll/select/epoll that becomes readable
 * when the future is done, and stays readable.  An eventfd made on the
 * first call (later calls return the same one); a future whose fd was never
 * asked for pays nothing for it.  The future owns it: do not read, write or
 * close it; it is closed with the future.  conc_wait uses it for
 * CONC_WAIT_FUTURE entries.
 * Returns the descriptor (>= 0); -EMFILE, -ENFILE or -ENOMEM when it could
 * not be made (a later call tries again); -EINVAL for NULL.
 */
CONC_API int conc_future_fd(conc_future *f);

/* ----------------------------------------------------------- producers */

/*
 * conc_future_set_running - Future.set_running_or_notify_cancel(): the
 * producer is about to run the call.  Returns 0 when the future moved from
 * PENDING to RUNNING (run the call); -ECANCELED when it was cancelled (do
 * not run it); -EALREADY when it is running or finished already; -EINVAL
 * for NULL.
 */
CONC_API int conc_future_set_running(conc_future *f);

/*
 * conc_future_set_result - Future.set_result(value) with a pointer result:
 * finish the future (PENDING or RUNNING), wake its waiters, run its done
 * callbacks in the calling thread.  Returns 0; -ECANCELED when the future
 * was cancelled and -EALREADY when it finished already (the value is then
 * not stored, not dropped: it stays the caller's); -EINVAL for NULL.
 */
CONC_API int conc_future_set_result(conc_future *f, void *value);

/*
 * conc_future_set_result_bytes - conc_future_set_result with a copy of len
 * bytes at data as the result (data may be NULL when len is 0).  Returns as
 * conc_future_set_result; also -EINVAL for NULL data with len > 0, -ENOMEM
 * (the future stays unfinished).
 */
CONC_API int conc_future_set_result_bytes(conc_future *f, const void *data, size_t len);

/*
 * conc_future_set_result_owned - conc_future_set_result with buf (from
 * malloc, len bytes) as the result: the future takes the buffer over and
 * frees it unless a consumer takes it.  On any error the buffer stays the
 * caller's.  Returns as conc_future_set_result; also -EINVAL for NULL buf
 * with len > 0.
 */
CONC_API int conc_future_set_result_owned(conc_future *f, void *buf, size_t len);

/*
 * conc_future_set_exception - Future.set_exception(exc): finish the future
 * with the error code err (negative) and its detail (see the top of this
 * file), wake its waiters, run its done callbacks in the calling thread.
 * Returns 0; -ECANCELED when the future was cancelled; -EALREADY when it
 * finished already; -EINVAL for NULL or err >= 0.
 */
CONC_API int conc_future_set_exception(conc_future *f, int err, int detail);

/* ------------------------------------------------- several futures */

/* What conc_future_wait_many waits for (return_when). */
typedef enum conc_future_when {
    CONC_FIRST_COMPLETED = 1,   /* any future done */
    CONC_FIRST_EXCEPTION = 2,   /* any future finished with an exception,
                                   or all done */
    CONC_ALL_COMPLETED = 3      /* all done */
} conc_future_when;

/*
 * conc_future_wait_many - concurrent.futures.wait(fs, timeout,
 * return_when): wait until the n futures fs[] meet `when` (a cancelled
 * future counts as done, not as an exception).  Then, when done is not
 * NULL, done[i] tells whether fs[i] was done (Python's done set; the
 * others are its not_done set); this is filled on a timeout too.  The same
 * future may appear more than once.
 * Returns how many of fs[] are done (>= 0) once `when` holds; -EAGAIN
 * (timeout 0) or -ETIMEDOUT when it did not hold in time (Python returns
 * the two sets then: done[] has them); -ECANCELED when the calling
 * coroutine was killed; -EINVAL for NULL fs with n > 0, a NULL entry, an
 * unknown `when` or a bad timeout; -ENOMEM.  With n == 0 it returns 0 at
 * once.
 */
CONC_API int conc_future_wait_many(conc_future *const *fs, size_t n, conc_future_when when,
                                   bool *done, double timeout);
CONC_API int conc_future_wait_many_until(conc_future *const *fs, size_t n,
                                         conc_future_when when, bool *done,
                                         int64_t deadline);

/*
 * conc_as_completed - concurrent.futures.as_completed(fs): an iterator that
 * gives each of a set of futures once, as they become done (first those
 * done already, then in the order they finish or are cancelled).  It holds
 * a reference to each future until it is freed.
 *
 * Python's as_completed(fs, timeout) counts its timeout from the call: get
 * that by computing one deadline (conc_deadline) and passing it to every
 * conc_as_completed_next_until.
 */
typedef struct conc_as_completed conc_as_completed;

/*
 * conc_as_completed_new - an iterator over the n futures fs[] (duplicates
 * are given once).  Returns 0 and sets *out; -EINVAL for a NULL out, NULL
 * fs with n > 0 or a NULL entry; -ENOMEM.
 */
CONC_API int conc_as_completed_new(conc_as_completed **out, conc_future *const *fs, size_t n);

/*
 * conc_as_completed_next - the next future to be done: waits until one of
 * the futures not given yet is done.  Returns 1 and sets *f (borrowed from
 * the iterator: valid until conc_as_completed_free, or longer with a
 * reference of your own); 0 when every future has been given
 * (StopIteration); -EAGAIN (timeout 0) or -ETIMEDOUT when none became done
 * in time (a later call may still give them all); -ECANCELED when the
 * calling coroutine was killed; -EINVAL for NULL it or f, or a bad timeout.
 */
CONC_API int conc_as_completed_next(conc_as_completed *it, conc_future **f, double timeout);
CONC_API int conc_as_completed_next_until(conc_as_completed *it, conc_future **f,
                                          int64_t deadline);

/* conc_as_completed_free - drop the iterator and its references.  NULL is
 * fine. */
CONC_API void conc_as_completed_free(conc_as_completed *it);

#ifdef __cplusplus
}
#endif
#endif /* CONC_FUTURE_H */
