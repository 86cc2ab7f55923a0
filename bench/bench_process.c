/*
 * bench_process.c - conc's processes, shared locks and shared Values against
 * raw fork(), robust process-shared pthread mutexes and Python's
 * multiprocessing, in one run.
 *
 *   process_start_join       processes/s started (empty function) and joined:
 *                            conc-fork, conc-forkserver, fork (raw fork() +
 *                            _exit + waitpid), python-fork, python-forkserver
 *   shared_lock_uncontended  ns per acquire+release, one process, the lock in
 *                            MAP_SHARED memory: conc (CONC_SYNC_SHARED Lock),
 *                            pthread (PTHREAD_PROCESS_SHARED + ROBUST mutex),
 *                            python (multiprocessing.Lock)
 *   shared_lock_contended    ops/s, 2 processes each doing acquire; counter++;
 *                            release on a counter in shared memory
 *   value_incr_locked        ops/s, one process: with v.get_lock(): v.value += 1
 *                            on a Value('l'): conc_value vs multiprocessing.Value
 *
 * Every system's child processes are made the same way: the two workers of
 * shared_lock_contended are fork()ed children (only the lock differs), each
 * pinned to its own CPU (see bench_cpu; --no-pin turns that off) and released
 * together by a process-shared barrier.  The program starts and joins one
 * thread first, so glibc's fork() and locks take their multi-threaded paths
 * for every system alike, whatever conc does inside.
 *
 * Self-checks, reported as FAILED: process_start_join checks every child's
 * exit code (its function returns 42), shared_lock_contended the counter,
 * value_incr_locked the final value.  A lost wake-up shows as a hang, which
 * benchlib's watchdog turns into an error exit (the workers die with the
 * parent: PR_SET_PDEATHSIG).  Python runs as bench/peers/process_mp.py, once
 * per system (python-fork, python-forkserver, python).
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdalign.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conc.h"
#include "conc/process.h"
#include "conc/shm.h"
#include "benchlib.h"

static const bench_metric metrics[] = {
    { "process_start_join", "ops/s", "start a process running an empty function, join it" },
    { "shared_lock_uncontended", "ns", "acquire+release pair, one process, lock in MAP_SHARED memory" },
    { "shared_lock_contended", "ops/s", "2 processes: acquire; counter++; release" },
    { "value_incr_locked", "ops/s", "Value('l'), one process: with get_lock(): value += 1" },
};

/* A body that finds a wrong result says why on stderr and returns this. */
#define WRONG_RESULT (-EPROTO)

/* What the children of process_start_join exit with. */
#define CHILD_CODE 42

/* ----------------------------------------------------------- shared memory */

/* A lock and the counter it protects, on a cache line of their own. */
typedef struct conc_slot {
    alignas(64) conc_lock lock;
    long counter;
} conc_slot;

typedef struct pthread_slot {
    alignas(64) pthread_mutex_t mutex;
    long counter;
} pthread_slot;

/* Everything the processes of a measurement share (one MAP_SHARED page set,
 * mapped before any fork). */
typedef struct shared_area {
    conc_slot c;
    pthread_slot p;
    alignas(64) pthread_barrier_t start;
    int64_t t0[2], t1[2];
} shared_area;

static shared_area *area;

