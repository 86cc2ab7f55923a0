/*
 * test_server_limits.c - conc/server.h's limits: max_connections bounds
 * the connections a server serves at once across all its loops (the
 * coroutine model's hubs, one per CPU by default, and the reactor's
 * loops), and each prefork worker's; the client past the limit waits in
 * the backlog and is served, with nothing lost, once a connection ends;
 * request_queue_size is the listening socket's backlog, read back from
 * the kernel.
 *
 * Nothing waits a fixed time: the server's threads (or worker process)
 * are waited for through their state in /proc (support/task_state.h).
 */
#include <criterion/criterion.h>

#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conc.h"
#include "support/fd_count.h"
#include "support/server_test.h"
#include "support/task_state.h"

#define GUARD 20.0

/* What the handlers count, in memory a prefork worker shares with the
 * test. */
struct tally {
    _Atomic int inflight;           /* connections in a handler now */
    _Atomic int most;               /* the most at once */
    _Atomic int served;             /* connections ended */
};

static struct tally *tally;

static void count_in(void)
{
    int now = atomic_fetch_add(&tally->inflight, 1) + 1;
    int most = atomic_load(&tally->most);
    while (now > most && !atomic_compare_exchange_weak(&tally->most, &most, now)) {
    }
}

static void count_out(void)
{
    atomic_fetch_sub(&tally->inflight, 1);
    atomic_fetch_add(&tally->served, 1);
}

/* Echoes upper-cased until the client closes, counted in and out. */
static int counted_echo(conc_server_request *req)
{
    count_in();
    char buf[512];
    int rc = 0;
    for (;;) {
        ssize_t n = conc_socket_recv(req->sock, buf, sizeof buf, 0);
        if (n <= 0) {
            rc = (int)n;
            break;
        }
        upper(buf, (size_t)n);
        rc = conc_socket_sendall(req->sock, buf, (size_t)n, 0, NULL);
        if (rc < 0)
            break;
    }
    count_out();
    return rc;
}

static const conc_server_handler echo_handler = { .handle = counted_echo };

static int r_accept(conc_server_conn *c, void *user)
{
    (void)c;
    (void)user;
    count_in();
    return 0;
}

static void r_close(conc_server_conn *c, int err, void *user)
{
    (void)c;
    (void)err;
    (void)user;
    count_out();
}

static const conc_server_reactor_handler reactor_handler = {
    .on_accept = r_accept, .on_data = upper_on_data, .on_close = r_close,
};

struct running {
    conc_server *s;
    pthread_t t;
    int rc;
};

static void *serve_main(void *arg)
{
    struct running *r = arg;
    r->rc = conc_server_serve_forever(r->s, 0.5);
    return NULL;
}

static void wait_until(bool (*cond)(void *), void *arg, const char *what)
{
    int64_t end = conc_now() + (int64_t)(GUARD * 1e9);
    while (!cond(arg)) {
        cr_assert_lt(conc_now(), end, "never: %s", what);
        conc_sleep(0.001);
    }
}

/* Every thread of this process but the caller sleeps. */
static void wait_others_blocked(void)
{
    DIR *d = opendir("/proc/self/task");
    cr_assert_not_null(d);
    pid_t me = conc_thread_get_native_id();
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        pid_t tid = (pid_t)atoi(e->d_name);
        if (tid > 0 && tid != me)
            wait_thread_blocked(tid, GUARD);
    }
    closedir(d);
}

struct stats_want {
    conc_server *s;
    uint64_t workers;
};

static bool workers_reached(void *arg)
{
    struct stats_want *w = arg;
    conc_server_stats st;
    cr_assert_eq(conc_server_get_stats(w->s, &st), 0);
    return st.workers == w->workers;
}

static bool inflight_reached(void *arg)
{
    return atomic_load(&tally->inflight) == *(int *)arg;
}

enum { CLIENTS = 7 };

/*
 * max_connections = lim on a server of `model` with `workers` (0: the
 * default): CLIENTS clients connect and each sends a line at once; lim of
 * them are served (their echoes come back), the others wait in the
 * backlog, whichever loop would take them; each time a served client
 * hangs up, one more is served; in the end every client got its own line
 * back, no handler ever ran with more than lim others, and the loops (or
 * prefork's processes) number what `workers` asks, one per CPU when 0.
 */
