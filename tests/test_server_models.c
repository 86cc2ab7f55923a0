/*
 * test_server_models.c - each server model against the same client
 * behaviours, over TCP and Unix sockets:
 *   slow_reader  a client asks for a reply far bigger than the socket
 *                buffers (BIG bytes) and reads it in small pieces with
 *                pauses: the server's writes are partial and wait for it;
 *                every byte arrives, in order, and the connection still
 *                answers after it.  Meanwhile a second client is served at
 *                once (SYNC: once the slow one has gone, which is the
 *                model)
 *   pieces       requests (lines) arrive in pieces of 1 to 40 bytes with
 *                pauses between them, pieces straddling the ends of lines,
 *                from several clients at once (SYNC: one after another):
 *                the handler assembles each line and answers it
 *   reset_mid_reply  the slow reader resets its connection in the middle
 *                of a BIG reply: its request ends with the send's error,
 *                the next client is served
 *   shutdown_while_busy  a shutdown asked while the server is in the
 *                middle of a BIG reply to a slow reader: the reply and a
 *                request after it still complete, then serve_forever
 *                returns
 *   unix_datagram  a Unix datagram server of each model answers two named
 *                clients, each its own datagrams
 * The models: sync, threading, forking, prefork (one worker), coroutine
 * (one hub; greenlets on stacks of their own, and on a copied stack) and
 * reactor (one loop): with one loop the second client shares it with the
 * first.  The handler is line-based: "BIG n\n" is answered with n bytes of a
 * pattern of their offset (support/pieces.h), any other line with itself
 * upper-cased; the reactor's handler does the same with callbacks, its
 * BIG replies produced as the output drains (on_drain).  The handlers
 * count what they answered in memory shared with forked servers.  Each
 * test checks the server's counters, that the descriptor count is back to
 * its start and that no child process is left.
 *
 * Pauses only split the bytes a client sends or slow its reading; nothing
 * asserts a time (the guards only stop a hang).
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conc.h"
#include "support/fd_count.h"
#include "support/pieces.h"
#include "support/server_clients.h"
#include "support/server_test.h"
#include "support/task_state.h"

#define GUARD SERVER_TEST_GUARD

enum {
    BIG = 8 << 20,                  /* a BIG reply: far more than the
                                       server's send buffer (SNDBUF) and the
                                       slow client's receive buffer */
    SNDBUF = 64 << 10,              /* the server's connections' send
                                       buffer, asked for in setup */
    HEAD = 64 << 10,                /* what the slow reader reads before the
                                       other client comes */
    CHUNK = 16 << 10,               /* the handlers' BIG writes */
    MARK = 256 << 10,               /* the reactor's write_buffer_max */
    LINE_CAP = 4096,                /* the longest request line */
};

/* ------------------------------------------------------------ handlers */

/* What the handlers answered, in memory a forked server shares. */
struct tally {
    _Atomic uint64_t lines;         /* request lines answered */
    _Atomic uint64_t big;           /* BIG bytes handed to the socket */
    _Atomic uint64_t datagrams;     /* datagrams answered */
    _Atomic uint64_t errors;        /* requests that ended with an error
                                       (handle_error; the reactor's on_close) */
    _Atomic int last_error;         /* the last one's code */
};

static struct tally *tally;

