/*
 * ftp-session.h - ftp-server's side of one connection: the commands of the
 * line protocol (docs/ftp.md) on a connected conc socket, answered until
 * the client quits, closes, breaks the protocol or stays silent too long.
 * Every name is checked (ftp_name_problem) and opened beneath the root
 * (ftp_open_beneath); a refused name, a line holding a control character
 * or a failed command gets an "ERR" line (the names it echoes escaped:
 * ftp_escape) and the session goes on.  The calls block in the conc way: in a
 * coroutine they park only the coroutine, and so do the blocking file
 * calls when conf says so: they run on an offload worker (ftp_job), from
 * the opening of a name and the listing of the root to the storing of an
 * upload.
 */
#ifndef CONC_EXAMPLES_FTP_SESSION_H
#define CONC_EXAMPLES_FTP_SESSION_H

#include <poll.h>

#include "ftp.h"

#define FTP_IDLE_NS (300LL * 1000000000LL)  /* a silent client is dropped after this */
#define FTP_DRAIN_NS 1000000000LL            /* reading what follows a line too long */

/* What every session of a server shares (read-only while it serves). */
struct ftp_conf {
    int rootfd;                 /* the root directory, O_PATH | O_DIRECTORY */
    uint64_t max_size;          /* the largest PUT accepted */
    bool offload;               /* the blocking file calls (opening a name
                                   beneath the root and the file an upload
                                   is written to, listing the root, hashing,
                                   sending GET's chunks with sendfile,
                                   writing an upload's chunks, syncing and
                                   naming it) on an offload worker: the
                                   coroutine model, whose hub serves the
                                   other sessions meanwhile */
    struct ftp_part_note *note; /* where a forked session notes a named
                                   temporary file; NULL: nowhere */
};

/*
 * The blocking file calls of a session, each on an offload worker when
 * conf says so (ftp_job_offload): the calling coroutine parks and its hub
 * serves the other sessions meanwhile.  A coroutine killed meanwhile sees
 * -ECANCELED, and the worker frees the job with what it made (the
 * descriptor, the file, the listing).
 */

/* ftp_hash_file (an FTP_JOB_HASH job). */
static int ftp_hash_maybe_offloaded(const struct ftp_conf *conf, int fd,
                                    unsigned char h[crypto_hash_sha256_BYTES], uint64_t *size)
{
    if (!conf->offload)
        return ftp_hash_file(fd, h, size);
    int rc;
    struct ftp_job *j = ftp_job_offload(FTP_JOB_HASH, fd, -1, NULL, &rc);
    if (j) {
        memcpy(h, j->hash, sizeof j->hash);
        *size = j->off;
        ftp_job_free(j);
    }
    return rc;
}

/* ftp_open_regular beneath the root, for GET (an FTP_JOB_OPEN job):
 * returns the descriptor, or the open's error. */
static int ftp_open_maybe_offloaded(const struct ftp_conf *conf, const char *name)
{
    if (!conf->offload)
        return ftp_open_regular(conf->rootfd, name);
    int rc;
    struct ftp_job *j = ftp_job_offload(FTP_JOB_OPEN, -1, conf->rootfd, name, &rc);
    if (j) {
        if (rc == 0) {
            rc = j->fd;             /* taken */
            j->fd = -1;
        }
        ftp_job_free(j);
    }
    return rc;
}

/* ftp_part_open_beneath the root, for PUT (an FTP_JOB_CREATE job): 0 and
 * the file in *p, or the open's error. */
static int ftp_create_maybe_offloaded(const struct ftp_conf *conf, const char *name,
                                      struct ftp_part *p)
{
    if (!conf->offload)
        return ftp_part_open_beneath(p, conf->rootfd, name, false, conf->note);
    int rc;
    struct ftp_job *j = ftp_job_offload(FTP_JOB_CREATE, -1, conf->rootfd, name, &rc);
    if (j) {
        if (rc == 0) {
            *p = j->part;           /* taken, its directory too */
            j->part.fd = -1;
            j->part.own_dir = false;
        }
        ftp_job_free(j);
    }
    return rc;
}

