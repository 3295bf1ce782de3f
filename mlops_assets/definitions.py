"""Entry point of the code location: assembles assets, checks, jobs, schedules and resources."""

import dagster as dg

from mlops_assets.features.assets import atmos_features
from mlops_assets.features.checks import atmos_features_checks
from mlops_assets.ingestion.assets import raw_atmos_observations
from mlops_assets.ingestion.schedules import atmos_ingestion_job, build_ingestion_schedule
from mlops_assets.resources import atmos_source_kind, build_resources


@dg.definitions
def defs() -> dg.Definitions:
    """Loaded lazily by Dagster's tools, so environment variables are read at load, not import."""
    source_kind = atmos_source_kind()
    return dg.Definitions(
        assets=[raw_atmos_observations, atmos_features],
        asset_checks=[atmos_features_checks],
        jobs=[atmos_ingestion_job],
        schedules=[build_ingestion_schedule(running=source_kind == "kma")],
        resources=build_resources(),
    )
