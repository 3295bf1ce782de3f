"""Monitoring: scoring and drift (pure), the accuracy asset and the drift check on real warehouses and MLflow."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from mlops_assets.atmos.source import SampleObservationSource, load_sample_observations
from mlops_assets.monitoring import drift
from mlops_assets.monitoring.accuracy import observed_temperatures, score_forecasts
from mlops_assets.monitoring.assets import atmos_forecast_accuracy, read_accuracy
from mlops_assets.monitoring.checks import (
    ServedInputs,
    evaluate_served_drift,
    read_served_inputs,
    training_hourly_values,
)
from mlops_assets.monitoring.resources import MonitoringSettings
from mlops_assets.monitoring.served_log import ServedForecast, create_warehouse_engine, ensure_tables, insert_served
from mlops_assets.resources.mlflow_registry import MlflowRegistry
from mlops_assets.resources.warehouse import WarehouseResource
from mlops_assets_tests.conftest import _fresh_database

UTC = dt.UTC
STATION = "JFK"


# -- pure scoring -----------------------------------------------------------------------------


def hourly(start: str, values: list[float]) -> pd.Series:
    index = pd.date_range(start, periods=len(values), freq="h", tz="UTC")
    return pd.Series(values, index=index, dtype="float64")


def test_scoring_counts_pending_and_incomplete_and_averages_lead_hours() -> None:
    observed = hourly("2013-06-01 00:00", [float(h) for h in range(60)])
    base = pd.Timestamp("2013-06-01 00:00", tz="UTC")
    forecasts = pd.DataFrame(
        {
            "model_version": ["1", "1", "2", "1", "1"],
            "last_observed_at": [
                base,
                base + pd.Timedelta(hours=1),
                base,
                base + pd.Timedelta(hours=40),
                base + pd.Timedelta(minutes=30),
            ],
            "forecast": [
                json.dumps([h + 1 + 2.0 for h in range(24)]),  # always 2 too warm
                [h + 2 - (h % 2) for h in range(24)],  # exact on even leads, 1 too cold on odd
                [h + 1 for h in range(24)],  # perfect
                [0.0] * 24,  # ends at hour 64 > last observation 59: pending
                [0.0] * 24,  # off the hour: no observation at its instants
            ],
        }
    )
    result = score_forecasts(forecasts, observed)
    assert (result.scored, result.pending, result.incomplete) == (3, 1, 1)
    rows = result.rows.set_index("model_version")
    assert rows.loc["1", "forecasts"] == 2 and rows.loc["2", "forecasts"] == 1
    assert rows.loc["1", "mae_h01"] == pytest.approx((2 + 0) / 2)
    assert rows.loc["1", "mae_h02"] == pytest.approx((2 + 1) / 2)
    assert rows.loc["1", "mae"] == pytest.approx((2 * 24 + 12) / 48)
    assert rows.loc["2", "mae"] == 0.0
    assert result.pending_by_version == {"1": 1}


def test_qc_flagged_observation_makes_a_forecast_incomplete() -> None:
    times = pd.date_range("2013-06-01", periods=30, freq="h", tz="UTC")
    frame = pd.DataFrame({"time": times, "tmp": np.arange(30.0), "tmp_qc": pd.array([0] * 30, dtype="Int16")})
    frame.loc[5, "tmp_qc"] = 1
    forecasts = pd.DataFrame({"model_version": ["1"], "last_observed_at": [times[0]], "forecast": [[0.0] * 24]})
    result = score_forecasts(forecasts, observed_temperatures(frame))
    assert (result.scored, result.incomplete) == (0, 1)


def test_wrong_forecast_length_is_an_error() -> None:
    forecasts = pd.DataFrame(
        {"model_version": ["1"], "last_observed_at": [pd.Timestamp("2013-06-01", tz="UTC")], "forecast": ["[1, 2]"]}
    )
    with pytest.raises(ValueError, match="24 values"):
        score_forecasts(forecasts, hourly("2013-06-01", [0.0] * 30))


# -- pure drift -------------------------------------------------------------------------------


def test_psi_and_ks_tell_a_shift_from_noise() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(10, 5, 5000)
    same = drift.compare(reference, rng.normal(10, 5, 500))
    shifted = drift.compare(reference, rng.normal(16, 5, 500))
    assert not same.drifted and same.psi < 0.1
    assert shifted.drifted and shifted.psi > 0.25 and shifted.ks_pvalue < 1e-6
    assert drift.psi(reference, reference) == pytest.approx(0.0, abs=1e-9)


def test_hourly_values_counts_each_hour_once_latest_window_wins() -> None:
    windows = np.array([[1.0, 2.0, 3.0], [20.0, 30.0, 40.0]])
    values = drift.hourly_values(windows, np.array([102, 103]))  # hours 100..102 and 101..103
    assert values.tolist() == [1.0, 20.0, 30.0, 40.0]
    # Ordered by `order`, the first window is the later one: its values win where they overlap.
    assert drift.hourly_values(windows, np.array([102, 103]), order=np.array([2, 1])).tolist() == [1.0, 2.0, 3.0, 40.0]


# -- the accuracy asset on real warehouses and a real MLflow store --------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[WarehouseResource]:
    """A fresh warehouse per test (own PostgreSQL database: the monitoring tables must start empty)."""
    if request.param == "sqlite":
        yield WarehouseResource(url=f"sqlite:///{tmp_path / 'warehouse.db'}")
    else:
        with _fresh_database("mlops_monitoring") as url:
            yield WarehouseResource(url=url)


def register_versions(uri: str, test_maes: dict[str, float], tmp_path: Path) -> dict[str, str]:
    """Real registered versions with runs and `test_mae` tags; returns version -> run id."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("monitoring-tests", artifact_location=str(tmp_path / "artifacts"))
    client.create_registered_model("atmos_temperature")
    runs = {}
    for version, test_mae in test_maes.items():
        run = client.create_run(experiment)
        created = client.create_model_version(
            "atmos_temperature",
            f"{run.info.artifact_uri}/model",
            run_id=run.info.run_id,
            tags={"test_mae": str(test_mae)},
        )
        assert str(created.version) == version
        runs[version] = run.info.run_id
    return runs


