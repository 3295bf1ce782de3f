"""Benchmark: the main command end to end on one and two years, bookkeeping separated from work.

Run: `.venv/bin/python bench/bookkeeping.py --label after` (this tree), or
`.venv/bin/python bench/bookkeeping.py --label before --code DIR` with DIR an export of an older
commit (`git archive <commit> | tar -x -C DIR`): the CLI runs as `python -m mlops_assets.cli` with
DIR first on PYTHONPATH. Appends a section to bench/results/bookkeeping.md (`--dry-run`: print only).

Data: the bundled sample has only 2013, so the station file is JFK 2013 (converted like the
sample source) plus 2014 built from the 2013 values shifted by exactly one year (365 days; both
years have 365 days). It is read with ATMOS_SOURCE=csv. The main command runs everything
(`materialize --start ... --end ...`, every asset, the searches included) in a fresh folder.

The breakdown comes from the run's own event log in the instance the command used:
- start-up: process start to the run record's creation (imports, definitions, instance);
- run creation: run record created to the run's first event that is not a "planned" event;
- materialization events: for each step that wrote more than one materialization (the
  partitioned asset), its first materialization event to its end (one-by-one writes spread the
  events' timestamps over that span; a batch is written after the last one is created);
- work: the steps' durations minus those materialization events;
- the rest: run start/end events between steps, the closing summary, process exit.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "bookkeeping.md"
RANGES = {"1 year": ("2013-01-01", "2013-12-31"), "2 years": ("2013-01-01", "2014-12-31")}


def write_station_csv(path: Path) -> int:
    """JFK 2013 from the bundled sample plus the same values one year later (2014); rows written."""
    from mlops_assets.atmos.source import load_sample_observations

    year = load_sample_observations("JFK").drop(columns=["station"])
    year = year[[c for c in year.columns if not c.endswith("_qc")]]
    shifted = year.assign(time=year["time"] + pd.Timedelta(days=365))
    both = pd.concat([year, shifted], ignore_index=True)
    both["time"] = both["time"].dt.strftime("%Y-%m-%dT%H:%M:%S+00:00")
    both.to_csv(path, index=False)
    return len(both)


@dataclass
class Breakdown:
    total: float
    startup: float
    run_creation: float
    planned_events: int
    materialization_events: float
    materializations: int
    work: float
    steps: dict[str, float]
    events_in_run: int
    exit_status: int

    @property
    def rest(self) -> float:
        return self.total - self.startup - self.run_creation - self.materialization_events - self.work


def breakdown(home: Path, began: float, total: float, exit_status: int) -> Breakdown:
    """Read the run the command made from its instance and split its time."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_run_records()
        if len(runs) != 1:
            raise RuntimeError(f"expected one run in {home}, found {len(runs)}")
        record = runs[0]
        events = [entry for entry in instance.all_logs(record.dagster_run.run_id) if entry.dagster_event is not None]
    created = record.create_timestamp.timestamp()
    planned = [e for e in events if e.dagster_event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED]
    first_other = min(
        e.timestamp
        for e in events
        if e.dagster_event.event_type
        not in {
            dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
            dg.DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED,
        }
        and e.timestamp >= created
    )
    starts = {e.step_key: e.timestamp for e in events if e.dagster_event.event_type == dg.DagsterEventType.STEP_START}
    ends = {
        e.step_key: e.timestamp
        for e in events
        if e.dagster_event.event_type in {dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE}
    }
    steps = {key: ends[key] - starts[key] for key in starts if key in ends}
    by_step: dict[str, list[float]] = {}
    for e in events:
        if e.dagster_event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
            by_step.setdefault(e.step_key, []).append(e.timestamp)
    # From the step's first materialization to its end: one-by-one writes spread the events'
    # timestamps over that span, a batch is written after the last of them; both end before
    # STEP_SUCCESS is created.
    writing = sum(ends[key] - min(stamps) for key, stamps in by_step.items() if len(stamps) > 1 and key in ends)
    return Breakdown(
        total=total,
        startup=created - began,
        run_creation=first_other - created,
        planned_events=len(planned),
        materialization_events=writing,
        materializations=sum(len(s) for s in by_step.values()),
        work=sum(steps.values()) - writing,
        steps=steps,
        events_in_run=len(events),
        exit_status=exit_status,
    )


