/*
 * hub.c - the gevent-style hub: one per thread, an epoll loop with timers
 * (src/hub_timers.c) running in a coroutine of its own, and the wait
 * operations (src/sys/wait.h) that park the calling coroutine instead of its
 * thread.  The greenlet record and the hub are in src/hub_internal.h.
 *
 * Parking.  A coroutine that blocks records what it waits for (a word, a
 * descriptor, a timer), marks itself PARKED and switches to the hub
 * coroutine; the hub switches to the next READY coroutine, or waits in
 * epoll_wait until a descriptor, a timer or another thread's wake-up makes
 * one ready.  Whoever makes a coroutine ready stores the value its blocking
 * call returns (0, -ETIMEDOUT, -ECANCELED, -EDEADLK).
 *
 * Word waits.  Coroutines parked on a futex word sit in one process-wide
 * table of word address -> waiters (BUCKETS buckets, each with a small
 * futex lock), so that conc__wake, called by any thread, finds them.  The
 * rule that keeps races simple: whoever unlinks a waiter from the table owns
 * its wake-up.  A waker in the waiter's own thread makes it ready at once; a
 * waker in another thread pushes it on the hub's remote list (lock-free) and
 * writes the hub's eventfd, and the hub makes it ready when it drains the
 * list.  A timer or a kill that finds the waiter already unlinked leaves it
 * to that wake-up (a kill then stays pending for the next blocking call).
 *
 * No lost wake-up: the waiter counts itself in table_parked, links
 * itself under the bucket's lock and only then compares the word; a waker
 * changes the word before it reads the count (with a full fence) and takes
 * the bucket's lock.  So either the waker finds the waiter linked, or the
 * waiter sees the changed word and returns -EAGAIN.
 *
 * Signal handlers: the hub's wake-up is async-signal-safe (conc_sem_release
 * and conc_event_set are, as sem_post is).  See "signal safety" below.
 *
 * Deadlocks: the loop ends the main coroutine's wait with -EDEADLK only
 * when it is certain, that is when the main coroutine and every greenlet of
 * the hub wait for a greenlet of this hub to finish (conc_greenlet_join,
 * conc_hub_run) and nothing is ready, timed or watched: greenlets finish
 * only in this thread.  Any other wait (a word, a descriptor) could be ended
 * by a thread that conc does not know, a signal handler or another process,
 * so it blocks as a thread's would.
 *
 * Other processes: a waker in another process cannot see this table, so a
 * wait on a process-shared word (CONC__WAIT_SHARED) also arms a timer of
 * CONC_HUB_SHARED_POLL_NS after which the wait returns 0 (a spurious
 * wake-up: the primitive re-checks its word and waits again).  A helper
 * thread doing the real futex wait would wake sooner but costs a thread per
 * hub and races with kills; polling was chosen for simplicity.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/membarrier.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "conc/hub.h"
#include "conc/wait.h"
#include "internal.h"
#include "sys/futex.h"
#include "sys/sockcall.h"
#include "sys/wait.h"
#include "coro_stack.h"
#include "hub_internal.h"

/* membarrier: 0 not registered yet, 1 registered, -1 unavailable. */
static int barrier_state;

static __thread struct hub *tls_hub __attribute__((tls_model("initial-exec")));

/* --------------------------------------------------------- word table */

#define BUCKETS 1024

static struct bucket {
    uint32_t lock;                  /* 0 free, 1 taken, 2 taken and waited for */
    conc_greenlet *head, *tail;     /* oldest first: wake-ups are FIFO */
} table[BUCKETS];

static uint32_t table_parked;   /* waiters linked in the table, process-wide */
static int hub_ever;            /* a hub was made: the fork handler has work */

static inline struct bucket *bucket_of(const uint32_t *word)
{
    uintptr_t a = (uintptr_t)word >> 2;
    a *= (uintptr_t)0x9E3779B97F4A7C15ull;
    return &table[(a >> 20) & (BUCKETS - 1)];
}

/*
 * While the process has one thread (glibc's __libc_single_threaded), the
 * buckets' locks and the count of parked waiters take plain loads and
 * stores: nobody else can see them, and a signal handler of this thread
 * never touches them while the thread is inside (see "signal safety").  A
 * locked instruction costs about 5 ns here, and a park and its wake-up
 * take five of them otherwise.  The switch to locked instructions is safe
 * at any point between two of these sections: the first other thread is
 * made by a call that no section makes, and that call publishes what the
 * sections wrote (pthread_create orders the creator's writes before the new
 * thread's start).
 */
#if defined(__has_include)
#if __has_include(<sys/single_threaded.h>)
#include <sys/single_threaded.h>
#define ONE_THREAD() (__libc_single_threaded != 0)
#endif
#endif
#ifndef ONE_THREAD
#define ONE_THREAD() 0
#endif

static inline void parked_add(int32_t d)
{
    if (ONE_THREAD()) {
        __atomic_signal_fence(__ATOMIC_SEQ_CST);
        __atomic_store_n(&table_parked, __atomic_load_n(&table_parked, __ATOMIC_RELAXED) + (uint32_t)d,
                         __ATOMIC_RELAXED);
        __atomic_signal_fence(__ATOMIC_SEQ_CST);
    } else if (d > 0) {
        __atomic_add_fetch(&table_parked, (uint32_t)d, __ATOMIC_SEQ_CST);
    } else {
        __atomic_sub_fetch(&table_parked, (uint32_t)-d, __ATOMIC_RELAXED);
    }
}

/* A bucket's lock: a futex lock of three states (as glibc's), made of
 * atomics and system calls only, so that a signal handler may take it
 * (never in a thread that holds one: see "signal safety"). */
static void __attribute__((noinline)) bucket_lock_slow(struct bucket *b, uint32_t c)
{
    if (c != 2)
        c = __atomic_exchange_n(&b->lock, 2, __ATOMIC_ACQUIRE);
    while (c != 0) {
        conc__futex_wait_abs(&b->lock, 2, NULL, 1);
        c = __atomic_exchange_n(&b->lock, 2, __ATOMIC_ACQUIRE);
    }
}

static inline void bucket_lock(struct bucket *b)
{
    uint32_t c = 0;
    if (ONE_THREAD() && likely(__atomic_load_n(&b->lock, __ATOMIC_RELAXED) == 0)) {
        __atomic_store_n(&b->lock, 1, __ATOMIC_RELAXED);
        __atomic_signal_fence(__ATOMIC_SEQ_CST);
        return;
    }
    if (likely(__atomic_compare_exchange_n(&b->lock, &c, 1, false, __ATOMIC_ACQUIRE,
                                           __ATOMIC_RELAXED)))
        return;
    bucket_lock_slow(b, c);
}

static inline void bucket_unlock(struct bucket *b)
{
    if (ONE_THREAD()) {         /* nobody can wait for it: it holds 1 */
        __atomic_signal_fence(__ATOMIC_SEQ_CST);
        __atomic_store_n(&b->lock, 0, __ATOMIC_RELAXED);
        return;
    }
    if (unlikely(__atomic_exchange_n(&b->lock, 0, __ATOMIC_RELEASE) == 2))
        conc__futex_wake(&b->lock, 1, 1);
}

static inline void bucket_unlink(struct bucket *b, conc_greenlet *g)
{
    if (g->wprev)
        g->wprev->wnext = g->wnext;
    else
        b->head = g->wnext;
    if (g->wnext)
        g->wnext->wprev = g->wprev;
    else
        b->tail = g->wprev;
    g->wprev = g->wnext = NULL;
    st_relaxed(&g->in_table, 0);
    parked_add(-1);
}

/* ------------------------------------------------------------ readiness */

static void enqueue(struct hub *h, conc_greenlet *g)
{
    g->rnext = NULL;
    if (h->rtail)
        h->rtail->rnext = g;
    else
        h->rhead = g;
    h->rtail = g;
    h->nready++;
}

static inline conc_greenlet *dequeue(struct hub *h)
{
    conc_greenlet *g = h->rhead;
    h->rhead = g->rnext;
    if (!h->rhead)
        h->rtail = NULL;
    h->nready--;
    return g;
}

/*
 * Hand-off: when the loop would only run the next ready greenlet (no
 * descriptor waited for, no timer armed, no wake-up from another thread
 * queued), a greenlet that parks, yields or finishes switches to that
 * greenlet directly, not through the loop: one switch instead of two, in
 * the same order.  Returns it, taken off the queue and marked running, or
 * NULL: go through the loop.
 */
static inline conc_greenlet *handoff_take(struct hub *h)
{
    conc_greenlet *n = h->rhead;
    if (!n || h->nfd || h->thead || h->nheap
        || __atomic_load_n(&h->remote, __ATOMIC_RELAXED)
        || (n->state == G_NEW && n->killed)
        || (n->copied && h->shared->owner != n->coro))
        return NULL;            /* (a copy runs on the loop's stack) */
    dequeue(h);
    h->current = n;
    n->state = G_RUNNING;
    return n;
}

/* ---------------------------------------------------------- fd records */

