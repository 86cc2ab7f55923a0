/*
 * echo-upper-server - the tutorials' upper-casing echo server, one program
 * with a choice of server models.
 *
 *   echo-upper-server [--model MODEL] [--workers N] [--stack MODE] [--host H] PORT
 *
 * Each connection gets back whatever it sends, upper-cased (ASCII letters;
 * every other byte unchanged), for as long as the client keeps it open.
 * The server listens on H (default 127.0.0.1; a name or an address, IPv4
 * or IPv6) and PORT (0: the kernel picks one) with a backlog of 1024, and
 * says where once it accepts connections:
 *
 *   echo-upper-server: listening on 127.0.0.1:PORT (model epoll)
 *
 * SIGINT (Ctrl-C) or SIGTERM ends it cleanly: it closes every connection
 * and the listening socket, prints
 *
 *   echo-upper-server: stopped by SIGTERM after N connections
 *
 * and exits 0.  The signals are taken as a descriptor (a signalfd) that
 * every model watches beside its sockets, so a server ends promptly in any
 * wait, also one for a client that does not read.
 *
 * Models (--model, default epoll):
 *   sync         one client at a time, in the order they connect: the
 *                others wait in the listen queue until the current one
 *                closes (the tutorials' first server)
 *   select, poll, epoll
 *                one thread serves every client: a readiness loop on a
 *                conc_selector with that backend (select: descriptors
 *                below 1024 only; a connection above is closed and said
 *                so once)
 *   nonblocking  the tutorials' loop over non-blocking sockets without any
 *                readiness call: try accept, then recv (or the rest of a
 *                send) on every client, again and again.  Done right:
 *                a reply the socket does not take at once is kept and
 *                sent later instead of being lost, a reset is a close, and
 *                the loop does not spin a core while idle: a pass that
 *                moved no byte and accepted nobody sleeps, 50 us after the
 *                first such pass, twice as long after each next one, up to
 *                10 ms, and goes back to no sleep as soon as a pass does
 *                work.  Idle, it wakes at most ~100 times a second; busy,
 *                it never sleeps.
 *   threading, forking, prefork, coroutine, reactor
 *                the models of conc/server.h (Python's socketserver and
 *                gevent's StreamServer): a thread per client, a child
 *                process per client, --workers processes forked up front
 *                (a greenlet per client in each), a greenlet per client on
 *                --workers hubs (threads), callbacks on --workers readiness
 *                loops.  A stop signal lets the clients' requests finish
 *                and cuts the connections still open a fifth of a second
 *                later.
 * The first five models are one function each in the table `models`
 * below, serving the listening socket until a stop signal; the others are
 * a conc_server with that model.
 *
 *   --workers N  prefork: worker processes; coroutine: hubs, each in a
 *                thread (default for both: one per CPU); reactor: loops,
 *                each in a thread (default 1); refused by the other models
 *   --stack MODE coroutine, prefork: where each client's greenlet keeps its
 *                stack: "own" (a stack of its own: nothing is copied when
 *                it waits, an idle client holds a 4 KiB page and its
 *                objects, about 4.4 KB) or "copied" (its hub's shared
 *                stack, copied out while it waits: an idle client holds
 *                about 1.7 KB); default: the library's (CONC_SERVER_STACK,
 *                own).  Either way the greenlet reads into a
 *                buffer of its thread's, not one on its stack, so a client
 *                waiting for its next request holds no buffer.
 *
 * The descriptor limit (RLIMIT_NOFILE) is raised to its hard limit, for
 * servers with more than ~1000 clients; when descriptors run out anyway,
 * the loops stop accepting until a connection closes or a tenth of a
 * second passed (the waiting clients stay in the listen queue) rather than
 * spinning on EMFILE.
 *
 * Python original (the tutorial's sync server):
 *   server = socket.socket(); server.bind(("127.0.0.1", 8080)); server.listen(5)
 *   while True:
 *       conn, addr = server.accept()
 *       while True:
 *           data = conn.recv(1024)
 *           if not data: break
 *           conn.send(data.upper())
 *       conn.close()
 */
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "conc.h"
#include "conc/socket.h"
#include "conc/selector.h"
#include "conc/server.h"
#include "cli.h"

static const char *prog = "echo-upper-server";

