/*
 * conc/coro.h - stackful coroutines with greenlet's semantics: create,
 * switch with a value, return to the parent, per-thread main coroutine.
 *
 * This is the foundation that gevent-style concurrency (a hub with spawn,
 * join, sleep, kill, timeouts and blocking calls that park only the calling
 * coroutine, conc/hub.h) is built on; see docs/coro.md.  Here there is no scheduler:
 * control moves only when a coroutine switches to another explicitly, as
 * with greenlet.greenlet.
 *
 * Model (greenlet's):
 *   - Every thread has an implicit main coroutine: the code that runs on the
 *     thread's own stack (conc_coro_main).  It exists from the thread's first
 *     conc_coro_* call and is never dead while the thread runs.
 *   - A coroutine runs fn(arg, value) on its own stack.  It starts when some
 *     coroutine first switches to it; `value` is what that switch passed.
 *   - conc_coro_switch(target, v, &out) suspends the caller and continues
 *     target, which receives v: a suspended target sees its own pending
 *     conc_coro_switch return with v; a target that has not started yet
 *     starts with v.  When someone later switches back to the caller, its
 *     call returns and stores in *out the value that switch passed.
 *   - When fn returns r, the coroutine is dead and control goes to its parent
 *     (by default the coroutine that created it), which receives r as if the
 *     coroutine had switched to it with r.  A dead parent is skipped: its own
 *     parent receives r, and so on up to the main coroutine.
 *   - Coroutines belong to the thread that created them: they run only on
 *     that thread, and switching is only between coroutines of one thread.
 *     Several threads may each run their own coroutines at the same time.
 *
 * Differences from greenlet: switching to a dead coroutine is the error
 * -EPIPE (greenlet silently continues its parent instead); there are no
 * exceptions, so greenlet.throw and GreenletExit have no counterpart here
 * (conc/hub.h's conc_greenlet_kill makes a greenlet's blocking call return
 * -ECANCELED instead); freeing a suspended coroutine
 * discards its stack without running any cleanup (see conc_coro_free).
 *
 * Memory model.  Each coroutine has a fixed-size stack of `stack_size`
 * usable bytes (default CONC_CORO_STACK_DEFAULT, 64 KiB) plus one page
 * below it (the zone, see overflow below; past the guard budget the zone is
 * 1 KiB at the top of the stack below and the stack gets the rest of that
 * page: conc_coro_stack_size tells the exact size).  Stacks are virtual
 * memory from a pool: large MAP_NORESERVE mappings ("slabs") of up to 1024
 * stacks, so a million coroutines need about a thousand mappings (Linux
 * allows 65530 per process by default) and untouched stack pages cost no
 * memory and no swap reservation.  A coroutine's stack costs what it
 * touches, rounded up to pages: a coroutine sleeping a few calls deep
 * typically holds one 4 KiB page, plus ~150 bytes for the coroutine object (a greenlet of the hub
 * keeps its objects at the top of its stack: one page in all); a million
 * such coroutines need about 65 GiB of address space (64 KiB + 4 KiB each)
 * and 4 GiB of memory.  A stack that once went deep keeps those pages while
 * its coroutine lives.  A dead coroutine's stack returns to the pool at its
 * thread's next conc_coro_* call, whether or not its handle has been freed
 * (the handle stays valid until conc_coro_free; a greenlet's stack waits for
 * conc_greenlet_free); the most recently freed stacks (up to 16 in a cache
 * of the thread's own, up to 256 in all per stack size) are reused as they
 * are, and beyond that their pages are handed back to the kernel (madvise
 * MADV_DONTNEED), as are all free stacks' pages on conc_coro_trim.
 * Mappings are never unmapped.
 *
 * Choosing a stack size: the stack does not grow.  64 KiB suits code that
 * keeps big buffers off the stack; code that calls deep library stacks
 * (getaddrinfo, printf of long doubles, regex, recursion) wants 256 KiB or
 * more.  Larger sizes cost address space only, not memory, until used; a
 * coroutine's memory is the deepest page it reached, so keep big buffers
 * off the stacks of coroutines run by the hundred thousand.  Under
 * AddressSanitizer every size is multiplied by 4 and under
 * ThreadSanitizer by 2 (instrumented frames are larger);
 * conc_coro_stack_size tells the effective size.
 *
 * Stack overflow is detected and reported, never silent: the process prints
 * "conc: stack overflow in coroutine 'NAME' ..." on stderr and aborts
 * (SIGABRT); with the reporter turned off (conc_coro_set_overflow_report
 * (false), before the first coroutine, see below) an overflow into a guard
 * page is a plain SIGSEGV instead, while canary zones are still checked.  This is memory corruption, not bad input, so it is the one
 * place where conc prints and aborts.  The zone below each stack is a guard
 * page for as many stacks as the budget allows (conc_coro_guard_limit, set
 * with conc_coro_set_guard_limit: by
 * default vm.max_map_count / 8, 8191 on a stock kernel, since a PROT_NONE
 * guard page costs two map entries; on Linux 6.13 and later guard pages are
 * page-table markers, MADV_GUARD_INSTALL, which cost no map entry, so the
 * budget may be raised freely), plus the lowest stack of every slab.
 * Touching a guard page raises SIGSEGV, which conc's handler (installed
 * with the first coroutine, on an alternate signal stack per thread,
 * chaining to any handler installed before it) reports as the overflow of
 * the running coroutine.  Past the budget the zone is a canary
 * (1 KiB in the top page of the stack below, for stacks carved once the
 * budget is spent): it is never written, so it reads as zeros; every
 * switch away from such a coroutine (and its return) checks the zone and the
 * stack pointer, so an overflow is reported before any other coroutine runs.
 * An overflow that jumps over the whole zone with one huge frame, without
 * writing into it, is not caught by the canary; compile with
 * -fstack-clash-protection to make such frames probe every page.
 *
 * Sanitizers and valgrind: AddressSanitizer, ThreadSanitizer and valgrind
 * are told about every switch and every stack, so instrumented builds run
 * coroutines without false reports.
 *
 * Threads: conc_coro_* functions are thread-safe; a coroutine handle may be
 * passed to another thread only to be freed or inspected.  A thread should
 * end on its main coroutine; coroutines it leaves suspended stay allocated
 * until freed (from any thread).
 */
