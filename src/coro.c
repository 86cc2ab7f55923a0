/*
 * coro.c - greenlet-style coroutines: per-thread state, switching, parents,
 * stack overflow reports.  The stacks come from coro_stack.c, the machine
 * context switch from src/arch/.
 *
 * Life of a coroutine: NEW (stack allocated, context made) -> RUNNING (it is
 * its thread's current coroutine) <-> SUSPENDED -> DEAD.  A coroutine whose
 * function returns switches to its parent for the last time and becomes the
 * thread's "zombie": the thread's next conc_coro call gives its stack back to
 * the pool (nothing may run on a stack while it is released; by then nothing
 * does).  A coroutine freed while NEW or SUSPENDED loses its stack at once.
 *
 * Lifetime of the objects: each coroutine object is reference-counted: one
 * reference for the user's handle (for a main coroutine: the thread itself)
 * and one for each coroutine whose parent it is.  So a parent outlives its
 * children even when its handle was freed, and a thread's state (which holds
 * its main coroutine) outlives the thread while coroutines created there
 * remain.  The object of a coroutine of thread T therefore never moves while
 * a coroutine points to it, and "c->thread == the caller's state" is a safe
 * ownership test.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include "conc/coro.h"
#include "arch/coro_abi.h"
#include "arch/ctx.h"
#include "coro_stack.h"
#include "sys/san.h"

enum { CORO_NEW, CORO_RUNNING, CORO_SUSPENDED, CORO_DEAD };
_Static_assert(!(CORO_NEW & 1) && !(CORO_SUSPENDED & 1) && (CORO_RUNNING & 1) && (CORO_DEAD & 1),
               "a switch's fast test: the states one may switch to are even");

/* Instrumented frames are larger: scale every stack under the sanitizers. */
#if CONC_SAN_ADDRESS
#define STACK_SCALE 4
#elif CONC_SAN_THREAD
#define STACK_SCALE 2
#else
#define STACK_SCALE 1
#endif

struct coro_thread;

struct conc_coro {
    uint64_t owner;             /* lock-owner identity; 0 for main.  First:
                                   conc__owner_id() reads it through
                                   conc__coro_tls.current */
    conc__ctx ctx;              /* saved context while not running */
    struct coro_thread *thread; /* owner */
    uintptr_t key;              /* what conc__coro_tls.fast equals when a
                                   switch to it may take the plain path:
                                   its thread's state, or 1 for a coroutine
                                   every switch to which takes the full path
                                   (an unguarded or a copied stack); set
                                   once, when it is made */
    conc__stack stack;          /* hi NULL: a main coroutine, or released */
    uint8_t state;              /* CORO_*, accessed atomically (relaxed) */
    uint8_t unguarded;          /* the stack's zone is a canary, not a guard */
    uint8_t is_main;
    uint8_t embedded;           /* lives at the top of its own stack, which
                                   it keeps until the object goes */
    uint8_t weak_parent;        /* holds no reference to its parent */
    uint8_t fresh;              /* copied, its first frame not made yet */
    uint32_t refs;
    struct conc__shstack *shared;   /* copied: the stack it runs on */
    char *saved;                /* copied: its frames while another owns the
                                   shared stack */
    uint32_t saved_len, saved_cap;
    conc_coro *parent;          /* holds a reference (unless weak_parent);
                                   NULL for main */
    conc_coro_fn fn;
    void *arg;
    void *result;
    size_t stack_size;
#if CONC_SAN_ADDRESS
    void *asan_fake;            /* ASan's fake stack while suspended */
    const void *asan_bottom;    /* the stack's bounds, for switching to it */
    size_t asan_size;
#endif
#if CONC_SAN_THREAD
    void *tsan_fiber;
#endif
    char name[CONC_CORO_NAME_MAX + 1];
};

struct coro_thread {
    conc_coro main;             /* first: freeing main frees the thread state */
    conc__stack_cache cache;    /* free stacks, no lock */
    conc__stack zombie;         /* hi not NULL: the stack of a coroutine that
                                   died on this thread, not yet given back */
    const void *zombie_sp;      /* how deep that stack was at the end */
#if CONC_SAN_THREAD
    void *zombie_fiber;
#endif
#if CONC_SAN_ADDRESS
    conc_coro *prev;            /* the coroutine the last switch came from */
#endif
    unsigned long seq, seq_end; /* numbers for default names, taken in blocks */
    uint64_t owner, owner_end;  /* lock-owner identities, taken in blocks */
    char next_name[CONC_CORO_NAME_MAX + 1];    /* "Coro-<seq>" */
    size_t next_name_len;
    void *altstack;             /* our signal stack, if we installed one */
    size_t altstack_len;
    bool altstack_tried;
};


static pthread_key_t thread_key;
static pthread_once_t thread_key_once = PTHREAD_ONCE_INIT;
static struct sigaction old_segv;
/* The overflow reporter (conc_coro_set_overflow_report): REPORT_ON until the
 * first coroutine installs it (REPORT_INSTALLING, then REPORT_INSTALLED),
 * or REPORT_OFF.  Changed by compare-and-swap only. */
enum { REPORT_ON = 0, REPORT_OFF = 1, REPORT_INSTALLING = 2, REPORT_INSTALLED = 3 };
static int report_state;
static unsigned long coro_seq;
static uint64_t coro_owner_seq;

/* What conc__coro_tls.current points at while the thread has no coroutine
 * state: an owner identity of 0 (a thread's own stack), all that
 * conc__owner_id() reads there. */
