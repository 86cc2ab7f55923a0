/*
 * queue-client - puts a message into, or gets one from, the queue that
 * queue-server serves (BaseManager.connect and the queue's proxy).
 *
 *   queue-client --address ADDR --authkey-file F put MESSAGE
 *       queues MESSAGE and exits 0 once it is in the queue;
 *   queue-client --address ADDR --authkey-file F [--timeout S] get
 *       waits for the oldest message (at most S seconds with --timeout;
 *       exit 1 with "queue-client: get: no message within S s"), prints it
 *       on stdout and exits 0.
 *
 * A wrong authkey ("queue-client: ADDR: authentication failed (wrong
 * authkey?)"), nothing listening at ADDR, or a server that goes away gives
 * one line on stderr and exit status 1; a bad command line exit status 2.
 *
 * Python original:
 *   QueueManager.register("get_queue")
 *   m = QueueManager(address=("host", 50000), authkey=b"abracadabra")
 *   m.connect(); q = m.get_queue(); q.put("hello")   # or print(q.get())
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conc.h"
#include "conc/manager.h"
#include "cli.h"
#include "queue-authkey.h"

static const char *prog = "queue-client";

static void usage(FILE *f)
{
    fprintf(f, "usage: %s --address ADDR --authkey-file F [--timeout S] put MESSAGE | get\n"
               "  --address ADDR      the server's HOST:PORT or Unix socket path\n"
               "  --authkey-file F    the key the server was given\n"
               "  --timeout S         get waits at most S seconds (default: no limit)\n",
            prog);
}

int main(int argc, char **argv)
{
    const char *address = NULL, *keyfile = NULL;
    double timeout = CONC_FOREVER;
    const struct opt opts[] = {
        { "address", OPT_TEXT, &address, 0, 0, NULL },
        { "authkey-file", OPT_TEXT, &keyfile, 0, 0, NULL },
        { "timeout", OPT_SECONDS, &timeout, 0, 86400, NULL },
    };
    const char *args[2] = { NULL, NULL };
    size_t nargs = 0;
    static const char *const names[] = { "put MESSAGE | get", "MESSAGE" };
    const struct positionals pos = { args, 1, 2, names, &nargs };
    int rc = parse_args(argc, argv, opts, OPTS_COUNT(opts), usage, &pos);
    if (rc >= 0)
        return rc;
    bool put = strcmp(args[0], "put") == 0;
    if (!put && strcmp(args[0], "get") != 0)
        return fail("unknown command '%s' (put MESSAGE or get)", args[0]);
    if (put && nargs != 2)
        return fail("%s", "put needs a MESSAGE");
    if (!put && nargs != 1)
        return fail("unexpected argument '%s' after get", args[1]);
    static unsigned char key[AUTHKEY_MAX + 1];
    size_t keylen = 0;
    if ((rc = queue_address_key(address, keyfile, key, &keylen)) != 0)
        return rc;

    conc_manager *m;
    if ((rc = queue_manager_new(&m, address, key, keylen)) != 0)
        return rc;
    if ((rc = conc_manager_connect(m)) < 0) {
        if (rc == -EACCES)
            fprintf(stderr, "%s: %s: authentication failed (wrong authkey?)\n", prog, address);
        else
            fprintf(stderr, "%s: %s: %s\n", prog, address, conc_strerror(rc));
        conc_manager_free(m);
        return 1;
    }
    conc_proxy *q;
    if ((rc = queue_proxy(m, &q)) != 0)
        return rc;
    int status = 0;
    if (put) {
        rc = conc_proxy_queue_put(q, args[1], strlen(args[1]), CONC_FOREVER);
        if (rc < 0)
            status = die("put", rc);
    } else {
        void *msg;
        size_t len;
        rc = conc_proxy_queue_get(q, &msg, &len, timeout);
        if (rc == -ETIMEDOUT || rc == -EAGAIN) {
            fprintf(stderr, "%s: get: no message within %g s\n", prog, timeout);
            status = 1;
        } else if (rc < 0) {
            status = die("get", rc);
        } else {
            fwrite(msg, 1, len, stdout);
            putchar('\n');
            free(msg);
        }
    }
    conc_proxy_free(q);
    conc_manager_free(m);
    return status;
}
