"""Register a challenger and move `champion` only if it wins: the step every model family shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dagster as dg

from mlops_assets.constants import CHAMPION_ALIAS
from mlops_assets.promotion.decision import PromotionDecision, decide_promotion
from mlops_assets.resources.mlflow_registry import MlflowRegistry, TrackingServerUnavailable


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

    def metadata(self, registry: MlflowRegistry, challenger: Challenger, model_name: str, metric: str) -> dict[str, Any]:
        """What the Dagster UI shows for the promotion step."""
        decision = self.decision
        return {
            "decision": "promoted" if decision.promote else "rejected",
            "reason": decision.reason,
            "registered_version": int(self.registered_version),
            "champion_version_before": int(self.champion_before) if self.champion_before else None,
            "champion_version": int(self.champion_after) if self.champion_after else None,
            f"challenger_{metric}": round(decision.challenger_score, 4),
            f"champion_{metric}_same_holdout": round(decision.champion_score, 4) if decision.champion_score is not None else None,
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
