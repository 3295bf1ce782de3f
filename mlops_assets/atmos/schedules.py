"""When the atmos pipeline runs: ingestion every six hours, retraining weekly.

The ingestion schedule fetches the newest complete local day (the old system's cadence); the weekly
retraining runs even without new data (new features trigger retraining through automation).
"""

import datetime as dt
from zoneinfo import ZoneInfo

import dagster as dg

from mlops_assets.atmos.assets import (
    atmos_champion_model,
    atmos_daily_partitions,
    atmos_training_windows,
    atmos_tuned_model,
    raw_atmos_observations,
)
from mlops_assets.atmos.source import ObservationSource

INGESTION_CRON = "0 */6 * * *"
#: Days a late or failed ingestion is retried by later ticks before a person must backfill.
CATCH_UP_DAYS = 3

atmos_ingestion_job = dg.define_asset_job(
    "atmos_ingestion", selection=[raw_atmos_observations], partitions_def=atmos_daily_partitions
)


def days_to_ingest(
    now: dt.datetime, timezone: str, materialized: set[str], catch_up_days: int = CATCH_UP_DAYS
) -> list[str]:
    """Complete local days of the last `catch_up_days` that are not materialized yet, oldest first."""
    today = now.astimezone(ZoneInfo(timezone)).date()
    days = [(today - dt.timedelta(days=back)).isoformat() for back in range(catch_up_days, 0, -1)]
    return [day for day in days if day not in materialized]


def build_ingestion_schedule(running: bool) -> dg.ScheduleDefinition:
    """The schedule, on by default only where new data arrives (the live KMA source)."""

    @dg.schedule(
        cron_schedule=INGESTION_CRON,
        job=atmos_ingestion_job,
        default_status=dg.DefaultScheduleStatus.RUNNING if running else dg.DefaultScheduleStatus.STOPPED,
        description="Ingest the newest complete local day (and catch up on the previous ones).",
    )
    def atmos_ingestion_schedule(
        context: dg.ScheduleEvaluationContext, source: ObservationSource
    ) -> dg.SkipReason | list[dg.RunRequest]:
        materialized = context.instance.get_materialized_partitions(raw_atmos_observations.key)
        now = context.scheduled_execution_time or dt.datetime.now(dt.UTC)
        days = days_to_ingest(now, source.timezone, materialized)
        if not days:
            return dg.SkipReason("every complete day of the catch-up window is already ingested")
        return [dg.RunRequest(run_key=f"{day}@{now.isoformat()}", partition_key=day) for day in days]

    return atmos_ingestion_schedule


atmos_training_job = dg.define_asset_job(
    "atmos_training",
    selection=dg.AssetSelection.assets(atmos_training_windows, atmos_tuned_model, atmos_champion_model),
    description="Windows, search and promotion of the forecaster.",
)

atmos_weekly_retraining_schedule = dg.ScheduleDefinition(
    name="atmos_weekly_retraining",
    job=atmos_training_job,
    cron_schedule="0 3 * * 1",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Mondays 03:00 UTC: a fresh search, even when no new data arrived.",
)
