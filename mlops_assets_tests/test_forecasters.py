"""The forecaster families: build, fit, predict (n, 24), clone, skops round trip, search spaces."""

from __future__ import annotations

import datetime as dt
import zipfile
from pathlib import Path
from typing import Any

import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest
from ray.tune.search.sample import Domain
from sklearn.base import clone
from sklearn.ensemble import ExtraTreesRegressor, HistGradientBoostingRegressor
from sklearn.linear_model import Ridge

from mlops_assets.atmos import estimators
from mlops_assets.atmos.dataset import TrainingWindows, WindowSet, build_training_windows
from mlops_assets.atmos.estimators import (
    LEGACY_MODULE,
    SKOPS_TRUSTED_TYPES,
    LastValue,
    LastValueDelta,
    RegimeInteractions,
    ResidualBoost,
    TreeFeatures,
)
from mlops_assets.atmos.families import (
    DEFAULTS,
    FAMILIES,
    FAMILY_KEYS,
    PROGRESS_STAGES,
    build_forecaster,
    family_params,
    fit_with_progress,
)
from mlops_assets.atmos.forecast_features import (
    CALENDAR_TERMS,
    HORIZON_HOURS,
    INPUT_HOURS,
    FeatureSpec,
    calendar_terms,
    epoch_hours,
    feature_matrix,
    feature_row,
)
from mlops_assets.atmos.model_io import FEATURE_SPEC_KEY, load_forecaster
from mlops_assets.atmos.search import DEFAULT_NUM_SAMPLES, QUICK_NUM_SAMPLES, QUICK_SEARCH_SPACE, SEARCH_SPACE

pytestmark = pytest.mark.timeout(120)

COVARIATES = ("td", "rh", "ws", "precip")
#: Small and fast: what QUICK_SEARCH_SPACE draws, every family.
QUICK_CONFIG = {k: v for k, v in QUICK_SEARCH_SPACE.items() if not isinstance(v, Domain)} | {
    "ridge_alpha": 1.0,
    "gbm_max_iter": 8,
}


def synthetic_series(days: int = 40, seed: int = 0) -> pd.DataFrame:
    """Hourly temperatures with a diurnal cycle, weather noise and covariates that matter."""
    rng = np.random.default_rng(seed)
    hours = days * 24
    time = pd.date_range("2021-03-01", periods=hours, freq="h", tz="UTC")
    t = np.arange(hours)
    weather = np.cumsum(rng.normal(0, 0.3, hours))
    weather -= np.convolve(weather, np.ones(72) / 72, mode="same")
    tmp = 10 + 5 * np.sin(2 * np.pi * (t % 24 - 9) / 24) + weather + rng.normal(0, 0.3, hours)
    td = tmp - 3 - 2 * rng.random(hours)
    return pd.DataFrame(
        {
            "station": "TEST",
            "time": time,
            "tmp": tmp,
            "td": td,
            "rh": np.clip(100 - 5 * (tmp - td), 0, 100),
            "ws": np.abs(rng.normal(4, 2, hours)),
            "precip": np.where(rng.random(hours) < 0.05, rng.random(hours) * 3, 0.0),
        }
    )


@pytest.fixture(scope="module")
def windows() -> TrainingWindows:
    return build_training_windows(synthetic_series())


def fitted(family: str, windows: TrainingWindows, **overrides: Any) -> tuple[Any, FeatureSpec]:
    model, spec = build_forecaster({**QUICK_CONFIG, "family": family, **overrides}, windows.covariates)
    return model.fit(windows.train.features(spec), windows.train.targets), spec


def shifted(windows: WindowSet, offset: float) -> WindowSet:
    """The same windows with every temperature (air and dew point) `offset` degrees warmer."""
    covariates = dict(windows.covariates)
    covariates["td"] = covariates["td"] + offset
    return WindowSet(windows.temperatures + offset, windows.targets + offset, windows.last_epoch_hours, covariates)


