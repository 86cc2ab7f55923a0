/*
 * ftp.h - what ftp-server and ftp-client share: the line protocol's limits
 * (docs/ftp.md describes the protocol), a line reader over a conc socket,
 * the SHA-256 of a file (libsodium's crypto_hash_sha256), the check of a
 * name a client asks for and its opening beneath the root, the listing of
 * a directory, the blocking file calls of a session (run in place or on an
 * offload worker: ftp_job_call; opening a name, listing the root and
 * sending a chunk of a file with sendfile among them), and the receiving
 * side of a transfer: written
 * to an unnamed file in the target directory (O_TMPFILE; a hidden
 * temporary name where the file system refuses it), synced, and given its
 * final name only once its size and hash match (ftp_part_open, then
 * ftp_part_recv).
 */
#ifndef CONC_EXAMPLES_FTP_H
#define CONC_EXAMPLES_FTP_H

#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <inttypes.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <sodium.h>

#include "conc.h"
#include "conc/socket.h"

#define FTP_LINE_MAX 1024           /* a protocol line, its newline included */
#define FTP_NAME_MAX 255            /* a name in GET and PUT, in bytes */
#define FTP_LS_MAX 10000            /* the most entries a listing sends */
#define FTP_SIZE_MAX (1ULL << 40)   /* the largest size the protocol carries */
#define FTP_CHUNK 65536             /* bytes per read and write of a transfer */
#define FTP_SENDFILE_CHUNK (1u << 20)   /* bytes at most per offloaded sendfile */
#define FTP_HASH_HEX 64             /* a SHA-256 in lower-case hex */
#define FTP_TMP_PREFIX ".ftp-part-" /* the temporary names of incoming files */

/* --------------------------------------------------------- line reader */

/* Reads lines (and then raw bytes) from a connected socket, buffered. */
struct ftp_reader {
    conc_socket *sock;
    size_t start, end;              /* buf[start .. end) not yet taken */
    char buf[2 * FTP_LINE_MAX];
};

/*
 * Reads the next line, waiting until deadline (a conc_now() time, or -1
 * for none).  On success the line (its '\n' and a '\r' before it removed,
 * NUL-terminated) is at *line until the next call, and its length is
 * returned (the line may hold a NUL byte of its own: ftp_text_problem).
 * -EPIPE when the stream ended before a line began; -EPROTO when it ended
 * inside one; -EMSGSIZE when no newline came within FTP_LINE_MAX bytes (the
 * newline included), however the bytes came in; the socket's errors
 * (-ECONNRESET, -ETIMEDOUT...).
 */
static inline int ftp_read_line(struct ftp_reader *r, char **line, int64_t deadline)
{
    for (;;) {
        size_t avail = r->end - r->start;
        char *nl = memchr(r->buf + r->start, '\n', avail < FTP_LINE_MAX ? avail : FTP_LINE_MAX);
        if (nl) {
            char *p = r->buf + r->start;
            size_t n = (size_t)(nl - p);
            *nl = '\0';
            r->start += n + 1;
            if (n > 0 && p[n - 1] == '\r')
                p[--n] = '\0';
            *line = p;
            return (int)n;
        }
        if (avail >= FTP_LINE_MAX)
            return -EMSGSIZE;
        if (r->start > 0) {                 /* room at the end for more */
            memmove(r->buf, r->buf + r->start, r->end - r->start);
            r->end -= r->start;
            r->start = 0;
        }
        ssize_t k = deadline < 0
                        ? conc_socket_recv(r->sock, r->buf + r->end, sizeof r->buf - r->end, 0)
                        : conc_socket_recv_until(r->sock, r->buf + r->end,
                                                 sizeof r->buf - r->end, 0, deadline);
        if (k == 0)
            return r->end > r->start ? -EPROTO : -EPIPE;
        if (k < 0)
            return (int)k;
        r->end += (size_t)k;
    }
}

/* Reads up to n raw bytes: what the buffer holds first, else one recv.
 * Returns the count (> 0), 0 at the end of the stream, or an error. */
static inline ssize_t ftp_read_some(struct ftp_reader *r, void *p, size_t n, int64_t deadline)
{
    if (r->end > r->start) {
        size_t k = r->end - r->start < n ? r->end - r->start : n;
        memcpy(p, r->buf + r->start, k);
        r->start += k;
        return (ssize_t)k;
    }
    return deadline < 0 ? conc_socket_recv(r->sock, p, n, 0)
                        : conc_socket_recv_until(r->sock, p, n, 0, deadline);
}

/* Sends a whole line (text plus '\n'). */
static inline int ftp_send_line(conc_socket *s, const char *text)
{
    char line[FTP_LINE_MAX];
    int n = snprintf(line, sizeof line, "%s\n", text);
    if (n < 0 || (size_t)n >= sizeof line)
        return -EMSGSIZE;
    return conc_socket_sendall(s, line, (size_t)n, 0, NULL);
}

