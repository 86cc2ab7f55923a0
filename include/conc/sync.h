/*
 * conc/sync.h - Lock, RLock, Semaphore, BoundedSemaphore, Event, Condition,
 * Barrier (threading.* and multiprocessing.*).
 *
 * Every primitive is a small, fixed-size struct without pointers, built on
 * futexes.  It needs no destructor and may live anywhere: on the stack, in a
 * heap object, in a static variable (use the _INIT macros), or in memory
 * shared between processes.  A primitive that is used between processes must
 * be initialised with the CONC_SYNC_SHARED flag (or a _INIT_SHARED macro):
 * without it the futex is process-private and waiters in other processes are
 * never woken.  Do not copy a primitive that is in use.
 *
 * Timeouts follow conc/time.h: CONC_FOREVER blocks, 0 polls (-EAGAIN when the
 * call cannot succeed at once), t > 0 gives -ETIMEDOUT after t seconds; a
 * negative timeout other than CONC_FOREVER, or NaN, is -EINVAL.  Each waiting
 * call has an _until form taking an absolute CLOCK_MONOTONIC deadline in ns.
 * Called from a conc coroutine, every waiting call parks only the coroutine;
 * it then may also return -ECANCELED (the coroutine was killed), see
 * conc/coro.h.  These waits never report -EDEADLK: something outside the
 * hub (another thread, a signal handler, another process) may always end
 * them, so they block as a thread's wait would.
 * Signals never interrupt a wait (it resumes with the time that is left).
 *
 * Owners: a Lock or RLock is owned by the coroutine that acquired it (as
 * greenlets own locks in gevent); a thread's own stack (a plain thread, or
 * a thread's main coroutine) is one owner.  Wherever a comment below says
 * "the caller" or "thread" about ownership, it means that owner.
 *
 * Shared primitives and deaths: a process killed while it waits (even right
 * after being woken) never leaves the others asleep for good; the waiting
 * calls on a shared primitive look at it again at least every second, so a
 * wake-up lost with a killed process costs a bounded stall (docs/sync.md).
 *
 * Python reference: threading.Lock etc.; differences are noted per call.
 */
#ifndef CONC_SYNC_H
#define CONC_SYNC_H

#include <stdbool.h>
#include <stdint.h>
#include "conc/errors.h"
#include "conc/time.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Flag for the _init functions: the primitive is used between processes. */
#define CONC_SYNC_SHARED 0x1u

/* ------------------------------------------------------------------ Lock */

/*
 * conc_lock - threading.Lock / multiprocessing.Lock: a non-recursive mutex.
 *
 * A private Lock (the default) behaves exactly like Python's: any thread may
 * release a locked Lock, not only the one that acquired it.
 *
 * A shared Lock (CONC_SYNC_SHARED, for use between processes) is robust:
 * while it is held it is linked into the holding thread's kernel robust
 * list, so when that thread or its process dies holding it, the kernel marks
 * it and the next acquirer gets -EOWNERDEAD while owning the lock.  The data
 * it protects may be half-updated: repair it and call conc_lock_consistent,
 * else every later acquirer gets -EOWNERDEAD too.  A shared Lock must be
 * released by the thread that acquired it, or another coroutine of that
 * thread (-EPERM otherwise), and the memory holding it must stay mapped
 * while it is held.
 *
 * Layout: the lock word holds the owning thread's kernel id, the format of
 * the kernel's robust futexes; _owner says which coroutine of that thread
 * owns it; _links is the robust-list node (addresses in the holder's own
 * address space, meaningless to other processes).
 */
typedef struct conc_lock {
    uint32_t _word;         /* 0 free, else owner tid | waiters | owner died */
    uint32_t _flags;
    uint32_t _count;        /* RLock recursion depth */
    uint32_t _state;        /* 0 consistent, 1 an owner died */
    uint64_t _owner;        /* which coroutine of the owning thread holds it */
    uint64_t _links[2];     /* robust-list node while held (shared locks) */
} conc_lock;

#define CONC_LOCK_INIT        { 0, 0, 0, 0, 0, { 0, 0 } }
#define CONC_LOCK_INIT_SHARED { 0, CONC_SYNC_SHARED, 0, 0, 0, { 0, 0 } }

/* conc_lock_init - initialise an unlocked Lock.  flags: 0 or CONC_SYNC_SHARED.
 * Returns 0, or -EINVAL for a NULL lock or an unknown flag; -ENOTSUP for a
 * shared lock where owner deaths could not be seen (docs/building.md). */
