"""The registered forecaster behind alias `champion`, moved only when a challenger is better."""

import math

import dagster as dg
import numpy as np

from mlops_assets.constants import ATMOS_GROUP, ATMOS_MODEL_NAME, CHAMPION_ALIAS
from mlops_assets.ml.metrics import mae
from mlops_assets.ml.model_io import load_forecaster
from mlops_assets.ml.windows import TrainingWindows
from mlops_assets.promotion.registry_promotion import Challenger, promote_if_better
from mlops_assets.resources.mlflow_registry import MlflowRegistry
from mlops_assets.training.tuned_model import TunedModel


@dg.asset(
    group_name=ATMOS_GROUP,
    automation_condition=dg.AutomationCondition.eager(),
    kinds={"mlflow"},
    owners=["team:forecasting"],
    description=f"Registers the challenger as a version of '{ATMOS_MODEL_NAME}'; moves '{CHAMPION_ALIAS}' only if it wins.",
)
def atmos_champion_model(
    context: dg.AssetExecutionContext,
    atmos_tuned_model: TunedModel,
    atmos_training_windows: TrainingWindows,
    registry: MlflowRegistry,
) -> dg.MaterializeResult:
    tuned = atmos_tuned_model
    challenger = Challenger(
        model_uri=tuned.model_uri,
        run_id=tuned.run_id,
        experiment_id=tuned.experiment_id,
        score=tuned.test_mae,
        baselines=tuned.baselines,
        tags={"val_mae": round(tuned.val_mae, 4), "family": tuned.config.get("family"), "dagster_run_id": context.run_id},
    )
    outcome = promote_if_better(
        registry,
        ATMOS_MODEL_NAME,
        challenger,
        rescore_champion=lambda version: rescore_version(registry, version, atmos_training_windows),
        metric="test_mae",
    )
    context.log.info(f"v{outcome.registered_version}: {outcome.decision.reason}")
    metadata = outcome.metadata(registry, challenger, ATMOS_MODEL_NAME, "test_mae")
    metadata["test_mae_per_horizon"] = dg.MetadataValue.json([round(v, 3) for v in tuned.test_per_horizon_mae])
    return dg.MaterializeResult(metadata=metadata)


def rescore_version(registry: MlflowRegistry, version: str, windows: TrainingWindows) -> float:
    """Test MAE of a registered version on these windows (its stored tags are not trusted)."""
    registry.activate()
    model, spec = load_forecaster(f"models:/{ATMOS_MODEL_NAME}/{version}")
    missing = [name for name in spec.covariates if name not in windows.covariates]
    if missing:
        raise dg.Failure(
            f"champion v{version} needs covariates {missing} that the current data lacks: it cannot be "
            "re-scored on the same windows; roll back or retire it with `mlops-assets champion --rollback`"
        )
    predictions = np.asarray(model.predict(windows.test.features(spec)))
    score = mae(predictions, windows.test.targets)
    if not math.isfinite(score):
        raise dg.Failure(f"champion v{version} produces non-finite forecasts on the test windows")
    return score
