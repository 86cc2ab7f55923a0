/*
 * test_selector.c - conc/selector.h: the select, poll and epoll functions
 * and the selector object on each backend: keys and their errors, ready
 * events with their data, timeouts, EINTR, no starvation when more are
 * ready than asked for, the select backend's refusal of descriptors from
 * 1024 up, closed and reused registered descriptors (the same on every
 * backend), and 1000 connections served by one loop with the descriptor
 * count back where it started.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conc.h"
#include "support/fd_count.h"
#include "support/task_state.h"

#define GUARD 20.0

static const conc_selector_backend backends[] = { CONC_SELECTOR_EPOLL, CONC_SELECTOR_POLL,
                                                  CONC_SELECTOR_SELECT };
#define NB (sizeof backends / sizeof backends[0])

static void pair(int sv[2])
{
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv), 0);
}

/* Fills sv[0]'s send buffer so that it is not writable. */
static void fill(int fd)
{
    static char junk[65536];
    while (send(fd, junk, sizeof junk, MSG_DONTWAIT) > 0)
        ;
}

/* ---------------------------------------------------------------- keys */

Test(selector, keys_and_their_errors)
{
    for (size_t b = 0; b < NB; b++) {
        conc_selector *s;
        cr_assert_eq(conc_selector_new(&s, backends[b]), 0);
        cr_expect_eq(conc_selector_backend_of(s), backends[b]);
        int sv[2];
        pair(sv);
        int tag;
        cr_expect_eq(conc_selector_register(s, sv[0], 0, NULL), -EINVAL);
        cr_expect_eq(conc_selector_register(s, sv[0], 4, NULL), -EINVAL);
        cr_expect_eq(conc_selector_register(s, -1, CONC_EVENT_READ, NULL), -EINVAL);
        cr_expect_eq(conc_selector_register(NULL, sv[0], CONC_EVENT_READ, NULL), -EINVAL);
        cr_expect_eq(conc_selector_register(s, 900, CONC_EVENT_READ, NULL), -EBADF);
        int f = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
        cr_expect_eq(conc_selector_register(s, f, CONC_EVENT_READ, NULL), -EPERM);
        close(f);
        cr_assert_eq(conc_selector_register(s, sv[0], CONC_EVENT_READ, &tag), 0);
        cr_expect_eq(conc_selector_register(s, sv[0], CONC_EVENT_WRITE, NULL), -EEXIST);
        conc_selector_key k;
        cr_assert_eq(conc_selector_get_key(s, sv[0], &k), 0);
        cr_expect_eq(k.fd, sv[0]);
        cr_expect_eq(k.events, CONC_EVENT_READ);
        cr_expect_eq(k.data, &tag);
        cr_expect_eq(conc_selector_get_key(s, sv[1], &k), -ENOENT);
        cr_expect_eq(conc_selector_get_key(s, sv[0], NULL), -EINVAL);
        cr_expect_eq(conc_selector_modify(s, sv[1], CONC_EVENT_READ, NULL), -ENOENT);
        cr_expect_eq(conc_selector_modify(s, sv[0], 0, NULL), -EINVAL);
        cr_assert_eq(conc_selector_modify(s, sv[0], CONC_EVENT_READ | CONC_EVENT_WRITE, NULL), 0);
        cr_assert_eq(conc_selector_get_key(s, sv[0], &k), 0);
        cr_expect_eq(k.events, CONC_EVENT_READ | CONC_EVENT_WRITE);
        cr_expect_null(k.data);
        cr_assert_eq(conc_selector_register(s, sv[1], CONC_EVENT_WRITE, NULL), 0);
        cr_expect_eq(conc_selector_count(s), 2);
        conc_selector_key ks[4];
        cr_expect_eq(conc_selector_keys(s, ks, 1), 2);
        cr_expect_eq(conc_selector_keys(s, ks, 4), 2);
        cr_expect(ks[0].fd + ks[1].fd == sv[0] + sv[1]);
        cr_expect_eq(conc_selector_keys(s, NULL, 1), -EINVAL);
        cr_assert_eq(conc_selector_unregister(s, sv[0], &k), 0);
        cr_expect_eq(k.fd, sv[0]);
        cr_expect_eq(conc_selector_unregister(s, sv[0], NULL), -ENOENT);
        cr_expect_eq(conc_selector_count(s), 1);
        int efd = conc_selector_fd(s);
        if (backends[b] == CONC_SELECTOR_EPOLL)
            cr_expect_geq(efd, 0);
        else
            cr_expect_eq(efd, -ENOTSUP);
        conc_selector_event ev[4];
        cr_expect_eq(conc_selector_select(s, NULL, 4, 0), -EINVAL);
        cr_expect_eq(conc_selector_select(s, ev, 0, 0), -EINVAL);
        cr_expect_eq(conc_selector_select(s, ev, 4, NAN), -EINVAL);
        /* Closed: -EBADF, nothing counted, closing again is fine. */
        cr_assert_eq(conc_selector_close(s), 0);
        cr_assert_eq(conc_selector_close(s), 0);
        cr_expect_eq(conc_selector_count(s), 0);
        cr_expect_eq(conc_selector_register(s, sv[0], CONC_EVENT_READ, NULL), -EBADF);
        cr_expect_eq(conc_selector_unregister(s, sv[1], NULL), -EBADF);
        cr_expect_eq(conc_selector_get_key(s, sv[1], &k), -EBADF);
        cr_expect_eq(conc_selector_select(s, ev, 4, 0), -EBADF);
        cr_expect_eq(conc_selector_fd(s), -EBADF);
        conc_selector_free(s);
        /* The registered descriptors were not closed by the selector. */
        cr_expect_geq(fcntl(sv[0], F_GETFD), 0);
        close(sv[0]);
        close(sv[1]);
    }
    conc_selector *s = NULL;
    cr_assert_eq(conc_selector_new(&s, CONC_SELECTOR_POLL), 0);
    cr_expect(conc_selector_check_files(s));
    cr_expect_eq(conc_selector_set_check_files(s, false), 0);
    cr_expect_not(conc_selector_check_files(s));
    cr_expect_eq(conc_selector_set_check_files(NULL, false), -EINVAL);
    cr_expect_not(conc_selector_check_files(NULL));
    conc_selector_close(s);
    cr_expect_eq(conc_selector_set_check_files(s, true), -EBADF);
    conc_selector_free(s);
    s = NULL;
    cr_expect_eq(conc_selector_new(&s, 9), -EINVAL);
    cr_expect_eq(conc_selector_new(NULL, 0), -EINVAL);
    cr_expect_null(s);
    cr_assert_eq(conc_selector_new(&s, CONC_SELECTOR_DEFAULT), 0);
    cr_expect_eq(conc_selector_backend_of(s), CONC_SELECTOR_EPOLL);
    conc_selector_free(s);
    conc_selector_free(NULL);
}

