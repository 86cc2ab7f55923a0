/*
 * fuzz_manager_wire.c - libFuzzer target for the manager's message checks
 * (src/manager_wire.c): any bytes given to conc__mgr_req_parse or
 * conc__mgr_ans_parse are either refused or describe strings that lie
 * inside the message, and a request that passes is written back byte for
 * byte by conc__mgr_req_write.
 *
 * Build (tests/CMakeLists.txt does it when clang is found):
 *   clang -g -fsanitize=fuzzer,address,undefined -Isrc \
 *         tests/fuzz/fuzz_manager_wire.c src/manager_wire.c
 * Seeds: tests/fuzz/corpus/manager_wire/ (by hand) and manager_wire_grown/
 * (the inputs a longer run added, merged with -merge=1).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "manager_wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct conc__mgr_req r;
    if (conc__mgr_req_parse(data, size, &r) == 0) {
        struct conc__mgr_str *s = malloc((r.nargs ? r.nargs : 1) * sizeof *s);
        if (!s)
            return 0;
        size_t pos = 0;
        for (uint32_t i = 0; i < r.nargs; i++) {
            if (conc__mgr_next(r.args, r.args_len, &pos, &s[i]))
                __builtin_trap();       /* a checked message ran short */
            if (s[i].p < data || s[i].p + s[i].len > data + size)
                __builtin_trap();
        }
        struct conc__mgr_str extra;
        if (pos != r.args_len || conc__mgr_next(r.args, r.args_len, &pos, &extra) == 0)
            __builtin_trap();           /* bytes left over were let through */
        if (conc__mgr_size(CONC__MGR_REQ_HEAD, s, r.nargs) != size)
            __builtin_trap();
        uint8_t *copy = malloc(size);
        if (copy) {
            conc__mgr_req_write(copy, &r, s, r.nargs);
            if (memcmp(copy, data, size) != 0)
                __builtin_trap();       /* parse and write disagree */
            free(copy);
        }
        free(s);
    }
    struct conc__mgr_ans a;
    if (conc__mgr_ans_parse(data, size, &a) == 0) {
        size_t pos = 0;
        struct conc__mgr_str s;
        for (uint32_t i = 0; i < a.nargs; i++)
            if (conc__mgr_next(a.args, a.args_len, &pos, &s))
                __builtin_trap();
        if (pos != a.args_len)
            __builtin_trap();
    }
    return 0;
}
