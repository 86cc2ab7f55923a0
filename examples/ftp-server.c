/*
 * ftp-server - the tutorials' file transfer server, on conc's socketserver.
 *
 *   ftp-server [--root DIR] [--model MODEL] [--max-size BYTES] [--host H] PORT
 *
 * Serves the files of DIR (default: the current directory) to ftp-client
 * over a small line protocol (docs/ftp.md): LS lists the regular files of
 * the root, GET NAME sends one (sendfile), PUT NAME SIZE SHA256 stores one,
 * QUIT ends the session.  Every file travels with its size and SHA-256
 * (libsodium); an upload is written to an unnamed file in its directory
 * (O_TMPFILE), synced, and named NAME only when its size and hash match,
 * so that a partial or corrupted upload never appears under NAME, and an
 * upload cut by a stop (or a session process killed) leaves nothing.
 * Where the file system refuses O_TMPFILE the file has a temporary hidden
 * name (".ftp-part-" and eight hex digits) from the start, removed when
 * the upload fails or a stop signal ends a forked session; the few such
 * names that a killed process can leave are removed when the server starts
 * (every ".ftp-part-XXXXXXXX" regular file beneath the root, on the root's
 * file system, so two servers must not share a root on such a file
 * system).
 *
 * Names are checked before any file is touched: absolute names, "..",
 * hidden names (starting with '.') and lines holding control characters
 * (a NUL among them) are refused, and every name is opened beneath the
 * root (openat2 with RESOLVE_BENEATH where the kernel has it, else a walk
 * that follows no symbolic link), so that a symbolic link pointing out of
 * the root is refused too; PUT over a directory or another file that is
 * not a regular one is refused before any byte is sent.  A refused name
 * or a failed command gets an "ERR NAME: why" line (the name's unprintable
 * bytes escaped as \xHH) and the session goes on; the server keeps
 * serving every other client meanwhile.
 *
 * Limits: a protocol line is at most 1024 bytes with its newline (a longer
 * one ends the session, however its bytes arrive), a name 255 bytes, an
 * upload --max-size bytes (default 1 GiB), a listing the first 10000 files
 * by name ("OK 10000 MORE" when there are more); a client silent for
 * 300 s is dropped.
 *
 * Models (--model, conc/server.h):
 *   threading   a thread per connection (the default; ThreadingTCPServer)
 *   forking     a child process per connection (ForkingTCPServer)
 *   coroutine   a coroutine per connection, on one hub per CPU, each hub
 *               in a thread of its own (gevent's StreamServer on every
 *               core; conc_server_opts.workers left at 0): the socket
 *               calls park only the session's coroutine, and so do the
 *               blocking file calls, which run on an offload worker
 *               (conc/offload.h) while the hub serves the other sessions:
 *               listing the root for LS, opening a name beneath the root
 *               (GET's file; PUT's directory and the unnamed file it is
 *               written to), hashing a file for GET and sending it with
 *               sendfile (in chunks of up to 1 MiB that never wait for the
 *               client: the hub waits for room between them), writing an
 *               upload's chunks, syncing and naming it
 *
 * The server listens on H (default 127.0.0.1) and PORT (0: the kernel
 * picks one) and says where once it accepts connections:
 *
 *   ftp-server: listening on 127.0.0.1:PORT (model threading)
 *
 * SIGINT or SIGTERM stops it: no new connection is taken, the sessions in
 * flight get 2 s to end (then their connections are shut down; a forked
 * session gets SIGTERM), and it prints "ftp-server: stopped by SIGTERM
 * after N connections" and exits 0.  A forked session leaves SIGINT to the
 * server and ends at once only on the server's SIGTERM, so a Ctrl-C or a
 * SIGTERM sent to the whole process group gives it the same 2 s.
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
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
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

static struct ftp_part_note part_note;  /* a forked session's named upload */

/* A forked session ended by a stop (session_takes_server_stop): the named
 * upload it may be writing goes with it. */
static void end_session(void)
{
    ftp_part_note_remove(&part_note);
}

static int handle(conc_server_request *req)
{
    if (getpid() != main_pid)       /* a forked session */
        session_takes_server_stop((unsigned)STOP_GRACE_S + 1, end_session);
    int rc = ftp_session(req->sock, &conf);
    /* A client that breaks the protocol or goes away is its own problem,
     * not the server's: the request ends without an error. */
    (void)rc;
    return 0;
}

static void on_stop(int sig)
{
    stop_sig = sig;
    conc_server_shutdown(server);
}

/* Whether name is one of ftp_part_open's temporary names. */
static bool is_part_name(const char *name)
{
    size_t n = strlen(FTP_TMP_PREFIX);
    if (strncmp(name, FTP_TMP_PREFIX, n) != 0 || strlen(name) != n + 8)
        return false;
    for (const char *p = name + n; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return false;
    return true;
}

/* Removes the temporary upload files a killed server left in the
 * directory dirfd and in the directories beneath it that a name may reach
 * (not hidden, no symbolic link followed, at most FTP_NAME_MAX / 2 deep),
 * on the root's file system dev only: a file system mounted beneath the
 * root (/proc under a root of /) is not walked.  Best effort: what cannot
 * be read is left as it is. */
static void remove_stale_parts(int dirfd, dev_t dev, int depth)
{
    int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = fd < 0 ? NULL : fdopendir(fd);
    if (!d) {
        if (fd >= 0)
            close(fd);
        return;
    }
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        struct stat st;
        if (is_part_name(e->d_name)) {
            if (fstatat(fd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode))
                unlinkat(fd, e->d_name, 0);
        } else if (e->d_name[0] != '.' && depth < FTP_NAME_MAX / 2 &&
                   (e->d_type == DT_DIR || e->d_type == DT_UNKNOWN)) {
            int sub = openat(fd, e->d_name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (sub >= 0 && fstat(sub, &st) == 0 && st.st_dev == dev)
                remove_stale_parts(sub, dev, depth + 1);
            if (sub >= 0)
                close(sub);
        }
    }
    closedir(d);
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
    conf.offload = model == CONC_SERVER_COROUTINE;
    conf.note = model == CONC_SERVER_FORKING ? &part_note : NULL;
    conf.rootfd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (conf.rootfd < 0) {
        fprintf(stderr, "%s: --root '%s': %s\n", prog, root, strerror(errno));
        return 2;
    }
    struct stat root_st;
    if (fstat(conf.rootfd, &root_st) == 0)
        remove_stale_parts(conf.rootfd, root_st.st_dev, 0);

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
