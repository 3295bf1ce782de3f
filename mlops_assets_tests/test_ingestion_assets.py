"""raw_atmos_observations and atmos_features through Dagster, with each source."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from mlops_assets.atmos.assets import PERMANENT_ERRORS, atmos_features, raw_atmos_observations
from mlops_assets.atmos.checks import atmos_features_checks
from mlops_assets.atmos.schedules import atmos_ingestion_job, build_ingestion_schedule, days_to_ingest
from mlops_assets.atmos.source import CsvObservationSource, KmaObservationSource, SampleObservationSource
from mlops_assets.resources.warehouse import WarehouseResource
from mlops_assets_tests.fakes.kma_server import Scenario, running_kma_server

ASSETS = [raw_atmos_observations, atmos_features, atmos_features_checks]


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


def _range_tags(first: str, last: str) -> dict[str, str]:
    return {ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last}


def _failure_message(result: dg.ExecuteInProcessResult) -> str:
    failures = [event for event in result.all_events if event.is_step_failure]
    assert failures, "expected a failed step"
    return failures[0].step_failure_data.error.message


def test_a_partition_range_runs_in_one_run_and_feeds_the_features(
    warehouse_url: str, instance: dg.DagsterInstance
) -> None:
    warehouse = WarehouseResource(url=warehouse_url)
    resources = {"source": SampleObservationSource(), "warehouse": warehouse}
    result = dg.materialize(
        ASSETS, resources=resources, instance=instance, tags=_range_tags("2013-01-01", "2013-02-28")
    )
    assert result.success
    assert len(instance.get_materialized_partitions(raw_atmos_observations.key)) == 59
    stored = warehouse.read_observations("JFK")
    assert 59 * 24 - 10 <= len(stored) <= 59 * 24
    features = warehouse.read_features("JFK")
    assert features["time"].diff().dropna().eq(dt.timedelta(hours=1)).all()
    metadata = result.asset_materializations_for_node("atmos_features")[0].metadata
    assert metadata["sample_data"].value is True and "plot" in metadata
    checks = {evaluation.check_name: evaluation.passed for evaluation in result.get_asset_check_evaluations()}
    assert checks["schema"] and checks["one_row_per_hour"] and checks["physical_ranges"]


def test_rematerializing_does_not_duplicate_rows(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    warehouse = WarehouseResource(url=f"sqlite:///{tmp_path / 'w.db'}")
    resources = {"source": SampleObservationSource(), "warehouse": warehouse}
    for _ in range(2):
        assert dg.materialize(
            [raw_atmos_observations], resources=resources, instance=instance, partition_key="2013-06-01"
        ).success
    assert len(warehouse.read_observations("JFK")) == 24


def test_a_kma_backfill_stores_kst_days(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    warehouse = WarehouseResource(url=f"sqlite:///{tmp_path / 'w.db'}")
    with running_kma_server() as kma:
        source = KmaObservationSource(service_key=kma.service_key, endpoint=kma.endpoint)
        result = dg.materialize(
            [raw_atmos_observations],
            resources={"source": source, "warehouse": warehouse},
            instance=instance,
            tags=_range_tags("2019-01-01", "2019-01-31"),
        )
        assert result.success
        assert len(kma.requests) == 1
    stored = warehouse.read_observations("108")
    assert len(stored) == 31 * 24
    assert str(stored["time"].min()) == "2018-12-31 15:00:00+00:00"  # 2019-01-01 00:00 KST


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        (Scenario.result("22"), "KmaCallLimitError"),
        (Scenario.gateway_key_error(code="30", xml=True, status=403), "KmaAuthError"),
        (Scenario.result("10"), "KmaRequestError"),
    ],
    ids=["call-limit-22", "gateway-xml-403", "bad-parameter"],
)
def test_a_kma_error_fails_the_run_with_the_reason_and_writes_nothing(
    scenario: Scenario, expected: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    warehouse = WarehouseResource(url=f"sqlite:///{tmp_path / 'w.db'}")
    with running_kma_server(scenario) as kma:
        source = KmaObservationSource(service_key=kma.service_key, endpoint=kma.endpoint)
        result = dg.materialize(
            [raw_atmos_observations],
            resources={"source": source, "warehouse": warehouse},
            instance=instance,
            partition_key="2019-01-05",
            raise_on_error=False,
        )
        assert len(kma.requests) == 1, "a permanent error must not be retried"
    assert not result.success
    assert expected in _failure_message(result)
    assert kma.service_key not in _failure_message(result)
    assert warehouse.read_observations("108").empty


def test_a_kma_outage_is_retried_by_the_client_only_not_again_by_the_step(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    """The client backs off and retries; a step retry on top would multiply calls against the daily quota."""
    warehouse = WarehouseResource(url=f"sqlite:///{tmp_path / 'w.db'}")
    with running_kma_server() as kma:
        kma.set_default(Scenario.http_error(503))
        source = KmaObservationSource(service_key=kma.service_key, endpoint=kma.endpoint)
        result = dg.materialize(
            [raw_atmos_observations],
            resources={"source": source, "warehouse": warehouse},
            instance=instance,
            partition_key="2019-01-05",
            raise_on_error=False,
        )
        calls = len(kma.requests)
    assert not result.success
    assert "KmaRetriesExhaustedError" in _failure_message(result)
    assert calls == 5, f"{calls} calls: the step's retry policy re-ran the client's retries"
    assert not [event for event in result.all_events if event.event_type_value == "STEP_UP_FOR_RETRY"]


def test_only_the_projects_own_errors_turn_the_step_retry_off() -> None:
    """A bare ValueError (pandas, SQLAlchemy, a bug) keeps the step's retry policy; only errors that name a
    cause another attempt cannot fix (a KMA client that already retried, a bad file, a bad setting) are final."""
    assert ValueError not in PERMANENT_ERRORS and RuntimeError not in PERMANENT_ERRORS
    assert all(error.__module__.startswith("mlops_assets.atmos.") for error in PERMANENT_ERRORS), PERMANENT_ERRORS


def test_a_kma_500_then_success_is_retried_by_the_client(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    warehouse = WarehouseResource(url=f"sqlite:///{tmp_path / 'w.db'}")
    with running_kma_server() as kma:
        kma.enqueue(Scenario.http_error(500))
        source = KmaObservationSource(service_key=kma.service_key, endpoint=kma.endpoint)
        result = dg.materialize(
            [raw_atmos_observations],
            resources={"source": source, "warehouse": warehouse},
            instance=instance,
            partition_key="2019-01-05",
        )
        assert result.success and len(kma.requests) == 2
    assert len(warehouse.read_observations("108")) == 24


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("when,tmp\n2024-01-01 00:00,1.0\n", "required column 'time' is missing"),
        ("time,tmp\n2024-01-01 00:00,1.0\nyesterday,2.0\n", "column 'time', line 3"),
        ("time,tmp\n2024-01-01 00:00,1.0\n2024-01-01 01:00,warm\n", "column 'tmp', line 3"),
    ],
    ids=["missing-time", "bad-date", "text-in-tmp"],
)
def test_a_malformed_csv_names_file_column_and_row(
    content: str, message: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    csv_path = tmp_path / "station.csv"
    csv_path.write_text(content)
    warehouse = WarehouseResource(url=f"sqlite:///{tmp_path / 'w.db'}")
    result = dg.materialize(
        [raw_atmos_observations],
        resources={"source": CsvObservationSource(path=str(csv_path)), "warehouse": warehouse},
        instance=instance,
        partition_key="2024-01-01",
        raise_on_error=False,
    )
    failure = _failure_message(result)
    assert str(csv_path) in failure and message in failure
    assert warehouse.read_observations("csv").empty


def test_a_well_formed_csv_is_ingested_in_its_time_zone(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    csv_path = tmp_path / "station.csv"
    rows = "\n".join(f"2024-01-01 {hour:02d}:00,{hour / 2},,55" for hour in range(24))
    csv_path.write_text("time,tmp,precip,rh\n" + rows + "\n")
    warehouse = WarehouseResource(url=f"sqlite:///{tmp_path / 'w.db'}")
    source = CsvObservationSource(path=str(csv_path), station_id="home", time_zone="Europe/Berlin")
    assert dg.materialize(
        [raw_atmos_observations],
        resources={"source": source, "warehouse": warehouse},
        instance=instance,
        partition_key="2024-01-01",
    ).success
    stored = warehouse.read_observations("home")
    assert len(stored) == 24 and str(stored["time"].min()) == "2023-12-31 23:00:00+00:00"


def test_the_schedule_requests_the_newest_complete_days_not_yet_ingested(instance: dg.DagsterInstance) -> None:
    schedule = build_ingestion_schedule(running=True)
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert build_ingestion_schedule(running=False).default_status == dg.DefaultScheduleStatus.STOPPED
    now = dt.datetime(2024, 5, 10, 3, 0, tzinfo=dt.UTC)  # 12:00 KST on May 10
    source = KmaObservationSource(service_key="k")
    repository = dg.Definitions(
        assets=[raw_atmos_observations],
        jobs=[atmos_ingestion_job],
        schedules=[schedule],
        resources={"source": source, "warehouse": WarehouseResource()},
    ).get_repository_def()
    context = dg.build_schedule_context(
        instance=instance, scheduled_execution_time=now, resources={"source": source}, repository_def=repository
    )
    requests = schedule.evaluate_tick(context).run_requests
    assert [request.partition_key for request in requests] == ["2024-05-07", "2024-05-08", "2024-05-09"]
    assert days_to_ingest(now, "Asia/Seoul", {"2024-05-07", "2024-05-08"}) == ["2024-05-09"]
    assert days_to_ingest(now, "Asia/Seoul", {"2024-05-07", "2024-05-08", "2024-05-09"}) == []


def test_repeated_hours_in_a_csv_keep_the_first_row_and_are_counted(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    csv_path = tmp_path / "station.csv"
    csv_path.write_text(
        "time,tmp\n2024-01-01T00:00Z,1.0\n2024-01-01T01:00Z,2.0\n2024-01-01T01:00Z,9.0\n2024-01-01T02:00Z,3.0\n"
    )
    warehouse = WarehouseResource(url=f"sqlite:///{tmp_path / 'w.db'}")
    source = CsvObservationSource(path=str(csv_path))
    result = dg.materialize(
        [raw_atmos_observations],
        resources={"source": source, "warehouse": warehouse},
        instance=instance,
        partition_key="2024-01-01",
    )
    assert (
        result.asset_materializations_for_node("raw_atmos_observations")[0].metadata["duplicate_hours_dropped"].value
        == 1
    )
    assert warehouse.read_observations("csv")["tmp"].tolist() == [1.0, 2.0, 3.0]
