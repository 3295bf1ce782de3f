"""`mlops-assets`: run the pipeline from a shell; `dev` opens the UI on the same Dagster instance."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from pydantic import ValidationError

from mlops_assets.constants import ATMOS_MODEL_NAME, DIGITS_MODEL_NAME, INSURANCE_MODEL_NAME
from mlops_assets.settings import PipelineSettings, load_pipeline_settings

CLI_JOB_NAME = "mlops_assets_cli"


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlops-assets", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    materialize = commands.add_parser("materialize", help="materialize assets in one process")
    materialize.add_argument("--start", type=_date, help="first daily partition (YYYY-MM-DD)")
    materialize.add_argument("--end", type=_date, help="last daily partition, inclusive (YYYY-MM-DD)")
    materialize.add_argument(
        "--select",
        default="*",
        help="Dagster asset selection, e.g. 'raw_atmos_observations+', 'group:insurance' (default: everything)",
    )

    champion = commands.add_parser("champion", help="show the champion, or roll the alias back")
    champion.add_argument("--model", default=ATMOS_MODEL_NAME, help="registered model name")
    champion.add_argument("--rollback", metavar="VERSION", help="move the champion alias to this version")
    champion.add_argument("--reason", default="manual rollback", help="why (recorded on the version)")

    example = commands.add_parser("example-request", help="print a forecast request built from the stored data")
    example.add_argument("--model", default=ATMOS_MODEL_NAME, help="registered model name")

    dev = commands.add_parser("dev", help="start the Dagster UI and daemon (`dagster dev`) on the CLI's instance")
    dev.add_argument("--host", default="127.0.0.1", help="address the webserver listens on")
    dev.add_argument("--port", type=int, default=3000, help="webserver port")

    from serving.server import add_server_arguments

    add_server_arguments(commands.add_parser("serve", help="start the prediction service (as `python -m serving`)"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit code. A bad setting is `error: <VARIABLE>: <reason>` and 2, not a traceback."""
    args = build_parser().parse_args(argv)
    try:
        return _run_command(args)
    except ValidationError as error:
        from serving.server import report_settings_error
        from serving.settings import ServingSettings

        settings_class = {cls.__name__: cls for cls in (PipelineSettings, ServingSettings)}.get(error.title)
        if settings_class is None:  # not the configuration: a bug, shown in full
            raise
        return report_settings_error(error, settings_class)


def _run_command(args: argparse.Namespace) -> int:
    if args.command == "materialize":
        return materialize(args.select, args.start, args.end)
    if args.command == "champion":
        from mlops_assets.promotion.champion_cli import rollback, show_champion

        if args.rollback:
            return rollback(args.model, args.rollback, args.reason, load_pipeline_settings())
        return show_champion(args.model, load_pipeline_settings())
    if args.command == "example-request":
        from mlops_assets.promotion.champion_cli import example_request

        return example_request(args.model, load_pipeline_settings())
    if args.command == "dev":
        return dev(args.host, args.port)
    if args.command == "serve":
        from serving.server import serve_from_arguments

        serve_from_arguments(args)
        return 0
    raise AssertionError(f"unhandled command {args.command}")


@contextmanager
def _batched_event_writes() -> Iterator[None]:
    """Let Dagster hand batches of asset events to the storage while the command runs.

    Dagster reads DAGSTER_EVENT_BATCH_SIZE from the environment at each event; without it every
    planned and every partition's materialization event is a separate write (bench/README.md).
    Restored afterwards, so a caller's environment is left as it was.
    """
    from mlops_assets.instance import EVENT_BATCH_SIZE

    if os.environ.get("DAGSTER_EVENT_BATCH_SIZE"):
        yield
        return
    os.environ["DAGSTER_EVENT_BATCH_SIZE"] = EVENT_BATCH_SIZE
    try:
        yield
    finally:
        os.environ.pop("DAGSTER_EVENT_BATCH_SIZE", None)


