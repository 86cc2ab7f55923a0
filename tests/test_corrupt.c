/*
 * test_corrupt.c - shared memory written by a broken or hostile process:
 * every length, position, count and header field that conc reads from a
 * shared segment is checked before it is used.  A process queue whose ring
 * or header was scribbled on gives -EPROTO (or -EINVAL at attach), never a
 * read or write outside the mapping, a hang or a crash; a Value or Array
 * whose header lies is refused at attach.
 *
 * The tests write into the segment through a second mapping of the memfd
 * (what any process holding the descriptors can do).  When the address
 * after the queue's own mapping is free, they put an inaccessible page
 * there, so that a read or write past the end of the ring faults at once
 * instead of landing silently in whatever is mapped next.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conc.h"

#define GUARD 20.0

/* ============================================================ layout */

/* The queue's shared header as src/mpqueue.c lays it out (version 2). */
#define MPQ_MAGIC UINT64_C(0x31515057434e4f43)
#define SIDE _Alignas(128)
struct mpq_layout {
    uint64_t magic;
    uint32_t version;
    uint32_t kind;
    uint64_t capacity;
    uint64_t max_msg;
    uint64_t maxsize;
    uint64_t ring_off;
    uint64_t total;
    uint32_t shutdown;
    uint32_t pad0;
    uint32_t sig[4];
    SIDE conc_lock plock;
    uint64_t tail;
    uint64_t puts;
    uint64_t hcache;
    SIDE conc_lock clock;
    uint64_t head;
    SIDE uint64_t getters, putters, joiners;   /* parking spots */
    SIDE uint64_t done;
};

struct rec_layout {
    uint64_t stamp;
    uint32_t len;
    uint32_t seq;
};

/* A second mapping of a queue's memfd. */
struct view {
    struct mpq_layout *sh;
    uint8_t *ring;
    size_t size;
    uint64_t cap;
    void *guard;            /* the page after q's mapping, or NULL */
    conc_mpqueue *q;        /* a handle with the guard page after its mapping */
};

static conc_mpqueue *mkq(conc_mpqueue_kind kind, size_t maxsize, size_t capacity, size_t max_msg)
{
    conc_mpqueue *q = NULL;
    conc_mpqueue_opts o = { .kind = kind, .maxsize = maxsize, .capacity = capacity,
                            .max_msg = max_msg };
    int r = conc_mpqueue_new(&q, &o);
    cr_assert_eq(r, 0, "conc_mpqueue_new: %s", conc_errname(r));
    return q;
}

/* True when a mapping of the file with inode ino starts at addr. */
static bool mapped_at(void *addr, ino_t ino)
{
    FILE *f = fopen("/proc/self/maps", "r");
    cr_assert_not_null(f);
    char line[512];
    bool found = false;
    while (!found && fgets(line, sizeof line, f)) {
        unsigned long lo, hi, i;
        if (sscanf(line, "%lx-%lx %*s %*x %*s %lu", &lo, &hi, &i) == 3)
            found = lo == (unsigned long)(uintptr_t)addr && i == (unsigned long)ino;
    }
    fclose(f);
    return found;
}

/* A second handle on q's queue (attach duplicates the descriptors). */
static int attach_dup(conc_mpqueue *q, conc_mpqueue **a)
{
    int fds[CONC_MPQUEUE_NFDS];
    cr_assert_eq(conc_mpqueue_fds(q, fds), 0);
    return conc_mpqueue_attach(a, fds);
}

/*
 * The handle the tests work through: attached to q's queue where its
 * mapping is followed by an inaccessible page.  The space for both is
 * reserved and the mapping's part freed just before the attach, which the
 * kernel's top-down placement then reuses; when it went elsewhere after
 * all, the test goes on without the guard page.
 */
