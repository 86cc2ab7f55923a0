/*
 * test_examples_proc.c - runs the process examples (ticket-grab,
 * shared-counter, pipe-ping) from CONC_EXAMPLES_DIR and checks what they
 * print, what they leave in their files and how they exit, also when a
 * worker is killed or the main process alone is interrupted.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conc.h"
#include "support/run_example.h"


/* ------------------------------------------------------- the database */

struct db {
    char path[64];
};

static struct db db_new(const char *contents)
{
    struct db d;
    snprintf(d.path, sizeof d.path, "/tmp/conc-tickets-XXXXXX");
    int fd = mkstemp(d.path);
    cr_assert_geq(fd, 0);
    size_t len = strlen(contents);
    cr_assert_eq(write(fd, contents, len), (ssize_t)len);
    close(fd);
    return d;
}

static void db_remove(struct db *d)
{
    unlink(d->path);
}

/* The count in the file, which must be exactly {"count": N} + newline. */
static long db_count(const struct db *d)
{
    FILE *f = fopen(d->path, "r");
    cr_assert_not_null(f);
    char text[128] = "";
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    long count;
    char tail;
    cr_assert_eq(sscanf(text, "{\"count\": %ld}%c", &count, &tail), 2, "file: '%s'", text);
    cr_assert_eq(tail, '\n');
    return count;
}

/* Checks the lines of a ticket-grab run: one line per buyer 1..n, then the
 * summary.  Returns how many got a ticket. */
static long check_buyers(char *out, long n, long stock, long *left_out)
{
    char *lines[1100];
    int count = split_lines(out, lines, 1100);
    cr_assert_eq(count, n + 1, "want %ld buyer lines and a summary:\n%s", n, out);
    bool seen[1001] = { false };
    long got = 0;
    for (int i = 0; i < n; i++) {
        int id;
        char what[32];
        char tail;
        int f = sscanf(lines[i], "buyer %d: %31[a-z ]%c", &id, what, &tail);
        cr_assert_eq(f, 2, "line '%s'", lines[i]);
        cr_assert(id >= 1 && id <= n, "buyer %d of %ld", id, n);
        cr_assert_not(seen[id], "buyer %d printed twice", id);
        seen[id] = true;
        if (strcmp(what, "got a ticket") == 0)
            got++;
        else
            cr_assert_str_eq(what, "sold out", "line '%s'", lines[i]);
    }
    long sold, of, left;
    int f = sscanf(lines[n], "sold %ld of %ld tickets; the database says count=%ld", &sold, &of,
                   &left);
    cr_assert_eq(f, 3, "summary '%s'", lines[n]);
    cr_assert_eq(sold, got, "the summary counts the buyers that got one");
    cr_assert_eq(of, stock);
    *left_out = left;
    return got;
}

/* ---------------------------------------------------------- ticket-grab */

static void grab(long stock, long buyers)
{
    char init[64], nb[16];
    snprintf(init, sizeof init, "{\"count\": %ld}\n", stock);
    snprintf(nb, sizeof nb, "%ld", buyers);
    struct db d = db_new(init);
    const char *args[] = { "--db", d.path, "--buyers", nb, NULL };
    struct run o = run_example("ticket-grab", args);
    assert_success(&o, "ticket-grab");
    long left;
    long got = check_buyers(o.out, buyers, stock, &left);
    long want_got = stock < buyers ? stock : buyers;
    long want_left = stock > buyers ? stock - buyers : 0;
    cr_assert_eq(got, want_got, "with the lock exactly min(K, N) buyers get one");
    cr_assert_eq(left, want_left);
    cr_assert_eq(db_count(&d), want_left, "the file ends with max(0, K - N)");
    run_free(&o);
    db_remove(&d);
}

Test(ticket_grab, fewer_tickets_than_buyers, .timeout = 30)
{
    grab(3, 6);
}

Test(ticket_grab, more_tickets_than_buyers, .timeout = 30)
{
    grab(10, 4);
}