CONC_API int conc_lock_init(conc_lock *lock, unsigned flags);

/*
 * conc_lock_acquire - Lock.acquire(blocking, timeout).
 * Returns 0 once the caller holds the lock; -EOWNERDEAD when the caller now
 * holds a shared lock whose previous owner died holding it (see above);
 * -EAGAIN when timeout is 0 and the lock is held; -ETIMEDOUT when the
 * timeout passed; -EINVAL for a NULL lock or a bad timeout.  Acquiring a Lock the caller already holds blocks (as in
 * Python) until another thread releases it or the timeout passes.
 */
CONC_API int conc_lock_acquire(conc_lock *lock, double timeout);
/* conc_lock_acquire_until - as conc_lock_acquire with an absolute deadline;
 * a passed deadline gives -ETIMEDOUT when the lock is held. */
CONC_API int conc_lock_acquire_until(conc_lock *lock, int64_t deadline);

/*
 * conc_lock_release - Lock.release().  Returns 0, -EPERM when the lock is
 * not locked (Python's RuntimeError) or, for a shared lock, not held by the
 * calling thread; -EINVAL for NULL.
 */
CONC_API int conc_lock_release(conc_lock *lock);

/* conc_lock_locked - Lock.locked(): true while somebody holds the lock.  A
 * shared lock whose holder died reads as unlocked (the kernel freed it; the
 * next acquirer gets -EOWNERDEAD), where Python's stays locked. */
CONC_API bool conc_lock_locked(const conc_lock *lock);

/* conc_lock_held - true when the calling coroutine (or thread, outside
 * coroutines) is the one that acquired the lock and it is still locked;
 * false in another coroutine of the same thread. */
CONC_API bool conc_lock_held(const conc_lock *lock);

/*
 * conc_lock_consistent - like pthread_mutex_consistent: after -EOWNERDEAD,
 * the new owner declares the protected state repaired.  Returns 0; -EPERM
 * when the caller (coroutine) does not hold the lock; -EINVAL for NULL or
 * when the lock is not marked (no owner died).
 */
CONC_API int conc_lock_consistent(conc_lock *lock);

/* ----------------------------------------------------------------- RLock */

/*
 * conc_rlock - threading.RLock / multiprocessing.RLock: a recursive lock
 * owned by one thread, or by one coroutine (greenlet) of a thread: another
 * coroutine of the same thread waits for it like another thread does.  The
 * owner may acquire it again; it is free after as many releases as
 * acquires.  A shared RLock is robust like a shared Lock:
 * acquiring it after its owner died gives -EOWNERDEAD with depth 1.
 */
typedef struct conc_rlock {
    conc_lock _lock;        /* the depth lives in _lock._count */
} conc_rlock;

#define CONC_RLOCK_INIT        { CONC_LOCK_INIT }
#define CONC_RLOCK_INIT_SHARED { CONC_LOCK_INIT_SHARED }

/* conc_rlock_init - initialise a free RLock.  flags: 0 or CONC_SYNC_SHARED.
 * Returns 0, -EINVAL, or -ENOTSUP as conc_lock_init. */
CONC_API int conc_rlock_init(conc_rlock *lock, unsigned flags);

/*
 * conc_rlock_acquire - RLock.acquire(blocking, timeout).  Returns 0 (the
 * recursion depth grew by one), -EOWNERDEAD (shared: the previous owner
 * died; the caller owns it with depth 1), -EAGAIN when timeout is 0 and
 * another thread or coroutine holds it, -ETIMEDOUT, -EOVERFLOW when the depth would pass
 * UINT32_MAX, -EINVAL for NULL or a bad timeout.
 */
CONC_API int conc_rlock_acquire(conc_rlock *lock, double timeout);
CONC_API int conc_rlock_acquire_until(conc_rlock *lock, int64_t deadline);

/*
 * conc_rlock_release - RLock.release(): drop one level; the lock is free
 * when the depth reaches 0.  Returns 0, -EPERM when the caller does not own
 * the lock (Python's RuntimeError; also from another coroutine of the owning
 * thread), -EINVAL for NULL.
 */
CONC_API int conc_rlock_release(conc_rlock *lock);

/* conc_rlock_is_owned - true when the calling coroutine (or thread, outside
 * coroutines) owns the RLock. */
