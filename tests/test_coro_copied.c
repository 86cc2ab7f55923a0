/*
 * test_coro_copied.c - greenlets on the hub's shared stack
 * (CONC_STACK_COPIED): parked in every kind of blocking call next to
 * greenlets with stacks of their own, each resumed with its stack data
 * intact; deep and shallow ones mixed; a stack overflow still reported;
 * the options checked.
 *
 * Criterion runs every test in its own process.  Greenlets only record
 * what they saw; the test's main coroutine asserts.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conc.h"
#include "support/overflow.h"

/* Waiters per kind of wait and per stack mode. */
#define PER_MODE 6
#define WAITERS (2 * PER_MODE)
#define PATTERN 64      /* uint64_t words of stack data each waiter checks */

enum kind { K_SLEEP, K_QUEUE, K_LOCK, K_EVENT, K_COND, K_SEM, K_SOCKET, K_CONN, K_JOIN, KINDS };

static const char *const kind_name[KINDS] = {
    "sleep", "queue", "lock", "event", "condition", "semaphore", "socket recv", "conn recv",
    "join",
};

struct world {
    enum kind kind;
    conc_queue *queue;
    conc_lock lock;
    conc_event event;
    conc_cond cond;
    bool cond_go;
    conc_sem sem;
    conc_socket *sock[WAITERS][2];
    conc_conn *conn[WAITERS][2];
    conc_greenlet *target;      /* K_JOIN: what the waiters join */
    int entered;                /* waiters about to block */
    int finished;               /* waiters past their blocking call */
};

struct waiter {
    struct world *w;
    int id;
    int rc;                     /* of the blocking call */
    long got;                   /* what it received, where it receives */
    int bad_words;              /* stack words found changed */
};

static uint64_t word_of(int id, int i)
{
    return ((uint64_t)(id + 1) * 0x9E3779B97F4A7C15ull) ^ (uint64_t)i;
}

static void *join_target(void *arg)
{
    struct world *w = arg;
    conc_event_wait(&w->event, CONC_FOREVER);
    return (void *)(intptr_t)42;
}

/* The one blocking call of the waiter's kind; what it received in *got. */
static int block(struct waiter *me, long *got)
{
    struct world *w = me->w;
    switch (w->kind) {
    case K_SLEEP:
        return conc_sleep(0.02);
    case K_QUEUE: {
        void *v = NULL;
        int rc = conc_queue_get(w->queue, &v, CONC_FOREVER);
        *got = (long)(intptr_t)v;
        return rc;
    }
    case K_LOCK: {
        int rc = conc_lock_acquire(&w->lock, CONC_FOREVER);
        if (rc == 0)
            rc = conc_lock_release(&w->lock);
        return rc;
    }
    case K_EVENT:
        return conc_event_wait(&w->event, CONC_FOREVER);
    case K_COND: {
        int rc = conc_lock_acquire(&w->lock, CONC_FOREVER);
        while (rc == 0 && !w->cond_go)
            rc = conc_cond_wait(&w->cond, &w->lock, CONC_FOREVER);
        if (rc == 0)
            rc = conc_lock_release(&w->lock);
        return rc;
    }
    case K_SEM:
        return conc_sem_acquire(&w->sem, CONC_FOREVER);
    case K_SOCKET: {
        char buf[16] = { 0 };
        ssize_t n = conc_socket_recv(w->sock[me->id][0], buf, sizeof buf, 0);
        *got = n > 0 ? strtol(buf, NULL, 10) : -1;
        return n > 0 ? 0 : (int)n;
    }
    case K_CONN: {
        char buf[16] = { 0 };
        ssize_t n = conc_conn_recv_bytes(w->conn[me->id][0], buf, sizeof buf, CONC_FOREVER);
        *got = n > 0 ? strtol(buf, NULL, 10) : -1;
        return n > 0 ? 0 : (int)n;
    }
    case K_JOIN: {
        int rc = conc_greenlet_join(w->target, CONC_FOREVER);
        void *r = NULL;
        if (rc == 0)
            rc = conc_greenlet_result(w->target, &r);
        *got = (long)(intptr_t)r;
        return rc;
    }
    default:
        return -EINVAL;
    }
}

static void *waiter_fn(void *arg)
{
    struct waiter *me = arg;
    volatile uint64_t mark[PATTERN];
    for (int i = 0; i < PATTERN; i++)
        mark[i] = word_of(me->id, i);
    long got = -1;
    me->w->entered++;
    me->rc = block(me, &got);
    me->w->finished++;
    me->got = got;
    for (int i = 0; i < PATTERN; i++)
        if (mark[i] != word_of(me->id, i))
            me->bad_words++;
    return NULL;
}

