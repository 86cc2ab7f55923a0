/*
 * manager.c - multiprocessing.managers (conc/manager.h): the manager handle
 * (start, serve_forever, connect, shutdown) and the proxies.  The server is
 * in manager_server.c, the messages in manager_wire.c.
 *
 * A proxy owns one connection and runs one request at a time on it: it
 * writes the request, waits for the answer (the server keeps the time
 * limits, so the proxy waits without one: a server that dies closes the
 * connection and the wait ends with -EPIPE or -ECONNRESET at once).  In a
 * forked child the inherited connection is not used: the first call there
 * opens a new one.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>
#include "conc/listener.h"
#include "conc/manager.h"
#include "conc/pipe.h"
#include "conc/process.h"
#include "conc/sync.h"
#include "conc/time.h"
#include "internal.h"
#include "listener_internal.h"
#include "manager_internal.h"
#include "manager_wire.h"

#define CONNECT_TIMEOUT 10.0        /* connect and handshake */
#define START_TIMEOUT 30.0          /* the child reports it listens */
#define STOP_GRACE 1.0              /* a started server gets to exit by itself */
#define ANSWER_GRACE_NS (10 * (int64_t)1000000000) /* a timed call's answer may come this late */
#define PROBE_NS (5 * (int64_t)1000000000) /* an untimed call looks whether the
                                              server runs this often */

enum { ST_NEW, ST_STARTED, ST_SERVING, ST_CONNECTED, ST_SHUT };

struct conc_manager {
    char addr[CONC_MANAGER_ADDR_MAX + 1];
    bool has_addr;
    bool private_addr;              /* a directory made for the socket */
    uint8_t *authkey;
    size_t authkey_len;
    size_t max_message;
    unsigned threads;               /* the server's; 0: one per CPU */
    size_t send_max;                /* the largest request: the server's
                                       message size when it is smaller */
    int state;
    pid_t owner;                    /* the process that made the handle */
    conc_process *proc;
    pid_t server_pid;
    conc_conn *rd, *wr;             /* the start report, while starting */
    struct conc__mgr_type *types;
    size_t ntypes;
    pthread_mutex_t srv_mu;         /* guards srv against its end */
    struct conc__mgr_server *srv;
};

struct conc_proxy {
    conc_manager *m;
    uint64_t id;
    conc_proxy_type type;
    char tc;                        /* a Value's or Array's typecode, or 0 */
    conc_conn *c;
    int fd;                         /* c's descriptor, for the fork handler */
    unsigned gen;                   /* fork_gen when c was opened */
    bool broken;
    conc_proxy *next, *prev;        /* the fork handler's list */
    conc_lock mu;
};

/* An answer received: the buffer and the checked fields. */
struct ans {
    void *buf;
    struct conc__mgr_ans a;
};

/* ------------------------------------------------------------- helpers */

static int64_t time_left(int64_t deadline)
{
    if (deadline == CONC_NO_DEADLINE)
        return -1;
    int64_t now = conc_now();
    return deadline > now ? deadline - now : 0;
}

static int dial(const conc_manager *m, conc_conn **out)
{
    conc_client_opts o = CONC_CLIENT_OPTS_INIT;
    o.authkey = m->authkey;
    o.authkey_len = m->authkey_len;
    o.max_message = m->max_message;
    int64_t deadline;
    int e = conc_deadline(CONNECT_TIMEOUT, &deadline);
    if (!e)
        e = conc__client_connect_until(out, m->addr, &o, deadline);
    if (e == -EPIPE || e == -ECONNRESET)
        return -ECONNRESET;         /* gone, or dropped us, mid-handshake */
    if (e)
        /* With a key, a handshake the server does not take part in is a
         * server without a key: it spoke first, with its hello. */
        return e == -ECONNABORTED && m->authkey ? -EACCES : e;
    /* The server's hello; a challenge instead is a server with a key. */
    char hello[64];
    ssize_t n = conc_conn_recv_bytes_until(*out, hello, sizeof hello, deadline);
    if (n != (ssize_t)CONC__MGR_HELLO_LEN || memcmp(hello, CONC__MGR_HELLO, (size_t)n) != 0) {
        conc_conn_free(*out);
        *out = NULL;
        if (n == -ETIMEDOUT || n == -ENOMEM)
            return (int)n;
        if (n == -EPIPE || n == -ECONNRESET)
            return -ECONNRESET;
        /* Only a challenge says "a server with a key"; anything else (an
         * empty message, another version's hello) is not a manager this
         * client speaks with. */
        return !m->authkey && n >= (ssize_t)CONC__MGR_CHALLENGE_START_LEN &&
                       memcmp(hello, CONC__MGR_CHALLENGE_START,
                              CONC__MGR_CHALLENGE_START_LEN) == 0
                   ? -EACCES
                   : -EPROTO;
    }
    /* A blocking socket: a plain thread then waits for its answer in recv()
     * itself (one system call instead of three); a coroutine's receive
     * still parks, conc_conn passing MSG_DONTWAIT where it must not block. */
    int fd = conc_conn_fd(*out);
    conc__mgr_keepalive(fd);            /* a server machine that vanishes */
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0 && (fl & O_NONBLOCK))
        fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    return 0;
}

/*
 * Proxies and fork.  The child of a fork must not keep its parent's
 * connections: the server tells that a client has gone (and releases its
 * locks) by the end of its connection, which never comes while a child
 * holds a copy of the socket.  So every proxy with a connection is in a
 * list, and in the child of a fork each of their descriptors is replaced
 * (dup3, atomically) by one of /dev/null: the parent's sockets lose the
 * child's references at once, and the proxy, which sees that fork_gen
 * changed, opens a connection of its own at its next call (its call lock,
 * which a thread of the parent may have held, is made free).  fork_gen spares
 * a getpid() per call.  The handlers take and drop reg_mu around the fork,
 * so the child finds the list whole.
 */
static unsigned fork_gen;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static conc_proxy *reg_head;            /* proxies with a connection */

static void fork_prepare(void)
{
    pthread_mutex_lock(&reg_mu);
}

static void fork_parent(void)
{
    pthread_mutex_unlock(&reg_mu);
}

static void fork_child(void)
{
    fork_gen++;
    int inert = reg_head ? open("/dev/null", O_RDWR | O_CLOEXEC) : -1;
    for (conc_proxy *p = reg_head; p; p = p->next) {
        if (p->fd >= 0 && inert >= 0)
            dup3(inert, p->fd, O_CLOEXEC);
        conc_lock_init(&p->mu, 0);      /* another thread may have held it */
    }
    if (inert >= 0)
        close(inert);
    pthread_mutex_unlock(&reg_mu);
}

static void fork_watch(void)
{
    pthread_atfork(fork_prepare, fork_parent, fork_child);
}

static void reg_add(conc_proxy *p)
{
    pthread_mutex_lock(&reg_mu);
    p->next = reg_head;
    p->prev = NULL;
    if (reg_head)
        reg_head->prev = p;
    reg_head = p;
    pthread_mutex_unlock(&reg_mu);
}

static void reg_remove(conc_proxy *p)
{
    pthread_mutex_lock(&reg_mu);
    if (p->prev)
        p->prev->next = p->next;
    else if (reg_head == p)
        reg_head = p->next;
    if (p->next)
        p->next->prev = p->prev;
    p->next = p->prev = NULL;
    pthread_mutex_unlock(&reg_mu);
}

/* Sets p->c (and the descriptor the fork handler sees). */
static void proxy_set_conn(conc_proxy *p, conc_conn *c)
{
    pthread_mutex_lock(&reg_mu);
    p->c = c;
    p->fd = c ? conc_conn_fd(c) : -1;
    pthread_mutex_unlock(&reg_mu);
}

static bool conn_fatal(int e)
{
    return e == -EPIPE || e == -ECONNRESET;
}

/* Whether an answer's status (and count, and number of strings) is one
 * that op can have: a server is not taken at its word for a count below 0,
 * a status a call never returns, or a dict's items as an odd number of
 * strings.  Returns the status, or -EPROTO. */
