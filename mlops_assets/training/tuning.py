"""A Ray Tune search whose every trial is an MLflow run nested under one parent run.

Generic over the model: a pipeline passes a trainable (which calls `ray.tune.report`), a param
space and the metric to minimise. Shared by the forecasting and insurance pipelines.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
from ray import tune
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

#: Environment of every trial: one BLAS/OpenMP thread per trial, or two trials on two cores
#: oversubscribe and a single HistGradientBoosting fit takes 100x longer.
TRIAL_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}


@dataclass(frozen=True)
class SearchSettings:
    """How big a search is and where it runs."""

    num_samples: int
    max_concurrent: int = 2
    seed: int = 0
    ray_address: str | None = None  # None: a local Ray with `num_cpus`; else an existing cluster
    num_cpus: int = 2
    max_iterations: int = 1  # >1 when trials report intermediate scores (ASHA can stop them)


@dataclass(frozen=True)
class TrialSummary:
    trial_id: str
    config: dict[str, Any]
    metrics: dict[str, float]


@dataclass(frozen=True)
class SearchOutcome:
    best: TrialSummary
    trials: list[TrialSummary]
    wall_seconds: float
    errored_trials: int


def _start_ray(settings: SearchSettings) -> bool:
    """Connect to Ray; True when this call started a local instance (and must shut it down)."""
    if ray.is_initialized():
        return False
    if settings.ray_address:
        ray.init(address=settings.ray_address, runtime_env={"env_vars": TRIAL_ENV}, log_to_driver=False)
    else:
        ray.init(
            num_cpus=settings.num_cpus,
            include_dashboard=False,
            runtime_env={"env_vars": TRIAL_ENV},
            log_to_driver=False,
            configure_logging=False,
        )
    return True


def run_search(
    trainable: Callable[..., None],
    param_space: dict[str, Any],
    settings: SearchSettings,
    *,
    metric: str,
    tracking_uri: str,
    experiment_name: str,
    parent_run_id: str,
    run_tags: dict[str, str],
    trainable_kwargs: dict[str, Any] | None = None,
    points_to_evaluate: list[dict[str, Any]] | None = None,
) -> SearchOutcome:
    """Run the search; every trial is logged to MLflow as a child of `parent_run_id`.

    `points_to_evaluate` are tried first (benchmarks use them to run a fixed list of trials).
    """
    for key, value in TRIAL_ENV.items():
        os.environ.setdefault(key, value)
    # Tune's newer console output prints a table and a results path we delete; keep logs quiet.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Results go to MLflow; Tune's own JSON/CSV/TensorBoard files per trial would be written to a
    # folder deleted afterwards, and cost more than half of the search time on small fits.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    started_ray = _start_ray(settings)
    storage = tempfile.mkdtemp(prefix="mlops-tune-")
    began = time.perf_counter()
    try:
        searcher = ConcurrencyLimiter(
            OptunaSearch(metric=metric, mode="min", seed=settings.seed, points_to_evaluate=points_to_evaluate),
            max_concurrent=settings.max_concurrent,
        )
        scheduler = ASHAScheduler(
            time_attr="training_iteration", metric=metric, mode="min", max_t=max(settings.max_iterations, 1), grace_period=1
        )
        callback = MLflowLoggerCallback(
            tracking_uri=tracking_uri,
            registry_uri=tracking_uri,
            experiment_name=experiment_name,
            tags={"mlflow.parentRunId": parent_run_id, **run_tags},
            save_artifact=False,
        )
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(trainable, **(trainable_kwargs or {})), {"cpu": 1}),
            param_space=param_space,
            tune_config=tune.TuneConfig(
                search_alg=searcher, scheduler=scheduler, num_samples=settings.num_samples, reuse_actors=True
            ),
            run_config=tune.RunConfig(
                name="search", storage_path=storage, callbacks=[callback], verbose=0, log_to_file=False
            ),
        )
        results = tuner.fit()
        wall = time.perf_counter() - began
        trials = [
            TrialSummary(result.path.rsplit("/", 1)[-1], dict(result.config or {}), _numbers(result.metrics or {}))
            for result in results
            if result.error is None and result.metrics and metric in result.metrics
        ]
        if not trials:
            first_error = next((result.error for result in results if result.error is not None), None)
            raise RuntimeError(f"every trial of the search failed; first error: {first_error}")
        best = results.get_best_result(metric=metric, mode="min", scope="last")
        best_summary = TrialSummary(best.path.rsplit("/", 1)[-1], dict(best.config or {}), _numbers(best.metrics or {}))
        return SearchOutcome(best_summary, trials, wall, errored_trials=results.num_errors)
    finally:
        shutil.rmtree(storage, ignore_errors=True)
        if started_ray:
            ray.shutdown()


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
