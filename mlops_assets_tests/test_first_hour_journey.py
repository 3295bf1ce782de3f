"""A newcomer's first hour, end to end through the real CLI and the real service.

Their own station file (local times with UTC offsets that change at DST, their own column names, the
index column pandas writes), ingested and trained with `mlops-assets materialize`, served with
`mlops-assets serve`, and asked for a forecast with the original API's bare list of 72 numbers.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import requests

from mlops_assets.atmos.source import load_sample_observations
from mlops_assets_tests.conftest import PIPELINE_VARIABLES

CLI = Path(sys.executable).parent / "mlops-assets"
ZONE = "America/New_York"
_CLEARED = (*PIPELINE_VARIABLES, "SERVING_MODELS")


def _station_export(path: Path) -> pd.DataFrame:
    """JFK's real 2013 hours as a weather tool exports them: local times with offsets, its own names."""
    sample = load_sample_observations("JFK")
    local = sample["time"].dt.tz_convert(ZONE)
    export = pd.DataFrame(
        {
            "Station Name": "JFK INTL",
            "Date": local.map(lambda t: t.isoformat()),  # 2013-03-10T01:00:00-05:00, then -04:00 after DST
            "Temperature": sample["tmp"].round(1),
            "Remarks": "",
        }
    )
    export.to_csv(path)  # with pandas' unnamed index column
    return sample


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_own_station_file_to_a_forecast_with_the_bare_list(tmp_path: Path) -> None:
    csv_path = tmp_path / "my_station.csv"
    sample = _station_export(csv_path)
    assert "-05:00" in csv_path.read_text() and "-04:00" in csv_path.read_text()
    env = {name: value for name, value in os.environ.items() if name not in _CLEARED}
    env.update(
        ATMOS_SOURCE="csv",
        ATMOS_CSV_PATH=str(csv_path),
        ATMOS_CSV_COLUMNS="time=Date,tmp=Temperature",
        ATMOS_TIMEZONE=ZONE,
        TUNING_NUM_SAMPLES="6",
        OMP_NUM_THREADS="1",
    )
    trained = subprocess.run(
        [str(CLI), "materialize", "--start", "2013-01-01", "--end", "2013-06-30", "--select", "group:atmos"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "atmos_temperature: promoted v1" in trained.stdout, trained.stdout[-3000:]

    port = _free_port()
    server = subprocess.Popen(
        [str(CLI), "serve", "--port", str(port), "--workers", "1"],  # every model configured; only one has a champion
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        ready = None
        while time.monotonic() < deadline:
            try:
                ready = requests.get(f"{base}/ready", timeout=5)
                if ready.status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):
                pass  # the socket is bound before start-up ends: not up yet
            assert server.poll() is None, server.stdout.read() if server.stdout else "the service exited"
            time.sleep(0.5)
        assert ready is not None and ready.status_code == 200, ready.text if ready is not None else "no answer"
        assert "atmos_temperature" in ready.text

        last_72 = [float(v) for v in sample["tmp"].tail(72).interpolate().round(1)]
        before = pd.Timestamp.now(tz="UTC").floor("h")
        answer = requests.put(f"{base}/predict/atmos_temperature", json=last_72, timeout=10)
        after = pd.Timestamp.now(tz="UTC").floor("h")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert len(body["result"]) == 24 and all(-40 < value < 50 for value in body["result"])
        hours = [pd.Timestamp(text) for text in body["hours"]]
        assert all(hour.tzinfo is not None for hour in hours)
        assert hours[0] - dt.timedelta(hours=1) in (before, after)  # the window ends at the latest whole UTC hour
        assert [b - a for a, b in itertools.pairwise(hours)] == [dt.timedelta(hours=1)] * 23
        assert body["model"]["version"] in ("1", 1)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