Test(ticket_grab, exactly_enough, .timeout = 30)
{
    grab(5, 5);
}

Test(ticket_grab, sold_out_from_the_start, .timeout = 30)
{
    grab(0, 3);
}

Test(ticket_grab, one_buyer, .timeout = 30)
{
    grab(1, 1);
}

Test(ticket_grab, without_the_lock_oversells, .timeout = 30)
{
    /* Every buyer reads the count during the others' 0.1 s delay, so
     * normally all "buy" the last ticket; the test asserts only what holds
     * however the processes are scheduled. */
    struct db d = db_new("{\"count\": 1}\n");
    const char *args[] = { "--db", d.path, "--buyers", "4", "--no-lock", NULL };
    struct run o = run_example("ticket-grab", args);
    assert_success(&o, "ticket-grab --no-lock");
    bool says_oversold = strstr(o.out, "(oversold by ") != NULL;
    long left;
    long got = check_buyers(o.out, 4, 1, &left);
    cr_assert_geq(got, 1, "somebody bought the ticket");
    cr_assert_eq(left, 0);
    cr_assert_eq(db_count(&d), 0);
    cr_assert_eq(says_oversold, got > 1, "the summary says whether it oversold");
    run_free(&o);
    db_remove(&d);
}

Test(ticket_grab, whitespace_in_the_database, .timeout = 30)
{
    struct db d = db_new(" \n{ \t\"count\"\r\n:\n 2 }\n\n");
    const char *args[] = { "--db", d.path, "--buyers", "3", NULL };
    struct run o = run_example("ticket-grab", args);
    assert_success(&o, "ticket-grab");
    long left;
    cr_assert_eq(check_buyers(o.out, 3, 2, &left), 2);
    cr_assert_eq(db_count(&d), 0);
    run_free(&o);
    db_remove(&d);
}