#define BACKLOG 1024
#define BUF_SIZE 16384
#define ACCEPT_BATCH 64             /* connections taken per readiness */
#define IDLE_MIN_NS 50000LL         /* the nonblocking model's back-off */
#define IDLE_MAX_NS 10000000LL

/* What every model shares. */
struct server {
    conc_socket *listener;          /* non-blocking, listening */
    int lfd;
    int sigfd;                      /* SIGINT/SIGTERM (stop_signals_fd) */
    int stop_sig;                   /* the signal that ended it; 0 meanwhile */
    long accepted;
    bool listener_paused;           /* out of descriptors: not accepting */
    bool said_emfile, said_limit;
};

/* One client of the loops: its socket and the reply still to send. */
struct conn {
    conc_socket *sock;
    int fd;
    size_t off, pending;            /* buf[off .. off + pending) not yet sent */
    struct conn *prev, *next;       /* the selector loops' list of clients */
    char buf[BUF_SIZE];
};

static void upper(char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] >= 'a' && p[i] <= 'z')
            p[i] = (char)(p[i] - 'a' + 'A');
}

/* Checks for a stop signal; true once one came. */
static bool stopping(struct server *srv)
{
    if (!srv->stop_sig)
        srv->stop_sig = stop_signal_take(srv->sigfd);
    return srv->stop_sig != 0;
}

/* Takes one connection from the listening socket (non-blocking) and makes
 * it non-blocking too when `nonblocking`.  Returns 1 and stores it, 0 when
 * none is waiting or descriptors ran out (the listener is then paused),
 * or an error that ends the server. */
static int take_connection(struct server *srv, conc_socket **out, bool nonblocking)
{
    int rc = conc_socket_accept(srv->listener, out, NULL);
    if (rc == -EAGAIN || rc == -ECONNABORTED || rc == -EPROTO)
        return 0;
    if (rc == -EMFILE || rc == -ENFILE || rc == -ENOBUFS || rc == -ENOMEM) {
        if (!srv->said_emfile)
            fprintf(stderr, "%s: accept: %s (waiting for a connection to close)\n", prog,
                    conc_strerror(rc));
        srv->said_emfile = true;
        srv->listener_paused = true;
        return 0;
    }
    if (rc < 0)
        return rc;
    srv->accepted++;
    if (nonblocking)
        conc_socket_set_blocking(*out, false);
    return 1;
}

/* ------------------------------------------------------------------ sync */

/* Waits until socket s has `events` (poll()'s) or a stop signal came.
 * Returns 1 when s is ready, 0 when the server must stop, or an error. */
static int wait_or_stop(struct server *srv, conc_socket *s, short events)
{
    conc_waitable w[2] = {
        { .kind = CONC_WAIT_SOCKET, .u.socket = s, .events = events },
        { .kind = CONC_WAIT_FD, .u.fd = srv->sigfd },
    };
    int rc = conc_wait(w, 2, CONC_FOREVER);
    if (rc < 0)
        return rc;
    if (w[1].ready && stopping(srv))
        return 0;
    return 1;
}

/* Serves one client until it closes (0), the server must stop (0), or an
 * error that ends the server (< 0).  The socket is in blocking mode; each
 * call is made once the wait says it can go on, so it returns at once. */
static int serve_one(struct server *srv, conc_socket *c, char *buf)
{
    for (;;) {
        int rc = wait_or_stop(srv, c, POLLIN);
        if (rc <= 0)
            return rc;
        ssize_t n = conc_socket_recv(c, buf, BUF_SIZE, 0);
        if (n == 0 || n == -ECONNRESET)
            return 0;                       /* the client closed */
        if (n < 0) {
            fprintf(stderr, "%s: recv: %s\n", prog, conc_strerror((int)n));
            return 0;
        }
        upper(buf, (size_t)n);
        for (size_t off = 0; off < (size_t)n;) {
            rc = wait_or_stop(srv, c, POLLOUT);
            if (rc <= 0)
                return rc;
            ssize_t m = conc_socket_send(c, buf + off, (size_t)n - off, 0);
            if (m < 0)
                return 0;                   /* -EPIPE, -ECONNRESET: gone */
            off += (size_t)m;
        }
    }
}

