/*
 * test_server.c - conc/server.h: every model serves concurrent clients
 * correctly (upper-cased echoes, byte for byte, with requests split into
 * pieces); a silent client does not hold up the others; clients that reset
 * mid-request; shutdown while busy lets the request in flight finish;
 * shutdown from a signal handler and from another thread; a killed
 * prefork worker is replaced; UDP, Unix stream and Unix datagram servers
 * in every model (prefork with a socket per worker too); handle_request
 * and its timeout in every model; the reactor's idle timeout; sockets
 * made by hand and handed over, and those refused; bad arguments; the
 * threading model's blocking request socket (deadlines, a handler's hub,
 * signals, a detached copy and shutdown_timeout still behave).  The
 * coroutine model on copied stacks (conc_server_opts.stack) passes the
 * same tests, and its handlers are seen to run on one shared stack per
 * hub.  Every test checks that the descriptor count is back to its start
 * and no child is left.
 *
 * Nothing waits a fixed time: a peer that must be blocked first is waited
 * for through its state in /proc (support/task_state.h) or a counter.
 */
#include <criterion/criterion.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conc.h"
#include "support/fd_count.h"
#include "support/server_clients.h"
#include "support/server_test.h"
#include "support/task_state.h"

#define GUARD 20.0

/* A test of one model: Test(server, name) runs fn(args...), e.g. fn(model,
 * workers). */
#define MODEL_TEST(name, fn, ...)                                                             \
    Test(server, name, .timeout = 60)                                                          \
    {                                                                                          \
        fn(__VA_ARGS__);                                                                       \
    }

/* A test of the coroutine or prefork model with its greenlets on copied
 * stacks (make() passes stack_mode to the server). */
static int stack_mode;

#define COPIED_TEST(name, fn, ...)                                                            \
    Test(server, name, .timeout = 60)                                                          \
    {                                                                                          \
        stack_mode = CONC_STACK_COPIED;                                                        \
        fn(__VA_ARGS__);                                                                       \
    }

/* ------------------------------------------------------------ handlers */

/* The stack frames the setups of one run ran in: handlers on one copied
 * stack all run at the same address, handlers on stacks of their own at
 * as many addresses as there are handlers at once. */
enum { MAX_FRAMES = 64 };
static _Atomic uintptr_t frames[MAX_FRAMES];
static _Atomic int nframes;

static void note_frame(uintptr_t f)
{
    int n = atomic_load(&nframes);
    for (int i = 0; i < n && i < MAX_FRAMES; i++)
        if (atomic_load(&frames[i]) == f)
            return;
    int k = atomic_fetch_add(&nframes, 1);
    if (k < MAX_FRAMES)
        atomic_store(&frames[k], f);
}

static _Atomic int setups, finishes;

static int echo_setup(conc_server_request *req)
{
    atomic_fetch_add(&setups, 1);
    note_frame((uintptr_t)__builtin_frame_address(0));
    req->state = req;               /* handle and finish see it */
    return 0;
}

/* Echoes upper-cased until the client closes. */
static int echo_handle(conc_server_request *req)
{
    if (req->state != req)
        return -EPROTO;
    if (req->data) {                /* a datagram */
        char buf[8192];
        size_t n = req->len < sizeof buf ? req->len : sizeof buf;
        memcpy(buf, req->data, n);
        upper(buf, n);
        ssize_t m = conc_socket_sendto(req->sock, buf, n, 0, &req->peer);
        return m < 0 ? (int)m : 0;
    }
    char buf[4096];
    for (;;) {
        ssize_t n = conc_socket_recv(req->sock, buf, sizeof buf, 0);
        if (n == 0)
            return 0;
        if (n < 0)
            return (int)n;
        upper(buf, (size_t)n);
        int rc = conc_socket_sendall(req->sock, buf, (size_t)n, 0, NULL);
        if (rc < 0)
            return rc;
    }
}

static void echo_finish(conc_server_request *req)
{
    if (req->state == req)
        atomic_fetch_add(&finishes, 1);
}

static const conc_server_handler echo_handler = {
    .setup = echo_setup, .handle = echo_handle, .finish = echo_finish,
};

static const conc_server_reactor_handler reactor_handler = { .on_data = upper_on_data };

/* ------------------------------------------------------------- serving */

/* A prefork server of type with two workers and handler h, the options
 * of extra besides, on 127.0.0.1 (port 0), serving in r's thread once both
 * workers are alive. */
static void wait_workers(conc_server *s, uint64_t workers, uint64_t restarts);

static conc_server *start_prefork(struct running *r, int type, const conc_server_handler *h,
                                  const conc_server_opts *extra)
{
    conc_sockaddr a;
    cr_assert_eq(conc_sockaddr_inet(&a, AF_INET, "127.0.0.1", 0), 0);
    conc_server_opts o = *extra;
    o.size = sizeof o;
    o.model = CONC_SERVER_PREFORK;
    o.workers = 2;
    conc_server *s;
    int rc = conc_server_new(&s, type, &a, h, &o);
    cr_assert_eq(rc, 0, "new: %s", conc_strerror(rc));
    start(r, s);
    wait_workers(s, 2, 0);
    return s;
}

/* Stops the server, checks how many requests finished and failed (none
 * is left in flight) and frees it. */
static void stop_and_free(struct running *r, uint64_t finished, uint64_t failed)
{
    stop(r);
    conc_server_stats st;
    cr_assert_eq(conc_server_get_stats(r->s, &st), 0);
    cr_assert_eq(st.finished, finished, "%llu finished", (unsigned long long)st.finished);
    cr_assert_eq(st.failed, failed, "%llu failed", (unsigned long long)st.failed);
    cr_assert_eq(st.active, 0);
    conc_server_free(r->s);
}

/* Waits until at least `workers` prefork workers are alive and at least
 * `restarts` were replaced. */
static void wait_workers(conc_server *s, uint64_t workers, uint64_t restarts)
{
    int64_t end = conc_now() + (int64_t)(GUARD * 1e9);
    for (;;) {
        conc_server_stats st;
        cr_assert_eq(conc_server_get_stats(s, &st), 0);
        if (st.workers >= workers && st.worker_restarts >= restarts)
            return;
        cr_assert_lt(conc_now(), end, "%llu workers, %llu restarts",
                     (unsigned long long)st.workers, (unsigned long long)st.worker_restarts);
        conc_sleep(0.001);
    }
}

static conc_server *make(conc_server_model model, int type, int workers)
{
    conc_sockaddr a;
    cr_assert_eq(conc_sockaddr_inet(&a, AF_INET, "127.0.0.1", 0), 0);
    conc_server_opts o = CONC_SERVER_OPTS_INIT;
    o.model = model;
    o.workers = workers;
    o.request_queue_size = 64;
    o.stack = stack_mode;
    conc_server *s = NULL;
    int rc = model == CONC_SERVER_REACTOR && type == SOCK_STREAM
                 ? conc_server_new_reactor(&s, &a, &reactor_handler, &o)
                 : conc_server_new(&s, type, &a, &echo_handler, &o);
    cr_assert_eq(rc, 0, "new: %s", conc_strerror(rc));
    return s;
}

/* ------------------------------------------------------------- clients */

/* The clients run in a process of their own: client_proc, CHECK, dial,
 * exchange... in support/server_clients.h. */

enum { N = 16, ROUNDS = 20 };

struct clients_arg {
    conc_server *s;
    bool together;                  /* all connected at once, requests
                                       interleaved; else one after another */
};

static void client_msg(char *msg, size_t cap, int id, int round)
{
    snprintf(msg, cap, "client %d round %d: hello, server of many models", id, round);
}

/* N clients, each ROUNDS exchanges split into pieces of 1 to 7 bytes. */
static void many_clients(void *arg)
{
    struct clients_arg *a = arg;
    char msg[256];
    if (!a->together) {
        for (int i = 0; i < N; i++) {
            int fd = dial(a->s);
            for (int round = 0; round < ROUNDS; round++) {
                client_msg(msg, sizeof msg, i, round);
                exchange(fd, msg, 1 + (size_t)(round % 7));
            }
            close(fd);
        }
        return;
    }
    int fd[N];
    for (int i = 0; i < N; i++)
        fd[i] = dial(a->s);
    for (int round = 0; round < ROUNDS; round++) {
        for (int i = 0; i < N; i++) {       /* every request first */
            client_msg(msg, sizeof msg, i, round);
            size_t n = strlen(msg), piece = 1 + (size_t)((round + i) % 7);
            for (size_t off = 0; off < n; off += piece) {
                size_t k = n - off < piece ? n - off : piece;
                CHECK(send(fd[i], msg + off, k, MSG_NOSIGNAL) == (ssize_t)k, "send: %s",
                      strerror(errno));
            }
        }
        for (int i = N - 1; i >= 0; i--) {  /* then the replies */
            client_msg(msg, sizeof msg, i, round);
            size_t n = strlen(msg);
            char got[256];
            read_exact(fd[i], got, n);
            upper(msg, n);
            CHECK(memcmp(got, msg, n) == 0, "client %d round %d: wrong reply", i, round);
        }
    }
    for (int i = 0; i < N; i++)
        close(fd[i]);
}

/* N clients at once (SYNC: one after another), each ROUNDS exchanges. */
static void concurrent_clients(conc_server_model model, int workers)
{
    int fds = base_fds();
    atomic_store(&setups, 0);
    atomic_store(&finishes, 0);
    atomic_store(&nframes, 0);
    conc_server *s = make(model, SOCK_STREAM, workers);
    struct clients_arg ca = { s, model != CONC_SERVER_SYNC };
    pid_t clients = client_proc(many_clients, &ca);
    struct running r;
    start(&r, s);
    client_proc_wait(clients);
    stop(&r);
    conc_server_stats st;
    cr_assert_eq(conc_server_get_stats(s, &st), 0);
    cr_assert_eq(st.accepted, (uint64_t)N, "accepted %llu", (unsigned long long)st.accepted);
    cr_assert_eq(st.finished, (uint64_t)N, "finished %llu", (unsigned long long)st.finished);
    cr_assert_eq(st.failed, 0);
    cr_assert_eq(st.active, 0);
    if (model != CONC_SERVER_REACTOR && model != CONC_SERVER_FORKING &&
        model != CONC_SERVER_PREFORK) {
        cr_assert_eq(atomic_load(&setups), N);
        cr_assert_eq(atomic_load(&finishes), N);
    }
    if (model == CONC_SERVER_COROUTINE) {
        /* N handlers at once: on stacks of their own, N frames; on copied
         * stacks, one per hub (a loop's greenlets share its stack) */
        int frames_seen = atomic_load(&nframes);
        if (stack_mode == CONC_STACK_COPIED)
            cr_assert(frames_seen >= 1 && frames_seen <= workers, "%d frames, %d hubs",
                      frames_seen, workers);
        else if (stack_mode == CONC_STACK_OWN)
            cr_assert_eq(frames_seen, N);
    }
    conc_server_free(s);
    cr_assert_eq(count_fds(), fds);
    no_children();
}

MODEL_TEST(sync_serves_clients_in_turn, concurrent_clients, CONC_SERVER_SYNC, 0)
MODEL_TEST(threading_serves_concurrent_clients, concurrent_clients, CONC_SERVER_THREADING, 0)
MODEL_TEST(forking_serves_concurrent_clients, concurrent_clients, CONC_SERVER_FORKING, 0)
MODEL_TEST(prefork_serves_concurrent_clients, concurrent_clients, CONC_SERVER_PREFORK, 2)
MODEL_TEST(coroutine_serves_concurrent_clients, concurrent_clients, CONC_SERVER_COROUTINE, 1)
MODEL_TEST(coroutine_hubs_serve_concurrent_clients, concurrent_clients, CONC_SERVER_COROUTINE, 3)
COPIED_TEST(coroutine_copied_serves_concurrent_clients, concurrent_clients,
            CONC_SERVER_COROUTINE, 1)
COPIED_TEST(coroutine_copied_hubs_serve_concurrent_clients, concurrent_clients,
            CONC_SERVER_COROUTINE, 3)
COPIED_TEST(prefork_copied_serves_concurrent_clients, concurrent_clients, CONC_SERVER_PREFORK,
            2)

Test(server, coroutine_own_stacks_serve_concurrent_clients, .timeout = 60)
{
    stack_mode = CONC_STACK_OWN;
    concurrent_clients(CONC_SERVER_COROUTINE, 1);
}

MODEL_TEST(reactor_serves_concurrent_clients, concurrent_clients, CONC_SERVER_REACTOR, 1)
MODEL_TEST(reactor_loops_serve_concurrent_clients, concurrent_clients, CONC_SERVER_REACTOR, 2)

static void silent_clients(void *arg)
{
    conc_server *s = arg;
    int silent = dial(s);
    int other = dial(s);
    exchange(other, "served while another client says nothing", 5);
    close(other);
    exchange(silent, "and the silent one is served when it speaks", 3);
    close(silent);
}

/* A client that connects and says nothing does not hold the others up. */
static void silent_client(conc_server_model model, int workers)
{
    int fds = base_fds();
    conc_server *s = make(model, SOCK_STREAM, workers);
    pid_t clients = client_proc(silent_clients, s);
    struct running r;
    start(&r, s);
    client_proc_wait(clients);
    stop(&r);
    conc_server_free(s);
    cr_assert_eq(count_fds(), fds);
    no_children();
}

MODEL_TEST(threading_silent_client, silent_client, CONC_SERVER_THREADING, 0)
MODEL_TEST(forking_silent_client, silent_client, CONC_SERVER_FORKING, 0)
MODEL_TEST(prefork_silent_client, silent_client, CONC_SERVER_PREFORK, 1)
MODEL_TEST(coroutine_silent_client, silent_client, CONC_SERVER_COROUTINE, 1)
COPIED_TEST(coroutine_copied_silent_client, silent_client, CONC_SERVER_COROUTINE, 1)
MODEL_TEST(reactor_silent_client, silent_client, CONC_SERVER_REACTOR, 1)

struct resets_arg {
    conc_server *s;
    int go;                         /* >= 0: wait for a byte here first */
    int go_w;                       /* the pipe's other end, closed first */
};

static void resetting_clients(void *arg)
{
    struct resets_arg *ra = arg;
    conc_server *s = ra->s;
    if (ra->go >= 0) {
        close(ra->go_w);            /* the test's end: its death is EOF */
        hs_recv(ra->go);
    }
    for (int i = 0; i < 10; i++) {
        int fd = dial(s);
        exchange(fd, "first part", 4);
        /* half a request, then a reset (RST, not FIN) */
        CHECK(send(fd, "half a requ", 11, MSG_NOSIGNAL) == 11, "send");
        struct linger lg = { .l_onoff = 1, .l_linger = 0 };
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        close(fd);
    }
    int fd = dial(s);
    exchange(fd, "still serving after ten resets", 2);
    close(fd);
}

/* The prefork workers: this process's children but the clients'. */
static int workers_of(pid_t clients, pid_t *out, int cap)
{
    pid_t all[16];
    int n = children(all, 16), k = 0;
    for (int i = 0; i < n && k < cap; i++)
        if (all[i] != clients)
            out[k++] = all[i];
    return k;
}

