"""Run `serving.app:create_app` under Granian, for the server comparison in the benchmark only.

`python bench/serving/granian_launcher.py PORT WORKERS`. Granian forks its workers, so the app's
imports are done once here first (shared copy-on-write), as a Granian deployment would.
"""

from __future__ import annotations

import os
import sys
import tempfile


def main() -> None:
    port, workers = int(sys.argv[1]), int(sys.argv[2])
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")
    if workers > 1:
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="bench-granian-metrics-"))
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces, Loops

    import serving.app  # noqa: F401
    from serving.models import get_module

    get_module("atmos_temperature")
    Granian(
        "serving.app:create_app",
        factory=True,
        address="127.0.0.1",
        port=port,
        workers=workers,
        interface=Interfaces.ASGI,
        http=HTTPModes.http1,
        loop=Loops.uvloop,
        log_access=False,
    ).serve()


if __name__ == "__main__":
    main()
