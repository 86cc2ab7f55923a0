/* coro_stack.c - the coroutine stack pool; see coro_stack.h. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "coro_stack.h"
#include "sys/san.h"

#ifndef MAP_STACK
#define MAP_STACK 0
#endif

#define SLAB_BYTES ((size_t)64 << 20)   /* address space per slab (target) */
#define SLAB_MAX_STACKS 1024
/* Free stacks per size keeping pages in the pool; with one thread cache
 * full, 256 stacks keep theirs. */
#define HOT_MAX (256 - CONC__STACK_CACHE_MAX)
#define BATCH 64                        /* stacks released per madvise round */

size_t conc__stack_zone_bytes = 4096;
long conc__coros_global;

struct slab {
    char *base;
    size_t n, carved;
    bool canary;                /* zones shared with the stack below */
    bool bottom_guard;          /* the lowest stack's zone is a guard page */
    size_t n_marked;            /* the lowest n_marked have guard markers */
    struct slab *next;
};

/* A clean stack (no resident pages, so no node) is one word: its region's
 * address | these flags. */
#define E_GUARDED 1u
#define E_SLAB_GUARD 2u         /* the slab's bottom guard page is its zone */
#define E_SHARED 4u             /* zone at the top of the stack below */
#define E_CANARY_SLAB 8u        /* the top of its region is the next zone */
#define E_FLAGS 15u

struct stack_pool {
    size_t size;                /* usable bytes asked for */
    size_t stride;              /* bytes per region: a page + size */
    size_t per_slab;
    struct slab *slabs;         /* newest (the one being carved) first */
    conc__free_stack *hot;      /* free, pages kept */
    uintptr_t *clean;           /* free, no resident pages */
    size_t cap_clean;
    size_t n_hot, n_clean, n_used, n_carved, n_inflight;
    conc__stack batch[BATCH];   /* waiting to be released */
    size_t n_batch;
    struct stack_pool *next;
};

static struct {
    pthread_mutex_t lock;
    struct stack_pool *pools;
    long guard_limit;
    size_t guarded;             /* stacks guarded within the budget */
    size_t slab_guards;         /* slab-bottom guard pages */
    size_t slabs, mapped;
    conc__stack_cache *caches;  /* registered thread caches */
} P = { .lock = PTHREAD_MUTEX_INITIALIZER, .guard_limit = -1 };

static void pool_lock(void)
{
    pthread_mutex_lock(&P.lock);
}

static void pool_unlock(void)
{
    pthread_mutex_unlock(&P.lock);
}

static void pool_atfork_register(void);

/* The pool's lock, as every call takes it: the fork handlers are
 * registered before the lock is first taken, so a fork can never copy it
 * held, and a program that never uses coroutines registers none. */
static pthread_once_t pool_atfork_once = PTHREAD_ONCE_INIT;

static void pool_enter(void)
{
    pthread_once(&pool_atfork_once, pool_atfork_register);
    pool_lock();
}

#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#define MADV_GUARD_REMOVE 103
#endif

/*
 * Guard markers (Linux 6.13, madvise MADV_GUARD_INSTALL): a guard page made
 * of a page-table marker inside the mapping, not a PROT_NONE mapping of its
 * own, so it costs no map entry and every stack can have one.  Installed
 * for a whole slab at once (process_madvise takes a vector of ranges).
 * markers: -1 not probed yet, 0 unsupported, 1 supported.
 */
static int markers = -1;

#if defined(SYS_process_madvise) && defined(SYS_pidfd_open)
/* A pidfd of this process for process_madvise, opened on first need (under
 * the pool's lock); -2 until then, -1 when it cannot be had. */
static int self_pidfd = -2;
#endif

static bool markers_supported(void)
{
    if (markers < 0) {
        size_t page = conc__stack_zone();
        void *m = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        markers = m != MAP_FAILED && madvise(m, page, MADV_GUARD_INSTALL) == 0;
        if (m != MAP_FAILED)
            munmap(m, 2 * page);
    }
    return markers == 1;
}