static void tally_new(void)
{
    tally = mmap(NULL, sizeof *tally, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(tally, MAP_FAILED);
    memset(tally, 0, sizeof *tally);
}

static void tally_free(void)
{
    munmap(tally, sizeof *tally);
    tally = NULL;
}

/* "BIG n\n": true with n in *size. */
static bool big_request(const char *line, size_t n, size_t *size)
{
    if (n < 5 || memcmp(line, "BIG ", 4) != 0)
        return false;
    size_t v = 0;
    for (size_t i = 4; i < n - 1; i++) {
        if (line[i] < '0' || line[i] > '9')
            return false;
        v = v * 10 + (size_t)(line[i] - '0');
    }
    *size = v;
    return true;
}

static void big_fill(unsigned char *out, size_t off, size_t k)
{
    for (size_t i = 0; i < k; i++)
        out[i] = pieces_pat(off + i);
}

/* A connection's bytes not yet answered, and the handlers' output area
 * (on the heap: a coroutine handler's stack stays small). */
struct lconn {
    char in[LINE_CAP];
    size_t len;
    unsigned char out[CHUNK > LINE_CAP ? CHUNK : LINE_CAP];
    size_t big_left, big_off;       /* the reactor's BIG reply in progress */
};

/* Answers the line of n bytes at the start of b->in (blocking models). */
static int answer_line(conc_socket *sock, struct lconn *b, size_t n)
{
    atomic_fetch_add(&tally->lines, 1);
    size_t size;
    if (big_request(b->in, n, &size)) {
        for (size_t off = 0; off < size; off += CHUNK) {
            size_t k = size - off < CHUNK ? size - off : CHUNK;
            big_fill(b->out, off, k);
            int rc = conc_socket_sendall(sock, b->out, k, 0, NULL);
            if (rc < 0)
                return rc;
            atomic_fetch_add(&tally->big, k);
        }
        return 0;
    }
    memcpy(b->out, b->in, n);
    upper((char *)b->out, n);
    return conc_socket_sendall(sock, b->out, n, 0, NULL);
}

/* A datagram: sent back upper-cased to its sender. */
static int answer_datagram(conc_server_request *req)
{
    char *buf = malloc(req->len ? req->len : 1);
    if (!buf)
        return -ENOMEM;
    memcpy(buf, req->data, req->len);
    upper(buf, req->len);
    ssize_t m = conc_socket_sendto(req->sock, buf, req->len, 0, &req->peer);
    free(buf);
    if (m < 0)
        return (int)m;
    if ((size_t)m != req->len)
        return -EMSGSIZE;
    atomic_fetch_add(&tally->datagrams, 1);
    return 0;
}

/* Reads lines until the client closes, answering each once it is whole. */
static int line_handle(conc_server_request *req)
{
    if (req->data)
        return answer_datagram(req);
    struct lconn *b = malloc(sizeof *b);
    if (!b)
        return -ENOMEM;
    b->len = 0;
    int rc = 0;
    for (;;) {
        char *nl;
        while ((nl = memchr(b->in, '\n', b->len)) != NULL) {
            size_t n = (size_t)(nl - b->in) + 1;
            rc = answer_line(req->sock, b, n);
            if (rc < 0)
                goto out;
            memmove(b->in, b->in + n, b->len - n);
            b->len -= n;
        }
        if (b->len == sizeof b->in) {
            rc = -EMSGSIZE;
            break;
        }
        ssize_t m = conc_socket_recv(req->sock, b->in + b->len, sizeof b->in - b->len, 0);
        if (m <= 0) {
            rc = m < 0 ? (int)m : b->len ? -EPROTO : 0;    /* half a line at the end */
            break;
        }
        b->len += (size_t)m;
    }
out:
    free(b);
    return rc;
}

/* A small send buffer on each connection (the kernel doubles it): most of
 * a BIG reply waits in the handler whatever the system's defaults. */
static void small_sndbuf(int fd)
{
    int v = SNDBUF;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof v);
}

static int line_setup(conc_server_request *req)
{
    if (!req->data)
        small_sndbuf(conc_socket_fd(req->sock));
    return 0;
}

static void line_error(conc_server_request *req, int err)
{
    (void)req;
    atomic_store(&tally->last_error, err);
    atomic_fetch_add(&tally->errors, 1);
}

static const conc_server_handler line_handler = {
    .setup = line_setup, .handle = line_handle, .handle_error = line_error,
};

/* The reactor: writes what it can answer, a BIG reply while no more than
 * MARK bytes wait (on_drain goes on with it). */
