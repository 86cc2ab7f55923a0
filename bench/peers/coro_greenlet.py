#!/usr/bin/env python3
"""greenlet peer of bench_coro: the same metrics with Python's greenlet.

usage: coro_greenlet.py [--reps N] [SCALE] [METRIC ...]

SCALE multiplies the iteration counts (default 1.0); METRICs select a subset
(default: all).  Prints one line per metric, METRIC<TAB>greenlet<TAB>VALUE<TAB>ns,
the best of N repetitions:

  switch  ns per switch: the main greenlet and one greenlet switch back and
          forth passing a value (a round trip is two switches)
  create  ns to create a greenlet, switch into it, get its return value
          back (it returns to its parent), and drop it

A wrong echoed value or sum prints VALUE "failed"; without the greenlet
module every metric prints VALUE "skipped" (the reason goes to stderr).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peerlib import best_of, now, parse_loose, skip_all  # noqa: E402

SYSTEM = "greenlet"
ITERS = {"switch": 2000000, "create": 300000}


def switch_run(n):
    from greenlet import greenlet, getcurrent
    main = getcurrent()

    def echo(v):
        sw = main.switch
        while True:
            v = sw(v)

    g = greenlet(echo)
    g.switch(None)                      # start it
    sw = g.switch
    v = None
    t0 = now()
    for i in range(n):
        v = sw(i)
    ns = now() - t0
    if v != n - 1:
        return None
    return ns / (2 * n)


def create_run(n):
    from greenlet import greenlet

    def add_one(v):
        return v + 1

    total = 0
    t0 = now()
    for i in range(n):
        total += greenlet(add_one).switch(i)
    ns = now() - t0
    if total != n * (n + 1) // 2:
        return None
    return ns / n


RUNS = {"switch": switch_run, "create": create_run}


def main(argv):
    counts, scale, want = parse_loose(argv, {"reps": 5})
    names = [m for m in RUNS if not want or m in want]
    try:
        import greenlet  # noqa: F401
    except ImportError as e:
        skip_all(e, "python3-greenlet", SYSTEM, {m: "ns" for m in names})
        return 0
    for m in names:
        n = max(1000, int(ITERS[m] * scale))
        best = best_of(RUNS[m], n, counts["reps"])
        print(f"{m}\t{SYSTEM}\t{'failed' if best is None else f'{best:.3f}'}\tns", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
