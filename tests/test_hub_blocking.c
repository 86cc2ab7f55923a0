/*
 * test_hub_blocking.c - every kind of blocking call of conc, made from a
 * greenlet, parks only that greenlet: the others keep running while it
 * waits, it is woken by whoever releases it (a coroutine of its thread or
 * another thread), conc_greenlet_kill ends its wait with -ECANCELED and an
 * enclosing timeout scope (conc_hub_timeout_push) with -ETIMEDOUT.
 *
 * Covered here: conc_wait over pipes, duplicated entries, descriptors
 * another greenlet waits on, process sentinels, thread queues and an empty
 * list, with poll()'s answers (closed descriptors, regular files, hang-ups)
 * and ready entries winning over a pending kill;
 * conc_conn_recv_bytes and conc_conn_send_bytes on a full pipe and a full
 * socketpair, a large message between two greenlets of one thread;
 * conc_conn_poll; conc_process_join of a forked child; thread queue put on
 * a full queue, get and join; Lock, Condition, Semaphore and Barrier woken
 * by another thread; conc_thread_join; socket recv, accept and sendall on
 * a full socket, a selector's select on each backend, a megabyte between
 * two greenlets over one socket pair, getaddrinfo on its worker.  What
 * tests/test_hub.c already
 * covers (sleep, events, lock kills, queue get fed by a thread, conc_fd_wait)
 * is not repeated.
 *
 * Assertions check order and progress, never durations: a blocking call
 * that blocked the whole thread instead of parking would let no other
 * greenlet log anything until it returned (it then times out after
 * PARK_TIMEOUT and the log is out of order).  Criterion runs every test in
 * its own process; coroutines and threads only record, the test's main
 * coroutine asserts.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conc.h"
#include "support/hub_dump.h"

#include "support/fork_sanitizers.h"

/* How long a parked call waits at most: reached only when the call blocked
 * its thread (nothing could release it). */
#define PARK_TIMEOUT 10.0
/* The timeout scope of the scope tests, opened right before the call. */
#define SCOPE_NS 50000000

/* ------------------------------------------------------------ event log */

static char logbuf[256];
static size_t loglen;

static void logc(char c)
{
    if (loglen + 1 < sizeof logbuf)
        logbuf[loglen++] = c;
    logbuf[loglen] = '\0';
}

/* -------------------------------------------------------------- harness */

/*
 * One kind of blocking call: setup makes block (run in a greenlet) wait;
 * release, called from a greenlet of the same thread or (by_thread) from
 * another thread, lets it return 0; teardown frees everything, whether
 * block was released, killed or timed out.
 */
struct kind {
    void (*setup)(void);
    int (*block)(double timeout);
    void (*release)(void);
    bool by_thread;
    void (*teardown)(void);
};

static const struct kind *K;
static double b_timeout;
static bool b_scope;            /* in a timeout scope of SCOPE_NS */
static int brc;
static uint32_t b_done, go;

static void *blocker(void *arg)
{
    (void)arg;
    logc('b');
    if (b_scope && conc_hub_timeout_push_until(conc_now() + SCOPE_NS) != 0)
        return (void *)1;
    brc = K->block(b_timeout);
    if (b_scope && conc_hub_timeout_pop() != 0)
        return (void *)2;
    logc('B');
    __atomic_store_n(&b_done, 1, __ATOMIC_RELEASE);
    return NULL;
}

/* Runs while the blocker waits: three turns, then releases it (or lets the
 * waker thread do so) and keeps turning until it is done. */
static void *ticker(void *arg)
{
    (void)arg;
    for (int i = 0; i < 3; i++) {
        logc('t');
        conc_sleep(0);
    }
    if (!K->by_thread) {
        logc('r');
        K->release();
        return NULL;
    }
    __atomic_store_n(&go, 1, __ATOMIC_RELEASE);
    while (!__atomic_load_n(&b_done, __ATOMIC_ACQUIRE))
        conc_sleep(0.001);
    return NULL;
}

/* The scope tests' witness: it runs once the blocker parked. */
static void *witness(void *arg)
{
    (void)arg;
    logc('t');
    while (!__atomic_load_n(&b_done, __ATOMIC_ACQUIRE))
        conc_sleep(0.001);
    return NULL;
}

static void *waker_thread(void *arg)
{
    (void)arg;
    while (!__atomic_load_n(&go, __ATOMIC_ACQUIRE))
        usleep(1000);
    K->release();
    return NULL;
}

static void join_free(conc_greenlet *g)
{
    cr_assert_eq(conc_greenlet_join(g, 20.0), 0);
    void *r = (void *)-1;
    cr_assert_eq(conc_greenlet_result(g, &r), 0);
    cr_assert_null(r);
    conc_greenlet_free(g);
}

/* The call parks: the ticker runs while it waits, and the release (by a
 * greenlet or another thread) makes it return 0. */
static void run_parks(const struct kind *k)
{
    K = k;
    k->setup();
    b_timeout = PARK_TIMEOUT;
    brc = 1;
    conc_greenlet *b, *t;
    cr_assert_eq(conc_greenlet_spawn(&b, blocker, NULL, NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&t, ticker, NULL, NULL), 0);
    conc_thread *th = NULL;
    if (k->by_thread) {
        cr_assert_eq(conc_thread_new(&th, waker_thread, NULL, NULL), 0);
        cr_assert_eq(conc_thread_start(th), 0);
    }
    join_free(b);
    join_free(t);
    if (th) {
        cr_assert_eq(conc_thread_join(th, CONC_FOREVER), 0);
        conc_thread_free(th);
    }
    cr_assert_eq(brc, 0, "returned %d", brc);
    cr_assert_str_eq(logbuf, k->by_thread ? "btttB" : "btttrB");
    k->teardown();
    cr_assert_eq(conc_hub_free(), 0);
}

