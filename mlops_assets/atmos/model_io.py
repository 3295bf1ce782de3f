"""How a forecaster is stored in MLflow and read back: the contract with the prediction service.

A forecaster is a scikit-learn estimator mapping `feature_matrix` rows to 24 temperatures, saved
by `mlflow.sklearn` (skops format) with its `FeatureSpec` in the MLflow model metadata.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
from mlflow.models.model import ModelInfo

from mlops_assets.atmos.estimators import SKOPS_TRUSTED_TYPES
from mlops_assets.atmos.forecast_features import FeatureSpec

if TYPE_CHECKING:  # the prediction service imports this module: it needs no Dagster resources package
    from mlops_assets.resources.mlflow_run import MlflowRun

FEATURE_SPEC_KEY = "feature_spec"


def forecaster_metadata(spec: FeatureSpec) -> dict[str, Any]:
    """The MLflow model metadata that makes a logged estimator a forecaster of this project."""
    return {FEATURE_SPEC_KEY: spec.to_dict()}


def forecaster_example(example: np.ndarray) -> np.ndarray:
    """The input example as the service sends it (float64 rows), so the signature says float64."""
    return np.asarray(example, dtype="float64")


def log_forecaster(
    run: MlflowRun, model: Any, spec: FeatureSpec, example: np.ndarray, name: str = "model"
) -> ModelInfo:
    """Log `model` to `run` as a logged model with signature, input example and feature spec."""
    return run.log_sklearn_model(
        model,
        input_example=forecaster_example(example),
        skops_trusted_types=SKOPS_TRUSTED_TYPES,
        metadata=forecaster_metadata(spec),
        name=name,
    )


def load_forecaster(model_uri: str, tracking_uri: str | None = None) -> tuple[Any, FeatureSpec]:
    """The raw estimator and its feature spec for `model_uri` (e.g. `models:/atmos_temperature/3`).

    `tracking_uri` names the store to read from. None leaves the `models:/` URI to MLflow's
    process-wide tracking URI: only the prediction service relies on that (it sets it once at start).
    """
    if tracking_uri is None:
        return _forecaster_at(model_uri, model_uri)
    from mlops_assets.resources.mlflow_run import downloaded_model  # here: its package imports Dagster

    with downloaded_model(tracking_uri, model_uri) as local:
        return _forecaster_at(str(local), model_uri)


def _forecaster_at(location: str, model_uri: str) -> tuple[Any, FeatureSpec]:
    # Model.load, not get_model_info: that also fetches the logged model from the process-wide tracking URI.
    metadata = mlflow.models.Model.load(location).metadata or {}
    if FEATURE_SPEC_KEY not in metadata:
        raise ValueError(f"{model_uri} carries no {FEATURE_SPEC_KEY!r} metadata: not a forecaster of this project")
    model = mlflow.sklearn.load_model(location)
    return model, FeatureSpec.from_dict(metadata[FEATURE_SPEC_KEY])
