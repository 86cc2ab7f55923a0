/* internal.h - helpers shared by the library's sources; not installed. */
#ifndef CONC_INTERNAL_H
#define CONC_INTERNAL_H

#include <stdint.h>
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

/* Who owns the locks the calling code takes (src/sync.c): 0 for a thread's
 * own stack (a plain thread, or a thread's main coroutine), else the running
 * coroutine's serial number, unique in the process.  Kept current by every
 * coroutine switch (src/coro.c). */
extern __thread uint64_t conc__owner_cache __attribute__((tls_model("initial-exec")));
static inline uint64_t conc__owner_id(void)
{
    return conc__owner_cache;
}

/* Converts a timeout (seconds) into a deadline; see conc_deadline. */
CONC_HIDDEN int conc__timeout_deadline(double timeout, int64_t *deadline);

/* Thread registry hooks for the process module: join the non-daemon
 * threads (what exit does first), and repair the registry in a child made
 * without fork() (a forkserver child), as the fork handler would. */
CONC_HIDDEN void conc__threads_join_nondaemon(void);
CONC_HIDDEN void conc__threads_after_fork(void);

#endif
