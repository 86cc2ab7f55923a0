/*
 * test_server_hooks.c - socketserver details checked against Python's own
 * behaviour: the order in which a failing request's hooks run
 * (BaseRequestHandler runs finish in a `finally`, then the server's
 * handle_error sees the exception), and allow_reuse_address (a server
 * restarted on the port of one that closed connections itself binds only
 * with it, the port still held by TIME_WAIT).
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "conc.h"

#define GUARD 20.0

/* ------------------------------------------------------ hook order */

static char order[256];

static void note(const char *what)
{
    size_t n = strlen(order);
    snprintf(order + n, sizeof order - n, "%s%s", n ? " " : "", what);
}

static int setup_ok(conc_server_request *req)
{
    (void)req;
    note("setup");
    return 0;
}

static int setup_refuses(conc_server_request *req)
{
    (void)req;
    note("setup");
    return -EACCES;
}

static int handle_fails(conc_server_request *req)
{
    (void)req;
    note("handle");
    return -EPROTO;
}

static void finish(conc_server_request *req)
{
    (void)req;
    note("finish");
}

static void handle_error(conc_server_request *req, int err)
{
    (void)req;
    char buf[32];
    snprintf(buf, sizeof buf, "error(%s)", conc_errname(err));
    note(buf);
}

static int dial(conc_server *s)
{
    conc_sockaddr a;
    cr_assert_eq(conc_server_address(s, &a), 0);
    int fd = socket(a.u.sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    struct timeval tv = { .tv_sec = (time_t)GUARD };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    cr_assert_eq(connect(fd, &a.u.sa, a.len), 0, "connect: %s", strerror(errno));
    return fd;
}

/* One request through handle_request (SYNC: the hooks run in this thread);
 * returns the order they ran in. */
static const char *one_request(const conc_server_handler *h, conc_server_stats *st)
{
    conc_sockaddr a;
    cr_assert_eq(conc_sockaddr_inet(&a, AF_INET, "127.0.0.1", 0), 0);
    conc_server *s;
    cr_assert_eq(conc_server_new(&s, SOCK_STREAM, &a, h, NULL), 0);
    int fd = dial(s);
    order[0] = '\0';
    cr_assert_eq(conc_server_handle_request(s, GUARD), 0);
    char c;
    cr_assert_eq(recv(fd, &c, 1, 0), 0, "the connection is closed after the request");
    close(fd);
    cr_assert_eq(conc_server_get_stats(s, st), 0);
    conc_server_free(s);
    return order;
}

/* Python: setup, handle (raises), finish (in handle's `finally`), then the
 * server's handle_error. */
Test(server_hooks, a_failed_handle_runs_finish_then_handle_error, .timeout = 60)
{
    conc_server_handler h = { .setup = setup_ok, .handle = handle_fails, .finish = finish,
                              .handle_error = handle_error };
    conc_server_stats st;
    cr_assert_str_eq(one_request(&h, &st), "setup handle finish error(EPROTO)");
    cr_assert_eq(st.failed, 1);
    cr_assert_eq(st.finished, 0);
}

/* Python: a setup that raises skips handle and finish; handle_error sees it. */
Test(server_hooks, a_failed_setup_runs_only_handle_error, .timeout = 60)
{
    conc_server_handler h = { .setup = setup_refuses, .handle = handle_fails,
                              .finish = finish, .handle_error = handle_error };
    conc_server_stats st;
    cr_assert_str_eq(one_request(&h, &st), "setup error(EACCES)");
    cr_assert_eq(st.failed, 1);
}

/* ------------------------------------------------ allow_reuse_address */

/* Says goodbye and returns: the server closes the connection first, so
 * its side of it (on the server's port) goes to TIME_WAIT. */
static int goodbye(conc_server_request *req)
{
    return conc_socket_sendall(req->sock, "bye", 3, 0, NULL);
}

static int new_on_port(conc_server **s, int port, bool reuse)
{
    conc_sockaddr a;
    cr_assert_eq(conc_sockaddr_inet(&a, AF_INET, "127.0.0.1", port), 0);
    conc_server_opts o = CONC_SERVER_OPTS_INIT;
    o.allow_reuse_address = reuse;
    static const conc_server_handler h = { .handle = goodbye };
    return conc_server_new(s, SOCK_STREAM, &a, &h, &o);
}

static int reuse_addr_of(conc_server *s)
{
    int v = -1;
    socklen_t len = sizeof v;
    cr_assert_eq(getsockopt(conc_server_fd(s), SOL_SOCKET, SO_REUSEADDR, &v, &len), 0);
    return v;
}

Test(server_hooks, allow_reuse_address_rebinds_a_port_in_time_wait, .timeout = 60)
{
    conc_server *s;
    cr_assert_eq(new_on_port(&s, 0, true), 0);
    cr_assert_eq(reuse_addr_of(s), 1);
    conc_sockaddr a;
    cr_assert_eq(conc_server_address(s, &a), 0);
    int port = conc_sockaddr_port(&a);
    cr_assert_gt(port, 0);
    int fd = dial(s);
    cr_assert_eq(conc_server_handle_request(s, GUARD), 0);
    char buf[4];
    cr_assert_eq(recv(fd, buf, sizeof buf, 0), 3);
    cr_assert_eq(recv(fd, buf, sizeof buf, 0), 0);     /* the server closed first */
    close(fd);
    conc_server_free(s);

    /* Python's default (allow_reuse_address False): the port is busy. */
    cr_assert_eq(new_on_port(&s, port, false), -EADDRINUSE);
    /* With it, the restarted server binds and serves. */
    cr_assert_eq(new_on_port(&s, port, true), 0);
    cr_assert_eq(reuse_addr_of(s), 1);
    fd = dial(s);
    cr_assert_eq(conc_server_handle_request(s, GUARD), 0);
    cr_assert_eq(recv(fd, buf, sizeof buf, 0), 3);
    close(fd);
    conc_server_free(s);

    /* And a server made without it does not set it. */
    cr_assert_eq(new_on_port(&s, 0, false), 0);
    cr_assert_eq(reuse_addr_of(s), 0);
    conc_server_free(s);
}
