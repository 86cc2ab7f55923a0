/*
 * thread.c - threading.Thread, Timer, local and the registry behind
 * current_thread / active_count / enumerate.
 *
 * A handle is reference-counted: the creator holds one reference and a
 * started thread holds one until its function returns.  OS threads are
 * created joinable; whoever finishes with a handle last reaps the OS thread
 * (pthread_join by a joiner or the last owner, pthread_detach by the thread
 * itself when nobody else holds the handle any more).
 */
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "conc/sync.h"
#include "conc/thread.h"
#include "internal.h"
#include "sys/wait.h"

enum { ST_NEW = 0, ST_STARTED = 1, ST_FINISHED = 2 };
enum { KIND_NORMAL = 0, KIND_TIMER, KIND_MAIN, KIND_DUMMY };

struct conc_thread {
    uint32_t refs;              /* a Dummy's own reference is DUMMY_OWN */
    uint32_t state;             /* ST_* */
    uint32_t reaped;            /* the OS thread was joined or detached */
    int kind;
    bool daemon;
    bool named;                 /* the user chose the name: tell the kernel */
    conc_lock name_lock;        /* guards name and named, and the claim to
                                   reap (so set_name never names a reaped
                                   OS thread) */
    conc_event done;            /* set when the function has returned */
    conc_event cancel;          /* Timer.cancel() */
    double interval;            /* Timer */
    conc_thread_fn fn;
    void *arg;
    void *result;
    size_t stack_size;
    pthread_t pt;               /* written by the starter, read by reapers */
    uint64_t ident;             /* written by the thread itself */
    uint32_t tid;
    struct conc_thread *prev, *next;    /* registry of alive threads */
    char name[CONC_THREAD_NAME_MAX + 1];
};

/* ---------------------------------------------------- thread id cache */

__thread pid_t conc__tid_cache __attribute__((tls_model("initial-exec")));

pid_t conc__tid_slow(void)
{
    pid_t t = gettid();
    conc__tid_cache = t;
    return t;
}

/* ------------------------------------------------------------ registry */

static conc_lock reg_lock = CONC_LOCK_INIT;
static conc_thread *reg_head;
static int reg_count;
static uint32_t name_counter;
static uint32_t dummy_counter;
static size_t default_stack_size;
static conc_thread main_thread;
/* The process's main thread: main_thread, or after a fork from another
 * thread the handle of the thread that forked (changed only in the child,
 * while it has one thread). */
static conc_thread *main_ptr = &main_thread;
static __thread conc_thread *self __attribute__((tls_model("initial-exec")));
static pthread_key_t dummy_key;
static pthread_key_t exit_key;
static pthread_once_t atexit_once = PTHREAD_ONCE_INIT;
/* conc_thread_set_exit_join, and whether a thread was ever started: the
 * atexit handler is registered at the first start while the join is on,
 * or when it is turned on after a start (each side writes its flag, then
 * reads the other's, sequentially consistent: at least one registers). */
static int exit_join = 1;
static int ever_started;

/* Blocks the thread, never parks a coroutine (no hub wait): the fork
 * handler takes this lock, and a fork() from a coroutine must not run other
 * coroutines in the middle of the fork.  Its critical sections never wait,
 * so no coroutine of this thread can be holding it. */
static void reg_lock_take(void)
{
    const struct conc__wait_ops *ops = conc__wait_ops;
    conc__wait_ops = NULL;
    conc_lock_acquire_until(&reg_lock, CONC_NO_DEADLINE);
    conc__wait_ops = ops;
}

static void reg_add_locked(conc_thread *t)
{
    t->prev = NULL;
    t->next = reg_head;
    if (reg_head)
        reg_head->prev = t;
    reg_head = t;
    reg_count++;
}

static void reg_remove_locked(conc_thread *t)
{
    if (t->prev)
        t->prev->next = t->next;
    else if (reg_head == t)
        reg_head = t->next;
    else
        return;                 /* not registered */
    if (t->next)
        t->next->prev = t->prev;
    t->prev = t->next = NULL;
    reg_count--;
}

static void reg_add(conc_thread *t)
{
    reg_lock_take();
    reg_add_locked(t);
    conc_lock_release(&reg_lock);
}

static void reg_remove(conc_thread *t)
{
    reg_lock_take();
    reg_remove_locked(t);
    conc_lock_release(&reg_lock);
}

/* ------------------------------------------------------- ref counting */

