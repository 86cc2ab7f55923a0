/*
 * queue-server - a manager that serves one queue to other machines
 * (multiprocessing.managers.BaseManager with a registered get_queue).
 *
 * It starts a manager listening on ADDR (HOST:PORT for TCP, a Unix socket
 * path otherwise), where every client must prove it holds the key in the
 * authkey file (an HMAC challenge both ways; the key itself never crosses
 * the network), prints
 *
 *   serving on ADDR
 *
 * (with the port the kernel chose when PORT is 0) and serves until SIGINT
 * or SIGTERM, then shuts the manager down (a Unix socket is removed) and
 * exits 0.  queue-client puts messages into the queue and gets them out.
 *
 *   queue-server --address ADDR --authkey-file F
 *
 * Python original:
 *   queue = Queue()
 *   class QueueManager(BaseManager): pass
 *   QueueManager.register("get_queue", callable=lambda: queue)
 *   m = QueueManager(address=("", 50000), authkey=b"abracadabra")
 *   m.get_server().serve_forever()
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>

#include "conc.h"
#include "conc/manager.h"
#include "cli.h"
#include "queue-authkey.h"

static const char *prog = "queue-server";

static void usage(FILE *f)
{
    fprintf(f, "usage: %s --address ADDR --authkey-file F\n"
               "  --address ADDR      HOST:PORT (TCP; PORT 0 picks one) or a Unix socket path\n"
               "  --authkey-file F    the shared key clients must hold (1 to %d bytes)\n",
            prog, AUTHKEY_MAX);
}

int main(int argc, char **argv)
{
    const char *address = NULL, *keyfile = NULL;
    const struct opt opts[] = {
        { "address", OPT_TEXT, &address, 0, 0, NULL },
        { "authkey-file", OPT_TEXT, &keyfile, 0, 0, NULL },
    };
    int rc = parse_options(argc, argv, opts, OPTS_COUNT(opts), usage);
    if (rc >= 0)
        return rc;
    static unsigned char key[AUTHKEY_MAX + 1];
    size_t keylen = 0;
    if ((rc = queue_address_key(address, keyfile, key, &keylen)) != 0)
        return rc;

    int sfd = stop_signals_fd();            /* SIGINT, SIGTERM end the serving */
    if (sfd < 0)
        return die("signals", sfd);
    conc_manager *m;
    if ((rc = queue_manager_new(&m, address, key, keylen)) != 0)
        return rc;
    if ((rc = conc_manager_start(m)) < 0) {
        fprintf(stderr, "%s: listen on %s: %s\n", prog, address, conc_strerror(rc));
        conc_manager_free(m);
        return 1;
    }
    /* The queue exists from the start, so a client's get waits in it. */
    conc_proxy *q;
    if ((rc = queue_proxy(m, &q)) != 0)
        return rc;
    char where[CONC_MANAGER_ADDR_MAX + 1];
    conc_manager_address(m, where, sizeof where);
    printf("serving on %s\n", where);
    fflush(stdout);

    int sig = 0;
    while (!sig) {
        rc = conc_fd_wait(sfd, POLLIN, CONC_FOREVER);
        if (rc < 0 && rc != -EINTR)
            break;
        sig = stop_signal_take(sfd);
    }
    conc_proxy_free(q);
    conc_manager_free(m);                   /* shuts the server down */
    return rc < 0 && !sig ? die("wait", rc) : 0;
}
