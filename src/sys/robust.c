/* robust.c - linking shared locks into the thread's robust futex list. */
#include <pthread.h>
#include <stddef.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "conc/sync.h"
#include "sys/robust.h"

_Static_assert(offsetof(conc_lock, _links[1]) - offsetof(conc_lock, _word) ==
               CONC__ROBUST_NEXT_OFFSET, "lock layout must match the robust list");

#define HEAD_NONE CONC__ROBUST_NONE

__thread struct conc__robust_head *conc__robust_head_cache
    __attribute__((tls_model("initial-exec")));

/* conc's own head for threads without one: a `prev` slot precedes the head,
 * as in glibc, so that the head looks like a {prev, next} node. */
static __thread struct {
    void *prev;
    struct conc__robust_head head;
} own __attribute__((tls_model("initial-exec")));

struct conc__robust_head *conc__robust_head_slow(void)
{
    struct conc__robust_head *h;
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
    conc__robust_head_cache = h;
    return h == HEAD_NONE ? NULL : h;
}