/* A Dummy handle's own reference, held until its thread ends.  Kept apart
 * from the counted ones so that freeing the borrowed handle (which the
 * header forbids) is ignored instead of freeing it under the thread. */
#define DUMMY_OWN (1u << 31)

/* Wins the one right to reap t's OS thread (pthread_join or _detach).  Taken
 * under name_lock: conc_thread_set_name names the OS thread only while
 * nobody has won it, so it never touches a reaped thread. */
static bool claim_reap(conc_thread *t)
{
    uint32_t z = 0;
    conc_lock_acquire_until(&t->name_lock, CONC_NO_DEADLINE);
    bool won = __atomic_compare_exchange_n(&t->reaped, &z, 1, false, __ATOMIC_ACQ_REL,
                                           __ATOMIC_RELAXED);
    conc_lock_release(&t->name_lock);
    return won;
}

static void reap(conc_thread *t, bool from_self)
{
    if (t->kind == KIND_MAIN || t->kind == KIND_DUMMY)
        return;
    if (ld_acquire(&t->state) == ST_NEW)
        return;
    if (ld_acquire(&t->reaped) || !claim_reap(t))
        return;
    if (from_self)
        pthread_detach(pthread_self());
    else
        pthread_join(t->pt, NULL);
}

/* own: the Dummy thread's own reference (its end), else a counted one. */
static void dummy_unref(conc_thread *t, bool own)
{
    uint32_t left;
    if (own) {
        left = __atomic_sub_fetch(&t->refs, DUMMY_OWN, __ATOMIC_ACQ_REL);
    } else {
        uint32_t r = __atomic_load_n(&t->refs, __ATOMIC_RELAXED);
        do {
            if (!(r & ~DUMMY_OWN))
                return;         /* the borrowed handle: ignored */
        } while (!__atomic_compare_exchange_n(&t->refs, &r, r - 1, false, __ATOMIC_ACQ_REL,
                                              __ATOMIC_RELAXED));
        left = r - 1;
    }
    if (left == 0)
        free(t);
}

static void thread_unref(conc_thread *t, bool from_self)
{
    if (t->kind == KIND_MAIN)
        return;
    if (t->kind == KIND_DUMMY) {
        dummy_unref(t, from_self);
        return;
    }
    if (__atomic_fetch_sub(&t->refs, 1, __ATOMIC_ACQ_REL) != 1)
        return;
    reap(t, from_self);
    free(t);
}

conc_thread *conc_thread_ref(conc_thread *t)
{
    if (t && t->kind != KIND_MAIN)
        __atomic_fetch_add(&t->refs, 1, __ATOMIC_RELAXED);
    return t;
}

void conc_thread_free(conc_thread *t)
{
    if (t)
        thread_unref(t, false);
}

/* ------------------------------------------------ process-level hooks */

/* The main thread has finished (it returned from main or called exit, or
 * called pthread_exit): joins of it return from now on. */
static void main_finished(conc_thread *m)
{
    reg_remove(m);
    st_release(&m->state, ST_FINISHED);
    conc_event_set(&m->done);
}

void conc__threads_join_nondaemon(void)
{
    if (!__atomic_load_n(&exit_join, __ATOMIC_SEQ_CST))
        return;
    conc_thread *me = self;
    /* As Python's shutdown: the main thread is done before the others are
     * joined, so a thread that joins it can end. */
    if (me && me == main_ptr && ld_acquire(&me->state) == ST_STARTED)
        main_finished(me);
    for (;;) {
        conc_thread *victim = NULL;
        reg_lock_take();
        for (conc_thread *t = reg_head; t; t = t->next) {
            if (t != me && !t->daemon && t->kind != KIND_MAIN && t->kind != KIND_DUMMY &&
                ld_acquire(&t->state) == ST_STARTED) {
                victim = conc_thread_ref(t);
                break;
            }
        }
        conc_lock_release(&reg_lock);
        if (!victim)
            return;
        conc_event_wait_until(&victim->done, CONC_NO_DEADLINE);
        thread_unref(victim, false);
    }
}

static void register_atexit(void)
{
    atexit(conc__threads_join_nondaemon);
}

int conc_thread_set_exit_join(bool on)
{
    __atomic_store_n(&exit_join, on ? 1 : 0, __ATOMIC_SEQ_CST);
    if (on && __atomic_load_n(&ever_started, __ATOMIC_SEQ_CST))
        pthread_once(&atexit_once, register_atexit);
    return 0;
}

