/*
 * test_listener.c - conc/listener.h: Listener and Client over Unix (path,
 * private default, abstract) and TCP sockets, with and without an authkey;
 * a wrong key refused on both sides (also a listener that cannot prove the
 * key); TCP without an authkey refused; accept timeouts; a stalled or
 * oversized handshake dropped without holding up other clients; many
 * clients at once; large messages; a client killed in the middle of a
 * message; address parsing; no descriptor or file left behind.
 *
 * Criterion runs every test in its own process.  Child processes never
 * assert: they report through their exit code, and the test checks it.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conc.h"
#include "support/fd_count.h"
#include "support/fork_sanitizers.h"

#define KEY "the shared secret"
#define KEYLEN (sizeof KEY - 1)
#define GUARD 20.0

static const conc_listener_opts keyed = {
    .size = sizeof(conc_listener_opts), .authkey = KEY, .authkey_len = KEYLEN,
};
static const conc_client_opts client_keyed = {
    .size = sizeof(conc_client_opts), .authkey = KEY, .authkey_len = KEYLEN,
};

/* ------------------------------------------------------ client thread */

struct client {
    char address[CONC_SOCKADDR_STRLEN];
    const conc_client_opts *opts;
    uint32_t id;                /* sent; id * 2 expected back */
    size_t big;                 /* > 0: send a message of big bytes, expect it back */
    int rc;                     /* connect's result */
    int rc_io;                  /* the exchange's result */
    pthread_t t;
};

static void fill(unsigned char *p, size_t n, uint32_t seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)((i * 131u + seed) >> 3);
}

static void *client_main(void *arg)
{
    struct client *cl = arg;
    conc_conn *c = NULL;
    cl->rc = conc_client_connect(&c, cl->address, cl->opts, GUARD);
    if (cl->rc)
        return NULL;
    if (cl->big) {
        unsigned char *buf = malloc(cl->big), *back = NULL;
        size_t len = 0;
        fill(buf, cl->big, cl->id);
        cl->rc_io = conc_conn_send_bytes(c, buf, cl->big, GUARD);
        if (!cl->rc_io)
            cl->rc_io = conc_conn_recv_alloc(c, (void **)&back, &len, GUARD);
        if (!cl->rc_io && (len != cl->big || memcmp(buf, back, len) != 0))
            cl->rc_io = -EPROTO;
        free(buf);
        free(back);
    } else {
        uint32_t v = cl->id, r = 0;
        cl->rc_io = conc_conn_send_bytes(c, &v, sizeof v, GUARD);
        if (!cl->rc_io) {
            ssize_t n = conc_conn_recv_bytes(c, &r, sizeof r, GUARD);
            cl->rc_io = n == sizeof r ? (r == v * 2 ? 0 : -EPROTO) : (n < 0 ? (int)n : -EPROTO);
        }
    }
    conc_conn_free(c);
    return NULL;
}

static void client_start(struct client *cl, const conc_listener *l,
                         const conc_client_opts *opts, uint32_t id)
{
    cr_assert_gt(conc_listener_address(l, cl->address, sizeof cl->address), 0);
    cl->opts = opts;
    cl->id = id;
    cl->rc = cl->rc_io = 1;
    cr_assert_eq(pthread_create(&cl->t, NULL, client_main, cl), 0);
}

/* Serve one accepted connection: the doubled id, or the big message echoed. */
static void serve(conc_conn *c, size_t big)
{
    if (big) {
        void *buf;
        size_t len;
        cr_assert_eq(conc_conn_recv_alloc(c, &buf, &len, GUARD), 0);
        cr_assert_eq(len, big);
        cr_assert_eq(conc_conn_send_bytes(c, buf, len, GUARD), 0);
        free(buf);
    } else {
        uint32_t v;
        cr_assert_eq(conc_conn_recv_bytes(c, &v, sizeof v, GUARD), (ssize_t)sizeof v);
        v *= 2;
        cr_assert_eq(conc_conn_send_bytes(c, &v, sizeof v, GUARD), 0);
    }
}

static void round_trip(const char *address, const conc_listener_opts *lo,
                       const conc_client_opts *co)
{
    int fds = count_fds();
    conc_listener *l;
    cr_assert_eq(conc_listener_new(&l, address, lo), 0);
    struct client cl = { 0 };
    client_start(&cl, l, co, 21);
    conc_conn *c;
    cr_assert_eq(conc_listener_accept(l, &c, GUARD), 0);
    /* An accepted connection is a conc_conn like any: poll and wait work. */
    cr_assert_eq(conc_conn_poll(c, GUARD), 0);
    conc_waitable w = { .kind = CONC_WAIT_CONN, .u.conn = c };
    cr_assert_eq(conc_wait(&w, 1, GUARD), 1);
    cr_assert(w.ready);
    serve(c, 0);
    pthread_join(cl.t, NULL);
    cr_assert_eq(cl.rc, 0);
    cr_assert_eq(cl.rc_io, 0);
    conc_sockaddr peer;
    cr_assert_eq(conc_listener_last_accepted(l, &peer), 0);
    cr_assert_eq(peer.u.sa.sa_family, address && strchr(address, ':') && address[0] != '@'
                                          ? AF_INET : AF_UNIX);
    conc_conn_free(c);
    conc_listener_free(l);
    cr_assert_eq(count_fds(), fds);
}

/* ------------------------------------------------------------ basics */

