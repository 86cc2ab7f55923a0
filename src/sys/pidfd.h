/* pidfd.h - thin wrappers over pidfd_open, pidfd_send_signal, waitid(P_PIDFD),
 * PIDFD_GET_INFO and clone3, through the system calls (any C library). */
#ifndef CONC_SYS_PIDFD_H
#define CONC_SYS_PIDFD_H

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>             /* WEXITED, WNOHANG (not <sys/wait.h>: conc's
                                   src/sys/wait.h shadows it here) */
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#define CONC__P_PID 1
#define CONC__P_PIDFD 3
#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif

/* pidfd_open(pid, 0): a close-on-exec descriptor that refers to process pid
 * and becomes readable when it ends.  Returns the fd or -errno. */
static inline int conc__pidfd_open(pid_t pid)
{
    long r = syscall(SYS_pidfd_open, pid, 0);
    return r >= 0 ? (int)r : -errno;
}

/* Sends sig to the process of pidfd (never to a recycled pid).  Returns 0,
 * -ESRCH when it has ended, or -errno. */
static inline int conc__pidfd_send_signal(int pidfd, int sig)
{
    long r = syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
    return r == 0 ? 0 : -errno;
}

/* waitid(2) through the system call. */
static inline int conc__waitid(int idtype, int id, siginfo_t *si, int options)
{
    return (int)syscall(SYS_waitid, idtype, id, si, options, NULL);
}

/*
 * Reaps the child of pidfd (pid is its pid, for kernels before 5.4 that lack
 * P_PIDFD: safe because only the parent reaps, and conc is the only reaper of
 * its children) with waitid(WEXITED | flags).  Returns 1 and stores the
 * Python-style exit code (status, or minus the signal) when it was reaped, 0
 * when it still runs (WNOHANG), or -errno (-ECHILD: reaped by somebody else).
 */
static inline int conc__reap(int pidfd, pid_t pid, int flags, int *code)
{
    static int no_p_pidfd;
    siginfo_t si;
    for (;;) {
        memset(&si, 0, sizeof si);
        int r;
        if (!__atomic_load_n(&no_p_pidfd, __ATOMIC_RELAXED)) {
            r = conc__waitid(CONC__P_PIDFD, pidfd, &si, WEXITED | flags);
            if (r != 0 && errno == EINVAL) {
                __atomic_store_n(&no_p_pidfd, 1, __ATOMIC_RELAXED);
                continue;
            }
        } else {
            r = conc__waitid(CONC__P_PID, pid, &si, WEXITED | flags);
        }
        if (r != 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        break;
    }
    if (si.si_pid == 0)
        return 0;
    *code = si.si_code == CLD_EXITED ? si.si_status : -si.si_status;
    return 1;
}

/* PIDFD_GET_INFO (Linux 6.15): among others, the wait status of a process
 * that ended and was reaped, also by somebody else (SIGCHLD ignored, a
 * waitpid(-1) elsewhere), as long as a pidfd of it was open at the time. */
struct conc__pidfd_info {
    uint64_t mask;
    uint64_t cgroupid;
    uint32_t pid, tgid, ppid, ruid, rgid, euid, egid, suid, sgid, fsuid, fsgid;
    int32_t exit_code;
};
#define CONC__PIDFD_GET_INFO _IOWR(0xFF, 11, struct conc__pidfd_info)
#define CONC__PIDFD_INFO_EXIT (1ull << 3)

/* Stores the Python-style exit code of the ended process of pidfd after
 * somebody else reaped it.  Returns 0, or -ENOSYS when the kernel cannot
 * tell (older than 6.15).  The reaper marks the child dead before it
 * records the status, so a waitid can fail with ECHILD a moment before the
 * status is there (even after the pidfd reports POLLHUP, and the request
 * may fail with ESRCH meanwhile): this waits for it, yielding, then in 1 ms
 * steps (a hang guard of 5 s; 20 ms of ESRCH). */
static inline int conc__pidfd_exit_code(int pidfd, int *code)
{
    struct conc__pidfd_info in;
    int esrch = 0;
    for (int i = 0; i < 5100; i++) {
        memset(&in, 0, sizeof in);
        in.mask = CONC__PIDFD_INFO_EXIT;
        if (ioctl(pidfd, CONC__PIDFD_GET_INFO, &in) != 0) {
            /* ESRCH: half released, look again; but Linux 6.13 and 6.14
             * answer a released process so for good. */
            if (errno != ESRCH || ++esrch > 120)
                return -ENOSYS;
            in.mask = 0;
        }
        if (in.mask & CONC__PIDFD_INFO_EXIT) {
            int st = in.exit_code;
            if (WIFEXITED(st))
                *code = WEXITSTATUS(st);
            else if (WIFSIGNALED(st))
                *code = -WTERMSIG(st);
            else
                return -ENOSYS;
            return 0;
        }
        if (i < 100) {
            sched_yield();
        } else {
            struct timespec ms = { 0, 1000000 };
            nanosleep(&ms, NULL);
        }
    }
    return -ENOSYS;
}

/* Reaps child pid, waiting for it (used before a pidfd exists). */
static inline void conc__reap_pid(pid_t pid)
{
    siginfo_t si;
    while (conc__waitid(CONC__P_PID, pid, &si, WEXITED) != 0 && errno == EINTR)
        ;
}

/* The kernel's struct clone_args (version 0, 64 bytes). */
struct conc__clone_args {
    uint64_t flags;
    uint64_t pidfd;
    uint64_t child_tid;
    uint64_t parent_tid;
    uint64_t exit_signal;
    uint64_t stack;
    uint64_t stack_size;
    uint64_t tls;
};

/* clone3 without a new stack: returns 0 in the child, the child's pid in the
 * caller, or -errno.  The child is not known to the C library (no fork
 * handlers ran): the caller must restore what it needs. */
static inline pid_t conc__clone3(struct conc__clone_args *args)
{
    long r = syscall(SYS_clone3, args, sizeof *args);
    return r >= 0 ? (pid_t)r : -errno;
}

#endif