/* ftp_list of the root, for LS (an FTP_JOB_LIST job): 0 and the answer in
 * *text (*len bytes, the caller's to free), or -errno. */
static int ftp_list_maybe_offloaded(const struct ftp_conf *conf, char **text, size_t *len)
{
    if (!conf->offload)
        return ftp_list(conf->rootfd, text, len);
    int rc;
    struct ftp_job *j = ftp_job_offload(FTP_JOB_LIST, -1, conf->rootfd, NULL, &rc);
    if (j) {
        *text = j->text;            /* taken */
        *len = j->len;
        j->text = NULL;
        ftp_job_free(j);
    }
    return rc;
}

/* "ERR NAME: why", NAME the n bytes at name (NULL: "ERR why"), escaped
 * (ftp_escape: a name echoed carries no control character) and cut to
 * 600 bytes at most. */
static int ftp_err_n(conc_socket *c, const char *name, size_t n, const char *why)
{
    char line[FTP_LINE_MAX], shown[601];
    if (name)
        snprintf(line, sizeof line, "ERR %s: %s", ftp_escape(name, n, shown, sizeof shown),
                 why);
    else
        snprintf(line, sizeof line, "ERR %s", why);
    return ftp_send_line(c, line);
}

/* "ERR NAME: why" (ftp_err_n) */
static int ftp_err(conc_socket *c, const char *name, const char *why)
{
    return ftp_err_n(c, name, name ? strlen(name) : 0, why);
}

/* The answer to a line of n bytes that holds a control character (a NUL
 * among them): "ERR NAME: control characters are refused" for GET NAME and
 * PUT NAME SIZE SHA256 (NAME escaped), else "ERR control characters are
 * refused". */
static int ftp_refuse_line(conc_socket *c, const char *line, size_t n)
{
    const char *why = "control characters are refused";
    if (n <= 4 || (memcmp(line, "GET ", 4) != 0 && memcmp(line, "PUT ", 4) != 0))
        return ftp_err(c, NULL, why);
    const char *name = line + 4;
    size_t len = n - 4;
    for (int field = 0; line[0] == 'P' && field < 2; field++) {
        while (len > 0 && name[len - 1] != ' ')     /* SHA256, then SIZE */
            len--;
        if (len == 0)
            return ftp_err(c, NULL, why);
        len--;
    }
    return ftp_err_n(c, name, len, why);
}

/* Why opening a name beneath the root failed, for its ERR line. */
static const char *ftp_open_problem(int rc)
{
    switch (rc) {
    case -EXDEV:
        return "it leads out of the root";
    case -ELOOP:
    case -ENOTDIR:
        return "no such file (or a symbolic link that is refused)";
    case -ENOENT:
        return "no such file or directory";
    case -EACCES:
    case -EPERM:
        return "permission denied";
    case -EISDIR:
        return "not a regular file";
    default:
        return conc_strerror(rc);
    }
}

/* LS: "OK N" ("OK N MORE" when cut), then "SIZE NAME" for each regular,
 * visible file of the root, sorted by name (the first FTP_LS_MAX: ftp_list). */
static int ftp_do_ls(conc_socket *c, const struct ftp_conf *conf)
{
    char *text = NULL;
    size_t len = 0;
    int rc = ftp_list_maybe_offloaded(conf, &text, &len);
    if (rc == 0)
        rc = conc_socket_sendall(c, text, len, 0, NULL);
    else if (rc != -ECANCELED)
        rc = ftp_err(c, NULL, rc == -ENOMEM ? "out of memory" : "cannot read the root");
    free(text);
    return rc;
}

/*
 * Sends size bytes of the file fd from its start with sendfile (zero-copy);
 * *sent gets how many went.  The socket's timeout bounds the whole call,
 * as conc_socket_sendfile's does.  When conf says so, sendfile runs on an
 * offload worker, since its disk reads would hold up a hub's every
 * session: one job per chunk of up to FTP_SENDFILE_CHUNK bytes, which
 * sends what the socket takes without waiting (ftp_job_run) on a socket of
 * its own over a duplicate of c's descriptor.  When the socket is full,
 * the coroutine waits for room here, parked on its hub, then hands over
 * the next job: no worker is held by a slow client, and the socket is
 * used by the job alone while the coroutine waits for it.  A coroutine
 * killed meanwhile leaves the job to the worker, which frees it (closing
 * its duplicate: the connection ends once both are closed).
 */