def run_main_command(code: Path, csv_path: Path, start: str, end: str, label: str, folder: Path) -> Breakdown:
    """The main command in a fresh folder; the instance is wherever that code keeps it."""
    env = {
        **os.environ,
        "ATMOS_SOURCE": "csv",
        "ATMOS_CSV_PATH": str(csv_path),
        "ATMOS_STATION": "JFK",
        "PYTHONPATH": str(code),
        "OMP_NUM_THREADS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DAGSTER_DISABLE_TELEMETRY": "true",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("DAGSTER_HOME", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("WAREHOUSE_URL", None)
    home = folder / ".mlops" / "dagster"
    if label.startswith("before"):
        # Dagster's own SQLite instance (plain dagster.yaml): the code before the embedded instance
        # kept runs only with DAGSTER_HOME (else a throw-away SQLite instance, same cost); with
        # newer code this measures the same work with Dagster's one-by-one event writes.
        home.mkdir(parents=True)
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        env["DAGSTER_HOME"] = str(home)
    log = folder / "command.log"
    began = time.time()
    with log.open("w") as out:
        status = subprocess.run(
            [sys.executable, "-m", "mlops_assets.cli", "materialize", "--start", start, "--end", end],
            cwd=folder,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        ).returncode
    total = time.time() - began
    if status != 0:
        print(log.read_text()[-4000:], file=sys.stderr)
    return breakdown(home, began, total, status)


def table(label: str, results: dict[str, Breakdown]) -> list[str]:
    lines = [
        "| range | total s | start-up s | run creation s (planned events) | materialization events s (count) | work s "
        "| rest s | events in run | exit |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, b in results.items():
        lines.append(
            f"| {name} | {b.total:.1f} | {b.startup:.1f} | {b.run_creation:.1f} ({b.planned_events}) | "
            f"{b.materialization_events:.1f} ({b.materializations}) | {b.work:.1f} | {b.rest:.1f} | {b.events_in_run} "
            f"| {b.exit_status} |"
        )
    lines += [
        "",
        "Steps (s): "
        + "; ".join(
            f"{name}: " + ", ".join(f"{key} {seconds:.1f}" for key, seconds in sorted(b.steps.items()))
            for name, b in results.items()
        ),
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--label",
        required=True,
        help="'before...' (DAGSTER_HOME with Dagster's default SQLite storage) or 'after' (the CLI's own instance)",
    )
    parser.add_argument("--code", type=Path, default=REPO, help="source tree whose mlops_assets runs")
    parser.add_argument("--ranges", nargs="+", default=list(RANGES), choices=list(RANGES))
    parser.add_argument("--dry-run", action="store_true", help="print, do not append to the results")
    args = parser.parse_args()
    results: dict[str, Breakdown] = {}
    with tempfile.TemporaryDirectory(prefix="bench-bookkeeping-") as scratch:
        csv_path = Path(scratch) / "jfk_2013_2014.csv"
        rows = write_station_csv(csv_path)
        for name in args.ranges:
            folder = Path(scratch) / name.replace(" ", "_")
            folder.mkdir()
            results[name] = run_main_command(args.code.resolve(), csv_path, *RANGES[name], args.label, folder)
            print(name, results[name], flush=True)
    load = os.getloadavg()
    lines = [
        f"## {args.label}: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, code {args.code}",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared), Python {platform.python_version()}; "
        f"load average after the runs {load[0]:.1f}. Station file: {rows} hourly rows (JFK 2013 + the same values "
        "shifted to 2014).",
        "",
        *table(args.label, results),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.dry_run:
        RESULTS.parent.mkdir(exist_ok=True)
        if not RESULTS.exists():
            RESULTS.write_text(
                "# Bookkeeping of the main command: one and two years end to end\n\n"
                "Written by `bench/bookkeeping.py`; the method is in its docstring.\n\n"
            )
        with RESULTS.open("a") as out:
            out.write(text + "\n")


if __name__ == "__main__":
    main()