static const uint64_t no_coro_owner = 0;
_Static_assert(offsetof(conc_coro, owner) == 0, "conc__owner_id() reads the first member");
#define NO_CORO ((conc_coro *)(uintptr_t)&no_coro_owner)

__thread struct conc__coro_tls conc__coro_tls __attribute__((tls_model("initial-exec"))) = {
    .current = NO_CORO,
};

static inline uint8_t state_of(const conc_coro *c)
{
    return __atomic_load_n(&c->state, __ATOMIC_RELAXED);
}

static inline void set_state(conc_coro *c, uint8_t s)
{
    __atomic_store_n(&c->state, s, __ATOMIC_RELAXED);
}

static inline conc__stack_cache *my_cache(void)
{
    struct coro_thread *t = conc__coro_tls.thread;
    return t ? &t->cache : NULL;
}

static void release_embedded(conc_coro *c);
static void release_copied(conc_coro *c);

/* Count coroutines made (+1) and freed (-1): in the calling thread's own
 * counter when it has one (no locked instruction), else process-wide. */
static inline void count_coros(long d)
{
    struct coro_thread *t = conc__coro_tls.thread;
    if (likely(t && t->cache.registered))
        __atomic_store_n(&t->cache.coros, t->cache.coros + d, __ATOMIC_RELAXED);
    else
        __atomic_add_fetch(&conc__coros_global, d, __ATOMIC_RELAXED);
}

static inline void coro_ref(conc_coro *c)
{
    __atomic_add_fetch(&c->refs, 1, __ATOMIC_RELAXED);
}

/* Drop a reference; an object without references drops its parent's.  The
 * last reference needs no atomic write: nobody else can take one then. */
static void coro_unref(conc_coro *c)
{
    while (c) {
        if (__atomic_load_n(&c->refs, __ATOMIC_ACQUIRE) != 1
            && __atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) != 0)
            return;
        conc_coro *parent = c->parent;
        if (c->is_main) {
            free(c->thread);        /* main is the first member */
            return;
        }
        bool weak = c->weak_parent;
        if (c->shared)
            release_copied(c);
        else if (c->embedded)
            release_embedded(c);
        else
            free(c);
        c = weak ? NULL : parent;
    }
}

/* ------------------------------------------------------ overflow reports */

/* Async-signal-safe message building. */
typedef struct msgbuf {
    char b[512];
    size_t n;
} msgbuf;

static void put_str(msgbuf *m, const char *s)
{
    while (*s && m->n < sizeof m->b - 1)
        m->b[m->n++] = *s++;
}

static void put_num(msgbuf *m, uintptr_t v, unsigned base)
{
    char tmp[24];
    size_t i = 0;
    do {
        tmp[i++] = "0123456789abcdef"[v % base];
        v /= base;
    } while (v && i < sizeof tmp);
    if (base == 16)
        put_str(m, "0x");
    while (i && m->n < sizeof m->b - 1)
        m->b[m->n++] = tmp[--i];
}

static __attribute__((noreturn, cold)) void overflow_abort(const conc_coro *c, const char *what,
                                                            const void *addr, const void *sp)
{
    msgbuf m = { .n = 0 };
    put_str(&m, "conc: stack overflow in coroutine '");
    put_str(&m, c->name);
    put_str(&m, "': ");
    put_str(&m, what);
    put_str(&m, " (usable stack ");
    put_num(&m, c->stack_size, 10);
    put_str(&m, " bytes at ");
    put_num(&m, (uintptr_t)conc__stack_base(&c->stack), 16);
    put_str(&m, "-");
    put_num(&m, (uintptr_t)c->stack.hi, 16);
    if (addr) {
        put_str(&m, ", fault address ");
        put_num(&m, (uintptr_t)addr, 16);
    }
    if (sp) {
        put_str(&m, ", stack pointer ");
        put_num(&m, (uintptr_t)sp, 16);
    }
    put_str(&m, "); give it a larger stack_size. Aborting.\n");
    ssize_t unused = write(STDERR_FILENO, m.b, m.n);
    (void)unused;
    abort();
}

/* An unguarded stack's canary zone, checked whenever its coroutine
 * switches away (or returns): an overflow is reported before any other
 * coroutine runs, so before a neighbouring stack it may have damaged is
 * used again. */
static __attribute__((noinline)) void check_stack(const conc_coro *c)
{
    const char *sp = __builtin_frame_address(0);
    if (sp < conc__stack_base(&c->stack))
        overflow_abort(c, "its stack pointer is below the stack's limit", NULL, sp);
    if (!conc__stack_zone_ok(&c->stack))
        overflow_abort(c, "the canary zone below its stack was overwritten", NULL, NULL);
}

static uintptr_t fault_sp(const void *uc)
{
#if defined(__x86_64__)
    return (uintptr_t)((const ucontext_t *)uc)->uc_mcontext.gregs[REG_RSP];
#elif defined(__aarch64__)
    return (uintptr_t)((const ucontext_t *)uc)->uc_mcontext.sp;
#else
    (void)uc;
    return 0;
#endif
}

/* SIGSEGV: a fault of the running coroutine in the zone below its stack, or
 * while its stack pointer is below the stack (a frame that jumped over the
 * zone), is its overflow; anything else goes to the handler installed
 * before ours, or to the default action. */