/*
 * A descriptor that coroutines wait on stays in the hub's epoll set between
 * waits, as Go's netpoller keeps it: one record per descriptor number, with
 * at most one reader and one writer parked on it.  A record is in one of two
 * modes.
 *
 * Edge-triggered, for sockets waited on by the socket layer (conc__wait_io:
 * an operation said EAGAIN, then it waits).  The socket is registered once
 * for EPOLLIN | EPOLLRDHUP | EPOLLPRI | EPOLLET, EPOLLOUT added by the first wait for
 * room (one EPOLL_CTL_MOD), and a wait makes no epoll_ctl at all.  (Not
 * EPOLLOUT from the start: a Unix socket raises it every time its peer
 * reads, so a server that only ever waits to read would be woken for
 * nothing by every answer its client takes.)  An edge that finds nobody
 * parked for its direction sets the record's read-ready or write-ready
 * flag; a wait that finds its flag set clears it and returns at once (the
 * caller tries the operation again); a wait that finds it clear parks.  A flag is cleared only there,
 * after the operation said EAGAIN, so no edge is lost: data that arrives
 * after the EAGAIN queues an edge in the kernel, which this thread takes
 * only in its loop, that is after the waiter parked, and which then wakes
 * it.  (A flag set by an edge whose data an earlier operation already took
 * costs one more try, never a lost wake-up.)  The record remembers which
 * socket it registered (its key, unique per socket handle for the life of
 * the process): a socket with another key, a new file that reuses the
 * number, registers again (EPOLL_CTL_MOD, or EPOLL_CTL_ADD when the number
 * now names another file) with its flags cleared.
 *
 * One-shot, for every other wait (conc_fd_wait, pipes, eventfds, pidfds,
 * an event mask the edge mode does not carry): an event disables the
 * registration, and the next wait re-arms it with one EPOLL_CTL_MOD.  Such
 * a wait on a record in edge mode makes the same one EPOLL_CTL_MOD, with
 * the edge mode's events: the kernel then reports the descriptor at once if
 * it is ready now, which gives the wait its level semantics, and finds out
 * whether the number still names the registered file.
 *
 * Closed descriptors are forgotten lazily.  Closing a file's last
 * descriptor takes it out of every epoll set; a new file that reuses the
 * number is not in the set, so the MOD fails with ENOENT and the record
 * adds it again.  When the old file lives on (a dup, a forked child's
 * copy), its registration stays until that copy closes and may still
 * report: every ADD takes a new generation, stored in the event's data with
 * the number, and an event of an older generation is dropped.  The socket
 * layer's close takes the registration out of the closing thread's hub
 * first (conc__wait_fd_close), so a copy that lives on sends it nothing.
 * A second reader (or writer) of one descriptor, or a waiter of both
 * directions at once, takes the older path: a copy of the descriptor
 * registered for that wait alone.
 *
 * Drained reads.  A plain recv on a TCP stream that returns fewer bytes
 * than asked has taken the whole receive queue (the kernel's tcp_recvmsg
 * stops early only at an urgent mark, or with packets in the socket's
 * backlog, which its release then queues and signals), and anything that
 * makes the socket readable later (data, a FIN, an error, urgent data)
 * signals the socket's waiters after it changed the socket, which queues an
 * edge for this hub.  So the socket layer tells the hub such a read happened
 * (conc__wait_io_drained): the record clears its read-ready flag and marks
 * itself drained, and the socket's next read waits first (conc__wait_io_
 * empty) instead of trying and hearing EAGAIN: the system call per request
 * a try-then-wait loop makes and a readiness loop does not.  Any edge of the
 * read side clears the mark.  What could make a short read stop with
 * something still readable turns the rule off for the record's socket for
 * good: an urgent byte (EPOLLPRI is registered for that alone), a hang-up,
 * an error or the peer's FIN (EPOLLRDHUP: the read that took the FIN was
 * short, and the next one says 0 without an edge); each was either in the
 * mask of an edge this hub took before the read, or its edge is still
 * queued in the kernel and wakes the read's wait.  The socket layer keeps
 * out reads that may stop at a boundary (MSG_PEEK, Unix sockets, kTLS
 * records, a socket whose urgent byte was read with MSG_OOB, whose mark no
 * event reports any more).
 */
struct hub_fdrec {
    conc_greenlet *rd, *wr;     /* parked on POLLIN-like / POLLOUT events */
    uint64_t key;               /* edge mode: the socket registered */
    uint32_t gen;               /* of the newest registration (31 bits) */
    uint8_t added;              /* added to the epoll set once at least */
    uint8_t edge;               /* registered edge-triggered, for key */
    uint8_t eout;               /* edge mode: EPOLLOUT registered too */
    uint8_t rready, wready;     /* edge mode: an edge nobody took since the
                                   last EAGAIN of that direction */
    uint8_t rdrained;           /* edge mode: a drained read, and no edge of
                                   the read side since */
    uint8_t noshort;            /* edge mode: an urgent, hang-up or error
                                   event came: no drained reads */
};

#define REG_RECORD (-2)                 /* g->regfd: parked through a record */
#define REC_TAG (1ull << 63)            /* event data: record, not a greenlet */
#define REC_MAX_FD (1 << 24)            /* larger numbers take the older path */
#define REC_ALWAYS (EPOLLERR | EPOLLHUP)
#define EDGE_EVENTS (EPOLLIN | EPOLLRDHUP | EPOLLPRI | EPOLLET)  /* | EPOLLOUT: eout */
#define EDGE_RD (EPOLLIN | EPOLLRDHUP | EPOLLPRI | REC_ALWAYS)  /* sets rready */
#define EDGE_NOSHORT (EPOLLPRI | EPOLLRDHUP | REC_ALWAYS)       /* sets noshort */
#define EDGE_WR (EPOLLOUT | REC_ALWAYS)                 /* sets wready */

static inline uint64_t rec_data(int fd, uint32_t gen)
{
    return REC_TAG | ((uint64_t)(gen & 0x7fffffffu) << 32) | (uint32_t)fd;
}

/* The record of fd, the table grown to hold it; NULL without memory. */
static struct hub_fdrec *fdrec_get(struct hub *h, int fd)
{
    size_t i = (size_t)fd;
    if (likely(i < h->nfdrec))
        return &h->fdrec[i];
    size_t n = h->nfdrec ? h->nfdrec : 64;
    while (n <= i)
        n *= 2;
    struct hub_fdrec *t = realloc(h->fdrec, n * sizeof *t);
    if (!t)
        return NULL;
    memset(t + h->nfdrec, 0, (n - h->nfdrec) * sizeof *t);
    h->fdrec = t;
    h->nfdrec = n;
    return &t[i];
}

static inline uint32_t rec_want(const struct hub_fdrec *r)
{
    uint32_t e = 0;
    if (r->rd)
        e |= (uint32_t)(uint16_t)r->rd->events;
    if (r->wr)
        e |= (uint32_t)(uint16_t)r->wr->events;
    return e;
}

/* Whether a waiter for events e fits a record in edge mode: its events are
 * among those registered, in one direction. */
static inline bool edge_fits(uint32_t e)
{
    return e && ((e & ~(uint32_t)(EPOLLIN | EPOLLRDHUP)) == 0 || e == EPOLLOUT);
}

/* Sets fd's registration to events: EPOLL_CTL_MOD, or EPOLL_CTL_ADD with a
 * new generation when the number is not in the set (never added, or closed
 * since and reused: a new file).  Returns 0, or -errno (EPERM: a regular
 * file, which epoll refuses). */
