/*
 * conc/selector.h - Python's select module (select, poll, epoll) and its
 * selectors module: wait until descriptors are ready for reading or
 * writing.
 *
 * Two levels, as in Python:
 *   - the functions conc_selector_select_fds (select.select),
 *     conc_selector_poll_fds (select.poll's poll) and
 *     conc_selector_epoll_wait (select.epoll's poll), over lists the caller
 *     keeps;
 *   - the selector object (selectors.DefaultSelector and its kin): register
 *     descriptors with the events they are watched for and a pointer of
 *     user data, then conc_selector_select gives the ready ones with their
 *     key.  Three backends: epoll (the default), poll and select.
 *
 * Events: CONC_EVENT_READ and CONC_EVENT_WRITE (selectors.EVENT_READ,
 * EVENT_WRITE).  An error or hang-up on a descriptor makes it ready for
 * every event it is registered for, so the next recv or send reports it
 * (Python's rule for every backend).
 *
 * Descriptor limits: only the select backend and conc_selector_select_fds
 * have one: descriptors from FD_SETSIZE (1024) up give -EINVAL, where
 * select(2) itself would write past its sets.  The poll and epoll
 * backends take any descriptor.
 *
 * Closing a registered descriptor.  Unregister a descriptor before you
 * close it.  When one is closed while it is registered anyway, the
 * selector behaves the same on every backend: a selector watches the open
 * file the descriptor referred to when it was registered, and once that
 * number no longer refers to that file (closed, or closed and reused for
 * another socket or file), the key is never reported ready again; it
 * stays registered (conc_selector_get_key finds it, it is counted) until
 * conc_selector_unregister removes it, which then returns 0.  While the
 * old key is registered, registering its number again gives -EEXIST
 * (Python's KeyError), also for the new file; conc_selector_modify of it
 * watches the new file from then on.  (Python's selectors differ by
 * backend here: epoll forgets the file silently, poll and select report
 * the number as ready or fail with EBADF.)  The check costs one fstat per
 * reported descriptor; a loop that always unregisters before it closes
 * can turn it off with conc_selector_set_check_files.
 *
 * Timeouts follow conc/time.h: CONC_FOREVER blocks, 0 only looks (-EAGAIN
 * when nothing is ready), t > 0 gives -ETIMEDOUT after t seconds (Python
 * returns an empty list in both cases); each call has an _until form with
 * an absolute CLOCK_MONOTONIC deadline in ns.  A signal handler never
 * interrupts a wait (PEP 475: it goes on for the time that is left).
 * Every wait goes through conc's one wait primitive: called from a
 * greenlet (conc/hub.h) it parks only that greenlet; conc_greenlet_kill
 * ends it with -ECANCELED and a timeout scope with -ETIMEDOUT.
 *
 * Threads: a selector is used by one thread at a time, as in Python
 * (register and select from two threads at once is undefined).
 */
#ifndef CONC_SELECTOR_H
#define CONC_SELECTOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <poll.h>
#include <sys/epoll.h>
#include "conc/errors.h"
#include "conc/time.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------- functions */

/* The descriptor limit of select(): FD_SETSIZE. */
#define CONC_SELECT_FD_LIMIT 1024

/*
 * conc_selector_select_fds - select.select(rlist, wlist, xlist, timeout):
 * wait until one of the *nr descriptors of rfds is readable, one of the
 * *nw of wfds writable, or one of the *nx of xfds has an exceptional
 * condition (urgent data: POLLPRI).  On return each list holds only its
 * ready descriptors, in their order, and *nr, *nw, *nx their numbers
 * (Python's three result lists).  A list may be NULL with its count 0 (or
 * a NULL count).  Returns the total of ready entries (> 0); -EAGAIN
 * (timeout 0) or -ETIMEDOUT when none became ready (the lists are then
 * left as they were); -EINVAL for a descriptor < 0 or >= 1024
 * (CONC_SELECT_FD_LIMIT), a NULL list with a count > 0, or a bad timeout;
 * -EBADF when a descriptor is not open (as select(2)); -ECANCELED;
 * -ENOMEM.  With every list empty it sleeps until the timeout (a NULL
 * timeout of forever is -EINVAL).
 */
CONC_API int conc_selector_select_fds(int *rfds, size_t *nr, int *wfds, size_t *nw, int *xfds,
                                      size_t *nx, double timeout);
CONC_API int conc_selector_select_fds_until(int *rfds, size_t *nr, int *wfds, size_t *nw,
                                            int *xfds, size_t *nx, int64_t deadline);