static void segv_handler(int sig, siginfo_t *si, void *uc)
{
    struct coro_thread *t = conc__coro_tls.thread;
    conc_coro *c = t ? conc__coro_tls.current : NULL;
    if (c && c->stack.hi) {
        const char *lo = c->stack.lo, *base = conc__stack_base(&c->stack);
        const char *addr = si->si_addr;
        uintptr_t sp = fault_sp(uc);
        bool in_zone = addr >= lo && addr < base;
        bool sp_below = sp && sp < (uintptr_t)base && (uintptr_t)base - sp < ((uintptr_t)64 << 20);
        if (in_zone || sp_below)
            overflow_abort(c, in_zone ? "it touched the guard page below its stack"
                                      : "its stack pointer went below the stack's limit",
                           addr, (const void *)sp);
    }
    if (old_segv.sa_flags & SA_SIGINFO) {
        if (old_segv.sa_sigaction) {
            old_segv.sa_sigaction(sig, si, uc);
            return;
        }
    } else if (old_segv.sa_handler != SIG_DFL && old_segv.sa_handler != SIG_IGN) {
        old_segv.sa_handler(sig);
        return;
    }
    /* The default action: restore it; the faulting instruction faults again
     * on return (a signal sent with kill is raised again). */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(SIGSEGV, &dfl, NULL);
    if (si->si_code <= 0)
        raise(SIGSEGV);
}

/* Installs the handler unless the reporter is off (the first caller does;
 * the others see it installed or being installed).  Returns whether the
 * reporter is on.  No lock: fork() may come at any point. */
static bool segv_install(void)
{
    int st = REPORT_ON;
    if (__atomic_compare_exchange_n(&report_state, &st, REPORT_INSTALLING, false,
                                    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = segv_handler;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, &old_segv);
        __atomic_store_n(&report_state, REPORT_INSTALLED, __ATOMIC_RELEASE);
        return true;
    }
    return st != REPORT_OFF;
}

int conc_coro_set_overflow_report(bool on)
{
    int from = on ? REPORT_OFF : REPORT_ON, to = on ? REPORT_ON : REPORT_OFF;
    if (__atomic_compare_exchange_n(&report_state, &from, to, false, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE))
        return 0;
    /* from: what it is; on and installed (or being installed) is fine */
    return from == to || on ? 0 : -EBUSY;
}

/* A thread that runs coroutines needs a signal stack: an overflow's SIGSEGV
 * arrives with the stack pointer in a guard page.  Installed unless the
 * thread has one already (sanitizers install their own). */
static void altstack_setup(struct coro_thread *t)
{
    t->altstack_tried = true;
    stack_t old;
    if (sigaltstack(NULL, &old) != 0 || !(old.ss_flags & SS_DISABLE))
        return;
    size_t len = 64 * 1024;
    if ((size_t)SIGSTKSZ * 4 > len)
        len = (size_t)SIGSTKSZ * 4;
    void *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (m == MAP_FAILED)
        return;
    stack_t ss = { .ss_sp = m, .ss_size = len, .ss_flags = 0 };
    if (sigaltstack(&ss, NULL) != 0) {
        munmap(m, len);
        return;
    }
    t->altstack = m;
    t->altstack_len = len;
}

/* ------------------------------------------------------- stack release */

static void release_stack(conc_coro *c)
{
    if (!c->stack.hi)
        return;
    conc__stack s = c->stack;
    c->stack.hi = NULL;
#if CONC_SAN_THREAD
    if (c->tsan_fiber) {
        __tsan_destroy_fiber(c->tsan_fiber);
        c->tsan_fiber = NULL;
    }
#endif
    conc__stack_put(my_cache(), &s, conc__ctx_sp(&c->ctx));
}

/* The last reference to an embedded coroutine is gone: its object goes
 * with its stack.  Nothing runs on that stack (the coroutine is dead, or
 * was discarded, and has switched away). */
static void release_embedded(conc_coro *c)
{
#if CONC_SAN_THREAD
    if (c->tsan_fiber)
        __tsan_destroy_fiber(c->tsan_fiber);
#endif
    /* conc__stack_put copies *s before it writes on the stack (c is there) */
    conc__stack_put(my_cache(), &c->stack, conc__ctx_sp(&c->ctx));
}

/* The last reference to a copied coroutine is gone: its block and its
 * buffer go; the shared stack stays with the hub. */
static void release_copied(conc_coro *c)
{
#if CONC_SAN_THREAD
    if (c->tsan_fiber)
        __tsan_destroy_fiber(c->tsan_fiber);
#endif
    struct conc__shstack *ss = c->shared;
    free(c->saved);
    free(c);
    conc__shstack_unref(ss);
}

/* ------------------------------------------------------- copied stacks */

bool conc__coro_stack_copied(void)
{
    struct coro_thread *t = conc__coro_tls.thread;
    return t && conc__coro_tls.current->shared != NULL;
}

size_t conc__coro_saved_bytes(const conc_coro *c)
{
    return c && c->shared ? c->saved_len : 0;
}

#if CONC_SAN_ADDRESS
/* A copied coroutine's frames take their poisoning along (the redzones
 * between its locals): after the frames, in the same buffer, one byte per
 * 8-byte granule says how many of its first bytes are addressable. */
#define SHADOW_EXTRA(cap) ((cap) / 8)

static void shadow_save(conc_coro *o, char *sp, size_t len)
{
    uint8_t *sh = (uint8_t *)o->saved + o->saved_cap;
    for (size_t i = 0; i < len / 8; i++) {
        char *g = sp + 8 * i;
        char *p = __asan_region_is_poisoned(g, 8);
        sh[i] = p ? (uint8_t)(p - g) : 8;
    }
}

