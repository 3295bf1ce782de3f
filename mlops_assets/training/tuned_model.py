"""What the search hands to promotion: where the model is and how it scored."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TunedModel:
    run_id: str
    experiment_id: str
    model_uri: str
    config: dict[str, Any]
    val_mae: float
    test_mae: float
    test_per_horizon_mae: list[float]
    baselines: dict[str, float] = field(default_factory=dict)
    trials: int = 0
    search_seconds: float = 0.0
