/*
 * conc/coro.h - stackful coroutines with greenlet's semantics: create,
 * switch with a value, return to the parent, per-thread main coroutine.
 *
 * This is the foundation that gevent-style concurrency (a hub with spawn,
 * join, sleep, kill, timeouts and blocking calls that park only the calling
 * coroutine) is built on; see docs/coro.md.  Here there is no scheduler:
 * control moves only when a coroutine switches to another explicitly, as
 * with greenlet.greenlet.
 *
 * Model (greenlet's):
 *   - Every thread has an implicit main coroutine: the code that runs on the
 *     thread's own stack (conc_coro_main).  It exists from the thread's first
 *     conc_coro_* call and is never dead while the thread runs.
 *   - A coroutine runs fn(arg, value) on its own stack.  It starts when some
 *     coroutine first switches to it; `value` is what that switch passed.
 *   - conc_coro_switch(target, v, &out) suspends the caller and continues
 *     target, which receives v: a suspended target sees its own pending
 *     conc_coro_switch return with v; a target that has not started yet
 *     starts with v.  When someone later switches back to the caller, its
 *     call returns and stores in *out the value that switch passed.
 *   - When fn returns r, the coroutine is dead and control goes to its parent
 *     (by default the coroutine that created it), which receives r as if the
 *     coroutine had switched to it with r.  A dead parent is skipped: its own
 *     parent receives r, and so on up to the main coroutine.
 *   - Coroutines belong to the thread that created them: they run only on
 *     that thread, and switching is only between coroutines of one thread.
 *     Several threads may each run their own coroutines at the same time.
 *
 * Differences from greenlet: switching to a dead coroutine is the error
 * -EPIPE (greenlet silently continues its parent instead); there are no
 * exceptions, so greenlet.throw and GreenletExit have no counterpart here
 * (the hub will provide kill with -ECANCELED); freeing a suspended coroutine
 * discards its stack without running any cleanup (see conc_coro_free).
 *
 * Memory model.  Each coroutine has a fixed-size stack of `stack_size`
 * usable bytes (default CONC_CORO_STACK_DEFAULT, 64 KiB) plus one page
 * below it (the zone, see overflow below; past the guard budget the zone is
 * 1 KiB at the top of the stack below and the stack gets the rest of that
 * page: conc_coro_stack_size tells the exact size).  Stacks are virtual
 * memory from a pool: large MAP_NORESERVE mappings ("slabs") of up to 1024
 * stacks, so a million coroutines need about a thousand mappings (Linux
 * allows 65530 per process by default) and untouched stack pages cost no
 * memory and no swap reservation.  A coroutine's stack costs what it
 * touches, rounded up to pages: a coroutine sleeping a few calls deep
 * typically holds one 4 KiB page, plus ~150 bytes for the coroutine object (a greenlet of the hub
 * keeps its objects at the top of its stack: one page in all); a million
 * such coroutines need about 65 GiB of address space (64 KiB + 4 KiB each)
 * and 4 GiB of memory.  A stack that once went deep keeps those pages while
 * its coroutine lives.  A dead coroutine's stack returns to the pool at its
 * thread's next conc_coro_* call, whether or not its handle has been freed
 * (the handle stays valid until conc_coro_free; a greenlet's stack waits for
 * conc_greenlet_free); the most recently freed stacks (up to 16 in a cache
 * of the thread's own, up to 256 in all per stack size) are reused as they
 * are, and beyond that their pages are handed back to the kernel (madvise
 * MADV_DONTNEED), as are all free stacks' pages on conc_coro_trim.
 * Mappings are never unmapped.
 *
 * Choosing a stack size: the stack does not grow.  64 KiB suits code that
 * keeps big buffers off the stack; code that calls deep library stacks
 * (getaddrinfo, printf of long doubles, regex, recursion) wants 256 KiB or
 * more.  Larger sizes cost address space only, not memory, until used; a
 * coroutine's memory is the deepest page it reached, so keep big buffers
 * off the stacks of coroutines run by the hundred thousand.  Under
 * AddressSanitizer every size is multiplied by 4 and under
 * ThreadSanitizer by 2 (instrumented frames are larger);
 * conc_coro_stack_size tells the effective size.
 *
 * Stack overflow is detected and reported, never silent: the process prints
 * "conc: stack overflow in coroutine 'NAME' ..." on stderr and aborts
 * (SIGABRT).  This is memory corruption, not bad input, so it is the one
 * place where conc prints and aborts.  The zone below each stack is a guard
 * page for as many stacks as the budget allows (conc_coro_guard_limit: by
 * default vm.max_map_count / 8, 8191 on a stock kernel, since a PROT_NONE
 * guard page costs two map entries; on Linux 6.13 and later guard pages are
 * page-table markers, MADV_GUARD_INSTALL, which cost no map entry, so the
 * budget may be raised freely), plus the lowest stack of every slab.
 * Touching a guard page raises SIGSEGV, which conc's handler (installed
 * with the first coroutine, on an alternate signal stack per thread,
 * chaining to any handler installed before it) reports as the overflow of
 * the running coroutine.  Past the budget the zone is a canary
 * (1 KiB in the top page of the stack below, for stacks carved once the
 * budget is spent): it is never written, so it reads as zeros; every
 * switch away from such a coroutine (and its return) checks the zone and the
 * stack pointer, so an overflow is reported before any other coroutine runs.
 * An overflow that jumps over the whole zone with one huge frame, without
 * writing into it, is not caught by the canary; compile with
 * -fstack-clash-protection to make such frames probe every page.
 *
 * Sanitizers and valgrind: AddressSanitizer, ThreadSanitizer and valgrind
 * are told about every switch and every stack, so instrumented builds run
 * coroutines without false reports.
 *
 * Threads: conc_coro_* functions are thread-safe; a coroutine handle may be
 * passed to another thread only to be freed or inspected.  A thread should
 * end on its main coroutine; coroutines it leaves suspended stay allocated
 * until freed (from any thread).
 */
