/*
 * test_reuse_port.c - a server asked for SO_REUSEPORT on port 0 gets a
 * port of its own.  Linux gives a UDP socket that binds port 0 with
 * SO_REUSEPORT set the port of any SO_REUSEPORT group of the same user,
 * as if it were free: two such servers could end up sharing datagrams.
 * Here hundreds of strangers' groups hold ports while servers are made
 * again and again; none may land on a stranger's port (with the old
 * order of setsockopt and bind, about one UDP server in 36 did; TCP's
 * port 0 never shares, checked all the same).  The port still
 * takes SO_REUSEPORT sockets of the server's own after it.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conc.h"
#include "support/fd_count.h"

#define STRANGERS 800
#define ROUNDS 300

static int strangers[STRANGERS];
static uint8_t held[65536 / 8];

static int raw_bind(int type, int port, bool reuse_port)
{
    int fd = socket(AF_INET, type | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0, "socket: %s", strerror(errno));
    int one = 1;
    if (reuse_port)
        cr_assert_eq(setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one), 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

static int port_of(int fd)
{
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    return ntohs(a.sin_port);
}

/* STRANGERS sockets of type with SO_REUSEPORT on ports the kernel
 * picked, their ports marked in `held` */
static void strangers_bind(int type)
{
    memset(held, 0, sizeof held);
    for (int i = 0; i < STRANGERS; i++) {
        strangers[i] = raw_bind(type, 0, true);
        cr_assert_geq(strangers[i], 0, "stranger %d: %s", i, strerror(-strangers[i]));
        int p = port_of(strangers[i]);
        held[p / 8] |= (uint8_t)(1u << (p % 8));
    }
}

static void strangers_close(void)
{
    for (int i = 0; i < STRANGERS; i++)
        close(strangers[i]);
}

static bool is_held(int port)
{
    return held[port / 8] & (1u << (port % 8));
}

/* The server's port is in a group: a socket with SO_REUSEPORT joins it, a
 * socket without is refused. */
static void port_is_a_group(int type, int port)
{
    int fd = raw_bind(type, port, true);
    cr_assert_geq(fd, 0, "a socket of the server's own could not join port %d: %s", port,
                  strerror(-fd));
    close(fd);
    cr_assert_eq(raw_bind(type, port, false), -EADDRINUSE);
}

Test(reuse_port, create_server_on_port_0_gets_a_port_of_its_own, .timeout = 120)
{
    int fds = count_fds();
    for (int type = SOCK_STREAM; type <= SOCK_DGRAM; type++) {
        strangers_bind(type);
        for (int i = 0; i < ROUNDS; i++) {
            conc_socket_server_opts o = CONC_SOCKET_SERVER_OPTS_INIT;
            o.type = type;
            o.reuse_port = true;
            conc_socket *s;
            cr_assert_eq(conc_socket_create_server(&s, "127.0.0.1", 0, &o), 0);
            int port = port_of(conc_socket_fd(s));
            cr_assert(!is_held(port), "round %d: type %d got port %d, a stranger's group's", i,
                      type, port);
            if (i % 50 == 0)
                port_is_a_group(type, port);
            conc_socket_free(s);
        }
        strangers_close();
    }
    cr_assert_eq(count_fds(), fds);
}

static int answer(conc_server_request *req)
{
    (void)req;
    return 0;
}

Test(reuse_port, server_on_port_0_gets_a_port_of_its_own, .timeout = 120)
{
    int fds = count_fds();
    for (int type = SOCK_STREAM; type <= SOCK_DGRAM; type++) {
        strangers_bind(type);
        for (int i = 0; i < ROUNDS; i++) {
            conc_sockaddr a;
            cr_assert_eq(conc_sockaddr_inet(&a, AF_INET, "127.0.0.1", 0), 0);
            conc_server_opts o = CONC_SERVER_OPTS_INIT;
            o.model = CONC_SERVER_PREFORK;
            o.workers = 2;
            o.reuse_port = true;
            conc_server *s;
            cr_assert_eq(conc_server_new(&s, type, &a, &(conc_server_handler){ .handle = answer },
                                         &o), 0);
            cr_assert_eq(conc_server_address(s, &a), 0);
            int port = conc_sockaddr_port(&a);
            cr_assert(!is_held(port), "round %d: type %d got port %d, a stranger's group's", i,
                      type, port);
            if (i % 50 == 0)
                port_is_a_group(type, port);
            conc_server_free(s);
        }
        strangers_close();
    }
    cr_assert_eq(count_fds(), fds);
}
