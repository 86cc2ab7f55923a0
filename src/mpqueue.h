/*
 * mpqueue.h - what mpqueue.c offers the library's other sources (conc_wait
 * in wait_objects.c); not installed.
 */
#ifndef CONC_MPQUEUE_INTERNAL_H
#define CONC_MPQUEUE_INTERNAL_H

#include <stdbool.h>
#include "conc/mpqueue.h"
#include "internal.h"

/* True when a get could succeed now; otherwise resets a stale readiness fd
 * (one left readable after another consumer took the message). */
CONC_HIDDEN bool conc__mpqueue_ready(conc_mpqueue *q);

#endif
