/*
 * coro_smoke.c - the coroutine switch and the hub on another architecture,
 * without Criterion (scripts/cross-aarch64.sh builds it for AArch64 and
 * runs it under qemu-user).  Checks: values passed both ways through many
 * switches, each coroutine's own floating-point rounding mode, a deep
 * stack, greenlets passing values through a queue of maxsize 1, and
 * sleeping greenlets whose stack data survives their park.  Prints
 * "coro_smoke: ok" and exits 0, or names the first failed check and exits 1.
 */
#include <fenv.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "conc.h"

#define CHECK(c)                                                              \
    do {                                                                      \
        if (!(c)) {                                                           \
            printf("coro_smoke: %s:%d: %s failed\n", __FILE__, __LINE__, #c); \
            exit(1);                                                          \
        }                                                                     \
    } while (0)

/* Gives back every value plus one, forever. */
static void *plus_one_echo(void *arg, void *value)
{
    conc_coro *main_coro = arg;
    for (;;)
        conc_coro_switch(main_coro, (void *)((uintptr_t)value + 1), &value);
    return NULL;
}

static void *round_up_then_report(void *arg, void *value)
{
    (void)arg;
    (void)value;
    fesetround(FE_UPWARD);
    conc_coro_switch(conc_coro_main(), NULL, NULL);
    return (void *)(intptr_t)fegetround();
}

/* Recurses n deep with 256 bytes of locals a level. */
static long deep(long n)
{
    volatile char buf[256];
    buf[0] = (char)n;
    buf[255] = (char)(n >> 8);
    if (n == 0)
        return buf[0];
    return deep(n - 1) + buf[0] + buf[255] + 1;
}

static void *deep_fn(void *arg, void *value)
{
    (void)value;
    return (void *)deep((long)(intptr_t)arg);
}

#define ITEMS 1000
static conc_queue *queue;

static void *producer(void *arg)
{
    (void)arg;
    for (long i = 1; i <= ITEMS; i++)
        if (conc_queue_put(queue, (void *)(intptr_t)i, CONC_FOREVER) != 0)
            return (void *)1;
    return NULL;
}

static void *consumer(void *arg)
{
    long *sum = arg;
    for (long i = 1; i <= ITEMS; i++) {
        void *v = NULL;
        if (conc_queue_get(queue, &v, CONC_FOREVER) != 0 || (intptr_t)v != i)
            return (void *)1;
        *sum += (intptr_t)v;
    }
    return NULL;
}

/* Fills its stack with a pattern, sleeps, and checks the pattern. */
static void *marked_sleeper(void *arg)
{
    volatile uint64_t mark[16];
    uint64_t seed = (uint64_t)(uintptr_t)arg * 0x9E3779B97F4A7C15ull;
    for (int i = 0; i < 16; i++)
        mark[i] = seed + (uint64_t)i;
    if (conc_sleep(0.01) != 0)
        return (void *)2;
    for (int i = 0; i < 16; i++)
        if (mark[i] != seed + (uint64_t)i)
            return (void *)1;
    return NULL;
}

int main(void)
{
    conc_coro *c;
    void *v = NULL;
    CHECK(conc_coro_new(&c, plus_one_echo, conc_coro_current(), NULL) == 0);
    for (uintptr_t i = 0; i < 100000; i++) {
        CHECK(conc_coro_switch(c, (void *)i, &v) == 0);
        CHECK((uintptr_t)v == i + 1);
    }
    conc_coro_free(c);

    CHECK(fesetround(FE_TONEAREST) == 0);
    CHECK(conc_coro_new(&c, round_up_then_report, NULL, NULL) == 0);
    CHECK(conc_coro_switch(c, NULL, NULL) == 0);
    CHECK(fegetround() == FE_TONEAREST);
    CHECK(fesetround(FE_DOWNWARD) == 0);
    CHECK(conc_coro_switch(c, NULL, &v) == 0);
    CHECK((int)(intptr_t)v == FE_UPWARD);
    CHECK(fegetround() == FE_DOWNWARD);
    fesetround(FE_TONEAREST);
    conc_coro_free(c);

    conc_coro_opts o = { 0 };
    o.stack_size = 1 << 20;
    long want = deep(2000);
    CHECK(conc_coro_new(&c, deep_fn, (void *)(intptr_t)2000, &o) == 0);
    CHECK(conc_coro_switch(c, NULL, &v) == 0);
    CHECK((long)(intptr_t)v == want);
    conc_coro_free(c);

    conc_queue_opts qo = { 0 };
    qo.maxsize = 1;
    CHECK(conc_queue_new(&queue, &qo) == 0);
    long sum = 0;
    conc_greenlet *pc[2];
    CHECK(conc_greenlet_spawn(&pc[0], producer, NULL, NULL) == 0);
    CHECK(conc_greenlet_spawn(&pc[1], consumer, &sum, NULL) == 0);
    CHECK(conc_greenlet_joinall(pc, 2, CONC_FOREVER) == 0);
    for (int i = 0; i < 2; i++) {
        CHECK(conc_greenlet_result(pc[i], &v) == 0);
        CHECK(v == NULL);
        conc_greenlet_free(pc[i]);
    }
    CHECK(sum == (long)ITEMS * (ITEMS + 1) / 2);
    conc_queue_free(queue);

    enum { SLEEPERS = 2000 };
    static conc_greenlet *s[SLEEPERS];
    for (long i = 0; i < SLEEPERS; i++)
        CHECK(conc_greenlet_spawn(&s[i], marked_sleeper, (void *)(intptr_t)i, NULL) == 0);
    CHECK(conc_greenlet_joinall(s, SLEEPERS, CONC_FOREVER) == 0);
    for (long i = 0; i < SLEEPERS; i++) {
        CHECK(conc_greenlet_result(s[i], &v) == 0);
        CHECK(v == NULL);
        conc_greenlet_free(s[i]);
    }
    CHECK(conc_hub_free() == 0);
    printf("coro_smoke: ok\n");
    return 0;
}
