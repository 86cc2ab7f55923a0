/*
 * test_shm.c - Value, Array, RawValue, RawArray and SharedMemory.
 *
 * Every test that makes segments ends by checking that it left no
 * descriptor open and no /dev/shm entry of its own (conc-<pid>-* or
 * conctest-<pid>-*; Criterion runs each test in its own process).
 * Children are plain fork()s that leave with _exit; the one scenario that
 * needs a normal exit() re-executes this binary (see shm_child_main).
 */
#include <criterion/criterion.h>

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conc.h"
#include "support/fd_count.h"
#include "support/task_state.h"

/* ------------------------------------------------------------- helpers */

static bool shm_exists(const char *bare)
{
    char path[300];
    snprintf(path, sizeof path, "/dev/shm/%s", bare);
    struct stat st;
    return lstat(path, &st) == 0;
}

/* /dev/shm entries this process made: conc-<pid>-* and conctest-<pid>-*. */
static int leftovers(void)
{
    char p1[64], p2[64];
    snprintf(p1, sizeof p1, "conc-%ld-", (long)getpid());
    snprintf(p2, sizeof p2, "conctest-%ld-", (long)getpid());
    DIR *d = opendir("/dev/shm");
    cr_assert_not_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, p1, strlen(p1)) == 0 || strncmp(e->d_name, p2, strlen(p2)) == 0) {
            cr_log_warn("left over: /dev/shm/%s", e->d_name);
            n++;
        }
    }
    closedir(d);
    return n;
}

/* A segment name private to this test process. */
static const char *tname(char *buf, size_t cap, const char *label)
{
    snprintf(buf, cap, "conctest-%ld-%s", (long)getpid(), label);
    return buf;
}

#define BEGIN_CHECKS int fds_at_start_ = count_fds()
#define END_CHECKS                                                              \
    do {                                                                        \
        cr_assert_eq(count_fds(), fds_at_start_, "descriptors leaked");         \
        cr_assert_eq(leftovers(), 0, "/dev/shm entries left behind");           \
    } while (0)

/* waitpid with a hang guard; returns the child's exit code (-signal). */
static int reap(pid_t pid)
{
    int st = 0;
    for (int i = 0; i < 5000; i++) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st);
        cr_assert_eq(r, 0);
        usleep(4000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    cr_assert_fail("child %ld hung", (long)pid);
    return -1;
}

static pid_t fork_child(void)
{
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    return pid;
}

/* ------------------------------------------------ Value and Array basics */

Test(value, child_write_seen_by_parent, .timeout = 30)
{
    BEGIN_CHECKS;
    int init = 5;
    conc_value *v;
    cr_assert_eq(conc_value_new(&v, 'i', &init, 0), 0);
    int *p = conc_value_ptr(v);
    cr_assert_eq(*p, 5);
    pid_t pid = fork_child();
    if (pid == 0) {
        if (*p != 5)
            _exit(1);
        *p = 42;
        _exit(0);
    }
    cr_assert_eq(reap(pid), 0);
    cr_assert_eq(*p, 42);
    conc_value_free(v);
    END_CHECKS;
}

Test(array, child_writes_seen_by_parent, .timeout = 30)
{
    BEGIN_CHECKS;
    conc_array *a;
    cr_assert_eq(conc_array_new(&a, 'd', 1000, NULL, CONC_SHM_RAW), 0);
    double *d = conc_array_ptr(a);
    pid_t pid = fork_child();
    if (pid == 0) {
        for (int i = 0; i < 1000; i++)
            d[i] = i * 0.5;
        _exit(0);
    }
    cr_assert_eq(reap(pid), 0);
    for (int i = 0; i < 1000; i++)
        cr_assert_eq(d[i], i * 0.5);
    conc_array_free(a);
    END_CHECKS;
}

enum { PROCS = 4, ITERS = 3000 };

/* Each child adds 1 ITERS times under the lock (sometimes recursively). */
static int add_under_lock(conc_rlock *lock, long *counter)
{
    for (int i = 0; i < ITERS; i++) {
        if (conc_rlock_acquire(lock, 20.0) != 0)
            return 1;
        if (i % 7 == 0 && conc_rlock_acquire(lock, 0) != 0)   /* RLock: recursion */
            return 2;
        long x = *counter;
        if (i % 64 == 0)
            sched_yield();                  /* widen the window a lost update needs */
        *counter = x + 1;
        if (i % 7 == 0 && conc_rlock_release(lock) != 0)
            return 3;
        if (conc_rlock_release(lock) != 0)
            return 4;
    }
    return 0;
}

Test(value, lock_makes_increments_exact, .timeout = 30)
{
    BEGIN_CHECKS;
    conc_value *v;
    cr_assert_eq(conc_value_new(&v, 'l', NULL, 0), 0);
    conc_rlock *lock = conc_value_get_lock(v);
    cr_assert_not_null(lock);
    pid_t pids[PROCS];
    for (int i = 0; i < PROCS; i++) {
        pids[i] = fork_child();
        if (pids[i] == 0)
            _exit(add_under_lock(lock, conc_value_ptr(v)));
    }
    for (int i = 0; i < PROCS; i++)
        cr_assert_eq(reap(pids[i]), 0);
    cr_assert_eq(*(long *)conc_value_ptr(v), (long)PROCS * ITERS);
    cr_assert_not(conc_rlock_is_owned(lock));
    cr_assert_eq(conc_rlock_acquire(lock, 0), 0, "the lock is free at the end");
    cr_assert_eq(conc_rlock_release(lock), 0);
    conc_value_free(v);
    END_CHECKS;
}

Test(array, lock_makes_increments_exact, .timeout = 30)
{
    BEGIN_CHECKS;
    conc_array *a;
    cr_assert_eq(conc_array_new(&a, 'q', 3, NULL, 0), 0);
    conc_rlock *lock = conc_array_get_lock(a);
    cr_assert_not_null(lock);
    long long *e = conc_array_ptr(a);
    pid_t pids[PROCS];
    for (int i = 0; i < PROCS; i++) {
        pids[i] = fork_child();
        if (pids[i] == 0) {
            for (int k = 0; k < ITERS; k++) {
                if (conc_rlock_acquire(lock, 20.0) != 0)
                    _exit(1);
                for (int j = 0; j < 3; j++)
                    e[j] += j + 1;
                conc_rlock_release(lock);
            }
            _exit(0);
        }
    }
    for (int i = 0; i < PROCS; i++)
        cr_assert_eq(reap(pids[i]), 0);
    for (int j = 0; j < 3; j++)
        cr_assert_eq(e[j], (long long)PROCS * ITERS * (j + 1));
    conc_array_free(a);
    END_CHECKS;
}

