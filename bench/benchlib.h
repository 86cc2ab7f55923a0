/*
 * benchlib.h - the small harness every conc benchmark is built on.
 *
 * A benchmark program:
 *
 *   static const bench_metric metrics[] = {
 *       { "lock_uncontended", "ns", "acquire+release pair, one thread" },
 *       ...
 *   };
 *   static int64_t lock_conc(void *arg, long iters) { ...time iters ops... }
 *
 *   int main(int argc, char **argv) {
 *       bench_init(argc, argv, "bench_sync", metrics, BENCH_ARRAY_LEN(metrics));
 *       static const bench_case lock[] = {
 *           { "conc", lock_conc, NULL }, { "pthread", lock_pthread, NULL },
 *       };
 *       bench_compare("lock_uncontended", lock, BENCH_ARRAY_LEN(lock),
 *                     bench_iters(20000000, 2000000), BENCH_BEST);
 *       ...
 *       char *peer[] = { (char *)bench_python(),
 *                        (char *)bench_peer_path("sync_threading.py"), NULL };
 *       bench_peer_run("python", peer, 600.0);
 *       return bench_report();
 *   }
 *
 * Command line (parsed by bench_init, shared by every benchmark):
 *   --tsv            print METRIC<TAB>SYSTEM<TAB>VALUE<TAB>UNIT lines, no table
 *   --quick          few iterations and repetitions (smoke test, ~seconds)
 *   --python PATH    the Python interpreter for Python peers (/usr/bin/python3)
 *   --metric A,B     run only these metrics
 *   --system A,B     run only these systems (conc, pthread, python, ...)
 *   --reps N         repetitions per measurement (default 5, quick 2)
 *   --scale F        multiply every iteration count by F
 *   --no-pin         do not pin the threads of multi-threaded measurements
 *   --verbose        print every repetition's ns/operation on stderr
 *   --help
 *
 * Units: "ops/s", "msg/s", "req/s" (any unit ending in "/s": higher is
 * better) or "ns", "us", "ms", "s", "bytes" (lower is better).  The table
 * shows, for each peer, conc's advantage: value_conc / value_peer for a rate,
 * value_peer / value_conc for a time or a size, so > 1.00x always means that
 * conc is better.  The conc figure is the system "conc", else the first
 * "conc-MODEL"; a peer named MODEL or ending in "-MODEL" is compared against
 * "conc-MODEL" instead (fork and python-fork against conc-fork).
 *
 * A system that cannot run (a missing interpreter or package, a peer program
 * that fails) is recorded with bench_skip: the table says "skipped (why)" and
 * the TSV output has the line METRIC<TAB>SYSTEM<TAB>skipped<TAB>UNIT (the
 * reason goes to stderr).  A measurement whose self-check fails is recorded
 * with bench_fail: it shows as "FAILED why" / VALUE "failed" and makes
 * bench_report return 1.
 */
#ifndef CONC_BENCHLIB_H
#define CONC_BENCHLIB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BENCH_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* A metric a benchmark reports: its name, unit and a one-line description. */
typedef struct bench_metric {
    const char *name;
    const char *unit;
    const char *help;
} bench_metric;

/* How repetitions are condensed into one figure. */
typedef enum bench_pick {
    BENCH_BEST,     /* the fastest repetition (single-thread micro-benchmarks) */
    BENCH_MEDIAN    /* the median repetition (anything with threads) */
} bench_pick;

/*
 * bench_init - parse the command line and register the program's metrics
 * (their order is the table's order).  Prints usage and exits 0 for --help,
 * exits 2 for a bad argument.  Call once, first.
 */
/* glibc takes cheaper paths (no atomic instruction for a private mutex, a
 * lighter fork) while a process has never had a second thread
 * (__libc_single_threaded).  No program that needs locks runs like that, and
 * whether conc starts a thread of its own must not change the state the
 * peers run in: start and join one thread before measuring. */
void bench_become_multithreaded(void);

void bench_init(int argc, char **argv, const char *title,
                const bench_metric *metrics, size_t n_metrics);

