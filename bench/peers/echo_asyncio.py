#!/usr/bin/env python3
"""bench_echo's Python asyncio peer: one event loop (the default, epoll),
one protocol object per connection; each connection gets back whatever it
sends, upper-cased (bytes.upper, ASCII), until the client closes.

usage: echo_asyncio.py PORT      (0: the kernel picks one)

Listens on 127.0.0.1 with a backlog of 1024 and prints
"listening on 127.0.0.1:PORT" once it accepts connections.  Protocols rather
than streams: data_received writes the reply to the transport, which sends
it at once and buffers what the socket does not take (the faster of
asyncio's two interfaces).  Runs until killed.
"""
import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peerlib import echo_port, echo_ready  # noqa: E402


class Upper(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data.upper())


async def serve(port):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Upper, "127.0.0.1", port, backlog=1024,
                                      reuse_address=True)
    port = server.sockets[0].getsockname()[1]
    echo_ready(port)
    async with server:
        await server.serve_forever()


def main(argv):
    port = echo_port(argv)
    if port is None:
        return 2
    asyncio.run(serve(port))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