/* Poisons again what was poisoned when the frames were copied out (runs of
 * wholly poisoned granules in one call). */
static void shadow_restore(const conc_coro *to, char *sp, size_t len)
{
    const uint8_t *sh = (const uint8_t *)to->saved + to->saved_cap;
    size_t n = len / 8;
    for (size_t i = 0; i < n;) {
        if (sh[i] == 8) {
            i++;
            continue;
        }
        size_t j = i + 1;
        while (j < n && sh[j] == 0)
            j++;
        __asan_poison_memory_region(sp + 8 * i + sh[i], 8 * (j - i) - sh[i]);
        i = j;
    }
}
#else
#define SHADOW_EXTRA(cap) 0
#endif

/* Makes the shared stack hold `to`'s frames (called on another stack). */
static __attribute__((noinline)) int shared_take(conc_coro *to)
{
    struct conc__shstack *ss = to->shared;
    conc_coro *o = ss->owner;
    if (o == to)
        return 0;
    char *hi = ss->s.hi;
    if (o && state_of(o) != CORO_DEAD && !o->fresh) {
        char *sp = conc__ctx_sp(&o->ctx);
        size_t len = (size_t)(hi - sp);     /* a multiple of 8: sp is aligned */
        if (len > o->saved_cap) {
            size_t cap = (len + 15) & ~(size_t)15;
            char *b = realloc(o->saved, cap + SHADOW_EXTRA(cap));
            if (!b)
                return -ENOMEM;
            o->saved = b;
            o->saved_cap = (uint32_t)cap;
        }
#if CONC_SAN_ADDRESS
        shadow_save(o, sp, len);
        /* the redzones of frames that are not running: not an access */
        __asan_unpoison_memory_region(sp, len);
#endif
        memcpy(o->saved, sp, len);
        o->saved_len = (uint32_t)len;
    }
    ss->owner = NULL;
    if (to->fresh) {
        conc__ctx_make(&to->ctx, conc__stack_base(&ss->s), hi);
        to->fresh = 0;
    } else {
        char *sp = hi - to->saved_len;
#if CONC_SAN_ADDRESS
        __asan_unpoison_memory_region(sp, to->saved_len);
#endif
        memcpy(sp, to->saved, to->saved_len);
#if CONC_SAN_ADDRESS
        shadow_restore(to, sp, to->saved_len);
#endif
        /* A parked coroutine keeps only what it used: a big buffer left by
         * a deep moment goes back (the next park allocates what it needs). */
        if (to->saved_cap > 4096) {
            free(to->saved);
            to->saved = NULL;
            to->saved_cap = 0;
        }
        to->saved_len = 0;
    }
    ss->owner = to;
    return 0;
}

/* A coroutine that died on this thread gives its stack back at the thread's
 * next conc_coro call (nothing can run on that stack any more by then).
 * The thread keeps the stack meanwhile, not the coroutine object, which may
 * be freed at once. */
static __attribute__((noinline)) void reap_zombie(struct coro_thread *t)
{
    conc__stack s = t->zombie;
    t->zombie.hi = NULL;
#if CONC_SAN_THREAD
    __tsan_destroy_fiber(t->zombie_fiber);
    t->zombie_fiber = NULL;
#endif
    conc__stack_put(&t->cache, &s, t->zombie_sp);
}

static inline void reap(struct coro_thread *t)
{
#if CONC_SAN_THREAD
    if (unlikely(t->zombie_fiber != NULL) && !t->zombie.hi) {
        __tsan_destroy_fiber(t->zombie_fiber);
        t->zombie_fiber = NULL;
    }
#endif
    if (unlikely(t->zombie.hi != NULL))
        reap_zombie(t);
}

/* ------------------------------------------------------ per-thread state */

static void thread_end(void *p)
{
    struct coro_thread *t = p;
    reap(t);
    conc__stack_cache_drain(&t->cache);
    conc__coro_tls.thread = NULL;
    conc__coro_tls.current = NO_CORO;
    conc__coro_tls.fast = 0;
    if (t->altstack) {
        stack_t cur;
        if (sigaltstack(NULL, &cur) == 0 && cur.ss_sp == t->altstack) {
            stack_t off = { .ss_sp = NULL, .ss_size = 0, .ss_flags = SS_DISABLE };
            sigaltstack(&off, NULL);
        }
        munmap(t->altstack, t->altstack_len);
        t->altstack = NULL;
    }
    coro_unref(&t->main);
}

static void thread_key_make(void)
{
    pthread_key_create(&thread_key, thread_end);
}

static __attribute__((noinline)) struct coro_thread *thread_init(void)
{
    pthread_once(&thread_key_once, thread_key_make);
    struct coro_thread *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    conc_coro *m = &t->main;
    m->thread = t;
    m->state = CORO_RUNNING;
    m->is_main = 1;
    m->refs = 1;
    strcpy(m->name, "main");
#if CONC_SAN_THREAD
    m->tsan_fiber = __tsan_get_current_fiber();
#endif
    m->key = (uintptr_t)t;
    conc__coro_tls.current = m;
    conc__coro_tls.fast = (uintptr_t)t;
    if (pthread_setspecific(thread_key, t) != 0) {
        free(t);
        return NULL;
    }
    conc__coro_tls.thread = t;
    return t;
}

