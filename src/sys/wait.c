/* wait.c - the single wait primitive (futex or coroutine hub). */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>
#include "sys/futex.h"
#include "sys/san.h"
#include "sys/wait.h"

__thread const struct conc__wait_ops *conc__wait_ops
    __attribute__((tls_model("initial-exec")));

int conc__spin_ok = -1;

#if CONC_SAN_THREAD
uint32_t conc__fence_word;
#endif

/* Threads of this process asleep in the kernel on a private futex word. */
static uint32_t kernel_sleepers;

/* The wake half of the backend the kernel does not know (a coroutine
 * hub), once registered (see wait.h). */
static const struct conc__wake_backend *wake_backend;

void conc__wake_backend_register(const struct conc__wake_backend *b)
{
    __atomic_store_n(&wake_backend, b, __ATOMIC_SEQ_CST);
}

const struct conc__wake_backend *conc__wake_backend(void)
{
    return __atomic_load_n(&wake_backend, __ATOMIC_ACQUIRE);
}

static void wait_atfork_register(void);

/* Spinning only pays when the peer we wait for can run at the same time:
 * decided on first need (a forked child decides again, lazily, so fork
 * costs no extra system call). */
int conc__spin_setup(void)
{
    wait_atfork_register();
    cpu_set_t set;
    int ok = 1;
    /* The process's CPUs (its main thread's mask), not the calling
     * thread's: a thread pinned to one CPU may still wait for a peer that
     * runs on another. */
    if (sched_getaffinity(getpid(), sizeof set, &set) == 0)
        ok = CPU_COUNT(&set) > 1;
    __atomic_store_n(&conc__spin_ok, ok, __ATOMIC_RELAXED);
    return ok;
}

/* In a forked child only the forking thread lives, and it is not asleep:
 * the sleepers counted in the parent are not the child's.  (Memory only:
 * the handler never waits or takes a lock.) */
static void wait_atfork_child(void)
{
    conc__spin_ok = -1;
    __atomic_store_n(&kernel_sleepers, 0, __ATOMIC_RELAXED);
}

/* The handler is registered by the first spin decision or the first
 * thread that sleeps on a private word, before either leaves state behind
 * (docs/building.md, "Process-wide effects"): until then the child has
 * nothing to reset. */
static pthread_once_t wait_atfork_once = PTHREAD_ONCE_INIT;

static void wait_atfork_install(void)
{
    pthread_atfork(NULL, NULL, wait_atfork_child);
}

static void wait_atfork_register(void)
{
    pthread_once(&wait_atfork_once, wait_atfork_install);
}

static inline void to_timespec(int64_t ns, struct timespec *ts)
{
    ts->tv_sec = ns / 1000000000;
    ts->tv_nsec = ns % 1000000000;
}

/*
 * A word shared between processes is never slept on without a limit.  A
 * futex wake-up goes to a chosen sleeper, and on a shared word that sleeper
 * may be killed before it acts on it (takes the lock or the unit it was
 * woken for, or wakes the next one): the wake-up dies with it while others
 * sleep on.  The kernel repairs this for one case only (a robust lock's
 * pending-operation slot, when the word's owner part is 0 at the death:
 * see sync.c).  So a sleeper on a shared word looks again after a slice of
 * SHARED_SLICE_MIN_NS, doubling up to SHARED_SLICE_MAX_NS: it returns to
 * its caller (who re-checks its condition) as soon as the word changed, and
 * sleeps on while it holds the value it slept on.  A lost wake-up then costs
 * a stall of at most about a second, never a hang; an idle waiter costs one
 * system call a second.  The one exception is a word only one thread at a
 * time ever sleeps on (CONC__WAIT_ONE): no other sleeper can take its
 * wake-up, so it sleeps until its deadline in one piece, and with no
 * deadline the kernel arms no timer for it (a tenth of a round trip between
 * two processes on a futex).
 */
#define SHARED_SLICE_MIN_NS 20000000
#define SHARED_SLICE_MAX_NS 1000000000

