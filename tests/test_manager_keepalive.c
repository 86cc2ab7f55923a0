/*
 * test_manager_keepalive.c - conc/manager.h over TCP: a peer machine that
 * vanishes without closing its connection (power lost, network cut) sends
 * no FIN and no RST, so only TCP keepalives tell the other end.  Both ends
 * of a manager's TCP connection arm them: the server's, so that what a
 * vanished client held (a Lock) is released; the proxy's, so that its call
 * fails instead of waiting for ever.  The kernel shows an armed keepalive
 * timer in /proc/net/tcp (timer 2) on an idle established socket; a
 * connection over a Unix socket has no such failure and needs none.
 *
 * Criterion runs every test in its own process.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conc.h"

/* Children of this test never report leaks (a started manager's server is
 * a fork of it that exits without freeing what the test made). */
#define CONC_TEST_TSAN_OPTIONS "atexit_sleep_ms=0:die_after_fork=0"
#include "support/fork_sanitizers.h"

/* The timers of the established IPv4 connections with local port lport
 * (server ends) or remote port lport (client ends): counts the ends and
 * those whose keepalive timer (2) is armed. */
struct ends {
    int server, server_ka, client, client_ka;
    int busy;                           /* ends with data in flight (timer 1, 4) */
};

static struct ends scan(unsigned port)
{
    struct ends e = { 0 };
    FILE *f = fopen("/proc/net/tcp", "r");
    cr_assert_not_null(f);
    char line[512];
    if (!fgets(line, sizeof line, f)) {         /* the header */
        fclose(f);
        return e;
    }
    while (fgets(line, sizeof line, f)) {
        unsigned slot, lip, lp, rip, rp, st, txq, rxq, tr;
        if (sscanf(line, " %u: %x:%x %x:%x %x %x:%x %x:", &slot, &lip, &lp, &rip, &rp, &st, &txq,
                   &rxq, &tr) != 9 || st != 1)
            continue;
        e.busy += (lp == port || rp == port) && (tr == 1 || tr == 4);
        if (lp == port) {
            e.server++;
            e.server_ka += tr == 2;
        } else if (rp == port) {
            e.client++;
            e.client_ka += tr == 2;
        }
    }
    fclose(f);
    return e;
}

Test(manager_keepalive, both_ends_of_a_tcp_connection_arm_keepalives, .timeout = 60)
{
    conc_manager *m;
    conc_manager_opts o = CONC_MANAGER_OPTS_INIT;
    o.address = "127.0.0.1:0";
    o.authkey = "secret";
    o.authkey_len = 6;
    cr_assert_eq(conc_manager_new(&m, &o), 0);
    cr_assert_eq(conc_manager_start(m), 0);
    char addr[128];
    cr_assert_gt(conc_manager_address(m, addr, sizeof addr), 0);
    const char *colon = strrchr(addr, ':');
    cr_assert_not_null(colon);
    unsigned port = (unsigned)atoi(colon + 1);
    cr_assert_gt(port, 0);

    conc_proxy *d, *l;
    cr_assert_eq(conc_manager_create(m, &d, CONC_PROXY_DICT, NULL, 0, 0), 0);
    cr_assert_eq(conc_manager_create(m, &l, CONC_PROXY_LOCK, NULL, 0, 0), 0);
    cr_assert_eq(conc_proxy_acquire(l, 5.0), 0);
    cr_assert_eq(conc_proxy_dict_len(d), 0);
    /* Until the last answer's acknowledgement came (a delayed ACK), the
     * kernel shows that end's retransmission timer instead. */
    struct ends e;
    int64_t guard = conc_now() + 20 * (int64_t)1000000000;
    while ((e = scan(port)).busy && conc_now() < guard)
        usleep(1000);
    cr_expect_eq(e.server, 2, "server ends: %d", e.server);
    cr_expect_eq(e.client, 2, "client ends: %d", e.client);
    cr_expect_eq(e.server_ka, e.server, "server ends with keepalive: %d of %d", e.server_ka,
                 e.server);
    cr_expect_eq(e.client_ka, e.client, "client ends with keepalive: %d of %d", e.client_ka,
                 e.client);
    conc_proxy_free(d);
    conc_proxy_free(l);
    conc_manager_free(m);
}
