/* manager_wire.h - the manager's messages (src/manager_wire.c); not installed.
 *
 * Every request and answer travels as one conc_conn message (an 8-byte
 * length, then the bytes).  All integers are little-endian.  The server
 * speaks first: CONC__MGR_HELLO.
 *
 * Request: a 48-byte head, then nargs byte strings, each a u32 length and
 * its bytes, filling the message exactly.
 *   0  u8  version (CONC__MGR_VERSION)
 *   1  u8  op (enum conc__mgr_op)
 *   2  u16 reserved, zero
 *   4  u32 nargs
 *   8  u64 id       the object (0: none)
 *  16  i64 timeout  ns left, or -1: no limit
 *  24  i64 a, 32 i64 b, 40 i64 c   the op's numbers; c of every op but
 *                                   CREATE is the largest answer the client
 *                                   takes (0: the server's message size)
 *
 * Answer: a 16-byte head, then nargs byte strings as above.
 *   0  i32 status   >= 0, or a negative errno
 *   4  u32 nargs
 *   8  i64 value
 */
#ifndef CONC_MANAGER_WIRE_H
#define CONC_MANAGER_WIRE_H

#include <stddef.h>
#include <stdint.h>

#define CONC__MGR_VERSION 1

/* The server's first message on every connection, right after the authkey
 * handshake (or at once without a key), before any request.  A client with
 * a key that gets it where a challenge should be knows that the server has
 * no key; a client without one that gets a challenge knows that it has. */
#define CONC__MGR_HELLO "#CONC-MANAGER-1#"
#define CONC__MGR_HELLO_LEN (sizeof CONC__MGR_HELLO - 1)
/* How the challenge of a keyed server (conc/listener.h's handshake)
 * begins: a client without a key that gets it knows the server has one. */
#define CONC__MGR_CHALLENGE_START "#CONC-CHALLENGE-"
#define CONC__MGR_CHALLENGE_START_LEN (sizeof CONC__MGR_CHALLENGE_START - 1)
#define CONC__MGR_REQ_HEAD 48
#define CONC__MGR_ANS_HEAD 16

enum conc__mgr_op {
    CONC__MGR_PING = 1,      /* answer: value the server's message size (0: unknown) */
    CONC__MGR_SHUTDOWN,
    CONC__MGR_CREATE,        /* a type, b n, c size; arg0 name ("" none), arg1 (may be
                                absent) a Value's or Array's typecode, one byte; arg2
                                (may be absent; only after a typecode) the object's
                                first value, exactly its bytes (items little-endian),
                                used when the request makes the object (a named one
                                found keeps its value); the answer carries the
                                typecode as its one string */
    CONC__MGR_CREATE_USER,   /* arg0 typeid, arg1 name, arg2 argument */
    CONC__MGR_OPEN,          /* id; answer: status type, value id, the typecode (if
                                any) as its one string */
    CONC__MGR_D_SET,         /* arg0 key, arg1 value */
    CONC__MGR_D_GET,         /* arg0 key */
    CONC__MGR_D_DEL,         /* arg0 key */
    CONC__MGR_D_LEN,
    CONC__MGR_D_KEYS,
    CONC__MGR_D_ITEMS,
    CONC__MGR_D_UPDATE,      /* key, value, ... (an even count) */
    CONC__MGR_D_POP,         /* arg0 key */
    CONC__MGR_D_SETDEFAULT,  /* arg0 key, arg1 default */
    CONC__MGR_L_APPEND,      /* arg0 */
    CONC__MGR_L_EXTEND,      /* args */
    CONC__MGR_L_GET,         /* a index */
    CONC__MGR_L_SET,         /* a index, arg0 */
    CONC__MGR_L_POP,         /* a index */
    CONC__MGR_L_INSERT,      /* a index, arg0 */
    CONC__MGR_L_LEN,
    CONC__MGR_L_SLICE,       /* a start, b stop */
    CONC__MGR_V_GET,
    CONC__MGR_V_SET,         /* arg0 */
    CONC__MGR_A_LEN,
    CONC__MGR_A_GET,         /* a index */
    CONC__MGR_A_SET,         /* a index, arg0 */
    CONC__MGR_Q_PUT,         /* arg0, timeout */
    CONC__MGR_Q_GET,         /* timeout */
    CONC__MGR_Q_SIZE,
    CONC__MGR_Q_TASK_DONE,
    CONC__MGR_Q_JOIN,        /* timeout */
    CONC__MGR_ACQUIRE,       /* timeout */
    CONC__MGR_RELEASE,
    CONC__MGR_E_SET,
    CONC__MGR_E_CLEAR,
    CONC__MGR_E_IS_SET,
    CONC__MGR_E_WAIT,        /* timeout */
    CONC__MGR_C_WAIT,        /* timeout */
    CONC__MGR_C_NOTIFY,      /* a n (-1: all) */
    CONC__MGR_B_WAIT,        /* timeout */
    CONC__MGR_B_ABORT,
    CONC__MGR_B_RESET,
    CONC__MGR_B_INFO,        /* answer: status parties, value n_waiting | broken << 32 */
    CONC__MGR_CALL,          /* arg0 method, arg1 argument */
    CONC__MGR_Q_INFO,        /* answer: status maxsize (0: no bound), value qsize */
    CONC__MGR_OP_END
};

