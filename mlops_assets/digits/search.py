"""The digits search: its Ray Tune spaces, one trial, and the final refit (Ray and scikit-learn, no Dagster)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ray import tune
from threadpoolctl import threadpool_limits

from mlops_assets.digits.dataset import LabelledDigits
from mlops_assets.digits.families import KNOWN_GOOD, SEARCHED_FAMILIES, DigitClassifier, build_classifier, error_rate


def search_space(quick: bool) -> tuple[dict[str, Any], int]:
    """Ray Tune param space (flat: each family reads its own keys) and the default trial count."""
    space = {
        "family": tune.choice(list(SEARCHED_FAMILIES)),
        "svc_c": tune.loguniform(0.5, 100.0),
        "svc_gamma": tune.loguniform(0.02, 1.0),
        "mlp_hidden": tune.choice([64, 128, 256]),
        "mlp_alpha": tune.loguniform(1e-5, 1e-1),
        "nca_components": tune.randint(8, 33),
        "knn_k": tune.randint(1, 8),
    }
    return space, 4 if quick else 12


def fixed_space(config: dict[str, Any]) -> dict[str, Any]:
    """A param space with exactly one point: `config` over the defaults (a forced retrain)."""
    build_classifier(config)  # validate before Ray starts
    full = {**KNOWN_GOOD, **config}
    return {key: tune.choice([value]) for key, value in full.items()}


@dataclass(frozen=True)
class DigitsFit:
    model: DigitClassifier
    error_rate: float
    fit_seconds: float

    @property
    def accuracy(self) -> float:
        return 1.0 - self.error_rate


def fit_and_score(config: dict[str, Any], train: LabelledDigits, holdout: LabelledDigits) -> DigitsFit:
    """Fit a fresh classifier on `train` only, score it once on `holdout` (error rate, lower is better)."""
    with threadpool_limits(1):
        model = build_classifier({key: config[key] for key in config if key != "seed"})
        began = time.perf_counter()
        model.fit(train.images, train.labels)
        fit_seconds = time.perf_counter() - began
        predicted = model.predict(holdout.images)
    return DigitsFit(model, error_rate(predicted, holdout.labels), fit_seconds)


def digits_trial(config: dict[str, Any], train: LabelledDigits, validation: LabelledDigits) -> None:
    """One trial: fit on the training part of the training split, report the validation scores."""
    fit = fit_and_score(config, train, validation)
    tune.report({"val_error_rate": fit.error_rate, "val_accuracy": fit.accuracy, "fit_seconds": fit.fit_seconds})