static int wait_shared(uint32_t *word, uint32_t expect, int64_t deadline)
{
    int64_t slice = SHARED_SLICE_MIN_NS;
    for (;;) {
        int64_t until = conc_now() + slice;
        bool last = deadline <= until;
        struct timespec ts;
        to_timespec(last ? (deadline < 0 ? 0 : deadline) : until, &ts);
        int r = conc__futex_wait_abs(word, expect, &ts, false);
        if (r != -ETIMEDOUT || last)
            return r == -EINTR ? 0 : r;
        if (slice < SHARED_SLICE_MAX_NS)
            slice = slice * 2 < SHARED_SLICE_MAX_NS ? slice * 2 : SHARED_SLICE_MAX_NS;
    }
}

int conc__wait(uint32_t *word, uint32_t expect, int64_t deadline, unsigned flags)
{
    const struct conc__wait_ops *ops = conc__wait_ops;
    if (unlikely(ops != NULL))
        return ops->wait(word, expect, deadline, flags);
    bool shared = flags & CONC__WAIT_SHARED;
    if (shared && !(flags & CONC__WAIT_ONE))
        return wait_shared(word, expect, deadline);
    struct timespec ts, *abs = NULL;
    if (deadline != CONC_NO_DEADLINE) {
        if (deadline < 0)
            deadline = 0;
        to_timespec(deadline, &ts);
        abs = &ts;
    }
    if (shared) {
        int r = conc__futex_wait_abs(word, expect, abs, false);
        return r == -EINTR ? 0 : r;
    }
    wait_atfork_register();
    __atomic_fetch_add(&kernel_sleepers, 1, __ATOMIC_SEQ_CST);
    int r = conc__futex_wait_abs(word, expect, abs, true);
    __atomic_fetch_sub(&kernel_sleepers, 1, __ATOMIC_RELEASE);
    if (r == -EINTR)
        return 0;
    return r;
}

/*
 * No lost wake-up for either backend.  A waiter counts itself (a thread in
 * kernel_sleepers, a coroutine in its hub's count) with a seq_cst
 * read-modify-write before the word is compared (by the kernel, or by the
 * hub under its bucket's lock); the waker changes the word, then a full
 * fence, then reads the counts.  One of the two sees the other.  The
 * backend pointer is stored (seq_cst) by the thread of the first hub before
 * any of its coroutines counts itself: a waker whose fence comes after that
 * store in the fence order sees the pointer, and one whose fence comes
 * before it comes before every coroutine's count too, so the coroutine sees
 * the changed word.
 */
int conc__wake(uint32_t *word, int n, unsigned flags)
{
    conc__full_fence();
    const struct conc__wake_backend *b = __atomic_load_n(&wake_backend, __ATOMIC_RELAXED);
    int r = 0;
    if (unlikely(b != NULL)) {
        /* Coroutines first: when they are enough, the system call is
         * spared (any n waiters may be woken, whatever they are). */
        r = b->wake(word, n);
        if (r >= n && !(flags & CONC__WAKE_EACH))
            return r;
    }
    /* No thread of this process sleeps on a private word: no system call. */
    if (!(flags & CONC__WAIT_SHARED) && __atomic_load_n(&kernel_sleepers, __ATOMIC_RELAXED) == 0)
        return r;
    int k = conc__futex_wake(word, (flags & CONC__WAKE_EACH) ? n : n - r,
                             !(flags & CONC__WAIT_SHARED));
    return k > 0 ? r + k : r;
}

int conc__sleep_until(int64_t deadline)
{
    const struct conc__wait_ops *ops = conc__wait_ops;
    if (unlikely(ops != NULL))
        return ops->sleep_until(deadline);
    struct timespec ts;
    if (deadline < 0)
        deadline = 0;
    to_timespec(deadline, &ts);
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
    return 0;
}

int conc__wait_fd(int fd, short events, int64_t deadline)
{
    const struct conc__wait_ops *ops = conc__wait_ops;
    if (unlikely(ops != NULL) && ops->wait_fd)
        return ops->wait_fd(fd, events, deadline);
    struct pollfd pfd = { .fd = fd, .events = events, .revents = 0 };
    struct timespec ts, *rel = NULL;
    if (deadline != CONC_NO_DEADLINE) {
        int64_t left = deadline - conc_now();
        to_timespec(left > 0 ? left : 0, &ts);
        rel = &ts;
    }
    int r = ppoll(&pfd, 1, rel, NULL);
    if (r > 0)
        return (pfd.revents & POLLNVAL) ? -EBADF : 0;
    if (r == 0)
        return -ETIMEDOUT;
    return errno == EINTR ? 0 : -errno;
}

