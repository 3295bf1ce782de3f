"""A user's station CSV as real tools export it: times to true UTC instants, column mapping, clear errors.

The property tests draw hourly histories around DST changes in several zones, write them in each
accepted shape, and compare what `read_observations_csv` returns with the instants the file was
made from (zoneinfo is the oracle; the reader goes through pandas).
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import tempfile
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlops_assets.atmos.assets import PERMANENT_ERRORS
from mlops_assets.atmos.csv_times import parse_times
from mlops_assets.atmos.source import (
    CsvColumnsError,
    CsvFormatError,
    CsvObservationSource,
    parse_column_mapping,
    read_observations_csv,
)
from mlops_assets.resources import build_observation_source
from mlops_assets.settings import load_pipeline_settings

UTC = dt.UTC
ZONES = ["America/Chicago", "Europe/London", "Australia/Sydney", "Asia/Seoul", "UTC"]
HOUR = dt.timedelta(hours=1)


@pytest.fixture(autouse=True)
def _no_mapping_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ATMOS_CSV_COLUMNS", raising=False)


# --- histories and how people write them ------------------------------------------------------


@functools.cache
def offset_changes(zone_name: str, year: int) -> tuple[dt.datetime, ...]:
    """UTC hours at which the zone's offset changes during `year` (DST on and off)."""
    zone = ZoneInfo(zone_name)
    changes = []
    day = dt.datetime(year, 1, 1, tzinfo=UTC)
    while day.year == year:
        if day.astimezone(zone).utcoffset() != (day + dt.timedelta(days=1)).astimezone(zone).utcoffset():
            hour = day
            while hour.astimezone(zone).utcoffset() == day.astimezone(zone).utcoffset():
                hour += HOUR
            changes.append(hour)
        day += dt.timedelta(days=1)
    return tuple(changes)


def is_repeated_wall_time(instant: dt.datetime, zone: ZoneInfo) -> bool:
    """True when the local wall-clock time of `instant` happens twice (the fall-back hour)."""
    wall = instant.astimezone(zone).replace(tzinfo=None)
    return wall.replace(tzinfo=zone, fold=0).utcoffset() != wall.replace(tzinfo=zone, fold=1).utcoffset()


def first_of_repeated(instant: dt.datetime, zone: ZoneInfo) -> dt.datetime:
    """The earlier instant with the same local wall-clock time (itself unless in the repeated hour)."""
    wall = instant.astimezone(zone).replace(tzinfo=None, fold=0)
    return wall.replace(tzinfo=zone).astimezone(UTC)


