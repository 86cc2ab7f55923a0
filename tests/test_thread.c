/*
 * test_thread.c - conc/thread.h: Thread, Timer, local, current/main thread,
 * active_count/enumerate, stack sizes, exit-time joining, no leaked threads.
 *
 * Criterion runs every test in its own process.  Assertions are made in the
 * test's own thread only: helper threads record what they saw and the test
 * checks it after joining them.
 *
 * Every test has the same .timeout (see test_sync.c: Criterion leaks its
 * queued timeouts when a later test has an earlier deadline, which
 * LeakSanitizer reports).
 */
#include <criterion/criterion.h>

#include <dirent.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conc.h"
#include "support/task_state.h"

/* ------------------------------------------------------------ helpers */

static conc_thread *make(conc_thread_fn fn, void *arg, const conc_thread_opts *o)
{
    conc_thread *t = NULL;
    int rc = conc_thread_new(&t, fn, arg, o);
    cr_assert_eq(rc, 0, "conc_thread_new: %s", conc_errname(rc));
    cr_assert_not_null(t);
    return t;
}

static conc_thread *spawn(conc_thread_fn fn, void *arg, const conc_thread_opts *o)
{
    conc_thread *t = make(fn, arg, o);
    int rc = conc_thread_start(t);
    cr_assert_eq(rc, 0, "conc_thread_start: %s", conc_errname(rc));
    return t;
}

/* The thread's name, copied into a buffer that lives until the end of the
 * enclosing block (test thread only: it asserts). */
#define TNAME(t) name_copy((t), (char[CONC_THREAD_NAME_MAX + 1]){ 0 })

static const char *name_copy(const conc_thread *t, char *buf)
{
    int n = conc_thread_name(t, buf, CONC_THREAD_NAME_MAX + 1);
    cr_assert_geq(n, 0, "conc_thread_name: %s", conc_errname(n));
    cr_assert_eq((size_t)n, strlen(buf));
    return buf;
}

static void join_ok(conc_thread *t)
{
    int rc = conc_thread_join(t, CONC_FOREVER);
    cr_assert_eq(rc, 0, "conc_thread_join: %s", conc_errname(rc));
}

/* Blocks on the event passed as argument, then returns it. */
static void *wait_event_fn(void *arg)
{
    conc_event_wait((conc_event *)arg, CONC_FOREVER);
    return arg;
}

/* Returns at once. */
static void *noop_fn(void *arg)
{
    return arg;
}

/* Polls cond_fn until it holds or about 10 s passed (a hang guard, since an
 * exiting thread may take a few ms to disappear). */
static bool settle(bool (*cond_fn)(void *), void *arg)
{
    for (int i = 0; i < 2000; i++) {
        if (cond_fn(arg))
            return true;
        conc_sleep(0.005);
    }
    return cond_fn(arg);
}

