/*
 * rabbitmq_node.h - the private RabbitMQ node the broker tests talk to
 * (scripts/rabbitmq.sh, started by ctest's rabbitmq fixture): its AMQP URL
 * and running the script's other commands (stop, start, ...) on it.
 */
#ifndef CONC_TEST_RABBITMQ_NODE_H
#define CONC_TEST_RABBITMQ_NODE_H

#include <criterion/criterion.h>

#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef CONC_RABBITMQ_SCRIPT
#error "CONC_RABBITMQ_SCRIPT must name scripts/rabbitmq.sh"
#endif
#ifndef CONC_RABBITMQ_DIR
#error "CONC_RABBITMQ_DIR must name the private node's directory"
#endif

static char url[256];           /* the node's URL, after read_url */

/* Reads the running node's URL into url (fails the test without a node). */
static inline void read_url(void)
{
    FILE *p = popen("sh '" CONC_RABBITMQ_SCRIPT "' url '" CONC_RABBITMQ_DIR "'", "r");
    cr_assert_not_null(p);
    cr_assert_not_null(fgets(url, sizeof url, p), "no node: run the tests through ctest");
    pclose(p);
    url[strcspn(url, "\n")] = '\0';
    cr_assert(strncmp(url, "amqp://", 7) == 0, "odd url %s", url);
}

/* The node's amqps:// URL into buf (cap bytes); skips the test when the
 * node has no TLS listener (openssl was missing where it was set up). */
static inline void tls_url_or_skip(char *buf, size_t cap)
{
    FILE *p = popen("sh '" CONC_RABBITMQ_SCRIPT "' tls-url '" CONC_RABBITMQ_DIR "' 2>/dev/null",
                    "r");
    cr_assert_not_null(p);
    if (!fgets(buf, (int)cap, p))
        buf[0] = '\0';
    pclose(p);
    buf[strcspn(buf, "\n")] = '\0';
    if (!buf[0])
        cr_skip_test("the node has no TLS listener (openssl is missing)");
}

/* Runs `rabbitmq.sh what DIR` on the node; fails the test if it fails. */
static inline void node(const char *what)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "sh '%s' %s '%s' >/dev/null", CONC_RABBITMQ_SCRIPT, what,
             CONC_RABBITMQ_DIR);
    cr_assert_eq(system(cmd), 0, "rabbitmq.sh %s failed", what);
}

/* Runs `rabbitmqctl ARGS` on the node (ARGS as a shell would split them);
 * fails the test if it fails. */
static inline void ctl(const char *args)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "sh '%s' ctl '%s' %s >/dev/null", CONC_RABBITMQ_SCRIPT,
             CONC_RABBITMQ_DIR, args);
    cr_assert_eq(system(cmd), 0, "rabbitmqctl %s failed", args);
}

/* Bounds queue `name` (that exact name) to max_length ready messages with a
 * policy that makes the broker refuse (nack) what comes beyond them; the
 * policy is called `policy`.  unbound_queue takes it away. */
static inline void bound_queue(const char *policy, const char *name, int max_length)
{
    char args[768];
    snprintf(args, sizeof args,
             "set_policy --apply-to queues --priority 100 '%s' '^%s$' "
             "'{\"max-length\":%d,\"overflow\":\"reject-publish\"}'",
             policy, name, max_length);
    ctl(args);
}

static inline void unbound_queue(const char *policy)
{
    char args[300];
    snprintf(args, sizeof args, "clear_policy '%s'", policy);
    ctl(args);
}

/* The node's process group (its whole Erlang VM). */
static inline int node_group(void)
{
    FILE *f = fopen(CONC_RABBITMQ_DIR "/group.pid", "r");
    cr_assert_not_null(f);
    int pg = 0;
    cr_assert_eq(fscanf(f, "%d", &pg), 1);
    fclose(f);
    cr_assert_gt(pg, 1);
    return pg;
}

/* Sends sig to the node (SIGSTOP: a broker that stops reading and
 * answering, as behind a lost network; SIGCONT: it goes on). */
static inline void node_signal(int sig)
{
    cr_assert_eq(kill(-node_group(), sig), 0);
}

/* Whether the node is stopped (SIGSTOP) now: its group leader's state is
 * T. */
static inline bool node_stopped(void)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", node_group());
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    cr_assert_not_null(p);
    return p[1] == ' ' && p[2] == 'T';
}

/* (A test that puts the library's src/ first on its include path gets
 * src/sys/wait.h for <sys/wait.h>, and goes without these two.) */
#ifndef CONC_SYS_WAIT_H
/* Sends SIGCONT to the node when this process ends or after `seconds`,
 * whichever comes first, so that no path leaves it stopped.  Returns the
 * guard's pid (end it with guard_end). */
static inline pid_t node_cont_guard(double seconds)
{
    int pg = node_group();
    pid_t parent = getpid();
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        for (int i = 0; i < (int)(seconds * 100) && getppid() == parent; i++)
            usleep(10 * 1000);
        kill(-pg, SIGCONT);
        _exit(0);
    }
    return pid;
}

static inline void guard_end(pid_t pid)
{
    kill(pid, SIGKILL);
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
}

#endif /* CONC_SYS_WAIT_H */

#endif
