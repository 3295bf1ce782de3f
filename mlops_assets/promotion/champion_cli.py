"""`mlops-assets champion`: show the champion, roll the alias back with a recorded reason."""

from __future__ import annotations

import datetime as dt
import sys

from mlops_assets.constants import CHAMPION_ALIAS
from mlops_assets.resources.mlflow_registry import MlflowRegistry, TrackingServerUnavailable
from mlops_assets.settings import PipelineSettings

SHOWN_TAGS = (
    "test_mae",
    "val_mae",
    "family",
    "baseline_persistence",
    "baseline_seasonal_naive",
    "decision",
    "decision_reason",
)


def show_champion(model_name: str, settings: PipelineSettings) -> int:
    registry = MlflowRegistry(tracking_uri=settings.mlflow_tracking_uri)
    try:
        registry.ensure_reachable()
    except TrackingServerUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    champion = registry.champion(model_name)
    if champion is None:
        print(f"error: {model_name} has no '{CHAMPION_ALIAS}' version in {registry.tracking_uri}", file=sys.stderr)
        return 1
    print(f"{model_name}@{CHAMPION_ALIAS} = version {champion.version} (run {champion.run_id})")
    for key in SHOWN_TAGS:
        if key in champion.tags:
            print(f"  {key}: {champion.tags[key]}")
    for key in ("rolled_back_at", "rollback_reason", "rolled_back_from"):
        if key in champion.tags:
            print(f"  {key}: {champion.tags[key]}")
    return 0


def rollback(model_name: str, version: str, reason: str, settings: PipelineSettings) -> int:
    """Move the alias to `version`, recording why and from which version on both versions."""
    registry = MlflowRegistry(tracking_uri=settings.mlflow_tracking_uri)
    try:
        registry.ensure_reachable()
        target = registry.version(model_name, version)
    except TrackingServerUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # MLflow raises RestException/MlflowException for unknown versions
        print(f"error: {model_name} version {version} cannot be found: {error}", file=sys.stderr)
        return 1
    previous = registry.champion(model_name)
    registry.move_champion(model_name, target.version)
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    registry.tag_version(
        model_name,
        target.version,
        {
            "rolled_back_at": now,
            "rollback_reason": reason,
            "rolled_back_from": previous.version if previous else "none",
        },
    )
    if previous is not None and previous.version != target.version:
        registry.tag_version(model_name, previous.version, {"demoted_at": now, "demotion_reason": reason})
    before = previous.version if previous else "none"
    print(f"{model_name}@{CHAMPION_ALIAS}: version {before} -> {target.version} ({reason})")
    return 0


def example_request(model_name: str, settings: PipelineSettings) -> int:
    """Print a forecast request for the champion from the newest 72 stored hours (JSON on stdout)."""
    import json

    import pandas as pd

    from mlops_assets.atmos.forecast_features import INPUT_HOURS, FeatureSpec
    from mlops_assets.atmos.model_io import FEATURE_SPEC_KEY
    from mlops_assets.resources.mlflow_run import model_metadata
    from mlops_assets.resources.warehouse import WarehouseResource

    registry = MlflowRegistry(tracking_uri=settings.mlflow_tracking_uri)
    champion = registry.champion(model_name)
    if champion is None:
        print(f"error: {model_name} has no '{CHAMPION_ALIAS}' version in {registry.tracking_uri}", file=sys.stderr)
        return 1
    metadata = model_metadata(registry.tracking_uri, f"models:/{model_name}/{champion.version}")
    spec = FeatureSpec.from_dict(metadata[FEATURE_SPEC_KEY])
    station = settings.station
    warehouse = WarehouseResource(url=settings.warehouse_url)
    features = warehouse.read_features(station)
    complete = features.dropna(subset=["tmp", *spec.covariates]).reset_index(drop=True)
    # The newest 72 consecutive complete hours: rows i-71..i span exactly 71 hours.
    times = complete["time"]
    spans = times - times.shift(INPUT_HOURS - 1)
    ends = spans.index[spans == pd.Timedelta(hours=INPUT_HOURS - 1)]
    if len(ends) == 0:
        print(f"error: station {station} has no {INPUT_HOURS} consecutive complete hours stored", file=sys.stderr)
        return 1
    end = int(ends[-1])
    window = complete.iloc[end - INPUT_HOURS + 1 : end + 1]
    body: dict[str, object] = {"time_series": [round(float(v), 2) for v in window["tmp"]]}
    if spec.calendar:
        body["last_observed_at"] = window["time"].iloc[-1].isoformat()
    if spec.covariates:
        body["covariates"] = {
            name: [round(float(v), 2) for v in window[name].iloc[-spec.covariate_hours :]] for name in spec.covariates
        }
    print(json.dumps(body))
    return 0
