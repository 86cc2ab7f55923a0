/*
 * cli.h - small command-line helpers shared by the example programs: strict
 * option parsing (parse_options) and number parsing for their flags, their
 * one-line error messages (exit status 2 for bad input, 1 for a failed
 * call), and starting and joining worker processes.  Each example defines
 * `static const char *prog = "name";` after including this file.
 */
#ifndef CONC_EXAMPLES_CLI_H
#define CONC_EXAMPLES_CLI_H

#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <unistd.h>
#include "conc.h"

static const char *prog;        /* defined by each example */

/* Parses a whole decimal integer in [min, max]: digits, with a '-' before
 * them for a negative one (no space, no '+', no other base). */
static inline bool parse_long(const char *s, long min, long max, long *out)
{
    const char *d = s[0] == '-' ? s + 1 : s;
    if (*d < '0' || *d > '9')
        return false;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end != '\0' || v < min || v > max)
        return false;
    *out = v;
    return true;
}

/* Bad input: "prog: <message>" on stderr; returns the exit status 2. */
static inline int fail(const char *fmt, const char *arg)
{
    fprintf(stderr, "%s: ", prog);
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    return 2;
}

/* A conc call failed: "prog: what: reason" on stderr; returns 1. */
static inline int die(const char *what, int err)
{
    fprintf(stderr, "%s: %s: %s\n", prog, what, conc_strerror(err));
    return 1;
}

/* A conc call that must not fail in a walk-through: report it and exit 1. */
static inline void check(int rc, const char *what)
{
    if (rc < 0)
        exit(die(what, rc));
}

/* The walk-through examples number and explain their steps. */
static int step_no;

static inline void step(const char *title, const char *explanation)
{
    if (step_no++)
        putchar('\n');
    printf("== %d. %s: %s\n", step_no, title, explanation);
}

static inline const char *yes_no(bool b)
{
    return b ? "yes" : "no";
}

/*
 * The option parser every example uses.  An example describes its options
 * in a table and calls parse_options, which accepts
 *
 *   --name VALUE   --name=VALUE   (options with a value)
 *   --name                        (flags; "--name=VALUE" is refused)
 *   --help, -h                    (prints the usage on stdout, exit 0)
 *   --                            (ends the options)
 *   ARG                           (positional, through parse_args: a PORT...)
 *
 * and refuses anything else with one line on stderr that names the option
 * as it was written (exit 2): an unknown option, a flag given a value, a
 * missing value, a value outside the option's real limits (the message
 * says what they are), or a stray argument.  Names are matched whole (no
 * abbreviations).  The last of several copies of an option wins.
 */
enum opt_kind {
    OPT_FLAG,           /* bool: set to true */
    OPT_INT,            /* long in [min, max] */
    OPT_SECONDS,        /* double seconds: min 0 allows 0, else > 0; at most max */
    OPT_TEXT,           /* const char *: any text (the example checks it) */
};

struct opt {
    const char *name;   /* without the dashes */
    enum opt_kind kind;
    void *value;        /* bool *, long *, double *, const char ** */
    long min, max;      /* OPT_INT, OPT_SECONDS (see above) */
    bool *given;        /* optional: set when the option is given */
};

/* Parses one value of o; returns 0, or 2 after saying what it wants. */
static inline int parse_value(const struct opt *o, const char *v)
{
    switch (o->kind) {
    case OPT_INT:
        if (!parse_long(v, o->min, o->max, o->value)) {
            fprintf(stderr, "%s: --%s wants a whole number from %ld to %ld, not '%s'\n", prog,
                    o->name, o->min, o->max, v);
            return 2;
        }
        break;
    case OPT_SECONDS: {
        double d;
        char *end;
        errno = 0;
        d = strtod(v, &end);
        bool ok = !errno && end != v && *end == '\0' && isfinite(d) && d <= (double)o->max &&
                  (o->min == 0 ? d >= 0 : d > 0);
        if (!ok) {
            if (o->min == 0)
                fprintf(stderr, "%s: --%s wants seconds from 0 to %ld, not '%s'\n", prog,
                        o->name, o->max, v);
            else
                fprintf(stderr, "%s: --%s wants seconds > 0 (at most %ld), not '%s'\n", prog,
                        o->name, o->max, v);
            return 2;
        }
        *(double *)o->value = d;
        break;
    }
    case OPT_TEXT:
        *(const char **)o->value = v;
        break;
    case OPT_FLAG:
        *(bool *)o->value = true;
        break;
    }
    if (o->given)
        *o->given = true;
    return 0;
}

