/*
 * test_examples_server.c - the socketserver examples from
 * CONC_EXAMPLES_DIR: hotline-server and hotline-client (the 10086 phone
 * menu: the dialog end to end and byte by byte, callers served at once, a
 * silent caller holding up no one), ftp-server in each of its models and
 * ftp-client (ls, get and put round trips with the contents compared,
 * names that leave the root refused while the server keeps serving, a
 * corrupted or cut upload never stored, a corrupted download never saved,
 * nothing of an upload left by a stop or a killed session process, stale
 * temporary files removed at start, the coroutine model's file calls and
 * GET's sendfile made off its hubs, and its listings and opens too: held
 * up, they hold up no other session; many clients at once), stopping by
 * SIGTERM (exit 0, the stop line, also with a call or a session still
 * open: it is cut after the grace), the descriptors and child processes of
 * a server back to where they started, and bad command lines.
 *
 * Servers listen on port 0 and the port is read from their ready line, so
 * tests never race for a port; no test sleeps to synchronise (waits for a
 * condition poll it, with a hang guard).
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
#include <limits.h>
#include <sys/fanotify.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sodium.h>

#include "conc.h"
#include "support/sanitized.h"
#define GUARD_MS 60000          /* hang guard for every wait here */
#include "support/example_server.h"
#define GUARD_NS (GUARD_MS * 1000000LL)

