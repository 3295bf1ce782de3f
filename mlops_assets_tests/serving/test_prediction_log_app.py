"""The service logs every answered forecast to the warehouse, off the hot path, through the real app."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from mlops_assets.monitoring.served_log import served_forecasts
from mlops_assets_tests.serving.support import PATH, Store, in_loop_client, series, wait_ready

pytestmark = pytest.mark.anyio


def _rows(url: str) -> list[dict[str, object]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return [dict(row) for row in connection.execute(sa.select(served_forecasts)).mappings()]
    finally:
        engine.dispose()


async def test_every_answered_forecast_is_one_row_with_its_request_id(make_app, store: Store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store.set_champion("1")
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    app = make_app(warehouse_url=url)
    answers = []
    async with in_loop_client(app) as client:
        await wait_ready(client)
        responses = await asyncio.gather(*(client.put(PATH, json=series(i / 10)) for i in range(40)))
        bad = await client.put(PATH, json=[1.0] * 3)  # a 4xx is not a served forecast
        answers = [response for response in responses if response.status_code == 200]
    assert len(answers) == 40 and bad.status_code == 422
    rows = {row["request_id"]: row for row in _rows(url)}  # the lifespan flushed the queue on shutdown
    assert set(rows) == {response.headers["x-request-id"] for response in answers}
    for response in answers[:5]:
        row = rows[response.headers["x-request-id"]]
        assert json.loads(str(row["forecast"])) == response.json()["result"]
        assert (row["model_name"], str(row["model_version"])) == ("atmos_temperature", "1")
    expected = store.expected("1", np.asarray([series(0.0)]))[0].tolist()
    assert expected in [json.loads(str(row["forecast"])) for row in rows.values()]


async def test_switched_off_nothing_is_logged(make_app, store: Store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store.set_champion("1")
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    async with in_loop_client(make_app(warehouse_url=url, prediction_log=False)) as client:
        await wait_ready(client)
        assert (await client.put(PATH, json=series())).status_code == 200
    assert not sa.inspect(sa.create_engine(url)).has_table("served_forecasts")


async def test_an_unreachable_warehouse_changes_no_answer_and_drops_are_counted(make_app, store: Store) -> None:  # type: ignore[no-untyped-def]
    store.set_champion("1")
    app = make_app(warehouse_url="postgresql+psycopg2://postgres@127.0.0.1:9/nowhere")  # nothing listens on port 9
    async with in_loop_client(app) as client:
        await wait_ready(client)
        responses = await asyncio.gather(*(client.put(PATH, json=series()) for _ in range(20)))
        assert [response.status_code for response in responses] == [200] * 20
        failures = 0.0
        for _ in range(50):  # the writer's first attempt fails within a second (connection refused)
            failures = _counter_sum((await client.get("/metrics")).text, ("_dropped_total", "_write_errors_total"))
            if failures > 0:
                break
            await asyncio.sleep(0.1)
    assert failures > 0


def _counter_sum(metrics: str, suffixes: tuple[str, ...]) -> float:
    """Sum of the prediction log's counters whose name ends in one of `suffixes` (all label sets)."""
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("serving_prediction_log_"):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name.endswith(suffixes):
                total += float(line.rsplit(" ", 1)[1])
    return total
