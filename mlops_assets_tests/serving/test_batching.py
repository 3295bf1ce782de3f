"""Micro-batching (issue 12): own answers under concurrency, identical numbers, deadlines, one thread.

The per-family tests serve a real champion of each forecaster family (and the insurance
pipeline) from a real MLflow SQLite store and fire concurrent requests at the app in one event
loop, so rows really are predicted together; each answer must equal the estimator's own one-row
predict within 1e-9.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlops_assets.atmos.forecast_features import feature_matrix, feature_row
from mlops_assets_tests.serving.support import MODEL, PATH, in_loop_client, synthetic_windows, wait_ready
from serving.batching import Batcher, BatchSettings
from serving.errors import DeadlineExceeded
from serving.metrics import ServingMetrics

pytestmark = pytest.mark.anyio
FAMILIES = ("ridge_lags", "ridge_covariates", "gbm_delta", "ridge_boost")
#: Small boosted configs: seconds to fit, same code paths as the tuned ones.
SMALL = {"gbm_max_iter": 15, "gbm_components": 3, "gbm_max_leaf_nodes": 7, "gbm_min_samples_leaf": 10}
PUBLIC_DATASET = Path(__file__).resolve().parents[3] / "shared" / "data" / "insurance.csv"


class _Loaded:
    """Stands for a `LoadedModel` in Batcher-level tests (a batch groups rows by this object)."""

    def __init__(self, artifact: Any = None) -> None:
        self.artifact = artifact


def _batcher(
    predict: Any, max_batch: int = 32, max_wait_ms: float = 2.0, deadline_ms: float = 1000.0, inline_below: float = 0.0
) -> Batcher:
    return Batcher("m", predict, BatchSettings(max_batch, max_wait_ms, deadline_ms, inline_below), ServingMetrics())


def _histogram(text: str, name: str, model: str) -> tuple[float, float]:
    """(count, sum) of a histogram for one model in Prometheus text."""
    count = float(re.search(rf'^{name}_count{{model="{model}"}} (\S+)$', text, re.M).group(1))  # type: ignore[union-attr]
    total = float(re.search(rf'^{name}_sum{{model="{model}"}} (\S+)$', text, re.M).group(1))  # type: ignore[union-attr]
    return count, total


# --- the batcher itself -------------------------------------------------------------------------


async def test_concurrent_requests_share_batches_and_each_gets_its_own_rows() -> None:
    sizes: list[int] = []

    def predict(_: Any, rows: np.ndarray) -> np.ndarray:
        sizes.append(len(rows))
        time.sleep(0.02)  # long enough for the others to queue
        return rows * 10.0

    batcher = _batcher(predict, max_batch=16, max_wait_ms=50.0)
    loaded = _Loaded()
    try:
        outputs = await asyncio.gather(*(batcher.submit(loaded, np.array([[float(i), -float(i)]])) for i in range(40)))
    finally:
        batcher.close()
    for i, output in enumerate(outputs):
        assert output.tolist() == [[10.0 * i, -10.0 * i]]
    assert sum(sizes) == 40 and max(sizes) > 1 and max(sizes) <= 16
    text = batcher_metrics_text(batcher)
    count, total = _histogram(text, "serving_batch_size", "m")
    assert count == len(sizes) and total == 40


def batcher_metrics_text(batcher: Batcher) -> str:
    return batcher.metrics.render().decode()


async def test_an_idle_model_predicts_at_once() -> None:
    """No waiting for company at concurrency 1: the queue wait is ~0 and batches are single."""
    batcher = _batcher(lambda _, rows: rows + 1.0, max_wait_ms=500.0)
    loaded = _Loaded()
    try:
        started = time.perf_counter()
        for i in range(20):
            assert (await batcher.submit(loaded, np.array([[float(i)]]))).tolist() == [[i + 1.0]]
        assert time.perf_counter() - started < 0.5  # 20 x max_wait_ms would be 10 s
    finally:
        batcher.close()
    count, total = _histogram(batcher_metrics_text(batcher), "serving_batch_size", "m")
    assert count == total == 20


async def test_a_predict_that_answers_one_row_only_fails_loudly_when_batched() -> None:
    """Rather than hand the first caller's answer to everyone (ModelModule(max_batch=1) is the fix)."""

    def first_row_only(_: Any, rows: np.ndarray) -> np.ndarray:
        time.sleep(0.01)
        return rows[0]

    batcher = _batcher(first_row_only, max_wait_ms=50.0)
    loaded = _Loaded()
    try:
        results = await asyncio.gather(
            *(batcher.submit(loaded, np.array([[float(i), 0.0]])) for i in range(6)), return_exceptions=True
        )
    finally:
        batcher.close()
    assert results[0].tolist() == [0.0, 0.0]  # alone in its batch: the whole output
    assert all(isinstance(r, RuntimeError) and "max_batch=1" in str(r) for r in results[1:]), results


