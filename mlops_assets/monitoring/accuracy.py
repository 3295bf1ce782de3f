"""Realized accuracy of served forecasts (pure pandas/NumPy): join with observations, score per version and day.

A forecast is scored only when all 24 of its hours have an observed temperature, so a day's `mae`
is exactly the mean of its `mae_h01..mae_h24` and compares with the version's test MAE (the mean
over the 24 lead hours of complete windows). The others are counted, not scored:
- pending: some forecast hour is after the last stored observation (it may still be observed);
- incomplete: every hour is within the stored range but some has no usable value (a gap, a
  QC-flagged error, or `last_observed_at` off the hour).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mlops_assets.monitoring.served_log import HORIZON_HOURS, LEAD_COLUMNS

#: KMA QC flag for an erroneous value (as in the feature cleaning).
QC_ERROR = 1
ACCURACY_COLUMNS = ["model_version", "day", "forecasts", "mae", *LEAD_COLUMNS]


@dataclass(frozen=True)
class AccuracyResult:
    """Scored rows (one per version and day) and what could not be scored yet."""

    rows: pd.DataFrame  # ACCURACY_COLUMNS, `day` as datetime.date
    scored: int
    pending: int
    incomplete: int
    last_observed_hour: pd.Timestamp | None
    #: version -> forecasts still waiting for their hours to be observed.
    pending_by_version: dict[str, int] = field(default_factory=dict)


def observed_temperatures(observations: pd.DataFrame) -> pd.Series:
    """UTC hour -> usable temperature (`tmp` present and not QC-flagged as an error)."""
    frame = observations
    usable = frame["tmp"].notna()
    if "tmp_qc" in frame.columns:
        usable &= ~(frame["tmp_qc"] == QC_ERROR).fillna(False).to_numpy(dtype=bool)
    times = pd.to_datetime(frame["time"], utc=True)
    series = pd.Series(frame["tmp"].to_numpy(dtype="float64"), index=times)[usable.to_numpy(dtype=bool)]
    return series[~series.index.duplicated(keep="first")].sort_index()


def forecast_matrix(values: pd.Series) -> np.ndarray:
    """JSON texts (or lists) of 24 numbers -> an (n, 24) float array; anything else is an error."""
    rows = [json.loads(v) if isinstance(v, str) else list(v) for v in values]
    bad = [i for i, r in enumerate(rows) if len(r) != HORIZON_HOURS]
    if bad:
        raise ValueError(f"{len(bad)} stored forecasts do not have {HORIZON_HOURS} values (first at row {bad[0]})")
    return np.asarray(rows, dtype="float64").reshape(len(rows), HORIZON_HOURS)


def score_forecasts(forecasts: pd.DataFrame, observed: pd.Series) -> AccuracyResult:
    """Realized MAE per (model_version, UTC day of last_observed_at), overall and per lead hour.

    `forecasts`: columns model_version, last_observed_at (aware), forecast (24 values or JSON).
    `observed`: UTC hour -> temperature (see `observed_temperatures`).
    """
    if forecasts.empty:
        return AccuracyResult(pd.DataFrame(columns=ACCURACY_COLUMNS), 0, 0, 0, _last(observed))
    last = _last(observed)
    issued = pd.to_datetime(forecasts["last_observed_at"], utc=True)
    predicted = forecast_matrix(forecasts["forecast"])
    naive = issued.dt.tz_convert(None).to_numpy(dtype="datetime64[ns]")
    hours = naive[:, None] + np.arange(1, HORIZON_HOURS + 1) * np.timedelta64(1, "h")
    index = pd.DatetimeIndex(hours.ravel()).tz_localize("UTC")
    actual = observed.reindex(index).to_numpy(dtype="float64").reshape(predicted.shape)
    final_hour = issued + pd.Timedelta(hours=HORIZON_HOURS)
    pending = np.ones(len(forecasts), dtype=bool) if last is None else (final_hour > last).to_numpy()
    complete = ~np.isnan(actual).any(axis=1)
    scored = ~pending & complete
    incomplete = ~pending & ~complete

    errors = np.abs(predicted[scored] - actual[scored])
    keys = pd.DataFrame(
        {
            "model_version": forecasts["model_version"].astype(str).to_numpy()[scored],
            "day": issued[scored].dt.date.to_numpy(),
        }
    )
    per_lead = pd.DataFrame(errors, columns=list(LEAD_COLUMNS))
    grouped = pd.concat([keys, per_lead], axis=1).groupby(["model_version", "day"], sort=True)
    rows = grouped[list(LEAD_COLUMNS)].mean()
    rows.insert(0, "mae", rows[list(LEAD_COLUMNS)].mean(axis=1))
    rows.insert(0, "forecasts", grouped.size())
    rows = rows.reset_index()[ACCURACY_COLUMNS]
    pending_versions = forecasts["model_version"].astype(str)[pending].value_counts()
    return AccuracyResult(
        rows=rows,
        scored=int(scored.sum()),
        pending=int(pending.sum()),
        incomplete=int(incomplete.sum()),
        last_observed_hour=last,
        pending_by_version={str(k): int(v) for k, v in pending_versions.items()},
    )


def _last(observed: pd.Series) -> pd.Timestamp | None:
    return None if observed.empty else pd.Timestamp(observed.index.max())