/* The descriptors process pid has open (and, into what, which). */
static int proc_fds(pid_t pid, char *what, size_t cap)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    cr_assert_not_null(d, "%s: %s", path, strerror(errno));
    int n = 0;
    size_t used = 0;
    if (cap)
        what[0] = '\0';
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (e->d_name[0] == '.')
            continue;
        n++;
        char lp[96], target[64];
        snprintf(lp, sizeof lp, "%s/%.16s", path, e->d_name);
        ssize_t m = readlink(lp, target, sizeof target - 1);
        target[m > 0 ? m : 0] = '\0';
        if (used < cap)
            used += (size_t)snprintf(what + used, cap - used, " %s=%s", e->d_name, target);
    }
    closedir(d);
    return n;
}

/* Clients that reset in the middle of a request: the server goes on,
 * nothing leaks, in the server's process nor in a prefork server's
 * workers (their descriptors are counted before the resets, once they
 * wait for clients, and after them, once they wait again). */
static void resets(conc_server_model model, int workers)
{
    int fds = base_fds();
    conc_server *s = make(model, SOCK_STREAM, workers);
    bool prefork = model == CONC_SERVER_PREFORK;
    int go[2] = { -1, -1 };
    if (prefork)
        cr_assert_eq(pipe2(go, O_CLOEXEC), 0);
    struct resets_arg ra = { s, go[0], go[1] };
    pid_t clients = client_proc(resetting_clients, &ra);
    if (prefork)
        close(go[0]);
    struct running r;
    start(&r, s);
    pid_t kids[8];
    int kid_fds[8], nk = 0;
    char kid_what[8][1024];
    if (prefork) {
        int64_t end = conc_now() + (int64_t)(GUARD * 1e9);
        while ((nk = workers_of(clients, kids, 8)) < workers) {
            cr_assert_lt(conc_now(), end, "the workers never started");
            conc_sleep(0.001);
        }
        cr_assert_eq(nk, workers);
        for (int i = 0; i < nk; i++) {
            wait_proc_in_epoll(kids[i]);
            kid_fds[i] = proc_fds(kids[i], kid_what[i], sizeof kid_what[i]);
        }
        hs_send(go[1]);
        close(go[1]);
    }
    client_proc_wait(clients);
    conc_server_stats st;
    if (prefork) {
        /* every connection ended (each closes before it is counted out) */
        int64_t end = conc_now() + (int64_t)(GUARD * 1e9);
        for (;;) {
            conc_server_get_stats(s, &st);
            if (st.accepted == 11 && st.active == 0 && st.finished + st.failed == 11)
                break;
            cr_assert_lt(conc_now(), end, "the requests never ended");
            conc_sleep(0.001);
        }
        pid_t now[8];
        cr_assert_eq(workers_of(clients, now, 8), nk, "a worker was replaced");
        for (int i = 0; i < nk; i++) {
            bool same = false;
            for (int j = 0; j < nk; j++)
                same |= now[j] == kids[i];
            cr_assert(same, "worker %d was replaced", (int)kids[i]);
            wait_proc_in_epoll(kids[i]);
            char what[1024];
            int n = proc_fds(kids[i], what, sizeof what);
            cr_assert_eq(n, kid_fds[i], "worker %d: %d descriptors before the resets (%s), "
                         "%d after (%s)", (int)kids[i], kid_fds[i], kid_what[i], n, what);
        }
    }
    stop(&r);
    conc_server_get_stats(s, &st);
    cr_assert_eq(st.accepted, 11);
    cr_assert_eq(st.active, 0);
    conc_server_free(s);
    cr_assert_eq(count_fds(), fds);
    no_children();
}

MODEL_TEST(sync_resets, resets, CONC_SERVER_SYNC, 0)
MODEL_TEST(threading_resets, resets, CONC_SERVER_THREADING, 0)
MODEL_TEST(forking_resets, resets, CONC_SERVER_FORKING, 0)
MODEL_TEST(coroutine_resets, resets, CONC_SERVER_COROUTINE, 1)
COPIED_TEST(coroutine_copied_resets, resets, CONC_SERVER_COROUTINE, 1)
MODEL_TEST(reactor_resets, resets, CONC_SERVER_REACTOR, 1)
MODEL_TEST(prefork_resets, resets, CONC_SERVER_PREFORK, 1)
MODEL_TEST(prefork_workers_resets, resets, CONC_SERVER_PREFORK, 2)
COPIED_TEST(prefork_copied_resets, resets, CONC_SERVER_PREFORK, 1)

/* Shutdown while a request is in flight: serve_forever waits for it, and
 * the client is still answered after the shutdown was asked. */
struct stopper {
    conc_server *s;
    int rc;
};

static void *stopper_main(void *arg)
{
    struct stopper *st = arg;
    st->rc = conc_server_shutdown_wait(st->s, GUARD);
    return NULL;
}

struct busy {
    conc_server *s;
    int up[2], down[2];
};

static void busy_client(void *arg)
{
    struct busy *b = arg;
    int fd = dial(b->s);
    exchange(fd, "before the shutdown", 4);
    hs_send(b->up[1]);
    hs_recv(b->down[0]);
    exchange(fd, "after the shutdown was asked: still answered", 3);
    close(fd);
}

static void shutdown_while_busy(conc_server_model model, int workers)
{
    int fds = base_fds();
    conc_server *s = make(model, SOCK_STREAM, workers);
    struct busy b = { .s = s };
    cr_assert_eq(pipe(b.up), 0);
    cr_assert_eq(pipe(b.down), 0);
    pid_t pid = client_proc(busy_client, &b);
    struct running r;
    start(&r, s);
    hs_recv(b.up[0]);               /* the request is in flight */
    struct stopper sp = { .s = s, .rc = 1 };
    pthread_t t;
    pid_t tid;
    t = spawn_tid(stopper_main, &sp, &tid);
    /* the shutdown is asked and waits for the request in flight */
    while (!conc_server_stopping(s))
        conc_sleep(0.001);
    wait_thread_blocked(tid, GUARD);
    hs_send(b.down[1]);
    client_proc_wait(pid);
    for (int i = 0; i < 2; i++) {
        close(b.up[i]);
        close(b.down[i]);
    }
    pthread_join(t, NULL);
    cr_assert_eq(sp.rc, 0);
    pthread_join(r.t, NULL);
    cr_assert_eq(r.rc, 0);
    conc_server_stats st;
    conc_server_get_stats(s, &st);
    cr_assert_eq(st.finished, 1);
    conc_server_free(s);
    cr_assert_eq(count_fds(), fds);
    no_children();
}

MODEL_TEST(threading_shutdown_while_busy, shutdown_while_busy, CONC_SERVER_THREADING, 0)
MODEL_TEST(forking_shutdown_while_busy, shutdown_while_busy, CONC_SERVER_FORKING, 0)
MODEL_TEST(coroutine_shutdown_while_busy, shutdown_while_busy, CONC_SERVER_COROUTINE, 2)
COPIED_TEST(coroutine_copied_shutdown_while_busy, shutdown_while_busy, CONC_SERVER_COROUTINE,
            2)
MODEL_TEST(reactor_shutdown_while_busy, shutdown_while_busy, CONC_SERVER_REACTOR, 1)
MODEL_TEST(prefork_shutdown_while_busy, shutdown_while_busy, CONC_SERVER_PREFORK, 1)

static void cut_off_client(void *arg)
{
    struct busy *b = arg;
    int fd = dial(b->s);
    exchange(fd, "then silence", 2);
    hs_send(b->up[1]);
    hs_recv(b->down[0]);
    char c;
    CHECK(recv_retry(fd, &c, 1, 0) <= 0, "the connection was not ended");
    close(fd);
}

/* With a shutdown timeout, a client that never closes is cut off. */
static void cut_off(const conc_server_model *models, size_t n)
{
    int fds = base_fds();
    for (size_t i = 0; i < n; i++) {
        conc_sockaddr a;
        conc_sockaddr_inet(&a, AF_INET, "127.0.0.1", 0);
        conc_server_opts o = CONC_SERVER_OPTS_INIT;
        o.model = models[i];
        o.shutdown_timeout = 0.05;
        o.stack = stack_mode;
        conc_server *s;
        cr_assert_eq(models[i] == CONC_SERVER_REACTOR
                         ? conc_server_new_reactor(&s, &a, &reactor_handler, &o)
                         : conc_server_new(&s, SOCK_STREAM, &a, &echo_handler, &o),
                     0);
        struct busy b = { .s = s };
        cr_assert_eq(pipe(b.up), 0);
        cr_assert_eq(pipe(b.down), 0);
        pid_t pid = client_proc(cut_off_client, &b);
        struct running r;
        start(&r, s);
        hs_recv(b.up[0]);
        stop(&r);
        hs_send(b.down[1]);
        client_proc_wait(pid);
        for (int k = 0; k < 2; k++) {
            close(b.up[k]);
            close(b.down[k]);
        }
        conc_server_free(s);
    }
    cr_assert_eq(count_fds(), fds);
    no_children();
}

Test(server, shutdown_timeout_cuts_off_idle_clients, .timeout = 60)
{
    const conc_server_model models[] = { CONC_SERVER_THREADING, CONC_SERVER_COROUTINE,
                                         CONC_SERVER_REACTOR, CONC_SERVER_FORKING };
    cut_off(models, sizeof models / sizeof models[0]);
}

/* A handler parked in recv on a copied stack is cut off the same way. */
Test(server, coroutine_copied_shutdown_timeout_cuts_off_idle_clients, .timeout = 60)
{
    stack_mode = CONC_STACK_COPIED;
    const conc_server_model models[] = { CONC_SERVER_COROUTINE, CONC_SERVER_PREFORK };
    cut_off(models, sizeof models / sizeof models[0]);
}

/* ------------------------------------------------------------- signals */

static conc_server *sig_server;

static void on_usr1(int sig)
{
    (void)sig;
    conc_server_shutdown(sig_server);
}

Test(server, shutdown_from_a_signal_handler, .timeout = 60)
{
    int fds = base_fds();
    conc_server_model models[] = { CONC_SERVER_SYNC, CONC_SERVER_THREADING,
                                   CONC_SERVER_COROUTINE, CONC_SERVER_REACTOR };
    struct sigaction sa = { .sa_handler = on_usr1 }, old;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, &old);
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++) {
        sig_server = make(models[i], SOCK_STREAM, 1);
        struct running r;
        start(&r, sig_server);
        int fd = dial(sig_server);
        exchange(fd, "one request", 3);
        close(fd);
        while (r.tid == 0)
            conc_sleep(0.001);
        wait_thread_blocked(r.tid, GUARD);
        pthread_kill(r.t, SIGUSR1);
        pthread_join(r.t, NULL);
        cr_assert_eq(r.rc, 0);
        conc_server_free(sig_server);
    }
    sigaction(SIGUSR1, &old, NULL);
    cr_assert_eq(count_fds(), fds);
}

/* ---------------------------------------------------------- prefork */

static _Atomic int exits;
static _Atomic pid_t exited_pid;

static void on_exit_hook(conc_server *s, pid_t pid, int status, void *user)
{
    (void)s;
    (void)user;
    atomic_store(&exited_pid, pid);
    if (status == -SIGKILL)
        atomic_fetch_add(&exits, 1);
}

Test(server, prefork_killed_worker_is_replaced, .timeout = 60)
{
    int fds = base_fds();
    struct running r;
    conc_server *s = start_prefork(&r, SOCK_STREAM, &echo_handler,
                                   &(conc_server_opts){ .on_worker_exit = on_exit_hook });
    conc_server_stats st;
    pid_t kids[8];
    int n = children(kids, 8);
    cr_assert_eq(n, 2, "%d children", n);
    cr_assert_eq(kill(kids[0], SIGKILL), 0);
    wait_workers(s, 2, 1);
    cr_assert_eq(atomic_load(&exits), 1);
    cr_assert_eq(atomic_load(&exited_pid), kids[0]);
    pid_t now[8];
    cr_assert_eq(children(now, 8), 2);
    cr_assert(now[0] != kids[0] && now[1] != kids[0]);
    for (int i = 0; i < 4; i++) {
        int fd = dial(s);
        exchange(fd, "served after a worker died", 4);
        close(fd);
    }
    stop(&r);
    conc_server_get_stats(s, &st);
    cr_assert_eq(st.workers, 0);
    conc_server_free(s);
    cr_assert_eq(count_fds(), fds);
    no_children();
}

static _Atomic int start_exits;

static void count_exit(conc_server *s, pid_t pid, int status, void *user)
{
    (void)s;
    (void)pid;
    (void)status;
    (void)user;
    atomic_fetch_add(&start_exits, 1);
}

/* Stops the server once a client was served and the failing slot was
 * tried more than CONC_SERVER_WORKER_START_FAILURES times. */
static void stop_when_retried(conc_server *s, void *user)
{
    (void)user;
    conc_server_stats st;
    conc_server_get_stats(s, &st);
    if (atomic_load(&start_exits) > CONC_SERVER_WORKER_START_FAILURES && st.finished >= 1)
        conc_server_shutdown(s);
}

/* A prefork worker that can never start serving (with reuse_port, the
 * socket of its own cannot join a group whose first socket another user
 * made: -EADDRINUSE) is replaced after growing waits; while the other
 * worker (on the socket made first) serves, the server goes on with one
 * worker past CONC_SERVER_WORKER_START_FAILURES failures (the old code
 * stopped it with the error), and serve_forever returns 0 when shut down.
 * (That every slot failing still stops the server is not reached here:
 * the slot of the socket made first always starts.) */
Test(server, prefork_worker_that_cannot_start_leaves_the_others_serving, .timeout = 60)
{
    if (geteuid() != 0)
        cr_skip_test("needs root, to make the socket as another user than the server's");
    int fds = base_fds();
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    guard(fd);
    int one = 1;
    cr_assert_eq(setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one), 0);
    conc_sockaddr a;
    conc_sockaddr_inet(&a, AF_INET, "127.0.0.1", 0);
    cr_assert_eq(bind(fd, &a.u.sa, a.len), 0);
    cr_assert_eq(listen(fd, 5), 0);
    a.len = sizeof a.u;
    cr_assert_eq(getsockname(fd, &a.u.sa, &a.len), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        alarm(30);                  /* hang guard of the child */
        if (setresuid(65534, 65534, 65534) != 0)
            _exit(2);
        conc_server_opts o = CONC_SERVER_OPTS_INIT;
        o.model = CONC_SERVER_PREFORK;
        o.workers = 2;
        o.reuse_port = true;
        o.on_worker_exit = count_exit;
        o.service_actions = stop_when_retried;
        conc_server *s;
        if (conc_server_new_fd(&s, fd, &echo_handler, &o) != 0)
            _exit(3);
        int rc = conc_server_serve_forever(s, 0.05);
        conc_server_stats st;
        conc_server_get_stats(s, &st);
        conc_server_free(s);
        int exits = atomic_load(&start_exits);
        if (rc != 0 || exits <= CONC_SERVER_WORKER_START_FAILURES ||
            st.worker_restarts < (uint64_t)exits - 1 || st.finished != 1 || st.workers != 0) {
            fprintf(stderr, "rc %d exits %d restarts %llu finished %llu workers %llu\n", rc,
                    exits, (unsigned long long)st.worker_restarts,
                    (unsigned long long)st.finished, (unsigned long long)st.workers);
            _exit(4);
        }
        _exit(0);
    }
    close(fd);
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    guard(c);
    cr_assert_eq(connect(c, &a.u.sa, a.len), 0, "connect: %s", strerror(errno));
    exchange(c, "served by the worker that started", 5);
    close(c);
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child ended with %#x", status);
    cr_assert_eq(count_fds(), fds);
    no_children();
}

