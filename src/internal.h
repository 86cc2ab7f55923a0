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

/* Converts a timeout (seconds) into a deadline; see conc_deadline. */
CONC_HIDDEN int conc__timeout_deadline(double timeout, int64_t *deadline);

#endif
