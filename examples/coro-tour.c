/*
 * coro-tour - the coroutine programs of the tutorials, on conc, in three
 * parts:
 *
 *   1. greenlet: test1 and test2 switch back and forth (gr1.switch(),
 *      gr2.switch()) and print 12, 56, 34, 78.
 *   2. gevent.spawn / joinall: foo and bar take turns at gevent.sleep(0);
 *      then three greenlets that sleep for different lengths interleave
 *      their lines by sleep length.
 *   3. gevent + monkey.patch_all + requests.get: a crawler.  The program
 *      starts a small HTTP server on 127.0.0.1 (an ephemeral port) in a
 *      thread of its own, itself gevent-style: one greenlet per client,
 *      each waiting --delay seconds before it answers.  Then one greenlet
 *      per URL fetches it with libcurl, all at once, and prints what it
 *      received: the size and an FNV-1a checksum of the body.  The server
 *      counts how many connections it had open at once: more than one,
 *      because the fetches overlap.
 *
 *   coro-tour [--part 1|2|3] [--urls N] [--delay S]
 *
 * --part runs one part only (default: all three in order); --urls N (1 to
 * 64, default 5) fetches /page/1 to /page/N; --delay S (0 to 60 s,
 * default 0.2) is how long the server waits before each answer.
 *
 * /page/I has 10000 * I bytes: byte J is 'a' + (I + J) % 26.
 *
 * Python originals:
 *   def test1(): print(12); gr2.switch(); print(34); gr2.switch()
 *   def test2(): print(56); gr1.switch(); print(78)
 *   gr1 = greenlet(test1); gr2 = greenlet(test2); gr1.switch()
 *
 *   gevent.joinall([gevent.spawn(foo), gevent.spawn(bar)])
 *
 *   from gevent import monkey; monkey.patch_all()
 *   def f(url):
 *       print('GET: %s' % url)
 *       data = requests.get(url).text
 *       print('%d bytes received from %s.' % (len(data), url))
 *   gevent.joinall([gevent.spawn(f, url) for url in urls])
 *
 * A C library cannot be monkey-patched: its blocking calls block the whole
 * thread.  libcurl's multi interface does not block, and tells which
 * descriptors it waits for and for how long; a greenlet parks on them with
 * conc_fd_wait, which is what gevent's patched sockets do inside requests.
 */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <arpa/inet.h>

#include <curl/curl.h>

#include "conc.h"
#include "cli.h"

static const char *prog = "coro-tour";

#define MAX_URLS 64
#define MAX_DELAY 60

static long nurls = 5;
static double delay_s = 0.2;

/* Each part starts with a heading like the other walk-throughs' steps. */
static bool printed_part;

static void part_heading(int n, const char *title, const char *explanation)
{
    if (printed_part)
        putchar('\n');
    printed_part = true;
    printf("== %d. %s: %s\n", n, title, explanation);
}

/* ================================================= 1. greenlet switch */

static conc_coro *gr1, *gr2;

static void *test1(void *arg, void *value)
{
    (void)arg;
    (void)value;
    printf("12\n");
    check(conc_coro_switch(gr2, NULL, NULL), "gr2.switch");
    printf("34\n");
    check(conc_coro_switch(gr2, NULL, NULL), "gr2.switch");
    return NULL;            /* never reached: nobody switches back to gr1 */
}

static void *test2(void *arg, void *value)
{
    (void)arg;
    (void)value;
    printf("56\n");
    check(conc_coro_switch(gr1, NULL, NULL), "gr1.switch");
    printf("78\n");
    return NULL;            /* back to the parent: main, which created gr2 */
}

static void part_greenlet(void)
{
    part_heading(1, "greenlet", "test1 and test2 hand control to each other with switch");
    check(conc_coro_new(&gr1, test1, NULL, &(conc_coro_opts){ .name = "gr1" }), "greenlet(test1)");
    check(conc_coro_new(&gr2, test2, NULL, &(conc_coro_opts){ .name = "gr2" }), "greenlet(test2)");
    check(conc_coro_switch(gr1, NULL, NULL), "gr1.switch");
    printf("back in main when test2 returned: gr2 dead: %s; gr1 dead: %s "
           "(test1 still waits in its second switch, as with greenlet)\n",
           yes_no(conc_coro_dead(gr2)), yes_no(conc_coro_dead(gr1)));
    conc_coro_free(gr2);
    conc_coro_free(gr1);    /* suspended: its stack is discarded */
}

