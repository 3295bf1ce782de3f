"""Promotion per model pipeline, through Dagster with a real instance, Ray and a real MLflow store.

For atmos and insurance: a deliberately weak first champion (a one-trial search) is displaced by a
real quick search, and a challenger that cannot beat its baseline (data no model can predict better
than the baseline does) is stopped by the blocking check with the alias left where it was. For every
model, the `*_champion_serves` check passes after promotion and fails when the alias is moved by
hand to a version that scores differently, or when there is no champion.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
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
from mlops_assets.atmos.source import CsvObservationSource, SampleObservationSource
from mlops_assets.constants import ATMOS_MODEL_NAME, DIGITS_MODEL_NAME, INSURANCE_MODEL_NAME
from mlops_assets.digits.assets import digit_images, digits_champion_model, digits_tuned_model
from mlops_assets.digits.checks import digits_champion_serves
from mlops_assets.digits.families import KNOWN_GOOD
from mlops_assets.digits.source import BundledDigitsSource
from mlops_assets.insurance.assets import insurance_champion_model, insurance_policies, insurance_tuned_model
from mlops_assets.insurance.checks import insurance_champion_serves, insurance_tuned_model_beats_baseline
from mlops_assets.insurance.dataset import synthetic_policies
from mlops_assets.insurance.source import CsvPolicySource, SyntheticPolicySource
from mlops_assets.resources import mlflow_resources
from mlops_assets.resources.mlflow_registry import MlflowRegistry
from mlops_assets.resources.warehouse import WarehouseResource
from mlops_assets.tuning.resources import TuningResource

pytestmark = pytest.mark.slow

#: One-trial searches whose only configuration (Optuna's first sample for the seed) is poor, yet beats
#: the baselines: a ridge on temperature lags alone (test MAE 1.69 C on Jan-Mar 2013 at JFK, against
#: 1.77 for seasonal naive and 1.57 for the quick search), and a linear model of the insurance
#: charges (MAE 3,499 against 3,143 for the quick search's boosted trees and 8,008 for the median).
ATMOS_WEAK_SEARCH = TuningResource(search="quick", num_samples=1, seed=10)
INSURANCE_WEAK_SEARCH = TuningResource(search="quick", num_samples=1, seed=3)
#: The quick search the other pipeline tests use (several families, seed 0).
QUICK_SEARCH = TuningResource(search="quick")

ATMOS_RANGE = {ASSET_PARTITION_RANGE_START_TAG: "2013-01-01", ASSET_PARTITION_RANGE_END_TAG: "2013-03-31"}
ATMOS_DATA = [raw_atmos_observations, atmos_features]
ATMOS_TRAINING = [
    atmos_training_windows,
    atmos_tuned_model,
    atmos_tuned_model_beats_baselines,
    atmos_champion_model,
    atmos_champion_serves,
]
INSURANCE_TRAINING = [
    insurance_tuned_model,
    insurance_tuned_model_beats_baseline,
    insurance_champion_model,
    insurance_champion_serves,
]


@pytest.fixture
def instance(local_ray: None) -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


def _champion_metadata(result: dg.ExecuteInProcessResult, node: str) -> dict[str, object]:
    return {key: value.value for key, value in result.asset_materializations_for_node(node)[0].metadata.items()}


def _checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()}


def _alias_version(client: mlflow.MlflowClient, model_name: str) -> str:
    return str(client.get_model_version_by_alias(model_name, "champion").version)


def _versions(client: mlflow.MlflowClient, model_name: str) -> list[str]:
    return sorted(str(version.version) for version in client.search_model_versions(f"name='{model_name}'"))


def _run_digits_serves_check_alone(
    resources: dict[str, object], instance: dg.DagsterInstance
) -> dg.AssetCheckEvaluation:
    """Only the check, as the UI's "Execute check" runs it: the champion step does not run again."""
    result = dg.materialize(
        [digits_tuned_model, digits_champion_model, digits_champion_serves],
        selection=dg.AssetSelection.checks(digits_champion_serves),
        resources=resources,
        instance=instance,
    )
    assert not result.asset_materializations_for_node("digits_champion_model")
    (evaluation,) = result.get_asset_check_evaluations()
    return evaluation


def _assert_displaced(
    first: dg.ExecuteInProcessResult,
    second: dg.ExecuteInProcessResult,
    node: str,
    client: mlflow.MlflowClient,
    model_name: str,
) -> None:
    """v1 (weak) was promoted, v2 beat it on the same holdout: the alias moved, v1 is kept,
    the serves check passed twice."""
    weak = _champion_metadata(first, node)
    assert weak["decision"] == "promoted" and weak["champion_version"] == 1
    better = _champion_metadata(second, node)
    assert better["decision"] == "promoted", better["reason"]
    assert (
        better["registered_version"] == 2 and better["champion_version_before"] == 1 and better["champion_version"] == 2
    )
    assert better["champion_test_mae_same_holdout"] == pytest.approx(weak["challenger_test_mae"], abs=1e-4)
    assert better["challenger_test_mae"] < better["champion_test_mae_same_holdout"]
    assert _alias_version(client, model_name) == "2"
    assert _versions(client, model_name) == ["1", "2"]
    assert (
        client.get_model_version(model_name, "1").tags["decision"] == "promoted"
    )  # the old champion is kept as it was
    for result in (first, second):
        serves = next(evaluation for name, evaluation in _checks(result).items() if name.endswith("_champion_serves"))
        assert serves.passed, serves.metadata


