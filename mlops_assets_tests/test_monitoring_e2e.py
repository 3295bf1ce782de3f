"""End to end (issue 13): the real service answers forecasts for past days of the bundled sample and
logs them, the accuracy asset scores those days, and an independent computation agrees.

`mlops-assets serve` runs as a subprocess on a free port against a real MLflow store and a SQLite
warehouse; it is stopped with SIGTERM (its lifespan flushes the prediction log) before
`atmos_forecast_accuracy` is materialized through `dg.materialize` on the same warehouse. The test
computes the realized MAE itself from the HTTP answers and the raw sample, per day and lead hour.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import mlflow
import mlflow.models
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from sklearn.linear_model import Ridge

from mlops_assets.atmos.dataset import build_training_windows
from mlops_assets.atmos.forecast_features import FeatureSpec
from mlops_assets.atmos.metrics import mae
from mlops_assets.atmos.model_io import log_forecaster
from mlops_assets.atmos.source import SampleObservationSource, load_sample_observations
from mlops_assets.monitoring.assets import atmos_forecast_accuracy, read_accuracy
from mlops_assets.monitoring.resources import MonitoringSettings
from mlops_assets.monitoring.sensors import champion_degradation_sensor
from mlops_assets.resources.mlflow_registry import MlflowRegistry
from mlops_assets.resources.mlflow_run import MlflowRun
from mlops_assets.resources.warehouse import WarehouseResource

STATION = "JFK"
MODEL = "atmos_temperature"
DAYS = ["2013-11-20", "2013-11-21", "2013-11-22", "2013-11-23"]
#: The champion moves from the first version to the second before this window (mid-day: that day
#: has rows for both versions); the second then has the 3 days the degradation sensor needs.
SWAP_AT = pd.Timestamp("2013-11-21 12:00", tz="UTC")


HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _call(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def _wait_serving(port: int, version: str, timeout: float = 60.0) -> None:
    """Until /metrics says the worker serves `version` (a probe request would be logged too)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = _call(port, "GET", "/metrics")[2].decode()
        if [str(int(float(v))) for v in re.findall(r"^serving_model_version\{[^}]*\} (\S+)$", text, re.M)] == [version]:
            return
        time.sleep(0.2)
    pytest.fail(f"the service did not switch to version {version} within {timeout} s")


