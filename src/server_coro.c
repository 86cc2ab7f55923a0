/*
 * server_coro.c - the loops of the coroutine and reactor models: a
 * greenlet per connection on a hub (gevent's StreamServer), and callbacks
 * on a readiness loop with a write buffer per connection (no stack per
 * connection).  Each loop serves the shared listening socket in one
 * thread; `workers` loops run in threads of their own.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conc/cpool.h"
#include "conc/hub.h"
#include "conc/process.h"
#include "conc/selector.h"
#include "conc/time.h"
#include "conc/wait.h"
#include "server.h"
#include "socket.h"
#include "sys/sockcall.h"

#define ACCEPT_BATCH 64

/* The reactor's events per wait (epoll_wait's maxevents), as many as the
 * hand-written epoll server takes: at 1000 busy connections 256 made the
 * loop wait 2.7 times as often (each wait a system call). */
#define LOOP_EVENTS 1024

/* ---------------------------------------------------------- coroutine */

/* A request handed to a greenlet, counted in when it is handed over (a
 * drain waits for it even before the greenlet first runs). */
static void *gjob_main(void *arg)
{
    struct conc__server_job *j = arg;
    conc__server_serve_entered(j->s, j->c, &j->peer, j->len ? j->data : NULL, j->len, &j->slot);
    free(j);
    return NULL;
}

/* A job counted in. */
static struct conc__server_job *gjob_new(conc_server *s, conc_socket *c,
                                         const conc_sockaddr *peer, const void *data, size_t len)
{
    struct conc__server_job *j = conc__server_job_new(s, c, peer, data, len);
    if (!j)
        return NULL;
    conc__server_enter(s, &j->slot, c ? conc_socket_fd(c) : -1);
    return j;
}

/* A job whose greenlet could not be spawned: counted out (c stays the
 * caller's). */
static void gjob_drop(struct conc__server_job *j)
{
    conc__server_leave(j->s, &j->slot);
    free(j);
}

/* A connection's greenlet: the server's stack size and stack mode (its
 * own stack, or the hub's shared one, copied out while it is parked). */
static void spawn_opts(conc_server *s, conc_spawn_opts *so, conc_coro_opts *co)
{
    *co = (conc_coro_opts)CONC_CORO_OPTS_INIT;
    co->stack_size = s->o.stack_size;
    *so = (conc_spawn_opts)CONC_SPAWN_OPTS_INIT;
    so->coro = co;
    so->stack = s->o.stack ? s->o.stack : CONC_SERVER_STACK;
}

int conc__server_spawn(conc_server *s, conc_socket *c, const conc_sockaddr *peer,
                       const void *data, size_t len)
{
    struct conc__server_job *j = gjob_new(s, c, peer, data, len);
    if (!j)
        return -ENOMEM;
    conc_spawn_opts so;
    conc_coro_opts co;
    spawn_opts(s, &so, &co);
    conc_greenlet *g;
    int rc = conc_greenlet_spawn(&g, gjob_main, j, &so);
    if (rc < 0) {
        gjob_drop(j);
        return rc;
    }
    conc_greenlet_free(g);          /* it releases itself when done */
    return 0;
}

struct cloop {
    conc_server *s;
    conc_cpool *pool;
    struct conc__server_gate gate;  /* waits for room under max_connections */
    unsigned char *buf;             /* a datagram server's read buffer */
    size_t cap;
};

/* Takes one connection (c) or datagram (into l->buf, *len), waiting for
 * one as long as it takes: the socket layer tries, and after an EAGAIN
 * the hub waits for the listening socket edge-triggered (registered once,
 * no system call per wait).  0, -ECANCELED (killed), or another error. */
static int take(struct cloop *l, conc_socket **c, conc_sockaddr *peer, size_t *len)
{
    conc_server *s = l->s;
    memset(peer, 0, sizeof *peer);
    if (s->type == SOCK_STREAM) {
        int rc = conc_socket_accept_until(s->sock, c, peer, CONC_NO_DEADLINE);
        if (rc == 0)
            (*c)->preread = true;       /* its reads made by the hub (src/hub.c) */
        return rc;
    }
    *c = NULL;
    ssize_t n = conc_socket_recvfrom_until(s->sock, l->buf, l->cap, 0, peer,
                                           CONC_NO_DEADLINE);
    if (n < 0)
        return (int)n;
    *len = (size_t)n;
    return 0;
}

