"""Run the service: `run(host, port, workers)`, what `mlops-assets serve` calls.

uvicorn (uvloop event loop, httptools parser, one socket write per response: `serving.http_protocol`),
`workers` processes, each with its own SO_REUSEPORT listening socket (see `OwnSocketPerWorker`).
Measured against Granian in bench/README.md: on this 2-core machine uvicorn + uvloop answered
about 1.5x the requests at concurrency 8 and half the latency at concurrency 1.

The socket is made here with `IPPROTO_TCP`: uvicorn's own shared socket (`--workers >= 2`) is
created without it, so asyncio's transports never set TCP_NODELAY on accepted connections and
every response then waits ~44 ms on Nagle + delayed ACK (measured: 23 req/s at concurrency 1).
uvloop sets TCP_NODELAY itself, but the fix keeps the stall away whatever the loop.

Each worker is a separate (spawned) process running `serving.app:create_app()`, so each reads the
environment, polls the registry and holds its own copy of the champion. With workers > 1 the
Prometheus metrics are merged across workers through `PROMETHEUS_MULTIPROC_DIR` (see
`serving.metrics`); this function creates a fresh directory for it unless one is set.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import BaseSettings

from serving.settings import PROMETHEUS_MULTIPROC_ENV, ServingSettings, default_workers

APP_FACTORY = "serving.app:create_app"
#: One BLAS/OpenMP thread per worker: a one-row prediction gains nothing from more, and with
#: workers = cores more threads only fight over the cores (a boosted champion: 4.1 ms -> 2.9 ms).
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
#: MLflow's HTTP client reads its timeout and retries only from the environment: bounded here, so a
#: slow or down HTTP registry cannot stall a poll for minutes (MLflow's default retries back off
#: for ~2 min); the poller retries every SERVING_POLL_SECONDS anyway. A value the user set wins.
MLFLOW_CLIENT_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
log = logging.getLogger(__name__)


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """`--host`, `--port` and `--workers`, the same for `mlops-assets serve` and `python -m serving`."""
    parser.add_argument("--host", help="listen address (default: SERVING_HOST, else 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default: SERVING_PORT, else 8000)")
    parser.add_argument(
        "--workers", type=int, default=default_workers(), help="worker processes (default: one per available core)"
    )


def serve_from_arguments(args: argparse.Namespace) -> None:
    """Serve on the command line's address, else the environment's; the settings are validated here first."""
    given = {name: getattr(args, name) for name in ("host", "port") if getattr(args, name) is not None}
    settings = ServingSettings(**given)  # a bad SERVING_* value stops the start here, not in every worker
    run(settings.host, settings.port, args.workers)


def settings_error_lines(error: ValidationError, settings_class: type[BaseSettings]) -> list[str]:
    """`<VARIABLE>: <reason>` per problem in `settings_class`'s validation error, for a person at a shell.

    A problem with no single field (a rule across fields) is its reason alone, which names the
    variables. The offending value is shown unless the field hides it (`repr=False`: URLs, tokens).
    """
    by_key = dict(settings_class.model_fields)
    by_key.update(
        {
            field.validation_alias: field
            for field in settings_class.model_fields.values()
            if isinstance(field.validation_alias, str)
        }
    )
    lines = []
    for problem in error.errors(include_url=False):
        given_by_validator = problem["type"] == "value_error" and "error" in problem.get("ctx", {})
        reason = str(problem["ctx"]["error"]) if given_by_validator else problem["msg"]
        if not problem["loc"]:
            lines.append(reason)
            continue
        key = str(problem["loc"][0])
        field = by_key.get(key)
        variable = field.validation_alias if field is not None and isinstance(field.validation_alias, str) else key
        if not given_by_validator and field is not None and field.repr:
            reason = f"{reason} (got {problem['input']!r})"
        lines.append(f"{variable}: {reason}")
    return lines


def report_settings_error(error: ValidationError, settings_class: type[BaseSettings]) -> int:
    """Print `error: <VARIABLE>: <reason>` lines to stderr instead of a traceback; the exit code (2)."""
    for line in settings_error_lines(error, settings_class):
        print(f"error: {line}", file=sys.stderr)
    return 2


def run(host: str, port: int, workers: int) -> None:
    """Serve until SIGTERM/SIGINT; blocks. uvicorn restarts a worker that dies."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    entry_point_environment(os.environ)  # inherited by the workers before they import NumPy or MLflow
    own_metrics_dir = _prepare_metrics_dir() if workers > 1 else None

    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from serving.http_protocol import OneWriteHttpToolsProtocol

    config = uvicorn.Config(
        APP_FACTORY,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http=OneWriteHttpToolsProtocol,  # httptools, one socket write per response
        lifespan="on",
        access_log=False,
        log_config=_log_config(),
    )
    try:
        if workers == 1:
            with tcp_socket(host, port) as sock:
                uvicorn.Server(config).run(sockets=[sock])
        elif hasattr(socket, "SO_REUSEPORT"):
            with tcp_socket(host, port) as probe:  # the port is free (a clear error here, not in every worker)
                port = probe.getsockname()[1]  # and port 0 picks one port for all workers
            Multiprocess(config, sockets=OwnSocketPerWorker(host, port)).run()
        else:  # no SO_REUSEPORT (Windows): one socket shared by the workers
            with tcp_socket(host, port) as sock:
                Multiprocess(config, sockets=[sock]).run()
    finally:
        if own_metrics_dir is not None:
            shutil.rmtree(own_metrics_dir, ignore_errors=True)


