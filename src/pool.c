/*
 * pool.c - the process pool's engine: workers, their channels, the pool's
 * thread that sends tasks, collects results and replaces dead workers.
 *
 * Every worker has a socket pair of its own.  The pool's thread writes
 * frames to it without blocking (a worker that does not read never stops
 * the others) and reads the worker's answers, which come in the order of
 * the tasks, so the pool knows which task a worker runs: the oldest it has
 * not answered.  While the queue is short a worker holds one task at a
 * time, so that a long task delays no other; while it is long, up to
 * PIPELINE_MAX (a share of the queue), so that short tasks stream without
 * a round trip each.  Idle workers are served first.
 *
 * Frames: struct frame, then len bytes.
 *   pool -> worker  FN      n = index; body: the function (fork: its
 *                           address; else module offset, st_dev, st_ino,
 *                           path)
 *                   INIT    n = initializer's index or NONE; body: initarg
 *                   TASK    n = items; body: u32 function index, u32 flags
 *                           (TASK_TELL), then per item u64 length + bytes
 *                   EXIT    end once everything before was answered
 *   worker -> pool  READY   after the initializer
 *                   RESULT  n = items; per item i32 status, u32 0,
 *                           u64 length + bytes
 * A worker sends the results it has in hand together while its next task
 * is already read, and counts the TASK frames it starts in a page it
 * shares with the pool: when it dies, the pool knows which task it was
 * running (that one fails, or is retried); the others it held go back to
 * the queue.
 * Everything a worker sends is checked before use; a worker that breaks
 * the protocol is killed (its task fails with -ECHILD).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>
#include "conc/pool.h"
#include "conc/process.h"
#include "forkserver.h"
#include "pool_internal.h"
#include "sys/memfd.h"
#include "sys/park.h"
#include "sys/wait.h"

enum { F_FN = 1, F_INIT = 2, F_TASK = 3, F_EXIT = 4, F_READY = 10, F_RESULT = 11 };

/* The TASK frame's flags (its second u32): TELL, the worker takes the
 * task's gate before it begins it (skips it when the pool closed it). */
#define TASK_TELL 1u

struct frame {
    uint32_t kind;
    uint32_t n;
    uint64_t len;
};

#define PIPELINE 1
#define PIPELINE_MAX 64
#define NONE UINT32_MAX
#define FN_TABLE_MAX 4096
#define FRAME_MAX ((uint64_t)CONC_POOL_ARG_MAX * 2 + (uint64_t)CONC__POOL_CHUNK_MAX * 16 + 64)

/* ------------------------------------------------------------- functions */

struct fnent {
    void *fn;
    unsigned char *def;         /* the FN frame's body */
    size_t deflen;
};

/* The body of an FN frame for fn: its address (fork), or module + offset. */
static int fn_describe(void *fn, bool fork_method, unsigned char **out, size_t *len)
{
    if (fork_method) {
        uint64_t a = (uint64_t)(uintptr_t)fn;
        unsigned char *b = malloc(sizeof a);
        if (!b)
            return -ENOMEM;
        memcpy(b, &a, sizeof a);
        *out = b;
        *len = sizeof a;
        return 0;
    }
    struct conc__fn_loc loc;
    if (conc__fn_locate(fn, &loc) != 0)
        return -EINVAL;
    size_t pl = strlen(loc.path);
    if (pl > 4096)
        return -EINVAL;
    uint64_t h[3] = { loc.offset, loc.dev, loc.ino };
    unsigned char *b = malloc(sizeof h + pl);
    if (!b)
        return -ENOMEM;
    memcpy(b, h, sizeof h);
    memcpy(b + sizeof h, loc.path, pl);
    *out = b;
    *len = sizeof h + pl;
    return 0;
}

/* ------------------------------------------------------------ the worker */

struct wconf {
    int32_t fd;                 /* the worker's end */
    int32_t close_fd;           /* fork: the pool's end, inherited */
    int32_t fork_method;
    int32_t started_fd;         /* a page: the TASK frames it started */
};

/* The pages a worker shares with the pool.
 *   started  the TASK frames (and slot calls) the worker started; the pool
 *            trusts it only within what the worker held
 *   door     the worker sleeps on it when it has nothing to read; the pool
 *            wakes it after it bumps req (a slot call) or sock (it wrote
 *            to the socket)
 *   answer   the caller of a slot call sleeps on it until the worker bumps
 *            ans (or the pool's thread sets alert: the worker sent
 *            something on its socket, or ended)
 *   gate     whether a task the worker holds may begin (TASK_TELL tasks)
 *   slot     a blocking apply's call (one item, its argument up to
 *            SLOT_ARG bytes) and its answer: status and the result inline
 *            (up to SLOT_RES bytes), or RESULT frame on the socket
 *            (mode SLOT_ON_SOCKET) for a larger one
 * Everything the worker writes here is checked before use. */
#define SLOT_ARG 16384u
#define SLOT_RES 16384u
/* A TASK_TELL task's gate: gate[k % GATE_N] for the worker's k-th task
 * (counted like started, 31 bits).  The worker takes it (k) before it
 * begins the task, the pool closes it (k | GATE_CLOSED) to cancel a task the
 * worker holds but has not begun; whoever changes it first wins.  A worker
 * holds at most PIPELINE_MAX tasks. */
#define GATE_N 128u
#define GATE_CLOSED 0x80000000u
#define SLOT_INLINE 1u
#define SLOT_ON_SOCKET 2u
struct wshared {
    uint32_t started;
    _Alignas(64) struct conc__park door;
    uint32_t req, sock;
    int32_t ccpu;               /* the CPU the caller posted req from */
    _Alignas(64) struct conc__park answer;
    uint32_t ans, alert;
    int32_t wcpu;               /* the CPU the worker answered on */
    _Alignas(64) uint32_t gate[GATE_N];
    _Alignas(64) uint32_t fn_idx, arg_len;
    int32_t status;
    uint32_t mode, res_len;
    unsigned char arg[SLOT_ARG];
    unsigned char res[SLOT_RES];
};
#define SHARED_MAP ((sizeof(struct wshared) + 4095) & ~(size_t)4095)

/* The worker's address of a function the pool described (NULL: unknown). */
static void *fn_resolve(const unsigned char *b, size_t len, bool fork_method)
{
    if (fork_method) {
        uint64_t a;
        if (len != sizeof a)
            return NULL;
        memcpy(&a, b, sizeof a);
        return (void *)(uintptr_t)a;
    }
    uint64_t h[3];
    if (len < sizeof h || len - sizeof h > 4096)
        return NULL;
    memcpy(h, b, sizeof h);
    char path[4097];
    memcpy(path, b + sizeof h, len - sizeof h);
    path[len - sizeof h] = 0;
    struct conc__fn_loc loc = { .path = path, .offset = h[0], .dev = h[1], .ino = h[2] };
    void *addr;
    return conc__fn_find(&loc, &addr) == 0 ? addr : NULL;
}

/* The worker's reads, through a buffer: a burst of small tasks costs one
 * read(2), not two per task.  The socket is read without blocking; when it
 * has nothing, the worker sleeps on its door (worker_idle), where slot
 * calls reach it too. */
struct wreader {
    int fd;
    size_t pos, end;
    unsigned char buf[65536];
};

struct wctx;
static int worker_idle(struct wctx *c);

static int wr_read(struct wctx *c, struct wreader *r, void *dst, size_t len)
{
    unsigned char *d = dst;
    while (len) {
        if (r->pos == r->end) {
            bool direct = len >= sizeof r->buf;
            ssize_t n = recv(r->fd, direct ? d : r->buf, direct ? len : sizeof r->buf,
                             MSG_DONTWAIT);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                if (worker_idle(c))
                    return -1;
                continue;
            }
            if (n <= 0)
                return -1;
            if (direct) {
                d += n;
                len -= (size_t)n;
                continue;
            }
            r->pos = 0;
            r->end = (size_t)n;
        }
        size_t k = r->end - r->pos < len ? r->end - r->pos : len;
        memcpy(d, r->buf + r->pos, k);
        r->pos += k;
        d += k;
        len -= k;
    }
    return 0;
}

static int write_full(int fd, const void *buf, size_t len)
{
    const unsigned char *p = buf;
    while (len) {
        ssize_t r = send(fd, p, len, MSG_NOSIGNAL);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        p += r;
        len -= (size_t)r;
    }
    return 0;
}

