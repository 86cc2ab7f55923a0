#!/usr/bin/env python3
"""gevent peer of bench_coro: the hub metrics with gevent.

usage: coro_gevent.py [--reps N] [--n N] [SCALE] [METRIC ...]

SCALE multiplies the iteration counts (default 1.0); METRICs select a subset
(default: the timed ones).  Prints one line per metric,
METRIC<TAB>gevent<TAB>VALUE<TAB>UNIT, the best of N repetitions:

  spawn_join           ns per gevent.spawn(f).join() of a function that
                       returns at once
  yield                ns per gevent.sleep(0) while two greenlets take turns
  queue_pingpong       round trips per second (ops/s) between two greenlets
                       through two gevent.queue.Queue(maxsize=1)
  rss_per_sleeping     bytes of RSS per sleeping greenlet: spawn --n N
  rss_per_sleeping_1m  greenlets (default 100000) that each sleep an hour,
                       let them all start, divide the RSS growth
                       (/proc/self/statm) by N, then kill them all; run it
                       alone in a fresh interpreter for a clean baseline
                       (the cyclic GC is off while they exist, and the
                       process ends with os._exit: tearing down that many
                       greenlets takes seconds)

A wrong result prints VALUE "failed"; without the gevent module every metric
prints VALUE "skipped" (the reason goes to stderr).
"""
import gc
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peerlib import best_of, now, parse_loose, skip_all  # noqa: E402

SYSTEM = "gevent"
ITERS = {"spawn_join": 30000, "yield": 300000, "queue_pingpong": 100000}
UNITS = {"spawn_join": "ns", "yield": "ns", "queue_pingpong": "ops/s",
         "rss_per_sleeping": "bytes", "rss_per_sleeping_1m": "bytes"}
TIMED = ["spawn_join", "yield", "queue_pingpong"]


def spawn_join_run(n):
    import gevent

    def plus_one(v):
        return v + 1

    spawn = gevent.spawn
    total = 0
    t0 = now()
    for i in range(n):
        g = spawn(plus_one, i)
        g.join()
        total += g.value
    ns = now() - t0
    if total != n * (n + 1) // 2:
        return None
    return ns / n


def yield_run(n):
    import gevent
    half = max(1, n // 2)
    done = [0]

    def loop():
        sleep = gevent.sleep
        for _ in range(half):
            sleep(0)
        done[0] += half

    t0 = now()
    gevent.joinall([gevent.spawn(loop), gevent.spawn(loop)])
    ns = now() - t0
    if done[0] != 2 * half:
        return None
    return ns / (2 * half)


def pingpong_run(n):
    import gevent
    from gevent.queue import Queue
    ping, pong = Queue(maxsize=1), Queue(maxsize=1)
    bad = [0]

    def pinger():
        put, get = ping.put, pong.get
        for i in range(1, n + 1):
            put(i)
            if get() != i:
                bad[0] += 1
        put(None)

    def ponger():
        get, put = ping.get, pong.put
        while True:
            v = get()
            if v is None:
                break
            put(v)

    t0 = now()
    gevent.joinall([gevent.spawn(ponger), gevent.spawn(pinger)])
    ns = now() - t0
    if bad[0]:
        return None
    return ns / n


RUNS = {"spawn_join": spawn_join_run, "yield": yield_run,
        "queue_pingpong": pingpong_run}


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_run(n):
    import gevent
    started = [0]

    def sleeper():
        started[0] += 1
        gevent.sleep(3600)

    gc.collect()
    gc.disable()                # full collections over n greenlets: slow
    before = rss_bytes()
    gs = [gevent.spawn(sleeper) for _ in range(n)]
    while started[0] < n:
        gevent.sleep(0)
    after = rss_bytes()
    gevent.killall(gs)
    if not all(g.dead for g in gs):
        return None
    return (after - before) / n


def main(argv):
    counts, scale, want = parse_loose(argv, {"reps": 5, "n": 100000})
    names = [m for m in UNITS if (m in want if want else m in TIMED)]
    try:
        import gevent  # noqa: F401
        import gevent.queue  # noqa: F401
    except ImportError as e:
        skip_all(e, "python3-gevent", SYSTEM, {m: UNITS[m] for m in names})
        return 0
    for m in names:
        if m.startswith("rss_"):
            v = rss_run(counts["n"])
            print(f"{m}\t{SYSTEM}\t{'failed' if v is None else f'{v:.1f}'}\tbytes",
                  flush=True)
            continue
        n = max(1000, int(ITERS[m] * scale))
        best = best_of(RUNS[m], n, counts["reps"])
        if best is None:
            out = "failed"
        elif UNITS[m] == "ops/s":
            out = f"{1e9 / best:.1f}"
        else:
            out = f"{best:.3f}"
        print(f"{m}\t{SYSTEM}\t{out}\t{UNITS[m]}", flush=True)
    if any(m.startswith("rss_") for m in names):
        os._exit(0)             # tearing down 100000 dead greenlets takes seconds
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
