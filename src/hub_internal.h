/*
 * hub_internal.h - what the hub's files share (src/hub.c, the hub and its
 * wait operations; src/hub_timers.c, its timers): the greenlet record, the
 * hub, and the timer calls.
 */
#ifndef CONC_HUB_INTERNAL_H
#define CONC_HUB_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conc/hub.h"
#include "internal.h"
#include "sys/park.h"

enum { G_NEW, G_READY, G_RUNNING, G_PARKED, G_DEAD };
enum { W_NONE, W_WORD, W_FD, W_SLEEP };
enum { W_JOIN = 16 };           /* in conc_greenlet_join, for a greenlet of its hub */

#define NO_INDEX ((size_t)-1)
#define IN_LIST ((size_t)-2)    /* heap_idx of a timer in the hub's list */
#define HUB_STACK (256u * 1024u)

struct hub;
struct hub_fdrec;

/* A greenlet's `done` word is 0, then GL_DONE once finished.  Whoever waits
 * for it from outside its hub (a plain thread, a coroutine of another hub)
 * parks on its spot `joined` (sys/park.h); coroutines of its own hub wait
 * in its list of joiners.
 *
 * No lost wake-up, and no locked instruction when a greenlet finishes: the
 * finisher stores DONE then reads the spot's count; a waiter counts itself
 * on the spot, then makes every thread of the process execute a full
 * barrier (membarrier), then reads `done` before it sleeps.  Either the
 * finisher's store is visible to the waiter, or the finisher's read comes
 * after the barrier and sees the count.  Without membarrier (old kernels),
 * the finisher puts a full fence between its store and its read. */
#define GL_DONE        1u

/* A spawned greenlet's record lives at the top of its coroutine's stack;
 * conc_greenlet_spawn sets every field (a new field needs a line there). */
struct conc_greenlet {
    struct hub *hub;
    conc_coro *coro;            /* the thread's main coroutine for the main
                                   record; else this record lives at the
                                   top of this coroutine's stack */
    uint64_t owner;             /* coro's lock-owner identity (0 for main):
                                   conc__owner_id() while it runs */
    conc_greenlet_fn fn;
    void *arg;
    void *result;
    uint32_t done;              /* DONE once finished */
    uint32_t refs;              /* handle + running */
    uint8_t state;              /* G_*, owner thread only */
    uint8_t wait_kind;          /* W_* while PARKED */
    uint8_t is_main;
    uint8_t killed;             /* killed before it started */
    uint8_t cancel_pending;     /* kill to deliver at the next blocking call */
    uint8_t in_table;           /* linked in the word table (bucket lock) */
    uint8_t copied;             /* runs on the hub's shared stack */
    int wake_rc;                /* what the parked call returns */
    int timer_rc;               /* what the timer makes it return */
    struct conc_greenlet *rnext;            /* ready queue */
    struct conc_greenlet *aprev, *anext;    /* the hub's live list */
    int64_t deadline;           /* timer, when heap_idx != NO_INDEX */
    size_t heap_idx;            /* or IN_LIST */
    struct conc_greenlet *tprev, *tnext;    /* the hub's timer list */
    struct conc_greenlet *joiners;          /* parked in conc_greenlet_join on it */
    struct conc__park joined;               /* joiners from outside the hub */
    struct conc_greenlet *jnext, **jpprev;  /* W_JOIN: in the target's joiners */
    uint32_t *word;             /* W_WORD; W_JOIN: the target's done word */
    struct conc_greenlet *wprev, *wnext;    /* bucket chain */
    struct conc_greenlet *remote_next;      /* hub's remote list */
    int fd, regfd;              /* W_FD: the fd, and the one in epoll */
    short events;
    uint32_t prlen;             /* W_FD in a record's read slot: the hub may
                                   read up to this many bytes for it when
                                   it takes the socket's edge (0: not) */
    uint8_t staged;             /* a pre-read's result waits for it */
    int prn;                    /* staged: bytes (in prdata), 0 for EOF, or
                                   -errno */
    const unsigned char *prdata;    /* staged: in the hub's arena */
    int ntimeouts;
    int64_t *timeouts;          /* CONC_TIMEOUT_DEPTH of them, each the min
                                   with the outer; allocated at the first
                                   push, freed when the greenlet finishes
                                   (most greenlets never push one) */
};

