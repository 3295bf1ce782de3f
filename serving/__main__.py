"""`python -m serving [--host H] [--port P] [--workers N]`: the same as `mlops-assets serve`."""

from __future__ import annotations

import argparse

from serving.server import add_server_arguments, serve_from_arguments


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    add_server_arguments(parser)
    serve_from_arguments(parser.parse_args(argv))


if __name__ == "__main__":
    main()
