/*
 * manager_server.c - the manager's server: the objects it owns and one
 * greenlet per connection that runs the connection's requests on them, in
 * the hubs (conc/hub.h) of a fixed set of threads: the one that runs the
 * server (its accept loop is that thread's main coroutine) and up to
 * CONC_MANAGER_THREADS_MAX - 1 workers, to which the accept loop deals the
 * connections in turn (a mailbox and an eventfd each).  Everything two
 * connections share is an object, under the object's lock, or the object
 * table, under tmu: connections of different threads meet only there.
 *
 * A hub's one epoll loop is its thread's loop: a connection's greenlet
 * parks while its socket has no request, and one epoll_wait hands the hub
 * every connection that became ready, whose requests then run one after
 * the other without a context switch (a request that does not wait runs
 * to its answer without parking; the answer goes out in one write).  The
 * accept loop is the thread's main coroutine.
 *
 * Each object has a Lock (mu) that guards its state and a Condition (cv)
 * that every change of the state notifies; a request that must wait (a get
 * on an empty Queue, an acquire of a held Lock) parks its greenlet on cv
 * until its deadline.  Meanwhile a second greenlet of the connection, its
 * watcher, parks on the socket for the client's close (POLLRDHUP) and
 * wakes the object's waiters when it comes; the request then sees its
 * client gone.  (A greenlet parks on one thing at a time: a word or a
 * descriptor.)  So a parked request costs nothing until something happens,
 * a client that dies while it waits frees its greenlet at once, and a
 * shutdown, which shuts every connection's socket down, never waits for a
 * blocked request.  The watcher ends with the request.  Without memory for
 * a watcher, the request looks around in slices of SLICE_NS instead.  The
 * other connections are served meanwhile: only the waiting greenlets are
 * parked.
 *
 * Holdings: a connection counts what it acquired of each Lock, RLock,
 * Semaphore and Condition; when it ends, whatever it still holds is
 * released and the waiters notified.  Owners are connection serials, not
 * coroutines: a Lock (not an RLock) may be released by any connection, as
 * threading.Lock by any thread.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "conc/hub.h"
#include "conc/pipe.h"
#include "conc/process.h"
#include "conc/sync.h"
#include "conc/time.h"
#include "conc/wait.h"
#include "listener_internal.h"
#include "manager_internal.h"
#include "manager_wire.h"

#define SLICE_NS 50000000LL         /* without a watcher, a waiting request
                                       looks around every 50 ms */
#define ACCEPT_RETRY 0.05           /* out of descriptors: the next accept */
#define MAX_CONNS 1024              /* connections served at once */
#define MAX_WORKERS CONC_MANAGER_THREADS_MAX /* threads that serve connections */
#define DEFAULT_WORKERS 4           /* at most, one per CPU, unless set */
#define VALUE_MAX 4096u             /* a Value's size and an Array item's size */
#define ARRAY_MAX (1u << 20)        /* items of an Array */
#define ARRAY_BYTES_MAX ((int64_t)64 << 20) /* an Array's bytes in all */
#define STACK_SIZE ((size_t)256 << 10) /* a connection greenlet's stack (user callbacks run on it) */

struct item {
    uint8_t *p;                     /* malloc'd, at least 1 byte */
    size_t len;
};

struct kv {
    uint64_t h;
    struct item k, v;
};

struct qmsg {
    struct qmsg *next;
    uint64_t seq;                   /* its place in the order of the puts */
    size_t len;
    uint8_t data[];
};

struct waiter {
    struct waiter *next;
    bool notified;
};

struct obj {
    uint64_t id;
    int type;
    char *name;                     /* NULL: unnamed */
    uint64_t n, size;               /* the creation parameters */
    char tc;                        /* a Value's or Array's typecode, or 0 */
    const struct conc__mgr_type *ut;
    void *uobj;
    conc_lock mu;
    conc_cond cv;
    /* dict, namespace: entries in insertion order, and a hash index over
     * them (open addressing: entry number + 1, 0 for an empty slot) */
    struct kv *kv;
    size_t nkv, capkv;
    uint32_t *idx;
    size_t icap;                    /* a power of two, or 0 */
    /* list */
    struct item *li;
    size_t nli, capli;
    /* Value, Array */
    uint8_t *bytes;
    /* Queue, JoinableQueue */
    struct qmsg *qhead, *qtail;     /* in the order of seq */
    size_t qlen;
    uint64_t qseq;                  /* the next put's seq */
    uint64_t unfinished;
    /* Lock, RLock, Condition: the holder's connection serial (0: free) */
    uint64_t owner;
    uint64_t depth;
    /* Semaphore: its counter, and the acquires no release has matched
     * yet (what the ends of the connections may give back in all) */
    uint64_t value;
    uint64_t held;
    /* Event: the flag, and the sets so far (a waiter that saw none while
     * it waited was not woken by one, even when the flag is down again) */
    bool flag;
    uint64_t sets;
    /* Condition */
    struct waiter *whead;
    /* Barrier */
    uint64_t gen, reset_gen;
    uint64_t count;
    bool broken;
};

struct hold {
    struct obj *o;
    uint64_t count;
};

struct worker;

struct conn {
    struct conc__mgr_server *s;
    struct worker *w;               /* the thread whose hub runs it */
    conc_conn *c;
    int fd;
    uint64_t serial;
    conc_greenlet *g;               /* runs conn_main */
    struct conn *next;
    struct hold *holds;
    size_t nholds, capholds;
    struct obj *last;               /* the object of the last request */
    conc_greenlet *watch;           /* parked for the client's close while a
                                       request waits on wobj, or NULL */
    struct obj *wobj;
    bool gone;                      /* the watcher saw the client's close */
    int done;                       /* atomic: the greenlet ended */
};

/* A thread that serves connections in its hub: the accept loop's own
 * (w[0]) and up to MAX_WORKERS - 1 more, which get theirs by mail. */
struct worker {
    struct conc__mgr_server *s;
    int idx;
    pthread_t t;
    int bell;                       /* eventfd: mail came, or a conn ended */
    pthread_mutex_t mu;             /* guards mail and stop */
    struct conn *mail;              /* new connections for it */
    bool stop;
    struct conn *conns;             /* only its thread touches the list */
};

struct conc__mgr_server {
    conc_listener *l;
    const struct conc__mgr_type *types;
    size_t ntypes;
    size_t max_message;
    int stop;                       /* atomic */
    bool take_sigterm;              /* a pending SIGTERM stops the server */
    int bell;                       /* eventfd: stop, or a connection ended */
    int sigfd;                      /* signalfd of SIGTERM, or -1 */
    int wake;                       /* epoll set of both: the accept's wake */
    conc_lock tmu;                  /* guards objs */
    struct obj **objs;              /* objs[id - 1] */
    size_t nobjs, capobjs;
    struct worker w[MAX_WORKERS];
    int nworkers;
    unsigned threads;               /* asked for; 0: one per CPU */
    size_t nconns;                  /* atomic */
    uint64_t next_serial;
};

/* An answer being built. */
struct out {
    uint8_t *buf;
    size_t len, cap;
    uint32_t nargs;
    int32_t status;
    int64_t value;
    bool nomem;
    size_t limit;                   /* the largest answer the client takes */
    size_t taken_at;                /* where a list's or dict's pop took its item */
    uint64_t taken_seq;             /* the seq of the message a get took */
};

/* Writes the eventfd bell (if there is one): its reader wakes.  EAGAIN,
 * the counter full, means it is woken already. */
static void bell_ring(int bell)
{
    uint64_t one = 1;
    if (bell >= 0 && write(bell, &one, sizeof one) < 0) {
        /* EAGAIN: woken already */
    }
}

static void worker_ring(struct worker *w)
{
    bell_ring(w->bell);
}

static bool stopping(const struct conc__mgr_server *s)
{
    return __atomic_load_n(&s->stop, __ATOMIC_ACQUIRE) != 0;
}

/* Wakes the accept loop to look at the stop flag and the ended
 * connections (it sleeps in its accept without a time limit otherwise:
 * an idle server makes no system call). */
static void ring(struct conc__mgr_server *s)
{
    bell_ring(s->bell);
}

