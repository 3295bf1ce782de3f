"""Sensors that close the loop: a moved alias, a changed input file, a degraded champion, a failed run.

Configuration comes from resources (resolved at each tick) and, for the alert webhook, from
the pipeline settings (`ALERT_WEBHOOK_URL`) read when the sensor evaluates; nothing is read at import.
"""

import datetime as dt
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from mlops_assets.atmos.source import CsvFormatError, CsvObservationSource, ObservationSource, read_observations_csv
from mlops_assets.constants import ATMOS_MODEL_NAME, INSURANCE_MODEL_NAME
from mlops_assets.insurance.source import CsvPolicySource, PolicySource
from mlops_assets.monitoring.assets import TEST_MAE_TAG, read_accuracy
from mlops_assets.monitoring.resources import MonitoringSettings
from mlops_assets.monitoring.served_log import ensure_tables
from mlops_assets.resources.mlflow_registry import MlflowRegistry
from mlops_assets.resources.warehouse import WarehouseResource
from mlops_assets.settings import PipelineSettings, load_pipeline_settings

#: Registered model -> the asset whose materializations move its alias.
CHAMPION_ASSETS: dict[str, dg.AssetKey] = {
    ATMOS_MODEL_NAME: dg.AssetKey("atmos_champion_model"),
    INSURANCE_MODEL_NAME: dg.AssetKey("insurance_champion_model"),
}
RAW_OBSERVATIONS = dg.AssetKey("raw_atmos_observations")
INSURANCE_POLICIES = dg.AssetKey("insurance_policies")
#: The forecaster's training job (mlops_assets.atmos.schedules), referenced by name.
ATMOS_TRAINING_JOB = "atmos_training"
ALERT_WEBHOOK_ENV = PipelineSettings.env_name("alert_webhook_url")
PARTITION_RANGE_START = "dagster/asset_partition_range_start"
PARTITION_RANGE_END = "dagster/asset_partition_range_end"


# -- the champion alias moved outside Dagster -------------------------------------------------


@dg.sensor(
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Records an observation on the champion asset when the 'champion' alias moved outside Dagster.",
)
def champion_alias_sensor(context: dg.SensorEvaluationContext, registry: MlflowRegistry) -> dg.SensorResult:
    """Cursor: JSON {model: last seen version or null}. The first tick only learns the versions."""
    seen: dict[str, str | None] = json.loads(context.cursor) if context.cursor else {}
    events: list[dg.AssetObservation] = []
    current: dict[str, str | None] = {}
    for model, asset_key in CHAMPION_ASSETS.items():
        version = registry.champion(model)  # unreachable registry: the tick fails and says why
        current[model] = str(version.version) if version is not None else None
        if model not in seen or seen[model] == current[model]:
            continue
        materialized = _materialized_champion(context.instance, asset_key)
        if materialized is not None and materialized == current[model]:
            context.log.info(f"{model}: champion v{current[model]} was set by {asset_key.to_user_string()}")
            continue
        tags = version.tags if version is not None else {}
        metadata: dict[str, Any] = {
            "model": model,
            "champion_version_before": seen[model],
            "champion_version": current[model],
            "moved_by": "outside Dagster",
            "champion_version_materialized": materialized,
        }
        metadata.update(
            {key: tags[key] for key in ("rollback_reason", "rolled_back_at", "rolled_back_from") if key in tags}
        )
        events.append(dg.AssetObservation(asset_key=asset_key, metadata=metadata))
    return dg.SensorResult(asset_events=events, cursor=json.dumps(current, sort_keys=True))


def _materialized_champion(instance: dg.DagsterInstance, asset_key: dg.AssetKey) -> str | None:
    """The champion version the asset's latest materialization reported, if any."""
    event = instance.get_latest_materialization_event(asset_key)
    if event is None or event.asset_materialization is None:
        return None
    value = event.asset_materialization.metadata.get("champion_version")
    raw = getattr(value, "value", value)
    return None if raw is None else str(raw)


