"""Windowed 72 -> 24 hour datasets with a chronological split (pure NumPy/pandas).

The hourly series is cut into train / validation / test segments by time (70/15/15); windows
are built inside each segment, so no window straddles two segments, and never across a gap:
every hour a window touches must be present in the cleaned series.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mlops_assets.atmos.forecast_features import HORIZON_HOURS, INPUT_HOURS, FeatureSpec, feature_matrix

SPLITS = ("train", "validation", "test")
DEFAULT_FRACTIONS = (0.70, 0.15, 0.15)
#: Other variables a model may use; `wd` is left out (degrees are circular, a linear model misreads them).
CANDIDATE_COVARIATES = ("td", "rh", "ws", "precip", "mslp", "p")
#: A covariate with more missing hours than this is not offered to models (it would cost windows).
MAX_COVARIATE_MISSING = 0.01


@dataclass(frozen=True)
class WindowSet:
    """Windows of one split: inputs, covariates, targets and the time of each window's last input."""

    temperatures: np.ndarray  # (n, 72)
    targets: np.ndarray  # (n, 24)
    last_epoch_hours: np.ndarray  # (n,)
    covariates: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (n, 24)

    def __len__(self) -> int:
        return len(self.targets)

    def features(self, spec: FeatureSpec) -> np.ndarray:
        return feature_matrix(
            spec, self.temperatures, self.last_epoch_hours if spec.calendar else None, self.covariates
        )

    def head(self, n: int) -> WindowSet:
        return WindowSet(
            self.temperatures[:n],
            self.targets[:n],
            self.last_epoch_hours[:n],
            {k: v[:n] for k, v in self.covariates.items()},
        )


@dataclass(frozen=True)
class TrainingWindows:
    """The three splits and where they were cut."""

    train: WindowSet
    validation: WindowSet
    test: WindowSet
    boundaries: dict[str, str]  # split -> "first .. last" hour (UTC) of the segment
    covariates: tuple[str, ...]

    def split(self, name: str) -> WindowSet:
        return {"train": self.train, "validation": self.validation, "test": self.test}[name]


def available_covariates(series: pd.DataFrame) -> tuple[str, ...]:
    return tuple(
        name
        for name in CANDIDATE_COVARIATES
        if name in series.columns and series[name].isna().mean() <= MAX_COVARIATE_MISSING
    )


def _segment_windows(segment: pd.DataFrame, covariates: tuple[str, ...], stride: int) -> WindowSet:
    temps = segment["tmp"].to_numpy(dtype="float64")
    total = INPUT_HOURS + HORIZON_HOURS
    n = len(segment) - total + 1
    if n <= 0:
        return _empty(covariates)
    complete = ~np.isnan(temps)
    for name in covariates:
        complete &= ~np.isnan(segment[name].to_numpy(dtype="float64"))
    # A window is usable when all `total` hours are complete: a sliding sum of the complete mask.
    csum = np.concatenate([[0], np.cumsum(complete)])
    usable = (csum[total:] - csum[:-total]) == total
    starts = np.flatnonzero(usable)[::stride]
    if len(starts) == 0:
        return _empty(covariates)
    inputs = starts[:, None] + np.arange(INPUT_HOURS)
    outputs = starts[:, None] + INPUT_HOURS + np.arange(HORIZON_HOURS)
    last = starts + INPUT_HOURS - 1
    epoch = segment["time"].to_numpy(dtype="datetime64[h]").astype("int64").astype("float64")
    covariate_index = last[:, None] - np.arange(HORIZON_HOURS - 1, -1, -1)
    return WindowSet(
        temperatures=temps[inputs],
        targets=temps[outputs],
        last_epoch_hours=epoch[last],
        covariates={name: segment[name].to_numpy(dtype="float64")[covariate_index] for name in covariates},
    )


def _empty(covariates: tuple[str, ...]) -> WindowSet:
    return WindowSet(
        np.empty((0, INPUT_HOURS)),
        np.empty((0, HORIZON_HOURS)),
        np.empty(0),
        {n: np.empty((0, HORIZON_HOURS)) for n in covariates},
    )


def build_training_windows(
    series: pd.DataFrame, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS, stride: int = 1
) -> TrainingWindows:
    """Cut the cleaned hourly `series` (columns time, tmp, covariates) into windowed splits."""
    if abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"split fractions must sum to 1, got {fractions}")
    series = series.sort_values("time").reset_index(drop=True)
    covariates = available_covariates(series)
    cuts = np.cumsum([0, *fractions])
    edges = [round(c * len(series)) for c in cuts]
    sets: dict[str, WindowSet] = {}
    boundaries: dict[str, str] = {}
    for name, lo, hi in zip(SPLITS, edges[:-1], edges[1:], strict=True):
        segment = series.iloc[lo:hi].reset_index(drop=True)
        sets[name] = _segment_windows(segment, covariates, stride)
        if len(segment):
            boundaries[name] = f"{segment['time'].iloc[0]} .. {segment['time'].iloc[-1]}"
    for name, windows in sets.items():
        if len(windows) == 0:
            raise ValueError(
                f"the {name} split has no complete {INPUT_HOURS}+{HORIZON_HOURS} h window: need more history"
            )
    return TrainingWindows(sets["train"], sets["validation"], sets["test"], boundaries, covariates)


def concat_windows(first: WindowSet, second: WindowSet) -> WindowSet:
    """Both sets as one (e.g. train + validation for the final refit)."""
    return WindowSet(
        np.vstack([first.temperatures, second.temperatures]),
        np.vstack([first.targets, second.targets]),
        np.concatenate([first.last_epoch_hours, second.last_epoch_hours]),
        {name: np.vstack([first.covariates[name], second.covariates[name]]) for name in first.covariates},
    )
