/*
 * test_pool_defaults.c - the worker count a pool gets when it is not
 * given one: Pool() and ThreadPool() take conc_process_cpu_count(), as
 * Python's take os.cpu_count(), and that many workers really run at once.
 */
#include <criterion/criterion.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "conc.h"

static int echo_bytes(const void *arg, size_t len, void **result, size_t *result_len)
{
    void *copy = malloc(len ? len : 1);
    if (!copy)
        return -ENOMEM;
    memcpy(copy, arg, len);
    *result = copy;
    *result_len = len;
    return 0;
}

/* Pool() and Pool(processes=0): one worker per CPU, and they serve. */
Test(pool_defaults, process_pool_has_one_worker_per_cpu, .timeout = 60)
{
    int cpus = conc_process_cpu_count();
    cr_assert_gt(cpus, 0);
    conc_pool *p;
    cr_assert_eq(conc_pool_new(&p, NULL), 0);
    cr_assert_eq(conc_pool_processes(p), cpus);
    void *out;
    size_t len;
    cr_assert_eq(conc_pool_apply(p, echo_bytes, "cpu", 3, &out, &len), 0);
    cr_assert_eq(len, 3);
    cr_assert_eq(memcmp(out, "cpu", 3), 0);
    free(out);
    conc_pool_free(p);

    conc_pool_opts o = CONC_POOL_OPTS_INIT;
    o.processes = 0;
    cr_assert_eq(conc_pool_new(&p, &o), 0);
    cr_assert_eq(conc_pool_processes(p), cpus);
    cr_assert_eq(conc_pool_close(p), 0);
    cr_assert_eq(conc_pool_join(p, 30.0), 0);
    conc_pool_free(p);
}

static conc_barrier all_started;

/* Returns only once every worker of the pool runs a task of its own. */
static int meet(void *arg, void **result)
{
    (void)arg;
    int r = conc_barrier_wait(&all_started, 30.0);
    *result = (void *)(intptr_t)(r >= 0);
    return r < 0 ? r : 0;
}

/* ThreadPool(): one thread per CPU, all of them running tasks at once (a
 * barrier of that many parties opens only then). */
Test(pool_defaults, thread_pool_has_one_thread_per_cpu_running_at_once, .timeout = 60)
{
    int cpus = conc_process_cpu_count();
    cr_assert_gt(cpus, 0);
    cr_assert_eq(conc_barrier_init(&all_started, (unsigned)cpus, 0), 0);
    conc_threadpool *p;
    cr_assert_eq(conc_threadpool_new(&p, NULL), 0);
    cr_assert_eq(conc_threadpool_threads(p), cpus);
    conc_pool_item *items = calloc((size_t)cpus, sizeof *items);
    cr_assert_not_null(items);
    conc_pool_task_opts o = CONC_POOL_TASK_OPTS_INIT;
    o.chunksize = 1;
    conc_pool_result *r;
    cr_assert_eq(conc_threadpool_map(p, meet, items, (size_t)cpus, &o, &r), 0);
    cr_assert_eq(conc_pool_result_count(r), (size_t)cpus);
    for (size_t i = 0; i < (size_t)cpus; i++) {
        void *v;
        cr_assert_eq(conc_pool_result_item(r, i, &v, NULL), 0);
        cr_assert_eq((intptr_t)v, 1, "task %zu passed the barrier", i);
    }
    conc_pool_result_free(r);
    free(items);
    cr_assert_eq(conc_threadpool_close(p), 0);
    cr_assert_eq(conc_threadpool_join(p, 30.0), 0);
    conc_threadpool_free(p);
}
