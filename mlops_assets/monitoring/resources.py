"""Monitoring thresholds as a typed resource.

Defaults here; override them in `Definitions(resources=...)` or the launchpad.
"""

import dagster as dg
from pydantic import Field

from mlops_assets.monitoring.drift import DEFAULT_P_THRESHOLD, DEFAULT_PSI_THRESHOLD

MONITORING_GROUP = "monitoring"


class MonitoringSettings(dg.ConfigurableResource):
    """How sure the monitors must be before they warn or retrain."""

    degradation_margin: float = Field(
        default=0.25, description="retrain when realized MAE > test MAE x (1 + margin) ...", ge=0.0
    )
    degradation_min_days: int = Field(default=3, description="... on this many consecutive scored days", ge=1)
    drift_lookback_days: float = Field(
        default=7.0, description="served inputs of the last N days (by received_at)", gt=0
    )
    drift_psi_threshold: float = Field(default=DEFAULT_PSI_THRESHOLD, description="PSI above this ...", gt=0)
    drift_ks_pvalue: float = Field(
        default=DEFAULT_P_THRESHOLD, description="... and KS p-value below this is drift", gt=0, lt=1
    )
