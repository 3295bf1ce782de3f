"""Bring your own station through the real `mlops-assets` CLI: one test per shape people export.

Each test runs `mlops-assets materialize ... --select raw_atmos_observations` in a subprocess with
its own SQLite warehouse, MLflow store and Dagster home (an empty dagster.yaml), then reads the
rows back from the warehouse and compares them with the true UTC instants.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from mlops_assets.resources.warehouse import WarehouseResource
from mlops_assets_tests.conftest import PIPELINE_VARIABLES

CLI = Path(sys.executable).parent / "mlops-assets"
HOUR = dt.timedelta(hours=1)
#: Variables the conftest clears in-process; a subprocess gets a clean copy of the environment too.
_CLEARED = PIPELINE_VARIABLES


def run_cli(tmp_path: Path, csv_path: Path, start: str, end: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`mlops-assets materialize` on the CSV source with an isolated warehouse, MLflow and Dagster home."""
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text("")
    environment = {name: value for name, value in os.environ.items() if name not in _CLEARED}
    environment.update(
        ATMOS_SOURCE="csv",
        ATMOS_CSV_PATH=str(csv_path),
        WAREHOUSE_URL=f"sqlite:///{tmp_path / 'warehouse.db'}",
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
        DAGSTER_HOME=str(home),
        OMP_NUM_THREADS="1",
        **env,
    )
    command = [str(CLI), "materialize", "--start", start, "--end", end, "--select", "raw_atmos_observations"]
    return subprocess.run(command, env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=300)


def stored(tmp_path: Path, station: str = "csv") -> pd.DataFrame:
    return WarehouseResource(url=f"sqlite:///{tmp_path / 'warehouse.db'}").read_observations(station)


def hourly(zone: ZoneInfo, first_day: dt.date, last_day: dt.date) -> list[dt.datetime]:
    """Every real hour (UTC) of the local days first_day..last_day in `zone`."""
    start = dt.datetime.combine(first_day, dt.time(), zone).astimezone(dt.UTC)
    end = dt.datetime.combine(last_day + dt.timedelta(days=1), dt.time(), zone).astimezone(dt.UTC)
    return [start + i * HOUR for i in range(int((end - start) / HOUR))]


CHICAGO = ZoneInfo("America/Chicago")
#: The two DST weekends of 2016 in Chicago: 23 and 25 local hours on the 13th and the 6th.
DST_WEEKENDS = [
    *hourly(CHICAGO, dt.date(2016, 3, 12), dt.date(2016, 3, 14)),
    *hourly(CHICAGO, dt.date(2016, 11, 5), dt.date(2016, 11, 7)),
]


def test_iso_times_with_offsets_that_change_at_dst(tmp_path: Path) -> None:
    """The shape that used to fail (after 3 attempts) with 'Can only use .dt accessor with datetimelike values'."""
    csv_path = tmp_path / "chicago.csv"
    lines = [f"{t.astimezone(CHICAGO).isoformat()},{i / 10}" for i, t in enumerate(DST_WEEKENDS)]
    assert "2016-11-06T01:00:00-05:00" in lines[71 + 25] and "2016-11-06T01:00:00-06:00" in lines[71 + 26]
    csv_path.write_text("time,tmp\n" + "\n".join(lines) + "\n")
    result = run_cli(tmp_path, csv_path, "2016-11-05", "2016-11-07", ATMOS_TIMEZONE="America/Chicago")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "materialized raw_atmos_observations (3 partitions, 73 rows" in result.stdout
    rows = stored(tmp_path)
    november = DST_WEEKENDS[71:]
    assert list(rows["time"]) == [pd.Timestamp(t) for t in november]
    assert rows["tmp"].tolist() == pytest.approx([i / 10 for i in range(71, len(DST_WEEKENDS))])


