"""Sweeps over teachers x students x methods x seeds, resumable, aggregated into the paper's table layout.

`sweep(...)` calls `tas_lite.distill.run` once per configuration whose results JSON is missing (so an
interrupted sweep resumes where it stopped), then `aggregate(folder)` turns every results JSON in the
folder into a `SweepTable`: rows teacher -> student, columns methods, mean +- std over seeds, best
per row marked, saved as Markdown, CSV and a figure. `PAPER_TABLE` holds the paper's numbers once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

from . import config, distill
from .methods import METHODS
from .results import Result

# METHOD.md section 5: CIFAR-100 top-1 (%), 224 px upsampled inputs, 300 epochs.
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
PAPER_TEACHERS = {"Swin-T": 89.26, "ViT-S": 92.04}
METHOD_LABELS = {"baseline": "Baseline", "kd": "KD", "dkd": "DKD", "dist": "DIST", "fitnet": "FitNet", "crd": "CRD",
                 "ofa": "OFA", "tas": "TAS"}
METRICS = {"final_test_acc": "test accuracy after the last epoch",
           "best_val_test_acc": "test accuracy of the best-validation epoch"}
_ORDER = list(METHODS) + ["crd"]


def default_dir(profile: str) -> Path:
    """`outputs/sweep/<profile>`: one folder per profile, so smoke results never mix with cpu ones."""
    config.profile(profile)
    return config.outputs_dir() / "sweep" / profile


def result_dirs(profile: str) -> list[Path]:
    """Where a profile's results JSON are looked for, in order: the sweep's folder, then the folder
    notebook 05 writes its single-seed runs to (`outputs/<profile>/results`, or `<DIR>/results` under `run --out DIR`)."""
    return [default_dir(profile), config.run_dir(profile) / "results"]


@dataclass(frozen=True)
class Configuration:
    """One training run of a sweep; baselines have no teacher (run once per student and seed)."""

    method: str
    teacher: str | None
    student: str
    seed: int

    @property
    def filename(self) -> str:
        return distill.result_name(self.teacher, self.student, self.method, self.seed)


def configurations(teachers: Sequence[str], students: Sequence[str], methods: Sequence[str],
                   seeds: Sequence[int]) -> list[Configuration]:
    """Every (teacher, student, method, seed), baselines once per student; names checked up front."""
    import timm

    from . import models

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; allowed: {', '.join(METHODS)}")
    bad_seeds = [s for s in seeds if not isinstance(s, int) or isinstance(s, bool) or s < 0]
    if bad_seeds or not seeds:
        raise ValueError(f"seeds must be non-negative ints (at least one), got {list(seeds)}")
    for name in [*teachers, *students]:
        if name not in models.TINY and not timm.is_model(name):
            raise ValueError(f"unknown model {name!r}; tiny models: {', '.join(models.TINY)}, or any timm name")
    if not teachers and any(m != "baseline" for m in methods):
        raise ValueError("distillation methods need at least one teacher")
    runs = [Configuration("baseline", None, s, seed) for s in students for seed in seeds if "baseline" in methods]
    runs += [Configuration(m, t, s, seed) for t in teachers for s in students for m in methods if m != "baseline"
             for seed in seeds]
    return runs


def sweep(teachers: Sequence[str] | None = None, students: Sequence[str] | None = None,
          methods: Sequence[str] | None = None, seeds: Sequence[int] | None = None, *, profile: str = "cpu",
          out_dir: str | Path | None = None, epochs: int | None = None, progress: bool = True,
          metric: str = "final_test_acc") -> SweepTable:
    """Run every configuration whose results JSON is missing in `out_dir`, then aggregate the folder.

    Lists left at None take the profile's teacher, student, methods and seeds. Results made with another
    profile, epoch count, dataset or batch size in the folder are an error (they would silently mix in the
    table). After changing training code, sweep into a fresh folder: old results are not re-run.
    """
    cfg = config.resolve(profile, epochs=epochs)
    runs = configurations(teachers or [cfg.teacher], students or [cfg.student], methods or cfg.methods,
                          cfg.seeds if seeds is None else seeds)
    out = Path(out_dir) if out_dir is not None else default_dir(profile)
    todo = [run for run in runs if not _finished(out / run.filename, cfg)]
    _say(progress, f"sweep ({profile}, {cfg.epochs} epochs): {len(runs)} configurations, "
                   f"{len(runs) - len(todo)} already done, {len(todo)} to run -> {out}")
    bar = _bar(todo, progress)
    for run in bar:
        if progress:
            bar.set_description(f"{run.method} {run.teacher or '-'} -> {run.student} seed {run.seed}")
        result = distill.run(run.method, run.teacher, run.student, profile=profile, seed=run.seed, epochs=epochs,
                             out_dir=out, progress=False)
        if progress:
            bar.write(f"  {run.method:8s} {run.teacher or '-'} -> {run.student} seed {run.seed}: "
                      f"{result.final_test_acc:.2f}% test in {result.wall_s:.0f} s")
    table = aggregate(out, metric=metric)
    paths = table.save(out)
    _say(progress, f"table: {paths['md']}")
    return table


def _finished(path: Path, cfg: SimpleNamespace) -> bool:
    """True if `path` holds a run of this setup; a run of another setup is an error, never silently reused."""
    if not path.is_file():
        return False
    done = Result.load(path)
    have = {"profile": done.config.get("profile"), "epochs": done.epochs, "dataset": done.config.get("dataset"),
            "batch_size": done.config.get("batch_size")}
    want = {"profile": cfg.profile, "epochs": cfg.epochs, "dataset": cfg.dataset, "batch_size": cfg.batch_size}
    if have != want:
        raise ValueError(f"{path} holds a run with {have}, but this sweep asks for {want}; "
                         f"use another out_dir or delete it")
    return True


def load_results(folder: str | Path) -> list[Result]:
    """Every results JSON (named by `distill.result_name`) in a folder; an empty list if there is none."""
    folder = Path(folder)
    return [Result.load(p) for p in sorted(folder.glob("*__*__*__seed*.json"))] if folder.is_dir() else []


@dataclass
class SweepTable:
    """Accuracy table: rows "teacher -> student", columns methods; `std`/`count` are None for quoted tables."""

    mean: pd.DataFrame
    std: pd.DataFrame | None = None
    count: pd.DataFrame | None = None
    teacher_acc: dict[str, float] = field(default_factory=dict)
    caption: str = ""

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

    def difference(self, row: str, a: str, b: str) -> tuple[float, float]:
        """Mean of `a` minus mean of `b` in one row, with the standard error of that difference
        (sqrt(std_a^2 / n_a + std_b^2 / n_b); nan with a single seed or a quoted table)."""
        diff = float(self.mean.at[row, a] - self.mean.at[row, b])
        if self.std is None or self.count is None:
            return diff, math.nan
        var = sum(self.std.at[row, m] ** 2 / self.count.at[row, m] for m in (a, b))
        return diff, float(math.sqrt(var))

    def markdown(self) -> str:
        """The table in Markdown, best per row in bold, a teacher column when known, caption below."""
        columns = list(self.mean.columns)
        head = ["Teacher -> Student"] + (["Teacher"] if self.teacher_acc else []) + [METHOD_LABELS.get(c, c)
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
        from . import plots

        panels = {row: {METHOD_LABELS.get(c, c): (self.mean.at[row, c], 0.0 if self.std is None or pd.isna(
            self.std.at[row, c]) else self.std.at[row, c]) for c in self.mean.columns if not pd.isna(self.mean.at[row, c])}
            for row in self.mean.index}
        return plots.method_accuracy(panels, title=title or "Student top-1 accuracy by method",
                                     ylabel="top-1 test accuracy (%)", reference=self.teacher_acc or None,
                                     reference_label="teacher")

    def save(self, folder: str | Path, stem: str = "table") -> dict[str, Path]:
        """Write `<stem>.md`, `<stem>.csv` and `<stem>.png` into `folder`."""
        import matplotlib.pyplot as plt

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"md": folder / f"{stem}.md", "csv": folder / f"{stem}.csv", "png": folder / f"{stem}.png"}
        paths["md"].write_text(self.markdown() + "\n")
        self.to_frame().to_csv(paths["csv"], float_format="%.4f")
        fig = self.figure()
        fig.savefig(paths["png"], dpi=120)
        plt.close(fig)
        return paths


def _fmt(value: float | None) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.2f}"


def aggregate(source: str | Path | Sequence[Result], metric: str = "final_test_acc") -> SweepTable:
    """Mean, std (over seeds, n - 1) and count per (teacher -> student, method) from a folder or Results.

    A baseline (no teacher) fills the baseline column of every row with its student. Results of
    different profiles or epoch counts in one table are an error.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; allowed: {', '.join(METRICS)}")
    results = load_results(source) if isinstance(source, (str, Path)) else list(source)
    if not results:
        raise ValueError(f"no results JSON in {source}; run `python -m tas_lite sweep` first")
    setups = sorted({(str(r.config.get("profile")), r.epochs) for r in results})
    if len(setups) > 1:
        raise ValueError(f"results from different setups (profile, epochs) {setups} cannot share one table; "
                         f"keep one sweep per folder")
    students_with_teacher = {r.student for r in results if r.method != "baseline"}
    records, seen = [], set()
    for r in results:
        if r.method == "baseline":
            if (r.student, r.seed) in seen:
                continue  # the same student run, filed under another teacher name
            seen.add((r.student, r.seed))
            teachers = sorted({x.teacher for x in results if x.method != "baseline" and x.student == r.student})
            rows = [f"{t} -> {r.student}" for t in teachers] if r.student in students_with_teacher else \
                [f"(no teacher) -> {r.student}"]
        else:
            rows = [f"{r.teacher} -> {r.student}"]
        records += [{"row": row, "method": r.method, "seed": r.seed, "acc": getattr(r, metric),
                     "teacher_acc": r.config.get("teacher_test_acc")} for row in rows]
    frame = pd.DataFrame.from_records(records)
    grouped = frame.groupby(["row", "method"])["acc"]
    columns = sorted(frame["method"].unique(), key=_ORDER.index)
    shape = lambda s: s.unstack("method").reindex(columns=columns)  # noqa: E731
    mean, std, count = shape(grouped.mean()), shape(grouped.std(ddof=1)), shape(grouped.count()).fillna(0).astype(int)
    teacher_acc = frame[frame.method != "baseline"].dropna(subset=["teacher_acc"]).groupby("row")["teacher_acc"].mean()
    (profile, epochs), = setups
    seeds = sorted(frame["seed"].unique())
    caption = (f"Top-1 {METRICS[metric]} (%), mean ± std over seeds {', '.join(map(str, seeds))} "
               f"(n = {count.max().max()} per cell at most); best per row in bold. "
               f"Profile {profile}, {epochs} epochs.")
    return SweepTable(mean, std, count, {k: float(v) for k, v in teacher_acc.items()}, caption)