/* Takes room for one more connection under the server-wide limit,
 * parking while every loop's connections fill it.  0, or -ECANCELED
 * (killed). */
static int take_room(struct cloop *l)
{
    conc_server *s = l->s;
    while (!conc__server_reserve(s)) {
        if (conc__server_gate_arm(s, &l->gate))
            return 0;
        int rc = conc_fd_wait(l->gate.fd, POLLIN, CONC_FOREVER);
        if (rc == -ECANCELED)
            return rc;
    }
    return 0;
}

/* The acceptor greenlet: takes room under the connection limit (shared by
 * the server's loops), then a connection (or datagram), and spawns a
 * member of the pool for it, which gives the room back when it ends; it
 * lets the others run after every ACCEPT_BATCH taken without a wait. */
static void *acceptor_main(void *arg)
{
    struct cloop *l = arg;
    conc_server *s = l->s;
    conc_spawn_opts so;
    conc_coro_opts co;
    spawn_opts(s, &so, &co);
    bool room = false;
    for (int taken = 0;; taken++) {
        if (!room) {
            if (take_room(l) < 0)
                break;
            room = true;
        }
        if (taken == ACCEPT_BATCH) {
            taken = 0;
            if (conc_sleep(0) == -ECANCELED)
                break;
        }
        conc_socket *c;
        conc_sockaddr peer;
        size_t len = 0;
        int rc = take(l, &c, &peer, &len);
        if (rc == -ECANCELED || rc == -EBADF || rc == -ENOTSOCK || rc == -EINVAL)
            break;              /* killed, or the socket cannot serve */
        if (rc == -EMFILE || rc == -ENFILE || rc == -ENOBUFS || rc == -ENOMEM) {
            if (conc_sleep(0.01) == -ECANCELED)
                break;
            continue;
        }
        if (rc < 0)
            continue;
        atomic_fetch_add(&s->st->accepted, 1);
        if (s->h.verify_request && !s->h.verify_request(s, &peer, s->h.user)) {
            atomic_fetch_add(&s->st->refused, 1);
            if (c)
                conc_socket_free(c);
            continue;
        }
        if (c)
            conc_socket_set_timeout(c, s->o.request_timeout > 0 ? s->o.request_timeout
                                                                 : CONC_FOREVER);
        struct conc__server_job *j = gjob_new(s, c, &peer, l->buf, len);
        if (j) {
            j->slot.reserved = true;    /* the room goes with the job */
            room = false;
        }
        conc_greenlet *g;
        rc = j ? conc_cpool_spawn(l->pool, &g, gjob_main, j, &so, CONC_FOREVER) : -ENOMEM;
        if (rc < 0) {
            if (j)
                gjob_drop(j);
            if (rc != -ECANCELED)
                conc__server_dispatch_failed(s, c, &peer, l->buf, len, rc);
            else
                atomic_fetch_add(&s->st->failed, 1);
            if (c)
                conc_socket_free(c);
            if (rc == -ECANCELED)
                break;
            continue;
        }
        conc_greenlet_free(g);
    }
    if (room)
        conc__server_unreserve(s);
    return NULL;
}

