"""A Ray Tune search whose every trial is an MLflow run nested under one parent run.

Generic over the model: a pipeline passes a trainable (which calls `ray.tune.report`), a param
space and the metric to minimise. Shared by the forecasting and insurance pipelines.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import mlflow
import ray
from ray import tune
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune import Callback
from ray.tune.logger import JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

#: Environment of every trial: one BLAS/OpenMP thread per trial, or two trials on two cores
#: oversubscribe and a single HistGradientBoosting fit takes 100x longer.
TRIAL_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}

#: Tune settings that Ray 2.x reads only from the environment of the process running the Tune loop
#: (`ray.tune.utils.callback._create_default_callbacks`, `ray.tune.experimental.output`).
#: Results go to MLflow, so Tune's automatic CSV and TensorBoard files per trial would only be
#: written to a folder deleted afterwards (they cost more than half of the search time on small
#: fits); the new console output prints a table and a results path we delete.
TUNE_ENV = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "RAY_AIR_NEW_OUTPUT": "0"}

#: Tags on each trial's MLflow run saying where the trial ran, recorded from inside the trial.
NODE_ID_TAG = "ray.node_id"
HOSTNAME_TAG = "ray.hostname"

#: Port of a `ray://` address without one (the Ray Client server's default).
RAY_CLIENT_DEFAULT_PORT = 10001
#: How long a cluster address may take to accept a TCP connection before the search fails.
CONNECT_TIMEOUT_SECONDS = 10.0


class RayClusterUnreachable(RuntimeError):
    """The configured Ray address does not answer: another attempt will not fix the configuration."""


@dataclass(frozen=True)
class SearchSettings:
    """How big a search is and where it runs."""

    num_samples: int
    max_concurrent: int = 2
    seed: int = 0
    #: None: a fresh local Ray with `num_cpus`; else an existing cluster, `host:port` (GCS) or
    #: `ray://host:port` (Ray Client, the driver's Tune loop then runs on the cluster).
    ray_address: str | None = None
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


def _address_endpoint(address: str) -> tuple[str, int]:
    """Host and port of `host:port` or `ray://host[:port]`; a clear error for anything else."""
    parsed = urlsplit(address if "://" in address else f"gcs://{address}")
    if parsed.scheme not in ("gcs", "ray") or not parsed.hostname:
        raise RayClusterUnreachable(f"Ray address {address!r} is neither host:port nor ray://host:port (RAY_ADDRESS)")
    try:
        port = parsed.port
    except ValueError as error:
        raise RayClusterUnreachable(f"Ray address {address!r} has an invalid port: {error}") from error
    if port is None:
        if parsed.scheme != "ray":
            raise RayClusterUnreachable(f"Ray address {address!r} has no port (expected host:port, e.g. ray-head:6379)")
        port = RAY_CLIENT_DEFAULT_PORT
    return parsed.hostname, port


def _check_reachable(address: str) -> None:
    """Fail in seconds when nothing listens at the address: `ray.init` itself retries for minutes."""
    if address == "auto":  # Ray finds the cluster started on this machine; nothing to probe
        return
    host, port = _address_endpoint(address)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_SECONDS):
            pass
    except OSError as error:
        raise RayClusterUnreachable(f"Ray cluster at {address} is not reachable: {error}") from error


def _connect_ray(settings: SearchSettings) -> bool:
    """Connect to Ray; True when this call connected (and so must disconnect or shut down).

    A Ray already initialised in this process (tests and benchmarks share one) is used as is.
    Without an address the search always starts its own local Ray (`address="local"`): a bare
    `ray.init()` would join whatever cluster `ray start` left running on the machine.
    """
    if ray.is_initialized():
        return False
    runtime_env = {"env_vars": {**TRIAL_ENV, **TUNE_ENV}}
    if settings.ray_address:
        _check_reachable(settings.ray_address)
        try:
            ray.init(address=settings.ray_address, runtime_env=runtime_env, log_to_driver=False)
        except Exception as error:
            raise RayClusterUnreachable(
                f"could not connect to the Ray cluster at {settings.ray_address}: {error}"
            ) from error
    else:
        ray.init(
            address="local",
            num_cpus=settings.num_cpus,
            include_dashboard=False,
            runtime_env=runtime_env,
            log_to_driver=False,
            configure_logging=False,
        )
    return True


@contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of the block, then restore the previous ones.

    The one place library code changes the process environment, and only for TUNE_ENV: Ray
    2.x has no `Tuner`/`RunConfig`/`TuneConfig` parameter for either variable. It reads
    `TUNE_DISABLE_AUTO_CALLBACK_LOGGERS` only from `os.environ` in
    `ray.tune.utils.callback._create_default_callbacks` (which adds the CSV and TensorBoard loggers
    unless it is "1"), and `RAY_AIR_NEW_OUTPUT` only in `ray.tune.experimental.output.get_air_verbosity`
    (`verbose=0` still selects the new console reporter unless it is "0"). Both are read in the
    process running the Tune loop: `runtime_env` sets them only where Ray starts that loop itself
    (a `ray://` address); a local loop runs in this process. The previous values come back when
    the search ends.
    """
    previous = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def record_placement(trainable: Callable[..., None]) -> Callable[..., None]:
    """Wrap a function trainable so its first report also says which Ray node and host ran it.

    The node id and hostname are read inside the trial (so they are the worker's, not the
    driver's) and ride along in the first result as strings; MLflow logs only numbers as metrics,
    and `_PlacementTaggingMLflowCallback` turns them into tags of the trial's run. Works for any
    trainable that reports with `ray.tune.report` (or `ray.train.report`), without changing it.
    """

    @functools.wraps(trainable)
    def trial(config: dict[str, Any], **kwargs: Any) -> None:
        # `ray.tune.report` forwards to this per-trial session object (Ray 2.x); wrapping the
        # bound method of this trial's session, and only for this call, leaves Ray untouched.
        from ray.train._internal.session import get_session

        session = get_session()
        if session is None:  # called outside Tune (a plain function call): nothing to record
            trainable(config, **kwargs)
            return
        placement = {NODE_ID_TAG: ray.get_runtime_context().get_node_id(), HOSTNAME_TAG: socket.gethostname()}
        original_report = session.report
        pending = dict(placement)

        def report(metrics: dict[str, Any], *args: Any, **report_kwargs: Any) -> None:
            extra = dict(pending)
            pending.clear()
            original_report({**metrics, **extra}, *args, **report_kwargs)

        session.report = report  # type: ignore[method-assign]
        try:
            trainable(config, **kwargs)
        finally:
            del session.report  # back to the class's method

    return trial


