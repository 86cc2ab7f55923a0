/*
 * selector.c - Python's select and selectors modules (conc/selector.h).
 *
 * The selector keeps its keys in a dense array (unregister moves the last
 * one into the hole) and finds a descriptor's key through a table indexed
 * by descriptor number.  The epoll backend mirrors the keys in an epoll
 * instance; the poll and select backends build a pollfd array at each
 * select and wait through the wait layer (conc__wait_fds) - the select
 * backend is the poll backend with select()'s descriptor limit, so the two
 * report the same events.
 *
 * Closed descriptors (see the header): every key remembers the identity
 * (device and inode) of the file it was registered for.  A descriptor
 * about to be reported is checked against it (one fstat); a number that no
 * longer refers to that file, or that poll() calls invalid, makes the key
 * "gone": never reported, left out of the poll set, and for epoll the
 * instance is rebuilt without it (an old file kept open by a copy of the
 * descriptor elsewhere would otherwise stay in the set and keep reporting,
 * and epoll_ctl can no longer name it).  Every epoll event carries its
 * key's generation, so an event of a file the selector no longer wants is
 * recognised and triggers the same rebuild.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conc/selector.h"
#include "internal.h"
#include "sys/wait.h"

struct key {
    conc_selector_key k;
    dev_t dev;
    ino_t ino;
    uint32_t gen;           /* the epoll events' tag of this registration */
    bool gone;              /* the number no longer names the file */
    bool unknown;           /* dev and ino not taken (registered or
                               modified with the checks off) */
};

struct conc_selector {
    conc_selector_backend backend;
    int epfd;               /* epoll backend; -1 otherwise */
    bool closed;
    bool trust;             /* conc_selector_set_check_files(false) */
    struct key *keys;
    size_t nkeys, cap;
    uint32_t *index;        /* fd -> position in keys + 1 (0: none) */
    size_t index_cap;
    uint32_t next_gen;
    struct pollfd *pfds;    /* poll/select: the set of the last select */
    size_t pfds_cap;
    size_t rotate;          /* poll/select: where the next report starts */
    struct epoll_event *evs;
    size_t evs_cap;
};

#define ALL_EVENTS (CONC_EVENT_READ | CONC_EVENT_WRITE)

/* ------------------------------------------------------- the functions */

/* A count pointer and its list, as select_fds takes them. */
static size_t count_of(const size_t *n)
{
    return n ? *n : 0;
}

int conc_selector_select_fds_until(int *rfds, size_t *nr, int *wfds, size_t *nw, int *xfds,
                                   size_t *nx, int64_t deadline)
{
    size_t cnt[3] = { count_of(nr), count_of(nw), count_of(nx) };
    int *lists[3] = { rfds, wfds, xfds };
    static const short want[3] = { POLLIN, POLLOUT, POLLPRI };
    size_t total = cnt[0] + cnt[1] + cnt[2];
    for (int l = 0; l < 3; l++) {
        if (cnt[l] && !lists[l])
            return -EINVAL;
        for (size_t i = 0; i < cnt[l]; i++)
            if (lists[l][i] < 0 || lists[l][i] >= CONC_SELECT_FD_LIMIT)
                return -EINVAL;
    }
    if (total == 0) {
        if (deadline == CONC_NO_DEADLINE)
            return -EINVAL;
        int r = conc__sleep_until(deadline);
        return r == -ECANCELED ? r : -ETIMEDOUT;
    }
    struct pollfd *p = malloc(total * sizeof *p);
    if (!p)
        return -ENOMEM;
    size_t k = 0;
    for (int l = 0; l < 3; l++)
        for (size_t i = 0; i < cnt[l]; i++, k++)
            p[k] = (struct pollfd){ .fd = lists[l][i], .events = want[l] };
    int r;
    for (;;) {
        r = conc__wait_fds(p, total, deadline);
        if (r < 0)
            break;
        if (r == 0)
            continue;               /* interrupted: the time left */
        /* select(2)'s answers: a closed descriptor fails the call;
         * readable on data, hang-up or error; writable on room or error;
         * exceptional on urgent data. */
        for (k = 0; k < total; k++)
            if (p[k].revents & POLLNVAL) {
                r = -EBADF;
                goto out;
            }
        static const short hit[3] = { POLLIN | POLLHUP | POLLERR, POLLOUT | POLLERR, POLLPRI };
        int found = 0;
        k = 0;
        size_t out_n[3] = { 0, 0, 0 };
        for (int l = 0; l < 3; l++)
            for (size_t i = 0; i < cnt[l]; i++, k++)
                if (p[k].revents & hit[l])
                    out_n[l]++, found++;
        if (!found)
            continue;
        k = 0;
        for (int l = 0; l < 3; l++) {
            size_t o = 0;
            for (size_t i = 0; i < cnt[l]; i++, k++)
                if (p[k].revents & hit[l])
                    lists[l][o++] = lists[l][i];
        }
        if (nr)
            *nr = out_n[0];
        if (nw)
            *nw = out_n[1];
        if (nx)
            *nx = out_n[2];
        r = found;
        break;
    }
out:
    free(p);
    return r;
}