static int answer_check(int op, const struct conc__mgr_ans *a)
{
    if (a->status < 0)
        return a->status;                   /* an errno (ans_parse checked it) */
    switch (op) {
    case CONC__MGR_OPEN:                    /* the type (its caller checks it) */
    case CONC__MGR_B_WAIT:                  /* the caller's index */
    case CONC__MGR_CALL:                    /* what the type's callback returned */
        return a->status;
    case CONC__MGR_D_SETDEFAULT:            /* 1: it set the default */
        return a->status <= 1 ? a->status : -EPROTO;
    case CONC__MGR_B_INFO:                  /* the parties */
        return a->status >= 1 ? a->status : -EPROTO;
    case CONC__MGR_D_LEN:
    case CONC__MGR_L_LEN:
    case CONC__MGR_A_LEN:
    case CONC__MGR_Q_SIZE:
        return a->status == 0 && a->value >= 0 ? 0 : -EPROTO;
    case CONC__MGR_Q_INFO:                  /* the maxsize; value the qsize */
        return a->value >= 0 ? a->status : -EPROTO;
    case CONC__MGR_D_ITEMS:                 /* key, value, key, value, ... */
        return a->status == 0 && a->nargs % 2 == 0 ? 0 : -EPROTO;
    }
    return a->status == 0 ? 0 : -EPROTO;
}

/* Whether the server of m still runs, for a call that has waited long for
 * its answer: a new connection gets the server's hello (within
 * CONNECT_TIMEOUT).  Only a server that does not answer is taken as not
 * running (-ETIMEDOUT); a connection refused or dropped (a full server,
 * one shutting down), or this process out of descriptors, says nothing of
 * the call's connection, whose own end tells. */
static bool server_runs(const conc_manager *m)
{
    conc_conn *c = NULL;
    int e = dial(m, &c);
    conc_conn_free(c);
    return e != -ETIMEDOUT && e != -EAGAIN;
}

/* Waits for the answer of a call without a time limit: as long as its
 * connection lives and the server runs (looked at every PROBE_NS). */
static int recv_untimed(conc_proxy *p, void **buf, size_t *len)
{
    for (;;) {
        int e = conc_conn_recv_alloc_until(p->c, buf, len, conc_now() + PROBE_NS);
        if (e != -ETIMEDOUT || !server_runs(p->m))
            return e;
    }
}

/* Runs one request on p's connection.  Returns the answer's status (and
 * keeps the answer in *res, free res->buf) or a local error. */
static int rpc(conc_proxy *p, struct conc__mgr_req *r, const struct conc__mgr_str *s, size_t n,
               struct ans *res)
{
    res->buf = NULL;
    size_t size = conc__mgr_size(CONC__MGR_REQ_HEAD, s, n);
    if (size > p->m->max_message || (p->m->send_max && size > p->m->send_max))
        return -EMSGSIZE;               /* the server would drop the connection */
    uint8_t small[512];
    uint8_t *buf = size <= sizeof small ? small : malloc(size);
    if (!buf)
        return -ENOMEM;
    r->nargs = (uint32_t)n;
    if (r->op != CONC__MGR_CREATE)
        r->c = (int64_t)p->m->max_message;  /* the largest answer this end takes */
    conc__mgr_req_write(buf, r, s, n);
    int e = conc_lock_acquire(&p->mu, CONC_FOREVER);
    if (e)
        goto out;
    if (p->broken) {
        e = -EPIPE;
        goto unlock;
    }
    if (p->gen != __atomic_load_n(&fork_gen, __ATOMIC_RELAXED)) {
        /* a forked child: a connection of its own */
        conc_conn *old = p->c, *c = NULL;
        proxy_set_conn(p, NULL);
        conc_conn_free(old);            /* the /dev/null copy, see fork_child */
        e = dial(p->m, &c);
        if (!e)
            proxy_set_conn(p, c);
        if (e) {
            p->broken = true;
            e = e == -ENOENT || e == -ECONNREFUSED ? -ECONNRESET : e;
            goto unlock;
        }
        p->gen = __atomic_load_n(&fork_gen, __ATOMIC_RELAXED);
    }
    e = conc_conn_send_bytes(p->c, buf, size, CONC_FOREVER);
    if (!e) {
        /* The server keeps the call's time limit; an answer that has not
         * come ANSWER_GRACE_NS after it is from a server that does not run
         * (stopped, its thread held up): the call gives up, and the proxy,
         * whose answer could still come, is broken; its connection is
         * closed, so the server releases what it held when it runs again.
         * A call without a limit waits as long as the connection lives and
         * the server runs (a new connection gets its hello: recv_untimed),
         * and so does Condition.wait, which takes the lock back however
         * long another client holds it. */
        int64_t until = CONC_NO_DEADLINE;
        if (r->timeout >= 0 && r->op != CONC__MGR_C_WAIT) {
            int64_t now = conc_now();
            until = r->timeout < CONC_NO_DEADLINE - now - ANSWER_GRACE_NS
                        ? now + r->timeout + ANSWER_GRACE_NS
                        : CONC_NO_DEADLINE;
        }
        size_t len;
        e = until == CONC_NO_DEADLINE
                ? recv_untimed(p, &res->buf, &len)
                : conc_conn_recv_alloc_until(p->c, &res->buf, &len, until);
        if (!e && conc__mgr_ans_parse(res->buf, len, &res->a)) {
            free(res->buf);
            res->buf = NULL;
            e = -EPROTO;
        }
    }
    if (e == -ETIMEDOUT) {              /* no answer within the grace */
        conc_conn *old = p->c;
        proxy_set_conn(p, NULL);
        conc_conn_free(old);
    }
    if (e) {
        p->broken = true;               /* the stream is out of step or gone */
        if (!conn_fatal(e) && e != -EPROTO && e != -EMSGSIZE && e != -ENOMEM)
            e = -ECONNRESET;
    } else {
        e = answer_check(r->op, &res->a);
    }
unlock:
    conc_lock_release(&p->mu);
out:
    if (buf != small)
        free(buf);
    return e;
}

/* A request with no strings and no answer strings: the status, and the
 * value in *value when it is not NULL. */
static int rpc_simple(conc_proxy *p, int op, int64_t deadline, int64_t a, int64_t *value)
{
    struct conc__mgr_req r = { .op = (uint8_t)op, .id = p->id, .timeout = time_left(deadline),
                               .a = a };
    struct ans res;
    int e = rpc(p, &r, NULL, 0, &res);
    if (res.buf && value)
        *value = res.a.value;
    free(res.buf);
    return e;
}

/* The i-th string of an answer copied into a new buffer. */
static int take(const struct ans *res, uint32_t i, void **val, size_t *len)
{
    size_t pos = 0;
    struct conc__mgr_str s = { 0 };
    if (!res->buf || i >= res->a.nargs)
        return -EPROTO;
    for (uint32_t j = 0; j <= i; j++)
        if (conc__mgr_next(res->a.args, res->a.args_len, &pos, &s))
            return -EPROTO;
    void *b = malloc(s.len ? s.len : 1);
    if (!b)
        return -ENOMEM;
    if (s.len)
        memcpy(b, s.p, s.len);
    *val = b;
    *len = s.len;
    return 0;
}

/* Every string of an answer as one conc_proxy_items block. */
static int take_items(const struct ans *res, conc_proxy_items **out)
{
    size_t pos = 0, total = 0, n = res->a.nargs;
    struct conc__mgr_str s;
    for (size_t i = 0; i < n; i++) {
        if (conc__mgr_next(res->a.args, res->a.args_len, &pos, &s))
            return -EPROTO;
        total += s.len;
    }
    conc_proxy_items *it = malloc(sizeof *it + n * sizeof it->item[0] + total + 1);
    if (!it)
        return -ENOMEM;
    uint8_t *data = (uint8_t *)&it->item[n];
    it->count = n;
    pos = 0;
    for (size_t i = 0; i < n; i++) {
        conc__mgr_next(res->a.args, res->a.args_len, &pos, &s);
        if (s.len)
            memcpy(data, s.p, s.len);
        it->item[i].data = data;
        it->item[i].len = s.len;
        data += s.len;
    }
    *out = it;
    return 0;
}

/* A request that answers one string, copied to *val. */
static int rpc_val(conc_proxy *p, struct conc__mgr_req *r, const struct conc__mgr_str *s,
                   size_t n, void **val, size_t *len)
{
    struct ans res;
    int e = rpc(p, r, s, n, &res);
    if (e >= 0) {
        int t = take(&res, 0, val, len);
        if (t)
            e = t;
    }
    free(res.buf);
    return e;
}

static bool check(const conc_proxy *p, conc_proxy_type t)
{
    return p && p->type == t;
}

/* ------------------------------------------------------------- manager */

static bool addr_ok(const char *a)
{
    size_t n = strnlen(a, CONC_MANAGER_ADDR_MAX + 1);
    return n >= 1 && n <= CONC_MANAGER_ADDR_MAX;
}

