"""Monitoring sensors, each tick through `dg.build_sensor_context` on a fresh real instance."""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import mlflow
import pandas as pd
import pytest

from mlops_assets.atmos.source import CsvObservationSource, SampleObservationSource
from mlops_assets.insurance.source import CsvPolicySource, SyntheticPolicySource
from mlops_assets.monitoring.assets import replace_accuracy
from mlops_assets.monitoring.resources import MonitoringSettings
from mlops_assets.monitoring.sensors import (
    alert_on_run_failure,
    champion_alias_sensor,
    champion_degradation_sensor,
    degradation_episode,
    input_files_sensor,
)
from mlops_assets.monitoring.served_log import LEAD_COLUMNS, ensure_tables
from mlops_assets.resources.mlflow_registry import MlflowRegistry
from mlops_assets.resources.warehouse import WarehouseResource
from mlops_assets_tests.test_monitoring import register_versions

ATMOS = "atmos_temperature"
CHAMPION_KEY = dg.AssetKey("atmos_champion_model")


def client(uri: str) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


# -- champion alias moved outside Dagster -----------------------------------------------------


def test_alias_moved_outside_dagster_is_observed_once(mlflow_uri: str, tmp_path: Path) -> None:
    register_versions(mlflow_uri, {"1": 2.0, "2": 2.1}, tmp_path)
    registry = MlflowRegistry(tracking_uri=mlflow_uri)
    mlflow_client = client(mlflow_uri)
    mlflow_client.set_registered_model_alias(ATMOS, "champion", "1")
    with dg.instance_for_test() as instance:

        def tick(cursor: str | None) -> dg.SensorResult:
            context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"registry": registry})
            result = champion_alias_sensor(context)
            assert isinstance(result, dg.SensorResult)
            return result

        first = tick(None)
        assert first.asset_events == []  # the first tick only learns the versions
        assert json.loads(first.cursor or "") == {ATMOS: "1", "insurance_charges": None}

        assert tick(first.cursor).asset_events == []  # nothing moved

        mlflow_client.set_model_version_tag(ATMOS, "2", "rollback_reason", "v1 drifts at night")
        mlflow_client.set_registered_model_alias(ATMOS, "champion", "2")  # by hand, outside Dagster
        moved = tick(first.cursor)
        assert len(moved.asset_events) == 1
        event = moved.asset_events[0]
        assert isinstance(event, dg.AssetObservation) and event.asset_key == CHAMPION_KEY
        assert event.metadata["champion_version_before"].value == "1"
        assert event.metadata["champion_version"].value == "2"
        assert event.metadata["rollback_reason"].value == "v1 drifts at night"
        assert json.loads(moved.cursor or "")[ATMOS] == "2"

        # The champion asset moves it back (its materialization says so): not an outside move.
        instance.report_runless_asset_event(dg.AssetMaterialization(CHAMPION_KEY, metadata={"champion_version": 1}))
        mlflow_client.set_registered_model_alias(ATMOS, "champion", "1")
        by_dagster = tick(moved.cursor)
        assert by_dagster.asset_events == []
        assert json.loads(by_dagster.cursor or "")[ATMOS] == "1"


def test_alias_sensor_fails_loudly_when_the_registry_is_unreachable() -> None:
    registry = MlflowRegistry(tracking_uri="http://127.0.0.1:9")
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources={"registry": registry})
        with pytest.raises(Exception, match=r"127\.0\.0\.1:9|Connection|connect"):
            champion_alias_sensor(context)


# -- input files changed ----------------------------------------------------------------------


def write_station(path: Path, hours: list[str]) -> None:
    path.write_text("time,tmp\n" + "".join(f"{h},{10 + i % 5}\n" for i, h in enumerate(hours)))


