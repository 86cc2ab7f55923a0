/*
 * test_server_threads.c - the threading model keeps nothing per finished
 * request: Python's ThreadingMixIn kept every request's Thread in a list
 * that grew with each request until server_close; conc's threading server
 * counts the threads it waits for, so after many requests the process has
 * no more threads and no more thread stacks than after a few.
 */
#include <criterion/criterion.h>

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conc.h"

#define GUARD_NS (30LL * 1000000000LL)

/* One byte in, the same byte back, then the request ends. */
static int one_byte(conc_server_request *req)
{
    char c;
    ssize_t n = conc_socket_recv(req->sock, &c, 1, 0);
    if (n <= 0)
        return n < 0 ? (int)n : 0;
    return conc_socket_sendall(req->sock, &c, 1, 0, NULL);
}

static const conc_server_handler handler = { .handle = one_byte };

struct serving {
    conc_server *s;
    int rc;
};

static void *serve(void *arg)
{
    struct serving *sv = arg;
    sv->rc = conc_server_serve_forever(sv->s, 0.5);
    return NULL;
}

static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

static int count_maps(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    cr_assert_not_null(f);
    int n = 0;
    for (int c; (c = fgetc(f)) != EOF;)
        n += c == '\n';
    fclose(f);
    return n;
}

/* One request: connect, a byte there and back, close; then wait until the
 * server counts it finished and its thread is gone (at most `threads`
 * threads left in the process). */
static void request(conc_server *s, uint64_t nth, int threads)
{
    conc_sockaddr a;
    cr_assert_eq(conc_server_address(s, &a), 0);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    cr_assert_eq(connect(fd, &a.u.sa, a.len), 0, "connect: %s",
                 strerror(errno));
    char c = (char)('a' + nth % 26), back = 0;
    cr_assert_eq(send(fd, &c, 1, MSG_NOSIGNAL), 1);
    cr_assert_eq(recv(fd, &back, 1, 0), 1);
    cr_assert_eq(back, c);
    close(fd);
    int64_t deadline = conc_now() + GUARD_NS;
    for (;;) {
        conc_server_stats st;
        cr_assert_eq(conc_server_get_stats(s, &st), 0);
        if (st.finished == nth && st.active == 0 &&
            (threads < 0 || count_entries("/proc/self/task") <= threads))
            break;
        cr_assert_lt(conc_now(), deadline, "request %llu: finished %llu, active %llu",
                     (unsigned long long)nth, (unsigned long long)st.finished,
                     (unsigned long long)st.active);
        usleep(1000);
    }
}

/* `cache` is opts.thread_cache; `parked` the request threads it may keep
 * (the requests come one at a time, so the default keeps at most one). */
static void leaves_nothing_behind(int cache, int parked)
{
    conc_sockaddr a;
    cr_assert_eq(conc_sockaddr_inet(&a, AF_INET, "127.0.0.1", 0), 0);
    int base = count_entries("/proc/self/task");   /* the runner's own too */
    conc_server_opts o = CONC_SERVER_OPTS_INIT;
    o.model = CONC_SERVER_THREADING;
    o.thread_cache = cache;
    conc_server *s;
    cr_assert_eq(conc_server_new(&s, SOCK_STREAM, &a, &handler, &o), 0);
    struct serving sv = { .s = s, .rc = 1 };
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, serve, &sv), 0);

    /* A few requests first: the serving thread, conc's own threads and the
     * C library's cache of thread stacks settle. */
    const uint64_t warm = 20, total = 400;
    for (uint64_t i = 1; i <= warm; i++)
        request(s, i, -1);
    int64_t deadline = conc_now() + GUARD_NS;
    int threads;
    for (;;) {
        conc_server_stats st;
        cr_assert_eq(conc_server_get_stats(s, &st), 0);
        threads = count_entries("/proc/self/task");
        if (st.active == 0 && threads <= base + 1 + parked)
            break;                      /* those before, the serving one and
                                           the parked ones */
        cr_assert_lt(conc_now(), deadline, "%d threads after the warm-up, %d before", threads, base);
        usleep(1000);
    }
    int maps = count_maps();

    for (uint64_t i = warm + 1; i <= total; i++)
        request(s, i, threads);
    int grown = count_maps() - maps;
    /* A thread kept per request would keep its stack and guard page: two
     * mappings each, 760 for these 380 requests. */
    cr_assert_lt(grown, 64, "%d more mappings after %llu more requests", grown,
                 (unsigned long long)(total - warm));
    cr_assert_leq(count_entries("/proc/self/task"), threads);

    cr_assert_eq(conc_server_shutdown_wait(s, 30.0), 0);
    pthread_join(t, NULL);
    cr_assert_eq(sv.rc, 0);
    conc_server_stats st;
    cr_assert_eq(conc_server_get_stats(s, &st), 0);
    cr_assert_eq(st.accepted, total);
    cr_assert_eq(st.finished, total);
    conc_server_free(s);
}

/* Python's way: a new thread per request, ended with it. */
Test(server_threads, many_requests_leave_no_thread_or_stack_behind, .timeout = 120)
{
    leaves_nothing_behind(-1, 0);
}

/* The default: finished request threads are parked for the next request,
 * never more than ran at once. */
Test(server_threads, parked_request_threads_stay_bounded, .timeout = 120)
{
    leaves_nothing_behind(0, 1);
}
