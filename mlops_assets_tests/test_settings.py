"""Pipeline settings: defaults, refused values naming their variable, EnvVars for what the environment set."""

from __future__ import annotations

import dagster as dg
import pytest

from mlops_assets.constants import DEFAULT_TRACKING_URI
from mlops_assets.resources import build_resources
from mlops_assets.settings import PipelineSettings, load_pipeline_settings
from mlops_assets.warehouse_url import DEFAULT_WAREHOUSE_URL


def test_an_empty_environment_gives_the_embedded_defaults() -> None:
    settings = load_pipeline_settings()
    assert (settings.atmos_source, settings.station, settings.atmos_timezone) == ("sample", "JFK", "UTC")
    assert (settings.warehouse_url, settings.mlflow_tracking_uri) == (DEFAULT_WAREHOUSE_URL, DEFAULT_TRACKING_URI)
    assert settings.tuning_num_samples == 0 and settings.alert_webhook_url is None
    assert not any(settings.from_environment(name) for name in PipelineSettings.model_fields)
    resources = build_resources(settings)
    assert resources["warehouse"].url == DEFAULT_WAREHOUSE_URL and resources["source"].station_id == "JFK"


def test_each_source_has_its_default_station(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATMOS_SOURCE", " KMA ")
    assert load_pipeline_settings().station == "108"
    monkeypatch.setenv("ATMOS_STATION", "133")
    assert load_pipeline_settings().station == "133"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("ATMOS_SOURCE", "satellite", "ATMOS_SOURCE='satellite' is not one of sample, csv, kma"),
        ("TUNING_NUM_SAMPLES", "many", r"TUNING_NUM_SAMPLES\n  Input should be a valid integer"),
        ("TUNING_NUM_SAMPLES", "-3", r"TUNING_NUM_SAMPLES\n  Input should be greater than or equal to 0"),
        ("ATMOS_TIMEZONE", "Mars/Olympus", "ATMOS_TIMEZONE='Mars/Olympus' is not an IANA time zone"),
    ],
)
def test_a_bad_value_is_refused_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        load_pipeline_settings()


def test_the_csv_source_needs_a_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATMOS_SOURCE", "csv")
    monkeypatch.setenv("ATMOS_CSV_PATH", "")  # empty counts as unset
    with pytest.raises(ValueError, match="ATMOS_SOURCE=csv needs ATMOS_CSV_PATH"):
        load_pipeline_settings()


def test_values_from_the_environment_reach_resources_as_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://user:secret@mlflow:5000")
    monkeypatch.setenv("WAREHOUSE_URL", "postgresql+psycopg2://user:secret@db/warehouse")
    monkeypatch.setenv("ATMOS_SOURCE", "kma")
    monkeypatch.setenv("KMA_SERVICE_KEY", "kma-secret")
    monkeypatch.setenv("TUNING_NUM_SAMPLES", "4")
    settings = load_pipeline_settings()
    assert settings.from_environment("mlflow_tracking_uri") and not settings.from_environment("ray_address")
    assert "secret" not in repr(settings)  # URLs, the key and the webhook stay out of logs
    resources = build_resources(settings)
    stored = repr(
        (
            resources["registry"].tracking_uri,
            resources["warehouse"].url,
            resources["source"].service_key,
            resources["tuning"].num_samples,
        )
    )
    assert "secret" not in stored  # EnvVars: the code location holds names, not values
    assert resources["registry"].tracking_uri == dg.EnvVar("MLFLOW_TRACKING_URI")
    assert resources["tuning"].num_samples == dg.EnvVar.int("TUNING_NUM_SAMPLES")
    with dg.build_resources({"registry": resources["registry"], "tuning": resources["tuning"]}) as resolved:
        assert resolved.registry.tracking_uri == "http://user:secret@mlflow:5000" and resolved.tuning.num_samples == 4


def test_arguments_are_values_not_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    settings = PipelineSettings(mlflow_tracking_uri="sqlite:///given.db", ATMOS_STATION="EWR")
    assert settings.resource_value("mlflow_tracking_uri") == "sqlite:///given.db"
    assert settings.resource_value("atmos_station") == "EWR"
    assert settings.resource_value("ray_address") == dg.EnvVar("RAY_ADDRESS")
