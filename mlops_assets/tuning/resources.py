"""How big the hyperparameter search is and where Ray runs (swap `search` to `quick` in tests)."""

from __future__ import annotations

from typing import Literal

import dagster as dg
from pydantic import Field

from mlops_assets.tuning.runner import SearchSettings


class TuningResource(dg.ConfigurableResource):
    """Settings of the Ray Tune searches; `ray_address` empty means a local Ray."""

    search: Literal["default", "quick"] = Field(default="default", description="search space size")
    num_samples: int = Field(default=0, description="trials; 0 means the search space's default")
    ray_address: str = Field(default="", description="Ray cluster address (RAY_ADDRESS); empty: local")
    num_cpus: int = Field(default=2, description="CPUs of the local Ray")
    seed: int = Field(default=0, description="seed of the search algorithm")

    def settings(self, default_samples: int, max_iterations: int = 1) -> SearchSettings:
        return SearchSettings(
            num_samples=self.num_samples or default_samples,
            max_concurrent=self.num_cpus,
            seed=self.seed,
            ray_address=self.ray_address or None,
            num_cpus=self.num_cpus,
            max_iterations=max_iterations,
        )
