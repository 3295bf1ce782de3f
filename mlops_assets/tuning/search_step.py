"""The body every `*_tuned_model` asset shares: parent run, Ray Tune search, refit logged to that run.

A pipeline says what it searches (`Search`) and how it refits the best configuration (a function
returning a `Refit`); opening the run, nesting the trials under it, logging the refit's params,
scores, files and model, the asset metadata and the `TunedModel` are the same for every model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import numpy as np
from matplotlib.figure import Figure

from mlops_assets.ml.compiled_parity import log_compiled_parity
from mlops_assets.plots import figure_markdown
from mlops_assets.resources.mlflow_registry import MlflowRegistry
from mlops_assets.resources.mlflow_run import MlflowRun
from mlops_assets.tuning.runner import SearchOutcome, SearchSettings, run_search
from mlops_assets.tuning.tuned_model import TunedModel


@dataclass(frozen=True)
class Search:
    """What a pipeline searches: where its runs go, the trial with its data and space, the score to minimise."""

    experiment: str
    #: `pipeline` tag of every trial's run.
    pipeline: str
    trainable: Callable[..., None]
    param_space: dict[str, Any]
    settings: SearchSettings
    #: Validation score the trials report (lower is better), e.g. `val_mae`.
    metric: str
    trainable_kwargs: dict[str, Any]
    points_to_evaluate: list[dict[str, Any]] | None = None
    #: Extra tags of the parent run (e.g. the station).
    parent_tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Refit:
    """The best configuration refit on all training data, scored once on the holdout, and what to log with it."""

    model: Any
    #: Name of the holdout score (lower is better), e.g. `test_mae`.
    metric: str
    test_score: float
    baselines: dict[str, float]
    #: Logged to the parent run before the model (so the logged model shows them too).
    metrics: dict[str, float]
    input_example: Any
    skops_trusted_types: list[str]
    #: `TunedModel.details`: JSON-able numbers shown with the model.
    details: dict[str, Any] = field(default_factory=dict)
    #: This pipeline's own asset metadata.
    metadata: dict[str, Any] = field(default_factory=dict)
    #: MLflow model metadata (e.g. the forecaster's feature spec).
    model_metadata: dict[str, Any] | None = None
    #: Features the compiled trees are proved equal on; None: the model has no trees to compile.
    parity_holdout: Any = None
    #: JSON files logged to the parent run.
    json_files: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Plots logged to the parent run as `<name>.png` and shown in the asset metadata.
    figures: dict[str, Figure] = field(default_factory=dict)


def plain_config(config: dict[str, Any]) -> dict[str, Any]:
    """Plain Python values: the TunedModel is stored as JSON in MLflow (NumPy scalars are not JSON)."""
    return {key: value.item() if isinstance(value, np.generic) else value for key, value in config.items()}


def tuned_model_from_search(
    context: dg.AssetExecutionContext,
    registry: MlflowRegistry,
    search: Search,
    refit: Callable[[SearchOutcome, dict[str, Any]], Refit],
) -> TunedModel:
    """Search with every trial nested under one parent run, refit the best config, log it there.

    `refit(outcome, best_config)` refits and scores; the parent run ends FAILED if anything raises.
    """
    asset = context.asset_key.to_user_string()
    tags = {"dagster_run_id": context.run_id, "dagster_asset": asset, **search.parent_tags}
    with registry.parent_run(search.experiment, f"{asset} {context.run_id[:8]}", tags) as run:
        outcome = run_search(
            search.trainable,
            search.param_space,
            search.settings,
            metric=search.metric,
            tracking_uri=registry.tracking_uri,
            experiment_name=search.experiment,
            parent_run_id=run.run_id,
            run_tags={"dagster_run_id": context.run_id, "pipeline": search.pipeline},
            trainable_kwargs=search.trainable_kwargs,
            points_to_evaluate=search.points_to_evaluate,
        )
        context.log.info(f"{len(outcome.trials)} trials in {outcome.wall_seconds:.1f} s; best {outcome.best.config}")
        best_config = plain_config(outcome.best.config)
        return _log_refit(context, registry, run, search.metric, outcome, best_config, refit(outcome, best_config))


def _log_refit(
    context: dg.AssetExecutionContext,
    registry: MlflowRegistry,
    run: MlflowRun,
    search_metric: str,
    outcome: SearchOutcome,
    config: dict[str, Any],
    refit: Refit,
) -> TunedModel:
    """Params, scores, files and the model to the parent run; the asset metadata; the TunedModel."""
    val_score = float(outcome.best.metrics[search_metric])
    run.log_params({f"best_{key}": value for key, value in config.items()})
    run.log_metrics(
        {
            f"best_{search_metric}": val_score,
            "search_seconds": outcome.wall_seconds,
            "trials": len(outcome.trials),
            refit.metric: refit.test_score,
            **{f"{refit.metric}_{name}": score for name, score in refit.baselines.items()},
            **refit.metrics,
        }
    )
    for artifact_file, data in refit.json_files.items():
        run.log_dict(data, artifact_file)
    model_info = run.log_sklearn_model(
        refit.model,
        input_example=refit.input_example,
        skops_trusted_types=refit.skops_trusted_types,
        metadata=refit.model_metadata,
    )
    parity = {} if refit.parity_holdout is None else log_compiled_parity(run, refit.model, refit.parity_holdout)
    plots = {}
    for name, figure in refit.figures.items():
        run.log_figure(figure, f"{name}.png")
        plots[name] = dg.MetadataValue.md(figure_markdown(figure, name))  # closes the figure
    tuned = TunedModel(
        run_id=run.run_id,
        experiment_id=run.experiment_id,
        model_uri=model_info.model_uri,
        family=str(config.get("family")),
        config=config,
        metric=refit.metric,
        val_score=val_score,
        test_score=refit.test_score,
        baselines=refit.baselines,
        details=refit.details,
        trials=len(outcome.trials),
        search_seconds=outcome.wall_seconds,
    )
    context.add_output_metadata(
        {
            "mlflow_run_id": run.run_id,
            "mlflow_run": dg.MetadataValue.url(registry.run_url(run.experiment_id, run.run_id)),
            "model_uri": model_info.model_uri,
            "family": tuned.family,
            "config": dg.MetadataValue.json(config),
            "trials": len(outcome.trials),
            "errored_trials": outcome.errored_trials,
            "search_seconds": round(outcome.wall_seconds, 1),
            **parity,
            **refit.metadata,
            **plots,
        }
    )
    return tuned