static void atfork_prepare(void)
{
    reg_lock_take();
}

static void atfork_parent(void)
{
    conc_lock_release(&reg_lock);
}

/* In the child only the forking thread survives: it becomes the main thread,
 * every other thread is gone (their handles now report "ended").  A Dummy
 * becomes a "MainThread" (Python's _DummyThread becomes a _MainThread); a
 * thread conc never saw takes the main thread's handle. */
void conc__threads_after_fork(void)
{
    conc__tid_cache = 0;
    conc_thread *me = self;
    conc_thread *old_main = main_ptr;
    conc_lock_init(&reg_lock, 0);
    conc_thread *t = reg_head;
    reg_head = NULL;
    reg_count = 0;
    while (t) {
        conc_thread *next = t->next;
        t->prev = t->next = NULL;
        conc_lock_init(&t->name_lock, 0);   /* a vanished thread may have held it */
        if (t != me && t->kind != KIND_MAIN) {
            st_release(&t->state, ST_FINISHED);
            st_relaxed(&t->reaped, 1);      /* no OS thread left to reap */
            conc_event_set(&t->done);
        }
        t = next;
    }
    if (!me) {
        me = &main_thread;
        self = me;
    } else if (me->kind == KIND_DUMMY) {
        me->kind = KIND_MAIN;
        me->daemon = false;
        snprintf(me->name, sizeof me->name, "MainThread");
    }
    if (me->kind == KIND_MAIN)
        pthread_setspecific(exit_key, me);  /* finished by pthread_exit too */
    if (me != old_main) {
        st_release(&old_main->state, ST_FINISHED);
        conc_event_set(&old_main->done);
    }
    main_ptr = me;
    st_relaxed(&me->tid, (uint32_t)conc__tid_slow());
    st_relaxed(&me->ident, (uint64_t)pthread_self());
    reg_add_locked(me);
    if (me == &main_thread) {
        st_release(&main_thread.state, ST_STARTED);
        conc_event_clear(&main_thread.done);
    }
}

static void dummy_destroy(void *p)
{
    conc_thread *t = p;
    reg_remove(t);
    st_release(&t->state, ST_FINISHED);
    conc_event_set(&t->done);
    if (self == t)
        self = NULL;
    thread_unref(t, true);
}

static void thread_finish(void *p);

__attribute__((constructor(CONC__CTOR_CORE))) static void thread_module_init(void)
{
    main_thread.refs = 1;
    main_thread.kind = KIND_MAIN;
    main_thread.state = ST_STARTED;
    main_thread.reaped = 1;
    main_thread.tid = (uint32_t)conc__tid_slow();
    main_thread.ident = (uint64_t)pthread_self();
    conc_event_init(&main_thread.done, 0);
    conc_event_init(&main_thread.cancel, 0);
    strcpy(main_thread.name, "MainThread");
    self = &main_thread;
    reg_add_locked(&main_thread);
    pthread_key_create(&dummy_key, dummy_destroy);
    pthread_key_create(&exit_key, thread_finish);
    /* A main thread that ends with pthread_exit finishes like any thread
     * (returning from main or exit() runs no key destructor). */
    pthread_setspecific(exit_key, &main_thread);
    pthread_atfork(atfork_prepare, atfork_parent, conc__threads_after_fork);
}

/* ------------------------------------------------------------ threads */

static void set_name_buf(conc_thread *t, const char *name)
{
    snprintf(t->name, sizeof t->name, "%s", name);
}

static void set_os_name(pthread_t pt, const char *name)
{
    char buf[16];
    size_t n = strnlen(name, sizeof buf - 1);
    memcpy(buf, name, n);
    buf[n] = 0;
    pthread_setname_np(pt, buf);
}

