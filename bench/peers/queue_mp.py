#!/usr/bin/env python3
"""Python peer of bench_queue: the process metrics with multiprocessing.

usage: queue_mp.py [--reps N] [--cpus A,B,...] [SCALE] [METRIC ...]

SCALE multiplies every iteration count (default 1.0); METRICs select a subset
(default: all).  --cpus pins worker k (producers first, then consumers; the
pinger then the echoer) to the k-th CPU of the list, wrapping around, as
bench_queue does with its own.  Prints one line per metric,
METRIC<TAB>python<TAB>VALUE<TAB>UNIT, the median of the repetitions, with the
same definitions and message layout as bench_queue.c:

  proc_queue_stream_64       msg/s: 64-byte bytes messages, 1 producer process
                             -> multiprocessing.Queue() -> 1 consumer process
  proc_queue_stream_64_2x2   the same, 2 producers -> 2 consumers
  proc_queue_stream_4k       4096-byte messages, 1 -> 1
  proc_queue_stream_4k_2x2   4096-byte messages, 2 -> 2
  pipe_pingpong              round trips/s of a 64-byte message between two
                             processes over multiprocessing.Pipe() (duplex):
                             send_bytes, recv_bytes, echoed back

The worker processes are forked ("fork" start method) and wait on a Barrier
before the clock starts; a stream's time runs from the first worker's start
to the last one's end (the last message received).  Every message is
checked (producer, sequence number, size, contents); a consumer ends at the
first empty message, of which each producer sends one after its own.  A
message lost, duplicated or damaged prints VALUE "failed".
"""
import multiprocessing
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peerlib import PIN, WrongResult, now, pin  # noqa: E402
import peerlib  # noqa: E402

SYSTEM = "python"
MAGIC = 0x9E3779B97F4A7C15  # the trailer is seq ^ MAGIC
MASK = (1 << 64) - 1
HEAD = struct.Struct("<IIQ")    # producer, size, sequence number
TAIL = struct.Struct("<Q")


def middle(producer, size):
    """The bytes between header and trailer: byte k is producer*131 + k*7 + 1."""
    return bytes((producer * 131 + k * 7 + 1) & 0xFF for k in range(size - HEAD.size - TAIL.size))


def message(producer, size, seq, mid):
    return HEAD.pack(producer, size, seq) + mid + TAIL.pack(seq ^ MAGIC)


def producer_main(p, n, size, q, barrier, times, slot):
    pin(slot)
    mid = middle(p, size)
    put = q.put
    pack_head, pack_tail = HEAD.pack, TAIL.pack
    barrier.wait()
    t0 = now()
    for seq in range(n):
        put(pack_head(p, size, seq) + mid + pack_tail(seq ^ MAGIC))
    put(b"")
    times[2 * slot] = t0
    times[2 * slot + 1] = now()
    q.close()
    q.join_thread()         # the messages are in the pipe before we exit


def consumer_main(c, producers, size, q, barrier, times, slot, results):
    pin(slot)
    mids = [middle(p, size) for p in range(producers)]
    last = [-1] * producers
    count = [0] * producers
    total = [0] * producers
    squares = [0] * producers
    errors = 0
    end = size - TAIL.size
    get = q.get
    unpack_head, unpack_tail = HEAD.unpack_from, TAIL.unpack_from
    barrier.wait()
    t0 = now()
    while True:
        m = get()
        if not m:
            break
        if len(m) != size:
            errors += 1
            continue
        p, sz, seq = unpack_head(m)
        if p >= producers or sz != size or seq <= last[p] or unpack_tail(m, end)[0] != seq ^ MAGIC \
                or m[HEAD.size:end] != mids[p]:
            errors += 1
            continue
        last[p] = seq
        count[p] += 1
        total[p] += seq
        squares[p] += seq * seq
    times[2 * slot] = t0
    times[2 * slot + 1] = now()
    results.put((c, errors, count, total, squares))


def stream(size, producers, consumers):
    def body(n):
        ctx = multiprocessing.get_context("fork")
        q = ctx.Queue()
        workers = producers + consumers
        barrier = ctx.Barrier(workers)
        times = ctx.RawArray("q", 2 * workers)
        results = ctx.SimpleQueue()
        per = max(n // producers, 1)
        procs = [ctx.Process(target=producer_main, args=(p, per, size, q, barrier, times, p))
                 for p in range(producers)]
        procs += [ctx.Process(target=consumer_main,
                              args=(c, producers, size, q, barrier, times, producers + c, results))
                  for c in range(consumers)]
        for pr in procs:
            pr.start()
        got = [results.get() for _ in range(consumers)]
        for pr in procs:
            pr.join()
        for pr in procs:
            if pr.exitcode != 0:
                raise WrongResult("worker exit code %r" % pr.exitcode)
        errors = sum(g[1] for g in got)
        if errors:
            raise WrongResult("%d messages arrived damaged or out of order" % errors)
        for p in range(producers):
            count = sum(g[2][p] for g in got)
            total = sum(g[3][p] for g in got)
            squares = sum(g[4][p] for g in got)
            want_total = per * (per - 1) // 2
            want_squares = (per - 1) * per * (2 * per - 1) // 6
            if count != per or total != want_total or squares != want_squares:
                raise WrongResult("producer %d: %d of %d messages arrived (sums %d/%d, %d/%d)"
                                  % (p, count, per, total, want_total, squares, want_squares))
        ns = max(times[1::2]) - min(times[0::2])
        return ns * n / (per * producers)
    return body


def echoer_main(conn, other, slot):
    other.close()
    pin(slot)
    recv, send = conn.recv_bytes, conn.send_bytes
    while True:
        try:
            m = recv()
        except EOFError:
            break
        send(m)


def pipe_pingpong(n):
    ctx = multiprocessing.get_context("fork")
    a, b = ctx.Pipe(duplex=True)
    child = ctx.Process(target=echoer_main, args=(b, a, 1))
    child.start()
    b.close()
    pin(0)
    size = 64
    mid = middle(0, size)
    send, recv = a.send_bytes, a.recv_bytes
    send(message(0, size, 0, mid))      # the echoer is up
    if recv() != message(0, size, 0, mid):
        raise WrongResult("the first message came back wrong")
    wrong = 0
    t0 = now()
    for seq in range(1, n + 1):
        m = message(0, size, seq, mid)
        send(m)
        if recv() != m:
            wrong += 1
    ns = now() - t0
    a.close()
    child.join()
    if PIN:
        os.sched_setaffinity(0, set(PIN))
    if wrong or child.exitcode != 0:
        raise WrongResult("%d messages came back wrong, echoer exit code %r" % (wrong, child.exitcode))
    return ns


# name, body, unit, base iteration count
METRICS = [
    ("proc_queue_stream_64", stream(64, 1, 1), "msg/s", 100000),
    ("proc_queue_stream_64_2x2", stream(64, 2, 2), "msg/s", 100000),
    ("proc_queue_stream_4k", stream(4096, 1, 1), "msg/s", 50000),
    ("proc_queue_stream_4k_2x2", stream(4096, 2, 2), "msg/s", 50000),
    ("pipe_pingpong", pipe_pingpong, "ops/s", 20000),
]


if __name__ == "__main__":
    sys.exit(peerlib.main(sys.argv[1:], __doc__,
                          [(SYSTEM, name, body, unit, base, "median")
                           for name, body, unit, base in METRICS], min_iters=100))
