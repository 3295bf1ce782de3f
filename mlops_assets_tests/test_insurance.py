"""The insurance pipeline: row validation, idempotent loads, the fast encoder, search and promotion."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
import pytest

from mlops_assets.constants import INSURANCE_MODEL_NAME
from mlops_assets.insurance.assets import insurance_champion_model, insurance_policies, insurance_tuned_model
from mlops_assets.insurance.checks import insurance_tuned_model_beats_baseline
from mlops_assets.insurance.dataset import synthetic_policies, validate_policies
from mlops_assets.insurance.families import FEATURES, build_insurance_model, legacy_code, split_policies
from mlops_assets.insurance.source import CsvPolicySource, SyntheticPolicySource
from mlops_assets.resources import mlflow_resources
from mlops_assets.resources.mlflow_registry import MlflowRegistry
from mlops_assets.resources.warehouse import WarehouseResource
from mlops_assets.tuning.resources import TuningResource
from serving.models._insurance_encoding import FastRowEncoder

#: The public medical-cost dataset, beside the project (not part of it).
PUBLIC_DATASET = Path(__file__).resolve().parents[2] / "shared" / "data" / "insurance.csv"
ASSETS = [insurance_policies, insurance_tuned_model, insurance_champion_model, insurance_tuned_model_beats_baseline]


@pytest.fixture
def instance(local_ray: None) -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policies.csv"
    path.write_text(text)
    return path


def test_bad_rows_are_rejected_with_line_numbers_and_good_rows_kept() -> None:
    raw = pd.DataFrame(
        {
            "age": ["19", "17", "40", "x", "50"],
            "sex": ["female", "male", "robot", "male", "MALE"],
            "bmi": ["27.9", "30", "30", "30", "90"],
            "children": ["0", "1", "2", "0", "11"],
            "smoker": ["yes", "no", "no", "no", "no"],
            "region": ["southwest", "northeast", "north", "southeast", "southeast"],
            "charges": ["16884.9", "100", "100", "100", "-5"],
        }
    )
    checked = validate_policies(raw)
    assert checked.valid["line"].tolist() == [2]
    problems = {row.line: " | ".join(row.problems) for row in checked.rejected}
    assert set(problems) == {3, 4, 5, 6}
    assert "age=17 is outside 18..100" in problems[3]
    assert "sex='robot' is not one of female, male" in problems[4] and "region='north'" in problems[4]
    assert "age='x' is not a number" in problems[5]
    assert (
        "bmi=90 is outside 10..80" in problems[6]
        and "children=11" in problems[6]
        and "charges=-5 is not positive" in problems[6]
    )


def test_a_file_with_bad_rows_loads_the_good_ones_and_reports_the_rest(
    tmp_path: Path, warehouse_url: str, instance: dg.DagsterInstance
) -> None:
    path = _write(
        tmp_path,
        "age,sex,bmi,children,smoker,region,charges\n30,male,25,1,no,northeast,5000\n200,male,25,1,no,northeast,5000\n",
    )
    warehouse = WarehouseResource(url=warehouse_url)
    resources = {"policy_source": CsvPolicySource(path=str(path)), "warehouse": warehouse}
    for _ in range(2):  # re-loading the same file does not duplicate rows
        result = dg.materialize([insurance_policies], resources=resources, instance=instance)
        metadata = result.asset_materializations_for_node("insurance_policies")[0].metadata
        assert metadata["dagster/row_count"].value == 1 and metadata["rows_rejected"].value == 1
        assert metadata["rejected_rows"].value == [{"line": 3, "problems": ["age=200 is outside 18..100"]}]
    assert len(warehouse.read_policies()) == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("age,sex,bmi\n30,male,25\n", "missing columns ['children', 'smoker', 'region', 'charges']"),
        (
            "age,sex,bmi,children,smoker,region,charges\n5,cat,1,0,maybe,mars,0\n",
            "no valid policy among 1 rows; first problems: line 2",
        ),
    ],
    ids=["wrong-schema", "nothing-valid"],
)
def test_a_wrong_schema_or_no_valid_row_fails_the_run(
    text: str, message: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    path = _write(tmp_path, text)
    warehouse = WarehouseResource(url=f"sqlite:///{tmp_path / 'w.db'}")
    result = dg.materialize(
        [insurance_policies],
        resources={"policy_source": CsvPolicySource(path=str(path)), "warehouse": warehouse},
        instance=instance,
        raise_on_error=False,
    )
    failure = next(event for event in result.all_events if event.is_step_failure)
    assert message in failure.step_failure_data.error.message
    assert warehouse.read_policies().empty


def test_the_synthetic_sample_has_the_public_schema_and_validates() -> None:
    sample = synthetic_policies()
    checked = validate_policies(sample)
    assert len(checked.valid) == len(sample) == 1338 and not checked.rejected


def test_legacy_integer_codes_map_to_the_dataset_words() -> None:
    assert (legacy_code("sex", 0), legacy_code("smoker", 1), legacy_code("region", 3)) == ("female", "yes", "southwest")
    with pytest.raises(ValueError, match=r"region code 4 is not one of 0..3"):
        legacy_code("region", 4)


@pytest.mark.parametrize("family", ["gbm", "linear"])
def test_the_fast_encoder_gives_the_pipelines_numbers(family: str) -> None:
    policies = validate_policies(pd.read_csv(PUBLIC_DATASET, dtype=str)).valid
    split = split_policies(policies)
    pipeline = build_insurance_model({"family": family}).fit(split.train[list(FEATURES)], split.train["charges"])
    encoder = FastRowEncoder(pipeline.named_steps["encode"])
    model = pipeline.named_steps["model"]
    expected = pipeline.predict(split.test[list(FEATURES)])
    rows = split.test[list(FEATURES)].to_dict(orient="records")
    fast = np.array([model.predict(encoder.encode(**row))[0] for row in rows])
    np.testing.assert_allclose(fast, expected, rtol=1e-9, atol=1e-6)


def _resources(tmp_path: Path, tracking_uri: str, policy_source: object) -> dict[str, object]:
    return {
        "policy_source": policy_source,
        "warehouse": WarehouseResource(url=f"sqlite:///{tmp_path / 'w.db'}"),
        **mlflow_resources(MlflowRegistry(tracking_uri=tracking_uri)),
        "tuning": TuningResource(search="quick"),
    }


def test_the_public_dataset_trains_promotes_and_meets_the_quality_bar(
    tmp_path: Path, mlflow_uri: str, instance: dg.DagsterInstance
) -> None:
    resources = _resources(tmp_path, mlflow_uri, CsvPolicySource(path=str(PUBLIC_DATASET)))
    result = dg.materialize(ASSETS, resources=resources, instance=instance)
    tuned = result.output_for_node("insurance_tuned_model")
    assert tuned.test_score <= 2600 and tuned.details["test_r2"] >= 0.85, (
        tuned.test_score,
        tuned.details,
        tuned.config,
    )
    metadata = result.asset_materializations_for_node("insurance_champion_model")[0].metadata
    assert metadata["decision"].value == "promoted" and metadata["champion_version"].value == 1
    champion = mlflow.MlflowClient(mlflow_uri).get_model_version_by_alias(INSURANCE_MODEL_NAME, "champion")
    assert champion.tags["decision"] == "promoted" and float(champion.tags["test_mae"]) == pytest.approx(
        tuned.test_score, abs=0.01
    )

    # Retraining on the same table with the same seed is a tie: the champion stays.
    again = dg.materialize(ASSETS[1:], resources=resources, instance=instance)
    metadata = again.asset_materializations_for_node("insurance_champion_model")[0].metadata
    assert metadata["decision"].value == "rejected" and metadata["champion_version"].value == 1


def test_the_synthetic_default_runs_end_to_end(tmp_path: Path, mlflow_uri: str, instance: dg.DagsterInstance) -> None:
    result = dg.materialize(
        ASSETS, resources=_resources(tmp_path, mlflow_uri, SyntheticPolicySource()), instance=instance
    )
    assert result.success
    policies = result.asset_materializations_for_node("insurance_policies")[0].metadata
    assert policies["synthetic_sample"].value is True
