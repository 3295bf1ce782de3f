"""Checks that guard promotion: a challenger that is not better than naive never reaches the registry."""

import math

import dagster as dg

from mlops_assets.constants import ATMOS_MODEL_NAME
from mlops_assets.ingestion.sources import ObservationSource
from mlops_assets.promotion.assets import atmos_champion_model, forecaster_test_mae
from mlops_assets.resources.mlflow_registry import MlflowRegistry
from mlops_assets.resources.warehouse import WarehouseResource
from mlops_assets.training.assets import atmos_tuned_model, load_training_windows
from mlops_assets.training.tuned_model import TunedModel


@dg.asset_check(asset=atmos_tuned_model, blocking=True, description="finite scores that beat persistence and seasonal naive")
def atmos_tuned_model_beats_baselines(atmos_tuned_model: TunedModel) -> dg.AssetCheckResult:
    tuned = atmos_tuned_model
    per_horizon = tuned.details.get("test_mae_per_horizon", [])
    margins = {name: round(score - tuned.test_score, 4) for name, score in tuned.baselines.items()}
    return dg.AssetCheckResult(
        passed=tuned.beats_baselines() and all(math.isfinite(v) for v in per_horizon),
        metadata={
            "test_mae": tuned.test_score,
            "margin_over_baselines": dg.MetadataValue.json(margins),
            "improvement_over_persistence": round(1 - tuned.test_score / tuned.baselines["persistence"], 4),
        },
    )


@dg.asset_check(asset=atmos_champion_model, description="the champion alias resolves to a version that forecasts")
def atmos_champion_serves(
    registry: MlflowRegistry, source: ObservationSource, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    champion = registry.champion(ATMOS_MODEL_NAME)
    if champion is None:
        return dg.AssetCheckResult(passed=False, metadata={"problem": "no version carries the champion alias"})
    try:
        score = forecaster_test_mae(registry, f"models:/{ATMOS_MODEL_NAME}/{champion.version}", load_training_windows(source, warehouse))
    except dg.Failure as failure:  # the check's verdict, not a crash of the check
        return dg.AssetCheckResult(passed=False, metadata={"champion_version": int(champion.version), "problem": failure.description or ""})
    return dg.AssetCheckResult(passed=True, metadata={"champion_version": int(champion.version), "test_mae": round(score, 4)})
