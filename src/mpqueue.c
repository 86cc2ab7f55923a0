/*
 * mpqueue.c - multiprocessing.Queue / JoinableQueue / SimpleQueue: byte
 * messages in a ring of shared memory (a sealed memfd).
 *
 * The ring holds records one after another at absolute byte positions
 * (64-bit counters that never wrap; the offset in the ring is pos & mask):
 *
 *     [stamp u64][len u32][seq u32][payload, padded to 16 bytes]
 *
 * Producers serialize on `plock`, consumers on `clock`, both robust shared
 * locks.  Only the holder of plock ever writes into the ring, between tail
 * and head + capacity.  A record is published by one release store of its
 * stamp (pos + 1): a consumer at `head` sees a message when the stamp there
 * equals head + 1.  Before publishing, the producer clears the stamp of the
 * next record's slot, so stale bytes (an old payload) can never pass for a
 * stamp.  A consumer takes a message by one release store of head.
 *
 * So a process dying anywhere leaves either the whole message or none of it,
 * and the only state to repair is the producers' bookkeeping (tail and the
 * count of messages put, updated after the stamp): the next producer that
 * takes plock and is told the holder died rolls them forward from the
 * record at tail (repair_producers).  Consumers have nothing to repair.
 *
 * Sleeping: a consumer that found no message parks on the spot `getters`
 * (sys/park.h): it counts itself, fences, checks again and sleeps; a
 * producer that published fences and, when the count is not 0, claims and
 * wakes every sleeper (see wait_for for the lost-wake-up argument).
 * Likewise `putters` and `joiners`.  A wake-up claims every sleeper, so a
 * waiter that dies counted costs one extra wake-up; one that dies claimed
 * takes nothing from the others (they all were woken), and a shared sleep
 * ends after a slice anyway.
 *
 * Nothing read from the shared mapping is trusted: another process may be
 * broken or hostile and write anything there.  The settings (capacity,
 * max_msg, maxsize, kind) are read once at attach, checked, and kept in the
 * handle; ring offsets are masked to 16-byte slots inside the ring, so a
 * record header read at any position lies inside the mapping; a length is
 * used only once it is at most max_msg (so no copy passes the ring's end);
 * and positions, lengths and counts that no correct peer could have written
 * (a misaligned head or tail, more bytes queued than the ring holds, a
 * message missing where tail says one is, more messages than bytes) make
 * the call fail with -EPROTO instead of reading garbage or waiting forever.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "conc/mpqueue.h"
#include "conc/sync.h"
#include "internal.h"
#include "mpqueue.h"
#include "sys/memfd.h"
#include "sys/park.h"
#include "sys/wait.h"

#define MPQ_MAGIC 0x31515057434e4f43ull     /* "CONCWPQ1" */
#define MPQ_VERSION 2u
#define HDR 16u
#define CAP_MIN ((size_t)4096)

struct rec_hdr {
    uint64_t stamp;     /* pos + 1 once the record is complete, else anything */
    uint32_t len;
    uint32_t seq;       /* low 32 bits of the message's number */
};

/* A readiness eventfd's shared state. */
struct sig {
    uint32_t armed;     /* some process asked for the fd: keep it up to date */
    uint32_t set;       /* the eventfd was written and not drained since */
};

/* Each side's fields get lines of their own (128 bytes: the adjacent-line
 * prefetcher moves lines in pairs), so producers and consumers never write
 * to a line the other side reads on every message. */
#define SIDE _Alignas(128)

struct mpq_shared {
    /* Read-only after creation, or rarely written. */
    uint64_t magic;
    uint32_t version;
    uint32_t kind;
    uint64_t capacity;
    uint64_t max_msg;
    uint64_t maxsize;
    uint64_t ring_off;
    uint64_t total;
    uint32_t shutdown;  /* 0, 1 = shut down, 2 = immediate */
    uint32_t pad0;
    struct sig sig_in, sig_out;
    /* Producers. */
    SIDE conc_lock plock;
    uint64_t tail;
    uint64_t puts;      /* messages published (may lag by one, see above) */
    uint64_t hcache;    /* a recent head, to spare reading the consumers' line */
    /* Consumers. */
    SIDE conc_lock clock;
    uint64_t head;
    /* Sleepers' flags (read after every message) and words. */
    SIDE struct conc__park getters, putters, joiners;
    SIDE uint64_t done; /* task_done calls */
};

/* What this process knows about the queue: the settings are checked once
 * and kept here, never read again from the shared header. */
