/*
 * conc/manager.h - multiprocessing.managers: a server process that owns
 * shared objects (dict, list, namespace, Value, Array, Queue,
 * JoinableQueue, Lock, RLock, Semaphore, BoundedSemaphore, Event,
 * Condition, Barrier, and types the program registers) and proxies through
 * which any process, on this machine or another one, uses them.
 *
 * Part of libconc_remote (link with -lconc_remote -lconc).
 *
 * A manager (conc_manager) is made with conc_manager_new and then either
 *   - started: conc_manager_start runs the server in a child process (it
 *     dies with its parent) and this handle is its first client;
 *   - served: conc_manager_serve_forever runs the server in the calling
 *     thread until a client asks it to shut down;
 *   - connected: conc_manager_connect reaches a server that runs already,
 *     by address (Python's BaseManager.connect).
 *
 * Addresses are the texts of conc/listener.h (conc_address_parse):
 * a path ("/run/app.sock", any text with a '/', or a bare file name
 * without a ':') is a Unix socket (mode 0600); "@name" an abstract Unix
 * socket; any other text, "HOST:SERVICE" or "[IPV6]:SERVICE" (SERVICE a
 * port or a service name such as "http"), is TCP.  With no address a started manager listens on a Unix socket in a
 * private directory (mode 0700, the socket 0600) that conc_manager_shutdown
 * removes.  A TCP manager needs an authkey (it refuses to start without
 * one, -EINVAL); every connection to it passes the authkey handshake of
 * conc/listener.h (HMAC-SHA256 challenges both ways) before any request.
 * An authkey on a Unix socket is checked the same way.
 *
 * Proxies (conc_proxy): conc_manager_create makes an object in the server
 * (or finds the named one) and returns a proxy to it.  Each proxy has its
 * own connection, so a proxy blocked in Queue.get or Lock.acquire does not
 * hold up the others (a server serves at most 1024 connections at once:
 * one past that is closed at once, and the call that made it fails with
 * -ECONNRESET; a server out of descriptors leaves the next connection
 * waiting until one is free, up to the 10 s a connection is given
 * (-ETIMEDOUT), and serves the others meanwhile).  The server serves its
 * connections from a fixed set of threads (opts.threads: by default one
 * per CPU, at most 4; the thread that runs the server is one of them),
 * each an epoll loop (the hub of conc/hub.h), the connections dealt to
 * them in turn: a connection is a greenlet, and a call that must wait
 * parks only its greenlet, so one client's blocking call never holds up
 * another client, and no thread is made per connection.  An idle server
 * makes no system call.  One
 * proxy runs one call at a time: calls from several threads on one proxy
 * take turns (a thread that must notify a Condition another thread waits
 * on through the same proxy needs a proxy of its own: conc_proxy_dup).
 * A proxy inherited by a forked child opens a connection of its own on its
 * first call in the child.  Called from a coroutine, a proxy call parks
 * only the coroutine.
 *
 * Ownership: a Lock, RLock, Semaphore, BoundedSemaphore or Condition is
 * acquired by a proxy's connection.  When a connection ends (the proxy is
 * freed, its process dies or is killed), the server releases everything it
 * held: another client gets the lock.  A Barrier waited on by a connection
 * that ends is broken (the other waiters get -EPIPE, as Python's
 * BrokenBarrierError).
 *
 * Faults: once the server is gone (killed, shut down) every proxy call
 * fails at once with -ECONNRESET or -EPIPE; none hangs.  Over TCP, a
 * machine that vanishes without closing its connections (power lost, the
 * network cut) is noticed by TCP keepalives, which both ends arm, within
 * about 30 s: the server then releases what that client held, and the
 * proxy's call fails with -ECONNRESET.  A server that runs no more but
 * keeps its connections (stopped, its thread held up by a type's
 * callback): a call with a timeout whose answer has not come 10 s after
 * its timeout fails with -ECONNRESET, and its proxy is broken and its
 * connection closed (the server releases what it held once it runs);
 * calls without a timeout, and Condition.wait (which takes the lock back
 * however long another client holds it), wait as long as the connection
 * lives and the server runs: every 5 s without an answer such a call
 * opens a new connection to the server, and when the server does not
 * greet it within 10 s the call fails the same way (a server whose
 * threads a registered type's callback holds up in the kernel that long
 * counts as not running).  A proxy does not
 * reconnect by itself: make the manager handle again (conc_manager_connect)
 * and the proxies again (conc_manager_create with the object's name) when
 * a server was restarted.
 *
 * Objects live in the server until it shuts down.  Byte keys and values
 * cross the process boundary; every message is at most the manager's
 * message size (CONC_MANAGER_MSG_MAX unless set): a larger request fails
 * with -EMSGSIZE before it is sent, and an answer larger than this
 * handle's message size (a value another client with a larger one
 * stored) is -EMSGSIZE from the server, which then takes nothing out: a
 * Queue.get, a list's or a dict's pop leaves the message or the item in
 * place for a client that can take it, and the proxy stays usable.  The server checks every field of
 * every request; a malformed or oversized one closes only the connection
 * that sent it.
 *
 * Timeouts follow conc/time.h: CONC_FOREVER blocks, 0 tries once (-EAGAIN
 * when the call cannot succeed now), t > 0 gives -ETIMEDOUT after t
 * seconds; a negative timeout other than CONC_FOREVER, or NaN, is -EINVAL.
 * Each waiting call has an _until form with an absolute CLOCK_MONOTONIC
 * deadline in ns (the server gets the time that is left, so the clocks of
 * two machines need not agree).
 *
 * Errors common to every proxy call (not repeated below): -EINVAL for a
 * NULL proxy or pointer argument, or a call on a proxy of another type;
 * -ECONNRESET or -EPIPE when the server is gone (the proxy stays broken);
 * -EMSGSIZE when the request or its answer would be larger than the
 * message size (see above: nothing is taken out then);
 * -EPROTO when the server's answer is malformed or not one the call can
 * have (a count below 0, a status other than the ones documented, a
 * dict's items as an odd number of strings); -ENOMEM.
 *
 * Python reference: multiprocessing.managers (SyncManager, BaseManager,
 * BaseProxy).  Python's exceptions become codes: KeyError -ENOENT,
 * IndexError -ERANGE, queue.Empty / queue.Full -EAGAIN (timeout 0) or
 * -ETIMEDOUT, RuntimeError on releasing an unowned lock -EPERM, ValueError
 * on a BoundedSemaphore released too often -EOVERFLOW,
 * BrokenBarrierError -EPIPE, AuthenticationError -EACCES.
 */
