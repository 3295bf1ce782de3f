"""Benchmark: backfill a year of the sample source in one run, on SQLite and on PostgreSQL.

Run: `.venv/bin/python bench/ingestion_backfill.py` (PostgreSQL on 127.0.0.1:5432 for the second
row). Writes bench/results/ingestion_backfill.md. Target: a year in under 60 s on 2 cores.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
import uuid
from pathlib import Path

import dagster as dg
import sqlalchemy as sa
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from mlops_assets.atmos.assets import atmos_features, raw_atmos_observations
from mlops_assets.atmos.source import SampleObservationSource
from mlops_assets.resources.warehouse import WarehouseResource

RESULTS = Path(__file__).parent / "results" / "ingestion_backfill.md"
POSTGRES = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


def backfill(url: str) -> tuple[float, float, int]:
    """Seconds for the raw year, seconds for the features, rows stored."""
    warehouse = WarehouseResource(url=url)
    resources = {"source": SampleObservationSource(), "warehouse": warehouse}
    tags = {ASSET_PARTITION_RANGE_START_TAG: "2013-01-01", ASSET_PARTITION_RANGE_END_TAG: "2013-12-31"}
    with dg.instance_for_test() as instance:
        began = time.perf_counter()
        assert dg.materialize([raw_atmos_observations], resources=resources, instance=instance, tags=tags).success
        raw_seconds = time.perf_counter() - began
        began = time.perf_counter()
        assert dg.materialize([atmos_features], resources=resources, instance=instance).success
        feature_seconds = time.perf_counter() - began
    return raw_seconds, feature_seconds, len(warehouse.read_observations("JFK"))


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        rows.append(("SQLite", *backfill(f"sqlite:///{folder}/warehouse.db")))
    name = f"bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        rows.append(("PostgreSQL", *backfill(POSTGRES.rsplit("/", 1)[0] + f"/{name}")))
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    lines = [
        "# Backfill of one year (365 daily partitions, sample source JFK 2013) in one run",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}. "
        "Command: `.venv/bin/python bench/ingestion_backfill.py`. In-process `materialize`, fresh instance.",
        "",
        "| warehouse | raw_atmos_observations, 365 partitions (s) | atmos_features (s) | rows |",
        "|---|---|---|---|",
        *[f"| {db} | {raw:.1f} | {features:.1f} | {count} |" for db, raw, features, count in rows],
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
