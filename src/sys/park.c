/* park.c - the parking layer's sleep and its spin setting (see park.h). */
#include <errno.h>
#include "conc/park.h"
#include "sys/park.h"

/* How long a sleeper on a shared spot sleeps before it looks again. */
#define CONC__PARK_SHARED_SLICE_NS 50000000

int64_t conc__park_spin_ns = CONC_PARK_SPIN_DEFAULT;

int conc_park_set_spin(int64_t ns)
{
    if (ns < 0 || ns > CONC_PARK_SPIN_MAX)
        return -EINVAL;
    __atomic_store_n(&conc__park_spin_ns, ns, __ATOMIC_RELAXED);
    return 0;
}

int64_t conc_park_spin(void)
{
    return __atomic_load_n(&conc__park_spin_ns, __ATOMIC_RELAXED);
}

int conc__park_sleep(struct conc__park *p, uint32_t key, int64_t deadline, unsigned flags,
                     uint32_t look_ns)
{
    /* Counted as a sleeper, first spin, watching only the sequence a waker
     * bumps: the other side's lines stay where they are, and a waker that
     * claims a spinner finds no thread in the kernel and makes no system
     * call (conc__wake). */
    struct conc__spin s;
    if (!(flags & CONC__PARK_NOSPIN) && conc__spin_begin(&s, deadline)) {
        int64_t look = s.now + look_ns;
        while (conc__spin_step(&s, 1)) {
            if (look_ns && s.now < look)
                continue;
            if (conc__park_seq(p) != key)
                return 1;
            look = s.now + look_ns;
        }
    }
    int r = 0;
    if (conc__park_seq(p) == key) {
        unsigned wf = flags & (CONC__WAIT_SHARED | CONC__WAIT_ONE);
        int64_t until = deadline;
        if (wf == CONC__WAIT_SHARED) {
            /* Between processes a claimed sleeper may be killed before it
             * takes what it was woken for, and nothing moves the sequence
             * again for the others: a shared sleep ends after a slice, and
             * the caller looks at its condition again.  A lost wake-up
             * costs a stall of at most a slice, never a hang. */
            int64_t slice_end = conc_now() + CONC__PARK_SHARED_SLICE_NS;
            if (slice_end < until)
                until = slice_end;
        }
        r = conc__wait(&p->half.seq, key, until, wf);
        if (r == -EAGAIN || (r == -ETIMEDOUT && until != deadline))
            r = 0;
    }
    if (conc__park_seq(p) != key)
        return r < 0 ? r : 1;
    conc__park_cancel(p, key);
    return r;
}

uint32_t conc__spin_while(const uint32_t *word, uint32_t v, int64_t deadline)
{
    struct conc__spin s;
    if (!conc__spin_begin(&s, deadline))
        return v;
    while (conc__spin_step(&s, 1)) {
        uint32_t cur = __atomic_load_n(word, __ATOMIC_ACQUIRE);
        if (cur != v)
            return cur;
    }
    return v;
}
