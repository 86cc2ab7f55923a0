/*
 * conc/broker.h - queues and publish/subscribe across machines on RabbitMQ
 * (AMQP 0-9-1, through rabbitmq-c): the conc queue calls (put, get,
 * get_nowait, qsize, task_done) on a queue that lives in a broker, is
 * persisted by it and is shared by processes on any machine.
 *
 * This header belongs to a library of its own, libconc_broker (pkg-config
 * conc-broker), which links libconc and rabbitmq-c; libconc itself depends
 * on nothing but the C library.
 *
 * Connections.  conc_broker_new connects to a URL
 * (amqp://user:password@host:port/vhost, or amqps:// with the server's
 * certificate verified), negotiates heartbeats, and keeps what the client
 * declared (queues, exchanges, bindings, consumers, prefetch) so that it can
 * declare it again after a reconnection.  When the connection is lost (the
 * broker restarted, the network failed, heartbeats stopped), the next call
 * reconnects, with a back-off between attempts (opts.retry_min doubling up
 * to opts.retry_max), for as long as its own timeout allows; when the time
 * runs out while the broker is still unreachable, the call gives the
 * connection's error (-ECONNREFUSED, -ECONNRESET, -EHOSTUNREACH, ...), not
 * -ETIMEDOUT, so a stopped broker is told apart from an empty queue.  A
 * put whose confirmation was lost with the connection gives -ECONNRESET:
 * the broker may or may not have the message (publish again if duplicates
 * are acceptable).  Messages taken by get but not yet acknowledged when the
 * connection is lost go back to the queue in the broker and are delivered
 * again (redelivered = true); their task_done then does nothing.
 *
 * Timeouts follow conc/time.h: every call that talks to the broker takes a
 * timeout in seconds (CONC_FOREVER blocks, 0 tries once without waiting for
 * the network: -EAGAIN when that is not enough) or, in its _until form, an
 * absolute CLOCK_MONOTONIC deadline in ns.  Connecting, logging in and
 * reconnecting are bounded too.  A wrong user or password gives -EACCES, a
 * broker that is down -ECONNREFUSED, quickly, never a hang.
 *
 * Coroutines: every wait for the broker goes through conc's wait layer:
 * called from a conc coroutine, a call parks only that coroutine.  That
 * includes the TCP connect and the AMQP handshake of a (re)connection; a
 * host name lookup and a TLS connection, which rabbitmq-c and the C
 * library do only blocking, run on a worker thread through conc_offload,
 * so they park the coroutine too.  Sends do not block: a publish is
 * framed here and written without blocking (over amqps:// conc encrypts
 * it into the connection's TLS session, rabbitmq-c's), and a socket found
 * full (a large message, or a broker that throttles its publishers or
 * stopped reading) is waited for through the wait layer until the call's
 * deadline; a put that runs out of time while its message is going out
 * gives -ETIMEDOUT and drops the connection (the message may have gone out
 * cut, which the broker discards), and the next call makes it again.
 * Acknowledgements, rejections and requests are framed and written the
 * same way (task_done, ack and reject wait for room for 30 s at most, then
 * drop the connection, and the broker gives the delivery back).  RabbitMQ
 * keeps a TLS connection cut in the middle of a record open until its
 * heartbeats lapse (twice the heartbeat interval), with the deliveries it
 * holds: they come back then.
 *
 * Threads: a connection, and everything made from it, is used by one thread
 * (or one coroutine) at a time; use one connection per thread (connections
 * are cheap for the broker, and each is an independent stream of
 * confirmations).  Nothing in this library installs signal handlers or
 * starts threads of its own.
 *
 * Messages are bytes.  Puts are persistent (delivery mode 2) on durable
 * queues by default, and return once the broker confirmed them (publisher
 * confirms); conc_broker_queue_put_async plus conc_broker_flush pipeline a
 * stream of puts so it does not wait for each confirmation.
 *
 * Errors (besides the connection's, above): -EINVAL for bad arguments;
 * -EMSGSIZE for a message larger than opts.max_message; -ENOENT when a
 * queue or exchange does not exist (a passive declare, a publish to an
 * unknown exchange); -EEXIST when a declaration conflicts with an existing
 * queue or exchange of other properties; -EPERM when the user may not use a
 * resource; -EBUSY for an exclusive queue another connection owns; -EIO when
 * the broker rejected a message (a negative confirmation) or broke the
 * protocol; -ENOMEM.
 */
