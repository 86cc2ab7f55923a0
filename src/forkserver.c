/*
 * forkserver.c - the launcher thread, and the forkserver and spawn start
 * methods.
 *
 * Launcher.  The kernel sends PR_SET_PDEATHSIG when the parent *thread*
 * ends, not the parent process.  So conc creates every process (fork
 * children, the forkserver, spawn children) from a thread that lives as long
 * as the process: the main thread when it is the caller, else the launcher,
 * a thread started on first use that only creates processes.
 *
 * Forkserver.  Started once per process (on first use) by posix_spawn of
 * /proc/self/exe, which never forks the possibly multi-threaded caller,
 * with CONC_FORKSERVER=server:<ppid>:3:4 in its environment, a socket on
 * fd 3 and a key pipe on fd 4 (forkserver_wire.h).  A constructor below
 * sees the variable before main runs and, once the starter is
 * authenticated (below), enters the server loop, which never returns.  For
 * each request the server makes the child with clone3(CLONE_PARENT |
 * CLONE_PIDFD), so the child is a child of the requester, not of the
 * server: the requester gets the pidfd over the socket (SCM_RIGHTS),
 * supervises and reaps it like a fork child.  The server keeps the pidfds
 * of daemon children, and when its socket reaches EOF (the requester ended,
 * however it ended) it kills those still running, then exits: a backup to
 * the children's PR_SET_PDEATHSIG.
 *
 * Spawn.  posix_spawn of /proc/self/exe per child, CONC_FORKSERVER=spawn:..:
 * the constructor reads one request from fd 3 and becomes that child.
 *
 * Who may make a program a conc child.  The variable alone never does: any
 * program linked with conc runs this constructor, set-user-ID ones too, and
 * whoever starts a program chooses its environment and descriptors.  The
 * constructor enters child mode only when all of these hold, and otherwise
 * leaves the descriptors alone and returns to main:
 *   - the process is not secure-execution (AT_SECURE: set-user-ID,
 *     set-group-ID, file capabilities), and its real and effective ids are
 *     the same;
 *   - fd 3 is a Unix stream socket whose peer (SO_PEERCRED) is the parent
 *     process named in the variable, with the same uid and gid;
 *   - fd 4 is a pipe that holds exactly a 128-bit secret (getrandom in the
 *     starter, never in argv or the environment), and the socket already
 *     holds a hello with the same secret.
 * Then every request names the function's module by path *and* by file
 * identity (st_dev, st_ino in the starter): the child uses the module only
 * when the path names that same file, and never opens a module that fails
 * the check.
 *
 * Requests carry the function as module + offset: dladdr1 gives the module
 * (its link-map name, "" for the main program) and load address in the
 * requester; dl_iterate_phdr finds the same module in the server (dlopen
 * when needed), so address-space randomization does not matter.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <link.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include "conc/sync.h"
#include "forkserver.h"
#include "forkserver_wire.h"
#include "internal.h"
#include "sys/pidfd.h"
#include "sys/wait.h"

#define ENV_NAME CONC__ENV_NAME
#define CHILD_FD CONC__CHILD_FD
#define KEY_FD CONC__KEY_FD
#define SELF_EXE "/proc/self/exe"
#define WIRE_DEF CONC__WIRE_DEF
#define WIRE_DAEMON CONC__WIRE_DAEMON
/* stdio plus pass_fds: the kernel's limit per message (SCM_MAX_FD) is 253 */
#define WIRE_FDS_MAX (3 + CONC_PROCESS_PASS_FDS_MAX)
#define WIRE_STR_MAX 4096

/* --------------------------------------------------------- launcher */

struct launch_job {
    struct launch_job *next;
    int (*fn)(void *);
    void *ctx;
    int result;
    uint32_t done;
};

static conc_lock launch_lock = CONC_LOCK_INIT;
static struct launch_job *launch_head, *launch_tail;
static uint32_t launch_seq;
static bool launcher_up;
static bool launcher_on = true;     /* conc_process_set_launcher */

static void *launcher_main(void *unused)
{
    (void)unused;
    for (;;) {
        conc_lock_acquire_until(&launch_lock, CONC_NO_DEADLINE);
        struct launch_job *j = launch_head;
        if (j) {
            launch_head = j->next;
            if (!launch_head)
                launch_tail = NULL;
        }
        uint32_t seq = ld_relaxed(&launch_seq);
        conc_lock_release(&launch_lock);
        if (!j) {
            conc__wait(&launch_seq, seq, CONC_NO_DEADLINE, 0);
            continue;
        }
        j->result = j->fn(j->ctx);
        st_release(&j->done, 1);
        conc__wake(&j->done, 1, 0);
    }
    return NULL;
}

/* Starts the launcher with every signal blocked (signals are for the
 * program's threads; children restore the starter's mask). */
static int launcher_start(void)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t t;
    int r = pthread_create(&t, &attr, launcher_main, NULL);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (r)
        return r == ENOMEM ? -ENOMEM : -EAGAIN;
    pthread_setname_np(t, "conc-launcher");
    return 0;
}