/* The three Tests of a check run against each model of ftp-server. */
#define EACH_FTP_MODEL(check, secs)                                                     \
    Test(ftp, check##_threading, .timeout = secs) { check("threading"); }                \
    Test(ftp, check##_forking, .timeout = secs) { check("forking"); }                    \
    Test(ftp, check##_coroutine, .timeout = secs) { check("coroutine"); }

/* ------------------------------------------------------------- servers */

/* Stops the server with SIGTERM and checks the clean end: exit 0, the
 * stop line `want`, nothing on stderr. */
static void stop_clean(struct srv *s, const char *want)
{
    char *out, *e;
    int status = stop_server(s, SIGTERM, &out, &e);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %#x\nstderr:\n%s", status,
              e);
    cr_assert_str_eq(out, want);
    cr_assert_str_empty(e, "the server wrote to stderr:\n%s", e);
    free(out);
    free(e);
}

/* Waits (hang guard) until pid has at most `fds` descriptors and no child.
 * At most: a forking server closes a session's pidfd just after reaping it,
 * so a base taken as the last child went may still count that pidfd. */
static void wait_settled(pid_t pid, int fds)
{
    int64_t deadline = conc_now() + GUARD_NS;
    pid_t kids[8];
    int n, k;
    while ((n = fd_count(pid)) > fds || (k = children_of(pid, kids, 8)) != 0) {
        cr_assert_lt(conc_now(), deadline, "the server keeps %d descriptors (%d before) and %d "
                     "children", n, fds, children_of(pid, kids, 8));
        usleep(1000);
    }
}

/* ------------------------------------------------- the test's own sockets */

static void send_str(int fd, const char *s)
{
    send_all(fd, s, strlen(s));
}

/* Receives one line (byte by byte, so nothing after it is taken) into
 * line, without its newline. */
static void recv_line(int fd, char *line, size_t cap)
{
    size_t n = 0;
    for (;;) {
        char c;
        recv_exact(fd, &c, 1);
        if (c == '\n')
            break;
        cr_assert_lt(n + 1, cap, "line too long: '%.*s'", (int)n, line);
        line[n++] = c;
    }
    line[n] = '\0';
}

static void expect_line(int fd, const char *want)
{
    char line[2048];
    recv_line(fd, line, sizeof line);
    cr_assert_str_eq(line, want);
}

/* Receives a line and checks that it starts with prefix. */
static void expect_prefix(int fd, const char *prefix)
{
    char line[2048];
    recv_line(fd, line, sizeof line);
    cr_assert_eq(strncmp(line, prefix, strlen(prefix)), 0, "want '%s...', got '%s'", prefix,
                 line);
}

/* ------------------------------------------------------------- hotline */

#define GREETING "Welcome to the 10086 hotline. Enter 0 for an operator, or exit to hang up."
#define OPERATOR "Calls may be recorded. Please hold for the next free operator."
#define GOODBYE "Thank you for calling 10086. Goodbye."
#define AGAIN "Sorry, I did not understand that. Please try again."

static struct srv start_hotline(void)
{
    const char *args[] = { "0", NULL };
    struct srv s = start_server("hotline-server", args);
    char want[96];
    snprintf(want, sizeof want, "hotline-server: listening on 127.0.0.1:%d (model threading)",
             s.port);
    cr_assert_str_eq(s.ready, want);
    return s;
}

Test(hotline, client_dialog, .timeout = 120)
{
    struct srv s = start_hotline();
    char port[16];
    snprintf(port, sizeof port, "%d", s.port);
    const char *args[] = { "127.0.0.1", port, NULL };
    struct run r = run_example_input("hotline-client", args, "0\nbalance\nexit\nnever sent\n");
    assert_success(&r, "hotline-client");
    cr_assert_str_eq(r.out, "receive: " GREETING "\n"
                            "please input: 0\n"
                            "receive: " OPERATOR "\n"
                            "please input: balance\n"
                            "receive: " AGAIN "\n"
                            "please input: exit\n"
                            "receive: " GOODBYE "\n");
    run_free(&r);

    /* The end of the input hangs up with "exit". */
    r = run_example_input("hotline-client", args, "1001");
    assert_success(&r, "hotline-client at the end of its input");
    cr_assert_str_eq(r.out, "receive: " GREETING "\n"
                            "please input: 1001\n"
                            "receive: " AGAIN "\n"
                            "please input: exit\n"
                            "receive: " GOODBYE "\n");
    run_free(&r);
    stop_clean(&s, "hotline-server: stopped by SIGTERM after 2 calls\n");
}

Test(hotline, byte_by_byte, .timeout = 60)
{
    struct srv s = start_hotline();
    int base = fd_count(s.pid);
    int fd = tcp_connect(s.port);
    expect_line(fd, GREETING);
    send_str(fd, "0\r\n");                      /* a CRLF line */
    expect_line(fd, OPERATOR);
    send_str(fd, "e");                          /* a line in pieces */
    send_str(fd, "xi");
    send_str(fd, "t2\n");
    expect_line(fd, AGAIN);
    char longline[1000];
    memset(longline, 'x', sizeof longline);     /* over the limit: one answer */
    longline[sizeof longline - 1] = '\n';
    send_all(fd, longline, sizeof longline);
    expect_line(fd, AGAIN);
    send_str(fd, "0\n0\n");                     /* two lines in one send */
    expect_line(fd, OPERATOR);
    expect_line(fd, OPERATOR);
    send_str(fd, "exit\n");
    expect_line(fd, GOODBYE);
    expect_eof(fd);
    close(fd);
    /* A last line cut by the hang-up (no newline) is answered. */
    fd = tcp_connect(s.port);
    expect_line(fd, GREETING);
    send_str(fd, "0");
    cr_assert_eq(shutdown(fd, SHUT_WR), 0);
    expect_line(fd, OPERATOR);
    expect_eof(fd);
    close(fd);
    /* A caller that hangs up without a word, and one that resets. */
    fd = tcp_connect(s.port);
    expect_line(fd, GREETING);
    close(fd);
    fd = tcp_connect(s.port);
    expect_line(fd, GREETING);
    struct linger lg = { 1, 0 };
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
    wait_settled(s.pid, base);
    stop_clean(&s, "hotline-server: stopped by SIGTERM after 4 calls\n");
}

/* 50 callers connected at once each get the greeting before any of them
 * says a word (a thread per caller: none waits for another), and a silent
 * one holds up no one. */
Test(hotline, callers_at_once, .timeout = 120)
{
    struct srv s = start_hotline();
    int base = fd_count(s.pid);
    enum { N = 50 };
    int fd[N];
    for (int i = 0; i < N; i++)
        fd[i] = tcp_connect(s.port);
    for (int i = N - 1; i >= 0; i--)
        expect_line(fd[i], GREETING);
    for (int i = 1; i < N; i++) {               /* fd[0] stays silent */
        send_str(fd[i], i % 2 ? "0\n" : "what\n");
        expect_line(fd[i], i % 2 ? OPERATOR : AGAIN);
    }
    for (int i = 1; i < N; i++) {
        send_str(fd[i], "exit\n");
        expect_line(fd[i], GOODBYE);
        expect_eof(fd[i]);
        close(fd[i]);
    }
    send_str(fd[0], "exit\n");
    expect_line(fd[0], GOODBYE);
    close(fd[0]);
    wait_settled(s.pid, base);
    stop_clean(&s, "hotline-server: stopped by SIGTERM after 50 calls\n");
}

/* A caller still on the line when the server stops is cut off after the
 * grace period; the server still ends cleanly. */
Test(hotline, stop_with_a_caller_on_the_line, .timeout = 60)
{
    struct srv s = start_hotline();
    int fd = tcp_connect(s.port);
    expect_line(fd, GREETING);
    stop_clean(&s, "hotline-server: stopped by SIGTERM after 1 call\n");
    expect_eof(fd);
    close(fd);
}

Test(hotline, client_errors, .timeout = 60)
{
    /* Nobody listening. */
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = { .sin_family = AF_INET };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    cr_assert_eq(bind(l, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(getsockname(l, (struct sockaddr *)&a, &len), 0);
    char port[16];
    snprintf(port, sizeof port, "%d", ntohs(a.sin_port));
    const char *args[] = { "127.0.0.1", port, NULL };
    struct run r = run_example_input("hotline-client", args, "0\n");
    cr_assert(exited_with(&r, 1), "status %#x", r.status);
    cr_assert_not_null(strstr(r.err, "hotline-client: cannot connect to 127.0.0.1:"), "%s",
                       r.err);
    run_free(&r);
    close(l);

    const char *const bad[][5] = {
        { NULL }, { "127.0.0.1", NULL }, { "127.0.0.1", "0", NULL }, { "", "80", NULL },
        { "h", "1", "x", NULL }, { "--timeout", "0", "h", "1", NULL },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_refused("hotline-client", bad[i]);
    const char *const sbad[][4] = { { NULL }, { "65536", NULL }, { "x", NULL },
                                    { "1", "2", NULL }, { "--host", "", "0", NULL } };
    for (size_t i = 0; i < sizeof sbad / sizeof sbad[0]; i++)
        assert_refused("hotline-server", sbad[i]);
}

/* ----------------------------------------------------------------- ftp */

/* A scratch directory: root/ (served), outside/ (beside it), local/ (the
 * client's). */
struct tree {
    char top[64], root[96], outside[96], local[96];
};

static void write_file(const char *path, const void *data, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    cr_assert_geq(fd, 0, "%s: %s", path, strerror(errno));
    cr_assert_eq(write(fd, data, n), (ssize_t)n);
    close(fd);
}

/* Reads a whole file (NULL when it does not exist); *n gets its size. */
static char *read_file(const char *path, size_t *n)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    struct stat st;
    cr_assert_eq(fstat(fd, &st), 0);
    char *p = malloc((size_t)st.st_size + 1);
    cr_assert_not_null(p);
    cr_assert_eq(pread(fd, p, (size_t)st.st_size, 0), st.st_size);
    close(fd);
    *n = (size_t)st.st_size;
    return p;
}

static void assert_same_file(const char *a, const char *b)
{
    size_t na, nb;
    char *pa = read_file(a, &na), *pb = read_file(b, &nb);
    cr_assert_not_null(pa, "%s is missing", a);
    cr_assert_not_null(pb, "%s is missing", b);
    cr_assert_eq(na, nb, "%s: %zu bytes, %s: %zu", a, na, b, nb);
    cr_assert_eq(memcmp(pa, pb, na), 0, "%s and %s differ", a, b);
    free(pa);
    free(pb);
}

/* The entries of dir whose names start with prefix. */
static int count_prefixed(const char *dir, const char *prefix)
{
    DIR *d = opendir(dir);
    cr_assert_not_null(d, "%s", dir);
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        n += strncmp(e->d_name, prefix, strlen(prefix)) == 0;
    closedir(d);
    return n;
}

#define BIG (3u << 20)          /* bytes of big.bin: many chunks */

static char *big_data(void)
{
    char *p = malloc(BIG);
    cr_assert_not_null(p);
    uint32_t x = 12345;
    for (size_t i = 0; i < BIG; i++) {
        x = x * 1103515245u + 12345u;
        p[i] = (char)(x >> 24);
    }
    return p;
}

static void make_tree(struct tree *t)
{
    snprintf(t->top, sizeof t->top, "/tmp/conc-ftp-test-XXXXXX");
    cr_assert_not_null(mkdtemp(t->top));
    snprintf(t->root, sizeof t->root, "%s/root", t->top);
    snprintf(t->outside, sizeof t->outside, "%s/outside", t->top);
    snprintf(t->local, sizeof t->local, "%s/local", t->top);
    cr_assert_eq(mkdir(t->root, 0755), 0);
    cr_assert_eq(mkdir(t->outside, 0755), 0);
    cr_assert_eq(mkdir(t->local, 0755), 0);
    char p[256];
    snprintf(p, sizeof p, "%s/hello.txt", t->root);
    write_file(p, "hello, ftp\n", 11);
    snprintf(p, sizeof p, "%s/empty", t->root);
    write_file(p, "", 0);
    char *big = big_data();
    snprintf(p, sizeof p, "%s/big.bin", t->root);
    write_file(p, big, BIG);
    free(big);
    snprintf(p, sizeof p, "%s/sub", t->root);
    cr_assert_eq(mkdir(p, 0755), 0);
    snprintf(p, sizeof p, "%s/sub/inner.txt", t->root);
    write_file(p, "inside a directory\n", 19);
    snprintf(p, sizeof p, "%s/.hidden", t->root);
    write_file(p, "not listed\n", 11);
    /* What must never be reached: a file beside the root, and links out. */
    snprintf(p, sizeof p, "%s/secret.txt", t->outside);
    write_file(p, "secret\n", 7);
    char target[256];
    snprintf(p, sizeof p, "%s/link-out", t->root);
    snprintf(target, sizeof target, "%s/secret.txt", t->outside);
    cr_assert_eq(symlink(target, p), 0);
    snprintf(p, sizeof p, "%s/dir-out", t->root);
    cr_assert_eq(symlink(t->outside, p), 0);
    snprintf(p, sizeof p, "%s/rel-out", t->root);
    cr_assert_eq(symlink("../outside/secret.txt", p), 0);
}

static int rm_tree_at(int dfd)
{
    DIR *d = fdopendir(dfd);
    cr_assert_not_null(d);
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        if (unlinkat(dirfd(d), e->d_name, 0) == 0)
            continue;
        int sub = openat(dirfd(d), e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (sub >= 0)
            rm_tree_at(sub);
        unlinkat(dirfd(d), e->d_name, AT_REMOVEDIR);
    }
    closedir(d);
    return 0;
}

static void remove_tree(struct tree *t)
{
    int fd = open(t->top, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    cr_assert_geq(fd, 0);
    rm_tree_at(fd);
    cr_assert_eq(rmdir(t->top), 0);
}

static struct srv start_ftp(const struct tree *t, const char *model)
{
    const char *args[] = { "--root", t->root, "--model", model, "--max-size", "4194304", "0",
                           NULL };
    struct srv s = start_server("ftp-server", args);
    char want[96];
    snprintf(want, sizeof want, "ftp-server: listening on 127.0.0.1:%d (model %s)", s.port,
             model);
    cr_assert_str_eq(s.ready, want);
    return s;
}

/* The descriptors of a server once it served a first session (a model
 * may make its loops and their descriptors at the first connection): the
 * count every later check goes back to.  That session counts in the stop
 * line. */
static int ftp_settled_base(struct srv *s);

static void stop_ftp(struct srv *s, int conns)
{
    char want[96];
    snprintf(want, sizeof want, "ftp-server: stopped by SIGTERM after %d connection%s\n", conns,
             conns == 1 ? "" : "s");
    stop_clean(s, want);
}

/* The hex SHA-256 of data. */
static void sha_hex(const void *data, size_t n, char hex[65])
{
    unsigned char h[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(h, data, n);
    sodium_bin2hex(hex, 65, h, sizeof h);
}

/* A raw session: connected, greeting read. */
static int ftp_raw(int port)
{
    int fd = tcp_connect(port);
    expect_line(fd, "OK ftp-server ready");
    return fd;
}

static void raw_quit(int fd)
{
    send_str(fd, "QUIT\n");
    expect_line(fd, "OK bye");
    expect_eof(fd);
    close(fd);
}

static int ftp_settled_base(struct srv *s)
{
    int fd = ftp_raw(s->port);
    raw_quit(fd);
    int64_t deadline = conc_now() + GUARD_NS;
    pid_t kids[8];
    while (children_of(s->pid, kids, 8) != 0) {     /* a forked session ends */
        cr_assert_lt(conc_now(), deadline, "the first session's process stays");
        usleep(1000);
    }
    return settled_fd_count(s->pid);
}

/* The round trips with ftp-client: ls, get (small, empty, 3 MB, in a
 * directory), put, and the files compared byte for byte. */
static void client_round_trips(const char *model)
{
    struct tree t;
    make_tree(&t);
    struct srv s = start_ftp(&t, model);
    int base = ftp_settled_base(&s);
    char port[16], up[256], input[1024];
    snprintf(port, sizeof port, "%d", s.port);
    snprintf(up, sizeof up, "%s/upload.bin", t.outside);
    char *big = big_data();
    for (size_t i = 0; i < 1000; i++)
        big[i] ^= 0x5a;                         /* not big.bin's bytes */
    write_file(up, big, BIG - 7);
    char hex_up[65], hex_hello[65], hex_empty[65], hex_big[65];
    sha_hex(big, BIG - 7, hex_up);
    free(big);
    big = big_data();
    sha_hex(big, BIG, hex_big);
    free(big);
    sha_hex("hello, ftp\n", 11, hex_hello);
    sha_hex("", 0, hex_empty);

    snprintf(input, sizeof input,
             "ls\nget hello.txt\nget empty\nget big.bin\nget sub/inner.txt\nput %s\nls\nquit\n",
             up);
    const char *args[] = { "--dir", t.local, "127.0.0.1", port, NULL };
    struct run r = run_example_input("ftp-client", args, input);
    assert_success(&r, model);
    char want[2048];
    snprintf(want, sizeof want,
             "%u big.bin\n0 empty\n11 hello.txt\n"
             "got hello.txt: 11 bytes, sha256 %s\n"
             "got empty: 0 bytes, sha256 %s\n"
             "got big.bin: %u bytes, sha256 %s\n"
             "got sub/inner.txt: 19 bytes, sha256 ",
             BIG, hex_hello, hex_empty, BIG, hex_big);
    cr_assert_eq(strncmp(r.out, want, strlen(want)), 0, "model %s:\n%s", model, r.out);
    snprintf(want, sizeof want,
             "put upload.bin: %u bytes, sha256 %s\n"
             "%u big.bin\n0 empty\n11 hello.txt\n%u upload.bin\n",
             BIG - 7, hex_up, BIG, BIG - 7);
    cr_assert_not_null(strstr(r.out, want), "model %s:\n%s", model, r.out);
    run_free(&r);

    const char *names[][2] = { { "hello.txt", "hello.txt" }, { "empty", "empty" },
                               { "big.bin", "big.bin" }, { "sub/inner.txt", "inner.txt" } };
    for (size_t i = 0; i < 4; i++) {
        char a[256], b[256];
        snprintf(a, sizeof a, "%s/%s", t.root, names[i][0]);
        snprintf(b, sizeof b, "%s/%s", t.local, names[i][1]);
        assert_same_file(a, b);
    }
    char stored[256];
    snprintf(stored, sizeof stored, "%s/upload.bin", t.root);
    assert_same_file(up, stored);
    cr_assert_eq(count_prefixed(t.root, ".ftp-part-"), 0);
    cr_assert_eq(count_prefixed(t.local, ".ftp-part-"), 0);
    wait_settled(s.pid, base);
    stop_ftp(&s, 2);
    remove_tree(&t);
}

EACH_FTP_MODEL(client_round_trips, 120)

/* Every way out of the root is refused with an ERR line, nothing outside
 * is read or written, and the same session (and the server) goes on. */
static void traversal_refused(const char *model)
{
    struct tree t;
    make_tree(&t);
    struct srv s = start_ftp(&t, model);
    int fd = ftp_raw(s.port);
    char abs_secret[256];
    snprintf(abs_secret, sizeof abs_secret, "GET %s/secret.txt\n", t.outside);
    const char *const gets[][2] = {
        { "GET ../outside/secret.txt\n", "ERR ../outside/secret.txt: '..' leaves the root" },
        { "GET sub/../../outside/secret.txt\n", "ERR sub/../../outside/secret.txt: '..'" },
        { "GET /etc/passwd\n", "ERR /etc/passwd: absolute names are refused" },
        { abs_secret, "ERR /" },
        { "GET link-out\n", "ERR link-out: " },
        { "GET rel-out\n", "ERR rel-out: " },
        { "GET dir-out/secret.txt\n", "ERR dir-out/secret.txt: " },
        { "GET .hidden\n", "ERR .hidden: hidden names are refused" },
        { "GET sub\n", "ERR sub: not a regular file" },
        { "GET nope\n", "ERR nope: no such file" },
        { "GET sub//inner.txt\n", "ERR sub//inner.txt: empty path components" },
    };
    for (size_t i = 0; i < sizeof gets / sizeof gets[0]; i++) {
        send_str(fd, gets[i][0]);
        expect_prefix(fd, gets[i][1]);
    }
    char hex[65];
    sha_hex("x", 1, hex);
    const char *const puts[] = { "../outside/evil", "/tmp/evil", "dir-out/evil", ".evil",
                                 "sub/../../evil" };
    for (size_t i = 0; i < sizeof puts / sizeof puts[0]; i++) {
        char line[512];
        snprintf(line, sizeof line, "PUT %s 1 %s\n", puts[i], hex);
        send_str(fd, line);
        char want[128];
        snprintf(want, sizeof want, "ERR %s: ", puts[i]);
        expect_prefix(fd, want);
    }
    /* Still serving, in the same session and in another. */
    send_str(fd, "GET hello.txt\n");
    char ok[128];
    sha_hex("hello, ftp\n", 11, hex);
    snprintf(ok, sizeof ok, "OK 11 %s", hex);
    expect_line(fd, ok);
    char got[11];
    recv_exact(fd, got, 11);
    cr_assert_arr_eq(got, "hello, ftp\n", 11);
    int fd2 = ftp_raw(s.port);
    send_str(fd2, "GET sub/inner.txt\n");
    expect_prefix(fd2, "OK 19 ");
    char inner[19];
    recv_exact(fd2, inner, 19);
    cr_assert_arr_eq(inner, "inside a directory\n", 19);
    raw_quit(fd2);
    raw_quit(fd);
    /* Nothing was written outside. */
    cr_assert_eq(count_prefixed(t.outside, "evil"), 0);
    cr_assert_eq(count_prefixed(t.outside, "."), 2);    /* . and .. */
    cr_assert_eq(access("/tmp/evil", F_OK), -1);
    stop_ftp(&s, 2);
    remove_tree(&t);
}

EACH_FTP_MODEL(traversal_refused, 60)

/* Whether the file system of dir refuses unnamed files (O_TMPFILE): the
 * server then gives an upload a temporary name from the start. */
static bool tmpfile_refused(const char *dir)
{
    int fd = open(dir, O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600);
    if (fd >= 0)
        close(fd);
    return fd < 0;
}

/* The names in dir, sorted, one a line (free it). */
static char *listing(const char *dir)
{
    struct dirent **names;
    int n = scandir(dir, &names, NULL, alphasort);
    cr_assert_geq(n, 0, "%s: %s", dir, strerror(errno));
    struct buf b = { 0 };
    buf_add(&b, "", 0);
    for (int i = 0; i < n; i++) {
        buf_add(&b, names[i]->d_name, strlen(names[i]->d_name));
        buf_add(&b, "\n", 1);
        free(names[i]);
    }
    free(names);
    return b.data;
}

/* Checks that dir holds the names of `before` (a listing), nothing new. */
static void assert_listing(const char *dir, const char *before, const char *when)
{
    char *now = listing(dir);
    cr_assert_str_eq(now, before, "%s: %s holds other names than before", when, dir);
    free(now);
}

/* Starts a PUT of a large declared size on a new session and sends a part
 * of it; returns the session. */
static int start_partial_put(int port)
{
    int fd = ftp_raw(port);
    char hex[65], line[512];
    sha_hex("never sent whole", 16, hex);
    snprintf(line, sizeof line, "PUT partial.bin 4000000 %s\n", hex);
    send_str(fd, line);
    expect_line(fd, "OK ready");
    char *chunk = calloc(1, 300000);
    cr_assert_not_null(chunk);
    send_all(fd, chunk, 300000);
    free(chunk);
    return fd;
}

/* A server stopped (SIGTERM) while an upload comes in leaves nothing of
 * it in the root, in each model (the forking model's session process is
 * killed after the grace). */
static void stop_during_put(const char *model)
{
    struct tree t;
    make_tree(&t);
    char *before = listing(t.root);
    struct srv s = start_ftp(&t, model);
    int fd = start_partial_put(s.port);
    stop_ftp(&s, 1);
    expect_eof(fd);
    close(fd);
    assert_listing(t.root, before, model);
    free(before);
    remove_tree(&t);
}

EACH_FTP_MODEL(stop_during_put, 120)

/* A forked session killed with SIGKILL in the middle of an upload leaves
 * nothing of it in the root: not by the server's next command, not after
 * its stop. */
Test(ftp, killed_session_during_put_forking, .timeout = 120)
{
    struct tree t;
    make_tree(&t);
    char *before = listing(t.root);
    struct srv s = start_ftp(&t, "forking");
    int fd = start_partial_put(s.port);
    pid_t kids[8];
    cr_assert_eq(children_of(s.pid, kids, 8), 1, "the session's process is not the one child");
    cr_assert_eq(kill(kids[0], SIGKILL), 0);
    expect_eof(fd);
    close(fd);
    int64_t deadline = conc_now() + GUARD_NS;
    while (children_of(s.pid, kids, 8) != 0) {     /* reaped */
        cr_assert_lt(conc_now(), deadline, "the killed session is never reaped");
        usleep(1000);
    }
    fd = ftp_raw(s.port);
    send_str(fd, "LS\n");
    expect_line(fd, "OK 3");
    expect_line(fd, "3145728 big.bin");
    expect_line(fd, "0 empty");
    expect_line(fd, "11 hello.txt");
    assert_listing(t.root, before, "after the next command");
    raw_quit(fd);
    stop_ftp(&s, 2);
    assert_listing(t.root, before, "after the stop");
    free(before);
    remove_tree(&t);
}

/* The signal mask bits of sig in /proc/PID/status's line `field`
 * ("SigBlk:", "SigCgt:"). */
static bool proc_sig_set(pid_t pid, const char *field, int sig)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f);
    unsigned long long mask = 0;
    bool found = false;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, field, strlen(field)) == 0)
            found = sscanf(line + strlen(field), "%llx", &mask) == 1;
    fclose(f);
    cr_assert(found, "no %s in %s", field, path);
    return (mask >> (sig - 1)) & 1;
}

/* A forked session leaves SIGINT to the server (a Ctrl-C reaches the whole
 * process group, and the server gives its sessions their grace): one sent
 * to it ends nothing.  A SIGTERM from anyone but the server leaves it the
 * server's grace too, then ends it; the server serves on. */
Test(ftp, forked_session_leaves_the_stop_to_the_server, .timeout = 120)
{
    struct tree t;
    make_tree(&t);
    struct srv s = start_ftp(&t, "forking");
    int fd = ftp_raw(s.port);
    pid_t kids[8];
    cr_assert_eq(children_of(s.pid, kids, 8), 1, "the session's process is not the one child");
    cr_assert(proc_sig_set(kids[0], "SigBlk:", SIGINT), "SIGINT is not blocked");
    cr_assert(!proc_sig_set(kids[0], "SigBlk:", SIGTERM), "SIGTERM is blocked");
    cr_assert(proc_sig_set(kids[0], "SigCgt:", SIGTERM), "SIGTERM is not caught");
    cr_assert_eq(kill(kids[0], SIGINT), 0);
    send_str(fd, "LS\n");
    expect_line(fd, "OK 3");
    expect_line(fd, "3145728 big.bin");
    expect_line(fd, "0 empty");
    expect_line(fd, "11 hello.txt");
    cr_assert_eq(kill(kids[0], SIGTERM), 0);   /* not the server's: a grace */
    send_str(fd, "GET hello.txt\n");
    expect_prefix(fd, "OK 11 ");
    char got[11];
    recv_exact(fd, got, sizeof got);
    cr_assert_arr_eq(got, "hello, ftp\n", 11);
    if (!TSAN)          /* which holds a signal back from a process asleep in ppoll */
        expect_eof(fd);                         /* the grace over, it ends */
    raw_quit(ftp_raw(s.port));                  /* the server serves on */
    stop_ftp(&s, 2);
    expect_eof(fd);
    close(fd);
    remove_tree(&t);
}

/* Temporary upload files that a killed server may leave (where the file
 * system refuses unnamed files) are removed when a server starts on that
 * root, in it and in its directories; other hidden names are left alone. */
Test(ftp, stale_temporary_files_removed_at_start, .timeout = 60)
{
    struct tree t;
    make_tree(&t);
    char *before = listing(t.root);
    const char *stale[] = { ".ftp-part-0badf00d", "sub/.ftp-part-12345678" };
    const char *kept[] = { ".ftp-part-keep", ".ftp-part-0BADF00D", ".ftp-part-123456789" };
    char p[512];
    for (size_t i = 0; i < 2; i++) {
        snprintf(p, sizeof p, "%s/%s", t.root, stale[i]);
        write_file(p, "partial", 7);
    }
    for (size_t i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/%s", t.root, kept[i]);
        write_file(p, "mine", 4);
    }
    struct srv s = start_ftp(&t, "threading");
    for (size_t i = 0; i < 2; i++) {
        snprintf(p, sizeof p, "%s/%s", t.root, stale[i]);
        cr_assert_eq(access(p, F_OK), -1, "%s was left", stale[i]);
    }
    for (size_t i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/%s", t.root, kept[i]);
        cr_assert_eq(access(p, F_OK), 0, "%s was removed", kept[i]);
        cr_assert_eq(unlink(p), 0);
    }
    assert_listing(t.root, before, "the stale files");
    stop_ftp(&s, 0);
    free(before);
    remove_tree(&t);
}

/* Waits (hang guard) until dir holds no temporary file. */
static void wait_no_part(const char *dir)
{
    int64_t deadline = conc_now() + GUARD_NS;
    while (count_prefixed(dir, ".ftp-part-") != 0) {
        cr_assert_lt(conc_now(), deadline, "a temporary file stays in %s", dir);
        usleep(1000);
    }
}

/* An upload whose bytes do not match its SHA-256 is refused and never
 * stored; one cut short is never stored either; limits and malformed
 * commands are answered; the session goes on after each. */
static void bad_uploads(const char *model)
{
    struct tree t;
    make_tree(&t);
    struct srv s = start_ftp(&t, model);
    int base = ftp_settled_base(&s);
    int fd = ftp_raw(s.port);
    char hex[65], line[512];

    /* The hash of "hello" with "hellp" sent: one byte flipped. */
    sha_hex("hello", 5, hex);
    snprintf(line, sizeof line, "PUT x.bin 5 %s\n", hex);
    send_str(fd, line);
    expect_line(fd, "OK ready");
    send_str(fd, "hellp");
    expect_line(fd, "ERR x.bin: checksum mismatch: the upload was discarded");
    char p[256];
    snprintf(p, sizeof p, "%s/x.bin", t.root);
    cr_assert_eq(access(p, F_OK), -1, "a corrupted upload was stored");
    cr_assert_eq(count_prefixed(t.root, ".ftp-part-"), 0);

    /* The same name, right this time, over an existing file name. */
    send_str(fd, line);
    expect_line(fd, "OK ready");
    send_str(fd, "hello");
    expect_line(fd, "OK stored 5");
    size_t n;
    char *got = read_file(p, &n);
    cr_assert(got && n == 5 && memcmp(got, "hello", 5) == 0);
    free(got);
    /* A bad upload does not touch the stored file. */
    send_str(fd, line);
    expect_line(fd, "OK ready");
    send_str(fd, "HELLO");
    expect_prefix(fd, "ERR x.bin: checksum mismatch");
    got = read_file(p, &n);
    cr_assert(got && n == 5 && memcmp(got, "hello", 5) == 0);
    free(got);

    /* Limits and malformed commands. */
    snprintf(line, sizeof line, "PUT huge 4194305 %s\n", hex);
    send_str(fd, line);
    expect_line(fd, "ERR huge: 4194305 bytes is over the limit of 4194304");
    send_str(fd, "PUT y 5 abc\n");
    expect_line(fd, "ERR y: the SHA-256 wants 64 lower-case hex digits");
    snprintf(line, sizeof line, "PUT y -5 %s\n", hex);
    send_str(fd, line);
    expect_line(fd, "ERR y: the size is not a whole number of bytes");
    send_str(fd, "PUT y\n");
    expect_line(fd, "ERR usage: PUT NAME SIZE SHA256");
    send_str(fd, "DELETE hello.txt\n");
    expect_prefix(fd, "ERR unknown command");
    send_str(fd, "ls\n");
    expect_prefix(fd, "ERR unknown command");
    send_str(fd, "LS\n");
    expect_line(fd, "OK 4");
    expect_line(fd, "3145728 big.bin");
    expect_line(fd, "0 empty");
    expect_line(fd, "11 hello.txt");
    expect_line(fd, "5 x.bin");

    /* Cut short: the connection closes after 10 of 1000 bytes. */
    int fd2 = ftp_raw(s.port);
    snprintf(line, sizeof line, "PUT cut.bin 1000 %s\n", hex);
    send_str(fd2, line);
    expect_line(fd2, "OK ready");
    /* The file it comes into has no name (O_TMPFILE), or a temporary one
     * where the file system refuses that. */
    cr_assert_eq(count_prefixed(t.root, ".ftp-part-"), tmpfile_refused(t.root) ? 1 : 0);
    snprintf(p, sizeof p, "%s/cut.bin", t.root);
    cr_assert_eq(access(p, F_OK), -1);
    send_str(fd2, "0123456789");
    close(fd2);
    wait_no_part(t.root);
    snprintf(p, sizeof p, "%s/cut.bin", t.root);
    cr_assert_eq(access(p, F_OK), -1, "a partial upload was stored");

    /* A line over 1024 bytes ends the session with an ERR line. */
    char longl[2000];
    memset(longl, 'A', sizeof longl);
    send_all(fd, longl, sizeof longl);
    expect_line(fd, "ERR line too long");
    expect_eof(fd);
    close(fd);
    wait_settled(s.pid, base);
    stop_ftp(&s, 3);
    remove_tree(&t);
}

EACH_FTP_MODEL(bad_uploads, 120)

/* The threads of pid (at most cap) and, for each, a counter of its
 * /proc/PID/task/TID/io ("rchar: " or "wchar: ": the bytes its read-like
 * or write-like calls moved, sendfile's both ways). */
static int thread_io(pid_t pid, const char *counter, pid_t *tids, uint64_t *vals, int cap)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    cr_assert_not_null(d, "%s", path);
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL && n < cap;) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        char io[320], text[512];
        snprintf(io, sizeof io, "/proc/%d/task/%s/io", (int)pid, e->d_name);
        int fd = open(io, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;               /* it ended meanwhile */
        ssize_t k = read(fd, text, sizeof text - 1);
        close(fd);
        if (k <= 0)
            continue;
        text[k] = '\0';
        const char *at = strstr(text, counter);
        cr_assert_not_null(at, "%s: no %s", io, counter);
        tids[n] = (pid_t)atoi(e->d_name);
        vals[n++] = strtoull(at + strlen(counter), NULL, 10);
    }
    closedir(d);
    return n;
}

