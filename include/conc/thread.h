/*
 * conc/thread.h - threads: threading.Thread, Timer, local, current_thread,
 * main_thread, active_count, enumerate, get_ident, get_native_id,
 * stack_size.
 *
 * A conc_thread is an opaque, reference-counted handle.  conc_thread_new
 * gives the caller one reference; conc_thread_free drops it.  A started
 * thread keeps its own reference until its function returns, so freeing the
 * handle of a running thread is allowed (it runs on, detached).
 *
 * Process exit: when the process exits normally (return from main, exit()),
 * conc joins every non-daemon thread first, like Python's interpreter
 * shutdown; daemon threads are not waited for.  The join runs as an atexit
 * handler registered when the first thread starts, so it runs before the
 * atexit handlers registered earlier and after those registered later.
 * conc_thread_set_exit_join(false) turns it off (docs/building.md,
 * "Process-wide effects", lists everything conc installs).
 */
#ifndef CONC_THREAD_H
#define CONC_THREAD_H

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

typedef struct conc_thread conc_thread;

/* The body of a thread: its return value is the thread's result. */
typedef void *(*conc_thread_fn)(void *arg);

/* Options for conc_thread_new; all-zero (or NULL) means the defaults. */
typedef struct conc_thread_opts {
    uint32_t size;          /* sizeof(conc_thread_opts), or 0 (see below) */
    const char *name;       /* NULL: "Thread-N"; copied */
    int daemon;             /* 0: inherit the creating thread's flag (Python's
                               default), CONC_DAEMON: daemon, CONC_NOT_DAEMON */
    size_t stack_size;      /* 0: conc_thread_stack_size() */
} conc_thread_opts;

/* An options struct can grow: conc reads a field only when size covers it,
 * and size 0 means this first version (every field above), so
 * &(conc_thread_opts){ .name = "w" } keeps working.  CONC_THREAD_OPTS_INIT
 * fills size. */
#define CONC_THREAD_OPTS_INIT { .size = sizeof(conc_thread_opts) }

/* The smallest stack size accepted (Python's 32 KiB minimum). */
#define CONC_THREAD_STACK_MIN (32u * 1024u)
/* The longest name kept (longer names are truncated). */
#define CONC_THREAD_NAME_MAX 63

/*
 * conc_thread_new - create a thread object that will run fn(arg) once
 * started (threading.Thread(target=fn, args=(arg,), name, daemon)).
 * Returns 0 and stores the handle in *out; -EINVAL for a NULL out or fn, a
 * daemon value other than 0, CONC_DAEMON, CONC_NOT_DAEMON, or a stack size
 * below CONC_THREAD_STACK_MIN; -ENOMEM.
 */
CONC_API int conc_thread_new(conc_thread **out, conc_thread_fn fn, void *arg,
                             const conc_thread_opts *opts);

/*
 * conc_thread_start - Thread.start(): start running the function in a new
 * OS thread.  Returns 0; -EALREADY when it was started before (Python's
 * RuntimeError); -EAGAIN when the system is out of threads; -ENOMEM;
 * -EINVAL for NULL.
 */
CONC_API int conc_thread_start(conc_thread *t);

/*
 * conc_thread_join - Thread.join(timeout): wait until the thread ends.
 * Returns 0 when it has ended; -ETIMEDOUT (or -EAGAIN for timeout 0) while
 * it still runs; -EINVAL when not started, a bad timeout, or a thread conc
 * did not start (a "Dummy-N" handle from conc_thread_current: Python's
 * RuntimeError "cannot join a dummy thread", at once); -EDEADLK when a
 * thread joins itself.  Any number of threads may join the same thread.
 * The main thread can be joined: the join returns once main has returned
 * or called exit() (conc marks it ended before it joins the non-daemon
 * threads at exit) or pthread_exit().
 */
CONC_API int conc_thread_join(conc_thread *t, double timeout);
CONC_API int conc_thread_join_until(conc_thread *t, int64_t deadline);

/*
 * conc_thread_free - drop the caller's reference (del thread).  The thread
 * is not stopped; it releases its own reference when it ends.  NULL is fine.
 * Handles from conc_thread_current() and conc_thread_main() are borrowed:
 * do not free them (freeing the main thread's handle, or the borrowed
 * handle of a thread conc did not start, is ignored).
 */
CONC_API void conc_thread_free(conc_thread *t);

/* conc_thread_ref - take one more reference (released by conc_thread_free);
 * returns t. */
CONC_API conc_thread *conc_thread_ref(conc_thread *t);

/* conc_thread_is_alive - Thread.is_alive(): started and not yet ended. */
CONC_API bool conc_thread_is_alive(const conc_thread *t);

/* conc_thread_started - true once conc_thread_start succeeded. */
CONC_API bool conc_thread_started(const conc_thread *t);

/*
 * conc_thread_result - the function's return value.  Returns 0 and stores
 * it in *out once the thread has ended; -EBUSY while it has not (not
 * started, or running); -EINVAL for NULL.
 */
CONC_API int conc_thread_result(const conc_thread *t, void **out);

/*
 * conc_thread_name - Thread.name: copy the name into buf (size bytes,
 * always NUL-terminated when size > 0; CONC_THREAD_NAME_MAX + 1 bytes hold
 * any name), as snprintf does.  The copy is taken whole: a concurrent
 * conc_thread_set_name gives either the old or the new name, never a mix.
 * Returns the name's length (a result >= size means it was truncated);
 * -EINVAL for NULL t, or NULL buf with size > 0.
 */
CONC_API int conc_thread_name(const conc_thread *t, char *buf, size_t size);

