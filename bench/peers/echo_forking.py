#!/usr/bin/env python3
"""bench_echo's socketserver.ForkingTCPServer peer: a child process per
connection; each connection gets back whatever it sends, upper-cased
(bytes.upper, ASCII), until the client closes.

usage: echo_forking.py PORT      (0: the kernel picks one)

Listens on 127.0.0.1 and prints "listening on 127.0.0.1:PORT" once it
accepts connections.  The class defaults that would cripple it under 1000
connections are raised: request_queue_size (listen()'s backlog, 5 by
default) to 1024, and max_children (40 by default: the 41st connection
waits until a child ends) to 2000.  A child ends when its client closes,
which bench_echo does after every run; SIGTERM ends the server and kills
the children still serving.
"""
import os
import signal
import socketserver
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peerlib import echo_port, echo_ready, echo_upper  # noqa: E402


class Upper(socketserver.BaseRequestHandler):
    def handle(self):
        echo_upper(self.request.recv, self.request.sendall)


class Server(socketserver.ForkingTCPServer):
    request_queue_size = 1024
    max_children = 2000
    allow_reuse_address = True


def main(argv):
    port = echo_port(argv)
    if port is None:
        return 2
    server = Server(("127.0.0.1", port), Upper)

    def stop(_sig, _frame):
        # The children still serving first, one by one (they share the
        # load generator's process group).
        for pid in list(server.active_children or ()):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    echo_ready(server.server_address[1])
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
