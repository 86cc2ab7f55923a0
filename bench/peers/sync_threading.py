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
import time

SYSTEM = "python"
SLOTS = 64
PIN = []            # CPUs for worker 0, 1 of run_pair (empty: no pinning)


def now():
    return time.perf_counter_ns()


def run_pair(side_a, side_b):
    """Run side_a() and side_b() in two threads released together; return
    the ns from the first start to the last end."""
    start = threading.Barrier(2)
    times = [None, None]

    def wrap(i, fn):
        if PIN:
            # On Linux, pid 0 means the calling thread.
            os.sched_setaffinity(0, {PIN[i % len(PIN)]})
        start.wait()
        t0 = now()
        fn()
        times[i] = (t0, now())

    threads = [threading.Thread(target=wrap, args=(0, side_a)),
               threading.Thread(target=wrap, args=(1, side_b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return max(t[1] for t in times) - min(t[0] for t in times)


class WrongResult(Exception):
    pass


# Each body takes an iteration count and returns the elapsed ns for that
# many operations.

def lock_uncontended(n):
    lock = threading.Lock()
    acquire, release = lock.acquire, lock.release
    t0 = now()
    for _ in range(n):
        acquire()
        release()
    return now() - t0


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


def measure(body, n, reps, pick):
    body(max(n // 10, 1))                      # warm-up
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
    wanted = []
    args = list(argv)
    while args:
        a = args.pop(0)
        if a == "--reps":
            reps = int(args.pop(0))
        elif a == "--cpus":
            PIN[:] = [int(c) for c in args.pop(0).split(",") if c]
        elif a in ("-h", "--help"):
            print(__doc__)
            return 0
        elif a[0].isdigit() or a[0] == ".":
            scale = float(a)
        else:
            wanted.append(a)
    names = [m[0] for m in METRICS]
    for w in wanted:
        if w not in names:
            print("sync_threading.py: unknown metric %r" % w, file=sys.stderr)
            return 2
    if reps < 1 or not scale > 0:
        print("sync_threading.py: bad --reps or SCALE", file=sys.stderr)
        return 2

    status = 0
    for name, body, unit, base, pick in METRICS:
        if wanted and name not in wanted:
            continue
        n = max(int(base * scale), 1)
        try:
            ns = measure(body, n, reps, pick)
        except WrongResult as e:
            print("sync_threading.py: %s: %s" % (name, e), file=sys.stderr)
            print("%s\t%s\tfailed\t%s" % (name, SYSTEM, unit), flush=True)
            status = 1
            continue
        value = ns if unit == "ns" else 1e9 / ns
        print("%s\t%s\t%.6g\t%s" % (name, SYSTEM, value, unit), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
