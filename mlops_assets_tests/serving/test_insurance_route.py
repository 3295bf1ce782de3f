"""`/predict/insurance`: the insurance champion served through the generic cache and routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from mlops_assets.insurance.dataset import validate_policies
from mlops_assets.insurance.families import FEATURES, SKOPS_TRUSTED_TYPES, build_insurance_model, split_policies
from mlops_assets_tests.serving.support import fluent_mlflow_at, wait_ready

pytestmark = pytest.mark.anyio
PUBLIC_DATASET = Path(__file__).resolve().parents[3] / "shared" / "data" / "insurance.csv"
POLICY = {"age": 19, "sex": "female", "bmi": 27.9, "children": 0, "smoker": "yes", "region": "southwest"}


@pytest.fixture(scope="module")
def policies() -> pd.DataFrame:
    return validate_policies(pd.read_csv(PUBLIC_DATASET, dtype=str)).valid


@pytest.fixture(scope="module", params=["gbm", "linear"])
def registered(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, policies: pd.DataFrame
) -> tuple[str, object]:
    """A fitted pipeline of each family registered as the `insurance_charges` champion."""
    import mlflow.models

    uri = f"sqlite:///{tmp_path_factory.mktemp('insurance-serving') / 'mlflow.db'}"
    split = split_policies(policies)
    pipeline = build_insurance_model({"family": request.param}).fit(split.train[list(FEATURES)], split.train["charges"])
    with pytest.MonkeyPatch.context() as patch:
        # Inferring pip requirements spawns an interpreter per model (~4 s); serving never reads them.
        patch.setattr(mlflow.models, "infer_pip_requirements", lambda *a, fallback=None, **k: list(fallback or []))
        with fluent_mlflow_at(uri), mlflow.start_run():
            info = mlflow.sklearn.log_model(pipeline, name="model", skops_trusted_types=SKOPS_TRUSTED_TYPES)
            version = mlflow.register_model(info.model_uri, "insurance_charges")
    mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).set_registered_model_alias(
        "insurance_charges", "champion", version.version
    )
    return uri, pipeline


@pytest.fixture
async def served(registered: tuple[str, object]) -> AsyncIterator[tuple[AsyncTestClient[Litestar], object]]:
    """The service on that store, serving only the insurance model."""
    from serving.app import create_app
    from serving.settings import ServingSettings

    uri, pipeline = registered
    app = create_app(ServingSettings(mlflow_tracking_uri=uri, poll_seconds=0.2, models=("insurance_charges",)))
    async with AsyncTestClient(app) as client:
        await wait_ready(client)
        yield client, pipeline


async def test_the_route_answers_the_pipelines_number_for_words_and_legacy_codes(served: tuple) -> None:
    client, pipeline = served
    expected = float(pipeline.predict(pd.DataFrame([POLICY])[list(FEATURES)])[0])
    for method in ("put", "post"):
        response = await getattr(client, method)("/predict/insurance", json=POLICY)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["result"] == pytest.approx(expected, rel=1e-9)
        assert body["model"] == {"name": "insurance_charges", "version": "1", "alias": "champion"}
    legacy = {**POLICY, "sex": 0, "smoker": 1, "region": 3}
    response = await client.put("/predict/insurance", json=legacy)
    assert response.json()["result"] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"region": "mars"}, "$.region", ["northeast", "northwest", "southeast", "southwest"]),
        ({"sex": 7}, "$.sex", ["female", "male"]),
        ({"smoker": "maybe"}, "$.smoker", ["no", "yes"]),
        ({"age": 12}, "$.age", [">= 18"]),
        ({"children": 2.5}, "$.children", ["int"]),
    ],
)
async def test_a_bad_field_is_a_4xx_naming_the_field_and_allowed_values(
    served: tuple, change: dict, field: str, words: list[str]
) -> None:
    client, _ = served
    response = await client.put("/predict/insurance", json={**POLICY, **change})
    assert 400 <= response.status_code < 500, response.text
    text = response.text
    assert field.removeprefix("$.") in text and all(word in text for word in words), text


async def test_a_missing_field_is_named(served: tuple) -> None:
    client, _ = served
    response = await client.put("/predict/insurance", json={k: v for k, v in POLICY.items() if k != "bmi"})
    assert 400 <= response.status_code < 500 and "bmi" in response.text


def test_the_fast_path_equals_the_pipeline_on_every_public_row(policies: pd.DataFrame) -> None:
    from serving.models._insurance_encoding import FastRowEncoder
    from serving.models.insurance_charges import ChargeModel, InsuranceRequest, build_input, predict

    split = split_policies(policies)
    pipeline = build_insurance_model({"family": "gbm"}).fit(split.train[list(FEATURES)], split.train["charges"])
    model = ChargeModel(pipeline, FastRowEncoder(pipeline.named_steps["encode"]), pipeline.named_steps["model"])
    rows = policies[list(FEATURES)]
    fast = np.array(
        [predict(model, build_input(model, InsuranceRequest(**row)))[0] for row in rows.to_dict(orient="records")]
    )
    np.testing.assert_allclose(fast, pipeline.predict(rows), rtol=1e-9, atol=1e-6)