/* conc_greenlet_kill ends the wait with -ECANCELED. */
static void run_kill(const struct kind *k)
{
    K = k;
    k->setup();
    b_timeout = CONC_FOREVER;
    brc = 1;
    conc_greenlet *b;
    cr_assert_eq(conc_greenlet_spawn(&b, blocker, NULL, NULL), 0);
    cr_assert_eq(conc_sleep(0), 0);          /* it runs and parks */
    cr_assert_str_eq(logbuf, "b");
    cr_assert_not(conc_greenlet_dead(b));
    cr_assert_eq(conc_greenlet_kill(b), 0);
    join_free(b);
    cr_assert_eq(brc, -ECANCELED, "returned %d", brc);
    cr_assert_str_eq(logbuf, "bB");
    k->teardown();
    cr_assert_eq(conc_hub_free(), 0);
}

/* A timeout scope around a call without a timeout ends it with -ETIMEDOUT,
 * and the witness runs meanwhile. */
static void run_scope(const struct kind *k)
{
    K = k;
    k->setup();
    b_timeout = CONC_FOREVER;
    b_scope = true;
    brc = 1;
    conc_greenlet *b, *w;
    cr_assert_eq(conc_greenlet_spawn(&b, blocker, NULL, NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&w, witness, NULL, NULL), 0);
    join_free(b);
    join_free(w);
    cr_assert_eq(brc, -ETIMEDOUT, "returned %d", brc);
    cr_assert_str_eq(logbuf, "btB");
    k->teardown();
    cr_assert_eq(conc_hub_free(), 0);
}