static int count_tasks(void)
{
    DIR *d = opendir("/proc/self/task");
    cr_assert_not_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

static bool active_is(void *arg)
{
    return conc_thread_active_count() == *(int *)arg;
}

/* ------------------------------------------------ start, join, result */

struct gated {
    conc_event *gate;
    uintptr_t in;
};

static void *double_after_gate(void *arg)
{
    struct gated *g = arg;
    conc_event_wait(g->gate, CONC_FOREVER);
    return (void *)(g->in * 2);
}

Test(thread, start_join_result, .timeout = 60)
{
    conc_event gate = CONC_EVENT_INIT;
    struct gated g = { &gate, 21 };
    conc_thread *t = make(double_after_gate, &g, NULL);
    void *res = (void *)1;

    cr_assert_not(conc_thread_started(t));
    cr_assert_not(conc_thread_is_alive(t));
    cr_assert_eq(conc_thread_result(t, &res), -EBUSY);
    cr_assert_eq(res, (void *)1, "result must not be stored while busy");

    cr_assert_eq(conc_thread_start(t), 0);
    cr_assert(conc_thread_started(t));
    cr_assert(conc_thread_is_alive(t));
    cr_assert_eq(conc_thread_result(t, &res), -EBUSY, "running thread has no result");

    conc_event_set(&gate);
    join_ok(t);
    cr_assert_not(conc_thread_is_alive(t));
    cr_assert(conc_thread_started(t));
    cr_assert_eq(conc_thread_result(t, &res), 0);
    cr_assert_eq((uintptr_t)res, 42u);
    /* Joining an ended thread again is fine, in every form. */
    cr_assert_eq(conc_thread_join(t, CONC_FOREVER), 0);
    cr_assert_eq(conc_thread_join(t, 0), 0);
    cr_assert_eq(conc_thread_join_until(t, conc_now() - 1000000), 0);
    conc_thread_free(t);
}

Test(thread, bad_arguments, .timeout = 60)
{
    conc_thread *t = NULL;
    void *res;
    cr_assert_eq(conc_thread_new(NULL, noop_fn, NULL, NULL), -EINVAL);
    cr_assert_eq(conc_thread_new(&t, NULL, NULL, NULL), -EINVAL);
    cr_assert_eq(conc_thread_start(NULL), -EINVAL);
    cr_assert_eq(conc_thread_join(NULL, 1.0), -EINVAL);
    cr_assert_eq(conc_thread_join_until(NULL, CONC_NO_DEADLINE), -EINVAL);
    cr_assert_eq(conc_thread_result(NULL, &res), -EINVAL);
    cr_assert_eq(conc_thread_set_name(NULL, "x"), -EINVAL);
    cr_assert_eq(conc_thread_set_daemon(NULL, true), -EINVAL);
    conc_thread_free(NULL); /* a no-op */
}

Test(thread, start_twice, .timeout = 60)
{
    conc_event gate = CONC_EVENT_INIT;
    conc_thread *t = spawn(wait_event_fn, &gate, NULL);
    cr_assert_eq(conc_thread_start(t), -EALREADY, "start while running");
    conc_event_set(&gate);
    join_ok(t);
    cr_assert_eq(conc_thread_start(t), -EALREADY, "start after the end");
    void *res = NULL;
    cr_assert_eq(conc_thread_result(t, &res), 0);
    cr_assert_eq(res, &gate);
    conc_thread_free(t);
}

struct self_join {
    _Atomic int rc_self;
};

static void *join_self_fn(void *arg)
{
    struct self_join *s = arg;
    atomic_store(&s->rc_self, conc_thread_join(conc_thread_current(), 1.0));
    return NULL;
}

Test(thread, join_errors, .timeout = 60)
{
    conc_thread *t = make(noop_fn, NULL, NULL);
    cr_assert_eq(conc_thread_join(t, CONC_FOREVER), -EINVAL, "join before start");
    cr_assert_eq(conc_thread_join(t, 0), -EINVAL, "join before start");
    cr_assert_eq(conc_thread_join_until(t, CONC_NO_DEADLINE), -EINVAL);

    conc_event gate = CONC_EVENT_INIT;
    conc_thread *r = spawn(wait_event_fn, &gate, NULL);
    cr_assert_eq(conc_thread_join(r, -2.0), -EINVAL, "negative timeout");
    cr_assert_eq(conc_thread_join(r, NAN), -EINVAL, "NaN timeout");
    conc_event_set(&gate);
    join_ok(r);
    conc_thread_free(r);

    /* A thread joining itself. */
    struct self_join s = { 1 };
    conc_thread *self = spawn(join_self_fn, &s, NULL);
    join_ok(self);
    cr_assert_eq(atomic_load(&s.rc_self), -EDEADLK);
    conc_thread_free(self);

    /* The main thread joining itself. */
    cr_assert_eq(conc_thread_join(conc_thread_main(), 0.01), -EDEADLK);
    conc_thread_free(t);
}

Test(thread, join_timeout, .timeout = 60)
{
    conc_event gate = CONC_EVENT_INIT;
    conc_thread *t = spawn(wait_event_fn, &gate, NULL);
    int64_t t0 = conc_now();
    cr_assert_eq(conc_thread_join(t, 0.05), -ETIMEDOUT);
    cr_assert_geq(conc_now() - t0, 50000000, "join(0.05) returned early");
    cr_assert_eq(conc_thread_join(t, 0), -EAGAIN);
    cr_assert_eq(conc_thread_join_until(t, conc_now()), -ETIMEDOUT);
    cr_assert_eq(conc_thread_join_until(t, conc_now() + 20000000), -ETIMEDOUT);
    cr_assert(conc_thread_is_alive(t), "a timed-out join leaves the thread running");
    conc_event_set(&gate);
    cr_assert_eq(conc_thread_join(t, 20.0), 0);
    cr_assert_not(conc_thread_is_alive(t));
    conc_thread_free(t);
}

/* ------------------------------------------------------- many joiners */

struct joiner {
    conc_thread *target;
    _Atomic int rc;
    _Atomic int alive_after;
    void *result;
    _Atomic int result_rc;
};

static void *joiner_fn(void *arg)
{
    struct joiner *j = arg;
    atomic_store(&j->rc, conc_thread_join(j->target, CONC_FOREVER));
    atomic_store(&j->alive_after, conc_thread_is_alive(j->target));
    atomic_store(&j->result_rc, conc_thread_result(j->target, &j->result));
    return NULL;
}

Test(thread, many_joiners, .timeout = 60)
{
    enum { N = 8 };
    conc_event gate = CONC_EVENT_INIT;
    struct gated g = { &gate, 50 };
    conc_thread *target = spawn(double_after_gate, &g, NULL);
    struct joiner js[N];
    conc_thread *jt[N];
    for (int i = 0; i < N; i++) {
        js[i].target = target;
        atomic_init(&js[i].rc, 1);
        atomic_init(&js[i].alive_after, 1);
        atomic_init(&js[i].result_rc, 1);
        js[i].result = NULL;
        jt[i] = spawn(joiner_fn, &js[i], NULL);
    }
    /* While the target runs, every joiner stays blocked. */
    for (int i = 0; i < N; i++)
        cr_assert_eq(conc_thread_join(jt[i], 0.02), -ETIMEDOUT, "joiner %d returned early", i);
    for (int i = 0; i < N; i++)
        cr_assert_eq(atomic_load(&js[i].rc), 1);
    conc_event_set(&gate);
    for (int i = 0; i < N; i++) {
        join_ok(jt[i]);
        cr_assert_eq(atomic_load(&js[i].rc), 0, "joiner %d", i);
        cr_assert_eq(atomic_load(&js[i].alive_after), 0, "joiner %d saw it alive", i);
        cr_assert_eq(atomic_load(&js[i].result_rc), 0, "joiner %d", i);
        cr_assert_eq((uintptr_t)js[i].result, 100u, "joiner %d", i);
        conc_thread_free(jt[i]);
    }
    join_ok(target);
    conc_thread_free(target);
}

/* --------------------------------------------------------------- names */

static bool parse_numbered(const char *name, const char *prefix, long *num)
{
    size_t n = strlen(prefix);
    if (strncmp(name, prefix, n) != 0 || name[n] == '\0')
        return false;
    char *end;
    long v = strtol(name + n, &end, 10);
    if (*end != '\0' || v <= 0)
        return false;
    *num = v;
    return true;
}

struct name_seen {
    conc_thread *self;
    char name[CONC_THREAD_NAME_MAX + 1];
};

static void *record_name_fn(void *arg)
{
    struct name_seen *s = arg;
    conc_thread_name(conc_thread_current(), s->name, sizeof s->name);
    return NULL;
}

Test(thread, names, .timeout = 60)
{
    conc_thread *a = make(noop_fn, NULL, NULL);
    conc_thread *b = make(noop_fn, NULL, NULL);
    long na = 0, nb = 0;
    cr_assert(parse_numbered(TNAME(a), "Thread-", &na),
              "default name '%s'", TNAME(a));
    cr_assert(parse_numbered(TNAME(b), "Thread-", &nb),
              "default name '%s'", TNAME(b));
    cr_assert_gt(nb, na, "names number threads in creation order");
    conc_thread_free(a);
    conc_thread_free(b);

    /* Explicit name, copied from the caller's buffer. */
    char buf[32] = "worker";
    conc_thread_opts o = { .name = buf };
    struct name_seen seen = { 0 };
    conc_thread *t = make(record_name_fn, &seen, &o);
    strcpy(buf, "clobbered");
    cr_assert_str_eq(TNAME(t), "worker");
    cr_assert_eq(conc_thread_set_name(t, "renamed"), 0);
    cr_assert_str_eq(TNAME(t), "renamed");
    cr_assert_eq(conc_thread_start(t), 0);
    join_ok(t);
    cr_assert_str_eq(seen.name, "renamed", "the thread sees its own name");
    cr_assert_str_eq(TNAME(t), "renamed");
    conc_thread_free(t);

    /* Truncation to CONC_THREAD_NAME_MAX bytes, at creation and on rename. */
    char longname[200];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    longname[0] = 'L';
    o.name = longname;
    t = make(noop_fn, NULL, &o);
    cr_assert_eq(strlen(TNAME(t)), CONC_THREAD_NAME_MAX);
    cr_assert_eq(strncmp(TNAME(t), longname, CONC_THREAD_NAME_MAX), 0);
    longname[0] = 'M';
    cr_assert_eq(conc_thread_set_name(t, longname), 0);
    cr_assert_eq(strlen(TNAME(t)), CONC_THREAD_NAME_MAX);
    cr_assert_eq(TNAME(t)[0], 'M');
    /* Exactly CONC_THREAD_NAME_MAX bytes are kept whole. */
    longname[CONC_THREAD_NAME_MAX] = '\0';
    longname[CONC_THREAD_NAME_MAX - 1] = 'Z';
    cr_assert_eq(conc_thread_set_name(t, longname), 0);
    cr_assert_str_eq(TNAME(t), longname);
    conc_thread_free(t);
}

Test(thread, name_copies_like_snprintf, .timeout = 60)
{
    conc_thread_opts o = { .name = "copied-name" };
    conc_thread *t = make(noop_fn, NULL, &o);
    char buf[8];
    memset(buf, '#', sizeof buf);
    cr_assert_eq(conc_thread_name(t, buf, sizeof buf), 11, "the whole name's length");
    cr_assert_str_eq(buf, "copied-", "truncated and terminated");
    cr_assert_eq(conc_thread_name(t, buf, 1), 11);
    cr_assert_str_eq(buf, "");
    cr_assert_eq(conc_thread_name(t, NULL, 0), 11, "size 0 only measures");
    cr_assert_eq(conc_thread_name(t, NULL, 4), -EINVAL);
    cr_assert_eq(conc_thread_name(NULL, buf, sizeof buf), -EINVAL);
    char full[CONC_THREAD_NAME_MAX + 1];
    cr_assert_eq(conc_thread_name(t, full, sizeof full), 11);
    cr_assert_str_eq(full, "copied-name");
    conc_thread_free(t);
}

/* Renames the target between two names until told to stop. */
struct renamer {
    conc_thread *target;
    const char *names[2];
    _Atomic int stop;
    _Atomic long renames;
    int err;
};

static void *renamer_fn(void *arg)
{
    struct renamer *r = arg;
    for (long i = 0; !atomic_load(&r->stop); i++) {
        int rc = conc_thread_set_name(r->target, r->names[i & 1]);
        if (rc != 0 && r->err == 0)
            r->err = rc;
        atomic_fetch_add(&r->renames, 1);
    }
    return NULL;
}

/* The name a reader gets is always one whole name, never a mix of two,
 * while another thread renames (TSan sees no race on the buffer). */
Test(thread, name_read_during_rename_is_whole, .timeout = 60)
{
    static char longa[CONC_THREAD_NAME_MAX + 1];
    memset(longa, 'a', CONC_THREAD_NAME_MAX);
    conc_event gate = CONC_EVENT_INIT;
    conc_thread *t = spawn(wait_event_fn, &gate, NULL);
    struct renamer r = { .target = t, .names = { longa, "bb" } };
    cr_assert_eq(conc_thread_set_name(t, "bb"), 0);
    pthread_t pt;
    cr_assert_eq(pthread_create(&pt, NULL, renamer_fn, &r), 0);
    long mixed = 0, reads = 0;
    while (atomic_load(&r.renames) < 2000 || reads < 2000) {
        char buf[CONC_THREAD_NAME_MAX + 1];
        int n = conc_thread_name(t, buf, sizeof buf);
        reads++;
        if (!((n == 2 && strcmp(buf, "bb") == 0) ||
              (n == CONC_THREAD_NAME_MAX && strcmp(buf, longa) == 0)))
            mixed++;
    }
    atomic_store(&r.stop, 1);
    cr_assert_eq(pthread_join(pt, NULL), 0);
    cr_assert_eq(r.err, 0);
    cr_assert_eq(mixed, 0, "%ld of %ld reads saw a mixed name", mixed, reads);
    conc_event_set(&gate);
    join_ok(t);
    conc_thread_free(t);
}

/* Renaming a thread while another thread joins it (and so reaps its OS
 * thread): the rename must never name a reaped thread. */
Test(thread, set_name_races_join, .timeout = 60)
{
    for (int round = 0; round < 200; round++) {
        conc_thread *t = spawn(noop_fn, NULL, NULL);
        struct renamer r = { .target = t, .names = { "renamed-a", "renamed-b" } };
        pthread_t pt;
        cr_assert_eq(pthread_create(&pt, NULL, renamer_fn, &r), 0);
        while (atomic_load(&r.renames) == 0)
            sched_yield();
        join_ok(t);
        atomic_store(&r.stop, 1);
        cr_assert_eq(pthread_join(pt, NULL), 0);
        cr_assert_eq(r.err, 0);
        cr_assert_neq(TNAME(t)[0], 'T', "renamed");
        conc_thread_free(t);
    }
}

static void read_comm(pid_t tid, char *out, size_t cap)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/self/task/%d/comm", (int)tid);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s", path);
    cr_assert_not_null(fgets(out, (int)cap, f));
    fclose(f);
    out[strcspn(out, "\n")] = '\0';
}

