/*
 * test_mpqueue.c - conc/mpqueue.h, queues between processes (conc_mpqueue):
 * byte messages of every size in FIFO order (wrapping the ring end),
 * -EMSGSIZE without loss, maxsize and ring-bytes limits, bad arguments,
 * JoinableQueue task_done/join across processes, shutdown (plain and
 * immediate) releasing waiters of every process, many producers and
 * consumers (processes and threads), forkserver/spawn children attaching by
 * descriptors, SIGKILLed producers and consumers (nothing corrupt, nothing
 * twice, nothing hangs), readiness descriptors and conc_wait, coroutines
 * parked in a get, and no descriptor, zombie or /dev/shm leaks.
 *
 * Criterion runs every test in its own process.  Child processes and worker
 * threads never assert: they report through exit codes, return values and a
 * shared record of what they saw, and the test's main thread checks it.
 * Timeouts are hang guards (or "still waiting after a while" checks), never
 * speed budgets; the kill rounds stop early when a slow (sanitizer) build
 * would otherwise run into the test's timeout.  Every test has the same
 * .timeout (Criterion 2.4 misbehaves when one binary mixes timeouts).
 */
#include <criterion/criterion.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
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
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conc.h"
#include "support/fd_count.h"

#include "support/fork_sanitizers.h"
#include "support/task_state.h"

#define NS 1000000000LL
/* Hang guard for the waits of the test and of its children (seconds). */
#define GUARD 20.0

static const double bad_timeouts[] = { -2.0, -0.5, -1e-9, -1.0000001, -INFINITY, NAN };
#define N_BAD_TIMEOUTS (sizeof bad_timeouts / sizeof bad_timeouts[0])

/* ============================================================ helpers */

static conc_mpqueue *mkq(conc_mpqueue_kind kind, size_t maxsize, size_t capacity, size_t max_msg)
{
    conc_mpqueue *q = NULL;
    conc_mpqueue_opts o = { .kind = kind, .maxsize = maxsize, .capacity = capacity,
                            .max_msg = max_msg };
    int r = conc_mpqueue_new(&q, &o);
    cr_assert_eq(r, 0, "conc_mpqueue_new: %s", conc_errname(r));
    cr_assert_not_null(q);
    return q;
}

static unsigned char pat(size_t i, uint32_t seed)
{
    return (unsigned char)(i * 131u + seed * 7u + (i >> 9) + (seed >> 5) * 3u);
}

static void fill(unsigned char *p, size_t n, uint32_t seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = pat(i, seed);
}

static bool check(const unsigned char *p, size_t n, uint32_t seed)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != pat(i, seed))
            return false;
    return true;
}

static unsigned char *xmalloc(size_t n)
{
    unsigned char *p = malloc(n ? n : 1);
    cr_assert_not_null(p);
    return p;
}

static bool fd_open(int fd)
{
    return fcntl(fd, F_GETFD) >= 0;
}

/* Readable within ms (0: right now)? */
static bool readable(int fd, int ms)
{
    struct pollfd pfd = { .fd = fd, .events = POLLIN };
    int r;
    while ((r = poll(&pfd, 1, ms)) < 0 && errno == EINTR)
        ;
    return r == 1 && (pfd.revents & POLLIN);
}

/* A raw fork() child running body(arg); it never returns into the test. */
/* The test's thread, for children and helper threads that must act only once
 * it sleeps in its wait (set by fork_child, or by the test). */
static pid_t test_tid;

/* True once the test's thread (in process pid) sleeps; false after GUARD. */
static bool test_thread_blocked(pid_t pid)
{
    return await_task_blocked(pid, test_tid, GUARD);
}

static pid_t fork_child(int (*body)(void *), void *arg)
{
    test_tid = gettid();
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0)
        _exit(body(arg));
    return pid;
}

/* Reaps a raw child with a hang guard (killed when it does not end); returns
 * its exit code, or minus the signal that killed it. */
static int reap(pid_t pid)
{
    int st = 0;
    int64_t end = conc_now() + (int64_t)(GUARD * NS);
    for (;;) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            break;
        cr_assert(r == 0 || errno == EINTR, "waitpid: %s", strerror(errno));
        if (conc_now() > end) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            cr_assert_fail("child %d did not end", (int)pid);
        }
        usleep(200);
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st);
}

/* True when pid is no longer our child: reaped, not a zombie. */
static bool reaped(pid_t pid)
{
    siginfo_t si;
    memset(&si, 0, sizeof si);
    return waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) == -1 && errno == ECHILD;
}

/* Starts fn(arg) in a child with the given method and descriptors. */
static conc_process *start_proc(conc_process_fn fn, const void *arg, size_t len,
                                conc_start_method method, const int *fds, size_t nfds)
{
    conc_process_opts o = { .method = method, .pass_fds = fds, .npass_fds = nfds };
    conc_process *p = NULL;
    int r = conc_process_new(&p, fn, arg, len, &o);
    cr_assert_eq(r, 0, "conc_process_new: %s", conc_errname(r));
    r = conc_process_start(p);
    cr_assert_eq(r, 0, "conc_process_start: %s", conc_errname(r));
    return p;
}

/* Joins a conc child with a hang guard and returns its exit code; checks
 * it left no zombie, then frees the handle. */
static int finish_proc(conc_process *p)
{
    pid_t pid = conc_process_pid(p);
    int r = conc_process_join(p, GUARD);
    if (r == -ETIMEDOUT) {
        conc_process_kill(p);
        conc_process_join(p, CONC_FOREVER);
    }
    cr_assert_eq(r, 0, "join pid %d: %s", (int)conc_process_pid(p), conc_errname(r));
    int code = 12345;
    cr_assert_eq(conc_process_exitcode(p, &code), 0);
    conc_process_free(p);
    cr_assert(reaped(pid), "child %d left a zombie", (int)pid);
    return code;
}

/* A small pseudo-random generator for the kill instants (seeded per test,
 * the seed is logged so a failure can be replayed). */
static uint64_t rng_state;

static void rng_seed(void)
{
    rng_state = (uint64_t)conc_now() ^ ((uint64_t)getpid() << 32) ^ 0x9e3779b97f4a7c15ull;
    if (rng_state == 0)
        rng_state = 1;
    cr_log_info("random seed %llu", (unsigned long long)rng_state);
}

static uint32_t rnd(uint32_t n)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    rng_state = x;
    return n ? (uint32_t)(x % n) : 0;
}

/* ------------------------------------------ self-checking records
 *
 * What the process tests send: a header naming the producer and the
 * message's sequence number, a payload that follows from them, and a
 * checksum over both.  Whoever receives one accounts for it in a shared
 * table (seen counts, who took it), so duplicates, losses, reordering and
 * corruption all show. */

#define REC_MAGIC 0x636d5152u
#define RMAXP 512           /* producer ids */
#define RMAXSEQ 4096        /* messages per producer */
#define PROBE_ID (RMAXP - 1)
#define REC_MAX 1024        /* largest record */

struct rec {
    uint32_t magic;
    uint32_t prod;
    uint32_t seq;
    uint32_t len;
    uint64_t sum;
};

/* spread: payload lengths vary over 0..spread-1 (0: 700) */
static size_t rec_len(uint32_t prod, uint32_t seq, uint32_t spread)
{
    return sizeof(struct rec) + (prod * 37u + seq * 101u) % (spread ? spread : 700u);
}

