/*
 * conc/broker_executor.h - concurrent.futures.Executor across machines, on
 * RabbitMQ: a client submits calls by function name, workers on any
 * machine run them, and each call's result comes back as a conc future
 * (conc/future.h).  Part of libconc_broker (link conc_broker).
 *
 * The parts.
 *   - A work queue (a durable quorum queue, "conc.tasks" unless named),
 *     shared by every client and worker that name it.  A task is one
 *     persistent message: the function name, the argument bytes, the task
 *     id and the client's reply queue.
 *   - Workers (conc_broker_worker_*) register functions by name and take
 *     tasks from the work queue, at most `prefetch` unacknowledged at a
 *     time.  A worker acknowledges a task after it has sent the task's
 *     result, so a worker that dies mid-task (kill -9, a lost machine)
 *     gives the task back and the broker delivers it to another worker.
 *   - Each client (conc_broker_executor_*) has its own reply queue, made
 *     by the broker, exclusive to the client's connection and deleted with
 *     it: results for a client that is gone are dropped by the broker, they
 *     do not pile up.  A result names its task by id (the AMQP correlation
 *     id); the client completes each future once and drops a second result
 *     for the same task (a task run again after its worker died between
 *     sending the result and acknowledging it).
 *   - A task that has been delivered max_deliveries times (each time its
 *     worker died: a task that kills workers) is not run again: the next
 *     worker to receive it moves it to the dead-letter queue
 *     ("<work queue>.dead") and fails its future with -ECHILD, the detail
 *     being the number of deliveries.  The work queue's delivery limit
 *     (x-delivery-limit) backs this up, so the task cannot circulate for
 *     ever.  Every client and worker of one work queue must use the same
 *     max_deliveries: the broker refuses to declare a queue with other
 *     arguments (-EEXIST).
 *
 * What a future gives.  The function's result bytes (conc_future_result,
 * conc_future_result_take), or its exception:
 *   the function's own negative return value   it failed
 *   -EPROTO     it returned a positive value, or a worker sent a malformed
 *               result
 *   -ENOENT     no worker that took the task knows the function's name
 *   -ECHILD     the task was dead-lettered after killing workers (detail:
 *               deliveries)
 *   -EMSGSIZE   the result was larger than CONC_BROKER_TASK_MAX
 *   -EPIPE      the client's connection to the broker was lost, or the
 *               executor was freed, before the result came
 * A future can be cancelled (conc_future_cancel) until its result comes;
 * the task still runs, its result is dropped.
 *
 * Threads and coroutines.  An executor may be used by any number of
 * threads at once; it runs one thread of its own that receives results and
 * finishes futures (done callbacks run there).  Waiting on a future from a
 * coroutine parks only the coroutine.  A worker is driven by one thread (or
 * coroutine) at a time, the one in conc_broker_worker_run, whose waits park
 * only the calling coroutine; conc_broker_worker_stop may be called from
 * any thread or a signal handler.
 *
 * Connections.  Each executor and each worker has its own AMQP connection,
 * from a URL amqp://user:password@host:port/vhost (the defaults guest,
 * guest, localhost, 5672 and "/" as in rabbitmq-c's amqp_parse_url; an
 * empty vhost, "amqp://host/", is "/" too).  The executor's connection
 * has AMQP heartbeats (30 s), answered by its result thread; a worker's
 * has none, since a task may run longer than the broker waits for one,
 * and TCP keepalives find a broker that is gone instead.  The
 * connection does not come back after a broker restart: the executor then
 * fails its unfinished futures with -EPIPE and later submits give -EPIPE;
 * a worker's run returns -EPIPE.  Make a new one.
 *
 * Python reference: concurrent.futures.Executor.submit and Future, with
 * the call named by a string (as Celery and RQ do) and its argument and
 * result as bytes.
 */
#ifndef CONC_BROKER_EXECUTOR_H
#define CONC_BROKER_EXECUTOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "conc/errors.h"
#include "conc/future.h"
#include "conc/time.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The largest argument or result, in bytes: RabbitMQ's default
 * max_message_size (128 MiB). */