struct conc_mpqueue {
    struct mpq_shared *sh;
    uint8_t *ring;
    uint64_t cap, max_msg, maxsize;
    uint64_t mask;      /* (cap - 1) & ~15: a 16-byte slot inside the ring */
    uint32_t kind;
    size_t map_len;
    int fd, efd_in, efd_out;
};

#define POS_ALIGN ((uint64_t)HDR - 1)

static inline uint64_t rec_size(uint64_t len)
{
    return HDR + ((len + 15) & ~(uint64_t)15);
}

static inline struct rec_hdr *hdr_at(const conc_mpqueue *q, uint64_t pos)
{
    return (struct rec_hdr *)(q->ring + (pos & q->mask));
}

static void ring_write(conc_mpqueue *q, uint64_t pos, const void *src, size_t n)
{
    size_t off = (size_t)(pos & q->mask);
    size_t first = n < q->cap - off ? n : (size_t)(q->cap - off);
    memcpy(q->ring + off, src, first);
    if (n > first)
        memcpy(q->ring, (const uint8_t *)src + first, n - first);
}

static void ring_read(const conc_mpqueue *q, uint64_t pos, void *dst, size_t n)
{
    size_t off = (size_t)(pos & q->mask);
    size_t first = n < q->cap - off ? n : (size_t)(q->cap - off);
    memcpy(dst, q->ring + off, first);
    if (n > first)
        memcpy((uint8_t *)dst + first, q->ring, n - first);
}

/* The message at head, if any: its length, else -1; -EPROTO for a length
 * over max_msg (no producer writes one). */
static inline int64_t msg_at(const conc_mpqueue *q, uint64_t head)
{
    struct rec_hdr *h = hdr_at(q, head);
    if (ld_acquire(&h->stamp) != head + 1)
        return -1;
    uint32_t len = ld_relaxed(&h->len);
    return len <= q->max_msg ? (int64_t)len : -EPROTO;
}

/*
 * Called by a consumer (clock held, so head cannot move) that found no
 * message at head: looks again after reading tail.  Producers publish a
 * record's stamp before they move tail past it, so with tail read first, a
 * record must be at head whenever head < tail.  head may pass tail by one
 * record for a moment (a producer died between the two stores), never by
 * more.  Returns the message's length after all, -1 for none, or -EPROTO
 * when the positions cannot be right.
 */
static int64_t recheck_empty(const conc_mpqueue *q, uint64_t head)
{
    uint64_t tail = ld_acquire(&q->sh->tail);
    int64_t len = msg_at(q, head);
    if (len != -1)
        return len;
    int64_t queued = (int64_t)(tail - head);
    if (((head | tail) & POS_ALIGN) || queued > 0 || queued < -(int64_t)rec_size(q->max_msg))
        return -EPROTO;
    return -1;
}

/*
 * Looks at a record header without the consumers' lock (has_msg,
 * next_size, qsize).  The head such a look starts from may be stale by the
 * time it reads the header, and the bytes there may be in the middle of
 * being rewritten as another message's payload.  Whatever it reads is
 * checked (the stamp against head + 1, head read again afterwards) and only
 * steers a decision that the lock-holding code makes again, so a torn value
 * does no harm; ThreadSanitizer, which would call the overlap a race, is
 * told not to watch these loads.
 */
#if defined(__SANITIZE_THREAD__)
#define NO_TSAN __attribute__((no_sanitize("thread"), noinline))
#else
#define NO_TSAN
#endif

NO_TSAN static bool peek_hdr(const conc_mpqueue *q, uint64_t head, uint32_t *len, uint32_t *seq)
{
    const struct rec_hdr *h = hdr_at(q, head);
    if (__atomic_load_n(&h->stamp, __ATOMIC_ACQUIRE) != head + 1)
        return false;
    if (len)
        *len = __atomic_load_n(&h->len, __ATOMIC_RELAXED);
    if (seq)
        *seq = __atomic_load_n(&h->seq, __ATOMIC_RELAXED);
    return true;
}

static bool has_msg(const conc_mpqueue *q)
{
    return peek_hdr(q, ld_acquire(&q->sh->head), NULL, NULL);
}

/* ------------------------------------------------------------ readiness */

static void sig_raise(struct sig *s, int efd)
{
    if (!ld_relaxed(&s->armed) || ld_relaxed(&s->set))
        return;
    uint64_t one = 1;
    ssize_t w = write(efd, &one, sizeof one);
    (void)w;
    __atomic_store_n(&s->set, 1, __ATOMIC_SEQ_CST);
}

/* Called by whoever saw that the condition no longer holds; `holds` is
 * re-checked after draining so that a raise racing with us is not lost. */
