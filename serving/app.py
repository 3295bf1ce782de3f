"""The prediction service as an ASGI app: `create_app(settings)` builds everything, per process.

Routes: `PUT|POST /predict/<model>` for each configured model module, `GET /health`, `GET /ready`,
`GET /metrics`, and the OpenAPI schema with interactive docs under `/schema`
(`/schema/openapi.json`, Swagger UI at `/schema` and `/schema/swagger`).

Any ASGI server can run it as a factory, e.g. `uvicorn --factory serving.app:create_app` or
`granian --interface asgi --factory serving.app:create_app`; `serving.server.run` is the tuned
multi-worker entry point.

`create_app` sets no process-wide MLflow state and writes no environment variable: every MLflow
call names `settings.mlflow_tracking_uri` (`serving.cache.MlflowResolver`). MLflow's HTTP timeout and
retries exist only as environment variables, so the entry point (`serving.server.run`) bounds
them before the workers start; another server should set MLFLOW_HTTP_REQUEST_TIMEOUT and
MLFLOW_HTTP_REQUEST_MAX_RETRIES itself.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, get, route
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.enums import HttpMethod, MediaType
from litestar.handlers import BaseRouteHandler, HTTPRouteHandler
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, Example, OpenAPIMediaType, Operation, RequestBody, SecurityScheme

from serving.batching import Batcher, BatchSettings
from serving.cache import MlflowResolver, ModelCache, ModelSlot
from serving.errors import EXCEPTION_HANDLERS, ErrorBody, Unauthorized
from serving.metrics import MetricsMiddleware, ServingMetrics
from serving.models import get_module
from serving.predict_route import DirectPredictRoutes, PredictRoute, bearer_token_matches, token_digest
from serving.prediction_log import REQUEST_ID_HEADER, PredictionLog
from serving.settings import ServingSettings

_BEARER = "BearerToken"


class Health(msgspec.Struct):
    status: str


class ModelStatus(msgspec.Struct):
    #: loaded, no_champion (the registry says the alias does not exist), registry_unreachable,
    #: load_failed, or loading (first load not finished).
    state: str
    version: str | None
    alias: str
    loaded_at: float | None
    registry_error: str | None
    load_error: str | None
    alias_missing: str | None


class Readiness(msgspec.Struct):
    ready: bool
    #: Why not ready; empty when ready.
    reasons: list[str]
    models: dict[str, ModelStatus]


def create_app(settings: ServingSettings | None = None) -> Litestar:
    """Build the service; reads the environment (once) only when `settings` is None."""
    settings = ServingSettings.from_env() if settings is None else settings
    modules = [get_module(name) for name in settings.models]
    metrics = ServingMetrics()
    prediction_log = (
        PredictionLog(settings.warehouse_url, registry=metrics.registry) if settings.prediction_log else None
    )
    resolver = MlflowResolver(settings.mlflow_tracking_uri)
    cache = ModelCache(
        {m.name: ModelSlot(m, settings.alias, resolver, metrics) for m in modules}, settings.poll_seconds
    )
    batchers = {
        m.name: Batcher(
            m.name,
            m.predict,
            BatchSettings(
                max_batch=min(settings.max_batch, m.max_batch or settings.max_batch),
                max_wait_ms=settings.max_wait_ms,
                deadline_ms=settings.deadline_ms,
                inline_below_seconds=settings.inline_below_us / 1e6,
            ),
            metrics,
        )
        for m in modules
    }

    @contextlib.asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        try:
            async with contextlib.AsyncExitStack() as stack:
                if prediction_log is not None:
                    await stack.enter_async_context(prediction_log.running())  # flushed after the cache stops
                await stack.enter_async_context(cache.running())
                yield
        finally:
            for batcher in batchers.values():
                batcher.close()
            metrics.close()

    components = Components()
    routes = [PredictRoute(m, cache.slots[m.name], batchers[m.name], prediction_log) for m in modules]
    predict_handlers = [_predict_handler(route, settings) for route in routes]
    if settings.api_token is not None:
        components.security_schemes = {
            _BEARER: SecurityScheme(type="http", scheme="bearer", description="SERVING_API_TOKEN")
        }
    app = Litestar(
        route_handlers=[*predict_handlers, *_operational_handlers(cache, metrics)],
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="mlops-assets prediction service",
            version="1.0.0",
            description="Forecasts from the MLflow registry's champion versions, served from memory.",
            path="/schema",
            render_plugins=[SwaggerRenderPlugin(path=["/", "/swagger"]), JsonRenderPlugin()],
            components=components,
        ),
        state=State({"settings": settings, "cache": cache, "metrics": metrics}),
    )
    direct = DirectPredictRoutes(app.asgi_handler, routes, settings.max_body_bytes, settings.api_token)
    app.asgi_handler = MetricsMiddleware(direct, metrics)
    return app


def _predict_handler(predict_route: PredictRoute, settings: ServingSettings) -> HTTPRouteHandler:
    """The Litestar route of one model: its OpenAPI operation, guard and errors, around `route.answer`.

    A well-formed request is normally answered by `DirectPredictRoutes` before Litestar routes it;
    this handler answers what that path hands over, and documents the route.
    """
    module = predict_route.module

    async def handler(request: Request[Any, Any, Any]) -> Response[Any]:
        received_at = dt.datetime.now(dt.UTC)
        body = await request.body()  # Litestar answers 413 past request_max_body_size
        content, request_id = await predict_route.answer(body, request.headers.get("content-type", ""), received_at)
        return Response(content, status_code=200, media_type=MediaType.JSON, headers={REQUEST_ID_HEADER: request_id})

    # Annotations drive Litestar's docs; the body is decoded by hand (strict msgspec, our errors).
    handler.__annotations__ = {"request": Request, "return": Response[module.response_type]}  # type: ignore[name-defined]
    handler.__name__ = handler.__qualname__ = f"predict_{module.name}"

    request_body = RequestBody(
        required=True,
        description=f"JSON, at most {settings.max_body_bytes} bytes.",
        content={
            "application/json": OpenAPIMediaType(
                # Plain JSON Schema (Litestar serialises dicts as they are), refs inlined since
                # Litestar owns components/schemas.
                schema=_inline_refs(msgspec.json.schema(module.request_type)),  # type: ignore[arg-type]
                examples={k: Example(value=v) for k, v in module.examples.items()} or None,
            ),
            **(
                {"image/png": OpenAPIMediaType(schema={"type": "string", "format": "binary"})}  # type: ignore[arg-type]
                if module.decode_body is not None
                else {}
            ),
        },
    )
    operation_class = type(f"Predict{module.name.title()}Operation", (_PredictOperation,), {"body": request_body})
    errors = {
        400: ResponseSpec(ErrorBody, description="Body is not JSON (malformed, truncated, empty)."),
        413: ResponseSpec(ErrorBody, description=f"Body larger than {settings.max_body_bytes} bytes."),
        422: ResponseSpec(
            ErrorBody,
            description="JSON that is not a valid request: wrong length, not a number, NaN/Infinity, "
            "missing field, or covariates the champion needs.",
        ),
        503: ResponseSpec(
            ErrorBody,
            description="No version of the model is loaded, or the prediction cannot be made within "
            "SERVING_DEADLINE_MS (`deadline_exceeded`); the body names the model and says why.",
        ),
    }
    guards = []
    security: list[dict[str, list[str]]] | None = None
    if settings.api_token is not None:
        guards.append(_bearer_guard(settings.api_token))
        errors[401] = ResponseSpec(ErrorBody, description="Missing or wrong `Authorization: Bearer <token>`.")
        security = [{_BEARER: []}]
    return route(
        module.path,
        http_method=[HttpMethod.PUT, HttpMethod.POST],
        guards=guards,
        security=security,
        operation_class=operation_class,
        responses=errors,
        description=module.description,
        summary=f"Predict with the {settings.alias} of {module.name}",
        status_code=200,
        tags=["predict"],
    )(handler)


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """msgspec's schema with its `$defs` substituted where referenced (no recursive types here)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any, trail: tuple[str, ...]) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                name = node["$ref"].rsplit("/", 1)[-1]
                if name in trail:
                    raise ValueError(f"recursive request type {name!r} cannot be inlined")
                rest = {k: v for k, v in node.items() if k != "$ref"}
                return walk({**defs[name], **rest}, (*trail, name))
            return {k: walk(v, trail) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, trail) for v in node]
        return node

    return walk(schema, ())


