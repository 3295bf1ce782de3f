"""`atmos_forecast_accuracy`: what the served forecasts turned out to be worth, once observed.

A partition is a UTC day of `last_observed_at` (the forecaster's partitions definition, read as
UTC days). The step reads that day's served forecasts and the observations of the 24 hours after
each, scores them (`accuracy.py`), replaces the day's rows of `forecast_accuracy` (idempotent), and
logs each version's daily MAE to the version's MLflow run.
"""

import datetime as dt
import math
import time
from collections.abc import Sequence
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import sqlalchemy as sa
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from mlops_assets.atmos.assets import atmos_daily_partitions, raw_atmos_observations
from mlops_assets.atmos.source import ObservationSource
from mlops_assets.constants import ATMOS_MODEL_NAME
from mlops_assets.monitoring.accuracy import AccuracyResult, observed_temperatures, score_forecasts
from mlops_assets.monitoring.resources import MONITORING_GROUP
from mlops_assets.monitoring.served_log import (
    HORIZON_HOURS,
    LEAD_COLUMNS,
    ensure_tables,
    forecast_accuracy,
    served_forecasts,
)
from mlops_assets.plots import figure_markdown, new_figure
from mlops_assets.resources.mlflow_registry import MlflowRegistry
from mlops_assets.resources.warehouse import WarehouseResource, atmos_observations

#: The registry tag the promotion step writes with the version's test MAE.
TEST_MAE_TAG = "test_mae"
#: Re-score the last few days every morning: a day is complete once the next day's observations
#: (24 h after its last forecast) are ingested; ingestion runs every 6 h.
ACCURACY_CONDITION = (
    dg.AutomationCondition.in_latest_time_window(dt.timedelta(days=4))
    & dg.AutomationCondition.cron_tick_passed("0 6 * * *")
    & ~dg.AutomationCondition.in_progress()
).with_label("daily at 06:00 UTC: the current UTC day and the 3 before")


@dg.asset(
    group_name=MONITORING_GROUP,
    partitions_def=atmos_daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    # Raw partitions are the source's local days: a UTC day's forecasts reach into the local day before and after.
    deps=[
        dg.AssetDep(
            raw_atmos_observations, partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=1)
        )
    ],
    automation_condition=ACCURACY_CONDITION,
    retry_policy=dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.FULL),
    kinds={"sql", "mlflow"},
    owners=["team:forecasting"],
    description="Realized MAE of served forecasts per model version and UTC day, overall and per lead hour.",
)
def atmos_forecast_accuracy(
    context: dg.AssetExecutionContext, source: ObservationSource, warehouse: WarehouseResource, registry: MlflowRegistry
) -> dg.MaterializeResult:
    window = context.partition_time_window
    start, end = pd.Timestamp(window.start).tz_convert("UTC"), pd.Timestamp(window.end).tz_convert("UTC")
    days = [dt.date.fromisoformat(key) for key in context.partition_keys]
    engine = warehouse.engine
    ensure_tables(engine)
    forecasts = read_served_forecasts(engine, ATMOS_MODEL_NAME, start, end)
    observations = read_observations(engine, source.station, start, end + pd.Timedelta(hours=HORIZON_HOURS))
    result = score_forecasts(forecasts, observed_temperatures(observations))
    replace_accuracy(engine, ATMOS_MODEL_NAME, days, result.rows)
    context.log.info(
        f"{start.date()}..{(end - pd.Timedelta(days=1)).date()}: {result.scored} scored, {result.pending} pending, "
        f"{result.incomplete} incomplete forecasts"
    )

    versions = sorted(result.rows["model_version"].unique(), key=_version_order)
    test_maes, logged, not_logged = log_to_mlflow(registry, ATMOS_MODEL_NAME, versions, result.rows)
    history = read_accuracy(engine, ATMOS_MODEL_NAME, versions)
    metadata: dict[str, Any] = {
        "station": source.station,
        "days": len(days),
        "forecasts_served": len(forecasts),
        "forecasts_scored": result.scored,
        "forecasts_pending": result.pending,
        "forecasts_incomplete": result.incomplete,
        "pending_by_version": dg.MetadataValue.json(result.pending_by_version),
        "last_observed_hour_utc": str(result.last_observed_hour) if result.last_observed_hour is not None else None,
        "dagster/row_count": len(result.rows),
        "versions": dg.MetadataValue.json(versions),
        "test_mae_by_version": dg.MetadataValue.json(test_maes),
        "mlflow_runs_logged": dg.MetadataValue.json(logged),
    }
    if not_logged:
        metadata["mlflow_not_logged"] = dg.MetadataValue.json(not_logged)
    if not result.rows.empty:
        table = result.rows[["model_version", "day", "forecasts", "mae", "mae_h01", "mae_h12", "mae_h24"]].copy()
        table["test_mae"] = table["model_version"].map(test_maes)
        metadata["accuracy"] = dg.MetadataValue.md(table.round(3).to_markdown(index=False))
        metadata["mae"] = round(float(np.average(result.rows["mae"], weights=result.rows["forecasts"])), 4)
        metadata["plot"] = dg.MetadataValue.md(accuracy_plot(result, history, test_maes))
    return dg.MaterializeResult(metadata=metadata)