static conc_mpqueue *attach_guarded(conc_mpqueue *q, struct view *v, ino_t ino)
{
    conc_mpqueue *a = NULL, *filler[16];
    int nfill = 0;
    while (!v->guard && nfill < 16) {
        uint8_t *res = mmap(NULL, v->size + 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        cr_assert_neq(res, MAP_FAILED);
        cr_assert_eq(munmap(res, v->size), 0);
        cr_assert_eq(attach_dup(q, &a), 0);
        if (mapped_at(res, ino)) {
            v->guard = res + v->size;
        } else {
            /* It went into a higher hole just its size: keep that hole
             * filled for the next try. */
            filler[nfill++] = a;
            munmap(res + v->size, 4096);
        }
    }
    while (nfill > 0)
        conc_mpqueue_free(filler[--nfill]);
    if (!v->guard) {
        cr_log_warn("no guard page after the attached mapping");
        cr_assert_eq(attach_dup(q, &a), 0);
    }
    return a;
}

static struct view view_of(conc_mpqueue *q)
{
    int fds[CONC_MPQUEUE_NFDS];
    cr_assert_eq(conc_mpqueue_fds(q, fds), 0);
    struct stat st;
    cr_assert_eq(fstat(fds[0], &st), 0);
    struct view v = { .size = (size_t)st.st_size };
    void *p = mmap(NULL, v.size, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], 0);
    cr_assert_neq(p, MAP_FAILED);
    v.sh = p;
    cr_assert_eq(v.sh->magic, MPQ_MAGIC, "the layout above is the queue's");
    cr_assert_eq(v.sh->capacity, conc_mpqueue_capacity(q));
    cr_assert_eq(v.sh->ring_off + v.sh->capacity, v.size);
    v.ring = (uint8_t *)p + v.sh->ring_off;
    v.cap = v.sh->capacity;
    v.q = attach_guarded(q, &v, st.st_ino);
    return v;
}

static void view_free(struct view *v)
{
    conc_mpqueue_free(v->q);
    if (v->guard)
        munmap(v->guard, 4096);
    munmap(v->sh, v->size);
}

static struct rec_layout *rec_at(const struct view *v, uint64_t pos)
{
    return (struct rec_layout *)(v->ring + (pos & (v->cap - 1)));
}


/* ======================================================= queue: ring */

/* A message's length in the ring far beyond the ring (and beyond max_msg):
 * every consumer call refuses it; restored, the message is intact. */
Test(corrupt, mpqueue_huge_length, .timeout = 30)
{
    conc_mpqueue *q = mkq(CONC_MPQUEUE_QUEUE, 0, 4096, 0);
    struct view v = view_of(q);
    cr_assert_eq(conc_mpqueue_put(v.q, "hello", 5, 0), 0);
    struct rec_layout *r = rec_at(&v, v.sh->head);
    cr_assert_eq(r->len, 5);

    r->len = 0xfffffff0u;
    void *p = NULL;
    size_t len = 0;
    cr_assert_eq(conc_mpqueue_get_alloc(v.q, &p, &len, 0), -EPROTO);
    cr_assert_null(p);
    char small[16];
    cr_assert_eq(conc_mpqueue_get(v.q, small, sizeof small, 0), -EPROTO);
    cr_assert_eq(conc_mpqueue_next_size(v.q), -EPROTO);

    r->len = 5;
    cr_assert_eq(conc_mpqueue_get(v.q, small, sizeof small, 0), 5);
    cr_assert_eq(memcmp(small, "hello", 5), 0);
    view_free(&v);
    conc_mpqueue_free(q);
}

/* A length over max_msg but one the caller's buffer could take: still
 * refused (it would run past the end of the ring). */
