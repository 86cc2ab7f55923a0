/*
 * robust.c - linking shared locks into the thread's robust futex list.
 *
 * conc shares the list that the C library registered for the thread, and
 * writes into it as glibc does, including glibc's private `robust_prev`
 * slot just before the head (sys/robust.h).  So it uses a registered list
 * only when it is sure that it is glibc's own, laid out as conc knows it:
 * built against glibc on a 64-bit target, the kernel reports a head of the
 * kernel's 64-bit size with glibc's futex offset, and the head lies inside
 * the thread's descriptor (where glibc keeps robust_prev and robust_head),
 * not somewhere a program or another library registered.  Anything else is
 * "no usable list": shared locks then refuse to be made (-ENOTSUP from
 * conc_lock_init) instead of silently losing owner-death detection.
 */
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
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

/* How far into glibc's thread descriptor (struct pthread, which
 * pthread_self points at) its robust head may lie: it is at 736 bytes in
 * glibc 2.36 on x86-64, and the whole descriptor is about 2.3 KiB. */
#define HEAD_OFFSET_MAX 4096u

/* True when the head the kernel reported is glibc's, as conc knows it. */
static bool layout_known(const struct conc__robust_head *h, size_t len)
{
#if defined(__GLIBC__) && UINTPTR_MAX == UINT64_MAX
    uintptr_t off = (uintptr_t)h - (uintptr_t)pthread_self();
    return len == sizeof *h && h->futex_offset == -CONC__ROBUST_NEXT_OFFSET &&
           off >= sizeof(void *) && off < HEAD_OFFSET_MAX;
#else
    (void)h;
    (void)len;
    return false;
#endif
}

struct conc__robust_head *conc__robust_head_slow(void)
{
    struct conc__robust_head *h;
    void *p = NULL;
    size_t len = 0;
#if !defined(__GLIBC__) || UINTPTR_MAX != UINT64_MAX
    /* Another C library may register (or replace) the list later, and the
     * nodes hold 64-bit pointers: nothing conc can rely on. */
    h = HEAD_NONE;
#else
    if (syscall(SYS_get_robust_list, 0, &p, &len) == 0 && p) {
        h = p;
        if (h != &own.head && !layout_known(h, len))
            h = HEAD_NONE;      /* a layout we cannot share */
    } else {
        own.head.list = &own.head;
        own.head.futex_offset = -CONC__ROBUST_NEXT_OFFSET;
        own.head.list_op_pending = NULL;
        own.prev = &own.head;
        h = syscall(SYS_set_robust_list, &own.head, sizeof own.head) == 0 ? &own.head
                                                                           : HEAD_NONE;
    }
#endif
    conc__robust_head_cache = h;
    return h == HEAD_NONE ? NULL : h;
}
