"""Packed tree evaluation: the same numbers as scikit-learn's `predict`, on real fitted models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.linear_model import Lasso, Ridge
from sklearn.multioutput import MultiOutputRegressor

from mlops_assets.atmos.cleaning import clean_observations
from mlops_assets.atmos.dataset import TrainingWindows, build_training_windows
from mlops_assets.atmos.estimators import SKOPS_TRUSTED_TYPES, LastValueDelta, ResidualBoost
from mlops_assets.atmos.families import FAMILIES, build_forecaster
from mlops_assets.atmos.source import load_sample_observations
from mlops_assets.insurance.dataset import validate_policies
from mlops_assets.insurance.families import FEATURES, build_insurance_model, split_policies
from mlops_assets.ml import compiled_trees
from mlops_assets.ml.compiled_trees import NotCompilable, compile_model, compile_or_raise, parity_report
from serving.models._insurance_encoding import FastRowEncoder

pytestmark = pytest.mark.timeout(180)

TOLERANCE = 1e-9
PUBLIC_DATASET = Path(__file__).resolve().parents[2] / "shared" / "data" / "insurance.csv"
#: Deep enough to exercise real trees (15 leaves, depth ~10), small enough to fit in about a second.
BOOSTED = {"gbm_max_iter": 40, "gbm_max_leaf_nodes": 15, "gbm_min_samples_leaf": 20, "gbm_components": 6}


@pytest.fixture(scope="module")
def windows() -> TrainingWindows:
    """Real windows: the first 120 days of the bundled 2013 JFK observations, cleaned."""
    series, _ = clean_observations(load_sample_observations("JFK"))
    series = series[series["time"] < series["time"].min() + pd.Timedelta(days=120)]
    return build_training_windows(series)


@pytest.fixture(scope="module")
def fitted_families(windows: TrainingWindows) -> dict[tuple[str, str], tuple[Any, np.ndarray]]:
    """Every family (and both ridge regimes) fitted on train; its test-window features."""
    out = {}
    for family in sorted(FAMILIES):
        for regime in ("none", "level"):
            model, spec = build_forecaster({"family": family, "ridge_regime": regime, **BOOSTED}, windows.covariates)
            model.fit(windows.train.features(spec), windows.train.targets)
            out[family, regime] = (model, windows.test.features(spec))
    return out


@pytest.fixture(scope="module")
def policies() -> pd.DataFrame:
    return validate_policies(pd.read_csv(PUBLIC_DATASET, dtype=str)).valid


@pytest.mark.parametrize("regime", ["none", "level"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_compiles_to_predicts_numbers(
    family: str, regime: str, fitted_families: dict[tuple[str, str], tuple[Any, np.ndarray]]
) -> None:
    model, X = fitted_families[family, regime]
    compiled = compile_or_raise(model)
    assert len(X) > 300
    for rows in (X[:1], X[1:8], X[:64], X):
        report = parity_report(model, compiled, rows)
        assert report["rows"] == len(rows) and report["outputs"] == 24
        assert report["max_abs_diff"] <= TOLERANCE, report
    if family in ("gbm_delta", "ridge_boost"):
        assert compiled.n_trees == 6 * 40 and "6x40 trees" in compiled.description


def test_both_tree_walks_agree(fitted_families: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deciding every node up front and walking level by level are the same function."""
    model, X = fitted_families["ridge_boost", "none"]
    compiled = compile_or_raise(model)
    first = compiled(X[:64])
    monkeypatch.setattr(compiled_trees, "_DECIDE_ALL_LIMIT", 0)
    second = compiled(X[:64])
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(second, model.predict(X[:64]))


