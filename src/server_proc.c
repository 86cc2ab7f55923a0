/*
 * server_proc.c - the prefork model: `workers` processes, forked up front,
 * share the listening socket (or, with reuse_port, bind one each) and each
 * serve it with the coroutine loop (a datagram server: a greenlet per
 * datagram, at most max_connections at once in each worker).
 * The parent supervises them (pidfds, through conc_process): a worker that
 * ends while the server runs is reported and replaced.  The workers watch
 * the read end of a pipe whose write end only the parent holds: when the
 * parent stops, or dies, they see its end and stop too.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conc/hub.h"
#include "conc/process.h"
#include "conc/wait.h"
#include "conc/time.h"
#include "server.h"

/* What a worker tells the parent through memory they share: whether its
 * loop started serving, or the error that kept it from it. */
struct worker_state {
    _Atomic int ready;
    _Atomic int err;
};

struct worker_arg {
    conc_server *s;
    int rfd, wfd;
    int slot;                       /* 0 .. workers - 1 */
    struct worker_state *ws;        /* ws[slot] is this worker's */
};

/* With reuse_port on an Internet address, each worker but the first binds
 * a socket of its own to the server's address (the first serves the
 * server's socket, which the kernel counts in the group too): the kernel
 * then spreads connections or datagrams over the workers.  Returns 0 or
 * an error. */
static int own_socket(conc_server *s)
{
    int family = s->addr.u.sa.sa_family;
    conc_socket *sock;
    int rc = conc_socket_new(&sock, family, s->type, 0);
    if (rc < 0)
        return rc;
    if ((s->o.allow_reuse_address &&
         (rc = conc_socket_setsockopt_int(sock, SOL_SOCKET, SO_REUSEADDR, 1)) < 0) ||
        (rc = conc_socket_setsockopt_int(sock, SOL_SOCKET, SO_REUSEPORT, 1)) < 0 ||
        (rc = conc_socket_bind(sock, &s->addr)) < 0 ||
        (s->type == SOCK_STREAM &&
         (rc = conc_socket_listen(sock, s->o.request_queue_size ? s->o.request_queue_size
                                                                : CONC_SERVER_QUEUE_SIZE)) < 0)) {
        conc_socket_free(sock);
        return rc;
    }
    conc_socket_set_timeout(sock, 0);
    conc_socket_free(s->sock);      /* this process's copy of the shared one */
    s->sock = sock;
    s->fd = conc_socket_fd(sock);
    return 0;
}

static int worker_main(const void *arg, size_t len)
{
    (void)len;
    struct worker_arg a;
    memcpy(&a, arg, sizeof a);
    close(a.wfd);
    conc_server *s = a.s;
    s->owner = getpid();            /* its own drain, no socket file */
    s->unlink_path = false;
    struct worker_state *me = &a.ws[a.slot];
    s->worker_ready = &me->ready;
    int family = s->addr.u.sa.sa_family;
    int rc = 0;
    if (a.slot > 0 && s->o.reuse_port && (family == AF_INET || family == AF_INET6))
        rc = own_socket(s);
    /* a datagram server too: a pool of greenlets, max_connections at
     * most, serves what this worker reads */
    if (rc == 0)
        rc = conc__server_coro_loop(s, a.rfd);
    if (rc < 0 && !atomic_load(&me->ready))
        atomic_store(&me->err, rc);
    if (atomic_load(&me->ready))
        conc__server_drain(s, conc_now());
    return rc < 0 ? 1 : 0;
}

static int start_worker(conc_server *s, const struct worker_arg *tmpl, int slot,
                        conc_process **out)
{
    struct worker_arg a = *tmpl;
    a.slot = slot;
    atomic_store(&a.ws[slot].ready, 0);
    atomic_store(&a.ws[slot].err, 0);
    conc_process_opts po = CONC_PROCESS_OPTS_INIT;
    po.method = CONC_START_FORK;
    po.daemon = CONC_DAEMON;
    conc_process *p;
    int rc = conc_process_new(&p, worker_main, &a, sizeof a, &po);
    if (rc < 0)
        return rc;
    rc = conc_process_start(p);
    if (rc < 0) {
        conc_process_free(p);
        return rc;
    }
    atomic_fetch_add(&s->st->workers, 1);
    *out = p;
    return 0;
}

