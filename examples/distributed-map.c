/*
 * distributed-map - the tutorial's parallel map (pool.map(f, range(N)) with
 * f(i) = i*i), with the workers anywhere RabbitMQ reaches: a distributed
 * executor (conc/broker_executor.h) sends each call as a task to a work
 * queue on the broker, worker processes take them, and the results come
 * back as futures.
 *
 *   distributed-map --url URL --tasks N [--workers W] [--kill-one] [--queue NAME]
 *                   [--authkey-file F]
 *   distributed-map --url URL --worker [--queue NAME] [--authkey-file F]
 *
 * The first form starts W worker processes here (default 2; 0 when the
 * workers run elsewhere, started with --worker), submits f(0) .. f(N-1),
 * waits for every result and prints "sum=VALUE".  With --kill-one, the
 * first worker to take the task N/2 is killed (kill -9) in the middle of
 * it: the broker gives the task to another worker and the sum is still
 * right, each task counted once (a second result for a task is dropped).
 * It needs W >= 2.  The second form runs one worker until SIGINT or
 * SIGTERM.  The work queue is NAME (default distributed-map); every
 * coordinator and worker of one run must name the same one.  With
 * --authkey-file, the file's bytes (one trailing newline dropped, 1 to 1024
 * bytes) are the executor's and workers' authkey: tasks and results carry an
 * HMAC-SHA256 tag, and a worker runs no task without the right one (give
 * every coordinator and worker of the queue the same file; a worker with
 * another key refuses the tasks, and the coordinator says so: status 1).
 *
 * A broker that is down or refuses the login is one line on stderr and
 * status 1; bad arguments are status 2.
 *
 * Python original (one machine):
 *   with multiprocessing.Pool(W) as pool:
 *       print(sum(pool.map(f, range(N))))
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conc/broker_executor.h"
#include "conc/errors.h"
#include "conc/future.h"

static const char *prog = "distributed-map";

#define MAX_TASKS 1000000L
#define MAX_WORKERS 64L
#define GUARD 300.0
#define AUTHKEY_MAX 1024

/* --authkey-file: the key (none when authkey_len is 0). */
static unsigned char authkey[AUTHKEY_MAX + 1];
static size_t authkey_len;

static int usage(const char *why, const char *arg)
{
    fprintf(stderr, "%s: ", prog);
    fprintf(stderr, why, arg);
    fprintf(stderr, " (usage: %s --url URL --tasks N [--workers W] [--kill-one] [--queue NAME] "
            "[--authkey-file F] | --url URL --worker [--queue NAME] [--authkey-file F])\n",
            prog);
    return 2;
}

static int die(const char *what, int err)
{
    fprintf(stderr, "%s: %s: %s\n", prog, what, conc_strerror(err));
    return 1;
}

static bool parse_long(const char *s, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end != '\0' || v < min || v > max)
        return false;
    *out = v;
    return true;
}

/* Reads --authkey-file into authkey: the whole file, one trailing newline
 * dropped.  Returns 0, or says why on stderr and returns 2. */
static int read_key(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "%s: --authkey-file %s: %s\n", prog, path, strerror(errno));
        return 2;
    }
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, authkey + n, sizeof authkey - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            fprintf(stderr, "%s: --authkey-file %s: %s\n", prog, path, strerror(errno));
            close(fd);
            return 2;
        }
        if (r == 0)
            break;
        n += (size_t)r;
        if (n == sizeof authkey) {
            unsigned char c;
            ssize_t more = read(fd, &c, 1);
            if (more != 0 || authkey[n - 1] != '\n')
                n = sizeof authkey + 1;       /* too long */
            break;
        }
    }
    close(fd);
    if (n > 0 && n <= sizeof authkey && authkey[n - 1] == '\n')
        n--;
    if (n == 0 || n > AUTHKEY_MAX) {
        fprintf(stderr, "%s: --authkey-file %s: %s\n", prog, path,
                n ? "longer than 1024 bytes" : "empty");
        return 2;
    }
    authkey_len = n;
    return 0;
}

/* ------------------------------------------------------------- workers */

/* --kill-one: the task that kills its worker, and whether it did already
 * (a word shared by the workers this program starts). */
static uint64_t victim_task = UINT64_MAX;
static int *victim_taken;

static int square(const void *data, size_t len, void **result, size_t *rlen, void *arg)
{
    (void)arg;
    uint64_t i;
    if (len != sizeof i)
        return -EINVAL;
    memcpy(&i, data, sizeof i);
    if (i == victim_task && victim_taken &&
        __atomic_exchange_n(victim_taken, 1, __ATOMIC_ACQ_REL) == 0)
        raise(SIGKILL);     /* dies holding the task */
    uint64_t *y = malloc(sizeof *y);
    if (!y)
        return -ENOMEM;
    *y = i * i;
    *result = y;
    *rlen = sizeof *y;
    return 0;
}

static conc_broker_worker *the_worker;

static void on_stop(int sig)
{
    (void)sig;
    conc_broker_worker_stop(the_worker);
}