#define CONC_BROKER_TASK_MAX ((size_t)128 << 20)

/* The longest function name, in bytes (an AMQP short string). */
#define CONC_BROKER_NAME_MAX 255

/* The work queue used when none is named. */
#define CONC_BROKER_DEFAULT_QUEUE "conc.tasks"

typedef struct conc_broker_executor conc_broker_executor;
typedef struct conc_broker_worker conc_broker_worker;

/* Options of an executor; all-zero (or NULL) means the defaults. */
typedef struct conc_broker_executor_opts {
    uint32_t size;          /* sizeof(conc_broker_executor_opts), or 0 */
    const char *queue;      /* the work queue; NULL: CONC_BROKER_DEFAULT_QUEUE */
    int max_deliveries;     /* deliveries before a task is dead-lettered;
                               0: 3 */
    double connect_timeout; /* seconds for connecting, logging in and
                               declaring the queues; 0: 10 */
} conc_broker_executor_opts;

#define CONC_BROKER_EXECUTOR_OPTS_INIT { .size = sizeof(conc_broker_executor_opts) }

/*
 * conc_broker_executor_new - connect to the broker at url, declare the work
 * queue and its dead-letter queue (if they are not there yet), make the
 * client's reply queue and start the thread that receives results.
 * Returns 0 and sets *out; -EINVAL for a NULL out or url, a url that does
 * not parse (or amqps://, which the executor does not speak), a queue name
 * longer than 200 bytes, max_deliveries < 0 or a bad connect_timeout;
 * -ECONNREFUSED when nothing listens there; -EHOSTUNREACH when the host
 * name does not resolve; -EACCES for a wrong user or password, or a vhost
 * the user may not use; -ETIMEDOUT when the broker did not answer in time;
 * -EEXIST when the work queue exists with other arguments (another
 * max_deliveries, or not a quorum queue); -EPROTO for another refusal by
 * the broker; -ENOMEM; the error of starting a thread.
 */
CONC_API int conc_broker_executor_new(conc_broker_executor **out, const char *url,
                                      const conc_broker_executor_opts *opts);

/*
 * conc_broker_executor_submit - Executor.submit(fn, arg): send a task that
 * calls the function registered under the name fn with the len bytes at
 * data (NULL with len 0 for none).  Returns at once (it waits for no
 * worker); *out gets a new PENDING future that the caller frees
 * (conc_future_free), finished when the result comes (see the top of this
 * file for what it gives).
 * Returns 0; -EINVAL for a NULL ex, fn or out, an empty fn or one longer
 * than CONC_BROKER_NAME_MAX, NULL data with len > 0; -EMSGSIZE when len
 * passes CONC_BROKER_TASK_MAX; -EPIPE when the connection is lost; -ENOMEM.
 */
CONC_API int conc_broker_executor_submit(conc_broker_executor *ex, const char *fn,
                                         const void *data, size_t len, conc_future **out);

/* conc_broker_executor_pending - how many submitted tasks wait for their
 * result (0 for NULL). */
CONC_API size_t conc_broker_executor_pending(const conc_broker_executor *ex);

/* conc_broker_executor_reply_queue - the name of the client's reply queue,
 * made by the broker (valid until the executor is freed); "" for NULL. */
CONC_API const char *conc_broker_executor_reply_queue(const conc_broker_executor *ex);

/*
 * conc_broker_executor_free - close the connection (the broker deletes the
 * reply queue: results still to come are dropped), stop the result thread
 * and fail every unfinished future with -EPIPE (their owners still hold
 * them).  Tasks already sent stay in the work queue and are still run.
 * Wait for the futures first (conc_future_wait_many) to have their results.
 * Not from a done callback of its own futures (they run on the thread this
 * call stops).  NULL is fine.
 */
CONC_API void conc_broker_executor_free(conc_broker_executor *ex);

/* ---------------------------------------------------------------- workers */

