/*
 * server.c - Python's socketserver: the server object, the handler's run,
 * stopping and draining, and the sync, threading and forking models.  The
 * prefork model is in server_proc.c, the coroutine and reactor loops in
 * server_coro.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conc/hub.h"
#include "conc/process.h"
#include "conc/thread.h"
#include "conc/wait.h"
#include "server.h"
#include "socket.h"
#include "sys/wait.h"

#define DEFAULT_DATAGRAM 8192

/* One request handed to a thread or a child process. */
static struct conc__server_kids *kids_of(conc_server *s)
{
    return &s->kids;
}

/* ------------------------------------------------------------ counting */

void conc__server_enter(conc_server *s, struct conc__server_slot *slot, int fd)
{
    slot->fd = fd;
    slot->reserved = false;
    conc_lock_acquire(&s->mu, CONC_FOREVER);
    slot->next = s->slots.next;
    slot->prev = &s->slots;
    s->slots.next->prev = slot;
    s->slots.next = slot;
    s->inflight++;
    conc_lock_release(&s->mu);
    atomic_fetch_add(&s->st->active, 1);
}

static void unlink_slot(conc_server *s, struct conc__server_slot *slot)
{
    conc_lock_acquire(&s->mu, CONC_FOREVER);
    slot->prev->next = slot->next;
    slot->next->prev = slot->prev;
    slot->prev = slot->next = slot;
    conc_lock_release(&s->mu);
}

/* The request's connection is closed by now: count it out and wake a
 * drain and the accepting loop. */
static void count_out(conc_server *s)
{
    atomic_fetch_sub(&s->st->active, 1);
    conc_lock_acquire(&s->mu, CONC_FOREVER);
    s->inflight--;
    conc_cond_notify_all(&s->cv);
    /* Only a loop at the connection limit waits for slotfd (it said so
     * under mu, before it waited): no write for every request. */
    bool wake_loop = s->loop_waits_slot;
    conc_lock_release(&s->mu);
    if (wake_loop) {
        uint64_t one = 1;
        ssize_t w = write(s->slotfd, &one, sizeof one);
        (void)w;
    }
}

void conc__server_leave(conc_server *s, struct conc__server_slot *slot)
{
    unlink_slot(s, slot);
    if (slot->reserved)
        conc__server_unreserve(s);
    count_out(s);
}

void conc__server_leave_close(conc_server *s, struct conc__server_slot *slot, int fd)
{
    unlink_slot(s, slot);
    close(fd);
    if (slot->reserved)
        conc__server_unreserve(s);
    count_out(s);
}

/* ------------------------------------------------- the loops' limit */

/* Why no wake-up is lost: reserve's compare-and-swap and unreserve's
 * subtraction, arm's count of armed gates and unreserve's look at it are
 * all sequentially consistent.  A loop arms its gate, then tries reserve
 * again; a connection's end gives its room back, then looks for armed
 * gates.  Either the loop's second try sees the room, or the end sees the
 * armed gate and writes its eventfd. */
bool conc__server_reserve(conc_server *s)
{
    long lim = s->o.max_connections;
    if (lim <= 0)
        return true;
    long n = atomic_load(&s->open);
    while (n < lim)
        if (atomic_compare_exchange_weak(&s->open, &n, n + 1))
            return true;
    return false;
}

/* Disarms g (mu held); true when it was armed. */
static bool gate_disarm(conc_server *s, struct conc__server_gate *g)
{
    if (!g->armed)
        return false;
    g->armed = false;
    atomic_fetch_sub(&s->gates_armed, 1);
    return true;
}

void conc__server_unreserve(conc_server *s)
{
    if (s->o.max_connections <= 0)
        return;
    atomic_fetch_sub(&s->open, 1);
    if (atomic_load(&s->gates_armed) == 0)
        return;
    conc_lock_acquire(&s->mu, CONC_FOREVER);
    for (struct conc__server_gate *g = s->gates; g; g = g->next) {
        if (gate_disarm(s, g)) {
            uint64_t one = 1;
            ssize_t w = write(g->fd, &one, sizeof one);
            (void)w;
        }
    }
    conc_lock_release(&s->mu);
}

int conc__server_gate_open(conc_server *s, struct conc__server_gate *g)
{
    g->armed = false;
    g->fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (g->fd < 0)
        return -errno;
    conc_lock_acquire(&s->mu, CONC_FOREVER);
    g->next = s->gates;
    s->gates = g;
    conc_lock_release(&s->mu);
    return 0;
}

void conc__server_gate_close(conc_server *s, struct conc__server_gate *g)
{
    if (g->fd < 0)
        return;
    conc_lock_acquire(&s->mu, CONC_FOREVER);
    gate_disarm(s, g);
    for (struct conc__server_gate **pp = &s->gates; *pp; pp = &(*pp)->next)
        if (*pp == g) {
            *pp = g->next;
            break;
        }
    conc_lock_release(&s->mu);
    conc__wait_fd_close(g->fd);
    close(g->fd);
    g->fd = -1;
}

void conc__server_gate_clear(struct conc__server_gate *g)
{
    uint64_t v;
    while (read(g->fd, &v, sizeof v) > 0) {
    }
}

bool conc__server_gate_arm(conc_server *s, struct conc__server_gate *g)
{
    conc__server_gate_clear(g);     /* a wake-up that came too late to matter */
    conc_lock_acquire(&s->mu, CONC_FOREVER);
    if (!g->armed) {
        g->armed = true;
        atomic_fetch_add(&s->gates_armed, 1);
    }
    conc_lock_release(&s->mu);
    if (!conc__server_reserve(s))
        return false;
    conc_lock_acquire(&s->mu, CONC_FOREVER);
    gate_disarm(s, g);
    conc_lock_release(&s->mu);
    return true;
}

/* True when lim (> 0) requests are in flight; the accepting loop then
 * waits for slotfd, which count_out writes from then on. */
static bool at_limit(conc_server *s, long lim)
{
    conc_lock_acquire(&s->mu, CONC_FOREVER);
    bool full = s->inflight >= lim;
    s->loop_waits_slot = full;
    conc_lock_release(&s->mu);
    return full;
}

/* ------------------------------------------------------------- handler */

