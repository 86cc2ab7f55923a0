/*
 * test_child_entry.c - a program linked with conc becomes a forkserver or
 * spawn child only for its own conc starter.
 *
 * The victim (child_entry/victim.c) only links conc and prints a line from
 * main.  A hostile starter runs it with CONC_FORKSERVER set, a socket on
 * fd 3 holding a request that names a function of its own module
 * (child_entry/attacker.c, which leaves a marker file when loaded), and a
 * key pipe on fd 4.  The victim must run its own main and nothing else: its
 * line is printed, it exits 0, and the marker does not exist.  The same
 * harness, given everything a real starter has, does run the named function
 * (the positive control), so each refusal below is the check it names.
 */
#include <criterion/criterion.h>

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <link.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../src/forkserver_wire.h"
#include "support/fork_sanitizers.h"

#define NOBODY 65534

/* The request of the first version of the protocol, as the published
 * proof of concept sent it. */
struct legacy_req {
    uint32_t magic;
    uint32_t version;
    uint64_t offset;
    uint64_t len;
    uint64_t sigmask;
    int32_t ppid;
    uint32_t flags;
    uint32_t nfds;
    uint32_t stdio;
    uint32_t path_len, name_len, ident_len, pname_len;
};

struct craft {
    const char *victim;         /* the program to run */
    const char *mode;           /* "spawn" or "server" */
    bool drop;                  /* run it as nobody */
    bool legacy;                /* a version-1 request, no key */
    bool wrong_secret;          /* the hello's secret is not the pipe's */
    bool stranger_socket;       /* the socket is made by another process
                                   than the victim's parent */
    bool wrong_module;          /* dev/ino of another file than the module */
};

struct outcome {
    int code;                   /* the victim's exit code, 128+sig if killed */
    char out[1024];             /* its stdout and stderr */
    bool marker;                /* the attacker module was loaded */
    char mark[256];
};

static char tmpdir[256];
static char marker[300];

static void make_tmpdir(const char *base)
{
    snprintf(tmpdir, sizeof tmpdir, "%s/conc-entry-XXXXXX", base);
    cr_assert_not_null(mkdtemp(tmpdir), "mkdtemp in %s: %s", base, strerror(errno));
    cr_assert_eq(chmod(tmpdir, 0777), 0);
    snprintf(marker, sizeof marker, "%s/marker", tmpdir);
}

static void remove_tmpdir(const char *victim_copy)
{
    unlink(marker);
    if (victim_copy)
        unlink(victim_copy);
    rmdir(tmpdir);
}

/* Offset of conc_test_attack in the attacker module, and the module's file
 * id.  Loading it here runs its constructor without CONC_TEST_MARKER set:
 * no marker. */
static void attack_target(uint64_t *offset, struct stat *st)
{
    void *h = dlopen(CONC_TEST_ATTACKER, RTLD_NOW | RTLD_LOCAL);
    cr_assert_not_null(h, "dlopen: %s", dlerror());
    void *fn = dlsym(h, "conc_test_attack");
    cr_assert_not_null(fn);
    Dl_info info;
    struct link_map *lm = NULL;
    cr_assert(dladdr1(fn, &info, (void **)&lm, RTLD_DL_LINKMAP) && lm);
    *offset = (uint64_t)((uintptr_t)fn - (uintptr_t)lm->l_addr);
    cr_assert_eq(stat(CONC_TEST_ATTACKER, st), 0);
}

static void put(int fd, const void *p, size_t n)
{
    if (write(fd, p, n) != (ssize_t)n)
        _exit(90);
}

/* Writes the crafted request on the starter's end of the socket. */
static uint64_t attack_offset;
static struct stat attack_st, victim_st;

static void write_request(int sock, const struct craft *c)
{
    uint64_t offset = attack_offset;
    struct stat st = attack_st;
    const char *path = CONC_TEST_ATTACKER, *name = "evil", *ident = "1", *pname = "x";
    if (c->legacy) {
        struct legacy_req q = {
            .magic = CONC__WIRE_MAGIC, .version = 1, .offset = offset, .ppid = (int32_t)getpid(),
            .path_len = (uint32_t)strlen(path), .name_len = (uint32_t)strlen(name),
            .ident_len = (uint32_t)strlen(ident), .pname_len = (uint32_t)strlen(pname),
        };
        put(sock, &q, sizeof q);
    } else {
        struct conc__wire_req q = {
            .magic = CONC__WIRE_MAGIC, .version = CONC__WIRE_VERSION, .offset = offset,
            .module_dev = (uint64_t)st.st_dev, .module_ino = (uint64_t)st.st_ino,
            .ppid = (int32_t)getpid(), .method = 3,
            .path_len = (uint32_t)strlen(path), .name_len = (uint32_t)strlen(name),
            .ident_len = (uint32_t)strlen(ident), .pname_len = (uint32_t)strlen(pname),
        };
        if (c->wrong_module) {
            q.module_ino = (uint64_t)victim_st.st_ino;
            q.module_dev = (uint64_t)victim_st.st_dev;
        }
        put(sock, &q, sizeof q);
    }
    put(sock, path, strlen(path));
    put(sock, name, strlen(name));
    put(sock, ident, strlen(ident));
    put(sock, pname, strlen(pname));
}

