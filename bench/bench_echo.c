/*
 * bench_echo.c - upper-casing echo servers under one load generator: each
 * model of conc's echo-upper-server against a hand-written epoll server in
 * C, libuv, Go's net package, gevent and four Python servers (selectors,
 * asyncio, socketserver's threading and forking servers).
 *
 *   echo_c1, echo_c100, echo_c1000   requests per second, 1, 100 and 1000
 *                                    connections
 *   echo_p50_c1000, echo_p99_c1000   the median and 99th percentile of the
 *                                    latency at 1000 connections, in us
 *   echo_ready_c1000                 ms from the start of the load until
 *                                    each of the 1000 connections had its
 *                                    first reply: how fast the server takes
 *                                    on new connections (accepts them and
 *                                    starts serving each)
 *   echo_cpu_c100, echo_cpu_c1000    the server's CPU time per request, in
 *                                    ns, its child processes included: what
 *                                    the server itself costs, which the
 *                                    request rate shows only when the
 *                                    server, not the load generator, is the
 *                                    bottleneck.  Read at the start and the
 *                                    end of the window as the sum of: the
 *                                    server's threads (/proc/PID/task/ *
 *                                    /schedstat, in ns); the children it has
 *                                    reaped (cutime + cstime of
 *                                    /proc/PID/stat); and every process
 *                                    below it still there (found by the
 *                                    parent field of /proc/ * /stat, a
 *                                    zombie too): its threads' schedstat
 *                                    and its own cutime + cstime.  A child
 *                                    that ends in the window moves from the
 *                                    last term to its parent's cutime with
 *                                    the same total (the kernel adds the
 *                                    child's runtime in ns), so the forking
 *                                    servers' children (conc-forking,
 *                                    python-forking) and the prefork
 *                                    workers count in full.  cutime is in
 *                                    clock ticks (10 ms at USER_HZ 100),
 *                                    read twice per window: fine over
 *                                    thousands of requests
 *   idle_conn_rss                    the server's resident memory per idle
 *                                    connection, in bytes: VmRSS of
 *                                    /proc/PID/status before connecting N
 *                                    clients and after each has had one
 *                                    request answered (so each is accepted
 *                                    and parked in its next recv), divided
 *                                    by N; N = 100000 (--quick: 1000), fewer
 *                                    when RLIMIT_NOFILE's hard limit is lower
 *                                    and cannot be raised (said on stderr);
 *                                    run first, before the load, for the
 *                                    servers that keep no thread or process
 *                                    per connection (conc-coroutine, the one
 *                                    conc is judged by here, in both stack
 *                                    modes, conc-epoll, conc-reactor,
 *                                    epoll-c, libuv, go, gevent)
 *
 * The load generator is this program: one thread, one epoll set, a closed
 * loop over C connections: each connection sends a 64-byte request (lower-
 * case letters that differ from one request to the next), waits for the
 * whole reply, checks every byte of it against the upper-cased request, and
 * sends its next request at once.  A run connects C sockets, sends a
 * request on each, waits until each has had its first reply (the server
 * has taken every connection on: echo_ready_c1000), warms up, counts the
 * replies completed during the measured window and the latency of each
 * (send to last byte), then stops sending and waits for every reply still
 * owed, so that every request of the run is answered and checked.  The
 * window thus measures the steady state: a first request that waited for
 * its connection to be accepted or for a thread to be started for it is
 * not in the rate or the latencies.
 * A wrong byte, a byte too many, a closed or reset connection, or 10 s
 * without any reply make the run FAILED (a server that loses requests cannot
 * score).
 *
 * Every server is a separate process started once, pinned to the first CPU
 * of the process's set (bench_cpu slot 0); the load generator pins itself to
 * the second (--no-pin: neither).  The servers listen on 127.0.0.1 with a
 * port of the kernel's choosing, given on their first line of output
 * ("listening on 127.0.0.1:PORT").  Each round runs every server once, a
 * different one first each round; a figure is the median of the rounds
 * (--reps).  RLIMIT_NOFILE is raised to its hard limit for 1000 connections
 * (the servers inherit it), and the hard limit itself first, for
 * idle_conn_rss's N, up to fs.nr_open (with CAP_SYS_RESOURCE, as root).
 *
 * Systems:
 *   conc-epoll, conc-select, conc-poll   echo-upper-server --model M: one
 *                                        thread, conc's selector with that
 *                                        backend, conc's sockets
 *   conc-nonblocking                     its non-blocking accept/recv loop
 *   conc-sync                            one client at a time (echo_c1 only)
 *   conc-threading, conc-forking         a thread, a child process per
 *                                        connection (conc/server.h)
 *   conc-prefork, conc-coroutine,        one worker process with a greenlet
 *   conc-reactor                         per connection, one hub, one
 *                                        callback loop (--workers 1)
 *   conc-coroutine-own,                  conc-coroutine with --stack own,
 *   conc-coroutine-copied                --stack copied: each greenlet on a
 *                                        stack of its own, or on the hub's
 *                                        shared stack, copied while parked
 *   conc-prefork-w2, conc-coroutine-w2,  the same with --workers 2: pinned,
 *   conc-reactor-w2                      the two share the server's CPU;
 *                                        with --no-pin they spread over the
 *                                        machine, which the load generator
 *                                        then shares
 *   epoll-c          bench/peers/echo_epoll.c, plain epoll and syscalls
 *   libuv            bench/peers/echo_libuv.c (built when libuv is found:
 *                    libuv1-dev)
 *   go               bench/peers/echo_go.go, a goroutine per connection
 *                    (go build at run time; not under --quick)
 *   python-selectors bench/peers/echo_selectors.py (DefaultSelector)
 *   python-asyncio   bench/peers/echo_asyncio.py (protocols)
 *   gevent           bench/peers/echo_gevent.py (gevent's StreamServer, a
 *                    greenlet per connection; skipped without python3-gevent)
 *   python-threading bench/peers/echo_threading.py (socketserver's
 *                    ThreadingTCPServer, request_queue_size 1024,
 *                    daemon_threads)
 *   python-forking   bench/peers/echo_forking.py (ForkingTCPServer,
 *                    request_queue_size 1024, max_children 2000)
 * The peers that are not conc-MODEL are compared against conc-epoll.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "benchlib.h"

#ifndef CONC_ECHO_SERVER
#define CONC_ECHO_SERVER ""
#endif
#ifndef CONC_ECHO_EPOLL_PEER
#define CONC_ECHO_EPOLL_PEER ""
#endif
#ifndef CONC_ECHO_LIBUV_PEER
#define CONC_ECHO_LIBUV_PEER ""
#endif

static const bench_metric metrics[] = {
    { "echo_c1", "req/s", "64-byte requests, 1 connection, closed loop" },
    { "echo_c100", "req/s", "64-byte requests, 100 connections, closed loop" },
    { "echo_c1000", "req/s", "64-byte requests, 1000 connections, closed loop" },
    { "echo_p50_c1000", "us", "median latency of a request at 1000 connections" },
    { "echo_p99_c1000", "us", "99th percentile latency of a request at 1000 connections" },
    { "echo_ready_c1000", "ms", "until each of 1000 new connections had its first reply" },
    { "echo_cpu_c100", "ns", "server CPU time per request at 100 connections" },
    { "echo_cpu_c1000", "ns", "server CPU time per request at 1000 connections" },
    { "idle_conn_rss", "bytes", "server RSS per idle connection parked in recv, N = 100000 "
      "(--quick: 1000)" },
};

#define REQ 64                  /* request and reply size */
#define STALL_NS (10LL * 1000000000LL)      /* no reply for this long: failed */
#define START_NS (60LL * 1000000000LL)      /* a server's ready line, at most */
#define MAX_SAMPLES (4u << 20)  /* latencies kept per run */
#define MAX_WINDOW_NS (20LL * 1000000000LL)  /* a window stretched this far: give up */

