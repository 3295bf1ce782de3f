"""Drift of what is served against what the champion was trained on (pure NumPy/SciPy).

Each input hour is counted once on both sides: a served request repeats the 71 hours of the
previous one, and overlapping training windows repeat every hour 72 times; counting repeats would
make the KS p-value look far more certain than the data is. Served hours are placed in time from
`last_observed_at`; training hours from each window's last input hour.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

#: Population Stability Index conventions: < 0.1 stable, 0.1-0.25 moderate, > 0.25 major shift.
DEFAULT_PSI_THRESHOLD = 0.25
DEFAULT_P_THRESHOLD = 0.01
PSI_BINS = 10
_EPS = 1e-4


@dataclass(frozen=True)
class VariableDrift:
    """The numbers for one variable (served vs reference), and whether they count as drift."""

    served_hours: int
    reference_hours: int
    ks_statistic: float
    ks_pvalue: float
    psi: float
    served_mean: float
    reference_mean: float
    outside_reference_range: float  # fraction of served values outside the reference min..max
    drifted: bool

    def as_dict(self) -> dict[str, float | int | bool]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def psi(reference: np.ndarray, served: np.ndarray, bins: int = PSI_BINS) -> float:
    """PSI over the reference's quantile bins (open-ended outer bins); empty bins get a small floor."""
    reference = np.asarray(reference, dtype="float64")
    served = np.asarray(served, dtype="float64")
    if reference.size == 0 or served.size == 0:
        raise ValueError("PSI needs values on both sides")
    inner = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    edges = np.concatenate([[-np.inf], inner, [np.inf]])
    expected = np.histogram(reference, edges)[0] / reference.size
    actual = np.histogram(served, edges)[0] / served.size
    expected = np.clip(expected, _EPS, None)
    actual = np.clip(actual, _EPS, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def compare(
    reference: np.ndarray,
    served: np.ndarray,
    psi_threshold: float = DEFAULT_PSI_THRESHOLD,
    p_threshold: float = DEFAULT_P_THRESHOLD,
) -> VariableDrift:
    """KS and PSI; drift when the shift is both large (PSI) and not chance (KS p-value)."""
    reference = np.asarray(reference, dtype="float64")
    served = np.asarray(served, dtype="float64")
    reference = reference[np.isfinite(reference)]
    served = served[np.isfinite(served)]
    if reference.size == 0 or served.size == 0:
        raise ValueError(f"drift needs values on both sides (reference {reference.size}, served {served.size})")
    ks = stats.ks_2samp(reference, served)
    value = psi(reference, served)
    outside = float(np.mean((served < reference.min()) | (served > reference.max())))
    return VariableDrift(
        served_hours=int(served.size),
        reference_hours=int(reference.size),
        ks_statistic=float(ks.statistic),
        ks_pvalue=float(ks.pvalue),
        psi=value,
        served_mean=float(served.mean()),
        reference_mean=float(reference.mean()),
        outside_reference_range=outside,
        drifted=bool(value > psi_threshold and ks.pvalue < p_threshold),
    )


def hourly_values(windows: np.ndarray, last_epoch_hours: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
    """One value per distinct hour from (n, k) windows whose last column is at `last_epoch_hours`.

    When two windows disagree about an hour (a client sent other numbers), the window later in
    `order` (default: row order) wins.
    """
    windows = np.asarray(windows, dtype="float64")
    if windows.ndim != 2 or len(windows) != len(last_epoch_hours):
        raise ValueError(f"windows must be (n, k) with n == len(last_epoch_hours), got {windows.shape}")
    n, k = windows.shape
    if n == 0:
        return np.empty(0)
    rows = np.arange(n) if order is None else np.argsort(order, kind="stable")
    hours = np.asarray(last_epoch_hours, dtype="int64")[rows, None] - np.arange(k - 1, -1, -1)
    flat_hours = hours.ravel()[::-1]
    flat_values = windows[rows].ravel()[::-1]
    _, first = np.unique(flat_hours, return_index=True)  # first in reversed order = latest window
    return flat_values[first]


def served_drift(
    reference: Mapping[str, np.ndarray],
    served: Mapping[str, np.ndarray],
    psi_threshold: float = DEFAULT_PSI_THRESHOLD,
    p_threshold: float = DEFAULT_P_THRESHOLD,
) -> dict[str, VariableDrift]:
    """Per variable present on both sides (hourly values already de-duplicated)."""
    return {
        name: compare(reference[name], served[name], psi_threshold, p_threshold)
        for name in sorted(set(reference) & set(served))
        if len(reference[name]) and len(served[name])
    }


def drifted_variables(results: Mapping[str, VariableDrift]) -> Sequence[str]:
    return sorted(name for name, result in results.items() if result.drifted)
