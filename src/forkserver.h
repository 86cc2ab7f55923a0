/*
 * forkserver.h - internals shared by process.c (process objects, the fork
 * method, the child's bootstrap) and forkserver.c (the launcher thread, the
 * forkserver and spawn methods).  Not installed.
 */
#ifndef CONC_FORKSERVER_H
#define CONC_FORKSERVER_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include "conc/process.h"
#include "internal.h"

/* Everything a new process needs to become a conc child. */
struct conc__child_spec {
    conc_process_fn fn;         /* the target, or NULL for the def form */
    conc_process_def *def;      /* the child's copy of the def struct */
    const void *arg;            /* the child's copy of the argument */
    size_t len;
    const char *name;           /* the child's name */
    const char *ident;          /* its identity ("1", "2:1"): names its children */
    const char *parent_name;
    pid_t ppid;                 /* the process that started it */
    bool daemon;
    conc_start_method method;   /* forkserver, spawn: how it was started (its
                                   own start method); 0 (fork): inherited */
    sigset_t sigmask;           /* the starting thread's signal mask */
};

/*
 * conc__child_main - become the child described by s: watch the parent
 * (PR_SET_PDEATHSIG for a daemon, checked against s->ppid), set up
 * current_process/parent_process and the start method, restore the signal
 * mask, run the target and exit() with its return value.  Never returns.
 */
CONC_HIDDEN _Noreturn void conc__child_main(const struct conc__child_spec *s);

/* conc__process_fresh - reset conc's per-process state in a process made
 * by a raw clone (no fork handlers ran): thread id cache, process registry,
 * forkserver client. */
CONC_HIDDEN void conc__process_fresh(void);

/* The calling process's pid (cached; refreshed in children). */
CONC_HIDDEN pid_t conc__self_pid(void);

/*
 * conc__launch - run fn(ctx) on a thread that lives as long as the process:
 * the calling thread when it is the main thread, else conc's launcher
 * thread (started on first use).  Processes are created there, so that
 * PR_SET_PDEATHSIG, which the kernel ties to the parent *thread*, fires only
 * when the process ends.  Returns fn's result, or -EAGAIN when the launcher
 * thread cannot be started.
 */
CONC_HIDDEN int conc__launch(int (*fn)(void *), void *ctx);

/* What a forkserver or spawn start sends to the new child. */
struct conc__remote_req {
    int method;                 /* CONC_START_FORKSERVER or CONC_START_SPAWN */
    void *target;               /* the function, or the def's run */
    bool is_def;
    const void *data;           /* argument bytes, or the def struct */
    size_t len;
    const char *name, *ident, *parent_name;
    bool daemon;
    const int *fds;             /* pass_fds */
    size_t nfds;
    const sigset_t *sigmask;
};

/*
 * conc__remote_start - start a child with the forkserver or spawn method.
 * The child is a child of the calling process; stores its pid and a pidfd.
 * Returns 0 or a negative errno (see conc_process_start).
 */
CONC_HIDDEN int conc__remote_start(const struct conc__remote_req *r, pid_t *pid, int *pidfd);

/* After fork, in the child: the forkserver and the launcher thread belong to
 * the parent; drop them (fork handler of process.c). */
CONC_HIDDEN void conc__forkserver_after_fork(void);

/*
 * Where a function lives, so that another process running the same files
 * can find it: its module's path as the dynamic linker names it ("" for the
 * program itself), the function's offset in it, and the module file's
 * device and inode (the other side uses the module only when its path
 * still names that same file).
 */
struct conc__fn_loc {
    const char *path;           /* borrowed from the link map */
    uint64_t offset, dev, ino;
};

/* conc__fn_locate - fills loc for fn.  Returns 0; -EINVAL when fn is not
 * code of a loaded module; -ENOENT when the module's file is gone; -ENOSYS
 * for the program when /proc/self/exe cannot be read. */
CONC_HIDDEN int conc__fn_locate(const void *fn, struct conc__fn_loc *loc);

/* conc__fn_find - the address in this process of the function loc
 * describes: its module is found by name (dlopen'ed when it is not loaded
 * yet, and only after its path was checked to name the same file).
 * Returns 0; -EACCES when the path names another file (the module is then
 * never opened); -ENOENT when the module cannot be found or loaded;
 * -EINVAL when the offset is not in an executable segment of it. */
CONC_HIDDEN int conc__fn_find(const struct conc__fn_loc *loc, void **out);

#endif
