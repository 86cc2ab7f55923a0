/*
 * conc/queue.h - queues: queue.Queue, LifoQueue, PriorityQueue and
 * SimpleQueue, and collections.deque, between the threads of one process.
 * (multiprocessing.Queue, JoinableQueue and SimpleQueue, between processes,
 * get their own section at the end of this header.)
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
 *   IndexError from deque.pop()    -EAGAIN
 *
 * A FIFO Queue and a SimpleQueue have one lock for producers and another
 * for consumers, so the two sides never take turns; a LifoQueue and a
 * PriorityQueue are guarded by one conc_lock with conditions sharing it,
 * like Python's Queue (mutex, not_empty, not_full, all_tasks_done).  Every
 * wait goes through conc's one wait primitive.  Storage is a ring buffer
 * (FIFO, LIFO, SimpleQueue, deque) or a binary heap (priority): it grows by
 * doubling when needed and never shrinks, so a queue in its steady state
 * allocates nothing per item.
 */
#ifndef CONC_QUEUE_H
#define CONC_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "conc/errors.h"
#include "conc/time.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ================================================= queues between threads */

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
 * container throws away itself (see conc_queue_opts.drop), with the
 * container's lock possibly held: it must not call into the same container. */
typedef void (*conc_drop_fn)(void *item, void *arg);