def paper_table() -> SweepTable:
    """The paper's CIFAR-100 table (METHOD.md section 5) as a SweepTable, with its source as caption."""
    rows = {f"{t} -> {s}": values for (t, s), values in PAPER_TABLE.items()}
    mean = pd.DataFrame.from_dict(rows, orient="index")[["kd", "fitnet", "crd", "ofa", "tas"]]
    return SweepTable(mean, teacher_acc={r: PAPER_TEACHERS[r.split(" -> ")[0]] for r in rows
                                         if r.split(" -> ")[0] in PAPER_TEACHERS},
                      caption=f"Quoted from {PAPER_SOURCE}; best per row in bold. Baseline ResNet18 without a "
                              f"teacher: {PAPER_BASELINES['ResNet18']}.")


def gains_over(table: SweepTable, reference: str = "kd") -> dict[str, float]:
    """Average over rows of (method - reference) in accuracy points, for every other method."""
    if reference not in table.mean.columns:
        raise ValueError(f"reference method {reference!r} is not in the table; columns: {list(table.mean.columns)}")
    diff = table.mean.sub(table.mean[reference], axis=0).drop(columns=[reference])
    return {METHOD_LABELS.get(c, c): float(diff[c].mean()) for c in diff.columns if diff[c].notna().any()}