def test_synthetic_windows_offer_every_covariate(windows: TrainingWindows) -> None:
    assert windows.covariates == COVARIATES
    assert len(windows.train) > 300 and len(windows.validation) > 10


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("regime", ["none", "level"])
def test_family_fits_and_predicts_24_hours(family: str, regime: str, windows: TrainingWindows) -> None:
    model, spec = fitted(family, windows, ridge_regime=regime)
    X = windows.validation.features(spec)
    assert X.shape[1] == spec.n_features
    predictions = model.predict(X)
    assert predictions.shape == (len(windows.validation), HORIZON_HOURS)
    assert np.isfinite(predictions).all()
    # Better than persistence on this easy synthetic series (the model learned something).
    persistence = np.abs(windows.validation.temperatures[:, -1:] - windows.validation.targets).mean()
    assert np.abs(predictions - windows.validation.targets).mean() < persistence


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_without_covariates(family: str) -> None:
    series = synthetic_series()[["station", "time", "tmp"]]
    only_temperatures = build_training_windows(series)
    assert only_temperatures.covariates == ()
    model, spec = fitted(family, only_temperatures, ridge_regime="level")
    assert spec.covariates == ()
    assert model.predict(only_temperatures.validation.features(spec)).shape == (len(only_temperatures.validation), 24)