int conc__server_coro_loop(conc_server *s, int extra_fd)
{
    struct cloop l = { .s = s, .gate = { .fd = -1 } };
    if (s->type == SOCK_DGRAM) {
        l.cap = s->o.max_datagram ? s->o.max_datagram : 8192;
        l.buf = malloc(l.cap);
        if (!l.buf)
            return -ENOMEM;
    }
    /* The pool has no bound of its own: the room each connection takes
     * (take_room) keeps the loops together within max_connections. */
    int rc = s->o.max_connections > 0 ? conc__server_gate_open(s, &l.gate) : 0;
    if (rc == 0)
        rc = conc_cpool_new(&l.pool, CONC_CPOOL_UNBOUNDED);
    if (rc < 0) {
        conc__server_gate_close(s, &l.gate);
        free(l.buf);
        return rc;
    }
    /* The acceptor runs between every two connections: a stack of its own
     * spares it the copies of a shared one. */
    conc_greenlet *acc;
    rc = conc_greenlet_spawn(&acc, acceptor_main, &l,
                             &(conc_spawn_opts){ .size = sizeof(conc_spawn_opts),
                                                 .stack = CONC_STACK_OWN });
    if (rc < 0) {
        conc_cpool_free(l.pool);
        conc__server_gate_close(s, &l.gate);
        free(l.buf);
        return rc;
    }
    if (s->worker_ready)
        atomic_store(s->worker_ready, 1);
    conc_waitable w[2] = {
        { .kind = CONC_WAIT_FD, .u.fd = s->stopfd },
        { .kind = CONC_WAIT_FD, .u.fd = extra_fd },
    };
    /* serve_forever's thread runs service_actions between its waits */
    int64_t service_at = conc__server_service_first(s);
    for (;;) {
        rc = conc_wait_until(w, extra_fd >= 0 ? 2 : 1, service_at);
        if (rc == -ETIMEDOUT) {
            conc__server_service_due(s, &service_at);
            continue;
        }
        if (rc >= 0 || rc == -ENOMEM)
            break;
    }
    rc = rc < 0 ? rc : 0;
    int64_t stop_at = conc_now();
    conc_greenlet_kill(acc);
    conc_greenlet_join(acc, CONC_FOREVER);
    conc_greenlet_free(acc);
    /* Graceful: the members finish, up to the shutdown timeout. */
    int64_t deadline = s->o.shutdown_timeout > 0
        ? stop_at + (int64_t)(s->o.shutdown_timeout * 1e9) : CONC_NO_DEADLINE;
    if (conc_cpool_join_until(l.pool, deadline) == -ETIMEDOUT) {
        conc__server_force(s);
        conc_cpool_join(l.pool, CONC_FOREVER);
    }
    conc_cpool_free(l.pool);
    conc__server_gate_close(s, &l.gate);
    conc_hub_free();
    free(l.buf);
    return rc;
}

/* --------------------------------------------------------- run loops */

struct loop_thread {
    conc_server *s;
    int (*loop)(conc_server *, int);
    int extra_fd;
    int rc;
    pthread_t t;
};

/* One loop, counted in conc_server_stats.workers while it runs. */
static int run_counted(conc_server *s, int (*loop)(conc_server *, int), int extra_fd)
{
    atomic_fetch_add(&s->st->workers, 1);
    int rc = loop(s, extra_fd);
    atomic_fetch_sub(&s->st->workers, 1);
    return rc;
}

static void *loop_thread_main(void *arg)
{
    struct loop_thread *lt = arg;
    lt->rc = run_counted(lt->s, lt->loop, lt->extra_fd);
    return NULL;
}

int conc__server_run_loops(conc_server *s, int (*loop)(conc_server *, int), int extra_fd)
{
    /* COROUTINE: a hub per CPU by default (gevent's StreamServer on every
     * core); REACTOR: one loop */
    int n = s->o.workers > 0 ? s->o.workers
          : s->o.model == CONC_SERVER_COROUTINE ? conc_process_cpu_count() : 1;
    if (n <= 1)
        return run_counted(s, loop, extra_fd);
    struct loop_thread *lt = calloc((size_t)n, sizeof *lt);
    if (!lt)
        return -ENOMEM;
    int started = 0, rc = 0;
    for (int i = 1; i < n; i++) {
        lt[i] = (struct loop_thread){ .s = s, .loop = loop, .extra_fd = extra_fd };
        int e = pthread_create(&lt[i].t, NULL, loop_thread_main, &lt[i]);
        if (e) {
            rc = -e;
            conc_server_shutdown(s);
            break;
        }
        started++;
    }
    int r0 = run_counted(s, loop, extra_fd);
    for (int i = 1; i <= started; i++) {
        pthread_join(lt[i].t, NULL);
        if (!rc && lt[i].rc < 0)
            rc = lt[i].rc;
    }
    free(lt);
    return rc ? rc : r0;
}

/* ------------------------------------------------------------ reactor */

struct rloop;

struct conc_server_conn {
    conc_server *s;
    struct rloop *l;
    int fd;
    conc_sockaddr peer;
    void *data;
    unsigned char *wbuf;
    size_t woff, wlen, wcap;        /* wbuf[woff .. woff + wlen) to send */
    size_t aoff, alen;              /* the loop's out[aoff .. aoff + alen):
                                       output of this batch (wlen is 0) */
    unsigned events;                /* registered for */
    int64_t last;                   /* idle_timeout: last sign of life */
    bool closing, dead, paused;
    bool queued;                    /* on the loop's flush list */
    int err;
    struct conc__server_slot slot;
    struct conc_server_conn *prev, *next;
    struct conc_server_conn *qnext; /* flush list */
};

