"""`atmos_temperature`: the next 24 hourly temperatures from the last 72 (the forecaster contract).

The input row is built by `mlops_assets.atmos.forecast_features.feature_row`, the same code training
uses, from the request and the loaded version's `FeatureSpec`; the estimator is called directly on
that NumPy row (no pyfunc, no pandas: see bench/README.md for why), or through an exact
shortcut for plain linear models (`serving.models._sklearn`).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import math
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import numpy as np

from mlops_assets.atmos.forecast_features import HORIZON_HOURS, INPUT_HOURS, FeatureSpec, feature_row
from mlops_assets.atmos.model_io import load_forecaster
from mlops_assets.constants import ATMOS_MODEL_NAME
from serving.errors import InvalidInput
from serving.models import ModelModule, ModelRef
from serving.models._sklearn import Predict, predictor

NAME = ATMOS_MODEL_NAME
log = logging.getLogger(__name__)

#: Beyond any air temperature on record (-89.2 .. 56.7 °C): catches Kelvin/Fahrenheit mix-ups, and
#: bounded inputs keep every forecast finite.
Temperature = Annotated[float, msgspec.Meta(ge=-100.0, le=100.0)]
#: Hourly weather variables (%, hPa, m/s, mm ...) are far inside this; it bounds the forecast too.
CovariateValue = Annotated[float, msgspec.Meta(ge=-1e6, le=1e6)]

TimeSeries = Annotated[
    list[Temperature],
    msgspec.Meta(
        min_length=INPUT_HOURS,
        max_length=INPUT_HOURS,
        description=f"The last {INPUT_HOURS} hourly temperatures (°C, -100..100), oldest first.",
    ),
]


class AtmosTemperatureRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Object form of the request: needed for covariates, or to say when the window ends."""

    time_series: TimeSeries
    last_observed_at: (
        Annotated[
            dt.datetime,
            msgspec.Meta(
                tz=True,
                description="Time of the last observed hour, ISO-8601 with a UTC offset; "
                "default: the latest whole UTC hour.",
            ),
        ]
        | None
    ) = None
    covariates: (
        Annotated[
            dict[str, list[CovariateValue]],
            msgspec.Meta(
                description="Other hourly variables by name (e.g. `rh`), the last 24 hours each, oldest first. "
                "Names the champion does not use are ignored."
            ),
        ]
        | None
    ) = None


#: The body: either the bare list of 72 temperatures or the object form.
RequestBody = TimeSeries | AtmosTemperatureRequest


class AtmosTemperatureResponse(msgspec.Struct):
    result: Annotated[
        list[float],
        msgspec.Meta(
            min_length=HORIZON_HOURS,
            max_length=HORIZON_HOURS,
            description=f"Forecast temperatures (°C) for the next {HORIZON_HOURS} hours, nearest first.",
        ),
    ]
    hours: Annotated[
        list[str],
        msgspec.Meta(
            min_length=HORIZON_HOURS,
            max_length=HORIZON_HOURS,
            description="The UTC instants `result` forecasts (ISO-8601 with `Z`): the last observed hour "
            "plus 1..24 hours.",
        ),
    ]
    model: ModelRef


@dataclass(frozen=True, slots=True)
class Window:
    """A request with its implicit parts made explicit (`complete`), read by `build_input` and the response."""

    time_series: list[float]
    #: UTC; the latest whole UTC hour when the request did not say (the original real-time contract).
    last_observed_at: dt.datetime
    covariates: dict[str, list[float]] | None
    #: The request was the bare list (errors then point at `$`, not at a field it could not have).
    bare: bool


def complete(body: list[float] | AtmosTemperatureRequest, now: dt.datetime | None = None) -> Window:
    """A window without `last_observed_at` ends at the latest whole UTC hour (`now` floored)."""
    if isinstance(body, list):
        return Window(body, latest_whole_hour(now), None, bare=True)
    last = body.last_observed_at
    last = latest_whole_hour(now) if last is None else last.astimezone(dt.UTC)
    return Window(body.time_series, last, body.covariates, bare=False)


def latest_whole_hour(now: dt.datetime | None = None) -> dt.datetime:
    now = dt.datetime.now(dt.UTC) if now is None else now.astimezone(dt.UTC)
    return now.replace(minute=0, second=0, microsecond=0)


@functools.lru_cache(maxsize=1024)
def forecast_hours(last_observed_at: dt.datetime) -> tuple[str, ...]:
    """The 24 UTC instants after `last_observed_at`, as ISO-8601 with `Z`.

    Cached: real-time requests within an hour share their last hour (formatting costs ~30 us).
    """
    return tuple(
        (last_observed_at + dt.timedelta(hours=h)).isoformat().replace("+00:00", "Z")
        for h in range(1, HORIZON_HOURS + 1)
    )


