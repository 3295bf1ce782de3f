"""The exact shortcuts (linear, compiled trees): taken only where they give `predict`'s numbers bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import Lasso, LinearRegression, Ridge, RidgeCV
from sklearn.multioutput import MultiOutputRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mlops_assets.atmos.estimators import LastValueDelta
from mlops_assets_tests.serving.support import synthetic_windows
from serving.models._sklearn import predictor


class _ShiftedRidge(Ridge):
    def predict(self, X):  # type: ignore[no-untyped-def]
        return super().predict(X) + 1.0


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    temps, target, _, _ = synthetic_windows(200, 5)
    return temps, target


@pytest.mark.parametrize(
    ("estimator", "path"),
    [
        (Ridge(alpha=2.0), "linear"),
        (RidgeCV(alphas=(0.1, 1.0, 10.0)), "linear"),
        (LinearRegression(), "linear"),
        (Ridge(fit_intercept=False), "linear"),
        (Lasso(alpha=0.1, max_iter=200), "predict"),  # its own decision function
        (_ShiftedRidge(), "predict"),  # predict overridden: never bypassed
        (make_pipeline(StandardScaler(), Ridge()), "compiled"),  # mlops_assets.ml.compiled_trees
        (LastValueDelta(Ridge()), "compiled"),
        (LastValueDelta(MultiOutputRegressor(HistGradientBoostingRegressor(max_iter=5))), "compiled"),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, str) else v,
)
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # the Lasso's fit is beside the point
def test_predictor_path_and_numbers(data: tuple[np.ndarray, np.ndarray], estimator: object, path: str) -> None:
    temps, target = data
    estimator.fit(temps, target)  # type: ignore[attr-defined]
    predict, chosen = predictor(estimator, temps.shape[1])
    assert chosen == path
    rows = temps[:17]
    assert np.array_equal(predict(rows[:1]), estimator.predict(rows[:1]))  # type: ignore[attr-defined]
    assert np.array_equal(predict(rows), estimator.predict(rows))  # type: ignore[attr-defined]