static uint64_t fnv(uint64_t h, const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static uint64_t rec_sum(const unsigned char *buf, size_t n)
{
    uint64_t h = fnv(0xcbf29ce484222325ull, buf, 16);
    return fnv(h, buf + sizeof(struct rec), n - sizeof(struct rec));
}

static size_t rec_make(unsigned char *buf, uint32_t prod, uint32_t seq, uint32_t spread)
{
    size_t n = rec_len(prod, seq, spread);
    struct rec h = { REC_MAGIC, prod, seq, (uint32_t)n, 0 };
    memcpy(buf, &h, sizeof h);
    fill(buf + sizeof h, n - sizeof h, prod * 65536u + seq);
    h.sum = rec_sum(buf, n);
    memcpy(buf, &h, sizeof h);
    return n;
}

static bool rec_check(const unsigned char *buf, ssize_t n, struct rec *out)
{
    struct rec h;
    if (n < (ssize_t)sizeof h)
        return false;
    memcpy(&h, buf, sizeof h);
    if (h.magic != REC_MAGIC || h.len != (uint32_t)n || h.prod >= RMAXP || h.seq >= RMAXSEQ ||
        h.sum != rec_sum(buf, (size_t)n) ||
        !check(buf + sizeof h, (size_t)n - sizeof h, h.prod * 65536u + h.seq))
        return false;
    *out = h;
    return true;
}

/* Shared (MAP_SHARED) between the test and its children. */
struct rshared {
    _Atomic uint32_t attempt[RMAXP];    /* producer p is putting seq attempt-1 */
    _Atomic uint32_t done[RMAXP];       /* producer p's puts that returned 0 */
    _Atomic uint32_t corrupt;           /* messages that failed their check */
    _Atomic uint32_t disorder;          /* a consumer saw a producer go back */
    _Atomic uint32_t task_done;         /* JoinableQueue: task_done calls */
    _Atomic uint32_t bad;               /* unexpected return values */
    _Atomic uint8_t by[RMAXP][RMAXSEQ];   /* who accounted for it (1, 2, 3...) */
    _Atomic uint16_t seen[RMAXP][RMAXSEQ];
};

static struct rshared *rshared_new(void)
{
    struct rshared *s = mmap(NULL, sizeof *s, PROT_READ | PROT_WRITE,
                             MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(s, MAP_FAILED);
    return s;
}

static void rshared_free(struct rshared *s)
{
    munmap(s, sizeof *s);
}

/* A consumer's view: the last sequence number it saw of each producer. */
struct view {
    int32_t last[RMAXP];
};

static void view_init(struct view *v)
{
    for (int i = 0; i < RMAXP; i++)
        v->last[i] = -1;
}

/* Accounts for one received message; false when it is corrupt. */
static bool account(struct rshared *s, struct view *v, const unsigned char *buf, ssize_t n,
                    uint8_t who)
{
    struct rec h;
    if (!rec_check(buf, n, &h)) {
        atomic_fetch_add(&s->corrupt, 1);
        return false;
    }
    atomic_store(&s->by[h.prod][h.seq], who);       /* before seen: see killed_consumers */
    atomic_fetch_add(&s->seen[h.prod][h.seq], 1);
    if ((int32_t)h.seq <= v->last[h.prod])
        atomic_fetch_add(&s->disorder, 1);
    v->last[h.prod] = (int32_t)h.seq;
    return true;
}

/* A producer: puts records (prod, 0..n-1), keeping attempt/done up to date;
 * then waits (to be killed) when linger is set.  Exit code 0, or 3 when a
 * put failed. */
struct pctx {
    conc_mpqueue *q;
    struct rshared *s;
    uint32_t prod;
    uint32_t n;
    uint32_t spread;    /* see rec_len */
    int linger;
};

static int producer_body(void *arg)
{
    struct pctx *c = arg;
    unsigned char buf[REC_MAX];
    for (uint32_t seq = 0; seq < c->n; seq++) {
        size_t len = rec_make(buf, c->prod, seq, c->spread);
        atomic_store(&c->s->attempt[c->prod], seq + 1);
        int r = conc_mpqueue_put(c->q, buf, len, GUARD);
        if (r != 0) {
            atomic_fetch_add(&c->s->bad, 1);
            return 3;
        }
        atomic_store(&c->s->done[c->prod], seq + 1);
    }
    if (c->linger)
        poll(NULL, 0, (int)(GUARD * 1000));
    return 0;
}

/* A consumer: gets and accounts until the queue is shut down (0), or a get
 * fails otherwise (4) or a message is corrupt (5). */
struct cctx {
    conc_mpqueue *q;
    struct rshared *s;
    uint8_t who;
    int task_done;      /* JoinableQueue: call task_done for each message */
};

static int consumer_body(void *arg)
{
    struct cctx *c = arg;
    unsigned char buf[REC_MAX];
    struct view *v = malloc(sizeof *v);
    if (!v)
        return 6;
    view_init(v);
    int code = 0;
    for (;;) {
        ssize_t n = conc_mpqueue_get(c->q, buf, sizeof buf, GUARD);
        if (n == -EPIPE)
            break;
        if (n < 0) {
            atomic_fetch_add(&c->s->bad, 1);
            code = 4;
            break;
        }
        if (!account(c->s, v, buf, n, c->who))
            code = 5;
        if (c->task_done) {
            if ((atomic_fetch_add(&c->s->task_done, 1) & 63) == 0)
                usleep(200);            /* let the joiner wait a little */
            if (conc_mpqueue_task_done(c->q) != 0) {
                atomic_fetch_add(&c->s->bad, 1);
                code = 7;
            }
        }
    }
    free(v);
    return code;
}

static int producer_proc(const void *arg, size_t len)
{
    if (len != sizeof(struct pctx))
        return 99;
    struct pctx c = *(const struct pctx *)arg;
    return producer_body(&c);
}

static int consumer_proc(const void *arg, size_t len)
{
    if (len != sizeof(struct cctx))
        return 99;
    struct cctx c = *(const struct cctx *)arg;
    return consumer_body(&c);
}

static void *producer_thread(void *arg)
{
    return (void *)(intptr_t)producer_body(arg);
}

static void *consumer_thread(void *arg)
{
    return (void *)(intptr_t)consumer_body(arg);
}

/* ===================================================== creation, options */

Test(mpqueue, new_and_settings, .timeout = 30)
{
    conc_mpqueue *q = NULL;
    cr_assert_eq(conc_mpqueue_new(&q, NULL), 0);
    cr_assert_eq(conc_mpqueue_capacity(q), CONC_MPQUEUE_CAPACITY_DEFAULT);
    cr_assert_eq(conc_mpqueue_max_msg(q), CONC_MPQUEUE_MSG_DEFAULT);
    cr_assert_eq(conc_mpqueue_maxsize(q), 0);
    cr_assert_eq(conc_mpqueue_qsize(q), 0);
    cr_assert(conc_mpqueue_empty(q));
    cr_assert_not(conc_mpqueue_full(q));
    cr_assert_not(conc_mpqueue_is_shutdown(q));
    cr_assert_eq(conc_mpqueue_unfinished(q), 0);
    cr_assert_eq(conc_mpqueue_next_size(q), -EAGAIN);
    conc_mpqueue_free(q);
    conc_mpqueue_free(NULL);

    /* capacity rounds up to a power of two, at least 4 KiB */
    q = mkq(CONC_MPQUEUE_QUEUE, 0, 5000, 0);
    cr_assert_eq(conc_mpqueue_capacity(q), 8192);
    cr_assert_eq(conc_mpqueue_max_msg(q), 8192 / 4);
    conc_mpqueue_free(q);
    q = mkq(CONC_MPQUEUE_SIMPLE, 0, 1, 0);
    cr_assert_eq(conc_mpqueue_capacity(q), 4096);
    cr_assert_eq(conc_mpqueue_max_msg(q), 1024);
    conc_mpqueue_free(q);
    q = mkq(CONC_MPQUEUE_JOINABLE, 7, 65536, 0);
    cr_assert_eq(conc_mpqueue_capacity(q), 65536);
    cr_assert_eq(conc_mpqueue_maxsize(q), 7);
    conc_mpqueue_free(q);

    /* a max_msg needs a ring of two of them: a capacity given too small is
     * refused, a default one grows */
    cr_assert_eq(conc_mpqueue_new(&q, &(conc_mpqueue_opts){ .capacity = 4096, .max_msg = 4000 }),
                 -EINVAL);
    q = mkq(CONC_MPQUEUE_QUEUE, 0, 8192, 4000);
    size_t cap = conc_mpqueue_capacity(q);
    cr_assert_eq(conc_mpqueue_max_msg(q), 4000);
    cr_assert_eq(cap, 8192);
    conc_mpqueue_free(q);
    q = mkq(CONC_MPQUEUE_QUEUE, 0, 0, 4000);
    cr_assert_eq(conc_mpqueue_capacity(q), CONC_MPQUEUE_CAPACITY_DEFAULT);
    cr_assert_eq(conc_mpqueue_max_msg(q), 4000);
    conc_mpqueue_free(q);
    q = mkq(CONC_MPQUEUE_QUEUE, 0, 0, 3u << 20);
    cap = conc_mpqueue_capacity(q);
    cr_assert_eq(conc_mpqueue_max_msg(q), 3u << 20);
    cr_assert_geq(cap, 6u << 20);
    cr_assert_eq(cap & (cap - 1), 0);
    /* the largest message fits, twice */
    unsigned char *big = xmalloc(3u << 20);
    fill(big, 3u << 20, 9);
    cr_assert_eq(conc_mpqueue_put(q, big, 3u << 20, 0), 0);
    cr_assert_eq(conc_mpqueue_put(q, big, 3u << 20, 0), 0);
    cr_assert_eq(conc_mpqueue_qsize(q), 2);
    for (int i = 0; i < 2; i++) {
        memset(big, 0, 3u << 20);
        cr_assert_eq(conc_mpqueue_get(q, big, 3u << 20, 0), (ssize_t)(3u << 20));
        cr_assert(check(big, 3u << 20, 9));
    }
    free(big);
    conc_mpqueue_free(q);
}

Test(mpqueue, bad_arguments, .timeout = 30)
{
    conc_mpqueue *q = NULL;
    cr_assert_eq(conc_mpqueue_new(NULL, NULL), -EINVAL);
    cr_assert_eq(conc_mpqueue_new(&q, &(conc_mpqueue_opts){ .kind = (conc_mpqueue_kind)3 }),
                 -EINVAL);
    cr_assert_eq(conc_mpqueue_new(&q, &(conc_mpqueue_opts){ .kind = (conc_mpqueue_kind)-1 }),
                 -EINVAL);
    cr_assert_eq(conc_mpqueue_new(&q, &(conc_mpqueue_opts){ .kind = CONC_MPQUEUE_SIMPLE,
                                                            .maxsize = 1 }), -EINVAL);
    cr_assert_eq(conc_mpqueue_new(&q, &(conc_mpqueue_opts){
                     .capacity = CONC_MPQUEUE_CAPACITY_MAX + 1 }), -EINVAL);
    cr_assert_eq(conc_mpqueue_new(&q, &(conc_mpqueue_opts){ .capacity = SIZE_MAX }), -EINVAL);
    cr_assert_eq(conc_mpqueue_new(&q, &(conc_mpqueue_opts){
                     .max_msg = CONC_MPQUEUE_CAPACITY_MAX }), -EINVAL);
    cr_assert_eq(conc_mpqueue_new(&q, &(conc_mpqueue_opts){ .max_msg = SIZE_MAX }), -EINVAL);
    cr_assert_null(q, "nothing stored on error");

    q = mkq(CONC_MPQUEUE_QUEUE, 0, 4096, 0);
    conc_mpqueue *s = mkq(CONC_MPQUEUE_SIMPLE, 0, 4096, 0);
    unsigned char buf[64];
    void *p = (void *)buf;
    size_t len = 77;
    int fds[CONC_MPQUEUE_NFDS];

    cr_assert_eq(conc_mpqueue_put(NULL, "x", 1, 0), -EINVAL);
    cr_assert_eq(conc_mpqueue_put_until(NULL, "x", 1, CONC_NO_DEADLINE), -EINVAL);
    cr_assert_eq(conc_mpqueue_put(q, NULL, 5, 0), -EINVAL);
    cr_assert_eq(conc_mpqueue_put_until(q, NULL, 5, CONC_NO_DEADLINE), -EINVAL);
    cr_assert_eq(conc_mpqueue_get(NULL, buf, sizeof buf, 0), -EINVAL);
    cr_assert_eq(conc_mpqueue_get_until(NULL, buf, sizeof buf, 0), -EINVAL);
    cr_assert_eq(conc_mpqueue_get(q, NULL, 5, 0), -EINVAL);
    cr_assert_eq(conc_mpqueue_get_alloc(NULL, &p, &len, 0), -EINVAL);
    cr_assert_eq(conc_mpqueue_get_alloc(q, NULL, &len, 0), -EINVAL);
    cr_assert_eq(conc_mpqueue_get_alloc(q, &p, NULL, 0), -EINVAL);
    cr_assert_eq(conc_mpqueue_get_alloc_until(q, NULL, &len, 0), -EINVAL);
    cr_assert_eq(conc_mpqueue_next_size(NULL), -EINVAL);
    cr_assert_eq(conc_mpqueue_task_done(NULL), -EINVAL);
    cr_assert_eq(conc_mpqueue_task_done(q), -EINVAL, "not joinable");
    cr_assert_eq(conc_mpqueue_task_done(s), -EINVAL, "not joinable");
    cr_assert_eq(conc_mpqueue_join(NULL, 0), -EINVAL);
    cr_assert_eq(conc_mpqueue_join(q, 0), -EINVAL);
    cr_assert_eq(conc_mpqueue_join_until(s, 0), -EINVAL);
    cr_assert_eq(conc_mpqueue_shutdown(NULL, false), -EINVAL);
    cr_assert_eq(conc_mpqueue_fds(NULL, fds), -EINVAL);
    cr_assert_eq(conc_mpqueue_fds(q, NULL), -EINVAL);
    cr_assert_eq(conc_mpqueue_attach(NULL, fds), -EINVAL);
    cr_assert_eq(conc_mpqueue_attach(&q, NULL), -EINVAL);
    cr_assert_eq(conc_mpqueue_fd(NULL, POLLIN), -EINVAL);
    cr_assert_eq(conc_mpqueue_fd(q, 0), -EINVAL);
    cr_assert_eq(conc_mpqueue_fd(q, POLLPRI), -EINVAL);
    cr_assert_eq(conc_mpqueue_fd(q, POLLIN | POLLOUT), -EINVAL);
    cr_assert_eq(conc_mpqueue_qsize(NULL), 0);
    cr_assert(conc_mpqueue_empty(NULL));
    cr_assert_not(conc_mpqueue_full(NULL));
    cr_assert_eq(conc_mpqueue_maxsize(NULL), 0);
    cr_assert_eq(conc_mpqueue_max_msg(NULL), 0);
    cr_assert_eq(conc_mpqueue_capacity(NULL), 0);
    cr_assert_eq(conc_mpqueue_unfinished(NULL), 0);
    cr_assert_eq(conc_mpqueue_unfinished(q), 0);
    cr_assert_not(conc_mpqueue_is_shutdown(NULL));

    for (size_t i = 0; i < N_BAD_TIMEOUTS; i++) {
        double t = bad_timeouts[i];
        cr_assert_eq(conc_mpqueue_put(q, "x", 1, t), -EINVAL, "put timeout %g", t);
        cr_assert_eq(conc_mpqueue_get(q, buf, sizeof buf, t), -EINVAL, "get timeout %g", t);
        cr_assert_eq(conc_mpqueue_get_alloc(q, &p, &len, t), -EINVAL, "get_alloc timeout %g", t);
    }
    cr_assert_eq(conc_mpqueue_qsize(q), 0, "a rejected put added something");
    /* a bad timeout is refused even when the call could succeed at once */
    cr_assert_eq(conc_mpqueue_put(q, "abc", 3, 0), 0);
    for (size_t i = 0; i < N_BAD_TIMEOUTS; i++) {
        cr_assert_eq(conc_mpqueue_get(q, buf, sizeof buf, bad_timeouts[i]), -EINVAL);
        cr_assert_eq(conc_mpqueue_get_alloc(q, &p, &len, bad_timeouts[i]), -EINVAL);
        cr_assert_eq(conc_mpqueue_put(q, "x", 1, bad_timeouts[i]), -EINVAL);
    }
    cr_assert_eq(conc_mpqueue_qsize(q), 1);
    cr_assert_eq(p, (void *)buf, "*out written on failure");
    cr_assert_eq(len, 77, "*len written on failure");
    cr_assert_eq(conc_mpqueue_get(q, buf, sizeof buf, 0), 3);
    cr_assert_eq(memcmp(buf, "abc", 3), 0);

    /* NULL data is fine for an empty message, and a NULL buffer of 0 bytes
     * takes one (a longer one does not fit) */
    cr_assert_eq(conc_mpqueue_put(q, NULL, 0, 0), 0);
    cr_assert_eq(conc_mpqueue_put(q, "yz", 2, 0), 0);
    cr_assert_eq(conc_mpqueue_get(q, NULL, 0, 0), 0);
    cr_assert_eq(conc_mpqueue_get(q, NULL, 0, 0), -EMSGSIZE);
    cr_assert_eq(conc_mpqueue_qsize(q), 1);
    cr_assert_eq(conc_mpqueue_get(q, buf, 2, 0), 2);
    cr_assert_eq(memcmp(buf, "yz", 2), 0);

    /* deadlines: a passed one fails unless the call succeeds at once */
    cr_assert_eq(conc_mpqueue_get_until(q, buf, sizeof buf, conc_now() - 1), -ETIMEDOUT);
    cr_assert_eq(conc_mpqueue_put_until(q, "d", 1, conc_now() - 1), 0);
    cr_assert_eq(conc_mpqueue_get_until(q, buf, sizeof buf, conc_now() - 1), 1);
    cr_assert_eq(conc_mpqueue_get_until(q, buf, sizeof buf, conc_now() + NS / 50), -ETIMEDOUT);
    conc_mpqueue_free(q);
    conc_mpqueue_free(s);
}

/* ====================================================== order and sizes */

static const size_t msg_sizes[] = { 0, 1, 15, 16, 17, 64, 4000, 31, 33, 1000, 2047 };
#define N_MSG_SIZES (sizeof msg_sizes / sizeof msg_sizes[0])

/* Puts and gets messages of every size through q, keeping up to `depth`
 * queued, for `rounds` rounds: the positions wrap the ring end many times. */
static void churn(conc_mpqueue *q, int rounds, size_t depth)
{
    size_t max = conc_mpqueue_max_msg(q);
    unsigned char *in = xmalloc(max), *out = xmalloc(max + 1);
    uint32_t put_seq = 0, get_seq = 0;
    size_t queued = 0;
#define SIZE_OF(seq) (((seq) % (N_MSG_SIZES + 1)) == N_MSG_SIZES \
                      ? max : (msg_sizes[(seq) % (N_MSG_SIZES + 1)] > max \
                               ? max - ((seq) % 7) : msg_sizes[(seq) % (N_MSG_SIZES + 1)]))
    for (int r = 0; r < rounds; r++) {
        while (queued < depth) {
            size_t n = SIZE_OF(put_seq);
            fill(in, n, put_seq);
            int rc = conc_mpqueue_put(q, in, n, 0);
            if (rc == -EAGAIN)
                break;                  /* the ring is full in bytes */
            cr_assert_eq(rc, 0, "put %u (%zu bytes): %s", put_seq, n, conc_errname(rc));
            put_seq++;
            queued++;
        }
        cr_assert_gt(queued, 0, "nothing fits in an empty queue");
        cr_assert_eq(conc_mpqueue_qsize(q), queued);
        /* take all but one, so the next round starts mid-ring */
        size_t take = queued > 1 ? queued - 1 : 1;
        for (size_t i = 0; i < take; i++) {
            size_t n = SIZE_OF(get_seq);
            cr_assert_eq(conc_mpqueue_next_size(q), (ssize_t)n);
            memset(out, 0xee, max + 1);
            ssize_t got = conc_mpqueue_get(q, out, max + 1, 0);
            cr_assert_eq(got, (ssize_t)n, "message %u: got %zd bytes, want %zu", get_seq, got, n);
            cr_assert(check(out, n, get_seq), "message %u (%zu bytes) differs", get_seq, n);
            cr_assert_eq(out[n], 0xee, "wrote past the message");
            get_seq++;
            queued--;
        }
    }
    while (queued > 0) {
        size_t n = SIZE_OF(get_seq);
        ssize_t got = conc_mpqueue_get(q, out, max + 1, 0);
        cr_assert_eq(got, (ssize_t)n);
        cr_assert(check(out, n, get_seq));
        get_seq++;
        queued--;
    }
#undef SIZE_OF
    cr_assert_eq(get_seq, put_seq);
    cr_assert_eq(conc_mpqueue_get(q, out, max, 0), -EAGAIN);
    cr_assert(conc_mpqueue_empty(q));
    free(in);
    free(out);
}

Test(mpqueue, fifo_every_size_wrapping, .timeout = 30)
{
    /* max_msg 4000 in an 8 KiB ring: every few messages wrap */
    conc_mpqueue *q = mkq(CONC_MPQUEUE_QUEUE, 0, 8192, 4000);
    churn(q, 2000, 3);
    churn(q, 500, 100);
    conc_mpqueue_free(q);
    /* the smallest ring with its default max_msg (1 KiB) */
    q = mkq(CONC_MPQUEUE_SIMPLE, 0, 4096, 0);
    churn(q, 3000, 2);
    churn(q, 300, 1000);
    conc_mpqueue_free(q);
    /* a count-bounded joinable queue */
    q = mkq(CONC_MPQUEUE_JOINABLE, 5, 16384, 0);
    churn(q, 1000, 5);
    cr_assert_gt(conc_mpqueue_unfinished(q), 0);
    conc_mpqueue_free(q);
}

Test(mpqueue, fifo_many_messages, .timeout = 30)
{
    conc_mpqueue *q = mkq(CONC_MPQUEUE_QUEUE, 0, 0, 0);
    unsigned char buf[REC_MAX];
    uint32_t n = 0;
    /* fill the default ring with records until it is full in bytes */
    for (;;) {
        size_t len = rec_make(buf, 1, n % RMAXSEQ, 0);
        int r = conc_mpqueue_put(q, buf, len, 0);
        if (r == -EAGAIN)
            break;
        cr_assert_eq(r, 0);
        n++;
    }
    cr_assert_gt(n, 1000);
    cr_assert_eq(conc_mpqueue_qsize(q), n);
    for (uint32_t i = 0; i < n; i++) {
        struct rec h;
        ssize_t got = conc_mpqueue_get(q, buf, sizeof buf, 0);
        cr_assert(rec_check(buf, got, &h), "message %u corrupt", i);
        cr_assert_eq(h.seq, i % RMAXSEQ, "message %u out of order", i);
    }
    cr_assert_eq(conc_mpqueue_get(q, buf, sizeof buf, 0), -EAGAIN);
    conc_mpqueue_free(q);
}

/* ============================================================ EMSGSIZE */

Test(mpqueue, emsgsize_and_get_alloc, .timeout = 30)
{
    conc_mpqueue *q = mkq(CONC_MPQUEUE_QUEUE, 0, 16384, 3000);
    size_t max = conc_mpqueue_max_msg(q);
    cr_assert_eq(max, 3000);
    unsigned char *in = xmalloc(max + 100), *out = xmalloc(max + 100);

    fill(in, 10, 1);
    cr_assert_eq(conc_mpqueue_put(q, in, 10, 0), 0);
    fill(in, 20, 2);
    cr_assert_eq(conc_mpqueue_put(q, in, 20, 0), 0);
    /* over max_msg: refused, nothing added, blocking or not */
    cr_assert_eq(conc_mpqueue_put(q, in, max + 1, 0), -EMSGSIZE);
    cr_assert_eq(conc_mpqueue_put(q, in, max + 1, CONC_FOREVER), -EMSGSIZE);
    cr_assert_eq(conc_mpqueue_put(q, in, SIZE_MAX, 0), -EMSGSIZE);
    cr_assert_eq(conc_mpqueue_qsize(q), 2);
    fill(in, max, 3);
    cr_assert_eq(conc_mpqueue_put(q, in, max, 0), 0, "exactly max_msg fits");
    cr_assert_eq(conc_mpqueue_qsize(q), 3);

    /* a too small buffer: -EMSGSIZE, the message stays and keeps its place */
    cr_assert_eq(conc_mpqueue_next_size(q), 10);
    cr_assert_eq(conc_mpqueue_get(q, out, 9, 0), -EMSGSIZE);
    cr_assert_eq(conc_mpqueue_get(q, out, 9, CONC_FOREVER), -EMSGSIZE);
    cr_assert_eq(conc_mpqueue_qsize(q), 3);
    cr_assert_eq(conc_mpqueue_next_size(q), 10);
    cr_assert_eq(conc_mpqueue_get(q, out, 10, 0), 10);
    cr_assert(check(out, 10, 1));

    /* get_alloc */
    void *p = NULL;
    size_t len = 0;
    cr_assert_eq(conc_mpqueue_get_alloc(q, &p, &len, 0), 0);
    cr_assert_not_null(p, "get_alloc returned 0 without a buffer");
    cr_assert_eq(len, 20);
    cr_assert(check(p, 20, 2));
    free(p);
    cr_assert_eq(conc_mpqueue_next_size(q), (ssize_t)max);
    cr_assert_eq(conc_mpqueue_get(q, out, max - 1, 0), -EMSGSIZE);
    cr_assert_eq(conc_mpqueue_get_alloc(q, &p, &len, 0), 0);
    cr_assert_not_null(p);
    cr_assert_eq(len, max);
    cr_assert(check(p, max, 3));
    free(p);
    /* an empty message still gives a buffer */
    cr_assert_eq(conc_mpqueue_put(q, in, 0, 0), 0);
    p = NULL;
    len = 99;
    cr_assert_eq(conc_mpqueue_get_alloc(q, &p, &len, 0), 0);
    cr_assert_not_null(p);
    cr_assert_eq(len, 0);
    free(p);
    /* empty queue */
    cr_assert_eq(conc_mpqueue_get_alloc(q, &p, &len, 0), -EAGAIN);
    cr_assert_eq(conc_mpqueue_get_alloc(q, &p, &len, 0.02), -ETIMEDOUT);
    cr_assert_eq(conc_mpqueue_get_alloc_until(q, &p, &len, conc_now() + NS / 50), -ETIMEDOUT);
    cr_assert_eq(conc_mpqueue_next_size(q), -EAGAIN);
    free(in);
    free(out);
    conc_mpqueue_free(q);
}

/* ====================================================== full and empty */

Test(mpqueue, maxsize, .timeout = 30)
{
    conc_mpqueue *q = mkq(CONC_MPQUEUE_QUEUE, 3, 0, 0);
    unsigned char buf[16];
    for (int i = 0; i < 3; i++) {
        cr_assert_not(conc_mpqueue_full(q));
        buf[0] = (unsigned char)i;
        cr_assert_eq(conc_mpqueue_put(q, buf, 1, 0), 0);
    }
    cr_assert(conc_mpqueue_full(q));
    cr_assert_not(conc_mpqueue_empty(q));
    cr_assert_eq(conc_mpqueue_qsize(q), 3);
    cr_assert_eq(conc_mpqueue_put(q, buf, 1, 0), -EAGAIN);
    cr_assert_eq(conc_mpqueue_put(q, buf, 0, 0.02), -ETIMEDOUT);
    cr_assert_eq(conc_mpqueue_put_until(q, buf, 1, conc_now() + NS / 50), -ETIMEDOUT);
    cr_assert_eq(conc_mpqueue_put_until(q, buf, 1, conc_now() - 1), -ETIMEDOUT);
    cr_assert_eq(conc_mpqueue_qsize(q), 3);
    cr_assert_eq(conc_mpqueue_get(q, buf, sizeof buf, 0), 1);
    cr_assert_eq(buf[0], 0);
    cr_assert_not(conc_mpqueue_full(q));
    buf[0] = 3;
    cr_assert_eq(conc_mpqueue_put(q, buf, 1, 0), 0);
    cr_assert(conc_mpqueue_full(q));
    for (int i = 1; i <= 3; i++) {
        cr_assert_eq(conc_mpqueue_get(q, buf, sizeof buf, 0), 1);
        cr_assert_eq(buf[0], i);
    }
    cr_assert(conc_mpqueue_empty(q));
    cr_assert_eq(conc_mpqueue_get(q, buf, sizeof buf, 0), -EAGAIN);
    cr_assert_eq(conc_mpqueue_get(q, buf, sizeof buf, 0.02), -ETIMEDOUT);
    conc_mpqueue_free(q);
}

struct blocked_put {
    conc_mpqueue *q;
    const void *data;
    size_t len;
    double timeout;
    atomic_int rc;          /* 1 while it waits */
};

static void *put_thread(void *arg)
{
    struct blocked_put *b = arg;
    atomic_store(&b->rc, conc_mpqueue_put(b->q, b->data, b->len, b->timeout));
    return NULL;
}

struct blocked_get {
    conc_mpqueue *q;
    double timeout;
    unsigned char buf[64];
    atomic_long rc;         /* 1000 while it waits */
};

static void *get_thread(void *arg)
{
    struct blocked_get *b = arg;
    atomic_store(&b->rc, (long)conc_mpqueue_get(b->q, b->buf, sizeof b->buf, b->timeout));
    return NULL;
}

/* A queue without maxsize is still bounded by its ring: put waits for room. */
Test(mpqueue, ring_full_blocks_put, .timeout = 30)
{
    conc_mpqueue *q = mkq(CONC_MPQUEUE_QUEUE, 0, 4096, 0);
    size_t max = conc_mpqueue_max_msg(q);
    unsigned char *in = xmalloc(max), *out = xmalloc(max);
    int n = 0;
    for (;;) {
        fill(in, max, (uint32_t)n);
        int r = conc_mpqueue_put(q, in, max, 0);
        if (r == -EAGAIN)
            break;
        cr_assert_eq(r, 0);
        n++;
        cr_assert_lt(n, 100, "a 4 KiB ring took 100 messages of %zu bytes", max);
    }
    cr_assert_geq(n, 2, "the ring holds two of the largest messages");
    cr_assert_eq(conc_mpqueue_qsize(q), (size_t)n);
    cr_assert_eq(conc_mpqueue_put(q, in, max, 0.02), -ETIMEDOUT);
    cr_assert_eq(conc_mpqueue_qsize(q), (size_t)n);

    struct blocked_put b = { .q = q, .data = in, .len = max, .timeout = GUARD };
    fill(in, max, (uint32_t)n);
    atomic_store(&b.rc, 1);
    pid_t tid;
    pthread_t t = spawn_tid(put_thread, &b, &tid);
    wait_thread_blocked(tid, GUARD);
    cr_assert_eq(atomic_load(&b.rc), 1, "put did not wait for room");
    cr_assert_eq(conc_mpqueue_get(q, out, max, 0), (ssize_t)max);
    cr_assert(check(out, max, 0));
    cr_assert_eq(pthread_join(t, NULL), 0);
    cr_assert_eq(atomic_load(&b.rc), 0);
    for (int i = 1; i <= n; i++) {
        cr_assert_eq(conc_mpqueue_get(q, out, max, 0), (ssize_t)max);
        cr_assert(check(out, max, (uint32_t)i), "message %d", i);
    }
    cr_assert(conc_mpqueue_empty(q));
    free(in);
    free(out);
    conc_mpqueue_free(q);
}

/* ====================================================== JoinableQueue */

Test(mpqueue, joinable_counts, .timeout = 30)
{
    conc_mpqueue *q = mkq(CONC_MPQUEUE_JOINABLE, 0, 0, 0);
    unsigned char buf[8];
    cr_assert_eq(conc_mpqueue_task_done(q), -EOVERFLOW);
    cr_assert_eq(conc_mpqueue_unfinished(q), 0);
    cr_assert_eq(conc_mpqueue_join(q, 0), 0);
    cr_assert_eq(conc_mpqueue_put(q, "a", 1, 0), 0);
    cr_assert_eq(conc_mpqueue_put(q, "b", 1, 0), 0);
    cr_assert_eq(conc_mpqueue_unfinished(q), 2);
    cr_assert_eq(conc_mpqueue_join(q, 0), -EAGAIN);
    cr_assert_eq(conc_mpqueue_join(q, 0.02), -ETIMEDOUT);
    cr_assert_eq(conc_mpqueue_join_until(q, conc_now() + NS / 50), -ETIMEDOUT);
    /* a failed put adds no task */
    cr_assert_eq(conc_mpqueue_put(q, buf, SIZE_MAX / 2, 0), -EMSGSIZE);
    cr_assert_eq(conc_mpqueue_unfinished(q), 2);
    cr_assert_eq(conc_mpqueue_get(q, buf, sizeof buf, 0), 1);
    cr_assert_eq(conc_mpqueue_unfinished(q), 2, "get alone finishes nothing");
    cr_assert_eq(conc_mpqueue_task_done(q), 0);
    cr_assert_eq(conc_mpqueue_unfinished(q), 1);
    cr_assert_eq(conc_mpqueue_join(q, 0), -EAGAIN);
    cr_assert_eq(conc_mpqueue_get(q, buf, sizeof buf, 0), 1);
    cr_assert_eq(conc_mpqueue_task_done(q), 0);
    cr_assert_eq(conc_mpqueue_unfinished(q), 0);
    cr_assert_eq(conc_mpqueue_join(q, 0), 0);
    cr_assert_eq(conc_mpqueue_join(q, CONC_FOREVER), 0);
    cr_assert_eq(conc_mpqueue_task_done(q), -EOVERFLOW);
    cr_assert_eq(conc_mpqueue_unfinished(q), 0, "a refused task_done changed the count");
    for (size_t i = 0; i < N_BAD_TIMEOUTS; i++)
        cr_assert_eq(conc_mpqueue_join(q, bad_timeouts[i]), -EINVAL);
    conc_mpqueue_free(q);
}

/* Consumer children call task_done; join in the parent returns once every
 * message was done, not before. */
Test(mpqueue, joinable_across_processes, .timeout = 30)
{
    enum { N = 600, NCONS = 2 };
    struct rshared *s = rshared_new();
    conc_mpqueue *q = mkq(CONC_MPQUEUE_JOINABLE, 0, 0, 0);
    unsigned char buf[REC_MAX];
    for (uint32_t i = 0; i < N; i++) {
        size_t len = rec_make(buf, 0, i, 0);
        cr_assert_eq(conc_mpqueue_put(q, buf, len, 0), 0);
    }
    cr_assert_eq(conc_mpqueue_unfinished(q), N);
    cr_assert_eq(conc_mpqueue_join(q, 0), -EAGAIN);
    conc_process *c[NCONS];
    for (int i = 0; i < NCONS; i++) {
        struct cctx cc = { .q = q, .s = s, .who = (uint8_t)(1 + i), .task_done = 1 };
        c[i] = start_proc(consumer_proc, &cc, sizeof cc, CONC_START_FORK, NULL, 0);
    }
    cr_assert_eq(conc_mpqueue_join(q, GUARD), 0);
    cr_assert_eq(atomic_load(&s->task_done), N, "join returned before every task_done");
    cr_assert_eq(conc_mpqueue_unfinished(q), 0);
    cr_assert(conc_mpqueue_empty(q));
    /* a second batch: join waits again */
    for (uint32_t i = N; i < N + 50; i++) {
        size_t len = rec_make(buf, 0, i, 0);
        cr_assert_eq(conc_mpqueue_put(q, buf, len, 0), 0);
    }
    cr_assert_eq(conc_mpqueue_join(q, GUARD), 0);
    cr_assert_eq(atomic_load(&s->task_done), N + 50);
    cr_assert_eq(conc_mpqueue_shutdown(q, false), 0);
    for (int i = 0; i < NCONS; i++)
        cr_assert_eq(finish_proc(c[i]), 0, "consumer %d", i);
    for (uint32_t i = 0; i < N + 50; i++)
        cr_assert_eq(atomic_load(&s->seen[0][i]), 1, "message %u seen %u times", i,
                     (unsigned)atomic_load(&s->seen[0][i]));
    cr_assert_eq(atomic_load(&s->corrupt), 0);
    cr_assert_eq(atomic_load(&s->disorder), 0);
    cr_assert_eq(conc_mpqueue_task_done(q), -EOVERFLOW);
    conc_mpqueue_free(q);
    rshared_free(s);
}

static int join_child(void *arg)
{
    return conc_mpqueue_join(arg, GUARD) == 0 ? 0 : 1;
}

/* A joiner in another process is released by the parent's task_done. */
Test(mpqueue, join_in_child, .timeout = 30)
{
    conc_mpqueue *q = mkq(CONC_MPQUEUE_JOINABLE, 0, 0, 0);
    unsigned char buf[8];
    cr_assert_eq(conc_mpqueue_put(q, "j", 1, 0), 0);
    pid_t pid = fork_child(join_child, q);
    wait_proc_blocked(pid, GUARD);
    cr_assert_eq(waitpid(pid, NULL, WNOHANG), 0, "the child's join did not wait");
    cr_assert_eq(conc_mpqueue_get(q, buf, sizeof buf, 0), 1);
    cr_assert_eq(waitpid(pid, NULL, WNOHANG), 0, "join returned before task_done");
    cr_assert_eq(conc_mpqueue_task_done(q), 0);
    cr_assert_eq(reap(pid), 0);
    conc_mpqueue_free(q);
}

/* ============================================================ shutdown */

static int get_child(void *arg)
{
    unsigned char buf[64];
    ssize_t n = conc_mpqueue_get(arg, buf, sizeof buf, GUARD);
    return n == -EPIPE ? 0 : n == -ETIMEDOUT ? 2 : n >= 0 ? 3 : 4;
}

static int put_child(void *arg)
{
    int r = conc_mpqueue_put(arg, "child", 5, GUARD);
    return r == -EPIPE ? 0 : r == -ETIMEDOUT ? 2 : r == 0 ? 3 : 4;
}

Test(mpqueue, shutdown_releases_getters, .timeout = 30)
{
    conc_mpqueue *q = mkq(CONC_MPQUEUE_QUEUE, 0, 0, 0);
    pid_t pid = fork_child(get_child, q);       /* before any thread exists */
    struct blocked_get g[2];
    pthread_t t[2];
    pid_t tid[2];
    for (int i = 0; i < 2; i++) {
        g[i].q = q;
        g[i].timeout = i ? GUARD : CONC_FOREVER;
        atomic_store(&g[i].rc, 1000);
        t[i] = spawn_tid(get_thread, &g[i], &tid[i]);
    }
    for (int i = 0; i < 2; i++)
        wait_thread_blocked(tid[i], GUARD);
    wait_proc_blocked(pid, GUARD);
    for (int i = 0; i < 2; i++)
        cr_assert_eq(atomic_load(&g[i].rc), 1000, "getter %d did not wait", i);
    cr_assert_eq(waitpid(pid, NULL, WNOHANG), 0, "the child's get did not wait");
    cr_assert_eq(conc_mpqueue_shutdown(q, false), 0);
    cr_assert(conc_mpqueue_is_shutdown(q));
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(pthread_join(t[i], NULL), 0);
        cr_assert_eq(atomic_load(&g[i].rc), -EPIPE, "getter %d: %ld", i, atomic_load(&g[i].rc));
    }
    cr_assert_eq(reap(pid), 0, "the child's get was not released with -EPIPE");
    unsigned char buf[8];
    cr_assert_eq(conc_mpqueue_get(q, buf, sizeof buf, CONC_FOREVER), -EPIPE);
    cr_assert_eq(conc_mpqueue_put(q, "x", 1, 0), -EPIPE);
    cr_assert_eq(conc_mpqueue_qsize(q), 0);
    conc_mpqueue_free(q);
}