/* ---------------------------------------------------------------- servers */

struct server {
    const char *system;
    bool is_conc;
    int max_conns;              /* the most connections it serves at once */
    char *argv[10];
    const char *skip;           /* why it cannot run, or NULL */
    char skip_buf[160];
    pid_t pid;                  /* > 0 while it runs */
    int out;                    /* its stdout (kept open until it ends) */
    int port;
    bool dead;                  /* it ended or could not start: see why */
    char why[160];
};

static char tmp_dir[64];        /* the Go peer's build directory, or "" */
static long nofile_hard;        /* RLIMIT_NOFILE's hard limit, as raised */
static char nofile_why[128] = "the kernel's fs.nr_open is lower";

static void set_skip(struct server *s, const char *fmt, const char *arg)
{
    snprintf(s->skip_buf, sizeof s->skip_buf, fmt, arg);
    s->skip = s->skip_buf;
}

static bool server_wanted(const struct server *s)
{
    for (size_t i = 0; i < BENCH_ARRAY_LEN(metrics); i++)
        if (bench_enabled(metrics[i].name, s->system))
            return true;
    return false;
}

/* Reads the server's first line (the hang guard is START_NS) and finds the
 * port in "listening on HOST:PORT". */
static int read_ready_line(struct server *s)
{
    char line[256];
    size_t len = 0;
    int64_t deadline = bench_now() + START_NS;
    while (len < sizeof line - 1 && !memchr(line, '\n', len)) {
        int left = (int)((deadline - bench_now()) / 1000000);
        if (left <= 0) {
            snprintf(s->why, sizeof s->why, "no ready line after %lld s",
                     (long long)(START_NS / 1000000000LL));
            return -1;
        }
        struct pollfd p = { .fd = s->out, .events = POLLIN };
        if (poll(&p, 1, left) <= 0)
            continue;
        ssize_t n = read(s->out, line + len, sizeof line - 1 - len);
        if (n <= 0) {
            snprintf(s->why, sizeof s->why, "ended before it listened");
            return -1;
        }
        len += (size_t)n;
        line[len] = '\0';
    }
    line[len] = '\0';
    const char *at = strstr(line, "listening on ");
    char *nl = strchr(line, '\n');
    if (nl)
        *nl = '\0';
    const char *colon = NULL;
    if (at)
        for (const char *p = at + strlen("listening on "); *p && *p != ' '; p++)
            if (*p == ':')
                colon = p;
    char *end = NULL;
    long port = colon ? strtol(colon + 1, &end, 10) : -1;
    if (!colon || end == colon + 1 || port <= 0 || port > 65535) {
        snprintf(s->why, sizeof s->why, "unexpected first line '%.100s'", line);
        return -1;
    }
    s->port = (int)port;
    return 0;
}

static void server_start(struct server *s)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        bench_die("pipe2", errno);
    pid_t parent = getpid();
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        bench_die("fork", errno);
    if (pid == 0) {
        bench_worker_enter(0, parent);      /* the server's CPU */
        signal(SIGPIPE, SIG_DFL);
        dup2(p[1], STDOUT_FILENO);
        int null = open("/dev/null", O_RDONLY);
        if (null >= 0)
            dup2(null, STDIN_FILENO);
        execvp(s->argv[0], s->argv);
        fprintf(stderr, "bench_echo: cannot run %s: %s\n", s->argv[0], strerror(errno));
        _exit(127);
    }
    close(p[1]);
    s->pid = pid;
    s->out = p[0];
    if (read_ready_line(s) < 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        close(s->out);
        s->pid = 0;
        s->dead = true;
    }
}

/* Whether the server still runs; when it ended, says how in s->why. */
static bool server_alive(struct server *s)
{
    if (s->dead)
        return false;
    int status;
    if (waitpid(s->pid, &status, WNOHANG) == s->pid) {
        if (WIFSIGNALED(status))
            snprintf(s->why, sizeof s->why, "the server was killed by signal %d",
                     WTERMSIG(status));
        else
            snprintf(s->why, sizeof s->why, "the server exited with status %d",
                     WEXITSTATUS(status));
        close(s->out);
        s->pid = 0;
        s->dead = true;
        return false;
    }
    return true;
}

/* Stops a running server with SIGTERM (SIGKILL after a 10 s hang guard).
 * Returns its exit status, or -1 when it had to be killed or died of a
 * signal. */
