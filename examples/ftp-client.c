/*
 * ftp-client - the client of ftp-server, the tutorials' file transfer.
 *
 *   ftp-client [--dir DIR] [--timeout S] HOST PORT
 *
 * Connects to ftp-server and runs the commands read from standard input,
 * one a line (with an "ftp> " prompt when it is a terminal):
 *
 *   ls          the server's files: one "SIZE NAME" line each (a note on
 *               stderr when the server cut its listing)
 *   get NAME    fetch NAME (a name under the server's root, "sub/x.txt")
 *               into DIR (default: the current directory) under its last
 *               component; prints "got NAME: SIZE bytes, sha256 HEX"
 *   put PATH    send the local file PATH; the server stores it under
 *               PATH's last component; prints "put NAME: SIZE bytes,
 *               sha256 HEX"
 *   quit        end the session (the end of the input does too)
 *
 * Every file travels with its size and SHA-256 (libsodium), and the
 * receiving side checks both: a file fetched is written under a temporary
 * hidden name in DIR, synced, and renamed to its name only when they match,
 * so a partial or corrupted transfer never appears under the final name.
 * docs/ftp.md describes the protocol.
 *
 * A command that fails (a name the server refuses, a missing local file,
 * a checksum mismatch) says so in one line on stderr, "ftp-client: get
 * ../x: '..' leaves the root", and the next command runs; the exit status
 * is then 1.  What the server sends is printed with every byte a terminal
 * could take for a command escaped ("\x1b").  A lost connection or a
 * server that breaks the protocol ends the client at once (exit 1).
 * --timeout S bounds the connect and each wait for the server (default
 * 60 s).  Exit status 0 when every command succeeded; 2 for a bad command
 * line.
 *
 * Python original (the tutorial's client, abridged):
 *   client = socket.socket(); client.connect(("localhost", 9999))
 *   while True:
 *       cmd = input(">>:").strip()
 *       if cmd.startswith("get"):
 *           client.send(cmd.encode()); size = int(client.recv(1024).decode())
 *           client.send(b"ready"); f = open(cmd.split()[1] + ".new", "wb")
 *           while received < size: data = client.recv(1024); f.write(data) ...
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conc.h"
#include "conc/socket.h"
#include "cli.h"
#include "ftp.h"

static const char *prog = "ftp-client";

#define LS_MAX 100000               /* the most entries a listing may have */

static const char *host, *dir = ".";
static long port;
static double timeout = 60;
static conc_socket *sock;
static struct ftp_reader rd;
static int dirfd_out = -1;

/* The deadline of the next wait for the server. */
static int64_t deadline(void)
{
    return conc_now() + (int64_t)(timeout * 1e9);
}

/* Reads the server's next line; a lost connection ends the client. */
static char *reply(void)
{
    char *line = NULL;
    int n = ftp_read_line(&rd, &line, deadline());
    if (n == -EPIPE)
        lost_exit("the server closed the connection", 0);
    if (n == -EMSGSIZE)
        lost_exit("the server sent a line too long", 0);
    if (n == -ETIMEDOUT || n == -EAGAIN)
        lost_exit("no reply from the server in time", 0);
    if (n < 0)
        lost_exit("connection lost", n);
    return line;
}

static void send_line(const char *text)
{
    int rc = ftp_send_line(sock, text);
    if (rc < 0)
        lost_exit("connection lost", rc);
}

/* Text to print, escaped (ftp_escape: what the server sends may hold
 * bytes a terminal would take for commands) into out. */
#define SHOWN_MAX (4 * FTP_LINE_MAX + 1)
static const char *shown(const char *text, char out[SHOWN_MAX])
{
    return ftp_escape(text, strlen(text), out, SHOWN_MAX);
}

/* A reply that is not what the protocol says: "unexpected reply from the
 * server: WHAT 'TEXT'" (WHAT: the part that is wrong, or NULL for the
 * whole line). */
static __attribute__((noreturn)) void bad_reply(const char *what, const char *text)
{
    char out[SHOWN_MAX];
    fprintf(stderr, "%s: unexpected reply from the server: %s%s'%.200s'\n", prog,
            what ? what : "", what ? " " : "", shown(text, out));
    exit(1);
}

/* A command failed: "prog: what: why" on stderr (escaped); returns 1.  A
 * server's "ERR NAME: why" is said without its NAME, which the line names
 * already. */
static int failed(const char *cmd, const char *arg, const char *why)
{
    char a[SHOWN_MAX], w[SHOWN_MAX];
    shown(arg, a);
    shown(why, w);
    size_t n = strlen(a);
    const char *rest = w;
    if (strncmp(w, a, n) == 0 && strncmp(w + n, ": ", 2) == 0)
        rest += n + 2;
    fprintf(stderr, "%s: %s %s: %s\n", prog, cmd, a, rest);
    return 1;
}

