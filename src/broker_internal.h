/*
 * broker_internal.h - the connection and queue records of libconc_broker
 * (conc/broker.h), shared by broker.c (connection, frames, reconnection)
 * and broker_queue.c (queues, puts, gets, subscriptions).
 */
#ifndef CONC_BROKER_INTERNAL_H
#define CONC_BROKER_INTERNAL_H

#include <amqp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "conc/broker.h"
#include "internal.h"
#include "wait_source.h"

#define BK_HIDDEN __attribute__((visibility("hidden")))

#define BK_CH_PUB 1             /* puts and publishes, in confirm mode */
#define BK_CH_CTL 2             /* declarations, qsize, deletes */
#define BK_CH_FIRST_QUEUE 3     /* one channel per consuming queue */
#define BK_CH_MAX 2047          /* RabbitMQ's default channel_max */

/* A message delivered by the broker and not yet taken by get. */
struct bk_msg {
    struct bk_msg *next;
    conc_broker_msg m;
    size_t want;                /* body bytes announced by the header */
    bool have_header;
};

/* An exchange declared through this connection (declared again after a
 * reconnection). */
struct bk_exchange {
    struct bk_exchange *next;
    char name[256];
    conc_broker_exchange_kind kind;
    bool transient;
};

struct conc_broker_queue {
    const struct conc__wait_source *ws;     /* first: conc_wait's hook */
    conc_broker *b;
    struct conc_broker_queue *next;         /* b's list of queues */
    char name[256];                         /* "" until a server-named one
                                               is declared */
    bool server_named;                      /* a subscription */
    char exchange[256];                     /* subscriptions: the exchange */
    conc_broker_exchange_kind kind;
    char **patterns;
    size_t npatterns;
    conc_broker_queue_opts opts;            /* its strings are dlx and dlk */
    char *dlx, *dlk;
    uint64_t declared_epoch;                /* connection epoch it was
                                               declared in */
    uint16_t channel;                       /* its channel, once opened */
    uint64_t chan_epoch;                    /* connection epoch of channel */
    bool chan_open;
    bool chan_held;                         /* the broker may hold the
                                               channel open: its number is
                                               not free to use again */
    uint64_t cgen;                          /* +1 at each channel opening */
    bool consuming;
    bool get_empty;                         /* basic.get-empty came */
    bool cancelled;                         /* the broker cancelled the
                                               consumer (queue deleted) */
    int chan_err;                           /* why its channel was closed */
    struct bk_msg *head, *tail, *partial;   /* delivered, not yet taken */
    size_t nlocal;
    uint64_t refused;                       /* deliveries rejected unread
                                               (atomic) */
    /* Deliveries refused for want of memory, held (each keeps its
     * prefetch slot, so the broker does not send them straight back) and
     * given back to the queue at held_until; the pause doubles at each
     * such refusal in a row, up to a bound, and starts again from its
     * least once a delivery fits. */
    uint64_t *held;                         /* their delivery tags */
    size_t nheld, held_cap;                 /* held_cap: the prefetch */
    int64_t held_until;
    int64_t held_pause;                     /* ns */
    uint64_t *taken;                        /* delivery tags taken, not done */
    uint64_t *taken_epoch;
    size_t ntaken, taken_cap;
    /* task_done's acknowledgements, sent in batches: every delivery of
     * the channel up to ack_tag is done (one basic.ack, multiple=true). */
    uint64_t ack_tag;
    uint64_t ack_when;                      /* its channel's stamp */
    unsigned ack_n;                         /* done, not yet sent */
};

/* Frames built by conc (rabbitmq-c encodes only the methods and the
 * properties), waiting to be sent on a socket that never blocks: the
 * queue's connection and the executor's client and worker connections
 * frame their publishes (and the executor its acknowledgements) here, so
 * a full socket is waited for through conc's wait layer and never inside
 * rabbitmq-c.  Only whole frames are added. */
struct bk_out {
    unsigned char *buf;
    size_t len, cap;
};

