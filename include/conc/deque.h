/*
 * conc/deque.h - collections.deque of void *, shared by the threads of one
 * process.  (Blocking queues between threads are in conc/queue.h.)
 *
 * Items are void *: a deque stores the pointer it is given and hands the
 * same pointer back; it never looks at what it points to and never frees
 * it, except through the `drop` callback of the options when it discards
 * items itself (pushed out by maxlen, cleared, or left at free).
 *
 * Python's exceptions become error codes:
 *   IndexError from deque.pop()    -EAGAIN
 */
#ifndef CONC_DEQUE_H
#define CONC_DEQUE_H

#include <stddef.h>
#include <stdint.h>
#include "conc/errors.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The discard callback of queues and deques: called for each item the
 * container throws away itself (see conc_queue_opts.drop and
 * conc_deque_opts.drop), with the container's lock possibly held: it must
 * not call into the same container.  (Declared by conc/queue.h and
 * conc/deque.h alike, whichever comes first.) */
#ifndef CONC_DROP_FN_DEFINED
#define CONC_DROP_FN_DEFINED
typedef void (*conc_drop_fn)(void *item, void *arg);
#endif

/*
 * conc_deque - collections.deque of void *, thread-safe: every call is
 * atomic with respect to the others (one lock per deque).  Nothing blocks
 * waiting for items (use a conc_queue for that); popping an empty deque is
 * -EAGAIN (Python's IndexError).  With a maxlen, adding to a full deque
 * drops an item from the other end, as in Python.
 */
typedef struct conc_deque conc_deque;

/* Options for conc_deque_new; all-zero (or NULL) means unbounded. */
typedef struct conc_deque_opts {
    uint32_t size;          /* sizeof(conc_deque_opts), or 0: the first
                               version (conc reads a field only when size
                               covers it) */
    size_t maxlen;          /* deque(maxlen=n); 0 means unbounded (Python's
                               None; Python's maxlen=0 has no equivalent) */
    conc_drop_fn drop;      /* NULL, or called for each item the deque drops:
                               pushed out by maxlen, cleared, or left at free */
    void *drop_arg;         /* passed to drop */
    size_t capacity;        /* slots to allocate up front (a hint) */
} conc_deque_opts;

#define CONC_DEQUE_OPTS_INIT { .size = sizeof(conc_deque_opts) }

/* conc_deque_new - create an empty deque.  Returns 0 and stores the handle
 * in *out; -EINVAL for a NULL out; -ENOMEM. */
CONC_API int conc_deque_new(conc_deque **out, const conc_deque_opts *opts);

/* conc_deque_free - destroy a deque; items left go to the drop callback (if
 * any).  No thread may be using it.  NULL is fine. */
CONC_API void conc_deque_free(conc_deque *d);

/*
 * conc_deque_append - deque.append(item): add on the right.  When the deque
 * is at its maxlen, the leftmost item is dropped first (passed to the drop
 * callback, if any).  Returns 0, 1 when an item was dropped, -ENOMEM
 * (nothing changed), -EINVAL for NULL.
 */
CONC_API int conc_deque_append(conc_deque *d, void *item);

/* conc_deque_appendleft - deque.appendleft(item): add on the left (a full
 * deque drops its rightmost item).  Returns as conc_deque_append. */
CONC_API int conc_deque_appendleft(conc_deque *d, void *item);

/*
 * conc_deque_extend - deque.extend(items): append items[0..n-1] in order,
 * as one atomic step.  Returns the number of items dropped from the left
 * because of maxlen (0 when unbounded), -ENOMEM (nothing changed), -EINVAL
 * for NULL d, NULL items with n > 0, or n > INT_MAX.
 */
CONC_API int conc_deque_extend(conc_deque *d, void *const *items, size_t n);

/* conc_deque_extendleft - deque.extendleft(items): appendleft each item in
 * order (so they end up reversed), as one step.  Returns as
 * conc_deque_extend (items dropped from the right). */
CONC_API int conc_deque_extendleft(conc_deque *d, void *const *items, size_t n);

/*
 * conc_deque_pop - deque.pop(): remove the rightmost item into *out.
 * Returns 0; -EAGAIN when the deque is empty (Python's IndexError); -EINVAL
 * for NULL d or out.
 */
CONC_API int conc_deque_pop(conc_deque *d, void **out);

/* conc_deque_popleft - deque.popleft(): remove the leftmost item.  Returns
 * as conc_deque_pop. */
CONC_API int conc_deque_popleft(conc_deque *d, void **out);

/* conc_deque_peek - d[-1]: the rightmost item, left in place.  Returns 0,
 * -EAGAIN when empty, -EINVAL for NULL. */
CONC_API int conc_deque_peek(conc_deque *d, void **out);

/* conc_deque_peekleft - d[0]: the leftmost item, left in place.  Returns as
 * conc_deque_peek. */
CONC_API int conc_deque_peekleft(conc_deque *d, void **out);

/*
 * conc_deque_rotate - deque.rotate(n): rotate n steps to the right (n > 0:
 * the rightmost items move to the left end) or -n steps to the left
 * (n < 0).  Any n is fine (it counts modulo the length); it moves at most
 * half the items.  Returns 0, -EINVAL for NULL.
 */
CONC_API int conc_deque_rotate(conc_deque *d, int64_t n);

/* conc_deque_reverse - deque.reverse(): reverse in place.  Returns 0 or
 * -EINVAL. */
CONC_API int conc_deque_reverse(conc_deque *d);

/* conc_deque_clear - deque.clear(): remove every item (each goes to the
 * drop callback, if any).  Returns 0 or -EINVAL. */
CONC_API int conc_deque_clear(conc_deque *d);

/* conc_deque_len - len(d) (a snapshot); 0 for NULL. */
CONC_API size_t conc_deque_len(const conc_deque *d);

/* conc_deque_maxlen - deque.maxlen (0: unbounded). */
CONC_API size_t conc_deque_maxlen(const conc_deque *d);

#ifdef __cplusplus
}
#endif
#endif /* CONC_DEQUE_H */
