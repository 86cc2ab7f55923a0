/*
 * test_manager_answers.c - conc/manager.h against a server that lies: a
 * scripted stand-in speaks the manager's protocol (src/manager_wire.h) and
 * answers each request with what a test sets for its op.  Every answer the
 * proxy cannot take at its word (a negative count, a status the call never
 * returns, an odd number of strings for a dict's items, a missing string,
 * an id of 0, a type that does not exist) is -EPROTO for the caller; no
 * call hands such a value on, and none reads past the message.
 *
 * Criterion runs every test in its own process.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conc.h"

#define GUARD 30.0                      /* a hang guard, never reached when correct */

/* The request ops and the hello, as src/manager_wire.h has them. */
enum {
    OP_PING = 1, OP_SHUTDOWN, OP_CREATE, OP_CREATE_USER, OP_OPEN,
    OP_D_SET, OP_D_GET, OP_D_DEL, OP_D_LEN, OP_D_KEYS, OP_D_ITEMS, OP_D_UPDATE, OP_D_POP,
    OP_D_SETDEFAULT,
    OP_L_APPEND, OP_L_EXTEND, OP_L_GET, OP_L_SET, OP_L_POP, OP_L_INSERT, OP_L_LEN, OP_L_SLICE,
    OP_V_GET, OP_V_SET, OP_A_LEN, OP_A_GET, OP_A_SET,
    OP_Q_PUT, OP_Q_GET, OP_Q_SIZE, OP_Q_TASK_DONE, OP_Q_JOIN,
    OP_ACQUIRE, OP_RELEASE, OP_E_SET, OP_E_CLEAR, OP_E_IS_SET, OP_E_WAIT, OP_C_WAIT,
    OP_C_NOTIFY, OP_B_WAIT, OP_B_ABORT, OP_B_RESET, OP_B_INFO, OP_CALL, OP_Q_INFO, OP_END
};
#define HELLO "#CONC-MANAGER-1#"

/* What the stand-in answers to an op: a 16-byte head (status, string
 * count, value) and the bytes that follow it as they are. */
struct script {
    int32_t status;
    uint32_t nargs;
    int64_t value;
    size_t tail_len;
    uint8_t tail[64];
};

static struct script answers[OP_END];
static pthread_mutex_t answers_mu = PTHREAD_MUTEX_INITIALIZER;

static void answer(int op, int32_t status, int64_t value)
{
    pthread_mutex_lock(&answers_mu);
    answers[op] = (struct script){ .status = status, .value = value };
    pthread_mutex_unlock(&answers_mu);
}

/* An answer carrying strings: n of them, each given as a C string. */
static void answer_strings(int op, int32_t status, int64_t value, uint32_t n, const char **s)
{
    struct script sc = { .status = status, .nargs = n, .value = value };
    for (uint32_t i = 0; i < n; i++) {
        uint32_t l = (uint32_t)strlen(s[i]);
        cr_assert_leq(sc.tail_len + 4 + l, sizeof sc.tail);
        memcpy(sc.tail + sc.tail_len, &l, 4);
        memcpy(sc.tail + sc.tail_len + 4, s[i], l);
        sc.tail_len += 4 + l;
    }
    pthread_mutex_lock(&answers_mu);
    answers[op] = sc;
    pthread_mutex_unlock(&answers_mu);
}

/* An answer whose head and bytes are given as they are (a count that does
 * not match them, say). */
static void answer_raw(int op, int32_t status, uint32_t nargs, const void *tail, size_t len)
{
    struct script sc = { .status = status, .nargs = nargs, .tail_len = len };
    cr_assert_leq(len, sizeof sc.tail);
    memcpy(sc.tail, tail, len);
    pthread_mutex_lock(&answers_mu);
    answers[op] = sc;
    pthread_mutex_unlock(&answers_mu);
}

struct stand_in {
    conc_listener *l;
    int stop;                           /* atomic */
    char path[128];
    pthread_t t;
};

