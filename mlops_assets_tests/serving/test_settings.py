"""Configuration: read once from the environment, bad values refused at startup."""

from __future__ import annotations

import pytest

from serving.settings import DEFAULT_MODELS, ServingSettings


def test_defaults_from_an_empty_environment() -> None:
    settings = ServingSettings.from_env({})
    assert (settings.host, settings.port, settings.poll_seconds) == ("127.0.0.1", 8000, 10.0)
    assert settings.api_token is None and settings.alias == "champion"
    assert settings.models == DEFAULT_MODELS and settings.mlflow_tracking_uri


def test_values_from_the_environment() -> None:
    settings = ServingSettings.from_env(
        {
            "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
            "SERVING_HOST": "0.0.0.0",
            "SERVING_PORT": "9000",
            "SERVING_POLL_SECONDS": "2.5",
            "SERVING_API_TOKEN": "secret",
            "SERVING_MODELS": " atmos_temperature , ",
            "SERVING_MODEL_ALIAS": "challenger",
        }
    )
    assert settings == ServingSettings(
        mlflow_tracking_uri="http://127.0.0.1:5000",
        host="0.0.0.0",
        port=9000,
        poll_seconds=2.5,
        api_token="secret",
        models=("atmos_temperature",),
        alias="challenger",
    )


def test_an_empty_token_means_no_auth() -> None:
    assert ServingSettings.from_env({"SERVING_API_TOKEN": ""}).api_token is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SERVING_PORT": "eighty"}, "SERVING_PORT must be an integer"),
        ({"SERVING_PORT": "70000"}, "port must be in"),
        ({"SERVING_POLL_SECONDS": "soon"}, "SERVING_POLL_SECONDS must be a number"),
        ({"SERVING_POLL_SECONDS": "0"}, "poll_seconds must be a positive"),
        ({"SERVING_POLL_SECONDS": "nan"}, "poll_seconds must be a positive"),
        ({"SERVING_MODELS": ",,"}, "models is empty"),
        ({"SERVING_MODELS": "atmos_temperature,atmos_temperature"}, "lists a model twice"),
        ({"SERVING_MAX_BATCH": "0"}, "SERVING_MAX_BATCH"),
        ({"SERVING_MAX_BATCH": "many"}, "SERVING_MAX_BATCH must be an integer"),
        ({"SERVING_MAX_WAIT_MS": "-1"}, "SERVING_MAX_WAIT_MS"),
        ({"SERVING_DEADLINE_MS": "0"}, "SERVING_DEADLINE_MS"),
        ({"SERVING_DEADLINE_MS": "inf"}, "SERVING_DEADLINE_MS"),
        ({"SERVING_INLINE_BELOW_US": "-5"}, "SERVING_INLINE_BELOW_US"),
    ],
)
def test_bad_values_raise(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServingSettings.from_env(env)


def test_unknown_model_fails_create_app() -> None:
    from serving.app import create_app

    with pytest.raises(ValueError, match="no serving module for model 'weather_balloon'"):
        create_app(ServingSettings(mlflow_tracking_uri="sqlite:///unused.db", models=("weather_balloon",)))


def test_batching_settings_from_env() -> None:
    settings = ServingSettings.from_env(
        {"SERVING_MAX_BATCH": "8", "SERVING_MAX_WAIT_MS": "0.5", "SERVING_DEADLINE_MS": "250", "SERVING_INLINE_BELOW_US": "0"}
    )
    assert (settings.max_batch, settings.max_wait_ms, settings.deadline_ms, settings.inline_below_us) == (8, 0.5, 250.0, 0.0)
    defaults = ServingSettings.from_env({})
    assert defaults.max_batch >= 1 and defaults.deadline_ms > 0 and defaults.inline_below_us > 0
