/*
 * conc/park.h - how long a blocked thread busy-waits before it sleeps.
 *
 * Every blocking call of conc (locks, semaphores, events, conditions,
 * barriers, thread and process queues, joins) sleeps and wakes through one
 * parking layer.  Before a plain thread sleeps in the kernel it busy-waits
 * for a short while, watching whether the peer it waits for hands over at
 * once: a sleeping thread costs its waker a system call and itself a
 * wake-up latency of several microseconds (tens on virtual machines), so
 * short hand-offs are far faster when caught by spinning.  The spin is
 * pure pausing for the first half of the budget, then gives the CPU away
 * (sched_yield) between looks.
 *
 * The budget is one setting for the whole process.  It is never taken from
 * the environment: a program that wants another one calls
 * conc_park_set_spin.  Whatever the budget, nobody spins in a process that
 * may run on one CPU only, nor in a coroutine run by a hub (it parks at
 * once and its thread runs the other coroutines).  There is no Python
 * counterpart (CPython blocks in the kernel at once).
 */
#ifndef CONC_PARK_H
#define CONC_PARK_H

#include <stdint.h>
#include "conc/errors.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The budget a process starts with, in nanoseconds (30 microseconds). */
#define CONC_PARK_SPIN_DEFAULT 30000
/* The largest budget conc_park_set_spin accepts (10 milliseconds). */
#define CONC_PARK_SPIN_MAX 10000000

/*
 * conc_park_set_spin - sets how long, in nanoseconds, a blocked thread
 * busy-waits before it sleeps, from the next wait of any thread on: 0
 * never spins (every wait that cannot succeed at once sleeps in the
 * kernel), CONC_PARK_SPIN_DEFAULT restores the default.  Waits that spin
 * at the time finish their spin under the budget they started with.
 * Correctness never depends on it: it trades CPU time for wake-up latency.
 * Thread-safe.  Returns 0, or -EINVAL when ns is negative or above
 * CONC_PARK_SPIN_MAX.
 */
CONC_API int conc_park_set_spin(int64_t ns);

/*
 * conc_park_spin - the budget in force, in nanoseconds (the value last set
 * by conc_park_set_spin, or CONC_PARK_SPIN_DEFAULT).
 */
CONC_API int64_t conc_park_spin(void);

#ifdef __cplusplus
}
#endif

#endif /* CONC_PARK_H */