/* ------------------------------------------------------------ text shown */

/* Whether text[0 .. n) holds a control character (a NUL, a '\r'... or
 * DEL): what no line of the protocol may hold. */
static inline bool ftp_text_problem(const char *text, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)text[i] < 0x20 || text[i] == 0x7f)
            return true;
    return false;
}

/* The length of the UTF-8 sequence at s[0 .. n) that a terminal shows as
 * it is: 1 for a printable ASCII byte, 2 to 4 for a well-formed sequence
 * of a character that is not a control (C1: U+0080 to U+009F); 0 for
 * what must be escaped. */
static inline size_t ftp_shown_len(const unsigned char *s, size_t n)
{
    if (s[0] >= 0x20 && s[0] < 0x7f)
        return 1;
    size_t len = s[0] >= 0xc2 && s[0] <= 0xdf ? 2 : s[0] >= 0xe0 && s[0] <= 0xef ? 3
                 : s[0] >= 0xf0 && s[0] <= 0xf4 ? 4 : 0;
    if (len == 0 || len > n)
        return 0;
    for (size_t i = 1; i < len; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    if ((len == 2 && s[0] == 0xc2 && s[1] < 0xa0) ||      /* C1 controls */
        (len == 3 && s[0] == 0xe0 && s[1] < 0xa0) ||      /* overlong */
        (len == 3 && s[0] == 0xed && s[1] >= 0xa0) ||     /* surrogates */
        (len == 4 && s[0] == 0xf0 && s[1] < 0x90) ||      /* overlong */
        (len == 4 && s[0] == 0xf4 && s[1] >= 0x90))       /* past U+10FFFF */
        return 0;
    return len;
}

/*
 * Writes text[0 .. n) to out (cap bytes, NUL-terminated) with every byte
 * a terminal could take for a command escaped as "\xHH": control
 * characters (a NUL, ESC, '\r'...), DEL, and bytes that are not part of
 * well-formed UTF-8 or that encode a C1 control.  What does not fit is
 * left off (never half an escape or half a character).  Returns out.
 */
static inline char *ftp_escape(const char *text, size_t n, char *out, size_t cap)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        size_t len = ftp_shown_len(s + i, n - i);
        if (len == 0) {
            if (k + 4 >= cap)
                break;
            snprintf(out + k, cap - k, "\\x%02x", s[i]);
            k += 4;
            i++;
        } else {
            if (k + len >= cap)
                break;
            memcpy(out + k, s + i, len);
            k += len;
            i += len;
        }
    }
    if (cap > 0)
        out[k] = '\0';
    return out;
}

/* ------------------------------------------------------------- numbers */

/* Parses a decimal size in [0, max], digits only. */
static inline bool ftp_parse_size(const char *s, uint64_t max, uint64_t *out)
{
    if (!*s || strlen(s) > 20)
        return false;
    uint64_t v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return false;
        if (v > (UINT64_MAX - 9) / 10)
            return false;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    if (v > max)
        return false;
    *out = v;
    return true;
}

/* Parses a SHA-256 written as 64 lower-case hex digits. */
static inline bool ftp_parse_hash(const char *s, unsigned char out[crypto_hash_sha256_BYTES])
{
    if (strlen(s) != FTP_HASH_HEX)
        return false;
    for (const char *p = s; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return false;
    return sodium_hex2bin(out, crypto_hash_sha256_BYTES, s, FTP_HASH_HEX, NULL, NULL, NULL) == 0;
}

static inline void ftp_hash_hex(const unsigned char h[crypto_hash_sha256_BYTES],
                                char hex[FTP_HASH_HEX + 1])
{
    sodium_bin2hex(hex, FTP_HASH_HEX + 1, h, crypto_hash_sha256_BYTES);
}

/* The SHA-256 of the open regular file fd (read with pread from offset 0
 * to its size at the time of the call, which goes to *size).  Returns 0,
 * or -errno of a failed read. */
static inline int ftp_hash_file(int fd, unsigned char h[crypto_hash_sha256_BYTES],
                                uint64_t *size)
{
    struct stat st;
    *size = 0;
    if (fstat(fd, &st) < 0)
        return -errno;
    unsigned char *buf = malloc(FTP_CHUNK);
    if (!buf)
        return -ENOMEM;
    crypto_hash_sha256_state s;
    crypto_hash_sha256_init(&s);
    uint64_t off = 0, total = (uint64_t)st.st_size;
    int rc = 0;
    while (off < total) {
        size_t want = total - off < FTP_CHUNK ? (size_t)(total - off) : FTP_CHUNK;
        ssize_t k = pread(fd, buf, want, (off_t)off);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            rc = k < 0 ? -errno : -EIO;     /* 0: it shrank meanwhile */
            break;
        }
        crypto_hash_sha256_update(&s, buf, (unsigned long long)k);
        off += (uint64_t)k;
    }
    free(buf);
    crypto_hash_sha256_final(&s, h);
    *size = total;
    return rc;
}

