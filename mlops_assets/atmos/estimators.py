"""Small scikit-learn building blocks the forecaster needs that scikit-learn does not ship.

Each block also knows its packed form for serving (`compile_predict` / `compile_transform`, called
by `mlops_assets.ml.compiled_trees`): the shared compiler does not need to know these classes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, TransformerMixin, clone
from sklearn.decomposition import PCA

from mlops_assets.atmos.forecast_features import HORIZON_HOURS, INPUT_HOURS, FeatureSpec
from mlops_assets.ml.compiled_trees import Compiler, NotCompilable, Transform, as_rows, pca_inverse

#: The classes of this module that a saved forecaster may contain.
_OWN_TYPES = ("LastValueDelta", "LastValue", "RegimeInteractions", "TreeFeatures", "ResidualBoost")
#: Where they lived before the model folders: versions registered then name this module in their
#: skops file; `mlops_assets/ml/estimators.py` re-exports the classes there so those still load.
LEGACY_MODULE = "mlops_assets.ml.estimators"

#: Types skops may load besides scikit-learn/numpy builtins (MLflow saves sklearn models with skops).
SKOPS_TRUSTED_TYPES: list[str] = [
    *(f"mlops_assets.atmos.estimators.{name}" for name in _OWN_TYPES),
    *(f"{LEGACY_MODULE}.{name}" for name in _OWN_TYPES),
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn._loss.loss.HalfSquaredError",
    "sklearn._loss.link.IdentityLink",
    "sklearn._loss.link.Interval",
    "sklearn.tree._tree.Tree",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
    "numpy.dtype",
    "collections.OrderedDict",
]


def _require_fitted(estimator: BaseEstimator, attribute: str) -> None:
    if not hasattr(estimator, attribute):
        raise NotCompilable(f"{type(estimator).__name__} is not fitted")


class LastValueDelta(RegressorMixin, BaseEstimator):
    """Fit `estimator` to the change from the last input temperature, predict absolute values.

    Predicting the change is easier for tree and neural models than the level: the level is
    mostly the last value, which persistence already gets right. `last_column` indexes X; the
    columns up to it are the temperatures (`FeatureSpec.last_lag_column` in a forecaster row).
    """

    def __init__(self, estimator: BaseEstimator, last_column: int = FeatureSpec.last_lag_column) -> None:
        self.estimator = estimator
        self.last_column = last_column

    def fit(self, X: np.ndarray, y: np.ndarray) -> LastValueDelta:
        X = np.asarray(X, dtype="float64")
        last = X[:, self.last_column][:, None]
        self.estimator_ = clone(self.estimator).fit(self._relative(X), np.asarray(y, dtype="float64") - last)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype="float64")
        last = X[:, self.last_column][:, None]
        return np.asarray(self.estimator_.predict(self._relative(X))).reshape(len(X), -1) + last

    def _relative(self, X: np.ndarray) -> np.ndarray:
        """Temperatures as differences from the last one; other features unchanged."""
        out = X.copy()
        out[:, : self.last_column + 1] -= X[:, [self.last_column]]
        return out

    def compile_predict(self, compiler: Compiler) -> tuple[Transform, str]:
        """`predict` around the compiled inner estimator (see `mlops_assets.ml.compiled_trees`)."""
        _require_fitted(self, "estimator_")
        inner, text = compiler.predictor(self.estimator_)
        last_column = int(self.last_column)
        relative = self._relative

        def last_value_delta(X: Any) -> np.ndarray:
            X = as_rows(X)
            last = X[:, last_column][:, None]
            return np.asarray(inner(relative(X))).reshape(len(X), -1) + last

        return last_value_delta, f"LastValueDelta({text})"


# --- Building blocks of the model families in `families.py` ----------------------------------------
#
# All of them read rows laid out as `forecast_features.FeatureSpec` says, and ask it where each
# block is (the temperatures, the calendar terms, each covariate).

#: Far temperatures `TreeFeatures` also reads, in hours before the last one: a day, two days, the oldest.
_FAR_LAGS = (24, 48, INPUT_HOURS - 1)


class LastValue(RegressorMixin, BaseEstimator):
    """Persistence as an estimator: every lead hour equals the last input temperature.

    The base of `ResidualBoost` for a pure "change from the last value" model.
    """

    def __init__(self, last_column: int = FeatureSpec.last_lag_column, n_outputs: int = HORIZON_HOURS) -> None:
        self.last_column = last_column
        self.n_outputs = n_outputs

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> LastValue:
        self.n_outputs_ = self.n_outputs if y is None else np.asarray(y).reshape(len(y), -1).shape[1]
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype="float64")
        return np.repeat(X[:, [self.last_column]], self.n_outputs_, axis=1)

    def compile_predict(self, compiler: Compiler) -> tuple[Transform, str]:
        _require_fitted(self, "n_outputs_")
        return self.predict, "LastValue"  # already plain NumPy


class RegimeInteractions(TransformerMixin, BaseEstimator):
    """Append the columns from `first_column` on, multiplied by a standardised "regime" variable.

    The regime is the mean of the last `window` input temperatures (cold vs warm weather). A linear
    model on the output has coefficients that vary linearly with it: how humidity, wind, rain and
    dew point move tomorrow's temperature is not the same in a cold and in a warm air mass. The
    regime is measured, not read from the calendar, so it does not extrapolate when the validation
    season was never seen in training. With `first_column >= n_features` nothing is appended.
    `first_column` is the spec's `covariate_start` (the default: that of a spec with calendar).
    """

    def __init__(
        self, first_column: int = FeatureSpec(calendar=True).covariate_start, window: int = INPUT_HOURS
    ) -> None:
        self.first_column = first_column
        self.window = window

    def _regime(self, X: np.ndarray) -> np.ndarray:
        temperatures = X[:, FeatureSpec.lag_slice]
        return temperatures[:, temperatures.shape[1] - self.window :].mean(axis=1, keepdims=True)

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> RegimeInteractions:
        X = np.asarray(X, dtype="float64")
        regime = self._regime(X)
        self.center_ = float(regime.mean())
        self.scale_ = float(regime.std()) or 1.0
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype="float64")
        z = (self._regime(X) - self.center_) / self.scale_
        return np.hstack([X, X[:, self.first_column :] * z])

    def compile_transform(self, compiler: Compiler) -> tuple[Transform, str]:
        _require_fitted(self, "n_features_in_")
        return self.transform, "RegimeInteractions"  # already plain NumPy


class TreeFeatures(TransformerMixin, BaseEstimator):
    """The compact inputs of the tree models: a subset of `feature_matrix` columns, made relative.

    Trees split on thresholds, so they cannot use a raw temperature history the way a linear model
    does; they get: temperatures relative to the last one (the last `lags` hours, plus 24, 48 and 71
    hours back), the last temperature itself if `level`, hour of day, and the last
    `covariate_lags` hours of each covariate, the dew point relative to the last temperature (the
    dew-point depression). Day of year is left out unless `day_of_year`: trained on January to
    September, a tree has no leaf for October and puts it in September. `calendar`, `covariates`
    and `covariate_hours` are the `FeatureSpec` of the rows (plain parameters, as scikit-learn and
    skops want them).
    """

    def __init__(
        self,
        calendar: bool = True,
        covariates: tuple[str, ...] = (),
        covariate_hours: int = HORIZON_HOURS,
        lags: int = 24,
        covariate_lags: int = 6,
        level: bool = True,
        day_of_year: bool = False,
    ) -> None:
        self.calendar = calendar
        self.covariates = covariates
        self.covariate_hours = covariate_hours
        self.lags = lags
        self.covariate_lags = covariate_lags
        self.level = level
        self.day_of_year = day_of_year

    def feature_spec(self) -> FeatureSpec:
        """The layout of the rows this transformer reads."""
        return FeatureSpec(
            calendar=bool(self.calendar), covariates=tuple(self.covariates), covariate_hours=int(self.covariate_hours)
        )

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> TreeFeatures:
        expected = self.feature_spec().n_features
        if np.shape(X)[1] != expected:
            raise ValueError(f"TreeFeatures expects {expected} columns, got {np.shape(X)[1]}")
        self.n_features_in_ = expected
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype="float64")
        spec = self.feature_spec()
        last = X[:, [spec.last_lag_column]]
        lags = min(max(int(self.lags), 1), INPUT_HOURS)
        recent = X[:, spec.lag_column(lags - 1) : spec.last_lag_column]
        far = X[:, [spec.lag_column(hours) for hours in _FAR_LAGS]]
        parts = [recent - last, far - last]
        if self.level:
            parts.insert(0, last)
        if self.calendar:
            parts.append(X[:, spec.calendar_slice if self.day_of_year else spec.hour_of_day_slice])
        keep = min(max(int(self.covariate_lags), 1), int(self.covariate_hours))
        for name in spec.covariates:
            block = X[:, spec.covariate_slice(name, last_hours=keep)]
            parts.append(block - last if name == "td" else block)
        return np.hstack(parts)

    def compile_transform(self, compiler: Compiler) -> tuple[Transform, str]:
        _require_fitted(self, "n_features_in_")
        return self.transform, "TreeFeatures"  # already plain NumPy


class ResidualBoost(RegressorMixin, BaseEstimator):
    """`base` (multi-output) plus a boosted correction of its residuals.

    The 24 residuals of a window are strongly correlated (an error at lead hour 5 persists at 6),
    so they are compressed to their first `n_components` principal components and one
    single-output `booster` (e.g. a `HistGradientBoostingRegressor`) is fitted per component on
    `features(X)`: 6 small models instead of 24. With base `LastValue` this is a boosted model of
    the change from the last value; with a ridge base, the booster adds what is not linear.
    """

    def __init__(
        self, base: BaseEstimator, booster: BaseEstimator, features: BaseEstimator | None = None, n_components: int = 6
    ) -> None:
        self.base = base
        self.booster = booster
        self.features = features
        self.n_components = n_components

    def _prepare(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fit base, features and PCA; return the booster inputs and the component targets."""
        X = np.asarray(X, dtype="float64")
        y = np.asarray(y, dtype="float64")
        self.base_ = clone(self.base).fit(X, y)
        residuals = y - self.base_.predict(X)
        self.features_ = None if self.features is None else clone(self.features).fit(X, y)
        inputs = X if self.features_ is None else self.features_.transform(X)
        k = int(min(self.n_components, residuals.shape[1], len(X)))
        self.pca_ = PCA(n_components=k).fit(residuals)
        return inputs, self.pca_.transform(residuals)

    def fit(self, X: np.ndarray, y: np.ndarray) -> ResidualBoost:
        inputs, components = self._prepare(X, y)
        self.boosters_ = [clone(self.booster).fit(inputs, components[:, j]) for j in range(components.shape[1])]
        return self

    def iter_fit(self, X: np.ndarray, y: np.ndarray, stages: list[int]) -> Iterator[int]:
        """Fit in stages of boosting iterations (warm start); yields each stage once reached.

        After the last stage the model equals `fit` with `max_iter=stages[-1]`.
        """
        inputs, components = self._prepare(X, y)
        self.boosters_ = [clone(self.booster).set_params(warm_start=True) for _ in range(components.shape[1])]
        for stage in stages:
            for j, booster in enumerate(self.boosters_):
                booster.set_params(max_iter=int(stage)).fit(inputs, components[:, j])
            yield int(stage)
        for booster in self.boosters_:
            booster.set_params(warm_start=False)

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype="float64")
        inputs = X if self.features_ is None else self.features_.transform(X)
        correction = np.column_stack([b.predict(inputs) for b in self.boosters_])
        return np.asarray(self.base_.predict(X)).reshape(len(X), -1) + self.pca_.inverse_transform(correction)

    def compile_predict(self, compiler: Compiler) -> tuple[Transform, str]:
        """The compiled base plus all boosters packed together (see `mlops_assets.ml.compiled_trees`)."""
        _require_fitted(self, "boosters_")
        base, base_text = compiler.predictor(self.base_)
        features = None if self.features_ is None else compiler.transformer(self.features_)[0]
        evaluate, packed = compiler.pack(self.boosters_)
        inverse = pca_inverse(self.pca_)

        def residual_boost(X: Any) -> np.ndarray:
            X = as_rows(X)
            inputs = X if features is None else features(X)
            correction = evaluate(as_rows(inputs, packed.n_features))
            return np.asarray(base(X)).reshape(len(X), -1) + inverse(correction)

        text = f"ResidualBoost({base_text}, {packed.n_boosters}x{packed.n_trees} trees, depth {packed.depth})"
        return residual_boost, text
