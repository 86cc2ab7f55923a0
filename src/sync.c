/*
 * sync.c - Lock, RLock, Semaphore, Event, Condition, Barrier on futexes.
 *
 * Lock word (Lock and RLock): 0 when free, else the owner's kernel thread id
 * (bits 0..29) with LK_WAITERS (bit 31) set when a thread may sleep on it and
 * LK_OWNER_DIED (bit 30) set by the kernel when the owner of a shared lock
 * died: the kernel's robust-futex word format (see sys/robust.h).
 */
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include "conc/sync.h"
#include "internal.h"
#include "sys/park.h"
#include "sys/robust.h"
#include "sys/wait.h"

#define LK_WAITERS    0x80000000u
#define LK_OWNER_DIED 0x40000000u
#define LK_TID_MASK   0x3fffffffu

/* Event word: EV_SET, EV_WAITERS, and in the bits above a generation that
 * every set() of a clear event advances (EV_GEN), so that a waiter that
 * slept through a set() followed at once by clear() still sees that it
 * happened (Python's rule: every thread waiting when set() ran returns
 * True).  30 bits: a waiter would miss a set() only if 2^30 set()s ran
 * while it slept. */
#define EV_SET     0x1u
#define EV_WAITERS 0x2u
#define EV_GEN     0x4u
#define EV_GEN_MASK (~(EV_SET | EV_WAITERS))

/* Lock contenders: the longest single backoff, in pauses (the spin's
 * length is the parking layer's policy, sys/park.h). */
#ifndef SPIN_LOCK_MAX_BACKOFF
#define SPIN_LOCK_MAX_BACKOFF 2048
#endif

static inline unsigned wflags(uint32_t flags)
{
    return (flags & CONC_SYNC_SHARED) ? CONC__WAIT_SHARED : 0;
}

static inline bool cas32(uint32_t *p, uint32_t *expect, uint32_t desired, int mo)
{
    return __atomic_compare_exchange_n(p, expect, desired, false, mo, __ATOMIC_RELAXED);
}

/* --------------------------------------------------------- lock word */

/*
 * Waiters, wake-ups and deaths (shared locks).
 *
 * A contender that sleeps first sets LK_WAITERS, and sleeps only while the
 * word holds an owner with that bit.  A release that finds the bit wakes ONE
 * sleeper.  In the classic protocol the release stores 0 and the woken
 * sleeper, when it retakes the lock, puts the bit back: until then the
 * knowledge "others sleep" lives only in the woken one.  Between processes
 * that one may be killed right after its wake-up; meanwhile a third process
 * takes the free word (0 -> its id, no bit), and the kernel's death handling
 * does nothing (it wakes a waiter for a dying waiter only while the owner
 * part is 0, see the robust-list pending slot below).  That third process
 * releases without waking anybody, and the remaining sleepers sleep forever
 * on a free lock (seen with 3+ processes and SIGKILL).
 *
 * So for a shared lock the bit is back in the word before any sleeper is
 * woken, and stays while a sleeper may remain:
 *  - a release that finds LK_WAITERS (it exchanged the word for 0) ORs the
 *    bit back at once, onto the free word (owner 0) or onto whoever took it
 *    in between, and only then wakes one sleeper; when that wake found no
 *    sleeper at all it clears the bit again (nobody sleeps on an owner-less
 *    word, so no sleeper can come between);
 *  - any taker of a word with owner 0 keeps LK_WAITERS (lockword_take_free),
 *    so the next release wakes the next sleeper; only a word that is exactly
 *    0 is taken without it (fast paths, spinners).
 * Deaths then lose nothing:
 *  - a woken sleeper killed before it retakes the lock: either the word's
 *    owner part is still 0 and the kernel, finding the lock in the dead
 *    thread's pending slot (set for the whole wait), wakes the next sleeper;
 *    or somebody took it since, with the bit, and wakes it on release;
 *  - an owner killed holding the lock: the kernel stores OWNER_DIED with the
 *    bit and wakes one sleeper; if that one dies too, the owner part is 0 and
 *    its pending slot wakes the next;
 *  - a releaser killed after its exchange and before its wake: its pending
 *    slot makes the kernel wake one while the owner part is 0, and a taker
 *    after the OR wakes on release.
 * What remains: a releaser killed between the exchange and the OR (two
 * instructions) while another process takes the word in that instant, or
 * two deaths in one short window.  For those, and for the primitives that
 * have no kernel help at all (Semaphore, Condition), every sleep on a
 * shared word is bounded (sys/wait.c): a lost wake-up costs a stall of at
 * most about a second, never a hang.  (A compare-and-swap release that
 * keeps the bit without the window measured ~10-20% slower on a contended
 * shared lock than the exchange.)  Private locks keep the classic protocol:
 * their waiters die only with the whole process.
 */

/* Takes a word whose owner part is 0 (free, maybe with LK_WAITERS, maybe
 * freed by the kernel for a dead owner) seen as v, keeping LK_WAITERS, or
 * setting it when `contended` (the caller slept or may have sleeping peers).
 * Returns 0, -EOWNERDEAD (the caller owns it now), or -EAGAIN when the word
 * changed. */
static inline int lockword_take_free(uint32_t *w, uint32_t v, uint32_t me, bool contended)
{
    uint32_t nv = me | (v & LK_WAITERS) | (contended ? LK_WAITERS : 0);
    if (!cas32(w, &v, nv, __ATOMIC_ACQUIRE))
        return -EAGAIN;
    return (v & LK_OWNER_DIED) ? -EOWNERDEAD : 0;
}

