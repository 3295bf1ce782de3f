"""Figures of a forecaster's test performance (logged to MLflow and shown in asset metadata)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from mlops_assets.atmos.dataset import WindowSet
from mlops_assets.plots import new_figure


def horizon_error_figure(model_per_horizon: np.ndarray, baselines: dict[str, np.ndarray]) -> Figure:
    """Test MAE at each lead hour, the model against the baselines."""
    figure, axes = new_figure(7.0, 3.2)
    hours = np.arange(1, len(model_per_horizon) + 1)
    axes.plot(hours, model_per_horizon, marker="o", markersize=3, label="model")
    for name, values in baselines.items():
        axes.plot(hours, values, linestyle="--", label=name)
    axes.set_xlabel("lead time (h)")
    axes.set_ylabel("test MAE (C)")
    axes.set_title("Test error by lead time")
    axes.legend()
    return figure


def forecast_figure(predictions: np.ndarray, windows: WindowSet, count: int = 4) -> Figure:
    """A few test windows: the 72 h input, the 24 h actuals and the forecast."""
    figure, axes = new_figure(9.0, 3.2)
    picks = np.linspace(0, len(windows) - 1, num=min(count, len(windows))).astype(int)
    offset = 0
    for index, pick in enumerate(picks):
        inputs = windows.temperatures[pick]
        x_in = np.arange(offset, offset + len(inputs))
        x_out = np.arange(offset + len(inputs), offset + len(inputs) + windows.targets.shape[1])
        axes.plot(x_in, inputs, color="tab:gray", linewidth=0.8, label="input" if index == 0 else None)
        axes.plot(x_out, windows.targets[pick], color="tab:blue", label="actual" if index == 0 else None)
        axes.plot(
            x_out, predictions[pick], color="tab:orange", linestyle="--", label="forecast" if index == 0 else None
        )
        offset = x_out[-1] + 12
    axes.set_xticks([])
    axes.set_ylabel("temperature (C)")
    axes.set_title("Forecasts on test windows")
    axes.legend(loc="upper left")
    return figure