/* -------------------------------------------------------- datagrams */

/* Handlers of a prefork datagram server, counted in memory its workers
 * share; each waits for go. */
struct dgram_limit {
    _Atomic int inflight, most, served;
    conc_event go;
};
static struct dgram_limit *dlim;

static int held_datagram(conc_server_request *req)
{
    (void)req;
    int now = atomic_fetch_add(&dlim->inflight, 1) + 1;
    int most = atomic_load(&dlim->most);
    while (now > most && !atomic_compare_exchange_weak(&dlim->most, &most, now)) {
    }
    int rc = conc_event_wait(&dlim->go, 30);
    atomic_fetch_sub(&dlim->inflight, 1);
    atomic_fetch_add(&dlim->served, 1);
    return rc;
}

/* max_connections bounds the datagrams a prefork worker serves at once:
 * with two handlers waiting, the worker reads no further datagram until
 * one ends (it used to start a greenlet for each datagram it read). */
Test(server, prefork_datagrams_keep_max_connections, .timeout = 60)
{
    int fds = base_fds();
    dlim = mmap(NULL, sizeof *dlim, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(dlim, MAP_FAILED);
    memset(dlim, 0, sizeof *dlim);
    conc_event_init(&dlim->go, CONC_SYNC_SHARED);
    conc_sockaddr a;
    conc_sockaddr_inet(&a, AF_INET, "127.0.0.1", 0);
    conc_server_opts o = CONC_SERVER_OPTS_INIT;
    o.model = CONC_SERVER_PREFORK;
    o.workers = 1;
    o.max_connections = 2;
    conc_server_handler h = { .handle = held_datagram };
    conc_server *s;
    cr_assert_eq(conc_server_new(&s, SOCK_DGRAM, &a, &h, &o), 0);
    conc_sockaddr sa;
    conc_server_address(s, &sa);
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    guard(fd);
    /* all six wait in the socket before the worker reads any */
    for (int i = 0; i < 6; i++)
        cr_assert_eq(sendto(fd, "x", 1, 0, &sa.u.sa, sa.len), 1);
    struct running r;
    start(&r, s);
    while (atomic_load(&dlim->inflight) < 2)
        conc_sleep(0.001);
    pid_t kids[4];
    cr_assert_eq(children(kids, 4), 1);
    wait_proc_blocked(kids[0], 30);
    cr_assert_eq(atomic_load(&dlim->inflight), 2);
    conc_server_stats st;
    conc_server_get_stats(s, &st);
    cr_assert_eq(st.accepted, 2);
    conc_event_set(&dlim->go);
    while (atomic_load(&dlim->served) < 6)
        conc_sleep(0.001);
    cr_assert_eq(atomic_load(&dlim->most), 2);
    close(fd);
    stop(&r);
    conc_server_get_stats(s, &st);
    cr_assert_eq(st.accepted, 6);
    cr_assert_eq(st.finished, 6);
    conc_server_free(s);
    munmap(dlim, sizeof *dlim);
    cr_assert_eq(count_fds(), fds);
    no_children();
}


static void datagram_server(conc_server_model model, bool unix_family)
{
    int fds = base_fds();
    conc_sockaddr a;
    char path[108] = "";
    if (unix_family) {
        snprintf(path, sizeof path, "/tmp/conc-server-test-%d-%d.sock", (int)getpid(), (int)model);
        unlink(path);
        cr_assert_eq(conc_sockaddr_unix(&a, path, 0), 0);
    } else {
        cr_assert_eq(conc_sockaddr_inet(&a, AF_INET, "127.0.0.1", 0), 0);
    }
    conc_server_opts o = CONC_SERVER_OPTS_INIT;
    o.model = model;
    o.stack = stack_mode;
    conc_server *s;
    cr_assert_eq(conc_server_new(&s, SOCK_DGRAM, &a, &echo_handler, &o), 0);
    struct running r;
    start(&r, s);
    conc_sockaddr sa;
    conc_server_address(s, &sa);
    int fd = socket(sa.u.sa.sa_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    guard(fd);
    char cpath[108];
    if (unix_family) {              /* a named client, to be answered */
        snprintf(cpath, sizeof cpath, "%.90s.client", path);
        unlink(cpath);
        conc_sockaddr ca;
        conc_sockaddr_unix(&ca, cpath, 0);
        cr_assert_eq(bind(fd, &ca.u.sa, ca.len), 0);
    }
    for (int i = 0; i < 10; i++) {
        char msg[64], got[64], want[64];
        int n = snprintf(msg, sizeof msg, "datagram number %d", i);
        cr_assert_eq(sendto(fd, msg, (size_t)n, 0, &sa.u.sa, sa.len), n);
        ssize_t m = recv_retry(fd, got, sizeof got, 0);
        cr_assert_eq(m, n, "m %zd n %d: %s", m, n, strerror(errno));
        memcpy(want, msg, (size_t)n);
        upper(want, (size_t)n);
        cr_assert_eq(memcmp(got, want, (size_t)n), 0);
    }
    close(fd);
    stop(&r);
    conc_server_stats st;
    conc_server_get_stats(s, &st);
    cr_assert_eq(st.accepted, 10);
    cr_assert_eq(st.finished, 10);
    conc_server_free(s);
    if (unix_family) {
        cr_assert_eq(access(path, F_OK), -1, "the socket file was left");
        unlink(cpath);
    }
    cr_assert_eq(count_fds(), fds);
    no_children();
}

MODEL_TEST(udp_sync, datagram_server, CONC_SERVER_SYNC, false)

MODEL_TEST(udp_threading, datagram_server, CONC_SERVER_THREADING, false)

MODEL_TEST(udp_forking, datagram_server, CONC_SERVER_FORKING, false)

MODEL_TEST(udp_coroutine, datagram_server, CONC_SERVER_COROUTINE, false)

COPIED_TEST(udp_coroutine_copied, datagram_server, CONC_SERVER_COROUTINE, false)

MODEL_TEST(unix_datagram_threading, datagram_server, CONC_SERVER_THREADING, true)

MODEL_TEST(udp_prefork, datagram_server, CONC_SERVER_PREFORK, false)

MODEL_TEST(unix_datagram_prefork, datagram_server, CONC_SERVER_PREFORK, true)

MODEL_TEST(udp_reactor, datagram_server, CONC_SERVER_REACTOR, false)

MODEL_TEST(unix_datagram_reactor, datagram_server, CONC_SERVER_REACTOR, true)

/* Answers with the pid of the process that serves: a datagram with a
 * datagram, a connection with its first line, then closes. */
static int pid_handle(conc_server_request *req)
{
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%d\n", (int)getpid());
    if (req->data)
        return (int)conc_socket_sendto(req->sock, buf, (size_t)n, 0, &req->peer) < 0 ? -EIO : 0;
    return conc_socket_sendall(req->sock, buf, (size_t)n, 0, NULL);
}

/* Prefork with reuse_port: each worker has a socket of its own in the
 * port's group, and the kernel spreads the clients (each from a port of
 * its own) over them: both workers answer, every client is answered. */
static void prefork_reuse_port(int type)
{
    int fds = base_fds();
    struct running r;
    conc_server *s = start_prefork(&r, type, &(conc_server_handler){ .handle = pid_handle },
                                   &(conc_server_opts){ .reuse_port = true,
                                                        .request_queue_size = 64 });
    conc_sockaddr a;
    conc_server_address(s, &a);
    pid_t kids[8];
    cr_assert_eq(children(kids, 8), 2);
    int seen[2] = { 0, 0 };
    int answered = 0;
    /* a worker binds its socket once it runs: until both have answered,
     * new clients (new ports, new hashes) keep coming */
    for (int round = 0; round < 200 && !(seen[0] && seen[1]); round++) {
        for (int i = 0; i < 16; i++) {
            int fd = socket(AF_INET, type | SOCK_CLOEXEC, 0);
            cr_assert_geq(fd, 0);
            guard(fd);
            cr_assert_eq(connect(fd, &a.u.sa, a.len), 0, "connect: %s", strerror(errno));
            if (type == SOCK_DGRAM)
                cr_assert_eq(send(fd, "who", 3, 0), 3);
            char buf[32] = "";
            ssize_t n = recv_retry(fd, buf, sizeof buf - 1, 0);
            cr_assert_gt(n, 0, "no answer: %s", strerror(errno));
            int pid = atoi(buf);
            cr_assert(pid == kids[0] || pid == kids[1], "answered by %d", pid);
            seen[pid == kids[1]]++;
            answered++;
            close(fd);
        }
    }
    cr_assert(seen[0] && seen[1], "one worker served every client (%d, %d)", seen[0], seen[1]);
    stop(&r);
    conc_server_stats st;
    conc_server_get_stats(s, &st);
    cr_assert_eq(st.accepted, (uint64_t)answered);
    cr_assert_eq(st.finished, (uint64_t)answered);
    cr_assert_eq(st.workers, 0);
    conc_server_free(s);
    cr_assert_eq(count_fds(), fds);
    no_children();
}

MODEL_TEST(prefork_reuse_port_udp, prefork_reuse_port, SOCK_DGRAM)

MODEL_TEST(prefork_reuse_port_tcp, prefork_reuse_port, SOCK_STREAM)

Test(server, unix_stream_server, .timeout = 60)
{
    int fds = base_fds();
    char path[108];
    snprintf(path, sizeof path, "/tmp/conc-server-test-%d.sock", (int)getpid());
    unlink(path);
    conc_sockaddr a;
    cr_assert_eq(conc_sockaddr_unix(&a, path, 0), 0);
    conc_server_opts o = CONC_SERVER_OPTS_INIT;
    o.model = CONC_SERVER_THREADING;
    conc_server *s;
    cr_assert_eq(conc_server_new(&s, SOCK_STREAM, &a, &echo_handler, &o), 0);
    cr_assert_eq(access(path, F_OK), 0);
    struct running r;
    start(&r, s);
    int fd = dial(s);
    exchange(fd, "over a unix stream socket", 4);
    close(fd);
    stop(&r);
    conc_server_free(s);
    cr_assert_eq(access(path, F_OK), -1);
    cr_assert_eq(count_fds(), fds);
}

/* ---------------------------------------------------- handle_request */

Test(server, handle_request_and_its_timeout, .timeout = 60)
{
    int fds = base_fds();
    conc_server *s = make(CONC_SERVER_SYNC, SOCK_STREAM, 0);
    cr_assert_eq(conc_server_handle_request(s, 0), -EAGAIN);
    cr_assert_eq(conc_server_handle_request(s, 0.01), -ETIMEDOUT);
    cr_assert_eq(conc_server_handle_request_until(s, 0), -ETIMEDOUT);
    int fd = dial(s);
    cr_assert_eq(send(fd, "abc", 3, 0), 3);
    shutdown(fd, SHUT_WR);
    cr_assert_eq(conc_server_handle_request(s, GUARD), 0);
    char buf[8];
    read_exact(fd, buf, 3);
    cr_assert_eq(memcmp(buf, "ABC", 3), 0);
    close(fd);
    conc_server_free(s);
    cr_assert_eq(count_fds(), fds);
}

static bool refuse_all(conc_server *s, const conc_sockaddr *peer, void *user)
{
    (void)s;
    (void)user;
    return peer->u.sa.sa_family != AF_INET;
}

Test(server, verify_request_false_closes_the_client, .timeout = 60)
{
    int fds = base_fds();
    conc_server_handler h = echo_handler;
    h.verify_request = refuse_all;
    conc_sockaddr a;
    conc_sockaddr_inet(&a, AF_INET, "127.0.0.1", 0);
    conc_server *s;
    cr_assert_eq(conc_server_new(&s, SOCK_STREAM, &a, &h, NULL), 0);
    int fd = dial(s);
    cr_assert_eq(conc_server_handle_request(s, GUARD), 0);
    char c;
    cr_assert_leq(recv_retry(fd, &c, 1, 0), 0);
    close(fd);
    conc_server_stats st;
    conc_server_get_stats(s, &st);
    cr_assert_eq(st.refused, 1);
    cr_assert_eq(st.finished, 0);
    conc_server_free(s);
    cr_assert_eq(count_fds(), fds);
}

/* ------------------------------------------------------------- errors */

Test(server, bad_arguments, .timeout = 60)
{
    int fds = base_fds();
    conc_sockaddr a;
    conc_sockaddr_inet(&a, AF_INET, "127.0.0.1", 0);
    conc_server *s = NULL;
    conc_server_handler none = { 0 };
    cr_assert_eq(conc_server_new(NULL, SOCK_STREAM, &a, &echo_handler, NULL), -EINVAL);
    cr_assert_eq(conc_server_new(&s, SOCK_STREAM, NULL, &echo_handler, NULL), -EINVAL);
    cr_assert_eq(conc_server_new(&s, SOCK_STREAM, &a, NULL, NULL), -EINVAL);
    cr_assert_eq(conc_server_new(&s, SOCK_STREAM, &a, &none, NULL), -EINVAL);
    cr_assert_eq(conc_server_new(&s, SOCK_RAW, &a, &echo_handler, NULL), -EINVAL);
    conc_server_opts o = CONC_SERVER_OPTS_INIT;
    o.model = (conc_server_model)42;
    cr_assert_eq(conc_server_new(&s, SOCK_STREAM, &a, &echo_handler, &o), -EINVAL);
    o.model = CONC_SERVER_REACTOR;
    cr_assert_eq(conc_server_new(&s, SOCK_STREAM, &a, &echo_handler, &o), -EINVAL);
    o.model = CONC_SERVER_THREADING;
    o.shutdown_timeout = -1;
    cr_assert_eq(conc_server_new(&s, SOCK_STREAM, &a, &echo_handler, &o), -EINVAL);
    o.model = CONC_SERVER_THREADING;
    cr_assert_eq(conc_server_new_reactor(&s, &a, &reactor_handler, &o), -EINVAL);
    o.model = CONC_SERVER_REACTOR;
    o.shutdown_timeout = 0;
    o.idle_timeout = -1;
    cr_assert_eq(conc_server_new_reactor(&s, &a, &reactor_handler, &o), -EINVAL);
    o.idle_timeout = NAN;
    cr_assert_eq(conc_server_new_reactor(&s, &a, &reactor_handler, &o), -EINVAL);
    o = (conc_server_opts)CONC_SERVER_OPTS_INIT;
    o.model = CONC_SERVER_THREADING;
    o.thread_cache = -2;
    cr_assert_eq(conc_server_new(&s, SOCK_STREAM, &a, &echo_handler, &o), -EINVAL);
    o.thread_cache = 0;
    o.thread_idle = -1;
    cr_assert_eq(conc_server_new(&s, SOCK_STREAM, &a, &echo_handler, &o), -EINVAL);
    o.thread_idle = NAN;
    cr_assert_eq(conc_server_new(&s, SOCK_STREAM, &a, &echo_handler, &o), -EINVAL);
    o = (conc_server_opts)CONC_SERVER_OPTS_INIT;
    o.model = CONC_SERVER_COROUTINE;
    o.stack = 3;                    /* neither CONC_STACK_OWN nor CONC_STACK_COPIED */
    cr_assert_eq(conc_server_new(&s, SOCK_STREAM, &a, &echo_handler, &o), -EINVAL);
    o.stack = -1;
    cr_assert_eq(conc_server_new(&s, SOCK_STREAM, &a, &echo_handler, &o), -EINVAL);
    /* a datagram buffer no loop could be given */
    o = (conc_server_opts)CONC_SERVER_OPTS_INIT;
    o.model = CONC_SERVER_PREFORK;
    o.max_datagram = SIZE_MAX / 2;
    cr_assert_eq(conc_server_new(&s, SOCK_DGRAM, &a, &echo_handler, &o), -EINVAL);
    o.max_datagram = CONC_SERVER_MAX_DATAGRAM + 1;
    cr_assert_eq(conc_server_new(&s, SOCK_DGRAM, &a, &echo_handler, &o), -EINVAL);
    cr_assert_eq(conc_server_new(&s, SOCK_STREAM, &a, &echo_handler, &o), -EINVAL);
    o.max_datagram = CONC_SERVER_MAX_DATAGRAM;
    cr_assert_eq(conc_server_new(&s, SOCK_DGRAM, &a, &echo_handler, &o), 0);
    conc_server_free(s);
    s = NULL;
    conc_server_reactor_handler rnone = { 0 };
    cr_assert_eq(conc_server_new_reactor(&s, &a, &rnone, NULL), -EINVAL);
    cr_assert_null(s);

    /* an address in use */
    conc_server *s1, *s2;
    cr_assert_eq(conc_server_new(&s1, SOCK_STREAM, &a, &echo_handler, NULL), 0);
    conc_sockaddr used;
    conc_server_address(s1, &used);
    cr_assert_gt(conc_sockaddr_port(&used), 0);
    cr_assert_eq(conc_server_new(&s2, SOCK_STREAM, &used, &echo_handler, NULL), -EADDRINUSE);

    cr_assert_eq(conc_server_serve_forever(NULL, 0.5), -EINVAL);
    cr_assert_eq(conc_server_serve_forever(s1, 0), -EINVAL);
    cr_assert_eq(conc_server_handle_request(s1, -2), -EINVAL);
    cr_assert_eq(conc_server_shutdown(NULL), -EINVAL);
    cr_assert_eq(conc_server_fd(NULL), -EINVAL);
    cr_assert_geq(conc_server_fd(s1), 0);
    cr_assert_eq(conc_server_socket_type(s1), SOCK_STREAM);
    cr_assert_eq(conc_server_get_model(s1), CONC_SERVER_SYNC);
    /* a shutdown before serve_forever makes it return at once */
    cr_assert_eq(conc_server_shutdown(s1), 0);
    cr_assert_eq(conc_server_serve_forever(s1, 0.5), 0);
    cr_assert_eq(conc_server_close(s1), 0);
    cr_assert_eq(conc_server_close(s1), 0);
    cr_assert_eq(conc_server_serve_forever(s1, 0.5), -EPIPE);
    cr_assert_eq(conc_server_handle_request(s1, 0), -EPIPE);
    cr_assert_eq(conc_server_address(s1, &used), -EPIPE);
    cr_assert_eq(conc_server_fd(s1), -EPIPE);
    conc_server_free(s1);
    conc_server_free(NULL);

    conc_server_model m;
    cr_assert_eq(conc_server_model_parse("reactor", &m), 0);
    cr_assert_eq(m, CONC_SERVER_REACTOR);
    cr_assert_eq(conc_server_model_parse("nope", &m), -EINVAL);
    cr_assert_str_eq(conc_server_model_name(CONC_SERVER_PREFORK), "prefork");
    cr_assert_null(conc_server_model_name((conc_server_model)9));
    cr_assert_eq(count_fds(), fds);
}

/* service_actions runs while serve_forever idles */
static _Atomic int actions;

static void count_action(conc_server *s, void *user)
{
    (void)user;
    if (atomic_fetch_add(&actions, 1) == 2)
        conc_server_shutdown(s);
}

Test(server, service_actions_run_every_poll_interval, .timeout = 60)
{
    conc_sockaddr a;
    conc_sockaddr_inet(&a, AF_INET, "127.0.0.1", 0);
    conc_server_opts o = CONC_SERVER_OPTS_INIT;
    o.service_actions = count_action;
    conc_server *s;
    cr_assert_eq(conc_server_new(&s, SOCK_STREAM, &a, &echo_handler, &o), 0);
    cr_assert_eq(conc_server_serve_forever(s, 0.001), 0);
    cr_assert_eq(atomic_load(&actions), 3);
    conc_server_free(s);
}

/* max_connections: at the limit the next client waits in the backlog and
 * is served once a connection ends. */
Test(server, max_connections_makes_clients_wait, .timeout = 60)
{
    int fds = base_fds();
    conc_server_model models[] = { CONC_SERVER_THREADING, CONC_SERVER_COROUTINE,
                                   CONC_SERVER_REACTOR };
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++) {
        conc_sockaddr a;
        conc_sockaddr_inet(&a, AF_INET, "127.0.0.1", 0);
        conc_server_opts o = CONC_SERVER_OPTS_INIT;
        o.model = models[i];
        o.max_connections = 1;
        conc_server *s;
        cr_assert_eq(models[i] == CONC_SERVER_REACTOR
                         ? conc_server_new_reactor(&s, &a, &reactor_handler, &o)
                         : conc_server_new(&s, SOCK_STREAM, &a, &echo_handler, &o),
                     0);
        struct running r;
        start(&r, s);
        int first = dial(s);
        exchange(first, "first", 2);
        int second = dial(s);
        cr_assert_eq(send(second, "second", 6, 0), 6);
        exchange(first, "the first is still served", 5);
        conc_server_stats st;
        conc_server_get_stats(s, &st);
        cr_assert_eq(st.accepted, 1, "%s: %llu accepted", conc_server_model_name(models[i]),
                     (unsigned long long)st.accepted);
        close(first);
        char buf[8];
        read_exact(second, buf, 6);
        cr_assert_eq(memcmp(buf, "SECOND", 6), 0);
        close(second);
        stop(&r);
        conc_server_free(s);
    }
    cr_assert_eq(count_fds(), fds);
}

/* daemon_threads: serve_forever returns without waiting for the request
 * threads, which go on serving their clients. */
Test(server, daemon_threads_are_not_waited_for, .timeout = 60)
{
    int fds = base_fds();
    conc_sockaddr a;
    conc_sockaddr_inet(&a, AF_INET, "127.0.0.1", 0);
    conc_server_opts o = CONC_SERVER_OPTS_INIT;
    o.model = CONC_SERVER_THREADING;
    o.daemon_threads = true;
    conc_server *s;
    cr_assert_eq(conc_server_new(&s, SOCK_STREAM, &a, &echo_handler, &o), 0);
    struct running r;
    start(&r, s);
    int fd = dial(s);
    exchange(fd, "before the shutdown", 3);
    stop(&r);                       /* returns with the client connected */
    conc_server_stats st;
    conc_server_get_stats(s, &st);
    cr_assert_eq(st.active, 1);
    exchange(fd, "its thread still serves it", 4);
    conc_server_free(s);            /* the thread keeps what it uses */
    exchange(fd, "also after the server was freed", 5);
    close(fd);
    int n;
    do {                            /* the thread ends with its client */
        conc_sleep(0.001);
        n = count_fds();
    } while (n > fds);
    cr_assert_eq(n, fds);
}

/* block_on_close = False (no_block_on_close): serve_forever and close do
 * not wait for the requests in flight, whose threads or children go on
 * serving their clients; a child let go is reaped by active_children once
 * it ends, as in Python. */
struct nb_arg {
    conc_server *s;
    int to_test, from_test;
};

/* hs_recv with a hang guard: when the test failed and left, the server's
 * children still hold the pipe's write end, so no end of file would come;
 * the client leaves instead, closing its connections, and they end. */
static void hs_recv_guarded(int fd)
{
    struct pollfd pf = { .fd = fd, .events = POLLIN };
    int n;
    do
        n = poll(&pf, 1, (int)(GUARD * 1000));
    while (n < 0 && errno == EINTR);
    CHECK(n == 1, "no word from the test in %g s", GUARD);
    hs_recv(fd);
}

/* A server serving in r's thread while clients in a process of their
 * own (fn, given m) talk with the test over two pipes; started once the
 * clients sent their first byte. */
struct dialog {
    struct running r;
    struct nb_arg m;
    int to_test[2], from_test[2];
    pid_t clients;
};

static void dialog_start(struct dialog *d, conc_server *s, void (*fn)(void *))
{
    cr_assert_eq(pipe2(d->to_test, O_CLOEXEC), 0);
    cr_assert_eq(pipe2(d->from_test, O_CLOEXEC), 0);
    d->m = (struct nb_arg){ s, d->to_test[1], d->from_test[0] };
    start(&d->r, s);
    d->clients = client_proc(fn, &d->m);
    hs_recv(d->to_test[0]);
}

static void dialog_close(struct dialog *d)
{
    close(d->to_test[0]);
    close(d->to_test[1]);
    close(d->from_test[0]);
    close(d->from_test[1]);
}

static void nb_client(void *arg)
{
    struct nb_arg *m = arg;
    int fd = dial(m->s);
    exchange(fd, "before the shutdown", 3);
    hs_send(m->to_test);
    hs_recv_guarded(m->from_test);              /* the server has been stopped */
    exchange(fd, "still served after the stop", 4);
    hs_send(m->to_test);
    hs_recv_guarded(m->from_test);              /* ... and closed and freed */
    exchange(fd, "and after the server was freed", 5);
    close(fd);
}

static void no_block_on_close(conc_server_model model)
{
    int fds = base_fds();
    conc_sockaddr a;
    conc_sockaddr_inet(&a, AF_INET, "127.0.0.1", 0);
    conc_server_opts o = CONC_SERVER_OPTS_INIT;
    o.model = model;
    o.no_block_on_close = true;
    conc_server *s;
    cr_assert_eq(conc_server_new(&s, SOCK_STREAM, &a, &echo_handler, &o), 0);
    struct dialog d;
    dialog_start(&d, s, nb_client);
    stop(&d.r);                         /* returns with the request in flight */
    conc_server_stats st;
    conc_server_get_stats(s, &st);
    cr_assert_eq(st.active, 1);
    cr_assert_eq(st.finished, 0);
    hs_send(d.from_test[1]);
    hs_recv(d.to_test[0]);
    cr_assert_eq(conc_server_close(s), 0);      /* does not wait either */
    conc_server_free(s);
    hs_send(d.from_test[1]);
    client_proc_wait(d.clients);
    dialog_close(&d);
    int64_t deadline = conc_now() + (int64_t)(GUARD * 1e9);
    int n;
    for (;;) {                          /* the request ends with its client */
        n = count_fds();
        int alive = conc_process_active_children(NULL, 0);     /* reaps */
        if (n <= fds && alive == 0)
            break;
        cr_assert_lt(conc_now(), deadline, "%d descriptors (want %d), %d children", n, fds,
                     alive);
        conc_sleep(0.001);
    }
    cr_assert_eq(n, fds);
    no_children();
}

Test(server, threading_no_block_on_close_lets_requests_run, .timeout = 60)
{
    no_block_on_close(CONC_SERVER_THREADING);
}

Test(server, forking_no_block_on_close_lets_children_run, .timeout = 60)
{
    no_block_on_close(CONC_SERVER_FORKING);
}

/* ForkingMixIn.max_children: with that many children serving, the next
 * client waits in the backlog and is served once a child ends. */
static void mc_clients(void *arg)
{
    struct nb_arg *m = arg;
    int c1 = dial(m->s), c2 = dial(m->s);
    exchange(c1, "first child", 3);
    exchange(c2, "second child", 4);
    int c3 = dial(m->s);                /* accepted by the kernel, not the server */
    CHECK(send(c3, "third", 5, MSG_NOSIGNAL) == 5, "send: %s", strerror(errno));
    exchange(c1, "the first is still served", 5);
    exchange(c2, "and so is the second", 5);
    hs_send(m->to_test);
    hs_recv_guarded(m->from_test);
    close(c1);                          /* its child ends: room for the third */
    char buf[8];
    read_exact(c3, buf, 5);
    CHECK(memcmp(buf, "THIRD", 5) == 0, "third: '%.5s'", buf);
    exchange(c2, "the second still is", 5);
    close(c2);
    close(c3);
}

Test(server, forking_max_children_makes_clients_wait, .timeout = 60)
{
    int fds = base_fds();
    conc_sockaddr a;
    conc_sockaddr_inet(&a, AF_INET, "127.0.0.1", 0);
    conc_server_opts o = CONC_SERVER_OPTS_INIT;
    o.model = CONC_SERVER_FORKING;
    o.max_children = 2;
    o.request_queue_size = 8;
    conc_server *s;
    cr_assert_eq(conc_server_new(&s, SOCK_STREAM, &a, &echo_handler, &o), 0);
    struct dialog d;
    dialog_start(&d, s, mc_clients);
    conc_server_stats st;
    conc_server_get_stats(s, &st);
    cr_assert_eq(st.accepted, 2, "%llu accepted with max_children 2",
                 (unsigned long long)st.accepted);
    /* A child is counted active once its start returned in the serving
     * thread, which may come after the child already answered. */
    int64_t deadline = conc_now() + (int64_t)(GUARD * 1e9);
    while (conc_server_get_stats(s, &st) == 0 && st.active != 2) {
        cr_assert_lt(conc_now(), deadline, "%llu active", (unsigned long long)st.active);
        conc_sleep(0.001);
    }
    cr_assert_eq(st.accepted, 2);
    hs_send(d.from_test[1]);
    client_proc_wait(d.clients);
    stop(&d.r);
    conc_server_get_stats(s, &st);
    cr_assert_eq(st.accepted, 3);
    cr_assert_eq(st.finished, 3);
    cr_assert_eq(st.active, 0);
    conc_server_free(s);
    dialog_close(&d);
    cr_assert_eq(count_fds(), fds);
    no_children();
}

/* The reactor's back-pressure: a client that sends much and reads late
 * makes the loop stop reading it while its output passes
 * write_buffer_max; every byte comes back, in order. */
static _Atomic size_t max_pending;
static _Atomic int drains;

static int bp_data(conc_server_conn *c, const void *data, size_t len, void *user)
{
    (void)user;
    size_t p = conc_server_conn_pending(c);
    if (p > atomic_load(&max_pending))
        atomic_store(&max_pending, p);
    return upper_on_data(c, data, len, NULL);
}

static void bp_drain(conc_server_conn *c, void *user)
{
    (void)c;
    (void)user;
    atomic_fetch_add(&drains, 1);
}

/* small kernel buffers, so that the output piles up in the reactor */
static int bp_accept(conc_server_conn *c, void *user)
{
    (void)user;
    int small = 4096;
    setsockopt(conc_server_conn_fd(c), SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    return 0;
}

struct bp_arg {
    conc_server *s;
    int go[2];
};

static void bp_client(void *arg)
{
    struct bp_arg *b = arg;
    int fd = dial(b->s);
    int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    size_t total = 4u << 20;
    char *out = malloc(total), *in = malloc(total);
    CHECK(out && in, "malloc");
    for (size_t i = 0; i < total; i++)
        out[i] = (char)('a' + (i * 7 + i / 977) % 26);
    /* send everything before reading anything, from one thread: the
     * socket is non-blocking, and reading starts when sending stalls */
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    size_t sent = 0, got = 0;
    while (got < total) {
        if (sent < total) {
            ssize_t k = send(fd, out + sent, total - sent, MSG_NOSIGNAL);
            if (k > 0) {
                sent += (size_t)k;
                continue;
            }
            CHECK(errno == EAGAIN, "send: %s", strerror(errno));
        }
        struct pollfd pf = { .fd = fd, .events = (short)(POLLIN | (sent < total ? POLLOUT : 0)) };
        CHECK(poll(&pf, 1, (int)(GUARD * 1000)) == 1, "stalled at %zu sent, %zu back", sent, got);
        if (pf.revents & POLLIN) {
            ssize_t k = recv(fd, in + got, total - got, 0);
            CHECK(k > 0, "recv: %zd %s", k, strerror(errno));
            got += (size_t)k;
        }
    }
    upper(out, total);
    CHECK(memcmp(in, out, total) == 0, "the echo differs");
    close(fd);
    free(out);
    free(in);
}

Test(server, reactor_back_pressure, .timeout = 120)
{
    int fds = base_fds();
    conc_sockaddr a;
    conc_sockaddr_inet(&a, AF_INET, "127.0.0.1", 0);
    conc_server_opts o = CONC_SERVER_OPTS_INIT;
    o.write_buffer_max = 64 * 1024;
    o.read_size = 16 * 1024;
    const conc_server_reactor_handler h = { .on_accept = bp_accept, .on_data = bp_data,
                                            .on_drain = bp_drain };
    conc_server *s;
    cr_assert_eq(conc_server_new_reactor(&s, &a, &h, &o), 0);
    struct bp_arg b = { .s = s };
    pid_t pid = client_proc(bp_client, &b);
    struct running r;
    start(&r, s);
    client_proc_wait(pid);
    stop(&r);
    /* on_data never ran with more than the mark buffered */
    cr_assert_leq(atomic_load(&max_pending), o.write_buffer_max, "%zu pending",
                  atomic_load(&max_pending));
    cr_assert_gt(atomic_load(&drains), 0, "the output never passed the mark");
    conc_server_free(s);
    cr_assert_eq(count_fds(), fds);
}

/* shutdown_wait from the serving thread would wait for itself. */
static void wait_from_inside(conc_server *s, void *user)
{
    int *rc = user;
    *rc = conc_server_shutdown_wait(s, GUARD);
    conc_server_shutdown(s);
}

Test(server, shutdown_wait_from_the_serving_thread_is_edeadlk, .timeout = 60)
{
    int rc = 1;
    conc_sockaddr a;
    conc_sockaddr_inet(&a, AF_INET, "127.0.0.1", 0);
    conc_server_opts o = CONC_SERVER_OPTS_INIT;
    o.service_actions = wait_from_inside;
    o.user = &rc;
    conc_server *s;
    cr_assert_eq(conc_server_new(&s, SOCK_STREAM, &a, &echo_handler, &o), 0);
    cr_assert_eq(conc_server_serve_forever(s, 0.001), 0);
    cr_assert_eq(rc, -EDEADLK);
    cr_assert_eq(conc_server_shutdown_wait(s, 0), 0);   /* nothing serves */
    conc_server_free(s);
}

/* handle_request hands the request over and returns; close waits for it
 * (a greenlet of the caller's hub, a child process). */
static void handle_one_then_close(conc_server_model model)
{
    int fds = base_fds();
    conc_server *s = make(model, SOCK_STREAM, 1);
    struct busy b = { .s = s };
    cr_assert_eq(pipe(b.up), 0);
    cr_assert_eq(pipe(b.down), 0);
    pid_t pid = client_proc(busy_client, &b);
    cr_assert_eq(conc_server_handle_request(s, GUARD), 0);
    if (model == CONC_SERVER_FORKING || model == CONC_SERVER_PREFORK) {
        hs_recv(b.up[0]);
        hs_send(b.down[1]);
        client_proc_wait(pid);
        cr_assert_eq(conc_server_close(s), 0);
    } else {
        /* the greenlet has not run yet: close must wait for it, and it
         * runs while close waits */
        conc_server_stats st;
        conc_server_get_stats(s, &st);
        cr_assert_eq(st.active, 1);
        hs_send(b.down[1]);         /* the client goes on once it is answered */
        cr_assert_eq(conc_server_close(s), 0);
        client_proc_wait(pid);
    }
    conc_server_stats st;
    conc_server_get_stats(s, &st);
    cr_assert_eq(st.finished, 1);
    cr_assert_eq(st.active, 0);
    conc_server_free(s);
    conc_hub_free();
    for (int i = 0; i < 2; i++) {
        close(b.up[i]);
        close(b.down[i]);
    }
    cr_assert_eq(count_fds(), fds);
    no_children();
}

MODEL_TEST(coroutine_handle_request_then_close, handle_one_then_close, CONC_SERVER_COROUTINE)

/* handle_request's greenlet in the calling thread's hub, on its copied
 * stack */
COPIED_TEST(coroutine_copied_handle_request_then_close, handle_one_then_close,
            CONC_SERVER_COROUTINE)

MODEL_TEST(forking_handle_request_then_close, handle_one_then_close, CONC_SERVER_FORKING)

MODEL_TEST(prefork_handle_request_then_close, handle_one_then_close, CONC_SERVER_PREFORK)

static void one_exchange(void *arg)
{
    int fd = dial(arg);
    exchange(fd, "one request, then the end", 3);
    close(fd);
}

/* handle_request of the models that serve with loops or workers: nothing
 * waiting gives -EAGAIN / -ETIMEDOUT (no worker left behind); one client
 * is served.  REACTOR returns once the connection has ended, PREFORK once
 * a worker took it (close waits for the worker). */
static void handle_request_model(conc_server_model model)
{
    int fds = base_fds();
    atomic_store(&setups, 0);
    atomic_store(&finishes, 0);
    conc_server *s = make(model, SOCK_STREAM, 2);
    cr_assert_eq(conc_server_handle_request(s, 0), -EAGAIN);
    cr_assert_eq(conc_server_handle_request(s, 0.01), -ETIMEDOUT);
    cr_assert_eq(conc_server_handle_request_until(s, conc_now() + 10000000), -ETIMEDOUT);
    no_children();
    conc_server_stats st;
    conc_server_get_stats(s, &st);
    cr_assert_eq(st.accepted, 0);
    pid_t pid = client_proc(one_exchange, s);
    cr_assert_eq(conc_server_handle_request(s, GUARD), 0);
    conc_server_get_stats(s, &st);
    cr_assert_eq(st.accepted, 1);
    if (model == CONC_SERVER_REACTOR || model == CONC_SERVER_SYNC) {
        cr_assert_eq(st.finished, 1);
        cr_assert_eq(st.active, 0);
    }
    client_proc_wait(pid);
    /* nothing more is taken once the request was */
    cr_assert_eq(conc_server_handle_request(s, 0), -EAGAIN);
    cr_assert_eq(conc_server_close(s), 0);
    conc_server_get_stats(s, &st);
    cr_assert_eq(st.accepted, 1);
    cr_assert_eq(st.finished, 1);
    cr_assert_eq(st.failed, 0);
    cr_assert_eq(st.active, 0);
    cr_assert_eq(conc_server_handle_request(s, 0), -EPIPE);
    conc_server_free(s);
    cr_assert_eq(count_fds(), fds);
    no_children();
}

MODEL_TEST(reactor_handle_request, handle_request_model, CONC_SERVER_REACTOR)

MODEL_TEST(prefork_handle_request, handle_request_model, CONC_SERVER_PREFORK)

/* handle_request of a datagram server: one datagram is served. */
static void handle_datagram(conc_server_model model)
{
    int fds = base_fds();
    conc_server *s = make(model, SOCK_DGRAM, 2);
    cr_assert_eq(conc_server_handle_request(s, 0), -EAGAIN);
    conc_sockaddr a;
    conc_server_address(s, &a);
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    guard(fd);
    cr_assert_eq(connect(fd, &a.u.sa, a.len), 0);
    cr_assert_eq(send(fd, "ping me", 7, 0), 7);
    cr_assert_eq(send(fd, "and me", 6, 0), 6);
    cr_assert_eq(conc_server_handle_request(s, GUARD), 0);
    char buf[16] = "";
    cr_assert_eq(recv_retry(fd, buf, sizeof buf, 0), 7);
    cr_assert_eq(memcmp(buf, "PING ME", 7), 0);
    /* one request each: the second datagram waits for the next call */
    conc_server_stats st;
    conc_server_get_stats(s, &st);
    cr_assert_eq(st.accepted, 1);
    cr_assert_eq(conc_server_handle_request(s, GUARD), 0);
    cr_assert_eq(recv_retry(fd, buf, sizeof buf, 0), 6);
    cr_assert_eq(memcmp(buf, "AND ME", 6), 0);
    close(fd);
    cr_assert_eq(conc_server_close(s), 0);
    conc_server_get_stats(s, &st);
    cr_assert_eq(st.accepted, 2);
    cr_assert_eq(st.finished, 2);
    cr_assert_eq(st.active, 0);
    conc_server_free(s);
    cr_assert_eq(count_fds(), fds);
    no_children();
}

MODEL_TEST(reactor_handle_request_datagram, handle_datagram, CONC_SERVER_REACTOR)

MODEL_TEST(prefork_handle_request_datagram, handle_datagram, CONC_SERVER_PREFORK)

/* ------------------------------------------------------ idle timeout */

static _Atomic int idle_closes, other_closes;

static void idle_close(conc_server_conn *c, int err, void *user)
{
    (void)c;
    (void)user;
    atomic_fetch_add(err == -ETIMEDOUT ? &idle_closes : &other_closes, 1);
}

/* A reactor server on 127.0.0.1 (port 0) with callbacks h and options o. */
static conc_server *new_reactor(const conc_server_reactor_handler *h, const conc_server_opts *o)
{
    conc_sockaddr a;
    cr_assert_eq(conc_sockaddr_inet(&a, AF_INET, "127.0.0.1", 0), 0);
    conc_server *s;
    cr_assert_eq(conc_server_new_reactor(&s, &a, h, o), 0);
    return s;
}

/* A reactor server with idle_timeout t whose on_close counts the
 * connections closed for being idle and the others. */
static conc_server *idle_reactor(double t)
{
    atomic_store(&idle_closes, 0);
    atomic_store(&other_closes, 0);
    conc_server_opts o = CONC_SERVER_OPTS_INIT;
    o.idle_timeout = t;
    conc_server_reactor_handler h = reactor_handler;
    h.on_close = idle_close;
    return new_reactor(&h, &o);
}

/* A reactor connection that sends nothing for idle_timeout is closed and
 * on_close gets -ETIMEDOUT, also while another client keeps the loop busy;
 * the busy one is not closed. */
Test(server, reactor_idle_timeout_closes_silent_connections, .timeout = 60)
{
    int fds = base_fds();
    conc_server *s = idle_reactor(1.0);
    struct running r;
    start(&r, s);
    int silent = dial(s);
    exchange(silent, "a word, then silence", 4);
    int busy = dial(s);
    int64_t guard_at = conc_now() + (int64_t)(GUARD * 1e9);
    int rounds = 0;
    for (;;) {
        exchange(busy, "still talking", 5);
        rounds++;
        struct pollfd p = { .fd = silent, .events = POLLIN };
        if (poll(&p, 1, 0) == 1)
            break;
        cr_assert_lt(conc_now(), guard_at, "the silent connection was never closed");
    }
    char c;
    cr_assert_eq(recv_retry(silent, &c, 1, 0), 0);     /* closed: the end of the stream */
    close(silent);
    cr_assert_eq(atomic_load(&idle_closes), 1);
    exchange(busy, "and the talker is still served", 3);
    close(busy);
    stop(&r);
    cr_assert_eq(atomic_load(&idle_closes), 1);
    cr_assert_eq(atomic_load(&other_closes), 1);
    conc_server_stats st;
    conc_server_get_stats(s, &st);
    cr_assert_eq(st.accepted, 2);
    cr_assert_eq(st.active, 0);
    conc_server_free(s);
    cr_assert_eq(count_fds(), fds);
}

/* handle_request ends when its idle connection is closed. */
Test(server, reactor_handle_request_idle_timeout, .timeout = 60)
{
    int fds = base_fds();
    conc_server *s = idle_reactor(0.01);
    int fd = dial(s);
    cr_assert_eq(conc_server_handle_request(s, GUARD), 0);
    cr_assert_eq(atomic_load(&idle_closes), 1);
    char c;
    cr_assert_eq(recv_retry(fd, &c, 1, 0), 0);
    close(fd);
    conc_server_free(s);
    cr_assert_eq(count_fds(), fds);
}

/* handle_request of the reactor model: once its one connection is taken,
 * another waiting in the backlog does not keep the loop awake (the
 * listener stays out of the loop until the call returns): the loop sleeps
 * while the connection it serves is silent, and the other connection is
 * left to the next call. */
struct one_call {
    conc_server *s;
    int rc;
};

static void *handle_one_main(void *arg)
{
    struct one_call *c = arg;
    c->rc = conc_server_handle_request(c->s, GUARD);
    return NULL;
}

Test(server, reactor_handle_request_sleeps_with_a_connection_waiting, .timeout = 60)
{
    int fds = base_fds();
    conc_server *s = make(CONC_SERVER_REACTOR, SOCK_STREAM, 1);
    int first = dial(s), second = dial(s);          /* both in the backlog */
    struct one_call c = { s, 1 };
    pid_t tid;
    pthread_t t = spawn_tid(handle_one_main, &c, &tid);
    exchange(first, "taken and answered", 6);       /* the loop took the first */
    cr_expect(await_task_blocked(getpid(), tid, 10.0),
              "the loop never slept while a second connection waited");
    close(first);
    pthread_join(t, NULL);
    cr_assert_eq(c.rc, 0);
    conc_server_stats st;
    conc_server_get_stats(s, &st);
    cr_assert_eq(st.accepted, 1);
    cr_assert_eq(st.finished, 1);
    cr_assert_eq(conc_server_close(s), 0);
    conc_server_free(s);
    close(second);
    cr_assert_eq(count_fds(), fds);
}

/* The reactor's refusal: on_accept turns the first two connections
 * away, the third is served.  The refused ones are closed without an
 * on_close (they never were the loop's), counted as refused, not failed,
 * and leave no descriptor behind. */
static atomic_int rf_seen, rf_closes;

static int rf_accept(conc_server_conn *c, void *user)
{
    (void)c;
    (void)user;
    return atomic_fetch_add(&rf_seen, 1) < 2 ? -EPERM : 0;
}

static void rf_close(conc_server_conn *c, int err, void *user)
{
    (void)c;
    (void)user;
    CHECK(err == 0, "on_close: %s", conc_strerror(err));
    atomic_fetch_add(&rf_closes, 1);
}

Test(server, reactor_refusals_close_the_client, .timeout = 60)
{
    int fds = base_fds();
    atomic_store(&rf_seen, 0);
    atomic_store(&rf_closes, 0);
    conc_server_reactor_handler h = reactor_handler;
    h.on_accept = rf_accept;
    h.on_close = rf_close;
    conc_server *s = new_reactor(&h, NULL);
    struct running r;
    start(&r, s);
    char c;
    for (int i = 0; i < 2; i++) {
        int fd = dial(s);
        cr_assert_leq(recv_retry(fd, &c, 1, 0), 0, "refused connection %d was served", i);
        close(fd);
    }
    int fd = dial(s);
    exchange(fd, "the third is served", 5);
    close(fd);
    stop(&r);
    conc_server_stats st;
    cr_assert_eq(conc_server_get_stats(s, &st), 0);
    cr_assert_eq(st.accepted, 3);
    cr_assert_eq(st.refused, 2);
    cr_assert_eq(st.finished, 1);
    cr_assert_eq(st.failed, 0);
    cr_assert_eq(st.active, 0);
    cr_assert_eq(atomic_load(&rf_closes), 1);
    conc_server_free(s);
    cr_assert_eq(count_fds(), fds);
}

/* The reactor's gathered writes: what the callbacks write waits (in the
 * loop's batch area, or the connection's buffer) until the loop has run
 * the batch's callbacks
 * (conc_server_conn_pending shows it), and then goes out in the order
 * of the writes, small pieces and 100 KiB blocks mixed, the greeting of
 * on_accept first, every byte before the close a callback asks for. */
enum { GW_BIG = 100 * 1024 };
static atomic_int gw_bad;                   /* callbacks' checks that failed */
static char gw_big[GW_BIG];

static int gw_accept(conc_server_conn *c, void *user)
{
    (void)user;
    if (conc_server_conn_write(c, "hello\n", 6) != 0 || conc_server_conn_pending(c) != 6)
        atomic_fetch_add(&gw_bad, 1);
    return 0;
}

/* Each byte b comes back as "<b>"; 'B' and 'D' write a 100 KiB block:
 * behind what is buffered, or, first in their message, with nothing
 * buffered (at once, in part or whole); 'q' writes "bye" and closes. */
static int gw_data(conc_server_conn *c, const void *data, size_t len, void *user)
{
    (void)user;
    const char *p = data;
    size_t want = 0;
    bool close = false;
    for (size_t i = 0; i < len; i++) {
        if (p[i] == 'D' || p[i] == 'B') {
            if (conc_server_conn_write(c, gw_big, GW_BIG) != 0)
                atomic_fetch_add(&gw_bad, 1);
            want += GW_BIG;
            continue;
        }
        if (p[i] == 'q') {
            conc_server_conn_write(c, "bye", 3);
            close = true;
            break;
        }
        char piece[3] = { '<', p[i], '>' };
        if (conc_server_conn_write(c, piece, 3) != 0)
            atomic_fetch_add(&gw_bad, 1);
        want += 3;
    }
    /* a direct write may have gone out in part: pending counts the rest */
    size_t pending = conc_server_conn_pending(c);
    bool direct = p[0] == 'D' || p[0] == 'B';
    if (!direct && !close && pending != want)
        atomic_fetch_add(&gw_bad, 1);
    if (direct && (pending < want - GW_BIG || pending > want))
        atomic_fetch_add(&gw_bad, 1);
    return close ? -1 : 0;
}

static void gw_expect(int fd, const char *sent)
{
    size_t n = 0;
    for (const char *q = sent; *q; q++)
        n += *q == 'B' || *q == 'D' ? GW_BIG : 3;
    char *want = malloc(n), *got = malloc(n);
    CHECK(want && got, "malloc");
    size_t k = 0;
    for (const char *q = sent; *q; q++) {
        if (*q == 'B' || *q == 'D') {
            memcpy(want + k, gw_big, GW_BIG);
            k += GW_BIG;
        } else {
            memcpy(want + k, (char[3]){ '<', *q, '>' }, 3);
            k += 3;
        }
    }
    read_exact(fd, got, n);
    CHECK(memcmp(got, want, n) == 0, "the reply to '%s' differs", sent);
    free(want);
    free(got);
}

static void gw_client(void *arg)
{
    conc_server *s = arg;
    int fd = dial(s);
    char hello[6];
    read_exact(fd, hello, 6);
    CHECK(memcmp(hello, "hello\n", 6) == 0, "no greeting");
    static const char *const msgs[] = { "abc", "xBy", "Dz", "B", "k" };
    for (size_t i = 0; i < sizeof msgs / sizeof *msgs; i++) {
        CHECK(send(fd, msgs[i], strlen(msgs[i]), MSG_NOSIGNAL) == (ssize_t)strlen(msgs[i]),
              "send: %s", strerror(errno));
        gw_expect(fd, msgs[i]);
    }
    CHECK(send(fd, "mnq", 3, MSG_NOSIGNAL) == 3, "send: %s", strerror(errno));
    char tail[16];
    read_exact(fd, tail, 9);
    CHECK(memcmp(tail, "<m><n>bye", 9) == 0, "the last reply differs");
    CHECK(recv_retry(fd, tail, 1, 0) == 0, "no end of stream after the close");
    close(fd);
}

Test(server, reactor_gathered_writes_keep_their_order, .timeout = 60)
{
    int fds = base_fds();
    atomic_store(&gw_bad, 0);
    for (size_t i = 0; i < GW_BIG; i++)
        gw_big[i] = (char)('0' + (i * 13 + i / 251) % 64);
    const conc_server_reactor_handler h = { .on_accept = gw_accept, .on_data = gw_data };
    conc_server *s = new_reactor(&h, NULL);
    struct running r;
    start(&r, s);
    for (int round = 0; round < 3; round++) {
        pid_t pid = client_proc(gw_client, s);
        client_proc_wait(pid);
    }
    stop(&r);
    cr_assert_eq(atomic_load(&gw_bad), 0, "%d callback checks failed", atomic_load(&gw_bad));
    conc_server_stats st;
    cr_assert_eq(conc_server_get_stats(s, &st), 0);
    cr_assert_eq(st.finished, 3);
    cr_assert_eq(st.failed, 0);
    conc_server_free(s);
    cr_assert_eq(count_fds(), fds);
}

/* Writes to other connections from a callback (a broadcast): each piece
 * a connection is sent comes in the order it was written, whether it
 * waited in the loop's batch area behind another connection's piece (then
 * it moves to the connection's own buffer) or at its end; output larger
 * than the area goes out whole and in order too. */
enum { BC_CONNS = 3, BC_BIG = 300 * 1024 };
static conc_server_conn *bc_conns[BC_CONNS];
static int bc_n;
static atomic_int bc_bad;
static char bc_big[BC_BIG];

static int bc_accept(conc_server_conn *c, void *user)
{
    (void)user;
    if (bc_n == BC_CONNS)
        return -1;
    conc_server_conn_set_data(c, (void *)(intptr_t)bc_n);
    bc_conns[bc_n++] = c;
    char hi[3] = { 'h', (char)('0' + bc_n - 1), '\n' };
    return conc_server_conn_write(c, hi, 3);
}

/* Each byte b from connection i goes to every connection as "<ib>", one
 * piece per connection in turn; 'L' also sends the sender BC_BIG bytes
 * in 1 KiB pieces after its piece. */
static int bc_data(conc_server_conn *c, const void *data, size_t len, void *user)
{
    (void)user;
    const char *p = data;
    char id = (char)('0' + (int)(intptr_t)conc_server_conn_data(c));
    size_t sent[BC_CONNS] = { 0 };
    bool big = false;
    for (size_t i = 0; i < len; i++) {
        char piece[4] = { '<', id, p[i], '>' };
        for (int k = 0; k < bc_n; k++) {
            if (conc_server_conn_write(bc_conns[k], piece, 4) != 0)
                atomic_fetch_add(&bc_bad, 1);
            sent[k] += 4;
        }
        if (p[i] == 'L') {
            for (size_t off = 0; off < BC_BIG; off += 1024)
                if (conc_server_conn_write(c, bc_big + off, 1024) != 0)
                    atomic_fetch_add(&bc_bad, 1);
            big = true;
        }
    }
    for (int k = 0; k < bc_n && !big; k++)
        if (conc_server_conn_pending(bc_conns[k]) != sent[k])
            atomic_fetch_add(&bc_bad, 1);
    return 0;
}

static void bc_expect(int fd, const char *want)
{
    char got[64];
    size_t n = strlen(want);
    read_exact(fd, got, n);
    cr_assert(memcmp(got, want, n) == 0, "got '%.*s', want '%s'", (int)n, got, want);
}

Test(server, reactor_writes_across_connections_keep_their_order, .timeout = 60)
{
    int fds = base_fds();
    bc_n = 0;
    atomic_store(&bc_bad, 0);
    for (size_t i = 0; i < BC_BIG; i++)
        bc_big[i] = (char)('a' + (i * 7 + i / 1021) % 26);
    const conc_server_reactor_handler h = { .on_accept = bc_accept, .on_data = bc_data };
    conc_server *s = new_reactor(&h, NULL);
    struct running r;
    start(&r, s);
    int fd[BC_CONNS];
    for (int k = 0; k < BC_CONNS; k++) {
        fd[k] = dial(s);
        char hi[4] = { 'h', (char)('0' + k), '\n', '\0' };
        bc_expect(fd[k], hi);      /* accepted in turn: ids follow the dials */
    }
    static const struct { int from; const char *msg, *want; } steps[] = {
        { 0, "abc", "<0a><0b><0c>" },
        { 2, "xy", "<2x><2y>" },
        { 1, "L", "<1L>" },
        { 1, "zL", "<1z><1L>" },
    };
    for (size_t i = 0; i < sizeof steps / sizeof *steps; i++) {
        size_t len = strlen(steps[i].msg);
        cr_assert_eq(send(fd[steps[i].from], steps[i].msg, len, MSG_NOSIGNAL), (ssize_t)len);
        for (int k = 0; k < BC_CONNS; k++) {
            bc_expect(fd[k], steps[i].want);
            if (k == steps[i].from && strchr(steps[i].msg, 'L')) {
                char *got = malloc(BC_BIG);
                cr_assert_not_null(got);
                read_exact(fd[k], got, BC_BIG);
                cr_assert(memcmp(got, bc_big, BC_BIG) == 0, "step %zu: the large reply differs", i);
                free(got);
            }
        }
    }
    for (int k = 0; k < BC_CONNS; k++)
        close(fd[k]);
    stop(&r);
    cr_assert_eq(atomic_load(&bc_bad), 0, "%d callback checks failed", atomic_load(&bc_bad));
    conc_server_free(s);
    cr_assert_eq(count_fds(), fds);
}

/* ------------------------------------------------ adopting a socket */

/* Python's bind_and_activate=False: the socket is made, bound and set
 * listening by hand, then served; the server closes it. */
Test(server, adopt_a_listening_socket, .timeout = 60)
{
    int fds = base_fds();
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(lfd, 0);
    int one = 1;
    cr_assert_eq(setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one), 0);
    conc_sockaddr a;
    conc_sockaddr_inet(&a, AF_INET, "127.0.0.1", 0);
    cr_assert_eq(bind(lfd, &a.u.sa, a.len), 0);
    cr_assert_eq(listen(lfd, 16), 0);
    conc_sockaddr bound;
    bound.len = sizeof bound.u;
    cr_assert_eq(getsockname(lfd, &bound.u.sa, &bound.len), 0);
    conc_server_opts o = CONC_SERVER_OPTS_INIT;
    o.model = CONC_SERVER_THREADING;
    conc_server *s;
    cr_assert_eq(conc_server_new_fd(&s, lfd, &echo_handler, &o), 0);
    cr_assert_eq(conc_server_fd(s), lfd);
    cr_assert_eq(conc_server_socket_type(s), SOCK_STREAM);
    conc_sockaddr got;
    cr_assert_eq(conc_server_address(s, &got), 0);
    cr_assert_eq(conc_sockaddr_port(&got), conc_sockaddr_port(&bound));
    struct running r;
    start(&r, s);
    int fd = dial(s);
    exchange(fd, "served on a socket made by hand", 4);
    close(fd);
    stop(&r);
    conc_server_free(s);            /* closes lfd */
    cr_assert_eq(count_fds(), fds);
}

/* A reactor on an adopted listener, and a reactor datagram server on an
 * adopted Unix datagram socket, whose file the server leaves alone. */
Test(server, adopt_sockets_for_the_reactor, .timeout = 60)
{
    int fds = base_fds();
    int lfd = socket(AF_INET6, SOCK_STREAM, 0);
    cr_assert_geq(lfd, 0);
    conc_sockaddr a;
    conc_sockaddr_inet(&a, AF_INET6, "::1", 0);
    if (bind(lfd, &a.u.sa, a.len) < 0) {    /* no IPv6 loopback here */
        close(lfd);
        lfd = socket(AF_INET, SOCK_STREAM, 0);
        conc_sockaddr_inet(&a, AF_INET, "127.0.0.1", 0);
        cr_assert_eq(bind(lfd, &a.u.sa, a.len), 0);
    }
    cr_assert_eq(listen(lfd, 16), 0);
    conc_server *s;
    conc_server_opts io = CONC_SERVER_OPTS_INIT;
    io.idle_timeout = INFINITY;                     /* no limit */
    cr_assert_eq(conc_server_new_reactor_fd(&s, lfd, &reactor_handler, &io), 0);
    cr_assert_eq(conc_server_get_model(s), CONC_SERVER_REACTOR);
    pid_t pid = client_proc(one_exchange, s);
    cr_assert_eq(conc_server_handle_request(s, GUARD), 0);
    client_proc_wait(pid);
    conc_server_free(s);

    char path[108];
    snprintf(path, sizeof path, "/tmp/conc-server-test-%d-adopt.sock", (int)getpid());
    unlink(path);
    int dfd = socket(AF_UNIX, SOCK_DGRAM, 0);
    conc_sockaddr ua;
    conc_sockaddr_unix(&ua, path, 0);
    cr_assert_eq(bind(dfd, &ua.u.sa, ua.len), 0);
    conc_server_opts o = CONC_SERVER_OPTS_INIT;
    o.model = CONC_SERVER_REACTOR;
    cr_assert_eq(conc_server_new_fd(&s, dfd, &echo_handler, &o), 0);
    cr_assert_eq(conc_server_socket_type(s), SOCK_DGRAM);
    int cfd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    char cpath[108];
    snprintf(cpath, sizeof cpath, "%.90s.client", path);
    unlink(cpath);
    conc_sockaddr ca;
    conc_sockaddr_unix(&ca, cpath, 0);
    cr_assert_eq(bind(cfd, &ca.u.sa, ca.len), 0);
    guard(cfd);
    cr_assert_eq(sendto(cfd, "adopted", 7, 0, &ua.u.sa, ua.len), 7);
    cr_assert_eq(conc_server_handle_request(s, GUARD), 0);
    char buf[16];
    cr_assert_eq(recv_retry(cfd, buf, sizeof buf, 0), 7);
    cr_assert_eq(memcmp(buf, "ADOPTED", 7), 0);
    conc_server_free(s);
    cr_assert_eq(access(path, F_OK), 0, "the caller's socket file was removed");
    close(cfd);
    unlink(cpath);
    unlink(path);
    cr_assert_eq(count_fds(), fds);
    no_children();
}

/* A socket that cannot be served is refused with its reason, and stays
 * the caller's: open, flags unchanged. */
static void refused_fd(int fd, int want, const conc_server_opts *o, bool reactor)
{
    int fl = fd >= 0 ? fcntl(fd, F_GETFL) : -1;
    conc_server *s = NULL;
    int rc = reactor ? conc_server_new_reactor_fd(&s, fd, &reactor_handler, o)
                     : conc_server_new_fd(&s, fd, &echo_handler, o);
    cr_assert_eq(rc, want, "fd %d: %s, want %s", fd, conc_strerror(rc), conc_strerror(want));
    cr_assert_null(s);
    if (fd >= 0 && want != -EBADF) {
        cr_assert_eq(fcntl(fd, F_GETFL), fl, "fd %d changed", fd);
        cr_assert_geq(fcntl(fd, F_GETFD), 0, "fd %d closed", fd);
    }
}

Test(server, adopt_refuses_bad_sockets, .timeout = 60)
{
    int fds = base_fds();
    conc_sockaddr a;
    conc_sockaddr_inet(&a, AF_INET, "127.0.0.1", 0);
    refused_fd(-1, -EBADF, NULL, false);
    refused_fd(-1, -EBADF, NULL, true);
    int p[2];
    cr_assert_eq(pipe(p), 0);
    close(p[1]);
    refused_fd(p[1], -EBADF, NULL, false);          /* a closed number */
    refused_fd(p[0], -ENOTSOCK, NULL, false);       /* a pipe */
    refused_fd(p[0], -ENOTSOCK, NULL, true);
    int sp[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sp), 0);
    refused_fd(sp[0], -EINVAL, NULL, false);        /* another type */
    int unbound = socket(AF_INET, SOCK_STREAM, 0);
    refused_fd(unbound, -EINVAL, NULL, false);
    int quiet = socket(AF_INET, SOCK_STREAM, 0);    /* bound, not listening */
    cr_assert_eq(bind(quiet, &a.u.sa, a.len), 0);
    refused_fd(quiet, -EINVAL, NULL, false);
    refused_fd(quiet, -EINVAL, NULL, true);
    int udp_unbound = socket(AF_INET, SOCK_DGRAM, 0);
    refused_fd(udp_unbound, -EINVAL, NULL, false);
    int udp = socket(AF_INET, SOCK_DGRAM, 0);
    cr_assert_eq(bind(udp, &a.u.sa, a.len), 0);
    refused_fd(udp, -EINVAL, NULL, true);           /* the stream reactor */
    int lst = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_eq(bind(lst, &a.u.sa, a.len), 0);
    cr_assert_eq(listen(lst, 4), 0);
    conc_server_opts o = CONC_SERVER_OPTS_INIT;
    o.reuse_port = true;                            /* not in a group */
    refused_fd(lst, -EINVAL, &o, false);
    o.reuse_port = false;
    o.model = CONC_SERVER_REACTOR;                  /* a stream needs callbacks */
    refused_fd(lst, -EINVAL, &o, false);
    o.model = CONC_SERVER_THREADING;                /* not a reactor model */
    refused_fd(lst, -EINVAL, &o, true);
    int nl = socket(AF_NETLINK, SOCK_DGRAM, 0);
    if (nl >= 0) {
        refused_fd(nl, -EAFNOSUPPORT, NULL, false);
        close(nl);
    }
    conc_server *s;
    cr_assert_eq(conc_server_new_fd(NULL, lst, &echo_handler, NULL), -EINVAL);
    cr_assert_eq(conc_server_new_fd(&s, lst, NULL, NULL), -EINVAL);
    cr_assert_eq(conc_server_new_reactor_fd(&s, lst, NULL, NULL), -EINVAL);
    /* and the same listener, good, is served */
    cr_assert_eq(conc_server_new_fd(&s, lst, &echo_handler, NULL), 0);
    conc_server_free(s);
    close(p[0]);
    close(sp[0]);
    close(sp[1]);
    close(unbound);
    close(quiet);
    close(udp_unbound);
    close(udp);
    cr_assert_eq(count_fds(), fds);
}

