/*
 * conc/shm.h - shared memory: Value, Array, RawValue, RawArray (ctypes
 * objects in shared memory) and shared_memory.SharedMemory.
 *
 * Value and Array live in anonymous shared memory (memfd_create): nothing is
 * named, nothing is left behind.  Children started with CONC_START_FORK
 * inherit them at the same address; for forkserver/spawn children, pass
 * conc_value_fd / conc_array_fd in conc_process_opts.pass_fds and attach in
 * the child with conc_value_attach / conc_array_attach.  Unless created raw,
 * each carries a process-shared, robust RLock (Python's get_lock()).
 *
 * SharedMemory segments are named (/dev/shm), created with O_EXCL and mode
 * 0600.  The creator unlinks the name when it closes the segment (unless
 * CONC_SHM_KEEP), so no resource tracker is needed and none can unlink a
 * segment behind your back.  Names conc generates embed the creator's pid
 * ("conc-PID-N"); after a crash, conc_shm_cleanup() removes the segments of
 * creators that no longer run.
 *
 * What survives what:
 *   - Value, Array and CONC_SHM_ANON segments have no name: their memory
 *     lives while some process maps it or holds its descriptor, and is gone
 *     when the last one unmaps, closes or dies, crash or not.
 *   - A named segment's memory lives while its name exists or somebody maps
 *     it.  The name goes when its creator closes it, or at the creator's
 *     normal exit (exit() or return from main; a library destructor removes
 *     the names of the segments it created and never closed).  The "creator"
 *     is the process that called conc_shm_open(CREATE): fork children that
 *     inherit the handle never remove the name.  CONC_SHM_KEEP names, and
 *     names whose creator was killed or called _exit(), stay until
 *     conc_shm_unlink / conc_shm_unlink_name, or, for "conc-PID-N" names,
 *     conc_shm_cleanup.
 *   - Freeing a handle always unmaps this process's view and closes its
 *     descriptor.  Pointers into the memory are invalid after that.
 * conc removes a name only while it still refers to the segment it created
 * (same inode): a segment made later under the same name is left alone.
 */
#ifndef CONC_SHM_H
#define CONC_SHM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "conc/errors.h"
#include "conc/sync.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Python's array/ctypes type codes accepted by Value and Array:
 * 'c' char, 'b' signed char, 'B' unsigned char, 'h' short, 'H' unsigned
 * short, 'i' int, 'I' unsigned int, 'l' long, 'L' unsigned long,
 * 'q' long long, 'Q' unsigned long long, 'f' float, 'd' double. */

/* Flag: no lock (RawValue / RawArray). */
#define CONC_SHM_RAW 0x1u

typedef struct conc_value conc_value;
typedef struct conc_array conc_array;

/*
 * conc_value_new - Value(typecode, init) / RawValue with CONC_SHM_RAW.
 * init points to one element of the type (NULL: zero).  The value is 64-byte
 * aligned in its own sealed memfd (close-on-exec).  Returns 0; -EINVAL (NULL
 * out, unknown typecode or flag); -ENOMEM; -EMFILE / -ENFILE (no descriptor);
 * -ENOTSUP without CONC_SHM_RAW where the shared lock cannot be robust
 * (conc_lock_init).
 */
CONC_API int conc_value_new(conc_value **out, char typecode, const void *init, unsigned flags);

/* conc_value_ptr - the value in shared memory (cast to the C type);
 * NULL for NULL.  Python's .value: read or write through it, holding the
 * lock when other processes write too. */
CONC_API void *conc_value_ptr(const conc_value *v);
/* conc_value_typecode / conc_value_size - its type code and byte size
 * (0 for NULL). */
CONC_API char conc_value_typecode(const conc_value *v);
CONC_API size_t conc_value_size(const conc_value *v);
/* conc_value_get_lock - Value.get_lock(): the shared RLock, NULL when raw. */
CONC_API conc_rlock *conc_value_get_lock(const conc_value *v);
/* conc_value_fd - the memfd behind it, to pass to a forkserver/spawn child
 * (owned by the handle; -EINVAL for NULL). */
CONC_API int conc_value_fd(const conc_value *v);
/* conc_value_attach - in a child: map the Value whose memfd is fd (the fd is
 * duplicated; the caller keeps its own).  The memfd's header (magic number,
 * version, kind, type code, length) and seals are checked against its size
 * first.  Returns 0; -EINVAL (fd < 0, or not a conc Value: another file, a
 * foreign memfd, a conc Array, an fd not open for writing); -EBADF (fd not
 * open); -EMFILE; -ENOMEM. */
CONC_API int conc_value_attach(conc_value **out, int fd);
/* conc_value_free - unmap this process's view and close its descriptor
 * (the memory lives while any process maps it).  Not while the calling
 * process holds the lock: a held shared lock must stay mapped.  NULL is
 * fine. */
CONC_API void conc_value_free(conc_value *v);

/*
 * conc_array_new - Array(typecode, n, init) / RawArray with CONC_SHM_RAW.
 * init points to n elements (NULL: zeros).  Returns 0; -EINVAL (n == 0,
 * unknown typecode or flag, NULL out); -EOVERFLOW (size too large); -ENOMEM;
 * -EMFILE / -ENFILE; -ENOTSUP as conc_value_new.
 */
CONC_API int conc_array_new(conc_array **out, char typecode, size_t n, const void *init,
                            unsigned flags);
/* conc_array_ptr - the first element (64-byte aligned); NULL for NULL. */
CONC_API void *conc_array_ptr(const conc_array *a);
/* conc_array_len - len(array): the number of elements (0 for NULL). */
CONC_API size_t conc_array_len(const conc_array *a);
/* conc_array_typecode / conc_array_elem_size - the type code and the byte
 * size of one element (0 for NULL). */
