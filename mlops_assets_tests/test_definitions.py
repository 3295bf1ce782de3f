"""The code location loads, with each source and with bad configuration failing clearly."""

from __future__ import annotations

import dagster as dg
import pytest

from mlops_assets.definitions import defs


def test_defs_load_with_the_embedded_defaults() -> None:
    definitions = defs()
    assert isinstance(definitions, dg.Definitions)
    keys = {key.to_user_string() for key in definitions.resolve_asset_graph().get_all_asset_keys()}
    assert {
        "raw_atmos_observations",
        "atmos_features",
        "atmos_training_windows",
        "atmos_tuned_model",
        "atmos_champion_model",
    } <= keys
    schedule = definitions.resolve_schedule_def("atmos_ingestion_schedule")
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED  # sample data does not change
    definitions.resolve_all_job_defs()


def test_the_kma_source_turns_the_ingestion_schedule_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATMOS_SOURCE", "kma")
    monkeypatch.setenv("KMA_SERVICE_KEY", "secret-key")
    definitions = defs()
    assert (
        definitions.resolve_schedule_def("atmos_ingestion_schedule").default_status == dg.DefaultScheduleStatus.RUNNING
    )
    source = definitions.resources["source"]
    assert "secret-key" not in repr(source.service_key)  # an EnvVar, resolved when a run starts


def test_an_unknown_source_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATMOS_SOURCE", "satellite")
    with pytest.raises(ValueError, match="ATMOS_SOURCE='satellite'"):
        defs()


def test_the_csv_source_needs_a_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATMOS_SOURCE", "csv")
    with pytest.raises(ValueError, match="ATMOS_CSV_PATH"):
        defs()
