/*
 * shm.c - Value and Array (typed objects in anonymous shared memory) and
 * SharedMemory (named or anonymous segments).
 *
 * A Value or Array is one sealed memfd, laid out as:
 *
 *   offset   0  struct obj_info: magic, version, kind, type code, sizes
 *   offset  64  the RLock (process-shared, robust); unused when raw
 *   offset 128  the data: 64-byte aligned, since every mapping starts on a
 *               page boundary
 *
 * The memfd is sealed against shrinking and growing once its size is set,
 * so no process can truncate it under another's mapping (SIGBUS).  Attach
 * checks the seals and every header field against the file's size before it
 * trusts anything, then copies what it needs into the handle: a peer that
 * scribbles on the header later cannot make this process read out of bounds.
 *
 * Named SharedMemory segments are files in /dev/shm (where glibc's shm_open
 * puts them), opened directly so libconc needs no librt.  A new segment is
 * made as an unnamed O_TMPFILE, sized, and only then linked under its name,
 * so the name never shows a half-made (empty) segment and a crash during
 * creation leaves nothing.  Where O_TMPFILE or /proc is missing, it falls
 * back to open(O_CREAT | O_EXCL).  The creating process remembers the
 * segment's inode: it removes the name on close, and at normal exit (a
 * library destructor) for segments never closed, but only while the name
 * still refers to that inode, so it never removes a segment somebody else
 * created later under the same name.
 */
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "conc/shm.h"
#include "internal.h"
#include "sys/memfd.h"

/* ------------------------------------------------------- Value, Array */

/* "conc-obj" in the first 8 bytes of the memfd. */
#define OBJ_MAGIC   UINT64_C(0x6a626f2d636e6f63)
#define OBJ_VERSION 1u

enum { KIND_VALUE = 1, KIND_ARRAY = 2 };

struct obj_info {
    uint64_t magic;
    uint32_t version;
    uint8_t kind;
    char typecode;
    uint16_t flags;         /* CONC_SHM_RAW */
    uint32_t elem_size;
    uint32_t data_offset;
    uint64_t length;        /* elements */
    uint64_t total_size;    /* bytes of the memfd */
};

struct obj_header {
    struct obj_info info;
    conc_rlock lock __attribute__((aligned(64)));
};

#define DATA_ALIGN  64u
#define DATA_OFFSET ((sizeof(struct obj_header) + DATA_ALIGN - 1) & ~(size_t)(DATA_ALIGN - 1))

_Static_assert(sizeof(struct obj_info) <= 64, "the info fits one cache line");
_Static_assert(offsetof(struct obj_header, lock) == 64, "the lock has its own line");
_Static_assert(DATA_OFFSET % DATA_ALIGN == 0, "data aligned");

/* What this process knows about one mapped Value or Array. */
struct obj {
    struct obj_header *hdr;
    void *data;
    size_t map_size;
    size_t len;
    size_t elem;
    int fd;
    char typecode;
    bool raw;
};

/* Both handles are exactly a struct obj (obj_open allocates them as one). */
struct conc_value {
    struct obj o;
};

struct conc_array {
    struct obj o;
};

/* The byte size of a type code's C type, 0 for an unknown code. */
static size_t type_size(char c)
{
    switch (c) {
    case 'c': return sizeof(char);
    case 'b': return sizeof(signed char);
    case 'B': return sizeof(unsigned char);
    case 'h': return sizeof(short);
    case 'H': return sizeof(unsigned short);
    case 'i': return sizeof(int);
    case 'I': return sizeof(unsigned int);
    case 'l': return sizeof(long);
    case 'L': return sizeof(unsigned long);
    case 'q': return sizeof(long long);
    case 'Q': return sizeof(unsigned long long);
    case 'f': return sizeof(float);
    case 'd': return sizeof(double);
    default:  return 0;
    }
}

/* -errno of a failed mmap, with the address-space case as -ENOMEM. */
static int map_error(int e)
{
    return e == ENOMEM || e == EOVERFLOW || e == EINVAL ? -ENOMEM : -e;
}

