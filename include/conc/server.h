/*
 * conc/server.h - Python's socketserver: TCP, UDP, Unix stream and Unix
 * datagram servers that hand each request to a handler, with a choice of
 * server models, from one request at a time to a reactor.
 *
 * A server is a bound (and, for a stream socket, listening) socket, a
 * handler and a model.  conc_server_serve_forever takes requests until
 * conc_server_shutdown; conc_server_handle_request takes one.  A request is
 * a connection (SOCK_STREAM: TCPServer, UnixStreamServer) or a datagram
 * (SOCK_DGRAM: UDPServer, UnixDatagramServer).  The handler is Python's
 * BaseRequestHandler: setup, then handle, then finish (finish runs when
 * setup succeeded, whatever handle returned), each given the request: its
 * socket, the client's address, the server and the handler's user pointer.
 *
 * Models (conc_server_opts.model), Python's mix-ins and the servers of the
 * tutorials:
 *   CONC_SERVER_SYNC       one request at a time in the serving thread
 *                          (TCPServer): a slow client holds the others up,
 *                          which is the model
 *   CONC_SERVER_THREADING  a thread per request (ThreadingMixIn), with
 *                          daemon_threads and block_on_close as in Python;
 *                          the server counts its threads instead of keeping
 *                          a list that grows with every request.  Without a
 *                          request_timeout the request's socket has a
 *                          blocking descriptor, as Python's: the thread
 *                          sleeps in recv and send themselves (one system
 *                          call each); see conc/socket.h.  A thread whose
 *                          request ended is kept parked (thread_cache of
 *                          them at most, 0: as many as ran at once; each
 *                          for thread_idle seconds unused at most) and serves the next request instead of a
 *                          new thread: each request still has a thread of
 *                          its own while it runs, but a handler may find
 *                          what an earlier request left in the thread's
 *                          own state (_Thread_local variables, conc_local
 *                          values, the signal mask, the thread's name).
 *                          A hub the handler made is freed between
 *                          requests; a thread whose hub still has
 *                          greenlets ends instead.  close ends the parked
 *                          threads (and waits for them); thread_cache -1
 *                          ends each thread with its request, as Python
 *                          does
 *   CONC_SERVER_FORKING    a child process per request (ForkingMixIn), at
 *                          most max_children at once (the next request waits
 *                          in the backlog); children are supervised with
 *                          pidfds and reaped as they end, none is left
 *                          behind by conc_server_close
 *   CONC_SERVER_PREFORK    `workers` processes started up front share the
 *                          server's socket (with reuse_port on an Internet
 *                          address: the first serves it, each other binds a
 *                          socket of its own to the same address, and the
 *                          kernel spreads the clients over them; a
 *                          connection still in the backlog of a worker's
 *                          own socket when that worker ends is reset by
 *                          the kernel, Linux's SO_REUSEPORT rule); each
 *                          serves its connections with a coroutine per
 *                          connection (as the coroutine model does in one
 *                          hub), a datagram server each datagram in a
 *                          greenlet.  A worker that dies is reported
 *                          (the on_worker_exit hook) and replaced
 *                          (conc_server_stats.worker_restarts): at once
 *                          when its loop had started serving; when it
 *                          ended before (a socket of its own it could not
 *                          bind, memory short, killed), after a wait of
 *                          0.1 s that doubles with each such failure of
 *                          its slot in a row (at most 5 s).  Once every
 *                          slot has failed
 *                          CONC_SERVER_WORKER_START_FAILURES times in a
 *                          row the server stops: serve_forever returns
 *                          the last worker's error; until then the others
 *                          serve and the failing slot is tried again
 *                          (the server runs with fewer workers, each
 *                          failure reported to on_worker_exit, the count
 *                          in conc_server_stats.workers).  Why
 *                          coroutines in each worker: the model field names
 *                          one model, and of the others a worker could run,
 *                          SYNC would let one slow client stop its worker,
 *                          threads or children per request would undo what
 *                          forking up front saves, and callbacks would need
 *                          the reactor's handler; a hub per worker keeps
 *                          the blocking handler and serves thousands of
 *                          connections per process.
 *   CONC_SERVER_COROUTINE  a greenlet (conc/hub.h) per connection or
 *                          datagram, `workers` hubs each in a thread of its
 *                          own, one per CPU by default (gevent's
 *                          StreamServer on every core; the serving thread
 *                          runs one of them); the handler's conc calls
 *                          park only its greenlet.  A datagram server
 *                          reads in the serving thread, whose hub runs a
 *                          greenlet per datagram
 *   CONC_SERVER_REACTOR    callbacks on a readiness loop, no stack per
 *                          connection: see conc_server_new_reactor.  A
 *                          datagram server of this model is made with
 *                          conc_server_new(SOCK_DGRAM): the loop runs the
 *                          handler's hooks for each datagram in its thread,
 *                          so they must not block (req->sock does not: a
 *                          reply the socket cannot take at once gives
 *                          -EAGAIN)
 * A model other than SYNC never lets a slow or silent client hold up the
 * others.
 *
 * Stopping: conc_server_shutdown asks serve_forever to stop; it is
 * async-signal-safe (an atomic store and an eventfd write), so a SIGTERM
 * handler may call it, as may any thread.  serve_forever then stops
 * taking requests and returns once the requests in flight have finished
 * (a graceful stop), except threads that are not waited for
 * (daemon_threads, block_on_close off).  With shutdown_timeout > 0 the
 * requests still running that long after the shutdown have their
 * connections shut down (SHUT_RDWR: the handler's reads see the end of the
 * stream, its sends -EPIPE); FORKING children still running get SIGTERM
 * then, and SIGKILL CONC_SERVER_KILL_GRACE seconds later; with 0 they are
 * waited for as long as they take, as in Python.  A handler that
 * loops may ask conc_server_stopping.  A shutdown asked while no
 * serve_forever runs is kept, as Python's flag is: the next serve_forever
 * returns at once without serving, and clears it.
 *
 * Connection limit: max_connections > 0 bounds the connections (of a
 * datagram server: the datagrams) served at once by the whole server:
 * the COROUTINE hubs and REACTOR loops share one count (each takes room
 * in it before it accepts), so more loops never raise the limit; with
 * PREFORK it holds in each worker process.  At the limit the server stops
 * accepting (reading datagrams): further clients wait in the listen
 * backlog (request_queue_size; datagrams in the socket's receive buffer)
 * until a connection ends, whichever loop it belonged to, and the kernel
 * refuses or drops those beyond the backlog.  Nothing is accepted only to
 * be closed, and a loop at the limit holds up no other loop's
 * connections.
 *
 * Stacks (COROUTINE and PREFORK, conc_server_opts.stack): each
 * connection's greenlet runs either on a stack of its own
 * (CONC_STACK_OWN: a parked handler holds the stack pages it touched,
 * 4 KiB at the least) or on its hub's shared stack (CONC_STACK_COPIED:
 * when it parks, the part of the stack it used is copied to the heap, so
 * an idle connection costs its objects and those bytes, about 2 KiB in
 * all; each park and resume costs the two copies).  The rule for handlers
 * on copied stacks: while a handler is parked (in any conc call that
 * waits), nothing may read or write its stack variables: no other
 * greenlet, thread or signal handler is given a pointer to a local of a
 * handler that then waits.  Hand them heap memory instead.  Keep large
 * buffers off the stack too, or out of the frames that wait: a 16 KiB
 * buffer on the stack of a parked handler is 16 KiB copied per park and
 * kept per idle connection.  The library's own paths follow the rule.
 * docs/server.md gives the measurements behind the default,
 * CONC_SERVER_STACK.
 *
 * Errors: every call returns 0 (or a count) on success and a negative
 * errno, as in conc/errors.h: -EINVAL for a NULL server or bad argument,
 * -EPIPE for a server that was closed (conc_server_close), and the codes
 * each call lists.
 *
 * Threads: shutdown and the getters may be called from any thread (and
 * shutdown from a signal handler); serve_forever and handle_request from
 * one thread at a time (-EBUSY otherwise); close and free once nothing
 * serves.
 */
