"""The forecaster's input contract, shared by training and serving (NumPy only, no Dagster).

A forecast starts from the 72 most recent hourly temperatures; depending on its `FeatureSpec` a
model also uses calendar terms of the last observed hour and the last 24 hours of some other
variables. Training builds its matrix with `feature_matrix`, the prediction service builds one
row with `feature_row`: the same code on both sides, so they cannot drift apart.

`FeatureSpec` is also the one owner of the column layout: the estimators and model families ask it
where the lags, the last temperature, the calendar terms and each covariate block are
(`lag_slice`, `last_lag_column`, `calendar_slice`, `covariate_slice(name)` ...), rather than
counting columns themselves.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

INPUT_HOURS = 72
HORIZON_HOURS = 24
_HOURS_PER_DAY = 24.0
_DAYS_PER_YEAR = 365.2425
#: The calendar columns, in order (see `calendar_terms`); the first two are the hour of day.
CALENDAR_TERMS = ("hour_of_day_sin", "hour_of_day_cos", "day_of_year_sin", "day_of_year_cos")
_HOUR_OF_DAY_TERMS = 2


@dataclass(frozen=True)
class FeatureSpec:
    """Which inputs beyond the 72 temperatures a model needs, and where each sits in a row.

    Layout of a `feature_matrix` row: the 72 temperatures, oldest first (the lag block, the same
    in every spec); then, if `calendar`, the 4 `CALENDAR_TERMS`; then `covariate_hours` values per
    covariate, in `covariates` order, oldest first.
    """

    calendar: bool = False
    covariates: tuple[str, ...] = field(default_factory=tuple)
    covariate_hours: int = HORIZON_HOURS

    #: The temperatures: the first `INPUT_HOURS` columns of every layout, oldest first.
    lag_slice: ClassVar[slice] = slice(0, INPUT_HOURS)
    #: The last observed temperature (the newest lag).
    last_lag_column: ClassVar[int] = INPUT_HOURS - 1

    @staticmethod
    def lag_column(hours_before_last: int) -> int:
        """The column of the temperature `hours_before_last` hours before the last one (0: the last)."""
        if not 0 <= hours_before_last < INPUT_HOURS:
            raise ValueError(f"a lag must be 0..{INPUT_HOURS - 1} hours before the last, got {hours_before_last}")
        return FeatureSpec.last_lag_column - hours_before_last

    @property
    def calendar_slice(self) -> slice:
        """The `CALENDAR_TERMS` columns; ValueError when the spec has no calendar."""
        if not self.calendar:
            raise ValueError("this feature spec has no calendar columns")
        return slice(self.lag_slice.stop, self.lag_slice.stop + len(CALENDAR_TERMS))

    @property
    def hour_of_day_slice(self) -> slice:
        """The hour-of-day sin/cos columns (the first calendar terms)."""
        start = self.calendar_slice.start
        return slice(start, start + _HOUR_OF_DAY_TERMS)

    @property
    def covariate_start(self) -> int:
        """The first covariate column (== `n_features` when there is no covariate)."""
        return self.lag_slice.stop + (len(CALENDAR_TERMS) if self.calendar else 0)

    def covariate_slice(self, name: str, last_hours: int | None = None) -> slice:
        """The columns of covariate `name`, oldest first: all `covariate_hours`, or the newest `last_hours`."""
        if name not in self.covariates:
            raise ValueError(f"covariate {name!r} is not in this feature spec {self.covariates}")
        if last_hours is not None and not 0 < last_hours <= self.covariate_hours:
            raise ValueError(f"last_hours must be 1..{self.covariate_hours}, got {last_hours}")
        hours = self.covariate_hours if last_hours is None else last_hours
        end = self.covariate_start + (self.covariates.index(name) + 1) * self.covariate_hours
        return slice(end - hours, end)

    @property
    def n_features(self) -> int:
        return self.covariate_start + len(self.covariates) * self.covariate_hours

    def column_names(self) -> list[str]:
        """One name per column, in layout order: `tmp_lag71` .. `tmp_lag0`, calendar terms, `<covariate>_lag<h>`."""
        names = [f"tmp_lag{INPUT_HOURS - 1 - column}" for column in range(INPUT_HOURS)]
        if self.calendar:
            names += list(CALENDAR_TERMS)
        for name in self.covariates:
            names += [f"{name}_lag{self.covariate_hours - 1 - hour}" for hour in range(self.covariate_hours)]
        return names

    @property
    def needs_time(self) -> bool:
        return self.calendar

    def to_dict(self) -> dict[str, object]:
        return {"calendar": self.calendar, "covariates": list(self.covariates), "covariate_hours": self.covariate_hours}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        covariates = data.get("covariates") or []
        return cls(
            calendar=bool(data.get("calendar", False)),
            covariates=tuple(str(c) for c in covariates),
            covariate_hours=int(data.get("covariate_hours", HORIZON_HOURS)),
        )


def calendar_terms(epoch_hours: np.ndarray) -> np.ndarray:
    """sin/cos of hour-of-day and day-of-year (UTC) for hours since the Unix epoch, shape (n, 4)."""
    hours = np.asarray(epoch_hours, dtype="float64")
    day_angle = 2.0 * math.pi * (hours % _HOURS_PER_DAY) / _HOURS_PER_DAY
    year_angle = 2.0 * math.pi * ((hours / _HOURS_PER_DAY) % _DAYS_PER_YEAR) / _DAYS_PER_YEAR
    return np.column_stack([np.sin(day_angle), np.cos(day_angle), np.sin(year_angle), np.cos(year_angle)])


@functools.lru_cache(maxsize=512)
def _one_hour_calendar_terms(epoch_hours: float) -> np.ndarray:
    """`calendar_terms` of one hour, remembered: the service's requests mostly end at the same hour,
    and the four trigonometric terms were two thirds of building a one-row input (6 of 10 us)."""
    terms = calendar_terms(np.array([epoch_hours]))
    terms.flags.writeable = False
    return terms


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
    # Every block is written where the spec says it is: readers ask the same spec.
    matrix = np.empty((temps.shape[0], spec.n_features))
    matrix[:, spec.lag_slice] = temps
    if spec.calendar:
        if last_epoch_hours is None:
            raise ValueError("this model needs the time of the last observation")
        hours = np.asarray(last_epoch_hours, dtype="float64")
        one_hour = hours.shape == (1,)
        matrix[:, spec.calendar_slice] = (
            _one_hour_calendar_terms(float(hours[0])) if one_hour else calendar_terms(hours)
        )
    for name in spec.covariates:
        if covariates is None or name not in covariates:
            raise ValueError(f"this model needs the covariate {name!r}")
        values = np.asarray(covariates[name], dtype="float64")
        if values.shape != (temps.shape[0], spec.covariate_hours):
            raise ValueError(f"covariate {name!r} must have shape (n, {spec.covariate_hours}), got {values.shape}")
        matrix[:, spec.covariate_slice(name)] = values
    return matrix


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