/* Installs a guard marker in the zone page of each of the n regions of
 * `stride` bytes from base.  Returns whether all were installed (none are
 * left when not). */
static bool install_markers(char *base, size_t n, size_t stride)
{
    size_t page = conc__stack_zone();
#if defined(SYS_process_madvise) && defined(SYS_pidfd_open)
    if (self_pidfd == -2) {
        self_pidfd = -1;
#if CONC_HAVE_VALGRIND
        if (!RUNNING_ON_VALGRIND)   /* which does not know pidfd_open */
#endif
            self_pidfd = (int)syscall(SYS_pidfd_open, getpid(), 0);
    }
    if (self_pidfd >= 0) {
        struct iovec iov[256];
        size_t done = 0;
        while (done < n) {
            size_t k = n - done < 256 ? n - done : 256;
            for (size_t i = 0; i < k; i++) {
                iov[i].iov_base = base + (done + i) * stride;
                iov[i].iov_len = page;
            }
            long r = syscall(SYS_process_madvise, self_pidfd, iov, k, MADV_GUARD_INSTALL, 0u);
            if (r != (long)(k * page))
                break;
            done += k;
        }
        if (done == n)
            return true;
    }
#endif
    size_t i = 0;
    while (i < n && madvise(base + i * stride, page, MADV_GUARD_INSTALL) == 0)
        i++;
    if (i == n)
        return true;
    madvise(base, n * stride, MADV_GUARD_REMOVE);
    return false;
}

/* The default guard budget: an eighth of the process's map entries (a
 * PROT_NONE guard page costs two; a guard marker none, but ~0.2 us to
 * install, which a million sleeping coroutines would feel). */
static long default_guard_limit(void)
{
    long max_maps = 65530;
    FILE *f = fopen("/proc/sys/vm/max_map_count", "re");
    if (f) {
        long v;
        if (fscanf(f, "%ld", &v) == 1 && v > 0)
            max_maps = v;
        fclose(f);
    }
    return max_maps / 8;
}

/* In a fork child: the cached pidfd names the parent.  Close it (nothing in
 * the child can have closed or reused that number yet) and open the child's
 * own on next use. */
static void pool_after_fork(void)
{
#if defined(SYS_process_madvise) && defined(SYS_pidfd_open)
    if (self_pidfd >= 0)
        close(self_pidfd);
    self_pidfd = -2;
#endif
    pool_unlock();
}

static void pool_atfork_register(void)
{
    pthread_atfork(pool_lock, pool_unlock, pool_after_fork);
}

__attribute__((constructor(CONC__CTOR_MODULE))) static void stack_module_init(void)
{
    long page = sysconf(_SC_PAGESIZE);
    if (page > 0)
        conc__stack_zone_bytes = (size_t)page;
}

static struct stack_pool *find_pool(size_t size)
{
    for (struct stack_pool *p = P.pools; p; p = p->next)
        if (p->size == size)
            return p;
    struct stack_pool *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->size = size;
    p->stride = size + conc__stack_zone();
    size_t n = SLAB_BYTES / p->stride;
    p->per_slab = n < 1 ? 1 : n > SLAB_MAX_STACKS ? SLAB_MAX_STACKS : n;
    p->next = P.pools;
    P.pools = p;
    return p;
}

static inline char *region_of(const conc__stack *s)
{
    return s->shared_zone ? s->lo + CONC__STACK_CANARY : s->lo;
}

static inline char *region_end(const conc__stack *s)
{
    return region_of(s) + s->pool->stride;
}

static inline uintptr_t entry_of(const conc__stack *s)
{
    return (uintptr_t)region_of(s) | (s->guarded ? E_GUARDED : 0u)
           | (s->slab_guard ? E_SLAB_GUARD : 0u) | (s->shared_zone ? E_SHARED : 0u)
           | (s->canary_slab ? E_CANARY_SLAB : 0u);
}

