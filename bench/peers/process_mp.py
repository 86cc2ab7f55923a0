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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peerlib import Unavailable, WrongResult, now, pin  # noqa: E402
import peerlib  # noqa: E402


def empty():
    pass


# Each body takes an iteration count and returns the elapsed ns for that
# many operations.

def start_join(method):
    def body(n):
        try:
            ctx = multiprocessing.get_context(method)
        except ValueError as e:
            raise Unavailable(str(e))
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
    return peerlib.time_acquire_release(multiprocessing.Lock(), n)


def contended_worker(side, half, lock, counter, barrier, times):
    pin(side)
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


# system, metric, body, unit, base iteration count, pick
METRICS = [
    ("python-fork", "process_start_join", start_join("fork"), "ops/s", 200, "median"),
    ("python-forkserver", "process_start_join", start_join("forkserver"), "ops/s", 100, "median"),
    ("python", "shared_lock_uncontended", shared_lock_uncontended, "ns", 1000000, "best"),
    ("python", "shared_lock_contended", shared_lock_contended, "ops/s", 200000, "median"),
    ("python", "value_incr_locked", value_incr_locked, "ops/s", 500000, "best"),
]


if __name__ == "__main__":
    sys.exit(peerlib.main(sys.argv[1:], __doc__, METRICS))
