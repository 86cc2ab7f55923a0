/*
 * test_manager.c - conc/manager.h: a manager server started as a child or
 * served in a thread, proxies to every type of object and every call on
 * them, many processes at once with exact results, a client killed while
 * it holds a lock (the lock is released), the manager killed under load
 * (every call fails at once), malformed and oversized requests (only their
 * connection is closed), a wrong authkey refused, reconnecting to a
 * restarted manager, and no descriptor, process or file left behind.
 *
 * Criterion runs every test in its own process.  Child processes never
 * assert: they report through their exit code, and the test checks it.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <dirent.h>

#include "conc.h"
#include "support/fd_count.h"

/* Children of this test never report leaks (they exit without freeing what
 * their parent made), as support/fork_sanitizers.h arranges; and under TSan
 * a started manager's server, a fork of this multi-threaded test process,
 * starts its connection threads: TSan allows that with die_after_fork=0. */
#define CONC_TEST_TSAN_OPTIONS "atexit_sleep_ms=0:die_after_fork=0"
#include "support/fork_sanitizers.h"
#include "support/task_state.h"

#define GUARD 30.0                      /* a hang guard, never reached when correct */

static conc_manager *started(const conc_manager_opts *o)
{
    conc_manager *m;
    cr_assert_eq(conc_manager_new(&m, o), 0);
    cr_assert_eq(conc_manager_start(m), 0);
    cr_assert_gt(conc_manager_pid(m), 0);
    return m;
}

static conc_proxy *make(conc_manager *m, conc_proxy_type t, uint64_t n, uint64_t size)
{
    conc_proxy *p;
    int e = conc_manager_create(m, &p, t, NULL, n, size);
    cr_assert_eq(e, 0, "create type %d: %d", t, e);
    return p;
}

static void expect_bytes(const void *got, size_t len, const char *want)
{
    cr_expect_eq(len, strlen(want));
    cr_expect(len == strlen(want) && memcmp(got, want, len) == 0, "got '%.*s', want '%s'",
              (int)len, (const char *)got, want);
}

static bool item_is(const conc_proxy_items *it, size_t i, const char *want)
{
    return i < it->count && it->item[i].len == strlen(want) &&
           memcmp(it->item[i].data, want, it->item[i].len) == 0;
}

/* ------------------------------------------------------------- dict */

Test(manager, dict_every_call, .timeout = 60)
{
    conc_manager *m = started(NULL);
    conc_proxy *d = make(m, CONC_PROXY_DICT, 0, 0);
    void *v;
    size_t n;
    cr_expect_eq(conc_proxy_dict_len(d), 0);
    cr_expect_eq(conc_proxy_dict_get(d, "a", 1, &v, &n), -ENOENT);
    cr_expect_eq(conc_proxy_dict_set(d, "a", 1, "1", 1), 0);
    cr_expect_eq(conc_proxy_dict_set(d, "b\0x", 3, "", 0), 0);    /* byte keys, empty value */
    cr_expect_eq(conc_proxy_dict_set(d, "c", 1, "3", 1), 0);
    cr_expect_eq(conc_proxy_dict_set(d, "a", 1, "one", 3), 0);    /* replaces, keeps place */
    cr_expect_eq(conc_proxy_dict_len(d), 3);
    cr_assert_eq(conc_proxy_dict_get(d, "a", 1, &v, &n), 0);
    expect_bytes(v, n, "one");
    free(v);
    cr_assert_eq(conc_proxy_dict_get(d, "b\0x", 3, &v, &n), 0);
    cr_expect_eq(n, 0);
    cr_expect_not_null(v);
    free(v);
    cr_expect_eq(conc_proxy_dict_get(d, "b", 1, &v, &n), -ENOENT);

    conc_proxy_items *it;
    cr_assert_eq(conc_proxy_dict_keys(d, &it), 0);
    cr_expect_eq(it->count, 3);
    cr_expect(item_is(it, 0, "a") && item_is(it, 2, "c"));
    cr_expect(it->item[1].len == 3 && memcmp(it->item[1].data, "b\0x", 3) == 0);
    free(it);

    cr_expect_eq(conc_proxy_dict_del(d, "b\0x", 3), 0);
    cr_expect_eq(conc_proxy_dict_del(d, "b\0x", 3), -ENOENT);
    conc_proxy_bytes kv[] = { { "x", 1 }, { "10", 2 }, { "a", 1 }, { "A", 1 } };
    cr_expect_eq(conc_proxy_dict_update(d, kv, 2), 0);
    cr_assert_eq(conc_proxy_dict_items(d, &it), 0);
    cr_assert_eq(it->count, 6);
    cr_expect(item_is(it, 0, "a") && item_is(it, 1, "A"));
    cr_expect(item_is(it, 2, "c") && item_is(it, 3, "3"));
    cr_expect(item_is(it, 4, "x") && item_is(it, 5, "10"));
    free(it);

    cr_assert_eq(conc_proxy_dict_pop(d, "x", 1, &v, &n), 0);
    expect_bytes(v, n, "10");
    free(v);
    cr_expect_eq(conc_proxy_dict_pop(d, "x", 1, &v, &n), -ENOENT);
    cr_assert_eq(conc_proxy_dict_setdefault(d, "c", 1, "new", 3, &v, &n), 0);
    expect_bytes(v, n, "3");
    free(v);
    cr_assert_eq(conc_proxy_dict_setdefault(d, "z", 1, "new", 3, &v, &n), 1);
    expect_bytes(v, n, "new");
    free(v);
    cr_expect_eq(conc_proxy_dict_len(d), 3);

    /* A large value round trip. */
    size_t big = 1 << 20;
    char *b = malloc(big);
    for (size_t i = 0; i < big; i++)
        b[i] = (char)(i * 7);
    cr_expect_eq(conc_proxy_dict_set(d, "big", 3, b, big), 0);
    cr_assert_eq(conc_proxy_dict_get(d, "big", 3, &v, &n), 0);
    cr_expect(n == big && memcmp(v, b, big) == 0);
    free(v);
    free(b);

    /* Calls of another type's proxy. */
    cr_expect_eq(conc_proxy_list_append(d, "x", 1), -EINVAL);
    cr_expect_eq(conc_proxy_acquire(d, 0), -EINVAL);
    conc_proxy_free(d);
    conc_manager_free(m);
}

/* ------------------------------------------------------------- list */

Test(manager, list_every_call, .timeout = 60)
{
    conc_manager *m = started(NULL);
    conc_proxy *l = make(m, CONC_PROXY_LIST, 0, 0);
    void *v;
    size_t n;
    cr_expect_eq(conc_proxy_list_len(l), 0);
    cr_expect_eq(conc_proxy_list_pop(l, -1, &v, &n), -ERANGE);
    cr_expect_eq(conc_proxy_list_append(l, "b", 1), 0);
    conc_proxy_bytes more[] = { { "c", 1 }, { "d", 1 }, { "", 0 } };
    cr_expect_eq(conc_proxy_list_extend(l, more, 3), 0);
    cr_expect_eq(conc_proxy_list_insert(l, 0, "a", 1), 0);
    cr_expect_eq(conc_proxy_list_insert(l, 100, "z", 1), 0);     /* past the end: appends */
    cr_expect_eq(conc_proxy_list_insert(l, -100, "0", 1), 0);    /* before the start */
    cr_expect_eq(conc_proxy_list_len(l), 7);                     /* 0 a b c d "" z */
    cr_assert_eq(conc_proxy_list_get(l, 1, &v, &n), 0);
    expect_bytes(v, n, "a");
    free(v);
    cr_assert_eq(conc_proxy_list_get(l, -1, &v, &n), 0);
    expect_bytes(v, n, "z");
    free(v);
    cr_expect_eq(conc_proxy_list_get(l, 7, &v, &n), -ERANGE);
    cr_expect_eq(conc_proxy_list_get(l, -8, &v, &n), -ERANGE);
    cr_expect_eq(conc_proxy_list_set(l, -2, "e", 1), 0);
    cr_expect_eq(conc_proxy_list_set(l, 9, "e", 1), -ERANGE);
    cr_assert_eq(conc_proxy_list_pop(l, 0, &v, &n), 0);
    expect_bytes(v, n, "0");
    free(v);
    cr_assert_eq(conc_proxy_list_pop(l, -1, &v, &n), 0);
    expect_bytes(v, n, "z");
    free(v);
    conc_proxy_items *it;
    cr_assert_eq(conc_proxy_list_slice(l, 0, 100, &it), 0);
    cr_assert_eq(it->count, 5);
    cr_expect(item_is(it, 0, "a") && item_is(it, 1, "b") && item_is(it, 2, "c") &&
              item_is(it, 3, "d") && item_is(it, 4, "e"));
    free(it);
    cr_assert_eq(conc_proxy_list_slice(l, -3, -1, &it), 0);
    cr_expect(it->count == 2 && item_is(it, 0, "c") && item_is(it, 1, "d"));
    free(it);
    cr_assert_eq(conc_proxy_list_slice(l, 4, 2, &it), 0);
    cr_expect_eq(it->count, 0);
    free(it);
    conc_proxy_free(l);
    conc_manager_free(m);
}

/* ------------------------------------------- namespace, Value, Array */

Test(manager, namespace_value_array, .timeout = 60)
{
    conc_manager *m = started(NULL);
    conc_proxy *ns = make(m, CONC_PROXY_NAMESPACE, 0, 0);
    void *v;
    size_t n;
    cr_expect_eq(conc_proxy_ns_get(ns, "x", &v, &n), -ENOENT);
    cr_expect_eq(conc_proxy_ns_set(ns, "x", "42", 2), 0);
    cr_assert_eq(conc_proxy_ns_get(ns, "x", &v, &n), 0);
    expect_bytes(v, n, "42");
    free(v);
    cr_expect_eq(conc_proxy_ns_del(ns, "x"), 0);
    cr_expect_eq(conc_proxy_ns_del(ns, "x"), -ENOENT);
    cr_expect_eq(conc_proxy_ns_set(ns, "", "1", 1), -EINVAL);

    conc_proxy *val = make(m, CONC_PROXY_VALUE, 8, 0);
    int64_t x = 0;
    cr_expect_eq(conc_proxy_value_get(val, &x, sizeof x), 8);
    cr_expect_eq(x, 0);
    x = -12345;
    cr_expect_eq(conc_proxy_value_set(val, &x, sizeof x), 0);
    cr_expect_eq(conc_proxy_value_set(val, &x, 4), -EINVAL);
    x = 0;
    cr_expect_eq(conc_proxy_value_get(val, &x, sizeof x), 8);
    cr_expect_eq(x, -12345);
    char small[4];
    cr_expect_eq(conc_proxy_value_get(val, small, sizeof small), -EMSGSIZE);

    conc_proxy *arr = make(m, CONC_PROXY_ARRAY, 10, sizeof(int32_t));
    cr_expect_eq(conc_proxy_array_len(arr), 10);
    for (int32_t i = 0; i < 10; i++)
        cr_expect_eq(conc_proxy_array_set(arr, i, &(int32_t){ i * i }, 4), 0);
    int32_t y;
    cr_expect_eq(conc_proxy_array_get(arr, -1, &y, 4), 4);
    cr_expect_eq(y, 81);
    cr_expect_eq(conc_proxy_array_get(arr, 3, &y, 4), 4);
    cr_expect_eq(y, 9);
    cr_expect_eq(conc_proxy_array_get(arr, 10, &y, 4), -ERANGE);
    cr_expect_eq(conc_proxy_array_set(arr, 0, &y, 2), -EINVAL);

    conc_proxy *bad;
    cr_expect_eq(conc_manager_create(m, &bad, CONC_PROXY_VALUE, NULL, 0, 0), -EINVAL);
    cr_expect_eq(conc_manager_create(m, &bad, CONC_PROXY_ARRAY, NULL, 4, 0), -EINVAL);
    cr_expect_eq(conc_manager_create(m, &bad, CONC_PROXY_ARRAY, NULL, 1 << 20, 4096), -EINVAL);
    cr_expect_eq(conc_manager_create(m, &bad, CONC_PROXY_VALUE, NULL, 4097, 0), -EINVAL);
    cr_expect_eq(conc_manager_create(m, &bad, CONC_PROXY_BARRIER, NULL, 0, 0), -EINVAL);
    cr_expect_eq(conc_manager_create(m, &bad, CONC_PROXY_LOCK, NULL, 1, 0), -EINVAL);
    cr_expect_eq(conc_manager_create(m, &bad, (conc_proxy_type)99, NULL, 0, 0), -EINVAL);
    conc_proxy_free(ns);
    conc_proxy_free(val);
    conc_proxy_free(arr);
    conc_manager_free(m);
}