async def test_a_predict_that_waits_stays_off_the_event_loop() -> None:
    """Little CPU but long wall time (I/O, other threads): never inline, whatever its CPU cost."""
    threads: list[str] = []

    def waits(_: Any, rows: np.ndarray) -> np.ndarray:
        threads.append(threading.current_thread().name)
        time.sleep(0.02)
        return rows

    batcher = _batcher(waits, inline_below=250e-6)
    try:
        for _ in range(4):
            await batcher.submit(_Loaded(), np.zeros((1, 1)))
    finally:
        batcher.close()
    assert batcher.row_cpu_seconds < 250e-6 < batcher.row_seconds
    assert all(name.startswith("predict-m") for name in threads), threads


async def test_costly_batches_do_not_keep_a_cheap_one_row_predict_off_the_loop() -> None:
    """The inline decision reads one-row calls: a batch that costs more (here 2 ms of CPU for any
    batch, 20 us for one row) must not keep the model on the thread path once the burst is over
    (judged by the smoothed batch, 0.2 x 2 ms alone is past the 250 us bound)."""
    threads: list[str] = []

    def cheap_alone(_: Any, rows: np.ndarray) -> np.ndarray:
        threads.append(threading.current_thread().name)
        if len(threads) == 1:
            time.sleep(0.003)  # the burst's first call: the others queue behind it meanwhile
        spin_until = time.thread_time() + (20e-6 if rows.shape[0] == 1 else 2e-3)
        while time.thread_time() < spin_until:
            pass
        return rows

    batcher = _batcher(cheap_alone, max_wait_ms=50.0, inline_below=250e-6)
    loaded = _Loaded()  # one version: its requests may share a batch
    try:
        await asyncio.gather(*(batcher.submit(loaded, np.zeros((1, 1))) for _ in range(6)))  # a burst
        assert any(not name.startswith("MainThread") for name in threads)  # it was batched on threads
        assert batcher.batched_row_cpu_seconds > 0 and batcher.batch_seconds > 250e-6  # a batch ran
        assert 0 < batcher.row_cpu_seconds < 250e-6
        threads.clear()
        for _ in range(5):
            await batcher.submit(loaded, np.zeros((1, 1)))
    finally:
        batcher.close()
    assert threads == ["MainThread"] * 5, threads


def _spinning(fixed_seconds: float, per_row_seconds: float, threads: list[str]) -> Any:
    """A predict burning `fixed + per_row x rows` of CPU; its first call also sleeps 3 ms, so that a
    burst queues behind it and the rest is predicted as one batch."""

    def predict(_: Any, rows: np.ndarray) -> np.ndarray:
        threads.append(threading.current_thread().name)
        if len(threads) == 1:
            time.sleep(0.003)
        spin_until = time.thread_time() + fixed_seconds + per_row_seconds * rows.shape[0]
        while time.thread_time() < spin_until:
            pass
        return rows

    return predict