Test(mpqueue, shutdown_releases_putters, .timeout = 30)
{
    conc_mpqueue *q = mkq(CONC_MPQUEUE_QUEUE, 1, 0, 0);
    cr_assert_eq(conc_mpqueue_put(q, "first", 5, 0), 0);
    pid_t pid = fork_child(put_child, q);
    struct blocked_put b[2];
    pthread_t t[2];
    pid_t tid[2];
    for (int i = 0; i < 2; i++) {
        b[i] = (struct blocked_put){ .q = q, .data = "thread", .len = 6,
                                     .timeout = i ? GUARD : CONC_FOREVER };
        atomic_store(&b[i].rc, 1);
        t[i] = spawn_tid(put_thread, &b[i], &tid[i]);
    }
    for (int i = 0; i < 2; i++)
        wait_thread_blocked(tid[i], GUARD);
    wait_proc_blocked(pid, GUARD);
    for (int i = 0; i < 2; i++)
        cr_assert_eq(atomic_load(&b[i].rc), 1, "putter %d did not wait", i);
    cr_assert_eq(waitpid(pid, NULL, WNOHANG), 0, "the child's put did not wait");
    cr_assert_eq(conc_mpqueue_shutdown(q, false), 0);
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(pthread_join(t[i], NULL), 0);
        cr_assert_eq(atomic_load(&b[i].rc), -EPIPE, "putter %d: %d", i, atomic_load(&b[i].rc));
    }
    cr_assert_eq(reap(pid), 0, "the child's put was not released with -EPIPE");
    /* nothing the released putters had was added; what was queued drains */
    cr_assert_eq(conc_mpqueue_qsize(q), 1);
    unsigned char buf[8];
    cr_assert_eq(conc_mpqueue_get(q, buf, sizeof buf, 0), 5);
    cr_assert_eq(memcmp(buf, "first", 5), 0);
    cr_assert_eq(conc_mpqueue_get(q, buf, sizeof buf, 0), -EPIPE);
    conc_mpqueue_free(q);
}

