/* coro_stack.c - the coroutine stack pool; see coro_stack.h. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "coro_stack.h"
#include "sys/san.h"

#ifndef MAP_STACK
#define MAP_STACK 0
#endif

#define SLAB_BYTES ((size_t)64 << 20)   /* address space per slab (target) */
#define SLAB_MAX_STACKS 1024
#define HOT_MAX 256                     /* free stacks per size keeping pages */
#define BATCH 64                        /* stacks released per madvise round */

size_t conc__stack_zone_bytes = 4096;

struct slab {
    char *base;
    size_t len;
    size_t n, carved;
    conc__stack *desc;
    struct slab *next;
};

struct stack_pool {
    size_t size;                /* usable bytes */
    size_t stride;              /* zone + usable */
    size_t per_slab;
    struct slab *slabs;         /* newest (the one being carved) first */
    conc__stack *hot;           /* free, pages kept */
    conc__stack *clean;         /* free, no resident pages */
    size_t n_hot, n_clean, n_used, n_carved, n_inflight;
    conc__stack *batch[BATCH];  /* waiting to be released */
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
} P = { .lock = PTHREAD_MUTEX_INITIALIZER, .guard_limit = -1 };

static void pool_lock(void)
{
    pthread_mutex_lock(&P.lock);
}

static void pool_unlock(void)
{
    pthread_mutex_unlock(&P.lock);
}

/* The default guard budget: an eighth of the process's map entries. */
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

