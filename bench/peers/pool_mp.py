#!/usr/bin/env python3
"""Python peer of bench_pool: the same jobs with multiprocessing.Pool and
concurrent.futures.

usage: pool_mp.py [--reps N] [--workers W] [SCALE] [METRIC ...]

SCALE multiplies every iteration count (default 1.0); METRICs select a subset
(default: all).  --workers sets the worker count of every pool and executor
(default 2, what bench_pool uses).  Prints one line per metric,
METRIC<TAB>python<TAB>VALUE<TAB>UNIT, the median of the repetitions, with the
same definitions as bench_pool.c.  The task is square(x) = x * x on an int;
every pool is made (and its workers started) before the clock starts, with
the "fork" start method:

  pool_map_chunk1              tasks/s: Pool(W).map(square, range(n), chunksize=1)
  pool_map_default             tasks/s: Pool(W).map(square, range(n)) (Python's
                               default chunksize: n / (4 W), rounded up)
  pool_apply_rtt               tasks/s: Pool(W).apply(square, (i,)), one after
                               another (round trips per second)
  pool_apply_async             tasks/s: apply_async(square, (i,)) n times, then
                               get() each
  threadpool_executor_submit   tasks/s: ThreadPoolExecutor(W).submit(square, i)
                               n times, then result() each
  processpool_executor_submit  tasks/s: ProcessPoolExecutor(W) (fork), the same

Every result is checked; a wrong one prints VALUE "failed".
"""
import concurrent.futures
import multiprocessing
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peerlib import WrongResult, now  # noqa: E402
import peerlib  # noqa: E402

WORKERS = 2
CTX = multiprocessing.get_context("fork")


def square(x):
    return x * x


def check(results, n):
    if len(results) != n:
        raise WrongResult("%d results, expected %d" % (len(results), n))
    for i, r in enumerate(results):
        if r != i * i:
            raise WrongResult("result %d is %r, expected %d" % (i, r, i * i))


def warm(pool):
    # Every worker has started and answered once before the clock starts.
    pool.map(square, range(WORKERS * 4), chunksize=1)


def pool_map(chunksize):
    def body(n):
        with CTX.Pool(WORKERS) as pool:
            warm(pool)
            t0 = now()
            if chunksize:
                results = pool.map(square, range(n), chunksize=chunksize)
            else:
                results = pool.map(square, range(n))
            ns = now() - t0
        check(results, n)
        return ns
    return body


def pool_apply_rtt(n):
    with CTX.Pool(WORKERS) as pool:
        warm(pool)
        apply = pool.apply
        results = []
        t0 = now()
        for i in range(n):
            results.append(apply(square, (i,)))
        ns = now() - t0
    check(results, n)
    return ns


def pool_apply_async(n):
    with CTX.Pool(WORKERS) as pool:
        warm(pool)
        apply_async = pool.apply_async
        t0 = now()
        pending = [apply_async(square, (i,)) for i in range(n)]
        results = [r.get() for r in pending]
        ns = now() - t0
    check(results, n)
    return ns


def executor_submit(make):
    def body(n):
        with make() as ex:
            list(ex.map(square, range(WORKERS * 4)))
            submit = ex.submit
            t0 = now()
            futures = [submit(square, i) for i in range(n)]
            results = [f.result() for f in futures]
            ns = now() - t0
        check(results, n)
        return ns
    return body


# system, metric, body, unit, base iteration count, pick
METRICS = [
    ("python", "pool_map_chunk1", pool_map(1), "tasks/s", 40000, "median"),
    ("python", "pool_map_default", pool_map(None), "tasks/s", 400000, "median"),
    ("python", "pool_apply_rtt", pool_apply_rtt, "tasks/s", 5000, "median"),
    ("python", "pool_apply_async", pool_apply_async, "tasks/s", 20000, "median"),
    ("python", "threadpool_executor_submit",
     executor_submit(lambda: concurrent.futures.ThreadPoolExecutor(WORKERS)),
     "tasks/s", 40000, "median"),
    ("python", "processpool_executor_submit",
     executor_submit(lambda: concurrent.futures.ProcessPoolExecutor(WORKERS, mp_context=CTX)),
     "tasks/s", 10000, "median"),
]


if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--workers" in argv:
        i = argv.index("--workers")
        try:
            WORKERS = int(argv[i + 1])
            if WORKERS < 1:
                raise ValueError
        except (IndexError, ValueError):
            print("pool_mp.py: --workers wants a whole number >= 1", file=sys.stderr)
            sys.exit(2)
        del argv[i:i + 2]
    sys.exit(peerlib.main(argv, __doc__, METRICS, min_iters=WORKERS * 4))
