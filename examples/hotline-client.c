/*
 * hotline-client - the caller of hotline-server, the tutorials' 10086
 * phone menu.
 *
 *   hotline-client [--timeout S] HOST PORT
 *
 * Calls the hotline, shows each message of the server as it comes
 * ("receive: ...") and asks for the next input ("please input: "), one
 * line of standard input at a time, until it sends "exit" (the server's
 * goodbye is shown, then the call ends) or the input ends (then it sends
 * "exit" itself).  When standard input is not a terminal, each line read is
 * echoed after the prompt, so that a transcript reads like the call:
 *
 *   $ printf '0\nbalance\n' | hotline-client 127.0.0.1 8008
 *   receive: Welcome to the 10086 hotline. Enter 0 for an operator, or exit to hang up.
 *   please input: 0
 *   receive: Calls may be recorded. Please hold for the next free operator.
 *   please input: balance
 *   receive: Sorry, I did not understand that. Please try again.
 *   please input: exit
 *   receive: Thank you for calling 10086. Goodbye.
 *
 * A connection refused or lost, a server that hangs up first or sends a
 * line longer than 1024 bytes, or no message within the timeout (--timeout
 * S, default 60) give one line on stderr and exit status 1.  Exit status 0
 * after the goodbye; 2 for a bad command line.
 *
 * Python original:
 *   sk = socket.socket(); sk.connect(("127.0.0.1", 8008)); sk.settimeout(5)
 *   while True:
 *       print("receive:", sk.recv(1024).decode())
 *       inp = input("please input:")
 *       sk.sendall(inp.encode())
 *       if inp == "exit": break
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conc.h"
#include "conc/socket.h"
#include "cli.h"

static const char *prog = "hotline-client";

#define MSG_MAX 1024

static conc_socket *sock;
static char buf[MSG_MAX + 1];
static size_t have;

/* The server's next message (one line) into msg (NUL-terminated, without
 * its newline).  Returns false when the server closed the connection
 * before a message began. */
static bool next_message(char *msg)
{
    for (;;) {
        char *nl = memchr(buf, '\n', have);
        if (nl) {
            size_t len = (size_t)(nl - buf);
            memcpy(msg, buf, len);
            msg[len] = '\0';
            if (len > 0 && msg[len - 1] == '\r')
                msg[len - 1] = '\0';
            have -= len + 1;
            memmove(buf, nl + 1, have);
            return true;
        }
        if (have == MSG_MAX)
            lost_exit("the server sent a line longer than 1024 bytes", 0);
        ssize_t n = conc_socket_recv(sock, buf + have, MSG_MAX - have, 0);
        if (n == 0 && have == 0)
            return false;
        if (n == 0)
            lost_exit("the server hung up in the middle of a message", 0);
        if (n == -ETIMEDOUT || n == -EAGAIN)
            lost_exit("no message from the server in time", 0);
        if (n < 0)
            lost_exit("connection lost", (int)n);
        have += (size_t)n;
    }
}

static void usage(FILE *f)
{
    fprintf(f, "usage: %s [--timeout S] HOST PORT\n"
               "Calls hotline-server: shows its messages, sends each line of input.\n"
               "  --timeout S   bound on the connect and each wait (default 60)\n",
            prog);
}

int main(int argc, char **argv)
{
    double timeout = 60;
    const struct opt opts[] = { { "timeout", OPT_SECONDS, &timeout, 1, 86400, NULL } };
    const char *pos[2];
    size_t npos;
    static const char *const names[] = { "HOST", "PORT" };
    struct positionals p = { pos, 2, 2, names, &npos };
    int rc = parse_args(argc, argv, opts, OPTS_COUNT(opts), usage, &p);
    if (rc >= 0)
        return rc;
    const char *host = pos[0];
    long port = 0;
    if ((rc = client_host_port(host, pos[1], &port)) != 0)
        return rc;

    char what[160];
    snprintf(what, sizeof what, "cannot connect to %s:%ld", host, port);
    rc = conc_socket_create_connection(&sock, host, (int)port, timeout, NULL);
    if (rc < 0)
        lost_exit(what, rc);
    conc_socket_set_timeout(sock, timeout);
    bool echo = !isatty(STDIN_FILENO), hung_up = false;
    char msg[MSG_MAX + 1], *in = NULL;
    size_t cap = 0;
    for (;;) {
        if (!next_message(msg)) {
            if (hung_up)
                break;
            lost_exit("the server ended the call", 0);
        }
        printf("receive: %s\n", msg);
        fflush(stdout);
        if (hung_up)
            break;                  /* the goodbye came */
        printf("please input: ");
        fflush(stdout);
        ssize_t len = getline(&in, &cap, stdin);
        if (len < 0) {              /* the end of the input hangs up */
            free(in);
            in = strdup("exit");
            cap = 5;
            if (!in)
                lost_exit("out of memory", 0);
            len = 4;
            echo = true;
        }
        while (len > 0 && (in[len - 1] == '\n' || in[len - 1] == '\r'))
            in[--len] = '\0';
        if (echo)
            printf("%s\n", in);
        fflush(stdout);
        hung_up = strcmp(in, "exit") == 0;
        in[len] = '\n';
        rc = conc_socket_sendall(sock, in, (size_t)len + 1, 0, NULL);
        if (rc < 0)
            lost_exit("connection lost", rc);
    }
    free(in);
    conc_socket_free(sock);
    return 0;
}
