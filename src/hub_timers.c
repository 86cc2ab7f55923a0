/*
 * hub_timers.c - the timers of a hub (src/hub.c): each coroutine parked
 * with a deadline has one.  Timers armed in deadline order (sleeps and
 * timeouts of one length) go to a list, O(1) each way; the others to a
 * binary heap.  The hub's loop takes the earliest of the two heads.
 */
#include <errno.h>
#include <stdlib.h>

#include "hub_internal.h"

/* --------------------------------------------------------- timer heap */

static inline void heap_set(struct hub *h, size_t i, conc_greenlet *g)
{
    h->heap[i] = g;
    g->heap_idx = i;
}

static void heap_up(struct hub *h, size_t i)
{
    conc_greenlet *g = h->heap[i];
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h->heap[p]->deadline <= g->deadline)
            break;
        heap_set(h, i, h->heap[p]);
        i = p;
    }
    heap_set(h, i, g);
}

static void heap_down(struct hub *h, size_t i)
{
    conc_greenlet *g = h->heap[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->nheap)
            break;
        if (c + 1 < h->nheap && h->heap[c + 1]->deadline < h->heap[c]->deadline)
            c++;
        if (g->deadline <= h->heap[c]->deadline)
            break;
        heap_set(h, i, h->heap[c]);
        i = c;
    }
    heap_set(h, i, g);
}

/* Room for need timers.  Each coroutine of a hub arms at most one timer at
 * a time, so conc_greenlet_spawn makes room for every live greenlet and the main
 * coroutine: arming a timer in a blocking call never allocates (and never
 * fails). */
int conc__hub_heap_reserve(struct hub *h, size_t need)
{
    if (need > h->capheap) {
        size_t cap = h->capheap ? h->capheap : 64;
        while (cap < need)
            cap *= 2;
        conc_greenlet **n = realloc(h->heap, cap * sizeof *n);
        if (!n)
            return -ENOMEM;
        h->heap = n;
        h->capheap = cap;
    }
    return 0;
}

/* A timer whose deadline is not before the last one in the list joins the
 * list (a million sleepers of one length never touch the heap, which would
 * also cost a pointer each); the others go to the heap. */
void conc__hub_timer_arm(struct hub *h, conc_greenlet *g, int64_t deadline, int rc)
{
    g->deadline = deadline;
    g->timer_rc = rc;
    if (!h->ttail || h->ttail->deadline <= deadline) {
        g->heap_idx = IN_LIST;
        g->tnext = NULL;
        g->tprev = h->ttail;
        if (h->ttail)
            h->ttail->tnext = g;
        else
            h->thead = g;
        h->ttail = g;
        return;
    }
    heap_set(h, h->nheap++, g);
    heap_up(h, h->nheap - 1);
}

void conc__hub_timer_remove(struct hub *h, conc_greenlet *g)
{
    size_t i = g->heap_idx;
    g->heap_idx = NO_INDEX;
    if (i == IN_LIST) {
        if (g->tprev)
            g->tprev->tnext = g->tnext;
        else
            h->thead = g->tnext;
        if (g->tnext)
            g->tnext->tprev = g->tprev;
        else
            h->ttail = g->tprev;
        return;
    }
    conc_greenlet *last = h->heap[--h->nheap];
    if (i == h->nheap)
        return;
    heap_set(h, i, last);
    heap_up(h, i);
    heap_down(h, last->heap_idx);
}