static int run_sync(struct server *srv)
{
    char *buf = malloc(BUF_SIZE);
    if (!buf)
        return -ENOMEM;
    int rc = 0;
    while (rc >= 0 && !srv->stop_sig) {
        if (srv->listener_paused) {         /* out of descriptors: try again soon */
            srv->listener_paused = false;
            rc = conc_sleep(0.1);
            continue;
        }
        rc = wait_or_stop(srv, srv->listener, POLLIN);
        if (rc <= 0)
            break;
        conc_socket *c;
        rc = take_connection(srv, &c, false);
        if (rc > 0) {
            rc = serve_one(srv, c, buf);
            conc_socket_free(c);
        }
    }
    free(buf);
    return rc < 0 ? rc : 0;
}

/* ------------------------------------------------------- shared by loops */

/* Sends what is pending without waiting.  Returns 1 when all of it went,
 * 0 when the socket is full, -1 when the client is gone; *moved is set
 * when some bytes went. */
static int flush(struct conn *c, bool *moved)
{
    while (c->pending > 0) {
        ssize_t n = conc_socket_send(c->sock, c->buf + c->off, c->pending, 0);
        if (n == -EAGAIN)
            return 0;
        if (n < 0)
            return -1;
        c->off += (size_t)n;
        c->pending -= (size_t)n;
        *moved = true;
    }
    return 1;
}

/* Receives what is there and sends it back upper-cased as far as the
 * socket takes it.  Returns 1 when all was sent (or nothing was there),
 * 0 when part of the reply is pending, -1 when the client is gone. */
static int echo_some(struct conn *c, bool *moved)
{
    ssize_t n = conc_socket_recv(c->sock, c->buf, BUF_SIZE, 0);
    if (n == -EAGAIN)
        return 1;
    if (n <= 0)
        return -1;                          /* closed, reset, or broken */
    *moved = true;
    upper(c->buf, (size_t)n);
    c->off = 0;
    c->pending = (size_t)n;
    return flush(c, moved);
}

static struct conn *conn_new(conc_socket *s)
{
    struct conn *c = malloc(sizeof *c);
    if (!c)
        return NULL;
    c->sock = s;
    c->fd = conc_socket_fd(s);
    c->off = c->pending = 0;
    c->prev = c->next = NULL;
    return c;
}

static void conn_free(struct conn *c)
{
    conc_socket_free(c->sock);
    free(c);
}

/* ------------------------------------------------ select, poll, epoll */

/* The selector loops' state: the selector and the list of clients. */
struct loop {
    struct server *srv;
    conc_selector *sel;
    struct conn *clients;
};

static char listener_tag, signal_tag;   /* their keys' data */

static void loop_close(struct loop *l, struct conn *c)
{
    conc_selector_unregister(l->sel, c->fd, NULL);      /* before the close */
    if (c->prev)
        c->prev->next = c->next;
    else
        l->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    conn_free(c);
    if (l->srv->listener_paused &&
        conc_selector_register(l->sel, l->srv->lfd, CONC_EVENT_READ, &listener_tag) == 0)
        l->srv->listener_paused = false;
}

static int loop_accept(struct loop *l)
{
    struct server *srv = l->srv;
    for (int k = 0; k < ACCEPT_BATCH; k++) {
        conc_socket *s;
        int rc = take_connection(srv, &s, true);
        if (rc < 0)
            return rc;
        if (rc == 0)
            break;
        struct conn *c = conn_new(s);
        if (!c) {
            conc_socket_free(s);
            continue;
        }
        rc = conc_selector_register(l->sel, c->fd, CONC_EVENT_READ, c);
        if (rc < 0) {
            /* The select backend takes descriptors below 1024 only. */
            if (!srv->said_limit)
                fprintf(stderr, "%s: cannot watch the connection on descriptor %d: %s "
                        "(closed; said once)\n", prog, c->fd, conc_strerror(rc));
            srv->said_limit = true;
            conn_free(c);
            continue;
        }
        c->next = l->clients;
        if (l->clients)
            l->clients->prev = c;
        l->clients = c;
    }
    if (srv->listener_paused)               /* wait for a close instead */
        conc_selector_unregister(l->sel, srv->lfd, NULL);
    return 0;
}

