"""Checks that guard promotion: a challenger that is not better than naive never reaches the registry."""

import math

import dagster as dg
import numpy as np

from mlops_assets.constants import ATMOS_MODEL_NAME
from mlops_assets.ml.windows import TrainingWindows
from mlops_assets.promotion.assets import atmos_champion_model, rescore_version
from mlops_assets.resources.mlflow_registry import MlflowRegistry
from mlops_assets.training.assets import atmos_tuned_model
from mlops_assets.training.tuned_model import TunedModel


@dg.asset_check(asset=atmos_tuned_model, blocking=True, description="finite scores that beat persistence and seasonal naive")
def atmos_tuned_model_beats_baselines(atmos_tuned_model: TunedModel) -> dg.AssetCheckResult:
    tuned = atmos_tuned_model
    finite = math.isfinite(tuned.test_mae) and all(math.isfinite(v) for v in tuned.test_per_horizon_mae)
    margins = {name: round(score - tuned.test_mae, 4) for name, score in tuned.baselines.items()}
    passed = finite and all(margin > 0 for margin in margins.values())
    return dg.AssetCheckResult(
        passed=passed,
        metadata={
            "test_mae": tuned.test_mae,
            "margin_over_baselines": dg.MetadataValue.json(margins),
            "improvement_over_persistence": round(1 - tuned.test_mae / tuned.baselines["persistence"], 4),
        },
    )


@dg.asset_check(
    asset=atmos_champion_model,
    additional_ins={"atmos_training_windows": dg.AssetIn("atmos_training_windows")},
    description="the champion alias resolves to a version that forecasts",
)
def atmos_champion_serves(registry: MlflowRegistry, atmos_training_windows: TrainingWindows) -> dg.AssetCheckResult:
    champion = registry.champion(ATMOS_MODEL_NAME)
    if champion is None:
        return dg.AssetCheckResult(passed=False, metadata={"problem": "no version carries the champion alias"})
    score = rescore_version(registry, champion.version, atmos_training_windows)
    return dg.AssetCheckResult(
        passed=bool(np.isfinite(score)), metadata={"champion_version": int(champion.version), "test_mae": round(score, 4)}
    )