#ifndef CONC_CORO_H
#define CONC_CORO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "conc/errors.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct conc_coro conc_coro;

/*
 * The body of a coroutine: `arg` is the argument given to conc_coro_new,
 * `value` the value of the switch that started the coroutine.  Its return
 * value goes to the parent.
 */
typedef void *(*conc_coro_fn)(void *arg, void *value);

/* Options for conc_coro_new; all-zero (or NULL) means the defaults. */
typedef struct conc_coro_opts {
    size_t stack_size;      /* usable stack bytes; 0: CONC_CORO_STACK_DEFAULT.
                               Rounded up to the page size. */
    const char *name;       /* NULL: "Coro-N"; copied, truncated to
                               CONC_CORO_NAME_MAX bytes */
} conc_coro_opts;

#define CONC_CORO_STACK_DEFAULT (64u * 1024u)
#define CONC_CORO_STACK_MIN     (16u * 1024u)
#define CONC_CORO_STACK_MAX     ((size_t)1 << 30)
#define CONC_CORO_NAME_MAX      31

/*
 * conc_coro_new - create a coroutine that will run fn(arg, value) on its own
 * stack once something switches to it (greenlet.greenlet(run)).  Its parent
 * is the calling coroutine (the thread's main coroutine outside any).  It
 * belongs to the calling thread.  Returns 0 and stores the handle in *out;
 * -EINVAL for a NULL out or fn, or a stack size below CONC_CORO_STACK_MIN or
 * above CONC_CORO_STACK_MAX; -ENOMEM when no memory or address space is
 * left for the stack.
 */
CONC_API int conc_coro_new(conc_coro **out, conc_coro_fn fn, void *arg,
                           const conc_coro_opts *opts);