/* Value and Array with typecodes, as multiprocessing.sharedctypes: typed
 * get and set, range checks, the typecode kept by the server for every
 * proxy to the object. */
Test(manager, typed_value_and_array, .timeout = 60)
{
    conc_manager *m = started(NULL);
    conc_proxy *vi, *vd, *vc, *vb, *aQ, *ad, *bad;
    cr_assert_eq(conc_manager_value(m, &vi, "vi", 'i'), 0);
    cr_assert_eq(conc_manager_value(m, &vd, NULL, 'd'), 0);
    cr_assert_eq(conc_manager_value(m, &vc, NULL, 'c'), 0);
    cr_assert_eq(conc_manager_value(m, &vb, NULL, 'b'), 0);
    cr_assert_eq(conc_manager_array(m, &aQ, NULL, 'Q', 3), 0);
    cr_assert_eq(conc_manager_array(m, &ad, "ad", 'f', 4), 0);
    cr_expect_eq(conc_proxy_typecode(vi), 'i');
    cr_expect_eq(conc_proxy_typecode(ad), 'f');
    cr_expect_eq(conc_proxy_kind(ad), CONC_PROXY_ARRAY);

    int64_t x = 99;
    double d = 1;
    cr_expect_eq(conc_proxy_value_get_int(vi, &x), 0);
    cr_expect_eq(x, 0);
    cr_expect_eq(conc_proxy_value_set_int(vi, -7), 0);
    cr_expect_eq(conc_proxy_value_get_int(vi, &x), 0);
    cr_expect_eq(x, -7);
    cr_expect_eq(conc_proxy_value_set_int(vi, INT32_MAX), 0);
    cr_expect_eq(conc_proxy_value_set_int(vi, (int64_t)INT32_MAX + 1), -ERANGE);
    cr_expect_eq(conc_proxy_value_set_int(vi, (int64_t)INT32_MIN - 1), -ERANGE);
    cr_expect_eq(conc_proxy_value_get_int(vi, &x), 0);
    cr_expect_eq(x, INT32_MAX);
    int32_t raw;                                                /* the bytes, as before */
    cr_expect_eq(conc_proxy_value_get(vi, &raw, sizeof raw), 4);
    cr_expect_eq(raw, INT32_MAX);
    cr_expect_eq(conc_proxy_value_set_float(vi, 1.5), -EINVAL); /* TypeError */
    cr_expect_eq(conc_proxy_value_get_float(vi, &d), -EINVAL);

    cr_expect_eq(conc_proxy_value_set_float(vd, -2.25), 0);
    cr_expect_eq(conc_proxy_value_get_float(vd, &d), 0);
    cr_expect(d == -2.25, "%g", d);
    cr_expect_eq(conc_proxy_value_set_int(vd, 3), 0);           /* an int into a double */
    cr_expect_eq(conc_proxy_value_get_float(vd, &d), 0);
    cr_expect(d == 3.0, "%g", d);
    cr_expect_eq(conc_proxy_value_get_int(vd, &x), -EINVAL);

    cr_expect_eq(conc_proxy_value_set_int(vc, 'z'), 0);
    cr_expect_eq(conc_proxy_value_set_int(vc, 256), -ERANGE);
    cr_expect_eq(conc_proxy_value_get_int(vc, &x), 0);
    cr_expect_eq(x, 'z');
    cr_expect_eq(conc_proxy_value_set_int(vb, -128), 0);
    cr_expect_eq(conc_proxy_value_set_int(vb, 128), -ERANGE);
    cr_expect_eq(conc_proxy_value_get_int(vb, &x), 0);
    cr_expect_eq(x, -128);

    cr_expect_eq(conc_proxy_array_len(aQ), 3);
    cr_expect_eq(conc_proxy_array_set_int(aQ, 0, INT64_MAX), 0);
    cr_expect_eq(conc_proxy_array_set_int(aQ, -1, 5), 0);
    cr_expect_eq(conc_proxy_array_set_int(aQ, 1, -1), -ERANGE);  /* unsigned */
    cr_expect_eq(conc_proxy_array_set_int(aQ, 3, 1), -ERANGE);   /* IndexError */
    uint64_t big = UINT64_MAX;
    cr_expect_eq(conc_proxy_array_set(aQ, 1, &big, sizeof big), 0);
    cr_expect_eq(conc_proxy_array_get_int(aQ, 1, &x), -EOVERFLOW);
    cr_expect_eq(conc_proxy_array_get_int(aQ, 0, &x), 0);
    cr_expect_eq(x, INT64_MAX);
    cr_expect_eq(conc_proxy_array_get_int(aQ, 2, &x), 0);
    cr_expect_eq(x, 5);

    for (int i = 0; i < 4; i++)
        cr_expect_eq(conc_proxy_array_set_float(ad, i, i + 0.5), 0);
    cr_expect_eq(conc_proxy_array_get_float(ad, -1, &d), 0);
    cr_expect(d == 3.5, "%g", d);

    /* Another proxy to the same objects has their typecodes. */
    conc_proxy *vi2, *ad2;
    cr_assert_eq(conc_proxy_dup(&vi2, vi), 0);
    cr_expect_eq(conc_proxy_typecode(vi2), 'i');
    cr_expect_eq(conc_proxy_value_get_int(vi2, &x), 0);
    cr_expect_eq(x, INT32_MAX);
    cr_assert_eq(conc_manager_array(m, &ad2, "ad", 'f', 4), 0);  /* found by name */
    cr_expect_eq(conc_proxy_id(ad2), conc_proxy_id(ad));
    cr_expect_eq(conc_proxy_array_get_float(ad2, 1, &d), 0);
    cr_expect(d == 1.5, "%g", d);
    cr_expect_eq(conc_manager_array(m, &bad, "ad", 'd', 4), -EEXIST);
    cr_expect_eq(conc_manager_value(m, &bad, "vi", 'I'), -EEXIST);
    cr_expect_eq(conc_manager_create(m, &bad, CONC_PROXY_VALUE, "vi", 4, 0), -EEXIST);

    /* Untyped proxies and bad typecodes. */
    conc_proxy *raw8 = make(m, CONC_PROXY_VALUE, 8, 0);
    cr_expect_eq(conc_proxy_typecode(raw8), 0);
    cr_expect_eq(conc_proxy_value_get_int(raw8, &x), -EINVAL);
    cr_expect_eq(conc_proxy_value_set_float(raw8, 1), -EINVAL);
    cr_expect_eq(conc_proxy_value_get_int(vi, NULL), -EINVAL);
    cr_expect_eq(conc_proxy_array_get_int(vi, 0, &x), -EINVAL);  /* a Value, not an Array */
    cr_expect_eq(conc_manager_value(m, &bad, NULL, 'x'), -EINVAL);
    cr_expect_eq(conc_manager_value(m, &bad, NULL, 0), -EINVAL);
    cr_expect_eq(conc_manager_array(m, &bad, NULL, 'i', 0), -EINVAL);
    cr_expect_eq(conc_proxy_typecode(NULL), 0);
    conc_proxy *all[] = { vi, vd, vc, vb, aQ, ad, vi2, ad2, raw8 };
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        conc_proxy_free(all[i]);
    conc_manager_free(m);
}

/* ------------------------------------------------------------ queues */

struct q_arg {
    conc_proxy *q;
    int r;
    void *v;
    size_t n;
};

static void *q_getter(void *arg)
{
    struct q_arg *a = arg;
    a->r = conc_proxy_queue_get(a->q, &a->v, &a->n, GUARD);
    return NULL;
}

Test(manager, queue_and_joinable_queue, .timeout = 60)
{
    conc_manager *m = started(NULL);
    conc_proxy *q = make(m, CONC_PROXY_QUEUE, 2, 0);
    void *v;
    size_t n;
    cr_expect_eq(conc_proxy_queue_get(q, &v, &n, 0), -EAGAIN);
    cr_expect_eq(conc_proxy_queue_get(q, &v, &n, 0.02), -ETIMEDOUT);
    cr_expect_eq(conc_proxy_queue_get_until(q, &v, &n, 0), -ETIMEDOUT);
    cr_expect_eq(conc_proxy_queue_put(q, "one", 3, 0), 0);
    cr_expect_eq(conc_proxy_queue_put(q, "", 0, CONC_FOREVER), 0);
    cr_expect_eq(conc_proxy_queue_put(q, "x", 1, 0), -EAGAIN);        /* full */
    cr_expect_eq(conc_proxy_queue_put(q, "x", 1, 0.02), -ETIMEDOUT);
    cr_expect_eq(conc_proxy_queue_qsize(q), 2);
    cr_assert_eq(conc_proxy_queue_get(q, &v, &n, 0), 0);
    expect_bytes(v, n, "one");
    free(v);
    cr_assert_eq(conc_proxy_queue_get(q, &v, &n, 0), 0);
    cr_expect_eq(n, 0);
    free(v);
    cr_expect_eq(conc_proxy_queue_task_done(q), 0);     /* a queue.Queue: two were got */
    cr_expect_eq(conc_proxy_queue_task_done(q), 0);
    cr_expect_eq(conc_proxy_queue_task_done(q), -EOVERFLOW);
    cr_expect_eq(conc_proxy_queue_put(q, "x", 1, -2.0), -EINVAL);

    /* A getter blocked in the server is woken by a put from another proxy. */
    conc_proxy *q2;
    cr_assert_eq(conc_proxy_dup(&q2, q), 0);
    cr_expect_eq(conc_proxy_kind(q2), CONC_PROXY_QUEUE);
    cr_expect_eq(conc_proxy_id(q2), conc_proxy_id(q));
    struct q_arg a = { .q = q2 };
    pthread_t th;
    pthread_create(&th, NULL, q_getter, &a);
    cr_expect_eq(conc_proxy_queue_put(q, "late", 4, 0), 0);
    pthread_join(th, NULL);
    cr_assert_eq(a.r, 0);
    expect_bytes(a.v, a.n, "late");
    free(a.v);

    conc_proxy *jq = make(m, CONC_PROXY_JOINABLE_QUEUE, 0, 0);
    cr_expect_eq(conc_proxy_queue_join(jq, 0), 0);
    cr_expect_eq(conc_proxy_queue_task_done(jq), -EOVERFLOW);
    cr_expect_eq(conc_proxy_queue_put(jq, "a", 1, 0), 0);
    cr_expect_eq(conc_proxy_queue_put(jq, "b", 1, 0), 0);
    cr_expect_eq(conc_proxy_queue_join(jq, 0), -EAGAIN);
    cr_expect_eq(conc_proxy_queue_join(jq, 0.02), -ETIMEDOUT);
    cr_assert_eq(conc_proxy_queue_get(jq, &v, &n, 0), 0);
    free(v);
    cr_expect_eq(conc_proxy_queue_task_done(jq), 0);
    cr_expect_eq(conc_proxy_queue_join(jq, 0), -EAGAIN);
    cr_assert_eq(conc_proxy_queue_get(jq, &v, &n, 0), 0);
    free(v);
    cr_expect_eq(conc_proxy_queue_task_done(jq), 0);
    cr_expect_eq(conc_proxy_queue_join(jq, 0), 0);
    cr_expect_eq(conc_proxy_queue_task_done(jq), -EOVERFLOW);
    conc_proxy_free(q);
    conc_proxy_free(q2);
    conc_proxy_free(jq);
    conc_manager_free(m);
}

/* ------------------------------------------- locks and semaphores */