/* ---------------------------------------------------------------- names */

/*
 * Checks a name a peer gave (GET, PUT): 1..FTP_NAME_MAX bytes of
 * components separated by single '/', none of them "." or "..", none
 * hidden (starting with '.': the temporary names of incoming files are
 * hidden), no control character, not absolute.  Returns NULL when it is
 * acceptable, else why not.
 */
static inline const char *ftp_name_problem(const char *name)
{
    size_t n = strlen(name);
    if (n == 0)
        return "an empty name";
    if (n > FTP_NAME_MAX)
        return "the name is too long";
    if (name[0] == '/')
        return "absolute names are refused";
    for (const char *p = name; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            return "control characters are refused";
    for (const char *c = name; *c;) {
        const char *e = strchr(c, '/');
        size_t len = e ? (size_t)(e - c) : strlen(c);
        if (len == 0)
            return "empty path components are refused";
        if (len == 2 && c[0] == '.' && c[1] == '.')
            return "'..' leaves the root";
        if (c[0] == '.')
            return "hidden names are refused";
        if (!e)
            break;
        c = e + 1;
        if (!*c)
            return "empty path components are refused";
    }
    return NULL;
}

/*
 * Opens name (checked by ftp_name_problem) beneath the directory dirfd,
 * refusing any path that resolves outside it: with openat2 and
 * RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS where the kernel has it (a
 * symbolic link that stays inside is followed), else walking the
 * components with O_NOFOLLOW (then every symbolic link is refused).
 * Returns the descriptor, or -EXDEV for a path that leaves the root,
 * -ELOOP (a last component) or -ENOTDIR (a directory) for a symbolic link
 * refused, or the open's -errno.
 */
static inline int ftp_open_beneath(int dirfd, const char *name, int flags, mode_t mode)
{
#ifdef SYS_openat2
    struct {
        uint64_t flags, mode, resolve;
    } how = { (uint64_t)(flags | O_CLOEXEC), (flags & O_CREAT) ? mode : 0,
              0x08 /* RESOLVE_BENEATH */ | 0x02 /* RESOLVE_NO_MAGICLINKS */ };
    long r2 = syscall(SYS_openat2, dirfd, name, &how, sizeof how);
    if (r2 >= 0)
        return (int)r2;
    if (errno != ENOSYS && errno != EPERM)  /* EPERM: a seccomp filter */
        return -errno;
#endif
    char path[FTP_NAME_MAX + 1];
    snprintf(path, sizeof path, "%s", name);
    int cur = dirfd;
    char *c = path;
    for (;;) {
        char *e = strchr(c, '/');
        if (!e)
            break;
        *e = '\0';
        int next = openat(cur, c, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        int err = errno;
        if (cur != dirfd)
            close(cur);
        if (next < 0)
            return -err;            /* a link: -ENOTDIR (not followed) */
        cur = next;
        c = e + 1;
    }
    int fd = openat(cur, c, flags | O_NOFOLLOW | O_CLOEXEC, mode);
    int err = errno;
    if (cur != dirfd)
        close(cur);
    return fd < 0 ? -err : fd;
}

/* The last component of name: what follows its last '/' (all of it when
 * there is none). */
static inline const char *ftp_base_name(const char *name)
{
    const char *slash = strrchr(name, '/');
    return slash ? slash + 1 : name;
}

/* Opens the directory part of name (what comes before its last '/')
 * beneath rootfd, O_PATH; a duplicate of rootfd when there is none.
 * Returns the descriptor (the caller's to close), or ftp_open_beneath's
 * error. */
static inline int ftp_open_parent(int rootfd, const char *name)
{
    const char *base = ftp_base_name(name);
    if (base == name) {
        int fd = fcntl(rootfd, F_DUPFD_CLOEXEC, 0);
        return fd < 0 ? -errno : fd;
    }
    char dir[FTP_NAME_MAX + 1];
    snprintf(dir, sizeof dir, "%.*s", (int)(base - 1 - name), name);
    return ftp_open_beneath(rootfd, dir, O_PATH | O_DIRECTORY, 0);
}

/* Opens name (checked by ftp_name_problem) beneath rootfd with flags, a
 * regular file only.  Returns the descriptor, -EISDIR for anything but a
 * regular file (a directory, a device...), or ftp_open_beneath's error. */
static inline int ftp_open_regular_as(int rootfd, const char *name, int flags)
{
    int fd = ftp_open_beneath(rootfd, name, flags, 0);
    if (fd < 0)
        return fd;
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return -EISDIR;
    }
    return fd;
}

/* ftp_open_regular_as for reading (O_NONBLOCK: a FIFO does not wait for a
 * writer). */
static inline int ftp_open_regular(int rootfd, const char *name)
{
    return ftp_open_regular_as(rootfd, name, O_RDONLY | O_NONBLOCK);
}

/* ------------------------------------------------------ blocking file calls */

/* A new temporary name (FTP_TMP_PREFIX and eight random hex digits) in
 * tmp. */
static inline void ftp_tmp_name(char tmp[32])
{
    snprintf(tmp, 32, FTP_TMP_PREFIX "%08" PRIx32, randombytes_random());
}

/* An entry of a listing. */
struct ftp_list_entry {
    char *name;
    long long size;
};

static inline int ftp_list_cmp(const void *a, const void *b)
{
    return strcmp(((const struct ftp_list_entry *)a)->name,
                  ((const struct ftp_list_entry *)b)->name);
}

/* Moves es[i] down the max-heap es[0 .. n) (by name) to its place. */
static inline void ftp_list_sift(struct ftp_list_entry *es, size_t n, size_t i)
{
    for (;;) {
        size_t big = i, l = 2 * i + 1, r = l + 1;
        if (l < n && ftp_list_cmp(&es[l], &es[big]) > 0)
            big = l;
        if (r < n && ftp_list_cmp(&es[r], &es[big]) > 0)
            big = r;
        if (big == i)
            return;
        struct ftp_list_entry t = es[i];
        es[i] = es[big];
        es[big] = t;
        i = big;
    }
}

/*
 * The answer to LS for the directory dirfd, its every line ended by '\n':
 * "OK N" (or "OK N MORE" when the directory holds more than FTP_LS_MAX
 * such files), then "SIZE NAME" for each regular file whose name
 * ftp_name_problem accepts (no hidden one: the temporary names of
 * incoming files are hidden): the first FTP_LS_MAX by name (strcmp),
 * sorted.  The selection keeps FTP_LS_MAX entries at most however many
 * the directory holds (a max-heap by name whose greatest goes when a
 * smaller name comes).  On success *text (malloc'd, the caller's to free)
 * holds *len bytes.  Returns 0, -ENOMEM, or the -errno of opening the
 * directory.
 */
static inline int ftp_list(int dirfd, char **text, size_t *len)
{
    *text = NULL;
    *len = 0;
    int dfd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = dfd < 0 ? NULL : fdopendir(dfd);
    if (!d) {
        int err = errno;
        if (dfd >= 0)
            close(dfd);
        return -err;
    }
    struct ftp_list_entry *es = NULL;
    size_t n = 0, cap = 0;
    bool more = false;
    int rc = 0;
    for (struct dirent *e; rc == 0 && (e = readdir(d)) != NULL;) {
        struct stat st;
        if (ftp_name_problem(e->d_name) ||
            fstatat(dfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode))
            continue;
        if (n == FTP_LS_MAX) {          /* full: it replaces the greatest, or goes */
            more = true;
            if (strcmp(e->d_name, es[0].name) >= 0)
                continue;
            char *name = strdup(e->d_name);
            if (!name) {
                rc = -ENOMEM;
                break;
            }
            free(es[0].name);
            es[0].name = name;
            es[0].size = (long long)st.st_size;
            ftp_list_sift(es, n, 0);
            continue;
        }
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 64;
            if (ncap > FTP_LS_MAX)
                ncap = FTP_LS_MAX;
            struct ftp_list_entry *ne = realloc(es, ncap * sizeof *ne);
            if (!ne) {
                rc = -ENOMEM;
                break;
            }
            es = ne;
            cap = ncap;
        }
        es[n].size = (long long)st.st_size;
        if (!(es[n].name = strdup(e->d_name))) {
            rc = -ENOMEM;
            break;
        }
        n++;
        if (n == FTP_LS_MAX)            /* the heap, from here on */
            for (size_t i = n / 2; i-- > 0;)
                ftp_list_sift(es, n, i);
    }
    closedir(d);
    size_t bytes = 32;                  /* "OK N MORE\n" */
    for (size_t i = 0; i < n; i++)
        bytes += strlen(es[i].name) + 23;   /* the size's 20 digits at most, ' ', '\n' */
    char *t = rc == 0 ? malloc(bytes) : NULL;
    if (t) {
        qsort(es, n, sizeof *es, ftp_list_cmp);
        size_t k = (size_t)snprintf(t, bytes, "OK %zu%s\n", n, more ? " MORE" : "");
        for (size_t i = 0; i < n; i++)
            k += (size_t)snprintf(t + k, bytes - k, "%lld %s\n", es[i].size, es[i].name);
        *text = t;
        *len = k;
    } else {
        rc = -ENOMEM;
    }
    for (size_t i = 0; i < n; i++)
        free(es[i].name);
    free(es);
    return rc;
}


