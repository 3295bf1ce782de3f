"""One predict route's work (`PredictRoute.answer`), and the ASGI path that runs it without Litestar.

`PredictRoute.answer` turns a request body into the JSON answer: decode strictly, complete, read
the loaded version once, micro-batch the predict, shape the answer, log it. The Litestar handler
in `serving.app` calls it, and so does `DirectPredictRoutes`.

`DirectPredictRoutes` sits in front of Litestar's router and answers `PUT|POST /predict/<model>`
itself. For every request Litestar builds a `Request`, resolves the handler's signature, runs the
guards, and builds a `Response` and its header mapping. On a ridge forecast that was about 40 of
the ~100 us one request cost in the process (bench/README.md), and a predict request needs none of
it. Whatever it does not recognise goes to Litestar untouched, with any body already read given
back: other paths and methods, a `Host` header Litestar refuses, a missing or wrong token (so the
401 comes from the guard) and a body past the limit (413). Our own errors are rendered by
`serving.errors.error_response`, which Litestar's handler uses too, so both paths answer the same
bytes. The route tests run through this path, and `test_direct_predict.py` compares the two.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import math
import re
from collections.abc import Mapping
from typing import Any

import msgspec
from litestar._asgi.utils import is_valid_host  # the router's own Host check (private, so tested here)
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.types import (
    ASGIApp,
    HTTPReceiveMessage,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    HTTPScope,
    Receive,
    Scope,
    Send,
)

from serving.batching import Batcher
from serving.cache import ModelSlot
from serving.errors import InvalidInput, MalformedBody, ServingError, error_response
from serving.models import ModelModule
from serving.prediction_log import REQUEST_ID_HEADER, PredictionLog, new_request_id, served_record

log = logging.getLogger(__name__)

_AT_PATH = re.compile(r"^(?P<msg>.*) - at `(?P<path>[^`]*)`$", re.DOTALL)
_MISSING_FIELD = re.compile(r"^Object missing required field `(?P<field>[^`]*)`$")
_PREDICT_METHODS = frozenset({"PUT", "POST"})
_REQUEST_ID_HEADER = REQUEST_ID_HEADER.lower().encode()


class PredictRoute:
    """`/predict/<model>`: body bytes -> (JSON answer, request id); raises `ServingError` for bad input."""

    def __init__(
        self,
        module: ModelModule[Any, Any, Any, Any],
        slot: ModelSlot,
        batcher: Batcher,
        prediction_log: PredictionLog | None = None,
    ) -> None:
        self.module = module
        self.path = module.path
        self._slot = slot
        self._submit = batcher.submit
        self._prediction_log = prediction_log
        self._decoder = msgspec.json.Decoder(module.request_type)
        self._encode = msgspec.json.Encoder().encode

    async def answer(self, body: bytes, content_type: str, received_at: dt.datetime) -> tuple[bytes, str]:
        module = self.module
        if module.decode_body is not None and content_type.split(";")[0].strip().lower().startswith("image/"):
            payload = module.decode_body(body, content_type)  # e.g. a PNG body for the digits route
        else:
            payload = decode_json(self._decoder, body)
        if module.complete is not None:
            payload = module.complete(payload)
        loaded = await self._slot.get()  # one read: this request finishes on this version
        output = await self._submit(loaded, module.build_input(loaded.artifact, payload))  # micro-batched
        if module.response_uses_request:
            answer = module.shape_response(output, loaded.ref, payload)
        else:
            answer = module.shape_response(output, loaded.ref)
        request_id = new_request_id()
        if self._prediction_log is not None and (
            record := served_record(module.name, request_id, payload, answer, received_at)
        ):
            self._prediction_log.enqueue(record)  # never blocks, never raises; drops are counted
        return self._encode(answer), request_id


class DirectPredictRoutes:
    """ASGI wrapper answering predict requests with `PredictRoute.answer`; the rest goes to `app` (see module doc)."""

    def __init__(
        self, app: ASGIApp, routes: list[PredictRoute], max_body_bytes: int, api_token: str | None = None
    ) -> None:
        self.app = app
        self.routes: Mapping[str, PredictRoute] = {route.path: route for route in routes}
        self.max_body_bytes = max_body_bytes
        self._token_digest = None if api_token is None else token_digest(api_token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or (route := self._route_for(scope)) is None:  # the enum narrows Scope
            await self.app(scope, receive, send)
            return
        await self._predict(route, scope, receive, send)

    async def _predict(self, route: PredictRoute, scope: HTTPScope, receive: Receive, send: Send) -> None:
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name, value)  # a repeated header: its first value, as Litestar reads it
        if not is_valid_host(headers.get(b"host", b"")) or not self._authorized(headers):
            await self.app(scope, receive, send)
            return
        received_at = dt.datetime.now(dt.UTC)
        body, complete = await self._read_body(headers, receive)
        if not complete:  # too large, or the client went away: Litestar answers (413) or notices
            await self.app(scope, _replay(body, receive), send)
            return
        scope["path_template"] = route.path  # the metrics label Litestar's router would have set
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        try:
            content, request_id = await route.answer(body, content_type, received_at)
        except Exception as error:  # answered as Litestar's exception handlers answer it
            if not isinstance(error, ServingError | HTTPException):  # a bug: logged with its traceback
                log.exception("unhandled error on %s %s", scope["method"], scope["path"], exc_info=error)
            status, content, extra = error_response(error)
        else:
            status, extra = 200, {REQUEST_ID_HEADER: request_id}
        response_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(content)).encode()),
            *[(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in extra.items()],
        ]
        start: HTTPResponseStartEvent = {"type": "http.response.start", "status": status, "headers": response_headers}
        await send(start)
        await send(HTTPResponseBodyEvent(type="http.response.body", body=content, more_body=False))

    def _route_for(self, scope: HTTPScope) -> PredictRoute | None:
        if scope["method"] not in _PREDICT_METHODS:
            return None
        path = scope["path"]
        root_path = scope.get("root_path", "")
        if root_path and path.startswith(root_path):
            path = path[len(root_path) :]
        return self.routes.get(path)

    def _authorized(self, headers: Mapping[bytes, bytes]) -> bool:
        """The bearer guard's test; a refusal is left to the guard, whose 401 says why."""
        if self._token_digest is None:
            return True
        header = headers.get(b"authorization")
        return header is not None and bearer_token_matches(header.decode("latin-1"), self._token_digest)

    async def _read_body(self, headers: Mapping[bytes, bytes], receive: Receive) -> tuple[bytes, bool]:
        """The body, and whether it was read whole within the limit (False: over it, or the client left)."""
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return b"", False
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks), False
            chunk = message.get("body", b"")
            size += len(chunk)
            chunks.append(chunk)
            if size > self.max_body_bytes:
                return b"".join(chunks), False
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks), True


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def bearer_token_matches(header: str, expected_digest: bytes) -> bool:
    """`Authorization: Bearer <token>` against the token's digest: constant time, whatever length is sent."""
    scheme, _space, given = header.partition(" ")
    digest = hashlib.sha256(given.strip().encode("utf-8", "surrogateescape")).digest()
    return hmac.compare_digest(digest, expected_digest) and scheme.lower() == "bearer"