int conc_selector_select_fds(int *rfds, size_t *nr, int *wfds, size_t *nw, int *xfds,
                             size_t *nx, double timeout)
{
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return (int)conc__timeout_code(poll, conc_selector_select_fds_until(rfds, nr, wfds, nw, xfds,
                                                                        nx, deadline));
}

static size_t fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY)
        return (size_t)INT_MAX;
    return rl.rlim_cur;
}

int conc_selector_poll_fds_until(struct pollfd *fds, size_t n, int64_t deadline)
{
    if (!fds && n > 0)
        return -EINVAL;
    if (n == 0) {
        if (deadline == CONC_NO_DEADLINE)
            return -EINVAL;
        int r = conc__sleep_until(deadline);
        return r == -ECANCELED ? r : -ETIMEDOUT;
    }
    if (n > fd_limit())
        return -EINVAL;
    for (;;) {
        int r = conc__wait_fds(fds, n, deadline);
        if (r != 0)
            return r;
    }
}

int conc_selector_poll_fds(struct pollfd *fds, size_t n, double timeout)
{
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return (int)conc__timeout_code(poll, conc_selector_poll_fds_until(fds, n, deadline));
}

int conc_selector_epoll_wait_until(int epfd, struct epoll_event *events, int maxevents,
                                   int64_t deadline)
{
    if (!events || maxevents < 1)
        return -EINVAL;
    if (epfd < 0)
        return -EBADF;
    for (;;) {
        int r = conc__wait_epoll(epfd, events, maxevents, deadline);
        if (r != 0)
            return r;
    }
}

int conc_selector_epoll_wait(int epfd, struct epoll_event *events, int maxevents,
                             double timeout)
{
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return (int)conc__timeout_code(poll,
                                   conc_selector_epoll_wait_until(epfd, events, maxevents, deadline));
}

/* ---------------------------------------------------------- the object */

int conc_selector_new(conc_selector **out, conc_selector_backend backend)
{
    if (!out || backend < CONC_SELECTOR_DEFAULT || backend > CONC_SELECTOR_SELECT)
        return -EINVAL;
    if (backend == CONC_SELECTOR_DEFAULT)
        backend = CONC_SELECTOR_EPOLL;
    conc_selector *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->backend = backend;
    s->epfd = -1;
    if (backend == CONC_SELECTOR_EPOLL) {
        s->epfd = epoll_create1(EPOLL_CLOEXEC);
        if (s->epfd < 0) {
            int e = errno;
            free(s);
            return -e;
        }
    }
    *out = s;
    return 0;
}

static struct key *find(const conc_selector *s, int fd)
{
    if (fd < 0 || (size_t)fd >= s->index_cap || s->index[fd] == 0)
        return NULL;
    return &s->keys[s->index[fd] - 1];
}

static uint32_t ep_events(unsigned events)
{
    return ((events & CONC_EVENT_READ) ? EPOLLIN : 0) | ((events & CONC_EVENT_WRITE) ? EPOLLOUT : 0);
}

static short poll_events(unsigned events)
{
    return (short)(((events & CONC_EVENT_READ) ? POLLIN : 0) |
                   ((events & CONC_EVENT_WRITE) ? POLLOUT : 0));
}

static uint64_t ep_data(const struct key *k)
{
    return (uint64_t)k->gen << 32 | (uint32_t)k->k.fd;
}

/* True when register and modify take no file identity: the checks are
 * off (the caller unregisters before it closes, so no key outlives its
 * file) and epoll refuses by itself what the fstat would (-EBADF for a
 * closed descriptor, -EPERM for a regular file or a directory): a loop
 * that registers each connection it accepts saves a system call on each
 * of register and unregister. */
static bool skip_stat(const conc_selector *s)
{
    return s->trust && s->epfd >= 0;
}

/* Checks the arguments of register and modify; fills *st (zeroed when
 * skip_stat). */