/* Options for conc_queue_new; all-zero (or NULL) means an unbounded FIFO. */
typedef struct conc_queue_opts {
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

/* ============================================================ deque */

/*
 * conc_deque - collections.deque of void *, thread-safe: every call is
 * atomic with respect to the others (one lock per deque).  Nothing blocks
 * waiting for items (use a conc_queue for that); popping an empty deque is
 * -EAGAIN (Python's IndexError).  With a maxlen, adding to a full deque
 * drops an item from the other end, as in Python.
 */
typedef struct conc_deque conc_deque;

/* Options for conc_deque_new; all-zero (or NULL) means unbounded. */
typedef struct conc_deque_opts {
    size_t maxlen;          /* deque(maxlen=n); 0 means unbounded (Python's
                               None; Python's maxlen=0 has no equivalent) */
    conc_drop_fn drop;      /* NULL, or called for each item the deque drops:
                               pushed out by maxlen, cleared, or left at free */
    void *drop_arg;         /* passed to drop */
    size_t capacity;        /* slots to allocate up front (a hint) */
} conc_deque_opts;

/* conc_deque_new - create an empty deque.  Returns 0 and stores the handle
 * in *out; -EINVAL for a NULL out; -ENOMEM. */
CONC_API int conc_deque_new(conc_deque **out, const conc_deque_opts *opts);

/* conc_deque_free - destroy a deque; items left go to the drop callback (if
 * any).  No thread may be using it.  NULL is fine. */
CONC_API void conc_deque_free(conc_deque *d);

/*
 * conc_deque_append - deque.append(item): add on the right.  When the deque
 * is at its maxlen, the leftmost item is dropped first (passed to the drop
 * callback, if any).  Returns 0, 1 when an item was dropped, -ENOMEM
 * (nothing changed), -EINVAL for NULL.
 */
CONC_API int conc_deque_append(conc_deque *d, void *item);

/* conc_deque_appendleft - deque.appendleft(item): add on the left (a full
 * deque drops its rightmost item).  Returns as conc_deque_append. */
CONC_API int conc_deque_appendleft(conc_deque *d, void *item);

/*
 * conc_deque_extend - deque.extend(items): append items[0..n-1] in order,
 * as one atomic step.  Returns the number of items dropped from the left
 * because of maxlen (0 when unbounded), -ENOMEM (nothing changed), -EINVAL
 * for NULL d, NULL items with n > 0, or n > INT_MAX.
 */
CONC_API int conc_deque_extend(conc_deque *d, void *const *items, size_t n);

/* conc_deque_extendleft - deque.extendleft(items): appendleft each item in
 * order (so they end up reversed), as one step.  Returns as
 * conc_deque_extend (items dropped from the right). */
CONC_API int conc_deque_extendleft(conc_deque *d, void *const *items, size_t n);

/*
 * conc_deque_pop - deque.pop(): remove the rightmost item into *out.
 * Returns 0; -EAGAIN when the deque is empty (Python's IndexError); -EINVAL
 * for NULL d or out.
 */
CONC_API int conc_deque_pop(conc_deque *d, void **out);

/* conc_deque_popleft - deque.popleft(): remove the leftmost item.  Returns
 * as conc_deque_pop. */
CONC_API int conc_deque_popleft(conc_deque *d, void **out);

/* conc_deque_peek - d[-1]: the rightmost item, left in place.  Returns 0,
 * -EAGAIN when empty, -EINVAL for NULL. */
CONC_API int conc_deque_peek(conc_deque *d, void **out);

/* conc_deque_peekleft - d[0]: the leftmost item, left in place.  Returns as
 * conc_deque_peek. */
CONC_API int conc_deque_peekleft(conc_deque *d, void **out);

/*
 * conc_deque_rotate - deque.rotate(n): rotate n steps to the right (n > 0:
 * the rightmost items move to the left end) or -n steps to the left
 * (n < 0).  Any n is fine (it counts modulo the length); it moves at most
 * half the items.  Returns 0, -EINVAL for NULL.
 */
CONC_API int conc_deque_rotate(conc_deque *d, int64_t n);

/* conc_deque_reverse - deque.reverse(): reverse in place.  Returns 0 or
 * -EINVAL. */
CONC_API int conc_deque_reverse(conc_deque *d);

/* conc_deque_clear - deque.clear(): remove every item (each goes to the
 * drop callback, if any).  Returns 0 or -EINVAL. */
CONC_API int conc_deque_clear(conc_deque *d);

/* conc_deque_len - len(d) (a snapshot); 0 for NULL. */
CONC_API size_t conc_deque_len(const conc_deque *d);

/* conc_deque_maxlen - deque.maxlen (0: unbounded). */
CONC_API size_t conc_deque_maxlen(const conc_deque *d);

/* ================================================ queues between processes
 *
 * conc_mpqueue - multiprocessing.Queue, JoinableQueue and SimpleQueue:
 * byte messages between any number of producer and consumer processes
 * (and threads), kept in one shared-memory ring (a memfd).
 *
 * - No feeder thread.  When put returns, the message is in the shared ring:
 *   nothing is lost when the producer exits or is killed right after, and
 *   nothing hangs at exit (Python's mp.Queue can do both).
 * - Killed at any instant, a producer or consumer never corrupts the queue
 *   and never hangs the others.  A message is published by one store after
 *   it was written in full, so a half-written message is never delivered;
 *   a consumer killed while taking a message leaves it in the queue for the
 *   next one.  Producers serialize on one robust lock and consumers on
 *   another (conc/sync.h): the next one to take a lock whose holder died
 *   repairs the state and goes on; callers never see -EOWNERDEAD.
 * - Messages are stored whole in the ring, one after another, each with a
 *   16-byte header and padded to 16 bytes.  A message may be up to max_msg
 *   bytes (longer: -EMSGSIZE, nothing changes); the ring is always large
 *   enough for the largest one.  Memory is only touched as the ring is
 *   used.
 * - Bounded by maxsize messages (0: no limit on the count) and always by the
 *   ring's bytes: put waits while the message does not fit.  An "unbounded"
 *   queue is therefore bounded by its capacity in bytes (1 MiB by default):
 *   set capacity for long bursts nobody reads.
 * - Every wait goes through conc's wait primitive: a coroutine that waits
 *   parks itself only; a timeout works as for the thread queues.
 * - Readiness is pollable: conc_mpqueue_fd gives eventfds for "can get" and
 *   "can put".
 * - Nothing read from the shared memory is trusted.  The settings are
 *   checked at attach and kept in the handle; a length, position or count
 *   in the ring that no correct process could have written (another process
 *   is broken, or hostile, and wrote over the memory) makes put, get,
 *   get_alloc and next_size return -EPROTO, never read or write outside the
 *   mapping and never wait for a message that cannot come.  The queue's
 *   contents are then lost: drop the queue.
 *
 * Sharing: a queue created before fork() works in the child as it is (the
 * mapping and descriptors are inherited).  For forkserver/spawn children
 * pass the descriptors of conc_mpqueue_fds in conc_process_opts.pass_fds and
 * call conc_mpqueue_attach in the child.  Each process frees its own handle
 * with conc_mpqueue_free (Python's close()); the memory goes away with the
 * last handle and descriptor, and nothing is ever named in /dev/shm.
 *
 * Python's calls: put/put_nowait -> conc_mpqueue_put (timeout 0 for
 * nowait), get/get_nowait -> conc_mpqueue_get or conc_mpqueue_get_alloc,
 * qsize/empty/full, close -> conc_mpqueue_free, join_thread and
 * cancel_join_thread -> nothing to do (no feeder thread), task_done/join
 * (JoinableQueue).  Errors: Empty/Full -> -EAGAIN (timeout 0) or
 * -ETIMEDOUT; a queue shut down -> -EPIPE; task_done too often ->
 * -EOVERFLOW.
 */

/* conc_mpqueue - a process's handle on a shared queue. */
typedef struct conc_mpqueue conc_mpqueue;

/* What a process queue is (conc_mpqueue_opts.kind). */
typedef enum conc_mpqueue_kind {
    CONC_MPQUEUE_QUEUE = 0,     /* multiprocessing.Queue */
    CONC_MPQUEUE_JOINABLE = 1,  /* multiprocessing.JoinableQueue: adds
                                   task_done/join */
    CONC_MPQUEUE_SIMPLE = 2     /* multiprocessing.SimpleQueue: no maxsize */
} conc_mpqueue_kind;

/* The default ring size in bytes, and the largest. */
#define CONC_MPQUEUE_CAPACITY_DEFAULT ((size_t)1 << 20)
#define CONC_MPQUEUE_CAPACITY_MAX ((size_t)1 << 30)
/* The default largest message: a quarter of the ring. */
#define CONC_MPQUEUE_MSG_DEFAULT (CONC_MPQUEUE_CAPACITY_DEFAULT / 4)
/* How many descriptors make up a queue (conc_mpqueue_fds). */
#define CONC_MPQUEUE_NFDS 3

/* Options for conc_mpqueue_new; all-zero (or NULL) gives a Queue with no
 * maxsize, a 1 MiB ring and messages up to 256 KiB. */
typedef struct conc_mpqueue_opts {
    conc_mpqueue_kind kind;
    size_t maxsize;     /* at most this many messages (0: no count limit;
                           must be 0 for a SimpleQueue) */
    size_t capacity;    /* ring bytes (0: the default, or enough for max_msg);
                           rounded up to a power of two, at least 4 KiB and
                           at most CONC_MPQUEUE_CAPACITY_MAX */
    size_t max_msg;     /* largest message in bytes (0: a quarter of the
                           ring); the ring grows to hold two of them */
} conc_mpqueue_opts;

/*
 * conc_mpqueue_new - create an empty queue in shared memory.  Returns 0 and
 * stores the handle; -EINVAL for a NULL out, an unknown kind, a SimpleQueue
 * with a maxsize, a capacity over CONC_MPQUEUE_CAPACITY_MAX or a max_msg
 * that needs a larger ring; -EMFILE / -ENFILE; -ENOMEM; -ENOTSUP where
 * its shared locks cannot be robust (conc_lock_init).
 */
CONC_API int conc_mpqueue_new(conc_mpqueue **out, const conc_mpqueue_opts *opts);

/*
 * conc_mpqueue_fds - the queue's descriptors (the memfd and the two
 * readiness eventfds), to pass to a forkserver/spawn child in pass_fds.
 * They stay owned by q.  Returns 0; -EINVAL for NULL.
 */
CONC_API int conc_mpqueue_fds(const conc_mpqueue *q, int fds[CONC_MPQUEUE_NFDS]);

/*
 * conc_mpqueue_attach - in another process: open the queue whose
 * descriptors (from conc_mpqueue_fds) are fds.  The new handle owns them
 * (conc_mpqueue_free closes them).  Returns 0; -EINVAL for NULL, a
 * negative fd, an fd that is not a conc queue's memfd (the memory is
 * checked before use: every header field must be one conc_mpqueue_new
 * writes) or a readiness fd that is not a non-blocking eventfd; -EBADF
 * when one is not open; -ENOMEM.  On failure the descriptors stay the
 * caller's.
 */
CONC_API int conc_mpqueue_attach(conc_mpqueue **out, const int fds[CONC_MPQUEUE_NFDS]);

/*
 * conc_mpqueue_free - Queue.close(): this process is done with the queue.
 * Unmaps it and closes its descriptors; other processes go on using it.
 * No thread of this process may still be using the handle.  NULL is fine.
 */
CONC_API void conc_mpqueue_free(conc_mpqueue *q);

/*
 * conc_mpqueue_put - Queue.put(bytes, block, timeout): copy len bytes into
 * the queue as one message, waiting while it is full (maxsize messages, or
 * not enough free bytes in the ring).  When it returns 0 the message is in
 * the queue.  On a JoinableQueue it adds one unfinished task.  Returns 0;
 * -EAGAIN (timeout 0) or -ETIMEDOUT when it stayed full (Full); -EPIPE once
 * the queue is shut down; -EMSGSIZE when len is over max_msg; -EINVAL for
 * NULL q, NULL data with len > 0, or a bad timeout; -ECANCELED when the
 * calling coroutine was killed; -EPROTO when the shared memory is corrupt
 * (see above).  On any error nothing was added.
 */
CONC_API int conc_mpqueue_put(conc_mpqueue *q, const void *data, size_t len, double timeout);
CONC_API int conc_mpqueue_put_until(conc_mpqueue *q, const void *data, size_t len,
                                    int64_t deadline);

/*
 * conc_mpqueue_get - Queue.get(block, timeout): take the oldest message,
 * copying it into buf (cap bytes), waiting while the queue is empty.
 * Returns its length (>= 0); -EMSGSIZE when it is longer than cap: it stays
 * in the queue, nothing is lost, and conc_mpqueue_next_size tells its size
 * (or use conc_mpqueue_get_alloc); -EAGAIN (timeout 0) or -ETIMEDOUT when it
 * stayed empty (Empty); -EPIPE when the queue is shut down and empty (or shut
 * down with immediate); -EINVAL for NULL q, NULL buf with cap > 0, or a bad
 * timeout; -ECANCELED when the calling coroutine was killed; -EPROTO when
 * the shared memory is corrupt (see above; nothing is taken).
 */
CONC_API ssize_t conc_mpqueue_get(conc_mpqueue *q, void *buf, size_t cap, double timeout);
CONC_API ssize_t conc_mpqueue_get_until(conc_mpqueue *q, void *buf, size_t cap,
                                        int64_t deadline);

/*
 * conc_mpqueue_get_alloc - as conc_mpqueue_get, into a new malloc'd buffer
 * (*out, at least 1 byte so an empty message still gives non-NULL; free
 * it) of *len bytes.  Returns 0; the errors of conc_mpqueue_get; -EINVAL
 * for NULL out or len; -ENOMEM (the message stays in the queue).
 */
CONC_API int conc_mpqueue_get_alloc(conc_mpqueue *q, void **out, size_t *len, double timeout);
CONC_API int conc_mpqueue_get_alloc_until(conc_mpqueue *q, void **out, size_t *len,
                                          int64_t deadline);

/*
 * conc_mpqueue_next_size - the length of the oldest message, without
 * taking it (another consumer may take it first).  Returns the length;
 * -EAGAIN when the queue is empty; -EPIPE when shut down and empty;
 * -EINVAL for NULL; -EPROTO for a length over max_msg (corrupt memory).
 */
CONC_API ssize_t conc_mpqueue_next_size(conc_mpqueue *q);

/* conc_mpqueue_qsize / _empty / _full - Queue.qsize(), empty(), full(): a
 * snapshot (0 / true / false for NULL).  full() is true when maxsize
 * messages are queued or the ring has no room for even an empty message.
 * qsize() never exceeds capacity / 16, whatever the shared counts say. */
CONC_API size_t conc_mpqueue_qsize(const conc_mpqueue *q);
CONC_API bool conc_mpqueue_empty(const conc_mpqueue *q);
CONC_API bool conc_mpqueue_full(const conc_mpqueue *q);

/* conc_mpqueue_maxsize / _max_msg / _capacity - the settings in force
 * (0 for NULL). */
CONC_API size_t conc_mpqueue_maxsize(const conc_mpqueue *q);
CONC_API size_t conc_mpqueue_max_msg(const conc_mpqueue *q);
CONC_API size_t conc_mpqueue_capacity(const conc_mpqueue *q);

/*
 * conc_mpqueue_task_done - JoinableQueue.task_done(): one message that was
 * taken has been dealt with.  Returns 0; -EOVERFLOW when called more times
 * than messages were put (Python's ValueError); -EINVAL for NULL or a queue
 * that is not joinable.
 */
CONC_API int conc_mpqueue_task_done(conc_mpqueue *q);

/*
 * conc_mpqueue_join - JoinableQueue.join(): wait until every message put so
 * far (by any process) has had its task_done.  Returns 0; -EAGAIN (timeout
 * 0) or -ETIMEDOUT; -EINVAL for NULL, a queue that is not joinable or a bad
 * timeout; -ECANCELED when the calling coroutine was killed.
 */
CONC_API int conc_mpqueue_join(conc_mpqueue *q, double timeout);
CONC_API int conc_mpqueue_join_until(conc_mpqueue *q, int64_t deadline);

/*
 * conc_mpqueue_unfinished - JoinableQueue's count of unfinished tasks
 * (messages put and not yet task_done), a snapshot; 0 for NULL.
 */
CONC_API size_t conc_mpqueue_unfinished(const conc_mpqueue *q);

/*
 * conc_mpqueue_shutdown - Queue.shutdown(immediate) of Python 3.13, for all
 * processes at once: puts give -EPIPE from now on (waiting ones are
 * released); gets go on until the queue is empty, then give -EPIPE.  With
 * immediate, queued messages are discarded (counted as done for join) and
 * gets give -EPIPE at once.  Calling it again is harmless (immediate may
 * follow a plain shutdown).  Returns 0; -EINVAL for NULL.
 */
CONC_API int conc_mpqueue_shutdown(conc_mpqueue *q, bool immediate);

/* conc_mpqueue_is_shutdown - true once shut down (false for NULL). */
CONC_API bool conc_mpqueue_is_shutdown(const conc_mpqueue *q);

/*
 * conc_mpqueue_fd - an eventfd that is readable while a get could succeed
 * (events POLLIN: a message is queued, or the queue is shut down) or while
 * a put could (POLLOUT: the queue is not full, or it is shut down), for
 * poll/epoll and conc_wait.  It reads readable with POLLIN in both cases;
 * do not read or write it.  Once a process asked for it, puts and gets of
 * every process keep it up to date (this costs a system call on some
 * transitions).  It may be readable when no get/put can succeed any more
 * (another consumer took the message): a get or put with timeout 0 that
 * fails resets it.  It is never left unreadable while a message waits (or
 * room is free).  Returns the fd (owned by q); -EINVAL for NULL or events
 * other than POLLIN and POLLOUT.
 */
CONC_API int conc_mpqueue_fd(conc_mpqueue *q, short events);

/* ========================================== end of queues between processes */

#ifdef __cplusplus
}
#endif
#endif /* CONC_QUEUE_H */