struct worker;
static bool worker_has_output_(const struct worker *w);

/* Appends to a growing buffer; false when out of memory. */
struct obuf {
    unsigned char *p;
    size_t len, cap;
};

static bool obuf_put(struct obuf *o, const void *src, size_t len)
{
    if (o->cap - o->len < len) {
        size_t cap = o->cap ? o->cap : 256;
        while (cap - o->len < len)
            cap *= 2;
        unsigned char *np = realloc(o->p, cap);
        if (!np)
            return false;
        o->p = np;
        o->cap = cap;
    }
    memcpy(o->p + o->len, src, len);
    o->len += len;
    return true;
}

/* Runs the items of a TASK frame and appends its RESULT frame to o (the
 * caller sends it). */
static int worker_task(void *fn, int skip, uint32_t n, const unsigned char *b, size_t len,
                       struct obuf *o)
{
    size_t start = o->len;
    struct frame fr = { F_RESULT, n, 0 };
    if (!obuf_put(o, &fr, sizeof fr))
        return -1;
    size_t off = 8;
    uint64_t data = 0;          /* result bytes so far: the frame stays under FRAME_MAX */
    for (uint32_t i = 0; i < n; i++) {
        uint64_t il;
        if (len - off < sizeof il)
            return -1;
        memcpy(&il, b + off, sizeof il);
        off += sizeof il;
        if (il > len - off)
            return -1;
        const void *arg = il ? b + off : NULL;
        off += il;
        void *res = NULL;
        size_t rlen = 0;
        int st = skip ? skip : fn ? ((conc_pool_fn)fn)(arg, (size_t)il, &res, &rlen) : -ENOENT;
        if (st > 0)
            st = -EPROTO;
        if (st == 0 && (rlen > CONC_POOL_ARG_MAX || (!res && rlen) ||
                        data + rlen > (uint64_t)CONC_POOL_ARG_MAX * 2))
            st = -EMSGSIZE;
        if (st != 0)
            rlen = 0;
        data += rlen;
        int32_t hs[2] = { st, 0 };
        uint64_t l64 = rlen;
        if (!obuf_put(o, hs, sizeof hs) || !obuf_put(o, &l64, sizeof l64) ||
            (rlen && !obuf_put(o, res, rlen))) {
            free(res);
            return -1;
        }
        free(res);
    }
    fr.len = o->len - start - sizeof fr;
    memcpy(o->p + start, &fr, sizeof fr);
    return 0;
}

/* True when r holds a whole frame, so that the next one needs no read. */
static bool wr_has_frame(const struct wreader *r)
{
    struct frame fr;
    if (r->end - r->pos < sizeof fr)
        return false;
    memcpy(&fr, r->buf + r->pos, sizeof fr);
    return fr.len <= r->end - r->pos - sizeof fr;
}

/* Results wait in o while more tasks are already here, up to this much:
 * one write then carries several (a result not yet sent when the worker
 * dies is that task's failure or retry, as if it had not run). */
#define RESULTS_BATCH (256u * 1024u)
/* ... and for at most this long before the next task starts. */
#define RESULTS_HOLD_NS 1000000

/* What the worker's loop and its idle wait share. */
struct wctx {
    int fd;
    struct wshared *sh;
    uint32_t nstarted;
    uint32_t seen_req, seen_sock;
    int hot_cpu;                /* the CPU it answered a slot call on since
                                 * it last slept, or -1 */
    void **fns;
    uint32_t nfns;
    struct obuf o;              /* results not sent yet */
    int code;                   /* the exit code when it must end */
};

/* Serves the slot call the pool posted: runs it, answers inline (or, for a
 * large result, with a RESULT frame on the socket), wakes the caller.
 * -1 when the worker must end. */
static int worker_slot(struct wctx *c)
{
    struct wshared *sh = c->sh;
    uint32_t idx = ld_relaxed(&sh->fn_idx), alen = ld_relaxed(&sh->arg_len);
    if (alen > SLOT_ARG) {
        c->code = 71;
        return -1;
    }
    void *fn = idx < c->nfns ? c->fns[idx] : NULL;
    __atomic_store_n(&sh->started, ++c->nstarted, __ATOMIC_RELEASE);
    void *res = NULL;
    size_t rlen = 0;
    int st = fn ? ((conc_pool_fn)fn)(alen ? sh->arg : NULL, alen, &res, &rlen) : -ENOENT;
    if (st > 0)
        st = -EPROTO;
    if (st == 0 && (rlen > CONC_POOL_ARG_MAX || (!res && rlen)))
        st = -EMSGSIZE;
    if (st != 0)
        rlen = 0;
    uint32_t mode = SLOT_INLINE;
    if (rlen > SLOT_RES) {
        struct {
            struct frame fr;
            int32_t hs[2];
            uint64_t len;
        } h = { { F_RESULT, 1, 16 + rlen }, { 0, 0 }, rlen };
        if (write_full(c->fd, &h, sizeof h) || write_full(c->fd, res, rlen)) {
            free(res);
            return -1;          /* the pool is gone */
        }
        mode = SLOT_ON_SOCKET;
    } else if (rlen) {
        memcpy(sh->res, res, rlen);
    }
    free(res);
    st_relaxed(&sh->status, st);
    st_relaxed(&sh->res_len, mode == SLOT_INLINE ? (uint32_t)rlen : 0);
    st_relaxed(&sh->mode, mode);
    c->hot_cpu = sched_getcpu();
    __atomic_store_n(&sh->wcpu, c->hot_cpu, __ATOMIC_RELAXED);
    __atomic_store_n(&sh->ans, c->seen_req, __ATOMIC_SEQ_CST);
    conc__park_wake(&sh->answer, INT_MAX, CONC__WAIT_SHARED);
    return 0;
}

/* Whether one side of a slot call, on CPU me (-1: unknown), may spin for
 * the other, whose last CPU *peer holds: only when that is not this one.  Two processes that spin
 * for each other on one CPU (a loaded machine, or a process confined to a
 * CPU) hand over only when the spinner's slice ends or it yields, and then
 * sleeping at once is faster.  The peer's CPU is a hint that may be stale
 * (a migration since) or anything a broken peer wrote: the worst it costs
 * is one spin of the policy's budget. */
static bool slot_spin(const int32_t *peer, int me)
{
    return me >= 0 && __atomic_load_n(peer, __ATOMIC_RELAXED) != me;
}

/* Waits until the socket may have something to read, serving slot calls
 * and sending held results meanwhile.  -1 when the worker must end. */
static int worker_idle(struct wctx *c)
{
    struct wshared *sh = c->sh;
    for (;;) {
        /* A call posted already (the usual case once woken) is served
         * without counting in and out of the door: two read-modify-writes
         * of the line the caller just wrote. */
        uint32_t posted = __atomic_load_n(&sh->req, __ATOMIC_ACQUIRE);
        if (posted != c->seen_req) {
            c->seen_req = posted;
            if (worker_slot(c))
                return -1;
            continue;
        }
        uint32_t key = conc__park_prepare(&sh->door);
        uint32_t req = __atomic_load_n(&sh->req, __ATOMIC_SEQ_CST);
        uint32_t sock = __atomic_load_n(&sh->sock, __ATOMIC_SEQ_CST);
        if (req != c->seen_req) {
            conc__park_cancel(&sh->door, key);
            c->seen_req = req;
            if (worker_slot(c))
                return -1;
            continue;
        }
        if (sock != c->seen_sock) {
            conc__park_cancel(&sh->door, key);
            c->seen_sock = sock;
            return 0;
        }
        if (c->o.len) {
            conc__park_cancel(&sh->door, key);
            if (write_full(c->fd, c->o.p, c->o.len))
                return -1;
            c->o.len = 0;
            continue;
        }
        /* Right after answering a slot call, the worker spins (the
         * library's spin policy) for the caller's next one, when that
         * caller posted from another CPU (slot_spin): a caller of apply in
         * a loop posts again within a microsecond, and a sleep there costs
         * a wake-up on each side of every round trip, a CPU's way out of
         * idle among them (tens of microseconds on a virtual machine).
         * Otherwise an idle worker gives its CPU away at once (the caller
         * it waits for may need it).  No timer either (a timed sleep arms
         * one per call, a tenth of a round trip): whatever the pool wants
         * from it wakes it (a slot call, a write to its socket, its EXIT
         * frame), the pool ends it by killing it, and it dies with the
         * pool's process (a daemon, PR_SET_PDEATHSIG). */
        unsigned f = CONC__WAIT_SHARED | CONC__WAIT_ONE;
        if (!slot_spin(&sh->ccpu, c->hot_cpu))
            f |= CONC__PARK_NOSPIN;
        c->hot_cpu = -1;
        conc__park_wait(&sh->door, key, CONC_NO_DEADLINE, f, 0);
    }
}

