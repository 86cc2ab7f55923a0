/*
 * wait.h - the one way conc waits.
 *
 * Every blocking call of the library ends up here: wait on a futex word until
 * a deadline, wait for a descriptor (a pidfd, a socket) until a deadline,
 * sleep until a deadline, yield.  This is the single place where
 * coroutine-awareness (a hub that parks the calling coroutine instead of the
 * thread), cancellation and owner-death checks hook in.
 */
#ifndef CONC_SYS_WAIT_H
#define CONC_SYS_WAIT_H

#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include "../internal.h"

/* Flags: the word lives in memory shared between processes. */
#define CONC__WAIT_SHARED 0x1u
/* conc__wake: wake up to n in each backend (threads in the kernel,
 * coroutines parked by hubs), not n in all. */
#define CONC__WAKE_EACH 0x2u
/* conc__wait, with CONC__WAIT_SHARED: only one thread at a time ever sleeps
 * on the word, so no wake-up meant for it can go to another sleeper that
 * dies with it (why shared sleeps are cut in slices, wait.c): the sleep
 * lasts until the deadline in one piece, with no kernel timer when there
 * is none (a timed sleep arms one per call). */
#define CONC__WAIT_ONE 0x4u

/*
 * A thread running a coroutine hub installs its wait operations here; a NULL
 * pointer (plain threads) blocks the thread in the kernel.
 */
struct conc__wait_ops {
    int (*wait)(uint32_t *word, uint32_t expect, int64_t deadline, unsigned flags);
    int (*sleep_until)(int64_t deadline);
    void (*yield)(void);
    int (*wait_fd)(int fd, short events, int64_t deadline);  /* NULL: poll() */
    /* NULL: ppoll() */
    int (*wait_fds)(struct pollfd *fds, unsigned long n, int64_t deadline);
    /* NULL: wait_fd */
    int (*wait_io)(int fd, uint64_t key, short events, int64_t deadline);
    /* NULL: wait_io for POLLIN */
    int (*wait_io_read)(int fd, uint64_t key, void *buf, size_t len, int64_t deadline,
                        ssize_t *n);
    void (*fd_close)(int fd);   /* NULL: nothing to forget */
    bool (*io_drained)(int fd, uint64_t key);   /* NULL: false */
    bool (*io_empty)(int fd, uint64_t key);     /* NULL: false */
};
extern __thread const struct conc__wait_ops *conc__wait_ops
    __attribute__((tls_model("initial-exec")));

/*
 * conc__wait - sleep while *word == expect, until deadline (CONC_NO_DEADLINE:
 * no limit).  Returns 0 when woken or interrupted (the caller re-checks its
 * condition: wake-ups may be spurious), -EAGAIN when *word != expect,
 * -ETIMEDOUT when the deadline has passed, -ECANCELED when the waiting
 * coroutine was killed, -EDEADLK when the waiting main coroutine is in
 * conc_hub_run and the hub's greenlets all wait for each other (src/hub.c:
 * a word that anything else could change never gives it).
 */
CONC_HIDDEN int conc__wait(uint32_t *word, uint32_t expect, int64_t deadline,
                           unsigned flags);

/*
 * conc__wait_fd - wait until fd reports one of the poll() events (POLLIN,
 * POLLOUT...), or an error or hang-up, until deadline.  Returns 0 when fd is
 * ready or the wait was interrupted (the caller re-checks: wake-ups may be
 * spurious), -ETIMEDOUT when the deadline passed first (a ready fd wins over
 * a passed deadline), -EBADF when fd is not open, -ECANCELED when the waiting
 * coroutine was killed, another -errno from poll.
 */
CONC_HIDDEN int conc__wait_fd(int fd, short events, int64_t deadline);