Test(manager, lock_rlock_semaphores, .timeout = 60)
{
    conc_manager *m = started(NULL);
    conc_proxy *lk = make(m, CONC_PROXY_LOCK, 0, 0), *lk2;
    cr_assert_eq(conc_proxy_dup(&lk2, lk), 0);
    cr_expect_eq(conc_proxy_release(lk), -EPERM);
    cr_expect_eq(conc_proxy_acquire(lk, 0), 0);
    cr_expect_eq(conc_proxy_acquire(lk, 0), -EDEADLK);
    cr_expect_eq(conc_proxy_acquire(lk2, 0), -EAGAIN);
    cr_expect_eq(conc_proxy_acquire(lk2, 0.02), -ETIMEDOUT);
    cr_expect_eq(conc_proxy_release(lk), 0);
    cr_expect_eq(conc_proxy_release(lk), -EPERM);               /* nobody holds it */
    cr_expect_eq(conc_proxy_acquire(lk2, 0), 0);
    cr_expect_eq(conc_proxy_release(lk2), 0);

    conc_proxy *rl = make(m, CONC_PROXY_RLOCK, 0, 0), *rl2;
    cr_assert_eq(conc_proxy_dup(&rl2, rl), 0);
    cr_expect_eq(conc_proxy_acquire(rl, 0), 0);
    cr_expect_eq(conc_proxy_acquire(rl, 0), 0);
    cr_expect_eq(conc_proxy_acquire(rl2, 0), -EAGAIN);
    cr_expect_eq(conc_proxy_release(rl), 0);
    cr_expect_eq(conc_proxy_acquire(rl2, 0), -EAGAIN);         /* still held once */
    cr_expect_eq(conc_proxy_release(rl), 0);
    cr_expect_eq(conc_proxy_release(rl), -EPERM);
    cr_expect_eq(conc_proxy_acquire(rl2, 0), 0);
    cr_expect_eq(conc_proxy_release(rl2), 0);

    conc_proxy *s = make(m, CONC_PROXY_SEMAPHORE, 2, 0);
    cr_expect_eq(conc_proxy_acquire(s, 0), 0);
    cr_expect_eq(conc_proxy_acquire(s, 0), 0);
    cr_expect_eq(conc_proxy_acquire(s, 0), -EAGAIN);
    cr_expect_eq(conc_proxy_release(s), 0);
    cr_expect_eq(conc_proxy_release(s), 0);
    cr_expect_eq(conc_proxy_release(s), 0);                    /* unbounded */
    cr_expect_eq(conc_proxy_acquire(s, 0), 0);
    cr_expect_eq(conc_proxy_acquire(s, 0), 0);
    cr_expect_eq(conc_proxy_acquire(s, 0), 0);
    cr_expect_eq(conc_proxy_acquire(s, 0), -EAGAIN);

    conc_proxy *bs = make(m, CONC_PROXY_BOUNDED_SEMAPHORE, 1, 0);
    cr_expect_eq(conc_proxy_release(bs), -EOVERFLOW);
    cr_expect_eq(conc_proxy_acquire(bs, 0), 0);
    cr_expect_eq(conc_proxy_acquire(bs, 0.02), -ETIMEDOUT);
    cr_expect_eq(conc_proxy_release(bs), 0);
    cr_expect_eq(conc_proxy_release(bs), -EOVERFLOW);
    conc_proxy_free(lk);
    conc_proxy_free(lk2);
    conc_proxy_free(rl);
    conc_proxy_free(rl2);
    conc_proxy_free(s);
    conc_proxy_free(bs);
    conc_manager_free(m);
}

/* threading.Lock: a Lock held by one connection may be released by
 * another, which wakes a waiter; the first holder's end then gives back
 * nothing it no longer holds.  An RLock stays its owner's. */
struct acq_arg {
    conc_proxy *lk;
    int r;
};

static void *acquirer(void *arg)
{
    struct acq_arg *a = arg;
    a->r = conc_proxy_acquire(a->lk, GUARD);
    return NULL;
}

Test(manager, lock_released_by_another_connection, .timeout = 60)
{
    conc_manager *m = started(NULL);
    conc_proxy *lk = make(m, CONC_PROXY_LOCK, 0, 0), *other, *waiter;
    cr_assert_eq(conc_proxy_dup(&other, lk), 0);
    cr_assert_eq(conc_proxy_dup(&waiter, lk), 0);
    cr_assert_eq(conc_proxy_acquire(lk, 0), 0);
    struct acq_arg a = { waiter, 1 };
    pid_t tid;
    pthread_t th = spawn_tid(acquirer, &a, &tid);
    wait_thread_blocked(tid, GUARD);                            /* parked on the held Lock */
    cr_expect_eq(conc_proxy_release(other), 0);                 /* not its holder: allowed */
    pthread_join(th, NULL);
    cr_expect_eq(a.r, 0, "the waiter got the lock: %d", a.r);
    cr_expect_eq(conc_proxy_acquire(lk, 0), -EAGAIN);           /* the waiter holds it */
    conc_proxy_free(lk);                                        /* held nothing: frees nothing */
    cr_expect_eq(conc_proxy_acquire(other, 0), -EAGAIN);
    conc_proxy_free(waiter);                                    /* the holder ends: released */
    cr_expect_eq(conc_proxy_acquire(other, GUARD), 0);
    cr_expect_eq(conc_proxy_release(other), 0);

    conc_proxy *rl = make(m, CONC_PROXY_RLOCK, 0, 0), *rl2;
    cr_assert_eq(conc_proxy_dup(&rl2, rl), 0);
    cr_expect_eq(conc_proxy_acquire(rl, 0), 0);
    cr_expect_eq(conc_proxy_release(rl2), -EPERM);              /* an RLock is its owner's */
    cr_expect_eq(conc_proxy_acquire(rl2, 0), -EAGAIN);
    cr_expect_eq(conc_proxy_release(rl), 0);
    conc_proxy_free(rl);
    conc_proxy_free(rl2);
    conc_proxy_free(other);
    conc_manager_free(m);
}

/* A Semaphore used to signal (one connection releases, another acquires):
 * a connection's end gives back only its acquires no release matched.
 * The consumer takes the one initial permit and three the producer gave:
 * its end gives back one permit, not four (the counter would otherwise
 * grow by every acquire the connection ever made). */
Test(manager, semaphore_ends_give_back_only_unmatched_acquires, .timeout = 60)
{
    conc_manager *m = started(NULL);
    conc_proxy *s = make(m, CONC_PROXY_SEMAPHORE, 1, 0), *cons;
    cr_assert_eq(conc_proxy_dup(&cons, s), 0);
    cr_expect_eq(conc_proxy_acquire(cons, 0), 0);              /* the initial permit */
    for (int i = 0; i < 3; i++) {
        cr_expect_eq(conc_proxy_release(s), 0);                /* the producer signals */
        cr_expect_eq(conc_proxy_acquire(cons, 0), 0);          /* the consumer takes it */
    }
    cr_expect_eq(conc_proxy_acquire(s, 0), -EAGAIN);
    conc_proxy_free(cons);
    cr_expect_eq(conc_proxy_acquire(s, GUARD), 0);             /* the consumer's end gave one */
    cr_expect_eq(conc_proxy_acquire(s, 0), -EAGAIN, "one permit given back, no more");
    cr_expect_eq(conc_proxy_release(s), 0);
    conc_proxy_free(s);
    conc_manager_free(m);
}

/* A lock held by a proxy that is freed is released: the server knows who
 * holds it. */
Test(manager, freed_proxy_releases_its_lock, .timeout = 60)
{
    conc_manager *m = started(NULL);
    conc_proxy *lk = make(m, CONC_PROXY_LOCK, 0, 0), *lk2;
    cr_assert_eq(conc_proxy_dup(&lk2, lk), 0);
    cr_expect_eq(conc_proxy_acquire(lk, 0), 0);
    conc_proxy_free(lk);
    cr_expect_eq(conc_proxy_acquire(lk2, GUARD), 0);
    conc_proxy_free(lk2);
    conc_manager_free(m);
}

/* ------------------------------------------------------------- Event */

struct ev_arg {
    conc_proxy *p;
    int r;
    pid_t tid;
};

static void *ev_waiter(void *arg)
{
    struct ev_arg *a = arg;
    __atomic_store_n(&a->tid, gettid(), __ATOMIC_RELEASE);
    a->r = conc_proxy_event_wait(a->p, GUARD);
    return NULL;
}

Test(manager, event, .timeout = 60)
{
    conc_manager *m = started(NULL);
    conc_proxy *e = make(m, CONC_PROXY_EVENT, 0, 0), *e2;
    cr_assert_eq(conc_proxy_dup(&e2, e), 0);
    cr_expect_eq(conc_proxy_event_is_set(e), 0);
    cr_expect_eq(conc_proxy_event_wait(e, 0), -EAGAIN);
    cr_expect_eq(conc_proxy_event_wait(e, 0.02), -ETIMEDOUT);
    struct ev_arg a = { .p = e2, .r = 1 };
    pthread_t th;
    pthread_create(&th, NULL, ev_waiter, &a);
    while (!__atomic_load_n(&a.tid, __ATOMIC_ACQUIRE))
        sched_yield();
    wait_thread_blocked(a.tid, GUARD);
    cr_expect_eq(conc_proxy_event_set(e), 0);
    pthread_join(th, NULL);
    cr_expect_eq(a.r, 0);
    cr_expect_eq(conc_proxy_event_is_set(e2), 1);
    cr_expect_eq(conc_proxy_event_wait(e, 0), 0);
    cr_expect_eq(conc_proxy_event_clear(e), 0);
    cr_expect_eq(conc_proxy_event_is_set(e), 0);
    conc_proxy_free(e);
    conc_proxy_free(e2);
    conc_manager_free(m);
}

/* --------------------------------------------------------- Condition */

struct cv_arg {
    conc_proxy *c, *count;
    int r, woken;
};

static void *cv_waiter(void *arg)
{
    struct cv_arg *a = arg;
    a->r = conc_proxy_acquire(a->c, GUARD);
    if (a->r)
        return NULL;
    int64_t one = 1;
    conc_proxy_list_append(a->count, &one, sizeof one);    /* "I am waiting" */
    a->r = conc_proxy_cond_wait(a->c, GUARD);
    __atomic_store_n(&a->woken, 1, __ATOMIC_RELEASE);
    conc_proxy_release(a->c);
    return NULL;
}

Test(manager, condition, .timeout = 60)
{
    conc_manager *m = started(NULL);
    conc_proxy *c = make(m, CONC_PROXY_CONDITION, 0, 0);
    conc_proxy *lst = make(m, CONC_PROXY_LIST, 0, 0);
    cr_expect_eq(conc_proxy_cond_wait(c, 0), -EPERM);
    cr_expect_eq(conc_proxy_cond_notify(c, 1), -EPERM);
    cr_expect_eq(conc_proxy_acquire(c, 0), 0);
    cr_expect_eq(conc_proxy_acquire(c, 0), 0);                 /* an RLock inside */
    cr_expect_eq(conc_proxy_cond_wait(c, 0.02), -ETIMEDOUT);   /* the lock is back */
    cr_expect_eq(conc_proxy_cond_wait(c, 0), -ETIMEDOUT);
    cr_expect_eq(conc_proxy_release(c), 0);
    cr_expect_eq(conc_proxy_release(c), 0);
    cr_expect_eq(conc_proxy_release(c), -EPERM);

    enum { N = 3 };
    struct cv_arg a[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        a[i] = (struct cv_arg){ .r = 1 };
        cr_assert_eq(conc_proxy_dup(&a[i].c, c), 0);
        cr_assert_eq(conc_proxy_dup(&a[i].count, lst), 0);
        pthread_create(&th[i], NULL, cv_waiter, &a[i]);
    }
    /* Once all wait (each appended and then released the lock in wait),
     * notify one, then the rest. */
    while (conc_proxy_list_len(lst) < N)
        sched_yield();
    cr_expect_eq(conc_proxy_acquire(c, GUARD), 0);              /* all are inside wait now */
    cr_expect_eq(conc_proxy_cond_notify(c, 1), 0);
    cr_expect_eq(conc_proxy_release(c), 0);
    int woken = 0;
    while (woken < 1) {
        woken = 0;
        for (int i = 0; i < N; i++)
            woken += __atomic_load_n(&a[i].woken, __ATOMIC_ACQUIRE);
        sched_yield();
    }
    cr_expect_eq(conc_proxy_acquire(c, GUARD), 0);
    cr_expect_eq(conc_proxy_cond_notify_all(c), 0);
    cr_expect_eq(conc_proxy_release(c), 0);
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        cr_expect_eq(a[i].r, 0);
        conc_proxy_free(a[i].c);
        conc_proxy_free(a[i].count);
    }
    conc_proxy_free(c);
    conc_proxy_free(lst);
    conc_manager_free(m);
}

