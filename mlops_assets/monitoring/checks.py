"""Drift of what the champion is served against the windows it was trained on (a WARN check)."""

import datetime as dt
import json

import dagster as dg
import numpy as np
import pandas as pd
import sqlalchemy as sa

from mlops_assets.atmos.assets import load_training_windows
from mlops_assets.atmos.dataset import WindowSet
from mlops_assets.atmos.source import ObservationSource
from mlops_assets.constants import ATMOS_MODEL_NAME
from mlops_assets.monitoring import drift
from mlops_assets.monitoring.resources import MonitoringSettings
from mlops_assets.monitoring.served_log import HORIZON_HOURS, ensure_tables, served_forecasts, to_utc
from mlops_assets.resources.warehouse import WarehouseResource

#: The check belongs to the served model's asset (by key: no import of the promotion step).
CHAMPION_ASSET = dg.AssetKey("atmos_champion_model")
TEMPERATURE = "tmp"
#: Daily at 05:00 UTC; the annotation makes it a condition on a check key, not an asset key.
DRIFT_CHECK_CONDITION: dg.AutomationCondition[dg.AssetCheckKey] = dg.AutomationCondition.cron_tick_passed("0 5 * * *")


@dg.asset_check(
    asset=CHAMPION_ASSET,
    name="served_inputs_drift",
    description="Served inputs of the last days vs the training windows, per variable: KS and PSI (WARN).",
    automation_condition=DRIFT_CHECK_CONDITION,
)
def atmos_served_inputs_drift(
    source: ObservationSource, warehouse: WarehouseResource, monitoring: MonitoringSettings
) -> dg.AssetCheckResult:
    served = read_served_inputs(warehouse.engine, ATMOS_MODEL_NAME, monitoring.drift_lookback_days)
    reference = training_hourly_values(load_training_windows(source, warehouse).train)
    return evaluate_served_drift(reference, served, monitoring)


def evaluate_served_drift(
    reference: dict[str, np.ndarray], served: "ServedInputs", monitoring: MonitoringSettings
) -> dg.AssetCheckResult:
    """The check result for these values (separate so tests can feed any data)."""
    window = {"served_from_utc": served.start, "served_to_utc": served.end, "requests": served.requests}
    if served.requests == 0:
        return dg.AssetCheckResult(
            passed=True,
            severity=dg.AssetCheckSeverity.WARN,
            description="no forecasts served in the window: nothing to compare",
            metadata={**window, "lookback_days": monitoring.drift_lookback_days},
        )
    results = drift.served_drift(reference, served.values, monitoring.drift_psi_threshold, monitoring.drift_ks_pvalue)
    drifted = list(drift.drifted_variables(results))
    metadata: dict[str, dg.MetadataValue | str | float | None] = {
        **window,
        "lookback_days": monitoring.drift_lookback_days,
        "drifted": dg.MetadataValue.json(drifted),
        "per_variable": dg.MetadataValue.json({name: r.as_dict() for name, r in results.items()}),
        "rule": f"PSI > {monitoring.drift_psi_threshold} and KS p < {monitoring.drift_ks_pvalue}",
    }
    for name, result in results.items():
        metadata[f"{name}_psi"] = round(result.psi, 4)
        metadata[f"{name}_ks"] = round(result.ks_statistic, 4)
    return dg.AssetCheckResult(
        passed=not drifted,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"drift in {drifted}" if drifted else "served inputs look like the training windows",
        metadata=metadata,
    )


class ServedInputs:
    """De-duplicated hourly values of what was served in a window of `received_at`."""

    def __init__(self, values: dict[str, np.ndarray], requests: int, start: str | None, end: str | None) -> None:
        self.values = values
        self.requests = requests
        self.start = start
        self.end = end


def read_served_inputs(engine: sa.Engine, model_name: str, lookback_days: float) -> ServedInputs:
    """The last `lookback_days` of served requests, counted back from the newest one."""
    ensure_tables(engine)
    table = served_forecasts
    with engine.connect() as connection:
        newest = connection.execute(
            sa.select(sa.func.max(table.c.received_at)).where(table.c.model_name == model_name)
        ).scalar()
        if newest is None:
            return ServedInputs({}, 0, None, None)
        newest = to_utc(newest)
        start = newest - dt.timedelta(days=lookback_days)
        rows = connection.execute(
            sa.select(table.c.received_at, table.c.last_observed_at, table.c.inputs, table.c.covariates)
            .where(table.c.model_name == model_name, table.c.received_at >= start)
            .order_by(table.c.received_at)
        ).all()
    last_hours = np.array([_epoch_hours(to_utc(r.last_observed_at)) for r in rows], dtype="int64")
    temperatures = np.array([json.loads(r.inputs) for r in rows], dtype="float64")
    values = {TEMPERATURE: drift.hourly_values(temperatures, last_hours)}
    covariates = [json.loads(r.covariates) if r.covariates else {} for r in rows]
    for name in sorted({n for c in covariates for n in c}):
        keep = [i for i, c in enumerate(covariates) if len(c.get(name, ())) == HORIZON_HOURS]
        matrix = np.array([covariates[i][name] for i in keep], dtype="float64").reshape(len(keep), HORIZON_HOURS)
        values[name] = drift.hourly_values(matrix, last_hours[keep])
    return ServedInputs(values, len(rows), start.isoformat(), newest.isoformat())


def training_hourly_values(windows: WindowSet) -> dict[str, np.ndarray]:
    """Each training hour once: temperatures from the 72-h inputs, covariates from their 24 h."""
    last = windows.last_epoch_hours.astype("int64")
    values = {TEMPERATURE: drift.hourly_values(windows.temperatures, last)}
    for name, matrix in windows.covariates.items():
        values[name] = drift.hourly_values(matrix, last)
    return values


def _epoch_hours(moment: dt.datetime) -> int:
    return int(pd.Timestamp(moment).floor("h").value // 3_600_000_000_000)