static void map_area(void)
{
    void *p = mmap(NULL, sizeof *area, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        bench_die("mmap(MAP_SHARED)", -errno);
    area = p;
}

/* (Re)initialise the robust, process-shared pthread mutex.  Nobody dies in
 * this benchmark, so EOWNERDEAD from pthread_mutex_lock is an error. */
static int init_robust_mutex(pthread_mutex_t *m)
{
    pthread_mutexattr_t a;
    int e = pthread_mutexattr_init(&a);
    if (!e)
        e = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    if (!e)
        e = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    if (!e)
        e = pthread_mutex_init(m, &a);
    pthread_mutexattr_destroy(&a);
    return -e;
}

/* ---------------------------------------------------- process_start_join */

static int empty_fn(const void *arg, size_t len)
{
    (void)arg;
    (void)len;
    return CHILD_CODE;
}

static int64_t start_conc(void *arg, long iters)
{
    const conc_process_opts *opts = arg;
    int64_t t0 = bench_now();
    for (long i = 0; i < iters; i++) {
        conc_process *p;
        int e = conc_process_new(&p, empty_fn, NULL, 0, opts);
        if (e < 0)
            return e;
        if ((e = conc_process_start(p)) < 0 || (e = conc_process_join(p, CONC_FOREVER)) < 0) {
            fprintf(stderr, "bench_process: process_start_join: %s: %s\n",
                    e == -ENOSYS ? "start method unavailable" : "start/join", strerror(-e));
            conc_process_free(p);
            return e;
        }
        int code = -1000;
        e = conc_process_exitcode(p, &code);
        conc_process_free(p);
        if (e != 0 || code != CHILD_CODE) {
            fprintf(stderr, "bench_process: process_start_join: exit code %d (error %d), expected %d\n",
                    code, e, CHILD_CODE);
            return WRONG_RESULT;
        }
    }
    return bench_now() - t0;
}

static int64_t start_fork(void *arg, long iters)
{
    (void)arg;
    int64_t t0 = bench_now();
    for (long i = 0; i < iters; i++) {
        pid_t pid = fork();
        if (pid < 0)
            return -errno;
        if (pid == 0)
            _exit(CHILD_CODE);
        int st;
        while (waitpid(pid, &st, 0) < 0)
            if (errno != EINTR)
                return -errno;
        if (!WIFEXITED(st) || WEXITSTATUS(st) != CHILD_CODE) {
            fprintf(stderr, "bench_process: process_start_join: raw child status %#x\n", st);
            return WRONG_RESULT;
        }
    }
    return bench_now() - t0;
}

/* ----------------------------------------------- shared_lock_uncontended */

static int64_t unc_conc(void *arg, long iters)
{
    (void)arg;
    conc_lock *l = &area->c.lock;
    int e = conc_lock_init(l, CONC_SYNC_SHARED);
    if (e < 0)
        return e;
    int64_t t0 = bench_now();
    for (long i = 0; i < iters; i++) {
        if (conc_lock_acquire(l, CONC_FOREVER) != 0 || conc_lock_release(l) != 0)
            return -EIO;
    }
    return bench_now() - t0;
}

static int64_t unc_pthread(void *arg, long iters)
{
    (void)arg;
    pthread_mutex_t *m = &area->p.mutex;
    int e = init_robust_mutex(m);
    if (e < 0)
        return e;
    int64_t t0 = bench_now();
    for (long i = 0; i < iters; i++) {
        if (pthread_mutex_lock(m) != 0 || pthread_mutex_unlock(m) != 0)
            return -EIO;
    }
    int64_t ns = bench_now() - t0;
    pthread_mutex_destroy(m);
    return ns;
}

/* ------------------------------------------------- shared_lock_contended */

/* One worker process's share of the operations. */
typedef void (*worker_fn)(long iters);

static void contended_conc_worker(long iters)
{
    conc_slot *s = &area->c;
    for (long i = 0; i < iters; i++) {
        int e = conc_lock_acquire(&s->lock, CONC_FOREVER);
        if (e != 0)
            bench_die("conc_lock_acquire", e);
        s->counter++;
        if ((e = conc_lock_release(&s->lock)) != 0)
            bench_die("conc_lock_release", e);
    }
}

static void contended_pthread_worker(long iters)
{
    pthread_slot *s = &area->p;
    for (long i = 0; i < iters; i++) {
        int e = pthread_mutex_lock(&s->mutex);
        if (e != 0)
            bench_die("pthread_mutex_lock", e);
        s->counter++;
        if ((e = pthread_mutex_unlock(&s->mutex)) != 0)
            bench_die("pthread_mutex_unlock", e);
    }
}

/* The body of worker `side`, a fork()ed child: pin, wait for the other
 * worker, time its share; it never returns. */
static void worker_main(worker_fn fn, int side, long iters, pid_t parent)
{
    bench_worker_enter(side, parent);
    pthread_barrier_wait(&area->start);
    area->t0[side] = bench_now();
    fn(iters);
    area->t1[side] = bench_now();
    _exit(0);
}

/* Run fn(iters) in two fork()ed worker processes released together; return
 * the nanoseconds from the first start to the last end. */
static int64_t run_pair(worker_fn fn, long iters)
{
    pthread_barrierattr_t ba;
    pthread_barrierattr_init(&ba);
    pthread_barrierattr_setpshared(&ba, PTHREAD_PROCESS_SHARED);
    int e = pthread_barrier_init(&area->start, &ba, 2);
    pthread_barrierattr_destroy(&ba);
    if (e)
        return -e;
    pid_t self = getpid(), pid[2] = { -1, -1 };
    fflush(stdout);
    fflush(stderr);
    for (int i = 0; i < 2; i++) {
        pid[i] = fork();
        if (pid[i] < 0) {
            e = -errno;
            if (i == 1) {
                kill(pid[0], SIGKILL);
                waitpid(pid[0], NULL, 0);
            }
            pthread_barrier_destroy(&area->start);
            return e;
        }
        if (pid[i] == 0)
            worker_main(fn, i, iters, self);
    }
    int64_t rc = 0;
    for (int i = 0; i < 2; i++) {
        int st;
        while (waitpid(pid[i], &st, 0) < 0)
            if (errno != EINTR)
                bench_die("waitpid", -errno);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "bench_process: worker %d ended with status %#x\n", i, st);
            rc = -EIO;
        }
    }
    pthread_barrier_destroy(&area->start);
    if (rc < 0)
        return rc;
    int64_t t0 = area->t0[0] < area->t0[1] ? area->t0[0] : area->t0[1];
    int64_t t1 = area->t1[0] > area->t1[1] ? area->t1[0] : area->t1[1];
    return t1 - t0;
}

