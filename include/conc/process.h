/*
 * conc/process.h - processes: multiprocessing.Process, start methods,
 * current_process, parent_process, active_children, cpu_count.
 *
 * A conc_process runs a function in a child process.  What the child gets is
 * bytes: the argument is copied into the child (fork: by the fork itself;
 * forkserver and spawn: sent over a socket), and the child's result is its
 * exit code.
 *
 * Start methods (Python's set_start_method / get_context):
 *   CONC_START_FORK        fork() the caller.  Fastest; like Python, only
 *                          safe when the caller has no other threads that
 *                          hold locks the child needs.
 *   CONC_START_FORKSERVER  a server process, started on first use by
 *                          posix_spawn of the running program
 *                          (/proc/self/exe), forks each child with
 *                          clone3(CLONE_PARENT).  The calling (possibly
 *                          multi-threaded) process is never forked.  The
 *                          function and the run callback of a process object
 *                          are found in the server by module + offset, so
 *                          ASLR does not matter.  The server ends when the
 *                          process that started it ends.
 *   CONC_START_SPAWN       posix_spawn of the running program for each child
 *                          (slowest, nothing inherited but the arguments).
 * Children of every method are children of the calling process: conc
 * supervises them with pidfds, never calls waitpid(-1) and never reaps a
 * process it did not start.  See docs/process.md.
 *
 * Exit codes follow Python: the function's return value (0..255) or the
 * status given to exit(); minus the signal number when a signal killed it.
 *
 * Daemon children (opts.daemon) are terminated when their parent exits
 * normally, and killed when the parent is killed: PR_SET_PDEATHSIG(SIGKILL),
 * armed in the child and checked against the parent's pid right after, so a
 * parent that died in between is noticed too; the forkserver also kills the
 * daemon children it made when its parent ends.  The kernel ties that signal
 * to the parent *thread*, so conc creates every child from a thread that
 * lives as long as the process: the main thread when it is the caller, else
 * a "conc-launcher" thread started on first use (a main thread that ends
 * with pthread_exit while the process lives on takes the daemon children it
 * started with it; conc_process_set_launcher(false) trades the launcher for
 * that).  At normal exit (an atexit handler registered at the first start,
 * see conc_process_set_exit_cleanup) the parent first joins its non-daemon
 * children, then sends SIGTERM to its daemon children and joins them
 * (SIGKILL after 5 s).  A daemon process may not start children (-EPERM).
 * docs/building.md, "Process-wide effects", lists everything conc installs
 * in a process and when.
 *
 * Forkserver and spawn children run in a fresh image of the program
 * (/proc/self/exe) that entered conc's constructor instead of main.  No
 * call is needed for that, and it cannot be triggered from outside: the
 * constructor enters child mode only for the conc starter that made the
 * process (its parent, same user and group, proving a random secret passed
 * outside argv and the environment), never in a set-user-ID, set-group-ID
 * or file-capability program (AT_SECURE), and loads only a module file that
 * the starter itself has (same device and inode).  Anything else, such as
 * a CONC_FORKSERVER variable set by somebody else, is ignored and main runs
 * as usual.  In a secure-execution program, forkserver and spawn are
 * unavailable (-ENOSYS); fork works.  A forkserver or spawn child's own
 * start method (conc_process_start_method) is the method that made it.  The
 * function sees the program's static data as initialised, not what the
 * parent changed since, and constructors that run after libconc's (the
 * executable's own, when conc is a shared library) have not run.  Their
 * stdio is the starter's (sent with each request); other descriptors are
 * only those in pass_fds.  Forkserver children start in the directory and
 * environment the server started with.
 */
#ifndef CONC_PROCESS_H
#define CONC_PROCESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "conc/common.h"
#include "conc/errors.h"
#include "conc/time.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct conc_process conc_process;

/* The body of a child process: arg points to the child's copy of the bytes
 * given to conc_process_new (NULL when len is 0).  The return value is the
 * exit code (0..255). */
typedef int (*conc_process_fn)(const void *arg, size_t len);

/* The "subclass" form: embed this as the first member of your struct and set
 * run; the child gets a copy of the whole struct and calls run on it. */
typedef struct conc_process_def {
    int (*run)(struct conc_process_def *self);
} conc_process_def;

typedef enum conc_start_method {
    CONC_START_DEFAULT = 0,     /* the global method (conc_process_set_start_method) */
    CONC_START_FORK = 1,
    CONC_START_FORKSERVER = 2,
    CONC_START_SPAWN = 3
} conc_start_method;