/* The positional arguments a program takes (parse_args): up to max of
 * them go to args[0..], their number to *n; fewer than min is refused with
 * "missing NAME" (names[count] is the first one missing). */
struct positionals {
    const char **args;
    size_t min, max;
    const char *const *names;
    size_t *n;
};

/* Parses argv against the table opts (n entries) and, when pos is not
 * NULL, takes the positional arguments it describes (an argument that does
 * not start with '-', "-" alone, a negative number such as "-1", or
 * anything after "--").  Returns -1 when the program should go on, 0 after
 * printing the usage for --help, or 2 after one line on stderr for a bad
 * command line. */
static inline int parse_args(int argc, char **argv, const struct opt *opts, size_t n,
                             void (*usage)(FILE *), const struct positionals *pos)
{
    size_t npos = 0;
    bool rest = false;              /* after "--": positionals only */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!rest && strcmp(a, "--") == 0) {
            rest = true;
            continue;
        }
        bool positional = rest || a[0] != '-' || a[1] == '\0' ||
                          (a[1] >= '0' && a[1] <= '9');
        if (positional) {
            if (!pos || npos >= pos->max)
                return fail("unexpected argument '%s' (try --help)", a);
            pos->args[npos++] = a;
            continue;
        }
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (strncmp(a, "--help=", 7) == 0)
            return fail("option '--help' takes no value (not '%s')", a);
        if (a[1] != '-')
            return fail("unknown option '%s' (try --help)", a);
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        const struct opt *o = NULL;
        for (size_t k = 0; k < n && !o; k++)
            if (strlen(opts[k].name) == len && strncmp(opts[k].name, name, len) == 0)
                o = &opts[k];
        if (!o) {
            fprintf(stderr, "%s: unknown option '--%.*s' (try --help)\n", prog, (int)len, name);
            return 2;
        }
        if (o->kind == OPT_FLAG) {
            if (eq) {
                fprintf(stderr, "%s: option '--%s' takes no value (not '%s')\n", prog, o->name,
                        a);
                return 2;
            }
            parse_value(o, NULL);
            continue;
        }
        const char *v = eq ? eq + 1 : NULL;
        if (!v) {
            if (i + 1 >= argc) {
                fprintf(stderr, "%s: option '--%s' needs a value\n", prog, o->name);
                return 2;
            }
            v = argv[++i];
        }
        int rc = parse_value(o, v);
        if (rc)
            return rc;
    }
    if (pos) {
        if (npos < pos->min)
            return fail("missing %s (try --help)", pos->names[npos]);
        *pos->n = npos;
    }
    return -1;
}

/* parse_args for a program without positional arguments. */
static inline int parse_options(int argc, char **argv, const struct opt *opts, size_t n,
                                void (*usage)(FILE *))
{
    return parse_args(argc, argv, opts, n, usage, NULL);
}

#define OPTS_COUNT(table) (sizeof(table) / sizeof((table)[0]))

/* The address a server of the given socket type listens on: the first one
 * host resolves to for port (AI_PASSIVE), with its family, and its text
 * ("127.0.0.1:8080") in where.  Returns 0, or says what failed and
 * returns 1. */