static void sig_reset(conc_mpqueue *q, struct sig *s, int efd, bool (*holds)(conc_mpqueue *))
{
    if (!ld_relaxed(&s->armed))
        return;
    __atomic_store_n(&s->set, 0, __ATOMIC_SEQ_CST);
    uint64_t v;
    ssize_t r = read(efd, &v, sizeof v);
    (void)r;
    conc__full_fence();
    if (holds(q))
        sig_raise(s, efd);
}

static bool can_get(conc_mpqueue *q)
{
    return ld_relaxed(&q->sh->shutdown) || has_msg(q);
}

static bool can_put(conc_mpqueue *q)
{
    return ld_relaxed(&q->sh->shutdown) || !conc_mpqueue_full(q);
}

/* ------------------------------------------------------------- sleeping */

/* After a change that may let p's sleepers go on: wakes them all. */
static void wake_parked(struct conc__park *p)
{
    conc__full_fence();
    conc__park_wake(p, INT_MAX, CONC__WAIT_SHARED);
}

/*
 * Waits until ready(q) may hold: spins a little when that can help
 * (watching the queue itself: a waker finds nobody counted and makes no
 * call), then parks on p.  Returns 0 to re-check, -EAGAIN for a poll,
 * -ETIMEDOUT, -ECANCELED.
 *
 * No lost wake-up: the waiter counts itself (a seq_cst read-modify-write)
 * and fences before its last look at the queue; a waker changes the queue,
 * fences (wake_parked) and reads the count.  Either the look sees the
 * change, or the waker sees the count and wakes.
 */
static int wait_for(conc_mpqueue *q, bool (*ready)(conc_mpqueue *, uint64_t), uint64_t arg,
                    struct conc__park *p, int64_t deadline, bool poll)
{
    if (poll)
        return -EAGAIN;
    struct conc__spin s;
    if (conc__spin_begin(&s, deadline)) {
        while (conc__spin_step(&s, 1))
            if (ready(q, arg))
                return 0;
    }
    uint32_t key = conc__park_prepare(p);
    conc__full_fence();
    if (ready(q, arg)) {
        conc__park_cancel(p, key);
        return 0;
    }
    int r = conc__park_wait(p, key, deadline, CONC__WAIT_SHARED | CONC__PARK_NOSPIN, 0);
    return r > 0 ? 0 : r;
}

/* ------------------------------------------------------------ producers */

/* Rolls forward what a producer that died holding plock had published. */
static void repair_producers(conc_mpqueue *q)
{
    struct mpq_shared *sh = q->sh;
    uint64_t tail = sh->tail;
    struct rec_hdr *h = hdr_at(q, tail);
    uint32_t len = ld_acquire(&h->stamp) == tail + 1 ? ld_relaxed(&h->len) : UINT32_MAX;
    if (len <= q->max_msg) {
        uint64_t puts = ld_acquire(&sh->puts);
        if ((uint32_t)puts == h->seq)
            st_release(&sh->puts, puts + 1);
        st_release(&sh->tail, tail + rec_size(len));
    }
    conc_lock_consistent(&sh->plock);
}

static int lock_producers(conc_mpqueue *q)
{
    int r = conc_lock_acquire(&q->sh->plock, CONC_FOREVER);
    if (unlikely(r == -EOWNERDEAD)) {
        repair_producers(q);
        r = 0;
    }
    return r;
}

static int lock_consumers(conc_mpqueue *q)
{
    int r = conc_lock_acquire(&q->sh->clock, CONC_FOREVER);
    if (unlikely(r == -EOWNERDEAD)) {
        conc_lock_consistent(&q->sh->clock);
        r = 0;
    }
    return r;
}

/* Messages queued as seen from a head position (plock held: the records
 * between head and tail cannot change under us). */
static uint64_t count_from(conc_mpqueue *q, uint64_t head, uint64_t tail)
{
    if (head == tail)
        return 0;
    return (uint32_t)((uint32_t)ld_acquire(&q->sh->puts) - hdr_at(q, head)->seq);
}

/*
 * With plock held (and a dead holder's state repaired): 1 when a record of
 * rs bytes fits now, 0 when not, -EPROTO when head and tail cannot be
 * right.  Here every published record lies below tail, so head is at most
 * tail, at most a ring behind it, and the records between them hold at
 * least one message per 16 bytes.
 */