static int fdrec_register(struct hub *h, int fd, struct hub_fdrec *r, uint32_t events)
{
    struct epoll_event ev = { .events = events };
    if (r->added) {
        ev.data.u64 = rec_data(fd, r->gen);
        if (epoll_ctl(h->epfd, EPOLL_CTL_MOD, fd, &ev) == 0)
            return 0;
        if (errno != ENOENT)
            return -errno;
        /* closed since, and the number reused: a new file */
    }
    r->gen = (r->gen + 1) & 0x7fffffffu;
    ev.data.u64 = rec_data(fd, r->gen);
    if (epoll_ctl(h->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        if (errno != EEXIST)
            return -errno;
        /* added by an earlier record of this number (a reused table) */
        if (epoll_ctl(h->epfd, EPOLL_CTL_MOD, fd, &ev) != 0)
            return -errno;
    }
    r->added = 1;
    return 0;
}

/* Leaves edge mode: the record forgets its socket and its flags. */
static inline void fdrec_forget(struct hub_fdrec *r)
{
    r->edge = 0;
    r->eout = 0;
    r->key = 0;
    r->rready = r->wready = 0;
    r->rdrained = r->noshort = 0;
}

/* Arms fd's registration for what its waiters want.  Returns 0 or -errno
 * (EPERM: a regular file, which epoll refuses). */
static int fdrec_arm(struct hub *h, int fd, struct hub_fdrec *r)
{
    /* Always a call, even if the registration looks armed still (after a
     * timeout): the number may be another file's by now. */
    if (r->edge) {
        /* Edge mode: the same events again.  The kernel reports the
         * descriptor at once if it is ready now (level semantics for this
         * wait); ENOENT says the number names another file by now, which
         * gets a one-shot registration of its own. */
        uint8_t out = r->eout || (rec_want(r) & EPOLLOUT);
        struct epoll_event ev = { .events = EDGE_EVENTS | (out ? EPOLLOUT : 0),
                                  .data.u64 = rec_data(fd, r->gen) };
        if (epoll_ctl(h->epfd, EPOLL_CTL_MOD, fd, &ev) == 0) {
            r->eout = out;
            return 0;
        }
        if (errno != ENOENT)
            return -errno;
        fdrec_forget(r);
        r->added = 0;
    }
    return fdrec_register(h, fd, r, rec_want(r) | EPOLLONESHOT);
}

/* Registers fd edge-triggered for the socket key.  Returns 0, 1 when the
 * record cannot take edge mode (a waiter parked on it wants events that
 * mode does not carry), or -errno. */
static int fdrec_edge(struct hub *h, int fd, struct hub_fdrec *r, uint64_t key)
{
    if ((r->rd && !edge_fits((uint32_t)(uint16_t)r->rd->events))
        || (r->wr && !edge_fits((uint32_t)(uint16_t)r->wr->events)))
        return 1;
    if (r->edge) {
        /* Another socket's registration: the number may name another file
         * (ENOENT: added again, with a new generation). */
        fdrec_forget(r);
    }
    uint8_t out = r->wr != NULL;        /* a writer parked one-shot stays served */
    int rc = fdrec_register(h, fd, r, EDGE_EVENTS | (out ? EPOLLOUT : 0));
    if (rc != 0)
        return rc;
    /* Whatever is ready now, the registration just reported: no flag. */
    r->edge = 1;
    r->eout = out;
    r->key = key;
    r->rready = r->wready = 0;
    r->rdrained = r->noshort = 0;
    return 0;
}

/* g, parked through its fd's record, leaves it (woken, timed out, killed).
 * The registration stays: a later event finds nobody and is dropped (one-
 * shot mode) or sets the flag of its direction (edge mode). */
static void fdrec_leave(struct hub *h, conc_greenlet *g)
{
    struct hub_fdrec *r = &h->fdrec[g->fd];
    if (r->rd == g)
        r->rd = NULL;
    else if (r->wr == g)
        r->wr = NULL;
}

static void make_ready(struct hub *h, conc_greenlet *g, int rc);

/*
 * Pre-reads.  A greenlet parked for a socket's read through conc__wait_io_
 * read (a plain recv of a TCP stream, src/socket.c) asks the hub to make
 * the read itself when it takes the socket's read edge: the recv runs right
 * there, while the hub walks the batch of events, into the hub's arena, and
 * the greenlet, made ready as usual, copies the bytes into its own buffer
 * when it resumes (no system call).  So every read of a batch runs before
 * any of the sends that answer them: the kernel's receive path, then its
 * transmit path, each back to back, as a readiness loop that gathers its
 * writes runs them.  Never into the greenlet's buffer: a copied stack is
 * not mapped while its greenlet is parked, and handlers share buffers.
 *
 * The read takes at most PRE_MAX bytes, fewer if the arena has less room
 * (none: no pre-read, the greenlet reads itself as before).  Fewer than it
 * asked for is a drained read (see "fd records"), noted as the socket
 * layer notes its own; as many: the greenlet's next recv tries first.  EOF
 * and errors are staged too (the read that reports a socket's error clears
 * it); EAGAIN and EINTR stage nothing.  A staged greenlet is ready, not
 * parked: a timer was disarmed when it was made ready, and a kill waits for
 * its next blocking call (cancel_pending), so the bytes always reach it.
 * The arena is reused from its start once every staged result was taken,
 * checked before each epoll_wait.
 */
#define PRE_MAX 4096u
#define STAGE_SIZE (256u * 1024u)

static void preread(struct hub *h, int fd, struct hub_fdrec *r, conc_greenlet *g)
{
    size_t room = STAGE_SIZE - h->staged_len;
    size_t cap = g->prlen < room ? g->prlen : room;
    if (!h->stage || cap == 0)
        return;
    unsigned char *p = h->stage + h->staged_len;
    ssize_t n = conc__recv_nb(fd, p, cap, 0);
    if (n < 0) {
        int e = errno;
        if (e == EAGAIN || e == EWOULDBLOCK || e == EINTR)
            return;
        g->prn = -e;
    } else {
        g->prn = (int)n;
        h->staged_len += (size_t)n;
        if (n > 0 && (size_t)n < cap && !r->noshort) {
            r->rready = 0;
            r->rdrained = 1;
        }
    }
    g->prdata = p;
    g->staged = 1;
    h->nstaged++;
}

/* An event of fd's registration, of generation gen. */
static void fdrec_event(struct hub *h, int fd, uint32_t gen, uint32_t revents)
{
    if ((size_t)fd >= h->nfdrec)
        return;
    struct hub_fdrec *r = &h->fdrec[fd];
    if (r->gen != gen)
        return;                 /* an older file's, which kept the number */
    if (r->edge) {
        /* Nothing to re-arm.  A parked waiter takes its direction's edge;
         * with nobody to take it, the edge sets the flag. */
        conc_greenlet *g = r->rd;
        if (revents & EDGE_NOSHORT)
            r->noshort = 1;
        if (revents & EDGE_RD) {
            r->rdrained = 0;
            if (g && (revents & ((uint32_t)(uint16_t)g->events | REC_ALWAYS))) {
                if (g->prlen)
                    preread(h, fd, r, g);
                make_ready(h, g, 0);
            } else {
                r->rready = 1;
            }
        }
        g = r->wr;
        if (revents & EDGE_WR) {
            if (g && (revents & ((uint32_t)(uint16_t)g->events | REC_ALWAYS)))
                make_ready(h, g, 0);
            else
                r->wready = 1;
        }
        return;
    }
    conc_greenlet *g = r->rd;
    if (g && (revents & ((uint32_t)(uint16_t)g->events | REC_ALWAYS)))
        make_ready(h, g, 0);
    g = r->wr;
    if (g && (revents & ((uint32_t)(uint16_t)g->events | REC_ALWAYS)))
        make_ready(h, g, 0);
    if ((r->rd || r->wr) && fdrec_arm(h, fd, r) != 0) {
        /* Closed while waited on: as with a registration of its own, the
         * waiter stays until its deadline or a kill. */
    }
}

/* Makes a parked g ready; its blocking call will return rc. */
static void make_ready(struct hub *h, conc_greenlet *g, int rc)
{
    conc__hub_timer_cancel(h, g);
    if (g->wait_kind == W_JOIN && !g->is_main)
        h->njoin--;
    if (g->wait_kind == W_JOIN && g->jpprev) {
        *g->jpprev = g->jnext;
        if (g->jnext)
            g->jnext->jpprev = g->jpprev;
        g->jpprev = NULL;
        g->jnext = NULL;
    } else if (g->wait_kind == W_FD) {
        if (g->regfd == REG_RECORD) {
            fdrec_leave(h, g);
        } else {
            epoll_ctl(h->epfd, EPOLL_CTL_DEL, g->regfd, NULL);
            if (g->regfd != g->fd)
                close(g->regfd);
        }
        h->nfd--;
    }
    g->wait_kind = W_NONE;
    g->wake_rc = rc;
    g->state = G_READY;
    enqueue(h, g);
}

/* Ends a parked g's wait with rc (a timer, a kill, a deadlock).  A word
 * waiter already unlinked by a waker is left to that wake-up. */
static void interrupt(struct hub *h, conc_greenlet *g, int rc)
{
    if (g->wait_kind == W_WORD) {
        struct bucket *b = bucket_of(g->word);
        bucket_lock(b);
        bool mine = ld_relaxed(&g->in_table);
        if (mine)
            bucket_unlink(b, g);
        bucket_unlock(b);
        if (!mine) {
            conc__hub_timer_cancel(h, g);
            if (rc == -ECANCELED)
                g->cancel_pending = 1;
            return;
        }
    }
    make_ready(h, g, rc);
}

/* Hands g, unlinked from the table, to its hub in another thread (or to
 * this thread's hub from a signal handler's deferred wake-up). */
static void remote_push(struct hub *h, conc_greenlet *g)
{
    __atomic_add_fetch(&h->pushers, 1, __ATOMIC_RELAXED);
    conc_greenlet *head = __atomic_load_n(&h->remote, __ATOMIC_RELAXED);
    do
        g->remote_next = head;
    while (!__atomic_compare_exchange_n(&h->remote, &head, g, true, __ATOMIC_RELEASE,
                                        __ATOMIC_RELAXED));
    uint64_t one = 1;
    ssize_t w = write(h->evfd, &one, sizeof one);
    (void)w;
    __atomic_sub_fetch(&h->pushers, 1, __ATOMIC_RELEASE);
}

static void remote_drain(struct hub *h)
{
    if (!__atomic_load_n(&h->remote, __ATOMIC_RELAXED))
        return;
    conc_greenlet *g = __atomic_exchange_n(&h->remote, NULL, __ATOMIC_ACQUIRE), *fifo = NULL;
    while (g) {                 /* oldest first */
        conc_greenlet *next = g->remote_next;
        g->remote_next = fifo;
        fifo = g;
        g = next;
    }
    while (fifo) {
        g = fifo;
        fifo = g->remote_next;
        g->remote_next = NULL;
        if (g->state == G_PARKED && g->wait_kind == W_WORD && !ld_relaxed(&g->in_table))
            make_ready(h, g, 0);
    }
}

/* Wakes up to n coroutines parked on word (NULL: on any word) in bucket b;
 * the caller is busy (see "signal safety"). */
static int bucket_wake(struct bucket *b, uint32_t *word, int n)
{
    conc_greenlet *woken = NULL, **tail = &woken;
    int k = 0;
    bucket_lock(b);
    for (conc_greenlet *g = b->head, *next; g && k < n; g = next) {
        next = g->wnext;
        if (word && g->word != word)
            continue;
        bucket_unlink(b, g);
        g->remote_next = NULL;
        *tail = g;
        tail = &g->remote_next;
        k++;
    }
    bucket_unlock(b);
    struct hub *me = tls_hub;
    while (woken) {
        conc_greenlet *g = woken;
        woken = g->remote_next;
        g->remote_next = NULL;
        if (g->hub == me)
            make_ready(me, g, 0);
        else
            remote_push(g->hub, g);
    }
    return k;
}

static inline int hub_wake(uint32_t *word, int n)
{
    return bucket_wake(bucket_of(word), word, n);
}

/* Every coroutine parked on a word anywhere: a spurious wake-up for most
 * (deferred wake-ups that found no room, see below). */
static void hub_wake_everything(void)
{
    for (size_t i = 0; i < BUCKETS; i++)
        bucket_wake(&table[i], NULL, INT_MAX);
}

/* --------------------------------------------------------- signal safety */

/*
 * conc_sem_release and conc_event_set may be called from a signal handler,
 * even while coroutines are parked (as sem_post may): their wake-up,
 * conc__hub_wake, is async-signal-safe.  It uses atomics and system calls
 * only (the bucket lock is a futex, the remote list lock-free, the eventfd
 * a write), and two rules keep a handler from touching what the thread it
 * interrupted was in the middle of changing:
 *
 * - A thread is "busy" while it changes a hub's bookkeeping (its ready
 *   queue, timers, descriptors) or holds a bucket's lock: tls_busy counts
 *   the nesting.  A handler that finds its thread busy does not wake
 *   anything itself: it records the word in the thread's deferred list
 *   (tls_deferred: a compare-and-swap claims a slot; when the list is full
 *   a flag asks for a wake-up of every parked coroutine, spurious for most)
 *   and writes the eventfd of the thread's hub, if any.  The thread wakes
 *   them when it stops being busy, and a hub's loop (always busy) on each
 *   turn: the eventfd ends its epoll_wait.
 * - A handler that finds its thread not busy wakes as any thread would: it
 *   may wait for a bucket's lock held by another thread, which never waits
 *   for it.
 *
 * Coroutine switches keep each coroutine's count: hub_leave saves it and
 * sets it back when the coroutine runs again; a new greenlet starts its
 * body with 0, the loop runs with 1.
 */
#define DEFER_MAX 8

struct deferred {
    uint32_t n;                 /* slots in use */
    uint32_t all;               /* overflowed: wake every parked coroutine */
    struct {
        uint32_t *word;
        int n;
    } e[DEFER_MAX];
};

static __thread uint32_t tls_busy __attribute__((tls_model("initial-exec")));
static __thread struct deferred tls_deferred __attribute__((tls_model("initial-exec")));

static inline bool deferred_pending(void)
{
    return (__atomic_load_n(&tls_deferred.n, __ATOMIC_RELAXED)
            | __atomic_load_n(&tls_deferred.all, __ATOMIC_RELAXED)) != 0;
}

/* Wakes what handlers deferred; the caller is busy.  Handlers may add more
 * meanwhile (a slot is taken back with a compare-and-swap). */
static void deferred_run(void)
{
    for (;;) {
        if (__atomic_exchange_n(&tls_deferred.all, 0, __ATOMIC_RELAXED))
            hub_wake_everything();
        uint32_t i = __atomic_load_n(&tls_deferred.n, __ATOMIC_RELAXED);
        if (i == 0) {
            if (!__atomic_load_n(&tls_deferred.all, __ATOMIC_RELAXED))
                return;
            continue;
        }
        uint32_t *word = __atomic_load_n(&tls_deferred.e[i - 1].word, __ATOMIC_RELAXED);
        int n = __atomic_load_n(&tls_deferred.e[i - 1].n, __ATOMIC_RELAXED);
        if (__atomic_compare_exchange_n(&tls_deferred.n, &i, i - 1, false, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED))
            hub_wake(word, n);
    }
}

static inline void busy_set(uint32_t v)
{
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    __atomic_store_n(&tls_busy, v, __ATOMIC_RELAXED);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
}

static inline void busy_enter(void)
{
    busy_set(__atomic_load_n(&tls_busy, __ATOMIC_RELAXED) + 1);
}

/* Not busy, with wake-ups deferred: wake them. */
static void __attribute__((noinline)) busy_leave_deferred(void)
{
    while (deferred_pending()) {
        busy_set(1);
        deferred_run();
        busy_set(0);
    }
}

/* Leaves one level; the last one wakes what handlers deferred meanwhile
 * (first not busy, then look: a handler that comes after the look acts
 * itself). */
static inline void busy_leave(void)
{
    uint32_t b = __atomic_load_n(&tls_busy, __ATOMIC_RELAXED) - 1;
    busy_set(b);
    if (unlikely(b == 0 && deferred_pending()))
        busy_leave_deferred();
}

/* In a handler that interrupted a busy thread: leave word to the thread. */
static void defer(uint32_t *word, int n)
{
    uint32_t i = __atomic_load_n(&tls_deferred.n, __ATOMIC_RELAXED);
    for (;;) {
        if (i >= DEFER_MAX) {
            __atomic_store_n(&tls_deferred.all, 1, __ATOMIC_RELAXED);
            break;
        }
        if (__atomic_compare_exchange_n(&tls_deferred.n, &i, i + 1, false, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED)) {
            /* Nobody takes it before this handler returns. */
            __atomic_store_n(&tls_deferred.e[i].word, word, __ATOMIC_RELAXED);
            __atomic_store_n(&tls_deferred.e[i].n, n, __ATOMIC_RELAXED);
            break;
        }
    }
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    struct hub *h = tls_hub;
    if (h) {                    /* its loop may be about to sleep */
        uint64_t one = 1;
        ssize_t w = write(h->evfd, &one, sizeof one);
        (void)w;
    }
}

/* Wakes up to n coroutines parked on word (hub_internal.h). */
int conc__hub_wake(uint32_t *word, int n)
{
    int *err = &errno, saved = *err;
    int k = 0;
    if (__atomic_load_n(&tls_busy, __ATOMIC_RELAXED)) {
        defer(word, n);         /* a handler: the thread will wake them */
    } else {
        busy_enter();
        k = hub_wake(word, n);
        busy_leave();
    }
    *err = saved;
    return k;
}

/* conc__wake's second half (the hub's wake backend, src/sys/wait.h).
 * Called after the waker's fence: a count of 0 read here means no
 * coroutine can be parked on the word (see "No lost wake-up" above). */
static int hub_backend_wake(uint32_t *word, int n)
{
    if (likely(__atomic_load_n(&table_parked, __ATOMIC_RELAXED) == 0))
        return 0;
    return conc__hub_wake(word, n);
}

/* ------------------------------------------------------------ greenlets */

/* The last reference frees the coroutine, and with its stack the record. */
static void gl_unref(conc_greenlet *g)
{
    if (__atomic_load_n(&g->refs, __ATOMIC_ACQUIRE) == 1
        || __atomic_sub_fetch(&g->refs, 1, __ATOMIC_ACQ_REL) == 0)
        conc_coro_free(g->coro);
}

static inline conc_coro *gl_coro(conc_greenlet *g)
{
    return g->coro;
}

/* A greenlet's name is its coroutine's (which lives as long as it). */
static inline const char *gl_name(const conc_greenlet *g)
{
    return g->is_main ? "main" : conc_coro_name(g->coro);
}

/* The greenlet the hub believes runs, if the running coroutine is it (not
 * the loop, not a coroutine switched to by hand). */
static inline conc_greenlet *gl_self(struct hub *h)
{
    conc_greenlet *g = h->current;
    /* The running coroutine's identity, kept by every switch, answers
     * without a call in the common case. */
    if (likely(g && conc__owner_id() == g->owner))
        return g;
    conc_coro *cur = conc_coro_current();
    if (g && cur == gl_coro(g))
        return g;
    if (cur == conc_coro_main() && h->main.state == G_RUNNING) {
        h->current = &h->main;  /* the hub was made in another coroutine */
        return &h->main;
    }
    return NULL;
}

/* Bookkeeping of a greenlet that has finished (on the hub's thread). */
static void gl_finish(struct hub *h, conc_greenlet *g)
{
    g->state = G_DEAD;
    if (g->timeouts) {          /* scopes left open go with it */
        free(g->timeouts);
        g->timeouts = NULL;
        g->ntimeouts = 0;
    }
    if (g->aprev)
        g->aprev->anext = g->anext;
    else
        h->all = g->anext;
    if (g->anext)
        g->anext->aprev = g->aprev;
    /* Wake joiners from outside only when one counted itself: most
     * greenlets finish before anybody joins them.  (See GL_DONE for why no
     * fence is needed between the store and the read.) */
    __atomic_store_n(&g->done, GL_DONE, __ATOMIC_RELEASE);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);   /* the store, then the read */
    if (__atomic_load_n(&barrier_state, __ATOMIC_RELAXED) != 1)
        conc__full_fence();
    if (unlikely((uint32_t)__atomic_load_n(&g->joined.word, __ATOMIC_RELAXED) != 0)) {
        /* Not busy for the wake-up: the hub's wake half would take this
         * thread for a signal handler and defer it.  The bookkeeping is
         * whole here (see "signal safety"). */
        uint32_t busy = __atomic_load_n(&tls_busy, __ATOMIC_RELAXED);
        busy_set(0);
        conc__park_wake(&g->joined, INT_MAX, 0);
        busy_set(busy);
    }
    if (g->joiners) {           /* coroutines of this hub, first come first */
        conc_greenlet *j = g->joiners, *fifo = NULL;
        g->joiners = NULL;
        while (j) {
            conc_greenlet *next = j->jnext;
            j->jnext = fifo;
            fifo = j;
            j = next;
        }
        while (fifo) {
            j = fifo;
            fifo = j->jnext;
            j->jnext = NULL;
            j->jpprev = NULL;
            make_ready(h, j, 0);
        }
    }
    /* live changes only in the hub's thread: no locked instruction. */
    uint32_t left = h->live - 1;
    __atomic_store_n(&h->live, left, __ATOMIC_RELEASE);
    if (left == 0 && h->live_waited)
        hub_wake(&h->live, INT_MAX);    /* only the main coroutine, parked */
}

