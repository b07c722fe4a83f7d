"""The typed record of one training run (`Result`, its `Setup`), as JSON on disk, and the provenance on it.

A record says what was trained (`Setup`: method and every argument, models, data, labelled images,
recipe, seed), what came out (accuracies named by the split they were measured on, and how the reported
epoch was chosen), the fingerprint of the recipe and where the numbers come from (`machine()`). Files
are named by `file_name`; `load_folder` reads a sweep's folder. Records written before this form (a
flat `config` dict) are read and converted by `Result.load`.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from . import config
from .util import CorruptFile, atomic_write, read_json_object

# How a run picks the epoch it reports (`Result.selection`): the last one, the best on the validation split,
# or the best on the test set itself, which is how the paper reports (and which flatters).
LAST, BEST_ON_VALIDATION, BEST_ON_TEST = "last", "best on validation", "best on test (the paper's way)"
SELECTIONS = (LAST, BEST_ON_VALIDATION, BEST_ON_TEST)
PATTERN = "*__*__*__seed*.json"  # what `file_name` gives; what sweeps and tables look for


def file_name(teacher: str | None, student: str, method: str, seed: int) -> str:
    """File name of one run's record: `teacher__student__method__seedN.json` ("none" without a teacher; a
    variant's colon becomes "-", "tas:no_nce" -> "tas-no_nce", which every file system accepts)."""
    return f"{teacher or 'none'}__{student}__{method.replace(':', '-')}__seed{seed}.json"