@pytest.mark.parametrize(
    ("fixed", "per_row", "inline"),
    [(0.0, 400e-6, True), (1e-3, 10e-6, False)],
    ids=["cost-grows-with-rows", "cost-mostly-fixed"],
)
async def test_a_costly_predict_runs_inline_when_batching_does_not_pay(
    fixed: float, per_row: float, inline: bool
) -> None:
    """Above the 250 us bound, a one-row predict goes inline only if its batched rows cost about as
    much each (compiled trees); one whose cost is mostly fixed (scikit-learn's validation) batches."""
    threads: list[str] = []
    batcher = _batcher(_spinning(fixed, per_row, threads), max_wait_ms=50.0, inline_below=250e-6)
    loaded = _Loaded()  # one version: its requests may share a batch
    try:
        await asyncio.gather(*(batcher.submit(loaded, np.zeros((1, 1))) for _ in range(6)))  # a burst
        assert batcher.row_cpu_seconds > 250e-6 and batcher.batched_row_cpu_seconds > 0
        threads.clear()
        for _ in range(5):
            await batcher.submit(loaded, np.zeros((1, 1)))
    finally:
        batcher.close()
    assert (threads == ["MainThread"] * 5) is inline, threads


async def test_no_predict_runs_inline_with_a_zero_bound() -> None:
    threads: list[str] = []
    batcher = _batcher(_spinning(0.0, 10e-6, threads), max_wait_ms=50.0, inline_below=0.0)
    loaded = _Loaded()  # one version: its requests may share a batch
    try:
        await asyncio.gather(*(batcher.submit(loaded, np.zeros((1, 1))) for _ in range(6)))
        for _ in range(5):
            await batcher.submit(loaded, np.zeros((1, 1)))
    finally:
        batcher.close()
    assert not any(name == "MainThread" for name in threads), threads


async def test_a_batch_never_mixes_versions() -> None:
    seen: list[tuple[Any, int]] = []

    def predict(artifact: Any, rows: np.ndarray) -> np.ndarray:
        seen.append((artifact, len(rows)))
        time.sleep(0.01)
        return rows + artifact

    batcher = _batcher(predict, max_wait_ms=50.0)
    old, new = _Loaded(100.0), _Loaded(200.0)
    try:
        jobs = [batcher.submit(old if i % 2 else new, np.array([[float(i)]])) for i in range(20)]
        outputs = await asyncio.gather(*jobs)
    finally:
        batcher.close()
    assert [o.item() for o in outputs] == [i + (100.0 if i % 2 else 200.0) for i in range(20)]
    assert sum(n for _, n in seen) == 20


async def test_a_request_that_cannot_meet_its_deadline_gets_503() -> None:
    def slow(_: Any, rows: np.ndarray) -> np.ndarray:
        time.sleep(0.2)
        return rows

    batcher = _batcher(slow, max_batch=1, deadline_ms=50.0)
    loaded = _Loaded()
    try:
        # Batch time unknown yet: two run (one per predict thread); the two queued behind them have
        # waited 200 ms when a thread frees up, past the 50 ms deadline.
        results = await asyncio.gather(
            *(batcher.submit(loaded, np.array([[float(i)]])) for i in range(4)), return_exceptions=True
        )
        assert [r.tolist() for r in results[:2]] == [[[0.0]], [[1.0]]]
        late = results[2:]
        assert all(isinstance(r, DeadlineExceeded) and "waited" in str(r) for r in late), late
        assert all(r.status_code == 503 and r.model == "m" and "SERVING_DEADLINE_MS" in r.detail for r in late)

        # Now known to take ~200 ms: even an idle model refuses, at once, what it cannot finish in 50 ms.
        started = time.perf_counter()
        with pytest.raises(DeadlineExceeded, match="deadline of 50 ms"):
            await batcher.submit(loaded, np.array([[5.0]]))
        assert time.perf_counter() - started < 0.1

        # With 300 ms: one request fits; a second one arriving meanwhile would need ~400 ms.
        batcher.settings = BatchSettings(1, 2.0, 300.0, inline_below_seconds=0.0)
        first = asyncio.ensure_future(batcher.submit(loaded, np.array([[6.0]])))
        await asyncio.sleep(0.01)
        started = time.perf_counter()
        with pytest.raises(DeadlineExceeded, match="expected wait"):
            await batcher.submit(loaded, np.array([[7.0]]))
        assert time.perf_counter() - started < 0.05  # refused without queueing
        assert (await first).tolist() == [[6.0]]
    finally:
        batcher.close()


