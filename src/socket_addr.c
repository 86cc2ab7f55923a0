/*
 * socket_addr.c - addresses, the resolver (getaddrinfo, getnameinfo) and
 * the connection helpers (create_connection, create_server) of
 * conc/socket.h.
 *
 * The resolver blocks in the C library without a descriptor conc could
 * wait on.  From a hub thread, and whenever a deadline bounds the call,
 * it runs on an offload worker (conc/offload.h): the calling greenlet
 * parks, and a caller that stops waiting (killed, timed out) leaves the
 * lookup to finish on the worker, which frees it.  A numeric host is
 * converted at once without it.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conc/offload.h"
#include "conc/socket.h"
#include "internal.h"
#include "socket.h"
#include "sys/wait.h"

/* ------------------------------------------------------------ addresses */

/* Parses "addr%scope" into an IPv6 address; 1 on success. */
static int parse_in6(const char *host, struct sockaddr_in6 *in6)
{
    char tmp[INET6_ADDRSTRLEN + IF_NAMESIZE + 2];
    size_t n = strlen(host);
    if (n >= sizeof tmp)
        return 0;
    memcpy(tmp, host, n + 1);
    char *pct = strchr(tmp, '%');
    if (pct)
        *pct++ = '\0';
    if (inet_pton(AF_INET6, tmp, &in6->sin6_addr) != 1)
        return 0;
    if (pct) {
        if (!*pct)
            return 0;
        char *end;
        unsigned long v = strtoul(pct, &end, 10);
        if (*end == '\0' && v <= UINT32_MAX)
            in6->sin6_scope_id = (uint32_t)v;
        else if ((in6->sin6_scope_id = if_nametoindex(pct)) == 0)
            return 0;
    }
    return 1;
}

int conc_sockaddr_inet(conc_sockaddr *a, int family, const char *host, int port)
{
    if (!a || port < 0 || port > 65535)
        return -EINVAL;
    if (family != AF_UNSPEC && family != AF_INET && family != AF_INET6)
        return -EINVAL;
    conc_sockaddr t;
    memset(&t, 0, sizeof t);
    bool any = !host || !*host;
    if ((family == AF_INET || family == AF_UNSPEC) &&
        (any || inet_pton(AF_INET, host, &t.u.in.sin_addr) == 1)) {
        t.u.in.sin_family = AF_INET;
        t.u.in.sin_port = htons((uint16_t)port);
        if (any)
            t.u.in.sin_addr.s_addr = htonl(INADDR_ANY);
        t.len = sizeof t.u.in;
    } else if ((family == AF_INET6 || family == AF_UNSPEC) && (any || parse_in6(host, &t.u.in6))) {
        t.u.in6.sin6_family = AF_INET6;
        t.u.in6.sin6_port = htons((uint16_t)port);
        if (any)
            t.u.in6.sin6_addr = in6addr_any;
        t.len = sizeof t.u.in6;
    } else {
        return -EINVAL;
    }
    *a = t;
    return 0;
}

int conc_sockaddr_unix(conc_sockaddr *a, const char *path, size_t len)
{
    if (!a || !path)
        return -EINVAL;
    bool abstract = path[0] == '\0';
    size_t n = abstract ? len : strlen(path);
    if (n == 0 || (abstract && n < 2))
        return -EINVAL;
    if (n > sizeof a->u.un.sun_path - (abstract ? 0 : 1))
        return -ENAMETOOLONG;
    memset(a, 0, sizeof *a);
    a->u.un.sun_family = AF_UNIX;
    memcpy(a->u.un.sun_path, path, n);
    a->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (abstract ? 0 : 1));
    return 0;
}

