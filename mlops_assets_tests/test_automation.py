"""Automation without a click: the sensor runs from the first start, and new days reach the features."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from mlops_assets.atmos.assets import atmos_features, atmos_training_windows, raw_atmos_observations
from mlops_assets.atmos.source import SampleObservationSource
from mlops_assets.definitions import defs
from mlops_assets.resources.warehouse import WarehouseResource


def test_the_automation_sensor_runs_by_default() -> None:
    sensor = defs().get_sensor_def("automation")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    # It is the only automation sensor: Dagster then creates no stopped default one beside it.
    assert [s.name for s in defs().sensors if isinstance(s, dg.AutomationConditionSensorDefinition)] == ["automation"]


def test_new_daily_partitions_rebuild_the_features_and_what_follows(tmp_path: Path) -> None:
    """Partitions back to 2000-01-01 that were never ingested must not hold the features back."""
    resources = {
        "source": SampleObservationSource(),
        "warehouse": WarehouseResource(url=f"sqlite:///{tmp_path / 'w.db'}"),
    }
    definitions = dg.Definitions(
        assets=[raw_atmos_observations, atmos_features, atmos_training_windows], resources=resources
    )
    backfill = {ASSET_PARTITION_RANGE_START_TAG: "2013-01-01", ASSET_PARTITION_RANGE_END_TAG: "2013-03-31"}
    with dg.instance_for_test() as instance:
        assert dg.materialize(
            [raw_atmos_observations, atmos_features], resources=resources, instance=instance, tags=backfill
        ).success
        first = dg.evaluate_automation_conditions(defs=definitions, instance=instance)
        quiet = dg.evaluate_automation_conditions(defs=definitions, instance=instance, cursor=first.cursor)
        assert quiet.total_requested == 0

        new_days = {ASSET_PARTITION_RANGE_START_TAG: "2013-04-01", ASSET_PARTITION_RANGE_END_TAG: "2013-04-03"}
        assert dg.materialize([raw_atmos_observations], resources=resources, instance=instance, tags=new_days).success
        tick = dg.evaluate_automation_conditions(defs=definitions, instance=instance, cursor=quiet.cursor)
        assert tick.get_num_requested(atmos_features.key) == 1
        assert tick.get_num_requested(atmos_training_windows.key) == 1  # the chain follows in the same tick
        assert tick.get_num_requested(raw_atmos_observations.key) == 0  # old days are not re-ingested


@pytest.mark.parametrize("asset_name", ["atmos_tuned_model", "insurance_tuned_model"])
def test_tuned_models_are_kept_in_mlflow_not_on_local_disk(asset_name: str) -> None:
    definitions = defs()
    asset = definitions.resolve_assets_def(asset_name)
    assert asset.get_io_manager_key_for_asset_key(asset.key) == "tuned_model_io_manager"