static int worker_main(const void *arg, size_t alen)
{
    struct wconf cf;
    if (alen != sizeof cf)
        return 70;
    memcpy(&cf, arg, sizeof cf);
    if (cf.close_fd >= 0)
        close(cf.close_fd);
    void *pg = mmap(NULL, SHARED_MAP, PROT_READ | PROT_WRITE, MAP_SHARED, cf.started_fd, 0);
    close(cf.started_fd);
    if (pg == MAP_FAILED)
        return 71;
    struct wctx c = { .fd = cf.fd, .sh = pg, .hot_cpu = -1 };
    struct wreader *rd = malloc(sizeof *rd);
    if (!rd)
        return 71;
    rd->fd = c.fd;
    rd->pos = rd->end = 0;
    unsigned char *b = NULL;
    int64_t held_since = 0;
    for (;;) {
        struct frame fr;
        if (c.o.len && (c.o.len >= RESULTS_BATCH || !wr_has_frame(rd) ||
                        conc_now() - held_since >= RESULTS_HOLD_NS)) {
            if (write_full(c.fd, c.o.p, c.o.len))
                break;                  /* the pool is gone */
            c.o.len = 0;
        }
        if (wr_read(&c, rd, &fr, sizeof fr))
            break;                      /* the pool is gone */
        if (fr.len > FRAME_MAX) {
            c.code = 71;
            break;
        }
        free(b);
        b = malloc(fr.len ? fr.len : 1);
        if (!b || wr_read(&c, rd, b, fr.len)) {
            if (!b)
                c.code = 71;
            break;
        }
        if (fr.kind == F_FN) {
            if (fr.n != c.nfns || c.nfns >= FN_TABLE_MAX) {
                c.code = 71;
                break;
            }
            void **nf = realloc(c.fns, (c.nfns + 1) * sizeof *c.fns);
            if (!nf) {
                c.code = 71;
                break;
            }
            c.fns = nf;
            c.fns[c.nfns++] = fn_resolve(b, fr.len, cf.fork_method);
        } else if (fr.kind == F_INIT) {
            if (fr.n != NONE) {
                if (fr.n >= c.nfns || !c.fns[fr.n]) {
                    c.code = 72;
                    break;
                }
                int r = ((conc_pool_init_fn)c.fns[fr.n])(fr.len ? b : NULL, fr.len);
                if (r != 0) {
                    c.code = r & 0xff;
                    break;
                }
            }
            struct frame rf = { F_READY, 0, 0 };
            if (!obuf_put(&c.o, &rf, sizeof rf))
                break;
        } else if (fr.kind == F_TASK) {
            uint32_t idx, flags;
            if (fr.len < 8 || fr.n == 0 || fr.n > CONC__POOL_CHUNK_MAX) {
                c.code = 71;
                break;
            }
            memcpy(&idx, b, sizeof idx);
            memcpy(&flags, b + 4, sizeof flags);
            void *fn = idx < c.nfns ? c.fns[idx] : NULL;
            bool first = c.o.len == 0;
            /* Before it runs: the pool knows which of its tasks ran when
             * it dies with their results in hand. */
            uint32_t k = ++c.nstarted;
            __atomic_store_n(&c.sh->started, k, __ATOMIC_RELEASE);
            int skip = 0;
            if (flags & TASK_TELL) {
                /* Begin it only when the pool did not cancel it first. */
                uint32_t ord = k & ~GATE_CLOSED, *g = &c.sh->gate[k % GATE_N];
                uint32_t v = __atomic_load_n(g, __ATOMIC_ACQUIRE);
                if (v == (ord | GATE_CLOSED) ||
                    !__atomic_compare_exchange_n(g, &v, ord, false, __ATOMIC_SEQ_CST,
                                                 __ATOMIC_ACQUIRE)) {
                    skip = -ECANCELED;
                }
            }
            if (worker_task(fn, skip, fr.n, b, fr.len, &c.o))
                break;
            if (first)
                held_since = conc_now();
        } else if (fr.kind == F_EXIT) {
            if (c.o.len && write_full(c.fd, c.o.p, c.o.len))
                break;
            break;
        } else {
            c.code = 71;
            break;
        }
    }
    free(b);
    free(c.o.p);
    free(c.fns);
    free(rd);
    close(c.fd);
    return c.code;
}

/* ----------------------------------------------------------- the parent */

/* Who may touch a worker's fields: the pool's thread, nobody (FREE: the
 * pool's thread takes it back when it needs it, a caller of apply may
 * take it when it is idle), or one caller of apply that talks to it
 * directly (conc__pool_run_direct). */
#define W_THREAD 0u
#define W_FREE 1u
#define W_CALLER 2u

struct worker {
    uint32_t owner;
    int idx;
    int epfd;                   /* the pool's epoll set */
    bool ep_out;                /* registered for EPOLLOUT too */
    conc_process *proc;
    int fd, pidfd;
    bool ready, want_exit, exit_sent;
    unsigned quota;             /* tasks it may still be given */
    uint32_t known;             /* FN frames sent */
    struct conc__pool_task *head, *tail;    /* handed to it, oldest first */
    unsigned nout;
    struct conc__pool_task *wtask;          /* next to write */
    size_t woff;
    struct obuf ctl;            /* control frames to write first */
    size_t ctl_off;
    unsigned char *rbuf;
    size_t rlen, rcap;
    struct wshared *sh;         /* the pages it shares with the pool */
    uint32_t req_seq;           /* slot calls posted */
    uint32_t issued;            /* tasks given (TASK frames and slot calls) */
    bool parked;                /* its socket is not watched (worker_park) */
    uint32_t answered;          /* RESULT frames read from it */
};

struct conc_pool {
    struct conc__pool_engine e;
    conc_pool_opts o;
    unsigned char *initarg;
    bool fork_method;
    pthread_mutex_t mu;
    /* under mu */
    struct conc__pool_queue q;
    struct fnent *fns;
    uint32_t nfns, capfns;
    uint32_t init_idx;
    bool closed, terminating;
    /* */
    int evfd;
    int epfd;                   /* the pool's thread waits on it */
    uint32_t wake_pending;
    pthread_t thread;
    struct worker *w;           /* the pool's thread's */
    int nw;
    int start_err;
};

__thread const struct conc__pool_engine *conc__pool_cb_engine;

bool conc__pool_in_callback(const struct conc__pool_engine *e)
{
    return e && conc__pool_cb_engine == e;
}

struct conc__pool_engine *conc__pool_engine(conc_pool *p)
{
    return p ? &p->e : NULL;
}

int conc_pool_processes(const conc_pool *p)
{
    return p ? p->e.workers : 0;
}

static void wake_thread(conc_pool *p)
{
    if (!__atomic_exchange_n(&p->wake_pending, 1, __ATOMIC_SEQ_CST)) {
        uint64_t one = 1;
        ssize_t r = write(p->evfd, &one, sizeof one);
        (void)r;
    }
}

/* Index of fn in the table (added when new); under mu. */
static int fn_index(conc_pool *p, void *fn, uint32_t *idx)
{
    for (uint32_t i = 0; i < p->nfns; i++) {
        if (p->fns[i].fn == fn) {
            *idx = i;
            return 0;
        }
    }
    if (p->nfns >= FN_TABLE_MAX)
        return -ENOMEM;
    if (p->nfns == p->capfns) {
        uint32_t cap = p->capfns ? p->capfns * 2 : 8;
        struct fnent *nf = realloc(p->fns, cap * sizeof *nf);
        if (!nf)
            return -ENOMEM;
        p->fns = nf;
        p->capfns = cap;
    }
    struct fnent *f = &p->fns[p->nfns];
    int r = fn_describe(fn, p->fork_method, &f->def, &f->deflen);
    if (r)
        return r;
    f->fn = fn;
    *idx = p->nfns++;
    return 0;
}

