"""What the prediction log costs the service (issue 13): the same champion served with
`SERVING_PREDICTION_LOG` on and off, and what happens when the warehouse is unreachable.

    .venv/bin/python bench/serving/prediction_log_overhead.py [--duration 10] [--rounds 3]
        [--unreachable-duration 25] [--no-postgres] [--out bench/results/prediction_log.md]

Registers a ridge forecaster on the bundled 2013 JFK windows (`run.build_store`, the serving
benchmark's store), then for each warehouse (a fresh SQLite file; a fresh PostgreSQL database on
127.0.0.1:5432 unless --no-postgres), after one unmeasured warm-up run, alternates `mlops-assets serve` with the log
off and on (off, on, on, off, ...),
`--rounds` times, c=8 closed loop for `--duration` s each, a fresh server and a fresh warehouse per
run. After each "on" run the server is stopped with SIGTERM (its lifespan flushes the queue) and
the rows of `served_forecasts` are compared with the 2xx answers the client counted. The client is
loadgen's Python client: it waits for the answer of every request it sent, so its count is exact
(wrk abandons the requests in flight when its time is up, which the server still answers and logs).
Last, one "on" run with WAREHOUSE_URL on a PostgreSQL port nothing listens on: every request must
still be answered 200 and the drops show in /metrics. All traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]

from loadgen import HOST, run_load  # noqa: E402
from run import MODEL, base_env, build_store, free_port, log, start, stop, wait_http  # noqa: E402

POSTGRES_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
#: Nothing listens on port 9 (discard): connecting is refused at once.
UNREACHABLE_URL = "postgresql+psycopg2://postgres@127.0.0.1:9/warehouse"
CONCURRENCY = 8
#: The window sent on every request: the 72 stored hours before this hour (UTC).
LAST_OBSERVED = "2013-11-20T12:00:00+00:00"


def request_body() -> bytes:
    """One past JFK window of the bundled sample, with its explicit `last_observed_at`."""
    import pandas as pd

    from mlops_assets.atmos.source import load_sample_observations

    sample = load_sample_observations("JFK")
    hourly = pd.Series(sample["tmp"].to_numpy(), index=pd.DatetimeIndex(sample["time"]))
    last = pd.Timestamp(LAST_OBSERVED)
    inputs = hourly.reindex(pd.date_range(end=last, periods=72, freq="h"))
    if inputs.isna().any():
        raise RuntimeError(f"the sample has gaps in the 72 hours before {last}")
    return json.dumps({"time_series": inputs.round(2).tolist(), "last_observed_at": LAST_OBSERVED}).encode()


def register_family(workdir: Path, family: str) -> tuple[str, str]:
    """A champion of one forecaster family (default hyperparameters, temperatures only) fitted on the
    training windows of the bundled JFK sample; returns the store URI and a description."""
    import mlflow
    import mlflow.models
    from mlflow.tracking import MlflowClient

    from mlops_assets.atmos.dataset import build_training_windows
    from mlops_assets.atmos.families import build_forecaster
    from mlops_assets.atmos.model_io import log_forecaster
    from mlops_assets.atmos.source import load_sample_observations
    from mlops_assets.resources.mlflow_run import MlflowRun

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    # Inferring pip requirements spawns an interpreter; the service does not read them.
    mlflow.models.infer_pip_requirements = lambda *a, fallback=None, **k: list(fallback or [])  # type: ignore[assignment]
    experiment = mlflow.create_experiment("prediction-log-bench", artifact_location=str(workdir / "artifacts"))
    windows = build_training_windows(load_sample_observations("JFK")[["time", "tmp"]])
    estimator, spec = build_forecaster({"family": family}, ())
    X = windows.train.features(spec)
    estimator.fit(X, windows.train.targets)
    mae = float(abs(estimator.predict(windows.test.features(spec)) - windows.test.targets).mean())
    with mlflow.start_run(experiment_id=experiment) as run:
        logged_to = MlflowRun.existing(mlflow.get_tracking_uri(), run.info.run_id)
        info = log_forecaster(logged_to, estimator, spec, X[:1])
    version = str(mlflow.register_model(info.model_uri, MODEL).version)
    MlflowClient(tracking_uri=uri).set_registered_model_alias(MODEL, "champion", version)
    describe = f"{family} ({type(estimator).__name__}, {X.shape[1]} features, test MAE {mae:.2f} °C), version {version}"
    log(f"registered {describe}")
    return uri, describe


def fresh_postgres() -> tuple[str, Any]:
    """A new database on the machine's PostgreSQL; returns its URL and a function dropping it."""
    import sqlalchemy as sa

    name = f"bench_predlog_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return sa.make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False), drop


