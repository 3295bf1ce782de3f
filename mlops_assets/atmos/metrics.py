"""Forecast errors and the baselines every model must beat (pure NumPy)."""

from __future__ import annotations

import numpy as np

from mlops_assets.atmos.dataset import WindowSet


def per_horizon_mae(predictions: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Mean absolute error for each of the 24 lead hours, shape (24,)."""
    predictions = np.asarray(predictions, dtype="float64")
    if predictions.shape != targets.shape:
        raise ValueError(f"predictions {predictions.shape} do not match targets {targets.shape}")
    return np.mean(np.abs(predictions - targets), axis=0)


def mae(predictions: np.ndarray, targets: np.ndarray) -> float:
    """MAE averaged over all windows and the 24 horizons (degrees C)."""
    return float(np.mean(per_horizon_mae(predictions, targets)))


def persistence_forecast(windows: WindowSet) -> np.ndarray:
    """Tomorrow equals the last observed hour, for every lead hour."""
    return np.repeat(windows.temperatures[:, -1:], windows.targets.shape[1], axis=1)


def seasonal_naive_forecast(windows: WindowSet) -> np.ndarray:
    """Each of the next 24 hours equals the same hour yesterday."""
    return windows.temperatures[:, -windows.targets.shape[1] :].copy()


def baseline_maes(windows: WindowSet) -> dict[str, float]:
    return {
        "persistence": mae(persistence_forecast(windows), windows.targets),
        "seasonal_naive": mae(seasonal_naive_forecast(windows), windows.targets),
    }


def baselines_per_horizon(windows: WindowSet) -> dict[str, np.ndarray]:
    return {
        "persistence": per_horizon_mae(persistence_forecast(windows), windows.targets),
        "seasonal_naive": per_horizon_mae(seasonal_naive_forecast(windows), windows.targets),
    }
