/*
 * conc/time.h - monotonic clock, timeouts and deadlines, sleeping.
 *
 * Blocking calls in conc take a timeout in seconds, like Python:
 *   CONC_FOREVER (-1)  block until the call can succeed
 *   0                  never block: try once, -EAGAIN if it cannot succeed now
 *   t > 0              give up with -ETIMEDOUT after t seconds
 * Any other negative value, or NaN, is -EINVAL.  +INFINITY means forever.
 *
 * Each blocking call also has an _until form taking an absolute deadline:
 * nanoseconds on CLOCK_MONOTONIC (conc_now()), or CONC_NO_DEADLINE.  Inside
 * the library everything is a deadline, so nested waits never stretch a
 * timeout.  A deadline that has already passed gives -ETIMEDOUT unless the
 * call can succeed at once.
 *
 * The exceptions follow Python: Condition waits and Barrier waits give
 * -ETIMEDOUT for a timeout of 0 (docs/time.md lists them).
 */
#ifndef CONC_TIME_H
#define CONC_TIME_H

#include <stdint.h>
#include "conc/errors.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Block without a time limit. */
#define CONC_FOREVER (-1.0)
/* The deadline that never comes. */
#define CONC_NO_DEADLINE INT64_MAX

/*
 * conc_now - the monotonic clock (CLOCK_MONOTONIC) in nanoseconds.
 * Never fails; the value only grows and is unaffected by wall-clock changes.
 */
CONC_API int64_t conc_now(void);

/*
 * conc_monotonic - the monotonic clock in seconds, like time.monotonic().
 */
CONC_API double conc_monotonic(void);

/*
 * conc_deadline - turn a timeout in seconds into an absolute deadline.
 *
 * timeout CONC_FOREVER (or +INFINITY) gives CONC_NO_DEADLINE; 0 gives now;
 * t > 0 gives now + t (saturating at CONC_NO_DEADLINE).
 * Returns 0 and stores the deadline in *out, or -EINVAL for a NaN timeout,
 * a negative timeout other than CONC_FOREVER, or a NULL out.
 */
CONC_API int conc_deadline(double timeout, int64_t *out);

/*
 * conc_remaining - seconds left until a deadline: 0 when it has passed,
 * CONC_FOREVER for CONC_NO_DEADLINE.
 */
CONC_API double conc_remaining(int64_t deadline);

/*
 * conc_sleep - suspend the caller for the given number of seconds
 * (time.sleep).  From a coroutine it parks only that coroutine.
 * Returns 0 after the full time (signals do not shorten it), -EINVAL for a
 * negative or NaN duration.  conc_sleep(0) yields the CPU once.
 */
CONC_API int conc_sleep(double seconds);

/*
 * conc_sleep_until - suspend the caller until the monotonic clock reaches
 * deadline (returns at once when it has passed).  Returns 0, or -EINVAL for
 * CONC_NO_DEADLINE (which would never return).
 */
CONC_API int conc_sleep_until(int64_t deadline);

#ifdef __cplusplus
}
#endif
#endif /* CONC_TIME_H */
