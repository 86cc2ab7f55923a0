"""broker_pika.py - Python's pika peer of bench_broker.

    broker_pika.py URL N REPS [C]
    broker_pika.py URL N --rounds C

broker_publish_confirmed: N persistent 100-byte messages to a durable
queue on a BlockingConnection in confirm mode, each basic_publish waiting
for its confirmation (pika's blocking way).  broker_consume_ack: C
messages (default N; the queue is topped up to C on a channel without
confirms, not timed, so that pika consumes as many as conc and raw do,
from a queue as deep) consumed with prefetch 64 and each acknowledged in
the callback.

The first form prints the median of REPS runs as
METRIC<TAB>pika<TAB>VALUE<TAB>msg/s (VALUE "skipped" when pika is not
installed).  With --rounds it keeps one connection and queue and runs a
round per line read ("publish" or "consume"; the queue is left empty after
each, untimed), answering each with the round's nanoseconds, or "skipped"
when pika is not installed: bench_broker takes turns between it, conc and
raw, so that all three see much the same broker.
"""
import os
import statistics
import sys
import time

METRICS = ("broker_publish_confirmed", "broker_consume_ack")


class Peer:
    def __init__(self, pika, url, n, total):
        self.pika, self.n, self.total = pika, n, total
        self.conn = pika.BlockingConnection(pika.URLParameters(url))
        self.ch = self.conn.channel()
        self.ch.confirm_delivery()
        self.queue = f"bench.pika.{os.getpid()}"
        self.ch.queue_declare(queue=self.queue, durable=True)
        self.fill_ch = self.conn.channel()      # no confirms: not timed
        self.body = b"x" * 100
        self.props = pika.BasicProperties(delivery_mode=2)

    def count(self):
        return self.ch.queue_declare(queue=self.queue, passive=True).method.message_count

    def publish(self):
        """N confirmed publishes (timed); the queue keeps them."""
        t0 = time.perf_counter_ns()
        for _ in range(self.n):
            self.ch.basic_publish(exchange="", routing_key=self.queue, body=self.body,
                                  properties=self.props)
        return time.perf_counter_ns() - t0

    def top_up(self):
        """Puts the queue at `total` messages (not timed)."""
        for _ in range(self.total - self.count()):
            self.fill_ch.basic_publish(exchange="", routing_key=self.queue, body=self.body,
                                       properties=self.props)
        deadline = time.monotonic() + 120
        while self.count() < self.total:
            if time.monotonic() > deadline:
                raise SystemExit("broker_pika.py: the queue was not filled")
            self.conn.sleep(0.01)

    def consume(self):
        """Consumes the `total` messages there, each acknowledged (timed)."""
        self.ch.basic_qos(prefetch_count=64)
        got = [0]
        total = self.total

        def on_message(c, method, properties, data):
            if len(data) != 100:
                raise SystemExit("broker_pika.py: a message of the wrong size")
            c.basic_ack(delivery_tag=method.delivery_tag)
            got[0] += 1
            if got[0] == total:
                c.stop_consuming()

        t0 = time.perf_counter_ns()
        tag = self.ch.basic_consume(queue=self.queue, on_message_callback=on_message)
        self.ch.start_consuming()
        t = time.perf_counter_ns() - t0
        self.ch.basic_cancel(tag)
        return t

    def close(self):
        self.ch.queue_delete(queue=self.queue)
        self.conn.close()


def rounds(pika, url, n, total):
    peer = Peer(pika, url, n, total) if pika else None
    for line in sys.stdin:
        what = line.strip()
        if not peer:
            print("skipped", flush=True)
            continue
        if what == "publish":
            t = peer.publish()
            peer.ch.queue_purge(queue=peer.queue)
        elif what == "consume":
            peer.top_up()
            t = peer.consume()
        else:
            raise SystemExit(f"broker_pika.py: unknown round {what!r}")
        print(t, flush=True)
    if peer:
        peer.close()
    return 0


def main():
    url, n = sys.argv[1], int(sys.argv[2])
    try:
        import pika
    except ImportError:
        sys.stderr.write("broker_pika.py: pika is not installed (Debian python3-pika)\n")
        pika = None
    if sys.argv[3] == "--rounds":
        return rounds(pika, url, n, int(sys.argv[4]))
    reps = int(sys.argv[3])
    total = int(sys.argv[4]) if len(sys.argv) > 4 else n
    if not pika:
        for m in METRICS:
            print(f"{m}\tpika\tskipped\tmsg/s")
        return 0
    peer = Peer(pika, url, n, total)
    pubs, cons = [], []
    for _ in range(reps):
        pubs.append(n / (peer.publish() / 1e9))
        peer.top_up()
        cons.append(total / (peer.consume() / 1e9))
    peer.close()
    print(f"broker_publish_confirmed\tpika\t{statistics.median(pubs):.0f}\tmsg/s")
    print(f"broker_consume_ack\tpika\t{statistics.median(cons):.0f}\tmsg/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