def test_changed_files_request_the_days_they_cover(tmp_path: Path) -> None:
    station = tmp_path / "station.csv"
    # Naive Chicago times: 2016-11-05 23:00 .. 2016-11-07 00:00 local (three local days).
    write_station(station, ["2016-11-05 23:00", "2016-11-06 01:00", "2016-11-06 12:00", "2016-11-07 00:00"])
    policies = tmp_path / "insurance.csv"
    policies.write_text("age,sex,bmi,children,smoker,region,charges\n30,male,25.0,0,no,northeast,3000.5\n")
    resources = {
        "source": CsvObservationSource(path=str(station), station_id="home", time_zone="America/Chicago"),
        "policy_source": CsvPolicySource(path=str(policies)),
    }
    with dg.instance_for_test() as instance:

        def tick(cursor: str | None) -> dg.SensorResult:
            result = input_files_sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources))
            assert isinstance(result, dg.SensorResult)
            return result

        first = tick(None)
        by_asset = {next(iter(r.asset_selection or [])).to_user_string(): r for r in first.run_requests or []}
        assert set(by_asset) == {"raw_atmos_observations", "insurance_policies"}
        raw = by_asset["raw_atmos_observations"]
        assert raw.partition_key_range == dg.PartitionKeyRange("2016-11-05", "2016-11-07")
        assert first.skip_reason is None

        unchanged = tick(first.cursor)
        assert not unchanged.run_requests

        with station.open("a") as handle:
            handle.write("2016-11-09 06:00,4.5\n")
        os.utime(station, ns=(os.stat(station).st_atime_ns, os.stat(station).st_mtime_ns + 1_000_000))
        appended = tick(first.cursor)
        assert [r.asset_selection for r in appended.run_requests or []] == [[dg.AssetKey("raw_atmos_observations")]]
        assert appended.run_requests[0].partition_key_range == dg.PartitionKeyRange("2016-11-05", "2016-11-09")
        assert appended.run_requests[0].run_key != raw.run_key

        station.write_text("time,tmp\n11/06/2016 01:00,3\n")
        broken = tick(appended.cursor)
        assert not broken.run_requests
        assert broken.skip_reason is not None and "11/06/2016 01:00" in (broken.skip_reason.skip_message or "")
        assert tick(broken.cursor).skip_reason is None  # the cursor moved: no repeat until the file changes


def test_file_sensor_skips_without_csv_sources() -> None:
    resources = {"source": SampleObservationSource(), "policy_source": SyntheticPolicySource()}
    with dg.instance_for_test() as instance:
        result = input_files_sensor(dg.build_sensor_context(instance=instance, resources=resources))
    assert isinstance(result, dg.SkipReason) and "ATMOS_CSV_PATH" in (result.skip_message or "")


# -- champion degraded ------------------------------------------------------------------------


def accuracy_rows(version: str, maes: dict[str, float]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "model_version": version,
                "day": dt.date.fromisoformat(day),
                "forecasts": 8,
                "mae": mae,
                **{c: mae for c in LEAD_COLUMNS},
            }
            for day, mae in maes.items()
        ]
    )


def test_degradation_episode_rule() -> None:
    rows = accuracy_rows(
        "1", {"2013-06-01": 3.0, "2013-06-02": 2.0, "2013-06-04": 2.6, "2013-06-05": 2.7, "2013-06-07": 2.8}
    )
    assert degradation_episode(rows, 2.0, 0.25, 3) == (dt.date(2013, 6, 4), 3)
    assert degradation_episode(rows, 2.0, 0.25, 4) is None
    assert degradation_episode(rows, 2.0, 0.5, 3) is None
    assert degradation_episode(rows.iloc[:0], 2.0, 0.25, 1) is None