_ONE_THREAD_PROBE = """
import asyncio, json, threading
import numpy as np
from sklearn.utils._openmp_helpers import _openmp_effective_n_threads
from threadpoolctl import threadpool_info
from serving.batching import Batcher, BatchSettings
from serving.metrics import ServingMetrics

seen = []
def predict(_, rows):
    pools = {p["internal_api"]: p["num_threads"] for p in threadpool_info()}
    seen.append([threading.current_thread().name, _openmp_effective_n_threads(), pools])
    return rows

class Loaded:
    artifact = None

async def main():
    inline_below = float(__import__("sys").argv[1])
    batcher = Batcher("m", predict, BatchSettings(32, 2.0, 1000.0, inline_below), ServingMetrics())
    for _ in range(3):
        await batcher.submit(Loaded(), np.zeros((1, 2)))
    batcher.close()
    main_pools = {p["internal_api"]: p["num_threads"] for p in threadpool_info()}
    print(json.dumps({"seen": seen, "main": threading.current_thread().name, "main_pools": main_pools}))

asyncio.run(main())
"""


@pytest.mark.parametrize("inline_below", [0.0, 1.0], ids=["worker-thread", "inline"])
def test_predict_uses_one_blas_and_openmp_thread(inline_below: float) -> None:
    """In a process started without OMP_NUM_THREADS (pools default to the cores), predicts still get one."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    out = subprocess.run(
        [sys.executable, "-c", _ONE_THREAD_PROBE, str(inline_below)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(report["seen"]) == 3
    names = [name for name, _, _ in report["seen"]]
    assert names[0].startswith("predict-m")  # the first call is always measured in the thread
    if inline_below == 0.0:
        assert all(name.startswith("predict-m") for name in names)
    else:
        assert names[1:] == [report["main"]] * 2
    for name, openmp, pools in report["seen"]:
        assert openmp == 1 and set(pools.values()) == {1}, (name, openmp, pools)
    if (os.cpu_count() or 1) > 1 and len(os.sched_getaffinity(0)) > 1:
        # Proves the probe can fail: the process's own default is wider than one thread.
        assert max(report["main_pools"].values()) > 1 or inline_below > 0, report


# --- real champions through HTTP ----------------------------------------------------------------


@pytest.fixture(scope="module")
def family_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, tuple[str, Any, Any]]]]:
    """One registered version per forecaster family: family -> (version, estimator, spec)."""
    import mlflow
    import mlflow.models

    from mlops_assets.atmos.families import build_forecaster
    from mlops_assets.atmos.model_io import log_forecaster
    from mlops_assets.resources.mlflow_run import MlflowRun

    root = tmp_path_factory.mktemp("families")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    temps, target, epoch, rh = synthetic_windows(400, 7)
    versions: dict[str, tuple[str, Any, Any]] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mlflow.models, "infer_pip_requirements", lambda *a, fallback=None, **k: list(fallback or []))
        mlflow.set_tracking_uri(uri)
        experiment = mlflow.create_experiment("families", artifact_location=str(root / "artifacts"))
        for family in FAMILIES:
            estimator, spec = build_forecaster({"family": family, **SMALL}, ("rh",))
            X = feature_matrix(spec, temps, epoch, {"rh": rh} if spec.covariates else None)
            estimator.fit(X, target)
            with mlflow.start_run(experiment_id=experiment) as run:
                logged_to = MlflowRun.existing(mlflow.get_tracking_uri(), run.info.run_id)
                info = log_forecaster(logged_to, estimator, spec, X[:2])
            version = str(mlflow.register_model(info.model_uri, MODEL).version)
            versions[family] = (version, estimator, spec)
    mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
    yield uri, versions


def _window(i: int) -> dict[str, Any]:
    rng = np.random.default_rng(i)
    temps = (12 + 6 * np.sin(np.arange(72) / 3.8 + i) + rng.normal(0, 1, 72)).round(3).tolist()
    when = dt.datetime(2013, 3, 1, tzinfo=dt.UTC) + dt.timedelta(hours=37 * i)
    return {
        "time_series": temps,
        "last_observed_at": when.isoformat(),
        "covariates": {"rh": rng.uniform(30, 95, 24).round(2).tolist()},
    }


@pytest.mark.parametrize("family", FAMILIES)
async def test_batched_answers_equal_one_row_predicts_for_every_family(
    family_store: tuple[str, dict[str, tuple[str, Any, Any]]], family: str
) -> None:
    from mlflow.tracking import MlflowClient

    from serving.app import create_app
    from serving.settings import ServingSettings

    uri, versions = family_store
    version, estimator, spec = versions[family]
    MlflowClient(tracking_uri=uri, registry_uri=uri).set_registered_model_alias(MODEL, "champion", version)
    # inline_below_us=0: batch even cheap predicts, so that rows really are predicted together.
    app = create_app(
        ServingSettings(mlflow_tracking_uri=uri, poll_seconds=30, models=(MODEL,), max_wait_ms=20.0, inline_below_us=0)
    )
    bodies = [_window(i) for i in range(48)]
    async with in_loop_client(app) as client:
        await wait_ready(client)
        responses = await asyncio.gather(*(client.put(PATH, json=body) for body in bodies))
        metrics = (await client.get("/metrics")).text
    for body, response in zip(bodies, responses, strict=True):
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["model"]["version"] == version
        when = dt.datetime.fromisoformat(body["last_observed_at"])
        row = feature_row(
            spec, body["time_series"], when, {"rh": body["covariates"]["rh"]} if spec.covariates else None
        )
        expected = np.asarray(estimator.predict(row))[0]
        np.testing.assert_allclose(answer["result"], expected, rtol=0, atol=1e-9)
    count, total = _histogram(metrics, "serving_batch_size", MODEL)
    assert total == len(bodies) and count < len(bodies), "no batch held more than one request"
    assert _histogram(metrics, "serving_queue_wait_seconds", MODEL)[0] == len(bodies)
    assert _histogram(metrics, "serving_predict_seconds", MODEL)[0] == count


async def test_batched_insurance_answers_equal_the_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow
    import mlflow.models

    from mlops_assets.insurance.dataset import validate_policies
    from mlops_assets.insurance.families import FEATURES, SKOPS_TRUSTED_TYPES, build_insurance_model, split_policies
    from serving.app import create_app
    from serving.settings import ServingSettings

    monkeypatch.setattr(mlflow.models, "infer_pip_requirements", lambda *a, fallback=None, **k: list(fallback or []))
    policies = validate_policies(pd.read_csv(PUBLIC_DATASET, dtype=str)).valid
    split = split_policies(policies)
    pipeline = build_insurance_model({"family": "gbm"}).fit(split.train[list(FEATURES)], split.train["charges"])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(pipeline, name="model", skops_trusted_types=SKOPS_TRUSTED_TYPES)
    version = mlflow.register_model(info.model_uri, "insurance_charges").version
    mlflow.MlflowClient(uri).set_registered_model_alias("insurance_charges", "champion", version)

    rows = split.test[list(FEATURES)].head(40)
    bodies = [
        {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for row in rows.to_dict(orient="records")
    ]
    app = create_app(
        ServingSettings(
            mlflow_tracking_uri=uri, poll_seconds=30, models=("insurance_charges",), max_wait_ms=20.0, inline_below_us=0
        )
    )
    async with in_loop_client(app) as client:
        await wait_ready(client)
        responses = await asyncio.gather(*(client.put("/predict/insurance", json=body) for body in bodies))
        metrics = (await client.get("/metrics")).text
    expected = pipeline.predict(rows)
    got = np.array([r.json()["result"] for r in responses])
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
    count, total = _histogram(metrics, "serving_batch_size", "insurance_charges")
    assert total == len(bodies) and count < len(bodies)
