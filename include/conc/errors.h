/*
 * conc/errors.h - error codes and their names.
 *
 * A conc function that can fail returns an int (or an ssize_t): 0, or a
 * non-negative count/size/index, on success and a negative errno value on
 * failure.  Functions that return anything else (void, a bool, a size_t, a
 * pointer, a time) report no error code: each header says what they give
 * for a NULL or unusable handle.  These are all the codes conc returns, and
 * each carries the same meaning everywhere in the library:
 *
 *   -ETIMEDOUT   a positive timeout or a deadline passed before the call
 *                could succeed
 *   -EAGAIN      a non-blocking call (timeout 0) could not succeed at once;
 *                Python's queue.Empty / queue.Full and acquire(False) ==
 *                False; also the kernel's "out of threads or processes"
 *                (conc_thread_start, conc_process_start)
 *   -EPIPE       the object is closed, shut down, or broken (a broken
 *                Barrier, a peer that closed its end)
 *   -EOWNERDEAD  a process died holding a lock; the caller now owns it
 *   -ECANCELED   the calling coroutine was killed, or a future cancelled
 *   -ECHILD      the worker process running a call died (a future's
 *                exception; its detail says how the worker ended)
 *   -EINVAL      a bad argument (NULL handle, out of range, NaN or negative
 *                timeout, unknown flag) or an object not in a state the
 *                call accepts (not started)
 *   -EPERM       the caller does not own what it releases or waits on, or
 *                the handle does not allow it (a receive-only connection)
 *   -EDEADLK     the call would wait for itself (a thread joining itself)
 *   -EALREADY    started, set or done already
 *   -EBUSY       in use or not finished: cannot be freed, changed or read
 *                now
 *   -EOVERFLOW   a count would pass its bound (BoundedSemaphore, task_done)
 *   -EMSGSIZE    a message is larger than the object allows
 *   -EPROTO      memory shared with other processes holds what no correct
 *                process writes there (a broken or hostile peer)
 *   -ENOTSUP     the platform lacks what the call needs (a robust list conc
 *                can share, for a process-shared lock)
 *   -EBADF       a closed connection, or a descriptor that is not open
 *   -ENOENT      a named segment (or the program a child runs) is not there
 *   -EEXIST      a named segment to create exists already
 *   -EACCES      no permission on a named segment; a child's program is not
 *                the starter's; a wrong authkey (conc/listener.h)
 *   -ECONNABORTED  a peer broke the authkey handshake (conc/listener.h)
 *   -ENOSYS      the kernel or /proc lacks what starting a child needs
 *   -ENAMETOOLONG, -EIO   starting a forkserver child: a path too long for
 *                its socket, its channel failed
 *   -ENOMEM, -EMFILE, -ENFILE   out of memory or descriptors
 *
 * Sockets (conc/socket.h) also return the kernel's network codes
 * (-ECONNREFUSED, -ECONNRESET, -EADDRINUSE, -ENOTCONN, -ENOTSOCK...), and
 * the resolver calls (conc_socket_getaddrinfo, conc_socket_getnameinfo)
 * their own codes, CONC_EAI_* below: negative like the others but outside
 * the range of errno values, so CONC_IS_EAI tells them apart, and
 * conc_strerror and conc_errname name them.
 *
 * A call that passes on the result of a system call (opening, mapping or
 * truncating a segment, starting a child) may also return that call's code
 * (-ENOSPC, -EFAULT...); its header says so.
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
 * The resolver's errors (getaddrinfo(3)'s EAI_* codes, Python's
 * socket.gaierror): -(CONC_EAI_BASE + n), never an errno value.  The
 * resolver's EAI_MEMORY is returned as -ENOMEM and EAI_SYSTEM as the
 * errno it carries.
 */
#define CONC_EAI_BASE       5000
#define CONC_EAI_BADFLAGS   (-(CONC_EAI_BASE + 1))  /* bad flags */
#define CONC_EAI_NONAME     (-(CONC_EAI_BASE + 2))  /* name or service not known */
#define CONC_EAI_AGAIN      (-(CONC_EAI_BASE + 3))  /* temporary failure: try again */
#define CONC_EAI_FAIL       (-(CONC_EAI_BASE + 4))  /* non-recoverable failure */
#define CONC_EAI_NODATA     (-(CONC_EAI_BASE + 5))  /* the name has no address */
#define CONC_EAI_FAMILY     (-(CONC_EAI_BASE + 6))  /* family not supported */
#define CONC_EAI_SOCKTYPE   (-(CONC_EAI_BASE + 7))  /* socket type not supported */
#define CONC_EAI_SERVICE    (-(CONC_EAI_BASE + 8))  /* service not known for the type */
#define CONC_EAI_ADDRFAMILY (-(CONC_EAI_BASE + 9))  /* the name has no address of the family */
#define CONC_EAI_OVERFLOW   (-(CONC_EAI_BASE + 12)) /* a result buffer is too small */
#define CONC_EAI_OTHER      (-(CONC_EAI_BASE + 99)) /* any other resolver failure */

/* True when err (as a conc call returned it) is a CONC_EAI_* code. */
#define CONC_IS_EAI(err) ((err) <= -(CONC_EAI_BASE + 1) && (err) >= -(CONC_EAI_BASE + 99))

/*
 * conc_strerror - a short English description of an error code.
 *
 * Accepts the negative value a conc call returned (or the positive errno).
 * Returns a pointer to a static, immutable string; never NULL, thread-safe.
 * 0 gives "success"; an unknown code gives "unknown error".
 */
CONC_API const char *conc_strerror(int err);
/* (A CONC_EAI_* code, negative or positive, gives the resolver's message.) */

/*
 * conc_errname - the symbolic name of an error code ("ETIMEDOUT", "EPIPE"...).
 *
 * Accepts a negative or positive errno; returns a static string, never NULL
 * ("0" for success, "EAI_NONAME"... for a CONC_EAI_* code, "E?" for an
 * unknown code).
 */
CONC_API const char *conc_errname(int err);

#ifdef __cplusplus
}
#endif
#endif /* CONC_ERRORS_H */