static int fits(conc_mpqueue *q, uint64_t rs)
{
    struct mpq_shared *sh = q->sh;
    uint64_t need = rs + HDR;   /* the next record's stamp slot stays free */
    uint64_t tail = sh->tail, head = sh->hcache;
    if (unlikely(tail & POS_ALIGN))
        return -EPROTO;
    /* The count needs the real head: below it, the ring may already hold
     * newer bytes where a stale head's header was. */
    if (q->maxsize || tail - head > q->cap || q->cap - (tail - head) < need) {
        head = ld_acquire(&sh->head);
        sh->hcache = head;
        if (unlikely((head & POS_ALIGN) || tail - head > q->cap))
            return -EPROTO;
        if (q->cap - (tail - head) < need)
            return 0;
        if (q->maxsize) {
            uint64_t n = count_from(q, head, tail);
            if (unlikely(n > (tail - head) / HDR))
                return -EPROTO;
            if (n >= q->maxsize)
                return 0;
        }
    }
    return 1;
}

/* For the sleeping producer: may a record of rs bytes fit now? */
static bool put_ready(conc_mpqueue *q, uint64_t rs)
{
    struct mpq_shared *sh = q->sh;
    if (ld_relaxed(&sh->shutdown))
        return true;
    uint64_t head = ld_acquire(&sh->head), tail = ld_acquire(&sh->tail);
    uint64_t used = tail - head;
    if (used <= q->cap && q->cap - used < rs + HDR)
        return false;
    return !q->maxsize || conc_mpqueue_qsize(q) < q->maxsize;
}

static int put_impl(conc_mpqueue *q, const void *data, size_t len, int64_t deadline, bool poll)
{
    if (!q || (!data && len))
        return -EINVAL;
    if (len > q->max_msg)
        return -EMSGSIZE;
    struct mpq_shared *sh = q->sh;
    uint64_t rs = rec_size(len);
    for (;;) {
        int r = lock_producers(q);
        if (r)
            return r;
        if (ld_relaxed(&sh->shutdown)) {
            conc_lock_release(&sh->plock);
            return -EPIPE;
        }
        int f = fits(q, rs);
        if (f > 0)
            break;
        conc_lock_release(&sh->plock);
        if (f < 0)
            return f;
        sig_reset(q, &sh->sig_out, q->efd_out, can_put);
        r = wait_for(q, put_ready, rs, &sh->putters, deadline, poll);
        if (r)
            return r;
    }
    uint64_t tail = sh->tail;
    uint64_t puts = ld_acquire(&sh->puts);
    struct rec_hdr *h = hdr_at(q, tail);
    st_relaxed(&hdr_at(q, tail + rs)->stamp, 0);
    if (len)
        ring_write(q, tail + HDR, data, len);
    st_relaxed(&h->len, (uint32_t)len);
    st_relaxed(&h->seq, (uint32_t)puts);
    st_release(&h->stamp, tail + 1);            /* published */
    st_release(&sh->puts, puts + 1);
    st_release(&sh->tail, tail + rs);
    conc_lock_release(&sh->plock);
    wake_parked(&sh->getters);
    sig_raise(&sh->sig_in, q->efd_in);
    return 0;
}

int conc_mpqueue_put(conc_mpqueue *q, const void *data, size_t len, double timeout)
{
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return put_impl(q, data, len, deadline, poll);
}

int conc_mpqueue_put_until(conc_mpqueue *q, const void *data, size_t len, int64_t deadline)
{
    return put_impl(q, data, len, deadline, false);
}

/* ------------------------------------------------------------ consumers */

/* Raises the producers' count of puts to cover message seq (a producer
 * that died after publishing it may have left it behind): task_done must
 * never find more done than put. */
static void cover_seq(struct mpq_shared *sh, uint32_t seq)
{
    uint64_t p = ld_acquire(&sh->puts);
    while ((int32_t)((uint32_t)p - (seq + 1)) < 0) {
        uint64_t want = p + (uint32_t)(seq + 1 - (uint32_t)p);
        if (__atomic_compare_exchange_n(&sh->puts, &p, want, false, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE))
            break;
    }
}

static bool get_ready(conc_mpqueue *q, uint64_t unused)
{
    (void)unused;
    return can_get(q);
}

/*
 * Takes the next message.  mode 0: copy into buf/cap; mode 1: malloc it
 * into *out.  Returns the length, or a negative code.
 */
