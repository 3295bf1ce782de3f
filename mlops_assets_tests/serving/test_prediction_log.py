"""The prediction log against real SQLite and PostgreSQL, a locked database and an unreachable server."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy.dialects import sqlite

from mlops_assets.monitoring.served_log import (
    ServedForecast,
    ServedWriter,
    create_warehouse_engine,
    ensure_tables,
    served_forecasts,
    sqlite_datetime_text,
    to_utc,
)
from mlops_assets_tests.conftest import _fresh_database
from serving.prediction_log import PredictionLog, new_request_id, prediction_log_enabled, served_record

T0 = dt.datetime(2013, 6, 1, 12, tzinfo=dt.UTC)


def record(i: int, version: str = "3") -> ServedForecast:
    return ServedForecast(
        request_id=f"req-{i:06d}",
        model_name="atmos_temperature",
        model_version=version,
        received_at=T0 + dt.timedelta(seconds=i),
        last_observed_at=T0 + dt.timedelta(hours=i % 48),
        forecast=[i + h / 10 for h in range(24)],
        inputs=[float(h) for h in range(72)],
        covariates={"rh": [50.0 + h for h in range(24)]} if i % 2 else None,
    )


def dropped(registry: CollectorRegistry, reason: str) -> float:
    value = registry.get_sample_value("serving_prediction_log_dropped_total", {"reason": reason})
    assert value is not None
    return value


def count_rows(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(sa.select(sa.func.count()).select_from(served_forecasts)).scalar_one())
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh warehouse per test: a SQLite file, or a new database on the real PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'nested' / 'warehouse.db'}"
    else:
        with _fresh_database("mlops_predlog") as database:
            yield database


def test_many_concurrent_enqueues_are_all_written(url: str) -> None:
    registry = CollectorRegistry()
    producers, per_producer = 40, 250
    accepted: list[bool] = []

    async def scenario() -> None:
        log = PredictionLog(url, registry=registry, batch_size=200)
        async with log.running():

            async def produce(p: int) -> None:
                for k in range(per_producer):
                    accepted.append(log.enqueue(record(p * per_producer + k)))
                    await asyncio.sleep(0)

            await asyncio.gather(*(produce(p) for p in range(producers)))

    asyncio.run(scenario())
    total = producers * per_producer
    assert accepted.count(True) == total
    assert count_rows(url) == total
    assert registry.get_sample_value("serving_prediction_log_written_total") == total
    assert sum(dropped(registry, r) for r in ("queue_full", "rejected", "shutdown", "closed")) == 0
    assert b"serving_prediction_log_dropped_total" in generate_latest(registry)

    engine = sa.create_engine(url)
    with engine.connect() as connection:
        row = (
            connection.execute(sa.select(served_forecasts).where(served_forecasts.c.request_id == "req-000007"))
            .mappings()
            .one()
        )
    engine.dispose()
    assert json.loads(row["forecast"]) == pytest.approx([7 + h / 10 for h in range(24)])
    assert json.loads(row["inputs"]) == [float(h) for h in range(72)]
    assert json.loads(row["covariates"]) == {"rh": [50.0 + h for h in range(24)]}
    stored = row["last_observed_at"]
    stored = stored.replace(tzinfo=dt.UTC) if stored.tzinfo is None else stored
    assert stored == T0 + dt.timedelta(hours=7)


def test_a_trickle_of_answers_is_written_in_few_transactions(tmp_path: Path) -> None:
    """One insert per request (a thread hop and a commit each) cost more than the rows themselves."""
    registry = CollectorRegistry()
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"

    async def scenario() -> None:
        log = PredictionLog(url, registry=registry, flush_seconds=1.0)
        async with log.running():
            for i in range(300):
                assert log.enqueue(record(i))
                await asyncio.sleep(0)  # the writer wakes after every request, as under real traffic

    asyncio.run(scenario())
    assert registry.get_sample_value("serving_prediction_log_written_total") == 300
    batches = registry.get_sample_value("serving_prediction_log_batches_total")
    assert batches is not None and 1 <= batches <= 3
    with sa.create_engine(url).connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(served_forecasts)).scalar_one() == 300


def test_unreachable_warehouse_never_blocks_and_counts_drops() -> None:
    registry = CollectorRegistry()
    results: list[bool] = []

    async def scenario() -> None:
        log = PredictionLog(
            "postgresql://postgres@127.0.0.1:1/nowhere",
            registry=registry,
            max_queue=100,
            flush_seconds=0.01,  # try (and fail) at once; the default gathers for 0.5 s
            retry_seconds=0.05,
            max_retry_seconds=0.1,
            shutdown_seconds=0.5,
            connect_timeout=1,
        )
        async with log.running():
            for i in range(500):
                results.append(log.enqueue(record(i)))  # synchronous: returns at once, never awaits the writer
                if i % 50 == 0:
                    await asyncio.sleep(0.01)  # let the writer try (and fail) in between
            await asyncio.sleep(0.3)
            assert log.last_error is not None and "OperationalError" in log.last_error

    asyncio.run(scenario())
    # (How long an enqueue takes is measured in bench/serving/prediction_log_overhead.py, not timed here.)
    assert len(results) == 500
    accepted = results.count(True)
    assert 100 <= accepted < 500
    assert dropped(registry, "queue_full") == 500 - accepted
    # Nothing was written: every accepted record is counted lost at shutdown.
    assert dropped(registry, "shutdown") == accepted
    assert registry.get_sample_value("serving_prediction_log_write_errors_total") >= 1


def test_locked_warehouse_recovers_without_losing_accepted_rows(tmp_path: Path) -> None:
    """A slow warehouse (SQLite write lock held elsewhere): retries, then everything accepted lands."""
    db = tmp_path / "warehouse.db"
    url = f"sqlite:///{db}"
    registry = CollectorRegistry()

    async def scenario() -> int:
        log = PredictionLog(
            url, registry=registry, max_queue=300, retry_seconds=0.05, max_retry_seconds=0.2, connect_timeout=0.1
        )
        async with log.running():
            assert log.enqueue(record(0))
            while count_rows_or_zero(url) == 0:  # tables created, first row written
                await asyncio.sleep(0.02)
            blocker = sqlite3.connect(db)
            blocker.execute("BEGIN EXCLUSIVE")
            accepted = 1
            for i in range(1, 1000):
                accepted += log.enqueue(record(i))
                if i % 100 == 0:
                    await asyncio.sleep(0.1)
            assert registry.get_sample_value("serving_prediction_log_write_errors_total") >= 1
            blocker.rollback()
            blocker.close()
        return accepted

    accepted = asyncio.run(scenario())
    assert accepted < 1000  # the queue filled while locked
    assert dropped(registry, "queue_full") == 1000 - accepted
    assert dropped(registry, "shutdown") == 0
    assert count_rows(url) == accepted


def count_rows_or_zero(url: str) -> int:
    try:
        return count_rows(url)
    except sa.exc.OperationalError:
        return 0


def test_repeated_request_id_is_rejected_and_the_rest_kept(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    registry = CollectorRegistry()

    async def scenario() -> None:
        log = PredictionLog(url, registry=registry)
        async with log.running():
            for i in (1, 2, 2, 3):
                log.enqueue(record(i))

    asyncio.run(scenario())
    assert count_rows(url) == 3
    assert dropped(registry, "rejected") == 1


def test_enqueue_after_close_is_counted() -> None:
    registry = CollectorRegistry()
    log = PredictionLog("sqlite://", registry=registry)
    assert log.enqueue(record(1)) is False
    assert dropped(registry, "closed") == 1


def test_served_record_and_switch() -> None:
    class Window:
        time_series = [1.0] * 72
        last_observed_at = T0
        covariates = None

    class Ref:
        version = "4"

    class Answer:
        result = [2.0] * 24
        model = Ref()

    row = served_record("atmos_temperature", "abc", Window(), Answer(), T0)
    assert row is not None and row.model_version == "4" and row.last_observed_at == T0
    assert served_record("insurance_charges", "abc", Window(), Answer(), T0) is None
    assert prediction_log_enabled(None) and prediction_log_enabled("ON") and not prediction_log_enabled("off")
    with pytest.raises(ValueError, match="SERVING_PREDICTION_LOG"):
        prediction_log_enabled("maybe")
    with pytest.raises(ValueError, match="time zone"):
        ServedForecast("x", "m", "1", dt.datetime(2013, 1, 1), T0, [0.0] * 24, [0.0] * 72)
    with pytest.raises(ValueError, match="24 values"):
        ServedForecast("x", "m", "1", T0, T0, [0.0] * 23, [0.0] * 72)


def test_text_the_copy_format_would_misread_is_stored_as_given(url: str) -> None:
    """COPY's text format gives tab, newline and backslash a meaning: they must arrive as sent."""
    from mlops_assets.monitoring.served_log import insert_served

    engine = create_warehouse_engine(url)
    ensure_tables(engine)
    tricky = ServedForecast(
        request_id="tab\there\\back\nline",
        model_name="atmos_temperature",
        model_version="7\\x",
        received_at=T0,
        last_observed_at=T0 + dt.timedelta(hours=3),
        forecast=[0.5] * 24,
        inputs=[1.25] * 72,
        covariates={"odd\tname\n": [2.0] * 24},
    )
    insert_served(engine, [tricky.row(), record(1).row()])
    with engine.connect() as connection:
        rows = {r.request_id: r for r in connection.execute(sa.select(served_forecasts))}
    engine.dispose()
    stored = rows["tab\there\\back\nline"]
    assert stored.model_version == "7\\x"
    assert json.loads(stored.covariates) == {"odd\tname\n": [2.0] * 24}
    assert json.loads(stored.inputs) == [1.25] * 72
    observed = stored.last_observed_at
    assert (observed.replace(tzinfo=dt.UTC) if observed.tzinfo is None else observed) == T0 + dt.timedelta(hours=3)
    assert set(rows) == {"tab\there\\back\nline", "req-000001"}