#ifndef CONC_BROKER_H
#define CONC_BROKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "conc/errors.h"
#include "conc/time.h"

#ifdef __cplusplus
extern "C" {
#endif

/* conc_broker - an opaque handle: one AMQP connection to a broker. */
typedef struct conc_broker conc_broker;

/* conc_broker_queue - an opaque handle: a queue in the broker, as seen by
 * one connection (it puts into it and takes from it). */
typedef struct conc_broker_queue conc_broker_queue;

/* Options for conc_broker_new; all-zero (or NULL) means the defaults. */
typedef struct conc_broker_opts {
    uint32_t size;          /* sizeof(conc_broker_opts), or 0: the first
                               version */
    double connect_timeout; /* seconds for a TCP connect plus login
                               (0: 10 s); a call's own timeout also bounds
                               it */
    double heartbeat;       /* seconds between heartbeats (0: 10 s; a
                               negative value turns them off) */
    double retry_min;       /* first pause between reconnection attempts
                               (0: 0.1 s) */
    double retry_max;       /* longest pause between attempts (0: 5 s) */
    bool no_reconnect;      /* true: a lost connection stays lost; calls
                               give -ENOTCONN (after the one that saw the
                               loss gave its error) */
    size_t max_message;     /* largest message put or accepted, in bytes
                               (0: 128 MiB, RabbitMQ's own default limit) */
    const char *cacert;     /* amqps: the CA certificates (PEM file) that
                               verify the server (NULL: the system's) */
    const char *cert;       /* amqps: a client certificate (PEM), or NULL */
    const char *key;        /* amqps: the client certificate's key (PEM) */
    bool insecure;          /* amqps: do not verify the server (tests
                               only) */
} conc_broker_opts;

#define CONC_BROKER_OPTS_INIT { .size = sizeof(conc_broker_opts) }

/*
 * conc_broker_new - connect to the broker at url and log in.  url is
 * amqp://[user[:password]@]host[:port][/vhost] (defaults guest, guest,
 * localhost, 5672, "/"; "%2f" in the vhost is "/"), or amqps://... (port
 * 5671) for TLS with the server's certificate and host name verified.
 * Returns 0 and stores the handle in *out; -EINVAL for a NULL out or url, a
 * URL that does not parse, or bad options; -EPROTONOSUPPORT for amqps when
 * the TLS setup fails; -EKEYREJECTED when the server's certificate is not
 * accepted (unknown CA, wrong host); -ECONNREFUSED (nothing listens), -EHOSTUNREACH,
 * -ENETUNREACH, -ETIMEDOUT (no answer within the timeout); -EACCES for a
 * wrong user or password, or a vhost the user may not open; -EPROTO when
 * the peer does not speak AMQP 0-9-1; -ENOMEM.
 */
CONC_API int conc_broker_new(conc_broker **out, const char *url,
                             const conc_broker_opts *opts);
CONC_API int conc_broker_new_until(conc_broker **out, const char *url,
                                   const conc_broker_opts *opts, int64_t deadline);

/*
 * conc_broker_free - close the connection (politely when it is up, within
 * a short bound) and free it.  Its queues must have been freed first.
 * Messages taken but not acknowledged go back to their queues in the
 * broker.  NULL is fine.
 */
CONC_API void conc_broker_free(conc_broker *b);

/*
 * conc_broker_flush - wait until the broker has confirmed every message put
 * with conc_broker_queue_put_async or conc_broker_publish_async on this
 * connection.  Returns 0; -EIO when the broker rejected one or more of them
 * since the last flush (all the others were confirmed); -ECONNRESET when
 * the connection was lost before all were confirmed (the unconfirmed ones
 * may or may not be in the broker); -ENOENT when one went to an exchange
 * that does not exist (the broker then drops the rest of the stream's
 * unconfirmed messages); -ETIMEDOUT (-EAGAIN for timeout 0); -EINVAL.
 */
CONC_API int conc_broker_flush(conc_broker *b, double timeout);
CONC_API int conc_broker_flush_until(conc_broker *b, int64_t deadline);

/* conc_broker_reconnects - how many times the connection was made again
 * after a loss (0 for NULL). */
CONC_API uint64_t conc_broker_reconnects(const conc_broker *b);

/* Options for conc_broker_queue_new and conc_broker_subscribe; all-zero
 * (or NULL) means the defaults. */
typedef struct conc_broker_queue_opts {
    uint32_t size;          /* sizeof(conc_broker_queue_opts), or 0 */
    bool simple;            /* SimpleQueue-style: a message is acknowledged
                               as get hands it out (no task_done) */
    bool transient;         /* the queue is not durable and its messages
                               are not persistent (they do not survive a
                               broker restart; faster) */
    bool passive;           /* only check that the queue exists (-ENOENT
                               when not); its properties are left alone */
    bool exclusive;         /* owned by this connection and deleted with it
                               (conc_broker_subscribe always sets it) */
    bool auto_delete;       /* deleted once its last consumer is gone */
    uint16_t prefetch;      /* unacknowledged messages the broker sends
                               ahead to this consumer (0: 16; simple
                               queues: 64) */
    /* Fields added after the first version (read when size covers them). */
    uint32_t delivery_limit;    /* > 0: a quorum queue (replicated, always
                                   durable, never exclusive) whose messages
                                   delivered more than this many times
                                   (their consumers died or rejected them)
                                   are dead-lettered instead of delivered
                                   again; get reports delivery_count */
    const char *dead_letter_exchange; /* NULL: none; where dead messages go
                                   ("" the default exchange, with
                                   dead_letter_key naming a queue) */
    const char *dead_letter_key;      /* NULL: the message's own key */
    double message_ttl;         /* > 0: messages expire after this many
                                   seconds in the queue (dead-lettered when
                                   there is a dead-letter exchange) */
    double expires;             /* > 0: the queue is deleted after this many
                                   seconds without consumers or use */
} conc_broker_queue_opts;

#define CONC_BROKER_QUEUE_OPTS_INIT { .size = sizeof(conc_broker_queue_opts) }

/*
 * conc_broker_queue_new - declare the queue name in the broker (durable
 * unless opts.transient; created when it does not exist) and make a handle
 * for it on connection b.  name is 1 to 255 bytes.  The handle starts
 * consuming at its first get that may wait (or conc_wait), so a handle
 * that only puts, or only polls with get_nowait (a basic.get each),
 * holds no messages.  Returns 0 and stores the handle in *out; -EINVAL for a
 * NULL argument, a bad name or options; -EEXIST when the queue exists with
 * other properties (durable or not, exclusive...); -ENOENT (opts.passive)
 * when it does not exist; -EBUSY when another connection owns it
 * exclusively; the connection's errors; -ETIMEDOUT; -ENOMEM.
 */
CONC_API int conc_broker_queue_new(conc_broker_queue **out, conc_broker *b,
                                   const char *name,
                                   const conc_broker_queue_opts *opts,
                                   double timeout);

/*
 * conc_broker_queue_free - stop consuming (messages taken and not
 * acknowledged go back to the queue, to be delivered again with the
 * redelivered flag) and free the handle.  The queue stays in the broker
 * (unless it is exclusive or auto-deleted).  NULL is fine.
 */
CONC_API void conc_broker_queue_free(conc_broker_queue *q);

/*
 * conc_broker_queue_delete - delete the queue from the broker with every
 * message in it (queue.delete), then free the handle as
 * conc_broker_queue_free does (also when the delete fails).  Returns 0; the
 * connection's errors; -ETIMEDOUT; -EINVAL for NULL.
 */
CONC_API int conc_broker_queue_delete(conc_broker_queue *q, double timeout);

/* conc_broker_queue_name - the queue's name in the broker (for a
 * subscription, the name the broker chose); valid while q lives.  NULL for
 * NULL. */
CONC_API const char *conc_broker_queue_name(const conc_broker_queue *q);

/*
 * conc_broker_queue_put - Queue.put(item): put len bytes of data into the
 * queue and return once the broker confirmed it (it is then on disk for a
 * durable queue).  A broker queue is unbounded.  Returns 0; -EMSGSIZE when
 * len exceeds opts.max_message or the broker's own limit (its
 * max_message_size); -EIO when the broker rejected it;
 * -ECONNRESET when the connection was lost before the confirmation (the
 * message may or may not be in the queue); the connection's errors while
 * the broker stays unreachable; -ETIMEDOUT when no confirmation came in
 * time (the message may still arrive), or when the broker did not read the
 * message in time (the connection is dropped, see Coroutines above);
 * -EAGAIN when timeout is 0 and the
 * confirmation was not there at once; -EINVAL for a NULL q, a NULL data
 * with len > 0, or a bad timeout.
 */
CONC_API int conc_broker_queue_put(conc_broker_queue *q, const void *data, size_t len,
                                   double timeout);
CONC_API int conc_broker_queue_put_until(conc_broker_queue *q, const void *data,
                                         size_t len, int64_t deadline);

/*
 * conc_broker_queue_put_async - send a put without waiting for the
 * broker's confirmation: the confirmations of a stream of puts come back
 * while later ones are sent, and conc_broker_flush waits for them all (the
 * way to put a stream quickly).  Small messages are batched: a message may
 * stay in the connection's buffer until the next call on the connection
 * that waits for the broker (conc_broker_flush, a put, a get that waits,
 * ...) or until 32 KiB are buffered.  Returns 0 once the message is handed
 * to the connection; -EMSGSIZE; the connection's errors (the message was not
 * sent); -ETIMEDOUT when the connection could not be (re)made in time, or
 * when the broker did not read what was sent in time (the connection is
 * dropped: conc_broker_flush then gives -ECONNRESET for the puts not yet
 * confirmed); -EINVAL.
 */
CONC_API int conc_broker_queue_put_async(conc_broker_queue *q, const void *data,
                                         size_t len, double timeout);

/* A message taken with get.  Release it with conc_broker_msg_clear. */
typedef struct conc_broker_msg {
    void *data;             /* the bytes (malloc'ed, owned by the message;
                               one extra 0 byte follows them) */
    size_t len;             /* how many */
    bool redelivered;       /* the broker delivered it before (to a consumer
                               that died, or lost its connection, before
                               acknowledging it) */
    uint64_t tag;           /* its delivery tag (conc_broker_queue_ack) */
    char routing_key[256];  /* the key it was published with (the queue's
                               name for a put; the topic for a publish) */
    char exchange[256];     /* the exchange it came through ("" for a put) */
    char correlation_id[256];   /* as published (conc_broker_publish_props),
                                   or "" */
    char reply_to[256];         /* as published, or "" */
    uint32_t delivery_count;    /* quorum queues: how many times it was
                                   delivered before (0 the first time,
                                   whatever x-delivery-count header its
                                   publisher set: the broker's count is
                                   read only when `redelivered`); other
                                   queues: 0 */
} conc_broker_msg;

/* conc_broker_msg_clear - free a message's data and zero it.  NULL and a
 * zeroed message are fine. */
CONC_API void conc_broker_msg_clear(conc_broker_msg *m);

/*
 * conc_broker_queue_get - Queue.get(timeout): take the next message,
 * waiting up to timeout for one, and store it in *out (which the caller
 * clears).  On a queue that is not simple, the message stays
 * unacknowledged in the broker until conc_broker_queue_task_done (or
 * conc_broker_queue_ack): if this consumer dies first, the broker gives it
 * to another consumer with redelivered set.  At most opts.prefetch
 * messages are taken and unacknowledged at a time: the broker sends no
 * more until some are acknowledged.  Returns 0; -EAGAIN (timeout 0: nothing
 * was there at once) or -ETIMEDOUT when no message came in time; the
 * connection's errors while the broker stays unreachable; -ENOENT when the
 * queue was deleted; -EMFILE when the connection has no channel left for
 * the queue (each handle that gets has a channel of its own while it
 * lives, up to the broker's channel_max, 2047 at most, less two; a freed
 * handle's channel is used again); -EINVAL for NULL arguments or a bad
 * timeout; -ENOMEM.  *out is written only on success.
 */
CONC_API int conc_broker_queue_get(conc_broker_queue *q, conc_broker_msg *out,
                                   double timeout);
CONC_API int conc_broker_queue_get_until(conc_broker_queue *q, conc_broker_msg *out,
                                         int64_t deadline);
/* conc_broker_queue_get_nowait - Queue.get_nowait(): get with timeout 0. */
CONC_API int conc_broker_queue_get_nowait(conc_broker_queue *q, conc_broker_msg *out);

/*
 * conc_broker_queue_task_done - JoinableQueue.task_done(): the oldest
 * message taken by get and not yet done is finished: acknowledge it, so the
 * broker forgets it.  Returns 0 (also when that message's connection was
 * lost since: the broker delivers it again); -EOVERFLOW when no message
 * taken is waiting for it (Python's ValueError); -EINVAL for NULL or a
 * simple queue; the connection's errors.
 */
CONC_API int conc_broker_queue_task_done(conc_broker_queue *q);

/*
 * conc_broker_queue_ack - acknowledge the message with delivery tag tag (out
 * of order, unlike task_done), or, when requeue is given to
 * conc_broker_queue_reject, give it back.  Return what task_done returns;
 * -ENOENT when no message taken has that tag.
 */
CONC_API int conc_broker_queue_ack(conc_broker_queue *q, uint64_t tag);
CONC_API int conc_broker_queue_reject(conc_broker_queue *q, uint64_t tag, bool requeue);

/*
 * conc_broker_queue_qsize - Queue.qsize(): how many messages the queue holds
 * and the broker could deliver now (it asks the broker; messages delivered
 * and not yet acknowledged are not counted).  Returns the count (>= 0);
 * the connection's errors; -ETIMEDOUT; -EINVAL.
 */
CONC_API int64_t conc_broker_queue_qsize(conc_broker_queue *q, double timeout);

/* conc_broker_queue_unfinished - how many messages get took that are not
 * yet done (task_done, ack or reject).  0 for NULL. */
CONC_API size_t conc_broker_queue_unfinished(const conc_broker_queue *q);

/* conc_broker_queue_refused - how many deliveries this queue handle
 * refused without handing them out: a message larger than max_message
 * (rejected without requeue: it goes to the queue's dead-letter exchange,
 * or the broker discards it when there is none), one whose body did not
 * match its announced size (likewise) -- neither holds a prefetch slot,
 * so the messages behind it keep coming -- or one the client had no
 * memory for.  That one is held, with its prefetch slot, and given back
 * to the queue (requeued, delivered again with redelivered set) after a
 * pause of 10 ms that doubles, up to 1 s, while such refusals go on, so
 * that it does not come straight back while memory stays short; a get
 * that waits gives it back when the pause is over, and conc_wait reports
 * a handle that holds one as ready.  0 for NULL. */
CONC_API uint64_t conc_broker_queue_refused(const conc_broker_queue *q);

/* Exchange kinds for publish/subscribe. */
typedef enum conc_broker_exchange_kind {
    CONC_BROKER_FANOUT = 0, /* every subscriber gets every message */
    CONC_BROKER_TOPIC = 1,  /* subscribers match the topic with patterns:
                               dot-separated words, "*" one word, "#" zero
                               or more */
    CONC_BROKER_DIRECT = 2  /* subscribers name the exact routing key */
} conc_broker_exchange_kind;

/*
 * conc_broker_exchange_declare - declare exchange name (1 to 255 bytes,
 * not starting with "amq.") of the given kind, durable unless transient.
 * Returns 0; -EEXIST when it exists with another kind or durability; -EINVAL;
 * the connection's errors; -ETIMEDOUT.
 */
CONC_API int conc_broker_exchange_declare(conc_broker *b, const char *name,
                                          conc_broker_exchange_kind kind,
                                          bool transient, double timeout);

/*
 * conc_broker_publish - publish len bytes to exchange under topic (the
 * routing key, up to 255 bytes; ignored by a fanout exchange) and return
 * once the broker confirmed it.  Every subscription whose pattern matches
 * gets a copy; with none, the message is dropped (still confirmed).  The
 * exchange must have been declared (by anyone).  Returns what
 * conc_broker_queue_put returns, and -ENOENT for an unknown exchange.
 */
CONC_API int conc_broker_publish(conc_broker *b, const char *exchange, const char *topic,
                                 const void *data, size_t len, double timeout);
/* conc_broker_publish_async - publish without waiting for the confirmation
 * (see conc_broker_queue_put_async and conc_broker_flush). */
CONC_API int conc_broker_publish_async(conc_broker *b, const char *exchange,
                                       const char *topic, const void *data, size_t len,
                                       double timeout);

/* Message properties for conc_broker_publish_props; all-zero (or NULL)
 * means none. */
typedef struct conc_broker_props {
    uint32_t size;              /* sizeof(conc_broker_props), or 0 */
    const char *correlation_id; /* up to 255 bytes, or NULL */
    const char *reply_to;       /* up to 255 bytes (a queue name), or NULL */
    double expiration;          /* > 0: the broker drops (or dead-letters)
                                   the message after this many seconds in a
                                   queue */
    bool transient;             /* not persistent (delivery mode 1) */
} conc_broker_props;

#define CONC_BROKER_PROPS_INIT { .size = sizeof(conc_broker_props) }

/*
 * conc_broker_publish_props - conc_broker_publish with message properties
 * (a correlation id and a reply-to queue for request/reply, an expiration),
 * to exchange ("" is the default exchange, which routes to the queue named
 * by topic).  Returns what conc_broker_publish returns, and -EINVAL for a
 * property over 255 bytes or a bad expiration.
 */
CONC_API int conc_broker_publish_props(conc_broker *b, const char *exchange, const char *topic,
                                       const void *data, size_t len,
                                       const conc_broker_props *props, double timeout);
/* conc_broker_publish_props_async - the same without waiting for the
 * confirmation (see conc_broker_flush). */
CONC_API int conc_broker_publish_props_async(conc_broker *b, const char *exchange,
                                             const char *topic, const void *data, size_t len,
                                             const conc_broker_props *props, double timeout);

/*
 * conc_broker_subscribe - subscribe to exchange (declaring it, of the given
 * kind and durable, when it does not exist) with n patterns: a new
 * exclusive queue, named by the broker and deleted with the connection or
 * the handle, bound with each pattern (a topic exchange's pattern, a
 * direct exchange's key; a fanout exchange needs none, n may be 0).  Take
 * the messages with conc_broker_queue_get like any queue (the topic is in
 * the message's routing_key); opts.simple acknowledges them as they are
 * taken.  Returns 0 and stores the handle in *out; -EEXIST when the
 * exchange exists with another kind; -EINVAL for NULL arguments, a pattern
 * over 255 bytes or NULL patterns with n > 0; the connection's errors;
 * -ETIMEDOUT; -ENOMEM.
 */
CONC_API int conc_broker_subscribe(conc_broker_queue **out, conc_broker *b,
                                   const char *exchange, conc_broker_exchange_kind kind,
                                   const char *const *patterns, size_t n,
                                   const conc_broker_queue_opts *opts, double timeout);

#ifdef __cplusplus
}
#endif
#endif /* CONC_BROKER_H */