static inline struct coro_thread *thread_get(void)
{
    struct coro_thread *t = conc__coro_tls.thread;
    return likely(t != NULL) ? t : thread_init();
}

/* Whether the switches of this thread (t, the caller's) take the full path
 * (conc__coro_tls.fast). */
static inline void set_slow(struct coro_thread *t, bool slow)
{
    conc__coro_tls.fast = (uintptr_t)t | slow;
}

/* -------------------------------------------------------------- switching */

/* Everything before the machine switch from self (which becomes
 * self_state) to `to`.  Always inlined: under TSan, the function that calls
 * __tsan_switch_to_fiber must be the one that switches, or its
 * function-exit hook would run on the other fiber's shadow stack. */
static inline __attribute__((always_inline)) void switch_marks(struct coro_thread *t, conc_coro *self, conc_coro *to,
                                 uint8_t self_state)
{
    (void)t;
    set_state(self, self_state);
    set_state(to, CORO_RUNNING);
    conc__coro_tls.current = to;        /* and so conc__owner_id() */
#if CONC_SAN_ADDRESS
    t->prev = self;
    __sanitizer_start_switch_fiber(self_state == CORO_DEAD ? NULL : &self->asan_fake,
                                   to->asan_bottom, to->asan_size);
#endif
#if CONC_SAN_THREAD
    /* TSan counts fibers as threads (at most ~8000 at once): a coroutine
     * gets its fiber when it starts, and loses it when it dies. */
    if (unlikely(!to->tsan_fiber)) {
        to->tsan_fiber = __tsan_create_fiber(0);
        __tsan_set_fiber_name(to->tsan_fiber, to->name);
    }
    __tsan_switch_to_fiber(to->tsan_fiber, 0);
#endif
}

/* switch_marks, after checking the canary of an unguarded caller. */
static inline __attribute__((always_inline)) void before_switch(struct coro_thread *t, conc_coro *self, conc_coro *to,
                                 uint8_t self_state)
{
    if (unlikely(self->unguarded))
        check_stack(self);
    switch_marks(t, self, to, self_state);
}

#if CONC_SAN_ADDRESS
/* Runs first in every context that a switch continues (ASan builds). */
static inline __attribute__((always_inline)) void after_switch(struct coro_thread *t, conc_coro *self)
{
    const void *bottom;
    size_t size;
    __sanitizer_finish_switch_fiber(self->asan_fake, &bottom, &size);
    if (t->prev->is_main) {     /* how ASan learns the main stack's bounds */
        t->prev->asan_bottom = bottom;
        t->prev->asan_size = size;
    }
}
#endif

void conc__coro_entry(void *value)
{
    struct coro_thread *t = conc__coro_tls.thread;
    conc_coro *self = conc__coro_tls.current;
#if CONC_SAN_ADDRESS
    after_switch(t, self);
#endif
    void *r = self->fn(self->arg, value);
    self->result = r;
    conc_coro *p = self->parent;
    while (state_of(p) == CORO_DEAD)
        p = p->parent;              /* main is never dead */
    reap(t);
    set_slow(t, 1);             /* set again below if this stack goes back
                                   later; p's stack may be unguarded */
    before_switch(t, self, p, CORO_DEAD);
    if (self->shared) {         /* its frames need no copy any more (the next
                                   copy runs on another stack) */
        self->shared->owner = NULL;
        goto gone;
    }
    if (self->embedded)         /* the stack goes with the object */
        goto gone;
    t->zombie = self->stack;
    set_slow(t, 1);
    t->zombie_sp = __builtin_frame_address(0);
    self->stack.hi = NULL;
gone:
#if CONC_SAN_THREAD
    t->zombie_fiber = self->tsan_fiber;
    self->tsan_fiber = NULL;
#endif
    conc__ctx_switch(&self->ctx, &p->ctx, r, NULL);
    abort();                        /* nothing switches to a dead coroutine */
}

/* The switch with every check and every chore (a first call in this
 * thread, a dead coroutine's stack to give back, a canary to check). */
static inline __attribute__((always_inline)) int coro_switch_full(conc_coro *target, void *value,
                                                                  void **out, bool same_site)
{
    struct coro_thread *t = thread_get();
    if (unlikely(!t))
        return -ENOMEM;
    if (unlikely(!target))
        return -EINVAL;
    if (unlikely(target->thread != t))
        return -EPERM;
    conc_coro *self = conc__coro_tls.current;
    if (unlikely(target == self)) {
        if (out)
            *out = value;
        return 0;
    }
    if (unlikely(state_of(target) == CORO_DEAD))
        return -EPIPE;
    if (unlikely(target->shared != NULL) && target->shared->owner != target) {
        if (self->shared == target->shared && target->shared->owner == self)
            return -EBUSY;      /* the copy would overwrite the caller */
        int rc = shared_take(target);
        if (rc < 0)
            return rc;
    }
    reap(t);
    set_slow(t, target->unguarded);     /* the zombie went with reap */
    before_switch(t, self, target, CORO_SUSPENDED);
#if CONC_SAN_ADDRESS || CONC_SAN_THREAD
    /* Not a tail call: the sanitizers' bookkeeping (ASan's finishing call,
     * TSan's function-exit hook) must run in the continued context. */
    void *v = NULL;
    if (same_site)
        conc__ctx_switch_same_site(&self->ctx, &target->ctx, value, &v);
    else
        conc__ctx_switch(&self->ctx, &target->ctx, value, &v);
#if CONC_SAN_ADDRESS
    after_switch(t, self);
#endif
    if (out)
        *out = v;
    return 0;
#else
    /* A tail call: the switch continues the target at its own call site. */
    if (same_site)
        return conc__ctx_switch_same_site(&self->ctx, &target->ctx, value, out);
    return conc__ctx_switch(&self->ctx, &target->ctx, value, out);
#endif
}

