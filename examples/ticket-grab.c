/*
 * ticket-grab - multiprocessing.Lock guards a ticket database shared by
 * several processes.
 *
 * The database is a JSON file {"count": K}: K tickets are left.  --buyers N
 * processes (conc_process, fork method) each read the count, think for
 * 0.1 s (the network delay of the tutorial) and, when a ticket is left,
 * buy it: write count - 1 back.  Each prints "buyer I: got a ticket" or
 * "buyer I: sold out" (I = 1..N), and the program ends with a summary line:
 *
 *   sold S of K tickets; the database says count=X
 *
 * With the Lock (a process-shared conc_lock in an anonymous shared memory
 * segment), reading, deciding and writing are one step: exactly min(K, N)
 * buyers get a ticket and the file ends with max(0, K - N).  With --no-lock
 * the buyers read the same count at once and several "buy" the same ticket:
 * S exceeds what the file lost ("oversold by ...").
 *
 *   ticket-grab --db FILE --buyers N [--no-lock]
 *
 * The file is replaced atomically (written to FILE.tmp.PID, then renamed),
 * so a reader never sees half a file.  A buyer killed while holding the
 * Lock does not hang the others: the next one gets -EOWNERDEAD, and since
 * the file is always whole it just marks the lock consistent and goes on.
 * Bad input (missing or unreadable file, anything but {"count": <int>},
 * N < 1): one line on stderr, exit 2.
 *
 * Python original: search() prints json.load(open('db.txt'))['count'];
 * get() sleeps, decrements and json.dump()s it; task(lock) calls search(),
 * then get() between lock.acquire() and lock.release(), in one Process per
 * client.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conc.h"
#include "conc/process.h"
#include "cli.h"

static const char *prog = "ticket-grab";

#define MAX_BUYERS  1000
#define MAX_TICKETS 1000000000L
#define DB_MAX      4096            /* the largest database file read */

/* What the buyers share: the Lock and a tally of tickets handed out. */
struct shared {
    conc_lock lock;
    uint32_t sold;
};

static struct shared *shared;
static const char *db_path;
static bool use_lock = true;

/* ------------------------------------------------------------ database */

static bool is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static const char *skip_ws(const char *p)
{
    while (is_ws(*p))
        p++;
    return p;
}

/* Parses exactly {"count": <int>} (JSON whitespace anywhere between the
 * tokens; the integer without sign or leading zeros, at most MAX_TICKETS). */
static bool parse_db(const char *text, long *count)
{
    const char *p = skip_ws(text);
    if (*p++ != '{')
        return false;
    p = skip_ws(p);
    if (strncmp(p, "\"count\"", 7) != 0)
        return false;
    p = skip_ws(p + 7);
    if (*p++ != ':')
        return false;
    p = skip_ws(p);
    if (*p < '0' || *p > '9' || (p[0] == '0' && p[1] >= '0' && p[1] <= '9'))
        return false;
    long v = 0;
    for (; *p >= '0' && *p <= '9'; p++) {
        v = v * 10 + (*p - '0');
        if (v > MAX_TICKETS)
            return false;
    }
    p = skip_ws(p);
    if (*p++ != '}')
        return false;
    if (*skip_ws(p) != '\0')
        return false;
    *count = v;
    return true;
}

/* Reads the count.  Returns 0, -errno when the file cannot be read, or
 * -EINVAL when it is not a ticket database. */
static int read_db(long *count)
{
    int fd = open(db_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    char text[DB_MAX + 1];
    size_t len = 0;
    for (;;) {
        ssize_t n = read(fd, text + len, sizeof text - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            close(fd);
            return -e;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len == sizeof text - 1) {
            close(fd);
            return -EINVAL;                 /* far too big for {"count": K} */
        }
    }
    close(fd);
    text[len] = '\0';
    if (strlen(text) != len || !parse_db(text, count))
        return -EINVAL;
    return 0;
}

/* Replaces the file with {"count": count}: a temporary file renamed over
 * it, so readers see the old or the new contents, never a torn one. */
static int write_db(long count)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", db_path, (long)getpid()) >= (int)sizeof tmp)
        return -ENAMETOOLONG;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    char text[64];
    int len = snprintf(text, sizeof text, "{\"count\": %ld}\n", count);
    ssize_t n = write(fd, text, (size_t)len);
    int e = n == len ? 0 : n < 0 ? errno : EIO;
    if (close(fd) != 0 && !e)
        e = errno;
    if (!e && rename(tmp, db_path) != 0)
        e = errno;
    if (e)
        unlink(tmp);
    return -e;
}

/* --------------------------------------------------------------- buyers */

/* One line on stdout with a single write: lines of different processes
 * never mix, and nothing waits in a stdio buffer when the child ends. */
static void say(const char *fmt, ...)
{
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (len > 0 && write(STDOUT_FILENO, line, (size_t)len) < 0)
        return;
}