/* Whether an address is TCP (conc_address_parse): HOST:SERVICE, any text
 * with a ':' but no '/' that is not "@name". */
static bool addr_tcp(const char *a)
{
    return a[0] != '@' && !strchr(a, '/') && strchr(a, ':');
}

int conc_manager_new(conc_manager **out, const conc_manager_opts *opts)
{
    conc_manager_opts o = { 0 };
    if (opts) {
        uint32_t size;
        memcpy(&size, opts, sizeof size);
        size_t n = size == 0 || size > sizeof o ? sizeof o : size;
        memcpy(&o, opts, n);
    }
    if (!out)
        return -EINVAL;
    if (o.address && !addr_ok(o.address))
        return -EINVAL;
    if (o.authkey && (o.authkey_len == 0 || o.authkey_len > 1024))
        return -EINVAL;
    if (!o.authkey && o.address && addr_tcp(o.address))
        return -EINVAL;                 /* TCP without a key: anyone could talk to it */
    if (o.max_message && (o.max_message < 64 || o.max_message > CONC_MANAGER_MSG_MAX))
        return -EINVAL;
    if (o.threads > CONC_MANAGER_THREADS_MAX)
        return -EINVAL;
    conc_manager *m = calloc(1, sizeof *m);
    if (!m)
        return -ENOMEM;
    if (o.address) {
        strcpy(m->addr, o.address);
        m->has_addr = true;
    }
    if (o.authkey) {
        m->authkey = malloc(o.authkey_len);
        if (!m->authkey) {
            free(m);
            return -ENOMEM;
        }
        memcpy(m->authkey, o.authkey, o.authkey_len);
        m->authkey_len = o.authkey_len;
    }
    m->max_message = o.max_message ? o.max_message : CONC_MANAGER_MSG_MAX;
    m->threads = o.threads;
    m->owner = getpid();
    pthread_once(&fork_once, fork_watch);
    pthread_mutex_init(&m->srv_mu, NULL);
    *out = m;
    return 0;
}

int conc_manager_register(conc_manager *m, const char *typeid, const conc_manager_type *type)
{
    if (!m || !typeid || !type)
        return -EINVAL;
    size_t n = strnlen(typeid, CONC_MANAGER_NAME_MAX + 1);
    conc_manager_type t = { 0 };
    uint32_t size;
    memcpy(&size, type, sizeof size);
    memcpy(&t, type, size == 0 || size > sizeof t ? sizeof t : size);
    if (n == 0 || n > CONC_MANAGER_NAME_MAX || !t.create || !t.call)
        return -EINVAL;
    if (m->state != ST_NEW)
        return -EALREADY;
    for (size_t i = 0; i < m->ntypes; i++)
        if (strcmp(m->types[i].name, typeid) == 0)
            return -EEXIST;
    struct conc__mgr_type *ts = realloc(m->types, (m->ntypes + 1) * sizeof *ts);
    if (!ts)
        return -ENOMEM;
    m->types = ts;
    ts[m->ntypes].name = strdup(typeid);
    if (!ts[m->ntypes].name)
        return -ENOMEM;
    ts[m->ntypes].t = t;
    m->ntypes++;
    return 0;
}

static int listen_on(conc_manager *m, conc_listener **l)
{
    conc_listener_opts o = CONC_LISTENER_OPTS_INIT;
    o.authkey = m->authkey;
    o.authkey_len = m->authkey_len;
    o.max_message = m->max_message;
    int e = conc_listener_new(l, m->has_addr ? m->addr : NULL, &o);
    return e == -EPERM ? -EINVAL : e;
}

/* The started child: listen, report the address (or the error), serve.
 * SIGINT is ignored (a Ctrl-C reaches the whole process group; the parent
 * decides), SIGTERM ends the serving cleanly. */
static int server_child(const void *arg, size_t len)
{
    conc_manager *m;
    if (len != sizeof m)
        return 2;
    memcpy(&m, arg, sizeof m);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != m->owner)
        return 3;                       /* the parent died before the signal was armed */
    conc_conn_free(m->rd);
    conc_listener *l = NULL;
    struct conc__mgr_server *s = NULL;
    int e = listen_on(m, &l);
    char rep[4 + CONC_MANAGER_ADDR_MAX + 1] = { 0 };
    size_t rlen = 4;
    if (!e) {
        int n = conc_listener_address(l, rep + 4, sizeof rep - 4);
        if (n < 0)
            e = n;
        else
            rlen += (size_t)n;
    }
    if (!e)
        e = conc__mgr_server_new(&s, l, m->types, m->ntypes, m->max_message);
    if (!e)
        conc__mgr_server_threads(s, m->threads);
    if (!e) {                           /* before the parent hears it listens */
        signal(SIGINT, SIG_IGN);
        sigset_t term;
        sigemptyset(&term);
        sigaddset(&term, SIGTERM);
        pthread_sigmask(SIG_BLOCK, &term, NULL);   /* the server takes it (sigtimedwait) */
        conc__mgr_server_take_sigterm(s);
    }
    memcpy(rep, &e, 4);
    conc_conn_send_bytes(m->wr, rep, rlen, CONC_FOREVER);
    conc_conn_free(m->wr);
    if (e) {
        conc_listener_free(l);
        return 1;
    }
    conc__mgr_server_run(s);
    conc__mgr_server_free(s);
    return 0;
}

/* Removes what a started server left on the file system (it was killed). */
static void remove_socket(conc_manager *m)
{
    struct stat st;
    if (m->addr[0] == '/' && lstat(m->addr, &st) == 0 && S_ISSOCK(st.st_mode))
        unlink(m->addr);
    if (m->private_addr) {
        char dir[sizeof m->addr];
        strcpy(dir, m->addr);
        rmdir(dirname(dir));
    }
}

int conc_manager_start(conc_manager *m)
{
    if (!m)
        return -EINVAL;
    if (m->state != ST_NEW)
        return -EALREADY;
    int e = conc_conn_pipe(&m->rd, &m->wr, false);
    if (e)
        return e;
    conc_process_opts po = CONC_PROCESS_OPTS_INIT;
    po.name = "conc-manager";
    po.daemon = CONC_DAEMON;
    po.method = CONC_START_FORK;
    conc_process *proc = NULL;
    e = conc_process_new(&proc, server_child, &m, sizeof m, &po);
    if (!e)
        e = conc_process_start(proc);
    conc_conn_free(m->wr);
    m->wr = NULL;
    if (e) {
        conc_conn_free(m->rd);
        m->rd = NULL;
        conc_process_free(proc);
        return e;
    }
    char rep[4 + CONC_MANAGER_ADDR_MAX + 1];
    ssize_t n = conc_conn_recv_bytes(m->rd, rep, sizeof rep - 1, START_TIMEOUT);
    conc_conn_free(m->rd);
    m->rd = NULL;
    int status = -ECHILD;
    if (n >= 4) {
        memcpy(&status, rep, 4);
        if (!status && (n == 4 || (size_t)n - 4 > CONC_MANAGER_ADDR_MAX))
            status = -EPROTO;
    }
    if (status) {
        conc_process_kill(proc);
        conc_process_join(proc, CONC_FOREVER);
        conc_process_free(proc);
        return status > 0 || status < -4095 ? -EPROTO : status;
    }
    rep[n] = 0;
    if (!m->has_addr)
        m->private_addr = true;
    strcpy(m->addr, rep + 4);
    m->has_addr = true;
    m->proc = proc;
    m->server_pid = conc_process_pid(proc);
    m->state = ST_STARTED;
    return 0;
}

int conc_manager_serve_forever(conc_manager *m)
{
    if (!m || !m->has_addr)
        return -EINVAL;
    if (m->state != ST_NEW)
        return -EALREADY;
    conc_listener *l;
    int e = listen_on(m, &l);
    if (e)
        return e;
    struct conc__mgr_server *s;
    e = conc__mgr_server_new(&s, l, m->types, m->ntypes, m->max_message);
    if (e) {
        conc_listener_free(l);
        return e;
    }
    conc__mgr_server_threads(s, m->threads);
    char a[CONC_SOCKADDR_STRLEN];
    pthread_mutex_lock(&m->srv_mu);
    if (conc_listener_address(l, a, sizeof a) > 0 && strlen(a) <= CONC_MANAGER_ADDR_MAX)
        strcpy(m->addr, a);
    m->srv = s;
    m->state = ST_SERVING;
    pthread_mutex_unlock(&m->srv_mu);
    conc__mgr_server_run(s);
    pthread_mutex_lock(&m->srv_mu);
    m->srv = NULL;
    m->state = ST_SHUT;
    pthread_mutex_unlock(&m->srv_mu);
    conc__mgr_server_free(s);
    return 0;
}