Test(listener, unix_default_is_private_and_removed, .timeout = 60)
{
    int fds = count_fds();
    conc_listener *l;
    cr_assert_eq(conc_listener_new(&l, NULL, NULL), 0);
    char path[CONC_SOCKADDR_STRLEN];
    int n = conc_listener_address(l, path, sizeof path);
    cr_assert_gt(n, 0);
    cr_assert_eq(path[0], '/');
    struct stat st;
    cr_assert_eq(lstat(path, &st), 0);
    cr_assert(S_ISSOCK(st.st_mode));
    cr_assert_eq(st.st_mode & 0777, 0600);
    char dir[CONC_SOCKADDR_STRLEN];
    strcpy(dir, path);
    *strrchr(dir, '/') = '\0';
    cr_assert_eq(lstat(dir, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0700);

    struct client cl = { 0 };
    client_start(&cl, l, NULL, 5);
    conc_conn *c;
    cr_assert_eq(conc_listener_accept(l, &c, GUARD), 0);
    serve(c, 0);
    pthread_join(cl.t, NULL);
    cr_assert_eq(cl.rc, 0);
    cr_assert_eq(cl.rc_io, 0);
    conc_conn_free(c);

    cr_assert_eq(conc_listener_close(l), 0);
    cr_assert_eq(conc_listener_close(l), 0);
    cr_assert_eq(conc_listener_accept(l, &c, 0), -EPIPE);
    cr_assert_eq(conc_listener_fd(l), -EPIPE);
    cr_assert_eq(lstat(path, &st), -1);
    cr_assert_eq(lstat(dir, &st), -1);
    conc_listener_free(l);
    cr_assert_eq(count_fds(), fds);
}

/* The private directory of the listener made by a process killed with
 * SIGKILL: its path, read from the child through a pipe. */
static pid_t killed_listener(char *dir, size_t cap)
{
    int p[2];
    cr_assert_eq(pipe(p), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        close(p[0]);
        conc_listener *l;
        char path[CONC_SOCKADDR_STRLEN];
        if (conc_listener_new(&l, NULL, &keyed) != 0 ||
            conc_listener_address(l, path, sizeof path) <= 0)
            _exit(1);
        ssize_t n = write(p[1], path, strlen(path) + 1);
        (void)n;
        for (;;)
            pause();
    }
    close(p[1]);
    char path[CONC_SOCKADDR_STRLEN] = "";
    size_t got = 0;
    ssize_t n;
    /* Up to the address's NUL: the child keeps its end open. */
    while ((got == 0 || path[got - 1] != '\0') && got < sizeof path &&
           (n = read(p[0], path + got, sizeof path - got)) > 0)
        got += (size_t)n;
    close(p[0]);
    cr_assert_gt(got, 1, "the child made a listener");
    cr_assert_eq(kill(pid, SIGKILL), 0);
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFSIGNALED(st));
    cr_assert_lt(strlen(path), cap);
    strcpy(dir, path);
    *strrchr(dir, '/') = '\0';
    return pid;
}

/* A process killed while it held a default-address listener leaves its
 * directory; the next default-address listener removes it (its maker is
 * gone), and keeps those of live processes. */
Test(listener, killed_owner_directory_swept_by_next_listener, .timeout = 60)
{
    char dead[CONC_SOCKADDR_STRLEN];
    pid_t gone = killed_listener(dead, sizeof dead);
    struct stat st;
    /* (Another test process making a listener now may remove it first.) */

    /* Our own live listener: its name carries our pid and start time. */
    conc_listener *mine;
    cr_assert_eq(conc_listener_new(&mine, NULL, NULL), 0);
    char minepath[CONC_SOCKADDR_STRLEN];
    cr_assert_gt(conc_listener_address(mine, minepath, sizeof minepath), 0);
    cr_assert_eq(lstat(dead, &st), -1, "the dead owner's directory was removed");
    char mydir[CONC_SOCKADDR_STRLEN];
    strcpy(mydir, minepath);
    *strrchr(mydir, '/') = '\0';
    pid_t self;
    unsigned long long start;
    char suffix[8];
    cr_assert_eq(sscanf(mydir, "/tmp/conc-listener-%d-%llu-%6s", &self, &start, suffix), 3);
    cr_assert_eq(self, getpid());

    /* Our pid with another start time: a process that had our pid before. */
    char reused[96], live[96], foreign[96], fsock[128], staging[64], ssock[96];
    snprintf(reused, sizeof reused, "/tmp/conc-listener-%d-%llu-Tst001", (int)self, start + 1);
    /* Our pid and start time: ours, kept. */
    snprintf(live, sizeof live, "/tmp/conc-listener-%d-%llu-Tst002", (int)self, start);
    /* A dead pid whose socket still listens (a pid from another pid
     * namespace sharing /tmp): kept.  Its socket is bound before the
     * directory takes that name, so no other process's sweep sees it
     * empty. */
    snprintf(foreign, sizeof foreign, "/tmp/conc-listener-%d-5-Tst003", (int)gone);
    snprintf(fsock, sizeof fsock, "%s/socket", foreign);
    snprintf(staging, sizeof staging, "/tmp/conc-test-staging-%d", (int)self);
    snprintf(ssock, sizeof ssock, "%s/socket", staging);
    cr_assert_eq(mkdir(reused, 0700), 0);
    cr_assert_eq(mkdir(live, 0700), 0);
    cr_assert_eq(mkdir(staging, 0700), 0);
    conc_listener *fl;
    cr_assert_eq(conc_listener_new(&fl, ssock, NULL), 0);
    cr_assert_eq(rename(staging, foreign), 0);

    conc_listener *l;
    cr_assert_eq(conc_listener_new(&l, NULL, NULL), 0);
    cr_assert_eq(lstat(reused, &st), -1, "the earlier holder of our pid is gone");
    cr_assert_eq(lstat(live, &st), 0);
    cr_assert_eq(lstat(fsock, &st), 0, "a socket that listens is kept");
    cr_assert_eq(lstat(minepath, &st), 0);

    conc_listener_free(fl);             /* its path moved: removed here */
    cr_assert_eq(unlink(fsock), 0);
    cr_assert_eq(rmdir(foreign), 0);
    cr_assert_eq(rmdir(live), 0);
    conc_listener_free(l);
    conc_listener_free(mine);
    cr_assert_eq(lstat(mydir, &st), -1);
}

Test(listener, unix_path_without_and_with_authkey, .timeout = 60)
{
    char path[64];
    snprintf(path, sizeof path, "/tmp/conc-test-listener-%d", (int)getpid());
    unlink(path);
    round_trip(path, NULL, NULL);
    struct stat st;
    cr_assert_eq(lstat(path, &st), -1, "the socket file is removed");
    round_trip(path, &keyed, &client_keyed);
    cr_assert_eq(lstat(path, &st), -1);
}