int conc__launch(int (*fn)(void *), void *ctx)
{
    if (conc__tid() == conc__self_pid())
        return fn(ctx);                 /* the main thread */
    if (conc__coro_stack_copied())
        return fn(ctx);                 /* the job lives on a stack that may
                                           be another's while we wait */
    struct launch_job j = { .fn = fn, .ctx = ctx };
    conc_lock_acquire_until(&launch_lock, CONC_NO_DEADLINE);
    if (!launcher_up && !launcher_on) {
        conc_lock_release(&launch_lock);
        return fn(ctx);                 /* the caller's choice: this thread */
    }
    if (!launcher_up) {
        int r = launcher_start();
        if (r) {
            conc_lock_release(&launch_lock);
            return r;
        }
        launcher_up = true;
    }
    if (launch_tail)
        launch_tail->next = &j;
    else
        launch_head = &j;
    launch_tail = &j;
    __atomic_fetch_add(&launch_seq, 1, __ATOMIC_RELEASE);
    conc_lock_release(&launch_lock);
    conc__wake(&launch_seq, 1, 0);
    while (!ld_acquire(&j.done))
        conc__wait(&j.done, 0, CONC_NO_DEADLINE, 0);
    return j.result;
}

int conc_process_set_launcher(bool on)
{
    int r = 0;
    conc_lock_acquire_until(&launch_lock, CONC_NO_DEADLINE);
    if (!on && launcher_up)
        r = -EBUSY;
    else
        launcher_on = on;
    conc_lock_release(&launch_lock);
    return r;
}

/* ----------------------------------------------------- socket helpers */

static int errno_neg(void)
{
    return errno ? -errno : -EIO;
}

/* Sends the whole iovec, fds (if any) with the first byte.  The socket may
 * be non-blocking: waits through conc__wait_fd.  -EPIPE when the peer is
 * gone. */
static int send_all(int fd, struct iovec *iov, int iovcnt, const int *fds, int nfds)
{
    union {
        char buf[CMSG_SPACE(sizeof(int) * WIRE_FDS_MAX)];
        struct cmsghdr align;
    } c;
    struct msghdr m = { .msg_iov = iov, .msg_iovlen = (size_t)iovcnt };
    if (nfds > 0) {
        memset(&c, 0, sizeof c);
        m.msg_control = c.buf;
        m.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *h = CMSG_FIRSTHDR(&m);
        h->cmsg_level = SOL_SOCKET;
        h->cmsg_type = SCM_RIGHTS;
        h->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(h), fds, sizeof(int) * (size_t)nfds);
    }
    while (m.msg_iovlen > 0) {
        ssize_t n = sendmsg(fd, &m, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                int r = conc__wait_fd(fd, POLLOUT, CONC_NO_DEADLINE);
                if (r < 0)
                    return r;
                continue;
            }
            return errno == EPIPE || errno == ECONNRESET ? -EPIPE : errno_neg();
        }
        m.msg_control = NULL;
        m.msg_controllen = 0;
        size_t left = (size_t)n;
        while (m.msg_iovlen > 0 && left >= m.msg_iov->iov_len) {
            left -= m.msg_iov->iov_len;
            m.msg_iov++;
            m.msg_iovlen--;
        }
        if (m.msg_iovlen > 0) {
            m.msg_iov->iov_base = (char *)m.msg_iov->iov_base + left;
            m.msg_iov->iov_len -= left;
        }
    }
    return 0;
}

/*
 * Receives exactly len bytes; descriptors that come with them are stored in
 * fds (up to *nfds, close-on-exec; the count in *nfds; extra ones closed).
 * Waits through conc__wait_fd on a non-blocking socket.  Returns 0, -EPIPE at
 * EOF or on a broken connection.
 */
static int recv_all(int fd, void *buf, size_t len, int *fds, int *nfds)
{
    int cap = nfds ? *nfds : 0, got = 0;
    union {
        char buf[CMSG_SPACE(sizeof(int) * WIRE_FDS_MAX)];
        struct cmsghdr align;
    } c;
    size_t done = 0;
    while (done < len) {
        struct iovec iov = { (char *)buf + done, len - done };
        struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
        if (nfds) {
            m.msg_control = c.buf;
            m.msg_controllen = sizeof c.buf;
        }
        ssize_t n = recvmsg(fd, &m, MSG_CMSG_CLOEXEC);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                int r = conc__wait_fd(fd, POLLIN, CONC_NO_DEADLINE);
                if (r < 0)
                    goto out;
                continue;
            }
            goto out;
        }
        for (struct cmsghdr *h = nfds ? CMSG_FIRSTHDR(&m) : NULL; h; h = CMSG_NXTHDR(&m, h)) {
            if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS)
                continue;
            int k = (int)((h->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            for (int i = 0; i < k; i++) {
                int v;
                memcpy(&v, CMSG_DATA(h) + i * sizeof(int), sizeof v);
                if (got < cap)
                    fds[got++] = v;
                else
                    close(v);
            }
        }
        if (n == 0)
            goto out;
        done += (size_t)n;
    }
out:
    if (nfds)
        *nfds = got;
    return done == len ? 0 : -EPIPE;
}

static uint64_t mask_to_wire(const sigset_t *s)
{
    uint64_t w = 0;
    for (int sig = 1; sig <= 64 && sig < NSIG; sig++)
        if (sigismember(s, sig) == 1)
            w |= 1ull << (sig - 1);
    return w;
}