/* Drops the running reference of the greenlet that finished last: it has
 * switched away for good once anything else runs in the hub's thread. */
static inline void hub_reap(struct hub *h)
{
    conc_greenlet *d = h->dead;
    if (d) {
        h->dead = NULL;
        gl_unref(d);
    }
}

static void *gl_entry(void *arg, void *value)
{
    (void)value;
    conc_greenlet *g = arg;
    struct hub *h = g->hub;
    busy_set(0);                /* the body is not the hub's bookkeeping */
    if (unlikely(deferred_pending()))
        busy_leave_deferred();
    g->result = g->fn(g->arg);
    busy_enter();
    gl_finish(h, g);
    hub_reap(h);
    h->dead = g;
    conc_greenlet *next = handoff_take(h);
    if (next)
        conc__coro_set_next(g->coro, gl_coro(next));
    return NULL;                /* to the next greenlet, or to the loop */
}

static void run_one(struct hub *h, conc_greenlet *g)
{
    if (g->state == G_NEW && g->killed) {
        gl_finish(h, g);
        gl_unref(g);
        return;
    }
    h->current = g;
    g->state = G_RUNNING;
    if (unlikely(conc_coro_switch(gl_coro(g), NULL, NULL) < 0)) {
        /* No memory to copy the shared stack's frames out: g waits for
         * the next turn (the owner keeps running meanwhile). */
        h->current = NULL;
        g->state = G_READY;
        enqueue(h, g);
        sched_yield();
        return;
    }
    busy_set(1);
    h->current = NULL;
    hub_reap(h);
}

/* ------------------------------------------------------------ the loop */

/* Nothing but this hub can end the main coroutine's wait, and nothing in
 * it can run: the main coroutine and every live greenlet wait for a
 * greenlet of this hub to finish (see the top of this file). */
