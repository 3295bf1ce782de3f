"""The champion/challenger rule on its own: every outcome, ties and the order of the checks."""

from __future__ import annotations

import math

import pytest

from mlops_assets.promotion.decision import decide_promotion

BASELINES = {"persistence": 2.9, "seasonal_naive": 3.8}


@pytest.mark.parametrize("score", [math.nan, math.inf, -math.inf])
def test_a_non_finite_challenger_is_rejected_even_without_a_champion(score: float) -> None:
    decision = decide_promotion(score, None, BASELINES)
    assert not decision.promote and "not finite" in decision.reason


@pytest.mark.parametrize("score", [2.9, 3.0, 5.0])
def test_a_challenger_that_does_not_beat_every_baseline_is_rejected(score: float) -> None:
    decision = decide_promotion(score, 10.0, BASELINES)  # a worse champion does not rescue it
    assert not decision.promote and "persistence baseline" in decision.reason


def test_the_first_challenger_that_beats_the_baselines_is_promoted() -> None:
    decision = decide_promotion(2.1, None, BASELINES)
    assert decision.promote and "no champion yet" in decision.reason
    assert decision.champion_score is None and decision.baselines == BASELINES


@pytest.mark.parametrize("champion", [2.1, 2.0])
def test_a_tie_or_a_worse_challenger_keeps_the_champion(champion: float) -> None:
    decision = decide_promotion(2.1, champion, BASELINES)
    assert not decision.promote and "does not beat the champion" in decision.reason


def test_a_better_challenger_displaces_the_champion() -> None:
    decision = decide_promotion(2.05, 2.1, BASELINES)
    assert decision.promote and "beats the champion 2.1000" in decision.reason
    assert (decision.challenger_score, decision.champion_score) == (2.05, 2.1)


def test_no_baselines_means_only_the_champion_counts() -> None:
    assert decide_promotion(9.0, None, {}).promote
    assert not decide_promotion(9.0, 8.0, {}).promote
