/* test_time.c - conc/time.h: clock, deadlines, remaining time, sleeping. */
#include <criterion/criterion.h>
#include <math.h>
#include <signal.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include "conc/time.h"

#define NS 1000000000LL

static int64_t raw_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS + ts.tv_nsec;
}

/* ---------------------------------------------------------- conc_now */

Test(time, now_is_monotonic_clock, .timeout = 30)
{
    int64_t before = raw_monotonic();
    int64_t now = conc_now();
    int64_t after = raw_monotonic();
    cr_assert_geq(now, before);
    cr_assert_leq(now, after);
    cr_assert_gt(now, 0);
}

Test(time, now_never_goes_back, .timeout = 30)
{
    int64_t prev = conc_now();
    for (int i = 0; i < 100000; i++) {
        int64_t t = conc_now();
        cr_assert_geq(t, prev, "step %d: %lld after %lld", i, (long long)t, (long long)prev);
        prev = t;
    }
}

Test(time, monotonic_is_now_in_seconds, .timeout = 30)
{
    int64_t a = conc_now();
    double m = conc_monotonic();
    int64_t b = conc_now();
    cr_assert_geq(m, (double)a / 1e9 - 1e-6);
    cr_assert_leq(m, (double)b / 1e9 + 1e-6);
}

/* ----------------------------------------------------- conc_deadline */

Test(time, deadline_forever, .timeout = 30)
{
    int64_t d = 0;
    cr_assert_eq(conc_deadline(CONC_FOREVER, &d), 0);
    cr_assert_eq(d, CONC_NO_DEADLINE);
    d = 0;
    cr_assert_eq(conc_deadline(-1.0, &d), 0);
    cr_assert_eq(d, CONC_NO_DEADLINE);
    d = 0;
    cr_assert_eq(conc_deadline(INFINITY, &d), 0);
    cr_assert_eq(d, CONC_NO_DEADLINE);
}

Test(time, deadline_zero_is_now, .timeout = 30)
{
    int64_t d = -1;
    int64_t before = conc_now();
    cr_assert_eq(conc_deadline(0.0, &d), 0);
    int64_t after = conc_now();
    cr_assert_geq(d, before);
    cr_assert_leq(d, after);
}

Test(time, deadline_positive, .timeout = 30)
{
    int64_t d = -1;
    int64_t before = conc_now();
    cr_assert_eq(conc_deadline(1.5, &d), 0);
    int64_t after = conc_now();
    /* allow a microsecond of floating-point rounding either side */
    cr_assert_geq(d, before + 3 * NS / 2 - 1000);
    cr_assert_leq(d, after + 3 * NS / 2 + 1000);

    cr_assert_eq(conc_deadline(0.000001, &d), 0);
    cr_assert_geq(d, before);
    cr_assert_lt(d, CONC_NO_DEADLINE);
}

Test(time, deadline_saturates, .timeout = 30)
{
    int64_t d = 0;
    cr_assert_eq(conc_deadline(1e300, &d), 0);
    cr_assert_eq(d, CONC_NO_DEADLINE);
    d = 0;
    cr_assert_eq(conc_deadline(1e9, &d), 0); /* ~32 years: still representable */
    cr_assert_gt(d, conc_now());
    d = 0;
    cr_assert_eq(conc_deadline(9.3e9, &d), 0); /* > INT64_MAX ns */
    cr_assert_eq(d, CONC_NO_DEADLINE);
}

Test(time, deadline_rejects_bad_timeouts, .timeout = 30)
{
    const double bad[] = { -2.0, -0.5, -1e-9, -1.0000001, -INFINITY, NAN, -NAN };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int64_t d = 12345;
        cr_assert_eq(conc_deadline(bad[i], &d), -EINVAL, "timeout %g", bad[i]);
    }
}

Test(time, deadline_rejects_null, .timeout = 30)
{
    cr_assert_eq(conc_deadline(1.0, NULL), -EINVAL);
    cr_assert_eq(conc_deadline(0.0, NULL), -EINVAL);
    cr_assert_eq(conc_deadline(CONC_FOREVER, NULL), -EINVAL);
}

/* ---------------------------------------------------- conc_remaining */

Test(time, remaining_no_deadline_is_forever, .timeout = 30)
{
    cr_assert_eq(conc_remaining(CONC_NO_DEADLINE), CONC_FOREVER);
}

Test(time, remaining_past_is_zero, .timeout = 30)
{
    int64_t now = conc_now();
    cr_assert_eq(conc_remaining(now - 1), 0.0);
    cr_assert_eq(conc_remaining(now - 10 * NS), 0.0);
    cr_assert_eq(conc_remaining(0), 0.0);
    cr_assert_eq(conc_remaining(INT64_MIN), 0.0);
}

