"""`mlops-assets materialize`: ranges, selections, exit codes and messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlops_assets.cli import main
from mlops_assets.resources.warehouse import WarehouseResource


def test_materialize_a_range_and_its_downstream_features(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status = main(["materialize", "--start", "2013-05-01", "--end", "2013-05-10", "--select", "raw_atmos_observations+"])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "materialized raw_atmos_observations (10 partitions, 240 rows)" in out
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


def test_a_failing_step_exits_1_with_the_reason(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATMOS_SOURCE", "csv")
    monkeypatch.setenv("ATMOS_CSV_PATH", "/nonexistent/station.csv")
    assert main(["materialize", "--start", "2013-05-01", "--end", "2013-05-01", "--select", "raw_atmos_observations"]) == 1
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
        "DAGSTER_PG_HOST": url.host, "DAGSTER_PG_PORT": str(url.port), "DAGSTER_PG_USER": url.username,
        "DAGSTER_PG_PASSWORD": url.password or "", "DAGSTER_PG_DB": url.database,
    }.items():
        monkeypatch.setenv(name, value)
    assert main(["materialize", "--start", "2013-05-01", "--end", "2013-05-02", "--select", "raw_atmos_observations"]) == 0
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert instance.get_materialized_partitions(dg.AssetKey("raw_atmos_observations")) == {"2013-05-01", "2013-05-02"}
