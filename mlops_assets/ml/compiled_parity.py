"""Logging, next to a model in MLflow, that its compiled trees serve the same answers (any model pipeline)."""

from __future__ import annotations

from typing import Any

import mlflow

from mlops_assets.ml.compiled_trees import compile_model, parity_report


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