int conc__server_run_hooks(conc_server *s, conc_server_request *req)
{
    int rc = s->h.setup ? s->h.setup(req) : 0;
    if (rc >= 0) {
        /* Python's order: finish runs in handle's `finally`, then the
         * server's handle_error sees what handle raised. */
        rc = s->h.handle(req);
        if (s->h.finish)
            s->h.finish(req);
        if (rc < 0 && s->h.handle_error)
            s->h.handle_error(req, rc);
    } else if (s->h.handle_error) {
        s->h.handle_error(req, rc);
    }
    return rc < 0 ? rc : 0;
}

int conc__server_run_handler(conc_server *s, conc_server_request *req)
{
    int rc = conc__server_run_hooks(s, req);
    if (rc < 0)
        atomic_fetch_add(&s->st->failed, 1);
    else
        atomic_fetch_add(&s->st->finished, 1);
    return rc < 0 ? rc : 0;
}

void conc__server_dispatch_failed(conc_server *s, conc_socket *c, const conc_sockaddr *peer,
                                  const void *data, size_t len, int err)
{
    atomic_fetch_add(&s->st->failed, 1);
    if (s->h.handle_error) {
        conc_server_request req;
        conc__server_init_request(s, &req, c, peer, data, len);
        s->h.handle_error(&req, err);
    }
}

int64_t conc__server_service_first(const conc_server *s)
{
    if (!s->o.service_actions ||
        atomic_load(&s->serving_tid) != conc_thread_get_native_id())
        return CONC_NO_DEADLINE;
    return conc_now() + s->service_step;
}

void conc__server_service_due(conc_server *s, int64_t *at)
{
    if (*at == CONC_NO_DEADLINE || conc__server_stop_asked(s))
        return;
    int64_t now = conc_now();
    if (now < *at)
        return;
    s->o.service_actions(s, s->o.user);
    *at = conc_now() + s->service_step;
}

void conc__server_init_request(conc_server *s, conc_server_request *req, conc_socket *c,
                         const conc_sockaddr *peer, const void *data, size_t len)
{
    memset(req, 0, sizeof *req);
    req->server = s;
    req->sock = c ? c : s->sock;
    if (peer)
        req->peer = *peer;
    req->data = data;
    req->len = len;
    req->user = s->h.user;
}

void conc__server_serve_entered(conc_server *s, conc_socket *c, const conc_sockaddr *peer,
                                const void *data, size_t len, struct conc__server_slot *slot)
{
    conc_server_request req;
    conc__server_init_request(s, &req, c, peer, data, len);
    conc__server_run_handler(s, &req);
    unlink_slot(s, slot);
    if (c)
        conc_socket_free(c);
    if (slot->reserved)
        conc__server_unreserve(s);
    count_out(s);
}

void conc__server_serve_conn(conc_server *s, conc_socket *c, const conc_sockaddr *peer)
{
    struct conc__server_slot slot;
    conc__server_enter(s, &slot, conc_socket_fd(c));
    conc__server_serve_entered(s, c, peer, NULL, 0, &slot);
}

void conc__server_serve_datagram(conc_server *s, const conc_sockaddr *peer, const void *data,
                                 size_t len)
{
    struct conc__server_slot slot;
    conc__server_enter(s, &slot, -1);
    conc__server_serve_entered(s, NULL, peer, data, len, &slot);
}

/* -------------------------------------------------------------- refs */

static void server_release(conc_server *s)
{
    if (atomic_fetch_sub(&s->refs, 1) != 1)
        return;
    close(s->stopfd);
    close(s->slotfd);
    if (s->st)
        munmap(s->st, sizeof *s->st);
    free(s->kids.p);
    free(s);
}

/* ----------------------------------------------------------- threading */

/* A request thread of the THREADING model.  Once its request ended it
 * parks on the server's list (at most thread_cache of them, 0: no count
 * limit, each thread_idle seconds unused at most) and serves the next request
 * dispatch hands it, instead of ending: no thread to create and end per
 * request.  Whoever takes it off the list (mu) owns it: dispatch gives it
 * a job, close tells it to end; either then sets `go` (release) and wakes
 * it, with one system call; the thread sleeps on `go` alone, the
 * server's lock is not taken again to wake it.  Each holds a reference to
 * the server. */
struct conc__server_worker {
    conc_server *s;
    pthread_t tid;
    struct conc__server_job *job;       /* the next request, NULL: end */
    bool joined;                        /* with job NULL: close joins it
                                           (else it detaches itself) */
    uint32_t go;                        /* 1 once job and joined are set */
    bool listed;                        /* on the parked list (mu) */
    struct conc__server_worker *prev, *next;
};

static void parked_unlink(conc_server *s, struct conc__server_worker *w)
{
    if (w->prev)
        w->prev->next = w->next;
    else
        s->parked.head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    w->prev = w->next = NULL;
    w->listed = false;
    s->parked.n--;
}

/* Hands w (off the list, owned by the caller) its next request, or none
 * (j NULL: it ends, joined by the caller when `joined`). */
static void parked_go(struct conc__server_worker *w, struct conc__server_job *j, bool joined)
{
    w->job = j;
    w->joined = joined;
    __atomic_store_n(&w->go, 1, __ATOMIC_RELEASE);
    conc__wake(&w->go, 1, 0);
}

/* The request of a thread ended (its connection closed): counts it out
 * and, in the same hold of the lock, parks the thread when it may be kept.
 * Returns true when parked. */
static bool leave_and_park(conc_server *s, struct conc__server_worker *w, bool keep)
{
    atomic_fetch_sub(&s->st->active, 1);
    conc_lock_acquire(&s->mu, CONC_FOREVER);
    s->inflight--;
    conc_cond_notify_all(&s->cv);
    bool wake_loop = s->loop_waits_slot;
    keep = keep && !s->parked.closed && s->parked.n < s->parked.max;
    if (keep) {
        w->job = NULL;
        w->go = 0;
        w->tid = pthread_self();
        w->prev = NULL;
        w->next = s->parked.head;
        if (w->next)
            w->next->prev = w;
        s->parked.head = w;
        w->listed = true;
        s->parked.n++;
    }
    conc_lock_release(&s->mu);
    if (wake_loop) {
        uint64_t one = 1;
        ssize_t n = write(s->slotfd, &one, sizeof one);
        (void)n;
    }
    return keep;
}