/* The process's counter in /proc/PID/io (every thread's, those that ended
 * too). */
static uint64_t process_io(pid_t pid, const char *counter)
{
    char io[64], text[512];
    snprintf(io, sizeof io, "/proc/%d/io", (int)pid);
    int fd = open(io, O_RDONLY | O_CLOEXEC);
    cr_assert_geq(fd, 0, "%s: %s", io, strerror(errno));
    ssize_t k = read(fd, text, sizeof text - 1);
    close(fd);
    cr_assert_gt(k, 0, "%s", io);
    text[k] = '\0';
    const char *at = strstr(text, counter);
    cr_assert_not_null(at, "%s: no %s", io, counter);
    return strtoull(at + strlen(counter), NULL, 10);
}

/* Checks that none of the threads (tids, with their counter at vals) that
 * are still there moved half of `bytes` or more since. */
static void assert_threads_moved_little(pid_t pid, const char *counter, const pid_t *tids,
                                        const uint64_t *vals, int n, uint64_t bytes,
                                        const char *what)
{
    pid_t now_t[64];
    uint64_t now_v[64];
    int m = thread_io(pid, counter, now_t, now_v, 64);
    for (int i = 0; i < n; i++)
        for (int k = 0; k < m; k++)
            if (now_t[k] == tids[i])
                cr_assert_lt(now_v[k] - vals[i], bytes / 2,
                             "%s: thread %d (a hub's) did it itself (%s%llu more)", what,
                             (int)tids[i], counter, (unsigned long long)(now_v[k] - vals[i]));
}