Test(value, raw_has_no_lock, .timeout = 30)
{
    BEGIN_CHECKS;
    conc_value *v, *rv;
    conc_array *a, *ra;
    cr_assert_eq(conc_value_new(&v, 'i', NULL, 0), 0);
    cr_assert_eq(conc_value_new(&rv, 'i', NULL, CONC_SHM_RAW), 0);
    cr_assert_eq(conc_array_new(&a, 'i', 4, NULL, 0), 0);
    cr_assert_eq(conc_array_new(&ra, 'i', 4, NULL, CONC_SHM_RAW), 0);
    cr_assert_not_null(conc_value_get_lock(v));
    cr_assert_null(conc_value_get_lock(rv));
    cr_assert_not_null(conc_array_get_lock(a));
    cr_assert_null(conc_array_get_lock(ra));
    /* A Value's lock starts free and works like any RLock. */
    conc_rlock *l = conc_value_get_lock(v);
    cr_assert_eq(conc_rlock_acquire(l, 0), 0);
    cr_assert_eq(conc_rlock_acquire(l, 0), 0);
    cr_assert_eq(conc_rlock_depth(l), 2);
    cr_assert_eq(conc_rlock_release(l), 0);
    cr_assert_eq(conc_rlock_release(l), 0);
    cr_assert_eq(conc_rlock_release(l), -EPERM);
    conc_value_free(v);
    conc_value_free(rv);
    conc_array_free(a);
    conc_array_free(ra);
    END_CHECKS;
}

Test(value, lock_held_in_child_blocks_parent, .timeout = 30)
{
    BEGIN_CHECKS;
    conc_value *v;
    cr_assert_eq(conc_value_new(&v, 'i', NULL, 0), 0);
    /* An Event in a raw byte array's memory. */
    conc_array *evmem;
    cr_assert_eq(conc_array_new(&evmem, 'B', sizeof(conc_event), NULL, CONC_SHM_RAW), 0);
    conc_event *ready = conc_array_ptr(evmem);
    cr_assert_eq(conc_event_init(ready, CONC_SYNC_SHARED), 0);
    conc_rlock *l = conc_value_get_lock(v);
    pid_t parent = getpid(), me = gettid();
    pid_t pid = fork_child();
    if (pid == 0) {
        if (conc_rlock_acquire(l, 5.0) != 0)
            _exit(1);
        conc_event_set(ready);
        /* keep it until the parent sleeps on it */
        if (!await_task_blocked(parent, me, BLOCKED_GUARD))
            _exit(2);
        *(int *)conc_value_ptr(v) = 7;
        conc_rlock_release(l);
        _exit(0);
    }
    cr_assert_eq(conc_event_wait(ready, 10.0), 0);
    cr_assert_eq(conc_rlock_acquire(l, 0), -EAGAIN, "the child holds it");
    cr_assert_eq(conc_rlock_acquire(l, 10.0), 0);
    cr_assert_eq(*(int *)conc_value_ptr(v), 7, "acquired only after the child's update");
    cr_assert_eq(conc_rlock_release(l), 0);
    cr_assert_eq(reap(pid), 0);
    conc_array_free(evmem);
    conc_value_free(v);
    END_CHECKS;
}

/* ------------------------------------------------ type codes and sizes */

struct code {
    char c;
    size_t size;
};

static const struct code codes[] = {
    { 'c', sizeof(char) },      { 'b', sizeof(signed char) },   { 'B', sizeof(unsigned char) },
    { 'h', sizeof(short) },     { 'H', sizeof(unsigned short) }, { 'i', sizeof(int) },
    { 'I', sizeof(unsigned) },  { 'l', sizeof(long) },          { 'L', sizeof(unsigned long) },
    { 'q', sizeof(long long) }, { 'Q', sizeof(unsigned long long) },
    { 'f', sizeof(float) },     { 'd', sizeof(double) },
};

Test(value, all_type_codes_and_sizes, .timeout = 30)
{
    BEGIN_CHECKS;
    for (size_t k = 0; k < sizeof codes / sizeof codes[0]; k++) {
        unsigned char init[16];
        for (size_t i = 0; i < sizeof init; i++)
            init[i] = (unsigned char)(0x11 * (i + 1) + k);
        for (unsigned flags = 0; flags <= CONC_SHM_RAW; flags += CONC_SHM_RAW) {
            conc_value *v;
            cr_assert_eq(conc_value_new(&v, codes[k].c, init, flags), 0, "code %c", codes[k].c);
            cr_assert_eq(conc_value_typecode(v), codes[k].c);
            cr_assert_eq(conc_value_size(v), codes[k].size, "code %c", codes[k].c);
            cr_assert_eq((uintptr_t)conc_value_ptr(v) % 64, 0, "64-byte aligned");
            cr_assert_eq(memcmp(conc_value_ptr(v), init, codes[k].size), 0);
            cr_assert_eq(conc_value_get_lock(v) == NULL, flags == CONC_SHM_RAW);
            conc_value_free(v);

            conc_array *a;
            cr_assert_eq(conc_array_new(&a, codes[k].c, 3, NULL, flags), 0);
            cr_assert_eq(conc_array_typecode(a), codes[k].c);
            cr_assert_eq(conc_array_elem_size(a), codes[k].size);
            cr_assert_eq(conc_array_len(a), 3);
            cr_assert_eq((uintptr_t)conc_array_ptr(a) % 64, 0, "64-byte aligned");
            conc_array_free(a);
        }
    }
    /* NULL init: zero. */
    conc_value *z;
    cr_assert_eq(conc_value_new(&z, 'd', NULL, 0), 0);
    cr_assert_eq(*(double *)conc_value_ptr(z), 0.0);
    conc_value_free(z);
    END_CHECKS;
}

