"""The observations warehouse: SQLite by default, PostgreSQL in production.

SQLAlchemy Core with bound parameters only (the old system formatted SQL strings). Each write
is one transaction, so a failure mid-write leaves the previous rows intact.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import dagster as dg
import numpy as np
import pandas as pd
import sqlalchemy as sa
from pydantic import Field, PrivateAttr

from mlops_assets.atmos.observations import COLUMNS, QC_COLUMNS, VARIABLES, conform
from mlops_assets.warehouse_url import DEFAULT_WAREHOUSE_URL, normalize_url

metadata = sa.MetaData()


def _observation_columns() -> list[sa.Column]:
    return [
        sa.Column("station", sa.String(32), primary_key=True),
        sa.Column("time", sa.DateTime(timezone=True), primary_key=True),
        *[sa.Column(name, sa.Float, nullable=True) for name in VARIABLES],
        *[sa.Column(name, sa.SmallInteger, nullable=True) for name in QC_COLUMNS],
    ]


#: Raw hourly observations as the sources delivered them (one row per station and hour).
atmos_observations = sa.Table("atmos_observations", metadata, *_observation_columns())

#: The cleaned hourly grid; `interpolated` marks hours filled across a short gap.
atmos_features = sa.Table(
    "atmos_features",
    metadata,
    sa.Column("station", sa.String(32), primary_key=True),
    sa.Column("time", sa.DateTime(timezone=True), primary_key=True),
    *[sa.Column(name, sa.Float, nullable=True) for name in VARIABLES],
    sa.Column("interpolated", sa.Boolean, nullable=False),
)

#: Insurance policy records; (source, line) keeps a re-load of the same file idempotent.
insurance_policies = sa.Table(
    "insurance_policies",
    metadata,
    sa.Column("source", sa.String(255), primary_key=True),
    sa.Column("line", sa.Integer, primary_key=True),
    sa.Column("age", sa.Integer, nullable=False),
    sa.Column("sex", sa.String(16), nullable=False),
    sa.Column("bmi", sa.Float, nullable=False),
    sa.Column("children", sa.Integer, nullable=False),
    sa.Column("smoker", sa.String(8), nullable=False),
    sa.Column("region", sa.String(16), nullable=False),
    sa.Column("charges", sa.Float, nullable=False),
)


class WarehouseResource(dg.ConfigurableResource):
    """Reads and writes the observation and feature tables."""

    url: str = Field(default=DEFAULT_WAREHOUSE_URL, description="SQLAlchemy URL of the warehouse")
    _engine: sa.Engine | None = PrivateAttr(default=None)

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            url = sa.make_url(normalize_url(self.url))
            if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
                Path(url.database).parent.mkdir(parents=True, exist_ok=True)
            self._engine = sa.create_engine(url, pool_pre_ping=True)
            metadata.create_all(self._engine)
        return self._engine

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    @contextmanager
    def _transaction(self) -> Iterator[sa.Connection]:
        with self.engine.begin() as connection:
            yield connection

    def _replace_rows(self, table: sa.Table, selected: sa.ColumnElement[bool], rows: list[dict[str, object]]) -> int:
        """Delete the rows of `table` that `selected` matches and insert `rows`, in one transaction."""
        with self._transaction() as connection:
            connection.execute(sa.delete(table).where(selected))
            if rows:
                connection.execute(sa.insert(table), rows)
        return len(rows)

    def replace_observations(self, station: str, start: pd.Timestamp, end: pd.Timestamp, frame: pd.DataFrame) -> int:
        """Atomically replace the station's rows in [start, end) with `frame`; return rows written."""
        rows = _records(conform(frame))
        outside = [r for r in rows if not (start <= r["time"] < end) or r["station"] != station]
        if outside:
            raise ValueError(f"{len(outside)} rows fall outside {station} [{start}, {end}), e.g. {outside[0]['time']}")
        table = atmos_observations
        selected = sa.and_(
            table.c.station == station, table.c.time >= start.to_pydatetime(), table.c.time < end.to_pydatetime()
        )
        return self._replace_rows(table, selected, rows)

    def read_observations(self, station: str) -> pd.DataFrame:
        """Every stored observation of the station, canonical frame, ordered by time."""
        table = atmos_observations
        query = sa.select(table).where(table.c.station == station).order_by(table.c.time)
        with self.engine.connect() as connection:
            frame = pd.DataFrame(connection.execute(query).mappings().all(), columns=COLUMNS)
        frame["time"] = _as_utc(frame["time"])
        return conform(frame)

    def replace_features(self, station: str, frame: pd.DataFrame) -> int:
        """Atomically replace the station's cleaned series."""
        rows = _records(frame[["station", "time", *VARIABLES, "interpolated"]])
        return self._replace_rows(atmos_features, atmos_features.c.station == station, rows)

    def read_features(self, station: str) -> pd.DataFrame:
        """The cleaned hourly series of the station, ordered by time."""
        table = atmos_features
        query = sa.select(table).where(table.c.station == station).order_by(table.c.time)
        with self.engine.connect() as connection:
            frame = pd.DataFrame(
                connection.execute(query).mappings().all(), columns=[str(c.name) for c in table.columns]
            )
        frame["time"] = _as_utc(frame["time"])
        for name in VARIABLES:
            frame[name] = pd.to_numeric(frame[name]).astype("float64")
        frame["interpolated"] = frame["interpolated"].astype(bool)
        return frame

    def replace_policies(self, source: str, frame: pd.DataFrame) -> int:
        """Atomically replace every row loaded earlier from `source` (a file path) with `frame`."""
        columns = [str(c.name) for c in insurance_policies.columns if c.name != "source"]
        rows = [{"source": source, **row} for row in _records(frame[columns])]
        return self._replace_rows(insurance_policies, insurance_policies.c.source == source, rows)

    def read_policies(self) -> pd.DataFrame:
        """All stored policies, in a stable order (source, line)."""
        table = insurance_policies
        query = sa.select(table).order_by(table.c.source, table.c.line)
        with self.engine.connect() as connection:
            return pd.DataFrame(
                connection.execute(query).mappings().all(), columns=[str(c.name) for c in table.columns]
            )


def _as_utc(values: pd.Series) -> pd.Series:
    """SQLite returns naive datetimes (stored as UTC); PostgreSQL returns aware ones."""
    times = pd.to_datetime(values)
    if times.dt.tz is None:
        return times.dt.tz_localize("UTC")
    return times.dt.tz_convert("UTC")


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as plain Python values (None for missing, datetime, int, float) every DB driver accepts."""
    # Every caller selects string-named columns; pandas types record keys as Hashable.
    rows = cast(list[dict[str, Any]], frame.astype(object).mask(frame.isna(), None).to_dict(orient="records"))
    for row in rows:
        for key, value in row.items():
            if isinstance(value, pd.Timestamp):
                row[key] = value.to_pydatetime()
            elif isinstance(value, np.generic):
                row[key] = value.item()
    return rows
