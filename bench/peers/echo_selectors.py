#!/usr/bin/env python3
"""bench_echo's Python selectors peer: one thread, selectors.DefaultSelector
(epoll), non-blocking sockets; each connection gets back whatever it sends,
upper-cased (bytes.upper, ASCII), until the client closes.

usage: echo_selectors.py PORT      (0: the kernel picks one)

Listens on 127.0.0.1 with a backlog of 1024 and prints
"listening on 127.0.0.1:PORT" once it accepts connections.  A reply is sent
at once; what the socket does not take waits for EVENT_WRITE (reading pauses
meanwhile).  Runs until killed.
"""
import os
import selectors
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peerlib import echo_port, echo_ready  # noqa: E402


def main(argv):
    port = echo_port(argv)
    if port is None:
        return 2
    sel = selectors.DefaultSelector()
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(1024)
    server.setblocking(False)
    sel.register(server, selectors.EVENT_READ, None)
    pending = {}                    # socket -> bytes not yet sent

    def drop(c):
        sel.unregister(c)
        pending.pop(c, None)
        c.close()

    def reply(c, data):
        try:
            n = c.send(data)
        except BlockingIOError:
            n = 0
        except OSError:
            drop(c)
            return
        if n < len(data):
            pending[c] = data[n:]
            sel.modify(c, selectors.EVENT_WRITE, True)
        elif c in pending:
            del pending[c]
            sel.modify(c, selectors.EVENT_READ, True)

    echo_ready(server.getsockname()[1])
    while True:
        for key, _ in sel.select():
            s = key.fileobj
            if key.data is None:            # the listener
                while True:
                    try:
                        c, _ = server.accept()
                    except (BlockingIOError, OSError):
                        break
                    c.setblocking(False)
                    sel.register(c, selectors.EVENT_READ, True)
            elif s in pending:
                reply(s, pending[s])
            else:
                try:
                    data = s.recv(16384)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    drop(s)
                else:
                    reply(s, data.upper())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
