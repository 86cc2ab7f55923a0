/*
 * listener_internal.h - what the listener gives the library's other
 * files: its client connect with the handshake's errors as they came.
 */
#ifndef CONC_SRC_LISTENER_INTERNAL_H
#define CONC_SRC_LISTENER_INTERNAL_H

#include "conc/listener.h"
#include "internal.h"

/* conc_client_connect_until, except that a peer gone during the authkey
 * handshake gives -EPIPE or -ECONNRESET (the public call folds them into
 * -ECONNABORTED): -ECONNABORTED is then only a peer that answered with
 * something other than the handshake, -EACCES only a refusal. */
CONC_HIDDEN int conc__client_connect_until(conc_conn **out, const char *address,
                                           const conc_client_opts *opts, int64_t deadline);

/* Makes the listener's accept end with -EINTR whenever fd (the caller's:
 * an eventfd, an epoll set of several) is readable, so that a loop that
 * accepts without a time limit can be told to look at its state: the
 * accept waits on the listening socket, its handshakes and fd at once.
 * The caller keeps fd open while the listener is open (and makes it
 * unreadable again after the wake).  Returns 0; -EINVAL for a closed
 * listener or one that has a wake descriptor already; the errors of
 * epoll_create1 and epoll_ctl. */
CONC_HIDDEN int conc__listener_set_wake(conc_listener *l, int fd);

#endif
