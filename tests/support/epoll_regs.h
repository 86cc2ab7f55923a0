/*
 * epoll_regs.h - the registrations of descriptor number fd in this
 * process's epoll instances, read from /proc/self/fdinfo of each instance
 * (it lists "tfd: N events: HEX"): how many there are, and the events of
 * the last one in *events (when events is not NULL).
 */
#ifndef CONC_TEST_EPOLL_REGS_H
#define CONC_TEST_EPOLL_REGS_H

#include <criterion/criterion.h>
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static inline int epoll_registrations(int fd, uint32_t *events)
{
    DIR *d = opendir("/proc/self/fd");
    cr_assert_not_null(d);
    int found = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char path[300], target[64];
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        ssize_t n = readlink(path, target, sizeof target - 1);
        if (n <= 0)
            continue;
        target[n] = '\0';
        if (strcmp(target, "anon_inode:[eventpoll]") != 0)
            continue;
        snprintf(path, sizeof path, "/proc/self/fdinfo/%s", e->d_name);
        FILE *f = fopen(path, "re");
        if (!f)
            continue;
        char line[256];
        while (fgets(line, sizeof line, f)) {
            int tfd;
            unsigned ev;
            if (sscanf(line, "tfd: %d events: %x", &tfd, &ev) == 2 && tfd == fd) {
                found++;
                if (events)
                    *events = ev;
            }
        }
        fclose(f);
    }
    closedir(d);
    return found;
}

#endif
