"""Plots embedded in asset metadata as markdown images (the Dagster UI renders them inline)."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")  # no display on servers or in run pods
import matplotlib.pyplot as plt
from matplotlib.figure import Figure


def new_figure(width: float = 9.0, height: float = 3.2) -> tuple[Figure, plt.Axes]:
    figure, axes = plt.subplots(figsize=(width, height), dpi=80)
    return figure, axes


def figure_markdown(figure: Figure, title: str) -> str:
    """PNG of `figure` as a markdown image with a data URI; closes the figure."""
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"![{title}](data:image/png;base64,{encoded})"