/*
 * conc_coro_switch - greenlet.switch(value): suspend the calling coroutine
 * and continue target with `value` (see the model above).  Returns 0 once
 * some coroutine switches back to the caller (or the caller's child returns
 * to it), and stores in *out (unless out is NULL) the value passed.
 * Switching to the calling coroutine itself returns 0 at once with *out =
 * value.  Errors (nothing happens): -EINVAL for a NULL target; -EPERM when
 * target belongs to another thread; -EPIPE when target is dead (its function
 * has returned); -ENOMEM when the calling thread's coroutine state cannot be
 * allocated.
 */
CONC_API int conc_coro_switch(conc_coro *target, void *value, void **out);

/*
 * conc_coro_current - greenlet.getcurrent(): the running coroutine of the
 * calling thread (its main coroutine outside any).  Borrowed: do not free.
 * Returns NULL only when the thread's state cannot be allocated.
 */
CONC_API conc_coro *conc_coro_current(void);

/*
 * conc_coro_main - the calling thread's main coroutine: the code running on
 * the thread's own stack.  Borrowed: do not free.  Returns NULL only when
 * the thread's state cannot be allocated.
 */
CONC_API conc_coro *conc_coro_main(void);

/*
 * conc_coro_parent - greenlet.parent: where control goes when c's function
 * returns.  NULL for a main coroutine or a NULL c.  Borrowed.
 */
CONC_API conc_coro *conc_coro_parent(const conc_coro *c);

/*
 * conc_coro_set_parent - set greenlet.parent.  Returns 0; -EINVAL for a NULL
 * argument, for a main coroutine (it has no parent), or when the change
 * would make a cycle (greenlet's "cyclic parent chain"); -EPERM when c and
 * parent do not both belong to the calling thread.
 */
CONC_API int conc_coro_set_parent(conc_coro *c, conc_coro *parent);

/* conc_coro_started - true once c has started running (a main coroutine
 * always has).  False for NULL. */
CONC_API bool conc_coro_started(const conc_coro *c);

/* conc_coro_dead - greenlet.dead: true once c's function has returned.
 * False for NULL and for coroutines not started yet. */
CONC_API bool conc_coro_dead(const conc_coro *c);

/*
 * conc_coro_result - the value c's function returned.  Returns 0 and stores
 * it in *out when c is dead; -EBUSY while it is not; -EINVAL for NULL.
 */
CONC_API int conc_coro_result(const conc_coro *c, void **out);

/* conc_coro_name - the coroutine's name ("main" for a main coroutine),
 * valid while the handle is; "" for NULL. */
CONC_API const char *conc_coro_name(const conc_coro *c);

/* conc_coro_stack_size - the usable size of c's stack in bytes (after
 * rounding and sanitizer scaling); 0 for a main coroutine or NULL. */
CONC_API size_t conc_coro_stack_size(const conc_coro *c);

/*
 * conc_coro_free - release a coroutine.  A dead or never-started coroutine
 * is simply released.  A suspended coroutine (started, not dead) is killed:
 * its stack is discarded without running any cleanup; nothing that its
 * frames would have released (memory, locks) is released, so make it return
 * first (switch to it with a value that tells it to finish) when it holds
 * resources.  Coroutines whose parent is c keep what they need of it: when
 * they return, control goes to c's parent.  May be called from any thread
 * that does not race with c's thread switching to it.  Returns 0 (also for
 * NULL); -EBUSY when c is running (it is the current coroutine of its
 * thread); -EINVAL for a main coroutine.  The handle is invalid afterwards.
 */
CONC_API int conc_coro_free(conc_coro *c);

/*
 * conc_coro_guard_limit - how many stacks may have a guard page (see stack
 * overflow above).  n >= 0 sets the limit for stacks handed out from now on
 * (stacks that have a guard page keep it; where guard markers install a
 * slab's guard pages at once, for the stacks of slabs made from now on);
 * n < 0 only asks.  Returns the limit in force before the call.
 */
CONC_API long conc_coro_guard_limit(long n);

/* conc_coro_trim - hand the pages of every free stack back to the kernel
 * (after a burst of coroutines has ended).  Thread-safe. */
CONC_API void conc_coro_trim(void);

