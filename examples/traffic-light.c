/*
 * traffic-light - threading.Event as a traffic light.
 *
 * A light thread turns an Event green (set) and red (clear) for --cycles
 * cycles, each colour lasting --period seconds.  --cars car threads wait for
 * green (Event.wait) and then pass.  A car passes at most once per green
 * phase and only while the light is green: it checks the light and prints
 * while holding the lock the light takes to switch, so the output order
 * itself proves the rule (every "car K passes" sits between a "light green"
 * and the following "light red").
 *
 *   traffic-light [--cycles N] [--period S] [--cars N]
 *
 * Python original: a light() thread flips event.set()/event.clear(), car(n)
 * threads call event.wait() and print "car [n] is running".
 */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conc.h"
#include "cli.h"

static const char *prog = "traffic-light";

struct road {
    conc_event green;       /* the light: set = green, clear = red */
    conc_lock lock;         /* taken by the light to switch, by cars to pass */
    conc_cond changed;      /* notified at every switch (with lock) */
    unsigned greens;        /* number of green phases so far */
    unsigned switches;      /* number of switches so far */
    bool done;              /* the cycles are over */
    long cycles;
    double period;
};

struct car {
    struct road *road;
    long number;            /* 1-based */
};

static void switch_light(struct road *r, bool green)
{
    conc_lock_acquire(&r->lock, CONC_FOREVER);
    if (green) {
        r->greens++;
        conc_event_set(&r->green);
        puts("light green");
    } else {
        conc_event_clear(&r->green);
        puts("light red");
    }
    r->switches++;
    conc_cond_notify_all(&r->changed);
    conc_lock_release(&r->lock);
}

static void *light_fn(void *arg)
{
    struct road *r = arg;
    for (long c = 0; c < r->cycles; c++) {
        switch_light(r, true);
        conc_sleep(r->period);
        switch_light(r, false);
        if (c + 1 < r->cycles)
            conc_sleep(r->period);
    }
    /* Stop the cars: they look at `done` under the lock before passing. */
    conc_lock_acquire(&r->lock, CONC_FOREVER);
    r->done = true;
    conc_cond_notify_all(&r->changed);
    conc_lock_release(&r->lock);
    conc_event_set(&r->green); /* wake the cars waiting at red */
    return NULL;
}

static void *car_fn(void *arg)
{
    struct car *c = arg;
    struct road *r = c->road;
    unsigned passed_in = 0; /* the green phase this car passed in */
    for (;;) {
        conc_event_wait(&r->green, CONC_FOREVER); /* stop at red */
        conc_lock_acquire(&r->lock, CONC_FOREVER);
        if (r->done) {
            conc_lock_release(&r->lock);
            break;
        }
        /* The light cannot switch while we hold the lock. */
        if (conc_event_is_set(&r->green) && r->greens != passed_in) {
            printf("car %ld passes\n", c->number);
            passed_in = r->greens;
        }
        /* Wait for the next switch before looking again. */
        unsigned seen = r->switches;
        while (!r->done && r->switches == seen)
            conc_cond_wait(&r->changed, &r->lock, CONC_FOREVER);
        conc_lock_release(&r->lock);
    }
    return NULL;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: %s [--cycles N] [--period S] [--cars N]\n"
               "  --cycles N  green/red cycles, 1 to 1000000 (default 3)\n"
               "  --period S  seconds each colour lasts, > 0 and at most 3600 (default 0.2)\n"
               "  --cars N    car threads, 1 to 1000 (default 5)\n", prog);
}

int main(int argc, char **argv)
{
    struct road road = {
        .green = CONC_EVENT_INIT, .lock = CONC_LOCK_INIT, .changed = CONC_COND_INIT,
        .cycles = 3, .period = 0.2,
    };
    long ncars = 5;
    const struct opt opts[] = {
        { "cycles", OPT_INT, &road.cycles, 1, 1000000, NULL },
        { "period", OPT_SECONDS, &road.period, 1, 3600, NULL },
        { "cars", OPT_INT, &ncars, 1, 1000, NULL },
    };
    int rc = parse_options(argc, argv, opts, OPTS_COUNT(opts), usage);
    if (rc >= 0)
        return rc;

    struct car *cars = calloc((size_t)ncars, sizeof *cars);
    conc_thread **threads = calloc((size_t)ncars, sizeof *threads);
    conc_thread *light = NULL;
    if (!cars || !threads)
        return die("calloc", -ENOMEM);

    conc_thread_opts lo = { .name = "light" };
    if ((rc = conc_thread_new(&light, light_fn, &road, &lo)) < 0)
        return die("conc_thread_new", rc);
    for (long i = 0; i < ncars; i++) {
        char name[32];
        snprintf(name, sizeof name, "car-%ld", i + 1);
        cars[i].road = &road;
        cars[i].number = i + 1;
        /* Daemon cars: should setting up fail half-way, exit does not
         * wait for cars that would never see a light again. */
        conc_thread_opts co = { .name = name, .daemon = CONC_DAEMON };
        if ((rc = conc_thread_new(&threads[i], car_fn, &cars[i], &co)) < 0 ||
            (rc = conc_thread_start(threads[i])) < 0)
            return die("car thread", rc);
    }
    if ((rc = conc_thread_start(light)) < 0)
        return die("light thread", rc);

    conc_thread_join(light, CONC_FOREVER);
    conc_thread_free(light);
    for (long i = 0; i < ncars; i++) {
        conc_thread_join(threads[i], CONC_FOREVER);
        conc_thread_free(threads[i]);
    }
    free(threads);
    free(cars);
    return 0;
}