static int check_reg(const conc_selector *s, int fd, unsigned events, struct stat *st)
{
    if (fd < 0 || events == 0 || (events & ~ALL_EVENTS))
        return -EINVAL;
    if (s->backend == CONC_SELECTOR_SELECT && fd >= CONC_SELECT_FD_LIMIT)
        return -EINVAL;
    if (s->closed)
        return -EBADF;
    if (skip_stat(s)) {
        memset(st, 0, sizeof *st);
        return 0;
    }
    if (fstat(fd, st) != 0)
        return -errno;
    /* What epoll refuses, every backend refuses: files are always ready. */
    if (S_ISREG(st->st_mode) || S_ISDIR(st->st_mode))
        return -EPERM;
    return 0;
}

int conc_selector_register(conc_selector *s, int fd, unsigned events, void *data)
{
    if (!s)
        return -EINVAL;
    struct stat st;
    int r = check_reg(s, fd, events, &st);
    if (r < 0)
        return r;
    if (find(s, fd))
        return -EEXIST;
    if ((size_t)fd >= s->index_cap) {
        size_t cap = s->index_cap ? s->index_cap : 64;
        while (cap <= (size_t)fd)
            cap *= 2;
        uint32_t *ix = realloc(s->index, cap * sizeof *ix);
        if (!ix)
            return -ENOMEM;
        memset(ix + s->index_cap, 0, (cap - s->index_cap) * sizeof *ix);
        s->index = ix;
        s->index_cap = cap;
    }
    if (s->nkeys == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        struct key *k = realloc(s->keys, cap * sizeof *k);
        if (!k)
            return -ENOMEM;
        s->keys = k;
        s->cap = cap;
    }
    struct key *k = &s->keys[s->nkeys];
    *k = (struct key){ .k = { .fd = fd, .events = events, .data = data },
                       .dev = st.st_dev, .ino = st.st_ino, .gen = ++s->next_gen,
                       .unknown = skip_stat(s) };
    if (s->epfd >= 0) {
        struct epoll_event ev = { .events = ep_events(events), .data.u64 = ep_data(k) };
        if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &ev) != 0)
            return -errno;
    }
    s->index[fd] = (uint32_t)++s->nkeys;
    return 0;
}

/* Makes a new epoll instance holding every key that is not gone, in the
 * old one's descriptor number (conc_selector_fd stays valid). */
static int rebuild(conc_selector *s)
{
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        return -errno;
    for (size_t i = 0; i < s->nkeys; i++) {
        struct key *k = &s->keys[i];
        if (k->gone)
            continue;
        struct epoll_event ev = { .events = ep_events(k->k.events), .data.u64 = ep_data(k) };
        if (epoll_ctl(ep, EPOLL_CTL_ADD, k->k.fd, &ev) != 0)
            k->gone = true;     /* closed meanwhile */
    }
    int r = dup3(ep, s->epfd, O_CLOEXEC) < 0 ? -errno : 0;
    close(ep);
    return r;
}

/* True when fd still names the file k was registered for. */
static bool same_file(const struct key *k)
{
    struct stat st;
    return fstat(k->k.fd, &st) == 0 && st.st_dev == k->dev && st.st_ino == k->ino;
}

int conc_selector_modify(conc_selector *s, int fd, unsigned events, void *data)
{
    if (!s)
        return -EINVAL;
    if (fd < 0 || events == 0 || (events & ~ALL_EVENTS))
        return -EINVAL;
    if (s->closed)
        return -EBADF;
    struct key *k = find(s, fd);
    if (!k)
        return -ENOENT;
    struct stat st;
    int r = check_reg(s, fd, events, &st);
    if (r < 0)
        return r;
    bool was_gone = k->gone ||
                    (!skip_stat(s) && (k->unknown || st.st_dev != k->dev || st.st_ino != k->ino));
    uint32_t gen = was_gone ? ++s->next_gen : k->gen;
    if (s->epfd >= 0) {
        struct key nk = *k;
        nk.gen = gen;
        struct epoll_event ev = { .events = ep_events(events), .data.u64 = ep_data(&nk) };
        int op = was_gone ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
        if (epoll_ctl(s->epfd, op, fd, &ev) != 0) {
            int e = errno;
            /* The registered file may have left, or a reused number's
             * file may be in the set already. */
            if (e == ENOENT || e == EEXIST)
                e = epoll_ctl(s->epfd, e == ENOENT ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, &ev) != 0
                        ? errno : 0;
            if (e)
                return -e;
        }
    }
    k->k.events = events;
    k->k.data = data;
    k->dev = st.st_dev;
    k->ino = st.st_ino;
    k->unknown = skip_stat(s);
    k->gen = gen;
    k->gone = false;
    return 0;
}

