"""A minimal HTTP/1.1 keep-alive client on asyncio protocols, for load generation only.

``httpx.AsyncClient`` costs about 1.5 ms of client CPU per request and its connection pool
slows down as connections are added (measured here: ~500 req/s with 1 connection, ~130 req/s
with 32, one process, against a 401 endpoint), so it cannot load a server that handles
thousands of requests per second on the same 2-core machine. This client writes pre-encoded
requests and parses only the status line, ``Content-Length`` and the body: tens of
microseconds per request. It understands exactly what uvicorn sends (no chunked bodies).
"""

from __future__ import annotations

import asyncio


class HttpError(Exception):
    """The connection broke or the answer was not understood."""


def encode_request(
    host: str, path: str, body: bytes, headers: dict[str, str], method: str = "POST"
) -> bytes:
    """A complete request, ready to write."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(HttpError(f"connection lost: {exc!r}"))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._waiter is None or self._waiter.done():
            return
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buffer[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            self._waiter.set_exception(HttpError(f"no Content-Length in {head[:200]!r}"))
            return
        line_end = head.find(b"\r\n", at + 2)
        length = int(head[at + 17 : line_end if line_end > 0 else None])
        total = end + 4 + length
        if len(buffer) < total:
            return
        status = int(head[9:12])
        body = bytes(buffer[end + 4 : total])
        del buffer[:total]
        self._waiter.set_result((status, body))

    async def request(self, data: bytes) -> tuple[int, bytes]:
        if self.closed or self.transport is None:
            raise HttpError("connection closed")
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self._waiter


class Connection:
    """One keep-alive connection; reconnects after a failure."""

    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._port = port
        self._protocol: _Protocol | None = None

    async def request(self, data: bytes) -> tuple[int, bytes]:
        """Send a pre-encoded request; return (status, body)."""
        if self._protocol is None or self._protocol.closed:
            loop = asyncio.get_running_loop()
            _, protocol = await loop.create_connection(_Protocol, self._host, self._port)
            self._protocol = protocol
        try:
            return await self._protocol.request(data)
        except HttpError:
            self.close()
            raise

    def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None
