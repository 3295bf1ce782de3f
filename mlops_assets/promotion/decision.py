"""The champion/challenger rule, shared by every model family (pure, lower score is better)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str
    challenger_score: float
    champion_score: float | None
    baselines: dict[str, float]


def decide_promotion(
    challenger_score: float, champion_score: float | None, baselines: dict[str, float]
) -> PromotionDecision:
    """Promote only a finite challenger that beats every baseline and, if there is one, the champion.

    Both scores must come from the same holdout; ties keep the champion (a new version must earn
    the swap, and swapping costs every serving pod a reload).
    """

    def decision(promote: bool, reason: str) -> PromotionDecision:
        return PromotionDecision(promote, reason, challenger_score, champion_score, dict(baselines))

    if not math.isfinite(challenger_score):
        return decision(False, f"challenger score {challenger_score} is not finite")
    for name, score in sorted(baselines.items()):
        if not challenger_score < score:
            return decision(False, f"challenger {challenger_score:.4f} does not beat the {name} baseline {score:.4f}")
    if champion_score is None:
        return decision(True, f"no champion yet; challenger {challenger_score:.4f} beats every baseline")
    if not challenger_score < champion_score:
        return decision(False, f"challenger {challenger_score:.4f} does not beat the champion {champion_score:.4f}")
    return decision(True, f"challenger {challenger_score:.4f} beats the champion {champion_score:.4f}")