static void limit_holds(conc_server_model model, int workers, int lim)
{
    int fds = base_fds();
    tally = mmap(NULL, sizeof *tally, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(tally, MAP_FAILED);
    memset(tally, 0, sizeof *tally);
    conc_sockaddr a;
    cr_assert_eq(conc_sockaddr_inet(&a, AF_INET, "127.0.0.1", 0), 0);
    conc_server_opts o = CONC_SERVER_OPTS_INIT;
    o.model = model;
    o.workers = workers;
    o.max_connections = lim;
    o.request_queue_size = 64;
    conc_server *s;
    int rc = model == CONC_SERVER_REACTOR ? conc_server_new_reactor(&s, &a, &reactor_handler, &o)
                                          : conc_server_new(&s, SOCK_STREAM, &a, &echo_handler, &o);
    cr_assert_eq(rc, 0, "new: %s", conc_strerror(rc));
    struct running r = { .s = s, .rc = 1 };
    cr_assert_eq(pthread_create(&r.t, NULL, serve_main, &r), 0);

    int want_workers = workers > 0 ? workers
                     : model == CONC_SERVER_REACTOR ? 1 : conc_process_cpu_count();
    struct stats_want sw = { s, (uint64_t)want_workers };
    wait_until(workers_reached, &sw, "the loops or workers started");

    conc_sockaddr sa;
    cr_assert_eq(conc_server_address(s, &sa), 0);
    int fd[CLIENTS];
    char msg[CLIENTS][32];
    for (int i = 0; i < CLIENTS; i++) {
        fd[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        cr_assert_geq(fd[i], 0);
        struct timeval tv = { .tv_sec = (time_t)GUARD };
        setsockopt(fd[i], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        cr_assert_eq(connect(fd[i], &sa.u.sa, sa.len), 0, "connect: %s", strerror(errno));
        int n = snprintf(msg[i], sizeof msg[i], "client %d waits its turn", i);
        cr_assert_eq(send(fd[i], msg[i], (size_t)n, MSG_NOSIGNAL), n);
    }
    wait_until(inflight_reached, &lim, "the limit's worth of clients in handlers");
    /* Everything serving sleeps: nothing more will be taken. */
    if (model == CONC_SERVER_PREFORK) {
        pid_t kids[8];
        int nk = children(kids, 8);
        cr_assert_eq(nk, want_workers);
        for (int i = 0; i < nk; i++)
            wait_proc_in_epoll(kids[i]);
    } else {
        wait_others_blocked();
    }
    conc_server_stats st;
    cr_assert_eq(conc_server_get_stats(s, &st), 0);
    cr_assert_eq(st.workers, (uint64_t)want_workers, "%llu loops or workers",
                 (unsigned long long)st.workers);
    cr_assert_eq(atomic_load(&tally->inflight), lim);
    cr_assert_eq(st.accepted, (uint64_t)lim, "%llu accepted, the limit is %d",
                 (unsigned long long)st.accepted, lim);

    /* Exactly lim echoes came back; each hang-up lets one more in. */
    bool done[CLIENTS] = { false };
    int left = CLIENTS, first_round = -1;
    while (left > 0) {
        struct pollfd p[CLIENTS];
        int idx[CLIENTS], np = 0;
        for (int i = 0; i < CLIENTS; i++)
            if (!done[i]) {
                p[np] = (struct pollfd){ .fd = fd[i], .events = POLLIN };
                idx[np++] = i;
            }
        int ready = poll(p, (nfds_t)np, first_round < 0 ? 0 : (int)(GUARD * 1000));
        cr_assert_gt(ready, 0, "a waiting client was never served");
        if (first_round < 0) {
            first_round = ready;
            cr_assert_eq(ready, lim, "%d clients answered, the limit is %d", ready, lim);
        }
        for (int k = 0; k < np; k++) {
            if (!(p[k].revents & POLLIN))
                continue;
            int i = idx[k];
            size_t n = strlen(msg[i]);
            char got[32], want[32];
            size_t have = 0;
            while (have < n) {
                ssize_t m = recv(fd[i], got + have, n - have, 0);
                cr_assert_gt(m, 0, "client %d: recv %zd (%s)", i, m, strerror(errno));
                have += (size_t)m;
            }
            memcpy(want, msg[i], n);
            upper(want, n);
            cr_assert_eq(memcmp(got, want, n), 0, "client %d got another's line", i);
            close(fd[i]);
            done[i] = true;
            left--;
        }
    }
    wait_until(inflight_reached, &(int){ 0 }, "every handler ended");
    cr_assert_eq(atomic_load(&tally->served), CLIENTS);
    cr_assert_eq(atomic_load(&tally->most), lim, "%d at once, the limit is %d",
                 atomic_load(&tally->most), lim);
    cr_assert_eq(conc_server_shutdown_wait(s, GUARD), 0);
    pthread_join(r.t, NULL);
    cr_assert_eq(r.rc, 0, "serve_forever: %s", conc_strerror(r.rc));
    cr_assert_eq(conc_server_get_stats(s, &st), 0);
    cr_assert_eq(st.accepted, (uint64_t)CLIENTS);
    cr_assert_eq(st.active, 0);
    cr_assert_eq(st.workers, 0);
    if (model != CONC_SERVER_REACTOR)
        cr_assert_eq(st.finished, (uint64_t)CLIENTS);
    conc_server_free(s);
    munmap(tally, sizeof *tally);
    cr_assert_eq(count_fds(), fds);
    no_children();
}

#define LIMIT_TEST(name, model, workers, lim)                                                \
    Test(server_limits, name, .timeout = 60)                                                   \
    {                                                                                          \
        limit_holds(model, workers, lim);                                                      \
    }

LIMIT_TEST(coroutine_two_hubs_share_max_connections, CONC_SERVER_COROUTINE, 2, 3)
LIMIT_TEST(coroutine_three_hubs_limit_below_the_hubs, CONC_SERVER_COROUTINE, 3, 2)
LIMIT_TEST(coroutine_default_is_a_hub_per_cpu, CONC_SERVER_COROUTINE, 0, 3)
LIMIT_TEST(reactor_two_loops_share_max_connections, CONC_SERVER_REACTOR, 2, 3)
LIMIT_TEST(reactor_default_is_one_loop, CONC_SERVER_REACTOR, 0, 2)
LIMIT_TEST(prefork_worker_keeps_max_connections, CONC_SERVER_PREFORK, 1, 3)

/* ------------------------------------------------------------ backlog */

/* The backlog of a listening TCP socket, as the kernel keeps it:
 * TCP_INFO on a listening socket gives it in tcpi_sacked (and the queue's
 * length in tcpi_unacked), as `ss -ltn` shows it in Send-Q. */
static unsigned backlog_of(int fd)
{
    struct tcp_info ti;
    socklen_t len = sizeof ti;
    memset(&ti, 0, sizeof ti);
    cr_assert_eq(getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len), 0, "TCP_INFO: %s",
                 strerror(errno));
    cr_assert_eq(ti.tcpi_state, TCP_LISTEN);
    return ti.tcpi_sacked;
}

static int somaxconn(void)
{
    FILE *f = fopen("/proc/sys/net/core/somaxconn", "r");
    int v = 4096;
    if (f) {
        if (fscanf(f, "%d", &v) != 1)
            v = 4096;
        fclose(f);
    }
    return v;
}

/* request_queue_size is listen()'s backlog in every model (0: Python's 5;
 * the kernel caps it at net.core.somaxconn), and a server on a socket
 * handed over leaves the caller's backlog alone. */
Test(server_limits, request_queue_size_is_the_backlog, .timeout = 60)
{
    int fds = count_fds();
    int cap = somaxconn();
    const int sizes[] = { 0, 1, 37, 129, 100000 };
    const conc_server_model models[] = { CONC_SERVER_SYNC, CONC_SERVER_THREADING,
                                         CONC_SERVER_FORKING, CONC_SERVER_PREFORK,
                                         CONC_SERVER_COROUTINE, CONC_SERVER_REACTOR };
    for (size_t m = 0; m < sizeof models / sizeof models[0]; m++) {
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            conc_sockaddr a;
            conc_sockaddr_inet(&a, i % 2 ? AF_INET : AF_INET6, i % 2 ? "127.0.0.1" : "::1", 0);
            conc_server_opts o = CONC_SERVER_OPTS_INIT;
            o.model = models[m];
            o.request_queue_size = sizes[i];
            conc_server *s;
            int rc = models[m] == CONC_SERVER_REACTOR
                         ? conc_server_new_reactor(&s, &a, &reactor_handler, &o)
                         : conc_server_new(&s, SOCK_STREAM, &a, &echo_handler, &o);
            if (rc == -EAFNOSUPPORT || rc == -EADDRNOTAVAIL)
                continue;           /* no IPv6 here */
            cr_assert_eq(rc, 0, "new: %s", conc_strerror(rc));
            int want = sizes[i] ? sizes[i] : CONC_SERVER_QUEUE_SIZE;
            if (want > cap)
                want = cap;
            unsigned got = backlog_of(conc_server_fd(s));
            cr_assert_eq(got, (unsigned)want, "%s, request_queue_size %d: backlog %u",
                         conc_server_model_name(models[m]), sizes[i], got);
            conc_server_free(s);
        }
    }
    /* adopted: the caller's listen() decides */
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    conc_sockaddr a;
    conc_sockaddr_inet(&a, AF_INET, "127.0.0.1", 0);
    cr_assert_eq(bind(fd, &a.u.sa, a.len), 0);
    cr_assert_eq(listen(fd, 23), 0);
    conc_server_opts o = CONC_SERVER_OPTS_INIT;
    o.request_queue_size = 99;
    conc_server *s;
    cr_assert_eq(conc_server_new_fd(&s, fd, &echo_handler, &o), 0);
    cr_assert_eq(backlog_of(conc_server_fd(s)), 23);
    conc_server_free(s);
    cr_assert_eq(count_fds(), fds);
}