struct rloop {
    conc_server *s;
    conc_selector *sel;
    struct conc_server_conn conns;  /* list head */
    size_t nconns;
    size_t wmax;
    int64_t idle;                   /* idle_timeout in ns; 0: none */
    bool listening;
    struct conc__server_gate gate;  /* waits for room under max_connections */
    bool gated;                     /* no room: the listener stays out until
                                       the gate opens */
    bool one;                       /* handle_request: one request */
    bool taken;                     /* one: the request came */
    struct conc_server_conn *dead;  /* freed after the batch */
    struct conc_server_conn *qhead, **qtail;  /* output to send after the
                                                 batch, oldest first */
    unsigned char *out;             /* the batch's output (OUT_CAP bytes) */
    size_t out_len;
};

static char listener_tag, stop_tag, extra_tag, gate_tag;

static void conn_update(struct conc_server_conn *c)
{
    if (c->dead)
        return;
    unsigned want = 0;
    if (!c->closing && !c->paused)
        want |= CONC_EVENT_READ;
    if (c->wlen)
        want |= CONC_EVENT_WRITE;
    if (want == c->events)
        return;
    if (want == 0) {
        /* closing with nothing left to send: closed after the batch */
        return;
    }
    if (conc_selector_modify(c->l->sel, c->fd, want, c) == 0)
        c->events = want;
}

/* Ends c: on_close, unregister, close; the memory goes after the batch. */
static void conn_end(struct conc_server_conn *c, int err)
{
    if (c->dead)
        return;
    c->dead = true;
    conc_server *s = c->s;
    struct rloop *l = c->l;
    if (s->rh.on_close)
        s->rh.on_close(c, err, s->rh.user);
    conc_selector_unregister(l->sel, c->fd, NULL);
    c->prev->next = c->next;
    c->next->prev = c->prev;
    l->nconns--;
    conc__server_leave_close(s, &c->slot, c->fd);
    c->fd = -1;
    atomic_fetch_add(&s->st->finished, 1);
    c->next = l->dead;
    l->dead = c;
}

static int wbuf_reserve(struct conc_server_conn *c, size_t len);

/* Moves c's output out of the loop's batch area into its own buffer (the
 * area is reused by the next batch).  Returns 0 or -ENOMEM. */
static int conn_spill(struct conc_server_conn *c)
{
    if (!c->alen)
        return 0;
    int rc = wbuf_reserve(c, c->alen);
    if (rc < 0)
        return rc;
    memcpy(c->wbuf + c->woff + c->wlen, c->l->out + c->aoff, c->alen);
    c->wlen += c->alen;
    c->alen = 0;
    return 0;
}

/* Sends base[*off .. *off + *len) on fd, advancing *off and *len by what
 * the socket took, until all went or the socket is full.  Returns 0, or
 * -errno of a send that failed. */
static int send_some(int fd, const unsigned char *base, size_t *off, size_t *len)
{
    while (*len) {
        ssize_t n = conc__send_nb(fd, base + *off, *len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            return -errno;
        }
        *off += (size_t)n;
        *len -= (size_t)n;
    }
    return 0;
}

/* Sends what is buffered (first what waits in the loop's batch area, then
 * the connection's own buffer); what the socket does not take stays in the
 * latter.  Returns 0, or an error that ends c. */
static int conn_flush(struct conc_server_conn *c)
{
    int rc = send_some(c->fd, c->l->out, &c->aoff, &c->alen);
    if (rc < 0)
        return rc;
    if (c->alen)
        return conn_spill(c);       /* the socket is full */
    rc = send_some(c->fd, c->wbuf, &c->woff, &c->wlen);
    if (rc == 0 && !c->wlen)
        c->woff = 0;
    return rc;
}

/* A write of at least this much with nothing buffered before it goes to
 * the socket at once rather than through the buffer (the copy would cost
 * more than the gathering saves). */
#define WRITE_DIRECT (64 * 1024)

/* The loop's area for a batch's output.  Replies written during a batch
 * wait there for their send, one after the other, rather than each in a
 * buffer of its connection's: with many connections a request then
 * touches one page of its connection's fewer (at 1000 connections each
 * page a request touches costs the kernel's path more than the copy), and
 * a connection holds no buffer while the socket takes its output.  What
 * a socket does not take, and output that does not fit, goes to the
 * connection's own buffer. */