/* Ends every waiter's wait, the way its kind is ended. */
static void release_all(struct world *w)
{
    char msg[16];
    switch (w->kind) {
    case K_SLEEP:
        break;
    case K_QUEUE:
        for (long i = 0; i < WAITERS; i++)
            cr_assert_eq(conc_queue_put(w->queue, (void *)(intptr_t)(1000 + i), CONC_FOREVER), 0);
        break;
    case K_LOCK:
        cr_assert_eq(conc_lock_release(&w->lock), 0);
        break;
    case K_EVENT:
    case K_JOIN:
        cr_assert_eq(conc_event_set(&w->event), 0);
        break;
    case K_COND:
        cr_assert_eq(conc_lock_acquire(&w->lock, CONC_FOREVER), 0);
        w->cond_go = true;
        cr_assert_geq(conc_cond_notify_all(&w->cond), 0);
        cr_assert_eq(conc_lock_release(&w->lock), 0);
        break;
    case K_SEM:
        cr_assert_eq(conc_sem_release(&w->sem, WAITERS), 0);
        break;
    case K_SOCKET:
        for (int i = 0; i < WAITERS; i++) {
            int n = snprintf(msg, sizeof msg, "%d", 2000 + i);
            cr_assert_eq(conc_socket_send(w->sock[i][1], msg, (size_t)n + 1, 0), n + 1);
        }
        break;
    case K_CONN:
        for (int i = 0; i < WAITERS; i++) {
            int n = snprintf(msg, sizeof msg, "%d", 3000 + i);
            cr_assert_eq(conc_conn_send_bytes(w->conn[i][1], msg, (size_t)n + 1, CONC_FOREVER), 0);
        }
        break;
    default:
        break;
    }
}

static long expected_got(enum kind k, int id)
{
    switch (k) {
    case K_SOCKET:
        return 2000 + id;
    case K_CONN:
        return 3000 + id;
    case K_JOIN:
        return 42;
    default:
        return -1;
    }
}

static void run_kind(enum kind k)
{
    struct world w;
    memset(&w, 0, sizeof w);
    w.kind = k;
    conc_queue_opts qo = { 0 };
    cr_assert_eq(conc_queue_new(&w.queue, &qo), 0);
    cr_assert_eq(conc_lock_init(&w.lock, 0), 0);
    cr_assert_eq(conc_event_init(&w.event, 0), 0);
    cr_assert_eq(conc_cond_init(&w.cond, 0), 0);
    cr_assert_eq(conc_sem_init(&w.sem, 0, 0), 0);
    if (k == K_LOCK)
        cr_assert_eq(conc_lock_acquire(&w.lock, CONC_FOREVER), 0);
    for (int i = 0; i < WAITERS && k == K_SOCKET; i++) {
        int sv[2];
        cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        cr_assert_eq(conc_socket_from_fd(&w.sock[i][0], sv[0]), 0);
        cr_assert_eq(conc_socket_from_fd(&w.sock[i][1], sv[1]), 0);
    }
    for (int i = 0; i < WAITERS && k == K_CONN; i++)
        cr_assert_eq(conc_conn_pipe(&w.conn[i][0], &w.conn[i][1], false), 0);
    if (k == K_JOIN)
        cr_assert_eq(conc_greenlet_spawn(&w.target, join_target, &w, NULL), 0);

    struct waiter me[WAITERS];
    conc_greenlet *g[WAITERS];
    for (int i = 0; i < WAITERS; i++) {
        me[i] = (struct waiter){ .w = &w, .id = i, .rc = -1, .got = -1 };
        conc_spawn_opts so = CONC_SPAWN_OPTS_INIT;
        /* copied and own stacks interleaved */
        so.stack = i % 2 ? CONC_STACK_OWN : CONC_STACK_COPIED;
        cr_assert_eq(conc_greenlet_spawn(&g[i], waiter_fn, &me[i], &so), 0);
    }
    /* Each waiter runs until it blocks; the main coroutine runs again only
     * when every greenlet is parked (or done). */
    for (int spins = 0; w.entered < WAITERS && spins < 1000; spins++)
        cr_assert_eq(conc_sleep(0), 0);
    cr_assert_eq(w.entered, WAITERS, "%s: waiters that started", kind_name[k]);
    cr_assert_eq(w.finished, 0, "%s: a waiter did not block", kind_name[k]);
    release_all(&w);
    cr_assert_eq(conc_greenlet_joinall(g, WAITERS, 30.0), 0, "%s", kind_name[k]);
    for (int i = 0; i < WAITERS; i++) {
        cr_assert_eq(me[i].rc, 0, "%s: waiter %d returned %d", kind_name[k], i, me[i].rc);
        cr_assert_eq(me[i].bad_words, 0, "%s: waiter %d (%s) found %d stack words changed",
                     kind_name[k], i, i % 2 ? "own" : "copied", me[i].bad_words);
        long want = expected_got(k, i);
        if (k == K_QUEUE)
            cr_assert(me[i].got >= 1000 && me[i].got < 1000 + WAITERS);
        else
            cr_assert_eq(me[i].got, want, "%s: waiter %d got %ld", kind_name[k], i, me[i].got);
        conc_greenlet_free(g[i]);
    }
    if (k == K_JOIN) {
        cr_assert_eq(conc_greenlet_join(w.target, CONC_FOREVER), 0);
        conc_greenlet_free(w.target);
    }
    for (int i = 0; i < WAITERS && k == K_SOCKET; i++)
        for (int j = 0; j < 2; j++)
            conc_socket_free(w.sock[i][j]);
    for (int i = 0; i < WAITERS && k == K_CONN; i++)
        for (int j = 0; j < 2; j++)
            conc_conn_free(w.conn[i][j]);
    conc_queue_free(w.queue);
    cr_assert_eq(conc_hub_free(), 0);
}