/* ----------------------------------------------------------- Barrier */

struct b_arg {
    conc_proxy *b;
    int r;
};

static void *b_waiter(void *arg)
{
    struct b_arg *a = arg;
    a->r = conc_proxy_barrier_wait(a->b, GUARD);
    return NULL;
}

Test(manager, barrier, .timeout = 60)
{
    conc_manager *m = started(NULL);
    conc_proxy *b = make(m, CONC_PROXY_BARRIER, 3, 0);
    cr_expect_eq(conc_proxy_barrier_parties(b), 3);
    cr_expect_eq(conc_proxy_barrier_n_waiting(b), 0);
    cr_expect_eq(conc_proxy_barrier_broken(b), 0);
    struct b_arg a[3];
    pthread_t th[3];
    for (int i = 0; i < 3; i++) {
        a[i].r = -1000;
        cr_assert_eq(conc_proxy_dup(&a[i].b, b), 0);
        pthread_create(&th[i], NULL, b_waiter, &a[i]);
    }
    int seen = 0;
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        cr_expect(a[i].r >= 0 && a[i].r < 3, "index %d", a[i].r);
        if (a[i].r >= 0 && a[i].r < 3)
            seen |= 1 << a[i].r;
    }
    cr_expect_eq(seen, 7);                                     /* 0, 1 and 2, once each */

    /* Abort wakes a waiter with -EPIPE; reset makes it usable again. */
    pthread_create(&th[0], NULL, b_waiter, &a[0]);
    while (conc_proxy_barrier_n_waiting(b) < 1)
        sched_yield();
    cr_expect_eq(conc_proxy_barrier_abort(b), 0);
    pthread_join(th[0], NULL);
    cr_expect_eq(a[0].r, -EPIPE);
    cr_expect_eq(conc_proxy_barrier_broken(b), 1);
    cr_expect_eq(conc_proxy_barrier_wait(b, 0), -EPIPE);
    cr_expect_eq(conc_proxy_barrier_reset(b), 0);
    cr_expect_eq(conc_proxy_barrier_broken(b), 0);
    /* A timeout breaks it, as in Python. */
    cr_expect_eq(conc_proxy_barrier_wait(b, 0.02), -ETIMEDOUT);
    cr_expect_eq(conc_proxy_barrier_broken(b), 1);
    cr_expect_eq(conc_proxy_barrier_reset(b), 0);
    for (int i = 0; i < 3; i++)
        conc_proxy_free(a[i].b);
    conc_proxy_free(b);
    conc_manager_free(m);
}

/* ---------------------------------------------------- registered types */

struct counter {
    int64_t n;
};

static int counter_create(void **obj, const void *arg, size_t len, void *ctx)
{
    (void)ctx;
    struct counter *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    if (len == sizeof c->n)
        memcpy(&c->n, arg, len);
    else if (len)
        return free(c), -EINVAL;
    *obj = c;
    return 0;
}

static int counter_call(void *obj, const char *method, const void *arg, size_t len, void **out,
                        size_t *out_len, void *ctx)
{
    struct counter *c = obj;
    (void)ctx;
    if (strcmp(method, "add") == 0 && len == sizeof(int64_t)) {
        int64_t k;
        memcpy(&k, arg, sizeof k);
        c->n += k;
        return 0;
    }
    if (strcmp(method, "get") == 0) {
        *out = malloc(sizeof c->n);
        if (!*out)
            return -ENOMEM;
        memcpy(*out, &c->n, sizeof c->n);
        *out_len = sizeof c->n;
        return 7;
    }
    return -ENOSYS;
}

static void counter_destroy(void *obj, void *ctx)
{
    (void)ctx;
    free(obj);
}

static const conc_manager_type counter_type = {
    .size = sizeof(conc_manager_type),
    .create = counter_create,
    .call = counter_call,
    .destroy = counter_destroy,
};

Test(manager, registered_type, .timeout = 60)
{
    conc_manager *m;
    cr_assert_eq(conc_manager_new(&m, NULL), 0);
    cr_expect_eq(conc_manager_register(m, "Counter", &counter_type), 0);
    cr_expect_eq(conc_manager_register(m, "Counter", &counter_type), -EEXIST);
    cr_expect_eq(conc_manager_register(m, "", &counter_type), -EINVAL);
    cr_assert_eq(conc_manager_start(m), 0);
    cr_expect_eq(conc_manager_register(m, "Late", &counter_type), -EALREADY);

    conc_proxy *c, *c2, *bad;
    int64_t start = 40;
    cr_assert_eq(conc_manager_create_user(m, &c, "Counter", "c", &start, sizeof start), 0);
    cr_assert_eq(conc_manager_create_user(m, &c2, "Counter", "c", NULL, 0), 0);  /* same one */
    cr_expect_eq(conc_proxy_id(c), conc_proxy_id(c2));
    cr_expect_eq(conc_manager_create_user(m, &bad, "Nope", NULL, NULL, 0), -ENOENT);
    cr_expect_eq(conc_manager_create_user(m, &bad, "Counter", NULL, "x", 1), -EINVAL);
    cr_expect_eq(conc_manager_create(m, &bad, CONC_PROXY_DICT, "c", 0, 0), -EEXIST);
    int64_t two = 2;
    cr_expect_eq(conc_proxy_call(c2, "add", &two, sizeof two, NULL, NULL), 0);
    void *out;
    size_t len;
    cr_expect_eq(conc_proxy_call(c, "get", NULL, 0, &out, &len), 7);
    cr_assert_eq(len, sizeof(int64_t));
    int64_t got;
    memcpy(&got, out, sizeof got);
    free(out);
    cr_expect_eq(got, 42);
    cr_expect_eq(conc_proxy_call(c, "nope", NULL, 0, NULL, NULL), -ENOSYS);
    cr_expect_eq(conc_proxy_call(c, "", NULL, 0, NULL, NULL), -EINVAL);
    conc_proxy_free(c);
    conc_proxy_free(c2);
    conc_manager_free(m);
}

/* --------------------------------------------- many processes at once */

enum { PROCS = 8, ROUNDS = 50 };

struct worker {
    conc_proxy *d, *lk, *l;
    int k;
};

static int worker_main(const void *arg, size_t len)
{
    const struct worker *w;
    if (len != sizeof w)
        return 90;
    memcpy(&w, arg, sizeof w);
    /* The proxies were inherited: each opens a connection of its own. */
    for (int i = 0; i < ROUNDS; i++) {
        if (conc_proxy_acquire(w->lk, GUARD))
            return 91;
        void *v;
        size_t n;
        int64_t c;
        if (conc_proxy_dict_get(w->d, "count", 5, &v, &n) || n != sizeof c)
            return 92;
        memcpy(&c, v, sizeof c);
        free(v);
        c++;
        if (conc_proxy_dict_set(w->d, "count", 5, &c, sizeof c))
            return 93;
        if (conc_proxy_release(w->lk))
            return 94;
        int32_t item = w->k * 1000 + i;
        if (conc_proxy_list_append(w->l, &item, sizeof item))
            return 95;
    }
    return 0;
}

/* PROCS processes, each ROUNDS times: with a Lock, count += 1 in a dict,
 * and append its own item to a list; then every count and item is there,
 * once. */
static void run_workers_exact(conc_manager *m)
{
    struct worker w = { make(m, CONC_PROXY_DICT, 0, 0), make(m, CONC_PROXY_LOCK, 0, 0),
                        make(m, CONC_PROXY_LIST, 0, 0), 0 };
    int64_t zero = 0;
    cr_assert_eq(conc_proxy_dict_set(w.d, "count", 5, &zero, sizeof zero), 0);
    struct worker ws[PROCS];
    conc_process *p[PROCS];
    conc_process_opts po = CONC_PROCESS_OPTS_INIT;
    po.method = CONC_START_FORK;
    for (int i = 0; i < PROCS; i++) {
        ws[i] = w;
        ws[i].k = i;
        const struct worker *wp = &ws[i];
        cr_assert_eq(conc_process_new(&p[i], worker_main, &wp, sizeof wp, &po), 0);
        cr_assert_eq(conc_process_start(p[i]), 0);
    }
    for (int i = 0; i < PROCS; i++) {
        cr_assert_eq(conc_process_join(p[i], GUARD * 3), 0);
        int code = -1;
        conc_process_exitcode(p[i], &code);
        cr_expect_eq(code, 0, "worker %d exited %d", i, code);
        conc_process_free(p[i]);
    }
    void *v;
    size_t n;
    cr_assert_eq(conc_proxy_dict_get(w.d, "count", 5, &v, &n), 0);
    int64_t c;
    memcpy(&c, v, sizeof c);
    free(v);
    cr_expect_eq(c, PROCS * ROUNDS);
    conc_proxy_items *it;
    cr_assert_eq(conc_proxy_list_slice(w.l, 0, INT64_MAX, &it), 0);
    cr_assert_eq(it->count, PROCS * ROUNDS);
    static char seen[PROCS * 1000];
    for (size_t i = 0; i < it->count; i++) {
        int32_t x;
        cr_assert_eq(it->item[i].len, sizeof x);
        memcpy(&x, it->item[i].data, sizeof x);
        cr_assert(x >= 0 && x < PROCS * 1000 && x % 1000 < ROUNDS);
        cr_expect_eq(seen[x], 0, "item %d twice", x);
        seen[x] = 1;
    }
    free(it);
    conc_proxy_free(w.d);
    conc_proxy_free(w.lk);
    conc_proxy_free(w.l);
}

Test(manager, many_processes_exact_results, .timeout = 120)
{
    conc_manager *m = started(NULL);
    run_workers_exact(m);
    conc_manager_free(m);
}

