"""The service's one exception hierarchy and its one mapping to HTTP responses.

Every error leaves the service as `ErrorBody` JSON with a 4xx/5xx status: ours (`ServingError`
subclasses), Litestar's own (404, 405, 413 ...) and, as a last resort, unexpected exceptions
(500, logged with their traceback). Nothing ever answers 200 with an error inside.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ExceptionHandlersMap

log = logging.getLogger(__name__)


class ErrorBody(msgspec.Struct, omit_defaults=True):
    """What every error response carries."""

    status_code: int
    #: Stable machine-readable kind, e.g. `invalid_input`, `model_unavailable`.
    error: str
    #: What went wrong, for a person.
    detail: str
    #: JSON path of the offending input (`$.time_series[3]`), when one field is to blame.
    field: str | None = None
    #: The served model the error is about (503s), so a client calling several knows which.
    model: str | None = None


class ServingError(Exception):
    """Base of the errors this service raises on purpose; subclasses fix the status and kind."""

    status_code: ClassVar[int] = HTTP_500_INTERNAL_SERVER_ERROR
    error: ClassVar[str] = "internal_error"

    def __init__(
        self,
        detail: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        model: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.headers = headers or {}
        self.model = model


class MalformedBody(ServingError):
    """The body is not JSON at all (truncated, trailing garbage, not UTF-8)."""

    status_code = 400
    error = "malformed_json"


class Unauthorized(ServingError):
    """Missing or wrong bearer token."""

    status_code = 401
    error = "unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="predict"'})


class InvalidInput(ServingError):
    """Well-formed JSON that is not a valid request for this model (shape, type, range)."""

    status_code = 422
    error = "invalid_input"


class ModelUnavailable(ServingError):
    """No version of the model is loaded (never was, or the registry could not be reached yet)."""

    status_code = 503
    error = "model_unavailable"

    def __init__(self, detail: str, model: str) -> None:
        super().__init__(detail, headers={"Retry-After": "5"}, model=model)


class DeadlineExceeded(ServingError):
    """The request would wait longer for its prediction than `SERVING_DEADLINE_MS` allows."""

    status_code = 503
    error = "deadline_exceeded"

    def __init__(self, detail: str, model: str) -> None:
        super().__init__(detail, headers={"Retry-After": "1"}, model=model)


_LITESTAR_KINDS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    500: "internal_error",
    503: "service_unavailable",
}


def error_response(exc: Exception) -> tuple[int, bytes, dict[str, str]]:
    """Status, JSON body and extra headers for any exception: the one mapping, used by Litestar's
    handlers below and by the direct predict route (`serving.predict_route`). Logging unexpected
    exceptions (with the request) is the caller's job."""
    if isinstance(exc, ServingError):
        body = ErrorBody(exc.status_code, exc.error, exc.detail, exc.field, exc.model)
        return exc.status_code, msgspec.json.encode(body), exc.headers
    if isinstance(exc, HTTPException):  # Litestar's own errors (routing, body limit) in our shape
        status = exc.status_code
        if status >= 500:
            log.error("server error %s: %s", status, exc.detail, exc_info=exc)
        kind = _LITESTAR_KINDS.get(status, "client_error" if status < 500 else "server_error")
        detail = exc.detail or kind.replace("_", " ")
        if status == 413:
            detail = "request body is larger than the limit"
        return status, msgspec.json.encode(ErrorBody(status, kind, detail)), dict(exc.headers or {})
    # A bug: answer 500 naming the exception type, leaking nothing else.
    body = ErrorBody(500, "internal_error", f"internal error ({type(exc).__name__}); see the server log")
    return 500, msgspec.json.encode(body), {}


def _response(exc: Exception) -> Response[bytes]:
    status, content, headers = error_response(exc)
    return Response(content=content, status_code=status, media_type="application/json", headers=headers)


def expected_error_handler(_: Request[Any, Any, Any], exc: ServingError | HTTPException) -> Response[bytes]:
    """Ours and Litestar's own errors (routing, body limit), in our shape."""
    return _response(exc)


def unexpected_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """A bug: log it loudly with the traceback, answer 500 without leaking internals."""
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _response(exc)


#: The single place exceptions become HTTP statuses (handed to `Litestar(exception_handlers=...)`).
EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    ServingError: expected_error_handler,
    HTTPException: expected_error_handler,
    Exception: unexpected_error_handler,
}