Test(listener, unix_path_mode_0600_and_existing_file_kept, .timeout = 60)
{
    char path[64];
    snprintf(path, sizeof path, "/tmp/conc-test-listener-m%d", (int)getpid());
    unlink(path);
    conc_listener *l, *l2;
    cr_assert_eq(conc_listener_new(&l, path, &keyed), 0);
    struct stat st;
    cr_assert_eq(lstat(path, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0600);
    cr_assert_eq(conc_listener_new(&l2, path, &keyed), -EADDRINUSE);
    conc_listener_free(l);
    cr_assert_eq(lstat(path, &st), -1);
}

/* A forked child that frees its copy of the listener leaves the socket file
 * (and the private directory) to the process that made them, and the
 * handshakes in progress to it too (the two share the epoll set). */
static void *answer_main(void *arg);
static int raw_connect(const conc_listener *l);

Test(listener, forked_child_leaves_socket_file_and_handshakes, .timeout = 60)
{
    conc_listener *l;
    cr_assert_eq(conc_listener_new(&l, NULL, &keyed), 0);
    char path[CONC_SOCKADDR_STRLEN];
    cr_assert_gt(conc_listener_address(l, path, sizeof path), 0);
    int fd = raw_connect(l);
    conc_conn *c = NULL;
    cr_assert_eq(conc_listener_accept(l, &c, 0), -EAGAIN);  /* handshake under way */
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        conc_listener_free(l);
        _exit(0);
    }
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    struct stat sb;
    cr_assert_eq(lstat(path, &sb), 0, "the child removed the parent's socket");
    conc_conn *peer;
    cr_assert_eq(conc_conn_from_fd(&peer, fd, 0), 0);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, answer_main, peer), 0);
    cr_assert_eq(conc_listener_accept(l, &c, GUARD), 0);
    void *rc;
    pthread_join(t, &rc);
    cr_assert_eq((intptr_t)rc, 0);
    conc_conn_free(c);
    conc_conn_free(peer);
    conc_listener_free(l);
    cr_assert_eq(lstat(path, &sb), -1);
}

Test(listener, abstract_address, .timeout = 60)
{
    char name[64];
    snprintf(name, sizeof name, "@conc-test-listener-%d", (int)getpid());
    conc_listener *l;
    cr_assert_eq(conc_listener_new(&l, name, &keyed), 0);
    char text[CONC_SOCKADDR_STRLEN];
    cr_assert_eq(conc_listener_address(l, text, sizeof text), (int)strlen(name));
    cr_assert_str_eq(text, name);
    conc_listener_free(l);
    round_trip(name, &keyed, &client_keyed);
}

Test(listener, tcp_with_authkey, .timeout = 60)
{
    round_trip("127.0.0.1:0", &keyed, &client_keyed);
}

Test(listener, tcp_ipv6_and_names, .timeout = 60)
{
    conc_listener *l;
    int r = conc_listener_new(&l, "[::1]:0", &keyed);
    if (r == -EADDRNOTAVAIL || r == -EAFNOSUPPORT)
        cr_skip_test("no IPv6 loopback here");
    cr_assert_eq(r, 0);
    char text[CONC_SOCKADDR_STRLEN];
    cr_assert_gt(conc_listener_address(l, text, sizeof text), 0);
    cr_assert_eq(strncmp(text, "[::1]:", 6), 0, "%s", text);
    struct client cl = { 0 };
    client_start(&cl, l, &client_keyed, 9);
    conc_conn *c;
    cr_assert_eq(conc_listener_accept(l, &c, GUARD), 0);
    serve(c, 0);
    pthread_join(cl.t, NULL);
    cr_assert_eq(cl.rc, 0);
    cr_assert_eq(cl.rc_io, 0);
    conc_conn_free(c);
    conc_listener_free(l);
}

Test(listener, tcp_without_authkey_refused_unless_insecure, .timeout = 60)
{
    int fds = count_fds();
    conc_listener *l = NULL;
    cr_assert_eq(conc_listener_new(&l, "127.0.0.1:0", NULL), -EPERM);
    cr_assert_null(l);
    cr_assert_eq(count_fds(), fds);
    conc_listener_opts o = CONC_LISTENER_OPTS_INIT;
    o.insecure = true;
    round_trip("127.0.0.1:0", &o, NULL);
}

Test(listener, bad_arguments, .timeout = 60)
{
    conc_listener *l;
    conc_conn *c;
    cr_assert_eq(conc_listener_new(NULL, NULL, NULL), -EINVAL);
    conc_listener_opts o = keyed;
    o.authkey_len = 0;
    cr_assert_eq(conc_listener_new(&l, NULL, &o), -EINVAL);
    o.authkey_len = CONC_AUTHKEY_MAX + 1;
    cr_assert_eq(conc_listener_new(&l, NULL, &o), -EINVAL);
    o = keyed;
    o.handshake_timeout = -3;
    cr_assert_eq(conc_listener_new(&l, NULL, &o), -EINVAL);
    cr_assert_eq(conc_listener_accept(NULL, &c, 0), -EINVAL);
    cr_assert_eq(conc_listener_address(NULL, NULL, 0), -EINVAL);
    cr_assert_eq(conc_listener_last_accepted(NULL, NULL), -EINVAL);
    cr_assert_eq(conc_listener_fd(NULL), -EINVAL);
    cr_assert_eq(conc_listener_close(NULL), -EINVAL);
    conc_listener_free(NULL);
    cr_assert_eq(conc_client_connect(NULL, "/x", NULL, 1), -EINVAL);
    cr_assert_eq(conc_client_connect(&c, NULL, NULL, 1), -EINVAL);
    cr_assert_eq(conc_client_connect(&c, "/x", NULL, -2), -EINVAL);
    conc_client_opts co = client_keyed;
    co.authkey_len = 0;
    cr_assert_eq(conc_client_connect(&c, "/x", &co, 1), -EINVAL);
    cr_assert_eq(conc_conn_deliver_challenge(NULL, KEY, KEYLEN, 1), -EINVAL);
    cr_assert_eq(conc_conn_answer_challenge(NULL, KEY, KEYLEN, 1), -EINVAL);

    cr_assert_eq(conc_listener_new(&l, NULL, &keyed), 0);
    cr_assert_eq(conc_listener_last_accepted(l, &(conc_sockaddr){ 0 }), -ENOTCONN);
    cr_assert_eq(conc_listener_accept(l, &c, NAN), -EINVAL);
    cr_assert_eq(conc_listener_accept(l, &c, -5), -EINVAL);
    char tiny[4];
    cr_assert_eq(conc_listener_address(l, tiny, sizeof tiny), -ENOSPC);
    conc_listener_free(l);
}