static int ftp_send_file(conc_socket *c, const struct ftp_conf *conf, int fd, uint64_t size,
                         uint64_t *sent)
{
    *sent = 0;
    if (!conf->offload) {
        size_t n = 0;
        int rc = conc_socket_sendfile(c, fd, 0, (size_t)size, &n);
        *sent = n;
        return rc;
    }
    double timeout = conc_socket_timeout(c);
    int64_t deadline;
    int rc = conc_deadline(timeout, &deadline);
    if (rc < 0)
        return rc;
    struct ftp_job *j = ftp_job_new(FTP_JOB_SENDFILE, fd, -1);
    if (!j)
        return -errno;
    if ((rc = conc_socket_dup(c, &j->sock)) < 0) {
        ftp_job_free(j);
        return rc;
    }
    while (rc == 0 && *sent < size) {
        size_t want = size - *sent < FTP_SENDFILE_CHUNK ? (size_t)(size - *sent)
                                                        : FTP_SENDFILE_CHUNK;
        j->off = *sent;
        j->len = want;
        if ((rc = ftp_job_call(&j, true)) < 0)
            break;
        *sent += j->len;
        if (j->rc == -ETIMEDOUT || j->rc == -EAGAIN) {
            /* The socket is full: wait for room (timeout 0, non-blocking
             * mode, gives -EAGAIN, as conc_socket_sendfile does). */
            rc = conc_fd_wait_until(conc_socket_fd(c), POLLOUT, deadline);
            if (rc == -ETIMEDOUT && timeout == 0)
                rc = -EAGAIN;
        } else if (j->rc < 0) {
            rc = j->rc;
        } else if (j->len < want) {
            break;                  /* the end of the file: it shrank; the caller sees
                                       sent < size */
        }
    }
    if (j)
        ftp_job_free(j);
    return rc;
}

/* GET NAME: "OK SIZE HASH" and the file's bytes (sendfile), or ERR. */
static int ftp_do_get(conc_socket *c, const struct ftp_conf *conf, const char *name)
{
    const char *problem = ftp_name_problem(name);
    if (problem)
        return ftp_err(c, name, problem);
    int fd = ftp_open_maybe_offloaded(conf, name);
    if (fd < 0)
        return fd == -ECANCELED ? fd : ftp_err(c, name, ftp_open_problem(fd));
    unsigned char h[crypto_hash_sha256_BYTES];
    uint64_t size = 0;
    int rc = ftp_hash_maybe_offloaded(conf, fd, h, &size);
    if (rc < 0) {
        close(fd);
        return rc == -ECANCELED ? rc : ftp_err(c, name, conc_strerror(rc));
    }
    char hex[FTP_HASH_HEX + 1], line[FTP_LINE_MAX];
    ftp_hash_hex(h, hex);
    snprintf(line, sizeof line, "OK %llu %s", (unsigned long long)size, hex);
    rc = ftp_send_line(c, line);
    uint64_t sent = 0;
    if (rc == 0 && size > 0)
        rc = ftp_send_file(c, conf, fd, size, &sent);
    close(fd);
    if (rc == 0 && sent != size)
        rc = -EPIPE;            /* it shrank: the stream is out of step, end it */
    return rc;
}