/*
 * conc_selector_poll_fds - select.poll()'s poll(timeout) over a pollfd
 * array the caller keeps (its register/modify/unregister are edits of the
 * array): wait until one entry reports one of its events, an error or a
 * hang-up, and set every entry's revents as poll(2) does (POLLNVAL for a
 * descriptor that is not open; a negative fd is skipped).  Returns how
 * many entries have revents (> 0); -EAGAIN (timeout 0) or -ETIMEDOUT;
 * -EINVAL for NULL fds with n > 0, n over the process's descriptor limit,
 * a bad timeout, or n == 0 with no time limit; -ECANCELED; -ENOMEM.  No
 * descriptor limit.
 */
CONC_API int conc_selector_poll_fds(struct pollfd *fds, size_t n, double timeout);
CONC_API int conc_selector_poll_fds_until(struct pollfd *fds, size_t n, int64_t deadline);

/*
 * conc_selector_epoll_wait - select.epoll's poll(timeout, maxevents) on an
 * epoll descriptor the caller made (epoll_create1) and fills (epoll_ctl):
 * wait until it has events and store up to maxevents of them.  Returns
 * their number (> 0); -EAGAIN (timeout 0) or -ETIMEDOUT; -EINVAL for NULL
 * events, maxevents < 1, an epfd that is not an epoll descriptor, a bad
 * timeout; -EBADF when epfd is not open; -ECANCELED.
 */
CONC_API int conc_selector_epoll_wait(int epfd, struct epoll_event *events, int maxevents,
                                      double timeout);
CONC_API int conc_selector_epoll_wait_until(int epfd, struct epoll_event *events,
                                            int maxevents, int64_t deadline);

/* -------------------------------------------------- selector object */

/* conc_selector - a selectors.BaseSelector. */
typedef struct conc_selector conc_selector;

/* The backends: selectors.DefaultSelector (epoll on Linux), EpollSelector,
 * PollSelector, SelectSelector. */
typedef enum conc_selector_backend {
    CONC_SELECTOR_DEFAULT = 0,  /* the best one: epoll */
    CONC_SELECTOR_EPOLL = 1,
    CONC_SELECTOR_POLL = 2,
    CONC_SELECTOR_SELECT = 3    /* descriptors below 1024 only */
} conc_selector_backend;

/* Events (selectors.EVENT_READ, EVENT_WRITE). */
#define CONC_EVENT_READ  0x1u
#define CONC_EVENT_WRITE 0x2u

/* selectors.SelectorKey(fileobj, fd, events, data): a copy. */
typedef struct conc_selector_key {
    int fd;
    unsigned events;        /* what it is registered for */
    void *data;             /* the caller's pointer */
} conc_selector_key;

/* One ready descriptor: Python's (key, events) pair. */
typedef struct conc_selector_event {
    conc_selector_key key;
    unsigned events;        /* ready: a subset of key.events, never 0 */
} conc_selector_event;

/*
 * conc_selector_new - selectors.DefaultSelector() (CONC_SELECTOR_DEFAULT),
 * EpollSelector(), PollSelector(), SelectSelector(): an empty selector.
 * Returns 0 and stores it in *out (free it with conc_selector_free);
 * -EINVAL for NULL out or an unknown backend; -EMFILE, -ENFILE (the epoll
 * descriptor); -ENOMEM.
 */
CONC_API int conc_selector_new(conc_selector **out, conc_selector_backend backend);

/*
 * conc_selector_register - selector.register(fd, events, data): watch fd
 * for events (CONC_EVENT_READ, CONC_EVENT_WRITE or both) with data.
 * Returns 0; -EINVAL for NULL sel, fd < 0, events 0 or unknown bits, and
 * on the select backend fd >= 1024; -EEXIST when fd is registered already
 * (KeyError); -EBADF when fd is not open (or the selector is closed);
 * -EPERM for a descriptor epoll cannot watch (a regular file or
 * directory: every backend refuses it); -ENOMEM; -ENOSPC (epoll's
 * max_user_watches).
 */
CONC_API int conc_selector_register(conc_selector *sel, int fd, unsigned events, void *data);

/*
 * conc_selector_modify - selector.modify(fd, events, data): change a
 * registered descriptor's events and data (the descriptor's current file
 * is watched from then on, see "Closing a registered descriptor").
 * Returns 0; -ENOENT when fd is not registered (KeyError); -EINVAL as for
 * register; -EBADF when fd is not open (the key is unchanged) or the
 * selector is closed; -ENOMEM.
 */
CONC_API int conc_selector_modify(conc_selector *sel, int fd, unsigned events, void *data);

/*
 * conc_selector_unregister - selector.unregister(fd): stop watching fd and
 * forget its key (*key, unless NULL, gets a copy: Python returns it).
 * Works also when fd was closed meanwhile.  Returns 0; -ENOENT when fd is
 * not registered (KeyError); -EINVAL for NULL sel or fd < 0; -EBADF when
 * the selector is closed.
 */
