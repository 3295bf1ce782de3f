"""Helpers shared by the serving tests (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from mlops_assets.atmos.forecast_features import HORIZON_HOURS, INPUT_HOURS, FeatureSpec

MODEL = "atmos_temperature"
ALIAS = "champion"
PATH = f"/predict/{MODEL}"


@dataclass(frozen=True)
class TemplateVersion:
    version: str
    spec: FeatureSpec | None
    estimator: Any


@dataclass(frozen=True)
class Template:
    db: Path
    versions: dict[str, TemplateVersion]


@dataclass
class Store:
    """One test's MLflow store: a SQLite file it may move aliases in, or break and restore."""

    uri: str
    db: Path
    versions: dict[str, TemplateVersion]

    def client(self) -> Any:
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def set_champion(self, version: str) -> None:
        self.client().set_registered_model_alias(MODEL, ALIAS, version)

    def delete_champion(self) -> None:
        self.client().delete_registered_model_alias(MODEL, ALIAS)

    def expected(self, version: str, rows: np.ndarray) -> np.ndarray:
        """What `version`'s estimator answers for `rows`, computed here, not by the service."""
        return np.asarray(self.versions[version].estimator.predict(rows))


def synthetic_windows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Daily-cycle temperatures with noise: (temps (n, 72), targets (n, 24), epoch hours (n,), rh (n, 24))."""
    rng = np.random.default_rng(seed)
    start = rng.integers(0, 24 * 365, size=n)
    hours = start[:, None] + np.arange(INPUT_HOURS + HORIZON_HOURS)[None, :]
    series = 12 + 8 * np.sin(2 * np.pi * (hours % 24) / 24) + rng.normal(0, 1.5, size=hours.shape).cumsum(axis=1) * 0.3
    rh = rng.uniform(30, 95, size=(n, HORIZON_HOURS))
    last_epoch_hours = 376_944.0 + start + INPUT_HOURS - 1  # hours since 1970 of the last input hour, 2013
    return series[:, :INPUT_HOURS], series[:, INPUT_HOURS:], last_epoch_hours, rh


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def series(offset: float = 0.0) -> list[float]:
    return [round(10.0 + offset + 5.0 * np.sin(h / 4.0), 3) for h in range(INPUT_HOURS)]


async def wait_ready(client: Any, timeout: float = 30.0) -> dict[str, Any]:
    """Poll /ready until 200 (the first load runs in the background after startup)."""
    import anyio

    with anyio.fail_after(timeout):
        while True:
            response = await client.get("/ready")
            if response.status_code == 200:
                return dict(response.json())
            await anyio.sleep(0.05)


@contextlib.asynccontextmanager
async def in_loop_client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app's lifespan and an httpx client in the test's own event loop.

    Litestar's AsyncTestClient sends each request through a blocking portal, so requests
    `gather`ed from a test run one after another; this client really interleaves them.
    """
    async with app.lifespan():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serving.test") as client:
            yield client


@contextlib.contextmanager
def fluent_mlflow_at(uri: str) -> Iterator[None]:
    """MLflow's fluent API (start_run, log_model, register_model) on `uri` for one block, then unset.

    Both URIs, and their variables restored afterwards: a pipeline step run earlier in the session
    (Ray's MLflowLoggerCallback, in the driver) may have left a process-wide registry URI (and MLFLOW_REGISTRY_URI)
    behind, and `register_model` would follow it into that step's store.
    """
    import mlflow

    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("MLFLOW_TRACKING_URI", uri)  # set_*_uri write these too; restored on exit
        environment.setenv("MLFLOW_REGISTRY_URI", uri)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
            mlflow.set_registry_uri(None)  # type: ignore[arg-type]


def start_mlflow_server(db: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """A real `mlflow server` on the SQLite store `db`, serving on 127.0.0.1:`port` (job runner off)."""
    env = dict(os.environ)
    env.update(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])  # it execs uvicorn
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_REGISTRY_URI", None)
    with log.open("ab") as out:
        process = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("mlflow")),
                "server",
                "--backend-store-uri",
                f"sqlite:///{db}",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 90
    while True:
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.2)


def stop_mlflow_server(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the group we started (the CLI and its uvicorn child), SIGKILL if it lingers."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
