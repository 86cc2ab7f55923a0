/*
 * thread-basics - a guided tour of conc/thread.h, Python's threading module:
 * start/join, names, current_thread/main_thread, daemon, active_count and
 * enumerate, join with a timeout, Timer, and local.  Each step prints a
 * one-line explanation and then what it shows.
 *
 *   thread-basics
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conc.h"
#include "cli.h"

static const char *prog = "thread-basics";

static conc_thread *new_thread(conc_thread_fn fn, void *arg, const conc_thread_opts *o)
{
    conc_thread *t;
    check(conc_thread_new(&t, fn, arg, o), "conc_thread_new");
    return t;
}

/* ------------------------------------------------------------- bodies */

static void *sum_to(void *arg)
{
    uintptr_t n = (uintptr_t)arg, s = 0;
    for (uintptr_t i = 1; i <= n; i++)
        s += i;
    return (void *)s;
}

struct who {
    char name[CONC_THREAD_NAME_MAX + 1];
    bool is_main;
    pid_t native_id;
};

static void *who_am_i(void *arg)
{
    struct who *w = arg;
    conc_thread *me = conc_thread_current();
    conc_thread_name(me, w->name, sizeof w->name);
    w->is_main = me == conc_thread_main();
    w->native_id = conc_thread_get_native_id();
    return NULL;
}

static void *wait_for(void *arg)
{
    conc_event_wait((conc_event *)arg, CONC_FOREVER);
    return NULL;
}

struct inherit {
    bool child_daemon;
};

static void *spawn_child(void *arg)
{
    struct inherit *in = arg;
    conc_thread *child;
    if (conc_thread_new(&child, sum_to, (void *)1, NULL) == 0) {
        in->child_daemon = conc_thread_daemon(child);
        conc_thread_free(child);
    }
    return NULL;
}

static void *ring(void *arg)
{
    int64_t *fired_at = arg;
    *fired_at = conc_now();
    return "ding";
}

static conc_local *slot;

struct local_probe {
    conc_barrier *all_set;
    const char *mine;
    const char *seen;
};

static void *use_local(void *arg)
{
    struct local_probe *p = arg;
    conc_local_set(slot, (void *)p->mine);
    conc_barrier_wait(p->all_set, CONC_FOREVER); /* everybody has stored */
    p->seen = conc_local_get(slot);
    return NULL;
}

static int by_name(const void *a, const void *b)
{
    char na[CONC_THREAD_NAME_MAX + 1], nb[CONC_THREAD_NAME_MAX + 1];
    conc_thread_name(*(conc_thread *const *)a, na, sizeof na);
    conc_thread_name(*(conc_thread *const *)b, nb, sizeof nb);
    return strcmp(na, nb);
}

/* --------------------------------------------------------------- tour */

static void usage(FILE *f)
{
    fprintf(f, "usage: %s\n  walks through conc's threading API step by step\n", prog);
}