# -- a watched input file changed -------------------------------------------------------------


@dg.sensor(
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Re-ingests when the file behind ATMOS_CSV_PATH or INSURANCE_CSV_PATH changes (mtime or size).",
)
def input_files_sensor(
    context: dg.SensorEvaluationContext, source: ObservationSource, policy_source: PolicySource
) -> dg.SensorResult | dg.SkipReason:
    """Cursor: JSON {path: [mtime_ns, size]}.

    Station CSV: one run over the local days the whole file covers. Edits can touch any row (a
    corrected value in March), so "since the last stored hour" would miss them; the raw asset
    replaces each day atomically, so re-ingesting unchanged days costs time, not correctness.
    Policies CSV: the (unpartitioned) `insurance_policies`. Downstream assets follow through
    their automation conditions.
    """
    watched: dict[str, tuple[str, Any]] = {}
    if isinstance(source, CsvObservationSource):
        watched[str(Path(source.path).resolve())] = ("atmos", source)
    if isinstance(policy_source, CsvPolicySource):
        watched[str(Path(policy_source.path).resolve())] = ("insurance", policy_source)
    if not watched:
        return dg.SkipReason("neither ATMOS_SOURCE=csv (ATMOS_CSV_PATH) nor INSURANCE_CSV_PATH is configured")
    seen: dict[str, list[int]] = json.loads(context.cursor) if context.cursor else {}
    cursor = dict(seen)
    requests: list[dg.RunRequest] = []
    skipped: list[str] = []
    for path, (kind, resource) in watched.items():
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            skipped.append(f"{path} does not exist")
            continue
        signature = [stat.st_mtime_ns, stat.st_size]
        if seen.get(path) == signature:
            continue
        cursor[path] = signature
        key = f"{kind}:{path}:{signature[0]}:{signature[1]}"
        if kind == "insurance":
            requests.append(dg.RunRequest(run_key=key, asset_selection=[INSURANCE_POLICIES]))
            continue
        try:
            first, last = csv_local_days(resource)
        except (CsvFormatError, ValueError) as error:
            # Ingesting would fail the same way; wait for the next version of the file.
            skipped.append(f"{path}: {error}")
            context.log.warning(f"not requesting ingestion: {error}")
            continue
        requests.append(
            dg.RunRequest(
                run_key=key,
                asset_selection=[RAW_OBSERVATIONS],
                tags={PARTITION_RANGE_START: first.isoformat(), PARTITION_RANGE_END: last.isoformat()},
            )
        )
    if not requests and skipped:
        return dg.SensorResult(skip_reason="; ".join(skipped), cursor=json.dumps(cursor, sort_keys=True))
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(cursor, sort_keys=True))


def csv_local_days(source: CsvObservationSource) -> tuple[dt.date, dt.date]:
    """First and last local day (the source's zone) of the station file."""
    frame = read_observations_csv(Path(source.path), source.station, source.timezone, source.column_mapping)
    if frame.empty:
        raise ValueError(f"{source.path} has no observations")
    local = frame["time"].dt.tz_convert(source.timezone)
    return local.min().date(), local.max().date()


# -- the champion got worse than promised -----------------------------------------------------


