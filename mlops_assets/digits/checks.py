"""The digits checks: before the registry a challenger must beat the majority class and plain kNN; after it,
the served champion must score what promotion recorded."""

import math

import dagster as dg

from mlops_assets.constants import DIGITS_MODEL_NAME
from mlops_assets.digits.assets import METRIC, _holdout, digits_champion_model, digits_tuned_model, score_model
from mlops_assets.promotion.checks import champion_serves_check
from mlops_assets.tuning.tuned_model import TunedModel


@dg.asset_check(
    asset=digits_tuned_model,
    blocking=True,
    description="test error rate below the majority-class baseline and plain kNN (k=3) on raw pixels, same holdout",
)
def digits_tuned_model_beats_baselines(digits_tuned_model: TunedModel) -> dg.AssetCheckResult:
    tuned = digits_tuned_model
    margins = {name: round(score - tuned.test_score, 4) for name, score in tuned.baselines.items()}
    passed = (
        math.isfinite(tuned.test_score)
        and {"majority", "knn3_raw"} <= set(margins)
        and all(m > 0 for m in margins.values())
    )
    return dg.AssetCheckResult(
        passed=passed,
        metadata={
            "test_accuracy": round(1 - tuned.test_score, 4),
            **{f"{name}_baseline_accuracy": round(1 - score, 4) for name, score in tuned.baselines.items()},
            "error_rate_margin_over_baselines": dg.MetadataValue.json(margins),
        },
    )


def _champion_error_rate(context: dg.AssetCheckExecutionContext, model_uri: str) -> float:
    """The champion step's scoring, on the holdout it rebuilds from the image table."""
    return score_model(context.resources.registry, model_uri, _holdout(context.resources.warehouse).test)


digits_champion_serves = champion_serves_check(
    name="digits_champion_serves",
    asset=digits_champion_model,
    model_name=DIGITS_MODEL_NAME,
    metric=METRIC,
    score_on_holdout=_champion_error_rate,
    required_resource_keys={"warehouse"},
)