/* ------------------------------------------------------------ readiness */

Test(selector, ready_events_data_and_timeouts)
{
    for (size_t b = 0; b < NB; b++) {
        conc_selector *s;
        cr_assert_eq(conc_selector_new(&s, backends[b]), 0);
        int sv[2];
        pair(sv);
        int ta, tb;
        cr_assert_eq(conc_selector_register(s, sv[0], CONC_EVENT_READ, &ta), 0);
        cr_assert_eq(conc_selector_register(s, sv[1], CONC_EVENT_READ, &tb), 0);
        conc_selector_event ev[4];
        cr_expect_eq(conc_selector_select(s, ev, 4, 0), -EAGAIN);
        cr_expect_eq(conc_selector_select(s, ev, 4, 0.01), -ETIMEDOUT);
        cr_expect_eq(conc_selector_select_until(s, ev, 4, 0), -ETIMEDOUT);
        cr_assert_eq(write(sv[1], "x", 1), 1);
        cr_assert_eq(conc_selector_select(s, ev, 4, GUARD), 1);
        cr_expect_eq(ev[0].key.fd, sv[0]);
        cr_expect_eq(ev[0].key.data, &ta);
        cr_expect_eq(ev[0].events, CONC_EVENT_READ);
        /* Level-triggered: still ready. */
        cr_assert_eq(conc_selector_select(s, ev, 4, 0), 1);
        /* Both ways on sv[1]: writable at once. */
        cr_assert_eq(conc_selector_modify(s, sv[1], CONC_EVENT_READ | CONC_EVENT_WRITE, &tb), 0);
        int n = conc_selector_select(s, ev, 4, 0);
        cr_assert_eq(n, 2, "backend %d: %d", backends[b], n);
        for (int i = 0; i < n; i++)
            if (ev[i].key.fd == sv[1])
                cr_expect_eq(ev[i].events, CONC_EVENT_WRITE);
        /* A hang-up makes it ready for what it is registered for. */
        char c;
        cr_assert_eq(read(sv[0], &c, 1), 1);
        close(sv[0]);
        cr_assert_eq(conc_selector_unregister(s, sv[0], NULL), 0);
        cr_assert_eq(conc_selector_select(s, ev, 4, 0), 1);
        cr_expect_eq(ev[0].key.fd, sv[1]);
        cr_expect_eq(ev[0].events, CONC_EVENT_READ | CONC_EVENT_WRITE);
        close(sv[1]);
        cr_assert_eq(conc_selector_unregister(s, sv[1], NULL), 0);
        /* Empty: sleeps until the timeout; forever is refused. */
        cr_expect_eq(conc_selector_select(s, ev, 4, 0.001), -ETIMEDOUT);
        cr_expect_eq(conc_selector_select(s, ev, 4, CONC_FOREVER), -EINVAL);
        conc_selector_free(s);
    }
}

