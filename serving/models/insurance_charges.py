"""`insurance_charges`: a medical-insurance charge from the six policy fields.

The registered model is a scikit-learn `Pipeline` (`encode` -> `model`, see
`mlops_assets.insurance.families`). Its fitted `ColumnTransformer` costs ~3.4 ms per single row,
so the service encodes with `FastRowEncoder` (`_insurance_encoding.py`: the same scaling and
one-hot arithmetic on arrays) and calls the `model` step through `serving.models._sklearn.predictor`
(a gradient-boosting step is compiled to packed NumPy trees: ~30 us instead of ~3 ms per row; a
ridge step becomes its arithmetic); at load time both paths must agree on probe rows, or the
version is not swapped in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import numpy as np
import pandas as pd

from mlops_assets.constants import INSURANCE_MODEL_NAME
from mlops_assets.insurance.families import CATEGORIES, FEATURES, legacy_code
from serving.errors import InvalidInput
from serving.models import ModelModule, ModelRef
from serving.models._insurance_encoding import FastRowEncoder
from serving.models._sklearn import Predict, predictor

NAME = INSURANCE_MODEL_NAME
log = logging.getLogger(__name__)


def _category_doc(field: str) -> str:
    words = CATEGORIES[field]
    codes = ", ".join(f"{index} = {word}" for index, word in enumerate(words))
    return f"One of {', '.join(words)}; the old system's integer codes are accepted too ({codes})."


class InsuranceRequest(msgspec.Struct, forbid_unknown_fields=True):
    """One policy. Categories take the dataset's words or the old system's integer codes."""

    age: Annotated[float, msgspec.Meta(ge=18, le=100, description="Age in years, 18..100.")]
    sex: Annotated[str | int, msgspec.Meta(description=_category_doc("sex"))]
    bmi: Annotated[float, msgspec.Meta(ge=10, le=80, description="Body-mass index, 10..80.")]
    children: Annotated[int, msgspec.Meta(ge=0, le=10, description="Dependants covered, 0..10.")]
    smoker: Annotated[str | int, msgspec.Meta(description=_category_doc("smoker"))]
    region: Annotated[str | int, msgspec.Meta(description=_category_doc("region"))]


class InsuranceResponse(msgspec.Struct):
    result: Annotated[float, msgspec.Meta(description="Predicted yearly charges (the dataset's currency, USD).")]
    model: ModelRef


@dataclass(frozen=True)
class ChargeModel:
    pipeline: Any
    encoder: FastRowEncoder
    model: Any
    #: The `model` step's fastest exact call (`predictor`); None calls `model.predict`.
    call: Predict | None = None
    call_path: str = "predict"


def load(model_dir: str) -> ChargeModel:
    """Load the pipeline from a version's files; prove the fast encoding gives the pipeline's own numbers."""
    import mlflow.sklearn

    pipeline = mlflow.sklearn.load_model(model_dir)
    steps = getattr(pipeline, "named_steps", {})
    if "encode" not in steps or "model" not in steps:
        raise ValueError(
            f"{model_dir}: expected a Pipeline with steps 'encode' and 'model', got {type(pipeline).__name__}"
        )
    encoder = FastRowEncoder(steps["encode"])
    model = steps["model"]
    call, call_path = predictor(model, encoder.width)
    probe_rows: list[dict[str, Any]] = [
        {"age": 19, "sex": "female", "bmi": 27.9, "children": 0, "smoker": "yes", "region": "southwest"},
        {"age": 64, "sex": "male", "bmi": 40.5, "children": 3, "smoker": "no", "region": "northeast"},
        {"age": 35, "sex": "male", "bmi": 22.0, "children": 1, "smoker": "no", "region": "southeast"},
    ]
    expected = np.asarray(pipeline.predict(pd.DataFrame(probe_rows)[list(FEATURES)]), dtype="float64")
    fast = np.array([np.asarray(call(encoder.encode(**row))).ravel()[0] for row in probe_rows])
    if not np.allclose(fast, expected, rtol=1e-9, atol=1e-6):
        raise ValueError(f"{model_dir}: the fast encoding disagrees with the pipeline ({fast} vs {expected})")
    log.info("%s: %s via %s, fast encoding verified", model_dir, type(model).__name__, call_path)
    return ChargeModel(pipeline=pipeline, encoder=encoder, model=model, call=call, call_path=call_path)


def _category(field: str, value: str | int) -> str:
    words = CATEGORIES[field]
    if isinstance(value, int):
        try:
            return legacy_code(field, value)
        except ValueError as error:
            raise InvalidInput(f"{field}: {error}; allowed: {', '.join(words)}", f"$.{field}") from None
    word = value.strip().lower()
    if word not in words:
        codes = ", ".join(str(i) for i in range(len(words)))
        raise InvalidInput(
            f"{field} must be one of {', '.join(words)} (or the codes {codes}), got {value!r}", f"$.{field}"
        )
    return word


def build_input(model: ChargeModel, body: InsuranceRequest) -> np.ndarray:
    return model.encoder.encode(
        age=body.age,
        sex=_category("sex", body.sex),
        bmi=body.bmi,
        children=body.children,
        smoker=_category("smoker", body.smoker),
        region=_category("region", body.region),
    )


def predict(model: ChargeModel, row: np.ndarray) -> np.ndarray:
    call = model.call if model.call is not None else model.model.predict
    return np.asarray(call(row), dtype="float64")


def shape_response(output: np.ndarray, model: ModelRef) -> InsuranceResponse:
    value = float(output.ravel()[0])
    if not np.isfinite(value):
        raise InvalidInput("the model produced no finite charge for these inputs")
    return InsuranceResponse(result=value, model=model)


MODEL: ModelModule[ChargeModel, InsuranceRequest, np.ndarray, np.ndarray] = ModelModule(
    name=NAME,
    request_type=InsuranceRequest,
    response_type=InsuranceResponse,
    load=load,
    build_input=build_input,
    predict=predict,
    shape_response=shape_response,
    description=(
        "Predict yearly medical-insurance charges from age, sex, bmi, children, smoker and region. "
        "`sex`, `smoker` and `region` take the dataset's words or the old integer codes."
    ),
    route="insurance",
    examples={
        "words": {"age": 19, "sex": "female", "bmi": 27.9, "children": 0, "smoker": "yes", "region": "southwest"},
        "legacy codes": {"age": 19, "sex": 0, "bmi": 27.9, "children": 0, "smoker": 1, "region": 3},
    },
)