static int r_pump(conc_server_conn *c, struct lconn *b)
{
    for (;;) {
        while (b->big_left) {
            if (conc_server_conn_pending(c) > MARK)
                return 0;
            size_t k = b->big_left < CHUNK ? b->big_left : CHUNK;
            big_fill(b->out, b->big_off, k);
            int rc = conc_server_conn_write(c, b->out, k);
            if (rc < 0)
                return rc;
            atomic_fetch_add(&tally->big, k);
            b->big_off += k;
            b->big_left -= k;
        }
        char *nl = memchr(b->in, '\n', b->len);
        if (!nl)
            return 0;
        size_t n = (size_t)(nl - b->in) + 1, size;
        atomic_fetch_add(&tally->lines, 1);
        if (big_request(b->in, n, &size)) {
            b->big_left = size;
            b->big_off = 0;
        } else {
            memcpy(b->out, b->in, n);
            upper((char *)b->out, n);
            int rc = conc_server_conn_write(c, b->out, n);
            if (rc < 0)
                return rc;
        }
        memmove(b->in, b->in + n, b->len - n);
        b->len -= n;
    }
}

static int r_accept(conc_server_conn *c, void *user)
{
    (void)user;
    struct lconn *b = calloc(1, sizeof *b);
    if (!b)
        return -ENOMEM;
    small_sndbuf(conc_server_conn_fd(c));
    conc_server_conn_set_data(c, b);
    return 0;
}

static int r_data(conc_server_conn *c, const void *data, size_t len, void *user)
{
    (void)user;
    struct lconn *b = conc_server_conn_data(c);
    if (len > sizeof b->in - b->len)
        return -EMSGSIZE;
    memcpy(b->in + b->len, data, len);
    b->len += len;
    return r_pump(c, b);
}

static void r_drain(conc_server_conn *c, void *user)
{
    (void)user;
    if (r_pump(c, conc_server_conn_data(c)) < 0)
        conc_server_conn_close(c);
}

static void r_close(conc_server_conn *c, int err, void *user)
{
    (void)user;
    if (err < 0) {
        atomic_store(&tally->last_error, err);
        atomic_fetch_add(&tally->errors, 1);
    }
    free(conc_server_conn_data(c));
}

static const conc_server_reactor_handler line_reactor = {
    .on_accept = r_accept, .on_data = r_data, .on_drain = r_drain, .on_close = r_close,
};

/* -------------------------------------------------------------- models */

struct model_case {
    const char *name;
    conc_server_model model;
    int workers;                    /* one loop or worker: the second
                                       client shares it with the first */
    int stack;
};

enum { M_SYNC, M_THREADING, M_FORKING, M_PREFORK, M_COROUTINE, M_COPIED, M_REACTOR };

static const struct model_case cases[] = {
    [M_SYNC] = { "sync", CONC_SERVER_SYNC, 0, 0 },
    [M_THREADING] = { "threading", CONC_SERVER_THREADING, 0, 0 },
    [M_FORKING] = { "forking", CONC_SERVER_FORKING, 0, 0 },
    [M_PREFORK] = { "prefork", CONC_SERVER_PREFORK, 1, 0 },
    [M_COROUTINE] = { "coroutine", CONC_SERVER_COROUTINE, 1, 0 },
    [M_COPIED] = { "coroutine_copied", CONC_SERVER_COROUTINE, 1, CONC_STACK_COPIED },
    [M_REACTOR] = { "reactor", CONC_SERVER_REACTOR, 1, 0 },
};

/* A test of each model: Test(server_models, MODEL_name) runs fn(&case,
 * arg). */