static void out_str(struct out *o, const void *p, size_t len)
{
    if (o->nomem)
        return;
    if (len > o->cap || o->cap - len < o->len + 4) {
        size_t need = o->len + 4 + len;
        if (need < o->len) {
            o->nomem = true;
            return;
        }
        size_t cap = o->cap ? o->cap : 256;
        while (cap < need)
            cap *= 2;
        uint8_t *b = realloc(o->buf, cap);
        if (!b) {
            o->nomem = true;
            return;
        }
        o->buf = b;
        o->cap = cap;
    }
    conc__mgr_put_str(o->buf, &o->len, p, len);
    o->nargs++;
}

/* Whether a string of len bytes still fits the client's answer limit: an
 * op that takes something out (a pop, a Queue.get) asks first, so that an
 * answer the client could not take leaves the item where it was. */
static bool fits(const struct out *o, size_t len)
{
    return len <= o->limit && o->len + 4 <= o->limit - len;
}

static uint64_t hash_bytes(const uint8_t *p, size_t len)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}

static int item_set(struct item *it, const uint8_t *p, size_t len)
{
    uint8_t *b = malloc(len ? len : 1);
    if (!b)
        return -ENOMEM;
    if (len)
        memcpy(b, p, len);
    it->p = b;
    it->len = len;
    return 0;
}

/* ------------------------------------------------------------ holdings */

static int hold_add(struct conn *cn, struct obj *o, uint64_t k)
{
    for (size_t i = 0; i < cn->nholds; i++)
        if (cn->holds[i].o == o) {
            cn->holds[i].count += k;
            return 0;
        }
    if (cn->nholds == cn->capholds) {
        size_t cap = cn->capholds ? cn->capholds * 2 : 4;
        struct hold *h = realloc(cn->holds, cap * sizeof *h);
        if (!h)
            return -ENOMEM;
        cn->holds = h;
        cn->capholds = cap;
    }
    cn->holds[cn->nholds++] = (struct hold){ o, k };
    return 0;
}

static void hold_sub(struct conn *cn, struct obj *o, uint64_t k)
{
    for (size_t i = 0; i < cn->nholds; i++)
        if (cn->holds[i].o == o) {
            cn->holds[i].count = cn->holds[i].count > k ? cn->holds[i].count - k : 0;
            return;
        }
}

/* The connection ended: give back what it holds. */
static void hold_release_all(struct conn *cn)
{
    for (size_t i = 0; i < cn->nholds; i++) {
        struct obj *o = cn->holds[i].o;
        uint64_t k = cn->holds[i].count;
        if (!k)
            continue;
        conc_lock_acquire(&o->mu, CONC_FOREVER);
        switch (o->type) {
        case CONC_PROXY_LOCK:
        case CONC_PROXY_RLOCK:
        case CONC_PROXY_CONDITION:
            if (o->owner == cn->serial) {
                o->owner = 0;
                o->depth = 0;
            }
            break;
        case CONC_PROXY_SEMAPHORE:
        case CONC_PROXY_BOUNDED_SEMAPHORE:
            /* A release by any connection matches an acquire: what others
             * gave back already is not given back twice. */
            if (k > o->held)
                k = o->held;
            o->held -= k;
            o->value += k;
            if (o->type == CONC_PROXY_BOUNDED_SEMAPHORE && o->value > o->n)
                o->value = o->n;
            break;
        default:
            break;
        }
        conc_cond_notify_all(&o->cv);
        conc_lock_release(&o->mu);
    }
    free(cn->holds);
    cn->holds = NULL;
    cn->nholds = cn->capholds = 0;
}

/* ------------------------------------------------------------- waiting */

/* Whether the client of cn has gone (its end of the socket is closed or
 * reset), also when bytes it sent are still unread (a request sent after
 * the one that waits): POLLRDHUP tells the peer's close before them. */