static int thread_alloc(conc_thread **out, conc_thread_fn fn, void *arg,
                        const conc_thread_opts *opts, int kind)
{
    if (!out || !fn)
        return -EINVAL;
    conc_thread_opts o;
    CONC__OPTS_COPY(&o, opts, CONC__OPTS_V1(conc_thread_opts, stack_size));
    opts = &o;
    int daemon = opts->daemon;
    if (daemon != 0 && daemon != CONC_DAEMON && daemon != CONC_NOT_DAEMON)
        return -EINVAL;
    if (opts && opts->stack_size && opts->stack_size < CONC_THREAD_STACK_MIN)
        return -EINVAL;
    conc_thread *t = calloc(1, sizeof *t);
    if (!t)
        return -ENOMEM;
    t->refs = 1;
    t->kind = kind;
    t->fn = fn;
    t->arg = arg;
    conc_event_init(&t->done, 0);
    conc_event_init(&t->cancel, 0);
    if (daemon == 0)
        t->daemon = self ? self->daemon : true;  /* foreign threads are daemons */
    else
        t->daemon = daemon == CONC_DAEMON;
    t->stack_size = (opts && opts->stack_size) ? opts->stack_size
                    : __atomic_load_n(&default_stack_size, __ATOMIC_RELAXED);
    if (opts && opts->name) {
        set_name_buf(t, opts->name);
        t->named = true;
    } else {
        snprintf(t->name, sizeof t->name, "Thread-%u",
                 __atomic_add_fetch(&name_counter, 1, __ATOMIC_RELAXED));
    }
    *out = t;
    return 0;
}

int conc_thread_new(conc_thread **out, conc_thread_fn fn, void *arg,
                    const conc_thread_opts *opts)
{
    return thread_alloc(out, fn, arg, opts, KIND_NORMAL);
}

static void thread_finish(void *p)
{
    conc_thread *t = p;
    reg_remove(t);
    st_release(&t->state, ST_FINISHED);
    conc_event_set(&t->done);
    self = NULL;
    thread_unref(t, true);
}

static void run_body(conc_thread *t)
{
    void *result = NULL;
    if (t->kind == KIND_TIMER) {
        int64_t deadline;
        if (conc_deadline(t->interval, &deadline) == 0 &&
            conc_event_wait_until(&t->cancel, deadline) == -ETIMEDOUT)
            result = t->fn(t->arg);
    } else {
        result = t->fn(t->arg);
    }
    t->result = result;
}

static void *trampoline(void *p)
{
    conc_thread *t = p;
    self = t;
    st_relaxed(&t->ident, (uint64_t)pthread_self());
    __atomic_store_n(&t->tid, (uint32_t)conc__tid_slow(), __ATOMIC_RELEASE);
    conc_lock_acquire_until(&t->name_lock, CONC_NO_DEADLINE);
    if (t->named)
        set_os_name(pthread_self(), t->name);
    conc_lock_release(&t->name_lock);
    /* exit_key's destructor finishes the thread if the body calls
     * pthread_exit instead of returning. */
    pthread_setspecific(exit_key, t);
    run_body(t);
    pthread_setspecific(exit_key, NULL);
    thread_finish(t);
    return NULL;
}

