/*
 * queue_fifo.h - the two-lock FIFO behind queue.Queue and SimpleQueue
 * (src/queue_fifo.c), and the time limits the thread queues share; not
 * installed.
 */
#ifndef CONC_QUEUE_FIFO_H
#define CONC_QUEUE_FIFO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "conc/queue.h"
#include "internal.h"

/*
 * How long a call may wait: never (poll), until a deadline, or for a
 * timeout that is turned into a deadline only when the call has to wait, so
 * a call that succeeds at once never reads the clock.
 */
struct conc__limit {
    int64_t deadline;
    double timeout;
    bool poll;
    bool resolved;          /* deadline is set */
    bool spun;              /* the spin before sleeping was tried */
};

/* Sets l from a timeout in seconds (conc__timeout_kind): 0 or -EINVAL. */
static inline int conc__limit_timeout(struct conc__limit *l, double timeout)
{
    int k = conc__timeout_kind(timeout);
    l->spun = false;
    l->poll = k == CONC__TIMEOUT_POLL;
    l->resolved = k != CONC__TIMEOUT_TIMED;
    l->deadline = k == CONC__TIMEOUT_FOREVER ? CONC_NO_DEADLINE : 0;
    l->timeout = timeout;
    return k < 0 ? -EINVAL : 0;
}

static inline void conc__limit_until(struct conc__limit *l, int64_t deadline)
{
    l->spun = false;
    l->deadline = deadline;
    l->poll = false;
    l->resolved = true;
}

/* Turns a pending timeout into a deadline: 0 or -EINVAL. */
static inline int conc__limit_resolve(struct conc__limit *l)
{
    if (!l->resolved) {
        if (conc_deadline(l->timeout, &l->deadline))
            return -EINVAL;
        l->resolved = true;
    }
    return 0;
}

struct conc__fifo;

/* A FIFO of at most maxsize items (0: unbounded), with room for cap to
 * start with.  simple: no task accounting.  Returns it, or NULL (ENOMEM). */
CONC_HIDDEN struct conc__fifo *conc__fifo_new(size_t maxsize, size_t cap, bool simple,
                                              conc_drop_fn drop, void *drop_arg);
/* Frees it; items left go to the drop callback. */
CONC_HIDDEN void conc__fifo_free(struct conc__fifo *f);

/* The queue operations, with conc_queue_*'s results. */
CONC_HIDDEN int conc__fifo_put(struct conc__fifo *f, void *item, struct conc__limit *l);
CONC_HIDDEN int conc__fifo_get(struct conc__fifo *f, void **out, struct conc__limit *l);
CONC_HIDDEN size_t conc__fifo_qsize(const struct conc__fifo *f);
CONC_HIDDEN size_t conc__fifo_unfinished(const struct conc__fifo *f);
CONC_HIDDEN bool conc__fifo_is_shutdown(const struct conc__fifo *f);
CONC_HIDDEN int conc__fifo_task_done(struct conc__fifo *f);
CONC_HIDDEN int conc__fifo_join(struct conc__fifo *f, struct conc__limit *l);
CONC_HIDDEN int conc__fifo_shutdown(struct conc__fifo *f, bool immediate);
CONC_HIDDEN int conc__fifo_fd(struct conc__fifo *f);

#endif
