"""Writes every answered forecast to the warehouse table `served_forecasts`, off the request path.

Each worker owns one `PredictionLog`. `enqueue` encodes the record at once into the item its
`ServedWriter` inserts (a COPY line on PostgreSQL, a row of SQLite parameters) and appends it to a
bounded in-memory list: a few microseconds on the request path, once per record, and nothing per row
left for later. One background task takes what is queued (up to `batch_size` rows, after gathering
for `flush_seconds`) with one slice and inserts it in a thread, so the event loop never waits for the
database and never runs per-row work in the writer task (encoding there, in chunks between yields,
stalled the loop for ~1 ms per chunk). While the warehouse is up nothing is lost; while it is down or
slow, the oldest batch is retried with backoff, the queue fills and further records are dropped and
counted in `serving_prediction_log_dropped_total{reason=...}`, as are records that cannot be stored
(`rejected`: e.g. a NaN): a request is never slowed or failed by its log.

Wiring (in `serving.app.create_app`; the switch `SERVING_PREDICTION_LOG=off` belongs to the caller's
settings, which then simply do not build a `PredictionLog`):

    log = PredictionLog(settings.warehouse_url, registry=metrics.registry)
    # 1. in the lifespan, around the yield:   async with log.running(): ...
    # 2. in the atmos handler, after shaping the answer:
    #        record = served_record(module.name, request_id, payload, answer, received_at)
    #        if record is not None: log.enqueue(record)
    #    and answer with the header X-Request-ID: request_id.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter

from mlops_assets.monitoring.served_log import (
    DEFAULT_WAREHOUSE_URL,
    ServedForecast,
    ServedWriter,
    create_warehouse_engine,
    ensure_tables,
)

log = logging.getLogger(__name__)

#: Environment switch read by the service's settings: `off` disables the log.
SWITCH_ENV = "SERVING_PREDICTION_LOG"
#: Response header carrying the id stored with the row (to find a forecast again).
REQUEST_ID_HEADER = "X-Request-ID"
#: Models whose answers are logged (the forecaster: its answers can be checked against observations).
LOGGED_MODELS = frozenset({"atmos_temperature"})

DROP_REASONS = ("queue_full", "rejected", "shutdown", "closed")
#: Written rows freed between two yields to the event loop.
RELEASE_CHUNK = 256


def new_request_id() -> str:
    """A UUIDv7 (RFC 9562) as 32 hex digits: Unix milliseconds first, then 74 random bits.

    Time-ordered, so `served_forecasts`' primary key grows at its end instead of at random pages
    (uuid4), and ids sort by arrival. The bits come from `random` (reseeded in forked children),
    not `os.urandom`: a request id is not a secret, and its `getrandom` call was ~4% of a ridge
    forecast's CPU (bench/README.md). Distinct per process, request and millisecond with
    probability 1 - n^2 / 2^75.
    """
    bits = random.getrandbits(74)
    value = (
        (time.time_ns() // 1_000_000) << 80
        | 0x7 << 76  # version 7
        | (bits >> 62) << 64  # rand_a: 12 bits
        | 0b10 << 62  # the RFC 9562 variant
        | (bits & _LOW_62_BITS)  # rand_b
    )
    return f"{value:032x}"


_LOW_62_BITS = (1 << 62) - 1


def prediction_log_enabled(value: str | None) -> bool:
    """`SERVING_PREDICTION_LOG`: unset or `on` enables, `off` disables; anything else is an error."""
    text = (value or "on").strip().lower()
    if text not in ("on", "off"):
        raise ValueError(f"{SWITCH_ENV} must be 'on' or 'off', got {value!r}")
    return text == "on"


def served_record(
    model_name: str, request_id: str, window: Any, answer: Any, received_at: dt.datetime
) -> ServedForecast | None:
    """The row for one answered request, or None for models that are not logged.

    `window` is the completed request (`serving.models.atmos_temperature.Window`: its
    `last_observed_at` is the resolved UTC hour), `answer` the response (`result`, `model.version`).
    The record keeps references to both (no copy); `PredictionLog.enqueue` encodes it.
    """
    if model_name not in LOGGED_MODELS:
        return None
    return ServedForecast(
        request_id=request_id,
        model_name=model_name,
        model_version=str(answer.model.version),
        received_at=received_at,
        last_observed_at=window.last_observed_at,
        forecast=answer.result,
        inputs=window.time_series,
        covariates=window.covariates,
    )


def _report_crash(task: asyncio.Task[None]) -> None:
    """A writer that died of a bug must say so (the queue then fills and drops are counted)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("prediction log writer stopped", exc_info=task.exception())