/* handle_request in the other models (COROUTINE's greenlet runs when its
 * thread waits in conc, as coroutine_handle_request_then_close shows). */
MODEL_TEST(sync_handle_request, handle_request_model, CONC_SERVER_SYNC)

MODEL_TEST(threading_handle_request, handle_request_model, CONC_SERVER_THREADING)

MODEL_TEST(forking_handle_request, handle_request_model, CONC_SERVER_FORKING)

MODEL_TEST(sync_handle_request_datagram, handle_datagram, CONC_SERVER_SYNC)

MODEL_TEST(threading_handle_request_datagram, handle_datagram, CONC_SERVER_THREADING)

MODEL_TEST(forking_handle_request_datagram, handle_datagram, CONC_SERVER_FORKING)

/* A prefork handle_request whose worker is killed before a request came
 * reports it (-ECHILD) instead of waiting, and leaves nothing behind. */
struct hr_call {
    conc_server *s;
    int rc;
};

static void *hr_main(void *arg)
{
    struct hr_call *c = arg;
    c->rc = conc_server_handle_request(c->s, GUARD);
    return NULL;
}

Test(server, prefork_handle_request_worker_killed, .timeout = 60)
{
    int fds = base_fds();
    conc_server *s = make(CONC_SERVER_PREFORK, SOCK_STREAM, 1);
    struct hr_call c = { .s = s, .rc = 1 };
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, hr_main, &c), 0);
    pid_t kids[4];
    int n;
    while ((n = children(kids, 4)) == 0)
        conc_sleep(0.001);
    cr_assert_eq(n, 1);
    cr_assert_eq(kill(kids[0], SIGKILL), 0);
    pthread_join(t, NULL);
    cr_assert_eq(c.rc, -ECHILD, "%s", conc_strerror(c.rc));
    no_children();
    /* and the server still serves */
    pid_t pid = client_proc(one_exchange, s);
    cr_assert_eq(conc_server_handle_request(s, GUARD), 0);
    client_proc_wait(pid);
    conc_server_free(s);
    cr_assert_eq(count_fds(), fds);
    no_children();
}