bool bench_tsv(void);           /* --tsv given */
bool bench_quick(void);         /* --quick given */
const char *bench_python(void); /* --python PATH, default /usr/bin/python3 */
int bench_reps(void);           /* repetitions per measurement */
double bench_scale(void);       /* --scale, 1.0 by default */

/* bench_iters - the iteration count to use: `full`, or `quick` under
 * --quick, times --scale (at least 1). */
long bench_iters(long full, long quick);

/* bench_enabled - whether --metric/--system select this pair (either may be
 * NULL to ask about only the other). */
bool bench_enabled(const char *metric, const char *system);

/*
 * CPU pinning.  On a small (virtual) machine the scheduler sometimes puts two
 * busy threads on one CPU, where they take turns instead of contending, and
 * results swing by 10x from run to run.  Multi-threaded measurements
 * therefore pin their worker n to the n-th CPU the process may use (wrapping
 * around), unless --no-pin was given or only one CPU is available.
 *
 * bench_cpu - the CPU worker `slot` is pinned to, or -1 for no pinning.
 * bench_pin_self - pin the calling thread to bench_cpu(slot); returns 0, or
 * -errno (nothing happens and 0 is returned when pinning is off).
 * bench_cpu_list - the CPUs of slots 0..n-1 as "a,b,...", or "" when
 * pinning is off (for passing to peers); a static buffer.
 */
int bench_cpu(int slot);
int bench_pin_self(int slot);
const char *bench_cpu_list(int n);

/* bench_pin_worker - bench_pin_self(slot), saying on stderr when pinning
 * fails (the measurement goes on unpinned). */
void bench_pin_worker(int slot);

/* bench_worker_enter - the first step of a fork()ed worker process: die
 * with the parent (PR_SET_PDEATHSIG), _exit(1) at once when `parent` has
 * already gone, and pin to worker slot `slot` (bench_pin_worker). */
void bench_worker_enter(int slot, pid_t parent);

/* bench_die - "PROG: what failed: err (reason)" on stderr, exit 1; err is an
 * errno value, negative or not. */
void bench_die(const char *what, int err) __attribute__((noreturn));

/* bench_metric_unit - the registered unit of a metric ("" when unknown). */
const char *bench_metric_unit(const char *metric);

/* bench_now - CLOCK_MONOTONIC in nanoseconds. */
int64_t bench_now(void);

/*
 * A timed body: perform `iters` operations (however it splits them among
 * threads) and return the nanoseconds they took, measured by the body itself
 * so that set-up (creating threads, filling buffers) stays outside the
 * timing.  A negative return is a failure: -errno, or any negative value
 * after the body printed why on stderr.
 */
typedef int64_t (*bench_body)(void *arg, long iters);

/*
 * bench_measure - the plain timing helper, for a body outside any
 * comparison: run it once as a warm-up (iters/10 operations), then `reps`
 * times with `iters` operations, and store the best or median nanoseconds
 * per operation in *ns_per_op (nothing is recorded).  reps <= 0 means
 * bench_reps().  Returns 0, or the body's negative return value.
 */
int bench_measure(bench_body body, void *arg, long iters, int reps,
                  bench_pick pick, double *ns_per_op);

/* One system's entry in a comparison. */
typedef struct bench_case {
    const char *system;
    bench_body body;
    void *arg;
} bench_case;

/*
 * bench_compare - measure one metric for several systems and record each.
 * A warm-up round runs each enabled system with iters/1000 operations,
 * then ten times as many, until a run takes a tenth of the time budget;
 * from that speed each system gets the number of operations that fits in
 * the budget (~150 ms, 15 ms with --quick, times --scale), at most `iters`.
 * Then bench_reps() rounds run every system once each, the systems taking
 * turns (a different one first each round) so that a machine whose speed
 * drifts treats them alike.  `iters` is thus a cap: make it large enough
 * for the fastest system to fill the budget.  Each system's best or median
 * becomes ns/operation, recorded in the metric's registered unit ("ns",
 * "us", "ms", or a rate "X/s" = operations/second).
 * A system whose body fails is recorded as failed.  A watchdog ends the
 * program (exit 3) when one run takes more than 30 s x (reps + 1).
 * Returns 0 or the last body error.
 */