Test(value, bad_arguments, .timeout = 30)
{
    BEGIN_CHECKS;
    conc_value *v = (conc_value *)1;
    const char bad[] = { 'u', 'x', 'z', 'D', '\0', '?', 'C' };
    for (size_t i = 0; i < sizeof bad; i++) {
        cr_assert_eq(conc_value_new(&v, bad[i], NULL, 0), -EINVAL, "code %#x", bad[i]);
        cr_assert_null(v);
    }
    cr_assert_eq(conc_value_new(&v, 'i', NULL, 0x2), -EINVAL);
    cr_assert_eq(conc_value_new(&v, 'i', NULL, ~0u), -EINVAL);
    cr_assert_eq(conc_value_new(NULL, 'i', NULL, 0), -EINVAL);
    conc_array *a;
    cr_assert_eq(conc_array_new(&a, 'i', 0, NULL, 0), -EINVAL);
    cr_assert_eq(conc_array_new(&a, 'u', 4, NULL, 0), -EINVAL);
    cr_assert_eq(conc_array_new(&a, 'i', 4, NULL, 0x8), -EINVAL);
    cr_assert_eq(conc_array_new(NULL, 'i', 4, NULL, 0), -EINVAL);
    cr_assert_eq(conc_array_new(&a, 'd', SIZE_MAX / 2, NULL, 0), -EOVERFLOW);
    cr_assert_eq(conc_array_new(&a, 'c', SIZE_MAX, NULL, 0), -EOVERFLOW);
    /* NULL handles */
    cr_assert_null(conc_value_ptr(NULL));
    cr_assert_null(conc_value_get_lock(NULL));
    cr_assert_eq(conc_value_size(NULL), 0);
    cr_assert_eq(conc_value_typecode(NULL), 0);
    cr_assert_eq(conc_value_fd(NULL), -EINVAL);
    cr_assert_null(conc_array_ptr(NULL));
    cr_assert_eq(conc_array_len(NULL), 0);
    cr_assert_eq(conc_array_fd(NULL), -EINVAL);
    cr_assert_null(conc_array_get_lock(NULL));
    conc_value_free(NULL);
    conc_array_free(NULL);
    END_CHECKS;
}

Test(array, init_and_len, .timeout = 30)
{
    BEGIN_CHECKS;
    int init[10];
    for (int i = 0; i < 10; i++)
        init[i] = i * i - 3;
    conc_array *a;
    cr_assert_eq(conc_array_new(&a, 'i', 10, init, 0), 0);
    cr_assert_eq(conc_array_len(a), 10);
    cr_assert_eq(memcmp(conc_array_ptr(a), init, sizeof init), 0);
    conc_array_free(a);

    cr_assert_eq(conc_array_new(&a, 'H', 4097, NULL, 0), 0);
    cr_assert_eq(conc_array_len(a), 4097);
    unsigned short *h = conc_array_ptr(a);
    for (int i = 0; i < 4097; i++)
        cr_assert_eq(h[i], 0);
    h[4096] = 65535;                    /* the last element is writable */
    conc_array_free(a);

    /* A big array costs nothing until touched (memfd pages are lazy). */
    cr_assert_eq(conc_array_new(&a, 'c', (size_t)1 << 30, NULL, CONC_SHM_RAW), 0);
    cr_assert_eq(conc_array_len(a), (size_t)1 << 30);
    ((char *)conc_array_ptr(a))[((size_t)1 << 30) - 1] = 'z';
    conc_array_free(a);
    END_CHECKS;
}

