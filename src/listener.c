/*
 * listener.c - multiprocessing.connection's Listener, Client and the authkey
 * handshake (conc/listener.h), in libconc_remote.
 *
 * The listener keeps its listening socket and the connections still in
 * their handshake in one epoll set of its own, and waits on that set's
 * descriptor through conc_fd_wait_until (the one wait primitive: a greenlet
 * parks).  epoll_wait itself is only ever called with a zero timeout, to
 * learn which member is ready.  Each handshake is a small state machine on
 * a non-blocking socket, so a peer that stalls holds up no other; it reads
 * exactly the bytes of each handshake message (never ahead), so what the
 * client sends right after the handshake stays in the socket for the
 * conc_conn that takes it over.
 *
 * Wire form of the handshake (each message framed as conc_conn frames it:
 * an 8-byte little-endian length, then the bytes):
 *   challenge  CHALLENGE_TAG + 32 random bytes
 *   answer     HMAC-SHA256(authkey, challenge), 32 bytes
 *   verdict    "#WELCOME#" or "#FAILURE#"
 * The listener delivers its challenge first, then answers the client's.
 */
#include "conc/listener.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <sodium.h>

#include "conc/sync.h"
#include "conc/wait.h"
#include "internal.h"
#include "listener_internal.h"

#define CHALLENGE_TAG "#CONC-CHALLENGE-1#"
#define TAG_LEN (sizeof CHALLENGE_TAG - 1)
#define NONCE_LEN 32
#define CHALLENGE_LEN (TAG_LEN + NONCE_LEN)
#define DIGEST_LEN crypto_auth_hmacsha256_BYTES
#define WELCOME "#WELCOME#"
#define FAILURE "#FAILURE#"
#define VERDICT_LEN (sizeof WELCOME - 1)
#define HDR 8
#define DEFAULT_PENDING 64

_Static_assert(CHALLENGE_LEN <= CONC_LISTENER_HANDSHAKE_MAX, "challenge fits");

static int sodium_ready(void)
{
    /* sodium_init is safe to call from several threads and more than once. */
    return sodium_init() < 0 ? -ENOMEM : 0;
}

static int key_check(const void *key, size_t keylen)
{
    return key && keylen > 0 && keylen <= CONC_AUTHKEY_MAX ? 0 : -EINVAL;
}

static void hmac(unsigned char out[DIGEST_LEN], const void *key, size_t keylen,
                 const unsigned char *msg, size_t len)
{
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, key, keylen);
    crypto_auth_hmacsha256_update(&st, msg, len);
    crypto_auth_hmacsha256_final(&st, out);
    sodium_memzero(&st, sizeof st);
}

static void make_challenge(unsigned char out[CHALLENGE_LEN])
{
    memcpy(out, CHALLENGE_TAG, TAG_LEN);
    randombytes_buf(out + TAG_LEN, NONCE_LEN);
}

/* ---------------------------------------------- handshake on a conc_conn */

static int hs_recv(conc_conn *c, unsigned char *buf, int64_t deadline)
{
    ssize_t n = conc_conn_recv_bytes_until(c, buf, CONC_LISTENER_HANDSHAKE_MAX, deadline);
    if (n == -EMSGSIZE)
        return -ECONNABORTED;
    return (int)n;
}

CONC_API int conc_conn_deliver_challenge_until(conc_conn *c, const void *key, size_t keylen,
                                               int64_t deadline)
{
    if (!c || key_check(key, keylen))
        return -EINVAL;
    int r = sodium_ready();
    if (r)
        return r;
    unsigned char ch[CHALLENGE_LEN], want[DIGEST_LEN], got[CONC_LISTENER_HANDSHAKE_MAX];
    make_challenge(ch);
    hmac(want, key, keylen, ch, sizeof ch);
    r = conc_conn_send_bytes_until(c, ch, sizeof ch, deadline);
    if (r)
        return r;
    int n = hs_recv(c, got, deadline);
    if (n < 0)
        return n;
    bool ok = n == DIGEST_LEN && sodium_memcmp(got, want, DIGEST_LEN) == 0;
    r = conc_conn_send_bytes_until(c, ok ? WELCOME : FAILURE, VERDICT_LEN, deadline);
    if (!ok)
        return -EACCES;
    return r;
}

