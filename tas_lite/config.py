"""Where caches and outputs live, which device to use, and seeding. Profiles live in `tas_lite.profiles`."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent


def in_checkout() -> bool:
    """True when tas_lite is imported from a source checkout (pyproject + notebooks beside it)."""
    return (REPO_DIR / "pyproject.toml").is_file() and (REPO_DIR / "notebooks").is_dir()


def home() -> Path:
    """Cache root: $TAS_LITE_HOME, else `<repo>/data` in a checkout, else `~/.cache/tas_lite`."""
    env = os.environ.get("TAS_LITE_HOME")
    if env:
        root = Path(env).expanduser()
    elif in_checkout():
        root = REPO_DIR / "data"
    else:
        root = Path.home() / ".cache" / "tas_lite"
    root.mkdir(parents=True, exist_ok=True)
    return root


def datasets_dir() -> Path:
    """Folder for downloaded datasets (CIFAR archives and the like)."""
    path = home() / "datasets"
    path.mkdir(parents=True, exist_ok=True)
    return path


def checkpoints_dir() -> Path:
    """Folder for trained models (safetensors + JSON sidecars)."""
    path = home() / "checkpoints"
    path.mkdir(parents=True, exist_ok=True)
    return path


def outputs_dir() -> Path:
    """Where runs write executed notebooks, results and reports: `<repo>/outputs` in a checkout."""
    path = (REPO_DIR if in_checkout() else home()) / "outputs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def results_dir() -> Path:
    """The reference results that ship with the repository (`<repo>/results`; only in a checkout)."""
    return REPO_DIR / "results"


def notebooks_dir() -> Path:
    """The numbered notebooks of the course (only present in a checkout)."""
    return REPO_DIR / "notebooks"


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
