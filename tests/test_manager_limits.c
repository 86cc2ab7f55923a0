/*
 * test_manager_limits.c - conc/manager.h: a client whose message size
 * (opts.max_message) is smaller than what another client stored.  An
 * answer it could not take is -EMSGSIZE before anything is taken out: a
 * Queue.get, a list's pop or a dict's pop leaves the message or the item
 * where it is (another client still gets it), and the proxy stays usable.
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

#define GUARD 30.0                      /* a hang guard, never reached when correct */
#define BIG 1000                        /* more than the small client takes */
#define SMALL_MAX 256                   /* the small client's message size */

struct pair {
    conc_manager *m;                    /* started, default message size */
    conc_manager *small;                /* connected to it, SMALL_MAX */
};

static struct pair start_pair(void)
{
    struct pair p;
    cr_assert_eq(conc_manager_new(&p.m, NULL), 0);
    cr_assert_eq(conc_manager_start(p.m), 0);
    char addr[128];
    cr_assert_gt(conc_manager_address(p.m, addr, sizeof addr), 0);
    conc_manager_opts o = CONC_MANAGER_OPTS_INIT;
    o.address = addr;
    o.max_message = SMALL_MAX;
    cr_assert_eq(conc_manager_new(&p.small, &o), 0);
    cr_assert_eq(conc_manager_connect(p.small), 0);
    return p;
}

static void stop_pair(struct pair *p)
{
    conc_manager_free(p->small);
    conc_manager_free(p->m);
}

static uint8_t big[BIG];

static void fill_big(void)
{
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (uint8_t)(i * 7 + 3);
}

static void expect_big(const void *v, size_t n)
{
    cr_expect_eq(n, sizeof big);
    cr_expect(n == sizeof big && memcmp(v, big, n) == 0, "the message came back changed");
}

Test(manager_limits, queue_get_too_big_leaves_the_message, .timeout = 60)
{
    fill_big();
    struct pair p = start_pair();
    conc_proxy *q, *sq;
    cr_assert_eq(conc_manager_create(p.m, &q, CONC_PROXY_QUEUE, "q", 0, 0), 0);
    cr_assert_eq(conc_manager_create(p.small, &sq, CONC_PROXY_QUEUE, "q", 0, 0), 0);
    cr_assert_eq(conc_proxy_queue_put(q, big, sizeof big, GUARD), 0);
    cr_assert_eq(conc_proxy_queue_put(q, "tiny", 4, GUARD), 0);
    void *v = NULL;
    size_t n = 0;
    cr_expect_eq(conc_proxy_queue_get(sq, &v, &n, GUARD), -EMSGSIZE);
    cr_expect_null(v);
    cr_expect_eq(conc_proxy_queue_qsize(sq), 2, "the message stays in the queue");
    /* The big message is first, still: the large client gets it, then the
     * small one gets the next. */
    cr_assert_eq(conc_proxy_queue_get(q, &v, &n, GUARD), 0);
    expect_big(v, n);
    free(v);
    cr_assert_eq(conc_proxy_queue_get(sq, &v, &n, GUARD), 0);
    cr_expect(n == 4 && memcmp(v, "tiny", 4) == 0);
    free(v);
    conc_proxy_free(q);
    conc_proxy_free(sq);
    stop_pair(&p);
}

