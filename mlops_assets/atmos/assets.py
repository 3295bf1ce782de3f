"""Windowed training data and the tuned forecaster (a Ray Tune search logged to MLflow)."""

import dagster as dg
import mlflow
from mlflow.models.model import ModelInfo
import numpy as np

from mlops_assets.constants import ATMOS_GROUP
from mlops_assets.features.assets import atmos_features
from mlops_assets.ingestion.sources import ObservationSource
from mlops_assets.ml import forecasters
from mlops_assets.ml.metrics import baseline_maes, baselines_per_horizon
from mlops_assets.ml.model_io import log_compiled_parity, log_forecaster
from mlops_assets.ml.windows import TrainingWindows, build_training_windows
from mlops_assets.resources.mlflow_registry import MlflowRegistry
from mlops_assets.resources.warehouse import WarehouseResource
from mlops_assets.training.forecaster_search import (
    TRIAL_ITERATIONS,
    RefitModel,
    forecaster_trial,
    horizon_metrics,
    refit_and_score,
)
from mlops_assets.plots import figure_markdown
from mlops_assets.training.plots import forecast_figure, horizon_error_figure
from mlops_assets.training.resources import TuningResource
from mlops_assets.training.search_asset import search_asset
from mlops_assets.training.tuned_model import TunedModel
from mlops_assets.training.tuning import run_search

ATMOS_EXPERIMENT = "atmos_temperature"


def load_training_windows(source: ObservationSource, warehouse: WarehouseResource) -> TrainingWindows:
    """The windows of the stored features: deterministic, so every run (on any machine) rebuilds the same ones."""
    series = warehouse.read_features(source.station)
    if series.empty:
        raise dg.Failure(f"no features stored for station {source.station}: materialize atmos_features first", allow_retries=False)
    return build_training_windows(series)


