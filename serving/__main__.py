"""`python -m serving [--host H] [--port P] [--workers N]`: the same as `mlops-assets serve`."""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from serving.server import add_server_arguments, report_settings_error, serve_from_arguments
from serving.settings import ServingSettings


def main(argv: list[str] | None = None) -> int:
    """Serve until stopped (0); a bad setting is one line per problem on stderr and exit code 2."""
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    add_server_arguments(parser)
    args = parser.parse_args(argv)
    try:
        serve_from_arguments(args)
    except ValidationError as error:
        if error.title != ServingSettings.__name__:
            raise
        return report_settings_error(error, ServingSettings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
