/*
 * fd_count.h - how many descriptors this process has open, for tests that
 * check nothing leaked (compare a count before with one after).
 */
#ifndef CONC_TEST_FD_COUNT_H
#define CONC_TEST_FD_COUNT_H

#include <criterion/criterion.h>
#include <dirent.h>

static inline int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    cr_assert_not_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1;                       /* the directory's own descriptor */
}

#endif