static void loop_client(struct loop *l, struct conn *c)
{
    bool moved = false;
    int r;
    if (c->pending > 0) {                   /* registered for writing */
        r = flush(c, &moved);
        if (r > 0)
            conc_selector_modify(l->sel, c->fd, CONC_EVENT_READ, c);
    } else {
        r = echo_some(c, &moved);
        if (r == 0)                         /* wait until it can take the rest */
            conc_selector_modify(l->sel, c->fd, CONC_EVENT_WRITE, c);
    }
    if (r < 0)
        loop_close(l, c);
}

static int run_selector(struct server *srv, conc_selector_backend backend)
{
    struct loop l = { .srv = srv };
    int rc = conc_selector_new(&l.sel, backend);
    if (rc < 0)
        return rc;
    /* Every client is unregistered before its socket closes (loop_close),
     * so the selector need not check the files it reports (an fstat each). */
    conc_selector_set_check_files(l.sel, false);
    if ((rc = conc_selector_register(l.sel, srv->lfd, CONC_EVENT_READ, &listener_tag)) < 0 ||
        (rc = conc_selector_register(l.sel, srv->sigfd, CONC_EVENT_READ, &signal_tag)) < 0) {
        conc_selector_free(l.sel);
        return rc;
    }
    conc_selector_event ev[1024];      /* as many as epoll-c takes per wait */
    while (rc >= 0 && !srv->stop_sig) {
        /* Not accepting (out of descriptors or memory): a close brings the
         * listener back (loop_close), and so does a tenth of a second. */
        int n = conc_selector_select(l.sel, ev, 1024, srv->listener_paused ? 0.1 : CONC_FOREVER);
        if (n == -ETIMEDOUT && srv->listener_paused) {
            if (conc_selector_register(l.sel, srv->lfd, CONC_EVENT_READ, &listener_tag) == 0)
                srv->listener_paused = false;
            continue;
        }
        if (n < 0) {
            rc = n;
            break;
        }
        for (int i = 0; i < n && rc >= 0; i++) {
            void *data = ev[i].key.data;
            if (data == &signal_tag)
                stopping(srv);
            else if (data == &listener_tag)
                rc = loop_accept(&l);
            else
                loop_client(&l, data);
        }
    }
    while (l.clients)
        loop_close(&l, l.clients);
    conc_selector_free(l.sel);
    return rc < 0 ? rc : 0;
}

static int run_select(struct server *srv)
{
    return run_selector(srv, CONC_SELECTOR_SELECT);
}

static int run_poll(struct server *srv)
{
    return run_selector(srv, CONC_SELECTOR_POLL);
}

static int run_epoll(struct server *srv)
{
    return run_selector(srv, CONC_SELECTOR_EPOLL);
}

/* ----------------------------------------------------------- nonblocking */

static int run_nonblocking(struct server *srv)
{
    size_t n = 0, cap = 64;
    struct conn **clients = malloc(cap * sizeof *clients);
    if (!clients)
        return -ENOMEM;
    int64_t idle_ns = 0;
    int rc = 0;
    while (rc >= 0 && !stopping(srv)) {
        bool moved = false;
        /* Whoever is waiting to connect. */
        for (int k = 0; k < ACCEPT_BATCH && !srv->listener_paused; k++) {
            conc_socket *s;
            rc = take_connection(srv, &s, true);
            if (rc <= 0)
                break;
            struct conn *c = conn_new(s);
            if (n == cap) {
                struct conn **more = realloc(clients, 2 * cap * sizeof *clients);
                if (more) {
                    clients = more;
                    cap *= 2;
                }
            }
            if (!c || n == cap) {
                if (c)
                    conn_free(c);
                else
                    conc_socket_free(s);
                continue;
            }
            clients[n++] = c;
            moved = true;
        }
        if (rc < 0)
            break;
        /* Every client once: the rest of a reply, or whatever arrived. */
        for (size_t i = 0; i < n;) {
            struct conn *c = clients[i];
            int r = c->pending > 0 ? flush(c, &moved) : echo_some(c, &moved);
            if (r < 0) {
                conn_free(c);
                clients[i] = clients[--n];
                srv->listener_paused = false;   /* a descriptor came free */
                moved = true;
                continue;
            }
            i++;
        }
        /* Nothing happened: sleep a little longer each time. */
        if (moved) {
            idle_ns = 0;
        } else {
            idle_ns = idle_ns ? idle_ns * 2 : IDLE_MIN_NS;
            if (idle_ns > IDLE_MAX_NS)
                idle_ns = IDLE_MAX_NS;
            if (srv->listener_paused && idle_ns == IDLE_MAX_NS)
                srv->listener_paused = false;   /* try accepting again */
            rc = conc_sleep((double)idle_ns / 1e9);
        }
    }
    for (size_t i = 0; i < n; i++)
        conn_free(clients[i]);
    free(clients);
    return rc < 0 ? rc : 0;
}

