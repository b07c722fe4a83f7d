"""Figures shared by the notebooks. Every figure has a title, labelled axes and units where they apply."""

from __future__ import annotations

import matplotlib.pyplot as plt

FAMILY_COLORS = {"cnn": "#1f77b4", "vit": "#d62728", "swin": "#9467bd", "mlp": "#2ca02c", "assistant": "#ff7f0e"}


def style() -> None:
    """One consistent look for every notebook figure."""
    plt.rcParams.update({"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
                         "axes.spines.right": False, "font.size": 10})