CONC_API bool conc_rlock_is_owned(const conc_rlock *lock);

/* conc_rlock_depth - the recursion depth when the caller owns it, else 0. */
CONC_API unsigned conc_rlock_depth(const conc_rlock *lock);

/* conc_rlock_consistent - as conc_lock_consistent for an RLock. */
CONC_API int conc_rlock_consistent(conc_rlock *lock);

/* ------------------------------------------ Semaphore, BoundedSemaphore */

/* Flag for conc_sem_init: a BoundedSemaphore (release past the initial value
 * is an error). */
#define CONC_SEM_BOUNDED 0x2u

/*
 * conc_sem - threading.Semaphore and threading.BoundedSemaphore.
 * The counter is at most CONC_SEM_VALUE_MAX.
 */
typedef struct conc_sem {
    uint32_t _value;
    uint32_t _flags;
    uint32_t _bound;        /* initial value of a BoundedSemaphore */
    uint32_t _reserved0;    /* zero */
    uint64_t _park;         /* its sleepers: count and futex word */
    uint64_t _reserved[1];  /* room to grow without a layout change; zero */
} conc_sem;

#define CONC_SEM_VALUE_MAX 0x7fffffffu
#define CONC_SEM_INIT(value)         { (value), 0, 0, 0, 0, { 0 } }
#define CONC_BSEM_INIT(value)        { (value), CONC_SEM_BOUNDED, (value), 0, 0, { 0 } }
#define CONC_SEM_INIT_SHARED(value)  { (value), CONC_SYNC_SHARED, 0, 0, 0, { 0 } }
#define CONC_BSEM_INIT_SHARED(value) \
    { (value), CONC_SYNC_SHARED | CONC_SEM_BOUNDED, (value), 0, 0, { 0 } }

/*
 * conc_sem_init - initialise a Semaphore with the given value.
 * flags: any of CONC_SYNC_SHARED, CONC_SEM_BOUNDED.  Returns 0, or -EINVAL
 * for NULL, an unknown flag or a value above CONC_SEM_VALUE_MAX.
 */
CONC_API int conc_sem_init(conc_sem *sem, unsigned value, unsigned flags);

/*
 * conc_sem_acquire - Semaphore.acquire(blocking, timeout): take one unit.
 * Returns 0, -EAGAIN (timeout 0 and the value is 0), -ETIMEDOUT, -EINVAL.
 */
CONC_API int conc_sem_acquire(conc_sem *sem, double timeout);
CONC_API int conc_sem_acquire_until(conc_sem *sem, int64_t deadline);

/*
 * conc_sem_release - Semaphore.release(n): add n units and wake up to n
 * waiters.  Returns 0; -EINVAL for NULL or n == 0 (Python's ValueError);
 * -EOVERFLOW when a BoundedSemaphore would pass its initial value (Python's
 * ValueError) or any semaphore would pass CONC_SEM_VALUE_MAX; on -EOVERFLOW
 * nothing was added.  Async-signal-safe (as sem_post), also while
 * coroutines are parked on sem (see conc/coro.h).
 */
CONC_API int conc_sem_release(conc_sem *sem, unsigned n);

/* conc_sem_value - the current value (a snapshot). */
CONC_API unsigned conc_sem_value(const conc_sem *sem);

/* ----------------------------------------------------------------- Event */

/* conc_event - threading.Event: a flag that threads can wait for. */
typedef struct conc_event {
    uint32_t _word;         /* bit 0: set; bit 1: somebody may be waiting;
                               bits 2..31: how many times it was set */
    uint32_t _flags;
    uint32_t _reserved[2];  /* room to grow without a layout change; zero */
} conc_event;

#define CONC_EVENT_INIT        { 0, 0, { 0, 0 } }
#define CONC_EVENT_INIT_SHARED { 0, CONC_SYNC_SHARED, { 0, 0 } }

/* conc_event_init - initialise a clear Event.  Returns 0 or -EINVAL. */
CONC_API int conc_event_init(conc_event *ev, unsigned flags);

/* conc_event_set - Event.set(): set the flag, wake every waiter.
 * Returns 0, -EINVAL for NULL.  Async-signal-safe, also while coroutines
 * are parked on ev (see conc/coro.h). */
CONC_API int conc_event_set(conc_event *ev);

/* conc_event_clear - Event.clear().  Returns 0, -EINVAL for NULL. */
CONC_API int conc_event_clear(conc_event *ev);