/* Drops the key at position i (the last key moves into its place). */
static void drop(conc_selector *s, struct key *k)
{
    size_t i = (size_t)(k - s->keys);
    s->index[k->k.fd] = 0;
    s->nkeys--;
    if (i != s->nkeys) {
        s->keys[i] = s->keys[s->nkeys];
        s->index[s->keys[i].k.fd] = (uint32_t)i + 1;
    }
}

int conc_selector_unregister(conc_selector *s, int fd, conc_selector_key *key)
{
    if (!s || fd < 0)
        return -EINVAL;
    if (s->closed)
        return -EBADF;
    struct key *k = find(s, fd);
    if (!k)
        return -ENOENT;
    if (key)
        *key = k->k;
    bool purge = false;
    if (s->epfd >= 0) {
        /* Only while fd still names the registered file does EPOLL_CTL_DEL
         * reach its entry; otherwise a copy elsewhere may keep it in the
         * set: rebuilt without it. */
        if (!k->gone && (s->trust || same_file(k)))
            purge = epoll_ctl(s->epfd, EPOLL_CTL_DEL, fd, NULL) != 0;
        else
            purge = true;
    }
    drop(s, k);
    if (purge)
        (void)rebuild(s);
    return 0;
}

int conc_selector_get_key(const conc_selector *s, int fd, conc_selector_key *key)
{
    if (!s || !key || fd < 0)
        return -EINVAL;
    if (s->closed)
        return -EBADF;
    const struct key *k = find(s, fd);
    if (!k)
        return -ENOENT;
    *key = k->k;
    return 0;
}

size_t conc_selector_count(const conc_selector *s)
{
    return s && !s->closed ? s->nkeys : 0;
}

int conc_selector_keys(const conc_selector *s, conc_selector_key *out, size_t cap)
{
    if (!s || (!out && cap > 0))
        return -EINVAL;
    if (s->closed)
        return -EBADF;
    for (size_t i = 0; i < cap && i < s->nkeys; i++)
        out[i] = s->keys[i].k;
    return s->nkeys > INT_MAX ? INT_MAX : (int)s->nkeys;
}

int conc_selector_set_check_files(conc_selector *s, bool check)
{
    if (!s)
        return -EINVAL;
    if (s->closed)
        return -EBADF;
    if (check && s->trust) {
        /* the keys taken without their file's identity get it now */
        for (size_t i = 0; i < s->nkeys; i++) {
            struct key *k = &s->keys[i];
            struct stat st;
            if (!k->unknown)
                continue;
            if (fstat(k->k.fd, &st) == 0) {
                k->dev = st.st_dev;
                k->ino = st.st_ino;
            } else {
                k->gone = true;
            }
            k->unknown = false;
        }
    }
    s->trust = !check;
    return 0;
}

bool conc_selector_check_files(const conc_selector *s)
{
    return s && !s->trust;
}

conc_selector_backend conc_selector_backend_of(const conc_selector *s)
{
    return s ? s->backend : CONC_SELECTOR_DEFAULT;
}

int conc_selector_fd(const conc_selector *s)
{
    if (!s)
        return -EINVAL;
    if (s->closed)
        return -EBADF;
    return s->epfd >= 0 ? s->epfd : -ENOTSUP;
}

/* The events a descriptor is ready for, Python's way: anything but
 * POLLOUT makes it readable, anything but POLLIN writable. */
static unsigned ready_events(uint32_t re, unsigned registered)
{
    unsigned ev = 0;
    if (re & ~(uint32_t)POLLOUT)
        ev |= CONC_EVENT_READ;
    if (re & ~(uint32_t)POLLIN)
        ev |= CONC_EVENT_WRITE;
    return ev & registered;
}

static int grow(void **p, size_t *cap, size_t want, size_t size)
{
    if (*cap >= want)
        return 0;
    size_t c = *cap ? *cap : 16;
    while (c < want)
        c *= 2;
    void *n = realloc(*p, c * size);
    if (!n)
        return -ENOMEM;
    *p = n;
    *cap = c;
    return 0;
}