static ssize_t get_impl(conc_mpqueue *q, void *buf, size_t cap, void **out, int64_t deadline,
                        bool poll)
{
    struct mpq_shared *sh = q->sh;
    for (;;) {
        int r = lock_consumers(q);
        if (r)
            return r;
        uint32_t sd = ld_acquire(&sh->shutdown);
        uint64_t head = sh->head;
        int64_t len = sd == 2 ? -1 : msg_at(q, head);
        if (len == -1 && sd != 2)
            len = recheck_empty(q, head);
        if (unlikely(len == -EPROTO)) {
            conc_lock_release(&sh->clock);
            return -EPROTO;
        }
        if (len >= 0) {
            void *dst = buf;
            if (out) {
                dst = malloc(len ? (size_t)len : 1);
                if (!dst) {
                    conc_lock_release(&sh->clock);
                    return -ENOMEM;
                }
            } else if ((size_t)len > cap) {
                conc_lock_release(&sh->clock);
                return -EMSGSIZE;
            }
            if (len)
                ring_read(q, head + HDR, dst, (size_t)len);
            uint32_t seq = hdr_at(q, head)->seq;
            st_release(&sh->head, head + rec_size((uint64_t)len));     /* taken */
            conc_lock_release(&sh->clock);
            if (q->kind == CONC_MPQUEUE_JOINABLE)
                cover_seq(sh, seq);
            wake_parked(&sh->putters);
            sig_raise(&sh->sig_out, q->efd_out);
            if (out)
                *out = dst;
            return (ssize_t)len;
        }
        conc_lock_release(&sh->clock);
        if (sd)
            return -EPIPE;
        sig_reset(q, &sh->sig_in, q->efd_in, can_get);
        r = wait_for(q, get_ready, 0, &sh->getters, deadline, poll);
        if (r)
            return r;
    }
}

