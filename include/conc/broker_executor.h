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
 *     id and the client's reply queue.  A client sends tasks with publisher
 *     confirms, pipelined: submit returns once the task is handed to the
 *     connection, the broker's confirmations come back while more tasks are
 *     sent, and the client keeps each task until its confirmation came.  A
 *     task the broker refuses (a negative confirmation) fails its future
 *     with -EIO; one it cannot route (the work queue was deleted) with
 *     -ENOENT.
 *   - Workers (conc_broker_worker_*) register functions by name and take
 *     tasks from the work queue, at most `prefetch` unacknowledged at a
 *     time.  A worker acknowledges a task once the broker has confirmed the
 *     task's result, so a worker that dies mid-task (kill -9, a lost
 *     machine) gives the task back and the broker delivers it to another
 *     worker.
 *   - Each client (conc_broker_executor_*) has its own reply queue,
 *     "<work queue>.reply.<16 hex digits>" (random), durable and not
 *     exclusive, so that results sent while the client is away (a broker
 *     restart, a lost network) wait for it; it expires (x-expires) once no client used it
 *     for result_expires seconds, so results for a client that is gone do
 *     not pile up, and conc_broker_executor_free deletes it.  A result
 *     names its task by id (the AMQP correlation id: the client's sequence
 *     number and a keyed hash of it, so that only who saw the task can name
 *     it; a result naming no task of the client's is dropped and counted,
 *     conc_broker_executor_rejected); the client completes
 *     each future once and drops a second result for the same task (a task
 *     run again after its worker died between sending the result and
 *     acknowledging it, or a task sent again after a reconnection).
 *   - A task that has been delivered max_deliveries times (each time its
 *     worker died: a task that kills workers) is not run again: the next
 *     worker to receive it moves it to the dead-letter queue
 *     ("<work queue>.dead") and fails its future with -ECHILD, the detail
 *     being the number of deliveries (the broker's count, read only on a
 *     redelivery: a publisher's own x-delivery-count header on a first
 *     delivery is ignored).  The work queue's delivery limit
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
 *   -EACCES     a worker refused the task: its tag did not check under
 *               the worker's authkey (see Trust)
 *   -EIO        the broker refused the task (a negative confirmation)
 *   -ENOENT     (also) the broker could not route the task: no work queue
 *   -EPIPE      the client's connection to the broker was lost for longer
 *               than reconnect_timeout, its reply queue expired while it
 *               was away, or the executor was freed, before the result
 *               came
 * A future can be cancelled (conc_future_cancel) until its result comes;
 * the task still runs, its result is dropped.
 *
 * Threads and coroutines.  An executor may be used by any number of
 * threads at once; it runs one thread of its own that receives results and
 * finishes futures (done callbacks run there).  Waiting on a future from a
 * coroutine parks only the coroutine.  A worker is driven by one thread (or
 * coroutine) at a time, the one in conc_broker_worker_run, whose waits park
 * only the calling coroutine; conc_broker_worker_stop may be called from
 * any thread or a signal handler.  Connecting (in conc_broker_executor_new,
 * conc_broker_worker_new and a worker's reconnection) parks only a calling
 * coroutine too: the TCP connect, the AMQP handshake and the declarations
 * wait through conc's wait layer (a TLS connection is made on a worker
 * thread through conc_offload).  Tasks, results, acknowledgements and
 * rejections are framed by conc and written without blocking, over TLS
 * too (encrypted into the connection's TLS session): a full socket is
 * waited for through the wait layer.
 *
 * Connections.  Each executor and each worker has its own AMQP connection,
 * from a URL amqp://user:password@host:port/vhost (the defaults guest,
 * guest, localhost, 5672 and "/" as in rabbitmq-c's amqp_parse_url; an
 * empty vhost, "amqp://host/", is "/" too), or amqps://... (port 5671) for
 * TLS, the server's certificate and host name verified against opts.cacert
 * (or the system's CAs) unless opts.insecure, with an optional client
 * certificate (opts.cert, opts.key), as conc/broker.h does.  The
 * executor's connection has AMQP heartbeats (30 s), answered by its result
 * thread; a worker's has none, since a task may run longer than the broker
 * waits for one, and TCP keepalives find a broker that is gone instead.
 *
 * Reconnection.  A lost connection (a broker restart, a lost network) is
 * made again with a back-off (0.1 s doubling to 5 s between attempts),
 * declaring the queues again.  The executor's result thread does it for
 * as long as opts.reconnect_timeout allows (0: for ever); meanwhile
 * submit keeps taking tasks, and once connected again the client sends
 * every task the broker had not confirmed (in the order submitted) and
 * takes the results that waited in its reply queue: every future
 * completes, once.  When the reply queue expired while the client was
 * away, the futures of the tasks already confirmed fail with -EPIPE (their
 * results are lost).  When reconnect_timeout passes, or is negative (no
 * reconnection), the executor fails its unfinished futures with -EPIPE and
 * later submits give -EPIPE.  A worker's run makes its connection again
 * until its own timeout (and reconnect_timeout) runs out, then gives
 * -EPIPE; the task it ran when the connection was lost is delivered again
 * by the broker, to it or to another worker.
 *
 * Trust.  Anyone the broker lets use the vhost can read, take, publish to
 * and delete its queues: the broker's users and permissions decide who may
 * talk to the executor at all, and such a user can always stop work (take
 * or delete tasks).  Within that, without an authkey: a result completes a
 * future only when it names the task's id, which carries a keyed hash only
 * the client knows, so only who has seen the task (it is in the work queue)
 * can answer it; a worker sends results only to reply queues of the form
 * clients make, so a task cannot make it publish into another queue; but
 * any vhost publisher can send tasks, which workers run, and anyone who
 * reads the work queue can answer a task with a result of its own.  With
 * an authkey (the same bytes on every client and worker, as the manager's
 * authkey), each task and result carries an HMAC-SHA256 tag under the key
 * over everything the other side acts on (task id, function name, reply
 * queue and argument; task id, reply queue, error and result): a worker
 * runs only tasks whose tag checks (compared in constant time), and a
 * client completes a future only with a result whose tag checks.  A task
 * whose tag is missing or wrong is moved to the dead-letter queue unrun
 * and counted (conc_broker_worker_rejected); the worker answers it with an
 * untagged -EACCES, which fails the future with -EACCES.  A result whose
 * tag is missing or wrong is never used and counted
 * (conc_broker_executor_rejected): when it names a task of the client's
 * still pending, that future fails with -EACCES.  So a client and workers
 * whose keys differ, or a worker without a key (it runs every task and
 * sends untagged results), fail the futures clearly instead of leaving
 * them waiting: give every side the key.  Someone who has seen a task (it
 * read the work queue) can thus fail its future, never complete it with a
 * value of its own; such a reader can stop work anyway, by taking the
 * tasks.  The key is not sent; messages are not encrypted (use amqps://
 * for that).
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
    /* Fields added after the first version (read when size covers them). */
    double result_expires;  /* seconds the reply queue outlives its last
                               use by the client; 0: 300 */
    double reconnect_timeout;   /* seconds to keep making a lost connection
                                   again before failing the unfinished
                                   futures; 0: for ever; < 0: never
                                   reconnect */
    const char *cacert;     /* amqps: CA certificates (PEM file) that verify
                               the server; NULL: the system's */
    const char *cert;       /* amqps: a client certificate (PEM), or NULL */
    const char *key;        /* amqps: its key (PEM) */
    bool insecure;          /* amqps: do not verify the server (tests) */
    const void *authkey;    /* a secret shared with the workers (see Trust
                               below), copied; NULL: none */
    size_t authkey_len;     /* its length, 1 to 1024 bytes */
} conc_broker_executor_opts;