int bench_compare(const char *metric, const bench_case *cases, size_t n_cases,
                  long iters, bench_pick pick);

/* bench_compare_pthread - bench_compare for the usual pair of systems:
 * "conc" running conc_body and "pthread" running pthread_body (both with a
 * NULL arg). */
int bench_compare_pthread(const char *metric, bench_body conc_body, bench_body pthread_body,
                          long iters, bench_pick pick);

/*
 * A two-thread run: bench_run_pair runs fn(ctx, 0, iters) and
 * fn(ctx, 1, iters) in two new threads, each pinned to its worker slot
 * (0 and 1) and released together by a barrier, and returns the nanoseconds
 * from the first start to the last end.  Exits when a thread cannot start.
 */
typedef void (*bench_side_fn)(void *ctx, int side, long iters);
int64_t bench_run_pair(bench_side_fn fn, void *ctx, long iters);

/* bench_run - bench_compare for a single system. */
int bench_run(const char *metric, const char *system, bench_body body,
              void *arg, long iters, bench_pick pick);

/* bench_record - record a measurement. */
void bench_record(const char *metric, const char *system, double value,
                  const char *unit);

/* bench_skip - record that a system could not run a metric, and why.
 * unit NULL means the metric's registered unit. */
void bench_skip(const char *metric, const char *system, const char *unit,
                const char *reason);

/* bench_fail - record that a measurement ran but failed (wrong result,
 * error); printf-style reason.  Makes bench_report return 1. */
void bench_fail(const char *metric, const char *system, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* bench_peer_path - the absolute path of a file in bench/peers/ (the
 * CONC_BENCH_PEERS directory, or the environment variable of that name).
 * Returns a static buffer, valid until the next call. */
const char *bench_peer_path(const char *file);

/*
 * bench_peer_run - run an external peer program and record what it prints.
 *
 * argv[0] is the program (a path, or a name looked up in PATH).  Every line
 * of its standard output of the form METRIC<TAB>SYSTEM<TAB>VALUE<TAB>UNIT is
 * recorded (VALUE may be "skipped"); lines starting with '#' and blank lines
 * are ignored; its standard error passes through.  When the program cannot
 * be started, fails, or runs past timeout_s seconds (it is then killed),
 * every registered and enabled metric it did not report for `system` is
 * recorded as skipped with the reason.  Returns 0 when the peer ran and
 * exited 0, else -1.
 */
int bench_peer_run(const char *system, char *const argv[], double timeout_s);

/*
 * bench_peer_run_for - bench_peer_run for a system that takes part in only
 * some metrics: `expect` is the NULL-terminated list of the metrics the peer
 * should report for `system` (NULL: every registered metric), and only those
 * are recorded as skipped when it does not report them.
 */
int bench_peer_run_for(const char *system, const char *const expect[],
                       char *const argv[], double timeout_s);

/*
 * bench_peer_run_metrics - run a peer that takes the common peer command
 * line, PROG [SCRIPT] [--system SYSTEM] --reps N [--cpus LIST] SCALE
 * METRIC..., for those of `which` (NULL-terminated) that are enabled for
 * `system` (nothing runs when none is).  --system is passed when
 * `pick_system`, --cpus when `cpus` is neither NULL nor "".  Metrics the peer
 * does not report are recorded as skipped.
 */
void bench_peer_run_metrics(const char *system, bool pick_system, const char *prog,
                            const char *script, int reps, const char *cpus, double scale,
                            const char *const which[]);

/*
 * bench_report - print the table (unless --tsv: TSV lines are printed as
 * they are recorded).  Returns the process exit status: 0, or 1 when a
 * measurement failed.
 */
int bench_report(void);

/* bench_in_path - whether `name` is an executable in PATH (command -v). */
bool bench_in_path(const char *name);

#ifdef __cplusplus
}
#endif
#endif /* CONC_BENCHLIB_H */
