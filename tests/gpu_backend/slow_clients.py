"""Raw-socket clients that send slowly (slowloris), for the read-timeout tests of both servers, and a
uvicorn server run on the test's own event loop for them to talk to."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import uvicorn

GIVE_UP_S = 15.0  # a server that has not closed by then never will


@dataclass(frozen=True)
class Answer:
    data: bytes  # all the server sent
    closed_after_s: float  # from the first byte sent to the server closing the connection

    @property
    def status(self) -> int | None:
        head = self.data.split(b"\r\n", 1)[0].split()
        return int(head[1]) if len(head) > 1 else None


async def dribble(port: int, fast: bytes, slow: bytes = b"", gap_s: float = 0.2) -> Answer:
    """Send ``fast`` at once, then ``slow`` a byte every ``gap_s`` while the connection lasts; read until closed."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = loop.time()
    received = bytearray()
    reading = asyncio.ensure_future(_read_until_closed(reader, received))
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(fast)
            await writer.drain()
            for index in range(len(slow)):
                await asyncio.wait({reading}, timeout=gap_s)
                if reading.done():
                    break
                writer.write(slow[index:index + 1])
                await writer.drain()
        async with asyncio.timeout(GIVE_UP_S):
            await reading
    finally:
        reading.cancel()
        writer.close()
    return Answer(bytes(received), loop.time() - started)


async def _read_until_closed(reader: asyncio.StreamReader, received: bytearray) -> None:
    with contextlib.suppress(ConnectionError):  # a reset after the answer still counts as closed
        while chunk := await reader.read(65536):
            received += chunk


def request_head(method: str, path: str, *headers: str, length: int | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: test", *headers]
    if length is not None:
        lines.append(f"content-length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@contextlib.asynccontextmanager
async def running(server: uvicorn.Server, sock: socket.socket) -> AsyncIterator[int]:
    """``server`` listening on ``sock`` (bound) within this loop: yields its port, stops it at the end."""
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.01)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()
