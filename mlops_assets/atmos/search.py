"""The forecaster search: its Ray Tune spaces, what one trial does, and the final refit
(Ray and sklearn, no Dagster)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray import tune
from threadpoolctl import threadpool_limits

from mlops_assets.atmos.dataset import TrainingWindows, WindowSet, concat_windows
from mlops_assets.atmos.families import FAMILIES, PROGRESS_STAGES, REGIMES, build_forecaster, fit_with_progress
from mlops_assets.atmos.forecast_features import FeatureSpec
from mlops_assets.atmos.metrics import per_horizon_mae

#: The default search: 4 families in one flat space; `ridge_*` keys are shared by the ridge
#: families, `gbm_*` keys by the boosted ones. On a year of hourly windows (6000 train windows)
#: and one core, the largest fit (100 iterations x 10 components x 31 leaves x 20 samples per
#: leaf) takes ~6 s, a ridge 0.1 s, the median boosted fit ~1.5 s.
SEARCH_SPACE: dict[str, Any] = {
    "family": tune.choice(list(FAMILIES)),
    "ridge_alpha": tune.loguniform(0.1, 100.0),
    "ridge_regime": tune.choice(list(REGIMES)),
    "gbm_learning_rate": tune.loguniform(0.03, 0.2),
    "gbm_max_iter": tune.choice([30, 50, 100]),
    "gbm_max_leaf_nodes": tune.choice([7, 15, 31]),
    "gbm_min_samples_leaf": tune.choice([20, 50, 100, 200, 400]),
    "gbm_components": tune.choice([3, 6, 10]),
    "gbm_lags": tune.choice([12, 24]),
    "gbm_covariate_lags": tune.choice([3, 6, 12]),
}
#: Trials of the default search.
DEFAULT_NUM_SAMPLES = 20

#: A tiny space for tests on a few weeks of data: every family, fits well under a second.
QUICK_SEARCH_SPACE: dict[str, Any] = {
    "family": tune.choice(list(FAMILIES)),
    "ridge_alpha": tune.loguniform(0.1, 10.0),
    "ridge_regime": tune.choice(list(REGIMES)),
    "gbm_learning_rate": 0.1,
    "gbm_max_iter": tune.choice([5, 10]),
    "gbm_max_leaf_nodes": 7,
    "gbm_min_samples_leaf": 5,
    "gbm_components": 3,
    "gbm_lags": 12,
    "gbm_covariate_lags": 3,
}
QUICK_NUM_SAMPLES = 4


def horizon_metrics(prefix: str, per_horizon: np.ndarray) -> dict[str, float]:
    """`{prefix}_mae` and one `{prefix}_mae_hNN` per lead hour (MLflow plots them side by side)."""
    metrics = {f"{prefix}_mae": float(np.mean(per_horizon))}
    metrics.update({f"{prefix}_mae_h{hour:02d}": float(value) for hour, value in enumerate(per_horizon, start=1)})
    return metrics


#: Reports a trial can make: one per boosting stage, then the final one with every metric.
TRIAL_ITERATIONS = PROGRESS_STAGES + 1


def forecaster_trial(config: dict[str, Any], windows: TrainingWindows) -> None:
    """Fit on train, score on validation, report to Tune (and so to the trial's MLflow run).

    Boosted families report their validation MAE after each warm-started stage, so ASHA can
    stop a poor configuration early; every trial ends with a report of all its metrics.
    """

    def report_stage(stage: int, val_mae: float) -> None:
        tune.report({"val_mae": val_mae, "stage": stage})

    with threadpool_limits(1):
        model, spec = build_forecaster(config, windows.covariates)
        validation = windows.validation.features(spec)
        began = time.perf_counter()
        fit_with_progress(
            model,
            windows.train.features(spec),
            windows.train.targets,
            validation,
            windows.validation.targets,
            report_stage,
        )
        fit_seconds = time.perf_counter() - began
        predictions = model.predict(validation)
    metrics = horizon_metrics("val", per_horizon_mae(predictions, windows.validation.targets))
    metrics["fit_seconds"] = fit_seconds
    tune.report(metrics)


@dataclass(frozen=True)
class RefitModel:
    """The best configuration refit on train + validation, scored once on test."""

    model: Any
    spec: FeatureSpec
    config: dict[str, Any]
    test_predictions: np.ndarray
    test_per_horizon_mae: np.ndarray
    fit_seconds: float

    @property
    def test_mae(self) -> float:
        return float(np.mean(self.test_per_horizon_mae))


def refit_and_score(config: dict[str, Any], windows: TrainingWindows) -> RefitModel:
    """Refit the chosen configuration on everything before the test period, then score test."""
    training: WindowSet = concat_windows(windows.train, windows.validation)
    with threadpool_limits(1):
        model, spec = build_forecaster(config, windows.covariates)
        began = time.perf_counter()
        model.fit(training.features(spec), training.targets)
        fit_seconds = time.perf_counter() - began
        predictions = model.predict(windows.test.features(spec))
    return RefitModel(model, spec, config, predictions, per_horizon_mae(predictions, windows.test.targets), fit_seconds)