def render(
    instant: dt.datetime, zone: ZoneInfo, shape: str, separator: str, seconds: bool, compact_offset: bool
) -> str:
    """`instant` as an exporting tool would write it in `shape` (offset, Z or naive local)."""
    shown = instant.astimezone(UTC if shape == "z" else zone)
    text = shown.strftime(f"%Y-%m-%d{separator}%H:%M" + (":%S" if seconds else ""))
    if shape == "z":
        return text + "Z"
    if shape == "offset":
        minutes = int(shown.utcoffset().total_seconds() // 60)
        sign = "-" if minutes < 0 else "+"
        hours, rest = divmod(abs(minutes), 60)
        return text + (f"{sign}{hours:02d}{rest:02d}" if compact_offset else f"{sign}{hours:02d}:{rest:02d}")
    return text


@st.composite
def station_files(draw: st.DrawFn) -> dict:
    """An hourly history around an offset change (or anywhere), in one shape, with a few gaps."""
    zone_name = draw(st.sampled_from(ZONES))
    year = draw(st.integers(1985, 2035))  # Asia/Seoul had DST in 1987 and 1988
    anchors = list(offset_changes(zone_name, year)) or [dt.datetime(year, 6, 1, tzinfo=UTC)]
    anchor = draw(st.sampled_from(anchors))
    start = anchor + draw(st.integers(-30, 6)) * HOUR
    instants = [start + i * HOUR for i in range(draw(st.integers(1, 60)))]
    zone = ZoneInfo(zone_name)
    shape = draw(st.sampled_from(["offset", "z", "naive"]))
    # Naive files rely on the order of the repeated hour, so a gap may not remove one of its two.
    droppable = [i for i, t in enumerate(instants) if shape != "naive" or not is_repeated_wall_time(t, zone)]
    dropped = set(draw(st.lists(st.sampled_from(droppable), max_size=len(instants) - 1))) if droppable else set()
    instants = [t for i, t in enumerate(instants) if i not in dropped]
    if shape == "naive":  # a repeated hour seen once is read as the first (DST) one: add it when the history lacks it
        instants = sorted({*instants, *(first_of_repeated(t, zone) for t in instants)})
    else:  # instants with their offset are complete in any order
        instants = draw(st.permutations(instants))
    return {
        "zone": zone_name,
        "instants": instants,
        "shape": shape,
        "separator": draw(st.sampled_from(["T", " "])),
        "seconds": draw(st.booleans()),
        "compact_offset": draw(st.booleans()),
        "index_column": draw(st.booleans()),
    }


header_names = (
    st.text(
        alphabet=st.characters(whitelist_categories=("Lu", "Ll", "Nd"), whitelist_characters=" ()°_-/"),
        min_size=1,
        max_size=20,
    )
    .map(str.strip)
    .filter(bool)
)


@settings(max_examples=50, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=station_files(), names=st.tuples(header_names, header_names).filter(lambda pair: pair[0] != pair[1]))
def test_times_in_every_shape_become_the_true_utc_instants(history: dict, names: tuple[str, str]) -> None:
    zone = ZoneInfo(history["zone"])
    time_name, tmp_name = names
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "station.csv"
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(([""] if history["index_column"] else []) + [time_name, tmp_name])
            for number, instant in enumerate(history["instants"]):
                text = render(
                    instant, zone, history["shape"], history["separator"], history["seconds"], history["compact_offset"]
                )
                writer.writerow(([str(number)] if history["index_column"] else []) + [text, instant.timestamp() / 3600])
        frame = read_observations_csv(path, "home", history["zone"], {"time": time_name, "tmp": tmp_name})
    expected = sorted(history["instants"])
    assert list(frame["time"]) == [pd.Timestamp(t) for t in expected]
    # Each value stays with its own hour (the file's tmp is the instant in hours since the epoch).
    assert list(frame["tmp"]) == pytest.approx([t.timestamp() / 3600 for t in expected])


@settings(max_examples=25, deadline=None, database=None)
@given(zone_name=st.sampled_from(ZONES), year=st.integers(1985, 2035))
def test_a_full_naive_local_year_keeps_every_hour_once(zone_name: str, year: int) -> None:
    """Every real hour of a local year appears once: the repeated hour twice, the skipped one never."""
    zone = ZoneInfo(zone_name)
    start = dt.datetime(year, 1, 1, tzinfo=zone).astimezone(UTC)
    end = dt.datetime(year + 1, 1, 1, tzinfo=zone).astimezone(UTC)
    instants = pd.date_range(start, end, freq="h", inclusive="left")
    walls = instants.tz_convert(zone).strftime("%Y-%m-%d %H:%M")
    parsed = parse_times(list(walls), zone_name)
    assert parsed.tolist() == list(instants)


# --- the mapping --------------------------------------------------------------------------------


def test_the_mapping_reads_ours_equals_theirs() -> None:
    assert parse_column_mapping("time=Date, tmp = Temperature (°C),rh=Humidity,") == {
        "time": "Date",
        "tmp": "Temperature (°C)",
        "rh": "Humidity",
    }
    assert parse_column_mapping("") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("time:Date", "'time:Date' is not ours=theirs"),
        ("time=", "'time=' is not ours=theirs"),
        ("temperature=Temp", "'temperature' is not one of our columns (time, tmp, precip, wd, ws, p, mslp, rh, td)"),
        ("tmp=A,tmp=B", "'tmp' is mapped twice"),
        ("tmp=T,td=T", "column 'T' is mapped to both 'tmp' and 'td'"),
    ],
)
def test_a_bad_mapping_is_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(CsvColumnsError, match="ATMOS_CSV_COLUMNS") as caught:
        parse_column_mapping(text)
    assert message in str(caught.value)


