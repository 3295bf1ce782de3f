"""How a forecaster is stored in MLflow and read back: the contract with the prediction service.

A forecaster is a scikit-learn estimator mapping `feature_matrix` rows to 24 temperatures, saved
by `mlflow.sklearn` (skops format) with its `FeatureSpec` in the MLflow model metadata.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
from mlflow.models import ModelSignature, infer_signature
from mlflow.models.model import ModelInfo

from mlops_assets.atmos.estimators import SKOPS_TRUSTED_TYPES
from mlops_assets.atmos.forecast_features import FeatureSpec

FEATURE_SPEC_KEY = "feature_spec"


def forecaster_signature(example: np.ndarray, prediction: np.ndarray) -> ModelSignature:
    return infer_signature(example, prediction)


def log_forecaster(model: Any, spec: FeatureSpec, example: np.ndarray, name: str = "model") -> ModelInfo:
    """Log `model` to the active MLflow run with signature, input example and feature spec."""
    example = np.asarray(example, dtype="float64")
    return mlflow.sklearn.log_model(
        sk_model=model,
        name=name,
        signature=forecaster_signature(example, model.predict(example)),
        input_example=example,
        metadata={FEATURE_SPEC_KEY: spec.to_dict()},
        skops_trusted_types=SKOPS_TRUSTED_TYPES,
    )


def load_forecaster(model_uri: str) -> tuple[Any, FeatureSpec]:
    """The raw estimator and its feature spec for `model_uri` (e.g. `models:/atmos_temperature/3`)."""
    info = mlflow.models.get_model_info(model_uri)
    metadata = info.metadata or {}
    if FEATURE_SPEC_KEY not in metadata:
        raise ValueError(f"{model_uri} carries no {FEATURE_SPEC_KEY!r} metadata: not a forecaster of this project")
    model = mlflow.sklearn.load_model(model_uri)
    return model, FeatureSpec.from_dict(metadata[FEATURE_SPEC_KEY])