int conc__pool_task_prepare(struct conc__pool_task *t, conc_pool_fn fn,
                            const conc_pool_item *items, size_t n)
{
    if (!t || !fn || !items || n == 0 || n > CONC__POOL_CHUNK_MAX)
        return -EINVAL;
    size_t total = sizeof(struct frame) + 8;
    for (size_t i = 0; i < n; i++) {
        if ((!items[i].arg && items[i].len) || items[i].len > CONC_POOL_ARG_MAX)
            return -EINVAL;
        total += 8 + items[i].len;
    }
    if (total - sizeof(struct frame) > FRAME_MAX)
        return -EINVAL;
    unsigned char *b = malloc(total);
    if (!b)
        return -ENOMEM;
    struct frame fr = { F_TASK, (uint32_t)n, total - sizeof fr };
    memcpy(b, &fr, sizeof fr);
    memset(b + sizeof fr, 0, 8);
    size_t off = sizeof fr + 8;
    for (size_t i = 0; i < n; i++) {
        uint64_t l = items[i].len;
        memcpy(b + off, &l, sizeof l);
        off += sizeof l;
        if (l)
            memcpy(b + off, items[i].arg, l);
        off += l;
    }
    conc__pool_task_init(t, (void *)fn, b, total, (uint32_t)n);
    return 0;
}

void conc__pool_task_release(struct conc__pool_task *t)
{
    if (!t)
        return;
    free(t->buf);
    t->buf = NULL;
}

static int pool_submit(struct conc__pool_engine *e, struct conc__pool_task *t)
{
    conc_pool *p = (conc_pool *)e;
    if (!t || !t->buf || !t->done)
        return -EINVAL;
    pthread_mutex_lock(&p->mu);
    /* The state under mu: a cancel may come before the submit. */
    uint32_t idx;
    int r = conc__pool_admit(t, p->closed);
    if (r == 0)
        r = fn_index(p, t->fn, &idx);
    if (r) {
        pthread_mutex_unlock(&p->mu);
        return r;
    }
    memcpy(t->buf + sizeof(struct frame), &idx, sizeof idx);
    st_relaxed(&t->state, CONC__TASK_QUEUED);
    conc__pool_q_push_back(&p->q, t);
    pthread_mutex_unlock(&p->mu);
    wake_thread(p);
    return 0;
}

static int pool_cancel(struct conc__pool_engine *e, struct conc__pool_task *t)
{
    conc_pool *p = (conc_pool *)e;
    pthread_mutex_lock(&p->mu);
    /* In the queue, or new (submit refuses it then), or held by a worker: */
    int r = conc__pool_take_back(&p->q, t);
    struct worker *w = t->worker;
    if (r && ld_relaxed(&t->state) == CONC__TASK_SENT && t->started && w && w->sh) {
        /* A worker holds it: close its gate unless the worker took it.
         * (The worker's pages stay mapped while it holds the task: its end
         * takes mu before it lets the tasks go.) */
        uint32_t *g = &w->sh->gate[t->ord % GATE_N];
        uint32_t v = __atomic_load_n(g, __ATOMIC_ACQUIRE);
        if (v != t->ord && v != (t->ord | GATE_CLOSED) &&
            __atomic_compare_exchange_n(g, &v, t->ord | GATE_CLOSED, false, __ATOMIC_SEQ_CST,
                                        __ATOMIC_ACQUIRE))
            r = 1;
    }
    pthread_mutex_unlock(&p->mu);
    return r;
}

/* Whether a worker began t (its gate taken); a task waiting in the queue,
 * or at a worker ahead, has not. */
static bool pool_begun(struct conc__pool_engine *e, struct conc__pool_task *t)
{
    conc_pool *p = (conc_pool *)e;
    pthread_mutex_lock(&p->mu);
    struct worker *w = t->worker;
    bool r = ld_relaxed(&t->state) == CONC__TASK_SENT && t->started && w && w->sh &&
             __atomic_load_n(&w->sh->gate[t->ord % GATE_N], __ATOMIC_ACQUIRE) == t->ord;
    pthread_mutex_unlock(&p->mu);
    return r;
}

bool conc__pool_begun(struct conc__pool_engine *e, struct conc__pool_task *t)
{
    return e && t && e->begun ? e->begun(e, t) : false;
}

int conc__pool_submit(struct conc__pool_engine *e, struct conc__pool_task *t)
{
    return e ? e->submit(e, t) : -EINVAL;
}

int conc__pool_cancel(struct conc__pool_engine *e, struct conc__pool_task *t)
{
    return e && t ? e->cancel(e, t) : -EINVAL;
}

/* Reports t done with the same status for every item (n == 1 stands for
 * all of them, see pool_internal.h). */
static void task_fail(struct conc__pool_task *t, int status, int exitcode)
{
    struct conc__pool_outcome one = { status, exitcode, NULL, 0 };
    st_release(&t->state, CONC__TASK_DONE);
    t->done(t, &one, 1);
}

/* --------------------------------------------------------- the pool thread */

/* Registers (op EPOLL_CTL_ADD / MOD) or removes (DEL) w's descriptors in
 * the pool's epoll set; the pidfd only with ADD and DEL. */
static void worker_watch(struct worker *w, int op)
{
    if (w->fd < 0)
        return;
    bool out = op != EPOLL_CTL_DEL && worker_has_output_(w);
    struct epoll_event ev = { .events = EPOLLIN | (out ? EPOLLOUT : 0),
                              .data.u64 = (uint64_t)w->idx * 2 };
    epoll_ctl(w->epfd, op, w->fd, &ev);
    w->ep_out = out;
    if (op != EPOLL_CTL_MOD) {
        struct epoll_event pe = { .events = EPOLLIN, .data.u64 = (uint64_t)w->idx * 2 + 1 };
        epoll_ctl(w->epfd, op, w->pidfd, &pe);
    }
}

/* Stops (park) and resumes (unpark) the watch for what w sends; epoll
 * still reports its end (EPOLLHUP), and its pidfd stays watched. */
static void worker_park(struct worker *w)
{
    struct epoll_event ev = { .events = 0, .data.u64 = (uint64_t)w->idx * 2 };
    epoll_ctl(w->epfd, EPOLL_CTL_MOD, w->fd, &ev);
    w->parked = true;
    w->ep_out = false;
}

static void worker_unpark(struct worker *w)
{
    if (w->parked && w->fd >= 0) {
        w->parked = false;
        worker_watch(w, EPOLL_CTL_MOD);
    }
}

/* Takes w for the pool's thread: false while a caller has it. */
static bool worker_acquire(struct worker *w)
{
    uint32_t o = W_FREE;
    if (__atomic_load_n(&w->owner, __ATOMIC_ACQUIRE) == W_THREAD)
        return true;
    if (!__atomic_compare_exchange_n(&w->owner, &o, W_THREAD, false, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE))
        return false;
    worker_unpark(w);
    return true;
}