Test(listener, client_errors, .timeout = 60)
{
    int fds = count_fds();
    conc_conn *c = NULL;
    char path[64];
    snprintf(path, sizeof path, "/tmp/conc-test-nobody-%d", (int)getpid());
    cr_assert_eq(conc_client_connect(&c, path, NULL, GUARD), -ENOENT);
    /* A port nobody listens on: take one and close it. */
    conc_listener_opts o = CONC_LISTENER_OPTS_INIT;
    o.insecure = true;
    conc_listener *l;
    cr_assert_eq(conc_listener_new(&l, "127.0.0.1:0", &o), 0);
    char addr[CONC_SOCKADDR_STRLEN];
    cr_assert_gt(conc_listener_address(l, addr, sizeof addr), 0);
    conc_listener_free(l);
    cr_assert_eq(conc_client_connect(&c, addr, NULL, GUARD), -ECONNREFUSED);
    cr_assert_null(c);
    cr_assert_eq(count_fds(), fds);
}

/* ------------------------------------------------------ addresses */

Test(listener, address_parse, .timeout = 60)
{
    conc_sockaddr a;
    char text[CONC_SOCKADDR_STRLEN];
    cr_assert_eq(conc_address_parse(&a, "127.0.0.1:8080"), 0);
    cr_assert_eq(a.u.sa.sa_family, AF_INET);
    cr_assert_eq(conc_sockaddr_port(&a), 8080);
    cr_assert_eq(conc_address_parse(&a, "[::1]:443"), 0);
    cr_assert_eq(a.u.sa.sa_family, AF_INET6);
    cr_assert_eq(conc_sockaddr_port(&a), 443);
    cr_assert_eq(conc_address_parse(&a, "localhost:7"), 0);
    cr_assert(a.u.sa.sa_family == AF_INET || a.u.sa.sa_family == AF_INET6);
    cr_assert_eq(conc_sockaddr_port(&a), 7);
    cr_assert_eq(conc_address_parse(&a, ":9"), 0);
    cr_assert_eq(a.u.sa.sa_family, AF_INET);
    cr_assert_eq(conc_address_parse(&a, "/run/x.sock"), 0);
    cr_assert_eq(a.u.sa.sa_family, AF_UNIX);
    cr_assert_eq(conc_sockaddr_str(&a, text, sizeof text), 11);
    cr_assert_str_eq(text, "/run/x.sock");
    cr_assert_eq(conc_address_parse(&a, "relative.sock"), 0);
    cr_assert_eq(a.u.sa.sa_family, AF_UNIX);
    cr_assert_eq(conc_address_parse(&a, "./a:80"), 0, "a path with a '/' is a path");
    cr_assert_eq(a.u.sa.sa_family, AF_UNIX);
    cr_assert_eq(conc_address_parse(&a, "@abs"), 0);
    cr_assert_eq(a.u.sa.sa_family, AF_UNIX);
    cr_assert_eq(a.u.un.sun_path[0], '\0');
    cr_assert_eq(memcmp(a.u.un.sun_path + 1, "abs", 3), 0);
    cr_assert_eq(conc_sockaddr_str(&a, text, sizeof text), 4);
    cr_assert_str_eq(text, "@abs");

    cr_assert_eq(conc_address_parse(NULL, "a:1"), -EINVAL);
    cr_assert_eq(conc_address_parse(&a, NULL), -EINVAL);
    cr_assert_eq(conc_address_parse(&a, ""), -EINVAL);
    cr_assert_eq(conc_address_parse(&a, "h:"), -EINVAL);
    cr_assert_eq(conc_address_parse(&a, "h:99999"), -EINVAL);
    cr_assert_eq(conc_address_parse(&a, "h:123456"), -EINVAL);
    cr_assert_eq(conc_address_parse(&a, "[::1"), -EINVAL);
    cr_assert_eq(conc_address_parse(&a, "[::1]"), -EINVAL);
    cr_assert_eq(conc_address_parse(&a, "[]:5"), -EINVAL);
    cr_assert_eq(conc_address_parse(&a, "[1.2.3.4]:5"), -EINVAL);
    char longpath[200];
    memset(longpath, 'a', sizeof longpath - 1);
    longpath[0] = '/';
    longpath[sizeof longpath - 1] = '\0';
    cr_assert_eq(conc_address_parse(&a, longpath), -ENAMETOOLONG);
    longpath[0] = '@';
    cr_assert_eq(conc_address_parse(&a, longpath), -ENAMETOOLONG);
    int r = conc_address_parse(&a, "no-such-host.invalid:80");
    cr_assert(CONC_IS_EAI(r), "%d", r);
}

/* HOST:SERVICE is TCP whatever SERVICE is, a port or a service name; only
 * a '/' (or a bare name without a ':') makes a path.  A service name that
 * the services database does not know is an error, never a Unix path. */
Test(listener, address_parse_services, .timeout = 60)
{
    conc_sockaddr a;
    cr_assert_eq(conc_address_parse(&a, "127.0.0.1:http"), 0);
    cr_expect_eq(a.u.sa.sa_family, AF_INET);
    cr_expect_eq(conc_sockaddr_port(&a), 80);
    cr_assert_eq(conc_address_parse(&a, "localhost:http"), 0);
    cr_expect(a.u.sa.sa_family == AF_INET || a.u.sa.sa_family == AF_INET6);
    cr_expect_eq(conc_sockaddr_port(&a), 80);
    cr_assert_eq(conc_address_parse(&a, "[::1]:ftp"), 0);
    cr_expect_eq(a.u.sa.sa_family, AF_INET6);
    cr_expect_eq(conc_sockaddr_port(&a), 21);
    cr_assert_eq(conc_address_parse(&a, "[::1]:8080"), 0);
    cr_expect_eq(conc_sockaddr_port(&a), 8080);
    cr_assert_eq(conc_address_parse(&a, "localhost:5000"), 0);
    cr_expect(a.u.sa.sa_family == AF_INET || a.u.sa.sa_family == AF_INET6);
    cr_expect_eq(conc_sockaddr_port(&a), 5000);
    cr_assert_eq(conc_address_parse(&a, ":https"), 0);
    cr_expect_eq(a.u.sa.sa_family, AF_INET);
    cr_expect_eq(conc_sockaddr_port(&a), 443);

    /* Paths: a '/' anywhere, or no ':' at all. */
    cr_assert_eq(conc_address_parse(&a, "./sock:http"), 0);
    cr_expect_eq(a.u.sa.sa_family, AF_UNIX);
    cr_assert_eq(conc_address_parse(&a, "dir/host:5000"), 0);
    cr_expect_eq(a.u.sa.sa_family, AF_UNIX);
    cr_assert_eq(conc_address_parse(&a, "plain-name"), 0);
    cr_expect_eq(a.u.sa.sa_family, AF_UNIX);

    /* Bad services and hosts: clear errors, never a path. */
    cr_expect_eq(conc_address_parse(&a, "localhost:no-such-service-here"), CONC_EAI_SERVICE);
    cr_expect_eq(conc_address_parse(&a, "[::1]:no-such-service-here"), CONC_EAI_SERVICE);
    cr_expect_eq(conc_address_parse(&a, "host:a b"), -EINVAL);
    cr_expect_eq(conc_address_parse(&a, "host:-"), CONC_EAI_SERVICE);
    cr_expect_eq(conc_address_parse(&a, "::1:80"), -EINVAL, "IPv6 needs brackets");
    cr_expect_eq(conc_address_parse(&a, "a:b:http"), -EINVAL);
    cr_expect_eq(conc_address_parse(&a, "[::1]:"), -EINVAL);
    char longsvc[80];
    memset(longsvc, 'x', sizeof longsvc - 1);
    memcpy(longsvc, "h:", 2);
    longsvc[sizeof longsvc - 1] = '\0';
    cr_expect_eq(conc_address_parse(&a, longsvc), -EINVAL);

    /* A listener and a client take a service name too. */
    conc_listener *l;
    conc_listener_opts o = CONC_LISTENER_OPTS_INIT;
    o.insecure = true;
    cr_expect_eq(conc_listener_new(&l, "127.0.0.1:no-such-service-here", &o), CONC_EAI_SERVICE);
    conc_conn *c = NULL;
    cr_expect_eq(conc_client_connect(&c, "127.0.0.1:no-such-service-here", NULL, GUARD),
                 CONC_EAI_SERVICE);
    cr_expect_null(c);
}

