/* internal.h - helpers shared by the library's sources; not installed. */
#ifndef CONC_INTERNAL_H
#define CONC_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>
#include "conc/errors.h"
#include "conc/time.h"

#define CONC_HIDDEN __attribute__((visibility("hidden")))
#define likely(x)   __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

/* Constructor priorities: the order holds however the objects are linked
 * (a static archive links them in symbol order, not source order).  The
 * core (thread registry, wait layer) first, then the modules, and last the
 * forkserver's, which may turn the process into a server before main. */
#define CONC__CTOR_CORE   101
#define CONC__CTOR_MODULE 102
#define CONC__CTOR_LAST   103

/* Relaxed/acquire/release shorthands over the GCC atomic builtins, which work
 * on the plain integer fields of the public structs. */
#define ld_relaxed(p)    __atomic_load_n((p), __ATOMIC_RELAXED)
#define ld_acquire(p)    __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define st_relaxed(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define st_release(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

/* The calling thread's kernel id, cached (reset in a forked child). */
extern __thread pid_t conc__tid_cache __attribute__((tls_model("initial-exec")));
CONC_HIDDEN pid_t conc__tid_slow(void);
static inline pid_t conc__tid(void)
{
    pid_t t = conc__tid_cache;
    return likely(t) ? t : conc__tid_slow();
}

struct coro_thread;
/* The coroutine layer's per-thread words, in one block so that a switch
 * finds them through one thread-pointer offset. */
struct conc__coro_tls {
    struct coro_thread *thread; /* src/coro.c's state, NULL before the
                                   first coroutine call */
    struct conc_coro *current;  /* the running coroutine; without thread, a
                                   stand-in whose owner identity is 0 */
    uintptr_t fast;             /* thread, with bit 0 set (or more often
                                   than needed) while a dead coroutine's
                                   stack waits to be given back or the
                                   current coroutine's stack is unguarded:
                                   then its switches take the full path
                                   (src/coro.c) */
};
extern __thread struct conc__coro_tls conc__coro_tls __attribute__((tls_model("initial-exec")));
/* Who owns the locks the calling code takes (src/sync.c): 0 for a thread's
 * own stack (a plain thread, or a thread's main coroutine), else the running
 * coroutine's serial number, unique in the process: the first member of
 * the running coroutine (src/coro.c), so that a switch, which sets
 * conc__coro_tls.current anyway, keeps it current without a store of its
 * own. */
static inline uint64_t conc__owner_id(void)
{
    return *(const uint64_t *)(const void *)conc__coro_tls.current;
}

/* True when the calling code runs on a hub's shared stack (a greenlet
 * spawned with CONC_STACK_COPIED, src/coro.c): while it is parked its
 * stack's memory is another's, so no other thread may be handed pointers
 * into it across a wait. */
CONC_HIDDEN bool conc__coro_stack_copied(void);

/* writev(2) that never raises SIGPIPE in the calling thread: a write to a
 * pipe whose reader is gone fails with EPIPE (errno) instead (pipe.c). */
struct iovec;
CONC_HIDDEN ssize_t conc__writev_nosigpipe(int fd, const struct iovec *iov, int cnt);

/*
 * The one parser of the timeout argument of the public calls (docs/design.md,
 * "Time"), in libconc and in the libraries beside it (libconc_remote,
 * libconc_broker: it calls only libconc's exported conc_deadline).  Every
 * seconds form is its _until form behind these helpers:
 *
 *     int64_t deadline;
 *     bool poll;
 *     if (conc__timeout_parse(timeout, &deadline, &poll))
 *         return -EINVAL;
 *     return conc__timeout_code(poll, conc_x_until(x, deadline));
 *
 * A timeout of 0 is a poll: the deadline 0 (long passed: try once) and a
 * -ETIMEDOUT result reported as -EAGAIN.  Condition and Barrier, which
 * follow Python, take the deadline and leave out conc__timeout_code.
 */
enum conc__timeout_kind { CONC__TIMEOUT_FOREVER, CONC__TIMEOUT_POLL, CONC__TIMEOUT_TIMED };

/* What a timeout asks for, or -EINVAL (NaN, negative other than
 * CONC_FOREVER, -INFINITY).  +INFINITY is forever. */
static inline int conc__timeout_kind(double timeout)
{
    if (timeout == CONC_FOREVER || timeout == __builtin_inf())
        return CONC__TIMEOUT_FOREVER;
    if (timeout == 0)
        return CONC__TIMEOUT_POLL;
    return timeout > 0 ? CONC__TIMEOUT_TIMED : -EINVAL;
}

/* Sets *deadline and *poll from a timeout: 0, or -EINVAL. */
static inline int conc__timeout_parse(double timeout, int64_t *deadline, bool *poll)
{
    int k = conc__timeout_kind(timeout);
    *poll = k == CONC__TIMEOUT_POLL;
    if (k == CONC__TIMEOUT_FOREVER)
        *deadline = CONC_NO_DEADLINE;
    else if (k == CONC__TIMEOUT_POLL)
        *deadline = 0;
    else if (k < 0 || conc_deadline(timeout, deadline))
        return -EINVAL;
    return 0;
}

/* The result of a seconds form: a poll that found nothing is -EAGAIN. */
static inline long conc__timeout_code(bool poll, long r)
{
    return poll && r == -ETIMEDOUT ? -EAGAIN : r;
}

/*
 * Options structs that can grow (docs/design.md, "Arguments, results,
 * options") start with uint32_t size.  conc__opts_copy turns the caller's
 * struct into this version's: NULL gives all zero (the defaults), size 0
 * means the struct's first version (v1 bytes), any other size the first
 * size bytes; the fields the caller's struct does not cover are zero.
 * Entry points copy once and read only the copy.
 */
static inline void conc__opts_copy(void *dst, size_t dst_size, const void *src, size_t v1)
{
    memset(dst, 0, dst_size);
    if (!src)
        return;
    uint32_t size;
    memcpy(&size, src, sizeof size);
    size_t len = size ? size : v1;
    memcpy(dst, src, len < dst_size ? len : dst_size);
}
#define CONC__OPTS_COPY(dst, src, v1) conc__opts_copy((dst), sizeof *(dst), (src), (v1))
/* The size of a struct's first version: up to the end of its last field. */
#define CONC__OPTS_V1(type, last) (offsetof(type, last) + sizeof(((type *)0)->last))

/* Thread registry hooks for the process module: join the non-daemon
 * threads (what exit does first), and repair the registry in a child made
 * without fork() (a forkserver child), as the fork handler would. */
CONC_HIDDEN void conc__threads_join_nondaemon(void);
CONC_HIDDEN void conc__threads_after_fork(void);

#endif
