/*
 * server.h - what the server's files share (src/server.c: the server, the
 * sync, threading and forking models; src/server_proc.c: prefork;
 * src/server_coro.c: the coroutine and reactor loops).
 */
#ifndef CONC_SRC_SERVER_H
#define CONC_SRC_SERVER_H

#include <stdatomic.h>
#include "conc/server.h"
#include "conc/sync.h"
#include "internal.h"

/* Counters in a shared mapping, so that worker and child processes add to
 * the parent's. */
struct conc__server_counters {
    _Atomic uint64_t accepted, refused, finished, failed, active, workers, restarts;
};

/* A request in flight whose connection may have to be shut down when the
 * shutdown timeout passes. */
struct conc__server_slot {
    int fd;                             /* the connection; -1: none */
    bool reserved;                      /* holds room under the server-wide
                                           connection limit
                                           (conc__server_reserve), given
                                           back when the request leaves */
    struct conc__server_slot *prev, *next;
};

/* A loop (coroutine or reactor) waiting for room under the server-wide
 * connection limit: its eventfd is written when a connection of any loop
 * ends while it is armed. */
struct conc__server_gate {
    int fd;                             /* eventfd; -1: none */
    bool armed;                         /* waiting for room (mu) */
    struct conc__server_gate *next;     /* the server's gates (mu) */
};

struct conc_server {
    conc_server_opts o;
    conc_server_handler h;
    conc_server_reactor_handler rh;
    bool reactor;
    int type;
    conc_socket *sock;                  /* NULL once closed */
    int fd;
    conc_sockaddr addr;
    bool unlink_path;
    int stopfd;                         /* eventfd: readable once shut down */
    int slotfd;                         /* eventfd: a request ended */
    _Atomic int stop_req;
    _Atomic int serving;
    _Atomic pid_t serving_tid;          /* the thread in serve_forever, or 0 */
    int64_t service_step;               /* serve_forever's poll_interval, ns */
    _Atomic int refs;
    pid_t owner;                        /* the process that made it */
    conc_event idle;                    /* set while serve_forever does not run */
    struct conc__server_counters *st;   /* shared mapping */
    conc_lock mu;                       /* slots, nthreads */
    conc_cond cv;                       /* a request ended */
    struct conc__server_slot slots;     /* list head */
    long inflight;                      /* requests of this process in flight */
    bool loop_waits_slot;               /* the accepting loop is at the
                                           connection limit: wake it through
                                           slotfd when a request ends (mu) */
    _Atomic long open;                  /* connections holding room under
                                           max_connections, across the
                                           loops of this process (the
                                           reserved ones) */
    _Atomic int gates_armed;            /* gates waiting for room */
    struct conc__server_gate *gates;    /* the loops' gates (mu) */
    _Atomic int *worker_ready;          /* a PREFORK worker's: set to 1
                                           once its loop serves (memory
                                           the parent shares); NULL
                                           elsewhere */
    struct conc__server_parked {          /* THREADING: request threads
                                           parked for the next request
                                           (mu) */
        struct conc__server_worker *head;   /* the latest parked first */
        int n, max;                     /* parked; at most (thread_cache) */
        bool closed;                    /* closed: none parks any more */
    } parked;
    struct conc__server_kids {          /* FORKING's children (the serving
                                           thread's and close's) */
        struct conc_process **p;
        size_t n, cap;
    } kids;
};

/* Counts a request in (slot linked, active + 1) and out. */
CONC_HIDDEN void conc__server_enter(conc_server *s, struct conc__server_slot *slot, int fd);
CONC_HIDDEN void conc__server_leave(conc_server *s, struct conc__server_slot *slot);
/* The same, closing fd between (after the slot is unlinked, before the
 * count goes down). */
CONC_HIDDEN void conc__server_leave_close(conc_server *s, struct conc__server_slot *slot, int fd);

/* The server-wide connection limit of the loops (COROUTINE, REACTOR and
 * each PREFORK worker's): a loop takes room for a connection before it
 * accepts one (or reads a datagram), so that the loops together never
 * serve more than max_connections at once.  reserve returns true when it
 * took room (always without a limit: nothing is counted then); unreserve
 * gives it back and wakes the armed gates.  A slot whose `reserved` is set
 * gives its room back when the request leaves. */
CONC_HIDDEN bool conc__server_reserve(conc_server *s);
CONC_HIDDEN void conc__server_unreserve(conc_server *s);
/* A loop's gate: open makes its eventfd and links it (0 or -errno); close
 * unlinks it and closes the eventfd.  arm, called when reserve said no,
 * asks for a wake-up when room is made and tries again: true when it took
 * room after all (the gate is then disarmed), false when the loop is to
 * wait for the gate's fd to turn readable and then clear it
 * (conc__server_gate_clear) and try again. */
CONC_HIDDEN int conc__server_gate_open(conc_server *s, struct conc__server_gate *g);
CONC_HIDDEN void conc__server_gate_close(conc_server *s, struct conc__server_gate *g);
CONC_HIDDEN bool conc__server_gate_arm(conc_server *s, struct conc__server_gate *g);
CONC_HIDDEN void conc__server_gate_clear(struct conc__server_gate *g);

/* Runs setup/handle/finish for one request; returns 0 or the error. */
CONC_HIDDEN int conc__server_run_handler(conc_server *s, conc_server_request *req);
/* The same without counting it finished or failed (a child process, whose
 * exit code is counted by the parent). */