Test(selector, no_starvation_when_more_are_ready)
{
    for (size_t b = 0; b < NB; b++) {
        conc_selector *s;
        cr_assert_eq(conc_selector_new(&s, backends[b]), 0);
        enum { N = 10 };
        int sv[N][2];
        for (int i = 0; i < N; i++) {
            pair(sv[i]);
            cr_assert_eq(write(sv[i][1], "x", 1), 1);
            cr_assert_eq(conc_selector_register(s, sv[i][0], CONC_EVENT_READ, NULL), 0);
        }
        bool seen[N] = { false };
        int total = 0;
        for (int round = 0; round < 4; round++) {
            conc_selector_event ev[3];
            int n = conc_selector_select(s, ev, 3, 0);
            cr_assert_gt(n, 0);
            for (int i = 0; i < n; i++)
                for (int k = 0; k < N; k++)
                    if (ev[i].key.fd == sv[k][0] && !seen[k]) {
                        seen[k] = true;
                        total++;
                    }
        }
        cr_expect_eq(total, N, "backend %d saw %d of %d", backends[b], total, N);
        for (int i = 0; i < N; i++) {
            close(sv[i][0]);
            close(sv[i][1]);
        }
        conc_selector_free(s);
    }
}

/* ----------------------------------------------------- closed descriptors */

/*
 * The documented behaviour, backend by backend: a registered number that
 * is closed - with a copy of it still open elsewhere, the case where epoll
 * alone would go on reporting the old file - and then reused for a new,
 * readable socket is never reported; registering the number again is
 * -EEXIST; unregistering works; afterwards the new socket registers and is
 * reported; modify of a closed-and-reused number watches the new file.
 */