static inline int server_address(const char *host, long port, int type, conc_addrinfo *out,
                                 char *where, size_t wsize)
{
    char service[16];
    snprintf(service, sizeof service, "%ld", port);
    conc_addrinfo *ai;
    int n = conc_socket_getaddrinfo(host, service, AF_UNSPEC, type, 0,
                                    AI_PASSIVE | AI_NUMERICSERV, &ai);
    if (n < 0) {
        fprintf(stderr, "%s: --host '%s': %s\n", prog, host, conc_strerror(n));
        return 1;
    }
    *out = ai[0];
    out->canonname = "";                /* it pointed into the array */
    free(ai);
    if (conc_sockaddr_str(&out->addr, where, wsize) < 0)
        snprintf(where, wsize, "%s:%ld", host, port);
    return 0;
}

/* The stop signals, SIGINT and SIGTERM, as a set. */
static inline void stop_signal_set(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGTERM);
}

/*
 * SIGINT and SIGTERM as a descriptor, for the servers: stop_signals_fd
 * blocks both (they no longer end the process) and returns a non-blocking
 * signalfd that becomes readable when one arrives, so that a server waits
 * for it in the same wait as its sockets and ends cleanly, and the waits
 * themselves never see a signal.  Returns the descriptor, or -errno.
 * stop_signal_take reads one pending signal from it: its number, or 0 when
 * none is pending.
 */
