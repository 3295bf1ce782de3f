"""Dagster's PostgreSQL event log storage with a race-free claim of a concurrency pool's slot.

The tuning assets share a pool limited to one slot (`SEARCH_POOL`, `dagster.yaml`), so that two
runs never search at once. Dagster 1.13's PostgreSQL storage claims a slot with a
`SELECT ... FOR UPDATE SKIP LOCKED` and then an `UPDATE ... WHERE id = <that slot>` on an
AUTOCOMMIT connection: the row lock ends with the SELECT and the UPDATE does not check that the
slot is still free, so two steps claiming within a few milliseconds both got the one slot and two
searches ran together (seen in CI: they began 0.6 ms apart). Here the claim is one transaction
whose UPDATE takes the slot only if it is still free.

Configured as `event_log_storage` in `dagster.yaml` and in the Helm chart's instance ConfigMap.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from dagster._core.storage.event_log.schema import ConcurrencySlotsTable
from dagster._utils.concurrency import ConcurrencySlotStatus
from dagster_postgres import PostgresEventLogStorage
from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config


class PoolSafePostgresEventLogStorage(PostgresEventLogStorage):
    """`PostgresEventLogStorage` whose pool slots are claimed atomically (see the module doc)."""

    @classmethod
    def from_config_value(cls, inst_data: Any, config_value: Mapping[str, Any]) -> PoolSafePostgresEventLogStorage:
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )

    def _claim_concurrency_slot(self, concurrency_key: str, run_id: str, step_key: str) -> ConcurrencySlotStatus:
        slots = ConcurrencySlotsTable
        with self.index_transaction() as conn:  # the row lock of the SELECT lasts until the UPDATE commits
            slot_id = conn.execute(
                sa.select(slots.c.id)
                .where(
                    slots.c.concurrency_key == concurrency_key, slots.c.step_key.is_(None), slots.c.deleted.is_(False)
                )
                .with_for_update(skip_locked=True)
                .limit(1)
            ).scalar()
            if slot_id is None:
                return ConcurrencySlotStatus.BLOCKED
            taken = conn.execute(
                slots.update()
                .values(run_id=run_id, step_key=step_key)
                .where(slots.c.id == slot_id, slots.c.step_key.is_(None))
            ).rowcount
        return ConcurrencySlotStatus.CLAIMED if taken else ConcurrencySlotStatus.BLOCKED
