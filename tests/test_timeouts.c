/*
 * test_timeouts.c - the one timeout rule, call by call, for every blocking
 * call of conc/sync.h, thread.h, process.h, pipe.h, wait.h, queue.h,
 * mpqueue.h, hub.h, cpool.h, offload.h, socket.h, selector.h, future.h and
 * executor.h (the coroutine calls from a greenlet of a hub, and from a plain
 * thread where they may be): on an object that is not ready, a timeout of 0 tries once and
 * gives -EAGAIN, a small positive timeout gives -ETIMEDOUT, and the _until
 * form given a deadline that has passed (just now, or 0) gives -ETIMEDOUT.
 * Condition and Barrier follow Python instead (a zero timeout is a wait that
 * times out): they give -ETIMEDOUT for 0 too.  A NaN or a negative timeout
 * other than CONC_FOREVER is -EINVAL everywhere.
 *
 * Every test has the same .timeout (see test_sync.c for why).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdlib.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#include "conc/cpool.h"
#include "conc/executor.h"
#include "conc/future.h"
#include "conc/hub.h"
#include "conc/offload.h"
#include "conc/mpqueue.h"
#include "conc/pipe.h"
#include "conc/process.h"
#include "conc/queue.h"
#include "conc/selector.h"
#include "conc/socket.h"
#include "conc/sync.h"
#include "conc/thread.h"
#include "conc/wait.h"

#define GUARD 60.0

/* Runs the seconds form (call_t, using t) and the deadline form (call_d,
 * using d) on an object that cannot be ready, and checks the codes. */