/* Counters of the coroutines and the stack pool, process-wide. */
typedef struct conc_coro_stats {
    size_t coros;           /* coroutine objects not freed (main ones excluded) */
    size_t stacks_used;     /* stacks held by coroutines (created, not dead) */
    size_t stacks_hot;      /* free stacks that kept their pages */
    size_t stacks_clean;    /* free stacks without resident pages */
    size_t stacks_carved;   /* stacks ever handed out: used + hot + clean */
    size_t slabs;           /* mappings holding stacks */
    size_t bytes_mapped;    /* their address space */
    size_t guarded;         /* stacks with a guard page */
    long guard_limit;       /* conc_coro_guard_limit */
} conc_coro_stats;

/* conc_coro_get_stats - fill *out with the current counters.  Returns 0;
 * -EINVAL for NULL. */
CONC_API int conc_coro_get_stats(conc_coro_stats *out);


/* ======================================================================
 * The hub: gevent-style scheduling on top of the coroutines above.
 *
 * Every thread may have one hub, created on demand by its first conc_spawn
 * (or conc_hub_run): an epoll loop with a timer heap that runs in a
 * coroutine of its own.  While a thread has a hub, every blocking call of
 * conc made in that thread (locks, events, conditions, semaphores, queues,
 * joins, sleeps, descriptor waits: everything that goes through conc's one
 * wait primitive) parks only the calling coroutine and lets the hub run the
 * others ("monkey patching by design").  Threads without a hub keep
 * blocking in the kernel.
 *
 * gevent's model: the thread's main coroutine is a coroutine like the
 * others.  When it blocks in a conc call (conc_join, conc_sleep,
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
 * when the coroutine was killed (conc_kill) while it waited, -ETIMEDOUT
 * when the deadline of the call or of an enclosing timeout scope
 * (conc_timeout_push) passed.
 *
 * Deadlocks: -EDEADLK is reported only when it is certain.  A greenlet
 * joining itself gets it at once.  Otherwise the main coroutine's
 * conc_join, conc_joinall or conc_hub_run returns -EDEADLK when nothing in
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
 * and conc_kill is for that thread; conc_join, conc_greenlet_dead,
 * conc_greenlet_result and conc_greenlet_free may be called from any thread.
 * A forked child does not inherit the hub (its blocking calls block the
 * thread).  Locks are owned by coroutines, as in gevent: an RLock taken by
 * one greenlet is not owned by another greenlet of the same thread
 * (conc/sync.h).
 * ====================================================================== */

typedef struct conc_greenlet conc_greenlet;

/* The body of a greenlet; its return value is kept for conc_greenlet_result. */
typedef void *(*conc_greenlet_fn)(void *arg);

/* Options for conc_spawn; all-zero (or NULL) means the defaults. */
typedef struct conc_spawn_opts {
    size_t stack_size;      /* as conc_coro_opts.stack_size */
    const char *name;       /* as conc_coro_opts.name */
} conc_spawn_opts;

/* How often a wait on a process-shared word re-checks it (see above). */
#define CONC_HUB_SHARED_POLL_NS 2000000

/* Nesting limit of timeout scopes per coroutine. */
#define CONC_TIMEOUT_DEPTH 16

/*
 * conc_spawn - gevent.spawn(fn, arg): create a greenlet that runs fn(arg)
 * in a new coroutine of the calling thread's hub (created if needed).  It
 * is scheduled to start at the hub's next turn: it runs once the caller
 * blocks or yields (conc_sleep(0)).  Returns 0 and stores the handle in *out
 * (free it with conc_greenlet_free); -EINVAL for a NULL out or fn or bad
 * options (see conc_coro_new); -ENOMEM when memory, address space or the
 * hub's descriptors cannot be had; -EPERM when called from a coroutine that
 * the hub does not run (one made with conc_coro_new and switched to).
 */
CONC_API int conc_spawn(conc_greenlet **out, conc_greenlet_fn fn, void *arg,
                        const conc_spawn_opts *opts);

