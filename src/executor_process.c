/*
 * executor_process.c - concurrent.futures.ProcessPoolExecutor on the
 * process Pool's task engine (conc/executor.h).
 */
#include <errno.h>

#include "executor.h"

int conc__executor_proc_new(conc_executor *ex, const conc_executor_opts *o)
{
    (void)ex;
    (void)o;
    return -ENOTSUP;
}

int conc__executor_proc_submit(conc_executor *ex, conc_executor_bytes_fn fn, const void *arg,
                               size_t len, conc_future **out)
{
    (void)ex;
    (void)fn;
    (void)arg;
    (void)len;
    (void)out;
    return -ENOTSUP;
}

void conc__executor_proc_shutdown(conc_executor *ex, bool cancel_futures)
{
    (void)ex;
    (void)cancel_futures;
}

int conc__executor_proc_join_until(conc_executor *ex, int64_t deadline)
{
    (void)ex;
    (void)deadline;
    return 0;
}

bool conc__executor_proc_in_callback(conc_executor *ex)
{
    (void)ex;
    return false;
}

void conc__executor_proc_free(conc_executor *ex)
{
    (void)ex;
}