static bool certain_deadlock(struct hub *h)
{
    if (h->rhead || h->nheap || h->thead || h->nfd
        || __atomic_load_n(&h->remote, __ATOMIC_ACQUIRE) || deferred_pending())
        return false;
    const conc_greenlet *m = &h->main;
    if (m->state != G_PARKED)
        return false;
    if (m->wait_kind == W_WORD) {       /* conc_hub_run */
        if (m->word != &h->live || !ld_relaxed(&m->in_table))
            return false;
    } else if (m->wait_kind != W_JOIN) {
        return false;
    }
    return h->njoin == __atomic_load_n(&h->live, __ATOMIC_RELAXED);
}

static void expire_timers(struct hub *h)
{
    conc_greenlet *g = timer_first(h);
    if (!g)
        return;
    int64_t now = conc_now();
    for (; g && g->deadline <= now; g = timer_first(h)) {
        conc__hub_timer_cancel(h, g);
        interrupt(h, g, g->timer_rc);
    }
}

/* Events taken per epoll_wait: with many connections ready at once, one
 * call in place of four (the reactor's batch). */
#define POLL_BATCH 256

static void poll_events(struct hub *h, int timeout_ms)
{
    struct epoll_event ev[POLL_BATCH];
    if (!h->nstaged)
        h->staged_len = 0;      /* every pre-read's bytes were taken */
    int n = epoll_wait(h->epfd, ev, POLL_BATCH, timeout_ms);
    for (int i = 0; i < n; i++) {
        if (ev[i].data.u64 & REC_TAG) {
            uint64_t d = ev[i].data.u64;
            fdrec_event(h, (int)(uint32_t)d, (uint32_t)(d >> 32) & 0x7fffffffu,
                        ev[i].events);
            continue;
        }
        conc_greenlet *g = ev[i].data.ptr;
        if (!g) {
            uint64_t v;
            ssize_t r = read(h->evfd, &v, sizeof v);
            (void)r;
            continue;
        }
        if (g->state == G_PARKED && g->wait_kind == W_FD)
            make_ready(h, g, 0);
    }
    remote_drain(h);
}

static void *hub_loop(void *arg, void *value)
{
    (void)value;
    struct hub *h = arg;
    busy_set(1);                /* always, in the loop */
    for (;;) {
        if (unlikely(deferred_pending()))
            deferred_run();
        remote_drain(h);
        expire_timers(h);
        if (h->rhead) {
            /* One pass over what is ready now, then look for events. */
            for (size_t n = h->nready; n > 0 && h->rhead; n--)
                run_one(h, dequeue(h));
            /* Greenlets still ready: take the events that came meanwhile
             * before their next turn.  None: the wait below takes them
             * (a look without waiting first would be one more call). */
            if (h->rhead && (h->nfd || __atomic_load_n(&h->remote, __ATOMIC_RELAXED)))
                poll_events(h, 0);
            continue;
        }
        int timeout = -1;
        conc_greenlet *first = timer_first(h);
        if (first) {
            int64_t left = first->deadline - conc_now();
            if (left <= 0)
                continue;
            int64_t ms = (left + 999999) / 1000000;
            timeout = ms > INT_MAX ? INT_MAX : (int)ms;
        } else if (certain_deadlock(h)) {
            interrupt(h, &h->main, -EDEADLK);
            continue;
        }
        hub_reap(h);
        poll_events(h, timeout);
    }
    return NULL;
}

/* ------------------------------------------------------- wait operations */

static int64_t eff_deadline(const conc_greenlet *g, int64_t deadline)
{
    if (g->ntimeouts) {
        int64_t s = g->timeouts[g->ntimeouts - 1];
        if (s < deadline)
            return s;
    }
    return deadline;
}

/* The running greenlet g (parked, or queued again) lets the next one run.
 * Inlined, as park and the join path are: every return after a switch
 * mispredicts (the return stack holds the other context's calls). */
static inline __attribute__((always_inline)) void hub_leave(struct hub *h, conc_greenlet *g)
{
    conc_greenlet *next = handoff_take(h);
    if (next == g)
        return;                 /* nothing else to run: go on */
    uint32_t busy = __atomic_load_n(&tls_busy, __ATOMIC_RELAXED);
    conc__coro_switch_same_site(next ? gl_coro(next) : h->loop);
    busy_set(busy);             /* ours again (see "signal safety") */
}

static inline __attribute__((always_inline)) int park(struct hub *h, conc_greenlet *g)
{
    g->state = G_PARKED;
    hub_leave(h, g);
    return g->wake_rc;
}

/* The plain (thread-blocking) path, for code that the hub does not run. */
#define PLAIN(call)                                     \
    do {                                                \
        const struct conc__wait_ops *saved = conc__wait_ops; \
        conc__wait_ops = NULL;                          \
        __typeof__(call) r_ = call;                     \
        conc__wait_ops = saved;                         \
        return r_;                                      \
    } while (0)

static inline int hub_wait_busy(struct hub *h, conc_greenlet *g, uint32_t *word,
                                uint32_t expect, int64_t deadline, unsigned flags);

static int hub_wait(uint32_t *word, uint32_t expect, int64_t deadline, unsigned flags)
{
    struct hub *h = tls_hub;
    conc_greenlet *g = gl_self(h);
    if (!g)
        PLAIN(conc__wait(word, expect, deadline, flags));
    busy_enter();
    int r = hub_wait_busy(h, g, word, expect, deadline, flags);
    busy_leave();
    return r;
}

static inline int hub_wait_busy(struct hub *h, conc_greenlet *g, uint32_t *word,
                                uint32_t expect, int64_t deadline, unsigned flags)
{
    if (g->cancel_pending) {
        g->cancel_pending = 0;
        return -ECANCELED;
    }
    deadline = eff_deadline(g, deadline);
    int64_t now = 0;
    if (deadline != CONC_NO_DEADLINE || (flags & CONC__WAIT_SHARED)) {
        now = conc_now();
        if (deadline <= now)
            return __atomic_load_n(word, __ATOMIC_ACQUIRE) != expect ? -EAGAIN : -ETIMEDOUT;
    }
    parked_add(1);
    struct bucket *b = bucket_of(word);
    bucket_lock(b);
    if (__atomic_load_n(word, __ATOMIC_SEQ_CST) != expect) {
        bucket_unlock(b);
        parked_add(-1);
        return -EAGAIN;
    }
    g->word = word;
    g->wnext = NULL;
    g->wprev = b->tail;
    if (b->tail)
        b->tail->wnext = g;
    else
        b->head = g;
    b->tail = g;
    st_relaxed(&g->in_table, 1);
    bucket_unlock(b);
    g->wait_kind = W_WORD;
    if (flags & CONC__WAIT_SHARED) {
        int64_t poll = now + CONC_HUB_SHARED_POLL_NS;
        if (poll < deadline)
            conc__hub_timer_arm(h, g, poll, 0);
        else
            conc__hub_timer_arm(h, g, deadline, -ETIMEDOUT);
    } else if (deadline != CONC_NO_DEADLINE) {
        conc__hub_timer_arm(h, g, deadline, -ETIMEDOUT);
    }
    return park(h, g);
}

static int hub_sleep_until(int64_t deadline)
{
    struct hub *h = tls_hub;
    conc_greenlet *g = gl_self(h);
    if (!g)
        PLAIN(conc__sleep_until(deadline));
    if (g->cancel_pending) {
        g->cancel_pending = 0;
        return -ECANCELED;
    }
    int64_t d = eff_deadline(g, deadline);
    int rc = d < deadline ? -ETIMEDOUT : 0;
    /* A deadline already passed is a timer too (not a yield): sleeps end
     * in the order of their deadlines, whenever they were armed. */
    busy_enter();
    g->wait_kind = W_SLEEP;
    conc__hub_timer_arm(h, g, d, rc);
    park(h, g);
    busy_leave();
    return g->wake_rc;
}

static void hub_yield(void)
{
    struct hub *h = tls_hub;
    conc_greenlet *g = gl_self(h);
    if (!g) {
        sched_yield();
        return;
    }
    busy_enter();
    g->wait_kind = W_NONE;
    g->wake_rc = 0;
    g->state = G_READY;
    enqueue(h, g);
    hub_leave(h, g);
    busy_leave();
}

static int hub_wait_fd_busy(struct hub *h, conc_greenlet *g, int fd, short events,
                            int64_t deadline);

static int io_wait_busy(struct hub *h, conc_greenlet *g, int fd, uint64_t key, short events,
                        int64_t deadline);

/* A greenlet's wait on a descriptor: one-shot level (key 0, hub_wait_fd)
 * or edge-triggered after an EAGAIN (hub_wait_io), the latter for POLLIN
 * with a pre-read asked for when buf is given (hub_wait_io_read: 1 with *n
 * the staged result, bytes copied into buf).  A plain thread, and a wait
 * whose deadline has passed, poll instead. */
static int hub_wait_desc(int fd, uint64_t key, short events, int64_t deadline, void *buf,
                         size_t len, ssize_t *n)
{
    struct hub *h = tls_hub;
    conc_greenlet *g = gl_self(h);
    if (!g)
        PLAIN(conc__wait_fd(fd, events, deadline));
    if (g->cancel_pending) {
        g->cancel_pending = 0;
        return -ECANCELED;
    }
    deadline = eff_deadline(g, deadline);
    if (deadline != CONC_NO_DEADLINE && deadline <= conc_now())
        PLAIN(conc__wait_fd(fd, events, deadline));  /* a ready fd wins */
    busy_enter();
    int r;
    if (!key) {
        r = hub_wait_fd_busy(h, g, fd, events, deadline);
    } else if (!buf) {
        r = io_wait_busy(h, g, fd, key, events, deadline);
    } else {
        if (unlikely(!h->stage))
            h->stage = malloc(STAGE_SIZE);  /* none: no pre-reads */
        g->prlen = len < PRE_MAX ? (uint32_t)len : PRE_MAX;
        r = io_wait_busy(h, g, fd, key, events, deadline);
        g->prlen = 0;
        if (g->staged) {
            g->staged = 0;
            h->nstaged--;
            *n = g->prn;
            if (g->prn > 0)
                memcpy(buf, g->prdata, (size_t)g->prn);
            r = 1;
        }
    }
    busy_leave();
    return r;
}

