"""Figures shared by the notebooks. Every figure has a title, labelled axes and units where they apply."""

from __future__ import annotations

import matplotlib.pyplot as plt

FAMILY_COLORS = {"cnn": "#1f77b4", "vit": "#d62728", "swin": "#9467bd", "mlp": "#2ca02c", "assistant": "#ff7f0e"}


def style() -> None:
    """One consistent look for every notebook figure."""
    plt.rcParams.update({"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
                         "axes.spines.right": False, "font.size": 10})


# ---- sweep tables (notebook 06) -------------------------------------------------------------------------

def method_accuracy(panels: dict[str, dict[str, tuple[float, float]]], *, title: str, ylabel: str,
                    reference: dict[str, float] | None = None, reference_label: str = "reference", cols: int = 3):
    """One panel per table row (e.g. teacher -> student): each method's mean as a dot with +-std bars, the
    best in orange, values written beside the dots, and `reference[row]` (e.g. the teacher) as a dashed line."""
    import numpy as np

    names = list(panels)
    cols = max(1, min(cols, len(names)))
    nrows = int(np.ceil(len(names) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols + 0.4, 3.1 * nrows + 0.5), squeeze=False,
                             constrained_layout=True)
    for ax, name in zip(axes.ravel(), names):
        methods = list(panels[name])
        means = np.array([panels[name][m][0] for m in methods], dtype=float)
        stds = np.nan_to_num(np.array([panels[name][m][1] for m in methods], dtype=float))
        best = int(np.nanargmax(means))
        for k, (mean, std) in enumerate(zip(means, stds)):
            color = FAMILY_COLORS["assistant"] if k == best else FAMILY_COLORS["cnn"]
            ax.errorbar(k, mean, yerr=std, fmt="o", ms=7, capsize=4, color=color)
            ax.annotate(f"{mean:.1f}", (k, mean), xytext=(7, 0), textcoords="offset points", va="center", fontsize=8)
        values = list(means - stds) + list(means + stds)
        if reference and name in reference and reference[name] == reference[name]:
            ax.axhline(reference[name], ls="--", color="grey", label=f"{reference_label}: {reference[name]:.1f}")
            values.append(reference[name])
            ax.legend(fontsize=8, loc="lower right")
        low, high = np.nanmin(values), np.nanmax(values)
        pad = max(0.15 * (high - low), 0.5)
        ax.set_ylim(low - pad, high + pad)
        ax.set_xlim(-0.5, len(methods) - 0.3)
        ax.set(title=name, xlabel="method", ylabel=ylabel, xticks=range(len(methods)))
        ax.set_xticklabels(methods)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    fig.suptitle(title)
    return fig
