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


class Server(socketserver.ThreadingTCPServer):
    request_queue_size = 1024
    daemon_threads = True
    allow_reuse_address = True


def main(argv):
    try:
        (port,) = argv
        port = int(port)
        if not 0 <= port <= 65535:
            raise ValueError
    except ValueError:
        print("usage: echo_threading.py PORT", file=sys.stderr)
        return 2
    server = Server(("127.0.0.1", port), Upper)
    print("listening on 127.0.0.1:%d" % server.server_address[1], flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
