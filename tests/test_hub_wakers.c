/*
 * test_hub_wakers.c - who may end a wait made in a thread that has a hub:
 * a thread that conc does not know (made with pthread_create), a signal
 * handler and another process each end the main coroutine's wait, which
 * blocks like a thread's until they do (-EDEADLK only when it is certain:
 * tests/test_hub.c); and
 * releasing a semaphore from a signal handler is safe while coroutines are
 * parked on it, whatever the interrupted thread was doing in conc.
 *
 * A peer that must act only once the main thread sleeps waits until its
 * state in /proc is 'S' (never a fixed pause).  Criterion runs every test in
 * its own process.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "conc.h"
#include "support/hub_dump.h"

#include "support/fork_sanitizers.h"

#define GUARD_NS (30 * 1000000000LL)

/* The state letter of thread tid of process pid ('S', 'R'...), or 0. */
static char task_state(pid_t pid, pid_t tid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/task/%d/stat", (int)pid, (int)tid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    return p && p[1] == ' ' ? p[2] : 0;
}

/* Waits until thread tid of pid sleeps; false after the hang guard. */
static bool wait_asleep(pid_t pid, pid_t tid)
{
    int64_t end = conc_now() + GUARD_NS;
    while (task_state(pid, tid) != 'S') {
        if (conc_now() > end)
            return false;
        usleep(200);
    }
    return true;
}

static void *nothing(void *arg)
{
    return arg;
}

/* Gives the calling thread a hub (one greenlet spawned and run). */
static void make_hub(void)
{
    conc_greenlet *g;
    cr_assert_eq(conc_greenlet_spawn(&g, nothing, NULL, NULL), 0);
    cr_assert_eq(conc_hub_run(), 0);
    conc_greenlet_free(g);
}

/* ----------------------------------------------- a thread conc does not know */

struct foreign {
    pid_t tid;                  /* the thread to watch */
    atomic_int armed;           /* the watched thread is about to wait */
    conc_event *ev;
    bool asleep;
};

static void *foreign_setter(void *arg)
{
    struct foreign *f = arg;
    while (!atomic_load(&f->armed))
        usleep(100);
    f->asleep = wait_asleep(getpid(), f->tid);
    conc_event_set(f->ev);
    return NULL;
}

Test(wakers, foreign_thread_ends_main_wait, .timeout = 60)
{
    make_hub();
    conc_event ev = CONC_EVENT_INIT;
    struct foreign f = { .tid = (pid_t)syscall(SYS_gettid), .ev = &ev };
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, foreign_setter, &f), 0);
    atomic_store(&f.armed, 1);
    cr_assert_eq(conc_event_wait(&ev, CONC_FOREVER), 0);
    pthread_join(t, NULL);
    cr_assert(f.asleep, "the main thread never slept in its wait");
    cr_assert_eq(conc_hub_free(), 0);
}

static void *wait_event(void *arg)
{
    return (void *)(intptr_t)conc_event_wait(arg, CONC_FOREVER);
}

Test(wakers, foreign_thread_ends_hub_run, .timeout = 60)
{
    conc_event ev = CONC_EVENT_INIT;
    conc_greenlet *g;
    cr_assert_eq(conc_greenlet_spawn(&g, wait_event, &ev, NULL), 0);
    struct foreign f = { .tid = (pid_t)syscall(SYS_gettid), .ev = &ev };
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, foreign_setter, &f), 0);
    atomic_store(&f.armed, 1);
    cr_assert_eq(conc_hub_run(), 0);
    void *r;
    cr_assert_eq(conc_greenlet_result(g, &r), 0);
    cr_assert_eq((intptr_t)r, 0);
    pthread_join(t, NULL);
    cr_assert(f.asleep);
    conc_greenlet_free(g);
    cr_assert_eq(conc_hub_free(), 0);
}

/* ----------------------------------------------------------- a signal handler */

static conc_sem sig_sem = CONC_SEM_INIT(0);
static atomic_long handled;

static void release_handler(int sig)
{
    (void)sig;
    int e = errno;
    if (conc_sem_release(&sig_sem, 1) == 0)
        atomic_fetch_add(&handled, 1);
    errno = e;
}

static void install(int sig, void (*fn)(int))
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = fn;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    cr_assert_eq(sigaction(sig, &sa, NULL), 0);
}