int conc_manager_connect(conc_manager *m)
{
    if (!m || !m->has_addr)
        return -EINVAL;
    if (m->state != ST_NEW)
        return -EALREADY;
    conc_proxy p = { .m = m, .gen = __atomic_load_n(&fork_gen, __ATOMIC_RELAXED) };
    conc_lock_init(&p.mu, 0);
    int e = dial(m, &p.c);
    if (e)
        return e;
    int64_t server_max = 0;
    e = rpc_simple(&p, CONC__MGR_PING, CONC_NO_DEADLINE, 0, &server_max);
    conc_conn_free(p.c);
    if (!e && server_max >= 64 && (uint64_t)server_max < m->max_message)
        m->send_max = (size_t)server_max;
    /* A server with a key sends a challenge where a keyless client expects
     * its answer (or drops it): the key is missing on this side. */
    if (e && !m->authkey && (e == -ECONNRESET || e == -EPIPE || e == -EPROTO))
        return -EACCES;
    if (e)
        return e == -ECONNRESET || e == -EPIPE || e == -EMSGSIZE ? -EPROTO : e;
    m->state = ST_CONNECTED;
    return 0;
}

int conc_manager_address(const conc_manager *m, char *buf, size_t size)
{
    if (!m || (!buf && size) || !m->has_addr)
        return -EINVAL;
    conc_manager *w = (conc_manager *)m;    /* serve_forever may be setting it */
    pthread_mutex_lock(&w->srv_mu);
    size_t n = strlen(m->addr);
    if (size) {
        size_t k = n < size - 1 ? n : size - 1;
        memcpy(buf, m->addr, k);
        buf[k] = 0;
    }
    pthread_mutex_unlock(&w->srv_mu);
    return (int)n;
}

pid_t conc_manager_pid(const conc_manager *m)
{
    return m && m->state == ST_STARTED ? m->server_pid : 0;
}

/* Sends the server a shutdown request (errors are ignored: it may be gone). */
static void ask_shutdown(conc_manager *m)
{
    conc_proxy p = { .m = m, .gen = __atomic_load_n(&fork_gen, __ATOMIC_RELAXED) };
    conc_lock_init(&p.mu, 0);
    if (dial(m, &p.c))
        return;
    rpc_simple(&p, CONC__MGR_SHUTDOWN, CONC_NO_DEADLINE, 0, NULL);
    conc_conn_free(p.c);
}

int conc_manager_shutdown(conc_manager *m)
{
    if (!m)
        return -EINVAL;
    pthread_mutex_lock(&m->srv_mu);
    int state = m->state;
    if (state == ST_SERVING && m->srv)
        conc__mgr_server_stop(m->srv);
    pthread_mutex_unlock(&m->srv_mu);
    switch (state) {
    case ST_NEW:
        return -ENOTCONN;
    case ST_SHUT:
    case ST_SERVING:
        return 0;
    case ST_CONNECTED:
        ask_shutdown(m);
        m->state = ST_SHUT;
        return 0;
    }
    if (getpid() != m->owner) {         /* a forked copy of the handle */
        ask_shutdown(m);
        return 0;
    }
    if (conc_process_is_alive(m->proc))
        ask_shutdown(m);
    if (conc_process_join(m->proc, STOP_GRACE)) {
        conc_process_kill(m->proc);
        conc_process_join(m->proc, CONC_FOREVER);
    }
    conc_process_free(m->proc);
    m->proc = NULL;
    remove_socket(m);
    m->state = ST_SHUT;
    return 0;
}

void conc_manager_free(conc_manager *m)
{
    if (!m)
        return;
    if (m->state == ST_STARTED && getpid() == m->owner)
        conc_manager_shutdown(m);
    for (size_t i = 0; i < m->ntypes; i++)
        free(m->types[i].name);
    free(m->types);
    if (m->authkey) {
        memset(m->authkey, 0, m->authkey_len);
        __asm__ volatile("" : : "r"(m->authkey) : "memory");
        free(m->authkey);
    }
    pthread_mutex_destroy(&m->srv_mu);
    free(m);
}

/* --------------------------------------------------------------- proxies */

static int proxy_new(conc_manager *m, conc_proxy **out)
{
    if (!m || !out)
        return -EINVAL;
    if (m->state != ST_STARTED && m->state != ST_CONNECTED && m->state != ST_SERVING)
        return -ENOTCONN;
    conc_proxy *p = calloc(1, sizeof *p);
    if (!p)
        return -ENOMEM;
    p->m = m;
    p->fd = -1;
    p->gen = __atomic_load_n(&fork_gen, __ATOMIC_RELAXED);
    conc_lock_init(&p->mu, 0);
    conc_conn *c;
    int e = dial(m, &c);
    if (e) {
        free(p);
        return e == -ENOENT || e == -ECONNREFUSED ? -ECONNRESET : e;
    }
    reg_add(p);
    proxy_set_conn(p, c);
    *out = p;
    return 0;
}

static bool name_arg(const char *name, struct conc__mgr_str *s)
{
    s->p = (const uint8_t *)(name ? name : "");
    s->len = name ? strnlen(name, CONC_MANAGER_NAME_MAX + 1) : 0;
    return !name || (s->len >= 1 && s->len <= CONC_MANAGER_NAME_MAX);
}

/* The typecode an answer to CREATE or OPEN carries (0: none), or -EPROTO
 * for one that is not a known typecode of a Value or Array. */
static int answer_tc(const struct ans *res, conc_proxy_type type)
{
    if (!res->a.nargs)
        return 0;
    struct conc__mgr_str t;
    size_t pos = 0;
    if (res->a.nargs != 1 || conc__mgr_next(res->a.args, res->a.args_len, &pos, &t) ||
        t.len != 1 || !conc__mgr_typecode_size(t.p[0]) ||
        (type != CONC_PROXY_VALUE && type != CONC_PROXY_ARRAY))
        return -EPROTO;
    return t.p[0];
}

/* Makes (or finds by name) an object; a typed one (tc) may carry its first
 * value (init, every byte of it), which the server sets as it makes it. */
static int create_obj(conc_manager *m, conc_proxy **out, conc_proxy_type type,
                      const char *name, uint64_t n, uint64_t size, char tc,
                      const uint8_t *init, size_t init_len)
{
    struct conc__mgr_str s[3] = { { 0 }, { (const uint8_t *)&tc, 1 }, { init, init_len } };
    if (!m || !out || type < CONC_PROXY_DICT || type >= CONC_PROXY_USER || !name_arg(name, &s[0]) ||
        n > INT64_MAX || size > INT64_MAX)
        return -EINVAL;
    conc_proxy *p;
    int e = proxy_new(m, &p);
    if (e)
        return e;
    struct conc__mgr_req r = { .op = CONC__MGR_CREATE, .timeout = -1, .a = type,
                               .b = (int64_t)n, .c = (int64_t)size };
    struct ans res;
    e = rpc(p, &r, s, init ? 3 : tc ? 2 : 1, &res);
    if (!e && res.a.value <= 0)
        e = -EPROTO;
    if (!e) {
        p->id = (uint64_t)res.a.value;
        int t = answer_tc(&res, type);
        if (t < 0 || t != tc)
            e = -EPROTO;
    }
    free(res.buf);
    if (e) {
        conc_proxy_free(p);
        return e > 0 ? -EPROTO : e;
    }
    p->type = type;
    p->tc = tc;
    *out = p;
    return 0;
}

int conc_manager_create(conc_manager *m, conc_proxy **out, conc_proxy_type type,
                        const char *name, uint64_t n, uint64_t size)
{
    return create_obj(m, out, type, name, n, size, 0, NULL, 0);
}

int conc_manager_value(conc_manager *m, conc_proxy **out, const char *name, char typecode)
{
    size_t isz = conc__mgr_typecode_size(typecode);
    if (!isz)
        return -EINVAL;
    return create_obj(m, out, CONC_PROXY_VALUE, name, isz, 0, typecode, NULL, 0);
}

int conc_manager_array(conc_manager *m, conc_proxy **out, const char *name, char typecode,
                       uint64_t n)
{
    size_t isz = conc__mgr_typecode_size(typecode);
    if (!isz)
        return -EINVAL;
    return create_obj(m, out, CONC_PROXY_ARRAY, name, n, isz, typecode, NULL, 0);
}