#define PARKS(k) \
    Test(blocking, k##_parks, .timeout = 30) { run_parks(&k); }
#define KILL(k) \
    Test(blocking, k##_kill, .timeout = 30) { run_kill(&k); }
#define SCOPE(k) \
    Test(blocking, k##_scope, .timeout = 30) { run_scope(&k); }
#define ALL3(k) PARKS(k) KILL(k) SCOPE(k)

static void nothing(void)
{
}

/* ---------------------------------------------------------- connections */

static conc_conn *ca, *cb;      /* ca receives, cb sends */
static conc_conn *ca2, *cb2;    /* a second pipe */

#define MSG 100
static unsigned char msg[MSG];
static size_t filled;           /* messages put in the full pipe */

static void pipe_setup(void)
{
    cr_assert_eq(conc_conn_pipe(&ca, &cb, false), 0);
}

static void duplex_setup(void)
{
    cr_assert_eq(conc_conn_pipe(&ca, &cb, true), 0);
}

static void pipes_teardown(void)
{
    conc_conn_free(ca);
    conc_conn_free(cb);
    conc_conn_free(ca2);
    conc_conn_free(cb2);
    ca = cb = ca2 = cb2 = NULL;
}

static void send_x(void)
{
    cr_assert_eq(conc_conn_send_bytes(cb, "x", 1, CONC_FOREVER), 0);
}

static int recv_block(double timeout)
{
    char buf[8];
    ssize_t r = conc_conn_recv_bytes(ca, buf, sizeof buf, timeout);
    if (r < 0)
        return (int)r;
    return r == 1 && buf[0] == 'x' ? 0 : -1000;
}

static const struct kind conn_recv = { pipe_setup, recv_block, send_x, false, pipes_teardown };
static const struct kind conn_recv_duplex = { duplex_setup, recv_block, send_x, false,
                                              pipes_teardown };
ALL3(conn_recv)
ALL3(conn_recv_duplex)

static int poll_block(double timeout)
{
    return conc_conn_poll(ca, timeout);
}

static const struct kind conn_poll = { pipe_setup, poll_block, send_x, false, pipes_teardown };
static const struct kind conn_poll_duplex = { duplex_setup, poll_block, send_x, false,
                                              pipes_teardown };
ALL3(conn_poll)
ALL3(conn_poll_duplex)

/* Fills the sending direction with small messages (each written whole or
 * not at all) until a send would block. */
static void fill(void)
{
    memset(msg, 'm', sizeof msg);
    filled = 0;
    int r;
    while ((r = conc_conn_send_bytes(cb, msg, sizeof msg, 0)) == 0)
        filled++;
    cr_assert_eq(r, -EAGAIN);
    cr_assert_gt(filled, 0);
}

static void full_pipe_setup(void)
{
    pipe_setup();
    fill();
}

static void full_duplex_setup(void)
{
    duplex_setup();
    fill();
}

static int send_block(double timeout)
{
    return conc_conn_send_bytes(cb, msg, sizeof msg, timeout);
}

/* Receives everything sent so far. */
static void drain(void)
{
    unsigned char buf[MSG];
    for (size_t i = 0; i < filled; i++)
        cr_assert_eq(conc_conn_recv_bytes(ca, buf, sizeof buf, 0), MSG);
    cr_assert_eq(conc_conn_recv_bytes(ca, buf, sizeof buf, 0), -EAGAIN);
}

static void full_teardown(void)
{
    /* Nothing was written by a cancelled send: the stream is intact. */
    unsigned char buf[MSG];
    if (brc != 0)
        drain();
    else
        cr_assert_eq(conc_conn_recv_bytes(ca, buf, sizeof buf, 0), MSG);
    cr_assert_eq(conc_conn_send_bytes(cb, msg, sizeof msg, 0), 0);
    cr_assert_eq(conc_conn_recv_bytes(ca, buf, sizeof buf, 0), MSG);
    pipes_teardown();
}

static const struct kind conn_send_full = { full_pipe_setup, send_block, drain, false,
                                            full_teardown };
static const struct kind conn_send_full_duplex = { full_duplex_setup, send_block, drain, false,
                                                   full_teardown };
ALL3(conn_send_full)
ALL3(conn_send_full_duplex)

/* A message much larger than the pipe goes between two greenlets of one
 * thread: the sender parks each time the pipe is full, the receiver each
 * time it is empty. */
#define BIG (4u << 20)
static unsigned char *big_out, *big_in;
static int big_send_rc = 1;
static ssize_t big_recv_rc;

static void *big_sender(void *arg)
{
    (void)arg;
    logc('s');
    big_send_rc = conc_conn_send_bytes(cb, big_out, BIG, PARK_TIMEOUT);
    logc('S');
    return NULL;
}

static void *big_receiver(void *arg)
{
    (void)arg;
    logc('r');
    big_recv_rc = conc_conn_recv_bytes(ca, big_in, BIG, PARK_TIMEOUT);
    logc('R');
    return NULL;
}

static void big_message(bool duplex)
{
    cr_assert_eq(conc_conn_pipe(&ca, &cb, duplex), 0);
    big_out = malloc(BIG);
    big_in = malloc(BIG);
    cr_assert(big_out && big_in);
    for (size_t i = 0; i < BIG; i++)
        big_out[i] = (unsigned char)(i * 7 + (i >> 12));
    conc_greenlet *s, *r;
    cr_assert_eq(conc_greenlet_spawn(&s, big_sender, NULL, NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&r, big_receiver, NULL, NULL), 0);
    join_free(s);
    join_free(r);
    cr_assert_eq(big_send_rc, 0);
    cr_assert_eq(big_recv_rc, (ssize_t)BIG);
    cr_assert_eq(memcmp(big_out, big_in, BIG), 0);
    /* The receiver started while the sender was parked on the full pipe. */
    cr_assert_eq(strncmp(logbuf, "sr", 2), 0, "log %s", logbuf);
    free(big_out);
    free(big_in);
    pipes_teardown();
}

Test(blocking, big_message_pipe, .timeout = 30)
{
    big_message(false);
}

Test(blocking, big_message_duplex, .timeout = 30)
{
    big_message(true);
}

/* A send killed after part of its message went out breaks the direction:
 * later sends fail, the receiver never gets half a message. */
static void *big_sender_forever(void *arg)
{
    (void)arg;
    big_send_rc = conc_conn_send_bytes(cb, big_out, BIG, CONC_FOREVER);
    return NULL;
}

Test(blocking, send_killed_midway, .timeout = 30)
{
    cr_assert_eq(conc_conn_pipe(&ca, &cb, true), 0);
    big_out = calloc(1, BIG);
    cr_assert_not_null(big_out);
    conc_greenlet *s;
    cr_assert_eq(conc_greenlet_spawn(&s, big_sender_forever, NULL, NULL), 0);
    cr_assert_eq(conc_sleep(0), 0);          /* it writes what fits, parks */
    cr_assert_not(conc_greenlet_dead(s));
    cr_assert_eq(conc_greenlet_kill(s), 0);
    join_free(s);
    cr_assert_eq(big_send_rc, -ECANCELED);
    cr_assert_eq(conc_conn_send_bytes(cb, "x", 1, CONC_FOREVER), -EPIPE);
    unsigned char buf[16];
    cr_assert_eq(conc_conn_recv_bytes(ca, buf, sizeof buf, 5.0), -EMSGSIZE);
    void *p;
    size_t len;
    cr_assert_eq(conc_conn_recv_alloc(ca, &p, &len, 5.0), -EPIPE);
    free(big_out);
    pipes_teardown();
}

/* ------------------------------------------------------------ conc_wait */

static conc_waitable objs[4];

/* Two pipes, the second listed twice, the first also as a plain fd: a send
 * on the second makes exactly its two entries ready. */
static void two_pipes_setup(void)
{
    cr_assert_eq(conc_conn_pipe(&ca, &cb, false), 0);
    cr_assert_eq(conc_conn_pipe(&ca2, &cb2, false), 0);
}

static int wait_pipes_block(double timeout)
{
    memset(objs, 0, sizeof objs);
    objs[0].kind = CONC_WAIT_CONN;
    objs[0].u.conn = ca;
    objs[1].kind = CONC_WAIT_CONN;
    objs[1].u.conn = ca2;
    objs[2].kind = CONC_WAIT_CONN;
    objs[2].u.conn = ca2;
    objs[3].kind = CONC_WAIT_FD;
    objs[3].u.fd = conc_conn_fd(ca);
    int r = conc_wait(objs, 4, timeout);
    if (r < 0)
        return r;
    return r == 2 && !objs[0].ready && objs[1].ready && objs[2].ready && !objs[3].ready
               ? 0 : -1000 - r;
}

static void send_x2(void)
{
    cr_assert_eq(conc_conn_send_bytes(cb2, "x", 1, CONC_FOREVER), 0);
}

static const struct kind wait_pipes = { two_pipes_setup, wait_pipes_block, send_x2, false,
                                        pipes_teardown };
ALL3(wait_pipes)

/* A thread queue, fed by another thread. */
static conc_queue *q;

static void wait_queue_setup(void)
{
    cr_assert_eq(conc_queue_new(&q, NULL), 0);
    pipe_setup();
}

static int wait_queue_block(double timeout)
{
    memset(objs, 0, sizeof objs);
    objs[0].kind = CONC_WAIT_CONN;
    objs[0].u.conn = ca;
    objs[1].kind = CONC_WAIT_QUEUE;
    objs[1].u.queue = q;
    int r = conc_wait(objs, 2, timeout);
    if (r < 0)
        return r;
    return r == 1 && !objs[0].ready && objs[1].ready ? 0 : -1000 - r;
}

static void put_one(void)
{
    conc_queue_put(q, (void *)1, CONC_FOREVER);
}

static void queue_teardown(void)
{
    conc_queue_free(q);
    q = NULL;
    pipes_teardown();
}

static const struct kind wait_queue = { wait_queue_setup, wait_queue_block, put_one, true,
                                        queue_teardown };
ALL3(wait_queue)

/* An empty list sleeps until the timeout (a timeout is required). */
static int wait_none_block(double timeout)
{
    return conc_wait(NULL, 0, timeout < 0 ? PARK_TIMEOUT : timeout);
}

static const struct kind wait_none = { nothing, wait_none_block, nothing, false, nothing };
KILL(wait_none)
SCOPE(wait_none)

/* A kill pending when conc_wait finds entries ready does not end it: it is
 * for the next call that has to wait. */
static int pend_rc[3];

static void *self_killer(void *arg)
{
    (void)arg;
    conc_greenlet_kill(conc_greenlet_current());
    conc_waitable o[2] = {
        { .kind = CONC_WAIT_CONN, .u.conn = ca },
        { .kind = CONC_WAIT_CONN, .u.conn = ca2 },
    };
    pend_rc[0] = conc_wait(o, 2, PARK_TIMEOUT);
    pend_rc[1] = o[0].ready && !o[1].ready;
    pend_rc[2] = conc_wait(o + 1, 1, PARK_TIMEOUT);
    return NULL;
}

Test(blocking, wait_ready_before_kill, .timeout = 30)
{
    two_pipes_setup();
    send_x();
    conc_greenlet *g;
    cr_assert_eq(conc_greenlet_spawn(&g, self_killer, NULL, NULL), 0);
    join_free(g);
    cr_assert_eq(pend_rc[0], 1);
    cr_assert_eq(pend_rc[1], 1);
    cr_assert_eq(pend_rc[2], -ECANCELED);
    pipes_teardown();
    cr_assert_eq(conc_hub_free(), 0);
}

/* --------------------------------------------------------- a child */

/* A forked child that ends when it reads a byte from ctl[0]. */
static int ctl[2];
static conc_process *child;

static int child_main(const void *arg, size_t len)
{
    (void)len;
    const int *fds = arg;
    close(fds[1]);
    char c;
    ssize_t n;
    do
        n = read(fds[0], &c, 1);
    while (n < 0 && errno == EINTR);
    return n == 1 ? 7 : 1;
}

static void child_setup(void)
{
    cr_assert_eq(pipe2(ctl, O_CLOEXEC), 0);
    conc_process_opts o = { .method = CONC_START_FORK };
    cr_assert_eq(conc_process_new(&child, child_main, ctl, sizeof ctl, &o), 0);
    cr_assert_eq(conc_process_start(child), 0);
    pipe_setup();
}

static void child_release(void)
{
    cr_assert_eq(write(ctl[1], "x", 1), 1);
}

static void child_teardown(void)
{
    if (brc != 0)
        child_release();
    cr_assert_eq(conc_process_join(child, 20.0), 0);
    int code = -1;
    cr_assert_eq(conc_process_exitcode(child, &code), 0);
    cr_assert_eq(code, 7);
    conc_process_free(child);
    close(ctl[0]);
    close(ctl[1]);
    pipes_teardown();
}

static int wait_sentinel_block(double timeout)
{
    memset(objs, 0, sizeof objs);
    objs[0].kind = CONC_WAIT_CONN;
    objs[0].u.conn = ca;
    objs[1].kind = CONC_WAIT_PROCESS;
    objs[1].u.process = child;
    int r = conc_wait(objs, 2, timeout);
    if (r < 0)
        return r;
    return r == 1 && !objs[0].ready && objs[1].ready ? 0 : -1000 - r;
}

static const struct kind wait_sentinel = { child_setup, wait_sentinel_block, child_release,
                                           false, child_teardown };
ALL3(wait_sentinel)

static int process_join_block(double timeout)
{
    return conc_process_join(child, timeout);
}

static const struct kind process_join = { child_setup, process_join_block, child_release,
                                          false, child_teardown };
ALL3(process_join)

/* ------------------------------------------------------- thread queues */

/* put on a full bounded queue, emptied by another thread. */
static void full_queue_setup(void)
{
    conc_queue_opts o = { .maxsize = 1 };
    cr_assert_eq(conc_queue_new(&q, &o), 0);
    cr_assert_eq(conc_queue_put(q, (void *)1, 0), 0);
}

static int queue_put_block(double timeout)
{
    return conc_queue_put(q, (void *)2, timeout);
}

static void get_one(void)
{
    void *item;
    conc_queue_get(q, &item, CONC_FOREVER);
}

static void full_queue_teardown(void)
{
    void *item = NULL;
    cr_assert_eq(conc_queue_get(q, &item, 0), 0);
    cr_assert_eq((intptr_t)item, brc == 0 ? 2 : 1);
    cr_assert_eq(conc_queue_get(q, &item, 0), -EAGAIN);
    queue_teardown();
}

static const struct kind queue_put = { full_queue_setup, queue_put_block, get_one, true,
                                       full_queue_teardown };
ALL3(queue_put)

/* get: parks and kill are in test_hub.c (queue fed by another thread). */
static void empty_queue_setup(void)
{
    cr_assert_eq(conc_queue_new(&q, NULL), 0);
}

static int queue_get_block(double timeout)
{
    void *item;
    return conc_queue_get(q, &item, timeout);
}

static const struct kind queue_get = { empty_queue_setup, queue_get_block, put_one, true,
                                       queue_teardown };
SCOPE(queue_get)

/* join: until another thread marks the task done. */
static void task_queue_setup(void)
{
    cr_assert_eq(conc_queue_new(&q, NULL), 0);
    cr_assert_eq(conc_queue_put(q, (void *)1, 0), 0);
}

static int queue_join_block(double timeout)
{
    return conc_queue_join(q, timeout);
}

static void task_done(void)
{
    get_one();
    conc_queue_task_done(q);
}

static void task_queue_teardown(void)
{
    cr_assert_eq(conc_queue_unfinished(q), brc == 0 ? 0 : 1);
    queue_teardown();
}

static const struct kind queue_join = { task_queue_setup, queue_join_block, task_done, true,
                                        task_queue_teardown };
ALL3(queue_join)

/* ---------------------------------------------- synchronization objects */

/* Lock: held by the main coroutine, released by another thread (kill and
 * scope are in test_hub.c). */
static conc_lock lk = CONC_LOCK_INIT;

static void lock_setup(void)
{
    cr_assert_eq(conc_lock_acquire(&lk, 0), 0);
}

static int lock_block(double timeout)
{
    int r = conc_lock_acquire(&lk, timeout);
    if (r == 0)
        conc_lock_release(&lk);
    return r;
}

static void lock_release(void)
{
    conc_lock_release(&lk);
}

static void lock_teardown(void)
{
    if (conc_lock_locked(&lk))
        cr_assert_eq(conc_lock_release(&lk), 0);
    cr_assert_not(conc_lock_locked(&lk));
}

static const struct kind lock = { lock_setup, lock_block, lock_release, true, lock_teardown };
PARKS(lock)

/* Condition: notified by another thread (kill is in test_hub.c). */
static conc_cond cv = CONC_COND_INIT;
static conc_lock cv_lock = CONC_LOCK_INIT;
static int cv_flag;

static int cond_block(double timeout)
{
    int r = conc_lock_acquire(&cv_lock, CONC_FOREVER);
    if (r)
        return -2000 + r;
    while (!cv_flag && r == 0)
        r = conc_cond_wait(&cv, &cv_lock, timeout);
    conc_lock_release(&cv_lock);
    return r;
}

static void cond_release(void)
{
    conc_lock_acquire(&cv_lock, CONC_FOREVER);
    cv_flag = 1;
    conc_cond_notify_all(&cv);
    conc_lock_release(&cv_lock);
}

static const struct kind cond = { nothing, cond_block, cond_release, true, nothing };
PARKS(cond)
SCOPE(cond)

/* Semaphore: released by another thread. */
static conc_sem sem;

static void sem_setup(void)
{
    cr_assert_eq(conc_sem_init(&sem, 0, 0), 0);
}

static int sem_block(double timeout)
{
    return conc_sem_acquire(&sem, timeout);
}

static void sem_release(void)
{
    conc_sem_release(&sem, 1);
}

static void sem_teardown(void)
{
    cr_assert_eq(conc_sem_value(&sem), 0);
}

static const struct kind sem_kind = { sem_setup, sem_block, sem_release, true, sem_teardown };
ALL3(sem_kind)

/* Barrier of two: another thread is the second party. */
static conc_barrier bar;

static void barrier_setup(void)
{
    cr_assert_eq(conc_barrier_init(&bar, 2, 0), 0);
}

static int barrier_block(double timeout)
{
    int r = conc_barrier_wait(&bar, timeout);
    return r >= 0 ? 0 : r;
}

static void barrier_release(void)
{
    conc_barrier_wait(&bar, 20.0);
}

static void barrier_teardown(void)
{
    /* A killed or timed-out party breaks the barrier, as in Python. */
    cr_assert_eq(conc_barrier_broken(&bar), brc != 0);
}

static const struct kind barrier = { barrier_setup, barrier_block, barrier_release, true,
                                     barrier_teardown };
ALL3(barrier)

/* ------------------------------------------------------ thread join */

static conc_thread *jt;
static uint32_t jt_go;

static void *jt_main(void *arg)
{
    (void)arg;
    while (!__atomic_load_n(&jt_go, __ATOMIC_ACQUIRE))
        usleep(1000);
    return (void *)7;
}

static void jt_setup(void)
{
    cr_assert_eq(conc_thread_new(&jt, jt_main, NULL, NULL), 0);
    cr_assert_eq(conc_thread_start(jt), 0);
}

static int jt_block(double timeout)
{
    return conc_thread_join(jt, timeout);
}

/* From a greenlet: the thread ends and its end wakes the joiner. */
static void jt_release(void)
{
    __atomic_store_n(&jt_go, 1, __ATOMIC_RELEASE);
}

static void jt_teardown(void)
{
    jt_release();
    cr_assert_eq(conc_thread_join(jt, CONC_FOREVER), 0);
    void *r = NULL;
    cr_assert_eq(conc_thread_result(jt, &r), 0);
    cr_assert_eq((intptr_t)r, 7);
    conc_thread_free(jt);
}

static const struct kind thread_join = { jt_setup, jt_block, jt_release, false, jt_teardown };
ALL3(thread_join)

/* ------------------------------------------- conc_wait's fine print */

/* A descriptor that one greenlet waits on with conc_fd_wait (the hub's
 * epoll holds it) is waited on by conc_wait in others, and in the main
 * coroutine: one write wakes them all. */
static int fdw_rc[3] = { 1, 1, 1 };
static int pfd[2];

static void *fd_waiter(void *arg)
{
    (void)arg;
    logc('f');
    fdw_rc[0] = conc_fd_wait(pfd[0], POLLIN, PARK_TIMEOUT);
    logc('F');
    return NULL;
}

static void *list_waiter(void *arg)
{
    int i = (int)(intptr_t)arg;
    conc_waitable o[2] = {
        { .kind = CONC_WAIT_FD, .u.fd = pfd[0] },
        { .kind = CONC_WAIT_FD, .u.fd = pfd[0], .events = POLLIN | POLLPRI },
    };
    logc('w');
    fdw_rc[i] = conc_wait(o, 2, PARK_TIMEOUT);
    if (fdw_rc[i] == 2 && !(o[0].ready && o[1].ready))
        fdw_rc[i] = -1000;
    logc('W');
    return NULL;
}

static void *fd_writer(void *arg)
{
    (void)arg;
    logc('x');
    cr_assert_eq(write(pfd[1], "x", 1), 1);
    return NULL;
}

Test(blocking, wait_shares_fds, .timeout = 30)
{
    cr_assert_eq(pipe2(pfd, O_CLOEXEC), 0);
    conc_greenlet *g[4];
    cr_assert_eq(conc_greenlet_spawn(&g[0], fd_waiter, NULL, NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&g[1], list_waiter, (void *)1, NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&g[2], list_waiter, (void *)2, NULL), 0);
    cr_assert_eq(conc_sleep(0), 0);          /* all three park */
    cr_assert_str_eq(logbuf, "fww");
    /* The dump tells a list wait from a single one. */
    int lines;
    char *text = hub_dump_text(&lines);
    cr_assert_not_null(text);
    cr_assert_eq(lines, 4);
    cr_assert(strstr(text, "fds"), "dump: %s", text);
    cr_assert(strstr(text, "events 0x1"), "dump: %s", text);
    free(text);
    cr_assert_eq(conc_greenlet_spawn(&g[3], fd_writer, NULL, NULL), 0);
    /* The main coroutine waits too; the writer runs meanwhile. */
    conc_waitable o = { .kind = CONC_WAIT_FD, .u.fd = pfd[0] };
    cr_assert_eq(conc_wait(&o, 1, PARK_TIMEOUT), 1);
    cr_assert(o.ready);
    for (int i = 0; i < 4; i++)
        join_free(g[i]);
    cr_assert_eq(fdw_rc[0], 0);
    cr_assert_eq(fdw_rc[1], 2);
    cr_assert_eq(fdw_rc[2], 2);
    cr_assert_eq(strncmp(logbuf, "fwwx", 4), 0, "log %s", logbuf);
    cr_assert_eq(loglen, 7);
    close(pfd[0]);
    close(pfd[1]);
    cr_assert_eq(conc_hub_free(), 0);
}

/* What poll() says, a greenlet's conc_wait says: closed descriptors,
 * regular files, write ends, hang-ups, timeout 0, one ready entry ending
 * the wait of the rest. */
static int errs[8];

static void *edge_cases(void *arg)
{
    (void)arg;
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0)
        return (void *)1;
    int closed = dup(p[0]);
    close(closed);
    conc_waitable bad[2] = {
        { .kind = CONC_WAIT_FD, .u.fd = p[0] },
        { .kind = CONC_WAIT_FD, .u.fd = closed },
    };
    errs[0] = conc_wait(bad, 2, PARK_TIMEOUT);              /* -EBADF */
    FILE *tmp = tmpfile();
    if (!tmp)
        return (void *)2;
    conc_waitable file[2] = {
        { .kind = CONC_WAIT_FD, .u.fd = p[0] },
        { .kind = CONC_WAIT_FD, .u.fd = fileno(tmp) },
    };
    errs[1] = conc_wait(file, 2, PARK_TIMEOUT);             /* 1: the file */
    errs[2] = file[1].ready && !file[0].ready;
    fclose(tmp);
    conc_waitable wr[2] = {
        { .kind = CONC_WAIT_FD, .u.fd = p[0] },
        { .kind = CONC_WAIT_FD, .u.fd = p[1], .events = POLLOUT },
    };
    errs[3] = conc_wait(wr, 2, PARK_TIMEOUT);               /* 1: writable */
    conc_waitable rd = { .kind = CONC_WAIT_FD, .u.fd = p[0] };
    errs[4] = conc_wait(&rd, 1, 0);                         /* -EAGAIN */
    errs[5] = conc_wait(&rd, 1, 0.001);                     /* -ETIMEDOUT */
    close(p[1]);
    errs[6] = conc_wait(&rd, 1, PARK_TIMEOUT);              /* 1: hang-up */
    errs[7] = rd.ready;
    close(p[0]);
    return NULL;
}

Test(blocking, wait_edge_cases, .timeout = 30)
{
    conc_greenlet *g;
    cr_assert_eq(conc_greenlet_spawn(&g, edge_cases, NULL, NULL), 0);
    join_free(g);
    cr_assert_eq(errs[0], -EBADF);
    cr_assert_eq(errs[1], 1);
    cr_assert_eq(errs[2], 1);
    cr_assert_eq(errs[3], 1);
    cr_assert_eq(errs[4], -EAGAIN);
    cr_assert_eq(errs[5], -ETIMEDOUT);
    cr_assert_eq(errs[6], 1);
    cr_assert_eq(errs[7], 1);
    cr_assert_eq(conc_hub_free(), 0);
}

/* A descriptor closed while a greenlet waits for it in a list: the wait
 * ends (poll's POLLNVAL, -EBADF) once something else wakes it up, or at
 * the latest at its timeout - never with a descriptor left behind. */
static int closed_rc = 1;

static void *closing_waiter(void *arg)
{
    int *p = arg;
    conc_waitable o[2] = {
        { .kind = CONC_WAIT_FD, .u.fd = p[0] },
        { .kind = CONC_WAIT_FD, .u.fd = p[2] },
    };
    closed_rc = conc_wait(o, 2, PARK_TIMEOUT);
    return NULL;
}

Test(blocking, wait_after_close, .timeout = 30)
{
    int p[4];
    cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
    cr_assert_eq(pipe2(p + 2, O_CLOEXEC), 0);
    conc_greenlet *g;
    cr_assert_eq(conc_greenlet_spawn(&g, closing_waiter, p, NULL), 0);
    cr_assert_eq(conc_sleep(0), 0);          /* it parks */
    close(p[0]);
    close(p[1]);
    cr_assert_eq(write(p[3], "x", 1), 1);    /* wakes it: p[0] is gone */
    join_free(g);
    cr_assert_eq(closed_rc, -EBADF);
    close(p[2]);
    close(p[3]);
    cr_assert_eq(conc_hub_free(), 0);
}

/* -------------------------------------------------------------- sockets */

static conc_socket *sa, *sb;        /* sa receives, sb sends */

static void sock_setup(void)
{
    cr_assert_eq(conc_socket_pair(&sa, &sb, AF_UNIX, SOCK_STREAM, 0), 0);
}

static void sock_teardown(void)
{
    conc_socket_free(sa);
    conc_socket_free(sb);
    sa = sb = NULL;
}

static void sock_send_x(void)
{
    cr_assert_eq(conc_socket_send(sb, "x", 1, 0), 1);
}

static int sock_recv_block(double timeout)
{
    char c = 0;
    int r = conc_socket_set_timeout(sa, timeout);
    if (r < 0)
        return r;
    ssize_t n = conc_socket_recv(sa, &c, 1, 0);
    if (n < 0)
        return (int)n;
    return n == 1 && c == 'x' ? 0 : -1000;
}

static const struct kind socket_recv = { sock_setup, sock_recv_block, sock_send_x, false,
                                         sock_teardown };
static const struct kind socket_recv_thread = { sock_setup, sock_recv_block, sock_send_x, true,
                                                sock_teardown };
ALL3(socket_recv)
PARKS(socket_recv_thread)

/* sendall on a full socket: parks until the peer drains it. */
static size_t sock_filled;

static void sock_full_setup(void)
{
    sock_setup();
    cr_assert_eq(conc_socket_set_timeout(sb, 0), 0);
    memset(msg, 'm', sizeof msg);
    sock_filled = 0;
    ssize_t n;
    while ((n = conc_socket_send(sb, msg, sizeof msg, 0)) > 0)
        sock_filled += (size_t)n;
    cr_assert_eq(n, -EAGAIN);
}

static int sock_sendall_block(double timeout)
{
    int r = conc_socket_set_timeout(sb, timeout);
    if (r < 0)
        return r;
    size_t sent = 0;
    r = conc_socket_sendall(sb, msg, sizeof msg, 0, &sent);
    return r == 0 && sent != sizeof msg ? -1000 : r;
}

static void sock_drain(void)
{
    unsigned char buf[4096];
    cr_assert_eq(conc_socket_set_timeout(sa, 0), 0);
    size_t got = 0;
    while (got < sock_filled) {
        ssize_t n = conc_socket_recv(sa, buf, sizeof buf, 0);
        cr_assert_gt(n, 0);
        got += (size_t)n;
    }
}

static const struct kind socket_sendall_full = { sock_full_setup, sock_sendall_block, sock_drain,
                                                 false, sock_teardown };
ALL3(socket_sendall_full)

/* accept, released by a client that connects. */
static conc_socket *lsn;
static int lsn_port;

static void accept_setup(void)
{
    cr_assert_eq(conc_socket_create_server(&lsn, "127.0.0.1", 0, NULL), 0);
    conc_sockaddr a;
    cr_assert_eq(conc_socket_getsockname(lsn, &a), 0);
    lsn_port = conc_sockaddr_port(&a);
}

static int accept_block(double timeout)
{
    int r = conc_socket_set_timeout(lsn, timeout);
    if (r < 0)
        return r;
    conc_socket *c = NULL;
    r = conc_socket_accept(lsn, &c, NULL);
    conc_socket_free(c);
    return r;
}

static void accept_release(void)
{
    cr_assert_eq(conc_socket_create_connection(&sb, "127.0.0.1", lsn_port, PARK_TIMEOUT, NULL), 0);
}

static void accept_teardown(void)
{
    conc_socket_free(lsn);
    lsn = NULL;
    sock_teardown();
}

static const struct kind socket_accept = { accept_setup, accept_block, accept_release, false,
                                           accept_teardown };
static const struct kind socket_accept_thread = { accept_setup, accept_block, accept_release,
                                                  true, accept_teardown };
ALL3(socket_accept)
PARKS(socket_accept_thread)

/* A selector's select, on each backend. */
static conc_selector *sel;

static void sel_setup(conc_selector_backend b)
{
    sock_setup();
    cr_assert_eq(conc_selector_new(&sel, b), 0);
    cr_assert_eq(conc_selector_register(sel, conc_socket_fd(sa), CONC_EVENT_READ, sa), 0);
}

static void sel_epoll_setup(void)
{
    sel_setup(CONC_SELECTOR_EPOLL);
}

static void sel_poll_setup(void)
{
    sel_setup(CONC_SELECTOR_POLL);
}

static void sel_select_setup(void)
{
    sel_setup(CONC_SELECTOR_SELECT);
}

static int sel_block(double timeout)
{
    conc_selector_event ev[2];
    int n = conc_selector_select(sel, ev, 2, timeout);
    if (n < 0)
        return n;
    return n == 1 && ev[0].key.data == sa && ev[0].events == CONC_EVENT_READ ? 0 : -1000;
}

static void sel_teardown(void)
{
    conc_selector_free(sel);
    sel = NULL;
    sock_teardown();
}

static const struct kind selector_epoll = { sel_epoll_setup, sel_block, sock_send_x, false,
                                            sel_teardown };
static const struct kind selector_poll = { sel_poll_setup, sel_block, sock_send_x, false,
                                           sel_teardown };
static const struct kind selector_select = { sel_select_setup, sel_block, sock_send_x, true,
                                             sel_teardown };
ALL3(selector_epoll)
ALL3(selector_poll)
ALL3(selector_select)

/* A megabyte between two greenlets of one thread over one socket pair:
 * each parks when its side is full or empty (the two wait on the two
 * ends at once, and both ends of the pair are watched by one hub). */
static int sbig_send_rc = 1;
static ssize_t sbig_recv_rc;

static void *sbig_sender(void *arg)
{
    (void)arg;
    logc('s');
    size_t sent = 0;
    sbig_send_rc = conc_socket_sendall(sb, big_out, BIG, 0, &sent);
    logc('S');
    return NULL;
}

static void *sbig_receiver(void *arg)
{
    (void)arg;
    logc('r');
    sbig_recv_rc = conc_socket_recv(sa, big_in, BIG, MSG_WAITALL);
    logc('R');
    return NULL;
}

Test(blocking, socket_big_message, .timeout = 30)
{
    sock_setup();
    big_out = malloc(BIG);
    big_in = malloc(BIG);
    cr_assert(big_out && big_in);
    for (size_t i = 0; i < BIG; i++)
        big_out[i] = (unsigned char)(i * 7 + (i >> 12));
    conc_greenlet *s, *r;
    cr_assert_eq(conc_greenlet_spawn(&s, sbig_sender, NULL, NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&r, sbig_receiver, NULL, NULL), 0);
    join_free(s);
    join_free(r);
    cr_assert_eq(sbig_send_rc, 0);
    cr_assert_eq(sbig_recv_rc, (ssize_t)BIG);
    cr_assert_eq(memcmp(big_out, big_in, BIG), 0);
    cr_assert_eq(strncmp(logbuf, "sr", 2), 0, "log %s", logbuf);
    free(big_out);
    free(big_in);
    sock_teardown();
    cr_assert_eq(conc_hub_free(), 0);
}

/* The resolver from a greenlet runs on an offload worker (one was started
 * for it), so the thread is free for the others while it looks up. */
static int gai_rc;

static void *gai_main(void *arg)
{
    (void)arg;
    logc('g');
    conc_addrinfo *ai = NULL;
    gai_rc = conc_socket_getaddrinfo("localhost", "80", AF_INET, SOCK_STREAM, 0, 0, &ai);
    if (gai_rc > 0 && conc_sockaddr_port(&ai[0].addr) != 80)
        gai_rc = -1000;
    free(ai);
    logc('G');
    __atomic_store_n(&b_done, 1, __ATOMIC_RELEASE);
    return NULL;
}

Test(blocking, getaddrinfo_from_a_greenlet, .timeout = 30)
{
    conc_offload_stats st;
    cr_assert_eq(conc_offload_get_stats(&st), 0);
    cr_assert_eq(st.workers, 0);
    conc_greenlet *g, *t;
    b_done = 0;
    cr_assert_eq(conc_greenlet_spawn(&g, gai_main, NULL, NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&t, witness, NULL, NULL), 0);
    join_free(g);
    join_free(t);
    cr_assert_gt(gai_rc, 0, "%d", gai_rc);
    cr_assert_eq(conc_offload_get_stats(&st), 0);
    cr_assert_geq(st.workers, 1);
    /* The witness ran, whether the lookup was still on its worker then
     * ("gtG") or had already returned ("gGt"). */
    cr_assert(strcmp(logbuf, "gtG") == 0 || strcmp(logbuf, "gGt") == 0, "log %s", logbuf);
    cr_assert_eq(conc_hub_free(), 0);
}