/* ----------------------------------------------- the conc/server.h models */

#define LIB_BUF 16384

/* The read buffer of the stream handler: one per thread, not one on each
 * handler's stack.  A greenlet waiting in recv holds no bytes in it (recv
 * fills it only once it runs again), and between the recv and the send
 * that follows no other greenlet of the thread runs; a reply the socket
 * does not take at once is copied to the heap before the handler waits.
 * So an idle connection keeps no 16 KiB buffer: on a copied stack
 * (--stack copied) that is 16 KiB less to copy at each wait and to keep
 * per client, on a stack of its own four pages it never touches. */
static _Thread_local char lib_buf[LIB_BUF];

/* Sends the n bytes at p: what the socket takes now, then the rest from a
 * copy on the heap, waiting as long as it takes. */
static int lib_reply(conc_socket *sock, const char *p, size_t n)
{
    ssize_t m = conc_socket_send_until(sock, p, n, 0, 0);     /* a passed deadline: no wait */
    if (m < 0 && m != -ETIMEDOUT && m != -EAGAIN)
        return (int)m;
    size_t sent = m > 0 ? (size_t)m : 0;
    if (sent == n)
        return 0;
    char *rest = malloc(n - sent);
    if (!rest)
        return -ENOMEM;
    memcpy(rest, p + sent, n - sent);
    int rc = conc_socket_sendall(sock, rest, n - sent, 0, NULL);
    free(rest);
    return rc;
}

/* The stream handler: echo upper-cased until the client closes. */
static int lib_handle(conc_server_request *req)
{
    for (;;) {
        ssize_t n = conc_socket_recv(req->sock, lib_buf, sizeof lib_buf, 0);
        if (n <= 0)
            return n == 0 || n == -ECONNRESET ? 0 : (int)n;
        upper(lib_buf, (size_t)n);
        int rc = lib_reply(req->sock, lib_buf, (size_t)n);
        if (rc < 0)
            return rc == -EPIPE || rc == -ECONNRESET ? 0 : rc;
    }
}

/* FORKING's setup, in the child: SIGTERM from the server (its shutdown
 * timeout has passed) ends the child at once; SIGINT stays blocked, as the
 * server decides (session_takes_server_stop). */
static int lib_child_setup(conc_server_request *req)
{
    (void)req;
    return session_takes_server_stop(1, NULL);
}

/* The reactor's: each chunk upper-cased into the connection's output. */
static int lib_data(conc_server_conn *c, const void *data, size_t len, void *user)
{
    (void)user;
    char buf[LIB_BUF];
    while (len) {
        size_t k = len < sizeof buf ? len : sizeof buf;
        memcpy(buf, data, k);
        upper(buf, k);
        int rc = conc_server_conn_write(c, buf, k);
        if (rc < 0)
            return rc;
        data = (const char *)data + k;
        len -= k;
    }
    return 0;
}

struct lib_watch {
    conc_server *server;
    struct server *srv;
};

/* Waits for a stop signal and shuts the server down. */
static void *lib_watch_main(void *arg)
{
    struct lib_watch *w = arg;
    while (!w->srv->stop_sig) {
        struct pollfd pf = { .fd = w->srv->sigfd, .events = POLLIN };
        if (poll(&pf, 1, -1) > 0)
            w->srv->stop_sig = stop_signal_take(w->srv->sigfd);
    }
    conc_server_shutdown(w->server);
    return NULL;
}

/* Serves with a conc_server of that model until a stop signal. */
static int run_library(struct server *srv, conc_server *server)
{
    struct lib_watch w = { server, srv };
    pthread_t t;
    int e = pthread_create(&t, NULL, lib_watch_main, &w);
    if (e)
        return -e;
    int rc = conc_server_serve_forever(server, CONC_SERVER_POLL_INTERVAL);
    if (rc < 0) {
        pthread_cancel(t);
        pthread_join(t, NULL);
        return rc;
    }
    pthread_join(t, NULL);
    conc_server_stats st;
    conc_server_get_stats(server, &st);
    srv->accepted = (long)st.accepted;
    return 0;
}