/* ------------------------------------------------ files being received */

/*
 * Where a process that receives one file at a time (a forked session)
 * notes the named temporary file it receives into, so that its stop
 * signal's handler can remove it (ftp_part_note_remove) before it exits.
 * Only the fallback of ftp_part_open has a name to note.
 */
struct ftp_part_note {
    volatile sig_atomic_t set;
    int dirfd;
    char tmp[32];
};

/* Removes the noted temporary file, if any; async-signal-safe. */
static inline void ftp_part_note_remove(const struct ftp_part_note *n)
{
    if (n->set)
        unlinkat(n->dirfd, n->tmp, 0);
}

/* A file being received into directory dirfd. */
struct ftp_part {
    int dirfd, fd;              /* fd: -1 once closed */
    bool own_dir;               /* dirfd is p's: ftp_part_end closes it */
    bool named;                 /* the fallback: fd has the name tmp */
    bool offload;               /* its file calls on an offload worker */
    struct ftp_part_note *note; /* where a named one is noted; NULL: nowhere */
    char tmp[32];
};

/*
 * Creates the file an incoming file is written to, in directory dirfd:
 * with O_TMPFILE, so that it has no name at all until it is complete
 * (whatever ends the process meanwhile, even SIGKILL, leaves nothing
 * behind); where the file system refuses O_TMPFILE, under a new hidden
 * name (FTP_TMP_PREFIX and eight random hex digits, O_EXCL), noted in note
 * (unless NULL) for a stop signal's handler.  Mode 0644 (less the umask).
 * offload: ftp_part_recv's file calls run on an offload worker.  dirfd
 * stays the caller's.  Returns 0, -ENOENT when the directory was removed,
 * or the open's -errno (p->fd is then -1).
 */