def test_mapped_columns_and_the_pandas_index_column_are_read(tmp_path: Path) -> None:
    times = pd.date_range("2024-01-01 00:00", periods=3, freq="h")
    exported = pd.DataFrame(
        {
            "Date": times.strftime("%Y-%m-%d %H:%M"),
            "Temperature": [1.5, 2.0, 2.5],
            "Humidity": [80, 81, 82],
            "Notes": ["a", "b", "c"],
        }
    )
    path = tmp_path / "export.csv"
    exported.to_csv(path)  # writes the unnamed index column first
    assert path.read_text().splitlines()[0] == ",Date,Temperature,Humidity,Notes"
    frame = read_observations_csv(path, "home", "Asia/Seoul", "time=Date,tmp=Temperature,rh=Humidity")
    assert [str(t) for t in frame["time"]] == [
        "2023-12-31 15:00:00+00:00",
        "2023-12-31 16:00:00+00:00",
        "2023-12-31 17:00:00+00:00",
    ]
    assert frame["tmp"].tolist() == [1.5, 2.0, 2.5] and frame["rh"].tolist() == [80, 81, 82]
    assert frame["td"].isna().all()


def test_a_column_claimed_by_the_mapping_is_not_read_under_its_own_name(tmp_path: Path) -> None:
    path = tmp_path / "station.csv"
    path.write_text("time,td,dewpoint\n2024-01-01 00:00,3.0,-1.0\n")
    frame = read_observations_csv(path, "home", "UTC", "tmp=td,td=dewpoint")
    assert frame["tmp"].tolist() == [3.0] and frame["td"].tolist() == [-1.0]


@pytest.mark.parametrize(
    ("content", "columns", "message"),
    [
        (
            "Date,Temp\n2024-01-01 00:00,1\n",
            "time=Date,tmp=Temperature",
            "column 'Temperature' (mapped to 'tmp' by ATMOS_CSV_COLUMNS) is missing; the file's columns: ['Date', "
            "'Temp']",
        ),
        (
            ",Date,tmp\n0,2024-01-01 00:00,1\n",
            "",
            "required column 'time' is missing; the file's columns: ['Unnamed: 0', 'Date', 'tmp']",
        ),
        ("time;tmp\n2024-01-01 00:00;1\n", "", "only comma-separated files are read"),
        ("time,tmp,tmp\n2024-01-01 00:00,1,2\n", "", "column 'tmp' (our 'tmp') appears 2 times"),
    ],
    ids=["mapped-missing", "required-missing", "semicolons", "duplicate-header"],
)
def test_a_missing_column_lists_the_files_columns(tmp_path: Path, content: str, columns: str, message: str) -> None:
    path = tmp_path / "station.csv"
    path.write_text(content)
    with pytest.raises(CsvFormatError) as caught:
        read_observations_csv(path, "home", "UTC", columns)
    assert str(path) in str(caught.value) and message in str(caught.value)


# --- errors name the file, the line as an editor shows it, and the value --------------------------


@pytest.mark.parametrize(
    ("content", "timezone", "message"),
    [
        (
            "time,tmp\n\n2024-01-01 00:00,1\n\n04/07/2016 13:00,2\n",
            "UTC",
            "column 'time', line 5: '04/07/2016 13:00' is not an ISO-8601",
        ),
        (
            "time,tmp\n2016-03-13 01:00,1\n2016-03-13 02:00,2\n",
            "America/Chicago",
            "line 3: '2016-03-13 02:00' does not exist in America/Chicago",
        ),
        ("time,tmp\n2016-02-30T01:00Z,1\n", "UTC", "line 2: '2016-02-30T01:00Z' is not a real date and time"),
        (
            "time,tmp\n2016-01-01T01:00+25:00,1\n",
            "UTC",
            "line 2: '2016-01-01T01:00+25:00' has an impossible UTC offset",
        ),
        ("time,tmp\n2016-01-01 01:00,1\n,2\n", "UTC", "line 3: '' is empty"),
        (
            'time,tmp,note\n2016-01-01 01:00,1,"two\nlines"\n2016-01-01 02:00,warm,x\n',
            "UTC",
            "column 'tmp', line 4: 'warm' is not a number",
        ),
        ("time,tmp\n2016-01-01 01:00,1,extra\n", "UTC", "line 2 has 3 fields, the header has 2"),
        ("", "UTC", "the file is empty"),
        ("time,tmp\n", "UTC", "the file has a header but no rows"),
    ],
    ids=[
        "not-iso",
        "spring-forward",
        "no-such-day",
        "bad-offset",
        "empty-time",
        "multiline-field",
        "extra-field",
        "empty",
        "no-rows",
    ],
)
def test_an_unreadable_row_names_file_line_and_value(tmp_path: Path, content: str, timezone: str, message: str) -> None:
    path = tmp_path / "station.csv"
    path.write_text(content)
    with pytest.raises(CsvFormatError) as caught:
        read_observations_csv(path, "home", timezone)
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)
    assert isinstance(caught.value, PERMANENT_ERRORS), "another attempt cannot fix a file"


