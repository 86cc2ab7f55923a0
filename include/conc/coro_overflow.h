/*
 * conc/coro_overflow.h - the coroutine stack-overflow reporter, a
 * process-wide effect of coroutines (docs/building.md, "Process-wide
 * effects").
 *
 * When a thread creates its first coroutine, conc installs (once per
 * process) a SIGSEGV handler, and gives that thread an alternate signal
 * stack (64 KiB, or 4 * SIGSTKSZ if larger) unless it already has one.  A
 * fault of a running coroutine in the guard zone below its stack is then
 * reported on stderr ("conc: stack overflow in coroutine ...") before the
 * process aborts; any other SIGSEGV goes to the handler installed before
 * conc's, or gets the default action.  Nothing is installed in a program
 * that never creates a coroutine.
 *
 * Overflows of stacks past the guard budget (canary zones, see
 * conc_coro_guard_limit) are found by a check at each switch; that check
 * needs no handler and stays on whatever this setting says.
 */
#ifndef CONC_CORO_OVERFLOW_H
#define CONC_CORO_OVERFLOW_H

#include <stdbool.h>
#include "conc/errors.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * conc_coro_set_overflow_report - turn the overflow reporter on (the
 * default) or off.  Off: conc installs no SIGSEGV handler and no alternate
 * signal stack, and an overflow into a guard zone is a plain SIGSEGV (the
 * program's own handler, or the default action: a core dump).  Call it
 * before the first coroutine is created to keep the handler out; turning
 * it on later is allowed at any time and takes effect at each thread's next
 * conc_coro_new (a thread that created coroutines while it was off gets its
 * signal stack then).  No Python equivalent.
 * Returns 0; -EBUSY when `on` is false and the handler is installed
 * already (a coroutine was created with the reporter on: a handler other
 * code may have chained to cannot be taken back).
 */
CONC_API int conc_coro_set_overflow_report(bool on);

#ifdef __cplusplus
}
#endif
#endif /* CONC_CORO_OVERFLOW_H */