#if CONC_CORO_SWITCH_ASM
/* conc_coro_switch's full path; its common case is assembly
 * (switch_x86_64.S), which knows these offsets and values. */
_Static_assert(offsetof(conc_coro, ctx) == CONC__CORO_CTX, "coro_abi.h: ctx");
_Static_assert(offsetof(conc_coro, key) == CONC__CORO_KEY, "coro_abi.h: key");
_Static_assert(offsetof(conc_coro, state) == CONC__CORO_STATE, "coro_abi.h: state");
_Static_assert(CORO_RUNNING == CONC__CORO_RUNNING && CORO_SUSPENDED == CONC__CORO_SUSPENDED,
               "coro_abi.h: states");
_Static_assert(offsetof(struct conc__coro_tls, current) == CONC__TLS_CURRENT
                   && offsetof(struct conc__coro_tls, fast) == CONC__TLS_FAST,
               "coro_abi.h: thread-local block");
_Static_assert(sizeof(((conc_coro *)0)->key) == 8 && sizeof(((conc_coro *)0)->state) == 1,
               "coro_abi.h: sizes");
CONC_HIDDEN __attribute__((noinline)) int conc__coro_switch_slow(conc_coro *target, void *value,
                                                                 void **out);
int conc__coro_switch_slow(conc_coro *target, void *value, void **out)
{
    return coro_switch_full(target, value, out, false);
}
#endif

#if !CONC_SAN_ADDRESS && !CONC_SAN_THREAD && !CONC_CORO_SWITCH_ASM
static __attribute__((noinline)) int coro_switch_slow(conc_coro *target, void *value,
                                                      void **out)
{
    return coro_switch_full(target, value, out, false);
}
#endif

#if !CONC_SAN_ADDRESS && !CONC_SAN_THREAD
static __attribute__((noinline)) int coro_switch_same_site_slow(conc_coro *target)
{
    return coro_switch_full(target, NULL, NULL, true);
}
#endif

/*
 * The common switch (this thread's state made, a live target of this
 * thread that is not the caller, nothing to reap, a guarded stack) calls
 * nothing before the machine switch, which it reaches as a tail call: no
 * callee-saved register to keep, so no frame at all.  Anything else takes
 * the full path, out of line.
 */
#if !CONC_SAN_ADDRESS && !CONC_SAN_THREAD
static inline __attribute__((always_inline)) bool switch_is_plain(const conc_coro *target)
{
    /* One comparison for three conditions: the key is the target's thread
     * state (not 1: a guarded stack of its own), and conc__coro_tls.fast is
     * the caller's (0 before the thread has one, its low bit set while the
     * thread's switches take the full path).  New or suspended (even
     * states) means neither dead nor the caller, the thread's only running
     * coroutine.  (Not one 16-bit load for the state and another byte: the
     * state byte was often stored a moment ago, and a wider load than that
     * store waits for it to reach the cache, which doubled the hub's
     * yield.) */
    return likely(target != NULL && target->key == conc__coro_tls.fast
                  && !(state_of(target) & 1));
}
#endif

#if !CONC_CORO_SWITCH_ASM
int conc_coro_switch(conc_coro *target, void *value, void **out)
{
#if !CONC_SAN_ADDRESS && !CONC_SAN_THREAD
    if (switch_is_plain(target)) {
        conc_coro *self = conc__coro_tls.current;
        switch_marks(NULL, self, target, CORO_SUSPENDED);   /* fast stays */
        return conc__ctx_switch_to(&target->ctx, value, out, &self->ctx);
    }
    return coro_switch_slow(target, value, out);
#else
    return coro_switch_full(target, value, out, false);
#endif
}
#endif

int conc__coro_switch_same_site(conc_coro *target)
{
#if !CONC_SAN_ADDRESS && !CONC_SAN_THREAD
    if (switch_is_plain(target)) {
        conc_coro *self = conc__coro_tls.current;
        switch_marks(NULL, self, target, CORO_SUSPENDED);   /* fast stays */
        return conc__ctx_switch_same_site(&self->ctx, &target->ctx, NULL, NULL);
    }
    return coro_switch_same_site_slow(target);
#else
    return coro_switch_full(target, NULL, NULL, true);
#endif
}

/* ------------------------------------------------------------- lifecycle */

/* "Coro-N" (snprintf would cost more than the rest of conc_coro_new).  The
 * numbers are unique; each thread takes them in blocks of 1024, so they
 * follow the order of creation only within a thread. */
static void default_name(char *out, unsigned long n)
{
    char digits[24];
    size_t k = 0;
    do {
        digits[k++] = (char)('0' + n % 10);
        n /= 10;
    } while (n);
    memcpy(out, "Coro-", 5);
    size_t i = 5;
    while (k && i < CONC_CORO_NAME_MAX)
        out[i++] = digits[--k];
    out[i] = '\0';
}

