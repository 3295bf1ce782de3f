"""The model cache: single-flight first load, hot swap under load, and a registry that goes away."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from mlops_assets_tests.serving.support import MODEL, PATH, Store, in_loop_client, series, wait_ready
from serving.cache import AliasNotFound, ModelSlot
from serving.errors import ModelUnavailable
from serving.metrics import ServingMetrics
from serving.models import get_module

pytestmark = pytest.mark.anyio


class CountingResolver:
    """A registry stand-in for slot-level tests: counts calls, can fail or be slow."""

    def __init__(self, version: str | None = "1", error: Exception | None = None, delay: float = 0.0) -> None:
        self.version, self.error, self.delay = version, error, delay
        self.calls = 0
        self.threads: set[str] = set()
        self.downloads: list[tuple[str, str]] = []

    def resolve(self, name: str, alias: str) -> str:
        self.calls += 1
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        if self.error is not None:
            raise self.error
        if self.version is None:
            raise AliasNotFound("Registered model alias champion not found.")
        return self.version

    def download(self, name: str, version: str, into: Path) -> Path:
        self.downloads.append((name, version))
        model_dir = into / f"{name}-{version}"
        model_dir.mkdir()
        return model_dir

    def describe(self) -> str:
        return "test://registry"


def counting_module(load_delay: float = 0.0) -> tuple[Any, list[str]]:
    """The real atmos module with a load that records its calls instead of reading MLflow."""
    from serving.models.atmos_temperature import Forecaster

    module = get_module(MODEL)
    calls: list[str] = []

    def load(model_dir: str) -> Forecaster:
        calls.append(model_dir)
        time.sleep(load_delay)
        return Forecaster(estimator=None, spec=None, predict=lambda rows: rows[:, :24], predict_path="test")  # type: ignore[arg-type]

    return dataclasses.replace(module, load=load), calls


async def test_concurrent_first_requests_trigger_one_load_off_the_event_loop() -> None:
    module, loads = counting_module(load_delay=0.3)
    resolver = CountingResolver(delay=0.1)
    slot = ModelSlot(module, "champion", resolver, ServingMetrics())
    ticks = 0

    async def ticker() -> None:  # proves the loop keeps running while the load blocks a thread
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    got = await asyncio.gather(*(slot.get() for _ in range(50)))
    task.cancel()
    assert resolver.calls == 1 and resolver.downloads == [(MODEL, "1")]
    assert len(loads) == 1 and Path(loads[0]).name == f"{MODEL}-1"
    assert not Path(loads[0]).exists(), "the downloaded copy outlived the load"
    assert {g.version for g in got} == {"1"} and len({id(g) for g in got}) == 1
    assert ticks > 20, "the event loop was blocked during the load"
    assert "MainThread" not in resolver.threads


async def test_no_registry_fails_fast_and_retries_at_most_once_a_second() -> None:
    module, loads = counting_module()
    resolver = CountingResolver(error=ConnectionError("connection refused"))
    slot = ModelSlot(module, "champion", resolver, ServingMetrics())
    results = await asyncio.gather(*(slot.get() for _ in range(20)), return_exceptions=True)
    assert all(isinstance(r, ModelUnavailable) for r in results)
    assert "cannot reach the registry at test://registry" in str(results[0])
    assert "connection refused" in str(results[0])
    with pytest.raises(ModelUnavailable):
        await slot.get()  # within the retry interval: answered from the last failure
    assert resolver.calls == 1 and loads == [] and resolver.downloads == []


async def test_concurrent_first_http_requests_share_one_load(store: Store, make_app: Callable[..., Litestar]) -> None:
    store.set_champion("1")
    app = make_app(poll_seconds=60)
    slot = app.state.cache.slots[MODEL]
    calls: list[str] = []
    real_load = slot.module.load

    def slow_load(model_dir: str) -> Any:
        calls.append(model_dir)
        assert (Path(model_dir) / "MLmodel").is_file(), list(Path(model_dir).iterdir())  # the version's files
        time.sleep(0.5)  # a window wide enough for every request to arrive during the load
        return real_load(model_dir)

    slot.module = dataclasses.replace(slot.module, load=slow_load)
    async with in_loop_client(app) as client:
        responses = await asyncio.gather(*(client.put(PATH, json=series(i)) for i in range(30)))
        assert [r.status_code for r in responses] == [200] * 30
        assert len(calls) == 1
        metrics = (await client.get("/metrics")).text
        assert f'serving_model_loads_total{{model="{MODEL}",outcome="ok"}} 1.0' in metrics


async def test_hot_swap_under_concurrent_requests(store: Store, make_app: Callable[..., Litestar]) -> None:
    store.set_champion("1")
    async with in_loop_client(make_app(poll_seconds=0.1)) as client:
        await wait_ready(client)
        failures: list[str] = []
        seen: list[list[str]] = [[] for _ in range(8)]

        async def worker(i: int) -> None:
            temps = series(i)
            while seen[i].count("3") < 25:
                # The in-memory transport never suspends by itself: wait as a network round trip would.
                # With sleep(0) the loop never idled, and the poller's load thread, which needs the GIL
                # back after every file and database call, got it once per 5 ms switch interval: the
                # load took 31 s (a served worker's loop idles between network events; measured in
                # bench/README.md, a swap under c=8 load took ~1 s).
                await anyio.sleep(0.005)
                response = await client.put(PATH, json=temps)
                if response.status_code != 200:
                    failures.append(response.text)
                    continue
                body = response.json()
                version = body["model"]["version"]
                # Within 1e-9: a micro-batched matrix product may round the last bit differently.
                if not np.allclose(body["result"], store.expected(version, np.asarray([temps]))[0], rtol=0, atol=1e-9):
                    failures.append(f"version {version} answered another version's numbers")
                seen[i].append(version)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in range(len(seen)):
                    tg.start_soon(worker, i)
                await anyio.sleep(0.4)
                store.set_champion("3")
        assert failures == []
        for versions in seen:
            assert set(versions) <= {"1", "3"}
            first_new = versions.index("3")
            assert "1" not in versions[first_new:], "a worker went back to the old version"
        assert sum(v.count("1") for v in seen) > 0, "no request was answered before the swap"
        ready = (await client.get("/ready")).json()
        assert ready["models"][MODEL]["version"] == "3"


async def test_registry_database_down_then_back(store: Store, make_app: Callable[..., Litestar]) -> None:
    """The SQLite registry file is corrupted in place, then restored with the alias moved."""
    store.set_champion("1")
    healthy = store.db.read_bytes()
    moved = store.db.with_name("moved.db")
    moved.write_bytes(healthy)
    Store(f"sqlite:///{moved}", moved, store.versions).set_champion("3")

    async with AsyncTestClient(make_app(poll_seconds=0.1)) as client:
        await wait_ready(client)
        store.db.write_bytes(b"not a database at all " * 512)  # same inode: open connections see it too
        with anyio.fail_after(20):
            while (await client.get("/ready")).json()["models"][MODEL]["registry_error"] is None:
                await anyio.sleep(0.05)
        for _ in range(5):  # the loaded version keeps answering
            response = await client.put(PATH, json=series())
            assert response.status_code == 200 and response.json()["model"]["version"] == "1"
        ready = await client.get("/ready")
        assert ready.status_code == 200
        metrics = (await client.get("/metrics")).text
        assert f'serving_registry_up{{model="{MODEL}"}} 0.0' in metrics
        assert _sample(metrics, f'serving_registry_poll_errors_total{{model="{MODEL}"}}') >= 1

        store.db.write_bytes(moved.read_bytes())
        with anyio.fail_after(20):
            while (await client.put(PATH, json=series())).json()["model"]["version"] != "3":
                await anyio.sleep(0.05)
        status = (await client.get("/ready")).json()["models"][MODEL]
        assert status["registry_error"] is None and status["version"] == "3"
        metrics = (await client.get("/metrics")).text
        assert f'serving_registry_up{{model="{MODEL}"}} 1.0' in metrics


def _sample(metrics: str, series_name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(series_name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series_name} not in metrics")