/* ============================================== 2. spawn, sleep, joinall */

static void *foo(void *arg)
{
    (void)arg;
    printf("Running in foo\n");
    conc_sleep(0);
    printf("Explicit context switch to foo again\n");
    return NULL;
}

static void *bar(void *arg)
{
    (void)arg;
    printf("Explicit context to bar\n");
    conc_sleep(0);
    printf("Implicit context switch back to bar\n");
    return NULL;
}

/* A greenlet that prints LINES lines, sleeping `period` between them.  It
 * sleeps until t0 + k * period rather than for `period`, so the schedule
 * does not drift with the time each wake-up takes. */
#define UNIT 0.025
#define LINES 3

struct ticker {
    const char *name;
    int units;              /* period in UNITs */
    int64_t t0;
};

static void *tick(void *arg)
{
    struct ticker *t = arg;
    int64_t period = (int64_t)(t->units * UNIT * 1e9 + 0.5);
    for (int k = 0; k < LINES; k++) {
        if (k > 0)
            check(conc_sleep_until(t->t0 + k * period), "sleep");
        printf("   %s: line %d at %.3f s\n", t->name, k + 1, k * t->units * UNIT);
    }
    return NULL;
}

static void part_spawn(void)
{
    part_heading(2, "gevent.spawn and joinall",
                 "greenlets take turns whenever the running one sleeps");
    printf("-- foo and bar yield with sleep(0):\n");
    conc_greenlet *fb[2];
    check(conc_greenlet_spawn(&fb[0], foo, NULL, NULL), "spawn(foo)");
    check(conc_greenlet_spawn(&fb[1], bar, NULL, NULL), "spawn(bar)");
    check(conc_greenlet_joinall(fb, 2, CONC_FOREVER), "joinall");
    conc_greenlet_free(fb[0]);
    conc_greenlet_free(fb[1]);

    /* Periods 5, 2 and 3 units: lines at 0 (all three, in spawn order),
     * then 2 b, 3 c, 4 b, 5 a, 6 c, 10 a.  No two lines share a time. */
    struct ticker t[3] = {
        { .name = "a", .units = 5 },
        { .name = "b", .units = 2 },
        { .name = "c", .units = 3 },
    };
    double sequential = 0, longest = 0;
    printf("-- a, b and c each print %d lines, sleeping", LINES);
    for (int i = 0; i < 3; i++) {
        double span = (LINES - 1) * t[i].units * UNIT;
        sequential += span;
        longest = span > longest ? span : longest;
        printf("%s %.3f s", i == 0 ? "" : i == 1 ? "," : " and", t[i].units * UNIT);
    }
    printf(" between them:\n");
    int64_t t0 = conc_now();
    for (int i = 0; i < 3; i++)
        t[i].t0 = t0;
    conc_greenlet *g[3];
    for (int i = 0; i < 3; i++)
        check(conc_greenlet_spawn(&g[i], tick, &t[i], NULL), "spawn(tick)");
    check(conc_greenlet_joinall(g, 3, CONC_FOREVER), "joinall");
    double took = (double)(conc_now() - t0) / 1e9;
    for (int i = 0; i < 3; i++)
        conc_greenlet_free(g[i]);
    printf("joinall: the sleeps overlapped: %s (%.3f s of sleeps in about %.3f s)\n",
           yes_no(took < sequential), sequential, longest);
}

/* ================================================== 3. the crawler */

/* What /page/I holds: 10000 * I bytes, byte J being 'a' + (I + J) % 26. */
static size_t page_size(long page)
{
    return (size_t)page * 10000;
}

static void page_fill(long page, size_t offset, char *buf, size_t len)
{
    for (size_t j = 0; j < len; j++)
        buf[j] = (char)('a' + ((size_t)page + offset + j) % 26);
}