Test(selector, closed_and_reused_descriptors_alike_on_every_backend)
{
    for (size_t b = 0; b < NB; b++) {
        conc_selector *s;
        cr_assert_eq(conc_selector_new(&s, backends[b]), 0);
        int before = count_fds();
        int sv[2];
        pair(sv);
        cr_assert_eq(write(sv[1], "old", 3), 3);        /* sv[0] readable */
        cr_assert_eq(conc_selector_register(s, sv[0], CONC_EVENT_READ, NULL), 0);
        conc_selector_event ev[4];
        cr_assert_eq(conc_selector_select(s, ev, 4, 0), 1);
        int copy = dup(sv[0]);                          /* keeps the file open */
        int num = sv[0];
        close(sv[0]);
        cr_expect_eq(conc_selector_select(s, ev, 4, 0), -EAGAIN, "backend %d", backends[b]);
        /* The number reused by a new, readable socket. */
        int nv[2];
        pair(nv);
        if (nv[0] != num) {
            cr_assert_eq(dup2(nv[0], num), num);
            close(nv[0]);
            nv[0] = num;
        }
        cr_assert_eq(write(nv[1], "new", 3), 3);
        cr_expect_eq(conc_selector_select(s, ev, 4, 0), -EAGAIN, "backend %d", backends[b]);
        cr_expect_eq(conc_selector_select(s, ev, 4, 0), -EAGAIN);
        cr_expect_eq(conc_selector_count(s), 1);
        conc_selector_key k;
        cr_expect_eq(conc_selector_get_key(s, num, &k), 0);
        cr_expect_eq(conc_selector_register(s, num, CONC_EVENT_READ, NULL), -EEXIST);
        cr_assert_eq(conc_selector_unregister(s, num, NULL), 0);
        cr_expect_eq(conc_selector_select(s, ev, 4, 0.001), -ETIMEDOUT);
        cr_assert_eq(conc_selector_register(s, num, CONC_EVENT_READ, &k), 0);
        cr_assert_eq(conc_selector_select(s, ev, 4, 0), 1);
        cr_expect_eq(ev[0].key.fd, num);
        cr_expect_eq(ev[0].key.data, &k);
        /* The same through modify: close, reuse, modify watches the new one. */
        close(copy);
        int mv[2];
        pair(mv);
        close(nv[0]);
        cr_expect_eq(conc_selector_select(s, ev, 4, 0), -EAGAIN);
        cr_assert_eq(dup2(mv[0], num), num);
        close(mv[0]);
        cr_expect_eq(conc_selector_select(s, ev, 4, 0), -EAGAIN);
        cr_assert_eq(write(mv[1], "m", 1), 1);
        cr_expect_eq(conc_selector_select(s, ev, 4, 0), -EAGAIN);
        cr_assert_eq(conc_selector_modify(s, num, CONC_EVENT_READ, NULL), 0);
        cr_assert_eq(conc_selector_select(s, ev, 4, 0), 1, "backend %d", backends[b]);
        /* Closed with no copy anywhere: never reported, unregister works. */
        close(num);
        close(mv[1]);
        cr_expect_eq(conc_selector_select(s, ev, 4, 0), -EAGAIN);
        cr_expect_eq(conc_selector_modify(s, num, CONC_EVENT_READ, NULL), -EBADF);
        cr_assert_eq(conc_selector_unregister(s, num, NULL), 0);
        close(sv[1]);
        close(nv[1]);
        cr_expect_eq(count_fds(), before);
        conc_selector_free(s);
    }
}

/* With the check off, the kernel's way shows through: epoll goes on
 * reporting a file that a copy of its closed descriptor keeps open. */
Test(selector, check_files_off_is_the_kernel_s_way)
{
    conc_selector *s;
    cr_assert_eq(conc_selector_new(&s, CONC_SELECTOR_EPOLL), 0);
    cr_assert_eq(conc_selector_set_check_files(s, false), 0);
    int sv[2];
    pair(sv);
    cr_assert_eq(write(sv[1], "x", 1), 1);
    cr_assert_eq(conc_selector_register(s, sv[0], CONC_EVENT_READ, NULL), 0);
    int copy = dup(sv[0]);
    close(sv[0]);
    conc_selector_event ev[2];
    cr_expect_eq(conc_selector_select(s, ev, 2, 0), 1);
    /* Back on: the stale key is found and dropped from the set. */
    cr_assert_eq(conc_selector_set_check_files(s, true), 0);
    cr_expect_eq(conc_selector_select(s, ev, 2, 0), -EAGAIN);
    cr_expect_eq(conc_selector_select(s, ev, 2, 0), -EAGAIN);
    cr_expect_eq(conc_selector_unregister(s, sv[0], NULL), 0);
    conc_selector_free(s);
    close(copy);
    close(sv[1]);
}