/* A child waits in get until the parent puts, checks the content, then
 * takes one message from a full queue after a while (the parent waits in
 * put meanwhile).  Exit code 0 or where it failed. */
static int wake_child(void *arg)
{
    conc_mpqueue *q = arg;
    unsigned char buf[64];
    ssize_t n = conc_mpqueue_get_until(q, buf, sizeof buf, conc_now() + (int64_t)(GUARD * NS));
    if (n != 4 || memcmp(buf, "wake", 4) != 0)
        return 1;
    /* the parent fills the queue and waits in put: make room once it sleeps */
    int64_t end = conc_now() + (int64_t)(GUARD * NS);
    while (!conc_mpqueue_full(q))
        if (conc_now() > end || conc_sleep(0.001) != 0)
            return 2;
    if (!test_thread_blocked(getppid()))
        return 4;
    n = conc_mpqueue_get(q, buf, sizeof buf, 0);
    if (n != 5 || memcmp(buf, "full1", 5) != 0)
        return 3;
    return 0;
}

Test(mpqueue, wakeups_across_processes, .timeout = 30)
{
    conc_mpqueue *q = mkq(CONC_MPQUEUE_QUEUE, 2, 0, 0);
    pid_t pid = fork_child(wake_child, q);
    wait_proc_blocked(pid, GUARD);
    cr_assert_eq(waitpid(pid, NULL, WNOHANG), 0, "the child's get did not wait");
    cr_assert_eq(conc_mpqueue_put_until(q, "wake", 4, conc_now() + NS), 0);
    int64_t end = conc_now() + (int64_t)(GUARD * NS);
    while (!conc_mpqueue_empty(q)) {
        cr_assert_lt(conc_now(), end, "the child did not take the message");
        usleep(500);
    }
    cr_assert_eq(conc_mpqueue_put(q, "full1", 5, 0), 0);
    cr_assert_eq(conc_mpqueue_put(q, "full2", 5, 0), 0);
    cr_assert(conc_mpqueue_full(q));
    cr_assert_eq(conc_mpqueue_put_until(q, "full3", 5, conc_now() + (int64_t)(GUARD * NS)), 0,
                 "the put was not woken by the child's get");
    cr_assert_eq(reap(pid), 0, "the child failed");
    unsigned char buf[8];
    cr_assert_eq(conc_mpqueue_get(q, buf, sizeof buf, 0), 5);
    cr_assert_eq(memcmp(buf, "full2", 5), 0);
    cr_assert_eq(conc_mpqueue_get(q, buf, sizeof buf, 0), 5);
    cr_assert_eq(memcmp(buf, "full3", 5), 0);
    conc_mpqueue_free(q);
}

/* Shuts the queue down once the parent sleeps in its get. */
static int shutdown_child(void *arg)
{
    if (!test_thread_blocked(getppid()))
        return 2;
    return conc_mpqueue_shutdown(arg, false) == 0 ? 0 : 1;
}

