/*
 * test_coro.c - conc/coro.h: greenlet-style switching with values, return
 * to the parent, nesting, errors (dead, foreign, running), per-thread main
 * coroutines, floating-point control state per coroutine, the stack pool at
 * scale (reuse, memory released), and stack overflow reports (guard page and
 * canary zone, checked in forked children).
 *
 * Criterion runs every test in its own process.  Assertions are made on the
 * test's main coroutine only: coroutines record what they saw (a log of
 * events, values) and the test checks it after switching back.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <fenv.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conc.h"
#include "support/overflow.h"

#include "support/sanitized.h"

/* ------------------------------------------------------------ helpers */

static conc_coro *make(conc_coro_fn fn, void *arg, const conc_coro_opts *o)
{
    conc_coro *c = NULL;
    int rc = conc_coro_new(&c, fn, arg, o);
    cr_assert_eq(rc, 0, "conc_coro_new: %s", conc_errname(rc));
    cr_assert_not_null(c);
    return c;
}

static void *sw(conc_coro *to, void *v)
{
    void *out = (void *)-1;
    int rc = conc_coro_switch(to, v, &out);
    cr_assert_eq(rc, 0, "conc_coro_switch: %s", conc_errname(rc));
    return out;
}

/* An event log shared by the coroutines of one test. */
static char logbuf[256];
static size_t logn;

static void note(char ch)
{
    if (logn < sizeof logbuf - 1)
        logbuf[logn++] = ch;
    logbuf[logn] = '\0';
}

static void log_reset(void)
{
    logn = 0;
    logbuf[0] = '\0';
}

/* Inside a coroutine: switch, and stop the process on an error (Criterion's
 * assertions must not run on a coroutine stack). */
static void *csw(conc_coro *to, void *v)
{
    void *out = NULL;
    int rc = conc_coro_switch(to, v, &out);
    if (rc != 0) {
        fprintf(stderr, "conc_coro_switch inside a coroutine: %s\n", conc_errname(rc));
        abort();
    }
    return out;
}

static long rss_kib(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, res = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &size, &res) != 2)
            res = 0;
        fclose(f);
    }
    return res * (sysconf(_SC_PAGESIZE) / 1024);
}

/* ---------------------------------------------- switching with values */

static conc_coro *ping_main;

/* Receives 1 as its start value; answers each value v with v * 10, three
 * times, then returns 99. */
static void *pong_fn(void *arg, void *value)
{
    uintptr_t v = (uintptr_t)value;
    note(arg == &ping_main ? 'a' : '?');
    for (int i = 0; i < 3; i++) {
        note((char)('0' + v));
        v = (uintptr_t)csw(ping_main, (void *)(v * 10));
    }
    note('z');
    return (void *)99;
}

Test(coro, pingpong_values_and_order, .timeout = 30)
{
    log_reset();
    ping_main = conc_coro_main();
    cr_assert_not_null(ping_main);
    cr_assert_eq(conc_coro_current(), ping_main);
    conc_coro *c = make(pong_fn, &ping_main, NULL);
    cr_assert_not(conc_coro_started(c));
    cr_assert_not(conc_coro_dead(c));

    note('M');
    cr_assert_eq((uintptr_t)sw(c, (void *)1), 10);
    cr_assert(conc_coro_started(c));
    note('M');
    cr_assert_eq((uintptr_t)sw(c, (void *)2), 20);
    note('M');
    cr_assert_eq((uintptr_t)sw(c, (void *)3), 30);
    note('M');
    cr_assert_eq((uintptr_t)sw(c, (void *)4), 99, "the return value goes to the parent");
    note('M');
    cr_assert_str_eq(logbuf, "Ma1M2M3MzM");
    cr_assert(conc_coro_dead(c));
    void *res = NULL;
    cr_assert_eq(conc_coro_result(c, &res), 0);
    cr_assert_eq((uintptr_t)res, 99);
    cr_assert_eq(conc_coro_switch(c, NULL, NULL), -EPIPE, "switching to a dead coroutine");
    cr_assert_eq(conc_coro_current(), ping_main);
    cr_assert_eq(conc_coro_free(c), 0);
}

static void *self_fn(void *arg, void *value)
{
    (void)value;
    conc_coro **slot = arg;
    *slot = conc_coro_current();
    return conc_coro_main();
}

