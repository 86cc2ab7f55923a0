/*
 * test_platform.c - what conc assumes of the platform, checked: shared
 * (robust) locks are made only where the thread's robust list is glibc's,
 * laid out as conc knows it, and report -ENOTSUP anywhere else instead of
 * silently losing owner-death detection; conc's memfds are sealed
 * non-executable where the kernel can.
 *
 * A thread replaces its robust-list registration with one of its own (what
 * another C library, or a program managing its own list, would do) before
 * conc first looks at it, and puts glibc's back before it ends.  Worker
 * threads never assert: they record results that the test checks.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "conc.h"

#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008u
#endif
#ifndef F_SEAL_EXEC
#define F_SEAL_EXEC 0x0020
#endif

/* The kernel's struct robust_list_head. */
struct head {
    void *list;
    long futex_offset;
    void *pending;
};

/* A list of the thread's own, with a canary where glibc keeps the slot
 * before its head. */
static struct {
    uint64_t canary;
    struct head head;
} own_list;

#define CANARY UINT64_C(0x5a5aa5a5deadbeef)

struct results {
    long futex_offset;          /* of the list the thread registers */
    int registered;             /* set_robust_list's result */
    int lock, rlock, lock_private, value, value_raw, array, mpqueue;
    int restored;
};

static void *with_foreign_list(void *arg)
{
    struct results *r = arg;
    void *glibc_head = NULL;
    size_t glibc_len = 0;
    if (syscall(SYS_get_robust_list, 0, &glibc_head, &glibc_len) != 0)
        glibc_head = NULL;
    own_list.canary = CANARY;
    own_list.head.list = &own_list.head;
    own_list.head.futex_offset = r->futex_offset;
    own_list.head.pending = NULL;
    r->registered = (int)syscall(SYS_set_robust_list, &own_list.head, sizeof own_list.head);

    conc_lock l;
    conc_rlock rl;
    r->lock = conc_lock_init(&l, CONC_SYNC_SHARED);
    if (r->lock == 0) {             /* (what the old code did: use the list) */
        conc_lock_acquire(&l, 0);
        conc_lock_release(&l);
    }
    r->rlock = conc_rlock_init(&rl, CONC_SYNC_SHARED);
    r->lock_private = conc_lock_init(&l, 0);
    conc_value *v = NULL;
    r->value = conc_value_new(&v, 'i', NULL, 0);
    conc_value_free(v);
    v = NULL;
    r->value_raw = conc_value_new(&v, 'i', NULL, CONC_SHM_RAW);
    conc_value_free(v);
    conc_array *a = NULL;
    r->array = conc_array_new(&a, 'd', 4, NULL, 0);
    conc_array_free(a);
    conc_mpqueue *q = NULL;
    r->mpqueue = conc_mpqueue_new(&q, NULL);
    conc_mpqueue_free(q);

    r->restored = glibc_head ? (int)syscall(SYS_set_robust_list, glibc_head, glibc_len) : 0;
    return NULL;
}

static struct results run_foreign(long futex_offset)
{
    struct results r = { .futex_offset = futex_offset };
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, with_foreign_list, &r), 0);
    cr_assert_eq(pthread_join(t, NULL), 0);
    cr_assert_eq(r.registered, 0, "set_robust_list");
    cr_assert_eq(r.restored, 0, "glibc's list put back");
    return r;
}

static void check_refused(const struct results *r)
{
    cr_assert_eq(r->lock, -ENOTSUP, "shared Lock: %s", conc_errname(r->lock));
    cr_assert_eq(r->rlock, -ENOTSUP, "shared RLock: %s", conc_errname(r->rlock));
    cr_assert_eq(r->lock_private, 0, "a private Lock needs no robust list");
    cr_assert_eq(r->value, -ENOTSUP, "Value with a lock: %s", conc_errname(r->value));
    cr_assert_eq(r->value_raw, 0, "a RawValue has no lock");
    cr_assert_eq(r->array, -ENOTSUP, "Array with a lock: %s", conc_errname(r->array));
    cr_assert_eq(r->mpqueue, -ENOTSUP, "process queue: %s", conc_errname(r->mpqueue));
}

