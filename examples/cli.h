/*
 * cli.h - small command-line helpers shared by the example programs: strict
 * number parsing for their flags, and their one-line error messages (exit
 * status 2 for bad input, 1 for a failed call).  Each example defines
 * `static const char *prog = "name";` after including this file.
 */
#ifndef CONC_EXAMPLES_CLI_H
#define CONC_EXAMPLES_CLI_H

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include "conc.h"

static const char *prog;        /* defined by each example */

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

/* Bad input: "prog: <message>" on stderr; returns the exit status 2. */
static inline int fail(const char *fmt, const char *arg)
{
    fprintf(stderr, "%s: ", prog);
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    return 2;
}

/* A conc call failed: "prog: what: reason" on stderr; returns 1. */
static inline int die(const char *what, int err)
{
    fprintf(stderr, "%s: %s: %s\n", prog, what, conc_strerror(err));
    return 1;
}

/* A conc call that must not fail in a walk-through: report it and exit 1. */
static inline void check(int rc, const char *what)
{
    if (rc < 0)
        exit(die(what, rc));
}

/* The walk-through examples number and explain their steps. */
static int step_no;

static inline void step(const char *title, const char *explanation)
{
    if (step_no++)
        putchar('\n');
    printf("== %d. %s: %s\n", step_no, title, explanation);
}

static inline const char *yes_no(bool b)
{
    return b ? "yes" : "no";
}

/* getopt_long without its own error messages: the examples report a bad
 * option with bad_option (or help_or_bad_option). */
static inline int next_option(int argc, char **argv, const char *shortopts,
                              const struct option *longopts)
{
    opterr = 0;
    return getopt_long(argc, argv, shortopts, longopts, NULL);
}

/* getopt_long (called with a leading ':' in its option string) returned
 * ':' (an option without its value) or '?' (an unknown option). */
static inline int bad_option(int opt, char **argv)
{
    if (opt == ':')
        return fail("option '%s' needs a value", argv[optind - 1]);
    if (optopt) {
        char shortopt[3] = { '-', (char)optopt, '\0' };
        return fail("unknown option '%s' (try --help)", shortopt);
    }
    return fail("unknown option '%s' (try --help)", argv[optind - 1]);
}

/* The option loop's last cases: -h/--help prints the usage and ends the
 * program well (0); anything else is a bad option (2). */
static inline int help_or_bad_option(int opt, char **argv, void (*usage)(FILE *))
{
    if (opt == 'h') {
        usage(stdout);
        return 0;
    }
    return bad_option(opt, argv);
}

/* Creates and starts (forking) process number `no` of the kind `name`
 * ("buyer", ...), running fn(arg, len).  On failure says
 * "prog: name no: reason", frees it and returns the error (< 0). */
static inline int start_process(conc_process **p, conc_process_fn fn, const void *arg,
                                size_t len, const char *name, long no)
{
    conc_process_opts po = { .method = CONC_START_FORK };
    int rc;
    if ((rc = conc_process_new(p, fn, arg, len, &po)) < 0 ||
        (rc = conc_process_start(*p)) < 0) {
        fprintf(stderr, "%s: %s %ld: %s\n", prog, name, no, conc_strerror(rc));
        conc_process_free(*p);
        *p = NULL;
    }
    return rc;
}

/* Joins process number `no` started by start_process and frees it.
 * Returns its exit code, or -1 after saying "prog: name no: reason". */
static inline int join_process(conc_process *p, const char *name, long no)
{
    int code = 0, rc;
    if ((rc = conc_process_join(p, CONC_FOREVER)) < 0 ||
        (rc = conc_process_exitcode(p, &code)) < 0) {
        fprintf(stderr, "%s: %s %ld: %s\n", prog, name, no, conc_strerror(rc));
        code = -1;
    }
    conc_process_free(p);
    return code;
}

#endif