int conc_sockaddr_str(const conc_sockaddr *a, char *buf, size_t cap)
{
    if (!a || !buf)
        return -EINVAL;
    char out[CONC_SOCKADDR_STRLEN];
    int n;
    switch (a->u.sa.sa_family) {
    case AF_INET: {
        if (a->len < sizeof a->u.in)
            return -EINVAL;
        char h[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &a->u.in.sin_addr, h, sizeof h);
        n = snprintf(out, sizeof out, "%s:%u", h, (unsigned)ntohs(a->u.in.sin_port));
        break;
    }
    case AF_INET6: {
        if (a->len < sizeof a->u.in6)
            return -EINVAL;
        char h[INET6_ADDRSTRLEN];
        inet_ntop(AF_INET6, &a->u.in6.sin6_addr, h, sizeof h);
        if (a->u.in6.sin6_scope_id)
            n = snprintf(out, sizeof out, "[%s%%%u]:%u", h, (unsigned)a->u.in6.sin6_scope_id,
                         (unsigned)ntohs(a->u.in6.sin6_port));
        else
            n = snprintf(out, sizeof out, "[%s]:%u", h, (unsigned)ntohs(a->u.in6.sin6_port));
        break;
    }
    case AF_UNIX: {
        size_t off = offsetof(struct sockaddr_un, sun_path);
        if (a->len < off || a->len > sizeof a->u.un)
            return -EINVAL;
        size_t plen = a->len - off;
        const char *p = a->u.un.sun_path;
        if (plen > 0 && p[0] != '\0') {         /* a path: up to its NUL */
            size_t k = strnlen(p, plen);
            memcpy(out, p, k);
            out[k] = '\0';
            n = (int)k;
        } else {
            for (size_t i = 0; i < plen; i++)
                out[i] = p[i] ? p[i] : '@';
            out[plen] = '\0';
            n = (int)plen;
        }
        break;
    }
    default:
        return -EAFNOSUPPORT;
    }
    if ((size_t)n >= cap) {
        if (cap > 0)
            buf[0] = '\0';
        return -ENOSPC;
    }
    memcpy(buf, out, (size_t)n + 1);
    return n;
}

int conc_sockaddr_port(const conc_sockaddr *a)
{
    if (!a)
        return -EINVAL;
    if (a->u.sa.sa_family == AF_INET)
        return ntohs(a->u.in.sin_port);
    if (a->u.sa.sa_family == AF_INET6)
        return ntohs(a->u.in6.sin6_port);
    return -EAFNOSUPPORT;
}

/* ------------------------------------------------------------- resolver */

/* The resolver's code as conc's: CONC_EAI_*, -ENOMEM, or the errno of
 * EAI_SYSTEM. */
static int eai_code(int eai, int err)
{
    switch (eai) {
    case 0:              return 0;
    case EAI_BADFLAGS:   return CONC_EAI_BADFLAGS;
    case EAI_NONAME:     return CONC_EAI_NONAME;
    case EAI_AGAIN:      return CONC_EAI_AGAIN;
    case EAI_FAIL:       return CONC_EAI_FAIL;
#ifdef EAI_NODATA
    case EAI_NODATA:     return CONC_EAI_NODATA;
#endif
    case EAI_FAMILY:     return CONC_EAI_FAMILY;
    case EAI_SOCKTYPE:   return CONC_EAI_SOCKTYPE;
    case EAI_SERVICE:    return CONC_EAI_SERVICE;
#ifdef EAI_ADDRFAMILY
    case EAI_ADDRFAMILY: return CONC_EAI_ADDRFAMILY;
#endif
    case EAI_OVERFLOW:   return CONC_EAI_OVERFLOW;
    case EAI_MEMORY:     return -ENOMEM;
    case EAI_SYSTEM:     return err > 0 ? -err : -EIO;
    default:             return CONC_EAI_OTHER;
    }
}

struct gai_job {
    char *host, *port;      /* copies (NULL: none) */
    struct addrinfo hints;
    conc_addrinfo *out;     /* the result array */
    int rc;                 /* its count, or the error */
};

/* Turns a list into one block: the entries, then the canonical name. */
static int gai_pack(const struct addrinfo *res, conc_addrinfo **out)
{
    size_t n = 0;
    for (const struct addrinfo *p = res; p; p = p->ai_next)
        if (p->ai_addrlen <= sizeof(((conc_sockaddr *)0)->u))
            n++;
    if (n == 0)
        return CONC_EAI_NODATA;
    const char *canon = res->ai_canonname ? res->ai_canonname : "";
    size_t clen = strlen(canon) + 1;
    conc_addrinfo *a = malloc(n * sizeof *a + clen);
    if (!a)
        return -ENOMEM;
    char *cname = (char *)(a + n);
    memcpy(cname, canon, clen);
    size_t i = 0;
    for (const struct addrinfo *p = res; p; p = p->ai_next) {
        if (p->ai_addrlen > sizeof a[i].addr.u)
            continue;
        memset(&a[i], 0, sizeof a[i]);
        a[i].family = p->ai_family;
        a[i].type = p->ai_socktype;
        a[i].proto = p->ai_protocol;
        a[i].canonname = i == 0 ? cname : cname + clen - 1;
        memcpy(&a[i].addr.u, p->ai_addr, p->ai_addrlen);
        a[i].addr.len = p->ai_addrlen;
        i++;
    }
    *out = a;
    return (int)n;
}

static void gai_run(struct gai_job *j)
{
    struct addrinfo *res = NULL;
    errno = 0;
    int e = getaddrinfo(j->host, j->port, &j->hints, &res);
    j->rc = e ? eai_code(e, errno) : gai_pack(res, &j->out);
    if (res)
        freeaddrinfo(res);
}

