"""uvicorn's httptools protocol, sending each response with one socket write instead of two.

uvicorn writes a response's status line and headers when the app sends `http.response.start`, and
the body when it sends `http.response.body`: two `send` calls, two TCP segments, and on loopback
two wake-ups of the client. For a forecast (a few hundred bytes) those sends were ~27% of a
worker's CPU samples (py-spy, bench/README.md). Here the connection's transport holds what is
written during one turn of the event loop and sends it at the end of that turn, in one piece:
a response that the app sends start-and-body in one go (every predict answer, every Litestar
response with a body in memory) leaves in one write; a streamed body still leaves turn by turn.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CoalescingTransport:
    """A transport wrapper: `write` joins what one loop turn writes into one write of the real transport."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._held:
            self._loop.call_soon(self.flush)  # at the end of this turn, after the app's next send
        self._held.append(data)

    def flush(self) -> None:
        held = self._held
        if held:
            self._held = []
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        """Send what is held, then close (the real transport sends its buffer before closing)."""
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = []
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # get_extra_info, pause_reading, set_protocol, ...
        return getattr(self._transport, name)


class OneWriteHttpToolsProtocol(HttpToolsProtocol):
    """`uvicorn.Config(http=OneWriteHttpToolsProtocol)`: httptools parsing, one write per response."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
