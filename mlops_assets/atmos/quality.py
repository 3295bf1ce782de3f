"""Data-quality measures of the cleaned series (pure functions; the asset checks wrap them)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from mlops_assets.atmos.cleaning import PHYSICAL_LIMITS
from mlops_assets.atmos.observations import VARIABLES

FEATURE_DTYPES: dict[str, str] = {
    "station": "object|string",
    "time": "datetime64[ns, UTC]",
    **{name: "float64" for name in VARIABLES},
    "interpolated": "bool",
}


def schema_problems(frame: pd.DataFrame) -> list[str]:
    """Missing columns and wrong dtypes, as readable sentences."""
    problems = []
    for column, expected in FEATURE_DTYPES.items():
        if column not in frame.columns:
            problems.append(f"column {column!r} is missing")
            continue
        actual = str(frame[column].dtype)
        if actual not in expected.split("|") and not (expected.startswith("object") and actual.startswith("string")):
            problems.append(f"column {column!r} has dtype {actual}, expected {expected}")
    return problems


def grid_problems(frame: pd.DataFrame) -> list[str]:
    """Breaks of the one-row-per-hour rule."""
    times = frame["time"]
    problems = []
    duplicates = int(times.duplicated().sum())
    if duplicates:
        problems.append(f"{duplicates} duplicated hours")
    off_hour = int((times != times.dt.floor("h")).sum())
    if off_hour:
        problems.append(f"{off_hour} times not on the hour")
    steps = times.diff().dropna()
    irregular = int((steps != pd.Timedelta(hours=1)).sum())
    if irregular:
        problems.append(f"{irregular} steps that are not exactly one hour")
    return problems


def range_violations(frame: pd.DataFrame) -> dict[str, int]:
    """Count of values outside physical limits, per variable."""
    return {
        name: int(((frame[name] < low) | (frame[name] > high)).sum())
        for name, (low, high) in PHYSICAL_LIMITS.items()
        if name in frame.columns
    }


def missing_rates(frame: pd.DataFrame) -> dict[str, float]:
    return {
        name: float(frame[name].isna().mean()) if len(frame) else 1.0 for name in VARIABLES if name in frame.columns
    }


def hours_since_last_observation(frame: pd.DataFrame, now: pd.Timestamp) -> float:
    last = frame.loc[frame["tmp"].notna(), "time"].max()
    if pd.isna(last):
        return float("inf")
    return float((now - last) / pd.Timedelta(hours=1))


def population_stability_index(reference: np.ndarray, recent: np.ndarray, bins: int = 10) -> float:
    """PSI of `recent` against `reference`, with bins at the reference's quantiles."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)))
    if len(edges) < 3:
        return 0.0
    edges[0], edges[-1] = -np.inf, np.inf
    expected = np.histogram(reference, edges)[0] / len(reference)
    actual = np.histogram(recent, edges)[0] / len(recent)
    expected = np.clip(expected, 1e-4, None)
    actual = np.clip(actual, 1e-4, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def drift(frame: pd.DataFrame, recent_days: int = 7, reference_days: int = 28) -> dict[str, dict[str, float]]:
    """PSI and KS statistic of each variable's last `recent_days` against the trailing reference.

    The reference is the `reference_days` just before the recent window, so slow seasonal
    change is not reported as drift, while a broken sensor or a unit change is.
    """
    end = frame["time"].max()
    recent_start = end - pd.Timedelta(days=recent_days)
    reference_start = recent_start - pd.Timedelta(days=reference_days)
    recent = frame[frame["time"] > recent_start]
    reference = frame[(frame["time"] > reference_start) & (frame["time"] <= recent_start)]
    result: dict[str, dict[str, float]] = {}
    for name in VARIABLES:
        ref = reference[name].dropna().to_numpy()
        new = recent[name].dropna().to_numpy()
        if len(ref) < 24 or len(new) < 24:
            continue
        ks = stats.ks_2samp(ref, new)
        result[name] = {
            "psi": round(population_stability_index(ref, new), 4),
            "ks": round(float(ks.statistic), 4),
            "ks_pvalue": float(ks.pvalue),
        }
    return result
