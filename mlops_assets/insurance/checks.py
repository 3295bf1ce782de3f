"""The blocking check that guards promotion of the insurance model."""

import dagster as dg

from mlops_assets.insurance.assets import insurance_tuned_model
from mlops_assets.tuning.tuned_model import TunedModel


@dg.asset_check(asset=insurance_tuned_model, blocking=True, description="beats predicting the median; R^2 positive")
def insurance_tuned_model_beats_baseline(insurance_tuned_model: TunedModel) -> dg.AssetCheckResult:
    tuned = insurance_tuned_model
    test_r2 = float(tuned.details["test_r2"])
    return dg.AssetCheckResult(
        passed=tuned.beats_baselines() and test_r2 > 0,
        metadata={"test_mae": round(tuned.test_score, 1), "median_baseline": round(tuned.baselines["median"], 1), "test_r2": test_r2},
    )
