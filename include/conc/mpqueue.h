/*
 * conc/mpqueue.h - queues between processes: Python's multiprocessing.Queue,
 * JoinableQueue and SimpleQueue.  (Queues between the threads of one
 * process are in conc/queue.h.)
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
 *   parks itself only; timeouts follow conc/time.h, as for the thread
 *   queues.
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
#ifndef CONC_MPQUEUE_H
#define CONC_MPQUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "conc/errors.h"
#include "conc/time.h"

#ifdef __cplusplus
extern "C" {
#endif

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
    uint32_t size;      /* sizeof(conc_mpqueue_opts), or 0: the first version
                           (conc reads a field only when size covers it) */
    conc_mpqueue_kind kind;
    size_t maxsize;     /* at most this many messages (0: no count limit;
                           must be 0 for a SimpleQueue) */
    size_t capacity;    /* ring bytes (0: the default, or enough for max_msg);
                           rounded up to a power of two, at least 4 KiB and
                           at most CONC_MPQUEUE_CAPACITY_MAX */
    size_t max_msg;     /* largest message in bytes (0: a quarter of the
                           ring); the ring grows to hold two of them */
} conc_mpqueue_opts;

#define CONC_MPQUEUE_OPTS_INIT { .size = sizeof(conc_mpqueue_opts) }

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
 * descriptors (from conc_mpqueue_fds) are fds.  The descriptors are
 * duplicated: the caller keeps its own (and closes them when it no longer
 * needs them); the handle's copies are closed by conc_mpqueue_free.
 * Returns 0; -EINVAL for NULL, a negative fd, an fd that is not a conc
 * queue's memfd (the memory is checked before use: every header field must
 * be one conc_mpqueue_new writes) or a readiness fd that is not a
 * non-blocking eventfd; -EBADF when one is not open; -EMFILE; -ENOMEM.
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
 * fails resets it.  A process killed at the wrong instant (after it made a
 * message or room available and before it marked the fd, or while it
 * reset the fd) may leave it unreadable while a message waits (or room is
 * free), until a later put or get of any process sets it right: a poll or
 * epoll loop of your own should use a timeout and then try a get or put
 * with timeout 0.  conc_wait does this itself, looking at the queue again
 * every 50 ms while it waits.  Returns the fd (owned by q); -EINVAL for
 * NULL or events other than POLLIN and POLLOUT.
 */
CONC_API int conc_mpqueue_fd(conc_mpqueue *q, short events);

#ifdef __cplusplus
}
#endif
#endif /* CONC_MPQUEUE_H */
