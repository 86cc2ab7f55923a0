/*
 * Criterion + ThreadSanitizer shim (Criterion issue #274).
 *
 * Criterion's BoxFort places its inheritable arena at a random address in
 * [0x200000000000, 0x7f0000000000): it probes candidates with mincore() and
 * maps the first free one with mmap(MAP_SHARED | MAP_FIXED).  Under TSan
 * nearly all of that range is reserved shadow/meta memory, so every probe
 * looks taken (and TSan's mmap refuses non-application addresses): every
 * Criterion binary aborts with "Could not initialize inheritable arena".
 *
 * This interposer answers "free" for BoxFort's probes and places the arena
 * itself, without MAP_FIXED, in a free spot of TSan's application range
 * 0x558000000000-0x568000000000, which lies inside BoxFort's range.
 * Link it into the test binaries of a TSan build only.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/types.h>

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

#define BXF_LO 0x200000000000u
#define BXF_HI 0x7f0000000000u

static int in_boxfort_range(const void *addr)
{
    uintptr_t a = (uintptr_t)addr;
    return a >= BXF_LO && a < BXF_HI;
}

int mincore(void *addr, size_t len, unsigned char *vec)
{
    typedef int (*fn)(void *, size_t, unsigned char *);
    static fn next;
    if (in_boxfort_range(addr)) {
        errno = ENOMEM; /* "not mapped": let BoxFort pick it, mmap below relocates */
        return -1;
    }
    if (!next)
        next = (fn)dlsym(RTLD_NEXT, "mincore");
    return next(addr, len, vec);
}

typedef void *(*mmap_fn)(void *, size_t, int, int, int, off_t);

static void *place(mmap_fn next, void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    static unsigned seed = 0x9e3779b9u;
    if (!(flags & MAP_FIXED) || !(flags & MAP_SHARED) || fd < 0 || !in_boxfort_range(addr))
        return next(addr, len, prot, flags, fd, off);
    /* BoxFort's arena: never clobber; find a free spot TSan accepts. */
    seed ^= (unsigned)(uintptr_t)addr >> 12;
    for (int i = 0; i < 1024; i++) {
        seed = seed * 1103515245u + 12345u;
        uintptr_t cand = 0x558000000000u + (uintptr_t)((seed >> 8) & 0xfff) * (1u << 24);
        void *q = next((void *)cand, len, prot, (flags & ~MAP_FIXED) | MAP_FIXED_NOREPLACE,
                       fd, off);
        if (q == (void *)cand)
            return q;
        if (q != MAP_FAILED)
            munmap(q, len);
    }
    errno = ENOMEM;
    return MAP_FAILED;
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    static mmap_fn next;
    if (!next)
        next = (mmap_fn)dlsym(RTLD_NEXT, "mmap");
    return place(next, addr, len, prot, flags, fd, off);
}

void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    static mmap_fn next;
    if (!next)
        next = (mmap_fn)dlsym(RTLD_NEXT, "mmap64");
    return place(next, addr, len, prot, flags, fd, off);
}