/* The threads of a process. */
static int threads_of(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

struct parked {
    conc_proxy *p;
    int kind;                           /* 0 Queue.get, 1 Event.wait, 2 Lock.acquire, 3 Condition.wait */
    int r;                              /* atomic: 1 until the call ends */
    int held;                           /* atomic: the Condition's lock was taken */
    char got[8];
};

static void *parked_main(void *arg)
{
    struct parked *a = arg;
    void *v;
    size_t n;
    int r;
    switch (a->kind) {
    case 0:
        r = conc_proxy_queue_get(a->p, &v, &n, GUARD);
        if (!r) {
            snprintf(a->got, sizeof a->got, "%.*s", (int)n, (const char *)v);
            free(v);
        }
        break;
    case 1:
        r = conc_proxy_event_wait(a->p, GUARD);
        break;
    case 2:
        r = conc_proxy_acquire(a->p, GUARD);
        break;
    default:
        r = conc_proxy_acquire(a->p, GUARD);
        __atomic_store_n(&a->held, 1, __ATOMIC_RELEASE);
        if (!r)
            r = conc_proxy_cond_wait(a->p, GUARD);
        if (!r)
            r = conc_proxy_release(a->p);
        break;
    }
    __atomic_store_n(&a->r, r, __ATOMIC_RELEASE);
    return NULL;
}

/* The server serves from a fixed set of threads, not a thread per
 * connection: while four clients are parked in Queue.get, Event.wait,
 * Lock.acquire and Condition.wait (on connections dealt to different
 * threads), eight processes get exact results and the server's threads
 * stay as many as before; then each parked call ends with what satisfied
 * it, whichever thread the call that satisfied it ran in. */
Test(manager, others_served_while_calls_are_parked, .timeout = 120)
{
    conc_manager *m = started(NULL);
    conc_proxy *q = make(m, CONC_PROXY_QUEUE, 0, 0), *ev = make(m, CONC_PROXY_EVENT, 0, 0);
    conc_proxy *lk = make(m, CONC_PROXY_LOCK, 0, 0), *cv = make(m, CONC_PROXY_CONDITION, 0, 0);
    conc_proxy *mine[4] = { q, ev, lk, cv };
    cr_assert_eq(conc_proxy_acquire(lk, 0), 0);
    struct parked a[4];
    pthread_t th[4];
    pid_t tid[4];
    for (int i = 0; i < 4; i++) {
        a[i] = (struct parked){ NULL, i, 1, 0, "" };
        cr_assert_eq(conc_proxy_dup(&a[i].p, mine[i]), 0);
        th[i] = spawn_tid(parked_main, &a[i], &tid[i]);
    }
    int64_t end = conc_now() + (int64_t)(GUARD * 1e9);
    while (!__atomic_load_n(&a[3].held, __ATOMIC_ACQUIRE)) {
        cr_assert_lt(conc_now(), end, "the Condition's lock was never taken");
        usleep(1000);
    }
    for (int i = 0; i < 4; i++)
        wait_thread_blocked(tid[i], GUARD);
    /* This takes the Condition's lock once its waiter has released it in
     * wait: the waiter is then on the Condition's list. */
    cr_assert_eq(conc_proxy_acquire(cv, GUARD), 0);
    int threads = threads_of(conc_manager_pid(m));
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    cr_expect(threads >= 1 && threads <= (cpus < 4 ? cpus : 4),
              "one thread per CPU, at most 4: %d", threads);
    run_workers_exact(m);
    cr_expect_eq(threads_of(conc_manager_pid(m)), threads, "no thread per connection");
    for (int i = 0; i < 4; i++)
        cr_expect_eq(__atomic_load_n(&a[i].r, __ATOMIC_ACQUIRE), 1, "call %d still parked", i);
    cr_expect_eq(conc_proxy_queue_put(q, "late", 4, 0), 0);
    cr_expect_eq(conc_proxy_event_set(ev), 0);
    cr_expect_eq(conc_proxy_release(lk), 0);
    cr_expect_eq(conc_proxy_cond_notify(cv, 1), 0);
    cr_expect_eq(conc_proxy_release(cv), 0);
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        cr_expect_eq(a[i].r, 0, "call %d: %d", i, a[i].r);
        conc_proxy_free(a[i].p);
        conc_proxy_free(mine[i]);
    }
    cr_expect_str_eq(a[0].got, "late");
    conc_manager_free(m);
}

/* opts.threads sets the server's threads (the accept loop's counted); a
 * server with registered types runs in one, whatever is asked. */
static int noop_create(void **obj, const void *arg, size_t len, void *ctx)
{
    (void)arg, (void)len, (void)ctx;
    *obj = NULL;
    return 0;
}

static int noop_call(void *obj, const char *method, const void *arg, size_t len, void **out,
                     size_t *out_len, void *ctx)
{
    (void)obj, (void)method, (void)arg, (void)len, (void)ctx;
    *out = NULL;
    *out_len = 0;
    return 0;
}

Test(manager, server_threads_as_asked, .timeout = 60)
{
    for (unsigned want = 1; want <= 3; want++) {
        conc_manager_opts o = CONC_MANAGER_OPTS_INIT;
        o.threads = want;
        conc_manager *m = started(&o);
        conc_proxy *d = make(m, CONC_PROXY_DICT, 0, 0);
        cr_expect_eq(conc_proxy_dict_set(d, "k", 1, "v", 1), 0);
        cr_expect_eq(threads_of(conc_manager_pid(m)), (int)want);
        conc_proxy_free(d);
        conc_manager_free(m);
    }
    conc_manager_opts o = CONC_MANAGER_OPTS_INIT;
    o.threads = 3;
    conc_manager *m;
    cr_assert_eq(conc_manager_new(&m, &o), 0);
    conc_manager_type t = { .size = sizeof t, .create = noop_create, .call = noop_call };
    cr_assert_eq(conc_manager_register(m, "noop", &t), 0);
    cr_assert_eq(conc_manager_start(m), 0);
    conc_proxy *u;
    cr_assert_eq(conc_manager_create_user(m, &u, "noop", NULL, NULL, 0), 0);
    cr_expect_eq(conc_proxy_call(u, "x", NULL, 0, NULL, NULL), 0);
    cr_expect_eq(threads_of(conc_manager_pid(m)), 1, "registered types: one thread");
    conc_proxy_free(u);
    conc_manager_free(m);
    o.threads = CONC_MANAGER_THREADS_MAX + 1;
    cr_expect_eq(conc_manager_new(&m, &o), -EINVAL);
}

/* A client killed while parked in Queue.get takes nothing with it: the
 * next message goes to a live client. */
static int getter_main(const void *arg, size_t len)
{
    conc_proxy *q;
    if (len != sizeof q)
        return 90;
    memcpy(&q, arg, sizeof q);
    void *v;
    size_t n;
    conc_proxy_queue_get(q, &v, &n, CONC_FOREVER);
    return 91;                          /* never gets here: killed first */
}

Test(manager, client_killed_while_parked_in_get, .timeout = 60)
{
    conc_manager *m = started(NULL);
    conc_proxy *q = make(m, CONC_PROXY_QUEUE, 0, 0);
    conc_process *p;
    conc_process_opts po = CONC_PROCESS_OPTS_INIT;
    po.method = CONC_START_FORK;
    cr_assert_eq(conc_process_new(&p, getter_main, &q, sizeof q, &po), 0);
    cr_assert_eq(conc_process_start(p), 0);
    wait_proc_blocked(conc_process_pid(p), GUARD);
    cr_expect_eq(conc_proxy_queue_qsize(q), 0);
    cr_assert_eq(conc_process_kill(p), 0);
    cr_assert_eq(conc_process_join(p, GUARD), 0);
    conc_process_free(p);
    cr_expect_eq(conc_proxy_queue_put(q, "one", 3, 0), 0);
    void *v;
    size_t n;
    cr_assert_eq(conc_proxy_queue_get(q, &v, &n, GUARD), 0);
    expect_bytes(v, n, "one");
    free(v);
    cr_expect_eq(conc_proxy_queue_qsize(q), 0);
    conc_proxy_free(q);
    conc_manager_free(m);
}

/* ---------------------------------------------------------- faults */

struct holder {
    conc_proxy *lk, *ev;
};

static int holder_main(const void *arg, size_t len)
{
    const struct holder *h;
    if (len != sizeof h)
        return 90;
    memcpy(&h, arg, sizeof h);
    if (conc_proxy_acquire(h->lk, GUARD) || conc_proxy_event_set(h->ev))
        return 91;
    pause();                            /* holds the lock until killed */
    return 0;
}

static void killed_holder(conc_proxy_type type)
{
    conc_manager *m = started(NULL);
    struct holder h = { make(m, type, type == CONC_PROXY_SEMAPHORE ? 1 : 0, 0),
                        make(m, CONC_PROXY_EVENT, 0, 0) };
    const struct holder *hp = &h;
    conc_process *p;
    conc_process_opts po = CONC_PROCESS_OPTS_INIT;
    po.method = CONC_START_FORK;
    cr_assert_eq(conc_process_new(&p, holder_main, &hp, sizeof hp, &po), 0);
    cr_assert_eq(conc_process_start(p), 0);
    cr_assert_eq(conc_proxy_event_wait(h.ev, GUARD), 0);       /* it holds the lock */
    cr_expect_eq(conc_proxy_acquire(h.lk, 0), -EAGAIN);
    cr_assert_eq(conc_process_kill(p), 0);
    cr_assert_eq(conc_process_join(p, GUARD), 0);
    conc_process_free(p);
    cr_expect_eq(conc_proxy_acquire(h.lk, GUARD), 0);         /* released by the server */
    cr_expect_eq(conc_proxy_release(h.lk), 0);
    conc_proxy_free(h.lk);
    conc_proxy_free(h.ev);
    conc_manager_free(m);
}

Test(manager, killed_client_releases_lock, .timeout = 60)
{
    killed_holder(CONC_PROXY_LOCK);
}

Test(manager, killed_client_releases_rlock, .timeout = 60)
{
    killed_holder(CONC_PROXY_RLOCK);
}

Test(manager, killed_client_releases_semaphore, .timeout = 60)
{
    killed_holder(CONC_PROXY_SEMAPHORE);
}

struct loader {
    conc_proxy *p;
    int last;
    int calls;
};

static void *load_main(void *arg)
{
    struct loader *l = arg;
    int e;
    for (;;) {
        e = conc_proxy_dict_set(l->p, "k", 1, "v", 1);
        l->calls++;
        if (e)
            break;
    }
    l->last = e;
    return NULL;
}

Test(manager, manager_killed_under_load, .timeout = 60)
{
    conc_manager *m = started(NULL);
    enum { T = 4 };
    struct loader l[T];
    pthread_t th[T];
    conc_proxy *d = make(m, CONC_PROXY_DICT, 0, 0), *q = make(m, CONC_PROXY_QUEUE, 0, 0);
    for (int i = 0; i < T; i++) {
        l[i] = (struct loader){ 0 };
        cr_assert_eq(conc_proxy_dup(&l[i].p, d), 0);
        pthread_create(&th[i], NULL, load_main, &l[i]);
    }
    /* A getter blocked in the server too. */
    struct q_arg qa = { .q = q };
    pthread_t qt;
    pthread_create(&qt, NULL, q_getter, &qa);
    while (conc_proxy_dict_len(d) < 1)
        sched_yield();
    cr_assert_eq(kill(conc_manager_pid(m), SIGKILL), 0);
    for (int i = 0; i < T; i++) {
        pthread_join(th[i], NULL);
        cr_expect(l[i].last == -ECONNRESET || l[i].last == -EPIPE, "%d", l[i].last);
        int e = conc_proxy_dict_len(l[i].p);
        cr_expect(e == -ECONNRESET || e == -EPIPE, "%d", e);
        conc_proxy_free(l[i].p);
    }
    pthread_join(qt, NULL);
    cr_expect(qa.r == -ECONNRESET || qa.r == -EPIPE, "%d", qa.r);
    conc_proxy *x;
    int e = conc_manager_create(m, &x, CONC_PROXY_DICT, NULL, 0, 0);
    cr_expect(e == -ECONNRESET || e == -EPIPE, "%d", e);
    conc_proxy_free(d);
    conc_proxy_free(q);
    char addr[128];
    cr_assert_gt(conc_manager_address(m, addr, sizeof addr), 0);
    cr_expect_eq(conc_manager_shutdown(m), 0);
    struct stat st;
    cr_expect_neq(stat(addr, &st), 0, "the socket of a killed manager is removed");
    conc_manager_free(m);
}

/* ------------------------------------------------------- addresses */

Test(manager, private_socket_mode_and_cleanup, .timeout = 60)
{
    int fds = count_fds();
    conc_manager *m = started(NULL);
    char addr[128];
    int n = conc_manager_address(m, addr, sizeof addr);
    cr_assert(n > 0 && (size_t)n < sizeof addr);
    cr_expect_eq(conc_manager_address(m, NULL, 0), n);
    struct stat st;
    cr_assert_eq(stat(addr, &st), 0);
    cr_expect(S_ISSOCK(st.st_mode));
    cr_expect_eq(st.st_mode & 0777, 0600);
    char dir[128];
    strcpy(dir, addr);
    *strrchr(dir, '/') = 0;
    cr_assert_eq(stat(dir, &st), 0);
    cr_expect_eq(st.st_mode & 0777, 0700);
    pid_t pid = conc_manager_pid(m);
    conc_manager_free(m);
    cr_expect_neq(stat(addr, &st), 0);
    cr_expect_neq(stat(dir, &st), 0);
    cr_expect_eq(kill(pid, 0), -1, "the server process is gone");
    cr_expect_eq(count_fds(), fds);
}

static void tmp_path(char *buf, size_t size, const char *tag)
{
    snprintf(buf, size, "/tmp/conc-test-manager-%d-%s", (int)getpid(), tag);
    unlink(buf);
}