static void mask_from_wire(uint64_t w, sigset_t *s)
{
    sigemptyset(s);
    for (int sig = 1; sig <= 64 && sig < NSIG; sig++)
        if (w & (1ull << (sig - 1)))
            sigaddset(s, sig);
}

/* ------------------------------------------------ starter: requests */

/* ------------------------------------------- functions across processes */

int conc__fn_locate(const void *fn, struct conc__fn_loc *loc)
{
    Dl_info info;
    struct link_map *lm = NULL;
    if (!fn || !dladdr1(fn, &info, (void **)&lm, RTLD_DL_LINKMAP) || !lm)
        return -EINVAL;                 /* not code of a loaded module */
    loc->path = lm->l_name ? lm->l_name : "";
    struct stat st;
    if (stat(loc->path[0] ? loc->path : SELF_EXE, &st) != 0)
        return loc->path[0] ? -ENOENT : -ENOSYS;
    loc->offset = (uint64_t)((uintptr_t)fn - (uintptr_t)lm->l_addr);
    loc->dev = (uint64_t)st.st_dev;
    loc->ino = (uint64_t)st.st_ino;
    return 0;
}

struct find_ctx {
    const char *path;
    uint64_t offset;
    void *addr;
    bool found;
};

static int find_module(struct dl_phdr_info *info, size_t size, void *arg)
{
    (void)size;
    struct find_ctx *f = arg;
    if (strcmp(info->dlpi_name ? info->dlpi_name : "", f->path) != 0)
        return 0;
    f->found = true;
    /* The offset must fall in an executable segment of the module. */
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type == PT_LOAD && (ph->p_flags & PF_X) && f->offset >= ph->p_vaddr &&
            f->offset - ph->p_vaddr < ph->p_memsz) {
            f->addr = (void *)(info->dlpi_addr + (uintptr_t)f->offset);
            break;
        }
    }
    return 1;
}

int conc__fn_find(const struct conc__fn_loc *loc, void **out)
{
    struct stat st;
    if (stat(loc->path[0] ? loc->path : SELF_EXE, &st) != 0 || (uint64_t)st.st_dev != loc->dev ||
        (uint64_t)st.st_ino != loc->ino)
        return -EACCES;
    struct find_ctx f = { .path = loc->path, .offset = loc->offset };
    dl_iterate_phdr(find_module, &f);
    if (!f.found && loc->path[0]) {
        if (!dlopen(loc->path, RTLD_NOW | RTLD_GLOBAL))
            return -ENOENT;
        dl_iterate_phdr(find_module, &f);
    }
    if (!f.found)
        return -ENOENT;
    if (!f.addr)
        return -EINVAL;
    *out = f.addr;
    return 0;
}

struct request {
    struct conc__wire_req h;
    const char *path, *name, *ident, *pname;
    int32_t targets[WIRE_FDS_MAX];
    int fds[WIRE_FDS_MAX];
    int nfds;                   /* stdio + pass_fds */
    const void *data;
};

static int build_request(struct request *q, const struct conc__remote_req *r)
{
    struct conc__fn_loc loc;
    int rc = conc__fn_locate(r->target, &loc);
    if (rc)
        return rc;
    memset(&q->h, 0, sizeof q->h);
    q->path = loc.path;
    q->name = r->name;
    q->ident = r->ident;
    q->pname = r->parent_name ? r->parent_name : "";
    q->data = r->data;
    q->h.magic = CONC__WIRE_MAGIC;
    q->h.version = CONC__WIRE_VERSION;
    q->h.offset = loc.offset;
    q->h.len = r->len;
    q->h.sigmask = mask_to_wire(r->sigmask);
    q->h.ppid = conc__self_pid();
    q->h.flags = (r->is_def ? WIRE_DEF : 0) | (r->daemon ? WIRE_DAEMON : 0);
    q->h.method = (uint32_t)r->method;
    q->h.module_dev = loc.dev;
    q->h.module_ino = loc.ino;
    q->h.path_len = (uint32_t)strlen(q->path);
    q->h.name_len = (uint32_t)strlen(q->name);
    q->h.ident_len = (uint32_t)strlen(q->ident);
    q->h.pname_len = (uint32_t)strlen(q->pname);
    if (q->h.path_len > WIRE_STR_MAX)
        return -ENAMETOOLONG;
    q->nfds = 0;
    for (int i = 0; i < 3; i++) {
        if (fcntl(i, F_GETFD) >= 0) {
            q->h.stdio |= 1u << i;
            q->fds[q->nfds++] = i;
        }
    }
    for (size_t i = 0; i < r->nfds; i++) {
        if (fcntl(r->fds[i], F_GETFD) < 0)
            return -EBADF;
        q->targets[i] = r->fds[i];
        q->fds[q->nfds++] = r->fds[i];
    }
    q->h.nfds = (uint32_t)r->nfds;
    return 0;
}

static int send_request(int sock, const struct request *q)
{
    struct iovec iov[7] = {
        { (void *)&q->h, sizeof q->h },
        { (void *)q->targets, q->h.nfds * sizeof(int32_t) },
        { (void *)q->path, q->h.path_len },
        { (void *)q->name, q->h.name_len },
        { (void *)q->ident, q->h.ident_len },
        { (void *)q->pname, q->h.pname_len },
        { (void *)q->data, q->h.len },
    };
    return send_all(sock, iov, 7, q->fds, q->nfds);
}

