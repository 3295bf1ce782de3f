"""What the generic service needs from one served model family, and where each one lives.

A served model is one small module in this package exposing `MODEL: ModelModule`: the registered
model name (also the route `/predict/<name>`, unless `route` says otherwise), the request and
response types, how to load a registry version's files into an in-memory artifact, how to turn a
decoded request into the estimator's input, and how to shape the estimator's output into the
response. The cache, poller, routes, metrics and OpenAPI schema are generic over these modules.

To add a model: write `serving/models/<name>.py` with `MODEL = ModelModule(...)`, list it in
`MODULES` below, and add `<name>` to `SERVING_MODELS`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec

from mlops_assets.constants import ATMOS_MODEL_NAME, DIGITS_MODEL_NAME, INSURANCE_MODEL_NAME

ArtifactT = TypeVar("ArtifactT")
BodyT = TypeVar("BodyT")
InputT = TypeVar("InputT")
OutputT = TypeVar("OutputT")

#: Served model name -> module defining `MODEL`; imported only when the model is configured.
MODULES: dict[str, str] = {
    ATMOS_MODEL_NAME: "serving.models.atmos_temperature",
    INSURANCE_MODEL_NAME: "serving.models.insurance_charges",
    DIGITS_MODEL_NAME: "serving.models.digit_classifier",
}


class ModelRef(msgspec.Struct, frozen=True):
    """Which registry version answered: part of every prediction response."""

    name: str
    version: str
    alias: str


@dataclass(frozen=True)
class ModelModule(Generic[ArtifactT, BodyT, InputT, OutputT]):
    """One served model family; the functions are pure, so one loaded artifact serves all requests."""

    #: Registered model name in MLflow; the route is `/predict/<name>`.
    name: str
    #: Type the JSON body is strictly decoded into by msgspec (its JSON schema documents the route).
    request_type: Any
    #: msgspec Struct returned on success (documents the 200 response).
    response_type: type[msgspec.Struct]
    #: Local directory of one registry version's MLflow model (the cache downloads it from the
    #: configured registry) -> in-memory artifact. Runs in a worker thread and reads only that
    #: directory; raises when the version is not usable (it is then not swapped in).
    load: Callable[[str], ArtifactT]
    #: Decoded request -> estimator input. Raises `InvalidInput` for what the type cannot express
    #: (e.g. covariates the loaded version needs). Must not talk to MLflow.
    build_input: Callable[[ArtifactT, BodyT], InputT]
    #: Inputs of one or more requests stacked along axis 0 -> outputs, one entry per input row
    #: (runs in a predict thread; see `serving.batching`).
    predict: Callable[[ArtifactT, InputT], OutputT]
    #: Estimator output + which version answered -> response body. Raises `InvalidInput` when the
    #: output cannot be answered (e.g. not finite). Called with the completed body as a third
    #: argument when `response_uses_request` is set.
    shape_response: Callable[..., msgspec.Struct]
    #: Markdown for the OpenAPI operation.
    description: str = ""
    #: Name -> example request body, shown in the interactive docs.
    examples: dict[str, Any] = field(default_factory=dict)
    #: Path segment of `/predict/<route>` when it differs from the model name (kept from the old API).
    route: str = ""
    #: Optional: decoded body -> the body with what it leaves implicit filled in (e.g. "now"),
    #: computed once per request so that `build_input` and `shape_response` see the same value.
    complete: Callable[[Any], BodyT] | None = None
    #: When True, `shape_response(output, model_ref, body)` also gets the completed body (for
    #: answers that echo the request, such as the forecast's hours).
    response_uses_request: bool = False
    #: Most requests `predict` may get at once (micro-batching stacks their input rows and gives
    #: each its slice of the output rows). 1 for a predict that answers a single row only.
    max_batch: int | None = None
    #: Optional: a non-JSON body (`Content-Type: image/...`) and its content type -> the decoded
    #: request; raises an HTTP 4xx for what it cannot read (e.g. the digits route's PNG bodies).
    decode_body: Callable[[bytes, str], BodyT] | None = None

    @property
    def path(self) -> str:
        return f"/predict/{self.route or self.name}"


def get_module(name: str) -> ModelModule[Any, Any, Any, Any]:
    """The `MODEL` of the module serving `name`; unknown names raise with the known ones listed."""
    if name not in MODULES:
        raise ValueError(f"no serving module for model {name!r}; known models: {sorted(MODULES)}")
    module = importlib.import_module(MODULES[name])
    model: ModelModule[Any, Any, Any, Any] = module.MODEL
    if model.name != name:
        raise ValueError(f"{MODULES[name]}.MODEL is named {model.name!r}, expected {name!r}")
    return model