Test(coro_copied, parked_in_sleep, .timeout = 60) { run_kind(K_SLEEP); }
Test(coro_copied, parked_in_queue_get, .timeout = 60) { run_kind(K_QUEUE); }
Test(coro_copied, parked_in_lock, .timeout = 60) { run_kind(K_LOCK); }
Test(coro_copied, parked_in_event, .timeout = 60) { run_kind(K_EVENT); }
Test(coro_copied, parked_in_condition, .timeout = 60) { run_kind(K_COND); }
Test(coro_copied, parked_in_semaphore, .timeout = 60) { run_kind(K_SEM); }
Test(coro_copied, parked_in_socket_recv, .timeout = 60) { run_kind(K_SOCKET); }
Test(coro_copied, parked_in_conn_recv, .timeout = 60) { run_kind(K_CONN); }
Test(coro_copied, parked_in_join, .timeout = 60) { run_kind(K_JOIN); }

/* ------------------------------------------------- deep and shallow */

struct diver {
    int id;
    int depth;                  /* frames of 1 KiB */
    int bad;
    int rc;
};

/* Each frame holds 1 KiB of data of its own; the deepest one sleeps. */
static __attribute__((noinline)) void dive(struct diver *d, int level)
{
    volatile uint64_t frame[128];
    for (int i = 0; i < 128; i++)
        frame[i] = word_of(d->id, level * 128 + i);
    if (level < d->depth)
        dive(d, level + 1);
    else
        d->rc = conc_sleep(0.01 * (d->id % 3));
    for (int i = 0; i < 128; i++)
        if (frame[i] != word_of(d->id, level * 128 + i))
            d->bad++;
}

static void *diver_fn(void *arg)
{
    struct diver *d = arg;
    dive(d, 0);
    return NULL;
}

Test(coro_copied, deep_and_shallow_mixed, .timeout = 60)
{
    enum { N = 60 };
    static const int depths[] = { 0, 1, 4, 16, 40 };
    struct diver d[N];
    conc_greenlet *g[N];
    for (int i = 0; i < N; i++) {
        d[i] = (struct diver){ .id = i, .depth = depths[i % 5], .rc = -1 };
        conc_spawn_opts so = CONC_SPAWN_OPTS_INIT;
        so.stack = i % 3 == 2 ? CONC_STACK_OWN : CONC_STACK_COPIED;
        cr_assert_eq(conc_greenlet_spawn(&g[i], diver_fn, &d[i], &so), 0);
    }
    cr_assert_eq(conc_greenlet_joinall(g, N, 30.0), 0);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(d[i].rc, 0, "diver %d", i);
        cr_assert_eq(d[i].bad, 0, "diver %d (depth %d KiB) found %d words changed", i,
                     d[i].depth, d[i].bad);
        conc_greenlet_free(g[i]);
    }
    cr_assert_eq(conc_hub_free(), 0);
}

/* The hub's setting: spawns without a mode follow it; a spawn's own mode
 * wins.  A stack bigger than the shared one is a stack of its own. */
