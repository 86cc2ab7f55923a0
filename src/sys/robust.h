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

/* The calling thread's list head once looked up (CONC__ROBUST_NONE when
 * robust lists cannot be used), NULL before. */
extern __thread struct conc__robust_head *conc__robust_head_cache
    __attribute__((tls_model("initial-exec")));
#define CONC__ROBUST_NONE ((struct conc__robust_head *)1)

CONC_HIDDEN struct conc__robust_head *conc__robust_head_slow(void);

/* The calling thread's list head, or NULL when robust lists cannot be used
 * (then shared locks still work but cannot report a dead owner). */
static inline struct conc__robust_head *conc__robust_head(void)
{
    struct conc__robust_head *h = conc__robust_head_cache;
    if (likely(h))
        return h == CONC__ROBUST_NONE ? NULL : h;
    return conc__robust_head_slow();
}

/* Announce the node of a lock about to be taken or released (a death in
 * between is then still handled by the kernel), and clear it afterwards. */
static inline void conc__robust_pending(struct conc__robust_head *h, uint64_t *next_field)
{
    __atomic_store_n(&h->list_op_pending, (void *)next_field, __ATOMIC_RELAXED);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
}

/* Node pointers point at `next` fields; the node's `prev` field is the word
 * before. */
static inline void **conc__robust_prev_field(uintptr_t next_field)
{
    return (void **)((next_field & ~(uintptr_t)1) - sizeof(void *));
}

/* Link the node (links[0] = prev, links[1] = next) at the front. */
static inline void conc__robust_link(struct conc__robust_head *h, uint64_t links[2])
{
    uintptr_t first = (uintptr_t)h->list;
    __atomic_store_n(&links[1], (uint64_t)first, __ATOMIC_RELAXED);
    __atomic_store_n(&links[0], (uint64_t)(uintptr_t)h, __ATOMIC_RELAXED);
    *conc__robust_prev_field(first) = &links[1];
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    __atomic_store_n(&h->list, (void *)&links[1], __ATOMIC_RELAXED);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
}

/* Unlink the node. */
static inline void conc__robust_unlink(uint64_t links[2])
{
    uintptr_t next = (uintptr_t)links[1], prev = (uintptr_t)links[0];
    *conc__robust_prev_field(next) = (void *)prev;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    *(void **)(prev & ~(uintptr_t)1) = (void *)next;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    __atomic_store_n(&links[0], 0, __ATOMIC_RELAXED);
    __atomic_store_n(&links[1], 0, __ATOMIC_RELAXED);
}

#endif