/* A parked thread waits to be handed a request (returned) or told to end
 * (NULL; *joined: close joins it), or to be unused for too long (NULL). */
static struct conc__server_job *parked_wait(conc_server *s, struct conc__server_worker *w,
                                            bool *joined)
{
    double idle = s->o.thread_idle > 0 ? s->o.thread_idle : CONC_SERVER_THREAD_IDLE;
    int64_t deadline = idle < 1e9 ? conc_now() + (int64_t)(idle * 1e9) : CONC_NO_DEADLINE;
    *joined = false;
    while (!__atomic_load_n(&w->go, __ATOMIC_ACQUIRE)) {
        if (conc__wait(&w->go, 0, deadline, 0) != -ETIMEDOUT)
            continue;
        /* Still on the list: nobody took it, it ends (unused for too
         * long).  Off it: dispatch or close took it and sets go soon. */
        conc_lock_acquire(&s->mu, CONC_FOREVER);
        bool mine = w->listed;
        if (mine)
            parked_unlink(s, w);
        conc_lock_release(&s->mu);
        if (mine)
            return NULL;
        deadline = CONC_NO_DEADLINE;
    }
    *joined = w->joined;
    return w->job;
}

static void *thread_main(void *arg)
{
    struct conc__server_worker *w = arg;
    conc_server *s = w->s;
    struct conc__server_job *j = w->job;
    bool joined = false;
    while (j) {
        conc_server_request req;
        conc__server_init_request(s, &req, j->c, &j->peer, j->len ? j->data : NULL, j->len);
        conc__server_run_handler(s, &req);
        unlink_slot(s, &j->slot);
        if (j->c)
            conc_socket_free(j->c);
        free(j);
        /* A hub the handler made is removed, so that the next request
         * starts as on a new thread; one with greenlets left ends with its
         * thread, as it did before threads were kept. */
        bool keep = conc_hub_free() == 0;
        j = leave_and_park(s, w, keep) ? parked_wait(s, w, &joined) : NULL;
    }
    if (!joined)
        pthread_detach(pthread_self());
    free(w);
    server_release(s);
    return NULL;
}

struct conc__server_job *conc__server_job_new(conc_server *s, conc_socket *c,
                                              const conc_sockaddr *peer, const void *data,
                                              size_t len)
{
    struct conc__server_job *j = malloc(sizeof *j + len);
    if (!j)
        return NULL;
    j->s = s;
    j->c = c;
    j->peer = *peer;
    j->len = len;
    if (len)
        memcpy(j->data, data, len);
    return j;
}

/* Forgets the parked threads of the process that made the server in a
 * child forked from it, where they do not exist (mu held). */
static void parked_forget(conc_server *s)
{
    while (s->parked.head) {
        struct conc__server_worker *w = s->parked.head;
        parked_unlink(s, w);
        free(w);
        atomic_fetch_sub(&s->refs, 1);
    }
}

/* close: the parked threads end (close joins them) and no thread parks
 * from now on. */
static void parked_close(conc_server *s)
{
    conc_lock_acquire(&s->mu, CONC_FOREVER);
    s->parked.closed = true;
    if (getpid() != s->owner)
        parked_forget(s);
    size_t n = (size_t)s->parked.n;
    struct conc__server_worker **ws = n ? malloc(n * sizeof *ws) : NULL;
    pthread_t *t = n ? malloc(n * sizeof *t) : NULL;
    size_t k = 0;
    while (s->parked.head) {
        struct conc__server_worker *w = s->parked.head;
        parked_unlink(s, w);
        if (ws && t && k < n) {
            t[k] = w->tid;
            ws[k++] = w;
        } else {
            parked_go(w, NULL, false);  /* no room to join it: it detaches */
        }
    }
    conc_lock_release(&s->mu);
    for (size_t i = 0; i < k; i++)
        parked_go(ws[i], NULL, true);
    for (size_t i = 0; i < k; i++)
        pthread_join(t[i], NULL);
    free(ws);
    free(t);
}

static int start_thread(conc_server *s, conc_socket *c, const conc_sockaddr *peer,
                        const void *data, size_t len)
{
    struct conc__server_job *j = conc__server_job_new(s, c, peer, data, len);
    if (!j)
        return -ENOMEM;
    /* Counted in (conc__server_enter) and a parked thread taken in one
     * hold of the lock. */
    j->slot.fd = c ? conc_socket_fd(c) : -1;
    j->slot.reserved = false;
    conc_lock_acquire(&s->mu, CONC_FOREVER);
    j->slot.next = s->slots.next;
    j->slot.prev = &s->slots;
    s->slots.next->prev = &j->slot;
    s->slots.next = &j->slot;
    s->inflight++;
    struct conc__server_worker *w = s->parked.head;
    if (w && getpid() != s->owner) {
        parked_forget(s);
        w = NULL;
    }
    if (w)
        parked_unlink(s, w);
    conc_lock_release(&s->mu);
    atomic_fetch_add(&s->st->active, 1);
    if (w) {
        parked_go(w, j, false);
        return 0;
    }
    w = calloc(1, sizeof *w);
    int rc = ENOMEM;
    if (w) {
        w->s = s;
        w->job = j;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        if (s->o.stack_size)
            pthread_attr_setstacksize(&attr, s->o.stack_size);
        atomic_fetch_add(&s->refs, 1);
        pthread_t t;
        rc = pthread_create(&t, &attr, thread_main, w);
        pthread_attr_destroy(&attr);
        if (rc != 0)
            atomic_fetch_sub(&s->refs, 1);
    }
    if (rc != 0) {
        unlink_slot(s, &j->slot);
        count_out(s);
        free(w);
        free(j);
        return -rc;
    }
    return 0;
}

/* ------------------------------------------------------------- forking */

static int child_main(const void *arg, size_t len)
{
    (void)len;
    struct conc__server_job *j;
    memcpy(&j, arg, sizeof j);
    conc_server *s = j->s;
    /* The child serves one request: the listening socket is the parent's. */
    if (s->fd >= 0 && (!j->c || conc_socket_fd(j->c) != s->fd) && s->type == SOCK_STREAM)
        close(s->fd);
    conc_server_request req;
    conc__server_init_request(s, &req, j->c, &j->peer, j->len ? j->data : NULL, j->len);
    int rc = conc__server_run_hooks(s, &req);
    if (j->c)
        conc_socket_close(j->c);
    return rc < 0 ? 1 : 0;
}

