"""The atmos assets: raw observations -> cleaned features -> training windows -> tuned forecaster -> champion.

Raw hourly observations come in one daily partition per local day; the cleaned series covers the
stored history; the windows and the tuned forecaster (a Ray Tune search logged to MLflow) are
rebuilt from the warehouse; the registered forecaster behind alias `champion` moves only when a
challenger is better.
"""

import datetime as dt
import math
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from mlops_assets.atmos.cleaning import clean_observations
from mlops_assets.atmos.dataset import TrainingWindows, build_training_windows
from mlops_assets.atmos.estimators import SKOPS_TRUSTED_TYPES
from mlops_assets.atmos.kma import KmaApiError
from mlops_assets.atmos.metrics import baseline_maes, baselines_per_horizon, mae
from mlops_assets.atmos.model_io import forecaster_example, forecaster_metadata, load_forecaster
from mlops_assets.atmos.observations import SourceConfigError
from mlops_assets.atmos.plots import forecast_figure, horizon_error_figure
from mlops_assets.atmos.search import (
    DEFAULT_NUM_SAMPLES,
    QUICK_NUM_SAMPLES,
    QUICK_SEARCH_SPACE,
    SEARCH_SPACE,
    TRIAL_ITERATIONS,
    forecaster_trial,
    horizon_metrics,
    refit_and_score,
)
from mlops_assets.atmos.source import CsvFormatError, ObservationSource, local_day_bounds
from mlops_assets.automation import ON_NEW_PARTITIONS
from mlops_assets.constants import ATMOS_GROUP, ATMOS_MODEL_NAME
from mlops_assets.plots import figure_markdown, new_figure
from mlops_assets.promotion.registry_promotion import champion_asset, promote_tuned_model
from mlops_assets.resources.mlflow_registry import MlflowRegistry
from mlops_assets.resources.warehouse import WarehouseResource
from mlops_assets.tuning.resources import TuningResource
from mlops_assets.tuning.runner import SearchOutcome
from mlops_assets.tuning.search_asset import search_asset
from mlops_assets.tuning.search_step import Refit, Search, tuned_model_from_search
from mlops_assets.tuning.tuned_model import TunedModel

#: Historical station records reach back decades; 2000-01-01 covers what users backfill.
#: `end_offset=1` admits the current UTC day, which is already complete for stations east of UTC.
atmos_daily_partitions = dg.DailyPartitionsDefinition(start_date="2000-01-01", end_offset=1)

#: Errors that another attempt of the step cannot fix: fail the run at once with the reason. A KMA
#: client that gave up has already retried with backoff (KmaRetriesExhaustedError is a KmaApiError):
#: re-running the step would multiply calls against the daily quota. Anything else (a warehouse
#: hiccup, a bug) keeps the step's retry policy.
PERMANENT_ERRORS: tuple[type[Exception], ...] = (KmaApiError, CsvFormatError, SourceConfigError)


