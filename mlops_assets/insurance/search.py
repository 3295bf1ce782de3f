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


def insurance_trial(config: dict[str, Any], train: pd.DataFrame, validation: pd.DataFrame) -> None:
    """Fit on the training part of the training split, score the validation part."""
    with threadpool_limits(1):
        model = build_insurance_model(config)
        began = time.perf_counter()
        model.fit(train[list(FEATURES)], train[TARGET])
        fit_seconds = time.perf_counter() - began
        predictions = model.predict(validation[list(FEATURES)])
    tune.report(
        {
            "val_mae": float(mean_absolute_error(validation[TARGET], predictions)),
            "val_r2": float(r2_score(validation[TARGET], predictions)),
            "fit_seconds": fit_seconds,
        }
    )


@dataclass(frozen=True)
class InsuranceRefit:
    model: Pipeline
    test_mae: float
    test_r2: float
    fit_seconds: float


def refit_insurance(config: dict[str, Any], train: pd.DataFrame, test: pd.DataFrame) -> InsuranceRefit:
    """Refit on the whole training split (encoders included: never on test), score test once."""
    with threadpool_limits(1):
        model = build_insurance_model(config)
        began = time.perf_counter()
        model.fit(train[list(FEATURES)], train[TARGET])
        fit_seconds = time.perf_counter() - began
        predictions = model.predict(test[list(FEATURES)])
    return InsuranceRefit(
        model, float(mean_absolute_error(test[TARGET], predictions)), float(r2_score(test[TARGET], predictions)), fit_seconds
    )


def median_baseline_mae(train: pd.DataFrame, test: pd.DataFrame) -> float:
    """MAE of predicting the training median for everyone: any model must beat it."""
    return float(np.mean(np.abs(test[TARGET] - train[TARGET].median())))
