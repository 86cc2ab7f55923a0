/*
 * wait_source.h - how conc_wait (wait_objects.c, in libconc) asks an object
 * of another conc library whether it is ready: the object's first member
 * points to one of these.  libconc_broker's queues are such objects
 * (CONC_WAIT_BROKER); both libraries are built from this tree together, so
 * the layout is shared by construction.
 */
#ifndef CONC_WAIT_SOURCE_H
#define CONC_WAIT_SOURCE_H

#include <stdbool.h>

struct conc__wait_source {
    /* Makes the object ready to be waited on and says whether it is ready
     * now (1: a get would not wait), 0 (wait for *fd to be readable, then
     * ask again), or a negative errno (it is ready: the get will report
     * it).  Sets *fd to the descriptor to poll when it returns 0. */
    int (*check)(void *obj, int *fd);
};

#endif /* CONC_WAIT_SOURCE_H */