def served_rows(
    observed: pd.Series, issued: list[pd.Timestamp], version: str, bias: np.ndarray, prefix: str
) -> list[ServedForecast]:
    """Forecasts equal to the observed hours plus `bias` per lead hour (inputs: the 72 observed hours)."""
    rows = []
    for i, last in enumerate(issued):
        hours = [last + pd.Timedelta(hours=h) for h in range(1, 25)]
        truth = observed.reindex(pd.DatetimeIndex(hours)).fillna(0.0).to_numpy()
        inputs = observed.reindex(pd.date_range(end=last, periods=72, freq="h")).fillna(0.0).to_numpy()
        rows.append(
            ServedForecast(
                request_id=f"{prefix}-{i}",
                model_name="atmos_temperature",
                model_version=version,
                received_at=last.to_pydatetime() + dt.timedelta(minutes=5),
                last_observed_at=last.to_pydatetime(),
                forecast=(truth + bias).tolist(),
                inputs=inputs.tolist(),
            )
        )
    return rows


def independent_mae(rows: list[ServedForecast], observed: pd.Series) -> dict[tuple[str, dt.date], tuple[int, float]]:
    """Plain loops: (version, UTC day) -> (forecasts, mean absolute error over all 24 x n values)."""
    sums: dict[tuple[str, dt.date], list[float]] = {}
    for row in rows:
        errors = []
        for h, value in enumerate(row.forecast, start=1):
            hour = pd.Timestamp(row.last_observed_at) + pd.Timedelta(hours=h)
            if hour not in observed.index:
                break
            errors.append(abs(value - observed[hour]))
        else:
            sums.setdefault((row.model_version, row.last_observed_at.astimezone(UTC).date()), []).append(
                sum(errors) / 24
            )
    return {key: (len(v), sum(v) / len(v)) for key, v in sums.items()}


