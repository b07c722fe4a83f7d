"""Tables of results: mean +- std over seeds in the paper's layout, and the paper's own numbers.

`aggregate(folder)` turns every results JSON in a folder into a `SweepTable`: rows teacher -> student,
columns methods, mean +- std over seeds, best per row marked, saved as Markdown, CSV and a figure.
`PAPER_TABLE` holds the paper's numbers once, with their source.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from . import plots, results, stats
from .catalog import METRICS, TINY_FAMILIES
from .catalog import NAMES as METHOD_NAMES
from .results import Result
from .util import atomic_path, atomic_write

# The paper's table (TAS, arXiv 2410.12342, CIFAR-100 top-1 %, 224 px upsampled inputs, 300 epochs).
PAPER_SOURCE = ("TAS, arXiv 2410.12342 (v2: 'Fuse Before Transfer', ICCV 2025), CIFAR-100 top-1 %, images "
                "upsampled to 224 px, 300 epochs; KD, FitNet, CRD and OFA as reported in the same table")
PAPER_TABLE: dict[tuple[str, str], dict[str, float]] = {
    ("Swin-T", "ResNet18"): {"kd": 78.74, "fitnet": 78.87, "crd": 77.63, "ofa": 80.54, "tas": 81.61},
    ("ViT-S", "ResNet18"): {"kd": 77.26, "fitnet": 77.71, "crd": 76.60, "ofa": 80.15, "tas": 81.93},
    ("ViT-S", "MobileNetV2"): {"kd": 72.77, "fitnet": 73.54, "crd": 78.14, "ofa": 78.45, "tas": 82.10},
    ("ConvNeXt-T", "DeiT-T"): {"kd": 72.99, "fitnet": 60.78, "crd": 65.94, "ofa": 75.76, "tas": 79.57},
    ("ConvNeXt-T", "ResMLP-S12"): {"kd": 72.25, "fitnet": 45.47, "crd": 63.35, "ofa": 75.21, "tas": 78.03},
}
PAPER_BASELINES = {"ResNet18": 74.01}  # students trained without a teacher
# The paper's ablation (same source, CIFAR-100, Swin-T -> ResNet18), as TAS variants of tas_lite.
PAPER_ABLATION = {"tas": 81.61, "tas:no_ta": 25.57, "tas:no_nce": 80.95, "tas:no_ofa": 77.91}
PAPER_TEACHERS = {"Swin-T": 89.26, "ViT-S": 92.04}
METHOD_LABELS = {"baseline": "Baseline", "kd": "KD", "dkd": "DKD", "dist": "DIST", "fitnet": "FitNet", "crd": "CRD",
                 "ofa": "OFA", "tas": "TAS"}
# The comparisons a sweep's verdicts report: every method against KD, KD against the baseline, TAS against OFA.
VERDICT_PAIRS = (("kd", "baseline"), ("tas", "ofa"))
_ORDER = list(METHOD_NAMES) + ["crd"]


def method_order(spec: str) -> tuple[int, str]:
    """Columns in registry order, each method's variants right after it ("tas", "tas:no_nce", ...)."""
    base = spec.split(":", 1)[0]
    return (_ORDER.index(base) if base in _ORDER else len(_ORDER), spec)


def label(spec: str) -> str:
    """A column's label: "TAS", "TAS:no_nce"."""
    base, _, variant = spec.partition(":")
    return METHOD_LABELS.get(base, base) + (f":{variant}" if variant else "")


def check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; allowed: {', '.join(METRICS)}")


def load_results(folder: str | Path) -> list[Result]:
    """Every results JSON (named by `results.file_name`) in a folder; [] if there is none."""
    return results.load_folder(folder)