Test(corrupt, mpqueue_length_over_max_msg, .timeout = 30)
{
    conc_mpqueue *q = mkq(CONC_MPQUEUE_QUEUE, 0, 4096, 0);
    struct view v = view_of(q);
    size_t max_msg = conc_mpqueue_max_msg(v.q);
    cr_assert_eq(conc_mpqueue_put(v.q, "x", 1, 0), 0);
    size_t big = 4 * v.cap;
    char *buf = malloc(big);
    cr_assert_not_null(buf);
    uint32_t lens[] = { (uint32_t)max_msg + 1, (uint32_t)v.cap, (uint32_t)(3 * v.cap) };
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        rec_at(&v, v.sh->head)->len = lens[i];
        cr_assert_eq(conc_mpqueue_get(v.q, buf, big, 0), -EPROTO, "len %u", lens[i]);
        void *p = NULL;
        size_t len = 0;
        cr_assert_eq(conc_mpqueue_get_alloc(v.q, &p, &len, 0), -EPROTO, "len %u", lens[i]);
        cr_assert_eq(conc_mpqueue_next_size(v.q), -EPROTO, "len %u", lens[i]);
    }
    /* max_msg itself is a length a producer may write */
    rec_at(&v, v.sh->head)->len = (uint32_t)max_msg;
    cr_assert_eq(conc_mpqueue_next_size(v.q), (ssize_t)max_msg);
    free(buf);
    view_free(&v);
    conc_mpqueue_free(q);
}

/* head and tail misaligned next to the ring's end, with a stamp that
 * matches: the header there would straddle the end of the ring. */
Test(corrupt, mpqueue_misaligned_positions, .timeout = 30)
{
    conc_mpqueue *q = mkq(CONC_MPQUEUE_QUEUE, 0, 4096, 0);
    struct view v = view_of(q);
    uint64_t pos = v.cap - 8;
    v.sh->head = pos;
    v.sh->tail = pos;
    v.sh->hcache = pos;
    memcpy(v.ring + v.cap - 8, &(uint64_t){ pos + 1 }, 8);
    char buf[64];
    cr_assert_eq(conc_mpqueue_get(v.q, buf, sizeof buf, GUARD), -EPROTO);
    void *p = NULL;
    size_t len = 0;
    cr_assert_eq(conc_mpqueue_get_alloc(v.q, &p, &len, GUARD), -EPROTO);
    cr_assert_eq(conc_mpqueue_put(v.q, "abc", 3, GUARD), -EPROTO);
    (void)conc_mpqueue_qsize(v.q);
    (void)conc_mpqueue_empty(v.q);
    (void)conc_mpqueue_full(v.q);
    (void)conc_mpqueue_next_size(v.q);
    view_free(&v);
    conc_mpqueue_free(q);
}

/* tail far ahead of head (more bytes queued than the ring holds), then far
 * behind it: puts and gets fail at once instead of overwriting queued
 * messages or waiting for a message that can never come. */
Test(corrupt, mpqueue_positions_beyond_capacity, .timeout = 30)
{
    conc_mpqueue *q = mkq(CONC_MPQUEUE_QUEUE, 0, 4096, 0);
    struct view v = view_of(q);
    cr_assert_eq(conc_mpqueue_put(v.q, "one", 3, 0), 0);
    uint64_t head = v.sh->head, tail = v.sh->tail;
    char buf[64];

    v.sh->tail = head + 8 * v.cap;
    cr_assert_eq(conc_mpqueue_put(v.q, "two", 3, GUARD), -EPROTO);
    rec_at(&v, head)->stamp = 0;            /* and no message at head */
    cr_assert_eq(conc_mpqueue_get(v.q, buf, sizeof buf, GUARD), -EPROTO);
    rec_at(&v, head)->stamp = head + 1;

    v.sh->tail = tail;
    v.sh->head = tail + 16 * v.cap;
    v.sh->hcache = v.sh->head;      /* (producers' cached copy of head) */
    cr_assert_eq(conc_mpqueue_put(v.q, "two", 3, GUARD), -EPROTO);
    cr_assert_eq(conc_mpqueue_get(v.q, buf, sizeof buf, GUARD), -EPROTO);

    /* restored, the queue works on */
    v.sh->head = head;
    v.sh->hcache = head;
    cr_assert_eq(conc_mpqueue_get(v.q, buf, sizeof buf, 0), 3);
    cr_assert_eq(memcmp(buf, "one", 3), 0);
    cr_assert_eq(conc_mpqueue_put(v.q, "two", 3, 0), 0);
    cr_assert_eq(conc_mpqueue_get(v.q, buf, sizeof buf, 0), 3);
    cr_assert_eq(memcmp(buf, "two", 3), 0);
    view_free(&v);
    conc_mpqueue_free(q);
}

