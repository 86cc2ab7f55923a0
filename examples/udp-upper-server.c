/*
 * udp-upper-server - the tutorials' UDP server: each datagram that comes
 * in goes back to its sender upper-cased (ASCII letters; every other byte
 * unchanged), one datagram out for one datagram in.
 *
 *   udp-upper-server [--host H] PORT
 *
 * Listens on H (default 127.0.0.1; a name or an address, IPv4 or IPv6)
 * and PORT (0: the kernel picks one) and says where once it does:
 *
 *   udp-upper-server: listening on 127.0.0.1:PORT (UDP)
 *
 * A datagram of any size up to 65535 bytes comes back whole (an empty one
 * too).  A reply that cannot be sent (the sender's port is gone) is
 * dropped, as UDP does, and the server goes on.  SIGINT or SIGTERM ends it
 * cleanly:
 *
 *   udp-upper-server: stopped by SIGINT after N datagrams
 *
 * and exit status 0.  It waits on its socket and on a signalfd together
 * (conc_wait), so a signal ends the wait at once.
 *
 * Python original:
 *   server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
 *   server.bind(("127.0.0.1", 8080))
 *   while True:
 *       data, addr = server.recvfrom(1024)
 *       server.sendto(data.upper(), addr)
 */
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conc.h"
#include "conc/socket.h"
#include "cli.h"

static const char *prog = "udp-upper-server";

#define MAX_DATAGRAM 65535

static void usage(FILE *f)
{
    fprintf(f, "usage: %s [--host H] PORT\n"
               "Sends each datagram back to its sender, upper-cased.\n"
               "  PORT          the UDP port, 0 to 65535 (0: any free one)\n"
               "  --host H      the address or name to listen on (default 127.0.0.1)\n"
               "SIGINT or SIGTERM stops it (exit status 0).\n",
               prog);
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *pos[1] = { NULL };
    size_t npos = 0;
    static const char *const pos_names[] = { "PORT" };
    const struct opt opts[] = {
        { "host", OPT_TEXT, &host, 0, 0, NULL },
    };
    const struct positionals p = { pos, 1, 1, pos_names, &npos };
    int rc = parse_args(argc, argv, opts, OPTS_COUNT(opts), usage, &p);
    if (rc >= 0)
        return rc;
    long port = 0;
    if ((rc = server_port_host(pos[0], host, &port)) != 0)
        return rc;

    int sigfd = stop_signals_fd();
    if (sigfd < 0)
        return die("signalfd", sigfd);
    conc_addrinfo ai;
    char where[CONC_SOCKADDR_STRLEN];
    if (server_address(host, port, SOCK_DGRAM, &ai, where, sizeof where))
        return 1;
    conc_socket *s;
    rc = conc_socket_new(&s, ai.family, SOCK_DGRAM, 0);
    if (rc == 0 && (rc = conc_socket_bind(s, &ai.addr)) < 0)
        conc_socket_free(s);
    if (rc < 0) {
        fprintf(stderr, "%s: bind %s: %s\n", prog, where, conc_strerror(rc));
        return 1;
    }
    conc_sockaddr at;
    say_listening(conc_socket_getsockname(s, &at), &at, where, "%s", "UDP");

    char *buf = malloc(MAX_DATAGRAM);
    if (!buf) {
        conc_socket_free(s);
        return die("malloc", -ENOMEM);
    }
    conc_socket_set_blocking(s, false);
    long datagrams = 0;
    int sig = 0;
    rc = 0;
    while (!sig) {
        conc_waitable w[2] = {
            { .kind = CONC_WAIT_SOCKET, .u.socket = s, .events = POLLIN },
            { .kind = CONC_WAIT_FD, .u.fd = sigfd },
        };
        rc = conc_wait(w, 2, CONC_FOREVER);
        if (rc < 0)
            break;
        if (w[1].ready && (sig = stop_signal_take(sigfd)) != 0)
            break;
        /* Every datagram that is there, then wait again. */
        for (;;) {
            conc_sockaddr from;
            ssize_t got = conc_socket_recvfrom(s, buf, MAX_DATAGRAM, 0, &from);
            if (got == -EAGAIN)
                break;
            if (got == -ECONNREFUSED || got == -EHOSTUNREACH || got == -ENETUNREACH)
                continue;           /* an ICMP error for an earlier reply */
            if (got < 0)
                break;
            datagrams++;
            for (ssize_t i = 0; i < got; i++)
                if (buf[i] >= 'a' && buf[i] <= 'z')
                    buf[i] = (char)(buf[i] - 'a' + 'A');
            conc_socket_sendto(s, buf, (size_t)got, 0, &from);  /* lost: as UDP */
        }
    }
    free(buf);
    conc_socket_free(s);
    close(sigfd);
    if (rc < 0)
        return die("wait", rc);
    say_stopped(sig, (unsigned long long)datagrams, "datagram");
    return 0;
}