/* With reuse_port, a killed worker's replacement binds a socket of its
 * own again: both workers answer after it. */
Test(server, prefork_reuse_port_worker_replaced, .timeout = 60)
{
    int fds = base_fds();
    struct running r;
    conc_server *s = start_prefork(&r, SOCK_DGRAM, &(conc_server_handler){ .handle = pid_handle },
                                   &(conc_server_opts){ .reuse_port = true });
    conc_sockaddr a;
    conc_server_address(s, &a);
    for (int life = 0; life < 2; life++) {
        pid_t kids[8];
        cr_assert_eq(children(kids, 8), 2);
        int seen[2] = { 0, 0 };
        for (int round = 0; round < 200 && !(seen[0] && seen[1]); round++) {
            for (int i = 0; i < 16; i++) {
                int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
                guard(fd);
                cr_assert_eq(connect(fd, &a.u.sa, a.len), 0);
                cr_assert_eq(send(fd, "who", 3, 0), 3);
                char buf[32] = "";
                cr_assert_gt(recv_retry(fd, buf, sizeof buf - 1, 0), 0);
                int pid = atoi(buf);
                cr_assert(pid == kids[0] || pid == kids[1], "answered by %d", pid);
                seen[pid == kids[1]]++;
                close(fd);
            }
        }
        cr_assert(seen[0] && seen[1], "life %d: one worker served every client", life);
        if (life == 0) {
            /* both workers are equal here: kill either, its slot is refilled */
            cr_assert_eq(kill(kids[1], SIGKILL), 0);
            wait_workers(s, 2, 1);
        }
    }
    stop(&r);
    conc_server_free(s);
    cr_assert_eq(count_fds(), fds);
    no_children();
}