Test(time, remaining_future, .timeout = 30)
{
    int64_t d;
    cr_assert_eq(conc_deadline(2.0, &d), 0);
    double r = conc_remaining(d);
    cr_assert_gt(r, 1.0);
    cr_assert_leq(r, 2.0);
    int64_t near = conc_now() + NS / 2;
    r = conc_remaining(near);
    cr_assert_gt(r, 0.0);
    cr_assert_leq(r, 0.5);
}

Test(time, remaining_shrinks, .timeout = 30)
{
    int64_t d = conc_now() + 10 * NS;
    double a = conc_remaining(d);
    cr_assert_eq(conc_sleep(0.01), 0);
    double b = conc_remaining(d);
    cr_assert_lt(b, a);
    cr_assert_leq(b, a - 0.01 + 1e-6);
}

/* -------------------------------------------------------- conc_sleep */

Test(time, sleep_at_least, .timeout = 30)
{
    const double durations[] = { 0.001, 0.02, 0.1 };
    for (size_t i = 0; i < sizeof durations / sizeof durations[0]; i++) {
        int64_t t0 = conc_now();
        cr_assert_eq(conc_sleep(durations[i]), 0);
        int64_t el = conc_now() - t0;
        cr_assert_geq(el, (int64_t)(durations[i] * 1e9), "slept %lld ns for %g s",
                      (long long)el, durations[i]);
    }
}

Test(time, sleep_zero_returns, .timeout = 30)
{
    for (int i = 0; i < 100; i++)
        cr_assert_eq(conc_sleep(0), 0);
}

Test(time, sleep_rejects_bad_durations, .timeout = 30)
{
    cr_assert_eq(conc_sleep(-0.1), -EINVAL);
    cr_assert_eq(conc_sleep(-1.0), -EINVAL); /* CONC_FOREVER is not a duration */
    cr_assert_eq(conc_sleep(-INFINITY), -EINVAL);
    cr_assert_eq(conc_sleep(NAN), -EINVAL);
}

static volatile sig_atomic_t alarms;

static void on_alarm(int sig)
{
    (void)sig;
    alarms++;
}

static void arm_alarms(long first_us, long every_us)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm; /* no SA_RESTART: the raw syscall gets EINTR */
    sigemptyset(&sa.sa_mask);
    cr_assert_eq(sigaction(SIGALRM, &sa, NULL), 0);
    struct itimerval it = {
        .it_interval = { 0, every_us },
        .it_value = { 0, first_us },
    };
    cr_assert_eq(setitimer(ITIMER_REAL, &it, NULL), 0);
}

static void disarm_alarms(void)
{
    struct itimerval it;
    memset(&it, 0, sizeof it);
    setitimer(ITIMER_REAL, &it, NULL);
}

Test(time, sleep_not_shortened_by_signals, .timeout = 30)
{
    alarms = 0;
    arm_alarms(20000, 20000);
    int64_t t0 = conc_now();
    int rc = conc_sleep(0.2);
    int64_t el = conc_now() - t0;
    disarm_alarms();
    cr_assert_eq(rc, 0);
    cr_assert_gt(alarms, 0, "the signal never arrived");
    cr_assert_geq(el, 200000000LL, "slept only %lld ns", (long long)el);
}

/* -------------------------------------------------- conc_sleep_until */

Test(time, sleep_until_future, .timeout = 30)
{
    int64_t d = conc_now() + 50000000LL;
    cr_assert_eq(conc_sleep_until(d), 0);
    cr_assert_geq(conc_now(), d);
}

Test(time, sleep_until_past_returns, .timeout = 30)
{
    int64_t now = conc_now();
    cr_assert_eq(conc_sleep_until(now - NS), 0);
    cr_assert_eq(conc_sleep_until(0), 0);
    cr_assert_eq(conc_sleep_until(INT64_MIN), 0);
    /* "at once" is only bounded very generously */
    cr_assert_lt(conc_now() - now, 20 * NS);
}

Test(time, sleep_until_no_deadline_is_einval, .timeout = 30)
{
    cr_assert_eq(conc_sleep_until(CONC_NO_DEADLINE), -EINVAL);
}

Test(time, sleep_until_not_shortened_by_signals, .timeout = 30)
{
    alarms = 0;
    arm_alarms(10000, 10000);
    int64_t d = conc_now() + 100000000LL;
    int rc = conc_sleep_until(d);
    int64_t end = conc_now();
    disarm_alarms();
    cr_assert_eq(rc, 0);
    cr_assert_gt(alarms, 0);
    cr_assert_geq(end, d);
}