CONC_API int conc_conn_answer_challenge_until(conc_conn *c, const void *key, size_t keylen,
                                              int64_t deadline)
{
    if (!c || key_check(key, keylen))
        return -EINVAL;
    int r = sodium_ready();
    if (r)
        return r;
    unsigned char buf[CONC_LISTENER_HANDSHAKE_MAX], digest[DIGEST_LEN];
    int n = hs_recv(c, buf, deadline);
    if (n < 0)
        return n;
    if (n != (int)CHALLENGE_LEN || memcmp(buf, CHALLENGE_TAG, TAG_LEN) != 0)
        return -ECONNABORTED;
    hmac(digest, key, keylen, buf, CHALLENGE_LEN);
    r = conc_conn_send_bytes_until(c, digest, sizeof digest, deadline);
    if (r)
        return r;
    n = hs_recv(c, buf, deadline);
    if (n < 0)
        return n;
    if (n == (int)VERDICT_LEN && memcmp(buf, WELCOME, VERDICT_LEN) == 0)
        return 0;
    if (n == (int)VERDICT_LEN && memcmp(buf, FAILURE, VERDICT_LEN) == 0)
        return -EACCES;
    return -ECONNABORTED;
}

CONC_API int conc_conn_deliver_challenge(conc_conn *c, const void *key, size_t keylen,
                                         double timeout)
{
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return (int)conc__timeout_code(poll, conc_conn_deliver_challenge_until(c, key, keylen,
                                                                           deadline));
}

CONC_API int conc_conn_answer_challenge(conc_conn *c, const void *key, size_t keylen,
                                        double timeout)
{
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return (int)conc__timeout_code(poll, conc_conn_answer_challenge_until(c, key, keylen,
                                                                          deadline));
}

/* ---------------------------------------------------------- addresses */

static bool all_digits(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return false;
    return true;
}

static int parse_port(const char *s)
{
    if (!all_digits(s) || strlen(s) > 5)
        return -EINVAL;
    int p = atoi(s);
    return p <= 65535 ? p : -EINVAL;
}

/* The SERVICE of HOST:SERVICE: a port number, or a name of the services
 * database (/etc/services: "http", "ftp") for TCP.  Returns the port;
 * -EINVAL for an empty or malformed one (a number past 65535, a name with
 * a space or over 64 bytes); CONC_EAI_SERVICE for a name not known. */
static int parse_service(const char *s)
{
    if (!*s || all_digits(s))
        return parse_port(s);
    size_t n = strlen(s);
    if (n > 64)
        return -EINVAL;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '-' && s[i] != '_' && s[i] != '.' &&
            s[i] != '+')
            return -EINVAL;
    struct servent se, *res = NULL;
    char buf[1024];
    if (getservbyname_r(s, "tcp", &se, buf, sizeof buf, &res) != 0 || !res)
        return CONC_EAI_SERVICE;
    return ntohs((uint16_t)res->s_port);
}

static int inet_addr_of(conc_sockaddr *out, const char *host, int port)
{
    if (conc_sockaddr_inet(out, AF_UNSPEC, host, port) == 0)
        return 0;
    if (!*host)
        return -EINVAL;
    conc_addrinfo *ai = NULL;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    int n = conc_socket_getaddrinfo(host, ps, AF_UNSPEC, SOCK_STREAM, 0, AI_NUMERICSERV, &ai);
    if (n < 0)
        return n;
    *out = ai[0].addr;
    free(ai);
    return 0;
}

CONC_API int conc_address_parse(conc_sockaddr *out, const char *address)
{
    if (!out || !address || !*address)
        return -EINVAL;
    size_t len = strlen(address);
    if (address[0] == '@') {
        char name[sizeof out->u.un.sun_path];
        if (len > sizeof name - 1)
            return -ENAMETOOLONG;
        name[0] = '\0';
        memcpy(name + 1, address + 1, len - 1);
        return conc_sockaddr_unix(out, name, len);
    }
    /* A path has a '/' (or is a bare file name: no ':' at all); any other
     * text with a ':' is HOST:SERVICE. */
    if (strchr(address, '/') || !strchr(address, ':'))
        return conc_sockaddr_unix(out, address, 0);
    if (address[0] == '[') {
        const char *close = strchr(address, ']');
        if (!close || close[1] != ':')
            return -EINVAL;
        int port = parse_service(close + 2);
        if (port < 0)
            return port;
        char host[INET6_ADDRSTRLEN + 64];
        size_t hl = (size_t)(close - address - 1);
        if (hl == 0 || hl >= sizeof host)
            return -EINVAL;
        memcpy(host, address + 1, hl);
        host[hl] = '\0';
        return conc_sockaddr_inet(out, AF_INET6, host, port);
    }
    const char *colon = strrchr(address, ':');
    size_t hl = (size_t)(colon - address);
    if (memchr(address, ':', hl))
        return -EINVAL;                 /* an IPv6 literal needs its brackets */
    int port = parse_service(colon + 1);
    if (port < 0)
        return port;
    char *host = malloc(hl + 1);
    if (!host)
        return -ENOMEM;
    memcpy(host, address, hl);
    host[hl] = '\0';
    int r = inet_addr_of(out, host, port);
    free(host);
    return r;
}

