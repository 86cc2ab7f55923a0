/*
 * test_headers.c - the public headers, as a user's compiler sees them:
 * each one compiles on its own in strict C11 with every warning an error,
 * none pulls in <stdio.h>, the umbrella conc.h includes
 * every header, and each concept's calls are declared in its own header
 * (thread queues, deque, process queues, Pipe/Connection and
 * connection.wait apart; coroutines, the hub and coroutine pools apart;
 * sockets, selectors, futures, executors and pools apart).
 *
 * The C compiler that built conc is run on one-line programs read from its
 * standard input; the headers are taken from the source tree, and every
 * header found there is checked, so a new header is covered without
 * touching this file.
 */
#include <criterion/criterion.h>
#include <ctype.h>
#include <dirent.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#ifndef CONC_C_COMPILER
#error "CONC_C_COMPILER must name the C compiler"
#endif
#ifndef CONC_INCLUDE_DIR
#error "CONC_INCLUDE_DIR must name the directory of the public headers"
#endif

#define STRICT "-std=c11 -pedantic -Wall -Wextra -Werror"

#define MAX_HEADERS 64

/* The public headers: every include/conc/ *.h, sorted, then "conc.h". */
static size_t list_headers(char names[MAX_HEADERS][64])
{
    DIR *d = opendir(CONC_INCLUDE_DIR "/conc");
    cr_assert_not_null(d, "cannot open %s/conc", CONC_INCLUDE_DIR);
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        if (len < 3 || strcmp(e->d_name + len - 2, ".h") != 0)
            continue;
        cr_assert_lt(n, MAX_HEADERS - 1);
        cr_assert_lt(len, 64);
        for (size_t i = 0; i < len; i++)    /* safe in a shell command */
            cr_assert(isalnum((unsigned char)e->d_name[i]) || e->d_name[i] == '_' ||
                      e->d_name[i] == '.', "odd header name %s", e->d_name);
        memcpy(names[n++], e->d_name, len + 1);
    }
    closedir(d);
    qsort(names, n, sizeof names[0], (int (*)(const void *, const void *))strcmp);
    cr_assert_gt(n, 0, "no header found in %s/conc", CONC_INCLUDE_DIR);
    strcpy(names[n++], "conc.h");
    return n;
}

/* The path to include a header by: "conc/NAME.h", or "conc.h". */
static void include_path(char *buf, size_t cap, const char *name)
{
    if (strcmp(name, "conc.h") == 0)
        snprintf(buf, cap, "conc.h");
    else
        snprintf(buf, cap, "conc/%.63s", name);
}

/* Runs the compiler with `flags` on the one-line program `#include <inc>`
 * (read from its standard input).  Returns its exit status; *out gets
 * everything it printed (free it). */
static int compile(const char *inc, const char *flags, char **out)
{
    char cmd[1024];
    int w = snprintf(cmd, sizeof cmd,
                     "printf '#include <%s>\\n' | '%s' %s -I'%s' -x c - 2>&1",
                     inc, CONC_C_COMPILER, flags, CONC_INCLUDE_DIR);
    cr_assert(w > 0 && (size_t)w < sizeof cmd);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p, "popen failed");
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    cr_assert_not_null(buf);
    size_t got;
    while ((got = fread(buf + len, 1, cap - len - 1, p)) > 0) {
        len += got;
        if (cap - len < 2) {
            cap *= 2;
            buf = realloc(buf, cap);
            cr_assert_not_null(buf);
        }
    }
    buf[len] = '\0';
    int st = pclose(p);
    cr_assert(st != -1 && WIFEXITED(st), "%s: did not run", cmd);
    *out = buf;
    return WEXITSTATUS(st);
}

/* True when `text` holds `word` as a whole identifier. */
static bool has_word(const char *text, const char *word)
{
    size_t n = strlen(word);
    for (const char *p = strstr(text, word); p; p = strstr(p + 1, word)) {
        bool start = p == text || !(isalnum((unsigned char)p[-1]) || p[-1] == '_');
        bool end = !(isalnum((unsigned char)p[n]) || p[n] == '_');
        if (start && end)
            return true;
    }
    return false;
}

/* True when the dependency list (the compiler's -M output) names a file
 * whose path ends in `suffix` (e.g. "/stdio.h"). */