def test_feature_specs(windows: TrainingWindows) -> None:
    assert build_forecaster({"family": "ridge_lags"}, COVARIATES)[1] == FeatureSpec(calendar=True)
    for family in ("ridge_covariates", "gbm_delta", "ridge_boost"):
        assert build_forecaster({"family": family}, COVARIATES)[1] == FeatureSpec(calendar=True, covariates=COVARIATES)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_clones(family: str, windows: TrainingWindows) -> None:
    model, spec = fitted(family, windows)
    copy = clone(model)
    assert set(copy.get_params()) == set(model.get_params())
    assert not hasattr(copy, "boosters_") and not hasattr(copy, "n_features_in_")
    X = windows.validation.features(spec)
    refitted = copy.fit(windows.train.features(spec), windows.train.targets)
    np.testing.assert_allclose(refitted.predict(X), model.predict(X))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_round_trips_through_mlflow_skops(
    family: str, windows: TrainingWindows, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    model, spec = fitted(family, windows, ridge_regime="level")
    X = windows.validation.features(spec)
    path = tmp_path / "model"
    mlflow.sklearn.save_model(
        model,
        str(path),
        serialization_format="skops",
        skops_trusted_types=SKOPS_TRUSTED_TYPES,
        pip_requirements=["scikit-learn"],
    )
    loaded = mlflow.sklearn.load_model(str(path))
    assert type(loaded) is type(model)
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


def test_gbm_delta_shifts_with_the_temperatures(windows: TrainingWindows) -> None:
    """A change-from-the-last-value model: 5 degrees warmer everywhere, 5 degrees warmer forecast."""
    model, spec = fitted("gbm_delta", windows, gbm_max_iter=20)
    base = model.predict(windows.validation.features(spec))
    warmer = model.predict(shifted(windows.validation, 5.0).features(spec))
    np.testing.assert_allclose(warmer, base + 5.0, atol=1e-9)
    warm_windows = TrainingWindows(shifted(windows.train, 5.0), windows.validation, windows.test, {}, COVARIATES)
    refitted, _ = fitted("gbm_delta", warm_windows, gbm_max_iter=20)
    np.testing.assert_allclose(refitted.predict(shifted(windows.validation, 5.0).features(spec)), warmer, atol=1e-9)


def test_last_value_delta_shifts_with_the_temperatures(windows: TrainingWindows) -> None:
    spec = FeatureSpec(calendar=True)
    trees = ExtraTreesRegressor(n_estimators=5, min_samples_leaf=5, random_state=0)
    model = LastValueDelta(trees).fit(windows.train.features(spec), windows.train.targets)
    base = model.predict(windows.validation.features(spec))
    np.testing.assert_allclose(model.predict(shifted(windows.validation, -3.0).features(spec)), base - 3.0, atol=1e-9)


def test_ridge_boost_is_ridge_plus_a_correction(windows: TrainingWindows) -> None:
    model, spec = fitted("ridge_boost", windows)
    X = windows.validation.features(spec)
    ridge, _ = fitted("ridge_covariates", windows)
    np.testing.assert_allclose(model.base_.predict(X), ridge.predict(X))
    assert not np.allclose(model.predict(X), ridge.predict(X))
    assert (
        model.pca_.n_components_ == QUICK_CONFIG["gbm_components"] and len(model.boosters_) == model.pca_.n_components_
    )


def test_fit_with_progress_equals_fit_and_reports_each_stage(windows: TrainingWindows) -> None:
    config = {**QUICK_CONFIG, "family": "ridge_boost", "gbm_max_iter": 12}
    model, spec = build_forecaster(config, windows.covariates)
    X, y = windows.train.features(spec), windows.train.targets
    X_val, y_val = windows.validation.features(spec), windows.validation.targets
    reports: list[tuple[int, float]] = []
    staged = fit_with_progress(clone(model), X, y, X_val, y_val, lambda step, value: reports.append((step, value)))
    plain = clone(model).fit(X, y)
    np.testing.assert_allclose(staged.predict(X_val), plain.predict(X_val))
    assert [step for step, _ in reports] == list(range(1, PROGRESS_STAGES + 1))
    assert reports[-1][1] == pytest.approx(np.abs(plain.predict(X_val) - y_val).mean())
    assert all(b.max_iter == 12 and not b.warm_start for b in staged.boosters_)

    ridge, _ridge_spec = build_forecaster({"family": "ridge_covariates"}, windows.covariates)
    once: list[tuple[int, float]] = []
    fit_with_progress(ridge, X, y, X_val, y_val, lambda step, value: once.append((step, value)))
    assert [step for step, _ in once] == [1]


def test_unknown_family_and_regime_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown forecaster family"):
        build_forecaster({"family": "lstm"}, COVARIATES)
    with pytest.raises(ValueError, match="unknown forecaster family"):
        build_forecaster({}, COVARIATES)
    with pytest.raises(ValueError, match="ridge_regime"):
        build_forecaster({"family": "ridge_covariates", "ridge_regime": "calendar"}, COVARIATES)


def test_family_params_keep_only_what_the_family_reads() -> None:
    config = {"family": "ridge_lags", "ridge_alpha": 3.0, "gbm_max_iter": 50, "ridge_regime": "level"}
    assert family_params(config) == {"family": "ridge_lags", "ridge_alpha": 3.0}
    assert family_params({"family": "ridge_boost"})["gbm_components"] == DEFAULTS["gbm_components"]


@pytest.mark.parametrize("space", [SEARCH_SPACE, QUICK_SEARCH_SPACE], ids=["default", "quick"])
def test_search_space_covers_every_family_and_key(space: dict[str, Any], windows: TrainingWindows) -> None:
    assert set(space["family"].categories) == set(FAMILIES)
    used = {key for keys in FAMILY_KEYS.values() for key in keys}
    assert used <= set(space) and used <= set(DEFAULTS)
    rng = np.random.RandomState(0)
    for _ in range(8):
        config = {k: (v.sample(random_state=rng) if isinstance(v, Domain) else v) for k, v in space.items()}
        _model, spec = build_forecaster(config, windows.covariates)
        assert spec.n_features == windows.train.features(spec).shape[1]
    assert DEFAULT_NUM_SAMPLES >= 10 and 1 <= QUICK_NUM_SAMPLES < DEFAULT_NUM_SAMPLES


def test_search_space_converts_for_optuna() -> None:
    pytest.importorskip("optuna")
    from ray.tune.search.optuna import OptunaSearch

    distributions = OptunaSearch.convert_search_space(SEARCH_SPACE)
    assert set(distributions) == set(SEARCH_SPACE)


def test_quick_space_fits_fast(windows: TrainingWindows) -> None:
    import time

    for family in FAMILIES:
        model, spec = build_forecaster({**QUICK_CONFIG, "family": family, "gbm_max_iter": 10}, windows.covariates)
        began = time.perf_counter()
        model.fit(windows.train.features(spec), windows.train.targets)
        assert time.perf_counter() - began < 1.0, family


def test_tree_features_layout() -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(5, INPUT_HOURS + 4 + 2 * 24))
    features = TreeFeatures(calendar=True, covariates=("td", "rh"), lags=12, covariate_lags=3, level=False).fit(X)
    out = features.transform(X)
    # 11 relative lags + 3 far lags + hour of day sin/cos + 3 hours of each covariate.
    assert out.shape == (5, 11 + 3 + 2 + 3 + 3)
    np.testing.assert_allclose(out[:, 16:19], X[:, INPUT_HOURS + 4 + 21 : INPUT_HOURS + 4 + 24] - X[:, [71]])
    np.testing.assert_allclose(out[:, 19:], X[:, -3:])
    with pytest.raises(ValueError, match="expects"):
        TreeFeatures(calendar=False, covariates=("td",)).fit(X)


def test_regime_interactions_scale_the_covariates_by_the_standardised_mean_temperature() -> None:
    rng = np.random.default_rng(2)
    X = rng.normal(size=(50, INPUT_HOURS + 4 + 24))
    transformer = RegimeInteractions(first_column=INPUT_HOURS + 4).fit(X)
    out = transformer.transform(X)
    assert out.shape == (50, X.shape[1] + 24)
    z = (X[:, :INPUT_HOURS].mean(axis=1) - transformer.center_) / transformer.scale_
    np.testing.assert_allclose(out[:, -24:], X[:, -24:] * z[:, None])
    assert RegimeInteractions(first_column=X.shape[1]).fit(X).transform(X).shape == X.shape