static void gai_job_free(struct gai_job *j)
{
    free(j->host);
    free(j->port);
    free(j->out);
    free(j);
}

static void *gai_worker(void *arg)
{
    gai_run(arg);
    return NULL;
}

static void gai_abandon(void *arg, void *result)
{
    (void)result;
    gai_job_free(arg);
}

/* A blocking foreign call runs here when its caller must not block its
 * thread (a hub thread) or has a deadline: on an offload worker. */
static bool must_offload(int64_t deadline)
{
    return conc__wait_ops != NULL || deadline != CONC_NO_DEADLINE;
}

static int resolve(const char *host, const char *port, const struct addrinfo *hints,
                   conc_addrinfo **out, int64_t deadline)
{
    struct gai_job *j = calloc(1, sizeof *j);
    if (!j)
        return -ENOMEM;
    j->hints = *hints;
    if ((host && !(j->host = strdup(host))) || (port && !(j->port = strdup(port)))) {
        gai_job_free(j);
        return -ENOMEM;
    }
    /* A literal needs no lookup (and cannot block): tried first. */
    if (!must_offload(deadline) || (hints->ai_flags & AI_NUMERICHOST)) {
        gai_run(j);
    } else {
        j->hints.ai_flags |= AI_NUMERICHOST;
        gai_run(j);
        j->hints.ai_flags = hints->ai_flags;
        if (j->rc == CONC_EAI_NONAME && host) {
            conc_offload_opts o = CONC_OFFLOAD_OPTS_INIT;
            o.abandon = gai_abandon;
            int r = conc_offload_opts_until(gai_worker, j, NULL, deadline, &o);
            if (r < 0) {
                /* Handed over: the worker frees the job.  Refused
                 * (-ENOMEM, no worker): it is still ours. */
                if (r == -ECANCELED || r == -ETIMEDOUT)
                    return r;
                gai_job_free(j);
                return r;
            }
        }
    }
    int rc = j->rc;
    if (rc > 0) {
        *out = j->out;
        j->out = NULL;
    }
    gai_job_free(j);
    return rc;
}

int conc_socket_getaddrinfo(const char *host, const char *port, int family, int type,
                            int proto, int flags, conc_addrinfo **out)
{
    if (!out || (!host && !port))
        return -EINVAL;
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = family;
    hints.ai_socktype = type;
    hints.ai_protocol = proto;
    hints.ai_flags = flags;
    return resolve(host, port, &hints, out, CONC_NO_DEADLINE);
}

struct gni_job {
    conc_sockaddr addr;
    int flags;
    char host[NI_MAXHOST], serv[NI_MAXSERV];
    size_t hostlen, servlen;
    int rc;
};

static void *gni_worker(void *arg)
{
    struct gni_job *j = arg;
    errno = 0;
    int e = getnameinfo(&j->addr.u.sa, j->addr.len, j->hostlen ? j->host : NULL,
                        (socklen_t)j->hostlen, j->servlen ? j->serv : NULL,
                        (socklen_t)j->servlen, j->flags);
    j->rc = eai_code(e, errno);
    return NULL;
}

static void gni_abandon(void *arg, void *result)
{
    (void)result;
    free(arg);
}

int conc_socket_getnameinfo(const conc_sockaddr *addr, int flags, char *host, size_t hostlen,
                            char *serv, size_t servlen)
{
    if (!addr || addr->len == 0 || addr->len > sizeof addr->u || (!host && !serv) ||
        (!host && hostlen) || (!serv && servlen))
        return -EINVAL;
    struct gni_job *j = calloc(1, sizeof *j);
    if (!j)
        return -ENOMEM;
    j->addr = *addr;
    j->flags = flags;
    /* The worker writes into buffers of its own, as large as the
     * caller's (capped at the resolver's maxima). */
    j->hostlen = host ? (hostlen < sizeof j->host ? hostlen : sizeof j->host) : 0;
    j->servlen = serv ? (servlen < sizeof j->serv ? servlen : sizeof j->serv) : 0;
    bool numeric = (flags & NI_NUMERICHOST) && (flags & NI_NUMERICSERV);
    if (!must_offload(CONC_NO_DEADLINE) || numeric) {
        gni_worker(j);
    } else {
        conc_offload_opts o = CONC_OFFLOAD_OPTS_INIT;
        o.abandon = gni_abandon;
        int r = conc_offload_opts_until(gni_worker, j, NULL, CONC_NO_DEADLINE, &o);
        if (r < 0) {
            if (r != -ECANCELED)
                free(j);
            return r;
        }
    }
    int rc = j->rc;
    if (rc == 0) {
        if (host && hostlen)
            memcpy(host, j->host, strnlen(j->host, j->hostlen - 1) + 1);
        if (serv && servlen)
            memcpy(serv, j->serv, strnlen(j->serv, j->servlen - 1) + 1);
    }
    free(j);
    return rc;
}