/*
 * conc__wait_io - conc__wait_fd for the socket layer's try-then-wait loop:
 * fd is a socket, key names its handle (never 0, never reused in the
 * process: a new handle around a reused number has a new key), events is
 * POLLIN or POLLOUT, and the caller calls it only after its operation on
 * fd said EAGAIN (or EINPROGRESS), and tries the operation again after
 * every return of 0 until it says EAGAIN again.  Under that contract a hub
 * keeps the socket registered edge-triggered between waits and makes no
 * system call to wait (src/hub.c, "fd records"); other events, and plain
 * threads, wait as conc__wait_fd.  Returns what conc__wait_fd returns.
 */
CONC_HIDDEN int conc__wait_io(int fd, uint64_t key, short events, int64_t deadline);

/*
 * conc__wait_io_read - conc__wait_io(fd, key, POLLIN, deadline) for a
 * plain recv (flags 0, no address) of a TCP stream whose short reads drain
 * it (conc__wait_io_drained's rule), that said EAGAIN or was told to wait
 * first (conc__wait_io_empty), of up to len bytes into buf.  A hub may make
 * the read itself when it takes the socket's read edge, before it runs the
 * greenlets that edge and the others of its batch made ready (src/hub.c,
 * "pre-reads"): then it returns 1 with *n what the read returned (bytes,
 * copied into buf, never more than len; 0 for the peer's EOF; or -errno,
 * -ECONNRESET...), and has done the drained bookkeeping itself.  Otherwise
 * it returns what conc__wait_io returns (0: try the read).
 */
CONC_HIDDEN int conc__wait_io_read(int fd, uint64_t key, void *buf, size_t len,
                                   int64_t deadline, ssize_t *n);

/*
 * conc__wait_fd_close - the owner of fd is about to close it: the calling
 * thread's hub, if any, forgets its registration (a copy of the file that
 * lives on, a dup or a forked child's, would otherwise still report to
 * it).  Keeps errno.
 */
CONC_HIDDEN void conc__wait_fd_close(int fd);

/*
 * conc__wait_io_drained - the socket layer's read on fd (handle key) took
 * the whole receive queue: a plain recv on a TCP stream that returned
 * fewer bytes than asked, with no urgent data ever read out of band and no
 * upper layer protocol (TCP_ULP) set through conc.  The calling thread's
 * hub, when it has the socket registered edge-triggered for key and has
 * never seen an urgent, hang-up or error event on it, takes note: the
 * socket has nothing to read until its next edge, so the next read may
 * wait first (conc__wait_io_empty) instead of trying and hearing EAGAIN.
 * Returns true when it took note, false otherwise (plain threads, other
 * sockets, a signal handler that interrupted the hub).
 */
CONC_HIDDEN bool conc__wait_io_drained(int fd, uint64_t key);

/*
 * conc__wait_io_empty - true when the calling thread's hub knows that fd
 * (handle key) has had nothing to read since a conc__wait_io_drained that
 * it took note of: no event of the socket came since.  The caller then
 * calls conc__wait_io(fd, key, POLLIN, ...) before its read; the read
 * after that wait is tried as usual.  false otherwise.
 */
CONC_HIDDEN bool conc__wait_io_empty(int fd, uint64_t key);

/*
 * conc__wait_fds - wait until one of the n descriptors reports one of its
 * events (or an error or hang-up), until deadline; revents is set as by
 * poll().  Returns how many are ready (> 0), 0 when the wait was
 * interrupted (the caller re-checks), -ETIMEDOUT when the deadline passed
 * with none ready, -ECANCELED when the waiting coroutine was killed,
 * another -errno from poll (-EINVAL for too many descriptors).
 */
CONC_HIDDEN int conc__wait_fds(struct pollfd *fds, unsigned long n, int64_t deadline);

/*
 * conc__wait_epoll - wait until the epoll instance epfd has events, until
 * deadline, and take up to n of them into ev (epoll_wait).  A hub thread
 * waits for epfd itself to turn readable (it parks the coroutine), a plain
 * thread sleeps in epoll_pwait2.  Returns how many events were taken
 * (> 0); 0 when the wait was interrupted or woke with nothing (the caller
 * waits again); -ETIMEDOUT when the deadline passed with none (a passed
 * deadline still looks once); -ECANCELED when the waiting coroutine was
 * killed; another -errno from epoll_wait (-EBADF, -EINVAL).
 */