static int server_stop(struct server *s)
{
    if (s->pid <= 0)
        return 0;
    kill(s->pid, SIGTERM);
    int status = 0;
    int64_t deadline = bench_now() + 10LL * 1000000000LL;
    pid_t r;
    while ((r = waitpid(s->pid, &status, WNOHANG)) == 0 && bench_now() < deadline)
        poll(NULL, 0, 5);
    if (r == 0) {
        kill(s->pid, SIGKILL);
        waitpid(s->pid, &status, 0);
        status = -1;
    } else {
        status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }
    close(s->out);
    s->pid = 0;
    return status;
}

/* Whether bench_python() can import module (it is asked, quietly). */
static bool python_has(const char *module)
{
    char code[128];
    snprintf(code, sizeof code, "import %s", module);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        bench_die("fork", errno);
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) {
            dup2(null, STDIN_FILENO);
            dup2(null, STDOUT_FILENO);
            dup2(null, STDERR_FILENO);
        }
        execl(bench_python(), bench_python(), "-c", code, (char *)NULL);
        _exit(127);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

/* Builds the Go peer into tmp_dir; returns its path, or NULL after saying
 * why in s. */
static const char *build_go(struct server *s)
{
    static char bin[128];
    if (!bench_in_path("go")) {
        set_skip(s, "%s", "go is not installed (golang-go; make bench installs it)");
        return NULL;
    }
    if (bench_quick()) {
        set_skip(s, "%s", "not under --quick (the peer is compiled with go build)");
        return NULL;
    }
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/conc-bench-echo-XXXXXX");
    if (!mkdtemp(tmp_dir)) {
        tmp_dir[0] = '\0';
        set_skip(s, "cannot make a build directory: %s", strerror(errno));
        return NULL;
    }
    snprintf(bin, sizeof bin, "%s/echo_go", tmp_dir);
    char cache[128];
    snprintf(cache, sizeof cache, "%s/cache", tmp_dir);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        bench_die("fork", errno);
    if (pid == 0) {
        if (!getenv("GOCACHE") && !getenv("HOME") && !getenv("XDG_CACHE_HOME"))
            setenv("GOCACHE", cache, 1);
        dup2(STDERR_FILENO, STDOUT_FILENO);
        execlp("go", "go", "build", "-o", bin, bench_peer_path("echo_go.go"), (char *)NULL);
        _exit(127);
    }
    int status;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        set_skip(s, "%s", "go build failed (its output is above)");
        return NULL;
    }
    return bin;
}

/* ------------------------------------------------------------- the load */

struct client {
    int fd;
    int index;
    uint64_t seq;               /* requests sent on this connection */
    int64_t sent;               /* when the outstanding request went */
    bool busy;                  /* a request is outstanding */
    size_t got;                 /* reply bytes received */
    char want[REQ];             /* the reply expected */
    char reply[2 * REQ];
};

struct result {
    double rate;                /* replies per second in the window */
    double p50_us, p99_us;
    double ready_ms;            /* until every connection had a reply */
    double cpu_ns;              /* server CPU per request; < 0: unknown */
    char why[192];              /* when the run failed */
};

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Fills request number c->seq of connection c into req and its expected
 * reply into c->want. */
static void make_request(struct client *c, char *req)
{
    uint64_t k = c->seq * 7u + (uint64_t)c->index * 131u;
    for (int i = 0; i < REQ - 1; i++) {
        char ch = (char)('a' + (k + (uint64_t)i * 11u) % 26u);
        if (i % 9 == 8)
            ch = (char)('0' + (k + (uint64_t)i) % 10u);     /* digits stay digits */
        req[i] = ch;
        c->want[i] = ch >= 'a' && ch <= 'z' ? (char)(ch - 'a' + 'A') : ch;
    }
    req[REQ - 1] = '\n';
    c->want[REQ - 1] = '\n';
}

static int send_request(struct client *c, int64_t now)
{
    char req[REQ];
    make_request(c, req);
    ssize_t n = send(c->fd, req, REQ, MSG_NOSIGNAL);
    if (n != REQ)
        return n < 0 ? -errno : -EMSGSIZE;
    c->seq++;
    c->sent = now;
    c->busy = true;
    c->got = 0;
    return 0;
}

/* Connections per source address: fewer than the ephemeral ports. */
#define PER_SOURCE 20000

/* Connects n sockets to 127.0.0.1:port (non-blocking, added to ep).  Past
 * PER_SOURCE connections each block of them comes from its own source
 * address (127.0.0.2, 127.0.0.3, ...: one address has only ~28000
 * ephemeral ports towards one server port). */