static bool conn_gone(const struct conn *cn)
{
    struct pollfd p = { .fd = cn->fd, .events = POLLRDHUP };
    if (poll(&p, 1, 0) <= 0)
        return false;
    return (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

/* The watcher of a connection whose request waits on cn->wobj: parks
 * until the client's end closes, then wakes the object's waiters (the
 * request among them).  Killed when the request is done. */
static void *watch_main(void *arg)
{
    struct conn *cn = arg;
    do
        if (conc_fd_wait_until(cn->fd, POLLRDHUP, CONC_NO_DEADLINE) < 0)
            return NULL;                /* killed: the request is done */
    while (!conn_gone(cn));
    cn->gone = true;
    struct obj *o = cn->wobj;
    conc_lock_acquire(&o->mu, CONC_FOREVER);
    conc_cond_notify_all(&o->cv);
    conc_lock_release(&o->mu);
    return NULL;
}

/* Ends cn's watcher, if any (o->mu not held: the watcher may take it). */
static void watch_stop(struct conn *cn)
{
    if (!cn->watch)
        return;
    conc_greenlet_kill(cn->watch);
    conc_greenlet_join(cn->watch, CONC_FOREVER);
    conc_greenlet_free(cn->watch);
    cn->watch = NULL;
}

/* A wait on o (o->mu held) until something changes: returns 0 when the
 * caller should look at the state again, -ETIMEDOUT when the deadline
 * passed, -ECONNRESET when the client is gone or the server stops. */
static int wait_slice(struct conn *cn, struct obj *o, int64_t deadline)
{
    int64_t now = conc_now();
    if (now >= deadline)
        return -ETIMEDOUT;
    if (cn->gone || stopping(cn->s) || conn_gone(cn))
        return -ECONNRESET;
    int64_t until = deadline;
    if (!cn->watch) {
        cn->wobj = o;
        conc_coro_opts co = CONC_CORO_OPTS_INIT;
        co.name = "conc-manager-watch";
        conc_spawn_opts so = CONC_SPAWN_OPTS_INIT;
        so.coro = &co;
        if (conc_greenlet_spawn(&cn->watch, watch_main, cn, &so) != 0) {
            cn->watch = NULL;           /* no watcher: look around in slices */
            if (deadline - now > SLICE_NS)
                until = now + SLICE_NS;
        }
    }
    conc_cond_wait_until(&o->cv, &o->mu, until);
    /* Looked at again after the wait: what woke it (a message, a released
     * lock) must not go to a client that died meanwhile. */
    return cn->gone || conn_gone(cn) ? -ECONNRESET : 0;
}

static int64_t req_deadline(const struct conc__mgr_req *r)
{
    if (r->timeout < 0)
        return CONC_NO_DEADLINE;
    int64_t now = conc_now();
    return r->timeout > CONC_NO_DEADLINE - now ? CONC_NO_DEADLINE : now + r->timeout;
}

/* ------------------------------------------------------------- objects */

static void obj_free(struct obj *o)
{
    if (!o)
        return;
    for (size_t i = 0; i < o->nkv; i++) {
        free(o->kv[i].k.p);
        free(o->kv[i].v.p);
    }
    free(o->kv);
    free(o->idx);
    for (size_t i = 0; i < o->nli; i++)
        free(o->li[i].p);
    free(o->li);
    free(o->bytes);
    while (o->qhead) {
        struct qmsg *m = o->qhead;
        o->qhead = m->next;
        free(m);
    }
    if (o->ut && o->ut->t.destroy)
        o->ut->t.destroy(o->uobj, o->ut->t.ctx);
    free(o->name);
    free(o);
}

static struct obj *obj_find(struct conc__mgr_server *s, uint64_t id)
{
    struct obj *o = NULL;
    conc_lock_acquire(&s->tmu, CONC_FOREVER);
    if (id >= 1 && id <= s->nobjs)
        o = s->objs[id - 1];
    conc_lock_release(&s->tmu);
    return o;
}

/* Adds o to the table (s->tmu held) and gives it its id. */
static int obj_add(struct conc__mgr_server *s, struct obj *o)
{
    if (s->nobjs == s->capobjs) {
        size_t cap = s->capobjs ? s->capobjs * 2 : 64;
        struct obj **t = realloc(s->objs, cap * sizeof *t);
        if (!t)
            return -ENOMEM;
        s->objs = t;
        s->capobjs = cap;
    }
    s->objs[s->nobjs++] = o;
    o->id = s->nobjs;
    return 0;
}

static struct obj *obj_named(struct conc__mgr_server *s, const struct conc__mgr_str *name)
{
    for (size_t i = 0; i < s->nobjs; i++) {
        struct obj *o = s->objs[i];
        if (o->name && strlen(o->name) == name->len && memcmp(o->name, name->p, name->len) == 0)
            return o;
    }
    return NULL;
}

static bool name_ok(const struct conc__mgr_str *n)
{
    return n->len <= CONC_MANAGER_NAME_MAX && !memchr(n->p, 0, n->len);
}

static struct obj *obj_alloc(int type, const struct conc__mgr_str *name)
{
    struct obj *o = calloc(1, sizeof *o);
    if (!o)
        return NULL;
    o->type = type;
    o->reset_gen = UINT64_MAX;
    conc_lock_init(&o->mu, 0);
    conc_cond_init(&o->cv, 0);
    if (name->len) {
        o->name = malloc(name->len + 1);       /* not strndup: no NUL follows */
        if (!o->name) {
            free(o);
            return NULL;
        }
        memcpy(o->name, name->p, name->len);
        o->name[name->len] = 0;
    }
    return o;
}

static int params_check(int64_t type, int64_t n, int64_t size)
{
    switch (type) {
    case CONC_PROXY_VALUE:
        return n >= 1 && n <= VALUE_MAX && size == 0 ? 0 : -EINVAL;
    case CONC_PROXY_ARRAY:
        return n >= 1 && n <= ARRAY_MAX && size >= 1 && size <= VALUE_MAX &&
                       n * size <= ARRAY_BYTES_MAX
                   ? 0
                   : -EINVAL;
    case CONC_PROXY_QUEUE:
    case CONC_PROXY_JOINABLE_QUEUE:
        return n >= 0 && n <= INT32_MAX && size == 0 ? 0 : -EINVAL;
    case CONC_PROXY_SEMAPHORE:
    case CONC_PROXY_BOUNDED_SEMAPHORE:
        return n >= 0 && n <= INT32_MAX && size == 0 ? 0 : -EINVAL;
    case CONC_PROXY_BARRIER:
        return n >= 1 && n <= INT32_MAX && size == 0 ? 0 : -EINVAL;
    case CONC_PROXY_DICT:
    case CONC_PROXY_LIST:
    case CONC_PROXY_NAMESPACE:
    case CONC_PROXY_LOCK:
    case CONC_PROXY_RLOCK:
    case CONC_PROXY_EVENT:
    case CONC_PROXY_CONDITION:
        return n == 0 && size == 0 ? 0 : -EINVAL;
    default:
        return -EINVAL;
    }
}

static int op_create(struct conc__mgr_server *s, const struct conc__mgr_req *r, struct out *out)
{
    struct conc__mgr_str name, tcs = { 0 }, init = { 0 };
    size_t pos = 0;
    if (r->nargs < 1 || r->nargs > 3 || conc__mgr_next(r->args, r->args_len, &pos, &name) ||
        !name_ok(&name))
        return -EINVAL;
    char tc = 0;
    if (r->nargs >= 2) {
        /* a typecode: one of the known ones, whose item size the Value's
         * size or the Array's item size is */
        if (conc__mgr_next(r->args, r->args_len, &pos, &tcs) || tcs.len != 1)
            return -EINVAL;
        tc = (char)tcs.p[0];
        size_t isz = conc__mgr_typecode_size(tc);
        if (!isz || (r->a == CONC_PROXY_VALUE ? (uint64_t)r->b != isz
                                              : r->a != CONC_PROXY_ARRAY || (uint64_t)r->c != isz))
            return -EINVAL;
    }
    int e = params_check(r->a, r->b, r->c);
    if (e)
        return e;
    if (r->nargs == 3) {
        /* the first value of a typed Value or Array: every byte of it */
        uint64_t bytes = r->a == CONC_PROXY_VALUE ? (uint64_t)r->b : (uint64_t)r->b * (uint64_t)r->c;
        if (conc__mgr_next(r->args, r->args_len, &pos, &init) || init.len != bytes)
            return -EINVAL;
    }
    conc_lock_acquire(&s->tmu, CONC_FOREVER);
    struct obj *o = name.len ? obj_named(s, &name) : NULL;
    if (o) {
        e = o->type == r->a && o->n == (uint64_t)r->b && o->size == (uint64_t)r->c &&
                    o->tc == tc
                ? 0
                : -EEXIST;
        out->value = (int64_t)o->id;
        if (!e && tc)
            out_str(out, &tc, 1);
        conc_lock_release(&s->tmu);
        return e;
    }
    e = -ENOMEM;
    o = obj_alloc((int)r->a, &name);
    if (!o)
        goto done;
    o->n = (uint64_t)r->b;
    o->size = (uint64_t)r->c;
    o->tc = tc;
    if (o->type == CONC_PROXY_VALUE || o->type == CONC_PROXY_ARRAY) {
        size_t bytes = o->type == CONC_PROXY_VALUE ? o->n : o->n * o->size;
        o->bytes = calloc(1, bytes);
        if (!o->bytes)
            goto done;
        if (init.len)                   /* made with it: never seen without it */
            memcpy(o->bytes, init.p, init.len);
    }
    if (o->type == CONC_PROXY_SEMAPHORE || o->type == CONC_PROXY_BOUNDED_SEMAPHORE)
        o->value = o->n;
    e = obj_add(s, o);
    if (!e) {
        out->value = (int64_t)o->id;
        if (tc)
            out_str(out, &tc, 1);
        o = NULL;
    }
done:
    conc_lock_release(&s->tmu);
    obj_free(o);
    return e;
}

static int op_create_user(struct conc__mgr_server *s, const struct conc__mgr_req *r,
                          struct out *out)
{
    struct conc__mgr_str tid, name, arg;
    size_t pos = 0;
    if (r->nargs != 3 || conc__mgr_next(r->args, r->args_len, &pos, &tid) ||
        conc__mgr_next(r->args, r->args_len, &pos, &name) ||
        conc__mgr_next(r->args, r->args_len, &pos, &arg) || !name_ok(&tid) || !tid.len ||
        !name_ok(&name))
        return -EINVAL;
    const struct conc__mgr_type *ut = NULL;
    for (size_t i = 0; i < s->ntypes; i++)
        if (strlen(s->types[i].name) == tid.len &&
            memcmp(s->types[i].name, tid.p, tid.len) == 0)
            ut = &s->types[i];
    if (!ut)
        return -ENOENT;
    conc_lock_acquire(&s->tmu, CONC_FOREVER);
    int e;
    struct obj *o = name.len ? obj_named(s, &name) : NULL;
    if (o) {
        e = o->type == CONC_PROXY_USER && o->ut == ut ? 0 : -EEXIST;
        out->value = (int64_t)o->id;
        conc_lock_release(&s->tmu);
        return e;
    }
    e = -ENOMEM;
    o = obj_alloc(CONC_PROXY_USER, &name);
    if (!o)
        goto done;
    e = ut->t.create(&o->uobj, arg.len ? arg.p : NULL, arg.len, ut->t.ctx);
    if (e > 0 || e < -4095)
        e = e > 0 ? 0 : -EPROTO;
    if (e)
        goto done;
    o->ut = ut;
    e = obj_add(s, o);
    if (!e) {
        out->value = (int64_t)o->id;
        o = NULL;
    }
done:
    conc_lock_release(&s->tmu);
    if (o && !o->ut)
        o->ut = NULL;
    obj_free(o);
    return e;
}

/* ---------------------------------------------------------------- dict */

static ssize_t kv_find(const struct obj *o, const struct conc__mgr_str *k, uint64_t h)
{
    if (!o->icap)
        return -1;
    size_t mask = o->icap - 1;
    for (size_t s = (size_t)h & mask;; s = (s + 1) & mask) {
        uint32_t e = o->idx[s];
        if (!e)
            return -1;
        const struct kv *x = &o->kv[e - 1];
        if (x->h == h && x->k.len == k->len && (k->len == 0 || memcmp(x->k.p, k->p, k->len) == 0))
            return (ssize_t)(e - 1);
    }
}

/* Puts entry i into the index (which has a free slot). */
static void idx_put(struct obj *o, size_t i)
{
    size_t mask = o->icap - 1, s = (size_t)o->kv[i].h & mask;
    while (o->idx[s])
        s = (s + 1) & mask;
    o->idx[s] = (uint32_t)(i + 1);
}

/* Makes the index again with room for want entries at most half full. */
static int idx_rebuild(struct obj *o, size_t want)
{
    size_t cap = o->icap ? o->icap : 16;
    while (cap < want * 2)
        cap *= 2;
    if (cap != o->icap) {
        uint32_t *t = malloc(cap * sizeof *t);
        if (!t)
            return -ENOMEM;
        free(o->idx);
        o->idx = t;
        o->icap = cap;
    }
    memset(o->idx, 0, o->icap * sizeof *o->idx);
    for (size_t i = 0; i < o->nkv; i++)
        idx_put(o, i);
    return 0;
}

static int kv_set(struct obj *o, const struct conc__mgr_str *k, const struct conc__mgr_str *v)
{
    uint64_t h = hash_bytes(k->p, k->len);
    ssize_t i = kv_find(o, k, h);
    struct item nv;
    if (item_set(&nv, v->p, v->len))
        return -ENOMEM;
    if (i >= 0) {
        free(o->kv[i].v.p);
        o->kv[i].v = nv;
        return 0;
    }
    if (o->nkv >= UINT32_MAX - 1 || ((o->nkv + 1) * 2 > o->icap && idx_rebuild(o, o->nkv + 1))) {
        free(nv.p);
        return -ENOMEM;
    }
    if (o->nkv == o->capkv) {
        size_t cap = o->capkv ? o->capkv * 2 : 8;
        struct kv *t = realloc(o->kv, cap * sizeof *t);
        if (!t) {
            free(nv.p);
            return -ENOMEM;
        }
        o->kv = t;
        o->capkv = cap;
    }
    struct kv *e = &o->kv[o->nkv];
    if (item_set(&e->k, k->p, k->len)) {
        free(nv.p);
        return -ENOMEM;
    }
    e->h = h;
    e->v = nv;
    idx_put(o, o->nkv);
    o->nkv++;
    return 0;
}

/* Removes entry i, keeping the order of the others; the index is made
 * again (the entries after i moved), in place: it cannot fail. */
static void kv_remove(struct obj *o, size_t i)
{
    free(o->kv[i].k.p);
    free(o->kv[i].v.p);
    memmove(&o->kv[i], &o->kv[i + 1], (o->nkv - i - 1) * sizeof o->kv[0]);
    o->nkv--;
    memset(o->idx, 0, o->icap * sizeof *o->idx);
    for (size_t j = 0; j < o->nkv; j++)
        idx_put(o, j);
}

static int op_dict(struct obj *o, const struct conc__mgr_req *r, struct out *out)
{
    struct conc__mgr_str a0 = { 0 }, a1 = { 0 };
    size_t pos = 0;
    if (r->nargs >= 1 && conc__mgr_next(r->args, r->args_len, &pos, &a0))
        return -EINVAL;
    if (r->nargs >= 2 && conc__mgr_next(r->args, r->args_len, &pos, &a1))
        return -EINVAL;
    uint32_t want;
    switch (r->op) {
    case CONC__MGR_D_SET: case CONC__MGR_D_SETDEFAULT: want = 2; break;
    case CONC__MGR_D_GET: case CONC__MGR_D_DEL: case CONC__MGR_D_POP: want = 1; break;
    case CONC__MGR_D_UPDATE: want = r->nargs % 2 ? UINT32_MAX : r->nargs; break;
    default: want = 0; break;
    }
    if (r->nargs != want)
        return -EINVAL;
    if (o->type == CONC_PROXY_NAMESPACE && want >= 1 && r->op != CONC__MGR_D_UPDATE &&
        (a0.len == 0 || !name_ok(&a0)))
        return -EINVAL;
    ssize_t i;
    switch (r->op) {
    case CONC__MGR_D_SET:
        return kv_set(o, &a0, &a1);
    case CONC__MGR_D_GET:
    case CONC__MGR_D_POP:
        i = kv_find(o, &a0, hash_bytes(a0.p, a0.len));
        if (i < 0)
            return -ENOENT;
        if (!fits(out, o->kv[i].v.len))
            return -EMSGSIZE;
        out_str(out, o->kv[i].v.p, o->kv[i].v.len);
        if (r->op == CONC__MGR_D_POP && !out->nomem) {
            out->taken_at = (size_t)i;
            kv_remove(o, (size_t)i);
        }
        return 0;
    case CONC__MGR_D_DEL:
        i = kv_find(o, &a0, hash_bytes(a0.p, a0.len));
        if (i < 0)
            return -ENOENT;
        kv_remove(o, (size_t)i);
        return 0;
    case CONC__MGR_D_LEN:
        out->value = (int64_t)o->nkv;
        return 0;
    case CONC__MGR_D_KEYS:
    case CONC__MGR_D_ITEMS:
        for (size_t j = 0; j < o->nkv; j++) {
            out_str(out, o->kv[j].k.p, o->kv[j].k.len);
            if (r->op == CONC__MGR_D_ITEMS)
                out_str(out, o->kv[j].v.p, o->kv[j].v.len);
        }
        return 0;
    case CONC__MGR_D_UPDATE: {
        pos = 0;
        for (uint32_t j = 0; j < r->nargs; j += 2) {
            struct conc__mgr_str k, v;
            conc__mgr_next(r->args, r->args_len, &pos, &k);
            conc__mgr_next(r->args, r->args_len, &pos, &v);
            if (kv_set(o, &k, &v))
                return -ENOMEM;
        }
        return 0;
    }
    case CONC__MGR_D_SETDEFAULT:
        i = kv_find(o, &a0, hash_bytes(a0.p, a0.len));
        if (i >= 0) {
            out_str(out, o->kv[i].v.p, o->kv[i].v.len);
            return 0;
        }
        if (kv_set(o, &a0, &a1))
            return -ENOMEM;
        out_str(out, a1.p, a1.len);
        return 1;
    }
    return -EINVAL;
}

/* ---------------------------------------------------------------- list */

static int li_insert(struct obj *o, size_t at, const struct conc__mgr_str *v)
{
    if (o->nli == o->capli) {
        size_t cap = o->capli ? o->capli * 2 : 8;
        struct item *t = realloc(o->li, cap * sizeof *t);
        if (!t)
            return -ENOMEM;
        o->li = t;
        o->capli = cap;
    }
    struct item it;
    if (item_set(&it, v->p, v->len))
        return -ENOMEM;
    memmove(&o->li[at + 1], &o->li[at], (o->nli - at) * sizeof o->li[0]);
    o->li[at] = it;
    o->nli++;
    return 0;
}

/* A Python index into n items: 0 and sets *at, or -ERANGE. */
static int py_index(int64_t idx, size_t n, size_t *at)
{
    if (idx < 0)
        idx += (int64_t)n;
    if (idx < 0 || (uint64_t)idx >= n)
        return -ERANGE;
    *at = (size_t)idx;
    return 0;
}

/* A Python slice bound, clamped to 0..n. */
static size_t py_bound(int64_t b, size_t n)
{
    if (b < 0) {
        b += (int64_t)n;
        return b < 0 ? 0 : (size_t)b;
    }
    return (uint64_t)b > n ? n : (size_t)b;
}

static int op_list(struct obj *o, const struct conc__mgr_req *r, struct out *out)
{
    struct conc__mgr_str v = { 0 };
    size_t pos = 0, at;
    uint32_t want = r->op == CONC__MGR_L_APPEND || r->op == CONC__MGR_L_SET ||
                    r->op == CONC__MGR_L_INSERT;
    if (r->op != CONC__MGR_L_EXTEND && r->nargs != want)
        return -EINVAL;
    if (want)
        conc__mgr_next(r->args, r->args_len, &pos, &v);
    switch (r->op) {
    case CONC__MGR_L_APPEND:
        return li_insert(o, o->nli, &v);
    case CONC__MGR_L_EXTEND: {
        size_t old = o->nli;
        for (uint32_t j = 0; j < r->nargs; j++) {
            conc__mgr_next(r->args, r->args_len, &pos, &v);
            if (li_insert(o, o->nli, &v)) {
                while (o->nli > old)
                    free(o->li[--o->nli].p);
                return -ENOMEM;
            }
        }
        return 0;
    }
    case CONC__MGR_L_GET:
        if (py_index(r->a, o->nli, &at))
            return -ERANGE;
        out_str(out, o->li[at].p, o->li[at].len);
        return 0;
    case CONC__MGR_L_SET: {
        if (py_index(r->a, o->nli, &at))
            return -ERANGE;
        struct item it;
        if (item_set(&it, v.p, v.len))
            return -ENOMEM;
        free(o->li[at].p);
        o->li[at] = it;
        return 0;
    }
    case CONC__MGR_L_POP:
        if (py_index(r->a, o->nli, &at))
            return -ERANGE;
        if (!fits(out, o->li[at].len))
            return -EMSGSIZE;
        out_str(out, o->li[at].p, o->li[at].len);
        if (out->nomem)
            return -ENOMEM;
        free(o->li[at].p);
        memmove(&o->li[at], &o->li[at + 1], (o->nli - at - 1) * sizeof o->li[0]);
        o->nli--;
        out->taken_at = at;
        return 0;
    case CONC__MGR_L_INSERT:
        return li_insert(o, py_bound(r->a, o->nli), &v);
    case CONC__MGR_L_LEN:
        out->value = (int64_t)o->nli;
        return 0;
    case CONC__MGR_L_SLICE: {
        size_t b = py_bound(r->a, o->nli), e = py_bound(r->b, o->nli);
        for (size_t j = b; j < e; j++)
            out_str(out, o->li[j].p, o->li[j].len);
        return 0;
    }
    }
    return -EINVAL;
}

/* ------------------------------------------------------- Value, Array */

static int op_bytes(struct obj *o, const struct conc__mgr_req *r, struct out *out)
{
    struct conc__mgr_str v = { 0 };
    size_t pos = 0, at = 0;
    bool set = r->op == CONC__MGR_V_SET || r->op == CONC__MGR_A_SET;
    if (r->nargs != (set ? 1u : 0u))
        return -EINVAL;
    if (set)
        conc__mgr_next(r->args, r->args_len, &pos, &v);
    size_t isz = o->type == CONC_PROXY_VALUE ? o->n : o->size;
    if ((r->op == CONC__MGR_A_GET || r->op == CONC__MGR_A_SET) && py_index(r->a, o->n, &at))
        return -ERANGE;
    switch (r->op) {
    case CONC__MGR_V_GET:
    case CONC__MGR_A_GET:
        out_str(out, o->bytes + at * isz, isz);
        return 0;
    case CONC__MGR_V_SET:
    case CONC__MGR_A_SET:
        if (v.len != isz)
            return -EINVAL;
        memcpy(o->bytes + at * isz, v.p, isz);
        return 0;
    case CONC__MGR_A_LEN:
        out->value = (int64_t)o->n;
        return 0;
    }
    return -EINVAL;
}

/* --------------------------------------------------------------- Queue */

static int op_queue(struct conn *cn, struct obj *o, const struct conc__mgr_req *r,
                    struct out *out)
{
    int64_t deadline = req_deadline(r);
    int e;
    if (r->nargs != (r->op == CONC__MGR_Q_PUT ? 1u : 0u))
        return -EINVAL;
    switch (r->op) {
    case CONC__MGR_Q_PUT: {
        struct conc__mgr_str v;
        size_t pos = 0;
        conc__mgr_next(r->args, r->args_len, &pos, &v);
        while (o->n && o->qlen >= o->n)
            if ((e = wait_slice(cn, o, deadline)))
                return e;
        struct qmsg *m = malloc(sizeof *m + v.len);
        if (!m)
            return -ENOMEM;
        m->next = NULL;
        m->seq = o->qseq++;
        m->len = v.len;
        if (v.len)
            memcpy(m->data, v.p, v.len);
        if (o->qtail)
            o->qtail->next = m;
        else
            o->qhead = m;
        o->qtail = m;
        o->qlen++;
        o->unfinished++;
        conc_cond_notify_all(&o->cv);
        return 0;
    }
    case CONC__MGR_Q_GET: {
        while (!o->qlen)
            if ((e = wait_slice(cn, o, deadline)))
                return e;
        struct qmsg *m = o->qhead;
        if (!fits(out, m->len))
            return -EMSGSIZE;           /* it stays first in the queue */
        out_str(out, m->data, m->len);
        if (out->nomem)
            return -ENOMEM;
        out->taken_seq = m->seq;
        o->qhead = m->next;
        if (!o->qhead)
            o->qtail = NULL;
        o->qlen--;
        free(m);
        conc_cond_notify_all(&o->cv);
        return 0;
    }
    case CONC__MGR_Q_SIZE:
        out->value = (int64_t)o->qlen;
        return 0;
    case CONC__MGR_Q_INFO:              /* full() and empty() from one look */
        out->value = (int64_t)o->qlen;
        return (int)o->n;               /* at most INT32_MAX (params_check) */
    case CONC__MGR_Q_TASK_DONE:
        /* Both types: a SyncManager's Queue and JoinableQueue are both a
         * queue.Queue, with task_done and join. */
        if (!o->unfinished)
            return -EOVERFLOW;
        if (--o->unfinished == 0)
            conc_cond_notify_all(&o->cv);
        return 0;
    case CONC__MGR_Q_JOIN:
        while (o->unfinished)
            if ((e = wait_slice(cn, o, deadline)))
                return e;
        return 0;
    }
    return -EINVAL;
}

/* ------------------------------------------- locks, semaphores, Event */

static bool is_rlock(const struct obj *o)
{
    return o->type == CONC_PROXY_RLOCK || o->type == CONC_PROXY_CONDITION;
}

static bool is_sem(const struct obj *o)
{
    return o->type == CONC_PROXY_SEMAPHORE || o->type == CONC_PROXY_BOUNDED_SEMAPHORE;
}

static int op_acquire(struct conn *cn, struct obj *o, const struct conc__mgr_req *r)
{
    int64_t deadline = req_deadline(r);
    int e;
    if (r->nargs)
        return -EINVAL;
    if (hold_add(cn, o, 0))
        return -ENOMEM;                 /* room for the holding, before taking it */
    if (is_sem(o)) {
        while (!o->value)
            if ((e = wait_slice(cn, o, deadline)))
                return e;
        o->value--;
        o->held++;
        hold_add(cn, o, 1);
        return 0;
    }
    if (o->owner == cn->serial) {
        if (!is_rlock(o))
            return -EDEADLK;
        o->depth++;
        hold_add(cn, o, 1);
        return 0;
    }
    while (o->owner)
        if ((e = wait_slice(cn, o, deadline)))
            return e;
    o->owner = cn->serial;
    o->depth = 1;
    hold_add(cn, o, 1);
    return 0;
}

static int op_release(struct conn *cn, struct obj *o, const struct conc__mgr_req *r)
{
    if (r->nargs)
        return -EINVAL;
    if (is_sem(o)) {
        if (o->type == CONC_PROXY_BOUNDED_SEMAPHORE && o->value >= o->n)
            return -EOVERFLOW;
        o->value++;
        if (o->held)
            o->held--;
        hold_sub(cn, o, 1);
        conc_cond_notify_all(&o->cv);
        return 0;
    }
    if (o->type == CONC_PROXY_LOCK && o->owner && o->owner != cn->serial) {
        /* threading.Lock: any connection may release a held Lock.  The
         * holder's own count stays; it is given back only while the
         * holder still owns the Lock (hold_release_all). */
        o->owner = 0;
        o->depth = 0;
        conc_cond_notify_all(&o->cv);
        return 0;
    }
    if (o->owner != cn->serial)
        return -EPERM;
    hold_sub(cn, o, 1);
    if (--o->depth == 0) {
        o->owner = 0;
        conc_cond_notify_all(&o->cv);
    }
    return 0;
}

static int op_event(struct conn *cn, struct obj *o, const struct conc__mgr_req *r,
                    struct out *out)
{
    int e;
    if (r->nargs)
        return -EINVAL;
    switch (r->op) {
    case CONC__MGR_E_SET:
        o->flag = true;
        o->sets++;
        conc_cond_notify_all(&o->cv);
        return 0;
    case CONC__MGR_E_CLEAR:
        o->flag = false;
        return 0;
    case CONC__MGR_E_IS_SET:
        out->value = o->flag;
        return 0;
    case CONC__MGR_E_WAIT: {
        /* threading.Event: a set() wakes every waiter of that moment,
         * also when a clear() came before the waiter looked again. */
        int64_t deadline = req_deadline(r);
        uint64_t sets = o->sets;
        while (!o->flag && o->sets == sets)
            if ((e = wait_slice(cn, o, deadline)))
                return e;
        return 0;
    }
    }
    return -EINVAL;
}

/* ----------------------------------------------------------- Condition */

static int op_cond(struct conn *cn, struct obj *o, const struct conc__mgr_req *r)
{
    if (r->nargs)
        return -EINVAL;
    if (o->owner != cn->serial)
        return -EPERM;
    if (r->op == CONC__MGR_C_NOTIFY) {
        uint64_t n = r->a < 0 ? UINT64_MAX : (uint64_t)r->a;
        while (n && o->whead) {
            struct waiter *w = o->whead;
            o->whead = w->next;
            w->notified = true;
            n--;
        }
        conc_cond_notify_all(&o->cv);
        return 0;
    }
    int64_t deadline = req_deadline(r);
    uint64_t depth = o->depth;
    o->owner = 0;
    o->depth = 0;
    hold_sub(cn, o, depth);
    struct waiter me = { NULL, false }, **pp = &o->whead;
    while (*pp)
        pp = &(*pp)->next;
    *pp = &me;
    conc_cond_notify_all(&o->cv);
    int e = 0;
    while (!me.notified)
        if ((e = wait_slice(cn, o, deadline))) {
            for (pp = &o->whead; *pp; pp = &(*pp)->next)
                if (*pp == &me) {
                    *pp = me.next;
                    break;
                }
            break;
        }
    if (e == -ECONNRESET) {
        /* A notify that reached a client gone meanwhile goes to the next
         * waiter: notify(n) wakes n live waiters where it can. */
        if (me.notified && o->whead) {
            struct waiter *w = o->whead;
            o->whead = w->next;
            w->notified = true;
            conc_cond_notify_all(&o->cv);
        }
        return e;
    }
    while (o->owner)                    /* take the lock back, however long */
        if (wait_slice(cn, o, CONC_NO_DEADLINE))
            return -ECONNRESET;
    o->owner = cn->serial;
    o->depth = depth;
    hold_add(cn, o, depth);
    return me.notified ? 0 : -ETIMEDOUT;
}

/* ------------------------------------------------------------- Barrier */

static int op_barrier(struct conn *cn, struct obj *o, const struct conc__mgr_req *r,
                      struct out *out)
{
    if (r->nargs)
        return -EINVAL;
    switch (r->op) {
    case CONC__MGR_B_ABORT:
        o->broken = true;
        conc_cond_notify_all(&o->cv);
        return 0;
    case CONC__MGR_B_RESET:
        if (o->count)
            o->reset_gen = o->gen;
        o->gen++;
        o->count = 0;
        o->broken = false;
        conc_cond_notify_all(&o->cv);
        return 0;
    case CONC__MGR_B_INFO:
        out->value = (int64_t)(o->broken ? 0 : o->count) | (int64_t)o->broken << 32;
        return (int)o->n;
    }
    if (o->broken)
        return -EPIPE;
    int64_t deadline = req_deadline(r);
    uint64_t g = o->gen, idx = o->count++;
    if (o->count == o->n) {
        o->gen++;
        o->count = 0;
        conc_cond_notify_all(&o->cv);
        return (int)idx;
    }
    for (;;) {
        if (o->gen != g)
            return o->reset_gen == g ? -EPIPE : (int)idx;
        if (o->broken)
            return -EPIPE;
        int e = wait_slice(cn, o, deadline);
        if (e && o->gen != g)           /* it tripped (or was reset) as this one ended */
            return o->reset_gen == g ? -EPIPE : (int)idx;
        if (e) {
            o->broken = true;
            conc_cond_notify_all(&o->cv);
            return e;
        }
    }
}

/* -------------------------------------------------------- user objects */

static int op_call(struct obj *o, const struct conc__mgr_req *r, struct out *out)
{
    struct conc__mgr_str m, a;
    size_t pos = 0;
    char method[CONC_MANAGER_NAME_MAX + 1];
    if (r->nargs != 2 || conc__mgr_next(r->args, r->args_len, &pos, &m) ||
        conc__mgr_next(r->args, r->args_len, &pos, &a) || !m.len || !name_ok(&m))
        return -EINVAL;
    memcpy(method, m.p, m.len);
    method[m.len] = 0;
    void *res = NULL;
    size_t rlen = 0;
    int e = o->ut->t.call(o->uobj, method, a.len ? a.p : NULL, a.len, &res, &rlen, o->ut->t.ctx);
    if (e < -4095)
        e = -EPROTO;
    if (res && e >= 0)
        out_str(out, res, rlen);
    free(res);
    return e;
}

/* ------------------------------------------------------------ dispatch */

/* The object types each op works on. */
static bool op_fits(int op, int type)
{
    switch (op) {
    case CONC__MGR_D_SET: case CONC__MGR_D_GET: case CONC__MGR_D_DEL:
        return type == CONC_PROXY_DICT || type == CONC_PROXY_NAMESPACE;
    case CONC__MGR_D_LEN: case CONC__MGR_D_KEYS: case CONC__MGR_D_ITEMS:
    case CONC__MGR_D_UPDATE: case CONC__MGR_D_POP: case CONC__MGR_D_SETDEFAULT:
        return type == CONC_PROXY_DICT;
    case CONC__MGR_L_APPEND: case CONC__MGR_L_EXTEND: case CONC__MGR_L_GET:
    case CONC__MGR_L_SET: case CONC__MGR_L_POP: case CONC__MGR_L_INSERT:
    case CONC__MGR_L_LEN: case CONC__MGR_L_SLICE:
        return type == CONC_PROXY_LIST;
    case CONC__MGR_V_GET: case CONC__MGR_V_SET:
        return type == CONC_PROXY_VALUE;
    case CONC__MGR_A_LEN: case CONC__MGR_A_GET: case CONC__MGR_A_SET:
        return type == CONC_PROXY_ARRAY;
    case CONC__MGR_Q_PUT: case CONC__MGR_Q_GET: case CONC__MGR_Q_SIZE:
    case CONC__MGR_Q_TASK_DONE: case CONC__MGR_Q_JOIN: case CONC__MGR_Q_INFO:
        return type == CONC_PROXY_QUEUE || type == CONC_PROXY_JOINABLE_QUEUE;
    case CONC__MGR_ACQUIRE: case CONC__MGR_RELEASE:
        return type == CONC_PROXY_LOCK || type == CONC_PROXY_RLOCK ||
               type == CONC_PROXY_SEMAPHORE || type == CONC_PROXY_BOUNDED_SEMAPHORE ||
               type == CONC_PROXY_CONDITION;
    case CONC__MGR_E_SET: case CONC__MGR_E_CLEAR: case CONC__MGR_E_IS_SET:
    case CONC__MGR_E_WAIT:
        return type == CONC_PROXY_EVENT;
    case CONC__MGR_C_WAIT: case CONC__MGR_C_NOTIFY:
        return type == CONC_PROXY_CONDITION;
    case CONC__MGR_B_WAIT: case CONC__MGR_B_ABORT: case CONC__MGR_B_RESET:
    case CONC__MGR_B_INFO:
        return type == CONC_PROXY_BARRIER;
    case CONC__MGR_CALL:
        return type == CONC_PROXY_USER;
    }
    return false;
}

static int dispatch(struct conn *cn, const struct conc__mgr_req *r, struct out *out)
{
    struct conc__mgr_server *s = cn->s;
    switch (r->op) {
    case CONC__MGR_PING:
        out->value = (int64_t)s->max_message;   /* what a client may send */
        return 0;
    case CONC__MGR_SHUTDOWN:
        conc__mgr_server_stop(s);
        return 0;
    case CONC__MGR_CREATE:
        return op_create(s, r, out);
    case CONC__MGR_CREATE_USER:
        return op_create_user(s, r, out);
    }
    /* Objects live until the server ends, so a connection keeps the last
     * one it used (a proxy's connection uses one) without the table lock. */
    struct obj *o = cn->last && cn->last->id == r->id ? cn->last : obj_find(s, r->id);
    if (!o)
        return -ENOENT;
    cn->last = o;
    if (r->op == CONC__MGR_OPEN) {
        out->value = (int64_t)o->id;
        if (o->tc)
            out_str(out, &o->tc, 1);
        return o->type;
    }
    if (!op_fits(r->op, o->type))
        return -EINVAL;
    int e;
    conc_lock_acquire(&o->mu, CONC_FOREVER);
    switch (o->type) {
    case CONC_PROXY_DICT:
    case CONC_PROXY_NAMESPACE:
        e = op_dict(o, r, out);
        break;
    case CONC_PROXY_LIST:
        e = op_list(o, r, out);
        break;
    case CONC_PROXY_VALUE:
    case CONC_PROXY_ARRAY:
        e = op_bytes(o, r, out);
        break;
    case CONC_PROXY_QUEUE:
    case CONC_PROXY_JOINABLE_QUEUE:
        e = op_queue(cn, o, r, out);
        break;
    case CONC_PROXY_EVENT:
        e = op_event(cn, o, r, out);
        break;
    case CONC_PROXY_BARRIER:
        e = op_barrier(cn, o, r, out);
        break;
    case CONC_PROXY_USER:
        e = op_call(o, r, out);
        break;
    default:
        if (r->op == CONC__MGR_ACQUIRE)
            e = op_acquire(cn, o, r);
        else if (r->op == CONC__MGR_RELEASE)
            e = op_release(cn, o, r);
        else
            e = op_cond(cn, o, r);
        break;
    }
    conc_lock_release(&o->mu);
    watch_stop(cn);
    return e;
}

/* ---------------------------------------------------------- connections */

/* Puts a popped dict entry back at position at (or the end): the key is
 * not there (o->mu held).  A key set again meanwhile keeps its new value. */
static void kv_put_back(struct obj *o, const struct conc__mgr_str *k,
                        const struct conc__mgr_str *v, size_t at)
{
    if (kv_find(o, k, hash_bytes(k->p, k->len)) >= 0 || kv_set(o, k, v))
        return;
    if (at >= o->nkv - 1)
        return;                         /* it was last: kv_set put it there */
    struct kv e = o->kv[o->nkv - 1];
    memmove(&o->kv[at + 1], &o->kv[at], (o->nkv - 1 - at) * sizeof o->kv[0]);
    o->kv[at] = e;
    memset(o->idx, 0, o->icap * sizeof *o->idx);
    for (size_t j = 0; j < o->nkv; j++)
        idx_put(o, j);
}

/* The answer to a call that took something out (a Queue.get, a list's or
 * a dict's pop; its one string is the item) could not be sent: the client
 * is gone, so the item goes back where it was (its place in the queue, its
 * index in the list, its place in the dict's order) instead of being lost
 * with the client. */
static void give_back(struct obj *o, const struct conc__mgr_req *r, const struct out *out)
{
    struct conc__mgr_str item, key;
    size_t pos = 0;
    if (!o || out->len < CONC__MGR_ANS_HEAD ||
        conc__mgr_next(out->buf + CONC__MGR_ANS_HEAD, out->len - CONC__MGR_ANS_HEAD, &pos,
                       &item))
        return;
    conc_lock_acquire(&o->mu, CONC_FOREVER);
    if (r->op == CONC__MGR_Q_GET) {
        /* Back to its place by seq: gets given back by several
         * connections at once (each took the head in turn) keep the
         * order of their puts, whichever gives back first.  Only the
         * messages given back meanwhile can be ahead of it. */
        struct qmsg *m = malloc(sizeof *m + item.len);
        if (m) {
            m->seq = out->taken_seq;
            m->len = item.len;
            if (item.len)
                memcpy(m->data, item.p, item.len);
            struct qmsg **at = &o->qhead;
            while (*at && (*at)->seq < m->seq)
                at = &(*at)->next;
            m->next = *at;
            *at = m;
            if (!m->next)
                o->qtail = m;
            o->qlen++;
        }
    } else if (r->op == CONC__MGR_L_POP) {
        li_insert(o, out->taken_at < o->nli ? out->taken_at : o->nli, &item);
    } else {
        pos = 0;                        /* D_POP: its one string is the key */
        if (!conc__mgr_next(r->args, r->args_len, &pos, &key))
            kv_put_back(o, &key, &item, out->taken_at);
    }
    conc_cond_notify_all(&o->cv);
    conc_lock_release(&o->mu);
}

static void *conn_main(void *arg)
{
    struct conn *cn = arg;
    struct out out = { 0 };
    bool hello = conc_conn_send_bytes(cn->c, CONC__MGR_HELLO, CONC__MGR_HELLO_LEN,
                                      CONC_FOREVER) == 0;
    while (hello) {
        void *buf;
        size_t len;
        /* A client waits for each answer, so the next request is seldom
         * there yet: the connection parks on its socket first when its
         * last read emptied it (pipe.c), in the hub's edge-triggered mode,
         * so a request costs one epoll_wait, one recv and one send. */
        if (conc_conn_recv_alloc(cn->c, &buf, &len, CONC_FOREVER))
            break;
        struct conc__mgr_req r;
        if (conc__mgr_req_parse(buf, len, &r)) {
            free(buf);                  /* a malformed request ends its connection */
            break;
        }
        out.len = CONC__MGR_ANS_HEAD;
        out.nargs = 0;
        out.value = 0;
        out.nomem = false;
        /* c of every op but CREATE is the client's own message size: no
         * answer is larger (0, from an older client: the server's). */
        out.limit = cn->s->max_message;
        if (r.op != CONC__MGR_CREATE && r.c > 0 && (uint64_t)r.c < out.limit)
            out.limit = (size_t)r.c;
        if (!out.buf) {
            out.buf = malloc(256);
            out.cap = out.buf ? 256 : 0;
        }
        int e = out.buf ? dispatch(cn, &r, &out) : -ENOMEM;
        if (out.nomem || !out.buf || out.len > out.limit) {
            if (!out.buf) {
                free(buf);
                break;
            }
            e = out.nomem ? -ENOMEM : -EMSGSIZE;
            out.len = CONC__MGR_ANS_HEAD;
            out.nargs = 0;
        }
        conc__mgr_ans_write_head(out.buf, e, out.nargs, out.value);
        /* The request (r points into buf) stays until the answer is out:
         * a pop whose answer cannot be sent puts its key back. */
        if (conc_conn_send_bytes(cn->c, out.buf, out.len, CONC_FOREVER)) {
            if ((r.op == CONC__MGR_Q_GET || r.op == CONC__MGR_L_POP ||
                 r.op == CONC__MGR_D_POP) && e == 0)
                give_back(cn->last, &r, &out);
            free(buf);
            break;
        }
        free(buf);
        if (e == -ECONNRESET)
            break;
    }
    free(out.buf);
    hold_release_all(cn);
    shutdown(cn->fd, SHUT_RDWR);        /* the client sees the end at once */
    __atomic_store_n(&cn->done, 1, __ATOMIC_RELEASE);
    if (cn->w->idx == 0)
        ring(cn->s);                    /* the accept loop reaps it */
    else
        worker_ring(cn->w);             /* its worker does */
    return NULL;
}

static void conn_reap(struct worker *w, bool all)
{
    struct conc__mgr_server *s = w->s;
    for (struct conn **pp = &w->conns; *pp;) {
        struct conn *cn = *pp;
        if (all || __atomic_load_n(&cn->done, __ATOMIC_ACQUIRE)) {
            if (all)
                shutdown(cn->fd, SHUT_RDWR);
            conc_greenlet_join(cn->g, CONC_FOREVER);
            conc_greenlet_free(cn->g);
            conc_conn_free(cn->c);
            *pp = cn->next;
            __atomic_fetch_sub(&s->nconns, 1, __ATOMIC_RELAXED);
            free(cn);
        } else {
            pp = &cn->next;
        }
    }
}

/* Starts cn's greenlet in the calling thread's hub, on a stack of its own:
 * a parked request keeps records on its stack that other greenlets write
 * (a Condition waiter, op_cond), which a copied stack would not allow. */
static int conn_spawn(struct conn *cn)
{
    conc_coro_opts co = CONC_CORO_OPTS_INIT;
    co.stack_size = STACK_SIZE;
    co.name = "conc-manager-conn";
    conc_spawn_opts so = CONC_SPAWN_OPTS_INIT;
    so.coro = &co;
    so.stack = CONC_STACK_OWN;
    return conc_greenlet_spawn(&cn->g, conn_main, cn, &so);
}

/* A worker thread: serves the connections the accept loop mails it, in
 * its own hub, until its stop flag is set; then ends them. */
static void *worker_main(void *arg)
{
    struct worker *w = arg;
    for (;;) {
        /* Parked on its bell in its hub (a descriptor wait, as the accept
         * loop's): its connections run meanwhile. */
        conc_fd_wait_until(w->bell, POLLIN, CONC_NO_DEADLINE);
        uint64_t n;
        if (read(w->bell, &n, sizeof n) < 0) {
            /* EAGAIN: read by the last round */
        }
        pthread_mutex_lock(&w->mu);
        struct conn *mail = w->mail;
        bool stop = w->stop;
        w->mail = NULL;
        pthread_mutex_unlock(&w->mu);
        while (mail) {
            struct conn *cn = mail;
            mail = cn->next;
            if (conn_spawn(cn)) {
                conc_conn_free(cn->c);
                free(cn);
                __atomic_fetch_sub(&w->s->nconns, 1, __ATOMIC_RELAXED);
            } else {
                cn->next = w->conns;
                w->conns = cn;
            }
        }
        if (stop)
            break;
        conn_reap(w, false);
    }
    conn_reap(w, true);
    conc_hub_free();
    return NULL;
}

/* Starts the worker threads: as many as asked for, or one per CPU (at
 * most DEFAULT_WORKERS), the accept loop's thread counted; one thread in
 * all when the program registered types, whose callbacks run in one. */
static void workers_start(struct conc__mgr_server *s)
{
    s->w[0] = (struct worker){ .s = s, .idx = 0 };
    s->nworkers = 1;
    int cpus = conc_process_cpu_count();    /* the CPUs it may run on */
    if (cpus > DEFAULT_WORKERS)
        cpus = DEFAULT_WORKERS;
    int want = s->ntypes ? 1 : s->threads ? (int)s->threads : cpus;
    for (int i = 1; i < want; i++) {
        struct worker *w = &s->w[i];
        *w = (struct worker){ .s = s, .idx = i };
        w->bell = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (w->bell < 0)
            break;
        pthread_mutex_init(&w->mu, NULL);
        if (pthread_create(&w->t, NULL, worker_main, w)) {
            pthread_mutex_destroy(&w->mu);
            close(w->bell);
            break;
        }
        s->nworkers++;
    }
}

static void workers_stop(struct conc__mgr_server *s)
{
    for (int i = 1; i < s->nworkers; i++) {
        struct worker *w = &s->w[i];
        pthread_mutex_lock(&w->mu);
        w->stop = true;
        pthread_mutex_unlock(&w->mu);
        worker_ring(w);
        pthread_join(w->t, NULL);
        pthread_mutex_destroy(&w->mu);
        close(w->bell);
    }
    s->nworkers = 1;
}

int conc__mgr_server_new(struct conc__mgr_server **out, conc_listener *l,
                         const struct conc__mgr_type *types, size_t ntypes, size_t max_message)
{
    struct conc__mgr_server *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->types = types;
    s->ntypes = ntypes;
    s->max_message = max_message;
    s->sigfd = -1;
    /* The accept loop's wake: an epoll set of the bell (and of SIGTERM's
     * signalfd, conc__mgr_server_take_sigterm) that the listener's accept
     * waits on beside its socket. */
    int e = 0;
    s->bell = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    s->wake = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = { .events = EPOLLIN };
    if (s->bell < 0 || s->wake < 0 || epoll_ctl(s->wake, EPOLL_CTL_ADD, s->bell, &ev) < 0)
        e = -errno;
    if (!e)
        e = conc__listener_set_wake(l, s->wake);
    if (e) {
        if (s->bell >= 0)
            close(s->bell);
        if (s->wake >= 0)
            close(s->wake);
        free(s);
        return e;
    }
    s->l = l;
    conc_lock_init(&s->tmu, 0);
    *out = s;
    return 0;
}

void conc__mgr_server_threads(struct conc__mgr_server *s, unsigned n)
{
    s->threads = n > MAX_WORKERS ? MAX_WORKERS : n;
}

void conc__mgr_server_take_sigterm(struct conc__mgr_server *s)
{
    s->take_sigterm = true;
    /* SIGTERM is blocked (the caller's part): its signalfd wakes the
     * accept loop when one is pending, and the loop takes it. */
    sigset_t term;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    s->sigfd = signalfd(-1, &term, SFD_NONBLOCK | SFD_CLOEXEC);
    struct epoll_event ev = { .events = EPOLLIN };
    if (s->sigfd >= 0 && epoll_ctl(s->wake, EPOLL_CTL_ADD, s->sigfd, &ev) < 0) {
        close(s->sigfd);
        s->sigfd = -1;
    }
}

void conc__mgr_keepalive(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0 ||
        (ss.ss_family != AF_INET && ss.ss_family != AF_INET6))
        return;
    int on = 1, idle = CONC__MGR_KEEPALIVE_IDLE, intvl = CONC__MGR_KEEPALIVE_INTVL,
        cnt = CONC__MGR_KEEPALIVE_CNT;
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
}

/* Whether a SIGTERM (blocked, pending) asks the server to stop: takes it. */
static bool sigterm_pending(void)
{
    sigset_t term;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    struct timespec zero = { 0, 0 };
    return sigtimedwait(&term, NULL, &zero) == SIGTERM;
}

void conc__mgr_server_stop(struct conc__mgr_server *s)
{
    __atomic_store_n(&s->stop, 1, __ATOMIC_RELEASE);
    ring(s);
}

int conc__mgr_server_run(struct conc__mgr_server *s)
{
    bool look = true;                   /* at SIGTERM: at first, and when woken */
    workers_start(s);
    while (!stopping(s)) {
        if (look && s->take_sigterm && sigterm_pending()) {
            conc__mgr_server_stop(s);
            break;
        }
        look = false;
        conn_reap(&s->w[0], false);
        conc_conn *c;
        /* No time limit: ring() (a stop, an ended connection) and a
         * pending SIGTERM end the wait through the listener's wake. */
        int e = conc_listener_accept(s->l, &c, CONC_FOREVER);
        if (e == -EINTR) {
            uint64_t n;
            if (read(s->bell, &n, sizeof n) < 0) {
                /* EAGAIN: it was the SIGTERM */
            }
            look = true;
            continue;
        }
        if (e == -EPIPE)
            break;
        if (e == -ETIMEDOUT || e == -ECONNABORTED || e == -EACCES)
            continue;                   /* a failed handshake */
        if (e) {
            /* Out of descriptors or memory: the accept did not wait.  Let
             * the connections run (those that end give their descriptors
             * back) before the next try; trying again at once would keep
             * this loop from ever letting them run. */
            conc_sleep(ACCEPT_RETRY);
            continue;
        }
        struct conn *cn = calloc(1, sizeof *cn);
        if (!cn || __atomic_load_n(&s->nconns, __ATOMIC_RELAXED) >= MAX_CONNS ||
            conc_conn_set_max_size(c, s->max_message)) {
            free(cn);
            conc_conn_free(c);
            continue;
        }
        cn->s = s;
        cn->c = c;
        cn->fd = conc_conn_fd(c);
        conc__mgr_keepalive(cn->fd);    /* a client machine that vanishes */
        cn->serial = ++s->next_serial;
        __atomic_fetch_add(&s->nconns, 1, __ATOMIC_RELAXED);
        /* Connections are spread over the workers in turn. */
        cn->w = &s->w[cn->serial % (uint64_t)s->nworkers];
        if (cn->w->idx) {
            pthread_mutex_lock(&cn->w->mu);
            cn->next = cn->w->mail;
            cn->w->mail = cn;
            pthread_mutex_unlock(&cn->w->mu);
            worker_ring(cn->w);
            continue;
        }
        if (conn_spawn(cn)) {
            conc_conn_free(c);
            free(cn);
            __atomic_fetch_sub(&s->nconns, 1, __ATOMIC_RELAXED);
            continue;
        }
        cn->next = s->w[0].conns;
        s->w[0].conns = cn;
    }
    conc_listener_close(s->l);
    workers_stop(s);
    conn_reap(&s->w[0], true);
    /* The hub made for the connections goes with them (a hub the thread
     * had before, with greenlets of its own still running, stays). */
    conc_hub_free();
    return 0;
}

void conc__mgr_server_free(struct conc__mgr_server *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->nobjs; i++)
        obj_free(s->objs[i]);
    free(s->objs);
    conc_listener_free(s->l);
    if (s->sigfd >= 0)
        close(s->sigfd);
    close(s->bell);
    close(s->wake);
    free(s);
}
