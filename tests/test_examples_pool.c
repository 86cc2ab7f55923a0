/*
 * test_examples_pool.c - runs the pool examples from CONC_EXAMPLES_DIR:
 * parallel-map's sums against the closed form and its progress (plain
 * lines on a pipe, a bar redrawn in place on a terminal),
 * custom-thread-pool's figures for both pools (closed and terminated), and
 * crawler against a local HTTP server (python3 -m http.server in a
 * temporary directory) with pages of known sizes, a 404, a refused port
 * and URLs libcurl rejects; and every bad command line.
 */
#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "conc.h"
#include "support/run_example.h"

/* ------------------------------------------------------------ parallel-map */

/* sum of i*i for i = 0 .. n-1 */
static unsigned long long closed_form(unsigned long long n)
{
    if (n == 0)
        return 0;
    unsigned __int128 s = (unsigned __int128)n * (n - 1) * (2 * n - 1) / 6;
    return (unsigned long long)s;
}

static void check_sums(const char *out, unsigned long long n)
{
    char want[256];
    unsigned long long s = closed_form(n);
    snprintf(want, sizeof want, "map: sum=%llu\nimap_unordered: sum=%llu\nsum=%llu\n", s, s, s);
    cr_assert_str_eq(out, want, "n=%llu", n);
}

static void parallel_map(const char *const *args, unsigned long long n)
{
    struct run r = run_example("parallel-map", args);
    assert_success(&r, "parallel-map");
    check_sums(r.out, n);
    run_free(&r);
}

Test(parallel_map, default_workers_and_chunksize, .timeout = 60)
{
    const char *args[] = { "--tasks", "10000", NULL };
    parallel_map(args, 10000);
}

Test(parallel_map, chunksizes_and_workers, .timeout = 120)
{
    const char *a1[] = { "--tasks", "1000", "--workers", "1", NULL };
    parallel_map(a1, 1000);
    const char *a2[] = { "--tasks", "1000", "--workers", "3", "--chunksize", "1", NULL };
    parallel_map(a2, 1000);
    const char *a3[] = { "--tasks", "1001", "--workers", "2", "--chunksize", "7", NULL };
    parallel_map(a3, 1001);
    const char *a4[] = { "--tasks", "5", "--workers", "4", "--chunksize", "1000", NULL };
    parallel_map(a4, 5);
    const char *a5[] = { "--tasks=2000", "--workers=2", "--chunksize=3", NULL };
    parallel_map(a5, 2000);
}

Test(parallel_map, no_and_one_task, .timeout = 60)
{
    const char *a0[] = { "--tasks", "0", NULL };
    parallel_map(a0, 0);
    const char *a1[] = { "--tasks", "1", "--workers", "2", NULL };
    parallel_map(a1, 1);
}

Test(parallel_map, largest_sum_fits, .timeout = 300)
{
    /* 3000000 tasks: the sum is about 9e18, still below 2^64 (large
     * chunks keep it quick in the sanitizer builds). */
    const char *args[] = { "--tasks", "3000000", "--workers", "2", "--chunksize", "20000",
                           NULL };
    parallel_map(args, 3000000);
}

/* Checks the progress lines of one phase (label) starting at lines[*k]:
 * "label: D/N" with D never going down, the last one at N/N. */
static void check_progress_phase(char **lines, int count, int *k, const char *label, long n)
{
    long last = -1;
    size_t ll = strlen(label);
    int seen = 0;
    while (*k < count && strncmp(lines[*k], label, ll) == 0 && lines[*k][ll] == ':') {
        long d, t;
        char tail;
        cr_assert_eq(sscanf(lines[*k] + ll, ": %ld/%ld%c", &d, &t, &tail), 2, "line '%s'",
                     lines[*k]);
        cr_assert_eq(t, n, "line '%s'", lines[*k]);
        cr_assert_geq(d, last, "progress went back: '%s'", lines[*k]);
        cr_assert_leq(d, n);
        last = d;
        seen++;
        (*k)++;
    }
    cr_assert_gt(seen, 0, "no %s progress line", label);
    cr_assert_eq(last, n, "%s's last progress line is not %ld/%ld", label, n, n);
    cr_assert_leq(seen, 11, "%s printed %d lines (one per tenth and the last)", label, seen);
}

