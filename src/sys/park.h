/*
 * park.h - the parking layer: how every primitive of conc sleeps and wakes.
 *
 * Two pieces, used by every blocking primitive:
 *
 * - The spin policy (struct conc__spin): how long a waiter busy-waits
 *   before it sleeps, how often it looks, when it starts giving the CPU
 *   away.  One budget for the whole library, tuned at run time with
 *   conc_park_set_spin (conc/park.h).  Spinning is tried only by a plain
 *   thread of a process with several usable CPUs: a coroutine parks at once
 *   and lets its hub run the others.
 *
 * - The parking spot (struct conc__park), an eventcount: one 64-bit word
 *   whose low half counts the sleepers and whose high half is the futex
 *   word they sleep on.  A waiter counts itself and learns the sequence in
 *   one step (conc__park_prepare), checks its condition, and sleeps while
 *   the sequence has not moved (conc__park_wait); a waker, after the change
 *   that may let sleepers go on, claims up to n sleepers by taking them off
 *   the count and bumping the sequence in one step, then wakes them
 *   (conc__park_wake).  The sleep itself goes through conc__wait, whose
 *   backends are the futex (threads) and a coroutine hub (coroutines), so a
 *   spot is shared by threads and coroutines alike, and by processes when
 *   it lives in shared memory (CONC__WAIT_SHARED).
 *
 * No lost wake-up, once for every user: the waiter's count (a seq_cst
 * read-modify-write) comes before its check of the condition (seq_cst), and
 * the waker's change of the condition (seq_cst, or followed by
 * conc__full_fence) comes before its read of the count (seq_cst).  Of two
 * such pairs one sees the other: either the waiter sees the change and does
 * not sleep, or the waker sees the count, bumps the sequence, and the
 * waiter's futex wait (which compares the sequence with the key it was
 * given) either finds it moved or is woken by the wake that follows.
 *
 * Claiming: a woken sleeper's wake-up takes microseconds; later wakers find
 * it off the count already and spend no system call on it.  A sleeper that
 * leaves without being claimed (timeout, kill, a condition it found true)
 * takes itself off the count only when the sequence still reads its key, in
 * the same step as that check: when it moved, a waker claimed somebody
 * since and the leaver counts that claim as its own, which at worst leaves
 * the count one too high (a later waker wakes nobody), never too low (a
 * sleeper nobody would wake).  A claimed sleeper that leaves without taking
 * what it was woken for passes the wake-up on (the caller's job: see each
 * user).
 *
 * Who is woken: the claimed sleepers are the oldest ones (a sleeper that
 * counts itself after a claim sleeps with the newer key, and one that
 * reaches the futex with an older key after the bump does not sleep), and
 * each backend wakes its sleepers oldest first (the kernel's futex queue
 * for threads of one scheduling class; the hub's table for coroutines).
 * A claim of k wakes up to k in each backend (CONC__WAKE_EACH), since a
 * backend cannot tell which of its sleepers were claimed: a newer sleeper
 * woken by mistake finds its key current, re-checks and sleeps again.
 */
#ifndef CONC_SYS_PARK_H
#define CONC_SYS_PARK_H

#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "sys/wait.h"

/* ---------------------------------------------------------- spin policy */

/* The spin budget in nanoseconds (conc_park_set_spin); 0: never spin. */
extern int64_t conc__park_spin_ns;

/* Pure pausing lasts the first half of the budget; later looks give the
 * CPU away (sched_yield) so that a peer on the same CPU can run.  (The Lock
 * and the queues never yielded within their spin before the policy was
 * one; a hand-over takes a few microseconds, and each yield is a system
 * call.) */

struct conc__spin {
    int64_t now;            /* the clock at the last look at it */
    int64_t end;            /* the budget's end (or the deadline) */
    int64_t pure_end;       /* pure pausing until then */
    unsigned pauses;        /* since the clock was last read */
};

/*
 * conc__spin_begin - starts a spin that ends when the budget is spent or at
 * deadline, whichever comes first.  False when the caller must not spin: a
 * coroutine, a process with one usable CPU, a budget of 0, a deadline
 * already passed.
 */
static inline bool conc__spin_begin(struct conc__spin *s, int64_t deadline)
{
    int64_t budget = __atomic_load_n(&conc__park_spin_ns, __ATOMIC_RELAXED);
    if (budget <= 0 || deadline <= 0 || !conc__may_spin())
        return false;
    s->now = conc_now();
    s->end = s->now + budget;
    if (deadline < s->end)
        s->end = deadline;
    s->pure_end = s->now + budget / 2;
    s->pauses = 0;
    return s->now < s->end;
}

/*
 * conc__spin_step - one step of the spin: `pauses` pause instructions (a
 * caller that backs off passes more), then, every 8 pauses or so, a look
 * at the clock (s->now), and past the pure phase a sched_yield.  Returns
 * false once the spin is over: the caller stops spinning and sleeps.
 */
static inline bool conc__spin_step(struct conc__spin *s, unsigned pauses)
{
    for (unsigned i = 0; i < pauses; i++)
        conc__spin_pause();
    s->pauses += pauses;
    if (s->pauses < 8)
        return true;
    s->pauses = 0;
    s->now = conc_now();
    if (s->now >= s->end)
        return false;
    if (s->now >= s->pure_end)
        sched_yield();
    return true;
}