/* The list glibc registered is the one conc knows, and shared locks work. */
Test(platform, robust_list_layout_known)
{
    void *p = NULL;
    size_t len = 0;
    cr_assert_eq(syscall(SYS_get_robust_list, 0, &p, &len), 0);
    cr_assert_not_null(p);
    cr_assert_eq(len, sizeof(struct head));
    cr_assert_eq(((struct head *)p)->futex_offset, -32);
    conc_lock l;
    cr_assert_eq(conc_lock_init(&l, CONC_SYNC_SHARED), 0);
    cr_assert_eq(conc_lock_acquire(&l, 0), 0);
    cr_assert_eq(conc_lock_release(&l), 0);
    conc_rlock rl;
    cr_assert_eq(conc_rlock_init(&rl, CONC_SYNC_SHARED), 0);
}

/* A list with another futex offset: the kernel would look for lock words
 * where conc's are not. */
Test(platform, robust_list_other_offset_refused)
{
    struct results r = run_foreign(-16);
    check_refused(&r);
}

/* A list with glibc's offset that is not glibc's: conc would write its
 * `prev` slot into whatever lies before the head (the canary here). */
Test(platform, robust_list_not_glibcs_refused)
{
    struct results r = run_foreign(-32);
    check_refused(&r);
    cr_assert_eq(own_list.canary, CANARY, "the word before the head was written");
}

/* ------------------------------------------------------------ memfds */

static bool kernel_has_noexec_seal(void)
{
    int fd = (int)syscall(SYS_memfd_create, "probe", MFD_CLOEXEC | MFD_NOEXEC_SEAL);
    if (fd < 0)
        return false;
    close(fd);
    return true;
}

static void check_noexec(int fd, const char *what)
{
    int seals = fcntl(fd, F_GET_SEALS);
    cr_assert_geq(seals, 0, "%s: F_GET_SEALS", what);
    if (kernel_has_noexec_seal())
        cr_assert(seals & F_SEAL_EXEC, "%s: not sealed non-executable", what);
    else
        cr_log_info("%s: this kernel has no MFD_NOEXEC_SEAL", what);
    cr_assert(seals & F_SEAL_SHRINK, "%s: size seals kept", what);
}

/* Kernels since 6.3 warn about memfds made without MFD_NOEXEC_SEAL (or
 * MFD_EXEC); conc's memfds only ever hold data. */
Test(platform, memfds_sealed_noexec)
{
    conc_value *v = NULL;
    cr_assert_eq(conc_value_new(&v, 'i', NULL, 0), 0);
    check_noexec(conc_value_fd(v), "Value");
    conc_value_free(v);
    conc_array *a = NULL;
    cr_assert_eq(conc_array_new(&a, 'i', 3, NULL, CONC_SHM_RAW), 0);
    check_noexec(conc_array_fd(a), "Array");
    conc_array_free(a);
    conc_mpqueue *q = NULL;
    cr_assert_eq(conc_mpqueue_new(&q, NULL), 0);
    int fds[CONC_MPQUEUE_NFDS];
    cr_assert_eq(conc_mpqueue_fds(q, fds), 0);
    check_noexec(fds[0], "process queue");
    conc_mpqueue *b = NULL;
    cr_assert_eq(conc_mpqueue_attach(&b, fds), 0, "still attaches");
    conc_mpqueue_free(b);
    conc_mpqueue_free(q);
    conc_shm *s = NULL;
    cr_assert_eq(conc_shm_open(&s, NULL, 4096, CONC_SHM_CREATE | CONC_SHM_ANON), 0);
    check_noexec(conc_shm_fd(s), "anonymous SharedMemory");
    conc_shm_free(s);
}