/* ------------------------------------------------------------ listener */

enum hs_stage {
    ST_SEND_CHALLENGE,  /* our challenge goes out */
    ST_RECV_ANSWER,     /* the client's HMAC of it */
    ST_SEND_VERDICT,    /* WELCOME */
    ST_RECV_CHALLENGE,  /* the client's challenge */
    ST_SEND_ANSWER,     /* our HMAC of it */
    ST_RECV_VERDICT,    /* the client's WELCOME or FAILURE */
};

struct hs {
    int fd;
    enum hs_stage stage;
    uint32_t events;            /* what epoll watches for it */
    int64_t deadline;
    conc_sockaddr peer;
    unsigned char challenge[CHALLENGE_LEN];
    unsigned char out[HDR + CONC_LISTENER_HANDSHAKE_MAX];
    size_t out_len, out_off;
    unsigned char in[HDR + CONC_LISTENER_HANDSHAKE_MAX];
    size_t in_off, in_need;
};

struct conc_listener {
    conc_lock lock;             /* one accept at a time (the pending table) */
    int fd;                     /* listening socket, -1 when closed */
    int epfd;
    int wake_fd;                /* readable: accept ends with -EINTR; or -1 */
    bool closed;
    bool listening_watched;     /* the listening socket is in the epoll set */
    int family;
    unsigned char *key;
    size_t keylen;
    int64_t hs_timeout;         /* ns; -1: none */
    size_t max_message;
    unsigned max_pending;
    struct hs **pending;
    unsigned npending;
    conc_sockaddr bound;
    conc_sockaddr last;
    bool have_last;
    char *path;                 /* the Unix socket file conc made */
    char *dir;                  /* the private directory conc made */
    dev_t dev;
    ino_t ino;
    pid_t owner;
};

static void put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static void hs_set_out(struct hs *h, const void *msg, size_t len)
{
    put_le64(h->out, len);
    memcpy(h->out + HDR, msg, len);
    h->out_len = HDR + len;
    h->out_off = 0;
}

static void hs_expect(struct hs *h)
{
    h->in_off = 0;
    h->in_need = HDR;
}

static void hs_drop(conc_listener *l, unsigned i)
{
    struct hs *h = l->pending[i];
    epoll_ctl(l->epfd, EPOLL_CTL_DEL, h->fd, NULL);
    close(h->fd);
    sodium_memzero(h, sizeof *h);
    free(h);
    l->pending[i] = l->pending[--l->npending];
}

/*
 * One step of a handshake as far as the socket allows.  Returns 1 when it
 * finished (authenticated), 0 when it waits for the socket (h->events set),
 * -EACCES for a wrong key, -ECONNABORTED for anything else that ends it.
 */
static int hs_run(conc_listener *l, struct hs *h)
{
    for (;;) {
        bool sending = h->stage == ST_SEND_CHALLENGE || h->stage == ST_SEND_VERDICT ||
                       h->stage == ST_SEND_ANSWER;
        if (sending) {
            while (h->out_off < h->out_len) {
                ssize_t n = send(h->fd, h->out + h->out_off, h->out_len - h->out_off,
                                 MSG_NOSIGNAL | MSG_DONTWAIT);
                if (n < 0 && errno == EINTR)
                    continue;
                if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                    h->events = EPOLLOUT;
                    return 0;
                }
                if (n <= 0)
                    return -ECONNABORTED;
                h->out_off += (size_t)n;
            }
            h->stage++;
            hs_expect(h);
            if (h->stage > ST_RECV_VERDICT)
                return 1;
            continue;
        }
        while (h->in_off < h->in_need) {
            ssize_t n = recv(h->fd, h->in + h->in_off, h->in_need - h->in_off, MSG_DONTWAIT);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                h->events = EPOLLIN;
                return 0;
            }
            if (n <= 0)
                return -ECONNABORTED;   /* gone, or reset, mid-handshake */
            h->in_off += (size_t)n;
            if (h->in_off == HDR && h->in_need == HDR) {
                uint64_t len = get_le64(h->in);
                if (len > CONC_LISTENER_HANDSHAKE_MAX)
                    return -ECONNABORTED;
                h->in_need = HDR + (size_t)len;
            }
        }
        const unsigned char *msg = h->in + HDR;
        size_t len = h->in_need - HDR;
        if (h->stage == ST_RECV_ANSWER) {
            unsigned char want[DIGEST_LEN];
            hmac(want, l->key, l->keylen, h->challenge, CHALLENGE_LEN);
            bool ok = len == DIGEST_LEN && sodium_memcmp(msg, want, DIGEST_LEN) == 0;
            if (!ok) {
                /* Tell the client, as far as the socket takes it at once. */
                unsigned char f[HDR + VERDICT_LEN];
                put_le64(f, VERDICT_LEN);
                memcpy(f + HDR, FAILURE, VERDICT_LEN);
                ssize_t ignored = send(h->fd, f, sizeof f, MSG_NOSIGNAL | MSG_DONTWAIT);
                (void)ignored;
                return -EACCES;
            }
            hs_set_out(h, WELCOME, VERDICT_LEN);
        } else if (h->stage == ST_RECV_CHALLENGE) {
            if (len != CHALLENGE_LEN || memcmp(msg, CHALLENGE_TAG, TAG_LEN) != 0)
                return -ECONNABORTED;
            unsigned char d[DIGEST_LEN];
            hmac(d, l->key, l->keylen, msg, CHALLENGE_LEN);
            hs_set_out(h, d, DIGEST_LEN);
        } else { /* ST_RECV_VERDICT */
            if (len == VERDICT_LEN && memcmp(msg, WELCOME, VERDICT_LEN) == 0)
                return 1;
            if (len == VERDICT_LEN && memcmp(msg, FAILURE, VERDICT_LEN) == 0)
                return -EACCES;
            return -ECONNABORTED;
        }
        h->stage++;
    }
}