ssize_t conc_mpqueue_get(conc_mpqueue *q, void *buf, size_t cap, double timeout)
{
    int64_t deadline;
    bool poll;
    if (!q || (!buf && cap) || conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return get_impl(q, buf, cap, NULL, deadline, poll);
}

ssize_t conc_mpqueue_get_until(conc_mpqueue *q, void *buf, size_t cap, int64_t deadline)
{
    if (!q || (!buf && cap))
        return -EINVAL;
    return get_impl(q, buf, cap, NULL, deadline, false);
}

static int alloc_result(ssize_t r, void *const *p, void **out, size_t *len)
{
    if (r < 0)
        return (int)r;
    *out = *p;
    *len = (size_t)r;
    return 0;
}

int conc_mpqueue_get_alloc(conc_mpqueue *q, void **out, size_t *len, double timeout)
{
    int64_t deadline;
    bool poll;
    void *p = NULL;
    if (!q || !out || !len || conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return alloc_result(get_impl(q, NULL, 0, &p, deadline, poll), &p, out, len);
}

int conc_mpqueue_get_alloc_until(conc_mpqueue *q, void **out, size_t *len, int64_t deadline)
{
    void *p = NULL;
    if (!q || !out || !len)
        return -EINVAL;
    return alloc_result(get_impl(q, NULL, 0, &p, deadline, false), &p, out, len);
}

ssize_t conc_mpqueue_next_size(conc_mpqueue *q)
{
    if (!q)
        return -EINVAL;
    struct mpq_shared *sh = q->sh;
    for (;;) {
        uint32_t sd = ld_acquire(&sh->shutdown);
        uint64_t head = ld_acquire(&sh->head);
        uint32_t n;
        int64_t len = sd != 2 && peek_hdr(q, head, &n, NULL) ? (int64_t)n : -1;
        if (ld_acquire(&sh->head) != head)
            continue;           /* taken meanwhile: the length may be stale */
        if (len > (int64_t)q->max_msg)
            return -EPROTO;
        if (len >= 0)
            return (ssize_t)len;
        return sd ? -EPIPE : -EAGAIN;
    }
}

/* ------------------------------------------------------------ snapshots */

size_t conc_mpqueue_qsize(const conc_mpqueue *q)
{
    if (!q)
        return 0;
    struct mpq_shared *sh = q->sh;
    for (;;) {
        uint64_t head = ld_acquire(&sh->head);
        uint32_t seq;
        if (!peek_hdr(q, head, NULL, &seq))
            return 0;
        uint32_t puts = (uint32_t)ld_acquire(&sh->puts);
        if (ld_acquire(&sh->head) != head)
            continue;
        int32_t n = (int32_t)(puts - seq);
        if (n <= 0)
            return 1;                   /* a message is there */
        /* No more than the ring can hold, whatever the counts say. */
        return (uint64_t)n <= q->cap / HDR ? (size_t)n : (size_t)(q->cap / HDR);
    }
}

bool conc_mpqueue_empty(const conc_mpqueue *q)
{
    return !q || !has_msg(q);
}

bool conc_mpqueue_full(const conc_mpqueue *q)
{
    if (!q)
        return false;
    struct mpq_shared *sh = q->sh;
    uint64_t head = ld_acquire(&sh->head);
    uint64_t used = ld_acquire(&sh->tail) - head;
    /* (head passes tail for a moment when a producer died after publishing) */
    if (used <= q->cap && q->cap - used < 2 * HDR)
        return true;
    return q->maxsize && conc_mpqueue_qsize(q) >= q->maxsize;
}

size_t conc_mpqueue_maxsize(const conc_mpqueue *q)
{
    return q ? (size_t)q->maxsize : 0;
}

size_t conc_mpqueue_max_msg(const conc_mpqueue *q)
{
    return q ? (size_t)q->max_msg : 0;
}

size_t conc_mpqueue_capacity(const conc_mpqueue *q)
{
    return q ? (size_t)q->cap : 0;
}

/* ------------------------------------------------------------ join */

int conc_mpqueue_task_done(conc_mpqueue *q)
{
    if (!q || q->kind != CONC_MPQUEUE_JOINABLE)
        return -EINVAL;
    struct mpq_shared *sh = q->sh;
    uint64_t d = ld_acquire(&sh->done);
    for (;;) {
        uint64_t p = ld_acquire(&sh->puts);
        if (d >= p)
            return -EOVERFLOW;
        if (__atomic_compare_exchange_n(&sh->done, &d, d + 1, false, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE))
            break;
    }
    wake_parked(&sh->joiners);
    return 0;
}

size_t conc_mpqueue_unfinished(const conc_mpqueue *q)
{
    if (!q || q->kind != CONC_MPQUEUE_JOINABLE)
        return 0;
    uint64_t d = ld_acquire(&q->sh->done);
    uint64_t p = ld_acquire(&q->sh->puts);
    return p > d ? (size_t)(p - d) : 0;
}

static bool all_done(conc_mpqueue *q, uint64_t unused)
{
    (void)unused;
    return conc_mpqueue_unfinished(q) == 0;
}

static int join_impl(conc_mpqueue *q, int64_t deadline, bool poll)
{
    if (!q || q->kind != CONC_MPQUEUE_JOINABLE)
        return -EINVAL;
    while (!all_done(q, 0)) {
        int r = wait_for(q, all_done, 0, &q->sh->joiners, deadline, poll);
        if (r)
            return r;
    }
    return 0;
}

int conc_mpqueue_join(conc_mpqueue *q, double timeout)
{
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return join_impl(q, deadline, poll);
}

int conc_mpqueue_join_until(conc_mpqueue *q, int64_t deadline)
{
    return join_impl(q, deadline, false);
}

/* ------------------------------------------------------------ shutdown */

int conc_mpqueue_shutdown(conc_mpqueue *q, bool immediate)
{
    if (!q)
        return -EINVAL;
    struct mpq_shared *sh = q->sh;
    int r = lock_producers(q);
    if (r)
        return r;
    r = lock_consumers(q);
    if (r) {
        conc_lock_release(&sh->plock);
        return r;
    }
    uint32_t want = immediate ? 2 : 1;
    if (ld_relaxed(&sh->shutdown) < want)
        __atomic_store_n(&sh->shutdown, want, __ATOMIC_SEQ_CST);
    if (immediate && sh->head != sh->tail) {
        uint64_t n = count_from(q, sh->head, sh->tail);
        st_release(&sh->head, sh->tail);
        if (q->kind == CONC_MPQUEUE_JOINABLE) {
            uint64_t d = ld_acquire(&sh->done), p = ld_acquire(&sh->puts);
            if (d + n > p)
                n = p - d;
            __atomic_fetch_add(&sh->done, n, __ATOMIC_ACQ_REL);
        }
    }
    conc_lock_release(&sh->clock);
    conc_lock_release(&sh->plock);
    wake_parked(&sh->getters);
    wake_parked(&sh->putters);
    wake_parked(&sh->joiners);
    sig_raise(&sh->sig_in, q->efd_in);
    sig_raise(&sh->sig_out, q->efd_out);
    return 0;
}

bool conc_mpqueue_is_shutdown(const conc_mpqueue *q)
{
    return q && ld_acquire(&q->sh->shutdown) != 0;
}

int conc_mpqueue_fd(conc_mpqueue *q, short events)
{
    if (!q || (events != POLLIN && events != POLLOUT))
        return -EINVAL;
    struct mpq_shared *sh = q->sh;
    bool in = events == POLLIN;
    struct sig *s = in ? &sh->sig_in : &sh->sig_out;
    int efd = in ? q->efd_in : q->efd_out;
    if (!ld_acquire(&s->armed)) {
        __atomic_store_n(&s->armed, 1, __ATOMIC_SEQ_CST);
        conc__full_fence();
        if (in ? can_get(q) : can_put(q))
            sig_raise(s, efd);
    }
    return efd;
}

/* conc_wait's view (wait_objects.c): ready now?  (Resets a stale fd.) */
bool conc__mpqueue_ready(conc_mpqueue *q)
{
    if (can_get(q))
        return true;
    sig_reset(q, &q->sh->sig_in, q->efd_in, can_get);
    return false;
}

/* ------------------------------------------------------------ life */

static int map_error(int e)
{
    return e == ENOMEM || e == EOVERFLOW || e == EINVAL ? -ENOMEM : -e;
}

static size_t pow2_at_least(size_t n)
{
    size_t c = CAP_MIN;
    while (c < n)
        c <<= 1;
    return c;
}

static size_t ring_offset(void)
{
    return (sizeof(struct mpq_shared) + 4095) & ~(size_t)4095;
}

/* The settings of a queue, as created or as read (once) at attach. */
struct mpq_settings {
    uint64_t cap, max_msg, maxsize;
    uint32_t kind;
};

static void handle_init(conc_mpqueue *q, struct mpq_shared *sh, const struct mpq_settings *st,
                        size_t total, int fd, int in, int out)
{
    *q = (conc_mpqueue){ .sh = sh, .ring = (uint8_t *)sh + ring_offset(), .cap = st->cap,
                         .mask = (st->cap - 1) & ~POS_ALIGN, .max_msg = st->max_msg,
                         .maxsize = st->maxsize, .kind = st->kind, .map_len = total,
                         .fd = fd, .efd_in = in, .efd_out = out };
}

int conc_mpqueue_new(conc_mpqueue **out, const conc_mpqueue_opts *opts)
{
    conc_mpqueue_opts o;
    CONC__OPTS_COPY(&o, opts, CONC__OPTS_V1(conc_mpqueue_opts, max_msg));
    if (!out || (unsigned)o.kind > CONC_MPQUEUE_SIMPLE ||
        (o.kind == CONC_MPQUEUE_SIMPLE && o.maxsize) || o.capacity > CONC_MPQUEUE_CAPACITY_MAX ||
        o.max_msg > CONC_MPQUEUE_CAPACITY_MAX / 2 - 2 * HDR || o.maxsize > (size_t)INT32_MAX)
        return -EINVAL;
    size_t cap = pow2_at_least(o.capacity ? o.capacity : CONC_MPQUEUE_CAPACITY_DEFAULT);
    size_t max_msg = o.max_msg;
    if (!max_msg)
        max_msg = cap / 4;
    /* Room for two of the largest messages (with headers) and a slot. */
    size_t need = pow2_at_least(2 * (size_t)rec_size(max_msg) + HDR);
    if (need > cap) {
        if (o.capacity || need > CONC_MPQUEUE_CAPACITY_MAX)
            return -EINVAL;
        cap = need;
    }
    conc_mpqueue *q = malloc(sizeof *q);
    if (!q)
        return -ENOMEM;
    size_t off = ring_offset(), total = off + cap;
    int fd = conc__memfd_sized("conc-mpqueue", total);
    if (fd < 0) {
        free(q);
        return fd == -EOVERFLOW ? -ENOMEM : fd;
    }
    int in = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    int outfd = in >= 0 ? eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK) : -1;
    void *base = MAP_FAILED;
    int e = 0;
    if (in < 0 || outfd < 0)
        e = -errno;
    else if ((base = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)) == MAP_FAILED)
        e = map_error(errno);
    else if ((e = conc_lock_init(&((struct mpq_shared *)base)->plock, CONC_SYNC_SHARED)) == 0)
        e = conc_lock_init(&((struct mpq_shared *)base)->clock, CONC_SYNC_SHARED);
    if (e) {
        if (base != MAP_FAILED)
            munmap(base, total);
        if (in >= 0)
            close(in);
        if (outfd >= 0)
            close(outfd);
        close(fd);
        free(q);
        return e;
    }
    struct mpq_shared *sh = base;
    sh->version = MPQ_VERSION;
    sh->kind = (uint32_t)o.kind;
    sh->capacity = cap;
    sh->max_msg = max_msg;
    sh->maxsize = o.maxsize;
    sh->ring_off = off;
    sh->total = total;
    st_release(&sh->magic, MPQ_MAGIC);
    struct mpq_settings set = { .cap = cap, .max_msg = max_msg, .maxsize = o.maxsize,
                                .kind = (uint32_t)o.kind };
    handle_init(q, sh, &set, total, fd, in, outfd);
    *out = q;
    return 0;
}