/* tail says a message is queued, but none is at head. */
Test(corrupt, mpqueue_missing_message, .timeout = 30)
{
    conc_mpqueue *q = mkq(CONC_MPQUEUE_QUEUE, 0, 4096, 0);
    struct view v = view_of(q);
    v.sh->tail += 32;
    char buf[64];
    cr_assert_eq(conc_mpqueue_get(v.q, buf, sizeof buf, GUARD), -EPROTO);
    cr_assert_eq(conc_mpqueue_qsize(v.q), 0);
    view_free(&v);
    conc_mpqueue_free(q);
}

/* A count of messages put that no ring could hold: qsize stays within what
 * the ring can hold and a bounded put fails instead of waiting for room
 * that never comes. */
Test(corrupt, mpqueue_huge_count, .timeout = 30)
{
    conc_mpqueue *q = mkq(CONC_MPQUEUE_JOINABLE, 4, 4096, 0);
    struct view v = view_of(q);
    cr_assert_eq(conc_mpqueue_put(v.q, "a", 1, 0), 0);
    v.sh->puts += 1000000000u;
    cr_assert_leq(conc_mpqueue_qsize(v.q), v.cap / 16);
    cr_assert_eq(conc_mpqueue_put(v.q, "b", 1, GUARD), -EPROTO);
    (void)conc_mpqueue_full(v.q);
    (void)conc_mpqueue_unfinished(v.q);
    char buf[8];
    cr_assert_eq(conc_mpqueue_get(v.q, buf, sizeof buf, 0), 1);
    view_free(&v);
    conc_mpqueue_free(q);
}

/* ===================================================== queue: header */