/* The epoll tag of the wake descriptor (conc__listener_set_wake). */
static char wake_tag;

/* Watch or stop watching the listening socket (full pending table). */
static int watch_listening(conc_listener *l, bool on)
{
    if (l->listening_watched == on)
        return 0;
    struct epoll_event ev = { .events = on ? EPOLLIN : 0, .data.ptr = NULL };
    if (epoll_ctl(l->epfd, EPOLL_CTL_MOD, l->fd, &ev) < 0)
        return -errno;
    l->listening_watched = on;
    return 0;
}

static void set_nodelay(int fd, int family)
{
    if (family == AF_INET || family == AF_INET6) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
}

/* Wrap an authenticated (or unauthenticated) socket as the caller's conn. */
static int hand_out(conc_listener *l, int fd, const conc_sockaddr *peer, conc_conn **out)
{
    /* Sockets stay in the mode they have: conc_conn uses MSG_DONTWAIT. */
    conc_conn *c;
    int r = conc_conn_from_fd(&c, fd, 0);
    if (r) {
        close(fd);
        return r;
    }
    if (l->max_message)
        conc_conn_set_max_size(c, l->max_message);
    l->last = *peer;
    l->have_last = true;
    *out = c;
    return 0;
}

static int accept_one(conc_listener *l, int *fd, conc_sockaddr *peer)
{
    for (;;) {
        peer->len = sizeof peer->u;
        int s = accept4(l->fd, &peer->u.sa, &peer->len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (s >= 0) {
            set_nodelay(s, l->family);
            *fd = s;
            return 0;
        }
        if (errno == EINTR || errno == ECONNABORTED)
            continue;
        if (errno == EWOULDBLOCK)
            return -EAGAIN;
        return -errno;
    }
}

/* Take the connections waiting in the kernel's queue into handshakes.
 * Returns 0, or an error of accept (-EMFILE...). */
static int take_new(conc_listener *l, int64_t now)
{
    while (l->npending < l->max_pending) {
        int fd;
        conc_sockaddr peer;
        int r = accept_one(l, &fd, &peer);
        if (r == -EAGAIN)
            return 0;
        if (r)
            return r;
        struct hs *h = calloc(1, sizeof *h);
        if (!h) {
            close(fd);
            return -ENOMEM;
        }
        h->fd = fd;
        h->peer = peer;
        h->deadline = l->hs_timeout < 0 ? CONC_NO_DEADLINE : now + l->hs_timeout;
        h->stage = ST_SEND_CHALLENGE;
        make_challenge(h->challenge);
        hs_set_out(h, h->challenge, CHALLENGE_LEN);
        h->events = EPOLLOUT;
        struct epoll_event ev = { .events = EPOLLOUT, .data.ptr = h };
        if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
            r = -errno;
            close(fd);
            free(h);
            return r;
        }
        l->pending[l->npending++] = h;
    }
    return watch_listening(l, false);
}

static int pending_index(conc_listener *l, struct hs *h)
{
    for (unsigned i = 0; i < l->npending; i++)
        if (l->pending[i] == h)
            return (int)i;
    return -1;
}

/* Run the handshake of pending[i]; 1 with *out set when done, 0 when it
 * waits, an error when it ended (the connection is dropped). */
