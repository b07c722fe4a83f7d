"""Figures shared by the notebooks. Every figure has a title, labelled axes and units where they apply."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import TwoSlopeNorm
from matplotlib.patches import FancyBboxPatch, Patch, Rectangle
from matplotlib.ticker import MaxNLocator

FAMILY_COLORS = {"cnn": "#1f77b4", "vit": "#d62728", "swin": "#9467bd", "mlp": "#2ca02c", "assistant": "#ff7f0e"}


def style() -> None:
    """One consistent look for every notebook figure."""
    plt.rcParams.update({"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
                         "axes.spines.right": False, "font.size": 10})


# ---- representation analysis (notebooks 01 and 02) ---------------------------------------------------

CKA_LABEL = "CKA (linear, unbiased)"


def cka_heatmaps(panels: list[dict], *, title: str, cbar_label: str = CKA_LABEL, annotate: bool | None = None):
    """Layer x layer CKA matrices side by side on one 0-1 colour scale.

    Each panel: {"matrix", "title", "xlabel", "ylabel", "xticklabels", "yticklabels"}; the first layer is at
    the bottom-left, so depth grows up and to the right. Values are written in cells of small matrices.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 0.8, 3.7), squeeze=False,
                             constrained_layout=True)
    for ax, panel in zip(axes[0], panels):
        m = np.asarray(panel["matrix"], dtype=float)
        image = ax.imshow(m, origin="lower", vmin=0.0, vmax=1.0, cmap="magma", aspect="auto")
        ax.set(title=panel["title"], xlabel=panel["xlabel"], ylabel=panel["ylabel"],
               xticks=range(m.shape[1]), yticks=range(m.shape[0]))
        ax.set_xticklabels(panel["xticklabels"], rotation=90 if m.shape[1] > 8 else 0)
        ax.set_yticklabels(panel["yticklabels"])
        ax.grid(False)
        if annotate if annotate is not None else max(m.shape) <= 6:
            for (i, j), value in np.ndenumerate(m):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8,
                        color="black" if value > 0.6 else "white")
    fig.colorbar(image, ax=axes[0].tolist(), label=cbar_label, shrink=0.9)
    fig.suptitle(title)
    return fig


def grouped_bars(table: dict[str, dict[str, float]], *, title: str, ylabel: str, colors: dict[str, str] | None = None,
                 ylim: tuple[float, float] | None = None):
    """Bars grouped by metric (outer keys of each row), one bar per row label; values written on the bars."""
    rows = list(table)
    metrics = list(next(iter(table.values())))
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(1.6 + 1.9 * len(metrics) + 0.25 * len(rows), 3.4), constrained_layout=True)
    for k, row in enumerate(rows):
        xs = np.arange(len(metrics)) + (k - (len(rows) - 1) / 2) * width
        values = [table[row][m] for m in metrics]
        bars = ax.bar(xs, values, width, label=row, color=(colors or {}).get(row))
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set(title=title, ylabel=ylabel, xticks=range(len(metrics)))
    ax.set_xticklabels(metrics)
    if ylim:
        ax.set_ylim(*ylim)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def erf_grid(erfs: dict[str, list], *, title: str, fraction: float = 0.5):
    """Effective receptive fields, one row per model and one column per stage, with the centred square that
    holds `fraction` of the gradient mass drawn in cyan, clipped to the image ("whole image" when it is)."""
    names = list(erfs)
    cols = max(len(v) for v in erfs.values())
    fig, axes = plt.subplots(len(names), cols, figsize=(2.3 * cols + 0.9, 2.3 * len(names) + 0.5), squeeze=False,
                             constrained_layout=True)
    for r, name in enumerate(names):
        for c in range(cols):
            ax = axes[r, c]
            ax.grid(False)
            if c >= len(erfs[name]):
                ax.axis("off")
                continue
            erf = erfs[name][c]
            h, w = erf.map.shape
            image = ax.imshow(erf.map.numpy(), cmap="viridis", vmin=0, vmax=1, extent=(-0.5, w - 0.5, h - 0.5, -0.5))
            top, left, bottom, right = erf.box(fraction)
            ax.add_patch(Rectangle((left, top), right - left, bottom - top, fill=False, ec="cyan", lw=1.6, ls="--"))
            stage = f"stage {erf.stage}" if erf.stage is not None else "output"
            size = "whole image" if erf.covers_image(fraction) else f"{erf.extent(fraction):.0f} px"
            ax.set_title(f"{name}, {stage}\n{fraction:.0%} of mass: {size}", fontsize=9)
            ax.set_xlabel("x (px)", fontsize=8)
            ax.set_ylabel("y (px)", fontsize=8)
            ax.set_xlim(-0.5, w - 0.5)
            ax.set_ylim(h - 0.5, -0.5)
    fig.colorbar(image, ax=axes.ravel().tolist(), label="|d centre unit / d pixel| (max = 1)", shrink=0.8)
    fig.suptitle(title)
    return fig