/*
 * conc_join - Greenlet.join(timeout): wait until g has finished (returned,
 * or been killed before it started).  From the hub's thread this parks the
 * caller and runs the other coroutines; from another thread it blocks the
 * thread.  timeout in seconds, CONC_FOREVER for none, 0 to poll.  Returns 0;
 * -ETIMEDOUT; -EINVAL for NULL g or a bad timeout; -EDEADLK when g is the
 * calling greenlet, or when the hub's greenlets wait for each other (see
 * "Deadlocks" above); -ECANCELED when the caller was killed while it
 * waited.
 */
CONC_API int conc_join(conc_greenlet *g, double timeout);
/* conc_join_until - conc_join with an absolute CLOCK_MONOTONIC deadline. */
CONC_API int conc_join_until(conc_greenlet *g, int64_t deadline);

/*
 * conc_joinall - gevent.joinall(list, timeout): wait until all n greenlets
 * have finished, under one deadline.  NULL entries are skipped.  Returns 0;
 * -ETIMEDOUT when some have not finished in time; other errors as
 * conc_join.
 */
CONC_API int conc_joinall(conc_greenlet *const *list, size_t n, double timeout);

/*
 * conc_kill - Greenlet.kill(block=False): a greenlet parked in a blocking
 * call sees that call return -ECANCELED (it may clean up and return); one
 * that is ready to run (woken, not resumed yet) keeps what woke it (a lock
 * handed over, an item) and sees its next blocking call that has to wait
 * return -ECANCELED; one
 * that has not started never runs (it finishes at once, and
 * conc_greenlet_result gives -ECANCELED).  Killing a finished greenlet does
 * nothing.  Does not wait: conc_join does.  Killing the calling greenlet
 * makes its next blocking call return -ECANCELED.  Returns 0; -EINVAL for
 * NULL; -EPERM from a thread other than g's.
 */
CONC_API int conc_kill(conc_greenlet *g);

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
 * conc_timeout_push - gevent.Timeout(seconds) as a scope: until the matching
 * conc_timeout_pop, every blocking call of the calling coroutine returns
 * -ETIMEDOUT once `deadline` (absolute CLOCK_MONOTONIC ns; CONC_NO_DEADLINE
 * for none) has passed; conc_sleep returns -ETIMEDOUT when the scope cuts
 * it short.  Scopes nest; the earliest deadline wins.  Works in the main
 * coroutine and in greenlets; in a thread without a hub it makes one (its
 * blocking calls then go through the hub).  Returns 0; -EOVERFLOW past
 * CONC_TIMEOUT_DEPTH nested scopes; -EPERM from a coroutine the hub does not
 * run; -ENOMEM when the hub cannot be made.
 */
CONC_API int conc_timeout_push(int64_t deadline);

/* conc_timeout_pop - end the innermost scope of the calling coroutine.
 * Returns 0; -EINVAL when it has none open. */
CONC_API int conc_timeout_pop(void);

/*
 * conc_wait_fd - gevent.socket.wait(fd, event, timeout): wait until fd
 * reports one of the poll() events (POLLIN, POLLOUT...), an error or a
 * hang-up.  In a hub thread the calling coroutine parks (the descriptor is
 * watched by the hub's epoll); elsewhere the thread blocks in ppoll.
 * Returns 0 when fd is ready (or the wait was interrupted: re-check);
 * -ETIMEDOUT; -EBADF when fd is not open; -ECANCELED when the coroutine
 * was killed; -EINVAL for a bad timeout; -ENOMEM; another -errno from
 * epoll_ctl or ppoll.  A regular file is always ready.
 */
CONC_API int conc_wait_fd(int fd, short events, double timeout);

/*
 * conc_hub_run - gevent.wait(): run the hub until every greenlet spawned in
 * this thread has finished.  Returns 0 (at once when there are none);
 * -EDEADLK when the rest wait for each other and can never finish (see
 * "Deadlocks" above); -EPERM from a
 * greenlet (only the main coroutine runs the loop this way).
 */