/* Slow path of taking a lock word for thread `me`.  Returns 0, -EOWNERDEAD
 * (the word said its owner died: the caller owns it now), -EAGAIN (poll),
 * -ETIMEDOUT, -ECANCELED (only when `cancellable`), or -EDEADLK (a hub found
 * that nothing can ever wake the caller).
 *
 * A contender first spins with exponential backoff: polling the word on
 * every pause would take the lock the moment it is free and bounce it (and
 * its cache line) between CPUs on every hand-off; backing off lets the owner
 * run several critical sections in a row, as a sleeping waiter would, without
 * paying for the sleep.  It stops spinning when others already sleep. */
static int lockword_acquire_slow(uint32_t *w, uint32_t flags, uint32_t me,
                                 int64_t deadline, bool poll, bool cancellable)
{
    uint32_t v;
    if (poll) {
        v = ld_relaxed(w);
        if (v & LK_TID_MASK)
            return -EAGAIN;
        return lockword_take_free(w, v, me, false);
    }
    struct conc__spin sp;
    if (conc__spin_begin(&sp, deadline)) {
        unsigned backoff = 4;
        while (conc__spin_step(&sp, backoff)) {
            v = ld_relaxed(w);
            if (v == 0) {
                if (cas32(w, &v, me, __ATOMIC_ACQUIRE))
                    return 0;
            } else if (v & (LK_WAITERS | LK_OWNER_DIED)) {
                break;          /* others sleep, or the owner died */
            }
            if (backoff < SPIN_LOCK_MAX_BACKOFF)
                backoff *= 2;
        }
    }
    unsigned wf = wflags(flags);
    for (;;) {
        v = ld_relaxed(w);
        if (!(v & LK_TID_MASK)) {
            /* Free, or released by the kernel for a dead owner.  We were
             * contending: others may sleep, so keep the bit set. */
            int r = lockword_take_free(w, v, me, true);
            if (r != -EAGAIN)
                return r;
            continue;
        }
        if (!(v & LK_WAITERS)) {
            if (!cas32(w, &v, v | LK_WAITERS, __ATOMIC_RELAXED))
                continue;
            v |= LK_WAITERS;
        }
        int r = conc__wait(w, v, deadline, wf);
        if (r == -ETIMEDOUT) {
            v = ld_relaxed(w);
            if (!(v & LK_TID_MASK) && (r = lockword_take_free(w, v, me, true)) != -EAGAIN)
                return r;
            return -ETIMEDOUT;
        }
        if ((r == -ECANCELED && cancellable) || r == -EDEADLK)
            return r;
    }
}

/* True when the word's owner is the calling thread. */
static inline bool lockword_mine(const uint32_t *w)
{
    uint32_t v = ld_relaxed(w);
    return (v & LK_TID_MASK) != 0 &&
           (v & LK_TID_MASK) == ((uint32_t)conc__tid() & LK_TID_MASK);
}

static inline int check_flags(unsigned flags, unsigned allowed)
{
    return (flags & ~allowed) ? -EINVAL : 0;
}

/* ------------------------------------------- Lock and RLock internals */

/*
 * Owners.  The word holds the owning thread's id (the kernel needs it for a
 * shared lock's owner-death handling); _owner says which coroutine of that
 * thread took it (conc__owner_id: 0 for the thread's own stack), so that
 * coroutines of one thread own locks apart, as greenlets do in gevent.  It
 * is written by the owner right after taking the word and read only by a
 * caller whose thread id matches the word: its own thread, where no other
 * coroutine runs in between.
 */
static inline void lock_set_owner(conc_lock *l)
{
    /* Stored only when it changes: a store right after the CAS would take
     * the line back from the contenders that read it meanwhile, once more
     * per hand-off (a lock passed between plain threads keeps owner 0). */
    uint64_t id = conc__owner_id();
    if (ld_relaxed(&l->_owner) != id)
        st_relaxed(&l->_owner, id);
}

/* True when the calling coroutine (or thread) holds the lock. */
static inline bool lock_mine(const conc_lock *l)
{
    return lockword_mine(&l->_word) && ld_relaxed(&l->_owner) == conc__owner_id();
}

/*
 * Takes a lock (Lock or the lock inside an RLock) until deadline.  A shared
 * lock is linked into the thread's robust list while held; taking one whose
 * previous owner died, or that is still marked inconsistent, returns
 * -EOWNERDEAD with the lock held.  The robust list's pending slot names the
 * lock for the whole wait (see "Waiters, wake-ups and deaths").
 */
static __attribute__((noinline)) int lock_take_shared_slow(conc_lock *l, uint32_t me,
                                                          int64_t deadline, bool poll,
                                                          bool cancellable)
{
    struct conc__robust_head *h = conc__robust_head();
    if (h)
        conc__robust_pending(h, &l->_links[1]);
    uint32_t z = 0;
    int r = cas32(&l->_word, &z, me, __ATOMIC_ACQUIRE)
                ? 0
                : lockword_acquire_slow(&l->_word, l->_flags, me, deadline, poll, cancellable);
    if (r == 0 || r == -EOWNERDEAD) {
        if (h)
            conc__robust_link(h, l->_links);
        if (r == -EOWNERDEAD)
            st_relaxed(&l->_state, 1);
        else if (unlikely(ld_relaxed(&l->_state)))
            r = -EOWNERDEAD;    /* nobody repaired it since an owner died */
    }
    if (h)
        conc__robust_pending(h, NULL);
    return r;
}