static int start_child(conc_server *s, conc_socket *c, const conc_sockaddr *peer,
                       const void *data, size_t len)
{
    struct conc__server_kids *k = kids_of(s);
    if (k->n == k->cap) {
        size_t cap = k->cap ? 2 * k->cap : 16;
        conc_process **p = realloc(k->p, cap * sizeof *p);
        if (!p)
            return -ENOMEM;
        k->p = p;
        k->cap = cap;
    }
    struct conc__server_job *j = conc__server_job_new(s, c, peer, data, len);
    if (!j)
        return -ENOMEM;
    conc_process_opts po = CONC_PROCESS_OPTS_INIT;
    po.method = CONC_START_FORK;
    po.daemon = CONC_NOT_DAEMON;
    conc_process *p;
    int rc = conc_process_new(&p, child_main, &j, sizeof j, &po);
    if (rc == 0) {
        rc = conc_process_start(p);
        if (rc < 0)
            conc_process_free(p);
    }
    free(j);                        /* the child has its copy */
    if (rc < 0)
        return rc;
    k->p[k->n++] = p;
    atomic_fetch_add(&s->st->active, 1);
    conc_lock_acquire(&s->mu, CONC_FOREVER);
    s->inflight++;
    conc_lock_release(&s->mu);
    return 0;
}

int conc__server_add_kid(conc_server *s, struct conc_process *p)
{
    struct conc__server_kids *k = kids_of(s);
    if (k->n == k->cap) {
        size_t cap = k->cap ? 2 * k->cap : 16;
        conc_process **np = realloc(k->p, cap * sizeof *np);
        if (!np)
            return -ENOMEM;
        k->p = np;
        k->cap = cap;
    }
    k->p[k->n++] = p;
    atomic_fetch_add(&s->st->active, 1);
    conc_lock_acquire(&s->mu, CONC_FOREVER);
    s->inflight++;
    conc_lock_release(&s->mu);
    return 0;
}

/* Reaps child i (ended), counting it out. */
static void reap_kid(conc_server *s, size_t i)
{
    struct conc__server_kids *k = kids_of(s);
    conc_process *p = k->p[i];
    conc_process_join(p, CONC_FOREVER);
    int code = -1;
    conc_process_exitcode(p, &code);
    if (code == 0)
        atomic_fetch_add(&s->st->finished, 1);
    else
        atomic_fetch_add(&s->st->failed, 1);
    conc_process_free(p);
    k->p[i] = k->p[--k->n];
    count_out(s);
}

static void reap_ended(conc_server *s)
{
    struct conc__server_kids *k = kids_of(s);
    for (size_t i = 0; i < k->n;) {
        if (!conc_process_is_alive(k->p[i]))
            reap_kid(s, i);
        else
            i++;
    }
}

/* Waits for every child.  Those left when the shutdown timeout (from
 * stop_at) passes get SIGTERM, and those still there
 * CONC_SERVER_KILL_GRACE later SIGKILL (a child that blocks or catches
 * SIGTERM, as one forked from a program taking its stop signals with
 * sigwait does, still ends). */
static void drain_kids(conc_server *s, int64_t stop_at)
{
    struct conc__server_kids *k = kids_of(s);
    int64_t deadline = s->o.shutdown_timeout > 0
        ? stop_at + (int64_t)(s->o.shutdown_timeout * 1e9) : CONC_NO_DEADLINE;
    bool termed = false;            /* SIGTERM sent: the next is SIGKILL */
    while (k->n > 0) {
        if (conc_process_join_until(k->p[0], deadline) != -ETIMEDOUT) {
            reap_kid(s, 0);
            continue;
        }
        for (size_t i = 0; i < k->n; i++) {
            if (termed)
                conc_process_kill(k->p[i]);
            else
                conc_process_terminate(k->p[i]);
        }
        deadline = termed ? CONC_NO_DEADLINE
                          : conc_now() + (int64_t)(CONC_SERVER_KILL_GRACE * 1e9);
        termed = true;
    }
}

/* -------------------------------------------------------------- drain */

void conc__server_force(conc_server *s)
{
    conc_lock_acquire(&s->mu, CONC_FOREVER);
    for (struct conc__server_slot *p = s->slots.next; p != &s->slots; p = p->next)
        if (p->fd >= 0)
            shutdown(p->fd, SHUT_RDWR);
    conc_lock_release(&s->mu);
}

void conc__server_drain(conc_server *s, int64_t stop_at)
{
    int64_t deadline = s->o.shutdown_timeout > 0
        ? stop_at + (int64_t)(s->o.shutdown_timeout * 1e9) : CONC_NO_DEADLINE;
    conc_lock_acquire(&s->mu, CONC_FOREVER);
    while (s->inflight > 0) {
        int rc = conc_cond_wait_until(&s->cv, &s->mu, deadline);
        if (rc == -ETIMEDOUT) {
            for (struct conc__server_slot *p = s->slots.next; p != &s->slots; p = p->next)
                if (p->fd >= 0)
                    shutdown(p->fd, SHUT_RDWR);
            deadline = CONC_NO_DEADLINE;
        }
    }
    conc_lock_release(&s->mu);
}

static bool waits_on_close(const conc_server *s)
{
    if (s->o.no_block_on_close)
        return false;
    if (s->o.model == CONC_SERVER_THREADING && s->o.daemon_threads)
        return false;
    return true;
}

/* ------------------------------------------------------------- taking */

static long limit_of(const conc_server *s)
{
    long lim = s->o.max_connections > 0 ? s->o.max_connections : 0;
    if (s->o.model == CONC_SERVER_FORKING) {
        long mc = s->o.max_children > 0 ? s->o.max_children : CONC_SERVER_MAX_CHILDREN;
        if (!lim || mc < lim)
            lim = mc;
    }
    return lim;
}

