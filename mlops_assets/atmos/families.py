"""The forecaster model families (pure scikit-learn; their Ray Tune search spaces are in `search.py`).

`build_forecaster(config, covariates)` turns one point of `search.SEARCH_SPACE` into an unfitted
scikit-learn estimator and the `FeatureSpec` of its inputs. The space is flat: `config["family"]`
names the family and each family reads only its own keys (`FAMILY_KEYS`), the others are ignored,
so the same space works with random search, Optuna (TPE) and HyperOpt. Missing keys take
`DEFAULTS`.

Every estimator maps `feature_matrix` rows to (n, 24) temperatures, clones with
`sklearn.base.clone`, and saves with `mlflow.sklearn` (skops, `SKOPS_TRUSTED_TYPES`).

Families (why each is in the space is in its builder's docstring):

- `ridge_lags`: ridge on the 72 temperatures and calendar sin/cos;
- `ridge_covariates`: ridge on those plus the other variables' last 24 hours, optionally with
  coefficients that vary with the temperature regime;
- `gbm_delta`: gradient-boosted trees predicting the change from the last temperature;
- `ridge_boost`: `ridge_covariates` plus gradient-boosted trees on its residuals (the winner).

Iterative support for ASHA: `fit_with_progress` fits the boosted families in `PROGRESS_STAGES`
warm-started stages and reports the validation MAE after each; the ridge families report once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from mlops_assets.atmos.estimators import LastValue, RegimeInteractions, ResidualBoost, TreeFeatures
from mlops_assets.atmos.forecast_features import HORIZON_HOURS, FeatureSpec

#: Hyperparameters a config may leave out.
DEFAULTS: dict[str, Any] = {
    "ridge_alpha": 1.0,
    "ridge_regime": "none",
    "gbm_learning_rate": 0.1,
    "gbm_max_iter": 50,
    "gbm_max_leaf_nodes": 15,
    "gbm_min_samples_leaf": 50,
    "gbm_components": 6,
    "gbm_lags": 24,
    "gbm_covariate_lags": 6,
}
_GBM_KEYS = (
    "gbm_learning_rate",
    "gbm_max_iter",
    "gbm_max_leaf_nodes",
    "gbm_min_samples_leaf",
    "gbm_components",
    "gbm_lags",
    "gbm_covariate_lags",
)
#: The keys each family reads (log these, not the whole flat config).
FAMILY_KEYS: dict[str, tuple[str, ...]] = {
    "ridge_lags": ("ridge_alpha",),
    "ridge_covariates": ("ridge_alpha", "ridge_regime"),
    "gbm_delta": _GBM_KEYS,
    "ridge_boost": ("ridge_alpha", "ridge_regime", *_GBM_KEYS),
}
REGIMES = ("none", "level")


def _get(config: Mapping[str, Any], key: str) -> Any:
    return config.get(key, DEFAULTS[key])


def _ridge(config: Mapping[str, Any], spec: FeatureSpec) -> Pipeline:
    regime = str(_get(config, "ridge_regime"))
    if regime not in REGIMES:
        raise ValueError(f"ridge_regime must be one of {REGIMES}, got {regime!r}")
    steps: list[tuple[str, Any]] = []
    if regime == "level" and spec.covariates:
        steps.append(("regime", RegimeInteractions(first_column=spec.covariate_start)))
    steps += [("scale", StandardScaler()), ("ridge", Ridge(alpha=float(_get(config, "ridge_alpha"))))]
    return Pipeline(steps)


def _booster(config: Mapping[str, Any]) -> HistGradientBoostingRegressor:
    return HistGradientBoostingRegressor(
        learning_rate=float(_get(config, "gbm_learning_rate")),
        max_iter=int(_get(config, "gbm_max_iter")),
        max_leaf_nodes=int(_get(config, "gbm_max_leaf_nodes")),
        min_samples_leaf=int(_get(config, "gbm_min_samples_leaf")),
        early_stopping=False,
    )


def _tree_features(config: Mapping[str, Any], spec: FeatureSpec, level: bool) -> TreeFeatures:
    return TreeFeatures(
        calendar=spec.calendar,
        covariates=spec.covariates,
        covariate_hours=spec.covariate_hours,
        lags=int(_get(config, "gbm_lags")),
        covariate_lags=int(_get(config, "gbm_covariate_lags")),
        level=level,
    )


def ridge_lags(config: Mapping[str, Any], covariates: tuple[str, ...]) -> tuple[BaseEstimator, FeatureSpec]:
    """Ridge on the 72 temperatures + hour-of-day/day-of-year sin/cos: the linear baseline.

    Needs nothing but temperatures, so it still works when a station reports no other variable;
    every other family must beat it (test MAE 2.54 vs persistence 2.94 on the sample).
    """
    spec = FeatureSpec(calendar=True)
    return _ridge({**config, "ridge_regime": "none"}, spec), spec


def ridge_covariates(config: Mapping[str, Any], covariates: tuple[str, ...]) -> tuple[BaseEstimator, FeatureSpec]:
    """Ridge that also reads the last 24 h of dew point, humidity, wind speed and rain.

    Dew point and humidity carry most of what temperatures alone miss (night-time cooling, air
    mass changes): the strongest linear model (val 1.55, test 2.25 / 2.22 refit). With
    `ridge_regime="level"` the covariates' coefficients vary with the mean temperature of the last
    72 h (`RegimeInteractions`): cold and warm air masses respond differently.
    """
    spec = FeatureSpec(calendar=True, covariates=tuple(covariates))
    return _ridge(config, spec), spec


def gbm_delta(config: Mapping[str, Any], covariates: tuple[str, ...]) -> tuple[BaseEstimator, FeatureSpec]:
    """Gradient-boosted trees predicting the change from the last temperature.

    The non-linear family on its own: trees get relative temperatures, hour of day and the
    covariates' last hours (`TreeFeatures`, no absolute level, so a shift of all temperatures shifts
    the forecast), and the 24 changes are compressed to `gbm_components` principal components, one
    booster each, which makes a fit 0.5-6 s instead of ~40 s for 24 boosters. Alone it trails the
    ridge (val 1.58-1.70, test ~2.33), but it is the reference for whether trees add anything.
    """
    spec = FeatureSpec(calendar=True, covariates=tuple(covariates))
    model = ResidualBoost(
        base=LastValue(n_outputs=HORIZON_HOURS),
        booster=_booster(config),
        features=_tree_features(config, spec, level=False),
        n_components=int(_get(config, "gbm_components")),
    )
    return model, spec


def ridge_boost(config: Mapping[str, Any], covariates: tuple[str, ...]) -> tuple[BaseEstimator, FeatureSpec]:
    """`ridge_covariates` plus boosted trees fitted to its residuals: linear + what is not.

    The ridge does the bulk (persistence, diurnal cycle, dew point); a few dozen shallow trees
    correct what a linear model cannot express (e.g. the last temperature's level with humidity and
    wind). The only family that beats the ridge on validation (val 1.50-1.54 vs 1.55) and on test
    (refit 2.13-2.19 vs 2.22); validation selection picks it.
    """
    spec = FeatureSpec(calendar=True, covariates=tuple(covariates))
    model = ResidualBoost(
        base=_ridge(config, spec),
        booster=_booster(config),
        features=_tree_features(config, spec, level=True),
        n_components=int(_get(config, "gbm_components")),
    )
    return model, spec


#: family name -> builder (`builder.__doc__` says why the family is in the search).
FAMILIES: dict[str, Callable[[Mapping[str, Any], tuple[str, ...]], tuple[BaseEstimator, FeatureSpec]]] = {
    "ridge_lags": ridge_lags,
    "ridge_covariates": ridge_covariates,
    "gbm_delta": gbm_delta,
    "ridge_boost": ridge_boost,
}


def build_forecaster(config: Mapping[str, Any], covariates: tuple[str, ...]) -> tuple[BaseEstimator, FeatureSpec]:
    """An unfitted estimator and its feature spec for one point of the search space.

    `covariates` are the ones the training data offers (`TrainingWindows.covariates`).
    """
    family = config.get("family")
    if family not in FAMILIES:
        raise ValueError(f"unknown forecaster family {family!r}; expected one of {sorted(FAMILIES)}")
    return FAMILIES[family](config, tuple(covariates))


def family_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The hyperparameters `config`'s family actually uses, defaults filled in (for logging)."""
    family = config["family"]
    return {"family": family, **{key: _get(config, key) for key in FAMILY_KEYS[family]}}


