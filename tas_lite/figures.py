"""Figures of distillation runs (notebooks 05 and 06): the TAS diagram, the bridge measured over epochs,
every loss term over epochs, and paired comparisons with their 95% intervals."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from matplotlib.ticker import FormatStrFormatter, NullFormatter

from .plots import FAMILY_COLORS, SOURCE_COLORS, epoch_axis

PAIR_COLORS = {"ts": "#4c72b0", "ta": "#dd8452", "as": "#55a868", "ce": "#7f7f7f"}
PAIR_NAMES = {"ts": "teacher -> student", "ta": "teacher -> assistant", "as": "assistant -> student",
              "ce": "labels"}
VERDICT_COLORS = {"better": "#2ca02c", "worse": "#d62728", "within noise": "#7f7f7f", "one seed: no verdict": "#bbbbbb"}


def tas_diagram(names: dict[str, str], assistant_text: str, *, title: str):
    """Teacher, assistant and student as boxes; an arrow per TAS pair term, from the supervising model to
    the one it teaches, each labelled with its two losses."""
    fig, ax = plt.subplots(figsize=(9.0, 4.4), constrained_layout=True)
    boxes = {"teacher": (0.0, 2.2, 2.2), "student": (6.8, 2.2, 2.2), "assistant": (2.7, 0.0, 3.6)}  # x, y, width
    colors = {"teacher": SOURCE_COLORS["teacher"], "student": SOURCE_COLORS["student"],
              "assistant": FAMILY_COLORS["assistant"]}
    for role, (x, y, w) in boxes.items():
        ax.add_patch(FancyBboxPatch((x, y), w, 1.0, boxstyle="round,pad=0.05", fc=colors[role], ec="black", lw=0.8))
        text = f"{role}\n{names[role]}" if role != "assistant" else f"assistant\n{assistant_text}"
        ax.text(x + w / 2, y + 0.5, text, ha="center", va="center", color="white", fontsize=8.5, weight="bold")
    arrows = [((2.25, 2.7), (6.75, 2.7), (4.5, 2.78), "center"),
              ((1.1, 2.15), (3.2, 1.05), (1.3, 1.35), "right"),
              ((5.8, 1.05), (7.9, 2.15), (7.7, 1.35), "left")]
    labels = ["L(K_t, K_s)", "L(K_t, K_a)", "L(K_a, K_s)"]
    for (start, end, where, align), label in zip(arrows, labels):
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=16, lw=1.6, color="black"))
        ax.text(*where, f"{label}\nInfoNCE(f) + OFA(p)", ha=align, va="bottom", fontsize=8)
    ax.set_xlim(-0.3, 9.3)
    ax.set_ylim(-0.3, 3.5)
    ax.axis("off")
    ax.set_title(title + "\n(arrows: supervisor -> learner; plus label cross-entropy for student and assistant)",
                 fontsize=10)
    return fig


def bridge(history: list[dict], *, title: str):
    """Left: unbiased CKA of the pooled features, teacher~assistant, assistant~student and teacher~student,
    per epoch. Right: teacher~student CKA of each of the four stages, per epoch."""
    epochs = [row["epoch"] for row in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6), constrained_layout=True)
    for key, label, color in (("cka/t~a", "teacher ~ assistant", PAIR_COLORS["ta"]),
                              ("cka/a~s", "assistant ~ student", PAIR_COLORS["as"]),
                              ("cka/t~s", "teacher ~ student", PAIR_COLORS["ts"])):
        left.plot(epochs, [row[key] for row in history], "o-", ms=3, color=color, label=label)
    for stage in range(1, 5):
        right.plot(epochs, [row[f"cka/t~s/stage{stage}"] for row in history], "o-", ms=3,
                   color=plt.cm.viridis(stage / 5), label=f"stage {stage}")
    left.set(title="pooled features f", xlabel="epoch", ylabel="CKA (linear, unbiased)")
    right.set(title="teacher ~ student, stage by stage", xlabel="epoch", ylabel="CKA (linear, unbiased)")
    epoch_axis(left, right)
    for ax in (left, right):
        ax.axhline(0, color="grey", lw=0.6)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig


def loss_terms_over_epochs(history: list[dict], *, title: str):
    """Every TAS loss term's epoch mean on a log scale, coloured by the pair it belongs to; solid InfoNCE,
    dashed OFA, dotted cross-entropy."""
    epochs = [row["epoch"] for row in history]
    terms = [k.split("/", 1)[1] for k in history[0] if k.startswith("loss/")]
    fig, ax = plt.subplots(figsize=(9.6, 3.8), constrained_layout=True)
    for term in terms:
        kind, pair = term.split("_")
        if kind == "ce":
            color, who = ("#555555", "labels -> student") if pair == "s" else ("#aaaaaa", "labels -> assistant")
        else:
            color, who = PAIR_COLORS[pair], PAIR_NAMES[pair]
        style = {"nce": "o-", "ofa": "s--", "ce": "^:"}[kind]
        ax.plot(epochs, [row[f"loss/{term}"] for row in history], style, ms=3, color=color, label=f"{term}: {who}")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
    ax.yaxis.set_minor_formatter(NullFormatter())  # labelled minor ticks pile up between decades
    ax.set(title=title, xlabel="epoch", ylabel="training loss, epoch mean (nats, log scale)")
    epoch_axis(ax)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: the curves stay visible
    return fig


def comparisons(frame: pd.DataFrame, *, title: str, reference: dict[str, float] | None = None,
                reference_label: str = "paper"):
    """Paired differences (points) with their 95% t-intervals as error bars, one row per comparison,
    coloured by verdict; the zero line is "no difference". `reference` adds a value per comparison label
    (e.g. the paper's, which has no interval) as a grey diamond."""
    rows = frame.reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(7.4, 0.42 * len(rows) + 1.4), constrained_layout=True)
    labelled = False
    for k, r in rows.iterrows():
        if reference and r["comparison"] in reference:
            ax.plot(reference[r["comparison"]], k, "D", color="#888888", ms=6,
                    label=None if labelled else f"{reference_label} (one number, no interval)")
            labelled = True
        color = VERDICT_COLORS.get(r["verdict"], "black")
        err = None if r["n"] < 2 else [[r["mean"] - r["low"]], [r["high"] - r["mean"]]]
        ax.errorbar(r["mean"], k, xerr=err, fmt="o", color=color, capsize=4, ms=6)
        ax.annotate(f"{r['mean']:+.2f} ({r['verdict']})", (r["mean"], k), xytext=(0, 7), textcoords="offset points",
                    ha="center", fontsize=7, color=color)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{r['pair']}: {r['comparison']}" if rows["pair"].nunique() > 1 else r["comparison"]
                        for _, r in rows.iterrows()], fontsize=8)
    ax.invert_yaxis()
    ax.set_ylim(len(rows) - 0.4, -0.7)
    ax.set(title=title, xlabel="difference in top-1 accuracy (points), paired by seed, 95% t-interval")
    ax.grid(axis="y", visible=False)
    if labelled:
        ax.legend(fontsize=8, loc="lower right")
    return fig