def test_a_mapped_time_column_is_named_in_its_error(tmp_path: Path) -> None:
    path = tmp_path / "station.csv"
    path.write_text("Date,tmp\n2016-01-01 01:00,1\nsoon,2\n")
    with pytest.raises(CsvFormatError, match=r"column 'Date' \(our 'time'\), line 3: 'soon'"):
        read_observations_csv(path, "home", "UTC", "time=Date")


def test_an_unknown_time_zone_is_a_clear_permanent_error(tmp_path: Path) -> None:
    path = tmp_path / "station.csv"
    path.write_text("time,tmp\n2016-01-01 01:00,1\n")
    with pytest.raises(ValueError, match="ATMOS_TIMEZONE='Mars/Olympus' is not an IANA time zone") as caught:
        read_observations_csv(path, "home", "Mars/Olympus")
    assert isinstance(caught.value, PERMANENT_ERRORS)


def test_excel_exports_with_a_bom_or_windows_1252_are_read(tmp_path: Path) -> None:
    utf8 = tmp_path / "utf8.csv"
    utf8.write_bytes("\ufefftime,Temperature (°C)\r\n2024-01-01 00:00,1.5\r\n".encode())
    cp1252 = tmp_path / "cp1252.csv"
    cp1252.write_bytes("time,Temperature (°C)\r\n2024-01-01 00:00,1.5\r\n".encode("cp1252"))
    for path in (utf8, cp1252):
        frame = read_observations_csv(path, "home", "UTC", "tmp=Temperature (°C)")
        assert frame["tmp"].tolist() == [1.5] and str(frame["time"].iloc[0]) == "2024-01-01 00:00:00+00:00"


def test_spaces_after_commas_are_not_part_of_names_or_values(tmp_path: Path) -> None:
    path = tmp_path / "station.csv"
    path.write_text("time, tmp, rh\n2024-01-01T00:00:00+09:00, 1.5, 80\n")
    frame = read_observations_csv(path, "home", "UTC")
    assert str(frame["time"].iloc[0]) == "2023-12-31 15:00:00+00:00" and frame["rh"].tolist() == [80.0]


# --- through the resource and Dagster -------------------------------------------------------------


def test_the_csv_source_takes_its_mapping_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "station.csv"
    path.write_text("Date,Temperature\n2016-11-06 01:00,1\n2016-11-06 01:00,2\n")
    monkeypatch.setenv("ATMOS_SOURCE", "csv")
    monkeypatch.setenv("ATMOS_CSV_PATH", str(path))
    monkeypatch.setenv("ATMOS_TIMEZONE", "America/Chicago")
    monkeypatch.setenv("ATMOS_CSV_COLUMNS", "time=Date,tmp=Temperature")
    source = build_observation_source(load_pipeline_settings())
    assert isinstance(source, CsvObservationSource)
    with dg.build_resources({"source": source}) as resources:
        frame = resources.source.fetch(dt.date(2016, 11, 6), dt.date(2016, 11, 6))
    assert [str(t) for t in frame["time"]] == ["2016-11-06 06:00:00+00:00", "2016-11-06 07:00:00+00:00"]
    assert frame["tmp"].tolist() == [1.0, 2.0]


def test_a_bad_mapping_fails_the_step_once_without_retries(tmp_path: Path) -> None:
    from mlops_assets.atmos.assets import raw_atmos_observations
    from mlops_assets.resources.warehouse import WarehouseResource

    path = tmp_path / "station.csv"
    path.write_text("time,tmp\n2024-01-01 00:00,1\n")
    warehouse = WarehouseResource(url=f"sqlite:///{tmp_path / 'w.db'}")
    source = CsvObservationSource(path=str(path), columns="temperature=tmp")
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [raw_atmos_observations],
            resources={"source": source, "warehouse": warehouse},
            instance=instance,
            partition_key="2024-01-01",
            raise_on_error=False,
        )
    assert not result.success
    failure = next(event for event in result.all_events if event.is_step_failure).step_failure_data.error.message
    assert "CsvColumnsError" in failure and "'temperature' is not one of our columns" in failure
    assert not [event for event in result.all_events if event.event_type_value == "STEP_UP_FOR_RETRY"]
    assert warehouse.read_observations("csv").empty