struct conc_broker {
    amqp_connection_state_t c;              /* NULL while down */
    int fd;
    void *tls;                              /* amqps: the TLS session
                                               (OpenSSL's SSL) conc writes
                                               its frames into; NULL over
                                               plain TCP */
    /* Where and how to connect. */
    char *host, *user, *pass, *vhost, *cacert, *cert, *key;
    int port;
    bool ssl;
    conc_broker_opts opts;
    double heartbeat;                       /* seconds, 0: off */
    /* State of the connection. */
    bool ever_up;
    int last_err;                           /* why it went down / failed */
    uint64_t epoch;                         /* +1 at each connection made */
    uint64_t reconnects;
    int64_t next_try;                       /* back-off: no attempt before */
    double backoff;
    bool pub_open, ctl_open;
    int pub_err, ctl_err;                   /* why the channel closed */
    /* The queue channel numbers in use on this connection (bit n:
     * channel n): a freed queue's number is used again, so a connection
     * that makes and frees queues for ever never runs out. */
    uint64_t chan_used[(BK_CH_MAX + 64) / 64];
    /* Publisher confirms on BK_CH_PUB. */
    uint64_t pub_gen;                       /* +1 whenever the channel resets */
    uint64_t pub_seq;                       /* last sequence number sent */
    uint64_t pub_confirmed;                 /* all <= this are settled */
    uint8_t *win;                           /* settled flags above it */
    size_t win_cap;
    uint64_t *nacked;                       /* nacked seqs not yet reported */
    size_t nnacked, nacked_cap;
    bool async_lost;                        /* async puts lost with a reset */
    int async_err;                          /* and why */
    bool poll_call;                         /* the call has timeout 0: one
                                               connection attempt at most */
    /* Async publishes framed here (rabbitmq-c encodes their methods and
     * properties) and sent many to one send(), plain TCP only. */
    struct bk_out out;
    int64_t hb_sent;                        /* rabbitmq-c's last send
                                               (bk_read_gate) */
    bool out_small;                         /* out holds an acknowledgement,
                                               rejection or close-ok framed
                                               while reading */
    bool corked;                            /* TCP_CORK set on fd: a stream
                                               of async publishes goes out
                                               in full segments until the
                                               connection next waits */
    uint64_t async_gen, async_upto;         /* the async puts to flush */
    bool async_pending;
    /* A reply awaited on some channel (one at a time). */
    uint16_t want_ch;
    amqp_method_number_t want_id;
    bool got;
    int rpc_err;                            /* the awaited channel closed */
    uint32_t got_count;                     /* queue.declare-ok's count */
    char got_name[256];                     /* queue.declare-ok's name */
    /* Declared things. */
    struct bk_exchange *exchanges;
    struct conc_broker_queue *queues;
};

/* broker.c */
BK_HIDDEN int bk_ensure_up(conc_broker *b, int64_t deadline);
BK_HIDDEN int bk_pump(conc_broker *b, int64_t deadline);
BK_HIDDEN int bk_rpc(conc_broker *b, uint16_t ch, amqp_method_number_t id, void *args,
                     amqp_method_number_t reply, int64_t deadline);
BK_HIDDEN int bk_channel_open(conc_broker *b, uint16_t ch, int64_t deadline);
BK_HIDDEN int bk_ctl_ready(conc_broker *b, int64_t deadline);
BK_HIDDEN int bk_pub_ready(conc_broker *b, int64_t deadline);
BK_HIDDEN void bk_lost(conc_broker *b, int err);
BK_HIDDEN int bk_status_err(int status);
BK_HIDDEN void bk_cork(conc_broker *b, bool on);
BK_HIDDEN int64_t bk_before_wait(conc_broker *b);
BK_HIDDEN int bk_out_flush(conc_broker *b);
BK_HIDDEN int bk_out_flush_until(conc_broker *b, int64_t deadline);
BK_HIDDEN int bk_out_publish(conc_broker *b, uint16_t ch, amqp_bytes_t exchange,
                             amqp_bytes_t key, const amqp_basic_properties_t *p,
                             amqp_bytes_t body, bool with_body);
BK_HIDDEN int bk_send_small(conc_broker *b, uint16_t ch, amqp_method_number_t id, void *args,
                            bool now);
BK_HIDDEN int bk_out_body_until(conc_broker *b, uint16_t ch, amqp_bytes_t body,
                                int64_t deadline);
/* Frame building and sending on any connection (broker.c). */
BK_HIDDEN int bk_frame_method(struct bk_out *o, uint16_t ch, amqp_method_number_t id,
                              void *args);
BK_HIDDEN int bk_frame_publish(struct bk_out *o, size_t frame_max, uint16_t ch,
                               amqp_bytes_t exchange, amqp_bytes_t key, bool mandatory,
                               const amqp_basic_properties_t *p, amqp_bytes_t body,
                               bool with_body);
BK_HIDDEN void bk_out_drop_channel(struct bk_out *o, uint16_t ch);
/* Sending on a connection's socket, fd, which never blocks: over TLS
 * (tls: bk_tls_session, not NULL) the bytes are encrypted into that
 * session. */
BK_HIDDEN int bk_send_some(int fd, void *tls, struct iovec **iov, int *n, short *want);
BK_HIDDEN int bk_sendv_until(int fd, void *tls, struct iovec *iov, int n, int64_t deadline);
/* Makes the close of fd, a connection given up, reset it (RST) instead of
 * ending it: a broker may keep a TLS connection whose last record came cut
 * open for ever after a plain close (with the deliveries it holds). */