/* FNV-1a, 32 bits, over a stream of chunks. */
#define FNV_START 0x811c9dc5u

static uint32_t fnv1a(uint32_t h, const void *data, size_t len)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 0x01000193u;
    return h;
}

/* ----------------------------------------------------------- the server */

/* gevent's socket server (the tutorial's runserver and task): one greenlet
 * accepts, one greenlet per client answers.  It runs in a thread of its
 * own with its own hub; everything below touches only that thread, except
 * `stop`, which the main thread sets. */
struct server {
    int lfd;                /* listening, non-blocking */
    int port;
    double delay;
    conc_event stop;        /* set by main: time to close */
    conc_greenlet *acceptor;
    int active;             /* connections open now */
    int max_active;         /* ... at most */
    long answered;          /* 200 responses sent in full */
    int err;                /* the first unexpected error, or 0 */
};

struct client {
    struct server *srv;
    int fd;
};

static void server_error(struct server *srv, int err)
{
    if (!srv->err)
        srv->err = err;
}

/* Sends all of buf, parking while the socket buffer is full. */
static int send_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n > 0) {
            buf += n;
            len -= (size_t)n;
        } else if (errno == EAGAIN) {
            int rc = conc_fd_wait(fd, POLLOUT, 10.0);
            if (rc < 0)
                return rc;
        } else if (errno != EINTR) {
            return -errno;
        }
    }
    return 0;
}

/* Reads the request head (up to the empty line) into req. */
static int read_request(int fd, char *req, size_t cap)
{
    size_t len = 0;
    req[0] = '\0';
    while (!strstr(req, "\r\n\r\n")) {
        if (len + 1 >= cap)
            return -EMSGSIZE;
        ssize_t n = recv(fd, req + len, cap - 1 - len, 0);
        if (n > 0) {
            len += (size_t)n;
            req[len] = '\0';
        } else if (n == 0) {
            return -ECONNRESET;
        } else if (errno == EAGAIN) {
            int rc = conc_fd_wait(fd, POLLIN, 10.0);
            if (rc < 0)
                return rc;
        } else if (errno != EINTR) {
            return -errno;
        }
    }
    return 0;
}

/* "GET /page/I HTTP/1.x" with 1 <= I <= MAX_URLS gives I; else 0. */
static long requested_page(const char *req)
{
    static const char head[] = "GET /page/";
    if (strncmp(req, head, sizeof head - 1) != 0)
        return 0;
    const char *p = req + sizeof head - 1;
    if (*p < '1' || *p > '9')
        return 0;
    char *end;
    long page = strtol(p, &end, 10);
    if (page > MAX_URLS || strncmp(end, " HTTP/1.", 8) != 0)
        return 0;
    return page;
}

static int answer(struct server *srv, int fd)
{
    char req[2048];
    int rc = read_request(fd, req, sizeof req);
    if (rc < 0)
        return rc;
    long page = requested_page(req);
    conc_sleep(srv->delay);         /* the slow server: parks this greenlet only */
    char head[256];
    if (!page) {
        static const char body[] = "not found\n";
        snprintf(head, sizeof head,
                 "HTTP/1.1 404 Not Found\r\nContent-Length: %zu\r\n"
                 "Content-Type: text/plain\r\nConnection: close\r\n\r\n%s",
                 sizeof body - 1, body);
        return send_all(fd, head, strlen(head));
    }
    size_t size = page_size(page);
    snprintf(head, sizeof head,
             "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n"
             "Content-Type: text/plain\r\nConnection: close\r\n\r\n", size);
    rc = send_all(fd, head, strlen(head));
    char chunk[4096];
    for (size_t off = 0; rc == 0 && off < size; off += sizeof chunk) {
        size_t n = size - off < sizeof chunk ? size - off : sizeof chunk;
        page_fill(page, off, chunk, n);
        rc = send_all(fd, chunk, n);
    }
    if (rc == 0)
        srv->answered++;
    return rc;
}