/* In the coroutine model an upload's file writes and a download's file
 * reads are not made by the hubs' threads (they run on offload workers,
 * so that a slow disk holds up no other session): the threads the server
 * had before the transfers move few of the file's bytes.  A download goes
 * out with sendfile on the workers: wchar counts what write-like calls and
 * sendfile move, not send(2) and sendmsg(2) (the server's other socket
 * writes), so the process's wchar grows by the whole file only when
 * sendfile sent it, and the hubs' wchar shows it was not theirs. */
Test(ftp, coroutine_file_calls_leave_the_hubs, .timeout = 120)
{
    struct tree t;
    make_tree(&t);
    struct srv s = start_ftp(&t, "coroutine");
    ftp_settled_base(&s);               /* the hubs are all there */
    pid_t tids[64];
    uint64_t vals[64];
    int n = thread_io(s.pid, "wchar: ", tids, vals, 64);
    cr_assert_gt(n, 0);

    int fd = ftp_raw(s.port);
    char *big = big_data();
    char hex[65], line[256];
    sha_hex(big, BIG, hex);
    snprintf(line, sizeof line, "PUT copy.bin %u %s\n", BIG, hex);
    send_str(fd, line);
    expect_line(fd, "OK ready");
    send_all(fd, big, BIG);
    snprintf(line, sizeof line, "OK stored %u", BIG);
    expect_line(fd, line);
    assert_threads_moved_little(s.pid, "wchar: ", tids, vals, n, BIG, "the upload's writes");

    /* The same threads' (not the workers that came meanwhile) reads and
     * writes. */
    pid_t now_t[64], w_t[64];
    uint64_t now_v[64], w_v[64], wvals[64];
    int m = thread_io(s.pid, "rchar: ", now_t, now_v, 64), kept = 0;
    int mw = thread_io(s.pid, "wchar: ", w_t, w_v, 64);
    for (int i = 0; i < n; i++)
        for (int k = 0; k < m; k++)
            for (int q = 0; q < mw; q++)
                if (now_t[k] == tids[i] && w_t[q] == tids[i]) {
                    tids[kept] = tids[i];
                    vals[kept] = now_v[k];
                    wvals[kept++] = w_v[q];
                }
    n = kept;
    uint64_t wall = process_io(s.pid, "wchar: ");   /* send(2) adds nothing */
    send_str(fd, "GET big.bin\n");
    snprintf(line, sizeof line, "OK %u %s", BIG, hex);
    expect_line(fd, line);
    char *got = malloc(BIG);
    cr_assert_not_null(got);
    recv_exact(fd, got, BIG);
    cr_assert_eq(memcmp(got, big, BIG), 0);
    assert_threads_moved_little(s.pid, "rchar: ", tids, vals, n, BIG, "the download's reads");
    assert_threads_moved_little(s.pid, "wchar: ", tids, wvals, n, BIG, "the download's sends");
    free(got);
    free(big);
    raw_quit(fd);               /* its answer comes once the last sendfile returned */
    uint64_t wrote = process_io(s.pid, "wchar: ") - wall;
    cr_assert_geq(wrote, BIG, "the process wrote %llu bytes for a download of %u",
                  (unsigned long long)wrote, BIG);
    char stored[256], orig[256];
    snprintf(stored, sizeof stored, "%s/copy.bin", t.root);
    snprintf(orig, sizeof orig, "%s/big.bin", t.root);
    assert_same_file(stored, orig);
    stop_ftp(&s, 2);
    remove_tree(&t);
}

