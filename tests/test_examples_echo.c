/*
 * test_examples_echo.c - the socket examples from CONC_EXAMPLES_DIR:
 * echo-upper-server in every model, echo-upper-client over TCP and UDP,
 * udp-upper-server.  The dialogs (what comes back, byte for byte, also for
 * 1 MB messages, pipelined requests and 1000 connections at once), a
 * client that resets mid-request, stopping by SIGINT/SIGTERM (exit 0, also
 * while the server waits for a client that does not read), the descriptors
 * a server holds going back to where they started, the nonblocking model
 * asleep while idle, the client's errors (refused, closed, reset, no
 * reply), and bad command lines.
 *
 * Servers listen on port 0 and the port is read from their ready line, so
 * tests never race for a port; no test sleeps to synchronise.
 */
#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conc.h"
#include "support/task_state.h"

#define GUARD_MS 60000          /* hang guard for every wait here */
#include "support/example_server.h"

static const char *const models[] = { "sync", "select", "poll", "epoll", "nonblocking" };
static const char *const loop_models[] = { "select", "poll", "epoll", "nonblocking" };
#define NMODELS (sizeof models / sizeof models[0])
#define NLOOP (sizeof loop_models / sizeof loop_models[0])
/* The models of conc/server.h, each with the --workers and the --stack it
 * is run with. */
static const char *const lib_models[][3] = {
    { "threading", NULL, NULL }, { "forking", NULL, NULL },    { "prefork", "2", NULL },
    { "prefork", "1", NULL },    { "prefork", "1", "copied" }, { "coroutine", "1", NULL },
    { "coroutine", "3", NULL },  { "coroutine", "1", "own" },  { "coroutine", "1", "copied" },
    { "coroutine", "2", "copied" }, { "reactor", "1", NULL },  { "reactor", "2", NULL },
};
#define NLIB (sizeof lib_models / sizeof lib_models[0])

/* ------------------------------------------------------------- servers */

/* Stops it with SIGTERM and checks the clean end: exit 0, the stop line
 * with `conns` connections, nothing on stderr. */
static void stop_clean(struct srv *s, const char *prog, long conns)
{
    char *out, *err;
    int status = stop_server(s, SIGTERM, &out, &err);
    char want[128];
    snprintf(want, sizeof want, "%s: stopped by SIGTERM after %ld connection%s\n", prog, conns,
             conns == 1 ? "" : "s");
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "%s: status %#x\nstderr:\n%s", prog, status, err);
    cr_assert_str_eq(out, want);
    cr_assert_str_empty(err, "%s wrote to stderr:\n%s", prog, err);
    free(out);
    free(err);
}

static struct srv start_model(const char *model)
{
    const char *args[] = { "--model", model, "0", NULL };
    struct srv s = start_server("echo-upper-server", args);
    char want[128];
    snprintf(want, sizeof want, "echo-upper-server: listening on 127.0.0.1:%d (model %s)",
             s.port, model);
    cr_assert_str_eq(s.ready, want);
    return s;
}

/* ------------------------------------------------- the test's own sockets */

static void upper_copy(char *dst, const char *src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = src[i] >= 'a' && src[i] <= 'z' ? (char)(src[i] - 'a' + 'A') : src[i];
}

/* Sends msg and checks that its upper-cased copy comes back. */
static void dialog(int fd, const char *msg)
{
    size_t n = strlen(msg);
    char want[512], got[512];
    cr_assert_leq(n, sizeof want);
    upper_copy(want, msg, n);
    send_all(fd, msg, n);
    recv_exact(fd, got, n);
    cr_assert_arr_eq(got, want, n, "reply to '%s'", msg);
}

static void raise_nofile(void)
{
    struct rlimit rl;
    cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
    rl.rlim_cur = rl.rlim_max;
    cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
    cr_assert_geq(rl.rlim_cur, 2200, "RLIMIT_NOFILE's hard limit is too low for the test");
}

/* A port nobody listens on (TCP or UDP): bound by the kernel's choice,
 * then released. */
