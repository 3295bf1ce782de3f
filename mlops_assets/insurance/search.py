"""One trial of the insurance search, and the final refit (Ray and scikit-learn, no Dagster)."""

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

from mlops_assets.ml.insurance import FEATURES, TARGET, build_insurance_model


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
        model, float(mean_absolute_error(holdout[TARGET], predictions)), float(r2_score(holdout[TARGET], predictions)), fit_seconds
    )


def insurance_trial(config: dict[str, Any], train: pd.DataFrame, validation: pd.DataFrame) -> None:
    """One trial: fit on the training part of the training split, report the validation scores."""
    fit = fit_and_score(config, train, validation)
    tune.report({"val_mae": fit.mae, "val_r2": fit.r2, "fit_seconds": fit.fit_seconds})


def median_baseline_mae(train: pd.DataFrame, test: pd.DataFrame) -> float:
    """MAE of predicting the training median for everyone: any model must beat it."""
    return float(np.mean(np.abs(test[TARGET] - train[TARGET].median())))
