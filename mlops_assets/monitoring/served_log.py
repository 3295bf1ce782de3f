"""The `served_forecasts` and `forecast_accuracy` tables, shared by the service and the pipeline.

Imports only SQLAlchemy and the standard library: the prediction service writes through this module
and must not pay for Dagster or pandas in every worker. The URL handling is the warehouse
resource's (`mlops_assets.warehouse_url`: same `WAREHOUSE_URL`, same default file).
"""

from __future__ import annotations

import datetime as dt
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import sqlalchemy as sa

from mlops_assets.warehouse_url import DEFAULT_WAREHOUSE_URL, normalize_url

INPUT_HOURS = 72
HORIZON_HOURS = 24
#: Lead hours are 1-based, as in the training metrics (`val_mae_h01` .. `val_mae_h24`).
LEAD_COLUMNS = tuple(f"mae_h{h:02d}" for h in range(1, HORIZON_HOURS + 1))

#: Kept apart from the warehouse's own metadata: creating these tables is this module's job.
monitoring_metadata = sa.MetaData()

#: One row per answered forecast request.
served_forecasts = sa.Table(
    "served_forecasts",
    monitoring_metadata,
    sa.Column("request_id", sa.String(64), primary_key=True),
    sa.Column("model_name", sa.String(128), nullable=False),
    sa.Column("model_version", sa.String(32), nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    # The window's last observed hour as the service resolved it (UTC); the forecast is for +1..+24 h.
    sa.Column("last_observed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("forecast", sa.Text, nullable=False),  # JSON list of 24 numbers
    sa.Column("inputs", sa.Text, nullable=False),  # JSON list of the 72 input temperatures, oldest first
    sa.Column("covariates", sa.Text, nullable=True),  # JSON {name: [24 numbers]} when the request sent them
    sa.Index("ix_served_forecasts_model_observed", "model_name", "last_observed_at"),
    sa.Index("ix_served_forecasts_received", "received_at"),
)

#: Realized accuracy per model version and UTC day of `last_observed_at` (replaced per day).
forecast_accuracy = sa.Table(
    "forecast_accuracy",
    monitoring_metadata,
    sa.Column("model_name", sa.String(128), primary_key=True),
    sa.Column("model_version", sa.String(32), primary_key=True),
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("forecasts", sa.Integer, nullable=False),
    sa.Column("mae", sa.Float, nullable=False),
    *[sa.Column(name, sa.Float, nullable=False) for name in LEAD_COLUMNS],
    sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False),
)


def create_warehouse_engine(url: str = DEFAULT_WAREHOUSE_URL, connect_timeout: float = 5.0) -> sa.Engine:
    """An engine on the warehouse; connecting is bounded so a dead server fails in seconds, not minutes.

    Nothing connects here (SQLAlchemy connects lazily); call `ensure_tables` before writing.
    """
    parsed = sa.make_url(normalize_url(url))
    backend = parsed.get_backend_name()
    connect_args: dict[str, Any] = {}
    if backend == "sqlite":
        if parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        connect_args["timeout"] = connect_timeout  # busy timeout while another writer holds the lock
    elif backend == "postgresql":
        connect_args["connect_timeout"] = max(1, math.ceil(connect_timeout))
    engine = sa.create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
    if backend == "sqlite" and parsed.database not in (None, "", ":memory:"):
        sa.event.listen(engine, "connect", _sqlite_write_ahead_log)
    return engine


def _sqlite_write_ahead_log(dbapi_connection: Any, _record: Any) -> None:
    """WAL: the service's workers and the pipeline share one file; with it a commit appends to the
    log instead of rewriting pages under an exclusive lock with several fsyncs (bench/README.md)."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def ensure_tables(engine: sa.Engine) -> None:
    """Create the monitoring tables when missing (idempotent; existing rows are kept)."""
    monitoring_metadata.create_all(engine, checkfirst=True)


def as_utc(moment: dt.datetime) -> dt.datetime:
    """An aware UTC datetime; naive values are refused (UTC or local time would be a guess)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{moment!r} has no time zone: pass an aware datetime (UTC)")
    return moment.astimezone(dt.UTC)


@dataclass(frozen=True, slots=True)
class ServedForecast:
    """One answered forecast request, as stored in `served_forecasts`."""

    request_id: str
    model_name: str
    model_version: str
    received_at: dt.datetime
    last_observed_at: dt.datetime
    forecast: Sequence[float]
    inputs: Sequence[float]
    covariates: Mapping[str, Sequence[float]] | None = None

    def __post_init__(self) -> None:
        if not self.request_id or len(self.request_id) > 64:
            raise ValueError(f"request_id must be 1..64 characters, got {self.request_id!r}")
        if len(self.forecast) != HORIZON_HOURS:
            raise ValueError(f"forecast must have {HORIZON_HOURS} values, got {len(self.forecast)}")
        if len(self.inputs) != INPUT_HOURS:
            raise ValueError(f"inputs must have {INPUT_HOURS} values, got {len(self.inputs)}")
        as_utc(self.received_at)
        as_utc(self.last_observed_at)

    def row(self) -> dict[str, Any]:
        """The insert parameters: UTC datetimes, JSON text for the arrays."""
        return {
            "request_id": self.request_id,
            "model_name": self.model_name,
            "model_version": str(self.model_version),
            "received_at": as_utc(self.received_at),
            "last_observed_at": as_utc(self.last_observed_at),
            "forecast": json_text(self.forecast),
            "inputs": json_text(self.inputs),
            "covariates": None if self.covariates is None else json_text(self.covariates),
        }


def _plain_number(value: Any) -> Any:
    """NumPy scalars and arrays (which msgspec does not encode) as Python floats and lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, float):  # float subclasses, e.g. numpy.float64
        return float(value)
    raise TypeError(f"cannot store {type(value).__name__} in served_forecasts")


# msgspec encodes a list of 96 floats in ~4 us, json.dumps in ~70 us: the writer's main cost (bench/README.md).
_encode_json = msgspec.json.Encoder(enc_hook=_plain_number).encode


def json_text(values: Any) -> str:
    """Numbers (lists, dicts of lists, NumPy arrays) as compact JSON text; NaN is refused, not stored as null."""
    text = _encode_json(values).decode()
    if "null" in text:
        raise ValueError("served values must be finite numbers (NaN or infinity found)")
    return text


_COLUMNS = (
    "request_id",
    "model_name",
    "model_version",
    "received_at",
    "last_observed_at",
    "forecast",
    "inputs",
    "covariates",
)
#: PostgreSQL COPY text format: backslash, tab, newline and carriage return are escaped, NULL is \N.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_field(value: Any) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, dt.datetime):
        return value.isoformat()  # aware UTC: timestamptz reads the offset
    text = str(value)
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:  # rare: skip translate's ~1.5 us
        return text.translate(_COPY_ESCAPES)
    return text


def _sqlite_field(value: Any) -> Any:
    """SQLAlchemy's SQLite DATETIME text (UTC wall clock, microseconds), so the pipeline reads it back alike."""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
    return value


class ServedWriter:
    """Inserts `served_forecasts` rows with one driver call per batch: COPY FROM STDIN on PostgreSQL
    (psycopg2), one INSERT ... SELECT over a JSON array on SQLite, SQLAlchemy's executemany elsewhere.

    `encode` turns a record into what that call takes, wherever the caller likes (the service does it
    on its event loop); `write` then runs no per-row Python and takes the GIL back once or twice per
    batch, not once per row: behind a busy event loop each retake can wait the interpreter's 5 ms
    switch interval, and per-row retakes made the writer fall behind (bench/README.md).
    """

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        dialect = engine.dialect
        if dialect.name == "postgresql" and dialect.driver == "psycopg2":
            self.kind = "copy"
        elif dialect.name == "sqlite" and dialect.driver == "pysqlite":
            self.kind = "sqlite"
        else:
            self.kind = "sqlalchemy"

    def encode(self, record: ServedForecast) -> Any:
        """One record as this writer's batch item (raises for a record that cannot be stored)."""
        return self.encode_row(record.row())

    def encode_row(self, row: Mapping[str, Any]) -> Any:
        if self.kind == "copy":
            return "\t".join([_copy_field(row[name]) for name in _COLUMNS]) + "\n"
        if self.kind == "sqlite":
            return _encode_json([_sqlite_field(row[name]) for name in _COLUMNS])
        return dict(row)

    def write(self, items: Sequence[Any]) -> None:
        """One transaction; all or nothing: a refused row (e.g. a repeated request id) raises
        `sqlalchemy.exc.IntegrityError` and nothing of the batch is stored."""
        if not items:
            return
        with self.engine.begin() as connection:
            if self.kind == "sqlalchemy":
                connection.execute(sa.insert(served_forecasts), list(items))
                return
            cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                if self.kind == "copy":
                    text = "".join(items)
                    # One read, one send: psycopg2 takes the GIL back after every `size` chunk.
                    cursor.copy_expert(_COPY_SQL, io.StringIO(text), size=len(text) + 1)
                else:
                    # One statement for the batch: sqlite3's executemany takes the GIL back after
                    # every row, and behind a busy event loop each time costs up to the 5 ms switch
                    # interval (two workers at ~4,000 rows/s fell behind and dropped rows).
                    cursor.execute(_SQLITE_INSERT, (b"[" + b",".join(items) + b"]",))
            except self.engine.dialect.loaded_dbapi.IntegrityError as error:
                raise sa.exc.IntegrityError(f"INSERT INTO {served_forecasts.name}", None, error) from error
            finally:
                cursor.close()


_COPY_SQL = f"COPY {served_forecasts.name} ({', '.join(_COLUMNS)}) FROM STDIN"
#: The batch is one JSON array of rows (each an array in `_COLUMNS` order), unpacked by SQLite itself.
_SQLITE_INSERT = (
    f"INSERT INTO {served_forecasts.name} ({', '.join(_COLUMNS)}) SELECT "
    + ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(_COLUMNS)))
    + " FROM json_each(CAST(? AS TEXT))"
)


def insert_served(engine: sa.Engine, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert `ServedForecast.row()` dicts in one transaction (see `ServedWriter`)."""
    writer = ServedWriter(engine)
    writer.write([writer.encode_row(row) for row in rows])


def to_utc(value: dt.datetime) -> dt.datetime:
    """A datetime read back from the warehouse as aware UTC (SQLite returns naive UTC)."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
