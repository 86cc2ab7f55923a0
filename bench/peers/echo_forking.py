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


class Upper(socketserver.BaseRequestHandler):
    def handle(self):
        recv, sendall = self.request.recv, self.request.sendall
        try:
            while True:
                data = recv(16384)
                if not data:
                    break
                sendall(data.upper())
        except OSError:
            pass                        # a reset: the connection is over


class Server(socketserver.ForkingTCPServer):
    request_queue_size = 1024
    max_children = 2000
    allow_reuse_address = True


def main(argv):
    try:
        (port,) = argv
        port = int(port)
        if not 0 <= port <= 65535:
            raise ValueError
    except ValueError:
        print("usage: echo_forking.py PORT", file=sys.stderr)
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
    print("listening on 127.0.0.1:%d" % server.server_address[1], flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