CONC_API char conc_array_typecode(const conc_array *a);
CONC_API size_t conc_array_elem_size(const conc_array *a);
/* conc_array_get_lock - Array.get_lock(): the shared RLock, NULL when raw. */
CONC_API conc_rlock *conc_array_get_lock(const conc_array *a);
/* conc_array_fd - the memfd behind it (-EINVAL for NULL). */
CONC_API int conc_array_fd(const conc_array *a);
/* conc_array_attach - as conc_value_attach for an Array; a Value's fd is
 * -EINVAL. */
CONC_API int conc_array_attach(conc_array **out, int fd);
/* conc_array_free - as conc_value_free for an Array.  NULL is fine. */
CONC_API void conc_array_free(conc_array *a);

/* ------------------------------------------------------ SharedMemory */

/* Flags for conc_shm_open. */
#define CONC_SHM_CREATE 0x1u    /* create a new segment (O_EXCL) */
#define CONC_SHM_KEEP   0x2u    /* the creator does not unlink on close */
#define CONC_SHM_ANON   0x4u    /* anonymous (memfd): no name at all */

typedef struct conc_shm conc_shm;

/* The longest segment name, without the leading '/'. */
#define CONC_SHM_NAME_MAX 200

/*
 * conc_shm_open - SharedMemory(name, create, size).
 *   CONC_SHM_CREATE: create `name` (NULL: a generated "conc-PID-N", N from a
 *     per-process counter, skipping names that exist) of `size` bytes
 *     (> 0), mode exactly 0600 whatever the umask, zero-filled; -EEXIST when
 *     it exists.  The name appears only once the segment has its size (it
 *     is made unnamed and linked when complete), so an attacher never sees
 *     an empty segment.  The calling process is its creator (see the top of
 *     this file); with CONC_SHM_KEEP nobody removes the name automatically.
 *   without it: attach to the existing `name`; size 0 means its whole size,
 *     a smaller size maps the first `size` bytes, a larger size than the
 *     segment (or an empty segment) is -EINVAL.  CONC_SHM_KEEP is -EINVAL.
 *   CONC_SHM_ANON (with CREATE, name NULL, without KEEP): a memfd segment
 *     without a name, sealed at its size, shared with fork children or by
 *     passing conc_shm_fd.
 * Names may start with '/', must not contain another '/', must not be
 * empty, "." or "..", and are at most CONC_SHM_NAME_MAX bytes (without the
 * '/').  Returns 0; -EINVAL (NULL out, bad name, size or flags); -EEXIST;
 * -ENOENT; -EACCES; -ENOMEM; -EMFILE / -ENFILE.
 */
CONC_API int conc_shm_open(conc_shm **out, const char *name, size_t size, unsigned flags);

/* conc_shm_buf / conc_shm_size / conc_shm_name / conc_shm_fd - the mapping
 * (page-aligned), its size, its name without '/' ("" when anonymous or
 * attached by fd), its descriptor (owned by the handle, close-on-exec).
 * For NULL: NULL, 0, NULL, -EINVAL. */
CONC_API void *conc_shm_buf(const conc_shm *s);
CONC_API size_t conc_shm_size(const conc_shm *s);
CONC_API const char *conc_shm_name(const conc_shm *s);
CONC_API int conc_shm_fd(const conc_shm *s);

/* conc_shm_attach_fd - map a whole segment from a descriptor received from
 * another process (the fd is duplicated; the caller keeps its own).  The
 * handle has no name and never unlinks anything.  Returns 0; -EINVAL (fd <
 * 0, not a non-empty regular file, or not open for writing); -EBADF;
 * -EMFILE; -ENOMEM. */
CONC_API int conc_shm_attach_fd(conc_shm **out, int fd);

/*
 * conc_shm_free - SharedMemory.close() and the end of the handle: unmap,
 * close the descriptor and free the handle; the creator (the process that
 * created it, not a fork child holding a copy of the handle) also unlinks
 * the name unless it was created with CONC_SHM_KEEP or already unlinked.
 * NULL is a no-op.
 */
CONC_API void conc_shm_free(conc_shm *s);

/* conc_shm_unlink - SharedMemory.unlink(): remove the name now (mappings
 * stay valid); any process may call it.  Returns 0; -ENOENT when the name
 * is gone already or now names another segment; -EACCES; -EINVAL for NULL
 * or an anonymous segment. */
CONC_API int conc_shm_unlink(conc_shm *s);

/* conc_shm_unlink_name - remove a segment by name (same name rules as
 * conc_shm_open).  Returns 0, -ENOENT, -EINVAL, -EACCES. */
CONC_API int conc_shm_unlink_name(const char *name);

/*
 * conc_shm_cleanup - remove the segments with conc-generated names whose
 * creating process no longer runs (left by a crash).  Exactly: every entry
 * of /dev/shm named "conc-PID-N" (decimal PID and N > 0 without leading
 * zeros, nothing else: as conc generates them) that is a regular file owned
 * by the caller's effective uid, with PID not the caller's and kill(PID, 0)
 * failing with ESRCH, is unlinked (if it is still the same file when
 * unlinked).  Processes that run, zombies not yet reaped
 * and other users' processes (EPERM) keep their segments.  Limits: a crashed
 * creator whose pid was reused by a running process is cleaned only once
 * that process ends; kill() sees the caller's pid namespace, so do not run
 * it against a /dev/shm shared with another pid namespace.  conc never runs
 * it by itself: call it at start-up (or from a supervisor).  Returns how
 * many were removed, or a negative errno (-ENOENT without /dev/shm).
 */
CONC_API int conc_shm_cleanup(void);

#ifdef __cplusplus
}
#endif
#endif /* CONC_SHM_H */
