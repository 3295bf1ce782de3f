"""Retrain weekly even without new data (new features trigger retraining through automation)."""

import dagster as dg

from mlops_assets.promotion.assets import atmos_champion_model
from mlops_assets.training.assets import atmos_training_windows, atmos_tuned_model

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
