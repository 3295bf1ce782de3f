"""The registered forecaster behind alias `champion`, moved only when a challenger is better."""

import math

import dagster as dg
import numpy as np

from mlops_assets.constants import ATMOS_GROUP, ATMOS_MODEL_NAME
from mlops_assets.ingestion.sources import ObservationSource
from mlops_assets.ml.metrics import baseline_maes, mae
from mlops_assets.ml.model_io import load_forecaster
from mlops_assets.ml.windows import TrainingWindows
from mlops_assets.promotion.registry_promotion import champion_asset, promote_tuned_model
from mlops_assets.resources.mlflow_registry import MlflowRegistry
from mlops_assets.resources.warehouse import WarehouseResource
from mlops_assets.training.assets import load_training_windows
from mlops_assets.training.tuned_model import TunedModel


@champion_asset(group_name=ATMOS_GROUP, model_name=ATMOS_MODEL_NAME, owners=["team:forecasting"])
def atmos_champion_model(
    context: dg.AssetExecutionContext,
    atmos_tuned_model: TunedModel,
    source: ObservationSource,
    warehouse: WarehouseResource,
    registry: MlflowRegistry,
) -> dg.MaterializeResult:
    windows = load_training_windows(source, warehouse)
    _, metadata = promote_tuned_model(
        context,
        registry,
        ATMOS_MODEL_NAME,
        atmos_tuned_model,
        score_model=lambda model_uri: forecaster_test_mae(registry, model_uri, windows),
        baselines=baseline_maes(windows.test),
    )
    return dg.MaterializeResult(metadata=metadata)


def forecaster_test_mae(registry: MlflowRegistry, model_uri: str, windows: TrainingWindows) -> float:
    """Test MAE of a logged or registered forecaster on these windows (stored scores are not trusted)."""
    registry.activate()
    model, spec = load_forecaster(model_uri)
    missing = [name for name in spec.covariates if name not in windows.covariates]
    if missing:
        raise dg.Failure(
            f"{model_uri} needs covariates {missing} that the current data lacks: it cannot be scored on the "
            "same windows; roll back or retire it with `mlops-assets champion --rollback`",
            allow_retries=False,
        )
    score = mae(np.asarray(model.predict(windows.test.features(spec))), windows.test.targets)
    if not math.isfinite(score):
        raise dg.Failure(f"{model_uri} produces non-finite forecasts on the test windows", allow_retries=False)
    return score