static int advance(conc_listener *l, unsigned i, conc_conn **out)
{
    struct hs *h = l->pending[i];
    uint32_t before = h->events;
    int r = hs_run(l, h);
    if (r == 0) {
        if (h->events != before) {
            struct epoll_event ev = { .events = h->events, .data.ptr = h };
            if (epoll_ctl(l->epfd, EPOLL_CTL_MOD, h->fd, &ev) < 0) {
                hs_drop(l, i);
                watch_listening(l, true);
                return -ECONNABORTED;
            }
        }
        return 0;
    }
    if (r < 0) {
        hs_drop(l, i);
        watch_listening(l, true);
        return r;
    }
    int fd = h->fd;
    conc_sockaddr peer = h->peer;
    epoll_ctl(l->epfd, EPOLL_CTL_DEL, fd, NULL);
    h->fd = -1;
    sodium_memzero(h, sizeof *h);
    free(h);
    l->pending[i] = l->pending[--l->npending];
    watch_listening(l, true);
    r = hand_out(l, fd, &peer, out);
    return r ? r : 1;
}

static int accept_plain(conc_listener *l, conc_conn **out, int64_t deadline)
{
    for (;;) {
        int fd;
        conc_sockaddr peer;
        int r = accept_one(l, &fd, &peer);
        if (r == 0)
            return hand_out(l, fd, &peer, out);
        if (r != -EAGAIN)
            return r;
        r = conc_fd_wait_until(l->fd, POLLIN, deadline);
        if (r)
            return r;
    }
}

static int accept_locked(conc_listener *l, conc_conn **out, int64_t deadline)
{
    if (l->closed)
        return -EPIPE;
    if (!l->key && l->wake_fd < 0)
        return accept_plain(l, out, deadline);
    for (;;) {
        int64_t now = conc_now();
        /* Handshakes past their time are dropped, one report each. */
        int64_t next = deadline;
        for (unsigned i = 0; i < l->npending; i++) {
            int64_t d = l->pending[i]->deadline;
            if (d != CONC_NO_DEADLINE && d <= now) {
                hs_drop(l, i);
                watch_listening(l, true);
                return -ECONNABORTED;
            }
            if (d != CONC_NO_DEADLINE && (next == CONC_NO_DEADLINE || d < next))
                next = d;
        }
        struct epoll_event evs[16];
        int n = epoll_wait(l->epfd, evs, 16, 0);
        if (n < 0 && errno != EINTR)
            return -errno;
        int failed = 0;
        for (int k = 0; k < n; k++) {
            struct hs *h = evs[k].data.ptr;
            if ((void *)h == &wake_tag)
                return -EINTR;          /* the handshakes go on at the next call */
            if (!h && !l->key) {
                int fd;
                conc_sockaddr peer;
                int r = accept_one(l, &fd, &peer);
                if (r == 0)
                    return hand_out(l, fd, &peer, out);
                if (r != -EAGAIN)
                    failed = r;
                continue;
            }
            if (!h) {
                /* An accept that failed (out of descriptors) is reported
                 * after the handshakes of this round ran: one that ends
                 * gives its descriptor back, which returning at once,
                 * before them, would never let happen. */
                int r = take_new(l, now);
                if (r)
                    failed = r;
                continue;
            }
            int i = pending_index(l, h);
            if (i < 0)
                continue;
            int r = advance(l, (unsigned)i, out);
            if (r == 1)
                return 0;
            if (r < 0)
                return r;
        }
        if (failed)
            return failed;
        /* New handshakes took their first step in take_new's epoll entry:
         * they go out at the next round (EPOLLOUT is ready at once). */
        if (n > 0)
            continue;
        int r = conc_fd_wait_until(l->epfd, POLLIN, next);
        if (r == -ETIMEDOUT) {
            if (next == deadline)
                return -ETIMEDOUT;
            continue;   /* a handshake's time is up: dropped above */
        }
        if (r)
            return r;
    }
}

int conc__listener_set_wake(conc_listener *l, int fd)
{
    if (!l || fd < 0 || l->closed || l->wake_fd >= 0)
        return -EINVAL;
    if (l->epfd < 0) {                  /* no authkey: a set for the two */
        l->epfd = epoll_create1(EPOLL_CLOEXEC);
        if (l->epfd < 0)
            return -errno;
        struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
        if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->fd, &ev) < 0) {
            int e = -errno;
            close(l->epfd);
            l->epfd = -1;
            return e;
        }
        l->listening_watched = true;
    }
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &wake_tag };
    if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
        return -errno;
    l->wake_fd = fd;
    return 0;
}