static int dispatch(conc_server *s, conc_socket *c, const conc_sockaddr *peer, const void *data,
                    size_t len)
{
    switch (s->o.model) {
    case CONC_SERVER_THREADING:
        return start_thread(s, c, peer, data, len);
    case CONC_SERVER_FORKING: {
        int rc = start_child(s, c, peer, data, len);
        if (rc == 0 && c)
            conc_socket_free(c);    /* the child has it */
        return rc;
    }
    case CONC_SERVER_COROUTINE:
        return conc__server_spawn(s, c, peer, data, len);
    default:
        if (c)
            conc__server_serve_conn(s, c, peer);
        else
            conc__server_serve_datagram(s, peer, data, len);
        return 0;
    }
}

/* True when the model hands each connection to a thread of its own that
 * reads and writes it with no deadline: its descriptor then blocks, as
 * Python's request socket, and the thread sleeps in the kernel's recv and
 * send themselves (one system call each), not in a poll between two
 * non-blocking tries.  Deadlines, greenlets and the drain's shutdown(2)
 * still work (socket.h). */
static bool blocking_conns(const conc_server *s)
{
    return s->o.model == CONC_SERVER_THREADING && !(s->o.request_timeout > 0);
}

/* Takes one waiting request (non-blocking) and serves it.  Returns 1 when
 * one was taken (also when its thread, child or greenlet could not start:
 * handle_error saw that, as in Python), 0 when none was waiting, or an
 * error of the server's socket. */
static int take_one(conc_server *s, unsigned char *buf)
{
    conc_sockaddr peer;
    memset(&peer, 0, sizeof peer);
    if (s->type == SOCK_STREAM) {
        conc_socket *c;
        int rc = conc__socket_accept_now(s->sock, &c, &peer, blocking_conns(s));
        if (rc == -EAGAIN || rc == -ECONNABORTED || rc == -EPROTO || rc == -EINTR)
            return 0;
        if (rc == -EMFILE || rc == -ENFILE || rc == -ENOBUFS || rc == -ENOMEM) {
            conc_sleep(0.01);           /* the client stays in the backlog */
            return 0;
        }
        if (rc < 0)
            return rc;
        atomic_fetch_add(&s->st->accepted, 1);
        if (s->h.verify_request && !s->h.verify_request(s, &peer, s->h.user)) {
            atomic_fetch_add(&s->st->refused, 1);
            conc_socket_free(c);
            return 1;
        }
        conc_socket_set_timeout(c, s->o.request_timeout > 0 ? s->o.request_timeout
                                                             : CONC_FOREVER);
        rc = dispatch(s, c, &peer, NULL, 0);
        if (rc < 0) {
            conc__server_dispatch_failed(s, c, &peer, NULL, 0, rc);
            conc_socket_free(c);
        }
        return 1;
    }
    size_t cap = s->o.max_datagram ? s->o.max_datagram : DEFAULT_DATAGRAM;
    ssize_t n = conc_socket_recvfrom(s->sock, buf, cap, 0, &peer);
    if (n == -EAGAIN || n == -EINTR)
        return 0;
    if (n < 0)
        return n == -ECONNREFUSED ? 0 : (int)n;
    atomic_fetch_add(&s->st->accepted, 1);
    if (s->h.verify_request && !s->h.verify_request(s, &peer, s->h.user)) {
        atomic_fetch_add(&s->st->refused, 1);
        return 1;
    }
    int rc = dispatch(s, NULL, &peer, buf, (size_t)n);
    if (rc < 0)
        conc__server_dispatch_failed(s, NULL, &peer, buf, (size_t)n, rc);
    return 1;
}

static void clear_fd(int fd)
{
    uint64_t v;
    while (read(fd, &v, sizeof v) > 0) {
    }
}

/* serve_forever of the sync, threading and forking models (and the
 * datagram coroutine server's thread). */
static int basic_loop(conc_server *s)
{
    size_t cap = s->o.max_datagram ? s->o.max_datagram : DEFAULT_DATAGRAM;
    unsigned char *buf = s->type == SOCK_DGRAM ? malloc(cap) : NULL;
    if (s->type == SOCK_DGRAM && !buf)
        return -ENOMEM;
    long lim = limit_of(s);
    struct conc__server_kids *k = kids_of(s);
    conc_waitable *w = NULL;
    size_t wcap = 0;
    /* Python's order: service_actions after every pass of the loop, a
     * request taken or not, and at least every poll_interval. */
    int64_t next = conc_now() + s->service_step;
    int rc = 0;
    while (!conc__server_stop_asked(s)) {
        size_t need = 2 + k->n;
        if (need > wcap) {
            conc_waitable *nw = realloc(w, (need + 16) * sizeof *w);
            if (!nw) {
                rc = -ENOMEM;
                break;
            }
            w = nw;
            wcap = need + 16;
        }
        bool full = lim > 0 && at_limit(s, lim);
        memset(w, 0, need * sizeof *w);
        w[0].kind = CONC_WAIT_FD;
        w[0].u.fd = s->stopfd;
        w[1].kind = CONC_WAIT_FD;
        w[1].u.fd = full ? s->slotfd : s->fd;
        for (size_t i = 0; i < k->n; i++) {
            w[2 + i].kind = CONC_WAIT_PROCESS;
            w[2 + i].u.process = k->p[i];
        }
        int r = conc_wait_until(w, need, next);
        if (r == -ETIMEDOUT) {
            if (s->o.service_actions)
                s->o.service_actions(s, s->o.user);
            next = conc_now() + s->service_step;
            continue;
        }
        if (r < 0) {
            rc = r;
            break;
        }
        if (w[0].ready)
            break;
        if (k->n)
            reap_ended(s);
        if (full) {
            clear_fd(s->slotfd);
            continue;
        }
        if (w[1].ready) {
            /* THREADING hands each connection on at once: it takes those
             * waiting in the backlog one after another (up to the limit)
             * rather than one per wait, a poll saved per connection in a
             * burst; the others serve one per wait, as Python's. */
            int batch = s->o.model == CONC_SERVER_THREADING && s->type == SOCK_STREAM ? 64 : 1;
            do
                r = take_one(s, buf);
            while (r == 1 && --batch > 0 && !conc__server_stop_asked(s) &&
                   !(lim > 0 && at_limit(s, lim)));
            if (r < 0) {
                rc = r;
                break;
            }
            if (r == 1 && s->o.service_actions && !conc__server_stop_asked(s)) {
                s->o.service_actions(s, s->o.user);
                next = conc_now() + s->service_step;
            }
        }
    }
    free(w);
    free(buf);
    return rc;
}

