/* memfd.h - thin wrappers over memfd_create and file seals. */
#ifndef CONC_SYS_MEMFD_H
#define CONC_SYS_MEMFD_H

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef MFD_CLOEXEC
#define MFD_CLOEXEC 0x0001u
#endif
#ifndef MFD_ALLOW_SEALING
#define MFD_ALLOW_SEALING 0x0002u
#endif
#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008u
#endif
#ifndef F_ADD_SEALS
#define F_ADD_SEALS   (1024 + 9)
#define F_GET_SEALS   (1024 + 10)
#define F_SEAL_SEAL   0x0001
#define F_SEAL_SHRINK 0x0002
#define F_SEAL_GROW   0x0004
#endif

/* The seals a conc memfd carries once its size is set: it can neither
 * shrink (which would turn a peer's access into SIGBUS) nor grow, and the
 * seals cannot change any more. */
#define CONC__MEMFD_SEALS (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)

/* memfd_create(name, flags) through the system call (any C library).
 * Returns the descriptor or -errno. */
static inline int conc__memfd_create(const char *name, unsigned flags)
{
    long r = syscall(SYS_memfd_create, name, flags);
    return r >= 0 ? (int)r : -errno;
}

/*
 * A memfd for data, never for code: MFD_NOEXEC_SEAL (Linux 6.3) makes it
 * non-executable for good, and kernels that know the flag log a warning for
 * a memfd created without it (or MFD_EXEC).  Older kernels refuse the flag
 * with EINVAL: then the memfd is made without it, and the flag is not tried
 * again.  MFD_NOEXEC_SEAL implies MFD_ALLOW_SEALING.
 */
static inline int conc__memfd_data(const char *name, unsigned flags)
{
    static int no_noexec;   /* the kernel refused MFD_NOEXEC_SEAL */
    if (!__atomic_load_n(&no_noexec, __ATOMIC_RELAXED)) {
        int fd = conc__memfd_create(name, flags | MFD_NOEXEC_SEAL);
        if (fd != -EINVAL)
            return fd;
        __atomic_store_n(&no_noexec, 1, __ATOMIC_RELAXED);
    }
    return conc__memfd_create(name, flags);
}

/*
 * A close-on-exec, sealable memfd of `size` bytes (zero-filled), sealed
 * against resizing.  Returns the descriptor, or -errno: -EMFILE / -ENFILE,
 * -ENOMEM (no memory for the size), -EOVERFLOW (size beyond off_t).
 */
static inline int conc__memfd_sized(const char *name, unsigned long long size)
{
    if (size > (unsigned long long)INT64_MAX)
        return -EOVERFLOW;
    int fd = conc__memfd_data(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        return fd;
    if (ftruncate(fd, (off_t)size) != 0) {
        int e = errno;
        close(fd);
        return e == EFBIG || e == EINVAL ? -EOVERFLOW : e == ENOSPC ? -ENOMEM : -e;
    }
    if (fcntl(fd, F_ADD_SEALS, CONC__MEMFD_SEALS) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

/* True when fd is a memfd sealed against shrinking and growing. */
static inline int conc__memfd_size_sealed(int fd)
{
    int s = fcntl(fd, F_GET_SEALS);
    return s >= 0 && (s & (F_SEAL_SHRINK | F_SEAL_GROW)) == (F_SEAL_SHRINK | F_SEAL_GROW);
}

#endif