static int connect_all(struct client *cl, int n, int port, int ep, char *why, size_t whylen)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int i = 0; i < n; i++) {
        cl[i].fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (cl[i].fd < 0) {
            snprintf(why, whylen, "socket %d: %s", i, strerror(errno));
            return -1;
        }
        if (n > PER_SOURCE) {
            /* the port is chosen at connect (the 4-tuple is then unique),
             * not at bind, where it would be unique per source address */
            int one = 1;
            setsockopt(cl[i].fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
            struct sockaddr_in src = { .sin_family = AF_INET };
            src.sin_addr.s_addr = htonl(INADDR_LOOPBACK + 1 + (uint32_t)(i / PER_SOURCE));
            if (bind(cl[i].fd, (struct sockaddr *)&src, sizeof src) < 0) {
                snprintf(why, whylen, "bind %d: %s", i, strerror(errno));
                return -1;
            }
        }
        if (connect(cl[i].fd, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS) {
            snprintf(why, whylen, "connect %d: %s", i, strerror(errno));
            return -1;
        }
        struct epoll_event ev = { .events = EPOLLOUT, .data.ptr = &cl[i] };
        if (epoll_ctl(ep, EPOLL_CTL_ADD, cl[i].fd, &ev) < 0) {
            snprintf(why, whylen, "epoll_ctl: %s", strerror(errno));
            return -1;
        }
    }
    /* Wait until each is connected (or refused).  The guard is on progress,
     * not on the whole: with 100000 connections the listen backlog
     * overflows and the kernel's SYN retries (1 s, 3 s, ...) bring the
     * rest in over longer than one STALL_NS. */
    int left = n;
    int64_t deadline = bench_now() + STALL_NS;
    struct epoll_event evs[1024];
    while (left > 0) {
        int64_t ms = (deadline - bench_now()) / 1000000;
        if (ms <= 0) {
            snprintf(why, whylen, "%d of %d connections not established, none for 10 s", left,
                     n);
            return -1;
        }
        int k = epoll_wait(ep, evs, 1024, (int)ms);
        for (int i = 0; i < k; i++) {
            struct client *c = evs[i].data.ptr;
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
            if (err) {
                snprintf(why, whylen, "connect %d: %s", c->index, strerror(err));
                return -1;
            }
            struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
            epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
            left--;
            deadline = bench_now() + STALL_NS;
        }
    }
    return 0;
}

static int64_t server_threads_ns(pid_t pid);

/* Clock ticks (USER_HZ) in ns. */
static int64_t ticks_ns(unsigned long long t)
{
    long hz = sysconf(_SC_CLK_TCK);
    if (hz <= 0)
        hz = 100;
    return (int64_t)(t * (1000000000ULL / (unsigned long long)hz));
}

/* From /proc/PID/stat: the parent, the process's own CPU time (utime +
 * stime) and that of the children it reaped (cutime + cstime), in ticks.
 * Returns 0, or -1 when it is gone. */
static int proc_stat(pid_t pid, pid_t *ppid, unsigned long long *own,
                     unsigned long long *reaped)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    char *p = strrchr(buf, ')');    /* the name may hold anything */
    if (!p)
        return -1;
    char state;
    int pp;
    unsigned long long ut, st;
    long long cut, cst;
    /* state ppid pgrp session tty tpgid flags minflt cminflt majflt
     * cmajflt utime stime cutime cstime */
    if (sscanf(p + 1, " %c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %lld %lld", &state,
               &pp, &ut, &st, &cut, &cst) != 6)
        return -1;
    *ppid = pp;
    *own = ut + st;
    *reaped = (unsigned long long)(cut > 0 ? cut : 0) + (unsigned long long)(cst > 0 ? cst : 0);
    return 0;
}

/* The CPU time, in ns, of every process below pid that is still there
 * (zombies too): its threads (schedstat, in ns: a child's utime + stime
 * in ticks would lose up to a tick each, which a hundred short-lived
 * children turn into nothing) and the children it reaped (in ticks). */
static int64_t descendants_ns(pid_t pid)
{
    DIR *d = opendir("/proc");
    if (!d)
        return 0;
    size_t n = 0, cap = 0;
    struct pinfo {
        pid_t pid, ppid;
        unsigned long long own, reaped;
        bool below;
    } *ps = NULL;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (e->d_name[0] < '1' || e->d_name[0] > '9')
            continue;
        pid_t q = (pid_t)atoi(e->d_name);
        pid_t pp;
        unsigned long long own, reaped;
        if (q == pid || proc_stat(q, &pp, &own, &reaped) < 0)
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 256;
            struct pinfo *np = realloc(ps, cap * sizeof *np);
            if (!np)
                break;
            ps = np;
        }
        ps[n++] = (struct pinfo){ q, pp, own, reaped, pp == pid };
    }
    closedir(d);
    /* grandchildren and below: until nothing more is found */
    for (bool grew = true; grew;) {
        grew = false;
        for (size_t i = 0; i < n; i++) {
            if (ps[i].below)
                continue;
            for (size_t j = 0; j < n; j++)
                if (ps[j].below && ps[j].pid == ps[i].ppid) {
                    ps[i].below = grew = true;
                    break;
                }
        }
    }
    int64_t sum = 0;
    for (size_t i = 0; i < n; i++) {
        if (!ps[i].below)
            continue;
        int64_t threads = server_threads_ns(ps[i].pid);
        sum += (threads > 0 ? threads : ticks_ns(ps[i].own)) + ticks_ns(ps[i].reaped);
    }
    free(ps);
    return sum;
}

/* The CPU time of the server, in ns, or -1: its threads (schedstat, in
 * ns), the children it reaped (in ticks) and the processes below it still
 * there; see echo_cpu at the top. */
static int64_t server_cpu_ns(pid_t pid)
{
    pid_t pp;
    unsigned long long own, reaped;
    if (proc_stat(pid, &pp, &own, &reaped) < 0)
        return -1;
    int64_t threads = server_threads_ns(pid);
    if (threads < 0)
        return -1;
    return threads + ticks_ns(reaped) + descendants_ns(pid);
}

/* The CPU time all threads of process pid have used, in ns, or -1. */
static int64_t server_threads_ns(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    int64_t sum = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (e->d_name[0] == '.')
            continue;
        char file[320];
        snprintf(file, sizeof file, "/proc/%d/task/%s/schedstat", (int)pid, e->d_name);
        FILE *f = fopen(file, "r");
        long long ns = 0;
        if (f && fscanf(f, "%lld", &ns) == 1)
            sum += ns;
        if (f)
            fclose(f);
    }
    closedir(d);
    return sum;
}

/* The window's start before every connection has had a reply. */
#define NOT_YET (INT64_MAX / 4)

/* A run: n connections; once each has had a reply, warm_ns of warm-up,
 * then window_ns measured. */