#ifndef CONC_CORO_H
#define CONC_CORO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "conc/errors.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct conc_coro conc_coro;

/*
 * The body of a coroutine: `arg` is the argument given to conc_coro_new,
 * `value` the value of the switch that started the coroutine.  Its return
 * value goes to the parent.
 */
typedef void *(*conc_coro_fn)(void *arg, void *value);

/* Options for conc_coro_new; all-zero (or NULL) means the defaults. */
typedef struct conc_coro_opts {
    uint32_t size;          /* sizeof(conc_coro_opts), or 0: this first
                               version (every field here) */
    size_t stack_size;      /* usable stack bytes; 0: CONC_CORO_STACK_DEFAULT.
                               Rounded up to the page size. */
    const char *name;       /* NULL: "Coro-N"; copied, truncated to
                               CONC_CORO_NAME_MAX bytes */
} conc_coro_opts;

/* conc reads a field only when size covers it, so the struct can grow;
 * CONC_CORO_OPTS_INIT fills size. */
#define CONC_CORO_OPTS_INIT { .size = sizeof(conc_coro_opts) }

#define CONC_CORO_STACK_DEFAULT (64u * 1024u)
#define CONC_CORO_STACK_MIN     (16u * 1024u)
#define CONC_CORO_STACK_MAX     ((size_t)1 << 30)
#define CONC_CORO_NAME_MAX      31

/*
 * conc_coro_new - create a coroutine that will run fn(arg, value) on its own
 * stack once something switches to it (greenlet.greenlet(run)).  Its parent
 * is the calling coroutine (the thread's main coroutine outside any).  It
 * belongs to the calling thread.  Returns 0 and stores the handle in *out;
 * -EINVAL for a NULL out or fn, or a stack size below CONC_CORO_STACK_MIN or
 * above CONC_CORO_STACK_MAX; -ENOMEM when no memory or address space is
 * left for the stack.
 */
CONC_API int conc_coro_new(conc_coro **out, conc_coro_fn fn, void *arg,
                           const conc_coro_opts *opts);

/*
 * conc_coro_switch - greenlet.switch(value): suspend the calling coroutine
 * and continue target with `value` (see the model above).  Returns 0 once
 * some coroutine switches back to the caller (or the caller's child returns
 * to it), and stores in *out (unless out is NULL) the value passed.
 * Switching to the calling coroutine itself returns 0 at once with *out =
 * value.  Errors (nothing happens): -EINVAL for a NULL target; -EPERM when
 * target belongs to another thread; -EPIPE when target is dead (its function
 * has returned); -ENOMEM when the calling thread's coroutine state cannot be
 * allocated, or when target is a greenlet's coroutine on a hub's shared
 * stack (CONC_STACK_COPIED, conc/hub.h) and the buffer for the frames it
 * displaces cannot be; -EBUSY when target is such a coroutine and the
 * caller's own frames are on that shared stack (only the hub switches
 * between them).
 */
CONC_API int conc_coro_switch(conc_coro *target, void *value, void **out);