static inline int ftp_part_open(struct ftp_part *p, int dirfd, bool offload,
                                struct ftp_part_note *note)
{
    p->dirfd = dirfd;
    p->own_dir = false;
    p->offload = offload;
    p->note = note;
    p->named = false;
    p->tmp[0] = '\0';
    p->fd = openat(dirfd, ".", O_TMPFILE | O_WRONLY | O_CLOEXEC, 0644);
    if (p->fd >= 0)
        return 0;
    int err = errno;
    struct stat st;
    if (fstat(dirfd, &st) == 0 && st.st_nlink == 0)
        return -ENOENT;         /* removed (O_TMPFILE says EPERM there) */
    if (err != EOPNOTSUPP && err != EISDIR && err != EINVAL)
        return -err;
    p->named = true;
    for (int tries = 0; tries < 16; tries++) {
        ftp_tmp_name(p->tmp);
        p->fd = openat(dirfd, p->tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                       0644);
        if (p->fd >= 0) {
            if (note) {
                note->dirfd = dirfd;
                memcpy(note->tmp, p->tmp, sizeof note->tmp);
                atomic_signal_fence(memory_order_seq_cst);
                note->set = 1;
            }
            return 0;
        }
        if (errno != EEXIST)
            return -errno;
    }
    return -EEXIST;
}

/*
 * Whether an upload may be stored under name (checked by ftp_name_problem)
 * beneath rootfd: when nothing has that name, or a regular file (which it
 * would replace).  What the name leads to is opened (O_PATH) with
 * ftp_open_regular_as, so a symbolic link is followed only where it stays
 * beneath the root.  Returns 0; -EISDIR for a directory or any other file
 * that is not regular (a FIFO, a socket, a device; a symbolic link where
 * every one is refused); or ftp_open_beneath's error.
 */
static inline int ftp_target_problem(int rootfd, const char *name)
{
    int fd = ftp_open_regular_as(rootfd, name, O_PATH);
    if (fd < 0)
        return fd == -ENOENT ? 0 : fd;
    close(fd);
    return 0;
}

/*
 * ftp_part_open in the directory of name (checked by ftp_name_problem)
 * beneath rootfd (ftp_open_parent), which p then owns: ftp_part_end closes
 * it; first, name is checked (ftp_target_problem).  Returns 0, or
 * ftp_target_problem's, ftp_open_parent's or the open's error (nothing is
 * then left open).
 */
