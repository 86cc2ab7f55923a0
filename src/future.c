/*
 * future.c - concurrent.futures.Future (conc/future.h).
 *
 * A future is a futex word (`state`) plus a small mutex that orders the
 * transitions against the lists of done callbacks and watchers.  Every
 * transition happens under the mutex; readers look at `state` without it
 * (acquire), and everything a transition stores (the result, the
 * exception) is written before the state is released.
 *
 * Waiters count themselves in `sleepers` before they sleep on `state` and
 * the finishing side looks at the count after the state changed (both
 * sequentially consistent), so a finish with nobody waiting costs no
 * system call.  A readiness eventfd is made only for conc_wait
 * (conc_future_fd); once written it is never read back, so it stays
 * readable.
 *
 * Done callbacks run outside the mutex, in the order they were added, in
 * the thread that finished (or cancelled) the future.  Watchers (the waits
 * over several futures) are notified under the mutex, which is what lets a
 * watcher unlink its nodes and be sure no notification still runs.
 */
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "conc/future.h"
#include "future.h"
#include "internal.h"
#include "sys/wait.h"

struct conc__cb_node {
    conc_future_cb cb;
    void *arg;
    struct conc__cb_node *next;
};

int conc_future_new(conc_future **out, const conc_future_opts *opts)
{
    if (!out)
        return -EINVAL;
    conc_future_opts o;
    CONC__OPTS_COPY(&o, opts, CONC__OPTS_V1(conc_future_opts, drop_arg));
    conc_future *f = calloc(1, sizeof *f);
    if (!f)
        return -ENOMEM;
    if (pthread_mutex_init(&f->mu, NULL) != 0) {
        free(f);
        return -ENOMEM;
    }
    f->refs = 1;
    f->efd = -1;
    f->drop = o.drop;
    f->drop_arg = o.drop_arg;
    f->cbs_tail = &f->cbs;
    *out = f;
    return 0;
}

conc_future *conc_future_ref(conc_future *f)
{
    if (f)
        __atomic_fetch_add(&f->refs, 1, __ATOMIC_RELAXED);
    return f;
}

