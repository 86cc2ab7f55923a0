/*
 * sockcall.h - recv and send that never block, made as bare system calls
 * (internal).
 *
 * Once a process has a second thread, glibc's recv and send (they may
 * block, so they are cancellation points) switch the calling thread to
 * asynchronous cancellation around the system call and back: two atomic
 * compare-and-swaps on the thread's cancel state per call, about 20 ns
 * each time (measured: recvfrom with MSG_DONTWAIT on an empty socket,
 * 290 ns through libc against 270 ns bare, in a process with two
 * threads).  A call with MSG_DONTWAIT cannot block, so it has no use for
 * being a cancellation point; these make it directly.  An echo request
 * served by a readiness loop is one recv and one send, so that is about
 * 1% of the server's CPU per request.
 *
 * Under the sanitizers they stay libc's: ASan's interceptors check the
 * buffer, TSan's see the ordering a socket gives (a send happens before
 * the recv that takes its bytes).  So do they where the kernel has no
 * recvfrom and sendto system calls of their own (old 32-bit x86 has only
 * socketcall).
 *
 * Both return what the call returns; -1 with errno set on failure.
 */
#ifndef CONC_SYS_SOCKCALL_H
#define CONC_SYS_SOCKCALL_H

#include <stddef.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include "san.h"

#if CONC_SAN_ADDRESS || CONC_SAN_THREAD || !defined(SYS_recvfrom) || !defined(SYS_sendto)
#define CONC__SOCKCALL_LIBC 1
#else
#define CONC__SOCKCALL_LIBC 0
#endif

/* recv(fd, buf, len, flags | MSG_DONTWAIT) */
static inline ssize_t conc__recv_nb(int fd, void *buf, size_t len, int flags)
{
#if CONC__SOCKCALL_LIBC
    return recv(fd, buf, len, flags | MSG_DONTWAIT);
#else
    return syscall(SYS_recvfrom, fd, buf, len, flags | MSG_DONTWAIT, NULL, NULL);
#endif
}

/* send(fd, buf, len, flags | MSG_DONTWAIT) */
static inline ssize_t conc__send_nb(int fd, const void *buf, size_t len, int flags)
{
#if CONC__SOCKCALL_LIBC
    return send(fd, buf, len, flags | MSG_DONTWAIT);
#else
    return syscall(SYS_sendto, fd, buf, len, flags | MSG_DONTWAIT, NULL, 0);
#endif
}

#endif