BK_HIDDEN void bk_reset_on_close(int fd);
/* Whether a read of c (rabbitmq-c's) may go on without blocking the
 * thread.  rabbitmq-c sends a heartbeat from inside a read once the
 * heartbeat interval passed since its own last send (it does not see
 * conc's), and waits for room for it with no deadline.  So conc sends
 * them: from half the interval on, one goes through rabbitmq-c (resetting
 * its count) when the socket fd has room, which 8 bytes then never wait
 * for; without room a read is safe only while rabbitmq-c's own is not
 * about to come due.  *last is when rabbitmq-c last sent (conc_now; set
 * when the connection is made).  Returns 1 (read), 0 (wait for room
 * first), or -ECONNRESET (the heartbeat failed). */
BK_HIDDEN int bk_read_gate(amqp_connection_state_t c, int fd, int64_t *last);
/* The largest body a publish copies into the connection's buffer (one body
 * frame below the smallest frame_max, 4096); a larger one is sent from the
 * caller's bytes. */
#define BK_OBUF_BODY_MAX 4000
/* Async publishes are sent once this much is framed. */
#define BK_OBUF_SEND 32768

/* broker_queue.c */
BK_HIDDEN int bk_queue_declare(conc_broker_queue *q, int64_t deadline);
BK_HIDDEN int bk_exchange_declare_one(conc_broker *b, const struct bk_exchange *e,
                                      int64_t deadline);
BK_HIDDEN void bk_queue_deliver(conc_broker *b, uint16_t ch, const amqp_frame_t *f);
BK_HIDDEN void bk_queue_channel_closed(conc_broker_queue *q, int err);
BK_HIDDEN void bk_queue_reset(conc_broker_queue *q);
BK_HIDDEN void bk_queue_flush_acks(conc_broker_queue *q);
BK_HIDDEN void bk_channels_reset(conc_broker *b);
BK_HIDDEN int64_t bk_queue_release_held(conc_broker_queue *q, bool all);
/* The pause before a delivery refused for want of memory goes back to the
 * queue (ns): the least, doubled at each refusal in a row up to the
 * most. */
#define BK_HELD_PAUSE_MIN 10000000LL
#define BK_HELD_PAUSE_MAX 1000000000LL
/* Allocates a delivery's record and its body (malloc): a pointer so that
 * a test linked with the static library can make it fail, to follow the
 * no-memory path. */
BK_HIDDEN extern void *(*bk_delivery_alloc)(size_t n);

/* Logs in to the broker on c with PLAIN and the given limits, asking for
 * consumer cancel notices besides rabbitmq-c's own capabilities (broker.c;
 * the executor's connections use it too). */
BK_HIDDEN amqp_rpc_reply_t conc__broker_login(amqp_connection_state_t c, const char *vhost,
                                              int frame_max, int heartbeat, const char *user,
                                              const char *pass);

/* Where and how to connect (broker.c; the executor's connections too). */
struct bk_target {
    const char *host, *vhost, *user, *pass;
    const char *cacert, *cert, *key;    /* TLS files, or NULL */
    int port;
    bool ssl, insecure;
    int heartbeat;                      /* seconds asked for, 0: none */
    int frame_max;
};

/* The TLS session (OpenSSL's SSL, rabbitmq-c's, alive as long as the
 * connection) of c, a connection conc__broker_open made over TLS: conc
 * writes its own frames into it (bk_send_some).  Not for a plain TCP
 * connection. */
BK_HIDDEN void *bk_tls_session(amqp_connection_state_t c);

/* Connects to t and logs in (PLAIN, with consumer cancel notices) within
 * deadline.  Every wait parks only the calling coroutine: the TCP connect
 * and the AMQP handshake wait through conc's wait layer, a host name is
 * looked up and a TLS connection made (rabbitmq-c does both only
 * blocking) through conc_offload.  Returns 0 and sets *out;
 * -ECONNREFUSED, -EHOSTUNREACH, -ENETUNREACH, -ETIMEDOUT, -ECANCELED,
 * -EACCES (refused credentials or vhost), -EKEYREJECTED (TLS peer not
 * trusted), -EPROTONOSUPPORT (TLS setup), -EPROTO (not AMQP 0-9-1),
 * -ECONNRESET (dropped during the handshake), -ENOMEM. */
BK_HIDDEN int conc__broker_open(const struct bk_target *t, int64_t deadline,
                                amqp_connection_state_t *out);

#endif /* CONC_BROKER_INTERNAL_H */
