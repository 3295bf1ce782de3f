"""`mlops-assets materialize`: ranges, selections, exit codes and messages."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from mlops_assets.cli import command_prefix, main, next_steps
from mlops_assets.resources.warehouse import WarehouseResource


def test_materialize_a_range_and_its_downstream_features(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status = main(
        ["materialize", "--start", "2013-05-01", "--end", "2013-05-10", "--select", "raw_atmos_observations+"]
    )
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "materialized raw_atmos_observations (10 partitions, 240 rows, 0 days with missing hours" in out
    assert "materialized atmos_features" in out
    assert "check atmos_features:schema passed" in out
    assert len(WarehouseResource().read_observations("JFK")) == 240  # the embedded default under ./.mlops


def test_partitioned_assets_need_dates(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["materialize", "--select", "raw_atmos_observations"]) == 2
    assert "partitioned by day: give --start and --end" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--select", "no_such_asset"], "invalid --select 'no_such_asset'"),
        (["--select", "group:"], "invalid --select"),
        (["--start", "2013-05-10", "--end", "2013-05-01", "--select", "raw_atmos_observations"], "is before --start"),
    ],
)
def test_bad_arguments_exit_2_with_a_reason(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["materialize", *args]) == 2
    assert message in capsys.readouterr().err


def test_a_failing_step_exits_1_with_the_reason(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATMOS_SOURCE", "csv")
    monkeypatch.setenv("ATMOS_CSV_PATH", "/nonexistent/station.csv")
    assert (
        main(["materialize", "--start", "2013-05-01", "--end", "2013-05-01", "--select", "raw_atmos_observations"]) == 1
    )
    err = capsys.readouterr().err
    assert "/nonexistent/station.csv: no such file" in err


@pytest.mark.postgres
def test_the_production_instance_config_stores_runs_in_postgres(
    postgres_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    import dagster as dg
    import sqlalchemy as sa

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(Path(__file__).resolve().parents[1] / "dagster.yaml", home / "dagster.yaml")
    url = sa.make_url(postgres_database)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    for name, value in {
        "DAGSTER_PG_HOST": url.host,
        "DAGSTER_PG_PORT": str(url.port),
        "DAGSTER_PG_USER": url.username,
        "DAGSTER_PG_PASSWORD": url.password or "",
        "DAGSTER_PG_DB": url.database,
    }.items():
        monkeypatch.setenv(name, value)
    assert (
        main(["materialize", "--start", "2013-05-01", "--end", "2013-05-02", "--select", "raw_atmos_observations"]) == 0
    )
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert instance.get_materialized_partitions(dg.AssetKey("raw_atmos_observations")) == {
            "2013-05-01",
            "2013-05-02",
        }


# --- The real CLI (a subprocess) and the instance it shares with the UI -----------------------

CLI = str(Path(sys.executable).parent / "mlops-assets")


def _run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize(
    ("command", "variable", "value", "reason"),
    [
        (["materialize"], "ATMOS_SOURCE", "bogus", "ATMOS_SOURCE='bogus' is not one of sample, csv, kma"),
        (["champion"], "TUNING_NUM_SAMPLES", "-1", "Input should be greater than or equal to 0 (got '-1')"),
        (["serve", "--workers", "1"], "SERVING_MAX_BATCH", "abc", "Input should be a valid integer"),
        (["serve", "--workers", "1"], "SERVING_PREDICTION_LOG", "maybe", "must be 'on' or 'off', got 'maybe'"),
    ],
)
def test_a_bad_setting_is_named_in_one_line_and_exits_2(
    command: list[str], variable: str, value: str, reason: str, tmp_path: Path
) -> None:
    # A short timeout: a `serve` that missed the bad value would otherwise serve until killed.
    result = _run_cli(*command, cwd=tmp_path, env={variable: value}, timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {variable}: "), result.stderr[-3000:]
    assert reason in errors[0], errors


def test_a_rule_across_settings_is_reported_in_its_own_words(tmp_path: Path) -> None:
    result = _run_cli("materialize", cwd=tmp_path, env={"ATMOS_SOURCE": "csv"}, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "error: ATMOS_SOURCE=csv needs ATMOS_CSV_PATH" in result.stderr, result.stderr[-3000:]


def test_materialize_keeps_runs_events_and_checks_in_the_embedded_instance(tmp_path: Path) -> None:
    import dagster as dg

    first = _run_cli(
        "materialize",
        "--start",
        "2013-05-01",
        "--end",
        "2013-05-05",
        "--select",
        "raw_atmos_observations+",
        cwd=tmp_path,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    second = _run_cli(
        "materialize",
        "--start",
        "2013-05-06",
        "--end",
        "2013-05-06",
        "--select",
        "raw_atmos_observations",
        cwd=tmp_path,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    home = tmp_path / ".mlops" / "dagster"
    assert "telemetry" in (home / "dagster.yaml").read_text()

    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
        assert [run.status for run in runs] == [dg.DagsterRunStatus.SUCCESS] * 2  # both commands, one instance
        first_run = runs[-1]
        assert first_run.run_id in first.stdout
        assert instance.get_materialized_partitions(dg.AssetKey("raw_atmos_observations")) == {
            f"2013-05-0{day}" for day in range(1, 7)
        }
        features = instance.get_latest_materialization_event(dg.AssetKey("atmos_features"))
        assert features is not None and features.run_id == first_run.run_id
        metadata = features.asset_materialization.metadata
        assert metadata["dagster/row_count"].value == 120
        assert "data:image/png;base64," in metadata["plot"].value  # the plot the UI shows
        logs = instance.all_logs(first_run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
        checks = {
            entry.dagster_event.event_specific_data.check_name: entry.dagster_event.event_specific_data.passed
            for entry in logs
        }
        assert checks == dict.fromkeys(
            ["schema", "one_row_per_hour", "physical_ranges", "missing_rate", "freshness", "drift"], True
        )
        planned = instance.all_logs(first_run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED)
        assert {
            entry.dagster_event.partition
            for entry in planned
            if entry.dagster_event.asset_key.path == ["raw_atmos_observations"]
        } == {f"2013-05-0{day}" for day in range(1, 6)}


def test_materialize_uses_dagster_home_when_it_is_set(tmp_path: Path) -> None:
    import dagster as dg

    home = tmp_path / "home"
    home.mkdir()
    done = _run_cli(
        "materialize",
        "--start",
        "2013-05-01",
        "--end",
        "2013-05-01",
        "--select",
        "raw_atmos_observations",
        cwd=tmp_path,
        env={"DAGSTER_HOME": str(home)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (tmp_path / ".mlops" / "dagster").exists()
    assert not (home / "dagster.yaml").exists()  # the user's folder is used as it is
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_materialized_partitions(dg.AssetKey("raw_atmos_observations")) == {"2013-05-01"}

    missing = _run_cli(
        "materialize", "--select", "group:insurance", cwd=tmp_path, env={"DAGSTER_HOME": str(tmp_path / "nope")}
    )
    assert missing.returncode == 2
    assert "is not a directory" in missing.stderr


def test_the_summary_reports_rejected_policy_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    policies = tmp_path / "policies.csv"
    policies.write_text(
        "age,sex,bmi,children,smoker,region,charges\n"
        "30,female,25.0,1,no,northeast,4000.5\n"
        "200,male,25.0,0,no,northwest,3000\n"  # age out of range: rejected
        "45,male,31.2,2,yes,southeast,30000\n"
    )
    monkeypatch.setenv("INSURANCE_CSV_PATH", str(policies))
    assert main(["materialize", "--select", "insurance_policies"]) == 0
    assert "materialized insurance_policies (2 rows, 1 policy rows rejected)" in capsys.readouterr().out


def test_next_steps_are_printed_as_the_command_was_run(tmp_path: Path) -> None:
    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "mlops-assets").write_text("#!/bin/sh\n")
    (venv_bin / "python").write_text("")
    assert command_prefix(".venv/bin/mlops-assets", str(venv_bin / "python"), tmp_path) == ".venv/bin/mlops-assets"
    # Called by name from PATH, or as a module: the script beside the interpreter, relative to here.
    assert command_prefix("mlops-assets", str(venv_bin / "python"), tmp_path) == ".venv/bin/mlops-assets"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert command_prefix("/x/cli.py", str(venv_bin / "python"), elsewhere) == str(venv_bin / "mlops-assets")
    assert command_prefix("/x/cli.py", "/opt/py/bin/python3", tmp_path) == "/opt/py/bin/python3 -m mlops_assets.cli"
    steps = next_steps(".venv/bin/mlops-assets")
    assert "    .venv/bin/mlops-assets serve --port 8000" in steps
    assert "    .venv/bin/mlops-assets example-request > request.json" in steps
    assert "    .venv/bin/mlops-assets dev --port 3000" in steps
    assert "\n    mlops-assets" not in steps


def test_the_printed_prefix_runs(tmp_path: Path) -> None:
    """The prefix the real CLI computes for itself starts the CLI from the same folder."""
    prefix = subprocess.run(
        [sys.executable, "-c", "from mlops_assets.cli import command_prefix; print(command_prefix())"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    done = subprocess.run([*shlex.split(prefix), "--help"], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "materialize" in done.stdout


@dg.asset(
    partitions_def=dg.DailyPartitionsDefinition(start_date="2024-01-01"),
    backfill_policy=dg.BackfillPolicy.single_run(),
    check_specs=[dg.AssetCheckSpec("ok", asset="daily")],
)
def daily(context) -> dg.MaterializeResult:  # type: ignore[no-untyped-def]  # a string annotation (future import) is refused
    """A partitioned asset with a check; fails when the run is tagged `fail`."""
    if "fail" in context.run.tags:
        raise RuntimeError("planned, then failed")
    return dg.MaterializeResult(
        metadata={"n": len(context.partition_keys)}, check_results=[dg.AssetCheckResult(passed=True)]
    )


def test_batched_event_writes_keep_dagster_s_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same partitions, asset records and failed partitions as Dagster's one-by-one SQLite writes."""
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    from mlops_assets.instance import BatchingSqliteEventLogStorage, open_instance

    batches: list[int] = []
    original = BatchingSqliteEventLogStorage._store_run_batch
    monkeypatch.setattr(
        BatchingSqliteEventLogStorage,
        "_store_run_batch",
        lambda self, events: (batches.append(len(events)), original(self, events))[1],
    )
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "1000")

    def run(instance: dg.DagsterInstance, first: str, last: str, **tags: str) -> None:
        range_tags = {ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last, **tags}
        dg.materialize([daily], instance=instance, tags=range_tags, raise_on_error=False)

    def observed(instance: dg.DagsterInstance) -> tuple[object, ...]:
        key = dg.AssetKey("daily")
        record = instance.get_asset_records([key])[0].asset_entry
        attempts = (
            instance.event_log_storage.get_latest_asset_partition_materialization_attempts_without_materializations(key)
        )
        return (
            sorted(instance.get_materialized_partitions(key)),
            record.last_materialization_record.partition_key if record.last_materialization_record else None,
            sorted(attempts),
            len(instance.fetch_materializations(key, limit=100).records),
        )

    results = []
    for batched in (True, False):
        folder = tmp_path / ("batched" if batched else "default")
        folder.mkdir()
        monkeypatch.chdir(folder)
        with open_instance({}) if batched else dg.DagsterInstance.local_temp(str(folder)) as instance:
            assert isinstance(instance.event_log_storage, BatchingSqliteEventLogStorage) == batched
            run(instance, "2024-01-01", "2024-01-05")
            run(instance, "2024-01-04", "2024-01-08", fail="yes")
            results.append(observed(instance))
    assert results[0] == results[1]
    assert results[0] == (
        [f"2024-01-0{day}" for day in range(1, 6)],
        "2024-01-05",
        [f"2024-01-0{day}" for day in range(4, 9)],
        5,
    )
    assert batches and max(batches) >= 5  # the planned events and the materializations went as batches