CONC_API int conc_listener_accept_until(conc_listener *l, conc_conn **out, int64_t deadline)
{
    if (!l || !out)
        return -EINVAL;
    if (l->closed)
        return -EPIPE;
    /* Accepts from several threads (or greenlets) take turns: the one
     * inside runs every handshake in progress, and hands out what it
     * finished first; the others wait here, parked, until their deadline. */
    int r = conc_lock_acquire_until(&l->lock, deadline);
    if (r)
        return r;
    r = accept_locked(l, out, deadline);
    conc_lock_release(&l->lock);
    return r;
}

CONC_API int conc_listener_accept(conc_listener *l, conc_conn **out, double timeout)
{
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return (int)conc__timeout_code(poll, conc_listener_accept_until(l, out, deadline));
}

/* The private directory's name carries its maker's pid and start time
 * (clock ticks after boot, /proc/PID/stat's 22nd field):
 * /tmp/conc-listener-PID-START-XXXXXX.  A process killed while it held one
 * cannot remove it; the next default-address listener on the machine does,
 * once it sees that its maker is gone. */
#define PRIVATE_DIR "/tmp"
#define PRIVATE_PREFIX "conc-listener-"

/* The start time of a process, or 0 when it cannot be read. */
static unsigned long long proc_start(pid_t pid)
{
    char path[48], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    /* The command name in parentheses may hold anything: fields count from
     * the last ')'; the state is field 3, the start time field 22. */
    char *p = strrchr(buf, ')');
    if (!p)
        return 0;
    p++;
    for (int field = 2; field < 22; field++) {
        p = strchr(p, ' ');
        if (!p)
            return 0;
        p++;
    }
    return strtoull(p, NULL, 10);
}

/* Reads PID-START-XXXXXX after the prefix; false for any other name
 * (such as the pid-less directories of earlier versions). */
static bool parse_private_name(const char *name, pid_t *pid, unsigned long long *start)
{
    if (strncmp(name, PRIVATE_PREFIX, sizeof PRIVATE_PREFIX - 1) != 0)
        return false;
    const char *p = name + sizeof PRIVATE_PREFIX - 1;
    char *end;
    if (*p < '1' || *p > '9')
        return false;
    unsigned long v = strtoul(p, &end, 10);
    if (*end != '-' || v > 0x7fffffffUL)
        return false;
    p = end + 1;
    if (*p < '0' || *p > '9')
        return false;
    unsigned long long s = strtoull(p, &end, 10);
    if (*end != '-' || strlen(end + 1) != 6)
        return false;
    *pid = (pid_t)v;
    *start = s;
    return true;
}

/* True when the socket at dirfd/socket is one nobody listens on. */
static bool socket_refuses(const char *name)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int n = snprintf(sa.sun_path, sizeof sa.sun_path, PRIVATE_DIR "/%s/socket", name);
    if (n < 0 || (size_t)n >= sizeof sa.sun_path)
        return false;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    int r = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    int e = errno;
    close(fd);
    return r < 0 && e == ECONNREFUSED;
}

/* Removes the private directories (and their sockets) whose makers are
 * gone: only directories of this user, named as above, whose pid is not
 * running or runs a later process (another start time), and whose socket,
 * if there is one, refuses connections (so a live listener whose pid means
 * nothing here, in another pid namespace sharing /tmp, keeps its own). */