Test(manager_limits, list_and_dict_pop_too_big_leave_the_item, .timeout = 60)
{
    fill_big();
    struct pair p = start_pair();
    conc_proxy *l, *sl, *d, *sd;
    cr_assert_eq(conc_manager_create(p.m, &l, CONC_PROXY_LIST, "l", 0, 0), 0);
    cr_assert_eq(conc_manager_create(p.small, &sl, CONC_PROXY_LIST, "l", 0, 0), 0);
    cr_assert_eq(conc_manager_create(p.m, &d, CONC_PROXY_DICT, "d", 0, 0), 0);
    cr_assert_eq(conc_manager_create(p.small, &sd, CONC_PROXY_DICT, "d", 0, 0), 0);
    cr_assert_eq(conc_proxy_list_append(l, big, sizeof big), 0);
    cr_assert_eq(conc_proxy_dict_set(d, "k", 1, big, sizeof big), 0);

    void *v = NULL;
    size_t n = 0;
    cr_expect_eq(conc_proxy_list_pop(sl, -1, &v, &n), -EMSGSIZE);
    cr_expect_eq(conc_proxy_list_len(sl), 1, "the item stays in the list");
    cr_expect_eq(conc_proxy_dict_pop(sd, "k", 1, &v, &n), -EMSGSIZE);
    cr_expect_eq(conc_proxy_dict_len(sd), 1, "the key stays in the dict");
    cr_expect_eq(conc_proxy_dict_get(sd, "k", 1, &v, &n), -EMSGSIZE);
    cr_expect_eq(conc_proxy_list_get(sl, 0, &v, &n), -EMSGSIZE);
    cr_expect_null(v);

    cr_assert_eq(conc_proxy_list_pop(l, -1, &v, &n), 0);
    expect_big(v, n);
    free(v);
    cr_assert_eq(conc_proxy_dict_pop(d, "k", 1, &v, &n), 0);
    expect_big(v, n);
    free(v);
    /* The small client's proxies still work. */
    cr_expect_eq(conc_proxy_list_append(sl, "s", 1), 0);
    cr_expect_eq(conc_proxy_list_len(l), 1);
    cr_expect_eq(conc_proxy_dict_len(sd), 0);
    conc_proxy_free(l);
    conc_proxy_free(sl);
    conc_proxy_free(d);
    conc_proxy_free(sd);
    stop_pair(&p);
}

/* keys, items and slices larger than the small client takes: -EMSGSIZE,
 * and the proxy is not broken by an answer it refused. */
Test(manager_limits, listings_too_big_keep_the_proxy_usable, .timeout = 60)
{
    struct pair p = start_pair();
    conc_proxy *d, *sd;
    cr_assert_eq(conc_manager_create(p.m, &d, CONC_PROXY_DICT, "d", 0, 0), 0);
    cr_assert_eq(conc_manager_create(p.small, &sd, CONC_PROXY_DICT, "d", 0, 0), 0);
    char key[32];
    for (int i = 0; i < 40; i++) {
        int kl = snprintf(key, sizeof key, "key-number-%02d", i);
        cr_assert_eq(conc_proxy_dict_set(d, key, (size_t)kl, "v", 1), 0);
    }
    conc_proxy_items *it = NULL;
    cr_expect_eq(conc_proxy_dict_keys(sd, &it), -EMSGSIZE);
    cr_expect_null(it);
    cr_expect_eq(conc_proxy_dict_len(sd), 40);
    cr_assert_eq(conc_proxy_dict_keys(d, &it), 0);
    cr_expect_eq(it->count, 40);
    free(it);
    conc_proxy_free(d);
    conc_proxy_free(sd);
    stop_pair(&p);
}

/* A server with a smaller message size than its client's: the client
 * learns it when it connects, and a request the server would refuse fails
 * with -EMSGSIZE before it is sent; the proxy stays usable (the server
 * used to close the connection, and the call gave -ECONNRESET, as if the
 * server had gone). */
Test(manager_limits, requests_over_the_servers_size_fail_before_sending, .timeout = 60)
{
    fill_big();
    conc_manager *m, *c;
    conc_manager_opts o = CONC_MANAGER_OPTS_INIT;
    o.max_message = SMALL_MAX;
    cr_assert_eq(conc_manager_new(&m, &o), 0);
    cr_assert_eq(conc_manager_start(m), 0);
    char addr[128];
    cr_assert_gt(conc_manager_address(m, addr, sizeof addr), 0);
    conc_manager_opts co = CONC_MANAGER_OPTS_INIT;
    co.address = addr;                  /* the default message size, larger */
    cr_assert_eq(conc_manager_new(&c, &co), 0);
    cr_assert_eq(conc_manager_connect(c), 0);
    conc_proxy *d;
    cr_assert_eq(conc_manager_create(c, &d, CONC_PROXY_DICT, "d", 0, 0), 0);
    cr_expect_eq(conc_proxy_dict_set(d, "k", 1, big, sizeof big), -EMSGSIZE);
    cr_expect_eq(conc_proxy_dict_set(d, "k", 1, "small", 5), 0, "the proxy is broken");
    cr_expect_eq(conc_proxy_dict_len(d), 1);
    conc_proxy_free(d);
    conc_manager_free(c);
    conc_manager_free(m);
}