/* The wait before a worker that failed to start (the fails-th time in a
 * row) is replaced: 0.1 s, doubling, at most 5 s. */
static int64_t start_backoff(int fails)
{
    int64_t ns = (int64_t)100000000 << (fails > 6 ? 6 : fails - 1);
    return ns > (int64_t)5000000000 ? (int64_t)5000000000 : ns;
}

int conc__server_prefork(conc_server *s)
{
    int n = s->o.workers > 0 ? s->o.workers : conc_process_cpu_count();
    if (n <= 0)
        n = 1;
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) < 0)
        return -errno;
    struct worker_arg a = { .s = s, .rfd = pfd[0], .wfd = pfd[1] };
    size_t shared = (size_t)n * sizeof *a.ws;
    a.ws = mmap(NULL, shared, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (a.ws == MAP_FAILED)
        a.ws = NULL;
    conc_process **w = calloc((size_t)n, sizeof *w);
    conc_waitable *ws = calloc((size_t)n + 1, sizeof *ws);
    int *slot_of = calloc((size_t)n + 1, sizeof *slot_of);
    int *fails = calloc((size_t)n, sizeof *fails);
    int64_t *due = calloc((size_t)n, sizeof *due);    /* a slot's restart */
    int rc = a.ws && w && ws && slot_of && fails && due ? 0 : -ENOMEM;
    for (int i = 0; i < n && rc == 0; i++)
        rc = start_worker(s, &a, i, &w[i]);
    int64_t next = conc_now() + s->service_step;
    while (rc == 0 && !conc__server_stop_asked(s)) {
        memset(ws, 0, ((size_t)n + 1) * sizeof *ws);
        ws[0].kind = CONC_WAIT_FD;
        ws[0].u.fd = s->stopfd;
        size_t m = 1;
        int64_t until = next;
        for (int i = 0; i < n; i++) {
            if (w[i]) {
                ws[m].kind = CONC_WAIT_PROCESS;
                ws[m].u.process = w[i];
                slot_of[m++] = i;
            } else if (due[i] < until) {
                until = due[i];
            }
        }
        int r = conc_wait_until(ws, m, until);
        if (r == -ETIMEDOUT) {
            int64_t now = conc_now();
            for (int i = 0; i < n && rc == 0; i++) {
                if (w[i] || due[i] > now)
                    continue;
                rc = start_worker(s, &a, i, &w[i]);
                if (rc == 0)
                    atomic_fetch_add(&s->st->restarts, 1);
            }
            if (now >= next) {
                if (s->o.service_actions)
                    s->o.service_actions(s, s->o.user);
                next = conc_now() + s->service_step;
            }
            continue;
        }
        if (r < 0) {
            rc = r;
            break;
        }
        if (ws[0].ready)
            break;
        for (size_t j = 1; j < m && rc == 0; j++) {
            int i = slot_of[j];
            if (!ws[j].ready || conc_process_is_alive(w[i]))
                continue;
            pid_t pid = conc_process_pid(w[i]);
            int code = -1;
            conc_process_join(w[i], CONC_FOREVER);
            conc_process_exitcode(w[i], &code);
            conc_process_free(w[i]);
            w[i] = NULL;
            atomic_fetch_sub(&s->st->workers, 1);
            if (s->o.on_worker_exit)
                s->o.on_worker_exit(s, pid, code, s->o.user);
            if (atomic_load(&a.ws[i].ready)) {
                /* it served: replaced at once */
                fails[i] = 0;
                rc = start_worker(s, &a, i, &w[i]);
                if (rc == 0)
                    atomic_fetch_add(&s->st->restarts, 1);
                continue;
            }
            /* It ended before its loop served (a socket of its own it
             * could not bind, memory, or killed): replaced after a wait
             * that doubles each time (at most 5 s).  Once every slot has
             * failed CONC_SERVER_WORKER_START_FAILURES times in a row the
             * server stops with the error; while another slot does not,
             * the server goes on with fewer workers and this slot is
             * tried again (each failure reported to on_worker_exit). */
            int err = atomic_load(&a.ws[i].err);
            fails[i]++;
            bool all_failing = true;
            for (int k = 0; k < n && all_failing; k++)
                all_failing = fails[k] >= CONC_SERVER_WORKER_START_FAILURES;
            if (all_failing)
                rc = err < 0 ? err : -ECHILD;
            else
                due[i] = conc_now() + start_backoff(fails[i]);
        }
    }
    /* Stop: the workers see the pipe's end, finish their connections
     * (within the shutdown timeout) and exit; those still there
     * CONC_SERVER_KILL_GRACE after it are killed. */
    close(pfd[1]);
    int64_t deadline = s->o.shutdown_timeout > 0
        ? conc_now() + (int64_t)((s->o.shutdown_timeout + CONC_SERVER_KILL_GRACE) * 1e9)
        : CONC_NO_DEADLINE;
    for (int i = 0; w && i < n; i++) {
        if (!w[i])
            continue;
        if (conc_process_join_until(w[i], deadline) == -ETIMEDOUT) {
            conc_process_kill(w[i]);
            conc_process_join(w[i], CONC_FOREVER);
        }
        conc_process_free(w[i]);
        atomic_fetch_sub(&s->st->workers, 1);
    }
    close(pfd[0]);
    /* What the workers counted as in flight ended with them. */
    atomic_store(&s->st->active, 0);
    if (a.ws)
        munmap(a.ws, shared);
    free(w);
    free(ws);
    free(slot_of);
    free(fails);
    free(due);
    return rc;
}