static int hub_wait_fd(int fd, short events, int64_t deadline)
{
    return hub_wait_desc(fd, 0, events, deadline, NULL, 0, NULL);
}

/* Parks g, just put in a slot of its fd's record. */
static int fdrec_park(struct hub *h, conc_greenlet *g, int64_t deadline)
{
    g->regfd = REG_RECORD;
    g->wait_kind = W_FD;
    h->nfd++;
    if (deadline != CONC_NO_DEADLINE)
        conc__hub_timer_arm(h, g, deadline, -ETIMEDOUT);
    return park(h, g);
}

/* Parks g on fd through its record.  Returns what park returns, 1 when
 * the record cannot take it (its slot is taken, the events go both ways,
 * no memory), or -errno. */
static int fdrec_wait(struct hub *h, conc_greenlet *g, int fd, short events,
                      int64_t deadline)
{
    uint32_t e = (uint32_t)(uint16_t)events;
    if (fd < 0 || fd >= REC_MAX_FD || ((e & EPOLLOUT) && (e & ~(uint32_t)EPOLLOUT)))
        return 1;
    struct hub_fdrec *r = fdrec_get(h, fd);
    if (!r)
        return 1;
    conc_greenlet **slot = (e & EPOLLOUT) ? &r->wr : &r->rd;
    if (*slot || (r->edge && !edge_fits(e)))
        return 1;
    g->fd = fd;
    g->events = events;
    *slot = g;
    int rc = fdrec_arm(h, fd, r);
    if (rc != 0) {
        *slot = NULL;
        return rc == -EPERM ? 0 : rc;   /* a regular file: always ready */
    }
    return fdrec_park(h, g, deadline);
}

static int hub_wait_fd_busy(struct hub *h, conc_greenlet *g, int fd, short events,
                            int64_t deadline)
{
    int rr = fdrec_wait(h, g, fd, events, deadline);
    if (rr != 1)
        return rr;
    struct epoll_event ev = { .events = (uint32_t)(uint16_t)events | EPOLLONESHOT,
                              .data.ptr = g };
    /* Never fd itself: its number belongs to its record. */
    int reg = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (reg < 0)
        return -errno;
    if (epoll_ctl(h->epfd, EPOLL_CTL_ADD, reg, &ev) != 0) {
        int e = errno;
        close(reg);
        return e == EPERM ? 0 : -e;     /* EPERM: a regular file, always ready */
    }
    g->fd = fd;
    g->regfd = reg;
    g->events = events;
    g->wait_kind = W_FD;
    h->nfd++;
    if (deadline != CONC_NO_DEADLINE)
        conc__hub_timer_arm(h, g, deadline, -ETIMEDOUT);
    return park(h, g);
}

/*
 * A socket's wait after its operation said EAGAIN (conc__wait_io): through
 * its record in edge mode (see "fd records"), without an epoll_ctl once
 * registered.  Returns 0 to try the operation again, -ETIMEDOUT,
 * -ECANCELED, or -errno.
 */
static int io_wait_busy(struct hub *h, conc_greenlet *g, int fd, uint64_t key, short events,
                        int64_t deadline)
{
    uint32_t e = (uint32_t)(uint16_t)events;
    if (fd < 0 || fd >= REC_MAX_FD || !key || (e != EPOLLIN && e != EPOLLOUT))
        return hub_wait_fd_busy(h, g, fd, events, deadline);
    struct hub_fdrec *r = fdrec_get(h, fd);
    if (!r)
        return hub_wait_fd_busy(h, g, fd, events, deadline);
    if (unlikely(!r->edge || r->key != key)) {
        int rc = fdrec_edge(h, fd, r, key);
        if (rc == -EPERM)
            return 0;                   /* not pollable: always ready */
        if (rc != 0)                    /* 1: a waiter that needs one-shot */
            return hub_wait_fd_busy(h, g, fd, events, deadline);
    }
    if (e == EPOLLOUT && !r->eout) {
        /* The first wait for room: EPOLLOUT joins the registration.  The
         * kernel reports the socket at once if it has room now. */
        struct epoll_event ev = { .events = EDGE_EVENTS | EPOLLOUT,
                                  .data.u64 = rec_data(fd, r->gen) };
        if (epoll_ctl(h->epfd, EPOLL_CTL_MOD, fd, &ev) != 0)
            return hub_wait_fd_busy(h, g, fd, events, deadline);
        r->eout = 1;
    }
    uint8_t *ready = e == EPOLLOUT ? &r->wready : &r->rready;
    if (*ready) {
        /* An edge came since the last EAGAIN of this direction: try the
         * operation again instead of parking.  Cleared here, after an
         * EAGAIN, and nowhere else. */
        *ready = 0;
        return 0;
    }
    conc_greenlet **slot = e == EPOLLOUT ? &r->wr : &r->rd;
    if (*slot)                          /* a second waiter of this direction */
        return hub_wait_fd_busy(h, g, fd, events, deadline);
    g->fd = fd;
    g->events = events;
    *slot = g;
    return fdrec_park(h, g, deadline);
}

static int hub_wait_io(int fd, uint64_t key, short events, int64_t deadline)
{
    return hub_wait_desc(fd, key, events, deadline, NULL, 0, NULL);
}

/* hub_wait_io for POLLIN with a pre-read asked for (see "pre-reads"):
 * returns 1 with *n the staged result, bytes copied into buf, or what
 * hub_wait_io returns. */
static int hub_wait_io_read(int fd, uint64_t key, void *buf, size_t len, int64_t deadline,
                            ssize_t *n)
{
    return hub_wait_desc(fd, key, POLLIN, deadline, buf, len, n);
}

/* The socket layer closes fd: its registration in this thread's hub goes
 * first, so that a copy of the file that lives on (a dup, a forked child's)
 * reports nothing to it.  A record with a waiter keeps it (the waiter stays
 * until its deadline or a kill, as with a number closed behind the hub's
 * back); a signal handler that interrupted the hub leaves it too. */
static void hub_fd_close(int fd)
{
    struct hub *h = tls_hub;
    if (!h || fd < 0 || (size_t)fd >= h->nfdrec || __atomic_load_n(&tls_busy, __ATOMIC_RELAXED))
        return;
    busy_enter();
    struct hub_fdrec *r = &h->fdrec[fd];
    if (r->added && !r->rd && !r->wr) {
        epoll_ctl(h->epfd, EPOLL_CTL_DEL, fd, NULL);
        r->added = 0;
        fdrec_forget(r);
    }
    busy_leave();
}

/* The record of fd when it is in edge mode for the socket key and the
 * calling thread may touch it (not a signal handler that interrupted the
 * hub), else NULL. */
static struct hub_fdrec *io_record(int fd, uint64_t key)
{
    struct hub *h = tls_hub;
    if (!h || fd < 0 || (size_t)fd >= h->nfdrec || __atomic_load_n(&tls_busy, __ATOMIC_RELAXED))
        return NULL;
    struct hub_fdrec *r = &h->fdrec[fd];
    return r->edge && r->key == key ? r : NULL;
}

/* A drained read of fd (see "fd records"): no read-ready flag, and the next
 * read waits first, unless an urgent, hang-up or error event came. */
static bool hub_io_drained(int fd, uint64_t key)
{
    struct hub_fdrec *r = io_record(fd, key);
    if (!r || r->noshort)
        return false;
    r->rready = 0;
    r->rdrained = 1;
    return true;
}

/* Whether fd has had nothing to read since its last drained read. */
static bool hub_io_empty(int fd, uint64_t key)
{
    struct hub_fdrec *r = io_record(fd, key);
    return r && r->rdrained;
}

/* poll() without waiting.  Returns how many entries are ready, 0 (also
 * when interrupted), or -errno. */
static int poll_now(struct pollfd *fds, unsigned long n)
{
    int r = poll(fds, (nfds_t)n, 0);
    if (r >= 0)
        return r;
    return errno == EINTR ? 0 : -errno;
}

/*
 * Several descriptors: they are gathered in an epoll instance of the
 * waiter's own, which the hub's epoll watches like one descriptor (a W_FD
 * wait with fd -1 whose regfd, that instance, make_ready closes).  Being
 * private, it takes descriptors that other coroutines wait on (the hub's
 * epoll holds each fd once) and a descriptor listed twice (its events are
 * merged).  revents come from poll() itself, run without waiting before
 * and after the wait, so they are exactly poll()'s: POLLNVAL for a closed
 * descriptor, negative fds ignored, regular files always ready.
 */