/* ------------------------------------------- threading: blocking reads */

/* The threading model's request socket (no request_timeout) has a blocking
 * descriptor, as Python's: the thread sleeps in recv and send themselves.
 * With a request_timeout it stays non-blocking and the timeout holds. */
static _Atomic int probe_flags = -1;

static int flags_handle(conc_server_request *req)
{
    atomic_store(&probe_flags, fcntl(conc_socket_fd(req->sock), F_GETFL));
    return echo_handle(req);
}

static const conc_server_handler flags_handler = {
    .setup = echo_setup, .handle = flags_handle, .finish = echo_finish,
};

static int silent_timeout_handle(conc_server_request *req)
{
    atomic_store(&probe_flags, fcntl(conc_socket_fd(req->sock), F_GETFL));
    char c;
    return (int)conc_socket_recv(req->sock, &c, 1, 0);
}

static const conc_server_handler silent_timeout_handler = { .handle = silent_timeout_handle };

static conc_server *make_threading(const conc_server_handler *h, double request_timeout,
                                   double shutdown_timeout)
{
    conc_sockaddr a;
    cr_assert_eq(conc_sockaddr_inet(&a, AF_INET, "127.0.0.1", 0), 0);
    conc_server_opts o = CONC_SERVER_OPTS_INIT;
    o.model = CONC_SERVER_THREADING;
    o.request_timeout = request_timeout;
    o.shutdown_timeout = shutdown_timeout;
    conc_server *s;
    int rc = conc_server_new(&s, SOCK_STREAM, &a, h, &o);
    cr_assert_eq(rc, 0, "new: %s", conc_strerror(rc));
    return s;
}

