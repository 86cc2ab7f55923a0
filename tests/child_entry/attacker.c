/*
 * attacker.c - the module a hostile starter names in its request, for
 * test_child_entry.c.  Its constructor and its function leave a marker file
 * (path in CONC_TEST_MARKER), so the test sees whether it was ever loaded.
 */
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int conc_test_attack(const void *arg, size_t len);

static void mark(const char *what)
{
    const char *path = getenv("CONC_TEST_MARKER");
    if (!path)
        return;
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0)
        return;
    dprintf(fd, "%s ran in pid %d with euid %d\n", what, (int)getpid(), (int)geteuid());
    close(fd);
}

__attribute__((constructor)) static void attacker_init(void)
{
    mark("constructor");
}

int conc_test_attack(const void *arg, size_t len)
{
    (void)arg;
    (void)len;
    mark("function");
    return 42;
}