@dataclass
class SweepTable:
    """Accuracy table: rows "teacher -> student", columns methods; `std`/`count` are None for quoted tables."""

    mean: pd.DataFrame
    std: pd.DataFrame | None = None
    count: pd.DataFrame | None = None
    teacher_acc: dict[str, float] = field(default_factory=dict)
    caption: str = ""
    values: pd.DataFrame | None = None  # one row per (row, seed), one column per method: the paired data
    resolution: float = 0.0  # one example of the evaluation set, in points (0: unknown)

    @property
    def best(self) -> pd.Series:
        """Per row, the method with the highest mean (ties: the first in column order)."""
        return self.mean.idxmax(axis=1, skipna=True)

    def cell(self, row: str, method: str, digits: int = 2) -> str:
        value = self.mean.at[row, method]
        if pd.isna(value):
            return "-"
        text = f"{value:.{digits}f}"
        if self.std is not None and self.count is not None and self.count.at[row, method] > 1:
            text += f" ± {self.std.at[row, method]:.{digits}f}"
        return text

    def paired(self, row: str, a: str, b: str) -> stats.Comparison:
        """`a` minus `b` in one row, paired by seed over the seeds both have, with a 95% t-interval."""
        if self.values is None:
            raise ValueError("a quoted table has no per-seed values to compare")
        both = self.values.loc[row, [a, b]].dropna()
        return stats.paired(both[a].tolist(), both[b].tolist(), (label(a), label(b)), resolution=self.resolution)

    def comparisons(self, pairs: Sequence[tuple[str, str]] | None = None) -> pd.DataFrame:
        """Paired comparisons per row: every method against KD, every variant ("tas:no_nce") against its
        method, KD against the baseline, TAS against OFA (those present), or `pairs`; columns mean, low,
        high, n, verdict."""
        columns = list(self.mean.columns)
        if pairs is None:
            pairs = [(m, m.partition(":")[0] if ":" in m else "kd") for m in columns
                     if m not in ("kd", "baseline")] + list(VERDICT_PAIRS)
        records = []
        for row in self.mean.index:
            for a, b in pairs:
                if a in columns and b in columns and self.count.at[row, a] and self.count.at[row, b]:
                    c = self.paired(row, a, b)
                    records.append({"pair": row, "comparison": f"{c.a} - {c.b}", "mean": c.mean, "low": c.low,
                                    "high": c.high, "n": c.n, "verdict": c.verdict})
        return pd.DataFrame.from_records(records, columns=["pair", "comparison", "mean", "low", "high", "n", "verdict"])

    def verdicts_markdown(self, frame: pd.DataFrame | None = None) -> str:
        """Comparisons (default: `comparisons()`) as a Markdown table: difference, 95% interval, seeds, verdict."""
        lines = ["| Teacher -> Student | comparison | difference (points) | 95% CI | seeds | verdict |",
                 "|---|---|---|---|---|---|"]
        for r in (self.comparisons() if frame is None else frame).itertuples():
            interval = "-" if r.n < 2 else f"{r.low:+.2f} to {r.high:+.2f}"
            lines.append(f"| {r.pair} | {r.comparison} | {r.mean:+.2f} | {interval} | {r.n} | {r.verdict} |")
        return "\n".join(lines)

    def markdown(self) -> str:
        """The table in Markdown, best per row in bold, a teacher column when known, caption below."""
        columns = list(self.mean.columns)
        head = ["Teacher -> Student"] + (["Teacher"] if self.teacher_acc else []) + [label(c)
                                                                                   for c in columns]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in self.mean.index:
            cells = [row] + ([_fmt(self.teacher_acc.get(row))] if self.teacher_acc else [])
            for column in columns:
                text = self.cell(row, column)
                cells.append(f"**{text}**" if column == self.best.get(row) else text)
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + (f"\n\n{self.caption}" if self.caption else "")

    def _repr_markdown_(self) -> str:
        return self.markdown()

    def to_frame(self) -> pd.DataFrame:
        """One row per pair: teacher accuracy, then mean, std and n per method, and the best method."""
        frame = pd.DataFrame(index=self.mean.index)
        frame.index.name = "pair"
        frame["teacher_acc"] = [self.teacher_acc.get(row, math.nan) for row in frame.index]
        for column in self.mean.columns:
            frame[f"{column}_mean"] = self.mean[column]
            if self.std is not None:
                frame[f"{column}_std"] = self.std[column]
                frame[f"{column}_n"] = self.count[column]
        frame["best"] = self.best
        return frame

    def figure(self, title: str | None = None):
        """Accuracy per method, one panel per pair (mean +- std), teacher accuracy as a dashed line."""
        panels = {row: {label(c): (self.mean.at[row, c], 0.0 if self.std is None or pd.isna(
            self.std.at[row, c]) else self.std.at[row, c]) for c in self.mean.columns if not pd.isna(self.mean.at[row, c])}
            for row in self.mean.index}
        return plots.method_accuracy(panels, title=title or "Student top-1 accuracy by method",
                                     ylabel="top-1 test accuracy (%)", reference=self.teacher_acc or None,
                                     reference_label="teacher")

    def save(self, folder: str | Path, stem: str = "table") -> dict[str, Path]:
        """Write `<stem>.md`, `<stem>.csv` and `<stem>.png` into `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"md": folder / f"{stem}.md", "csv": folder / f"{stem}.csv", "png": folder / f"{stem}.png"}
        verdicts = f"\n\nPaired by seed:\n\n{self.verdicts_markdown()}" if self.values is not None else ""
        atomic_write(paths["md"], self.markdown() + verdicts + "\n")
        atomic_write(paths["csv"], self.to_frame().to_csv(float_format="%.4f"))
        if self.values is not None:
            paths["comparisons"] = folder / f"{stem}_comparisons.csv"
            atomic_write(paths["comparisons"], self.comparisons().to_csv(index=False, float_format="%.4f"))
        fig = self.figure()
        with atomic_path(paths["png"]) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
        plt.close(fig)
        return paths


def _fmt(value: float | None) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.2f}"


def _number(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def aggregate(source: str | Path | Sequence[Result], metric: str = "final_test_acc") -> SweepTable:
    """Mean, std (over seeds, n - 1) and count per (teacher -> student, method) from a folder or Results.

    A baseline (no teacher) fills the baseline column of every row with its student. Results of
    different profiles or epoch counts in one table are an error.
    """
    check_metric(metric)
    runs = load_results(source) if isinstance(source, (str, Path)) else list(source)
    if not runs:
        raise ValueError(f"no results JSON in {source}; run `python -m tas_lite sweep` first")
    setups = sorted({(str(r.setup.profile), str(r.setup.dataset), r.epochs, r.fingerprint.get("train_images"),
                      r.selection) for r in runs}, key=str)
    if len(setups) > 1:
        raise ValueError(f"results from different setups (profile, dataset, epochs, train_images, selection) {setups} "
                         f"cannot share one table; keep one sweep per folder")
    students_with_teacher = {r.student for r in runs if r.method != "baseline"}
    records, seen = [], set()
    for r in runs:
        if r.method == "baseline":
            if (r.student, r.seed) in seen:
                continue  # the same student run, filed under another teacher name
            seen.add((r.student, r.seed))
            teachers = sorted({x.teacher for x in runs if x.method != "baseline" and x.student == r.student})
            rows = [f"{t} -> {r.student}" for t in teachers] if r.student in students_with_teacher else \
                [f"(no teacher) -> {r.student}"]
        else:
            rows = [f"{r.teacher} -> {r.student}"]
        records += [{"row": row, "method": r.method, "seed": r.seed, "acc": _number(getattr(r, metric)),
                     "teacher_acc": r.teacher_info.get("test_acc")} for row in rows]
    frame = pd.DataFrame.from_records(records)
    grouped = frame.groupby(["row", "method"])["acc"]
    columns = sorted(frame["method"].unique(), key=method_order)
    shape = lambda s: s.unstack("method").reindex(columns=columns)  # noqa: E731
    mean, std, count = shape(grouped.mean()), shape(grouped.std(ddof=1)), shape(grouped.count()).fillna(0).astype(int)
    teacher_acc = frame[frame.method != "baseline"].dropna(subset=["teacher_acc"]).groupby("row")["teacher_acc"].mean()
    (profile, dataset, epochs, train_images, selection), = setups
    seeds = sorted(frame["seed"].unique())
    picked = f" ({selection})" if metric == "selected_test_acc" else ""
    caption = (f"Top-1 {METRICS[metric]}{picked} (%), mean ± std over seeds {', '.join(map(str, seeds))} "
               f"(n = {count.max().max()} per cell at most); best per row in bold. "
               f"Profile {profile}, {dataset}, {epochs} epochs"
               + (f", each student trained on {train_images} labelled images." if train_images else "."))
    values = frame.pivot_table(index=["row", "seed"], columns="method", values="acc").reindex(columns=columns)
    return SweepTable(mean, std, count, {k: float(v) for k, v in teacher_acc.items()}, caption, values,
                      resolution=_resolution(runs, metric))


def _resolution(runs: Sequence[Result], metric: str) -> float:
    """One example of the set `metric` is scored on, in points, from the sizes the runs recorded; 0 when
    a run did not record it."""
    sizes = [r.setup.val_images if metric == "final_val_acc" else r.setup.test_images for r in runs]
    return 100.0 / min(sizes) if all(sizes) else 0.0


def paper_table() -> SweepTable:
    """The paper's CIFAR-100 table as a SweepTable, with its source as caption."""
    rows = {f"{t} -> {s}": values for (t, s), values in PAPER_TABLE.items()}
    mean = pd.DataFrame.from_dict(rows, orient="index")[["kd", "fitnet", "crd", "ofa", "tas"]]
    return SweepTable(mean, teacher_acc={r: PAPER_TEACHERS[r.split(" -> ")[0]] for r in rows
                                         if r.split(" -> ")[0] in PAPER_TEACHERS},
                      caption=f"Quoted from {PAPER_SOURCE}; best per row in bold. Baseline ResNet18 without a "
                              f"teacher: {PAPER_BASELINES['ResNet18']}.")