#define CONC_BROKER_EXECUTOR_OPTS_INIT { .size = sizeof(conc_broker_executor_opts) }

/*
 * conc_broker_executor_new - connect to the broker at url, declare the work
 * queue and its dead-letter queue (if they are not there yet), make the
 * client's reply queue and start the thread that receives results (and
 * reconnects).  Returns 0 and sets *out; -EINVAL for a NULL out or url, a
 * url that does not parse, a queue name longer than 200 bytes,
 * max_deliveries < 0, a bad connect_timeout, result_expires or
 * reconnect_timeout, an authkey_len of 0 with an authkey, or over 1024, or
 * a NULL authkey with a length; -EPROTONOSUPPORT when the TLS setup fails (a
 * certificate file that does not load); -EKEYREJECTED when the server's
 * certificate is not accepted (unknown CA, wrong host name);
 * -ECONNREFUSED when nothing listens there; -EHOSTUNREACH when the host
 * name does not resolve; -EACCES for a wrong user or password, or a vhost
 * the user may not use; -ETIMEDOUT when the broker did not answer in time;
 * -EEXIST when the work queue exists with other arguments (another
 * max_deliveries, or not a quorum queue); -EPROTO for another refusal by
 * the broker; -EPIPE when the broker dropped the connection while it was
 * being set up; -ECANCELED when the calling coroutine was killed; -ENOMEM;
 * the error of starting a thread.
 */
CONC_API int conc_broker_executor_new(conc_broker_executor **out, const char *url,
                                      const conc_broker_executor_opts *opts);

/*
 * conc_broker_executor_submit - Executor.submit(fn, arg): send a task that
 * calls the function registered under the name fn with the len bytes at
 * data (NULL with len 0 for none).  Returns once the task is written to
 * the connection (it waits for no worker, nor for the broker's
 * confirmation); *out gets a new PENDING future that the caller frees
 * (conc_future_free), finished when the result comes (see the top of this
 * file for what it gives).  While the connection is down the task waits in
 * the client and is sent once it is back.  The argument bytes are copied.
 * Sending never blocks a thread inside the library: when the socket is
 * full (a broker that reads slowly, or not at all), submit waits for room
 * through conc's wait layer, so from a coroutine only the coroutine waits,
 * and it holds no lock meanwhile that another caller (another coroutine of
 * the same hub, the result thread) would wait for.  When no byte of the
 * connection's pending frames goes out for 30 s, the connection is taken
 * for lost and made again (the task is kept and sent again).
 * Returns 0; -EINVAL for a NULL ex, fn or out, an empty fn or one longer
 * than CONC_BROKER_NAME_MAX, NULL data with len > 0; -EMSGSIZE when len
 * passes CONC_BROKER_TASK_MAX; -EPIPE when the executor gave up
 * reconnecting; -ECANCELED when the calling coroutine was killed while it
 * waited for room (the task is not submitted); -ENOMEM.
 */