static inline int ftp_part_open_beneath(struct ftp_part *p, int rootfd, const char *name,
                                        bool offload, struct ftp_part_note *note)
{
    int rc = ftp_target_problem(rootfd, name);
    if (rc < 0)
        return rc;
    int dirfd = ftp_open_parent(rootfd, name);
    if (dirfd < 0)
        return dirfd;
    rc = ftp_part_open(p, dirfd, offload, note);
    if (rc < 0)
        close(dirfd);
    else
        p->own_dir = true;
    return rc;
}

/* Closes p's file and removes it unless it was stored (rc == 0); closes
 * its directory too when it is p's. */
static inline void ftp_part_end(struct ftp_part *p, int rc)
{
    if (p->fd >= 0)
        close(p->fd);
    p->fd = -1;
    if (rc < 0 && p->named)
        unlinkat(p->dirfd, p->tmp, 0);
    if (p->named && p->note)
        p->note->set = 0;
    if (p->own_dir)
        close(p->dirfd);
    p->own_dir = false;
}

/* Removes a file that will not be received (after ftp_part_open or
 * ftp_part_open_beneath, instead of ftp_part_recv). */
static inline void ftp_part_drop(struct ftp_part *p)
{
    ftp_part_end(p, -ECANCELED);
}

/* ---------------------------------------------------------------- jobs */

/*
 * A blocking file call of a session - opening a name beneath the root for
 * GET, or the file an upload is written to for PUT, listing the root,
 * hashing a whole file for GET, hashing and writing a chunk, sending one
 * from the file with sendfile (whose disk reads block), or storing a
 * received file under its name - run in the calling thread, or on an
 * offload worker (conc/offload.h) while only the calling coroutine parks
 * and its hub serves the others.  The job owns all that the call touches
 * (duplicates of the descriptors, a socket of its own over a duplicate of
 * the connection's descriptor, the chunk, copies of the names) and all
 * that it makes (the descriptor it opens, the file being received, the
 * listing), so that a caller that stops waiting (a killed coroutine, which
 * then closes its connection) leaves nothing the worker still uses, and
 * nothing behind: the worker then frees the job with all it holds.  A
 * caller that waited to the end takes what the job made out of it (and
 * marks it taken: fd -1, part.fd -1, text NULL) before it frees the job.
 */
enum ftp_job_op {
    FTP_JOB_OPEN,               /* open the regular file name beneath dirfd for
                                   reading (ftp_open_regular) into fd */
    FTP_JOB_CREATE,             /* check name beneath dirfd and make the file an
                                   upload to it is written to, in its directory
                                   (ftp_part_open_beneath, its later file calls
                                   offloaded), into part */
    FTP_JOB_LIST,               /* the answer to LS for dirfd (ftp_list) into text and
                                   len */
    FTP_JOB_HASH,               /* hash all of fd (ftp_hash_file) into hash, its size
                                   into off */
    FTP_JOB_WRITE,              /* hash buf[0 .. len) into hs, then write it to fd */
    FTP_JOB_SENDFILE,           /* send up to len bytes of fd at off on sock, as many
                                   as go without waiting */
    FTP_JOB_STORE,              /* sync fd and give it the name name (ftp_part_recv) */
};

struct ftp_job {
    enum ftp_job_op op;
    int fd, dirfd;              /* duplicates (-1: none), closed by ftp_job_free;
                                   OPEN: fd is what it opened */
    conc_socket *sock;          /* SENDFILE: the job's own socket (conc_socket_dup of
                                   the connection), freed by ftp_job_free */
    int rc;                     /* OPEN, CREATE, LIST, STORE: 0 or -errno; WRITE: 0,
                                   or the first failed write's -errno (the writes stop,
                                   the hashing goes on); SENDFILE: 0 (all sent, or the
                                   end of the file), -ETIMEDOUT (the socket is full),
                                   or the send's -errno */
    bool named;                 /* STORE: fd already has the name tmp */
    size_t len;                 /* WRITE: bytes in buf; SENDFILE: asked, then sent;
                                   LIST: bytes in text */
    uint64_t off;               /* SENDFILE: where in the file; HASH: its size */
    unsigned char hash[crypto_hash_sha256_BYTES];   /* HASH */
    crypto_hash_sha256_state hs;        /* WRITE */
    struct ftp_part part;       /* CREATE: the file made (part.fd -1: none), dropped
                                   by ftp_job_free */
    char *text;                 /* LIST: the answer, freed by ftp_job_free */
    char tmp[32];               /* STORE: the temporary name in dirfd */
    char name[FTP_NAME_MAX + 1];        /* OPEN, CREATE: the name beneath dirfd;
                                           STORE: the final name in dirfd */
    unsigned char buf[];        /* WRITE (and STORE after it): FTP_CHUNK bytes */
};

/* A job for op with duplicates of fd and dirfd (each -1: none), or NULL
 * with errno set. */
