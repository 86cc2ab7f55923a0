/*
 * ctx.h - the machine context switch under conc's coroutines (internal).
 *
 * Three back ends implement the same two calls:
 *   switch_x86_64.S   x86-64 System V
 *   switch_aarch64.S  AArch64 (AAPCS64)
 *   switch_ucontext.c any other architecture, or CONC_CORO_UCONTEXT=ON:
 *                     portable but slow (swapcontext saves and restores the
 *                     signal mask with a system call on every switch)
 * CMake picks one from CMAKE_SYSTEM_PROCESSOR and defines CONC_CTX_UCONTEXT
 * for the fallback.
 *
 * The assembly versions save exactly what the ABI makes callee-saved, on the
 * stack being left, and keep the stack pointer in the conc__ctx:
 *   x86-64   rbx, rbp, r12-r15, rsp, MXCSR (its control bits: rounding,
 *            flush-to-zero, denormals-are-zero, exception masks; and its
 *            status flags, which go along) and the x87 control word, these
 *            two in the conc__ctx, loaded at every switch (reading them to
 *            compare costs more).
 *   aarch64  x19-x29, lr (x30), sp, d8-d15 and FPCR, which is written only
 *            when the target's differs from the current one (msr fpcr can
 *            be slow; mrs reads it straight into a register).
 */
#ifndef CONC_ARCH_CTX_H
#define CONC_ARCH_CTX_H

#include <stddef.h>
#include <stdint.h>
#include "../internal.h"

#if defined(CONC_CTX_UCONTEXT)
#include <ucontext.h>
typedef struct conc__ctx {
    ucontext_t uc;
} conc__ctx;
#elif defined(__x86_64__)
typedef struct conc__ctx {
    void *sp;               /* the saved stack pointer of a suspended context */
    uint32_t mxcsr;         /* its MXCSR and x87 control word: loaded from */
    uint16_t fpcw;          /* here with sp's cache line, they take no */
    uint16_t unused;        /* stack slot to make and release */
} conc__ctx;
#else
typedef struct conc__ctx {
    void *sp;               /* the saved stack pointer of a suspended context */
} conc__ctx;
#endif

/*
 * conc__ctx_make - prepare a fresh context running on the stack [lo, hi):
 * the first conc__ctx_switch to it calls conc__coro_entry(value) on that
 * stack, with the caller's floating-point control state.  Writes nothing
 * below hi - 256 bytes.
 */
CONC_HIDDEN void conc__ctx_make(conc__ctx *c, void *lo, void *hi);

/*
 * conc__ctx_switch - save the calling context in *from and continue *to
 * (made by conc__ctx_make, or saved by an earlier switch) with `value`.
 * When some later switch continues *from with a value v, this call stores v
 * in *out (unless out is NULL) and returns 0.  Callers make it a tail call
 * where they can: then nothing returns through a stale return-stack entry.
 */
CONC_HIDDEN int conc__ctx_switch(conc__ctx *from, conc__ctx *to, void *value, void **out);

/* conc__ctx_switch_same_site - conc__ctx_switch tuned for targets that
 * usually continue where the caller would return (see switch_x86_64.S). */
#if defined(__x86_64__) && !defined(CONC_CTX_UCONTEXT)
CONC_HIDDEN int conc__ctx_switch_same_site(conc__ctx *from, conc__ctx *to, void *value,
                                           void **out);
/* conc__ctx_switch_to - conc__ctx_switch(from, to, value, out), its
 * arguments in the order of conc_coro_switch's (whose tail call then moves
 * one register, not four). */
CONC_HIDDEN int conc__ctx_switch_to(conc__ctx *to, void *value, void **out, conc__ctx *from);
#else
#define conc__ctx_switch_same_site conc__ctx_switch
static inline int conc__ctx_switch_to(conc__ctx *to, void *value, void **out, conc__ctx *from)
{
    return conc__ctx_switch(from, to, value, out);
}
#endif

/* conc__coro_entry - the first function a fresh context runs (coro.c); it
 * never returns. */
CONC_HIDDEN __attribute__((noreturn)) void conc__coro_entry(void *value);

/* conc__ctx_sp - the saved stack pointer of a suspended context, or NULL
 * when the back end does not know it. */
static inline void *conc__ctx_sp(const conc__ctx *c)
{
#if defined(CONC_CTX_UCONTEXT)
    (void)c;
    return NULL;
#else
    return c->sp;
#endif
}

#endif
