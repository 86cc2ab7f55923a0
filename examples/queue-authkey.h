/*
 * queue-authkey.h - what queue-server and queue-client share: reading the
 * authkey file, the name of the queue they serve and use, and making the
 * manager and the queue's proxy from their command line.
 */
#ifndef CONC_EXAMPLES_QUEUE_AUTHKEY_H
#define CONC_EXAMPLES_QUEUE_AUTHKEY_H

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "conc.h"
#include "conc/manager.h"
#include "cli.h"

/* The name of the manager's queue (Python: QueueManager.register("get_queue")). */
#define QUEUE_NAME "queue"

/* The longest authkey read from a file. */
#define AUTHKEY_MAX 1024

/* Reads the key from path into key (AUTHKEY_MAX bytes): the whole file, one
 * trailing newline dropped (so `echo secret > key` works).  Returns its
 * length (> 0); 0 after saying on stderr why the file cannot serve
 * (missing, unreadable, empty, longer than AUTHKEY_MAX). */
static inline size_t read_authkey(const char *prog, const char *path, unsigned char *key)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "%s: --authkey-file %s: %s\n", prog, path, strerror(errno));
        return 0;
    }
    size_t n = 0;
    for (;;) {
        unsigned char more[AUTHKEY_MAX + 2];
        ssize_t r = read(fd, more, sizeof more);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            fprintf(stderr, "%s: --authkey-file %s: %s\n", prog, path, strerror(errno));
            close(fd);
            return 0;
        }
        if (r == 0)
            break;
        if (n + (size_t)r > AUTHKEY_MAX + 1) {
            fprintf(stderr, "%s: --authkey-file %s: longer than %d bytes\n", prog, path,
                    AUTHKEY_MAX);
            close(fd);
            return 0;
        }
        memcpy(key + n, more, (size_t)r);       /* key has room for AUTHKEY_MAX + 1 */
        n += (size_t)r;
    }
    close(fd);
    if (n > 0 && key[n - 1] == '\n')
        n--;
    if (n == 0 || n > AUTHKEY_MAX) {
        fprintf(stderr, "%s: --authkey-file %s: %s\n", prog, path,
                n ? "longer than 1024 bytes" : "empty");
        return 0;
    }
    return n;
}

/* The --address and --authkey-file both sides require: checks that they
 * were given and reads the key into key (AUTHKEY_MAX + 1 bytes) and
 * *keylen.  Returns 0, or says what is wrong and returns the exit status 2. */
static inline int queue_address_key(const char *address, const char *keyfile, unsigned char *key,
                                    size_t *keylen)
{
    if (!address || !*address)
        return fail("%s", "--address ADDR is required (try --help)");
    if (!keyfile)
        return fail("%s", "--authkey-file F is required (try --help)");
    *keylen = read_authkey(prog, keyfile, key);
    return *keylen ? 0 : 2;
}

/* A manager for address with the key (not started or connected yet).
 * Returns 0, or says what failed and returns the exit status (2 for a bad
 * address). */
static inline int queue_manager_new(conc_manager **m, const char *address,
                                    const unsigned char *key, size_t keylen)
{
    conc_manager_opts o = CONC_MANAGER_OPTS_INIT;
    o.address = address;
    o.authkey = key;
    o.authkey_len = keylen;
    int rc = conc_manager_new(m, &o);
    if (rc < 0)
        return rc == -EINVAL ? fail("bad --address '%s'", address) : die("manager", rc);
    return 0;
}

/* The proxy of the queue QUEUE_NAME (made in the server if it is not there
 * yet).  Returns 0, or says what failed, frees m and returns 1. */
static inline int queue_proxy(conc_manager *m, conc_proxy **q)
{
    int rc = conc_manager_create(m, q, CONC_PROXY_QUEUE, QUEUE_NAME, 0, 0);
    if (rc < 0) {
        conc_manager_free(m);
        return die("queue", rc);
    }
    return 0;
}

#endif