Test(parallel_map, progress_lines_when_not_a_terminal, .timeout = 60)
{
    const char *args[] = { "--tasks", "20000", "--workers", "2", "--chunksize", "10",
                           "--progress", NULL };
    struct run r = run_example("parallel-map", args);
    cr_assert(exited_with(&r, 0), "status %#x, stderr:\n%s", r.status, r.err);
    check_sums(r.out, 20000);
    char *lines[64];
    int count = split_lines(r.err, lines, 64);
    int k = 0;
    check_progress_phase(lines, count, &k, "map", 20000);
    check_progress_phase(lines, count, &k, "imap_unordered", 20000);
    cr_assert_eq(k, count, "stray line on stderr: '%s'", k < count ? lines[k] : "");
    run_free(&r);
}

/* Runs parallel-map with stderr on a terminal (a pseudo-terminal this test
 * reads) and stdout on a pipe; returns the exit status and fills out/err. */
static int run_on_terminal(const char *const *args, struct buf *out, struct buf *err)
{
    char path[512];
    const char *argv[32];
    example_argv("parallel-map", args, path, sizeof path, argv);
    int master = posix_openpt(O_RDWR | O_NOCTTY);
    cr_assert_geq(master, 0);
    cr_assert_eq(grantpt(master), 0);
    cr_assert_eq(unlockpt(master), 0);
    const char *name = ptsname(master);
    cr_assert_not_null(name);
    char slave_name[128];
    snprintf(slave_name, sizeof slave_name, "%s", name);
    int po[2];
    cr_assert_eq(pipe(po), 0);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        int slave = open(slave_name, O_RDWR | O_NOCTTY);
        if (slave < 0)
            _exit(126);
        dup2(slave, STDERR_FILENO);
        dup2(po[1], STDOUT_FILENO);
        close(slave);
        close(master);
        close(po[0]);
        close(po[1]);
        execv(path, (char *const *)argv);
        _exit(127);
    }
    close(po[1]);
    buf_add(out, "", 0);
    buf_add(err, "", 0);
    struct pollfd pfd[2] = { { .fd = po[0], .events = POLLIN }, { .fd = master, .events = POLLIN } };
    int64_t deadline = conc_now() + 60LL * 1000000000LL;
    while (pfd[0].fd >= 0 || pfd[1].fd >= 0) {
        cr_assert_lt(conc_now(), deadline, "parallel-map hung on a terminal");
        if (poll(pfd, 2, 1000) < 0)
            continue;
        for (int i = 0; i < 2; i++) {
            if (pfd[i].fd < 0 || !(pfd[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            char chunk[4096];
            ssize_t n = read(pfd[i].fd, chunk, sizeof chunk);
            if (n > 0) {
                buf_add(i == 0 ? out : err, chunk, (size_t)n);
            } else {
                close(pfd[i].fd);       /* the pipe's end, or EIO once the slave closed */
                pfd[i].fd = -1;
            }
        }
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    return status;
}

Test(parallel_map, progress_bar_on_a_terminal, .timeout = 90)
{
    const char *args[] = { "--tasks", "20000", "--workers", "2", "--chunksize", "10",
                           "--progress", NULL };
    struct buf out = { 0 }, err = { 0 };
    int status = run_on_terminal(args, &out, &err);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %#x:\n%s", status,
              err.data);
    check_sums(out.data, 20000);
    /* Each bar is redrawn in place ("\r") and ends full, with a newline
     * (the terminal shows it as "\r\n"). */
    const char *ends[] = { "map             [########################################] 100% "
                           "20000/20000\r\n",
                           "imap_unordered  [########################################] 100% "
                           "20000/20000\r\n" };
    for (int i = 0; i < 2; i++)
        cr_assert_not_null(strstr(err.data, ends[i]), "no full bar '%.30s...' in:\n%s", ends[i],
                           err.data);
    cr_assert_null(strstr(err.data, "map: "), "plain lines on a terminal:\n%s", err.data);
    cr_assert_eq(err.data[0], '\r', "the bar is drawn in place: '%.40s'", err.data);
    free(out.data);
    free(err.data);
}

Test(parallel_map, progress_with_no_tasks, .timeout = 60)
{
    const char *args[] = { "--tasks", "0", "--progress", NULL };
    struct run r = run_example("parallel-map", args);
    cr_assert(exited_with(&r, 0), "status %#x, stderr:\n%s", r.status, r.err);
    check_sums(r.out, 0);
    run_free(&r);
}

Test(parallel_map, bad_input, .timeout = 60)
{
    const char *a1[] = { NULL };
    const char *a2[] = { "--tasks", "-1", NULL };
    const char *a3[] = { "--tasks", "3000001", NULL };
    const char *a4[] = { "--tasks", "10", "--workers", "0", NULL };
    const char *a5[] = { "--tasks", "10", "--workers", "257", NULL };
    const char *a6[] = { "--tasks", "10", "--chunksize", "0", NULL };
    const char *a7[] = { "--tasks", "10", "--chunksize", "1000001", NULL };
    const char *a8[] = { "--tasks", "ten", NULL };
    const char *a9[] = { "--tasks", NULL };
    const char *a10[] = { "--tasks", "10", "extra", NULL };
    const char *a11[] = { "--tasks", "10", "--progress=yes", NULL };
    const char *a12[] = { "--workers", "2", NULL };
    const char *const *all[] = { a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12 };
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        assert_refused("parallel-map", all[i]);
}

/* ------------------------------------------------------ custom-thread-pool */

/* The figures of tasks 0 .. n-1 when every task runs: done, failed, sum. */
static void expected_figures(long n, char *buf, size_t size)
{
    long failed = n / 10;
    unsigned long long sum = 0;
    for (long i = 0; i < n; i++)
        if (i % 10 != 9)
            sum += (unsigned long long)i * (unsigned long long)i;
    snprintf(buf, size, "done=%ld failed=%ld sum=%llu", n, failed, sum);
}

static void custom_closed(const char *const *args, long n)
{
    struct run r = run_example("custom-thread-pool", args);
    assert_success(&r, "custom-thread-pool");
    char figures[128], want[512];
    expected_figures(n, figures, sizeof figures);
    snprintf(want, sizeof want, "hand-made pool: %s\nThreadPool:     %s\n", figures, figures);
    cr_assert_str_eq(r.out, want);
    run_free(&r);
}

Test(custom_thread_pool, both_pools_print_the_same, .timeout = 60)
{
    const char *a1[] = { NULL };
    custom_closed(a1, 200);
    const char *a2[] = { "--workers", "1", "--tasks", "10", NULL };
    custom_closed(a2, 10);
    const char *a3[] = { "--workers", "64", "--tasks", "5000", NULL };
    custom_closed(a3, 5000);
    const char *a4[] = { "--tasks", "0", NULL };
    custom_closed(a4, 0);
}

Test(custom_thread_pool, bounded_queue, .timeout = 60)
{
    const char *a1[] = { "--queue", "1", "--workers", "3", "--tasks", "1000", NULL };
    custom_closed(a1, 1000);
    const char *a2[] = { "--queue", "5", "--workers", "5", "--tasks", "200", NULL };
    custom_closed(a2, 200);
}

/* One pool's two lines after --terminate: the figures of the tasks that
 * ran (at most max_done of them: the workers' tasks) and the dropped count;
 * done + dropped = n, and the sum matches the tasks that may have run. */
static void check_terminated(char **lines, const char *who, long n, long max_done)
{
    long done, failed, dropped, total;
    unsigned long long sum;
    char tail;
    char fmt[128];
    snprintf(fmt, sizeof fmt, "%-15s done=%%ld failed=%%ld sum=%%llu%%c", who);
    cr_assert_eq(sscanf(lines[0], fmt, &done, &failed, &sum, &tail), 3, "line '%s'", lines[0]);
    snprintf(fmt, sizeof fmt, "%-15s terminated, dropped=%%ld (done+dropped=%%ld)%%c", who);
    cr_assert_eq(sscanf(lines[1], fmt, &dropped, &total, &tail), 2, "line '%s'", lines[1]);
    cr_assert_eq(done + dropped, n, "%s: done %ld + dropped %ld != %ld", who, done, dropped, n);
    cr_assert_eq(total, n);
    cr_assert_leq(done, max_done, "%s: %ld tasks ran after terminate", who, done);
    cr_assert_leq(failed, done);
    if (done == 0)
        cr_assert_eq(sum, 0, "%s: a sum without a task", who);
}

Test(custom_thread_pool, terminate_drops_the_queued_tasks, .timeout = 60)
{
    const char *args[] = { "--terminate", "--workers", "3", "--tasks", "500", NULL };
    struct run r = run_example("custom-thread-pool", args);
    assert_success(&r, "custom-thread-pool --terminate");
    char *lines[8];
    cr_assert_eq(split_lines(r.out, lines, 8), 4, "output:\n%s", r.out);
    check_terminated(lines, "hand-made pool:", 500, 3);
    check_terminated(lines + 2, "ThreadPool:", 500, 3);
    run_free(&r);
}

Test(custom_thread_pool, terminate_with_a_full_queue_does_not_hang, .timeout = 60)
{
    /* The queue fills while the workers wait at the gate: it opens early,
     * so everything may run; nothing is lost or counted twice. */
    const char *args[] = { "--terminate", "--queue", "2", "--workers", "2", "--tasks", "300",
                           NULL };
    struct run r = run_example("custom-thread-pool", args);
    assert_success(&r, "custom-thread-pool --terminate --queue 2");
    char *lines[8];
    cr_assert_eq(split_lines(r.out, lines, 8), 4, "output:\n%s", r.out);
    check_terminated(lines, "hand-made pool:", 300, 300);
    check_terminated(lines + 2, "ThreadPool:", 300, 300);
    run_free(&r);
}

Test(custom_thread_pool, bad_input, .timeout = 60)
{
    const char *a1[] = { "--workers", "0", NULL };
    const char *a2[] = { "--workers", "65", NULL };
    const char *a3[] = { "--tasks", "-1", NULL };
    const char *a4[] = { "--tasks", "1000001", NULL };
    const char *a5[] = { "--queue", "-2", NULL };
    const char *a6[] = { "--terminate=1", NULL };
    const char *a7[] = { "--workers", NULL };
    const char *a8[] = { "stray", NULL };
    const char *a9[] = { "--tasks", "1e3", NULL };
    const char *const *all[] = { a1, a2, a3, a4, a5, a6, a7, a8, a9 };
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        assert_refused("custom-thread-pool", all[i]);
}

/* ----------------------------------------------------------------- crawler */

/* A local HTTP server: python3 -m http.server serving a temporary
 * directory, on a port it picked. */
struct server {
    pid_t pid;
    int port;
    char dir[64];
};

static void write_file(const char *dir, const char *name, size_t size)
{
    char path[128];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    for (size_t i = 0; i < size; i++)
        fputc('a' + (int)(i % 26), f);
    cr_assert_eq(fclose(f), 0);
}

static struct server server_start(void)
{
    struct server s = { .pid = -1 };
    snprintf(s.dir, sizeof s.dir, "/tmp/conc-crawl-XXXXXX");
    cr_assert_not_null(mkdtemp(s.dir));
    write_file(s.dir, "small.html", 1000);
    write_file(s.dir, "big.bin", 300000);
    write_file(s.dir, "empty.txt", 0);

    int out[2];
    cr_assert_eq(pipe(out), 0);
    fflush(NULL);
    s.pid = fork();
    cr_assert_geq(s.pid, 0);
    if (s.pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(out[1], STDOUT_FILENO);
        int null = open("/dev/null", O_WRONLY);
        dup2(null, STDERR_FILENO);
        close(out[0]);
        close(out[1]);
        execlp("python3", "python3", "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
               "--directory", s.dir, (char *)NULL);
        _exit(127);
    }
    close(out[1]);
    /* Its first line: "Serving HTTP on 127.0.0.1 port N (...) ..." */
    char line[256];
    size_t len = 0;
    while (len < sizeof line - 1 && !memchr(line, '\n', len)) {
        struct pollfd p = { .fd = out[0], .events = POLLIN };
        cr_assert_eq(poll(&p, 1, 30000), 1, "the HTTP server said nothing in 30 s");
        ssize_t n = read(out[0], line + len, sizeof line - 1 - len);
        cr_assert_gt(n, 0, "the HTTP server ended (is python3 installed?)");
        len += (size_t)n;
    }
    line[len] = '\0';
    close(out[0]);
    cr_assert_eq(sscanf(line, "Serving HTTP on 127.0.0.1 port %d", &s.port), 1,
                 "server line '%s'", line);
    return s;
}

static void server_stop(struct server *s)
{
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    const char *names[] = { "small.html", "big.bin", "empty.txt" };
    char path[128];
    for (size_t i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", s->dir, names[i]);
        unlink(path);
    }
    rmdir(s->dir);
}

/* A port on which nothing listens: bound (so nobody else takes it while
 * the test runs) but not listening, so a connection is refused. */
static int refused_port(int *fd)
{
    *fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(*fd, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    cr_assert_eq(bind(*fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t alen = sizeof a;
    cr_assert_eq(getsockname(*fd, (struct sockaddr *)&a, &alen), 0);
    return ntohs(a.sin_port);
}

/* Finds the one line of out that starts with "url " (fails when there are
 * none or several) and returns what follows. */
static const char *line_of(char **lines, int count, const char *url, bool *used)
{
    int found = -1;
    size_t ul = strlen(url);
    for (int i = 0; i < count; i++)
        if (!used[i] && strncmp(lines[i], url, ul) == 0 && lines[i][ul] == ' ') {
            found = i;
            break;
        }
    cr_assert_geq(found, 0, "no line for %s", url);
    used[found] = true;
    return lines[found] + ul + 1;
}

static void crawl_local(const char *procs)
{
    struct server s = server_start();
    int hold;
    int dead = refused_port(&hold);
    char small[96], big[96], empty[96], missing[96], refused[96], dir[96];
    snprintf(small, sizeof small, "http://127.0.0.1:%d/small.html", s.port);
    snprintf(big, sizeof big, "http://127.0.0.1:%d/big.bin", s.port);
    snprintf(empty, sizeof empty, "http://127.0.0.1:%d/empty.txt", s.port);
    snprintf(missing, sizeof missing, "http://127.0.0.1:%d/no/such/page", s.port);
    snprintf(refused, sizeof refused, "http://127.0.0.1:%d/", dead);
    snprintf(dir, sizeof dir, "http://127.0.0.1:%d/", s.port);
    const char *args[] = { "--procs", procs, small, missing, refused, big, empty,
                           "ftp://127.0.0.1/file", small, "http://bad host/", dir, NULL };
    struct run r = run_example("crawler", args);
    close(hold);
    server_stop(&s);
    assert_success(&r, "crawler");

    char *lines[32];
    bool used[32] = { false };
    int count = split_lines(r.out, lines, 32);
    cr_assert_eq(count, 9, "one line per URL:\n%s", r.out);
    cr_assert_str_eq(line_of(lines, count, small, used), "status=200 bytes=1000");
    cr_assert_str_eq(line_of(lines, count, small, used), "status=200 bytes=1000",
                     "a URL given twice is fetched twice");
    cr_assert_str_eq(line_of(lines, count, big, used), "status=200 bytes=300000");
    cr_assert_str_eq(line_of(lines, count, empty, used), "status=200 bytes=0");
    const char *m = line_of(lines, count, missing, used);
    unsigned long long bytes;
    char tail;
    cr_assert_eq(sscanf(m, "status=404 bytes=%llu%c", &bytes, &tail), 1,
                 "an HTTP error is still a status: '%s'", m);
    const char *d = line_of(lines, count, dir, used);
    cr_assert_eq(sscanf(d, "status=200 bytes=%llu%c", &bytes, &tail), 1, "'%s'", d);
    cr_assert_gt(bytes, 0);
    const char *errs[] = { refused, "ftp://127.0.0.1/file", "http://bad host/" };
    for (size_t i = 0; i < 3; i++) {
        const char *e = line_of(lines, count, errs[i], used);
        cr_assert_eq(strncmp(e, "error=", 6), 0, "%s: '%s'", errs[i], e);
        cr_assert_gt(strlen(e), 6, "%s: an empty error", errs[i]);
    }
    run_free(&r);
}

Test(crawler, local_server_two_workers, .timeout = 120)
{
    crawl_local("2");
}

Test(crawler, local_server_one_worker, .timeout = 120)
{
    crawl_local("1");
}

Test(crawler, only_failures_still_exit_0, .timeout = 60)
{
    int hold;
    int dead = refused_port(&hold);
    char refused[64];
    snprintf(refused, sizeof refused, "http://127.0.0.1:%d/x", dead);
    const char *args[] = { "--", refused, NULL };
    struct run r = run_example("crawler", args);
    close(hold);
    assert_success(&r, "crawler");
    char want[96];
    snprintf(want, sizeof want, "%s error=", refused);
    cr_assert_eq(strncmp(r.out, want, strlen(want)), 0, "'%s'", r.out);
    cr_assert_eq(strchr(r.out, '\n') - r.out + 1, (long)strlen(r.out), "one line: '%s'", r.out);
    run_free(&r);
}

/* A server that accepts connections and never answers; its port. */
static int silent_server(int *lfd)
{
    *lfd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(*lfd, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    cr_assert_eq(bind(*lfd, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(listen(*lfd, 64), 0);
    socklen_t alen = sizeof a;
    cr_assert_eq(getsockname(*lfd, (struct sockaddr *)&a, &alen), 0);
    return ntohs(a.sin_port);
}

/* The children of process pid, from every one of its threads' lists. */
static int all_children_of(pid_t pid, pid_t *kids, int cap)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return 0;
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (e->d_name[0] == '.')
            continue;
        char file[320];
        snprintf(file, sizeof file, "/proc/%d/task/%s/children", (int)pid, e->d_name);
        FILE *f = fopen(file, "r");
        if (!f)
            continue;
        long k;
        while (n < cap && fscanf(f, "%ld", &k) == 1)
            kids[n++] = (pid_t)k;
        fclose(f);
    }
    closedir(d);
    return n;
}

Test(crawler, a_worker_killed_mid_fetch_fails_only_its_url, .timeout = 120)
{
    /* The worker's fetch hangs until the worker is killed. */
    int lfd;
    int port = silent_server(&lfd);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/hang", port);
    int hold;
    int dead = refused_port(&hold);
    char refused[64];
    snprintf(refused, sizeof refused, "http://127.0.0.1:%d/", dead);

    cr_assert_eq(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
    const char *args[] = { "--procs", "1", url, refused, NULL };
    struct bg b = start_example("crawler", args);
    struct pollfd p = { .fd = lfd, .events = POLLIN };
    cr_assert_eq(poll(&p, 1, 60000), 1, "the worker never connected");
    int conn = accept(lfd, NULL, NULL);
    cr_assert_geq(conn, 0);
    /* The one worker holds the hanging fetch: kill it. */
    pid_t kids[16];
    int n = all_children_of(b.pid, kids, 16);
    cr_assert_eq(n, 1, "want the one worker, found %d children", n);
    cr_assert_eq(kill(kids[0], SIGKILL), 0);
    char *out, *err;
    int status = finish_example(&b, &out, &err);
    close(conn);
    close(lfd);
    close(hold);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %#x, stderr:\n%s", status,
              err);
    char *lines[8];
    char *copy = strdup(out);
    cr_assert_eq(split_lines(copy, lines, 8), 2, "output:\n%s", out);
    bool used[8] = { false };
    cr_assert_str_eq(line_of(lines, 2, url, used), "error=the worker was killed by signal 9");
    const char *e = line_of(lines, 2, refused, used);
    cr_assert_eq(strncmp(e, "error=Failed to connect", 23), 0,
                 "the replacement worker fetched the next URL: '%s'", e);
    free(copy);
    free(out);
    free(err);
}

Test(crawler, sigint_stops_the_workers_too, .timeout = 120)
{
    int lfd;
    int port = silent_server(&lfd);
    char u1[64], u2[64], u3[64];
    snprintf(u1, sizeof u1, "http://127.0.0.1:%d/a", port);
    snprintf(u2, sizeof u2, "http://127.0.0.1:%d/b", port);
    snprintf(u3, sizeof u3, "http://127.0.0.1:%d/c", port);
    /* The workers come back to this process when the crawler dies, so it
     * can see that they end (and reap them). */
    cr_assert_eq(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
    const char *args[] = { "--procs", "3", u1, u2, u3, NULL };
    struct bg b = start_example("crawler", args);
    int conns[3];
    for (int i = 0; i < 3; i++) {
        struct pollfd p = { .fd = lfd, .events = POLLIN };
        cr_assert_eq(poll(&p, 1, 60000), 1, "worker %d never connected", i);
        conns[i] = accept(lfd, NULL, NULL);
        cr_assert_geq(conns[i], 0);
    }
    pid_t kids[16];
    int n = all_children_of(b.pid, kids, 16);
    cr_assert_eq(n, 3, "want the 3 workers, found %d children", n);
    cr_assert_eq(kill(b.pid, SIGINT), 0);
    char *out, *err;
    int status = finish_example(&b, &out, &err);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGINT, "status %#x, stderr:\n%s",
              status, err);
    /* Every worker ends with the crawler: well before its fetch (30 s at
     * most, and the server never answers) could have ended it. */
    int64_t deadline = conc_now() + 20LL * 1000000000LL;
    for (int i = 0; i < n; i++) {
        int st;
        pid_t r;
        while ((r = waitpid(kids[i], &st, WNOHANG)) != kids[i]) {
            if (conc_now() > deadline) {
                for (int k = i; k < n; k++)
                    kill(kids[k], SIGKILL);
                cr_assert_fail("worker %d (pid %d) still runs 20 s after the crawler died", i,
                               (int)kids[i]);
            }
            usleep(2000);
        }
        cr_assert(WIFSIGNALED(st), "worker %d: status %#x", i, st);
    }
    for (int i = 0; i < 3; i++)
        close(conns[i]);
    close(lfd);
    free(out);
    free(err);
}

Test(crawler, bad_input, .timeout = 60)
{
    const char *a1[] = { NULL };
    const char *a2[] = { "--procs", "2", NULL };
    const char *a3[] = { "--procs", "0", "http://127.0.0.1:1/", NULL };
    const char *a4[] = { "--procs", "65", "http://127.0.0.1:1/", NULL };
    const char *a5[] = { "--procs", "two", "http://127.0.0.1:1/", NULL };
    const char *a6[] = { "http://127.0.0.1:1/", "--procs", NULL };
    const char *a7[] = { "", NULL };
    const char *a8[] = { "--bogus", "http://127.0.0.1:1/", NULL };
    const char *a9[] = { "--", NULL };
    const char *const *all[] = { a1, a2, a3, a4, a5, a6, a7, a8, a9 };
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        assert_refused("crawler", all[i]);

    /* A URL over 8192 bytes. */
    static char longurl[8300];
    memset(longurl, 'a', sizeof longurl - 1);
    memcpy(longurl, "http://", 7);
    const char *a10[] = { longurl, NULL };
    assert_refused("crawler", a10);
}