#define OUT_CAP (256 * 1024)

/* Makes room in c's own buffer for len more bytes.  Returns 0 or -ENOMEM. */
static int wbuf_reserve(struct conc_server_conn *c, size_t len)
{
    if (c->woff + c->wlen + len <= c->wcap)
        return 0;
    if (c->woff) {
        memmove(c->wbuf, c->wbuf + c->woff, c->wlen);
        c->woff = 0;
    }
    if (c->wlen + len <= c->wcap)
        return 0;
    size_t cap = c->wcap ? c->wcap : 4096;
    while (cap < c->wlen + len)
        cap *= 2;
    unsigned char *nb = realloc(c->wbuf, cap);
    if (!nb)
        return -ENOMEM;
    c->wbuf = nb;
    c->wcap = cap;
    return 0;
}

/* Puts c on its loop's flush list, once. */
static void conn_queue(struct conc_server_conn *c)
{
    if (c->queued)
        return;
    c->queued = true;
    c->qnext = NULL;
    *c->l->qtail = c;
    c->l->qtail = &c->qnext;
}

int conc_server_conn_write(conc_server_conn *c, const void *data, size_t len)
{
    if (!c || (!data && len))
        return -EINVAL;
    if (c->dead || c->closing || c->err)
        return -EPIPE;
    const unsigned char *p = data;
    if (!c->wlen && !c->alen && len >= WRITE_DIRECT) {
        size_t off = 0;
        int rc = send_some(c->fd, p, &off, &len);
        if (rc < 0) {
            c->err = rc;
            c->closing = true;
            return -EPIPE;
        }
        p += off;
    }
    if (!len)
        return 0;
    struct rloop *l = c->l;
    if (!c->wlen && !(c->events & CONC_EVENT_WRITE) && l->out_len + len <= OUT_CAP &&
        (!c->alen || c->aoff + c->alen == l->out_len)) {
        /* nothing of its own waits, and its output so far (if any) ends
         * the batch area: it goes on there */
        if (!c->alen)
            c->aoff = l->out_len;
        memcpy(l->out + l->out_len, p, len);
        l->out_len += len;
        c->alen += len;
    } else {
        int rc = conn_spill(c);
        if (rc == 0)
            rc = wbuf_reserve(c, len);
        if (rc < 0) {
            c->err = rc;
            c->closing = true;
            return rc;
        }
        memcpy(c->wbuf + c->woff + c->wlen, p, len);
        c->wlen += len;
    }
    if (c->wlen + c->alen > l->wmax)
        c->paused = true;
    /* sent after the batch, unless the socket is full (then EPOLLOUT
     * sends it) */
    if (!(c->events & CONC_EVENT_WRITE))
        conn_queue(c);
    return 0;
}

int conc_server_conn_close(conc_server_conn *c)
{
    if (!c)
        return -EINVAL;
    c->closing = true;
    return 0;
}

size_t conc_server_conn_pending(const conc_server_conn *c)
{
    return c ? c->wlen + c->alen : 0;
}

const conc_sockaddr *conc_server_conn_peer(const conc_server_conn *c)
{
    return c ? &c->peer : NULL;
}

int conc_server_conn_fd(const conc_server_conn *c)
{
    return c ? c->fd : -EINVAL;
}

void conc_server_conn_set_data(conc_server_conn *c, void *data)
{
    if (c)
        c->data = data;
}

void *conc_server_conn_data(const conc_server_conn *c)
{
    return c ? c->data : NULL;
}

conc_server *conc_server_conn_server(const conc_server_conn *c)
{
    return c ? c->s : NULL;
}

/* After a callback: close c when it is done, or update its interest
 * (once its output waiting for the end of the batch has gone). */
static void conn_settle(struct conc_server_conn *c)
{
    if (c->dead)
        return;
    if (c->err) {
        conn_end(c, c->err == -EPIPE ? 0 : c->err);
        return;
    }
    if (c->queued)
        return;
    if (c->closing && !c->wlen) {
        conn_end(c, 0);
        return;
    }
    conn_update(c);
}

static void set_listening(struct rloop *l, bool on)
{
    if (on == l->listening)
        return;
    if (on)
        conc_selector_register(l->sel, l->s->fd, CONC_EVENT_READ, &listener_tag);
    else
        conc_selector_unregister(l->sel, l->s->fd, NULL);
    l->listening = on;
}

