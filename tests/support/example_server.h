/*
 * example_server.h - starting a server example from CONC_EXAMPLES_DIR on
 * port 0 (the port is read from its ready line), stopping it and reading
 * what it wrote, and the test's own TCP sockets to talk to it.  Every wait
 * has a hang guard of GUARD_MS (the including test may set its own).
 */
#ifndef CONC_TEST_EXAMPLE_SERVER_H
#define CONC_TEST_EXAMPLE_SERVER_H

#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conc.h"
#include "support/run_example.h"
#include "support/task_state.h"

#ifndef GUARD_MS
#define GUARD_MS 60000          /* hang guard for every wait here */
#endif

struct srv {
    pid_t pid;
    int out;                    /* its stdout, after the ready line */
    FILE *err;
    int port;
    char ready[256];            /* the ready line, without its newline */
};

/* Starts a server example with the default signal dispositions and reads
 * its first line (into s.ready, without its newline); s.port is left 0. */
static inline struct srv spawn_server(const char *name, const char *const *args)
{
    char path[512];
    const char *argv[32];
    example_argv(name, args, path, sizeof path, argv);
    struct srv s = { .err = tmpfile() };
    cr_assert_not_null(s.err);
    int p[2];
    cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
    fflush(NULL);
    s.pid = fork();
    cr_assert_geq(s.pid, 0);
    if (s.pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);       /* a failed test leaves no server */
        dup2(p[1], STDOUT_FILENO);
        dup2(fileno(s.err), STDERR_FILENO);
        int sigs[] = { SIGINT, SIGTERM, SIGPIPE, SIGCHLD };
        for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
            signal(sigs[i], SIG_DFL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execv(path, (char *const *)argv);
        _exit(127);
    }
    close(p[1]);
    s.out = p[0];
    size_t len = 0;
    while (!memchr(s.ready, '\n', len)) {
        struct pollfd pf = { .fd = s.out, .events = POLLIN };
        cr_assert_gt(poll(&pf, 1, GUARD_MS), 0, "%s: no ready line", name);
        cr_assert_lt(len, sizeof s.ready - 1, "%s: ready line too long", name);
        ssize_t n = read(s.out, s.ready + len, 1);      /* the line only */
        cr_assert_eq(n, 1, "%s ended before its ready line", name);
        len++;
    }
    s.ready[len - 1] = '\0';
    return s;
}

/* Starts a server example and reads its ready line ("... listening on
 * HOST:PORT ..."), with the default signal dispositions. */
static inline struct srv start_server(const char *name, const char *const *args)
{
    struct srv s = spawn_server(name, args);
    const char *at = strstr(s.ready, "listening on ");
    cr_assert_not_null(at, "%s: ready line '%s'", name, s.ready);
    const char *end = strchr(at + 13, ' '), *colon = NULL;
    for (const char *q = at + 13; *q && q != end; q++)
        if (*q == ':')
            colon = q;
    cr_assert_not_null(colon, "%s: no port in '%s'", name, s.ready);
    s.port = atoi(colon + 1);
    cr_assert(s.port > 0 && s.port < 65536, "%s: port in '%s'", name, s.ready);
    return s;
}

/* Reads all that is left of fd (until EOF) into a new string. */
static inline char *read_rest(int fd)
{
    struct buf b = { 0 };
    buf_add(&b, "", 0);
    for (;;) {
        struct pollfd pf = { .fd = fd, .events = POLLIN };
        cr_assert_gt(poll(&pf, 1, GUARD_MS), 0, "output never ended");
        char chunk[4096];
        ssize_t n = read(fd, chunk, sizeof chunk);
        if (n <= 0)
            break;
        buf_add(&b, chunk, (size_t)n);
    }
    return b.data;
}

/* Sends sig (unless 0) to the server and waits for its end (hang guard).
 * Returns the wait status; *out and *err (unless NULL; free them) get what
 * it wrote after its ready line. */
