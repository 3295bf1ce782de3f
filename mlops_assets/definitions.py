"""Entry point of the code location: assembles assets, checks, jobs, schedules and resources."""

import dagster as dg

from mlops_assets.atmos.assets import (
    atmos_champion_model,
    atmos_features,
    atmos_training_windows,
    atmos_tuned_model,
    raw_atmos_observations,
)
from mlops_assets.atmos.checks import atmos_champion_serves, atmos_features_checks, atmos_tuned_model_beats_baselines
from mlops_assets.atmos.schedules import (
    atmos_ingestion_job,
    atmos_training_job,
    atmos_weekly_retraining_schedule,
    build_ingestion_schedule,
)
from mlops_assets.automation import automation_sensor
from mlops_assets.digits.assets import digit_images, digits_champion_model, digits_tuned_model
from mlops_assets.digits.checks import digits_champion_serves, digits_tuned_model_beats_baselines
from mlops_assets.insurance.assets import insurance_champion_model, insurance_policies, insurance_tuned_model
from mlops_assets.insurance.checks import insurance_champion_serves, insurance_tuned_model_beats_baseline
from mlops_assets.monitoring.assets import atmos_forecast_accuracy
from mlops_assets.monitoring.checks import atmos_served_inputs_drift
from mlops_assets.monitoring.sensors import (
    alert_on_run_failure,
    champion_alias_sensor,
    champion_degradation_sensor,
    input_files_sensor,
)
from mlops_assets.resources import build_resources
from mlops_assets.settings import load_pipeline_settings


@dg.definitions
def defs() -> dg.Definitions:
    """Loaded lazily by Dagster's tools: the settings are read once, at load (not import), and passed down."""
    settings = load_pipeline_settings()
    return dg.Definitions(
        assets=[
            raw_atmos_observations,
            atmos_features,
            atmos_training_windows,
            atmos_tuned_model,
            atmos_champion_model,
            atmos_forecast_accuracy,
            insurance_policies,
            insurance_tuned_model,
            insurance_champion_model,
            digit_images,
            digits_tuned_model,
            digits_champion_model,
        ],
        asset_checks=[
            atmos_features_checks,
            atmos_tuned_model_beats_baselines,
            atmos_champion_serves,
            atmos_served_inputs_drift,
            insurance_tuned_model_beats_baseline,
            insurance_champion_serves,
            digits_tuned_model_beats_baselines,
            digits_champion_serves,
        ],
        jobs=[atmos_ingestion_job, atmos_training_job],
        sensors=[
            automation_sensor,
            champion_alias_sensor,
            input_files_sensor,
            champion_degradation_sensor,
            alert_on_run_failure,
        ],
        schedules=[build_ingestion_schedule(running=settings.atmos_source == "kma"), atmos_weekly_retraining_schedule],
        resources=build_resources(settings),
    )