def attention_distance(distances: dict[str, list], *, title: str, reference: float | None = None,
                       colors: dict[str, str] | None = None, reference_band: float | None = None):
    """Mean attention distance of every head (dots) and its per-layer mean (line) against depth, per model.
    Given (images, heads) tables per layer (`probes.attention_distance_per_image`), a band shows the mean
    ± the standard deviation over heads and images: the spread a difference must beat to count;
    `reference_band` shades reference ± band, the smallest difference that counts at all."""
    fig, ax = plt.subplots(figsize=(7.0, 4.0), constrained_layout=True)
    for k, (name, per_layer) in enumerate(distances.items()):
        color = (colors or {}).get(name, f"C{k}")
        offset = (k - (len(distances) - 1) / 2) * 0.12
        tables = [np.asarray(d, dtype=float) for d in per_layer]
        heads = [t.mean(0) if t.ndim == 2 else t for t in tables]
        layers = np.arange(1, len(heads) + 1) + offset
        for layer, h in zip(layers, heads):
            ax.scatter(np.full(len(h), layer), h, s=14, color=color, alpha=0.55, lw=0)
        means = np.array([t.mean() for t in tables])
        ax.plot(layers, means, "-", color=color, label=f"{name} (dots: heads, line: mean)")
        if all(t.ndim == 2 for t in tables):
            spread = np.array([t.std(ddof=1) for t in tables])
            ax.fill_between(layers, means - spread, means + spread, color=color, alpha=0.15, lw=0,
                            label=f"{name}: mean ± spread over heads and images")
    if reference is not None:
        ax.axhline(reference, color="grey", ls=":", label=f"uniform attention ({reference:.1f} px)")
        if reference_band:
            ax.axhspan(reference - reference_band, reference + reference_band, color="grey", alpha=0.12, lw=0,
                       label=f"uniform ± {reference_band:.2f} px: too close to uniform to count")
    ax.set(title=title, xlabel="layer (block, 1 = first)", ylabel="mean attention distance (px)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    return fig


def weight_images(weights, *, title: str, cols: int = 8, cbar_label: str = "weight", panel_label: str = "unit"):
    """A grid of small signed weight images (units, H, W) on one symmetric colour scale."""
    w = np.asarray(weights, dtype=float)
    rows = int(np.ceil(len(w) / cols))
    limit = np.abs(w).max() or 1.0
    fig, axes = plt.subplots(rows, cols, figsize=(1.25 * cols + 0.9, 1.3 * rows + 0.6), squeeze=False,
                             constrained_layout=True)
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k < len(w):
            image = ax.imshow(w[k], cmap="RdBu_r", vmin=-limit, vmax=limit)
            ax.set_title(f"{panel_label} {k}", fontsize=7)
    fig.colorbar(image, ax=axes.ravel().tolist(), label=cbar_label, shrink=0.8)
    fig.suptitle(title)
    return fig


def weight_changes(weights, change, *, units: int, title: str):
    """Weight images (units, H, W) of the `units` hidden units whose weights changed most: the trained
    weights (top row) and their change since initialisation (bottom row), each row on its own symmetric
    colour scale; each panel title gives how far that unit moved, |change| / |initial weights|."""
    w, d = np.asarray(weights, dtype=float), np.asarray(change, dtype=float)
    start = np.linalg.norm((w - d).reshape(len(w), -1), axis=1)
    moved = np.linalg.norm(d.reshape(len(d), -1), axis=1) / np.where(start > 0, start, 1.0)
    chosen = np.argsort(-moved)[:units]
    fig, axes = plt.subplots(2, len(chosen), figsize=(1.35 * len(chosen) + 1.6, 3.6), squeeze=False,
                             constrained_layout=True)
    for r, (values, label) in enumerate(((w, "trained weight"), (d, "change since init"))):
        limit = np.abs(values[chosen]).max() or 1.0
        for ax, k in zip(axes[r], chosen):
            image = ax.imshow(values[k], cmap="RdBu_r", vmin=-limit, vmax=limit)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if r == 0:
                ax.set_title(f"unit {k}\nmoved {100 * moved[k]:.0f}%", fontsize=7)
        axes[r, 0].set_ylabel(label, fontsize=8)
        fig.colorbar(image, ax=axes[r].tolist(), label=label, shrink=0.9)
    fig.suptitle(title)
    return fig


def image_panels(panels: list[dict], *, title: str):
    """One row of image panels. Each: {"image", "title", "cbar_label", optional "cmap", "vmin", "vmax",
    "vcenter" (a diverging scale with that value in the middle), "xlabel", "ylabel"}, or {"text", "title"}
    for a panel that explains instead of showing."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.3), squeeze=False, constrained_layout=True)
    for ax, panel in zip(axes[0], panels):
        ax.grid(False)
        ax.set_title(panel["title"], fontsize=9)
        if "text" in panel:
            ax.axis("off")
            ax.text(0.5, 0.5, panel["text"], ha="center", va="center", wrap=True, fontsize=9, transform=ax.transAxes)
            continue
        if "vcenter" in panel:  # a diverging scale anchored at vcenter (white), e.g. uniform attention 1/N
            values = np.asarray(panel["image"], dtype=float)
            low = min(panel.get("vmin", values.min()), panel["vcenter"] * (1 - 1e-6))
            high = max(panel.get("vmax", values.max()), 2 * panel["vcenter"] - low, panel["vcenter"] * (1 + 1e-6))
            scale = {"norm": TwoSlopeNorm(vcenter=panel["vcenter"], vmin=low, vmax=high)}
        else:
            scale = {"vmin": panel.get("vmin"), "vmax": panel.get("vmax")}
        image = ax.imshow(panel["image"], cmap=panel.get("cmap", "viridis"), **scale)
        ax.set(xlabel=panel.get("xlabel", "x"), ylabel=panel.get("ylabel", "y"))
        fig.colorbar(image, ax=ax, label=panel["cbar_label"], shrink=0.8)
    fig.suptitle(title)
    return fig


# ---- sweep tables (notebook 06) -------------------------------------------------------------------------

def method_accuracy(panels: dict[str, dict[str, tuple[float, float]]], *, title: str, ylabel: str,
                    reference: dict[str, float] | None = None, reference_label: str = "reference", cols: int = 3):
    """One panel per table row (e.g. teacher -> student): each method's mean as a dot with +-std bars, the
    best in orange, values written beside the dots, and `reference[row]` (e.g. the teacher) as a dashed line."""
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


# ---- the assistant, the losses, distillation (notebooks 03, 04, 05) ------------------------------------

SOURCE_COLORS = {"teacher": "#4c72b0", "student": "#55a868", "new": "#dd8452"}


def assistant_diagram(parts, shapes: list[str], *, title: str, names: dict[str, str]):
    """The assistant as a row of blocks (stem, stages 1-3, L2G, stage 4, head), coloured by whose
    module it is; frozen parts hatched; parameter counts inside, output shapes below."""
    fig, ax = plt.subplots(figsize=(1.45 * len(parts) + 0.6, 2.3), constrained_layout=True)
    for k, part in enumerate(parts):
        box = FancyBboxPatch((k * 1.4, 0), 1.15, 1, boxstyle="round,pad=0.03", fc=SOURCE_COLORS[part.source],
                             ec="black", lw=0.8, alpha=0.9, hatch=None if part.trainable else "//")
        ax.add_patch(box)
        owner = "new module" if part.source == "new" else names.get(part.source, part.source)
        ax.text(k * 1.4 + 0.575, 0.68, part.name, ha="center", va="center", fontsize=9, weight="bold", color="white")
        ax.text(k * 1.4 + 0.575, 0.38, f"{owner}\n{part.parameters / 1e3:,.1f}k params", ha="center", va="center",
                fontsize=7, color="white")
        if k < len(shapes):
            ax.text(k * 1.4 + 0.575, -0.18, shapes[k], ha="center", va="top", fontsize=7)
        if k:
            ax.annotate("", (k * 1.4, 0.5), ((k - 1) * 1.4 + 1.15, 0.5), arrowprops=dict(arrowstyle="->", lw=1))
    handles = [Patch(fc=c, label=f"{s}: {names.get(s, s)}") for s, c in SOURCE_COLORS.items()]
    handles.append(Patch(fc="white", ec="black", hatch="//", label="frozen"))
    ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, -0.02), ncol=4, fontsize=8, frameon=False)
    ax.set_xlim(-0.1, 1.4 * len(parts))
    ax.set_ylim(-0.75, 1.1)
    ax.axis("off")
    ax.set_title(title)
    return fig


def bridge_bars(similarity: dict[str, dict[str, dict[str, float]]], *, title: str, tolerance: float,
                bridge: str = "teacher ~ student"):
    """One panel per pair: each similarity (e.g. assistant ~ teacher) before and after training as bars; a
    dotted line at the final `bridge` similarity, with a band of ± `tolerance`: the level both assistant
    bars must clear for the assistant to sit between the two models."""
    pairs = list(similarity)
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.6 * len(pairs) + 0.6, 3.8), squeeze=False, sharey=True,
                             constrained_layout=True)
    values = [v for table in similarity.values() for c in table.values() for v in c.values()]
    for ax, pair in zip(axes[0], pairs):
        moments = list(similarity[pair])
        keys = list(similarity[pair][moments[0]])
        width = 0.8 / len(moments)
        for k, when in enumerate(moments):
            xs = np.arange(len(keys)) + (k - (len(moments) - 1) / 2) * width
            bars = ax.bar(xs, [similarity[pair][when][key] for key in keys], width, label=when, color=f"C{k}")
            ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
        level = similarity[pair][moments[-1]][bridge]
        ax.axhline(level, color="black", ls=":", lw=1.2, label=f"{bridge}, {moments[-1]}")
        ax.axhspan(level - tolerance, level + tolerance, color="grey", alpha=0.15, lw=0, label=f"± tolerance {tolerance:.2f}")
        ax.set_xticks(range(len(keys)), [key.replace(" ~ ", " ~\n") for key in keys], fontsize=8)
        ax.set(title=pair, ylabel="CKA (linear, unbiased)")
        ax.set_ylim(min(0.0, min(values) - 0.05), 1.05)
    axes[0, -1].legend(fontsize=7, loc="upper right")
    fig.suptitle(title)
    return fig


def epoch_axis(*axes) -> None:
    """Label each axes' x axis "epoch", ticked at whole epochs only (a 3-epoch run gets 1, 2, 3, not 1.25)."""
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def curves(series: dict[str, tuple], *, title: str, xlabel: str, ylabel: str, xscale: str = "linear",
           styles: dict[str, str] | None = None, colors: dict[str, str] | None = None, xticks: list | None = None,
           ax=None, hlines: dict[str, float] | None = None):
    """Labelled lines on one axes (optionally log-x): series maps a label to (xs, ys); `hlines` maps a label
    to a y value drawn as a dotted reference line (coloured by `colors` too); returns the figure."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.6, 3.5), constrained_layout=True)
    for label, (xs, ys) in series.items():
        color = (colors or {}).get(label)
        ax.plot(xs, ys, (styles or {}).get(label, "-"), label=label, **({"color": color} if color else {}))
    for label, y in (hlines or {}).items():
        ax.axhline(y, ls=":", lw=1.4, label=label, color=(colors or {}).get(label, "grey"))
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel, xscale=xscale)
    if xlabel == "epoch":
        epoch_axis(ax)
    if xticks is not None:
        ax.set_xticks(xticks)
    ax.legend(fontsize=8)
    return ax.figure


def distributions(dists: dict[str, list[float]], *, title: str, xlabel: str = "class", ylabel: str = "probability",
                  highlight: int | None = None):
    """Several distributions over the same classes as grouped bars; `highlight` marks the true class."""
    labels = list(dists)
    classes = len(next(iter(dists.values())))
    width = 0.8 / len(labels)
    fig, ax = plt.subplots(figsize=(6.4, 3.3), constrained_layout=True)
    for k, label in enumerate(labels):
        ax.bar(np.arange(classes) + (k - (len(labels) - 1) / 2) * width, dists[label], width, label=label)
    if highlight is not None:
        ax.axvspan(highlight - 0.45, highlight + 0.45, color="grey", alpha=0.15, label=f"true class ({highlight})")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel, xticks=range(classes))
    ax.legend(fontsize=8)
    return fig


def loss_terms(terms: dict[str, float], *, title: str, groups: dict[str, str] | None = None,
               references: dict[str, float] | None = None):
    """Horizontal bars, one per loss term, coloured by group (e.g. which pair it belongs to); `references`
    maps a label (e.g. "log B: InfoNCE at chance") to a value drawn as a vertical line."""
    names = list(terms)
    palette = {g: f"C{i}" for i, g in enumerate(dict.fromkeys((groups or {}).values()))}
    fig, ax = plt.subplots(figsize=(7.0, 0.35 * len(names) + 1.4), constrained_layout=True)
    colors = [palette.get((groups or {}).get(n), "C0") for n in names]
    bars = ax.barh(names, [terms[n] for n in names], color=colors)
    ax.bar_label(bars, fmt="%.3f", fontsize=8, padding=2)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.18 * max([*terms.values(), *(references or {}).values()]))
    ax.set(title=title, xlabel="value (nats)", ylabel="loss term")
    handles = [Patch(color=c, label=g) for g, c in palette.items()] if groups else []
    for k, (label, x) in enumerate((references or {}).items()):
        handles.append(ax.axvline(x, color="black", ls=[":", "--", "-."][k % 3], lw=1.2, label=label))
    if handles:
        ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def gradient_bars(gradients: dict[str, dict[str, float]], *, title: str):
    """Where each loss pushes: one panel per measure (outer dict: loss -> {measure: value}), horizontal bars
    of |value| on a log scale so that gradients 1000x apart all read, the value written beside each bar.
    The sign is the colour, except for a measure named with "|" (a magnitude such as mean |grad|): grey."""
    names = list(gradients)
    measures = list(next(iter(gradients.values())))
    fig, axes = plt.subplots(1, len(measures), figsize=(5.4 * len(measures) + 0.6, 0.42 * len(names) + 1.9),
                             squeeze=False, sharey=True, constrained_layout=True)
    colors = {True: "#c44e52", False: "#4c72b0"}
    for ax, measure in zip(axes[0], measures):
        values = np.array([gradients[n][measure] for n in names], dtype=float)
        magnitudes = np.abs(values)
        floor = magnitudes[magnitudes > 0].min() / 4 if (magnitudes > 0).any() else 1e-6
        magnitude = "|" in measure
        ax.barh(names, np.maximum(magnitudes, floor) - floor, left=floor,
                color=["#8c8c8c" if magnitude else colors[v > 0] for v in values])
        for k, v in enumerate(values):
            ax.annotate(f"{v:.2g}" if magnitude else f"{v:+.2g}", (max(abs(v), floor), k), xytext=(3, 0),
                        textcoords="offset points", va="center", fontsize=8)
        ax.set_xscale("log")
        ax.set_xlim(floor, magnitudes.max() * 8)
        ax.set(title=measure, xlabel="|mean gradient| per logit (log scale)")
    axes[0, 0].invert_yaxis()
    axes[0, 0].set_ylabel("loss")
    handles = [Patch(color=colors[False], label="negative: a gradient step raises the logit"),
               Patch(color=colors[True], label="positive: a gradient step lowers the logit")]
    if any("|" in m for m in measures):
        handles.append(Patch(color="#8c8c8c", label="a magnitude (no sign)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(title)
    return fig


def same_class_negatives(batch_sizes, lines: dict[int, object], marks: dict[str, tuple[int, int, float]], *,
                         title: str):
    """Expected in-batch negatives that share the anchor's class against the batch size B: `lines` = {C: values
    at `batch_sizes`}, one line per number of classes C; `marks` = {label: (B, C, value)} points (e.g. this
    course's and the paper's). The values come from `losses.expected_same_class_negatives`."""
    b = np.asarray(batch_sizes, dtype=float)
    fig, ax = plt.subplots(figsize=(7.2, 4.2), constrained_layout=True)
    line_color = {}
    for k, (c, values) in enumerate(lines.items()):
        line_color[c] = f"C{k}"
        ax.plot(b, values, color=line_color[c], label=f"C = {c} classes")
    ax.axhline(1.0, color="grey", ls=":", lw=1.2, label="one same-class negative per anchor")
    for k, (label, (batch, classes, value)) in enumerate(marks.items()):
        color = line_color.get(classes, "black")
        ax.plot(batch, value, "o", ms=9, mfc="white", mec=color, mew=2, zorder=3)
        above = k % 2 == 0  # alternate: above-left, below-right, so neighbouring labels do not collide
        ax.annotate(f"{label}\nB = {batch}, C = {classes}: {value:.2f} per anchor", (batch, value),
                    xytext=(-20, 38) if above else (22, -42), textcoords="offset points",
                    ha="right" if above else "left", va="center", fontsize=8,
                    bbox=dict(boxstyle="round,pad=0.25", fc="white", ec=color, lw=0.8),
                    arrowprops=dict(arrowstyle="-", color=color, lw=0.8))
    ax.set(xscale="log", yscale="log", title=title, xlabel="batch size B (log scale)",
           ylabel="same-class negatives per anchor\n(B - 1) / C (log scale)")
    ticks = [t for t in (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096) if b.min() <= t <= b.max()]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.legend(fontsize=8, loc="lower right")
    return fig


def learning_curves(histories: dict[str, list[dict]], *, title: str, extra: dict[str, str] | None = None):
    """Validation accuracy and training cross-entropy per epoch, one line per method; `extra` maps a
    history key (e.g. "assistant_val_acc") to a label drawn dashed."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6), constrained_layout=True)
    for k, (method, rows) in enumerate(histories.items()):
        epochs = [r["epoch"] for r in rows]
        left.plot(epochs, [r["val_acc"] for r in rows], "o-", color=f"C{k}", label=method, ms=3)
        ce_key = "loss/ce" if "loss/ce" in rows[0] else "loss/ce_s"
        right.plot(epochs, [r[ce_key] for r in rows], "o-", color=f"C{k}", label=method, ms=3)
        for key, label in (extra or {}).items():
            if key in rows[0]:
                left.plot(epochs, [r[key] for r in rows], "--", color=f"C{k}", label=f"{method}: {label}")
    left.set(title="validation accuracy", xlabel="epoch", ylabel="top-1 accuracy (%)")
    right.set(title="training cross-entropy with labels", xlabel="epoch", ylabel="cross-entropy (nats)")
    epoch_axis(left, right)
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.suptitle(title)
    return fig