# --- atmos ---------------------------------------------------------------------------------------


def _atmos_resources(
    tmp_path: Path, mlflow_uri: str, tuning: TuningResource, source: object | None = None
) -> dict[str, object]:
    return {
        "source": source or SampleObservationSource(),
        "warehouse": WarehouseResource(url=f"sqlite:///{tmp_path / 'warehouse.db'}"),
        **mlflow_resources(MlflowRegistry(tracking_uri=mlflow_uri)),
        "tuning": tuning,
    }


def test_atmos_a_better_forecaster_displaces_a_weak_champion(
    tmp_path: Path, mlflow_uri: str, instance: dg.DagsterInstance
) -> None:
    weak = _atmos_resources(tmp_path, mlflow_uri, ATMOS_WEAK_SEARCH)
    assert dg.materialize(ATMOS_DATA, resources=weak, instance=instance, tags=ATMOS_RANGE).success
    first = dg.materialize(ATMOS_TRAINING, resources=weak, instance=instance)
    second = dg.materialize(ATMOS_TRAINING, resources={**weak, "tuning": QUICK_SEARCH}, instance=instance)
    _assert_displaced(first, second, "atmos_champion_model", mlflow.MlflowClient(mlflow_uri), ATMOS_MODEL_NAME)


def _periodic_station_csv(path: Path) -> Path:
    """Every day the same 24 hourly temperatures: seasonal naive forecasts it with an error of 0."""
    times = pd.date_range("2013-01-01", "2013-02-28 23:00", freq="h")
    tmp = np.round(8.0 + 6.0 * np.sin(2 * np.pi * (times.hour - 9) / 24), 1)
    pd.DataFrame({"time": times.strftime("%Y-%m-%d %H:%M"), "tmp": tmp}).to_csv(path, index=False)
    return path


def test_atmos_a_forecaster_that_cannot_beat_seasonal_naive_never_moves_the_alias(
    tmp_path: Path, mlflow_uri: str, instance: dg.DagsterInstance
) -> None:
    resources = _atmos_resources(tmp_path, mlflow_uri, ATMOS_WEAK_SEARCH)
    assert dg.materialize(ATMOS_DATA, resources=resources, instance=instance, tags=ATMOS_RANGE).success
    assert dg.materialize(ATMOS_TRAINING, resources=resources, instance=instance).success
    client = mlflow.MlflowClient(mlflow_uri)
    assert _alias_version(client, ATMOS_MODEL_NAME) == "1"

    periodic = CsvObservationSource(path=str(_periodic_station_csv(tmp_path / "periodic.csv")), station_id="PERIODIC")
    unbeatable = {**resources, "source": periodic}
    range_tags = {ASSET_PARTITION_RANGE_START_TAG: "2013-01-01", ASSET_PARTITION_RANGE_END_TAG: "2013-02-28"}
    assert dg.materialize(ATMOS_DATA, resources=unbeatable, instance=instance, tags=range_tags).success
    blocked = dg.materialize(ATMOS_TRAINING, resources=unbeatable, instance=instance, raise_on_error=False)

    gate = _checks(blocked)["atmos_tuned_model_beats_baselines"]
    assert not gate.passed
    assert gate.metadata["margin_over_baselines"].value["seasonal_naive"] <= 0
    assert not blocked.asset_materializations_for_node("atmos_champion_model")
    assert _versions(client, ATMOS_MODEL_NAME) == ["1"] and _alias_version(client, ATMOS_MODEL_NAME) == "1"


# --- insurance -----------------------------------------------------------------------------------


def _insurance_resources(
    tmp_path: Path, mlflow_uri: str, tuning: TuningResource, policy_source: object, warehouse: str = "w.db"
) -> dict[str, object]:
    return {
        "policy_source": policy_source,
        "warehouse": WarehouseResource(url=f"sqlite:///{tmp_path / warehouse}"),
        **mlflow_resources(MlflowRegistry(tracking_uri=mlflow_uri)),
        "tuning": tuning,
    }


def test_insurance_a_better_model_displaces_a_weak_champion(
    tmp_path: Path, mlflow_uri: str, instance: dg.DagsterInstance
) -> None:
    weak = _insurance_resources(tmp_path, mlflow_uri, INSURANCE_WEAK_SEARCH, SyntheticPolicySource())
    first = dg.materialize([insurance_policies, *INSURANCE_TRAINING], resources=weak, instance=instance)
    second = dg.materialize(INSURANCE_TRAINING, resources={**weak, "tuning": QUICK_SEARCH}, instance=instance)
    _assert_displaced(first, second, "insurance_champion_model", mlflow.MlflowClient(mlflow_uri), INSURANCE_MODEL_NAME)


