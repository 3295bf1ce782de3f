"""`serving.http_protocol`: uvicorn's httptools protocol sending each response in one write."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvicorn
import uvloop
from uvicorn.server import ServerState

from serving.http_protocol import CoalescingTransport, OneWriteHttpToolsProtocol


class RecordingTransport(asyncio.Transport):
    """The socket's side: what the protocol hands to the kernel, one entry per write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "written after close"
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


async def echo_twice(scope: Any, receive: Any, send: Any) -> None:
    """Answers the body it got, in two body messages when the path says so (a streamed response)."""
    if scope["type"] != "http":
        return
    body = (await receive())["body"]
    streamed = scope["path"] == "/stream"
    headers = [(b"content-type", b"application/json")]
    if not streamed:
        headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if streamed:
        await send({"type": "http.response.body", "body": body, "more_body": True})
        await asyncio.sleep(0.01)  # the next part comes in a later turn of the loop
    await send({"type": "http.response.body", "body": body if not streamed else b"", "more_body": False})


async def _serve(requests: bytes, expect_responses: int) -> RecordingTransport:
    config = uvicorn.Config(echo_twice, lifespan="off", log_config=None)
    protocol = OneWriteHttpToolsProtocol(config, ServerState(), {}, _loop=asyncio.get_running_loop())
    transport = RecordingTransport()
    protocol.connection_made(transport)
    protocol.data_received(requests)
    for _ in range(400):
        await asyncio.sleep(0.005)
        if b"".join(transport.writes).count(b"HTTP/1.1 200") >= expect_responses and transport.writes[-1].endswith(
            (b"]", b"0\r\n\r\n")
        ):
            break
    await asyncio.sleep(0.02)  # anything written late would show up now
    protocol.connection_lost(None)
    return transport


@pytest.fixture(params=["uvloop", "asyncio"])
def run(request: pytest.FixtureRequest) -> Any:
    """Runs a coroutine on the loop the server uses (uvloop) and on asyncio's."""
    if request.param == "uvloop":
        return lambda coroutine: uvloop.run(coroutine)
    return asyncio.run


REQUEST = b"PUT /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n[1,2,3]"


def test_a_response_sent_start_and_body_leaves_in_one_write(run: Any) -> None:
    async def scenario() -> None:
        transport = await _serve(REQUEST, 1)
        assert len(transport.writes) == 1
        head, _, body = transport.writes[0].partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: 7" in head
        assert body == b"[1,2,3]"

    run(scenario())


def test_pipelined_requests_get_their_own_answers_in_order(run: Any) -> None:
    async def scenario() -> None:
        second = REQUEST.replace(b"[1,2,3]", b"[4,5,6]")
        transport = await _serve(REQUEST + second, 2)
        sent = b"".join(transport.writes)
        assert sent.count(b"HTTP/1.1 200 OK") == 2
        assert sent.index(b"[1,2,3]") < sent.index(b"[4,5,6]")

    run(scenario())


def test_a_streamed_body_still_leaves_turn_by_turn(run: Any) -> None:
    async def scenario() -> None:
        transport = await _serve(REQUEST.replace(b"/predict", b"/stream"), 1)
        assert len(transport.writes) == 2  # head + first chunk in one turn; the last chunk 10 ms later
        assert transport.writes[0].startswith(b"HTTP/1.1 200 OK") and b"[1,2,3]" in transport.writes[0]
        assert transport.writes[1] == b"0\r\n\r\n"

    run(scenario())


def test_close_sends_what_is_held_first_and_abort_drops_it(run: Any) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        inner = RecordingTransport()
        wrapper = CoalescingTransport(inner, loop)
        wrapper.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        wrapper.close()
        assert inner.writes == [b"HTTP/1.1 400 Bad Request\r\n\r\n"] and inner.closed
        await asyncio.sleep(0)  # the scheduled flush finds nothing left and writes nothing
        assert len(inner.writes) == 1

        aborted = RecordingTransport()
        aborted.abort = lambda: setattr(aborted, "closed", True)  # type: ignore[method-assign]
        wrapper = CoalescingTransport(aborted, loop)
        wrapper.write(b"partial")
        wrapper.abort()
        await asyncio.sleep(0)
        assert aborted.writes == [] and aborted.closed

    run(scenario())


@pytest.mark.parametrize("name", ["get_extra_info", "pause_reading", "resume_reading"])
def test_everything_else_is_the_real_transport(name: str) -> None:
    inner = RecordingTransport()
    wrapper = CoalescingTransport(inner, asyncio.new_event_loop())
    assert getattr(wrapper, name) == getattr(inner, name)