/* Options for conc_process_new; all-zero (or NULL) means the defaults. */
typedef struct conc_process_opts {
    uint32_t size;              /* sizeof(conc_process_opts), or 0: the first
                                   version (see conc_thread_opts) */
    const char *name;           /* NULL: "Process-N"; copied */
    int daemon;                 /* 0: inherit the current process's flag,
                                   CONC_DAEMON, CONC_NOT_DAEMON */
    conc_start_method method;   /* CONC_START_DEFAULT: the global method */
    const int *pass_fds;        /* descriptors the child gets under the same
                                   numbers (forkserver/spawn; fork inherits
                                   everything anyway); at most
                                   CONC_PROCESS_PASS_FDS_MAX */
    size_t npass_fds;
} conc_process_opts;

#define CONC_PROCESS_OPTS_INIT { .size = sizeof(conc_process_opts) }

/* The most descriptors pass_fds may list. */
#define CONC_PROCESS_PASS_FDS_MAX 250

/* The longest process name kept. */
#define CONC_PROCESS_NAME_MAX 63
/* The largest argument accepted. */
#define CONC_PROCESS_ARG_MAX (64u * 1024u * 1024u)

/*
 * conc_process_new - create a process object that will run fn(arg, len) in a
 * child once started (Process(target=fn, args=...)).  The bytes are copied
 * now.  Returns 0; -EINVAL (NULL out or fn, bad daemon or method value,
 * len > CONC_PROCESS_ARG_MAX, arg NULL with len > 0, a negative fd or more
 * than CONC_PROCESS_PASS_FDS_MAX of them in pass_fds); -ENOMEM.  The name
 * defaults to "Process-N" where N counts the objects this process created;
 * in a child it is "Process-M:N" (M: the child's own number), as in Python.
 */
CONC_API int conc_process_new(conc_process **out, conc_process_fn fn, const void *arg,
                              size_t len, const conc_process_opts *opts);

/*
 * conc_process_new_def - the subclass form: the child runs def->run on its
 * copy of the `size` bytes at def (size >= sizeof(conc_process_def)).
 * Forkserver and spawn children get run translated to their address space;
 * other pointers in the struct are copied as they are (meaningful with fork
 * only).  Returns 0, -EINVAL (also for a NULL run), -ENOMEM.
 */
CONC_API int conc_process_new_def(conc_process **out, const conc_process_def *def,
                                  size_t size, const conc_process_opts *opts);

/*
 * conc_process_start - Process.start().  Returns 0; -EALREADY when started
 * before (also for current_process and parent_process); -EPERM when the
 * calling process is a daemon; -EAGAIN / -ENOMEM when the system cannot
 * make a process; -EMFILE when out of descriptors; -ENOSYS when the start
 * method is unavailable (no pidfds: Linux < 5.3; no clone3 for forkserver:
 * Linux < 5.3; no /proc/self/exe, a secure-execution program (set-id or
 * file capabilities), or a program that did not act as a conc child, for
 * forkserver/spawn); -EBADF when a pass_fds entry is not open; -ENOENT when
 * the module of the function cannot be loaded in the forkserver or spawn
 * child; -EACCES when the module's path names another file there than the
 * one the caller has (it was replaced on disk); -EINVAL for NULL, a closed
 * object, or (forkserver/spawn) a function that is not code of a loaded
 * module.
 */
CONC_API int conc_process_start(conc_process *p);

/*
 * conc_process_join - Process.join(timeout): wait for the child to end and
 * reap it (no zombie is left).  Returns 0 once it ended; -ETIMEDOUT (-EAGAIN
 * for timeout 0) while it runs; -EINVAL when not started, closed, not a
 * child of the caller (current_process, a handle inherited across fork) or
 * a bad timeout.  On parent_process it waits for the parent to end (0).
 * Coroutine-aware like every conc wait.  Do not close the object while
 * another thread joins it.
 */
CONC_API int conc_process_join(conc_process *p, double timeout);
CONC_API int conc_process_join_until(conc_process *p, int64_t deadline);

/* conc_process_is_alive - Process.is_alive(): started and not ended (reaps a
 * child that has ended, like Python).  True for current_process; for
 * parent_process, whether the parent still runs; false for a handle
 * inherited across fork. */
CONC_API bool conc_process_is_alive(conc_process *p);

/*
 * conc_process_exitcode - Process.exitcode.  Returns 0 and stores the code
 * (>= 0: exit status; < 0: minus the signal number) once the child ended and
 * was reaped (join, is_alive, active_children); -EBUSY while it runs,
 * before start, and for current_process / parent_process (unknown, None in
 * Python); -EINVAL for NULL.  A child that something else reaped (a
 * waitpid(-1) elsewhere, SIGCHLD set to SIG_IGN) reports its code on Linux
 * 6.15 and later (PIDFD_GET_INFO), 255 on older kernels.
 */