static inline int stop_server(struct srv *s, int sig, char **out, char **err)
{
    if (sig)
        cr_assert_eq(kill(s->pid, sig), 0);
    char *o = read_rest(s->out);    /* EOF: it ended (or closed stdout) */
    close(s->out);
    int status;
    int64_t deadline = conc_now() + (int64_t)GUARD_MS * 1000000;
    pid_t r;
    while ((r = waitpid(s->pid, &status, WNOHANG)) == 0 && conc_now() < deadline)
        usleep(1000);
    if (r == 0) {
        kill(s->pid, SIGKILL);
        waitpid(s->pid, &status, 0);
    }
    cr_assert_neq(r, 0, "the server did not end");
    struct stat st;
    cr_assert_eq(fstat(fileno(s->err), &st), 0);
    char *e = calloc(1, (size_t)st.st_size + 1);
    cr_assert_not_null(e);
    if (st.st_size > 0)
        cr_assert_eq(pread(fileno(s->err), e, (size_t)st.st_size, 0), st.st_size);
    fclose(s->err);
    if (out)
        *out = o;
    else
        free(o);
    if (err)
        *err = e;
    else
        free(e);
    return status;
}

/* The number of descriptors process pid has open. */
static inline int fd_count(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    cr_assert_not_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

/* The number of descriptors process pid has open once it has settled:
 * every thread of it asleep (a server's loops parked, none still setting
 * up the hub it serves from: a coroutine server starts a hub per CPU, and
 * a hub that has not yet served anyone may still be making its epoll
 * instance) and the count the same on two looks with every thread asleep
 * in between (hang guard). */
static inline int settled_fd_count(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    int64_t deadline = conc_now() + (int64_t)GUARD_MS * 1000000;
    int last = -1;
    for (;;) {
        bool asleep = true;
        DIR *d = opendir(path);
        cr_assert_not_null(d);
        for (struct dirent *e; asleep && (e = readdir(d)) != NULL;) {
            if (e->d_name[0] == '.')
                continue;
            /* a thread that ended (state 0) holds nothing up */
            char st = task_state(pid, (pid_t)atoi(e->d_name));
            asleep = st == 0 || st == 'S' || st == 'D';
        }
        closedir(d);
        if (asleep) {
            int n = fd_count(pid);
            if (n == last)
                return n;
            last = n;
        }
        cr_assert_lt(conc_now(), deadline, "process %d never settled", (int)pid);
        usleep(20000);
    }
}

/* ------------------------------------------------- the test's own sockets */

static inline int tcp_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0, "connect: %s",
                 strerror(errno));
    return fd;
}

static inline void send_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        ssize_t k = send(fd, c, n, MSG_NOSIGNAL);
        cr_assert_gt(k, 0, "send: %s", strerror(errno));
        c += k;
        n -= (size_t)k;
    }
}

/* Receives exactly n bytes (hang guard). */
static inline void recv_exact(int fd, void *p, size_t n)
{
    char *c = p;
    while (n > 0) {
        struct pollfd pf = { .fd = fd, .events = POLLIN };
        cr_assert_gt(poll(&pf, 1, GUARD_MS), 0, "no reply (%zu bytes missing)", n);
        ssize_t k = recv(fd, c, n, 0);
        cr_assert_gt(k, 0, "recv: %s", k == 0 ? "end of stream" : strerror(errno));
        c += k;
        n -= (size_t)k;
    }
}

/* Waits until fd's peer closed it: recv gives 0 (hang guard). */
static inline void expect_eof(int fd)
{
    struct pollfd pf = { .fd = fd, .events = POLLIN };
    cr_assert_gt(poll(&pf, 1, GUARD_MS), 0, "the connection was never closed");
    char c;
    ssize_t k = recv(fd, &c, 1, 0);
    cr_assert(k == 0 || (k < 0 && errno == ECONNRESET), "recv gave %zd", k);
}

#endif
