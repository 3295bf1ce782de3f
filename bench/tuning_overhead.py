"""Benchmark: the forecaster search under Ray Tune against the same trials in a plain loop.

Run: `.venv/bin/python bench/tuning_overhead.py [--trials 12]`; writes
bench/results/tuning_overhead.md. Both sides fit the same configurations (sampled once from
`SEARCH_SPACE` with a fixed seed) on the sample's windows with one thread per fit. Ray runs them
as the pipeline does (2 concurrent trials, `reuse_actors=True`, ASHA, each trial logged to a
SQLite MLflow store); the loop fits them one after another and logs nothing. Measured in one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow
import ray
from ray.tune.search.sample import Domain
from threadpoolctl import threadpool_limits

from mlops_assets.atmos.cleaning import clean_observations
from mlops_assets.atmos.dataset import build_training_windows
from mlops_assets.atmos.families import build_forecaster
from mlops_assets.atmos.metrics import mae
from mlops_assets.atmos.search import SEARCH_SPACE, TRIAL_ITERATIONS, forecaster_trial
from mlops_assets.atmos.source import load_sample_observations
from mlops_assets.tuning.runner import TRIAL_ENV, SearchSettings, run_search

RESULTS = Path(__file__).parent / "results" / "tuning_overhead.md"


def sample_configs(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    configs = []
    for _ in range(count):
        config = {}
        for key, value in SEARCH_SPACE.items():
            config[key] = value.sample(random_state=rng.randint(0, 2**31 - 1)) if isinstance(value, Domain) else value
        configs.append({k: (v.item() if hasattr(v, "item") else v) for k, v in config.items()})
    return configs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=12)
    args = parser.parse_args()
    series, _ = clean_observations(load_sample_observations("JFK"))
    windows = build_training_windows(series)
    configs = sample_configs(args.trials, seed=0)

    began = time.perf_counter()
    loop_scores = []
    with threadpool_limits(1):
        for config in configs:
            model, spec = build_forecaster(config, windows.covariates)
            model.fit(windows.train.features(spec), windows.train.targets)
            loop_scores.append(mae(model.predict(windows.validation.features(spec)), windows.validation.targets))
    loop_seconds = time.perf_counter() - began

    with tempfile.TemporaryDirectory() as folder:
        uri = f"sqlite:///{folder}/mlflow.db"
        mlflow.set_tracking_uri(uri)
        experiment = mlflow.set_experiment("bench")
        began = time.perf_counter()
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            runtime_env={"env_vars": TRIAL_ENV},
            log_to_driver=False,
        )
        ray_start = time.perf_counter() - began
        with mlflow.start_run() as parent:
            search_began = time.perf_counter()
            outcome = run_search(
                forecaster_trial,
                SEARCH_SPACE,
                SearchSettings(num_samples=len(configs), max_iterations=TRIAL_ITERATIONS),
                metric="val_mae",
                tracking_uri=uri,
                experiment_name=experiment.name,
                parent_run_id=parent.info.run_id,
                run_tags={},
                trainable_kwargs={"windows": windows},
                points_to_evaluate=configs,
            )
            search_seconds = time.perf_counter() - search_began
        ray.shutdown()

    finished = sum("fit_seconds" in trial.metrics for trial in outcome.trials)
    lines = [
        f"# Forecaster search: Ray Tune vs a plain loop ({len(configs)} identical trials)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}. "
        f"Command: `.venv/bin/python bench/tuning_overhead.py --trials {args.trials}`.",
        "",
        "| run | wall seconds | notes |",
        "|---|---|---|",
        f"| plain loop, 1 process, 1 thread | {loop_seconds:.1f} | no logging; best val MAE {min(loop_scores):.3f} |",
        f"| Ray Tune search, 2 concurrent trials | {search_seconds:.1f} | ASHA stopped "
        f"{len(outcome.trials) - finished} of "
        f"{len(outcome.trials)} early; every trial an MLflow run; best val MAE {outcome.best.metrics['val_mae']:.3f} |",
        f"| `ray.init` (once per search in the pipeline) | {ray_start:.1f} | |",
        "",
        f"Ray / loop: **{search_seconds / loop_seconds:.2f}x** for the search, "
        f"{(search_seconds + ray_start) / loop_seconds:.2f}x including `ray.init`.",
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