/*
 * Holds up the opens of files in a directory: a fanotify permission watch
 * (FAN_OPEN_PERM) on it and a thread that answers each open made in it or
 * of it (the listing's opendir of the root too) - at once for the file
 * `allow`, and for the others only once fan_release is called (later
 * opens are then let through at once).
 */
struct fan_hold {
    int fan, stop[2];
    char allow[2 * PATH_MAX];
    pthread_t th;
    pthread_mutex_t mu;
    int held[72], nheld, seen;  /* seen: every open held so far */
    bool released;
};

static void fan_answer(int fan, int fd)
{
    struct fanotify_response r = { .fd = fd, .response = FAN_ALLOW };
    cr_assert_eq(write(fan, &r, sizeof r), (ssize_t)sizeof r);
    close(fd);
}

static void *fan_hold_main(void *arg)
{
    struct fan_hold *h = arg;
    for (;;) {
        struct pollfd pf[2] = { { .fd = h->fan, .events = POLLIN },
                                { .fd = h->stop[0], .events = POLLIN } };
        if (poll(pf, 2, -1) < 0 || pf[1].revents)
            return NULL;
        char buf[4096] __attribute__((aligned(8)));
        ssize_t n = read(h->fan, buf, sizeof buf);
        if (n <= 0)
            continue;
        struct fanotify_event_metadata *m = (void *)buf;
        for (; FAN_EVENT_OK(m, n); m = FAN_EVENT_NEXT(m, n)) {
            if (m->fd < 0)
                continue;
            char link[64], path[PATH_MAX];
            snprintf(link, sizeof link, "/proc/self/fd/%d", m->fd);
            ssize_t k = readlink(link, path, sizeof path - 1);
            path[k < 0 ? 0 : k] = '\0';
            pthread_mutex_lock(&h->mu);
            bool hold = !h->released && strcmp(path, h->allow) != 0 && h->nheld < 72;
            if (hold) {
                h->held[h->nheld++] = m->fd;
                h->seen++;
            }
            pthread_mutex_unlock(&h->mu);
            if (!hold)
                fan_answer(h->fan, m->fd);
        }
    }
}

/* Starts holding up the opens in dir but of dir/allow; false (errno set)
 * where fanotify or its permission events are not there or not allowed
 * (they want CAP_SYS_ADMIN). */
static bool fan_hold_start(struct fan_hold *h, const char *dir, const char *allow)
{
    memset(h, 0, sizeof *h);
    h->fan = fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC, O_RDONLY | O_CLOEXEC);
    if (h->fan < 0)
        return false;
    char real[PATH_MAX];
    cr_assert_not_null(realpath(dir, real));
    snprintf(h->allow, sizeof h->allow, "%s/%s", real, allow);
    if (fanotify_mark(h->fan, FAN_MARK_ADD, FAN_OPEN_PERM | FAN_EVENT_ON_CHILD | FAN_ONDIR,
                      AT_FDCWD, dir) < 0) {
        int err = errno;                /* a kernel without permission events */
        close(h->fan);
        errno = err;
        return false;
    }
    cr_assert_eq(pipe2(h->stop, O_CLOEXEC), 0);
    pthread_mutex_init(&h->mu, NULL);
    cr_assert_eq(pthread_create(&h->th, NULL, fan_hold_main, h), 0);
    return true;
}

