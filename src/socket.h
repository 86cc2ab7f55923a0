/* socket.h - what other files of the library need of a socket. */
#ifndef CONC_SRC_SOCKET_H
#define CONC_SRC_SOCKET_H

#include "conc/socket.h"
#include "internal.h"

struct conc_socket {
    int fd;                 /* -1 once closed or detached */
    int family, type, proto;
    double timeout;         /* CONC_FOREVER, 0 or seconds (checked) */
    uint64_t key;           /* names this handle to the wait layer
                               (conc__wait_io): unique in the process */
};

/* Wraps an open descriptor (non-blocking, close-on-exec already) with the
 * default timeout.  Returns 0 or -ENOMEM (fd untouched). */
CONC_HIDDEN int conc__socket_wrap(conc_socket **out, int fd);

/* Waits until s's descriptor reports one of events, until deadline:
 * 0 (ready or interrupted: try again), -ETIMEDOUT, -ECANCELED, -EBADF. */
CONC_HIDDEN int conc__socket_wait(conc_socket *s, short events, int64_t deadline);

#endif
