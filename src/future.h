/*
 * future.h - the inside of conc_future (conc/future.h), for the producers
 * in the library (executors, pools) and the waits over several futures.
 */
#ifndef CONC_FUTURE_INTERNAL_H
#define CONC_FUTURE_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include "conc/future.h"
#include "internal.h"

/*
 * A watcher: something that wants to hear when any of several futures is
 * done (conc_future_wait_many, conc_as_completed).  Each future it watches
 * gets one of its nodes; when that future is done, the node is pushed on
 * the watcher's `done` stack and `seq` is bumped and woken.  Nodes are
 * linked into and out of a future under the future's lock, and notified
 * under it, so a node is never touched after conc__future_unwatch returns.
 */
struct conc__watch_node {
    struct conc__watcher *w;
    conc_future *f;
    struct conc__watch_node *prev, *next;   /* the future's list */
    struct conc__watch_node *done_next;     /* the watcher's done stack */
    bool linked;
};

struct conc__watcher {
    uint32_t seq;                           /* futex word: bumped per push */
    uint32_t sleepers;
    struct conc__watch_node *done;          /* stack, newest first */
};

/* Links node (node->w and node->f set) into its future.  Returns true when
 * the future was not done (the node will be notified), false when it is
 * done already (the node is not linked, not pushed). */
CONC_HIDDEN bool conc__future_watch(struct conc__watch_node *node);
/* Unlinks node from its future (no-op when it is not linked: it was
 * notified or never linked). */
CONC_HIDDEN void conc__future_unwatch(struct conc__watch_node *node);
/* Takes the watcher's done stack (newest first); NULL when empty. */
CONC_HIDDEN struct conc__watch_node *conc__watcher_take(struct conc__watcher *w);
/* Waits until the watcher's seq moves from `seen`, until deadline:
 * 0 (moved or woken: re-check), -ETIMEDOUT, -ECANCELED. */
CONC_HIDDEN int conc__watcher_wait(struct conc__watcher *w, uint32_t seen, int64_t deadline);

struct conc__cb_node;

struct conc_future {
    uint32_t state;             /* futex word: conc_future_status */
    uint32_t sleepers;          /* threads or coroutines waiting on state */
    uint32_t refs;
    bool bytes;                 /* the result is an owned buffer */
    bool taken;                 /* the result was taken */
    int err;                    /* the exception's code, 0 for none */
    int detail;
    void *value;                /* the pointer, or the buffer */
    size_t len;
    conc_drop_fn drop;
    void *drop_arg;
    int efd;                    /* readiness eventfd, -1 until asked */
    pthread_mutex_t mu;         /* guards the transitions and the lists */
    struct conc__cb_node *cbs, **cbs_tail;
    struct conc__watch_node *watchers;

    /* The producer's say on a cancel (NULL: none): conc_future_cancel
     * calls it under mu while the future is PENDING; 0 lets the cancel go
     * on (the call will not run), anything else means the call began: the
     * future turns RUNNING and cancel gives -EBUSY.  It must not take mu.
     * Set before anyone else can reach the future. */
    int (*p_veto)(void *arg);
    /* ... and on its state (NULL: none): conc_future_state and
     * conc_future_running call it under mu while the future is PENDING;
     * true means the call began (the future turns RUNNING).  The same
     * rules. */
    bool (*p_probe)(void *arg);
    void *p_hook_arg;           /* for both */

    /* The producer's own fields: conc_future never reads or writes them
     * (an executor queues its calls through them). */
    conc_future *p_next;
    void (*p_fn)(void);
    void *p_arg;
    size_t p_len;
    int p_kind;
};

#endif