Test(coro, current_main_parent_name, .timeout = 30)
{
    conc_coro *seen = NULL;
    conc_coro_opts o = { .name = "worker-with-a-rather-long-name-that-is-cut" };
    conc_coro *c = make(self_fn, &seen, &o);
    cr_assert_str_eq(conc_coro_name(c), "worker-with-a-rather-long-name-");
    cr_assert_eq(strlen(conc_coro_name(c)), CONC_CORO_NAME_MAX);
    /* The options can grow: a size that does not cover the name leaves
     * the default name; CONC_CORO_OPTS_INIT covers every field. */
    conc_coro_opts part = CONC_CORO_OPTS_INIT;
    part.name = "named";
    conc_coro *whole = make(self_fn, &seen, &part);
    cr_assert_str_eq(conc_coro_name(whole), "named");
    part.size = offsetof(conc_coro_opts, name);
    conc_coro *cut = make(self_fn, &seen, &part);
    cr_assert(strncmp(conc_coro_name(cut), "Coro-", 5) == 0, "%s", conc_coro_name(cut));
    cr_assert_eq(conc_coro_free(whole), 0);
    cr_assert_eq(conc_coro_free(cut), 0);
    cr_assert_str_eq(conc_coro_name(conc_coro_main()), "main");
    cr_assert_eq(conc_coro_parent(c), conc_coro_main());
    cr_assert_null(conc_coro_parent(conc_coro_main()));
    cr_assert(conc_coro_started(conc_coro_main()));
    cr_assert_not(conc_coro_dead(conc_coro_main()));
    cr_assert_eq(conc_coro_stack_size(conc_coro_main()), 0);
    cr_assert_geq(conc_coro_stack_size(c), CONC_CORO_STACK_DEFAULT);

    void *r = sw(c, NULL);
    cr_assert_eq(seen, c, "conc_coro_current inside the coroutine is its handle");
    cr_assert_eq(r, conc_coro_main(), "conc_coro_main inside a coroutine is the thread's main");
    cr_assert_eq(conc_coro_free(c), 0);

    /* Default names are Coro-N; switching to oneself returns the value. */
    conc_coro *d = make(self_fn, &seen, NULL);
    cr_assert_eq(strncmp(conc_coro_name(d), "Coro-", 5), 0, "%s", conc_coro_name(d));
    void *out = NULL;
    cr_assert_eq(conc_coro_switch(conc_coro_main(), (void *)7, &out), 0);
    cr_assert_eq((uintptr_t)out, 7);
    cr_assert_eq(conc_coro_switch(conc_coro_current(), (void *)8, NULL), 0);
    cr_assert_eq(conc_coro_free(d), 0, "a never-started coroutine is freed as is");
    cr_assert_str_eq(conc_coro_name(NULL), "");
}

/* ------------------------------------------------------------ nesting */

static conc_coro *outer_c, *inner_c;

/* inner: started by outer with 5; switches to main with 6; when resumed
 * with v, returns v + 1 (to its parent, outer). */
static void *inner_fn(void *arg, void *value)
{
    (void)arg;
    note('i');
    uintptr_t v = (uintptr_t)csw(conc_coro_main(), (void *)((uintptr_t)value + 1));
    note('j');
    return (void *)(v + 1);
}

/* outer: creates inner (its parent is outer) and starts it; receives
 * inner's return value, returns it + 100 to main. */
static void *outer_fn(void *arg, void *value)
{
    (void)arg;
    (void)value;
    note('o');
    if (conc_coro_new(&inner_c, inner_fn, NULL, NULL) != 0)
        abort();
    uintptr_t r = (uintptr_t)csw(inner_c, (void *)5);
    note('p');
    return (void *)(r + 100);
}

Test(coro, nested_return_goes_to_creator, .timeout = 30)
{
    log_reset();
    outer_c = make(outer_fn, NULL, NULL);
    cr_assert_eq((uintptr_t)sw(outer_c, NULL), 6, "inner switched to main directly");
    cr_assert_eq(conc_coro_parent(inner_c), outer_c);
    cr_assert_eq(conc_coro_parent(outer_c), conc_coro_main());
    cr_assert_str_eq(logbuf, "oi");
    /* Resume inner from main: its return goes to outer (its parent), whose
     * return comes to main. */
    cr_assert_eq((uintptr_t)sw(inner_c, (void *)40), 141);
    cr_assert_str_eq(logbuf, "oijp");
    cr_assert(conc_coro_dead(inner_c));
    cr_assert(conc_coro_dead(outer_c));
    cr_assert_eq(conc_coro_free(inner_c), 0);
    cr_assert_eq(conc_coro_free(outer_c), 0);
}

/* A coroutine whose parent died returns to the parent's parent. */
static void *make_child_and_die(void *arg, void *value)
{
    (void)value;
    if (conc_coro_new((conc_coro **)arg, inner_fn, NULL, NULL) != 0)
        abort();
    csw(*(conc_coro **)arg, (void *)1);     /* inner switches to main */
    return (void *)1000;
}

Test(coro, dead_parent_is_skipped, .timeout = 30)
{
    log_reset();
    conc_coro *child = NULL;
    conc_coro *a = make(make_child_and_die, &child, NULL);
    cr_assert_eq((uintptr_t)sw(a, NULL), 2);        /* from inner: value + 1 */
    cr_assert_eq(conc_coro_parent(child), a);
    cr_assert_eq((uintptr_t)sw(a, NULL), 1000);     /* a returns to main */
    cr_assert(conc_coro_dead(a));
    /* child's parent a is dead: child's return goes to main. */
    cr_assert_eq((uintptr_t)sw(child, (void *)7), 8);
    cr_assert(conc_coro_dead(child));
    cr_assert_eq(conc_coro_free(a), 0);
    cr_assert_eq(conc_coro_free(child), 0);
}