/* Checks and rounds a requested stack size (0: the default). */
static inline int stack_bytes(size_t req, size_t *out)
{
    size_t size = req ? req : CONC_CORO_STACK_DEFAULT;
    if (size < CONC_CORO_STACK_MIN || size > CONC_CORO_STACK_MAX)
        return -EINVAL;
    size_t page = conc__stack_zone();
    *out = (size * STACK_SCALE + page - 1) & ~(page - 1);
    return 0;
}

/* The thread's state, set up for running coroutines. */
static inline struct coro_thread *thread_ready(void)
{
    struct coro_thread *t = thread_get();
    if (unlikely(!t))
        return NULL;
    reap(t);
    /* The reporter's handler and this thread's signal stack, unless the
     * reporter is off (then checked again at each new coroutine, so turning
     * it on later reaches this thread too). */
    if (unlikely(!t->altstack_tried) &&
        __atomic_load_n(&report_state, __ATOMIC_ACQUIRE) != REPORT_OFF && segv_install())
        altstack_setup(t);
    return t;
}

/* The name after `buf` ("Coro-N" -> "Coro-N+1"), in place. */
static void name_next(char *buf, size_t *len)
{
    size_t i = *len;
    while (i > 5) {
        i--;
        if (buf[i] != '9') {
            buf[i]++;
            return;
        }
        buf[i] = '0';
    }
    if (*len < CONC_CORO_NAME_MAX) {   /* 99 -> 100 */
        buf[5] = '1';
        buf[*len] = '0';
        buf[++*len] = '\0';
    }
}

/* Fills in a fresh coroutine whose context runs below `top`. */
static inline __attribute__((always_inline)) void
coro_init(struct coro_thread *t, conc_coro *c, const conc__stack *s, char *top, size_t size,
          conc_coro_fn fn, void *arg, conc_coro *parent, const char *name)
{
    char *base = conc__stack_base(s);
    c->thread = t;
    c->stack = *s;
    c->state = CORO_NEW;
    c->unguarded = !s->guarded;
    c->key = c->unguarded ? 1 : (uintptr_t)t;
    c->refs = 1;
    c->fn = fn;
    c->arg = arg;
    c->stack_size = size;
    c->parent = parent;
    if (unlikely(t->owner == t->owner_end)) {
        t->owner = __atomic_fetch_add(&coro_owner_seq, 1024, __ATOMIC_RELAXED) + 1;
        t->owner_end = t->owner + 1024;
    }
    c->owner = t->owner++;
    if (!c->weak_parent)
        coro_ref(parent);
    if (name) {
        strncpy(c->name, name, CONC_CORO_NAME_MAX);
        c->name[CONC_CORO_NAME_MAX] = '\0';
    } else {
        if (unlikely(t->seq == t->seq_end)) {
            t->seq = __atomic_fetch_add(&coro_seq, 1024, __ATOMIC_RELAXED) + 1;
            t->seq_end = t->seq + 1024;
            default_name(t->next_name, t->seq);
            t->next_name_len = strlen(t->next_name);
        }
        memcpy(c->name, t->next_name, sizeof c->name);
        t->seq++;
        name_next(t->next_name, &t->next_name_len);
    }
    if (!c->shared)
        conc__ctx_make(&c->ctx, base, top);
#if CONC_SAN_ADDRESS
    c->asan_bottom = base;
    c->asan_size = (size_t)(top - base);
#endif
    count_coros(1);
}

int conc_coro_new(conc_coro **out, conc_coro_fn fn, void *arg, const conc_coro_opts *opts)
{
    if (!out || !fn)
        return -EINVAL;
    conc_coro_opts o;
    CONC__OPTS_COPY(&o, opts, CONC__OPTS_V1(conc_coro_opts, name));
    size_t size;
    if (stack_bytes(o.stack_size, &size) < 0)
        return -EINVAL;
    struct coro_thread *t = thread_ready();
    if (!t)
        return -ENOMEM;
    conc_coro *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    conc__stack s;
    int rc = conc__stack_get(&t->cache, size, &s);
    if (rc < 0) {
        free(c);
        return rc;
    }
    coro_init(t, c, &s, s.hi, (size_t)(s.hi - conc__stack_base(&s)), fn, arg, conc__coro_tls.current,
              o.name);
    *out = c;
    return 0;
}

int conc__coro_new_embedded(conc_coro **out, conc_coro_fn fn, size_t stack_size,
                            const char *name, conc_coro *parent, size_t extra, void **extra_out)
{
    size_t size;
    if (stack_bytes(stack_size, &size) < 0)
        return -EINVAL;
    struct coro_thread *t = thread_ready();
    if (!t)
        return -ENOMEM;
    if (parent && parent->thread != t)
        return -EPERM;
    conc__stack s;
    int rc = conc__stack_get(&t->cache, size, &s);
    if (rc < 0)
        return rc;
    /* [top: the context's frames go below | conc_coro | extra ... | hi) */
    size_t head = (sizeof(conc_coro) + 15) & ~(size_t)15;
    size_t block = (head + extra + 63) & ~(size_t)63;
    char *top = s.hi - block;
    conc_coro *c = (conc_coro *)top;
#if CONC_SAN_ADDRESS
    __asan_unpoison_memory_region(top, block);
#endif
    /* Field by field (coro_init sets the others): a memset costs more. */
    c->is_main = 0;
    c->embedded = 1;
    c->shared = NULL;
    c->weak_parent = parent != NULL;
    c->result = NULL;
#if CONC_SAN_ADDRESS
    c->asan_fake = NULL;
#endif
#if CONC_SAN_THREAD
    c->tsan_fiber = NULL;
#endif
    coro_init(t, c, &s, top, (size_t)(top - conc__stack_base(&s)), fn, top + head,
              parent ? parent : conc__coro_tls.current, name);
    *extra_out = top + head;
    *out = c;
    return 0;
}