Test(manager, connect_by_address_and_restart, .timeout = 60)
{
    char path[128];
    tmp_path(path, sizeof path, "restart");
    conc_manager_opts o = CONC_MANAGER_OPTS_INIT;
    o.address = path;
    conc_manager *m = started(&o);
    conc_manager *c;
    cr_assert_eq(conc_manager_new(&c, &o), 0);
    cr_assert_eq(conc_manager_connect(c), 0);
    cr_expect_eq(conc_manager_connect(c), -EALREADY);
    conc_proxy *d, *d2;
    cr_assert_eq(conc_manager_create(m, &d, CONC_PROXY_DICT, "shared", 0, 0), 0);
    cr_assert_eq(conc_manager_create(c, &d2, CONC_PROXY_DICT, "shared", 0, 0), 0);
    cr_expect_eq(conc_proxy_dict_set(d, "k", 1, "v", 1), 0);
    cr_expect_eq(conc_proxy_dict_len(d2), 1);
    conc_proxy *o2;
    cr_assert_eq(conc_manager_open(c, &o2, conc_proxy_id(d)), 0);
    cr_expect_eq(conc_proxy_kind(o2), CONC_PROXY_DICT);
    cr_expect_eq(conc_proxy_dict_len(o2), 1);
    conc_proxy_free(o2);
    cr_expect_eq(conc_manager_open(c, &o2, 999999), -ENOENT);

    /* The server is killed; a new one at the same address serves again. */
    cr_assert_eq(kill(conc_manager_pid(m), SIGKILL), 0);
    int e = conc_proxy_dict_len(d2);
    cr_expect(e == -ECONNRESET || e == -EPIPE, "%d", e);
    conc_proxy_free(d);
    conc_proxy_free(d2);
    conc_manager_free(m);
    conc_manager_free(c);
    m = started(&o);
    cr_assert_eq(conc_manager_new(&c, &o), 0);
    cr_assert_eq(conc_manager_connect(c), 0);
    cr_assert_eq(conc_manager_create(c, &d2, CONC_PROXY_DICT, "shared", 0, 0), 0);
    cr_expect_eq(conc_proxy_dict_len(d2), 0);                   /* a new server, a new dict */
    conc_proxy_free(d2);
    /* A client's shutdown stops the server. */
    cr_expect_eq(conc_manager_shutdown(c), 0);
    conc_manager_free(c);
    conc_manager_free(m);
    struct stat st;
    cr_expect_neq(stat(path, &st), 0);
}

Test(manager, nothing_listens, .timeout = 60)
{
    char path[128];
    tmp_path(path, sizeof path, "none");
    conc_manager_opts o = CONC_MANAGER_OPTS_INIT;
    o.address = path;
    conc_manager *c;
    cr_assert_eq(conc_manager_new(&c, &o), 0);
    int e = conc_manager_connect(c);
    cr_expect(e == -ENOENT || e == -ECONNREFUSED, "%d", e);
    conc_proxy *p;
    cr_expect_eq(conc_manager_create(c, &p, CONC_PROXY_DICT, NULL, 0, 0), -ENOTCONN);
    cr_expect_eq(conc_manager_shutdown(c), -ENOTCONN);
    conc_manager_free(c);
}

Test(manager, tcp_authkey, .timeout = 60)
{
    conc_manager *m;
    conc_manager_opts o = CONC_MANAGER_OPTS_INIT;
    o.address = "127.0.0.1:0";
    cr_expect_eq(conc_manager_new(&m, &o), -EINVAL);           /* TCP needs a key */
    o.authkey = "secret";
    o.authkey_len = 6;
    m = started(&o);
    char addr[128];
    cr_assert_gt(conc_manager_address(m, addr, sizeof addr), 0);
    cr_expect_neq(strcmp(addr, "127.0.0.1:0"), 0, "the port it got: %s", addr);

    conc_manager_opts co = o;
    co.address = addr;
    conc_manager *c;
    cr_assert_eq(conc_manager_new(&c, &co), 0);
    cr_assert_eq(conc_manager_connect(c), 0);
    conc_proxy *q;
    cr_assert_eq(conc_manager_create(c, &q, CONC_PROXY_QUEUE, "q", 0, 0), 0);
    cr_expect_eq(conc_proxy_queue_put(q, "hi", 2, 0), 0);
    conc_proxy_free(q);
    conc_manager_free(c);

    co.authkey = "wrong!";
    cr_assert_eq(conc_manager_new(&c, &co), 0);
    cr_expect_eq(conc_manager_connect(c), -EACCES);
    conc_manager_free(c);
    co.authkey = NULL;
    co.authkey_len = 0;
    co.address = addr;
    cr_expect_eq(conc_manager_new(&c, &co), -EINVAL);
    conc_manager_free(m);
}

/* ----------------------------------------------- serve_forever in a thread */

struct srv_arg {
    conc_manager *m;
    int r;
};

static void *serve_main(void *arg)
{
    struct srv_arg *a = arg;
    a->r = conc_manager_serve_forever(a->m);
    return NULL;
}

Test(manager, serve_forever_and_shutdown, .timeout = 60)
{
    char path[128];
    tmp_path(path, sizeof path, "serve");
    conc_manager_opts o = CONC_MANAGER_OPTS_INIT;
    o.address = path;
    struct srv_arg a = { .r = 1 };
    cr_assert_eq(conc_manager_new(&a.m, &o), 0);
    cr_expect_eq(conc_manager_register(a.m, "Counter", &counter_type), 0);
    pthread_t th;
    pthread_create(&th, NULL, serve_main, &a);
    conc_manager *c;
    cr_assert_eq(conc_manager_new(&c, &o), 0);
    int e;
    for (int i = 0; i < 3000 && (e = conc_manager_connect(c)) != 0; i++)
        usleep(1000);                   /* until the server thread listens */
    cr_assert_eq(e, 0);
    conc_proxy *u, *q;
    cr_assert_eq(conc_manager_create_user(c, &u, "Counter", NULL, NULL, 0), 0);
    cr_assert_eq(conc_manager_create(c, &q, CONC_PROXY_QUEUE, NULL, 0, 0), 0);
    struct q_arg qa = { .q = q };
    pthread_t qt;
    pthread_create(&qt, NULL, q_getter, &qa);   /* blocked in the server at shutdown */
    cr_expect_eq(conc_manager_shutdown(c), 0);
    pthread_join(th, NULL);
    cr_expect_eq(a.r, 0);
    pthread_join(qt, NULL);
    cr_expect(qa.r == -ECONNRESET || qa.r == -EPIPE, "%d", qa.r);
    e = conc_proxy_call(u, "get", NULL, 0, NULL, NULL);
    cr_expect(e == -ECONNRESET || e == -EPIPE, "%d", e);
    conc_proxy_free(u);
    conc_proxy_free(q);
    conc_manager_free(c);
    conc_manager_free(a.m);
    struct stat st;
    cr_expect_neq(stat(path, &st), 0);
}

/* ------------------------------------------------------ bad arguments */

Test(manager, bad_arguments, .timeout = 60)
{
    conc_manager *m;
    conc_manager_opts o = CONC_MANAGER_OPTS_INIT;
    cr_expect_eq(conc_manager_new(NULL, NULL), -EINVAL);
    o.max_message = 10;
    cr_expect_eq(conc_manager_new(&m, &o), -EINVAL);
    o.max_message = 0;
    o.authkey = "k";
    cr_expect_eq(conc_manager_new(&m, &o), -EINVAL);           /* a key of length 0 */
    o.authkey = NULL;
    char longaddr[300];
    memset(longaddr, 'a', sizeof longaddr - 1);
    longaddr[0] = '/';
    longaddr[sizeof longaddr - 1] = 0;
    o.address = longaddr;
    cr_expect_eq(conc_manager_new(&m, &o), -EINVAL);
    cr_expect_eq(conc_manager_start(NULL), -EINVAL);
    cr_expect_eq(conc_manager_connect(NULL), -EINVAL);
    cr_expect_eq(conc_manager_serve_forever(NULL), -EINVAL);
    cr_expect_eq(conc_manager_shutdown(NULL), -EINVAL);
    cr_expect_eq(conc_manager_address(NULL, NULL, 0), -EINVAL);
    cr_expect_eq(conc_manager_pid(NULL), 0);
    conc_manager_free(NULL);
    cr_expect_eq(conc_proxy_dict_len(NULL), -EINVAL);
    cr_expect_eq(conc_proxy_acquire(NULL, 0), -EINVAL);
    cr_expect_eq(conc_proxy_id(NULL), 0);
    conc_proxy_free(NULL);

    cr_assert_eq(conc_manager_new(&m, NULL), 0);
    cr_expect_eq(conc_manager_serve_forever(m), -EINVAL);      /* no address */
    cr_expect_eq(conc_manager_connect(m), -EINVAL);
    cr_assert_eq(conc_manager_start(m), 0);
    cr_expect_eq(conc_manager_start(m), -EALREADY);
    conc_proxy *p;
    cr_expect_eq(conc_manager_create(m, NULL, CONC_PROXY_DICT, NULL, 0, 0), -EINVAL);
    cr_expect_eq(conc_manager_create(m, &p, CONC_PROXY_USER, NULL, 0, 0), -EINVAL);
    cr_expect_eq(conc_manager_create(m, &p, CONC_PROXY_DICT, "", 0, 0), -EINVAL);
    cr_expect_eq(conc_manager_open(m, &p, 0), -EINVAL);
    cr_assert_eq(conc_manager_create(m, &p, CONC_PROXY_QUEUE, "q", 1, 0), 0);
    conc_proxy *p2;
    cr_expect_eq(conc_manager_create(m, &p2, CONC_PROXY_QUEUE, "q", 2, 0), -EEXIST);
    void *v;
    size_t n;
    cr_expect_eq(conc_proxy_queue_get(p, &v, &n, -3.0), -EINVAL);
    cr_expect_eq(conc_proxy_queue_get(p, NULL, &n, 0), -EINVAL);
    cr_expect_eq(conc_proxy_queue_put(p, NULL, 1, 0), -EINVAL);
    conc_proxy_free(p);
    conc_manager_free(m);
}

/* ------------------------------------------------ malformed requests */

/* A request as the wire carries it (src/manager_wire.h): a 48-byte head,
 * then u32-length-prefixed strings. */
static size_t raw_req(uint8_t *buf, uint8_t version, uint8_t op, uint16_t reserved,
                      uint32_t nargs, uint64_t id, int64_t timeout)
{
    memset(buf, 0, 48);
    buf[0] = version;
    buf[1] = op;
    memcpy(buf + 2, &reserved, 2);
    memcpy(buf + 4, &nargs, 4);
    memcpy(buf + 8, &id, 8);
    memcpy(buf + 16, &timeout, 8);
    return 48;
}

static size_t raw_str(uint8_t *buf, size_t pos, uint32_t len, const char *s, size_t have)
{
    memcpy(buf + pos, &len, 4);
    memcpy(buf + pos + 4, s, have);
    return pos + 4 + have;
}

/* A connection to a keyless server, past its hello (its first message). */
static conc_conn *raw_connect(const char *addr)
{
    conc_conn *c;
    cr_assert_eq(conc_client_connect(&c, addr, NULL, GUARD), 0);
    char hello[64];
    ssize_t n = conc_conn_recv_bytes(c, hello, sizeof hello, GUARD);
    cr_assert(n > 0 && memcmp(hello, "#CONC-MANAGER-", 14) == 0, "the hello: %zd", n);
    return c;
}

/* Sends msg on a new raw connection; returns what the next receive gives
 * (the connection closed: -EPIPE or -ECONNRESET). */
static int send_raw(const char *addr, const void *msg, size_t len)
{
    conc_conn *c = raw_connect(addr);
    cr_assert_eq(conc_conn_send_bytes(c, msg, len, GUARD), 0);
    void *ans;
    size_t alen;
    int e = conc_conn_recv_alloc(c, &ans, &alen, GUARD);
    if (e == 0) {
        free(ans);
        e = (int)alen;                  /* an answer: the connection is open */
    }
    conc_conn_free(c);
    return e;
}

