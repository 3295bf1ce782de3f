"""Windows -> Ray Tune search -> promotion, end to end with real Ray and a real MLflow store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import mlflow
import pytest
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from mlflow.entities import LoggedModelStatus

from mlops_assets.atmos.assets import (
    atmos_champion_model,
    atmos_features,
    atmos_training_windows,
    atmos_tuned_model,
    raw_atmos_observations,
)
from mlops_assets.atmos.checks import atmos_champion_serves, atmos_features_checks, atmos_tuned_model_beats_baselines
from mlops_assets.atmos.model_io import FEATURE_SPEC_KEY
from mlops_assets.atmos.source import SampleObservationSource
from mlops_assets.cli import main
from mlops_assets.constants import ATMOS_MODEL_NAME
from mlops_assets.resources import mlflow_resources
from mlops_assets.resources.mlflow_registry import MlflowRegistry
from mlops_assets.resources.mlflow_run import downloaded_model
from mlops_assets.resources.warehouse import WarehouseResource
from mlops_assets.tuning.resources import TuningResource

DATA_ASSETS = [raw_atmos_observations, atmos_features, atmos_features_checks]
TRAINING_ASSETS = [
    atmos_training_windows,
    atmos_tuned_model,
    atmos_champion_model,
    atmos_tuned_model_beats_baselines,
    atmos_champion_serves,
]
RANGE = {ASSET_PARTITION_RANGE_START_TAG: "2013-01-01", ASSET_PARTITION_RANGE_END_TAG: "2013-04-30"}


def _resources(tmp_path: Path, tracking_uri: str) -> dict[str, object]:
    return {
        "source": SampleObservationSource(),
        "warehouse": WarehouseResource(url=f"sqlite:///{tmp_path / 'warehouse.db'}"),
        **mlflow_resources(MlflowRegistry(tracking_uri=tracking_uri)),
        "tuning": TuningResource(search="quick"),
    }


@pytest.fixture
def instance(local_ray: None) -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture
def ingested(tmp_path: Path, mlflow_uri: str, instance: dg.DagsterInstance) -> dict[str, object]:
    resources = _resources(tmp_path, mlflow_uri)
    assert dg.materialize(DATA_ASSETS, resources=resources, instance=instance, tags=RANGE).success
    return resources


def _train(
    resources: dict[str, object], instance: dg.DagsterInstance, raise_on_error: bool = True
) -> dg.ExecuteInProcessResult:
    return dg.materialize(TRAINING_ASSETS, resources=resources, instance=instance, raise_on_error=raise_on_error)


def test_search_promotes_then_refuses_an_equal_model_then_rolls_back(
    ingested: dict[str, object],
    instance: dg.DagsterInstance,
    mlflow_uri: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    first = _train(ingested, instance)
    metadata = first.asset_materializations_for_node("atmos_champion_model")[0].metadata
    assert metadata["decision"].value == "promoted" and metadata["champion_version"].value == 1
    tuned = first.output_for_node("atmos_tuned_model")
    assert tuned.test_score < tuned.baselines["persistence"] and tuned.test_score < tuned.baselines["seasonal_naive"]

    client = mlflow.MlflowClient(mlflow_uri)
    version = client.get_model_version_by_alias(ATMOS_MODEL_NAME, "champion")
    assert str(version.version) == "1" and version.tags["decision"] == "promoted"
    parent = client.get_run(tuned.run_id)
    assert parent.data.tags["dagster_run_id"] == first.run_id
    trials = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{tuned.run_id}'")
    assert len(trials) == tuned.trials >= 2
    assert all("val_mae" in trial.data.metrics for trial in trials)
    finished = [trial for trial in trials if "fit_seconds" in trial.data.metrics]  # the others ASHA stopped early
    assert finished and all("val_mae_h24" in trial.data.metrics for trial in finished)
    with downloaded_model(mlflow_uri, f"models:/{ATMOS_MODEL_NAME}/1") as local:
        model_info = mlflow.models.get_model_info(str(local))
    assert model_info.signature is not None and model_info.saved_input_example_info is not None
    assert FEATURE_SPEC_KEY in model_info.metadata and model_info.model_uri == tuned.model_uri
    logged = client.get_logged_model(tuned.model_uri.removeprefix("models:/"))
    assert logged.status == LoggedModelStatus.READY and logged.source_run_id == tuned.run_id
    assert parent.info.status == "FINISHED" and parent.data.metrics["test_mae"] == pytest.approx(tuned.test_score)
    assert parent.data.params["best_family"] == tuned.family
    tuned_metadata = first.asset_materializations_for_node("atmos_tuned_model")[0].metadata
    assert "compiled_as" in tuned_metadata  # what the service will evaluate, proven on the whole test set
    if tuned_metadata["compiled_as"].value != "none":
        assert tuned_metadata["compiled_max_abs_diff"].value <= 1e-9
        assert parent.data.metrics["compiled_max_abs_diff"] <= 1e-9
    checks = {evaluation.check_name: evaluation.passed for evaluation in first.get_asset_check_evaluations()}
    assert checks == {"atmos_tuned_model_beats_baselines": True, "atmos_champion_serves": True}

    # The same data and seed give the same model: a tie keeps the champion.
    second = _train(ingested, instance)
    metadata = second.asset_materializations_for_node("atmos_champion_model")[0].metadata
    assert metadata["decision"].value == "rejected" and metadata["registered_version"].value == 2
    assert metadata["champion_version"].value == 1
    assert str(client.get_model_version_by_alias(ATMOS_MODEL_NAME, "champion").version) == "1"
    assert client.get_model_version(ATMOS_MODEL_NAME, "2").tags["decision"] == "rejected"

    # A person moves the alias to v2, then rolls back with a reason.
    client.set_registered_model_alias(ATMOS_MODEL_NAME, "champion", "2")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    assert main(["champion", "--rollback", "1", "--reason", "v2 drifts at night"]) == 0
    restored = client.get_model_version_by_alias(ATMOS_MODEL_NAME, "champion")
    assert str(restored.version) == "1" and restored.tags["rollback_reason"] == "v2 drifts at night"
    assert restored.tags["rolled_back_from"] == "2"
    assert main(["champion"]) == 0
    assert "atmos_temperature@champion = version 1" in capsys.readouterr().out

    # The request example reads the champion's feature spec (only its MLmodel file) from the store.
    warehouse = ingested["warehouse"]
    assert isinstance(warehouse, WarehouseResource)
    monkeypatch.setenv("WAREHOUSE_URL", warehouse.url)
    assert main(["example-request"]) == 0
    request = json.loads(capsys.readouterr().out)
    assert len(request["time_series"]) == 72 and all(isinstance(value, float) for value in request["time_series"])


def test_an_unreachable_tracking_server_fails_the_run_and_promotes_nothing(
    ingested: dict[str, object], tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    resources = _resources(tmp_path, "http://127.0.0.1:9")  # discard port: nothing listens
    result = _train(resources, instance, raise_on_error=False)
    assert not result.success
    errors = [
        event.event_specific_data.error.to_string()
        for event in result.all_events
        if event.is_failure and getattr(event.event_specific_data, "error", None) is not None
    ]
    assert any("127.0.0.1:9" in error and "Connection refused" in error for error in errors), errors
    assert not result.asset_materializations_for_node("atmos_champion_model")


def test_new_features_trigger_retraining_through_automation(
    ingested: dict[str, object], instance: dg.DagsterInstance
) -> None:
    definitions = dg.Definitions(assets=[*DATA_ASSETS[:2], *TRAINING_ASSETS[:3]], resources=ingested)
    baseline = dg.evaluate_automation_conditions(defs=definitions, instance=instance)
    quiet = dg.evaluate_automation_conditions(defs=definitions, instance=instance, cursor=baseline.cursor)
    assert quiet.total_requested == 0  # nothing new, nothing to do

    # The schedule ingests a new day, which rebuilds the features: retraining and promotion follow
    # in the same tick (one run for the chain: windows -> search -> promotion), without a person.
    assert dg.materialize(DATA_ASSETS, resources=ingested, instance=instance, partition_key="2013-05-01").success
    tick = dg.evaluate_automation_conditions(defs=definitions, instance=instance, cursor=quiet.cursor)
    for asset in (atmos_training_windows, atmos_tuned_model, atmos_champion_model):
        assert tick.get_num_requested(asset.key) == 1, asset.key
    after = dg.evaluate_automation_conditions(defs=definitions, instance=instance, cursor=tick.cursor)
    assert after.total_requested == 0  # requested once, not again on every tick


@pytest.mark.postgres
def test_the_search_and_promotion_work_against_a_tracking_server_on_postgres(
    ingested: dict[str, object], tmp_path: Path, instance: dg.DagsterInstance, mlflow_server: str
) -> None:
    resources = {**ingested, **mlflow_resources(MlflowRegistry(tracking_uri=mlflow_server))}
    result = _train(resources, instance)
    metadata = result.asset_materializations_for_node("atmos_champion_model")[0].metadata
    assert metadata["decision"].value == "promoted"
    client = mlflow.MlflowClient(mlflow_server)
    champion = client.get_model_version_by_alias(ATMOS_MODEL_NAME, "champion")
    tuned = result.output_for_node("atmos_tuned_model")
    assert champion.run_id == tuned.run_id
    trials = client.search_runs([tuned.experiment_id], f"tags.mlflow.parentRunId = '{tuned.run_id}'")
    assert len(trials) == tuned.trials