static const char *const lib_models[][2] = {
    { "threading", "a thread per client (Python's ThreadingTCPServer)" },
    { "forking", "a child process per client (Python's ForkingTCPServer)" },
    { "prefork", "--workers processes sharing the socket, a greenlet per client" },
    { "coroutine", "a greenlet per client on --workers hubs (gevent's StreamServer)" },
    { "reactor", "callbacks on --workers readiness loops, no stack per client" },
};

/* Opens a conc_server of model on host:port.  Returns 0, or says what
 * failed and returns 1. */
static int open_library(conc_server **out, conc_server_model model, const char *host,
                        long port, long workers, int stack)
{
    conc_addrinfo ai;
    char where[CONC_SOCKADDR_STRLEN];
    if (server_address(host, port, SOCK_STREAM, &ai, where, sizeof where))
        return 1;
    conc_server_opts o = CONC_SERVER_OPTS_INIT;
    o.model = model;
    o.allow_reuse_address = true;
    o.request_queue_size = BACKLOG;
    o.workers = (int)workers;
    o.max_children = 100000;
    o.shutdown_timeout = 0.2;
    o.stack = stack;
    o.read_size = LIB_BUF;
    int rc;
    if (model == CONC_SERVER_REACTOR) {
        const conc_server_reactor_handler h = { .on_data = lib_data };
        rc = conc_server_new_reactor(out, &ai.addr, &h, &o);
    } else {
        const conc_server_handler h = {
            .setup = model == CONC_SERVER_FORKING ? lib_child_setup : NULL,
            .handle = lib_handle,
        };
        rc = conc_server_new(out, SOCK_STREAM, &ai.addr, &h, &o);
    }
    if (rc < 0) {
        fprintf(stderr, "%s: listen on %s: %s\n", prog, where, conc_strerror(rc));
        return 1;
    }
    return 0;
}

/* ------------------------------------------------------------------ main */

/* The models: a name, the function that serves until a stop signal, and a
 * line for --help. */
static const struct model {
    const char *name;
    int (*run)(struct server *srv);
    const char *what;
} models[] = {
    { "sync", run_sync, "one client at a time (the others wait to connect)" },
    { "select", run_select, "one thread, a selector on select() (descriptors < 1024)" },
    { "poll", run_poll, "one thread, a selector on poll()" },
    { "epoll", run_epoll, "one thread, a selector on epoll (the default)" },
    { "nonblocking", run_nonblocking,
      "one thread trying every non-blocking socket in turn, sleeping when idle" },
};

static void usage(FILE *f)
{
    fprintf(f, "usage: %s [--model MODEL] [--workers N] [--stack MODE] [--host H] PORT\n"
               "Sends back whatever each client sends, upper-cased, until it closes.\n"
               "  PORT          the port to listen on, 0 to 65535 (0: any free one)\n"
               "  --host H      the address or name to listen on (default 127.0.0.1)\n"
               "  --model MODEL how to serve clients (default epoll):\n", prog);
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++)
        fprintf(f, "      %-12s %s\n", models[i].name, models[i].what);
    for (size_t i = 0; i < sizeof lib_models / sizeof lib_models[0]; i++)
        fprintf(f, "      %-12s %s\n", lib_models[i][0], lib_models[i][1]);
    fprintf(f, "  --workers N   prefork: processes; coroutine: hubs in threads (default\n"
               "                for both: one per CPU); reactor: loops in threads (default 1)\n"
               "  --stack MODE  coroutine, prefork: own (a stack per client) or copied\n"
               "                (one shared stack, copied out while a client waits)\n");
    fprintf(f, "SIGINT or SIGTERM stops it (exit status 0).\n");
}

/* The listening socket on host:port: the first address host resolves to,
 * SO_REUSEADDR, bound, listening, non-blocking.  Returns 0, or says what
 * failed and returns 1. */