int conc__wait_io(int fd, uint64_t key, short events, int64_t deadline)
{
    const struct conc__wait_ops *ops = conc__wait_ops;
    if (unlikely(ops != NULL) && ops->wait_io)
        return ops->wait_io(fd, key, events, deadline);
    return conc__wait_fd(fd, events, deadline);
}

int conc__wait_io_read(int fd, uint64_t key, void *buf, size_t len, int64_t deadline,
                       ssize_t *n)
{
    const struct conc__wait_ops *ops = conc__wait_ops;
    if (unlikely(ops != NULL) && ops->wait_io_read)
        return ops->wait_io_read(fd, key, buf, len, deadline, n);
    return conc__wait_io(fd, key, POLLIN, deadline);
}

void conc__wait_fd_close(int fd)
{
    const struct conc__wait_ops *ops = conc__wait_ops;
    if (unlikely(ops != NULL) && ops->fd_close) {
        int e = errno;
        ops->fd_close(fd);
        errno = e;
    }
}

bool conc__wait_io_drained(int fd, uint64_t key)
{
    const struct conc__wait_ops *ops = conc__wait_ops;
    return unlikely(ops != NULL) && ops->io_drained && ops->io_drained(fd, key);
}

bool conc__wait_io_empty(int fd, uint64_t key)
{
    const struct conc__wait_ops *ops = conc__wait_ops;
    return unlikely(ops != NULL) && ops->io_empty && ops->io_empty(fd, key);
}

int conc__wait_fds(struct pollfd *fds, unsigned long n, int64_t deadline)
{
    const struct conc__wait_ops *ops = conc__wait_ops;
    if (unlikely(ops != NULL) && ops->wait_fds)
        return ops->wait_fds(fds, n, deadline);
    struct timespec ts, *rel = NULL;
    if (deadline != CONC_NO_DEADLINE) {
        int64_t left = deadline - conc_now();
        to_timespec(left > 0 ? left : 0, &ts);
        rel = &ts;
    }
    int r = ppoll(fds, (nfds_t)n, rel, NULL);
    if (r > 0)
        return r;
    if (r == 0)
        return -ETIMEDOUT;
    return errno == EINTR ? 0 : -errno;
}

/* epoll_wait's result as conc__wait_epoll's. */
static int epoll_rc(int r)
{
    if (r >= 0)
        return r;
    return errno == EINTR ? 0 : -errno;
}

int conc__wait_epoll(int epfd, struct epoll_event *ev, int n, int64_t deadline)
{
    const struct conc__wait_ops *ops = conc__wait_ops;
    if (unlikely(ops != NULL) && ops->wait_fd) {
        int r = epoll_wait(epfd, ev, n, 0);
        if (r != 0)
            return epoll_rc(r);
        r = ops->wait_fd(epfd, POLLIN, deadline);
        if (r < 0)
            return r;
        return epoll_rc(epoll_wait(epfd, ev, n, 0));
    }
    struct timespec ts, *rel = NULL;
    if (deadline != CONC_NO_DEADLINE) {
        int64_t left = deadline - conc_now();
        to_timespec(left > 0 ? left : 0, &ts);
        rel = &ts;
    }
    /* TSan does not know epoll_pwait2: a signal would wait for the call
     * to end before its handler runs.  It gets epoll_wait. */
    int r = CONC_SAN_THREAD ? -1 : epoll_pwait2(epfd, ev, n, rel, NULL);
    if (CONC_SAN_THREAD)
        errno = ENOSYS;
    if (r < 0 && errno == ENOSYS) {
        /* Before Linux 5.11: milliseconds, rounded up so that a wait never
         * ends before its deadline. */
        int ms = -1;
        if (rel) {
            int64_t left = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
            int64_t m = (left + 999999) / 1000000;
            ms = m > INT_MAX ? INT_MAX : (int)m;
        }
        r = epoll_wait(epfd, ev, n, ms);
    }
    if (r == 0)
        return -ETIMEDOUT;
    return epoll_rc(r);
}

void conc__yield(void)
{
    const struct conc__wait_ops *ops = conc__wait_ops;
    if (unlikely(ops != NULL)) {
        ops->yield();
        return;
    }
    sched_yield();
}