static int encode_int(char tc, int64_t v, uint8_t b[8]);
static int encode_float(char tc, double v, uint8_t b[8]);

/* A typed Value or Array made with its first value: n numbers (ints or
 * floats) encoded as the typecode's items, sent with the create request. */
static int create_typed(conc_manager *m, conc_proxy **out, conc_proxy_type type,
                        const char *name, char tc, const int64_t *ints, const double *floats,
                        uint64_t n)
{
    size_t isz = conc__mgr_typecode_size(tc);
    if (!isz || n == 0 || n > (uint64_t)1 << 20 || (!ints && !floats))
        return -EINVAL;
    uint8_t *init = malloc((size_t)n * isz);
    if (!init)
        return -ENOMEM;
    int e = 0;
    for (uint64_t i = 0; i < n && !e; i++) {
        uint8_t b[8];
        e = ints ? encode_int(tc, ints[i], b) : encode_float(tc, floats[i], b);
        memcpy(init + i * isz, b, isz);
    }
    if (!e)
        e = create_obj(m, out, type, name, type == CONC_PROXY_VALUE ? isz : n,
                       type == CONC_PROXY_VALUE ? 0 : isz, tc, init, (size_t)n * isz);
    free(init);
    return e;
}

int conc_manager_value_int(conc_manager *m, conc_proxy **out, const char *name, char typecode,
                           int64_t x)
{
    return create_typed(m, out, CONC_PROXY_VALUE, name, typecode, &x, NULL, 1);
}

int conc_manager_value_float(conc_manager *m, conc_proxy **out, const char *name,
                             char typecode, double x)
{
    return create_typed(m, out, CONC_PROXY_VALUE, name, typecode, NULL, &x, 1);
}

int conc_manager_array_int(conc_manager *m, conc_proxy **out, const char *name, char typecode,
                           const int64_t *xs, uint64_t n)
{
    return create_typed(m, out, CONC_PROXY_ARRAY, name, typecode, xs, NULL, n);
}

int conc_manager_array_float(conc_manager *m, conc_proxy **out, const char *name,
                             char typecode, const double *xs, uint64_t n)
{
    return create_typed(m, out, CONC_PROXY_ARRAY, name, typecode, NULL, xs, n);
}

int conc_manager_create_user(conc_manager *m, conc_proxy **out, const char *typeid,
                             const char *name, const void *arg, size_t len)
{
    struct conc__mgr_str s[3];
    if (!m || !out || !typeid || !name_arg(typeid, &s[0]) || !name_arg(name, &s[1]) ||
        (!arg && len))
        return -EINVAL;
    s[2].p = arg;
    s[2].len = len;
    conc_proxy *p;
    int e = proxy_new(m, &p);
    if (e)
        return e;
    struct conc__mgr_req r = { .op = CONC__MGR_CREATE_USER, .timeout = -1 };
    struct ans res;
    e = rpc(p, &r, s, 3, &res);
    if (!e && res.a.value <= 0)
        e = -EPROTO;
    if (!e)
        p->id = (uint64_t)res.a.value;
    free(res.buf);
    if (e) {
        conc_proxy_free(p);
        return e > 0 ? -EPROTO : e;
    }
    p->type = CONC_PROXY_USER;
    *out = p;
    return 0;
}

int conc_manager_open(conc_manager *m, conc_proxy **out, uint64_t id)
{
    if (!m || !out || id == 0)
        return -EINVAL;
    conc_proxy *p;
    int e = proxy_new(m, &p);
    if (e)
        return e;
    p->id = id;
    struct conc__mgr_req r = { .op = CONC__MGR_OPEN, .id = id, .timeout = -1 };
    struct ans res;
    e = rpc(p, &r, NULL, 0, &res);
    if (e >= 0 && (e < CONC_PROXY_DICT || e > CONC_PROXY_USER))
        e = -EPROTO;
    int tc = e >= 0 ? answer_tc(&res, (conc_proxy_type)e) : 0;
    free(res.buf);
    if (e >= 0 && tc < 0)
        e = tc;
    if (e < 0) {
        conc_proxy_free(p);
        return e;
    }
    p->type = (conc_proxy_type)e;
    p->tc = (char)tc;
    *out = p;
    return 0;
}

uint64_t conc_proxy_id(const conc_proxy *p)
{
    return p ? p->id : 0;
}

conc_proxy_type conc_proxy_kind(const conc_proxy *p)
{
    return p ? p->type : 0;
}

char conc_proxy_typecode(const conc_proxy *p)
{
    return p ? p->tc : 0;
}

int conc_proxy_dup(conc_proxy **out, conc_proxy *p)
{
    if (!p || !out)
        return -EINVAL;
    return conc_manager_open(p->m, out, p->id);
}

void conc_proxy_free(conc_proxy *p)
{
    if (!p)
        return;
    reg_remove(p);
    conc_conn_free(p->c);
    free(p);
}

/* ------------------------------------------------------------------ dict */

static int dict_key_op(conc_proxy *p, int op, const void *key, size_t key_len, void **val,
                       size_t *val_len)
{
    if (!check(p, CONC_PROXY_DICT) || (!key && key_len) || (val && !val_len))
        return -EINVAL;
    struct conc__mgr_str s = { key, key_len };
    struct conc__mgr_req r = { .op = (uint8_t)op, .id = p->id, .timeout = -1 };
    if (val)
        return rpc_val(p, &r, &s, 1, val, val_len);
    struct ans res;
    int e = rpc(p, &r, &s, 1, &res);
    free(res.buf);
    return e;
}

int conc_proxy_dict_set(conc_proxy *p, const void *key, size_t key_len, const void *val,
                        size_t val_len)
{
    if (!check(p, CONC_PROXY_DICT) || (!key && key_len) || (!val && val_len))
        return -EINVAL;
    struct conc__mgr_str s[2] = { { key, key_len }, { val, val_len } };
    struct conc__mgr_req r = { .op = CONC__MGR_D_SET, .id = p->id, .timeout = -1 };
    struct ans res;
    int e = rpc(p, &r, s, 2, &res);
    free(res.buf);
    return e;
}

int conc_proxy_dict_get(conc_proxy *p, const void *key, size_t key_len, void **val,
                        size_t *val_len)
{
    if (!val)
        return -EINVAL;
    return dict_key_op(p, CONC__MGR_D_GET, key, key_len, val, val_len);
}

int conc_proxy_dict_del(conc_proxy *p, const void *key, size_t key_len)
{
    return dict_key_op(p, CONC__MGR_D_DEL, key, key_len, NULL, NULL);
}

int conc_proxy_dict_pop(conc_proxy *p, const void *key, size_t key_len, void **val,
                        size_t *val_len)
{
    if (!val)
        return -EINVAL;
    return dict_key_op(p, CONC__MGR_D_POP, key, key_len, val, val_len);
}

ssize_t conc_proxy_dict_len(conc_proxy *p)
{
    if (!check(p, CONC_PROXY_DICT))
        return -EINVAL;
    int64_t v = 0;
    int e = rpc_simple(p, CONC__MGR_D_LEN, CONC_NO_DEADLINE, 0, &v);
    return e < 0 ? e : (ssize_t)v;
}

static int items_op(conc_proxy *p, int op, int64_t a, int64_t b, conc_proxy_items **out)
{
    struct conc__mgr_req r = { .op = (uint8_t)op, .id = p->id, .timeout = -1, .a = a, .b = b };
    struct ans res;
    int e = rpc(p, &r, NULL, 0, &res);
    if (e >= 0)
        e = take_items(&res, out);
    free(res.buf);
    return e;
}

int conc_proxy_dict_keys(conc_proxy *p, conc_proxy_items **out)
{
    if (!check(p, CONC_PROXY_DICT) || !out)
        return -EINVAL;
    return items_op(p, CONC__MGR_D_KEYS, 0, 0, out);
}

int conc_proxy_dict_items(conc_proxy *p, conc_proxy_items **out)
{
    if (!check(p, CONC_PROXY_DICT) || !out)
        return -EINVAL;
    return items_op(p, CONC__MGR_D_ITEMS, 0, 0, out);
}