int conc_mpqueue_fds(const conc_mpqueue *q, int fds[CONC_MPQUEUE_NFDS])
{
    if (!q || !fds)
        return -EINVAL;
    fds[0] = q->fd;
    fds[1] = q->efd_in;
    fds[2] = q->efd_out;
    return 0;
}

/* 0 when fd is an open, non-blocking eventfd (a blocking one could hang
 * sig_reset's read), -EBADF when not open, -EINVAL otherwise. */
static int check_eventfd(int fd)
{
    if (fd < 0)
        return -EINVAL;
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0)
        return -EBADF;
    if (!(fl & O_NONBLOCK))
        return -EINVAL;
    char path[64], link[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, link, sizeof link - 1);
    if (n < 0)
        return -EINVAL;
    link[n] = 0;
    return strcmp(link, "anon_inode:[eventfd]") == 0 ? 0 : -EINVAL;
}

int conc_mpqueue_attach(conc_mpqueue **out, const int fds[CONC_MPQUEUE_NFDS])
{
    if (!out || !fds || fds[0] < 0 || fds[1] < 0 || fds[2] < 0)
        return -EINVAL;
    struct stat st;
    if (fstat(fds[0], &st) != 0)
        return -errno;
    int r = check_eventfd(fds[1]);
    if (!r)
        r = check_eventfd(fds[2]);
    if (r)
        return r;
    size_t off = ring_offset();
    if (!S_ISREG(st.st_mode) || st.st_size < (off_t)(off + CAP_MIN) ||
        (uint64_t)st.st_size > off + CONC_MPQUEUE_CAPACITY_MAX || !conc__memfd_size_sealed(fds[0]))
        return -EINVAL;
    size_t total = (size_t)st.st_size;
    void *base = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], 0);
    if (base == MAP_FAILED)
        return errno == EACCES ? -EINVAL : map_error(errno);
    /* Each field is read once, checked, and used only from this copy: the
     * header stays writable by every process that has the memfd. */
    struct mpq_shared *sh = base;
    bool ok = ld_acquire(&sh->magic) == MPQ_MAGIC;
    struct mpq_settings set = { 0 };
    if (ok) {
        uint32_t version = ld_relaxed(&sh->version);
        uint64_t ring_off = ld_relaxed(&sh->ring_off), stotal = ld_relaxed(&sh->total);
        set = (struct mpq_settings){ .cap = ld_relaxed(&sh->capacity),
                                     .max_msg = ld_relaxed(&sh->max_msg),
                                     .maxsize = ld_relaxed(&sh->maxsize),
                                     .kind = ld_relaxed(&sh->kind) };
        /* As conc_mpqueue_new makes them: a power-of-two ring filling the
         * file after the header, room for two of the largest records and
         * a slot, a maxsize only where one is allowed. */
        ok = version == MPQ_VERSION && set.cap >= CAP_MIN && (set.cap & (set.cap - 1)) == 0 &&
             set.cap <= CONC_MPQUEUE_CAPACITY_MAX && ring_off == off && stotal == total &&
             off + set.cap == total && set.max_msg <= set.cap / 2 &&
             2 * rec_size(set.max_msg) + HDR <= set.cap && set.kind <= CONC_MPQUEUE_SIMPLE &&
             set.maxsize <= INT32_MAX && (set.kind != CONC_MPQUEUE_SIMPLE || set.maxsize == 0);
    }
    conc_mpqueue *q = ok ? malloc(sizeof *q) : NULL;
    if (!q) {
        munmap(base, total);
        return ok ? -ENOMEM : -EINVAL;
    }
    /* The handle gets descriptors of its own; the caller keeps its. */
    int own[CONC_MPQUEUE_NFDS], n = 0;
    for (; n < CONC_MPQUEUE_NFDS; n++) {
        own[n] = fcntl(fds[n], F_DUPFD_CLOEXEC, 0);
        if (own[n] < 0) {
            r = -errno;
            while (n-- > 0)
                close(own[n]);
            free(q);
            munmap(base, total);
            return r;
        }
    }
    handle_init(q, sh, &set, total, own[0], own[1], own[2]);
    *out = q;
    return 0;
}

void conc_mpqueue_free(conc_mpqueue *q)
{
    if (!q)
        return;
    munmap(q->sh, q->map_len);
    close(q->fd);
    close(q->efd_in);
    close(q->efd_out);
    free(q);
}
