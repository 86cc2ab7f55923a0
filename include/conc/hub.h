/*
 * conc/hub.h - the hub: gevent-style scheduling of greenlets on top of the
 * coroutines of conc/coro.h.
 *
 * Every thread may have one hub, created on demand by its first
 * conc_greenlet_spawn or conc_hub_timeout_push (conc_hub_run in a thread
 * without a hub returns 0 at once and creates none): an epoll loop with a
 * timer heap that runs in a coroutine of its own.  While a thread has a
 * hub, every blocking call of conc made in that thread (locks, events,
 * conditions, semaphores, queues, joins, sleeps, descriptor waits:
 * everything that goes through conc's one wait primitive) parks only the
 * calling coroutine and lets the hub run the others ("monkey patching by
 * design").  Threads without a hub keep blocking in the kernel.
 *
 * gevent's model: the thread's main coroutine is a coroutine like the
 * others.  When it blocks in a conc call (conc_greenlet_join, conc_sleep,
 * conc_event_wait...), the hub runs the other coroutines until the main one
 * can continue.  Coroutines run one at a time, in the order they became
 * ready (first in, first out); control changes only at blocking calls.
 *
 * Wake-ups across threads and processes: a coroutine parked on a conc lock,
 * event, condition or queue wakes up when any thread releases, sets or
 * feeds it (the waker finds the hub in a process-wide table and signals its
 * eventfd).  A coroutine parked on a process-shared object (CONC_SYNC_SHARED)
 * that another process releases notices within a few milliseconds: such
 * waits re-check the word every CONC_HUB_SHARED_POLL_NS.
 *
 * Errors common to every blocking call made in a hub thread: -ECANCELED
 * when the coroutine was killed (conc_greenlet_kill) while it waited, -ETIMEDOUT
 * when the deadline of the call or of an enclosing timeout scope
 * (conc_hub_timeout_push) passed.
 *
 * Deadlocks: -EDEADLK is reported only when it is certain.  A greenlet
 * joining itself gets it at once.  Otherwise the main coroutine's
 * conc_greenlet_join, conc_greenlet_joinall or conc_hub_run returns -EDEADLK when nothing in
 * the hub is ready, no timer is armed, no descriptor is watched, and the
 * main coroutine and every unfinished greenlet of the hub are waiting for
 * a greenlet of this same hub to finish (greenlets joining each other):
 * only this hub could end those waits.  Every other wait (a lock, an
 * event, a semaphore, a queue, a descriptor...) could be ended by another
 * thread, including one made with pthread_create, by a signal handler or
 * by another process, so it blocks as it would in a plain thread, for as
 * long as it takes, even when nobody ever ends it.  gevent raises LoopExit
 * in more cases; conc writes nothing, and conc_hub_dump tells who waits for
 * what.
 *
 * Signal handlers: conc_sem_release and conc_event_set are
 * async-signal-safe, also while coroutines of any hub are parked on the
 * semaphore or event (their wake-up uses atomics, a futex and an eventfd
 * write; a handler that interrupts its thread inside the hub's bookkeeping
 * leaves the wake-up to the thread, which does it as soon as it leaves).
 * Nothing else in this header is async-signal-safe.
 *
 * The hub is per thread: greenlets run only in the thread that spawned them,
 * and conc_greenlet_kill is for that thread; conc_greenlet_join, conc_greenlet_dead,
 * conc_greenlet_result and conc_greenlet_free may be called from any thread.
 * A forked child does not inherit the hub (its blocking calls block the
 * thread).  Locks are owned by coroutines, as in gevent: an RLock taken by
 * one greenlet is not owned by another greenlet of the same thread
 * (conc/sync.h).
 */
#ifndef CONC_HUB_H
#define CONC_HUB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "conc/common.h"
#include "conc/coro.h"
#include "conc/errors.h"
#include "conc/time.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct conc_greenlet conc_greenlet;

/* The body of a greenlet; its return value is kept for conc_greenlet_result. */
typedef void *(*conc_greenlet_fn)(void *arg);

/* Options for conc_greenlet_spawn; all-zero (or NULL) means the defaults. */
typedef struct conc_spawn_opts {
    uint32_t size;          /* sizeof(conc_spawn_opts), or 0: the first
                               version (up to coro) */
    const conc_coro_opts *coro; /* the greenlet's coroutine: stack size and
                               name (conc_coro_new); NULL: the defaults */
    int stack;              /* CONC_STACK_HUB (0): the hub's setting
                               (conc_hub_set_stacks); CONC_STACK_OWN or
                               CONC_STACK_COPIED */
} conc_spawn_opts;