/* ---------------------------------------------------- handle_request */

/* What a handle_request worker tells the parent, once. */
enum { ONE_TAKEN = 0, ONE_REFUSED = 1 };

struct one_arg {
    conc_server *s;
    int rfd, wfd;
    int64_t deadline;
};

static void one_report(int fd, int32_t res)
{
    ssize_t w;
    do
        w = write(fd, &res, sizeof res);
    while (w < 0 && errno == EINTR);
    close(fd);
}

/* A handle_request worker: waits for one request until the deadline,
 * tells the parent it took it (or why not), serves it and exits with 0
 * (finished) or 1 (failed), which the parent counts. */
static int one_main(const void *arg, size_t len)
{
    (void)len;
    struct one_arg a;
    memcpy(&a, arg, sizeof a);
    close(a.rfd);
    conc_server *s = a.s;
    s->owner = getpid();
    s->unlink_path = false;
    size_t cap = s->o.max_datagram ? s->o.max_datagram : 8192;
    unsigned char *buf = s->type == SOCK_DGRAM ? malloc(cap) : NULL;
    if (s->type == SOCK_DGRAM && !buf) {
        one_report(a.wfd, -ENOMEM);
        return 1;
    }
    conc_sockaddr peer;
    memset(&peer, 0, sizeof peer);
    conc_socket *c = NULL;
    ssize_t n = 0;
    for (;;) {
        int rc = conc_fd_wait_until(s->fd, POLLIN, a.deadline);
        if (rc < 0) {
            one_report(a.wfd, rc);
            free(buf);
            return 0;
        }
        if (s->type == SOCK_STREAM) {
            rc = conc_socket_accept(s->sock, &c, &peer);
            if (rc == 0)
                break;
            if (rc == -EMFILE || rc == -ENFILE || rc == -ENOBUFS || rc == -ENOMEM) {
                one_report(a.wfd, rc);
                return 0;
            }
        } else {
            n = conc_socket_recvfrom(s->sock, buf, cap, 0, &peer);
            if (n >= 0)
                break;
            if (n != -EAGAIN && n != -EINTR && n != -ECONNREFUSED) {
                one_report(a.wfd, (int32_t)n);
                free(buf);
                return 0;
            }
        }
        /* another process took it, or it went away: wait again */
    }
    atomic_fetch_add(&s->st->accepted, 1);
    if (s->h.verify_request && !s->h.verify_request(s, &peer, s->h.user)) {
        atomic_fetch_add(&s->st->refused, 1);
        if (c)
            conc_socket_free(c);
        free(buf);
        one_report(a.wfd, ONE_REFUSED);
        return 0;
    }
    one_report(a.wfd, ONE_TAKEN);
    if (c) {
        close(s->fd);               /* the listener stays the parent's */
        conc_socket_set_timeout(c, s->o.request_timeout > 0 ? s->o.request_timeout
                                                             : CONC_FOREVER);
    }
    conc_server_request req;
    conc__server_init_request(s, &req, c, &peer, buf, (size_t)n);
    int rc = conc__server_run_hooks(s, &req);
    if (c)
        conc_socket_close(c);
    free(buf);
    return rc < 0 ? 1 : 0;
}

