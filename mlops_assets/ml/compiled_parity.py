"""Logging, next to a model in MLflow, that its compiled trees serve the same answers (any model pipeline)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlops_assets.ml.compiled_trees import compile_model, parity_report

if TYPE_CHECKING:  # pure ML: the run handle is only a type here (its package imports Dagster)
    from mlops_assets.resources.mlflow_run import MlflowRun


def log_compiled_parity(run: MlflowRun, model: Any, holdout: Any) -> dict[str, Any]:
    """Compile the model's trees as the service will, prove it equal on the holdout, log the proof to `run`.

    The service serves the compiled form only when it matches `predict`; this records, next to the
    model, how the served answers relate to the model's own on the whole holdout.
    """
    compiled = compile_model(model)
    if compiled is None:
        run.set_tags({"compiled_as": "none: served with predict"})
        return {"compiled_as": "none"}
    report = parity_report(model, compiled, holdout)
    run.log_metrics({"compiled_max_abs_diff": float(report["max_abs_diff"])})
    run.set_tags({"compiled_as": compiled.description, "compiled_bit_exact": str(report["bit_exact"])})
    return {
        "compiled_as": compiled.description,
        "compiled_max_abs_diff": float(report["max_abs_diff"]),
        "compiled_rows": int(report["rows"]),
    }