Test(server, threading_request_socket_blocks_as_pythons, .timeout = 60)
{
    int fds = base_fds();
    conc_server *s = make_threading(&flags_handler, 0, 0);
    struct running r;
    start(&r, s);
    int fd = dial(s);
    exchange(fd, "a blocking request socket", 4);
    int fl = atomic_load(&probe_flags);
    cr_assert_geq(fl, 0);
    cr_assert_eq(fl & O_NONBLOCK, 0, "the request's descriptor is non-blocking");
    exchange(fd, "served by blocking reads", 3);
    close(fd);
    stop_and_free(&r, 1, 0);

    /* request_timeout: the descriptor stays non-blocking, a silent client
     * times out */
    atomic_store(&probe_flags, -1);
    s = make_threading(&silent_timeout_handler, 0.05, 0);
    start(&r, s);
    fd = dial(s);
    char c;
    cr_assert_eq(recv_retry(fd, &c, 1, 0), 0, "the timed-out request is not closed");
    close(fd);
    stop(&r);
    fl = atomic_load(&probe_flags);
    cr_assert(fl >= 0 && (fl & O_NONBLOCK), "flags %#x", fl);
    conc_server_stats st;
    conc_server_get_stats(s, &st);
    cr_assert_eq(st.failed, 1);
    cr_assert_eq(st.finished, 0);
    conc_server_free(s);
    cr_assert_eq(count_fds(), fds);
}

/* A handler's calls that must not block still do not on the blocking
 * descriptor: a non-blocking recv, a recv with a deadline, a sendfile with
 * a deadline to a client that reads nothing. */
enum { SF_SIZE = 64 << 20 };
static _Atomic long nb_recv = 1, dl_recv = 1, dl_sendfile = 1;
static _Atomic long dl_sent = -1;
static _Atomic int probe_done;

static int deadlines_handle(conc_server_request *req)
{
    char buf[16];
    cr_assert_eq(conc_socket_set_timeout(req->sock, 0), 0);
    atomic_store(&nb_recv, (long)conc_socket_recv(req->sock, buf, sizeof buf, 0));
    cr_assert_eq(conc_socket_set_timeout(req->sock, CONC_FOREVER), 0);
    atomic_store(&dl_recv, (long)conc_socket_recv_until(req->sock, buf, sizeof buf, 0,
                                                        conc_now() + 20000000));
    int mfd = memfd_create("sendfile-source", MFD_CLOEXEC);
    int rc = mfd >= 0 && ftruncate(mfd, SF_SIZE) == 0 ? 0 : -errno;
    size_t sent = 0;
    if (rc == 0)
        rc = conc_socket_sendfile_until(req->sock, mfd, 0, SF_SIZE, &sent,
                                        conc_now() + 50000000);
    if (mfd >= 0)
        close(mfd);
    atomic_store(&dl_sendfile, rc);
    atomic_store(&dl_sent, (long)sent);
    atomic_store(&probe_done, 1);
    return 0;
}

static const conc_server_handler deadlines_handler = { .handle = deadlines_handle };

Test(server, threading_calls_with_deadlines_do_not_block, .timeout = 60)
{
    int fds = base_fds();
    conc_server *s = make_threading(&deadlines_handler, 0, 0);
    struct running r;
    start(&r, s);
    int fd = dial(s);
    int64_t end = conc_now() + (int64_t)(GUARD * 1e9);
    while (!atomic_load(&probe_done)) {
        cr_assert_lt(conc_now(), end, "the handler hangs");
        conc_sleep(0.001);
    }
    close(fd);
    stop(&r);
    cr_assert_eq(atomic_load(&nb_recv), -EAGAIN);
    cr_assert_eq(atomic_load(&dl_recv), -ETIMEDOUT);
    cr_assert_eq(atomic_load(&dl_sendfile), -ETIMEDOUT, "sendfile: %s",
                 conc_strerror((int)atomic_load(&dl_sendfile)));
    long sent = atomic_load(&dl_sent);
    cr_assert(sent > 0 && sent < SF_SIZE, "sent %ld", sent);
    conc_server_free(s);
    cr_assert_eq(count_fds(), fds);
}

/* A handler that runs a hub in its thread: a greenlet's recv parks the
 * greenlet, not the thread, so another greenlet of the thread runs (it
 * sends the ping the client waits for before it sends anything). */
