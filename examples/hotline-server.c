/*
 * hotline-server - the tutorials' ThreadingTCPServer phone menu: the 10086
 * hotline, a thread per caller (conc/server.h, CONC_SERVER_THREADING).
 *
 *   hotline-server [--host H] PORT
 *
 * A caller that connects hears the greeting with the menu, one line:
 *
 *   Welcome to the 10086 hotline. Enter 0 for an operator, or exit to hang up.
 *
 * and then each line it sends is answered with one line:
 *
 *   0       Calls may be recorded. Please hold for the next free operator.
 *   exit    Thank you for calling 10086. Goodbye.   (and the call ends)
 *   other   Sorry, I did not understand that. Please try again.
 *
 * A line is at most 256 bytes (a longer one is answered as "other" and the
 * rest of it skipped); a trailing '\r' is dropped.  A caller that hangs up
 * without "exit" just ends its call.  Callers are served at once, each on
 * its own thread: a silent caller holds up no one.
 *
 * The server listens on H (default 127.0.0.1) and PORT (0: the kernel picks
 * one) and says where once it takes calls:
 *
 *   hotline-server: listening on 127.0.0.1:PORT (model threading)
 *
 * SIGINT or SIGTERM stops it: no new call is taken, the calls in flight get
 * 2 s to end (then they are cut), and it prints "hotline-server: stopped by
 * SIGTERM after N calls" and exits 0.
 *
 * Python original:
 *   class MyServer(socketserver.BaseRequestHandler):
 *       def handle(self):
 *           conn = self.request
 *           conn.sendall("Welcome to 10086, enter 1xxx, 0 for an operator.".encode())
 *           while True:
 *               data = conn.recv(1024).decode()
 *               if data == "exit": break
 *               elif data == "0": conn.sendall("Calls may be recorded...".encode())
 *               else: conn.sendall("Please try again.".encode())
 *   socketserver.ThreadingTCPServer(("127.0.0.1", 8008), MyServer).serve_forever()
 */
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conc.h"
#include "conc/server.h"
#include "conc/socket.h"
#include "cli.h"

static const char *prog = "hotline-server";

#define LINE_MAX_BYTES 256
#define STOP_GRACE_S 2.0

#define GREETING "Welcome to the 10086 hotline. Enter 0 for an operator, or exit to hang up.\n"
#define OPERATOR "Calls may be recorded. Please hold for the next free operator.\n"
#define GOODBYE "Thank you for calling 10086. Goodbye.\n"
#define AGAIN "Sorry, I did not understand that. Please try again.\n"

static conc_server *server;
static volatile sig_atomic_t stop_sig;

static int say(conc_socket *s, const char *text)
{
    return conc_socket_sendall(s, text, strlen(text), 0, NULL);
}

/* One call: the greeting, then a reply to each line until "exit" or the
 * caller hangs up. */
static int handle(conc_server_request *req)
{
    conc_socket *s = req->sock;
    char buf[LINE_MAX_BYTES + 1];
    size_t have = 0;
    bool skipping = false;          /* inside an over-long line */
    bool hung_up = false;
    if (say(s, GREETING) < 0)
        return 0;
    for (;;) {
        char *nl = memchr(buf, '\n', have);
        if (!nl && have == LINE_MAX_BYTES) {    /* too long: answer, skip the rest */
            if (!skipping && say(s, AGAIN) < 0)
                return 0;
            skipping = true;
            have = 0;
            continue;
        }
        if (!nl) {
            if (hung_up)
                return 0;
            ssize_t n = conc_socket_recv(s, buf + have, LINE_MAX_BYTES - have, 0);
            if (n < 0 || (n == 0 && (have == 0 || skipping)))
                return 0;           /* hung up (or reset) */
            if (n == 0) {           /* a last line without its newline: */
                hung_up = true;     /* answered, as Python's readline */
                buf[have++] = '\n';  /* gives it at the end */
                continue;
            }
            have += (size_t)n;
            continue;
        }
        size_t len = (size_t)(nl - buf);
        bool was_skipping = skipping;
        skipping = false;
        if (!was_skipping) {
            if (len > 0 && buf[len - 1] == '\r')
                len--;
            bool bye = len == 4 && memcmp(buf, "exit", 4) == 0;
            const char *reply = bye ? GOODBYE : len == 1 && buf[0] == '0' ? OPERATOR : AGAIN;
            if (say(s, reply) < 0 || bye)
                return 0;
        }
        have -= (size_t)(nl + 1 - buf);
        memmove(buf, nl + 1, have);
    }
}

static void on_stop(int sig)
{
    stop_sig = sig;
    conc_server_shutdown(server);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: %s [--host H] PORT\n"
               "The 10086 phone menu, a thread per caller (hotline-client calls it).\n"
               "  PORT      the port to listen on, 0 to 65535 (0: any free one)\n"
               "  --host H  the address or name to listen on (default 127.0.0.1)\n"
               "SIGINT or SIGTERM stops it (exit status 0).\n",
            prog);
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *pos[1] = { NULL };
    size_t npos = 0;
    static const char *const pos_names[] = { "PORT" };
    const struct opt opts[] = { { "host", OPT_TEXT, &host, 0, 0, NULL } };
    const struct positionals p = { pos, 1, 1, pos_names, &npos };
    int rc = parse_args(argc, argv, opts, OPTS_COUNT(opts), usage, &p);
    if (rc >= 0)
        return rc;
    long port = 0;
    if ((rc = server_port_host(pos[0], host, &port)) != 0)
        return rc;

    conc_server_handler h = { .handle = handle };
    conc_server_opts so = CONC_SERVER_OPTS_INIT;
    so.model = CONC_SERVER_THREADING;
    so.allow_reuse_address = true;
    so.request_queue_size = 128;
    so.shutdown_timeout = STOP_GRACE_S;
    char where[CONC_SOCKADDR_STRLEN];
    if (open_server(&server, host, port, &h, &so, where, sizeof where))
        return 1;
    if ((rc = catch_stop_signals(on_stop)) < 0) {
        conc_server_free(server);
        return die("catch_stop_signals", rc);
    }

    conc_sockaddr at;
    say_listening(conc_server_address(server, &at), &at, where, "model %s", "threading");

    rc = conc_server_serve_forever(server, CONC_SERVER_POLL_INTERVAL);
    end_stop_signals();             /* on_stop uses server: no call after this */
    conc_server_stats st = { 0 };
    conc_server_get_stats(server, &st);
    conc_server_free(server);
    if (rc < 0)
        return die("serve_forever", rc);
    say_stopped(stop_sig, st.accepted, "call");
    return 0;
}