static void *serve_conn(void *arg)
{
    conc_conn *c = arg;
    if (conc_conn_send_bytes(c, HELLO, strlen(HELLO), GUARD) == 0) {
        for (;;) {
            void *req;
            size_t len;
            if (conc_conn_recv_alloc(c, &req, &len, GUARD))
                break;
            int op = len >= 2 ? ((uint8_t *)req)[1] : 0;
            free(req);
            if (op <= 0 || op >= OP_END)
                break;
            pthread_mutex_lock(&answers_mu);
            struct script sc = answers[op];
            pthread_mutex_unlock(&answers_mu);
            uint8_t buf[16 + sizeof sc.tail];
            memcpy(buf, &sc.status, 4);
            memcpy(buf + 4, &sc.nargs, 4);
            memcpy(buf + 8, &sc.value, 8);
            memcpy(buf + 16, sc.tail, sc.tail_len);
            if (conc_conn_send_bytes(c, buf, 16 + sc.tail_len, GUARD))
                break;
        }
    }
    conc_conn_free(c);
    return NULL;
}

static void *accept_loop(void *arg)
{
    struct stand_in *s = arg;
    while (!__atomic_load_n(&s->stop, __ATOMIC_ACQUIRE)) {
        conc_conn *c;
        if (conc_listener_accept(s->l, &c, 0.05))
            continue;
        pthread_t t;
        if (pthread_create(&t, NULL, serve_conn, c) == 0)
            pthread_detach(t);
        else
            conc_conn_free(c);
    }
    return NULL;
}

static struct stand_in stand;

/* Starts the stand-in and connects a manager handle to it (PING answered
 * with 0); CREATE answers id 1 with no typecode unless a test says else. */
static conc_manager *stand_in_start(void)
{
    for (int op = 1; op < OP_END; op++)
        answer(op, 0, 0);
    answer(OP_CREATE, 0, 1);
    snprintf(stand.path, sizeof stand.path, "/tmp/conc-test-manager-answers-%d", (int)getpid());
    unlink(stand.path);
    cr_assert_eq(conc_listener_new(&stand.l, stand.path, NULL), 0);
    cr_assert_eq(pthread_create(&stand.t, NULL, accept_loop, &stand), 0);
    conc_manager_opts o = CONC_MANAGER_OPTS_INIT;
    o.address = stand.path;
    conc_manager *m;
    cr_assert_eq(conc_manager_new(&m, &o), 0);
    cr_assert_eq(conc_manager_connect(m), 0);
    return m;
}

static void stand_in_stop(conc_manager *m)
{
    conc_manager_free(m);               /* a connected handle: no shutdown sent */
    __atomic_store_n(&stand.stop, 1, __ATOMIC_RELEASE);
    pthread_join(stand.t, NULL);
    conc_listener_free(stand.l);
    unlink(stand.path);
}

static conc_proxy *make(conc_manager *m, conc_proxy_type t, uint64_t n, uint64_t size)
{
    conc_proxy *p;
    int e = conc_manager_create(m, &p, t, NULL, n, size);
    cr_assert_eq(e, 0, "create type %d: %d", t, e);
    return p;
}

/* A count below zero is not a count: dict, list, Array lengths and a
 * Queue's size come back as -EPROTO, not as a made-up error code. */