def _wait_ready(process: subprocess.Popen[bytes], port: int, log_path: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"mlops-assets serve exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if _call(port, "GET", "/ready")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    pytest.fail(f"mlops-assets serve not ready after {timeout} s:\n{log_path.read_text()[-3000:]}")


@pytest.mark.slow
def test_served_forecasts_are_scored_like_an_independent_computation(
    tmp_path: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sample = load_sample_observations(STATION)
    observed = pd.Series(sample["tmp"].to_numpy(), index=pd.DatetimeIndex(sample["time"])).dropna()

    # Two real versions: ridges on the 72 lags, logged with the project's contract, test MAE as a tag.
    windows = build_training_windows(sample[["time", "tmp"]])
    spec = FeatureSpec()
    estimators = [Ridge(alpha=alpha).fit(windows.train.features(spec), windows.train.targets) for alpha in (1.0, 1e4)]
    test_maes = [mae(e.predict(windows.test.features(spec)), windows.test.targets) for e in estimators]
    monkeypatch.setattr(mlflow.models, "infer_pip_requirements", lambda *a, fallback=None, **k: list(fallback or []))
    mlflow.set_tracking_uri(mlflow_uri)
    try:
        experiment = mlflow.create_experiment("e2e", artifact_location=str(tmp_path / "artifacts"))
        client = mlflow.MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
        client.create_registered_model(MODEL)
        versions = []
        for estimator, test_mae in zip(estimators, test_maes, strict=True):
            with mlflow.start_run(experiment_id=experiment) as run:
                logged_to = MlflowRun.existing(mlflow.get_tracking_uri(), run.info.run_id)
                info = log_forecaster(logged_to, estimator, spec, windows.train.features(spec)[:2])
            model_version = client.create_model_version(
                MODEL, info.model_uri, run_id=run.info.run_id, tags={"test_mae": f"{test_mae:.4f}"}
            )
            versions.append(str(model_version.version))
        client.set_registered_model_alias(MODEL, "champion", versions[0])
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]

    # The real service, logging to the warehouse the asset reads.
    warehouse = WarehouseResource(url=f"sqlite:///{tmp_path / 'warehouse.db'}")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SERVING_", "PROMETHEUS_"))}
    env.update(
        MLFLOW_TRACKING_URI=mlflow_uri,
        WAREHOUSE_URL=warehouse.url,
        SERVING_MODELS=MODEL,
        SERVING_PREDICTION_LOG="on",
        SERVING_POLL_SECONDS="1",
        MLFLOW_DISABLE_TELEMETRY="true",
        OMP_NUM_THREADS="1",
    )
    log_path = tmp_path / "serve.log"
    command = [
        str(Path(sys.executable).with_name("mlops-assets")),
        "serve",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with log_path.open("wb") as out:
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)

    # Serve every 2 hours over the days (inputs: the 72 stored hours before), plus forecasts whose
    # hours are not stored yet (pending).
    last_stored = pd.Timestamp("2013-11-24 12:00", tz="UTC")
    issued = list(pd.date_range("2013-11-20 00:00", "2013-11-23 22:00", freq="2h", tz="UTC"))
    served: list[tuple[pd.Timestamp, np.ndarray, str, str]] = []
    try:
        _wait_ready(process, port, log_path)
        _wait_serving(port, versions[0])
        for last in issued:
            if last == SWAP_AT:
                client.set_registered_model_alias(MODEL, "champion", versions[1])
                _wait_serving(port, versions[1])
            inputs = observed.reindex(pd.date_range(end=last, periods=72, freq="h"))
            if inputs.isna().any():
                continue
            body = json.dumps({"time_series": inputs.round(2).tolist(), "last_observed_at": last.isoformat()}).encode()
            status, headers, raw = _call(port, "PUT", f"/predict/{MODEL}", body)
            assert status == 200, raw
            answer = json.loads(raw)
            assert answer["model"]["version"] == versions[last >= SWAP_AT]
            served.append(
                (
                    last,
                    np.asarray(answer["result"], dtype="float64"),
                    headers["x-request-id"],
                    answer["model"]["version"],
                )
            )
    finally:
        process.send_signal(signal.SIGTERM)  # graceful: the lifespan flushes the prediction log
        try:
            returncode = process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
            pytest.fail(f"mlops-assets serve did not stop on SIGTERM:\n{log_path.read_text()[-3000:]}")
    # uvicorn re-raises SIGTERM after a graceful shutdown of a single process: -15 is a clean stop too.
    server_log = log_path.read_text()
    assert returncode in (0, -signal.SIGTERM) and "Application shutdown complete" in server_log, server_log[-3000:]
    assert len(served) >= 40

    # Every answer is in served_forecasts, under the id the service returned, with what it answered.
    engine = sa.create_engine(warehouse.url)
    try:
        logged = pd.read_sql(
            sa.text("SELECT request_id, model_version, last_observed_at, forecast FROM served_forecasts"), engine
        )
    finally:
        engine.dispose()
    assert sorted(logged["request_id"]) == sorted(request_id for _, _, request_id, _ in served)
    by_id = logged.set_index("request_id")
    for last, forecast, request_id, version in served:
        row = by_id.loc[request_id]
        assert row["model_version"] == version
        assert pd.Timestamp(row["last_observed_at"]).tz_localize(None) == last.tz_localize(None)
        np.testing.assert_array_equal(np.asarray(json.loads(row["forecast"])), forecast)

    stored = sample[(sample["time"] >= "2013-11-10") & (sample["time"] <= last_stored)]
    warehouse.replace_observations(
        STATION, pd.Timestamp("2013-11-10", tz="UTC"), last_stored + pd.Timedelta(hours=1), stored
    )

    resources = {
        "source": SampleObservationSource(station_id=STATION),
        "warehouse": warehouse,
        "registry": MlflowRegistry(tracking_uri=mlflow_uri),
    }
    tags = {"dagster/asset_partition_range_start": DAYS[0], "dagster/asset_partition_range_end": DAYS[-1]}
    with dg.instance_for_test() as instance:
        result = dg.materialize([atmos_forecast_accuracy], resources=resources, tags=tags, instance=instance)
        assert result.success
        metadata = result.asset_materializations_for_node("atmos_forecast_accuracy")[0].metadata

    # Independent: per forecast, the 24 hours after its last observed hour in the raw sample.
    expected: dict[tuple[str, str], list[np.ndarray]] = {}
    pending = 0
    for last, forecast, _, version in served:
        hours = pd.date_range(last + pd.Timedelta(hours=1), periods=24, freq="h")
        if hours[-1] > last_stored:
            pending += 1
            continue
        truth = observed.reindex(hours).to_numpy()
        if np.isnan(truth).any():
            continue
        expected.setdefault((version, str(last.date())), []).append(np.abs(forecast - truth))
    stored_rows = read_accuracy(warehouse.engine, MODEL).set_index(["model_version", "day"])
    assert sorted((v, str(d)) for v, d in stored_rows.index) == sorted(expected)
    assert (versions[0], "2013-11-21") in expected and (versions[1], "2013-11-21") in expected  # one day, two versions
    for (version, day), errors in expected.items():
        row = stored_rows.loc[(version, dt.date.fromisoformat(day))]
        matrix = np.vstack(errors)
        assert row["forecasts"] == len(errors)
        assert row["mae"] == pytest.approx(matrix.mean(), abs=1e-6)
        for lead in range(24):
            assert row[f"mae_h{lead + 1:02d}"] == pytest.approx(matrix[:, lead].mean(), abs=1e-6)
    assert metadata["forecasts_pending"].value == pending >= 1
    for version, test_mae in zip(versions, test_maes, strict=True):
        realized = float(np.vstack([e for (v, _), errors in expected.items() if v == version for e in errors]).mean())
        print(
            f"e2e: v{version} realized MAE {realized:.3f} vs test MAE {test_mae:.3f} ({len(served)} forecasts served "
            "in all)"
        )

    # A realized MAE near the test MAE is not a degradation; a strict margin makes it one.
    with dg.instance_for_test() as instance:
        base = {"warehouse": warehouse, "registry": MlflowRegistry(tracking_uri=mlflow_uri)}
        with dg.build_sensor_context(
            instance=instance, resources={**base, "monitoring": MonitoringSettings(degradation_margin=1.0)}
        ) as context:
            assert isinstance(champion_degradation_sensor(context), dg.SkipReason)
        # The champion is the second version now: its 3 scored days against its own test MAE.
        test_mae = test_maes[1]
        daily = [float(np.vstack(e).mean()) for (v, _), e in sorted(expected.items()) if v == versions[1]]
        assert len(daily) == 3
        tight = max(0.0, min(daily) / test_mae - 1 - 0.01)
        with dg.build_sensor_context(
            instance=instance, resources={**base, "monitoring": MonitoringSettings(degradation_margin=tight)}
        ) as context:
            request = champion_degradation_sensor(context)
        if min(daily) > test_mae:
            assert isinstance(request, dg.RunRequest) and request.job_name == "atmos_training"
        else:
            assert isinstance(request, dg.SkipReason)