def _replay(read: bytes, receive: Receive) -> Receive:
    """`receive` that first gives back what was already read, then the rest of the stream."""
    given_back = False

    async def replay() -> HTTPReceiveMessage:
        nonlocal given_back
        if given_back or not read:
            return await receive()  # type: ignore[return-value]  # an HTTP connection receives HTTP messages
        given_back = True
        return {"type": "http.request", "body": read, "more_body": True}

    return replay


def decode_json(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    """Strict decode into the request type; msgspec's errors become 400/422 with the field's JSON path."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        message, field = _split_path(str(exc))
        raise InvalidInput(message, field) from None
    except msgspec.DecodeError as exc:
        raise _undecodable(body, exc) from None


def _split_path(message: str) -> tuple[str, str]:
    """msgspec's "Expected `float` - at `$[3]`" -> ("Expected `float`", "$[3]")."""
    field = "$"
    if (at := _AT_PATH.match(message)) is not None:
        message, field = at["msg"], at["path"]
    if (missing := _MISSING_FIELD.match(message)) is not None:
        field = f"{field}.{missing['field']}"
    return message, field


def _undecodable(body: bytes, exc: msgspec.DecodeError) -> Exception:
    """Tell NaN/Infinity (JSON has neither; Python's json writes them) from broken JSON."""
    if not body.strip():
        return MalformedBody("the request body is empty: send JSON")
    try:
        lenient = json.loads(body)
    except (ValueError, RecursionError):
        return MalformedBody(f"the request body is not valid JSON: {exc}")
    path = _first_non_finite(lenient, "$")
    if path is not None:
        return InvalidInput("NaN and Infinity are not JSON numbers: send finite numbers", path)
    return MalformedBody(f"the request body is not valid JSON: {exc}")


def _first_non_finite(value: Any, path: str) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return path
    if isinstance(value, list):
        for i, item in enumerate(value):
            if (found := _first_non_finite(item, f"{path}[{i}]")) is not None:
                return found
    if isinstance(value, dict):
        for key, item in value.items():
            if (found := _first_non_finite(item, f"{path}.{key}")) is not None:
                return found
    return None
