"""The Dagster instance the CLI and `mlops-assets dev` share: DAGSTER_HOME, or `.mlops/dagster`.

Like the warehouse (`.mlops/warehouse.db`) and MLflow (`.mlops/mlflow.db`), the embedded instance
lives under the working directory, so a run made by `mlops-assets materialize` is there for the
UI afterwards. Its `dagster.yaml` keeps SQLite storage but writes batches of asset events in one
transaction per database (see `BatchingSqliteEventLogStorage`): with Dagster's per-event writes,
a range of 800 daily partitions spent longer on bookkeeping than on the work.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import dagster as dg
from dagster._core.events import DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log import SqlEventLogStorageTable, SqliteEventLogStorage
from dagster._serdes import ConfigurableClassData

#: Relative to the working directory, like the other embedded stores.
EMBEDDED_HOME = Path(".mlops") / "dagster"

#: Events this storage writes in one transaction per database; others go one by one.
_BATCHED_TYPES = frozenset(
    {
        DagsterEventType.ASSET_MATERIALIZATION,
        DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
        DagsterEventType.ASSET_OBSERVATION,
    }
)

#: Dagster hands events to `store_event_batch` only when this is > 0 (else one write per event).
EVENT_BATCH_SIZE = "1000"


def dagster_home(environ: Mapping[str, str] | None = None) -> Path:
    """DAGSTER_HOME when set, else the absolute `.mlops/dagster` of the working directory."""
    environ = os.environ if environ is None else environ
    configured = environ.get("DAGSTER_HOME", "").strip()
    return Path(configured).expanduser().resolve() if configured else EMBEDDED_HOME.resolve()


def embedded_config(home: Path) -> str:
    """The embedded instance's dagster.yaml: SQLite under `home`, batched event writes, no telemetry."""
    return (
        "# Written by mlops-assets for the embedded instance (`mlops-assets materialize` and `mlops-assets dev`).\n"
        "# SQLite under this folder; asset events of one batch are written in one transaction.\n"
        "run_storage:\n"
        "  module: dagster._core.storage.runs\n"
        "  class: SqliteRunStorage\n"
        "  config:\n"
        f"    base_dir: {str(home / 'history')!r}\n"
        "schedule_storage:\n"
        "  module: dagster._core.storage.schedules\n"
        "  class: SqliteScheduleStorage\n"
        "  config:\n"
        f"    base_dir: {str(home / 'schedules')!r}\n"
        "event_log_storage:\n"
        "  module: mlops_assets.instance\n"
        "  class: BatchingSqliteEventLogStorage\n"
        "  config:\n"
        f"    base_dir: {str(home / 'history' / 'runs')!r}\n"
        "telemetry:\n"
        "  enabled: false\n"
    )


def prepare_home(environ: Mapping[str, str] | None = None) -> Path:
    """The instance folder; the embedded one is created with its dagster.yaml when missing.

    A DAGSTER_HOME chosen by the user is used as it is (Dagster reads its dagster.yaml, or its
    defaults when there is none); only a missing folder is an error, as Dagster makes it.
    """
    environ = os.environ if environ is None else environ
    home = dagster_home(environ)
    if environ.get("DAGSTER_HOME", "").strip():
        if not home.is_dir():
            raise FileNotFoundError(f"DAGSTER_HOME={home} is not a directory")
        return home
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(embedded_config(home))
    return home


def open_instance(environ: Mapping[str, str] | None = None) -> dg.DagsterInstance:
    """The shared instance (persistent); close it (use it as a context manager)."""
    return dg.DagsterInstance.from_config(str(prepare_home(environ)))


class BatchingSqliteEventLogStorage(SqliteEventLogStorage):
    """SQLite event log storage that stores a batch of asset events in one transaction per shard.

    Dagster's SQLite storage opens a new engine and commits twice (run shard, index shard) per
    event; a run over N daily partitions writes N "planned" events before it starts and N
    materializations at the end, so most of a long range went into commits. Dagster offers batches
    (`DAGSTER_EVENT_BATCH_SIZE`) to storages that implement `store_event_batch`; this one does,
    for materializations, planned materializations and observations, with the same rows and the
    same asset records as one-by-one writes (other events keep Dagster's path). As Dagster's
    PostgreSQL storage does for its batches, the asset record is updated once per asset and event
    type, with the batch's last event.
    """

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, str]
    ) -> BatchingSqliteEventLogStorage:
        return cls(inst_data=inst_data, **config_value)

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        kept = [event for event in events if self._keeps(event)]
        batched = [
            event
            for event in kept
            if event.dagster_event is not None and event.dagster_event.event_type in _BATCHED_TYPES
        ]
        # Run creation's batch mixes planned checks (few, with their own check tables) into the
        # planned materializations: those keep Dagster's one-by-one path.
        for event in kept:
            if event.dagster_event is None or event.dagster_event.event_type not in _BATCHED_TYPES:
                self.store_event(event)
        for run_id in dict.fromkeys(event.run_id for event in batched):
            self._store_run_batch([event for event in batched if event.run_id == run_id])

    def _keeps(self, event: EventLogEntry) -> bool:
        """SQLite does not store "failed to materialize" events (Dagster filters them the same way)."""
        return not (event.dagster_event is not None and event.dagster_event.is_asset_failed_to_materialize)

    def _store_run_batch(self, events: Sequence[EventLogEntry]) -> None:
        # The rows `store_event` would insert one by one, here in one executemany per database.
        rows = [self._event_to_row(event) for event in events]
        with self.run_connection(events[0].run_id) as conn:
            conn.execute(SqlEventLogStorageTable.insert(), rows)
        # Mirrored into the index shard (cross-run asset queries read it), as `store_event` does.
        with self.index_transaction() as conn:
            inserted = conn.execute(
                SqlEventLogStorageTable.insert().returning(SqlEventLogStorageTable.c.id, sort_by_parameter_order=True),
                rows,
            )
            event_ids = [row[0] for row in inserted]
            if len(event_ids) != len(events) or any(event_id is None for event_id in event_ids):
                raise dg.DagsterInvariantViolationError("Cannot store asset event tags for null event id.")
            self._store_asset_event_tags(conn, events, event_ids)
            for event, event_id in _last_per_asset_and_type(events, event_ids):
                self._store_asset_event(conn, event, event_id)


def _last_per_asset_and_type(
    events: Sequence[EventLogEntry], event_ids: Sequence[int]
) -> list[tuple[EventLogEntry, int]]:
    """The events whose asset-record update survives the batch, in their original order.

    Each update overwrites the record's columns for its event type (last materialization, last
    planned run, ...), so of N updates for one asset and type only the last one matters.
    """
    last: dict[tuple[str, str], int] = {}
    for index, event in enumerate(events):
        dagster_event = event.get_dagster_event()
        if dagster_event.asset_key is not None:
            last[(dagster_event.asset_key.to_string(), dagster_event.event_type_value)] = index
    return [(events[index], event_ids[index]) for index in sorted(last.values())]