/* ----------------------------------------------------------- the server */

static void close_fds(int a, int b)
{
    if (a >= 0)
        close(a);
    if (b >= 0)
        close(b);
}

/* adopt >= 0: the server takes that socket over (checked by adopt_check:
 * of type `type`, bound to *addr, listening for a stream) instead of
 * making one; nothing fails after it is taken, so on failure it is still
 * the caller's, unchanged. */
static int server_create(conc_server **out, int type, const conc_sockaddr *addr, int adopt,
                         const conc_server_opts *opts, bool reactor)
{
    conc_server_opts o;
    CONC__OPTS_COPY(&o, opts, CONC__OPTS_V1(conc_server_opts, user));
    if (!out || !addr || (type != SOCK_STREAM && type != SOCK_DGRAM))
        return -EINVAL;
    if ((unsigned)o.model > CONC_SERVER_REACTOR || o.request_queue_size < 0 || o.workers < 0 ||
        o.max_children < 0 || o.max_connections < 0 || o.max_datagram > CONC_SERVER_MAX_DATAGRAM ||
        isnan(o.shutdown_timeout) ||
        o.shutdown_timeout < 0 || isnan(o.request_timeout) || o.request_timeout < 0 ||
        isnan(o.idle_timeout) || o.idle_timeout < 0 || o.thread_cache < -1 ||
        isnan(o.thread_idle) || o.thread_idle < 0 ||
        (o.stack != 0 && o.stack != CONC_STACK_OWN && o.stack != CONC_STACK_COPIED))
        return -EINVAL;
    /* A stack size no greenlet or thread could get would fail every
     * request: refused here instead. */
    bool greenlets = o.model == CONC_SERVER_COROUTINE || o.model == CONC_SERVER_PREFORK;
    if (o.stack_size && greenlets &&
        (o.stack_size < CONC_CORO_STACK_MIN || o.stack_size > CONC_CORO_STACK_MAX))
        return -EINVAL;
    if (o.stack_size && o.model == CONC_SERVER_THREADING && o.stack_size < CONC_THREAD_STACK_MIN)
        return -EINVAL;
    if (reactor) {
        if (o.model != CONC_SERVER_SYNC && o.model != CONC_SERVER_REACTOR)
            return -EINVAL;
        o.model = CONC_SERVER_REACTOR;
        if (type != SOCK_STREAM)
            return -EINVAL;
    } else if (o.model == CONC_SERVER_REACTOR && type != SOCK_DGRAM) {
        return -EINVAL;             /* a stream reactor has callbacks */
    }
    int family = addr->u.sa.sa_family;
    if (addr->len < sizeof(sa_family_t))
        return -EINVAL;
    if (family != AF_INET && family != AF_INET6 && family != AF_UNIX)
        return -EAFNOSUPPORT;

    conc_server *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->o = o;
    s->type = type;
    s->reactor = reactor;
    s->fd = -1;
    s->stopfd = s->slotfd = -1;
    atomic_init(&s->refs, 1);
    s->owner = getpid();
    conc_lock_init(&s->mu, 0);
    conc_cond_init(&s->cv, 0);
    conc_event_init(&s->idle, 0);
    conc_event_set(&s->idle);
    s->slots.next = s->slots.prev = &s->slots;
    s->slots.fd = -1;
    s->parked.max = o.thread_cache < 0 ? 0 : o.thread_cache ? o.thread_cache : INT_MAX;
    int rc = -ENOMEM;
    s->st = mmap(NULL, sizeof *s->st, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (s->st == MAP_FAILED) {
        s->st = NULL;
        goto fail;
    }
    s->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    s->slotfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (s->stopfd < 0 || s->slotfd < 0) {
        rc = -errno;
        goto fail;
    }
    if (adopt >= 0) {
        /* conc_socket_from_fd makes the descriptor non-blocking and
         * close-on-exec before it wraps it: a failure after that gives the
         * caller back its flags as they were */
        int fl = fcntl(adopt, F_GETFL), fdfl = fcntl(adopt, F_GETFD);
        if (fl < 0 || fdfl < 0) {
            rc = -errno;
            goto fail;
        }
        rc = conc_socket_from_fd(&s->sock, adopt);
        if (rc < 0) {
            s->sock = NULL;
            fcntl(adopt, F_SETFL, fl);
            fcntl(adopt, F_SETFD, fdfl);
            goto fail;
        }
        s->addr = *addr;            /* the socket file, if any, is not ours */
        goto adopted;
    }
    rc = conc_socket_new(&s->sock, family, type, 0);
    if (rc < 0)
        goto fail;
    int one = 1;
    if (o.allow_reuse_address &&
        setsockopt(conc_socket_fd(s->sock), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0) {
        rc = -errno;
        goto fail;
    }
    rc = o.reuse_port ? conc__socket_bind_reuse_port(s->sock, addr)
                      : conc_socket_bind(s->sock, addr);
    if (rc < 0)
        goto fail;
    if (family == AF_UNIX && addr->len > sizeof(sa_family_t) && addr->u.un.sun_path[0])
        s->unlink_path = true;
    if (type == SOCK_STREAM) {
        rc = conc_socket_listen(s->sock, o.request_queue_size ? o.request_queue_size
                                                              : CONC_SERVER_QUEUE_SIZE);
        if (rc < 0)
            goto fail;
    }
    rc = conc_socket_getsockname(s->sock, &s->addr);
    if (rc < 0)
        goto fail;
    if (family == AF_UNIX && s->unlink_path && s->addr.len <= sizeof(sa_family_t))
        s->addr = *addr;
adopted:
    conc_socket_set_timeout(s->sock, 0);
    s->fd = conc_socket_fd(s->sock);
    *out = s;
    return 0;
fail:
    if (s->sock) {
        if (s->unlink_path)
            unlink(addr->u.un.sun_path);
        conc_socket_free(s->sock);
    }
    close_fds(s->stopfd, s->slotfd);
    if (s->st)
        munmap(s->st, sizeof *s->st);
    free(s);
    return rc;
}

/* What a socket to adopt must be: open, a socket, of a family and type a
 * server serves, bound, listening when a stream, in the SO_REUSEPORT
 * group when reuse_port asks for one.  Its type into *type, its address
 * into *addr.  Nothing is changed. */
static int adopt_check(int fd, const conc_server_opts *opts, int *type, conc_sockaddr *addr)
{
    if (fd < 0 || fcntl(fd, F_GETFD) < 0)
        return -EBADF;
    int v = 0, dom = 0;
    socklen_t len = sizeof v;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &v, &len) < 0)
        return -errno;              /* -ENOTSOCK */
    if (v != SOCK_STREAM && v != SOCK_DGRAM)
        return -EINVAL;
    len = sizeof dom;
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &dom, &len) < 0)
        return -errno;
    if (dom != AF_INET && dom != AF_INET6 && dom != AF_UNIX)
        return -EAFNOSUPPORT;
    memset(addr, 0, sizeof *addr);
    addr->len = sizeof addr->u;
    if (getsockname(fd, &addr->u.sa, &addr->len) < 0)
        return -errno;
    bool bound = dom == AF_UNIX ? addr->len > sizeof(sa_family_t)
                                : conc_sockaddr_port(addr) > 0;
    if (!bound)
        return -EINVAL;             /* server_bind first */
    if (v == SOCK_STREAM) {
        int on = 0;
        len = sizeof on;
        if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &len) < 0)
            return -errno;
        if (!on)
            return -EINVAL;         /* server_activate (listen) first */
    }
    if (opts && opts->reuse_port) {
        int on = 0;
        len = sizeof on;
        if (getsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, &len) < 0)
            return -errno;
        if (!on)
            return -EINVAL;         /* too late to join a group */
    }
    *type = v;
    return 0;
}