struct alarm_arm {
    pid_t tid;
    atomic_int armed;
    bool asleep;
    int rc;
};

/* Arms a one-shot timer that sends SIGALRM to the watched thread, once it
 * sleeps. */
static void *arm_timer(void *arg)
{
    struct alarm_arm *a = arg;
    while (!atomic_load(&a->armed))
        usleep(100);
    a->asleep = wait_asleep(getpid(), a->tid);
    struct sigevent sev;
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = SIGALRM;
    sev._sigev_un._tid = a->tid;
    timer_t tm;
    a->rc = timer_create(CLOCK_MONOTONIC, &sev, &tm);
    if (a->rc == 0) {
        struct itimerspec its = { .it_value = { .tv_nsec = 1000000 } };
        a->rc = timer_settime(tm, 0, &its, NULL);
    }
    return NULL;
}

Test(wakers, signal_handler_ends_main_wait, .timeout = 60)
{
    install(SIGALRM, release_handler);
    make_hub();
    struct alarm_arm a = { .tid = (pid_t)syscall(SYS_gettid) };
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, arm_timer, &a), 0);
    atomic_store(&a.armed, 1);
    cr_assert_eq(conc_sem_acquire(&sig_sem, CONC_FOREVER), 0);
    pthread_join(t, NULL);
    cr_assert_eq(a.rc, 0);
    cr_assert(a.asleep);
    cr_assert_eq(atomic_load(&handled), 1);
    cr_assert_eq(conc_sem_value(&sig_sem), 0);
    cr_assert_eq(conc_hub_free(), 0);
}

/* ----------------------------------------------------------- another process */

Test(wakers, other_process_ends_main_wait, .timeout = 60)
{
    conc_sem *sem = mmap(NULL, sizeof *sem, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                         -1, 0);
    cr_assert_neq(sem, MAP_FAILED);
    cr_assert_eq(conc_sem_init(sem, 0, CONC_SYNC_SHARED), 0);
    make_hub();
    pid_t parent = getpid(), tid = (pid_t)syscall(SYS_gettid);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        bool asleep = wait_asleep(parent, tid);
        conc_sem_release(sem, 1);
        _exit(asleep ? 0 : 3);
    }
    cr_assert_eq(conc_sem_acquire(sem, CONC_FOREVER), 0);
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %d", st);
    cr_assert_eq(conc_hub_free(), 0);
    munmap(sem, sizeof *sem);
}

/* ------------------------------------------------------------ no deadlock */

/* A greenlet that waits on an event makes the main coroutine's join an
 * ordinary wait (any thread, handler or process could set it): it ends
 * with the timeout, not with -EDEADLK. */
Test(wakers, wait_that_others_can_end_is_no_deadlock, .timeout = 60)
{
    conc_event ev = CONC_EVENT_INIT;
    conc_greenlet *g;
    cr_assert_eq(conc_greenlet_spawn(&g, wait_event, &ev, NULL), 0);
    cr_assert_eq(conc_greenlet_join(g, 0.05), -ETIMEDOUT);
    cr_assert_eq(conc_event_set(&ev), 0);
    cr_assert_eq(conc_greenlet_join(g, CONC_FOREVER), 0);
    conc_greenlet_free(g);
    cr_assert_eq(conc_hub_free(), 0);
}

/* --------------------------------------------- releases from signal handlers */

/* Releases made by signal handlers before the release loop stops, and the
 * period of the timer whose signal releases (longer where handlers are
 * slow, so that the interrupted thread still gets on). */
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define HANDLED 2000
#define TICK_NS 100000
#else
#define HANDLED 20000
#define TICK_NS 20000
#endif
#define CONSUMERS 4

static conc_sem rel_sem = CONC_SEM_INIT(0);
static atomic_long consumed, released, reclaimed;
static atomic_int stop, enough, loop_done;
/* quiet: handlers release no more (a signal generated before the timer
 * was deleted may still be delivered); in_handler: handlers under way. */
static atomic_int quiet, in_handler;

static void rel_handler(int sig)
{
    (void)sig;
    int e = errno;
    atomic_fetch_add(&in_handler, 1);
    if (!atomic_load(&quiet) && conc_sem_release(&rel_sem, 1) == 0)
        atomic_fetch_add(&handled, 1);
    atomic_fetch_sub(&in_handler, 1);
    errno = e;
}