/* PUT NAME SIZE HASH: "OK ready", the bytes, then "OK stored" or ERR. */
static int ftp_do_put(conc_socket *c, struct ftp_reader *r, const struct ftp_conf *conf,
                      char *args)
{
    /* From the right: the hash, the size; the name is what comes before. */
    char *sp2 = strrchr(args, ' ');
    if (!sp2)
        return ftp_err(c, NULL, "usage: PUT NAME SIZE SHA256");
    *sp2 = '\0';
    char *sp1 = strrchr(args, ' ');
    if (!sp1)
        return ftp_err(c, NULL, "usage: PUT NAME SIZE SHA256");
    *sp1 = '\0';
    const char *name = args, *size_s = sp1 + 1, *hash_s = sp2 + 1;
    const char *problem = ftp_name_problem(name);
    if (problem)
        return ftp_err(c, name, problem);
    uint64_t size;
    if (!ftp_parse_size(size_s, FTP_SIZE_MAX, &size))
        return ftp_err(c, name, "the size is not a whole number of bytes");
    if (size > conf->max_size) {
        char why[96];
        snprintf(why, sizeof why, "%llu bytes is over the limit of %llu",
                 (unsigned long long)size, (unsigned long long)conf->max_size);
        return ftp_err(c, name, why);
    }
    unsigned char want[crypto_hash_sha256_BYTES];
    if (!ftp_parse_hash(hash_s, want))
        return ftp_err(c, name, "the SHA-256 wants 64 lower-case hex digits");
    /* The file exists (unnamed) before the client is told to send. */
    struct ftp_part part;
    int rc = ftp_create_maybe_offloaded(conf, name, &part);
    if (rc < 0)
        return rc == -ECANCELED ? rc : ftp_err(c, name, ftp_open_problem(rc));
    rc = ftp_send_line(c, "OK ready");
    if (rc < 0)
        ftp_part_drop(&part);
    if (rc == 0) {
        rc = ftp_part_recv(&part, r, ftp_base_name(name), size, want, FTP_IDLE_NS);
        char line[FTP_LINE_MAX];
        if (rc == 0) {
            snprintf(line, sizeof line, "OK stored %llu", (unsigned long long)size);
            rc = ftp_send_line(c, line);
        } else if (rc == -EBADMSG) {
            rc = ftp_err(c, name, "checksum mismatch: the upload was discarded");
        } else if (rc != -EPIPE && rc != -ECONNRESET && rc != -ETIMEDOUT && rc != -EAGAIN &&
                   rc != -ECANCELED) {
            rc = ftp_err(c, name, conc_strerror(rc));   /* the file system's */
        }
    }
    return rc;
}

/* Serves one connection until it ends.  Returns 0 when the client quit or
 * closed, else why the session was cut (an error of the socket, a line too
 * long, a silent client). */
static int ftp_session(conc_socket *c, const struct ftp_conf *conf)
{
    struct ftp_reader *r = calloc(1, sizeof *r);
    if (!r)
        return -ENOMEM;
    r->sock = c;
    int rc = ftp_send_line(c, "OK ftp-server ready");
    while (rc == 0) {
        char *line = NULL;
        int n = ftp_read_line(r, &line, conc_now() + FTP_IDLE_NS);
        if (n == -EPIPE) {
            rc = 0;             /* closed without QUIT */
            break;
        }
        if (n == -EMSGSIZE) {
            /* The answer, then the end of the session: the rest of what the
             * client sends is read and dropped until it closes (closing with
             * unread bytes would reset the connection and could lose the
             * answer), for at most FTP_DRAIN_NS. */
            if (ftp_err(c, NULL, "line too long") == 0 &&
                conc_socket_shutdown(c, SHUT_WR) == 0) {
                int64_t until = conc_now() + FTP_DRAIN_NS;
                char sink[4096];
                while (conc_socket_recv_until(c, sink, sizeof sink, 0, until) > 0)
                    ;
            }
            rc = n;
            break;
        }
        if (n < 0) {
            rc = n;
            break;
        }
        if (ftp_text_problem(line, (size_t)n)) {
            rc = ftp_refuse_line(c, line, (size_t)n);
            continue;
        }
        char *arg = strchr(line, ' ');
        if (arg)
            *arg++ = '\0';
        if (strcmp(line, "LS") == 0 && !arg) {
            rc = ftp_do_ls(c, conf);
        } else if (strcmp(line, "GET") == 0 && arg) {
            rc = ftp_do_get(c, conf, arg);
        } else if (strcmp(line, "PUT") == 0 && arg) {
            rc = ftp_do_put(c, r, conf, arg);
        } else if (strcmp(line, "QUIT") == 0 && !arg) {
            ftp_send_line(c, "OK bye");
            break;
        } else {
            rc = ftp_err(c, NULL, "unknown command (LS, GET NAME, PUT NAME SIZE SHA256, QUIT)");
        }
    }
    free(r);
    return rc;
}

#endif