Test(manager_answers, negative_counts_are_eproto, .timeout = 60)
{
    conc_manager *m = stand_in_start();
    conc_proxy *d = make(m, CONC_PROXY_DICT, 0, 0);
    conc_proxy *l = make(m, CONC_PROXY_LIST, 0, 0);
    conc_proxy *a = make(m, CONC_PROXY_ARRAY, 4, 1);
    conc_proxy *q = make(m, CONC_PROXY_QUEUE, 0, 0);
    answer(OP_D_LEN, 0, 3);
    answer(OP_L_LEN, 0, 4);
    answer(OP_A_LEN, 0, 5);
    answer(OP_Q_SIZE, 0, 6);
    cr_expect_eq(conc_proxy_dict_len(d), 3);          /* the stand-in's word, when it can be */
    cr_expect_eq(conc_proxy_list_len(l), 4);
    cr_expect_eq(conc_proxy_array_len(a), 5);
    cr_expect_eq(conc_proxy_queue_qsize(q), 6);
    answer(OP_D_LEN, 0, -EIO);                        /* what a lie looks like */
    answer(OP_L_LEN, 0, -1);
    answer(OP_A_LEN, 0, INT64_MIN);
    answer(OP_Q_SIZE, 0, -ENOENT);
    cr_expect_eq(conc_proxy_dict_len(d), -EPROTO);
    cr_expect_eq(conc_proxy_list_len(l), -EPROTO);
    cr_expect_eq(conc_proxy_array_len(a), -EPROTO);
    cr_expect_eq(conc_proxy_queue_qsize(q), -EPROTO);
    answer(OP_Q_INFO, 3, 2);                          /* maxsize 3, qsize 2 */
    cr_expect_eq(conc_proxy_queue_full(q), 0);
    answer(OP_Q_INFO, 3, -1);
    cr_expect_eq(conc_proxy_queue_full(q), -EPROTO);
    answer(OP_Q_INFO, 0, INT64_MIN);
    cr_expect_eq(conc_proxy_queue_empty(q), -EPROTO);
    /* An error status is still the error. */
    answer(OP_D_LEN, -ENOENT, 0);
    cr_expect_eq(conc_proxy_dict_len(d), -ENOENT);
    conc_proxy_free(d);
    conc_proxy_free(l);
    conc_proxy_free(a);
    conc_proxy_free(q);
    stand_in_stop(m);
}

/* A call documented to return 0 never returns another number, and
 * setdefault only 0 or 1, whatever the server says. */
Test(manager_answers, statuses_a_call_never_returns_are_eproto, .timeout = 60)
{
    conc_manager *m = stand_in_start();
    conc_proxy *d = make(m, CONC_PROXY_DICT, 0, 0);
    conc_proxy *l = make(m, CONC_PROXY_LIST, 0, 0);
    conc_proxy *k = make(m, CONC_PROXY_LOCK, 0, 0);
    conc_proxy *e = make(m, CONC_PROXY_EVENT, 0, 0);
    conc_proxy *q = make(m, CONC_PROXY_QUEUE, 0, 0);
    answer(OP_D_SET, 5, 0);
    answer(OP_L_APPEND, 1, 0);
    answer(OP_ACQUIRE, 7, 0);
    answer(OP_RELEASE, 1, 0);
    answer(OP_E_SET, 2, 0);
    answer(OP_Q_PUT, 3, 0);
    cr_expect_eq(conc_proxy_dict_set(d, "k", 1, "v", 1), -EPROTO);
    cr_expect_eq(conc_proxy_list_append(l, "v", 1), -EPROTO);
    cr_expect_eq(conc_proxy_acquire(k, GUARD), -EPROTO);
    cr_expect_eq(conc_proxy_release(k), -EPROTO);
    cr_expect_eq(conc_proxy_event_set(e), -EPROTO);
    cr_expect_eq(conc_proxy_queue_put(q, "m", 1, GUARD), -EPROTO);

    const char *v[] = { "v" };
    void *got = NULL;
    size_t n = 0;
    answer_strings(OP_D_SETDEFAULT, 2, 0, 1, v);
    cr_expect_eq(conc_proxy_dict_setdefault(d, "k", 1, "v", 1, &got, &n), -EPROTO);
    answer_strings(OP_D_SETDEFAULT, 1, 0, 1, v);
    cr_expect_eq(conc_proxy_dict_setdefault(d, "k", 1, "v", 1, &got, &n), 1);
    cr_expect(n == 1 && got && memcmp(got, "v", 1) == 0);
    free(got);
    answer_strings(OP_D_GET, 4, 0, 1, v);
    got = NULL;
    cr_expect_eq(conc_proxy_dict_get(d, "k", 1, &got, &n), -EPROTO);
    cr_expect_null(got);                              /* nothing handed out */
    conc_proxy_free(d);
    conc_proxy_free(l);
    conc_proxy_free(k);
    conc_proxy_free(e);
    conc_proxy_free(q);
    stand_in_stop(m);
}

/* d.items() is key, value, key, value: an odd count would send a caller
 * that walks the pairs past the end of the block. */