static void *consume(void *arg)
{
    (void)arg;
    for (;;) {
        if (conc_sem_acquire(&rel_sem, CONC_FOREVER) != 0)
            return (void *)1;
        if (atomic_load(&stop))
            return NULL;
        atomic_fetch_add(&consumed, 1);
    }
}

/* Releases until told to stop, each time taking the token back when no
 * consumer was quicker: the consumers stay parked (counted as waiters), so
 * that every release goes through the wake-up of parked coroutines.
 * yield: let the other coroutines of the hub run between rounds. */
static void release_loop(bool yield)
{
    while (!atomic_load(&enough)) {
        cr_assert_eq(conc_sem_release(&rel_sem, 1), 0);
        atomic_fetch_add(&released, 1);
        if (conc_sem_acquire(&rel_sem, 0) == 0)
            atomic_fetch_add(&reclaimed, 1);
        if (yield)
            conc_sleep(0);
    }
    atomic_store(&loop_done, 1);
}

static atomic_int releaser_tid;

static void *releaser_thread(void *arg)
{
    (void)arg;
    atomic_store(&releaser_tid, (int)syscall(SYS_gettid));
    release_loop(false);
    return NULL;
}

static void *releaser_greenlet(void *arg)
{
    (void)arg;
    release_loop(true);
    return NULL;
}

struct hub_thread {
    bool with_releaser;         /* a greenlet of this hub releases too */
    atomic_int tid;             /* set once its greenlets are spawned */
    int rc;
};

static void *hub_thread(void *arg)
{
    struct hub_thread *h = arg;
    conc_greenlet *g[CONSUMERS + 1];
    for (int i = 0; i < CONSUMERS; i++)
        if (conc_greenlet_spawn(&g[i], consume, NULL, NULL) != 0)
            abort();
    int n = CONSUMERS;
    if (h->with_releaser && conc_greenlet_spawn(&g[n++], releaser_greenlet, NULL, NULL) != 0)
        abort();
    atomic_store(&h->tid, (int)syscall(SYS_gettid));
    h->rc = conc_hub_run();
    for (int i = 0; i < n; i++) {
        void *r = NULL;
        if (conc_greenlet_result(g[i], &r) != 0 || r != NULL)
            h->rc = -EPROTO;
        conc_greenlet_free(g[i]);
    }
    if (conc_hub_free() != 0)
        h->rc = -EBUSY;
    return NULL;
}

/* The hub's thread is a conc thread, so that no older rule about threads
 * conc does not know of mixes in. */
static void start_hub_thread(conc_thread **t, struct hub_thread *h)
{
    cr_assert_eq(conc_thread_new(t, hub_thread, h, NULL), 0);
    cr_assert_eq(conc_thread_start(*t), 0);
    while (!atomic_load(&h->tid))
        usleep(100);
}

/* A timer sends SIGUSR1 to thread tid every TICK_NS (so the handler
 * interrupts it anywhere) until the handlers have released HANDLED times
 * and the release loop has stopped; every release is then consumed and the
 * consumers are let go. */
static void drive(pid_t tid, conc_thread *hub, struct hub_thread *h)
{
    struct sigevent sev;
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = SIGUSR1;
    sev._sigev_un._tid = tid;
    timer_t tm;
    cr_assert_eq(timer_create(CLOCK_MONOTONIC, &sev, &tm), 0);
    struct itimerspec its = { .it_value = { .tv_nsec = TICK_NS },
                              .it_interval = { .tv_nsec = TICK_NS } };
    cr_assert_eq(timer_settime(tm, 0, &its, NULL), 0);
    int64_t end = conc_now() + GUARD_NS;
    while (atomic_load(&handled) < HANDLED) {
        cr_assert_lt(conc_now(), end, "hung: released %ld, by handlers %ld, consumed %ld",
                     atomic_load(&released), atomic_load(&handled), atomic_load(&consumed));
        usleep(1000);
    }
    /* Enough: no more signals (a slow handler under a fast timer could
     * leave the thread no time for anything else), then stop the loop. */
    cr_assert_eq(timer_delete(tm), 0);
    atomic_store(&quiet, 1);
    while (atomic_load(&in_handler))
        usleep(100);
    atomic_store(&enough, 1);
    while (!atomic_load(&loop_done)) {
        cr_assert_lt(conc_now(), end, "the release loop did not stop: released %ld",
                     atomic_load(&released));
        usleep(1000);
    }
    long total = atomic_load(&released) + atomic_load(&handled) - atomic_load(&reclaimed);
    while (atomic_load(&consumed) < total) {
        cr_assert_lt(conc_now(), end, "consumed %ld of %ld", atomic_load(&consumed), total);
        usleep(1000);
        total = atomic_load(&released) + atomic_load(&handled) - atomic_load(&reclaimed);
    }
    atomic_store(&stop, 1);
    cr_assert_eq(conc_sem_release(&rel_sem, CONSUMERS), 0);
    cr_assert_eq(conc_thread_join(hub, CONC_FOREVER), 0);
    conc_thread_free(hub);
    cr_assert_eq(h->rc, 0);
    cr_assert_eq(atomic_load(&consumed) + atomic_load(&reclaimed),
                 atomic_load(&released) + atomic_load(&handled));
    cr_assert_eq(conc_sem_value(&rel_sem), 0);
}