Test(thread, os_name_of_running_thread, .timeout = 60)
{
    conc_event gate = CONC_EVENT_INIT;
    conc_thread *t = spawn(wait_event_fn, &gate, NULL);
    pid_t tid = conc_thread_native_id(t);
    cr_assert_gt(tid, 0);
    cr_assert_eq(conc_thread_set_name(t, "a-rather-long-thread-name"), 0);
    char comm[64];
    read_comm(tid, comm, sizeof comm);
    cr_assert_str_eq(comm, "a-rather-long-t", "OS name gets the first 15 bytes");
    cr_assert_str_eq(TNAME(t), "a-rather-long-thread-name");
    conc_event_set(&gate);
    join_ok(t);
    conc_thread_free(t);
}

/* --------------------------------------------------- ident, native_id */

struct ids {
    conc_event *gate;
    _Atomic pid_t tid;          /* gettid() inside */
    _Atomic pid_t native;       /* conc_thread_get_native_id() inside */
    _Atomic uint64_t ident;     /* conc_thread_get_ident() inside */
    _Atomic uint64_t pself;     /* pthread_self() inside */
    _Atomic uint64_t cur_ident; /* conc_thread_ident(current) inside */
};

static void *ids_fn(void *arg)
{
    struct ids *s = arg;
    atomic_store(&s->tid, gettid());
    atomic_store(&s->native, conc_thread_get_native_id());
    atomic_store(&s->ident, conc_thread_get_ident());
    atomic_store(&s->pself, (uint64_t)(uintptr_t)pthread_self());
    atomic_store(&s->cur_ident, conc_thread_ident(conc_thread_current()));
    conc_event_wait(s->gate, CONC_FOREVER);
    return NULL;
}

Test(thread, ident_and_native_id, .timeout = 60)
{
    enum { N = 4 };
    conc_event gate = CONC_EVENT_INIT;
    struct ids s[N];
    conc_thread *t[N];
    uint64_t ident[N];
    pid_t native[N];

    conc_thread *unstarted = make(noop_fn, NULL, NULL);
    cr_assert_eq(conc_thread_ident(unstarted), 0u, "ident before start");
    cr_assert_eq(conc_thread_native_id(unstarted), 0, "native_id before start");
    conc_thread_free(unstarted);

    for (int i = 0; i < N; i++) {
        memset(&s[i], 0, sizeof s[i]);
        s[i].gate = &gate;
        t[i] = spawn(ids_fn, &s[i], NULL);
    }
    /* All N are alive at once here, so their ids must differ. */
    for (int i = 0; i < N; i++) {
        native[i] = conc_thread_native_id(t[i]);
        ident[i] = conc_thread_ident(t[i]);
        cr_assert_gt(native[i], 0);
        cr_assert_neq(ident[i], 0u);
        cr_assert_neq(native[i], getpid(), "a thread is not the main thread");
        cr_assert_neq(ident[i], conc_thread_get_ident());
        for (int k = 0; k < i; k++) {
            cr_assert_neq(native[i], native[k], "native ids %d and %d", i, k);
            cr_assert_neq(ident[i], ident[k], "idents %d and %d", i, k);
        }
    }
    conc_event_set(&gate);
    for (int i = 0; i < N; i++) {
        join_ok(t[i]);
        cr_assert_eq(atomic_load(&s[i].tid), native[i], "native_id == gettid() in the thread");
        cr_assert_eq(atomic_load(&s[i].native), native[i]);
        cr_assert_eq(atomic_load(&s[i].ident), ident[i], "get_ident() in the thread");
        cr_assert_eq(atomic_load(&s[i].pself), ident[i], "ident is the pthread id");
        cr_assert_eq(atomic_load(&s[i].cur_ident), ident[i]);
        /* Python keeps ident/native_id after the end. */
        cr_assert_eq(conc_thread_native_id(t[i]), native[i]);
        cr_assert_eq(conc_thread_ident(t[i]), ident[i]);
        conc_thread_free(t[i]);
    }

    /* The main thread. */
    conc_thread *m = conc_thread_main();
    cr_assert_eq(conc_thread_get_native_id(), getpid());
    cr_assert_eq(conc_thread_native_id(m), getpid());
    cr_assert_eq(conc_thread_get_ident(), (uint64_t)(uintptr_t)pthread_self());
    cr_assert_eq(conc_thread_ident(m), conc_thread_get_ident());
}

/* -------------------------------------------------------------- daemon */

struct daemon_probe {
    _Atomic int dflt;       /* daemon flag of a default child */
    _Atomic int not_daemon; /* of a CONC_NOT_DAEMON child */
    _Atomic int daemon;     /* of a CONC_DAEMON child */
    _Atomic int self;       /* of the prober itself, seen from inside */
};

static void *probe_children_fn(void *arg)
{
    struct daemon_probe *p = arg;
    conc_thread *c;
    conc_thread_opts o = { 0 };
    atomic_store(&p->self, conc_thread_daemon(conc_thread_current()));
    if (conc_thread_new(&c, noop_fn, NULL, &o) == 0) {
        atomic_store(&p->dflt, conc_thread_daemon(c));
        conc_thread_free(c);
    }
    o.daemon = CONC_NOT_DAEMON;
    if (conc_thread_new(&c, noop_fn, NULL, &o) == 0) {
        atomic_store(&p->not_daemon, conc_thread_daemon(c));
        conc_thread_free(c);
    }
    o.daemon = CONC_DAEMON;
    if (conc_thread_new(&c, noop_fn, NULL, &o) == 0) {
        atomic_store(&p->daemon, conc_thread_daemon(c));
        conc_thread_free(c);
    }
    return NULL;
}

Test(thread, daemon_flag, .timeout = 60)
{
    cr_assert_not(conc_thread_daemon(conc_thread_main()), "MainThread is not a daemon");

    conc_thread_opts o = { 0 };
    conc_thread *t = make(noop_fn, NULL, &o);
    cr_assert_not(conc_thread_daemon(t), "inherits main's non-daemon flag");
    cr_assert_eq(conc_thread_set_daemon(t, true), 0);
    cr_assert(conc_thread_daemon(t));
    cr_assert_eq(conc_thread_set_daemon(t, false), 0);
    cr_assert_not(conc_thread_daemon(t));
    conc_thread_free(t);

    t = make(noop_fn, NULL, NULL);
    cr_assert_not(conc_thread_daemon(t), "NULL opts: inherit");
    conc_thread_free(t);

    o.daemon = CONC_DAEMON;
    t = make(noop_fn, NULL, &o);
    cr_assert(conc_thread_daemon(t));
    conc_thread_free(t);

    o.daemon = CONC_NOT_DAEMON;
    t = make(noop_fn, NULL, &o);
    cr_assert_not(conc_thread_daemon(t));
    conc_thread_free(t);

    conc_thread *bad = (conc_thread *)0x1;
    o.daemon = 2;
    cr_assert_eq(conc_thread_new(&bad, noop_fn, NULL, &o), -EINVAL);
    o.daemon = -2;
    cr_assert_eq(conc_thread_new(&bad, noop_fn, NULL, &o), -EINVAL);

    /* set_daemon after start. */
    conc_event gate = CONC_EVENT_INIT;
    o.daemon = CONC_NOT_DAEMON;
    t = spawn(wait_event_fn, &gate, &o);
    cr_assert_eq(conc_thread_set_daemon(t, true), -EALREADY);
    cr_assert_not(conc_thread_daemon(t), "flag unchanged by the refused call");
    conc_event_set(&gate);
    join_ok(t);
    cr_assert_eq(conc_thread_set_daemon(t, true), -EALREADY, "after the end too");
    conc_thread_free(t);
}

Test(thread, daemon_inherited_from_creator, .timeout = 60)
{
    struct daemon_probe pd = { -1, -1, -1, -1 }, pn = { -1, -1, -1, -1 };
    conc_thread_opts o = { .daemon = CONC_DAEMON };
    conc_thread *d = spawn(probe_children_fn, &pd, &o);
    join_ok(d);
    o.daemon = CONC_NOT_DAEMON;
    conc_thread *n = spawn(probe_children_fn, &pn, &o);
    join_ok(n);

    cr_assert_eq(atomic_load(&pd.self), 1);
    cr_assert_eq(atomic_load(&pd.dflt), 1, "a daemon's child is a daemon by default");
    cr_assert_eq(atomic_load(&pd.not_daemon), 0);
    cr_assert_eq(atomic_load(&pd.daemon), 1);
    cr_assert_eq(atomic_load(&pn.self), 0);
    cr_assert_eq(atomic_load(&pn.dflt), 0, "a non-daemon's child is not a daemon by default");
    cr_assert_eq(atomic_load(&pn.not_daemon), 0);
    cr_assert_eq(atomic_load(&pn.daemon), 1);
    conc_thread_free(d);
    conc_thread_free(n);
}

/* ------------------------------------------------------------ is_alive */