static bool deps_name(const char *deps, const char *suffix)
{
    size_t n = strlen(suffix);
    for (const char *p = strstr(deps, suffix); p; p = strstr(p + 1, suffix)) {
        char after = p[n];
        if (after == '\0' || after == ' ' || after == '\n' || after == '\\')
            return true;
    }
    return false;
}

Test(headers, each_compiles_alone_in_strict_c11, .timeout = 120)
{
    char names[MAX_HEADERS][64];
    size_t n = list_headers(names);
    for (size_t i = 0; i < n; i++) {
        char inc[80], *out;
        include_path(inc, sizeof inc, names[i]);
        int st = compile(inc, STRICT " -fsyntax-only", &out);
        cr_expect_eq(st, 0, "<%s> alone does not compile (" STRICT "):\n%s", inc, out);
        free(out);
    }
}

Test(headers, none_pulls_in_stdio, .timeout = 120)
{
    /* The check sees <stdio.h> when it is there. */
    char *out;
    cr_assert_eq(compile("stdio.h", STRICT " -M", &out), 0, "%s", out);
    cr_assert(deps_name(out, "/stdio.h"), "the dependency list misses stdio.h:\n%s", out);
    free(out);

    char names[MAX_HEADERS][64];
    size_t n = list_headers(names);
    for (size_t i = 0; i < n; i++) {
        char inc[80];
        include_path(inc, sizeof inc, names[i]);
        cr_assert_eq(compile(inc, STRICT " -M", &out), 0, "<%s>:\n%s", inc, out);
        cr_expect(!deps_name(out, "/stdio.h"), "<%s> pulls in <stdio.h>:\n%s", inc, out);
        free(out);
    }
}

Test(headers, umbrella_includes_every_header, .timeout = 120)
{
    char *out;
    cr_assert_eq(compile("conc.h", STRICT " -M", &out), 0, "%s", out);
    char names[MAX_HEADERS][64];
    size_t n = list_headers(names);
    for (size_t i = 0; i + 1 < n; i++) {        /* the last one is conc.h */
        char suffix[80];
        snprintf(suffix, sizeof suffix, "/conc/%.63s", names[i]);
        /* conc/broker.h and conc/broker_executor.h declare libconc_broker,
         * a library of its own: the umbrella covers libconc and leaves them
         * out. */
        if (strcmp(names[i], "broker.h") == 0 || strcmp(names[i], "broker_executor.h") == 0) {
            cr_expect(!deps_name(out, suffix), "<conc.h> includes <conc/%s>", names[i]);
            continue;
        }
        cr_expect(deps_name(out, suffix), "<conc.h> does not include <conc/%s>", names[i]);
    }
    free(out);
}

/* Which calls and types each split header declares, and which belong to a
 * neighbour's concept and must not appear in it. */
