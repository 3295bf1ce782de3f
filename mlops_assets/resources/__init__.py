"""The one place that picks resource implementations for the environment.

Values come from `PipelineSettings` (read once when definitions load): anything the environment
set, secrets included, goes in as `dg.EnvVar`, so it is resolved when a run starts and never
stored in the code location.
"""

from __future__ import annotations

from typing import Any

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
from mlops_assets.resources.mlflow_registry import MlflowRegistry
from mlops_assets.resources.tuned_model_store import TUNED_MODEL_IO_MANAGER, MlflowTunedModelIOManager
from mlops_assets.resources.warehouse import WarehouseResource
from mlops_assets.settings import PipelineSettings
from mlops_assets.tuning.resources import TuningResource


def build_observation_source(settings: PipelineSettings) -> ObservationSource:
    """The weather source ATMOS_SOURCE names: bundled sample, a station CSV or the KMA API."""
    station = settings.resource_value("atmos_station") if settings.atmos_station is not None else settings.station
    if settings.atmos_source == "sample":
        return SampleObservationSource(station_id=station)
    if settings.atmos_source == "csv":
        return CsvObservationSource(
            path=settings.resource_value("atmos_csv_path"),
            station_id=station,
            time_zone=settings.resource_value("atmos_timezone"),
            columns=settings.resource_value("atmos_csv_columns"),
        )
    # The key is always an EnvVar unless given as an argument: the code location may load without it,
    # the run reads it when it starts (README) and fails there naming KMA_SERVICE_KEY.
    service_key = (
        settings.resource_value("kma_service_key") if settings.kma_service_key else settings.env_var("kma_service_key")
    )
    endpoint = (
        settings.resource_value("kma_asos_endpoint") if settings.kma_asos_endpoint else KmaAsosClient.DEFAULT_ENDPOINT
    )
    return KmaObservationSource(service_key=service_key, endpoint=endpoint, station_id=station)


def build_policy_source(settings: PipelineSettings) -> PolicySource:
    """The user's policies when INSURANCE_CSV_PATH is set, else the labelled synthetic sample."""
    if settings.insurance_csv_path:
        return CsvPolicySource(path=settings.resource_value("insurance_csv_path"))
    return SyntheticPolicySource()


def mlflow_resources(registry: MlflowRegistry) -> dict[str, Any]:
    """The registry and the I/O manager that keeps tuned models in it (both point at one MLflow)."""
    return {"registry": registry, TUNED_MODEL_IO_MANAGER: MlflowTunedModelIOManager(registry=registry)}


def build_resources(settings: PipelineSettings) -> dict[str, Any]:
    """Resources for the settings read when definitions load (`load_pipeline_settings()`)."""
    return {
        "source": build_observation_source(settings),
        "warehouse": WarehouseResource(url=settings.resource_value("warehouse_url")),
        **mlflow_resources(MlflowRegistry(tracking_uri=settings.resource_value("mlflow_tracking_uri"))),
        "policy_source": build_policy_source(settings),
        "digits_source": build_digits_source(settings),
        "monitoring": MonitoringSettings(),
        "tuning": TuningResource(
            ray_address=settings.resource_value("ray_address"),
            num_samples=settings.resource_value("tuning_num_samples"),
        ),
    }
