/*
 * echo-upper-client - the tutorials' client of the upper-casing echo
 * servers (echo-upper-server over TCP, udp-upper-server over UDP).
 *
 *   echo-upper-client [--udp] [--timeout S] HOST PORT
 *
 * Sends each line read from standard input (with its newline) and prints
 * each reply as it comes back, one line for one line:
 *
 *   $ printf 'hello\nworld\n' | echo-upper-client 127.0.0.1 8080
 *   HELLO
 *   WORLD
 *
 * TCP (the default): one connection for the whole input.  A reply is read
 * until it has as many bytes as the line sent (TCP keeps no message
 * boundaries: one recv may bring part of a reply), where the tutorial's
 * client took whatever one recv(1024) gave.  UDP (--udp): each line goes
 * as one datagram and the next datagram that comes back is its reply.
 *
 * A connection refused or lost, a server that closes, a datagram refused
 * (nothing listens on the port) or a reply that does not come within the
 * timeout give one line on stderr and exit status 1:
 *
 *   echo-upper-client: cannot connect to 127.0.0.1:8080: Connection refused
 *
 * --timeout S bounds the connect and each reply (default: none over TCP,
 * 5 seconds over UDP, where a lost datagram would otherwise be waited for
 * forever).  Exit status 0 after the last line's reply; 2 for a bad command
 * line.
 *
 * Python original:
 *   client = socket.socket(); client.connect(("127.0.0.1", 8080))
 *   while True:
 *       msg = input("msg:")
 *       client.send(msg.encode("utf-8"))
 *       print(client.recv(1024).decode("utf-8"))
 */
#include <errno.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conc.h"
#include "conc/socket.h"
#include "cli.h"

static const char *prog = "echo-upper-client";

/* The largest UDP payload over IPv4 (65535 - 8 - 20). */
#define MAX_DATAGRAM 65507

static const char *host;
static long port;
static double timeout = -1;     /* < 0: the transport's default */

/* A failure of the conversation: one line, exit status 1. */
static int lost(const char *what, int err)
{
    fprintf(stderr, "%s: %s: %s\n", prog, what, conc_strerror(err));
    return 1;
}

/* Writes a reply to stdout and flushes it (a reply per line, as it comes). */
static void print_reply(const char *p, size_t n)
{
    fwrite(p, 1, n, stdout);
    fflush(stdout);
}

static int run_tcp(void)
{
    conc_socket *s;
    char what[160];
    snprintf(what, sizeof what, "cannot connect to %s:%ld", host, port);
    int rc = conc_socket_create_connection(&s, host, (int)port,
                                           timeout > 0 ? timeout : CONC_FOREVER, NULL);
    if (rc < 0)
        return lost(what, rc);
    char *line = NULL, *reply = NULL;
    size_t cap = 0, reply_cap = 0;
    ssize_t len;
    int status = 0;
    while (status == 0 && (len = getline(&line, &cap, stdin)) > 0) {
        if ((size_t)len > reply_cap) {
            char *more = realloc(reply, (size_t)len);
            if (!more) {
                status = lost("reply buffer", -ENOMEM);
                break;
            }
            reply = more;
            reply_cap = (size_t)len;
        }
        rc = conc_socket_sendall(s, line, (size_t)len, 0, NULL);
        if (rc < 0) {
            status = lost("connection lost", rc);
            break;
        }
        /* The reply has as many bytes as the line: read until they came. */
        size_t got = 0;
        while (got < (size_t)len) {
            ssize_t n = conc_socket_recv(s, reply + got, (size_t)len - got, 0);
            if (n == 0) {
                fprintf(stderr, "%s: the server closed the connection\n", prog);
                status = 1;
                break;
            }
            if (n < 0) {
                status = lost(n == -ETIMEDOUT ? "no reply in time" : "connection lost",
                              (int)n);
                break;
            }
            got += (size_t)n;
        }
        if (status == 0)
            print_reply(reply, got);
    }
    free(line);
    free(reply);
    conc_socket_free(s);
    return status;
}

static int run_udp(void)
{
    char service[16];
    snprintf(service, sizeof service, "%ld", port);
    conc_addrinfo *ai;
    int n = conc_socket_getaddrinfo(host, service, AF_UNSPEC, SOCK_DGRAM, 0, AI_NUMERICSERV, &ai);
    char what[160];
    snprintf(what, sizeof what, "cannot reach %s:%ld", host, port);
    if (n < 0)
        return lost(what, n);
    conc_socket *s;
    int rc = conc_socket_new(&s, ai[0].family, SOCK_DGRAM, 0);
    /* connect: the server's replies only, and its refusal (ICMP) reported. */
    if (rc == 0 && (rc = conc_socket_connect(s, &ai[0].addr)) < 0)
        conc_socket_free(s);
    free(ai);
    if (rc < 0)
        return lost(what, rc);
    conc_socket_set_timeout(s, timeout > 0 ? timeout : 5.0);
    char *line = NULL, *reply = malloc(MAX_DATAGRAM + 1);
    size_t cap = 0;
    ssize_t len;
    int status = reply ? 0 : lost("reply buffer", -ENOMEM);
    while (status == 0 && (len = getline(&line, &cap, stdin)) > 0) {
        if (len > MAX_DATAGRAM) {
            fprintf(stderr, "%s: a line of %zd bytes does not fit a datagram (at most %d)\n",
                    prog, len, MAX_DATAGRAM);
            status = 1;
            break;
        }
        ssize_t m = conc_socket_send(s, line, (size_t)len, 0);
        if (m >= 0)
            m = conc_socket_recv(s, reply, MAX_DATAGRAM + 1, 0);
        if (m < 0) {
            if (m == -ECONNREFUSED)
                fprintf(stderr, "%s: %s:%ld refused the datagram (is a server listening?)\n",
                        prog, host, port);
            else if (m == -ETIMEDOUT)
                fprintf(stderr, "%s: no reply from %s:%ld within %g s\n", prog, host, port,
                        conc_socket_timeout(s));
            else
                lost("datagram", (int)m);
            status = 1;
            break;
        }
        print_reply(reply, (size_t)m);
    }
    free(line);
    free(reply);
    conc_socket_free(s);
    return status;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: %s [--udp] [--timeout S] HOST PORT\n"
               "Sends each line of standard input to an upper-casing echo server and prints\n"
               "each reply.\n"
               "  HOST, PORT    the server (a name or an address; a port 1 to 65535)\n"
               "  --udp         one datagram per line (udp-upper-server) instead of TCP\n"
               "  --timeout S   seconds to wait for the connection and for each reply\n"
               "                (default: as long as it takes over TCP, 5 over UDP)\n",
               prog);
}

int main(int argc, char **argv)
{
    bool udp = false;
    const char *pos[2] = { NULL, NULL };
    size_t npos = 0;
    static const char *const pos_names[] = { "HOST", "PORT" };
    const struct opt opts[] = {
        { "udp", OPT_FLAG, &udp, 0, 0, NULL },
        { "timeout", OPT_SECONDS, &timeout, 1, 86400, NULL },
    };
    const struct positionals p = { pos, 2, 2, pos_names, &npos };
    int rc = parse_args(argc, argv, opts, OPTS_COUNT(opts), usage, &p);
    if (rc >= 0)
        return rc;
    host = pos[0];
    if ((rc = client_host_port(host, pos[1], &port)) != 0)
        return rc;
    return udp ? run_udp() : run_tcp();
}