#ifndef CONC_SERVER_H
#define CONC_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "conc/common.h"
#include "conc/errors.h"
#include "conc/socket.h"
#include "conc/time.h"

#ifdef __cplusplus
extern "C" {
#endif

/* conc_server - one server (Python's socketserver.BaseServer). */
typedef struct conc_server conc_server;

/* The server models (see the top of this header). */
typedef enum conc_server_model {
    CONC_SERVER_SYNC = 0,
    CONC_SERVER_THREADING = 1,
    CONC_SERVER_FORKING = 2,
    CONC_SERVER_PREFORK = 3,
    CONC_SERVER_COROUTINE = 4,
    CONC_SERVER_REACTOR = 5
} conc_server_model;

/*
 * conc_server_request - what a handler is given (Python's
 * BaseRequestHandler attributes).  Valid from setup to the end of finish.
 */
typedef struct conc_server_request {
    conc_server *server;        /* self.server */
    conc_socket *sock;          /* stream: the connection (self.request),
                                   owned by the server, closed after finish;
                                   datagram: the server's socket, to reply
                                   with conc_socket_sendto(sock, ..., &peer) */
    conc_sockaddr peer;         /* self.client_address (an unnamed Unix
                                   client has len 2 or 0, as the kernel says) */
    const void *data;           /* datagram: the datagram (self.request[0]);
                                   stream: NULL */
    size_t len;                 /* the datagram's length; stream: 0 */
    void *user;                 /* the handler's user pointer */
    void *state;                /* the handler's own, NULL at setup: what
                                   setup leaves here handle and finish see */
} conc_server_request;

/*
 * conc_server_handler - the request handler class.  Each hook may be NULL
 * (it then does nothing), except handle.
 *   setup    runs first; a negative return skips handle and finish (the
 *            request counts as failed and its connection is closed)
 *   handle   serves the request; a negative return counts it as failed
 *            and is passed to handle_error
 *   finish   runs after handle (also when handle failed)
 *   handle_error  Python's server.handle_error: called with the error
 *            setup or handle returned (nothing is printed by conc); after
 *            finish when handle failed, as in Python (req->state is what
 *            finish left there); also with the error that kept a
 *            request's thread, child or greenlet from starting (then no
 *            other hook ran, and the connection is closed after it)
 *   verify_request  Python's verify_request: false refuses the client
 *            (its connection is closed at once, no hook runs; counted in
 *            conc_server_stats.refused); NULL accepts everyone
 * The hooks of one request run in one thread (or greenlet, or child
 * process) one after the other; hooks of different requests run at the
 * same time in every model but SYNC, so what they share needs a lock.
 */
typedef struct conc_server_handler {
    int (*setup)(conc_server_request *req);
    int (*handle)(conc_server_request *req);
    void (*finish)(conc_server_request *req);
    void (*handle_error)(conc_server_request *req, int err);
    bool (*verify_request)(conc_server *server, const conc_sockaddr *peer, void *user);
    void *user;                 /* given to every hook as req->user */
} conc_server_handler;

/* ----------------------------------------------------------- reactor */

/* conc_server_conn - one connection of a reactor server.  Valid from
 * on_accept to the end of on_close; used only from the callbacks of its
 * loop (the thread that runs them). */
typedef struct conc_server_conn conc_server_conn;

/*
 * conc_server_reactor_handler - the callbacks of CONC_SERVER_REACTOR.  They
 * run in the loop's thread and must not block (a blocking conc call would
 * hold up every connection of the loop).
 *   on_accept  a new connection; a negative return closes it (no on_close)
 *   on_data    len (> 0) bytes arrived; the bytes are valid during the
 *              call only.  A negative return closes the connection
 *              (after its pending output is sent)
 *   on_drain   the write buffer emptied after it had passed
 *              write_buffer_max (the back-pressure was lifted); may be NULL
 *   on_close   the connection ended: err 0 when the peer closed or the
 *              handler asked, -ETIMEDOUT when it was idle for idle_timeout,
 *              -ECANCELED when the shutdown timeout cut it off, else the
 *              error (-ECONNRESET...); may be NULL
 * Back-pressure: conc_server_conn_write buffers what the socket does not
 * take at once; while more than write_buffer_max bytes wait, the loop
 * stops reading that connection (on_data is not called) until they drain.
 */
typedef struct conc_server_reactor_handler {
    int (*on_accept)(conc_server_conn *c, void *user);
    int (*on_data)(conc_server_conn *c, const void *data, size_t len, void *user);
    void (*on_drain)(conc_server_conn *c, void *user);
    void (*on_close)(conc_server_conn *c, int err, void *user);
    void *user;
} conc_server_reactor_handler;

/*
 * conc_server_conn_write - send len bytes on c.  The bytes are copied (into
 * an area the loop keeps for the batch's output, or into c's own buffer)
 * and sent when the loop has run the callbacks of the events it woke for,
 * before it waits again: one send per connection for everything its
 * callbacks wrote, and all the batch's sends after all its reads (cheaper
 * for the kernel than alternating them).  A write of 64 KiB or more with
 * nothing buffered before it goes to the socket at once instead.  What the
 * socket does not take stays in c's own buffer and is sent as the client
 * reads.  The order of the bytes is the order of the writes.
 * A send that fails ends the connection (on_close gets the error).
 * Returns 0; -EINVAL for NULL c or NULL data with len > 0; -EPIPE when the
 * connection is closing or closed; -ENOMEM (the connection is then
 * closed).
 */
CONC_API int conc_server_conn_write(conc_server_conn *c, const void *data, size_t len);

/* conc_server_conn_close - close c once its buffered output is sent
 * (on_close follows).  Returns 0; -EINVAL for NULL. */
CONC_API int conc_server_conn_close(conc_server_conn *c);

/* conc_server_conn_pending - bytes buffered and not yet sent; 0 for NULL. */
CONC_API size_t conc_server_conn_pending(const conc_server_conn *c);

/* conc_server_conn_peer - the client's address; NULL for NULL. */
CONC_API const conc_sockaddr *conc_server_conn_peer(const conc_server_conn *c);

/* conc_server_conn_fd - the connection's descriptor (do not close it);
 * -EINVAL for NULL. */
CONC_API int conc_server_conn_fd(const conc_server_conn *c);

/* conc_server_conn_set_data / conc_server_conn_data - a pointer of the
 * handler's kept with the connection (NULL at on_accept). */
CONC_API void conc_server_conn_set_data(conc_server_conn *c, void *data);
CONC_API void *conc_server_conn_data(const conc_server_conn *c);

/* conc_server_conn_server - the server c belongs to; NULL for NULL. */
CONC_API conc_server *conc_server_conn_server(const conc_server_conn *c);

/* ---------------------------------------------------------- options */

/* Options of conc_server_new and conc_server_new_reactor; all-zero (or
 * NULL) means the defaults. */
typedef struct conc_server_opts {
    uint32_t size;              /* sizeof(conc_server_opts), or 0: this
                                   first version */
    conc_server_model model;    /* CONC_SERVER_SYNC by default */
    bool allow_reuse_address;   /* SO_REUSEADDR before bind (Python's
                                   allow_reuse_address, off by default) */
    bool reuse_port;            /* SO_REUSEPORT before bind (Python's
                                   allow_reuse_port; on port 0 right after
                                   bind, so the kernel never hands out the
                                   port of another program's group);
                                   PREFORK: a socket per worker (see the
                                   models) */
    int request_queue_size;     /* listen() backlog; 0: 5, Python's */
    int workers;                /* PREFORK: processes; COROUTINE, REACTOR:
                                   loops, each in a thread of its own;
                                   0: one per CPU (conc_process_cpu_count)
                                   for PREFORK and COROUTINE, 1 for
                                   REACTOR */
    int max_children;           /* FORKING: children at once; 0: 40, Python's */
    int max_connections;        /* connections served at once by the
                                   server, all its loops together (PREFORK:
                                   by each worker); 0: no limit (FORKING:
                                   max_children) */
    bool daemon_threads;        /* THREADING: do not wait for request threads
                                   when stopping (Python's daemon_threads) */
    bool no_block_on_close;     /* THREADING, FORKING: do not wait for
                                   requests in flight when stopping or closing
                                   (Python's block_on_close = False) */
    double shutdown_timeout;    /* seconds in-flight requests get after a
                                   shutdown before their connections are
                                   shut down and children sent SIGTERM
                                   (SIGKILL CONC_SERVER_KILL_GRACE later);
                                   0: no limit (Python) */
    double request_timeout;     /* the timeout of each connection's socket
                                   (StreamRequestHandler.timeout); 0: none */
    size_t stack_size;          /* THREADING threads, COROUTINE and PREFORK
                                   greenlets; 0: the defaults (the thread
                                   default, CONC_CORO_STACK_DEFAULT);
                                   else at least CONC_THREAD_STACK_MIN for
                                   threads, CONC_CORO_STACK_MIN to
                                   CONC_CORO_STACK_MAX for greenlets
                                   (conc_server_new: -EINVAL) */
    size_t read_size;           /* REACTOR: bytes read per call; 0: 64 KiB */
    size_t write_buffer_max;    /* REACTOR: back-pressure mark; 0: 1 MiB */
    size_t max_datagram;        /* datagram servers: the largest datagram
                                   read, longer ones are cut; 0: 8192
                                   (Python's max_packet_size); at most
                                   CONC_SERVER_MAX_DATAGRAM */
    void (*service_actions)(conc_server *server, void *user);
                                /* Python's service_actions: called by
                                   serve_forever, in its thread, at least
                                   every poll_interval whether requests
                                   come or not, and with SYNC, THREADING
                                   and FORKING also after each request
                                   taken, as Python's loop does; not during
                                   the drain after a shutdown, nor by
                                   handle_request */
    void (*on_worker_exit)(conc_server *server, pid_t pid, int status, void *user);
                                /* PREFORK: a worker ended while serving
                                   (status as conc_process_exitcode: the exit
                                   code, or -signal); it is replaced (after
                                   a wait when it had not started serving,
                                   see the models) */
    void *user;                 /* given to service_actions, on_worker_exit */
    double idle_timeout;        /* REACTOR: seconds a connection may stay
                                   idle (nothing arrived from it and none of
                                   its buffered output was taken) before it
                                   is closed, on_close getting -ETIMEDOUT;
                                   0 (or INFINITY): no limit.  The other
                                   models have request_timeout for it */
    int stack;                  /* COROUTINE, PREFORK: where each
                                   connection's greenlet keeps its stack
                                   (conc/hub.h; the names in conc/common.h):
                                   CONC_STACK_OWN or CONC_STACK_COPIED;
                                   0: CONC_SERVER_STACK (see "Stacks"
                                   above) */
    int thread_cache;           /* THREADING: request threads kept parked
                                   at most once their request ended, to
                                   serve the next ones (see the models); 0:
                                   no count limit (never more than ran at
                                   once, each ending after thread_idle
                                   seconds unused); -1: none, each thread
                                   ends with its request */
    double thread_idle;         /* THREADING: seconds a parked request
                                   thread waits unused before it ends; 0:
                                   CONC_SERVER_THREAD_IDLE */
} conc_server_opts;
#define CONC_SERVER_OPTS_INIT { .size = sizeof(conc_server_opts) }

/* Where COROUTINE and PREFORK greenlets keep their stacks when
 * conc_server_opts.stack is 0 (see "Stacks" above). */
#define CONC_SERVER_STACK CONC_STACK_OWN

/* Python's request_queue_size and ForkingMixIn.max_children. */
#define CONC_SERVER_QUEUE_SIZE 5
#define CONC_SERVER_MAX_CHILDREN 40
/* The largest conc_server_opts.max_datagram (16 MiB): more than any
 * datagram Linux carries by default (64 KiB on UDP, the socket's send
 * buffer on a Unix socket), and a buffer each loop, worker or request
 * can still be given. */
#define CONC_SERVER_MAX_DATAGRAM ((size_t)16 << 20)
/* PREFORK: the failures in a row of every worker's slot to start serving
 * (see the models) after which serve_forever gives up with the error. */
#define CONC_SERVER_WORKER_START_FAILURES 5
/* THREADING: the seconds a parked request thread stays unused before it
 * ends when conc_server_opts.thread_idle is 0. */
#define CONC_SERVER_THREAD_IDLE 60.0
/* Seconds a process still serving when conc_server_opts.shutdown_timeout
 * ran out is given before SIGKILL: a FORKING child from its SIGTERM, a
 * PREFORK worker from the end of its own drain. */
#define CONC_SERVER_KILL_GRACE 1.0
/* Python's serve_forever(poll_interval=0.5). */
#define CONC_SERVER_POLL_INTERVAL 0.5

/* -------------------------------------------------------- lifecycle */

/*
 * conc_server_new - TCPServer / UDPServer / UnixStreamServer /
 * UnixDatagramServer(server_address, RequestHandlerClass) with the model's
 * mix-in: a socket of addr's family (AF_INET, AF_INET6, AF_UNIX) and of
 * type (SOCK_STREAM or SOCK_DGRAM), bound to addr (port 0: the kernel
 * picks one; conc_server_address tells it) and, for a stream socket,
 * listening.  Nothing is served until serve_forever or handle_request.  A
 * Unix socket file the server made is removed by conc_server_close.
 * Returns 0 and stores the handle in *out, or:
 *   -EINVAL         NULL out, addr or handler, a handler without handle,
 *                   another type, a negative count (thread_cache below
 *                   -1), a max_datagram above CONC_SERVER_MAX_DATAGRAM, a
 *                   bad timeout, model, stack or stack_size (see its
 *                   field), CONC_SERVER_REACTOR with
 *                   SOCK_STREAM (conc_server_new_reactor takes it), an
 *                   addr->len that cannot hold the family or is longer
 *                   than conc_sockaddr's; bind's own -EINVAL for an
 *                   addr->len that does not suit the family's address
 *   -EAFNOSUPPORT   a family other than AF_INET, AF_INET6 and AF_UNIX, or
 *                   one the kernel lacks (AF_INET6 with IPv6 disabled)
 *   -EADDRINUSE     the address is taken: a port another socket holds
 *                   (one in TIME_WAIT too, unless allow_reuse_address), a
 *                   Unix path where a file exists (a socket file a server
 *                   left behind without conc_server_close included: remove
 *                   it first), an abstract Unix name in use
 *   -EADDRNOTAVAIL  an Internet address that is not one of this host's
 *   -EACCES         a port below net.ipv4.ip_unprivileged_port_start
 *                   (1024) without CAP_NET_BIND_SERVICE; a Unix path in a
 *                   directory the caller may not search or write
 *   -ENOENT         a Unix path in a directory that does not exist
 *                   (-ENOTDIR, -ELOOP, -EROFS likewise, from the path)
 *   -EMFILE, -ENFILE  no descriptor left for the socket or the server's
 *                   two eventfds
 *   -ENOMEM, -ENOBUFS  memory short
 * and any other error of socket(2), setsockopt(2), bind(2) or listen(2)
 * as the kernel gives it.  -ENAMETOOLONG does not come from here: a Unix
 * path too long for sun_path is refused by conc_sockaddr_unix.  The
 * handler struct is copied.
 */
CONC_API int conc_server_new(conc_server **out, int type, const conc_sockaddr *addr,
                             const conc_server_handler *handler, const conc_server_opts *opts);

/*
 * conc_server_new_reactor - a stream server of the CONC_SERVER_REACTOR
 * model with the callbacks of handler (copied).  opts->model must be 0 or
 * CONC_SERVER_REACTOR.  Returns as conc_server_new; -EINVAL also for a
 * handler without on_data.
 */
CONC_API int conc_server_new_reactor(conc_server **out, const conc_sockaddr *addr,
                                     const conc_server_reactor_handler *handler,
                                     const conc_server_opts *opts);

/*
 * conc_server_new_fd - a server on a socket the caller made and bound:
 * Python's Server(addr, Handler, bind_and_activate=False) followed by
 * server_bind and server_activate done by hand (socket, setsockopt, bind,
 * listen), or a socket handed over by a service manager (systemd's
 * LISTEN_FDS, from descriptor 3 on; inetd's 0).  fd must be an AF_INET,
 * AF_INET6 or AF_UNIX socket of type SOCK_STREAM (listening) or SOCK_DGRAM,
 * bound to an address; its type decides the server's, and the model and
 * options are those of conc_server_new, except the ones that only matter
 * to bind and listen (allow_reuse_address, request_queue_size) which are
 * the caller's business.  With reuse_port (PREFORK's socket per worker)
 * fd must have SO_REUSEPORT on.  On success the server owns fd (made
 * O_NONBLOCK and close-on-exec; conc_server_close closes it and leaves a
 * Unix socket file alone, since the server did not make it); on failure it
 * stays the caller's, unchanged.  Returns 0 and stores the handle in *out;
 * -EBADF for a negative or closed fd; -ENOTSOCK when fd is not a socket;
 * -EAFNOSUPPORT for another family; -EINVAL for another type (such as
 * SOCK_SEQPACKET), an unbound socket, a stream socket that is not
 * listening, reuse_port without SO_REUSEPORT on fd, and the -EINVAL cases
 * of conc_server_new; -ENOMEM.
 */
CONC_API int conc_server_new_fd(conc_server **out, int fd, const conc_server_handler *handler,
                                const conc_server_opts *opts);

/*
 * conc_server_new_reactor_fd - conc_server_new_reactor on a listening
 * stream socket the caller made, as conc_server_new_fd takes it over.
 * Returns as conc_server_new_fd; -EINVAL also for a datagram socket
 * (conc_server_new_fd serves datagrams with the REACTOR model) and a
 * handler without on_data.
 */
CONC_API int conc_server_new_reactor_fd(conc_server **out, int fd,
                                        const conc_server_reactor_handler *handler,
                                        const conc_server_opts *opts);

/*
 * conc_server_close - server_close(): stop serving if still serving (as
 * conc_server_shutdown_wait), wait for the requests in flight (unless
 * daemon_threads or no_block_on_close; bounded by shutdown_timeout), close
 * the socket and remove a Unix socket file.  Closing twice is allowed (0).
 * Returns 0; -EINVAL for NULL.
 */
CONC_API int conc_server_close(conc_server *s);

/* conc_server_free - close the server (when open) and free the handle.
 * Request threads not waited for keep what they use until they end.  NULL
 * is a no-op. */
CONC_API void conc_server_free(conc_server *s);

/* ----------------------------------------------------------- serving */

/*
 * conc_server_serve_forever - serve_forever(poll_interval): take and serve
 * requests until conc_server_shutdown, then finish the requests in flight
 * (see "Stopping" above) and return.  poll_interval (seconds, > 0) is how
 * often service_actions runs at the least, busy or idle; the shutdown
 * itself is seen at once.  A shutdown that came before the call makes it return at once
 * (and clears it, so the server can be served again).  Returns 0 after a
 * shutdown; -EINVAL for NULL or a poll_interval that is not > 0; -EBUSY
 * when the server is being served already; -EPIPE when closed; an error
 * that ended the server (-ENOMEM, or the error of its worker threads or
 * processes failing to start: with PREFORK, once the worker of every slot
 * ended before its loop served CONC_SERVER_WORKER_START_FAILURES times in
 * a row, the last one's error, such as -EADDRINUSE for a socket of its
 * own it could not bind, or -ECHILD when it was killed).
 */
CONC_API int conc_server_serve_forever(conc_server *s, double poll_interval);

/*
 * conc_server_handle_request - handle_request(): wait for one request and
 * serve it with the server's model.  timeout (as in conc/time.h,
 * CONC_FOREVER: none) bounds the wait for the request, not its serving.
 *   SYNC       serves it before returning
 *   THREADING, FORKING, COROUTINE  start its thread, child or greenlet (of
 *              the calling thread's hub) and return
 *   PREFORK    forks one worker, which waits for the request itself (the
 *              process exists before the request comes, as the model
 *              promises), takes it, tells the parent and serves it; the
 *              call returns once the worker took it, and the worker is
 *              then one of the server's children, waited for by
 *              conc_server_close (as FORKING's child is).  When none came
 *              the worker exits and nothing is left behind
 *   REACTOR    runs the loop in the calling thread (one loop, whatever
 *              `workers` says) until one connection was accepted and has
 *              ended (on_close ran), or one datagram was handled
 * Returns 0 once a request was taken: also when verify_request refused it,
 * and when its thread, child or greenlet could not start (handle_error
 * then saw that error, -EAGAIN, -ENOMEM or fork's, with the connection,
 * which was then closed, and stats.failed counts it; Python's returns
 * normally too, and serve_forever goes on serving), so the codes below
 * always mean that no request was taken.  -EAGAIN (timeout 0) or
 * -ETIMEDOUT when none came (Python's handle_timeout); -EPIPE when closed;
 * -EBUSY while serve_forever runs; -ECHILD when a PREFORK worker died
 * before it said; a PREFORK worker that could not be forked: fork's error
 * (the request stays in the backlog); -EINVAL.
 */
CONC_API int conc_server_handle_request(conc_server *s, double timeout);
CONC_API int conc_server_handle_request_until(conc_server *s, int64_t deadline);

/*
 * conc_server_shutdown - ask serve_forever to stop and return at once.
 * Async-signal-safe.  Returns 0; -EINVAL for NULL.
 */
CONC_API int conc_server_shutdown(conc_server *s);

/*
 * conc_server_shutdown_wait - Python's shutdown(): ask serve_forever to
 * stop and wait until it has returned.  When no serve_forever runs it
 * returns 0 at once (where Python's blocks forever) and the request is
 * kept: the next serve_forever returns at once (see "Stopping"), also one
 * that was starting at the time of the call.
 * Not from a signal handler, nor from a handler (serve_forever waits for
 * the request, which would wait for serve_forever, as in Python: a handler
 * calls conc_server_shutdown).  Returns 0; -EDEADLK from the thread in
 * serve_forever (a greenlet of its hub too); -ETIMEDOUT / -EAGAIN when it
 * still serves when time is up; -EINVAL.
 */
CONC_API int conc_server_shutdown_wait(conc_server *s, double timeout);
CONC_API int conc_server_shutdown_wait_until(conc_server *s, int64_t deadline);

/* conc_server_stopping - true from a shutdown until serve_forever returns
 * (a handler that loops may end early); false for NULL. */
CONC_API bool conc_server_stopping(const conc_server *s);

/* --------------------------------------------------------- attributes */

/*
 * conc_server_address - server.server_address: the address the socket is
 * bound to, with the port the kernel chose.  Returns 0; -EINVAL for NULL;
 * -EPIPE when closed.
 */
CONC_API int conc_server_address(const conc_server *s, conc_sockaddr *out);

/* conc_server_fd - server.fileno(): the bound socket's descriptor (do not
 * close it); -EINVAL for NULL; -EPIPE when closed. */
CONC_API int conc_server_fd(const conc_server *s);

/* conc_server_get_model - the model; CONC_SERVER_SYNC for NULL. */
CONC_API conc_server_model conc_server_get_model(const conc_server *s);

/* conc_server_socket_type - SOCK_STREAM or SOCK_DGRAM; 0 for NULL. */
CONC_API int conc_server_socket_type(const conc_server *s);

/* Counters of a server (across its worker and child processes). */
typedef struct conc_server_stats {
    uint64_t accepted;          /* connections or datagrams taken */
    uint64_t refused;           /* turned away by verify_request */
    uint64_t finished;          /* requests whose handler ran to the end */
    uint64_t failed;            /* setup or handle returned an error, or a
                                   request's child died of a signal */
    uint64_t active;            /* requests in flight now */
    uint64_t workers;           /* PREFORK: worker processes alive;
                                   COROUTINE (stream) and REACTOR: loops
                                   serving (threads); 0 otherwise */
    uint64_t worker_restarts;   /* PREFORK workers replaced after dying */
} conc_server_stats;

/* conc_server_get_stats - the counters into *out.  Returns 0; -EINVAL for
 * NULL. */
CONC_API int conc_server_get_stats(const conc_server *s, conc_server_stats *out);

/* conc_server_model_name - "sync", "threading", "forking", "prefork",
 * "coroutine", "reactor"; NULL for another value. */
CONC_API const char *conc_server_model_name(conc_server_model model);

/* conc_server_model_parse - the model named name (as model_name gives)
 * into *out.  Returns 0; -EINVAL for NULL or an unknown name. */
CONC_API int conc_server_model_parse(const char *name, conc_server_model *out);

#ifdef __cplusplus
}
#endif
#endif /* CONC_SERVER_H */