/* Another process's shutdown releases a getter of this one. */
Test(mpqueue, shutdown_by_other_process, .timeout = 30)
{
    conc_mpqueue *q = mkq(CONC_MPQUEUE_SIMPLE, 0, 0, 0);
    pid_t pid = fork_child(shutdown_child, q);
    unsigned char buf[8];
    cr_assert_eq(conc_mpqueue_get(q, buf, sizeof buf, GUARD), -EPIPE);
    cr_assert(conc_mpqueue_is_shutdown(q));
    cr_assert_eq(reap(pid), 0);
    conc_mpqueue_free(q);
}

Test(mpqueue, shutdown_plain_drains, .timeout = 30)
{
    conc_mpqueue *q = mkq(CONC_MPQUEUE_QUEUE, 0, 0, 0);
    unsigned char buf[8];
    for (int i = 0; i < 3; i++) {
        buf[0] = (unsigned char)('a' + i);
        cr_assert_eq(conc_mpqueue_put(q, buf, 1, 0), 0);
    }
    cr_assert_eq(conc_mpqueue_shutdown(q, false), 0);
    cr_assert_eq(conc_mpqueue_shutdown(q, false), 0, "again is harmless");
    cr_assert(conc_mpqueue_is_shutdown(q));
    cr_assert_eq(conc_mpqueue_put(q, "x", 1, 0), -EPIPE);
    cr_assert_eq(conc_mpqueue_put(q, "x", 1, CONC_FOREVER), -EPIPE);
    cr_assert_eq(conc_mpqueue_qsize(q), 3);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(conc_mpqueue_next_size(q), 1);
        cr_assert_eq(conc_mpqueue_get(q, buf, sizeof buf, CONC_FOREVER), 1);
        cr_assert_eq(buf[0], 'a' + i);
    }
    cr_assert_eq(conc_mpqueue_get(q, buf, sizeof buf, CONC_FOREVER), -EPIPE);
    cr_assert_eq(conc_mpqueue_get(q, buf, sizeof buf, 0), -EPIPE);
    void *p;
    size_t len;
    cr_assert_eq(conc_mpqueue_get_alloc(q, &p, &len, 0), -EPIPE);
    cr_assert_eq(conc_mpqueue_next_size(q), -EPIPE);
    conc_mpqueue_free(q);
}

Test(mpqueue, shutdown_immediate, .timeout = 30)
{
    conc_mpqueue *q = mkq(CONC_MPQUEUE_JOINABLE, 0, 0, 0);
    unsigned char buf[8];
    for (int i = 0; i < 4; i++)
        cr_assert_eq(conc_mpqueue_put(q, "m", 1, 0), 0);
    cr_assert_eq(conc_mpqueue_get(q, buf, sizeof buf, 0), 1);     /* taken, not done */
    cr_assert_eq(conc_mpqueue_unfinished(q), 4);
    cr_assert_eq(conc_mpqueue_shutdown(q, false), 0);
    cr_assert_eq(conc_mpqueue_qsize(q), 3, "a plain shutdown keeps the messages");
    cr_assert_eq(conc_mpqueue_shutdown(q, true), 0, "immediate after plain");
    cr_assert_eq(conc_mpqueue_qsize(q), 0);
    cr_assert(conc_mpqueue_empty(q));
    cr_assert_eq(conc_mpqueue_get(q, buf, sizeof buf, CONC_FOREVER), -EPIPE);
    cr_assert_eq(conc_mpqueue_unfinished(q), 1, "the discarded messages count as done");
    cr_assert_eq(conc_mpqueue_join(q, 0), -EAGAIN);
    cr_assert_eq(conc_mpqueue_task_done(q), 0);
    cr_assert_eq(conc_mpqueue_join(q, 0), 0);
    cr_assert_eq(conc_mpqueue_task_done(q), -EOVERFLOW);
    conc_mpqueue_free(q);

    /* immediate right away, with a joiner in another process */
    q = mkq(CONC_MPQUEUE_JOINABLE, 0, 0, 0);
    for (int i = 0; i < 5; i++)
        cr_assert_eq(conc_mpqueue_put(q, "m", 1, 0), 0);
    pid_t pid = fork_child(join_child, q);
    wait_proc_blocked(pid, GUARD);
    cr_assert_eq(waitpid(pid, NULL, WNOHANG), 0, "the child's join did not wait");
    cr_assert_eq(conc_mpqueue_shutdown(q, true), 0);
    cr_assert_eq(reap(pid), 0, "immediate shutdown did not settle the joiner");
    cr_assert_eq(conc_mpqueue_unfinished(q), 0);
    cr_assert_eq(conc_mpqueue_get(q, buf, sizeof buf, 0), -EPIPE);
    conc_mpqueue_free(q);
}

/* ============================================= many producers and consumers */

enum { MP_PRODS = 3, MP_CONS = 3, MP_N = 3000 };

static void check_mpmc(struct rshared *s)
{
    cr_assert_eq(atomic_load(&s->corrupt), 0, "corrupt messages");
    cr_assert_eq(atomic_load(&s->disorder), 0, "a consumer saw a producer's messages out of order");
    cr_assert_eq(atomic_load(&s->bad), 0);
    int per[MP_CONS + 1] = { 0 };
    for (int p = 0; p < MP_PRODS; p++)
        for (int i = 0; i < MP_N; i++) {
            unsigned n = atomic_load(&s->seen[p][i]);
            cr_assert_eq(n, 1, "producer %d message %d consumed %u times", p, i, n);
            per[atomic_load(&s->by[p][i]) % (MP_CONS + 1)]++;
        }
    for (int c = 1; c <= MP_CONS; c++)
        cr_log_info("consumer %d took %d messages", c, per[c]);
}

Test(mpqueue, many_processes, .timeout = 30)
{
    struct rshared *s = rshared_new();
    /* a small ring: producers wait for room, consumers for messages */
    conc_mpqueue *q = mkq(CONC_MPQUEUE_QUEUE, 0, 16384, 0);
    conc_process *c[MP_CONS], *p[MP_PRODS];
    for (int i = 0; i < MP_CONS; i++) {
        struct cctx cc = { .q = q, .s = s, .who = (uint8_t)(1 + i) };
        c[i] = start_proc(consumer_proc, &cc, sizeof cc, CONC_START_FORK, NULL, 0);
    }
    for (int i = 0; i < MP_PRODS; i++) {
        struct pctx pc = { .q = q, .s = s, .prod = (uint32_t)i, .n = MP_N };
        p[i] = start_proc(producer_proc, &pc, sizeof pc, CONC_START_FORK, NULL, 0);
    }
    for (int i = 0; i < MP_PRODS; i++)
        cr_assert_eq(finish_proc(p[i]), 0, "producer %d", i);
    /* every message is in the queue once put returned: shut down, the
     * consumers drain it and end */
    cr_assert_eq(conc_mpqueue_shutdown(q, false), 0);
    for (int i = 0; i < MP_CONS; i++)
        cr_assert_eq(finish_proc(c[i]), 0, "consumer %d", i);
    cr_assert(conc_mpqueue_empty(q));
    check_mpmc(s);
    conc_mpqueue_free(q);
    rshared_free(s);
}

Test(mpqueue, many_threads, .timeout = 30)
{
    struct rshared *s = rshared_new();
    conc_mpqueue *q = mkq(CONC_MPQUEUE_SIMPLE, 0, 8192, 0);
    pthread_t c[MP_CONS], p[MP_PRODS];
    struct cctx cc[MP_CONS];
    struct pctx pc[MP_PRODS];
    for (int i = 0; i < MP_CONS; i++) {
        cc[i] = (struct cctx){ .q = q, .s = s, .who = (uint8_t)(1 + i) };
        cr_assert_eq(pthread_create(&c[i], NULL, consumer_thread, &cc[i]), 0);
    }
    for (int i = 0; i < MP_PRODS; i++) {
        pc[i] = (struct pctx){ .q = q, .s = s, .prod = (uint32_t)i, .n = MP_N };
        cr_assert_eq(pthread_create(&p[i], NULL, producer_thread, &pc[i]), 0);
    }
    void *r;
    for (int i = 0; i < MP_PRODS; i++) {
        cr_assert_eq(pthread_join(p[i], &r), 0);
        cr_assert_eq((intptr_t)r, 0, "producer %d", i);
    }
    cr_assert_eq(conc_mpqueue_shutdown(q, false), 0);
    for (int i = 0; i < MP_CONS; i++) {
        cr_assert_eq(pthread_join(c[i], &r), 0);
        cr_assert_eq((intptr_t)r, 0, "consumer %d", i);
    }
    check_mpmc(s);
    conc_mpqueue_free(q);
    rshared_free(s);
}

/* ============================================= forkserver and spawn children */

struct attach_job {
    int to[CONC_MPQUEUE_NFDS];      /* the parent's requests */
    int from[CONC_MPQUEUE_NFDS];    /* the child's answers */
    size_t capacity, max_msg;
    int n;
};

/* Attaches both queues, checks the settings, answers n messages (each
 * checked, answered with the next seed), waits for the parent's shutdown
 * and ends.  Exit code 0 or where it failed. */
static int attach_child(const void *arg, size_t len)
{
    if (len != sizeof(struct attach_job))
        return 10;
    const struct attach_job *j = arg;
    conc_mpqueue *to, *from;
    if (conc_mpqueue_attach(&to, j->to) != 0)
        return 11;
    if (conc_mpqueue_attach(&from, j->from) != 0)
        return 12;
    if (conc_mpqueue_capacity(to) != j->capacity || conc_mpqueue_max_msg(to) != j->max_msg)
        return 13;
    int code = 0;
    unsigned char *p = malloc(j->max_msg);
    if (!p)
        code = 18;
    for (int i = 0; i < j->n && code == 0; i++) {
        ssize_t n = conc_mpqueue_get(to, p, j->max_msg, GUARD);
        if (n < 0)
            code = 14;
        else if ((size_t)n != (size_t)i * 97u || !check(p, (size_t)n, (uint32_t)i))
            code = 15;
        else {
            fill(p, (size_t)n, (uint32_t)i + 1000u);
            if (conc_mpqueue_put(from, p, (size_t)n, GUARD) != 0)
                code = 16;
        }
    }
    free(p);
    unsigned char b[4];
    if (code == 0 && conc_mpqueue_get(to, b, sizeof b, GUARD) != -EPIPE)
        code = 17;
    conc_mpqueue_free(to);
    conc_mpqueue_free(from);
    return code;
}

static void attach_from(conc_start_method method)
{
    conc_mpqueue *to = mkq(CONC_MPQUEUE_QUEUE, 0, 65536, 0);
    conc_mpqueue *from = mkq(CONC_MPQUEUE_SIMPLE, 0, 0, 0);
    struct attach_job job = { .capacity = conc_mpqueue_capacity(to),
                              .max_msg = conc_mpqueue_max_msg(to), .n = 40 };
    cr_assert_eq(conc_mpqueue_fds(to, job.to), 0);
    cr_assert_eq(conc_mpqueue_fds(from, job.from), 0);
    int fds[2 * CONC_MPQUEUE_NFDS];
    for (int k = 0; k < CONC_MPQUEUE_NFDS; k++) {
        cr_assert(fd_open(job.to[k]));
        cr_assert(fd_open(job.from[k]));
        fds[k] = job.to[k];
        fds[CONC_MPQUEUE_NFDS + k] = job.from[k];
    }
    conc_process *p = start_proc(attach_child, &job, sizeof job, method, fds,
                                 2 * CONC_MPQUEUE_NFDS);
    unsigned char *a = xmalloc(job.max_msg);
    for (int i = 0; i < job.n; i++) {
        size_t n = (size_t)i * 97u;
        unsigned char *m = xmalloc(n);
        fill(m, n, (uint32_t)i);
        cr_assert_eq(conc_mpqueue_put(to, m, n, GUARD), 0);
        /* wait for the answer or the child's end, whichever comes first */
        ssize_t r;
        while ((r = conc_mpqueue_get(from, a, job.max_msg, 0)) == -EAGAIN) {
            conc_waitable w[2] = { { .kind = CONC_WAIT_MPQUEUE, .u.mpqueue = from },
                                   { .kind = CONC_WAIT_PROCESS, .u.process = p } };
            int nw = conc_wait(w, 2, GUARD);
            cr_assert_gt(nw, 0, "no answer to message %d: %s", i, conc_errname(nw));
            if (w[1].ready && !w[0].ready && conc_mpqueue_empty(from)) {
                int code = -1;
                conc_process_join(p, GUARD);
                conc_process_exitcode(p, &code);
                cr_assert_fail("the child ended before answering message %d (exit code %d)",
                               i, code);
            }
        }
        cr_assert_eq(r, (ssize_t)n, "answer %d: %zd", i, r);
        cr_assert(check(a, n, (uint32_t)i + 1000u), "answer %d differs", i);
        free(m);
    }
    free(a);
    cr_assert_eq(conc_mpqueue_shutdown(to, false), 0);
    cr_assert_eq(finish_proc(p), 0, "the %s child failed",
                 method == CONC_START_SPAWN ? "spawn" : "forkserver");
    cr_assert(conc_mpqueue_empty(from));
    conc_mpqueue_free(to);
    conc_mpqueue_free(from);
}

