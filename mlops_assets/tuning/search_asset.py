"""The decorator every `*_tuned_model` asset shares: what makes a search asset a search asset."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import dagster as dg

from mlops_assets.constants import SEARCH_POOL
from mlops_assets.resources.tuned_model_store import TUNED_MODEL_IO_MANAGER


def search_asset(
    *, group_name: str, deps: Sequence[Any], owners: list[str], description: str
) -> Callable[..., dg.AssetsDefinition]:
    """`@dg.asset` for a Ray Tune search: output kept in MLflow, one search at a time, eager automation.

    The output (a `TunedModel`) goes to the search's MLflow run, so the champion step can run in
    another run on another machine; the pool (limit 1 in dagster.yaml) keeps an automation tick
    and a schedule from running two searches on the same cores or cluster.
    """
    return dg.asset(
        group_name=group_name,
        deps=deps,
        io_manager_key=TUNED_MODEL_IO_MANAGER,
        pool=SEARCH_POOL,
        automation_condition=dg.AutomationCondition.eager(),
        kinds={"ray", "mlflow", "scikitlearn"},
        owners=owners,
        description=description,
    )
