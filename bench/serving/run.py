"""Serving benchmark: this service (uvicorn, 2 workers) against `mlflow models serve`, side by side.

    .venv/bin/python bench/serving/run.py [--tracking-uri URI] [--duration 10] [--out-dir bench/results]

Without --tracking-uri it builds a throwaway SQLite MLflow store, trains a ridge forecaster on
72-hour windows of the bundled 2013 JFK observations (plus a second version for the swap test),
logs it with the project's `log_forecaster` (single-row input example) and makes it champion.
With --tracking-uri it serves that registry's current `atmos_temperature@champion`; the swap
measurement then needs --swap-version V (the alias is moved to V and back: only use a registry
where that is acceptable).

Measures, in one run: pyfunc vs raw estimator vs this service's call path (same numbers? time per
call); req/s, p50, p99 and errors at concurrency 1, 8, 64 for both servers with the same load
generator (wrk if installed, else a raw-socket asyncio client); RSS/PSS per process; time from
moving the alias to the first answer from the new version, with zero failed requests under load;
and the ASGI server choice (uvicorn variants vs Granian). Writes bench/results/serving.{md,json}.
All traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import timeit
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]

from loadgen import HOST, LoadResult, have_wrk, run_load  # noqa: E402

MODEL = "atmos_temperature"
ALIAS = "champion"
PY = sys.executable
CONCURRENCY = (1, 8, 64)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def base_env(tracking_uri: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SERVING_", "PROMETHEUS_"))}
    env.update(
        MLFLOW_TRACKING_URI=tracking_uri,
        SERVING_MODELS=MODEL,
        MLFLOW_DISABLE_TELEMETRY="true",
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
        PYTHONPATH=str(REPO),
        # `mlflow models serve` execs `uvicorn` by name: the venv's bin must come first.
        PATH=os.pathsep.join([str(Path(PY).parent), os.environ.get("PATH", "")]),
    )
    return env


# --- the model ----------------------------------------------------------------------------------


@dataclass
class Store:
    uri: str
    champion: str
    swap_to: str | None
    owned: bool
    notes: list[str] = field(default_factory=list)


def jfk_windows() -> tuple[np.ndarray, np.ndarray]:
    """All complete 72 -> 24 hour windows of 2013 JFK temperatures, in time order."""
    from mlops_assets.atmos.source import load_sample_observations

    frame = load_sample_observations("JFK")
    hourly = frame.set_index("time")["tmp"].asfreq("h").to_numpy(dtype="float64")
    windows = np.lib.stride_tricks.sliding_window_view(hourly, 96)
    windows = windows[~np.isnan(windows).any(axis=1)]
    return windows[:, :72].copy(), windows[:, 72:].copy()


def build_store(workdir: Path) -> Store:
    import mlflow
    from mlflow.tracking import MlflowClient
    from sklearn.linear_model import Ridge

    from mlops_assets.atmos.forecast_features import FeatureSpec
    from mlops_assets.atmos.model_io import log_forecaster
    from mlops_assets.resources.mlflow_run import MlflowRun

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("serving-bench", artifact_location=str(workdir / "artifacts"))
    X, y = jfk_windows()
    split = int(len(X) * 0.8)
    client = MlflowClient()
    versions = []
    for alpha in (1.0, 100.0):
        model = Ridge(alpha=alpha).fit(X[:split], y[:split])
        mae = float(np.abs(model.predict(X[split:]) - y[split:]).mean())
        with mlflow.start_run(experiment_id=experiment) as run:
            logged_to = MlflowRun.existing(mlflow.get_tracking_uri(), run.info.run_id)
            info = log_forecaster(logged_to, model, FeatureSpec(), X[split : split + 1])  # one-row example
        version = mlflow.register_model(info.model_uri, MODEL).version
        client.set_model_version_tag(MODEL, version, "test_mae", f"{mae:.4f}")
        versions.append(str(version))
        log(f"registered {MODEL} v{version}: ridge alpha={alpha} on {split} JFK windows, test MAE {mae:.3f} °C")
    client.set_registered_model_alias(MODEL, ALIAS, versions[0])
    return Store(uri, versions[0], versions[1], owned=True)


def existing_store(uri: str, swap_version: str | None) -> Store:
    from mlflow.tracking import MlflowClient

    champion = str(MlflowClient(tracking_uri=uri).get_model_version_by_alias(MODEL, ALIAS).version)
    notes = [] if swap_version else ["swap not measured: pass --swap-version to move the alias in this registry"]
    return Store(uri, champion, swap_version, owned=False, notes=notes)


def serving_example(uri: str, version: str) -> bytes:
    """The body MLflow recorded for the model (`serving_input_example.json`)."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{MODEL}/{version}/serving_input_example.json", dst_path=tmp, tracking_uri=uri
        )
        return Path(path).read_bytes()