Test(mpqueue, attach_in_forkserver_child, .timeout = 30)
{
    attach_from(CONC_START_FORKSERVER);
}

Test(mpqueue, attach_in_spawn_child, .timeout = 30)
{
    attach_from(CONC_START_SPAWN);
}

/* Two handles in one process: attach to duplicates of the descriptors. */
static conc_mpqueue *attach_dup(conc_mpqueue *q)
{
    int fds[CONC_MPQUEUE_NFDS];
    cr_assert_eq(conc_mpqueue_fds(q, fds), 0);
    conc_mpqueue *a = NULL;
    int r = conc_mpqueue_attach(&a, fds);      /* duplicates them */
    cr_assert_eq(r, 0, "attach: %s", conc_errname(r));
    cr_assert_not_null(a);
    return a;
}

Test(mpqueue, attach_same_process, .timeout = 30)
{
    conc_mpqueue *q = mkq(CONC_MPQUEUE_JOINABLE, 4, 8192, 100);
    conc_mpqueue *a = attach_dup(q);
    cr_assert_eq(conc_mpqueue_capacity(a), conc_mpqueue_capacity(q));
    cr_assert_eq(conc_mpqueue_max_msg(a), 100);
    cr_assert_eq(conc_mpqueue_maxsize(a), 4);
    cr_assert_eq(conc_mpqueue_put(q, "hello", 5, 0), 0);
    cr_assert_eq(conc_mpqueue_qsize(a), 1);
    cr_assert_eq(conc_mpqueue_unfinished(a), 1);
    unsigned char buf[16];
    cr_assert_eq(conc_mpqueue_get(a, buf, sizeof buf, 0), 5);
    cr_assert_eq(memcmp(buf, "hello", 5), 0);
    cr_assert_eq(conc_mpqueue_task_done(a), 0);
    cr_assert_eq(conc_mpqueue_join(q, 0), 0);
    /* freeing one handle leaves the other working */
    conc_mpqueue_free(q);
    cr_assert_eq(conc_mpqueue_put(a, "again", 5, 0), 0);
    cr_assert_eq(conc_mpqueue_get(a, buf, sizeof buf, 0), 5);
    cr_assert_eq(memcmp(buf, "again", 5), 0);
    conc_mpqueue_free(a);
}

Test(mpqueue, attach_errors, .timeout = 30)
{
    conc_mpqueue *q = mkq(CONC_MPQUEUE_QUEUE, 0, 0, 0);
    int qfds[CONC_MPQUEUE_NFDS];
    cr_assert_eq(conc_mpqueue_fds(q, qfds), 0);
    conc_mpqueue *a = NULL;
    int fds[CONC_MPQUEUE_NFDS];

    /* a memfd that is not a queue (empty, then full of zeros, then of junk) */
    int mfd = memfd_create("not-a-queue", MFD_CLOEXEC);
    cr_assert_geq(mfd, 0);
    int e1 = eventfd(0, EFD_CLOEXEC), e2 = eventfd(0, EFD_CLOEXEC);
    cr_assert_geq(e1, 0);
    cr_assert_geq(e2, 0);
    fds[0] = mfd;
    fds[1] = e1;
    fds[2] = e2;
    cr_assert_eq(conc_mpqueue_attach(&a, fds), -EINVAL, "empty memfd");
    cr_assert_eq(ftruncate(mfd, 1 << 20), 0);
    cr_assert_eq(conc_mpqueue_attach(&a, fds), -EINVAL, "memfd of zeros");
    unsigned char junk[8192];
    fill(junk, sizeof junk, 5);
    cr_assert_eq(pwrite(mfd, junk, sizeof junk, 0), (ssize_t)sizeof junk);
    cr_assert_eq(conc_mpqueue_attach(&a, fds), -EINVAL, "memfd of junk");
    cr_assert_null(a);
    for (int k = 0; k < 3; k++)
        cr_assert(fd_open(fds[k]), "a failed attach closed fd %d", fds[k]);

    /* a regular file and a pipe where the memfd should be */
    char path[] = "/tmp/conc-mpq-XXXXXX";
    int rfd = mkstemp(path);
    cr_assert_geq(rfd, 0);
    unlink(path);
    cr_assert_eq(pwrite(rfd, junk, sizeof junk, 0), (ssize_t)sizeof junk);
    fds[0] = rfd;
    cr_assert_eq(conc_mpqueue_attach(&a, fds), -EINVAL, "regular file");
    cr_assert(fd_open(rfd));
    int pp[2];
    cr_assert_eq(pipe2(pp, O_CLOEXEC), 0);
    fds[0] = pp[0];
    cr_assert_eq(conc_mpqueue_attach(&a, fds), -EINVAL, "pipe");
    cr_assert_null(a);

    /* negative and closed descriptors */
    int dupd[CONC_MPQUEUE_NFDS];
    for (int k = 0; k < CONC_MPQUEUE_NFDS; k++)
        dupd[k] = fcntl(qfds[k], F_DUPFD_CLOEXEC, 0);
    memcpy(fds, dupd, sizeof fds);
    fds[0] = -1;
    cr_assert_eq(conc_mpqueue_attach(&a, fds), -EINVAL, "negative fd");
    int closed = fcntl(qfds[0], F_DUPFD_CLOEXEC, 0);
    cr_assert_geq(closed, 0);
    cr_assert_eq(close(closed), 0);
    fds[0] = closed;
    cr_assert_eq(conc_mpqueue_attach(&a, fds), -EBADF, "closed memfd");
    memcpy(fds, dupd, sizeof fds);
    fds[2] = closed;
    cr_assert_eq(conc_mpqueue_attach(&a, fds), -EBADF, "closed eventfd");
    cr_assert_null(a);
    for (int k = 0; k < CONC_MPQUEUE_NFDS; k++)
        cr_assert(fd_open(dupd[k]), "a failed attach closed fd %d", dupd[k]);
    /* and the right ones still work */
    cr_assert_eq(conc_mpqueue_attach(&a, dupd), 0);
    cr_assert_eq(conc_mpqueue_put(a, "ok", 2, 0), 0);
    unsigned char buf[4];
    cr_assert_eq(conc_mpqueue_get(q, buf, sizeof buf, 0), 2);
    conc_mpqueue_free(a);
    /* The handle had copies: the caller's descriptors stay open, and still
     * name the queue. */
    for (int k = 0; k < CONC_MPQUEUE_NFDS; k++)
        cr_assert(fd_open(dupd[k]), "free closed the caller's fd %d", dupd[k]);
    cr_assert_eq(conc_mpqueue_attach(&a, dupd), 0);
    for (int k = 0; k < CONC_MPQUEUE_NFDS; k++)
        close(dupd[k]);
    cr_assert_eq(conc_mpqueue_put(a, "ok", 2, 0), 0);
    cr_assert_eq(conc_mpqueue_get(q, buf, sizeof buf, 0), 2);
    conc_mpqueue_free(a);

    close(mfd);
    close(e1);
    close(e2);
    close(rfd);
    close(pp[0]);
    close(pp[1]);
    conc_mpqueue_free(q);
}

/* ========================================================= kill -9 */

/* How long a kill test keeps starting rounds (a slow sanitizer build does
 * fewer rounds rather than run into the test's timeout). */
#define KILL_BUDGET_NS (12 * NS)

static void check_clean(struct rshared *s)
{
    cr_assert_eq(atomic_load(&s->corrupt), 0, "a corrupt message was delivered");
    cr_assert_eq(atomic_load(&s->disorder), 0, "a producer's messages came out of order");
}

/* The test takes every message, checks and accounts for it. */
static ssize_t take(conc_mpqueue *q, struct rshared *s, struct view *v, double timeout)
{
    unsigned char buf[REC_MAX];
    ssize_t n = conc_mpqueue_get(q, buf, sizeof buf, timeout);
    if (n >= 0)
        cr_assert(account(s, v, buf, n, 2), "corrupt message of %zd bytes", n);
    return n;
}

static void drain(conc_mpqueue *q, struct rshared *s, struct view *v)
{
    ssize_t n;
    while ((n = take(q, s, v, 0)) >= 0)
        ;
    cr_assert_eq(n, -EAGAIN, "drain: %s", conc_errname((int)n));
    cr_assert_eq(conc_mpqueue_qsize(q), 0);
}

/* The queue still works after a death: a put and a get (hang guards). */
static void probe(conc_mpqueue *q, struct rshared *s, struct view *v, uint32_t round)
{
    unsigned char buf[REC_MAX];
    size_t len = rec_make(buf, PROBE_ID, round % RMAXSEQ, 0);
    cr_assert_eq(conc_mpqueue_put(q, buf, len, GUARD / 4), 0, "put after a death");
    cr_assert_eq(take(q, s, v, GUARD / 4), (ssize_t)len, "get after a death");
}

/* Producers killed at random instants while the test consumes: each one's
 * messages arrive in order from its first, none twice, none corrupt, and
 * the one it was putting is either all there or absent. */
Test(mpqueue_robust, killed_producers, .timeout = 30)
{
    rng_seed();
    struct rshared *s = rshared_new();
    /* Odd rounds: short records in a ring that never fills, so the
     * producer spends its time inside put (the kill often lands between
     * publishing a message and its bookkeeping).  Even rounds: longer
     * records, and a ring that the test may not empty in time. */
    conc_mpqueue *q = mkq(CONC_MPQUEUE_QUEUE, 0, 1u << 20, REC_MAX);
    struct view *v = malloc(sizeof *v);
    view_init(v);
    int64_t stop = conc_now() + KILL_BUDGET_NS;
    int rounds = 0, mid_put = 0, unreported = 0;
    for (uint32_t r = 0; r < 500 && conc_now() < stop; r++, rounds++) {
        struct pctx pc = { .q = q, .s = s, .prod = r, .n = RMAXSEQ, .linger = 1,
                           .spread = r % 2 ? 8 : 0 };
        pid_t pid = fork_child(producer_body, &pc);
        /* from the producer's first put on (hang guard) */
        int64_t guard = conc_now() + (int64_t)(GUARD * NS);
        while (atomic_load(&s->attempt[r]) == 0) {
            cr_assert_lt(conc_now(), guard, "the producer did not start");
            sched_yield();
        }
        int64_t until = conc_now() + (int64_t)rnd(r % 2 ? 1000 : 3000) * 1000;
        while (conc_now() < until) {
            if (r % 2)
                continue;       /* no sleeping getter to wake: puts stay in user space */
            ssize_t n = take(q, s, v, 0.0005);
            cr_assert(n >= 0 || n == -ETIMEDOUT, "get: %s", conc_errname((int)n));
        }
        kill(pid, SIGKILL);
        cr_assert_eq(reap(pid), -SIGKILL, "the producer ended on its own");
        drain(q, s, v);
        uint32_t k = 0;
        while (k < RMAXSEQ && atomic_load(&s->seen[r][k]))
            k++;
        for (uint32_t i = 0; i < RMAXSEQ; i++)
            cr_assert_eq(atomic_load(&s->seen[r][i]), i < k,
                         "round %u: message %u seen %u times (%u arrived)", r, i,
                         (unsigned)atomic_load(&s->seen[r][i]), k);
        uint32_t done = atomic_load(&s->done[r]), att = atomic_load(&s->attempt[r]);
        cr_assert(k == done || k == done + 1,
                  "round %u: %u messages arrived, %u puts returned", r, k, done);
        cr_assert_leq(k, att, "round %u: more arrived than were put", r);
        if (att > done)
            mid_put++;
        if (k > done)
            unreported++;
        check_clean(s);
        probe(q, s, v, r);
    }
    cr_log_info("%d rounds, %d producers killed inside a put, %d of them after their "
                "message was in", rounds, mid_put, unreported);
    cr_assert_gt(rounds, 0);
    free(v);
    conc_mpqueue_free(q);
    rshared_free(s);
}

/* Consumers killed at random instants while the test produces: what they
 * took, then at most one message lost with the dead consumer, then what
 * stays for the test, in order, nothing twice, nothing corrupt. */