/* conc_event_is_set - Event.is_set(). */
CONC_API bool conc_event_is_set(const conc_event *ev);

/*
 * conc_event_wait - Event.wait(timeout): wait until the flag is set.
 * Returns 0 when it is (Python's True), also when it was set while the
 * caller waited and cleared again at once, before the caller looked;
 * -EAGAIN when timeout is 0 and it is clear; -ETIMEDOUT (Python's False);
 * -EINVAL.
 */
CONC_API int conc_event_wait(conc_event *ev, double timeout);
CONC_API int conc_event_wait_until(conc_event *ev, int64_t deadline);

/* ------------------------------------------------------------- Condition */

/*
 * conc_cond - threading.Condition.  The condition does not embed its lock:
 * every wait names the Lock (conc_cond_wait*) or RLock (conc_cond_wait*_r)
 * it is used with, so several conditions can share one lock, like Python's
 * Condition(lock).  Use one condition with one lock at a time.
 *
 * notify(n) wakes exactly min(n, waiting) threads, chosen among those that
 * were waiting when it was called: a thread that starts waiting later never
 * takes their wake-up, and a waiter returns 0 only when a notify counted it,
 * never spuriously.  Call notify with the lock held, as Python requires; conc
 * cannot check it (notify does not name the lock), and a notify without the
 * lock may miss a thread that is about to wait, or wake a later one instead.
 */
typedef struct conc_cond {
    uint32_t _seq;          /* bumped by every notify */
    uint32_t _flags;
    uint64_t _counts;       /* low 32: waiting, high 32: pending wake-ups */
    uint64_t _park;         /* its sleepers: count and futex word */
    uint64_t _reserved[1];  /* room to grow without a layout change; zero */
} conc_cond;

#define CONC_COND_INIT        { 0, 0, 0, 0, { 0 } }
#define CONC_COND_INIT_SHARED { 0, CONC_SYNC_SHARED, 0, 0, { 0 } }

/* conc_cond_init - initialise a Condition.  Returns 0 or -EINVAL. */
CONC_API int conc_cond_init(conc_cond *cond, unsigned flags);

/*
 * conc_cond_wait - Condition.wait(timeout) over a Lock the caller holds.
 * Releases the lock, waits for a notify, reacquires the lock (always, even
 * on timeout) and returns.  Returns 0 when notified; -ETIMEDOUT when the
 * timeout passed first (also for timeout 0: Python returns False);
 * -EOWNERDEAD when, getting a shared lock back, its previous owner had died
 * (the caller holds it; whether it was notified is lost);
 * -EPERM when the caller does not hold the lock (nothing is released; in a
 * hub, a lock held by another coroutine of the thread is not held);
 * -EINVAL for NULL arguments or a bad timeout.
 */
CONC_API int conc_cond_wait(conc_cond *cond, conc_lock *lock, double timeout);
CONC_API int conc_cond_wait_until(conc_cond *cond, conc_lock *lock, int64_t deadline);

/*
 * conc_cond_wait_r - as conc_cond_wait over an RLock: every recursion level
 * is released while waiting and restored afterwards.  -EPERM when the caller
 * does not own the RLock.
 */
CONC_API int conc_cond_wait_r(conc_cond *cond, conc_rlock *lock, double timeout);
CONC_API int conc_cond_wait_r_until(conc_cond *cond, conc_rlock *lock, int64_t deadline);

/* A predicate for wait_for: returns non-zero when the awaited state holds.
 * It is called with the lock held. */
typedef int (*conc_predicate)(void *arg);

/*
 * conc_cond_wait_for - Condition.wait_for(predicate, timeout): wait until
 * pred(arg) is true (checked first, then after each wake-up), the lock held.
 * Returns 0 when the predicate is true; -ETIMEDOUT when the timeout passed
 * with it still false (for timeout 0 too); -EPERM; -EINVAL.
 */
CONC_API int conc_cond_wait_for(conc_cond *cond, conc_lock *lock,
                                conc_predicate pred, void *arg, double timeout);
CONC_API int conc_cond_wait_for_until(conc_cond *cond, conc_lock *lock,
                                      conc_predicate pred, void *arg, int64_t deadline);
CONC_API int conc_cond_wait_for_r(conc_cond *cond, conc_rlock *lock,
                                  conc_predicate pred, void *arg, double timeout);