@dg.asset(
    group_name=ATMOS_GROUP,
    partitions_def=atmos_daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    retry_policy=dg.RetryPolicy(max_retries=3, delay=5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.FULL),
    kinds={"python", "sql"},
    owners=["team:forecasting"],
    description="Hourly station observations; a partition is one local day of the source.",
)
def raw_atmos_observations(
    context: dg.AssetExecutionContext, source: ObservationSource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Fetch the partition range in one go and replace it in one transaction (idempotent)."""
    keys = context.partition_keys
    first_day = dt.date.fromisoformat(keys[0])
    last_day = dt.date.fromisoformat(keys[-1])
    context.log.info(
        f"fetching {source.station} {first_day}..{last_day} ({len(keys)} days) from {type(source).__name__}"
    )
    try:
        frame = source.fetch(first_day, last_day)
        if frame.empty:
            raise dg.Failure(
                f"the source returned no observations for {source.station} {first_day}..{last_day}", allow_retries=False
            )
        duplicate_hours = int(frame.duplicated(subset=["time"]).sum())
        frame = frame.drop_duplicates(subset=["time"], keep="first")  # the first report of an hour wins
        start, end = local_day_bounds(first_day, last_day, source.timezone)
        written = warehouse.replace_observations(source.station, start, end, frame)
    except PERMANENT_ERRORS as error:
        raise dg.Failure(description=f"{type(error).__name__}: {error}", allow_retries=False) from error

    per_day = frame["time"].dt.tz_convert(source.timezone).dt.date.value_counts()
    incomplete_days = int((per_day < 24).sum() + (len(keys) - len(per_day)))
    preview = frame.head(5).drop(columns=[c for c in frame.columns if c.endswith("_qc")])
    return dg.MaterializeResult(
        metadata={
            "station": source.station,
            "source": type(source).__name__,
            "sample_data": dg.MetadataValue.bool(source.is_sample),
            "partitions": len(keys),
            "dagster/row_count": written,
            "first_hour_utc": str(frame["time"].min()),
            "last_hour_utc": str(frame["time"].max()),
            "days_with_missing_hours": incomplete_days,
            "duplicate_hours_dropped": duplicate_hours,
            "preview": dg.MetadataValue.md(preview.to_markdown(index=False)),
        }
    )


@dg.asset(
    group_name=ATMOS_GROUP,
    deps=[raw_atmos_observations],
    automation_condition=ON_NEW_PARTITIONS,
    kinds={"pandas", "sql"},
    owners=["team:forecasting"],
    description="Hourly grid, short gaps interpolated and flagged, impossible values removed.",
)
def atmos_features(source: ObservationSource, warehouse: WarehouseResource) -> dg.MaterializeResult:
    raw = warehouse.read_observations(source.station)
    if raw.empty:
        raise dg.Failure(
            f"no raw observations stored for station {source.station}: materialize raw_atmos_observations first",
            allow_retries=False,
        )
    cleaned, report = clean_observations(raw)
    rows = warehouse.replace_features(source.station, cleaned)
    return dg.MaterializeResult(
        metadata={
            "station": source.station,
            "sample_data": dg.MetadataValue.bool(source.is_sample),
            "dagster/row_count": rows,
            "first_hour_utc": str(cleaned["time"].min()),
            "last_hour_utc": str(cleaned["time"].max()),
            "span_days": round(report.hours / 24, 1),
            "observed_hours": report.observed_hours,
            "gaps_filled": report.gaps_filled,
            "hours_filled": report.hours_filled,
            "gaps_left": report.gaps_left,
            "hours_missing_tmp": report.hours_missing,
            "values_removed": dg.MetadataValue.json(report.values_removed),
            "preview": dg.MetadataValue.md(cleaned.tail(5).to_markdown(index=False)),
            "plot": dg.MetadataValue.md(_series_plot(cleaned, source.station)),
        }
    )


def _series_plot(cleaned: pd.DataFrame, station: str) -> str:
    figure, axes = new_figure()
    axes.plot(cleaned["time"], cleaned["tmp"], linewidth=0.5, color="tab:blue", label="tmp (C)")
    filled = cleaned[cleaned["interpolated"]]
    axes.scatter(filled["time"], filled["tmp"], s=4, color="tab:orange", label="interpolated")
    axes.set_title(f"Hourly temperature, station {station}")
    axes.legend(loc="upper left")
    return figure_markdown(figure, "hourly temperature")


ATMOS_EXPERIMENT = "atmos_temperature"


def load_training_windows(source: ObservationSource, warehouse: WarehouseResource) -> TrainingWindows:
    """The windows of the stored features: deterministic, so every run (on any machine) rebuilds the same ones."""
    series = warehouse.read_features(source.station)
    if series.empty:
        raise dg.Failure(
            f"no features stored for station {source.station}: materialize atmos_features first", allow_retries=False
        )
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
    quick = tuning.search == "quick"
    space = QUICK_SEARCH_SPACE if quick else SEARCH_SPACE
    settings = tuning.settings(QUICK_NUM_SAMPLES if quick else DEFAULT_NUM_SAMPLES, max_iterations=TRIAL_ITERATIONS)
    search = Search(
        ATMOS_EXPERIMENT,
        "atmos_temperature",
        forecaster_trial,
        space,
        settings,
        metric="val_mae",
        trainable_kwargs={"windows": windows},
        parent_tags={"station": source.station},
    )
    return tuned_model_from_search(context, registry, search, lambda outcome, config: _refit(outcome, config, windows))


def _refit(outcome: SearchOutcome, config: dict[str, Any], windows: TrainingWindows) -> Refit:
    """Refit on train + validation, score the test windows; per-horizon errors and two plots go with it."""
    refit = refit_and_score(config, windows)
    baselines = baseline_maes(windows.test)
    test_features = windows.test.features(refit.spec)
    return Refit(
        refit.model,
        metric="test_mae",
        test_score=refit.test_mae,
        baselines=baselines,
        metrics={**horizon_metrics("test", refit.test_per_horizon_mae), "refit_seconds": refit.fit_seconds},
        input_example=forecaster_example(windows.test.head(1).features(refit.spec)),
        skops_trusted_types=SKOPS_TRUSTED_TYPES,
        details={"test_mae_per_horizon": [round(float(v), 4) for v in refit.test_per_horizon_mae]},
        metadata={
            "trials_stopped_early": sum("fit_seconds" not in trial.metrics for trial in outcome.trials),
            "val_mae": round(outcome.best.metrics["val_mae"], 4),
            "test_mae": round(refit.test_mae, 4),
            "test_mae_persistence": round(baselines["persistence"], 4),
            "test_mae_seasonal_naive": round(baselines["seasonal_naive"], 4),
            "test_mae_per_horizon": dg.MetadataValue.json([round(float(v), 3) for v in refit.test_per_horizon_mae]),
        },
        model_metadata=forecaster_metadata(refit.spec),
        parity_holdout=test_features,
        json_files={"split_boundaries.json": windows.boundaries},
        figures={
            "per_horizon_mae": horizon_error_figure(refit.test_per_horizon_mae, baselines_per_horizon(windows.test)),
            "forecast_vs_actual": forecast_figure(refit.test_predictions, windows.test),
        },
    )


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
    model, spec = load_forecaster(model_uri, registry.tracking_uri)
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