static int worker_start(conc_pool *p, struct worker *w)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
        return -errno;
    int fl = fcntl(sv[0], F_GETFL);
    fcntl(sv[0], F_SETFL, fl | O_NONBLOCK);
    int mfd = conc__memfd_data("conc-pool-worker", MFD_CLOEXEC);
    void *pg = MAP_FAILED;
    if (mfd < 0 || ftruncate(mfd, (off_t)SHARED_MAP) ||
        (pg = mmap(NULL, SHARED_MAP, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0)) ==
            MAP_FAILED) {
        int e = mfd < 0 ? mfd : -errno;
        if (mfd >= 0)
            close(mfd);
        close(sv[0]);
        close(sv[1]);
        return e;
    }
    struct wconf c = { sv[1], p->fork_method ? sv[0] : -1, p->fork_method, mfd };
    int pass[2] = { sv[1], mfd };
    conc_process_opts po = CONC_PROCESS_OPTS_INIT;
    po.daemon = CONC_DAEMON;
    po.method = p->o.method;
    po.pass_fds = pass;
    po.npass_fds = 2;
    conc_process *proc;
    int r = conc_process_new(&proc, worker_main, &c, sizeof c, &po);
    if (r == 0) {
        r = conc_process_start(proc);
        if (r)
            conc_process_free(proc);
    }
    close(sv[1]);
    close(mfd);
    if (r) {
        munmap(pg, SHARED_MAP);
        close(sv[0]);
        return r;
    }
    int idx = w->idx;
    memset(w, 0, sizeof *w);
    w->idx = idx;
    w->epfd = p->epfd;
    w->proc = proc;
    w->fd = sv[0];
    w->sh = pg;
    w->pidfd = conc_process_sentinel(proc);
    w->quota = p->o.maxtasksperchild ? p->o.maxtasksperchild : UINT_MAX;
    /* The initializer goes first. */
    pthread_mutex_lock(&p->mu);
    bool ok = true;
    for (; w->known < p->nfns && ok; w->known++) {
        struct frame fr = { F_FN, w->known, p->fns[w->known].deflen };
        ok = obuf_put(&w->ctl, &fr, sizeof fr) &&
             obuf_put(&w->ctl, p->fns[w->known].def, p->fns[w->known].deflen);
    }
    struct frame in = { F_INIT, p->init_idx, p->o.initializer ? p->o.initarg_len : 0 };
    ok = ok && obuf_put(&w->ctl, &in, sizeof in) &&
         (!in.len || obuf_put(&w->ctl, p->initarg, in.len));
    pthread_mutex_unlock(&p->mu);
    if (!ok) {
        conc_process_kill(proc);
        conc_process_join(proc, CONC_FOREVER);
        conc_process_free(proc);
        close(w->fd);
        munmap(w->sh, SHARED_MAP);
        free(w->ctl.p);
        memset(w, 0, sizeof *w);
        w->idx = idx;
        w->epfd = p->epfd;
        w->fd = w->pidfd = -1;
        return -ENOMEM;
    }
    worker_watch(w, EPOLL_CTL_ADD);
    return 0;
}

/* Hands queued tasks to w while it has room; under mu. */
static void dispatch(conc_pool *p, struct worker *w, size_t depth)
{
    while (w->proc && !w->want_exit && w->nout < depth && w->quota > 0 && p->q.head) {
        struct conc__pool_task *t = p->q.head;
        uint32_t idx;
        memcpy(&idx, t->buf + sizeof(struct frame), sizeof idx);
        bool ok = true;
        for (; w->known <= idx && ok; w->known++) {
            struct frame fr = { F_FN, w->known, p->fns[w->known].deflen };
            ok = obuf_put(&w->ctl, &fr, sizeof fr) &&
                 obuf_put(&w->ctl, p->fns[w->known].def, p->fns[w->known].deflen);
        }
        if (!ok)
            return;             /* out of memory: try again later */
        conc__pool_q_unlink(&p->q, t);
        st_relaxed(&t->state, CONC__TASK_SENT);
        /* A task whose start is reported waits at its gate (open: 0 or an
         * older number) until the worker begins it. */
        uint32_t flags = t->started ? TASK_TELL : 0;
        memcpy(t->buf + sizeof(struct frame) + 4, &flags, sizeof flags);
        t->ord = ++w->issued & ~GATE_CLOSED;
        t->worker = w;
        t->next = NULL;
        if (w->tail)
            w->tail->next = t;
        else
            w->head = t;
        w->tail = t;
        if (!w->wtask)
            w->wtask = t;
        w->nout++;
        if (--w->quota == 0)
            w->want_exit = true;
    }
}

/* Writes what w has pending, control frames first, then the tasks it
 * was handed, as many as fit in one sendmsg(2); false when the worker's
 * channel broke. */
#define FLUSH_IOV 64
static bool worker_flush_(struct worker *w, bool *sent)
{
    for (;;) {
        if (!w->wtask && w->ctl_off == w->ctl.len && w->want_exit && !w->exit_sent) {
            struct frame fr = { F_EXIT, 0, 0 };
            if (!obuf_put(&w->ctl, &fr, sizeof fr))
                return true;
            w->exit_sent = true;
        }
        struct iovec iov[FLUSH_IOV];
        int n = 0;
        if (w->woff == 0 && w->ctl_off < w->ctl.len)
            iov[n++] = (struct iovec){ w->ctl.p + w->ctl_off, w->ctl.len - w->ctl_off };
        /* A task half written ends before pending control frames go. */
        int max = w->woff && w->ctl_off < w->ctl.len ? 1 : FLUSH_IOV;
        size_t off = w->woff;
        for (struct conc__pool_task *t = w->wtask; t && n < max; t = t->next) {
            iov[n++] = (struct iovec){ t->buf + off, t->buflen - off };
            off = 0;
        }
        if (n == 0)
            return true;
        struct msghdr mh = { .msg_iov = iov, .msg_iovlen = (size_t)n };
        ssize_t r = sendmsg(w->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN || errno == EWOULDBLOCK;
        }
        size_t left = (size_t)r;
        *sent = true;
        if (w->woff == 0 && w->ctl_off < w->ctl.len) {
            size_t k = w->ctl.len - w->ctl_off;
            if (left < k) {
                w->ctl_off += left;
                continue;
            }
            left -= k;
            w->ctl_off = w->ctl.len = 0;
        }
        while (left && w->wtask) {
            size_t k = w->wtask->buflen - w->woff;
            if (left < k) {
                w->woff += left;
                left = 0;
                break;
            }
            left -= k;
            w->wtask = w->wtask->next;
            w->woff = 0;
        }
    }
}

/* Tells w that its socket has something: it reads the socket only when
 * told (it sleeps on its door, where slot calls reach it too). */
static void worker_kick(struct worker *w)
{
    __atomic_fetch_add(&w->sh->sock, 1, __ATOMIC_SEQ_CST);
    conc__park_wake(&w->sh->door, 1, CONC__WAIT_SHARED);
}

static bool worker_flush(struct worker *w)
{
    bool sent = false;
    bool ok = worker_flush_(w, &sent);
    if (sent)
        worker_kick(w);
    return ok;
}

static bool worker_has_output(const struct worker *w)
{
    return w->ctl_off < w->ctl.len || w->wtask || (w->want_exit && !w->exit_sent);
}

static bool worker_has_output_(const struct worker *w)
{
    return worker_has_output(w);
}

/* Handles the frames in w's read buffer; false on a protocol error. */
static bool worker_parse(struct worker *w)
{
    size_t off = 0;
    bool ok = true;
    while (w->rlen - off >= sizeof(struct frame)) {
        struct frame fr;
        memcpy(&fr, w->rbuf + off, sizeof fr);
        if (fr.len > FRAME_MAX) {
            ok = false;
            break;
        }
        if (w->rlen - off - sizeof fr < fr.len)
            break;
        const unsigned char *b = w->rbuf + off + sizeof fr;
        if (fr.kind == F_READY) {
            if (w->ready) {
                ok = false;     /* said once, after the initializer */
                break;
            }
            w->ready = true;
        } else if (fr.kind == F_RESULT) {
            struct conc__pool_task *t = w->head;
            if (!t || fr.n != t->nitems || t == w->wtask) {
                ok = false;
                break;
            }
            struct conc__pool_outcome one, *o = &one;
            if (fr.n > 1 && !(o = calloc(fr.n, sizeof *o))) {
                ok = false;     /* cannot keep it: treated as a broken worker */
                break;
            }
            size_t pos = 0;
            for (uint32_t i = 0; i < fr.n && ok; i++) {
                int32_t hs[2];
                uint64_t l;
                if (fr.len - pos < sizeof hs + sizeof l) {
                    ok = false;
                    break;
                }
                memcpy(hs, b + pos, sizeof hs);
                memcpy(&l, b + pos + sizeof hs, sizeof l);
                pos += sizeof hs + sizeof l;
                if (l > fr.len - pos || l > CONC_POOL_ARG_MAX || hs[0] > 0 ||
                    (hs[0] != 0 && l != 0)) {
                    ok = false;
                    break;
                }
                o[i] = (struct conc__pool_outcome){ hs[0], 0, (void *)(b + pos), (size_t)l };
                pos += l;
            }
            if (ok && pos != fr.len)
                ok = false;
            if (!ok) {
                if (o != &one)
                    free(o);
                break;
            }
            w->head = t->next;
            if (!w->head)
                w->tail = NULL;
            w->nout--;
            w->answered++;
            t->next = NULL;
            st_release(&t->state, CONC__TASK_DONE);
            t->done(t, o, fr.n);
            if (o != &one)
                free(o);
        } else {
            ok = false;
            break;
        }
        off += sizeof fr + fr.len;
    }
    memmove(w->rbuf, w->rbuf + off, w->rlen - off);
    w->rlen -= off;
    return ok;
}