__attribute__((constructor(CONC__CTOR_MODULE))) static void stack_module_init(void)
{
    long page = sysconf(_SC_PAGESIZE);
    if (page > 0)
        conc__stack_zone_bytes = (size_t)page;
    pthread_atfork(pool_lock, pool_unlock, pool_unlock);
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

static struct slab *new_slab(struct stack_pool *p)
{
    size_t len = p->per_slab * p->stride;
    struct slab *sl = malloc(sizeof *sl);
    conc__stack *desc = calloc(p->per_slab, sizeof *desc);
    void *m = MAP_FAILED;
    if (sl && desc)
        m = mmap(NULL, len, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (m == MAP_FAILED) {
        free(sl);
        free(desc);
        return NULL;
    }
#ifdef MADV_NOHUGEPAGE
    /* A huge page would make a stack's first touch cost 2 MiB. */
    madvise(m, len, MADV_NOHUGEPAGE);
#endif
    *sl = (struct slab){ .base = m, .len = len, .n = p->per_slab, .desc = desc };
    for (size_t i = 0; i < sl->n; i++) {
        desc[i].lo = sl->base + i * p->stride;
        desc[i].hi = desc[i].lo + p->stride;
        desc[i].pool = p;
    }
    /* The lowest stack's zone borders whatever lies below the slab. */
    if (mprotect(sl->base, conc__stack_zone(), PROT_NONE) == 0) {
        desc[0].guarded = desc[0].slab_guard = 1;
        P.slab_guards++;
    }
    sl->next = p->slabs;
    p->slabs = sl;
    P.slabs++;
    P.mapped += len;
    return sl;
}

static conc__stack *carve(struct stack_pool *p)
{
    struct slab *sl = p->slabs;
    if (!sl || sl->carved == sl->n) {
        sl = new_slab(p);
        if (!sl)
            return NULL;
    }
    conc__stack *s = &sl->desc[sl->carved++];
    p->n_carved++;
#if CONC_HAVE_VALGRIND
    VALGRIND_STACK_REGISTER(conc__stack_base(s), s->hi);
#endif
    return s;
}

int conc__stack_get(size_t size, conc__stack **out)
{
    pool_lock();
    if (P.guard_limit < 0)
        P.guard_limit = default_guard_limit();
    struct stack_pool *p = find_pool(size);
    conc__stack *s = NULL;
    if (p) {
        if ((s = p->hot) != NULL) {
            p->hot = s->next;
            p->n_hot--;
        } else if (p->n_batch > 0) {
            s = p->batch[--p->n_batch];
        } else if ((s = p->clean) != NULL) {
            p->clean = s->next;
            p->n_clean--;
        } else {
            s = carve(p);
        }
    }
    if (!s) {
        pool_unlock();
        return -ENOMEM;
    }
    if (!s->guarded && (long)P.guarded < P.guard_limit
        && mprotect(s->lo, conc__stack_zone(), PROT_NONE) == 0) {
        s->guarded = 1;
        P.guarded++;
    }
    s->next = NULL;
    s->dirty = 1;
    p->n_used++;
    pool_unlock();
    *out = s;
    return 0;
}

static int by_address(const void *a, const void *b)
{
    const conc__stack *x = *(conc__stack *const *)a, *y = *(conc__stack *const *)b;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* Release the pages of the pool's batch (called locked; unlocks around the
 * system calls), then file the stacks as clean. */
static void flush_batch(struct stack_pool *p)
{
    conc__stack *b[BATCH];
    size_t n = p->n_batch;
    if (n == 0)
        return;
    memcpy(b, p->batch, n * sizeof b[0]);
    p->n_batch = 0;
    p->n_inflight += n;
    pool_unlock();
    qsort(b, n, sizeof b[0], by_address);
    /* Neighbouring stacks go in one call (the zones between them are
     * guard pages or never-written zero pages: releasing them is harmless). */
    for (size_t i = 0; i < n;) {
        size_t j = i + 1;
        while (j < n && b[j]->lo == b[j - 1]->hi)
            j++;
        char *start = conc__stack_base(b[i]);
        int ok = madvise(start, (size_t)(b[j - 1]->hi - start), MADV_DONTNEED) == 0;
        for (size_t k = i; k < j; k++)
            b[k]->dirty = !ok;
        i = j;
    }
    pool_lock();
    p->n_inflight -= n;
    for (size_t i = 0; i < n; i++) {
        b[i]->next = p->clean;
        p->clean = b[i];
        p->n_clean++;
    }
}

void conc__stack_put(conc__stack *s, const void *sp)
{
#if CONC_SAN_ADDRESS
    /* Frames still live on the stack (all of them for a coroutine freed
     * while suspended) left their redzones poisoned in ASan's shadow: clear
     * what lies above the last stack pointer, or everything. */
    {
        char *base = conc__stack_base(s);
        char *from = base;
        if (sp && (const char *)sp - 1024 > base && (const char *)sp <= s->hi)
            from = (char *)sp - 1024;
        __asan_unpoison_memory_region(from, (size_t)(s->hi - from));
    }
#else
    (void)sp;
#endif
    struct stack_pool *p = s->pool;
    pool_lock();
    p->n_used--;
    if (p->n_hot < HOT_MAX) {
        s->next = p->hot;
        p->hot = s;
        p->n_hot++;
    } else {
        p->batch[p->n_batch++] = s;
        if (p->n_batch == BATCH)
            flush_batch(p);
    }
    pool_unlock();
}

void conc__stack_trim(void)
{
    pool_lock();
    for (struct stack_pool *p = P.pools; p; p = p->next) {
        flush_batch(p);
        while (p->hot) {
            while (p->hot && p->n_batch < BATCH) {
                conc__stack *s = p->hot;
                p->hot = s->next;
                p->n_hot--;
                p->batch[p->n_batch++] = s;
            }
            flush_batch(p);
        }
    }
    pool_unlock();
}

long conc__stack_guard_limit(long n)
{
    pool_lock();
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
    pool_lock();
    if (P.guard_limit < 0)
        P.guard_limit = default_guard_limit();
    for (struct stack_pool *p = P.pools; p; p = p->next) {
        st->stacks_used += p->n_used;
        st->stacks_hot += p->n_hot + p->n_batch;
        st->stacks_clean += p->n_clean + p->n_inflight;
        st->stacks_carved += p->n_carved;
    }
    st->slabs = P.slabs;
    st->bytes_mapped = P.mapped;
    st->guarded = P.guarded + P.slab_guards;
    st->guard_limit = P.guard_limit;
    pool_unlock();
}