/* A request whose strings are the caller's conc_proxy_bytes. */
static int bytes_op(conc_proxy *p, int op, const conc_proxy_bytes *v, size_t n)
{
    if (!v && n)
        return -EINVAL;
    if (n > UINT32_MAX / 2)
        return -EMSGSIZE;
    struct conc__mgr_str *s = malloc((n ? n : 1) * sizeof *s);
    if (!s)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        if (!v[i].data && v[i].len) {
            free(s);
            return -EINVAL;
        }
        s[i].p = v[i].data;
        s[i].len = v[i].len;
    }
    struct conc__mgr_req r = { .op = (uint8_t)op, .id = p->id, .timeout = -1 };
    struct ans res;
    int e = rpc(p, &r, s, n, &res);
    free(res.buf);
    free(s);
    return e;
}

int conc_proxy_dict_update(conc_proxy *p, const conc_proxy_bytes *kv, size_t n_pairs)
{
    if (!check(p, CONC_PROXY_DICT) || n_pairs > SIZE_MAX / 2)
        return -EINVAL;
    return bytes_op(p, CONC__MGR_D_UPDATE, kv, n_pairs * 2);
}

int conc_proxy_dict_setdefault(conc_proxy *p, const void *key, size_t key_len, const void *dflt,
                               size_t dflt_len, void **val, size_t *val_len)
{
    if (!check(p, CONC_PROXY_DICT) || (!key && key_len) || (!dflt && dflt_len) || !val ||
        !val_len)
        return -EINVAL;
    struct conc__mgr_str s[2] = { { key, key_len }, { dflt, dflt_len } };
    struct conc__mgr_req r = { .op = CONC__MGR_D_SETDEFAULT, .id = p->id, .timeout = -1 };
    return rpc_val(p, &r, s, 2, val, val_len);
}

/* ------------------------------------------------------------------ list */

int conc_proxy_list_append(conc_proxy *p, const void *val, size_t len)
{
    conc_proxy_bytes b = { val, len };
    if (!check(p, CONC_PROXY_LIST))
        return -EINVAL;
    return bytes_op(p, CONC__MGR_L_APPEND, &b, 1);
}

int conc_proxy_list_extend(conc_proxy *p, const conc_proxy_bytes *vals, size_t n)
{
    if (!check(p, CONC_PROXY_LIST))
        return -EINVAL;
    return bytes_op(p, CONC__MGR_L_EXTEND, vals, n);
}

static int list_index_op(conc_proxy *p, int op, int64_t index, const void *in, size_t in_len,
                         void **val, size_t *len)
{
    if (!check(p, CONC_PROXY_LIST) || (!in && in_len) || (val && !len))
        return -EINVAL;
    struct conc__mgr_str s = { in, in_len };
    size_t n = op == CONC__MGR_L_SET || op == CONC__MGR_L_INSERT;
    struct conc__mgr_req r = { .op = (uint8_t)op, .id = p->id, .timeout = -1, .a = index };
    if (val)
        return rpc_val(p, &r, &s, n, val, len);
    struct ans res;
    int e = rpc(p, &r, &s, n, &res);
    free(res.buf);
    return e;
}

int conc_proxy_list_get(conc_proxy *p, int64_t index, void **val, size_t *len)
{
    if (!val)
        return -EINVAL;
    return list_index_op(p, CONC__MGR_L_GET, index, NULL, 0, val, len);
}

int conc_proxy_list_set(conc_proxy *p, int64_t index, const void *val, size_t len)
{
    return list_index_op(p, CONC__MGR_L_SET, index, val, len, NULL, NULL);
}

int conc_proxy_list_pop(conc_proxy *p, int64_t index, void **val, size_t *len)
{
    if (!val)
        return -EINVAL;
    return list_index_op(p, CONC__MGR_L_POP, index, NULL, 0, val, len);
}

int conc_proxy_list_insert(conc_proxy *p, int64_t index, const void *val, size_t len)
{
    return list_index_op(p, CONC__MGR_L_INSERT, index, val, len, NULL, NULL);
}

ssize_t conc_proxy_list_len(conc_proxy *p)
{
    if (!check(p, CONC_PROXY_LIST))
        return -EINVAL;
    int64_t v = 0;
    int e = rpc_simple(p, CONC__MGR_L_LEN, CONC_NO_DEADLINE, 0, &v);
    return e < 0 ? e : (ssize_t)v;
}

int conc_proxy_list_slice(conc_proxy *p, int64_t start, int64_t stop, conc_proxy_items **out)
{
    if (!check(p, CONC_PROXY_LIST) || !out)
        return -EINVAL;
    return items_op(p, CONC__MGR_L_SLICE, start, stop, out);
}

/* ------------------------------------------------------------- namespace */

static int ns_name(const char *name, struct conc__mgr_str *s)
{
    return name && name_arg(name, s) ? 0 : -EINVAL;
}

int conc_proxy_ns_set(conc_proxy *p, const char *name, const void *val, size_t len)
{
    struct conc__mgr_str s[2];
    if (!check(p, CONC_PROXY_NAMESPACE) || ns_name(name, &s[0]) || (!val && len))
        return -EINVAL;
    s[1].p = val;
    s[1].len = len;
    struct conc__mgr_req r = { .op = CONC__MGR_D_SET, .id = p->id, .timeout = -1 };
    struct ans res;
    int e = rpc(p, &r, s, 2, &res);
    free(res.buf);
    return e;
}

int conc_proxy_ns_get(conc_proxy *p, const char *name, void **val, size_t *len)
{
    struct conc__mgr_str s;
    if (!check(p, CONC_PROXY_NAMESPACE) || ns_name(name, &s) || !val || !len)
        return -EINVAL;
    struct conc__mgr_req r = { .op = CONC__MGR_D_GET, .id = p->id, .timeout = -1 };
    return rpc_val(p, &r, &s, 1, val, len);
}

int conc_proxy_ns_del(conc_proxy *p, const char *name)
{
    struct conc__mgr_str s;
    if (!check(p, CONC_PROXY_NAMESPACE) || ns_name(name, &s))
        return -EINVAL;
    struct conc__mgr_req r = { .op = CONC__MGR_D_DEL, .id = p->id, .timeout = -1 };
    struct ans res;
    int e = rpc(p, &r, &s, 1, &res);
    free(res.buf);
    return e;
}

/* --------------------------------------------------------- Value, Array */

static ssize_t bytes_get(conc_proxy *p, int op, int64_t index, void *buf, size_t cap)
{
    if (!buf && cap)
        return -EINVAL;
    void *v;
    size_t len;
    struct conc__mgr_req r = { .op = (uint8_t)op, .id = p->id, .timeout = -1, .a = index };
    int e = rpc_val(p, &r, NULL, 0, &v, &len);
    if (e < 0)
        return e;
    if (len > cap) {
        free(v);
        return -EMSGSIZE;
    }
    if (len)
        memcpy(buf, v, len);
    free(v);
    return (ssize_t)len;
}

static int bytes_set(conc_proxy *p, int op, int64_t index, const void *data, size_t len)
{
    if (!data && len)
        return -EINVAL;
    struct conc__mgr_str s = { data, len };
    struct conc__mgr_req r = { .op = (uint8_t)op, .id = p->id, .timeout = -1, .a = index };
    struct ans res;
    int e = rpc(p, &r, &s, 1, &res);
    free(res.buf);
    return e;
}

ssize_t conc_proxy_value_get(conc_proxy *p, void *buf, size_t cap)
{
    if (!check(p, CONC_PROXY_VALUE))
        return -EINVAL;
    return bytes_get(p, CONC__MGR_V_GET, 0, buf, cap);
}

int conc_proxy_value_set(conc_proxy *p, const void *data, size_t len)
{
    if (!check(p, CONC_PROXY_VALUE))
        return -EINVAL;
    return bytes_set(p, CONC__MGR_V_SET, 0, data, len);
}

ssize_t conc_proxy_array_len(conc_proxy *p)
{
    if (!check(p, CONC_PROXY_ARRAY))
        return -EINVAL;
    int64_t v = 0;
    int e = rpc_simple(p, CONC__MGR_A_LEN, CONC_NO_DEADLINE, 0, &v);
    return e < 0 ? e : (ssize_t)v;
}

ssize_t conc_proxy_array_get(conc_proxy *p, int64_t index, void *buf, size_t cap)
{
    if (!check(p, CONC_PROXY_ARRAY))
        return -EINVAL;
    return bytes_get(p, CONC__MGR_A_GET, index, buf, cap);
}

int conc_proxy_array_set(conc_proxy *p, int64_t index, const void *data, size_t len)
{
    if (!check(p, CONC_PROXY_ARRAY))
        return -EINVAL;
    return bytes_set(p, CONC__MGR_A_SET, index, data, len);
}

