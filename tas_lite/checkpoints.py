"""Files on disk: weights as safetensors + JSON sidecar, and training state via weights-only torch.load.

Nothing here unpickles arbitrary objects: weights are safetensors, training state is loaded with
`torch.load(weights_only=True)` and holds only tensors and plain Python values. Every file is written
under a unique temporary name and then renamed (a crash never leaves half a file); the sidecar records
the sha256 of its weights, checked on every load. A file that is truncated, damaged or not ours raises
`CorruptFile` naming it and how to rebuild it, never a raw safetensors, pickle or JSON error.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import platform
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock, Timeout
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from .util import CorruptFile, atomic_path, atomic_write, read_json_object, say

REBUILD = "replace it with a good copy, or delete it and train it again"


@contextmanager
def locked(path: str | Path, *, progress: bool = False) -> Iterator[None]:
    """Hold the inter-process lock of one weights file (`<name>.lock` beside it, via filelock) for a block:
    a second process waits here (saying so) until the first has written or read the pair. Reentrant."""
    lock = FileLock(str(Path(path).with_suffix(".lock")), is_singleton=True)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        say(progress, f"waiting for another process to finish with {Path(path).name} ...")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def save_weights(model: nn.Module, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write `path` (.safetensors) and `path.json` (meta, versions and the weights' sha256), each atomically
    and both under the file's lock, so concurrent writers never leave one's weights beside another's sidecar."""
    path = Path(path).with_suffix(".safetensors")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = save_safetensors(state)
    sidecar = {**(meta or {}), "sha256": hashlib.sha256(payload).hexdigest(), "torch": torch.__version__,
               "python": platform.python_version()}
    with locked(path):
        atomic_write(path, payload)
        atomic_write(path.with_suffix(".json"), json.dumps(sidecar, indent=2, sort_keys=True))
    return path


def read_sidecar(path: Path, fix: str = REBUILD) -> dict[str, Any] | None:
    """The JSON sidecar of weights file `path` (None if there is none); CorruptFile if it does not parse."""
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return None
    return read_json_object(sidecar, "sidecar", fix)


def _read_verified(path: Path, meta: dict[str, Any], fix: str) -> dict[str, torch.Tensor]:
    """The tensors of `path`, after checking its bytes against the sidecar's sha256 (when it records one)."""
    payload = path.read_bytes()
    if "sha256" in meta and hashlib.sha256(payload).hexdigest() != meta["sha256"]:
        raise CorruptFile(f"{path} does not match the sha256 its sidecar {path.with_suffix('.json').name} records: "
                          f"the weights are damaged or were replaced; {fix}")
    try:
        return load_safetensors(payload)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise CorruptFile(f"{path} is not a readable safetensors file ({err}); {fix}") from err


def _check_fits(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Every saved tensor has a home of the same shape in `model`, and the reverse; else one clear ValueError."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [f"{k} {tuple(v.shape)} (model: {tuple(own[k].shape)})" for k, v in state.items()
             if k in own and v.shape != own[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(f"checkpoint {path} does not fit {type(model).__name__}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, other shapes {wrong[:3]}; was it trained for another "
                         f"model, number of classes or image size?")


def load_weights(model: nn.Module, path: str | Path, device: str | torch.device = "cpu", *, fix: str = REBUILD,
                 required: Sequence[str] = ()) -> dict[str, Any]:
    """Load safetensors weights into `model` (strict) and return the JSON sidecar (empty if none).

    The weights are checked against the sidecar's sha256 when it records one. `required` sidecar keys
    (the trained-model cache needs its sha256 and test accuracy) make a missing or partial sidecar an
    error. Every damaged file is a `CorruptFile` naming it and ending with `fix`.
    """
    path = Path(path).with_suffix(".safetensors")
    if not path.is_file():
        raise ValueError(f"no checkpoint at {path}")
    meta = read_sidecar(path, fix)
    absent = [key for key in required if key not in (meta or {})]
    if absent:
        where = f"lacks {absent}" if meta is not None else "is missing"
        raise CorruptFile(f"sidecar {path.with_suffix('.json')} of {path.name} {where}; {fix}")
    state = _read_verified(path, meta or {}, fix)
    _check_fits(model, state, path)
    model.load_state_dict({k: v.to(device) for k, v in state.items()})
    return meta or {}


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


def load_state(path: str | Path, device: str | torch.device = "cpu", *, required: Sequence[str] = (),
               fix: str = "delete it to start again") -> dict[str, Any]:
    """Load what `save_state` wrote, weights only (no arbitrary unpickling). A truncated, empty or foreign
    file, or one without the `required` keys, is a CorruptFile naming it and ending with `fix`."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except (EOFError, RuntimeError, ValueError, pickle.UnpicklingError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CorruptFile(f"{path} is not a readable tas_lite training state ({reason}); {fix}") from err
    absent = [key for key in required if key not in state] if isinstance(state, dict) else list(required)
    if absent:
        raise CorruptFile(f"{path} holds no tas_lite training state (missing {absent}); {fix}")
    return state