static inline int lock_take_word(conc_lock *l, int64_t deadline, bool poll, bool cancellable)
{
    uint32_t me = (uint32_t)conc__tid(), z = 0;
    if (!(l->_flags & CONC_SYNC_SHARED)) {
        if (likely(cas32(&l->_word, &z, me, __ATOMIC_ACQUIRE)))
            return 0;
        return lockword_acquire_slow(&l->_word, l->_flags, me, deadline, poll, cancellable);
    }
    /* Shared and free, with the robust list known: link it and go. */
    struct conc__robust_head *h = conc__robust_head_cache;
    if (likely(h && h != CONC__ROBUST_NONE)) {
        conc__robust_pending(h, &l->_links[1]);
        if (likely(cas32(&l->_word, &z, me, __ATOMIC_ACQUIRE))) {
            conc__robust_link(h, l->_links);
            conc__robust_pending(h, NULL);
            return unlikely(ld_relaxed(&l->_state)) ? -EOWNERDEAD : 0;
        }
        conc__robust_pending(h, NULL);
    }
    return lock_take_shared_slow(l, me, deadline, poll, cancellable);
}

/* Takes a lock for the calling coroutine. */
static inline int lock_take(conc_lock *l, int64_t deadline, bool poll, bool cancellable)
{
    int r = lock_take_word(l, deadline, poll, cancellable);
    if (likely(r == 0) || r == -EOWNERDEAD)
        lock_set_owner(l);
    return r;
}

/* Releases a lock the caller's thread holds (checked by the caller). */
static inline void lock_give_owned(conc_lock *l)
{
    uint32_t *w = &l->_word;
    if (l->_flags & CONC_SYNC_SHARED) {
        struct conc__robust_head *h = conc__robust_head();
        if (h) {
            conc__robust_pending(h, &l->_links[1]);
            conc__robust_unlink(l->_links);
        }
        /* Free; with waiters, the bit goes back at once, on whoever took
         * the word meanwhile (see "Waiters, wake-ups and deaths"). */
        uint32_t v = __atomic_exchange_n(w, 0, __ATOMIC_RELEASE);
        if (unlikely(v & LK_WAITERS)) {
            __atomic_fetch_or(w, LK_WAITERS, __ATOMIC_RELAXED);
            if (conc__wake(w, 1, CONC__WAIT_SHARED) <= 0) {
                uint32_t bit = LK_WAITERS;  /* nobody slept: drop the bit */
                cas32(w, &bit, 0, __ATOMIC_RELAXED);
            }
        }
        if (h)
            conc__robust_pending(h, NULL);
        return;
    }
    uint32_t v = __atomic_exchange_n(w, 0, __ATOMIC_RELEASE);
    if (unlikely(v & LK_WAITERS))
        conc__wake(w, 1, 0);
}

/* Releases a lock: -EPERM when it is not locked, or is shared and not held
 * by the caller's thread (any coroutine of the owning thread may release a
 * Lock, as any thread may release a private one). */
static inline int lock_give(conc_lock *l)
{
    if (l->_flags & CONC_SYNC_SHARED) {
        if (!lockword_mine(&l->_word))
            return -EPERM;
        lock_give_owned(l);
        return 0;
    }
    uint32_t v = __atomic_exchange_n(&l->_word, 0, __ATOMIC_RELEASE);
    if (unlikely(v == 0))
        return -EPERM;
    if (unlikely(v & LK_WAITERS))
        conc__wake(&l->_word, 1, 0);
    return 0;
}

/* Takes a lock back with no deadline and no cancellation (a Condition's
 * lock after the wait).  Returns 0 or -EOWNERDEAD. */
static inline int lock_retake(conc_lock *l)
{
    return lock_take(l, CONC_NO_DEADLINE, false, false);
}

static int lock_mark_consistent(conc_lock *l)
{
    if (!lock_mine(l))
        return -EPERM;
    if (!ld_relaxed(&l->_state))
        return -EINVAL;
    st_relaxed(&l->_state, 0);
    return 0;
}

/* -------------------------------------------------------------- Lock */

int conc_lock_init(conc_lock *lock, unsigned flags)
{
    if (!lock || check_flags(flags, CONC_SYNC_SHARED))
        return -EINVAL;
    if ((flags & CONC_SYNC_SHARED) && !conc__robust_head())
        return -ENOTSUP;        /* no robust list to link it into */
    *lock = (conc_lock)CONC_LOCK_INIT;
    lock->_flags = flags;
    return 0;
}

/* A timeout the fast path may ignore: valid, so a free lock is just taken. */
static inline bool timeout_valid(double timeout)
{
    return conc__timeout_kind(timeout) >= 0;
}

__attribute__((noinline)) static int lock_acquire_timed(conc_lock *lock, double timeout)
{
    if (!lock)
        return -EINVAL;
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return lock_take(lock, deadline, poll, true);
}