Test(coro_copied, hub_setting_and_options, .timeout = 30)
{
    cr_assert_eq(conc_hub_set_stacks(7), -EINVAL);
    cr_assert_eq(conc_hub_set_stacks(CONC_STACK_HUB), -EINVAL);
    cr_assert_eq(conc_hub_set_stacks(CONC_STACK_COPIED), CONC_STACK_OWN);
    conc_spawn_opts so = CONC_SPAWN_OPTS_INIT;
    so.stack = 9;
    conc_greenlet *g[4];
    cr_assert_eq(conc_greenlet_spawn(&g[0], join_target, NULL, &so), -EINVAL);
    struct diver d[4];
    conc_coro_opts big = { .stack_size = 4u << 20 };
    for (int i = 0; i < 4; i++) {
        d[i] = (struct diver){ .id = i, .depth = 8, .rc = -1 };
        conc_spawn_opts o = CONC_SPAWN_OPTS_INIT;
        o.stack = i == 1 ? CONC_STACK_OWN : CONC_STACK_HUB;
        if (i == 2)
            o.coro = &big;
        cr_assert_eq(conc_greenlet_spawn(&g[i], diver_fn, &d[i], i == 3 ? NULL : &o), 0);
    }
    cr_assert_eq(conc_greenlet_joinall(g, 4, 30.0), 0);
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(d[i].rc, 0);
        cr_assert_eq(d[i].bad, 0);
        conc_greenlet_free(g[i]);
    }
    cr_assert_eq(conc_hub_set_stacks(CONC_STACK_OWN), CONC_STACK_COPIED);
    cr_assert_eq(conc_hub_free(), 0);
}

/* --------------------------------------------------------- overflow */

static void *overflow_greenlet(void *arg)
{
    return overflow_fn(arg, NULL);
}

static void *quiet_sleeper(void *arg)
{
    (void)arg;
    conc_sleep(0.01);
    return NULL;
}

Test(coro_copied, overflow_still_reported, .timeout = 60)
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
        conc_spawn_opts so = CONC_SPAWN_OPTS_INIT;
        so.stack = CONC_STACK_COPIED;
        conc_coro_opts named = { .name = "diver" };
        conc_greenlet *a, *b;
        if (conc_greenlet_spawn(&a, quiet_sleeper, NULL, &so) != 0)
            _exit(3);
        so.coro = &named;
        if (conc_greenlet_spawn(&b, overflow_greenlet, NULL, &so) != 0)
            _exit(3);
        conc_greenlet_join(b, CONC_FOREVER);
        _exit(4);
    }
    close(p[1]);
    char err[4096];
    size_t n = 0;
    ssize_t k;
    while ((k = read(p[0], err + n, sizeof err - 1 - n)) > 0)
        n += (size_t)k;
    err[n] = '\0';
    close(p[0]);
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT,
              "the child must abort (status %#x); stderr:\n%s", status, err);
    cr_assert_not_null(strstr(err, "conc: stack overflow in coroutine 'diver'"), "stderr:\n%s",
                       err);
}

/* ------------------------------------------------ ASan: restored frames */

#if defined(__SANITIZE_ADDRESS__)
#define ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ASAN 1
#endif
#endif

#ifdef ASAN
static volatile int past_end = 24;  /* one past buf: the compiler cannot see it */

/* Parks while another copied greenlet runs (its frames are copied out and
 * back), then writes one byte past a local array. */
static void *overrun_after_park(void *arg)
{
    (void)arg;
    char buf[24];
    memset(buf, 'x', sizeof buf);
    char *volatile q = buf;             /* out of UBSan's bounds check */
    conc_sleep(0.02);
    q[past_end] = 'y';
    return (void *)(intptr_t)buf[0];
}

Test(coro_copied, asan_sees_restored_frames, .timeout = 60)
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
        conc_spawn_opts so = CONC_SPAWN_OPTS_INIT;
        so.stack = CONC_STACK_COPIED;
        conc_greenlet *a, *b;
        if (conc_greenlet_spawn(&a, overrun_after_park, NULL, &so) != 0
            || conc_greenlet_spawn(&b, quiet_sleeper, NULL, &so) != 0)
            _exit(3);
        conc_greenlet_join(a, CONC_FOREVER);
        _exit(0);                       /* not seen: the test fails */
    }
    close(p[1]);
    char err[16384];
    size_t n = 0;
    ssize_t k;
    while ((k = read(p[0], err + n, sizeof err - 1 - n)) > 0)
        n += (size_t)k;
    err[n] = '\0';
    close(p[0]);
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(!(WIFEXITED(status) && WEXITSTATUS(status) == 0),
              "the overrun after the frames came back went unseen (status %#x)", status);
    cr_assert_not_null(strstr(err, "ERROR: AddressSanitizer"), "stderr:\n%s", err);
    cr_assert_not_null(strstr(err, "overrun_after_park"), "stderr:\n%s", err);
}
#endif
