"""End to end: a registered forecaster answers through the service's own code, PredictionLog writes what
it served, the accuracy asset scores those days, and an independent computation agrees.

The service does not call PredictionLog yet (serving/app.py is wired by its owner), so requests go
through `serving.models.atmos_temperature` (complete -> build_input -> predict -> shape_response) and
`served_record`, exactly the calls the wiring makes, without HTTP.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from pathlib import Path

import dagster as dg
import mlflow
import mlflow.models
import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry
from sklearn.linear_model import Ridge

from mlops_assets.ingestion.sources import SampleObservationSource, load_sample_observations
from mlops_assets.ml.forecast_features import FeatureSpec
from mlops_assets.ml.metrics import mae
from mlops_assets.ml.model_io import log_forecaster
from mlops_assets.ml.windows import build_training_windows
from mlops_assets.monitoring.assets import atmos_forecast_accuracy, read_accuracy
from mlops_assets.monitoring.resources import MonitoringSettings
from mlops_assets.monitoring.sensors import champion_degradation_sensor
from mlops_assets.resources.mlflow_registry import MlflowRegistry
from mlops_assets.resources.warehouse import WarehouseResource
from serving.models import ModelRef
from serving.models import atmos_temperature as served
from serving.prediction_log import PredictionLog, served_record

STATION = "JFK"
MODEL = "atmos_temperature"
DAYS = ["2013-11-20", "2013-11-21", "2013-11-22", "2013-11-23"]


@pytest.mark.slow
def test_served_forecasts_are_scored_like_an_independent_computation(
    tmp_path: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sample = load_sample_observations(STATION)
    observed = pd.Series(sample["tmp"].to_numpy(), index=pd.DatetimeIndex(sample["time"])).dropna()

    # A real champion: ridge on the 72 lags, logged with the project's contract, test MAE as a tag.
    windows = build_training_windows(sample[["time", "tmp"]])
    spec = FeatureSpec()
    estimator = Ridge(alpha=1.0).fit(windows.train.features(spec), windows.train.targets)
    test_mae = mae(estimator.predict(windows.test.features(spec)), windows.test.targets)
    monkeypatch.setattr(mlflow.models, "infer_pip_requirements", lambda *a, fallback=None, **k: list(fallback or []))
    mlflow.set_tracking_uri(mlflow_uri)
    try:
        experiment = mlflow.create_experiment("e2e", artifact_location=str(tmp_path / "artifacts"))
        with mlflow.start_run(experiment_id=experiment) as run:
            info = log_forecaster(estimator, spec, windows.train.features(spec)[:2])
        client = mlflow.MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
        client.create_registered_model(MODEL)
        version = str(client.create_model_version(MODEL, info.model_uri, run_id=run.info.run_id, tags={"test_mae": f"{test_mae:.4f}"}).version)
        client.set_registered_model_alias(MODEL, "champion", version)
        forecaster = served.load(f"models:/{MODEL}@champion")
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]

    # Serve every 2 hours over the days, plus one forecast whose hours are not stored yet.
    warehouse = WarehouseResource(url=f"sqlite:///{tmp_path / 'warehouse.db'}")
    last_stored = pd.Timestamp("2013-11-24 12:00", tz="UTC")
    stored = sample[(sample["time"] >= "2013-11-10") & (sample["time"] <= last_stored)]
    warehouse.replace_observations(STATION, pd.Timestamp("2013-11-10", tz="UTC"), last_stored + pd.Timedelta(hours=1), stored)
    issued = list(pd.date_range("2013-11-20 00:00", "2013-11-23 22:00", freq="2h", tz="UTC"))
    served_forecasts: list[tuple[pd.Timestamp, np.ndarray]] = []
    registry = CollectorRegistry()

    async def serve_and_log() -> int:
        log = PredictionLog(warehouse.url, registry=registry, batch_size=16)
        sent = 0
        async with log.running():
            for last in issued:
                inputs = observed.reindex(pd.date_range(end=last, periods=72, freq="h"))
                if inputs.isna().any():
                    continue
                body = served.AtmosTemperatureRequest(time_series=inputs.round(2).tolist(), last_observed_at=last.to_pydatetime())
                window = served.complete(body)
                answer = served.shape_response(
                    served.predict(forecaster, served.build_input(forecaster, window)), ModelRef(MODEL, version, "champion"), window
                )
                record = served_record(MODEL, uuid.uuid4().hex, window, answer, dt.datetime.now(dt.timezone.utc))
                assert record is not None and log.enqueue(record)
                served_forecasts.append((last, np.asarray(answer.result)))
                sent += 1
                await asyncio.sleep(0)
        return sent

    sent = asyncio.run(serve_and_log())
    assert sent >= 40
    assert registry.get_sample_value("serving_prediction_log_written_total") == sent

    resources = {"source": SampleObservationSource(station_id=STATION), "warehouse": warehouse, "registry": MlflowRegistry(tracking_uri=mlflow_uri)}
    tags = {"dagster/asset_partition_range_start": DAYS[0], "dagster/asset_partition_range_end": DAYS[-1]}
    with dg.instance_for_test() as instance:
        result = dg.materialize([atmos_forecast_accuracy], resources=resources, tags=tags, instance=instance)
        assert result.success
        metadata = result.asset_materializations_for_node("atmos_forecast_accuracy")[0].metadata

    # Independent: per forecast, the 24 hours after its last observed hour in the raw sample.
    expected: dict[str, list[np.ndarray]] = {}
    pending = 0
    for last, forecast in served_forecasts:
        hours = pd.date_range(last + pd.Timedelta(hours=1), periods=24, freq="h")
        if hours[-1] > last_stored:
            pending += 1
            continue
        truth = observed.reindex(hours).to_numpy()
        if np.isnan(truth).any():
            continue
        expected.setdefault(str(last.date()), []).append(np.abs(forecast - truth))
    stored_rows = read_accuracy(warehouse.engine, MODEL).set_index("day")
    assert [str(d) for d in stored_rows.index] == sorted(expected)
    for day, errors in expected.items():
        row = stored_rows.loc[dt.date.fromisoformat(day)]
        matrix = np.vstack(errors)
        assert row["forecasts"] == len(errors)
        assert row["mae"] == pytest.approx(matrix.mean(), abs=1e-6)
        assert row["mae_h01"] == pytest.approx(matrix[:, 0].mean(), abs=1e-6)
        assert row["mae_h24"] == pytest.approx(matrix[:, 23].mean(), abs=1e-6)
    assert metadata["forecasts_pending"].value == pending >= 1
    realized = float(np.vstack([e for errors in expected.values() for e in errors]).mean())
    print(f"e2e: {sent} forecasts served, realized MAE {realized:.3f} vs test MAE {test_mae:.3f}")

    # A realized MAE near the test MAE is not a degradation; a strict margin makes it one.
    with dg.instance_for_test() as instance:
        base = {"warehouse": warehouse, "registry": MlflowRegistry(tracking_uri=mlflow_uri)}
        with dg.build_sensor_context(instance=instance, resources={**base, "monitoring": MonitoringSettings(degradation_margin=1.0)}) as context:
            assert isinstance(champion_degradation_sensor(context), dg.SkipReason)
        daily = [float(np.vstack(e).mean()) for _, e in sorted(expected.items())]
        tight = max(0.0, min(daily) / test_mae - 1 - 0.01)
        with dg.build_sensor_context(instance=instance, resources={**base, "monitoring": MonitoringSettings(degradation_margin=tight)}) as context:
            request = champion_degradation_sensor(context)
        if min(daily) > test_mae:
            assert isinstance(request, dg.RunRequest) and request.job_name == "atmos_training"
        else:
            assert isinstance(request, dg.SkipReason)
