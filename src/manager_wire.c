/* manager_wire.c - checks and writes the manager's messages (see
 * manager_wire.h).  Nothing here trusts a length it has not compared with
 * the bytes that are there; libFuzzer drives conc__mgr_req_parse
 * (tests/fuzz/fuzz_manager_wire.c). */
#include <errno.h>
#include <string.h>
#include "manager_wire.h"

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)v);
    put32(p + 4, (uint32_t)(v >> 32));
}

/* The strings after a head: exactly nargs of them, filling the rest. */
static int check_strings(const uint8_t *p, size_t len, uint32_t nargs)
{
    if (nargs > len / 4)                /* each takes at least 4 bytes */
        return -EPROTO;
    size_t pos = 0;
    for (uint32_t i = 0; i < nargs; i++) {
        if (len - pos < 4)
            return -EPROTO;
        uint32_t n = get32(p + pos);
        pos += 4;
        if (n > len - pos)
            return -EPROTO;
        pos += n;
    }
    return pos == len ? 0 : -EPROTO;
}

int conc__mgr_req_parse(const void *buf, size_t len, struct conc__mgr_req *r)
{
    const uint8_t *p = buf;
    if (!buf || len < CONC__MGR_REQ_HEAD)
        return -EPROTO;
    if (p[0] != CONC__MGR_VERSION || p[1] < CONC__MGR_PING || p[1] >= CONC__MGR_OP_END ||
        p[2] != 0 || p[3] != 0)
        return -EPROTO;
    r->op = p[1];
    r->nargs = get32(p + 4);
    r->id = get64(p + 8);
    r->timeout = (int64_t)get64(p + 16);
    r->a = (int64_t)get64(p + 24);
    r->b = (int64_t)get64(p + 32);
    r->c = (int64_t)get64(p + 40);
    if (r->timeout < -1)
        return -EPROTO;
    r->args = p + CONC__MGR_REQ_HEAD;
    r->args_len = len - CONC__MGR_REQ_HEAD;
    return check_strings(r->args, r->args_len, r->nargs);
}

int conc__mgr_ans_parse(const void *buf, size_t len, struct conc__mgr_ans *a)
{
    const uint8_t *p = buf;
    if (!buf || len < CONC__MGR_ANS_HEAD)
        return -EPROTO;
    a->status = (int32_t)get32(p);
    a->nargs = get32(p + 4);
    a->value = (int64_t)get64(p + 8);
    if (a->status < -4095)
        return -EPROTO;
    a->args = p + CONC__MGR_ANS_HEAD;
    a->args_len = len - CONC__MGR_ANS_HEAD;
    return check_strings(a->args, a->args_len, a->nargs);
}

int conc__mgr_next(const uint8_t *args, size_t args_len, size_t *pos, struct conc__mgr_str *s)
{
    if (*pos > args_len || args_len - *pos < 4)
        return -EPROTO;
    uint32_t n = get32(args + *pos);
    if (n > args_len - *pos - 4)
        return -EPROTO;
    s->p = args + *pos + 4;
    s->len = n;
    *pos += 4 + (size_t)n;
    return 0;
}

size_t conc__mgr_size(size_t head, const struct conc__mgr_str *s, size_t n)
{
    size_t total = head;
    for (size_t i = 0; i < n; i++) {
        if (s[i].len > UINT32_MAX || total + 4 + s[i].len < total)
            return SIZE_MAX;
        total += 4 + s[i].len;
    }
    return total;
}

void conc__mgr_put_str(uint8_t *buf, size_t *pos, const void *p, size_t len)
{
    put32(buf + *pos, (uint32_t)len);
    if (len)
        memcpy(buf + *pos + 4, p, len);
    *pos += 4 + len;
}

void conc__mgr_req_write(uint8_t *buf, const struct conc__mgr_req *r,
                         const struct conc__mgr_str *s, size_t n)
{
    buf[0] = CONC__MGR_VERSION;
    buf[1] = r->op;
    buf[2] = buf[3] = 0;
    put32(buf + 4, (uint32_t)n);
    put64(buf + 8, r->id);
    put64(buf + 16, (uint64_t)r->timeout);
    put64(buf + 24, (uint64_t)r->a);
    put64(buf + 32, (uint64_t)r->b);
    put64(buf + 40, (uint64_t)r->c);
    size_t pos = CONC__MGR_REQ_HEAD;
    for (size_t i = 0; i < n; i++)
        conc__mgr_put_str(buf, &pos, s[i].p, s[i].len);
}

void conc__mgr_ans_write_head(uint8_t *buf, int32_t status, uint32_t nargs, int64_t value)
{
    put32(buf, (uint32_t)status);
    put32(buf + 4, nargs);
    put64(buf + 8, (uint64_t)value);
}

size_t conc__mgr_typecode_size(int tc)
{
    switch (tc) {
    case 'c': case 'b': case 'B':
        return 1;
    case 'h': case 'H':
        return sizeof(short);
    case 'i': case 'I':
        return sizeof(int);
    case 'l': case 'L':
        return sizeof(long);
    case 'q': case 'Q':
        return sizeof(long long);
    case 'f':
        return sizeof(float);
    case 'd':
        return sizeof(double);
    }
    return 0;
}
