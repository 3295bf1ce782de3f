"""Shared fixtures: real SQLite and PostgreSQL warehouses, a real MLflow store, quiet telemetry."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# An unreachable tracking server must fail fast in tests, not after minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")

#: The machine's PostgreSQL (trust auth); .ci/run starts it when it is down.
POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


#: The configuration variables of the pipeline and the service a test must not inherit from the shell
#: (cleared in-process below; subprocess tests leave them out of the child's environment).
PIPELINE_VARIABLES = (
    "ATMOS_SOURCE",
    "ATMOS_STATION",
    "ATMOS_CSV_PATH",
    "ATMOS_TIMEZONE",
    "ATMOS_CSV_COLUMNS",
    "TUNING_NUM_SAMPLES",
    "DIGITS_DATA_PATH",
    "ALERT_WEBHOOK_URL",
    "KMA_SERVICE_KEY",
    "KMA_ASOS_ENDPOINT",
    "WAREHOUSE_URL",
    "MLFLOW_TRACKING_URI",
    "RAY_ADDRESS",
    "DAGSTER_HOME",
    "INSURANCE_CSV_PATH",
)


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every test starts from the embedded defaults in its own folder, whatever the shell exported."""
    for name in PIPELINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


@contextmanager
def _fresh_database(prefix: str) -> Iterator[str]:
    """A new database on the real PostgreSQL, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as error:
        pytest.fail(f"PostgreSQL at {POSTGRES_ADMIN_URL} is not reachable (start it: see README): {error}")
    try:
        yield sa.make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh database on the real PostgreSQL for this test session (warehouse, Dagster)."""
    with _fresh_database("mlops_test") as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def warehouse_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The warehouse on SQLite and on the real PostgreSQL (tables emptied between tests)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'warehouse.db'}"
        return
    url = request.getfixturevalue("postgres_database")
    yield url
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        for table in ("atmos_observations", "atmos_features", "insurance_policies"):
            connection.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
    engine.dispose()


@pytest.fixture
def mlflow_uri(tmp_path: Path) -> str:
    """A real MLflow SQLite store in the test's folder (artifacts beside it)."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="session")
def local_ray() -> Iterator[None]:
    """One local Ray for the session: searches reuse it instead of paying 3-6 s of start-up each."""
    import ray

    from mlops_assets.tuning.runner import TRIAL_ENV

    ray.init(
        address="local", num_cpus=2, include_dashboard=False, runtime_env={"env_vars": TRIAL_ENV}, log_to_driver=False
    )
    yield
    ray.shutdown()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` on its own PostgreSQL database (job runner off: it costs ~3 GB)."""
    with _fresh_database("mlops_mlflow") as database:
        yield from _run_mlflow_server(database, tmp_path_factory)


def _run_mlflow_server(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import subprocess
    import sys
    import time

    import requests

    port = _free_port()
    artifacts = tmp_path_factory.mktemp("mlflow-artifacts")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        database,
        "--artifacts-destination",
        str(artifacts),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log = (tmp_path_factory.mktemp("mlflow-log") / "server.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if requests.get(f"{uri}/health", timeout=2).ok:
                break
        except requests.RequestException:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            pytest.fail(f"mlflow server did not start; see {log.name}")
        time.sleep(0.5)
    yield uri
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()