Test(mpqueue_robust, killed_consumers, .timeout = 30)
{
    rng_seed();
    struct rshared *s = rshared_new();
    conc_mpqueue *q = mkq(CONC_MPQUEUE_QUEUE, 0, 16384, REC_MAX);
    struct view *v = malloc(sizeof *v);
    view_init(v);
    unsigned char buf[REC_MAX];
    int64_t stop = conc_now() + KILL_BUDGET_NS;
    int rounds = 0, lost = 0, child_took = 0;
    for (uint32_t r = 0; r < 250 && conc_now() < stop; r++, rounds++) {
        struct cctx cc = { .q = q, .s = s, .who = 1 };
        pid_t pid = fork_child(consumer_body, &cc);
        int64_t until = conc_now() + (int64_t)rnd(3000) * 1000;
        uint32_t seq = 0;
        while (conc_now() < until) {
            if (seq == RMAXSEQ) {
                sched_yield();
                continue;
            }
            size_t len = rec_make(buf, r, seq, 0);
            int rc = conc_mpqueue_put(q, buf, len, 0);
            cr_assert(rc == 0 || rc == -EAGAIN, "put: %s", conc_errname(rc));
            if (rc == 0)
                seq++;
        }
        kill(pid, SIGKILL);
        cr_assert_eq(reap(pid), -SIGKILL, "the consumer ended on its own");
        drain(q, s, v);
        /* per message: 0 = nobody has it, 1 = the child, 2 = the test;
         * the order must be 1* 0? 2* */
        int state = 1, missing = 0;
        for (uint32_t i = 0; i < seq; i++) {
            unsigned n = atomic_load(&s->seen[r][i]);
            cr_assert_leq(n, 1, "round %u: message %u taken %u times", r, i, n);
            int who = n ? atomic_load(&s->by[r][i]) : 0;
            if (who == 1) {
                cr_assert_eq(state, 1, "round %u: message %u reached the dead consumer after "
                             "a later one stayed", r, i);
                child_took++;
            } else if (who == 0) {
                cr_assert_eq(state, 1, "round %u: message %u lost (not the one in flight)", r, i);
                state = 0;
                missing++;
            } else {
                cr_assert_eq(who, 2);
                state = 2;
            }
        }
        for (uint32_t i = seq; i < RMAXSEQ; i++)
            cr_assert_eq(atomic_load(&s->seen[r][i]), 0, "round %u: message %u was never put",
                         r, i);
        lost += missing;
        check_clean(s);
        probe(q, s, v, r);
    }
    cr_log_info("%d rounds, the consumers took %d messages, %d lost with them", rounds,
                child_took, lost);
    cr_assert_gt(rounds, 0);
    free(v);
    conc_mpqueue_free(q);
    rshared_free(s);
}

/* Producers and consumers killed at random instants beside a consumer that
 * lives throughout: it never hangs, nothing is delivered twice or corrupt,
 * each consumer sees each producer's messages in order, and at most one
 * message per killed consumer goes missing. */
Test(mpqueue_robust, killed_mixed, .timeout = 30)
{
    rng_seed();
    struct rshared *s = rshared_new();
    conc_mpqueue *q = mkq(CONC_MPQUEUE_JOINABLE, 64, 8192, REC_MAX);
    struct view *v = malloc(sizeof *v);
    view_init(v);
    struct cctx survivor = { .q = q, .s = s, .who = 3 };
    pid_t keeper = fork_child(consumer_body, &survivor);
    int64_t stop = conc_now() + KILL_BUDGET_NS;
    int rounds = 0, consumer_kills = 0;
    uint32_t probes = 0;
    for (uint32_t r = 0; r < 120 && conc_now() < stop; r++, rounds++) {
        pid_t pids[4];
        struct pctx pc = { .q = q, .s = s, .n = RMAXSEQ, .linger = 1 };
        struct cctx cc = { .q = q, .s = s, .who = 1 };
        for (int i = 0; i < 2; i++) {
            pc.prod = 2 * r + (uint32_t)i;
            pids[i] = fork_child(producer_body, &pc);
            pids[2 + i] = fork_child(consumer_body, &cc);
        }
        /* kill them one by one, in a random order, at random instants */
        for (int left = 4; left > 0; left--) {
            int i = (int)rnd((uint32_t)left);
            usleep(rnd(2000));
            kill(pids[i], SIGKILL);
            cr_assert_eq(reap(pids[i]), -SIGKILL, "a child ended on its own");
            pids[i] = pids[left - 1];
        }
        consumer_kills += 2;
        /* the queue works: a put goes through (the survivor takes it) */
        unsigned char buf[REC_MAX];
        size_t len = rec_make(buf, PROBE_ID, probes, 0);
        atomic_store(&s->attempt[PROBE_ID], probes + 1);
        int rc = conc_mpqueue_put(q, buf, len, GUARD / 4);
        cr_assert_eq(rc, 0, "round %u: put after the kills: %s (qsize %zu, full %d, "
                     "survivor %s)", r, conc_errname(rc), conc_mpqueue_qsize(q),
                     conc_mpqueue_full(q),
                     waitpid(keeper, NULL, WNOHANG) == 0 ? "running" : "gone");
        atomic_store(&s->done[PROBE_ID], ++probes);
        cr_assert_eq(waitpid(keeper, NULL, WNOHANG), 0, "the surviving consumer ended");
    }
    /* the survivor drains what is left, then sees the shutdown */
    cr_assert_eq(conc_mpqueue_shutdown(q, false), 0);
    cr_assert_eq(reap(keeper), 0, "the surviving consumer failed or hung");
    unsigned char buf[8];
    cr_assert_eq(conc_mpqueue_get(q, buf, sizeof buf, 0), -EPIPE);
    cr_assert(conc_mpqueue_empty(q));
    check_clean(s);
    cr_assert_eq(atomic_load(&s->bad), 0, "the survivor saw an error");
    long missing = 0, delivered = 0, put = 0;
    for (uint32_t p = 0; p < RMAXP; p++) {
        uint32_t done = atomic_load(&s->done[p]), att = atomic_load(&s->attempt[p]);
        put += done;
        for (uint32_t i = 0; i < RMAXSEQ; i++) {
            unsigned n = atomic_load(&s->seen[p][i]);
            cr_assert_leq(n, 1, "producer %u message %u delivered %u times", p, i, n);
            if (i >= att)
                cr_assert_eq(n, 0, "producer %u message %u was never put", p, i);
            delivered += n;
            if (i < done && n == 0)
                missing++;
        }
    }
    cr_log_info("%d rounds: %ld put, %ld delivered, %ld missing", rounds, put, delivered,
                missing);
    cr_assert_leq(missing, consumer_kills, "more messages lost than consumers killed");
    /* killed producers may have left one more than they reported */
    cr_assert_leq(delivered, put + 2L * rounds);
    for (uint32_t i = 0; i < probes; i++)
        cr_assert_leq(atomic_load(&s->seen[PROBE_ID][i]), 1);
    cr_assert_gt(rounds, 0);
    free(v);
    conc_mpqueue_free(q);
    rshared_free(s);
}

/* ===================================================== readiness */

/* Put and get once the parent sleeps (in poll, a get or a hub). */
static int delayed_put(void *arg)
{
    if (!test_thread_blocked(getppid()))
        return 2;
    return conc_mpqueue_put(arg, "ready", 5, GUARD) == 0 ? 0 : 1;
}

static int delayed_get(void *arg)
{
    unsigned char buf[16];
    if (!test_thread_blocked(getppid()))
        return 2;
    return conc_mpqueue_get(arg, buf, sizeof buf, GUARD) >= 0 ? 0 : 1;
}

Test(mpqueue, fd_in_readable_after_put_by_other_process, .timeout = 30)
{
    conc_mpqueue *q = mkq(CONC_MPQUEUE_QUEUE, 0, 0, 0);
    int fd = conc_mpqueue_fd(q, POLLIN);
    cr_assert_geq(fd, 0);
    cr_assert_eq(conc_mpqueue_fd(q, POLLIN), fd, "the same fd each time");
    unsigned char buf[16];
    cr_assert_eq(conc_mpqueue_get(q, buf, sizeof buf, 0), -EAGAIN);
    cr_assert_not(readable(fd, 0), "readable on an empty queue after a failed get");
    for (int round = 0; round < 3; round++) {
        pid_t pid = fork_child(delayed_put, q);
        cr_assert(readable(fd, (int)(GUARD * 1000)), "round %d: not readable after a put", round);
        cr_assert(readable(fd, 0), "level-triggered: still readable");
        cr_assert_eq(reap(pid), 0);
        cr_assert_eq(conc_mpqueue_get(q, buf, sizeof buf, 0), 5);
        cr_assert_eq(memcmp(buf, "ready", 5), 0);
        cr_assert_eq(conc_mpqueue_get(q, buf, sizeof buf, 0), -EAGAIN);
        cr_assert_not(readable(fd, 0), "round %d: readable after the queue emptied", round);
    }
    /* never unreadable while a message waits */
    for (int i = 0; i < 5; i++)
        cr_assert_eq(conc_mpqueue_put(q, "x", 1, 0), 0);
    for (int i = 0; i < 5; i++) {
        cr_assert(readable(fd, 0), "unreadable with %d messages queued", 5 - i);
        cr_assert_eq(conc_mpqueue_get(q, buf, sizeof buf, 0), 1);
    }
    cr_assert_eq(conc_mpqueue_get(q, buf, sizeof buf, 0), -EAGAIN);
    cr_assert_not(readable(fd, 0));
    /* a shutdown makes it readable */
    cr_assert_eq(conc_mpqueue_shutdown(q, false), 0);
    cr_assert(readable(fd, 0), "not readable after shutdown");
    conc_mpqueue_free(q);
}

/* A handle that asked for the fd sees puts made through another handle
 * (another process's) that never asked. */
Test(mpqueue, fd_in_via_attached_handle, .timeout = 30)
{
    conc_mpqueue *q = mkq(CONC_MPQUEUE_QUEUE, 0, 0, 0);
    conc_mpqueue *a = attach_dup(q);
    int fd = conc_mpqueue_fd(a, POLLIN);
    cr_assert_geq(fd, 0);
    unsigned char buf[16];
    cr_assert_eq(conc_mpqueue_get(a, buf, sizeof buf, 0), -EAGAIN);
    cr_assert_not(readable(fd, 0));
    pid_t pid = fork_child(delayed_put, q);
    cr_assert(readable(fd, (int)(GUARD * 1000)));
    cr_assert_eq(reap(pid), 0);
    cr_assert_eq(conc_mpqueue_get(q, buf, sizeof buf, 0), 5);
    /* taken through the other handle: readable may linger until a failed get */
    cr_assert_eq(conc_mpqueue_get(a, buf, sizeof buf, 0), -EAGAIN);
    cr_assert_not(readable(fd, 0));
    conc_mpqueue_free(a);
    conc_mpqueue_free(q);
}

Test(mpqueue, fd_out_readable_while_not_full, .timeout = 30)
{
    conc_mpqueue *q = mkq(CONC_MPQUEUE_QUEUE, 2, 0, 0);
    int fd = conc_mpqueue_fd(q, POLLOUT);
    cr_assert_geq(fd, 0);
    cr_assert_neq(fd, conc_mpqueue_fd(q, POLLIN));
    cr_assert(readable(fd, 0), "an empty queue has room");
    cr_assert_eq(conc_mpqueue_put(q, "a", 1, 0), 0);
    cr_assert(readable(fd, 0), "room for one more");
    cr_assert_eq(conc_mpqueue_put(q, "b", 1, 0), 0);
    cr_assert_eq(conc_mpqueue_put(q, "c", 1, 0), -EAGAIN);
    cr_assert_not(readable(fd, 0), "readable while full, after a failed put");
    pid_t pid = fork_child(delayed_get, q);
    cr_assert(readable(fd, (int)(GUARD * 1000)), "not readable after a get made room");
    cr_assert_eq(reap(pid), 0);
    cr_assert_eq(conc_mpqueue_put(q, "c", 1, 0), 0);
    cr_assert_eq(conc_mpqueue_put(q, "d", 1, 0), -EAGAIN);
    cr_assert_not(readable(fd, 0));
    cr_assert_eq(conc_mpqueue_shutdown(q, false), 0);
    cr_assert(readable(fd, 0), "not readable after shutdown");
    conc_mpqueue_free(q);
}

Test(mpqueue, conc_wait_entry, .timeout = 30)
{
    conc_mpqueue *q = mkq(CONC_MPQUEUE_SIMPLE, 0, 0, 0);
    int pp[2];
    cr_assert_eq(pipe2(pp, O_CLOEXEC), 0);
    unsigned char buf[16];
    cr_assert_eq(conc_mpqueue_get(q, buf, sizeof buf, 0), -EAGAIN);
    conc_waitable w[2] = {
        { .kind = CONC_WAIT_MPQUEUE, .u.mpqueue = q },
        { .kind = CONC_WAIT_FD, .u.fd = pp[0] },
    };
    cr_assert_eq(conc_wait(w, 2, 0), -EAGAIN);
    cr_assert_eq(conc_wait(w, 2, 0.02), -ETIMEDOUT);
    pid_t pid = fork_child(delayed_put, q);
    cr_assert_eq(conc_wait(w, 2, GUARD), 1);
    cr_assert(w[0].ready);
    cr_assert_not(w[1].ready);
    cr_assert_eq(reap(pid), 0);
    cr_assert_eq(conc_mpqueue_get(q, buf, sizeof buf, 0), 5);
    cr_assert_eq(conc_mpqueue_get(q, buf, sizeof buf, 0), -EAGAIN);
    cr_assert_eq(conc_wait(w, 2, 0), -EAGAIN, "ready after the message was taken");
    /* ready with a message already there, and after shutdown */
    cr_assert_eq(conc_mpqueue_put(q, "now", 3, 0), 0);
    cr_assert_eq(conc_wait(w, 1, 0), 1);
    cr_assert_eq(conc_mpqueue_get(q, buf, sizeof buf, 0), 3);
    cr_assert_eq(conc_mpqueue_get(q, buf, sizeof buf, 0), -EAGAIN);
    cr_assert_eq(conc_mpqueue_shutdown(q, false), 0);
    cr_assert_eq(conc_wait(w, 2, GUARD), 1);
    cr_assert(w[0].ready);
    conc_waitable bad = { .kind = CONC_WAIT_MPQUEUE, .u.mpqueue = NULL };
    cr_assert_eq(conc_wait(&bad, 1, 0), -EINVAL);
    close(pp[0]);
    close(pp[1]);
    conc_mpqueue_free(q);
}