static void sweep_private_dirs(void)
{
    int dfd = open(PRIVATE_DIR, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return;
    DIR *d = fdopendir(dfd);
    if (!d) {
        close(dfd);
        return;
    }
    uid_t me = geteuid();
    struct dirent *e;
    while ((e = readdir(d))) {
        pid_t pid;
        unsigned long long start;
        if (!parse_private_name(e->d_name, &pid, &start))
            continue;
        struct stat st;
        if (fstatat(dfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
            !S_ISDIR(st.st_mode) || st.st_uid != me)
            continue;
        bool gone = kill(pid, 0) < 0 && errno == ESRCH;
        if (!gone) {
            unsigned long long now = proc_start(pid);
            gone = now && start && now != start;
        }
        if (!gone)
            continue;
        int sub = openat(dfd, e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (sub < 0)
            continue;
        struct stat ss;
        bool has_socket = fstatat(sub, "socket", &ss, AT_SYMLINK_NOFOLLOW) == 0;
        if (has_socket && S_ISSOCK(ss.st_mode) && socket_refuses(e->d_name))
            unlinkat(sub, "socket", 0);
        close(sub);
        unlinkat(dfd, e->d_name, AT_REMOVEDIR);   /* only if it is empty now */
    }
    closedir(d);
}

static int make_private_dir(char **dir, conc_sockaddr *addr, char **path)
{
    sweep_private_dirs();
    pid_t self = getpid();
    char tmpl[96];
    snprintf(tmpl, sizeof tmpl, PRIVATE_DIR "/" PRIVATE_PREFIX "%d-%llu-XXXXXX",
             (int)self, proc_start(self));
    if (!mkdtemp(tmpl))
        return -errno;
    size_t n = strlen(tmpl) + sizeof "/socket";
    char *p = malloc(n);
    char *d = strdup(tmpl);
    if (!p || !d) {
        free(p);
        free(d);
        rmdir(tmpl);
        return -ENOMEM;
    }
    snprintf(p, n, "%s/socket", tmpl);
    int r = conc_sockaddr_unix(addr, p, 0);
    if (r) {
        free(p);
        free(d);
        rmdir(tmpl);
        return r;
    }
    *dir = d;
    *path = p;
    return 0;
}

static void remove_files(conc_listener *l)
{
    if (l->owner == getpid()) {
        struct stat st;
        /* Only the socket conc bound: not a file someone put there since. */
        if (l->path && lstat(l->path, &st) == 0 && S_ISSOCK(st.st_mode) &&
            st.st_dev == l->dev && st.st_ino == l->ino)
            unlink(l->path);
        if (l->dir)
            rmdir(l->dir);
    }
    free(l->path);
    free(l->dir);
    l->path = l->dir = NULL;
}

CONC_API int conc_listener_close(conc_listener *l)
{
    if (!l)
        return -EINVAL;
    if (l->closed)
        return 0;
    l->closed = true;
    /* A forked copy shares the epoll set with its maker: it closes its
     * descriptors without taking them out of the set. */
    bool owner = l->owner == getpid();
    while (l->npending) {
        if (owner) {
            hs_drop(l, l->npending - 1);
        } else {
            struct hs *h = l->pending[--l->npending];
            close(h->fd);
            sodium_memzero(h, sizeof *h);
            free(h);
        }
    }
    if (l->fd >= 0)
        close(l->fd);
    if (l->epfd >= 0)
        close(l->epfd);
    l->fd = l->epfd = -1;
    remove_files(l);
    return 0;
}

CONC_API void conc_listener_free(conc_listener *l)
{
    if (!l)
        return;
    conc_listener_close(l);
    if (l->key) {
        sodium_memzero(l->key, l->keylen);
        free(l->key);
    }
    free(l->pending);
    free(l);
}

CONC_API int conc_listener_new(conc_listener **out, const char *address,
                               const conc_listener_opts *opts)
{
    conc_listener_opts o;
    CONC__OPTS_COPY(&o, opts, CONC__OPTS_V1(conc_listener_opts, max_pending));
    if (!out)
        return -EINVAL;
    if (o.authkey && key_check(o.authkey, o.authkey_len))
        return -EINVAL;
    if (!o.authkey && o.authkey_len)
        return -EINVAL;
    if (o.max_message > CONC_PIPE_MSG_MAX)
        return -EINVAL;
    int64_t hs_timeout;
    if (o.handshake_timeout == 0)
        hs_timeout = (int64_t)(CONC_LISTENER_HANDSHAKE_TIMEOUT * 1e9);
    else if (conc__timeout_kind(o.handshake_timeout) == CONC__TIMEOUT_FOREVER)
        hs_timeout = -1;
    else if (conc__timeout_kind(o.handshake_timeout) == CONC__TIMEOUT_TIMED &&
             o.handshake_timeout < 1e9)
        hs_timeout = (int64_t)(o.handshake_timeout * 1e9);
    else
        return -EINVAL;
    int r = sodium_ready();
    if (r)
        return r;

    conc_listener *l = calloc(1, sizeof *l);
    if (!l)
        return -ENOMEM;
    l->fd = l->epfd = l->wake_fd = -1;
    conc_lock_init(&l->lock, 0);
    l->owner = getpid();
    l->hs_timeout = hs_timeout;
    l->max_message = o.max_message;
    l->max_pending = o.max_pending ? o.max_pending : DEFAULT_PENDING;
    conc_sockaddr addr;
    if (address)
        r = conc_address_parse(&addr, address);
    else
        r = make_private_dir(&l->dir, &addr, &l->path);
    if (r)
        goto fail;
    l->family = addr.u.sa.sa_family;
    if (l->family != AF_UNIX && !o.authkey && !o.insecure) {
        r = -EPERM;
        goto fail;
    }
    if (o.authkey) {
        l->key = malloc(o.authkey_len);
        if (!l->key) {
            r = -ENOMEM;
            goto fail;
        }
        memcpy(l->key, o.authkey, o.authkey_len);
        l->keylen = o.authkey_len;
        l->pending = calloc(l->max_pending, sizeof *l->pending);
        if (!l->pending) {
            r = -ENOMEM;
            goto fail;
        }
    }
    l->fd = socket(l->family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (l->fd < 0) {
        r = -errno;
        goto fail;
    }
    if (l->family != AF_UNIX) {
        int one = 1;
        setsockopt(l->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    }
    if (bind(l->fd, &addr.u.sa, addr.len) < 0) {
        r = -errno;
        goto fail;
    }
    bool path_socket = l->family == AF_UNIX && addr.len > offsetof(struct sockaddr_un, sun_path) &&
                       addr.u.un.sun_path[0] != '\0';
    if (path_socket) {
        if (!l->path) {
            l->path = strdup(addr.u.un.sun_path);
            if (!l->path) {
                unlink(addr.u.un.sun_path);
                r = -ENOMEM;
                goto fail;
            }
        }
        struct stat st;
        if (chmod(l->path, 0600) < 0 || lstat(l->path, &st) < 0) {
            r = -errno;
            unlink(l->path);
            goto fail;
        }
        l->dev = st.st_dev;
        l->ino = st.st_ino;
    }
    if (listen(l->fd, o.backlog > 0 ? o.backlog : CONC_SOCKET_BACKLOG) < 0) {
        r = -errno;
        goto fail;
    }
    l->bound.len = sizeof l->bound.u;
    if (getsockname(l->fd, &l->bound.u.sa, &l->bound.len) < 0) {
        r = -errno;
        goto fail;
    }
    if (l->key) {
        l->epfd = epoll_create1(EPOLL_CLOEXEC);
        if (l->epfd < 0) {
            r = -errno;
            goto fail;
        }
        struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
        if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->fd, &ev) < 0) {
            r = -errno;
            goto fail;
        }
        l->listening_watched = true;
    }
    *out = l;
    return 0;
fail:
    conc_listener_free(l);
    return r;
}

CONC_API int conc_listener_address(const conc_listener *l, char *buf, size_t cap)
{
    if (!l || !buf)
        return -EINVAL;
    return conc_sockaddr_str(&l->bound, buf, cap);
}

CONC_API int conc_listener_last_accepted(const conc_listener *l, conc_sockaddr *out)
{
    if (!l || !out)
        return -EINVAL;
    if (!l->have_last)
        return -ENOTCONN;
    *out = l->last;
    return 0;
}

CONC_API int conc_listener_fd(const conc_listener *l)
{
    if (!l)
        return -EINVAL;
    return l->closed ? -EPIPE : l->fd;
}

/* -------------------------------------------------------------- client */

static int map_hs_error(int r)
{
    return r == -EPIPE || r == -ECONNRESET ? -ECONNABORTED : r;
}

int conc__client_connect_until(conc_conn **out, const char *address,
                               const conc_client_opts *opts, int64_t deadline)
{
    conc_client_opts o;
    CONC__OPTS_COPY(&o, opts, CONC__OPTS_V1(conc_client_opts, max_message));
    if (!out || !address)
        return -EINVAL;
    if (o.authkey ? key_check(o.authkey, o.authkey_len) : o.authkey_len != 0)
        return -EINVAL;
    if (o.max_message > CONC_PIPE_MSG_MAX)
        return -EINVAL;
    conc_sockaddr addr;
    int r = conc_address_parse(&addr, address);
    if (r)
        return r;
    conc_socket *s;
    r = conc_socket_new(&s, addr.u.sa.sa_family, SOCK_STREAM, 0);
    if (r)
        return r;
    r = conc_socket_connect_until(s, &addr, deadline);
    if (r) {
        conc_socket_free(s);
        return r;
    }
    int fd = conc_socket_detach(s);
    conc_socket_free(s);
    if (fd < 0)
        return fd;
    set_nodelay(fd, addr.u.sa.sa_family);
    conc_conn *c;
    r = conc_conn_from_fd(&c, fd, 0);
    if (r) {
        close(fd);
        return r;
    }
    if (o.authkey) {
        r = conc_conn_answer_challenge_until(c, o.authkey, o.authkey_len, deadline);
        if (!r)
            r = conc_conn_deliver_challenge_until(c, o.authkey, o.authkey_len, deadline);
        if (r) {
            conc_conn_free(c);
            return r;
        }
    }
    if (o.max_message)
        conc_conn_set_max_size(c, o.max_message);
    *out = c;
    return 0;
}

CONC_API int conc_client_connect_until(conc_conn **out, const char *address,
                                       const conc_client_opts *opts, int64_t deadline)
{
    return map_hs_error(conc__client_connect_until(out, address, opts, deadline));
}

CONC_API int conc_client_connect(conc_conn **out, const char *address,
                                 const conc_client_opts *opts, double timeout)
{
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return (int)conc__timeout_code(poll, conc_client_connect_until(out, address, opts,
                                                                   deadline));
}