/* With the check off, epoll's register, modify and unregister take no
 * fstat of their own, and refuse what they refused with it: a closed
 * descriptor (-EBADF), a regular file or a directory (-EPERM); poll keeps
 * its check (poll would call a file always ready). */
Test(selector, check_files_off_still_refuses_files)
{
    int before = count_fds();
    int file = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
    int dir = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    cr_assert_geq(file, 0);
    cr_assert_geq(dir, 0);
    for (size_t b = 0; b < NB; b++) {
        conc_selector *s;
        cr_assert_eq(conc_selector_new(&s, backends[b]), 0);
        cr_assert_eq(conc_selector_set_check_files(s, false), 0);
        cr_expect_eq(conc_selector_register(s, file, CONC_EVENT_READ, NULL), -EPERM,
                     "backend %d", backends[b]);
        cr_expect_eq(conc_selector_register(s, dir, CONC_EVENT_READ, NULL), -EPERM);
        int sv[2];
        pair(sv);
        int num = sv[0];
        close(sv[0]);
        close(sv[1]);
        cr_expect_eq(conc_selector_register(s, num, CONC_EVENT_READ, NULL), -EBADF);
        cr_expect_eq(conc_selector_count(s), 0);
        pair(sv);
        int data = 7;
        cr_assert_eq(conc_selector_register(s, sv[0], CONC_EVENT_READ, NULL), 0);
        cr_expect_eq(conc_selector_register(s, sv[0], CONC_EVENT_READ, NULL), -EEXIST);
        conc_selector_event ev[2];
        cr_expect_eq(conc_selector_select(s, ev, 2, 0), -EAGAIN);
        cr_assert_eq(write(sv[1], "x", 1), 1);
        cr_assert_eq(conc_selector_modify(s, sv[0], CONC_EVENT_READ | CONC_EVENT_WRITE, &data),
                     0);
        cr_assert_eq(conc_selector_select(s, ev, 2, 0), 1);
        cr_expect_eq(ev[0].key.data, &data);
        cr_expect_eq(ev[0].events, CONC_EVENT_READ | CONC_EVENT_WRITE);
        /* back on: the key registered without a check is checked now */
        cr_assert_eq(conc_selector_set_check_files(s, true), 0);
        cr_assert_eq(conc_selector_select(s, ev, 2, 0), 1);
        cr_expect_eq(ev[0].key.fd, sv[0]);
        cr_assert_eq(conc_selector_set_check_files(s, false), 0);
        cr_assert_eq(conc_selector_unregister(s, sv[0], NULL), 0);
        cr_expect_eq(conc_selector_select(s, ev, 2, 0), -EAGAIN);
        cr_expect_eq(conc_selector_count(s), 0);
        close(sv[0]);
        close(sv[1]);
        conc_selector_free(s);
    }
    close(file);
    close(dir);
    cr_expect_eq(count_fds(), before);
}

/* --------------------------------------------------- the select limit */

Test(selector, select_refuses_descriptors_from_1024)
{
    struct rlimit rl;
    cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_cur < 2048) {
        rl.rlim_cur = rl.rlim_max < 2048 ? rl.rlim_max : 2048;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    cr_assert_geq(rl.rlim_cur, 1100, "cannot open descriptor 1024");
    int sv[2];
    pair(sv);
    int hi = fcntl(sv[0], F_DUPFD_CLOEXEC, 1024);
    cr_assert_geq(hi, 1024);
    conc_selector *s;
    cr_assert_eq(conc_selector_new(&s, CONC_SELECTOR_SELECT), 0);
    cr_expect_eq(conc_selector_register(s, hi, CONC_EVENT_READ, NULL), -EINVAL);
    cr_expect_eq(conc_selector_register(s, sv[0], CONC_EVENT_READ, NULL), 0);
    cr_expect_eq(conc_selector_modify(s, sv[0], CONC_EVENT_READ, NULL), 0);
    cr_expect_eq(conc_selector_count(s), 1);
    conc_selector_free(s);
    int r[2] = { sv[0], hi };
    size_t nr = 2;
    cr_expect_eq(conc_selector_select_fds(r, &nr, NULL, NULL, NULL, NULL, 0), -EINVAL);
    /* The other backends take it. */
    for (size_t b = 0; b < 2; b++) {
        cr_assert_eq(conc_selector_new(&s, backends[b]), 0);
        cr_expect_eq(conc_selector_register(s, hi, CONC_EVENT_READ, NULL), 0);
        cr_assert_eq(write(sv[1], "x", 1), 1);
        conc_selector_event ev[2];
        cr_expect_eq(conc_selector_select(s, ev, 2, GUARD), 1);
        char c;
        cr_assert_eq(read(hi, &c, 1), 1);
        conc_selector_free(s);
    }
    struct pollfd p = { .fd = hi, .events = POLLOUT };
    cr_expect_eq(conc_selector_poll_fds(&p, 1, GUARD), 1);
    close(hi);
    close(sv[0]);
    close(sv[1]);
}