static int select_epoll(conc_selector *s, conc_selector_event *out, size_t cap,
                        int64_t deadline)
{
    int want = cap > 1024 ? 1024 : (int)cap;
    if (grow((void **)&s->evs, &s->evs_cap, (size_t)want, sizeof *s->evs))
        return -ENOMEM;
    for (;;) {
        int n = conc__wait_epoll(s->epfd, s->evs, want, deadline);
        if (n < 0)
            return n;
        int got = 0;
        bool stale = false;
        for (int i = 0; i < n; i++) {
            int fd = (int)(uint32_t)s->evs[i].data.u64;
            uint32_t gen = (uint32_t)(s->evs[i].data.u64 >> 32);
            struct key *k = find(s, fd);
            if (!k || k->gen != gen || k->gone) {
                stale = true;       /* a file the selector no longer wants */
                continue;
            }
            if (!s->trust && !same_file(k)) {
                k->gone = true;
                stale = true;
                continue;
            }
            unsigned ev = ready_events(s->evs[i].events, k->k.events);
            if (!ev)
                continue;
            out[got].key = k->k;
            out[got].events = ev;
            got++;
        }
        if (stale)
            (void)rebuild(s);
        if (got)
            return got;
        if (n > 0 && deadline != CONC_NO_DEADLINE && conc_now() >= deadline)
            return -ETIMEDOUT;
    }
}

static int select_poll(conc_selector *s, conc_selector_event *out, size_t cap,
                       int64_t deadline)
{
    for (;;) {
        if (grow((void **)&s->pfds, &s->pfds_cap, s->nkeys ? s->nkeys : 1, sizeof *s->pfds))
            return -ENOMEM;
        size_t n = 0;
        for (size_t i = 0; i < s->nkeys; i++) {
            struct key *k = &s->keys[i];
            /* Gone keys stay in the set as -1 (poll skips it), so
             * positions match the keys. */
            s->pfds[n++] = (struct pollfd){ .fd = k->gone ? -1 : k->k.fd,
                                            .events = poll_events(k->k.events) };
        }
        int r;
        if (n == 0) {
            if (deadline == CONC_NO_DEADLINE)
                return -EINVAL;
            r = conc__sleep_until(deadline);
            return r == -ECANCELED ? r : -ETIMEDOUT;
        }
        r = conc__wait_fds(s->pfds, n, deadline);
        if (r < 0)
            return r;
        if (r == 0)
            continue;
        size_t got = 0, start = s->rotate % n, last = start;
        for (size_t j = 0; j < n && got < cap; j++) {
            size_t i = (start + j) % n;
            short re = s->pfds[i].revents;
            if (!re || s->pfds[i].fd < 0)
                continue;
            struct key *k = &s->keys[i];
            if ((re & POLLNVAL) || (!s->trust && !same_file(k))) {
                k->gone = true;
                continue;
            }
            unsigned ev = ready_events((uint16_t)re, k->k.events);
            if (!ev)
                continue;
            out[got].key = k->k;
            out[got].events = ev;
            got++;
            last = i;
        }
        if (got) {
            s->rotate = last + 1;
            return (int)got;
        }
        if (deadline != CONC_NO_DEADLINE && conc_now() >= deadline)
            return -ETIMEDOUT;
    }
}

int conc_selector_select_until(conc_selector *s, conc_selector_event *out, size_t cap,
                               int64_t deadline)
{
    if (!s || !out || cap == 0)
        return -EINVAL;
    if (s->closed)
        return -EBADF;
    if (s->epfd >= 0) {
        if (s->nkeys == 0 && deadline == CONC_NO_DEADLINE)
            return -EINVAL;
        return select_epoll(s, out, cap, deadline);
    }
    return select_poll(s, out, cap, deadline);
}

int conc_selector_select(conc_selector *s, conc_selector_event *out, size_t cap,
                         double timeout)
{
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return (int)conc__timeout_code(poll, conc_selector_select_until(s, out, cap, deadline));
}

int conc_selector_close(conc_selector *s)
{
    if (!s)
        return -EINVAL;
    if (s->closed)
        return 0;
    s->closed = true;
    if (s->epfd >= 0)
        close(s->epfd);
    s->epfd = -1;
    free(s->keys);
    free(s->index);
    free(s->pfds);
    free(s->evs);
    s->keys = NULL;
    s->index = NULL;
    s->pfds = NULL;
    s->evs = NULL;
    s->nkeys = s->cap = s->index_cap = s->pfds_cap = s->evs_cap = 0;
    return 0;
}

void conc_selector_free(conc_selector *s)
{
    if (!s)
        return;
    conc_selector_close(s);
    free(s);
}