CONC_API int conc_hub_run(void);

/*
 * conc_hub_dump - print one line per coroutine of the calling thread's hub
 * saying what it waits for: "word 0x... [until T]", "fd N events E",
 * "fds" (several descriptors: conc_wait), "sleep until T", "ready",
 * "running", "new".  Returns the number of lines
 * printed (0 when the thread has no hub); -EINVAL for NULL f.
 */
CONC_API int conc_hub_dump(FILE *f);

/*
 * conc_hub_destroy - remove the calling thread's hub (and its hook: the
 * thread's blocking calls block the thread again).  Returns 0 (also when
 * there is none); -EBUSY while greenlets of the hub have not finished;
 * -EPERM from a greenlet.
 */
CONC_API int conc_hub_destroy(void);


/* ======================================================================
 * Pools: gevent.pool.Pool(size), a group of greenlets that lets at most
 * `size` of them run at once.
 *
 * conc_cpool_spawn starts a greenlet as conc_spawn does and makes it a
 * member of the pool; while the pool is full it first parks the calling
 * coroutine until a member finishes.  A member leaves the pool when it
 * finishes (its function returns, also after a kill); conc_cpool_join waits
 * until the pool is empty, conc_cpool_kill kills every member.  The members
 * are ordinary greenlets: conc_join, conc_kill, conc_greenlet_result work on
 * them, and their handles are freed with conc_greenlet_free as usual (the
 * pool does not need them).
 *
 * Size: n > 0 limits the pool to n members.  Size 0 (CONC_CPOOL_UNBOUNDED)
 * means no limit, like gevent's Pool(None): the pool only tracks its
 * members (gevent's Pool(0), which can never hold a member, has no
 * counterpart).
 *
 * A pool belongs to the thread that creates it: its members are greenlets
 * of that thread's hub, and the calls that spawn or wait must come from
 * that thread's main coroutine or its greenlets (-EPERM otherwise);
 * conc_cpool_size, conc_cpool_len, conc_cpool_free_count and
 * conc_cpool_full may be called from any thread (the count may be stale).
 *
 * From a member: conc_cpool_join and conc_cpool_kill leave the calling
 * member out (it is not killed, and they wait for the others only), so a
 * member can wait for its siblings without waiting for itself.  A member
 * that spawns into a full pool it belongs to waits like anybody else (with
 * size 1 that is forever, as in gevent).
 *
 * A member killed with conc_kill before it started never runs; it leaves
 * the pool at the next call of the pool that has to wait (spawn into a full
 * pool, join, kill, wait_available), not before: until then the counts
 * include it.  Members killed by conc_cpool_kill before they started leave
 * at once when the hub next runs; their function is not called and their
 * result is NULL.
 * ====================================================================== */

typedef struct conc_cpool conc_cpool;

#define CONC_CPOOL_UNBOUNDED 0

/*
 * conc_cpool_new - gevent.pool.Pool(size): an empty pool that lets at most
 * size members run at once (0: no limit).  Returns 0 and stores the handle
 * in *out; -EINVAL for NULL out; -ENOMEM.
 */
CONC_API int conc_cpool_new(conc_cpool **out, size_t size);

/*
 * conc_cpool_free - release an empty pool.  Returns 0 (also for NULL);
 * -EBUSY while it has members (join it, or kill it, first); -EPERM from
 * another thread than the pool's.  The members' greenlet handles are not
 * affected.
 */
CONC_API int conc_cpool_free(conc_cpool *p);

/*
 * conc_cpool_spawn - Pool.spawn(fn, arg): wait until the pool has room,
 * then spawn fn(arg) as conc_spawn does (opts as there) and add it to the
 * pool.  The new member runs once the caller blocks or yields.  timeout in
 * seconds: CONC_FOREVER waits as long as it takes (gevent's default), 0
 * never waits.  Stores the handle in *out (free it with
 * conc_greenlet_free); when out is NULL the handle is released at once (the
 * greenlet runs on).  Returns 0; -EAGAIN when timeout is 0 and the pool is
 * full (gevent's PoolFull); -ETIMEDOUT when the pool stayed full until the
 * deadline; -ECANCELED when the caller was killed while it waited; -EINVAL
 * for NULL p or fn, a bad timeout or bad options; -EPERM (see above);
 * -ENOMEM; other errors of conc_spawn.
 */
