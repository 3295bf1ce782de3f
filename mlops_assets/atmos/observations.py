"""The canonical hourly-observation table every source produces, in KMA ASOS units.

One row per station and hour; times are timezone-aware UTC. Variables follow the old system's
names (`tmp`, `precip`, ...); QC flags are KMA's (`0`/missing normal, `1` error, `9` missing).
"""

from __future__ import annotations

import pandas as pd

#: Measured variables and their units (KMA ASOS units).
VARIABLES: dict[str, str] = {
    "tmp": "air temperature, C",
    "precip": "precipitation, mm/h",
    "wd": "wind direction, degrees",
    "ws": "wind speed, m/s",
    "p": "station pressure, hPa",
    "mslp": "sea-level pressure, hPa",
    "rh": "relative humidity, %",
    "td": "dew point, C",
}
#: One QC-flag column per variable, named `<variable>_qc` (nullable small integers).
QC_COLUMNS: list[str] = [f"{name}_qc" for name in VARIABLES]
COLUMNS: list[str] = ["station", "time", *VARIABLES, *QC_COLUMNS]


def empty_observations() -> pd.DataFrame:
    """An empty frame with the canonical columns and dtypes."""
    return conform(pd.DataFrame(columns=COLUMNS))


def conform(frame: pd.DataFrame) -> pd.DataFrame:
    """Return `frame` with exactly the canonical columns, dtypes and order (missing ones as NA).

    Raises ValueError when `time` is not timezone-aware: a naive timestamp is ambiguous between
    a station's local time and UTC, and guessing would shift every row.
    """
    out = frame.copy()
    for column in COLUMNS:
        if column not in out.columns:
            out[column] = pd.NA
    out = out[COLUMNS]
    out["station"] = out["station"].astype("string")
    time = pd.to_datetime(out["time"])
    if time.dt.tz is None:
        if len(time):
            raise ValueError("observation times must be timezone-aware")
        time = time.dt.tz_localize("UTC")
    out["time"] = time.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")
    for name in VARIABLES:
        out[name] = pd.to_numeric(out[name], errors="raise").astype("float64")
    for name in QC_COLUMNS:
        out[name] = pd.to_numeric(out[name], errors="raise").astype("Int16")
    return out.sort_values(["station", "time"]).reset_index(drop=True)


class SourceConfigError(ValueError):
    """The source is configured wrongly (a station or zone that does not exist): no retry can help."""