/* Sends the request, reads the answer (and a pidfd when want_fd). */
static int transact(int sock, const struct request *q, struct conc__wire_rep *rep, int *pidfd)
{
    int r = send_request(sock, q);
    if (r)
        return r;
    int fd = -1, n = 1;
    r = recv_all(sock, rep, sizeof *rep, pidfd ? &fd : NULL, pidfd ? &n : NULL);
    if (r)
        return r;
    if (pidfd) {
        if (rep->err == 0 && n != 1)
            return -EPIPE;              /* the protocol broke */
        *pidfd = n == 1 ? fd : -1;
    }
    return 0;
}

/* ------------------------------------------------ starter: exec */

struct exec_job {
    char *const *envp;
    const sigset_t *mask;
    int sock;                   /* the child's end, becomes CHILD_FD */
    int key;                    /* the key pipe's read end, becomes KEY_FD */
    bool reset_signals;
    pid_t pid;
};

static int exec_job_run(void *ctx)
{
    struct exec_job *j = ctx;
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    int r = posix_spawn_file_actions_init(&fa);
    if (r)
        return -r;
    r = posix_spawnattr_init(&at);
    if (r) {
        posix_spawn_file_actions_destroy(&fa);
        return -r;
    }
    r = posix_spawn_file_actions_adddup2(&fa, j->sock, CHILD_FD);
    if (!r)
        r = posix_spawn_file_actions_adddup2(&fa, j->key, KEY_FD);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
    if (!r)
        r = posix_spawn_file_actions_addclosefrom_np(&fa, KEY_FD + 1);
#endif
    short flags = POSIX_SPAWN_SETSIGMASK;
    sigset_t all;
    sigfillset(&all);
    if (!r && j->reset_signals) {
        flags |= POSIX_SPAWN_SETSIGDEF;
        r = posix_spawnattr_setsigdefault(&at, &all);
    }
    if (!r)
        r = posix_spawnattr_setsigmask(&at, j->mask);
    if (!r)
        r = posix_spawnattr_setflags(&at, flags);
    if (!r) {
        char *argv[] = { j->reset_signals ? "conc-forkserver" : "conc-spawn", NULL };
        r = posix_spawn(&j->pid, SELF_EXE, &fa, &at, argv, j->envp);
    }
    posix_spawnattr_destroy(&at);
    posix_spawn_file_actions_destroy(&fa);
    if (r == ENOENT || r == EACCES || r == ENOEXEC)
        return -ENOSYS;                 /* no /proc/self/exe to run */
    return r == ENOMEM ? -ENOMEM : r ? -EAGAIN : 0;
}

extern char **environ;

/* A descriptor above KEY_FD in place of *fd (adddup2 onto itself would keep
 * it close-on-exec on older C libraries, and one target must not overwrite
 * the other's source).  Returns 0 or -errno. */
static int above_child_fds(int *fd)
{
    if (*fd > KEY_FD)
        return 0;
    int d = fcntl(*fd, F_DUPFD_CLOEXEC, KEY_FD + 1);
    if (d < 0)
        return -errno;
    close(*fd);
    *fd = d;
    return 0;
}

/*
 * Makes what authenticates this starter to the new image: a pipe holding a
 * fresh random secret (its write end closed: nobody can add to it), and the
 * hello with the same secret already queued on our end of the socket.
 * Stores the pipe's read end in *key.  Returns 0 or -errno.
 */
static int make_key(int sock, int *key)
{
    struct conc__wire_hello h = { .magic = CONC__WIRE_MAGIC, .version = CONC__WIRE_VERSION };
    size_t got = 0;
    while (got < sizeof h.secret) {
        ssize_t n = getrandom(h.secret + got, sizeof h.secret - got, 0);
        if (n < 0 && errno != EINTR)
            return errno == ENOSYS ? -ENOSYS : -EAGAIN;
        if (n > 0)
            got += (size_t)n;
    }
    int kp[2];
    if (pipe2(kp, O_CLOEXEC) != 0)
        return errno == EMFILE || errno == ENFILE ? -errno : -ENOMEM;
    /* Both fit in an empty pipe and an empty socket buffer at once. */
    bool ok = write(kp[1], h.secret, sizeof h.secret) == (ssize_t)sizeof h.secret &&
              send(sock, &h, sizeof h, MSG_NOSIGNAL) == (ssize_t)sizeof h;
    close(kp[1]);
    explicit_bzero(&h, sizeof h);
    if (!ok) {
        close(kp[0]);
        return -EIO;
    }
    *key = kp[0];
    return 0;
}

/*
 * Starts /proc/self/exe as a conc helper (mode "server" or "spawn") with a
 * socket to it on CHILD_FD and the key pipe on KEY_FD.  Stores our end of
 * the socket (close-on-exec, non-blocking), the pid and a pidfd.
 */