/* ------------------------------------------------------ parking spot */

struct conc__park {
    union {
        uint64_t word;      /* every read-modify-write goes through this */
        struct {            /* the halves as the uint32_t objects they are,
                               so the futex (and a hub's 32-bit load) reach a
                               real uint32_t */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
            uint32_t count, seq;
#else
            uint32_t seq, count;
#endif
        } half;
    };
};

_Static_assert(sizeof(struct conc__park) == sizeof(uint64_t), "one word");

#define CONC__PARK_ONE ((uint64_t)1)
#define CONC__PARK_SEQ ((uint64_t)1 << 32)

static inline uint32_t conc__park_seq_of(uint64_t v)
{
    return (uint32_t)(v >> 32);
}

/* The sequence now (a waiter watching whether it was claimed). */
static inline uint32_t conc__park_seq(struct conc__park *p)
{
    return conc__park_seq_of(__atomic_load_n(&p->word, __ATOMIC_ACQUIRE));
}

/*
 * conc__park_prepare - counts the caller as a sleeper of p and returns its
 * key.  The caller then checks its condition, and either sleeps with
 * conc__park_wait or leaves with conc__park_cancel.
 */
static inline uint32_t conc__park_prepare(struct conc__park *p)
{
    return conc__park_seq_of(__atomic_fetch_add(&p->word, CONC__PARK_ONE, __ATOMIC_SEQ_CST));
}

/*
 * conc__park_cancel - a counted caller leaves without sleeping (or after
 * sleeping): off the count, unless a waker claimed a sleeper since it
 * counted itself (see the top of this file).
 */
static inline void conc__park_cancel(struct conc__park *p, uint32_t key)
{
    uint64_t v = __atomic_load_n(&p->word, __ATOMIC_RELAXED);
    while (conc__park_seq_of(v) == key &&
           !__atomic_compare_exchange_n(&p->word, &v, v - CONC__PARK_ONE, false,
                                        __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
        ;
}

/* Flags of conc__park_wait, beside CONC__WAIT_SHARED and CONC__WAIT_ONE (a
 * shared spot only one thread at a time sleeps on: its sleep is not cut in
 * slices, see sys/wait.h). */
#define CONC__PARK_NOSPIN 0x100u    /* sleep at once (the caller spun) */

/*
 * conc__park_wait - a counted caller sleeps until a waker claims it or
 * deadline: spins first (the policy; looking at the sequence at most every
 * look_ns nanoseconds, 0: at every look of the clock), then sleeps on the
 * sequence.  Leaves the caller uncounted (conc__park_cancel).  Returns 1
 * when claimed, 0 when not (a spurious wake-up: re-check), -ETIMEDOUT,
 * -ECANCELED (a killed coroutine), -EDEADLK (a hub's certain deadlock).
 */
CONC_HIDDEN int conc__park_sleep(struct conc__park *p, uint32_t key, int64_t deadline,
                                 unsigned flags, uint32_t look_ns);

static inline int conc__park_wait(struct conc__park *p, uint32_t key, int64_t deadline,
                                  unsigned flags, uint32_t look_ns)
{
    /* A coroutine never spins (conc__may_spin): it goes straight to its
     * hub's wait, with no call in between.  Every call level between a
     * blocking call and the switch costs a mispredicted return when the
     * coroutine resumes (the return stack holds the other context's calls),
     * so this is worth inlining; threads and shared spots take the rest of
     * conc__park_sleep. */
    const struct conc__wait_ops *ops = conc__wait_ops;
    if (ops != NULL && !(flags & CONC__WAIT_SHARED)) {
        int r = ops->wait(&p->half.seq, key, deadline, 0);
        if (conc__park_seq(p) != key)
            return r < 0 && r != -EAGAIN ? r : 1;
        conc__park_cancel(p, key);
        return r == -EAGAIN ? 0 : r;
    }
    return conc__park_sleep(p, key, deadline, flags, look_ns);
}

/*
 * conc__park_wake - claims up to n sleepers of p (INT_MAX: all) and wakes
 * them.  The caller's change that may let them go on is seq_cst, or
 * followed by conc__full_fence.  Returns how many were claimed.
 * Async-signal-safe (atomics and conc__wake).
 */
static inline int conc__park_wake(struct conc__park *p, int n, unsigned flags)
{
    uint64_t v = __atomic_load_n(&p->word, __ATOMIC_SEQ_CST), next;
    uint32_t k;
    do {
        uint32_t count = (uint32_t)v;
        if (likely(count == 0))
            return 0;
        k = n < 0 || (uint32_t)n >= count ? count : (uint32_t)n;
        next = v - k + CONC__PARK_SEQ;
    } while (!__atomic_compare_exchange_n(&p->word, &v, next, false, __ATOMIC_SEQ_CST,
                                          __ATOMIC_SEQ_CST));
    conc__wake(&p->half.seq, k > INT_MAX ? INT_MAX : (int)k,
               (flags & CONC__WAIT_SHARED) | CONC__WAKE_EACH);
    return (int)k;
}

#endif