Test(manager, malformed_requests_close_only_their_connection, .timeout = 60)
{
    conc_manager_opts o = CONC_MANAGER_OPTS_INIT;
    o.max_message = 4096;
    conc_manager *m = started(&o);
    char addr[128];
    cr_assert_gt(conc_manager_address(m, addr, sizeof addr), 0);
    conc_proxy *d = make(m, CONC_PROXY_DICT, 0, 0);
    cr_assert_eq(conc_proxy_dict_set(d, "k", 1, "v", 1), 0);
    uint64_t id = conc_proxy_id(d);

    uint8_t b[8192];
    size_t n;
    struct {
        const char *what;
        size_t len;
        uint8_t msg[128];
    } bad[16];
    int nb = 0;
#define BAD(w, expr)                                                                           \
    do {                                                                                       \
        bad[nb].what = w;                                                                      \
        n = (expr);                                                                            \
        memcpy(bad[nb].msg, b, n);                                                             \
        bad[nb++].len = n;                                                                     \
    } while (0)
    BAD("empty", 0);
    BAD("short head", raw_req(b, 1, 9, 0, 0, id, -1) - 1);
    BAD("version 2", raw_req(b, 2, 9, 0, 0, id, -1));
    BAD("version 0", raw_req(b, 0, 9, 0, 0, id, -1));
    BAD("op 0", raw_req(b, 1, 0, 0, 0, id, -1));
    BAD("op 255", raw_req(b, 1, 255, 0, 0, id, -1));
    BAD("reserved set", raw_req(b, 1, 9, 7, 0, id, -1));
    BAD("timeout -2", raw_req(b, 1, 9, 0, 0, id, -2));
    BAD("string missing", raw_req(b, 1, 7, 0, 1, id, -1));
    BAD("string past the end", raw_str(b, raw_req(b, 1, 7, 0, 1, id, -1), 10, "k", 1));
    BAD("huge string", raw_str(b, raw_req(b, 1, 7, 0, 1, id, -1), UINT32_MAX, "k", 1));
    BAD("bytes left over", raw_str(b, raw_req(b, 1, 7, 0, 1, id, -1), 1, "kk", 2));
    BAD("huge count", raw_req(b, 1, 9, 0, UINT32_MAX, id, -1));
#undef BAD
    for (int i = 0; i < nb; i++) {
        int e = send_raw(addr, bad[i].msg, bad[i].len);
        cr_expect(e == -EPIPE || e == -ECONNRESET, "%s: %d", bad[i].what, e);
        cr_expect_eq(conc_proxy_dict_len(d), 1, "after %s", bad[i].what);
    }

    /* Oversized: over the manager's message size. */
    static char filler[5000];
    n = raw_str(b, raw_req(b, 1, 7, 0, 1, id, -1), sizeof filler, filler, sizeof filler);
    int e = send_raw(addr, b, n);
    cr_expect(e == -EPIPE || e == -ECONNRESET, "oversized: %d", e);
    /* A length prefix that promises a gigabyte, then nothing. */
    conc_conn *c = raw_connect(addr);
    int fd = conc_conn_fd(c);
    uint64_t huge = (uint64_t)1 << 30;
    cr_assert_eq(write(fd, &huge, sizeof huge), (ssize_t)sizeof huge);
    void *ans;
    size_t alen;
    e = conc_conn_recv_alloc(c, &ans, &alen, GUARD);
    cr_expect(e == -EPIPE || e == -ECONNRESET, "gigabyte prefix: %d", e);
    conc_conn_free(c);

    /* Well-formed but wrong for the op or the object: an error answer, the
     * connection stays. */
    c = raw_connect(addr);
    int32_t st;
    n = raw_req(b, 1, 7, 0, 0, id, -1);                 /* dict get without a key */
    cr_assert_eq(conc_conn_send_bytes(c, b, n, GUARD), 0);
    cr_assert_eq(conc_conn_recv_alloc(c, &ans, &alen, GUARD), 0);
    cr_assert_eq(alen, 16);
    memcpy(&st, ans, 4);
    free(ans);
    cr_expect_eq(st, -EINVAL);
    n = raw_req(b, 1, 9, 0, 0, id + 1000, -1);         /* no such object */
    cr_assert_eq(conc_conn_send_bytes(c, b, n, GUARD), 0);
    cr_assert_eq(conc_conn_recv_alloc(c, &ans, &alen, GUARD), 0);
    memcpy(&st, ans, 4);
    free(ans);
    cr_expect_eq(st, -ENOENT);
    conc_conn_free(c);

    /* A proxy request over the size fails before it is sent. */
    cr_expect_eq(conc_proxy_dict_set(d, "k", 1, b, 5000), -EMSGSIZE);
    cr_expect_eq(conc_proxy_dict_len(d), 1);
    conc_proxy_free(d);
    conc_manager_free(m);
}

/* ------------------------------------------------------- coroutines */

struct gl {
    conc_manager *m;
    int r;
    int order;                          /* when it finished: 1, 2 */
};

static int finished;

static void *gl_getter(void *arg)
{
    struct gl *g = arg;
    conc_proxy *q;
    g->r = conc_manager_create(g->m, &q, CONC_PROXY_QUEUE, "cq", 0, 0);
    if (g->r)
        return NULL;
    void *v;
    size_t n;
    g->r = conc_proxy_queue_get(q, &v, &n, GUARD);     /* parks this greenlet only */
    if (!g->r) {
        g->r = n == 2 && memcmp(v, "hi", 2) == 0 ? 0 : -EPROTO;
        free(v);
    }
    g->order = ++finished;
    conc_proxy_free(q);
    return NULL;
}

static void *gl_putter(void *arg)
{
    struct gl *g = arg;
    conc_proxy *q;
    g->r = conc_manager_create(g->m, &q, CONC_PROXY_QUEUE, "cq", 0, 0);
    if (!g->r)
        g->r = conc_proxy_queue_put(q, "hi", 2, GUARD);
    g->order = ++finished;
    conc_proxy_free(q);
    return NULL;
}

Test(manager, proxy_calls_park_only_the_coroutine, .timeout = 60)
{
    conc_manager *m = started(NULL);
    struct gl a = { .m = m, .r = 1 }, b = { .m = m, .r = 1 };
    conc_greenlet *ga, *gb;
    cr_assert_eq(conc_greenlet_spawn(&ga, gl_getter, &a, NULL), 0);
    cr_assert_eq(conc_greenlet_spawn(&gb, gl_putter, &b, NULL), 0);
    cr_assert_eq(conc_hub_run(), 0);
    /* The getter got the message that only the putter, a greenlet of the
     * same thread, sent: it ran while the getter waited.  (Had the get
     * blocked the thread, the putter would never have run and the get
     * would have timed out.)  Which finished first is the hub's choice. */
    cr_expect_eq(a.r, 0);
    cr_expect_eq(b.r, 0);
    cr_expect(a.order >= 1 && b.order >= 1 && a.order != b.order);
    conc_greenlet_free(ga);
    conc_greenlet_free(gb);
    conc_manager_free(m);
}

/* ------------------------------------------ the manager dies with its parent */

static int parent_main(const void *arg, size_t len)
{
    int fd;
    if (len != sizeof fd)
        return 90;
    memcpy(&fd, arg, sizeof fd);
    conc_manager *m;
    if (conc_manager_new(&m, NULL) || conc_manager_start(m))
        return 91;
    pid_t pid = conc_manager_pid(m);
    if (write(fd, &pid, sizeof pid) != (ssize_t)sizeof pid)
        return 92;
    pause();                            /* until killed */
    return 0;
}

Test(manager, started_manager_dies_with_its_parent, .timeout = 60)
{
    int p[2];
    cr_assert_eq(pipe(p), 0);
    conc_process *parent;
    conc_process_opts po = CONC_PROCESS_OPTS_INIT;
    po.method = CONC_START_FORK;
    cr_assert_eq(conc_process_new(&parent, parent_main, &p[1], sizeof p[1], &po), 0);
    cr_assert_eq(conc_process_start(parent), 0);
    pid_t server;
    cr_assert_eq(read(p[0], &server, sizeof server), (ssize_t)sizeof server);
    cr_assert_gt(server, 0);
    cr_assert_eq(kill(server, 0), 0);
    cr_assert_eq(conc_process_kill(parent), 0);
    cr_assert_eq(conc_process_join(parent, GUARD), 0);
    conc_process_free(parent);
    /* The server got SIGKILL when its parent died; it was reparented to a
     * reaper, so it goes away once reaped: wait for that (a hang guard). */
    int64_t deadline = conc_now() + (int64_t)(GUARD * 1e9);
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)server);
    bool gone = false;
    while (!gone && conc_now() < deadline) {
        FILE *f = fopen(path, "r");
        if (!f) {
            gone = true;
            break;
        }
        char state = 0;
        int r = fscanf(f, "%*d %*s %c", &state);
        fclose(f);
        gone = r == 1 && (state == 'Z' || state == 'X');   /* dead, not yet reaped */
        if (!gone)
            sched_yield();
    }
    cr_expect(gone, "the manager process %d outlived its parent", (int)server);
    close(p[0]);
    close(p[1]);
}

/* A holder's forked child that lives on does not keep the holder's
 * connection (and so its lock) alive: the child drops its copies of the
 * proxies' sockets at the fork. */
struct forker {
    conc_proxy *lk, *ev;
    int fd;
};

static int forker_main(const void *arg, size_t len)
{
    const struct forker *f;
    if (len != sizeof f)
        return 90;
    memcpy(&f, arg, sizeof f);
    if (conc_proxy_acquire(f->lk, GUARD))
        return 91;
    pid_t g = fork();                   /* inherits the proxies */
    if (g < 0)
        return 92;
    if (g == 0) {
        pause();
        _exit(0);
    }
    if (write(f->fd, &g, sizeof g) != (ssize_t)sizeof g || conc_proxy_event_set(f->ev))
        return 93;
    pause();
    return 0;
}

Test(manager, forked_child_does_not_keep_a_dead_holders_lock, .timeout = 60)
{
    conc_manager *m = started(NULL);
    int p[2];
    cr_assert_eq(pipe(p), 0);
    struct forker f = { make(m, CONC_PROXY_LOCK, 0, 0), make(m, CONC_PROXY_EVENT, 0, 0), p[1] };
    const struct forker *fp = &f;
    conc_process *h;
    conc_process_opts po = CONC_PROCESS_OPTS_INIT;
    po.method = CONC_START_FORK;
    cr_assert_eq(conc_process_new(&h, forker_main, &fp, sizeof fp, &po), 0);
    cr_assert_eq(conc_process_start(h), 0);
    cr_assert_eq(conc_proxy_event_wait(f.ev, GUARD), 0);
    pid_t g;
    cr_assert_eq(read(p[0], &g, sizeof g), (ssize_t)sizeof g);
    cr_expect_eq(conc_proxy_acquire(f.lk, 0), -EAGAIN);
    cr_assert_eq(conc_process_kill(h), 0);
    cr_assert_eq(conc_process_join(h, GUARD), 0);
    conc_process_free(h);
    cr_expect_eq(kill(g, 0), 0, "the holder's child lives on");
    cr_expect_eq(conc_proxy_acquire(f.lk, GUARD), 0);
    kill(g, SIGKILL);
    conc_proxy_free(f.lk);
    conc_proxy_free(f.ev);
    close(p[0]);
    close(p[1]);
    conc_manager_free(m);
}