/* ------------------------------------------------------ authentication */

Test(listener, wrong_authkey_refused_on_both_sides, .timeout = 60)
{
    int fds = count_fds();
    conc_listener *l;
    cr_assert_eq(conc_listener_new(&l, "127.0.0.1:0", &keyed), 0);
    conc_client_opts wrong = client_keyed;
    wrong.authkey = "not the secret";
    wrong.authkey_len = 14;
    struct client bad = { 0 };
    client_start(&bad, l, &wrong, 1);
    conc_conn *c = NULL;
    cr_assert_eq(conc_listener_accept(l, &c, GUARD), -EACCES);
    cr_assert_null(c);
    pthread_join(bad.t, NULL);
    cr_assert_eq(bad.rc, -EACCES);

    /* The listener goes on serving the right key. */
    struct client good = { 0 };
    client_start(&good, l, &client_keyed, 8);
    cr_assert_eq(conc_listener_accept(l, &c, GUARD), 0);
    serve(c, 0);
    pthread_join(good.t, NULL);
    cr_assert_eq(good.rc, 0);
    cr_assert_eq(good.rc_io, 0);
    conc_conn_free(c);
    conc_listener_free(l);
    cr_assert_eq(count_fds(), fds);
}

Test(listener, client_without_key_never_handed_out, .timeout = 60)
{
    conc_listener *l;
    cr_assert_eq(conc_listener_new(&l, NULL, &keyed), 0);
    struct client cl = { 0 };
    client_start(&cl, l, NULL, 3);     /* sends its 4 bytes as the "answer" */
    conc_conn *c = NULL;
    cr_assert_eq(conc_listener_accept(l, &c, GUARD), -EACCES);
    cr_assert_null(c);
    pthread_join(cl.t, NULL);
    cr_assert_eq(cl.rc, 0);
    cr_assert_neq(cl.rc_io, 0, "the client gets no answer to its request");
    conc_listener_free(l);
}

/* The handshake calls on a Pipe: a peer that cannot prove the key (an
 * impostor listener) is refused by the client side. */
struct hs_side {
    conc_conn *c;
    const char *key;
    bool client;                /* answer, then deliver */
    int first, second;
};

static void *hs_main(void *arg)
{
    struct hs_side *s = arg;
    size_t kl = strlen(s->key);
    if (s->client) {
        s->first = conc_conn_answer_challenge(s->c, s->key, kl, GUARD);
        s->second = s->first ? 1 : conc_conn_deliver_challenge(s->c, s->key, kl, GUARD);
    } else {
        s->first = conc_conn_deliver_challenge(s->c, s->key, kl, GUARD);
        s->second = s->first ? 1 : conc_conn_answer_challenge(s->c, s->key, kl, GUARD);
    }
    return NULL;
}

static void pipe_handshake(const char *server_key, const char *client_key,
                           struct hs_side *srv, struct hs_side *cli)
{
    conc_conn *a, *b;
    cr_assert_eq(conc_conn_pipe(&a, &b, true), 0);
    *srv = (struct hs_side){ .c = a, .key = server_key, .client = false };
    *cli = (struct hs_side){ .c = b, .key = client_key, .client = true };
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, hs_main, cli), 0);
    hs_main(srv);
    pthread_join(t, NULL);
    conc_conn_free(a);
    conc_conn_free(b);
}

Test(listener, handshake_calls_on_a_pipe, .timeout = 60)
{
    struct hs_side s, c;
    pipe_handshake(KEY, KEY, &s, &c);
    cr_assert_eq(s.first, 0);
    cr_assert_eq(s.second, 0);
    cr_assert_eq(c.first, 0);
    cr_assert_eq(c.second, 0);
    pipe_handshake(KEY, "other", &s, &c);
    cr_assert_eq(s.first, -EACCES);
    cr_assert_eq(c.first, -EACCES);
}

/* A listener that passes the client's key check without knowing the key
 * (it says WELCOME to anything) cannot answer the client's challenge. */
static void *impostor_main(void *arg)
{
    conc_conn *c = arg;
    unsigned char buf[CONC_LISTENER_HANDSHAKE_MAX];
    unsigned char ch[50];
    memcpy(ch, "#CONC-CHALLENGE-1#", 18);
    memset(ch + 18, 7, 32);
    conc_conn_send_bytes(c, ch, sizeof ch, GUARD);
    conc_conn_recv_bytes(c, buf, sizeof buf, GUARD);            /* the client's answer */
    conc_conn_send_bytes(c, "#WELCOME#", 9, GUARD);
    conc_conn_recv_bytes(c, buf, sizeof buf, GUARD);            /* its challenge */
    memset(buf, 0, 32);
    conc_conn_send_bytes(c, buf, 32, GUARD);                    /* a made-up answer */
    ssize_t n = conc_conn_recv_bytes(c, buf, sizeof buf, GUARD);
    return (void *)(intptr_t)(n == 9 && memcmp(buf, "#FAILURE#", 9) == 0);
}

