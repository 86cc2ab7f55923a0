/*
 * robust.h - the kernel's robust futex list, shared with the C library.
 *
 * When a thread dies, the kernel walks the list registered with
 * set_robust_list: for every entry whose futex word still holds the dead
 * thread's id it sets FUTEX_OWNER_DIED and wakes a waiter.  glibc registers
 * one list per thread for its robust mutexes; conc links its shared locks
 * into the same list, with the same node layout (a {prev, next} pair whose
 * `next` lies 32 bytes after the futex word, like pthread_mutex_t's
 * __list), so both coexist.  A thread without a list gets one of conc's.
 */
#ifndef CONC_SYS_ROBUST_H
#define CONC_SYS_ROBUST_H

#include <stdint.h>
#include "../internal.h"

/* The kernel's struct robust_list_head: `list` points at the `next` field
 * of the first node, or at the head itself when the list is empty. */
struct conc__robust_head {
    void *list;
    long futex_offset;
    void *list_op_pending;
};

/* Offset from a lock word to its node's `next` field. */
#define CONC__ROBUST_NEXT_OFFSET 32

/* The calling thread's list head, or NULL when robust lists cannot be used
 * (then shared locks still work but cannot report a dead owner). */
CONC_HIDDEN struct conc__robust_head *conc__robust_head(void);

/* Announce the node of a lock about to be taken or released (a death in
 * between is then still handled by the kernel), and clear it afterwards. */
static inline void conc__robust_pending(struct conc__robust_head *h, uint64_t *next_field)
{
    __atomic_store_n(&h->list_op_pending, (void *)next_field, __ATOMIC_RELAXED);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
}

/* Link the node (links[0] = prev, links[1] = next) at the front. */
CONC_HIDDEN void conc__robust_link(struct conc__robust_head *h, uint64_t links[2]);
/* Unlink the node. */
CONC_HIDDEN void conc__robust_unlink(uint64_t links[2]);

#endif