CONC_API int conc_selector_unregister(conc_selector *sel, int fd, conc_selector_key *key);

/*
 * conc_selector_get_key - selector.get_key(fd): a copy of fd's key into
 * *key.  Returns 0; -ENOENT when fd is not registered (KeyError); -EINVAL
 * for NULL sel or key, fd < 0; -EBADF when the selector is closed.
 */
CONC_API int conc_selector_get_key(const conc_selector *sel, int fd, conc_selector_key *key);

/*
 * conc_selector_select - selector.select(timeout): wait until registered
 * descriptors are ready and store up to cap of them in out (each with a
 * copy of its key and its ready events).  Level-triggered: a descriptor
 * still ready is reported again by the next call; with more ready than
 * cap, the others come in the next calls (no descriptor is starved).
 * Returns the number stored (> 0); -EAGAIN (timeout 0) or -ETIMEDOUT when
 * none became ready in time (Python's empty list); -EINVAL for NULL sel
 * or out, cap 0, a bad timeout, or an empty selector with no time limit;
 * -EBADF when the selector is closed; -ECANCELED; -ENOMEM.  With no
 * descriptor registered it sleeps until the timeout.  The events are
 * copies taken when the call returned: a loop that unregisters or closes
 * a descriptor while it handles one event of the array may still find
 * that descriptor in a later event of the same array (as in Python), so
 * it checks its own state before using one.
 */
CONC_API int conc_selector_select(conc_selector *sel, conc_selector_event *out, size_t cap,
                                  double timeout);
CONC_API int conc_selector_select_until(conc_selector *sel, conc_selector_event *out,
                                        size_t cap, int64_t deadline);

/* conc_selector_count - len(selector.get_map()): how many descriptors are
 * registered; 0 for NULL or a closed selector. */
CONC_API size_t conc_selector_count(const conc_selector *sel);

/*
 * conc_selector_keys - selector.get_map().values(): copies of up to cap
 * keys into out, in no particular order.  Returns how many keys there are
 * in all (more than cap: call again with a larger out); -EINVAL for NULL
 * sel, or NULL out with cap > 0; -EBADF when closed.
 */
CONC_API int conc_selector_keys(const conc_selector *sel, conc_selector_key *out, size_t cap);

/*
 * conc_selector_set_check_files - whether select checks each descriptor it
 * is about to report against the file it was registered for (on, the
 * default: see "Closing a registered descriptor").  Turning it off saves
 * one fstat per reported descriptor and, with the epoll backend, the one
 * of each register, modify and unregister (epoll itself refuses a closed
 * descriptor, -EBADF, and a regular file or directory, -EPERM, as the
 * checks do); the caller then promises to
 * unregister every descriptor before closing it, and a descriptor closed
 * while registered behaves as the kernel makes it (epoll may go on
 * reporting a file kept open by a copy, poll and select watch whatever
 * the number names now).  Turned back on, it checks the keys registered
 * while it was off against the files their numbers name at that moment
 * (a number closed meanwhile: the key is gone).  Returns 0; -EINVAL for
 * NULL; -EBADF when closed.
 */
CONC_API int conc_selector_set_check_files(conc_selector *sel, bool check);

/* conc_selector_check_files - the setting above; false for NULL. */
CONC_API bool conc_selector_check_files(const conc_selector *sel);

/* conc_selector_backend_of - the backend of sel (CONC_SELECTOR_DEFAULT is
 * reported as CONC_SELECTOR_EPOLL); 0 for NULL. */
CONC_API conc_selector_backend conc_selector_backend_of(const conc_selector *sel);

/*
 * conc_selector_fd - EpollSelector.fileno(): the epoll descriptor, which
 * is readable while a registered descriptor is ready (to nest the
 * selector in another loop).  Do not close it or change its set.
 * Returns it; -ENOTSUP for the poll and select backends (Python's have no
 * fileno); -EBADF when closed; -EINVAL for NULL.
 */
CONC_API int conc_selector_fd(const conc_selector *sel);

/*
 * conc_selector_close - selector.close(): forget every key and release
 * the epoll descriptor; the registered descriptors are not closed.  The
 * handle stays: later calls give -EBADF.  Closing twice is allowed.
 * Returns 0; -EINVAL for NULL.
 */
CONC_API int conc_selector_close(conc_selector *sel);

/* conc_selector_free - close (when open) and free the selector; NULL is a
 * no-op. */
CONC_API void conc_selector_free(conc_selector *sel);

#ifdef __cplusplus
}
#endif
#endif /* CONC_SELECTOR_H */
