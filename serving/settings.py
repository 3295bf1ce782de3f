"""Prediction-service configuration, read from the environment once, in `create_app`.

`ServingSettings` is a pydantic-settings model: each field's alias is its environment variable
(`SERVING_*`, plus the pipeline's `MLFLOW_TRACKING_URI` and `WAREHOUSE_URL`), so a bad value
fails at startup with an error that names the variable. Arguments win over the environment;
unset or empty variables keep the defaults. Nothing here runs at import time.
"""

from __future__ import annotations

import os
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from mlops_assets.constants import (
    ATMOS_MODEL_NAME,
    CHAMPION_ALIAS,
    DEFAULT_TRACKING_URI,
    DIGITS_MODEL_NAME,
    INSURANCE_MODEL_NAME,
)
from mlops_assets.environment_settings import EnvironmentSettings
from mlops_assets.warehouse_url import DEFAULT_WAREHOUSE_URL
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


def default_workers() -> int:
    """The `--workers` default of `mlops-assets serve` and `python -m serving`: one per core we may run on."""
    return len(os.sched_getaffinity(0))


class ServingSettings(EnvironmentSettings):
    """Everything the service needs to know, validated on construction."""

    model_config = SettingsConfigDict(env_ignore_empty=True, frozen=True, validate_by_name=True, validate_by_alias=True)

    #: MLflow tracking (and registry) URI: the pipeline's embedded store by default, so
    #: `mlops-assets serve` finds what it trained.
    mlflow_tracking_uri: str = Field(default=DEFAULT_TRACKING_URI, validation_alias="MLFLOW_TRACKING_URI", repr=False)
    host: str = Field(default="127.0.0.1", validation_alias="SERVING_HOST")
    port: int = Field(default=8000, ge=1, le=65535, validation_alias="SERVING_PORT")
    #: Seconds between two registry polls for a moved alias.
    poll_seconds: float = Field(default=10.0, gt=0, allow_inf_nan=False, validation_alias="SERVING_POLL_SECONDS")
    #: When set, predictions need `Authorization: Bearer <token>`; empty (an optional Kubernetes
    #: secret left blank) means auth off.
    api_token: str | None = Field(default=None, validation_alias="SERVING_API_TOKEN", repr=False)
    #: Registered-model names to serve (comma-separated in the variable); each must have a module in `serving.models`.
    models: Annotated[tuple[str, ...], NoDecode] = Field(default=DEFAULT_MODELS, validation_alias="SERVING_MODELS")
    #: The registry alias that names the version to serve.
    alias: str = Field(default=CHAMPION_ALIAS, min_length=1, validation_alias="SERVING_MODEL_ALIAS")
    max_body_bytes: int = Field(default=MAX_BODY_BYTES, gt=0, validation_alias="SERVING_MAX_BODY_BYTES")
    #: Micro-batching (`serving.batching`): most rows in one predict call.
    max_batch: int = Field(default=DEFAULT_MAX_BATCH, ge=1, validation_alias="SERVING_MAX_BATCH")
    #: How long queued requests may wait for a predict thread before a second batch starts.
    max_wait_ms: float = Field(
        default=DEFAULT_MAX_WAIT_MS, ge=0, allow_inf_nan=False, validation_alias="SERVING_MAX_WAIT_MS"
    )
    #: A request that would wait longer than this for its prediction gets 503 at once.
    deadline_ms: float = Field(
        default=DEFAULT_DEADLINE_MS, gt=0, allow_inf_nan=False, validation_alias="SERVING_DEADLINE_MS"
    )
    #: Log answered forecasts to the warehouse table `served_forecasts` (SERVING_PREDICTION_LOG=off: no).
    prediction_log: bool = Field(default=True, validation_alias="SERVING_PREDICTION_LOG")
    #: The pipeline's warehouse (WAREHOUSE_URL), where the prediction log writes.
    warehouse_url: str = Field(default=DEFAULT_WAREHOUSE_URL, validation_alias="WAREHOUSE_URL", repr=False)
    #: An idle model whose predict calls take less CPU than this (smoothed) predicts on the event loop.
    inline_below_us: float = Field(
        default=DEFAULT_INLINE_BELOW_US, ge=0, allow_inf_nan=False, validation_alias="SERVING_INLINE_BELOW_US"
    )

    @classmethod
    def from_env(cls) -> ServingSettings:
        """Settings from the environment alone (what `create_app()` and the CLIs call); bad values raise."""
        return cls()

    @field_validator("api_token")
    @classmethod
    def _empty_token_means_no_auth(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("models", mode="before")
    @classmethod
    def _split_names(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(name.strip() for name in value.split(",") if name.strip())
        return value

    @field_validator("models")
    @classmethod
    def _models_listed_once(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("SERVING_MODELS is empty: configure at least one model to serve")
        if len(set(value)) != len(value):
            raise ValueError(f"SERVING_MODELS lists a model twice: {value}")
        return value

    @field_validator("prediction_log", mode="before")
    @classmethod
    def _on_or_off(cls, value: object) -> object:
        return prediction_log_enabled(value) if isinstance(value, str) else value
