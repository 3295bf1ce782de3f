"""The digits pipeline end to end: real SQLite warehouse, real MLflow SQLite store, real Ray Tune.

Three runs on one store: a quick search is promoted; a forced worse challenger is registered but
rejected (the champion, re-scored on the same holdout, stays); a forced challenger below plain kNN
is stopped by the blocking check before it reaches the registry.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import mlflow
import pytest

from mlops_assets.constants import DIGITS_MODEL_NAME
from mlops_assets.digits.assets import digit_images, digits_champion_model, digits_tuned_model
from mlops_assets.digits.checks import digits_tuned_model_beats_baselines
from mlops_assets.digits.source import BundledDigitsSource
from mlops_assets.resources.mlflow_registry import MlflowRegistry
from mlops_assets.resources.tuned_model_store import TUNED_MODEL_IO_MANAGER, MlflowTunedModelIOManager
from mlops_assets.resources.warehouse import WarehouseResource
from mlops_assets.tuning.resources import TuningResource
from mlops_assets.tuning.tuned_model import TunedModel

pytestmark = pytest.mark.slow


@pytest.fixture
def instance(local_ray: None) -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


def _resources(tmp_path: Path, mlflow_uri: str) -> dict[str, object]:
    return {
        "digits_source": BundledDigitsSource(),
        "warehouse": WarehouseResource(url=f"sqlite:///{tmp_path / 'warehouse.db'}"),
        "registry": MlflowRegistry(tracking_uri=mlflow_uri),
        "tuning": TuningResource(search="quick"),
        # The real one: the TunedModel goes to its MLflow run as JSON and is loaded back from there.
        TUNED_MODEL_IO_MANAGER: MlflowTunedModelIOManager(registry=MlflowRegistry(tracking_uri=mlflow_uri)),
    }


def _forced(config: dict[str, object]) -> dg.RunConfig:
    return dg.RunConfig(ops={"digits_tuned_model": {"config": {"fixed_config": json.dumps(config)}}})


def test_search_promotes_then_worse_challengers_are_rejected(
    tmp_path: Path, mlflow_uri: str, instance: dg.DagsterInstance
) -> None:
    resources = _resources(tmp_path, mlflow_uri)
    client = mlflow.MlflowClient(mlflow_uri)

    searched = dg.materialize(
        [digit_images, digits_tuned_model, digits_tuned_model_beats_baselines], resources=resources, instance=instance
    )
    tuned = searched.output_for_node("digits_tuned_model")
    # The champion step runs later, in another run: it finds the tuned model in MLflow, not in memory.
    first = dg.materialize(
        [digits_tuned_model, digits_champion_model],
        selection=[digits_champion_model],
        resources=resources,
        instance=instance,
    )
    assert tuned.metric == "test_error_rate" and tuned.trials == 4
    assert TunedModel.from_dict(json.loads(json.dumps(tuned.to_dict()))) == tuned  # what the MLflow I/O manager stores
    assert tuned.details["test_accuracy"] >= 0.95, tuned
    assert tuned.test_score < tuned.baselines["knn3_raw"] < tuned.baselines["majority"]
    champion_meta = first.asset_materializations_for_node("digits_champion_model")[0].metadata
    assert champion_meta["decision"].value == "promoted" and champion_meta["champion_version"].value == 1
    assert champion_meta["challenger_test_accuracy"].value == pytest.approx(tuned.details["test_accuracy"], abs=1e-4)
    champion = client.get_model_version_by_alias(DIGITS_MODEL_NAME, "champion")
    assert str(champion.version) == "1" and float(champion.tags["test_accuracy"]) >= 0.95

    # A forced small MLP: registered as v2, rejected; the champion is re-scored on the same holdout.
    worse = dg.materialize(
        [digits_tuned_model, digits_champion_model],
        resources=resources,
        instance=instance,
        run_config=_forced({"family": "mlp", "mlp_hidden": 3}),
    )
    weak = worse.output_for_node("digits_tuned_model")
    assert weak.trials == 1 and weak.family == "mlp" and weak.config["mlp_hidden"] == 3
    meta = worse.asset_materializations_for_node("digits_champion_model")[0].metadata
    assert meta["decision"].value == "rejected" and meta["registered_version"].value == 2
    assert meta["champion_version"].value == 1
    assert meta["champion_test_error_rate_same_holdout"].value == pytest.approx(tuned.test_score, abs=1e-4)
    assert meta["challenger_test_error_rate"].value > meta["champion_test_error_rate_same_holdout"].value
    assert client.get_model_version(DIGITS_MODEL_NAME, "2").tags["decision"] == "rejected"
    assert str(client.get_model_version_by_alias(DIGITS_MODEL_NAME, "champion").version) == "1"

    # Below plain kNN: the blocking check fails and the champion step never runs.
    blocked = dg.materialize(
        [digits_tuned_model, digits_tuned_model_beats_baselines, digits_champion_model],
        resources=resources,
        instance=instance,
        run_config=_forced({"family": "nca_knn", "nca_components": 2, "knn_k": 3}),
        raise_on_error=False,
    )
    evaluation = blocked.get_asset_check_evaluations()[0]
    assert not evaluation.passed
    assert evaluation.metadata["test_accuracy"].value < evaluation.metadata["knn3_raw_baseline_accuracy"].value
    assert not blocked.asset_materializations_for_node("digits_champion_model")
    versions = client.search_model_versions(f"name='{DIGITS_MODEL_NAME}'")
    assert sorted(str(v.version) for v in versions) == ["1", "2"]
    assert str(client.get_model_version_by_alias(DIGITS_MODEL_NAME, "champion").version) == "1"


def test_a_bad_fixed_config_fails_before_training(
    tmp_path: Path, mlflow_uri: str, instance: dg.DagsterInstance
) -> None:
    resources = _resources(tmp_path, mlflow_uri)
    dg.materialize([digit_images], resources=resources, instance=instance)
    result = dg.materialize(
        [digits_tuned_model],
        resources=resources,
        instance=instance,
        run_config=_forced({"family": "svc", "gamma": 3}),
        raise_on_error=False,
    )
    failure = next(event for event in result.all_events if event.is_step_failure)
    assert "unknown digits hyperparameters ['gamma']" in failure.step_failure_data.error.message
