"""Configuration: read once from the environment, bad values refused at startup naming the variable."""

from __future__ import annotations

import os

import pytest

from serving.settings import DEFAULT_MODELS, ServingSettings, default_workers


@pytest.fixture(autouse=True)
def _no_service_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the shell exported, each test starts from the defaults."""
    for name in [name for name in os.environ if name.startswith("SERVING_")] + ["MLFLOW_TRACKING_URI", "WAREHOUSE_URL"]:
        monkeypatch.delenv(name, raising=False)


def test_defaults_from_an_empty_environment() -> None:
    settings = ServingSettings.from_env()
    assert (settings.host, settings.port, settings.poll_seconds) == ("127.0.0.1", 8000, 10.0)
    assert settings.api_token is None and settings.alias == "champion" and settings.prediction_log
    assert settings.models == DEFAULT_MODELS and settings.mlflow_tracking_uri


def test_values_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
        "SERVING_HOST": "0.0.0.0",
        "SERVING_PORT": "9000",
        "SERVING_POLL_SECONDS": "2.5",
        "SERVING_API_TOKEN": "secret",
        "SERVING_MODELS": " atmos_temperature , ",
        "SERVING_MODEL_ALIAS": "challenger",
        "SERVING_PREDICTION_LOG": "OFF",
    }.items():
        monkeypatch.setenv(name, value)
    settings = ServingSettings.from_env()
    monkeypatch.delenv("SERVING_PORT")  # arguments win; the rest still comes from the environment
    assert settings == ServingSettings(
        mlflow_tracking_uri="http://127.0.0.1:5000",
        host="0.0.0.0",
        port=9000,
        poll_seconds=2.5,
        api_token="secret",
        models=("atmos_temperature",),
        alias="challenger",
        prediction_log=False,
    )
    assert "secret" not in repr(settings)


def test_an_empty_token_means_no_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVING_API_TOKEN", "")
    assert ServingSettings.from_env().api_token is None
    assert ServingSettings(api_token="").api_token is None


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("SERVING_PORT", "eighty", r"SERVING_PORT\n  Input should be a valid integer"),
        ("SERVING_PORT", "70000", r"SERVING_PORT\n  Input should be less than or equal to 65535"),
        ("SERVING_POLL_SECONDS", "soon", r"SERVING_POLL_SECONDS\n  Input should be a valid number"),
        ("SERVING_POLL_SECONDS", "0", r"SERVING_POLL_SECONDS\n  Input should be greater than 0"),
        ("SERVING_POLL_SECONDS", "nan", r"SERVING_POLL_SECONDS\n  Input should be a finite number"),
        ("SERVING_MODELS", ",,", "SERVING_MODELS is empty"),
        ("SERVING_MODELS", "atmos_temperature,atmos_temperature", "SERVING_MODELS lists a model twice"),
        ("SERVING_MAX_BATCH", "0", r"SERVING_MAX_BATCH\n  Input should be greater than or equal to 1"),
        ("SERVING_MAX_BATCH", "many", r"SERVING_MAX_BATCH\n  Input should be a valid integer"),
        ("SERVING_MAX_WAIT_MS", "-1", r"SERVING_MAX_WAIT_MS\n  Input should be greater than or equal to 0"),
        ("SERVING_DEADLINE_MS", "0", r"SERVING_DEADLINE_MS\n  Input should be greater than 0"),
        ("SERVING_DEADLINE_MS", "inf", r"SERVING_DEADLINE_MS\n  Input should be a finite number"),
        ("SERVING_INLINE_BELOW_US", "-5", r"SERVING_INLINE_BELOW_US\n  Input should be greater than or equal to 0"),
        ("SERVING_PREDICTION_LOG", "maybe", "SERVING_PREDICTION_LOG must be 'on' or 'off'"),
    ],
)
def test_bad_values_raise_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        ServingSettings.from_env()


def test_unknown_model_fails_create_app() -> None:
    from serving.app import create_app

    with pytest.raises(ValueError, match="no serving module for model 'weather_balloon'"):
        create_app(ServingSettings(mlflow_tracking_uri="sqlite:///unused.db", models=("weather_balloon",)))


def test_batching_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = ServingSettings.from_env()
    assert defaults.max_batch >= 1 and defaults.deadline_ms > 0 and defaults.inline_below_us > 0
    for name, value in {
        "SERVING_MAX_BATCH": "8",
        "SERVING_MAX_WAIT_MS": "0.5",
        "SERVING_DEADLINE_MS": "250",
        "SERVING_INLINE_BELOW_US": "0",
    }.items():
        monkeypatch.setenv(name, value)
    settings = ServingSettings.from_env()
    assert (settings.max_batch, settings.max_wait_ms, settings.deadline_ms, settings.inline_below_us) == (
        8,
        0.5,
        250.0,
        0.0,
    )


def test_one_worker_per_available_core_is_the_default_of_both_commands() -> None:
    import argparse

    from mlops_assets.cli import build_parser
    from serving.server import add_server_arguments

    parser = argparse.ArgumentParser()
    add_server_arguments(parser)
    assert parser.parse_args([]).workers == default_workers() == len(os.sched_getaffinity(0))
    assert build_parser().parse_args(["serve"]).workers == default_workers()