def reset_table(url: str) -> None:
    """Start each run from an empty `served_forecasts` (PostgreSQL keeps one database per run set)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text("DROP TABLE IF EXISTS served_forecasts"))
    finally:
        engine.dispose()


def count_rows(url: str) -> int:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(sa.text("SELECT count(*) FROM served_forecasts")).scalar_one())
    finally:
        engine.dispose()


def metric_sums(port: int, names: tuple[str, ...]) -> dict[str, float]:
    """Each metric summed over its samples (one per worker and label) from /metrics."""
    connection = http.client.HTTPConnection(HOST, port, timeout=5)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    out: dict[str, float] = {}
    for name in names:
        out[name] = sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))
    for reason, value in re.findall(
        r'^serving_prediction_log_dropped_total\{[^}]*reason="(\w+)"[^}]*\} (\S+)$', text, re.M
    ):
        out[f"dropped[{reason}]"] = out.get(f"dropped[{reason}]", 0.0) + float(value)
    return out


def one_run(
    store_uri: str, body: bytes, workdir: Path, label: str, log_on: bool, warehouse: str, duration: float
) -> dict[str, Any]:
    """Serve, warm up, measure c=8 for `duration` s, read /metrics, stop (flush), count rows."""
    env = base_env(store_uri)
    env.update(SERVING_PREDICTION_LOG="on" if log_on else "off", WAREHOUSE_URL=warehouse, OMP_NUM_THREADS="1")
    port = free_port()
    cmd = [str(Path(sys.executable).with_name("mlops-assets")), "serve", "--port", str(port), "--workers", "2"]
    server = start(f"{label}-{'on' if log_on else 'off'}-{port}", cmd, env, port, workdir)
    try:
        wait_http(server, "/ready")
        warm = run_load(port, "PUT", f"/predict/{MODEL}", body, CONCURRENCY, 2, tool="python")
        load_before = os.getloadavg()[0]
        result = run_load(port, "PUT", f"/predict/{MODEL}", body, CONCURRENCY, duration, tool="python")
        load_after = os.getloadavg()[0]
        metrics = metric_sums(port, ("serving_prediction_log_written_total", "serving_prediction_log_dropped_total"))
    finally:
        stop(server)
    exit_code = server.process.returncode
    out: dict[str, Any] = {
        "label": label,
        "log": "on" if log_on else "off",
        "rps": result.rps,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "requests": result.requests,
        "errors": result.errors,
        "warmup_requests": warm.requests,
        "warmup_errors": warm.errors,
        "load": f"{load_before:.1f} -> {load_after:.1f}",
        "metrics": metrics,
        "exit_code": exit_code,
    }
    if log_on and warehouse != UNREACHABLE_URL:
        # Every request of the warm-up and the measured run was answered before the client moved on.
        out["answered_2xx"] = (warm.requests - warm.errors) + (result.requests - result.errors)
        out["rows"] = count_rows(warehouse)
    log(
        f"{label} log {out['log']}: {result.rps:.0f} req/s p50 {result.p50_ms:.2f} p99 {result.p99_ms:.2f} ms "
        f"errors {result.errors}, load {out['load']}"
        + (f", rows {out['rows']} / 2xx {out['answered_2xx']}" if "rows" in out else "")
    )
    return out


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Ratio of the medians (on / off) and the p99 difference of the medians."""
    on = [r for r in runs if r["log"] == "on"]
    off = [r for r in runs if r["log"] == "off"]
    rps_on, rps_off = statistics.median(r["rps"] for r in on), statistics.median(r["rps"] for r in off)
    p99_on, p99_off = statistics.median(r["p99_ms"] for r in on), statistics.median(r["p99_ms"] for r in off)
    return {
        "rps_on": rps_on,
        "rps_off": rps_off,
        "ratio": rps_on / rps_off,
        "p99_on": p99_on,
        "p99_off": p99_off,
        "p99_diff_ms": p99_on - p99_off,
        "rows_match": all(r["rows"] == r["answered_2xx"] for r in on),
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Prediction log overhead (issue 13)",
        "",
        f"Run {report['started']} on {report['machine']}; command `{report['command']}`.",
        f"Champion: {report['champion']}. Every request: PUT /predict/{MODEL}, 72 JFK hours before {LAST_OBSERVED}.",
        f"Client: loadgen's Python client (exact count of answers), c={CONCURRENCY} closed loop, "
        f"{report['duration_s']:.0f} s per run",
        "after a 2 s warm-up, a fresh `mlops-assets serve --workers 2` per run (stopped with SIGTERM: the queue is "
        "flushed).",
        f"Machine load average (1 min): {report['loadavg_start']:.1f} at the start, {report['loadavg_end']:.1f} at "
        "the end (2 cores shared with other sessions and a CI run; the client shares them with the server).",
        "",
        "| warehouse | run | log | req/s | p50 ms | p99 ms | errors | rows in served_forecasts | 2xx counted by the "
        "client | load avg |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for i, r in enumerate(report["runs"], 1):
        lines.append(
            f"| {r['label']} | {i} | {r['log']} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['errors']} | "
            f"{r.get('rows', '-')} | {r.get('answered_2xx', '-')} | {r['load']} |"
        )
    lines += [
        "",
        "| warehouse | req/s on / off (medians) | p99 on - off (medians) | rows == 2xx after every on run |",
        "| --- | ---: | ---: | --- |",
    ]
    for name, s in report["summary"].items():
        lines.append(
            f"| {name} | {s['rps_on']:,.0f} / {s['rps_off']:,.0f} = **{s['ratio']:.2f}x** (target >= 0.9x) | "
            f"{s['p99_on']:.2f} - {s['p99_off']:.2f} = **{s['p99_diff_ms']:+.2f} ms** (target within 1 ms) | "
            f"{'yes' if s['rows_match'] else '**no**'} |"
        )
    u = report.get("unreachable")
    if u:
        total = u["requests"] + u["warmup_requests"]
        ok = total - u["errors"] - u["warmup_errors"]
        dropped = {k: v for k, v in u["metrics"].items() if k.startswith("dropped[")}
        lines += [
            "",
            f"Unreachable warehouse (`WAREHOUSE_URL={UNREACHABLE_URL}`, log on): {ok:,} of {total:,} requests "
            f"answered 2xx ({100 * ok / total:.2f} %), {u['rps']:,.0f} req/s, p99 {u['p99_ms']:.2f} ms; "
            "/metrics before the stop: "
            f"`serving_prediction_log_dropped_total` = {u['metrics']['serving_prediction_log_dropped_total']:,.0f} "
            f"({', '.join(f'{k[8:-1]} {v:,.0f}' for k, v in sorted(dropped.items())) or 'none'}), "
            f"written {u['metrics']['serving_prediction_log_written_total']:,.0f}; server exit code {u['exit_code']}.",
        ]
    lines += [
        "",
        "Raw runs (JSON):",
        "",
        "```json",
        json.dumps(report["runs"] + ([u] if u else []), indent=1),
        "```",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    parser.add_argument("--rounds", type=int, default=3, help="off/on pairs per warehouse")
    parser.add_argument(
        "--unreachable-duration",
        type=float,
        default=25.0,
        help="seconds of the unreachable-warehouse run (long enough to fill the 2 x 10,000-record queues)",
    )
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument(
        "--family",
        default="ridge",
        help=(
            "champion: 'ridge' (run.py's store: Ridge on the 72 lags) or a forecaster family (ridge_lags, "
            "ridge_boost, ...)"
        ),
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "prediction_log.md")
    args = parser.parse_args()
    os.environ.update(MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    workdir = Path(tempfile.mkdtemp(prefix="predlog-bench-"))
    report: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "command": " ".join(["python bench/serving/prediction_log_overhead.py", *sys.argv[1:]]),
        "duration_s": args.duration,
        "loadavg_start": os.getloadavg()[0],
        "runs": [],
        "summary": {},
    }
    if args.family == "ridge":
        store = build_store(workdir)
        uri = store.uri
        report["champion"] = f"ridge on the 72 lags, version {store.champion} (bench/serving/run.py's store)"
    else:
        uri, report["champion"] = register_family(workdir, args.family)
    body = request_body()
    warehouses: list[tuple[str, Any]] = [("sqlite", None)]
    if not args.no_postgres:
        warehouses.append(("postgresql", None))
    for label, _ in warehouses:
        drop = None
        if label == "sqlite":
            url_for = lambda i: f"sqlite:///{workdir / f'warehouse-{i}.db'}"  # noqa: E731
        else:
            pg_url, drop = fresh_postgres()
            url_for = lambda i, pg_url=pg_url: pg_url  # noqa: E731
        try:
            runs = []
            # One unmeasured run first: the first server of a series measured up to 1.7x the later ones
            # (2026-12-02), which made whichever setting came first look better.
            one_run(uri, body, workdir, f"{label}-warm-up", False, url_for(-1), min(args.duration, 5))
            for i in range(args.rounds * 2):
                log_on = i % 4 in (1, 2)  # off, on, on, off, off, on, ...: neither side always goes first
                url = url_for(i)
                if label == "postgresql":
                    reset_table(url)
                runs.append(one_run(uri, body, workdir, label, log_on, url, args.duration))
            report["runs"] += runs
            report["summary"][label] = summarize(runs)
        finally:
            if drop is not None:
                drop()
    report["unreachable"] = one_run(uri, body, workdir, "unreachable", True, UNREACHABLE_URL, args.unreachable_duration)
    report["loadavg_end"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(report))
    log(f"wrote {args.out}")
    for name, s in report["summary"].items():
        log(f"{name}: ratio {s['ratio']:.2f}x, p99 diff {s['p99_diff_ms']:+.2f} ms, rows match {s['rows_match']}")


if __name__ == "__main__":
    main()