static void *alive_fn(void *arg)
{
    conc_event *evs = arg;
    conc_event_set(&evs[0]);                 /* running */
    conc_event_wait(&evs[1], CONC_FOREVER);  /* until allowed to end */
    return NULL;
}

Test(thread, is_alive, .timeout = 60)
{
    conc_event evs[2] = { CONC_EVENT_INIT, CONC_EVENT_INIT };
    conc_thread *t = make(alive_fn, evs, NULL);
    cr_assert_not(conc_thread_is_alive(t), "before start");
    cr_assert_eq(conc_thread_start(t), 0);
    cr_assert(conc_thread_is_alive(t), "right after start");
    conc_event_wait(&evs[0], CONC_FOREVER);
    cr_assert(conc_thread_is_alive(t), "while running");
    conc_event_set(&evs[1]);
    join_ok(t);
    cr_assert_not(conc_thread_is_alive(t), "after join");
    conc_thread_free(t);
}

/* ------------------------------------------- freeing a running handle */

static _Atomic int detached_done;

static void *detached_fn(void *arg)
{
    conc_event *gate = arg;
    conc_event_wait(gate, CONC_FOREVER);
    /* Touch the (now caller-less) handle: it must still be ours. */
    char name[CONC_THREAD_NAME_MAX + 1];
    if (conc_thread_name(conc_thread_current(), name, sizeof name) > 0 &&
        strcmp(name, "detached") == 0)
        atomic_fetch_add(&detached_done, 1);
    return NULL;
}

static bool detached_finished(void *arg)
{
    return atomic_load(&detached_done) == *(int *)arg;
}

Test(thread, free_running_handle, .timeout = 60)
{
    static conc_event gate = CONC_EVENT_INIT;
    int base = conc_thread_active_count();
    conc_thread_opts o = { .name = "detached" };
    conc_thread *t = spawn(detached_fn, &gate, &o);
    conc_thread_free(t); /* runs on, detached */
    cr_assert_eq(conc_thread_active_count(), base + 1);
    conc_event_set(&gate);
    int want = 1;
    cr_assert(settle(detached_finished, &want), "the detached thread finished its work");
    cr_assert(settle(active_is, &base), "active_count back to %d", base);

    /* ref/free pairs keep the handle alive until the last free. */
    conc_event gate2 = CONC_EVENT_INIT;
    t = spawn(wait_event_fn, &gate2, NULL);
    cr_assert_eq(conc_thread_ref(t), t);
    conc_thread_free(t);
    cr_assert(conc_thread_is_alive(t), "one reference left");
    conc_event_set(&gate2);
    join_ok(t);
    void *res = NULL;
    cr_assert_eq(conc_thread_result(t, &res), 0);
    cr_assert_eq(res, &gate2);
    conc_thread_free(t);

    /* Freeing the handle of an ended, never-joined thread. */
    t = spawn(noop_fn, NULL, NULL);
    cr_assert(settle(active_is, &base));
    conc_thread_free(t);
}

/* ------------------------------------------------ current, main, dummy */

struct current_probe {
    conc_thread *handle;       /* set before start */
    conc_thread *seen;
    conc_thread *main_seen;
    _Atomic int alive;
};

static void *current_fn(void *arg)
{
    struct current_probe *p = arg;
    p->seen = conc_thread_current();
    p->main_seen = conc_thread_main();
    atomic_store(&p->alive, conc_thread_is_alive(p->seen));
    return NULL;
}

Test(thread, current_and_main, .timeout = 60)
{
    conc_thread *m = conc_thread_main();
    cr_assert_not_null(m);
    cr_assert_eq(conc_thread_current(), m, "current_thread() in main is main_thread()");
    cr_assert_str_eq(TNAME(m), "MainThread");
    cr_assert(conc_thread_is_alive(m));
    cr_assert(conc_thread_started(m));
    cr_assert_not(conc_thread_daemon(m));
    cr_assert_eq(conc_thread_start(m), -EALREADY, "main is already started");
    void *res;
    cr_assert_eq(conc_thread_result(m, &res), -EBUSY, "main is still running");

    struct current_probe p = { 0 };
    p.handle = make(current_fn, &p, NULL);
    cr_assert_eq(conc_thread_start(p.handle), 0);
    join_ok(p.handle);
    cr_assert_eq(p.seen, p.handle, "current_thread() inside is the thread's handle");
    cr_assert_eq(p.main_seen, m, "main_thread() is the same from any thread");
    cr_assert_eq(atomic_load(&p.alive), 1);
    conc_thread_free(p.handle);

    /* Freeing a borrowed handle is ignored. */
    conc_thread_free(conc_thread_current());
    conc_thread_free(m);
    cr_assert_eq(conc_thread_main(), m);
    cr_assert_str_eq(TNAME(m), "MainThread");
    cr_assert(conc_thread_is_alive(m));

    /* Renaming the main thread works like any other. */
    cr_assert_eq(conc_thread_set_name(m, "Boss"), 0);
    cr_assert_str_eq(TNAME(conc_thread_current()), "Boss");
}

struct foreign_probe {
    conc_thread *cur;
    conc_thread *cur_again;
    char name[CONC_THREAD_NAME_MAX + 1];
    int daemon;
    int alive;
    int started;
    uint64_t ident;
    uint64_t pself;
    pid_t native;
    pid_t tid;
    int count_before;
    int count_after;
    int enum_has_it;
};

static void *foreign_fn(void *arg)
{
    struct foreign_probe *p = arg;
    p->count_before = conc_thread_active_count();
    p->cur = conc_thread_current();
    p->count_after = conc_thread_active_count();
    p->cur_again = conc_thread_current();
    if (p->cur) {
        conc_thread_name(p->cur, p->name, sizeof p->name);
        p->daemon = conc_thread_daemon(p->cur);
        p->alive = conc_thread_is_alive(p->cur);
        p->started = conc_thread_started(p->cur);
        p->ident = conc_thread_ident(p->cur);
        p->native = conc_thread_native_id(p->cur);
        conc_thread *all[64];
        int n = conc_thread_enumerate(all, 64);
        for (int i = 0; i < n && i < 64; i++) {
            if (all[i] == p->cur)
                p->enum_has_it++;
            conc_thread_free(all[i]);
        }
    }
    p->pself = (uint64_t)(uintptr_t)pthread_self();
    p->tid = gettid();
    return NULL;
}

Test(thread, foreign_thread_gets_dummy_handle, .timeout = 60)
{
    struct foreign_probe p;
    memset(&p, 0, sizeof p);
    pthread_t pt;
    cr_assert_eq(pthread_create(&pt, NULL, foreign_fn, &p), 0);
    cr_assert_eq(pthread_join(pt, NULL), 0);
    cr_assert_not_null(p.cur);
    cr_assert_eq(p.cur_again, p.cur, "the same handle every time");
    cr_assert_neq(p.cur, conc_thread_main());
    long n;
    cr_assert(parse_numbered(p.name, "Dummy-", &n), "foreign thread named '%s'", p.name);
    cr_assert_eq(p.daemon, 1, "dummy threads are daemons");
    cr_assert_eq(p.alive, 1);
    cr_assert_eq(p.started, 1);
    cr_assert_eq(p.ident, p.pself);
    cr_assert_eq(p.native, p.tid);
    cr_assert_eq(p.count_after, p.count_before + 1, "counted once it called current()");
    cr_assert_eq(p.enum_has_it, 1, "enumerate lists it once");
}

/* A foreign thread that publishes its Dummy handle, then waits to be let go. */
struct dummy_holder {
    conc_thread *d;
    conc_event ready;
    conc_event go;
    int self_join;          /* its own join of itself */
    int same_after_free;
    char name_after_free[CONC_THREAD_NAME_MAX + 1];
};

static void *dummy_holder_fn(void *arg)
{
    struct dummy_holder *h = arg;
    h->d = conc_thread_current();
    h->self_join = conc_thread_join(h->d, 1.0);
    /* Freeing the borrowed handle (twice, even) is ignored: it stays the
     * thread's handle. */
    conc_thread_free(h->d);
    conc_thread_free(h->d);
    h->same_after_free = conc_thread_current() == h->d;
    conc_thread_name(h->d, h->name_after_free, sizeof h->name_after_free);
    conc_event_set(&h->ready);
    conc_event_wait(&h->go, CONC_FOREVER);
    return NULL;
}

Test(thread, join_dummy_fails_at_once, .timeout = 60)
{
    struct dummy_holder h = { .ready = CONC_EVENT_INIT, .go = CONC_EVENT_INIT };
    pthread_t pt;
    cr_assert_eq(pthread_create(&pt, NULL, dummy_holder_fn, &h), 0);
    cr_assert_eq(conc_event_wait(&h.ready, CONC_FOREVER), 0);
    cr_assert(conc_thread_is_alive(h.d));
    /* Python: RuntimeError "cannot join a dummy thread", at once. */
    cr_assert_eq(conc_thread_join(h.d, 5.0), -EINVAL);
    cr_assert_eq(conc_thread_join(h.d, 0), -EINVAL);
    cr_assert_eq(conc_thread_join(h.d, CONC_FOREVER), -EINVAL);
    cr_assert_eq(conc_thread_join_until(h.d, CONC_NO_DEADLINE), -EINVAL);
    cr_assert_eq(h.self_join, -EINVAL, "the dummy thread joining itself");
    cr_assert(conc_thread_is_alive(h.d), "the failed joins changed nothing");
    conc_event_set(&h.go);
    cr_assert_eq(pthread_join(pt, NULL), 0);
}