/* Reads what w sent (until it has nothing more, or with answered_only
 * until it owes no answer); false when the channel is at its end or
 * broke. */
/* The most one look at a worker reads: one that sends without end never
 * holds the pool's thread (epoll reports it again). */
#define READ_TURN (4u << 20)

static bool worker_read_(struct worker *w, bool answered_only)
{
    for (size_t turn = 0; turn < READ_TURN;) {
        if (w->rcap - w->rlen < 65536) {
            size_t cap = w->rcap ? w->rcap * 2 : 131072;
            unsigned char *nb = realloc(w->rbuf, cap);
            if (!nb)
                return false;
            w->rbuf = nb;
            w->rcap = cap;
        }
        ssize_t r = recv(w->fd, w->rbuf + w->rlen, w->rcap - w->rlen, MSG_DONTWAIT);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK;
        if (r == 0)
            return false;
        w->rlen += (size_t)r;
        turn += (size_t)r;
        if (!worker_parse(w))
            return false;
        /* Keep the buffer small when idle. */
        if (w->rlen == 0 && w->rcap > (1u << 20)) {
            free(w->rbuf);
            w->rbuf = NULL;
            w->rcap = 0;
        }
        if (answered_only && !w->head)
            return true;
    }
    return true;
}

static bool worker_read(struct worker *w)
{
    return worker_read_(w, false);
}

static void worker_release(struct worker *w)
{
    if (w->fd >= 0) {
        /* Explicitly: a fork worker's copy of the socket keeps it open. */
        worker_watch(w, EPOLL_CTL_DEL);
        close(w->fd);
    }
    free(w->ctl.p);
    free(w->rbuf);
    if (w->sh)
        munmap(w->sh, SHARED_MAP);
    conc_process_free(w->proc);
    int idx = w->idx, epfd = w->epfd;
    memset(w, 0, sizeof *w);
    w->idx = idx;
    w->epfd = epfd;
    w->fd = -1;
    w->pidfd = -1;
}

/* w ended (or must end): kill and reap it, settle its tasks. */
static void worker_end(conc_pool *p, struct worker *w, int fail_status)
{
    /* Whatever it answered before it ended counts: read once it is gone,
     * so that one that sends without end cannot hold us here. */
    conc_process_kill(w->proc);
    conc_process_join(w->proc, CONC_FOREVER);
    worker_read(w);
    int code = 0;
    conc_process_exitcode(w->proc, &code);
    /* Of the tasks it started and did not answer, the last one is the one
     * it was running when it ended: that one fails (or runs again, with
     * retries).  The others had finished, their results still in hand
     * (sent in one write with the next ones): they go back to the queue
     * with the tasks it never started, so that a dead worker fails only the
     * task it was running.  Its count is checked: it cannot exceed what it
     * held. */
    uint32_t ran = __atomic_load_n(&w->sh->started, __ATOMIC_ACQUIRE) - w->answered;
    if (ran > w->nout)
        ran = w->nout;
    /* Under mu, in one step: each task leaves the worker (a cancel no
     * longer looks at its gate) and is either settled below or back at the
     * head of the queue, in its order, QUEUED at once: a cancel from now on
     * takes it back, even from a callback of the task that failed. */
    struct conc__pool_task *settle = NULL, **settle_end = &settle, *after = NULL;
    struct conc__pool_task *failed = NULL;  /* the one it was running, when it fails */
    uint32_t k = 0;
    pthread_mutex_lock(&p->mu);
    for (struct conc__pool_task *u = w->head, *nx; u; u = nx) {
        nx = u->next;
        u->next = u->prev = NULL;
        u->worker = NULL;
        bool running = ++k == ran;
        bool fails = fail_status == -EPIPE ||
                     (running && (fail_status != -ECHILD || u->tries >= p->o.retries));
        if (fails && running)
            failed = u;
        /* A task cancelled while the worker held it is not run elsewhere. */
        if (fails || (u->started && !u->told &&
                      __atomic_load_n(&w->sh->gate[u->ord % GATE_N], __ATOMIC_ACQUIRE) ==
                          (u->ord | GATE_CLOSED))) {
            *settle_end = u;
            settle_end = &u->next;
            continue;
        }
        if (running)
            u->tries++;
        st_relaxed(&u->state, CONC__TASK_QUEUED);
        conc__pool_q_insert_after(&p->q, after, u);
        after = u;
    }
    w->head = w->tail = NULL;
    w->nout = 0;
    pthread_mutex_unlock(&p->mu);
    worker_release(w);
    for (struct conc__pool_task *u = settle, *nx; u; u = nx) {
        nx = u->next;
        u->next = NULL;
        if (fail_status == -EPIPE)
            task_fail(u, -EPIPE, CONC__POOL_TERMINATED);
        else if (u == failed)
            task_fail(u, fail_status, code);
        else
            task_fail(u, -ECANCELED, 0);
    }
}

/* Fails every queued task (terminate, or no worker can be started). */
static void fail_queue(conc_pool *p, int status)
{
    pthread_mutex_lock(&p->mu);
    struct conc__pool_task *q = conc__pool_q_take_all(&p->q);
    pthread_mutex_unlock(&p->mu);
    for (struct conc__pool_task *t = q, *nx; t; t = nx) {
        nx = t->next;
        t->next = t->prev = NULL;
        task_fail(t, status, status == -EPIPE ? CONC__POOL_TERMINATED : 0);
    }
}

#define EVENTS_MAX 64

/* Tells the caller of apply that has w (sleeping on its slot) to look at
 * w's socket and pidfd. */
static void worker_alert(struct worker *w)
{
    struct wshared *sh = w->sh;
    if (sh) {
        __atomic_store_n(&sh->alert, 1, __ATOMIC_SEQ_CST);
        conc__park_wake(&sh->answer, INT_MAX, CONC__WAIT_SHARED);
    }
}