/* ------------------------------------------------ typed Value and Array */

static bool tc_float(char tc)
{
    return tc == 'f' || tc == 'd';
}

static bool tc_signed(char tc)
{
    return tc == 'b' || tc == 'h' || tc == 'i' || tc == 'l' || tc == 'q';
}

/* Item bytes (little-endian, isz of them) as a number. */
static uint64_t le_get(const uint8_t *b, size_t isz)
{
    uint64_t v = 0;
    for (size_t i = isz; i-- > 0;)
        v = v << 8 | b[i];
    return v;
}

static void le_put(uint8_t *b, size_t isz, uint64_t v)
{
    for (size_t i = 0; i < isz; i++, v >>= 8)
        b[i] = (uint8_t)v;
}

/* The typed item of a Value (op V_GET) or an Array (A_GET at index). */
static int typed_get(conc_proxy *p, conc_proxy_type t, int64_t index, uint8_t b[8])
{
    if (!check(p, t) || !p->tc)
        return -EINVAL;
    size_t isz = conc__mgr_typecode_size(p->tc);
    ssize_t n = bytes_get(p, t == CONC_PROXY_VALUE ? CONC__MGR_V_GET : CONC__MGR_A_GET, index, b,
                          8);
    if (n < 0)
        return (int)n;
    return (size_t)n == isz ? 0 : -EPROTO;
}

static int typed_set(conc_proxy *p, conc_proxy_type t, int64_t index, const uint8_t b[8])
{
    return bytes_set(p, t == CONC_PROXY_VALUE ? CONC__MGR_V_SET : CONC__MGR_A_SET, index, b,
                     conc__mgr_typecode_size(p->tc));
}

/* A float ('f') or double ('d') item as its IEEE 754 bits, little-endian. */
static void float_put(uint8_t b[8], char tc, double v)
{
    if (tc == 'f') {
        float f = (float)v;
        uint32_t u;
        memcpy(&u, &f, sizeof u);
        le_put(b, 4, u);
    } else {
        uint64_t u;
        memcpy(&u, &v, sizeof u);
        le_put(b, 8, u);
    }
}