/* ------------------------------------------------------- the functions */

Test(selector, select_poll_epoll_functions)
{
    int a[2], b[2];
    pair(a);
    pair(b);
    fill(b[0]);
    int r[2] = { a[0], b[0] }, w[2] = { a[0], b[0] }, x[1] = { a[0] };
    size_t nr = 2, nw = 2, nx = 1;
    /* Writable: a[0] only (b[0]'s buffer is full); nothing readable. */
    cr_assert_eq(conc_selector_select_fds(r, &nr, w, &nw, x, &nx, GUARD), 1);
    cr_expect_eq(nr, 0);
    cr_expect_eq(nw, 1);
    cr_expect_eq(w[0], a[0]);
    cr_expect_eq(nx, 0);
    r[0] = a[0];
    r[1] = b[0];
    nr = 2;
    cr_expect_eq(conc_selector_select_fds(r, &nr, NULL, NULL, NULL, NULL, 0), -EAGAIN);
    cr_expect_eq(nr, 2);                              /* untouched */
    cr_expect_eq(conc_selector_select_fds(r, &nr, NULL, NULL, NULL, NULL, 0.01), -ETIMEDOUT);
    cr_assert_eq(write(b[1], "y", 1), 1);
    cr_assert_eq(conc_selector_select_fds(r, &nr, NULL, NULL, NULL, NULL, GUARD), 1);
    cr_expect_eq(nr, 1);
    cr_expect_eq(r[0], b[0]);
    /* A closed descriptor: -EBADF, as select(2). */
    int gone[1] = { 1000 };
    size_t ng = 1;
    cr_expect_eq(conc_selector_select_fds(gone, &ng, NULL, NULL, NULL, NULL, 0), -EBADF);
    cr_expect_eq(conc_selector_select_fds(NULL, &ng, NULL, NULL, NULL, NULL, 0), -EINVAL);
    cr_expect_eq(conc_selector_select_fds(NULL, NULL, NULL, NULL, NULL, NULL, 0.001), -ETIMEDOUT);
    cr_expect_eq(conc_selector_select_fds(NULL, NULL, NULL, NULL, NULL, NULL, CONC_FOREVER),
                 -EINVAL);

    /* poll: revents as poll(2), POLLNVAL for a closed descriptor. */
    struct pollfd p[3] = { { .fd = a[0], .events = POLLIN }, { .fd = b[0], .events = POLLIN },
                           { .fd = 1000, .events = POLLIN } };
    cr_assert_eq(conc_selector_poll_fds(p, 3, GUARD), 2);
    cr_expect_eq(p[0].revents, 0);
    cr_expect(p[1].revents & POLLIN);
    cr_expect(p[2].revents & POLLNVAL);
    p[2].fd = -1;
    char c;
    cr_assert_eq(read(b[0], &c, 1), 1);
    cr_expect_eq(conc_selector_poll_fds(p, 3, 0), -EAGAIN);
    cr_expect_eq(conc_selector_poll_fds(p, 3, 0.01), -ETIMEDOUT);
    cr_expect_eq(conc_selector_poll_fds(NULL, 1, 0), -EINVAL);

    /* epoll */
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event e = { .events = EPOLLIN, .data.u64 = 42 };
    cr_assert_eq(epoll_ctl(ep, EPOLL_CTL_ADD, a[0], &e), 0);
    struct epoll_event out[2];
    cr_expect_eq(conc_selector_epoll_wait(ep, out, 2, 0), -EAGAIN);
    cr_expect_eq(conc_selector_epoll_wait(ep, out, 2, 0.01), -ETIMEDOUT);
    cr_assert_eq(write(a[1], "z", 1), 1);
    cr_assert_eq(conc_selector_epoll_wait(ep, out, 2, GUARD), 1);
    cr_expect_eq(out[0].data.u64, 42);
    cr_expect_eq(conc_selector_epoll_wait(ep, out, 0, 0), -EINVAL);
    cr_expect_eq(conc_selector_epoll_wait(-1, out, 2, 0), -EBADF);
    cr_expect_eq(conc_selector_epoll_wait(a[0], out, 2, 0), -EINVAL);   /* not epoll */
    close(ep);
    close(a[0]);
    close(a[1]);
    close(b[0]);
    close(b[1]);
}