static int run_load(const struct server *s, int n, int64_t warm_ns, int64_t window_ns,
                    struct result *res)
{
    memset(res, 0, sizeof *res);
    struct client *cl = calloc((size_t)n, sizeof *cl);
    int64_t *lat = malloc(MAX_SAMPLES * sizeof *lat);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (!cl || !lat || ep < 0)
        bench_die("setting up a run", ENOMEM);
    for (int i = 0; i < n; i++) {
        cl[i].fd = -1;
        cl[i].index = i;
    }
    size_t nlat = 0;
    long done_in_window = 0;
    int rc = connect_all(cl, n, s->port, ep, res->why, sizeof res->why);
    int64_t now = bench_now();
    int64_t start = now, t0 = NOT_YET, t1 = t0 + window_ns, last_reply = now, last_first = now;
    int outstanding = 0, unserved = n;      /* connections without a reply yet */
    int64_t cpu0 = -1, cpu1 = -1;
    /* The window lasts window_ns, longer when fewer than min_done replies
     * came in it (a busy machine can stall a short window): a figure is
     * never made of a handful of replies. */
    long min_done = n > 100 ? n : 100;
    bool snap0 = false, snap1 = false;
    for (int i = 0; i < n && rc == 0; i++) {
        int e = send_request(&cl[i], now);
        if (e < 0) {
            snprintf(res->why, sizeof res->why, "send on connection %d: %s", i, strerror(-e));
            rc = -1;
        } else {
            outstanding++;
        }
    }
    struct epoll_event evs[1024];
    while (rc == 0 && outstanding > 0) {
        now = bench_now();
        while (now >= t1 && done_in_window < min_done && t1 - t0 < MAX_WINDOW_NS)
            t1 += window_ns;
        if (!snap0 && now >= t0) {
            cpu0 = server_cpu_ns(s->pid);
            snap0 = true;
        }
        if (!snap1 && now >= t1) {
            cpu1 = server_cpu_ns(s->pid);
            snap1 = true;
        }
        int64_t until = now < t1 ? (now < t0 ? t0 : t1) : last_reply + STALL_NS;
        if (now >= t1 && now - last_reply >= STALL_NS) {
            snprintf(res->why, sizeof res->why,
                     "%d of %d requests still unanswered after 10 s without a reply",
                     outstanding, n);
            rc = -1;
            break;
        }
        if (unserved > 0 && now - last_first >= STALL_NS) {
            snprintf(res->why, sizeof res->why,
                     "%d of %d connections without a first reply, none for 10 s", unserved, n);
            rc = -1;
            break;
        }
        if (now < t1 && now - last_reply >= STALL_NS) {
            snprintf(res->why, sizeof res->why, "no reply for 10 s (%d requests outstanding)",
                     outstanding);
            rc = -1;
            break;
        }
        int64_t ms = (until - now + 999999) / 1000000;
        if (now < t1 && last_reply + STALL_NS < until)
            ms = (last_reply + STALL_NS - now + 999999) / 1000000;
        int k = epoll_wait(ep, evs, 1024, ms > 0 ? (int)ms : 0);
        for (int i = 0; i < k && rc == 0; i++) {
            struct client *c = evs[i].data.ptr;
            ssize_t got = recv(c->fd, c->reply + c->got, sizeof c->reply - c->got, 0);
            if (got < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (got <= 0) {
                snprintf(res->why, sizeof res->why, "connection %d %s after %llu requests",
                         c->index, got == 0 ? "closed by the server" : strerror(errno),
                         (unsigned long long)c->seq);
                rc = -1;
                break;
            }
            if (!c->busy) {
                snprintf(res->why, sizeof res->why,
                         "connection %d: %zd bytes that no request asked for", c->index, got);
                rc = -1;
                break;
            }
            c->got += (size_t)got;
            if (c->got < REQ)
                continue;
            if (c->got > REQ || memcmp(c->reply, c->want, REQ) != 0) {
                size_t at = 0;
                while (at < REQ && c->reply[at] == c->want[at])
                    at++;
                if (c->got > REQ && at == REQ)
                    snprintf(res->why, sizeof res->why,
                             "connection %d request %llu: %zu bytes in reply to %d",
                             c->index, (unsigned long long)c->seq, c->got, REQ);
                else
                    snprintf(res->why, sizeof res->why,
                             "connection %d request %llu: reply byte %zu is 0x%02x, want 0x%02x",
                             c->index, (unsigned long long)c->seq, at,
                             (unsigned char)c->reply[at], (unsigned char)c->want[at]);
                rc = -1;
                break;
            }
            int64_t t = bench_now();
            while (t >= t1 && done_in_window < min_done && t1 - t0 < MAX_WINDOW_NS)
                t1 += window_ns;
            if (!snap0 && t >= t0) {
                cpu0 = server_cpu_ns(s->pid);
                snap0 = true;
            }
            if (!snap1 && t >= t1) {
                cpu1 = server_cpu_ns(s->pid);
                snap1 = true;
            }
            last_reply = t;
            c->busy = false;
            outstanding--;
            if (c->seq == 1) {
                last_first = t;
                if (--unserved == 0) {
                    res->ready_ms = (double)(t - start) / 1e6;
                    t0 = t + warm_ns;
                    t1 = t0 + window_ns;
                }
            }
            if (t >= t0 && t < t1) {
                done_in_window++;
                if (nlat < MAX_SAMPLES)
                    lat[nlat++] = t - c->sent;
            }
            if (t < t1) {
                int e = send_request(c, t);
                if (e < 0) {
                    snprintf(res->why, sizeof res->why, "send on connection %d: %s", c->index,
                             strerror(-e));
                    rc = -1;
                    break;
                }
                outstanding++;
            }
        }
    }
    if (!snap1)
        cpu1 = server_cpu_ns(s->pid);
    for (int i = 0; i < n; i++)
        if (cl[i].fd >= 0)
            close(cl[i].fd);
    close(ep);
    free(cl);
    if (rc == 0 && done_in_window == 0) {
        snprintf(res->why, sizeof res->why, "no reply completed in the measured window");
        rc = -1;
    }
    if (rc == 0) {
        res->rate = (double)done_in_window * 1e9 / (double)(t1 - t0);
        qsort(lat, nlat, sizeof *lat, cmp_i64);
        res->p50_us = (double)lat[(nlat - 1) / 2] / 1000.0;
        size_t i99 = (size_t)((double)nlat * 0.99 + 0.999999);
        res->p99_us = (double)lat[(i99 ? i99 : 1) - 1] / 1000.0;
        res->cpu_ns = cpu0 >= 0 && cpu1 >= cpu0 ? (double)(cpu1 - cpu0) / (double)done_in_window
                                                : -1;
    }
    free(lat);
    return rc;
}

/* VmRSS of process pid in bytes, or -1. */
static long long server_rss(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long long kb = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %lld kB", &kb) == 1)
            break;
    fclose(f);
    return kb < 0 ? -1 : kb * 1024;
}

/* idle_conn_rss for one server: n connections, one request answered on
 * each, then left idle.  Returns 0 with *bytes per connection, or -1 with
 * why. */
static int idle_run(const struct server *s, int n, double *bytes, char *why, size_t whylen)
{
    struct client *cl = calloc((size_t)n, sizeof *cl);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (!cl || ep < 0)
        bench_die("setting up a run", ENOMEM);
    for (int i = 0; i < n; i++) {
        cl[i].fd = -1;
        cl[i].index = i;
    }
    long long before = server_rss(s->pid), after = -1;
    int rc = before < 0 ? -1 : 0;
    if (rc < 0)
        snprintf(why, whylen, "cannot read /proc/%d/status", (int)s->pid);
    if (rc == 0)
        rc = connect_all(cl, n, s->port, ep, why, whylen);
    int64_t now = bench_now();
    for (int i = 0; i < n && rc == 0; i++) {
        int e = send_request(&cl[i], now);
        if (e < 0) {
            snprintf(why, whylen, "send on connection %d: %s", i, strerror(-e));
            rc = -1;
        }
    }
    int left = n;
    int64_t last = bench_now();
    struct epoll_event evs[1024];
    while (rc == 0 && left > 0) {
        if (bench_now() - last >= STALL_NS) {
            snprintf(why, whylen, "%d of %d requests unanswered after 10 s without a reply",
                     left, n);
            rc = -1;
            break;
        }
        int k = epoll_wait(ep, evs, 1024, 100);
        for (int i = 0; i < k && rc == 0; i++) {
            struct client *c = evs[i].data.ptr;
            ssize_t got = recv(c->fd, c->reply + c->got, sizeof c->reply - c->got, 0);
            if (got < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (got <= 0 || !c->busy) {
                snprintf(why, whylen, "connection %d: %s", c->index,
                         got == 0 ? "closed by the server"
                         : got < 0 ? strerror(errno) : "bytes that no request asked for");
                rc = -1;
                break;
            }
            c->got += (size_t)got;
            if (c->got < REQ)
                continue;
            if (c->got > REQ || memcmp(c->reply, c->want, REQ) != 0) {
                snprintf(why, whylen, "connection %d: a wrong reply", c->index);
                rc = -1;
                break;
            }
            c->busy = false;
            left--;
            last = bench_now();
        }
    }
    if (rc == 0) {
        after = server_rss(s->pid);
        if (after < 0) {
            snprintf(why, whylen, "cannot read /proc/%d/status", (int)s->pid);
            rc = -1;
        }
    }
    for (int i = 0; i < n; i++)
        if (cl[i].fd >= 0)
            close(cl[i].fd);
    close(ep);
    free(cl);
    if (rc == 0)
        *bytes = (double)(after - before) / n;
    return rc;
}

/* idle_conn_rss for every server that keeps no thread or process per
 * connection; conc-coroutine first (the others are compared against it). */
static void run_idle(struct server *sv, int nsv, int fd_room)
{
    static const char *const systems[] = { "conc-coroutine", "conc-coroutine-own",
                                           "conc-coroutine-copied", "conc-epoll",
                                           "conc-reactor", "epoll-c", "libuv", "go", "gevent" };
    int n = bench_quick() ? 1000 : 100000;
    if (n > fd_room) {
        fprintf(stderr, "bench_echo: idle_conn_rss with %d connections, not %d: "
                "RLIMIT_NOFILE's hard limit is %ld and could not be raised (%s)\n", fd_room, n,
                nofile_hard, nofile_why);
        n = fd_room;
    }
    for (size_t j = 0; j < BENCH_ARRAY_LEN(systems); j++)
        for (int k = 0; k < nsv; k++) {
            struct server *s = &sv[k];
            if (strcmp(s->system, systems[j]) != 0 || !bench_enabled("idle_conn_rss", s->system))
                continue;
            char why[192];
            double bytes = 0;
            if (s->skip)
                bench_skip("idle_conn_rss", s->system, NULL, s->skip);
            else if (n <= 0)
                bench_skip("idle_conn_rss", s->system, NULL, "RLIMIT_NOFILE leaves no room");
            else if (!server_alive(s) || idle_run(s, n, &bytes, why, sizeof why) < 0) {
                const char *w = s->dead ? s->why : why;
                fprintf(stderr, "bench_echo: %s, idle_conn_rss: %s\n", s->system, w);
                if (s->is_conc)
                    bench_fail("idle_conn_rss", s->system, "%s", w);
                else
                    bench_skip("idle_conn_rss", s->system, NULL, w);
            } else {
                bench_record("idle_conn_rss", s->system, bytes, "bytes");
            }
        }
}

/* ------------------------------------------------------------ the rounds */

static double median(double *v, int n)
{
    for (int i = 1; i < n; i++)
        for (int k = i; k > 0 && v[k - 1] > v[k]; k--) {
            double t = v[k];
            v[k] = v[k - 1];
            v[k - 1] = t;
        }
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

struct level {
    int conns;
    const char *rate, *p50, *p99, *cpu, *ready;     /* metric names (NULL: not measured) */
};

static bool level_enabled(const struct level *l, const char *system)
{
    return bench_enabled(l->rate, system) || (l->p50 && bench_enabled(l->p50, system)) ||
           (l->p99 && bench_enabled(l->p99, system)) || (l->cpu && bench_enabled(l->cpu, system)) ||
           (l->ready && bench_enabled(l->ready, system));
}

static void level_each(const struct level *l, const char *system,
                       void (*fn)(const char *metric, const char *system, const char *why))
{
    const char *m[] = { l->rate, l->p50, l->p99, l->cpu, l->ready };
    for (int i = 0; i < 5; i++)
        if (m[i] && bench_enabled(m[i], system))
            fn(m[i], system, NULL);
}

static const char *level_why;

static void skip_one(const char *metric, const char *system, const char *why)
{
    (void)why;
    bench_skip(metric, system, NULL, level_why);
}

static void fail_one(const char *metric, const char *system, const char *why)
{
    (void)why;
    bench_fail(metric, system, "%s", level_why);
}

static void run_level(const struct level *l, struct server *sv, int nsv, int fd_room)
{
    int reps = bench_reps();
    double window = (bench_quick() ? 0.05 : 0.5) * bench_scale();
    int64_t window_ns = (int64_t)(window * 1e9), warm_ns = window_ns / 5;
    double *rate = calloc((size_t)(nsv * reps), sizeof *rate);
    double *p50 = calloc((size_t)(nsv * reps), sizeof *p50);
    double *p99 = calloc((size_t)(nsv * reps), sizeof *p99);
    double *cpu = calloc((size_t)(nsv * reps), sizeof *cpu);
    double *ready = calloc((size_t)(nsv * reps), sizeof *ready);
    int *runs = calloc((size_t)nsv, sizeof *runs);
    char (*failed)[192] = calloc((size_t)nsv, sizeof *failed);
    if (!rate || !p50 || !p99 || !cpu || !ready || !runs || !failed)
        bench_die("calloc", ENOMEM);

    for (int r = 0; r < reps; r++)
        for (int j = 0; j < nsv; j++) {
            struct server *s = &sv[(j + r) % nsv];
            int k = (int)(s - sv);
            if (s->skip || !level_enabled(l, s->system) || l->conns > s->max_conns ||
                l->conns > fd_room || failed[k][0] || !server_alive(s))
                continue;
            struct result res;
            if (run_load(s, l->conns, warm_ns, window_ns, &res) < 0) {
                snprintf(failed[k], sizeof failed[k], "%s", res.why);
                continue;
            }
            rate[k * reps + runs[k]] = res.rate;
            p50[k * reps + runs[k]] = res.p50_us;
            p99[k * reps + runs[k]] = res.p99_us;
            cpu[k * reps + runs[k]] = res.cpu_ns;
            ready[k * reps + runs[k]] = res.ready_ms;
            runs[k]++;
        }

    for (int k = 0; k < nsv; k++) {
        struct server *s = &sv[k];
        if (!level_enabled(l, s->system))
            continue;
        char why[224];
        if (s->skip) {
            level_why = s->skip;
            level_each(l, s->system, skip_one);
        } else if (l->conns > s->max_conns) {
            level_why = "serves one client at a time";
            level_each(l, s->system, skip_one);
        } else if (l->conns > fd_room) {
            snprintf(why, sizeof why, "RLIMIT_NOFILE allows %d connections", fd_room);
            level_why = why;
            level_each(l, s->system, skip_one);
        } else if (failed[k][0] || runs[k] < reps) {
            if (!failed[k][0])
                snprintf(failed[k], sizeof failed[k], "%s", s->why);
            level_why = failed[k];
            fprintf(stderr, "bench_echo: %s at %d connections: %s\n", s->system, l->conns,
                    failed[k]);
            if (s->is_conc) {
                level_each(l, s->system, fail_one);
            } else {
                level_each(l, s->system, skip_one);
            }
        } else {
            if (bench_enabled(l->rate, s->system))
                bench_record(l->rate, s->system, median(rate + k * reps, reps), "req/s");
            if (l->p50 && bench_enabled(l->p50, s->system))
                bench_record(l->p50, s->system, median(p50 + k * reps, reps), "us");
            if (l->p99 && bench_enabled(l->p99, s->system))
                bench_record(l->p99, s->system, median(p99 + k * reps, reps), "us");
            if (l->ready && bench_enabled(l->ready, s->system))
                bench_record(l->ready, s->system, median(ready + k * reps, reps), "ms");
            if (l->cpu && bench_enabled(l->cpu, s->system)) {
                int known = 0;          /* the runs whose reading worked */
                for (int i = 0; i < reps; i++)
                    if (cpu[k * reps + i] > 0)
                        cpu[k * reps + known++] = cpu[k * reps + i];
                double c = known ? median(cpu + k * reps, known) : -1;
                if (c > 0)
                    bench_record(l->cpu, s->system, c, "ns");
                else
                    bench_skip(l->cpu, s->system, NULL, "cannot read its /proc/PID/task/*/schedstat");
            }
        }
    }
    free(rate);
    free(p50);
    free(p99);
    free(cpu);
    free(ready);
    free(runs);
    free(failed);
}

/* Raises RLIMIT_NOFILE's hard limit to what idle_conn_rss needs (with
 * CAP_SYS_RESOURCE, as root normally has; at most fs.nr_open, the kernel's
 * bound), then the soft limit to the hard one; returns how many
 * connections fit (the load generator and each server need one descriptor
 * per connection and a few more; the servers inherit the limit). */
static int raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return 0;
    rlim_t need = (bench_quick() ? 1000 : 100000) + 1024;
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need) {
        long long nr_open = 0;
        FILE *f = fopen("/proc/sys/fs/nr_open", "r");
        if (f) {
            if (fscanf(f, "%lld", &nr_open) != 1)
                nr_open = 0;
            fclose(f);
        }
        rlim_t want = nr_open > 0 && (rlim_t)nr_open < need ? (rlim_t)nr_open : need;
        struct rlimit up = { want, want };
        if (want > rl.rlim_max && setrlimit(RLIMIT_NOFILE, &up) < 0)
            snprintf(nofile_why, sizeof nofile_why, "setrlimit: %s%s", strerror(errno),
                     errno == EPERM ? ", the process lacks CAP_SYS_RESOURCE" : "");
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    nofile_hard = rl.rlim_max == RLIM_INFINITY ? -1 : (long)rl.rlim_max;
    if (rl.rlim_cur < rl.rlim_max) {
        rlim_t want = rl.rlim_max;
        if (want == RLIM_INFINITY || want > 1u << 20)
            want = 1u << 20;
        if (want > rl.rlim_cur) {
            rl.rlim_cur = want;
            setrlimit(RLIMIT_NOFILE, &rl);
            getrlimit(RLIMIT_NOFILE, &rl);
        }
    }
    long room = (long)rl.rlim_cur - 64;
    return room < 0 ? 0 : room > 1000000 ? 1000000 : (int)room;
}

int main(int argc, char **argv)
{
    bench_init(argc, argv, "bench_echo: echo-upper-server's models vs epoll in C, libuv, Go, "
               "gevent, Python selectors, asyncio and socketserver",
               metrics, BENCH_ARRAY_LEN(metrics));
    int fd_room = raise_nofile();

    /* The models and their --workers (prefork, coroutine, reactor) and
     * --stack (coroutine: both stack modes, by name). */
    static const struct {
        const char *model, *workers, *stack;
    } models[] = {
        { "epoll", NULL, NULL },     { "select", NULL, NULL },    { "poll", NULL, NULL },
        { "nonblocking", NULL, NULL }, { "sync", NULL, NULL },    { "threading", NULL, NULL },
        { "forking", NULL, NULL },   { "prefork", "1", NULL },    { "coroutine", "1", NULL },
        { "coroutine", "1", "own" }, { "coroutine", "1", "copied" },
        { "reactor", "1", NULL },    { "prefork", "2", NULL },    { "coroutine", "2", NULL },
        { "reactor", "2", NULL },
    };
    struct server sv[24];
    int nsv = 0;
    memset(sv, 0, sizeof sv);
    static char conc_systems[BENCH_ARRAY_LEN(models)][32];
    for (size_t i = 0; i < BENCH_ARRAY_LEN(models); i++) {
        struct server *s = &sv[nsv++];
        const char *w = models[i].workers, *st = models[i].stack;
        if (w && strcmp(w, "1") != 0)
            snprintf(conc_systems[i], sizeof conc_systems[i], "conc-%s-w%s", models[i].model, w);
        else if (st)
            snprintf(conc_systems[i], sizeof conc_systems[i], "conc-%s-%s", models[i].model, st);
        else
            snprintf(conc_systems[i], sizeof conc_systems[i], "conc-%s", models[i].model);
        s->system = conc_systems[i];
        s->is_conc = true;
        s->max_conns = strcmp(models[i].model, "sync") == 0 ? 1 : 1000000;
        char *a[] = { CONC_ECHO_SERVER, "--model", (char *)models[i].model, "0",
                      NULL, NULL, NULL, NULL, NULL };
        int na = 3;
        if (w) {
            a[na++] = "--workers";
            a[na++] = (char *)w;
        }
        if (st) {
            a[na++] = "--stack";
            a[na++] = (char *)st;
        }
        a[na] = "0";
        memcpy(s->argv, a, sizeof a);
        if (!CONC_ECHO_SERVER[0])
            set_skip(s, "%s", "the example echo-upper-server was not built "
                     "(-DCONC_BUILD_EXAMPLES=ON)");
    }
    struct server *s = &sv[nsv++];
    s->system = "epoll-c";
    s->max_conns = 1000000;
    s->argv[0] = CONC_ECHO_EPOLL_PEER;
    s->argv[1] = "0";
    if (!CONC_ECHO_EPOLL_PEER[0])
        set_skip(s, "%s", "the peer echo_epoll was not built");

    s = &sv[nsv++];
    s->system = "libuv";
    s->max_conns = 1000000;
    s->argv[0] = CONC_ECHO_LIBUV_PEER;
    s->argv[1] = "0";
    if (!CONC_ECHO_LIBUV_PEER[0])
        set_skip(s, "%s", "libuv was not found when configuring (install libuv1-dev, or run "
                 "make bench)");

    s = &sv[nsv++];
    s->system = "go";
    s->max_conns = 1000000;
    s->argv[1] = "0";

    /* The Python peers; `module` is one that is not in the standard
     * library (its package in `package`): without it the peer is skipped. */
    static const struct {
        const char *file, *system, *module, *package;
    } py[] = {
        { "echo_selectors.py", "python-selectors", NULL, NULL },
        { "echo_asyncio.py", "python-asyncio", NULL, NULL },
        { "echo_gevent.py", "gevent", "gevent", "python3-gevent" },
        { "echo_threading.py", "python-threading", NULL, NULL },
        { "echo_forking.py", "python-forking", NULL, NULL },
    };
    static char py_peers[BENCH_ARRAY_LEN(py)][512];
    for (size_t i = 0; i < BENCH_ARRAY_LEN(py); i++) {
        s = &sv[nsv++];
        s->system = py[i].system;
        s->max_conns = 1000000;
        snprintf(py_peers[i], sizeof py_peers[i], "%s", bench_peer_path(py[i].file));
        s->argv[0] = (char *)bench_python();
        s->argv[1] = py_peers[i];
        s->argv[2] = "0";
        if (access(bench_python(), X_OK) != 0)
            set_skip(s, "cannot run %s", bench_python());
        else if (py[i].module && server_wanted(s) && !python_has(py[i].module))
            set_skip(s, "%s is not installed (make bench installs it)", py[i].package);
    }

    /* Start every server that takes part (the Go peer is built first). */
    for (int i = 0; i < nsv; i++) {
        s = &sv[i];
        if (!server_wanted(s) || s->skip)
            continue;
        if (strcmp(s->system, "go") == 0 && !(s->argv[0] = (char *)build_go(s)))
            continue;
        server_start(s);
        if (s->dead && !s->is_conc)
            set_skip(s, "the peer did not start: %s", s->why);
    }
    bench_pin_worker(1);
    run_idle(sv, nsv, fd_room);

    static const struct level levels[] = {
        { 1, "echo_c1", NULL, NULL, NULL, NULL },
        { 100, "echo_c100", NULL, NULL, "echo_cpu_c100", NULL },
        { 1000, "echo_c1000", "echo_p50_c1000", "echo_p99_c1000", "echo_cpu_c1000",
          "echo_ready_c1000" },
    };
    for (size_t i = 0; i < BENCH_ARRAY_LEN(levels); i++)
        run_level(&levels[i], sv, nsv, fd_room);

    /* conc's servers must end gracefully (exit 0) on SIGTERM. */
    int status = 0;
    for (int i = 0; i < nsv; i++) {
        bool running = sv[i].pid > 0 && server_alive(&sv[i]);
        if (sv[i].pid <= 0 && sv[i].is_conc && sv[i].dead && !sv[i].skip) {
            fprintf(stderr, "bench_echo: %s: %s\n", sv[i].system, sv[i].why);
            status = 1;
        }
        if (!running)
            continue;
        int code = server_stop(&sv[i]);
        if (sv[i].is_conc && code != 0) {
            fprintf(stderr, "bench_echo: %s did not exit 0 on SIGTERM (%d)\n", sv[i].system,
                    code);
            status = 1;
        }
    }
    if (tmp_dir[0])
        nftw(tmp_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    int rc = bench_report();
    return rc ? rc : status;
}