@dataclass
class _PredictOperation(Operation):
    """Operation whose request body is the module's msgspec schema (the handler reads raw bytes)."""

    def __post_init__(self) -> None:
        self.request_body = type(self).body  # type: ignore[attr-defined]


def _bearer_guard(token: str) -> Any:
    expected = token_digest(token)

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        header = connection.headers.get("authorization")
        if header is None:
            raise Unauthorized("this endpoint needs the header `Authorization: Bearer <token>`")
        if not bearer_token_matches(header, expected):
            raise Unauthorized("invalid bearer token")

    return guard


def _operational_handlers(cache: ModelCache, metrics: ServingMetrics) -> list[HTTPRouteHandler]:
    @get("/health", tags=["operations"], summary="The process is alive")
    async def health() -> Health:
        return Health(status="ok")

    @get(
        "/ready",
        tags=["operations"],
        summary="Every configured model is loaded or has no champion, and at least one is loaded",
        description="`models` gives each model's `state`; a model in state `no_champion` answers 503 on its "
        "route while the others serve.",
        responses={503: ResponseSpec(Readiness, description="Not ready; `reasons` says why.")},
    )
    async def ready() -> Response[Readiness]:
        reasons = cache.not_ready_reasons()
        body = Readiness(
            ready=not reasons,
            reasons=reasons,
            models={name: ModelStatus(**slot.status()) for name, slot in cache.slots.items()},
        )
        return Response(body, status_code=503 if reasons else 200)

    @get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics",
        media_type="text/plain; version=0.0.4; charset=utf-8",
    )
    async def metrics_endpoint() -> bytes:
        return metrics.render()

    return [health, ready, metrics_endpoint]
