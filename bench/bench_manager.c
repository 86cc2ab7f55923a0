/*
 * bench_manager.c - conc's manager (conc/manager.h) against Python's
 * multiprocessing Manager, over a Unix socket and over TCP on the loopback,
 * with the raw request/response round trip of a socket as the floor.
 *
 *   unix_rtt              ops/s, raw: a 16-byte request written to a Unix
 *                         stream socket, a 16-byte answer read back, from a
 *                         forked server process that echoes it (blocking
 *                         read/write, nothing else)
 *   tcp_rtt               ops/s, raw: the same over TCP on 127.0.0.1
 *                         (TCP_NODELAY)
 *   manager_dict_set      ops/s, one client: d[key] = value on a manager
 *                         dict (16-byte keys from a set of 64, 16-byte values)
 *   manager_dict_get      ops/s, one client: d[key]
 *   manager_lock          ops/s, one client: acquire + release of a manager
 *                         Lock (one op, two round trips)
 *   manager_queue_putget  ops/s, one client: put + get on a manager Queue
 *                         (one op, two round trips)
 *   manager_dict_set_c8   ops/s in total, 8 forked client processes setting
 *                         keys of one dict at once
 *   manager_c8_server_cpus  CPUs: the server process's CPU time (user +
 *                         system, /proc) per second of wall time while the
 *                         clients of manager_dict_set_c8 run their loops
 *                         (over all its runs)
 *   manager_c8_client_cpus  CPUs: the 8 client processes' CPU time in their
 *                         loops per second of wall time, the same way
 *
 * Systems: conc-unix and conc-tcp (the manager started as a child with an
 * authkey, conc_manager_start, serving from its default threads: one per
 * CPU, at most 4), python-unix and python-tcp
 * (bench/peers/manager_mp.py, SyncManager.start() with an authkey), raw for
 * the round trips.  python-unix is compared against conc-unix, python-tcp
 * against conc-tcp.  The targets: one client at least 0.67 x unix_rtt (a
 * manager call is one round trip, two process wake-ups) and never slower
 * than Python; manager_dict_set_c8 at least 10 x Python.
 *
 * Self-checks, reported as FAILED: a value read back differs, a queue gives
 * another message, a dict holds another number of keys than the clients
 * set, a client process fails.  The client processes die with the program
 * (PR_SET_PDEATHSIG) and start together (a process-shared barrier).
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "benchlib.h"
#include "conc.h"
#ifdef CONC_BENCH_HAVE_MANAGER
#include "conc/manager.h"
#endif

#define CLIENTS 8
#define NKEYS 64
#define AUTHKEY "bench-manager-authkey"

static const bench_metric metrics[] = {
    { "unix_rtt", "ops/s", "16-byte request/answer over a Unix stream socket, raw" },
    { "tcp_rtt", "ops/s", "16-byte request/answer over TCP on the loopback, raw" },
    { "manager_dict_set", "ops/s", "d[key] = value on a manager dict, one client" },
    { "manager_dict_get", "ops/s", "d[key] on a manager dict, one client" },
    { "manager_lock", "ops/s", "acquire + release of a manager Lock, one client" },
    { "manager_queue_putget", "ops/s", "put + get on a manager Queue, one client" },
    { "manager_dict_set_c8", "ops/s", "d[key] = value, 8 client processes, in total" },
    { "manager_c8_server_cpus", "CPUs", "the server's CPU use during manager_dict_set_c8" },
    { "manager_c8_client_cpus", "CPUs", "the 8 clients' CPU use during manager_dict_set_c8" },
};

static char keys[NKEYS][16];

static void make_keys(void)
{
    for (int i = 0; i < NKEYS; i++) {
        char text[17];
        snprintf(text, sizeof text, "key-%012d", i);
        memcpy(keys[i], text, 16);
    }
}

/* ------------------------------------------------------- raw round trip */

