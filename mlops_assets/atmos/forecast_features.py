"""The forecaster's input contract, shared by training and serving (NumPy only, no Dagster).

A forecast starts from the 72 most recent hourly temperatures; depending on its `FeatureSpec` a
model also uses calendar terms of the last observed hour and the last 24 hours of some other
variables. Training builds its matrix with `feature_matrix`, the prediction service builds one
row with `feature_row`: the same code on both sides, so they cannot drift apart.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

INPUT_HOURS = 72
HORIZON_HOURS = 24
_HOURS_PER_DAY = 24.0
_DAYS_PER_YEAR = 365.2425


@dataclass(frozen=True)
class FeatureSpec:
    """Which inputs beyond the 72 temperatures a model needs."""

    calendar: bool = False
    covariates: tuple[str, ...] = field(default_factory=tuple)
    covariate_hours: int = HORIZON_HOURS

    @property
    def n_features(self) -> int:
        return INPUT_HOURS + (4 if self.calendar else 0) + len(self.covariates) * self.covariate_hours

    @property
    def needs_time(self) -> bool:
        return self.calendar

    def to_dict(self) -> dict[str, object]:
        return {"calendar": self.calendar, "covariates": list(self.covariates), "covariate_hours": self.covariate_hours}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> FeatureSpec:
        covariates = data.get("covariates") or []
        return cls(
            calendar=bool(data.get("calendar", False)),
            covariates=tuple(str(c) for c in covariates),  # type: ignore[union-attr]
            covariate_hours=int(data.get("covariate_hours", HORIZON_HOURS)),  # type: ignore[arg-type]
        )


def calendar_terms(epoch_hours: np.ndarray) -> np.ndarray:
    """sin/cos of hour-of-day and day-of-year (UTC) for hours since the Unix epoch, shape (n, 4)."""
    hours = np.asarray(epoch_hours, dtype="float64")
    day_angle = 2.0 * math.pi * (hours % _HOURS_PER_DAY) / _HOURS_PER_DAY
    year_angle = 2.0 * math.pi * ((hours / _HOURS_PER_DAY) % _DAYS_PER_YEAR) / _DAYS_PER_YEAR
    return np.column_stack([np.sin(day_angle), np.cos(day_angle), np.sin(year_angle), np.cos(year_angle)])


def feature_matrix(
    spec: FeatureSpec,
    temperatures: np.ndarray,
    last_epoch_hours: np.ndarray | None = None,
    covariates: Mapping[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Model inputs for n windows.

    temperatures: (n, 72); last_epoch_hours: (n,) hours since the epoch of the last observed hour
    (needed when `spec.calendar`); covariates: name -> (n, covariate_hours) for each name in the
    spec, oldest first.
    """
    temps = np.asarray(temperatures, dtype="float64")
    if temps.ndim != 2 or temps.shape[1] != INPUT_HOURS:
        raise ValueError(f"temperatures must have shape (n, {INPUT_HOURS}), got {temps.shape}")
    blocks = [temps]
    if spec.calendar:
        if last_epoch_hours is None:
            raise ValueError("this model needs the time of the last observation")
        blocks.append(calendar_terms(last_epoch_hours))
    for name in spec.covariates:
        if covariates is None or name not in covariates:
            raise ValueError(f"this model needs the covariate {name!r}")
        values = np.asarray(covariates[name], dtype="float64")
        if values.shape != (temps.shape[0], spec.covariate_hours):
            raise ValueError(f"covariate {name!r} must have shape (n, {spec.covariate_hours}), got {values.shape}")
        blocks.append(values)
    return np.hstack(blocks)


def epoch_hours(moment: dt.datetime) -> float:
    """Hours since the Unix epoch of a timezone-aware datetime."""
    if moment.tzinfo is None:
        raise ValueError("the time must carry a UTC offset")
    return moment.timestamp() / 3600.0


def feature_row(
    spec: FeatureSpec,
    temperatures: Sequence[float],
    last_observed_at: dt.datetime | None = None,
    covariates: Mapping[str, Sequence[float]] | None = None,
) -> np.ndarray:
    """One (1, n_features) input row, as the prediction service builds it from a request."""
    hours = None if last_observed_at is None else np.array([epoch_hours(last_observed_at)])
    cov = None if covariates is None else {k: np.asarray(v, dtype="float64")[None, :] for k, v in covariates.items()}
    return feature_matrix(spec, np.asarray(temperatures, dtype="float64")[None, :], hours, cov)