static int hub_wait_fds(struct pollfd *fds, unsigned long n, int64_t deadline)
{
    struct hub *h = tls_hub;
    conc_greenlet *g = gl_self(h);
    if (!g)
        PLAIN(conc__wait_fds(fds, n, deadline));
    /* Ready ones win over a deadline; a kill is for a call that has to
     * wait (conc_wait polls with a passed deadline when entries it knows
     * of are ready). */
    int r = poll_now(fds, n);
    if (r != 0)
        return r;
    deadline = eff_deadline(g, deadline);
    if (deadline != CONC_NO_DEADLINE && deadline <= conc_now())
        return -ETIMEDOUT;
    if (g->cancel_pending) {
        g->cancel_pending = 0;
        return -ECANCELED;
    }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        return -errno;
    for (unsigned long i = 0; i < n; i++) {
        if (fds[i].fd < 0)
            continue;
        struct epoll_event ev = { .events = (uint32_t)(uint16_t)fds[i].events,
                                  .data.u64 = i };
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fds[i].fd, &ev) == 0)
            continue;
        int e = errno;
        if (e == EEXIST) {              /* listed before: the union of events */
            for (unsigned long j = 0; j < i; j++)
                if (fds[j].fd == fds[i].fd)
                    ev.events |= (uint32_t)(uint16_t)fds[j].events;
            if (epoll_ctl(ep, EPOLL_CTL_MOD, fds[i].fd, &ev) == 0)
                continue;
            e = errno;
        }
        if (e == EPERM)                 /* a regular file that poll() found */
            continue;                   /* not ready for these events: never */
        close(ep);
        /* Closed since poll(): the caller's next try reports POLLNVAL. */
        return e == EBADF ? 0 : -e;
    }
    struct epoll_event ev = { .events = EPOLLIN | EPOLLONESHOT, .data.ptr = g };
    if (epoll_ctl(h->epfd, EPOLL_CTL_ADD, ep, &ev) != 0) {
        int e = errno;
        close(ep);
        return -e;
    }
    busy_enter();
    g->fd = -1;
    g->regfd = ep;
    g->events = 0;
    g->wait_kind = W_FD;
    h->nfd++;
    if (deadline != CONC_NO_DEADLINE)
        conc__hub_timer_arm(h, g, deadline, -ETIMEDOUT);
    r = park(h, g);
    busy_leave();
    if (r != 0 && r != -ETIMEDOUT)
        return r;                       /* -ECANCELED */
    int ready = poll_now(fds, n);
    return ready != 0 ? ready : r;      /* 0: a spurious wake-up, re-check */
}

static const struct conc__wake_backend hub_wake_backend = { .wake = hub_backend_wake };

static const struct conc__wait_ops hub_ops = {
    .wait = hub_wait,
    .sleep_until = hub_sleep_until,
    .yield = hub_yield,
    .wait_fd = hub_wait_fd,
    .wait_fds = hub_wait_fds,
    .wait_io = hub_wait_io,
    .wait_io_read = hub_wait_io_read,
    .fd_close = hub_fd_close,
    .io_drained = hub_io_drained,
    .io_empty = hub_io_empty,
};

/* ------------------------------------------------------------- the hub */

static void hub_atfork_child(void)
{
    /* Only the forking thread lives on, outside any hub: drop every hub
     * (leaked: its coroutines belong to the parent) and the table. */
    tls_hub = NULL;
    conc__wait_ops = NULL;
    __atomic_store_n(&barrier_state, 0, __ATOMIC_RELAXED);    /* again with the next hub */
    tls_busy = 0;
    memset(&tls_deferred, 0, sizeof tls_deferred);
    if (!hub_ever)
        return;
    for (size_t i = 0; i < BUCKETS; i++) {
        table[i].lock = 0;
        table[i].head = table[i].tail = NULL;
    }
    table_parked = 0;
}

/* The fork handler only resets memory: it never parks, waits or takes a
 * lock (a fork may come from any coroutine, or from a signal handler).  It
 * is registered when the first hub is being made, before any hub state
 * exists (docs/building.md, "Process-wide effects"). */
static pthread_once_t hub_atfork_once = PTHREAD_ONCE_INIT;

static void hub_atfork_install(void)
{
    pthread_atfork(NULL, NULL, hub_atfork_child);
}

static void gl_init(conc_greenlet *g, struct hub *h)
{
    g->hub = h;
    g->heap_idx = NO_INDEX;
    g->fd = g->regfd = -1;
}

static struct hub *hub_get(void)
{
    struct hub *h = tls_hub;
    if (likely(h != NULL))
        return h;
    pthread_once(&hub_atfork_once, hub_atfork_install);
    conc_coro *main = conc_coro_main();
    if (!main)
        return NULL;
    if (__atomic_load_n(&barrier_state, __ATOMIC_ACQUIRE) == 0) {
        /* Before the first greenlet can finish (see GL_DONE).  Threads
         * racing here all register: harmless. */
        long r = syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0);
        __atomic_store_n(&barrier_state, r == 0 ? 1 : -1, __ATOMIC_RELEASE);
    }
    h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    if (conc__hub_heap_reserve(h, 64) < 0) {
        free(h);
        return NULL;
    }
    h->epfd = epoll_create1(EPOLL_CLOEXEC);
    h->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
    conc_coro_opts o = { .stack_size = HUB_STACK, .name = "hub" };
    if (h->epfd < 0 || h->evfd < 0 || epoll_ctl(h->epfd, EPOLL_CTL_ADD, h->evfd, &ev) != 0 ||
        conc_coro_new(&h->loop, hub_loop, h, &o) != 0) {
        if (h->epfd >= 0)
            close(h->epfd);
        if (h->evfd >= 0)
            close(h->evfd);
        free(h->heap);
        free(h);
        return NULL;
    }
    conc_coro_set_parent(h->loop, main);
    gl_init(&h->main, h);
    h->main.coro = main;
    h->main.owner = conc__coro_owner(main);
    h->main.is_main = 1;
    h->main.refs = 1;
    h->main.state = G_RUNNING;
    h->stacks = CONC_STACK_OWN;
    h->current = conc_coro_current() == main ? &h->main : NULL;
    __atomic_store_n(&hub_ever, 1, __ATOMIC_RELAXED);
    /* Before any coroutine of this hub can park (see conc__wake). */
    if (!conc__wake_backend())
        conc__wake_backend_register(&hub_wake_backend);
    tls_hub = h;
    conc__wait_ops = &hub_ops;
    return h;
}

int conc_hub_free(void)
{
    struct hub *h = tls_hub;
    if (!h)
        return 0;
    if (gl_self(h) != &h->main)
        return -EPERM;
    if (__atomic_load_n(&h->live, __ATOMIC_ACQUIRE) || h->rhead)
        return -EBUSY;
    busy_enter();
    hub_reap(h);
    conc__wait_ops = NULL;
    tls_hub = NULL;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);   /* a handler sees no hub now */
    /* A waker of another thread that pushed our main coroutine may still
     * be about to write the eventfd. */
    while (__atomic_load_n(&h->pushers, __ATOMIC_ACQUIRE))
        sched_yield();
    conc_coro_free(h->loop);
    conc__shstack_unref(h->shared);     /* the copied greenlets' objects may
                                           keep it a while */
    close(h->epfd);
    close(h->evfd);
    free(h->fdrec);
    free(h->stage);
    free(h->heap);
    free(h->main.timeouts);
    free(h);
    busy_leave();
    return 0;
}

/* --------------------------------------------------------------- API */

/* The hub's shared stack for copied greenlets, made by the first one: 1
 * when it can take a coroutine that asks for stack_size bytes (0: the
 * default), 0 when that is more than it has, -EINVAL, -ENOMEM. */
static int shared_stack(struct hub *h, size_t stack_size)
{
    if (!h->shared) {
        size_t size = stack_size > CONC_CORO_STACK_DEFAULT ? stack_size : 0;
        int rc = conc__shstack_new(&h->shared, size);
        if (rc < 0)
            return rc;
    }
    return stack_size <= conc__shstack_size(h->shared) ? 1 : 0;
}

int conc_hub_set_stacks(int mode)
{
    if (mode != CONC_STACK_OWN && mode != CONC_STACK_COPIED)
        return -EINVAL;
    struct hub *h = hub_get();
    if (!h)
        return -ENOMEM;
    int old = h->stacks;
    h->stacks = mode;
    return old;
}

int conc_greenlet_spawn(conc_greenlet **out, conc_greenlet_fn fn, void *arg,
                        const conc_spawn_opts *opts)
{
    if (!out || !fn)
        return -EINVAL;
    size_t stack_size = 0;
    const char *name = NULL;
    int mode = CONC_STACK_HUB;
    if (opts) {                 /* NULL (the common case): the defaults */
        conc_spawn_opts so;
        conc_coro_opts co;
        CONC__OPTS_COPY(&so, opts, CONC__OPTS_V1(conc_spawn_opts, coro));
        CONC__OPTS_COPY(&co, so.coro, CONC__OPTS_V1(conc_coro_opts, name));
        stack_size = co.stack_size;
        name = co.name;
        mode = so.stack;
        if (mode != CONC_STACK_HUB && mode != CONC_STACK_OWN && mode != CONC_STACK_COPIED)
            return -EINVAL;
    }
    struct hub *h = hub_get();
    if (!h)
        return -ENOMEM;
    if (!gl_self(h))
        return -EPERM;
    /* A timer for it and for every other coroutine of the hub (grown
     * rarely: the call only when it must). */
    size_t timers = (size_t)h->live + 2;
    if (unlikely(timers > h->capheap) && conc__hub_heap_reserve(h, timers) < 0)
        return -ENOMEM;
    /* The record lives at the top of the coroutine's stack: one page holds
     * a sleeping greenlet, and a finished one's stack is reused warm. */
    conc_greenlet *g;
    conc_coro *c;
    if (mode == CONC_STACK_HUB)
        mode = h->stacks;
    int rc;
    if (unlikely(mode == CONC_STACK_COPIED) && (rc = shared_stack(h, stack_size)) <= 0) {
        if (rc < 0)
            return rc;
        mode = CONC_STACK_OWN;  /* bigger than the shared stack */
    }
    if (unlikely(mode == CONC_STACK_COPIED))
        rc = conc__coro_new_copied(&c, gl_entry, h->shared, name, h->loop, sizeof *g,
                                   (void **)&g);
    else
        rc = conc__coro_new_embedded(&c, gl_entry, stack_size, name, h->loop,
                                     sizeof *g, (void **)&g);
    if (rc < 0)
        return rc;
    busy_enter();
    /* Field by field: a memset of the record costs more than the rest. */
    g->coro = c;
    g->owner = conc__coro_owner(c);
    g->result = NULL;
    g->done = 0;
    g->wait_kind = W_NONE;
    g->is_main = 0;
    g->killed = 0;
    g->cancel_pending = 0;
    st_relaxed(&g->in_table, 0);
    g->copied = mode == CONC_STACK_COPIED;
    g->wake_rc = 0;
    g->timer_rc = 0;
    g->aprev = NULL;
    g->deadline = 0;
    g->tprev = g->tnext = NULL;
    g->joiners = NULL;
    g->joined.word = 0;
    g->jnext = NULL;
    g->jpprev = NULL;
    g->word = NULL;
    g->wprev = g->wnext = NULL;
    g->remote_next = NULL;
    g->events = 0;
    g->prlen = 0;
    g->staged = 0;
    g->ntimeouts = 0;
    g->timeouts = NULL;
    gl_init(g, h);
    g->fn = fn;
    g->arg = arg;
    g->refs = 2;                /* the handle, and running */
    g->state = G_NEW;
    g->anext = h->all;
    if (h->all)
        h->all->aprev = g;
    h->all = g;
    __atomic_store_n(&h->live, h->live + 1, __ATOMIC_RELAXED);
    enqueue(h, g);
    busy_leave();
    *out = g;
    return 0;
}