/* Serves fd, just accepted with room under the connection limit: a
 * connection on the loop, or one refused (verify_request, on_accept) or
 * failed (no memory) and closed, its room given back. */
static void conn_open(struct rloop *l, int fd, const conc_sockaddr *peer)
{
    conc_server *s = l->s;
    struct conc_server_conn *c = NULL;
    _Atomic uint64_t *miss = &s->st->refused;
    if (s->h.verify_request && !s->h.verify_request(s, peer, s->h.user))
        goto out;
    miss = &s->st->failed;
    c = calloc(1, sizeof *c);
    if (!c)
        goto out;
    c->s = s;
    c->l = l;
    c->fd = fd;
    c->peer = *peer;
    if (s->rh.on_accept && s->rh.on_accept(c, s->rh.user) < 0) {
        miss = &s->st->refused;
        goto out;
    }
    if (conc_selector_register(l->sel, fd, CONC_EVENT_READ, c) < 0) {
        if (s->rh.on_close)
            s->rh.on_close(c, -ENOMEM, s->rh.user);
        goto out;
    }
    c->events = CONC_EVENT_READ;
    conc__server_enter(s, &c->slot, fd);
    c->slot.reserved = true;        /* conn_end gives the room back */
    c->last = l->idle ? conc_now() : 0;
    c->prev = l->conns.prev;        /* the newest last: oldest first */
    c->next = &l->conns;
    l->conns.prev->next = c;
    l->conns.prev = c;
    l->nconns++;
    conn_settle(c);                 /* on_accept may have written or closed */
    return;
out:
    close(fd);
    free(c);
    conc__server_unreserve(s);
    atomic_fetch_add(miss, 1);
}

static void reactor_accept(struct rloop *l)
{
    conc_server *s = l->s;
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        if (l->one && l->taken) {
            set_listening(l, false);
            return;
        }
        /* room under the limit the loops share, or the listener stays out
         * until a connection of any loop ends and opens the gate */
        if (!conc__server_reserve(s)) {
            set_listening(l, false);
            if (!conc__server_gate_arm(s, &l->gate)) {
                l->gated = true;
                return;
            }
        }
        conc_sockaddr peer;
        memset(&peer, 0, sizeof peer);
        peer.len = sizeof peer.u;
        int fd = accept4(s->fd, &peer.u.sa, &peer.len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            int e = errno;
            conc__server_unreserve(s);
            if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM)
                conc_sleep(0.001);
            return;
        }
        l->taken = true;
        atomic_fetch_add(&s->st->accepted, 1);
        conn_open(l, fd, &peer);
    }
}

/* A datagram server's loop: reads the datagrams waiting and serves each
 * in the loop's thread. */
static void reactor_datagrams(struct rloop *l, unsigned char *buf, size_t cap)
{
    conc_server *s = l->s;
    for (int i = 0; i < ACCEPT_BATCH && !(l->one && l->taken); i++) {
        conc_sockaddr peer;
        memset(&peer, 0, sizeof peer);
        peer.len = sizeof peer.u;
        ssize_t n = recvfrom(s->fd, buf, cap, MSG_DONTWAIT, &peer.u.sa, &peer.len);
        if (n < 0) {
            if (errno == EINTR || errno == ECONNREFUSED)
                continue;
            return;                 /* EAGAIN: another loop took it */
        }
        l->taken = true;
        atomic_fetch_add(&s->st->accepted, 1);
        if (s->h.verify_request && !s->h.verify_request(s, &peer, s->h.user)) {
            atomic_fetch_add(&s->st->refused, 1);
            continue;
        }
        conc__server_serve_datagram(s, &peer, buf, (size_t)n);
    }
}

/* c showed a sign of life: it moves to the end of the list, which stays
 * ordered by c->last. */
static void conn_touch(struct rloop *l, struct conc_server_conn *c)
{
    c->last = conc_now();
    if (l->conns.prev == c)
        return;
    c->prev->next = c->next;
    c->next->prev = c->prev;
    c->prev = l->conns.prev;
    c->next = &l->conns;
    l->conns.prev->next = c;
    l->conns.prev = c;
}