# --- pyfunc vs estimator ----------------------------------------------------------------------


def predict_paths(uri: str, version: str, row: np.ndarray) -> dict[str, Any]:
    import mlflow

    from mlops_assets.atmos.model_io import load_forecaster
    from serving.models._sklearn import predictor

    mlflow.set_tracking_uri(uri)
    model_uri = f"models:/{MODEL}/{version}"
    pyfunc = mlflow.pyfunc.load_model(model_uri)
    estimator, spec = load_forecaster(model_uri)
    fast, path = predictor(estimator, spec.n_features)
    calls = {
        "pyfunc.predict(ndarray)": lambda: pyfunc.predict(row),
        "estimator.predict(ndarray)": lambda: estimator.predict(row),
        f"service call path ({path})": lambda: fast(row),
    }
    reference = np.asarray(estimator.predict(row))
    out: dict[str, Any] = {"estimator": type(estimator).__name__, "rows": int(row.shape[0]), "calls": {}}
    for name, call in calls.items():
        same = bool(np.array_equal(np.asarray(call()), reference))
        best = min(timeit.repeat(call, number=2000, repeat=5)) / 2000
        out["calls"][name] = {"us_per_call": best * 1e6, "same_numbers_as_estimator": same}
        log(f"{name}: {best * 1e6:.1f} us/call, same numbers: {same}")
    return out


# --- processes ----------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path


def start(name: str, cmd: list[str], env: dict[str, str], port: int, workdir: Path) -> Server:
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as out:
        process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return Server(name, port, process, log_path)