/*
 * Where a greenlet's stack lives (docs/coro.md, "Copied stacks"):
 *
 * CONC_STACK_OWN     a stack of its own (the default): a parked greenlet
 *                    holds the pages it touched, about 4 KiB when it uses
 *                    little stack; a park and a resume copy nothing.
 * CONC_STACK_COPIED  the hub's one shared stack: when a copied greenlet
 *                    parks and another copied one runs, the used part of its
 *                    stack (from its stack pointer to the top: typically a
 *                    few hundred bytes) is copied to a buffer of that size,
 *                    and copied back before it resumes.  A parked greenlet
 *                    then holds about 1 KiB in all; a park and a resume cost
 *                    the two copies.  The rule for code that runs in it:
 *                    while it is parked, nothing (another coroutine, a
 *                    thread, a signal handler) may read or write its stack
 *                    variables: hand other coroutines heap memory, not
 *                    pointers to locals.  The library's own waits follow it.
 *                    Its stack is the shared one (at least the default size,
 *                    or the first copied spawn's stack_size), with the
 *                    overflow detection of any coroutine stack; a copied
 *                    spawn asking for a bigger stack than that gets a stack
 *                    of its own.
 */
/* CONC_STACK_HUB (0), CONC_STACK_OWN, CONC_STACK_COPIED: conc/common.h */

/* conc reads a field only when size covers it, so the struct can grow;
 * CONC_SPAWN_OPTS_INIT fills size.  The coroutine options are referenced,
 * not embedded: an embedded conc_coro_opts that grew would move every
 * field added here after it. */
#define CONC_SPAWN_OPTS_INIT { .size = sizeof(conc_spawn_opts) }

/*
 * conc_hub_set_stacks - where the greenlets that the calling thread's hub
 * (created if needed) spawns from now on with stack CONC_STACK_HUB get
 * their stack: CONC_STACK_OWN (the default) or CONC_STACK_COPIED.  Returns
 * the previous setting; -EINVAL for another mode; -ENOMEM when the hub
 * cannot be made.
 */
CONC_API int conc_hub_set_stacks(int mode);

/* How often a wait on a process-shared word re-checks it (see above). */
#define CONC_HUB_SHARED_POLL_NS 2000000

/* Nesting limit of timeout scopes per coroutine. */
#define CONC_TIMEOUT_DEPTH 16

/*
 * conc_greenlet_spawn - gevent.spawn(fn, arg): create a greenlet that runs fn(arg)
 * in a new coroutine of the calling thread's hub (created if needed).  It
 * is scheduled to start at the hub's next turn: it runs once the caller
 * blocks or yields (conc_sleep(0)).  Returns 0 and stores the handle in *out
 * (free it with conc_greenlet_free); -EINVAL for a NULL out or fn or bad
 * options (see conc_coro_new; a stack mode other than the CONC_STACK_*
 * ones); -ENOMEM when memory, address space or the
 * hub's descriptors cannot be had; -EPERM when called from a coroutine that
 * the hub does not run (one made with conc_coro_new and switched to).
 */
CONC_API int conc_greenlet_spawn(conc_greenlet **out, conc_greenlet_fn fn, void *arg,
                                 const conc_spawn_opts *opts);

/*
 * conc_greenlet_join - Greenlet.join(timeout): wait until g has finished
 * (returned, or been killed before it started).  From the hub's thread this
 * parks the caller and runs the other coroutines; from another thread it
 * blocks the thread.  timeout in seconds (conc/time.h): CONC_FOREVER for
 * none, 0 to poll.  Returns 0; -EAGAIN when timeout is 0 and g has not
 * finished; -ETIMEDOUT when the timeout (or an enclosing timeout scope)
 * passed first; -EINVAL for NULL g or a bad timeout; -EDEADLK when g is the
 * calling greenlet, or when the hub's greenlets wait for each other (see
 * "Deadlocks" above); -ECANCELED when the caller was killed while it
 * waited.
 */
CONC_API int conc_greenlet_join(conc_greenlet *g, double timeout);
/* conc_greenlet_join_until - conc_greenlet_join with an absolute
 * CLOCK_MONOTONIC deadline in ns (CONC_NO_DEADLINE for none); a deadline
 * already passed gives -ETIMEDOUT when g has not finished. */
CONC_API int conc_greenlet_join_until(conc_greenlet *g, int64_t deadline);

/*
 * conc_greenlet_joinall - gevent.joinall(list, timeout): wait until all n
 * greenlets have finished, under one deadline.  NULL entries are skipped.
 * Returns 0; -EAGAIN when timeout is 0 and some have not finished;
 * -ETIMEDOUT when some have not finished in time; -EINVAL for a NULL list
 * with n > 0 or a bad timeout; other errors as conc_greenlet_join.
 */
CONC_API int conc_greenlet_joinall(conc_greenlet *const *list, size_t n, double timeout);
/* conc_greenlet_joinall_until - conc_greenlet_joinall with an absolute
 * CLOCK_MONOTONIC deadline (a passed one gives -ETIMEDOUT). */
