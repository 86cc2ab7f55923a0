/*
 * echo_libuv.c - bench_echo's libuv peer: a server on one libuv loop that
 * sends back whatever each connection sends, upper-cased (ASCII), until the
 * client closes.
 *
 * usage: echo_libuv PORT      (0: the kernel picks one)
 *
 * Listens on 127.0.0.1 with a backlog of 1024 and prints
 * "listening on 127.0.0.1:PORT" once it accepts connections.  The usual
 * libuv shape: uv_read_start on each accepted uv_tcp_t, each chunk read is
 * upper-cased in its buffer and handed to uv_write (which writes at once
 * when the socket takes it, and queues the rest); the buffer goes back to
 * the connection when the write completes.  Runs until killed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define BUF 16384

/* A connection, with one read buffer that is lent to uv_write while a
 * reply is in flight (a second buffer is allocated only then). */
struct conn {
    uv_tcp_t tcp;
    char *spare;                /* the free buffer, or NULL while lent */
};

struct reply {
    uv_write_t req;
    char *buf;
};

static uv_loop_t *loop;

static void on_close(uv_handle_t *h)
{
    struct conn *c = (struct conn *)h;
    free(c->spare);
    free(c);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    (void)suggested;
    struct conn *c = (struct conn *)h;
    char *p = c->spare;
    c->spare = NULL;
    if (!p)
        p = malloc(BUF);
    *b = uv_buf_init(p, p ? BUF : 0);
}

static void on_written(uv_write_t *req, int status)
{
    struct reply *r = (struct reply *)req;
    struct conn *c = (struct conn *)req->handle;
    (void)status;           /* a failed write shows up as a read error */
    if (!c->spare)
        c->spare = r->buf;
    else
        free(r->buf);
    free(r);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    struct conn *c = (struct conn *)s;
    if (n <= 0) {
        if (b->base && !c->spare)
            c->spare = b->base;
        else
            free(b->base);
        if (n < 0)              /* UV_EOF or an error */
            uv_close((uv_handle_t *)s, on_close);
        return;
    }
    for (ssize_t i = 0; i < n; i++)
        if (b->base[i] >= 'a' && b->base[i] <= 'z')
            b->base[i] = (char)(b->base[i] - 'a' + 'A');
    struct reply *r = malloc(sizeof *r);
    if (!r) {
        free(b->base);
        uv_close((uv_handle_t *)s, on_close);
        return;
    }
    r->buf = b->base;
    uv_buf_t out = uv_buf_init(b->base, (unsigned)n);
    if (uv_write(&r->req, s, &out, 1, on_written) < 0) {
        free(r->buf);
        free(r);
        uv_close((uv_handle_t *)s, on_close);
    }
}

static void on_connection(uv_stream_t *server, int status)
{
    if (status < 0)
        return;
    struct conn *c = calloc(1, sizeof *c);
    if (!c)
        return;
    uv_tcp_init(loop, &c->tcp);
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0 ||
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) < 0)
        uv_close((uv_handle_t *)&c->tcp, on_close);
}

int main(int argc, char **argv)
{
    char *end;
    long port = argc == 2 ? strtol(argv[1], &end, 10) : -1;
    if (argc != 2 || *end || port < 0 || port > 65535) {
        fprintf(stderr, "usage: echo_libuv PORT\n");
        return 2;
    }
    loop = uv_default_loop();
    uv_tcp_t server;
    struct sockaddr_in a;
    uv_tcp_init(loop, &server);
    uv_ip4_addr("127.0.0.1", (int)port, &a);
    int rc = uv_tcp_bind(&server, (const struct sockaddr *)&a, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&server, 1024, on_connection);
    int len = sizeof a;
    if (rc == 0)
        rc = uv_tcp_getsockname(&server, (struct sockaddr *)&a, &len);
    if (rc < 0) {
        fprintf(stderr, "echo_libuv: listen: %s\n", uv_strerror(rc));
        return 1;
    }
    printf("listening on 127.0.0.1:%d\n", ntohs(a.sin_port));
    fflush(stdout);
    return uv_run(loop, UV_RUN_DEFAULT);
}