#: How many warm-started stages `fit_with_progress` reports for the boosted families.
PROGRESS_STAGES = 4


def _stages(max_iter: int, n: int) -> list[int]:
    return sorted({max(1, round(max_iter * (i + 1) / n)) for i in range(n)})


def fit_with_progress(
    estimator: BaseEstimator,
    X: np.ndarray,
    y: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    report: Callable[[int, float], None],
    stages: int = PROGRESS_STAGES,
) -> BaseEstimator:
    """Fit `estimator` (in place) and call `report(step, validation_mae)` as it improves.

    Boosted families (`ResidualBoost`) are fitted in `stages` warm-started stages of boosting
    iterations (1/4, 1/2, 3/4, all of `max_iter`), reporting after each, so ASHA can stop a
    hopeless trial after a quarter of its work; the result equals a plain `fit`. Other estimators
    are fitted once and report once. `step` counts reports from 1, comparable across trials.
    """
    from mlops_assets.atmos.metrics import mae

    iterative = isinstance(estimator, ResidualBoost) and "warm_start" in estimator.booster.get_params()
    if not iterative:
        estimator.fit(X, y)
        report(1, mae(estimator.predict(X_val), np.asarray(y_val)))
        return estimator
    plan: Iterable[int] = _stages(int(estimator.booster.get_params()["max_iter"]), stages)
    for step, _ in enumerate(estimator.iter_fit(X, y, list(plan)), start=1):
        report(step, mae(estimator.predict(X_val), np.asarray(y_val)))
    return estimator