def test_accuracy_asset_scores_replaces_and_logs_to_mlflow(
    warehouse: WarehouseResource, mlflow_uri: str, tmp_path: Path
) -> None:
    import mlflow

    sample = load_sample_observations(STATION)
    sample = sample[(sample["time"] >= "2013-05-28") & (sample["time"] < "2013-06-05")]
    start, end = pd.Timestamp("2013-05-28", tz="UTC"), pd.Timestamp("2013-06-05", tz="UTC")
    warehouse.replace_observations(STATION, start, end, sample)
    observed = observed_temperatures(warehouse.read_observations(STATION))
    runs = register_versions(mlflow_uri, {"1": 1.0, "2": 2.5}, tmp_path)

    rng = np.random.default_rng(3)
    day1 = [pd.Timestamp("2013-06-02 06:00", tz="UTC") + pd.Timedelta(hours=h) for h in range(0, 18, 3)]
    day2 = [pd.Timestamp("2013-06-03 00:00", tz="UTC") + pd.Timedelta(hours=h) for h in range(0, 24, 2)]
    rows = (
        served_rows(observed, day1, "1", rng.normal(0, 1.5, 24), "a")
        + served_rows(observed, day2, "1", np.linspace(0.5, 3.0, 24), "b")
        + served_rows(observed, day2[:5], "2", -np.ones(24), "c")
        # Issued at 2013-06-04 02:00 UTC: its last hour is after the last stored observation.
        + served_rows(observed, [pd.Timestamp("2013-06-04 02:00", tz="UTC")], "1", np.zeros(24), "p")
    )
    # A forecast reaching into a gap (an observation deleted below) is not scored either.
    gap_row = served_rows(observed, [pd.Timestamp("2013-06-02 00:00", tz="UTC")], "2", np.zeros(24), "g")[0]
    engine = warehouse.engine
    ensure_tables(engine)
    insert_served(engine, [r.row() for r in [*rows, gap_row]])
    gap_hour = pd.Timestamp("2013-06-02 05:00", tz="UTC")  # only the gap row's hours include it
    with engine.begin() as connection:
        from mlops_assets.resources.warehouse import atmos_observations as table

        connection.execute(sa.delete(table).where(table.c.station == STATION, table.c.time == gap_hour.to_pydatetime()))
    observed = observed.drop(gap_hour)
    expected = independent_mae(rows, observed)

    resources = {
        "source": SampleObservationSource(station_id=STATION),
        "warehouse": warehouse,
        "registry": MlflowRegistry(tracking_uri=mlflow_uri),
    }
    tags = {"dagster/asset_partition_range_start": "2013-06-02", "dagster/asset_partition_range_end": "2013-06-04"}
    with dg.instance_for_test() as instance:
        result = dg.materialize([atmos_forecast_accuracy], resources=resources, tags=tags, instance=instance)
        assert result.success
        metadata = result.asset_materializations_for_node("atmos_forecast_accuracy")[0].metadata
        again = dg.materialize([atmos_forecast_accuracy], resources=resources, tags=tags, instance=instance)
        assert again.success

    assert metadata["forecasts_scored"].value == sum(n for n, _ in expected.values()) == 6 + 12 + 5
    assert metadata["forecasts_pending"].value == 1
    assert metadata["forecasts_incomplete"].value == 1
    assert metadata["plot"].value.startswith("![realized vs test MAE](data:image/png;base64,")
    assert metadata["test_mae_by_version"].value == {"1": 1.0, "2": 2.5}

    stored = read_accuracy(warehouse.engine, "atmos_temperature")
    assert (
        len(stored) == len(expected) == 3
    )  # v1 on both days, v2 on 06-03  # idempotent: the second run replaced, not appended
    for row in stored.itertuples():
        day = row.day if isinstance(row.day, dt.date) else pd.Timestamp(row.day).date()
        count, mae = expected[(row.model_version, day)]
        assert row.forecasts == count
        assert row.mae == pytest.approx(mae, abs=1e-9)
        assert np.mean([getattr(row, f"mae_h{h:02d}") for h in range(1, 25)]) == pytest.approx(mae, abs=1e-9)
    v2 = stored[stored["model_version"] == "2"].iloc[0]
    assert v2["mae"] == pytest.approx(1.0) and v2["mae_h13"] == pytest.approx(1.0)

    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    metrics = client.get_run(runs["1"]).data.metrics
    assert metrics["realized_mae_2013_06_03"] == pytest.approx(expected[("1", dt.date(2013, 6, 3))][1])
    assert metrics["realized_mae_2013_06_02"] == pytest.approx(expected[("1", dt.date(2013, 6, 2))][1])
    series = client.get_metric_history(runs["1"], "realized_mae")
    assert {m.step for m in series} == {
        (dt.date(2013, 6, 2) - dt.date(1970, 1, 1)).days,
        (dt.date(2013, 6, 3) - dt.date(1970, 1, 1)).days,
    }
    assert "realized_mae_2013_06_02" not in client.get_run(runs["2"]).data.metrics


# -- drift check ------------------------------------------------------------------------------


