/*
 * process.c - multiprocessing.Process: process objects, the fork start
 * method, supervision with pidfds, the registry behind active_children and
 * the exit-time cleanup, current_process / parent_process, cpu_count.
 * The forkserver and spawn methods and the launcher thread live in
 * forkserver.c.
 *
 * A handle is reference-counted: the creator holds one reference and the
 * registry of children holds one from start until the child is reaped, so a
 * freed handle of a running child is still reaped (by active_children, a
 * later join through another reference, or at exit).  Reaping is
 * waitid(P_PIDFD) on the child's own pidfd: conc never waits for "any
 * child", so it never reaps a process it did not start.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdio_ext.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/uio.h>
#include <unistd.h>
#include "conc/process.h"
#include "conc/sync.h"
#include "forkserver.h"
#include "internal.h"
#include "sys/pidfd.h"
#include "sys/wait.h"

enum { P_NEW = 0, P_STARTING, P_STARTED, P_ENDED, P_CLOSED };
enum { K_CHILD = 0, K_CURRENT, K_PARENT };

/* Identities ("1", "1:3", ...) longer than this are truncated. */
#define IDENT_MAX 47
/* How long daemon children get to end after SIGTERM at exit before they are
 * killed (Python waits forever; a daemon that ignores SIGTERM would hang the
 * exit). */
#define DAEMON_GRACE_NS (5 * 1000000000LL)
/* The exit code reported for a child that something else reaped. */
#define CODE_LOST 255

struct conc_process {
    uint32_t refs;
    uint32_t state;             /* P_* */
    int kind;                   /* K_* */
    conc_start_method method;
    bool daemon;
    bool is_def;
    bool in_registry;           /* guarded by reg_lock */
    bool code_known;
    pid_t owner;                /* the process that started it */
    pid_t pid;
    int pidfd;
    int exitcode;
    conc_lock lock;             /* serializes reaping */
    conc_process_fn fn;
    void *data;                 /* argument bytes, or the def struct */
    size_t len;
    int *fds;                   /* pass_fds */
    size_t nfds;
    struct conc_process *prev, *next;   /* registry of unreaped children */
    char ident[IDENT_MAX + 1];
    char name[CONC_PROCESS_NAME_MAX + 1];
};

static pid_t self_pid;
static uint32_t global_method = CONC_START_FORK;
static uint32_t child_counter;
static conc_process current_proc = {
    .refs = 1, .state = P_STARTED, .kind = K_CURRENT, .pidfd = -1, .name = "MainProcess",
};
static conc_process parent_proc = { .refs = 1, .state = P_NEW, .kind = K_PARENT, .pidfd = -1 };

/* A plain mutex, never a coroutine-aware lock: the fork handlers take it,
 * and a fork() from a coroutine must not park that coroutine and run others
 * in the middle of the fork.  Its critical sections never wait. */
static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
/* Names are read and set whole under this one (a plain mutex for the same
 * reason; taken after reg_lock when both are held). */
static pthread_mutex_t name_lock = PTHREAD_MUTEX_INITIALIZER;
static conc_process *reg_head, *reg_tail;
/* Handles inherited across fork() that the child cannot supervise; kept
 * reachable (leak checkers) but never used. */
static conc_process *reg_inherited;
static bool exit_hook_set;      /* guarded by reg_lock */
static bool ever_started;       /* a child was started; guarded by reg_lock */
static int exit_cleanup = 1;    /* conc_process_set_exit_cleanup */
/* The running child's spec (keeps its argument reachable). */
static struct conc__child_spec child_spec;

pid_t conc__self_pid(void)
{
    pid_t p = ld_relaxed(&self_pid);
    if (unlikely(!p)) {
        p = getpid();
        st_relaxed(&self_pid, p);
    }
    return p;
}

static void lock_take(conc_lock *l)
{
    conc_lock_acquire_until(l, CONC_NO_DEADLINE);
}

/* ------------------------------------------------------------ registry */

static void reg_add(conc_process *p)
{
    pthread_mutex_lock(&reg_lock);
    p->prev = reg_tail;
    p->next = NULL;
    if (reg_tail)
        reg_tail->next = p;
    else
        reg_head = p;
    reg_tail = p;
    p->in_registry = true;
    pthread_mutex_unlock(&reg_lock);
}

/* Removes p; returns true when it was registered (its reference is then the
 * caller's to drop). */
static bool reg_remove(conc_process *p)
{
    pthread_mutex_lock(&reg_lock);
    bool was = p->in_registry;
    if (was) {
        if (p->prev)
            p->prev->next = p->next;
        else
            reg_head = p->next;
        if (p->next)
            p->next->prev = p->prev;
        else
            reg_tail = p->prev;
        p->prev = p->next = NULL;
        p->in_registry = false;
    }
    pthread_mutex_unlock(&reg_lock);
    return was;
}