/* A freed (killed) parent is dead too, and stays valid as a parent. */
Test(coro, freed_parent_is_skipped, .timeout = 30)
{
    log_reset();
    conc_coro *child = NULL;
    conc_coro *a = make(make_child_and_die, &child, NULL);
    cr_assert_eq((uintptr_t)sw(a, NULL), 2);
    cr_assert_eq(conc_coro_free(a), 0, "freeing a suspended coroutine kills it");
    cr_assert_eq((uintptr_t)sw(child, (void *)20), 21);
    cr_assert_eq(conc_coro_free(child), 0);
}

static void *ret_value(void *arg, void *value)
{
    return (void *)((uintptr_t)arg + (uintptr_t)value);
}

Test(coro, set_parent, .timeout = 30)
{
    conc_coro *a = make(ret_value, (void *)1, NULL);
    conc_coro *b = make(ret_value, (void *)10, NULL);
    cr_assert_eq(conc_coro_set_parent(a, b), 0);
    cr_assert_eq(conc_coro_parent(a), b);
    cr_assert_eq(conc_coro_set_parent(b, a), -EINVAL, "cycle");
    cr_assert_eq(conc_coro_set_parent(b, b), -EINVAL, "cycle of one");
    cr_assert_eq(conc_coro_set_parent(conc_coro_main(), a), -EINVAL, "main has no parent");
    cr_assert_eq(conc_coro_set_parent(NULL, a), -EINVAL);
    cr_assert_eq(conc_coro_set_parent(a, NULL), -EINVAL);
    /* a returns 1 + 5 to b, which has not started: b starts with it and
     * returns 10 + 6 to main. */
    cr_assert_eq((uintptr_t)sw(a, (void *)5), 16);
    cr_assert(conc_coro_dead(a));
    cr_assert(conc_coro_dead(b));
    cr_assert_eq(conc_coro_free(b), 0, "b's object lives on as a's parent");
    cr_assert_eq(conc_coro_free(a), 0);
}

/* ------------------------------------------------------------- errors */

static void *free_self(void *arg, void *value)
{
    (void)value;
    *(int *)arg = conc_coro_free(conc_coro_current());
    return NULL;
}

Test(coro, bad_arguments_and_states, .timeout = 30)
{
    conc_coro *c = NULL;
    cr_assert_eq(conc_coro_new(NULL, ret_value, NULL, NULL), -EINVAL);
    cr_assert_eq(conc_coro_new(&c, NULL, NULL, NULL), -EINVAL);
    conc_coro_opts small = { .stack_size = CONC_CORO_STACK_MIN - 1 };
    cr_assert_eq(conc_coro_new(&c, ret_value, NULL, &small), -EINVAL);
    conc_coro_opts big = { .stack_size = CONC_CORO_STACK_MAX + 1 };
    cr_assert_eq(conc_coro_new(&c, ret_value, NULL, &big), -EINVAL);
    cr_assert_null(c);
    cr_assert_eq(conc_coro_switch(NULL, NULL, NULL), -EINVAL);
    cr_assert_eq(conc_coro_free(NULL), 0);
    cr_assert_eq(conc_coro_free(conc_coro_main()), -EINVAL);
    cr_assert_eq(conc_coro_result(NULL, NULL), -EINVAL);
    cr_assert_not(conc_coro_dead(NULL));
    cr_assert_not(conc_coro_started(NULL));
    cr_assert_null(conc_coro_parent(NULL));
    cr_assert_eq(conc_coro_get_stats(NULL), -EINVAL);

    conc_coro_opts odd = { .stack_size = CONC_CORO_STACK_MIN + 1 };
    c = make(ret_value, (void *)1, &odd);
    cr_assert_eq(conc_coro_stack_size(c) % (size_t)sysconf(_SC_PAGESIZE), 0, "rounded to pages");
    cr_assert_gt(conc_coro_stack_size(c), CONC_CORO_STACK_MIN);
    void *res;
    cr_assert_eq(conc_coro_result(c, &res), -EBUSY, "not started");
    cr_assert_eq((uintptr_t)sw(c, (void *)2), 3);
    cr_assert_eq(conc_coro_result(c, &res), 0);
    cr_assert_eq(conc_coro_switch(c, NULL, NULL), -EPIPE);
    cr_assert_eq(conc_coro_free(c), 0);

    int rc = 1;
    c = make(free_self, &rc, NULL);
    sw(c, NULL);
    cr_assert_eq(rc, -EBUSY, "a running coroutine cannot be freed");
    cr_assert_eq(conc_coro_free(c), 0);
}

/* A coroutine of another thread cannot be switched to, nor made a parent. */
struct foreign {
    conc_coro *theirs;      /* created by the other thread */
    conc_coro *mine;        /* created by the test thread */
    int rc_switch, rc_parent, rc_parent2, rc_main_switch;
    conc_coro *their_main;
};

static void *foreign_thread(void *arg)
{
    struct foreign *f = arg;
    f->rc_switch = conc_coro_switch(f->mine, NULL, NULL);
    if (conc_coro_new(&f->theirs, ret_value, NULL, NULL) != 0)
        abort();
    f->rc_parent = conc_coro_set_parent(f->theirs, f->mine);
    f->rc_parent2 = conc_coro_set_parent(f->mine, f->theirs);
    f->their_main = conc_coro_main();
    f->rc_main_switch = conc_coro_switch(f->their_main, (void *)1, NULL);
    return NULL;
}