void conc_future_free(conc_future *f)
{
    if (!f || __atomic_sub_fetch(&f->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    if (!f->taken && f->value) {
        if (f->bytes)
            free(f->value);
        else if (f->drop)
            f->drop(f->value, f->drop_arg);
    }
    for (struct conc__cb_node *c = f->cbs, *n; c; c = n) {
        n = c->next;
        free(c);
    }
    if (f->efd >= 0)
        close(f->efd);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

/* -------------------------------------------------------------- queries */

/* The state as stored (PENDING may be stale for a producer that tells its
 * starts only when asked: see p_probe). */
static conc_future_status state_of(const conc_future *f)
{
    return f ? (conc_future_status)ld_acquire(&f->state) : CONC_FUTURE_PENDING;
}

conc_future_status conc_future_state(const conc_future *f)
{
    conc_future_status s = state_of(f);
    if (s == CONC_FUTURE_PENDING && f && f->p_probe) {
        /* Heap memory the future owns; only the state moves. */
        conc_future *m = (conc_future *)(uintptr_t)f;
        pthread_mutex_lock(&m->mu);
        if (m->state == CONC_FUTURE_PENDING && m->p_probe(m->p_hook_arg))
            __atomic_store_n(&m->state, CONC_FUTURE_RUNNING, __ATOMIC_RELEASE);
        s = (conc_future_status)m->state;
        pthread_mutex_unlock(&m->mu);
    }
    return s;
}

bool conc_future_cancelled(const conc_future *f)
{
    return state_of(f) == CONC_FUTURE_CANCELLED;
}

bool conc_future_running(const conc_future *f)
{
    return conc_future_state(f) == CONC_FUTURE_RUNNING;
}

bool conc_future_done(const conc_future *f)
{
    return state_of(f) >= CONC_FUTURE_FINISHED;
}

bool conc_future_has_bytes(const conc_future *f)
{
    return conc_future_state(f) == CONC_FUTURE_FINISHED && f->err == 0 && f->bytes;
}

/* ---------------------------------------------------------- transitions */

static void eventfd_signal(int fd)
{
    uint64_t one = 1;
    while (write(fd, &one, sizeof one) < 0 && errno == EINTR)
        ;
}

/*
 * Moves f (locked) to `to`, a final state, notifies the watchers, unlocks,
 * wakes the sleepers and runs the done callbacks.
 */
static void finish_locked(conc_future *f, uint32_t to)
{
    __atomic_store_n(&f->state, to, __ATOMIC_SEQ_CST);
    for (struct conc__watch_node *n = f->watchers, *next; n; n = next) {
        next = n->next;
        struct conc__watcher *w = n->w;
        n->linked = false;
        n->prev = n->next = NULL;
        struct conc__watch_node *head = ld_relaxed(&w->done);
        do
            n->done_next = head;
        while (!__atomic_compare_exchange_n(&w->done, &head, n, true, __ATOMIC_RELEASE,
                                            __ATOMIC_RELAXED));
        __atomic_fetch_add(&w->seq, 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&w->sleepers, __ATOMIC_SEQ_CST))
            conc__wake(&w->seq, INT_MAX, 0);
    }
    f->watchers = NULL;
    if (f->efd >= 0)
        eventfd_signal(f->efd);
    struct conc__cb_node *cbs = f->cbs;
    f->cbs = NULL;
    f->cbs_tail = &f->cbs;
    /* The callbacks may drop the last reference the finishing side relied
     * on: keep one until they ran. */
    conc_future_ref(f);
    pthread_mutex_unlock(&f->mu);
    if (__atomic_load_n(&f->sleepers, __ATOMIC_SEQ_CST))
        conc__wake(&f->state, INT_MAX, 0);
    for (struct conc__cb_node *c = cbs, *n; c; c = n) {
        n = c->next;
        c->cb(f, c->arg);
        free(c);
    }
    conc_future_free(f);
}

int conc_future_set_running(conc_future *f)
{
    if (!f)
        return -EINVAL;
    pthread_mutex_lock(&f->mu);
    uint32_t s = f->state;
    int r = 0;
    if (s == CONC_FUTURE_PENDING)
        __atomic_store_n(&f->state, CONC_FUTURE_RUNNING, __ATOMIC_RELEASE);
    else
        r = s == CONC_FUTURE_CANCELLED ? -ECANCELED : -EALREADY;
    pthread_mutex_unlock(&f->mu);
    return r;
}

/* Takes f's lock when the future can still finish: 0, or the code saying
 * why not (lock released). */
static int lock_unfinished(conc_future *f)
{
    pthread_mutex_lock(&f->mu);
    uint32_t s = f->state;
    if (s <= CONC_FUTURE_RUNNING)
        return 0;
    pthread_mutex_unlock(&f->mu);
    return s == CONC_FUTURE_CANCELLED ? -ECANCELED : -EALREADY;
}

static int set_value(conc_future *f, void *value, size_t len, bool bytes)
{
    int r = lock_unfinished(f);
    if (r)
        return r;
    f->value = value;
    f->len = len;
    f->bytes = bytes;
    finish_locked(f, CONC_FUTURE_FINISHED);
    return 0;
}

int conc_future_set_result(conc_future *f, void *value)
{
    if (!f)
        return -EINVAL;
    return set_value(f, value, 0, false);
}

int conc_future_set_result_owned(conc_future *f, void *buf, size_t len)
{
    if (!f || (!buf && len))
        return -EINVAL;
    if (!len && buf) {
        /* Empty bytes are NULL: the buffer is not needed. */
        int r = set_value(f, NULL, 0, true);
        if (r == 0)
            free(buf);
        return r;
    }
    return set_value(f, buf, len, true);
}

int conc_future_set_result_bytes(conc_future *f, const void *data, size_t len)
{
    if (!f || (!data && len))
        return -EINVAL;
    void *copy = NULL;
    if (len) {
        copy = malloc(len);
        if (!copy)
            return -ENOMEM;
        memcpy(copy, data, len);
    }
    int r = set_value(f, copy, len, true);
    if (r)
        free(copy);
    return r;
}

int conc_future_set_exception(conc_future *f, int err, int detail)
{
    if (!f || err >= 0)
        return -EINVAL;
    int r = lock_unfinished(f);
    if (r)
        return r;
    f->err = err;
    f->detail = detail;
    finish_locked(f, CONC_FUTURE_FINISHED);
    return 0;
}

int conc_future_cancel(conc_future *f)
{
    if (!f)
        return -EINVAL;
    pthread_mutex_lock(&f->mu);
    uint32_t s = f->state;
    if (s != CONC_FUTURE_PENDING) {
        pthread_mutex_unlock(&f->mu);
        return s == CONC_FUTURE_CANCELLED ? 0 : s == CONC_FUTURE_RUNNING ? -EBUSY : -EALREADY;
    }
    if (f->p_veto && f->p_veto(f->p_hook_arg) != 0) {
        __atomic_store_n(&f->state, CONC_FUTURE_RUNNING, __ATOMIC_RELEASE);
        pthread_mutex_unlock(&f->mu);
        return -EBUSY;
    }
    finish_locked(f, CONC_FUTURE_CANCELLED);
    return 0;
}

int conc_future_add_done_callback(conc_future *f, conc_future_cb cb, void *arg)
{
    if (!f || !cb)
        return -EINVAL;
    if (!conc_future_done(f)) {
        struct conc__cb_node *c = malloc(sizeof *c);
        if (!c)
            return -ENOMEM;
        c->cb = cb;
        c->arg = arg;
        c->next = NULL;
        pthread_mutex_lock(&f->mu);
        if (f->state <= CONC_FUTURE_RUNNING) {
            *f->cbs_tail = c;
            f->cbs_tail = &c->next;
            pthread_mutex_unlock(&f->mu);
            return 0;
        }
        pthread_mutex_unlock(&f->mu);
        free(c);
    }
    cb(f, arg);
    return 0;
}

int conc_future_fd(conc_future *f)
{
    if (!f)
        return -EINVAL;
    pthread_mutex_lock(&f->mu);
    int r = f->efd;
    if (r < 0) {
        r = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (r < 0) {
            r = -errno;
        } else {
            f->efd = r;
            if (f->state >= CONC_FUTURE_FINISHED)
                eventfd_signal(r);
        }
    }
    pthread_mutex_unlock(&f->mu);
    return r;
}

/* -------------------------------------------------------------- waiting */

/* Waits until f is done or the deadline passes: 0, -ETIMEDOUT, -ECANCELED
 * (the calling coroutine was killed). */
static int wait_done(conc_future *f, int64_t deadline)
{
    for (;;) {
        uint32_t s = ld_acquire(&f->state);
        if (s >= CONC_FUTURE_FINISHED)
            return 0;
        /* A call about to finish is caught by spinning a little (threads
         * only, and never past the deadline). */
        if (deadline != 0 && conc__spin_while(&f->state, s, deadline) != s)
            continue;
        __atomic_fetch_add(&f->sleepers, 1, __ATOMIC_SEQ_CST);
        int r = 0;
        if (__atomic_load_n(&f->state, __ATOMIC_SEQ_CST) == s)
            r = conc__wait(&f->state, s, deadline, 0);
        __atomic_fetch_sub(&f->sleepers, 1, __ATOMIC_SEQ_CST);
        if (ld_acquire(&f->state) >= CONC_FUTURE_FINISHED)
            return 0;
        if (r == -ETIMEDOUT || r == -ECANCELED)
            return r;
        if (r < 0 && r != -EAGAIN)
            return r;
    }
}

int conc_future_wait_until(conc_future *f, int64_t deadline)
{
    if (!f)
        return -EINVAL;
    return wait_done(f, deadline);
}

int conc_future_wait(conc_future *f, double timeout)
{
    int64_t deadline;
    bool poll;
    if (!f || conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return (int)conc__timeout_code(poll, conc_future_wait_until(f, deadline));
}

static int result_until(conc_future *f, void **value, size_t *len, int64_t deadline,
                        bool take)
{
    if (!f)
        return -EINVAL;
    int r = wait_done(f, deadline);
    if (r)
        return r;
    if (ld_acquire(&f->state) == CONC_FUTURE_CANCELLED)
        return -ECANCELED;
    if (f->err)
        return f->err;
    pthread_mutex_lock(&f->mu);
    if (f->taken) {
        r = -EALREADY;
    } else {
        if (value)
            *value = f->value;
        if (len)
            *len = f->len;
        if (take)
            f->taken = true;
    }
    pthread_mutex_unlock(&f->mu);
    return r;
}

int conc_future_result_until(conc_future *f, void **value, size_t *len, int64_t deadline)
{
    return result_until(f, value, len, deadline, false);
}

int conc_future_result(conc_future *f, void **value, size_t *len, double timeout)
{
    int64_t deadline;
    bool poll;
    if (!f || conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return (int)conc__timeout_code(poll, result_until(f, value, len, deadline, false));
}

int conc_future_result_take_until(conc_future *f, void **value, size_t *len, int64_t deadline)
{
    return result_until(f, value, len, deadline, true);
}

int conc_future_result_take(conc_future *f, void **value, size_t *len, double timeout)
{
    int64_t deadline;
    bool poll;
    if (!f || conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return (int)conc__timeout_code(poll, result_until(f, value, len, deadline, true));
}

int conc_future_exception_until(conc_future *f, int *err, int *detail, int64_t deadline)
{
    if (!f)
        return -EINVAL;
    int r = wait_done(f, deadline);
    if (r)
        return r;
    if (ld_acquire(&f->state) == CONC_FUTURE_CANCELLED)
        return -ECANCELED;
    if (err)
        *err = f->err;
    if (detail)
        *detail = f->detail;
    return 0;
}

int conc_future_exception(conc_future *f, int *err, int *detail, double timeout)
{
    int64_t deadline;
    bool poll;
    if (!f || conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return (int)conc__timeout_code(poll, conc_future_exception_until(f, err, detail, deadline));
}

/* ------------------------------------------------------------- watchers */

bool conc__future_watch(struct conc__watch_node *node)
{
    conc_future *f = node->f;
    node->linked = false;
    node->done_next = NULL;
    pthread_mutex_lock(&f->mu);
    bool pending = f->state <= CONC_FUTURE_RUNNING;
    if (pending) {
        node->prev = NULL;
        node->next = f->watchers;
        if (f->watchers)
            f->watchers->prev = node;
        f->watchers = node;
        node->linked = true;
    }
    pthread_mutex_unlock(&f->mu);
    return pending;
}

void conc__future_unwatch(struct conc__watch_node *node)
{
    conc_future *f = node->f;
    pthread_mutex_lock(&f->mu);
    if (node->linked) {
        if (node->prev)
            node->prev->next = node->next;
        else
            f->watchers = node->next;
        if (node->next)
            node->next->prev = node->prev;
        node->linked = false;
    }
    pthread_mutex_unlock(&f->mu);
}

struct conc__watch_node *conc__watcher_take(struct conc__watcher *w)
{
    if (!ld_relaxed(&w->done))
        return NULL;
    return __atomic_exchange_n(&w->done, NULL, __ATOMIC_ACQUIRE);
}

int conc__watcher_wait(struct conc__watcher *w, uint32_t seen, int64_t deadline)
{
    __atomic_fetch_add(&w->sleepers, 1, __ATOMIC_SEQ_CST);
    int r = 0;
    if (__atomic_load_n(&w->seq, __ATOMIC_SEQ_CST) == seen)
        r = conc__wait(&w->seq, seen, deadline, 0);
    __atomic_fetch_sub(&w->sleepers, 1, __ATOMIC_SEQ_CST);
    if (r == -EAGAIN)
        r = 0;
    return r == -ETIMEDOUT || r == -ECANCELED ? r : r < 0 ? r : 0;
}

/* ------------------------------------------------------ several futures */

static int check_futures(conc_future *const *fs, size_t n)
{
    if (n && !fs)
        return -EINVAL;
    for (size_t i = 0; i < n; i++)
        if (!fs[i])
            return -EINVAL;
    return 0;
}

/* True when f finished with an exception (cancelled does not count). */
static bool failed(const conc_future *f)
{
    return ld_acquire(&f->state) == CONC_FUTURE_FINISHED && f->err != 0;
}

int conc_future_wait_many_until(conc_future *const *fs, size_t n, conc_future_when when,
                                bool *done, int64_t deadline)
{
    if (check_futures(fs, n) ||
        (when != CONC_FIRST_COMPLETED && when != CONC_FIRST_EXCEPTION &&
         when != CONC_ALL_COMPLETED))
        return -EINVAL;
    /* The watcher lives with the nodes on the heap, not on this stack:
     * futures finishing in other threads write to it while the caller is
     * parked, and a parked coroutine's stack may be copied out and the
     * memory used by another (CONC_STACK_COPIED). */
    struct conc__watcher *wp = NULL;
    struct conc__watch_node *nodes = NULL;
    size_t ndone = 0, linked = 0;
    bool met = false;
    int r = 0;

    /* What is done now decides without watching anything. */
    for (size_t i = 0; i < n; i++) {
        if (conc_future_done(fs[i])) {
            ndone++;
            if (when == CONC_FIRST_EXCEPTION && failed(fs[i]))
                met = true;
        }
    }
    met = met || ndone == n || (when == CONC_FIRST_COMPLETED && ndone > 0);
    if (!met && deadline != 0) {
        size_t head = (sizeof *wp + _Alignof(struct conc__watch_node) - 1)
                      & ~(_Alignof(struct conc__watch_node) - 1);
        if (n > (SIZE_MAX - head) / sizeof *nodes)
            return -ENOMEM;
        wp = calloc(1, head + n * sizeof *nodes);
        if (!wp)
            return -ENOMEM;
        nodes = (struct conc__watch_node *)((char *)wp + head);
        ndone = 0;
        for (size_t i = 0; i < n; i++) {
            nodes[i].w = wp;
            nodes[i].f = fs[i];
            if (!conc__future_watch(&nodes[i])) {
                ndone++;
                if (when == CONC_FIRST_EXCEPTION && failed(fs[i]))
                    met = true;
            }
        }
        linked = n;
        for (;;) {
            uint32_t seq = __atomic_load_n(&wp->seq, __ATOMIC_SEQ_CST);
            for (struct conc__watch_node *d = conc__watcher_take(wp); d; d = d->done_next) {
                ndone++;
                if (when == CONC_FIRST_EXCEPTION && failed(d->f))
                    met = true;
            }
            met = met || ndone == n || (when == CONC_FIRST_COMPLETED && ndone > 0);
            if (met)
                break;
            r = conc__watcher_wait(wp, seq, deadline);
            if (r < 0)
                break;
        }
    }
    for (size_t i = 0; i < linked; i++)
        conc__future_unwatch(&nodes[i]);
    free(wp);
    size_t count = 0;
    for (size_t i = 0; i < n; i++) {
        bool d = conc_future_done(fs[i]);
        count += d;
        if (done)
            done[i] = d;
    }
    if (r == -ECANCELED)
        return r;
    if (!met && r == 0)
        r = -ETIMEDOUT;
    if (r < 0 && r != -ETIMEDOUT)
        return r;
    if (r == -ETIMEDOUT) {
        /* A future that finished while the wait gave up still counts. */
        bool now = count == n;
        if (when == CONC_FIRST_COMPLETED)
            now = count > 0;
        else if (when == CONC_FIRST_EXCEPTION)
            for (size_t i = 0; i < n && !now; i++)
                now = failed(fs[i]);
        if (!now)
            return -ETIMEDOUT;
    }
    return count > INT_MAX ? INT_MAX : (int)count;
}

int conc_future_wait_many(conc_future *const *fs, size_t n, conc_future_when when, bool *done,
                          double timeout)
{
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return (int)conc__timeout_code(poll,
                                   conc_future_wait_many_until(fs, n, when, done, deadline));
}

/* -------------------------------------------------------- as_completed */

struct conc_as_completed {
    size_t n;                           /* distinct futures */
    size_t given;                       /* how many next gave */
    size_t head, tail;                  /* ready[head..tail): done, not given */
    conc_future **ready;
    struct conc__watch_node *nodes;     /* one per distinct future */
    struct conc__watcher w;
};

struct ptr_index {
    conc_future *f;
    size_t i;
};

static int cmp_ptr_index(const void *a, const void *b)
{
    const struct ptr_index *x = a, *y = b;
    if (x->f != y->f)
        return (uintptr_t)x->f < (uintptr_t)y->f ? -1 : 1;
    return x->i < y->i ? -1 : x->i > y->i;
}

int conc_as_completed_new(conc_as_completed **out, conc_future *const *fs, size_t n)
{
    if (!out || check_futures(fs, n))
        return -EINVAL;
    conc_as_completed *it = calloc(1, sizeof *it);
    struct ptr_index *order = n ? malloc(n * sizeof *order) : NULL;
    bool *dup = n ? calloc(n, sizeof *dup) : NULL;
    if (!it || (n && (!order || !dup))) {
        free(it);
        free(order);
        free(dup);
        return -ENOMEM;
    }
    /* Duplicates are given once: the first of each in fs[] stays. */
    for (size_t i = 0; i < n; i++)
        order[i] = (struct ptr_index){ fs[i], i };
    if (n)
        qsort(order, n, sizeof *order, cmp_ptr_index);
    size_t distinct = 0;
    for (size_t i = 0; i < n; i++) {
        if (i && order[i].f == order[i - 1].f)
            dup[order[i].i] = true;
        else
            distinct++;
    }
    free(order);
    it->ready = distinct ? malloc(distinct * sizeof *it->ready) : NULL;
    it->nodes = distinct ? calloc(distinct, sizeof *it->nodes) : NULL;
    if (distinct && (!it->ready || !it->nodes)) {
        free(it->ready);
        free(it->nodes);
        free(it);
        free(dup);
        return -ENOMEM;
    }
    for (size_t i = 0, k = 0; i < n; i++) {
        if (dup[i])
            continue;
        struct conc__watch_node *node = &it->nodes[k++];
        node->w = &it->w;
        node->f = conc_future_ref(fs[i]);
        if (!conc__future_watch(node))
            it->ready[it->tail++] = node->f;
    }
    free(dup);
    it->n = distinct;
    *out = it;
    return 0;
}

/* Moves what the watcher heard into ready[], oldest first. */
static void collect(conc_as_completed *it)
{
    struct conc__watch_node *d = conc__watcher_take(&it->w);
    size_t k = 0;
    for (struct conc__watch_node *p = d; p; p = p->done_next)
        k++;
    size_t at = it->tail + k;
    for (struct conc__watch_node *p = d; p; p = p->done_next)
        it->ready[--at] = p->f;
    it->tail += k;
}

int conc_as_completed_next_until(conc_as_completed *it, conc_future **f, int64_t deadline)
{
    if (!it || !f)
        return -EINVAL;
    for (;;) {
        uint32_t seq = __atomic_load_n(&it->w.seq, __ATOMIC_SEQ_CST);
        collect(it);
        if (it->head < it->tail) {
            *f = it->ready[it->head++];
            it->given++;
            return 1;
        }
        if (it->given == it->n)
            return 0;
        int r = conc__watcher_wait(&it->w, seq, deadline);
        if (r < 0)
            return r;
    }
}

int conc_as_completed_next(conc_as_completed *it, conc_future **f, double timeout)
{
    int64_t deadline;
    bool poll;
    if (conc__timeout_parse(timeout, &deadline, &poll))
        return -EINVAL;
    return (int)conc__timeout_code(poll, conc_as_completed_next_until(it, f, deadline));
}

void conc_as_completed_free(conc_as_completed *it)
{
    if (!it)
        return;
    for (size_t i = 0; i < it->n; i++)
        conc__future_unwatch(&it->nodes[i]);
    for (size_t i = 0; i < it->n; i++)
        conc_future_free(it->nodes[i].f);
    free(it->nodes);
    free(it->ready);
    free(it);
}