/* A snapshot of the registry (each with a reference), oldest first; filter:
 * -1 all, 0 non-daemon, 1 daemon.  Returns the count, or -ENOMEM. */
static int reg_snapshot(conc_process ***out, int filter)
{
    conc_process **v = NULL;
    size_t n = 0, cap = 0;
    pthread_mutex_lock(&reg_lock);
    for (conc_process *p = reg_head; p; p = p->next) {
        if (filter >= 0 && p->daemon != (filter == 1))
            continue;
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            conc_process **nv = realloc(v, ncap * sizeof *nv);
            if (!nv) {
                pthread_mutex_unlock(&reg_lock);
                for (size_t i = 0; i < n; i++)
                    conc_process_free(v[i]);
                free(v);
                return -ENOMEM;
            }
            v = nv;
            cap = ncap;
        }
        v[n++] = conc_process_ref(p);
    }
    pthread_mutex_unlock(&reg_lock);
    *out = v;
    return (int)n;
}

/* --------------------------------------------------------- life cycle */

static void release_resources(conc_process *p)
{
    if (p->pidfd >= 0) {
        close(p->pidfd);
        p->pidfd = -1;
    }
    free(p->data);
    p->data = NULL;
    free(p->fds);
    p->fds = NULL;
}

conc_process *conc_process_ref(conc_process *p)
{
    if (p && p->kind == K_CHILD)
        __atomic_fetch_add(&p->refs, 1, __ATOMIC_RELAXED);
    return p;
}

void conc_process_free(conc_process *p)
{
    if (!p || p->kind != K_CHILD)
        return;
    if (__atomic_fetch_sub(&p->refs, 1, __ATOMIC_ACQ_REL) != 1)
        return;
    release_resources(p);
    free(p);
}

/* True when the calling process started p and so may wait for it. */
static bool mine(const conc_process *p)
{
    return p->owner == conc__self_pid();
}

/*
 * Reaps p when it has ended (waitid WNOHANG on its pidfd).  Returns 1 when
 * it has ended (now or before), 0 while it runs.  The first reaper stores
 * the exit code and drops the registry's reference.
 */
static int try_reap(conc_process *p)
{
    if (ld_acquire(&p->state) != P_STARTED)
        return 1;
    lock_take(&p->lock);
    if (ld_acquire(&p->state) != P_STARTED) {
        conc_lock_release(&p->lock);
        return 1;
    }
    int code = 0;
    int r = conc__reap(p->pidfd, p->pid, WNOHANG, &code);
    if (r == 0) {
        conc_lock_release(&p->lock);
        return 0;
    }
    /* An error: reaped elsewhere (SIGCHLD ignored...); the kernel may still
     * know the code. */
    if (r < 0 && conc__pidfd_exit_code(p->pidfd, &code) == 0)
        r = 1;
    p->exitcode = r == 1 ? code : CODE_LOST;
    p->code_known = true;
    st_release(&p->state, P_ENDED);
    conc_lock_release(&p->lock);
    if (reg_remove(p))
        conc_process_free(p);           /* the registry's reference */
    return 1;
}

static void set_name(conc_process *p, const char *name)
{
    size_t n = strnlen(name, sizeof p->name - 1);
    memcpy(p->name, name, n);
    p->name[n] = 0;
}

static int check_opts(const conc_process_opts *opts)
{
    if (!opts)
        return 0;
    if (opts->daemon != 0 && opts->daemon != CONC_DAEMON && opts->daemon != CONC_NOT_DAEMON)
        return -EINVAL;
    if ((unsigned)opts->method > CONC_START_SPAWN)
        return -EINVAL;
    if (opts->npass_fds > CONC_PROCESS_PASS_FDS_MAX || (opts->npass_fds && !opts->pass_fds))
        return -EINVAL;
    for (size_t i = 0; i < opts->npass_fds; i++)
        if (opts->pass_fds[i] < 0)
            return -EINVAL;
    return 0;
}

#define PROCESS_OPTS_V1 CONC__OPTS_V1(conc_process_opts, npass_fds)

static int process_alloc(conc_process **out, const void *data, size_t len, bool is_def,
                         const conc_process_opts *opts)
{
    conc_process *p = calloc(1, sizeof *p);
    if (!p)
        return -ENOMEM;
    p->refs = 1;
    p->kind = K_CHILD;
    p->pidfd = -1;
    p->is_def = is_def;
    p->method = opts ? opts->method : CONC_START_DEFAULT;
    int daemon = opts ? opts->daemon : 0;
    p->daemon = daemon == 0 ? current_proc.daemon : daemon == CONC_DAEMON;
    if (len) {
        p->data = malloc(len);
        if (!p->data)
            goto nomem;
        memcpy(p->data, data, len);
        p->len = len;
    }
    if (opts && opts->npass_fds) {
        p->fds = malloc(opts->npass_fds * sizeof *p->fds);
        if (!p->fds)
            goto nomem;
        memcpy(p->fds, opts->pass_fds, opts->npass_fds * sizeof *p->fds);
        p->nfds = opts->npass_fds;
    }
    unsigned n = __atomic_add_fetch(&child_counter, 1, __ATOMIC_RELAXED);
    if (current_proc.ident[0])
        snprintf(p->ident, sizeof p->ident, "%.*s:%u", IDENT_MAX - 11, current_proc.ident, n);
    else
        snprintf(p->ident, sizeof p->ident, "%u", n);
    if (opts && opts->name)
        set_name(p, opts->name);
    else
        snprintf(p->name, sizeof p->name, "Process-%s", p->ident);
    *out = p;
    return 0;
nomem:
    release_resources(p);
    free(p);
    return -ENOMEM;
}

