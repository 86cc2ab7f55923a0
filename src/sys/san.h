/*
 * san.h - what the library tells sanitizers and valgrind about its own
 * stacks (internal).  Everything here compiles to nothing in a plain build.
 *
 *   CONC_SAN_ADDRESS  AddressSanitizer: fiber switch annotations, shadow
 *                     clearing for reused coroutine stacks
 *   CONC_SAN_THREAD   ThreadSanitizer: one TSan fiber per coroutine
 *   CONC_HAVE_VALGRIND  <valgrind/valgrind.h> (header-only client requests)
 *                     was found: coroutine stacks are registered
 */
#ifndef CONC_SYS_SAN_H
#define CONC_SYS_SAN_H

#include <stddef.h>

#if defined(__has_feature)
#define CONC__HAS_FEATURE(x) __has_feature(x)
#else
#define CONC__HAS_FEATURE(x) 0
#endif

#if defined(__SANITIZE_ADDRESS__) || CONC__HAS_FEATURE(address_sanitizer)
#define CONC_SAN_ADDRESS 1
#else
#define CONC_SAN_ADDRESS 0
#endif

#if defined(__SANITIZE_THREAD__) || CONC__HAS_FEATURE(thread_sanitizer)
#define CONC_SAN_THREAD 1
#else
#define CONC_SAN_THREAD 0
#endif

/* The sanitizer runtimes' entry points (the same declarations as their
 * <sanitizer/...> headers, which not every compiler installs). */
#if CONC_SAN_ADDRESS
void __sanitizer_start_switch_fiber(void **fake_stack_save, const void *bottom, size_t size);
void __sanitizer_finish_switch_fiber(void *fake_stack_save, const void **bottom_old,
                                     size_t *size_old);
void __asan_unpoison_memory_region(void const volatile *addr, size_t size);
void __asan_poison_memory_region(void const volatile *addr, size_t size);
void *__asan_region_is_poisoned(void *beg, size_t size);
#endif
#if CONC_SAN_THREAD
void *__tsan_get_current_fiber(void);
void *__tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void *fiber);
void __tsan_switch_to_fiber(void *fiber, unsigned flags);
void __tsan_set_fiber_name(void *fiber, const char *name);
#endif

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define CONC_HAVE_VALGRIND 1
#endif
#endif
#ifndef CONC_HAVE_VALGRIND
#define CONC_HAVE_VALGRIND 0
#endif

#endif
