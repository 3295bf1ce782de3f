"""Every asset in its own run, each run on a fresh Dagster instance: what a cluster does to a pipeline.

On Kubernetes each run is its own pod with a throw-away disk; the runs share only the warehouse and
MLflow. A step that needed a pickle from an earlier run's disk would fail here.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import mlflow
import pytest
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from mlops_assets.atmos.assets import (
    atmos_champion_model,
    atmos_features,
    atmos_training_windows,
    atmos_tuned_model,
    raw_atmos_observations,
)
from mlops_assets.atmos.checks import atmos_champion_serves, atmos_tuned_model_beats_baselines
from mlops_assets.atmos.source import SampleObservationSource
from mlops_assets.constants import ATMOS_MODEL_NAME, INSURANCE_MODEL_NAME
from mlops_assets.insurance.assets import insurance_champion_model, insurance_policies, insurance_tuned_model
from mlops_assets.insurance.checks import insurance_tuned_model_beats_baseline
from mlops_assets.insurance.source import SyntheticPolicySource
from mlops_assets.resources import mlflow_resources
from mlops_assets.resources.mlflow_registry import MlflowRegistry
from mlops_assets.resources.tuned_model_store import TunedModelNotFound
from mlops_assets.resources.warehouse import WarehouseResource
from mlops_assets.tuning.resources import TuningResource

RANGE = {ASSET_PARTITION_RANGE_START_TAG: "2013-01-01", ASSET_PARTITION_RANGE_END_TAG: "2013-04-30"}
ATMOS = [raw_atmos_observations, atmos_features, atmos_training_windows, atmos_tuned_model, atmos_champion_model]
INSURANCE = [insurance_policies, insurance_tuned_model, insurance_champion_model]
CHECKS = [atmos_tuned_model_beats_baselines, atmos_champion_serves, insurance_tuned_model_beats_baseline]


def _resources(folder: Path) -> dict[str, object]:
    return {
        "source": SampleObservationSource(),
        "policy_source": SyntheticPolicySource(),
        "warehouse": WarehouseResource(url=f"sqlite:///{folder / 'warehouse.db'}"),
        **mlflow_resources(MlflowRegistry(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")),
        "tuning": TuningResource(search="quick", num_samples=2),
    }


def _decisions(result: dg.ExecuteInProcessResult) -> dict[str, object]:
    found = {}
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        if materialization.asset_key.to_user_string().endswith("_champion_model"):
            meta = materialization.metadata
            found[materialization.asset_key.to_user_string()] = (meta["decision"].value, meta["champion_version"].value)
    return found


def _one_asset_per_run(assets: list[dg.AssetsDefinition], resources: dict[str, object]) -> dict[str, object]:
    decisions: dict[str, object] = {}
    for asset in assets:
        with dg.instance_for_test() as fresh_instance:  # nothing of the earlier runs' instances survives
            result = dg.materialize(
                [*ATMOS, *INSURANCE, *CHECKS],
                selection=dg.AssetSelection.assets(asset),  # this asset and its checks; upstream comes from the stores
                resources=resources,
                instance=fresh_instance,
                tags=RANGE if asset.partitions_def is not None else {},
            )
        assert result.success, asset.key
        decisions.update(_decisions(result))
    return decisions


@pytest.mark.usefixtures("local_ray")
def test_each_asset_in_its_own_run_on_a_fresh_instance_reaches_the_decision_of_one_run(tmp_path: Path) -> None:
    together_dir, split_dir = tmp_path / "together", tmp_path / "split"
    together_dir.mkdir()
    split_dir.mkdir()

    with dg.instance_for_test() as instance:
        together = dg.materialize(
            [*ATMOS, *INSURANCE, *CHECKS], resources=_resources(together_dir), instance=instance, tags=RANGE
        )
    assert together.success

    split_resources = _resources(split_dir)
    with pytest.raises(TunedModelNotFound, match="materialize atmos_tuned_model first"):
        split_resources["tuned_model_io_manager"].latest("atmos_tuned_model")  # type: ignore[attr-defined]
    split = _one_asset_per_run(ATMOS + INSURANCE, split_resources)

    assert (
        _decisions(together)
        == split
        == {
            "atmos_champion_model": ("promoted", 1),
            "insurance_champion_model": ("promoted", 1),
        }
    )
    # The version registered by the separate champion run is the model of the separate search run.
    client = mlflow.MlflowClient(f"sqlite:///{split_dir / 'mlflow.db'}")
    for model_name, experiment in (
        (ATMOS_MODEL_NAME, "atmos_temperature"),
        (INSURANCE_MODEL_NAME, "insurance_charges"),
    ):
        champion = client.get_model_version_by_alias(model_name, "champion")
        search_runs = client.search_runs(
            [client.get_experiment_by_name(experiment).experiment_id], "tags.dagster_asset != ''"
        )
        assert champion.run_id in {run.info.run_id for run in search_runs}
