"""Where caches live, which device to use, seeding, and the one table of profile defaults."""

from __future__ import annotations

import os
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

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


def run_dir(profile: str) -> Path:
    """Folder of one profile's notebook run (executed notebooks, results JSON): `$TAS_LITE_RUN_DIR` when
    the runner set it (`run --out DIR`), else `outputs/<profile>`."""
    override = os.environ.get("TAS_LITE_RUN_DIR")
    return Path(override) if override else outputs_dir() / profile


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


# One table of profile defaults. Notebooks leave knobs at None and call `resolve(PROFILE, ...)`.
# smoke: each notebook < 60 s on 2 cores (tests); cpu: the course on a laptop; gpu: the paper.
PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {
        "dataset": "digits",
        "img_size": 32,
        "batch_size": 32,
        "teacher_epochs": 2,
        "epochs": 1,
        "max_steps": 4,
        "cka_examples": 128,
        "probe_images": 8,
        "pretrained": False,
        "cnn": "tiny_resnet",
        "vit": "tiny_vit",
        "mlp": "tiny_mixer",
        "teacher": "tiny_convnext",
        "student": "tiny_vit",
        "methods": ["baseline", "kd", "ofa", "tas"],
        "seeds": [0],
        "assistant_pairs": [["tiny_vit", "tiny_resnet"]],
        "train_steps": 3,
        "device": "cpu",
        "amp": False,
    },
    "cpu": {
        "dataset": "digits",
        "img_size": 32,
        "batch_size": 32,
        "teacher_epochs": 10,
        "epochs": 10,
        "max_steps": None,
        "cka_examples": 512,
        "probe_images": 32,
        "pretrained": False,
        "cnn": "tiny_resnet",
        "vit": "tiny_vit",
        "mlp": "tiny_mixer",
        "teacher": "tiny_convnext",
        "student": "tiny_vit",
        "methods": ["baseline", "kd", "ofa", "tas"],
        "seeds": [0, 1, 2],
        "assistant_pairs": [["tiny_vit", "tiny_resnet"], ["tiny_convnext", "tiny_vit"], ["tiny_mixer", "tiny_resnet"]],
        "train_steps": 40,
        "device": "auto",
        "amp": False,
    },
    "gpu": {
        "dataset": "cifar100",
        "img_size": 224,
        "batch_size": 128,
        "teacher_epochs": 10,
        "epochs": 300,
        "max_steps": None,
        "cka_examples": 2048,
        "probe_images": 64,
        "pretrained": True,
        "cnn": "resnet50",
        "vit": "vit_small_patch16_224",
        "mlp": "mixer_b16_224",
        "teacher": "convnext_tiny",
        "student": "deit_tiny_patch16_224",
        "methods": ["baseline", "kd", "ofa", "tas"],
        "seeds": [0, 1, 2],
        "assistant_pairs": [["swin_tiny_patch4_window7_224", "resnet18"], ["vit_small_patch16_224", "resnet18"],
                            ["vit_small_patch16_224", "mobilenetv2_100"], ["convnext_tiny", "deit_tiny_patch16_224"],
                            ["convnext_tiny", "resmlp_12_224"]],
        "train_steps": 200,
        "device": "auto",
        "amp": True,
    },
}


def profile(name: str) -> dict[str, Any]:
    """A copy of one profile's defaults."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; allowed: {', '.join(PROFILES)}")
    return {key: (list(value) if isinstance(value, list) else value) for key, value in PROFILES[name].items()}


def resolve(profile_name: str, **knobs: Any) -> SimpleNamespace:
    """Fill every knob left at None from the profile's table; unknown knob names are an error.

    >>> cfg = resolve("smoke", epochs=None, batch_size=32)
    >>> cfg.epochs, cfg.batch_size
    (1, 32)
    """
    table = profile(profile_name)
    unknown = sorted(set(knobs) - set(table))
    if unknown:
        raise ValueError(f"unknown knob(s) {unknown}; profile knobs are: {', '.join(sorted(table))}")
    merged = {**table, **{key: value for key, value in knobs.items() if value is not None}}
    return SimpleNamespace(profile=profile_name, **merged)