Test(ticket_grab, bad_input, .timeout = 30)
{
    const char *bad_json[] = {
        "",
        "{}",
        "{count: 1}",
        "{\"count\": 1,}",
        "{\"count\": -1}",
        "{\"count\": +1}",
        "{\"count\": 01}",
        "{\"count\": 1.5}",
        "{\"count\": \"1\"}",
        "{\"count\": 1} x",
        "{\"count\": 1}}",
        "{\"Count\": 1}",
        "{\"count\": 99999999999999999999}",
        "[1]",
        "{\"count\": 1, \"price\": 2}",
    };
    for (size_t i = 0; i < sizeof bad_json / sizeof bad_json[0]; i++) {
        struct db d = db_new(bad_json[i]);
        const char *args[] = { "--db", d.path, "--buyers", "2", NULL };
        assert_refused("ticket-grab", args);
        db_remove(&d);
    }
    struct db d = db_new("{\"count\": 1}");
    const char *const cases[][6] = {
        { "--db", "/nonexistent/conc-tickets", "--buyers", "2", NULL },
        { "--db", d.path, "--buyers", "0", NULL },
        { "--db", d.path, "--buyers", "-1", NULL },
        { "--db", d.path, "--buyers", "x", NULL },
        { "--db", d.path, "--buyers", "1001", NULL },
        { "--db", d.path, NULL },
        { "--buyers", "2", NULL },
        { "--db", d.path, "--buyers", "2", "--frobnicate", NULL },
        { "--db", d.path, "--buyers", "2", "extra", NULL },
        { "--db", NULL },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        assert_refused("ticket-grab", cases[i]);
    FILE *f = fopen(d.path, "r");
    cr_assert_not_null(f);
    char text[64] = "";
    cr_assert_eq(fread(text, 1, sizeof text - 1, f), 12);
    fclose(f);
    cr_assert_str_eq(text, "{\"count\": 1}", "refused runs leave the file alone");
    db_remove(&d);
}

/* ------------------------------------------------------- shared-counter */

static void counter_run(const char *procs, const char *iters, bool lock, long *total,
                        long *expected)
{
    const char *args[] = { "--procs", procs, "--iters", iters, lock ? NULL : "--no-lock", NULL };
    struct run o = run_example("shared-counter", args);
    assert_success(&o, "shared-counter");
    char *lines[4];
    int n = split_lines(o.out, lines, 4);
    cr_assert_geq(n, 2, "output:\n%s", o.out);
    char tail;
    cr_assert_eq(sscanf(lines[0], "counter=%ld%c", total, &tail), 1, "'%s'", lines[0]);
    cr_assert_eq(sscanf(lines[1], "expected=%ld%c", expected, &tail), 1, "'%s'", lines[1]);
    if (*total == *expected)
        cr_assert_eq(n, 2);
    else
        cr_assert_eq(n, 3, "a third line says how many were lost");
    run_free(&o);
}

Test(shared_counter, exact_with_the_lock, .timeout = 30)
{
    long total, expected;
    counter_run("4", "20000", true, &total, &expected);
    cr_assert_eq(expected, 80000);
    cr_assert_eq(total, 80000, "N*M with the Value's lock");
    counter_run("1", "1", true, &total, &expected);
    cr_assert_eq(total, 1);
}

Test(shared_counter, without_the_lock_at_most_exact, .timeout = 30)
{
    long total, expected;
    counter_run("4", "20000", false, &total, &expected);
    cr_assert_eq(expected, 80000);
    cr_assert_leq(total, 80000);
    cr_assert_geq(total, 20000, "at least one process's worth");
}

Test(shared_counter, bad_input, .timeout = 30)
{
    const char *const cases[][6] = {
        { "--procs", "0", "--iters", "10", NULL },
        { "--procs", "257", "--iters", "10", NULL },
        { "--procs", "2", "--iters", "0", NULL },
        { "--procs", "2", "--iters", "-5", NULL },
        { "--procs", "2", "--iters", "1e3", NULL },
        { "--procs", "2", NULL },
        { "--iters", "2", NULL },
        { "--procs", "2", "--iters", "10", "--bogus", NULL },
        { "--procs", "2", "--iters", "10", "extra", NULL },
        { "--procs", NULL },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        assert_refused("shared-counter", cases[i]);
}

/* -------------------------------------------- failures and careful files */

#include <dirent.h>
#include <limits.h>
#include <sys/stat.h>

/* A fresh directory under /tmp; *dir gets its real path. */
static void tmp_dir(char *dir, size_t cap)
{
    char tmpl[] = "/tmp/conc-tg-XXXXXX";
    cr_assert_not_null(mkdtemp(tmpl));
    cr_assert_not_null(realpath(tmpl, dir));
    cr_assert_lt(strlen(dir), cap);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f, "%s", path);
    fputs(text, f);
    cr_assert_eq(fclose(f), 0);
}

/* The count in the ticket database at path. */
static long count_at(const char *path)
{
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s", path);
    char text[128] = "";
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    long count;
    char tail;
    cr_assert_eq(sscanf(text, "{\"count\": %ld}%c", &count, &tail), 2, "file: '%s'", text);
    return count;
}

/* How many entries dir has besides the ones named keep (NULL-terminated). */
static int extra_entries(const char *dir, const char *const *keep, char *names, size_t cap)
{
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    int n = 0;
    names[0] = '\0';
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (e->d_name[0] == '.' && (!e->d_name[1] || (e->d_name[1] == '.' && !e->d_name[2])))
            continue;
        bool kept = false;
        for (int i = 0; keep[i]; i++)
            kept |= strcmp(e->d_name, keep[i]) == 0;
        if (!kept) {
            n++;
            strncat(names, e->d_name, cap - strlen(names) - 1);
            strncat(names, " ", cap - strlen(names) - 1);
        }
    }
    closedir(d);
    return n;
}

static void remove_dir(const char *dir, const char *const *names)
{
    char path[PATH_MAX + 64];
    for (int i = 0; names[i]; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        unlink(path);
    }
    rmdir(dir);
}

/* The summary line of a ticket-grab run ("sold S of K tickets; the database
 * says count=X..."): checks that it agrees with the file (S + X = K and X
 * is what the file says) and returns S. */