def read_served_forecasts(engine: sa.Engine, model_name: str, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """Served forecasts of `model_name` whose `last_observed_at` is in [start, end)."""
    table = served_forecasts
    query = sa.select(table.c.request_id, table.c.model_version, table.c.last_observed_at, table.c.forecast).where(
        table.c.model_name == model_name,
        table.c.last_observed_at >= start.to_pydatetime(),
        table.c.last_observed_at < end.to_pydatetime(),
    )
    with engine.connect() as connection:
        frame = pd.DataFrame(
            connection.execute(query).mappings().all(),
            columns=["request_id", "model_version", "last_observed_at", "forecast"],
        )
    frame["last_observed_at"] = _utc(frame["last_observed_at"])
    return frame


def read_observations(engine: sa.Engine, station: str, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """The station's temperature and QC flag for the hours (start, end] (what forecasts of [start, end - 24 h) need)."""
    table = atmos_observations
    query = sa.select(table.c.time, table.c.tmp, table.c.tmp_qc).where(
        table.c.station == station, table.c.time > start.to_pydatetime(), table.c.time <= end.to_pydatetime()
    )
    with engine.connect() as connection:
        frame = pd.DataFrame(connection.execute(query).mappings().all(), columns=["time", "tmp", "tmp_qc"])
    frame["time"] = _utc(frame["time"])
    frame["tmp"] = pd.to_numeric(frame["tmp"]).astype("float64")
    frame["tmp_qc"] = pd.to_numeric(frame["tmp_qc"]).astype("Int16")
    return frame


def replace_accuracy(engine: sa.Engine, model_name: str, days: Sequence[dt.date], rows: pd.DataFrame) -> None:
    """Replace the rows of these days in one transaction: re-running a day gives the same table."""
    outside = sorted({d for d in rows["day"] if d not in set(days)})
    if outside:
        raise ValueError(f"accuracy rows for days outside the partitions: {outside[:3]}")
    now = dt.datetime.now(dt.UTC)
    records = [
        {
            "model_name": model_name,
            "scored_at": now,
            **{str(k): (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()},
        }
        for row in rows.to_dict(orient="records")
    ]
    table = forecast_accuracy
    with engine.begin() as connection:
        connection.execute(sa.delete(table).where(table.c.model_name == model_name, table.c.day.in_(list(days))))
        if records:
            connection.execute(sa.insert(table), records)


def read_accuracy(engine: sa.Engine, model_name: str, versions: Sequence[str] | None = None) -> pd.DataFrame:
    """Stored daily accuracy of `model_name` (optionally some versions), ordered by day."""
    table = forecast_accuracy
    query = sa.select(table).where(table.c.model_name == model_name).order_by(table.c.day, table.c.model_version)
    if versions is not None:
        query = query.where(table.c.model_version.in_(list(versions)))
    with engine.connect() as connection:
        return pd.DataFrame(connection.execute(query).mappings().all(), columns=[str(c.name) for c in table.columns])


def log_to_mlflow(
    registry: MlflowRegistry, model_name: str, versions: Sequence[str], rows: pd.DataFrame
) -> tuple[dict[str, float | None], dict[str, str], dict[str, str]]:
    """Each version's daily MAE on its own run (explicit run ids, no global MLflow state).

    Two forms: `realized_mae_<YYYY_MM_DD>` (one metric per day) and the series `realized_mae`
    whose step is the day's number since 1970-01-01 (MLflow charts it over time).
    Returns the versions' test MAE tags, the runs logged to, and why others were not.
    """
    if not versions:
        return {}, {}, {}
    client = registry.client()
    test_maes: dict[str, float | None] = {}
    logged: dict[str, str] = {}
    not_logged: dict[str, str] = {}
    now_ms = int(time.time() * 1000)
    for version in versions:
        try:
            model_version = client.get_model_version(model_name, version)
        except MlflowException as error:
            if error.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise dg.Failure(f"MLflow at {registry.tracking_uri}: {error}") from error
            test_maes[version] = None
            not_logged[version] = f"{model_name} v{version} is not in the registry"
            continue
        tag = model_version.tags.get(TEST_MAE_TAG)
        test_maes[version] = float(tag) if tag not in (None, "") and math.isfinite(float(tag)) else None
        if not model_version.run_id:
            not_logged[version] = "the version has no MLflow run"
            continue
        metrics = []
        version_rows = rows[rows["model_version"] == version]
        for day, mae in zip(version_rows["day"].tolist(), version_rows["mae"].tolist(), strict=True):
            metrics.append(Metric(f"realized_mae_{day:%Y_%m_%d}", float(mae), now_ms, 0))
            metrics.append(Metric("realized_mae", float(mae), now_ms, (day - dt.date(1970, 1, 1)).days))
        client.log_batch(model_version.run_id, metrics=metrics)
        logged[version] = model_version.run_id
    return test_maes, logged, not_logged


def accuracy_plot(result: AccuracyResult, history: pd.DataFrame, test_maes: dict[str, float | None]) -> str:
    """Per lead hour (this run) and per day (all stored days), realized MAE against each version's test MAE."""
    figure, _ = new_figure(11.0, 3.4)
    figure.clear()
    by_lead, by_day = figure.subplots(1, 2)
    leads = np.arange(1, HORIZON_HOURS + 1)
    for index, (version, group) in enumerate(result.rows.groupby("model_version", sort=False)):
        color = f"C{index % 10}"
        per_lead = np.average(group[list(LEAD_COLUMNS)].to_numpy(), axis=0, weights=group["forecasts"].to_numpy())
        by_lead.plot(leads, per_lead, color=color, marker=".", label=f"v{version} realized")
        days = history[history["model_version"] == version]
        by_day.plot(pd.to_datetime(days["day"]), days["mae"], color=color, marker="o", label=f"v{version} realized")
        test = test_maes.get(str(version))
        if test is not None:
            for ax in (by_lead, by_day):
                ax.axhline(test, color=color, linestyle="--", linewidth=1, label=f"v{version} test MAE")
    by_lead.set_xlabel("lead hour")
    by_day.set_xlabel("day of last observed hour (UTC)")
    for ax in (by_lead, by_day):
        ax.set_ylabel("MAE (C)")
        ax.legend(fontsize=7)
    by_day.tick_params(axis="x", labelrotation=30)
    return figure_markdown(figure, "realized vs test MAE")


def _version_order(version: str) -> tuple[int, str]:
    return (int(version), version) if version.isdigit() else (1 << 30, version)


def _utc(values: pd.Series) -> pd.Series:
    """SQLite returns naive UTC datetimes, PostgreSQL aware ones: both as aware UTC."""
    return pd.to_datetime(values, utc=True)