CONC_HIDDEN int conc__server_run_hooks(conc_server *s, conc_server_request *req);
/* Fills req for a connection c (NULL: the server's socket) or a datagram. */
CONC_HIDDEN void conc__server_init_request(conc_server *s, conc_server_request *req,
                                           conc_socket *c, const conc_sockaddr *peer,
                                           const void *data, size_t len);
/* Takes over p, a started child serving one request (counted in: active,
 * in flight); it is reaped, counted by its exit code (0: finished), as the
 * FORKING model's children are.  Returns 0 or -ENOMEM (p stays the
 * caller's). */
CONC_HIDDEN int conc__server_add_kid(conc_server *s, struct conc_process *p);

/* Serves one accepted connection fd (owned, non-blocking) in the calling
 * thread or greenlet, counting it in and out. */
CONC_HIDDEN void conc__server_serve_conn(conc_server *s, conc_socket *c, const conc_sockaddr *peer);

/* Serves a request counted in already (slot): the handler, then the
 * connection c (unless NULL) is closed and the request counted out. */
CONC_HIDDEN void conc__server_serve_entered(conc_server *s, conc_socket *c,
                                            const conc_sockaddr *peer, const void *data,
                                            size_t len, struct conc__server_slot *slot);

/* A request handed to a thread or a greenlet: a stream's connection c
 * (NULL for a datagram) or a datagram's len bytes, which follow it in the
 * same allocation.  Whoever runs it frees it. */
struct conc__server_job {
    conc_server *s;
    conc_socket *c;                 /* stream: the connection */
    conc_sockaddr peer;
    struct conc__server_slot slot;
    size_t len;                     /* datagram: its bytes follow */
    unsigned char data[];
};

/* A new job for c or the datagram (data, len), not counted in yet; NULL
 * when memory is short. */
CONC_HIDDEN struct conc__server_job *conc__server_job_new(conc_server *s, conc_socket *c,
                                                          const conc_sockaddr *peer,
                                                          const void *data, size_t len);

/* Serves one datagram in the calling thread or greenlet. */
CONC_HIDDEN void conc__server_serve_datagram(conc_server *s, const conc_sockaddr *peer,
                                             const void *data, size_t len);

/* Waits until no request of this process is in flight, shutting down the
 * connections still open once the shutdown timeout (from stop_at) passes. */
CONC_HIDDEN void conc__server_drain(conc_server *s, int64_t stop_at);

/* Shuts down the connections of every request in flight. */
CONC_HIDDEN void conc__server_force(conc_server *s);

/* COROUTINE's dispatch outside the loops (handle_request, datagrams): a
 * greenlet of the calling thread's hub serves the request (c, or the
 * datagram data/len, copied).  Returns 0 or an error (c is then the
 * caller's). */
CONC_HIDDEN int conc__server_spawn(conc_server *s, conc_socket *c, const conc_sockaddr *peer,
                                   const void *data, size_t len);

/* The coroutine loop: serves the listener (connections, or datagrams
 * with PREFORK) with greenlets in the calling thread, max_connections at
 * most at once, until stopfd or extra_fd (>= 0; POLLIN or a hang-up) is
 * ready. */
CONC_HIDDEN int conc__server_coro_loop(conc_server *s, int extra_fd);
/* The reactor loop, the same way. */
CONC_HIDDEN int conc__server_reactor_loop(conc_server *s, int extra_fd);
/* Runs loop in `workers` threads (the calling one among them). */
CONC_HIDDEN int conc__server_run_loops(conc_server *s, int (*loop)(conc_server *, int),
                                       int extra_fd);
/* The prefork model's serve_forever. */
CONC_HIDDEN int conc__server_prefork(conc_server *s);
/* handle_request of the prefork model: a worker forked now waits for one
 * request until deadline and serves it; returns 0 once it took one (the
 * worker is then one of the server's children), -ETIMEDOUT, or an error. */
CONC_HIDDEN int conc__server_prefork_one(conc_server *s, int64_t deadline);
/* handle_request of the reactor model: runs the loop in the calling thread
 * until one connection was taken and has ended, or one datagram was
 * handled; -ETIMEDOUT when none came by deadline. */
CONC_HIDDEN int conc__server_reactor_one(conc_server *s, int64_t deadline);

/* True once a shutdown was asked. */
static inline bool conc__server_stop_asked(const conc_server *s)
{
    return atomic_load_explicit(&s->stop_req, memory_order_acquire) != 0;
}

/* A request whose thread, child or greenlet could not start (err): counted
 * as failed and shown to handle_error (with c, the connection, still open:
 * the caller closes it). */
CONC_HIDDEN void conc__server_dispatch_failed(conc_server *s, conc_socket *c,
                                              const conc_sockaddr *peer, const void *data,
                                              size_t len, int err);

/* When serve_forever's service_actions next runs in the calling thread: a
 * poll_interval from now when this thread is serve_forever's and there are
 * service actions, else CONC_NO_DEADLINE (other loops, handle_request,
 * PREFORK's workers). */
CONC_HIDDEN int64_t conc__server_service_first(const conc_server *s);

/* Runs service_actions when `*at` has come (then sets the next time);
 * nothing when *at is CONC_NO_DEADLINE. */
CONC_HIDDEN void conc__server_service_due(conc_server *s, int64_t *at);

#endif