Test(coro, foreign_thread_is_eperm, .timeout = 30)
{
    struct foreign f = { 0 };
    f.mine = make(ret_value, NULL, NULL);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, foreign_thread, &f), 0);
    cr_assert_eq(pthread_join(th, NULL), 0);
    cr_assert_eq(f.rc_switch, -EPERM);
    cr_assert_eq(f.rc_parent, -EPERM);
    cr_assert_eq(f.rc_parent2, -EPERM);
    cr_assert_eq(f.rc_main_switch, 0, "a thread switching to its own main is a no-op");
    cr_assert_neq(f.their_main, conc_coro_main(), "each thread has its own main coroutine");
    /* The other thread has ended: its coroutine is still a valid handle. */
    cr_assert_eq(conc_coro_switch(f.theirs, NULL, NULL), -EPERM);
    cr_assert_not(conc_coro_started(f.theirs));
    cr_assert_eq(conc_coro_free(f.theirs), 0, "freed from another thread after its own ended");
    cr_assert_eq(conc_coro_free(f.mine), 0);
}

/* ------------------------------------------- lock owner per coroutine */

/* The lock-owner identity (what an RLock records) is the running
 * coroutine's: every switch changes it, the fast one included, and a
 * thread that never made a coroutine has its own. */
struct owned {
    conc_rlock *l;
    conc_coro *back;
    int acquired, owned_in_a, released_in_b, owned_in_b, owned_again, depth_again, released;
};

static void *owner_a(void *arg, void *value)
{
    (void)value;
    struct owned *o = arg;
    o->acquired = conc_rlock_acquire(o->l, 0);
    o->owned_in_a = conc_rlock_is_owned(o->l);
    csw(o->back, NULL);                             /* to main */
    o->owned_again = conc_rlock_is_owned(o->l);
    o->depth_again = (int)conc_rlock_depth(o->l);
    o->released = conc_rlock_release(o->l);
    return NULL;
}

static void *owner_b(void *arg, void *value)
{
    (void)value;
    struct owned *o = arg;
    o->owned_in_b = conc_rlock_is_owned(o->l);
    o->released_in_b = conc_rlock_release(o->l);
    return NULL;
}

static void *plain_thread_owns(void *arg)
{
    conc_rlock *l = arg;
    /* No coroutine state in this thread: its identity is the thread's. */
    intptr_t bad = conc_rlock_acquire(l, 0) != 0 || !conc_rlock_is_owned(l)
                   || conc_rlock_release(l) != 0 || conc_rlock_is_owned(l);
    return (void *)bad;
}

Test(coro, lock_owner_follows_the_running_coroutine, .timeout = 30)
{
    conc_rlock l;
    cr_assert_eq(conc_rlock_init(&l, 0), 0);
    struct owned o = { .l = &l, .back = conc_coro_main(),
                       .owned_in_b = -1, .released_in_b = 1, .owned_again = -1 };
    conc_coro *a = make(owner_a, &o, NULL), *b = make(owner_b, &o, NULL);
    sw(a, NULL);
    cr_assert_eq(o.acquired, 0);
    cr_assert_eq(o.owned_in_a, 1);
    cr_assert_not(conc_rlock_is_owned(&l), "main is not the coroutine that took it");
    cr_assert_eq(conc_rlock_release(&l), -EPERM);
    sw(b, NULL);
    cr_assert_eq(o.owned_in_b, 0, "another coroutine of the thread does not own it");
    cr_assert_eq(o.released_in_b, -EPERM);
    sw(a, NULL);
    cr_assert_eq(o.owned_again, 1, "the owner again once it runs again");
    cr_assert_eq(o.depth_again, 1);
    cr_assert_eq(o.released, 0);
    cr_assert(conc_coro_dead(a) && conc_coro_dead(b));
    /* A thread without coroutine state. */
    pthread_t th;
    void *bad = (void *)1;
    cr_assert_eq(pthread_create(&th, NULL, plain_thread_owns, &l), 0);
    cr_assert_eq(pthread_join(th, &bad), 0);
    cr_assert_null(bad);
    cr_assert_eq(conc_coro_free(a), 0);
    cr_assert_eq(conc_coro_free(b), 0);
}

/* ------------------------------------------- many threads at once */

#define THREADS 4

struct tjob {
    long rounds;
    long sum;
    int errors;
};

static void *echo_plus_one(void *arg, void *value)
{
    conc_coro *parent = arg;
    uintptr_t v = (uintptr_t)value;
    for (;;) {
        if (v == 0)
            return (void *)7;
        v = (uintptr_t)csw(parent, (void *)(v + 1));
    }
}