static conc__stack stack_of(struct stack_pool *p, uintptr_t e)
{
    char *region = (char *)(e & ~(uintptr_t)E_FLAGS);
    conc__stack s;
    s.lo = (e & E_SHARED) ? region - CONC__STACK_CANARY : region;
    s.hi = region + p->stride - ((e & E_CANARY_SLAB) ? CONC__STACK_CANARY : 0);
    s.pool = p;
    s.guarded = (e & E_GUARDED) != 0;
    s.slab_guard = (e & E_SLAB_GUARD) != 0;
    s.shared_zone = (e & E_SHARED) != 0;
    s.canary_slab = (e & E_CANARY_SLAB) != 0;
    return s;
}

static struct slab *new_slab(struct stack_pool *p)
{
    size_t len = p->per_slab * p->stride;
    struct slab *sl = malloc(sizeof *sl);
    void *m = MAP_FAILED;
    if (sl)
        m = mmap(NULL, len, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (m == MAP_FAILED) {
        free(sl);
        return NULL;
    }
#ifdef MADV_NOHUGEPAGE
    /* A huge page would make a stack's first touch cost 2 MiB. */
    madvise(m, len, MADV_NOHUGEPAGE);
#endif
    *sl = (struct slab){ .base = m, .n = p->per_slab };
    /* Within the budget: guard markers, installed for the slab at once;
     * without them, guard pages stack by stack.  Past it: canary slabs. */
    long room = P.guard_limit - (long)P.guarded;
    size_t k = room <= 0 ? 0 : (size_t)room < sl->n ? (size_t)room : sl->n;
    if (k > 0 && markers_supported() && install_markers(sl->base, k, p->stride)) {
        sl->n_marked = k;
        sl->bottom_guard = true;
        P.guarded += k;
    } else {
        sl->canary = (long)P.guarded >= P.guard_limit;
        /* The lowest stack's zone borders whatever lies below the slab. */
        if (mprotect(sl->base, conc__stack_zone(), PROT_NONE) == 0) {
            sl->bottom_guard = true;
            P.slab_guards++;
        }
    }
    sl->next = p->slabs;
    p->slabs = sl;
    P.slabs++;
    P.mapped += len;
    return sl;
}

/* A new stack's entry, or 0. */
static uintptr_t carve(struct stack_pool *p)
{
    struct slab *sl = p->slabs;
    if (!sl || sl->carved == sl->n) {
        sl = new_slab(p);
        if (!sl)
            return 0;
    }
    size_t i = sl->carved++;
    p->n_carved++;
    uintptr_t e = (uintptr_t)(sl->base + i * p->stride);
    if (i < sl->n_marked)
        e |= E_GUARDED | (i == 0 ? E_SLAB_GUARD : 0u);
    else if (i == 0 && sl->bottom_guard)
        e |= E_GUARDED | E_SLAB_GUARD;
    if (sl->canary)
        e |= E_CANARY_SLAB | (i > 0 ? E_SHARED : 0u);
    return e;
}

/* Register c (locked), or adopt p's stacks when it is empty. */
static void cache_adopt(conc__stack_cache *c, struct stack_pool *p)
{
    if (!c)
        return;
    if (!c->registered) {
        c->registered = true;
        c->prev = NULL;
        c->next = P.caches;
        if (P.caches)
            P.caches->prev = c;
        P.caches = c;
    }
    if (!c->head) {
        c->pool = p;
        c->size = p->size;
    }
}

int conc__stack_get_slow(conc__stack_cache *cache, size_t size, conc__stack *out)
{
    pool_enter();
    if (P.guard_limit < 0)
        P.guard_limit = default_guard_limit();
    struct stack_pool *p = find_pool(size);
    conc__stack s;
    bool got = false, fresh = false;
    if (p) {
        if (p->hot) {
            conc__free_stack *f = p->hot;
            p->hot = f->next;
            p->n_hot--;
            s = f->s;
            got = true;
        } else if (p->n_batch > 0) {
            s = p->batch[--p->n_batch];
            got = true;
        } else if (p->n_clean > 0) {
            s = stack_of(p, p->clean[--p->n_clean]);
            got = true;
        } else {
            uintptr_t e = carve(p);
            if (e) {
                s = stack_of(p, e);
                got = fresh = true;
            }
        }
    }
    if (!got) {
        pool_unlock();
        return -ENOMEM;
    }
    /* Within the budget, a stack of a slab without markers gets a guard
     * page of its own (not in canary slabs: their zones are not pages). */
    if (!s.guarded && !s.canary_slab && (long)P.guarded < P.guard_limit
        && mprotect(s.lo, conc__stack_zone(), PROT_NONE) == 0) {
        s.guarded = 1;
        P.guarded++;
    }
    p->n_used++;
    cache_adopt(cache, p);
    pool_unlock();
#if CONC_HAVE_VALGRIND
    if (fresh)
        VALGRIND_STACK_REGISTER(conc__stack_base(&s), s.hi);
#endif
    (void)fresh;
    *out = s;
    return 0;
}

static int by_address(const void *a, const void *b)
{
    const conc__stack *x = a, *y = b;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* Keep s's pages: file it as hot (locked). */
static void file_hot(struct stack_pool *p, const conc__stack *s)
{
    conc__free_stack *f = conc__stack_node(s);
    f->s = *s;
    f->next = p->hot;
    p->hot = f;
    p->n_hot++;
}

/* Release the pages of the pool's batch (called locked; unlocks around the
 * system calls), then file the stacks as clean. */
static void flush_batch(struct stack_pool *p)
{
    conc__stack b[BATCH];
    uintptr_t e[BATCH];
    size_t n = p->n_batch;
    if (n == 0)
        return;
    size_t need = p->n_clean + p->n_inflight + n;
    if (need > p->cap_clean) {
        size_t cap = p->cap_clean ? p->cap_clean * 2 : 1024;
        while (cap < need)
            cap *= 2;
        uintptr_t *v = realloc(p->clean, cap * sizeof *v);
        if (!v) {               /* keep their pages */
            for (size_t i = 0; i < n; i++)
                file_hot(p, &p->batch[i]);
            p->n_batch = 0;
            return;
        }
        p->clean = v;
        p->cap_clean = cap;
    }
    memcpy(b, p->batch, n * sizeof b[0]);
    p->n_batch = 0;
    p->n_inflight += n;
    pool_unlock();
    qsort(b, n, sizeof b[0], by_address);
    /* Neighbouring stacks go in one call (the zones between them are
     * guard pages or never-written zeros: releasing them is harmless, and
     * guard markers stay). */
    size_t n_ok = 0, n_kept = 0;
    for (size_t i = 0; i < n;) {
        size_t j = i + 1;
        while (j < n && region_of(&b[j]) == region_end(&b[j - 1]))
            j++;
        char *start = conc__stack_base(&b[i]);
        size_t len = (size_t)(region_end(&b[j - 1]) - start);
        bool ok = madvise(start, len, MADV_DONTNEED) == 0;
        for (size_t k = i; k < j; k++) {
            if (ok)
                e[n_ok++] = entry_of(&b[k]);
            else
                b[n_kept++] = b[k];     /* n_kept <= k */
        }
        i = j;
    }
    pool_enter();
    p->n_inflight -= n;
    for (size_t i = 0; i < n_ok; i++)
        p->clean[p->n_clean++] = e[i];
    for (size_t i = 0; i < n_kept; i++)
        file_hot(p, &b[i]);     /* could not be released: pages kept */
}

void conc__stack_unpoison(const conc__stack *s, const void *sp)
{
#if CONC_SAN_ADDRESS
    /* Frames still live on the stack (all of them for a coroutine freed
     * while suspended) left their redzones poisoned in ASan's shadow: clear
     * what lies above the last stack pointer, or everything. */
    char *base = conc__stack_base(s);
    char *from = base;
    if (sp && (const char *)sp - 1024 > base && (const char *)sp <= s->hi)
        from = (char *)sp - 1024;
    __asan_unpoison_memory_region(from, (size_t)(s->hi - from));
#else
    (void)s;
    (void)sp;
#endif
}

/* File a stack in its pool (locked). */
static void pool_put(const conc__stack *s)
{
    struct stack_pool *p = s->pool;
    p->n_used--;
    if (p->n_hot < HOT_MAX) {
        file_hot(p, s);
    } else {
        p->batch[p->n_batch++] = *s;
        if (p->n_batch == BATCH)
            flush_batch(p);
    }
}

/* Move all but the `keep` most recent stacks of a cache to the pool
 * (locked). */
static void cache_spill(conc__stack_cache *c, size_t keep)
{
    conc__free_stack **pp = &c->head;
    size_t k = 0;
    while (*pp && k < keep) {
        pp = &(*pp)->next;
        k++;
    }
    conc__free_stack *rest = *pp;
    *pp = NULL;
    __atomic_store_n(&c->n, k, __ATOMIC_RELAXED);
    while (rest) {
        conc__free_stack *next = rest->next;
        conc__stack s = rest->s;
        pool_put(&s);
        rest = next;
    }
}

void conc__stack_put_slow(conc__stack_cache *c, const conc__stack *s)
{
    pool_enter();
    if (c && c->registered && (c->pool == s->pool || !c->head)) {
        if (c->head)
            cache_spill(c, CONC__STACK_CACHE_MAX / 2);
        c->pool = s->pool;
        c->size = s->pool->size;
        conc__free_stack *f = conc__stack_node(s);
        f->s = *s;
        f->next = c->head;
        c->head = f;
        __atomic_store_n(&c->n, c->n + 1, __ATOMIC_RELAXED);
    } else {
        pool_put(s);
    }
    pool_unlock();
}

void conc__stack_cache_drain(conc__stack_cache *c)
{
    if (!c || !c->registered)
        return;
    pool_enter();
    cache_spill(c, 0);
    if (c->prev)
        c->prev->next = c->next;
    else
        P.caches = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    c->registered = false;
    __atomic_add_fetch(&conc__coros_global, __atomic_load_n(&c->coros, __ATOMIC_RELAXED),
                       __ATOMIC_RELAXED);
    c->coros = 0;
    pool_unlock();
}

void conc__stack_trim(conc__stack_cache *c)
{
    pool_enter();
    if (c && c->registered)
        cache_spill(c, 0);
    for (struct stack_pool *p = P.pools; p; p = p->next) {
        flush_batch(p);
        while (p->hot) {
            while (p->hot && p->n_batch < BATCH) {
                conc__free_stack *f = p->hot;
                p->hot = f->next;
                p->n_hot--;
                p->batch[p->n_batch++] = f->s;
            }
            flush_batch(p);
        }
    }
    pool_unlock();
}

long conc__stack_guard_limit(long n)
{
    pool_enter();
    if (P.guard_limit < 0)
        P.guard_limit = default_guard_limit();
    long old = P.guard_limit;
    if (n >= 0)
        P.guard_limit = n;
    pool_unlock();
    return old;
}

void conc__stack_stats(conc_coro_stats *st)
{
    pool_enter();
    if (P.guard_limit < 0)
        P.guard_limit = default_guard_limit();
    for (struct stack_pool *p = P.pools; p; p = p->next) {
        st->stacks_used += p->n_used;
        st->stacks_hot += p->n_hot + p->n_batch;
        st->stacks_clean += p->n_clean + p->n_inflight;
        st->stacks_carved += p->n_carved;
    }
    long coros = __atomic_load_n(&conc__coros_global, __ATOMIC_RELAXED);
    for (conc__stack_cache *c = P.caches; c; c = c->next) {
        size_t n = __atomic_load_n(&c->n, __ATOMIC_RELAXED);
        coros += __atomic_load_n(&c->coros, __ATOMIC_RELAXED);
        st->stacks_used -= n;
        st->stacks_hot += n;
    }
    st->coros = coros > 0 ? (size_t)coros : 0;
    st->slabs = P.slabs;
    st->bytes_mapped = P.mapped;
    st->guarded = P.guarded + P.slab_guards;
    st->guard_limit = P.guard_limit;
    pool_unlock();
}