static long check_summary(const char *out, long stock, const char *db)
{
    const char *line = strstr(out, "sold ");
    cr_assert_not_null(line, "no summary in:\n%s", out);
    long sold, of, left;
    cr_assert_eq(sscanf(line, "sold %ld of %ld tickets; the database says count=%ld", &sold,
                        &of, &left), 3, "summary '%s'", line);
    cr_assert_eq(of, stock);
    cr_assert_eq(left, count_at(db), "the summary quotes the file");
    cr_assert_eq(sold + left, stock, "the tickets sold are what the file lost: '%s'", line);
    return sold;
}

Test(ticket_grab, a_killed_buyer_is_named_and_the_summary_stays_true, .timeout = 30)
{
    char dir[PATH_MAX], db[PATH_MAX + 16];
    tmp_dir(dir, sizeof dir);
    snprintf(db, sizeof db, "%s/db.json", dir);
    write_file(db, "{\"count\": 8}\n");
    const char *args[] = { "--db", db, "--buyers", "8", NULL };
    struct bg b = start_example("ticket-grab", args);
    pid_t kids[16];
    wait_for_children(b.pid, 8, kids, 16);
    /* Buyer 8, the last one started: it cannot have finished its 0.1 s
     * purchase yet. */
    cr_assert_eq(kill(kids[7], SIGKILL), 0);
    char *out, *err;
    int status = finish_example(&b, &out, &err);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 1, "status %#x", status);
    cr_assert_not_null(strstr(err, "ticket-grab: buyer 8 killed by SIGKILL (exit code -9)\n"),
                       "stderr names the buyer and the signal:\n%s", err);
    check_summary(out, 8, db);
    const char *keep[] = { "db.json", NULL };
    char extra[512];
    cr_assert_eq(extra_entries(dir, keep, extra, sizeof extra), 0, "left behind: %s", extra);
    remove_dir(dir, keep);
    free(out);
    free(err);
}

Test(ticket_grab, a_killed_buyers_temporary_file_is_removed, .timeout = 30)
{
    char dir[PATH_MAX], db[PATH_MAX + 16], tmp[PATH_MAX + 64];
    tmp_dir(dir, sizeof dir);
    snprintf(db, sizeof db, "%s/db.json", dir);
    write_file(db, "{\"count\": 8}\n");
    const char *args[] = { "--db", db, "--buyers", "8", NULL };
    struct bg b = start_example("ticket-grab", args);
    pid_t kids[16];
    wait_for_children(b.pid, 8, kids, 16);
    /* Buyer 8, just started, cannot have reached its write yet: give it the
     * temporary file it would have written, then kill it, as if SIGKILL
     * had come between its write and its rename. */
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", db, (int)kids[7]);
    write_file(tmp, "{\"count\": 7}\n");
    cr_assert_eq(kill(kids[7], SIGKILL), 0);
    char *out, *err;
    int status = finish_example(&b, &out, &err);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 1, "status %#x\n%s", status, err);
    cr_assert_not_null(strstr(err, "buyer 8 killed by SIGKILL"), "stderr:\n%s", err);
    check_summary(out, 8, db);
    const char *keep[] = { "db.json", NULL };
    char extra[512];
    int n = extra_entries(dir, keep, extra, sizeof extra);
    unlink(tmp);
    cr_assert_eq(n, 0, "left behind: %s", extra);
    remove_dir(dir, keep);
    free(out);
    free(err);
}