static int free_port(int type)
{
    int fd = socket(AF_INET, type | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in a = { .sin_family = AF_INET };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

/* --------------------------------------------------------- the dialogs */

Test(echo_upper, client_and_server_in_every_model, .timeout = 120)
{
    for (size_t m = 0; m < NMODELS; m++) {
        struct srv s = start_model(models[m]);
        char port[16];
        snprintf(port, sizeof port, "%d", s.port);
        const char *args[] = { "127.0.0.1", port, NULL };
        struct run r = run_example_input("echo-upper-client", args,
                                         "hello\nMixed Case 123 ?!\n\nlast line, no newline");
        assert_success(&r, models[m]);
        cr_assert_str_eq(r.out, "HELLO\nMIXED CASE 123 ?!\n\nLAST LINE, NO NEWLINE",
                         "model %s", models[m]);
        run_free(&r);
        stop_clean(&s, "echo-upper-server", 1);
    }
}

Test(echo_upper, host_names_and_ipv6, .timeout = 60)
{
    const char *args[] = { "--host", "localhost", "--model", "poll", "0", NULL };
    struct srv s = start_server("echo-upper-server", args);
    char port[16];
    snprintf(port, sizeof port, "%d", s.port);
    const char *cargs[] = { "localhost", port, NULL };
    struct run r = run_example_input("echo-upper-client", cargs, "by name\n");
    assert_success(&r, "client to localhost");
    cr_assert_str_eq(r.out, "BY NAME\n");
    run_free(&r);
    stop_clean(&s, "echo-upper-server", 1);

    int v6 = socket(AF_INET6, SOCK_STREAM, 0);
    struct sockaddr_in6 a6 = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
    bool have_v6 = v6 >= 0 && bind(v6, (struct sockaddr *)&a6, sizeof a6) == 0;
    if (v6 >= 0)
        close(v6);
    if (!have_v6)
        return;                 /* no IPv6 loopback here */
    const char *args6[] = { "--host", "::1", "0", NULL };
    s = start_server("echo-upper-server", args6);
    cr_assert_not_null(strstr(s.ready, "listening on [::1]:"), "%s", s.ready);
    snprintf(port, sizeof port, "%d", s.port);
    const char *cargs6[] = { "::1", port, NULL };
    r = run_example_input("echo-upper-client", cargs6, "over ipv6\n");
    assert_success(&r, "client to ::1");
    cr_assert_str_eq(r.out, "OVER IPV6\n");
    run_free(&r);
    stop_clean(&s, "echo-upper-server", 1);
}

/* 1 MB in one direction while reading the other (neither side may wait
 * for the other to finish), then 200 requests pipelined without waiting. */
static void big_and_pipelined(int fd)
{
    size_t n = 1 << 20;
    char *msg = malloc(n), *got = malloc(n), *want = malloc(n);
    cr_assert(msg && got && want);
    for (size_t i = 0; i < n; i++)
        msg[i] = (char)(i % 251);       /* every byte value, letters among them */
    upper_copy(want, msg, n);
    int fl = fcntl(fd, F_GETFL);
    cr_assert_eq(fcntl(fd, F_SETFL, fl | O_NONBLOCK), 0);
    size_t sent = 0, recvd = 0;
    while (recvd < n) {
        struct pollfd pf = { .fd = fd, .events = POLLIN | (sent < n ? POLLOUT : 0) };
        cr_assert_gt(poll(&pf, 1, GUARD_MS), 0, "stalled at %zu sent, %zu received", sent,
                     recvd);
        if (sent < n && (pf.revents & POLLOUT)) {
            ssize_t k = send(fd, msg + sent, n - sent, MSG_NOSIGNAL);
            if (k > 0)
                sent += (size_t)k;
        }
        if (pf.revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t k = recv(fd, got + recvd, n - recvd, 0);
            cr_assert(k > 0 || (k < 0 && errno == EAGAIN), "recv: %zd %s", k, strerror(errno));
            if (k > 0)
                recvd += (size_t)k;
        }
    }
    cr_assert_eq(fcntl(fd, F_SETFL, fl), 0);
    cr_assert_eq(memcmp(got, want, n), 0, "the 1 MB reply differs");

    /* 200 requests of 40 bytes back to back, then all the replies. */
    size_t m = 0;
    for (int i = 0; i < 200; i++)
        m += (size_t)snprintf(msg + m, 64, "request %03d abcdefghijklmnopqrstuvw\n", i);
    send_all(fd, msg, m);
    recv_exact(fd, got, m);
    upper_copy(want, msg, m);
    cr_assert_eq(memcmp(got, want, m), 0, "the pipelined replies differ");
    free(msg);
    free(got);
    free(want);
}

Test(echo_upper, large_and_pipelined_in_every_model, .timeout = 120)
{
    for (size_t m = 0; m < NMODELS; m++) {
        struct srv s = start_model(models[m]);
        int fd = tcp_connect(s.port);
        big_and_pipelined(fd);
        close(fd);
        stop_clean(&s, "echo-upper-server", 1);
    }
}

Test(echo_upper, loops_serve_clients_together, .timeout = 120)
{
    for (size_t m = 0; m < NLOOP; m++) {
        struct srv s = start_model(loop_models[m]);
        int fd[50];
        for (int i = 0; i < 50; i++)
            fd[i] = tcp_connect(s.port);
        for (int round = 0; round < 3; round++) {
            char msg[50][64];
            for (int i = 0; i < 50; i++) {
                snprintf(msg[i], sizeof msg[i], "client %d round %d\n", i, round);
                send_all(fd[i], msg[i], strlen(msg[i]));
            }
            for (int i = 49; i >= 0; i--) {     /* the replies in any order */
                char want[64], got[64];
                size_t n = strlen(msg[i]);
                upper_copy(want, msg[i], n);
                recv_exact(fd[i], got, n);
                cr_assert_arr_eq(got, want, n);
            }
        }
        for (int i = 0; i < 50; i++)
            close(fd[i]);
        stop_clean(&s, "echo-upper-server", 50);
    }
}

Test(echo_upper, sync_serves_one_client_at_a_time, .timeout = 60)
{
    struct srv s = start_model("sync");
    int a = tcp_connect(s.port);
    dialog(a, "first\n");
    int b = tcp_connect(s.port);            /* queued by the kernel */
    send_all(b, "second\n", 7);
    dialog(a, "first again\n");
    /* The server is still with a: nothing can have come for b. */
    struct pollfd pf = { .fd = b, .events = POLLIN };
    cr_assert_eq(poll(&pf, 1, 0), 0, "b was answered while a was connected");
    close(a);
    char got[7];
    recv_exact(b, got, 7);
    cr_assert_arr_eq(got, "SECOND\n", 7);
    dialog(b, "then more\n");
    close(b);
    stop_clean(&s, "echo-upper-server", 2);
}

/* The server process's descriptors go back to their count when every
 * client has gone (hang guard). */
static void wait_fds_back(pid_t pid, int want, const char *model)
{
    int64_t deadline = conc_now() + (int64_t)GUARD_MS * 1000000;
    int n;
    while ((n = fd_count(pid)) != want) {
        cr_assert_lt(conc_now(), deadline, "model %s: the server holds %d descriptors, want %d",
                     model, n, want);
        usleep(1000);
    }
}

Test(echo_upper, thousand_connections_on_every_loop, .timeout = 300)
{
    raise_nofile();
    enum { N = 1000 };
    int *fd = malloc(N * sizeof *fd);
    cr_assert_not_null(fd);
    for (size_t m = 0; m < NLOOP; m++) {
        struct srv s = start_model(loop_models[m]);
        int probe = tcp_connect(s.port);
        dialog(probe, "the loop runs\n");     /* its selector exists by now */
        int before = fd_count(s.pid) - 1;
        for (int i = 0; i < N; i++)
            fd[i] = tcp_connect(s.port);
        for (int i = 0; i < N; i++) {
            char msg[32];
            snprintf(msg, sizeof msg, "connection %04d\n", i);
            send_all(fd[i], msg, strlen(msg));
        }
        for (int i = 0; i < N; i++) {
            char msg[32], want[32], got[32];
            size_t n = (size_t)snprintf(msg, sizeof msg, "connection %04d\n", i);
            upper_copy(want, msg, n);
            recv_exact(fd[i], got, n);
            cr_assert_arr_eq(got, want, n, "model %s, connection %d", loop_models[m], i);
        }
        int during = fd_count(s.pid);
        cr_assert_eq(during, before + 1 + N, "model %s: %d descriptors, %d before",
                     loop_models[m], during, before);
        for (int i = 0; i < N; i++)
            close(fd[i]);
        close(probe);
        wait_fds_back(s.pid, before, loop_models[m]);
        stop_clean(&s, "echo-upper-server", N + 1);
    }
    free(fd);
}

/* A client that sends part of a big request and resets the connection
 * (SO_LINGER 0) does not disturb the server: the next client is served. */
Test(echo_upper, reset_mid_request_in_every_model, .timeout = 120)
{
    size_t n = 256 * 1024;
    char *junk = malloc(n);
    cr_assert_not_null(junk);
    memset(junk, 'x', n);
    for (size_t m = 0; m < NMODELS; m++) {
        struct srv s = start_model(models[m]);
        int a = tcp_connect(s.port);
        dialog(a, "before the reset\n");
        int before = fd_count(s.pid) - 1;
        int fl = fcntl(a, F_GETFL);
        cr_assert_eq(fcntl(a, F_SETFL, fl | O_NONBLOCK), 0);
        (void)send(a, junk, n, MSG_NOSIGNAL);           /* as much as goes */
        struct linger lg = { .l_onoff = 1, .l_linger = 0 };
        cr_assert_eq(setsockopt(a, SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
        close(a);
        int b = tcp_connect(s.port);
        dialog(b, "after the reset\n");
        close(b);
        wait_fds_back(s.pid, before, models[m]);
        stop_clean(&s, "echo-upper-server", 2);
    }
    free(junk);
}

/* Out of descriptors: the server is left room for 3 more (prlimit on the
 * running process); 8 clients connect and send at once.  The first ones
 * are served; the rest wait in the listen queue (the server neither drops
 * them nor dies) and are served as earlier ones close. */
Test(echo_upper, out_of_descriptors_waits_for_a_close, .timeout = 120)
{
    for (size_t m = 0; m < NMODELS; m++) {
        struct srv s = start_model(models[m]);
        int probe = tcp_connect(s.port);
        dialog(probe, "probe\n");
        int before = fd_count(s.pid) - 1;
        close(probe);
        wait_fds_back(s.pid, before, models[m]);
        /* The lowest descriptor numbers the server has free: room for 3. */
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/fd", (int)s.pid);
        bool used[4096] = { false };
        DIR *d = opendir(path);
        cr_assert_not_null(d);
        for (struct dirent *e; (e = readdir(d)) != NULL;) {
            int fd = atoi(e->d_name);
            if (e->d_name[0] != '.' && fd < 4096)
                used[fd] = true;
        }
        closedir(d);
        int room = 0, limit = 0;
        for (int fd = 0; fd < 4096 && room < 3; fd++)
            if (!used[fd] && ++room == 3)
                limit = fd + 1;
        struct rlimit rl = { (rlim_t)limit, (rlim_t)limit };
        cr_assert_eq(prlimit(s.pid, RLIMIT_NOFILE, &rl, NULL), 0, "prlimit: %s", strerror(errno));
        enum { N = 8 };
        int fd[N];
        for (int i = 0; i < N; i++) {
            char msg[32];
            fd[i] = tcp_connect(s.port);
            snprintf(msg, sizeof msg, "client %d\n", i);
            send_all(fd[i], msg, strlen(msg));
        }
        for (int i = 0; i < N; i++) {
            char msg[32], want[32], got[32];
            size_t n = (size_t)snprintf(msg, sizeof msg, "client %d\n", i);
            upper_copy(want, msg, n);
            recv_exact(fd[i], got, n);
            cr_assert_arr_eq(got, want, n, "model %s, client %d", models[m], i);
            close(fd[i]);
        }
        char *out, *err;
        int status = stop_server(&s, SIGTERM, &out, &err);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s: status %#x: %s",
                  models[m], status, err);
        char want[96];
        snprintf(want, sizeof want, "echo-upper-server: stopped by SIGTERM after %d connections\n",
                 N + 1);
        cr_assert_str_eq(out, want, "model %s", models[m]);
        /* The loops did run out (sync holds one client at a time). */
        if (strcmp(models[m], "sync") != 0)
            cr_assert_not_null(strstr(err, "(waiting for a connection to close)"),
                               "model %s never ran out: %s", models[m], err);
        free(out);
        free(err);
    }
}

/* ---------------------------------------------------------- stopping */

Test(echo_upper, sigint_ends_it_with_exit_0, .timeout = 60)
{
    struct srv s = start_model("epoll");
    char *out, *err;
    int status = stop_server(&s, SIGINT, &out, &err);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %#x, stderr %s", status,
              err);
    cr_assert_str_eq(out, "echo-upper-server: stopped by SIGINT after 0 connections\n");
    cr_assert_str_empty(err);
    free(out);
    free(err);
}

/* A stop signal while clients are connected (one idle, one whose replies
 * fill the socket because it never reads): exit 0 in every model, and the
 * idle client sees its connection closed. */
Test(echo_upper, stop_signal_with_clients_connected, .timeout = 120)
{
    size_t n = 8 << 20;
    char *junk = malloc(n);
    cr_assert_not_null(junk);
    memset(junk, 'q', n);
    for (size_t m = 0; m < NMODELS; m++) {
        struct srv s = start_model(models[m]);
        int idle = tcp_connect(s.port);
        long conns = 1;
        if (strcmp(models[m], "sync") != 0) {
            dialog(idle, "idle now\n");
        } else {
            dialog(idle, "served first\n");
            close(idle);                        /* sync: the stuck one alone */
            idle = -1;
        }
        /* Write until both directions are full: the server then waits to
         * send to a client that does not read. */
        int stuck = tcp_connect(s.port);
        conns++;
        int fl = fcntl(stuck, F_GETFL);
        cr_assert_eq(fcntl(stuck, F_SETFL, fl | O_NONBLOCK), 0);
        size_t sent = 0;
        for (;;) {
            ssize_t k = send(stuck, junk, n, MSG_NOSIGNAL);
            if (k > 0) {
                sent += (size_t)k;
                continue;
            }
            cr_assert(k < 0 && errno == EAGAIN, "send: %s", strerror(errno));
            /* Full for now: the server may still be reading; once it is
             * asleep with the socket still full, it is stuck for good. */
            wait_proc_blocked(s.pid, 20.0);
            struct pollfd pf = { .fd = stuck, .events = POLLOUT };
            if (poll(&pf, 1, 0) == 0)
                break;
        }
        cr_assert_gt(sent, 0);
        stop_clean(&s, "echo-upper-server", conns);
        if (idle >= 0) {
            expect_eof(idle);
            close(idle);
        }
        close(stuck);
    }
    free(junk);
}

/* The nonblocking model does not spin while idle: with clients connected
 * and nothing to do, it is found asleep, and asleep in most samples. */
Test(echo_upper, nonblocking_sleeps_while_idle, .timeout = 60)
{
    struct srv s = start_model("nonblocking");
    int fd[3];
    for (int i = 0; i < 3; i++) {
        fd[i] = tcp_connect(s.port);
        dialog(fd[i], "now idle\n");
    }
    wait_proc_blocked(s.pid, 20.0);
    int asleep = 0;
    for (int i = 0; i < 200; i++) {
        asleep += task_blocked(s.pid, s.pid);
        usleep(500);
    }
    /* A loop that never sleeps is running in every sample. */
    cr_assert_geq(asleep, 60, "asleep in only %d of 200 samples", asleep);
    dialog(fd[1], "still served\n");
    for (int i = 0; i < 3; i++)
        close(fd[i]);
    stop_clean(&s, "echo-upper-server", 3);
}

/* ------------------------------------------------------ command lines */

Test(echo_upper, bad_command_lines, .timeout = 60)
{
    const char *const bad[][6] = {
        { NULL },
        { "abc", NULL },
        { "70000", NULL },
        { "-1", NULL },
        { "1", "2", NULL },
        { "--model", "fork", "0", NULL },
        { "--model=", "0", NULL },
        { "--host", "", "0", NULL },
        { "--model", NULL },
        { "--port", "1", NULL },
        { "--model", "coroutine", "--stack", "shared", "0", NULL },
        { "--stack", "copied", "0", NULL },
        { "--model", "reactor", "--stack", "own", "0", NULL },
        { "--model", "threading", "--workers", "4", "0", NULL },
        { "--model", "forking", "--workers", "1", "0", NULL },
        { "--workers", "2", "0", NULL },
        { " 5", NULL },
        { "+5", NULL },
        { "--workers", "+2", "--model", "prefork", "0", NULL },
    };
    const char *const needle[] = {
        "missing PORT", "PORT wants a whole number from 0 to 65535, not 'abc'",
        "not '70000'", "not '-1'", "unexpected argument '2'",
        "--model wants sync, select, poll, epoll, nonblocking, threading, forking, prefork, "
        "coroutine or reactor, not 'fork'",
        "--model wants", "--host wants", "option '--model' needs a value",
        "unknown option '--port'",
        "--stack wants own or copied, not 'shared'",
        "--stack is for the coroutine and prefork models, not 'epoll'",
        "--stack is for the coroutine and prefork models, not 'reactor'",
        "--workers is for the prefork, coroutine and reactor models, not 'threading'",
        "--workers is for the prefork, coroutine and reactor models, not 'forking'",
        "--workers is for the prefork, coroutine and reactor models, not 'epoll'",
        "PORT wants a whole number from 0 to 65535, not ' 5'",
        "not '+5'",
        "--workers wants a whole number",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_refused("echo-upper-server", bad[i]);
        struct run r = run_example("echo-upper-server", bad[i]);
        cr_assert_not_null(strstr(r.err, needle[i]), "case %zu: %s", i, r.err);
        run_free(&r);
    }
}

Test(echo_upper, port_in_use_is_one_line_and_exit_1, .timeout = 60)
{
    struct srv s = start_model("epoll");
    char port[16];
    snprintf(port, sizeof port, "%d", s.port);
    const char *args[] = { port, NULL };
    struct run r = run_example("echo-upper-server", args);
    cr_assert(exited_with(&r, 1), "status %#x", r.status);
    char want[96];
    snprintf(want, sizeof want, "echo-upper-server: listen on 127.0.0.1:%d: ", s.port);
    cr_assert_eq(strncmp(r.err, want, strlen(want)), 0, "%s", r.err);
    cr_assert_not_null(strstr(r.err, "in use"), "%s", r.err);
    cr_assert_eq(strchr(r.err, '\n'), r.err + strlen(r.err) - 1, "not one line: %s", r.err);
    cr_assert_str_empty(r.out);
    run_free(&r);
    stop_clean(&s, "echo-upper-server", 0);
}

Test(echo_upper, help_lists_every_model, .timeout = 30)
{
    const char *args[] = { "--help", NULL };
    struct run r = run_example("echo-upper-server", args);
    assert_success(&r, "--help");
    for (size_t m = 0; m < NMODELS + NLIB; m++) {
        const char *name = m < NMODELS ? models[m] : lib_models[m - NMODELS][0];
        char line[64];
        snprintf(line, sizeof line, "\n      %s ", name);
        cr_assert_not_null(strstr(r.out, line), "%s missing from:\n%s", name, r.out);
    }
    cr_assert_not_null(strstr(r.out, "--workers N"), "%s", r.out);
    cr_assert_not_null(strstr(r.out, "--stack MODE"), "%s", r.out);
    run_free(&r);
}

/* ---------------------------------------------------------- the client */

/* A one-connection server in a thread of the test, misbehaving on
 * purpose: after reading a whole line it does `act`. */
enum act { CLOSE, RESET, SPLIT, SILENT };

struct fake {
    int lfd, port;
    enum act act;
    pthread_t t;
};

static void *fake_serve(void *arg)
{
    struct fake *f = arg;
    int c = accept(f->lfd, NULL, NULL);
    if (c < 0)
        return NULL;
    char line[256];
    size_t n = 0;
    while (n < sizeof line && (n == 0 || line[n - 1] != '\n')) {
        ssize_t k = recv(c, line + n, sizeof line - n, 0);
        if (k <= 0)
            break;
        n += (size_t)k;
    }
    if (f->act == RESET) {
        struct linger lg = { .l_onoff = 1, .l_linger = 0 };
        setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    } else if (f->act == SPLIT) {
        /* The reply in two sends, with a round trip between them. */
        upper_copy(line, line, n);
        send(c, line, 3, MSG_NOSIGNAL);
        send(c, line + 3, n - 3, MSG_NOSIGNAL);
        /* Then the next line, the same way. */
        n = 0;
        while (n == 0 || line[n - 1] != '\n') {
            ssize_t k = recv(c, line + n, sizeof line - n, 0);
            if (k <= 0)
                break;
            n += (size_t)k;
        }
        upper_copy(line, line, n);
        for (size_t i = 0; i < n; i++)
            send(c, line + i, 1, MSG_NOSIGNAL);
        char x;
        recv(c, &x, 1, 0);          /* until the client closes */
    } else if (f->act == SILENT) {
        char x;
        recv(c, &x, 1, 0);          /* never answers; ends when the client closes */
    }
    close(c);
    return NULL;
}

/* Starts the fake server in *f (which must outlive its thread: fake_end). */
static void fake_start(struct fake *f, enum act act)
{
    f->act = act;
    f->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(f->lfd, 0);
    struct sockaddr_in a = { .sin_family = AF_INET };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    cr_assert_eq(bind(f->lfd, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(listen(f->lfd, 4), 0);
    cr_assert_eq(getsockname(f->lfd, (struct sockaddr *)&a, &len), 0);
    f->port = ntohs(a.sin_port);
    cr_assert_eq(pthread_create(&f->t, NULL, fake_serve, f), 0);
}

static void fake_end(struct fake *f)
{
    pthread_join(f->t, NULL);
    close(f->lfd);
}

/* Runs the client against port with input; checks exit 1 and one line on
 * stderr holding `needle`; returns its stdout (free it). */
static char *client_fails(const char *const *extra, int port, const char *input,
                          const char *needle)
{
    char p[16];
    snprintf(p, sizeof p, "%d", port);
    const char *args[8];
    int n = 0;
    for (int i = 0; extra && extra[i]; i++)
        args[n++] = extra[i];
    args[n++] = "127.0.0.1";
    args[n++] = p;
    args[n] = NULL;
    struct run r = run_example_input("echo-upper-client", args, input);
    cr_assert(exited_with(&r, 1), "status %#x, stderr %s", r.status, r.err);
    size_t len = strlen(r.err);
    cr_assert(len > 0 && r.err[len - 1] == '\n' && !memchr(r.err, '\n', len - 1),
              "not one line on stderr: '%s'", r.err);
    cr_assert_not_null(strstr(r.err, needle), "want '%s' in: %s", needle, r.err);
    char *out = r.out;
    free(r.err);
    return out;
}

Test(echo_upper_client, refused, .timeout = 60)
{
    int port = free_port(SOCK_STREAM);
    char want[96];
    snprintf(want, sizeof want, "echo-upper-client: cannot connect to 127.0.0.1:%d: ", port);
    char *out = client_fails(NULL, port, "hello\n", want);
    cr_assert_str_empty(out);
    free(out);
    out = client_fails(NULL, port, "hello\n", "refused");
    free(out);
}

Test(echo_upper_client, server_closes, .timeout = 60)
{
    struct fake f;
    fake_start(&f, CLOSE);
    char *out = client_fails(NULL, f.port, "hello\nworld\n",
                             "echo-upper-client: the server closed the connection");
    cr_assert_str_empty(out);
    free(out);
    fake_end(&f);
}

Test(echo_upper_client, connection_reset, .timeout = 60)
{
    struct fake f;
    fake_start(&f, RESET);
    char *out = client_fails(NULL, f.port, "hello\n", "echo-upper-client: connection lost: ");
    cr_assert_str_empty(out);
    free(out);
    fake_end(&f);
}

Test(echo_upper_client, no_reply_within_timeout, .timeout = 60)
{
    struct fake f;
    fake_start(&f, SILENT);
    const char *extra[] = { "--timeout", "0.2", NULL };
    char *out = client_fails(extra, f.port, "anyone?\n", "echo-upper-client: no reply in time");
    free(out);
    fake_end(&f);
}

Test(echo_upper_client, replies_in_pieces_are_whole, .timeout = 60)
{
    struct fake f;
    fake_start(&f, SPLIT);
    char port[16];
    snprintf(port, sizeof port, "%d", f.port);
    const char *args[] = { "127.0.0.1", port, NULL };
    struct run r = run_example_input("echo-upper-client", args, "first line\nsecond one\n");
    assert_success(&r, "client");
    cr_assert_str_eq(r.out, "FIRST LINE\nSECOND ONE\n");
    run_free(&r);
    fake_end(&f);
}

Test(echo_upper_client, empty_input, .timeout = 60)
{
    struct srv s = start_model("epoll");
    char port[16];
    snprintf(port, sizeof port, "%d", s.port);
    const char *args[] = { "127.0.0.1", port, NULL };
    struct run r = run_example_input("echo-upper-client", args, "");
    assert_success(&r, "client with no input");
    cr_assert_str_empty(r.out);
    run_free(&r);
    stop_clean(&s, "echo-upper-server", 1);
}

Test(echo_upper_client, bad_command_lines, .timeout = 60)
{
    const char *const bad[][6] = {
        { NULL },
        { "127.0.0.1", NULL },
        { "127.0.0.1", "0", NULL },
        { "127.0.0.1", "65536", NULL },
        { "127.0.0.1", "http", NULL },
        { "", "80", NULL },
        { "h", "1", "extra", NULL },
        { "--udp=yes", "h", "1", NULL },
        { "--timeout", "0", "h", "1", NULL },
        { "--timeout", "-1", "h", "1", NULL },
    };
    const char *const needle[] = {
        "missing HOST", "missing PORT", "PORT wants a whole number from 1 to 65535, not '0'",
        "not '65536'", "not 'http'", "HOST wants", "unexpected argument 'extra'",
        "option '--udp' takes no value", "--timeout wants seconds > 0",
        "--timeout wants seconds > 0",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_refused("echo-upper-client", bad[i]);
        struct run r = run_example("echo-upper-client", bad[i]);
        cr_assert_not_null(strstr(r.err, needle[i]), "case %zu: %s", i, r.err);
        run_free(&r);
    }
}

/* ----------------------------------------------------------------- UDP */

static void stop_udp(struct srv *s, long datagrams)
{
    char *out, *err;
    int status = stop_server(s, SIGTERM, &out, &err);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %#x: %s", status, err);
    char want[96];
    snprintf(want, sizeof want, "udp-upper-server: stopped by SIGTERM after %ld datagram%s\n",
             datagrams, datagrams == 1 ? "" : "s");
    cr_assert_str_eq(out, want);
    cr_assert_str_empty(err);
    free(out);
    free(err);
}

static struct srv start_udp(void)
{
    const char *args[] = { "0", NULL };
    struct srv s = start_server("udp-upper-server", args);
    char want[96];
    snprintf(want, sizeof want, "udp-upper-server: listening on 127.0.0.1:%d (UDP)", s.port);
    cr_assert_str_eq(s.ready, want);
    return s;
}

Test(udp_upper, client_dialog, .timeout = 60)
{
    struct srv s = start_udp();
    char port[16];
    snprintf(port, sizeof port, "%d", s.port);
    const char *args[] = { "--udp", "127.0.0.1", port, NULL };
    struct run r = run_example_input("echo-upper-client", args, "one datagram\n\nthree: 3\n");
    assert_success(&r, "client --udp");
    cr_assert_str_eq(r.out, "ONE DATAGRAM\n\nTHREE: 3\n");
    run_free(&r);
    stop_udp(&s, 3);
}

/* One datagram in, one out, whole, for sizes from 0 to the largest. */
Test(udp_upper, datagram_sizes, .timeout = 60)
{
    struct srv s = start_udp();
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)s.port) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    static const size_t sizes[] = { 0, 1, 100, 1400, 9000, 65507 };
    enum { NS = sizeof sizes / sizeof sizes[0] };
    static char msg[65507], want[65507], got[65536];
    for (size_t i = 0; i < sizeof msg; i++)
        msg[i] = (char)('a' + i % 30);          /* letters and a few others */
    upper_copy(want, msg, sizeof msg);
    /* All sent first, then the replies in order (loopback keeps it). */
    for (size_t i = 0; i < NS; i++)
        cr_assert_eq(send(fd, msg, sizes[i], 0), (ssize_t)sizes[i]);
    for (size_t i = 0; i < NS; i++) {
        struct pollfd pf = { .fd = fd, .events = POLLIN };
        cr_assert_gt(poll(&pf, 1, GUARD_MS), 0, "no reply to datagram %zu", i);
        ssize_t k = recv(fd, got, sizeof got, 0);
        cr_assert_eq(k, (ssize_t)sizes[i], "reply %zu: %zd bytes", i, k);
        cr_assert_eq(memcmp(got, want, sizes[i]), 0, "reply %zu differs", i);
    }
    close(fd);
    stop_udp(&s, NS);
}

Test(udp_upper, refused_and_lost, .timeout = 60)
{
    /* Nobody on the port: the kernel's refusal (ICMP) is reported. */
    int port = free_port(SOCK_DGRAM);
    const char *udp[] = { "--udp", NULL };
    char *out = client_fails(udp, port, "hello?\n", "refused the datagram");
    free(out);

    /* Someone on the port who never answers: the timeout. */
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = { .sin_family = AF_INET };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    const char *udp_t[] = { "--udp", "--timeout", "0.2", NULL };
    char want[96];
    snprintf(want, sizeof want, "no reply from 127.0.0.1:%d within 0.2 s", ntohs(a.sin_port));
    out = client_fails(udp_t, ntohs(a.sin_port), "hello?\n", want);
    free(out);
    char got[16];
    cr_assert_eq(recv(fd, got, sizeof got, MSG_DONTWAIT), 7, "the datagram did arrive");
    close(fd);
}

Test(udp_upper, sigint_and_bad_command_lines, .timeout = 60)
{
    struct srv s = start_udp();
    char *out, *err;
    int status = stop_server(&s, SIGINT, &out, &err);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %#x", status);
    cr_assert_str_eq(out, "udp-upper-server: stopped by SIGINT after 0 datagrams\n");
    free(out);
    free(err);

    const char *const bad[][4] = {
        { NULL }, { "x", NULL }, { "65536", NULL }, { "1", "2", NULL }, { "--udp", "1", NULL },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_refused("udp-upper-server", bad[i]);
}

/* ------------------------------------------- the models of conc/server.h */

static struct srv start_lib_model(size_t m)
{
    const char *args[8] = { "--model", lib_models[m][0], NULL };
    int na = 2;
    if (lib_models[m][1]) {
        args[na++] = "--workers";
        args[na++] = lib_models[m][1];
    }
    if (lib_models[m][2]) {
        args[na++] = "--stack";
        args[na++] = lib_models[m][2];
    }
    args[na] = "0";
    struct srv s = start_server("echo-upper-server", args);
    char want[128];
    snprintf(want, sizeof want, "echo-upper-server: listening on 127.0.0.1:%d (model %s)",
             s.port, lib_models[m][0]);
    cr_assert_str_eq(s.ready, want);
    return s;
}

/* Every library model: the client program, a large and pipelined
 * exchange, 20 clients at once, a client that resets mid-request, and a
 * clean stop with the number of connections. */
Test(echo_upper, library_models_serve_clients, .timeout = 300)
{
    size_t n = 256 * 1024;
    char *junk = malloc(n);
    cr_assert_not_null(junk);
    memset(junk, 'x', n);
    for (size_t m = 0; m < NLIB; m++) {
        struct srv s = start_lib_model(m);
        char port[16];
        snprintf(port, sizeof port, "%d", s.port);
        const char *args[] = { "127.0.0.1", port, NULL };
        struct run r = run_example_input("echo-upper-client", args, "hello\nMixed Case 123 ?!\n");
        assert_success(&r, lib_models[m][0]);
        cr_assert_str_eq(r.out, "HELLO\nMIXED CASE 123 ?!\n", "model %s", lib_models[m][0]);
        run_free(&r);

        int fd = tcp_connect(s.port);
        big_and_pipelined(fd);
        close(fd);

        enum { N = 20 };
        int c[N];
        for (int i = 0; i < N; i++)
            c[i] = tcp_connect(s.port);
        for (int round = 0; round < 3; round++) {
            char msg[N][64];
            for (int i = 0; i < N; i++) {
                snprintf(msg[i], sizeof msg[i], "client %d round %d\n", i, round);
                send_all(c[i], msg[i], strlen(msg[i]));
            }
            for (int i = N - 1; i >= 0; i--) {
                char want[64], got[64];
                size_t k = strlen(msg[i]);
                upper_copy(want, msg[i], k);
                recv_exact(c[i], got, k);
                cr_assert_arr_eq(got, want, k, "model %s client %d", lib_models[m][0], i);
            }
        }
        for (int i = 0; i < N; i++)
            close(c[i]);

        int a = tcp_connect(s.port);
        dialog(a, "before the reset\n");
        int fl = fcntl(a, F_GETFL);
        cr_assert_eq(fcntl(a, F_SETFL, fl | O_NONBLOCK), 0);
        (void)send(a, junk, n, MSG_NOSIGNAL);
        struct linger lg = { .l_onoff = 1, .l_linger = 0 };
        cr_assert_eq(setsockopt(a, SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
        close(a);
        int b = tcp_connect(s.port);
        dialog(b, "after the reset\n");
        close(b);
        stop_clean(&s, "echo-upper-server", 1 + 1 + N + 2);
    }
    free(junk);
}

/* A stop signal while one client is idle and another does not read its
 * replies: every library model exits 0 and closes the idle one. */
Test(echo_upper, library_models_stop_with_clients_connected, .timeout = 300)
{
    size_t n = 8 << 20;
    char *junk = malloc(n);
    cr_assert_not_null(junk);
    memset(junk, 'q', n);
    for (size_t m = 0; m < NLIB; m++) {
        struct srv s = start_lib_model(m);
        int idle = tcp_connect(s.port);
        dialog(idle, "idle now\n");
        int stuck = tcp_connect(s.port);
        int fl = fcntl(stuck, F_GETFL);
        cr_assert_eq(fcntl(stuck, F_SETFL, fl | O_NONBLOCK), 0);
        size_t sent = 0;
        for (;;) {
            ssize_t k = send(stuck, junk, n, MSG_NOSIGNAL);
            if (k > 0) {
                sent += (size_t)k;
                continue;
            }
            cr_assert(k < 0 && errno == EAGAIN, "send: %s", strerror(errno));
            struct pollfd pf = { .fd = stuck, .events = POLLOUT };
            if (poll(&pf, 1, 200) == 0)
                break;
        }
        cr_assert_gt(sent, 0);
        stop_clean(&s, "echo-upper-server", 2);
        expect_eof(idle);
        close(idle);
        close(stuck);
    }
    free(junk);
}