static int open_listener(struct server *srv, const char *host, long port)
{
    conc_addrinfo ai;
    char where[CONC_SOCKADDR_STRLEN];
    if (server_address(host, port, SOCK_STREAM, &ai, where, sizeof where))
        return 1;
    int rc = conc_socket_new(&srv->listener, ai.family, SOCK_STREAM, 0);
    if (rc == 0)
        rc = conc_socket_setsockopt_int(srv->listener, SOL_SOCKET, SO_REUSEADDR, 1);
    if (rc == 0)
        rc = conc_socket_bind(srv->listener, &ai.addr);
    if (rc == 0)
        rc = conc_socket_listen(srv->listener, BACKLOG);
    if (rc == 0)
        rc = conc_socket_set_blocking(srv->listener, false);
    if (rc < 0) {
        fprintf(stderr, "%s: listen on %s: %s\n", prog, where, conc_strerror(rc));
        conc_socket_free(srv->listener);
        srv->listener = NULL;
        return 1;
    }
    srv->lfd = conc_socket_fd(srv->listener);
    return 0;
}

int main(int argc, char **argv)
{
    const char *model_name = "epoll", *host = "127.0.0.1", *stack_name = NULL;
    const char *pos[1] = { NULL };
    long workers = 0;
    size_t npos = 0;
    static const char *const pos_names[] = { "PORT" };
    const struct opt opts[] = {
        { "model", OPT_TEXT, &model_name, 0, 0, NULL },
        { "host", OPT_TEXT, &host, 0, 0, NULL },
        { "workers", OPT_INT, &workers, 1, 1024, NULL },
        { "stack", OPT_TEXT, &stack_name, 0, 0, NULL },
    };
    const struct positionals p = { pos, 1, 1, pos_names, &npos };
    int rc = parse_args(argc, argv, opts, OPTS_COUNT(opts), usage, &p);
    if (rc >= 0)
        return rc;
    long port = 0;
    if ((rc = server_port_host(pos[0], host, &port)) != 0)
        return rc;
    const struct model *model = NULL;
    for (size_t i = 0; i < sizeof models / sizeof models[0] && !model; i++)
        if (strcmp(models[i].name, model_name) == 0)
            model = &models[i];
    conc_server_model lib_model = CONC_SERVER_SYNC;
    bool lib = !model && strcmp(model_name, "sync") != 0 &&
               conc_server_model_parse(model_name, &lib_model) == 0;
    if (!model && !lib)
        return fail("--model wants sync, select, poll, epoll, nonblocking, threading, forking, "
                    "prefork, coroutine or reactor, not '%s'",
                    model_name);

    int stack = 0;
    if (stack_name) {
        if (strcmp(stack_name, "own") == 0)
            stack = CONC_STACK_OWN;
        else if (strcmp(stack_name, "copied") == 0)
            stack = CONC_STACK_COPIED;
        else
            return fail("--stack wants own or copied, not '%s'", stack_name);
        if (!lib || (lib_model != CONC_SERVER_COROUTINE && lib_model != CONC_SERVER_PREFORK))
            return fail("--stack is for the coroutine and prefork models, not '%s'",
                        model_name);
    }
    if (workers != 0 &&         /* given (its least value is 1) */
        (!lib || (lib_model != CONC_SERVER_PREFORK && lib_model != CONC_SERVER_COROUTINE &&
                  lib_model != CONC_SERVER_REACTOR)))
        return fail("--workers is for the prefork, coroutine and reactor models, not '%s'",
                    model_name);

    raise_nofile();
    struct server srv = { .sigfd = stop_signals_fd() };
    if (srv.sigfd < 0)
        return die("signalfd", srv.sigfd);
    if (lib) {
        conc_server *server;
        if (open_library(&server, lib_model, host, port, workers, stack) != 0)
            return 1;
        conc_sockaddr at;
        say_listening(conc_server_address(server, &at), &at, "?", "model %s", model_name);
        rc = run_library(&srv, server);
        conc_server_free(server);
        close(srv.sigfd);
        if (rc < 0)
            return die(model_name, rc);
        say_stopped(srv.stop_sig, (unsigned long long)srv.accepted, "connection");
        return 0;
    }
    if (open_listener(&srv, host, port) != 0)
        return 1;
    conc_sockaddr at;
    say_listening(conc_socket_getsockname(srv.listener, &at), &at, "?", "model %s", model->name);

    rc = model->run(&srv);
    conc_socket_free(srv.listener);
    close(srv.sigfd);
    if (rc < 0)
        return die(model->name, rc);
    say_stopped(srv.stop_sig, (unsigned long long)srv.accepted, "connection");
    return 0;
}
