/*
 * sockcall_wrap.h - routes the library's bare recv and send system calls
 * through the test program's own recv and send.
 *
 * The socket layer makes its recv and send that cannot block as bare
 * recvfrom and sendto system calls through syscall(2)
 * (src/sys/sockcall.h), not through libc's recv and send.  A test that
 * wraps recv or send to count or inject (defining them, with the next
 * definition found by dlsym(RTLD_NEXT)) includes this header once: its
 * syscall sends those two calls to recv and send, which are the test's,
 * and every other system call on to libc's syscall.  The result and errno
 * are those of the call either way.
 */
#ifndef CONC_TEST_SOCKCALL_WRAP_H
#define CONC_TEST_SOCKCALL_WRAP_H

#include <dlfcn.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>

long syscall(long nr, ...)
{
    va_list ap;
    va_start(ap, nr);
    long a[6];
    for (int i = 0; i < 6; i++)
        a[i] = va_arg(ap, long);
    va_end(ap);
    /* recv and send are recvfrom and sendto with no address */
    if (nr == SYS_recvfrom && a[4] == 0 && a[5] == 0)
        return (long)recv((int)a[0], (void *)a[1], (size_t)a[2], (int)a[3]);
    if (nr == SYS_sendto && a[4] == 0 && a[5] == 0)
        return (long)send((int)a[0], (const void *)a[1], (size_t)a[2], (int)a[3]);
    static long (*next)(long, ...);
    long (*f)(long, ...) = __atomic_load_n(&next, __ATOMIC_ACQUIRE);
    if (!f) {
        void *p = dlsym(RTLD_NEXT, "syscall");
        if (!p)
            abort();
        memcpy(&f, &p, sizeof f);
        __atomic_store_n(&next, f, __ATOMIC_RELEASE);
    }
    return f(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
}

#endif