Test(listener, impostor_listener_refused_by_client, .timeout = 60)
{
    conc_conn *a, *b;
    cr_assert_eq(conc_conn_pipe(&a, &b, true), 0);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, impostor_main, a), 0);
    cr_assert_eq(conc_conn_answer_challenge(b, KEY, KEYLEN, GUARD), 0);
    cr_assert_eq(conc_conn_deliver_challenge(b, KEY, KEYLEN, GUARD), -EACCES);
    void *told;
    pthread_join(t, &told);
    cr_assert_eq((intptr_t)told, 1, "the impostor was told FAILURE");
    conc_conn_free(a);
    conc_conn_free(b);
}

Test(listener, handshake_garbage_and_timeouts_on_a_pipe, .timeout = 60)
{
    conc_conn *a, *b;
    cr_assert_eq(conc_conn_pipe(&a, &b, true), 0);
    /* Nothing comes: the timeout. */
    cr_assert_eq(conc_conn_answer_challenge(b, KEY, KEYLEN, 0), -EAGAIN);
    cr_assert_eq(conc_conn_answer_challenge(b, KEY, KEYLEN, 0.05), -ETIMEDOUT);
    /* Not a challenge. */
    cr_assert_eq(conc_conn_send_bytes(a, "hello", 5, GUARD), 0);
    cr_assert_eq(conc_conn_answer_challenge(b, KEY, KEYLEN, GUARD), -ECONNABORTED);
    /* Too long for a handshake message. */
    static unsigned char big[CONC_LISTENER_HANDSHAKE_MAX + 1];
    cr_assert_eq(conc_conn_send_bytes(a, big, sizeof big, GUARD), 0);
    cr_assert_eq(conc_conn_answer_challenge(b, KEY, KEYLEN, GUARD), -ECONNABORTED);
    conc_conn_free(a);
    conc_conn_free(b);
    /* The peer gone. */
    cr_assert_eq(conc_conn_pipe(&a, &b, true), 0);
    conc_conn_free(a);
    cr_assert_eq(conc_conn_answer_challenge(b, KEY, KEYLEN, GUARD), -EPIPE);
    cr_assert_eq(conc_conn_deliver_challenge(b, KEY, KEYLEN, GUARD), -EPIPE);
    conc_conn_free(b);
}

/* The client's side of the handshake on a raw connection. */
static void *answer_main(void *arg)
{
    conc_conn *c = arg;
    int r = conc_conn_answer_challenge(c, KEY, KEYLEN, GUARD);
    if (!r)
        r = conc_conn_deliver_challenge(c, KEY, KEYLEN, GUARD);
    return (void *)(intptr_t)r;
}

/* ------------------------------------------------------ accept's time */

Test(listener, accept_timeout, .timeout = 60)
{
    for (int keyed_too = 0; keyed_too < 2; keyed_too++) {
        conc_listener *l;
        cr_assert_eq(conc_listener_new(&l, NULL, keyed_too ? &keyed : NULL), 0);
        conc_conn *c = NULL;
        cr_assert_eq(conc_listener_accept(l, &c, 0), -EAGAIN);
        int64_t t0 = conc_now();
        cr_assert_eq(conc_listener_accept(l, &c, 0.05), -ETIMEDOUT);
        cr_assert_geq(conc_now() - t0, 50000000);
        cr_assert_eq(conc_listener_accept_until(l, &c, conc_now() - 1), -ETIMEDOUT);
        cr_assert_null(c);
        conc_listener_free(l);
    }
}

/* A client whose listener never runs the handshake (nobody accepts): the
 * timeout rule of conc/time.h, and nothing left open. */
Test(listener, client_timeouts, .timeout = 60)
{
    int fds = count_fds();
    conc_listener *l;
    cr_assert_eq(conc_listener_new(&l, NULL, &keyed), 0);
    char addr[CONC_SOCKADDR_STRLEN];
    cr_assert_gt(conc_listener_address(l, addr, sizeof addr), 0);
    conc_conn *c = NULL;
    cr_assert_eq(conc_client_connect(&c, addr, &client_keyed, 0), -EAGAIN);
    int64_t t0 = conc_now();
    cr_assert_eq(conc_client_connect(&c, addr, &client_keyed, 0.05), -ETIMEDOUT);
    cr_assert_geq(conc_now() - t0, 50000000);
    cr_assert_eq(conc_client_connect_until(&c, addr, &client_keyed, conc_now() - 1), -ETIMEDOUT);
    cr_assert_eq(conc_client_connect(&c, addr, &client_keyed, NAN), -EINVAL);
    cr_assert_null(c);
    conc_conn *a, *b;
    cr_assert_eq(conc_conn_pipe(&a, &b, true), 0);
    cr_assert_eq(conc_conn_deliver_challenge_until(a, KEY, KEYLEN, conc_now() - 1), -ETIMEDOUT);
    cr_assert_eq(conc_conn_answer_challenge_until(b, KEY, KEYLEN, 0), -ETIMEDOUT);
    cr_assert_eq(conc_conn_answer_challenge(b, KEY, KEYLEN, NAN), -EINVAL);
    conc_conn_free(a);
    conc_conn_free(b);
    /* The listener drops what those clients left behind. */
    while (conc_listener_accept(l, &c, 0) == -ECONNABORTED)
        ;
    conc_listener_free(l);
    cr_assert_eq(count_fds(), fds);
}

