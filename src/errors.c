/* errors.c - names and descriptions of the error codes conc returns. */
#include <string.h>
#include "conc/errors.h"

/* |err| without overflow; INT_MIN maps to 0x80000000, which is no errno. */
static unsigned magnitude(int err)
{
    return err < 0 ? 0u - (unsigned)err : (unsigned)err;
}

const char *conc_strerror(int err)
{
    unsigned e = magnitude(err);
    if (e > 4095)
        return "unknown error";
    err = (int)e;
    switch (err) {
    case 0:          return "success";
    case ETIMEDOUT:  return "timed out";
    case EAGAIN:     return "would block (empty, full or busy; non-blocking call)";
    case EPIPE:      return "closed, shut down or broken";
    case EOWNERDEAD: return "previous owner died; state may be inconsistent";
    case ECANCELED:  return "cancelled";
    case ECHILD:     return "the worker process running the call died";
    case EINVAL:     return "invalid argument";
    case EPERM:      return "not permitted (not the owner, or not locked)";
    case EOVERFLOW:  return "count would overflow its bound";
    case EDEADLK:    return "would deadlock (waiting for itself)";
    case EALREADY:   return "already started, set or done";
    case EBUSY:      return "in use or not finished yet";
    case EMSGSIZE:   return "message too large";
    case EPROTO:     return "shared memory holds what no correct process writes";
    case ENOTSUP:    return "not supported by this platform";
    case EBADF:      return "closed, or not an open descriptor";
    case ENOMEM:     return "out of memory";
    default: {
        const char *d = strerrordesc_np(err);
        return d ? d : "unknown error";
    }
    }
}

const char *conc_errname(int err)
{
    unsigned e = magnitude(err);
    if (e > 4095)
        return "E?";
    err = (int)e;
    if (err == 0)
        return "0";
    if (err == ENOTSUP)                 /* the name conc documents */
        return "ENOTSUP";
    const char *n = strerrorname_np(err);
    return n ? n : "E?";
}