CONC_API int conc_cond_wait_for_r_until(conc_cond *cond, conc_rlock *lock,
                                        conc_predicate pred, void *arg, int64_t deadline);

/*
 * conc_cond_notify - Condition.notify(n): wake up to n waiting threads.
 * Returns how many waiters it woke (0..n), or -EINVAL for NULL.
 */
CONC_API int conc_cond_notify(conc_cond *cond, unsigned n);

/* conc_cond_notify_all - Condition.notify_all().  Returns how many waiters
 * it woke, or -EINVAL. */
CONC_API int conc_cond_notify_all(conc_cond *cond);

/* --------------------------------------------------------------- Barrier */

/*
 * conc_barrier - threading.Barrier for a fixed number of parties.
 * Python's Barrier(action=...) is conc_barrier_wait_action's argument here,
 * since the struct holds no pointers.
 */
typedef struct conc_barrier {
    conc_lock _lock;
    conc_cond _cond;
    uint32_t _parties;
    uint32_t _count;        /* threads inside wait() */
    int32_t _state;         /* filling, draining, resetting, broken */
    uint32_t _flags;
} conc_barrier;

#define CONC_BARRIER_INIT(parties) \
    { CONC_LOCK_INIT, CONC_COND_INIT, (parties), 0, 0, 0 }
#define CONC_BARRIER_INIT_SHARED(parties) \
    { CONC_LOCK_INIT_SHARED, CONC_COND_INIT_SHARED, (parties), 0, 0, CONC_SYNC_SHARED }

/* conc_barrier_init - initialise a Barrier for `parties` threads (>= 1).
 * Returns 0, or -EINVAL for NULL, parties 0, or an unknown flag. */
CONC_API int conc_barrier_init(conc_barrier *b, unsigned parties, unsigned flags);

/*
 * conc_barrier_wait - Barrier.wait(timeout): wait until all parties have
 * called wait.  Returns an index in 0..parties-1, distinct for each thread
 * of one round (the last to arrive gets parties-1).
 * Errors: -EPIPE when the barrier is broken or is aborted or reset while
 * waiting (Python's BrokenBarrierError); -ETIMEDOUT when this call's timeout
 * passed (the barrier is then broken, so the other waiters get -EPIPE);
 * -EINVAL for NULL or a bad timeout.  A timeout of 0 is a real (zero-length)
 * wait, so it breaks the barrier unless this call completes the round.
 * Shared barriers: a party that dies inside wait breaks the barrier when it
 * dies holding its internal lock, and otherwise counts as arrived; a party
 * that dies before arriving is missed like in Python: use a timeout, or let
 * a supervisor abort the barrier when it sees the death.
 */
CONC_API int conc_barrier_wait(conc_barrier *b, double timeout);
CONC_API int conc_barrier_wait_until(conc_barrier *b, int64_t deadline);

/*
 * conc_barrier_wait_action - as conc_barrier_wait; the thread that completes
 * the round first calls action(arg) (when action is not NULL), before any
 * thread is released, like Python's Barrier(action=...).  The action returns
 * 0, or non-zero to break the barrier (Python: the action raised): then every
 * thread, the caller included, gets -EPIPE.
 */
CONC_API int conc_barrier_wait_action(conc_barrier *b, double timeout,
                                      int (*action)(void *arg), void *arg);
CONC_API int conc_barrier_wait_action_until(conc_barrier *b, int64_t deadline,
                                            int (*action)(void *arg), void *arg);

/* conc_barrier_abort - Barrier.abort(): break the barrier; current and future
 * waiters get -EPIPE until conc_barrier_reset.  Returns 0 or -EINVAL. */
CONC_API int conc_barrier_abort(conc_barrier *b);

/* conc_barrier_reset - Barrier.reset(): return to the empty state; threads
 * waiting now get -EPIPE.  Returns 0 or -EINVAL. */
CONC_API int conc_barrier_reset(conc_barrier *b);

/* conc_barrier_broken - Barrier.broken. */
CONC_API bool conc_barrier_broken(const conc_barrier *b);
/* conc_barrier_parties - Barrier.parties. */
CONC_API unsigned conc_barrier_parties(const conc_barrier *b);
/* conc_barrier_n_waiting - Barrier.n_waiting: threads waiting now. */
CONC_API unsigned conc_barrier_n_waiting(const conc_barrier *b);

#ifdef __cplusplus
}
#endif
#endif /* CONC_SYNC_H */