static bool read_full(int fd, void *buf, size_t n)
{
    char *p = buf;
    while (n) {
        ssize_t r = read(fd, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return false;
        p += r;
        n -= (size_t)r;
    }
    return true;
}

static bool write_full(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n) {
        ssize_t r = write(fd, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return false;
        p += r;
        n -= (size_t)r;
    }
    return true;
}

/* A connected pair of stream sockets of the family: a socketpair for Unix,
 * a listening socket's accepted connection for TCP. */
static int stream_pair(int family, int sv[2])
{
    if (family == AF_UNIX)
        return socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0 ? -errno : 0;
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (ls < 0)
        return -errno;
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof a;
    int r = 0;
    if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 1) < 0 ||
        getsockname(ls, (struct sockaddr *)&a, &len) < 0) {
        r = -errno;
        close(ls);
        return r;
    }
    sv[0] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sv[0] < 0 || connect(sv[0], (struct sockaddr *)&a, sizeof a) < 0 ||
        (sv[1] = accept4(ls, NULL, NULL, SOCK_CLOEXEC)) < 0) {
        r = -errno;
        if (sv[0] >= 0)
            close(sv[0]);
        close(ls);
        return r;
    }
    close(ls);
    int one = 1;
    setsockopt(sv[0], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(sv[1], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return 0;
}

static int64_t rtt_raw(void *arg, long iters)
{
    int family = (int)(intptr_t)arg;
    int sv[2];
    int r = stream_pair(family, sv);
    if (r)
        return r;
    pid_t self = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        r = -errno;
        close(sv[0]);
        close(sv[1]);
        return r;
    }
    if (pid == 0) {
        bench_worker_enter(1, self);
        close(sv[0]);
        char buf[16];
        while (read_full(sv[1], buf, sizeof buf))
            if (!write_full(sv[1], buf, sizeof buf))
                break;
        _exit(0);
    }
    close(sv[1]);
    char req[16], ans[16];
    memcpy(req, keys[0], sizeof req);
    int64_t t0 = bench_now();
    for (long i = 0; i < iters; i++) {
        req[0] = (char)i;
        if (!write_full(sv[0], req, sizeof req) || !read_full(sv[0], ans, sizeof ans) ||
            memcmp(req, ans, sizeof req) != 0) {
            fprintf(stderr, "bench_manager: raw round trip: wrong or missing answer\n");
            t0 = -1;
            break;
        }
    }
    int64_t ns = t0 < 0 ? -EPROTO : bench_now() - t0;
    close(sv[0]);
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    return ns;
}

/* ------------------------------------------------------------ conc side */

static const char *const conc_metrics[] = {
    "manager_dict_set", "manager_dict_get", "manager_lock", "manager_queue_putget",
    "manager_dict_set_c8", "manager_c8_server_cpus", "manager_c8_client_cpus", NULL,
};

#ifdef CONC_BENCH_HAVE_MANAGER

static const char value[16] = "vvvvvvvvvvvvvvvv";

struct transport {
    const char *system;
    const char *address;            /* NULL: a private Unix socket */
    conc_manager *m;
};

static struct transport transports[] = {
    { "conc-unix", NULL, NULL },
    { "conc-tcp", "127.0.0.1:0", NULL },
};

static int start_manager(struct transport *t)
{
    if (t->m)
        return 0;
    conc_manager_opts o = CONC_MANAGER_OPTS_INIT;
    o.address = t->address;
    o.authkey = AUTHKEY;
    o.authkey_len = sizeof AUTHKEY - 1;
    int r = conc_manager_new(&t->m, &o);
    if (r)
        return r;
    r = conc_manager_start(t->m);
    if (r) {
        conc_manager_free(t->m);
        t->m = NULL;
    }
    return r;
}