#ifndef CONC_MANAGER_H
#define CONC_MANAGER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "conc/errors.h"
#include "conc/time.h"

#ifdef __cplusplus
extern "C" {
#endif

/* conc_manager - a manager: a started or served server, or a client of one. */
typedef struct conc_manager conc_manager;

/* conc_proxy - a proxy to one object in a manager's server. */
typedef struct conc_proxy conc_proxy;

/* The default (and largest settable) size of one request or answer: 64 MiB. */
#define CONC_MANAGER_MSG_MAX ((size_t)64 << 20)

/* The most threads a server runs its connections in (opts.threads). */
#define CONC_MANAGER_THREADS_MAX 16

/* The longest address (a Unix socket path, or HOST:PORT). */
#define CONC_MANAGER_ADDR_MAX 107

/* The longest name of a registered type, of a named object and of a
 * user type's method, in bytes (without the terminating NUL). */
#define CONC_MANAGER_NAME_MAX 255

/* Options of conc_manager_new; all zero (or NULL) means the defaults. */
typedef struct conc_manager_opts {
    uint32_t size;           /* sizeof(conc_manager_opts), or 0 */
    const char *address;     /* NULL: a Unix socket in a private directory
                                (start); required for serve_forever and
                                connect.  "/path" Unix, "HOST:PORT" TCP
                                (PORT 0 picks a free port when serving;
                                a service name, "host:http", is TCP too) */
    const void *authkey;     /* the shared secret; NULL: none (Unix only) */
    size_t authkey_len;      /* its length, 1 to 1024 bytes */
    size_t max_message;      /* 0: CONC_MANAGER_MSG_MAX; else 64 bytes to it */
    unsigned threads;        /* threads the server (started or served) runs
                                its connections in, 1 to
                                CONC_MANAGER_THREADS_MAX; 0: one per CPU,
                                at most 4.  One whatever is asked when
                                types are registered (their callbacks run
                                in one thread) */
} conc_manager_opts;

#define CONC_MANAGER_OPTS_INIT { .size = sizeof(conc_manager_opts) }

/* The types of shared objects (conc_manager_create). */
typedef enum conc_proxy_type {
    CONC_PROXY_DICT = 1,        /* dict of byte keys to byte values */
    CONC_PROXY_LIST,            /* list of byte values */
    CONC_PROXY_NAMESPACE,       /* Namespace: attributes by name */
    CONC_PROXY_VALUE,           /* Value: n bytes (n = 1 to 4096), zero at first */
    CONC_PROXY_ARRAY,           /* Array: n items of size bytes each, zero at first */
    CONC_PROXY_QUEUE,           /* Queue(maxsize = n; 0: no bound) of byte messages */
    CONC_PROXY_JOINABLE_QUEUE,  /* JoinableQueue(maxsize = n) */
    CONC_PROXY_LOCK,            /* Lock */
    CONC_PROXY_RLOCK,           /* RLock */
    CONC_PROXY_SEMAPHORE,       /* Semaphore(value = n) */
    CONC_PROXY_BOUNDED_SEMAPHORE, /* BoundedSemaphore(value = n) */
    CONC_PROXY_EVENT,           /* Event */
    CONC_PROXY_CONDITION,       /* Condition (with its own RLock) */
    CONC_PROXY_BARRIER,         /* Barrier(parties = n, n >= 1) */
    CONC_PROXY_USER,            /* a registered type (conc_manager_create_user) */
} conc_proxy_type;

/*
 * conc_manager_type - a type the program registers (BaseManager.register):
 * C callbacks the server calls.  They run in the server process (a started
 * manager's child is a fork of the program, so the function pointers are
 * valid there), in the greenlet of the calling connection (on a stack of
 * its own of 256 KiB: keep large buffers on the heap), in one thread (a
 * server with registered types runs every connection in the thread that
 * runs it, whatever opts.threads says); the server runs one call on an
 * object at a time.  A callback
 * that blocks the thread in the kernel holds up every client; the blocking
 * calls of conc (locks, queues, sleeps, descriptor waits) park only the
 * connection's greenlet.
 *   create   make an object from the creation argument (arg, len); store it
 *            in *obj and return 0, or return a negative errno (the client's
 *            conc_manager_create_user returns it).
 *   call     run method (a NUL-terminated name) with the argument bytes;
 *            on success store a malloc'd answer in *out (or NULL) and its
 *            length in *out_len and return 0 or a positive value; or return
 *            a negative errno.  The client gets the value and the answer.
 *   destroy  free the object when the server shuts down (may be NULL).
 * ctx is passed to each callback.
 */
typedef struct conc_manager_type {
    uint32_t size;           /* sizeof(conc_manager_type), or 0 */
    int (*create)(void **obj, const void *arg, size_t len, void *ctx);
    int (*call)(void *obj, const char *method, const void *arg, size_t len,
                void **out, size_t *out_len, void *ctx);
    void (*destroy)(void *obj, void *ctx);
    void *ctx;
} conc_manager_type;

/* One byte string of a conc_proxy_items result. */
typedef struct conc_proxy_bytes {
    const void *data;
    size_t len;
} conc_proxy_bytes;

/* A list of byte strings (dict keys, dict items as key, value, key, value,
 * ..., a list slice): one malloc'd block holding the strings too; release
 * it with free(). */
typedef struct conc_proxy_items {
    size_t count;
    conc_proxy_bytes item[];
} conc_proxy_items;

/* ---------------------------------------------------------------- manager */

/*
 * conc_manager_new - BaseManager(address, authkey): a manager handle, not
 * yet started, served or connected.  The options are copied (the authkey
 * too).  Returns 0; -EINVAL for a NULL out, an address longer than
 * CONC_MANAGER_ADDR_MAX or not of either form, a TCP address without an
 * authkey, an authkey_len of 0 with a non-NULL authkey (or over 1024), or a
 * max_message out of range, threads over CONC_MANAGER_THREADS_MAX;
 * -ENOMEM.
 */
CONC_API int conc_manager_new(conc_manager **out, const conc_manager_opts *opts);

/*
 * conc_manager_register - BaseManager.register(typeid, callable): make the
 * type typeid (1 to CONC_MANAGER_NAME_MAX bytes) known to the server this
 * handle will start or serve.  The callbacks are copied.  Returns 0;
 * -EINVAL for NULL arguments, a bad name or NULL create/call; -EEXIST when
 * typeid is registered already; -EALREADY once the server was started or
 * served; -ENOMEM.
 */
CONC_API int conc_manager_register(conc_manager *m, const char *typeid,
                                   const conc_manager_type *type);

/*
 * conc_manager_start - BaseManager.start(): start the server in a child
 * process and connect to it.  The child dies with its parent (also when the
 * parent is killed); it ignores SIGINT (a Ctrl-C is the parent's to
 * handle), and SIGTERM makes it stop serving and remove its socket.  Returns once the server listens: 0; -EINVAL for
 * NULL; -EALREADY when started, served or connected before; -EADDRINUSE
 * when the address is taken; the errors of socket(2), bind(2) and of
 * starting a process; -ENOMEM.
 */
CONC_API int conc_manager_start(conc_manager *m);

/*
 * conc_manager_serve_forever - Server.serve_forever(): run the server in
 * the calling thread (its connections are greenlets of the thread's hub,
 * which is freed afterwards when nothing else of it runs) until a client calls conc_manager_shutdown on its
 * handle (or another thread of this process calls it on m).  Returns 0
 * after the shutdown, every connection closed and every object freed;
 * -EINVAL for NULL or a manager without an address; -EALREADY when
 * started, served or connected before; -EADDRINUSE; the errors of
 * socket(2) and bind(2); -ENOMEM.  A Unix socket it created is removed
 * when it returns.
 */
CONC_API int conc_manager_serve_forever(conc_manager *m);

/*
 * conc_manager_connect - BaseManager.connect(): connect to the server at
 * the manager's address.  Returns 0; -EINVAL for NULL or no address;
 * -EALREADY when started, served or connected before; -ENOENT or
 * -ECONNREFUSED when nothing listens there; -EACCES when the authkey
 * handshake fails (a wrong key, a server that has a key and this handle
 * none, or this handle a key and the server none: the server speaks first,
 * so either case is told at once); -ETIMEDOUT when the server does not
 * answer within 10 s; -ECONNRESET when the server closed the connection
 * (died, or dropped it) before the handshake ended; -EPROTO when the peer
 * does not speak this protocol or version; the errors of connect(2).
 * The handle learns the server's message size: when it is smaller than
 * the handle's, a request larger than it fails with -EMSGSIZE before it
 * is sent (the server would close the connection).
 */
CONC_API int conc_manager_connect(conc_manager *m);

/*
 * conc_manager_address - BaseManager.address: the address the server
 * listens on (for a TCP manager served on port 0, the port it got), as a
 * string for opts.address.  snprintf-style: returns the full length and
 * copies what fits, NUL-terminated; -EINVAL for NULL m, a NULL buf with a
 * size, or a manager that has no address yet.
 */
CONC_API int conc_manager_address(const conc_manager *m, char *buf, size_t size);

/*
 * conc_manager_pid - the process id of the server child of a started
 * manager; 0 for any other manager or NULL.
 */
CONC_API pid_t conc_manager_pid(const conc_manager *m);

/*
 * conc_manager_shutdown - BaseManager.shutdown(): ask the server to stop.
 * A started manager then waits for its child to exit (and kills it if it
 * does not within a second) and removes its private directory.  Every
 * proxy of the server fails with -ECONNRESET or -EPIPE afterwards.
 * Returns 0 (also when it was stopped before, or the server was gone
 * already); -EINVAL for NULL; -ENOTCONN when the manager was never started,
 * served or connected.
 */
CONC_API int conc_manager_shutdown(conc_manager *m);

/*
 * conc_manager_free - shut a started manager down (as
 * conc_manager_shutdown) and free the handle.  Free its proxies first.
 * NULL is fine.
 */
CONC_API void conc_manager_free(conc_manager *m);

/*
 * conc_manager_create - SyncManager.dict(), .list(), .Lock(), ...: make an
 * object of the type in the server and store a new proxy to it in *out.
 * name NULL makes a new object; a name (1 to CONC_MANAGER_NAME_MAX bytes)
 * finds the object made with that name before, or makes it (so every
 * process that asks for the name gets the same object, as a typeid
 * registered with a shared callable in Python).  n is the size parameter
 * of the type (see conc_proxy_type: Value size, Array length, Queue
 * maxsize, Semaphore value, Barrier parties; 0 for the others), size the
 * Array's item size (1 to 4096, n * size at most 64 MiB; 0 for the
 * others).  Returns 0; -EINVAL for
 * NULL m or out, an unknown type (or CONC_PROXY_USER), a bad name or n or
 * size out of range; -EEXIST when the named object exists with another
 * type or parameters; -ENOTCONN when m is not started or connected; the
 * common errors.
 */
CONC_API int conc_manager_create(conc_manager *m, conc_proxy **out, conc_proxy_type type,
                                 const char *name, uint64_t n, uint64_t size);

/*
 * conc_manager_value, conc_manager_array - SyncManager.Value(typecode, 0)
 * and SyncManager.Array(typecode, n): a Value or an Array of n items of a
 * typecode of multiprocessing.sharedctypes (array module letters), zero at
 * first:
 *   'c' char (1 byte)          'b' signed char     'B' unsigned char
 *   'h' short    'H' unsigned short    'i' int     'I' unsigned int
 *   'l' long     'L' unsigned long     'q' long long   'Q' unsigned long long
 *   'f' float    'd' double
 * with this machine's C sizes; the server keeps the typecode, so every
 * proxy to the object (conc_manager_open, conc_proxy_dup, the same name)
 * has it (conc_proxy_typecode).  The typed calls below read and write
 * items as numbers (stored little-endian, so machines of either byte order
 * agree); the byte calls (conc_proxy_value_get, ...) still see the bytes.
 * name as for conc_manager_create.  Returns 0; -EINVAL for an unknown
 * typecode, n 0 or too large (as conc_manager_create); -EEXIST when the
 * named object exists with another type, size or typecode; the errors of
 * conc_manager_create.
 */
CONC_API int conc_manager_value(conc_manager *m, conc_proxy **out, const char *name,
                                char typecode);
CONC_API int conc_manager_array(conc_manager *m, conc_proxy **out, const char *name,
                                char typecode, uint64_t n);

/*
 * conc_manager_value_int, conc_manager_value_float - SyncManager.Value(
 * typecode, x): a typed Value (as conc_manager_value) whose first value is
 * x.  conc_manager_array_int, conc_manager_array_float -
 * SyncManager.Array(typecode, [x0, x1, ...]): a typed Array of n items
 * whose first values are xs[0..n).  The value travels in the request that
 * makes the object, so no proxy (no other process asking for the same
 * name) ever sees the object without it.  When name finds an object made
 * before, that object is returned as it is (its value is not set again).
 * Integers go into any typecode ('f' and 'd' take them converted, as
 * Python does), floats into 'f' and 'd' only.  Returns 0; -EINVAL for an
 * unknown typecode, a NULL xs, n 0 or over 1048576, a float for an
 * integer typecode; -ERANGE for a number the typecode cannot hold (nothing
 * is made); the errors of conc_manager_value and conc_manager_array (a
 * server older than this call refuses the request with -EINVAL).
 */
CONC_API int conc_manager_value_int(conc_manager *m, conc_proxy **out, const char *name,
                                    char typecode, int64_t x);
CONC_API int conc_manager_value_float(conc_manager *m, conc_proxy **out, const char *name,
                                      char typecode, double x);
CONC_API int conc_manager_array_int(conc_manager *m, conc_proxy **out, const char *name,
                                    char typecode, const int64_t *xs, uint64_t n);
CONC_API int conc_manager_array_float(conc_manager *m, conc_proxy **out, const char *name,
                                      char typecode, const double *xs, uint64_t n);

/*
 * conc_manager_create_user - make an object of a registered type (its
 * create callback gets arg, len) or, with a name, find the one made with
 * that name before.  Returns 0; -ENOENT when the server has no type
 * typeid; -EEXIST when the named object has another type; the code the
 * create callback returned; the errors of conc_manager_create.
 */
CONC_API int conc_manager_create_user(conc_manager *m, conc_proxy **out, const char *typeid,
                                      const char *name, const void *arg, size_t len);

/*
 * conc_manager_open - a new proxy to the object whose id (conc_proxy_id)
 * another process passed.  Returns 0; -ENOENT when the server has no
 * object with that id; the errors of conc_manager_create.
 */
CONC_API int conc_manager_open(conc_manager *m, conc_proxy **out, uint64_t id);

/* ------------------------------------------------------------------ proxy */

/* conc_proxy_id - the object's id in its server (never 0); 0 for NULL. */
CONC_API uint64_t conc_proxy_id(const conc_proxy *p);

/* conc_proxy_kind - the object's type; 0 for NULL. */
CONC_API conc_proxy_type conc_proxy_kind(const conc_proxy *p);

/* conc_proxy_typecode - a typed Value's or Array's typecode ('i', 'd',
 * ...); 0 for an untyped one, any other object, or NULL. */
CONC_API char conc_proxy_typecode(const conc_proxy *p);

/*
 * conc_proxy_dup - a second proxy to the same object, with a connection of
 * its own (for another thread).  Returns 0; the common errors.
 */
CONC_API int conc_proxy_dup(conc_proxy **out, conc_proxy *p);

/* conc_proxy_free - close the proxy's connection (the server releases what
 * it held) and free it.  NULL is fine. */
CONC_API void conc_proxy_free(conc_proxy *p);

/* ---- dict (CONC_PROXY_DICT) ---------------------------------------------
 * Keys and values are byte strings (of any length the message size allows,
 * 0 included).  Values come back in a malloc'd buffer (*val, free it; at
 * least 1 byte is allocated, so an empty value is not NULL) with its length
 * in *val_len; they are written only on success.
 */

/* d[key] = val.  Returns 0. */
CONC_API int conc_proxy_dict_set(conc_proxy *p, const void *key, size_t key_len,
                                 const void *val, size_t val_len);
/* d[key].  Returns 0; -ENOENT when key is not in d. */
CONC_API int conc_proxy_dict_get(conc_proxy *p, const void *key, size_t key_len,
                                 void **val, size_t *val_len);
/* del d[key].  Returns 0; -ENOENT when key is not in d. */
CONC_API int conc_proxy_dict_del(conc_proxy *p, const void *key, size_t key_len);
/* len(d).  Returns the count. */
CONC_API ssize_t conc_proxy_dict_len(conc_proxy *p);
/* list(d.keys()) in insertion order.  Returns 0 and stores *out (free it). */
CONC_API int conc_proxy_dict_keys(conc_proxy *p, conc_proxy_items **out);
/* list(d.items()) in insertion order: key, value, key, value, ... (count is
 * twice the number of items).  Returns 0 and stores *out (free it). */
CONC_API int conc_proxy_dict_items(conc_proxy *p, conc_proxy_items **out);
/* d.update(pairs): kv holds n_pairs keys and values, key, value, ...; they
 * are set in that order in one step (no other call sees half of them).
 * Returns 0. */
CONC_API int conc_proxy_dict_update(conc_proxy *p, const conc_proxy_bytes *kv, size_t n_pairs);
/* d.pop(key): remove key and return its value.  Returns 0; -ENOENT.  A
 * pop whose client the server finds gone when it answers (killed, or
 * closed, before the answer could be written) takes nothing: the entry
 * goes back in its place in the order (unless the key was set again
 * meanwhile: the new value stays). */
CONC_API int conc_proxy_dict_pop(conc_proxy *p, const void *key, size_t key_len,
                                 void **val, size_t *val_len);
/* d.setdefault(key, dflt): the value of key, set to dflt first when key is
 * not in d.  Returns 1 when it set dflt, 0 when key was there. */
CONC_API int conc_proxy_dict_setdefault(conc_proxy *p, const void *key, size_t key_len,
                                        const void *dflt, size_t dflt_len,
                                        void **val, size_t *val_len);

/* ---- list (CONC_PROXY_LIST) ---------------------------------------------
 * Indexes are Python's: a negative index counts from the end.  An index
 * out of range is -ERANGE (IndexError).  Values come back as for dicts.
 */

/* l.append(val).  Returns 0. */
CONC_API int conc_proxy_list_append(conc_proxy *p, const void *val, size_t len);
/* l.extend(vals): appends n values in one step.  Returns 0. */
CONC_API int conc_proxy_list_extend(conc_proxy *p, const conc_proxy_bytes *vals, size_t n);
/* l[index].  Returns 0; -ERANGE. */
CONC_API int conc_proxy_list_get(conc_proxy *p, int64_t index, void **val, size_t *len);
/* l[index] = val.  Returns 0; -ERANGE. */
CONC_API int conc_proxy_list_set(conc_proxy *p, int64_t index, const void *val, size_t len);
/* l.pop(index) (l.pop() is index -1).  Returns 0; -ERANGE (also when l is
 * empty).  A pop whose client is gone when the server answers takes
 * nothing: the item goes back at its index (as a Queue.get's message). */
CONC_API int conc_proxy_list_pop(conc_proxy *p, int64_t index, void **val, size_t *len);
/* l.insert(index, val): as Python, an index past either end inserts at that
 * end.  Returns 0. */
CONC_API int conc_proxy_list_insert(conc_proxy *p, int64_t index, const void *val, size_t len);
/* len(l).  Returns the count. */
CONC_API ssize_t conc_proxy_list_len(conc_proxy *p);
/* l[start:stop] with Python's clamping of negative and large bounds.
 * Returns 0 and stores *out (free it). */
CONC_API int conc_proxy_list_slice(conc_proxy *p, int64_t start, int64_t stop,
                                   conc_proxy_items **out);

/* ---- namespace (CONC_PROXY_NAMESPACE) ----------------------------------
 * Attributes by name (a NUL-terminated string, 1 to CONC_MANAGER_NAME_MAX
 * bytes; longer or empty is -EINVAL).
 */

/* ns.name = val.  Returns 0. */
CONC_API int conc_proxy_ns_set(conc_proxy *p, const char *name, const void *val, size_t len);
/* ns.name.  Returns 0; -ENOENT (AttributeError). */
CONC_API int conc_proxy_ns_get(conc_proxy *p, const char *name, void **val, size_t *len);
/* del ns.name.  Returns 0; -ENOENT. */
CONC_API int conc_proxy_ns_del(conc_proxy *p, const char *name);

/* ---- Value (CONC_PROXY_VALUE) and Array (CONC_PROXY_ARRAY) -------------- */

/* v.value: copies the value's bytes into buf.  Returns its size; -EMSGSIZE
 * when cap is smaller (nothing is copied). */
CONC_API ssize_t conc_proxy_value_get(conc_proxy *p, void *buf, size_t cap);
/* v.value = data: len must be the value's size (else -EINVAL).  Returns 0. */
CONC_API int conc_proxy_value_set(conc_proxy *p, const void *data, size_t len);
/* len(a).  Returns the number of items. */
CONC_API ssize_t conc_proxy_array_len(conc_proxy *p);
/* a[index] into buf.  Returns the item size; -ERANGE; -EMSGSIZE when cap
 * is smaller than an item. */
CONC_API ssize_t conc_proxy_array_get(conc_proxy *p, int64_t index, void *buf, size_t cap);
/* a[index] = data: len must be the item size (else -EINVAL).  Returns 0;
 * -ERANGE. */
CONC_API int conc_proxy_array_set(conc_proxy *p, int64_t index, const void *data, size_t len);

/* ---- typed Value and Array (conc_manager_value, conc_manager_array) -----
 * Integer calls on an integer typecode ('c' counts as the byte 0 to 255),
 * float calls on 'f' and 'd'; an integer may also be set into 'f' or 'd'
 * (converted, as Python does).  Errors besides the common ones: -EINVAL
 * for an untyped proxy, a NULL out, a float call on an integer typecode or
 * an integer get on a float one; -ERANGE for a value the type cannot hold
 * (Python's ctypes would wrap it silently) or an Array index out of range;
 * -EOVERFLOW when an unsigned 'L' or 'Q' item is above INT64_MAX.
 */

/* v.value as an integer into *out.  Returns 0. */
CONC_API int conc_proxy_value_get_int(conc_proxy *p, int64_t *out);
/* v.value = x.  Returns 0. */
CONC_API int conc_proxy_value_set_int(conc_proxy *p, int64_t x);
/* v.value as a double into *out ('f' and 'd').  Returns 0. */
CONC_API int conc_proxy_value_get_float(conc_proxy *p, double *out);
/* v.value = x ('f' rounds to float).  Returns 0. */
CONC_API int conc_proxy_value_set_float(conc_proxy *p, double x);
/* a[index] as an integer (a negative index counts from the end).  Returns 0. */
CONC_API int conc_proxy_array_get_int(conc_proxy *p, int64_t index, int64_t *out);
/* a[index] = x.  Returns 0. */
CONC_API int conc_proxy_array_set_int(conc_proxy *p, int64_t index, int64_t x);
/* a[index] as a double ('f' and 'd').  Returns 0. */
CONC_API int conc_proxy_array_get_float(conc_proxy *p, int64_t index, double *out);
/* a[index] = x ('f' rounds to float).  Returns 0. */
CONC_API int conc_proxy_array_set_float(conc_proxy *p, int64_t index, double x);

/* ---- Queue, JoinableQueue ---------------------------------------------- */

/* q.put(data, timeout): waits while the queue is full.  Returns 0;
 * -EAGAIN / -ETIMEDOUT (Full). */
CONC_API int conc_proxy_queue_put(conc_proxy *p, const void *data, size_t len, double timeout);
CONC_API int conc_proxy_queue_put_until(conc_proxy *p, const void *data, size_t len,
                                        int64_t deadline);
/* q.get(timeout): the oldest message in a malloc'd buffer (*out, free it;
 * not NULL for an empty message) and its length in *len.  Returns 0;
 * -EAGAIN / -ETIMEDOUT (Empty).  A get whose client the server finds gone
 * when it answers (killed, or closed, before the answer could be written)
 * takes nothing: the message goes back to the head of the queue. */
CONC_API int conc_proxy_queue_get(conc_proxy *p, void **out, size_t *len, double timeout);
CONC_API int conc_proxy_queue_get_until(conc_proxy *p, void **out, size_t *len,
                                        int64_t deadline);
/* q.qsize().  Returns the number of messages. */
CONC_API ssize_t conc_proxy_queue_qsize(conc_proxy *p);
/* q.full(): whether the queue holds maxsize messages (never for a queue
 * made with maxsize 0, which has no bound).  Returns 1 or 0. */
CONC_API int conc_proxy_queue_full(conc_proxy *p);
/* q.empty().  Returns 1 or 0. */
CONC_API int conc_proxy_queue_empty(conc_proxy *p);
/* q.maxsize: the bound the queue was made with (0: none), also for a proxy
 * that did not make it (conc_manager_open, a name found).  Returns it.
 * These three are answered by one request (a server older than them
 * closes the connection: -ECONNRESET or -EPIPE). */
CONC_API ssize_t conc_proxy_queue_maxsize(conc_proxy *p);
/* JoinableQueue.task_done() (a plain Queue has it too: a SyncManager's
 * Queue and JoinableQueue are both a queue.Queue).  Returns 0; -EOVERFLOW
 * when called more often than messages were put (ValueError). */
CONC_API int conc_proxy_queue_task_done(conc_proxy *p);
/* JoinableQueue.join() (a plain Queue's too): waits until every message
 * put was task_done.
 * Returns 0; -EAGAIN / -ETIMEDOUT. */
CONC_API int conc_proxy_queue_join(conc_proxy *p, double timeout);
CONC_API int conc_proxy_queue_join_until(conc_proxy *p, int64_t deadline);

/* ---- Lock, RLock, Semaphore, BoundedSemaphore, Condition ---------------- */

/* acquire(timeout): the proxy's connection becomes the holder (RLock and
 * Condition: one level deeper when it holds it already).  Returns 0;
 * -EAGAIN / -ETIMEDOUT (Python's False); -EDEADLK for a Lock the connection
 * holds already (it would wait for itself for ever). */
CONC_API int conc_proxy_acquire(conc_proxy *p, double timeout);
CONC_API int conc_proxy_acquire_until(conc_proxy *p, int64_t deadline);
/* release().  A Lock may be released by any connection, as threading.Lock
 * by any thread (the holder's connection then holds nothing); an RLock or
 * a Condition only by the connection that holds it.  Returns 0; -EPERM for
 * a Lock nobody holds (RuntimeError), or an RLock or Condition the
 * connection does not hold; -EOVERFLOW for a BoundedSemaphore released
 * above its value.  A Semaphore's release by any connection matches an
 * acquire: a connection that ends gives back only the acquires of its own
 * that no release matched yet. */
CONC_API int conc_proxy_release(conc_proxy *p);

/* ---- Event ------------------------------------------------------------- */

/* e.set(), e.clear().  Return 0. */
CONC_API int conc_proxy_event_set(conc_proxy *p);
CONC_API int conc_proxy_event_clear(conc_proxy *p);
/* e.is_set().  Returns 1 or 0. */
CONC_API int conc_proxy_event_is_set(conc_proxy *p);
/* e.wait(timeout).  Returns 0 once set (a set() wakes every waiter of
 * that moment, also when a clear() follows at once, as threading.Event);
 * -EAGAIN / -ETIMEDOUT (False). */
CONC_API int conc_proxy_event_wait(conc_proxy *p, double timeout);
CONC_API int conc_proxy_event_wait_until(conc_proxy *p, int64_t deadline);

/* ---- Condition (acquire and release above) ----------------------------- */

/* c.wait(timeout): releases the condition's lock wholly, waits for a
 * notify, takes the lock back at the same depth.  Returns 0 when notified;
 * -ETIMEDOUT when the time ran out (Python's False; also for timeout 0);
 * -EPERM when the connection does not hold the lock. */
CONC_API int conc_proxy_cond_wait(conc_proxy *p, double timeout);
CONC_API int conc_proxy_cond_wait_until(conc_proxy *p, int64_t deadline);
/* c.notify(n), c.notify_all(): wake up to n (all) waiters, oldest first.
 * Returns 0; -EPERM when the connection does not hold the lock. */
CONC_API int conc_proxy_cond_notify(conc_proxy *p, unsigned n);
CONC_API int conc_proxy_cond_notify_all(conc_proxy *p);

/* ---- Barrier ----------------------------------------------------------- */

/* b.wait(timeout): returns the caller's index, 0 to parties - 1, once
 * parties callers wait; -EPIPE when the barrier is or becomes broken
 * (BrokenBarrierError: aborted, reset while waiting, a waiter's timeout
 * ran out or its connection ended); -ETIMEDOUT (the barrier is then broken,
 * as in Python; also for timeout 0). */
CONC_API int conc_proxy_barrier_wait(conc_proxy *p, double timeout);
CONC_API int conc_proxy_barrier_wait_until(conc_proxy *p, int64_t deadline);
/* b.abort(), b.reset().  Return 0. */
CONC_API int conc_proxy_barrier_abort(conc_proxy *p);
CONC_API int conc_proxy_barrier_reset(conc_proxy *p);
/* b.parties, b.n_waiting, b.broken (1 or 0).  Return the number. */
CONC_API int conc_proxy_barrier_parties(conc_proxy *p);
CONC_API int conc_proxy_barrier_n_waiting(conc_proxy *p);
CONC_API int conc_proxy_barrier_broken(conc_proxy *p);

/* ---- registered types (CONC_PROXY_USER) -------------------------------- */

/*
 * conc_proxy_call - call method (1 to CONC_MANAGER_NAME_MAX bytes) of a
 * registered type's object with the argument bytes; the answer comes back
 * in a malloc'd buffer (*out, free it; may be NULL when out is NULL: the
 * answer is then dropped) and its length in *out_len (may be NULL).
 * Returns what the type's call callback returned (>= 0), or its negative
 * code; the common errors (-EMSGSIZE for an answer larger than this
 * handle's message size comes after the callback ran).
 */
CONC_API int conc_proxy_call(conc_proxy *p, const char *method, const void *arg, size_t len,
                             void **out, size_t *out_len);

#ifdef __cplusplus
}
#endif
#endif /* CONC_MANAGER_H */