def test_a_record_that_cannot_be_stored_is_rejected_at_enqueue_and_the_rest_written(tmp_path: Path) -> None:
    """Encoding happens in `enqueue`: a NaN is refused there (counted), not stored as null, and fails no request."""
    url = f"sqlite:///{tmp_path / 'w.db'}"
    registry = CollectorRegistry()
    nan_forecast = msgspec.structs.replace(record(2), forecast=[float("nan")] * 24)
    infinite_covariate = msgspec.structs.replace(record(3), covariates={"rh": [float("inf")] * 24})
    named_null = msgspec.structs.replace(record(4), covariates={"null": [1.0] * 24, "nullable": [2.0] * 24})

    async def scenario() -> list[bool]:
        log = PredictionLog(url, registry=registry)
        async with log.running():
            return [log.enqueue(r) for r in (record(1), nan_forecast, infinite_covariate, named_null)]

    assert asyncio.run(scenario()) == [True, False, False, True]
    assert dropped(registry, "rejected") == 2
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        stored = dict(connection.execute(sa.select(served_forecasts.c.request_id, served_forecasts.c.covariates)).all())
    engine.dispose()
    assert set(stored) == {"req-000001", "req-000004"}
    assert json.loads(stored["req-000004"]) == {"null": [1.0] * 24, "nullable": [2.0] * 24}


