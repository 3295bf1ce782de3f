"""Register a challenger and move `champion` only if it wins: the step every model family shares."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg

from mlops_assets.constants import CHAMPION_ALIAS
from mlops_assets.promotion.decision import PromotionDecision, decide_promotion
from mlops_assets.resources.mlflow_registry import MlflowRegistry, TrackingServerUnavailable
from mlops_assets.tuning.tuned_model import TunedModel


@dataclass(frozen=True)
class Challenger:
    """A logged model and its score on the holdout (lower is better)."""

    model_uri: str
    run_id: str
    experiment_id: str
    score: float
    baselines: dict[str, float]
    tags: dict[str, Any]


@dataclass(frozen=True)
class PromotionOutcome:
    decision: PromotionDecision
    registered_version: str
    champion_before: str | None
    champion_after: str | None

    def metadata(
        self, registry: MlflowRegistry, challenger: Challenger, model_name: str, metric: str
    ) -> dict[str, Any]:
        """What the Dagster UI shows for the promotion step."""
        decision = self.decision
        return {
            "decision": "promoted" if decision.promote else "rejected",
            "reason": decision.reason,
            "metric": metric,
            "registered_version": int(self.registered_version),
            "champion_version_before": int(self.champion_before) if self.champion_before else None,
            "champion_version": int(self.champion_after) if self.champion_after else None,
            f"challenger_{metric}": round(decision.challenger_score, 4),
            f"champion_{metric}_same_holdout": round(decision.champion_score, 4)
            if decision.champion_score is not None
            else None,
            **{f"baseline_{name}": round(score, 4) for name, score in decision.baselines.items()},
            "mlflow_run": dg.MetadataValue.url(registry.run_url(challenger.experiment_id, challenger.run_id)),
            "model_uri": f"models:/{model_name}@{CHAMPION_ALIAS}",
        }


def promote_if_better(
    registry: MlflowRegistry,
    model_name: str,
    challenger: Challenger,
    rescore_champion: Callable[[str], float],
    metric: str,
) -> PromotionOutcome:
    """Re-score the current champion with `rescore_champion(version)`, decide, register, maybe move the alias.

    The challenger is always registered (its tags say whether and why it was rejected), so the
    registry keeps the history of every candidate; only the alias decides what is served.
    """
    try:
        registry.ensure_reachable()
    except TrackingServerUnavailable as error:
        raise dg.Failure(str(error), allow_retries=False) from error
    current = registry.champion(model_name)
    champion_score = rescore_champion(current.version) if current is not None else None
    decision = decide_promotion(challenger.score, champion_score, challenger.baselines)
    tags = {
        metric: round(challenger.score, 4),
        **challenger.tags,
        "decision": "promoted" if decision.promote else "rejected",
        "decision_reason": decision.reason,
        "champion_version_before": current.version if current else "none",
        f"champion_{metric}_same_holdout": round(champion_score, 4) if champion_score is not None else "none",
        **{f"baseline_{name}": round(score, 4) for name, score in challenger.baselines.items()},
    }
    version = registry.register(model_name, challenger.model_uri, challenger.run_id, tags)
    if decision.promote:
        registry.move_champion(model_name, version.version)
    after = version.version if decision.promote else (current.version if current else None)
    return PromotionOutcome(decision, version.version, current.version if current else None, after)


def champion_asset(
    *, group_name: str, model_name: str, owners: list[str], deps: Sequence[Any] = ()
) -> Callable[..., dg.AssetsDefinition]:
    """`@dg.asset` for a pipeline's champion step (it calls `promote_tuned_model`)."""
    return dg.asset(
        group_name=group_name,
        deps=list(deps),
        automation_condition=dg.AutomationCondition.eager(),
        kinds={"mlflow"},
        owners=owners,
        description=f"Registers the challenger as a version of '{model_name}'; moves '{CHAMPION_ALIAS}' only if it "
        "beats its baselines and the champion on the same holdout.",
    )


def promote_tuned_model(
    context: dg.AssetExecutionContext,
    registry: MlflowRegistry,
    model_name: str,
    tuned: TunedModel,
    score_model: Callable[[str], float],
    baselines: dict[str, float],
) -> tuple[PromotionOutcome, dict[str, Any]]:
    """The champion step of every pipeline: score challenger and champion on today's holdout, then decide.

    `score_model(model_uri)` scores any logged or registered model on the holdout rebuilt from the
    warehouse in this run, so both scores (and the baselines) come from the same data even when the
    search ran in another run, on another machine, before new data arrived. Returns the outcome and
    the asset metadata (a pipeline may add its own view of the scores).
    """
    challenger = Challenger(
        model_uri=tuned.model_uri,
        run_id=tuned.run_id,
        experiment_id=tuned.experiment_id,
        score=score_model(tuned.model_uri),
        baselines=baselines,
        tags={
            tuned.metric.replace("test_", "val_", 1): round(tuned.val_score, 4),
            "family": tuned.family,
            "dagster_run_id": context.run_id,
            **{key: value for key, value in tuned.details.items() if isinstance(value, int | float)},
        },
    )
    outcome = promote_if_better(
        registry,
        model_name,
        challenger,
        rescore_champion=lambda version: score_model(f"models:/{model_name}/{version}"),
        metric=tuned.metric,
    )
    context.log.info(f"{model_name} v{outcome.registered_version}: {outcome.decision.reason}")
    metadata = outcome.metadata(registry, challenger, model_name, tuned.metric)
    metadata.update(
        {
            key: dg.MetadataValue.json(value) if isinstance(value, list | dict) else value
            for key, value in tuned.details.items()
        }
    )
    return outcome, metadata