def entry_point_environment(environ: MutableMapping[str, str]) -> None:
    """The variables the entry point sets for itself and its workers; a value already set wins.

    Here and not in `create_app`: an app built in-process (tests, another server) must leave the
    process environment as it found it.
    """
    for variable in _THREAD_VARIABLES:
        environ.setdefault(variable, "1")
    for variable, value in MLFLOW_CLIENT_DEFAULTS.items():
        environ.setdefault(variable, value)


def tcp_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A listening socket whose accepted connections get TCP_NODELAY (proto = IPPROTO_TCP)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)[
        0
    ]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(2048)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


class OwnSocketPerWorker(list[socket.socket]):
    """The `sockets` uvicorn's supervisor hands every worker it starts: in the worker, its own
    SO_REUSEPORT listening socket on (host, port).

    With one socket shared by all workers, whichever worker wakes first accepts every connection
    waiting: measured here, wrk's 8 connections sometimes all went to one worker, which answered
    for both while the other idled (a ridge forecast at 3,481 req/s instead of ~5,300;
    bench/README.md). With a socket per worker the kernel spreads new connections over the
    workers' sockets by a hash of the addresses (nginx's `reuseport`). The sockets are made in the
    workers, none in the supervisor: a worker that dies takes its socket with it, and new
    connections go to the sockets still listening instead of waiting on one nobody accepts from.

    uvicorn pickles `sockets` into each worker it spawns (start, restart of a dead worker, SIGHUP,
    SIGTTIN); this list pickles as the address and unpickles, in the worker, as the new socket.
    """

    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self.host, self.port = host, port

    def __reduce__(self) -> tuple[Any, tuple[str, int]]:
        return _listen_in_worker, (self.host, self.port)


def _listen_in_worker(host: str, port: int) -> list[socket.socket]:
    try:
        return [tcp_socket(host, port, reuse_port=True)]
    except OSError as error:
        from uvicorn.config import STARTUP_FAILURE

        print(f"error: worker {os.getpid()} cannot listen on {host}:{port}: {error}", file=sys.stderr)
        sys.exit(STARTUP_FAILURE)  # uvicorn's supervisor then stops instead of restarting it forever


def _log_config() -> dict[str, Any]:
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["default"]["fmt"] = "%(asctime)s %(levelprefix)s %(name)s: %(message)s"
    config["loggers"]["serving"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def _prepare_metrics_dir() -> Path | None:
    """Point multiprocess metrics at an empty directory; returns it when we created it (to delete)."""
    given = os.environ.get(PROMETHEUS_MULTIPROC_ENV)
    if given:
        # Files left by an earlier run would be summed into this one's counters.
        directory = Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
        return None
    created = Path(tempfile.mkdtemp(prefix="serving-metrics-"))
    os.environ[PROMETHEUS_MULTIPROC_ENV] = str(created)
    return created