/* Run a contended measurement of `iters` operations and check the counter. */
static int64_t contended_run(worker_fn fn, long *counter, long iters)
{
    long half = iters / 2 > 0 ? iters / 2 : 1;
    *counter = 0;
    int64_t ns = run_pair(fn, half);
    if (ns < 0)
        return ns;
    if (*counter != 2 * half) {
        fprintf(stderr, "bench_process: shared_lock_contended: counter %ld, expected %ld "
                "(mutual exclusion broken)\n", *counter, 2 * half);
        return WRONG_RESULT;
    }
    return (int64_t)((double)ns * (double)iters / (double)(2 * half));
}

static int64_t contended_conc(void *arg, long iters)
{
    (void)arg;
    int e = conc_lock_init(&area->c.lock, CONC_SYNC_SHARED);
    if (e < 0)
        return e;
    return contended_run(contended_conc_worker, &area->c.counter, iters);
}

static int64_t contended_pthread(void *arg, long iters)
{
    (void)arg;
    int e = init_robust_mutex(&area->p.mutex);
    if (e < 0)
        return e;
    int64_t ns = contended_run(contended_pthread_worker, &area->p.counter, iters);
    pthread_mutex_destroy(&area->p.mutex);
    return ns;
}

/* ----------------------------------------------------- value_incr_locked */

/* As Python's `with v.get_lock(): v.value += 1`: get_lock() and the value's
 * address are asked for on every increment. */
static int64_t value_conc(void *arg, long iters)
{
    (void)arg;
    conc_value *v;
    int e = conc_value_new(&v, 'l', NULL, 0);
    if (e < 0)
        return e;
    if (!conc_value_get_lock(v) || !conc_value_ptr(v) || conc_value_typecode(v) != 'l'
        || conc_value_size(v) != sizeof(long)) {
        fprintf(stderr, "bench_process: value_incr_locked: Value('l') has no lock or a wrong type/size\n");
        conc_value_free(v);
        return WRONG_RESULT;
    }
    int64_t t0 = bench_now();
    for (long i = 0; i < iters; i++) {
        conc_rlock *lock = conc_value_get_lock(v);
        if (conc_rlock_acquire(lock, CONC_FOREVER) != 0)
            goto fail;
        (*(long *)conc_value_ptr(v))++;
        if (conc_rlock_release(lock) != 0)
            goto fail;
    }
    int64_t ns = bench_now() - t0;
    long got = *(long *)conc_value_ptr(v);
    conc_value_free(v);
    if (got != iters) {
        fprintf(stderr, "bench_process: value_incr_locked: value %ld, expected %ld\n", got, iters);
        return WRONG_RESULT;
    }
    return ns;
fail:
    conc_value_free(v);
    return -EIO;
}

/* ------------------------------------------------------------------ main */

static const char *const py_start_metrics[] = { "process_start_join", NULL };
static const char *const py_mp_metrics[] = {
    "shared_lock_uncontended", "shared_lock_contended", "value_incr_locked", NULL,
};

/* The Python systems and the metrics each takes part in; the peer script
 * runs once per system, so a system that fails is reported as skipped for
 * its own metrics only. */
static const struct {
    const char *system;
    const char *const *metrics;
} py_systems[] = {
    { "python-fork", py_start_metrics },
    { "python-forkserver", py_start_metrics },
    { "python", py_mp_metrics },
};

static void run_python(void)
{
    /* Python is ~100x slower per operation: its script has its own, smaller
     * iteration counts; we pass the scale and the repetitions. */
    for (size_t s = 0; s < BENCH_ARRAY_LEN(py_systems); s++)
        bench_peer_run_metrics(py_systems[s].system, true, bench_python(),
                               bench_peer_path("process_mp.py"), (bench_reps() + 1) / 2,
                               bench_cpu_list(2), bench_scale() * (bench_quick() ? 0.05 : 1.0),
                               py_systems[s].metrics);
}

int main(int argc, char **argv)
{
    bench_init(argc, argv,
               "bench_process: conc Process/shared Lock/Value vs fork, robust pthread mutex, Python multiprocessing",
               metrics, BENCH_ARRAY_LEN(metrics));
    bench_become_multithreaded();
    map_area();

    static const conc_process_opts via_fork = { .method = CONC_START_FORK };
    static const conc_process_opts via_forkserver = { .method = CONC_START_FORKSERVER };
    const bench_case starts[] = {
        { "conc-fork", start_conc, (void *)&via_fork },
        { "conc-forkserver", start_conc, (void *)&via_forkserver },
        { "fork", start_fork, NULL },
    };
    bench_compare("process_start_join", starts, BENCH_ARRAY_LEN(starts),
                  bench_iters(20000, 2000), BENCH_MEDIAN);

    bench_compare_pthread("shared_lock_uncontended", unc_conc, unc_pthread,
                          bench_iters(20000000, 2000000), BENCH_BEST);

    bench_compare_pthread("shared_lock_contended", contended_conc, contended_pthread,
                          bench_iters(10000000, 1000000), BENCH_MEDIAN);

    static const bench_case value[] = {
        { "conc", value_conc, NULL },
    };
    bench_compare("value_incr_locked", value, BENCH_ARRAY_LEN(value),
                  bench_iters(20000000, 2000000), BENCH_BEST);

    run_python();
    return bench_report();
}
