"""The `served_forecasts` and `forecast_accuracy` tables, shared by the service and the pipeline.

Imports only SQLAlchemy, msgspec and the standard library: the prediction service writes through this module
and must not pay for Dagster or pandas in every worker. The URL handling is the warehouse
resource's (`mlops_assets.warehouse_url`: same `WAREHOUSE_URL`, same default file).
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
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
    """Create the monitoring tables when missing (idempotent; existing rows are kept).

    Several processes create them at once: the service's workers each do on their first batch. On
    PostgreSQL the loser of that race gets an error for a table the winner has just made (a unique
    violation in the catalog, or "already exists"); that is success, and treating it as a refused
    row once sent a worker's whole first batch down the row-by-row path while its queue overflowed.
    """
    for attempt in range(_CREATE_ATTEMPTS):
        try:
            monitoring_metadata.create_all(engine, checkfirst=True)
            return
        except sa.exc.DBAPIError:
            if attempt == _CREATE_ATTEMPTS - 1:
                raise  # not a lost race: the same error every time
            # Lost the race for one table: the next pass sees it and creates only what is still missing.


#: One pass per table that another process may be creating at the same moment, plus one.
_CREATE_ATTEMPTS = len(monitoring_metadata.tables) + 1


def as_utc(moment: dt.datetime) -> dt.datetime:
    """An aware UTC datetime; naive values are refused (UTC or local time would be a guess)."""
    _require_aware(moment)
    return moment.astimezone(dt.UTC)


def _require_aware(moment: dt.datetime) -> None:
    if moment.utcoffset() is None:  # also None when tzinfo is
        raise ValueError(f"{moment!r} has no time zone: pass an aware datetime (UTC)")


class ServedForecast(msgspec.Struct, frozen=True):
    """One answered forecast request, as stored in `served_forecasts`.

    A msgspec Struct, not a dataclass: the service builds one per answered request, and a frozen
    dataclass's `__init__` cost ~1 us more. The checks below raise at construction.
    """

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
        _require_aware(self.received_at)
        _require_aware(self.last_observed_at)

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


# msgspec encodes a list of 96 floats in ~2 us, json.dumps in ~70 us: the log's main per-row cost (bench/README.md).
_encode_json = msgspec.json.Encoder(enc_hook=_plain_number).encode


def json_text(values: Any) -> str:
    """Numbers (lists, dicts of lists, NumPy arrays) as compact JSON text; NaN is refused, not stored as null."""
    text = _encode_json(values).decode()
    # msgspec writes NaN and infinity as null: the only "n" in JSON numbers (a one-character search is ~20x
    # faster than one for "null"). A mapping's names may contain "null" too: then its values decide.
    if isinstance(values, Mapping):
        refused = "null" in text and b"null" in _encode_json(list(values.values()))
    else:
        refused = "n" in text
    if refused:
        raise ValueError(f"served values must be finite numbers (NaN or infinity found): {text[:80]}")
    return text


def utc_text(moment: dt.datetime) -> str:
    """RFC 3339 UTC text, `2013-06-01T12:00:00Z` or `2013-06-01T12:00:00.250000Z` (microseconds when not 0).

    msgspec writes it in ~0.05 us, `isoformat` takes ~0.7 us: two per row on the request path.
    """
    if moment.tzinfo is not dt.UTC:  # the service's are UTC already: skip the check and conversion
        moment = as_utc(moment)
    return _encode_json(moment).decode()[1:-1]


def sqlite_datetime_text(moment: dt.datetime) -> str:
    """SQLAlchemy's SQLite DATETIME text, `2013-06-01 12:00:00.000000` (UTC wall clock, always microseconds),
    so the pipeline reads rows written here exactly like rows written through SQLAlchemy."""
    text = utc_text(moment)
    return f"{text[:10]} {text[11:26]}" if len(text) == 27 else f"{text[:10]} {text[11:19]}.000000"


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


def _copy_text(text: str) -> str:
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:  # rare: skip translate's ~1.5 us
        return text.translate(_COPY_ESCAPES)
    return text


def _copy_field(value: Any) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, dt.datetime):
        return utc_text(value)  # timestamptz reads the Z
    return _copy_text(str(value))


def _sqlite_field(value: Any) -> Any:
    return sqlite_datetime_text(value) if isinstance(value, dt.datetime) else value


def _copy_line(record: ServedForecast) -> str:
    """The record as one line of COPY text (the same as `encode_row(record.row())`, without the dict).

    Dates and number arrays cannot contain what COPY escapes; the free-text fields and the covariates'
    JSON (whose names may carry JSON escapes, i.e. backslashes) are escaped when needed.
    """
    covariates = record.covariates
    fields = (
        _copy_text(record.request_id),
        _copy_text(record.model_name),
        _copy_text(str(record.model_version)),
        utc_text(record.received_at),
        utc_text(record.last_observed_at),
        json_text(record.forecast),
        json_text(record.inputs),
        "\\N" if covariates is None else _copy_text(json_text(covariates)),
    )
    return "\t".join(fields) + "\n"


def _sqlite_params(record: ServedForecast) -> tuple[Any, ...]:
    """The record as one row of SQLite parameters (the same as `encode_row(record.row())`, without the dict)."""
    covariates = record.covariates
    return (
        record.request_id,
        record.model_name,
        str(record.model_version),
        sqlite_datetime_text(record.received_at),
        sqlite_datetime_text(record.last_observed_at),
        json_text(record.forecast),
        json_text(record.inputs),
        None if covariates is None else json_text(covariates),
    )


#: Lines handed to psycopg2 per read of a COPY (see `_CopySource`).
COPY_LINES_PER_READ = 256
#: Rows per SQLite INSERT statement, largest first: a batch is cut greedily into statements of these sizes, so
#: sqlite3 prepares five statements once per connection (its cache keeps them) whatever the batch size, and
#: binds at most 2,048 parameters (~0.2 ms with the GIL held; SQLite allows 32,766 since 3.32) per statement.
SQLITE_ROWS_PER_INSERT = (256, 64, 16, 4, 1)


class ServedWriter:
    """Inserts `served_forecasts` rows with no per-row Python in `write`: COPY FROM STDIN on PostgreSQL
    (psycopg2), multi-row INSERT ... VALUES statements on SQLite, SQLAlchemy's executemany elsewhere.

    `encode` turns a record into what `write` takes, wherever the caller likes (the service does it in
    `PredictionLog.enqueue`, on the request path, once per record). `write` runs in a thread: it takes the
    GIL back once per statement or COPY read (hundreds of rows), never per row (sqlite3's executemany
    does: behind a busy event loop each retake can wait the interpreter's 5 ms switch interval, and the
    writer fell behind), and holds it for one such piece at most (joining or binding a whole batch at once
    stalled the event loop for milliseconds).

    SQLite: multi-row VALUES costs what executemany costs inside SQLite, about half the earlier single
    INSERT ... SELECT over `json_each`, whose `json_extract` calls re-parsed each row's JSON (bench/README.md).
    """

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        dialect = engine.dialect
        #: One record as this writer's batch item; raises for a record that cannot be stored.
        self.encode: Callable[[ServedForecast], Any]
        if dialect.name == "postgresql" and dialect.driver == "psycopg2":
            self.kind = "copy"
            self.encode = _copy_line
        elif dialect.name == "sqlite" and dialect.driver == "pysqlite":
            self.kind = "sqlite"
            self.encode = _sqlite_params
        else:
            self.kind = "sqlalchemy"
            self.encode = ServedForecast.row

    def encode_row(self, row: Mapping[str, Any]) -> Any:
        """A `ServedForecast.row()` dict as this writer's batch item."""
        if self.kind == "copy":
            return "\t".join([_copy_field(row[name]) for name in _COLUMNS]) + "\n"
        if self.kind == "sqlite":
            return tuple([_sqlite_field(row[name]) for name in _COLUMNS])
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
                    cursor.copy_expert(_COPY_SQL, _CopySource(items))
                else:
                    start = 0
                    for rows in SQLITE_ROWS_PER_INSERT:
                        while len(items) - start >= rows:
                            params = list(itertools.chain.from_iterable(items[start : start + rows]))
                            cursor.execute(_SQLITE_INSERTS[rows], params)  # the GIL is released while it runs
                            start += rows
            except self.engine.dialect.loaded_dbapi.IntegrityError as error:
                raise sa.exc.IntegrityError(f"INSERT INTO {served_forecasts.name}", None, error) from error
            finally:
                cursor.close()


