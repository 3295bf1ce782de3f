"""One search at a time: the tuning assets share a Dagster concurrency pool limited to 1 by the
production dagster.yaml, so a second run waits at that step instead of starting a second search.

Runs against a real Dagster instance built from the repository's dagster.yaml on the real
PostgreSQL (its own database), with two runs launched at the same moment from two threads.
"""


import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from mlops_assets.constants import SEARCH_POOL
from mlops_assets_tests.conftest import _fresh_database

DAGSTER_YAML = Path(__file__).resolve().parents[1] / "dagster.yaml"
HOLD_SECONDS = 3.0

pytestmark = pytest.mark.postgres


@pytest.fixture
def production_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """DAGSTER_HOME holding a copy of the top-level dagster.yaml, on a fresh PostgreSQL database."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DAGSTER_YAML, home / "dagster.yaml")
    with _fresh_database("mlops_pool") as database:
        url = sa.make_url(database)
        monkeypatch.setenv("DAGSTER_HOME", str(home))
        for name, value in {
            "DAGSTER_PG_HOST": url.host, "DAGSTER_PG_PORT": str(url.port), "DAGSTER_PG_USER": url.username,
            "DAGSTER_PG_PASSWORD": url.password or "", "DAGSTER_PG_DB": url.database,
        }.items():
            monkeypatch.setenv(name, str(value))
        yield home


def test_the_production_instance_limits_the_search_pool_to_one(production_home: Path) -> None:
    with dg.DagsterInstance.from_config(str(production_home)) as instance:
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert instance.event_log_storage.supports_global_concurrency_limits
        concurrency = instance.get_concurrency_config()
        assert concurrency.pool_config.default_pool_limit == 1
        assert concurrency.run_queue_config is not None and concurrency.run_queue_config.max_concurrent_runs == 2


def _search_like_asset(spans: dict[str, tuple[float, float]]) -> dg.AssetsDefinition:
    """A stand-in for a tuning asset: same pool, holds it a few seconds, records when it ran."""

    @dg.asset(pool=SEARCH_POOL)
    def search_like(context: dg.AssetExecutionContext) -> None:
        began = time.monotonic()
        time.sleep(HOLD_SECONDS)
        spans[context.run_id] = (began, time.monotonic())

    return search_like


def test_two_runs_launched_together_take_turns_in_the_search_pool(production_home: Path) -> None:
    spans: dict[str, tuple[float, float]] = {}
    asset = _search_like_asset(spans)
    results: dict[int, dg.ExecuteInProcessResult] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def launch(index: int) -> None:
        try:
            with dg.DagsterInstance.from_config(str(production_home)) as instance:
                start.wait()
                results[index] = dg.materialize([asset], instance=instance, raise_on_error=False)
        except BaseException as error:  # surfaced below, with the thread's traceback
            errors.append(error)

    threads = [threading.Thread(target=launch, args=(index,)) for index in range(2)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert not errors, errors
    assert len(results) == 2 and all(result.success for result in results.values())

    first, second = sorted(spans.values())
    assert second[0] >= first[1] - 0.05, f"the two searches overlapped: {first} {second}"
    assert time.monotonic() - began >= 2 * HOLD_SECONDS

    with dg.DagsterInstance.from_config(str(production_home)) as instance:
        info = instance.event_log_storage.get_concurrency_info(SEARCH_POOL)
        assert info.slot_count == 1 and not info.active_slot_count and not info.pending_step_count
        # The run that waited said so in its event log.
        waited = [
            result.run_id
            for result in results.values()
            if any("concurrency" in (event.message or "").lower() for event in instance.all_logs(result.run_id))
        ]
        assert len(waited) == 1, waited


def test_the_tuning_assets_use_the_search_pool() -> None:
    """The real tuning assets are in the pool the instance limits (one search at a time)."""
    from mlops_assets.insurance.assets import insurance_tuned_model
    from mlops_assets.training.assets import atmos_tuned_model

    for asset in (atmos_tuned_model, insurance_tuned_model):
        assert asset.op.pool == SEARCH_POOL, asset.key