/* The four constructors: a server with handler h (or, reactor, rh) on a
 * new socket of type bound to addr, or (adopt) on the socket fd, checked
 * by adopt_check first (its type and address are then the server's). */
static int server_open(conc_server **out, int type, const conc_sockaddr *addr, bool adopt,
                       int fd, bool reactor, const conc_server_handler *h,
                       const conc_server_reactor_handler *rh, const conc_server_opts *opts)
{
    if (!out || (reactor ? !rh || !rh->on_data : !h || !h->handle))
        return -EINVAL;
    conc_sockaddr own;
    if (adopt) {
        int rc = adopt_check(fd, opts, &type, &own);
        if (rc < 0)
            return rc;
        if (reactor && type != SOCK_STREAM)
            return -EINVAL;         /* conc_server_new_fd serves datagrams */
        addr = &own;
    }
    conc_server *s = NULL;
    int rc = server_create(&s, type, addr, adopt ? fd : -1, opts, reactor);
    if (rc < 0)
        return rc;
    if (reactor)
        s->rh = *rh;
    else
        s->h = *h;
    *out = s;
    return 0;
}

int conc_server_new(conc_server **out, int type, const conc_sockaddr *addr,
                    const conc_server_handler *handler, const conc_server_opts *opts)
{
    return server_open(out, type, addr, false, -1, false, handler, NULL, opts);
}

int conc_server_new_reactor(conc_server **out, const conc_sockaddr *addr,
                            const conc_server_reactor_handler *handler,
                            const conc_server_opts *opts)
{
    return server_open(out, SOCK_STREAM, addr, false, -1, true, NULL, handler, opts);
}

int conc_server_new_fd(conc_server **out, int fd, const conc_server_handler *handler,
                       const conc_server_opts *opts)
{
    return server_open(out, 0, NULL, true, fd, false, handler, NULL, opts);
}

int conc_server_new_reactor_fd(conc_server **out, int fd,
                               const conc_server_reactor_handler *handler,
                               const conc_server_opts *opts)
{
    return server_open(out, SOCK_STREAM, NULL, true, fd, true, NULL, handler, opts);
}

static bool bad_interval(double t)
{
    return isnan(t) || t <= 0;
}

int conc_server_serve_forever(conc_server *s, double poll_interval)
{
    if (!s || bad_interval(poll_interval))
        return -EINVAL;
    if (!s->sock)
        return -EPIPE;
    /* serving and idle change together under mu: a shutdown_wait sees
     * either a server not serving (its request kept for the next
     * serve_forever) or one it can wait for. */
    conc_lock_acquire(&s->mu, CONC_FOREVER);
    int expected = 0;
    if (!atomic_compare_exchange_strong(&s->serving, &expected, 1)) {
        conc_lock_release(&s->mu);
        return -EBUSY;
    }
    conc_event_clear(&s->idle);
    atomic_store(&s->serving_tid, conc_thread_get_native_id());
    conc_lock_release(&s->mu);
    s->service_step = (int64_t)(poll_interval * 1e9);
    if (s->service_step <= 0)
        s->service_step = 1;
    int rc;
    switch (s->o.model) {
    case CONC_SERVER_COROUTINE:
        /* A datagram server reads in the calling thread, whose hub runs
         * a greenlet per datagram. */
        if (s->type == SOCK_DGRAM)
            rc = basic_loop(s);
        else
            rc = conc__server_run_loops(s, conc__server_coro_loop, -1);
        break;
    case CONC_SERVER_REACTOR:
        rc = conc__server_run_loops(s, conc__server_reactor_loop, -1);
        break;
    case CONC_SERVER_PREFORK:
        rc = conc__server_prefork(s);
        break;
    default:
        rc = basic_loop(s);
        break;
    }
    int64_t stop_at = conc_now();
    if (waits_on_close(s)) {
        /* PREFORK: the workers are gone; a handle_request's worker may be
         * left */
        if (s->o.model == CONC_SERVER_FORKING || s->o.model == CONC_SERVER_PREFORK)
            drain_kids(s, stop_at);
        else
            conc__server_drain(s, stop_at);
    }
    if (s->o.model == CONC_SERVER_COROUTINE && s->type == SOCK_DGRAM)
        conc_hub_free();            /* the hub the datagrams' greenlets made */
    conc_lock_acquire(&s->mu, CONC_FOREVER);
    clear_fd(s->stopfd);
    atomic_store(&s->stop_req, 0);
    atomic_store(&s->serving_tid, 0);
    atomic_store(&s->serving, 0);
    conc_event_set(&s->idle);
    conc_lock_release(&s->mu);
    return rc;
}