def test_served_drift_check_warns_on_shifted_inputs(tmp_path: Path) -> None:
    from mlops_assets.atmos.dataset import build_training_windows

    sample = load_sample_observations(STATION)
    series = sample[["time", "tmp", "td", "rh", "ws", "precip"]].copy()
    reference = training_hourly_values(build_training_windows(series).train)

    engine = create_warehouse_engine(f"sqlite:///{tmp_path / 'w.db'}")
    ensure_tables(engine)
    observed = pd.Series(sample["tmp"].to_numpy(), index=pd.DatetimeIndex(sample["time"])).dropna()
    issued = [pd.Timestamp("2013-07-10", tz="UTC") + pd.Timedelta(hours=h) for h in range(0, 24 * 7, 6)]
    honest = served_rows(observed, issued, "1", np.zeros(24), "h")
    insert_served(engine, [r.row() for r in honest])
    settings = MonitoringSettings()
    result = evaluate_served_drift(reference, read_served_inputs(engine, "atmos_temperature", 7), settings)
    numbers = result.metadata["per_variable"].value["tmp"]
    assert numbers["served_hours"] == 24 * 7 - 6 + 72  # each hour once, not 28 x 72

    # The same traffic sent in Fahrenheit: the distribution moves far outside the training one.
    fahrenheit = [
        ServedForecast(
            r.request_id + "f",
            r.model_name,
            r.model_version,
            r.received_at + dt.timedelta(days=30),
            r.last_observed_at,
            r.forecast,
            [v * 9 / 5 + 32 for v in r.inputs],
        )
        for r in honest
    ]
    insert_served(engine, [r.row() for r in fahrenheit])
    shifted = evaluate_served_drift(reference, read_served_inputs(engine, "atmos_temperature", 7), settings)
    assert shifted.passed is False and shifted.severity == dg.AssetCheckSeverity.WARN
    assert shifted.metadata["drifted"].value == ["tmp"]
    assert shifted.metadata["tmp_psi"].value > 1.0
    empty = evaluate_served_drift(reference, ServedInputs({}, 0, None, None), settings)
    assert empty.passed and "no forecasts" in (empty.description or "")


# -- wiring -----------------------------------------------------------------------------------


def test_the_project_definitions_carry_the_monitoring() -> None:
    """Accuracy asset, drift check and the four sensors resolve in the project's own definitions."""
    from mlops_assets.definitions import defs

    project = defs()
    dg.Definitions.validate_loadable(project)
    graph = project.resolve_asset_graph()
    assert dg.AssetKey("atmos_forecast_accuracy") in graph.get_all_asset_keys()
    assert {"champion_alias_sensor", "input_files_sensor", "champion_degradation_sensor", "alert_on_run_failure"} <= {
        sensor.name for sensor in project.sensors
    }
    assert project.resolve_sensor_def("champion_degradation_sensor").job_name == "atmos_training"


def test_drift_check_runs_with_its_resources_on_stored_features(tmp_path: Path) -> None:
    """The decorated check itself: training windows rebuilt from the warehouse, served rows read back."""
    from mlops_assets.atmos.cleaning import clean_observations
    from mlops_assets.monitoring.checks import atmos_served_inputs_drift

    warehouse = WarehouseResource(url=f"sqlite:///{tmp_path / 'warehouse.db'}")
    sample = load_sample_observations(STATION)
    cleaned, _ = clean_observations(sample)
    warehouse.replace_features(STATION, cleaned)
    observed = pd.Series(sample["tmp"].to_numpy(), index=pd.DatetimeIndex(sample["time"])).dropna()
    issued = [pd.Timestamp("2013-03-10", tz="UTC") + pd.Timedelta(hours=h) for h in range(0, 24 * 5, 4)]
    rows = served_rows(observed, issued, "1", np.zeros(24), "k")
    kelvin = [
        ServedForecast(
            r.request_id,
            r.model_name,
            r.model_version,
            r.received_at,
            r.last_observed_at,
            r.forecast,
            [v + 273.15 for v in r.inputs],
        )
        for r in rows
    ]
    ensure_tables(warehouse.engine)
    insert_served(warehouse.engine, [r.row() for r in kelvin])
    result = atmos_served_inputs_drift(
        source=SampleObservationSource(station_id=STATION), warehouse=warehouse, monitoring=MonitoringSettings()
    )
    assert isinstance(result, dg.AssetCheckResult)
    assert result.passed is False and result.metadata["drifted"].value == ["tmp"]
    assert result.metadata["per_variable"].value["tmp"]["outside_reference_range"] == 1.0


def test_accuracy_automation_requests_only_the_last_days_after_the_cron_tick() -> None:
    before = dt.datetime(2026, 3, 10, 5, 59, tzinfo=UTC)
    after = dt.datetime(2026, 3, 10, 6, 1, tzinfo=UTC)
    defs = dg.Definitions(
        assets=[atmos_forecast_accuracy],
        resources={"source": SampleObservationSource(), "warehouse": WarehouseResource(), "registry": MlflowRegistry()},
    )  # resources are not touched while evaluating conditions
    with dg.instance_for_test() as instance:
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=before)
        assert first.total_requested == 0
        second = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, evaluation_time=after, cursor=first.cursor
        )
        requested = sorted(second.get_requested_partitions(atmos_forecast_accuracy.key))
        # end_offset=1 admits the current UTC day; the 4-day lookback reaches back to 03-07.
        assert requested == ["2026-03-07", "2026-03-08", "2026-03-09", "2026-03-10"]
        third = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, evaluation_time=after + dt.timedelta(minutes=1), cursor=second.cursor
        )
        assert third.total_requested == 0  # once per tick