# The comparisons of a family matrix: each method over the student's own baseline, then TAS against KD and OFA.
MATRIX_PAIRS = (("kd", "baseline"), ("ofa", "baseline"), ("tas", "baseline"), ("tas", "kd"), ("tas", "ofa"))


def family_grid(table: SweepTable, a: str, b: str = "baseline") -> dict[tuple[str, str], stats.Comparison]:
    """`a` - `b`, paired by seed, for every teacher -> student row that has both: {(teacher, student): Comparison}."""
    grid = {}
    for row in table.mean.index:
        if {a, b} <= set(table.mean.columns) and table.count.at[row, a] and table.count.at[row, b]:
            teacher, _, student = row.partition(" -> ")
            grid[(teacher, student)] = table.paired(row, a, b)
    return grid


def family_of(name: str) -> str:
    """A model's family by name: the tiny zoo's, the paper's models', else "other"."""
    return TINY_FAMILIES.get(name) or PAPER_FAMILIES.get(PAPER_NAMES.get(name, ""), "other")


def matrix_markdown(table: SweepTable, pairs=MATRIX_PAIRS) -> str:
    """One row per teacher -> student pair, with its families, and per comparison the paired mean difference
    with its 95% interval; * where the interval excludes 0."""
    grids = {(a, b): family_grid(table, a, b) for a, b in pairs}
    head = ["Teacher -> Student", "families"] + [f"{label(a)} - {label(b)}" for a, b in pairs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table.mean.index:
        teacher, _, student = row.partition(" -> ")
        cells = [row, f"{family_of(teacher)} -> {family_of(student)}"]
        for key in pairs:
            c = grids[key].get((teacher, student))
            cells.append("-" if c is None else f"{c.mean:+.2f}" + ("" if c.n < 2 else
                         f" ({c.low:+.2f} to {c.high:+.2f}){'*' if c.verdict in ('better', 'worse') else ''}"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def headroom(table: SweepTable, row: str) -> tuple[float, float]:
    """(teacher accuracy - the baseline's mean, one evaluation example) in points for one row: how much a
    teacher could add, beside the finest step the evaluation set can show."""
    return table.teacher_acc.get(row, math.nan) - table.mean.at[row, "baseline"], table.resolution


def gains_over(table: SweepTable, reference: str = "kd") -> dict[str, float]:
    """Average over rows of (method - reference) in accuracy points, for every other method."""
    if reference not in table.mean.columns:
        raise ValueError(f"reference method {reference!r} is not in the table; columns: {list(table.mean.columns)}")
    diff = table.mean.sub(table.mean[reference], axis=0).drop(columns=[reference])
    return {label(c): float(diff[c].mean()) for c in diff.columns if diff[c].notna().any()}



PAPER_NAMES = {"swin_tiny_patch4_window7_224": "Swin-T", "vit_small_patch16_224": "ViT-S", "convnext_tiny": "ConvNeXt-T",
               "resnet18": "ResNet18", "mobilenetv2_100": "MobileNetV2", "deit_tiny_patch16_224": "DeiT-T",
               "resmlp_12_224": "ResMLP-S12"}
PAPER_FAMILIES = {"Swin-T": "swin", "ViT-S": "vit", "ConvNeXt-T": "cnn", "ResNet18": "cnn", "MobileNetV2": "cnn",
                  "DeiT-T": "vit", "ResMLP-S12": "mlp"}


def paper_reference(teacher: str, student: str) -> tuple[str, dict[str, float]]:
    """The paper's row for a (teacher, student) pair: the same pair when the paper has it, else the first
    row with the same (teacher family, student family), labelled as such; ("none", {}) when there is none."""
    def with_baseline(t: str, s: str) -> dict[str, float]:
        row = dict(PAPER_TABLE[(t, s)])
        if s in PAPER_BASELINES:
            row["baseline"] = PAPER_BASELINES[s]
        return row

    exact = (PAPER_NAMES.get(teacher), PAPER_NAMES.get(student))
    if exact in PAPER_TABLE:
        return f"{exact[0]} -> {exact[1]}", with_baseline(*exact)

    def fam(name: str) -> str | None:
        if name in TINY_FAMILIES:
            return TINY_FAMILIES[name]
        return PAPER_FAMILIES.get(PAPER_NAMES.get(name, ""))

    for t, s in PAPER_TABLE:
        if (PAPER_FAMILIES[t], PAPER_FAMILIES[s]) == (fam(teacher), fam(student)):
            return f"{t} -> {s} (same families)", with_baseline(t, s)
    return "none (the paper has no pair of these families)", {}


def expected_seconds(runs: Sequence[Result], specs: Sequence[str], epochs: int) -> float | None:
    """What training `specs` for `epochs` each should take on the machine that made `runs` (their median
    seconds per epoch, scaled); None when a spec has no reference run."""
    total = 0.0
    for spec in specs:
        per_epoch = sorted(r.wall_s / r.epochs for r in runs if r.method == spec and r.epochs)
        if not per_epoch:
            return None
        total += per_epoch[len(per_epoch) // 2] * epochs
    return total


def convergence(runs: Sequence[Result], window: int = 5) -> pd.DataFrame:
    """Has each method stopped learning? Per method: the change of validation accuracy from the mean of
    epochs [-2w, -w) to the mean of the last w epochs (mean over seeds), against the seed-to-seed std of
    that last-w mean. "converged" when the change is no larger than the seed noise (or than one
    validation image, when the runs record how many they were scored on)."""
    records = []
    for r in runs:
        val = [row["val_acc"] for row in r.history if "val_acc" in row]
        if len(val) >= 2 * window:
            last, before = sum(val[-window:]) / window, sum(val[-2 * window:-window]) / window
            records.append({"method": r.method, "last": last, "change": last - before})
    if not records:
        raise ValueError(f"no run has the {2 * window} epochs of history a convergence check needs")
    frame = pd.DataFrame.from_records(records)
    out = frame.groupby("method").agg(change=("change", "mean"), seed_std=("last", "std"), seeds=("last", "size"))
    images = min((r.setup.val_images or 0 for r in runs), default=0)
    one_image = 100.0 / images if images else 0.0
    out["converged"] = out["change"].abs() <= out["seed_std"].fillna(0).clip(lower=one_image)
    return out.reindex(sorted(out.index, key=method_order))