static void *thread_pingpong(void *arg)
{
    struct tjob *j = arg;
    conc_coro *me = conc_coro_main();
    conc_coro *c[3];
    for (int k = 0; k < 3; k++)
        if (conc_coro_new(&c[k], echo_plus_one, me, NULL) != 0)
            j->errors++;
    for (long i = 1; i <= j->rounds; i++) {
        for (int k = 0; k < 3; k++) {
            void *out = NULL;
            if (conc_coro_switch(c[k], (void *)(uintptr_t)i, &out) != 0
                || (uintptr_t)out != (uintptr_t)i + 1)
                j->errors++;
            j->sum += (long)(uintptr_t)out;
        }
    }
    for (int k = 0; k < 3; k++) {
        void *out = NULL;
        if (conc_coro_switch(c[k], NULL, &out) != 0 || (uintptr_t)out != 7 || !conc_coro_dead(c[k]))
            j->errors++;
        conc_coro_free(c[k]);
    }
    if (conc_coro_current() != me)
        j->errors++;
    return NULL;
}

Test(coro, several_threads_at_once, .timeout = 30)
{
    pthread_t th[THREADS];
    struct tjob j[THREADS];
    long rounds = 20000;
    for (int i = 0; i < THREADS; i++) {
        j[i] = (struct tjob){ .rounds = rounds };
        cr_assert_eq(pthread_create(&th[i], NULL, thread_pingpong, &j[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        cr_assert_eq(pthread_join(th[i], NULL), 0);
        cr_assert_eq(j[i].errors, 0, "thread %d: %d errors", i, j[i].errors);
        cr_assert_eq(j[i].sum, 3 * (rounds * (rounds + 1) / 2 + rounds));
    }
    conc_coro_stats st;
    cr_assert_eq(conc_coro_get_stats(&st), 0);
    cr_assert_eq(st.coros, 0);
    cr_assert_eq(st.stacks_used, 0);
}

/* --------------------------------------- floating-point control state */

struct fpstate {
    int seen_first, seen_later;
    double third_up;
};

static double divide(double a, double b)
{
    volatile double x = a, y = b;
    return x / y;
}

static void *fp_coro(void *arg, void *value)
{
    (void)value;
    struct fpstate *s = arg;
    fesetround(FE_UPWARD);
    s->seen_first = fegetround();
    csw(conc_coro_main(), NULL);
    s->seen_later = fegetround();
    s->third_up = divide(1.0, 3.0);
    return NULL;
}

Test(coro, fp_control_state_per_coroutine, .timeout = 30)
{
    struct fpstate s = { 0 };
    cr_assert_eq(fesetround(FE_TONEAREST), 0);
    double near = divide(1.0, 3.0);
    conc_coro *c = make(fp_coro, &s, NULL);
    sw(c, NULL);
    cr_assert_eq(s.seen_first, FE_UPWARD);
    cr_assert_eq(fegetround(), FE_TONEAREST, "main keeps its own rounding mode");
    cr_assert_eq(fesetround(FE_DOWNWARD), 0);
    double down = divide(1.0, 3.0);
    sw(c, NULL);
    cr_assert_eq(s.seen_later, FE_UPWARD, "the coroutine keeps its own rounding mode");
    cr_assert_eq(fegetround(), FE_DOWNWARD, "main's survives the coroutine's return");
    cr_assert_gt(s.third_up, near);
    cr_assert_lt(down, s.third_up);
    fesetround(FE_TONEAREST);
    conc_coro_free(c);
}

static void *report_round(void *arg, void *value)
{
    (void)arg;
    (void)value;
    return (void *)(intptr_t)fegetround();
}

Test(coro, fp_state_inherited_from_creator, .timeout = 30)
{
    fesetround(FE_TOWARDZERO);
    conc_coro *c = make(report_round, NULL, NULL);
    fesetround(FE_TONEAREST);
    cr_assert_eq((int)(intptr_t)sw(c, NULL), FE_TOWARDZERO);
    cr_assert_eq(fegetround(), FE_TONEAREST);
    conc_coro_free(c);
}

/* --------------------------------------------- scale and stack reuse */

static void *add_arg(void *arg, void *value)
{
    volatile char touch[512];   /* use some stack */
    touch[0] = (char)(uintptr_t)value;
    touch[511] = touch[0];
    return (void *)((uintptr_t)arg + (uintptr_t)value + (uintptr_t)(touch[511] - touch[0]));
}

static void round_of(conc_coro **cs, long n, long *sum)
{
    for (long i = 0; i < n; i++)
        cr_assert_eq(conc_coro_new(&cs[i], add_arg, (void *)(uintptr_t)i, NULL), 0, "coroutine %ld", i);
    *sum = 0;
    for (long i = 0; i < n; i++) {
        void *out = NULL;
        if (conc_coro_switch(cs[i], (void *)(uintptr_t)(2 * i), &out) != 0)
            cr_assert_fail("switch %ld", i);
        *sum += (long)(uintptr_t)out;
    }
    for (long i = 0; i < n; i++) {
        if (!conc_coro_dead(cs[i]))
            cr_assert_fail("coroutine %ld not dead", i);
        conc_coro_free(cs[i]);
    }
}

Test(coro, hundred_thousand_and_stack_reuse, .timeout = 120)
{
    long n = TSAN ? 10000 : 100000;     /* a TSan fiber takes ~100 us to make */
    conc_coro **cs = calloc((size_t)n, sizeof *cs);
    cr_assert_not_null(cs);
    long sum;
    round_of(cs, n, &sum);
    cr_assert_eq(sum, 3 * (n * (n - 1) / 2));
    conc_coro_stats a;
    conc_coro_get_stats(&a);
    cr_assert_eq(a.coros, 0);
    cr_assert_eq(a.stacks_used, 0);
    cr_assert_eq(a.stacks_carved, (size_t)n, "all were alive at once");
    cr_assert_eq(a.stacks_hot + a.stacks_clean, (size_t)n);
    cr_assert_leq(a.stacks_hot, 256u + 64u, "beyond the hot cache (and a batch), pages go back to the kernel");
    cr_assert_lt(a.slabs, (size_t)n / 100, "stacks come in slabs");

    round_of(cs, n, &sum);
    cr_assert_eq(sum, 3 * (n * (n - 1) / 2));
    conc_coro_stats b;
    conc_coro_get_stats(&b);
    cr_assert_eq(b.stacks_carved, a.stacks_carved, "the second round reuses every stack");
    cr_assert_eq(b.slabs, a.slabs);
    cr_assert_eq(b.bytes_mapped, a.bytes_mapped);

    /* One after the other: each dead coroutine's stack is reused at once. */
    for (long i = 0; i < 1000; i++) {
        conc_coro *c = make(add_arg, (void *)1, NULL);
        cr_assert_eq((uintptr_t)sw(c, (void *)2), 3);
        conc_coro_free(c);
    }
    conc_coro_stats d;
    conc_coro_get_stats(&d);
    cr_assert_eq(d.stacks_carved, a.stacks_carved);
    conc_coro_trim();
    conc_coro_get_stats(&d);
    cr_assert_eq(d.stacks_hot, 0);
    cr_assert_eq(d.stacks_clean, (size_t)n);
    free(cs);
}

static void *sleeper(void *arg, void *value)
{
    (void)value;
    volatile char touch[256];
    touch[0] = 1;
    void *v = csw(conc_coro_main(), (void *)(uintptr_t)touch[0]);
    return (void *)((uintptr_t)v + (uintptr_t)arg);
}

Test(coro, two_hundred_thousand_suspended, .timeout = 30)
{
    long n = TSAN ? 4000 : 200000;      /* TSan allows ~8000 fibers at once */
    conc_coro **cs = calloc((size_t)n, sizeof *cs);
    cr_assert_not_null(cs);
    long rss0 = rss_kib();
    long started = 0;
    for (long i = 0; i < n; i++) {
        cr_assert_eq(conc_coro_new(&cs[i], sleeper, (void *)(uintptr_t)i, NULL), 0, "coroutine %ld", i);
        void *out = NULL;
        if (conc_coro_switch(cs[i], NULL, &out) != 0)
            cr_assert_fail("switch %ld", i);
        started += (long)(uintptr_t)out;
    }
    cr_assert_eq(started, n);
    long rss1 = rss_kib();
    conc_coro_stats st;
    conc_coro_get_stats(&st);
    cr_assert_eq(st.coros, (size_t)n);
    cr_assert_eq(st.stacks_used, (size_t)n);
    cr_assert_leq(st.guarded, (size_t)st.guard_limit + st.slabs);
    cr_assert_eq(st.guard_limit, conc_coro_guard_limit());
    cr_assert_eq(conc_coro_set_guard_limit(-1), -EINVAL);    /* asks nothing */
    cr_assert_eq(conc_coro_guard_limit(), st.guard_limit);
    cr_assert_lt(st.slabs, (size_t)n / 100);
    double per = (double)(rss1 - rss0) * 1024.0 / (double)n;
    cr_log_info("%ld suspended coroutines: %.0f bytes resident each, %zu slabs, %zu guarded, "
                "%.1f GiB mapped\n", n, per, st.slabs, st.guarded, (double)st.bytes_mapped / (1 << 30));
    if (!SANITIZED)
        cr_assert_lt(per, 16384.0, "a sleeping coroutine costs a few KiB (%.0f bytes)", per);

    /* Finish half of them, free (kill) the other half while suspended. */
    long sum = 0;
    for (long i = 0; i < n; i += 2) {
        void *out = NULL;
        if (conc_coro_switch(cs[i], (void *)1, &out) != 0 || !conc_coro_dead(cs[i]))
            cr_assert_fail("finish %ld", i);
        sum += (long)(uintptr_t)out;
    }
    cr_assert_eq(sum, (n / 2) * (n / 2 - 1) + n / 2);   /* sum of (i + 1), i even */
    for (long i = 0; i < n; i++)
        cr_assert_eq(conc_coro_free(cs[i]), 0);
    conc_coro_get_stats(&st);
    cr_assert_eq(st.coros, 0);
    cr_assert_eq(st.stacks_used, 0);
    conc_coro_trim();
    long rss2 = rss_kib();
    cr_log_info("after trim: %ld KiB resident (was %ld with all suspended, %ld before)\n",
                rss2, rss1, rss0);
    if (!SANITIZED)
        cr_assert_lt(rss2 - rss0, (rss1 - rss0) / 4, "trimmed stacks hold no memory");
    free(cs);
}

/* A coroutine may use (nearly) all of its stack. */
static void *use_stack(void *arg, void *value)
{
    (void)value;
    size_t n = (size_t)arg;
    volatile char *buf = __builtin_alloca(n);
    for (size_t i = 0; i < n; i += 64)
        buf[i] = (char)i;
    return (void *)(uintptr_t)buf[64];
}

Test(coro, whole_stack_usable, .timeout = 30)
{
    conc_coro_opts o = { .stack_size = 256 * 1024 };
    conc_coro *c = make(use_stack, (void *)(uintptr_t)(o.stack_size - 16 * 1024), &o);
    cr_assert_eq((uintptr_t)sw(c, NULL), 64);
    conc_coro_free(c);
}

/* ------------------------------------------------------ stack overflow */

/* Recurses until `limit` bytes below the frame it started from, returns. */
static __attribute__((noinline)) long recurse_until(const char *top, size_t limit)
{
    volatile char pad[48];
    pad[0] = 1;
    if ((size_t)(top - (const char *)__builtin_frame_address(0)) < limit)
        return recurse_until(top, limit) + pad[0];
    return pad[0];
}

/* Goes 1 KiB past the end of its stack (into the canary zone), comes back
 * and switches away.  *arg is the stack size. */
static void *bounded_overflow_fn(void *arg, void *value)
{
    (void)value;
    volatile char top = 0;
    depth_sink = recurse_until((const char *)&top, *(size_t *)arg + 1024);
    csw(conc_coro_main(), NULL);
    return NULL;
}

struct child_result {
    int status;
    char err[4096];
};

/* Runs fn in a forked child; collects its exit status and stderr. */
static void in_child(void (*fn)(void), struct child_result *r)
{
    int p[2];
    cr_assert_eq(pipe(p), 0);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        dup2(p[1], STDERR_FILENO);
        close(p[0]);
        close(p[1]);
        fn();
        _exit(0);
    }
    close(p[1]);
    size_t n = 0;
    ssize_t k;
    while ((k = read(p[0], r->err + n, sizeof r->err - 1 - n)) > 0)
        n += (size_t)k;
    r->err[n] = '\0';
    close(p[0]);
    cr_assert_eq(waitpid(pid, &r->status, 0), pid);
}

static void expect_overflow_report(const struct child_result *r, const char *name)
{
    cr_assert(WIFSIGNALED(r->status) && WTERMSIG(r->status) == SIGABRT,
              "the child must abort (status %#x); stderr:\n%s", r->status, r->err);
    char want[128];
    snprintf(want, sizeof want, "conc: stack overflow in coroutine '%s'", name);
    cr_assert_not_null(strstr(r->err, want), "stderr:\n%s", r->err);
}

static void child_guarded_overflow(void)
{
    conc_coro_opts o = { .stack_size = CONC_CORO_STACK_MIN, .name = "deep" };
    conc_coro *c;
    if (conc_coro_new(&c, overflow_fn, NULL, &o) != 0)
        _exit(3);
    conc_coro_switch(c, NULL, NULL);
    _exit(4);
}

Test(coro, overflow_hits_guard_page, .timeout = 30)
{
    struct child_result r;
    in_child(child_guarded_overflow, &r);
    expect_overflow_report(&r, "deep");
    cr_assert_not_null(strstr(r.err, "guard page"), "stderr:\n%s", r.err);
}

/* Past the guard budget: the first stack of a slab is guarded anyway, the
 * second one has a canary zone. */
static conc_coro *unguarded_coroutine(conc_coro_fn fn, void *arg, const char *name, conc_coro **first)
{
    if (conc_coro_set_guard_limit(0) != 0 || conc_coro_guard_limit() != 0)
        _exit(3);
    conc_coro_opts o = { .stack_size = CONC_CORO_STACK_MIN, .name = name };
    conc_coro *c;
    if (conc_coro_new(first, ret_value, NULL, &o) != 0 || conc_coro_new(&c, fn, arg, &o) != 0)
        _exit(3);
    conc_coro_stats st;
    conc_coro_get_stats(&st);
    if (st.guarded != 1)
        _exit(5);
    return c;
}

static void child_canary_overflow(void)
{
    static size_t size;
    conc_coro *first;
    conc_coro *c = unguarded_coroutine(bounded_overflow_fn, &size, "canary", &first);
    size = conc_coro_stack_size(c);
    conc_coro_switch(c, NULL, NULL);
    _exit(4);
}

Test(coro, overflow_found_by_canary, .timeout = 30)
{
    struct child_result r;
    in_child(child_canary_overflow, &r);
    expect_overflow_report(&r, "canary");
}

static void child_unguarded_runaway(void)
{
    conc_coro *first;
    conc_coro *c = unguarded_coroutine(overflow_fn, NULL, "runaway", &first);
    conc_coro_switch(c, NULL, NULL);
    _exit(4);
}

/* Runaway recursion past an unguarded stack reaches the slab's guard page
 * below the neighbouring stack: still reported as this coroutine's. */
Test(coro, runaway_overflow_without_guard, .timeout = 30)
{
    struct child_result r;
    in_child(child_unguarded_runaway, &r);
    expect_overflow_report(&r, "runaway");
}

/* Guarded and unguarded coroutines passing a counter round a ring, one of
 * them dying on the way (its stack waits to be given back): every hop is
 * one switch between two coroutines, no return to main in between. */
enum { RING = 4, LAPS = 1000 };
static conc_coro *ring[RING];

static void *ring_fn(void *arg, void *value)
{
    uintptr_t me = (uintptr_t)arg;
    for (;;) {
        uintptr_t n = (uintptr_t)value;
        if (n % RING != me) {   /* each hop reaches the next in the ring */
            fprintf(stderr, "ring: %lu reached %lu\n", (unsigned long)n, (unsigned long)me);
            abort();
        }
        if (n == (uintptr_t)RING * LAPS)
            return (void *)n;   /* back to main, its parent */
        value = csw(ring[(me + 1) % RING], (void *)(n + 1));
    }
}

static void *die_at_once(void *arg, void *value)
{
    (void)value;
    return arg;
}

Test(coro, guarded_and_unguarded_mixed_ring, .timeout = 30)
{
    long limit = conc_coro_guard_limit();
    cr_assert_eq(conc_coro_set_guard_limit(2), 0);
    conc_coro_opts o = { .stack_size = CONC_CORO_STACK_MIN };
    for (uintptr_t i = 0; i < RING; i++)
        cr_assert_eq(conc_coro_new(&ring[i], ring_fn, (void *)i, &o), 0);
    conc_coro_stats st;
    conc_coro_get_stats(&st);
    cr_assert_lt(st.guarded, (long)RING, "some stacks of the ring have canaries");
    /* A coroutine that dies first leaves its stack for the next switch. */
    conc_coro *d;
    void *out = NULL;
    cr_assert_eq(conc_coro_new(&d, die_at_once, (void *)7, &o), 0);
    cr_assert_eq(conc_coro_switch(d, NULL, &out), 0);
    cr_assert_eq((uintptr_t)out, 7);
    cr_assert_eq(conc_coro_switch(ring[0], (void *)0, &out), 0);
    cr_assert_eq((uintptr_t)out, (uintptr_t)RING * LAPS);
    cr_assert_eq(conc_coro_free(d), 0);
    for (int i = 0; i < RING; i++)
        cr_assert_eq(conc_coro_free(ring[i]), 0);
    cr_assert_eq(conc_coro_set_guard_limit(limit), 0);
}

/* An unguarded coroutine overflows into its canary, then switches to a
 * guarded coroutine (not to main): that switch finds the overflow. */
static conc_coro *canary_peer;

static void *overflow_then_peer(void *arg, void *value)
{
    (void)value;
    volatile char top = 0;
    depth_sink = recurse_until((const char *)&top, *(size_t *)arg + 1024);
    csw(canary_peer, NULL);
    return NULL;
}

static void *peer_fn(void *arg, void *value)
{
    (void)value;
    csw((conc_coro *)arg, NULL);   /* to the unguarded one */
    _exit(6);                      /* its switch back must not get here */
}

static void child_canary_to_peer(void)
{
    static size_t size;
    conc_coro *first;
    long limit = conc_coro_guard_limit();
    conc_coro *c = unguarded_coroutine(overflow_then_peer, &size, "canary-peer", &first);
    size = conc_coro_stack_size(c);
    /* The peer takes the guarded stack of first. */
    conc_coro_opts o = { .stack_size = CONC_CORO_STACK_MIN, .name = "peer" };
    if (conc_coro_free(first) != 0 || conc_coro_set_guard_limit(limit) != 0
        || conc_coro_new(&canary_peer, peer_fn, c, &o) != 0)
        _exit(3);
    conc_coro_switch(canary_peer, NULL, NULL);
    _exit(4);
}

Test(coro, canary_checked_on_switch_to_a_peer, .timeout = 30)
{
    struct child_result r;
    in_child(child_canary_to_peer, &r);
    expect_overflow_report(&r, "canary-peer");
}

/* An unrelated crash is not reported as an overflow. */
static void *null_write(void *arg, void *value)
{
    (void)value;
    *(volatile int *)arg = 1;
    return NULL;
}

static void child_plain_segv(void)
{
    conc_coro *c;
    if (conc_coro_new(&c, null_write, NULL, NULL) != 0)
        _exit(3);
    conc_coro_switch(c, NULL, NULL);
    _exit(4);
}

Test(coro, other_faults_are_not_overflows, .timeout = 30)
{
    struct child_result r;
    in_child(child_plain_segv, &r);
    cr_assert_null(strstr(r.err, "stack overflow in coroutine"), "stderr:\n%s", r.err);
    if (SANITIZED)      /* the sanitizer reports the fault and ends the child */
        cr_assert(WIFSIGNALED(r.status) || (WIFEXITED(r.status) && WEXITSTATUS(r.status) != 0
                                            && WEXITSTATUS(r.status) != 4),
                  "status %#x, stderr:\n%s", r.status, r.err);
    else
        cr_assert(WIFSIGNALED(r.status) && WTERMSIG(r.status) == SIGSEGV,
                  "status %#x, stderr:\n%s", r.status, r.err);
}