static int64_t dict_set_conc(void *arg, long iters)
{
    struct transport *t = arg;
    conc_proxy *d;
    int r = conc_manager_create(t->m, &d, CONC_PROXY_DICT, NULL, 0, 0);
    if (r)
        return r;
    int64_t t0 = bench_now();
    for (long i = 0; i < iters && !r; i++)
        r = conc_proxy_dict_set(d, keys[i & (NKEYS - 1)], 16, value, 16);
    int64_t ns = bench_now() - t0;
    void *v = NULL;
    size_t len = 0;
    if (!r)
        r = conc_proxy_dict_get(d, keys[0], 16, &v, &len);
    if (!r && (len != 16 || memcmp(v, value, 16) != 0))
        r = -EPROTO;
    free(v);
    conc_proxy_free(d);
    return r ? r : ns;
}

static int64_t dict_get_conc(void *arg, long iters)
{
    struct transport *t = arg;
    conc_proxy *d;
    int r = conc_manager_create(t->m, &d, CONC_PROXY_DICT, NULL, 0, 0);
    if (r)
        return r;
    for (int k = 0; k < NKEYS && !r; k++)
        r = conc_proxy_dict_set(d, keys[k], 16, value, 16);
    int64_t t0 = bench_now();
    for (long i = 0; i < iters && !r; i++) {
        void *v;
        size_t len;
        r = conc_proxy_dict_get(d, keys[i & (NKEYS - 1)], 16, &v, &len);
        if (!r) {
            if (len != 16 || memcmp(v, value, 16) != 0)
                r = -EPROTO;
            free(v);
        }
    }
    int64_t ns = bench_now() - t0;
    conc_proxy_free(d);
    return r ? r : ns;
}

static int64_t lock_conc(void *arg, long iters)
{
    struct transport *t = arg;
    conc_proxy *l;
    int r = conc_manager_create(t->m, &l, CONC_PROXY_LOCK, NULL, 0, 0);
    if (r)
        return r;
    int64_t t0 = bench_now();
    for (long i = 0; i < iters && !r; i++) {
        r = conc_proxy_acquire(l, CONC_FOREVER);
        if (!r)
            r = conc_proxy_release(l);
    }
    int64_t ns = bench_now() - t0;
    conc_proxy_free(l);
    return r ? r : ns;
}

static int64_t queue_conc(void *arg, long iters)
{
    struct transport *t = arg;
    conc_proxy *q;
    int r = conc_manager_create(t->m, &q, CONC_PROXY_QUEUE, NULL, 0, 0);
    if (r)
        return r;
    int64_t t0 = bench_now();
    for (long i = 0; i < iters && !r; i++) {
        r = conc_proxy_queue_put(q, value, 16, CONC_FOREVER);
        void *v;
        size_t len;
        if (!r)
            r = conc_proxy_queue_get(q, &v, &len, CONC_FOREVER);
        if (!r) {
            if (len != 16 || memcmp(v, value, 16) != 0)
                r = -EPROTO;
            free(v);
        }
    }
    int64_t ns = bench_now() - t0;
    conc_proxy_free(q);
    return r ? r : ns;
}

/* CPU seconds a process has used (user + system), from /proc; -1 when it
 * cannot be read. */