#define PROBE(zero_rc, call_t, call_d)                                              \
    do {                                                                            \
        double t;                                                                   \
        int64_t d;                                                                  \
        t = 0;                                                                      \
        cr_expect_eq((long)(call_t), (long)(zero_rc), "%s, timeout 0", #call_t);    \
        t = 0.001;                                                                  \
        cr_expect_eq((long)(call_t), -ETIMEDOUT, "%s, timeout 0.001", #call_t);     \
        t = -2.0;                                                                   \
        cr_expect_eq((long)(call_t), -EINVAL, "%s, timeout -2", #call_t);           \
        t = NAN;                                                                    \
        cr_expect_eq((long)(call_t), -EINVAL, "%s, timeout NaN", #call_t);          \
        d = conc_now() - 1;                                                         \
        cr_expect_eq((long)(call_d), -ETIMEDOUT, "%s, deadline passed", #call_d);   \
        d = 0;                                                                      \
        cr_expect_eq((long)(call_d), -ETIMEDOUT, "%s, deadline 0", #call_d);        \
    } while (0)

/* A thread that holds a lock (or an RLock) until told to let go. */
struct holder {
    conc_lock *lock;
    conc_rlock *rlock;
    conc_event taken, release;
};

static void *hold(void *arg)
{
    struct holder *h = arg;
    if (h->lock)
        conc_lock_acquire(h->lock, CONC_FOREVER);
    else
        conc_rlock_acquire(h->rlock, CONC_FOREVER);
    conc_event_set(&h->taken);
    conc_event_wait(&h->release, GUARD);
    if (h->lock)
        conc_lock_release(h->lock);
    else
        conc_rlock_release(h->rlock);
    return NULL;
}

static conc_thread *start_holder(struct holder *h)
{
    conc_event_init(&h->taken, 0);
    conc_event_init(&h->release, 0);
    conc_thread *th;
    cr_assert_eq(conc_thread_new(&th, hold, h, NULL), 0);
    cr_assert_eq(conc_thread_start(th), 0);
    cr_assert_eq(conc_event_wait(&h->taken, GUARD), 0);
    return th;
}

static void stop_holder(struct holder *h, conc_thread *th)
{
    conc_event_set(&h->release);
    cr_assert_eq(conc_thread_join(th, GUARD), 0);
    conc_thread_free(th);
}

TestSuite(timeouts, .timeout = 60);

Test(timeouts, lock)
{
    conc_lock lock;
    cr_assert_eq(conc_lock_init(&lock, 0), 0);
    struct holder h = { .lock = &lock };
    conc_thread *th = start_holder(&h);
    PROBE(-EAGAIN, conc_lock_acquire(&lock, t), conc_lock_acquire_until(&lock, d));
    stop_holder(&h, th);
}

Test(timeouts, shared_lock)
{
    conc_lock lock;
    cr_assert_eq(conc_lock_init(&lock, CONC_SYNC_SHARED), 0);
    struct holder h = { .lock = &lock };
    conc_thread *th = start_holder(&h);
    PROBE(-EAGAIN, conc_lock_acquire(&lock, t), conc_lock_acquire_until(&lock, d));
    stop_holder(&h, th);
}

Test(timeouts, rlock)
{
    conc_rlock lock;
    cr_assert_eq(conc_rlock_init(&lock, 0), 0);
    struct holder h = { .rlock = &lock };
    conc_thread *th = start_holder(&h);
    PROBE(-EAGAIN, conc_rlock_acquire(&lock, t), conc_rlock_acquire_until(&lock, d));
    stop_holder(&h, th);
}

Test(timeouts, semaphore)
{
    conc_sem sem;
    cr_assert_eq(conc_sem_init(&sem, 0, 0), 0);
    PROBE(-EAGAIN, conc_sem_acquire(&sem, t), conc_sem_acquire_until(&sem, d));
    cr_assert_eq(conc_sem_init(&sem, 0, CONC_SYNC_SHARED), 0);
    PROBE(-EAGAIN, conc_sem_acquire(&sem, t), conc_sem_acquire_until(&sem, d));
}

Test(timeouts, event)
{
    conc_event ev;
    cr_assert_eq(conc_event_init(&ev, 0), 0);
    PROBE(-EAGAIN, conc_event_wait(&ev, t), conc_event_wait_until(&ev, d));
}

static int never(void *arg)
{
    (void)arg;
    return 0;
}

/* Python's Condition.wait(0) is a wait that times out: -ETIMEDOUT for 0. */
Test(timeouts, condition_follows_python)
{
    conc_cond cond;
    conc_lock lock;
    conc_rlock rlock;
    cr_assert_eq(conc_cond_init(&cond, 0), 0);
    cr_assert_eq(conc_lock_init(&lock, 0), 0);
    cr_assert_eq(conc_rlock_init(&rlock, 0), 0);
    cr_assert_eq(conc_lock_acquire(&lock, CONC_FOREVER), 0);
    cr_assert_eq(conc_rlock_acquire(&rlock, CONC_FOREVER), 0);
    PROBE(-ETIMEDOUT, conc_cond_wait(&cond, &lock, t), conc_cond_wait_until(&cond, &lock, d));
    PROBE(-ETIMEDOUT, conc_cond_wait_r(&cond, &rlock, t),
          conc_cond_wait_r_until(&cond, &rlock, d));
    PROBE(-ETIMEDOUT, conc_cond_wait_for(&cond, &lock, never, NULL, t),
          conc_cond_wait_for_until(&cond, &lock, never, NULL, d));
    PROBE(-ETIMEDOUT, conc_cond_wait_for_r(&cond, &rlock, never, NULL, t),
          conc_cond_wait_for_r_until(&cond, &rlock, never, NULL, d));
    cr_assert(conc_lock_held(&lock));
    cr_assert_eq(conc_lock_release(&lock), 0);
    cr_assert_eq(conc_rlock_release(&rlock), 0);
}

/* Python's Barrier.wait(0) times out and breaks the barrier; every probe
 * here starts from a reset barrier. */
static int barrier_probe(conc_barrier *b, double t, int64_t d, bool until, bool action)
{
    cr_assert_eq(conc_barrier_reset(b), 0);
    if (action)
        return until ? conc_barrier_wait_action_until(b, d, NULL, NULL)
                     : conc_barrier_wait_action(b, t, NULL, NULL);
    return until ? conc_barrier_wait_until(b, d) : conc_barrier_wait(b, t);
}

Test(timeouts, barrier_follows_python)
{
    conc_barrier b;
    cr_assert_eq(conc_barrier_init(&b, 2, 0), 0);
    PROBE(-ETIMEDOUT, barrier_probe(&b, t, 0, false, false), barrier_probe(&b, 0, d, true, false));
    PROBE(-ETIMEDOUT, barrier_probe(&b, t, 0, false, true), barrier_probe(&b, 0, d, true, true));
    cr_assert(conc_barrier_broken(&b));
}

static void *wait_event(void *arg)
{
    conc_event_wait(arg, GUARD);
    return NULL;
}

Test(timeouts, thread_join)
{
    conc_event ev;
    conc_event_init(&ev, 0);
    conc_thread *th;
    cr_assert_eq(conc_thread_new(&th, wait_event, &ev, NULL), 0);
    cr_assert_eq(conc_thread_start(th), 0);
    PROBE(-EAGAIN, conc_thread_join(th, t), conc_thread_join_until(th, d));
    conc_event_set(&ev);
    cr_assert_eq(conc_thread_join(th, GUARD), 0);
    conc_thread_free(th);
}

static int sleep_forever(const void *arg, size_t len)
{
    (void)arg;
    (void)len;
    for (;;)
        pause();
    return 0;
}

Test(timeouts, process_join)
{
    conc_process *p;
    cr_assert_eq(conc_process_new(&p, sleep_forever, NULL, 0,
                                  &(conc_process_opts){ .method = CONC_START_FORK }), 0);
    cr_assert_eq(conc_process_start(p), 0);
    PROBE(-EAGAIN, conc_process_join(p, t), conc_process_join_until(p, d));
    cr_assert_eq(conc_process_kill(p), 0);
    cr_assert_eq(conc_process_join(p, GUARD), 0);
    conc_process_free(p);
}

Test(timeouts, connection)
{
    conc_conn *a, *b;
    cr_assert_eq(conc_conn_pipe(&a, &b, true), 0);
    char buf[64];
    void *m = NULL;
    size_t len;
    PROBE(-EAGAIN, conc_conn_recv_bytes(a, buf, sizeof buf, t),
          conc_conn_recv_bytes_until(a, buf, sizeof buf, d));
    PROBE(-EAGAIN, conc_conn_recv_size(a, t), conc_conn_recv_size_until(a, d));
    PROBE(-EAGAIN, conc_conn_recv_alloc(a, &m, &len, t), conc_conn_recv_alloc_until(a, &m, &len, d));
    PROBE(-EAGAIN, conc_conn_poll(a, t), conc_conn_poll_until(a, d));
    conc_waitable w = { .kind = CONC_WAIT_CONN, .u.conn = a };
    PROBE(-EAGAIN, conc_wait(&w, 1, t), conc_wait_until(&w, 1, d));
    cr_assert_null(m);

    /* Fill b's direction until a send of 4 KiB cannot go through at once. */
    static char big[4096];
    int r;
    while ((r = conc_conn_send_bytes(b, big, sizeof big, 0)) == 0)
        ;
    cr_assert_eq(r, -EAGAIN);
    PROBE(-EAGAIN, conc_conn_send_bytes(b, big, sizeof big, t),
          conc_conn_send_bytes_until(b, big, sizeof big, d));
    conc_conn_free(a);
    conc_conn_free(b);
}

/* A socket's seconds form takes the socket's timeout (settimeout). */
#define WITH_T(s, call) (conc_socket_set_timeout((s), t) < 0 ? -EINVAL : (long)(call))

Test(timeouts, socket)
{
    conc_socket *a, *b, *l;
    cr_assert_eq(conc_socket_pair(&a, &b, 0, 0, 0), 0);
    cr_assert_eq(conc_socket_create_server(&l, "127.0.0.1", 0, NULL), 0);
    char buf[64];
    conc_sockaddr from;
    conc_socket *c = NULL;
    int fds[2];
    size_t nfds;
    PROBE(-EAGAIN, WITH_T(a, conc_socket_recv(a, buf, sizeof buf, 0)),
          conc_socket_recv_until(a, buf, sizeof buf, 0, d));
    PROBE(-EAGAIN, WITH_T(a, conc_socket_recvfrom(a, buf, sizeof buf, 0, &from)),
          conc_socket_recvfrom_until(a, buf, sizeof buf, 0, &from, d));
    PROBE(-EAGAIN, WITH_T(a, conc_socket_recv_fds(a, buf, sizeof buf, fds, 2, &nfds, 0)),
          conc_socket_recv_fds_until(a, buf, sizeof buf, fds, 2, &nfds, 0, d));
    PROBE(-EAGAIN, WITH_T(l, conc_socket_accept(l, &c, NULL)),
          conc_socket_accept_until(l, &c, NULL, d));
    cr_assert_null(c);
    conc_waitable w = { .kind = CONC_WAIT_SOCKET, .u.socket = a };
    PROBE(-EAGAIN, conc_wait(&w, 1, t), conc_wait_until(&w, 1, d));

    /* A full socket: sends cannot go through at once. */
    static char big[65536];
    ssize_t n;
    cr_assert_eq(conc_socket_set_timeout(b, 0), 0);
    while ((n = conc_socket_send(b, big, sizeof big, 0)) > 0)
        ;
    cr_assert_eq(n, -EAGAIN);
    PROBE(-EAGAIN, WITH_T(b, conc_socket_send(b, big, sizeof big, 0)),
          conc_socket_send_until(b, big, sizeof big, 0, d));
    PROBE(-EAGAIN, WITH_T(b, conc_socket_sendall(b, big, sizeof big, 0, NULL)),
          conc_socket_sendall_until(b, big, sizeof big, 0, NULL, d));
    int f = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    cr_assert_geq(f, 0);
    PROBE(-EAGAIN, WITH_T(b, conc_socket_sendfile(b, f, 0, 4096, NULL)),
          conc_socket_sendfile_until(b, f, 0, 4096, NULL, d));
    close(f);
    conc_socket_free(a);
    conc_socket_free(b);
    conc_socket_free(l);
}

Test(timeouts, selector)
{
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    static const conc_selector_backend bk[] = { CONC_SELECTOR_EPOLL, CONC_SELECTOR_POLL,
                                                CONC_SELECTOR_SELECT };
    for (size_t i = 0; i < 3; i++) {
        conc_selector *s;
        cr_assert_eq(conc_selector_new(&s, bk[i]), 0);
        cr_assert_eq(conc_selector_register(s, sv[0], CONC_EVENT_READ, NULL), 0);
        conc_selector_event ev[2];
        PROBE(-EAGAIN, conc_selector_select(s, ev, 2, t), conc_selector_select_until(s, ev, 2, d));
        conc_selector_free(s);
    }
    int r[1] = { sv[0] };
    size_t nr = 1;
    PROBE(-EAGAIN, conc_selector_select_fds(r, &nr, NULL, NULL, NULL, NULL, t),
          conc_selector_select_fds_until(r, &nr, NULL, NULL, NULL, NULL, d));
    struct pollfd p = { .fd = sv[0], .events = POLLIN };
    PROBE(-EAGAIN, conc_selector_poll_fds(&p, 1, t), conc_selector_poll_fds_until(&p, 1, d));
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event e = { .events = EPOLLIN };
    cr_assert_eq(epoll_ctl(ep, EPOLL_CTL_ADD, sv[0], &e), 0);
    struct epoll_event out[2];
    PROBE(-EAGAIN, conc_selector_epoll_wait(ep, out, 2, t),
          conc_selector_epoll_wait_until(ep, out, 2, d));
    close(ep);
    close(sv[0]);
    close(sv[1]);
}

Test(timeouts, queue)
{
    static const conc_queue_kind kinds[] = { CONC_QUEUE_FIFO, CONC_QUEUE_LIFO,
                                             CONC_QUEUE_PRIORITY };
    for (size_t k = 0; k < sizeof kinds / sizeof *kinds; k++) {
        conc_queue *q;
        cr_assert_eq(conc_queue_new(&q, &(conc_queue_opts){ .kind = kinds[k], .maxsize = 1 }), 0);
        void *out;
        int64_t prio;
        PROBE(-EAGAIN, conc_queue_get(q, &out, t), conc_queue_get_until(q, &out, d));
        if (kinds[k] == CONC_QUEUE_PRIORITY)
            PROBE(-EAGAIN, conc_queue_get_prio(q, &out, &prio, t),
                  conc_queue_get_prio_until(q, &out, &prio, d));
        cr_assert_eq(conc_queue_put(q, q, 0), 0);
        PROBE(-EAGAIN, conc_queue_put(q, q, t), conc_queue_put_until(q, q, d));
        if (kinds[k] == CONC_QUEUE_PRIORITY)
            PROBE(-EAGAIN, conc_queue_put_prio(q, q, 1, t), conc_queue_put_prio_until(q, q, 1, d));
        PROBE(-EAGAIN, conc_queue_join(q, t), conc_queue_join_until(q, d));
        conc_queue_free(q);
    }
    conc_queue *s;
    cr_assert_eq(conc_queue_new(&s, &(conc_queue_opts){ .kind = CONC_QUEUE_SIMPLE }), 0);
    void *out;
    PROBE(-EAGAIN, conc_queue_get(s, &out, t), conc_queue_get_until(s, &out, d));
    conc_queue_free(s);
}

Test(timeouts, mpqueue)
{
    conc_mpqueue *q;
    cr_assert_eq(conc_mpqueue_new(&q, &(conc_mpqueue_opts){ .kind = CONC_MPQUEUE_JOINABLE,
                                                           .maxsize = 1 }), 0);
    char buf[64];
    void *m = NULL;
    size_t len;
    PROBE(-EAGAIN, conc_mpqueue_get(q, buf, sizeof buf, t),
          conc_mpqueue_get_until(q, buf, sizeof buf, d));
    PROBE(-EAGAIN, conc_mpqueue_get_alloc(q, &m, &len, t),
          conc_mpqueue_get_alloc_until(q, &m, &len, d));
    cr_assert_null(m);
    cr_assert_eq(conc_mpqueue_put(q, "x", 1, 0), 0);
    PROBE(-EAGAIN, conc_mpqueue_put(q, "y", 1, t), conc_mpqueue_put_until(q, "y", 1, d));
    PROBE(-EAGAIN, conc_mpqueue_join(q, t), conc_mpqueue_join_until(q, d));
    conc_mpqueue_free(q);
}

/* ------------------------------------------------------------ coroutines */

/* The greenlets and offloaded calls below wait on this until the end. */
static conc_event co_release = CONC_EVENT_INIT;
static int co_fds[2];
static conc_greenlet *co_held;
static unsigned offload_done;

static void *held_greenlet(void *arg)
{
    (void)arg;
    return (void *)(intptr_t)conc_event_wait(&co_release, GUARD);
}

static void *held_call(void *arg)
{
    conc_event_wait(&co_release, GUARD);
    __atomic_fetch_add(&offload_done, 1, __ATOMIC_RELEASE);
    return arg;
}

/* The calls that may come from any thread: a greenlet join, an fd wait and
 * an offloaded call (4 accepted calls: timeout 0, 0.001, two deadlines). */
static void probe_any_thread(void)
{
    PROBE(-EAGAIN, conc_greenlet_join(co_held, t), conc_greenlet_join_until(co_held, d));
    PROBE(-EAGAIN, conc_greenlet_joinall(&co_held, 1, t),
          conc_greenlet_joinall_until(&co_held, 1, d));
    PROBE(-EAGAIN, conc_fd_wait(co_fds[0], POLLIN, t),
          conc_fd_wait_until(co_fds[0], POLLIN, d));
    PROBE(-EAGAIN, conc_offload(held_call, NULL, NULL, t),
          conc_offload_until(held_call, NULL, NULL, d));
}

static void *probe_in_greenlet(void *arg)
{
    conc_cpool *pool = arg;
    probe_any_thread();
    /* A full pool: spawn, wait_available and join cannot succeed. */
    PROBE(-EAGAIN, conc_cpool_spawn(pool, NULL, held_greenlet, NULL, NULL, t),
          conc_cpool_spawn_until(pool, NULL, held_greenlet, NULL, NULL, d));
    PROBE(-EAGAIN, conc_cpool_wait_available(pool, t),
          conc_cpool_wait_available_until(pool, d));
    PROBE(-EAGAIN, conc_cpool_join(pool, t), conc_cpool_join_until(pool, d));
    /* Kill: the member is killed each time but finishes only when the hub
     * runs it, after this greenlet blocks. */
    cr_expect_eq(conc_cpool_kill(pool, NAN), -EINVAL);
    cr_expect_eq(conc_cpool_kill(pool, -2.0), -EINVAL);
    cr_expect_eq(conc_cpool_kill(pool, 0), -EAGAIN);
    cr_expect_eq(conc_cpool_kill_until(pool, conc_now() - 1), -ETIMEDOUT);
    cr_expect_eq(conc_cpool_kill_until(pool, 0), -ETIMEDOUT);
    return NULL;
}

static void *probe_in_thread(void *arg)
{
    (void)arg;
    probe_any_thread();
    return NULL;
}

Test(timeouts, coroutines)
{
    cr_assert_eq(pipe(co_fds), 0);
    cr_assert_eq(conc_greenlet_spawn(&co_held, held_greenlet, NULL, NULL), 0);
    conc_cpool *pool;
    cr_assert_eq(conc_cpool_new(&pool, 1), 0);
    conc_greenlet *member, *prober;
    cr_assert_eq(conc_cpool_spawn(pool, &member, held_greenlet, NULL, NULL, 0), 0);
    cr_assert_eq(conc_greenlet_spawn(&prober, probe_in_greenlet, pool, NULL), 0);
    cr_assert_eq(conc_greenlet_join(prober, GUARD), 0);
    /* From a plain thread (the hub's greenlets run while this one waits). */
    conc_thread *th;
    cr_assert_eq(conc_thread_new(&th, probe_in_thread, NULL, NULL), 0);
    cr_assert_eq(conc_thread_start(th), 0);
    cr_assert_eq(conc_thread_join(th, GUARD), 0);
    conc_thread_free(th);
    conc_event_set(&co_release);
    cr_assert_eq(conc_cpool_join(pool, GUARD), 0);
    cr_assert_eq(conc_greenlet_join(co_held, GUARD), 0);
    void *r;
    cr_assert_eq(conc_greenlet_result(member, &r), 0);
    cr_assert_eq(r, (void *)(intptr_t)-ECANCELED);
    for (int i = 0; i < 60000 && __atomic_load_n(&offload_done, __ATOMIC_ACQUIRE) < 8; i++)
        usleep(1000);
    cr_assert_eq(__atomic_load_n(&offload_done, __ATOMIC_ACQUIRE), 8);
    conc_greenlet_free(member);
    conc_greenlet_free(prober);
    conc_greenlet_free(co_held);
    cr_assert_eq(conc_cpool_free(pool), 0);
    cr_assert_eq(conc_hub_free(), 0);
    close(co_fds[0]);
    close(co_fds[1]);
}

static int wait_gate(void *arg, void **result)
{
    (void)result;
    conc_event_wait(arg, CONC_FOREVER);
    return 0;
}

Test(timeouts, future_and_executor)
{
    conc_future *f;
    cr_assert_eq(conc_future_new(&f, NULL), 0);
    PROBE(-EAGAIN, conc_future_result(f, NULL, NULL, t), conc_future_result_until(f, NULL, NULL, d));
    PROBE(-EAGAIN, conc_future_result_take(f, NULL, NULL, t),
          conc_future_result_take_until(f, NULL, NULL, d));
    PROBE(-EAGAIN, conc_future_exception(f, NULL, NULL, t),
          conc_future_exception_until(f, NULL, NULL, d));
    PROBE(-EAGAIN, conc_future_wait(f, t), conc_future_wait_until(f, d));
    PROBE(-EAGAIN, conc_future_wait_many(&f, 1, CONC_FIRST_COMPLETED, NULL, t),
          conc_future_wait_many_until(&f, 1, CONC_FIRST_COMPLETED, NULL, d));
    conc_as_completed *it;
    cr_assert_eq(conc_as_completed_new(&it, &f, 1), 0);
    conc_future *got;
    PROBE(-EAGAIN, conc_as_completed_next(it, &got, t), conc_as_completed_next_until(it, &got, d));
    conc_as_completed_free(it);

    conc_event gate;
    conc_event_init(&gate, 0);
    conc_executor *ex;
    cr_assert_eq(conc_executor_new(&ex, &(conc_executor_opts){ .max_workers = 1 }), 0);
    conc_future *call;
    cr_assert_eq(conc_executor_submit(ex, wait_gate, &gate, &call), 0);
    cr_assert_eq(conc_executor_shutdown(ex, false, false), 0);
    PROBE(-EAGAIN, conc_executor_join(ex, t), conc_executor_join_until(ex, d));
    conc_event_set(&gate);
    cr_assert_eq(conc_executor_free(ex), 0);
    conc_future_free(call);
    conc_future_free(f);
}