static int obj_create(struct obj *o, int kind, char typecode, size_t n, const void *init,
                      unsigned flags)
{
    size_t elem = type_size(typecode);
    if ((flags & ~CONC_SHM_RAW) || elem == 0 || n == 0)
        return -EINVAL;
    if (n > (((uint64_t)INT64_MAX - DATA_OFFSET) / elem) || n > (SIZE_MAX - DATA_OFFSET) / elem)
        return -EOVERFLOW;
    size_t total = DATA_OFFSET + n * elem;
    int fd = conc__memfd_sized(kind == KIND_VALUE ? "conc-value" : "conc-array", total);
    if (fd < 0)
        return fd;
    void *base = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        int e = errno;
        close(fd);
        return map_error(e);
    }
    struct obj_header *h = base;
    bool raw = flags & CONC_SHM_RAW;
    int r = raw ? 0 : conc_rlock_init(&h->lock, CONC_SYNC_SHARED);
    if (r < 0) {
        munmap(base, total);
        close(fd);
        return r;
    }
    char *data = (char *)base + DATA_OFFSET;
    if (init)
        memcpy(data, init, n * elem);   /* else the memfd is zero-filled */
    h->info.version = OBJ_VERSION;
    h->info.kind = (uint8_t)kind;
    h->info.typecode = typecode;
    h->info.flags = raw ? CONC_SHM_RAW : 0;
    h->info.elem_size = (uint32_t)elem;
    h->info.data_offset = (uint32_t)DATA_OFFSET;
    h->info.length = n;
    h->info.total_size = total;
    st_release(&h->info.magic, OBJ_MAGIC);
    *o = (struct obj){ .hdr = h, .data = data, .map_size = total, .len = n, .elem = elem,
                       .fd = fd, .typecode = typecode, .raw = raw };
    return 0;
}

static int obj_attach(struct obj *o, int fd, int kind)
{
    if (fd < 0)
        return -EINVAL;
    struct stat st;
    if (fstat(fd, &st) != 0)
        return -errno;                  /* -EBADF */
    if (!S_ISREG(st.st_mode) || st.st_size < (off_t)(DATA_OFFSET + 1) ||
        (uint64_t)st.st_size > SIZE_MAX || !conc__memfd_size_sealed(fd))
        return -EINVAL;
    size_t size = (size_t)st.st_size;
    int own = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (own < 0)
        return -errno;
    void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, own, 0);
    if (base == MAP_FAILED) {
        int e = errno;
        close(own);
        return e == EACCES ? -EINVAL : map_error(e);    /* EACCES: not opened read-write */
    }
    struct obj_info info;
    memcpy(&info, base, sizeof info);   /* checked and used from this copy only */
    size_t elem = type_size(info.typecode);
    bool ok = info.magic == OBJ_MAGIC && info.version == OBJ_VERSION && info.kind == kind &&
              elem != 0 && info.elem_size == elem && info.data_offset == DATA_OFFSET &&
              (info.flags & ~CONC_SHM_RAW) == 0 && info.length >= 1 &&
              (kind == KIND_ARRAY || info.length == 1) &&
              info.length <= (size - DATA_OFFSET) / elem &&
              info.total_size == size && DATA_OFFSET + info.length * elem == size;
    if (!ok) {
        munmap(base, size);
        close(own);
        return -EINVAL;
    }
    *o = (struct obj){ .hdr = base, .data = (char *)base + DATA_OFFSET, .map_size = size,
                       .len = (size_t)info.length, .elem = elem, .fd = own,
                       .typecode = info.typecode, .raw = info.flags & CONC_SHM_RAW };
    return 0;
}

static void obj_release(struct obj *o)
{
    munmap(o->hdr, o->map_size);
    close(o->fd);
}

static conc_rlock *obj_lock(const struct obj *o)
{
    return o->raw ? NULL : &o->hdr->lock;
}

/* Allocates a handle (a conc_value or conc_array: both are just a struct
 * obj) around a new object, or around the one behind fd when attaching. */