def _bar(items: list, enabled: bool):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc="sweep", leave=False)


def _say(enabled: bool, text: str) -> None:
    if enabled:
        print(text, flush=True)


PAPER_NAMES = {"swin_tiny_patch4_window7_224": "Swin-T", "vit_small_patch16_224": "ViT-S", "convnext_tiny": "ConvNeXt-T",
               "resnet18": "ResNet18", "mobilenetv2_100": "MobileNetV2", "deit_tiny_patch16_224": "DeiT-T",
               "resmlp_12_224": "ResMLP-S12"}
PAPER_FAMILIES = {"Swin-T": "swin", "ViT-S": "vit", "ConvNeXt-T": "cnn", "ResNet18": "cnn", "MobileNetV2": "cnn",
                  "DeiT-T": "vit", "ResMLP-S12": "mlp"}


def paper_reference(teacher: str, student: str) -> tuple[str, dict[str, float]]:
    """The paper's row for a (teacher, student) pair: the same pair when the paper has it, else the first
    row with the same (teacher family, student family), labelled as such; ("none", {}) when there is none."""
    from .models import TINY, tiny_family

    def with_baseline(t: str, s: str) -> dict[str, float]:
        row = dict(PAPER_TABLE[(t, s)])
        if s in PAPER_BASELINES:
            row["baseline"] = PAPER_BASELINES[s]
        return row

    exact = (PAPER_NAMES.get(teacher), PAPER_NAMES.get(student))
    if exact in PAPER_TABLE:
        return f"{exact[0]} -> {exact[1]}", with_baseline(*exact)

    def fam(name: str) -> str | None:
        if name in TINY:
            return tiny_family(name)
        return PAPER_FAMILIES.get(PAPER_NAMES.get(name, ""))

    for t, s in PAPER_TABLE:
        if (PAPER_FAMILIES[t], PAPER_FAMILIES[s]) == (fam(teacher), fam(student)):
            return f"{t} -> {s} (same families)", with_baseline(t, s)
    return "none (the paper has no pair of these families)", {}