static int exec_helper(const char *mode, const sigset_t *mask, int *sock, pid_t *pid, int *pidfd)
{
    int sv[2], key = -1;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        return errno == EMFILE || errno == ENFILE ? -errno : -ENOMEM;
    int e = make_key(sv[0], &key);
    if (!e)
        e = above_child_fds(&sv[1]);
    if (!e)
        e = above_child_fds(&key);
    if (e) {
        if (key >= 0)
            close(key);
        close(sv[0]);
        close(sv[1]);
        return e;
    }
    size_t n = 0;
    while (environ && environ[n])
        n++;
    char **envp = malloc((n + 2) * sizeof *envp);
    char var[96];
    if (!envp) {
        close(sv[0]);
        close(sv[1]);
        close(key);
        return -ENOMEM;
    }
    snprintf(var, sizeof var, ENV_NAME "=%s:%d:%d:%d", mode, (int)conc__self_pid(), CHILD_FD,
             KEY_FD);
    size_t k = 0;
    envp[k++] = var;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], ENV_NAME "=", sizeof ENV_NAME) != 0)
            envp[k++] = environ[i];
    envp[k] = NULL;
    sigset_t none;
    sigemptyset(&none);
    struct exec_job j = {
        .envp = envp, .mask = mask ? mask : &none, .sock = sv[1], .key = key,
        .reset_signals = mask == NULL, .pid = 0,
    };
    int r = conc__launch(exec_job_run, &j);
    free(envp);
    close(sv[1]);
    close(key);
    if (r) {
        close(sv[0]);
        return r;
    }
    int fd = conc__pidfd_open(j.pid);
    if (fd < 0) {
        kill(j.pid, SIGKILL);
        conc__reap_pid(j.pid);
        close(sv[0]);
        return fd;
    }
    fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
    *sock = sv[0];
    *pid = j.pid;
    *pidfd = fd;
    return 0;
}

/* Waits for a helper that failed or was dropped, so no zombie is left. */
static void reap_helper(int pidfd, pid_t pid, bool kill_it)
{
    int code;
    if (kill_it)
        conc__pidfd_send_signal(pidfd, SIGKILL);
    conc__reap(pidfd, pid, 0, &code);
    close(pidfd);
}

/* ------------------------------------------------ starter: methods */

static conc_lock fs_lock = CONC_LOCK_INIT;
static int fs_sock = -1;        /* our end of the forkserver's socket */
static int fs_pidfd = -1;
static pid_t fs_pid;

static void fs_drop(void)
{
    close(fs_sock);
    fs_sock = -1;
    reap_helper(fs_pidfd, fs_pid, true);
    fs_pidfd = -1;
    fs_pid = 0;
}

static int start_forkserver(const struct request *q, pid_t *pid, int *pidfd)
{
    struct conc__wire_rep rep = { 0, 0 };
    int r = 0, fd = -1;
    conc_lock_acquire_until(&fs_lock, CONC_NO_DEADLINE);
    for (int attempt = 0; attempt < 2; attempt++) {
        if (fs_sock < 0) {
            r = exec_helper("server", NULL, &fs_sock, &fs_pid, &fs_pidfd);
            if (r)
                break;
        }
        r = transact(fs_sock, q, &rep, &fd);
        if (r == -EPIPE) {
            fs_drop();                  /* it died: start a new one once */
            r = -ENOSYS;
            continue;
        }
        break;
    }
    conc_lock_release(&fs_lock);
    if (r)
        return r;
    if (rep.err) {
        if (fd >= 0)
            close(fd);
        return rep.err;
    }
    *pid = rep.pid;
    *pidfd = fd;
    return 0;
}

static int start_spawn(const struct request *q, const sigset_t *mask, pid_t *pid, int *pidfd)
{
    int sock, fd;
    pid_t p;
    int r = exec_helper("spawn", mask, &sock, &p, &fd);
    if (r)
        return r;
    struct conc__wire_rep rep = { 0, 0 };
    r = transact(sock, q, &rep, NULL);
    close(sock);
    if (r == 0)
        r = rep.err;
    else
        r = -ENOSYS;                    /* it did not act as a conc child */
    if (r) {
        reap_helper(fd, p, false);      /* it exits on its own */
        return r;
    }
    *pid = p;
    *pidfd = fd;
    return 0;
}

int conc__remote_start(const struct conc__remote_req *r, pid_t *pid, int *pidfd)
{
    /* A fresh image of a set-id or capability program never acts as a conc
     * child (see the constructor): do not start main in it for nothing. */
    if (getauxval(AT_SECURE))
        return -ENOSYS;
    struct request q;
    int e = build_request(&q, r);
    if (e)
        return e;
    if (r->method == CONC_START_SPAWN)
        return start_spawn(&q, r->sigmask, pid, pidfd);
    return start_forkserver(&q, pid, pidfd);
}

void conc__forkserver_after_fork(void)
{
    if (fs_sock >= 0)
        close(fs_sock);
    if (fs_pidfd >= 0)
        close(fs_pidfd);
    fs_sock = fs_pidfd = -1;
    fs_pid = 0;
    conc_lock_init(&fs_lock, 0);
    conc_lock_init(&launch_lock, 0);
    launch_head = launch_tail = NULL;
    launcher_up = false;
}

/* ---------------------------------------------- helper: requests */

/* A request as received (kept in statics: the child's memory holds them
 * for as long as it runs). */