int conc_lock_acquire(conc_lock *lock, double timeout)
{
    /* The fast path: a private lock, a valid timeout, a known thread id, a
     * free lock. */
    uint32_t me = (uint32_t)conc__tid_cache, z = 0;
    if (likely(lock && me && !(lock->_flags & CONC_SYNC_SHARED) && timeout_valid(timeout)) &&
        likely(cas32(&lock->_word, &z, me, __ATOMIC_ACQUIRE))) {
        lock_set_owner(lock);
        return 0;
    }
    return lock_acquire_timed(lock, timeout);
}

int conc_lock_acquire_until(conc_lock *lock, int64_t deadline)
{
    if (unlikely(!lock))
        return -EINVAL;
    return lock_take(lock, deadline, false, true);
}

int conc_lock_release(conc_lock *lock)
{
    if (unlikely(!lock))
        return -EINVAL;
    return lock_give(lock);
}

bool conc_lock_locked(const conc_lock *lock)
{
    return lock && (ld_relaxed(&lock->_word) & LK_TID_MASK) != 0;
}

bool conc_lock_held(const conc_lock *lock)
{
    return lock && lock_mine(lock);
}

int conc_lock_consistent(conc_lock *lock)
{
    if (!lock)
        return -EINVAL;
    return lock_mark_consistent(lock);
}

/* ------------------------------------------------------------- RLock */

int conc_rlock_init(conc_rlock *lock, unsigned flags)
{
    if (!lock)
        return -EINVAL;
    return conc_lock_init(&lock->_lock, flags);
}

static int rlock_acquire(conc_rlock *rl, int64_t deadline, bool poll)
{
    conc_lock *l = &rl->_lock;
    if (lock_mine(l)) {
        if (unlikely(l->_count == UINT32_MAX))
            return -EOVERFLOW;
        l->_count++;
        return 0;
    }
    int r = lock_take(l, deadline, poll, true);
    if (r == 0 || r == -EOWNERDEAD)
        l->_count = 1;
    return r;
}

int conc_rlock_acquire(conc_rlock *lock, double timeout)
{
    if (unlikely(!lock))
        return -EINVAL;
    if (likely(timeout == CONC_FOREVER))
        return rlock_acquire(lock, CONC_NO_DEADLINE, false);
    int64_t deadline;
    bool poll;
    if (unlikely(conc__timeout_parse(timeout, &deadline, &poll)))
        return -EINVAL;
    return rlock_acquire(lock, deadline, poll);
}

int conc_rlock_acquire_until(conc_rlock *lock, int64_t deadline)
{
    if (unlikely(!lock))
        return -EINVAL;
    return rlock_acquire(lock, deadline, false);
}

int conc_rlock_release(conc_rlock *lock)
{
    if (unlikely(!lock))
        return -EINVAL;
    conc_lock *l = &lock->_lock;
    if (!lock_mine(l))
        return -EPERM;
    if (--l->_count > 0)
        return 0;
    lock_give_owned(l);
    return 0;
}

bool conc_rlock_is_owned(const conc_rlock *lock)
{
    return lock && lock_mine(&lock->_lock);
}

unsigned conc_rlock_depth(const conc_rlock *lock)
{
    return conc_rlock_is_owned(lock) ? lock->_lock._count : 0;
}

int conc_rlock_consistent(conc_rlock *lock)
{
    if (!lock)
        return -EINVAL;
    return lock_mark_consistent(&lock->_lock);
}

/* --------------------------------------------------------- Semaphore */

/*
 * Sleeping: the semaphore's waiters park on its spot (sys/park.h).  No lost
 * wake-up: a waiter counts itself (conc__park_prepare) before it tries to
 * take a unit, and a release adds its units with a seq_cst compare-and-swap
 * before it reads the count (conc__park_wake): either the waiter's try
 * finds the units, or the release finds the waiter counted and claims it.
 * A claimed waiter that leaves without a unit (another took it first: it
 * tries again; a timeout or a kill: it leaves) passes its wake-up on when
 * units remain, so a release(n) never leaves a unit with a sleeper beside
 * it.
 *
 * Deaths (shared): a waiter killed after its claim leaves its unit in
 * _value while another may sleep on; the shared sleep ends after a slice
 * (sys/park.c) and that one finds the unit.  A waiter killed while counted
 * leaves the count one too high until a release claims it: one wake-up
 * call that finds nobody, nothing worse.
 */

static inline struct conc__park *sem_park(conc_sem *sem)
{
    return (struct conc__park *)&sem->_park;
}

int conc_sem_init(conc_sem *sem, unsigned value, unsigned flags)
{
    if (!sem || check_flags(flags, CONC_SYNC_SHARED | CONC_SEM_BOUNDED) ||
        value > CONC_SEM_VALUE_MAX)
        return -EINVAL;
    sem->_value = value;
    sem->_flags = flags;
    sem->_bound = (flags & CONC_SEM_BOUNDED) ? value : 0;
    sem->_reserved0 = 0;
    sem->_park = 0;
    memset(sem->_reserved, 0, sizeof sem->_reserved);
    return 0;
}

static inline bool sem_trydown(conc_sem *sem)
{
    uint32_t v = __atomic_load_n(&sem->_value, __ATOMIC_SEQ_CST);
    while (v > 0) {
        if (cas32(&sem->_value, &v, v - 1, __ATOMIC_SEQ_CST))
            return true;
    }
    return false;
}