int conc_process_new(conc_process **out, conc_process_fn fn, const void *arg, size_t len,
                     const conc_process_opts *opts)
{
    if (!out || !fn || len > CONC_PROCESS_ARG_MAX || (!arg && len))
        return -EINVAL;
    conc_process_opts o;
    CONC__OPTS_COPY(&o, opts, PROCESS_OPTS_V1);
    opts = &o;
    int r = check_opts(opts);
    if (r)
        return r;
    r = process_alloc(out, arg, len, false, opts);
    if (r == 0)
        (*out)->fn = fn;
    return r;
}

int conc_process_new_def(conc_process **out, const conc_process_def *def, size_t size,
                         const conc_process_opts *opts)
{
    if (!out || !def || !def->run || size < sizeof *def || size > CONC_PROCESS_ARG_MAX)
        return -EINVAL;
    conc_process_opts o;
    CONC__OPTS_COPY(&o, opts, PROCESS_OPTS_V1);
    opts = &o;
    int r = check_opts(opts);
    if (r)
        return r;
    return process_alloc(out, def, size, true, opts);
}

/* ------------------------------------------------------------- start */

/* Whether this kernel has pidfds (Linux 5.3); conc supervises with them. */
static int pidfd_support(void)
{
    static int state;           /* 0 unknown, 1 yes, -1 no */
    int s = ld_relaxed(&state);
    if (!s) {
        int fd = conc__pidfd_open(conc__self_pid());
        s = fd >= 0 || fd != -ENOSYS ? 1 : -1;
        if (fd >= 0)
            close(fd);
        st_relaxed(&state, s);
    }
    return s > 0;
}

struct fork_job {
    struct conc__child_spec spec;
    pid_t pid;
    int pidfd;
};

/*
 * Runs on the launcher (see conc__launch): fork, and watch the child.
 *
 * The child waits on a gate until the parent holds its pidfd: a child that
 * ended before pidfd_open could be reaped at once (SIGCHLD ignored, or a
 * waitpid(-1) elsewhere) and its pid reused, so the pidfd would name a
 * stranger.  (clone3(CLONE_PIDFD) would give the pidfd directly, but a raw
 * clone skips what fork() does for a multi-threaded program: the C
 * library's malloc, stdio and loader locks, the sanitizers' hooks and the
 * program's pthread_atfork handlers.  The forkserver can afford it only
 * because it is single-threaded and runs no user code.)
 */
static int fork_job_run(void *ctx)
{
    struct fork_job *j = ctx;
    int gate[2];
    if (pipe2(gate, O_CLOEXEC) != 0)
        return errno == EMFILE || errno == ENFILE ? -errno : -ENOMEM;
    pid_t pid = fork();
    if (pid < 0) {
        close(gate[0]);
        close(gate[1]);
        return errno == ENOMEM ? -ENOMEM : -EAGAIN;
    }
    if (pid == 0) {
        char c;
        close(gate[1]);
        while (read(gate[0], &c, 1) < 0 && errno == EINTR)
            ;
        close(gate[0]);
        conc__child_main(&j->spec);
    }
    close(gate[0]);
    int fd = conc__pidfd_open(pid);
    if (fd < 0) {
        /* Cannot supervise it (out of descriptors): undo.  It is held at
         * the gate, so pid is still the child. */
        kill(pid, SIGKILL);
        close(gate[1]);
        conc__reap_pid(pid);
        return fd;
    }
    /* A byte, not EOF: a sibling forked meanwhile may hold the write end.
     * The child may already be dead (killed at once by someone who saw it
     * appear), so the write must not raise SIGPIPE in this process. */
    struct iovec one = { .iov_base = (void *)"", .iov_len = 1 };
    (void)conc__writev_nosigpipe(gate[1], &one, 1);
    close(gate[1]);
    j->pid = pid;
    j->pidfd = fd;
    return 0;
}

static void fill_spec(struct conc__child_spec *s, conc_process *p, const sigset_t *mask,
                      const char *name, const char *parent_name)
{
    memset(s, 0, sizeof *s);
    if (p->is_def)
        s->def = p->data;
    else
        s->fn = p->fn;
    s->arg = p->len ? p->data : NULL;
    s->len = p->len;
    s->name = name;
    s->ident = p->ident;
    s->parent_name = parent_name;
    s->ppid = conc__self_pid();
    s->daemon = p->daemon;
    s->sigmask = *mask;
}