static struct conc__wire_req in_h;
static int in_fds[WIRE_FDS_MAX];
static int in_nfds;
static char *in_body;           /* targets and strings */
static void *in_data;
static int32_t *in_targets;
static char *in_path, *in_name, *in_ident, *in_pname;

static void drop_request(void)
{
    for (int i = 0; i < in_nfds; i++)
        close(in_fds[i]);
    in_nfds = 0;
    free(in_body);
    free(in_data);
    in_body = NULL;
    in_data = NULL;
}

static unsigned popcount3(uint32_t v)
{
    return (v & 1) + ((v >> 1) & 1) + ((v >> 2) & 1);
}

/* Reads one request from the blocking socket: 1, 0 at EOF, -EPROTO. */
static int read_request(int sock)
{
    in_nfds = WIRE_FDS_MAX;
    int r = recv_all(sock, &in_h, sizeof in_h, in_fds, &in_nfds);
    if (r) {
        in_nfds = 0;
        return 0;
    }
    if (in_h.magic != CONC__WIRE_MAGIC || in_h.version != CONC__WIRE_VERSION ||
        in_h.nfds > CONC_PROCESS_PASS_FDS_MAX || in_h.stdio > 7 ||
        (unsigned)in_nfds != in_h.nfds + popcount3(in_h.stdio) ||
        in_h.path_len > WIRE_STR_MAX || in_h.name_len > WIRE_STR_MAX ||
        in_h.ident_len > WIRE_STR_MAX || in_h.pname_len > WIRE_STR_MAX ||
        in_h.len > CONC_PROCESS_ARG_MAX ||
        ((in_h.flags & WIRE_DEF) && in_h.len < sizeof(conc_process_def)) ||
        (in_h.method != CONC_START_FORKSERVER && in_h.method != CONC_START_SPAWN))
        return -EPROTO;
    size_t tlen = in_h.nfds * sizeof(int32_t);
    size_t blen = tlen + in_h.path_len + in_h.name_len + in_h.ident_len + in_h.pname_len + 4;
    in_body = malloc(blen);
    if (!in_body)
        return -EPROTO;
    char *s = in_body + tlen;
    if (recv_all(sock, in_body, tlen, NULL, NULL))
        return 0;
    in_targets = (int32_t *)(void *)in_body;
    char **dst[4] = { &in_path, &in_name, &in_ident, &in_pname };
    uint32_t lens[4] = { in_h.path_len, in_h.name_len, in_h.ident_len, in_h.pname_len };
    for (int i = 0; i < 4; i++) {
        if (recv_all(sock, s, lens[i], NULL, NULL))
            return 0;
        s[lens[i]] = '\0';
        *dst[i] = s;
        s += lens[i] + 1;
    }
    for (uint32_t i = 0; i < in_h.nfds; i++)
        if (in_targets[i] < 0)
            return -EPROTO;
    if (in_h.len) {
        in_data = malloc(in_h.len);
        if (!in_data)
            return -EPROTO;
        if (recv_all(sock, in_data, in_h.len, NULL, NULL))
            return 0;
    }
    return 1;
}

static int send_reply(int sock, int err, pid_t pid, int pidfd)
{
    struct conc__wire_rep rep = { err, pid };
    struct iovec iov = { &rep, sizeof rep };
    return send_all(sock, &iov, 1, &pidfd, pidfd >= 0 ? 1 : 0);
}

/* The address of the requested function in this process (-EACCES when
 * its module's path no longer names the file the starter has it from). */
static int resolve_target(void **out)
{
    struct conc__fn_loc loc = { .path = in_path, .offset = in_h.offset,
                                .dev = in_h.module_dev, .ino = in_h.module_ino };
    return conc__fn_find(&loc, out);
}

/* Puts the received descriptors on their numbers (stdio on 0..2, pass_fds
 * on the numbers they had in the starter); stdio the starter lacked is
 * closed.  Returns 0 or -errno. */
static int install_fds(void)
{
    int32_t want[WIRE_FDS_MAX];
    int n = 0, top = 2;
    for (int i = 0; i < 3; i++)
        if (in_h.stdio & (1u << i))
            want[n++] = i;
    for (uint32_t i = 0; i < in_h.nfds; i++) {
        want[n++] = in_targets[i];
        if (in_targets[i] > top)
            top = in_targets[i];
    }
    /* Out of the way first: a received fd may sit on another's target. */
    for (int i = 0; i < n; i++) {
        int d = fcntl(in_fds[i], F_DUPFD_CLOEXEC, top + 1);
        if (d < 0)
            return -errno;
        close(in_fds[i]);
        in_fds[i] = d;
    }
    for (int i = 0; i < 3; i++)
        if (!(in_h.stdio & (1u << i)))
            close(i);
    for (int i = 0; i < n; i++)
        if (dup2(in_fds[i], want[i]) < 0)
            return -errno;
    for (int i = 0; i < n; i++)
        close(in_fds[i]);
    in_nfds = 0;
    return 0;
}

