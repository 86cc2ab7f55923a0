/*
 * coro_abi.h - what the assembly conc_coro_switch knows about coro.c's
 * records (internal).  Macros only: switch_x86_64.S includes it too.
 *
 * CONC_CORO_SWITCH_ASM is 1 where conc_coro_switch's common case is
 * assembly (switch_x86_64.S: x86-64, no sanitizer, which needs its hooks
 * around every switch); coro.c then defines only the full path,
 * conc__coro_switch_slow, and checks every offset below with
 * _Static_assert, so a change of layout that forgets this file does not
 * build.
 */
#ifndef CONC_ARCH_CORO_ABI_H
#define CONC_ARCH_CORO_ABI_H

#if defined(__has_feature)
#define CONC__ABI_HAS_FEATURE(x) __has_feature(x)
#else
#define CONC__ABI_HAS_FEATURE(x) 0
#endif

#if defined(__x86_64__) && !defined(CONC_CTX_UCONTEXT) && !defined(__SANITIZE_ADDRESS__) \
    && !defined(__SANITIZE_THREAD__) && !CONC__ABI_HAS_FEATURE(address_sanitizer) \
    && !CONC__ABI_HAS_FEATURE(thread_sanitizer)
#define CONC_CORO_SWITCH_ASM 1
#else
#define CONC_CORO_SWITCH_ASM 0
#endif

/* struct conc_coro (coro.c) */
#define CONC__CORO_CTX 8        /* conc__ctx ctx: the saved stack pointer */
#define CONC__CORO_KEY 32       /* uintptr_t key */
#define CONC__CORO_STATE 72     /* uint8_t state */

/* its states */
#define CONC__CORO_RUNNING 1
#define CONC__CORO_SUSPENDED 2

/* struct conc__coro_tls (internal.h) */
#define CONC__TLS_CURRENT 8
#define CONC__TLS_FAST 16

#endif
