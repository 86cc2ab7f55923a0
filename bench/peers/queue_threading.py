#!/usr/bin/env python3
"""Python peer of bench_queue: the thread-queue metrics with queue.Queue.

usage: queue_threading.py [--reps N] [--cpus A,B] [SCALE] [METRIC ...]

SCALE multiplies every iteration count (default 1.0); METRICs select a subset
(default: both).  --cpus pins the two threads to CPUs A and B, as bench_queue
does with its own.  Prints one line per metric, METRIC<TAB>python<TAB>VALUE<TAB>UNIT,
the median of the repetitions, with the same definitions as bench_queue.c:

  thread_queue_stream    msg/s: one thread puts 1..n into a queue.Queue(1024),
                         another gets them and checks their order
  thread_queue_pingpong  round trips/s: one thread puts i into queue `ping`
                         and gets it back from queue `pong`; the other gets
                         from ping and puts into pong (both Queue(1024))

A value that arrives wrong prints VALUE "failed".
"""
import os
import queue
import sys
import threading
import time

SYSTEM = "python"
MAXSIZE = 1024
PIN = []            # CPUs for thread 0, 1 (empty: no pinning)


def now():
    return time.perf_counter_ns()


class WrongResult(Exception):
    pass


def run_pair(side_a, side_b):
    """Run side_a() and side_b() in two threads released together; return
    the ns from the first start to the last end."""
    start = threading.Barrier(2)
    times = [None, None]

    def wrap(i, fn):
        if PIN:
            os.sched_setaffinity(0, {PIN[i % len(PIN)]})   # 0: this thread
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
    if None in times:
        raise WrongResult("a thread failed")
    return max(t[1] for t in times) - min(t[0] for t in times)


def thread_queue_stream(n):
    q = queue.Queue(MAXSIZE)
    wrong = [0]

    def producer():
        put = q.put
        for i in range(1, n + 1):
            put(i)

    def consumer():
        get = q.get
        bad = 0
        for i in range(1, n + 1):
            if get() != i:
                bad += 1
        wrong[0] = bad

    ns = run_pair(producer, consumer)
    if wrong[0] or not q.empty():
        raise WrongResult("%d items out of order, %d left" % (wrong[0], q.qsize()))
    return ns


def thread_queue_pingpong(n):
    ping, pong = queue.Queue(MAXSIZE), queue.Queue(MAXSIZE)
    wrong = [0]

    def pinger():
        put, get = ping.put, pong.get
        bad = 0
        for i in range(1, n + 1):
            put(i)
            if get() != i:
                bad += 1
        wrong[0] = bad

    def ponger():
        get, put = ping.get, pong.put
        for _ in range(n):
            put(get())

    ns = run_pair(pinger, ponger)
    if wrong[0]:
        raise WrongResult("%d values came back wrong" % wrong[0])
    return ns


# name, body, unit, base iteration count
METRICS = [
    ("thread_queue_stream", thread_queue_stream, "msg/s", 200000),
    ("thread_queue_pingpong", thread_queue_pingpong, "ops/s", 20000),
]


def measure(body, n, reps):
    body(max(n // 10, 1))                      # warm-up
    times = sorted(body(n) for _ in range(reps))
    if reps % 2:
        chosen = times[reps // 2]
    else:
        chosen = (times[reps // 2 - 1] + times[reps // 2]) / 2
    return chosen / n                          # ns per operation


def main(argv):
    reps = 3
    scale = 1.0
    wanted = []
    args = list(argv)
    try:
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
    except (IndexError, ValueError):
        print("queue_threading.py: bad arguments %r" % (argv,), file=sys.stderr)
        return 2
    for w in wanted:
        if not any(m[0] == w for m in METRICS):
            print("queue_threading.py: unknown metric %r" % w, file=sys.stderr)
            return 2
    if reps < 1 or not scale > 0:
        print("queue_threading.py: bad --reps or SCALE", file=sys.stderr)
        return 2

    status = 0
    for name, body, unit, base in METRICS:
        if wanted and name not in wanted:
            continue
        n = max(int(base * scale), 100)
        try:
            ns = measure(body, n, reps)
        except WrongResult as e:
            print("queue_threading.py: %s: %s" % (name, e), file=sys.stderr)
            print("%s\t%s\tfailed\t%s" % (name, SYSTEM, unit), flush=True)
            status = 1
            continue
        print("%s\t%s\t%.6g\t%s" % (name, SYSTEM, 1e9 / ns, unit), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
