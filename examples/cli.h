/*
 * cli.h - small command-line helpers shared by the example programs:
 * strict number parsing for their flags.
 */
#ifndef CONC_EXAMPLES_CLI_H
#define CONC_EXAMPLES_CLI_H

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>

/* Parses a whole decimal integer in [min, max]. */
static inline bool parse_long(const char *s, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end != '\0' || v < min || v > max)
        return false;
    *out = v;
    return true;
}

/* Parses a finite number of seconds in (0, 3600]. */
static inline bool parse_seconds(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end != '\0' || !isfinite(v) || v <= 0 || v > 3600)
        return false;
    *out = v;
    return true;
}

#endif