def materialize(selection_text: str, start: dt.date | None, end: dt.date | None) -> int:
    """Materialize `selection` (and the partitions start..end) in one run; 0 when all succeeded."""
    from mlops_assets.definitions import defs

    definitions = defs()
    try:
        selection = dg.AssetSelection.from_string(selection_text)
        graph = definitions.resolve_asset_graph()
        keys = selection.resolve(graph)
    except Exception as error:  # the selection parser raises several types; all mean bad input
        print(f"error: invalid --select {selection_text!r}: {error}", file=sys.stderr)
        return 2
    if not keys:
        print(f"error: --select {selection_text!r} matches no asset", file=sys.stderr)
        return 2
    partitioned = sorted(key.to_user_string() for key in keys if graph.get(key).partitions_def is not None)
    if partitioned and (start is None or end is None):
        print(f"error: {', '.join(partitioned)} are partitioned by day: give --start and --end", file=sys.stderr)
        return 2
    if (start is None) != (end is None):
        print("error: give both --start and --end, or neither", file=sys.stderr)
        return 2
    if start and end and end < start:
        print(f"error: --end {end} is before --start {start}", file=sys.stderr)
        return 2

    tags: dict[str, str] = {}
    if partitioned and start and end:
        tags = {ASSET_PARTITION_RANGE_START_TAG: start.isoformat(), ASSET_PARTITION_RANGE_END_TAG: end.isoformat()}
    job_defs = dg.Definitions.merge(
        definitions, dg.Definitions(jobs=[dg.define_asset_job(CLI_JOB_NAME, selection=dg.AssetSelection.assets(*keys))])
    )
    job = job_defs.resolve_job_def(CLI_JOB_NAME)
    print(f"materializing {len(keys)} assets: {', '.join(sorted(k.to_user_string() for k in keys))}", file=sys.stderr)
    from mlops_assets.instance import open_instance

    began = time.monotonic()
    try:
        instance = open_instance()
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    with instance, _batched_event_writes():
        result = job.execute_in_process(instance=instance, tags=tags, raise_on_error=False)
        return _report(result, time.monotonic() - began)


def dev(host: str, port: int) -> int:
    """Run `dagster dev` on the CLI's instance until SIGINT/SIGTERM; 0 after a clean stop.

    The child gets its own session, so a Ctrl-C reaches it once (forwarded from here), and
    SIGINT restored to the default: a child that inherits an ignored SIGINT never stops.
    """
    from mlops_assets.instance import EVENT_BATCH_SIZE, prepare_home

    try:
        home = prepare_home()
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    env.setdefault("DAGSTER_EVENT_BATCH_SIZE", EVENT_BATCH_SIZE)
    command = [str(Path(sys.executable).parent / "dagster"), "dev", "--host", host, "--port", str(port)]
    if Path("workspace.yaml").is_file():
        command += ["--workspace", "workspace.yaml"]
    else:
        command += ["--module-name", "mlops_assets.definitions"]
    print(f"Dagster UI on http://{host}:{port} (instance {home}); Ctrl-C stops it", file=sys.stderr)
    child = subprocess.Popen(command, env=env, start_new_session=True, restore_signals=True, preexec_fn=_default_sigint)
    stop_requested: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        stop_requested.append(signum)
        if child.poll() is None:
            child.send_signal(signal.SIGINT)  # dagster dev shuts its webserver and daemon down on SIGINT

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        status = _wait_for_child(child, stop_requested)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    if stop_requested:
        return 0 if status in (0, -signal.SIGINT, 130) else 1
    if status != 0:
        print(f"error: dagster dev exited with status {status}", file=sys.stderr)
    return 0 if status == 0 else 1


#: How long `dagster dev` gets to stop its webserver and daemon before it is killed.
DEV_STOP_SECONDS = 60.0


def _wait_for_child(child: subprocess.Popen[bytes], stop_requested: list[int]) -> int:
    """The child's exit status; kill its process group if it outlives a stop request too long."""
    stop_deadline: float | None = None
    while True:
        try:
            return child.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            pass
        if stop_requested and stop_deadline is None:
            stop_deadline = time.monotonic() + DEV_STOP_SECONDS
        if stop_deadline is not None and time.monotonic() > stop_deadline:
            print(f"error: dagster dev did not stop within {DEV_STOP_SECONDS:.0f} s: killed", file=sys.stderr)
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            return 1


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def command_prefix(argv0: str | None = None, executable: str | None = None, cwd: Path | None = None) -> str:
    """How to run this CLI again from `cwd`, as it was run: `.venv/bin/mlops-assets`, not a bare name.

    The console script as typed when it was called by a path; else the `mlops-assets` beside the
    running interpreter (relative to `cwd` when inside it); else `python -m mlops_assets.cli`.
    """
    argv0 = sys.argv[0] if argv0 is None else argv0
    executable = sys.executable if executable is None else executable
    cwd = Path.cwd() if cwd is None else cwd
    if Path(argv0).name == "mlops-assets" and os.sep in argv0 and (cwd / argv0).is_file():
        return shlex.quote(argv0)
    script = Path(executable).parent / "mlops-assets"
    if not script.is_file():
        return f"{shlex.quote(executable)} -m mlops_assets.cli"
    absolute = script.absolute()
    try:
        relative = absolute.relative_to(cwd.absolute())
    except ValueError:
        return shlex.quote(str(absolute))
    return shlex.quote(str(relative) if os.sep in str(relative) else f".{os.sep}{relative}")