/* ---------------------------------------------------------------- EINTR */

static int hits;

static void on_usr1(int sig)
{
    (void)sig;
    __atomic_fetch_add(&hits, 1, __ATOMIC_RELAXED);
}

static int hits_now(void)
{
    return __atomic_load_n(&hits, __ATOMIC_RELAXED);
}

struct waiter {
    conc_selector *s;
    double timeout;
    int rc;
    conc_selector_event ev[2];
};

static void *waiter_main(void *arg)
{
    struct waiter *w = arg;
    w->rc = conc_selector_select(w->s, w->ev, 2, w->timeout);
    return NULL;
}

Test(selector, eintr_is_retried, .timeout = 60)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigemptyset(&sa.sa_mask);
    cr_assert_eq(sigaction(SIGUSR1, &sa, NULL), 0);
    for (size_t b = 0; b < NB; b++) {
        conc_selector *s;
        cr_assert_eq(conc_selector_new(&s, backends[b]), 0);
        int sv[2];
        pair(sv);
        cr_assert_eq(conc_selector_register(s, sv[0], CONC_EVENT_READ, NULL), 0);
        struct waiter w = { .s = s, .timeout = CONC_FOREVER };
        pid_t tid;
        pthread_t th = spawn_tid(waiter_main, &w, &tid);
        for (int i = 0; i < 3; i++) {
            wait_thread_blocked(tid, GUARD);
            int before = hits_now();
            pthread_kill(th, SIGUSR1);
            for (int k = 0; hits_now() == before && k < 20000; k++)
                usleep(100);
            cr_assert_gt(hits_now(), before);
        }
        wait_thread_blocked(tid, GUARD);
        cr_assert_eq(write(sv[1], "x", 1), 1);
        pthread_join(th, NULL);
        cr_expect_eq(w.rc, 1, "backend %d gave %d", backends[b], w.rc);
        close(sv[0]);
        close(sv[1]);
        conc_selector_free(s);
    }
}

/* ------------------------------------------------- 1000 connections */

/*
 * One loop on the selector serves n clients over TCP: it accepts them all,
 * then echoes each client's request upper-cased; every client checks its
 * answer.  The descriptor count is back where it began at the end.
 */
