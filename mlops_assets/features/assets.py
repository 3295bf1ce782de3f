"""The cleaned hourly series over the stored history of the configured station."""

import dagster as dg
import pandas as pd

from mlops_assets.automation import ON_NEW_PARTITIONS
from mlops_assets.constants import ATMOS_GROUP
from mlops_assets.features.cleaning import clean_observations
from mlops_assets.ingestion.assets import raw_atmos_observations
from mlops_assets.ingestion.sources import ObservationSource
from mlops_assets.plots import figure_markdown, new_figure
from mlops_assets.resources.warehouse import WarehouseResource


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
        raise dg.Failure(f"no raw observations stored for station {source.station}: materialize raw_atmos_observations first", allow_retries=False)
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