def wait_http(server: Server, path: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited:\n{server.log_path.read_text()[-3000:]}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            connection = http.client.HTTPConnection(HOST, server.port, timeout=2)
            connection.request("GET", path)
            if connection.getresponse().status == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{server.name} not ready on {path}:\n{server.log_path.read_text()[-3000:]}")


def wait_workers_loaded(server: Server, version: str, workers: int, timeout: float = 120.0) -> None:
    """Until every worker exports `version` as served (multiprocess metrics carry a pid each)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(1 for v in served_versions(server.port) if v == version) >= workers:
            return
        time.sleep(0.2)
    raise TimeoutError(f"{server.name}: not all {workers} workers serve version {version}")


def served_versions(port: int) -> list[str]:
    with contextlib.suppress(OSError, http.client.HTTPException):
        connection = http.client.HTTPConnection(HOST, port, timeout=2)
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
        return [str(int(float(m))) for m in re.findall(r"^serving_model_version\{[^}]*\} ([\d.]+)$", text, re.M)]
    return []


def stop(server: Server) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(10)


def process_tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def memory(server: Server) -> list[dict[str, Any]]:
    """RSS and PSS (shared pages divided among sharers) of every process of the server."""
    rows = []
    for pid in process_tree(server.process.pid):
        with contextlib.suppress(OSError):
            fields = dict(re.findall(r"^(\w+):\s+(\d+) kB", Path(f"/proc/{pid}/smaps_rollup").read_text(), re.M))
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:80]
            rows.append(
                {"pid": pid, "rss_mib": int(fields["Rss"]) / 1024, "pss_mib": int(fields["Pss"]) / 1024, "cmd": cmd}
            )
    return rows


def request(port: int, method: str, path: str, body: bytes) -> tuple[int, Any]:
    connection = http.client.HTTPConnection(HOST, port, timeout=10)
    connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status, json.loads(response.read())


# --- measurements -------------------------------------------------------------------------------


def loads(targets: dict[str, tuple[int, str, str, bytes]], duration: float, tool: str) -> dict[str, list[LoadResult]]:
    results: dict[str, list[LoadResult]] = {name: [] for name in targets}
    for port, method, path, body in targets.values():  # warm both up first
        run_load(port, method, path, body, 8, 2, tool)
    for concurrency in CONCURRENCY:
        for name, (port, method, path, body) in targets.items():
            before = os.getloadavg()[0]
            result = run_load(port, method, path, body, concurrency, duration, tool)
            result.note = f"load average {before:.2f} -> {os.getloadavg()[0]:.2f}"
            results[name].append(result)
            log(
                f"{name} c={concurrency}: {result.rps:.0f} req/s, p50 {result.p50_ms:.2f} ms, "
                f"p99 {result.p99_ms:.2f} ms, errors {result.errors}"
            )
    return results


def swap_under_load(server: Server, store: Store, body: bytes, tool: str, workers: int) -> dict[str, Any]:
    """Move the alias during a c=8 load; time to the first new answer and to every worker swapped."""
    from mlflow.tracking import MlflowClient

    assert store.swap_to is not None
    client = MlflowClient(tracking_uri=store.uri)
    box: dict[str, LoadResult] = {}
    load = threading.Thread(
        target=lambda: box.setdefault("r", run_load(server.port, "PUT", f"/predict/{MODEL}", body, 8, 15, tool))
    )
    load.start()
    time.sleep(3)
    probe = http.client.HTTPConnection(HOST, server.port, timeout=10)
    moved = time.monotonic()
    client.set_registered_model_alias(MODEL, ALIAS, store.swap_to)
    first_new = all_new = None
    probe_errors = 0
    while time.monotonic() - moved < 11 and (first_new is None or all_new is None):
        probe.request("PUT", f"/predict/{MODEL}", body=body, headers={"Content-Type": "application/json"})
        response = probe.getresponse()
        answer = json.loads(response.read())
        if response.status != 200:
            probe_errors += 1
        elif first_new is None and answer["model"]["version"] == store.swap_to:
            first_new = time.monotonic() - moved
        if all_new is None and served_versions(server.port).count(store.swap_to) >= workers:
            all_new = time.monotonic() - moved
        time.sleep(0.005)
    load.join()
    result = box["r"]
    client.set_registered_model_alias(MODEL, ALIAS, store.champion)
    outcome = {
        "poll_seconds": 2.0,
        "first_answer_from_new_version_s": first_new,
        "all_workers_swapped_s": all_new,
        "load_during_swap": result.as_dict(),
        "failed_requests": result.errors + probe_errors,
    }
    log(
        f"swap: first new answer after {first_new} s, all workers after {all_new} s, "
        f"{result.requests} requests under load, {outcome['failed_requests']} failed"
    )
    return outcome


SERVER_VARIANTS: dict[str, list[str]] = {
    "uvicorn, 2 workers, uvloop, IPPROTO_TCP socket (serving.server.run)": [PY, "-m", "serving", "--workers", "2"],
    "uvicorn, 2 workers, uvloop, uvicorn's socket": [
        PY,
        "bench/serving/uvicorn_launcher.py",
        "{port}",
        "2",
        "uvloop",
        "stock",
    ],
    "uvicorn, 2 workers, asyncio loop, uvicorn's socket": [
        PY,
        "bench/serving/uvicorn_launcher.py",
        "{port}",
        "2",
        "asyncio",
        "stock",
    ],
    "uvicorn, 2 workers, asyncio loop, IPPROTO_TCP socket": [
        PY,
        "bench/serving/uvicorn_launcher.py",
        "{port}",
        "2",
        "asyncio",
        "tcp",
    ],
    "uvicorn, 1 worker, uvloop": [PY, "bench/serving/uvicorn_launcher.py", "{port}", "1", "uvloop", "stock"],
    "granian, 2 workers (forked after preloading)": [PY, "bench/serving/granian_launcher.py", "{port}", "2"],
}


def compare_servers(store: Store, body: bytes, workdir: Path, tool: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, template in SERVER_VARIANTS.items():
        port = free_port()
        cmd = [part.format(port=port) for part in template]
        if "serving" in cmd:
            cmd += ["--port", str(port)]
        env = base_env(store.uri)
        server = start(re.sub(r"\W+", "-", name), cmd, env, port, workdir)
        try:
            wait_http(server, "/ready")
            workers = 1 if "1 worker" in name else 2
            wait_workers_loaded(server, store.champion, workers)
            run_load(port, "PUT", f"/predict/{MODEL}", body, 8, 2, tool)
            single = run_load(port, "PUT", f"/predict/{MODEL}", body, 1, 5, tool)
            eight = [run_load(port, "PUT", f"/predict/{MODEL}", body, 8, 6, tool) for _ in range(3)]
            median = sorted(eight, key=lambda r: r.rps)[1]
            out[name] = {"c1": single.as_dict(), "c8_runs": [r.as_dict() for r in eight], "c8_median": median.as_dict()}
            log(
                f"{name}: c=1 p50 {single.p50_ms:.2f} ms {single.rps:.0f} req/s; "
                f"c=8 median {median.rps:.0f} req/s p99 {median.p99_ms:.2f} ms"
            )
        except Exception as exc:  # one broken variant must not lose the others' numbers
            log(f"{name}: failed: {exc!r}")
            out[name] = {"error": repr(exc)}
        finally:
            stop(server)
    return out


# --- report -------------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Serving benchmark",
        "",
        f"Run {report['started']} on {report['machine']}; load generator: {report['tool']}; "
        f"{report['duration_s']:.0f} s per point. Reproduce: `{report['command']}`.",
        "",
        f"Machine load average before the run: {report['loadavg_start']:.2f}, after: {report['loadavg_end']:.2f} "
        "(the load generator and both servers share the 2 cores; anything else running skews the numbers).",
        "",
        f"Model: `{MODEL}` v{report['champion']} ({report['predict_paths']['estimator']}), "
        f"our body: 72 numbers; `mlflow models serve` body: its recorded `serving_input_example.json` "
        f"({report['mlflow_example_rows']} row(s)). Same numbers from both servers: {report['same_answers']}.",
        "",
        "| server | concurrency | req/s | p50 ms | p99 ms | errors | note |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, results in report["loads"].items():
        for r in results:
            lines.append(
                f"| {name} | {r['concurrency']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
                f"| {r['errors']} | {r['note']} |"
            )
    ratio = report["throughput_ratio_c8"]
    lines += [
        "",
        f"Throughput at c=8: **{ratio:.1f}x** `mlflow models serve`.",
        "",
        "## Predict call (one row)",
        "",
        "| path | us/call | same numbers as estimator.predict |",
        "| --- | ---: | --- |",
    ]
    for name, c in report["predict_paths"]["calls"].items():
        lines.append(f"| {name} | {c['us_per_call']:.1f} | {c['same_numbers_as_estimator']} |")
    lines += ["", "## Memory", "", "| server | process | RSS MiB | PSS MiB |", "| --- | --- | ---: | ---: |"]
    for name, rows in report["memory"].items():
        for row in rows:
            lines.append(f"| {name} | `{row['cmd'][:60]}` | {row['rss_mib']:.0f} | {row['pss_mib']:.0f} |")
    swap = report.get("swap")
    lines += ["", "## Champion swap under load (c=8)", ""]
    if swap:
        load = swap["load_during_swap"]
        lines += [
            f"- poll interval {swap['poll_seconds']} s (SERVING_POLL_SECONDS); alias moved 3 s into a 15 s load",
            f"- first answer from the new version: {swap['first_answer_from_new_version_s']:.2f} s after the move",
            f"- every worker serving it: {swap['all_workers_swapped_s']:.2f} s after the move",
            f"- {load['requests']} requests during the run ({load['rps']:.0f} req/s, p99 {load['p99_ms']:.2f} ms), "
            f"**{swap['failed_requests']} failed**",
        ]
    else:
        lines += [f"- not measured: {'; '.join(report['notes'])}"]
    if report.get("servers"):
        lines += [
            "",
            "## ASGI server choice (same app, same model)",
            "",
            "| server | c=1 p50 ms | c=1 req/s | c=8 req/s (median of 3) | c=8 p99 ms |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for name, r in report["servers"].items():
            if "error" in r:
                lines.append(f"| {name} | failed: {r['error'][:80]} | | | |")
                continue
            lines.append(
                f"| {name} | {r['c1']['p50_ms']:.2f} | {r['c1']['rps']:.0f} | "
                f"{r['c8_median']['rps']:.0f} | {r['c8_median']['p99_ms']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", help="serve this registry's champion instead of a fresh store")
    parser.add_argument("--swap-version", help="with --tracking-uri: version to move the alias to (and back)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load point")
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--tool", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--skip-servers", action="store_true", help="skip the ASGI server comparison")
    args = parser.parse_args()
    os.environ.update(MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    tool = ("wrk" if have_wrk() else "python") if args.tool == "auto" else args.tool
    workdir = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    report: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "tool": tool,
        "duration_s": args.duration,
        "command": "python bench/serving/run.py"
        + (f" --tracking-uri {args.tracking_uri}" if args.tracking_uri else ""),
    }
    servers: list[Server] = []
    report["loadavg_start"] = os.getloadavg()[0]
    try:
        store = existing_store(args.tracking_uri, args.swap_version) if args.tracking_uri else build_store(workdir)
        report.update(champion=store.champion, notes=store.notes)
        mlflow_body = serving_example(store.uri, store.champion)
        rows = json.loads(mlflow_body)["inputs"]
        report["mlflow_example_rows"] = len(rows)
        our_body = json.dumps(rows[0]).encode()
        report["predict_paths"] = predict_paths(store.uri, store.champion, np.asarray(rows[:1], dtype="float64"))

        ours_port, mlflow_port = free_port(), free_port()
        env = base_env(store.uri)
        env["SERVING_POLL_SECONDS"] = "2"
        ours = start("ours", [PY, "-m", "serving", "--port", str(ours_port), "--workers", "2"], env, ours_port, workdir)
        servers.append(ours)
        theirs = start(
            "mlflow-serve",
            [
                str(Path(PY).with_name("mlflow")),
                "models",
                "serve",
                "-m",
                f"models:/{MODEL}@{ALIAS}",
                "--env-manager",
                "local",
                "-p",
                str(mlflow_port),
                "-h",
                HOST,
            ],
            base_env(store.uri),
            mlflow_port,
            workdir,
        )
        servers.append(theirs)
        wait_http(ours, "/ready")
        wait_workers_loaded(ours, store.champion, 2)
        wait_http(theirs, "/ping")
        status, ours_answer = request(ours_port, "PUT", f"/predict/{MODEL}", our_body)
        theirs_status, theirs_answer = request(mlflow_port, "POST", "/invocations", mlflow_body)
        assert status == 200 and theirs_status == 200, (ours_answer, theirs_answer)
        report["same_answers"] = ours_answer["result"] == theirs_answer["predictions"][0]
        log(f"both servers up; same numbers: {report['same_answers']}")

        results = loads(
            {
                "this service (uvicorn, 2 workers)": (ours_port, "PUT", f"/predict/{MODEL}", our_body),
                "mlflow models serve": (mlflow_port, "POST", "/invocations", mlflow_body),
            },
            args.duration,
            tool,
        )
        report["loads"] = {name: [r.as_dict() for r in rs] for name, rs in results.items()}
        c8 = {name: next(r for r in rs if r.concurrency == 8).rps for name, rs in results.items()}
        report["throughput_ratio_c8"] = c8["this service (uvicorn, 2 workers)"] / c8["mlflow models serve"]
        report["memory"] = {"this service": memory(ours), "mlflow models serve": memory(theirs)}
        stop(theirs)
        if store.swap_to is not None:
            report["swap"] = swap_under_load(ours, store, our_body, tool, 2)
        stop(ours)
        if not args.skip_servers:
            report["servers"] = compare_servers(store, our_body, workdir, tool)
    finally:
        for server in servers:
            stop(server)
    report["loadavg_end"] = os.getloadavg()[0]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "serving.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out_dir / "serving.md").write_text(markdown(report))
    log(f"wrote {args.out_dir / 'serving.md'} and serving.json")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
