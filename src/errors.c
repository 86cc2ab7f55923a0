/* errors.c - names and descriptions of the error codes conc returns. */
#include <string.h>
#include "conc/errors.h"

/* |err| without overflow; INT_MIN maps to 0x80000000, which is no errno. */
static unsigned magnitude(int err)
{
    return err < 0 ? 0u - (unsigned)err : (unsigned)err;
}

/* The resolver's codes (CONC_EAI_*), by n in -(CONC_EAI_BASE + n). */
static const struct {
    unsigned n;
    const char *name, *text;
} eai[] = {
    { 1, "EAI_BADFLAGS", "bad value for the resolver's flags" },
    { 2, "EAI_NONAME", "name or service not known" },
    { 3, "EAI_AGAIN", "temporary failure in name resolution" },
    { 4, "EAI_FAIL", "non-recoverable failure in name resolution" },
    { 5, "EAI_NODATA", "no address associated with the name" },
    { 6, "EAI_FAMILY", "address family not supported by the resolver" },
    { 7, "EAI_SOCKTYPE", "socket type not supported by the resolver" },
    { 8, "EAI_SERVICE", "service not supported for the socket type" },
    { 9, "EAI_ADDRFAMILY", "the name has no address of the family" },
    { 12, "EAI_OVERFLOW", "a result buffer is too small" },
    { 99, "EAI_OTHER", "name resolution failed" },
};

static int eai_index(unsigned e)
{
    if (e <= CONC_EAI_BASE || e > CONC_EAI_BASE + 99)
        return -1;
    for (unsigned i = 0; i < sizeof eai / sizeof eai[0]; i++)
        if (eai[i].n == e - CONC_EAI_BASE)
            return (int)i;
    return -1;
}

const char *conc_strerror(int err)
{
    unsigned e = magnitude(err);
    int k = eai_index(e);
    if (k >= 0)
        return eai[k].text;
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
    int k = eai_index(e);
    if (k >= 0)
        return eai[k].name;
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