int main(int argc, char **argv)
{
    int rc = parse_options(argc, argv, NULL, 0, usage);
    if (rc >= 0)
        return rc;

    /* 1. start and join */
    step("start and join", "a thread runs fn(arg) once started; join waits for its end "
                           "and the result is fn's return value");
    conc_thread *t = new_thread(sum_to, (void *)100, NULL);
    void *res;
    printf("   before start: started=%s alive=%s, result: %s\n",
           yes_no(conc_thread_started(t)), yes_no(conc_thread_is_alive(t)),
           conc_errname(conc_thread_result(t, &res)));
    check(conc_thread_start(t), "start");
    check(conc_thread_join(t, CONC_FOREVER), "join");
    check(conc_thread_result(t, &res), "result");
    printf("   after join: sum_to(100) returned %lu, alive=%s; starting it again gives %s\n",
           (unsigned long)(uintptr_t)res, yes_no(conc_thread_is_alive(t)),
           conc_errname(conc_thread_start(t)));
    conc_thread_free(t);

    /* 2. names */
    step("names", "threads are called Thread-N unless given a name; a name can change "
                  "at any time");
    char name[CONC_THREAD_NAME_MAX + 1];    /* holds any name */
    t = new_thread(sum_to, (void *)1, NULL);
    conc_thread_name(t, name, sizeof name);
    printf("   default name: %s\n", name);
    conc_thread_free(t);
    conc_thread_opts named = { .name = "downloader" };
    t = new_thread(sum_to, (void *)1, &named);
    conc_thread_name(t, name, sizeof name);
    printf("   given name: %s\n", name);
    check(conc_thread_set_name(t, "uploader"), "set_name");
    conc_thread_name(t, name, sizeof name);
    printf("   renamed: %s\n", name);
    conc_thread_free(t);

    /* 3. current_thread and main_thread */
    step("current_thread", "each thread can ask for its own handle; the first thread of "
                           "the process is MainThread");
    struct who w = { .name = "" };
    conc_thread_opts wn = { .name = "asker" };
    t = new_thread(who_am_i, &w, &wn);
    check(conc_thread_start(t), "start");
    pid_t tid = conc_thread_native_id(t);
    check(conc_thread_join(t, CONC_FOREVER), "join");
    conc_thread_name(conc_thread_current(), name, sizeof name);
    printf("   in main: current_thread() is %s (main_thread(): %s)\n", name,
           yes_no(conc_thread_current() == conc_thread_main()));
    printf("   in the thread: current_thread() is %s (main_thread(): %s), "
           "its native id matches: %s\n",
           w.name, yes_no(w.is_main), yes_no(w.native_id == tid));
    conc_thread_free(t);

    /* 4. daemon */
    step("daemon", "exit waits for non-daemon threads but not for daemons; a new "
                   "thread inherits the flag of the thread creating it");
    printf("   MainThread is a daemon: %s\n", yes_no(conc_thread_daemon(conc_thread_main())));
    t = new_thread(sum_to, (void *)1, NULL);
    printf("   a thread created by main is a daemon: %s\n", yes_no(conc_thread_daemon(t)));
    conc_thread_free(t);
    struct inherit in = { false };
    conc_thread_opts dopt = { .daemon = CONC_DAEMON };
    t = new_thread(spawn_child, &in, &dopt);
    check(conc_thread_start(t), "start");
    check(conc_thread_join(t, CONC_FOREVER), "join");
    printf("   a thread created by a daemon is a daemon: %s; set_daemon after start: %s\n",
           yes_no(in.child_daemon), conc_errname(conc_thread_set_daemon(t, false)));
    conc_thread_free(t);

    /* 5. active_count and enumerate */
    step("active_count and enumerate", "the threads alive right now: main, started "
                                       "threads that have not ended");
    enum { N = 3 };
    conc_event gate = CONC_EVENT_INIT;
    conc_thread *waiting[N];
    printf("   alive before: %d\n", conc_thread_active_count());
    for (int i = 0; i < N; i++) {
        char wname[16];
        snprintf(wname, sizeof wname, "waiter-%d", i + 1);
        conc_thread_opts o = { .name = wname };
        waiting[i] = new_thread(wait_for, &gate, &o);
        check(conc_thread_start(waiting[i]), "start");
    }
    conc_thread *all[32];
    int n = conc_thread_enumerate(all, 32);
    check(n, "enumerate");
    if (n > 32)
        n = 32;
    qsort(all, (size_t)n, sizeof all[0], by_name);
    printf("   alive with %d waiting threads: %d:", N, conc_thread_active_count());
    for (int i = 0; i < n; i++) {
        conc_thread_name(all[i], name, sizeof name);
        printf(" %s", name);
        conc_thread_free(all[i]);
    }
    printf("\n");

    /* 6. join with a timeout */
    step("join with a timeout", "join(timeout) gives up while the thread still runs; "
                                "is_alive tells which happened");
    rc = conc_thread_join(waiting[0], 0.05);
    printf("   join(0.05) on a waiting thread: %s, alive=%s\n", conc_errname(rc),
           yes_no(conc_thread_is_alive(waiting[0])));
    conc_event_set(&gate);
    for (int i = 0; i < N; i++) {
        check(conc_thread_join(waiting[i], CONC_FOREVER), "join");
        conc_thread_free(waiting[i]);
    }
    printf("   after the event is set: join gives 0, alive now: %d\n",
           conc_thread_active_count());

    /* 7. Timer */
    step("Timer", "a thread that calls fn after an interval unless cancelled first");
    int64_t fired_at = 0, t0 = conc_now();
    check(conc_timer_new(&t, 0.1, ring, &fired_at, NULL), "timer");
    check(conc_thread_start(t), "start");
    check(conc_thread_join(t, CONC_FOREVER), "join");
    check(conc_thread_result(t, &res), "result");
    printf("   0.1 s timer returned \"%s\" after at least 0.1 s: %s\n", (char *)res,
           yes_no(fired_at - t0 >= 100000000));
    conc_thread_free(t);
    fired_at = 0;
    check(conc_timer_new(&t, 10.0, ring, &fired_at, NULL), "timer");
    check(conc_thread_start(t), "start");
    check(conc_timer_cancel(t), "cancel");
    check(conc_thread_join(t, CONC_FOREVER), "join");
    check(conc_thread_result(t, &res), "result");
    printf("   10 s timer cancelled: fn called: %s, result: %s\n", yes_no(fired_at != 0),
           res ? "set" : "NULL");
    conc_thread_free(t);

    /* 8. local */
    step("local", "one slot, a separate value in every thread");
    check(conc_local_new(&slot, NULL), "local");
    check(conc_local_set(slot, "main's value"), "local_set");
    conc_barrier b;
    check(conc_barrier_init(&b, 2, 0), "barrier");
    struct local_probe lp[2] = { { &b, "red", NULL }, { &b, "blue", NULL } };
    conc_thread *lt[2];
    for (int i = 0; i < 2; i++) {
        lt[i] = new_thread(use_local, &lp[i], NULL);
        check(conc_thread_start(lt[i]), "start");
    }
    for (int i = 0; i < 2; i++) {
        check(conc_thread_join(lt[i], CONC_FOREVER), "join");
        conc_thread_free(lt[i]);
        printf("   thread %d stored \"%s\" and reads back \"%s\"\n", i + 1, lp[i].mine,
               lp[i].seen);
    }
    printf("   main reads \"%s\"\n", (const char *)conc_local_get(slot));
    conc_local_set(slot, NULL);
    conc_local_free(slot);

    printf("\nthread-basics: done\n");
    return 0;
}