Test(thread, free_dummy_handle_is_ignored, .timeout = 60)
{
    struct dummy_holder h = { .ready = CONC_EVENT_INIT, .go = CONC_EVENT_INIT };
    int base = conc_thread_active_count();
    pthread_t pt;
    cr_assert_eq(pthread_create(&pt, NULL, dummy_holder_fn, &h), 0);
    cr_assert_eq(conc_event_wait(&h.ready, CONC_FOREVER), 0);
    cr_assert_eq(h.same_after_free, 1, "current_thread() is the same handle after free");
    long n;
    cr_assert(parse_numbered(h.name_after_free, "Dummy-", &n), "name '%s'",
              h.name_after_free);
    cr_assert(conc_thread_is_alive(h.d));
    cr_assert_eq(conc_thread_active_count(), base + 1);
    /* Freeing it from another thread is ignored too. */
    conc_thread_free(h.d);
    cr_assert(conc_thread_is_alive(h.d));
    cr_assert_str_eq(TNAME(h.d), h.name_after_free);

    /* A counted reference (enumerate) keeps the handle after the thread ended. */
    conc_thread *all[64];
    int cnt = conc_thread_enumerate(all, 64);
    cr_assert_leq(cnt, 64);
    conc_thread *ref = NULL;
    for (int i = 0; i < cnt; i++) {
        if (all[i] == h.d)
            ref = all[i];
        else
            conc_thread_free(all[i]);
    }
    cr_assert_eq(ref, h.d, "enumerate lists the dummy thread");
    conc_event_set(&h.go);
    cr_assert_eq(pthread_join(pt, NULL), 0);
    cr_assert(settle(active_is, &base), "the dummy thread left the registry");
    cr_assert_not(conc_thread_is_alive(ref));
    cr_assert_str_eq(TNAME(ref), h.name_after_free);
    conc_thread_free(ref);
}

/* --------------------------------------------- fork from another thread */

/* In a child made by fork() from this thread, checks that the thread is the
 * child's main thread.  want: the handle it must be (NULL: any), name: the
 * name it must have (NULL: any).  Returns a bit set of the failed checks. */
static int child_main_checks(conc_thread *old_main, conc_thread *want, const char *name)
{
    int bad = 0;
    conc_thread *m = conc_thread_main();
    if (want && m != want)
        bad |= 1;
    if (conc_thread_current() != m)
        bad |= 2;
    if (!conc_thread_is_alive(m))
        bad |= 4;
    if (m != old_main && conc_thread_is_alive(old_main))
        bad |= 8;
    if (conc_thread_ident(m) != conc_thread_get_ident() ||
        conc_thread_native_id(m) != gettid())
        bad |= 16;
    char buf[CONC_THREAD_NAME_MAX + 1];
    if (name && (conc_thread_name(m, buf, sizeof buf) < 0 || strcmp(buf, name) != 0))
        bad |= 32;
    conc_thread *all[8];
    int n = conc_thread_enumerate(all, 8);
    if (n != 1 || all[0] != m || conc_thread_active_count() != 1)
        bad |= 64;
    for (int i = 0; i < n && i < 8; i++)
        conc_thread_free(all[i]);
    if (m != old_main && conc_thread_join(old_main, 0) != 0)
        bad |= 128;             /* the old main thread has ended */
    return bad;
}

enum { FORK_FROM_CONC, FORK_FROM_DUMMY, FORK_FROM_FOREIGN };

struct forker {
    int how;
    conc_thread *old_main;
    pid_t pid;
};

static void *forker_fn(void *arg)
{
    struct forker *f = arg;
    conc_thread *me = f->how == FORK_FROM_FOREIGN ? NULL : conc_thread_current();
    pid_t pid = fork();
    if (pid == 0) {
        int bad;
        if (f->how == FORK_FROM_CONC)
            bad = child_main_checks(f->old_main, me, "forker");
        else if (f->how == FORK_FROM_DUMMY)
            bad = child_main_checks(f->old_main, me, "MainThread");
        else
            bad = child_main_checks(f->old_main, NULL, NULL);
        if (conc_thread_daemon(conc_thread_main()))
            bad |= f->how == FORK_FROM_CONC ? 0 : 64;   /* a new MainThread is no daemon */
        _exit(bad);
    }
    f->pid = pid;
    return NULL;
}

static void check_fork_child(struct forker *f)
{
    cr_assert_gt(f->pid, 0, "fork failed");
    int status = 0;
    cr_assert_eq(waitpid(f->pid, &status, 0), f->pid);
    cr_assert(WIFEXITED(status), "child status %#x", status);
    cr_assert_eq(WEXITSTATUS(status), 0,
                 "checks failed in the child: %#x (1 main, 2 current, 4 alive, 8 old main "
                 "alive, 16 ids, 32 name, 64 registry/daemon, 128 old main joinable)",
                 WEXITSTATUS(status));
}

Test(thread, fork_from_other_thread_makes_it_main, .timeout = 60)
{
    struct forker f = { .how = FORK_FROM_CONC, .old_main = conc_thread_main() };
    conc_thread_opts o = { .name = "forker" };
    conc_thread *t = spawn(forker_fn, &f, &o);
    join_ok(t);
    conc_thread_free(t);
    check_fork_child(&f);
    cr_assert_eq(conc_thread_main(), f.old_main, "the parent's main thread is unchanged");
    cr_assert(conc_thread_is_alive(f.old_main));
}

Test(thread, fork_from_dummy_thread_makes_it_main, .timeout = 60)
{
    struct forker f = { .how = FORK_FROM_DUMMY, .old_main = conc_thread_main() };
    pthread_t pt;
    cr_assert_eq(pthread_create(&pt, NULL, forker_fn, &f), 0);
    cr_assert_eq(pthread_join(pt, NULL), 0);
    check_fork_child(&f);
}

Test(thread, fork_from_foreign_thread_makes_it_main, .timeout = 60)
{
    struct forker f = { .how = FORK_FROM_FOREIGN, .old_main = conc_thread_main() };
    pthread_t pt;
    cr_assert_eq(pthread_create(&pt, NULL, forker_fn, &f), 0);
    cr_assert_eq(pthread_join(pt, NULL), 0);
    check_fork_child(&f);
}

/* ----------------------------------------------- active_count, enumerate */

Test(thread, active_count_and_enumerate, .timeout = 60)
{
    enum { N = 5, CAP = 64 };
    int base = conc_thread_active_count();
    cr_assert_geq(base, 1, "the main thread counts");

    conc_thread *unstarted = make(noop_fn, NULL, NULL);
    cr_assert_eq(conc_thread_active_count(), base, "an unstarted thread does not count");

    conc_event gate = CONC_EVENT_INIT;
    conc_thread *t[N];
    for (int i = 0; i < N; i++) {
        t[i] = spawn(wait_event_fn, &gate, NULL);
        cr_assert_eq(conc_thread_active_count(), base + i + 1);
    }

    conc_thread *all[CAP];
    int n = conc_thread_enumerate(all, CAP);
    cr_assert_eq(n, base + N);
    int seen[N] = { 0 }, main_seen = 0;
    for (int i = 0; i < n; i++) {
        cr_assert_not_null(all[i]);
        cr_assert_neq(all[i], unstarted);
        cr_assert(conc_thread_is_alive(all[i]));
        if (all[i] == conc_thread_main())
            main_seen++;
        for (int k = 0; k < N; k++)
            if (all[i] == t[k])
                seen[k]++;
    }
    cr_assert_eq(main_seen, 1, "MainThread listed once");
    for (int k = 0; k < N; k++)
        cr_assert_eq(seen[k], 1, "thread %d listed once", k);
    for (int i = 0; i < n; i++)
        conc_thread_free(all[i]);

    /* A short array: the count is still the full one, only cap are stored. */
    conc_thread *few[3] = { NULL, NULL, (conc_thread *)0x1 };
    cr_assert_eq(conc_thread_enumerate(few, 2), base + N);
    cr_assert_not_null(few[0]);
    cr_assert_not_null(few[1]);
    cr_assert_neq(few[0], few[1]);
    cr_assert_eq(few[2], (conc_thread *)0x1, "nothing stored past cap");
    conc_thread_free(few[0]);
    conc_thread_free(few[1]);
    cr_assert_eq(conc_thread_enumerate(NULL, 0), base + N);
    cr_assert_eq(conc_thread_enumerate(NULL, 1), -EINVAL);

    /* The references we dropped did not take the threads' handles away. */
    for (int k = 0; k < N; k++)
        cr_assert(conc_thread_is_alive(t[k]));

    conc_event_set(&gate);
    for (int k = 0; k < N; k++)
        join_ok(t[k]);
    cr_assert_eq(conc_thread_active_count(), base, "joined threads are gone");
    n = conc_thread_enumerate(all, CAP);
    cr_assert_eq(n, base);
    for (int i = 0; i < n; i++) {
        for (int k = 0; k < N; k++)
            cr_assert_neq(all[i], t[k], "a joined thread is still listed");
        conc_thread_free(all[i]);
    }
    for (int k = 0; k < N; k++)
        conc_thread_free(t[k]);
    conc_thread_free(unstarted);
}