/*
 * conc_coro_current - greenlet.getcurrent(): the running coroutine of the
 * calling thread (its main coroutine outside any).  Borrowed: do not free.
 * Returns NULL only when the thread's state cannot be allocated.
 */
CONC_API conc_coro *conc_coro_current(void);

/*
 * conc_coro_main - the calling thread's main coroutine: the code running on
 * the thread's own stack.  Borrowed: do not free.  Returns NULL only when
 * the thread's state cannot be allocated.
 */
CONC_API conc_coro *conc_coro_main(void);

/*
 * conc_coro_parent - greenlet.parent: where control goes when c's function
 * returns.  NULL for a main coroutine or a NULL c.  Borrowed.
 */
CONC_API conc_coro *conc_coro_parent(const conc_coro *c);

/*
 * conc_coro_set_parent - set greenlet.parent.  Returns 0; -EINVAL for a NULL
 * argument, for a main coroutine (it has no parent), or when the change
 * would make a cycle (greenlet's "cyclic parent chain"); -EPERM when c and
 * parent do not both belong to the calling thread.
 */
CONC_API int conc_coro_set_parent(conc_coro *c, conc_coro *parent);

/* conc_coro_started - true once c has started running (a main coroutine
 * always has).  False for NULL. */
CONC_API bool conc_coro_started(const conc_coro *c);

/* conc_coro_dead - greenlet.dead: true once c's function has returned.
 * False for NULL and for coroutines not started yet. */
CONC_API bool conc_coro_dead(const conc_coro *c);

/*
 * conc_coro_result - the value c's function returned.  Returns 0 and stores
 * it in *out when c is dead; -EBUSY while it is not; -EINVAL for NULL.
 */
CONC_API int conc_coro_result(const conc_coro *c, void **out);

/* conc_coro_name - the coroutine's name ("main" for a main coroutine),
 * valid while the handle is; "" for NULL. */
CONC_API const char *conc_coro_name(const conc_coro *c);

/* conc_coro_stack_size - the usable size of c's stack in bytes (after
 * rounding and sanitizer scaling); 0 for a main coroutine or NULL. */
CONC_API size_t conc_coro_stack_size(const conc_coro *c);

/*
 * conc_coro_free - release a coroutine.  A dead or never-started coroutine
 * is simply released.  A suspended coroutine (started, not dead) is killed:
 * its stack is discarded without running any cleanup; nothing that its
 * frames would have released (memory, locks) is released, so make it return
 * first (switch to it with a value that tells it to finish) when it holds
 * resources.  Coroutines whose parent is c keep what they need of it: when
 * they return, control goes to c's parent.  May be called from any thread
 * that does not race with c's thread switching to it.  Returns 0 (also for
 * NULL); -EBUSY when c is running (it is the current coroutine of its
 * thread); -EINVAL for a main coroutine.  The handle is invalid afterwards.
 */
CONC_API int conc_coro_free(conc_coro *c);

/* conc_coro_guard_limit - how many stacks may have a guard page (see
 * stack overflow above). */
CONC_API long conc_coro_guard_limit(void);

/*
 * conc_coro_set_guard_limit - set that limit, for stacks handed out from
 * now on (stacks that have a guard page keep it; where guard markers
 * install a slab's guard pages at once, for the stacks of slabs made from
 * now on).  Returns 0; -EINVAL for n < 0.
 */
CONC_API int conc_coro_set_guard_limit(long n);

/* conc_coro_trim - hand the pages of every free stack back to the kernel
 * (after a burst of coroutines has ended).  Thread-safe. */
CONC_API void conc_coro_trim(void);

/* Counters of the coroutines and the stack pool, process-wide. */
typedef struct conc_coro_stats {
    size_t coros;           /* coroutine objects not freed (main ones excluded) */
    size_t stacks_used;     /* stacks held by coroutines (created, not dead) */
    size_t stacks_hot;      /* free stacks that kept their pages */
    size_t stacks_clean;    /* free stacks without resident pages */
    size_t stacks_carved;   /* stacks ever handed out: used + hot + clean */
    size_t slabs;           /* mappings holding stacks */
    size_t bytes_mapped;    /* their address space */
    size_t guarded;         /* stacks with a guard page */
    long guard_limit;       /* conc_coro_guard_limit */
} conc_coro_stats;

/* conc_coro_get_stats - fill *out with the current counters.  Returns 0;
 * -EINVAL for NULL. */
CONC_API int conc_coro_get_stats(conc_coro_stats *out);


/*
 * The stack-overflow reporter, a process-wide effect of coroutines
 * (docs/building.md, "Process-wide effects").
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
#endif /* CONC_CORO_H */
