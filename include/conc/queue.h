/*
 * conc/queue.h - queues between the threads of one process: Python's
 * queue.Queue, LifoQueue, PriorityQueue and SimpleQueue.
 * (collections.deque is in conc/deque.h; multiprocessing.Queue,
 * JoinableQueue and SimpleQueue, between processes, in conc/mpqueue.h.)
 *
 * Items are void *: a queue stores the pointer it is given and hands the
 * same pointer back; it never looks at what it points to (except through a
 * priority queue's comparison function) and never frees it, except through
 * the `drop` callback of the options when it discards items itself.
 *
 * Timeouts follow conc/time.h: CONC_FOREVER blocks, 0 never blocks and gives
 * -EAGAIN when the call cannot succeed at once (Python's queue.Full and
 * queue.Empty, and put_nowait/get_nowait), t > 0 gives -ETIMEDOUT after t
 * seconds; a negative timeout other than CONC_FOREVER, or NaN, is -EINVAL.
 * Each blocking call has an _until form taking an absolute CLOCK_MONOTONIC
 * deadline in ns; a passed deadline gives -ETIMEDOUT unless the call can
 * succeed at once.  Called from a conc coroutine, every blocking call parks
 * only the coroutine.  Signals never interrupt a wait.
 *
 * Python's exceptions become error codes:
 *   queue.Empty, queue.Full        -EAGAIN (timeout 0) or -ETIMEDOUT (t > 0)
 *   queue.ShutDown (Python 3.13)   -EPIPE
 *   ValueError from task_done()    -EOVERFLOW
 *
 * A FIFO Queue and a SimpleQueue have one lock for producers and another
 * for consumers, so the two sides never take turns; a LifoQueue and a
 * PriorityQueue are guarded by one conc_lock with conditions sharing it,
 * like Python's Queue (mutex, not_empty, not_full, all_tasks_done).  Every
 * wait goes through conc's one wait primitive.  Storage is a ring buffer
 * (FIFO, LIFO, SimpleQueue) or a binary heap (priority): it grows by
 * doubling when needed and never shrinks, so a queue in its steady state
 * allocates nothing per item.
 */
#ifndef CONC_QUEUE_H
#define CONC_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "conc/errors.h"
#include "conc/time.h"

