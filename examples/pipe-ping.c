/*
 * pipe-ping - multiprocessing.Pipe between a parent and its child.
 *
 * The parent makes a duplex Pipe and starts a child (conc_process, fork
 * method) that echoes every message back.  The parent sends --messages N
 * messages of --size B bytes (default 64), each filled with a pattern that
 * depends on its number, and checks every byte of every echo; the child
 * checks them on its way too.  Then it prints
 *
 *   ok N
 *
 *   pipe-ping --messages N [--size B]
 *
 * Python original:
 *   a, b = Pipe(); p = Process(target=echo, args=(b,)); p.start()
 *   for i in range(n): a.send_bytes(msg(i)); assert a.recv_bytes() == msg(i)
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conc.h"
#include "cli.h"

static const char *prog = "pipe-ping";

/* What one run can really do: about 30,000 round trips a second on a
 * small machine make a million messages half a minute; the bytes of all
 * the messages together are capped as well (each crosses the pipe twice). */
#define MAX_MESSAGES 1000000L
#define MAX_TOTAL (4L << 30)
#define MAX_SIZE (64L << 20)

static conc_conn *parent_end, *child_end;
static long messages;
static long size = 64;

static unsigned char pat(long msg, long i)
{
    return (unsigned char)(msg * 7 + i * 131 + (i >> 8));
}

static void fill(unsigned char *p, long msg)
{
    for (long i = 0; i < size; i++)
        p[i] = pat(msg, i);
}

static int pattern_ok(const unsigned char *p, long msg)
{
    for (long i = 0; i < size; i++)
        if (p[i] != pat(msg, i))
            return 0;
    return 1;
}

/* The child: receive, check, send back.  The connections are inherited
 * through fork. */
static int echo(const void *arg, size_t len)
{
    (void)arg;
    (void)len;
    conc_conn_close(parent_end);
    unsigned char *buf = malloc(size ? (size_t)size : 1);
    if (!buf)
        return 1;
    for (long m = 0; m < messages; m++) {
        ssize_t n = conc_conn_recv_bytes(child_end, buf, (size_t)size, CONC_FOREVER);
        if (n != size || !pattern_ok(buf, m)) {
            fprintf(stderr, "%s: child: message %ld: %s\n", prog, m,
                    n < 0 ? conc_strerror((int)n) : "wrong bytes");
            free(buf);
            return 1;
        }
        int rc = conc_conn_send_bytes(child_end, buf, (size_t)n, CONC_FOREVER);
        if (rc < 0) {
            fprintf(stderr, "%s: child: send: %s\n", prog, conc_strerror(rc));
            free(buf);
            return 1;
        }
    }
    free(buf);
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: %s --messages N [--size B]\n"
               "  --messages N   messages to bounce, 1 to %ld\n"
               "  --size B       bytes per message, 0 to %ld (default 64)\n"
               "  (N times B at most %ld bytes)\n",
            prog, MAX_MESSAGES, MAX_SIZE, MAX_TOTAL);
}

int main(int argc, char **argv)
{
    const struct opt opts[] = {
        { "messages", OPT_INT, &messages, 1, MAX_MESSAGES, NULL },
        { "size", OPT_INT, &size, 0, MAX_SIZE, NULL },
    };
    int rc = parse_options(argc, argv, opts, OPTS_COUNT(opts), usage);
    if (rc >= 0)
        return rc;
    if (messages == 0)
        return fail("%s", "--messages is required (try --help)");
    if (messages * size > MAX_TOTAL) {
        fprintf(stderr, "%s: --messages times --size is at most %ld bytes (%ld MiB), not %ld\n",
                prog, MAX_TOTAL, MAX_TOTAL >> 20, messages * size);
        return 2;
    }

    /* Interrupted, the program stops its child before it ends. */
    if ((rc = conc_process_cleanup_on_signals(1.0)) < 0)
        return die("cleanup on signals", rc);
    rc = conc_conn_pipe(&parent_end, &child_end, true);
    if (rc < 0)
        return die("Pipe", rc);
    conc_process *p;
    rc = conc_process_new(&p, echo, NULL, 0,
                          &(conc_process_opts){ .method = CONC_START_FORK });
    if (rc == 0)
        rc = conc_process_start(p);
    if (rc < 0)
        return die("start the child", rc);
    conc_conn_close(child_end);     /* the child's end lives in the child */

    unsigned char *out = malloc(size ? (size_t)size : 1);
    unsigned char *in = malloc(size ? (size_t)size : 1);
    if (!out || !in)
        return die("malloc", -ENOMEM);
    int status = 0;
    for (long m = 0; m < messages && status == 0; m++) {
        fill(out, m);
        rc = conc_conn_send_bytes(parent_end, out, (size_t)size, CONC_FOREVER);
        if (rc < 0) {
            status = die("send", rc);
            break;
        }
        memset(in, 0, (size_t)size);
        ssize_t n = conc_conn_recv_bytes(parent_end, in, (size_t)size, CONC_FOREVER);
        if (n < 0) {
            status = die("recv", (int)n);
        } else if (n != size || !pattern_ok(in, m)) {
            fprintf(stderr, "%s: message %ld came back wrong\n", prog, m);
            status = 1;
        }
    }
    conc_conn_close(parent_end);    /* a child still waiting gets -EPIPE */
    rc = conc_process_join(p, CONC_FOREVER);
    int code = 1;
    if (rc == 0)
        conc_process_exitcode(p, &code);
    if (code < 0) {
        say_killed("the child", -1, code);
        status = 1;
    } else if (status == 0 && code != 0) {
        fprintf(stderr, "%s: the child failed (exit code %d)\n", prog, code);
        status = 1;
    }
    if (status == 0)
        printf("ok %ld\n", messages);
    conc_process_free(p);
    conc_conn_free(parent_end);
    conc_conn_free(child_end);
    free(out);
    free(in);
    return status;
}