static int sem_acquire(conc_sem *sem, int64_t deadline, bool poll)
{
    if (sem_trydown(sem))
        return 0;
    if (poll)
        return -EAGAIN;
    struct conc__park *p = sem_park(sem);
    unsigned wf = wflags(sem->_flags);
    for (;;) {
        uint32_t key = conc__park_prepare(p);
        if (sem_trydown(sem)) {
            conc__park_cancel(p, key);
            return 0;
        }
        int r = conc__park_wait(p, key, deadline, wf, 0);
        if (sem_trydown(sem))
            return 0;
        if (r < 0) {
            if (ld_relaxed(&sem->_value) > 0)
                conc__park_wake(p, 1, wf);  /* ours goes to another */
            return r;
        }
    }
}

int conc_sem_acquire(conc_sem *sem, double timeout)
{
    if (unlikely(!sem))
        return -EINVAL;
    int64_t deadline;
    bool poll;
    if (unlikely(conc__timeout_parse(timeout, &deadline, &poll)))
        return -EINVAL;
    return sem_acquire(sem, deadline, poll);
}

int conc_sem_acquire_until(conc_sem *sem, int64_t deadline)
{
    if (unlikely(!sem))
        return -EINVAL;
    return sem_acquire(sem, deadline, false);
}

int conc_sem_release(conc_sem *sem, unsigned n)
{
    if (unlikely(!sem || n == 0))
        return -EINVAL;
    uint32_t limit = (sem->_flags & CONC_SEM_BOUNDED) ? sem->_bound : CONC_SEM_VALUE_MAX;
    uint32_t v = ld_relaxed(&sem->_value);
    do {
        if (n > limit || v > limit - n)
            return -EOVERFLOW;
    } while (!cas32(&sem->_value, &v, v + n, __ATOMIC_SEQ_CST));
    conc__park_wake(sem_park(sem), n > INT_MAX ? INT_MAX : (int)n, wflags(sem->_flags));
    return 0;
}

unsigned conc_sem_value(const conc_sem *sem)
{
    return sem ? ld_relaxed(&sem->_value) : 0;
}

/* ------------------------------------------------------------- Event */

int conc_event_init(conc_event *ev, unsigned flags)
{
    if (!ev || check_flags(flags, CONC_SYNC_SHARED))
        return -EINVAL;
    ev->_word = 0;
    ev->_flags = flags;
    memset(ev->_reserved, 0, sizeof ev->_reserved);
    return 0;
}

/* Deaths (shared): set() wakes every sleeper, so a waiter killed after its
 * wake-up takes nothing from the others. */
int conc_event_set(conc_event *ev)
{
    if (unlikely(!ev))
        return -EINVAL;
    uint32_t v = ld_relaxed(&ev->_word), next;
    do {
        if (v & EV_SET)
            return 0;           /* already set: nobody sleeps on a set word */
        next = ((v & EV_GEN_MASK) + EV_GEN) | EV_SET;
    } while (!cas32(&ev->_word, &v, next, __ATOMIC_RELEASE));
    if (v & EV_WAITERS)
        conc__wake(&ev->_word, INT_MAX, wflags(ev->_flags));
    return 0;
}

int conc_event_clear(conc_event *ev)
{
    if (unlikely(!ev))
        return -EINVAL;
    __atomic_fetch_and(&ev->_word, ~EV_SET, __ATOMIC_RELAXED);
    return 0;
}

bool conc_event_is_set(const conc_event *ev)
{
    return ev && (ld_acquire(&ev->_word) & EV_SET);
}

/* The event was set since a waiter saw it clear as `seen`: it is set, or
 * its generation moved. */
static inline bool event_fired(uint32_t now, uint32_t seen)
{
    return (now & EV_SET) || ((now ^ seen) & EV_GEN_MASK);
}

static int event_wait(conc_event *ev, int64_t deadline, bool poll)
{
    uint32_t v = ld_acquire(&ev->_word);
    if (v & EV_SET)
        return 0;
    if (poll)
        return -EAGAIN;
    const uint32_t seen = v;
    if (deadline != 0 && event_fired(conc__spin_while(&ev->_word, v, deadline), seen))
        return 0;
    unsigned wf = wflags(ev->_flags);
    for (;;) {
        v = ld_acquire(&ev->_word);
        if (event_fired(v, seen))
            return 0;
        if (!(v & EV_WAITERS)) {
            if (!cas32(&ev->_word, &v, v | EV_WAITERS, __ATOMIC_ACQUIRE))
                continue;
            v |= EV_WAITERS;
        }
        int r = conc__wait(&ev->_word, v, deadline, wf);
        if (r == -ETIMEDOUT || r == -ECANCELED || r == -EDEADLK)
            return event_fired(ld_acquire(&ev->_word), seen) ? 0 : r;
    }
}

int conc_event_wait(conc_event *ev, double timeout)
{
    if (unlikely(!ev))
        return -EINVAL;
    if (likely(timeout_valid(timeout)) && (ld_acquire(&ev->_word) & EV_SET))
        return 0;
    int64_t deadline;
    bool poll;
    if (unlikely(conc__timeout_parse(timeout, &deadline, &poll)))
        return -EINVAL;
    return event_wait(ev, deadline, poll);
}

int conc_event_wait_until(conc_event *ev, int64_t deadline)
{
    if (unlikely(!ev))
        return -EINVAL;
    return event_wait(ev, deadline, false);
}

/* --------------------------------------------------------- Condition */