static int obj_open(void **out, int kind, bool attach, int fd, char typecode, size_t n,
                    const void *init, unsigned flags)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    struct obj *o = malloc(sizeof *o);
    if (!o)
        return -ENOMEM;
    int r = attach ? obj_attach(o, fd, kind) : obj_create(o, kind, typecode, n, init, flags);
    if (r < 0) {
        free(o);
        return r;
    }
    *out = o;
    return 0;
}

int conc_value_new(conc_value **out, char typecode, const void *init, unsigned flags)
{
    return obj_open((void **)out, KIND_VALUE, false, -1, typecode, 1, init, flags);
}

void *conc_value_ptr(const conc_value *v)
{
    return v ? v->o.data : NULL;
}

char conc_value_typecode(const conc_value *v)
{
    return v ? v->o.typecode : 0;
}

size_t conc_value_size(const conc_value *v)
{
    return v ? v->o.elem : 0;
}

conc_rlock *conc_value_get_lock(const conc_value *v)
{
    return v ? obj_lock(&v->o) : NULL;
}

int conc_value_fd(const conc_value *v)
{
    return v ? v->o.fd : -EINVAL;
}

int conc_value_attach(conc_value **out, int fd)
{
    return obj_open((void **)out, KIND_VALUE, true, fd, 0, 0, NULL, 0);
}

void conc_value_free(conc_value *v)
{
    if (!v)
        return;
    obj_release(&v->o);
    free(v);
}

int conc_array_new(conc_array **out, char typecode, size_t n, const void *init, unsigned flags)
{
    return obj_open((void **)out, KIND_ARRAY, false, -1, typecode, n, init, flags);
}

void *conc_array_ptr(const conc_array *a)
{
    return a ? a->o.data : NULL;
}

size_t conc_array_len(const conc_array *a)
{
    return a ? a->o.len : 0;
}

char conc_array_typecode(const conc_array *a)
{
    return a ? a->o.typecode : 0;
}

size_t conc_array_elem_size(const conc_array *a)
{
    return a ? a->o.elem : 0;
}

conc_rlock *conc_array_get_lock(const conc_array *a)
{
    return a ? obj_lock(&a->o) : NULL;
}

int conc_array_fd(const conc_array *a)
{
    return a ? a->o.fd : -EINVAL;
}

int conc_array_attach(conc_array **out, int fd)
{
    return obj_open((void **)out, KIND_ARRAY, true, fd, 0, 0, NULL, 0);
}

void conc_array_free(conc_array *a)
{
    if (!a)
        return;
    obj_release(&a->o);
    free(a);
}

/* -------------------------------------------------------- SharedMemory */

#define SHM_DIR "/dev/shm/"

struct conc_shm {
    void *buf;
    size_t size;
    int fd;
    pid_t creator;          /* unlinks the name on close and at exit; 0: nobody */
    bool unlinked;          /* this handle removed the name (atomic access) */
    bool registered;        /* in the at-exit list */
    dev_t dev;              /* the segment's identity, to recognise its name */
    ino_t ino;
    struct conc_shm *prev, *next;
    char name[CONC_SHM_NAME_MAX + 1];
};

/*
 * The segments this process created and will unlink: the destructor removes
 * the names of those still open at normal exit.  fork() copies the list
 * with the handles; the creator pid in each keeps a child from unlinking its
 * parent's segments.
 */
static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static struct conc_shm *reg_head;
static unsigned long name_counter;

static void reg_prepare(void)
{
    pthread_mutex_lock(&reg_mu);
}

static void reg_parent(void)
{
    pthread_mutex_unlock(&reg_mu);
}

static void reg_child(void)
{
    pthread_mutex_unlock(&reg_mu);
}

/* The fork handlers are registered before reg_mu is first taken (so a fork
 * never copies it held), at the first named segment; a program that makes
 * none registers nothing. */
static pthread_once_t reg_once = PTHREAD_ONCE_INIT;
static bool reg_used;

static void reg_register(void)
{
    pthread_atfork(reg_prepare, reg_parent, reg_child);
    __atomic_store_n(&reg_used, true, __ATOMIC_RELEASE);
}

