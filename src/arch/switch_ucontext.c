/*
 * switch_ucontext.c - the portable context switch: POSIX ucontext.
 *
 * Used on architectures without an assembly switch (CMake selects it when
 * CMAKE_SYSTEM_PROCESSOR is neither x86-64 nor aarch64, or when
 * CONC_CORO_UCONTEXT=ON).  Correct everywhere glibc implements
 * makecontext/swapcontext, but slow: swapcontext saves and restores the
 * signal mask with a system call on every switch (a few hundred ns instead
 * of a few).  It keeps the whole floating-point environment per context
 * (control bits and status flags).
 */
#include "arch/ctx.h"

/* makecontext passes only int arguments portably: the value travels in a
 * thread-local slot instead, set right before each swap. */
static __thread void *ctx_value;

static void ctx_start(void)
{
    conc__coro_entry(ctx_value);
}

void conc__ctx_make(conc__ctx *c, void *lo, void *hi)
{
    getcontext(&c->uc);
    c->uc.uc_stack.ss_sp = lo;
    c->uc.uc_stack.ss_size = (size_t)((char *)hi - (char *)lo);
    c->uc.uc_stack.ss_flags = 0;
    c->uc.uc_link = NULL;
    makecontext(&c->uc, ctx_start, 0);
}

int conc__ctx_switch(conc__ctx *from, conc__ctx *to, void *value, void **out)
{
    ctx_value = value;
    swapcontext(&from->uc, &to->uc);
    if (out)
        *out = ctx_value;
    return 0;
}
