"""`python -m serving [--host H] [--port P] [--workers N]`: the same as `mlops-assets serve`."""

from __future__ import annotations

import argparse
import os

from serving.server import run
from serving.settings import ServingSettings


def main(argv: list[str] | None = None) -> None:
    defaults = ServingSettings.from_env()
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    parser.add_argument("--host", default=defaults.host, help="listen address (SERVING_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=defaults.port, help="listen port (SERVING_PORT, default 8000)")
    parser.add_argument(
        "--workers",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="worker processes (default: one per available core)",
    )
    args = parser.parse_args(argv)
    run(args.host, args.port, args.workers)


if __name__ == "__main__":
    main()
