/* wait.c - the single wait primitive (futex or coroutine hub). */
#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <time.h>
#include "sys/futex.h"
#include "sys/wait.h"

__thread const struct conc__wait_ops *conc__wait_ops
    __attribute__((tls_model("initial-exec")));

static inline void to_timespec(int64_t ns, struct timespec *ts)
{
    ts->tv_sec = ns / 1000000000;
    ts->tv_nsec = ns % 1000000000;
}

int conc__wait(uint32_t *word, uint32_t expect, int64_t deadline, unsigned flags)
{
    const struct conc__wait_ops *ops = conc__wait_ops;
    if (unlikely(ops != NULL))
        return ops->wait(word, expect, deadline, flags);
    struct timespec ts, *abs = NULL;
    if (deadline != CONC_NO_DEADLINE) {
        if (deadline < 0)
            deadline = 0;
        to_timespec(deadline, &ts);
        abs = &ts;
    }
    int r = conc__futex_wait_abs(word, expect, abs, !(flags & CONC__WAIT_SHARED));
    if (r == -EINTR)
        return 0;
    return r;
}

int conc__wake(uint32_t *word, int n, unsigned flags)
{
    int r = conc__futex_wake(word, n, !(flags & CONC__WAIT_SHARED));
    return r < 0 ? 0 : r;
}

int conc__sleep_until(int64_t deadline)
{
    const struct conc__wait_ops *ops = conc__wait_ops;
    if (unlikely(ops != NULL))
        return ops->sleep_until(deadline);
    struct timespec ts;
    if (deadline < 0)
        deadline = 0;
    to_timespec(deadline, &ts);
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
    return 0;
}

void conc__yield(void)
{
    const struct conc__wait_ops *ops = conc__wait_ops;
    if (unlikely(ops != NULL)) {
        ops->yield();
        return;
    }
    sched_yield();
}