#ifdef __cplusplus
extern "C" {
#endif

/* conc_queue - an opaque handle: queue.Queue, LifoQueue, PriorityQueue or
 * SimpleQueue, chosen by the kind in the options. */
typedef struct conc_queue conc_queue;

/* What a queue is (conc_queue_opts.kind). */
typedef enum conc_queue_kind {
    CONC_QUEUE_FIFO = 0,        /* queue.Queue: first in, first out */
    CONC_QUEUE_LIFO = 1,        /* queue.LifoQueue: last in, first out */
    CONC_QUEUE_PRIORITY = 2,    /* queue.PriorityQueue: lowest priority first */
    CONC_QUEUE_SIMPLE = 3       /* queue.SimpleQueue: unbounded FIFO, no
                                   task_done/join */
} conc_queue_kind;

/*
 * The comparison function of a priority queue: negative when item a comes
 * out before item b, positive when after, 0 when they rank the same.  a and
 * b are the items themselves (the pointers given to put), not pointers to
 * them.  It must be a consistent ordering, is called with the queue's lock
 * held, and must not call into the same queue.
 */
typedef int (*conc_queue_cmp)(const void *a, const void *b, void *arg);

/* The discard callback of queues and deques: called for each item the
 * container throws away itself (see conc_queue_opts.drop and
 * conc_deque_opts.drop), with the container's lock possibly held: it must
 * not call into the same container.  (Declared by conc/queue.h and
 * conc/deque.h alike, whichever comes first.) */
#ifndef CONC_DROP_FN_DEFINED
#define CONC_DROP_FN_DEFINED
typedef void (*conc_drop_fn)(void *item, void *arg);
#endif

/* Options for conc_queue_new; all-zero (or NULL) means an unbounded FIFO. */
typedef struct conc_queue_opts {
    uint32_t size;          /* sizeof(conc_queue_opts), or 0: the first
                               version (conc reads a field only when size
                               covers it) */
    conc_queue_kind kind;   /* CONC_QUEUE_FIFO (0), _LIFO, _PRIORITY, _SIMPLE */
    size_t maxsize;         /* Queue(maxsize): at most this many items; 0 means
                               unbounded (must be 0 for a SimpleQueue) */
    conc_queue_cmp cmp;     /* PRIORITY only: orders items of equal priority
                               (NULL: the priority alone orders them) */
    void *cmp_arg;          /* passed to cmp */
    conc_drop_fn drop;      /* NULL, or called for each item discarded by
                               conc_queue_shutdown(immediate) and by
                               conc_queue_free */
    void *drop_arg;         /* passed to drop */
    size_t capacity;        /* slots to allocate up front (a hint; 0: a
                               small default, or maxsize when that is small) */
} conc_queue_opts;

#define CONC_QUEUE_OPTS_INIT { .size = sizeof(conc_queue_opts) }

/*
 * conc_queue_new - create an empty queue (Queue(maxsize), LifoQueue(maxsize),
 * PriorityQueue(maxsize) or SimpleQueue()).
 *
 * A priority queue hands out the item with the lowest priority first (the
 * int64_t given to conc_queue_put_prio; conc_queue_put gives 0); among equal
 * priorities the one cmp ranks first when cmp is set, and among items that
 * still tie, the one put first.  This is Python's PriorityQueue of
 * (priority, item) tuples, made stable: items never need to be comparable.
 *
 * Returns 0 and stores the handle in *out; -EINVAL for a NULL out, an
 * unknown kind, a SimpleQueue with a maxsize, or a cmp on a queue that is
 * not a priority queue; -ENOMEM.
 */
CONC_API int conc_queue_new(conc_queue **out, const conc_queue_opts *opts);

/*
 * conc_queue_free - destroy a queue.  Items still in it are passed to the
 * drop callback (when there is one) and are otherwise just forgotten; the
 * readiness fd, if any, is closed.  No thread may be using or waiting on the
 * queue (shut it down and join those threads first).  NULL is fine.
 */
CONC_API void conc_queue_free(conc_queue *q);

/*
 * conc_queue_put - Queue.put(item, block, timeout): add an item, waiting
 * while a bounded queue is full.  Never waits on an unbounded queue.  On a
 * Queue, LifoQueue or PriorityQueue it adds one unfinished task (see
 * conc_queue_task_done).  On a priority queue the item's priority is 0.
 * Returns 0; -EPIPE when the queue is shut down, or is shut down while the
 * caller waits (Python's ShutDown; the item was not added); -EAGAIN when
 * timeout is 0 and the queue is full (Python's Full from put_nowait);
 * -ETIMEDOUT when the timeout passed with the queue still full; -ENOMEM when
 * the storage could not grow (nothing added); -EINVAL for a NULL queue or a
 * bad timeout.
 */
CONC_API int conc_queue_put(conc_queue *q, void *item, double timeout);
/* conc_queue_put_until - as conc_queue_put with an absolute deadline. */
CONC_API int conc_queue_put_until(conc_queue *q, void *item, int64_t deadline);
/* conc_queue_put_nowait - Queue.put_nowait(item): conc_queue_put(q, item, 0). */
CONC_API int conc_queue_put_nowait(conc_queue *q, void *item);

/*
 * conc_queue_put_prio - PriorityQueue.put((priority, item)): as
 * conc_queue_put, with a priority (lower comes out first).  Returns what
 * conc_queue_put returns, and -EINVAL when q is not a priority queue.
 */
CONC_API int conc_queue_put_prio(conc_queue *q, void *item, int64_t priority,
                                 double timeout);
CONC_API int conc_queue_put_prio_until(conc_queue *q, void *item, int64_t priority,
                                       int64_t deadline);

/*
 * conc_queue_get - Queue.get(block, timeout): remove an item and store it in
 * *out, waiting while the queue is empty.  FIFO and SimpleQueue give the
 * oldest item, LIFO the newest, a priority queue the lowest-ranked (see
 * conc_queue_new).
 * Returns 0; -EPIPE when the queue is shut down and empty, or becomes so
 * while the caller waits (Python's ShutDown: after a normal shutdown the
 * items already queued are still handed out first); -EAGAIN when timeout is
 * 0 and the queue is empty (Python's Empty from get_nowait); -ETIMEDOUT when
 * the timeout passed with the queue still empty; -EINVAL for a NULL queue or
 * out, or a bad timeout.  *out is only written on success.
 */
CONC_API int conc_queue_get(conc_queue *q, void **out, double timeout);
/* conc_queue_get_until - as conc_queue_get with an absolute deadline. */
CONC_API int conc_queue_get_until(conc_queue *q, void **out, int64_t deadline);
/* conc_queue_get_nowait - Queue.get_nowait(): conc_queue_get(q, out, 0). */
CONC_API int conc_queue_get_nowait(conc_queue *q, void **out);

/*
 * conc_queue_get_prio - as conc_queue_get, also storing the item's priority
 * in *priority (when priority is not NULL; 0 on queues of the other kinds).
 */
CONC_API int conc_queue_get_prio(conc_queue *q, void **out, int64_t *priority,
                                 double timeout);
CONC_API int conc_queue_get_prio_until(conc_queue *q, void **out, int64_t *priority,
                                       int64_t deadline);

/* conc_queue_qsize - Queue.qsize(): the number of items (a snapshot, out of
 * date as soon as it returns when other threads use the queue).  0 for NULL. */
CONC_API size_t conc_queue_qsize(const conc_queue *q);

/* conc_queue_empty - Queue.empty(): qsize() == 0 (a snapshot). */
CONC_API bool conc_queue_empty(const conc_queue *q);

/* conc_queue_full - Queue.full(): a bounded queue holds maxsize items (a
 * snapshot); always false for an unbounded queue. */
CONC_API bool conc_queue_full(const conc_queue *q);

/* conc_queue_maxsize - Queue.maxsize (0: unbounded). */
CONC_API size_t conc_queue_maxsize(const conc_queue *q);

/*
 * conc_queue_task_done - Queue.task_done(): one item taken with get has been
 * processed.  When no unfinished task is left, every joiner is released.
 * Returns 0; -EOVERFLOW when called more times than items were put (Python's
 * ValueError; nothing changes); -EINVAL for NULL or a SimpleQueue (which has
 * no task_done).
 */
CONC_API int conc_queue_task_done(conc_queue *q);

/*
 * conc_queue_join - Queue.join(), with a timeout: wait until every item ever
 * put has been matched by a task_done.  Returns 0; -EAGAIN when timeout is 0
 * and tasks are unfinished; -ETIMEDOUT when the timeout passed first;
 * -EINVAL for NULL, a SimpleQueue, or a bad timeout.  A shutdown does not
 * release joiners by itself; an immediate one settles the tasks of the items
 * it discards (see conc_queue_shutdown).
 */
CONC_API int conc_queue_join(conc_queue *q, double timeout);
CONC_API int conc_queue_join_until(conc_queue *q, int64_t deadline);

/* conc_queue_unfinished - Queue.unfinished_tasks: items put and not yet
 * matched by task_done (0 for a SimpleQueue or NULL). */
CONC_API size_t conc_queue_unfinished(const conc_queue *q);

/*
 * conc_queue_shutdown - Queue.shutdown(immediate) (Python 3.13): from now
 * on put fails with -EPIPE, and get fails with -EPIPE once the queue is
 * empty.  Every thread waiting in put or get wakes up: waiting putters get
 * -EPIPE, waiting getters take remaining items or get -EPIPE.
 * With immediate, the queue is emptied first (each item goes to the drop
 * callback, if any) and one unfinished task is settled per item discarded,
 * so join returns once the items already taken are task_done; get then
 * fails at once.  Shutting down again is harmless (an immediate shutdown
 * after a normal one still empties the queue).  Not reversible.  Works on
 * every kind (Python's SimpleQueue has no shutdown; conc's does).
 * Returns 0, or -EINVAL for NULL.
 */
CONC_API int conc_queue_shutdown(conc_queue *q, bool immediate);

/* conc_queue_is_shutdown - Queue.is_shutdown. */
CONC_API bool conc_queue_is_shutdown(const conc_queue *q);

/*
 * conc_queue_fd - a file descriptor for poll/select/epoll (and conc's waits)
 * that is readable while a get would not block: while the queue holds items
 * or is shut down.  It is an eventfd created on the first call (later calls
 * return the same fd) and kept in step by put and get from then on; a queue
 * whose fd was never asked for pays nothing for it.  Level-triggered: it
 * stays readable until the queue is empty again.  Readable does not reserve
 * an item: another thread may take it first, so get with timeout 0 and poll
 * again on -EAGAIN.  The queue owns the fd: do not read, write or close it;
 * conc_queue_free closes it.
 * Returns the fd (>= 0); -EMFILE, -ENFILE or -ENOMEM when the eventfd could
 * not be created (a later call tries again); -EINVAL for NULL.
 */
CONC_API int conc_queue_fd(conc_queue *q);

#ifdef __cplusplus
}
#endif
#endif /* CONC_QUEUE_H */
