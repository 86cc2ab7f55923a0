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

#endif
