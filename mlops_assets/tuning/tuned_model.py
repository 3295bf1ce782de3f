"""What a search hands to promotion: where the logged model is and how it scored.

Every model pipeline returns one of these from its `*_tuned_model` asset. It is stored as JSON in
the search's MLflow parent run (see `resources/tuned_model_store.py`), so a later run on another
machine can load it with nothing shared but MLflow.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class TunedModel:
    """A challenger: the logged model, its scores (lower is better) and the baselines on the same holdout."""

    run_id: str
    experiment_id: str
    model_uri: str
    family: str
    config: dict[str, Any]
    #: Name of the score (e.g. `test_mae`, `test_error_rate`); lower is better.
    metric: str
    val_score: float
    test_score: float
    baselines: dict[str, float]
    #: Extra JSON-able numbers shown with the model (per-horizon errors, R^2, accuracy).
    details: dict[str, Any] = field(default_factory=dict)
    trials: int = 0
    search_seconds: float = 0.0

    def beats_baselines(self) -> bool:
        """Finite and strictly below every baseline: what the blocking checks require."""
        return math.isfinite(self.test_score) and all(self.test_score < score for score in self.baselines.values())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TunedModel:
        return cls(**data)