/* A byte string inside a checked message. */
struct conc__mgr_str {
    const uint8_t *p;
    size_t len;
};

struct conc__mgr_req {
    uint8_t op;
    uint32_t nargs;
    uint64_t id;
    int64_t timeout;
    int64_t a, b, c;
    const uint8_t *args;    /* the strings, checked: walk them with conc__mgr_next */
    size_t args_len;
};

struct conc__mgr_ans {
    int32_t status;
    uint32_t nargs;
    int64_t value;
    const uint8_t *args;
    size_t args_len;
};

/* Checks a request and fills *r (pointing into buf).  Returns 0, or
 * -EPROTO for a bad version, op, reserved field, timeout or string layout
 * (a length past the end, bytes left over, more strings than fit). */
int conc__mgr_req_parse(const void *buf, size_t len, struct conc__mgr_req *r);

/* Checks an answer and fills *a.  Returns 0 or -EPROTO (also for a status
 * under -4095). */
int conc__mgr_ans_parse(const void *buf, size_t len, struct conc__mgr_ans *a);

/* The next string of a checked message: *pos starts at 0.  Returns 0, or
 * -EPROTO when none is left (never reads past args + args_len). */
int conc__mgr_next(const uint8_t *args, size_t args_len, size_t *pos, struct conc__mgr_str *s);

/* The size of a message with head bytes of head and these strings. */
size_t conc__mgr_size(size_t head, const struct conc__mgr_str *s, size_t n);

/* Writes a request (head from *r, strings s[0..n)) into buf, which holds
 * conc__mgr_size(CONC__MGR_REQ_HEAD, s, n) bytes. */
void conc__mgr_req_write(uint8_t *buf, const struct conc__mgr_req *r,
                         const struct conc__mgr_str *s, size_t n);

/* Writes an answer head; the strings follow with conc__mgr_put_str. */
void conc__mgr_ans_write_head(uint8_t *buf, int32_t status, uint32_t nargs, int64_t value);

/* The size in bytes of an item of a Value or Array typecode (as
 * multiprocessing.sharedctypes: c b B h H i I l L q Q f d, with this
 * machine's C sizes), or 0 for any other byte.  Typed items are stored
 * little-endian, so machines of either byte order agree. */
size_t conc__mgr_typecode_size(int tc);

/* Writes one string at buf + *pos and moves *pos past it. */
void conc__mgr_put_str(uint8_t *buf, size_t *pos, const void *p, size_t len);

#endif
