"""Prediction-service configuration, read from the environment once, in `create_app`.

Nothing here runs at import time: tests build `ServingSettings(...)` directly, servers call
`ServingSettings.from_env()` in each worker through `create_app()`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from mlops_assets.constants import ATMOS_MODEL_NAME, DEFAULT_TRACKING_URI, DIGITS_MODEL_NAME, INSURANCE_MODEL_NAME
from mlops_assets.monitoring.served_log import DEFAULT_WAREHOUSE_URL
from serving.prediction_log import prediction_log_enabled

#: Every model the pipeline trains; `/ready` needs each loaded, or known to have no champion.
DEFAULT_MODELS: tuple[str, ...] = (ATMOS_MODEL_NAME, INSURANCE_MODEL_NAME, DIGITS_MODEL_NAME)
MAX_BODY_BYTES = 1024 * 1024
#: Where workers share Prometheus samples (prometheus_client's multiprocess mode).
PROMETHEUS_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Micro-batching defaults, chosen by measurement (bench/results/serving.md).
DEFAULT_MAX_BATCH = 32
DEFAULT_MAX_WAIT_MS = 2.0
DEFAULT_DEADLINE_MS = 500.0
DEFAULT_INLINE_BELOW_US = 250.0


@dataclass(frozen=True)
class ServingSettings:
    """Everything the service needs to know, validated on construction."""

    #: MLflow tracking (and registry) URI; None leaves MLflow's own default (`./mlruns`).
    mlflow_tracking_uri: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    #: Seconds between two registry polls for a moved alias.
    poll_seconds: float = 10.0
    #: When set, predictions need `Authorization: Bearer <token>`.
    api_token: str | None = None
    #: Registered-model names to serve; each must have a module in `serving.models`.
    models: tuple[str, ...] = field(default=DEFAULT_MODELS)
    #: The registry alias that names the version to serve.
    alias: str = "champion"
    max_body_bytes: int = MAX_BODY_BYTES
    #: Micro-batching (`serving.batching`): most rows in one predict call.
    max_batch: int = DEFAULT_MAX_BATCH
    #: How long queued requests may wait for a predict thread before a second batch starts.
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS
    #: A request that would wait longer than this for its prediction gets 503 at once.
    deadline_ms: float = DEFAULT_DEADLINE_MS
    #: Log answered forecasts to the warehouse table `served_forecasts` (SERVING_PREDICTION_LOG=off: no).
    prediction_log: bool = True
    #: The pipeline's warehouse (WAREHOUSE_URL), where the prediction log writes.
    warehouse_url: str = DEFAULT_WAREHOUSE_URL
    #: An idle model whose predict calls take less CPU than this (smoothed) predicts on the event loop.
    inline_below_us: float = DEFAULT_INLINE_BELOW_US

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("ServingSettings.models is empty: configure at least one model to serve")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"ServingSettings.models lists a model twice: {self.models}")
        if not (math.isfinite(self.poll_seconds) and self.poll_seconds > 0):
            raise ValueError(f"poll_seconds must be a positive number of seconds, got {self.poll_seconds}")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if not self.alias:
            raise ValueError("alias must not be empty")
        if self.max_body_bytes <= 0:
            raise ValueError(f"max_body_bytes must be positive, got {self.max_body_bytes}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch (SERVING_MAX_BATCH) must be >= 1, got {self.max_batch}")
        if not (math.isfinite(self.max_wait_ms) and self.max_wait_ms >= 0):
            raise ValueError(f"max_wait_ms (SERVING_MAX_WAIT_MS) must be >= 0, got {self.max_wait_ms}")
        if not (math.isfinite(self.inline_below_us) and self.inline_below_us >= 0):
            raise ValueError(f"inline_below_us (SERVING_INLINE_BELOW_US) must be >= 0, got {self.inline_below_us}")
        if not (math.isfinite(self.deadline_ms) and self.deadline_ms > 0):
            raise ValueError(f"deadline_ms (SERVING_DEADLINE_MS) must be > 0, got {self.deadline_ms}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServingSettings:
        """Settings from `MLFLOW_TRACKING_URI` and the `SERVING_*` variables; bad values raise."""
        env = os.environ if environ is None else environ
        models = env.get("SERVING_MODELS")
        return cls(
            # The pipeline's embedded store by default, so `mlops-assets serve` finds what it trained.
            mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI,
            host=env.get("SERVING_HOST") or cls.host,
            port=_int(env, "SERVING_PORT", cls.port),
            poll_seconds=_float(env, "SERVING_POLL_SECONDS", cls.poll_seconds),
            # An empty token (an optional Kubernetes secret left blank) means auth off, not "".
            api_token=env.get("SERVING_API_TOKEN") or None,
            models=DEFAULT_MODELS if not models else tuple(m.strip() for m in models.split(",") if m.strip()),
            alias=env.get("SERVING_MODEL_ALIAS") or cls.alias,
            max_batch=_int(env, "SERVING_MAX_BATCH", cls.max_batch),
            max_wait_ms=_float(env, "SERVING_MAX_WAIT_MS", cls.max_wait_ms),
            deadline_ms=_float(env, "SERVING_DEADLINE_MS", cls.deadline_ms),
            prediction_log=prediction_log_enabled(env.get("SERVING_PREDICTION_LOG")),
            warehouse_url=env.get("WAREHOUSE_URL") or DEFAULT_WAREHOUSE_URL,
            inline_below_us=_float(env, "SERVING_INLINE_BELOW_US", cls.inline_below_us),
        )


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