static inline int stop_signals_fd(void)
{
    sigset_t set;
    stop_signal_set(&set);
    if (sigprocmask(SIG_BLOCK, &set, NULL) < 0)
        return -errno;
    int fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

static inline int stop_signal_take(int fd)
{
    struct signalfd_siginfo si;
    ssize_t n = read(fd, &si, sizeof si);
    return n == (ssize_t)sizeof si ? (int)si.ssi_signo : 0;
}

/* The name of a signal: "SIGTERM". */
static inline const char *signal_name(int sig, char *buf, size_t n)
{
    const char *abbrev = sigabbrev_np(sig);
    if (abbrev)
        snprintf(buf, n, "SIG%s", abbrev);
    else
        snprintf(buf, n, "signal %d", sig);
    return buf;
}

/* A stream conc_server (conc_server_new with handler h and options so) on
 * the first address host resolves to for port; where gets that address as
 * text.  Returns 0, or says what failed and returns 1. */
static inline int open_server(conc_server **out, const char *host, long port,
                              const conc_server_handler *h, const conc_server_opts *so,
                              char *where, size_t wsize)
{
    conc_addrinfo ai;
    if (server_address(host, port, SOCK_STREAM, &ai, where, wsize))
        return 1;
    int rc = conc_server_new(out, SOCK_STREAM, &ai.addr, h, so);
    if (rc < 0) {
        fprintf(stderr, "%s: listen on %s: %s\n", prog, where, conc_strerror(rc));
        return 1;
    }
    return 0;
}

/* A server's command line: its PORT argument (0 to 65535) into *port, and
 * a --host that must not be empty.  Returns 0, or says what is wrong and
 * returns the exit status 2. */
static inline int server_port_host(const char *port_arg, const char *host, long *port)
{
    if (!parse_long(port_arg, 0, 65535, port))
        return fail("PORT wants a whole number from 0 to 65535, not '%s'", port_arg);
    if (!*host)
        return fail("--host wants an address or a name, not '%s'", host);
    return 0;
}

/* A client's command line: HOST (not empty) and PORT (1 to 65535).
 * Returns 0, or says what is wrong and returns the exit status 2. */
static inline int client_host_port(const char *host, const char *port_arg, long *port)
{
    if (!*host)
        return fail("HOST wants a name or an address, not '%s'", host);
    if (!parse_long(port_arg, 1, 65535, port))
        return fail("PORT wants a whole number from 1 to 65535, not '%s'", port_arg);
    return 0;
}

/* A client lost its connection or the server broke the protocol: one line
 * on stderr ("prog: what: reason", or "prog: what" when err is 0), exit 1. */
static inline __attribute__((noreturn)) void lost_exit(const char *what, int err)
{
    if (err)
        fprintf(stderr, "%s: %s: %s\n", prog, what, conc_strerror(err));
    else
        fprintf(stderr, "%s: %s\n", prog, what);
    exit(1);
}

/* Raises the soft descriptor limit to the hard one (a server with many
 * clients needs one descriptor each). */
static inline void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* The thread that takes the stop signals (catch_stop_signals): it waits
 * for them with sigwaitinfo (blocked, as in every thread) and calls the
 * server's on_stop as a plain function, until end_stop_signals. */
static struct {
    pthread_t thread;
    bool started;
    atomic_int ending;
    void (*on_stop)(int);
} stop_signals;

static inline void *stop_signal_main(void *arg)
{
    (void)arg;
    sigset_t set;
    stop_signal_set(&set);
    for (;;) {
        int sig = sigwaitinfo(&set, NULL);
        if (atomic_load(&stop_signals.ending))
            return NULL;
        if (sig > 0)
            stop_signals.on_stop(sig);
    }
}

/* For a server that stops on a signal: on_stop runs on SIGINT and SIGTERM,
 * and SIGPIPE is ignored (a client gone mid-reply is an error return, not
 * the end of the server).  The calling thread blocks the two signals, and
 * so does every thread it starts later (the server's handler threads, hubs
 * and loops inherit its mask); a thread of their own takes them with
 * sigwaitinfo and calls on_stop, outside any signal context.  So on_stop
 * never interrupts a request's code, a coroutine's stack or a thread
 * holding a lock, no sanitizer holds a signal back for a parked coroutine
 * (ThreadSanitizer holds one until the code it landed on calls into its
 * runtime), and end_stop_signals can tell when on_stop can no longer run.
 * A session process the server forks inherits the blocked signals
 * (session_takes_server_stop says how it ends).  Call it before any other
 * thread starts.  Returns 0, or -errno. */
static inline int catch_stop_signals(void (*on_stop)(int))
{
    sigset_t set;
    stop_signal_set(&set);
    signal(SIGPIPE, SIG_IGN);
    stop_signals.on_stop = on_stop;
    atomic_store(&stop_signals.ending, 0);
    int e = pthread_sigmask(SIG_BLOCK, &set, NULL);
    if (!e)
        e = pthread_create(&stop_signals.thread, NULL, stop_signal_main, NULL);
    stop_signals.started = e == 0;
    return -e;
}

/* Ends the thread of catch_stop_signals and waits for it: once it returns,
 * on_stop runs no more (a call in progress has finished), so what on_stop
 * uses may be freed.  Stop signals that come later stay pending, blocked,
 * until the process exits. */
static inline void end_stop_signals(void)
{
    if (!stop_signals.started)
        return;
    atomic_store(&stop_signals.ending, 1);
    pthread_kill(stop_signals.thread, SIGTERM);
    pthread_join(stop_signals.thread, NULL);
    stop_signals.started = false;
}

/*
 * In a session process forked from a server that blocked its stop signals
 * (catch_stop_signals, stop_signals_fd), how the session ends on a stop:
 *   - SIGINT stays blocked: a Ctrl-C reaches the whole process group, and
 *     the server, which takes it too, decides how its sessions end (it
 *     gives them its grace, then sends them SIGTERM);
 *   - SIGTERM from the server (the parent) ends the session at once;
 *   - SIGTERM from anyone else (sent to the whole group, as a service
 *     manager does, or to this process) leaves the session the server's
 *     grace: it ends grace_s seconds later (SIGALRM) if the server has not
 *     ended it first.
 * Ending runs on_end (async-signal-safe: it may remove a file), then
 * _exit(1).  Returns 0, or -errno.
 */
static void (*session_end_fn)(void);
static unsigned session_grace_s;

static inline void session_stop(int sig, siginfo_t *si, void *ctx)
{
    (void)ctx;
    if (sig == SIGTERM && si && si->si_pid != getppid()) {
        alarm(session_grace_s);     /* the server's grace, then the end */
        return;
    }
    if (session_end_fn)
        session_end_fn();
    _exit(1);
}

static inline int session_takes_server_stop(unsigned grace_s, void (*on_end)(void))
{
    session_end_fn = on_end;
    session_grace_s = grace_s > 0 ? grace_s : 1;
    sigset_t set;                   /* what ends the session */
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGALRM);
    struct sigaction sa = { .sa_sigaction = session_stop, .sa_mask = set,
                            .sa_flags = SA_SIGINFO };
    if (sigaction(SIGTERM, &sa, NULL) < 0 || sigaction(SIGALRM, &sa, NULL) < 0)
        return -errno;
    return -pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

/* A server's ready line on stdout, flushed: "prog: listening on ADDRESS
 * (DETAIL)", ADDRESS being `at` when got (the result of the call that
 * filled it) is 0, else `where`; DETAIL is fmt with arg. */
static inline void say_listening(int got, const conc_sockaddr *at, const char *where,
                                 const char *fmt, const char *arg)
{
    char text[CONC_SOCKADDR_STRLEN];
    snprintf(text, sizeof text, "%s", where);
    if (got == 0)
        conc_sockaddr_str(at, text, sizeof text);
    printf("%s: listening on %s (", prog, text);
    printf(fmt, arg);
    printf(")\n");
    fflush(stdout);
}

/* A server's last line: "prog: stopped by SIGNAL after N WHATs". */
static inline void say_stopped(int sig, unsigned long long n, const char *what)
{
    char name[32];
    printf("%s: stopped by %s after %llu %s%s\n", prog, signal_name(sig, name, sizeof name), n,
           what, n == 1 ? "" : "s");
}

/* Creates and starts (forking) process number `no` of the kind `name`
 * ("buyer", ...), running fn(arg, len).  On failure says
 * "prog: name no: reason", frees it and returns the error (< 0). */
static inline int start_process(conc_process **p, conc_process_fn fn, const void *arg,
                                size_t len, const char *name, long no)
{
    conc_process_opts po = { .method = CONC_START_FORK };
    int rc;
    if ((rc = conc_process_new(p, fn, arg, len, &po)) < 0 ||
        (rc = conc_process_start(*p)) < 0) {
        fprintf(stderr, "%s: %s %ld: %s\n", prog, name, no, conc_strerror(rc));
        conc_process_free(*p);
        *p = NULL;
    }
    return rc;
}

/* Says on stderr how worker `name no` ended when a signal killed it
 * (code < 0: "prog: buyer 3 killed by SIGKILL (exit code -9)"; no < 0:
 * the worker has no number). */
static inline void say_killed(const char *name, long no, int code)
{
    char who[96], how[32];
    if (no >= 0)
        snprintf(who, sizeof who, "%s %ld", name, no);
    else
        snprintf(who, sizeof who, "%s", name);
    const char *abbrev = sigabbrev_np(-code);
    if (abbrev)
        snprintf(how, sizeof how, "SIG%s", abbrev);
    else
        snprintf(how, sizeof how, "signal %d", -code);
    fprintf(stderr, "%s: %s killed by %s (exit code %d)\n", prog, who, how, code);
}

/* Joins process number `no` started by start_process and frees it.
 * Returns its exit code (after saying on stderr which signal killed it
 * when one did), or -1 after saying "prog: name no: reason". */
static inline int join_process(conc_process *p, const char *name, long no)
{
    int code = 0, rc;
    if ((rc = conc_process_join(p, CONC_FOREVER)) < 0 ||
        (rc = conc_process_exitcode(p, &code)) < 0) {
        fprintf(stderr, "%s: %s %ld: %s\n", prog, name, no, conc_strerror(rc));
        code = -1;
    } else if (code < 0) {
        say_killed(name, no, code);
    }
    conc_process_free(p);
    return code;
}

#endif
