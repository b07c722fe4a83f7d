"""The record of one training run, as JSON on disk, and the provenance stamped on every record."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import config
from .util import CorruptFile, atomic_write, read_json_object


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


@dataclass
class Result:
    """What one training run produced; `save(path)` writes JSON, `Result.load(path)` reads it back."""

    method: str
    teacher: str | None
    student: str
    seed: int
    epochs: int
    history: list[dict[str, float]] = field(default_factory=list)
    final_val_acc: float = float("nan")
    final_test_acc: float = float("nan")
    best_val_acc: float = float("nan")
    best_epoch: int = -1
    best_val_test_acc: float = float("nan")
    best_test_acc: float | None = None  # paper protocol only: the best test epoch, how the paper reports
    extra_test_acc: dict[str, float] = field(default_factory=dict)
    images_per_s: float = float("nan")
    wall_s: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        """Write the JSON atomically: a reader sees the old file or the new one, never half of one."""
        return atomic_write(path, json.dumps(asdict(self), indent=2, allow_nan=True))

    @classmethod
    def load(cls, path: str | Path) -> Result:
        """Read a results JSON; a truncated, damaged or foreign file is a `CorruptFile` naming it (delete it,
        and a sweep runs that configuration again)."""
        path = Path(path)
        fix = "delete it (a sweep then runs that configuration again)"
        fields = read_json_object(path, "results file", fix)
        unknown = set(fields) - set(cls.__dataclass_fields__)
        if unknown:
            raise CorruptFile(f"{path} is not a tas_lite Result (unknown fields {sorted(unknown)}); {fix}")
        try:
            return cls(**fields)
        except TypeError as err:  # required fields missing
            raise CorruptFile(f"{path} is not a complete tas_lite Result ({err}); {fix}") from err