/* ---------------------------------------------------------- stack size */

struct stack_probe {
    size_t use;             /* bytes of stack to use */
    size_t attr_size;       /* pthread_getattr_np's stack size */
    unsigned sum;
};

static __attribute__((noinline)) unsigned touch_stack(size_t n)
{
    unsigned char buf[n];
    volatile unsigned char *p = buf;
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(i * 7u);
    unsigned s = 0;
    for (size_t i = 0; i < n; i += 512)
        s += p[i];
    return s;
}

static void *stack_fn(void *arg)
{
    struct stack_probe *p = arg;
    pthread_attr_t a;
    if (pthread_getattr_np(pthread_self(), &a) == 0) {
        pthread_attr_getstacksize(&a, &p->attr_size);
        pthread_attr_destroy(&a);
    }
    p->sum = touch_stack(p->use);
    return p;
}

static unsigned expected_sum(size_t n)
{
    unsigned s = 0;
    for (size_t i = 0; i < n; i += 512)
        s += (unsigned char)(i * 7u);
    return s;
}

Test(thread, stack_size, .timeout = 60)
{
    cr_assert_eq(conc_thread_stack_size(), 0u, "default: the system's");
    cr_assert_eq(conc_thread_set_stack_size(1000), -EINVAL);
    cr_assert_eq(conc_thread_set_stack_size(CONC_THREAD_STACK_MIN - 1), -EINVAL);
    cr_assert_eq(conc_thread_stack_size(), 0u, "a refused size changes nothing");

    conc_thread *bad = NULL;
    conc_thread_opts o = { .stack_size = CONC_THREAD_STACK_MIN - 1 };
    cr_assert_eq(conc_thread_new(&bad, noop_fn, NULL, &o), -EINVAL);

    /* 64 KiB through threading.stack_size(). */
    cr_assert_eq(conc_thread_set_stack_size(64 * 1024), 0);
    cr_assert_eq(conc_thread_stack_size(), 64u * 1024u);
    struct stack_probe small = { .use = 16 * 1024 };
    conc_thread *t = spawn(stack_fn, &small, NULL);
    join_ok(t);
    cr_assert_eq(small.sum, expected_sum(small.use));
    cr_assert_geq(small.attr_size, 64u * 1024u);
    cr_assert_leq(small.attr_size, 1024u * 1024u, "got %zu, not a 64 KiB stack", small.attr_size);
    conc_thread_free(t);
    cr_assert_eq(conc_thread_set_stack_size(0), 0);
    cr_assert_eq(conc_thread_stack_size(), 0u);

    /* 4 MiB through the options, using 2 MiB of it. */
    o.stack_size = 4u * 1024u * 1024u;
    struct stack_probe big = { .use = 2u * 1024u * 1024u };
    t = spawn(stack_fn, &big, &o);
    join_ok(t);
    cr_assert_eq(big.sum, expected_sum(big.use));
    cr_assert_geq(big.attr_size, 4u * 1024u * 1024u);
    conc_thread_free(t);

    /* Exactly the minimum is accepted. */
    cr_assert_eq(conc_thread_set_stack_size(CONC_THREAD_STACK_MIN), 0);
    cr_assert_eq(conc_thread_stack_size(), (size_t)CONC_THREAD_STACK_MIN);
    cr_assert_eq(conc_thread_set_stack_size(0), 0);
}

/* --------------------------------------------------------------- local */

enum { TLS_N = 6 };

static conc_local *tls;
static conc_lock dtor_lock = CONC_LOCK_INIT;
static int dtor_calls;
static void *dtor_values[64];
static pid_t dtor_tids[64];

static void tls_dtor(void *v)
{
    conc_lock_acquire(&dtor_lock, CONC_FOREVER);
    if (dtor_calls < 64) {
        dtor_values[dtor_calls] = v;
        dtor_tids[dtor_calls] = gettid();
    }
    dtor_calls++;
    conc_lock_release(&dtor_lock);
}

static int dtor_count(void)
{
    conc_lock_acquire(&dtor_lock, CONC_FOREVER);
    int n = dtor_calls;
    conc_lock_release(&dtor_lock);
    return n;
}

struct tls_probe {
    int index;
    conc_barrier *all_set;
    int vals[2];
    void *initial;
    void *after_barrier;
    pid_t tid;
};

/* Thread 0 sets NULL, thread 1 never sets, thread 2 replaces a value, the
 * others set one value. */
static void *tls_fn(void *arg)
{
    struct tls_probe *p = arg;
    p->tid = gettid();
    p->initial = conc_local_get(tls);
    if (p->index == 0)
        conc_local_set(tls, NULL);
    else if (p->index == 2) {
        conc_local_set(tls, &p->vals[1]);
        conc_local_set(tls, &p->vals[0]);
    } else if (p->index != 1)
        conc_local_set(tls, &p->vals[0]);
    conc_barrier_wait(p->all_set, CONC_FOREVER);
    p->after_barrier = conc_local_get(tls);
    return NULL;
}

Test(thread, local_storage, .timeout = 60)
{
    cr_assert_eq(conc_local_new(NULL, NULL), -EINVAL);
    cr_assert_eq(conc_local_set(NULL, NULL), -EINVAL);
    cr_assert_eq(conc_local_new(&tls, tls_dtor), 0);
    cr_assert_null(conc_local_get(tls));
    int mine = 7;
    cr_assert_eq(conc_local_set(tls, &mine), 0);
    cr_assert_eq(conc_local_get(tls), &mine);

    conc_barrier b;
    cr_assert_eq(conc_barrier_init(&b, TLS_N, 0), 0);
    struct tls_probe p[TLS_N];
    conc_thread *t[TLS_N];
    for (int i = 0; i < TLS_N; i++) {
        memset(&p[i], 0, sizeof p[i]);
        p[i].index = i;
        p[i].all_set = &b;
        p[i].initial = (void *)0x1;
        t[i] = spawn(tls_fn, &p[i], NULL);
    }
    for (int i = 0; i < TLS_N; i++)
        join_ok(t[i]);

    /* The joins reaped the OS threads: their key destructors have all run. */
    int setters = TLS_N - 2;
    cr_assert_eq(dtor_count(), setters, "destructor ran %d times, want %d", dtor_count(),
                 setters);

    for (int i = 0; i < TLS_N; i++) {
        cr_assert_null(p[i].initial, "thread %d saw another thread's value", i);
        void *want = (i == 0 || i == 1) ? NULL : &p[i].vals[0];
        cr_assert_eq(p[i].after_barrier, want, "thread %d sees its own value", i);
        int found = 0;
        for (int k = 0; k < setters; k++) {
            if (dtor_values[k] == &p[i].vals[1])
                cr_assert_fail("thread %d: a replaced value was destroyed", i);
            if (dtor_values[k] == &p[i].vals[0]) {
                found++;
                cr_assert_eq(dtor_tids[k], p[i].tid, "destructor runs in the thread itself");
            }
        }
        cr_assert_eq(found, want ? 1 : 0, "thread %d: destructor calls", i);
        conc_thread_free(t[i]);
    }
    cr_assert_eq(conc_local_get(tls), &mine, "main's value untouched");
    cr_assert_eq(conc_local_set(tls, NULL), 0);
    conc_local_free(tls);
    conc_local_free(NULL);
    tls = NULL;
}

static void *tls_count_fn(void *arg)
{
    conc_local *l = arg;
    conc_local_set(l, (void *)0x1234);
    return NULL;
}

static _Atomic int nodtor_seen;

static void count_dtor(void *v)
{
    if (v == (void *)0x1234)
        atomic_fetch_add(&nodtor_seen, 1);
}

Test(thread, local_destructor_per_thread, .timeout = 60)
{
    enum { N = 10 };
    conc_local *l;
    cr_assert_eq(conc_local_new(&l, count_dtor), 0);
    for (int round = 0; round < N; round++) {
        conc_thread *t = spawn(tls_count_fn, l, NULL);
        join_ok(t);
        conc_thread_free(t);
    }
    /* Each join reaped the OS thread, after its key destructors ran. */
    cr_assert_eq(atomic_load(&nodtor_seen), N);
    /* A slot without destructor is fine too. */
    conc_local *plain;
    cr_assert_eq(conc_local_new(&plain, NULL), 0);
    conc_thread *t = spawn(tls_count_fn, plain, NULL);
    join_ok(t);
    conc_thread_free(t);
    conc_local_free(plain);
    conc_local_free(l);
}