CONC_API int conc_process_exitcode(const conc_process *p, int *code);

/* conc_process_pid - Process.pid: the child's pid, 0 before start (the
 * caller's pid for current_process). */
CONC_API pid_t conc_process_pid(const conc_process *p);

/*
 * conc_process_name - Process.name: copy the name into buf (size bytes,
 * always NUL-terminated when size > 0; CONC_PROCESS_NAME_MAX + 1 bytes hold
 * any name), as snprintf does.  The copy is taken whole: a concurrent
 * conc_process_set_name gives either the old or the new name, never a mix.
 * Returns the name's length (a result >= size means it was truncated);
 * -EINVAL for NULL p, or NULL buf with size > 0.
 *
 * conc_process_set_name - set Process.name (copied, truncated to
 * CONC_PROCESS_NAME_MAX bytes).  Safe while other threads read or set it.
 * Returns 0, or -EINVAL for NULL arguments or parent_process.
 */
CONC_API int conc_process_name(const conc_process *p, char *buf, size_t size);
CONC_API int conc_process_set_name(conc_process *p, const char *name);

/* conc_process_daemon / conc_process_set_daemon - Process.daemon; setting it
 * after start gives -EALREADY (-EINVAL when closed, NULL, or
 * parent_process).  Setting it on current_process is allowed, as in Python
 * (a daemon may not start children). */
CONC_API bool conc_process_daemon(const conc_process *p);
CONC_API int conc_process_set_daemon(conc_process *p, bool daemon);

/*
 * conc_process_sentinel - Process.sentinel: a pidfd that becomes readable
 * (poll/epoll POLLIN) when the child ends, and stays readable.  Owned by the
 * object: valid until conc_process_close/free.  Returns the fd, or -EINVAL
 * when not started, closed, for current_process, or a handle inherited
 * across fork.  parent_process has one too (readable when the parent ends).
 */
CONC_API int conc_process_sentinel(const conc_process *p);

/* conc_process_terminate - Process.terminate(): send SIGTERM.
 * conc_process_kill - Process.kill(): send SIGKILL.
 * Both signal through the pidfd (never a recycled pid) and return 0 (also
 * when the child already ended), -EINVAL when not started, closed, for
 * current_process / parent_process or a handle inherited across fork. */
CONC_API int conc_process_terminate(conc_process *p);
CONC_API int conc_process_kill(conc_process *p);

/*
 * conc_process_close - Process.close(): release the pidfd and other
 * resources; later calls other than free/exitcode/name/pid give -EINVAL.
 * Returns 0 (also when never started, or closed before), -EBUSY when the
 * child still runs (nothing is released), -EINVAL for NULL,
 * current_process and parent_process.
 */
CONC_API int conc_process_close(conc_process *p);

/* conc_process_free - drop the handle.  A child that still runs is left
 * running and reaped later by active_children or at exit.  NULL is fine. */
CONC_API void conc_process_free(conc_process *p);

/*
 * conc_process_current - multiprocessing.current_process(): the calling
 * process (borrowed handle; "MainProcess" in the main program, the child's
 * name in a child).  conc_process_pid and conc_process_name work on it.
 */
CONC_API conc_process *conc_process_current(void);

/* conc_process_parent - multiprocessing.parent_process(): the parent of a
 * conc child (borrowed; its sentinel becomes readable when the parent
 * ends), or NULL in a process conc did not start. */
CONC_API conc_process *conc_process_parent(void);

/*
 * conc_process_active_children - multiprocessing.active_children(): reaps
 * children that have ended, then stores up to cap handles of the live ones
 * (oldest first, each with a new reference: conc_process_free them) and
 * returns how many are alive.  -EINVAL when out is NULL with cap > 0;
 * -ENOMEM.  Children are those the calling process started (a forked
 * child does not inherit its parent's).
 */
CONC_API int conc_process_active_children(conc_process **out, size_t cap);

/* conc_process_ref - take another reference to a handle; returns p. */
CONC_API conc_process *conc_process_ref(conc_process *p);

/* conc_process_cpu_count - CPUs the calling thread may run on (its affinity mask,
 * sched_getaffinity), >= 1 (os.process_cpu_count). */
CONC_API int conc_process_cpu_count(void);