#define EACH_MODEL(name, fn, arg)                                                            \
    Test(server_models, sync_##name, .timeout = 120) { fn(&cases[M_SYNC], arg); }             \
    Test(server_models, threading_##name, .timeout = 120) { fn(&cases[M_THREADING], arg); }   \
    Test(server_models, forking_##name, .timeout = 120) { fn(&cases[M_FORKING], arg); }       \
    Test(server_models, prefork_##name, .timeout = 120) { fn(&cases[M_PREFORK], arg); }       \
    Test(server_models, coroutine_##name, .timeout = 120) { fn(&cases[M_COROUTINE], arg); }   \
    Test(server_models, coroutine_copied_##name, .timeout = 120)                              \
    {                                                                                         \
        fn(&cases[M_COPIED], arg);                                                            \
    }                                                                                         \
    Test(server_models, reactor_##name, .timeout = 120) { fn(&cases[M_REACTOR], arg); }

/* The address family of a test. */
enum fam { TCP, UNIX };

/* A server of case m, type and family (a Unix one at a path of its own,
 * into path) with the line handlers. */
static conc_server *make(const struct model_case *m, int type, enum fam fam, char *path,
                         size_t cap)
{
    conc_sockaddr a;
    path[0] = '\0';
    if (fam == UNIX) {
        snprintf(path, cap, "/tmp/conc-srvmodels-%d-%s-%c.sock", (int)getpid(), m->name,
                 type == SOCK_STREAM ? 's' : 'd');
        unlink(path);
        cr_assert_eq(conc_sockaddr_unix(&a, path, 0), 0);
    } else {
        cr_assert_eq(conc_sockaddr_inet(&a, AF_INET, "127.0.0.1", 0), 0);
    }
    conc_server_opts o = CONC_SERVER_OPTS_INIT;
    o.model = m->model;
    o.workers = m->workers;
    o.stack = m->stack;
    o.request_queue_size = 64;
    if (m->model == CONC_SERVER_REACTOR)
        o.write_buffer_max = MARK;
    conc_server *s = NULL;
    int rc = m->model == CONC_SERVER_REACTOR && type == SOCK_STREAM
                 ? conc_server_new_reactor(&s, &a, &line_reactor, &o)
                 : conc_server_new(&s, type, &a, &line_handler, &o);
    cr_assert_eq(rc, 0, "new: %s", conc_strerror(rc));
    if (fam == UNIX)
        cr_assert_eq(access(path, F_OK), 0, "no socket file at %s", path);
    return s;
}

/* Stops r's server, checks its counters (every request taken ended well)
 * and frees it; its Unix socket file is gone. */
static void stop_and_check(struct running *r, uint64_t requests, const char *path)
{
    stop(r);
    conc_server_stats st;
    cr_assert_eq(conc_server_get_stats(r->s, &st), 0);
    cr_assert_eq(st.accepted, requests, "%llu accepted", (unsigned long long)st.accepted);
    cr_assert_eq(st.finished, requests, "%llu finished", (unsigned long long)st.finished);
    cr_assert_eq(st.failed, 0, "%llu failed", (unsigned long long)st.failed);
    cr_assert_eq(st.active, 0);
    uint64_t errors = atomic_load(&tally->errors);
    cr_assert_eq(errors, 0, "%llu requests ended with an error, the last %s",
                 (unsigned long long)errors, conc_strerror(atomic_load(&tally->last_error)));
    conc_server_free(r->s);
    if (path[0])
        cr_assert_eq(access(path, F_OK), -1, "the socket file %s was left", path);
}

/* ------------------------------------------------------------- clients */

struct client_arg {
    conc_server *s;
    bool sync;                      /* the server serves one at a time */
    enum fam fam;
    int up[2], down[2];             /* shutdown_while_busy's handshake */
};

/* Reads the BIG reply's bytes [from, to) in pieces of 1 byte to 64 KiB,
 * pausing now and then, each checked against the pattern. */
static void read_big(int fd, size_t from, size_t to, unsigned *step)
{
    static const size_t sizes[] = { 1, 7, 100, 4096, 65536, 512, 16384, 3 };
    unsigned char *buf = malloc(65536);
    CHECK(buf, "out of memory");
    size_t off = from;
    while (off < to) {
        size_t want = sizes[*step % (sizeof sizes / sizeof sizes[0])];
        if (want > to - off)
            want = to - off;
        ssize_t m = recv_retry(fd, buf, want, 0);
        CHECK(m > 0, "recv at byte %zu of the reply: %zd %s", off, m, strerror(errno));
        for (ssize_t i = 0; i < m; i++)
            CHECK(buf[i] == pieces_pat(off + (size_t)i), "byte %zu of the reply is %#x, not %#x",
                  off + (size_t)i, buf[i], pieces_pat(off + (size_t)i));
        off += (size_t)m;
        if (++*step % 4 == 0)
            usleep(1000);
    }
    free(buf);
}

static void send_all(int fd, const char *p, size_t n)
{
    CHECK(send(fd, p, n, MSG_NOSIGNAL) == (ssize_t)n, "send: %s", strerror(errno));
}

/* A client with a small receive buffer that asks for BIG bytes and reads
 * the first HEAD of them: the rest of the reply is under way, mostly
 * still in the server.  Returns its descriptor. */
static int ask_big(struct client_arg *ca, unsigned *step)
{
    int fd = dial_rcvbuf(ca->s, 4096);
    char req[32];
    int n = snprintf(req, sizeof req, "BIG %d\n", BIG);
    send_all(fd, req, (size_t)n);
    *step = 0;
    read_big(fd, 0, HEAD, step);
    return fd;
}

/* A slow reader asks for BIG bytes; a second client comes while the
 * reply is under way. */
static void slow_reader_client(void *arg)
{
    struct client_arg *ca = arg;
    unsigned step;
    int slow = ask_big(ca, &step);
    /* most of the reply cannot have left the server: the other client */
    static const char waiting[] = "the fast client waits its turn\n";
    int fast = dial(ca->s);
    if (ca->sync) {
        send_all(fast, waiting, sizeof waiting - 1);
    } else {
        for (int i = 0; i < 5; i++) {
            char msg[64];
            snprintf(msg, sizeof msg, "fast client, line %d, while the slow one reads\n", i);
            exchange(fast, msg, 1 + (size_t)i * 3);
        }
        close(fast);
    }
    read_big(slow, HEAD, BIG, &step);
    exchange(slow, "after the big reply, the same connection\n", 5);
    close(slow);
    if (ca->sync) {                 /* served now that the slow one left */
        char got[sizeof waiting], want[sizeof waiting];
        memcpy(want, waiting, sizeof waiting);
        upper(want, sizeof waiting - 1);
        read_exact(fast, got, sizeof waiting - 1);
        CHECK(memcmp(got, want, sizeof waiting - 1) == 0, "the waiting client's answer");
        exchange(fast, "bye\n", 1);
        close(fast);
    }
}

static void slow_reader(const struct model_case *m, enum fam fam)
{
    int fds = base_fds();
    tally_new();
    char path[108];
    conc_server *s = make(m, SOCK_STREAM, fam, path, sizeof path);
    struct client_arg ca = { .s = s, .sync = m->model == CONC_SERVER_SYNC, .fam = fam };
    pid_t pid = client_proc(slow_reader_client, &ca);
    struct running r;
    start(&r, s);
    client_proc_wait(pid);
    stop_and_check(&r, 2, path);
    /* slow: BIG and the line after it; fast: five lines (SYNC: two) */
    uint64_t lines = atomic_load(&tally->lines);
    cr_assert_eq(lines, ca.sync ? 4 : 7, "%llu lines", (unsigned long long)lines);
    cr_assert_eq(atomic_load(&tally->big), (uint64_t)BIG);
    tally_free();
    cr_assert_eq(count_fds(), fds);
    no_children();
}

EACH_MODEL(slow_reader_tcp, slow_reader, TCP)
EACH_MODEL(slow_reader_unix, slow_reader, UNIX)

enum { PIECE_CLIENTS = 3, PIECE_LINES = 6 };

/* Client i's lines, one after another. */
static size_t piece_script(char *out, size_t cap, int i)
{
    size_t n = 0;
    for (int j = 0; j < PIECE_LINES; j++)
        n += (size_t)snprintf(out + n, cap - n, "client %d, line %d: assembled from pieces\n",
                              i, j);
    CHECK(n < cap, "script too long");
    return n;
}

/* Sends the scripts of clients [first, first + k) a piece of each at a
 * time (sizes from 1 to 40 bytes, not aligned to the lines), a pause
 * after each round, then checks each client's answers. */
static void send_in_pieces(const int *fd, int first, int k)
{
    static const size_t sizes[] = { 1, 2, 3, 5, 8, 13, 40, 1, 1, 21 };
    char script[PIECE_CLIENTS][512];
    size_t len[PIECE_CLIENTS], off[PIECE_CLIENTS] = { 0 };
    for (int i = 0; i < k; i++)
        len[i] = piece_script(script[i], sizeof script[i], first + i);
    for (unsigned step = 0;; step++) {
        bool more = false;
        for (int i = 0; i < k; i++) {
            size_t p = sizes[(step + (unsigned)i) % (sizeof sizes / sizeof sizes[0])];
            if (off[i] >= len[i])
                continue;
            if (p > len[i] - off[i])
                p = len[i] - off[i];
            send_all(fd[i], script[i] + off[i], p);
            off[i] += p;
            more |= off[i] < len[i];
        }
        if (!more)
            break;
        usleep(1000);
    }
    for (int i = 0; i < k; i++) {
        char got[512];
        read_exact(fd[i], got, len[i]);
        upper(script[i], len[i]);
        CHECK(memcmp(got, script[i], len[i]) == 0, "client %d's answers: '%.*s'", first + i,
              (int)len[i], got);
    }
}

static void pieces_client(void *arg)
{
    struct client_arg *ca = arg;
    int fd[PIECE_CLIENTS];
    for (int i = 0; i < PIECE_CLIENTS; i++) {
        if (ca->sync && i > 0)
            break;
        fd[i] = dial(ca->s);
        if (ca->fam == TCP) {       /* each piece its own segment */
            int one = 1;
            CHECK(setsockopt(fd[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0,
                  "TCP_NODELAY");
        }
    }
    if (ca->sync) {                 /* one client after another */
        for (int i = 0; i < PIECE_CLIENTS; i++) {
            if (i > 0)
                fd[0] = dial(ca->s);
            send_in_pieces(fd, i, 1);
            close(fd[0]);
        }
        return;
    }
    send_in_pieces(fd, 0, PIECE_CLIENTS);
    for (int i = 0; i < PIECE_CLIENTS; i++)
        close(fd[i]);
}

static void pieces(const struct model_case *m, enum fam fam)
{
    int fds = base_fds();
    tally_new();
    char path[108];
    conc_server *s = make(m, SOCK_STREAM, fam, path, sizeof path);
    struct client_arg ca = { .s = s, .sync = m->model == CONC_SERVER_SYNC, .fam = fam };
    pid_t pid = client_proc(pieces_client, &ca);
    struct running r;
    start(&r, s);
    client_proc_wait(pid);
    stop_and_check(&r, PIECE_CLIENTS, path);
    cr_assert_eq(atomic_load(&tally->lines), (uint64_t)(PIECE_CLIENTS * PIECE_LINES));
    tally_free();
    cr_assert_eq(count_fds(), fds);
    no_children();
}

EACH_MODEL(pieces_tcp, pieces, TCP)
EACH_MODEL(pieces_unix, pieces, UNIX)

/* A client that asks for a BIG reply, reads the start of it and resets
 * the connection (RST on TCP) while the server is blocked writing the
 * rest; then another client is served. */
static void resetting_client(void *arg)
{
    struct client_arg *ca = arg;
    unsigned step;
    int fd = ask_big(ca, &step);
    struct linger lg = { .l_onoff = 1, .l_linger = 0 };
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
    int other = dial(ca->s);
    exchange(other, "served after a reset in the middle of a reply\n", 4);
    exchange(other, "and again\n", 1);
    close(other);
}

/* The reset request ends with the send's error (the reactor's on_close
 * gets it); the server serves on, nothing leaks. */
static void reset_mid_reply(const struct model_case *m, enum fam fam)
{
    int fds = base_fds();
    tally_new();
    char path[108];
    conc_server *s = make(m, SOCK_STREAM, fam, path, sizeof path);
    struct client_arg ca = { .s = s, .fam = fam };
    pid_t pid = client_proc(resetting_client, &ca);
    struct running r;
    start(&r, s);
    client_proc_wait(pid);
    stop(&r);
    conc_server_stats st;
    cr_assert_eq(conc_server_get_stats(s, &st), 0);
    cr_assert_eq(st.accepted, 2);
    cr_assert_eq(st.active, 0);
    /* the reactor counts every connection that ended as finished */
    bool reactor = m->model == CONC_SERVER_REACTOR;
    cr_assert_eq(st.finished, reactor ? 2 : 1, "%llu finished", (unsigned long long)st.finished);
    cr_assert_eq(st.failed, reactor ? 0 : 1, "%llu failed", (unsigned long long)st.failed);
    cr_assert_eq(atomic_load(&tally->errors), 1);
    int err = atomic_load(&tally->last_error);
    cr_assert(err == -ECONNRESET || err == -EPIPE, "the request ended with %d (%s)", err,
              conc_strerror(err));
    cr_assert_eq(atomic_load(&tally->lines), 3);
    uint64_t big = atomic_load(&tally->big);
    cr_assert(big >= HEAD && big < (uint64_t)BIG, "%llu bytes of the reply went",
              (unsigned long long)big);
    conc_server_free(s);
    if (path[0])
        cr_assert_eq(access(path, F_OK), -1, "the socket file was left");
    tally_free();
    cr_assert_eq(count_fds(), fds);
    no_children();
}

EACH_MODEL(reset_mid_reply_tcp, reset_mid_reply, TCP)
EACH_MODEL(reset_mid_reply_unix, reset_mid_reply, UNIX)

/* ---------------------------------------------------- shutdown while busy */

static void busy_client(void *arg)
{
    struct client_arg *ca = arg;
    unsigned step;
    int fd = ask_big(ca, &step);
    hs_send(ca->up[1]);             /* the reply is under way */
    hs_recv(ca->down[0]);           /* the shutdown was asked */
    read_big(fd, HEAD, BIG, &step);
    exchange(fd, "after the shutdown was asked: still answered\n", 3);
    close(fd);
}

struct stopper {
    conc_server *s;
    _Atomic int rc;                 /* 1 until shutdown_wait returned */
};

static void *stopper_main(void *arg)
{
    struct stopper *sp = arg;
    atomic_store(&sp->rc, conc_server_shutdown_wait(sp->s, GUARD));
    return NULL;
}

static void shutdown_while_busy(const struct model_case *m, enum fam fam)
{
    int fds = base_fds();
    tally_new();
    char path[108];
    conc_server *s = make(m, SOCK_STREAM, fam, path, sizeof path);
    struct client_arg ca = { .s = s, .fam = fam };
    cr_assert_eq(pipe2(ca.up, O_CLOEXEC), 0);
    cr_assert_eq(pipe2(ca.down, O_CLOEXEC), 0);
    pid_t pid = client_proc(busy_client, &ca);
    struct running r;
    start(&r, s);
    hs_recv(ca.up[0]);
    struct stopper sp = { .s = s, .rc = 1 };
    pid_t tid;
    pthread_t t = spawn_tid(stopper_main, &sp, &tid);
    /* the shutdown is asked and waits for the request in flight */
    int64_t end = conc_now() + (int64_t)(GUARD * 1e9);
    while (!conc_server_stopping(s)) {
        cr_assert_lt(conc_now(), end, "the shutdown was never seen");
        conc_sleep(0.001);
    }
    wait_thread_blocked(tid, GUARD);
    int early = atomic_load(&sp.rc);
    cr_assert_eq(early, 1, "shutdown_wait returned (%d) with a request in flight", early);
    hs_send(ca.down[1]);
    client_proc_wait(pid);
    pthread_join(t, NULL);
    int rc = atomic_load(&sp.rc);
    cr_assert_eq(rc, 0, "shutdown_wait: %s", conc_strerror(rc));
    pthread_join(r.t, NULL);
    cr_assert_eq(r.rc, 0, "serve_forever: %s", conc_strerror(r.rc));
    conc_server_stats st;
    cr_assert_eq(conc_server_get_stats(s, &st), 0);
    cr_assert_eq(st.accepted, 1);
    cr_assert_eq(st.finished, 1);
    cr_assert_eq(st.failed, 0);
    cr_assert_eq(st.active, 0);
    cr_assert_eq(atomic_load(&tally->lines), 2);
    cr_assert_eq(atomic_load(&tally->big), (uint64_t)BIG);
    conc_server_free(s);
    if (path[0])
        cr_assert_eq(access(path, F_OK), -1, "the socket file was left");
    for (int i = 0; i < 2; i++) {
        close(ca.up[i]);
        close(ca.down[i]);
    }
    tally_free();
    cr_assert_eq(count_fds(), fds);
    no_children();
}

EACH_MODEL(shutdown_while_busy_tcp, shutdown_while_busy, TCP)
EACH_MODEL(shutdown_while_busy_unix, shutdown_while_busy, UNIX)

/* ------------------------------------------------------ Unix datagrams */

enum { DGRAM_ROUNDS = 10 };

/* A client socket bound to path (a named client, to be answered). */
static int named_client(const char *path)
{
    unlink(path);
    conc_sockaddr ca;
    cr_assert_eq(conc_sockaddr_unix(&ca, path, 0), 0);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    guard(fd);
    cr_assert_eq(bind(fd, &ca.u.sa, ca.len), 0, "bind %s: %s", path, strerror(errno));
    return fd;
}

static void check_answer(int fd, const char *msg, size_t n)
{
    char *got = malloc(n + 1), *want = malloc(n);
    cr_assert(got && want);
    ssize_t m = recv_retry(fd, got, n + 1, 0);
    cr_assert_eq(m, (ssize_t)n, "%zd bytes, not %zu: %s", m, n, strerror(errno));
    memcpy(want, msg, n);
    upper(want, n);
    cr_assert_eq(memcmp(got, want, n), 0, "a wrong answer to '%.40s'", msg);
    free(got);
    free(want);
}

/* Two named clients, each with a datagram outstanding at once, each
 * answered its own; then a datagram of 6000 bytes each. */
static void unix_datagram(const struct model_case *m, int unused)
{
    (void)unused;
    int fds = base_fds();
    tally_new();
    char path[108];
    conc_server *s = make(m, SOCK_DGRAM, UNIX, path, sizeof path);
    struct running r;
    start(&r, s);
    conc_sockaddr sa;
    cr_assert_eq(conc_server_address(s, &sa), 0);
    char cpath[2][108];
    int fd[2];
    for (int c = 0; c < 2; c++) {
        snprintf(cpath[c], sizeof cpath[c], "%.90s.client%d", path, c);
        fd[c] = named_client(cpath[c]);
    }
    for (int i = 0; i < DGRAM_ROUNDS; i++) {
        char msg[2][64];
        size_t n[2];
        for (int c = 0; c < 2; c++) {
            n[c] = (size_t)snprintf(msg[c], sizeof msg[c], "client %d, datagram %d", c, i);
            cr_assert_eq(sendto(fd[c], msg[c], n[c], 0, &sa.u.sa, sa.len), (ssize_t)n[c]);
        }
        for (int c = 1; c >= 0; c--)
            check_answer(fd[c], msg[c], n[c]);
    }
    static char large[6000];
    for (size_t i = 0; i < sizeof large; i++)
        large[i] = (char)('a' + i % 26);
    for (int c = 0; c < 2; c++) {
        cr_assert_eq(sendto(fd[c], large, sizeof large, 0, &sa.u.sa, sa.len),
                     (ssize_t)sizeof large);
        check_answer(fd[c], large, sizeof large);
    }
    for (int c = 0; c < 2; c++) {
        close(fd[c]);
        unlink(cpath[c]);
    }
    stop_and_check(&r, 2 * DGRAM_ROUNDS + 2, path);
    cr_assert_eq(atomic_load(&tally->datagrams), (uint64_t)(2 * DGRAM_ROUNDS + 2));
    tally_free();
    cr_assert_eq(count_fds(), fds);
    no_children();
}

EACH_MODEL(unix_datagram, unix_datagram, 0)