static inline struct ftp_job *ftp_job_new(enum ftp_job_op op, int fd, int dirfd)
{
    struct ftp_job *j = calloc(1, sizeof *j + (op == FTP_JOB_WRITE ? FTP_CHUNK : 0));
    if (!j)
        return NULL;
    j->op = op;
    j->part.fd = -1;
    j->fd = fd < 0 ? -1 : fcntl(fd, F_DUPFD_CLOEXEC, 0);
    j->dirfd = dirfd < 0 ? -1 : fcntl(dirfd, F_DUPFD_CLOEXEC, 0);
    if ((fd >= 0 && j->fd < 0) || (dirfd >= 0 && j->dirfd < 0)) {
        int err = errno;
        if (j->fd >= 0)
            close(j->fd);
        if (j->dirfd >= 0)
            close(j->dirfd);
        free(j);
        errno = err;
        return NULL;
    }
    return j;
}

static inline void ftp_job_free(struct ftp_job *j)
{
    if (j->sock)
        conc_socket_free(j->sock);
    if (j->part.fd >= 0)
        ftp_part_drop(&j->part);    /* made, never taken: removed */
    free(j->text);
    if (j->fd >= 0)
        close(j->fd);
    if (j->dirfd >= 0)
        close(j->dirfd);
    free(j);
}

/* Links the unnamed file fd (O_TMPFILE) into dirfd under a new hidden name
 * (FTP_TMP_PREFIX and eight random hex digits), written to tmp: through
 * /proc/self/fd, else (no /proc) with AT_EMPTY_PATH.  Returns 0 or -errno. */
static inline int ftp_link_tmpfile(int fd, int dirfd, char tmp[32])
{
    char proc[40];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    for (int tries = 0; tries < 16; tries++) {
        ftp_tmp_name(tmp);
        if (linkat(AT_FDCWD, proc, dirfd, tmp, AT_SYMLINK_FOLLOW) == 0)
            return 0;
        if (errno == ENOENT && linkat(fd, "", dirfd, tmp, AT_EMPTY_PATH) == 0)
            return 0;
        if (errno != EEXIST)
            return -errno;
    }
    return -EEXIST;
}

static inline void *ftp_job_run(void *arg)
{
    struct ftp_job *j = arg;
    switch (j->op) {
    case FTP_JOB_OPEN: {
        int fd = ftp_open_regular(j->dirfd, j->name);
        if (fd < 0)
            j->rc = fd;
        else
            j->fd = fd;
        break;
    }
    case FTP_JOB_CREATE:
        j->rc = ftp_part_open_beneath(&j->part, j->dirfd, j->name, true, NULL);
        break;
    case FTP_JOB_LIST:
        j->rc = ftp_list(j->dirfd, &j->text, &j->len);
        break;
    case FTP_JOB_HASH:
        j->rc = ftp_hash_file(j->fd, j->hash, &j->off);
        break;
    case FTP_JOB_WRITE:
        crypto_hash_sha256_update(&j->hs, j->buf, (unsigned long long)j->len);
        for (size_t off = 0; off < j->len && j->rc == 0;) {
            ssize_t w = write(j->fd, j->buf + off, j->len - off);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                j->rc = w < 0 ? -errno : -EIO;
            else
                off += (size_t)w;
        }
        break;
    case FTP_JOB_SENDFILE: {
        /* A deadline already passed (0): the call never waits for room.
         * It sends what the socket takes (SIGPIPE blocked around
         * sendfile(2): a client that is gone is -EPIPE) and says
         * -ETIMEDOUT, with the count so far, once the socket is full; the
         * caller waits for room on its hub, not here. */
        size_t n = 0;
        j->rc = conc_socket_sendfile_until(j->sock, j->fd, (off_t)j->off, j->len, &n, 0);
        j->len = n;
        break;
    }
    case FTP_JOB_STORE:
        /* Synced, then named (an unnamed file first gets a temporary name:
         * linkat cannot replace a file, rename can), then renamed over
         * name in one step. */
        if (fsync(j->fd) < 0) {
            j->rc = -errno;
            break;
        }
        if (!j->named && (j->rc = ftp_link_tmpfile(j->fd, j->dirfd, j->tmp)) < 0)
            break;
        if (renameat(j->dirfd, j->tmp, j->dirfd, j->name) < 0) {
            j->rc = -errno;
            if (!j->named)
                unlinkat(j->dirfd, j->tmp, 0);   /* the caller knows only named ones */
        }
        break;
    }
    return j;
}

static inline void ftp_job_abandoned(void *arg, void *result)
{
    (void)result;
    ftp_job_free(arg);
}

