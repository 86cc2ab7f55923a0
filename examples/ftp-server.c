/*
 * ftp-server - the tutorials' file transfer server, on conc's socketserver.
 *
 *   ftp-server [--root DIR] [--model MODEL] [--max-size BYTES] [--host H] PORT
 *
 * Serves the files of DIR (default: the current directory) to ftp-client
 * over a small line protocol (docs/ftp.md): LS lists the regular files of
 * the root, GET NAME sends one (sendfile), PUT NAME SIZE SHA256 stores one,
 * QUIT ends the session.  Every file travels with its size and SHA-256
 * (libsodium); an upload is written under a temporary hidden name in its
 * directory, synced, and renamed to NAME only when its size and hash
 * match, so that a partial or corrupted upload never appears under NAME.
 *
 * Names are checked before any file is touched: absolute names, "..",
 * hidden names (starting with '.') and control characters are refused, and
 * every name is opened beneath the root (openat2 with RESOLVE_BENEATH where
 * the kernel has it, else a walk that follows no symbolic link), so that a
 * symbolic link pointing out of the root is refused too.  A refused name
 * or a failed command gets an "ERR NAME: why" line and the session goes
 * on; the server keeps serving every other client meanwhile.
 *
 * Limits: a protocol line is at most 1024 bytes (a longer one ends the
 * session), a name 255 bytes, an upload --max-size bytes (default 1 GiB),
 * a listing 10000 files; a client silent for 300 s is dropped.
 *
 * Models (--model, conc/server.h):
 *   threading   a thread per connection (the default; ThreadingTCPServer)
 *   forking     a child process per connection (ForkingTCPServer)
 *   coroutine   a coroutine per connection on one hub (gevent's
 *               StreamServer): the socket calls park only the session's
 *               coroutine, and so does hashing a file for GET (it runs on
 *               an offload worker, conc/offload.h); the reads and writes
 *               of an upload's chunks are short and run on the hub
 *
 * The server listens on H (default 127.0.0.1) and PORT (0: the kernel
 * picks one) and says where once it accepts connections:
 *
 *   ftp-server: listening on 127.0.0.1:PORT (model threading)
 *
 * SIGINT or SIGTERM stops it: no new connection is taken, the sessions in
 * flight get 2 s to end (then their connections are shut down), and it
 * prints "ftp-server: stopped by SIGTERM after N connections" and exits 0.
 *
 * Python original (the tutorial's server, abridged):
 *   server = socket.socket(); server.bind(("localhost", 9999)); server.listen()
 *   while True:
 *       conn, addr = server.accept()
 *       while True:
 *           cmd, filename = conn.recv(1024).decode().split()
 *           if os.path.isfile(filename):
 *               conn.send(str(os.stat(filename).st_size).encode()); conn.recv(1024)
 *               for line in open(filename, "rb"): conn.send(line)
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "conc.h"
#include "conc/server.h"
#include "conc/socket.h"
#include "cli.h"
#include "ftp.h"
#include "ftp-session.h"

static const char *prog = "ftp-server";

#define BACKLOG 1024
#define STOP_GRACE_S 2.0            /* sessions in flight get this after a stop */

static struct ftp_conf conf;
static conc_server *server;
static pid_t main_pid;
static volatile sig_atomic_t stop_sig;

static int handle(conc_server_request *req)
{
    if (getpid() != main_pid)
        unblock_stop_signals();     /* a forked session: a stop ends it */
    int rc = ftp_session(req->sock, &conf);
    /* A client that breaks the protocol or goes away is its own problem,
     * not the server's: the request ends without an error. */
    (void)rc;
    return 0;
}

static void on_stop(int sig)
{
    if (getpid() != main_pid)
        _exit(1);                   /* a forked session: the parent decides */
    stop_sig = sig;
    conc_server_shutdown(server);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: %s [--root DIR] [--model MODEL] [--max-size BYTES] [--host H] PORT\n"
               "Serves the files of DIR to ftp-client (LS, GET, PUT, QUIT; docs/ftp.md).\n"
               "  PORT            the port to listen on, 0 to 65535 (0: any free one)\n"
               "  --root DIR      the directory served (default: .)\n"
               "  --model MODEL   threading (default), forking or coroutine\n"
               "  --max-size N    the largest upload in bytes (default 1073741824)\n"
               "  --host H        the address or name to listen on (default 127.0.0.1)\n"
               "SIGINT or SIGTERM stops it (exit status 0).\n",
            prog);
}

int main(int argc, char **argv)
{
    const char *root = ".", *model_name = "threading", *host = "127.0.0.1", *pos[1] = { NULL };
    long max_size = 1L << 30;
    size_t npos = 0;
    static const char *const pos_names[] = { "PORT" };
    const struct opt opts[] = {
        { "root", OPT_TEXT, &root, 0, 0, NULL },
        { "model", OPT_TEXT, &model_name, 0, 0, NULL },
        { "max-size", OPT_INT, &max_size, 0, (long)FTP_SIZE_MAX, NULL },
        { "host", OPT_TEXT, &host, 0, 0, NULL },
    };
    const struct positionals p = { pos, 1, 1, pos_names, &npos };
    int rc = parse_args(argc, argv, opts, OPTS_COUNT(opts), usage, &p);
    if (rc >= 0)
        return rc;
    long port = 0;
    if ((rc = server_port_host(pos[0], host, &port)) != 0)
        return rc;
    conc_server_model model;
    if (conc_server_model_parse(model_name, &model) < 0 ||
        (model != CONC_SERVER_THREADING && model != CONC_SERVER_FORKING &&
         model != CONC_SERVER_COROUTINE))
        return fail("--model wants threading, forking or coroutine, not '%s'", model_name);
    if (sodium_init() < 0)
        return fail("%s", "libsodium cannot start");
    conf.max_size = (uint64_t)max_size;
    conf.offload_hash = model == CONC_SERVER_COROUTINE;
    conf.rootfd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (conf.rootfd < 0) {
        fprintf(stderr, "%s: --root '%s': %s\n", prog, root, strerror(errno));
        return 2;
    }

    raise_nofile();                     /* a descriptor per client */
    conc_server_handler h = { .handle = handle };
    conc_server_opts so = CONC_SERVER_OPTS_INIT;
    so.model = model;
    so.allow_reuse_address = true;
    so.request_queue_size = BACKLOG;
    so.max_children = 1000;
    so.shutdown_timeout = STOP_GRACE_S;
    char where[CONC_SOCKADDR_STRLEN];
    if (open_server(&server, host, port, &h, &so, where, sizeof where))
        return 1;
    main_pid = getpid();
    if ((rc = catch_stop_signals(on_stop)) < 0) {
        conc_server_free(server);
        return die("catch_stop_signals", rc);
    }

    conc_sockaddr at;
    say_listening(conc_server_address(server, &at), &at, where, "model %s",
                  conc_server_model_name(model));

    rc = conc_server_serve_forever(server, CONC_SERVER_POLL_INTERVAL);
    end_stop_signals();             /* on_stop uses server: no call after this */
    conc_server_stats st = { 0 };
    conc_server_get_stats(server, &st);
    conc_server_free(server);
    close(conf.rootfd);
    if (rc < 0)
        return die("serve_forever", rc);
    say_stopped(stop_sig, st.accepted, "connection");
    return 0;
}
