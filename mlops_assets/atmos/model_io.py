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

from mlops_assets.ml.compiled_trees import compile_model, parity_report
from mlops_assets.ml.estimators import SKOPS_TRUSTED_TYPES
from mlops_assets.ml.forecast_features import FeatureSpec

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


def log_compiled_parity(model: Any, holdout: Any) -> dict[str, Any]:
    """Compile the model's trees as the service will, prove it equal on the holdout, log the proof.

    The service serves the compiled form only when it matches `predict`; this records, next to the
    model, how the served answers relate to the model's own on the whole holdout.
    """
    compiled = compile_model(model)
    if compiled is None:
        mlflow.set_tag("compiled_as", "none: served with predict")
        return {"compiled_as": "none"}
    report = parity_report(model, compiled, holdout)
    mlflow.log_metric("compiled_max_abs_diff", float(report["max_abs_diff"]))
    mlflow.set_tags({"compiled_as": compiled.description, "compiled_bit_exact": str(report["bit_exact"])})
    return {"compiled_as": compiled.description, "compiled_max_abs_diff": float(report["max_abs_diff"]), "compiled_rows": int(report["rows"])}
