"""Serving benchmark for `insurance_charges`: this service against `mlflow models serve`.

Run: `.venv/bin/python bench/serving/insurance.py [--duration 10]` (PUBLIC CSV: ../shared/data/
insurance.csv, or `--csv PATH`). Registers a gradient-boosting pipeline fitted on the public
dataset's seeded 80/20 training split as the champion of a throwaway SQLite store, starts both
servers on it and loads them with the same generator at concurrency 1, 8 and 64 (single rows;
mlflow is fed its recorded `serving_input_example.json`, a one-row `dataframe_split`). Writes
bench/results/serving_insurance.md. Goal: at least 5x mlflow serve's throughput at c=8.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parent)]

import mlflow  # noqa: E402
import pandas as pd  # noqa: E402
from loadgen import have_wrk  # noqa: E402
from run import HOST, PY, base_env, free_port, loads, request, start, stop, wait_http  # noqa: E402

from mlops_assets.insurance.dataset import validate_policies  # noqa: E402
from mlops_assets.insurance.families import FEATURES, SKOPS_TRUSTED_TYPES, build_insurance_model, split_policies  # noqa: E402

MODEL = "insurance_charges"
REPO = Path(__file__).resolve().parents[2]
POLICY = {"age": 19, "sex": "female", "bmi": 27.9, "children": 0, "smoker": "yes", "region": "southwest"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--csv", type=Path, default=REPO.parent / "shared" / "data" / "insurance.csv")
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    os.environ.update(MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    workdir = Path(tempfile.mkdtemp(prefix="insurance-bench-"))
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    policies = validate_policies(pd.read_csv(args.csv, dtype=str)).valid
    split = split_policies(policies)
    pipeline = build_insurance_model({"family": "gbm"}).fit(split.train[list(FEATURES)], split.train["charges"])
    example = split.test[list(FEATURES)].head(1)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            input_example=example,
            skops_trusted_types=SKOPS_TRUSTED_TYPES,
            signature=mlflow.models.infer_signature(example, pipeline.predict(example)),
        )
    version = mlflow.register_model(info.model_uri, MODEL).version
    mlflow.MlflowClient(uri).set_registered_model_alias(MODEL, "champion", version)
    mlflow_body = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{MODEL}/{version}/serving_input_example.json",
            dst_path=str(workdir),
            tracking_uri=uri,
        )
    ).read_bytes()
    our_body = json.dumps(
        {k: (v.item() if hasattr(v, "item") else v) for k, v in example.iloc[0].to_dict().items()}
    ).encode()

    env = base_env(uri)
    env["SERVING_MODELS"] = MODEL
    ours_port, mlflow_port = free_port(), free_port()
    servers = []
    try:
        ours = start("ours", [PY, "-m", "serving", "--port", str(ours_port), "--workers", "2"], env, ours_port, workdir)
        servers.append(ours)
        theirs = start(
            "mlflow-serve",
            [
                str(Path(PY).with_name("mlflow")),
                "models",
                "serve",
                "-m",
                f"models:/{MODEL}@champion",
                "--env-manager",
                "local",
                "-p",
                str(mlflow_port),
                "-h",
                HOST,
            ],
            base_env(uri),
            mlflow_port,
            workdir,
        )
        servers.append(theirs)
        wait_http(ours, "/ready")
        wait_http(theirs, "/ping")
        status, ours_answer = request(ours_port, "PUT", "/predict/insurance", our_body)
        theirs_status, theirs_answer = request(mlflow_port, "POST", "/invocations", mlflow_body)
        assert status == 200 and theirs_status == 200, (ours_answer, theirs_answer)
        same = abs(ours_answer["result"] - theirs_answer["predictions"][0]) < 1e-6
        tool = os.environ.get("BENCH_LOAD_TOOL") or ("wrk" if have_wrk() else "python")
        results = loads(
            {
                "this service (2 workers)": (ours_port, "PUT", "/predict/insurance", our_body),
                "mlflow models serve": (mlflow_port, "POST", "/invocations", mlflow_body),
            },
            args.duration,
            tool,
        )
    finally:
        for server in servers:
            stop(server)
    c8 = {name: next(r for r in rs if r.concurrency == 8).rps for name, rs in results.items()}
    ratio = c8["this service (2 workers)"] / c8["mlflow models serve"]
    lines = [
        "# Serving benchmark: insurance_charges",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; load generator: "
        f"{tool}, {args.duration:g} s per point. Command: `.venv/bin/python bench/serving/insurance.py`.",
        f"Model: HistGradientBoosting pipeline (absolute-error loss) on the public dataset's training split. "
        f"Same number from both servers: {same}.",
        "",
        "| server | concurrency | req/s | p50 ms | p99 ms | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, rs in results.items():
        for r in rs:
            lines.append(f"| {name} | {r.concurrency} | {r.rps:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} |")
    lines += ["", f"Throughput at c=8: **{ratio:.1f}x** `mlflow models serve` (goal: 5x).", ""]
    out = REPO / "bench" / "results" / "serving_insurance.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