/* Runs one worker until SIGINT or SIGTERM; returns the exit status. */
static int run_worker(const char *url, const char *queue, bool announce)
{
    conc_broker_worker_opts o = CONC_BROKER_WORKER_OPTS_INIT;
    o.queue = queue;
    o.authkey = authkey_len ? authkey : NULL;
    o.authkey_len = authkey_len;
    int r = conc_broker_worker_new(&the_worker, url, &o);
    if (r)
        return die("connecting to the broker", r);
    conc_broker_worker_register(the_worker, "square", square, NULL);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    if (announce) {
        printf("worker ready on queue %s\n", queue);
        fflush(stdout);
    }
    r = conc_broker_worker_run(the_worker, CONC_FOREVER);
    conc_broker_worker_free(the_worker);
    return r ? die("worker", r) : 0;
}

/* Starts a worker process that dies with this one. */
static pid_t start_worker(const char *url, const char *queue)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent)
        _exit(1);
    fflush(stdout);
    _exit(run_worker(url, queue, false));
}

/* ---------------------------------------------------------- coordinator */

static int run_map(const char *url, const char *queue, long n, long nworkers, bool kill_one)
{
    pid_t pids[MAX_WORKERS];
    if (kill_one) {
        victim_task = (uint64_t)n / 2;
        victim_taken = mmap(NULL, sizeof *victim_taken, PROT_READ | PROT_WRITE,
                            MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (victim_taken == MAP_FAILED)
            return die("mmap", -errno);
        *victim_taken = 0;
    }
    /* The workers first, before this process has threads of its own. */
    for (long w = 0; w < nworkers; w++) {
        pids[w] = start_worker(url, queue);
        if (pids[w] < 0)
            return die("starting a worker", -errno);
    }
    int status = 0;
    conc_broker_executor *ex = NULL;
    conc_broker_executor_opts o = CONC_BROKER_EXECUTOR_OPTS_INIT;
    o.queue = queue;
    o.authkey = authkey_len ? authkey : NULL;
    o.authkey_len = authkey_len;
    int r = conc_broker_executor_new(&ex, url, &o);
    conc_future **fs = r ? NULL : calloc((size_t)n, sizeof *fs);
    if (r) {
        status = die("connecting to the broker", r);
    } else if (!fs && n) {
        status = die("submitting", -ENOMEM);
    } else {
        long submitted = 0;
        for (; submitted < n; submitted++) {
            uint64_t i = (uint64_t)submitted;
            r = conc_broker_executor_submit(ex, "square", &i, sizeof i, &fs[submitted]);
            if (r) {
                status = die("submitting", r);
                break;
            }
        }
        uint64_t sum = 0;
        for (long i = 0; i < submitted && status == 0; i++) {
            void *v;
            size_t len;
            r = conc_future_result(fs[i], &v, &len, GUARD);
            if (r) {
                status = die("a result", r);
            } else if (len != sizeof(uint64_t)) {
                status = die("a result", -EPROTO);
            } else {
                uint64_t y;
                memcpy(&y, v, sizeof y);
                sum += y;
            }
        }
        for (long i = 0; i < submitted; i++)
            conc_future_free(fs[i]);
        if (status == 0)
            printf("sum=%" PRIu64 "\n", sum);
    }
    free(fs);
    conc_broker_executor_free(ex);
    for (long w = 0; w < nworkers; w++)
        kill(pids[w], SIGTERM);
    for (long w = 0; w < nworkers; w++) {
        int st;
        while (waitpid(pids[w], &st, 0) < 0 && errno == EINTR)
            ;
    }
    if (kill_one && status == 0 && !*victim_taken)
        status = die("--kill-one", -ESRCH);
    return status;
}

int main(int argc, char **argv)
{
    const char *url = NULL, *queue = "distributed-map", *keyfile = NULL;
    long tasks = -1, workers = 2;
    bool kill_one = false, worker = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has_value = i + 1 < argc;
        if (strcmp(a, "--url") == 0 && has_value) {
            url = argv[++i];
        } else if (strcmp(a, "--queue") == 0 && has_value) {
            queue = argv[++i];
        } else if (strcmp(a, "--authkey-file") == 0 && has_value) {
            keyfile = argv[++i];
        } else if (strcmp(a, "--tasks") == 0 && has_value) {
            if (!parse_long(argv[++i], 0, MAX_TASKS, &tasks))
                return usage("--tasks wants a whole number from 0 to 1000000, not '%s'", argv[i]);
        } else if (strcmp(a, "--workers") == 0 && has_value) {
            if (!parse_long(argv[++i], 0, MAX_WORKERS, &workers))
                return usage("--workers wants a whole number from 0 to 64, not '%s'", argv[i]);
        } else if (strcmp(a, "--kill-one") == 0) {
            kill_one = true;
        } else if (strcmp(a, "--worker") == 0) {
            worker = true;
        } else {
            return usage("unknown or incomplete argument '%s'", a);
        }
    }
    if (!url)
        return usage("%s", "--url is required");
    if (!*queue || strlen(queue) > 200)
        return usage("--queue wants a name of 1 to 200 bytes, not '%s'", queue);
    if (keyfile && read_key(keyfile))
        return 2;
    if (worker) {
        if (tasks >= 0 || kill_one)
            return usage("%s", "--worker takes no --tasks or --kill-one");
        return run_worker(url, queue, true);
    }
    if (tasks < 0)
        return usage("%s", "--tasks is required (or --worker)");
    if (kill_one && workers < 2)
        return usage("%s", "--kill-one needs --workers 2 or more (one to kill, one to finish)");
    if (kill_one && tasks < 1)
        return usage("%s", "--kill-one needs --tasks 1 or more");
    return run_map(url, queue, tasks, workers, kill_one);
}