/*
 * Runs the job *jp: in the calling thread, or with offload on an offload
 * worker.  Returns 0 once it ran (its outcome is in the job); -EAGAIN,
 * -ENOMEM when the worker pool did not take it (it did not run, the job is
 * still the caller's); -ECANCELED when the calling coroutine was killed
 * while it ran: the job is then the worker's, which frees it, and *jp
 * becomes NULL.
 */
static inline int ftp_job_call(struct ftp_job **jp, bool offload)
{
    if (!offload) {
        ftp_job_run(*jp);
        return 0;
    }
    conc_offload_opts oo = CONC_OFFLOAD_OPTS_INIT;
    oo.abandon = ftp_job_abandoned;
    int rc = conc_offload_opts_until(ftp_job_run, *jp, NULL, CONC_NO_DEADLINE, &oo);
    if (rc < 0 && rc != -EAGAIN && rc != -EINVAL && rc != -ENOMEM)
        *jp = NULL;             /* accepted, and runs on without us */
    return rc;
}

/*
 * A new job for op (with duplicates of fd and dirfd, each -1: none, and a
 * copy of name unless NULL) run on an offload worker while the calling
 * coroutine parks.  Returns the job once it ran, with *rc its outcome
 * (j->rc), for the caller to take what it made and free it
 * (ftp_job_free); else NULL, and *rc says why: the job could not be made
 * or handed over, or the coroutine was killed meanwhile (-ECANCELED: the
 * worker frees the job and all it holds once it ran).
 */
static inline struct ftp_job *ftp_job_offload(enum ftp_job_op op, int fd, int dirfd,
                                              const char *name, int *rc)
{
    struct ftp_job *j = ftp_job_new(op, fd, dirfd);
    if (!j) {
        *rc = -errno;
        return NULL;
    }
    if (name)
        snprintf(j->name, sizeof j->name, "%s", name);
    *rc = ftp_job_call(&j, true);
    if (*rc == 0) {
        *rc = j->rc;
        return j;
    }
    if (j)
        ftp_job_free(j);
    return NULL;
}

/* -------------------------------------------- receiving a file's bytes */

/*
 * Receives a file of `size` bytes from r into p (which it closes), hashing
 * the bytes as they are written, then syncs it and gives it the name base
 * (in the same directory, replacing a file of that name in one step) only
 * when every byte came and the SHA-256 equals want; in every other case it
 * is removed, so that a partial or corrupted transfer never appears under
 * base.  Each read waits until idle_ns after the last one (< 0: forever).
 * A write that fails (-ENOSPC...) does not stop the reading: the stream
 * stays in step, at the end of the file's bytes.  Returns 0; -EBADMSG when
 * the hash differs; -EPIPE when the stream ended early; the socket's
 * -errno (the stream is then out of step); -ECANCELED; the file system's
 * -errno (in step).
 */
static inline int ftp_part_recv(struct ftp_part *p, struct ftp_reader *r, const char *base,
                                uint64_t size, const unsigned char want[crypto_hash_sha256_BYTES],
                                int64_t idle_ns)
{
    struct ftp_job *j = ftp_job_new(FTP_JOB_WRITE, p->fd, p->dirfd);
    int rc = j ? 0 : -errno;
    if (j)
        crypto_hash_sha256_init(&j->hs);
    for (uint64_t got = 0; rc == 0 && got < size;) {
        /* A whole chunk (or the rest) first, then one call to write it. */
        size_t want_n = size - got < FTP_CHUNK ? (size_t)(size - got) : FTP_CHUNK;
        for (j->len = 0; rc == 0 && j->len < want_n;) {
            int64_t deadline = idle_ns < 0 ? -1 : conc_now() + idle_ns;
            ssize_t k = ftp_read_some(r, j->buf + j->len, want_n - j->len, deadline);
            if (k == 0)
                rc = -EPIPE;
            else if (k < 0)
                rc = (int)k;
            else
                j->len += (size_t)k;
        }
        if (rc == 0)
            rc = ftp_job_call(&j, p->offload);
        got += want_n;
    }
    if (rc == 0)
        rc = j->rc;             /* a failed write */
    if (rc == 0) {
        unsigned char h[crypto_hash_sha256_BYTES];
        crypto_hash_sha256_final(&j->hs, h);
        if (sodium_memcmp(h, want, sizeof h) != 0)
            rc = -EBADMSG;
    }
    if (rc == 0) {
        j->op = FTP_JOB_STORE;
        j->named = p->named;
        memcpy(j->tmp, p->tmp, sizeof j->tmp);
        snprintf(j->name, sizeof j->name, "%s", base);
        rc = ftp_job_call(&j, p->offload);
        if (rc == 0)
            rc = j->rc;
    }
    if (j)
        ftp_job_free(j);
    ftp_part_end(p, rc);
    return rc;
}

#endif