static void *serve_client(void *arg)
{
    struct client *c = arg;
    struct server *srv = c->srv;
    int fd = c->fd;
    free(c);
    if (++srv->active > srv->max_active)
        srv->max_active = srv->active;
    int rc = answer(srv, fd);
    if (rc < 0 && rc != -ECONNRESET && rc != -EPIPE)
        server_error(srv, rc);
    close(fd);
    srv->active--;
    return NULL;
}

static void *accept_loop(void *arg)
{
    struct server *srv = arg;
    for (;;) {
        int fd = accept4(srv->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN) {
                server_error(srv, -errno);
                return NULL;
            }
            int rc = conc_fd_wait(srv->lfd, POLLIN, CONC_FOREVER);
            if (rc == -ECANCELED)   /* killed: the server stops */
                return NULL;
            if (rc < 0) {
                server_error(srv, rc);
                return NULL;
            }
            continue;
        }
        struct client *c = malloc(sizeof *c);
        conc_greenlet *g = NULL;
        int rc = c ? 0 : -ENOMEM;
        if (c) {
            *c = (struct client){ srv, fd };
            rc = conc_greenlet_spawn(&g, serve_client, c, NULL);
        }
        if (rc < 0) {
            server_error(srv, rc);
            free(c);
            close(fd);
            continue;
        }
        conc_greenlet_free(g);      /* it releases itself when done */
    }
}

static void *stop_watch(void *arg)
{
    struct server *srv = arg;
    int rc = conc_event_wait(&srv->stop, CONC_FOREVER);    /* set by main */
    if (rc < 0)
        server_error(srv, rc);
    conc_greenlet_kill(srv->acceptor);
    return NULL;
}

static void *server_thread(void *arg)
{
    struct server *srv = arg;
    conc_greenlet *watch = NULL;
    int rc = conc_greenlet_spawn(&srv->acceptor, accept_loop, srv, NULL);
    if (rc == 0) {
        rc = conc_greenlet_spawn(&watch, stop_watch, srv, NULL);
        if (rc < 0)
            conc_greenlet_kill(srv->acceptor);
    }
    if (rc < 0)
        server_error(srv, rc);
    rc = conc_hub_run();            /* until the acceptor and every client are done */
    if (rc < 0)
        server_error(srv, rc);
    conc_greenlet_free(watch);
    conc_greenlet_free(srv->acceptor);
    rc = conc_hub_free();
    if (rc < 0)
        server_error(srv, rc);
    close(srv->lfd);
    return NULL;
}

/* A listening socket on 127.0.0.1 with a port of the kernel's choosing. */
static int listen_local(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = 0 };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof a;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 128) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &alen) < 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    *port = ntohs(a.sin_port);
    return fd;
}

/* ---------------------------------------------------------- the crawler */

/* One URL.  Its greenlet drives a curl easy handle through a multi handle
 * of its own: curl says which sockets it waits for (on_socket) and when it
 * wants to be called anyway (on_timer); the sockets go into an epoll set
 * of this fetch, and the greenlet parks on that set's descriptor. */
struct fetch {
    char url[64];
    int epfd;
    int64_t timer;          /* when curl wants to be called, or -1 */
    size_t bytes;
    uint32_t sum;
    long status;
    CURLcode result;
    int err;                /* -errno from conc or epoll, or 0 */
    char errbuf[CURL_ERROR_SIZE];
};

static size_t on_data(char *data, size_t one, size_t n, void *userp)
{
    struct fetch *f = userp;
    f->bytes += one * n;
    f->sum = fnv1a(f->sum, data, one * n);
    return one * n;
}

static int on_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    (void)easy;
    (void)socketp;
    struct fetch *f = userp;
    if (what == CURL_POLL_REMOVE) {
        epoll_ctl(f->epfd, EPOLL_CTL_DEL, s, NULL);
        return 0;
    }
    struct epoll_event ev = { .data.fd = s };
    if (what & CURL_POLL_IN)
        ev.events |= EPOLLIN;
    if (what & CURL_POLL_OUT)
        ev.events |= EPOLLOUT;
    if (epoll_ctl(f->epfd, EPOLL_CTL_MOD, s, &ev) < 0 &&
        (errno != ENOENT || epoll_ctl(f->epfd, EPOLL_CTL_ADD, s, &ev) < 0))
        return -1;
    return 0;
}