def test_encoding_a_record_equals_encoding_its_row() -> None:
    """`encode` (the request path's, without the dict) and `encode_row` (insert_served's) give the same item."""
    tricky = ServedForecast(
        request_id="tab\there\\back\nline\r",
        model_name="atmos_temperature",
        model_version="7\\x",
        received_at=dt.datetime(2013, 6, 1, 21, 0, 0, 250, tzinfo=dt.timezone(dt.timedelta(hours=9, seconds=30))),
        last_observed_at=T0,
        forecast=np.linspace(-1.5, 2.5, 24),
        inputs=[float(h) for h in range(72)],
        covariates={"odd\tname\n": np.full(24, 2.0)},
    )
    for url in ("sqlite://", "postgresql+psycopg2://postgres@127.0.0.1:1/nowhere"):  # nothing connects
        writer = ServedWriter(create_warehouse_engine(url))
        for r in (tricky, record(1), record(2)):
            assert writer.encode(r) == writer.encode_row(r.row())


def test_sqlite_datetimes_are_written_as_sqlalchemy_writes_them() -> None:
    """The pipeline reads `served_forecasts` through SQLAlchemy: the text must be what its DATETIME writes."""
    dialect = sqlite.dialect()
    to_text = sa.DateTime(timezone=True).dialect_impl(dialect).bind_processor(dialect)
    assert to_text is not None
    plus_nine = dt.timezone(dt.timedelta(hours=9, seconds=30))
    for moment in (T0, T0.replace(microsecond=1), T0.replace(microsecond=250_000), T0.astimezone(plus_nine)):
        assert sqlite_datetime_text(moment) == to_text(moment.astimezone(dt.UTC).replace(tzinfo=None))
    with pytest.raises(ValueError, match="time zone"):
        sqlite_datetime_text(dt.datetime(2013, 6, 1))


