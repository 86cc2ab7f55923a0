#!/usr/bin/env python3
"""bench_echo's gevent peer: gevent.server.StreamServer, one greenlet per
connection on gevent's hub (libev or libuv, one thread); each connection
gets back whatever it sends, upper-cased (bytes.upper, ASCII), until the
client closes.

usage: echo_gevent.py PORT      (0: the kernel picks one)

Listens on 127.0.0.1 with a backlog of 1024 and prints
"listening on 127.0.0.1:PORT" once it accepts connections.  Without the
gevent module it says so on stderr and exits 3 before any ready line
(bench_echo checks for the module first and reports the peer as skipped).
Runs until killed.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peerlib import echo_port, echo_ready, echo_upper  # noqa: E402


def main(argv):
    port = echo_port(argv)
    if port is None:
        return 2
    try:
        from gevent.server import StreamServer
    except ImportError as e:
        print("echo_gevent.py: %s (install python3-gevent)" % e, file=sys.stderr)
        return 3

    def handle(sock, _address):
        try:
            echo_upper(sock.recv, sock.sendall)
        finally:
            sock.close()

    server = StreamServer(("127.0.0.1", port), handle, backlog=1024)
    server.init_socket()
    echo_ready(server.server_port)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