int conc_thread_start(conc_thread *t)
{
    if (!t)
        return -EINVAL;
    if (t->kind == KIND_MAIN || t->kind == KIND_DUMMY)
        return -EALREADY;
    uint32_t expect = ST_NEW;
    if (!__atomic_compare_exchange_n(&t->state, &expect, ST_STARTED, false,
                                     __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
        return -EALREADY;
    __atomic_store_n(&ever_started, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&exit_join, __ATOMIC_SEQ_CST))
        pthread_once(&atexit_once, register_atexit);
    conc_thread_ref(t);             /* the thread's own reference */
    reg_add(t);
    pthread_attr_t attr, *pattr = NULL;
    int r = 0;
    if (t->stack_size) {
        pattr = &attr;
        pthread_attr_init(&attr);
        r = pthread_attr_setstacksize(&attr, t->stack_size);
    }
    if (r == 0)
        r = pthread_create(&t->pt, pattr, trampoline, t);
    if (pattr)
        pthread_attr_destroy(&attr);
    if (r != 0) {
        reg_remove(t);
        st_release(&t->state, ST_NEW);
        __atomic_fetch_sub(&t->refs, 1, __ATOMIC_ACQ_REL);
        return r == EINVAL ? -EINVAL : r == ENOMEM ? -ENOMEM : -EAGAIN;
    }
    return 0;
}

/*
 * Joins without a deadline by reaping the OS thread directly when the caller
 * can: a plain thread (not a coroutine) that wins the right to reap it.  pthread_join is woken by
 * the kernel when the thread has fully exited, one wake-up instead of the
 * `done` event's plus pthread_join's.  Returns 1 when it did not apply.
 */
static int join_direct(conc_thread *t, int64_t deadline)
{
    /* Timed joins wait on `done` instead: pthread_clockjoin_np would do, but
     * sanitizers do not all know it and then report the thread as leaked. */
    if (deadline != CONC_NO_DEADLINE || conc__wait_ops ||
        (t->kind != KIND_NORMAL && t->kind != KIND_TIMER))
        return 1;
    if (ld_acquire(&t->reaped) || !claim_reap(t))
        return 1;
    pthread_join(t->pt, NULL);
    return 0;
}

static int join_checks(const conc_thread *t)
{
    /* A Dummy cannot be joined (Python: "cannot join a dummy thread"). */
    if (!t || ld_acquire(&t->state) == ST_NEW || t->kind == KIND_DUMMY)
        return -EINVAL;
    if (t == self)
        return -EDEADLK;
    return 0;
}

int conc_thread_join_until(conc_thread *t, int64_t deadline)
{
    int r = join_checks(t);
    if (r)
        return r;
    r = join_direct(t, deadline);
    if (r <= 0)
        return r;
    r = conc_event_wait_until(&t->done, deadline);
    if (r == 0)
        reap(t, false);
    return r;
}

int conc_thread_join(conc_thread *t, double timeout)
{
    int r = join_checks(t);
    if (r)
        return r;
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    if (poll) {
        /* Try once without joining the OS thread (which may still be
         * finishing after its result was set). */
        if (!conc_event_is_set(&t->done))
            return -EAGAIN;
        reap(t, false);
        return 0;
    }
    return conc_thread_join_until(t, deadline);
}

bool conc_thread_is_alive(const conc_thread *t)
{
    return t && ld_acquire(&t->state) == ST_STARTED;
}

bool conc_thread_started(const conc_thread *t)
{
    return t && ld_acquire(&t->state) != ST_NEW;
}

int conc_thread_result(const conc_thread *t, void **out)
{
    if (!t || !out)
        return -EINVAL;
    if (ld_acquire(&t->state) != ST_FINISHED || !conc_event_is_set(&t->done))
        return -EBUSY;
    *out = t->result;
    return 0;
}

int conc_thread_name(const conc_thread *t, char *buf, size_t size)
{
    if (!t || (!buf && size > 0))
        return -EINVAL;
    conc_thread *m = (conc_thread *)t;  /* the lock is not part of the value */
    conc_lock_acquire_until(&m->name_lock, CONC_NO_DEADLINE);
    size_t n = strlen(m->name);
    if (size > 0) {
        size_t k = n < size - 1 ? n : size - 1;
        memcpy(buf, m->name, k);
        buf[k] = 0;
    }
    conc_lock_release(&m->name_lock);
    return (int)n;
}

int conc_thread_set_name(conc_thread *t, const char *name)
{
    if (!t || !name)
        return -EINVAL;
    conc_lock_acquire_until(&t->name_lock, CONC_NO_DEADLINE);
    set_name_buf(t, name);
    t->named = true;
    /* Another running thread is named through its pthread id, which stays
     * valid while nobody has claimed to reap it (claim_reap takes this
     * lock).  Its id is read from ident, which it published before tid. */
    if (t == self)
        set_os_name(pthread_self(), t->name);
    else if ((t->kind == KIND_NORMAL || t->kind == KIND_TIMER) &&
             ld_acquire(&t->state) == ST_STARTED && ld_acquire(&t->tid) != 0 &&
             !ld_acquire(&t->reaped))
        set_os_name((pthread_t)ld_acquire(&t->ident), t->name);
    conc_lock_release(&t->name_lock);
    return 0;
}

bool conc_thread_daemon(const conc_thread *t)
{
    return t && t->daemon;
}

int conc_thread_set_daemon(conc_thread *t, bool daemon)
{
    if (!t)
        return -EINVAL;
    if (ld_acquire(&t->state) != ST_NEW || t->kind == KIND_MAIN || t->kind == KIND_DUMMY)
        return -EALREADY;
    t->daemon = daemon;
    return 0;
}

/* Waits briefly for a just-started thread to publish a field about itself. */
static void await_started_field(conc_thread *t, const uint32_t *field32,
                                const uint64_t *field64)
{
    while (!(field32 ? ld_acquire(field32) : ld_acquire(field64) != 0) &&
           ld_acquire(&t->state) == ST_STARTED)
        conc__yield();
}

uint64_t conc_thread_ident(const conc_thread *t)
{
    if (!t || ld_acquire(&t->state) == ST_NEW)
        return 0;
    await_started_field((conc_thread *)t, NULL, &t->ident);
    return ld_acquire(&t->ident);
}

pid_t conc_thread_native_id(conc_thread *t)
{
    if (!t || ld_acquire(&t->state) == ST_NEW)
        return 0;
    await_started_field(t, &t->tid, NULL);
    return (pid_t)ld_acquire(&t->tid);
}

conc_thread *conc_thread_current(void)
{
    conc_thread *t = self;
    if (likely(t))
        return t;
    /* A thread conc did not start: give it a daemon "Dummy-N" handle that
     * lives until the thread ends. */
    t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->refs = DUMMY_OWN;
    t->kind = KIND_DUMMY;
    t->daemon = true;
    t->state = ST_STARTED;
    t->reaped = 1;
    t->tid = (uint32_t)conc__tid();
    t->ident = (uint64_t)pthread_self();
    conc_event_init(&t->done, 0);
    conc_event_init(&t->cancel, 0);
    snprintf(t->name, sizeof t->name, "Dummy-%u",
             __atomic_add_fetch(&dummy_counter, 1, __ATOMIC_RELAXED));
    if (pthread_setspecific(dummy_key, t) != 0) {
        free(t);
        return NULL;
    }
    self = t;
    reg_add(t);
    return t;
}

conc_thread *conc_thread_main(void)
{
    return main_ptr;
}

uint64_t conc_thread_get_ident(void)
{
    return (uint64_t)pthread_self();
}

pid_t conc_thread_get_native_id(void)
{
    return conc__tid();
}

int conc_thread_active_count(void)
{
    reg_lock_take();
    int n = reg_count;
    conc_lock_release(&reg_lock);
    return n;
}

int conc_thread_enumerate(conc_thread **out, size_t cap)
{
    if (!out && cap > 0)
        return -EINVAL;
    reg_lock_take();
    int n = 0;
    for (conc_thread *t = reg_head; t; t = t->next) {
        if ((size_t)n < cap)
            out[n] = conc_thread_ref(t);
        n++;
    }
    conc_lock_release(&reg_lock);
    /* Oldest first, like Python's enumerate(): the list is newest-first. */
    size_t stored = (size_t)n < cap ? (size_t)n : cap;
    for (size_t i = 0; i < stored / 2; i++) {
        conc_thread *tmp = out[i];
        out[i] = out[stored - 1 - i];
        out[stored - 1 - i] = tmp;
    }
    return n;
}

size_t conc_thread_stack_size(void)
{
    return __atomic_load_n(&default_stack_size, __ATOMIC_RELAXED);
}

int conc_thread_set_stack_size(size_t size)
{
    if (size != 0 && size < CONC_THREAD_STACK_MIN)
        return -EINVAL;
    __atomic_store_n(&default_stack_size, size, __ATOMIC_RELAXED);
    return 0;
}

/* -------------------------------------------------------------- Timer */

int conc_timer_new(conc_thread **out, double interval, conc_thread_fn fn, void *arg,
                   const conc_thread_opts *opts)
{
    if (interval != interval || interval < 0)
        return -EINVAL;
    int r = thread_alloc(out, fn, arg, opts, KIND_TIMER);
    if (r == 0)
        (*out)->interval = interval;
    return r;
}

int conc_timer_cancel(conc_thread *t)
{
    if (!t || t->kind != KIND_TIMER)
        return -EINVAL;
    return conc_event_set(&t->cancel);
}

/* -------------------------------------------------------------- local */

struct conc_local {
    pthread_key_t key;
};

int conc_local_new(conc_local **out, void (*destructor)(void *))
{
    if (!out)
        return -EINVAL;
    conc_local *l = malloc(sizeof *l);
    if (!l)
        return -ENOMEM;
    int r = pthread_key_create(&l->key, destructor);
    if (r) {
        free(l);
        return r == ENOMEM ? -ENOMEM : -EAGAIN;
    }
    *out = l;
    return 0;
}

void *conc_local_get(const conc_local *l)
{
    return l ? pthread_getspecific(l->key) : NULL;
}

int conc_local_set(conc_local *l, void *value)
{
    if (!l)
        return -EINVAL;
    int r = pthread_setspecific(l->key, value);
    return r ? -ENOMEM : 0;
}

void conc_local_free(conc_local *l)
{
    if (!l)
        return;
    pthread_key_delete(l->key);
    free(l);
}