CONC_API int conc_broker_executor_submit(conc_broker_executor *ex, const char *fn,
                                         const void *data, size_t len, conc_future **out);

/*
 * conc_broker_executor_submit_until - conc_broker_executor_submit that
 * waits for room in the socket until deadline (an absolute CLOCK_MONOTONIC
 * time in ns, CONC_NO_DEADLINE for none).  When the deadline passes before
 * the task's bytes are all written it gives -ETIMEDOUT and the task is not
 * submitted: no future is made, nothing of it runs.  Frames of its own not
 * yet begun are taken back; when part of the task was written the
 * connection is dropped (the broker drops a message cut short) and made
 * again, and the other tasks the broker had not confirmed are sent again
 * on the new one (each still completes once).  The other returns are
 * conc_broker_executor_submit's.
 */
CONC_API int conc_broker_executor_submit_until(conc_broker_executor *ex, const char *fn,
                                               const void *data, size_t len,
                                               int64_t deadline, conc_future **out);

/* conc_broker_executor_pending - how many submitted tasks wait for their
 * result (0 for NULL). */
CONC_API size_t conc_broker_executor_pending(const conc_broker_executor *ex);

/* conc_broker_executor_reply_queue - the name of the client's reply queue
 * (valid until the executor is freed); "" for NULL. */
CONC_API const char *conc_broker_executor_reply_queue(const conc_broker_executor *ex);

/* conc_broker_executor_reconnects - how many times the executor made its
 * connection again after a loss (0 for NULL). */
CONC_API uint64_t conc_broker_executor_reconnects(const conc_broker_executor *ex);

/* conc_broker_executor_rejected - how many results the executor did not
 * use because they named no task it made (a task id it did not make: each
 * id carries a keyed hash only this client knows), or, with an authkey,
 * their tag was missing or wrong (such a result fails its pending future
 * with -EACCES; a worker's untagged -EACCES refusal is not counted) (0 for
 * NULL).  A second result for a task of its own is not counted. */
CONC_API uint64_t conc_broker_executor_rejected(const conc_broker_executor *ex);

/*
 * conc_broker_executor_free - stop the result thread, delete the reply
 * queue (results still to come are dropped), close the connection
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
    /* Fields added after the first version (read when size covers them). */
    double reconnect_timeout;   /* seconds one run keeps making a lost
                                   connection again (its own timeout bounds
                                   it too); 0: no other bound; < 0: never
                                   reconnect (-EPIPE for good) */
    const char *cacert;     /* amqps: as conc_broker_executor_opts */
    const char *cert;
    const char *key;
    bool insecure;
    const void *authkey;    /* as conc_broker_executor_opts: the same key
                               as the clients'; NULL: none */
    size_t authkey_len;     /* 1 to 1024 bytes */
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
 * Before returning it waits (10 s at most) for the broker to confirm the
 * results sent and acknowledges their tasks.
 * Returns 0 after a stop (a task that was running has finished and been
 * acknowledged; the others delivered to this worker are run by the next
 * run, or go back to the queue when it is freed); -ETIMEDOUT when the
 * timeout passed (-EAGAIN for timeout 0 after running what was there at
 * once: a result still going out then, into a broker that reads slowly or
 * not at all, is given up with the connection over plain TCP, and its task
 * runs again; over amqps:// the rest is kept and sent first by the next
 * run, since RabbitMQ holds a TLS connection cut in the middle of a record
 * open, with its tasks); -EPIPE when the connection was lost and could not be made again
 * in time (see Reconnection above); -EACCES or -EEXIST when a
 * reconnection was refused; -EBUSY when another thread runs it;
 * -ECANCELED when the calling coroutine was killed; -EINVAL for NULL w or
 * a bad timeout; -ENOMEM.  It may be called again after any of these
 * (after -EPIPE only when reconnect_timeout is not negative).
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

/* conc_broker_worker_reconnects - how many times the worker made its
 * connection again after a loss (0 for NULL). */
CONC_API uint64_t conc_broker_worker_reconnects(const conc_broker_worker *w);

/* conc_broker_worker_rejected - how many tasks this worker moved to the
 * dead-letter queue without running them because it could not trust them:
 * no task id, a reply queue not of the form a client makes (a worker sends
 * results to clients' reply queues only), or, with an authkey, a tag
 * missing or wrong (0 for NULL). */
CONC_API uint64_t conc_broker_worker_rejected(const conc_broker_worker *w);

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