Test(value, fd_is_cloexec_and_valid, .timeout = 30)
{
    BEGIN_CHECKS;
    conc_value *v;
    cr_assert_eq(conc_value_new(&v, 'i', NULL, 0), 0);
    int fd = conc_value_fd(v);
    cr_assert_geq(fd, 0);
    cr_assert(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    conc_value_free(v);
    cr_assert_eq(fcntl(fd, F_GETFD), -1, "free closes the memfd");
    END_CHECKS;
}

/* ------------------------------------------------------- attach by fd */

Test(value, attach_inherited_fd_in_child, .timeout = 30)
{
    BEGIN_CHECKS;
    long init = 11;
    conc_value *v;
    cr_assert_eq(conc_value_new(&v, 'l', &init, 0), 0);
    int fd = conc_value_fd(v);
    pid_t pid = fork_child();
    if (pid == 0) {
        conc_value *w;
        if (conc_value_attach(&w, fd) != 0)
            _exit(1);
        long *mine = conc_value_ptr(w), *inherited = conc_value_ptr(v);
        if (mine == inherited || *mine != 11)
            _exit(2);                   /* a new mapping of the same memory */
        if (conc_value_typecode(w) != 'l' || conc_value_size(w) != sizeof(long))
            _exit(3);
        *mine = 99;
        if (*inherited != 99)
            _exit(4);
        /* The same lock through both mappings. */
        conc_rlock *lw = conc_value_get_lock(w);
        if (!lw || conc_rlock_acquire(lw, 1.0) != 0)
            _exit(5);
        if (!conc_rlock_is_owned(conc_value_get_lock(v)))
            _exit(6);
        conc_rlock_release(lw);
        if (conc_value_fd(w) == fd)
            _exit(7);                   /* attach duplicated the fd */
        conc_value_free(w);
        if (fcntl(fd, F_GETFD) < 0)
            _exit(8);                   /* the caller's fd stays open */
        _exit(0);
    }
    cr_assert_eq(reap(pid), 0);
    cr_assert_eq(*(long *)conc_value_ptr(v), 99);
    conc_value_free(v);
    END_CHECKS;
}

Test(array, attach_inherited_fd_in_child, .timeout = 30)
{
    BEGIN_CHECKS;
    conc_array *a;
    cr_assert_eq(conc_array_new(&a, 'f', 100, NULL, CONC_SHM_RAW), 0);
    int fd = conc_array_fd(a);
    pid_t pid = fork_child();
    if (pid == 0) {
        conc_array *b;
        if (conc_array_attach(&b, fd) != 0)
            _exit(1);
        if (conc_array_len(b) != 100 || conc_array_typecode(b) != 'f' ||
            conc_array_get_lock(b) != NULL || conc_array_ptr(b) == conc_array_ptr(a))
            _exit(2);
        float *f = conc_array_ptr(b);
        for (int i = 0; i < 100; i++)
            f[i] = (float)i;
        conc_array_free(b);
        _exit(0);
    }
    cr_assert_eq(reap(pid), 0);
    float *f = conc_array_ptr(a);
    for (int i = 0; i < 100; i++)
        cr_assert_eq(f[i], (float)i);
    conc_array_free(a);
    END_CHECKS;
}

Test(value, attach_outlives_the_creator_handle, .timeout = 30)
{
    BEGIN_CHECKS;
    int init = 3;
    conc_value *v, *w;
    cr_assert_eq(conc_value_new(&v, 'i', &init, 0), 0);
    cr_assert_eq(conc_value_attach(&w, conc_value_fd(v)), 0);
    conc_value_free(v);
    cr_assert_eq(*(int *)conc_value_ptr(w), 3, "the memory lives while mapped");
    conc_value_free(w);
    END_CHECKS;
}

Test(value, attach_rejects_what_is_not_a_conc_value, .timeout = 30)
{
    BEGIN_CHECKS;
    conc_value *w = (conc_value *)1;
    conc_array *b = (conc_array *)1;

    /* A foreign memfd, empty, then with bytes, then sealed like conc's. */
    int fd = memfd_create("foreign", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    cr_assert_geq(fd, 0);
    cr_assert_eq(conc_value_attach(&w, fd), -EINVAL);
    cr_assert_null(w);
    cr_assert_eq(ftruncate(fd, 4096), 0);
    char junk[4096];
    memset(junk, 0x5a, sizeof junk);
    cr_assert_eq(pwrite(fd, junk, sizeof junk, 0), (ssize_t)sizeof junk);
    cr_assert_eq(conc_value_attach(&w, fd), -EINVAL);
    cr_assert_eq(conc_array_attach(&b, fd), -EINVAL);
    cr_assert_null(b);
    cr_assert_eq(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
    cr_assert_eq(conc_value_attach(&w, fd), -EINVAL);
    close(fd);

    /* A plain file. */
    FILE *tf = tmpfile();
    cr_assert_not_null(tf);
    cr_assert_eq(conc_value_attach(&w, fileno(tf)), -EINVAL);
    fclose(tf);

    /* A pipe, a bad fd, a closed fd. */
    int p[2];
    cr_assert_eq(pipe(p), 0);
    cr_assert_eq(conc_value_attach(&w, p[0]), -EINVAL);
    close(p[0]);
    close(p[1]);
    cr_assert_eq(conc_value_attach(&w, -1), -EINVAL);
    cr_assert_eq(conc_value_attach(&w, p[0]), -EBADF);
    cr_assert_eq(conc_value_attach(NULL, 0), -EINVAL);

    /* Value vs Array: the kind is checked. */
    conc_value *v;
    conc_array *a;
    cr_assert_eq(conc_value_new(&v, 'i', NULL, 0), 0);
    cr_assert_eq(conc_array_new(&a, 'i', 1, NULL, 0), 0);
    cr_assert_eq(conc_array_attach(&b, conc_value_fd(v)), -EINVAL);
    cr_assert_eq(conc_value_attach(&w, conc_array_fd(a)), -EINVAL);

    /* A damaged header: every field counts. */
    int vfd = conc_value_fd(v);
    unsigned char *hdr = mmap(NULL, 64, PROT_READ | PROT_WRITE, MAP_SHARED, vfd, 0);
    cr_assert_neq(hdr, MAP_FAILED);
    for (int off = 0; off < 40; off++) {
        unsigned char saved = hdr[off];
        hdr[off] ^= 0x40;
        cr_assert_eq(conc_value_attach(&w, vfd), -EINVAL, "byte %d changed", off);
        hdr[off] = saved;
    }
    cr_assert_eq(conc_value_attach(&w, vfd), 0, "intact again");
    conc_value_free(w);
    munmap(hdr, 64);

    /* A read-only descriptor of a real Value cannot be mapped for writing. */
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", vfd);
    int ro = open(path, O_RDONLY | O_CLOEXEC);
    cr_assert_geq(ro, 0);
    cr_assert_eq(conc_value_attach(&w, ro), -EINVAL);
    close(ro);

    conc_value_free(v);
    conc_array_free(a);
    END_CHECKS;
}

/* ------------------------------------------------------- SharedMemory */

Test(shm, create_attach_size_name, .timeout = 30)
{
    BEGIN_CHECKS;
    char n[128], slash[130];
    tname(n, sizeof n, "basic");
    snprintf(slash, sizeof slash, "/%s", n);
    conc_shm *s;
    cr_assert_eq(conc_shm_open(&s, slash, 10000, CONC_SHM_CREATE), 0);
    cr_assert_str_eq(conc_shm_name(s), n, "the name without '/'");
    cr_assert_eq(conc_shm_size(s), 10000);
    cr_assert(shm_exists(n));
    unsigned char *buf = conc_shm_buf(s);
    cr_assert_eq((uintptr_t)buf % 4096, 0);
    for (int i = 0; i < 10000; i++)
        cr_assert_eq(buf[i], 0, "zero-filled");
    memcpy(buf, "hello", 6);

    conc_shm *t;
    cr_assert_eq(conc_shm_open(&t, n, 0, 0), 0, "attach without '/'");
    cr_assert_eq(conc_shm_size(t), 10000, "size 0: the whole segment");
    cr_assert_str_eq(conc_shm_name(t), n);
    cr_assert_str_eq(conc_shm_buf(t), "hello");
    conc_shm *u;
    cr_assert_eq(conc_shm_open(&u, slash, 100, 0), 0);
    cr_assert_eq(conc_shm_size(u), 100);
    conc_shm_free(u);
    cr_assert_eq(conc_shm_open(&u, n, 10001, 0), -EINVAL, "larger than the segment");
    cr_assert_null(u);

    /* A child attaches by name and writes. */
    pid_t pid = fork_child();
    if (pid == 0) {
        conc_shm *c;
        if (conc_shm_open(&c, n, 0, 0) != 0)
            _exit(1);
        ((char *)conc_shm_buf(c))[9999] = 'Z';
        conc_shm_free(c);
        _exit(0);
    }
    cr_assert_eq(reap(pid), 0);
    cr_assert_eq(buf[9999], 'Z');
    cr_assert_eq(((unsigned char *)conc_shm_buf(t))[9999], 'Z');

    conc_shm_free(t);
    cr_assert(shm_exists(n));
    conc_shm_free(s);
    cr_assert_not(shm_exists(n), "the creator's close removes the name");
    cr_assert_eq(conc_shm_open(&t, n, 0, 0), -ENOENT);
    END_CHECKS;
}

Test(shm, create_twice_is_eexist, .timeout = 30)
{
    BEGIN_CHECKS;
    char n[128];
    tname(n, sizeof n, "twice");
    conc_shm *s, *t = (conc_shm *)1;
    cr_assert_eq(conc_shm_open(&s, n, 64, CONC_SHM_CREATE), 0);
    cr_assert_eq(conc_shm_open(&t, n, 64, CONC_SHM_CREATE), -EEXIST);
    cr_assert_null(t);
    cr_assert_eq(conc_shm_open(&t, n, 64, CONC_SHM_CREATE | CONC_SHM_KEEP), -EEXIST);
    conc_shm_free(s);
    cr_assert_not(shm_exists(n));
    END_CHECKS;
}

Test(shm, attach_missing_is_enoent, .timeout = 30)
{
    BEGIN_CHECKS;
    char n[128];
    conc_shm *s = (conc_shm *)1;
    cr_assert_eq(conc_shm_open(&s, tname(n, sizeof n, "missing"), 0, 0), -ENOENT);
    cr_assert_null(s);
    cr_assert_eq(conc_shm_unlink_name(n), -ENOENT);
    END_CHECKS;
}

Test(shm, mode_is_0600_whatever_the_umask, .timeout = 30)
{
    BEGIN_CHECKS;
    const mode_t masks[] = { 0, 022, 077, 0177, 0777 };
    for (size_t i = 0; i < sizeof masks / sizeof masks[0]; i++) {
        mode_t old = umask(masks[i]);
        char n[128], label[32];
        snprintf(label, sizeof label, "mode%zu", i);
        conc_shm *s;
        int r = conc_shm_open(&s, tname(n, sizeof n, label), 4096, CONC_SHM_CREATE);
        umask(old);
        cr_assert_eq(r, 0, "umask %o", (unsigned)masks[i]);
        struct stat st;
        cr_assert_eq(fstat(conc_shm_fd(s), &st), 0);
        cr_assert_eq(st.st_mode & 07777, 0600, "umask %o: mode %o", (unsigned)masks[i],
                     (unsigned)(st.st_mode & 07777));
        cr_assert_eq(st.st_size, 4096);
        cr_assert(fcntl(conc_shm_fd(s), F_GETFD) & FD_CLOEXEC);
        char path[200];
        snprintf(path, sizeof path, "/dev/shm/%s", n);
        cr_assert_eq(stat(path, &st), 0);
        cr_assert_eq(st.st_mode & 07777, 0600);
        conc_shm_free(s);
    }
    END_CHECKS;
}

Test(shm, keep_leaves_the_name, .timeout = 30)
{
    BEGIN_CHECKS;
    char n[128];
    tname(n, sizeof n, "keep");
    conc_shm *s;
    cr_assert_eq(conc_shm_open(&s, n, 128, CONC_SHM_CREATE | CONC_SHM_KEEP), 0);
    strcpy(conc_shm_buf(s), "kept");
    conc_shm_free(s);
    cr_assert(shm_exists(n));
    cr_assert_eq(conc_shm_open(&s, n, 0, 0), 0);
    cr_assert_str_eq(conc_shm_buf(s), "kept", "the contents survive without a mapping");
    conc_shm_free(s);
    cr_assert(shm_exists(n));
    cr_assert_eq(conc_shm_unlink_name(n), 0);
    cr_assert_not(shm_exists(n));
    cr_assert_eq(conc_shm_unlink_name(n), -ENOENT);
    END_CHECKS;
}

Test(shm, fork_child_close_keeps_the_name, .timeout = 30)
{
    BEGIN_CHECKS;
    char n[128];
    tname(n, sizeof n, "forkclose");
    conc_shm *s;
    cr_assert_eq(conc_shm_open(&s, n, 4096, CONC_SHM_CREATE), 0);
    pid_t pid = fork_child();
    if (pid == 0) {
        /* The inherited handle: the child is not the creator. */
        ((char *)conc_shm_buf(s))[0] = 'c';
        conc_shm_free(s);
        _exit(shm_exists(n) ? 0 : 1);
    }
    cr_assert_eq(reap(pid), 0);
    cr_assert(shm_exists(n), "a fork child's close does not unlink");
    cr_assert_eq(((char *)conc_shm_buf(s))[0], 'c');
    conc_shm_free(s);
    cr_assert_not(shm_exists(n));
    END_CHECKS;
}

Test(shm, unlink_keeps_mappings, .timeout = 30)
{
    BEGIN_CHECKS;
    char n[128];
    tname(n, sizeof n, "unlink");
    conc_shm *s, *t;
    cr_assert_eq(conc_shm_open(&s, n, 4096, CONC_SHM_CREATE), 0);
    cr_assert_eq(conc_shm_open(&t, n, 0, 0), 0);
    cr_assert_eq(conc_shm_unlink(t), 0, "any process (handle) may unlink");
    cr_assert_not(shm_exists(n));
    strcpy(conc_shm_buf(s), "still mapped");
    cr_assert_str_eq(conc_shm_buf(t), "still mapped");
    cr_assert_eq(conc_shm_unlink(t), -ENOENT);
    cr_assert_eq(conc_shm_unlink(s), -ENOENT);
    conc_shm_free(t);
    cr_assert_eq(conc_shm_open(&t, n, 0, 0), -ENOENT);
    conc_shm_free(s);
    END_CHECKS;
}

Test(shm, close_never_removes_a_newer_segment, .timeout = 30)
{
    BEGIN_CHECKS;
    char n[128];
    tname(n, sizeof n, "reuse");
    conc_shm *a, *b;
    cr_assert_eq(conc_shm_open(&a, n, 4096, CONC_SHM_CREATE), 0);
    cr_assert_eq(conc_shm_unlink_name(n), 0);
    cr_assert_eq(conc_shm_open(&b, n, 8192, CONC_SHM_CREATE), 0, "the name is free again");
    conc_shm_free(a);
    cr_assert(shm_exists(n), "a's close left b's segment alone");
    conc_shm_free(b);
    cr_assert_not(shm_exists(n));
    END_CHECKS;
}

Test(shm, generated_names, .timeout = 30)
{
    BEGIN_CHECKS;
    conc_shm *a, *b, *c;
    cr_assert_eq(conc_shm_open(&a, NULL, 100, CONC_SHM_CREATE), 0);
    long pid = -1;
    unsigned long k = 0;
    char tail;
    cr_assert_eq(sscanf(conc_shm_name(a), "conc-%ld-%lu%c", &pid, &k, &tail), 2,
                 "name %s", conc_shm_name(a));
    cr_assert_eq(pid, (long)getpid());
    cr_assert(shm_exists(conc_shm_name(a)));
    /* The next two numbers are taken: the generator skips them. */
    char n1[64], n2[64];
    snprintf(n1, sizeof n1, "conc-%ld-%lu", pid, k + 1);
    snprintf(n2, sizeof n2, "/conc-%ld-%lu", pid, k + 2);
    conc_shm *x1, *x2;
    cr_assert_eq(conc_shm_open(&x1, n1, 10, CONC_SHM_CREATE), 0);
    cr_assert_eq(conc_shm_open(&x2, n2, 10, CONC_SHM_CREATE), 0);
    cr_assert_eq(conc_shm_open(&b, NULL, 100, CONC_SHM_CREATE), 0);
    char want[64];
    snprintf(want, sizeof want, "conc-%ld-%lu", pid, k + 3);
    cr_assert_str_eq(conc_shm_name(b), want);
    cr_assert_eq(conc_shm_open(&c, NULL, 100, CONC_SHM_CREATE), 0);
    cr_assert_str_neq(conc_shm_name(c), conc_shm_name(b));
    conc_shm_free(x1);
    conc_shm_free(x2);
    conc_shm_free(a);
    conc_shm_free(b);
    conc_shm_free(c);
    END_CHECKS;
}

Test(shm, anonymous_segments, .timeout = 30)
{
    BEGIN_CHECKS;
    conc_shm *s;
    cr_assert_eq(conc_shm_open(&s, NULL, 5000, CONC_SHM_CREATE | CONC_SHM_ANON), 0);
    cr_assert_str_eq(conc_shm_name(s), "");
    cr_assert_eq(conc_shm_size(s), 5000);
    cr_assert_eq(conc_shm_unlink(s), -EINVAL, "nothing to unlink");
    int fd = conc_shm_fd(s);
    cr_assert_geq(fd, 0);
    char *buf = conc_shm_buf(s);
    pid_t pid = fork_child();
    if (pid == 0) {
        strcpy(buf, "from the child");
        conc_shm *t;
        if (conc_shm_attach_fd(&t, fd) != 0)
            _exit(1);
        if (conc_shm_size(t) != 5000 || conc_shm_buf(t) == (void *)buf ||
            strcmp(conc_shm_buf(t), "from the child") != 0)
            _exit(2);
        ((char *)conc_shm_buf(t))[4999] = 'E';
        conc_shm_free(t);
        _exit(0);
    }
    cr_assert_eq(reap(pid), 0);
    cr_assert_str_eq(buf, "from the child");
    cr_assert_eq(buf[4999], 'E');

    /* A process-shared Lock lives in it like in any shared memory. */
    conc_lock *l = conc_shm_buf(s);
    cr_assert_eq(conc_lock_init(l, CONC_SYNC_SHARED), 0);
    cr_assert_eq(conc_lock_acquire(l, 0), 0);
    cr_assert_eq(conc_lock_release(l), 0);

    conc_shm_free(s);
    conc_shm *t = (conc_shm *)1;
    cr_assert_eq(conc_shm_open(&t, NULL, 10, CONC_SHM_ANON), -EINVAL, "ANON needs CREATE");
    cr_assert_null(t);
    cr_assert_eq(conc_shm_open(&t, "x", 10, CONC_SHM_CREATE | CONC_SHM_ANON), -EINVAL);
    cr_assert_eq(conc_shm_open(&t, NULL, 10, CONC_SHM_CREATE | CONC_SHM_ANON | CONC_SHM_KEEP),
                 -EINVAL);
    cr_assert_eq(conc_shm_open(&t, NULL, 0, CONC_SHM_CREATE | CONC_SHM_ANON), -EINVAL);
    END_CHECKS;
}

Test(shm, attach_fd_of_a_named_segment, .timeout = 30)
{
    BEGIN_CHECKS;
    char n[128];
    conc_shm *s;
    cr_assert_eq(conc_shm_open(&s, tname(n, sizeof n, "byfd"), 3000, CONC_SHM_CREATE), 0);
    int fd = conc_shm_fd(s);
    pid_t pid = fork_child();
    if (pid == 0) {
        conc_shm *t;
        if (conc_shm_attach_fd(&t, fd) != 0)
            _exit(1);
        if (conc_shm_size(t) != 3000 || strcmp(conc_shm_name(t), "") != 0)
            _exit(2);
        ((char *)conc_shm_buf(t))[0] = 'F';
        conc_shm_free(t);
        _exit(shm_exists(n) ? 0 : 3);
    }
    cr_assert_eq(reap(pid), 0);
    cr_assert_eq(((char *)conc_shm_buf(s))[0], 'F');
    conc_shm *t = (conc_shm *)1;
    cr_assert_eq(conc_shm_attach_fd(&t, -1), -EINVAL);
    cr_assert_null(t);
    cr_assert_eq(conc_shm_attach_fd(NULL, fd), -EINVAL);
    int p[2];
    cr_assert_eq(pipe(p), 0);
    cr_assert_eq(conc_shm_attach_fd(&t, p[0]), -EINVAL);
    close(p[0]);
    close(p[1]);
    cr_assert_eq(conc_shm_attach_fd(&t, p[0]), -EBADF);
    int empty = memfd_create("empty", MFD_CLOEXEC);
    cr_assert_eq(conc_shm_attach_fd(&t, empty), -EINVAL);
    close(empty);
    conc_shm_free(s);
    END_CHECKS;
}

Test(shm, bad_names_sizes_flags, .timeout = 30)
{
    BEGIN_CHECKS;
    conc_shm *s = (conc_shm *)1;
    const char *bad[] = { "", "/", "a/b", "/a/b", "//a", "a/", ".", "/..", ".." };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_assert_eq(conc_shm_open(&s, bad[i], 64, CONC_SHM_CREATE), -EINVAL, "'%s'", bad[i]);
        cr_assert_null(s);
        cr_assert_eq(conc_shm_open(&s, bad[i], 0, 0), -EINVAL, "'%s'", bad[i]);
        cr_assert_eq(conc_shm_unlink_name(bad[i]), -EINVAL, "'%s'", bad[i]);
    }
    /* Length: CONC_SHM_NAME_MAX bytes is fine, one more is not. */
    char longest[CONC_SHM_NAME_MAX + 3];
    int pre = snprintf(longest, sizeof longest, "/conctest-%ld-", (long)getpid());
    memset(longest + pre, 'x', sizeof longest - pre);
    longest[CONC_SHM_NAME_MAX + 1] = '\0';      /* '/' + CONC_SHM_NAME_MAX bytes */
    cr_assert_eq(conc_shm_open(&s, longest, 64, CONC_SHM_CREATE), 0);
    cr_assert_eq(strlen(conc_shm_name(s)), CONC_SHM_NAME_MAX);
    conc_shm_free(s);
    longest[CONC_SHM_NAME_MAX + 1] = 'x';
    longest[CONC_SHM_NAME_MAX + 2] = '\0';
    cr_assert_eq(conc_shm_open(&s, longest, 64, CONC_SHM_CREATE), -EINVAL);
    cr_assert_eq(conc_shm_unlink_name(longest), -EINVAL);

    char n[128];
    tname(n, sizeof n, "sizes");
    cr_assert_eq(conc_shm_open(&s, n, 0, CONC_SHM_CREATE), -EINVAL, "size 0");
    cr_assert_eq(conc_shm_open(&s, n, SIZE_MAX, CONC_SHM_CREATE), -EINVAL);
    cr_assert_eq(conc_shm_open(&s, n, (size_t)INT64_MAX + 1, CONC_SHM_CREATE), -EINVAL);
    cr_assert_eq(conc_shm_open(&s, NULL, 64, 0), -EINVAL, "attach needs a name");
    cr_assert_eq(conc_shm_open(&s, n, 64, 0x80), -EINVAL, "unknown flag");
    cr_assert_eq(conc_shm_open(&s, n, 0, CONC_SHM_KEEP), -EINVAL, "KEEP without CREATE");
    cr_assert_eq(conc_shm_open(NULL, n, 64, CONC_SHM_CREATE), -EINVAL);
    cr_assert_not(shm_exists(n), "nothing was created by the failures");

    /* An empty file under the name is not a segment to attach. */
    char path[200];
    snprintf(path, sizeof path, "/dev/shm/%s", n);
    int fd = open(path, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
    cr_assert_geq(fd, 0);
    close(fd);
    cr_assert_eq(conc_shm_open(&s, n, 0, 0), -EINVAL);
    cr_assert_eq(conc_shm_unlink_name(n), 0);

    /* NULL handles */
    conc_shm_free(NULL);
    cr_assert_eq(conc_shm_unlink(NULL), -EINVAL);
    cr_assert_null(conc_shm_buf(NULL));
    cr_assert_eq(conc_shm_size(NULL), 0);
    cr_assert_null(conc_shm_name(NULL));
    cr_assert_eq(conc_shm_fd(NULL), -EINVAL);
    cr_assert_eq(conc_shm_unlink_name(NULL), -EINVAL);
    END_CHECKS;
}

/* ------------------------------------------------- crashes and cleanup */

/* A child that ends at once: its pid is dead (and reaped) afterwards. */
static pid_t dead_pid(void)
{
    pid_t pid = fork_child();
    if (pid == 0)
        _exit(0);
    cr_assert_eq(reap(pid), 0);
    cr_assert_eq(kill(pid, 0), -1);
    return pid;
}

Test(shm, cleanup_removes_segments_of_dead_pids, .timeout = 30)
{
    BEGIN_CHECKS;
    pid_t dead = dead_pid();
    char gone[64], live[64], other[64], mine[64];
    snprintf(gone, sizeof gone, "conc-%ld-1", (long)dead);
    snprintf(live, sizeof live, "conc-%ld-7", (long)getppid());     /* runs */
    snprintf(other, sizeof other, "conc-%ld-1x", (long)dead);       /* not conc's pattern */
    char zero[64];
    snprintf(zero, sizeof zero, "conc-0%ld-1", (long)dead);         /* leading zero */
    snprintf(mine, sizeof mine, "conc-%ld-777777", (long)getpid()); /* the caller's */
    conc_shm *s[5];
    const char *names[5] = { gone, live, other, mine, zero };
    for (int i = 0; i < 5; i++)
        cr_assert_eq(conc_shm_open(&s[i], names[i], 64, CONC_SHM_CREATE | CONC_SHM_KEEP), 0,
                     "%s", names[i]);
    int r = conc_shm_cleanup();
    /* (A test running in parallel may have removed it first.) */
    cr_assert_geq(r, 0);
    cr_assert_not(shm_exists(gone), "the dead pid's segment is removed");
    cr_assert(shm_exists(live), "a running pid keeps its segment");
    cr_assert(shm_exists(other), "other names are not touched");
    cr_assert(shm_exists(mine), "the caller's own segments stay");
    cr_assert(shm_exists(zero), "only names as conc generates them");
    for (int i = 0; i < 5; i++)
        conc_shm_free(s[i]);
    cr_assert_eq(conc_shm_unlink_name(zero), 0);
    cr_assert_eq(conc_shm_unlink_name(live), 0);
    cr_assert_eq(conc_shm_unlink_name(other), 0);
    cr_assert_eq(conc_shm_unlink_name(mine), 0);
    cr_assert_eq(conc_shm_unlink_name(gone), -ENOENT);
    END_CHECKS;
}

/* Reads a line (the name of a segment) from fd, with a hang guard. */
static void read_name(int fd, char *name, size_t cap)
{
    size_t len = 0;
    for (;;) {
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        cr_assert_eq(poll(&pfd, 1, 20000), 1, "no name from the child");
        char c;
        cr_assert_eq(read(fd, &c, 1), 1, "the child sent no name");
        if (c == '\n')
            break;
        cr_assert_lt(len + 1, cap);
        name[len++] = c;
    }
    name[len] = '\0';
}

Test(shm, crash_leaves_a_name_that_cleanup_removes, .timeout = 30)
{
    BEGIN_CHECKS;
    int p[2];
    cr_assert_eq(pipe(p), 0);
    pid_t pid = fork_child();
    if (pid == 0) {
        close(p[0]);
        conc_shm *s;
        if (conc_shm_open(&s, NULL, 4096, CONC_SHM_CREATE) != 0)
            _exit(1);
        dprintf(p[1], "%s\n", conc_shm_name(s));
        raise(SIGKILL);                 /* crash: nothing runs */
        _exit(2);
    }
    close(p[1]);
    char name[128];
    read_name(p[0], name, sizeof name);
    close(p[0]);
    char want[64];
    snprintf(want, sizeof want, "conc-%ld-", (long)pid);
    cr_assert_eq(strncmp(name, want, strlen(want)), 0, "name %s", name);
    /* Dead but not reaped: the zombie's pid still exists, so no cleanup
     * (here or in a parallel test) may take the segment yet. */
    siginfo_t si;
    cr_assert_eq(waitid(P_PID, (id_t)pid, &si, WEXITED | WNOWAIT), 0);
    cr_assert_eq(conc_shm_cleanup() >= 0, true);
    cr_assert(shm_exists(name), "the crash left the name");
    cr_assert_eq(reap(pid), -SIGKILL);
    cr_assert_geq(conc_shm_cleanup(), 0);
    cr_assert_not(shm_exists(name), "cleanup removed it");
    END_CHECKS;
}

/*
 * The normal-exit scenario runs in a fresh process: the test executes this
 * binary again with CONC_TEST_SHM_CHILD=<kind>:<fd>; the constructor below
 * creates a segment with a generated name, writes the name to <fd> and calls
 * exit(0) before Criterion's main (whose exit handlers must not run in a
 * plain fork of the test).
 */
#define SHM_CHILD_ENV "CONC_TEST_SHM_CHILD"

static conc_shm *child_segments[2];

__attribute__((constructor)) static void shm_child_main(void)
{
    const char *spec = getenv(SHM_CHILD_ENV);
    if (!spec)
        return;
    char kind[16];
    int fd;
    if (sscanf(spec, "%15[^:]:%d", kind, &fd) != 2)
        _exit(7);
    unsigned flags = CONC_SHM_CREATE | (strcmp(kind, "keep") == 0 ? CONC_SHM_KEEP : 0);
    if (conc_shm_open(&child_segments[0], NULL, 4096, flags) != 0)
        _exit(8);
    /* A second one that is closed explicitly before exit. */
    if (conc_shm_open(&child_segments[1], NULL, 4096, CONC_SHM_CREATE) != 0)
        _exit(9);
    conc_shm_free(child_segments[1]);
    child_segments[1] = NULL;
    if (dprintf(fd, "%s\n", conc_shm_name(child_segments[0])) < 0)
        _exit(10);
    exit(0);                            /* without conc_shm_free */
}

extern char **environ;

static pid_t spawn_child(int fds[2], const char *kind)
{
    cr_assert_eq(pipe(fds), 0);
    size_t n = 0;
    while (environ[n])
        n++;
    char **envp = calloc(n + 2, sizeof *envp);
    cr_assert_not_null(envp);
    static char spec[64];
    snprintf(spec, sizeof spec, SHM_CHILD_ENV "=%s:%d", kind, fds[1]);
    envp[0] = spec;
    memcpy(envp + 1, environ, n * sizeof *envp);
    char *argv[] = { "test_shm-exit-child", NULL };
    pid_t pid = fork_child();
    if (pid == 0) {
        close(fds[0]);
        execve("/proc/self/exe", argv, envp);
        _exit(127);
    }
    free(envp);
    close(fds[1]);
    return pid;
}

Test(shm, normal_exit_removes_unclosed_names, .timeout = 30)
{
    BEGIN_CHECKS;
    int fds[2];
    pid_t pid = spawn_child(fds, "plain");
    char name[128];
    read_name(fds[0], name, sizeof name);
    close(fds[0]);
    cr_assert_eq(reap(pid), 0);
    char want[64];
    snprintf(want, sizeof want, "conc-%ld-", (long)pid);
    cr_assert_eq(strncmp(name, want, strlen(want)), 0, "name %s", name);
    cr_assert_not(shm_exists(name), "exit() removed the creator's name");
    END_CHECKS;
}

Test(shm, normal_exit_keeps_keep_names, .timeout = 30)
{
    BEGIN_CHECKS;
    int fds[2];
    pid_t pid = spawn_child(fds, "keep");
    char name[128];
    read_name(fds[0], name, sizeof name);
    close(fds[0]);
    cr_assert_eq(reap(pid), 0);
    cr_assert(shm_exists(name), "KEEP survives the creator's exit");
    conc_shm *s;
    cr_assert_eq(conc_shm_open(&s, name, 0, 0), 0);
    cr_assert_eq(conc_shm_size(s), 4096);
    cr_assert_eq(conc_shm_unlink(s), 0);
    conc_shm_free(s);
    cr_assert_not(shm_exists(name));
    END_CHECKS;
}