/* Waits until `count` opens are held up (hang guard). */
static void fan_wait_held(struct fan_hold *h, int count, const char *what)
{
    int64_t deadline = conc_now() + GUARD_NS;
    for (;;) {
        pthread_mutex_lock(&h->mu);
        int seen = h->seen;
        pthread_mutex_unlock(&h->mu);
        if (seen >= count)
            return;
        cr_assert_lt(conc_now(), deadline, "%s never opened its file", what);
        usleep(1000);
    }
}

/* Lets every open held up go on, and those to come. */
static void fan_release(struct fan_hold *h)
{
    pthread_mutex_lock(&h->mu);
    h->released = true;
    for (int i = 0; i < h->nheld; i++)
        fan_answer(h->fan, h->held[i]);
    h->nheld = 0;
    pthread_mutex_unlock(&h->mu);
}

static void fan_hold_end(struct fan_hold *h)
{
    fan_release(h);
    cr_assert_eq(write(h->stop[1], "x", 1), 1);
    pthread_join(h->th, NULL);
    close(h->stop[0]);
    close(h->stop[1]);
    close(h->fan);
    pthread_mutex_destroy(&h->mu);
}

/* Opens n sessions, the i-th sending LS, GET big.bin or PUT up-i (one
 * byte, "x") by turns, each held up (h) before the next is opened. */
static void start_held_sessions(struct fan_hold *h, int port, int *fd, int n)
{
    char hex_x[65], line[256];
    sha_hex("x", 1, hex_x);
    for (int i = 0; i < n; i++) {
        fd[i] = ftp_raw(port);          /* a hub is free to greet it */
        if (i % 3 == 0)
            snprintf(line, sizeof line, "LS\n");
        else if (i % 3 == 1)
            snprintf(line, sizeof line, "GET big.bin\n");
        else
            snprintf(line, sizeof line, "PUT up-%d 1 %s\n", i, hex_x);
        send_str(fd[i], line);
        fan_wait_held(h, i + 1, line);
    }
}

/*
 * In the coroutine model the listing of the root and the opening of files
 * (GET's, and the unnamed file a PUT is written to) run on offload
 * workers: held up (a slow disk, here a fanotify permission watch that
 * does not answer), they hold up no other session.  More sessions are
 * held up than the server has threads (so more than it has hubs: without
 * the offload every hub would be stuck, and the next session would get no
 * greeting); meanwhile another session is greeted and gets a file.  Once
 * let go, each held-up command ends as it would have.
 */
Test(ftp, coroutine_slow_opens_hold_up_no_session, .timeout = 120)
{
    struct tree t;
    make_tree(&t);
    struct srv s = start_ftp(&t, "coroutine");
    int base = ftp_settled_base(&s);
    pid_t tids[64];
    uint64_t vals[64];
    int held = thread_io(s.pid, "rchar: ", tids, vals, 64) + 1;     /* at most 65 */
    struct fan_hold h;
    if (!fan_hold_start(&h, t.root, "hello.txt")) {
        int err = errno;
        stop_ftp(&s, 1);
        remove_tree(&t);
        cr_skip_test("fanotify: %s", strerror(err));
    }
    char *big = big_data(), hex_big[65], hex_hello[65], line[256];
    sha_hex(big, BIG, hex_big);
    sha_hex("hello, ftp\n", 11, hex_hello);
    int fd[72];
    start_held_sessions(&h, s.port, fd, held);
    int other = ftp_raw(s.port);
    send_str(other, "GET hello.txt\n");
    snprintf(line, sizeof line, "OK 11 %s", hex_hello);
    expect_line(other, line);
    char got[11];
    recv_exact(other, got, 11);
    cr_assert_arr_eq(got, "hello, ftp\n", 11);
    raw_quit(other);

    /* Let go: the listings first (no upload is stored before its bytes
     * come), then the downloads and the uploads. */
    fan_release(&h);
    for (int i = 0; i < held; i += 3) {
        expect_line(fd[i], "OK 3");
        snprintf(line, sizeof line, "%u big.bin", BIG);
        expect_line(fd[i], line);
        expect_line(fd[i], "0 empty");
        expect_line(fd[i], "11 hello.txt");
    }
    char *got_big = malloc(BIG);
    cr_assert_not_null(got_big);
    for (int i = 1; i < held; i += 3) {
        snprintf(line, sizeof line, "OK %u %s", BIG, hex_big);
        expect_line(fd[i], line);
        recv_exact(fd[i], got_big, BIG);
        cr_assert_eq(memcmp(got_big, big, BIG), 0);
    }
    for (int i = 2; i < held; i += 3) {
        expect_line(fd[i], "OK ready");
        send_str(fd[i], "x");
        expect_line(fd[i], "OK stored 1");
    }
    for (int i = 0; i < held; i++)
        raw_quit(fd[i]);
    fan_hold_end(&h);
    cr_assert_eq(count_prefixed(t.root, "up-"), held / 3);
    wait_settled(s.pid, base);
    stop_ftp(&s, held + 2);
    free(got_big);
    free(big);
    remove_tree(&t);
}

/* ------------------------------------------ ftp: the protocol's edges */

#define LS_MORE 10050           /* files made beyond the three of make_tree */

/* A listing of more than 10000 files is the first 10000 by name, and says
 * it was cut ("OK 10000 MORE"); ftp-client prints them and a note. */
static void listing_cut_first_by_name(const char *model)
{
    struct tree t;
    make_tree(&t);
    for (int i = LS_MORE - 1; i >= 0; i--) {    /* the greatest names first */
        char p[256];
        snprintf(p, sizeof p, "%s/f%05d", t.root, i);
        write_file(p, "", 0);
    }
    struct srv s = start_ftp(&t, model);
    int fd = ftp_raw(s.port);
    send_str(fd, "LS\n");
    expect_line(fd, "OK 10000 MORE");
    expect_line(fd, "3145728 big.bin");
    expect_line(fd, "0 empty");
    for (int i = 0; i < 10000 - 2; i++) {      /* then f00000 .. f09997 */
        char want[32];
        snprintf(want, sizeof want, "0 f%05d", i);
        expect_line(fd, want);
    }
    raw_quit(fd);

    char port[16];
    snprintf(port, sizeof port, "%d", s.port);
    const char *args[] = { "--dir", t.local, "127.0.0.1", port, NULL };
    struct run r = run_example_input("ftp-client", args, "ls\n");
    cr_assert(exited_with(&r, 0), "model %s: status %#x\n%s", model, r.status, r.err);
    cr_assert_str_eq(r.err, "ftp-client: ls: the listing was cut: the server has more files "
                            "than the 10000 it sent (the first by name)\n");
    const char *head = "3145728 big.bin\n0 empty\n0 f00000\n";
    cr_assert_eq(strncmp(r.out, head, strlen(head)), 0, "%.200s", r.out);
    size_t n = strlen(r.out);
    cr_assert(n > 9 && strcmp(r.out + n - 9, "0 f09997\n") == 0, "%s", r.out + n - 9);
    run_free(&r);
    stop_ftp(&s, 2);
    remove_tree(&t);
}

EACH_FTP_MODEL(listing_cut_first_by_name, 120)

/* A line is at most 1024 bytes with its newline, however it comes in: one
 * longer, sent in one write with its newline, gets "ERR line too long"
 * and ends the session; one of 1024 is read as a line. */
static void line_limit_in_one_write(const char *model)
{
    struct tree t;
    make_tree(&t);
    struct srv s = start_ftp(&t, model);
    char line[2048];
    int fd = ftp_raw(s.port);
    memcpy(line, "GET ", 4);
    memset(line + 4, 'a', 1019);
    line[1023] = '\n';                          /* 1024 bytes */
    send_all(fd, line, 1024);
    expect_prefix(fd, "ERR aaaa");              /* the name is too long */
    memset(line + 4, 'a', 1020);
    line[1024] = '\n';                          /* 1025 bytes */
    send_all(fd, line, 1025);
    expect_line(fd, "ERR line too long");
    expect_eof(fd);
    close(fd);
    fd = ftp_raw(s.port);
    memset(line + 4, 'a', 2036);
    line[2040] = '\n';
    send_all(fd, line, 2041);
    expect_line(fd, "ERR line too long");
    expect_eof(fd);
    close(fd);
    stop_ftp(&s, 2);
    remove_tree(&t);
}

EACH_FTP_MODEL(line_limit_in_one_write, 60)

/* A line that holds a control character (a NUL among them) is refused
 * with an ERR line, the name it echoes escaped, and the session goes on. */
