#!/usr/bin/env python3
"""bench_echo's socketserver.ThreadingTCPServer peer: a thread per
connection; each connection gets back whatever it sends, upper-cased
(bytes.upper, ASCII), until the client closes.

usage: echo_threading.py PORT      (0: the kernel picks one)

Listens on 127.0.0.1 and prints "listening on 127.0.0.1:PORT" once it
accepts connections.  The class defaults that would cripple it under 1000
connections are raised: request_queue_size (listen()'s backlog, 5 by
default) to 1024, and daemon_threads on, so that the server does not keep a
list of every thread it ever started (block_on_close then has nothing to
join).  Runs until killed.
"""
import os
import socketserver
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peerlib import echo_port, echo_ready, echo_upper  # noqa: E402


class Upper(socketserver.BaseRequestHandler):
    def handle(self):
        echo_upper(self.request.recv, self.request.sendall)


class Server(socketserver.ThreadingTCPServer):
    request_queue_size = 1024
    daemon_threads = True
    allow_reuse_address = True


def main(argv):
    port = echo_port(argv)
    if port is None:
        return 2
    server = Server(("127.0.0.1", port), Upper)
    echo_ready(server.server_address[1])
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
