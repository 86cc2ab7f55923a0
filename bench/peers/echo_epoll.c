/*
 * echo_epoll.c - bench_echo's hand-written peer: a single-thread epoll
 * server in plain C (no library but libc) that sends back whatever each
 * connection sends, upper-cased (ASCII), until the client closes.
 *
 * usage: echo_epoll PORT      (0: the kernel picks one)
 *
 * Listens on 127.0.0.1 with a backlog of 1024 and prints
 * "listening on 127.0.0.1:PORT" once it accepts connections.  It is the
 * straightforward good version: level-triggered, every descriptor
 * non-blocking, the connection's state in the event's data pointer, accept4
 * until EAGAIN, a reply written at once and only the part the socket did not
 * take kept for EPOLLOUT (reading pauses meanwhile).  Runs until killed.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF 16384

struct conn {
    int fd;
    size_t pending, off;        /* reply bytes still to write, from off */
    char buf[BUF];
};

static struct conn listener = { .fd = -1 };

static void upper(char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] >= 'a' && p[i] <= 'z')
            p[i] = (char)(p[i] - 'a' + 'A');
}

static void drop(int ep, struct conn *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c);
}

/* Writes what is pending; returns 1 when all went, 0 when the socket is
 * full, -1 when the connection broke. */
static int flush(struct conn *c)
{
    while (c->pending > 0) {
        ssize_t n = send(c->fd, c->buf + c->off, c->pending, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN ? 0 : -1;
        }
        c->off += (size_t)n;
        c->pending -= (size_t)n;
    }
    return 1;
}

static void on_client(int ep, struct conn *c, uint32_t events)
{
    if (c->pending > 0) {                   /* waiting for EPOLLOUT */
        int r = flush(c);
        if (r < 0) {
            drop(ep, c);
        } else if (r > 0) {
            struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
            epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        }
        return;
    }
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
        return;
    ssize_t n = recv(c->fd, c->buf, BUF, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {                           /* closed by the client, or reset */
        drop(ep, c);
        return;
    }
    upper(c->buf, (size_t)n);
    c->off = 0;
    c->pending = (size_t)n;
    int r = flush(c);
    if (r < 0) {
        drop(ep, c);
    } else if (r == 0) {
        struct epoll_event ev = { .events = EPOLLOUT, .data.ptr = c };
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    }
}

static void on_listener(int ep)
{
    for (;;) {
        int fd = accept4(listener.fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;                         /* EAGAIN, or out of descriptors */
        struct conn *c = malloc(sizeof *c);
        if (!c) {
            close(fd);
            continue;
        }
        c->fd = fd;
        c->pending = c->off = 0;
        struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
            close(fd);
            free(c);
        }
    }
}

int main(int argc, char **argv)
{
    char *end;
    long port = argc == 2 ? strtol(argv[1], &end, 10) : -1;
    if (argc != 2 || *end || port < 0 || port > 65535) {
        fprintf(stderr, "usage: echo_epoll PORT\n");
        return 2;
    }
    listener.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(listener.fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (listener.fd < 0 || bind(listener.fd, (struct sockaddr *)&a, sizeof a) < 0 ||
        listen(listener.fd, 1024) < 0 || getsockname(listener.fd, (struct sockaddr *)&a, &len) < 0) {
        perror("echo_epoll: listen");
        return 1;
    }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &listener };
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, listener.fd, &ev) < 0) {
        perror("echo_epoll: epoll");
        return 1;
    }
    printf("listening on 127.0.0.1:%d\n", ntohs(a.sin_port));
    fflush(stdout);
    struct epoll_event evs[1024];
    for (;;) {
        int n = epoll_wait(ep, evs, 1024, -1);
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c == &listener)
                on_listener(ep);
            else
                on_client(ep, c, evs[i].events);
        }
    }
}