static const struct {
    const char *header;
    const char *has[4];
    const char *lacks[5];
} concepts[] = {
    { "conc/queue.h", { "conc_queue_new", "conc_queue_fd", "conc_drop_fn" },
      { "conc_deque_new", "conc_mpqueue_new", "conc_wait", "conc_waitable" } },
    { "conc/deque.h", { "conc_deque_new", "conc_deque_rotate", "conc_drop_fn" },
      { "conc_queue_new", "conc_mpqueue_new" } },
    { "conc/mpqueue.h", { "conc_mpqueue_new", "conc_mpqueue_fd", "CONC_MPQUEUE_NFDS" },
      { "conc_queue_new", "conc_deque_new", "conc_wait" } },
    { "conc/pipe.h", { "conc_conn_pipe", "conc_conn_poll", "CONC_PIPE_MSG_MAX" },
      { "conc_wait", "conc_wait_until", "conc_waitable", "CONC_WAIT_CONN", "conc_queue_new" } },
    { "conc/wait.h", { "conc_wait", "conc_wait_until", "conc_waitable", "conc_fd_wait" },
      { "conc_conn_pipe", "conc_queue_new", "conc_mpqueue_new", "conc_process_new",
        "conc_conn_poll" } },
    { "conc/park.h", { "conc_park_set_spin", "conc_park_spin", "CONC_PARK_SPIN_DEFAULT" },
      { "conc_lock_acquire", "conc_queue_new", "conc_wait" } },
    { "conc/coro.h", { "conc_coro_new", "conc_coro_switch", "conc_coro_set_overflow_report" },
      { "conc_greenlet_spawn", "conc_hub_run", "conc_cpool_new", "conc_fd_wait", "conc_greenlet" } },
    { "conc/hub.h", { "conc_greenlet_spawn", "conc_greenlet_join", "conc_hub_run", "conc_hub_dump" },
      { "conc_cpool_new", "conc_cpool_spawn", "conc_fd_wait", "conc_wait", "conc_offload" } },
    { "conc/cpool.h", { "conc_cpool_new", "conc_cpool_spawn", "conc_cpool_join", "conc_cpool_full" },
      { "conc_fd_wait", "conc_wait", "conc_offload" } },
    { "conc/socket.h", { "conc_socket_new", "conc_socket_sendall", "conc_socket_getaddrinfo",
                         "conc_sockaddr" },
      { "conc_selector_new", "conc_selector_select_fds", "conc_wait", "conc_waitable",
        "conc_conn_pipe" } },
    { "conc/broker.h", { "conc_broker_new", "conc_broker_queue_put", "conc_broker_subscribe",
                         "conc_broker_msg" },
      { "conc_queue_new", "conc_mpqueue_new", "conc_socket_new", "conc_executor_new" } },
    { "conc/broker_executor.h", { "conc_broker_executor_new", "conc_broker_executor_submit",
                                  "conc_broker_worker_run", "conc_future_result" },
      { "conc_broker_new", "conc_broker_queue_put", "conc_executor_new", "conc_wait" } },
    { "conc/selector.h", { "conc_selector_new", "conc_selector_select", "conc_selector_poll_fds",
                           "CONC_EVENT_READ" },
      { "conc_socket_new", "conc_sockaddr", "conc_wait", "conc_fd_wait", "conc_hub_run" } },
    { "conc/server.h", { "conc_server_new", "conc_server_serve_forever", "conc_server_conn_write",
                         "conc_sockaddr" },
      { "conc_selector_new", "conc_wait", "conc_greenlet_spawn", "conc_process_new",
        "conc_thread_new" } },
    { "conc/future.h", { "conc_future_new", "conc_future_wait_many", "conc_as_completed_new",
                         "conc_future_fd" },
      { "conc_executor_new", "conc_wait", "conc_waitable", "conc_queue_new" } },
    { "conc/executor.h", { "conc_executor_new", "conc_executor_submit", "conc_executor_map_new",
                           "conc_future_result" },
      { "conc_wait", "conc_waitable", "conc_queue_new" } },
    { "conc/pool.h",
      { "conc_pool_new", "conc_threadpool_new", "conc_pool_result_get", "conc_pool_iter_next" },
      { "conc_wait", "conc_queue_new", "conc_mpqueue_new", "conc_conn_pipe", "conc_greenlet_spawn" } },
    { "conc/listener.h",
      { "conc_listener_new", "conc_client_connect", "conc_conn_deliver_challenge",
        "conc_address_parse" },
      { "conc_wait", "conc_queue_new", "conc_greenlet_spawn", "conc_selector_new" } },
};

Test(headers, one_concept_each, .timeout = 120)
{
    for (size_t i = 0; i < sizeof concepts / sizeof concepts[0]; i++) {
        char *out;
        if (compile(concepts[i].header, STRICT " -fsyntax-only", &out) != 0) {
            cr_expect_fail("<%s> does not compile:\n%s", concepts[i].header, out);
            free(out);
            continue;
        }
        free(out);
        cr_assert_eq(compile(concepts[i].header, STRICT " -E -dD", &out), 0);
        for (size_t k = 0; k < 4 && concepts[i].has[k]; k++)
            cr_expect(has_word(out, concepts[i].has[k]), "<%s> does not declare %s",
                      concepts[i].header, concepts[i].has[k]);
        for (size_t k = 0; k < 5 && concepts[i].lacks[k]; k++)
            cr_expect(!has_word(out, concepts[i].lacks[k]), "<%s> declares %s",
                      concepts[i].header, concepts[i].lacks[k]);
        free(out);
    }
}