class _CopySource:
    """What `copy_expert` reads: `COPY_LINES_PER_READ` lines per `read`, whatever size it asks for.

    psycopg2 sends each piece with the GIL released and accepts pieces of any length. One `read` of the
    whole batch (a StringIO of the joined lines) held the GIL through the join, StringIO's copy and the
    encoding of megabytes: the event loop stalled for up to ~10 ms per batch.
    """

    def __init__(self, lines: Sequence[str]) -> None:
        self._lines = lines
        self._start = 0

    def read(self, size: int = -1) -> str:
        piece = "".join(self._lines[self._start : self._start + COPY_LINES_PER_READ])
        self._start += COPY_LINES_PER_READ
        return piece


_COPY_SQL = f"COPY {served_forecasts.name} ({', '.join(_COLUMNS)}) FROM STDIN"
_SQLITE_INSERTS = {
    rows: f"INSERT INTO {served_forecasts.name} ({', '.join(_COLUMNS)}) VALUES "
    + ", ".join(["(" + ", ".join("?" * len(_COLUMNS)) + ")"] * rows)
    for rows in SQLITE_ROWS_PER_INSERT
}


def insert_served(engine: sa.Engine, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert `ServedForecast.row()` dicts in one transaction (see `ServedWriter`)."""
    writer = ServedWriter(engine)
    writer.write([writer.encode_row(row) for row in rows])


def to_utc(value: dt.datetime) -> dt.datetime:
    """A datetime read back from the warehouse as aware UTC (SQLite returns naive UTC)."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