extern char **environ;

/* In the process that becomes the victim's parent: run the victim with the
 * socket on fd 3, the key pipe (if any) on fd 4, stdout/stderr on out, and
 * return its exit code. */
static int run_victim(const struct craft *c, int sock, int key, int out)
{
    pid_t v = fork();
    if (v < 0)
        return 91;
    if (v == 0) {
        if (dup2(out, 1) < 0 || dup2(out, 2) < 0 || dup2(sock, 3) < 0)
            _exit(92);
        if (key >= 0 && dup2(key, 4) < 0)
            _exit(93);
        char var[96], mark[320];
        if (c->legacy)
            snprintf(var, sizeof var, CONC__ENV_NAME "=%s:%d:3", c->mode, (int)getppid());
        else
            snprintf(var, sizeof var, CONC__ENV_NAME "=%s:%d:3:4", c->mode, (int)getppid());
        snprintf(mark, sizeof mark, "CONC_TEST_MARKER=%s", marker);
        char *envp[64];
        size_t n = 0;
        envp[n++] = var;
        envp[n++] = mark;
        for (char **e = environ; *e && n < 62; e++)     /* sanitizer options */
            if (strncmp(*e, "ASAN_", 5) == 0 || strncmp(*e, "UBSAN_", 6) == 0 ||
                strncmp(*e, "TSAN_", 5) == 0 || strncmp(*e, "LSAN_", 5) == 0)
                envp[n++] = *e;
        envp[n] = NULL;
        char *argv[] = { (char *)c->victim, NULL };
        execve(c->victim, argv, envp);
        _exit(94);
    }
    int status;
    while (waitpid(v, &status, 0) < 0)
        if (errno != EINTR)
            return 95;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* The hostile starter (a process of its own, nobody when c->drop). */
static _Noreturn void starter(const struct craft *c, int out)
{
    if (c->drop && (setgroups(0, NULL) != 0 || setgid(NOBODY) != 0 || setuid(NOBODY) != 0))
        _exit(96);
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
        _exit(97);
    int key = -1;
    if (!c->legacy) {
        uint8_t secret[CONC__WIRE_SECRET];
        memset(secret, 0x5a, sizeof secret);
        int kp[2];
        if (pipe(kp) != 0)
            _exit(98);
        put(kp[1], secret, sizeof secret);
        close(kp[1]);
        key = kp[0];
        struct conc__wire_hello h = { .magic = CONC__WIRE_MAGIC, .version = CONC__WIRE_VERSION };
        memset(h.secret, c->wrong_secret ? 0xa5 : 0x5a, sizeof h.secret);
        put(sv[0], &h, sizeof h);
    }
    write_request(sv[0], c);
    /* A server that was fooled serves until EOF: give it one. */
    if (strcmp(c->mode, "server") == 0)
        close(sv[0]);
    if (!c->stranger_socket)
        _exit(run_victim(c, sv[1], key, out));
    /* The victim's parent is a process that did not make the socket. */
    pid_t b = fork();
    if (b < 0)
        _exit(99);
    if (b == 0)
        _exit(run_victim(c, sv[1], key, out));
    int status;
    while (waitpid(b, &status, 0) < 0)
        if (errno != EINTR)
            _exit(99);
    _exit(WIFEXITED(status) ? WEXITSTATUS(status) : 99);
}

static void run(const struct craft *c, struct outcome *o)
{
    memset(o, 0, sizeof *o);
    unlink(marker);
    attack_target(&attack_offset, &attack_st);
    cr_assert_eq(stat(c->victim, &victim_st), 0);
    int p[2];
    cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
    fflush(NULL);
    pid_t a = fork();
    cr_assert_geq(a, 0);
    if (a == 0) {
        close(p[0]);
        starter(c, p[1]);
    }
    close(p[1]);
    size_t got = 0;
    for (;;) {
        ssize_t n = read(p[0], o->out + got, sizeof o->out - 1 - got);
        if (n > 0 && got + (size_t)n < sizeof o->out - 1) {
            got += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        break;
    }
    close(p[0]);
    int status;
    cr_assert_eq(waitpid(a, &status, 0), a);
    o->code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    int fd = open(marker, O_RDONLY | O_CLOEXEC);
    o->marker = fd >= 0;
    if (fd >= 0) {
        ssize_t n = read(fd, o->mark, sizeof o->mark - 1);
        o->mark[n > 0 ? n : 0] = '\0';
        close(fd);
    }
}

static void expect_own_main(const struct craft *c, const char *what)
{
    struct outcome o;
    run(c, &o);
    cr_expect_not(o.marker, "%s: the attacker's module was loaded: %s", what, o.mark);
    cr_expect(strstr(o.out, "victim main ran (clock ok)") != NULL,
              "%s: the victim's main did not run (exit %d, output \"%s\")", what, o.code, o.out);
    cr_expect_eq(o.code, 0, "%s: exit code %d, output \"%s\"", what, o.code, o.out);
}

/* ------------------------------------------- set-user-ID root copy */

static bool suid_capable_dir(const char *base)
{
    struct statvfs vfs;
    return access(base, W_OK) == 0 && statvfs(base, &vfs) == 0 && !(vfs.f_flag & ST_NOSUID);
}

/* Copies the victim into the temporary directory as a set-user-ID root
 * program.  Returns false (test skipped) when that is impossible here. */
static bool make_suid_copy(char *copy, size_t cap)
{
    if (geteuid() != 0)
        return false;
    const char *bases[] = { "/tmp", "/var/tmp", "/dev/shm", CONC_TEST_BINARY_DIR };
    const char *base = NULL;
    for (size_t i = 0; i < sizeof bases / sizeof *bases && !base; i++)
        if (suid_capable_dir(bases[i]))
            base = bases[i];
    if (!base)
        return false;
    make_tmpdir(base);
    snprintf(copy, cap, "%s/victim", tmpdir);
    int in = open(CONC_TEST_VICTIM, O_RDONLY | O_CLOEXEC);
    int outfd = open(copy, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0700);
    cr_assert(in >= 0 && outfd >= 0);
    char buf[65536];
    ssize_t n;
    while ((n = read(in, buf, sizeof buf)) > 0)
        cr_assert_eq(write(outfd, buf, (size_t)n), n);
    close(in);
    close(outfd);
    cr_assert_eq(chown(copy, 0, 0), 0);
    cr_assert_eq(chmod(copy, 04755), 0);
    return true;
}

static void check_suid(struct craft c, const char *what)
{
    char copy[400];
    if (!make_suid_copy(copy, sizeof copy))
        cr_skip_test("needs root and a directory that allows set-user-ID programs");
    c.victim = copy;
    c.drop = true;
    expect_own_main(&c, what);
    remove_tmpdir(copy);
}

Test(child_entry, setuid_copy_ignores_a_legacy_spawn_request, .timeout = 60)
{
    check_suid((struct craft){ .mode = "spawn", .legacy = true }, "legacy spawn");
}

Test(child_entry, setuid_copy_ignores_a_well_formed_spawn_request, .timeout = 60)
{
    check_suid((struct craft){ .mode = "spawn" }, "spawn");
}

Test(child_entry, setuid_copy_never_becomes_a_forkserver, .timeout = 60)
{
    check_suid((struct craft){ .mode = "server" }, "server");
    check_suid((struct craft){ .mode = "server", .legacy = true }, "legacy server");
}

/* ------------------------------------------------ ordinary program */

static void check_plain(struct craft c, const char *what)
{
    make_tmpdir("/tmp");
    c.victim = CONC_TEST_VICTIM;
    expect_own_main(&c, what);
    remove_tmpdir(NULL);
}

Test(child_entry, legacy_request_without_a_key_is_ignored, .timeout = 60)
{
    check_plain((struct craft){ .mode = "spawn", .legacy = true }, "legacy spawn");
    check_plain((struct craft){ .mode = "server", .legacy = true }, "legacy server");
}

Test(child_entry, socket_made_by_a_stranger_is_ignored, .timeout = 60)
{
    check_plain((struct craft){ .mode = "spawn", .stranger_socket = true }, "spawn");
    check_plain((struct craft){ .mode = "server", .stranger_socket = true }, "server");
}

Test(child_entry, wrong_secret_is_ignored, .timeout = 60)
{
    check_plain((struct craft){ .mode = "spawn", .wrong_secret = true }, "spawn");
    check_plain((struct craft){ .mode = "server", .wrong_secret = true }, "server");
}

/* The module file must be the one the starter has mapped: a request whose
 * file id does not match is refused before the module is opened (the child
 * then ends; it never ran main either, it was a real conc child). */
Test(child_entry, module_of_another_file_is_not_loaded, .timeout = 60)
{
    make_tmpdir("/tmp");
    struct outcome o;
    run(&(struct craft){ .victim = CONC_TEST_VICTIM, .mode = "spawn", .wrong_module = true }, &o);
    cr_expect_not(o.marker, "the module was loaded: %s", o.mark);
    cr_expect_eq(o.code, 127, "exit %d, output \"%s\"", o.code, o.out);
    cr_expect(strstr(o.out, "victim main ran") == NULL, "output \"%s\"", o.out);
    remove_tmpdir(NULL);
}

/* With everything a real starter has (its own child, same user, the key),
 * the named function does run: the refusals above are not the harness
 * failing to hijack anything. */
Test(child_entry, positive_control_authenticated_parent_is_served, .timeout = 60)
{
    make_tmpdir("/tmp");
    struct outcome o;
    run(&(struct craft){ .victim = CONC_TEST_VICTIM, .mode = "spawn" }, &o);
    cr_expect(o.marker, "the named function did not run (exit %d, output \"%s\")", o.code, o.out);
    cr_expect_eq(o.code, 42, "exit %d, output \"%s\"", o.code, o.out);
    cr_expect(strstr(o.out, "victim main ran") == NULL, "output \"%s\"", o.out);
    remove_tmpdir(NULL);
}