def test_a_batch_cut_into_statements_or_reads_of_every_size_is_stored_as_sent(url: str) -> None:
    """597 rows = 2 x 256 + 64 + 16 + 4 + 1 on SQLite, three COPY reads on PostgreSQL, one transaction."""
    engine = create_warehouse_engine(url)
    ensure_tables(engine)
    writer = ServedWriter(engine)
    records = [record(i) for i in range(2 * 256 + 64 + 16 + 4 + 1)]
    writer.write([writer.encode(r) for r in records])
    with engine.connect() as connection:
        rows = {row.request_id: row for row in connection.execute(sa.select(served_forecasts))}
    with pytest.raises(sa.exc.IntegrityError):  # all or nothing: one repeated id refuses the whole batch
        writer.write([writer.encode(r) for r in (record(10_000), record(10_001), records[5])])
    with engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(served_forecasts)).scalar_one() == len(records)
    engine.dispose()
    assert len(rows) == len(records)
    for sent in records:
        stored = rows[sent.request_id]
        assert (stored.model_name, stored.model_version) == (sent.model_name, sent.model_version)
        assert to_utc(stored.received_at) == sent.received_at
        assert to_utc(stored.last_observed_at) == sent.last_observed_at
        assert json.loads(stored.forecast) == list(sent.forecast)
        assert json.loads(stored.inputs) == list(sent.inputs)
        assert (None if stored.covariates is None else json.loads(stored.covariates)) == sent.covariates


def test_tables_another_worker_creates_meanwhile_are_not_an_error(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each worker creates the tables on its first batch: losing that race must not fail the batch.

    The loser saw no table, then its CREATE met the winner's (on PostgreSQL a unique violation in the
    catalog, an IntegrityError, which once sent the whole first batch down the row-by-row path).
    """
    from mlops_assets.monitoring import served_log

    engine, winner = create_warehouse_engine(url), create_warehouse_engine(url)
    create_all = served_log.monitoring_metadata.create_all
    passes: list[bool] = []

    def lose_the_race(bind: Any, checkfirst: bool = True, **kwargs: Any) -> None:
        passes.append(checkfirst)
        if len(passes) == 1:
            create_all(winner, checkfirst=True)  # the other worker, between our check and our CREATE
            create_all(bind, checkfirst=False)  # our CREATE of a table that now exists: raises
        create_all(bind, checkfirst=checkfirst, **kwargs)

    monkeypatch.setattr(served_log.monitoring_metadata, "create_all", lose_the_race)
    try:
        ensure_tables(engine)
        assert len(passes) == 2
        assert {"served_forecasts", "forecast_accuracy"} <= set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
        winner.dispose()


def test_an_error_that_is_not_a_lost_race_still_fails(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from mlops_assets.monitoring import served_log

    def refuse(bind: Any, checkfirst: bool = True, **kwargs: Any) -> None:
        raise sa.exc.OperationalError("CREATE TABLE served_forecasts", None, Exception("permission denied"))

    monkeypatch.setattr(served_log.monitoring_metadata, "create_all", refuse)
    with pytest.raises(sa.exc.OperationalError, match="permission denied"):
        ensure_tables(create_warehouse_engine(f"sqlite:///{tmp_path / 'w.db'}"))


def test_request_ids_are_uuid7_ordered_by_time_and_distinct() -> None:
    before_ms = time.time_ns() // 1_000_000
    ids = [new_request_id() for _ in range(50_000)]
    after_ms = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    for text in (ids[0], ids[-1]):
        parsed = uuid.UUID(hex=text)
        assert len(text) == 32 and parsed.hex == text
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert before_ms <= int(text[:12], 16) <= after_ms  # the first 48 bits: Unix milliseconds
    stamps = [text[:12] for text in ids]
    assert stamps == sorted(stamps)  # the primary key grows at its end


def test_a_forked_child_draws_other_request_ids_than_its_parent() -> None:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its ids must not repeat the parent's (same RNG state before the fork)
        os.close(read_end)
        os.write(write_end, " ".join(new_request_id()[12:] for _ in range(100)).encode())
        os._exit(0)
    os.close(write_end)
    parent = {new_request_id()[12:] for _ in range(100)}
    with os.fdopen(read_end, "rb") as pipe:
        child = set(pipe.read().decode().split())
    os.waitpid(pid, 0)
    assert len(child) == 100 and not parent & child
