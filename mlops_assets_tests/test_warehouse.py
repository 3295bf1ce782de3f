"""The warehouse on SQLite and on the real PostgreSQL: atomic, idempotent partition replacement."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
import sqlalchemy as sa

from mlops_assets.atmos.source import load_sample_observations, local_day_bounds
from mlops_assets.resources.warehouse import WarehouseResource

TZ = "America/New_York"


def _days(first: str, last: str) -> tuple[pd.DataFrame, pd.Timestamp, pd.Timestamp]:
    start, end = local_day_bounds(dt.date.fromisoformat(first), dt.date.fromisoformat(last), TZ)
    sample = load_sample_observations("JFK")
    return sample[(sample["time"] >= start) & (sample["time"] < end)].reset_index(drop=True), start, end


def test_replacing_a_partition_n_times_leaves_one_row_per_hour(warehouse_url: str) -> None:
    warehouse = WarehouseResource(url=warehouse_url)
    frame, start, end = _days("2013-03-01", "2013-03-03")
    for _ in range(3):
        assert warehouse.replace_observations("JFK", start, end, frame) == len(frame)
    stored = warehouse.read_observations("JFK")
    assert len(stored) == len(frame) == 72
    pd.testing.assert_frame_equal(stored, frame, check_dtype=False)


def test_replacement_only_touches_its_own_days(warehouse_url: str) -> None:
    warehouse = WarehouseResource(url=warehouse_url)
    march, start, end = _days("2013-03-01", "2013-03-03")
    warehouse.replace_observations("JFK", start, end, march)
    second_day, day_start, day_end = _days("2013-03-02", "2013-03-02")
    warehouse.replace_observations("JFK", day_start, day_end, second_day.assign(tmp=0.0))
    stored = warehouse.read_observations("JFK")
    assert len(stored) == 72
    inside = (stored["time"] >= day_start) & (stored["time"] < day_end)
    assert (stored.loc[inside, "tmp"] == 0.0).all()
    assert (stored.loc[~inside, "tmp"] != 0.0).any()


def test_a_failure_mid_write_leaves_the_previous_rows_intact(warehouse_url: str) -> None:
    warehouse = WarehouseResource(url=warehouse_url)
    frame, start, end = _days("2013-03-01", "2013-03-01")
    warehouse.replace_observations("JFK", start, end, frame)
    # The delete succeeds, then the insert hits the primary key on a duplicated hour: roll back.
    broken = pd.concat([frame.assign(tmp=-1.0), frame.iloc[[3]]])
    with pytest.raises(sa.exc.IntegrityError):
        warehouse.replace_observations("JFK", start, end, broken)
    stored = warehouse.read_observations("JFK")
    pd.testing.assert_frame_equal(stored, frame, check_dtype=False)


def test_rows_outside_the_partition_are_refused(warehouse_url: str) -> None:
    warehouse = WarehouseResource(url=warehouse_url)
    frame, start, _ = _days("2013-03-01", "2013-03-02")
    with pytest.raises(ValueError, match="outside"):
        warehouse.replace_observations("JFK", start, start + pd.Timedelta(days=1), frame)
    assert warehouse.read_observations("JFK").empty