/* ------------------------------------------------- connection helpers */

int conc_socket_create_connection_until(conc_socket **out, const char *host, int port,
                                        int64_t deadline, const conc_socket_connect_opts *opts)
{
    conc_socket_connect_opts o;
    CONC__OPTS_COPY(&o, opts, CONC__OPTS_V1(conc_socket_connect_opts, source));
    if (!out || port < 0 || port > 65535 ||
        (o.family != 0 && o.family != AF_INET && o.family != AF_INET6) ||
        (o.source && (o.source->len == 0 || o.source->len > sizeof o.source->u)))
        return -EINVAL;
    char pbuf[8];
    snprintf(pbuf, sizeof pbuf, "%d", port);
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = o.family;
    hints.ai_socktype = SOCK_STREAM;
    conc_addrinfo *ai = NULL;
    int n = resolve(host, pbuf, &hints, &ai, deadline);
    if (n < 0)
        return n;
    int first = 0;
    for (int i = 0; i < n; i++) {
        conc_socket *s = NULL;
        int r = conc_socket_new(&s, ai[i].family, ai[i].type, ai[i].proto);
        if (r == 0 && o.source)
            r = conc_socket_bind(s, o.source);
        if (r == 0)
            r = conc_socket_connect_until(s, &ai[i].addr, deadline);
        if (r == 0) {
            free(ai);
            *out = s;
            return 0;
        }
        conc_socket_free(s);
        if (r == -ETIMEDOUT || r == -ECANCELED) {
            first = r;                  /* no time left for the others */
            break;
        }
        if (!first)
            first = r;
    }
    free(ai);
    return first;
}

int conc_socket_create_connection(conc_socket **out, const char *host, int port,
                                  double timeout, const conc_socket_connect_opts *opts)
{
    int64_t deadline;
    bool poll;
    if (!out || conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    conc_socket *s = NULL;
    int r = (int)conc__timeout_code(poll,
                                    conc_socket_create_connection_until(&s, host, port, deadline,
                                                                        opts));
    if (r < 0)
        return r;
    if (timeout != CONC_FOREVER)
        conc_socket_set_timeout(s, timeout);
    *out = s;
    return 0;
}

int conc_socket_create_server(conc_socket **out, const char *host, int port,
                              const conc_socket_server_opts *opts)
{
    conc_socket_server_opts o;
    CONC__OPTS_COPY(&o, opts, CONC__OPTS_V1(conc_socket_server_opts, dualstack_ipv6));
    if (o.family == 0)
        o.family = AF_INET;
    if (o.type == 0)
        o.type = SOCK_STREAM;
    if (!out || (o.family != AF_INET && o.family != AF_INET6) ||
        (o.type != SOCK_STREAM && o.type != SOCK_DGRAM) || o.backlog < 0 ||
        (o.dualstack_ipv6 && o.family != AF_INET6))
        return -EINVAL;
    conc_sockaddr a;
    int r = conc_sockaddr_inet(&a, o.family, host, port);
    if (r < 0)
        return r;
    conc_socket *s = NULL;
    r = conc_socket_new(&s, o.family, o.type, 0);
    if (r < 0)
        return r;
    r = conc_socket_setsockopt_int(s, SOL_SOCKET, SO_REUSEADDR, 1);
    if (r == 0 && o.family == AF_INET6) {
        r = conc_socket_setsockopt_int(s, IPPROTO_IPV6, IPV6_V6ONLY, o.dualstack_ipv6 ? 0 : 1);
        if (r < 0 && o.dualstack_ipv6)
            r = -ENOTSUP;
    }
    if (r == 0 && o.reuse_port) {
        r = conc__socket_bind_reuse_port(s, &a);
        if (r == -ENOPROTOOPT)
            r = -ENOTSUP;
    } else if (r == 0) {
        r = conc_socket_bind(s, &a);
    }
    if (r == 0 && o.type == SOCK_STREAM)
        r = conc_socket_listen(s, o.backlog ? o.backlog : CONC_SOCKET_BACKLOG);
    if (r < 0) {
        conc_socket_free(s);
        return r;
    }
    *out = s;
    return 0;
}

bool conc_socket_has_dualstack_ipv6(void)
{
    int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    int off = 0;
    bool ok = setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off) == 0;
    close(fd);
    return ok;
}
