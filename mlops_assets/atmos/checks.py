"""Asset checks of the atmos pipeline: on the cleaned series and around promotion.

On the features, blocking checks guard training and WARN ones inform; on the models, a challenger
that is not better than naive never reaches the registry, and the champion alias must forecast
as well as promotion recorded (promotion/checks.py).
"""

import math
from collections.abc import Iterator

import dagster as dg
import pandas as pd

from mlops_assets.atmos import quality
from mlops_assets.atmos.assets import (
    atmos_champion_model,
    atmos_features,
    atmos_tuned_model,
    forecaster_test_mae,
    load_training_windows,
)
from mlops_assets.atmos.source import ObservationSource
from mlops_assets.constants import ATMOS_MODEL_NAME
from mlops_assets.promotion.checks import champion_serves_check
from mlops_assets.resources.warehouse import WarehouseResource
from mlops_assets.tuning.tuned_model import TunedModel

MAX_TMP_MISSING_RATE = 0.05
MAX_HOURS_SINCE_LAST = 48.0
#: Weekly weather alone moved the KS statistic up to 0.85 over 2013 at JFK (fronts, heat waves);
#: a unit change, a stuck sensor or a station move makes the two windows all but disjoint.
MAX_KS = 0.9

_ERROR = dg.AssetCheckSeverity.ERROR
_WARN = dg.AssetCheckSeverity.WARN


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec("schema", asset=atmos_features, blocking=True, description="columns and dtypes"),
        dg.AssetCheckSpec("one_row_per_hour", asset=atmos_features, blocking=True, description="regular hourly grid"),
        dg.AssetCheckSpec("physical_ranges", asset=atmos_features, blocking=True, description="no impossible values"),
        dg.AssetCheckSpec(
            "missing_rate", asset=atmos_features, description=f"tmp missing <= {MAX_TMP_MISSING_RATE:.0%}"
        ),
        dg.AssetCheckSpec(
            "freshness",
            asset=atmos_features,
            description=f"live sources: last hour within {MAX_HOURS_SINCE_LAST:.0f} h",
        ),
        dg.AssetCheckSpec("drift", asset=atmos_features, description=f"last 7 days vs the 28 before: KS <= {MAX_KS}"),
    ],
)
def atmos_features_checks(source: ObservationSource, warehouse: WarehouseResource) -> Iterator[dg.AssetCheckResult]:
    frame = warehouse.read_features(source.station)
    yield from evaluate_feature_checks(frame, source.is_live, pd.Timestamp.now(tz="UTC"))


def evaluate_feature_checks(frame: pd.DataFrame, is_live: bool, now: pd.Timestamp) -> Iterator[dg.AssetCheckResult]:
    """The six results for `frame`; separate from the decorator so tests can feed any frame."""
    schema = quality.schema_problems(frame)
    yield dg.AssetCheckResult(
        check_name="schema", passed=not schema, severity=_ERROR, metadata={"problems": dg.MetadataValue.json(schema)}
    )
    if schema:
        return

    grid = quality.grid_problems(frame)
    yield dg.AssetCheckResult(
        check_name="one_row_per_hour",
        passed=not grid,
        severity=_ERROR,
        metadata={"problems": dg.MetadataValue.json(grid)},
    )

    violations = quality.range_violations(frame)
    yield dg.AssetCheckResult(
        check_name="physical_ranges",
        passed=not any(violations.values()),
        severity=_ERROR,
        metadata={"violations": dg.MetadataValue.json(violations)},
    )

    rates = quality.missing_rates(frame)
    yield dg.AssetCheckResult(
        check_name="missing_rate",
        passed=rates["tmp"] <= MAX_TMP_MISSING_RATE,
        severity=_WARN,
        metadata={
            "missing_rates": dg.MetadataValue.json({k: round(v, 4) for k, v in rates.items()}),
            "tmp": rates["tmp"],
        },
    )

    age = quality.hours_since_last_observation(frame, now)
    yield dg.AssetCheckResult(
        check_name="freshness",
        passed=(age <= MAX_HOURS_SINCE_LAST) if is_live else True,
        severity=_WARN,
        metadata={"hours_since_last_observation": round(age, 1), "applies": dg.MetadataValue.bool(is_live)},
    )

    drift = quality.drift(frame)
    drifted = sorted(name for name, numbers in drift.items() if numbers["ks"] > MAX_KS)
    yield dg.AssetCheckResult(
        check_name="drift",
        passed=not drifted,
        severity=_WARN,
        metadata={"drifted": dg.MetadataValue.json(drifted), "per_variable": dg.MetadataValue.json(drift)},
    )


@dg.asset_check(
    asset=atmos_tuned_model, blocking=True, description="finite scores that beat persistence and seasonal naive"
)
def atmos_tuned_model_beats_baselines(atmos_tuned_model: TunedModel) -> dg.AssetCheckResult:
    tuned = atmos_tuned_model
    per_horizon = tuned.details.get("test_mae_per_horizon", [])
    margins = {name: round(score - tuned.test_score, 4) for name, score in tuned.baselines.items()}
    return dg.AssetCheckResult(
        passed=tuned.beats_baselines() and all(math.isfinite(v) for v in per_horizon),
        metadata={
            "test_mae": tuned.test_score,
            "margin_over_baselines": dg.MetadataValue.json(margins),
            "improvement_over_persistence": round(1 - tuned.test_score / tuned.baselines["persistence"], 4),
        },
    )


def _champion_test_mae(context: dg.AssetCheckExecutionContext, model_uri: str) -> float:
    """The champion step's scoring, on the windows it rebuilds from the warehouse."""
    resources = context.resources
    return forecaster_test_mae(
        resources.registry, model_uri, load_training_windows(resources.source, resources.warehouse)
    )


atmos_champion_serves = champion_serves_check(
    name="atmos_champion_serves",
    asset=atmos_champion_model,
    model_name=ATMOS_MODEL_NAME,
    metric="test_mae",
    score_on_holdout=_champion_test_mae,
    required_resource_keys={"source", "warehouse"},
)
