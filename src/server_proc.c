/*
 * server_proc.c - the prefork model: `workers` processes, forked up front,
 * share the listening socket and each serve it with the coroutine loop.
 * The parent supervises them (pidfds, through conc_process): a worker that
 * ends while the server runs is reported and replaced.  The workers watch
 * the read end of a pipe whose write end only the parent holds: when the
 * parent stops, or dies, they see its end and stop too.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conc/process.h"
#include "conc/wait.h"
#include "server.h"

struct worker_arg {
    conc_server *s;
    int rfd, wfd;
};

static int worker_main(const void *arg, size_t len)
{
    (void)len;
    struct worker_arg a;
    memcpy(&a, arg, sizeof a);
    close(a.wfd);
    a.s->owner = getpid();          /* its own drain, no socket file */
    a.s->unlink_path = false;
    int rc = conc__server_coro_loop(a.s, a.rfd);
    conc__server_drain(a.s, conc_now());
    return rc < 0 ? 1 : 0;
}

static int start_worker(conc_server *s, const struct worker_arg *a, conc_process **out)
{
    conc_process_opts po = CONC_PROCESS_OPTS_INIT;
    po.method = CONC_START_FORK;
    po.daemon = CONC_DAEMON;
    conc_process *p;
    int rc = conc_process_new(&p, worker_main, a, sizeof *a, &po);
    if (rc < 0)
        return rc;
    rc = conc_process_start(p);
    if (rc < 0) {
        conc_process_free(p);
        return rc;
    }
    atomic_fetch_add(&s->st->workers, 1);
    *out = p;
    return 0;
}

int conc__server_prefork(conc_server *s, double poll_interval)
{
    int n = s->o.workers > 0 ? s->o.workers : conc_process_cpu_count();
    if (n <= 0)
        n = 1;
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) < 0)
        return -errno;
    struct worker_arg a = { .s = s, .rfd = pfd[0], .wfd = pfd[1] };
    conc_process **w = calloc((size_t)n, sizeof *w);
    conc_waitable *ws = calloc((size_t)n + 1, sizeof *ws);
    int rc = w && ws ? 0 : -ENOMEM;
    for (int i = 0; i < n && rc == 0; i++)
        rc = start_worker(s, &a, &w[i]);
    int64_t step = (int64_t)(poll_interval * 1e9);
    if (step <= 0)
        step = 1;
    int64_t next = conc_now() + step;
    while (rc == 0 && !conc__server_stop_asked(s)) {
        memset(ws, 0, ((size_t)n + 1) * sizeof *ws);
        ws[0].kind = CONC_WAIT_FD;
        ws[0].u.fd = s->stopfd;
        for (int i = 0; i < n; i++) {
            ws[i + 1].kind = CONC_WAIT_PROCESS;
            ws[i + 1].u.process = w[i];
        }
        int r = conc_wait_until(ws, (size_t)n + 1, next);
        if (r == -ETIMEDOUT) {
            if (s->o.service_actions)
                s->o.service_actions(s, s->o.user);
            next = conc_now() + step;
            continue;
        }
        if (r < 0) {
            rc = r;
            break;
        }
        if (ws[0].ready)
            break;
        for (int i = 0; i < n; i++) {
            if (!ws[i + 1].ready || conc_process_is_alive(w[i]))
                continue;
            pid_t pid = conc_process_pid(w[i]);
            int code = -1;
            conc_process_join(w[i], CONC_FOREVER);
            conc_process_exitcode(w[i], &code);
            conc_process_free(w[i]);
            w[i] = NULL;
            atomic_fetch_sub(&s->st->workers, 1);
            atomic_fetch_add(&s->st->restarts, 1);
            if (s->o.on_worker_exit)
                s->o.on_worker_exit(s, pid, code, s->o.user);
            r = start_worker(s, &a, &w[i]);
            if (r < 0) {
                rc = r;
                break;
            }
        }
    }
    /* Stop: the workers see the pipe's end, finish their connections
     * (within the shutdown timeout) and exit; those still there a second
     * after it are killed. */
    close(pfd[1]);
    int64_t deadline = s->o.shutdown_timeout > 0
        ? conc_now() + (int64_t)((s->o.shutdown_timeout + 1.0) * 1e9) : CONC_NO_DEADLINE;
    for (int i = 0; w && i < n; i++) {
        if (!w[i])
            continue;
        if (conc_process_join_until(w[i], deadline) == -ETIMEDOUT) {
            conc_process_kill(w[i]);
            conc_process_join(w[i], CONC_FOREVER);
        }
        conc_process_free(w[i]);
        atomic_fetch_sub(&s->st->workers, 1);
    }
    close(pfd[0]);
    /* What the workers counted as in flight ended with them. */
    atomic_store(&s->st->active, 0);
    free(w);
    free(ws);
    return rc;
}
