/* manager_internal.h - between the manager's client (manager.c) and its
 * server (manager_server.c); not installed. */
#ifndef CONC_MANAGER_INTERNAL_H
#define CONC_MANAGER_INTERNAL_H

#include <stddef.h>
#include "conc/listener.h"
#include "conc/manager.h"

/* A registered type. */
struct conc__mgr_type {
    char *name;
    conc_manager_type t;
};

struct conc__mgr_server;

/* A server over a listening socket (taken over: the server closes it) and
 * the registered types (borrowed; they outlive the server). */
int conc__mgr_server_new(struct conc__mgr_server **out, conc_listener *l,
                         const struct conc__mgr_type *types, size_t ntypes, size_t max_message);

/* The number of threads that serve connections (0: one per CPU, at most
 * 4; 1 whatever is asked when types are registered); before run. */
void conc__mgr_server_threads(struct conc__mgr_server *s, unsigned n);

/* Accepts and serves until conc__mgr_server_stop or a client's shutdown;
 * then ends every connection, frees every object and closes the listener.
 * The accept loop waits without a time limit (an idle server makes no
 * system call): a stop, a connection's end and a SIGTERM wake it.
 * Returns 0. */
int conc__mgr_server_run(struct conc__mgr_server *s);

/* Makes the server stop, as for a shutdown request, when a SIGTERM is
 * pending for the process: the caller blocks SIGTERM in every thread (the
 * started child does, before the server's threads exist); a signalfd of
 * it wakes the accept loop, which takes it with sigtimedwait. */
void conc__mgr_server_take_sigterm(struct conc__mgr_server *s);

/* Asks a running server to stop (any thread; an atomic store). */
void conc__mgr_server_stop(struct conc__mgr_server *s);

/* Frees a server that has returned from run (or never ran). */
void conc__mgr_server_free(struct conc__mgr_server *s);

/* Arms TCP keepalives on a connected TCP socket (nothing for any other):
 * a peer machine that vanished without closing (power, network) is then
 * noticed within about CONC__MGR_KEEPALIVE_S seconds, its connection
 * failing as a reset one does. */
#define CONC__MGR_KEEPALIVE_IDLE 15     /* seconds idle before the first probe */
#define CONC__MGR_KEEPALIVE_INTVL 5     /* seconds between probes */
#define CONC__MGR_KEEPALIVE_CNT 3       /* probes unanswered: the peer is gone */
#define CONC__MGR_KEEPALIVE_S \
    (CONC__MGR_KEEPALIVE_IDLE + CONC__MGR_KEEPALIVE_INTVL * CONC__MGR_KEEPALIVE_CNT)
void conc__mgr_keepalive(int fd);

#endif