/* Becomes the requested child (after install_fds); never returns. */
static _Noreturn void become_child(void *target)
{
    struct conc__child_spec s;
    memset(&s, 0, sizeof s);
    if (in_h.flags & WIRE_DEF) {
        s.def = in_data;
        s.def->run = (int (*)(conc_process_def *))target;
    } else {
        s.fn = (conc_process_fn)target;
        s.arg = in_data;
        s.len = in_h.len;
    }
    s.name = in_name;
    s.ident = in_ident;
    s.parent_name = in_pname;
    s.ppid = in_h.ppid;
    s.daemon = in_h.flags & WIRE_DAEMON;
    s.method = (conc_start_method)in_h.method;
    mask_from_wire(in_h.sigmask, &s.sigmask);
    conc__child_main(&s);
}

/* Sets the command name (ps, /proc/PID/comm) to the program's, not "exe". */
static void set_comm(void)
{
    char path[PATH_MAX];
    ssize_t n = readlink(SELF_EXE, path, sizeof path - 1);
    if (n <= 0)
        return;
    path[n] = '\0';
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    char comm[16];
    size_t k = strnlen(base, sizeof comm - 1);
    memcpy(comm, base, k);
    comm[k] = '\0';
    prctl(PR_SET_NAME, comm);
}

/* ------------------------------------------------------- the server */

static int srv_sock = -1;
static int *srv_daemons;        /* pidfds of daemon children */
static size_t srv_nd, srv_capd;
static void *srv_tid_addr;      /* the C library's thread-id field */
static void *srv_robust;        /* the C library's robust-list head */
static size_t srv_robust_len;

/* In the new child (a raw clone: no fork handlers ran): repair what the C
 * library and conc keep per process, drop the server's state, become the
 * child. */
