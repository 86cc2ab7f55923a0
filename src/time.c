/* time.c - the monotonic clock, deadlines and sleeping. */
#include <math.h>
#include <time.h>
#include "internal.h"
#include "sys/wait.h"

int64_t conc_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

double conc_monotonic(void)
{
    return (double)conc_now() / 1e9;
}

int conc_deadline(double timeout, int64_t *out)
{
    if (!out || isnan(timeout))
        return -EINVAL;
    if (timeout == CONC_FOREVER || isinf(timeout)) {
        if (timeout < 0 && timeout != CONC_FOREVER)
            return -EINVAL;
        *out = CONC_NO_DEADLINE;
        return 0;
    }
    if (timeout < 0)
        return -EINVAL;
    int64_t now = conc_now();
    double ns = timeout * 1e9;
    if (ns >= (double)(CONC_NO_DEADLINE - now))
        *out = CONC_NO_DEADLINE;
    else
        *out = now + (int64_t)ns;
    return 0;
}

double conc_remaining(int64_t deadline)
{
    if (deadline == CONC_NO_DEADLINE)
        return CONC_FOREVER;
    int64_t now = conc_now();
    return deadline > now ? (double)(deadline - now) / 1e9 : 0.0;
}

int conc_sleep(double seconds)
{
    if (isnan(seconds) || seconds < 0)
        return -EINVAL;
    if (seconds == 0) {
        conc__yield();
        return 0;
    }
    int64_t deadline;
    int rc = conc_deadline(seconds, &deadline);
    if (rc)
        return rc;
    return conc_sleep_until(deadline);
}

int conc_sleep_until(int64_t deadline)
{
    if (deadline == CONC_NO_DEADLINE)
        return -EINVAL;
    return conc__sleep_until(deadline);
}