static int on_timer(CURLM *multi, long ms, void *userp)
{
    (void)multi;
    struct fetch *f = userp;
    f->timer = ms < 0 ? -1 : conc_now() + (int64_t)ms * 1000000;
    return 0;
}

/* Runs the transfer to its end, parking while curl waits. */
static int drive(struct fetch *f, CURLM *multi)
{
    int running = 1;
    while (running) {
        int64_t until = f->timer >= 0 ? f->timer : CONC_NO_DEADLINE;
        int rc = conc_fd_wait_until(f->epfd, POLLIN, until);   /* parks this greenlet */
        if (rc < 0 && rc != -ETIMEDOUT)
            return rc;
        struct epoll_event ev[8];
        int n = epoll_wait(f->epfd, ev, 8, 0);
        if (n < 0 && errno != EINTR)
            return -errno;
        for (int i = 0; i < n; i++) {
            int flags = 0;
            if (ev[i].events & EPOLLIN)
                flags |= CURL_CSELECT_IN;
            if (ev[i].events & EPOLLOUT)
                flags |= CURL_CSELECT_OUT;
            if (ev[i].events & (EPOLLERR | EPOLLHUP))
                flags |= CURL_CSELECT_ERR;
            curl_multi_socket_action(multi, ev[i].data.fd, flags, &running);
        }
        if (f->timer >= 0 && conc_now() >= f->timer) {
            f->timer = -1;
            curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
        }
    }
    int left;
    CURLMsg *msg;
    while ((msg = curl_multi_info_read(multi, &left)))
        if (msg->msg == CURLMSG_DONE)
            f->result = msg->data.result;
    return 0;
}

/* requests.get(url) in a greenlet. */
static void *fetch_url(void *arg)
{
    struct fetch *f = arg;
    printf("GET: %s\n", f->url);
    f->sum = FNV_START;
    f->timer = -1;
    f->result = CURLE_FAILED_INIT;
    f->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (f->epfd < 0) {
        f->err = -errno;
        return NULL;
    }
    CURL *easy = curl_easy_init();
    CURLM *multi = curl_multi_init();
    if (easy && multi) {
        curl_easy_setopt(easy, CURLOPT_URL, f->url);
        curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_data);
        curl_easy_setopt(easy, CURLOPT_WRITEDATA, f);
        curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, f->errbuf);
        curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(easy, CURLOPT_NOPROXY, "*");      /* local server: no proxy */
        curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long)(delay_s * 1000) + 30000L);
        curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, on_socket);
        curl_multi_setopt(multi, CURLMOPT_SOCKETDATA, f);
        curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, on_timer);
        curl_multi_setopt(multi, CURLMOPT_TIMERDATA, f);
        if (curl_multi_add_handle(multi, easy) == CURLM_OK) {
            f->err = drive(f, multi);
            curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &f->status);
            curl_multi_remove_handle(multi, easy);
        }
    }
    curl_multi_cleanup(multi);
    curl_easy_cleanup(easy);
    close(f->epfd);
    if (!f->err && f->result == CURLE_OK && f->status == 200)
        printf("%zu bytes received from %s (fnv-1a %08x).\n", f->bytes, f->url, f->sum);
    return NULL;
}