int conc_server_handle_request_until(conc_server *s, int64_t deadline)
{
    if (!s)
        return -EINVAL;
    if (!s->sock)
        return -EPIPE;
    int expected = 0;
    if (!atomic_compare_exchange_strong(&s->serving, &expected, 1))
        return -EBUSY;
    if (s->o.model == CONC_SERVER_REACTOR || s->o.model == CONC_SERVER_PREFORK) {
        int r;
        if (s->o.model == CONC_SERVER_REACTOR) {
            r = conc__server_reactor_one(s, deadline);
        } else {
            reap_ended(s);
            r = conc__server_prefork_one(s, deadline);
        }
        atomic_store(&s->serving, 0);
        return r;
    }
    size_t cap = s->o.max_datagram ? s->o.max_datagram : DEFAULT_DATAGRAM;
    unsigned char *buf = s->type == SOCK_DGRAM ? malloc(cap) : NULL;
    int rc = 0;
    if (s->type == SOCK_DGRAM && !buf)
        rc = -ENOMEM;
    if (s->o.model == CONC_SERVER_FORKING)
        reap_ended(s);
    while (rc == 0) {
        rc = conc_fd_wait_until(s->fd, POLLIN, deadline);
        if (rc < 0)
            break;
        rc = take_one(s, buf);
        if (rc == 1) {
            rc = 0;
            break;
        }
        if (rc == 0 && deadline != CONC_NO_DEADLINE && conc_now() >= deadline) {
            rc = -ETIMEDOUT;
            break;
        }
    }
    free(buf);
    atomic_store(&s->serving, 0);
    return rc;
}

int conc_server_handle_request(conc_server *s, double timeout)
{
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return (int)conc__timeout_code(poll, conc_server_handle_request_until(s, deadline));
}

int conc_server_shutdown(conc_server *s)
{
    if (!s)
        return -EINVAL;
    int saved = errno;
    atomic_store_explicit(&s->stop_req, 1, memory_order_release);
    uint64_t one = 1;
    ssize_t w = write(s->stopfd, &one, sizeof one);
    (void)w;
    errno = saved;
    return 0;
}

int conc_server_shutdown_wait_until(conc_server *s, int64_t deadline)
{
    if (!s)
        return -EINVAL;
    if (atomic_load(&s->serving_tid) == conc_thread_get_native_id())
        return -EDEADLK;            /* it would wait for itself */
    /* Asked under mu: a serve_forever starting meanwhile either sees it
     * (and returns at once) or had cleared idle before, so the wait below
     * waits for it.  Nothing serving: the request stays for the next
     * serve_forever, as Python's flag does. */
    conc_lock_acquire(&s->mu, CONC_FOREVER);
    conc_server_shutdown(s);
    bool serving = !conc_event_is_set(&s->idle);
    conc_lock_release(&s->mu);
    if (!serving)
        return 0;
    return conc_event_wait_until(&s->idle, deadline);
}

int conc_server_shutdown_wait(conc_server *s, double timeout)
{
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return (int)conc__timeout_code(poll, conc_server_shutdown_wait_until(s, deadline));
}

bool conc_server_stopping(const conc_server *s)
{
    return s && conc__server_stop_asked(s);
}

int conc_server_close(conc_server *s)
{
    if (!s)
        return -EINVAL;
    if (!s->sock)
        return 0;
    if (atomic_load(&s->serving))
        conc_server_shutdown_wait_until(s, CONC_NO_DEADLINE);
    if (s->owner == getpid() && waits_on_close(s)) {
        int64_t now = conc_now();
        if (kids_of(s)->n)
            drain_kids(s, now);
        conc__server_drain(s, now);
    } else if (kids_of(s)->n) {
        reap_ended(s);
    }
    parked_close(s);
    if (s->unlink_path && s->owner == getpid())
        unlink(s->addr.u.un.sun_path);
    conc_socket_free(s->sock);
    s->sock = NULL;
    s->fd = -1;
    return 0;
}

void conc_server_free(conc_server *s)
{
    if (!s)
        return;
    conc_server_close(s);
    struct conc__server_kids *k = kids_of(s);
    for (size_t i = 0; i < k->n; i++)     /* not waited for: let go */
        conc_process_free(k->p[i]);
    k->n = 0;
    server_release(s);
}

/* --------------------------------------------------------- attributes */

int conc_server_address(const conc_server *s, conc_sockaddr *out)
{
    if (!s || !out)
        return -EINVAL;
    if (!s->sock)
        return -EPIPE;
    *out = s->addr;
    return 0;
}

int conc_server_fd(const conc_server *s)
{
    if (!s)
        return -EINVAL;
    return s->sock ? s->fd : -EPIPE;
}

conc_server_model conc_server_get_model(const conc_server *s)
{
    return s ? s->o.model : CONC_SERVER_SYNC;
}

int conc_server_socket_type(const conc_server *s)
{
    return s ? s->type : 0;
}

int conc_server_get_stats(const conc_server *s, conc_server_stats *out)
{
    if (!s || !out)
        return -EINVAL;
    out->accepted = atomic_load(&s->st->accepted);
    out->refused = atomic_load(&s->st->refused);
    out->finished = atomic_load(&s->st->finished);
    out->failed = atomic_load(&s->st->failed);
    out->active = atomic_load(&s->st->active);
    out->workers = atomic_load(&s->st->workers);
    out->worker_restarts = atomic_load(&s->st->restarts);
    return 0;
}

static const char *const model_names[] = {
    [CONC_SERVER_SYNC] = "sync",           [CONC_SERVER_THREADING] = "threading",
    [CONC_SERVER_FORKING] = "forking",     [CONC_SERVER_PREFORK] = "prefork",
    [CONC_SERVER_COROUTINE] = "coroutine", [CONC_SERVER_REACTOR] = "reactor",
};

const char *conc_server_model_name(conc_server_model model)
{
    if ((unsigned)model >= sizeof model_names / sizeof model_names[0])
        return NULL;
    return model_names[model];
}

int conc_server_model_parse(const char *name, conc_server_model *out)
{
    if (!name || !out)
        return -EINVAL;
    for (unsigned i = 0; i < sizeof model_names / sizeof model_names[0]; i++)
        if (strcmp(model_names[i], name) == 0) {
            *out = (conc_server_model)i;
            return 0;
        }
    return -EINVAL;
}