static void control_characters_refused(const char *model)
{
    struct tree t;
    make_tree(&t);
    struct srv s = start_ftp(&t, model);
    int fd = ftp_raw(s.port);
    send_all(fd, "GET hello.txt\0junk\n", 19);
    expect_line(fd, "ERR hello.txt\\x00junk: control characters are refused");
    send_str(fd, "GET a\rb\n");
    expect_line(fd, "ERR a\\x0db: control characters are refused");
    char hex[65], line[512];
    sha_hex("hello", 5, hex);
    snprintf(line, sizeof line, "PUT x\x1b[2J 5 %s\n", hex);
    send_str(fd, line);
    expect_line(fd, "ERR x\\x1b[2J: control characters are refused");
    send_all(fd, "LS\0\n", 4);
    expect_line(fd, "ERR control characters are refused");
    /* Not control characters: UTF-8 is echoed as it is, a stray byte
     * escaped. */
    send_str(fd, "GET \xc3\xbc\xff\n");
    expect_line(fd, "ERR \xc3\xbc\\xff: no such file or directory");
    send_str(fd, "GET hello.txt\n");
    expect_prefix(fd, "OK 11 ");
    char got[11];
    recv_exact(fd, got, 11);
    cr_assert_arr_eq(got, "hello, ftp\n", 11);
    raw_quit(fd);
    cr_assert_eq(count_prefixed(t.root, "x"), 0);
    stop_ftp(&s, 1);
    remove_tree(&t);
}

EACH_FTP_MODEL(control_characters_refused, 60)

/* PUT to a name that is a directory, a FIFO or a link out of the root is
 * refused at once (no "OK ready"), nothing is replaced, and the session
 * stays in step; an upload into a directory is still stored. */
static void put_to_what_is_no_file(const char *model)
{
    struct tree t;
    make_tree(&t);
    char p[256];
    snprintf(p, sizeof p, "%s/pipe", t.root);
    cr_assert_eq(mkfifo(p, 0644), 0);
    struct srv s = start_ftp(&t, model);
    int fd = ftp_raw(s.port);
    char hex[65], line[512];
    sha_hex("hello", 5, hex);
    const char *const bad[][2] = {
        { "sub", "ERR sub: not a regular file" },
        { "pipe", "ERR pipe: not a regular file" },
        { "dir-out", "ERR dir-out: " },
        { "link-out", "ERR link-out: " },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(line, sizeof line, "PUT %s 5 %s\n", bad[i][0], hex);
        send_str(fd, line);
        expect_prefix(fd, bad[i][1]);
    }
    struct stat st;
    cr_assert_eq(lstat(p, &st), 0);
    cr_assert(S_ISFIFO(st.st_mode), "model %s: the FIFO was replaced", model);
    snprintf(p, sizeof p, "%s/link-out", t.root);
    cr_assert_eq(lstat(p, &st), 0);
    cr_assert(S_ISLNK(st.st_mode), "model %s: the link was replaced", model);
    snprintf(p, sizeof p, "%s/secret.txt", t.outside);
    size_t n;
    char *secret = read_file(p, &n);
    cr_assert(secret && n == 7 && memcmp(secret, "secret\n", 7) == 0);
    free(secret);
    snprintf(line, sizeof line, "PUT sub/up.txt 5 %s\n", hex);
    send_str(fd, line);
    expect_line(fd, "OK ready");
    send_str(fd, "hello");
    expect_line(fd, "OK stored 5");
    send_str(fd, "LS\n");
    expect_line(fd, "OK 3");
    expect_line(fd, "3145728 big.bin");
    expect_line(fd, "0 empty");
    expect_line(fd, "11 hello.txt");
    raw_quit(fd);
    stop_ftp(&s, 1);
    remove_tree(&t);
}

EACH_FTP_MODEL(put_to_what_is_no_file, 60)

/* With its root removed while it runs, the server answers PUT and GET with
 * "no such file or directory". */
static void root_removed(const char *model)
{
    struct tree t;
    make_tree(&t);
    struct srv s = start_ftp(&t, model);
    int rfd = open(t.root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    cr_assert_geq(rfd, 0);
    rm_tree_at(rfd);
    cr_assert_eq(rmdir(t.root), 0);
    int fd = ftp_raw(s.port);
    char hex[65], line[512];
    sha_hex("hello", 5, hex);
    snprintf(line, sizeof line, "PUT n 5 %s\n", hex);
    send_str(fd, line);
    expect_line(fd, "ERR n: no such file or directory");
    send_str(fd, "GET hello.txt\n");
    expect_line(fd, "ERR hello.txt: no such file or directory");
    raw_quit(fd);
    stop_ftp(&s, 1);
    remove_tree(&t);
}

EACH_FTP_MODEL(root_removed, 60)

/* A listening socket on a port of the loopback the kernel picks, written
 * to port, for a fake server in a thread of the test. */
static int fake_listen(char port[16])
{
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(lfd, 0);
    struct sockaddr_in a = { .sin_family = AF_INET };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    cr_assert_eq(bind(lfd, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(listen(lfd, 4), 0);
    cr_assert_eq(getsockname(lfd, (struct sockaddr *)&a, &len), 0);
    snprintf(port, 16, "%d", ntohs(a.sin_port));
    return lfd;
}

/* A server (in a thread of the test) that answers each expected line with
 * its reply, then closes. */
struct fake_script {
    int lfd;
    const char *const (*steps)[2];      /* { line expected, reply } */
    size_t n;
};

static void *fake_script_main(void *arg)
{
    struct fake_script *f = arg;
    int c = accept(f->lfd, NULL, NULL);
    cr_assert_geq(c, 0);
    send_str(c, "OK ftp-server ready\n");
    for (size_t i = 0; i < f->n; i++) {
        char line[512];
        recv_line(c, line, sizeof line);
        cr_assert_str_eq(line, f->steps[i][0]);
        send_str(c, f->steps[i][1]);
    }
    close(c);
    return NULL;
}

/* ftp-client escapes what it prints of the server's lines (names, ERR
 * text), and a bad size in an answer to GET is named as such. */
Test(ftp, client_escapes_what_the_server_sends, .timeout = 60)
{
    struct tree t;
    make_tree(&t);
    char bad_size[128], hex[65];
    sha_hex("x", 1, hex);
    snprintf(bad_size, sizeof bad_size, "OK 99999999999999999999999 %s\n", hex);
    const char *const steps[][2] = {
        { "GET x", "ERR x: \x1b]0;owned\x07 nope\r\n" },
        { "LS", "OK 1\n5 a\xc2\x9b" "b\n" },
        { "GET y", bad_size },
    };
    char port[16];
    struct fake_script f = { fake_listen(port), steps, 3 };
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, fake_script_main, &f), 0);
    const char *args[] = { "--dir", t.local, "127.0.0.1", port, NULL };
    struct run r = run_example_input("ftp-client", args, "get x\nls\nget y\n");
    pthread_join(th, NULL);
    close(f.lfd);
    cr_assert(exited_with(&r, 1), "status %#x\n%s", r.status, r.err);
    cr_assert_str_eq(r.out, "5 a\\xc2\\x9bb\n");
    cr_assert_str_eq(r.err, "ftp-client: get x: \\x1b]0;owned\\x07 nope\n"
                            "ftp-client: unexpected reply from the server: a size "
                            "'99999999999999999999999'\n");
    run_free(&r);
    remove_tree(&t);
}

/* 20 clients connected at once each get the greeting before any sends a
 * command, then fetch big.bin interleaved, read in turns. */
static void many_clients(const char *model)
{
    struct tree t;
    make_tree(&t);
    struct srv s = start_ftp(&t, model);
    int base = ftp_settled_base(&s);
    enum { N = 20 };
    int fd[N];
    for (int i = 0; i < N; i++)
        fd[i] = tcp_connect(s.port);
    for (int i = N - 1; i >= 0; i--)
        expect_line(fd[i], "OK ftp-server ready");
    for (int i = 0; i < N; i++)
        send_str(fd[i], "GET big.bin\n");
    char *want = big_data();
    char hex[65], ok[128];
    sha_hex(want, BIG, hex);
    snprintf(ok, sizeof ok, "OK %u %s", BIG, hex);
    for (int i = 0; i < N; i++)
        expect_line(fd[i], ok);
    char *got[N];
    size_t have[N];
    for (int i = 0; i < N; i++) {
        got[i] = malloc(BIG);
        cr_assert_not_null(got[i]);
        have[i] = 0;
    }
    /* Round-robin, 64 KiB at a time from each: every transfer progresses
     * while the others wait. */
    for (bool more = true; more;) {
        more = false;
        for (int i = 0; i < N; i++) {
            size_t k = BIG - have[i] < 65536 ? BIG - have[i] : 65536;
            if (k == 0)
                continue;
            recv_exact(fd[i], got[i] + have[i], k);
            have[i] += k;
            more = true;
        }
    }
    for (int i = 0; i < N; i++) {
        cr_assert_eq(memcmp(got[i], want, BIG), 0, "client %d got other bytes", i);
        free(got[i]);
        raw_quit(fd[i]);
    }
    free(want);
    wait_settled(s.pid, base);
    stop_ftp(&s, N + 1);
    remove_tree(&t);
}

EACH_FTP_MODEL(many_clients, 120)

/* Reads fd until its peer closes it (hang guard); returns the bytes read. */
static size_t drain_to_eof(int fd)
{
    static char buf[65536];
    size_t total = 0;
    for (;;) {
        struct pollfd pf = { .fd = fd, .events = POLLIN };
        cr_assert_gt(poll(&pf, 1, GUARD_MS), 0, "the connection was never closed");
        ssize_t k = recv(fd, buf, sizeof buf, 0);
        if (k == 0 || (k < 0 && errno == ECONNRESET))
            return total;
        cr_assert_gt(k, 0, "recv: %s", strerror(errno));
        total += (size_t)k;
    }
}

/* A session whose receive buffer is small: what the server can send
 * before it waits for the client is bounded by that and its send buffer
 * (at most net.ipv4.tcp_wmem's 4 MiB by default). */
static int ftp_raw_small(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    int small = 16384;
    cr_assert_eq(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small), 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0, "connect: %s",
                 strerror(errno));
    expect_line(fd, "OK ftp-server ready");
    return fd;
}