Test(ticket_grab, a_symlinked_database_updates_its_target_and_keeps_mode_and_owner,
     .timeout = 30)
{
    char dir[PATH_MAX], target[PATH_MAX + 16], link[PATH_MAX + 16];
    tmp_dir(dir, sizeof dir);
    snprintf(target, sizeof target, "%s/target.json", dir);
    snprintf(link, sizeof link, "%s/link.json", dir);
    write_file(target, "{\"count\": 5}\n");
    cr_assert_eq(chmod(target, 0640), 0);
    bool root = geteuid() == 0;
    if (root)
        cr_assert_eq(chown(target, 1, 2), 0);
    cr_assert_eq(symlink("target.json", link), 0);
    const char *args[] = { "--db", link, "--buyers", "2", NULL };
    struct run r = run_example("ticket-grab", args);
    assert_success(&r, "ticket-grab on a symlink");
    struct stat st;
    cr_assert_eq(lstat(link, &st), 0);
    cr_assert(S_ISLNK(st.st_mode), "the link was replaced by a regular file");
    cr_assert_eq(count_at(target), 3, "the target has the new count");
    cr_assert_eq(stat(target, &st), 0);
    cr_assert_eq(st.st_mode & 07777, 0640, "mode %o, want 0640", st.st_mode & 07777);
    if (root) {
        cr_assert_eq(st.st_uid, 1, "owner %d, want 1", (int)st.st_uid);
        cr_assert_eq(st.st_gid, 2, "group %d, want 2", (int)st.st_gid);
    }
    const char *keep[] = { "target.json", "link.json", NULL };
    char extra[512];
    cr_assert_eq(extra_entries(dir, keep, extra, sizeof extra), 0, "left behind: %s", extra);
    remove_dir(dir, keep);
    run_free(&r);
}

Test(ticket_grab, an_unwritable_directory_is_named, .timeout = 30)
{
    if (geteuid() != 0)
        cr_skip_test("needs root to run the program as another user");
    char dir[PATH_MAX], db[PATH_MAX + 16];
    tmp_dir(dir, sizeof dir);
    snprintf(db, sizeof db, "%s/db.json", dir);
    write_file(db, "{\"count\": 5}\n");
    cr_assert_eq(chmod(db, 0666), 0);
    cr_assert_eq(chmod(dir, 0555), 0);      /* the file writable, the directory not */
    run_example_uid = 65534;
    const char *args[] = { "--db", db, "--buyers", "1", NULL };
    struct run r = run_example("ticket-grab", args);
    run_example_uid = -1;
    char want[PATH_MAX + 128];
    snprintf(want, sizeof want,
             "ticket-grab: buyer 1: cannot create a temporary file in %s: Permission denied\n",
             dir);
    cr_assert(exited_with(&r, 1), "status %#x\n%s", r.status, r.err);
    cr_assert_str_eq(r.err, want);
    cr_assert_eq(count_at(db), 5);
    chmod(dir, 0755);
    const char *keep[] = { "db.json", NULL };
    remove_dir(dir, keep);
    run_free(&r);
}

Test(shared_counter, a_killed_process_is_named_not_blamed_on_the_lock, .timeout = 30)
{
    const char *args[] = { "--procs", "2", "--iters", "100000000", NULL };
    struct bg b = start_example("shared-counter", args);
    pid_t kids[4];
    wait_for_children(b.pid, 2, kids, 4);
    cr_assert_eq(kill(kids[1], SIGKILL), 0);
    cr_assert_eq(kill(kids[0], SIGTERM), 0);
    char *out, *err;
    int status = finish_example(&b, &out, &err);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 1, "status %#x", status);
    cr_assert_not_null(strstr(err, "shared-counter: process 1 killed by SIGTERM (exit code -15)\n"),
                       "stderr:\n%s", err);
    cr_assert_not_null(strstr(err, "shared-counter: process 2 killed by SIGKILL (exit code -9)\n"),
                       "stderr:\n%s", err);
    cr_assert_null(strstr(out, "lost"), "a killed process is not a lost update:\n%s", out);
    cr_assert_not_null(strstr(out, "additions missing: not every process finished\n"), "%s", out);
    free(out);
    free(err);
}