static int start_fork(conc_process *p, const sigset_t *mask, const char *name,
                      const char *parent_name)
{
    struct fork_job j;
    fill_spec(&j.spec, p, mask, name, parent_name);
    j.pid = 0;
    j.pidfd = -1;
    int r = conc__launch(fork_job_run, &j);
    if (r == 0) {
        p->pid = j.pid;
        p->pidfd = j.pidfd;
    }
    return r;
}

static int start_remote(conc_process *p, conc_start_method method, const sigset_t *mask,
                        const char *name, const char *parent_name)
{
    struct conc__remote_req r = {
        .method = method,
        .target = p->is_def ? (void *)((conc_process_def *)p->data)->run : (void *)p->fn,
        .is_def = p->is_def,
        .data = p->data,
        .len = p->len,
        .name = name,
        .ident = p->ident,
        .parent_name = parent_name,
        .daemon = p->daemon,
        .fds = p->fds,
        .nfds = p->nfds,
        .sigmask = mask,
    };
    return conc__remote_start(&r, &p->pid, &p->pidfd);
}

static void exit_children(void);

int conc_process_start(conc_process *p)
{
    if (!p)
        return -EINVAL;
    if (p->kind != K_CHILD)
        return -EALREADY;               /* a running process */
    uint32_t expect = P_NEW;
    if (!__atomic_compare_exchange_n(&p->state, &expect, P_STARTING, false,
                                     __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
        return expect == P_CLOSED ? -EINVAL : -EALREADY;
    int r;
    if (current_proc.daemon) {
        r = -EPERM;                     /* daemons may not have children */
        goto fail;
    }
    if (!pidfd_support()) {
        r = -ENOSYS;
        goto fail;
    }
    conc_start_method method = p->method ? p->method
                                         : (conc_start_method)ld_relaxed(&global_method);
    sigset_t mask;
    pthread_sigmask(SIG_SETMASK, NULL, &mask);
    /* The exit hook first: it must exist before any child does (unless the
     * exit cleanup is off; turning it on registers it then). */
    pthread_mutex_lock(&reg_lock);
    ever_started = true;
    if (!exit_hook_set && ld_relaxed(&exit_cleanup) && atexit(exit_children) == 0)
        exit_hook_set = true;
    bool hooked = exit_hook_set || !ld_relaxed(&exit_cleanup);
    pthread_mutex_unlock(&reg_lock);
    if (!hooked) {
        r = -ENOMEM;
        goto fail;
    }
    /* The child gets both names as they are now, whole, even while another
     * thread renames the handle or the current process. */
    char name[CONC_PROCESS_NAME_MAX + 1], parent_name[CONC_PROCESS_NAME_MAX + 1];
    conc_process_name(p, name, sizeof name);
    conc_process_name(&current_proc, parent_name, sizeof parent_name);
    r = method == CONC_START_FORK ? start_fork(p, &mask, name, parent_name)
                                  : start_remote(p, method, &mask, name, parent_name);
    if (r)
        goto fail;
    p->owner = conc__self_pid();
    conc_process_ref(p);                /* the registry's reference */
    reg_add(p);
    st_release(&p->state, P_STARTED);
    return 0;
fail:
    st_release(&p->state, P_NEW);
    return r;
}

/* -------------------------------------------------------------- join */

static int join_parent(conc_process *p, int64_t deadline)
{
    for (;;) {
        int r = conc__wait_fd(p->pidfd, POLLIN, deadline);
        if (r == 0) {
            struct pollfd pfd = { .fd = p->pidfd, .events = POLLIN };
            if (poll(&pfd, 1, 0) == 1)
                return 0;
            continue;
        }
        return r;
    }
}

int conc_process_join_until(conc_process *p, int64_t deadline)
{
    if (!p || p->kind == K_CURRENT)
        return -EINVAL;
    if (p->kind == K_PARENT)
        return join_parent(p, deadline);
    uint32_t st = ld_acquire(&p->state);
    if (st == P_NEW || st == P_STARTING || st == P_CLOSED || !mine(p))
        return -EINVAL;
    for (;;) {
        if (try_reap(p))
            return 0;
        int r = conc__wait_fd(p->pidfd, POLLIN, deadline);
        if (r == -ETIMEDOUT)
            return try_reap(p) ? 0 : -ETIMEDOUT;
        if (r < 0)
            return r;
    }
}

int conc_process_join(conc_process *p, double timeout)
{
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return (int)conc__timeout_code(poll, conc_process_join_until(p, deadline));
}

bool conc_process_is_alive(conc_process *p)
{
    if (!p)
        return false;
    if (p->kind == K_CURRENT)
        return true;
    if (p->kind == K_PARENT) {
        struct pollfd pfd = { .fd = p->pidfd, .events = POLLIN };
        return p->pidfd >= 0 && poll(&pfd, 1, 0) == 0;
    }
    if (ld_acquire(&p->state) != P_STARTED || !mine(p))
        return false;
    return try_reap(p) == 0;
}

int conc_process_exitcode(const conc_process *p, int *code)
{
    if (!p || !code)
        return -EINVAL;
    uint32_t st = ld_acquire(&p->state);
    if (p->kind != K_CHILD || (st != P_ENDED && st != P_CLOSED) || !p->code_known)
        return -EBUSY;
    *code = p->exitcode;
    return 0;
}

/* ------------------------------------------------------- attributes */

pid_t conc_process_pid(const conc_process *p)
{
    if (!p)
        return 0;
    if (p->kind == K_CURRENT)
        return conc__self_pid();
    return p->pid;
}

int conc_process_name(const conc_process *p, char *buf, size_t size)
{
    if (!p || (!buf && size > 0))
        return -EINVAL;
    pthread_mutex_lock(&name_lock);
    size_t n = strlen(p->name);
    if (size > 0) {
        size_t k = n < size - 1 ? n : size - 1;
        memcpy(buf, p->name, k);
        buf[k] = 0;
    }
    pthread_mutex_unlock(&name_lock);
    return (int)n;
}

int conc_process_set_name(conc_process *p, const char *name)
{
    if (!p || !name || p->kind == K_PARENT)
        return -EINVAL;
    pthread_mutex_lock(&name_lock);
    set_name(p, name);
    pthread_mutex_unlock(&name_lock);
    return 0;
}

bool conc_process_daemon(const conc_process *p)
{
    return p && p->daemon;
}

int conc_process_set_daemon(conc_process *p, bool daemon)
{
    if (!p || p->kind == K_PARENT)
        return -EINVAL;
    if (p->kind == K_CHILD && ld_acquire(&p->state) != P_NEW)
        return ld_acquire(&p->state) == P_CLOSED ? -EINVAL : -EALREADY;
    p->daemon = daemon;
    return 0;
}

int conc_process_sentinel(const conc_process *p)
{
    if (!p || p->kind == K_CURRENT)
        return -EINVAL;
    uint32_t st = ld_acquire(&p->state);
    if (st != P_STARTED && st != P_ENDED)
        return -EINVAL;
    if (p->kind == K_CHILD && !mine(p))
        return -EINVAL;
    return p->pidfd >= 0 ? p->pidfd : -EINVAL;
}

static int send_signal(conc_process *p, int sig)
{
    if (!p || p->kind != K_CHILD)
        return -EINVAL;
    uint32_t st = ld_acquire(&p->state);
    if (st == P_ENDED)
        return 0;
    if (st != P_STARTED || !mine(p))
        return -EINVAL;
    int r = conc__pidfd_send_signal(p->pidfd, sig);
    return r == -ESRCH ? 0 : r;
}

int conc_process_terminate(conc_process *p)
{
    return send_signal(p, SIGTERM);
}

int conc_process_kill(conc_process *p)
{
    return send_signal(p, SIGKILL);
}

int conc_process_close(conc_process *p)
{
    if (!p || p->kind != K_CHILD)
        return -EINVAL;
    for (;;) {
        uint32_t st = ld_acquire(&p->state);
        if (st == P_CLOSED)
            return 0;
        if (st == P_STARTING)
            return -EBUSY;
        if (st == P_STARTED && mine(p) && !try_reap(p))
            return -EBUSY;
        if (__atomic_compare_exchange_n(&p->state, &st, P_CLOSED, false, __ATOMIC_ACQ_REL,
                                        __ATOMIC_RELAXED))
            break;
    }
    if (reg_remove(p))                  /* a handle inherited across fork */
        conc_process_free(p);
    release_resources(p);
    return 0;
}

/* ---------------------------------------------- current and parent */

conc_process *conc_process_current(void)
{
    return &current_proc;
}

conc_process *conc_process_parent(void)
{
    return ld_acquire(&parent_proc.state) == P_STARTED ? &parent_proc : NULL;
}

int conc_process_active_children(conc_process **out, size_t cap)
{
    if (!out && cap > 0)
        return -EINVAL;
    conc_process **v;
    int n = reg_snapshot(&v, -1);
    if (n < 0)
        return n;
    int alive = 0;
    for (int i = 0; i < n; i++) {
        if (try_reap(v[i]) == 0) {
            if ((size_t)alive < cap)
                out[alive] = conc_process_ref(v[i]);
            alive++;
        }
        conc_process_free(v[i]);
    }
    free(v);
    return alive;
}

int conc_process_cpu_count(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        return n > 0 ? n : 1;
    }
    /* More CPUs than a cpu_set_t holds. */
    for (int ncpu = 2 * CPU_SETSIZE; ncpu <= (1 << 20); ncpu *= 2) {
        cpu_set_t *s = CPU_ALLOC(ncpu);
        if (!s)
            break;
        size_t sz = CPU_ALLOC_SIZE(ncpu);
        if (sched_getaffinity(0, sz, s) == 0) {
            int n = CPU_COUNT_S(sz, s);
            CPU_FREE(s);
            return n > 0 ? n : 1;
        }
        CPU_FREE(s);
        if (errno != EINVAL)
            break;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

int conc_process_set_start_method(conc_start_method method)
{
    if (method != CONC_START_FORK && method != CONC_START_FORKSERVER &&
        method != CONC_START_SPAWN)
        return -EINVAL;
    st_relaxed(&global_method, (uint32_t)method);
    return 0;
}

conc_start_method conc_process_start_method(void)
{
    return (conc_start_method)ld_relaxed(&global_method);
}

/* ------------------------------------------------------------ exit */

/*
 * At normal exit (atexit, registered before the first child exists): join
 * the non-daemon children, then SIGTERM the daemon children and join them,
 * killing those still running after DAEMON_GRACE_NS.  Nothing is left
 * running or unreaped.
 */
static void exit_children(void)
{
    conc_process **v;
    int n;
    if (!ld_relaxed(&exit_cleanup))
        return;
    /* Non-daemon children (they may start more while we wait). */
    while ((n = reg_snapshot(&v, 0)) > 0) {
        for (int i = 0; i < n; i++) {
            if (conc_process_join_until(v[i], CONC_NO_DEADLINE) != 0 && reg_remove(v[i]))
                conc_process_free(v[i]);        /* cannot wait for it: give up */
            conc_process_free(v[i]);
        }
        free(v);
    }
    n = reg_snapshot(&v, 1);
    if (n <= 0)
        return;
    for (int i = 0; i < n; i++)
        conc_process_terminate(v[i]);
    int64_t deadline = conc_now() + DAEMON_GRACE_NS;
    for (int i = 0; i < n; i++) {
        if (conc_process_join_until(v[i], deadline) != 0) {
            conc_process_kill(v[i]);
            conc_process_join_until(v[i], CONC_NO_DEADLINE);
        }
        conc_process_free(v[i]);
    }
    free(v);
}

int conc_process_set_exit_cleanup(bool on)
{
    int r = 0;
    pthread_mutex_lock(&reg_lock);
    if (on && ever_started && !exit_hook_set) {
        if (atexit(exit_children) == 0)
            exit_hook_set = true;
        else
            r = -ENOMEM;
    }
    if (r == 0)
        st_relaxed(&exit_cleanup, on ? 1 : 0);
    pthread_mutex_unlock(&reg_lock);
    return r;
}

/* ------------------------------------------------------------- fork */

static void atfork_prepare(void)
{
    pthread_mutex_lock(&reg_lock);
    pthread_mutex_lock(&name_lock);
}

static void atfork_parent(void)
{
    pthread_mutex_unlock(&name_lock);
    pthread_mutex_unlock(&reg_lock);
}

/* Resets what belongs to the parent: its children (this process cannot
 * wait for them; their pidfds are closed here), its forkserver, its
 * launcher thread.  reg_lock is free. */
static void reset_after_fork(void)
{
    st_relaxed(&self_pid, getpid());
    for (conc_process *p = reg_head; p; p = p->next) {
        if (p->pidfd >= 0)
            close(p->pidfd);
        p->pidfd = -1;
        p->in_registry = false;
    }
    if (reg_head)
        reg_inherited = reg_head;
    reg_head = reg_tail = NULL;
    conc__forkserver_after_fork();
}

static void atfork_child(void)
{
    pthread_mutex_unlock(&name_lock);   /* both taken by atfork_prepare */
    pthread_mutex_unlock(&reg_lock);
    reset_after_fork();
}

void conc__process_fresh(void)
{
    conc__tid_cache = 0;
    conc__threads_after_fork();
    pthread_mutex_init(&reg_lock, NULL);
    pthread_mutex_init(&name_lock, NULL);
    reset_after_fork();
}

__attribute__((constructor(CONC__CTOR_MODULE))) static void process_module_init(void)
{
    conc__self_pid();
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

/* ------------------------------------------------------------ child */

/* A descriptor that always polls readable: the sentinel of a parent that
 * ended before the child could watch it. */
static int ended_sentinel(void)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0)
        return -1;
    close(p[1]);
    return p[0];
}

_Noreturn void conc__child_main(const struct conc__child_spec *spec)
{
    child_spec = *spec;
    const struct conc__child_spec *s = &child_spec;
    conc__wait_ops = NULL;              /* not inside the parent's hub */
    /* Output the parent had buffered is the parent's to write. */
    if (__fpending(stdout))
        __fpurge(stdout);
    if (__fpending(stderr))
        __fpurge(stderr);
    /* A daemon dies with its parent: the signal is armed now and the parent
     * checked after, so a parent that died in between is noticed too. */
    if (s->daemon)
        prctl(PR_SET_PDEATHSIG, SIGKILL);
    int pfd = conc__pidfd_open(s->ppid);
    if (getppid() != s->ppid) {
        if (s->daemon) {
            kill(getpid(), SIGKILL);
            _exit(128 + SIGKILL);
        }
        if (pfd >= 0)
            close(pfd);
        pfd = ended_sentinel();
    }
    parent_proc.pid = s->ppid;
    parent_proc.pidfd = pfd;
    set_name(&parent_proc, s->parent_name ? s->parent_name : "MainProcess");
    st_release(&parent_proc.state, pfd >= 0 ? P_STARTED : P_NEW);
    set_name(&current_proc, s->name);
    size_t idn = strnlen(s->ident, sizeof current_proc.ident - 1);
    memcpy(current_proc.ident, s->ident, idn);
    current_proc.ident[idn] = 0;
    current_proc.daemon = s->daemon;
    if (s->method)
        st_relaxed(&global_method, (uint32_t)s->method);
    st_relaxed(&child_counter, 0);
    pthread_sigmask(SIG_SETMASK, &s->sigmask, NULL);
    int code = s->def ? s->def->run(s->def) : s->fn(s->arg, s->len);
    /* Like Python's child: flush the streams, do conc's own exit work (join
     * the child's non-daemon threads, then its children), and leave without
     * running the atexit handlers inherited from the parent. */
    fflush(NULL);
    conc__threads_join_nondaemon();
    exit_children();
    _exit(code & 0xff);
}

/* ------------------------------------------ stopping children on a signal */

/*
 * conc_process_cleanup_on_signals: a SIGINT/SIGTERM/SIGHUP handler that
 * stops the process's children, then lets the signal end the process.
 *
 * Everything the handler does is a system call: the children are read from
 * /proc/self/task/TID/children (every thread's list: a child belongs to the
 * thread that made it), each is opened as a pidfd and kept only when
 * waitid(P_PIDFD, WNOWAIT) accepts it as our child (a pid reaped and
 * recycled between the read and the open is someone else's), then
 * signalled, polled and reaped through that pidfd.  The pidfds live in a
 * static array; rounds of at most CLEANUP_BATCH children repeat until a
 * round finds none (children started meanwhile are caught by the next).
 */
#include <time.h>

#ifndef __WALL
#define __WALL 0x40000000
#endif

#define CLEANUP_BATCH 1024
#define CLEANUP_ROUNDS 16
/* How long the handler waits for children killed with SIGKILL (a bound for
 * a child stuck in the kernel; the process ends anyway). */
#define CLEANUP_KILL_WAIT_NS (5 * 1000000000LL)

static const int cleanup_signals[] = { SIGINT, SIGTERM, SIGHUP };
static int64_t cleanup_grace_ns;
static int cleanup_running;
static struct pollfd cleanup_fds[CLEANUP_BATCH];
static int cleanup_nfds;
static char cleanup_buf[4096];

struct cleanup_dirent64 {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

static int64_t cleanup_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Appends the string s at *p (inside end); returns false when it does not
 * fit. */
static bool cleanup_cat(char **p, char *end, const char *s)
{
    while (*s) {
        if (*p >= end)
            return false;
        *(*p)++ = *s++;
    }
    return true;
}

/* Opens pid as a pidfd and keeps it when it is our child. */
static void cleanup_take(pid_t pid, pid_t *pids)
{
    for (int i = 0; i < cleanup_nfds; i++)
        if (pids[i] == pid)
            return;
    if (cleanup_nfds == CLEANUP_BATCH)
        return;
    int fd = conc__pidfd_open(pid);
    if (fd < 0)
        return;
    siginfo_t si;
    int r;
    while ((r = conc__waitid(CONC__P_PIDFD, fd, &si, WEXITED | WNOHANG | WNOWAIT | __WALL)) != 0 &&
           errno == EINTR)
        ;
    if (r != 0 && errno != EINVAL) {    /* ECHILD: not ours (EINVAL: no P_PIDFD) */
        close(fd);
        return;
    }
    pids[cleanup_nfds] = pid;
    cleanup_fds[cleanup_nfds].fd = fd;
    cleanup_fds[cleanup_nfds].events = POLLIN;
    cleanup_fds[cleanup_nfds].revents = 0;
    cleanup_nfds++;
}

/* Reads one thread's list of children ("pid pid ... ") into the batch. */
static void cleanup_read_children(const char *tid, pid_t *pids)
{
    char path[64], *p = path;
    if (!cleanup_cat(&p, path + sizeof path - 1, "/proc/self/task/") ||
        !cleanup_cat(&p, path + sizeof path - 1, tid) ||
        !cleanup_cat(&p, path + sizeof path - 1, "/children"))
        return;
    *p = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    long pid = -1;
    for (;;) {
        ssize_t n = read(fd, cleanup_buf, sizeof cleanup_buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        for (ssize_t i = 0; i < n; i++) {
            char c = cleanup_buf[i];
            if (c >= '0' && c <= '9') {
                pid = (pid < 0 ? 0 : pid * 10) + (c - '0');
            } else if (pid >= 0) {
                cleanup_take((pid_t)pid, pids);
                pid = -1;
            }
        }
    }
    if (pid >= 0)
        cleanup_take((pid_t)pid, pids);
    close(fd);
}

/* Fills the batch with children of this process; returns how many. */
static int cleanup_collect(pid_t *pids)
{
    cleanup_nfds = 0;
    int dir = open("/proc/self/task", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0)
        return 0;
    char ents[2048];
    for (;;) {
        long n = syscall(SYS_getdents64, dir, ents, sizeof ents);
        if (n <= 0)
            break;
        for (long off = 0; off < n;) {
            struct cleanup_dirent64 *d = (struct cleanup_dirent64 *)(ents + off);
            if (d->d_name[0] >= '0' && d->d_name[0] <= '9')
                cleanup_read_children(d->d_name, pids);
            off += d->d_reclen;
        }
    }
    close(dir);
    return cleanup_nfds;
}

/* Polls the batch until every child has ended or the deadline passes;
 * returns true when all have ended. */
static bool cleanup_wait(int64_t deadline)
{
    for (;;) {
        int left = 0;
        for (int i = 0; i < cleanup_nfds; i++)
            if (cleanup_fds[i].fd >= 0 && !(cleanup_fds[i].revents & (POLLIN | POLLHUP | POLLERR)))
                left++;
        if (left == 0)
            return true;
        int64_t ms = (deadline - cleanup_now() + 999999) / 1000000;
        if (ms <= 0)
            return false;
        if (poll(cleanup_fds, (nfds_t)cleanup_nfds, ms > 1000 ? 1000 : (int)ms) < 0 &&
            errno != EINTR)
            return false;
    }
}

static void cleanup_signal_all(int sig)
{
    for (int i = 0; i < cleanup_nfds; i++)
        if (!(cleanup_fds[i].revents & (POLLIN | POLLHUP | POLLERR)))
            conc__pidfd_send_signal(cleanup_fds[i].fd, sig);
}

static void cleanup_handler(int sig)
{
    int saved = errno;
    if (__atomic_exchange_n(&cleanup_running, 1, __ATOMIC_ACQ_REL)) {
        errno = saved;                  /* another thread is at it already */
        return;
    }
    static pid_t pids[CLEANUP_BATCH];
    int64_t grace = __atomic_load_n(&cleanup_grace_ns, __ATOMIC_RELAXED);
    for (int round = 0; round < CLEANUP_ROUNDS && cleanup_collect(pids) > 0; round++) {
        cleanup_signal_all(grace > 0 ? SIGTERM : SIGKILL);
        if (grace <= 0 || !cleanup_wait(cleanup_now() + grace)) {
            cleanup_signal_all(SIGKILL);
            cleanup_wait(cleanup_now() + CLEANUP_KILL_WAIT_NS);
        }
        for (int i = 0; i < cleanup_nfds; i++) {
            siginfo_t si;
            conc__waitid(CONC__P_PIDFD, cleanup_fds[i].fd, &si, WEXITED | WNOHANG | __WALL);
            close(cleanup_fds[i].fd);
        }
    }
    /* Let the signal do what it would have done. */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(sig, &dfl, NULL);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, sig);
    raise(sig);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    errno = saved;
}

int conc_process_cleanup_on_signals(double grace)
{
    if (!(grace >= 0 && grace <= 3600))
        return -EINVAL;
    char path[64];
    snprintf(path, sizeof path, "/proc/self/task/%ld/children", (long)syscall(SYS_gettid));
    if (access(path, R_OK) != 0)
        return -ENOTSUP;
    if (!pidfd_support())
        return -ENOTSUP;
    __atomic_store_n(&cleanup_grace_ns, (int64_t)(grace * 1e9), __ATOMIC_RELAXED);
    for (size_t i = 0; i < sizeof cleanup_signals / sizeof cleanup_signals[0]; i++) {
        struct sigaction old, sa;
        if (sigaction(cleanup_signals[i], NULL, &old) != 0)
            return -errno;
        if (old.sa_handler != SIG_DFL || (old.sa_flags & SA_SIGINFO))
            continue;                   /* ignored, handled, or ours already */
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = cleanup_handler;
        sa.sa_flags = SA_RESTART;
        sigemptyset(&sa.sa_mask);
        for (size_t j = 0; j < sizeof cleanup_signals / sizeof cleanup_signals[0]; j++)
            sigaddset(&sa.sa_mask, cleanup_signals[j]);
        if (sigaction(cleanup_signals[i], &sa, NULL) != 0)
            return -errno;
    }
    return 0;
}