/* The server's answer to a command: NULL for "ERR why" (*err points at
 * why), else the text after "OK " (or "" for a bare "OK"). */
static char *ok_or_err(char *line, char **err)
{
    *err = NULL;
    if (strcmp(line, "OK") == 0)
        return line + 2;
    if (strncmp(line, "OK ", 3) == 0)
        return line + 3;
    if (strncmp(line, "ERR ", 4) == 0) {
        *err = line + 4;
        return NULL;
    }
    bad_reply(NULL, line);
    return NULL;
}

static int do_ls(void)
{
    send_line("LS");
    char *err, *rest = ok_or_err(reply(), &err);
    if (!rest)
        return failed("ls", "", err);
    /* "N", or "N MORE" when the listing was cut */
    uint64_t n;
    char *more = strchr(rest, ' ');
    if (more) {
        if (strcmp(more, " MORE") != 0)
            bad_reply("a listing's count", rest);
        *more = '\0';
    }
    if (!ftp_parse_size(rest, LS_MAX, &n))
        bad_reply("a listing's count", rest);
    for (uint64_t i = 0; i < n; i++) {
        char *line = reply();
        char *sp = strchr(line, ' ');
        uint64_t size;
        if (!sp)
            bad_reply("a listing's line", line);
        *sp = '\0';
        if (!ftp_parse_size(line, FTP_SIZE_MAX, &size))
            bad_reply("a size", line);
        if (ftp_name_problem(sp + 1))
            bad_reply("a name", sp + 1);
        char out[SHOWN_MAX];
        printf("%llu %s\n", (unsigned long long)size, shown(sp + 1, out));
    }
    fflush(stdout);
    if (more)
        fprintf(stderr, "%s: ls: the listing was cut: the server has more files than the "
                        "%llu it sent (the first by name)\n",
                prog, (unsigned long long)n);
    return 0;
}

static int do_get(const char *name)
{
    char line[FTP_LINE_MAX];
    if (snprintf(line, sizeof line, "GET %s", name) >= (int)sizeof line - 1)
        return failed("get", name, "the name is too long");
    send_line(line);
    char *err, *rest = ok_or_err(reply(), &err);
    if (!rest)
        return failed("get", name, err);
    /* "SIZE HASH" */
    char *sp = strchr(rest, ' ');
    uint64_t size;
    unsigned char hash[crypto_hash_sha256_BYTES];
    if (!sp)
        bad_reply("an answer to GET", rest);
    *sp = '\0';
    if (!ftp_parse_size(rest, FTP_SIZE_MAX, &size))
        bad_reply("a size", rest);
    if (!ftp_parse_hash(sp + 1, hash))
        bad_reply("a SHA-256", sp + 1);
    char hex[FTP_HASH_HEX + 1];
    snprintf(hex, sizeof hex, "%s", sp + 1);
    /* The local name: the last component of what was asked for, which must
     * be a plain name (the server's word on it is not taken). */
    const char *base = ftp_base_name(name);
    const char *problem = ftp_name_problem(base);
    struct ftp_part part;
    int rc = ftp_part_open(&part, dirfd_out, false, NULL);
    if (rc < 0) {                       /* the bytes come anyway: read them */
        char sink[4096];
        for (uint64_t left = size; left > 0;) {
            ssize_t k = ftp_read_some(&rd, sink, left < sizeof sink ? left : sizeof sink,
                                      deadline());
            if (k <= 0)
                lost_exit("connection lost during the transfer", k < 0 ? (int)k : 0);
            left -= (uint64_t)k;
        }
    } else {
        rc = ftp_part_recv(&part, &rd, problem ? "" : base, size, hash,
                           (int64_t)(timeout * 1e9));
    }
    if (rc == -EBADMSG)
        return failed("get", name, "checksum mismatch: the transfer was corrupted "
                      "(nothing saved)");
    if (rc == -EPIPE || rc == -ECONNRESET || rc == -ETIMEDOUT || rc == -EAGAIN)
        lost_exit("connection lost during the transfer", rc == -EPIPE ? 0 : rc);
    if (problem)
        return failed("get", name, problem);
    if (rc < 0) {
        char why[160];
        snprintf(why, sizeof why, "cannot save it in %s: %s", dir, conc_strerror(rc));
        return failed("get", name, why);
    }
    printf("got %s: %llu bytes, sha256 %s\n", name, (unsigned long long)size, hex);
    fflush(stdout);
    return 0;
}