/* A raw connection to the listener's address (no handshake of its own). */
static int raw_connect(const conc_listener *l)
{
    char text[CONC_SOCKADDR_STRLEN];
    cr_assert_gt(conc_listener_address(l, text, sizeof text), 0);
    conc_sockaddr a;
    cr_assert_eq(conc_address_parse(&a, text), 0);
    int fd = socket(a.u.sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    cr_assert_eq(connect(fd, &a.u.sa, a.len), 0);
    return fd;
}

Test(listener, stalled_handshake_dropped_others_served, .timeout = 60)
{
    int fds = count_fds();
    conc_listener_opts o = keyed;
    o.handshake_timeout = 2.0;
    conc_listener *l;
    cr_assert_eq(conc_listener_new(&l, "127.0.0.1:0", &o), 0);
    int stalled = raw_connect(l);      /* connects, then never answers */
    struct client cl = { 0 };
    client_start(&cl, l, &client_keyed, 77);
    conc_conn *c;
    cr_assert_eq(conc_listener_accept(l, &c, GUARD), 0, "the good client is not held up");
    serve(c, 0);
    pthread_join(cl.t, NULL);
    cr_assert_eq(cl.rc, 0);
    cr_assert_eq(cl.rc_io, 0);
    conc_conn_free(c);
    int64_t t0 = conc_now();
    cr_assert_eq(conc_listener_accept(l, &c, GUARD), -ECONNABORTED);
    cr_assert_lt(conc_now() - t0, (int64_t)(GUARD * 1e9));
    /* The stalled peer sees its connection closed (after the challenge). */
    unsigned char buf[256];
    ssize_t n;
    while ((n = read(stalled, buf, sizeof buf)) > 0)
        ;
    cr_assert_eq(n, 0);
    close(stalled);
    cr_assert_eq(conc_listener_accept(l, &c, 0), -EAGAIN);
    conc_listener_free(l);
    cr_assert_eq(count_fds(), fds);
}

/* With every handshake slot taken by a stalled peer, the next client waits
 * in the kernel's queue and is taken once the slot frees. */
Test(listener, full_handshake_table_takes_the_next_when_a_slot_frees, .timeout = 60)
{
    conc_listener_opts o = keyed;
    o.handshake_timeout = 0.5;
    o.max_pending = 1;
    conc_listener *l;
    cr_assert_eq(conc_listener_new(&l, NULL, &o), 0);
    int stalled = raw_connect(l);
    conc_conn *c = NULL;
    /* The stalled peer takes the only slot (its challenge goes out). */
    cr_assert_eq(conc_listener_accept(l, &c, 0), -EAGAIN);
    struct client cl = { 0 };
    client_start(&cl, l, &client_keyed, 12);
    cr_assert_eq(conc_listener_accept(l, &c, GUARD), -ECONNABORTED);
    cr_assert_eq(conc_listener_accept(l, &c, GUARD), 0);
    serve(c, 0);
    pthread_join(cl.t, NULL);
    cr_assert_eq(cl.rc, 0);
    cr_assert_eq(cl.rc_io, 0);
    conc_conn_free(c);
    close(stalled);
    conc_listener_free(l);
}

Test(listener, oversized_handshake_message_dropped, .timeout = 60)
{
    conc_listener *l;
    cr_assert_eq(conc_listener_new(&l, NULL, &keyed), 0);
    int fd = raw_connect(l);
    unsigned char hdr[8] = { 0 };
    hdr[3] = 1;                         /* 16 MiB announced */
    cr_assert_eq(write(fd, hdr, sizeof hdr), 8);
    conc_conn *c = NULL;
    cr_assert_eq(conc_listener_accept(l, &c, GUARD), -ECONNABORTED);
    cr_assert_null(c);
    close(fd);
    conc_listener_free(l);
}

Test(listener, peer_gone_mid_handshake, .timeout = 60)
{
    conc_listener *l;
    cr_assert_eq(conc_listener_new(&l, NULL, &keyed), 0);
    int fd = raw_connect(l);
    close(fd);
    conc_conn *c = NULL;
    cr_assert_eq(conc_listener_accept(l, &c, GUARD), -ECONNABORTED);
    conc_listener_free(l);
}

/* ------------------------------------------------------ load */

#define NCLIENTS 24

static void many(const char *address)
{
    int fds = count_fds();
    conc_listener *l;
    cr_assert_eq(conc_listener_new(&l, address, &keyed), 0);
    static struct client cl[NCLIENTS];
    for (uint32_t i = 0; i < NCLIENTS; i++) {
        cl[i] = (struct client){ 0 };
        client_start(&cl[i], l, &client_keyed, 1000 + i);
    }
    conc_conn *c[NCLIENTS];
    for (int i = 0; i < NCLIENTS; i++)
        cr_assert_eq(conc_listener_accept(l, &c[i], GUARD), 0);
    /* Each connection carries exactly one client's request. */
    bool seen[NCLIENTS] = { false };
    for (int i = 0; i < NCLIENTS; i++) {
        uint32_t v;
        cr_assert_eq(conc_conn_recv_bytes(c[i], &v, sizeof v, GUARD), (ssize_t)sizeof v);
        cr_assert(v >= 1000 && v < 1000 + NCLIENTS);
        cr_assert(!seen[v - 1000], "request %u twice", v);
        seen[v - 1000] = true;
        v *= 2;
        cr_assert_eq(conc_conn_send_bytes(c[i], &v, sizeof v, GUARD), 0);
    }
    for (int i = 0; i < NCLIENTS; i++) {
        pthread_join(cl[i].t, NULL);
        cr_assert_eq(cl[i].rc, 0, "client %d: %d", i, cl[i].rc);
        cr_assert_eq(cl[i].rc_io, 0, "client %d: %d", i, cl[i].rc_io);
        conc_conn_free(c[i]);
    }
    conc_listener_free(l);
    cr_assert_eq(count_fds(), fds);
}

Test(listener, many_clients_unix, .timeout = 120)
{
    many(NULL);
}

Test(listener, many_clients_tcp, .timeout = 120)
{
    many("127.0.0.1:0");
}

/* Four threads accept on one listener at once: every client is taken by
 * exactly one of them. */
struct acceptor_thread {
    conc_listener *l;
    int served;
    int error;
    pthread_t t;
};

static int accepted_total;

static void *acceptor_thread_main(void *arg)
{
    struct acceptor_thread *a = arg;
    for (;;) {
        if (__atomic_load_n(&accepted_total, __ATOMIC_ACQUIRE) >= NCLIENTS)
            return NULL;
        conc_conn *c;
        int r = conc_listener_accept(a->l, &c, 0.05);
        if (r == -ETIMEDOUT)
            continue;
        if (r) {
            a->error = r;
            return NULL;
        }
        __atomic_add_fetch(&accepted_total, 1, __ATOMIC_ACQ_REL);
        uint32_t v;
        if (conc_conn_recv_bytes(c, &v, sizeof v, GUARD) != (ssize_t)sizeof v) {
            a->error = -EPROTO;
        } else {
            v *= 2;
            if (conc_conn_send_bytes(c, &v, sizeof v, GUARD) != 0)
                a->error = -EPROTO;
        }
        a->served++;
        conc_conn_free(c);
    }
}

Test(listener, several_threads_accept, .timeout = 120)
{
    int fds = count_fds();
    conc_listener *l;
    cr_assert_eq(conc_listener_new(&l, "127.0.0.1:0", &keyed), 0);
    struct acceptor_thread acc[4] = { { 0 } };
    for (int i = 0; i < 4; i++) {
        acc[i].l = l;
        cr_assert_eq(pthread_create(&acc[i].t, NULL, acceptor_thread_main, &acc[i]), 0);
    }
    static struct client cl[NCLIENTS];
    for (uint32_t i = 0; i < NCLIENTS; i++) {
        cl[i] = (struct client){ 0 };
        client_start(&cl[i], l, &client_keyed, 500 + i);
    }
    for (int i = 0; i < NCLIENTS; i++) {
        pthread_join(cl[i].t, NULL);
        cr_assert_eq(cl[i].rc, 0, "client %d: %d", i, cl[i].rc);
        cr_assert_eq(cl[i].rc_io, 0, "client %d: %d", i, cl[i].rc_io);
    }
    int served = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(acc[i].t, NULL);
        cr_assert_eq(acc[i].error, 0, "acceptor %d: %d", i, acc[i].error);
        served += acc[i].served;
    }
    cr_assert_eq(served, NCLIENTS);
    conc_listener_free(l);
    cr_assert_eq(count_fds(), fds);
}