struct hub {
    conc_coro *loop;
    conc_greenlet main;         /* the record of the thread's main coroutine */
    conc_greenlet *current;     /* NULL while the loop itself runs */
    conc_greenlet *rhead, *rtail;
    size_t nready;              /* in the ready queue */
    conc_greenlet *dead;        /* finished, its running reference not yet
                                   dropped: by the next one to finish, the
                                   loop, or its handle's free in this thread
                                   (then without a locked instruction) */
    conc_greenlet **heap;       /* timers armed out of order */
    size_t nheap, capheap;
    conc_greenlet *thead, *ttail;   /* timers armed in deadline order (the
                                   common case: sleeps and timeouts of one
                                   length): a list, O(1) each way */
    int epfd, evfd;
    size_t nfd;                 /* descriptors registered for waiters */
    struct hub_fdrec *fdrec;    /* indexed by descriptor (src/hub.c, "fd
                                   records"), nfdrec entries */
    size_t nfdrec;
    conc_greenlet *remote;      /* atomic: woken by other threads, newest
                                   first (pushed with a compare-and-swap,
                                   taken whole with an exchange) */
    uint32_t pushers;           /* atomic: wakers between their push and
                                   their eventfd write (the hub outlives
                                   them) */
    uint32_t live;              /* futex word: spawned greenlets not finished */
    uint32_t njoin;             /* spawned greenlets parked in join_here */
    bool live_waited;           /* conc_hub_run waits for live to reach 0 */
    conc_greenlet *all;         /* live spawned greenlets */
    struct conc__shstack *shared;   /* copied greenlets' stack, or NULL */
    int stacks;                 /* conc_hub_set_stacks: CONC_STACK_OWN or
                                   CONC_STACK_COPIED */
    unsigned char *stage;       /* pre-reads' arena (src/hub.c, "pre-reads"),
                                   made at the first one asked for */
    size_t staged_len;          /* bytes of it in use */
    size_t nstaged;             /* greenlets with a result not yet taken */
};

/* conc__hub_wake - wakes up to n coroutines parked on word, whatever the
 * count of parked ones (conc__wake's hub half reads it first).
 * Async-signal-safe, keeps errno: called in a signal handler that
 * interrupted its thread inside a hub's bookkeeping, it leaves the wake-up
 * to that thread and returns 0.  Returns how many were woken. */
CONC_HIDDEN int conc__hub_wake(uint32_t *word, int n);

/* ------------------------------------------------------------- timers */

/* conc__hub_heap_reserve - room for need timers (see src/hub_timers.c).
 * 0 or -ENOMEM. */
CONC_HIDDEN int conc__hub_heap_reserve(struct hub *h, size_t need);

/* conc__hub_timer_arm - arm g's timer: at deadline its wait returns rc. */
CONC_HIDDEN void conc__hub_timer_arm(struct hub *h, conc_greenlet *g, int64_t deadline, int rc);

/* conc__hub_timer_remove - disarm g's timer, which is armed. */
CONC_HIDDEN void conc__hub_timer_remove(struct hub *h, conc_greenlet *g);

/* Disarms g's timer, if armed (most waits have none: no call). */
static inline void conc__hub_timer_cancel(struct hub *h, conc_greenlet *g)
{
    if (g->heap_idx != NO_INDEX)
        conc__hub_timer_remove(h, g);
}

/* The armed timer with the earliest deadline, or NULL. */
static inline conc_greenlet *timer_first(const struct hub *h)
{
    conc_greenlet *a = h->thead, *b = h->nheap ? h->heap[0] : NULL;
    if (!a || (b && b->deadline < a->deadline))
        return b;
    return a;
}

#endif /* CONC_HUB_INTERNAL_H */
