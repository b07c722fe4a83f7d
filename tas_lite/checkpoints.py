"""Files on disk: weights as safetensors + JSON sidecar, and training state via weights-only torch.load.

Nothing here unpickles arbitrary objects: weights are safetensors, training state is loaded with
`torch.load(weights_only=True)` and holds only tensors and plain Python values.
"""

from __future__ import annotations

import hashlib
import json
import platform
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .util import atomic_path, atomic_write


def save_weights(model: nn.Module, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write `path` (.safetensors) and `path.json` (meta + versions); each atomically."""
    path = Path(path).with_suffix(".safetensors")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))
    sidecar = {**(meta or {}), "torch": torch.__version__, "python": platform.python_version()}
    atomic_write(path.with_suffix(".json"), json.dumps(sidecar, indent=2, sort_keys=True))
    return path


def load_weights(model: nn.Module, path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load safetensors weights into `model` (strict); return the JSON sidecar (empty if none)."""
    path = Path(path).with_suffix(".safetensors")
    if not path.is_file():
        raise ValueError(f"no checkpoint at {path}")
    state = load_file(str(path), device=str(device))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not fit {type(model).__name__}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    sidecar = path.with_suffix(".json")
    return json.loads(sidecar.read_text()) if sidecar.is_file() else {}


def config_hash(cfg: dict[str, Any]) -> str:
    """Short stable hash of a JSON-able config: the part of a cache key that says 'same recipe'."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:10]


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as tensors and plain values (safe for weights_only loading)."""
    version, py_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {"python": [version, list(py_state), gauss], "numpy_keys": torch.from_numpy(np_keys.astype(np.int64)),
             "numpy": [np_name, int(np_pos), int(np_has_gauss), float(np_gauss)], "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `rng_state`."""
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    name, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, state["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(state: dict[str, Any], path: str | Path) -> None:
    """torch.save a dict of tensors and plain values, atomically (a crash never leaves half a file)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load what `save_state` wrote, weights only (no arbitrary unpickling)."""
    return torch.load(Path(path), map_location=device, weights_only=True)