def test_residual_boost_caps_components_at_the_outputs() -> None:
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(40, 6)), rng.normal(size=(40, 2))
    from sklearn.linear_model import Ridge

    model = ResidualBoost(Ridge(), HistGradientBoostingRegressor(max_iter=5), n_components=6).fit(X, y)
    assert model.pca_.n_components_ == 2 and model.predict(X).shape == (40, 2)


# --- The layout: FeatureSpec names the columns, the estimators read what it names -----------------

LAYOUT_SPEC = FeatureSpec(calendar=True, covariates=("td", "rh"))
LAST_OBSERVED_AT = dt.datetime(2013, 6, 1, 23, tzinfo=dt.UTC)


def layout_request(offset: float = 0.0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Temperatures and covariates whose every value is distinct, so a misplaced column shows."""
    temperatures = 3.0 + offset + 0.25 * np.arange(INPUT_HOURS)
    hours = np.arange(HORIZON_HOURS)
    return temperatures, {"td": 100.0 + offset + hours, "rh": 200.0 + offset + hours}


def test_feature_row_puts_each_request_part_where_the_spec_names_it() -> None:
    temperatures, covariates = layout_request()
    row = feature_row(LAYOUT_SPEC, temperatures, LAST_OBSERVED_AT, covariates)[0]
    names = LAYOUT_SPEC.column_names()
    assert len(row) == len(names) == LAYOUT_SPEC.n_features == INPUT_HOURS + 4 + 2 * HORIZON_HOURS
    np.testing.assert_array_equal(row[LAYOUT_SPEC.lag_slice], temperatures)
    assert row[LAYOUT_SPEC.last_lag_column] == temperatures[-1] and names[LAYOUT_SPEC.last_lag_column] == "tmp_lag0"
    assert row[LAYOUT_SPEC.lag_column(24)] == temperatures[-25] and names[LAYOUT_SPEC.lag_column(24)] == "tmp_lag24"
    terms = calendar_terms(np.array([epoch_hours(LAST_OBSERVED_AT)]))[0]
    np.testing.assert_array_equal(row[LAYOUT_SPEC.calendar_slice], terms)
    assert names[LAYOUT_SPEC.calendar_slice] == list(CALENDAR_TERMS)
    assert names[LAYOUT_SPEC.hour_of_day_slice] == ["hour_of_day_sin", "hour_of_day_cos"]
    for name, values in covariates.items():
        np.testing.assert_array_equal(row[LAYOUT_SPEC.covariate_slice(name)], values)
        np.testing.assert_array_equal(row[LAYOUT_SPEC.covariate_slice(name, last_hours=3)], values[-3:])
        assert names[LAYOUT_SPEC.covariate_slice(name)][-1] == f"{name}_lag0"
    assert FeatureSpec().n_features == FeatureSpec().covariate_start == INPUT_HOURS
    with pytest.raises(ValueError, match="no calendar"):
        _ = FeatureSpec().calendar_slice
    with pytest.raises(ValueError, match="not in this feature spec"):
        LAYOUT_SPEC.covariate_slice("ws")


def test_one_row_features_equal_the_training_matrix_rows_also_when_remembered() -> None:
    """The service's one-row inputs (calendar terms remembered per hour) are the training rows, bit for bit."""
    temperatures, covariates = layout_request()
    last_hours = epoch_hours(LAST_OBSERVED_AT) + np.arange(0.0, 300.0, 1.0)
    matrix = feature_matrix(
        LAYOUT_SPEC,
        np.tile(temperatures, (len(last_hours), 1)),
        last_hours,
        {name: np.tile(values, (len(last_hours), 1)) for name, values in covariates.items()},
    )
    for _ in range(2):  # the second pass reads the remembered terms
        for i, hours in enumerate(last_hours):
            when = dt.datetime.fromtimestamp(hours * 3600.0, tz=dt.UTC)
            np.testing.assert_array_equal(feature_row(LAYOUT_SPEC, temperatures, when, covariates)[0], matrix[i])
    row = feature_row(LAYOUT_SPEC, temperatures, LAST_OBSERVED_AT, covariates)
    row[0, LAYOUT_SPEC.calendar_slice] = 0.0  # the caller's copy: the remembered terms stay as they were
    np.testing.assert_array_equal(feature_row(LAYOUT_SPEC, temperatures, LAST_OBSERVED_AT, covariates)[0], matrix[0])


def test_each_estimator_reads_the_columns_the_spec_names() -> None:
    """Expected values come from the request itself, not from the spec: an independent check."""
    requests = [layout_request(offset) for offset in (0.0, 5.0, -4.0)]
    hours = np.full(len(requests), epoch_hours(LAST_OBSERVED_AT))
    X = feature_matrix(
        LAYOUT_SPEC,
        np.stack([t for t, _ in requests]),
        hours,
        {name: np.stack([c[name] for _, c in requests]) for name in LAYOUT_SPEC.covariates},
    )
    temperatures, covariates = requests[1]
    row = X[1]
    last = temperatures[-1]

    np.testing.assert_array_equal(LastValue().fit(X).predict(X)[1], np.full(HORIZON_HOURS, last))
    relative = LastValueDelta(Ridge())._relative(X)[1]
    np.testing.assert_array_equal(relative[:INPUT_HOURS], temperatures - last)
    np.testing.assert_array_equal(relative[INPUT_HOURS:], row[INPUT_HOURS:])

    regime = RegimeInteractions(first_column=LAYOUT_SPEC.covariate_start, window=6).fit(X)
    z = (temperatures[-6:].mean() - regime.center_) / regime.scale_
    appended = regime.transform(X)[1, X.shape[1] :]
    np.testing.assert_allclose(appended, np.concatenate([covariates["td"], covariates["rh"]]) * z)

    trees = TreeFeatures(calendar=True, covariates=("td", "rh"), lags=4, covariate_lags=3, level=True, day_of_year=True)
    expected = np.concatenate(
        [
            [last],
            temperatures[-4:-1] - last,
            temperatures[[-25, -49, 0]] - last,
            calendar_terms(np.array([epoch_hours(LAST_OBSERVED_AT)]))[0],
            covariates["td"][-3:] - last,
            covariates["rh"][-3:],
        ]
    )
    np.testing.assert_array_equal(trees.fit(X).transform(X)[1], expected)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_families_build_their_blocks_for_the_spec_they_return(family: str) -> None:
    model, spec = build_forecaster({"family": family, "ridge_regime": "level"}, COVARIATES)
    ridge = model.base if isinstance(model, ResidualBoost) else model
    if hasattr(ridge, "named_steps") and "regime" in ridge.named_steps:
        assert ridge.named_steps["regime"].first_column == spec.covariate_start
    if isinstance(model, ResidualBoost):
        assert model.features.feature_spec() == spec
    if isinstance(getattr(model, "base", None), LastValue):
        assert model.base.last_column == spec.last_lag_column


@pytest.mark.parametrize("family", ["gbm_delta", "ridge_boost"])
def test_a_version_saved_before_the_move_still_loads(
    family: str, windows: TrainingWindows, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Versions registered before the model folders name `mlops_assets.ml.estimators.*` in their skops file."""
    import skops.io

    model, spec = fitted(family, windows, ridge_regime="level")
    X = windows.validation.features(spec)
    path = tmp_path / "model"
    legacy_names = [name for name in SKOPS_TRUSTED_TYPES if name.startswith(f"{LEGACY_MODULE}.")]
    old_trusted_types = [name for name in SKOPS_TRUSTED_TYPES if not name.startswith("mlops_assets.atmos.")]
    with monkeypatch.context() as before_the_move:  # the classes as the old code defined them
        for name in legacy_names:
            before_the_move.setattr(getattr(estimators, name.rsplit(".", 1)[1]), "__module__", LEGACY_MODULE)
        mlflow.sklearn.save_model(
            model,
            str(path),
            serialization_format="skops",
            skops_trusted_types=old_trusted_types,
            metadata={FEATURE_SPEC_KEY: spec.to_dict()},
            pip_requirements=["scikit-learn"],
        )
    schema = zipfile.ZipFile(path / "model.skops").read("schema.json").decode()
    assert f'"{LEGACY_MODULE}"' in schema and '"mlops_assets.atmos.estimators"' not in schema

    loaded, loaded_spec = load_forecaster(str(path))
    assert type(loaded) is type(model) and loaded_spec == spec
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    trusting_ours = skops.io.load(path / "model.skops", trusted=SKOPS_TRUSTED_TYPES)  # both names trusted
    np.testing.assert_array_equal(trusting_ours.predict(X), model.predict(X))
