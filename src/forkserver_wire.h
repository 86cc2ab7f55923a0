/*
 * forkserver_wire.h - what a starter and a forkserver or spawn child say to
 * each other over the child's socket (see forkserver.c).  Not installed;
 * the tests use it to play a hostile starter.
 *
 * The starter runs /proc/self/exe with CONC__ENV_NAME set to
 * "<mode>:<starter pid>:<socket fd>:<key fd>", the socket on CONC__CHILD_FD
 * and the read end of a pipe on CONC__KEY_FD.  Before the new image starts,
 * the pipe already holds a random secret (and nothing else: its write end
 * is closed), and the socket already holds a hello carrying the same
 * secret.  Then come the requests (one for spawn, any number for the
 * forkserver), each answered with a reply.
 */
#ifndef CONC_FORKSERVER_WIRE_H
#define CONC_FORKSERVER_WIRE_H

#include <stdint.h>

#define CONC__ENV_NAME "CONC_FORKSERVER"
#define CONC__CHILD_FD 3
#define CONC__KEY_FD 4
#define CONC__WIRE_MAGIC 0x636f6e63u    /* "conc" */
#define CONC__WIRE_VERSION 2u
#define CONC__WIRE_SECRET 16
#define CONC__WIRE_DEF 0x1u
#define CONC__WIRE_DAEMON 0x2u

/* The first bytes on the socket. */
struct conc__wire_hello {
    uint32_t magic;
    uint32_t version;
    uint8_t secret[CONC__WIRE_SECRET];
};

/* A request: this header, then int32 targets[nfds], the module path, name,
 * ident and parent name (no terminators), then the data.  The starter's
 * stdio (bits of `stdio`) and pass_fds travel as SCM_RIGHTS with the
 * header. */
struct conc__wire_req {
    uint32_t magic;
    uint32_t version;
    uint64_t offset;            /* the target's offset in its module */
    uint64_t len;               /* bytes of data */
    uint64_t sigmask;           /* signals 1..64 blocked by the starter */
    uint64_t module_dev;        /* the file the starter has the module */
    uint64_t module_ino;        /* mapped from (st_dev, st_ino) */
    int32_t ppid;
    uint32_t flags;             /* CONC__WIRE_DEF, CONC__WIRE_DAEMON */
    uint32_t nfds;
    uint32_t stdio;
    uint32_t method;            /* the start method that makes this child */
    uint32_t path_len, name_len, ident_len, pname_len;
    uint32_t reserved;
};

/* The answer: 0 and the child's pid (plus its pidfd from a forkserver), or
 * a negative errno. */
struct conc__wire_rep {
    int32_t err;
    int32_t pid;
};

#endif