@dg.sensor(
    job_name=ATMOS_TRAINING_JOB,
    minimum_interval_seconds=3600,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Retrains when the champion's realized MAE exceeds its test MAE by the margin on enough scored days.",
)
def champion_degradation_sensor(
    context: dg.SensorEvaluationContext,
    warehouse: WarehouseResource,
    registry: MlflowRegistry,
    monitoring: MonitoringSettings,
) -> dg.RunRequest | dg.SkipReason:
    """One run per episode: the run key names the version and the first day of the bad streak."""
    champion = registry.champion(ATMOS_MODEL_NAME)
    if champion is None:
        return dg.SkipReason(f"{ATMOS_MODEL_NAME} has no champion")
    version = str(champion.version)
    tag = champion.tags.get(TEST_MAE_TAG)
    if tag in (None, ""):
        return dg.SkipReason(f"{ATMOS_MODEL_NAME} v{version} has no '{TEST_MAE_TAG}' tag to compare with")
    test_mae = float(tag)
    engine = warehouse.engine
    ensure_tables(engine)
    days = read_accuracy(engine, ATMOS_MODEL_NAME, [version])
    episode = degradation_episode(days, test_mae, monitoring.degradation_margin, monitoring.degradation_min_days)
    limit = test_mae * (1 + monitoring.degradation_margin)
    if episode is None:
        return dg.SkipReason(
            f"v{version}: fewer than {monitoring.degradation_min_days} latest scored days above "
            f"{limit:.3f} (test MAE {test_mae:.3f} + {monitoring.degradation_margin:.0%})"
        )
    start, streak = episode
    context.log.info(f"v{version} degraded since {start}: {streak} scored days above {limit:.3f}")
    return dg.RunRequest(
        run_key=f"degraded:{ATMOS_MODEL_NAME}:v{version}:{start.isoformat()}",
        job_name=ATMOS_TRAINING_JOB,
        tags={
            "monitoring/reason": "champion_degraded",
            "monitoring/champion_version": version,
            "monitoring/degraded_since": start.isoformat(),
            "monitoring/test_mae": f"{test_mae:.4f}",
        },
    )


def degradation_episode(
    days: pd.DataFrame, test_mae: float, margin: float, min_days: int
) -> tuple[dt.date, int] | None:
    """(first day, length) of the streak of latest scored days above test MAE x (1 + margin), if long enough.

    The streak is the run of consecutive *scored* days (days without served forecasts neither
    break nor extend it) ending at the newest scored day.
    """
    if days.empty:
        return None
    ordered = days.sort_values("day")
    above = (ordered["mae"].to_numpy(dtype="float64") > test_mae * (1 + margin))[::-1]
    streak = int(above.argmin()) if not above.all() else len(above)
    if streak < min_days:
        return None
    first = ordered["day"].iloc[len(ordered) - streak]
    return (first if isinstance(first, dt.date) else pd.Timestamp(first).date()), streak


# -- any run failed ---------------------------------------------------------------------------


@dg.run_failure_sensor(
    name="alert_on_run_failure",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Posts a JSON alert to ALERT_WEBHOOK_URL (read at each evaluation) when a run fails.",
)
def alert_on_run_failure(context: dg.RunFailureSensorContext) -> dg.SkipReason | None:
    """Reads the pipeline settings at each evaluation: a rotated webhook URL needs no reload."""
    webhook = load_pipeline_settings().alert_webhook_url
    url = webhook.get_secret_value().strip() if webhook is not None else ""
    if not url:
        return dg.SkipReason(f"{ALERT_WEBHOOK_ENV} is not set")
    run = context.dagster_run
    payload = {
        "event": "dagster_run_failed",
        "run_id": run.run_id,
        "job_name": run.job_name,
        "message": context.failure_event.message,
        "tags": {k: v for k, v in run.tags.items() if not k.startswith(".")},
        "step_failures": [
            {"step": event.step_key, "error": _error_chain(getattr(event.event_specific_data, "error", None))}
            for event in context.get_step_failure_events()
        ],
    }
    post_json(url, payload)
    context.log.info(f"alert for run {run.run_id} posted to {ALERT_WEBHOOK_ENV}")
    return None


def _error_chain(error: Any) -> str:
    """The messages of a serialized error and its causes (the root cause names the real problem), no traces."""
    messages = []
    while error is not None:
        messages.append(str(error.message).strip())
        error = error.cause
    return " <- ".join(messages)


def post_json(url: str, payload: dict[str, Any], timeout: float = 10.0) -> None:
    """POST JSON; a refused or non-2xx answer raises (the sensor tick then shows the error)."""
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"alert webhook answered HTTP {error.code}: {error.read()[:200]!r}") from error