static double float_get(const uint8_t b[8], char tc)
{
    if (tc == 'f') {
        uint32_t u = (uint32_t)le_get(b, 4);
        float f;
        memcpy(&f, &u, sizeof f);
        return f;
    }
    uint64_t u = le_get(b, 8);
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

static int get_int(conc_proxy *p, conc_proxy_type t, int64_t index, int64_t *out)
{
    uint8_t b[8];
    if (!out)
        return -EINVAL;
    if (p && tc_float(p->tc))
        return -EINVAL;
    int e = typed_get(p, t, index, b);
    if (e)
        return e;
    size_t isz = conc__mgr_typecode_size(p->tc);
    uint64_t v = le_get(b, isz);
    if (tc_signed(p->tc) && isz < 8 && (v >> (8 * isz - 1)) & 1)
        v |= ~(uint64_t)0 << (8 * isz);             /* sign-extend */
    else if (!tc_signed(p->tc) && v > INT64_MAX)
        return -EOVERFLOW;
    *out = (int64_t)v;
    return 0;
}

/* An integer as an item of typecode tc: 0, or -ERANGE when tc cannot
 * hold it (a float typecode takes it converted, as Python does). */
static int encode_int(char tc, int64_t v, uint8_t b[8])
{
    if (tc_float(tc)) {
        float_put(b, tc, (double)v);
        return 0;
    }
    size_t isz = conc__mgr_typecode_size(tc);
    unsigned bits = (unsigned)(8 * isz);
    if (tc_signed(tc)) {
        if (bits < 64 && (v < -((int64_t)1 << (bits - 1)) || v >= (int64_t)1 << (bits - 1)))
            return -ERANGE;
    } else if (v < 0 || (bits < 64 && (uint64_t)v >> bits)) {
        return -ERANGE;
    }
    le_put(b, isz, (uint64_t)v);
    return 0;
}

/* A float as an item of 'f' or 'd': 0, or -EINVAL for another typecode. */
static int encode_float(char tc, double v, uint8_t b[8])
{
    if (!tc_float(tc))
        return -EINVAL;
    float_put(b, tc, v);
    return 0;
}

static int set_int(conc_proxy *p, conc_proxy_type t, int64_t index, int64_t v)
{
    if (!check(p, t) || !p->tc)
        return -EINVAL;
    uint8_t b[8];
    int e = encode_int(p->tc, v, b);
    return e ? e : typed_set(p, t, index, b);
}

static int get_float(conc_proxy *p, conc_proxy_type t, int64_t index, double *out)
{
    uint8_t b[8];
    if (!out || (p && p->tc && !tc_float(p->tc)))
        return -EINVAL;
    int e = typed_get(p, t, index, b);
    if (e)
        return e;
    *out = float_get(b, p->tc);
    return 0;
}

static int set_float(conc_proxy *p, conc_proxy_type t, int64_t index, double v)
{
    uint8_t b[8];
    if (!check(p, t) || encode_float(p->tc, v, b))
        return -EINVAL;
    return typed_set(p, t, index, b);
}

int conc_proxy_value_get_int(conc_proxy *p, int64_t *out)
{
    return get_int(p, CONC_PROXY_VALUE, 0, out);
}

int conc_proxy_value_set_int(conc_proxy *p, int64_t v)
{
    return set_int(p, CONC_PROXY_VALUE, 0, v);
}

int conc_proxy_value_get_float(conc_proxy *p, double *out)
{
    return get_float(p, CONC_PROXY_VALUE, 0, out);
}

int conc_proxy_value_set_float(conc_proxy *p, double v)
{
    return set_float(p, CONC_PROXY_VALUE, 0, v);
}

int conc_proxy_array_get_int(conc_proxy *p, int64_t index, int64_t *out)
{
    return get_int(p, CONC_PROXY_ARRAY, index, out);
}

int conc_proxy_array_set_int(conc_proxy *p, int64_t index, int64_t v)
{
    return set_int(p, CONC_PROXY_ARRAY, index, v);
}

int conc_proxy_array_get_float(conc_proxy *p, int64_t index, double *out)
{
    return get_float(p, CONC_PROXY_ARRAY, index, out);
}

int conc_proxy_array_set_float(conc_proxy *p, int64_t index, double v)
{
    return set_float(p, CONC_PROXY_ARRAY, index, v);
}

/* ----------------------------------------------------------------- Queue */

static bool is_queue(const conc_proxy *p)
{
    return p && (p->type == CONC_PROXY_QUEUE || p->type == CONC_PROXY_JOINABLE_QUEUE);
}

int conc_proxy_queue_put_until(conc_proxy *p, const void *data, size_t len, int64_t deadline)
{
    if (!is_queue(p) || (!data && len))
        return -EINVAL;
    struct conc__mgr_str s = { data, len };
    struct conc__mgr_req r = { .op = CONC__MGR_Q_PUT, .id = p->id,
                               .timeout = time_left(deadline) };
    struct ans res;
    int e = rpc(p, &r, &s, 1, &res);
    free(res.buf);
    return e;
}

int conc_proxy_queue_put(conc_proxy *p, const void *data, size_t len, double timeout)
{
    int64_t d;
    bool poll;
    if (conc__timeout_parse(timeout, &d, &poll))
        return -EINVAL;
    return conc__timeout_code(poll, conc_proxy_queue_put_until(p, data, len, d));
}

int conc_proxy_queue_get_until(conc_proxy *p, void **out, size_t *len, int64_t deadline)
{
    if (!is_queue(p) || !out || !len)
        return -EINVAL;
    struct conc__mgr_req r = { .op = CONC__MGR_Q_GET, .id = p->id,
                               .timeout = time_left(deadline) };
    return rpc_val(p, &r, NULL, 0, out, len);
}

int conc_proxy_queue_get(conc_proxy *p, void **out, size_t *len, double timeout)
{
    int64_t d;
    bool poll;
    if (conc__timeout_parse(timeout, &d, &poll))
        return -EINVAL;
    return conc__timeout_code(poll, conc_proxy_queue_get_until(p, out, len, d));
}

ssize_t conc_proxy_queue_qsize(conc_proxy *p)
{
    if (!is_queue(p))
        return -EINVAL;
    int64_t v = 0;
    int e = rpc_simple(p, CONC__MGR_Q_SIZE, CONC_NO_DEADLINE, 0, &v);
    return e < 0 ? e : (ssize_t)v;
}

/* The queue's maxsize (the status) and qsize (*len) at one moment. */
static int queue_info(conc_proxy *p, int64_t *len)
{
    if (!is_queue(p))
        return -EINVAL;
    *len = 0;
    return rpc_simple(p, CONC__MGR_Q_INFO, CONC_NO_DEADLINE, 0, len);
}

int conc_proxy_queue_full(conc_proxy *p)
{
    int64_t len;
    int max = queue_info(p, &len);
    if (max < 0)
        return max;
    return max > 0 && len >= max;
}

int conc_proxy_queue_empty(conc_proxy *p)
{
    int64_t len;
    int max = queue_info(p, &len);
    return max < 0 ? max : len == 0;
}

ssize_t conc_proxy_queue_maxsize(conc_proxy *p)
{
    int64_t len;
    return queue_info(p, &len);
}

int conc_proxy_queue_task_done(conc_proxy *p)
{
    if (!is_queue(p))
        return -EINVAL;
    return rpc_simple(p, CONC__MGR_Q_TASK_DONE, CONC_NO_DEADLINE, 0, NULL);
}

int conc_proxy_queue_join_until(conc_proxy *p, int64_t deadline)
{
    if (!is_queue(p))
        return -EINVAL;
    return rpc_simple(p, CONC__MGR_Q_JOIN, deadline, 0, NULL);
}

int conc_proxy_queue_join(conc_proxy *p, double timeout)
{
    int64_t d;
    bool poll;
    if (conc__timeout_parse(timeout, &d, &poll))
        return -EINVAL;
    return conc__timeout_code(poll, conc_proxy_queue_join_until(p, d));
}

/* ----------------------------------------------------- acquire, release */

static bool is_acquirer(const conc_proxy *p)
{
    return p && (p->type == CONC_PROXY_LOCK || p->type == CONC_PROXY_RLOCK ||
                 p->type == CONC_PROXY_SEMAPHORE || p->type == CONC_PROXY_BOUNDED_SEMAPHORE ||
                 p->type == CONC_PROXY_CONDITION);
}

int conc_proxy_acquire_until(conc_proxy *p, int64_t deadline)
{
    if (!is_acquirer(p))
        return -EINVAL;
    return rpc_simple(p, CONC__MGR_ACQUIRE, deadline, 0, NULL);
}

int conc_proxy_acquire(conc_proxy *p, double timeout)
{
    int64_t d;
    bool poll;
    if (conc__timeout_parse(timeout, &d, &poll))
        return -EINVAL;
    return conc__timeout_code(poll, conc_proxy_acquire_until(p, d));
}

int conc_proxy_release(conc_proxy *p)
{
    if (!is_acquirer(p))
        return -EINVAL;
    return rpc_simple(p, CONC__MGR_RELEASE, CONC_NO_DEADLINE, 0, NULL);
}

/* ----------------------------------------------------------------- Event */

int conc_proxy_event_set(conc_proxy *p)
{
    return check(p, CONC_PROXY_EVENT) ? rpc_simple(p, CONC__MGR_E_SET, CONC_NO_DEADLINE, 0, NULL)
                                      : -EINVAL;
}

int conc_proxy_event_clear(conc_proxy *p)
{
    return check(p, CONC_PROXY_EVENT)
               ? rpc_simple(p, CONC__MGR_E_CLEAR, CONC_NO_DEADLINE, 0, NULL)
               : -EINVAL;
}

int conc_proxy_event_is_set(conc_proxy *p)
{
    if (!check(p, CONC_PROXY_EVENT))
        return -EINVAL;
    int64_t v = 0;
    int e = rpc_simple(p, CONC__MGR_E_IS_SET, CONC_NO_DEADLINE, 0, &v);
    return e < 0 ? e : v != 0;
}

int conc_proxy_event_wait_until(conc_proxy *p, int64_t deadline)
{
    if (!check(p, CONC_PROXY_EVENT))
        return -EINVAL;
    return rpc_simple(p, CONC__MGR_E_WAIT, deadline, 0, NULL);
}

int conc_proxy_event_wait(conc_proxy *p, double timeout)
{
    int64_t d;
    bool poll;
    if (conc__timeout_parse(timeout, &d, &poll))
        return -EINVAL;
    return conc__timeout_code(poll, conc_proxy_event_wait_until(p, d));
}

/* ------------------------------------------------------------- Condition */

int conc_proxy_cond_wait_until(conc_proxy *p, int64_t deadline)
{
    if (!check(p, CONC_PROXY_CONDITION))
        return -EINVAL;
    return rpc_simple(p, CONC__MGR_C_WAIT, deadline, 0, NULL);
}

int conc_proxy_cond_wait(conc_proxy *p, double timeout)
{
    int64_t d;
    bool poll;
    if (conc__timeout_parse(timeout, &d, &poll))
        return -EINVAL;
    return conc_proxy_cond_wait_until(p, d);       /* Python: False, also for 0 */
}

int conc_proxy_cond_notify(conc_proxy *p, unsigned n)
{
    if (!check(p, CONC_PROXY_CONDITION))
        return -EINVAL;
    return rpc_simple(p, CONC__MGR_C_NOTIFY, CONC_NO_DEADLINE, n, NULL);
}

int conc_proxy_cond_notify_all(conc_proxy *p)
{
    if (!check(p, CONC_PROXY_CONDITION))
        return -EINVAL;
    return rpc_simple(p, CONC__MGR_C_NOTIFY, CONC_NO_DEADLINE, -1, NULL);
}

/* --------------------------------------------------------------- Barrier */

int conc_proxy_barrier_wait_until(conc_proxy *p, int64_t deadline)
{
    if (!check(p, CONC_PROXY_BARRIER))
        return -EINVAL;
    return rpc_simple(p, CONC__MGR_B_WAIT, deadline, 0, NULL);
}

int conc_proxy_barrier_wait(conc_proxy *p, double timeout)
{
    int64_t d;
    bool poll;
    if (conc__timeout_parse(timeout, &d, &poll))
        return -EINVAL;
    return conc_proxy_barrier_wait_until(p, d);
}

int conc_proxy_barrier_abort(conc_proxy *p)
{
    return check(p, CONC_PROXY_BARRIER)
               ? rpc_simple(p, CONC__MGR_B_ABORT, CONC_NO_DEADLINE, 0, NULL)
               : -EINVAL;
}

int conc_proxy_barrier_reset(conc_proxy *p)
{
    return check(p, CONC_PROXY_BARRIER)
               ? rpc_simple(p, CONC__MGR_B_RESET, CONC_NO_DEADLINE, 0, NULL)
               : -EINVAL;
}

/* Which: 0 parties, 1 n_waiting, 2 broken. */
static int barrier_info(conc_proxy *p, int which)
{
    if (!check(p, CONC_PROXY_BARRIER))
        return -EINVAL;
    int64_t v = 0;
    int e = rpc_simple(p, CONC__MGR_B_INFO, CONC_NO_DEADLINE, 0, &v);
    if (e < 0 || which == 0)
        return e;
    return which == 1 ? (int)(v & 0x7fffffff) : (int)((v >> 32) & 1);
}

int conc_proxy_barrier_parties(conc_proxy *p)
{
    return barrier_info(p, 0);
}

int conc_proxy_barrier_n_waiting(conc_proxy *p)
{
    return barrier_info(p, 1);
}

int conc_proxy_barrier_broken(conc_proxy *p)
{
    return barrier_info(p, 2);
}

/* ------------------------------------------------------ registered types */

int conc_proxy_call(conc_proxy *p, const char *method, const void *arg, size_t len, void **out,
                    size_t *out_len)
{
    struct conc__mgr_str s[2];
    if (!check(p, CONC_PROXY_USER) || !method || !name_arg(method, &s[0]) || (!arg && len))
        return -EINVAL;
    s[1].p = arg;
    s[1].len = len;
    struct conc__mgr_req r = { .op = CONC__MGR_CALL, .id = p->id, .timeout = -1 };
    struct ans res;
    int e = rpc(p, &r, s, 2, &res);
    if (e >= 0 && out) {
        *out = NULL;
        if (out_len)
            *out_len = 0;
        if (res.a.nargs) {
            size_t l;
            int t = take(&res, 0, out, &l);
            if (t)
                e = t;
            else if (out_len)
                *out_len = l;
        }
    }
    free(res.buf);
    return e;
}