@dataclass(frozen=True)
class Forecaster:
    """A loaded version: the raw estimator, the inputs it was trained on, and how to call it."""

    estimator: Any
    spec: FeatureSpec
    #: `estimator.predict` or an exact shortcut of it (see `serving.models._sklearn`).
    predict: Predict
    predict_path: str


def load(model_uri: str) -> Forecaster:
    """Load through the project contract, then prove the estimator answers the contract's shape."""
    estimator, spec = load_forecaster(model_uri)
    expected = getattr(estimator, "n_features_in_", spec.n_features)
    if expected != spec.n_features:
        raise ValueError(
            f"{model_uri}: estimator takes {expected} features but its feature spec makes {spec.n_features}"
        )
    probe = np.asarray(estimator.predict(np.zeros((1, spec.n_features))))
    if probe.shape != (1, HORIZON_HOURS):
        raise ValueError(f"{model_uri}: estimator answers shape {probe.shape}, the contract is (1, {HORIZON_HOURS})")
    predict_fn, path = predictor(estimator, spec.n_features)
    log.info("%s: %s with %s, called via %s", model_uri, type(estimator).__name__, spec, path)
    return Forecaster(estimator=estimator, spec=spec, predict=predict_fn, predict_path=path)


def build_input(forecaster: Forecaster, window: Window) -> np.ndarray:
    """The (1, n_features) row; msgspec already guaranteed 72 finite numbers (JSON has no NaN)."""
    spec = forecaster.spec
    given = window.covariates or {}
    missing = [name for name in spec.covariates if name not in given]
    if missing:
        field = "$" if window.bare else f"$.covariates.{missing[0]}"
        raise InvalidInput(_needs_message(spec, missing), field)
    used = {name: given[name] for name in spec.covariates}
    for name, values in used.items():
        if len(values) != spec.covariate_hours:
            raise InvalidInput(
                f"covariate {name!r} must have {spec.covariate_hours} values (one per hour, oldest first), "
                f"got {len(values)}",
                f"$.covariates.{name}",
            )
    return feature_row(spec, window.time_series, window.last_observed_at if spec.needs_time else None, used or None)


def predict(forecaster: Forecaster, rows: np.ndarray) -> np.ndarray:
    return np.asarray(forecaster.predict(rows))


def shape_response(output: np.ndarray, model: ModelRef, window: Window) -> AtmosTemperatureResponse:
    result = output[0].tolist()
    # A finite sum means every value is finite (NaN and infinity propagate); summing 24 Python floats is
    # ~10x cheaper than `np.isfinite(...).all()`. Only an overflowing sum takes the exact test.
    if not math.isfinite(sum(result)) and not all(map(math.isfinite, result)):
        # Finite but absurd inputs (1e308) can overflow a linear model: refuse rather than send null.
        raise InvalidInput("the inputs are outside the range this model can forecast from: the forecast is not finite")
    hours = list(forecast_hours(window.last_observed_at))
    return AtmosTemperatureResponse(result=result, hours=hours, model=model)


def _needs_message(spec: FeatureSpec, missing: list[str]) -> str:
    return (
        f"the champion version needs `covariates` {missing} ({spec.covariate_hours} hourly values each): "
        'send the object form {"time_series": [72 numbers], "last_observed_at": ..., "covariates": {...}}'
    )


def _example_series() -> list[float]:
    return [round(10.0 + 6.0 * math.sin(2 * math.pi * (h - 9) / 24), 2) for h in range(INPUT_HOURS)]


MODEL: ModelModule[Forecaster, Window, np.ndarray, np.ndarray] = ModelModule(
    name=NAME,
    request_type=RequestBody,
    response_type=AtmosTemperatureResponse,
    load=load,
    build_input=build_input,
    predict=predict,
    shape_response=shape_response,
    complete=complete,
    response_uses_request=True,
    description=(
        f"Forecast the next {HORIZON_HOURS} hourly temperatures from the last {INPUT_HOURS}. "
        "Send a bare JSON list of 72 numbers, or the object form. Without `last_observed_at` the window "
        "ends at the latest whole UTC hour (real-time use). Champions that use covariates need the object "
        "form with them: the error names what is missing. `hours` in the answer gives the forecast's UTC hours."
    ),
    examples={
        "list": _example_series(),
        "object": {
            "time_series": _example_series(),
            "last_observed_at": "2013-06-01T23:00:00+00:00",
            "covariates": {"rh": [60.0] * HORIZON_HOURS},
        },
    },
)