@pytest.mark.parametrize("decide_all_limit", [10**9, 0], ids=["decide-all", "level-by-level"])
def test_missing_values_follow_each_split_learned_direction(
    decide_all_limit: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NaN in training teaches splits a side; NaN in a feature never missing in training too."""
    monkeypatch.setattr(compiled_trees, "_DECIDE_ALL_LIMIT", decide_all_limit)
    rng = np.random.default_rng(3)
    X = rng.normal(size=(3000, 6))
    y = np.where(np.isnan(X[:, 0]), 5.0, X[:, 0]) + X[:, 1] ** 2 + rng.normal(0, 0.1, 3000)
    X[rng.random(3000) < 0.2, 0] = np.nan
    X[rng.random(3000) < 0.1, 2] = np.nan
    booster = HistGradientBoostingRegressor(max_iter=30, max_leaf_nodes=31, random_state=0).fit(X, y)
    test = rng.normal(size=(200, 6))
    test[::3, 0] = np.nan
    test[1::4, 2] = np.nan
    test[::5, 4] = np.nan  # column 4 never had a NaN in training
    packed = compile_or_raise(booster)
    report = parity_report(booster, packed, test)
    assert report["max_abs_diff"] == 0.0 and report["bit_exact"], report
    left = booster._predictors[0][0].nodes
    assert set(left["missing_go_to_left"][left["is_leaf"] == 0]) == {0, 1}  # both directions occur


def test_log_link_and_multi_output_boosters() -> None:
    rng = np.random.default_rng(4)
    X = rng.normal(size=(1500, 5))
    counts = rng.poisson(np.exp(0.5 * X[:, 0] + 0.3 * X[:, 1]))
    poisson = HistGradientBoostingRegressor(loss="poisson", max_iter=25).fit(X, counts)
    assert parity_report(poisson, compile_or_raise(poisson), X[:100])["max_abs_diff"] <= TOLERANCE
    Y = np.column_stack([X[:, 0] * X[:, 1], np.abs(X[:, 2]), X[:, 3] > 0])
    multi = MultiOutputRegressor(HistGradientBoostingRegressor(max_iter=15)).fit(X, Y)
    assert parity_report(multi, compile_or_raise(multi), X[:100])["max_abs_diff"] <= TOLERANCE
    delta = LastValueDelta(MultiOutputRegressor(HistGradientBoostingRegressor(max_iter=10)), last_column=4).fit(X, Y)
    assert parity_report(delta, compile_or_raise(delta), X[:100])["max_abs_diff"] <= TOLERANCE


@pytest.mark.parametrize("family", ["gbm", "linear"])
def test_the_insurance_pipeline_compiles_whole_and_as_the_served_step(family: str, policies: pd.DataFrame) -> None:
    from serving.models._sklearn import predictor
    from serving.models.insurance_charges import ChargeModel, InsuranceRequest, build_input, predict

    split = split_policies(policies)
    pipeline = build_insurance_model({"family": family}).fit(split.train[list(FEATURES)], split.train["charges"])
    test = split.test[list(FEATURES)]
    whole = compile_or_raise(pipeline)  # DataFrame in: ColumnTransformer compiled too
    report = parity_report(pipeline, whole, test)
    assert report["rows"] == len(test) and report["max_abs_diff"] <= TOLERANCE, report
    with pytest.raises(ValueError, match="unknown categories"):
        whole(test.head(2).assign(region="mars"))

    encoder = FastRowEncoder(pipeline.named_steps["encode"])
    call, path = predictor(pipeline.named_steps["model"], encoder.width)
    assert path == "compiled"
    model = ChargeModel(pipeline, encoder, pipeline.named_steps["model"], call=call, call_path=path)
    served = np.array(
        [predict(model, build_input(model, InsuranceRequest(**row)))[0] for row in test.to_dict(orient="records")]
    )
    assert np.abs(served - pipeline.predict(test)).max() <= TOLERANCE


def test_a_model_loaded_through_mlflow_skops_compiles(
    fitted_families: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What serving loads (skops round trip) packs the same as the fitted object."""
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    model, X = fitted_families["ridge_boost", "level"]
    path = tmp_path / "model"
    mlflow.sklearn.save_model(
        model,
        str(path),
        serialization_format="skops",
        skops_trusted_types=SKOPS_TRUSTED_TYPES,
        pip_requirements=["scikit-learn"],
    )
    loaded = mlflow.sklearn.load_model(str(path))
    np.testing.assert_array_equal(compile_or_raise(loaded)(X), model.predict(X))


def test_unsupported_models_are_refused_with_a_reason() -> None:
    rng = np.random.default_rng(5)
    X = rng.normal(size=(400, 3))
    X[:, 2] = rng.integers(0, 4, 400)
    y = X[:, 0] + X[:, 2]
    categorical = HistGradientBoostingRegressor(max_iter=5, categorical_features=[2]).fit(X, y)
    with pytest.raises(NotCompilable, match="categorical"):
        compile_or_raise(categorical)
    assert compile_model(categorical) is None
    assert compile_model(HistGradientBoostingClassifier(max_iter=3).fit(X, y > 0)) is None
    assert compile_model(Lasso(alpha=0.1).fit(X, y)) is None  # its own decision function
    assert compile_model(HistGradientBoostingRegressor()) is None  # not fitted
    with pytest.raises(NotCompilable, match="ResidualBoost is not fitted"):  # a pipeline's own estimator says why
        compile_or_raise(ResidualBoost(Ridge(), HistGradientBoostingRegressor()))
    with pytest.raises(NotCompilable, match="LastValueDelta is not fitted"):
        compile_or_raise(LastValueDelta(Ridge()))

    class Shifted(Ridge):
        def predict(self, X):  # type: ignore[no-untyped-def]
            return super().predict(X) + 1.0

    assert compile_model(Shifted().fit(X, y)) is None


def test_bad_rows_get_a_clear_error(fitted_families: dict) -> None:
    model, X = fitted_families["gbm_delta", "none"]
    compiled = compile_or_raise(model)
    with pytest.raises(ValueError, match="features"):
        compiled(X[:2, :-1])
    with pytest.raises(ValueError, match="2-D"):
        compiled(X[0])


def test_parity_report_sees_a_difference() -> None:
    rng = np.random.default_rng(6)
    X = rng.normal(size=(300, 4))
    booster = HistGradientBoostingRegressor(max_iter=10).fit(X, X[:, 0])
    assert parity_report(booster, lambda rows: booster.predict(rows) + 1e-6, X[:9]) == pytest.approx(
        {"max_abs_diff": 1e-6, "rows": 9, "outputs": 1, "bit_exact": False}, rel=1e-3
    )
    assert parity_report(booster, lambda rows: booster.predict(rows)[:, None], X[:9])["max_abs_diff"] == float("inf")
    nan_out = parity_report(booster, lambda rows: np.where(rows[:, 0] > 0, np.nan, booster.predict(rows)), X[:9])
    assert nan_out["max_abs_diff"] == float("inf") and not nan_out["bit_exact"]


def test_the_service_calls_the_compiled_path_for_boosted_champions(fitted_families: dict) -> None:
    from serving.models._sklearn import predictor

    for family in FAMILIES:
        model, X = fitted_families[family, "none"]
        call, path = predictor(model, X.shape[1])
        assert path == "compiled", family
        np.testing.assert_array_equal(call(X[:32]), model.predict(X[:32]))


def test_another_tree_evaluator_can_replace_the_numpy_walk(fitted_families: dict) -> None:
    """`trees=` gets each group of packed boosters once and is what runs at predict time."""
    model, X = fitted_families["ridge_boost", "level"]
    seen: list[compiled_trees.PackedTrees] = []
    calls: list[int] = []

    def backend(packed: compiled_trees.PackedTrees):  # type: ignore[no-untyped-def]
        seen.append(packed)

        def evaluate(rows: np.ndarray) -> np.ndarray:
            calls.append(len(rows))
            return packed.predict(rows) + 1.0  # visibly different: proves this function ran

        return evaluate

    compiled = compile_or_raise(model, trees=backend)
    assert len(seen) == 1 and seen[0].n_boosters == 6 and seen[0].n_trees == 40
    shifted = compiled(X[:5])
    assert calls == [5]
    assert np.abs(shifted - model.predict(X[:5])).max() > 0.1
