/*
 * conc/offload.h - run a blocking foreign call on a worker thread and park
 * only the calling coroutine until it returns (gevent's
 * get_hub().threadpool.apply(fn, args)).
 *
 * conc's own blocking calls park only the calling coroutine (see
 * conc/coro.h).  Code conc does not control - a library doing blocking I/O,
 * getaddrinfo, a long computation, a plain read(2) on a descriptor that
 * cannot be polled - blocks the whole thread and every coroutine in it.
 * conc_offload runs such a call, fn(arg), on one of a process-wide pool of
 * worker threads; the calling coroutine parks and the other coroutines of
 * its thread keep running until fn returns.  Called from a plain thread (or
 * a thread without a hub) it works the same way and blocks that thread
 * until fn returns (fn still runs on a worker, so timeouts hold).
 *
 * Workers: made lazily, when a call finds more calls queued than workers
 * idle, up to conc_offload_max_workers (by default 4 per CPU the process may
 * use, at least CONC_OFFLOAD_MIN_DEFAULT and at most
 * CONC_OFFLOAD_MAX_DEFAULT); calls beyond that wait in a first-in, first-out
 * queue.  A worker with nothing to do for conc_offload_idle_timeout seconds
 * (CONC_OFFLOAD_IDLE_DEFAULT) exits, so an idle process has none.  Workers
 * run with every signal blocked (handlers run in the application's threads)
 * and are plain threads: they are not listed by conc_thread_enumerate, and
 * a process's exit does not wait for them (a call still running then ends
 * with the process).  A forked child has no workers and an empty queue; its
 * first call starts new ones.
 *
 * fn runs exactly once for every call that was accepted (every return but
 * -EINVAL, -ENOMEM and the -EAGAIN of a call with a timeout other than 0),
 * even when the caller stops waiting: a coroutine killed while it waits
 * sees -ECANCELED, a timeout gives -ETIMEDOUT (timeout 0: -EAGAIN), and fn
 * runs (or keeps running) to completion on its worker;
 * its result is then dropped.  So arg must stay valid until fn returns, not
 * only until conc_offload returns: when the caller may give up, let fn own
 * arg, or pass an abandon callback (conc_offload_opts_until) that receives
 * arg and the result on the worker once fn has returned, to release them.  A call
 * that completes at the same moment as a kill or timeout returns 0 with its
 * result: a result is never lost.
 *
 * fn must not use the calling coroutine's hub or its coroutines (it runs in
 * another thread); conc calls made in fn block the worker thread, which is
 * fine.
 */
#ifndef CONC_OFFLOAD_H
#define CONC_OFFLOAD_H

#include <stddef.h>
#include <stdint.h>
#include "conc/errors.h"
#include "conc/time.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The call to run on a worker; its return value is the call's result. */
typedef void *(*conc_offload_fn)(void *arg);

/* Options for conc_offload_opts_until; all-zero (or NULL) means the
 * defaults. */
typedef struct conc_offload_opts {
    uint32_t size;          /* sizeof(conc_offload_opts), or 0: this first
                               version (every field here) */
    /* Called on the worker, once fn has returned, when the caller stopped
     * waiting (killed, timed out): release arg and the result here.  NULL:
     * nothing is called and the result is dropped. */
    void (*abandon)(void *arg, void *result);
} conc_offload_opts;

/* conc reads a field only when size covers it; CONC_OFFLOAD_OPTS_INIT
 * fills size. */
#define CONC_OFFLOAD_OPTS_INIT { .size = sizeof(conc_offload_opts) }

/* Defaults of the worker pool (see above). */
#define CONC_OFFLOAD_MIN_DEFAULT   8      /* workers at least, whatever the CPUs */
#define CONC_OFFLOAD_MAX_DEFAULT   256    /* workers at most by default */
#define CONC_OFFLOAD_IDLE_DEFAULT  10     /* seconds before an idle worker exits */

/*
 * conc_offload - run fn(arg) on a worker thread and wait until it returns:
 * in a coroutine of a hub thread only that coroutine parks; elsewhere the
 * thread blocks.  timeout in seconds (CONC_FOREVER: no limit; 0: hand the
 * call over and do not wait: unless fn has already returned, -EAGAIN, and fn
 * runs on as after a timeout).  Honours the enclosing timeout scopes
 * (conc_hub_timeout_push) of the calling coroutine.  Returns 0 and stores fn's
 * return value in *result (unless result is NULL); -EAGAIN with timeout 0
 * when fn has not returned at once; -ETIMEDOUT when the timeout passed
 * first; -ECANCELED when the calling coroutine was killed while it waited
 * (in these three cases fn runs to completion anyway, see above); -EINVAL
 * for a NULL fn or a bad timeout; -ENOMEM; -EAGAIN when no worker thread
 * exists and none can be started (fn does not run: with timeout 0 the two
 * -EAGAIN cannot be told apart, so pass an abandon callback, which runs
 * only for a call that was accepted, or use a timeout).
 */
CONC_API int conc_offload(conc_offload_fn fn, void *arg, void **result, double timeout);

/* conc_offload_until - conc_offload with an absolute CLOCK_MONOTONIC
 * deadline in ns (CONC_NO_DEADLINE for none); a deadline already passed
 * hands the call over and gives -ETIMEDOUT unless fn has returned. */
CONC_API int conc_offload_until(conc_offload_fn fn, void *arg, void **result,
                                int64_t deadline);

/* conc_offload_opts_until - conc_offload_until with options (an abandon
 * callback; NULL: the defaults). */
CONC_API int conc_offload_opts_until(conc_offload_fn fn, void *arg, void **result,
                                     int64_t deadline, const conc_offload_opts *opts);

/* conc_offload_max_workers - the most worker threads that may run at
 * once. */
CONC_API long conc_offload_max_workers(void);

/*
 * conc_offload_set_max_workers - set that limit (when lowered, surplus
 * workers exit once their call returns).  Returns 0; -EINVAL for n <= 0.
 */
CONC_API int conc_offload_set_max_workers(long n);

/* conc_offload_idle_timeout - how many seconds a worker waits for work
 * before it exits. */
CONC_API double conc_offload_idle_timeout(void);

/*
 * conc_offload_set_idle_timeout - set that time (0: workers exit as soon
 * as the queue is empty).  Returns 0; -EINVAL for a negative value or NaN.
 */
CONC_API int conc_offload_set_idle_timeout(double seconds);

/* Counters of the worker pool, process-wide. */
typedef struct conc_offload_stats {
    size_t workers;         /* worker threads alive */
    size_t idle;            /* of which waiting for work */
    size_t queued;          /* calls waiting for a worker */
    size_t max_workers;     /* conc_offload_max_workers */
} conc_offload_stats;

/* conc_offload_get_stats - fill *out.  Returns 0; -EINVAL for NULL. */
CONC_API int conc_offload_get_stats(conc_offload_stats *out);

#ifdef __cplusplus
}
#endif
#endif /* CONC_OFFLOAD_H */