#define HUGE (16u << 20)        /* bytes of huge.bin (zeros, sparse) */

/* Clients that stop reading a download (of a file larger than the socket
 * buffers hold) hold up no other: another client gets a whole file
 * meanwhile.  One that then goes away ends its session, which leaves no
 * descriptor behind (in the coroutine model: neither the sendfile job's
 * duplicates); one still silent when the server stops is cut after the
 * grace and the server ends cleanly (the coroutine model's session is
 * killed while it waits for room, or while a sendfile job runs, which then
 * ends on its worker). */
static void silent_downloaders(const char *model)
{
    struct tree t;
    make_tree(&t);
    struct srv s = start_ftp(&t, model);
    int base = ftp_settled_base(&s);
    char p[256], hex[65], ok[128];
    snprintf(p, sizeof p, "%s/huge.bin", t.root);
    int hfd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    cr_assert_geq(hfd, 0, "%s: %s", p, strerror(errno));
    cr_assert_eq(ftruncate(hfd, HUGE), 0);
    close(hfd);
    char *zeros = calloc(1, HUGE);
    cr_assert_not_null(zeros);
    sha_hex(zeros, HUGE, hex);
    free(zeros);
    char huge_ok[128];
    snprintf(huge_ok, sizeof huge_ok, "OK %u %s", HUGE, hex);
    char *want = big_data();
    sha_hex(want, BIG, hex);
    snprintf(ok, sizeof ok, "OK %u %s", BIG, hex);
    char *got = malloc(BIG);
    cr_assert_not_null(got);

    int silent = ftp_raw_small(s.port);
    send_str(silent, "GET huge.bin\n");
    expect_line(silent, huge_ok);
    int fd = ftp_raw(s.port);
    send_str(fd, "GET big.bin\n");
    expect_line(fd, ok);
    recv_exact(fd, got, BIG);
    cr_assert_eq(memcmp(got, want, BIG), 0, "model %s: other bytes", model);
    raw_quit(fd);
    close(silent);              /* gone, its download unread */
    wait_settled(s.pid, base);

    silent = ftp_raw_small(s.port);
    send_str(silent, "GET huge.bin\n");
    expect_line(silent, huge_ok);
    stop_ftp(&s, 4);
    size_t n = drain_to_eof(silent);
    cr_assert_lt(n, HUGE, "model %s: the silent client got the whole file", model);
    close(silent);
    free(got);
    free(want);
    remove_tree(&t);
}

EACH_FTP_MODEL(silent_downloaders, 120)

/* A server (in a thread of the test) that answers GET with a SHA-256 that
 * does not match the bytes it sends: ftp-client must save nothing. */
static int fake_lfd;

static void *fake_ftp(void *arg)
{
    (void)arg;
    int c = accept(fake_lfd, NULL, NULL);
    cr_assert_geq(c, 0);
    send_str(c, "OK ftp-server ready\n");
    char line[512];
    recv_line(c, line, sizeof line);
    cr_assert_str_eq(line, "GET data.txt");
    char hex[65], reply[128];
    sha_hex("good data\n", 10, hex);
    snprintf(reply, sizeof reply, "OK 10 %s\ngood dbta\n", hex);
    send_str(c, reply);
    recv_line(c, line, sizeof line);
    cr_assert_str_eq(line, "GET data.txt");
    snprintf(reply, sizeof reply, "OK 10 %s\ngood data\n", hex);
    send_str(c, reply);
    recv_line(c, line, sizeof line);
    cr_assert_str_eq(line, "QUIT");
    send_str(c, "OK bye\n");
    close(c);
    return NULL;
}

Test(ftp, client_detects_a_corrupted_download, .timeout = 60)
{
    struct tree t;
    make_tree(&t);
    char port[16];
    fake_lfd = fake_listen(port);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, fake_ftp, NULL), 0);
    const char *args[] = { "--dir", t.local, "127.0.0.1", port, NULL };
    struct run r = run_example_input("ftp-client", args, "get data.txt\nget data.txt\n");
    pthread_join(th, NULL);
    close(fake_lfd);
    cr_assert(exited_with(&r, 1), "status %#x\n%s", r.status, r.err);
    cr_assert_str_eq(r.err, "ftp-client: get data.txt: checksum mismatch: the transfer was "
                            "corrupted (nothing saved)\n");
    cr_assert_eq(strncmp(r.out, "got data.txt: 10 bytes", 22), 0, "%s", r.out);
    run_free(&r);
    char p[256];
    snprintf(p, sizeof p, "%s/data.txt", t.local);
    size_t n;
    char *got = read_file(p, &n);
    cr_assert(got && n == 10 && memcmp(got, "good data\n", 10) == 0);
    free(got);
    cr_assert_eq(count_prefixed(t.local, ".ftp-part-"), 0);
    remove_tree(&t);
}

Test(ftp, client_errors_and_refusals, .timeout = 60)
{
    struct tree t;
    make_tree(&t);
    struct srv s = start_ftp(&t, "threading");
    char port[16], input[512];
    snprintf(port, sizeof port, "%d", s.port);
    snprintf(input, sizeof input,
             "get ../outside/secret.txt\nput %s/missing\nput %s\nfrobnicate\nget hello.txt\n",
             t.outside, t.outside);
    const char *args[] = { "--dir", t.local, "127.0.0.1", port, NULL };
    struct run r = run_example_input("ftp-client", args, input);
    cr_assert(exited_with(&r, 1), "status %#x\n%s", r.status, r.err);
    char *lines[8];
    int n = split_lines(r.err, lines, 8);
    cr_assert_eq(n, 4, "%s", r.err);
    cr_assert_str_eq(lines[0], "ftp-client: get ../outside/secret.txt: '..' leaves the root");
    cr_assert_not_null(strstr(lines[1], "/missing: No such file or directory"), "%s", lines[1]);
    cr_assert_not_null(strstr(lines[2], ": not a regular file"), "%s", lines[2]);
    cr_assert_eq(strncmp(lines[3], "ftp-client: unknown command frobnicate", 38), 0, "%s",
                 lines[3]);
    cr_assert_eq(strncmp(r.out, "got hello.txt: 11 bytes", 23), 0, "%s", r.out);
    run_free(&r);
    stop_ftp(&s, 1);

    const char *const bad[][6] = {
        { NULL }, { "127.0.0.1", NULL }, { "127.0.0.1", "0", NULL }, { "", "21", NULL },
        { "--dir", "/nonexistent/dir", "127.0.0.1", "21", NULL },
        { "--timeout", "0", "h", "1", NULL },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_refused("ftp-client", bad[i]);
    const char *const sbad[][6] = {
        { NULL }, { "65536", NULL }, { "--model", "sync", "0", NULL },
        { "--model", "prefork", "0", NULL }, { "--root", "/nonexistent/dir", "0", NULL },
        { "--max-size", "-1", "0", NULL }, { "1", "2", NULL },
    };
    for (size_t i = 0; i < sizeof sbad / sizeof sbad[0]; i++)
        assert_refused("ftp-server", sbad[i]);
    remove_tree(&t);
}

/* A session still open when the server stops is cut after the grace
 * period (in the forking model its process is killed); the server ends
 * cleanly in each model and leaves no process behind. */
Test(ftp, stop_with_a_session_open, .timeout = 120)
{
    cr_assert_eq(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
    const char *models[] = { "threading", "forking", "coroutine" };
    for (size_t m = 0; m < 3; m++) {
        struct tree t;
        make_tree(&t);
        struct srv s = start_ftp(&t, models[m]);
        int fd = ftp_raw(s.port);
        pid_t kids[8];
        int n = children_of(s.pid, kids, 8);
        stop_ftp(&s, 1);
        expect_eof(fd);
        close(fd);
        for (int i = 0; i < n; i++)
            cr_assert_neq(kill(kids[i], 0), 0, "model %s: session process %d left", models[m],
                          (int)kids[i]);
        remove_tree(&t);
    }
}