/* _seq: every notify adds one. */
#define CV_ONE_SIGNAL (UINT64_C(1) << 32)
#define CV_WAITING(c) ((uint32_t)(c))
#define CV_SIGNALS(c) ((uint32_t)((c) >> 32))

int conc_cond_init(conc_cond *cond, unsigned flags)
{
    if (!cond || check_flags(flags, CONC_SYNC_SHARED))
        return -EINVAL;
    cond->_seq = 0;
    cond->_flags = flags;
    cond->_counts = 0;
    cond->_park = 0;
    memset(cond->_reserved, 0, sizeof cond->_reserved);
    return 0;
}

/* Takes one pending wake-up, if any. */
static inline bool cond_consume(conc_cond *cond)
{
    uint64_t c = __atomic_load_n(&cond->_counts, __ATOMIC_SEQ_CST);
    while (CV_SIGNALS(c)) {
        if (__atomic_compare_exchange_n(&cond->_counts, &c, c - CV_ONE_SIGNAL, false,
                                        __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
            return true;
    }
    return false;
}

/*
 * A waiter that timed out (or was cancelled) gives up, with the lock held
 * again.  If a notify counted it (it is eligible: the sequence moved since it
 * started waiting) and a wake-up is pending, it takes that wake-up and counts
 * as notified.  Otherwise it stops counting as waiting; when no waiting count
 * is left, its count was moved to the pending wake-ups by a notify running
 * without the lock, so it takes one of those instead.
 */
static inline bool cond_withdraw(conc_cond *cond, bool eligible)
{
    uint64_t c = __atomic_load_n(&cond->_counts, __ATOMIC_SEQ_CST);
    for (;;) {
        bool take = CV_SIGNALS(c) && (eligible || CV_WAITING(c) == 0);
        if (!take && CV_WAITING(c) == 0)
            return false;       /* cannot happen while the counts are sound */
        uint64_t n = take ? c - CV_ONE_SIGNAL : c - 1;
        if (__atomic_compare_exchange_n(&cond->_counts, &c, n, false,
                                        __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
            return take;
    }
}

/* The lock a condition waits with: a Lock, or the lock inside an RLock
 * (whose whole recursion depth is released while waiting). */
struct cv_lock {
    conc_lock *lock;
    bool recursive;
};

static inline struct conc__park *cond_park(conc_cond *cond)
{
    return (struct conc__park *)&cond->_park;
}

/* A pending wake-up the caller may take (the sequence moved since it
 * started waiting at `start`), taken. */
static inline bool cond_take(conc_cond *cond, uint32_t start)
{
    return __atomic_load_n(&cond->_seq, __ATOMIC_SEQ_CST) != start && cond_consume(cond);
}

/*
 * The waiting protocol.  _counts holds how many threads wait without a
 * wake-up (low half) and how many wake-ups are pending (high half); notify
 * moves up to n from the first to the second and bumps _seq.  A waiter may
 * only take a pending wake-up once _seq moved after it started waiting, so a
 * thread that starts waiting after a notify never takes the wake-up of one
 * that was already waiting.
 *
 * Sleeping: waiters park on the condition's spot (sys/park.h), counted
 * there first under the lock.  No lost wake-up: a waiter counts itself on
 * the spot (seq_cst) before it looks for a pending wake-up (seq_cst), and
 * notify makes its wake-ups pending and bumps _seq (seq_cst) before it
 * reads the spot's count: either the waiter finds the wake-up, or notify
 * finds the waiter and claims it.  The waiters notify claims were counted
 * before its bump, so they all started before it: each may take any of the
 * pending wake-ups, and whichever wakes first takes one.
 */
static int cond_wait_core(conc_cond *cond, const struct cv_lock *lk, int64_t deadline)
{
    if (!lock_mine(lk->lock))
        return -EPERM;
    struct conc__park *p = cond_park(cond);
    /* Under the lock: snapshot the sequence and count ourselves. */
    const uint32_t start = __atomic_load_n(&cond->_seq, __ATOMIC_SEQ_CST);
    __atomic_fetch_add(&cond->_counts, 1, __ATOMIC_SEQ_CST);
    uint32_t key = conc__park_prepare(p);
    uint32_t depth = 0;
    if (lk->recursive) {
        depth = lk->lock->_count;
        lk->lock->_count = 0;
    }
    lock_give(lk->lock);

    unsigned wf = wflags(cond->_flags);
    int rc = 0;
    bool notified = false;
    for (;;) {
        int r = conc__park_wait(p, key, deadline, wf, 0);
        if (cond_take(cond, start)) {
            notified = true;
            break;
        }
        if (r < 0) {
            rc = r;
            break;
        }
        key = conc__park_prepare(p);
        if (cond_take(cond, start)) {
            conc__park_cancel(p, key);
            notified = true;
            break;
        }
    }
    int taken = lock_retake(lk->lock);
    if (!notified) {
        bool eligible = __atomic_load_n(&cond->_seq, __ATOMIC_SEQ_CST) != start;
        notified = cond_withdraw(cond, eligible);
    }
    if (taken == -EDEADLK)
        return -EDEADLK;        /* a hub found the lock can never come back */
    if (lk->recursive)
        lk->lock->_count = depth;
    if (taken == -EOWNERDEAD)
        return -EOWNERDEAD;
    return notified ? 0 : rc;
}

static int cond_wait_for_core(conc_cond *cond, const struct cv_lock *lk,
                              conc_predicate pred, void *arg, int64_t deadline)
{
    if (!lock_mine(lk->lock))
        return -EPERM;
    while (!pred(arg)) {
        int r = cond_wait_core(cond, lk, deadline);
        if (r == -ETIMEDOUT)
            return pred(arg) ? 0 : -ETIMEDOUT;
        if (r < 0)
            return r;
    }
    return 0;
}

/* Condition and Barrier follow Python: a timeout of 0 is a wait that times
 * out (-ETIMEDOUT), so they use the deadline alone. */
static inline int timeout_deadline(double timeout, int64_t *deadline)
{
    bool poll;
    return conc__timeout_parse(timeout, deadline, &poll);
}

#define LK_OF_LOCK(l)  { (l), false }
#define LK_OF_RLOCK(l) { &(l)->_lock, true }

int conc_cond_wait_until(conc_cond *cond, conc_lock *lock, int64_t deadline)
{
    if (!cond || !lock)
        return -EINVAL;
    struct cv_lock lk = LK_OF_LOCK(lock);
    return cond_wait_core(cond, &lk, deadline);
}

int conc_cond_wait(conc_cond *cond, conc_lock *lock, double timeout)
{
    int64_t deadline;
    if (timeout_deadline(timeout, &deadline))
        return -EINVAL;
    return conc_cond_wait_until(cond, lock, deadline);
}

int conc_cond_wait_r_until(conc_cond *cond, conc_rlock *lock, int64_t deadline)
{
    if (!cond || !lock)
        return -EINVAL;
    struct cv_lock lk = LK_OF_RLOCK(lock);
    return cond_wait_core(cond, &lk, deadline);
}

int conc_cond_wait_r(conc_cond *cond, conc_rlock *lock, double timeout)
{
    int64_t deadline;
    if (timeout_deadline(timeout, &deadline))
        return -EINVAL;
    return conc_cond_wait_r_until(cond, lock, deadline);
}

int conc_cond_wait_for_until(conc_cond *cond, conc_lock *lock, conc_predicate pred,
                             void *arg, int64_t deadline)
{
    if (!cond || !lock || !pred)
        return -EINVAL;
    struct cv_lock lk = LK_OF_LOCK(lock);
    return cond_wait_for_core(cond, &lk, pred, arg, deadline);
}

int conc_cond_wait_for(conc_cond *cond, conc_lock *lock, conc_predicate pred,
                       void *arg, double timeout)
{
    int64_t deadline;
    if (timeout_deadline(timeout, &deadline))
        return -EINVAL;
    return conc_cond_wait_for_until(cond, lock, pred, arg, deadline);
}

int conc_cond_wait_for_r_until(conc_cond *cond, conc_rlock *lock, conc_predicate pred,
                               void *arg, int64_t deadline)
{
    if (!cond || !lock || !pred)
        return -EINVAL;
    struct cv_lock lk = LK_OF_RLOCK(lock);
    return cond_wait_for_core(cond, &lk, pred, arg, deadline);
}

int conc_cond_wait_for_r(conc_cond *cond, conc_rlock *lock, conc_predicate pred,
                         void *arg, double timeout)
{
    int64_t deadline;
    if (timeout_deadline(timeout, &deadline))
        return -EINVAL;
    return conc_cond_wait_for_r_until(cond, lock, pred, arg, deadline);
}

/* Deaths (shared): notify(n) moves n waiters to pending wake-ups and wakes
 * n sleepers; one killed before it takes its wake-up leaves it pending.
 * Any waiter that was waiting before that notify may take it (they are
 * interchangeable), and the bounded shared sleep (sys/wait.c) makes one
 * look within a second.  The Barrier is a Lock and a Condition: it inherits
 * both arguments. */
static int cond_notify(conc_cond *cond, uint32_t n)
{
    uint64_t c = __atomic_load_n(&cond->_counts, __ATOMIC_SEQ_CST);
    uint32_t k;
    do {
        k = CV_WAITING(c) < n ? CV_WAITING(c) : n;
        if (k == 0)
            return 0;
    } while (!__atomic_compare_exchange_n(&cond->_counts, &c,
                                          c - k + (uint64_t)k * CV_ONE_SIGNAL, false,
                                          __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
    /* Bump the sequence, then claim and wake k sleepers; when no waiter
     * is left without a wake-up, every sleeper (the spare ones look and
     * sleep again). */
    bool drained = CV_WAITING(c) == k;
    __atomic_fetch_add(&cond->_seq, 1, __ATOMIC_SEQ_CST);
    conc__park_wake(cond_park(cond), drained || k > INT_MAX ? INT_MAX : (int)k,
                    wflags(cond->_flags));
    return (int)(k > INT_MAX ? INT_MAX : k);
}

int conc_cond_notify(conc_cond *cond, unsigned n)
{
    if (unlikely(!cond))
        return -EINVAL;
    return cond_notify(cond, n);
}

int conc_cond_notify_all(conc_cond *cond)
{
    if (unlikely(!cond))
        return -EINVAL;
    return cond_notify(cond, UINT32_MAX);
}

/* ----------------------------------------------------------- Barrier */

enum { BR_FILLING = 0, BR_DRAINING = 1, BR_RESETTING = -1, BR_BROKEN = -2 };

int conc_barrier_init(conc_barrier *b, unsigned parties, unsigned flags)
{
    if (!b || parties == 0 || check_flags(flags, CONC_SYNC_SHARED))
        return -EINVAL;
    conc_lock_init(&b->_lock, flags);
    conc_cond_init(&b->_cond, flags);
    b->_parties = parties;
    b->_count = 0;
    b->_state = BR_FILLING;
    b->_flags = flags;
    return 0;
}

static void barrier_break(conc_barrier *b)
{
    st_relaxed(&b->_state, BR_BROKEN);
    conc_cond_notify_all(&b->_cond);
}

/* Takes the barrier's own lock.  A party of a shared barrier that died
 * holding it may have left the state half-updated: the barrier is broken
 * then, and this returns -EOWNERDEAD (the lock is held). */
static int barrier_lock(conc_barrier *b)
{
    int r = lock_retake(&b->_lock);
    if (r != -EOWNERDEAD)
        return r;               /* 0, or -EDEADLK (not held) */
    lock_mark_consistent(&b->_lock);
    barrier_break(b);
    return -EOWNERDEAD;
}

static int state_not_draining(void *arg)
{
    conc_barrier *b = arg;
    return b->_state != BR_DRAINING && b->_state != BR_RESETTING;
}

static int state_not_filling(void *arg)
{
    conc_barrier *b = arg;
    return b->_state != BR_FILLING;
}

static int barrier_wait(conc_barrier *b, int64_t deadline, int (*action)(void *), void *arg)
{
    if (!b)
        return -EINVAL;
    if (b->_parties == 0)
        return -EINVAL;
    int lr = barrier_lock(b);
    if (lr == -EDEADLK)
        return lr;
    if (lr) {
        conc_lock_release(&b->_lock);
        return -EPIPE;
    }
    /* Wait while the previous round drains or a reset is under way. */
    int r = conc_cond_wait_for_until(&b->_cond, &b->_lock, state_not_draining, b, deadline);
    if (r < 0) {
        if (r == -EOWNERDEAD) {
            lock_mark_consistent(&b->_lock);
            r = -EPIPE;
        }
        barrier_break(b);
        conc_lock_release(&b->_lock);
        return r;
    }
    if (b->_state < 0) {
        conc_lock_release(&b->_lock);
        return -EPIPE;
    }
    uint32_t index = b->_count;
    st_relaxed(&b->_count, index + 1);
    int rc = (int)index;
    if (index + 1 == b->_parties) {
        if (action && action(arg) != 0) {
            barrier_break(b);
            rc = -EPIPE;
        } else {
            st_relaxed(&b->_state, BR_DRAINING);
            conc_cond_notify_all(&b->_cond);
        }
    } else {
        r = conc_cond_wait_for_until(&b->_cond, &b->_lock, state_not_filling, b, deadline);
        if (r == -EOWNERDEAD) {
            lock_mark_consistent(&b->_lock);
            r = -EPIPE;
        }
        if (r < 0) {
            barrier_break(b);
            rc = r;
        } else if (b->_state < 0) {
            rc = -EPIPE;
        }
    }
    /* Leave; the last one out of a drained or reset round reopens it. */
    st_relaxed(&b->_count, b->_count - 1);
    if (b->_count == 0 && (b->_state == BR_DRAINING || b->_state == BR_RESETTING)) {
        st_relaxed(&b->_state, BR_FILLING);
        conc_cond_notify_all(&b->_cond);
    }
    conc_lock_release(&b->_lock);
    return rc;
}

int conc_barrier_wait_action_until(conc_barrier *b, int64_t deadline,
                                   int (*action)(void *), void *arg)
{
    return barrier_wait(b, deadline, action, arg);
}

int conc_barrier_wait_action(conc_barrier *b, double timeout,
                             int (*action)(void *), void *arg)
{
    int64_t deadline;
    if (timeout_deadline(timeout, &deadline))
        return -EINVAL;
    return barrier_wait(b, deadline, action, arg);
}

int conc_barrier_wait_until(conc_barrier *b, int64_t deadline)
{
    return barrier_wait(b, deadline, NULL, NULL);
}

int conc_barrier_wait(conc_barrier *b, double timeout)
{
    return conc_barrier_wait_action(b, timeout, NULL, NULL);
}

int conc_barrier_abort(conc_barrier *b)
{
    if (!b)
        return -EINVAL;
    if (barrier_lock(b) == -EDEADLK)
        return -EDEADLK;
    barrier_break(b);
    conc_lock_release(&b->_lock);
    return 0;
}

int conc_barrier_reset(conc_barrier *b)
{
    if (!b)
        return -EINVAL;
    if (barrier_lock(b) == -EDEADLK)
        return -EDEADLK;
    if (b->_count > 0) {
        if (b->_state == BR_FILLING || b->_state == BR_BROKEN)
            st_relaxed(&b->_state, BR_RESETTING);
    } else {
        st_relaxed(&b->_state, BR_FILLING);
    }
    conc_cond_notify_all(&b->_cond);
    conc_lock_release(&b->_lock);
    return 0;
}

bool conc_barrier_broken(const conc_barrier *b)
{
    return b && ld_relaxed(&b->_state) == BR_BROKEN;
}

unsigned conc_barrier_parties(const conc_barrier *b)
{
    return b ? b->_parties : 0;
}

unsigned conc_barrier_n_waiting(const conc_barrier *b)
{
    if (!b)
        return 0;
    return ld_relaxed(&b->_state) == BR_FILLING ? ld_relaxed(&b->_count) : 0;
}
