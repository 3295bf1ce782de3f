"""Real MLflow stores with real registered forecasters for the prediction-service tests.

A session-wide template SQLite store is built once (training takes seconds per version); each test
that needs a store gets its own copy of the database file, so it can move aliases or break the
file without disturbing others. Artifacts stay in the template's directory, read-only.

Template versions of `atmos_temperature` (none has an alias in the template):
  1: ridge on the 72 temperatures only
  2: ridge with calendar terms and the covariate `rh` (needs the object form of the request)
  3: ridge on the 72 temperatures, another fit (answers differ from version 1)
  4: an sklearn model logged without the forecaster's feature spec: loading it must fail
  5: ridge with calendar terms only (like the `ridge_lags` family: no covariates)
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar

from mlops_assets.atmos.forecast_features import FeatureSpec, feature_matrix
from mlops_assets_tests.serving.support import (
    MODEL,
    Store,
    Template,
    TemplateVersion,
    fluent_mlflow_at,
    synthetic_windows,
)


@pytest.fixture(scope="session", autouse=True)
def _mlflow_env() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        mp.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        # A dead registry should fail a poll at once, not after MLflow's retries.
        mp.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        mp.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("SERVING_API_TOKEN", raising=False)
        mp.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
        yield


@pytest.fixture(autouse=True)
def _forget_tracking_uri() -> Iterator[None]:
    """Tests that log models set MLflow's process-wide URI (and MLFLOW_TRACKING_URI): undo it per test."""
    yield
    import mlflow

    mlflow.set_tracking_uri(None)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


def _register(spec: FeatureSpec, seed: int, experiment_id: str) -> TemplateVersion:
    import mlflow
    from sklearn.linear_model import Ridge

    from mlops_assets.atmos.model_io import log_forecaster
    from mlops_assets.resources.mlflow_run import MlflowRun

    temps, target, epoch, rh = synthetic_windows(300, seed)
    X = feature_matrix(spec, temps, epoch if spec.calendar else None, {"rh": rh} if spec.covariates else None)
    estimator = Ridge(alpha=1.0 + seed).fit(X, target)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        logged_to = MlflowRun.existing(mlflow.get_tracking_uri(), run.info.run_id)
        info = log_forecaster(logged_to, estimator, spec, X[:2])
    version = mlflow.register_model(info.model_uri, MODEL).version
    return TemplateVersion(str(version), spec, estimator)


def _register_broken(experiment_id: str) -> TemplateVersion:
    import mlflow
    from sklearn.linear_model import Ridge

    temps, target, _, _ = synthetic_windows(50, 99)
    estimator = Ridge().fit(temps, target)
    with mlflow.start_run(experiment_id=experiment_id):
        info = mlflow.sklearn.log_model(estimator, name="model")
    version = mlflow.register_model(info.model_uri, MODEL).version
    return TemplateVersion(str(version), None, estimator)


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory, _mlflow_env: None) -> Template:
    import mlflow
    import mlflow.models

    root = tmp_path_factory.mktemp("mlflow-template")
    db = root / "template.db"
    uri = f"sqlite:///{db}"
    with pytest.MonkeyPatch.context() as mp:
        # Inferring pip requirements spawns an interpreter per model (~4 s); serving never reads them.
        mp.setattr(mlflow.models, "infer_pip_requirements", lambda *a, fallback=None, **k: list(fallback or []))
        with fluent_mlflow_at(uri):
            experiment_id = mlflow.create_experiment("serving-tests", artifact_location=str(root / "artifacts"))
            versions = {}
            for spec, seed in (
                (FeatureSpec(), 1),
                (FeatureSpec(calendar=True, covariates=("rh",)), 2),
                (FeatureSpec(), 3),
            ):
                v = _register(spec, seed, experiment_id)
                versions[v.version] = v
            broken = _register_broken(experiment_id)
            versions[broken.version] = broken
            calendar_only = _register(FeatureSpec(calendar=True), 5, experiment_id)
            versions[calendar_only.version] = calendar_only
    assert sorted(versions) == ["1", "2", "3", "4", "5"], versions
    return Template(db=db, versions=versions)


@pytest.fixture()
def store(template: Template, tmp_path: Path) -> Store:
    """A private copy of the template store (no champion yet)."""
    db = tmp_path / "mlflow.db"
    shutil.copyfile(template.db, db)
    return Store(uri=f"sqlite:///{db}", db=db, versions=template.versions)


@pytest.fixture()
def make_app(store: Store) -> Callable[..., Litestar]:
    """`make_app(**settings)`: the service on this test's store (fast polling unless overridden)."""

    def build(**overrides: Any) -> Litestar:
        from serving.app import create_app
        from serving.settings import ServingSettings

        options: dict[str, Any] = {"mlflow_tracking_uri": store.uri, "poll_seconds": 0.2, "models": (MODEL,)}
        options.update(overrides)
        return create_app(ServingSettings(**options))

    return build