class _PlacementTaggingMLflowCallback(MLflowLoggerCallback):
    """`MLflowLoggerCallback` that also tags each trial's run with the node and host the trial ran on."""

    def log_trial_result(self, iteration: int, trial: Any, result: dict[str, Any]) -> None:
        tags = {key: str(result[key]) for key in (NODE_ID_TAG, HOSTNAME_TAG) if key in result}
        if tags:
            client = mlflow.MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)
            run_id = self._trial_runs[trial]
            for key, value in tags.items():
                client.set_tag(run_id, key, value)
        super().log_trial_result(iteration, trial, {k: v for k, v in result.items() if k not in tags})


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
    Each trial's run is tagged `ray.node_id` and `ray.hostname`. With a Ray Client address
    (`ray://`) the Tune loop, and so the MLflow logging, runs on the cluster: `tracking_uri` must
    be reachable from there. A cluster this call connected to is only disconnected, never stopped.
    """
    connected = _connect_ray(settings)
    storage = tempfile.mkdtemp(prefix="mlops-tune-")
    began = time.perf_counter()
    try:
        searcher = ConcurrencyLimiter(
            OptunaSearch(metric=metric, mode="min", seed=settings.seed, points_to_evaluate=points_to_evaluate),
            max_concurrent=settings.max_concurrent,
        )
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            metric=metric,
            mode="min",
            max_t=max(settings.max_iterations, 1),
            grace_period=1,
        )
        # The store is passed explicitly. (Ray's callback also points MLflow's process-wide URI
        # at it, in `ray.air._internal.mlflow.setup_mlflow`; nothing in this project reads that.)
        callbacks: list[Callback] = [
            _PlacementTaggingMLflowCallback(
                tracking_uri=tracking_uri,
                registry_uri=tracking_uri,
                experiment_name=experiment_name,
                tags={"mlflow.parentRunId": parent_run_id, **run_tags},
                save_artifact=False,
            ),
            # The one Tune file kept: the result grid reads each trial's metrics back from
            # result.json and logs a FileNotFoundError per trial when it is missing.
            JsonLoggerCallback(),
        ]
        tuner = tune.Tuner(
            tune.with_resources(
                tune.with_parameters(record_placement(trainable), **(trainable_kwargs or {})), {"cpu": 1}
            ),
            param_space=param_space,
            tune_config=tune.TuneConfig(
                search_alg=searcher, scheduler=scheduler, num_samples=settings.num_samples, reuse_actors=True
            ),
            run_config=tune.RunConfig(
                name="search", storage_path=storage, callbacks=callbacks, verbose=0, log_to_file=False
            ),
        )
        with _environment(TUNE_ENV):
            results = tuner.fit()
        wall = time.perf_counter() - began
        every_result = [results[index] for index in range(len(results))]  # ResultGrid declares no __iter__
        trials = [
            TrialSummary(result.path.rsplit("/", 1)[-1], dict(result.config or {}), _numbers(result.metrics or {}))
            for result in every_result
            if result.error is None and result.metrics and metric in result.metrics
        ]
        if not trials:
            first_error = next((result.error for result in every_result if result.error is not None), None)
            raise RuntimeError(f"every trial of the search failed; first error: {first_error}")
        best = results.get_best_result(metric=metric, mode="min", scope="last")
        best_summary = TrialSummary(best.path.rsplit("/", 1)[-1], dict(best.config or {}), _numbers(best.metrics or {}))
        return SearchOutcome(best_summary, trials, wall, errored_trials=results.num_errors)
    finally:
        shutil.rmtree(storage, ignore_errors=True)
        if connected:
            ray.shutdown()


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
