"""Each feature check, a passing and a failing case."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlops_assets.atmos.checks import evaluate_feature_checks
from mlops_assets.atmos.cleaning import clean_observations
from mlops_assets.atmos.observations import conform

NOW = pd.Timestamp("2024-03-01T00:00Z")


@pytest.fixture
def healthy() -> pd.DataFrame:
    hours = pd.date_range(NOW - pd.Timedelta(days=40), NOW - pd.Timedelta(hours=1), freq="h")
    rng = np.random.default_rng(0)
    daily = 5 * np.sin(2 * np.pi * np.arange(len(hours)) / 24)
    raw = pd.DataFrame(
        {
            "station": "S",
            "time": hours,
            "tmp": 10 + daily + rng.normal(0, 1, len(hours)),
            "rh": 60 + rng.normal(0, 5, len(hours)),
        }
    )
    cleaned, _ = clean_observations(conform(raw))
    return cleaned


def _results(frame: pd.DataFrame, live: bool = False) -> dict[str, bool]:
    return {result.check_name: result.passed for result in evaluate_feature_checks(frame, live, NOW)}


def test_a_healthy_series_passes_every_check(healthy: pd.DataFrame) -> None:
    assert _results(healthy, live=True) == dict.fromkeys(
        ["schema", "one_row_per_hour", "physical_ranges", "missing_rate", "freshness", "drift"], True
    )


def test_schema_fails_on_a_missing_column_and_stops_there(healthy: pd.DataFrame) -> None:
    assert _results(healthy.drop(columns=["interpolated"])) == {"schema": False}


def test_schema_fails_on_a_wrong_dtype(healthy: pd.DataFrame) -> None:
    assert _results(healthy.assign(tmp=healthy["tmp"].astype(str)))["schema"] is False


def test_one_row_per_hour_fails_on_duplicates_and_holes(healthy: pd.DataFrame) -> None:
    assert _results(pd.concat([healthy, healthy.iloc[[5]]]).sort_values("time"))["one_row_per_hour"] is False
    assert _results(healthy.drop(index=[10]))["one_row_per_hour"] is False


def test_physical_ranges_fail_on_an_impossible_value(healthy: pd.DataFrame) -> None:
    broken = healthy.copy()
    broken.loc[3, "tmp"] = 75.0
    assert _results(broken)["physical_ranges"] is False


def test_missing_rate_warns_when_too_much_is_missing(healthy: pd.DataFrame) -> None:
    broken = healthy.copy()
    broken.loc[: len(broken) // 5, "tmp"] = np.nan
    assert _results(broken)["missing_rate"] is False


def test_freshness_applies_to_live_sources_only(healthy: pd.DataFrame) -> None:
    stale = healthy[healthy["time"] < NOW - pd.Timedelta(days=5)]
    assert _results(stale, live=True)["freshness"] is False
    assert _results(stale, live=False)["freshness"] is True


def test_drift_warns_when_a_variable_changes_units(healthy: pd.DataFrame) -> None:
    broken = healthy.copy()
    recent = broken["time"] > NOW - pd.Timedelta(days=7)
    broken.loc[recent, "tmp"] = broken.loc[recent, "tmp"] * 9 / 5 + 32  # Fahrenheit sneaks in
    assert _results(broken)["drift"] is False
