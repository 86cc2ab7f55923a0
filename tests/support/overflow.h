/*
 * overflow.h - a coroutine body that overflows its stack, for the tests of
 * conc's overflow detection and reporting.
 */
#ifndef CONC_TESTS_OVERFLOW_H
#define CONC_TESTS_OVERFLOW_H

static volatile long depth_sink;

/* Recurses forever (each frame writes a little: an overflow, not an
 * optimisation). */
static __attribute__((noinline, unused)) long recurse_forever(long n)
{
    volatile char pad[96];
    pad[0] = (char)n;
    if (depth_sink == -12345)   /* never: depth_sink only grows */
        return 0;
    long r = recurse_forever(n + 1) + pad[0];
    depth_sink = r;
    return r;
}

/* A coroutine body that never returns: it runs off its stack. */
static __attribute__((unused)) void *overflow_fn(void *arg, void *value)
{
    (void)arg;
    (void)value;
    return (void *)recurse_forever(0);
}

#endif
