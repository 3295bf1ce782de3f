"""The check every champion step carries: what serving would load now scores what promotion recorded.

The champion step raises when it cannot score, so a check that only re-runs its work cannot fail.
This one asks the registry afresh, as a serving pod does (`models:/<name>@champion`), and compares
the re-measured holdout score with the one the newest champion step recorded in the registry for
the champion it left behind the alias. It fails when there is no champion, when the champion does
not load or score, or when the scores differ: the alias was moved by hand to another model, the
version's artifacts changed, or the holdout changed since the step ran (run it with the step).
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import dagster as dg
import mlflow

from mlops_assets.constants import CHAMPION_ALIAS
from mlops_assets.resources.mlflow_registry import MlflowRegistry

#: Recorded scores are rounded to 4 decimals (`promote_if_better`'s version tags): a re-measured score
#: within this of the recorded one is the same score.
SCORE_ABS_TOLERANCE = 1e-4
#: Relative slack for large scores (an MAE in currency units), far below any real model difference.
SCORE_REL_TOLERANCE = 1e-6

#: Scores a model URI on the pipeline's holdout, rebuilt in this run from the check's resources.
HoldoutScorer = Callable[[dg.AssetCheckExecutionContext, str], float]


@dataclass(frozen=True)
class PromotionRecord:
    """What the newest champion step wrote to the registry (on the version it registered)."""

    registered_version: str
    decision: str
    #: The version that step left behind the alias (None: it left no champion).
    champion_version: str | None
    #: That champion's score on the step's holdout (None: no score recorded).
    champion_score: float | None


def latest_promotion_record(client: mlflow.MlflowClient, model_name: str, metric: str) -> PromotionRecord | None:
    """The decision recorded on the newest version: every champion step registers one, promoted or not.

    A promoted version carries its own score (`<metric>`); a rejected one carries the champion it
    lost to and that champion's score on the same holdout (`champion_<metric>_same_holdout`).
    """
    newest = client.search_model_versions(f"name = '{model_name}'", max_results=1, order_by=["version_number DESC"])
    if not newest:
        return None
    version = newest[0]
    tags = version.tags
    decision = tags.get("decision", "")
    if decision == "promoted":
        return PromotionRecord(str(version.version), decision, str(version.version), _recorded_number(tags.get(metric)))
    before = tags.get("champion_version_before", "none")
    champion = None if before == "none" else before
    score = _recorded_number(tags.get(f"champion_{metric}_same_holdout"))
    return PromotionRecord(str(version.version), decision, champion, score)


def _recorded_number(text: str | None) -> float | None:
    """A score tag as a number; None when absent or "none" (the step recorded no score)."""
    if text is None or text == "none":
        return None
    return float(text)


def champion_serves_check(
    *,
    name: str,
    asset: dg.AssetsDefinition,
    model_name: str,
    metric: str,
    score_on_holdout: HoldoutScorer,
    required_resource_keys: set[str],
) -> dg.AssetChecksDefinition:
    """An ERROR check on `asset` (a champion step): the alias' model loads and scores what was recorded.

    `score_on_holdout(context, model_uri)` must be the scoring the champion step uses, on the
    holdout it rebuilds (the pipeline's own function, not a copy), so equal models score equal.
    """
    serving_uri = f"models:/{model_name}@{CHAMPION_ALIAS}"

    @dg.asset_check(
        asset=asset,
        name=name,
        required_resource_keys={"registry", *required_resource_keys},
        description=f"{serving_uri} loads and scores on today's holdout the {metric} promotion recorded for it",
    )
    def _champion_serves(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        registry: MlflowRegistry = context.resources.registry
        return evaluate_champion(registry, model_name, metric, lambda: score_on_holdout(context, serving_uri))

    return _champion_serves


def evaluate_champion(
    registry: MlflowRegistry, model_name: str, metric: str, score_serving_model: Callable[[], float]
) -> dg.AssetCheckResult:
    """The verdict, separate from the decorator: `score_serving_model()` loads the alias and scores it."""

    def failed(problem: str, **metadata: str | int | float | None) -> dg.AssetCheckResult:
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"problem": problem, "metric": metric, **metadata},
        )

    champion = registry.champion(model_name)
    if champion is None:
        return failed(f"no version of {model_name} carries the '{CHAMPION_ALIAS}' alias: serving has nothing to load")
    served_version = str(champion.version)
    record = latest_promotion_record(registry.client(), model_name, metric)
    promoted_version = record.champion_version if record else None
    versions = {
        "champion_version": int(served_version),
        "promoted_version": int(promoted_version) if promoted_version else None,
    }
    if record is None or record.champion_score is None:
        return failed(f"no {metric} was recorded for {model_name}'s champion by a champion step", **versions)
    try:
        remeasured = score_serving_model()
    except Exception as error:  # the verdict of the check: what serving loads does not load or score
        return failed(
            f"{model_name}@{CHAMPION_ALIAS} (v{served_version}) cannot be scored: {type(error).__name__}: {error}",
            **versions,
        )
    after = registry.champion(model_name)
    if after is None or str(after.version) != served_version:
        moved_to = after.version if after is not None else "none"
        return failed(f"the alias moved from v{served_version} to {moved_to} while the check ran", **versions)
    scores = {f"recorded_{metric}": round(record.champion_score, 4), f"remeasured_{metric}": round(remeasured, 4)}
    same = math.isfinite(remeasured) and math.isclose(
        remeasured, record.champion_score, rel_tol=SCORE_REL_TOLERANCE, abs_tol=SCORE_ABS_TOLERANCE
    )
    if not same:
        return failed(
            f"{model_name}@{CHAMPION_ALIAS} (v{served_version}) scores {remeasured:.4f} on the holdout, but the newest "
            f"champion step (registering v{record.registered_version}) recorded {record.champion_score:.4f} for "
            f"its champion v{promoted_version}",
            **versions,
            **scores,
        )
    return dg.AssetCheckResult(
        passed=True, severity=dg.AssetCheckSeverity.ERROR, metadata={"metric": metric, **versions, **scores}
    )
