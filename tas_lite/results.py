"""The record of one training run, as JSON on disk."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


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
    extra_test_acc: dict[str, float] = field(default_factory=dict)
    images_per_s: float = float("nan")
    wall_s: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2, allow_nan=True))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Result:
        fields = json.loads(Path(path).read_text())
        unknown = set(fields) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{path} is not a tas_lite Result (unknown fields {sorted(unknown)})")
        return cls(**fields)
