"""broker_pika.py - Python's pika peer of bench_broker.

    broker_pika.py URL N REPS [C]

broker_publish_confirmed: N persistent 100-byte messages to a durable
queue on a BlockingConnection in confirm mode, each basic_publish waiting
for its confirmation (pika's blocking way).  broker_consume_ack: C
messages (default N; the queue is topped up to C on a channel without
confirms, not timed, so that pika consumes as many as conc and raw do,
from a queue as deep) then consumed with prefetch 64 and each
acknowledged in the callback.  Prints the median of REPS runs (as
bench_broker reports conc's and raw's) as METRIC<TAB>pika<TAB>VALUE<TAB>msg/s
(VALUE "skipped" when pika is not installed).
"""
import os
import statistics
import sys
import time

METRICS = ("broker_publish_confirmed", "broker_consume_ack")


def main():
    url, n, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    total = int(sys.argv[4]) if len(sys.argv) > 4 else n
    try:
        import pika
    except ImportError:
        sys.stderr.write("broker_pika.py: pika is not installed (Debian python3-pika)\n")
        for m in METRICS:
            print(f"{m}\tpika\tskipped\tmsg/s")
        return 0
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.confirm_delivery()
    queue = f"bench.pika.{os.getpid()}"
    ch.queue_declare(queue=queue, durable=True)
    fill = conn.channel()       # no confirms: the top-up is not timed
    body = b"x" * 100
    props = pika.BasicProperties(delivery_mode=2)
    pubs, cons = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(n):
            ch.basic_publish(exchange="", routing_key=queue, body=body, properties=props)
        pubs.append(n / (time.perf_counter() - t0))

        for _ in range(total - n):
            fill.basic_publish(exchange="", routing_key=queue, body=body, properties=props)
        deadline = time.monotonic() + 120
        while ch.queue_declare(queue=queue, passive=True).method.message_count < total:
            if time.monotonic() > deadline:
                raise SystemExit("broker_pika.py: the queue was not filled")
            conn.sleep(0.01)

        ch.basic_qos(prefetch_count=64)
        got = [0]

        def on_message(c, method, properties, data):
            if len(data) != 100:
                raise SystemExit("broker_pika.py: a message of the wrong size")
            c.basic_ack(delivery_tag=method.delivery_tag)
            got[0] += 1
            if got[0] == total:
                c.stop_consuming()

        t0 = time.perf_counter()
        tag = ch.basic_consume(queue=queue, on_message_callback=on_message)
        ch.start_consuming()
        cons.append(total / (time.perf_counter() - t0))
        ch.basic_cancel(tag)
    ch.queue_delete(queue=queue)
    conn.close()
    print(f"broker_publish_confirmed\tpika\t{statistics.median(pubs):.0f}\tmsg/s")
    print(f"broker_consume_ack\tpika\t{statistics.median(cons):.0f}\tmsg/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