def git_commit() -> str | None:
    """The checkout's commit (with "+dirty" when it has uncommitted changes), None outside a checkout."""
    if not config.in_checkout():
        return None
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", *args], cwd=config.REPO_DIR, capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "tas_lite")
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def cpu_model() -> str:
    """The processor's name as the OS reports it (Linux: /proc/cpuinfo), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """Where numbers come from: platform, CPU, Python, torch, threads, commit and date; stamped on every
    result, report and bench so runs can be compared."""
    return {"platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "git_commit": git_commit(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


@dataclass(frozen=True)
class Setup:
    """What one run trained. Counts are what the run saw: `train_images` labelled images trained the
    student, `val_images` scored validation (None: no validation split), `test_images` the test set."""

    method: str                       # a spec, variants included: "tas:no_nce"
    method_arguments: dict[str, Any]  # every keyword argument the method trained with, defaults included
    teacher: str | None               # None: no teacher (the baseline)
    student: str
    dataset: str | None               # None: loaders that do not name their data
    img_size: int
    num_classes: int
    train_images: int | None          # None only in records made before this was recorded
    val_images: int | None
    test_images: int | None
    batch_size: int | None            # the global batch, over all processes
    epochs: int
    max_steps: int | None             # cap on steps per epoch (smoke runs); None: whole epochs
    recipe: dict[str, Any]            # the optimiser recipe (`distill.Recipe.as_dict()`)
    seed: int
    profile: str | None = None        # the profile it was resolved from; None: built by hand


@dataclass
class Result:
    """What one run produced. `selected_test_acc` is the test accuracy at `selected_epoch`, the epoch
    `selection` picked (one of `SELECTIONS`); `final_*` are the last epoch's. `history` holds one row
    per epoch: every loss term, train accuracy, and the accuracy on the split each epoch was scored on,
    named by it (`val_acc`, or `test_acc` when the test set itself chose the epoch); extra predictors
    (`assistant_val_acc`) are scored there on its first `loop.EXTRA_IMAGES` images."""

    setup: Setup
    history: list[dict[str, float]] = field(default_factory=list)
    final_test_acc: float = float("nan")
    final_val_acc: float | None = None      # None without a validation split
    selection: str = BEST_ON_VALIDATION
    selected_epoch: int = -1                # 1-based
    selected_test_acc: float = float("nan")
    extra_test_acc: dict[str, float] = field(default_factory=dict)  # other predictors (TAS's assistant), last epoch
    images_per_s: float = float("nan")
    wall_s: float = 0.0                     # training time, evaluation included
    teacher_info: dict[str, Any] = field(default_factory=dict)  # a cached teacher's test_acc, train_seconds, sha256
    environment: dict[str, Any] = field(default_factory=dict)   # device, amp, channels_last, processes
    fingerprint: dict[str, Any] = field(default_factory=dict)   # the recipe, as `experiments.fingerprint` gives it
    provenance: dict[str, Any] = field(default_factory=dict)    # `machine()` and the command that made it

    def __post_init__(self) -> None:
        if self.selection not in SELECTIONS:
            raise ValueError(f"unknown selection {self.selection!r}; allowed: {', '.join(SELECTIONS)}")

    method = property(lambda self: self.setup.method, doc="the method spec (`setup.method`)")
    teacher = property(lambda self: self.setup.teacher, doc="the teacher's name, None without one")
    student = property(lambda self: self.setup.student, doc="the student's name")
    seed = property(lambda self: self.setup.seed, doc="the run's seed")
    epochs = property(lambda self: self.setup.epochs, doc="epochs trained")

    def save(self, path: str | Path) -> Path:
        """Write the JSON atomically: a reader sees the old file or the new one, never half of one."""
        return atomic_write(path, json.dumps(asdict(self), indent=2, allow_nan=True))

    @classmethod
    def load(cls, path: str | Path) -> Result:
        """Read a record (this form, or the flat form of earlier versions); a truncated, damaged or foreign
        file is a `CorruptFile` naming it (delete it, and a sweep runs that configuration again)."""
        path = Path(path)
        fix = "delete it (a sweep then runs that configuration again)"
        values = read_json_object(path, "results file", fix)
        try:
            if "config" in values and "setup" not in values:
                values = from_flat(values)
            known = {f.name for f in fields(cls)}
            unknown = set(values) - known
            if unknown or not isinstance(values.get("setup"), dict):
                raise TypeError(f"unknown fields {sorted(unknown)}" if unknown else "no setup")
            return cls(**{**values, "setup": Setup(**values["setup"])})
        except (TypeError, KeyError, AttributeError, ValueError) as err:  # fields missing, extra or of the wrong kind
            raise CorruptFile(f"{path} is not a complete tas_lite Result ({err}); {fix}") from err


def load_folder(folder: str | Path) -> list[Result]:
    """Every record in a folder (named by `file_name`), sorted by file name; [] for a missing folder."""
    folder = Path(folder)
    return [Result.load(p) for p in sorted(folder.glob(PATTERN))] if folder.is_dir() else []


def from_flat(old: dict[str, Any]) -> dict[str, Any]:
    """A record of the earlier flat form (fields at the top, a free `config` dict) in this form's terms.
    Its paper-protocol runs scored every epoch on the test set under the name `val_acc`: here that is
    `test_acc`, with no validation accuracy at all."""
    c, paper = old["config"], old.get("best_test_acc") is not None
    history = [{("test_acc" if paper and k == "val_acc" else k): v for k, v in row.items()} for row in old["history"]]
    teacher = old["teacher"] if old["method"] != "baseline" else None
    setup = Setup(method=old["method"], method_arguments=c.get("fingerprint", {}).get("method_arguments", {}),
                  teacher=teacher, student=old["student"], dataset=c.get("dataset"), img_size=c["img_size"],
                  num_classes=c["num_classes"], train_images=None, val_images=None if paper else c.get("val_images"),
                  test_images=c.get("test_images"), batch_size=c.get("batch_size"), epochs=old["epochs"],
                  max_steps=c.get("max_steps"), recipe=c["recipe"], seed=old["seed"], profile=c.get("profile"))
    info = {"test_acc": c.get("teacher_test_acc"), "train_seconds": c.get("teacher_train_seconds")} if teacher else {}
    return {"setup": asdict(setup), "history": history, "final_test_acc": old["final_test_acc"],
            "final_val_acc": None if paper else old["final_val_acc"],
            "selection": BEST_ON_TEST if paper else BEST_ON_VALIDATION, "selected_epoch": old["best_epoch"],
            "selected_test_acc": old["best_test_acc"] if paper else old["best_val_test_acc"],
            "extra_test_acc": old.get("extra_test_acc", {}), "images_per_s": old["images_per_s"],
            "wall_s": old["wall_s"], "teacher_info": info,
            "environment": {k: c[k] for k in ("device", "amp", "channels_last", "processes") if k in c},
            "fingerprint": c.get("fingerprint", {}), "provenance": c.get("provenance", {})}