int conc__shstack_new(struct conc__shstack **out, size_t size)
{
    if (stack_bytes(size, &size) < 0)
        return -EINVAL;
    struct coro_thread *t = thread_ready();
    if (!t)
        return -ENOMEM;
    struct conc__shstack *ss = calloc(1, sizeof *ss);
    if (!ss)
        return -ENOMEM;
    int rc = conc__stack_get(NULL, size, &ss->s);
    if (rc < 0) {
        free(ss);
        return rc;
    }
    ss->refs = 1;
    *out = ss;
    return 0;
}

void conc__shstack_unref(struct conc__shstack *ss)
{
    if (!ss || __atomic_sub_fetch(&ss->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    conc__stack_put(NULL, &ss->s, NULL);
    free(ss);
}

int conc__coro_new_copied(conc_coro **out, conc_coro_fn fn, struct conc__shstack *ss,
                          const char *name, conc_coro *parent, size_t extra, void **extra_out)
{
    struct coro_thread *t = thread_ready();
    if (!t)
        return -ENOMEM;
    if (parent && parent->thread != t)
        return -EPERM;
    size_t head = (sizeof(conc_coro) + 15) & ~(size_t)15;
    conc_coro *c = aligned_alloc(16, (head + extra + 15) & ~(size_t)15);
    if (!c)
        return -ENOMEM;
    memset(c, 0, sizeof *c);
    c->embedded = 1;
    c->weak_parent = parent != NULL;
    c->shared = ss;
    c->fresh = 1;
    __atomic_add_fetch(&ss->refs, 1, __ATOMIC_RELAXED);
    char *top = ss->s.hi;
    coro_init(t, c, &ss->s, top, (size_t)(top - conc__stack_base(&ss->s)), fn, (char *)c + head,
              parent ? parent : conc__coro_tls.current, name);
    c->key = 1;                 /* its switches may copy frames */
    *extra_out = (char *)c + head;
    *out = c;
    return 0;
}

void conc__coro_set_next(conc_coro *c, conc_coro *next)
{
    c->parent = next;
}

uint64_t conc__coro_owner(const conc_coro *c)
{
    return c->owner;
}

int conc_coro_free(conc_coro *c)
{
    if (!c)
        return 0;
    if (c->is_main)
        return -EINVAL;
    uint8_t st = state_of(c);
    if (st == CORO_RUNNING)
        return -EBUSY;
    if (st != CORO_DEAD) {          /* never started, or suspended: discard */
        set_state(c, CORO_DEAD);
        if (c->shared && c->shared->owner == c)
            c->shared->owner = NULL;    /* its frames are abandoned */
        if (!c->embedded)
            release_stack(c);
    }
    count_coros(-1);
    coro_unref(c);
    return 0;
}

/* ------------------------------------------------------------ inspection */

conc_coro *conc_coro_current(void)
{
    struct coro_thread *t = thread_get();
    return t ? conc__coro_tls.current : NULL;
}

conc_coro *conc_coro_main(void)
{
    struct coro_thread *t = thread_get();
    return t ? &t->main : NULL;
}

conc_coro *conc_coro_parent(const conc_coro *c)
{
    return c ? c->parent : NULL;
}

int conc_coro_set_parent(conc_coro *c, conc_coro *parent)
{
    if (!c || !parent)
        return -EINVAL;
    struct coro_thread *t = thread_get();
    if (!t || c->thread != t || parent->thread != t)
        return -EPERM;
    if (c->is_main)
        return -EINVAL;
    for (conc_coro *p = parent; p; p = p->parent)
        if (p == c)
            return -EINVAL;
    coro_ref(parent);
    conc_coro *old = c->parent;
    c->parent = parent;
    if (!c->weak_parent)
        coro_unref(old);
    c->weak_parent = 0;
    return 0;
}

bool conc_coro_started(const conc_coro *c)
{
    return c && state_of(c) != CORO_NEW;
}

bool conc_coro_dead(const conc_coro *c)
{
    return c && state_of(c) == CORO_DEAD;
}

int conc_coro_result(const conc_coro *c, void **out)
{
    if (!c || !out)
        return -EINVAL;
    if (state_of(c) != CORO_DEAD)
        return -EBUSY;
    *out = c->result;
    return 0;
}

const char *conc_coro_name(const conc_coro *c)
{
    return c ? c->name : "";
}

size_t conc_coro_stack_size(const conc_coro *c)
{
    return c ? c->stack_size : 0;
}

long conc_coro_guard_limit(void)
{
    return conc__stack_guard_limit(-1);
}

int conc_coro_set_guard_limit(long n)
{
    if (n < 0)
        return -EINVAL;
    conc__stack_guard_limit(n);
    return 0;
}

void conc_coro_trim(void)
{
    if (conc__coro_tls.thread)
        reap(conc__coro_tls.thread);
    conc__stack_trim(my_cache());
}

int conc_coro_get_stats(conc_coro_stats *out)
{
    if (!out)
        return -EINVAL;
    if (conc__coro_tls.thread)
        reap(conc__coro_tls.thread);
    memset(out, 0, sizeof *out);
    conc__stack_stats(out);
    return 0;
}
