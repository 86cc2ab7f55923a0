/*
 * sanitized.h - SANITIZED is 1 in an ASan or TSan build (GCC or Clang), 0
 * otherwise: tests that run heavy loops use smaller counts under them.
 * TSAN is 1 in a TSan build alone: what ThreadSanitizer changes (fibers
 * slower to make, threads in a forked child, signals held back while the
 * process sleeps in a call it does not watch) is checked less there.
 */
#ifndef CONC_TEST_SANITIZED_H
#define CONC_TEST_SANITIZED_H

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SANITIZED 1
#endif
#endif
#ifndef SANITIZED
#define SANITIZED 0
#endif

#if defined(__SANITIZE_THREAD__)
#define TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TSAN 1
#endif
#endif
#ifndef TSAN
#define TSAN 0
#endif

#endif