Test(ticket_grab, stale_temporary_files_of_dead_processes_are_removed, .timeout = 30)
{
    char dir[PATH_MAX], db[PATH_MAX + 16], dead_tmp[PATH_MAX + 64], live_tmp[PATH_MAX + 64];
    tmp_dir(dir, sizeof dir);
    snprintf(db, sizeof db, "%s/db.json", dir);
    write_file(db, "{\"count\": 2}\n");
    pid_t dead = fork();                    /* a pid that no longer exists */
    cr_assert_geq(dead, 0);
    if (dead == 0)
        _exit(0);
    cr_assert_eq(waitpid(dead, NULL, 0), dead);
    snprintf(dead_tmp, sizeof dead_tmp, "%s.tmp.%d", db, (int)dead);
    snprintf(live_tmp, sizeof live_tmp, "%s.tmp.%d", db, (int)getpid());
    write_file(dead_tmp, "{\"count\": 1}\n");
    write_file(live_tmp, "{\"count\": 1}\n");
    const char *args[] = { "--db", db, "--buyers", "1", NULL };
    struct run r = run_example("ticket-grab", args);
    assert_success(&r, "ticket-grab");
    cr_assert_neq(access(dead_tmp, F_OK), 0, "a dead process's temporary file is removed");
    cr_assert_eq(access(live_tmp, F_OK), 0, "a live process's temporary file is kept");
    cr_assert_eq(count_at(db), 1);
    unlink(live_tmp);
    const char *keep[] = { "db.json", NULL };
    remove_dir(dir, keep);
    run_free(&r);
}

/* ------------------------------------------------------- interrupted */

Test(shared_counter, sigterm_to_the_parent_stops_the_adders, .timeout = 30)
{
    const char *args[] = { "--procs", "3", "--iters", "100000000", NULL };
    interrupt_example("shared-counter", args, 3, SIGTERM);
}

/* A pipe whose buffer is full: a write to wfd blocks until rfd is read. */
static void full_pipe(int fds[2])
{
    cr_assert_eq(pipe2(fds, O_CLOEXEC), 0);
    fcntl(fds[1], F_SETPIPE_SZ, 4096);      /* the smallest; the fill works either way */
    int fl = fcntl(fds[1], F_GETFL);
    cr_assert_eq(fcntl(fds[1], F_SETFL, fl | O_NONBLOCK), 0);
    char block[4096];
    memset(block, 'x', sizeof block);
    while (write(fds[1], block, sizeof block) > 0)
        ;
    cr_assert_eq(errno, EAGAIN);
    while (write(fds[1], block, 1) > 0)     /* the last partial page */
        ;
    cr_assert_eq(errno, EAGAIN);
    cr_assert_eq(fcntl(fds[1], F_SETFL, fl), 0);
}

/* The eight buyers take the lock in turn for 0.1 s each: a run ends on its
 * own 0.8 s after it starts, and a test process kept off the CPU that long
 * would send its SIGINT to a program that already ended (status 0).  So
 * stdout is a full pipe: the first buyer to get a ticket blocks writing
 * "got a ticket" while it holds the lock, the others wait for the lock, and
 * nothing but the signal can end the run. */
Test(ticket_grab, sigint_to_the_parent_stops_the_buyers_and_leaves_a_valid_file, .timeout = 30)
{
    char dir[PATH_MAX], db[PATH_MAX + 16];
    tmp_dir(dir, sizeof dir);
    snprintf(db, sizeof db, "%s/db.json", dir);
    write_file(db, "{\"count\": 8}\n");
    int out[2];
    full_pipe(out);
    const char *args[] = { "--db", db, "--buyers", "8", NULL };
    interrupt_example_out("ticket-grab", args, 8, SIGINT, out[1]);
    close(out[0]);
    close(out[1]);
    long left = count_at(db);
    cr_assert(left >= 0 && left <= 8, "count=%ld", left);
    const char *keep[] = { "db.json", NULL };
    char extra[512];
    cr_assert_eq(extra_entries(dir, keep, extra, sizeof extra), 0, "left behind: %s", extra);
    remove_dir(dir, keep);
}

Test(pipe_ping, sighup_to_the_parent_stops_the_child, .timeout = 30)
{
    const char *args[] = { "--messages", "1000000", NULL };
    interrupt_example("pipe-ping", args, 1, SIGHUP);
}
