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
import sys
import time

SYSTEM = "greenlet"
ITERS = {"switch": 2000000, "create": 300000}


def now():
    return time.perf_counter_ns()


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
    reps, scale, want = 5, 1.0, []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--reps" and i + 1 < len(argv):
            reps = max(1, int(argv[i + 1]))
            i += 1
        elif a[:1].isdigit() or a[:1] == ".":
            scale = float(a)
        else:
            want.append(a)
        i += 1
    names = [m for m in RUNS if not want or m in want]
    try:
        import greenlet  # noqa: F401
    except ImportError as e:
        print(f"coro_greenlet.py: {e} (install python3-greenlet)", file=sys.stderr)
        for m in names:
            print(f"{m}\t{SYSTEM}\tskipped\tns")
        return 0
    for m in names:
        n = max(1000, int(ITERS[m] * scale))
        RUNS[m](max(100, n // 10))      # warm-up
        best, failed = None, False
        for _ in range(reps):
            v = RUNS[m](n)
            if v is None:
                failed = True
            elif best is None or v < best:
                best = v
        print(f"{m}\t{SYSTEM}\t{'failed' if failed else f'{best:.3f}'}\tns", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
