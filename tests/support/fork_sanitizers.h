/*
 * fork_sanitizers.h - sanitizer settings for test files whose tests fork.
 * Include it once, in the test file itself (it defines the hooks the
 * sanitizers look up).
 *
 * LeakSanitizer (ASan builds) in a forked child sees only the thread that
 * forked: what the parent's other threads referenced (their stacks, their
 * thread-specific data, such as libcrypto's per-thread state that Criterion's
 * main thread holds) looks leaked there.  So leaks are checked in the test
 * process itself, not in its children.
 *
 * ThreadSanitizer (TSan builds) sleeps 1 s at exit in a process it believes
 * has other threads, which every fork child of a threaded parent believes:
 * that sleep is skipped (it only costs time).
 */
#ifndef CONC_TEST_FORK_SANITIZERS_H
#define CONC_TEST_FORK_SANITIZERS_H

#include <sys/types.h>
#include <unistd.h>

static pid_t test_pid;

__attribute__((constructor)) static void remember_test_pid(void)
{
    test_pid = getpid();
}

int __lsan_is_turned_off(void);
int __lsan_is_turned_off(void)
{
    return getpid() != test_pid;
}

/* A file whose forked children start threads of their own (a started
 * manager's server) defines CONC_TEST_TSAN_OPTIONS before the include, with
 * die_after_fork=0 added. */
#ifndef CONC_TEST_TSAN_OPTIONS
#define CONC_TEST_TSAN_OPTIONS "atexit_sleep_ms=0"
#endif

const char *__tsan_default_options(void);
const char *__tsan_default_options(void)
{
    return CONC_TEST_TSAN_OPTIONS;
}

#endif