@dg.asset(
    group_name=ATMOS_GROUP,
    deps=[atmos_features],
    automation_condition=dg.AutomationCondition.eager(),
    kinds={"numpy"},
    owners=["team:forecasting"],
    description="72 h -> 24 h windows in a 70/15/15 chronological split; no window crosses a gap.",
)
def atmos_training_windows(source: ObservationSource, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Records the split; downstream steps rebuild the windows from the warehouse (no pickles to hand over)."""
    windows = load_training_windows(source, warehouse)
    baselines = baseline_maes(windows.test)
    return dg.MaterializeResult(
        metadata={
            "station": source.station,
            "windows_train": len(windows.train),
            "windows_validation": len(windows.validation),
            "windows_test": len(windows.test),
            "boundaries": dg.MetadataValue.json(windows.boundaries),
            "covariates": dg.MetadataValue.json(list(windows.covariates)),
            "test_mae_persistence": round(baselines["persistence"], 4),
            "test_mae_seasonal_naive": round(baselines["seasonal_naive"], 4),
        }
    )


@search_asset(
    group_name=ATMOS_GROUP,
    deps=[atmos_training_windows],
    owners=["team:forecasting"],
    description="Ray Tune search over model families; the best trial refit and logged to MLflow.",
)
def atmos_tuned_model(
    context: dg.AssetExecutionContext,
    source: ObservationSource,
    warehouse: WarehouseResource,
    tuning: TuningResource,
    registry: MlflowRegistry,
) -> TunedModel:
    windows = load_training_windows(source, warehouse)
    tags = {"dagster_run_id": context.run_id, "dagster_asset": "atmos_tuned_model", "station": source.station}
    with registry.parent_run(ATMOS_EXPERIMENT, f"atmos_tuned_model {context.run_id[:8]}", tags) as parent:
        return _search_and_refit(context, windows, tuning, registry, parent.info.run_id, parent.info.experiment_id)


def _search_and_refit(
    context: dg.AssetExecutionContext,
    windows: TrainingWindows,
    tuning: TuningResource,
    registry: MlflowRegistry,
    parent_run_id: str,
    experiment_id: str,
) -> TunedModel:
    quick = tuning.search == "quick"
    space = forecasters.QUICK_SEARCH_SPACE if quick else forecasters.SEARCH_SPACE
    settings = tuning.settings(
        default_samples=forecasters.QUICK_NUM_SAMPLES if quick else forecasters.DEFAULT_NUM_SAMPLES,
        max_iterations=TRIAL_ITERATIONS,
    )
    outcome = run_search(
        forecaster_trial,
        space,
        settings,
        metric="val_mae",
        tracking_uri=registry.tracking_uri,
        experiment_name=ATMOS_EXPERIMENT,
        parent_run_id=parent_run_id,
        run_tags={"dagster_run_id": context.run_id, "pipeline": "atmos_temperature"},
        trainable_kwargs={"windows": windows},
    )
    context.log.info(f"{len(outcome.trials)} trials in {outcome.wall_seconds:.1f} s; best {outcome.best.config}")
    refit = refit_and_score(outcome.best.config, windows)
    baselines = baseline_maes(windows.test)
    model_info = _log_refit(
        refit, windows, outcome.best.config, outcome.best.metrics, baselines, outcome.wall_seconds, len(outcome.trials)
    )
    parity = log_compiled_parity(refit.model, windows.test.features(refit.spec))
    plots = {}
    for name, figure in (
        ("per_horizon_mae", horizon_error_figure(refit.test_per_horizon_mae, baselines_per_horizon(windows.test))),
        ("forecast_vs_actual", forecast_figure(refit.test_predictions, windows.test)),
    ):
        mlflow.log_figure(figure, f"{name}.png")
        plots[name] = dg.MetadataValue.md(figure_markdown(figure, name))

    tuned = TunedModel(
        run_id=parent_run_id,
        experiment_id=experiment_id,
        model_uri=model_info.model_uri,
        family=str(refit.config.get("family")),
        config={k: _plain(v) for k, v in refit.config.items()},
        metric="test_mae",
        val_score=outcome.best.metrics["val_mae"],
        test_score=refit.test_mae,
        baselines=baselines,
        details={"test_mae_per_horizon": [round(float(v), 4) for v in refit.test_per_horizon_mae]},
        trials=len(outcome.trials),
        search_seconds=outcome.wall_seconds,
    )
    context.add_output_metadata(
        {
            "mlflow_run_id": parent_run_id,
            "mlflow_run": dg.MetadataValue.url(registry.run_url(experiment_id, parent_run_id)),
            "family": str(refit.config.get("family")),
            "config": dg.MetadataValue.json({k: _plain(v) for k, v in refit.config.items()}),
            "trials": len(outcome.trials),
            "trials_stopped_early": sum("fit_seconds" not in trial.metrics for trial in outcome.trials),
            "errored_trials": outcome.errored_trials,
            "search_seconds": round(outcome.wall_seconds, 1),
            **parity,
            "val_mae": round(tuned.val_score, 4),
            "test_mae": round(tuned.test_score, 4),
            "test_mae_persistence": round(baselines["persistence"], 4),
            "test_mae_seasonal_naive": round(baselines["seasonal_naive"], 4),
            "test_mae_per_horizon": dg.MetadataValue.json([round(float(v), 3) for v in refit.test_per_horizon_mae]),
            **plots,
        }
    )
    return tuned


def _log_refit(
    refit: RefitModel,
    windows: TrainingWindows,
    config: dict,
    best_trial_metrics: dict[str, float],
    baselines: dict[str, float],
    search_seconds: float,
    trials: int,
) -> ModelInfo:
    """Log the refit model and its scores to the active (parent) MLflow run."""
    mlflow.log_params({f"best_{k}": _plain(v) for k, v in config.items()})
    mlflow.log_metrics(horizon_metrics("test", refit.test_per_horizon_mae))
    mlflow.log_metrics(
        {
            "best_val_mae": best_trial_metrics["val_mae"],
            "refit_seconds": refit.fit_seconds,
            "search_seconds": search_seconds,
            "trials": trials,
            **{f"test_mae_{name}": value for name, value in baselines.items()},
        }
    )
    mlflow.log_dict(windows.boundaries, "split_boundaries.json")
    example = windows.test.head(1).features(refit.spec)
    return log_forecaster(refit.model, refit.spec, example)


def _plain(value: object) -> object:
    return value.item() if isinstance(value, np.generic) else value