static int do_put(const char *path)
{
    const char *base = ftp_base_name(path);
    const char *problem = ftp_name_problem(base);
    if (problem)
        return failed("put", path, problem);
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return failed("put", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return failed("put", path, "not a regular file");
    }
    unsigned char hash[crypto_hash_sha256_BYTES];
    uint64_t size;
    int rc = ftp_hash_file(fd, hash, &size);
    if (rc < 0) {
        close(fd);
        return failed("put", path, conc_strerror(rc));
    }
    char hex[FTP_HASH_HEX + 1], line[FTP_LINE_MAX];
    ftp_hash_hex(hash, hex);
    snprintf(line, sizeof line, "PUT %s %llu %s", base, (unsigned long long)size, hex);
    send_line(line);
    char *err, *rest = ok_or_err(reply(), &err);
    if (!rest) {
        close(fd);
        return failed("put", path, err);
    }
    size_t sent = 0;
    rc = size ? conc_socket_sendfile(sock, fd, 0, (size_t)size, &sent) : 0;
    close(fd);
    if (rc < 0)
        lost_exit("connection lost during the transfer", rc);
    if (sent != size)
        lost_exit("the file shrank while it was sent", 0);
    rest = ok_or_err(reply(), &err);
    if (!rest)
        return failed("put", path, err);
    printf("put %s: %llu bytes, sha256 %s\n", base, (unsigned long long)size, hex);
    fflush(stdout);
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: %s [--dir DIR] [--timeout S] HOST PORT\n"
               "  commands on stdin: ls, get NAME, put PATH, quit\n"
               "  --dir DIR     where get saves files (default: .)\n"
               "  --timeout S   bound on the connect and each wait (default 60)\n",
            prog);
}

int main(int argc, char **argv)
{
    const struct opt opts[] = {
        { "dir", OPT_TEXT, &dir, 0, 0, NULL },
        { "timeout", OPT_SECONDS, &timeout, 1, 86400, NULL },
    };
    const char *pos[2];
    size_t npos;
    static const char *const names[] = { "HOST", "PORT" };
    struct positionals p = { pos, 2, 2, names, &npos };
    int rc = parse_args(argc, argv, opts, OPTS_COUNT(opts), usage, &p);
    if (rc >= 0)
        return rc;
    host = pos[0];
    if ((rc = client_host_port(host, pos[1], &port)) != 0)
        return rc;
    if (sodium_init() < 0)
        return fail("%s", "libsodium cannot start");
    dirfd_out = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirfd_out < 0) {
        fprintf(stderr, "%s: --dir '%s': %s\n", prog, dir, strerror(errno));
        return 2;
    }

    char what[160];
    snprintf(what, sizeof what, "cannot connect to %s:%ld", host, port);
    rc = conc_socket_create_connection(&sock, host, (int)port, timeout, NULL);
    if (rc < 0)
        lost_exit(what, rc);
    conc_socket_set_timeout(sock, timeout);
    rd.sock = sock;
    char *err, *greeting = ok_or_err(reply(), &err), out[SHOWN_MAX];
    if (!greeting)
        lost_exit(shown(err, out), 0);

    int status = 0;
    char *in = NULL;
    size_t cap = 0;
    ssize_t len;
    bool quit = false, prompt = isatty(STDIN_FILENO);
    while (!quit) {
        if (prompt) {                   /* someone types the commands */
            fputs("ftp> ", stdout);
            fflush(stdout);
        }
        if ((len = getline(&in, &cap, stdin)) < 0)
            break;
        while (len > 0 && (in[len - 1] == '\n' || in[len - 1] == '\r' || in[len - 1] == ' '))
            in[--len] = '\0';
        char *cmd = in;
        while (*cmd == ' ')
            cmd++;
        char *arg = strchr(cmd, ' ');
        if (arg) {
            *arg++ = '\0';
            while (*arg == ' ')
                arg++;
        }
        if (!*cmd)
            continue;
        if (strcmp(cmd, "ls") == 0 && !arg)
            status |= do_ls();
        else if (strcmp(cmd, "get") == 0 && arg && *arg)
            status |= do_get(arg);
        else if (strcmp(cmd, "put") == 0 && arg && *arg)
            status |= do_put(arg);
        else if (strcmp(cmd, "quit") == 0 && !arg)
            quit = true;
        else
            status |= failed("unknown command", cmd, "try ls, get NAME, put PATH or quit");
    }
    free(in);
    send_line("QUIT");
    ok_or_err(reply(), &err);
    conc_socket_free(sock);
    close(dirfd_out);
    return status;
}