/* --------------------------------------------------------------- Timer */

struct timer_probe {
    _Atomic int calls;
    _Atomic int64_t at;
};

static void *timer_fn(void *arg)
{
    struct timer_probe *p = arg;
    atomic_store(&p->at, conc_now());
    atomic_fetch_add(&p->calls, 1);
    return (void *)0xbeef;
}

Test(timer, fires_after_interval, .timeout = 60)
{
    struct timer_probe p = { 0, 0 };
    conc_thread *t;
    cr_assert_eq(conc_timer_new(&t, 0.1, timer_fn, &p, NULL), 0);
    void *res = NULL;
    cr_assert_eq(conc_thread_result(t, &res), -EBUSY);
    int64_t t0 = conc_now();
    cr_assert_eq(conc_thread_start(t), 0);
    join_ok(t);
    cr_assert_eq(atomic_load(&p.calls), 1);
    cr_assert_geq(atomic_load(&p.at) - t0, 100000000, "fired before its interval");
    cr_assert_eq(conc_thread_result(t, &res), 0);
    cr_assert_eq(res, (void *)0xbeef);
    /* Cancel after it fired: harmless. */
    cr_assert_eq(conc_timer_cancel(t), 0);
    cr_assert_eq(conc_thread_result(t, &res), 0);
    cr_assert_eq(res, (void *)0xbeef);
    cr_assert_eq(atomic_load(&p.calls), 1);
    conc_thread_free(t);

    /* Interval 0 fires at once. */
    cr_assert_eq(conc_timer_new(&t, 0, timer_fn, &p, NULL), 0);
    cr_assert_eq(conc_thread_start(t), 0);
    join_ok(t);
    cr_assert_eq(atomic_load(&p.calls), 2);
    conc_thread_free(t);
}

Test(timer, is_a_thread, .timeout = 60)
{
    struct timer_probe p = { 0, 0 };
    conc_thread_opts o = { .name = "alarm", .daemon = CONC_DAEMON };
    conc_thread *t;
    cr_assert_eq(conc_timer_new(&t, 10.0, timer_fn, &p, &o), 0);
    cr_assert_str_eq(TNAME(t), "alarm");
    cr_assert(conc_thread_daemon(t));
    int base = conc_thread_active_count();
    cr_assert_eq(conc_thread_start(t), 0);
    cr_assert(conc_thread_is_alive(t));
    cr_assert_eq(conc_thread_active_count(), base + 1);
    cr_assert_eq(conc_thread_start(t), -EALREADY);
    cr_assert_eq(conc_thread_join(t, 0.02), -ETIMEDOUT, "waiting out its interval");
    cr_assert_eq(conc_timer_cancel(t), 0);
    join_ok(t);
    cr_assert_eq(atomic_load(&p.calls), 0);
    conc_thread_free(t);
}

Test(timer, cancel_before_fire, .timeout = 60)
{
    struct timer_probe p = { 0, 0 };
    conc_thread *t;
    cr_assert_eq(conc_timer_new(&t, 10.0, timer_fn, &p, NULL), 0);
    cr_assert_eq(conc_thread_start(t), 0);
    cr_assert_eq(conc_timer_cancel(t), 0);
    cr_assert_eq(conc_timer_cancel(t), 0, "cancel twice");
    join_ok(t); /* well before its 10 s */
    cr_assert_eq(atomic_load(&p.calls), 0, "a cancelled timer never calls fn");
    void *res = (void *)1;
    cr_assert_eq(conc_thread_result(t, &res), 0);
    cr_assert_null(res, "a cancelled timer's result is NULL");
    conc_thread_free(t);
}

Test(timer, cancel_before_start, .timeout = 60)
{
    struct timer_probe p = { 0, 0 };
    conc_thread *t;
    cr_assert_eq(conc_timer_new(&t, 0.01, timer_fn, &p, NULL), 0);
    cr_assert_eq(conc_timer_cancel(t), 0);
    cr_assert_eq(conc_thread_start(t), 0);
    join_ok(t);     /* the thread is gone: it would have called fn by now */
    cr_assert_eq(atomic_load(&p.calls), 0);
    void *res = (void *)1;
    cr_assert_eq(conc_thread_result(t, &res), 0);
    cr_assert_null(res);
    conc_thread_free(t);
}

Test(timer, errors, .timeout = 60)
{
    conc_thread *t = NULL;
    struct timer_probe p = { 0, 0 };
    cr_assert_eq(conc_timer_new(&t, -0.5, timer_fn, &p, NULL), -EINVAL);
    cr_assert_eq(conc_timer_new(&t, -1.0, timer_fn, &p, NULL), -EINVAL, "no FOREVER for a timer");
    cr_assert_eq(conc_timer_new(&t, NAN, timer_fn, &p, NULL), -EINVAL);
    cr_assert_eq(conc_timer_new(NULL, 1.0, timer_fn, &p, NULL), -EINVAL);
    cr_assert_eq(conc_timer_new(&t, 1.0, NULL, &p, NULL), -EINVAL);
    cr_assert_eq(conc_timer_cancel(NULL), -EINVAL);
    conc_thread *plain = make(noop_fn, NULL, NULL);
    cr_assert_eq(conc_timer_cancel(plain), -EINVAL, "not a timer");
    conc_thread_free(plain);
    cr_assert_eq(conc_timer_cancel(conc_thread_main()), -EINVAL);
    cr_assert_eq(atomic_load(&p.calls), 0);
}

/* -------------------------------------------------- exit-time joining */

/*
 * Each scenario runs in a fresh process: the test forks and executes this
 * very binary again with CONC_TEST_EXIT_CHILD=<scenario>:<fd> in its
 * environment; the constructor below sees it before Criterion's main, starts
 * the threads, returns, and calls exit(0).  The threads report through the
 * pipe <fd>.  (A plain fork of the test process would not do: the Criterion
 * worker is multi-threaded, and TSan refuses new threads after such a fork.)
 */
#define EXIT_CHILD_ENV "CONC_TEST_EXIT_CHILD"

struct exit_arg {
    int fd;
    conc_event started;
};

static struct exit_arg child_arg;

/* Reports only once the main thread sleeps (in the exit-time join), so the
 * test cannot pass with a thread that ended before exit. */
static void *nondaemon_writer(void *arg)
{
    struct exit_arg *a = arg;
    if (!await_task_blocked(getpid(), getpid(), BLOCKED_GUARD))
        _exit(4);
    if (write(a->fd, "J", 1) != 1)
        _exit(3);
    return NULL;
}

static void *daemon_blocker(void *arg)
{
    struct exit_arg *a = arg;
    static conc_event never = CONC_EVENT_INIT;
    if (write(a->fd, "S", 1) != 1)
        _exit(3);
    conc_event_set(&a->started);
    conc_event_wait(&never, CONC_FOREVER);
    return NULL;
}

/* Starts the requested threads, frees their handles and returns. */
static void child_start(int fd, bool with_daemon, bool with_nondaemon)
{
    conc_thread *t;
    child_arg.fd = fd;
    conc_event_init(&child_arg.started, 0);
    if (with_daemon) {
        conc_thread_opts o = { .daemon = CONC_DAEMON };
        if (conc_thread_new(&t, daemon_blocker, &child_arg, &o) || conc_thread_start(t))
            _exit(5);
        conc_thread_free(t);
        conc_event_wait(&child_arg.started, CONC_FOREVER);
    }
    if (with_nondaemon) {
        if (conc_thread_new(&t, nondaemon_writer, &child_arg, NULL) || conc_thread_start(t))
            _exit(6);
        conc_thread_free(t);
    }
}

/* A non-daemon thread that joins the main thread: 'M' once the join
 * returned 0 with main ended. */
static void *main_joiner(void *arg)
{
    struct exit_arg *a = arg;
    conc_thread *m = conc_thread_main();
    conc_event_set(&a->started);
    int rc = conc_thread_join(m, CONC_FOREVER);
    char c = rc == 0 && !conc_thread_is_alive(m) ? 'M' : 'x';
    if (write(a->fd, &c, 1) != 1)
        _exit(3);
    return NULL;
}

static void child_join_main(int fd)
{
    conc_thread *t;
    child_arg.fd = fd;
    conc_event_init(&child_arg.started, 0);
    if (conc_thread_new(&t, main_joiner, &child_arg, NULL) || conc_thread_start(t))
        _exit(6);
    conc_thread_free(t);
    conc_event_wait(&child_arg.started, CONC_FOREVER);
    /* Main joining itself is still refused. */
    if (conc_thread_join(conc_thread_main(), 0) != -EDEADLK)
        _exit(8);
}