/* Headers that conc_mpqueue_new never writes are refused at attach. */
Test(corrupt, mpqueue_attach_bad_header, .timeout = 30)
{
    conc_mpqueue *q = mkq(CONC_MPQUEUE_QUEUE, 0, 4096, 0);
    struct view v = view_of(q);
    struct mpq_layout saved = *v.sh;
    conc_mpqueue *a = NULL;
    struct {
        const char *what;
        uint64_t *field;
        uint64_t value;
    } cases[] = {
        { "capacity larger than the file", &v.sh->capacity, v.cap * 2 },
        { "capacity not a power of two", &v.sh->capacity, v.cap - 16 },
        { "capacity huge", &v.sh->capacity, UINT64_C(1) << 62 },
        { "max_msg over the ring", &v.sh->max_msg, v.cap * 4 },
        { "max_msg with no room for two", &v.sh->max_msg, v.cap / 2 },
        { "maxsize huge", &v.sh->maxsize, UINT64_C(1) << 40 },
        { "ring offset", &v.sh->ring_off, 64 },
        { "total", &v.sh->total, UINT64_C(1) << 40 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        *cases[i].field = cases[i].value;
        cr_assert_eq(attach_dup(q, &a), -EINVAL, "%s", cases[i].what);
        *v.sh = saved;
    }
    v.sh->kind = 7;
    cr_assert_eq(attach_dup(q, &a), -EINVAL, "unknown kind");
    v.sh->kind = CONC_MPQUEUE_SIMPLE;
    v.sh->maxsize = 3;
    cr_assert_eq(attach_dup(q, &a), -EINVAL, "SimpleQueue with a maxsize");
    *v.sh = saved;
    v.sh->version = saved.version + 1;
    cr_assert_eq(attach_dup(q, &a), -EINVAL, "version");
    *v.sh = saved;
    cr_assert_null(a);
    cr_assert_eq(attach_dup(q, &a), 0);
    conc_mpqueue_free(a);
    view_free(&v);
    conc_mpqueue_free(q);
}

/* What attach checked is what the handle uses: rewriting the header later
 * changes nothing for it. */
Test(corrupt, mpqueue_header_rewritten_after_attach, .timeout = 30)
{
    conc_mpqueue *q = mkq(CONC_MPQUEUE_QUEUE, 2, 4096, 100);
    struct view v = view_of(q);
    conc_mpqueue *a = NULL;
    cr_assert_eq(attach_dup(q, &a), 0);
    v.sh->capacity = UINT64_C(1) << 40;
    v.sh->max_msg = UINT64_C(1) << 39;
    v.sh->maxsize = 0;
    v.sh->kind = CONC_MPQUEUE_JOINABLE;
    v.sh->ring_off = 0;
    conc_mpqueue *hs[] = { q, a };
    for (int k = 0; k < 2; k++) {
        conc_mpqueue *h = hs[k];
        cr_assert_eq(conc_mpqueue_capacity(h), 4096);
        cr_assert_eq(conc_mpqueue_max_msg(h), 100);
        cr_assert_eq(conc_mpqueue_maxsize(h), 2);
        cr_assert_eq(conc_mpqueue_task_done(h), -EINVAL, "not joinable");
        char big[200] = { 0 };
        cr_assert_eq(conc_mpqueue_put(h, big, sizeof big, 0), -EMSGSIZE);
    }
    cr_assert_eq(conc_mpqueue_put(a, "1", 1, 0), 0);
    cr_assert_eq(conc_mpqueue_put(a, "2", 1, 0), 0);
    cr_assert_eq(conc_mpqueue_put(a, "3", 1, 0), -EAGAIN, "maxsize still 2");
    char buf[4];
    cr_assert_eq(conc_mpqueue_get(q, buf, sizeof buf, 0), 1);
    cr_assert_eq(buf[0], '1');
    conc_mpqueue_free(a);
    view_free(&v);
    conc_mpqueue_free(q);
}

/* A blocking eventfd passed where the readiness descriptors go would let a
 * read wait forever: refused. */
Test(corrupt, mpqueue_attach_blocking_eventfd, .timeout = 30)
{
    conc_mpqueue *q = mkq(CONC_MPQUEUE_QUEUE, 0, 0, 0);
    int fds[CONC_MPQUEUE_NFDS];
    cr_assert_eq(conc_mpqueue_fds(q, fds), 0);
    int mine[CONC_MPQUEUE_NFDS] = { fcntl(fds[0], F_DUPFD_CLOEXEC, 0),
                                    eventfd(0, EFD_CLOEXEC),
                                    fcntl(fds[2], F_DUPFD_CLOEXEC, 0) };
    for (int k = 0; k < CONC_MPQUEUE_NFDS; k++)
        cr_assert_geq(mine[k], 0);
    conc_mpqueue *a = NULL;
    cr_assert_eq(conc_mpqueue_attach(&a, mine), -EINVAL);
    cr_assert_null(a);
    for (int k = 0; k < CONC_MPQUEUE_NFDS; k++)
        close(mine[k]);
    conc_mpqueue_free(q);
}

/* ====================================================== Value, Array */

/* The header of a Value or Array as src/shm.c lays it out. */
struct obj_layout {
    uint64_t magic;
    uint32_t version;
    uint8_t kind;
    char typecode;
    uint16_t flags;
    uint32_t elem_size;
    uint32_t data_offset;
    uint64_t length;
    uint64_t total_size;
};

/* Every header field that could steer a size, a count or an offset, set to
 * a lie: attach refuses each; the true header attaches. */
Test(corrupt, array_attach_bad_header, .timeout = 30)
{
    conc_array *arr = NULL;
    cr_assert_eq(conc_array_new(&arr, 'i', 10, NULL, 0), 0);
    int fd = conc_array_fd(arr);
    struct stat st;
    cr_assert_eq(fstat(fd, &st), 0);
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    cr_assert_neq(p, MAP_FAILED);
    struct obj_layout *h = p, saved = *h;
    cr_assert_eq(h->length, 10, "the layout above is the array's");
    cr_assert_eq(h->elem_size, sizeof(int));
    conc_array *a = NULL;
    h->length = UINT64_C(1) << 60;
    cr_assert_eq(conc_array_attach(&a, fd), -EINVAL, "huge length");
    *h = saved;
    h->length = 11;
    cr_assert_eq(conc_array_attach(&a, fd), -EINVAL, "one past the file");
    *h = saved;
    h->length = 0;
    cr_assert_eq(conc_array_attach(&a, fd), -EINVAL, "no elements");
    *h = saved;
    h->elem_size = 8;
    cr_assert_eq(conc_array_attach(&a, fd), -EINVAL, "element size");
    *h = saved;
    h->typecode = 'd';
    cr_assert_eq(conc_array_attach(&a, fd), -EINVAL, "type code of another size");
    *h = saved;
    h->typecode = 'Z';
    cr_assert_eq(conc_array_attach(&a, fd), -EINVAL, "unknown type code");
    *h = saved;
    h->data_offset = 0;
    cr_assert_eq(conc_array_attach(&a, fd), -EINVAL, "data offset");
    *h = saved;
    h->total_size = UINT64_C(1) << 50;
    cr_assert_eq(conc_array_attach(&a, fd), -EINVAL, "total size");
    *h = saved;
    h->kind = 1;
    cr_assert_eq(conc_array_attach(&a, fd), -EINVAL, "a Value's kind");
    *h = saved;
    h->flags = 0x80;
    cr_assert_eq(conc_array_attach(&a, fd), -EINVAL, "unknown flags");
    *h = saved;
    cr_assert_null(a);
    cr_assert_eq(conc_array_attach(&a, fd), 0);
    cr_assert_eq(conc_array_len(a), 10);
    /* rewritten after attach: the handle keeps what it checked */
    h->length = UINT64_C(1) << 60;
    h->elem_size = 1;
    cr_assert_eq(conc_array_len(a), 10);
    cr_assert_eq(conc_array_elem_size(a), sizeof(int));
    conc_array_free(a);
    munmap(p, (size_t)st.st_size);
    conc_array_free(arr);
}

Test(corrupt, value_attach_bad_header, .timeout = 30)
{
    conc_value *val = NULL;
    cr_assert_eq(conc_value_new(&val, 'q', NULL, 0), 0);
    int fd = conc_value_fd(val);
    struct stat st;
    cr_assert_eq(fstat(fd, &st), 0);
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    cr_assert_neq(p, MAP_FAILED);
    struct obj_layout *h = p, saved = *h;
    conc_value *a = NULL;
    h->length = 2;
    cr_assert_eq(conc_value_attach(&a, fd), -EINVAL, "a Value of two");
    *h = saved;
    h->typecode = 'c';
    h->elem_size = 1;
    cr_assert_eq(conc_value_attach(&a, fd), -EINVAL, "smaller than the file");
    *h = saved;
    h->magic ^= 1;
    cr_assert_eq(conc_value_attach(&a, fd), -EINVAL, "magic");
    *h = saved;
    cr_assert_eq(conc_value_attach(&a, fd), 0);
    cr_assert_eq(conc_value_size(a), sizeof(long long));
    conc_value_free(a);
    munmap(p, (size_t)st.st_size);
    conc_value_free(val);
}