/* conc_thread_set_name - set Thread.name (copied, truncated to
 * CONC_THREAD_NAME_MAX bytes; a running thread's OS name, shown by ps and
 * gdb, gets the first 15 bytes).  Safe while other threads read the name,
 * set it or join the thread.  Returns 0, -EINVAL for NULL. */
CONC_API int conc_thread_set_name(conc_thread *t, const char *name);

/* conc_thread_daemon - Thread.daemon. */
CONC_API bool conc_thread_daemon(const conc_thread *t);

/* conc_thread_set_daemon - set Thread.daemon before start.  Returns 0;
 * -EALREADY once started (Python's RuntimeError); -EINVAL for NULL. */
CONC_API int conc_thread_set_daemon(conc_thread *t, bool daemon);

/* conc_thread_ident - Thread.ident: the pthread id as an integer, or 0 when
 * not started.  May be recycled after the thread ends. */
CONC_API uint64_t conc_thread_ident(const conc_thread *t);

/* conc_thread_native_id - Thread.native_id: the kernel's thread id (gettid),
 * or 0 when not started.  Waits for a just-started thread to report it. */
CONC_API pid_t conc_thread_native_id(conc_thread *t);

/* conc_thread_current - threading.current_thread(): the calling thread's
 * handle (borrowed: valid while the thread lives, never freed by the
 * caller).  Threads not started by conc get a daemon "Dummy-N" handle, as in
 * Python.  Returns NULL only when out of memory. */
CONC_API conc_thread *conc_thread_current(void);

/* conc_thread_main - threading.main_thread() (borrowed handle).  In a
 * child made by fork() from another thread, the thread that forked is the
 * child's main thread (a thread conc did not start becomes "MainThread"). */
CONC_API conc_thread *conc_thread_main(void);

/* conc_thread_get_ident - threading.get_ident() of the calling thread. */
CONC_API uint64_t conc_thread_get_ident(void);

/* conc_thread_get_native_id - threading.get_native_id(): gettid(). */
CONC_API pid_t conc_thread_get_native_id(void);

/* conc_thread_active_count - threading.active_count(): threads alive now
 * (the main thread, started conc threads that have not ended, and foreign
 * threads that called conc_thread_current). */
CONC_API int conc_thread_active_count(void);

/*
 * conc_thread_enumerate - threading.enumerate(): a snapshot of the threads
 * alive now.  Stores up to cap handles in out[], each with a new reference
 * (release each with conc_thread_free), and returns how many threads were
 * alive; when that is more than cap, only cap were stored.  Returns -EINVAL
 * when out is NULL with cap > 0.
 */
CONC_API int conc_thread_enumerate(conc_thread **out, size_t cap);

/*
 * conc_thread_stack_size - threading.stack_size(): the stack size used by
 * threads started later (0 means the system default).
 */
CONC_API size_t conc_thread_stack_size(void);

/* conc_thread_set_stack_size - threading.stack_size(size): 0 restores the
 * default.  Returns 0, or -EINVAL for a size below CONC_THREAD_STACK_MIN. */
CONC_API int conc_thread_set_stack_size(size_t size);

/*
 * conc_thread_set_exit_join - whether a normal exit (return from main,
 * exit()) first joins the non-daemon threads (true, the default: Python's
 * interpreter shutdown).  Off: no atexit handler is registered when
 * threads start, and one registered already does nothing, so the process
 * exits at once and its remaining threads end with it, daemon or not (as
 * with os._exit in Python).  It may be changed at any time; the value at
 * exit decides.  In a child process started with CONC_START_FORK the
 * parent's value is inherited; the join a child does when its function
 * returns follows the child's own value.  Python has no public equivalent
 * (threading._register_atexit is private).  Returns 0.
 */
CONC_API int conc_thread_set_exit_join(bool on);

/* ----------------------------------------------------------------- Timer */

/*
 * conc_timer_new - threading.Timer(interval, fn, args): a thread that calls
 * fn(arg) after `interval` seconds unless cancelled first.  The handle is a
 * conc_thread: start, join, free and the accessors work on it; its result is
 * fn's return value, or NULL when cancelled.
 * Returns 0; -EINVAL for NULL out/fn or a negative or NaN interval; -ENOMEM.
 */
CONC_API int conc_timer_new(conc_thread **out, double interval, conc_thread_fn fn,
                            void *arg, const conc_thread_opts *opts);

/*
 * conc_timer_cancel - Timer.cancel(): stop the timer if it has not fired.
 * Harmless after it fired or before it started (then it never fires).
 * Returns 0; -EINVAL when t is NULL or not a timer.
 */
CONC_API int conc_timer_cancel(conc_thread *t);

/* ------------------------------------------------------ threading.local */

/* conc_local - thread-local storage: one void * per thread and key. */
typedef struct conc_local conc_local;

/*
 * conc_local_new - create a thread-local slot; every thread sees NULL at
 * first.  When a thread ends with a non-NULL value, destructor(value) runs
 * in that thread (destructor may be NULL).  Returns 0; -EAGAIN when the
 * system's supply of keys is used up; -ENOMEM; -EINVAL for NULL out.
 */
CONC_API int conc_local_new(conc_local **out, void (*destructor)(void *));

/* conc_local_get - the calling thread's value (NULL when unset). */
CONC_API void *conc_local_get(const conc_local *l);

/* conc_local_set - set the calling thread's value.  Returns 0, -ENOMEM,
 * -EINVAL for NULL l. */
CONC_API int conc_local_set(conc_local *l, void *value);

/* conc_local_free - delete the slot.  Destructors do not run for values
 * still stored; free them first.  NULL is fine. */
CONC_API void conc_local_free(conc_local *l);

#ifdef __cplusplus
}
#endif
#endif /* CONC_THREAD_H */