static void reg_add(conc_shm *s)
{
    pthread_once(&reg_once, reg_register);
    pthread_mutex_lock(&reg_mu);
    s->prev = NULL;
    s->next = reg_head;
    if (reg_head)
        reg_head->prev = s;
    reg_head = s;
    s->registered = true;
    pthread_mutex_unlock(&reg_mu);
}

static void reg_remove(conc_shm *s)
{
    if (!__atomic_load_n(&reg_used, __ATOMIC_ACQUIRE))
        return;                 /* nothing was ever registered */
    pthread_mutex_lock(&reg_mu);
    if (s->registered) {
        if (s->prev)
            s->prev->next = s->next;
        else
            reg_head = s->next;
        if (s->next)
            s->next->prev = s->prev;
        s->registered = false;
    }
    pthread_mutex_unlock(&reg_mu);
}

/* Checks a segment name; *bare gets it without the leading '/'. */
static int check_name(const char *name, const char **bare)
{
    if (!name)
        return -EINVAL;
    if (name[0] == '/')
        name++;
    size_t len = strnlen(name, CONC_SHM_NAME_MAX + 1);
    if (len == 0 || len > CONC_SHM_NAME_MAX || memchr(name, '/', len) ||
        strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
        return -EINVAL;
    *bare = name;
    return 0;
}

static void shm_path(char *path, const char *bare)
{
    /* path has room for SHM_DIR and CONC_SHM_NAME_MAX bytes */
    memcpy(path, SHM_DIR, sizeof SHM_DIR - 1);
    strcpy(path + sizeof SHM_DIR - 1, bare);
}

#define PATH_SIZE (sizeof SHM_DIR + CONC_SHM_NAME_MAX)

/* Removes the name when it still refers to the segment (dev, ino).
 * Returns 0, -ENOENT (gone, or now another segment), or -errno. */
static int unlink_if_same(const char *bare, dev_t dev, ino_t ino)
{
    char path[PATH_SIZE];
    shm_path(path, bare);
    struct stat st;
    if (lstat(path, &st) != 0)
        return -errno;
    if (st.st_dev != dev || st.st_ino != ino)
        return -ENOENT;
    return unlink(path) == 0 ? 0 : -errno;
}

/* At normal exit, after every atexit handler (so after conc's joins of
 * threads and children, which may still use the names).  Does nothing in a
 * process that never created a named segment. */
__attribute__((destructor)) static void shm_module_exit(void)
{
    if (!__atomic_load_n(&reg_used, __ATOMIC_ACQUIRE))
        return;
    pid_t self = getpid();
    pthread_mutex_lock(&reg_mu);
    for (conc_shm *s = reg_head; s; s = s->next) {
        if (s->creator == self && !__atomic_load_n(&s->unlinked, __ATOMIC_ACQUIRE)) {
            unlink_if_same(s->name, s->dev, s->ino);
            __atomic_store_n(&s->unlinked, true, __ATOMIC_RELEASE);
        }
    }
    pthread_mutex_unlock(&reg_mu);
}

/* Sets the size of a new segment and makes its mode exactly 0600 (the
 * umask may have taken bits away).  Returns 0 or -errno. */
static int shape(int fd, size_t size)
{
    if (fchmod(fd, 0600) != 0)
        return -errno;
    if (ftruncate(fd, (off_t)size) != 0)
        return errno == EFBIG ? -EINVAL : errno == ENOSPC ? -ENOMEM : -errno;
    return 0;
}

/* Creates the segment `bare` of `size` bytes.  Returns the descriptor, or
 * -EEXIST and the other errors of open/ftruncate. */
static int create_named(const char *bare, size_t size)
{
    char path[PATH_SIZE];
    shm_path(path, bare);

    /* Unnamed first, linked under the name once complete. */
    int fd = open(SHM_DIR, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0) {
        char self[64];
        snprintf(self, sizeof self, "/proc/self/fd/%d", fd);
        int r = shape(fd, size);
        if (r < 0) {
            close(fd);
            return r;
        }
        if (linkat(AT_FDCWD, self, AT_FDCWD, path, AT_SYMLINK_FOLLOW) == 0)
            return fd;
        int e = errno;
        close(fd);
        if (e == EEXIST)
            return -EEXIST;
        /* no /proc, or a file system without linkat of a tmpfile: fall back */
    }

    fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    int r = shape(fd, size);
    if (r < 0) {
        unlink(path);
        close(fd);
        return r;
    }
    return fd;
}

static int open_existing(const char *bare)
{
    char path[PATH_SIZE];
    shm_path(path, bare);
    int fd = open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return errno == ELOOP || errno == EISDIR || errno == ENAMETOOLONG ? -EINVAL : -errno;
    return fd;
}

/* Maps `size` bytes of fd (which the handle takes over) into a new handle. */
static int shm_finish(conc_shm **out, int fd, size_t size, const char *bare)
{
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    conc_shm *s = calloc(1, sizeof *s);
    if (!s) {
        close(fd);
        return -ENOMEM;
    }
    void *buf = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (buf == MAP_FAILED) {
        int e = errno;
        free(s);
        close(fd);
        return e == EACCES ? -EACCES : map_error(e);
    }
    s->buf = buf;
    s->size = size;
    s->fd = fd;
    s->dev = st.st_dev;
    s->ino = st.st_ino;
    if (bare)
        strcpy(s->name, bare);
    *out = s;
    return 0;
}

/* How big a segment may be: what off_t and a mapping can hold. */
#define SHM_SIZE_MAX ((size_t)INT64_MAX < SIZE_MAX ? (size_t)INT64_MAX : SIZE_MAX)

int conc_shm_open(conc_shm **out, const char *name, size_t size, unsigned flags)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    if (flags & ~(CONC_SHM_CREATE | CONC_SHM_KEEP | CONC_SHM_ANON))
        return -EINVAL;
    bool create = flags & CONC_SHM_CREATE;
    if (create && (size == 0 || size > SHM_SIZE_MAX))
        return -EINVAL;

    if (flags & CONC_SHM_ANON) {
        if (!create || name || (flags & CONC_SHM_KEEP))
            return -EINVAL;
        int fd = conc__memfd_sized("conc-shm", size);
        if (fd < 0)
            return fd == -EOVERFLOW ? -EINVAL : fd;
        return shm_finish(out, fd, size, NULL);
    }

    if (!create) {
        const char *bare;
        if ((flags & CONC_SHM_KEEP) || check_name(name, &bare) < 0)
            return -EINVAL;
        int fd = open_existing(bare);
        if (fd < 0)
            return fd;
        struct stat st;
        if (fstat(fd, &st) != 0) {
            int e = errno;
            close(fd);
            return -e;
        }
        if (!S_ISREG(st.st_mode) || st.st_size <= 0 || (uint64_t)st.st_size > SHM_SIZE_MAX ||
            size > (size_t)st.st_size) {
            close(fd);
            return -EINVAL;
        }
        return shm_finish(out, fd, size ? size : (size_t)st.st_size, bare);
    }

    char gen[PATH_SIZE];
    const char *bare;
    int fd;
    if (name) {
        if (check_name(name, &bare) < 0)
            return -EINVAL;
        fd = create_named(bare, size);
    } else {
        /* "conc-PID-N"; a name left by a crashed process that had our pid
         * makes O_EXCL fail, and the next number is tried. */
        bare = gen;
        fd = -EEXIST;
        for (int tries = 0; tries < 4096 && fd == -EEXIST; tries++) {
            unsigned long n = __atomic_add_fetch(&name_counter, 1, __ATOMIC_RELAXED);
            snprintf(gen, sizeof gen, "conc-%ld-%lu", (long)getpid(), n);
            fd = create_named(gen, size);
        }
    }
    if (fd < 0)
        return fd;
    int r = shm_finish(out, fd, size, bare);
    if (r < 0) {
        char path[PATH_SIZE];
        shm_path(path, bare);
        unlink(path);
        return r;
    }
    if (!(flags & CONC_SHM_KEEP)) {
        (*out)->creator = getpid();
        reg_add(*out);
    }
    return 0;
}

