/* test_errors.c - conc_strerror and conc_errname (conc/errors.h). */
#include <criterion/criterion.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include "conc/errors.h"

/* Every code conc returns (conc/errors.h lists them), with its name. */
static const struct {
    int code;
    const char *name;
} known[] = {
    { ETIMEDOUT, "ETIMEDOUT" },
    { EAGAIN, "EAGAIN" },
    { EPIPE, "EPIPE" },
    { EOWNERDEAD, "EOWNERDEAD" },
    { ECANCELED, "ECANCELED" },
    { ECHILD, "ECHILD" },
    { EINVAL, "EINVAL" },
    { EPERM, "EPERM" },
    { EOVERFLOW, "EOVERFLOW" },
    { EDEADLK, "EDEADLK" },
    { EALREADY, "EALREADY" },
    { EBUSY, "EBUSY" },
    { EMSGSIZE, "EMSGSIZE" },
    { EPROTO, "EPROTO" },
    { ENOTSUP, "ENOTSUP" },
    { EBADF, "EBADF" },
    { ENOENT, "ENOENT" },
    { EEXIST, "EEXIST" },
    { EACCES, "EACCES" },
    { ENOSYS, "ENOSYS" },
    { ENAMETOOLONG, "ENAMETOOLONG" },
    { EIO, "EIO" },
    { ENOMEM, "ENOMEM" },
    { EMFILE, "EMFILE" },
    { ENFILE, "ENFILE" },
};
#define N_KNOWN (sizeof known / sizeof known[0])

Test(errors, strerror_known_codes_have_real_descriptions, .timeout = 30)
{
    for (size_t i = 0; i < N_KNOWN; i++) {
        const char *neg = conc_strerror(-known[i].code);
        const char *pos = conc_strerror(known[i].code);
        cr_assert_not_null(neg, "%s", known[i].name);
        cr_assert_not_null(pos, "%s", known[i].name);
        cr_assert_gt(strlen(neg), 0, "%s: empty description", known[i].name);
        cr_assert_str_neq(neg, "unknown error", "%s", known[i].name);
        cr_assert_str_neq(neg, "success", "%s", known[i].name);
        /* the negative return value and the positive errno mean the same */
        cr_assert_str_eq(neg, pos, "%s", known[i].name);
    }
}

Test(errors, strerror_descriptions_are_distinct, .timeout = 30)
{
    for (size_t i = 0; i < N_KNOWN; i++)
        for (size_t j = i + 1; j < N_KNOWN; j++)
            cr_assert_str_neq(conc_strerror(-known[i].code), conc_strerror(-known[j].code),
                              "%s and %s share a description", known[i].name, known[j].name);
}

Test(errors, strerror_timeout_mentions_time, .timeout = 30)
{
    /* Not an exact wording check: the description of a timeout says so. */
    const char *s = conc_strerror(-ETIMEDOUT);
    cr_assert(strstr(s, "time") != NULL || strstr(s, "Time") != NULL, "got \"%s\"", s);
}

Test(errors, strerror_zero_is_success, .timeout = 30)
{
    cr_assert_str_eq(conc_strerror(0), "success");
}

Test(errors, strerror_unknown_codes, .timeout = 30)
{
    const int unknown[] = { 99999, -99999, 4095, -4095, 1 << 20, -(1 << 20),
                            INT_MAX, -INT_MAX, INT_MIN };
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        const char *s = conc_strerror(unknown[i]);
        cr_assert_not_null(s, "code %d", unknown[i]);
        cr_assert_str_eq(s, "unknown error", "code %d", unknown[i]);
    }
}

Test(errors, errname_known_codes, .timeout = 30)
{
    for (size_t i = 0; i < N_KNOWN; i++) {
        const char *neg = conc_errname(-known[i].code);
        const char *pos = conc_errname(known[i].code);
        cr_assert_not_null(neg);
        cr_assert_not_null(pos);
        cr_assert_str_eq(neg, known[i].name);
        cr_assert_str_eq(pos, known[i].name);
    }
}

Test(errors, errname_zero_is_0, .timeout = 30)
{
    cr_assert_str_eq(conc_errname(0), "0");
}

Test(errors, errname_unknown_codes, .timeout = 30)
{
    const int unknown[] = { 99999, -99999, 4095, -4095, 1 << 20, -(1 << 20),
                            INT_MAX, -INT_MAX, INT_MIN };
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        const char *s = conc_errname(unknown[i]);
        cr_assert_not_null(s, "code %d", unknown[i]);
        cr_assert_str_eq(s, "E?", "code %d", unknown[i]);
    }
}

Test(errors, results_are_static_and_stable, .timeout = 30)
{
    /* Static strings: the same pointer each time, unaffected by other calls. */
    const char *a = conc_strerror(-EPIPE);
    const char *an = conc_errname(-EPIPE);
    char copy[256];
    snprintf(copy, sizeof copy, "%s", a);
    (void)conc_strerror(-EINVAL);
    (void)conc_strerror(123456);
    (void)conc_errname(-EINVAL);
    cr_assert_eq(conc_strerror(-EPIPE), a);
    cr_assert_eq(conc_errname(-EPIPE), an);
    cr_assert_str_eq(a, copy);
    cr_assert_str_eq(an, "EPIPE");
}

/* ---------------------------------------------------- thread safety */

#define NTHREADS 4
#define ROUNDS 2000

static void *hammer(void *arg)
{
    (void)arg;
    for (int r = 0; r < ROUNDS; r++) {
        for (size_t i = 0; i < N_KNOWN; i++) {
            const char *n = conc_errname(-known[i].code);
            const char *s = conc_strerror(-known[i].code);
            if (!n || strcmp(n, known[i].name) != 0)
                return (void *)1;
            if (!s || !*s || strcmp(s, "unknown error") == 0)
                return (void *)2;
        }
        if (strcmp(conc_strerror(r + 100000), "unknown error") != 0)
            return (void *)3;
    }
    return NULL;
}

Test(errors, thread_safe, .timeout = 30)
{
    pthread_t t[NTHREADS];
    for (int i = 0; i < NTHREADS; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, hammer, NULL), 0);
    for (int i = 0; i < NTHREADS; i++) {
        void *res = (void *)-1;
        cr_assert_eq(pthread_join(t[i], &res), 0);
        cr_assert_null(res, "thread %d failed with %p", i, res);
    }
}