/* Closes the connections idle for idle_timeout (the oldest first). */
static void expire_idle(struct rloop *l)
{
    if (!l->idle || l->conns.next == &l->conns)
        return;
    int64_t now = conc_now();
    while (l->conns.next != &l->conns && l->conns.next->last + l->idle <= now)
        conn_end(l->conns.next, -ETIMEDOUT);
}

static void reactor_event(struct rloop *l, struct conc_server_conn *c, unsigned ev,
                          unsigned char *buf, size_t bufsize)
{
    conc_server *s = l->s;
    if (c->dead)
        return;
    if (ev & CONC_EVENT_WRITE) {
        size_t before = c->wlen;
        int rc = conn_flush(c);
        if (rc < 0) {
            conn_end(c, rc);
            return;
        }
        if (l->idle && c->wlen < before)
            conn_touch(l, c);
        if (!c->wlen && c->paused) {
            c->paused = false;
            if (s->rh.on_drain)
                s->rh.on_drain(c, s->rh.user);
        }
    }
    if ((ev & CONC_EVENT_READ) && !c->paused && !c->closing) {
        ssize_t n = conc__recv_nb(c->fd, buf, bufsize, 0);
        if (n > 0) {
            if (l->idle)
                conn_touch(l, c);
            if (s->rh.on_data(c, buf, (size_t)n, s->rh.user) < 0)
                c->closing = true;
        } else if (n == 0) {
            conn_flush(c);
            conn_end(c, 0);
            return;
        } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            conn_end(c, -errno);
            return;
        }
    }
    conn_settle(c);
}

/* Sends the output the callbacks of the batch wrote, a send per
 * connection, all after the batch's reads: the kernel's receive and
 * transmit paths each run back to back, which costs less than
 * alternating them per connection.  A connection whose socket is full
 * waits for EPOLLOUT; one whose send failed ends. */
static void flush_queued(struct rloop *l)
{
    while (l->qhead) {
        struct conc_server_conn *c = l->qhead;
        l->qhead = c->qnext;
        if (!l->qhead)
            l->qtail = &l->qhead;
        c->queued = false;
        if (c->dead)
            continue;
        int rc = conn_flush(c);
        if (rc < 0) {
            conn_end(c, rc);
            continue;
        }
        if (!c->wlen && c->paused) {
            c->paused = false;
            if (l->s->rh.on_drain)
                l->s->rh.on_drain(c, l->s->rh.user);  /* may queue c again */
        }
        conn_settle(c);
    }
    l->out_len = 0;                 /* every connection's part went or moved */
}

static void free_dead(struct rloop *l)
{
    while (l->dead) {
        struct conc_server_conn *c = l->dead;
        l->dead = c->next;
        free(c->wbuf);
        free(c);
    }
}

/* The reactor loop: until a shutdown (stopfd, extra_fd), or with one
 * until one request was taken and has ended (-ETIMEDOUT when none came by
 * until). */
