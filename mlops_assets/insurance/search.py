"""The insurance search: its Ray Tune space, one trial, and the final refit (Ray and scikit-learn, no Dagster)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from ray import tune
from sklearn.metrics import mean_absolute_error, r2_score
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from mlops_assets.insurance.families import FEATURES, TARGET, build_insurance_model


def _search_space() -> dict[str, Any]:
    return {
        "family": tune.choice(["gbm", "linear"]),
        "gbm_loss": tune.choice(["absolute_error", "squared_error"]),
        "gbm_learning_rate": tune.loguniform(0.02, 0.3),
        "gbm_max_leaf_nodes": tune.randint(4, 32),
        "gbm_min_samples_leaf": tune.randint(5, 60),
        "gbm_l2": tune.loguniform(1e-4, 10.0),
        "gbm_max_iter": tune.randint(100, 500),
        "linear_alpha": tune.loguniform(1e-3, 100.0),
    }


def search_space(quick: bool) -> tuple[dict[str, Any], int]:
    """Ray Tune param space (flat: each family reads its own keys) and the default trial count."""
    return _search_space(), 4 if quick else 16


@dataclass(frozen=True)
class InsuranceFit:
    model: Pipeline
    mae: float
    r2: float
    fit_seconds: float


def fit_and_score(config: dict[str, Any], train: pd.DataFrame, holdout: pd.DataFrame) -> InsuranceFit:
    """Fit a fresh pipeline (encoders included) on `train` only, score it once on `holdout`."""
    with threadpool_limits(1):
        model = build_insurance_model(config)
        began = time.perf_counter()
        model.fit(train[list(FEATURES)], train[TARGET])
        fit_seconds = time.perf_counter() - began
        predictions = model.predict(holdout[list(FEATURES)])
    return InsuranceFit(
        model,
        float(mean_absolute_error(holdout[TARGET], predictions)),
        float(r2_score(holdout[TARGET], predictions)),
        fit_seconds,
    )


def insurance_trial(config: dict[str, Any], train: pd.DataFrame, validation: pd.DataFrame) -> None:
    """One trial: fit on the training part of the training split, report the validation scores."""
    fit = fit_and_score(config, train, validation)
    tune.report({"val_mae": fit.mae, "val_r2": fit.r2, "fit_seconds": fit.fit_seconds})


def median_baseline_mae(train: pd.DataFrame, test: pd.DataFrame) -> float:
    """MAE of predicting the training median for everyone: any model must beat it."""
    return float(np.mean(np.abs(test[TARGET] - train[TARGET].median())))
