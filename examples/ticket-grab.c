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
 * The file is replaced atomically (written to FILE.tmp.PID beside it, then
 * renamed), so a reader never sees half a file; a symlinked --db updates
 * its target, the file keeps its mode and owner, and a buyer killed
 * between the write and the rename leaves no temporary file (the main
 * process removes it; a run also removes those that processes that no
 * longer exist left).  A buyer that fails is named on stderr with how it
 * ended ("buyer 3 killed by SIGKILL (exit code -9)"), exit status 1; the
 * summary counts what the file lost, so a ticket taken by a buyer killed
 * before it could say so is still counted (and said to be).  A buyer killed while holding the
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
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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

/* The temporary file of process pid: "DB.tmp.PID" beside the database
 * (db_path is the real path: a symlinked --db updates its target). */
static int tmp_name(char *buf, size_t cap, pid_t pid)
{
    if (snprintf(buf, cap, "%s.tmp.%ld", db_path, (long)pid) >= (int)cap)
        return -ENAMETOOLONG;
    return 0;
}

/* What write_db could not do, for the message. */
enum write_step { W_NONE, W_CREATE, W_WRITE, W_RENAME };

/*
 * Replaces the file with {"count": count}: a temporary file beside it,
 * given the file's mode and owner, then renamed over it, so readers see
 * the old or the new contents, never a torn one, and the file stays what
 * it was (a symlink's target, its permissions).  The signals that would
 * interrupt the program are blocked from creating the temporary file to
 * the rename, so that only SIGKILL can leave one behind (the main process
 * removes that one).  Returns 0, or -errno with *step saying which step
 * failed.
 */
static int write_db(long count, enum write_step *step)
{
    char tmp[4096];
    int e = tmp_name(tmp, sizeof tmp, getpid());
    *step = W_CREATE;
    if (e < 0)
        return e;
    struct stat st;
    if (stat(db_path, &st) != 0)
        return -errno;
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        e = errno;
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        return -e;
    }
    *step = W_WRITE;
    char text[64];
    int len = snprintf(text, sizeof text, "{\"count\": %ld}\n", count);
    ssize_t n = write(fd, text, (size_t)len);
    e = n == len ? 0 : n < 0 ? errno : EIO;
    /* The owner first (a chown clears set-id bits), then the mode.  Only
     * root may give a file away: another user keeps the file as theirs. */
    if (!e && (st.st_uid != geteuid() || st.st_gid != getegid()) &&
        fchown(fd, st.st_uid, st.st_gid) != 0 && errno != EPERM)
        e = errno;
    if (!e && fchmod(fd, st.st_mode & 07777) != 0)
        e = errno;
    if (close(fd) != 0 && !e)
        e = errno;
    if (!e) {
        *step = W_RENAME;
        if (rename(tmp, db_path) != 0)
            e = errno;
    }
    if (e)
        unlink(tmp);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return -e;
}

/* Removes the temporary files "DB.tmp.PID" of processes that no longer
 * exist: what a run whose main process was killed by SIGKILL (which no
 * handler sees) may have left.  A live process's file is left alone. */
static void remove_stale_tmp(void)
{
    const char *slash = strrchr(db_path, '/');
    const char *base = slash ? slash + 1 : db_path;
    char dir[4096];
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - db_path) + 1 : 1,
             slash ? db_path : ".");
    DIR *d = opendir(dir);
    if (!d)
        return;
    size_t blen = strlen(base);
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (strncmp(e->d_name, base, blen) != 0 || strncmp(e->d_name + blen, ".tmp.", 5) != 0)
            continue;
        long pid;
        if (!parse_long(e->d_name + blen + 5, 1, INT_MAX, &pid))
            continue;
        if (kill((pid_t)pid, 0) != 0 && errno == ESRCH)
            unlinkat(dirfd(d), e->d_name, 0);
    }
    closedir(d);
}

