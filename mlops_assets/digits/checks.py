"""The gate before the registry: a digits challenger must beat the majority class and plain kNN."""

import math

import dagster as dg

from mlops_assets.digits.assets import digits_tuned_model
from mlops_assets.tuning.tuned_model import TunedModel


@dg.asset_check(
    asset=digits_tuned_model,
    blocking=True,
    description="test error rate below the majority-class baseline and plain kNN (k=3) on raw pixels, same holdout",
)
def digits_tuned_model_beats_baselines(digits_tuned_model: TunedModel) -> dg.AssetCheckResult:
    tuned = digits_tuned_model
    margins = {name: round(score - tuned.test_score, 4) for name, score in tuned.baselines.items()}
    passed = math.isfinite(tuned.test_score) and {"majority", "knn3_raw"} <= set(margins) and all(m > 0 for m in margins.values())
    return dg.AssetCheckResult(
        passed=passed,
        metadata={
            "test_accuracy": round(1 - tuned.test_score, 4),
            **{f"{name}_baseline_accuracy": round(1 - score, 4) for name, score in tuned.baselines.items()},
            "error_rate_margin_over_baselines": dg.MetadataValue.json(margins),
        },
    )