def test_degradation_sensor_retrains_once_per_episode(mlflow_uri: str, tmp_path: Path) -> None:
    register_versions(mlflow_uri, {"1": 2.0}, tmp_path)
    client(mlflow_uri).set_registered_model_alias(ATMOS, "champion", "1")
    warehouse = WarehouseResource(url=f"sqlite:///{tmp_path / 'warehouse.db'}")
    ensure_tables(warehouse.engine)
    resources = {
        "warehouse": warehouse,
        "registry": MlflowRegistry(tracking_uri=mlflow_uri),
        "monitoring": MonitoringSettings(),
    }

    def score(maes: dict[str, float]) -> None:
        days = [dt.date.fromisoformat(d) for d in maes]
        replace_accuracy(warehouse.engine, ATMOS, days, accuracy_rows("1", maes))

    with dg.instance_for_test() as instance:

        def tick(**overrides: object) -> dg.RunRequest | dg.SkipReason:
            with dg.build_sensor_context(instance=instance, resources={**resources, **overrides}) as context:
                return champion_degradation_sensor(context)

        score({"2013-06-01": 2.1, "2013-06-02": 2.6, "2013-06-03": 2.7})
        assert isinstance(tick(), dg.SkipReason)  # two days above 2.5 are not enough
        score({"2013-06-04": 2.8})
        request = tick()
        assert isinstance(request, dg.RunRequest)
        assert request.job_name == "atmos_training"
        assert request.run_key == "degraded:atmos_temperature:v1:2013-06-02"
        assert request.tags["monitoring/test_mae"] == "2.0000"
        assert isinstance(tick(monitoring=MonitoringSettings(degradation_margin=0.5)), dg.SkipReason)

        score({"2013-06-05": 3.5})
        assert tick().run_key == request.run_key  # same episode: Dagster launches a run key once
        score({"2013-06-06": 2.2})
        assert isinstance(tick(), dg.SkipReason)  # recovered
        score({"2013-06-07": 2.6, "2013-06-08": 2.6, "2013-06-09": 2.6})
        assert tick().run_key == "degraded:atmos_temperature:v1:2013-06-07"  # a new episode


# -- a run failed -----------------------------------------------------------------------------


class _Webhook:
    """A local HTTP server that records the JSON bodies posted to it."""

    def __init__(self, status: int = 200) -> None:
        received: list[dict[str, object]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append({"content_type": self.headers["Content-Type"], "body": json.loads(body)})
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.received = received
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[_Webhook]:
    server = _Webhook()
    yield server
    server.close()


@dg.op
def broken_step() -> None:
    raise ValueError("the warehouse said no")


@dg.job
def failing_job() -> None:
    broken_step()


def failure_context(instance: dg.DagsterInstance) -> dg.RunFailureSensorContext:
    result = failing_job.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    return dg.build_run_status_sensor_context(
        sensor_name="alert_on_run_failure",
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        dagster_event=result.get_run_failure_event(),
    ).for_run_failure()


def test_run_failure_posts_json_to_the_webhook(webhook: _Webhook, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALERT_WEBHOOK_URL", webhook.url)
    with dg.instance_for_test() as instance:
        context = failure_context(instance)
        alert_on_run_failure(context)
        run_id = context.dagster_run.run_id
    assert len(webhook.received) == 1
    posted = webhook.received[0]
    assert posted["content_type"] == "application/json"
    body = posted["body"]
    assert isinstance(body, dict)
    assert body["run_id"] == run_id and body["job_name"] == "failing_job" and body["event"] == "dagster_run_failed"
    assert body["step_failures"][0]["step"] == "broken_step"
    assert "the warehouse said no" in body["step_failures"][0]["error"]


def test_run_failure_without_webhook_skips_and_a_refusing_webhook_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    with dg.instance_for_test() as instance:
        context = failure_context(instance)
        monkeypatch.delenv("ALERT_WEBHOOK_URL", raising=False)
        skipped = alert_on_run_failure(context)
        assert isinstance(skipped, dg.SkipReason)
        refusing = _Webhook(status=500)
        try:
            monkeypatch.setenv("ALERT_WEBHOOK_URL", refusing.url)
            with pytest.raises(Exception, match="HTTP 500"):
                alert_on_run_failure(context)
        finally:
            refusing.close()