static void *pool_thread(void *arg)
{
    conc_pool *p = arg;
    conc__pool_cb_engine = &p->e;
    struct epoll_event evs[EVENTS_MAX];
    int64_t retry_at = CONC_NO_DEADLINE;
    int start_failures = 0;
    for (;;) {
        __atomic_store_n(&p->wake_pending, 0, __ATOMIC_SEQ_CST);
        pthread_mutex_lock(&p->mu);
        bool term = p->terminating, closed = p->closed;
        bool owned[CONC_POOL_MAX_WORKERS];
        for (int i = 0; i < p->nw; i++)
            owned[i] = worker_acquire(&p->w[i]);
        /* Level by level: every idle worker gets a task before any gets a
         * second one. */
        size_t depth = p->q.len / (size_t)p->nw;
        depth = depth < PIPELINE ? PIPELINE : depth > PIPELINE_MAX ? PIPELINE_MAX : depth;
        for (size_t level = 1; level <= depth && p->q.head && !term; level++)
            for (int i = 0; i < p->nw; i++)
                if (owned[i] && p->w[i].proc)
                    dispatch(p, &p->w[i], level);
        bool queue_empty = p->q.head == NULL;
        pthread_mutex_unlock(&p->mu);
        if (term)
            break;
        /* Replace missing workers (unless closing with nothing left). */
        int alive = 0;
        bool ended = false;     /* a worker ended here: look again at once */
        int64_t now = conc_now();
        for (int i = 0; i < p->nw; i++) {
            struct worker *w = &p->w[i];
            if (__atomic_load_n(&w->owner, __ATOMIC_ACQUIRE) != W_THREAD) {
                alive++;        /* a caller has it */
                continue;
            }
            if (!w->proc && !(closed && queue_empty) &&
                (retry_at == CONC_NO_DEADLINE || now >= retry_at)) {
                int r = worker_start(p, w);
                if (r) {
                    start_failures++;
                    retry_at = conc_now() + 100000000;
                    p->start_err = r;
                } else {
                    start_failures = 0;
                    retry_at = CONC_NO_DEADLINE;
                }
            }
            if (!w->proc)
                continue;
            alive++;
            if (closed && queue_empty && w->nout == 0)
                w->want_exit = true;
            if (worker_has_output(w) && !worker_flush(w)) {
                /* It died after the last look at the events (under load the
                 * write can come long after): its tasks went back to the
                 * queue and its place is empty, but its descriptors left the
                 * epoll set with it, so nothing would wake this thread to
                 * hand them on or start its successor.  With the other
                 * workers idle, the queue then waited forever (a call never
                 * finished), and a closed pool with no worker left took the
                 * queue for empty and failed those tasks with -EPIPE.  The
                 * loop goes round again instead of sleeping. */
                worker_end(p, w, -ECHILD);
                ended = true;
                continue;
            }
            if (worker_has_output(w) != w->ep_out)
                worker_watch(w, EPOLL_CTL_MOD);
        }
        if (ended)
            continue;
        if (!alive && closed && queue_empty)
            break;
        if (!alive && start_failures >= 20) {
            fail_queue(p, p->start_err ? p->start_err : -ECHILD);
            start_failures = 0;
        }
        /* Idle workers are free for callers of apply while we sleep. */
        for (int i = 0; i < p->nw; i++)
            if (__atomic_load_n(&p->w[i].owner, __ATOMIC_RELAXED) == W_THREAD)
                __atomic_store_n(&p->w[i].owner, W_FREE, __ATOMIC_RELEASE);
        int r = conc__wait_fd(p->epfd, POLLIN, retry_at);
        if (r < 0 && r != -ETIMEDOUT)
            continue;
        int n = epoll_wait(p->epfd, evs, EVENTS_MAX, 0);
        int skipped = 0;
        for (int k = 0; k < n; k++) {
            uint64_t d = evs[k].data.u64;
            if (d == UINT64_MAX) {
                uint64_t v;
                ssize_t rr = read(p->evfd, &v, sizeof v);
                (void)rr;
                continue;
            }
            struct worker *w = &p->w[d / 2];
            if (!worker_acquire(w)) {
                /* A caller of apply has it: one that sleeps on its slot
                 * looks at the socket and the pidfd when told. */
                skipped++;
                worker_alert(w);
                continue;
            }
            if (!w->proc)
                continue;
            bool dead = (d & 1) != 0;
            uint32_t ev = evs[k].events;
            if (!dead && (ev & EPOLLIN) && !worker_read(w))
                dead = true;
            if (!dead && (ev & EPOLLOUT) && !worker_flush(w))
                dead = true;
            if (!dead && (ev & (EPOLLERR | EPOLLHUP)) && !(ev & EPOLLIN))
                dead = true;
            if (dead)
                worker_end(p, w, -ECHILD);
        }
        /* Only the end of a worker that a caller of apply talks to: the
         * caller sees it too and gives the worker back; do not spin on
         * it meanwhile. */
        if (n > 0 && skipped == n)
            conc__sleep_until(conc_now() + 200000);
    }
    /* Terminated or closed: stop every worker, fail what is left.  A
     * worker a caller has is killed first; the caller gives it back once it
     * sees it end. */
    for (int i = 0; i < p->nw; i++) {
        struct worker *w = &p->w[i];
        while (!worker_acquire(w)) {
            conc_process_kill(w->proc);
            worker_alert(w);
            conc__sleep_until(conc_now() + 1000000);
        }
        if (w->proc)
            worker_end(p, w, -EPIPE);
    }
    fail_queue(p, -EPIPE);
    conc__pool_live_add(&p->e, -1);
    return NULL;
}

/* What a caller of apply does with what w's socket (pf[0]) and pidfd
 * (pf[1]) report: 1 to wait on, 0 when it is over (answered on the socket:
 * done ran; or ended: the pool's thread settles the task). */
static int direct_look(struct worker *w, const struct pollfd *pf)
{
    if (pf[1].revents)
        return 0;               /* ended: the pool's thread settles it */
    /* Its answer is all it sends: no second recv(2) to find that. */
    if ((pf[0].revents & POLLIN) && !worker_read_(w, true)) {
        /* A bad frame (or no memory for it) leaves nothing for the pool's
         * thread to see on the socket: end the worker, so that its pidfd
         * tells the thread to settle the task. */
        conc_process_kill(w->proc);
        return 0;
    }
    if (!w->head)
        return 0;               /* answered: done ran */
    if ((pf[0].revents & (POLLERR | POLLHUP)) && !(pf[0].revents & POLLIN))
        return 0;
    return 1;
}

/* Talks to w, which has t's frame to send, over its socket until t is
 * answered (done ran) or w ended (the pool's thread settles t).  0, or
 * -ECANCELED when the calling coroutine was killed. */
static int direct_socket(struct worker *w)
{
    for (;;) {
        if (worker_has_output(w) && !worker_flush(w))
            return 0;
        if (!w->head)
            return 0;           /* answered: done ran */
        struct pollfd pf[2] = { { w->fd, (short)(POLLIN | (worker_has_output(w) ? POLLOUT : 0)), 0 },
                                { w->pidfd, POLLIN, 0 } };
        int n = conc__wait_fds(pf, 2, CONC_NO_DEADLINE);
        if (n < 0 && n != -EINTR)
            return n;           /* cancelled: the pool's thread takes over */
        if (n > 0 && !direct_look(w, pf))
            return 0;
    }
}

/* Posts t (one item, in w's slot) and sleeps until the worker answers
 * (done ran) or ends (the pool's thread settles t).  Always 0: a thread
 * is never cancelled.  The pool's thread watches the worker's socket and
 * pidfd meanwhile, and while the caller has the worker, raises its alert
 * and wakes it for whatever they report, again and again until the caller
 * gives the worker back: the caller's sleep needs no timer of its own. */
static int direct_slot(struct worker *w, struct conc__pool_task *t)
{
    struct wshared *sh = w->sh;
    uint32_t idx;
    uint64_t alen;
    memcpy(&idx, t->buf + sizeof(struct frame), sizeof idx);
    memcpy(&alen, t->buf + sizeof(struct frame) + 8, sizeof alen);
    st_relaxed(&sh->fn_idx, idx);
    st_relaxed(&sh->arg_len, (uint32_t)alen);
    if (alen)
        memcpy(sh->arg, t->buf + sizeof(struct frame) + 16, alen);
    __atomic_store_n(&sh->alert, 0, __ATOMIC_RELAXED);
    int me = sched_getcpu();
    __atomic_store_n(&sh->ccpu, me, __ATOMIC_RELAXED);
    uint32_t seq = ++w->req_seq;
    __atomic_store_n(&sh->req, seq, __ATOMIC_SEQ_CST);
    conc__park_wake(&sh->door, 1, CONC__WAIT_SHARED);
    /* Spin for the answer (the library's policy) only when the worker
     * last answered on another CPU (slot_spin). */
    unsigned f = CONC__WAIT_SHARED | CONC__WAIT_ONE;
    if (!slot_spin(&sh->wcpu, me))
        f |= CONC__PARK_NOSPIN;
    for (;;) {
        /* Answered already (the usual case once woken): no count in and
         * out of the spot. */
        if (__atomic_load_n(&sh->ans, __ATOMIC_ACQUIRE) == seq)
            break;
        uint32_t key = conc__park_prepare(&sh->answer);
        if (__atomic_load_n(&sh->ans, __ATOMIC_SEQ_CST) == seq) {
            conc__park_cancel(&sh->answer, key);
            break;
        }
        /* Read before it is taken: an exchange would write the line the
         * worker answers on at every call, not only when alerted. */
        if (__atomic_load_n(&sh->alert, __ATOMIC_SEQ_CST) &&
            __atomic_exchange_n(&sh->alert, 0, __ATOMIC_SEQ_CST)) {
            conc__park_cancel(&sh->answer, key);
            struct pollfd pf[2] = { { w->fd, POLLIN, 0 }, { w->pidfd, POLLIN, 0 } };
            if (poll(pf, 2, 0) > 0 && !direct_look(w, pf))
                return 0;
            continue;
        }
        conc__park_wait(&sh->answer, key, CONC_NO_DEADLINE, f, 0);
    }
    uint32_t mode = ld_relaxed(&sh->mode), rlen = ld_relaxed(&sh->res_len);
    int32_t st = ld_relaxed(&sh->status);
    if (mode == SLOT_ON_SOCKET && st == 0)
        return direct_socket(w);
    if (mode != SLOT_INLINE || st > 0 || rlen > SLOT_RES || (st != 0 && rlen != 0)) {
        /* A broken answer: the worker ends, the pool's thread fails t. */
        conc_process_kill(w->proc);
        return 0;
    }
    w->head = w->tail = NULL;
    w->nout--;
    w->answered++;
    t->next = NULL;
    struct conc__pool_outcome one = { st, 0, rlen ? sh->res : NULL, rlen };
    st_release(&t->state, CONC__TASK_DONE);
    t->done(t, &one, 1);
    return 0;
}

