/*
 * queue-authkey.h - what queue-server and queue-client share: reading the
 * authkey file and the name of the queue they serve and use.
 */
#ifndef CONC_EXAMPLES_QUEUE_AUTHKEY_H
#define CONC_EXAMPLES_QUEUE_AUTHKEY_H

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

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

#endif