int conc__server_prefork_one(conc_server *s, int64_t deadline)
{
    /* Past the deadline with nothing waiting: no worker to fork. */
    if (deadline != CONC_NO_DEADLINE && conc_now() >= deadline) {
        int r = conc_fd_wait_until(s->fd, POLLIN, deadline);
        if (r < 0)
            return r;
    }
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) < 0)
        return -errno;
    struct one_arg a = { .s = s, .rfd = pfd[0], .wfd = pfd[1], .deadline = deadline };
    conc_process_opts po = CONC_PROCESS_OPTS_INIT;
    po.method = CONC_START_FORK;
    po.daemon = CONC_NOT_DAEMON;
    conc_process *p;
    int rc = conc_process_new(&p, one_main, &a, sizeof a, &po);
    if (rc == 0) {
        rc = conc_process_start(p);
        if (rc < 0)
            conc_process_free(p);
    }
    close(pfd[1]);
    if (rc < 0) {
        close(pfd[0]);
        return rc;
    }
    /* The worker's word: a wait that returns 0 without it (interrupted,
     * or woken for nothing) reads nothing from the non-blocking end and
     * waits again; rc stays 0 until an error ends the wait. */
    int32_t res = 0;
    if (fcntl(pfd[0], F_SETFL, O_NONBLOCK) < 0)
        rc = -errno;
    while (rc == 0) {
        rc = conc_fd_wait_until(pfd[0], POLLIN, CONC_NO_DEADLINE);
        if (rc < 0) {
            /* this thread cannot wait (a cancelled greenlet): the worker
             * is stopped below */
            break;
        }
        ssize_t got = read(pfd[0], &res, sizeof res);
        if (got == (ssize_t)sizeof res)
            break;
        if (got == 0)               /* it died before it could say */
            rc = -ECHILD;
        else if (got > 0)           /* a 4-byte pipe write is atomic */
            rc = -EPROTO;
        else if (errno != EINTR && errno != EAGAIN)
            rc = -errno;
    }
    close(pfd[0]);
    if (rc == 0 && res == ONE_TAKEN) {
        if (conc__server_add_kid(s, p) == 0)
            return 0;
        /* no room to keep it: wait for it here instead */
        conc_process_join(p, CONC_FOREVER);
        int code = -1;
        conc_process_exitcode(p, &code);
        atomic_fetch_add(code == 0 ? &s->st->finished : &s->st->failed, 1);
        conc_process_free(p);
        return 0;
    }
    if (rc < 0 && rc != -ECHILD)
        conc_process_kill(p);
    conc_process_join(p, CONC_FOREVER);
    conc_process_free(p);
    if (rc < 0)
        return rc;
    return res == ONE_REFUSED ? 0 : res;
}