__attribute__((constructor)) static void exit_child_main(void)
{
    const char *spec = getenv(EXIT_CHILD_ENV);
    if (!spec)
        return;
    char kind[16];
    int fd;
    if (sscanf(spec, "%15[^:]:%d", kind, &fd) != 2)
        _exit(7);
    if (strcmp(kind, "joinmain") == 0) {
        child_join_main(fd);
        exit(0); /* main is done now: the joiner's join returns, then it is joined */
    }
    bool d = strcmp(kind, "daemon") == 0 || strcmp(kind, "both") == 0;
    bool n = strcmp(kind, "nondaemon") == 0 || strcmp(kind, "both") == 0;
    child_start(fd, d, n);
    exit(0); /* conc must join the non-daemon thread here */
}

/* Reads one byte with a hang guard: 1 and the byte, 0 at EOF, -1 on timeout. */
static int read_byte(int fd, char *c)
{
    struct pollfd pfd = { .fd = fd, .events = POLLIN };
    int r = poll(&pfd, 1, 20000);
    if (r <= 0)
        return -1;
    ssize_t n = read(fd, c, 1);
    return n == 1 ? 1 : 0;
}

/* waitpid with a hang guard: the child is killed when it does not exit. */
static int wait_child(pid_t pid)
{
    int status = 0;
    for (int i = 0; i < 4000; i++) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return status;
        usleep(5000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    cr_assert_fail("the child process did not exit (hung at exit?)");
    return status;
}

extern char **environ;

static pid_t spawn_child(int fds[2], const char *kind)
{
    cr_assert_eq(pipe(fds), 0);
    /* The environment of the child, built before fork. */
    size_t n = 0;
    while (environ[n])
        n++;
    char **envp = calloc(n + 2, sizeof *envp);
    cr_assert_not_null(envp);
    static char spec[64];
    snprintf(spec, sizeof spec, EXIT_CHILD_ENV "=%s:%d", kind, fds[1]);
    envp[0] = spec;
    memcpy(envp + 1, environ, n * sizeof *envp);
    char *argv[] = { "test_thread-exit-child", NULL };

    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        close(fds[0]);
        execve("/proc/self/exe", argv, envp);
        _exit(127);
    }
    free(envp);
    close(fds[1]);
    return pid;
}

Test(exit, joins_non_daemon_threads, .timeout = 60)
{
    int fds[2];
    pid_t pid = spawn_child(fds, "nondaemon");
    char c = 0;
    cr_assert_eq(read_byte(fds[0], &c), 1, "the non-daemon thread was killed at exit");
    cr_assert_eq(c, 'J');
    cr_assert_eq(read_byte(fds[0], &c), 0, "EOF after the child exits");
    int st = wait_child(pid);
    cr_assert(WIFEXITED(st), "child status %#x", st);
    cr_assert_eq(WEXITSTATUS(st), 0);
    close(fds[0]);
}

Test(exit, does_not_wait_for_daemon_threads, .timeout = 60)
{
    int fds[2];
    pid_t pid = spawn_child(fds, "daemon");
    char c = 0;
    cr_assert_eq(read_byte(fds[0], &c), 1);
    cr_assert_eq(c, 'S', "the daemon thread ran");
    int st = wait_child(pid);
    cr_assert(WIFEXITED(st), "child status %#x", st);
    cr_assert_eq(WEXITSTATUS(st), 0);
    cr_assert_eq(read_byte(fds[0], &c), 0, "the daemon thread died with the process");
    close(fds[0]);
}

Test(exit, joins_only_non_daemon_threads, .timeout = 60)
{
    int fds[2];
    pid_t pid = spawn_child(fds, "both");
    char c = 0;
    cr_assert_eq(read_byte(fds[0], &c), 1);
    cr_assert_eq(c, 'S');
    cr_assert_eq(read_byte(fds[0], &c), 1, "the non-daemon thread was killed at exit");
    cr_assert_eq(c, 'J');
    int st = wait_child(pid);
    cr_assert(WIFEXITED(st), "child status %#x", st);
    cr_assert_eq(WEXITSTATUS(st), 0);
    cr_assert_eq(read_byte(fds[0], &c), 0);
    close(fds[0]);
}

/* Python's test_1_join_on_shutdown: a non-daemon thread joins the main
 * thread; the process must still exit. */
Test(exit, thread_joining_main_does_not_hang_exit, .timeout = 60)
{
    int fds[2];
    pid_t pid = spawn_child(fds, "joinmain");
    int st = wait_child(pid);
    cr_assert(WIFEXITED(st), "child status %#x", st);
    cr_assert_eq(WEXITSTATUS(st), 0);
    char c = 0;
    cr_assert_eq(read_byte(fds[0], &c), 1, "the joiner never reported");
    cr_assert_eq(c, 'M', "join(main) failed or main still alive");
    close(fds[0]);
}

/* A main thread that ends with pthread_exit ends the joins of it too.  It
 * runs in a fork child, whose forking thread is its main thread (a
 * constructor cannot call pthread_exit); TSan does not allow new threads in
 * such a child, so the TSan build skips it. */
#if defined(__SANITIZE_THREAD__)
#define NO_THREADS_AFTER_FORK true
#else
#define NO_THREADS_AFTER_FORK false
#endif

Test(exit, main_ending_with_pthread_exit_ends_joins_of_it, .timeout = 60,
     .disabled = NO_THREADS_AFTER_FORK)
{
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        close(fds[0]);
        child_join_main(fds[1]);
        pthread_exit(NULL); /* the process lives on until the joiner ends */
    }
    close(fds[1]);
    int st = wait_child(pid);
    cr_assert(WIFEXITED(st), "child status %#x", st);
    cr_assert_eq(WEXITSTATUS(st), 0);
    char c = 0;
    cr_assert_eq(read_byte(fds[0], &c), 1, "the joiner never reported");
    cr_assert_eq(c, 'M', "join(main) failed or main still alive");
    close(fds[0]);
}

/* ------------------------------------------------------------- no leak */

struct task_goal {
    int want;
};

static bool tasks_back(void *arg)
{
    return count_tasks() <= ((struct task_goal *)arg)->want;
}

static bool tasks_stable(void *arg)
{
    int *last = arg;
    int now = count_tasks();
    bool same = now == *last;
    *last = now;
    return same;
}

Test(thread, no_thread_leak, .timeout = 60)
{
    enum { BATCH = 16, ROUNDS = 4 };
    /* Warm up: the first thread may bring helpers of the runtime along
     * (a sanitizer's background thread, for example). */
    conc_thread *w = spawn(noop_fn, NULL, NULL);
    join_ok(w);
    conc_thread_free(w);
    int last = -1;
    settle(tasks_stable, &last);
    conc_sleep(0.05);
    settle(tasks_stable, &last);
    int base_tasks = count_tasks();
    int base_active = conc_thread_active_count();

    for (int r = 0; r < ROUNDS; r++) {
        conc_event gate = CONC_EVENT_INIT;
        conc_thread *t[BATCH];
        for (int i = 0; i < BATCH; i++)
            t[i] = spawn(wait_event_fn, &gate, NULL);
        cr_assert_geq(count_tasks(), base_tasks + BATCH);
        conc_event_set(&gate);
        for (int i = 0; i < BATCH; i++) {
            join_ok(t[i]);
            conc_thread_free(t[i]);
        }
        /* Sequential start/join and a freed, never-joined thread. */
        for (int i = 0; i < 4; i++) {
            conc_thread *s = spawn(noop_fn, NULL, NULL);
            join_ok(s);
            conc_thread_free(s);
        }
        conc_thread_free(spawn(noop_fn, NULL, NULL));
    }
    struct task_goal g = { base_tasks };
    cr_assert(settle(tasks_back, &g), "%d OS threads left, %d before", count_tasks(), base_tasks);
    cr_assert_eq(count_tasks(), base_tasks);
    cr_assert(settle(active_is, &base_active));
}

static void *return_arg(void *arg)
{
    return arg;
}

/* The options struct can grow: size 0 is the first version, INIT fills
 * size, and a size that stops before the name leaves the default name. */
Test(thread, options_size, .timeout = 60)
{
    char name[64];
    conc_thread *t;
    cr_assert_eq(conc_thread_new(&t, return_arg, NULL, &(conc_thread_opts){ .name = "w" }), 0);
    cr_assert_eq(conc_thread_name(t, name, sizeof name), 1);
    cr_assert_str_eq(name, "w");
    conc_thread_free(t);

    conc_thread_opts o = CONC_THREAD_OPTS_INIT;
    cr_assert_eq(o.size, sizeof(conc_thread_opts));
    o.name = "v";
    cr_assert_eq(conc_thread_new(&t, return_arg, NULL, &o), 0);
    cr_assert_eq(conc_thread_name(t, name, sizeof name), 1);
    cr_assert_str_eq(name, "v");
    conc_thread_free(t);

    o.size = (uint32_t)offsetof(conc_thread_opts, name);
    cr_assert_eq(conc_thread_new(&t, return_arg, NULL, &o), 0);
    cr_assert_gt(conc_thread_name(t, name, sizeof name), 7);
    cr_assert_eq(strncmp(name, "Thread-", 7), 0, "got %s", name);
    conc_thread_free(t);
}
