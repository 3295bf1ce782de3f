"""The one place that picks resource implementations for the environment.

Values come from environment variables: secrets (and anything set) through `dg.EnvVar`, so
they are read when a run starts, never at import time and never stored in the code location.
"""

from __future__ import annotations

import os
from typing import Any

import dagster as dg

from mlops_assets.atmos.source import (
    CsvObservationSource,
    KmaAsosClient,
    KmaObservationSource,
    ObservationSource,
    SampleObservationSource,
)
from mlops_assets.digits.source import build_digits_source
from mlops_assets.insurance.source import CsvPolicySource, PolicySource, SyntheticPolicySource
from mlops_assets.monitoring.resources import MonitoringSettings
from mlops_assets.resources.mlflow_registry import DEFAULT_TRACKING_URI, MlflowRegistry
from mlops_assets.resources.tuned_model_store import TUNED_MODEL_IO_MANAGER, MlflowTunedModelIOManager
from mlops_assets.resources.warehouse import DEFAULT_WAREHOUSE_URL, WarehouseResource
from mlops_assets.tuning.resources import TuningResource


SOURCES = ("sample", "csv", "kma")


def env_or_default(name: str, default: str) -> str | dg.EnvVar:
    """`dg.EnvVar(name)` when the variable is set, else the embedded default."""
    return dg.EnvVar(name) if os.environ.get(name) else default


def atmos_source_kind() -> str:
    kind = os.environ.get("ATMOS_SOURCE", "sample").strip().lower()
    if kind not in SOURCES:
        raise ValueError(f"ATMOS_SOURCE={kind!r} is not one of {', '.join(SOURCES)}")
    return kind


DEFAULT_STATIONS = {"sample": "JFK", "csv": "csv", "kma": "108"}


def configured_station() -> str:
    """The station the pipeline works on, for code outside a Dagster run (CLI helpers)."""
    return os.environ.get("ATMOS_STATION") or DEFAULT_STATIONS[atmos_source_kind()]


def build_observation_source(kind: str) -> ObservationSource:
    if kind == "sample":
        return SampleObservationSource(station_id=env_or_default("ATMOS_STATION", DEFAULT_STATIONS["sample"]))
    if kind == "csv":
        if not os.environ.get("ATMOS_CSV_PATH"):
            raise ValueError(
                "ATMOS_SOURCE=csv needs ATMOS_CSV_PATH (a CSV with a time and a temperature column; "
                "map other names with ATMOS_CSV_COLUMNS, e.g. time=Date,tmp=Temperature)"
            )
        return CsvObservationSource(
            path=dg.EnvVar("ATMOS_CSV_PATH"),
            station_id=env_or_default("ATMOS_STATION", DEFAULT_STATIONS["csv"]),
            time_zone=env_or_default("ATMOS_TIMEZONE", "UTC"),
            columns=env_or_default("ATMOS_CSV_COLUMNS", ""),
        )
    return KmaObservationSource(
        service_key=dg.EnvVar("KMA_SERVICE_KEY"),
        endpoint=env_or_default("KMA_ASOS_ENDPOINT", KmaAsosClient.DEFAULT_ENDPOINT),
        station_id=env_or_default("ATMOS_STATION", DEFAULT_STATIONS["kma"]),
    )


def build_policy_source() -> PolicySource:
    """The user's policies when INSURANCE_CSV_PATH is set, else the labelled synthetic sample."""
    if os.environ.get("INSURANCE_CSV_PATH"):
        return CsvPolicySource(path=dg.EnvVar("INSURANCE_CSV_PATH"))
    return SyntheticPolicySource()


def mlflow_resources(registry: MlflowRegistry) -> dict[str, Any]:
    """The registry and the I/O manager that keeps tuned models in it (both point at one MLflow)."""
    return {"registry": registry, TUNED_MODEL_IO_MANAGER: MlflowTunedModelIOManager(registry=registry)}


def build_resources() -> dict[str, Any]:
    """Resources for the current environment (called when definitions load)."""
    return {
        "source": build_observation_source(atmos_source_kind()),
        "warehouse": WarehouseResource(url=env_or_default("WAREHOUSE_URL", DEFAULT_WAREHOUSE_URL)),
        **mlflow_resources(MlflowRegistry(tracking_uri=env_or_default("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI))),
        "policy_source": build_policy_source(),
        "digits_source": build_digits_source(),
        "monitoring": MonitoringSettings(),
        "tuning": TuningResource(
            ray_address=env_or_default("RAY_ADDRESS", ""),
            num_samples=dg.EnvVar.int("TUNING_NUM_SAMPLES") if os.environ.get("TUNING_NUM_SAMPLES") else 0,
        ),
    }