static void serve_many(conc_selector_backend backend, int n)
{
    struct rlimit rl;
    cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_cur < (rlim_t)(2 * n + 64)) {
        rl.rlim_cur = rl.rlim_max;
        cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
    }
    cr_assert_geq(rl.rlim_cur, (rlim_t)(2 * n + 64), "descriptor limit too low");
    int before = count_fds();
    conc_socket *l;
    conc_socket_server_opts so = CONC_SOCKET_SERVER_OPTS_INIT;
    so.backlog = n;
    cr_assert_eq(conc_socket_create_server(&l, "127.0.0.1", 0, &so), 0);
    conc_sockaddr la;
    cr_assert_eq(conc_socket_getsockname(l, &la), 0);
    conc_selector *s;
    cr_assert_eq(conc_selector_new(&s, backend), 0);
    cr_assert_eq(conc_selector_register(s, conc_socket_fd(l), CONC_EVENT_READ, l), 0);
    conc_socket **cl = calloc((size_t)n, sizeof *cl);
    conc_socket **sv = calloc((size_t)n, sizeof *sv);
    for (int i = 0; i < n; i++) {
        cr_assert_eq(conc_socket_new(&cl[i], AF_INET, SOCK_STREAM, 0), 0);
        cr_assert_eq(conc_socket_set_timeout(cl[i], 0), 0);
        int r = conc_socket_connect(cl[i], &la);
        cr_assert(r == 0 || r == -EAGAIN, "connect %d: %d", i, r);
    }
    int accepted = 0, answered = 0;
    char *got = calloc((size_t)n, 1);
    conc_selector_event ev[64];
    int sent = 0;
    while (answered < n) {
        int k = conc_selector_select(s, ev, 64, GUARD);
        cr_assert_gt(k, 0, "select: %d (%d accepted, %d answered)", k, accepted, answered);
        for (int i = 0; i < k; i++) {
            if (ev[i].key.data == l) {
                conc_socket *c;
                cr_assert_eq(conc_socket_set_timeout(l, 0), 0);
                while (conc_socket_accept(l, &c, NULL) == 0) {
                    cr_assert_lt(accepted, n);
                    sv[accepted++] = c;
                    cr_assert_eq(conc_selector_register(s, conc_socket_fd(c), CONC_EVENT_READ, c),
                                 0);
                }
                continue;
            }
            conc_socket *c = ev[i].key.data;
            char buf[32];
            ssize_t m = conc_socket_recv(c, buf, sizeof buf, 0);
            cr_assert_gt(m, 0);
            for (ssize_t j = 0; j < m; j++)
                if (buf[j] >= 'a' && buf[j] <= 'z')
                    buf[j] = (char)(buf[j] - 'a' + 'A');
            cr_assert_eq(conc_socket_sendall(c, buf, (size_t)m, 0, NULL), 0);
            answered++;
        }
        /* The clients send once all are accepted (they are connected by
         * then), all at once. */
        if (accepted == n && !sent) {
            for (int i = 0; i < n; i++) {
                char req[16];
                int len = snprintf(req, sizeof req, "req%05d", i);
                cr_assert_eq(conc_socket_set_timeout(cl[i], GUARD), 0);
                cr_assert_eq(conc_socket_sendall(cl[i], req, (size_t)len, 0, NULL), 0);
            }
            sent = 1;
        }
    }
    for (int i = 0; i < n; i++) {
        char buf[16], want[16];
        int len = snprintf(want, sizeof want, "REQ%05d", i);
        cr_assert_eq(conc_socket_recv(cl[i], buf, (size_t)len, MSG_WAITALL), len);
        cr_assert_eq(memcmp(buf, want, (size_t)len), 0, "client %d", i);
        got[i] = 1;
    }
    for (int i = 0; i < n; i++) {
        cr_assert_eq(conc_selector_unregister(s, conc_socket_fd(sv[i]), NULL), 0);
        conc_socket_free(sv[i]);
        conc_socket_free(cl[i]);
    }
    cr_expect_eq(conc_selector_count(s), 1);
    conc_selector_free(s);
    conc_socket_free(l);
    free(cl);
    free(sv);
    free(got);
    cr_expect_eq(count_fds(), before);
}

Test(selector, thousand_connections_epoll, .timeout = 120)
{
    serve_many(CONC_SELECTOR_EPOLL, 1000);
}

Test(selector, thousand_connections_poll, .timeout = 120)
{
    serve_many(CONC_SELECTOR_POLL, 1000);
}

/* The select backend: as many as fit below its limit (two descriptors a
 * connection in this one process). */
Test(selector, many_connections_select, .timeout = 120)
{
    serve_many(CONC_SELECTOR_SELECT, 480);
}
