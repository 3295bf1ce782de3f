"""Gap rules and value filters of the cleaned series."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlops_assets.atmos.cleaning import MAX_FILLED_GAP_HOURS, clean_observations, missing_runs
from mlops_assets.atmos.observations import conform


def _hours(n: int, start: str = "2024-01-01T00:00Z") -> pd.DatetimeIndex:
    return pd.date_range(start, periods=n, freq="h")


def _raw(tmp: list[float], drop: list[int] = (), **extra: list[float]) -> pd.DataFrame:
    frame = pd.DataFrame({"station": "S", "time": _hours(len(tmp)), "tmp": tmp, **extra})
    return conform(frame.drop(index=list(drop)))


def test_missing_runs_finds_each_run() -> None:
    assert missing_runs(np.array([0, 1, 1, 0, 1, 0, 0, 1], dtype=bool)) == [(1, 3), (4, 5), (7, 8)]


def test_a_gap_of_three_hours_is_interpolated_and_flagged() -> None:
    cleaned, report = clean_observations(_raw([0, 1, 2, 3, 4, 5, 6, 7.0], drop=[2, 3, 4]))
    assert len(cleaned) == 8
    assert cleaned["tmp"].tolist() == pytest.approx([0, 1, 2, 3, 4, 5, 6, 7])
    assert cleaned["interpolated"].tolist() == [False, False, True, True, True, False, False, False]
    assert report.gaps_filled == 1 and report.hours_filled == MAX_FILLED_GAP_HOURS and report.gaps_left == 0


def test_a_gap_of_four_hours_stays_a_gap() -> None:
    cleaned, report = clean_observations(_raw([float(i) for i in range(10)], drop=[2, 3, 4, 5]))
    assert len(cleaned) == 10  # the grid has the hours, with missing values
    assert cleaned["tmp"].isna().sum() == 4
    assert not cleaned["interpolated"].any()
    assert report.gaps_left == 1 and report.hours_missing == 4


def test_impossible_values_and_qc_errors_are_removed_then_filled() -> None:
    raw = _raw([10.0, 11, 99, 13, 14])
    raw.loc[3, "tmp_qc"] = 1  # KMA: error
    cleaned, report = clean_observations(raw)
    assert report.values_removed["tmp"] == 2
    assert cleaned["tmp"].tolist() == pytest.approx([10, 11, 12, 13, 14])


def test_wind_direction_is_interpolated_on_the_circle() -> None:
    cleaned, _ = clean_observations(_raw([1.0, 2, 3], drop=[1], wd=[350.0, 0, 10], ws=[1.0, 1, 1]))
    assert cleaned["wd"].iloc[1] == pytest.approx(0.0, abs=1e-6) or cleaned["wd"].iloc[1] == pytest.approx(360.0)


def test_duplicate_hours_keep_the_first_report() -> None:
    raw = _raw([1.0, 2.0, 3.0])
    raw = conform(pd.concat([raw, raw.iloc[[1]].assign(tmp=50.0)]))
    cleaned, _ = clean_observations(raw)
    assert cleaned["tmp"].tolist() == pytest.approx([1, 2, 3])