def ablation(ours: dict[str, tuple[float, float]], paper: dict[str, float], *, title: str):
    """Left: our accuracy per TAS variant (mean with +-std bars); right: the paper's ablation; the full
    method dashed in each, so each panel reads as 'what removing a part costs'."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6), constrained_layout=True)
    names = list(ours)
    means = np.array([ours[n][0] for n in names])
    stds = np.nan_to_num(np.array([ours[n][1] for n in names]))
    left.bar(range(len(names)), means, yerr=stds, capsize=4, color=FAMILY_COLORS["assistant"])
    left.set_xticks(range(len(names)))
    left.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    low = np.nanmin(means - stds)
    left.set_ylim(max(0.0, low - max(2.0, 0.2 * (100 - low))), 100)
    left.set(title="ours (mean ± std over seeds)", ylabel="student top-1 test accuracy (%)")
    right.bar(range(len(paper)), list(paper.values()), color="#999999")
    right.set_xticks(range(len(paper)))
    right.set_xticklabels(list(paper), rotation=30, ha="right", fontsize=8)
    right.set(title="paper (CIFAR-100, Swin-T -> ResNet18)", ylabel="student top-1 accuracy (%)")
    for ax, full in ((left, means[0]), (right, next(iter(paper.values())))):
        if not math.isnan(full):
            ax.axhline(full, ls="--", color="black", lw=0.8, label=f"full TAS: {full:.2f}")
            ax.legend(fontsize=8, loc="lower left")
    fig.suptitle(title)
    return fig


def family_matrix(grids: dict[str, dict[tuple[str, str], object]], *, title: str,
                  families: dict[str, str] | None = None):
    """One 3x3 panel per comparison (e.g. "KD - Baseline"), three panels a row: teachers down, students across,
    each cell the paired mean difference in points (colour, diverging around 0) with its 95% interval; a black
    frame where the interval excludes 0. `grids` = {label: {(teacher, student): stats.Comparison}}; models
    are ordered by `families` (name -> "cnn" | "vit" | "swin" | "mlp"), CNNs first, then by name."""
    rank = {"cnn": 0, "vit": 1, "swin": 2, "mlp": 3}
    order = lambda names: sorted(names, key=lambda n: (rank.get((families or {}).get(n), 9), n))  # noqa: E731
    teachers = order({t for g in grids.values() for t, _ in g})
    students = order({s for g in grids.values() for _, s in g})
    span = max([abs(c.mean) for g in grids.values() for c in g.values()] + [1e-9])
    cols = min(3, len(grids))
    rows = -(-len(grids) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols + 1.0, 3.5 * rows), constrained_layout=True,
                             squeeze=False)
    for ax in axes.flat[len(grids):]:
        ax.axis("off")
    for ax, (name, grid) in zip(axes.flat, grids.items()):
        values = np.full((len(teachers), len(students)), np.nan)
        for (t, s), c in grid.items():
            values[teachers.index(t), students.index(s)] = c.mean
        image = ax.imshow(values, cmap="RdBu", vmin=-span, vmax=span)
        for (t, s), c in grid.items():
            i, j = teachers.index(t), students.index(s)
            text = f"{c.mean:+.2f}" + ("" if c.n < 2 else f"\n[{c.low:+.1f}, {c.high:+.1f}]")
            ax.text(j, i, text, ha="center", va="center", fontsize=7.5,
                    color="white" if abs(c.mean) > 0.6 * span else "black")
            if c.verdict in ("better", "worse"):
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="black", lw=2))
        ax.set_xticks(range(len(students)), students, rotation=25, ha="right", fontsize=8)
        ax.set_yticks(range(len(teachers)), teachers, fontsize=8)
        ax.set(title=name, xlabel="student", ylabel="teacher")
        ax.grid(False)
    fig.colorbar(image, ax=axes.ravel().tolist(), label="difference in top-1 accuracy (points)", shrink=0.6)
    fig.suptitle(title + "\n(paired by seed; [95% interval]; framed: the interval excludes 0)")
    return fig
