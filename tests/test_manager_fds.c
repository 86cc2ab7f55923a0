/*
 * test_manager_fds.c - conc/manager.h: a server out of file descriptors.
 * It cannot accept the next client, but it goes on serving the clients it
 * has (its accept loop waits before it tries again instead of trying in a
 * loop that never lets a connection run), and it accepts again once a
 * descriptor is free.
 *
 * Criterion runs every test in its own process.
 */
#include <criterion/criterion.h>

#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "conc.h"

/* Children of this test never report leaks (a started manager's server is
 * a fork of it that exits without freeing what the test made). */
#define CONC_TEST_TSAN_OPTIONS "atexit_sleep_ms=0:die_after_fork=0"
#include "support/fork_sanitizers.h"

#define GUARD 30.0                      /* a hang guard, never reached when correct */
#define HELLO_WAIT 1.0                  /* how long a client out of luck waits here */

/* The highest descriptor number process pid has open. */
static int highest_fd(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    cr_assert_not_null(d);
    int hi = -1;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.' && atoi(e->d_name) > hi)
            hi = atoi(e->d_name);
    closedir(d);
    return hi;
}

/* A raw connection past the server's hello, or NULL when no hello came
 * within HELLO_WAIT (the server could not take the connection). */
static const char *key;                 /* the authkey, or NULL */

static conc_conn *raw_connect(const char *addr)
{
    conc_conn *c;
    conc_client_opts co = CONC_CLIENT_OPTS_INIT;
    co.authkey = key;
    co.authkey_len = key ? strlen(key) : 0;
    /* With a key, a server that cannot take the connection does not
     * answer the handshake either. */
    int e = conc_client_connect(&c, addr, &co, key ? HELLO_WAIT : GUARD);
    if (key && e == -ETIMEDOUT)
        return NULL;
    cr_assert_eq(e, 0);
    char hello[64];
    ssize_t n = conc_conn_recv_bytes(c, hello, sizeof hello, HELLO_WAIT);
    if (n <= 0) {
        conc_conn_free(c);
        return NULL;
    }
    cr_assert(memcmp(hello, "#CONC-MANAGER-", 14) == 0);
    return c;
}

/* A PING on a raw connection: its status, or the receive's error. */
static int ping(conc_conn *c, double timeout)
{
    uint8_t req[48] = { 1, 1 };
    int64_t none = -1;
    memcpy(req + 16, &none, 8);
    int e = conc_conn_send_bytes(c, req, sizeof req, GUARD);
    if (e)
        return e;
    void *ans;
    size_t len;
    e = conc_conn_recv_alloc(c, &ans, &len, timeout);
    if (e)
        return e;
    int32_t st;
    memcpy(&st, ans, 4);
    free(ans);
    return st;
}

static void out_of_descriptors(void)
{
    conc_manager *m;
    conc_manager_opts o = CONC_MANAGER_OPTS_INIT;
    o.authkey = key;
    o.authkey_len = key ? strlen(key) : 0;
    cr_assert_eq(conc_manager_new(&m, &o), 0);
    cr_assert_eq(conc_manager_start(m), 0);
    char addr[128];
    cr_assert_gt(conc_manager_address(m, addr, sizeof addr), 0);
    conc_conn *first = raw_connect(addr);
    cr_assert_not_null(first);
    cr_assert_eq(ping(first, GUARD), 0);

    /* Room for two more connections in the server, not three. */
    pid_t pid = conc_manager_pid(m);
    struct rlimit rl;
    cr_assert_eq(prlimit(pid, RLIMIT_NOFILE, NULL, &rl), 0);
    struct rlimit low = rl;
    low.rlim_cur = (rlim_t)highest_fd(pid) + 3;
    cr_assert_eq(prlimit(pid, RLIMIT_NOFILE, &low, NULL), 0);

    conc_conn *more[8] = { NULL };
    int n = 0;
    while (n < 8 && (more[n] = raw_connect(addr)) != NULL)
        n++;
    cr_assert_lt(n, 8, "the server never ran out of descriptors");
    /* Out of descriptors, it still answers the clients it has. */
    cr_expect_eq(ping(first, 10.0), 0, "a connected client is not served");
    for (int i = 0; i < n; i++)
        cr_expect_eq(ping(more[i], 10.0), 0, "connection %d is not served", i);

    /* A descriptor freed: the next client is taken. */
    conc_conn_free(more[0]);
    more[0] = NULL;
    conc_conn *again = NULL;
    for (int tries = 0; tries < 20 && !again; tries++)
        again = raw_connect(addr);
    cr_assert_not_null(again, "no client taken after a descriptor was freed");
    cr_expect_eq(ping(again, 10.0), 0);
    conc_conn_free(again);
    for (int i = 1; i < n; i++)
        conc_conn_free(more[i]);
    cr_expect_eq(ping(first, 10.0), 0);
    conc_conn_free(first);
    conc_manager_free(m);
}

Test(manager_fds, out_of_descriptors_the_server_serves_whom_it_has, .timeout = 120)
{
    key = NULL;
    out_of_descriptors();
}

Test(manager_fds, out_of_descriptors_with_an_authkey, .timeout = 120)
{
    key = "secret";
    out_of_descriptors();
}
