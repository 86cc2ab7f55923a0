#!/usr/bin/env python3
"""Python peer of bench_sync: the same five metrics with the threading module.

usage: sync_threading.py [--reps N] [--cpus A,B] [SCALE] [METRIC ...]

SCALE multiplies every iteration count (default 1.0); METRICs select a subset
(default: all).  --cpus pins the two workers of the two-thread metrics to
CPUs A and B, as bench_sync does with its own workers.  Prints one line per metric, METRIC<TAB>python<TAB>VALUE<TAB>UNIT,
with the same units and definitions as bench_sync.c:

  lock_uncontended   ns per acquire+release pair, one thread       (best of reps)
  lock_contended     ops/s, 2 threads: acquire; counter += 1; release
  event_pingpong     round trips/s: A sets e1, waits e2, clears e2;
                     B waits e1, clears e1, sets e2
  cond_prodcons      items/s, 1 producer -> 64-slot buffer -> 1 consumer,
                     one Lock and two Conditions (not_full, not_empty)
  thread_start_join  threads/s: Thread(target=empty).start(); join()

Multi-threaded metrics take the median of the repetitions.  A result that is
wrong (mutual exclusion broken, items lost) prints VALUE "failed".
"""
import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peerlib import WrongResult, now, run_pair  # noqa: E402
import peerlib  # noqa: E402

SYSTEM = "python"
SLOTS = 64


# Each body takes an iteration count and returns the elapsed ns for that
# many operations.

def lock_uncontended(n):
    return peerlib.time_acquire_release(threading.Lock(), n)


def lock_contended(n):
    lock = threading.Lock()
    half = max(n // 2, 1)
    state = [0]

    def side():
        acquire, release = lock.acquire, lock.release
        for _ in range(half):
            acquire()
            state[0] += 1
            release()

    ns = run_pair(side, side)
    if state[0] != 2 * half:
        raise WrongResult("counter %d, expected %d" % (state[0], 2 * half))
    return ns * n / (2 * half)


def event_pingpong(n):
    e1, e2 = threading.Event(), threading.Event()

    def side_a():
        for _ in range(n):
            e1.set()
            e2.wait()
            e2.clear()

    def side_b():
        for _ in range(n):
            e1.wait()
            e1.clear()
            e2.set()

    return run_pair(side_a, side_b)


def cond_prodcons(n):
    lock = threading.Lock()
    not_full = threading.Condition(lock)
    not_empty = threading.Condition(lock)
    buf = [0] * SLOTS
    st = {"head": 0, "count": 0, "sum": -1}

    def producer():
        for i in range(1, n + 1):
            with lock:
                while st["count"] == SLOTS:
                    not_full.wait()
                buf[(st["head"] + st["count"]) % SLOTS] = i
                st["count"] += 1
                not_empty.notify()

    def consumer():
        total = 0
        for _ in range(n):
            with lock:
                while st["count"] == 0:
                    not_empty.wait()
                total += buf[st["head"]]
                st["head"] = (st["head"] + 1) % SLOTS
                st["count"] -= 1
                not_full.notify()
        st["sum"] = total

    ns = run_pair(producer, consumer)
    if st["sum"] != n * (n + 1) // 2 or st["count"] != 0:
        raise WrongResult("sum %d, expected %d" % (st["sum"], n * (n + 1) // 2))
    return ns


def empty():
    pass


def thread_start_join(n):
    Thread = threading.Thread
    t0 = now()
    for _ in range(n):
        t = Thread(target=empty)
        t.start()
        t.join()
    return now() - t0


# name, body, unit, base iteration count, pick
METRICS = [
    ("lock_uncontended", lock_uncontended, "ns", 1000000, "best"),
    ("lock_contended", lock_contended, "ops/s", 400000, "median"),
    ("event_pingpong", event_pingpong, "ops/s", 5000, "median"),
    ("cond_prodcons", cond_prodcons, "ops/s", 100000, "median"),
    ("thread_start_join", thread_start_join, "ops/s", 2000, "median"),
]


if __name__ == "__main__":
    sys.exit(peerlib.main(sys.argv[1:], __doc__,
                          [(SYSTEM, name, body, unit, base, pick)
                           for name, body, unit, base, pick in METRICS]))