static int part_crawler(void)
{
    part_heading(3, "gevent + monkey.patch_all + requests.get",
                 "one greenlet per URL, libcurl's sockets parked on with conc_fd_wait");

    CURLcode cc = curl_global_init(CURL_GLOBAL_DEFAULT);
    if (cc != CURLE_OK) {
        fprintf(stderr, "%s: curl_global_init: %s\n", prog, curl_easy_strerror(cc));
        return 1;
    }
    static struct server srv;
    srv = (struct server){ .delay = delay_s };
    check(conc_event_init(&srv.stop, 0), "event");
    srv.lfd = listen_local(&srv.port);
    check(srv.lfd, "listen on 127.0.0.1");
    conc_thread *server;
    check(conc_thread_new(&server, server_thread, &srv,
                          &(conc_thread_opts){ .name = "server" }), "thread");
    check(conc_thread_start(server), "start the server");
    printf("server: http://127.0.0.1:%d/page/1 to /page/%ld, waits %.3f s before each answer\n",
           srv.port, nurls, srv.delay);

    struct fetch *f = calloc((size_t)nurls, sizeof *f);
    conc_greenlet **g = calloc((size_t)nurls, sizeof *g);
    if (!f || !g)
        return die("calloc", -ENOMEM);
    for (long i = 0; i < nurls; i++)
        snprintf(f[i].url, sizeof f[i].url, "http://127.0.0.1:%d/page/%ld", srv.port, i + 1);

    /* libcurl's frames are deep: give the fetchers 256 KiB stacks. */
    conc_coro_opts stack = CONC_CORO_OPTS_INIT;
    stack.stack_size = 256 * 1024;
    conc_spawn_opts opts = CONC_SPAWN_OPTS_INIT;
    opts.coro = &stack;
    int64_t t0 = conc_now();
    for (long i = 0; i < nurls; i++)
        check(conc_greenlet_spawn(&g[i], fetch_url, &f[i], &opts), "spawn");
    check(conc_greenlet_joinall(g, (size_t)nurls, CONC_FOREVER), "joinall");
    double took = (double)(conc_now() - t0) / 1e9;

    int status = 0;
    size_t total = 0;
    for (long i = 0; i < nurls; i++) {
        conc_greenlet_free(g[i]);
        if (f[i].err) {
            fprintf(stderr, "%s: %s: %s\n", prog, f[i].url, conc_strerror(f[i].err));
            status = 1;
        } else if (f[i].result != CURLE_OK) {
            fprintf(stderr, "%s: %s: %s\n", prog, f[i].url,
                    f[i].errbuf[0] ? f[i].errbuf : curl_easy_strerror(f[i].result));
            status = 1;
        } else if (f[i].status != 200) {
            fprintf(stderr, "%s: %s: HTTP status %ld\n", prog, f[i].url, f[i].status);
            status = 1;
        }
        total += f[i].bytes;
    }

    check(conc_event_set(&srv.stop), "stop the server");
    check(conc_thread_join(server, CONC_FOREVER), "join the server");
    conc_thread_free(server);
    if (srv.err) {
        fprintf(stderr, "%s: server: %s\n", prog, conc_strerror(srv.err));
        status = 1;
    }
    printf("total: %ld URLs, %zu bytes in %.3f s (one after another: at least %.3f s)\n",
           nurls, total, took, nurls * delay_s);
    printf("server: %ld pages sent, at most %d connections open at once\n", srv.answered,
           srv.max_active);
    free(f);
    free(g);
    curl_global_cleanup();
    return status;
}

/* ================================================================ main */

static void usage(FILE *out)
{
    fprintf(out,
            "usage: %s [--part 1|2|3] [--urls N] [--delay S]\n"
            "  the tutorials' coroutine programs: 1. greenlet switch, 2. gevent spawn/joinall,\n"
            "  3. a crawler fetching N local URLs at once (default 5) from a server that\n"
            "  waits S seconds before each answer (default 0.2)\n",
            prog);
}

int main(int argc, char **argv)
{
    long part = 0;
    const struct opt opts[] = {
        { "part", OPT_INT, &part, 1, 3, NULL },
        { "urls", OPT_INT, &nurls, 1, MAX_URLS, NULL },
        { "delay", OPT_SECONDS, &delay_s, 0, MAX_DELAY, NULL },
    };
    int rc = parse_options(argc, argv, opts, OPTS_COUNT(opts), usage);
    if (rc >= 0)
        return rc;

    int status = 0;
    if (part == 0 || part == 1)
        part_greenlet();
    if (part == 0 || part == 2)
        part_spawn();
    if (part == 0 || part == 3)
        status = part_crawler();
    fflush(stdout);
    if ((rc = conc_hub_free()) < 0)
        return die("hub_destroy", rc);
    return status;
}
