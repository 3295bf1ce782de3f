"""One-row predict cost of each forecaster family, as the service pays it per request.

    .venv/bin/python bench/serving/predict_cost.py

Fits every family of `mlops_assets.ml.forecasters` with its defaults on synthetic data of the
right shape (cost depends on the model's structure, not on the values), then times `predict` on
one row with the BLAS/OpenMP threads the process has by default and with one thread (what
`serving.server.run` sets per worker), and the service's call path (`serving.models._sklearn`).
Prints a markdown table; nothing is written.
"""

from __future__ import annotations

import os
import sys
import timeit
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mlops_assets.ml.forecasters import FAMILIES, build_forecaster  # noqa: E402
from serving.models._sklearn import predictor  # noqa: E402

COVARIATES = ("td", "rh", "ws", "precip")


def per_call_us(call: object, number: int) -> float:
    return min(timeit.repeat(call, number=number, repeat=3)) / number * 1e6  # type: ignore[arg-type]


def main() -> None:
    rng = np.random.default_rng(0)
    print(f"{os.cpu_count()} cores\n")
    print("| family | estimator | default threads us | 1 thread us | service path | service path us (1 thread) |")
    print("| --- | --- | ---: | ---: | --- | ---: |")
    for family in FAMILIES:
        estimator, spec = build_forecaster({"family": family}, COVARIATES)
        X = rng.normal(10, 5, size=(3000, spec.n_features))
        y = X[:, 71:72] + rng.normal(0, 1, size=(3000, 24))
        estimator.fit(X, y)
        row = X[:1].copy()
        number = 2000 if "ridge" in family and "boost" not in family else 200
        default = per_call_us(lambda: estimator.predict(row), number)
        with threadpool_limits(1):
            single = per_call_us(lambda: estimator.predict(row), number)
            fast, path = predictor(estimator, spec.n_features)
            service = per_call_us(lambda: fast(row), number)
        print(f"| {family} | {type(estimator).__name__} | {default:.0f} | {single:.0f} | {path} | {service:.0f} |")


if __name__ == "__main__":
    main()