/* ============================================================ leaks */

static void shm_snapshot(char ***names, size_t *n)
{
    DIR *d = opendir("/dev/shm");
    *names = NULL;
    *n = 0;
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        *names = realloc(*names, (*n + 1) * sizeof **names);
        cr_assert_not_null(*names);
        (*names)[(*n)++] = strdup(e->d_name);
    }
    closedir(d);
}

/* Could this /dev/shm entry be conc's, made by this process?  Other
 * programs (and the test runner itself) use /dev/shm too: only names that
 * mention conc or a queue count, and not another process's conc segments
 * (conc-PID-..., conctest-PID-...). */
static bool ours(const char *name)
{
    const char *prefixes[] = { "conc-", "conctest-" };
    for (int k = 0; k < 2; k++) {
        size_t l = strlen(prefixes[k]);
        if (strncmp(name, prefixes[k], l) == 0)
            return strtol(name + l, NULL, 10) == (long)getpid();
    }
    return strcasestr(name, "conc") || strcasestr(name, "mpq") || strcasestr(name, "queue");
}

static void shm_free(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

Test(mpqueue, no_leaks, .timeout = 30)
{
    /* warm up whatever conc sets up once per process */
    conc_mpqueue *q = mkq(CONC_MPQUEUE_QUEUE, 0, 0, 0);
    cr_assert_geq(conc_mpqueue_fd(q, POLLIN), 0);
    conc_mpqueue_free(q);
    /* and the process machinery (a first fork child) */
    {
        struct rshared *sh = rshared_new();
        q = mkq(CONC_MPQUEUE_QUEUE, 0, 0, 0);
        struct pctx pc = { .q = q, .s = sh, .prod = 0, .n = 1 };
        cr_assert_eq(finish_proc(start_proc(producer_proc, &pc, sizeof pc, CONC_START_FORK,
                                            NULL, 0)), 0);
        conc_mpqueue_free(q);
        rshared_free(sh);
    }

    char **before;
    size_t nbefore;
    shm_snapshot(&before, &nbefore);
    int base = count_fds();
    for (int i = 0; i < 30; i++) {
        conc_mpqueue_kind kind = (conc_mpqueue_kind)(i % 3);
        q = mkq(kind, kind == CONC_MPQUEUE_SIMPLE ? 0 : (size_t)i, 4096u << (i % 5), 0);
        int fds[CONC_MPQUEUE_NFDS];
        cr_assert_eq(conc_mpqueue_fds(q, fds), 0);
        char link[64], target[256];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fds[0]);
        ssize_t tl = readlink(link, target, sizeof target - 1);
        cr_assert_gt(tl, 0);
        target[tl] = 0;
        cr_assert(strncmp(target, "/memfd:", 7) == 0, "the ring is %s, not a memfd", target);
        if (i % 2)
            cr_assert_geq(conc_mpqueue_fd(q, POLLIN), 0);
        if (i % 3)
            cr_assert_geq(conc_mpqueue_fd(q, POLLOUT), 0);
        conc_mpqueue *a = attach_dup(q);
        cr_assert_eq(conc_mpqueue_put(a, "leak?", 5, 0), 0);
        unsigned char buf[8];
        cr_assert_eq(conc_mpqueue_get(q, buf, sizeof buf, 0), 5);
        if (i % 4 == 0)
            cr_assert_eq(conc_mpqueue_put(q, "left", 4, 0), 0);   /* freed with a message */
        if (i % 5 == 0)
            conc_mpqueue_shutdown(q, i % 2);
        conc_mpqueue_free(a);
        conc_mpqueue_free(q);
        /* failures allocate nothing */
        conc_mpqueue *f = NULL;
        cr_assert_eq(conc_mpqueue_new(&f, &(conc_mpqueue_opts){ .kind = CONC_MPQUEUE_SIMPLE,
                                                                .maxsize = 2 }), -EINVAL);
    }
    cr_assert_eq(count_fds(), base, "descriptors leaked");

    /* children using a queue leave no zombie (finish_proc checks) and no
     * descriptor behind */
    struct rshared *sh = rshared_new();
    q = mkq(CONC_MPQUEUE_QUEUE, 0, 0, 0);
    for (int i = 0; i < 4; i++) {
        struct pctx pc = { .q = q, .s = sh, .prod = (uint32_t)i, .n = 10 };
        cr_assert_eq(finish_proc(start_proc(producer_proc, &pc, sizeof pc, CONC_START_FORK,
                                            NULL, 0)), 0);
    }
    cr_assert_eq(conc_mpqueue_qsize(q), 40);
    conc_mpqueue_free(q);
    rshared_free(sh);
    cr_assert_eq(count_fds(), base, "descriptors leaked by children");

    char **after;
    size_t nafter;
    shm_snapshot(&after, &nafter);
    char left[256] = "";
    for (size_t i = 0; i < nafter && !left[0]; i++) {
        if (!ours(after[i]))
            continue;
        bool old = false;
        for (size_t k = 0; k < nbefore && !old; k++)
            old = strcmp(after[i], before[k]) == 0;
        if (!old)
            snprintf(left, sizeof left, "%s", after[i]);
    }
    shm_free(before, nbefore);
    shm_free(after, nafter);
    cr_assert_eq(left[0], 0, "new in /dev/shm: %s", left);
}

/* ========================================================= coroutines */

static conc_mpqueue *gq;
static atomic_long grc;

static void *greenlet_get(void *arg)
{
    unsigned char *buf = arg;
    atomic_store(&grc, 1000);
    ssize_t n = conc_mpqueue_get(gq, buf, 64, GUARD);
    atomic_store(&grc, (long)n);
    return (void *)(intptr_t)n;
}

static void *greenlet_put(void *arg)
{
    (void)arg;
    atomic_store(&grc, 1000);
    int r = conc_mpqueue_put(gq, "blocked", 7, GUARD);
    atomic_store(&grc, r);
    return (void *)(intptr_t)r;
}

/* Puts once the test's thread (running the hub) sleeps. */
static void *thread_put(void *arg)
{
    if (!test_thread_blocked(getpid()))
        return (void *)(intptr_t)-ETIMEDOUT;
    return (void *)(intptr_t)conc_mpqueue_put(arg, "from-thread", 11, GUARD);
}

static void check_woken(conc_greenlet *g, const unsigned char *buf, const char *want)
{
    cr_assert_eq(conc_greenlet_join(g, GUARD), 0);
    void *r;
    cr_assert_eq(conc_greenlet_result(g, &r), 0);
    cr_assert_eq((intptr_t)r, (intptr_t)strlen(want), "get returned %ld", (long)(intptr_t)r);
    cr_assert_eq(memcmp(buf, want, strlen(want)), 0);
    conc_greenlet_free(g);
}

Test(mpqueue_coro, get_woken_by_thread, .timeout = 30)
{
    gq = mkq(CONC_MPQUEUE_QUEUE, 0, 0, 0);
    unsigned char buf[64];
    conc_greenlet *g;
    cr_assert_eq(conc_greenlet_spawn(&g, greenlet_get, buf, NULL), 0);
    cr_assert_eq(conc_sleep(0.02), 0);          /* it runs and parks */
    cr_assert_eq(atomic_load(&grc), 1000, "the greenlet did not wait");
    cr_assert_not(conc_greenlet_dead(g));
    conc_thread *t;
    test_tid = gettid();
    cr_assert_eq(conc_thread_new(&t, thread_put, gq, NULL), 0);
    cr_assert_eq(conc_thread_start(t), 0);
    check_woken(g, buf, "from-thread");
    cr_assert_eq(conc_thread_join(t, GUARD), 0);
    void *r;
    cr_assert_eq(conc_thread_result(t, &r), 0);
    cr_assert_eq((intptr_t)r, 0);
    conc_thread_free(t);
    conc_mpqueue_free(gq);
}

Test(mpqueue_coro, get_woken_by_process, .timeout = 30)
{
    gq = mkq(CONC_MPQUEUE_QUEUE, 0, 0, 0);
    unsigned char buf[64];
    conc_greenlet *g;
    cr_assert_eq(conc_greenlet_spawn(&g, greenlet_get, buf, NULL), 0);
    cr_assert_eq(conc_sleep(0.02), 0);
    cr_assert_eq(atomic_load(&grc), 1000, "the greenlet did not wait");
    pid_t pid = fork_child(delayed_put, gq);
    check_woken(g, buf, "ready");
    cr_assert_eq(reap(pid), 0);
    conc_mpqueue_free(gq);
}

/* While one greenlet waits in a get, the others (and the main one) run. */
static atomic_int ticks;

static void *ticker(void *arg)
{
    (void)arg;
    for (int i = 0; i < 5; i++) {
        conc_sleep(0.005);
        atomic_fetch_add(&ticks, 1);
    }
    return NULL;
}

Test(mpqueue_coro, get_parks_only_the_greenlet, .timeout = 30)
{
    gq = mkq(CONC_MPQUEUE_QUEUE, 0, 0, 0);
    unsigned char buf[64];
    conc_greenlet *g, *t;
    cr_assert_eq(conc_greenlet_spawn(&g, greenlet_get, buf, NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&t, ticker, NULL, NULL), 0);
    cr_assert_eq(conc_greenlet_join(t, GUARD), 0);
    cr_assert_eq(atomic_load(&ticks), 5);
    cr_assert_not(conc_greenlet_dead(g));
    conc_greenlet_free(t);
    cr_assert_eq(conc_mpqueue_put(gq, "main", 4, 0), 0);
    check_woken(g, buf, "main");
    conc_mpqueue_free(gq);
}

Test(mpqueue_coro, kill_parked_get, .timeout = 30)
{
    gq = mkq(CONC_MPQUEUE_QUEUE, 0, 0, 0);
    unsigned char buf[64];
    conc_greenlet *g;
    cr_assert_eq(conc_greenlet_spawn(&g, greenlet_get, buf, NULL), 0);
    cr_assert_eq(conc_sleep(0.02), 0);
    cr_assert_eq(atomic_load(&grc), 1000, "the greenlet did not wait");
    cr_assert_eq(conc_greenlet_kill(g), 0);
    cr_assert_eq(conc_greenlet_join(g, GUARD), 0);
    cr_assert_eq(atomic_load(&grc), -ECANCELED);
    conc_greenlet_free(g);
    /* the queue is unharmed, and nothing waits on it any more */
    cr_assert_eq(conc_mpqueue_put(gq, "after", 5, 0), 0);
    cr_assert_eq(conc_mpqueue_qsize(gq), 1);
    cr_assert_eq(conc_mpqueue_get(gq, buf, sizeof buf, 0), 5);
    cr_assert_eq(memcmp(buf, "after", 5), 0);
    conc_mpqueue_free(gq);
}

Test(mpqueue_coro, kill_parked_put, .timeout = 30)
{
    gq = mkq(CONC_MPQUEUE_QUEUE, 1, 0, 0);
    cr_assert_eq(conc_mpqueue_put(gq, "full", 4, 0), 0);
    conc_greenlet *g;
    cr_assert_eq(conc_greenlet_spawn(&g, greenlet_put, NULL, NULL), 0);
    cr_assert_eq(conc_sleep(0.02), 0);
    cr_assert_eq(atomic_load(&grc), 1000, "the greenlet did not wait");
    cr_assert_eq(conc_greenlet_kill(g), 0);
    cr_assert_eq(conc_greenlet_join(g, GUARD), 0);
    cr_assert_eq(atomic_load(&grc), -ECANCELED);
    conc_greenlet_free(g);
    cr_assert_eq(conc_mpqueue_qsize(gq), 1, "the killed put added its message");
    unsigned char buf[8];
    cr_assert_eq(conc_mpqueue_get(gq, buf, sizeof buf, 0), 4);
    cr_assert_eq(memcmp(buf, "full", 4), 0);
    cr_assert_eq(conc_mpqueue_get(gq, buf, sizeof buf, 0), -EAGAIN);
    conc_mpqueue_free(gq);
}

/* The options struct can grow (see test_queue.c's options_size). */
Test(mpqueue, options_size, .timeout = 30)
{
    conc_mpqueue *q;
    conc_mpqueue_opts o = CONC_MPQUEUE_OPTS_INIT;
    cr_assert_eq(o.size, sizeof(conc_mpqueue_opts));
    o.maxsize = 7;
    cr_assert_eq(conc_mpqueue_new(&q, &o), 0);
    cr_assert_eq(conc_mpqueue_maxsize(q), 7);
    conc_mpqueue_free(q);
    o.size = (uint32_t)offsetof(conc_mpqueue_opts, maxsize);
    cr_assert_eq(conc_mpqueue_new(&q, &o), 0);
    cr_assert_eq(conc_mpqueue_maxsize(q), 0);
    conc_mpqueue_free(q);
    cr_assert_eq(conc_mpqueue_new(&q, &(conc_mpqueue_opts){ .maxsize = 9 }), 0);
    cr_assert_eq(conc_mpqueue_maxsize(q), 9);
    conc_mpqueue_free(q);
}
