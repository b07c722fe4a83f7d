"""Which device to use, and seeding; the folders (caches, outputs, the course's notebooks and reference results)
come from `tas_lite.paths` and are reachable here too (`config.home()`). Profiles live in `tas_lite.profiles`."""

from __future__ import annotations

import random

import numpy as np
import torch

from .paths import (  # noqa: F401  (the folders, as config.* for every caller)
    PACKAGE_DIR,
    REPO_DIR,
    checkpoints_dir,
    datasets_dir,
    home,
    in_checkout,
    notebooks_dir,
    outputs_dir,
    reference_dir,
    results_dir,
)

DEVICES = ("auto", "cpu", "cuda", "mps")


def device(name: str | torch.device = "auto") -> torch.device:
    """Resolve "auto" to cuda, then mps, then cpu; validate explicit names."""
    if isinstance(name, torch.device):
        return name
    if not isinstance(name, str) or name.split(":")[0] not in DEVICES:
        raise ValueError(f"unknown device {name!r}; allowed: {', '.join(DEVICES)} (cuda may carry an index, cuda:1)")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available here; use 'auto' or 'cpu'")
    return torch.device(name)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices); return a torch Generator seeded the same way."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
