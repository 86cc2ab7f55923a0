/*
 * conc/cpool.h - coroutine pools: gevent.pool.Pool(size), a group of
 * greenlets (conc/hub.h) that lets at most `size` of them run at once.
 *
 * conc_cpool_spawn starts a greenlet as conc_greenlet_spawn does and makes it a
 * member of the pool; while the pool is full it first parks the calling
 * coroutine until a member finishes.  A member leaves the pool when it
 * finishes (its function returns, also after a kill); conc_cpool_join waits
 * until the pool is empty, conc_cpool_kill kills every member.  The members
 * are ordinary greenlets: conc_greenlet_join, conc_greenlet_kill, conc_greenlet_result work on
 * them, and their handles are freed with conc_greenlet_free as usual (the
 * pool does not need them).
 *
 * Size: n > 0 limits the pool to n members.  Size 0 (CONC_CPOOL_UNBOUNDED)
 * means no limit, like gevent's Pool(None): the pool only tracks its
 * members (gevent's Pool(0), which can never hold a member, has no
 * counterpart).
 *
 * A pool belongs to the thread that creates it: its members are greenlets
 * of that thread's hub, and the calls that spawn or wait must come from
 * that thread's main coroutine or its greenlets (-EPERM otherwise);
 * conc_cpool_size, conc_cpool_len, conc_cpool_free_count and
 * conc_cpool_full may be called from any thread (the count may be stale).
 *
 * From a member: conc_cpool_join and conc_cpool_kill leave the calling
 * member out (it is not killed, and they wait for the others only), so a
 * member can wait for its siblings without waiting for itself.  A member
 * that spawns into a full pool it belongs to waits like anybody else (with
 * size 1 that is forever, as in gevent).
 *
 * A member killed with conc_greenlet_kill before it started never runs; it leaves
 * the pool at the next call of the pool that has to wait (spawn into a full
 * pool, join, kill, wait_available), not before: until then the counts
 * include it.  Members killed by conc_cpool_kill before they started leave
 * at once when the hub next runs; their function is not called and their
 * result is NULL.
 */
#ifndef CONC_CPOOL_H
#define CONC_CPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "conc/errors.h"
#include "conc/hub.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct conc_cpool conc_cpool;

#define CONC_CPOOL_UNBOUNDED 0

/*
 * conc_cpool_new - gevent.pool.Pool(size): an empty pool that lets at most
 * size members run at once (0: no limit).  Returns 0 and stores the handle
 * in *out; -EINVAL for NULL out; -ENOMEM.
 */
CONC_API int conc_cpool_new(conc_cpool **out, size_t size);

/*
 * conc_cpool_free - release an empty pool.  Returns 0 (also for NULL);
 * -EBUSY while it has members (join it, or kill it, first); -EPERM from
 * another thread than the pool's.  The members' greenlet handles are not
 * affected.
 */
CONC_API int conc_cpool_free(conc_cpool *p);

/*
 * conc_cpool_spawn - Pool.spawn(fn, arg): wait until the pool has room,
 * then spawn fn(arg) as conc_greenlet_spawn does (opts as there) and add it to the
 * pool.  The new member runs once the caller blocks or yields.  timeout in
 * seconds: CONC_FOREVER waits as long as it takes (gevent's default), 0
 * never waits.  Stores the handle in *out (free it with
 * conc_greenlet_free); when out is NULL the handle is released at once (the
 * greenlet runs on).  Returns 0; -EAGAIN when timeout is 0 and the pool is
 * full (gevent's PoolFull); -ETIMEDOUT when the pool stayed full until the
 * timeout passed; -ECANCELED when the caller was killed while it waited; -EINVAL
 * for NULL p or fn, a bad timeout or bad options; -EPERM (see above);
 * -ENOMEM; other errors of conc_greenlet_spawn.
 */
CONC_API int conc_cpool_spawn(conc_cpool *p, conc_greenlet **out, conc_greenlet_fn fn,
                              void *arg, const conc_spawn_opts *opts, double timeout);
/* conc_cpool_spawn_until - conc_cpool_spawn with an absolute
 * CLOCK_MONOTONIC deadline (CONC_NO_DEADLINE: wait as long as it takes; a
 * deadline already passed never waits and gives -ETIMEDOUT when full). */
CONC_API int conc_cpool_spawn_until(conc_cpool *p, conc_greenlet **out, conc_greenlet_fn fn,
                                    void *arg, const conc_spawn_opts *opts, int64_t deadline);

/*
 * conc_cpool_join - Pool.join(timeout): wait until the pool is empty (all
 * its members have finished, including those spawned while waiting; a
 * member calling this is left out).  Like gevent's, it returns once the
 * pool was empty at some point: members may have been added before the
 * caller runs again.  Returns 0; -EAGAIN when timeout is 0 and members
 * remain; -ETIMEDOUT when the timeout (or the _until form's deadline)
 * passed first; -ECANCELED when the caller was killed; -EINVAL for NULL p or a bad timeout; -EPERM (see above).
 * Members that never finish make it wait for as long as it takes (see
 * "Deadlocks" above).
 */
CONC_API int conc_cpool_join(conc_cpool *p, double timeout);
CONC_API int conc_cpool_join_until(conc_cpool *p, int64_t deadline);

/*
 * conc_cpool_kill - Pool.kill(block=True, timeout): conc_greenlet_kill every member
 * (those spawned while it waits too, as gevent does; a member calling this
 * is left out), then wait until the pool is empty.  timeout 0 is
 * block=False: kill, do not wait.  Returns 0 once the pool is empty;
 * -EAGAIN with timeout 0 when members remain (they were killed all the
 * same); -ETIMEDOUT while members remain at the deadline; other errors as
 * conc_cpool_join.
 */
CONC_API int conc_cpool_kill(conc_cpool *p, double timeout);
CONC_API int conc_cpool_kill_until(conc_cpool *p, int64_t deadline);

/*
 * conc_cpool_wait_available - Pool.wait_available(timeout): wait until
 * conc_cpool_spawn would not have to wait.  Returns how many members may
 * be spawned without waiting (> 0; INT_MAX for an unbounded pool);
 * -EAGAIN when timeout is 0 and the pool is full; -ETIMEDOUT when it stayed
 * full until the timeout or deadline; other errors as conc_cpool_join.
 */
CONC_API int conc_cpool_wait_available(conc_cpool *p, double timeout);
CONC_API int conc_cpool_wait_available_until(conc_cpool *p, int64_t deadline);

/* conc_cpool_size - the limit given to conc_cpool_new (0: unbounded); 0
 * for NULL. */
CONC_API size_t conc_cpool_size(const conc_cpool *p);

/* conc_cpool_len - len(pool): the members now (spawned, not finished); 0
 * for NULL. */
CONC_API size_t conc_cpool_len(const conc_cpool *p);

/* conc_cpool_free_count - Pool.free_count(): how many more members fit
 * now: size - len, SIZE_MAX for an unbounded pool (gevent says 1), 0 for
 * NULL. */
CONC_API size_t conc_cpool_free_count(const conc_cpool *p);

/* conc_cpool_full - Pool.full(): true when conc_cpool_spawn would wait
 * (never for an unbounded pool); false for NULL. */
CONC_API bool conc_cpool_full(const conc_cpool *p);

/* conc_cpool_contains - `g in pool`: true while g is a member.  False for
 * NULL arguments and from another thread than the pool's. */
CONC_API bool conc_cpool_contains(const conc_cpool *p, const conc_greenlet *g);

#ifdef __cplusplus
}
#endif
#endif /* CONC_CPOOL_H */
