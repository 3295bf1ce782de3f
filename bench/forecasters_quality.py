"""Benchmark: does validation-based selection over `SEARCH_SPACE` give a good forecaster?

Run: `.venv/bin/python bench/forecasters_quality.py [--trials N] [--seeds S] [--workers W]`.
Writes bench/results/forecasters_quality.md.

Protocol (the training pipeline's): random search over `SEARCH_SPACE` (fixed seed, plain loop,
each trial fitted on train and scored on validation), the trial with the lowest validation MAE
is refitted on train+validation and scored once on test. The test split chooses nothing; the
test MAE of every trial's train-only fit is printed for information only. The search is repeated
with `--seeds` seeds to show how much the outcome depends on which configs were drawn.
Target: selected model's refit test MAE <= 2.2 C on the JFK 2013 sample; fits of a few seconds.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from ray.tune.search.sample import Domain

from mlops_assets.atmos.cleaning import clean_observations
from mlops_assets.atmos.dataset import TrainingWindows, build_training_windows, concat_windows
from mlops_assets.atmos.families import FAMILIES, build_forecaster, family_params
from mlops_assets.atmos.metrics import baseline_maes, mae, per_horizon_mae, persistence_forecast
from mlops_assets.atmos.search import DEFAULT_NUM_SAMPLES, SEARCH_SPACE
from mlops_assets.atmos.source import load_sample_observations

RESULTS = Path(__file__).parent / "results" / "forecasters_quality.md"
STATION = "JFK"
TARGET = 2.2

_WINDOWS: TrainingWindows | None = None


def windows() -> TrainingWindows:
    global _WINDOWS
    if _WINDOWS is None:
        series, _ = clean_observations(load_sample_observations(STATION))
        _WINDOWS = build_training_windows(series)
    return _WINDOWS


def sample_configs(space: dict[str, Any], n: int, seed: int) -> list[dict[str, Any]]:
    """`n` points of a Ray Tune param space, drawn with a fixed seed (what random search does)."""
    rng = np.random.RandomState(seed)
    configs = []
    for _ in range(n):
        config = {}
        for key, value in space.items():
            config[key] = value.sample(random_state=rng) if isinstance(value, Domain) else value
            if isinstance(config[key], np.generic):
                config[key] = config[key].item()
        configs.append(family_params(config))
    return configs


def key(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True)


def evaluate(config: dict[str, Any]) -> dict[str, Any]:
    """Fit on train; validation MAE (used for selection), test MAE (reported only), fit seconds."""
    w = windows()
    model, spec = build_forecaster(config, w.covariates)
    began = time.perf_counter()
    model.fit(w.train.features(spec), w.train.targets)
    seconds = time.perf_counter() - began
    return {
        "config": config,
        "val": mae(model.predict(w.validation.features(spec)), w.validation.targets),
        "test_train_only": mae(model.predict(w.test.features(spec)), w.test.targets),
        "fit_s": seconds,
    }


def refit(config: dict[str, Any]) -> dict[str, Any]:
    """Fit on train+validation, score on test: what the pipeline does with the selected config."""
    w = windows()
    model, spec = build_forecaster(config, w.covariates)
    both = concat_windows(w.train, w.validation)
    began = time.perf_counter()
    model.fit(both.features(spec), both.targets)
    seconds = time.perf_counter() - began
    predictions = model.predict(w.test.features(spec))
    return {
        "test": mae(predictions, w.test.targets),
        "per_horizon": per_horizon_mae(predictions, w.test.targets),
        "fit_s": seconds,
    }


def describe(config: dict[str, Any]) -> str:
    def fmt(value: Any) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    return ", ".join(f"{k}={fmt(v)}" for k, v in config.items() if k != "family")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=DEFAULT_NUM_SAMPLES)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    w = windows()
    searches = {seed: sample_configs(SEARCH_SPACE, args.trials, seed) for seed in range(args.seeds)}
    unique = {key(c): c for configs in searches.values() for c in configs}
    began = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        results = dict(zip(unique, pool.map(evaluate, unique.values()), strict=True))
        search_seconds = time.perf_counter() - began
        # Selected trial of each search, and the best trial of each family in the first search.
        selected = {
            seed: min((results[key(c)] for c in configs), key=lambda r: r["val"]) for seed, configs in searches.items()
        }
        first = [results[key(c)] for c in searches[0]]
        family_best = {
            family: min(trials, key=lambda r: r["val"])
            for family in FAMILIES
            if (trials := [r for r in first if r["config"]["family"] == family])
        }
        to_refit = {key(r["config"]): r["config"] for r in [*selected.values(), *family_best.values()]}
        refits = dict(zip(to_refit, pool.map(refit, to_refit.values()), strict=True))

    base_val, base_test = baseline_maes(w.validation), baseline_maes(w.test)
    persistence_h = per_horizon_mae(persistence_forecast(w.test), w.test.targets)
    chosen = selected[0]
    chosen_refit = refits[key(chosen["config"])]
    fit_times = [r["fit_s"] for r in results.values()]

    lines = [
        f"# Forecaster selection on the sample ({STATION} 2013): validation picks, test checks",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        "OMP_NUM_THREADS=1 per process. "
        f"Command: `.venv/bin/python bench/forecasters_quality.py --trials {args.trials} --seeds {args.seeds} "
        f"--workers {args.workers}`.",
        "",
        f"Windows (72 h -> 24 h, stride 1): train {len(w.train)}, validation {len(w.validation)}, test {len(w.test)}; "
        f"covariates {', '.join(w.covariates)}.",
        *[f"- {name}: {span}" for name, span in w.boundaries.items()],
        "",
        f"Protocol: random search of {args.trials} trials over `SEARCH_SPACE` (seed 0), each fitted on train and "
        "scored on validation; the lowest validation MAE is refitted on train+validation and scored on test. "
        "MAE in degrees C, averaged over the 24 lead hours.",
        "",
        "## Baselines",
        "",
        "| baseline | validation MAE | test MAE |",
        "|---|---|---|",
        *[f"| {name} | {base_val[name]:.3f} | {base_test[name]:.3f} |" for name in base_test],
        "",
        "## Best trial of each family (search seed 0)",
        "",
        "Fit seconds: the train fit, one thread per worker, the workers sharing the cores (alone a fit is up to ~2x "
        "faster). Test (train only) is not used for anything.",
        "",
        "| family | trials | best val MAE | test MAE, train only | test MAE, refit train+val | fit s | "
        "hyperparameters |",
        "|---|---|---|---|---|---|---|",
    ]
    for family, best in sorted(family_best.items(), key=lambda item: item[1]["val"]):
        n = sum(1 for r in first if r["config"]["family"] == family)
        rf = refits[key(best["config"])]
        lines.append(
            f"| {family} | {n} | {best['val']:.3f} | {best['test_train_only']:.3f} | {rf['test']:.3f} | "
            f"{best['fit_s']:.1f} | {describe(best['config'])} |"
        )
    verdict = "meets" if chosen_refit["test"] <= TARGET else "misses"
    lines += [
        "",
        "## Selected model",
        "",
        f"`{chosen['config']['family']}` ({describe(chosen['config'])}): validation MAE {chosen['val']:.3f}, "
        f"**test MAE after refit {chosen_refit['test']:.3f}** ({verdict} the <= {TARGET} target; persistence "
        f"{base_test['persistence']:.3f}). Refit took {chosen_refit['fit_s']:.1f} s.",
        "",
        "Per lead hour (test, C):",
        "",
        "| lead h | " + " | ".join(str(h + 1) for h in range(len(persistence_h))) + " |",
        "|---|" + "---|" * len(persistence_h),
        "| selected | " + " | ".join(f"{v:.2f}" for v in chosen_refit["per_horizon"]) + " |",
        "| persistence | " + " | ".join(f"{v:.2f}" for v in persistence_h) + " |",
        "",
        "## Does the outcome depend on the draw? (same protocol, other seeds)",
        "",
        "| search seed | selected family | val MAE | test MAE, refit | hyperparameters |",
        "|---|---|---|---|---|",
    ]
    for seed, best in selected.items():
        rf = refits[key(best["config"])]
        lines.append(
            f"| {seed} | {best['config']['family']} | {best['val']:.3f} | {rf['test']:.3f} | "
            f"{describe(best['config'])} |"
        )
    lines += [
        "",
        f"{len(unique)} distinct trials in all searches: {search_seconds:.0f} s on {args.workers} workers; "
        f"fit seconds median {np.median(fit_times):.1f}, max {max(fit_times):.1f}.",
        "",
        "## All trials of search seed 0 (sorted by validation MAE)",
        "",
        "| family | val MAE | test MAE, train only | fit s | hyperparameters |",
        "|---|---|---|---|---|",
        *[
            f"| {r['config']['family']} | {r['val']:.3f} | {r['test_train_only']:.3f} | {r['fit_s']:.1f} | "
            f"{describe(r['config'])} |"
            for r in sorted(first, key=lambda r: r["val"])
        ],
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