/*
 * A task function: data/len are the task's argument bytes (data is NULL
 * when len is 0; do not keep them after returning), arg what was given at
 * registration.  Return 0 and, for a non-empty result, set *result to a
 * buffer from malloc holding *result_len bytes (the worker frees it after
 * sending), or leave *result NULL for an empty one; or return a negative
 * errno, which becomes the future's exception (a result buffer is then
 * freed).  A positive return is sent as -EPROTO.
 */
typedef int (*conc_broker_fn)(const void *data, size_t len, void **result,
                              size_t *result_len, void *arg);

/* Options of a worker; all-zero (or NULL) means the defaults. */
typedef struct conc_broker_worker_opts {
    uint32_t size;          /* sizeof(conc_broker_worker_opts), or 0 */
    const char *queue;      /* the work queue; NULL: CONC_BROKER_DEFAULT_QUEUE */
    int max_deliveries;     /* as conc_broker_executor_opts (the same value
                               for every client and worker of the queue);
                               0: 3 */
    int prefetch;           /* tasks delivered and not yet acknowledged, at
                               most (AMQP basic.qos); 0: 1 */
    double connect_timeout; /* as conc_broker_executor_opts; 0: 10 */
} conc_broker_worker_opts;

#define CONC_BROKER_WORKER_OPTS_INIT { .size = sizeof(conc_broker_worker_opts) }

/*
 * conc_broker_worker_new - connect to the broker at url and declare the
 * work queue and its dead-letter queue.  No task is taken before
 * conc_broker_worker_run.  Returns 0 and sets *out; the errors of
 * conc_broker_executor_new (prefetch < 0 or > 65535 is -EINVAL too).
 */
CONC_API int conc_broker_worker_new(conc_broker_worker **out, const char *url,
                                    const conc_broker_worker_opts *opts);

/*
 * conc_broker_worker_register - run fn(data, len, result, result_len, arg)
 * for the tasks that name `name`.  Register before run (not while it runs).
 * Registering a name again replaces its function.  Returns 0; -EINVAL for
 * NULL w, name or fn, an empty name or one longer than
 * CONC_BROKER_NAME_MAX; -EBUSY while run runs; -ENOMEM.
 */
CONC_API int conc_broker_worker_register(conc_broker_worker *w, const char *name,
                                         conc_broker_fn fn, void *arg);

/*
 * conc_broker_worker_run - take tasks from the work queue and run them, one
 * at a time, until conc_broker_worker_stop, or until the timeout.  Each
 * task's result (or error: -ENOENT for a name nobody registered) goes to
 * its client's reply queue before the task is acknowledged.
 * Returns 0 after a stop (a task that was running has finished and been
 * acknowledged; the others delivered to this worker go back to the queue
 * when it is freed); -ETIMEDOUT when the timeout passed (-EAGAIN for
 * timeout 0 after running what was there at once); -EPIPE when the
 * connection was lost; -EBUSY when another thread runs it; -ECANCELED when
 * the calling coroutine was killed; -EINVAL for NULL w or a bad timeout;
 * -ENOMEM.  It may be called again after any of these but -EPIPE.
 */
CONC_API int conc_broker_worker_run(conc_broker_worker *w, double timeout);
CONC_API int conc_broker_worker_run_until(conc_broker_worker *w, int64_t deadline);

/*
 * conc_broker_worker_stop - make conc_broker_worker_run return after the
 * task it runs (or at once when it waits), now or at its next call.  Safe
 * from any thread and from a signal handler.  Returns 0; -EINVAL for NULL.
 */
CONC_API int conc_broker_worker_stop(conc_broker_worker *w);

/* conc_broker_worker_tasks - how many tasks this worker has run and
 * acknowledged (0 for NULL). */
CONC_API uint64_t conc_broker_worker_tasks(const conc_broker_worker *w);

/*
 * conc_broker_worker_free - close the connection (the tasks delivered to
 * this worker and not acknowledged go back to the queue) and free the
 * worker.  Not while run runs.  NULL is fine.
 */
CONC_API void conc_broker_worker_free(conc_broker_worker *w);

#ifdef __cplusplus
}
#endif
#endif /* CONC_BROKER_EXECUTOR_H */