static double proc_cpu(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    unsigned long ut, st;
    /* after the name: state is field 3, utime 14, stime 15 */
    for (int field = 2; p && field < 14; field++)
        p = strchr(p + 1, ' ');
    if (!p || sscanf(p, " %lu %lu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* CPU seconds the calling process has used. */
static double self_cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* CPU seconds of the server and of the clients while the clients ran their
 * loops, and the wall seconds of those loops, summed over the runs of
 * manager_dict_set_c8 (the long runs weigh the most; a short calibration
 * run is below the clock tick of the kernel's CPU figures). */
static double c8_cpu[2], c8_wall;

/* Records the CPUs used over the runs since the last call. */
static void record_c8_cpus(const char *system)
{
    static const char *const names[2] = { "manager_c8_server_cpus", "manager_c8_client_cpus" };
    for (int k = 0; k < 2; k++) {
        if (!bench_enabled(names[k], system))
            continue;
        if (c8_wall <= 0)
            bench_skip(names[k], system, "CPUs", "manager_dict_set_c8 did not run");
        else
            bench_record(names[k], system, c8_cpu[k] / c8_wall, "CPUs");
    }
    c8_cpu[0] = c8_cpu[1] = c8_wall = 0;
}

/* What the 8 client processes share: a barrier and their start/end times. */
struct c8_area {
    pthread_barrier_t start;        /* the clients and the parent */
    int64_t times[2 * CLIENTS];
    double cpu[CLIENTS];            /* each client's CPU seconds in its loop */
};

static int64_t dict_set_c8_conc(void *arg, long iters)
{
    struct transport *t = arg;
    conc_proxy *d;
    int r = conc_manager_create(t->m, &d, CONC_PROXY_DICT, NULL, 0, 0);
    if (r)
        return r;
    struct c8_area *a = mmap(NULL, sizeof *a, PROT_READ | PROT_WRITE,
                             MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (a == MAP_FAILED) {
        conc_proxy_free(d);
        return -errno;
    }
    pthread_barrierattr_t ba;
    pthread_barrierattr_init(&ba);
    pthread_barrierattr_setpshared(&ba, PTHREAD_PROCESS_SHARED);
    pthread_barrier_init(&a->start, &ba, CLIENTS + 1);
    pthread_barrierattr_destroy(&ba);
    long per = iters / CLIENTS > 0 ? iters / CLIENTS : 1;
    pid_t self = getpid(), pids[CLIENTS];
    pid_t server = conc_manager_pid(t->m);
    double s0 = -1;
    int started = 0;
    for (; started < CLIENTS; started++) {
        pids[started] = fork();
        if (pids[started] < 0) {
            r = -errno;
            break;
        }
        if (pids[started] == 0) {
            int slot = started;
            bench_worker_enter(slot, self);
            char key[17];
            /* The proxy opens a connection of its own in this process on
             * its first call: make it before the clock starts. */
            if (conc_proxy_dict_len(d) < 0)
                _exit(2);
            pthread_barrier_wait(&a->start);
            double cpu0 = self_cpu();
            int64_t t0 = bench_now();
            for (long i = 0; i < per; i++) {
                memcpy(key, keys[i & (NKEYS - 1)], 16);
                key[16] = (char)('a' + slot);
                if (conc_proxy_dict_set(d, key, 17, value, 16) != 0)
                    _exit(3);
            }
            a->times[2 * slot] = t0;
            a->times[2 * slot + 1] = bench_now();
            a->cpu[slot] = self_cpu() - cpu0;
            _exit(0);
        }
    }
    bool ok = started == CLIENTS;
    if (ok) {
        pthread_barrier_wait(&a->start);            /* the clients start their loops */
        s0 = proc_cpu(server);
    } else {
        for (int i = 0; i < started; i++)           /* they would wait for the rest */
            kill(pids[i], SIGKILL);
    }
    for (int i = 0; i < started; i++) {
        int st;
        while (waitpid(pids[i], &st, 0) < 0 && errno == EINTR)
            ;
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
            ok = false;
    }
    int64_t ns = -EPROTO;
    if (ok) {
        ssize_t n = conc_proxy_dict_len(d);
        long want = CLIENTS * (per < NKEYS ? per : NKEYS);
        if (n != want) {
            fprintf(stderr, "bench_manager: %s: the dict has %zd keys, expected %ld\n",
                    t->system, n, want);
        } else {
            int64_t lo = a->times[0], hi = a->times[1];
            for (int i = 1; i < CLIENTS; i++) {
                lo = a->times[2 * i] < lo ? a->times[2 * i] : lo;
                hi = a->times[2 * i + 1] > hi ? a->times[2 * i + 1] : hi;
            }
            ns = (int64_t)((double)(hi - lo) * (double)iters / (double)(CLIENTS * per));
            double wall = (double)(hi - lo) / 1e9, s1 = proc_cpu(server);
            if (s0 >= 0 && s1 >= 0 && wall > 0) {
                c8_cpu[0] += s1 - s0;
                for (int i = 0; i < CLIENTS; i++)
                    c8_cpu[1] += a->cpu[i];
                c8_wall += wall;
            }
        }
    } else if (!r) {
        fprintf(stderr, "bench_manager: %s: a client process failed\n", t->system);
    }
    pthread_barrier_destroy(&a->start);
    munmap(a, sizeof *a);
    conc_proxy_free(d);
    return r ? r : ns;
}

static void run_conc(void)
{
    for (size_t k = 0; k < BENCH_ARRAY_LEN(transports); k++) {
        struct transport *t = &transports[k];
        if (!bench_enabled(NULL, t->system))
            continue;
        int r = start_manager(t);
        if (r) {
            char why[128];
            snprintf(why, sizeof why, "the manager did not start: %s", conc_strerror(r));
            for (size_t i = 0; conc_metrics[i]; i++)
                bench_skip(conc_metrics[i], t->system, NULL, why);
            continue;
        }
        bench_run("manager_dict_set", t->system, dict_set_conc, t,
                  bench_iters(2000000, 20000), BENCH_MEDIAN);
        bench_run("manager_dict_get", t->system, dict_get_conc, t,
                  bench_iters(2000000, 20000), BENCH_MEDIAN);
        bench_run("manager_lock", t->system, lock_conc, t,
                  bench_iters(1000000, 10000), BENCH_MEDIAN);
        bench_run("manager_queue_putget", t->system, queue_conc, t,
                  bench_iters(1000000, 10000), BENCH_MEDIAN);
        c8_cpu[0] = c8_cpu[1] = c8_wall = 0;
        bench_run("manager_dict_set_c8", t->system, dict_set_c8_conc, t,
                  bench_iters(4000000, 40000), BENCH_MEDIAN);
        record_c8_cpus(t->system);
        conc_manager_free(t->m);
        t->m = NULL;
    }
}

#else

static void run_conc(void)
{
    const char *systems[] = { "conc-unix", "conc-tcp" };
    for (size_t k = 0; k < 2; k++)
        for (size_t i = 0; conc_metrics[i]; i++)
            if (bench_enabled(conc_metrics[i], systems[k]))
                bench_skip(conc_metrics[i], systems[k], NULL,
                           "this build has no manager (src/manager.c)");
}

#endif

/* ------------------------------------------------------------- Python */

static void run_python(void)
{
    static const char *const systems[] = { "python-unix", "python-tcp" };
    /* Python's manager is ~20x slower per call: its script has its own,
     * smaller iteration counts; we pass the scale and the repetitions. */
    for (size_t s = 0; s < BENCH_ARRAY_LEN(systems); s++)
        bench_peer_run_metrics(systems[s], true, bench_python(),
                               bench_peer_path("manager_mp.py"), (bench_reps() + 1) / 2,
                               bench_cpu_list(CLIENTS),
                               bench_scale() * (bench_quick() ? 0.05 : 1.0), conc_metrics);
}

int main(int argc, char **argv)
{
    bench_init(argc, argv,
               "bench_manager: conc's manager vs Python's multiprocessing Manager, "
               "over Unix and TCP, with the raw socket round trip as the floor",
               metrics, BENCH_ARRAY_LEN(metrics));
    bench_become_multithreaded();
    signal(SIGPIPE, SIG_IGN);
    make_keys();
    bench_run("unix_rtt", "raw", rtt_raw, (void *)(intptr_t)AF_UNIX,
              bench_iters(2000000, 20000), BENCH_MEDIAN);
    bench_run("tcp_rtt", "raw", rtt_raw, (void *)(intptr_t)AF_INET,
              bench_iters(2000000, 20000), BENCH_MEDIAN);
    run_conc();
    run_python();
    return bench_report();
}
