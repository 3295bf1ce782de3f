"""`mlops-assets`: run the pipeline from a shell, without a Dagster daemon or webserver."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from collections.abc import Sequence

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

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
    champion.add_argument("--model", default="atmos_temperature", help="registered model name")
    champion.add_argument("--rollback", metavar="VERSION", help="move the champion alias to this version")
    champion.add_argument("--reason", default="manual rollback", help="why (recorded on the version)")

    example = commands.add_parser("example-request", help="print a forecast request built from the stored data")
    example.add_argument("--model", default="atmos_temperature", help="registered model name")

    serve = commands.add_parser("serve", help="start the prediction service")
    serve.add_argument("--host", default=os.environ.get("SERVING_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("SERVING_PORT", "8000")))
    serve.add_argument("--workers", type=int, default=1, help="worker processes (2 uses both cores here)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "materialize":
        return materialize(args.select, args.start, args.end)
    if args.command == "champion":
        from mlops_assets.promotion.champion_cli import rollback, show_champion

        if args.rollback:
            return rollback(args.model, args.rollback, args.reason)
        return show_champion(args.model)
    if args.command == "example-request":
        from mlops_assets.promotion.champion_cli import example_request

        return example_request(args.model)
    if args.command == "serve":
        from serving.server import run

        run(host=args.host, port=args.port, workers=args.workers)
        return 0
    raise AssertionError(f"unhandled command {args.command}")


def _instance(scratch_dir: str) -> dg.DagsterInstance:
    """The instance of DAGSTER_HOME, or a throw-away one in `scratch_dir` when it is unset."""
    if os.environ.get("DAGSTER_HOME"):
        return dg.DagsterInstance.get()
    return dg.DagsterInstance.local_temp(scratch_dir)


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
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mlops-assets-") as scratch_dir, _instance(scratch_dir) as instance:
        result = job.execute_in_process(instance=instance, tags=tags, raise_on_error=False)
        return _report(result, time.monotonic() - began)


SERVE_HINT = """
Serve the champions (reloads by itself when the alias moves):
    mlops-assets serve --port 8000
Ask for tomorrow's temperatures (the body holds the last 72 hours of the sample, and what the
champion's features need):
    mlops-assets example-request > request.json
    curl -s -X PUT http://127.0.0.1:8000/predict/atmos_temperature -H 'Content-Type: application/json' -d @request.json"""

CHAMPION_ASSETS = {"atmos_champion_model": "atmos_temperature", "insurance_champion_model": "insurance_charges"}


def champion_summaries(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    """One line per promotion step that ran: decision, versions, scores against the baselines."""
    lines = {}
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        asset = materialization.asset_key.to_user_string()
        if asset not in CHAMPION_ASSETS:
            continue
        metadata = {key: value.value for key, value in materialization.metadata.items()}
        scores = ", ".join(f"{key.removeprefix('baseline_')} {value}" for key, value in metadata.items() if key.startswith("baseline_"))
        before = metadata.get("champion_test_mae_same_holdout")
        lines[CHAMPION_ASSETS[asset]] = (
            f"{metadata['decision']} v{metadata['registered_version']}: {metadata['reason']}\n"
            f"    champion now: v{metadata['champion_version']}; test MAE of the challenger "
            f"{metadata['challenger_test_mae']}, of the previous champion {before if before is not None else '-'}; "
            f"baselines: {scores}"
        )
    return lines


def _report(result: dg.ExecuteInProcessResult, seconds: float) -> int:
    """Print a summary to stdout and failures to stderr; the exit status for the shell."""
    print(f"\nrun {result.run_id} finished in {seconds:.1f} s")
    partitions_by_asset: dict[str, int] = {}
    rows_by_asset: dict[str, object] = {}
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        name = materialization.asset_key.to_user_string()
        partitions_by_asset[name] = partitions_by_asset.get(name, 0) + 1
        row_count = materialization.metadata.get("dagster/row_count")
        if row_count is not None:
            rows_by_asset[name] = row_count.value
    for name, count in partitions_by_asset.items():
        detail = f"{count} partitions, " if count > 1 else ""
        detail += f"{rows_by_asset[name]} rows" if name in rows_by_asset else ""
        print(f"  materialized {name}" + (f" ({detail.rstrip(', ')})" if detail else ""))
    failed_checks = []
    for event in result.get_asset_check_evaluations():
        status = "passed" if event.passed else f"FAILED ({event.severity.value})"
        print(f"  check {event.asset_key.to_user_string()}:{event.check_name} {status}")
        if not event.passed and event.severity == dg.AssetCheckSeverity.ERROR:
            failed_checks.append(f"{event.asset_key.to_user_string()}:{event.check_name}")
    summaries = champion_summaries(result)
    for name, line in summaries.items():
        print(f"  {name}: {line}")
    if summaries:
        print(SERVE_HINT)
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
