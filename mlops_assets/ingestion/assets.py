"""Raw hourly observations: one daily partition per local day, written to the warehouse."""

import datetime as dt

import dagster as dg

from mlops_assets.constants import ATMOS_GROUP
from mlops_assets.ingestion.kma import KmaApiError
from mlops_assets.ingestion.observations import SourceConfigError
from mlops_assets.ingestion.sources import CsvFormatError, ObservationSource, local_day_bounds
from mlops_assets.resources.warehouse import WarehouseResource

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
    context.log.info(f"fetching {source.station} {first_day}..{last_day} ({len(keys)} days) from {type(source).__name__}")
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