Test(listener, large_messages, .timeout = 120)
{
    const char *addrs[] = { NULL, "127.0.0.1:0" };
    for (int k = 0; k < 2; k++) {
        conc_listener *l;
        cr_assert_eq(conc_listener_new(&l, addrs[k], &keyed), 0);
        struct client cl = { 0 };
        cl.big = (size_t)8 << 20;
        client_start(&cl, l, &client_keyed, 31);
        conc_conn *c;
        cr_assert_eq(conc_listener_accept(l, &c, GUARD), 0);
        serve(c, cl.big);
        pthread_join(cl.t, NULL);
        cr_assert_eq(cl.rc, 0);
        cr_assert_eq(cl.rc_io, 0);
        conc_conn_free(c);
        conc_listener_free(l);
    }
}

Test(listener, max_message_limits_accepted_connections, .timeout = 60)
{
    conc_listener_opts o = keyed;
    o.max_message = 64;
    conc_listener *l;
    cr_assert_eq(conc_listener_new(&l, NULL, &o), 0);
    struct client cl = { 0 };
    cl.big = 65;
    client_start(&cl, l, &client_keyed, 2);
    conc_conn *c;
    cr_assert_eq(conc_listener_accept(l, &c, GUARD), 0);
    unsigned char buf[128];
    cr_assert_eq(conc_conn_recv_bytes(c, buf, sizeof buf, GUARD), -EMSGSIZE);
    conc_conn_free(c);
    pthread_join(cl.t, NULL);
    cr_assert_eq(cl.rc, 0);
    cr_assert_neq(cl.rc_io, 0);
    conc_listener_free(l);
}

/* A client process killed in the middle of a message: the listener's side
 * gets -EPIPE, never a part of it, and accepts the next client. */
Test(listener, client_killed_mid_message, .timeout = 60)
{
    int fds = count_fds();
    conc_listener *l;
    cr_assert_eq(conc_listener_new(&l, "127.0.0.1:0", &keyed), 0);
    char addr[CONC_SOCKADDR_STRLEN];
    cr_assert_gt(conc_listener_address(l, addr, sizeof addr), 0);
    int go[2];
    cr_assert_eq(pipe(go), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        close(go[0]);
        conc_conn *c;
        if (conc_client_connect(&c, addr, &client_keyed, GUARD) != 0)
            _exit(2);
        /* The header of a 1 MiB message and 1000 bytes of it. */
        unsigned char part[1008] = { 0 };
        part[2] = 0x10;
        if (write(conc_conn_fd(c), part, sizeof part) != (ssize_t)sizeof part)
            _exit(3);
        if (write(go[1], "x", 1) != 1)
            _exit(4);
        raise(SIGKILL);
        _exit(5);
    }
    close(go[1]);
    conc_conn *c;
    cr_assert_eq(conc_listener_accept(l, &c, GUARD), 0);
    char x;
    cr_assert_eq(read(go[0], &x, 1), 1);
    close(go[0]);
    unsigned char *buf = malloc(1 << 20);
    cr_assert_eq(conc_conn_recv_bytes(c, buf, 1 << 20, GUARD), -EPIPE);
    free(buf);
    conc_conn_free(c);
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "child status %#x", st);
    conc_listener_free(l);
    cr_assert_eq(count_fds(), fds);
}

/* ------------------------------------------------------ coroutines */

struct coro_acc {
    conc_listener *l;
    int rc;
    bool other_ran;
};

static void *acceptor(void *arg)
{
    struct coro_acc *a = arg;
    conc_conn *c;
    a->rc = conc_listener_accept(a->l, &c, GUARD);
    if (a->rc == 0) {
        serve(c, 0);
        conc_conn_free(c);
    }
    return NULL;
}

static void *connector(void *arg)
{
    struct coro_acc *a = arg;
    a->other_ran = true;            /* the acceptor parked, not the thread */
    char addr[CONC_SOCKADDR_STRLEN];
    conc_listener_address(a->l, addr, sizeof addr);
    conc_conn *c;
    if (conc_client_connect(&c, addr, &client_keyed, GUARD) != 0)
        return NULL;
    uint32_t v = 4, r = 0;
    conc_conn_send_bytes(c, &v, sizeof v, GUARD);
    conc_conn_recv_bytes(c, &r, sizeof r, GUARD);
    a->other_ran = r == 8;
    conc_conn_free(c);
    return NULL;
}

Test(listener, greenlets_park_in_accept_and_connect, .timeout = 60)
{
    struct coro_acc a = { 0 };
    cr_assert_eq(conc_listener_new(&a.l, NULL, &keyed), 0);
    conc_greenlet *g1, *g2;
    cr_assert_eq(conc_greenlet_spawn(&g1, acceptor, &a, NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&g2, connector, &a, NULL), 0);
    conc_greenlet *gs[2] = { g1, g2 };
    cr_assert_eq(conc_greenlet_joinall(gs, 2, GUARD), 0);
    cr_assert_eq(a.rc, 0);
    cr_assert(a.other_ran);
    conc_greenlet_free(g1);
    conc_greenlet_free(g2);
    conc_listener_free(a.l);
}
