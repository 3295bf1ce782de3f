"""Insurance-charge regression: data contract and model families (the search space is in `search.py`).

Pure scikit-learn and NumPy (no Dagster, no Ray). A model is a `Pipeline` of two steps:
`encode` (a `ColumnTransformer`: scaled numbers, one-hot categories), fitted on the training
split only, and `model` (an estimator on the encoded array). The prediction service replaces
`encode` by `FastRowEncoder` (`serving/models/_insurance_encoding.py`), the same arithmetic on
plain arrays, because the fitted `ColumnTransformer` costs ~3.4 ms per single row while the
model itself costs far less.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, PolynomialFeatures, StandardScaler

NUMERIC = ("age", "bmi", "children")
#: Allowed words, in the order the old system's LabelEncoder numbered them (alphabetical).
CATEGORIES: dict[str, tuple[str, ...]] = {
    "sex": ("female", "male"),
    "smoker": ("no", "yes"),
    "region": ("northeast", "northwest", "southeast", "southwest"),
}
FEATURES = (*NUMERIC, *CATEGORIES)
TARGET = "charges"
#: Inclusive ranges of valid policies (rows outside are rejected at load time).
RANGES: dict[str, tuple[float, float]] = {"age": (18, 100), "bmi": (10, 80), "children": (0, 10)}

#: Types skops must trust to load these pipelines (besides scikit-learn builtins).
SKOPS_TRUSTED_TYPES: list[str] = [
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn._loss.loss.HalfSquaredError",
    "sklearn._loss.loss.AbsoluteError",
    "sklearn._loss.link.IdentityLink",
    "sklearn._loss.link.Interval",
    "numpy.dtype",
    "collections.OrderedDict",
]


def legacy_code(field: str, value: int) -> str:
    """The word for one of the old system's integer codes (e.g. region 3 -> 'southwest')."""
    words = CATEGORIES[field]
    if not 0 <= value < len(words):
        raise ValueError(f"{field} code {value} is not one of 0..{len(words) - 1} ({', '.join(words)})")
    return words[value]


def build_encoder() -> ColumnTransformer:
    return ColumnTransformer(
        [
            ("numeric", StandardScaler(), list(NUMERIC)),
            (
                "categorical",
                OneHotEncoder(
                    categories=[list(CATEGORIES[c]) for c in CATEGORIES], drop="if_binary", handle_unknown="error"
                ),
                list(CATEGORIES),
            ),
        ],
        sparse_threshold=0.0,
    )


def build_insurance_model(config: Mapping[str, Any]) -> Pipeline:
    """A fresh pipeline for one configuration of the search space."""
    family = config["family"]
    if family == "gbm":
        # Absolute-error loss: charges are skewed (a few very expensive smokers); MAE is the metric.
        model: Any = HistGradientBoostingRegressor(
            loss=config.get("gbm_loss", "absolute_error"),
            learning_rate=float(config.get("gbm_learning_rate", 0.1)),
            max_leaf_nodes=int(config.get("gbm_max_leaf_nodes", 15)),
            min_samples_leaf=int(config.get("gbm_min_samples_leaf", 20)),
            l2_regularization=float(config.get("gbm_l2", 0.0)),
            max_iter=int(config.get("gbm_max_iter", 300)),
            random_state=0,
        )
    elif family == "linear":
        # Pairwise interactions carry smoker x bmi (obese smokers cost far more), age^2 the curve.
        model = Pipeline(
            [
                ("interactions", PolynomialFeatures(degree=2, include_bias=False)),
                ("ridge", Ridge(alpha=float(config.get("linear_alpha", 1.0)))),
            ]
        )
    else:
        raise ValueError(f"unknown insurance model family {family!r}")
    return Pipeline([("encode", build_encoder()), ("model", model)])


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame
    test: pd.DataFrame


def split_policies(policies: pd.DataFrame, test_fraction: float = 0.2, seed: int = 42) -> Split:
    """Seeded random split: the same table always gives the same holdout (champion and challenger)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(policies))
    n_test = round(test_fraction * len(policies))
    test = policies.iloc[np.sort(order[:n_test])].reset_index(drop=True)
    train = policies.iloc[np.sort(order[n_test:])].reset_index(drop=True)
    return Split(train, test)
