"""Small scikit-learn building blocks the forecaster needs that scikit-learn does not ship."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, clone

#: Types skops may load besides scikit-learn/numpy builtins (MLflow saves sklearn models with skops).
SKOPS_TRUSTED_TYPES: list[str] = [
    "mlops_assets.ml.estimators.LastValueDelta",
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


class LastValueDelta(RegressorMixin, BaseEstimator):
    """Fit `estimator` to the change from the last input temperature, predict absolute values.

    Predicting the change is easier for tree and neural models than the level: the level is
    mostly the last value, which persistence already gets right. `last_column` indexes X.
    """

    def __init__(self, estimator: BaseEstimator, last_column: int = 71) -> None:
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
