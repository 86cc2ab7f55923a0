/*
 * conc/errors.h - error codes and their names.
 *
 * A conc function that can fail returns an int (or an ssize_t): 0, or a
 * non-negative count/size/index, on success and a negative errno value on
 * failure.  Functions that return anything else (void, a bool, a size_t, a
 * pointer, a time) report no error code: each header says what they give
 * for a NULL or unusable handle.  The codes carry the same meaning
 * everywhere in the library:
 *
 *   -ETIMEDOUT   a timeout or deadline passed before the call could succeed
 *   -EAGAIN      a non-blocking call (timeout 0) could not succeed at once;
 *                Python's queue.Empty / queue.Full and acquire(False) == False
 *   -EPIPE       the object is closed, shut down, or broken (a broken Barrier)
 *   -EOWNERDEAD  a process died holding a lock; the caller now owns it
 *   -ECANCELED   a coroutine or future was cancelled
 *   -EINVAL      a bad argument (NULL handle, negative timeout, zero parties...)
 *   -EPERM       the caller may not do this (release a lock it does not hold)
 *   -EOVERFLOW   a count would exceed its bound (BoundedSemaphore over-release)
 *   -EDEADLK     the call would wait for itself (a thread joining itself)
 *   -ENOMEM      memory could not be allocated
 *   -EPROTO      memory shared with other processes holds what no correct
 *                process writes there (a broken or hostile peer)
 *   -ENOTSUP     the platform lacks what the call needs (a robust list conc
 *                can share, for a process-shared lock)
 *
 * No conc function prints, aborts or exits on bad input.
 */
#ifndef CONC_ERRORS_H
#define CONC_ERRORS_H

#include <errno.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(CONC_BUILDING)
#define CONC_API __attribute__((visibility("default")))
#else
#define CONC_API
#endif

/*
 * conc_strerror - a short English description of an error code.
 *
 * Accepts the negative value a conc call returned (or the positive errno).
 * Returns a pointer to a static, immutable string; never NULL, thread-safe.
 * 0 gives "success"; an unknown code gives "unknown error".
 */
CONC_API const char *conc_strerror(int err);

/*
 * conc_errname - the symbolic name of an error code ("ETIMEDOUT", "EPIPE"...).
 *
 * Accepts a negative or positive errno; returns a static string, never NULL
 * ("0" for success, "E?" for an unknown code).
 */
CONC_API const char *conc_errname(int err);

#ifdef __cplusplus
}
#endif
#endif /* CONC_ERRORS_H */
