"""Turn raw observations into a clean hourly series (pure pandas, no Dagster).

Rules: one row per hour on a regular UTC grid; values flagged as errors by QC or outside
physical limits are removed; gaps of at most `MAX_FILLED_GAP_HOURS` are linearly interpolated
and flagged; longer gaps stay missing, and the window builder never crosses them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mlops_assets.atmos.observations import VARIABLES

MAX_FILLED_GAP_HOURS = 3
#: QC flag meaning "error" in KMA's convention (0/"" normal, 9 missing, others suspect).
QC_ERROR = 1

#: Physically possible ranges, inclusive (generous: they reject sensor faults, not weather).
PHYSICAL_LIMITS: dict[str, tuple[float, float]] = {
    "tmp": (-60.0, 60.0),
    "precip": (0.0, 300.0),
    "wd": (0.0, 360.0),
    "ws": (0.0, 75.0),
    "p": (500.0, 1100.0),
    "mslp": (850.0, 1090.0),
    "rh": (0.0, 100.0),
    "td": (-80.0, 40.0),
}


@dataclass(frozen=True)
class CleaningReport:
    """What cleaning did, for asset metadata."""

    hours: int
    observed_hours: int
    values_removed: dict[str, int]
    gaps_filled: int
    hours_filled: int
    gaps_left: int
    hours_missing: int


def missing_runs(missing: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) index ranges of consecutive True values."""
    padded = np.concatenate([[False], np.asarray(missing, dtype=bool), [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True))


def _fill_short_runs(values: pd.Series, max_hours: int) -> tuple[pd.Series, np.ndarray]:
    """Linearly interpolate interior NaN runs no longer than `max_hours`; return filled mask."""
    missing = values.isna().to_numpy()
    interpolated = values.interpolate(method="linear", limit_area="inside")
    filled = np.zeros(len(values), dtype=bool)
    for start, stop in missing_runs(missing):
        if stop - start <= max_hours and start > 0 and stop < len(values):
            filled[start:stop] = True
    return values.where(~filled, interpolated), filled


def clean_observations(
    raw: pd.DataFrame, max_gap_hours: int = MAX_FILLED_GAP_HOURS
) -> tuple[pd.DataFrame, CleaningReport]:
    """Clean one station's canonical observations; see the module docstring for the rules."""
    if raw["station"].nunique() > 1:
        raise ValueError(f"clean one station at a time, got {sorted(raw['station'].unique())}")
    if raw.empty:
        raise ValueError("no observations to clean")
    station = str(raw["station"].iloc[0])
    frame = raw.copy()
    frame["time"] = frame["time"].dt.floor("h")
    frame = frame.drop_duplicates(subset=["time"], keep="first").set_index("time").sort_index()

    removed: dict[str, int] = {}
    for name, (low, high) in PHYSICAL_LIMITS.items():
        values = frame[name]
        qc = frame[f"{name}_qc"]
        bad = values.notna() & ((values < low) | (values > high) | (qc == QC_ERROR).fillna(False).to_numpy())
        removed[name] = int(bad.sum())
        frame.loc[bad, name] = np.nan

    grid = pd.date_range(frame.index.min(), frame.index.max(), freq="h", tz="UTC", name="time")
    observed_hours = len(frame)
    frame = frame.reindex(grid)

    any_filled = np.zeros(len(grid), dtype=bool)
    for name in VARIABLES:
        if name == "wd":
            continue
        frame[name], filled = _fill_short_runs(frame[name], max_gap_hours)
        any_filled |= filled
    # Wind direction is circular: interpolate its unit vector, not the degrees (350 -> 10 is 0, not 180).
    radians = np.deg2rad(frame["wd"])
    east, filled = _fill_short_runs(np.sin(radians), max_gap_hours)
    north, _ = _fill_short_runs(np.cos(radians), max_gap_hours)
    frame.loc[filled, "wd"] = (np.rad2deg(np.arctan2(east[filled], north[filled])) + 360.0) % 360.0
    any_filled |= filled

    tmp_missing = frame["tmp"].isna().to_numpy()
    cleaned = frame[list(VARIABLES)].reset_index()
    cleaned.insert(0, "station", station)
    cleaned["interpolated"] = any_filled
    report = CleaningReport(
        hours=len(cleaned),
        observed_hours=observed_hours,
        values_removed=removed,
        gaps_filled=len(missing_runs(any_filled)),
        hours_filled=int(any_filled.sum()),
        gaps_left=len(missing_runs(tmp_missing)),
        hours_missing=int(tmp_missing.sum()),
    )
    return cleaned, report