void *conc_shm_buf(const conc_shm *s)
{
    return s ? s->buf : NULL;
}

size_t conc_shm_size(const conc_shm *s)
{
    return s ? s->size : 0;
}

const char *conc_shm_name(const conc_shm *s)
{
    return s ? s->name : NULL;
}

int conc_shm_fd(const conc_shm *s)
{
    return s ? s->fd : -EINVAL;
}

int conc_shm_attach_fd(conc_shm **out, int fd)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    if (fd < 0)
        return -EINVAL;
    struct stat st;
    if (fstat(fd, &st) != 0)
        return -errno;
    if (!S_ISREG(st.st_mode) || st.st_size <= 0 || (uint64_t)st.st_size > SHM_SIZE_MAX)
        return -EINVAL;
    int own = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (own < 0)
        return -errno;
    int r = shm_finish(out, own, (size_t)st.st_size, NULL);
    return r == -EACCES ? -EINVAL : r;
}

void conc_shm_free(conc_shm *s)
{
    if (!s)
        return;
    if (s->creator == getpid() && !__atomic_load_n(&s->unlinked, __ATOMIC_ACQUIRE))
        unlink_if_same(s->name, s->dev, s->ino);
    reg_remove(s);
    munmap(s->buf, s->size);
    close(s->fd);
    free(s);
}

