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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peerlib import WrongResult, run_pair  # noqa: E402
import peerlib  # noqa: E402

SYSTEM = "python"
MAXSIZE = 1024


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


if __name__ == "__main__":
    sys.exit(peerlib.main(sys.argv[1:], __doc__,
                          [(SYSTEM, name, body, unit, base, "median")
                           for name, body, unit, base in METRICS], min_iters=100))