int conc__pool_run_direct(struct conc__pool_engine *e, struct conc__pool_task *t)
{
    if (!e || !e->process || !t || !t->buf || !t->done ||
        ld_relaxed(&t->state) != CONC__TASK_NEW)
        return -EAGAIN;
    conc_pool *p = (conc_pool *)e;
    pthread_mutex_lock(&p->mu);
    if (p->closed || p->q.head) {
        pthread_mutex_unlock(&p->mu);
        return -EAGAIN;
    }
    struct worker *w = NULL;
    for (int i = 0; i < p->nw && !w; i++) {
        struct worker *c = &p->w[i];
        uint32_t o = W_FREE;
        if (!__atomic_compare_exchange_n(&c->owner, &o, W_CALLER, false, __ATOMIC_ACQ_REL,
                                         __ATOMIC_RELAXED))
            continue;
        if (c->proc && c->ready && c->nout == 0 && !worker_has_output(c) && !c->want_exit &&
            c->quota > 0)
            w = c;
        else
            __atomic_store_n(&c->owner, W_FREE, __ATOMIC_RELEASE);
    }
    if (!w) {
        pthread_mutex_unlock(&p->mu);
        return -EAGAIN;
    }
    uint32_t idx;
    int r = fn_index(p, t->fn, &idx);
    bool ok = r == 0;
    for (; ok && w->known <= idx; w->known++) {
        struct frame fr = { F_FN, w->known, p->fns[w->known].deflen };
        ok = obuf_put(&w->ctl, &fr, sizeof fr) &&
             obuf_put(&w->ctl, p->fns[w->known].def, p->fns[w->known].deflen);
    }
    if (!ok) {
        __atomic_store_n(&w->owner, W_FREE, __ATOMIC_RELEASE);
        pthread_mutex_unlock(&p->mu);
        wake_thread(p);         /* it may have FN frames to send now */
        return r ? r : -EAGAIN;
    }
    memcpy(t->buf + sizeof(struct frame), &idx, sizeof idx);
    st_relaxed(&t->state, CONC__TASK_SENT);
    t->worker = w;
    t->ord = ++w->issued & ~GATE_CLOSED;
    t->next = t->prev = NULL;
    /* A call of one small item, from a thread (a coroutine's wait on a
     * word another process changes would be a poll), to a worker that has
     * read everything sent to it, goes through the slot. */
    uint64_t alen;
    memcpy(&alen, t->buf + sizeof(struct frame) + 8, sizeof alen);
    bool slot = t->nitems == 1 && alen <= SLOT_ARG && !conc__wait_ops && !worker_has_output(w);
    w->head = w->tail = t;
    w->wtask = slot ? NULL : t;
    w->woff = 0;
    w->nout = 1;
    if (--w->quota == 0)
        w->want_exit = true;
    pthread_mutex_unlock(&p->mu);
    int ret;
    if (slot) {
        /* Its socket stays watched: what the worker sends there, and its
         * end, make the pool's thread tell us (sh->alert). */
        worker_unpark(w);
        if (t->started && !t->told) {
            t->told = true;
            t->started(t);
        }
        ret = direct_slot(w, t);
    } else {
        /* The pool's thread does not watch its socket while callers talk
         * to it (its end still wakes the pool's thread); left so while it
         * idles between calls of apply, so that a stream of them costs no
         * epoll_ctl(2). */
        if (!w->parked)
            worker_park(w);
        if (t->started && !t->told) {
            t->told = true;
            t->started(t);
        }
        ret = direct_socket(w);
    }
    bool idle = w->nout == 0 && !worker_has_output(w) && !w->want_exit;
    if (!idle)
        worker_unpark(w);
    __atomic_store_n(&w->owner, W_FREE, __ATOMIC_RELEASE);
    /* Tasks queued while we had it, or a close, wait for the pool's
     * thread. */
    pthread_mutex_lock(&p->mu);
    bool queued = p->q.head != NULL || p->closed;
    pthread_mutex_unlock(&p->mu);
    if (!idle || queued)
        wake_thread(p);
    return ret;
}

/* ------------------------------------------------------------- public API */

static void pool_stop(struct conc__pool_engine *e, bool terminate)
{
    conc_pool *p = (conc_pool *)e;
    pthread_mutex_lock(&p->mu);
    p->closed = true;
    if (terminate)
        p->terminating = true;
    pthread_mutex_unlock(&p->mu);
    wake_thread(p);
}

static void pool_destroy(conc_pool *p)
{
    for (int i = 0; i < p->nw; i++)
        if (p->w && p->w[i].proc)
            worker_release(&p->w[i]);
    for (uint32_t i = 0; i < p->nfns; i++)
        free(p->fns[i].def);
    free(p->fns);
    free(p->w);
    free(p->initarg);
    if (p->evfd >= 0)
        close(p->evfd);
    if (p->epfd >= 0)
        close(p->epfd);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

int conc_pool_new(conc_pool **out, const conc_pool_opts *opts)
{
    conc_pool_opts o;
    CONC__OPTS_COPY(&o, opts, sizeof(conc_pool_opts));
    if (!out || o.processes < 0 || o.processes > CONC_POOL_MAX_WORKERS ||
        (int)o.method < 0 || o.method > CONC_START_SPAWN ||
        (o.initializer && !o.initarg && o.initarg_len) || o.initarg_len > CONC_POOL_ARG_MAX)
        return -EINVAL;
    if (o.processes == 0)
        o.processes = conc_process_cpu_count();
    if (o.processes > CONC_POOL_MAX_WORKERS)
        o.processes = CONC_POOL_MAX_WORKERS;
    if (conc_process_daemon(conc_process_current()))
        return -EPERM;
    conc_pool *p = calloc(1, sizeof *p);
    if (!p)
        return -ENOMEM;
    p->evfd = -1;
    p->epfd = -1;
    pthread_mutex_init(&p->mu, NULL);
    p->o = o;
    p->e.submit = pool_submit;
    p->e.cancel = pool_cancel;
    p->e.begun = pool_begun;
    p->e.stop = pool_stop;
    p->e.workers = o.processes;
    p->e.process = true;
    conc_start_method m = o.method ? o.method : conc_process_start_method();
    p->o.method = m;
    p->fork_method = m == CONC_START_FORK;
    p->nw = o.processes;
    p->init_idx = NONE;
    int r = -ENOMEM;
    p->w = calloc((size_t)p->nw, sizeof *p->w);
    if (!p->w)
        goto fail;
    if (o.initializer && o.initarg_len) {
        if (!(p->initarg = malloc(o.initarg_len)))
            goto fail;
        memcpy(p->initarg, o.initarg, o.initarg_len);
    }
    if (o.initializer && (r = fn_index(p, (void *)o.initializer, &p->init_idx)))
        goto fail;
    p->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (p->evfd < 0) {
        r = -errno;
        goto fail;
    }
    p->epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = { .events = EPOLLIN, .data.u64 = UINT64_MAX };
    if (p->epfd < 0 || epoll_ctl(p->epfd, EPOLL_CTL_ADD, p->evfd, &ev)) {
        r = -errno;
        goto fail;
    }
    for (int i = 0; i < p->nw; i++) {
        p->w[i].idx = i;
        p->w[i].epfd = p->epfd;
        p->w[i].fd = p->w[i].pidfd = -1;
        if ((r = worker_start(p, &p->w[i])))
            goto fail_workers;
    }
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    conc__pool_live_add(&p->e, 1);
    int e = pthread_create(&p->thread, NULL, pool_thread, p);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (e) {
        conc__pool_live_add(&p->e, -1);
        r = -e;
        goto fail_workers;
    }
    *out = p;
    return 0;
fail_workers:
    for (int i = 0; i < p->nw; i++) {
        if (p->w[i].proc) {
            conc_process_kill(p->w[i].proc);
            conc_process_join(p->w[i].proc, CONC_FOREVER);
            worker_release(&p->w[i]);
        }
    }
fail:
    pool_destroy(p);
    return r;
}

void conc_pool_free(conc_pool *p)
{
    if (!p)
        return;
    conc__pool_end(&p->e);
    pthread_join(p->thread, NULL);
    pool_destroy(p);
}