int conc_shm_unlink(conc_shm *s)
{
    if (!s || s->name[0] == '\0')
        return -EINVAL;
    if (__atomic_load_n(&s->unlinked, __ATOMIC_ACQUIRE))
        return -ENOENT;
    int r = unlink_if_same(s->name, s->dev, s->ino);
    if (r == 0 || r == -ENOENT)
        __atomic_store_n(&s->unlinked, true, __ATOMIC_RELEASE);
    return r == -EPERM ? -EACCES : r;
}

int conc_shm_unlink_name(const char *name)
{
    const char *bare;
    if (check_name(name, &bare) < 0)
        return -EINVAL;
    char path[PATH_SIZE];
    shm_path(path, bare);
    if (unlink(path) == 0)
        return 0;
    return errno == EPERM ? -EACCES : errno == EISDIR ? -EINVAL : -errno;
}

/* Parses "conc-PID-N" as conc generates it (decimal numbers without
 * leading zeros, nothing else); true with *pid > 0. */
static bool parse_generated(const char *s, pid_t *pid)
{
    if (strncmp(s, "conc-", 5) != 0 || s[5] == '0')
        return false;
    s += 5;
    long long p = 0;
    int digits = 0;
    for (; *s >= '0' && *s <= '9'; s++, digits++) {
        p = p * 10 + (*s - '0');
        if (p > INT_MAX)
            return false;
    }
    if (digits == 0 || p <= 0 || *s != '-')
        return false;
    s++;
    if (*s < '1' || *s > '9')
        return false;
    while (*s >= '0' && *s <= '9')
        s++;
    if (*s != '\0')
        return false;
    *pid = (pid_t)p;
    return true;
}

int conc_shm_cleanup(void)
{
    DIR *d = opendir(SHM_DIR);
    if (!d)
        return -errno;
    int dfd = dirfd(d);
    pid_t self = getpid();
    uid_t uid = geteuid();
    int removed = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        pid_t pid;
        if (!parse_generated(e->d_name, &pid) || pid == self)
            continue;
        struct stat st, again;
        if (fstatat(dfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode) ||
            st.st_uid != uid)
            continue;
        if (kill(pid, 0) == 0 || errno != ESRCH)
            continue;               /* runs (EPERM: runs as another user) */
        /* Still the same file: nobody replaced it since it was judged. */
        if (fstatat(dfd, e->d_name, &again, AT_SYMLINK_NOFOLLOW) != 0 ||
            again.st_dev != st.st_dev || again.st_ino != st.st_ino)
            continue;
        if (unlinkat(dfd, e->d_name, 0) == 0 && removed < INT_MAX)
            removed++;
    }
    closedir(d);
    return removed;
}