CONC_API int conc_cpool_spawn(conc_cpool *p, conc_greenlet **out, conc_greenlet_fn fn,
                              void *arg, const conc_spawn_opts *opts, double timeout);
/* conc_cpool_spawn_until - conc_cpool_spawn with an absolute
 * CLOCK_MONOTONIC deadline (CONC_NO_DEADLINE: wait as long as it takes; a
 * deadline already passed never waits and gives -EAGAIN when full). */
CONC_API int conc_cpool_spawn_until(conc_cpool *p, conc_greenlet **out, conc_greenlet_fn fn,
                                    void *arg, const conc_spawn_opts *opts, int64_t deadline);

/*
 * conc_cpool_join - Pool.join(timeout): wait until the pool is empty (all
 * its members have finished, including those spawned while waiting; a
 * member calling this is left out).  Like gevent's, it returns once the
 * pool was empty at some point: members may have been added before the
 * caller runs again.  Returns 0; -ETIMEDOUT; -ECANCELED when the caller was
 * killed; -EINVAL for NULL p or a bad timeout; -EPERM (see above).
 * Members that never finish make it wait for as long as it takes (see
 * "Deadlocks" above).
 */
CONC_API int conc_cpool_join(conc_cpool *p, double timeout);
CONC_API int conc_cpool_join_until(conc_cpool *p, int64_t deadline);

/*
 * conc_cpool_kill - Pool.kill(block=True, timeout): conc_kill every member
 * (those spawned while it waits too, as gevent does; a member calling this
 * is left out), then wait until the pool is empty.  timeout 0 is
 * block=False: kill, do not wait.  Returns 0 once the pool is empty;
 * -ETIMEDOUT while members remain at the deadline (with timeout 0: unless
 * the pool was empty already); other errors as conc_cpool_join.
 */
CONC_API int conc_cpool_kill(conc_cpool *p, double timeout);
CONC_API int conc_cpool_kill_until(conc_cpool *p, int64_t deadline);

/*
 * conc_cpool_wait_available - Pool.wait_available(timeout): wait until
 * conc_cpool_spawn would not have to wait.  Returns how many members may
 * be spawned without waiting (> 0; INT_MAX for an unbounded pool);
 * -ETIMEDOUT; other errors as conc_cpool_join.
 */
CONC_API int conc_cpool_wait_available(conc_cpool *p, double timeout);
CONC_API int conc_cpool_wait_available_until(conc_cpool *p, int64_t deadline);

/* conc_cpool_size - the limit given to conc_cpool_new (0: unbounded); 0
 * for NULL. */
CONC_API size_t conc_cpool_size(const conc_cpool *p);

/* conc_cpool_len - len(pool): the members now (spawned, not finished); 0
 * for NULL. */
CONC_API size_t conc_cpool_len(const conc_cpool *p);

/* conc_cpool_free_count - Pool.free_count(): how many more members fit
 * now: size - len, SIZE_MAX for an unbounded pool (gevent says 1), 0 for
 * NULL. */
CONC_API size_t conc_cpool_free_count(const conc_cpool *p);

/* conc_cpool_full - Pool.full(): true when conc_cpool_spawn would wait
 * (never for an unbounded pool); false for NULL. */
CONC_API bool conc_cpool_full(const conc_cpool *p);

/* conc_cpool_contains - `g in pool`: true while g is a member.  False for
 * NULL arguments and from another thread than the pool's. */
CONC_API bool conc_cpool_contains(const conc_cpool *p, const conc_greenlet *g);

#ifdef __cplusplus
}
#endif
#endif /* CONC_CORO_H */