def _unpredictable_policies_csv(path: Path) -> Path:
    """Synthetic policies with the charges shuffled: no feature says anything about them."""
    policies = synthetic_policies(1000, seed=11)
    policies["charges"] = np.random.default_rng(0).permutation(policies["charges"].to_numpy())
    policies.to_csv(path, index=False)
    return path


def test_insurance_a_model_that_cannot_beat_the_median_never_moves_the_alias(
    tmp_path: Path, mlflow_uri: str, instance: dg.DagsterInstance
) -> None:
    resources = _insurance_resources(tmp_path, mlflow_uri, INSURANCE_WEAK_SEARCH, SyntheticPolicySource())
    assert dg.materialize([insurance_policies, *INSURANCE_TRAINING], resources=resources, instance=instance).success
    client = mlflow.MlflowClient(mlflow_uri)
    assert _alias_version(client, INSURANCE_MODEL_NAME) == "1"

    noise = CsvPolicySource(path=str(_unpredictable_policies_csv(tmp_path / "noise.csv")))
    unbeatable = _insurance_resources(tmp_path, mlflow_uri, QUICK_SEARCH, noise, warehouse="noise.db")
    blocked = dg.materialize(
        [insurance_policies, *INSURANCE_TRAINING], resources=unbeatable, instance=instance, raise_on_error=False
    )

    gate = _checks(blocked)["insurance_tuned_model_beats_baseline"]
    assert not gate.passed
    assert gate.metadata["test_mae"].value >= gate.metadata["median_baseline"].value  # the median baseline wins
    assert not blocked.asset_materializations_for_node("insurance_champion_model")
    assert _versions(client, INSURANCE_MODEL_NAME) == ["1"] and _alias_version(client, INSURANCE_MODEL_NAME) == "1"


# --- the serves check ----------------------------------------------------------------------------


def _digits_resources(tmp_path: Path, mlflow_uri: str) -> dict[str, object]:
    return {
        "digits_source": BundledDigitsSource(),
        "warehouse": WarehouseResource(url=f"sqlite:///{tmp_path / 'warehouse.db'}"),
        **mlflow_resources(MlflowRegistry(tracking_uri=mlflow_uri)),
        "tuning": QUICK_SEARCH,
    }


def _forced(config: dict[str, object]) -> dg.RunConfig:
    return dg.RunConfig(ops={"digits_tuned_model": {"config": {"fixed_config": json.dumps(config)}}})


def test_the_serves_check_fails_when_the_alias_is_moved_to_a_version_that_scores_differently(
    tmp_path: Path, mlflow_uri: str, instance: dg.DagsterInstance
) -> None:
    resources = _digits_resources(tmp_path, mlflow_uri)
    steps = [digit_images, digits_tuned_model, digits_champion_model, digits_champion_serves]
    good = dg.materialize(steps, resources=resources, instance=instance, run_config=_forced(dict(KNOWN_GOOD)))
    worse = dg.materialize(
        steps[1:], resources=resources, instance=instance, run_config=_forced({"family": "mlp", "mlp_hidden": 3})
    )
    assert _champion_metadata(good, "digits_champion_model")["decision"] == "promoted"
    assert _champion_metadata(worse, "digits_champion_model")["decision"] == "rejected"  # registered as v2 all the same
    assert _checks(good)["digits_champion_serves"].passed and _checks(worse)["digits_champion_serves"].passed
    client = mlflow.MlflowClient(mlflow_uri)
    assert _alias_version(client, DIGITS_MODEL_NAME) == "1"

    client.set_registered_model_alias(DIGITS_MODEL_NAME, "champion", "2")  # by hand, outside any champion step
    evaluation = _run_digits_serves_check_alone(resources, instance)

    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    metadata = {key: value.value for key, value in evaluation.metadata.items()}
    assert metadata["champion_version"] == 2 and metadata["promoted_version"] == 1
    recorded = float(client.get_model_version(DIGITS_MODEL_NAME, "1").tags["test_error_rate"])
    assert metadata["recorded_test_error_rate"] == pytest.approx(recorded, abs=1e-4)
    assert metadata["remeasured_test_error_rate"] > metadata["recorded_test_error_rate"]
    assert "(v2)" in metadata["problem"] and "champion v1" in metadata["problem"]

    # Back where the champion step left it: the same check passes again.
    client.set_registered_model_alias(DIGITS_MODEL_NAME, "champion", "1")
    assert _run_digits_serves_check_alone(resources, instance).passed


def test_the_serves_check_fails_without_a_champion(tmp_path: Path, mlflow_uri: str) -> None:
    with dg.instance_for_test() as instance:
        evaluation = _run_digits_serves_check_alone(_digits_resources(tmp_path, mlflow_uri), instance)
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert "no version of digit_classifier carries the 'champion' alias" in evaluation.metadata["problem"].value