struct epoll_event;
CONC_HIDDEN int conc__wait_epoll(int epfd, struct epoll_event *ev, int n, int64_t deadline);

/* conc__wake - wake up to n waiters of word (INT_MAX: all; with
 * CONC__WAKE_EACH up to n in each backend).  Returns how many were woken
 * (threads only; coroutines are counted as woken too).  Async-signal-safe
 * (atomics, futex and eventfd system calls; see src/hub.c). */
CONC_HIDDEN int conc__wake(uint32_t *word, int n, unsigned flags);

/*
 * A backend whose sleepers the kernel does not know (a coroutine hub: its
 * parked coroutines sit in its own table) gives conc__wake its wake half:
 * wake up to n of its sleepers on word, return how many.  It is called
 * after a full fence that follows the caller's change of the word, and
 * must be async-signal-safe and keep errno.  The hub registers it when the
 * first hub is made (src/hub.c), before any coroutine can park; it is never
 * removed.  Until then conc__wake pays one load of a pointer nobody writes:
 * no fence, no shared counter for coroutines a program does not use.
 */
struct conc__wake_backend {
    int (*wake)(uint32_t *word, int n);
};
CONC_HIDDEN void conc__wake_backend_register(const struct conc__wake_backend *b);
/* The registered backend, or NULL (what a test looks at). */
CONC_HIDDEN const struct conc__wake_backend *conc__wake_backend(void);

/* conc__sleep_until - sleep until the monotonic clock reaches deadline.
 * Returns 0, or -ECANCELED when the sleeping coroutine was killed. */
CONC_HIDDEN int conc__sleep_until(int64_t deadline);

/* conc__yield - give up the CPU once (sched_yield, or let other coroutines
 * run). */
CONC_HIDDEN void conc__yield(void);

/* conc__spin_pause - one iteration of a busy-wait loop. */
static inline void conc__spin_pause(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    __asm__ __volatile__("" ::: "memory");
#endif
}

/* True when spinning can help: more than one CPU is usable and the caller is
 * a plain thread (a coroutine parks at once and lets the others run). */
extern int conc__spin_ok;       /* -1 until decided */
CONC_HIDDEN int conc__spin_setup(void);
static inline bool conc__may_spin(void)
{
    if (conc__wait_ops)
        return false;
    int ok = __atomic_load_n(&conc__spin_ok, __ATOMIC_RELAXED);
    return ok < 0 ? conc__spin_setup() : ok;
}

/*
 * conc__spin_while - busy-waits while *word == v, under the parking layer's
 * spin policy (src/sys/park.h: one look per pause) and never past deadline.
 * Returns the value that ended the wait (== v when the spin ran out, or was
 * not tried).  For waiters that announce themselves in the word itself
 * (Lock, Event): they spin before announcing.
 */
CONC_HIDDEN uint32_t conc__spin_while(const uint32_t *word, uint32_t v, int64_t deadline);

/*
 * conc__full_fence - a full memory barrier, for the "publish, fence, check
 * the sleepers' flag" / "set the flag, fence, re-check" pairs of the queues.
 * TSan does not take fences, so under it a locked no-op read-modify-write
 * stands in (one on x86-64 and aarch64 alike).  On x86-64 a locked add to
 * the stack orders like mfence for ordinary memory at about half the cost.
 */
#include "san.h"
#if CONC_SAN_THREAD
extern uint32_t conc__fence_word;
static inline void conc__full_fence(void)
{
    __atomic_fetch_add(&conc__fence_word, 0, __ATOMIC_SEQ_CST);
}
#elif defined(__x86_64__)
static inline void conc__full_fence(void)
{
    __asm__ __volatile__("lock; addl $0, (%%rsp)" ::: "memory", "cc");
}
#else
static inline void conc__full_fence(void)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}
#endif

#endif
