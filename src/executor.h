/*
 * executor.h - the inside of conc_executor (conc/executor.h), shared by the
 * thread executor (executor.c) and the process executor
 * (executor_process.c).
 */
#ifndef CONC_EXECUTOR_INTERNAL_H
#define CONC_EXECUTOR_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include "conc/executor.h"
#include "future.h"
#include "internal.h"

/* What a queued future's p_kind says its call is. */
enum { EX_CALL_PTR = 1, EX_CALL_BYTES = 2 };

struct conc__executor_proc;

struct conc_executor {
    conc_executor_kind kind;
    int max_workers;
    conc_executor_init_fn init;
    const void *initarg;
    size_t initarg_len;
    conc_drop_fn drop;
    void *drop_arg;

    pthread_mutex_t mu;
    conc_future *head, *tail;   /* queued calls in order, linked by p_next */
    size_t queued;              /* on that queue */
    size_t idle;                /* workers looking for work or asleep */
    size_t nthreads;            /* started (written under mu, read atomic) */
    /* Calls submitted since a worker last looked, newest first, linked by
     * p_next; bit 0 set once no submit may push any more (shutdown, a
     * failed initializer).  A submit pushes with one compare-and-swap,
     * without the mutex; a worker takes the whole inbox under mu and
     * appends it to the queue oldest first. */
    _Alignas(64) uintptr_t inbox;
    uint32_t work;              /* futex word: bumped for sleepers, shutdown */
    uint32_t sleepers;          /* workers asleep on work */
    uint32_t alive;             /* futex word: workers not yet ended */
    bool shutdown;
    pthread_t *threads;

    struct conc__executor_proc *proc;   /* process executors */
};

/* Makes a future for a call (the executor's drop function), with two
 * references: the caller's and the executor's. */
CONC_HIDDEN int conc__executor_future(conc_executor *ex, conc_future **out);

/* The process executor (executor_process.c). */
CONC_HIDDEN int conc__executor_proc_new(conc_executor *ex, const conc_executor_opts *o);
CONC_HIDDEN int conc__executor_proc_submit(conc_executor *ex, conc_executor_bytes_fn fn,
                                           const void *arg, size_t len, conc_future **out);
CONC_HIDDEN void conc__executor_proc_shutdown(conc_executor *ex, bool cancel_futures);
CONC_HIDDEN int conc__executor_proc_join_until(conc_executor *ex, int64_t deadline);
CONC_HIDDEN bool conc__executor_proc_in_callback(conc_executor *ex);
CONC_HIDDEN void conc__executor_proc_free(conc_executor *ex);

#endif