/* conc_greenlet_join of a greenlet of the caller's hub by a coroutine it runs: the
 * caller parks in g's list of joiners, which gl_finish wakes (no word
 * table, no lock). */
static inline __attribute__((always_inline)) int join_here(struct hub *h, conc_greenlet *self,
                                                            conc_greenlet *g, int64_t deadline)
{
    for (;;) {
        if (__atomic_load_n(&g->done, __ATOMIC_ACQUIRE) & GL_DONE)
            return 0;
        if (self == g)
            return -EDEADLK;
        if (self->cancel_pending) {
            self->cancel_pending = 0;
            return -ECANCELED;
        }
        int64_t d = eff_deadline(self, deadline);
        if (d != CONC_NO_DEADLINE && d <= conc_now())
            return -ETIMEDOUT;
        busy_enter();
        self->word = &g->done;
        self->jnext = g->joiners;
        if (g->joiners)
            g->joiners->jpprev = &self->jnext;
        self->jpprev = &g->joiners;
        g->joiners = self;
        self->wait_kind = W_JOIN;
        if (!self->is_main)
            h->njoin++;
        if (d != CONC_NO_DEADLINE)
            conc__hub_timer_arm(h, self, d, -ETIMEDOUT);
        int r = park(h, self);
        busy_leave();
        if (r != 0)
            return (__atomic_load_n(&g->done, __ATOMIC_ACQUIRE) & GL_DONE) ? 0 : r;
    }
}

static inline __attribute__((always_inline)) int join_until(conc_greenlet *g, int64_t deadline)
{
    if (!g)
        return -EINVAL;
    struct hub *me = tls_hub;
    if (me && g->hub == me && conc__wait_ops == &hub_ops) {
        conc_greenlet *self = gl_self(me);
        if (self)
            return join_here(me, self, g, deadline);
    }
    /* From outside g's hub: park on g's spot (see GL_DONE). */
    for (;;) {
        if (__atomic_load_n(&g->done, __ATOMIC_ACQUIRE) & GL_DONE)
            return 0;
        struct hub *h = tls_hub;
        if (h && g->hub == h && gl_self(h) == g)
            return -EDEADLK;
        uint32_t key = conc__park_prepare(&g->joined);
        if (__atomic_load_n(&barrier_state, __ATOMIC_ACQUIRE) == 1
            && syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) != 0)
            __atomic_store_n(&barrier_state, -1, __ATOMIC_SEQ_CST);   /* fence */
        if (__atomic_load_n(&g->done, __ATOMIC_ACQUIRE) & GL_DONE) {
            conc__park_cancel(&g->joined, key);
            return 0;
        }
        int r = conc__park_wait(&g->joined, key, deadline, 0, 0);
        if (r < 0)
            return (__atomic_load_n(&g->done, __ATOMIC_ACQUIRE) & GL_DONE) ? 0 : r;
    }
}

int conc_greenlet_join_until(conc_greenlet *g, int64_t deadline)
{
    return join_until(g, deadline);
}

int conc_greenlet_join(conc_greenlet *g, double timeout)
{
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return (int)conc__timeout_code(poll, join_until(g, deadline));
}

int conc_greenlet_joinall_until(conc_greenlet *const *list, size_t n, int64_t deadline)
{
    if (!list && n)
        return -EINVAL;
    for (size_t i = 0; i < n; i++) {
        if (!list[i])
            continue;
        int rc = join_until(list[i], deadline);
        if (rc)
            return rc;
    }
    return 0;
}

int conc_greenlet_joinall(conc_greenlet *const *list, size_t n, double timeout)
{
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return (int)conc__timeout_code(poll, conc_greenlet_joinall_until(list, n, deadline));
}

int conc_greenlet_kill(conc_greenlet *g)
{
    if (!g)
        return -EINVAL;
    struct hub *h = tls_hub;
    if (!h || g->hub != h)
        return -EPERM;
    busy_enter();
    switch (g->state) {
    case G_DEAD:
        break;
    case G_NEW:
        g->killed = 1;
        break;
    case G_PARKED:
        interrupt(h, g, -ECANCELED);
        break;
    default:                    /* running (itself) or ready */
        g->cancel_pending = 1;
        break;
    }
    busy_leave();
    return 0;
}

bool conc_greenlet_dead(const conc_greenlet *g)
{
    return g && (__atomic_load_n(&g->done, __ATOMIC_ACQUIRE) & GL_DONE);
}

int conc_greenlet_result(const conc_greenlet *g, void **out)
{
    if (!g || !out)
        return -EINVAL;
    if (!(__atomic_load_n(&g->done, __ATOMIC_ACQUIRE) & GL_DONE))
        return -EBUSY;
    *out = g->result;
    return g->killed ? -ECANCELED : 0;
}

const char *conc_greenlet_name(const conc_greenlet *g)
{
    return g ? gl_name(g) : "";
}

conc_greenlet *conc_greenlet_current(void)
{
    struct hub *h = tls_hub;
    if (!h)
        return NULL;
    conc_greenlet *g = gl_self(h);
    return g && !g->is_main ? g : NULL;
}

void conc_greenlet_free(conc_greenlet *g)
{
    if (!g)
        return;
    struct hub *h = tls_hub;
    if (h && h->dead == g) {    /* both references are ours: no atomics */
        h->dead = NULL;
        conc_coro_free(g->coro);
        return;
    }
    gl_unref(g);
}

int conc_hub_timeout_push_until(int64_t deadline)
{
    struct hub *h = hub_get();
    if (!h)
        return -ENOMEM;
    conc_greenlet *g = gl_self(h);
    if (!g)
        return -EPERM;
    if (g->ntimeouts == CONC_TIMEOUT_DEPTH)
        return -EOVERFLOW;
    if (unlikely(!g->timeouts)) {
        g->timeouts = malloc(CONC_TIMEOUT_DEPTH * sizeof *g->timeouts);
        if (!g->timeouts)
            return -ENOMEM;
    }
    int64_t d = eff_deadline(g, deadline);
    g->timeouts[g->ntimeouts++] = d;
    return 0;
}

int conc_hub_timeout_push(double seconds)
{
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(seconds, &deadline, &poll))
        return -EINVAL;
    return conc_hub_timeout_push_until(deadline);
}

int conc_hub_timeout_pop(void)
{
    struct hub *h = tls_hub;
    conc_greenlet *g = h ? gl_self(h) : NULL;
    if (!g || !g->ntimeouts)
        return -EINVAL;
    g->ntimeouts--;
    return 0;
}

int conc_hub_run(void)
{
    struct hub *h = tls_hub;
    if (!h)
        return 0;
    if (gl_self(h) != &h->main)
        return -EPERM;
    /* Only this hub's own coroutines finish greenlets and wait here, so
     * the flag needs no atomics: it spares every finish a wake call. */
    int r = 0;
    h->live_waited = true;
    for (;;) {
        uint32_t n = __atomic_load_n(&h->live, __ATOMIC_ACQUIRE);
        if (!n)
            break;
        r = conc__wait(&h->live, n, CONC_NO_DEADLINE, 0);
        if (r == -EDEADLK || r == -ECANCELED || r == -ETIMEDOUT)
            break;
        r = 0;
    }
    h->live_waited = false;
    return r;
}

/* One line of conc_hub_dump; 0 or -errno of the write. */
static int dump_one(int fd, conc_greenlet *g, int64_t now)
{
    char what[64];
    switch (g->state) {
    case G_NEW:
        snprintf(what, sizeof what, "new");
        break;
    case G_READY:
        snprintf(what, sizeof what, "ready");
        break;
    case G_RUNNING:
        snprintf(what, sizeof what, "running");
        break;
    case G_DEAD:
        snprintf(what, sizeof what, "dead");
        break;
    default:
        if (g->wait_kind == W_WORD || g->wait_kind == W_JOIN)
            snprintf(what, sizeof what, "word %p", (void *)g->word);
        else if (g->wait_kind == W_FD && g->fd < 0)
            snprintf(what, sizeof what, "fds");         /* conc__wait_fds: several */
        else if (g->wait_kind == W_FD)
            snprintf(what, sizeof what, "fd %d events 0x%x", g->fd, (unsigned)g->events);
        else
            snprintf(what, sizeof what, "sleep");
        break;
    }
    char until[48] = "";
    if (g->heap_idx != NO_INDEX)
        snprintf(until, sizeof until, " until +%.6fs", (double)(g->deadline - now) / 1e9);
    if (dprintf(fd, "%-16s %s%s\n", gl_name(g), what, until) < 0)
        return errno ? -errno : -EIO;
    return 0;
}

int conc_hub_dump(int fd)
{
    if (fd < 0)
        return -EBADF;
    struct hub *h = tls_hub;
    if (!h)
        return 0;
    int64_t now = conc_now();
    int n = 1;
    int rc = dump_one(fd, &h->main, now);
    for (conc_greenlet *g = h->all; g && rc == 0; g = g->anext, n++)
        rc = dump_one(fd, g, now);
    return rc ? rc : n;
}

int conc_fd_wait_until(int fd, short events, int64_t deadline)
{
    if (fd < 0)
        return -EBADF;
    return conc__wait_fd(fd, events, deadline);
}

int conc_fd_wait(int fd, short events, double timeout)
{
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return (int)conc__timeout_code(poll, conc_fd_wait_until(fd, events, deadline));
}
