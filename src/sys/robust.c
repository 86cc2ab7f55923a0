/* robust.c - linking shared locks into the thread's robust futex list. */
#include <pthread.h>
#include <stddef.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "conc/sync.h"
#include "sys/robust.h"

_Static_assert(offsetof(conc_lock, _links[1]) - offsetof(conc_lock, _word) ==
               CONC__ROBUST_NEXT_OFFSET, "lock layout must match the robust list");

#define HEAD_NONE ((struct conc__robust_head *)1)

static __thread struct conc__robust_head *head_cache
    __attribute__((tls_model("initial-exec")));

/* conc's own head for threads without one: a `prev` slot precedes the head,
 * as in glibc, so that the head looks like a {prev, next} node. */
static __thread struct {
    void *prev;
    struct conc__robust_head head;
} own __attribute__((tls_model("initial-exec")));

struct conc__robust_head *conc__robust_head(void)
{
    struct conc__robust_head *h = head_cache;
    if (likely(h))
        return h == HEAD_NONE ? NULL : h;
    void *p = NULL;
    size_t len = 0;
    if (syscall(SYS_get_robust_list, 0, &p, &len) == 0 && p) {
        h = p;
        if (len != sizeof *h || h->futex_offset != -CONC__ROBUST_NEXT_OFFSET)
            h = HEAD_NONE;      /* a layout we cannot share */
    } else {
        own.head.list = &own.head;
        own.head.futex_offset = -CONC__ROBUST_NEXT_OFFSET;
        own.head.list_op_pending = NULL;
        own.prev = &own.head;
        h = syscall(SYS_set_robust_list, &own.head, sizeof own.head) == 0 ? &own.head
                                                                           : HEAD_NONE;
    }
    head_cache = h;
    return h == HEAD_NONE ? NULL : h;
}

/* Node pointers point at `next` fields; the node's `prev` field is the word
 * before. */
static inline void **prev_field_of(uintptr_t next_field)
{
    return (void **)((next_field & ~(uintptr_t)1) - sizeof(void *));
}

void conc__robust_link(struct conc__robust_head *h, uint64_t links[2])
{
    uintptr_t first = (uintptr_t)h->list;
    __atomic_store_n(&links[1], (uint64_t)first, __ATOMIC_RELAXED);
    __atomic_store_n(&links[0], (uint64_t)(uintptr_t)h, __ATOMIC_RELAXED);
    *prev_field_of(first) = &links[1];
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    __atomic_store_n(&h->list, (void *)&links[1], __ATOMIC_RELAXED);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
}

void conc__robust_unlink(uint64_t links[2])
{
    uintptr_t next = (uintptr_t)links[1], prev = (uintptr_t)links[0];
    *prev_field_of(next) = (void *)prev;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    *(void **)(prev & ~(uintptr_t)1) = (void *)next;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    __atomic_store_n(&links[0], 0, __ATOMIC_RELAXED);
    __atomic_store_n(&links[1], 0, __ATOMIC_RELAXED);
}