static _Noreturn void server_child(void *target)
{
    conc__process_fresh();
    if (srv_robust)
        syscall(SYS_set_robust_list, srv_robust, srv_robust_len);
    close(srv_sock);
    for (size_t i = 0; i < srv_nd; i++)
        close(srv_daemons[i]);
    srv_nd = 0;
    signal(SIGINT, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    if (install_fds() != 0)
        _exit(127);
    become_child(target);
}

/* Serves one request: 1 on success or a refused request, 0 at EOF, -EPROTO. */
static int serve_one(void)
{
    int r = read_request(srv_sock);
    if (r <= 0) {
        drop_request();
        return r;
    }
    void *target = NULL;
    int err = resolve_target(&target);
    if (err) {
        drop_request();
        return send_reply(srv_sock, err, 0, -1) == 0;
    }
    int pidfd = -1;
    struct conc__clone_args ca = {
        .flags = CLONE_PARENT | CLONE_PIDFD,
        .pidfd = (uint64_t)(uintptr_t)&pidfd,
        .exit_signal = 0,               /* CLONE_PARENT: the server's own (SIGCHLD) */
    };
    if (srv_tid_addr) {
        /* As fork() does: the child's thread-id field gets its own id. */
        ca.flags |= CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID;
        ca.child_tid = (uint64_t)(uintptr_t)srv_tid_addr;
    }
    pid_t pid = conc__clone3(&ca);
    if (pid == 0)
        server_child(target);
    if (pid < 0) {
        drop_request();
        err = pid == -ENOSYS || pid == -ENOMEM ? pid : pid == -EPERM ? -EAGAIN : pid;
        return send_reply(srv_sock, err, 0, -1) == 0;
    }
    bool daemon = in_h.flags & WIRE_DAEMON;
    drop_request();
    r = send_reply(srv_sock, 0, pid, pidfd);
    if (daemon && srv_nd == srv_capd) {
        size_t ncap = srv_capd ? srv_capd * 2 : 16;
        int *nv = realloc(srv_daemons, ncap * sizeof *nv);
        if (nv) {
            srv_daemons = nv;
            srv_capd = ncap;
        }
    }
    if (daemon && srv_nd < srv_capd)
        srv_daemons[srv_nd++] = pidfd;
    else
        close(pidfd);
    return r == 0;
}

static _Noreturn void server_main(int sock, pid_t ppid)
{
    if (getppid() != ppid)
        _exit(0);                       /* the requester is gone already */
    srv_sock = sock;
    set_comm();
    signal(SIGINT, SIG_IGN);            /* ^C is for the program, as in Python */
    signal(SIGPIPE, SIG_IGN);
    if (prctl(PR_GET_TID_ADDRESS, &srv_tid_addr) != 0)
        srv_tid_addr = NULL;
    if (syscall(SYS_get_robust_list, 0, &srv_robust, &srv_robust_len) != 0)
        srv_robust = NULL;
    bool eof = false;
    struct pollfd *pfds = NULL;
    size_t pcap = 0;
    for (;;) {
        if (pcap < srv_nd + 1) {
            struct pollfd *np = realloc(pfds, (srv_nd + 1) * sizeof *np);
            if (!np)
                break;
            pfds = np;
            pcap = srv_nd + 1;
        }
        pfds[0] = (struct pollfd){ .fd = srv_sock, .events = POLLIN };
        for (size_t i = 0; i < srv_nd; i++)
            pfds[i + 1] = (struct pollfd){ .fd = srv_daemons[i], .events = POLLIN };
        size_t np = srv_nd + 1;
        if (poll(pfds, np, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        /* Daemon children that ended: forget them. */
        for (size_t i = np - 1; i >= 1; i--) {
            if (pfds[i].revents) {
                close(srv_daemons[i - 1]);
                srv_daemons[i - 1] = srv_daemons[--srv_nd];
            }
        }
        if (pfds[0].revents) {
            int r = serve_one();
            if (r <= 0) {
                eof = r == 0;
                break;
            }
        }
    }
    /* The requester ended (or the protocol broke): its daemon children go
     * with it, even if their death signal was missed. */
    if (eof)
        for (size_t i = 0; i < srv_nd; i++)
            conc__pidfd_send_signal(srv_daemons[i], SIGKILL);
    _exit(0);
}

/* ------------------------------------------------------- spawn child */

static _Noreturn void spawn_main(int sock, pid_t ppid)
{
    (void)ppid;
    if (read_request(sock) <= 0)
        _exit(127);
    void *target = NULL;
    int err = resolve_target(&target);
    if (send_reply(sock, err, err ? 0 : getpid(), -1) != 0 || err)
        _exit(127);
    close(sock);
    if (install_fds() != 0)
        _exit(127);
    become_child(target);
}

/* ------------------------------------------------------ constructor */

/* Reads the variable: "<mode>:<ppid>:<socket fd>:<key fd>". */
static bool parse_entry(const char *v, char mode[8], pid_t *ppid, int *sock, int *key)
{
    int p, s, k, used = 0;
    if (sscanf(v, "%7[a-z]:%d:%d:%d%n", mode, &p, &s, &k, &used) != 4 || v[used] != '\0')
        return false;
    if (p <= 0 || s < 0 || k < 0 || s == k)
        return false;
    *ppid = p;
    *sock = s;
    *key = k;
    return strcmp(mode, "server") == 0 || strcmp(mode, "spawn") == 0;
}

/* Whether sock is a Unix stream socket whose peer is process ppid (our
 * parent) running as our own user and group. */
static bool peer_is_parent(int sock, pid_t ppid)
{
    struct stat st;
    int v;
    socklen_t len = sizeof v;
    if (fstat(sock, &st) != 0 || !S_ISSOCK(st.st_mode))
        return false;
    if (getsockopt(sock, SOL_SOCKET, SO_DOMAIN, &v, &len) != 0 || v != AF_UNIX)
        return false;
    len = sizeof v;
    if (getsockopt(sock, SOL_SOCKET, SO_TYPE, &v, &len) != 0 || v != SOCK_STREAM)
        return false;
    struct ucred cr;
    len = sizeof cr;
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cr, &len) != 0 || len != sizeof cr)
        return false;
    return cr.pid == ppid && getppid() == ppid && cr.uid == getuid() && cr.gid == getgid();
}

/* Whether the key pipe holds exactly the secret of the hello already
 * waiting on the socket; consumes both then (nothing is read from either
 * otherwise, but the pipe of a peer that passed every other check). */
static bool secret_matches(int sock, int key)
{
    struct stat st;
    if (fstat(key, &st) != 0 || !S_ISFIFO(st.st_mode))
        return false;
    struct pollfd pfd = { .fd = key, .events = POLLIN };
    if (poll(&pfd, 1, 0) != 1 || !(pfd.revents & POLLIN))
        return false;
    struct conc__wire_hello h;
    uint8_t secret[CONC__WIRE_SECRET + 1];
    ssize_t n = recv(sock, &h, sizeof h, MSG_PEEK | MSG_DONTWAIT);
    if (n != (ssize_t)sizeof h || h.magic != CONC__WIRE_MAGIC || h.version != CONC__WIRE_VERSION)
        return false;
    n = read(key, secret, sizeof secret);
    unsigned diff = n != CONC__WIRE_SECRET;
    for (size_t i = 0; i < CONC__WIRE_SECRET; i++)
        diff |= (unsigned)(secret[i] ^ h.secret[i]);
    explicit_bzero(secret, sizeof secret);
    if (diff) {
        explicit_bzero(&h, sizeof h);
        return false;
    }
    n = recv(sock, &h, sizeof h, MSG_DONTWAIT);
    explicit_bzero(&h, sizeof h);
    return n == (ssize_t)sizeof h;
}

/*
 * Runs before main in every program linked with conc.  In a process that
 * its conc starter made a helper (see "Who may make a program a conc child"
 * above) it becomes the forkserver or the spawn child and never returns to
 * main.  Anything else returns at once and main runs as usual, with no
 * descriptor closed.  (Its priority, CONC__CTOR_LAST, makes it run after
 * conc's other constructors.)
 */
__attribute__((constructor(CONC__CTOR_LAST))) static void forkserver_module_init(void)
{
    if (getauxval(AT_SECURE) || getuid() != geteuid() || getgid() != getegid()) {
        unsetenv(ENV_NAME);             /* never in a privileged program */
        return;
    }
    const char *v = secure_getenv(ENV_NAME);
    if (!v)
        return;
    char mode[8];
    pid_t ppid;
    int sock, key;
    bool ok = parse_entry(v, mode, &ppid, &sock, &key);
    unsetenv(ENV_NAME);                 /* not for the program's own children */
    if (!ok || !peer_is_parent(sock, ppid) || !secret_matches(sock, key))
        return;
    close(key);
    fcntl(sock, F_SETFD, FD_CLOEXEC);
    if (strcmp(mode, "server") == 0)
        server_main(sock, ppid);
    set_comm();
    spawn_main(sock, ppid);
}