Test(manager_answers, dict_items_with_an_odd_count_is_eproto, .timeout = 60)
{
    conc_manager *m = stand_in_start();
    conc_proxy *d = make(m, CONC_PROXY_DICT, 0, 0);
    const char *three[] = { "k1", "v1", "k2" };
    answer_strings(OP_D_ITEMS, 0, 0, 3, three);
    conc_proxy_items *it = NULL;
    cr_expect_eq(conc_proxy_dict_items(d, &it), -EPROTO);
    cr_expect_null(it);
    answer_strings(OP_D_ITEMS, 0, 0, 2, three);
    cr_assert_eq(conc_proxy_dict_items(d, &it), 0);
    cr_expect_eq(it->count, 2);
    free(it);
    conc_proxy_free(d);
    stand_in_stop(m);
}

/* A Barrier's parties are at least 1; its wait's index is not negative
 * unless it is an error code. */
Test(manager_answers, barrier_answers_checked, .timeout = 60)
{
    conc_manager *m = stand_in_start();
    conc_proxy *b = make(m, CONC_PROXY_BARRIER, 2, 0);
    answer(OP_B_INFO, 0, 0);
    cr_expect_eq(conc_proxy_barrier_parties(b), -EPROTO);
    answer(OP_B_INFO, 2, 1 | (int64_t)1 << 32);
    cr_expect_eq(conc_proxy_barrier_parties(b), 2);
    cr_expect_eq(conc_proxy_barrier_n_waiting(b), 1);
    cr_expect_eq(conc_proxy_barrier_broken(b), 1);
    answer(OP_B_WAIT, 1, 0);
    cr_expect_eq(conc_proxy_barrier_wait(b, GUARD), 1);
    conc_proxy_free(b);
    stand_in_stop(m);
}

/* What the proxy checked before (kept so): a missing string, a typed item
 * of the wrong size, an id of 0, an unknown type, a string count the bytes
 * do not hold, a status that is no errno. */
Test(manager_answers, malformed_answers_are_eproto, .timeout = 60)
{
    conc_manager *m = stand_in_start();
    conc_proxy *d = make(m, CONC_PROXY_DICT, 0, 0);
    void *got = NULL;
    size_t n = 0;
    answer(OP_D_GET, 0, 0);                           /* no value string */
    cr_expect_eq(conc_proxy_dict_get(d, "k", 1, &got, &n), -EPROTO);
    cr_expect_null(got);

    const char *i4[] = { "i" };
    answer_strings(OP_CREATE, 0, 1, 1, i4);
    conc_proxy *v;
    cr_assert_eq(conc_manager_value(m, &v, NULL, 'i'), 0);
    const char *two[] = { "ab" };                     /* an int is not 2 bytes here */
    answer_strings(OP_V_GET, 0, 0, 1, two);
    int64_t x = 0;
    cr_expect_eq(conc_proxy_value_get_int(v, &x), -EPROTO);
    conc_proxy_free(v);

    answer(OP_CREATE, 0, 0);                          /* id 0 */
    conc_proxy *p = NULL;
    cr_expect_eq(conc_manager_create(m, &p, CONC_PROXY_LIST, NULL, 0, 0), -EPROTO);
    cr_expect_null(p);
    answer(OP_OPEN, 99, 0);                           /* no such type */
    cr_expect_eq(conc_manager_open(m, &p, 5), -EPROTO);

    uint8_t short_tail[6] = { 9, 0, 0, 0, 'a', 'b' }; /* a 9-byte string in 2 */
    answer_raw(OP_D_KEYS, 0, 1, short_tail, sizeof short_tail);
    conc_proxy_items *it = NULL;
    cr_expect_eq(conc_proxy_dict_keys(d, &it), -EPROTO);
    cr_expect_null(it);
    /* The stream is out of step after that: the proxy stays broken. */
    cr_expect_eq(conc_proxy_dict_set(d, "k", 1, "v", 1), -EPIPE);
    conc_proxy_free(d);

    answer(OP_CREATE, 0, 1);
    d = make(m, CONC_PROXY_DICT, 0, 0);
    answer(OP_D_DEL, -5000, 0);                       /* no errno */
    cr_expect_eq(conc_proxy_dict_del(d, "k", 1), -EPROTO);
    conc_proxy_free(d);
    stand_in_stop(m);
}