/* conc_process_set_start_method - set the global start method (set_start_method).
 * Returns 0; -EINVAL for CONC_START_DEFAULT or an unknown value. */
CONC_API int conc_process_set_start_method(conc_start_method method);

/* conc_process_start_method - the global start method: fork unless set, and in
 * a forkserver or spawn child the method that made it (so its own children
 * default to that method, as in Python). */
CONC_API conc_start_method conc_process_start_method(void);

/*
 * conc_process_set_exit_cleanup - whether a normal exit (return from main,
 * exit(), and a child's return from its function) first joins the
 * non-daemon children and terminates the daemon ones (true, the default:
 * multiprocessing's exit function).  Off: no atexit handler is registered
 * at the first start, and one registered already does nothing; at exit,
 * non-daemon children keep running (re-parented to init) and daemon
 * children are still killed by PR_SET_PDEATHSIG when the process ends, but
 * not waited for.  It may be changed at any time; the value at exit
 * decides.  Fork children inherit the value; forkserver and spawn children
 * start with the default.  Python has no public equivalent.
 * Returns 0; -ENOMEM when turning it on after a start must register the
 * atexit handler and the C library has no room for it (it stays off).
 */
CONC_API int conc_process_set_exit_cleanup(bool on);

/*
 * conc_process_set_launcher - whether children started from a thread other
 * than the main thread are created on conc's "conc-launcher" thread (true,
 * the default; the thread is started on the first such start, every method
 * and the forkserver's own start included).  Off: they are created on the
 * calling thread itself and no launcher thread is started.  The kernel ties
 * a child's PR_SET_PDEATHSIG to the thread that created it, so with the
 * launcher off a daemon child started from another thread is killed as
 * soon as that thread ends, and so is every daemon child of a forkserver
 * that such a thread started; non-daemon children are not affected.  Starting
 * processes only from the main thread never starts the launcher either.
 * Fork children inherit the value (never the launcher itself).  No Python
 * equivalent.  Returns 0; -EBUSY when `on` is false and the launcher is
 * running already.
 */
CONC_API int conc_process_set_launcher(bool on);

#ifdef __cplusplus
}
#endif
#endif /* CONC_PROCESS_H */

/* ------------------------------------------- stopping children on a signal */
#ifndef CONC_PROCESS_CLEANUP_H
#define CONC_PROCESS_CLEANUP_H
#ifdef __cplusplus
extern "C" {
#endif

/*
 * conc_process_cleanup_on_signals - make SIGINT, SIGTERM and SIGHUP stop the
 * children before the process ends.
 *
 * By default (as in Python) a parent killed by one of these signals leaves
 * its children running: a consumer blocked on a queue that nobody will ever
 * feed again stays blocked for good, re-parented to init.  After this call,
 * each of the three signals whose disposition is still the default
 * (SIG_DFL) gets a handler that:
 *   1. sends SIGTERM to every child process of the calling process (those of
 *      every start method, and any other child it has, such as one made by
 *      popen: the kernel's list of the process's children is what is read);
 *   2. waits up to `grace` seconds for them to end, then sends SIGKILL to
 *      those still running (grace 0: SIGKILL at once) and waits for them;
 *   3. reaps them, restores the default disposition and raises the signal
 *      again, so the process still ends "killed by SIGINT" (shell status
 *      130), as it would have without the handler.
 * The handler is async-signal-safe: it uses system calls only (pidfds,
 * poll, waitid; no lock, no allocation), so it works whatever the
 * interrupted thread was doing.  Every child is signalled through a pidfd
 * that is first checked to be a child of this process, so a recycled pid
 * is never signalled.
 *
 * Only this call installs anything, and only for the signals left at their
 * default: a signal the program ignores (SIG_IGN, e.g. SIGHUP under nohup)
 * or handles itself is left as it is.  Calling it again is allowed and only
 * changes the grace.  Children started with the fork method inherit the
 * handler (a forked child that gets one of the signals stops its own
 * children first); forkserver and spawn children start with the default
 * dispositions.  A child that ends on its own is not affected; a parent
 * killed by SIGKILL runs no handler at all (daemon children die with it
 * anyway, see above).
 *
 * Returns 0; -EINVAL when grace is negative, not a number or over 3600;
 * -ENOTSUP when the kernel does not list a process's children
 * (/proc/PID/task/TID/children, CONFIG_PROC_CHILDREN) or has no pidfds;
 * -errno when sigaction fails.
 */
CONC_API int conc_process_cleanup_on_signals(double grace);

#ifdef __cplusplus
}
#endif
#endif /* CONC_PROCESS_CLEANUP_H */
