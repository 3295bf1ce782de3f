"""Load generators for the serving benchmark: wrk when installed, else a raw-socket asyncio client.

Both keep `concurrency` keep-alive connections busy for `duration` seconds, one request in flight
per connection, and report requests/s, p50/p99 latency and errors (non-2xx, socket errors).
Traffic only ever goes to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"


@dataclass
class LoadResult:
    concurrency: int
    seconds: float
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    tool: str
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def run_load(
    port: int,
    method: str,
    path: str,
    body: bytes,
    concurrency: int,
    seconds: float,
    tool: str = "auto",
    rate: float | None = None,
) -> LoadResult:
    """Closed loop (`rate` None: each connection sends as soon as it has its answer) or Poisson
    arrivals at `rate` requests/s spread over `concurrency` connections (wrk only)."""
    if tool == "auto":
        tool = "wrk" if have_wrk() else "python"
    if tool == "wrk":
        return _wrk(port, method, path, body, concurrency, seconds, rate)
    if rate is not None:
        raise ValueError("Poisson arrivals need wrk (apt-get install wrk)")
    return _python(port, method, path, body, concurrency, seconds)


_WRK_SCRIPT = """
wrk.method = "{method}"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("{body_file}", "rb")
wrk.body = f:read("*all")
f:close()
"""

#: Open-loop-ish Poisson arrivals: each connection waits an exponential time (mean
#: connections / rate) before each request, so the merged arrivals approach a Poisson process of
#: `rate` while latency stays well below the mean gap (wrk leaves the wait out of the latency).
_WRK_POISSON = """
local mean_ms = {mean_ms}
function init(args)
  math.randomseed(os.time() * 1000 + math.floor(os.clock() * 1e6))
end
function delay()
  return -math.log(1 - math.random()) * mean_ms
end
"""

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _wrk(
    port: int, method: str, path: str, body: bytes, concurrency: int, seconds: float, rate: float | None = None
) -> LoadResult:
    with tempfile.TemporaryDirectory() as tmp:
        body_file = Path(tmp) / "body.json"
        body_file.write_bytes(body)
        script = Path(tmp) / "req.lua"
        lua = _WRK_SCRIPT.format(method=method, body_file=body_file)
        if rate is not None:
            lua += _WRK_POISSON.format(mean_ms=repr(concurrency / rate * 1e3))
        script.write_text(lua)
        out = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{concurrency}",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                "30s",
                "--latency",
                "-s",
                str(script),
                f"http://{HOST}:{port}{path}",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 60,
        ).stdout
    if "Latency Distribution" not in out:
        raise RuntimeError(f"wrk output without latencies:\n{out}")

    def find(pattern: str) -> str:
        match = re.search(pattern, out, re.M)
        if match is None:
            raise RuntimeError(f"wrk output without {pattern!r}:\n{out}")
        return match.group(1)

    requests = int(find(r"(\d+) requests in"))
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(g) for g in m.groups())
    return LoadResult(
        concurrency=concurrency,
        seconds=seconds,
        requests=requests,
        rps=float(find(r"Requests/sec:\s+([\d.]+)")),
        p50_ms=_ms(find(r"^\s+50%\s+(\S+)\s*$")),
        p99_ms=_ms(find(r"^\s+99%\s+(\S+)\s*$")),
        errors=errors,
        tool="wrk" if rate is None else f"wrk, Poisson {rate:.0f}/s",
    )


def _python(port: int, method: str, path: str, body: bytes, concurrency: int, seconds: float) -> LoadResult:
    """One process, asyncio, raw HTTP/1.1 over keep-alive sockets; pinned to the last core while it runs.

    The pin is undone before returning: servers started later by the caller inherit its affinity, and
    pinned they shared one core with the client (every server after the first ran ~2.4x slower).
    """
    pinned = hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1
    previous = os.sched_getaffinity(0) if pinned else set()
    if pinned:
        os.sched_setaffinity(0, {(os.cpu_count() or 1) - 1})
    try:
        return _python_pinned(port, method, path, body, concurrency, seconds)
    finally:
        if pinned:
            os.sched_setaffinity(0, previous)


def _python_pinned(port: int, method: str, path: str, body: bytes, concurrency: int, seconds: float) -> LoadResult:
    request = (
        f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    errors = 0

    async def connection(deadline: float) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - start)
                if not head.startswith((b"HTTP/1.1 2", b"HTTP/1.0 2")):
                    errors += 1
        except (OSError, asyncio.IncompleteReadError):
            errors += 1
        finally:
            writer.close()

    async def main() -> float:
        start = time.perf_counter()
        await asyncio.gather(*(connection(start + seconds) for _ in range(concurrency)))
        return time.perf_counter() - start

    elapsed = asyncio.run(main())
    ordered = sorted(latencies)
    return LoadResult(
        concurrency=concurrency,
        seconds=elapsed,
        requests=len(ordered),
        rps=len(ordered) / elapsed,
        p50_ms=statistics.median(ordered) * 1e3 if ordered else float("nan"),
        p99_ms=ordered[int(len(ordered) * 0.99)] * 1e3 if ordered else float("nan"),
        errors=errors,
        tool="python",
    )
