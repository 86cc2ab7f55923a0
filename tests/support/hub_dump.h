/*
 * hub_dump.h - conc_hub_dump into a string: the dump is written to an
 * anonymous file and read back.
 */
#ifndef TESTS_SUPPORT_HUB_DUMP_H
#define TESTS_SUPPORT_HUB_DUMP_H

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "conc.h"

/* Runs conc_hub_dump; stores its return value in *n and returns what it
 * wrote as a NUL-terminated string (free it), or NULL when the file cannot
 * be made or read. */
static inline char *hub_dump_text(int *n)
{
    int fd = memfd_create("conc-hub-dump", MFD_CLOEXEC);
    if (fd < 0)
        return NULL;
    *n = conc_hub_dump(fd);
    off_t len = lseek(fd, 0, SEEK_END);
    char *text = len >= 0 ? malloc((size_t)len + 1) : NULL;
    if (text && pread(fd, text, (size_t)len, 0) != (ssize_t)len) {
        free(text);
        text = NULL;
    }
    if (text)
        text[len] = '\0';
    close(fd);
    return text;
}

#endif