class PredictionLog:
    """A per-worker, bounded, batching writer of served forecasts (see the module docstring)."""

    def __init__(
        self,
        url: str = DEFAULT_WAREHOUSE_URL,
        registry: CollectorRegistry | None = None,
        *,
        max_queue: int = 10_000,
        # Rows per insert. SQLite has one write lock per file: two workers at ~3,500 rows/s each in
        # 500-row inserts waited on each other's lock until their queues overflowed (bench/README.md).
        batch_size: int = 5_000,
        flush_seconds: float = 0.5,
        retry_seconds: float = 0.5,
        max_retry_seconds: float = 5.0,
        shutdown_seconds: float = 5.0,
        connect_timeout: float = 5.0,
    ) -> None:
        if max_queue < 1 or batch_size < 1:
            raise ValueError(f"max_queue and batch_size must be >= 1, got {max_queue}, {batch_size}")
        if flush_seconds < 0:
            raise ValueError(f"flush_seconds must be >= 0, got {flush_seconds}")
        if not (retry_seconds > 0 and max_retry_seconds >= retry_seconds and shutdown_seconds >= 0):
            raise ValueError("retry_seconds must be > 0, max_retry_seconds >= retry_seconds, shutdown_seconds >= 0")
        self.url = url
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self.retry_seconds = retry_seconds
        self.max_retry_seconds = max_retry_seconds
        self.shutdown_seconds = shutdown_seconds
        self._connect_timeout = connect_timeout
        registry = CollectorRegistry(auto_describe=True) if registry is None else registry
        self.dropped = Counter(
            "serving_prediction_log_dropped",
            "Served forecasts not written to the warehouse, by reason (queue_full: warehouse down or slow; "
            "rejected: the row cannot be stored (e.g. NaN) or the database refused it; "
            "shutdown: unwritten at worker exit; closed: logged after exit)",
            ["reason"],
            registry=registry,
        )
        self.written = Counter(
            "serving_prediction_log_written", "Served forecasts written to the warehouse", registry=registry
        )
        self.write_errors = Counter(
            "serving_prediction_log_write_errors", "Failed batch inserts (each retried)", registry=registry
        )
        self.batches = Counter(
            "serving_prediction_log_batches",
            "Batch inserts that succeeded (rows per insert = written / batches)",
            registry=registry,
        )
        for reason in DROP_REASONS:
            self.dropped.labels(reason)
        self._dropped_closed = self.dropped.labels("closed")
        self._dropped_queue_full = self.dropped.labels("queue_full")
        self._dropped_rejected = self.dropped.labels("rejected")
        #: Encoded records waiting for the writer; a list, so the writer takes a batch with one slice.
        self._pending: list[Any] = []
        self._wakeup = asyncio.Event()  # set by enqueue and close: the writer has something to do
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._engine: sa.Engine | None = None
        self._writer: ServedWriter | None = None
        self._encode: Callable[[ServedForecast], Any] | None = None
        self._tables_ready = False
        self._inflight: list[Any] = []
        self._closed = False
        self.last_error: str | None = None

    # -- request path -------------------------------------------------------------------------

    def enqueue(self, record: ServedForecast) -> bool:
        """Encode and queue one record; never blocks, never raises. False when it was dropped (and counted)."""
        if self._closed or self._encode is None:
            self._dropped_closed.inc()
            return False
        if len(self._pending) >= self.max_queue:
            self._dropped_queue_full.inc()
            return False
        try:
            item = self._encode(record)
        except Exception as error:  # e.g. a NaN: the request must not fail for its log; counted and logged
            log.warning("prediction log: record %s rejected: %s", getattr(record, "request_id", "?"), error)
            self._dropped_rejected.inc()
            return False
        self._pending.append(item)
        self._wakeup.set()
        return True

    @property
    def queued(self) -> int:
        return len(self._pending)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the writer task on the running loop (call once per worker)."""
        if self._task is not None:
            raise RuntimeError("PredictionLog already started")
        self._engine = create_warehouse_engine(self.url, self._connect_timeout)
        self._writer = ServedWriter(self._engine)
        self._encode = self._writer.encode
        self._task = asyncio.create_task(self._run(), name="prediction-log-writer")
        self._task.add_done_callback(_report_crash)

    async def close(self) -> None:
        """Flush what is queued (for at most `shutdown_seconds`), then stop; the rest is counted as dropped."""
        if self._task is None or self._closed:
            self._closed = True
            return
        self._closed = True
        self._closing.set()  # a writer gathering a batch writes it now, then the rest, then returns
        self._wakeup.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=self.shutdown_seconds)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        finally:
            lost = len(self._inflight) + len(self._pending)
            if lost:
                log.warning("prediction log: %d served forecasts unwritten at shutdown (%s)", lost, self.last_error)
                self.dropped.labels("shutdown").inc(lost)
            self._inflight = []
            self._pending = []
            if self._engine is not None:
                await asyncio.to_thread(self._engine.dispose)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[PredictionLog]:
        """`async with log.running():` in the app's lifespan."""
        await self.start()
        try:
            yield self
        finally:
            await self.close()

    # -- writer -------------------------------------------------------------------------------

    async def _run(self) -> None:
        while self._pending or not self._closing.is_set():
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if len(self._pending) < self.batch_size and not self._closing.is_set():
                # Gather: one transaction per `flush_seconds` instead of one per request or two.
                # Per-batch costs (a thread hop, a commit and its fsync) dominated a row's.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), self.flush_seconds)
            if len(self._pending) <= self.batch_size:
                batch, self._pending = self._pending, []
            else:
                batch = self._pending[: self.batch_size]
                del self._pending[: self.batch_size]
            self._inflight = batch
            await self._write_with_retries(batch)
            self._inflight = []
            # Freed a few hundred at a time: freeing thousands of rows at once stalled the event loop ~1 ms.
            while batch:
                del batch[-RELEASE_CHUNK:]
                await asyncio.sleep(0)

    async def _write_with_retries(self, batch: list[Any]) -> None:
        """Retry transient failures with capped backoff; rows the database refuses are dropped one by one.

        Returns once every row is written or refused (`batch` then holds the rows written in one insert).
        """
        delay = self.retry_seconds
        one_by_one = False
        while True:
            try:
                if one_by_one:
                    await asyncio.to_thread(self._insert_one_by_one, batch)  # empties `batch`
                else:
                    await asyncio.to_thread(self._insert, batch)
                    self.written.inc(len(batch))
                    self.batches.inc()
                break
            except sa.exc.IntegrityError:
                one_by_one = True  # e.g. a repeated request id: keep every other row
            except Exception as error:  # connection refused, timeouts, locked database: retry
                self.write_errors.inc()
                self.last_error = f"{type(error).__name__}: {error}".splitlines()[0]
                log.warning(
                    "prediction log: insert of %d rows failed, retrying in %.1f s: %s",
                    len(batch),
                    delay,
                    self.last_error,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_retry_seconds)
        self.last_error = None

    def _insert(self, items: Sequence[Any]) -> None:
        assert self._engine is not None and self._writer is not None
        if not self._tables_ready:
            ensure_tables(self._engine)
            self._tables_ready = True
        self._writer.write(items)

    def _insert_one_by_one(self, items: list[Any]) -> None:
        """Insert item by item, removing each from `items` once written or refused by the database."""
        assert self._writer is not None
        while items:
            try:
                self._writer.write(items[:1])
            except sa.exc.IntegrityError as error:
                log.warning("prediction log: a row was rejected: %s", str(error).splitlines()[0])
                self.dropped.labels("rejected").inc()
            else:
                self.written.inc()
            items.pop(0)