struct hub_req {
    conc_server_request *req;
    conc_event reading;
};

static void *hub_reader(void *arg)
{
    struct hub_req *h = arg;
    char buf[64];
    conc_event_set(&h->reading);
    ssize_t n = conc_socket_recv(h->req->sock, buf, sizeof buf, 0);
    if (n <= 0)
        return (void *)(intptr_t)(n < 0 ? n : -EPROTO);
    upper(buf, (size_t)n);
    return (void *)(intptr_t)conc_socket_sendall(h->req->sock, buf, (size_t)n, 0, NULL);
}

static void *hub_pinger(void *arg)
{
    struct hub_req *h = arg;
    int rc = conc_event_wait(&h->reading, GUARD);
    if (rc == 0)
        rc = conc_socket_sendall(h->req->sock, "ping", 4, 0, NULL);
    return (void *)(intptr_t)rc;
}

static int hub_handle(conc_server_request *req)
{
    struct hub_req h = { .req = req };
    conc_event_init(&h.reading, 0);
    conc_greenlet *g[2];
    int rc = conc_greenlet_spawn(&g[0], hub_reader, &h, NULL);
    if (rc < 0)
        return rc;
    rc = conc_greenlet_spawn(&g[1], hub_pinger, &h, NULL);
    if (rc < 0) {
        conc_greenlet_kill(g[0]);
        conc_greenlet_free(g[0]);
        return rc;
    }
    rc = conc_greenlet_joinall(g, 2, GUARD);
    for (int i = 0; i < 2; i++) {
        void *res = NULL;
        if (rc == 0 && conc_greenlet_result(g[i], &res) == 0 && (intptr_t)res < 0)
            rc = (int)(intptr_t)res;
        conc_greenlet_free(g[i]);
    }
    conc_hub_free();
    return rc;
}

static const conc_server_handler hub_handler = { .handle = hub_handle };

Test(server, threading_handler_hub_parks_greenlets_not_the_thread, .timeout = 60)
{
    int fds = base_fds();
    conc_server *s = make_threading(&hub_handler, 0, 0);
    struct running r;
    start(&r, s);
    int fd = dial(s);
    char buf[8];
    read_exact(fd, buf, 4);
    cr_assert_eq(memcmp(buf, "ping", 4), 0);
    cr_assert_eq(send(fd, "pong", 4, MSG_NOSIGNAL), 4);
    read_exact(fd, buf, 4);
    cr_assert_eq(memcmp(buf, "PONG", 4), 0);
    close(fd);
    stop_and_free(&r, 1, 0);
    cr_assert_eq(count_fds(), fds);
}

/* A signal to a request thread asleep in its blocking recv does not end
 * the read: the handler gets the bytes sent after it. */
static _Atomic pid_t handler_tid;
static _Atomic int usr2_seen;

static void on_usr2(int sig)
{
    (void)sig;
    atomic_fetch_add(&usr2_seen, 1);
}

static int tid_setup(conc_server_request *req)
{
    atomic_store(&handler_tid, gettid());
    return echo_setup(req);
}

static const conc_server_handler tid_echo_handler = {
    .setup = tid_setup, .handle = echo_handle, .finish = echo_finish,
};

static pid_t wait_handler_tid(void)
{
    int64_t end = conc_now() + (int64_t)(GUARD * 1e9);
    pid_t tid;
    while ((tid = atomic_load(&handler_tid)) == 0) {
        cr_assert_lt(conc_now(), end, "no request thread");
        conc_sleep(0.001);
    }
    return tid;
}

Test(server, threading_blocked_recv_outlives_a_signal, .timeout = 60)
{
    int fds = base_fds();
    atomic_store(&handler_tid, 0);
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr2;        /* no SA_RESTART: recv says EINTR */
    cr_assert_eq(sigaction(SIGUSR2, &sa, &old), 0);
    conc_server *s = make_threading(&tid_echo_handler, 0, 0);
    struct running r;
    start(&r, s);
    int fd = dial(s);
    pid_t tid = wait_handler_tid();
    wait_thread_blocked(tid, GUARD);
    cr_assert_eq(syscall(SYS_tgkill, getpid(), tid, SIGUSR2), 0);
    int64_t end = conc_now() + (int64_t)(GUARD * 1e9);
    while (atomic_load(&usr2_seen) == 0) {
        cr_assert_lt(conc_now(), end, "the signal never came");
        conc_sleep(0.001);
    }
    wait_thread_blocked(tid, GUARD);
    exchange(fd, "sent after the signal", 6);
    close(fd);
    stop_and_free(&r, 1, 0);
    sigaction(SIGUSR2, &old, NULL);
    cr_assert_eq(count_fds(), fds);
}

/* shutdown_timeout ends a request thread asleep in a blocking send to a
 * client that reads nothing (the send says -EPIPE). */
static _Atomic int flood_rc = 1;

static int flood_handle(conc_server_request *req)
{
    atomic_store(&handler_tid, gettid());
    size_t n = 1 << 20;
    char *buf = calloc(1, n);
    if (!buf)
        return -ENOMEM;
    int rc = 0;
    while (rc == 0)
        rc = conc_socket_sendall(req->sock, buf, n, 0, NULL);
    free(buf);
    atomic_store(&flood_rc, rc);
    return 0;
}

static const conc_server_handler flood_handler = { .handle = flood_handle };

Test(server, threading_shutdown_timeout_ends_a_blocked_send, .timeout = 60)
{
    int fds = base_fds();
    atomic_store(&handler_tid, 0);
    conc_server *s = make_threading(&flood_handler, 0, 0.05);
    struct running r;
    start(&r, s);
    int fd = dial(s);
    pid_t tid = wait_handler_tid();
    wait_thread_blocked(tid, GUARD);
    stop(&r);                       /* cut off after 0.05 s */
    cr_assert_eq(atomic_load(&flood_rc), -EPIPE, "sendall: %s",
                 conc_strerror(atomic_load(&flood_rc)));
    conc_server_stats st;
    conc_server_get_stats(s, &st);
    cr_assert_eq(st.active, 0);
    close(fd);
    conc_server_free(s);
    cr_assert_eq(count_fds(), fds);
}

/* conc_socket_detach gives a non-blocking descriptor, as socket.h says,
 * also from a copy of a threading request's socket (conc_socket_dup); the
 * request's socket, whose open file is then non-blocking too, still
 * serves its client. */
static _Atomic int detached_flags = -1;

static int detach_handle(conc_server_request *req)
{
    conc_socket *copy;
    int rc = conc_socket_dup(req->sock, &copy);
    if (rc < 0)
        return rc;
    int fd = conc_socket_detach(copy);
    conc_socket_free(copy);
    if (fd < 0)
        return fd;
    atomic_store(&detached_flags, fcntl(fd, F_GETFL));
    close(fd);
    return echo_handle(req);
}

static const conc_server_handler detach_handler = {
    .setup = echo_setup, .handle = detach_handle, .finish = echo_finish,
};

Test(server, threading_detached_copy_is_non_blocking, .timeout = 60)
{
    int fds = base_fds();
    conc_server *s = make_threading(&detach_handler, 0, 0);
    struct running r;
    start(&r, s);
    int fd = dial(s);
    exchange(fd, "served after a copy was detached", 4);
    int fl = atomic_load(&detached_flags);
    cr_assert(fl >= 0 && (fl & O_NONBLOCK), "detached flags %#x", fl);
    exchange(fd, "and still served", 2);
    close(fd);
    stop_and_free(&r, 1, 0);
    cr_assert_eq(count_fds(), fds);
}

/* ------------------------------------------------ kept request threads */

static int count_tasks(void)
{
    DIR *d = opendir("/proc/self/task");
    cr_assert_not_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

/* Waits until the threads of the process number n. */
static void wait_tasks(int n)
{
    int64_t end = conc_now() + (int64_t)(GUARD * 1e9);
    int k;
    while ((k = count_tasks()) != n) {
        cr_assert_lt(conc_now(), end, "%d threads, want %d", k, n);
        conc_sleep(0.001);
    }
}

static conc_server *make_cached(int thread_cache)
{
    conc_sockaddr a;
    cr_assert_eq(conc_sockaddr_inet(&a, AF_INET, "127.0.0.1", 0), 0);
    conc_server_opts o = CONC_SERVER_OPTS_INIT;
    o.model = CONC_SERVER_THREADING;
    o.thread_cache = thread_cache;
    conc_server *s;
    int rc = conc_server_new(&s, SOCK_STREAM, &a, &tid_echo_handler, &o);
    cr_assert_eq(rc, 0, "new: %s", conc_strerror(rc));
    return s;
}

/* One connection served and closed; returns its request thread once the
 * request was counted out (the thread then parks or ends). */
static pid_t serve_one(conc_server *s, long nth)
{
    atomic_store(&handler_tid, 0);
    int fd = dial(s);
    exchange(fd, "one connection", 3);
    pid_t tid = wait_handler_tid();
    close(fd);
    conc_server_stats st;
    int64_t end = conc_now() + (int64_t)(GUARD * 1e9);
    do {
        cr_assert_lt(conc_now(), end, "the request never ended");
        conc_sleep(0.001);
        conc_server_get_stats(s, &st);
    } while (st.finished < (uint64_t)nth || st.active > 0);
    return tid;
}

/* A request thread whose request ended is parked and serves the next
 * connection (the same kernel thread runs its handler); close ends the
 * parked thread and waits for it.  With thread_cache -1 each request has
 * a new thread that ends with it. */
Test(server, threading_request_threads_are_kept_for_the_next, .timeout = 60)
{
    int fds = base_fds(), tasks = count_tasks();
    conc_server *s = make_cached(0);
    struct running r;
    start(&r, s);
    pid_t t1 = serve_one(s, 1);
    wait_thread_blocked(t1, GUARD);     /* parked */
    pid_t t2 = serve_one(s, 2);
    cr_assert_eq(t2, t1, "the second request ran on a new thread");
    wait_thread_blocked(t1, GUARD);
    cr_assert_eq(count_tasks(), tasks + 2, "the serving thread and the parked one");
    stop(&r);
    conc_server_free(s);
    cr_assert_eq(count_tasks(), tasks, "close left a parked thread");
    cr_assert_eq(count_fds(), fds);

    s = make_cached(-1);
    start(&r, s);
    t1 = serve_one(s, 1);
    wait_tasks(tasks + 1);              /* the request's thread ended */
    t2 = serve_one(s, 2);
    cr_assert_neq(t2, t1);
    stop(&r);
    conc_server_free(s);
    wait_tasks(tasks);
    cr_assert_eq(count_fds(), fds);
}

/* At most thread_cache threads are kept: of three that served clients at
 * once, one stays parked with thread_cache 1, and the next three clients
 * have it and two new threads. */
static _Atomic int held_in;
static conc_event held_go;

static int held_handle(conc_server_request *req)
{
    atomic_fetch_add(&held_in, 1);
    int rc = conc_event_wait(&held_go, GUARD);
    return rc < 0 ? rc : echo_handle(req);
}

static _Atomic pid_t held_tids[3];
static _Atomic int held_n;

static int held_setup(conc_server_request *req)
{
    int i = atomic_fetch_add(&held_n, 1);
    if (i < 3)
        atomic_store(&held_tids[i], gettid());
    return echo_setup(req);
}

static const conc_server_handler held_handler = {
    .setup = held_setup, .handle = held_handle, .finish = echo_finish,
};

static void three_at_once(conc_server *s, pid_t *tids)
{
    atomic_store(&held_in, 0);
    atomic_store(&held_n, 0);
    conc_event_clear(&held_go);
    int fd[3];
    for (int i = 0; i < 3; i++)
        fd[i] = dial(s);
    int64_t end = conc_now() + (int64_t)(GUARD * 1e9);
    while (atomic_load(&held_in) < 3) {     /* three threads at once */
        cr_assert_lt(conc_now(), end, "%d requests running", atomic_load(&held_in));
        conc_sleep(0.001);
    }
    conc_event_set(&held_go);
    for (int i = 0; i < 3; i++) {
        exchange(fd[i], "held", 2);
        close(fd[i]);
        tids[i] = atomic_load(&held_tids[i]);
    }
    conc_server_stats st;
    do {
        cr_assert_lt(conc_now(), end, "the requests never ended");
        conc_sleep(0.001);
        conc_server_get_stats(s, &st);
    } while (st.active > 0);
}

Test(server, threading_keeps_at_most_thread_cache_threads, .timeout = 60)
{
    int fds = base_fds(), tasks = count_tasks();
    conc_event_init(&held_go, 0);
    conc_sockaddr a;
    cr_assert_eq(conc_sockaddr_inet(&a, AF_INET, "127.0.0.1", 0), 0);
    conc_server_opts o = CONC_SERVER_OPTS_INIT;
    o.model = CONC_SERVER_THREADING;
    o.thread_cache = 1;
    conc_server *s;
    cr_assert_eq(conc_server_new(&s, SOCK_STREAM, &a, &held_handler, &o), 0);
    struct running r;
    start(&r, s);
    pid_t first[3], second[3];
    three_at_once(s, first);
    wait_tasks(tasks + 2);              /* the serving thread, one parked */
    three_at_once(s, second);
    int kept = 0;
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++)
            kept += second[i] == first[j];
    cr_assert_eq(kept, 1, "%d of the second requests' threads were kept ones", kept);
    wait_tasks(tasks + 2);
    stop(&r);
    conc_server_stats st;
    conc_server_get_stats(s, &st);
    cr_assert_eq(st.finished, 6);
    cr_assert_eq(st.failed, 0);
    conc_server_free(s);
    cr_assert_eq(count_tasks(), tasks);
    cr_assert_eq(count_fds(), fds);
}

/* A parked thread left unused for thread_idle seconds ends by itself, and
 * the next connection gets a new thread. */
Test(server, threading_parked_thread_ends_when_unused, .timeout = 60)
{
    int fds = base_fds(), tasks = count_tasks();
    conc_sockaddr a;
    cr_assert_eq(conc_sockaddr_inet(&a, AF_INET, "127.0.0.1", 0), 0);
    conc_server_opts o = CONC_SERVER_OPTS_INIT;
    o.model = CONC_SERVER_THREADING;
    o.thread_idle = 0.2;
    conc_server *s;
    cr_assert_eq(conc_server_new(&s, SOCK_STREAM, &a, &tid_echo_handler, &o), 0);
    struct running r;
    start(&r, s);
    pid_t t1 = serve_one(s, 1);
    int64_t end = conc_now() + (int64_t)(GUARD * 1e9);
    while (task_state(getpid(), t1) != 0) {     /* parked, then ended */
        cr_assert_lt(conc_now(), end, "the unused thread did not end");
        conc_sleep(0.01);
    }
    cr_assert_eq(count_tasks(), tasks + 1);
    pid_t t2 = serve_one(s, 2);
    cr_assert_neq(t2, t1);
    stop(&r);
    conc_server_free(s);
    cr_assert_eq(count_tasks(), tasks);
    cr_assert_eq(count_fds(), fds);
}