CONC_API int conc_greenlet_joinall_until(conc_greenlet *const *list, size_t n,
                                         int64_t deadline);

/*
 * conc_greenlet_kill - Greenlet.kill(block=False): a greenlet parked in a
 * blocking call sees that call return -ECANCELED (it may clean up and return); one
 * that is ready to run (woken, not resumed yet) keeps what woke it (a lock
 * handed over, an item) and sees its next blocking call that has to wait
 * return -ECANCELED; one
 * that has not started never runs (it finishes at once, and
 * conc_greenlet_result gives -ECANCELED).  Killing a finished greenlet does
 * nothing.  Does not wait: conc_greenlet_join does.  Killing the calling greenlet
 * makes its next blocking call return -ECANCELED.  Returns 0; -EINVAL for
 * NULL; -EPERM from a thread other than g's.
 */
CONC_API int conc_greenlet_kill(conc_greenlet *g);

/* conc_greenlet_dead - Greenlet.dead: true once g has finished (also when
 * killed before it started).  False for NULL. */
CONC_API bool conc_greenlet_dead(const conc_greenlet *g);

/*
 * conc_greenlet_result - Greenlet.value: stores what g's function returned
 * in *out.  Returns 0; -EBUSY while g has not finished; -ECANCELED when it
 * was killed before it started (*out = NULL); -EINVAL for NULL arguments.
 */
CONC_API int conc_greenlet_result(const conc_greenlet *g, void **out);

/* conc_greenlet_name - g's name, valid while the handle is ("" for NULL). */
CONC_API const char *conc_greenlet_name(const conc_greenlet *g);

/* conc_greenlet_current - the calling greenlet; NULL outside spawned
 * greenlets (the main coroutine, plain threads). */
CONC_API conc_greenlet *conc_greenlet_current(void);

/*
 * conc_greenlet_free - release the handle.  A greenlet that has not
 * finished keeps running and releases itself when it does.  A finished
 * greenlet keeps its stack (the pages it touched) until its handle is
 * freed: free handles once the result is read.  May be called from any
 * thread.  NULL is ignored.
 */
CONC_API void conc_greenlet_free(conc_greenlet *g);

/*
 * conc_hub_timeout_push - gevent.Timeout(seconds) as a scope: until the
 * matching conc_hub_timeout_pop, every blocking call of the calling
 * coroutine returns -ETIMEDOUT once `seconds` from now have passed
 * (CONC_FOREVER: a scope without a deadline; 0: already passed);
 * conc_sleep returns -ETIMEDOUT when the scope cuts it short.  Scopes nest; the earliest deadline wins.  Works in the main
 * coroutine and in greenlets; in a thread without a hub it makes one (its
 * blocking calls then go through the hub).  Returns 0; -EOVERFLOW past
 * CONC_TIMEOUT_DEPTH nested scopes; -EPERM from a coroutine the hub does not
 * run; -ENOMEM when the hub, or at a coroutine's first scope the array of
 * its scopes, cannot be made; -EINVAL for a bad timeout.
 */
CONC_API int conc_hub_timeout_push(double seconds);
/* conc_hub_timeout_push_until - conc_hub_timeout_push with an absolute
 * CLOCK_MONOTONIC deadline in ns (CONC_NO_DEADLINE for none).  Returns as
 * conc_hub_timeout_push (no -EINVAL: every deadline is valid). */
CONC_API int conc_hub_timeout_push_until(int64_t deadline);

/* conc_hub_timeout_pop - end the innermost scope of the calling coroutine.
 * Returns 0; -EINVAL when it has none open. */
CONC_API int conc_hub_timeout_pop(void);

/*
 * conc_hub_run - gevent.wait(): run the hub until every greenlet spawned in
 * this thread has finished.  Returns 0 (at once when there are none);
 * -EDEADLK when the rest wait for each other and can never finish (see
 * "Deadlocks" above); -EPERM from a
 * greenlet (only the main coroutine runs the loop this way).
 */
CONC_API int conc_hub_run(void);

/*
 * conc_hub_dump - write to descriptor fd (STDERR_FILENO, say) one line per
 * coroutine of the calling thread's hub saying what it waits for:
 * "word 0x... [until T]", "fd N events E", "fds" (several descriptors:
 * conc_wait), "sleep until T", "ready", "running", "new".  Returns the
 * number of lines written (0 when the thread has no hub); -EBADF for a
 * negative fd; -errno when a write fails.
 */
CONC_API int conc_hub_dump(int fd);

/*
 * conc_hub_free - remove the calling thread's hub (and its hook: the
 * thread's blocking calls block the thread again).  Returns 0 (also when
 * there is none); -EBUSY while greenlets of the hub have not finished;
 * -EPERM from a greenlet.
 */
CONC_API int conc_hub_free(void);

#ifdef __cplusplus
}
#endif
#endif /* CONC_HUB_H */