/* Many keys: every one found, deletions keep the others and their order. */
Test(manager, dict_many_keys, .timeout = 120)
{
    conc_manager *m = started(NULL);
    conc_proxy *d = make(m, CONC_PROXY_DICT, 0, 0);
    enum { K = 3000 };
    enum { PAIRS = 100 };
    static conc_proxy_bytes kv[2 * PAIRS];
    static char keys[K][16], vals[K][16];
    for (int i = 0; i < K; i++) {
        snprintf(keys[i], sizeof keys[i], "k%d", i);
        snprintf(vals[i], sizeof vals[i], "v%d", i * 7);
    }
    for (int i = 0; i < K; i += PAIRS) {        /* update() in batches */
        for (int j = 0; j < PAIRS; j++) {
            kv[2 * j] = (conc_proxy_bytes){ keys[i + j], strlen(keys[i + j]) };
            kv[2 * j + 1] = (conc_proxy_bytes){ vals[i + j], strlen(vals[i + j]) };
        }
        cr_assert_eq(conc_proxy_dict_update(d, kv, PAIRS), 0);
    }
    cr_expect_eq(conc_proxy_dict_len(d), K);
    for (int i = 0; i < K; i += 2)
        cr_assert_eq(conc_proxy_dict_del(d, keys[i], strlen(keys[i])), 0);
    cr_expect_eq(conc_proxy_dict_len(d), K / 2);
    for (int i = 0; i < K; i++) {
        void *v;
        size_t n;
        int e = conc_proxy_dict_get(d, keys[i], strlen(keys[i]), &v, &n);
        if (i % 2 == 0) {
            cr_assert_eq(e, -ENOENT, "key %d", i);
        } else {
            cr_assert_eq(e, 0, "key %d", i);
            cr_assert(n == strlen(vals[i]) && memcmp(v, vals[i], n) == 0, "value of %d", i);
            free(v);
        }
    }
    conc_proxy_items *it;
    cr_assert_eq(conc_proxy_dict_keys(d, &it), 0);
    cr_assert_eq(it->count, K / 2);
    for (size_t j = 0; j < it->count; j++)
        cr_assert(item_is(it, j, keys[2 * j + 1]), "order at %zu", j);
    free(it);
    cr_expect_eq(conc_proxy_dict_set(d, keys[0], strlen(keys[0]), "back", 4), 0);
    cr_assert_eq(conc_proxy_dict_keys(d, &it), 0);
    cr_expect(item_is(it, it->count - 1, keys[0]), "a key set again goes last");
    free(it);
    conc_proxy_free(d);
    conc_manager_free(m);
}

/* The fuzzer's seed corpus against a live server: each seed named bad_*,
 * short_*, missing_*, huge_*, trailing_*, string_past_* or answer (not a
 * request) ends its connection; every other seed is a well-formed request
 * and gets an answer.  Either way the server goes on serving. */
#include <dirent.h>

static bool malformed_seed(const char *name)
{
    const char *bad[] = { "bad_", "short_", "missing_", "huge_", "trailing_", "string_past_",
                          "answer" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (strncmp(name, bad[i], strlen(bad[i])) == 0)
            return true;
    return false;
}

Test(manager, fuzz_corpus_against_a_server, .timeout = 120)
{
    conc_manager_opts o = CONC_MANAGER_OPTS_INIT;
    conc_manager *m = started(&o);
    char addr[128];
    cr_assert_gt(conc_manager_address(m, addr, sizeof addr), 0);
    conc_proxy *d = make(m, CONC_PROXY_DICT, 0, 0);
    DIR *dir = opendir(CONC_MANAGER_CORPUS);
    cr_assert_not_null(dir);
    struct dirent *e;
    int seen = 0, bad = 0;
    while ((e = readdir(dir)) != NULL) {
        if (e->d_name[0] == '.' || strcmp(e->d_name, "shutdown") == 0)
            continue;
        char path[512];
        snprintf(path, sizeof path, "%s/%s", CONC_MANAGER_CORPUS, e->d_name);
        FILE *f = fopen(path, "rb");
        cr_assert_not_null(f);
        static uint8_t msg[65536];
        size_t n = fread(msg, 1, sizeof msg, f);
        fclose(f);
        int r = send_raw(addr, msg, n);
        if (malformed_seed(e->d_name)) {
            cr_expect(r == -EPIPE || r == -ECONNRESET, "%s: %d", e->d_name, r);
            bad++;
        } else {
            cr_expect_geq(r, 16, "%s: no answer (%d)", e->d_name, r);
        }
        cr_expect_geq(conc_proxy_dict_len(d), 0, "after %s", e->d_name);   /* still served */
        seen++;
    }
    closedir(dir);
    cr_expect_geq(seen, 20);
    cr_expect_geq(bad, 8);
    conc_proxy_free(d);
    conc_manager_free(m);
}

/* A server with a key refuses a client without one (Unix socket too). */
Test(manager, unix_authkey_on_the_server_only, .timeout = 60)
{
    char path[128];
    tmp_path(path, sizeof path, "onekey");
    conc_manager_opts o = CONC_MANAGER_OPTS_INIT;
    o.address = path;
    o.authkey = "k1";
    o.authkey_len = 2;
    conc_manager *m = started(&o);
    conc_manager_opts co = CONC_MANAGER_OPTS_INIT;
    co.address = path;
    conc_manager *c;
    cr_assert_eq(conc_manager_new(&c, &co), 0);
    cr_expect_eq(conc_manager_connect(c), -EACCES);
    conc_manager_free(c);
    cr_assert_eq(conc_manager_new(&c, &o), 0);
    cr_expect_eq(conc_manager_connect(c), 0);
    conc_manager_free(c);
    conc_manager_free(m);
}

/* A client with a key and a server without one: the server's hello comes
 * where the challenge should, and the client fails at once (not after the
 * 10 s handshake limit). */
/* A client that goes away while a request of its waits, with a later
 * request of its still unread (a client that sends ahead, then dies), is
 * seen gone all the same: its Barrier wait ends (breaking the Barrier, as
 * any waiter that goes does) instead of waiting for a partner for ever. */
Test(manager, client_gone_with_a_request_unread_is_noticed, .timeout = 60)
{
    conc_manager *m = started(NULL);
    char addr[256];
    cr_assert_gt(conc_manager_address(m, addr, sizeof addr), 0);
    conc_proxy *b = make(m, CONC_PROXY_BARRIER, 2, 0);
    conc_conn *raw = raw_connect(addr);
    uint8_t req[48];
    raw_req(req, 1, 41, 0, 0, conc_proxy_id(b), -1);          /* B_WAIT, no timeout */
    cr_assert_eq(conc_conn_send_bytes(raw, req, sizeof req, GUARD), 0);
    int64_t end = conc_now() + (int64_t)(GUARD * 1e9);
    while (conc_proxy_barrier_n_waiting(b) < 1)                /* its wait is parked */
        cr_assert_lt(conc_now(), end, "the raw wait never arrived");
    raw_req(req, 1, 1, 0, 0, 0, -1);                           /* PING, sent ahead */
    cr_assert_eq(conc_conn_send_bytes(raw, req, sizeof req, GUARD), 0);
    conc_conn_free(raw);
    end = conc_now() + (int64_t)(GUARD * 1e9);
    while (conc_proxy_barrier_broken(b) != 1) {
        cr_assert_lt(conc_now(), end, "the gone client's wait never ended");
        usleep(1000);
    }
    cr_expect_eq(conc_proxy_barrier_n_waiting(b), 0);
    conc_proxy_free(b);
    conc_manager_free(m);
}

/* A keyless server that is not a manager of this version: its first
 * message (another version's hello, an empty one) gives -EPROTO; only a
 * keyed server's challenge means -EACCES (a key is missing). */
struct odd_server {
    conc_listener *l;
    const char *first;
    int rc;
};

static void *odd_server_main(void *arg)
{
    struct odd_server *o = arg;
    conc_conn *c;
    o->rc = conc_listener_accept(o->l, &c, GUARD);
    if (o->rc)
        return NULL;
    if (!o->first) {                /* drops the client at once */
        conc_conn_free(c);
        return NULL;
    }
    o->rc = conc_conn_send_bytes(c, o->first, strlen(o->first), GUARD);
    char b[64];
    if (!o->rc)
        conc_conn_recv_bytes(c, b, sizeof b, GUARD);    /* until the client goes */
    conc_conn_free(c);
    return NULL;
}

static int connect_to_odd_server_with(const char *first, const char *key)
{
    char path[128];
    tmp_path(path, sizeof path, "odd");
    struct odd_server o = { NULL, first, 1 };
    cr_assert_eq(conc_listener_new(&o.l, path, NULL), 0);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, odd_server_main, &o), 0);
    conc_manager_opts mo = CONC_MANAGER_OPTS_INIT;
    mo.address = path;
    mo.authkey = key;
    mo.authkey_len = key ? strlen(key) : 0;
    conc_manager *m;
    cr_assert_eq(conc_manager_new(&m, &mo), 0);
    int e = conc_manager_connect(m);
    conc_manager_free(m);
    pthread_join(t, NULL);
    cr_expect_eq(o.rc, 0);
    conc_listener_free(o.l);
    unlink(path);
    return e;
}

static int connect_to_odd_server(const char *first)
{
    return connect_to_odd_server_with(first, NULL);
}

/* A keyed client whose server goes away during the handshake (before its
 * challenge, or before its verdict) hears -ECONNRESET, as a keyless one
 * does: -EACCES is kept for a refusal (it used to get -EACCES for both). */
Test(manager, keyed_client_to_a_server_gone_mid_handshake_gets_econnreset, .timeout = 60)
{
    cr_expect_eq(connect_to_odd_server_with(NULL, "k1"), -ECONNRESET);
    cr_expect_eq(connect_to_odd_server_with("#CONC-CHALLENGE-1#0123456789abcdef0123456789abcdef",
                                            "k1"),
                 -ECONNRESET);      /* the client answered; no verdict came */
    cr_expect_eq(connect_to_odd_server(NULL), -ECONNRESET);
}

Test(manager, keyless_client_to_an_odd_server_gets_eproto, .timeout = 60)
{
    cr_expect_eq(connect_to_odd_server("#CONC-MANAGER-9#"), -EPROTO);  /* another version */
    cr_expect_eq(connect_to_odd_server(""), -EPROTO);
    cr_expect_eq(connect_to_odd_server("#CONC-CHALLENGE-1#0123456789abcdef0123456789abcdef"),
                 -EACCES);                                  /* what a keyed server says */
}

Test(manager, keyed_client_to_keyless_server_fails_fast, .timeout = 60)
{
    char path[128];
    tmp_path(path, sizeof path, "nokey");
    conc_manager_opts o = CONC_MANAGER_OPTS_INIT;
    o.address = path;
    conc_manager *m = started(&o);
    conc_manager_opts co = o;
    co.authkey = "k1";
    co.authkey_len = 2;
    conc_manager *c;
    cr_assert_eq(conc_manager_new(&c, &co), 0);
    cr_expect_eq(conc_manager_connect(c), -EACCES);           /* not -ETIMEDOUT after 10 s */
    conc_manager_free(c);
    conc_proxy *d;
    cr_assert_eq(conc_manager_create(m, &d, CONC_PROXY_DICT, NULL, 0, 0), 0);  /* still serves */
    cr_expect_eq(conc_proxy_dict_len(d), 0);
    conc_proxy_free(d);
    conc_manager_free(m);
}

/* SIGTERM (what an exit-time cleanup sends a daemon child) ends a started
 * server cleanly: it removes its socket and private directory itself. */
Test(manager, sigterm_ends_the_server_cleanly, .timeout = 60)
{
    conc_manager *m = started(NULL);
    char addr[128], dir[128];
    cr_assert_gt(conc_manager_address(m, addr, sizeof addr), 0);
    strcpy(dir, addr);
    *strrchr(dir, '/') = 0;
    conc_proxy *q = make(m, CONC_PROXY_QUEUE, 0, 0), *d = make(m, CONC_PROXY_DICT, 0, 0);
    struct q_arg qa = { .q = q };
    pthread_t qt;
    pthread_create(&qt, NULL, q_getter, &qa);          /* blocked in the server */
    pid_t pid = conc_manager_pid(m);
    cr_assert_eq(kill(pid, SIGINT), 0);                 /* ignored */
    cr_expect_eq(conc_proxy_dict_len(d), 0);            /* still serving */
    cr_assert_eq(kill(pid, SIGTERM), 0);
    pthread_join(qt, NULL);
    cr_expect(qa.r == -ECONNRESET || qa.r == -EPIPE, "%d", qa.r);
    /* It exits (a zombie until conc_manager_free joins it). */
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int64_t deadline = conc_now() + (int64_t)(GUARD * 1e9);
    char state = 0;
    while (conc_now() < deadline) {
        FILE *f = fopen(path, "r");
        cr_assert_not_null(f);
        cr_assert_eq(fscanf(f, "%*d %*s %c", &state), 1);
        fclose(f);
        if (state == 'Z')
            break;
        sched_yield();
    }
    cr_assert_eq(state, 'Z');
    struct stat st;
    cr_expect_neq(stat(addr, &st), 0, "the server removed its socket");
    cr_expect_neq(stat(dir, &st), 0, "and its directory");
    conc_proxy_free(d);
    conc_proxy_free(q);
    conc_manager_free(m);
}
