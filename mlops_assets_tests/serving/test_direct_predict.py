"""The direct predict path (`serving.predict_route.DirectPredictRoutes`) answers as Litestar would.

Every other route test also runs through the direct path; these tests pin down what it leaves to
Litestar, and compare its answers with Litestar's own handler byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from litestar.types import Receive, Scope, Send

from mlops_assets_tests.serving.support import PATH, Store, series, wait_ready
from mlops_assets_tests.serving.test_api import BAD_BODIES
from serving.predict_route import DirectPredictRoutes

pytestmark = pytest.mark.anyio


class CountingApp:
    """Stands between the direct path and Litestar: counts what was handed over."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.calls: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls.append(f"{scope.get('method')} {scope.get('path')}")
        await self.app(scope, receive, send)


def direct_of(app: Litestar) -> DirectPredictRoutes:
    direct = app.asgi_handler.app  # type: ignore[attr-defined]  # MetricsMiddleware -> DirectPredictRoutes
    assert isinstance(direct, DirectPredictRoutes)
    return direct


@pytest.fixture()
async def served(store: Store, make_app: Callable[..., Litestar]) -> AsyncIterator[tuple[Any, CountingApp]]:
    store.set_champion("1")
    app = make_app()
    direct = direct_of(app)
    counting = direct.app = CountingApp(direct.app)
    async with AsyncTestClient(app) as client:
        await wait_ready(client)
        counting.calls.clear()
        yield client, counting


def _requests() -> list[tuple[str, bytes, dict[str, str]]]:
    json_type = {"content-type": "application/json"}
    cases = [
        ("list", json.dumps(series()).encode(), json_type),
        ("object", json.dumps({"time_series": series()}).encode(), json_type),
        ("no content type", json.dumps(series()).encode(), {}),
        ("png to a JSON-only model", b"\x89PNG\r\n\x1a\n", {"content-type": "image/png"}),
    ]
    cases += [(name, body, json_type) for name, body, *_ in BAD_BODIES]
    return cases


async def test_direct_and_litestar_paths_answer_the_same(served: tuple[Any, CountingApp]) -> None:
    client, counting = served
    direct_answers = []
    for _name, body, headers in _requests():
        direct_answers.append(await client.put(PATH, content=body, headers=headers))
    assert counting.calls == [], "every predict request, good or bad, was answered without Litestar"

    direct = counting  # hand everything to Litestar from here on
    routes = direct_of(client.app).routes
    direct_of(client.app).routes = {}
    try:
        for (name, body, headers), ours in zip(_requests(), direct_answers, strict=True):
            theirs = await client.put(PATH, content=body, headers=headers)
            assert (ours.status_code, ours.headers["content-type"]) == (
                theirs.status_code,
                theirs.headers["content-type"],
            )
            if ours.status_code == 200:
                assert ours.json() == theirs.json(), name
                assert len(ours.headers["x-request-id"]) == len(theirs.headers["x-request-id"]) == 32
                assert ours.headers["x-request-id"] != theirs.headers["x-request-id"]
            else:
                assert ours.content == theirs.content, name
                assert ours.status_code >= 400
    finally:
        direct_of(client.app).routes = routes
    assert len(direct.calls) == len(direct_answers)


async def test_what_the_direct_path_leaves_to_litestar(served: tuple[Any, CountingApp]) -> None:
    client, counting = served
    assert (await client.get("/health")).status_code == 200
    assert (await client.get(PATH)).status_code == 405
    assert (await client.put("/predict/other_model", json=series())).status_code == 404
    assert len(counting.calls) == 3

    too_big = b"[" + b"1.0," * 300_000 + b"1.0]"
    answer = await client.put(PATH, content=too_big)
    assert answer.status_code == 413 and answer.json()["error"] == "body_too_large"

    # No Content-Length (chunked): the limit is found while reading, and Litestar gets the body back.
    chunks = [too_big[start : start + 65536] for start in range(0, len(too_big), 65536)]
    status, content = await raw_put(client.app, chunks)
    assert status == 413 and json.loads(content)["error"] == "body_too_large"
    assert len(counting.calls) == 5

    streamed = json.dumps(series()).encode()
    status, content = await raw_put(
        client.app, [streamed[start : start + 100] for start in range(0, len(streamed), 100)]
    )
    assert status == 200 and len(json.loads(content)["result"]) == 24
    assert len(counting.calls) == 5, "a streamed body within the limit is answered directly"


async def raw_put(app: Litestar, chunks: list[bytes]) -> tuple[int, bytes]:
    """PUT the body in these ASGI chunks, without Content-Length (what the test client cannot send)."""
    scope: Any = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "PUT",
        "scheme": "http",
        "path": PATH,
        "raw_path": PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
    messages = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1} for i, chunk in enumerate(chunks)
    ]
    sent: list[Any] = []

    async def receive() -> Any:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], b"".join(message.get("body", b"") for message in sent[1:])


async def test_token_is_checked_the_same_way(store: Store, make_app: Callable[..., Litestar]) -> None:
    store.set_champion("1")
    app = make_app(api_token="s3cret-token")
    direct = direct_of(app)
    counting = direct.app = CountingApp(direct.app)
    async with AsyncTestClient(app) as client:
        await wait_ready(client)
        counting.calls.clear()
        for header in ("Bearer s3cret-token", "bearer s3cret-token", "Bearer  s3cret-token "):
            assert (await client.put(PATH, json=series(), headers={"Authorization": header})).status_code == 200
        assert counting.calls == []
        for header in (
            "Bearer wrong",
            "Basic s3cret-token",
            "s3cret-token",
            "Bearer ",
            "Bearer s3cret-tok\u00e9n".encode(),
        ):
            answer = await client.put(PATH, json=series(), headers={"Authorization": header})
            assert answer.status_code == 401 and answer.json()["error"] == "unauthorized", header
        assert (await client.put(PATH, json=series())).status_code == 401
        assert len(counting.calls) == 6, "refusals come from Litestar's guard"


async def test_metrics_label_direct_answers_by_route(served: tuple[Any, CountingApp]) -> None:
    client, _ = served
    for _ in range(3):
        assert (await client.put(PATH, json=series())).status_code == 200
    assert (await client.put(PATH, content=b"{")).status_code == 400
    text = (await client.get("/metrics")).text
    assert f'serving_requests_total{{method="PUT",route="{PATH}",status="200"}} 3.0' in text
    assert f'serving_requests_total{{method="PUT",route="{PATH}",status="400"}} 1.0' in text
