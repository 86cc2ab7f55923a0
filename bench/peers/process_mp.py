#!/usr/bin/env python3
"""Python peer of bench_process: the same metrics with the multiprocessing module.

usage: process_mp.py [--system NAME] [--reps N] [--cpus A,B] [SCALE] [METRIC ...]

SCALE multiplies every iteration count (default 1.0); METRICs select a subset
(default: all of the system's).  --system selects one system (default: all
three, one after the other); --cpus pins the two workers of
shared_lock_contended to CPUs A and B, as bench_process does with its own.
Prints one line per metric and system, METRIC<TAB>SYSTEM<TAB>VALUE<TAB>UNIT,
with the same units and definitions as bench_process.c:

  python-fork, python-forkserver:
    process_start_join       processes/s: get_context(METHOD).Process(
                             target=empty).start(); join()     (median of reps)
  python:
    shared_lock_uncontended  ns per multiprocessing.Lock acquire+release pair,
                             one process                       (best of reps)
    shared_lock_contended    ops/s, 2 forked processes each doing acquire;
                             counter.value += 1; release        (median of reps)
    value_incr_locked        ops/s, one process: with v.get_lock(): v.value += 1
                             on multiprocessing.Value('l')      (best of reps)

A result that is wrong (a child's exit code, a lost increment) prints VALUE
"failed"; a start method this Python lacks prints VALUE "skipped".
"""
import multiprocessing
import os
import sys
import time

PIN = []            # CPUs for worker 0, 1 of shared_lock_contended (empty: no pinning)


def now():
    return time.perf_counter_ns()   # CLOCK_MONOTONIC: comparable between processes


class WrongResult(Exception):
    pass


class Unavailable(Exception):
    pass


def empty():
    pass


# Each body takes an iteration count and returns the elapsed ns for that
# many operations.

def start_join(method):
    try:
        ctx = multiprocessing.get_context(method)
    except ValueError as e:
        raise Unavailable(str(e))

    def body(n):
        Process = ctx.Process
        t0 = now()
        for _ in range(n):
            p = Process(target=empty)
            p.start()
            p.join()
            if p.exitcode != 0:
                raise WrongResult("child exit code %r, expected 0" % p.exitcode)
        return now() - t0
    return body


def shared_lock_uncontended(n):
    lock = multiprocessing.Lock()
    acquire, release = lock.acquire, lock.release
    t0 = now()
    for _ in range(n):
        acquire()
        release()
    return now() - t0


def contended_worker(side, half, lock, counter, barrier, times):
    if PIN:
        os.sched_setaffinity(0, {PIN[side % len(PIN)]})
    acquire, release = lock.acquire, lock.release
    barrier.wait()
    t0 = now()
    for _ in range(half):
        acquire()
        counter.value += 1
        release()
    times[2 * side] = t0
    times[2 * side + 1] = now()


def shared_lock_contended(n):
    # The workers are forked, like bench_process's own; only the lock differs.
    ctx = multiprocessing.get_context("fork")
    lock = ctx.Lock()
    counter = ctx.RawValue("l", 0)
    barrier = ctx.Barrier(2)
    times = ctx.RawArray("q", 4)
    half = max(n // 2, 1)
    procs = [ctx.Process(target=contended_worker,
                         args=(side, half, lock, counter, barrier, times))
             for side in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    for p in procs:
        if p.exitcode != 0:
            raise WrongResult("worker exit code %r" % p.exitcode)
    if counter.value != 2 * half:
        raise WrongResult("counter %d, expected %d" % (counter.value, 2 * half))
    ns = max(times[1], times[3]) - min(times[0], times[2])
    return ns * n / (2 * half)


def value_incr_locked(n):
    v = multiprocessing.Value("l", 0)
    t0 = now()
    for _ in range(n):
        with v.get_lock():              # the idiom, as bench_process does it
            v.value += 1
    ns = now() - t0
    if v.value != n:
        raise WrongResult("value %d, expected %d" % (v.value, n))
    return ns


# system, metric, body factory, unit, base iteration count, pick
METRICS = [
    ("python-fork", "process_start_join", lambda: start_join("fork"), "ops/s", 200, "median"),
    ("python-forkserver", "process_start_join", lambda: start_join("forkserver"), "ops/s", 100, "median"),
    ("python", "shared_lock_uncontended", lambda: shared_lock_uncontended, "ns", 1000000, "best"),
    ("python", "shared_lock_contended", lambda: shared_lock_contended, "ops/s", 200000, "median"),
    ("python", "value_incr_locked", lambda: value_incr_locked, "ops/s", 500000, "best"),
]
SYSTEMS = ["python-fork", "python-forkserver", "python"]


def measure(body, n, reps, pick):
    body(max(n // 10, 1))                      # warm-up (starts a forkserver)
    times = sorted(body(n) for _ in range(reps))
    if pick == "best":
        chosen = times[0]
    elif reps % 2:
        chosen = times[reps // 2]
    else:
        chosen = (times[reps // 2 - 1] + times[reps // 2]) / 2
    return chosen / n                          # ns per operation


def main(argv):
    reps = 3
    scale = 1.0
    systems = []
    wanted = []
    args = list(argv)
    try:
        while args:
            a = args.pop(0)
            if a == "--reps":
                reps = int(args.pop(0))
            elif a == "--cpus":
                PIN[:] = [int(c) for c in args.pop(0).split(",") if c]
            elif a == "--system":
                systems.append(args.pop(0))
            elif a in ("-h", "--help"):
                print(__doc__)
                return 0
            elif a[0].isdigit() or a[0] == ".":
                scale = float(a)
            else:
                wanted.append(a)
    except (IndexError, ValueError):
        print("process_mp.py: bad arguments %r" % (argv,), file=sys.stderr)
        return 2
    for s in systems:
        if s not in SYSTEMS:
            print("process_mp.py: unknown system %r" % s, file=sys.stderr)
            return 2
    for w in wanted:
        if not any(m[1] == w and (not systems or m[0] in systems) for m in METRICS):
            print("process_mp.py: unknown metric %r for %s" % (w, systems or "any system"),
                  file=sys.stderr)
            return 2
    if reps < 1 or not scale > 0:
        print("process_mp.py: bad --reps or SCALE", file=sys.stderr)
        return 2

    status = 0
    for system, name, factory, unit, base, pick in METRICS:
        if (systems and system not in systems) or (wanted and name not in wanted):
            continue
        n = max(int(base * scale), 1)
        try:
            ns = measure(factory(), n, reps, pick)
        except Unavailable as e:
            print("process_mp.py: %s/%s: %s" % (name, system, e), file=sys.stderr)
            print("%s\t%s\tskipped\t%s" % (name, system, unit), flush=True)
            continue
        except WrongResult as e:
            print("process_mp.py: %s/%s: %s" % (name, system, e), file=sys.stderr)
            print("%s\t%s\tfailed\t%s" % (name, system, unit), flush=True)
            status = 1
            continue
        value = ns if unit == "ns" else 1e9 / ns
        print("%s\t%s\t%.6g\t%s" % (name, system, value, unit), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