static int buy(int id)
{
    long count;
    int rc = read_db(&count);
    if (rc < 0) {
        fprintf(stderr, "%s: buyer %d: %s: %s\n", prog, id, db_path,
                rc == -EINVAL ? "not a ticket database any more" : conc_strerror(rc));
        return 1;
    }
    conc_sleep(0.1);                        /* the network delay */
    if (count <= 0) {
        say("buyer %d: sold out\n", id);
        return 0;
    }
    if ((rc = write_db(count - 1)) < 0) {
        fprintf(stderr, "%s: buyer %d: cannot write %s: %s\n", prog, id, db_path,
                conc_strerror(rc));
        return 1;
    }
    __atomic_fetch_add(&shared->sold, 1, __ATOMIC_RELAXED);
    say("buyer %d: got a ticket\n", id);
    return 0;
}

/* The body of each buyer process: arg holds its number. */
static int buyer(const void *arg, size_t len)
{
    int id;
    if (len != sizeof id)
        return 1;
    memcpy(&id, arg, sizeof id);
    if (!use_lock)
        return buy(id);
    int rc = conc_lock_acquire(&shared->lock, CONC_FOREVER);
    if (rc == -EOWNERDEAD) {
        /* A buyer died holding the lock.  The file is always whole (it is
         * replaced by rename), so there is nothing to repair. */
        conc_lock_consistent(&shared->lock);
    } else if (rc < 0) {
        fprintf(stderr, "%s: buyer %d: lock: %s\n", prog, id, conc_strerror(rc));
        return 1;
    }
    int code = buy(id);
    conc_lock_release(&shared->lock);
    return code;
}

/* ------------------------------------------------------------------ main */

static void usage(FILE *f)
{
    fprintf(f, "usage: %s --db FILE --buyers N [--no-lock]\n"
               "  --db FILE    the ticket database, a JSON file {\"count\": K}\n"
               "  --buyers N   buyer processes, 1 to %d\n"
               "  --no-lock    buy without the Lock (shows overselling)\n", prog, MAX_BUYERS);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "db", required_argument, NULL, 'd' },
        { "buyers", required_argument, NULL, 'n' },
        { "no-lock", no_argument, NULL, 'L' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    long nbuyers = 0;
    int opt;

    while ((opt = next_option(argc, argv, ":d:n:h", opts)) != -1) {
        switch (opt) {
        case 'd':
            db_path = optarg;
            break;
        case 'n':
            if (!parse_long(optarg, 1, MAX_BUYERS, &nbuyers))
                return fail("--buyers wants a number from 1 to 1000, not '%s'", optarg);
            break;
        case 'L':
            use_lock = false;
            break;
        default:
            return help_or_bad_option(opt, argv, usage);
        }
    }
    if (optind < argc)
        return fail("unexpected argument '%s' (try --help)", argv[optind]);
    if (!db_path)
        return fail("%s", "--db FILE is required (try --help)");
    if (nbuyers == 0)
        return fail("%s", "--buyers N is required (try --help)");

    long stock;
    int rc = read_db(&stock);
    if (rc == -EINVAL)
        return fail("%s: not a ticket database (want {\"count\": N})", db_path);
    if (rc < 0) {
        fprintf(stderr, "%s: cannot read %s: %s\n", prog, db_path, conc_strerror(rc));
        return 2;
    }

    /* multiprocessing.Lock(): a shared Lock in anonymous shared memory,
     * inherited by the forked buyers. */
    conc_shm *seg;
    if ((rc = conc_shm_open(&seg, NULL, sizeof *shared, CONC_SHM_CREATE | CONC_SHM_ANON)) < 0)
        return die("shared memory", rc);
    shared = conc_shm_buf(seg);
    conc_lock_init(&shared->lock, CONC_SYNC_SHARED);

    conc_process **buyers = calloc((size_t)nbuyers, sizeof *buyers);
    if (!buyers)
        return die("calloc", -ENOMEM);
    fflush(stdout);
    int failed = 0;
    long started = 0;
    for (long i = 0; i < nbuyers; i++) {
        int id = (int)i + 1;
        if (start_process(&buyers[i], buyer, &id, sizeof id, "buyer", id) < 0) {
            failed = 1;
            break;
        }
        started++;
    }
    for (long i = 0; i < started; i++) {
        if (join_process(buyers[i], "buyer", i + 1) != 0)
            failed = 1;
    }
    free(buyers);

    long left;
    if ((rc = read_db(&left)) < 0) {
        fprintf(stderr, "%s: cannot read %s at the end: %s\n", prog, db_path,
                rc == -EINVAL ? "not a ticket database any more" : conc_strerror(rc));
        conc_shm_close(seg);
        return 1;
    }
    long sold = (long)__atomic_load_n(&shared->sold, __ATOMIC_RELAXED);
    long lost = stock - left;               /* what the file really lost */
    if (sold > lost)
        printf("sold %ld of %ld tickets; the database says count=%ld (oversold by %ld)\n",
               sold, stock, left, sold - lost);
    else
        printf("sold %ld of %ld tickets; the database says count=%ld\n", sold, stock, left);
    conc_shm_close(seg);
    return failed;
}
