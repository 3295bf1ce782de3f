"""How a served scikit-learn estimator is called: its own `predict`, or an exact shortcut.

For one row, scikit-learn's `predict` spends almost all its time validating the input (dataframe
detection, feature-name and finiteness checks): about 130 us against 3 us for the arithmetic of a
linear model, and a boosted forecaster adds one OpenMP region per tree (~2.5 ms for 300 trees).
The service has already validated the row it built, so it calls, in order of preference:

- `linear`: for estimators whose `predict` is exactly `LinearModel`'s (`X @ coef_.T + intercept_`:
  LinearRegression, Ridge, RidgeCV), that arithmetic directly;
- `compiled`: for the project's forecasters and tree ensembles, the packed NumPy evaluator of
  `mlops_assets.ml.compiled_trees` (all trees at once, no per-call checks);
- `predict`: everything else, unchanged.

A shortcut is taken only after probe rows (1 and 8 rows) show it gives `predict`'s numbers: bit
for bit for `linear`, within `COMPILED_TOLERANCE` for `compiled` (in practice also bit for bit).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

Predict = Callable[[np.ndarray], np.ndarray]
log = logging.getLogger(__name__)


#: Largest |compiled - predict| accepted on the probe rows (the trees sum in the same order, so
#: the difference measured on every family is 0.0).
COMPILED_TOLERANCE = 1e-9


def predictor(estimator: Any, n_features: int) -> tuple[Predict, str]:
    """The fastest call giving the same numbers as `estimator.predict`, and its name (for logs).

    Names: `linear`, `compiled` or `predict` (see the module docstring).
    """
    probe = np.random.default_rng(0).normal(10.0, 8.0, size=(8, n_features))
    shortcut = _linear_shortcut(estimator)
    if shortcut is not None:
        if all(np.array_equal(shortcut(rows), np.asarray(estimator.predict(rows))) for rows in (probe[:1], probe)):
            return shortcut, "linear"
        return estimator.predict, "predict"
    compiled = _compiled(estimator)
    if compiled is not None:
        from mlops_assets.ml.compiled_trees import parity_report

        worst = max(parity_report(estimator, compiled, rows)["max_abs_diff"] for rows in (probe[:1], probe))
        if worst <= COMPILED_TOLERANCE:
            return compiled, "compiled"
        log.warning(
            "compiled %s differs from predict by %g on probe rows: using predict", type(estimator).__name__, worst
        )
    return estimator.predict, "predict"


def _compiled(estimator: Any) -> Predict | None:
    from mlops_assets.ml.compiled_trees import NotCompilable, compile_or_raise

    try:
        compiled = compile_or_raise(estimator)
    except NotCompilable as reason:
        log.info("%s is served through predict: %s", type(estimator).__name__, reason)
        return None
    log.info("%s compiled: %s", type(estimator).__name__, compiled.description)
    return compiled.predict


def _linear_shortcut(estimator: Any) -> Predict | None:
    from sklearn.linear_model import LinearRegression, Ridge, RidgeCV
    from sklearn.linear_model._base import LinearModel

    cls = type(estimator)
    # Ridge and RidgeCV re-declare `predict` only to call LinearModel's (docstrings, array-API tags).
    plain_predict = cls.predict is LinearModel.predict or cls in (LinearRegression, Ridge, RidgeCV)
    if not (
        isinstance(estimator, LinearModel)
        and plain_predict
        and cls._decision_function is LinearModel._decision_function
    ):
        return None
    coef_t = getattr(estimator, "coef_", None)
    intercept = getattr(estimator, "intercept_", None)
    if not isinstance(coef_t, np.ndarray) or coef_t.dtype != np.float64 or intercept is None:
        return None  # sparse or unusual fits keep scikit-learn's own path
    coef_t = coef_t.T
    intercept = np.asarray(intercept)

    def linear(rows: np.ndarray) -> np.ndarray:
        return rows @ coef_t + intercept

    return linear