/* The directory of db_path, for messages. */
static void db_dir(char *buf, size_t cap)
{
    const char *slash = strrchr(db_path, '/');
    if (!slash)
        snprintf(buf, cap, ".");
    else if (slash == db_path)
        snprintf(buf, cap, "/");
    else
        snprintf(buf, cap, "%.*s", (int)(slash - db_path), db_path);
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
    enum write_step step;
    if ((rc = write_db(count - 1, &step)) < 0) {
        char dir[4096];
        db_dir(dir, sizeof dir);
        if (step == W_CREATE)
            fprintf(stderr, "%s: buyer %d: cannot create a temporary file in %s: %s\n", prog,
                    id, dir, conc_strerror(rc));
        else if (step == W_WRITE)
            fprintf(stderr, "%s: buyer %d: cannot write a temporary file in %s: %s\n", prog, id,
                    dir, conc_strerror(rc));
        else
            fprintf(stderr, "%s: buyer %d: cannot replace %s: %s\n", prog, id, db_path,
                    conc_strerror(rc));
        return 1;
    }
    __atomic_fetch_add(&shared->sold, 1, __ATOMIC_RELAXED);    /* counted as said */
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
    long nbuyers = 0;
    bool no_lock = false;
    const struct opt opts[] = {
        { "db", OPT_TEXT, &db_path, 0, 0, NULL },
        { "buyers", OPT_INT, &nbuyers, 1, MAX_BUYERS, NULL },
        { "no-lock", OPT_FLAG, &no_lock, 0, 0, NULL },
    };
    int rc = parse_options(argc, argv, opts, OPTS_COUNT(opts), usage);
    if (rc >= 0)
        return rc;
    use_lock = !no_lock;
    if (!db_path)
        return fail("%s", "--db FILE is required (try --help)");
    if (nbuyers == 0)
        return fail("%s", "--buyers N is required (try --help)");

    long stock;
    rc = read_db(&stock);
    if (rc == -EINVAL)
        return fail("%s: not a ticket database (want {\"count\": N})", db_path);
    if (rc < 0) {
        fprintf(stderr, "%s: cannot read %s: %s\n", prog, db_path, conc_strerror(rc));
        return 2;
    }
    /* From here on the file itself: a symlink's target is what gets
     * replaced (the link stays a link). */
    char *real = realpath(db_path, NULL);
    if (!real) {
        fprintf(stderr, "%s: cannot read %s: %s\n", prog, db_path, conc_strerror(-errno));
        return 2;
    }
    db_path = real;
    remove_stale_tmp();

    /* Interrupted (SIGINT, SIGTERM, SIGHUP), the program stops its buyers
     * before it ends; a buyer finishes a rename it has begun first. */
    if ((rc = conc_process_cleanup_on_signals(1.0)) < 0)
        return die("cleanup on signals", rc);

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
        pid_t pid = conc_process_pid(buyers[i]);
        int code = join_process(buyers[i], "buyer", i + 1);     /* names a signal */
        if (code != 0)
            failed = 1;
        if (code < 0) {
            /* Killed (SIGKILL) between writing its temporary file and the
             * rename, it left that file: nobody else will use it. */
            char tmp[4096];
            if (tmp_name(tmp, sizeof tmp, pid) == 0)
                unlink(tmp);
        }
    }
    free(buyers);

    long left;
    if ((rc = read_db(&left)) < 0) {
        fprintf(stderr, "%s: cannot read %s at the end: %s\n", prog, db_path,
                rc == -EINVAL ? "not a ticket database any more" : conc_strerror(rc));
        conc_shm_free(seg);
        return 1;
    }
    long said = (long)__atomic_load_n(&shared->sold, __ATOMIC_RELAXED);
    long lost = stock - left;               /* what the file really lost */
    if (said > lost)
        printf("sold %ld of %ld tickets; the database says count=%ld (oversold by %ld)\n",
               said, stock, left, said - lost);
    else if (said < lost)                   /* killed after its rename, before its count */
        printf("sold %ld of %ld tickets; the database says count=%ld (%ld of them to buyers "
               "killed before they were counted)\n", lost, stock, left, lost - said);
    else
        printf("sold %ld of %ld tickets; the database says count=%ld\n", said, stock, left);
    conc_shm_free(seg);
    free(real);
    return failed;
}
