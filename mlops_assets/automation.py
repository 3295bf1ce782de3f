"""When the daemon materializes what, without a person: automation conditions and their sensor."""

import dagster as dg

#: For an unpartitioned asset fed by daily partitions: run when any partition was updated.
#: `eager()` alone also waits until no upstream partition is missing, and partitions back to
#: 2000-01-01 that were never ingested would keep it waiting forever.
ON_NEW_PARTITIONS = dg.AutomationCondition.eager().without(~dg.AutomationCondition.any_deps_missing())

#: Dagster creates its default automation sensor stopped; this one runs from the first start.
automation_sensor = dg.AutomationConditionSensorDefinition(
    "automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Evaluates every asset's automation condition: new observations -> features -> search -> promotion.",
)
