"""peerlib.py - what the Python peers of the conc benchmarks share.

Each peer script puts its own directory first in sys.path and imports this
module, so it runs the same from any working directory.

Timed peers (queue_threading.py, queue_mp.py, sync_threading.py,
process_mp.py) hand their table of metrics to main(), which parses the
common command line

    [--system NAME] [--reps N] [--cpus A,B,...] [SCALE] [METRIC ...]

(--system only for a peer with several systems), measures each selected
metric with measure() and prints METRIC<TAB>SYSTEM<TAB>VALUE<TAB>UNIT lines.
A body takes an iteration count and returns the elapsed ns for that many
operations; it raises WrongResult for a wrong result (VALUE "failed") and
Unavailable when the system cannot run it (VALUE "skipped").

The coroutine peers (coro_greenlet.py, coro_gevent.py) use parse_loose(),
best_of() and skip_all(): their runs return ns per operation, or None for a
wrong result, and they report the best repetition.

The echo peers (echo_*.py) take their port with echo_port(), serve a
blocking connection with echo_upper() and print their ready line with
echo_ready().
"""
import os
import sys
import threading
import time

PIN = []            # CPUs for worker 0, 1, ... (empty: no pinning), from --cpus


def now():
    return time.perf_counter_ns()   # CLOCK_MONOTONIC: comparable between processes


class WrongResult(Exception):
    pass


class Unavailable(Exception):
    pass


def pin(slot):
    """Pin the calling thread (on Linux, pid 0 means the calling thread) to
    the CPU of worker `slot`, wrapping around the --cpus list."""
    if PIN:
        os.sched_setaffinity(0, {PIN[slot % len(PIN)]})


def time_acquire_release(lock, n):
    """The ns that n acquire+release pairs of `lock` take, one thread."""
    acquire, release = lock.acquire, lock.release
    t0 = now()
    for _ in range(n):
        acquire()
        release()
    return now() - t0


def run_pair(side_a, side_b):
    """Run side_a() and side_b() in two threads released together; return
    the ns from the first start to the last end."""
    start = threading.Barrier(2)
    times = [None, None]

    def wrap(i, fn):
        pin(i)
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


def measure(body, n, reps, pick):
    """A warm-up, then `reps` runs of n operations; the best or median run's
    ns per operation."""
    body(max(n // 10, 1))                      # warm-up (starts a forkserver)
    times = sorted(body(n) for _ in range(reps))
    if pick == "best":
        chosen = times[0]
    elif reps % 2:
        chosen = times[reps // 2]
    else:
        chosen = (times[reps // 2 - 1] + times[reps // 2]) / 2
    return chosen / n                          # ns per operation


def main(argv, doc, metrics, min_iters=1):
    """Run a timed peer: `metrics` lists (system, metric, body, unit, base
    iteration count, "best" or "median"); each metric runs max(base * SCALE,
    min_iters) operations.  Returns the exit status: 0, 1 when a metric
    failed, 2 for a bad command line."""
    prog = os.path.basename(sys.argv[0])
    all_systems = list(dict.fromkeys(m[0] for m in metrics))
    several = len(all_systems) > 1
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
            elif a == "--system" and several:
                systems.append(args.pop(0))
            elif a in ("-h", "--help"):
                print(doc)
                return 0
            elif a[0].isdigit() or a[0] == ".":
                scale = float(a)
            else:
                wanted.append(a)
    except (IndexError, ValueError):
        print("%s: bad arguments %r" % (prog, argv), file=sys.stderr)
        return 2
    for s in systems:
        if s not in all_systems:
            print("%s: unknown system %r" % (prog, s), file=sys.stderr)
            return 2
    for w in wanted:
        if not any(m[1] == w and (not systems or m[0] in systems) for m in metrics):
            if several:
                print("%s: unknown metric %r for %s" % (prog, w, systems or "any system"),
                      file=sys.stderr)
            else:
                print("%s: unknown metric %r" % (prog, w), file=sys.stderr)
            return 2
    if reps < 1 or not scale > 0:
        print("%s: bad --reps or SCALE" % prog, file=sys.stderr)
        return 2

    status = 0
    for system, name, body, unit, base, pick in metrics:
        if (systems and system not in systems) or (wanted and name not in wanted):
            continue
        n = max(int(base * scale), min_iters)
        where = "%s/%s" % (name, system) if several else name
        try:
            ns = measure(body, n, reps, pick)
        except Unavailable as e:
            print("%s: %s: %s" % (prog, where, e), file=sys.stderr)
            print("%s\t%s\tskipped\t%s" % (name, system, unit), flush=True)
            continue
        except WrongResult as e:
            print("%s: %s: %s" % (prog, where, e), file=sys.stderr)
            print("%s\t%s\tfailed\t%s" % (name, system, unit), flush=True)
            status = 1
            continue
        value = ns if unit == "ns" else 1e9 / ns
        print("%s\t%s\t%.6g\t%s" % (name, system, value, unit), flush=True)
    return status


def parse_loose(argv, counts):
    """The coroutine peers' command line: `--NAME N` for each NAME in the
    dict `counts` (its defaults; N is at least 1), SCALE and METRICs; any
    other word is a METRIC.  Returns (counts, scale, wanted)."""
    counts = dict(counts)
    scale, want = 1.0, []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a[:2] == "--" and a[2:] in counts and i + 1 < len(argv):
            counts[a[2:]] = max(1, int(argv[i + 1]))
            i += 1
        elif a[:1].isdigit() or a[:1] == ".":
            scale = float(a)
        else:
            want.append(a)
        i += 1
    return counts, scale, want


def best_of(run, n, reps):
    """A warm-up, then the fastest of `reps` runs of n operations, or None
    when a run got a wrong result."""
    run(max(100, n // 10))              # warm-up
    best, failed = None, False
    for _ in range(reps):
        v = run(n)
        if v is None:
            failed = True
        elif best is None or v < best:
            best = v
    return None if failed else best


def skip_all(error, package, system, units):
    """A module is missing: say so on stderr and report every metric of
    `units` (metric -> unit) as skipped."""
    prog = os.path.basename(sys.argv[0])
    print(f"{prog}: {error} (install {package})", file=sys.stderr)
    for m, unit in units.items():
        print(f"{m}\t{system}\tskipped\t{unit}")


def echo_port(argv):
    """The echo peers' command line: one PORT (0 to 65535; 0: the kernel
    picks one).  Returns the port, or None after the usage line on stderr."""
    try:
        (port,) = argv
        port = int(port)
        if not 0 <= port <= 65535:
            raise ValueError
    except ValueError:
        print("usage: %s PORT" % os.path.basename(sys.argv[0]), file=sys.stderr)
        return None
    return port


def echo_upper(recv, sendall):
    """Send back whatever recv() gives, upper-cased, until the peer closes
    or resets the connection."""
    try:
        while True:
            data = recv(16384)
            if not data:
                break
            sendall(data.upper())
    except OSError:
        pass                        # a reset: the connection is over


def echo_ready(port):
    """The ready line bench_echo waits for."""
    print("listening on 127.0.0.1:%d" % port, flush=True)
