"""The insurance checks: a blocking gate before promotion, and the served champion's score after it."""

import dagster as dg

from mlops_assets.constants import INSURANCE_MODEL_NAME
from mlops_assets.insurance.assets import (
    insurance_champion_model,
    insurance_holdout,
    insurance_test_mae,
    insurance_tuned_model,
)
from mlops_assets.promotion.checks import champion_serves_check
from mlops_assets.tuning.tuned_model import TunedModel


@dg.asset_check(asset=insurance_tuned_model, blocking=True, description="beats predicting the median; R^2 positive")
def insurance_tuned_model_beats_baseline(insurance_tuned_model: TunedModel) -> dg.AssetCheckResult:
    tuned = insurance_tuned_model
    test_r2 = float(tuned.details["test_r2"])
    return dg.AssetCheckResult(
        passed=tuned.beats_baselines() and test_r2 > 0,
        metadata={
            "test_mae": round(tuned.test_score, 1),
            "median_baseline": round(tuned.baselines["median"], 1),
            "test_r2": test_r2,
        },
    )


def _champion_test_mae(context: dg.AssetCheckExecutionContext, model_uri: str) -> float:
    """The champion step's scoring, on the holdout it rebuilds from the warehouse."""
    return insurance_test_mae(
        context.resources.registry, model_uri, insurance_holdout(context.resources.warehouse).test
    )


insurance_champion_serves = champion_serves_check(
    name="insurance_champion_serves",
    asset=insurance_champion_model,
    model_name=INSURANCE_MODEL_NAME,
    metric="test_mae",
    score_on_holdout=_champion_test_mae,
    required_resource_keys={"warehouse"},
)