def next_steps(prefix: str) -> str:
    """The commands to run after a promotion, runnable as printed from the same folder."""
    return f"""
Serve the champions (reloads by itself when the alias moves):
    {prefix} serve --port 8000
Ask for tomorrow's temperatures (the body holds the last 72 hours of the stored data, and what the
champion's features need):
    {prefix} example-request > request.json
    curl -s -X PUT http://127.0.0.1:8000/predict/{ATMOS_MODEL_NAME} -H 'Content-Type: application/json' -d @request.json
See this run, its materializations, plots and checks in the Dagster UI (same instance):
    {prefix} dev --port 3000"""


#: Data-quality counts the closing summary reports, by asset: metadata key -> words.
QUALITY_COUNTS: dict[str, dict[str, str]] = {
    "raw_atmos_observations": {
        "days_with_missing_hours": "days with missing hours",
        "duplicate_hours_dropped": "duplicate hours dropped",
    },
    "atmos_features": {
        "hours_filled": "hours filled",
        "gaps_filled": "gaps filled",
        "gaps_left": "gaps left",
        "duplicate_hours_dropped": "duplicate hours dropped",
    },
    "insurance_policies": {"rows_rejected": "policy rows rejected"},
}


CHAMPION_ASSETS = {
    "atmos_champion_model": ATMOS_MODEL_NAME,
    "insurance_champion_model": INSURANCE_MODEL_NAME,
    "digits_champion_model": DIGITS_MODEL_NAME,
}


def champion_summaries(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    """One line per promotion step that ran: decision, versions, scores against the baselines."""
    lines = {}
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        asset = materialization.asset_key.to_user_string()
        if asset not in CHAMPION_ASSETS:
            continue
        metadata = {key: value.value for key, value in materialization.metadata.items()}
        scores = ", ".join(
            f"{key.removeprefix('baseline_')} {value}" for key, value in metadata.items() if key.startswith("baseline_")
        )
        metric = str(metadata["metric"])  # e.g. test_mae, test_error_rate (lower is better)
        before = metadata.get(f"champion_{metric}_same_holdout")
        lines[CHAMPION_ASSETS[asset]] = (
            f"{metadata['decision']} v{metadata['registered_version']}: {metadata['reason']}\n"
            f"    champion now: v{metadata['champion_version']}; {metric.replace('_', ' ')} of the challenger "
            f"{metadata[f'challenger_{metric}']}, of the previous champion {before if before is not None else '-'}; "
            f"baselines: {scores}"
        )
    return lines


def _report(result: dg.ExecuteInProcessResult, seconds: float) -> int:
    """Print a summary to stdout and failures to stderr; the exit status for the shell."""
    print(f"\nrun {result.run_id} finished in {seconds:.1f} s")
    partitions_by_asset: dict[str, int] = {}
    metadata_by_asset: dict[str, Mapping[str, object]] = {}
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        name = materialization.asset_key.to_user_string()
        partitions_by_asset[name] = partitions_by_asset.get(name, 0) + 1
        # A range materializes every partition with the same metadata: one copy tells it all.
        metadata_by_asset[name] = {key: value.value for key, value in materialization.metadata.items()}
    for name, count in partitions_by_asset.items():
        metadata = metadata_by_asset[name]
        details = [f"{count} partitions"] if count > 1 else []
        if "dagster/row_count" in metadata:
            details.append(f"{metadata['dagster/row_count']} rows")
        details += [
            f"{metadata[key]} {words}" for key, words in QUALITY_COUNTS.get(name, {}).items() if key in metadata
        ]
        print(f"  materialized {name}" + (f" ({', '.join(details)})" if details else ""))
    failed_checks = []
    for evaluation in result.get_asset_check_evaluations():
        status = "passed" if evaluation.passed else f"FAILED ({evaluation.severity.value})"
        print(f"  check {evaluation.asset_key.to_user_string()}:{evaluation.check_name} {status}")
        if not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR:
            failed_checks.append(f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}")
    summaries = champion_summaries(result)
    for name, line in summaries.items():
        print(f"  {name}: {line}")
    if summaries:
        print(next_steps(command_prefix()))
    failures = [event for event in result.all_events if event.is_step_failure]
    for event in failures:
        error = event.step_failure_data.error
        message = error.message.strip() if error else "unknown error"
        print(f"error: step {event.step_key} failed: {message}", file=sys.stderr)
    for check in failed_checks:
        print(f"error: blocking check {check} failed", file=sys.stderr)
    if failures or failed_checks or not result.success:
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