static int reactor_run(conc_server *s, int extra_fd, bool one, int64_t until)
{
    struct rloop l = { .s = s, .one = one, .gate = { .fd = -1 } };
    /* beyond 4e9 s (126 years) there is no limit, and last + idle cannot
     * overflow */
    double it = s->o.idle_timeout;
    l.idle = it > 0 && it < 4e9 ? (int64_t)(it * 1e9) : 0;
    if (l.idle <= 0 && it > 0 && it < 4e9)
        l.idle = 1;
    l.conns.next = l.conns.prev = &l.conns;
    l.qtail = &l.qhead;
    l.wmax = s->o.write_buffer_max ? s->o.write_buffer_max : (size_t)1 << 20;
    size_t bufsize = s->o.read_size ? s->o.read_size : 65536;
    if (s->type == SOCK_DGRAM)
        bufsize = s->o.max_datagram ? s->o.max_datagram : 8192;
    unsigned char *buf = malloc(bufsize);
    conc_selector_event *ev = malloc(LOOP_EVENTS * sizeof *ev);
    l.out = malloc(OUT_CAP);
    int rc = buf && ev && l.out ? conc_selector_new(&l.sel, CONC_SELECTOR_EPOLL) : -ENOMEM;
    if (rc == 0 && s->o.max_connections > 0 && s->type == SOCK_STREAM) {
        rc = conc__server_gate_open(s, &l.gate);
        if (rc == 0)
            rc = conc_selector_register(l.sel, l.gate.fd, CONC_EVENT_READ, &gate_tag);
        if (rc < 0)
            conc_selector_free(l.sel);
    }
    if (rc < 0) {
        conc__server_gate_close(s, &l.gate);
        free(buf);
        free(ev);
        free(l.out);
        return rc;
    }
    /* every connection is unregistered before its descriptor is closed */
    conc_selector_set_check_files(l.sel, false);
    set_listening(&l, true);
    if (!one) {
        conc_selector_register(l.sel, s->stopfd, CONC_EVENT_READ, &stop_tag);
        if (extra_fd >= 0)
            conc_selector_register(l.sel, extra_fd, CONC_EVENT_READ, &extra_tag);
    }
    bool stopping = false;
    int64_t deadline = CONC_NO_DEADLINE;
    /* serve_forever's thread runs service_actions between its passes */
    int64_t service_at = one ? CONC_NO_DEADLINE : conc__server_service_first(s);
    rc = 0;
    for (;;) {
        /* output written outside a batch (an on_close of an idle
         * connection's, say) goes before the loop waits */
        if (l.qhead)
            flush_queued(&l);
        if ((stopping || (one && l.taken)) && l.nconns == 0)
            break;
        int64_t wait_until = one && !l.taken ? until : deadline;
        /* the oldest connection's idle time runs out first */
        bool idle_first = false;
        if (l.idle && l.conns.next != &l.conns) {
            int64_t e = l.conns.next->last + l.idle;
            if (e < wait_until) {
                wait_until = e;
                idle_first = true;
            }
        }
        bool service_first = false;
        if (!stopping && service_at < wait_until) {
            wait_until = service_at;
            service_first = true;
            idle_first = false;
        }
        int n = conc_selector_select_until(l.sel, ev, LOOP_EVENTS, wait_until);
        if (!stopping)
            conc__server_service_due(s, &service_at);
        if (n == -ETIMEDOUT && service_first)
            continue;
        if (n == -ETIMEDOUT && idle_first) {
            expire_idle(&l);
            free_dead(&l);
            continue;
        }
        if (n == -ETIMEDOUT && one && !l.taken) {
            rc = -ETIMEDOUT;
            break;
        }
        if (n == -ETIMEDOUT) {
            /* the shutdown timeout passed: close what is left */
            while (l.conns.next != &l.conns)
                conn_end(l.conns.next, -ECANCELED);
            free_dead(&l);
            continue;
        }
        if (n < 0) {
            rc = n;
            break;
        }
        for (int i = 0; i < n; i++) {
            void *d = ev[i].key.data;
            if (d == &listener_tag) {
                if (stopping)
                    continue;
                if (s->type == SOCK_DGRAM)
                    reactor_datagrams(&l, buf, bufsize);
                else
                    reactor_accept(&l);
            } else if (d == &gate_tag) {
                conc__server_gate_clear(&l.gate);
                l.gated = false;    /* room was made: listen again */
            } else if (d == &stop_tag || d == &extra_tag) {
                if (!stopping) {
                    stopping = true;
                    set_listening(&l, false);
                    conc_selector_unregister(l.sel, s->stopfd, NULL);
                    if (extra_fd >= 0)
                        conc_selector_unregister(l.sel, extra_fd, NULL);
                    if (s->o.shutdown_timeout > 0)
                        deadline = conc_now() + (int64_t)(s->o.shutdown_timeout * 1e9);
                }
            } else {
                reactor_event(&l, d, ev[i].events, buf, bufsize);
            }
        }
        flush_queued(&l);
        expire_idle(&l);            /* also while others keep the loop busy */
        free_dead(&l);
        /* handle_request's listener stays out once its request came: a
         * connection waiting in the backlog would wake the loop at once */
        if (!stopping && !l.listening && !(one && l.taken) && !l.gated)
            set_listening(&l, true);
    }
    while (l.conns.next != &l.conns)
        conn_end(l.conns.next, -ECANCELED);
    free_dead(&l);
    conc_selector_free(l.sel);
    conc__server_gate_close(s, &l.gate);
    free(buf);
    free(ev);
    free(l.out);
    return rc;
}

int conc__server_reactor_loop(conc_server *s, int extra_fd)
{
    return reactor_run(s, extra_fd, false, CONC_NO_DEADLINE);
}

int conc__server_reactor_one(conc_server *s, int64_t deadline)
{
    return reactor_run(s, -1, true, deadline);
}
