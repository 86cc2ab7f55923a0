/* futex.h - thin wrappers over the futex system call. */
#ifndef CONC_SYS_FUTEX_H
#define CONC_SYS_FUTEX_H

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Sleeps while *word == expect, until the absolute CLOCK_MONOTONIC time abs
 * (NULL: no limit).  Returns 0 when woken, or -errno (EAGAIN, ETIMEDOUT,
 * EINTR). */
static inline int conc__futex_wait_abs(uint32_t *word, uint32_t expect,
                                       const struct timespec *abs, int private_)
{
    int op = FUTEX_WAIT_BITSET | (private_ ? FUTEX_PRIVATE_FLAG : 0);
    long r = syscall(SYS_futex, word, op, expect, abs, NULL, FUTEX_BITSET_MATCH_ANY);
    return r == 0 ? 0 : -errno;
}

/* Wakes up to n sleepers on word; returns how many woke, or -errno. */
static inline int conc__futex_wake(uint32_t *word, int n, int private_)
{
    int op = FUTEX_WAKE | (private_ ? FUTEX_PRIVATE_FLAG : 0);
    long r = syscall(SYS_futex, word, op, n, NULL, NULL, 0);
    return r >= 0 ? (int)r : -errno;
}

#endif