/* A thread releases in a tight loop while a signal handler in that same
 * thread releases too; the consumers are parked in another thread's hub. */
Test(wakers, handler_releases_in_releasing_thread, .timeout = 120)
{
    install(SIGUSR1, rel_handler);
    struct hub_thread h = { .with_releaser = false };
    conc_thread *hub;
    start_hub_thread(&hub, &h);
    pthread_t rel;
    cr_assert_eq(pthread_create(&rel, NULL, releaser_thread, NULL), 0);
    while (!atomic_load(&releaser_tid))
        usleep(100);
    drive(atomic_load(&releaser_tid), hub, &h);
    pthread_join(rel, NULL);
    cr_log_info("signal handlers released %ld times", atomic_load(&handled));
}

/* The same inside the hub's own thread: a greenlet releases, the handler
 * interrupts the hub wherever it is (its loop, a park, a wake-up). */
Test(wakers, handler_releases_in_hub_thread, .timeout = 120)
{
    install(SIGUSR1, rel_handler);
    struct hub_thread h = { .with_releaser = true };
    conc_thread *hub;
    start_hub_thread(&hub, &h);
    drive(atomic_load(&h.tid), hub, &h);
    cr_log_info("signal handlers released %ld times", atomic_load(&handled));
}

/* ------------------------------------------------------------------ offload */

static atomic_int offload_go;
static char dump_text[1024];

static void *offloaded(void *arg)
{
    while (!atomic_load(&offload_go))
        usleep(200);
    return arg;
}

/* Runs while the main coroutine waits for the worker: what does it wait
 * with? */
static void *dump_then_release(void *arg)
{
    (void)arg;
    int n = -1;
    char *text = hub_dump_text(&n);
    if (text) {
        snprintf(dump_text, sizeof dump_text, "%s", text);
        free(text);
    }
    atomic_store(&offload_go, 1);
    return (void *)(intptr_t)n;
}

/* A coroutine waiting for an offloaded call waits on its word alone, with
 * no timer of its own (it needs none to escape a false deadlock). */
Test(wakers, offload_wait_arms_no_timer, .timeout = 60)
{
    conc_greenlet *g;
    cr_assert_eq(conc_greenlet_spawn(&g, dump_then_release, NULL, NULL), 0);
    void *r = NULL;
    cr_assert_eq(conc_offload(offloaded, (void *)5, &r, CONC_FOREVER), 0);
    cr_assert_eq((intptr_t)r, 5);
    cr_assert_eq(conc_greenlet_join(g, CONC_FOREVER), 0);
    cr_assert_eq(conc_greenlet_result(g, &r), 0);
    cr_assert_eq((intptr_t)r, 2);
    char *main_line = strstr(dump_text, "main");
    cr_assert(main_line, "dump: %s", dump_text);
    char *eol = strchr(main_line, '\n');
    cr_assert(eol);
    *eol = '\0';
    cr_assert(strstr(main_line, "word 0x"), "main: %s", main_line);
    cr_assert_null(strstr(main_line, "until"), "main: %s", main_line);
    conc_greenlet_free(g);
    cr_assert_eq(conc_hub_free(), 0);
}