def test_naive_local_times_keep_the_repeated_fall_back_hour(tmp_path: Path) -> None:
    csv_path = tmp_path / "chicago_naive.csv"
    walls = [t.astimezone(CHICAGO).strftime("%Y-%m-%d %H:%M") for t in DST_WEEKENDS]
    assert walls.count("2016-11-06 01:00") == 2 and "2016-03-13 02:00" not in walls
    csv_path.write_text("time,tmp\n" + "\n".join(f"{wall},{i}" for i, wall in enumerate(walls)) + "\n")
    result = run_cli(tmp_path, csv_path, "2016-11-05", "2016-11-07", ATMOS_TIMEZONE="America/Chicago")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = stored(tmp_path)
    november = DST_WEEKENDS[71:]
    assert len(rows) == 24 + 25 + 24
    assert list(rows["time"]) == [pd.Timestamp(t) for t in november]
    repeated = rows[rows["time"].isin([pd.Timestamp("2016-11-06 06:00Z"), pd.Timestamp("2016-11-06 07:00Z")])]
    first = walls.index("2016-11-06 01:00")
    assert repeated["tmp"].tolist() == [first, first + 1], "first in the file is CDT (06:00Z), second CST (07:00Z)"


def test_mapped_columns_and_an_unnamed_index_column(tmp_path: Path) -> None:
    london = ZoneInfo("Europe/London")
    instants = hourly(london, dt.date(2019, 3, 30), dt.date(2019, 3, 31))  # clocks go forward on the 31st
    exported = pd.DataFrame(
        {
            "Date": [t.strftime("%Y-%m-%d %H:%MZ") for t in instants],
            "Temperature": [5.0 + i / 4 for i in range(len(instants))],
            "Humidity": [70 + i % 5 for i in range(len(instants))],
            "Comment": "ok",
        }
    )
    csv_path = tmp_path / "export.csv"
    exported.to_csv(csv_path)  # pandas writes the unnamed index column first
    result = run_cli(
        tmp_path,
        csv_path,
        "2019-03-30",
        "2019-03-31",
        ATMOS_TIMEZONE="Europe/London",
        ATMOS_CSV_COLUMNS="time=Date,tmp=Temperature,rh=Humidity",
        ATMOS_STATION="garden",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = stored(tmp_path, "garden")
    assert len(rows) == 24 + 23
    assert list(rows["time"]) == [pd.Timestamp(t) for t in instants]
    assert (
        rows["tmp"].tolist() == exported["Temperature"].tolist()
        and rows["rh"].tolist() == exported["Humidity"].tolist()
    )


def test_a_bad_time_fails_once_names_file_line_and_value_and_writes_nothing(tmp_path: Path) -> None:
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text(
        "time,tmp\n"
        "2016-07-04T12:00:00-05:00,30.1\n"
        "2016-07-04T13:00:00-05:00,30.5\n"
        "\n"
        "2016-07-04 25:00,31.0\n"
        "2016-07-04T15:00:00-05:00,31.2\n"
    )
    result = run_cli(tmp_path, csv_path, "2016-07-04", "2016-07-04", ATMOS_TIMEZONE="America/Chicago")
    assert result.returncode != 0
    assert f"{csv_path}: column 'time', line 5: '2016-07-04 25:00' is not a real date and time" in result.stderr
    assert result.stderr.count('Started execution of step "raw_atmos_observations"') == 1
    assert "STEP_UP_FOR_RETRY" not in result.stderr and "STEP_RESTARTED" not in result.stderr
    assert "AttributeError" not in result.stderr
    assert stored(tmp_path).empty


def test_a_bad_column_mapping_fails_with_the_reason(tmp_path: Path) -> None:
    csv_path = tmp_path / "station.csv"
    csv_path.write_text("Date,Temperature\n2016-07-04 12:00,30.1\n")
    result = run_cli(
        tmp_path, csv_path, "2016-07-04", "2016-07-04", ATMOS_CSV_COLUMNS="time=Date,temperature=Temperature"
    )
    assert result.returncode != 0
    assert "ATMOS_CSV_COLUMNS: 'temperature' is not one of our columns" in result.stderr
    assert "STEP_UP_FOR_RETRY" not in result.stderr
    assert stored(tmp_path).empty
