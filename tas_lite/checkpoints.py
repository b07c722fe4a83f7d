"""Files on disk: weights as safetensors + JSON sidecar, training state via weights-only torch.load,
and the trained-model cache behind `tas_lite.models.trained`.

Nothing here unpickles arbitrary objects: weights are safetensors, training state is loaded with
`torch.load(weights_only=True)` and holds only tensors and plain Python values.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import config

# Recipe of `trained()`: what a cache entry depends on besides name, dataset and seed.
TRAINED_RECIPE_VERSION = 3  # 3: initial weights seeded inside trained()


def save_weights(model: nn.Module, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write `path` (.safetensors) and `path.json` (meta + versions); both atomically."""
    from safetensors.torch import save_file

    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(".safetensors.tmp")
    save_file(state, str(tmp))
    sidecar = {**(meta or {}), "torch": torch.__version__, "python": platform.python_version()}
    tmp_json = path.with_suffix(".json.tmp")
    tmp_json.write_text(json.dumps(sidecar, indent=2, sort_keys=True))
    os.replace(tmp, path)
    os.replace(tmp_json, path.with_suffix(".json"))
    return path


def load_weights(model: nn.Module, path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load safetensors weights into `model` (strict); return the JSON sidecar (empty if none)."""
    from safetensors.torch import load_file

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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load what `save_state` wrote, weights only (no arbitrary unpickling)."""
    return torch.load(Path(path), map_location=device, weights_only=True)


def trained_recipe(name: str, dataset: str, img_size: int, epochs: int, pretrained: bool = False,
                   max_steps: int | None = None) -> dict[str, Any]:
    """Everything a `trained()` cache entry depends on besides the seed."""
    return {"name": name, "dataset": dataset, "img_size": img_size, "epochs": epochs, "batch_size": 32,
            "val_fraction": 0.1, "method": "baseline", "pretrained": pretrained, "max_steps": max_steps,
            "version": TRAINED_RECIPE_VERSION}


def trained_path(recipe: dict[str, Any], seed: int) -> Path:
    """Cache file for one trained model: name-dataset-seed-hash, so a changed recipe never loads stale weights."""
    return config.checkpoints_dir() / f"{recipe['name']}-{recipe['dataset']}-s{seed}-{config_hash(recipe)}.safetensors"


def load_or_train(name: str, dataset: str, seed: int, *, epochs: int | None, img_size: int, profile: str | None,
                  progress: bool, device: str, retrain: bool, pretrained: bool = False,
                  batch_size: int | None = None) -> nn.Module:
    """Implementation of `tas_lite.models.trained` (see there). With `pretrained`, starts from
    timm's ImageNet weights and fine-tunes (AdamW 1e-4, cosine): the gpu profile's teachers."""
    from . import data, distill, models

    table = config.profile(profile or "cpu")
    epochs = table["teacher_epochs"] if epochs is None else epochs
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    num_classes = data.num_classes(dataset)
    recipe = trained_recipe(name, dataset, img_size, epochs, pretrained, table["max_steps"])
    if batch_size:
        recipe["batch_size"] = batch_size
    path = trained_path(recipe, seed)
    config.seed_everything(seed)  # the initial weights depend on the seed only, not on what ran before
    model = models.create(name, num_classes=num_classes, img_size=img_size, pretrained=pretrained and not path.is_file())
    if path.is_file() and not retrain:
        meta = load_weights(model, path)
    else:
        train, val, test = data.loaders(dataset, batch_size=recipe["batch_size"], img_size=img_size,
                                        val_fraction=recipe["val_fraction"], seed=seed)
        recipe_obj = distill.Recipe.fine_tune(epochs) if pretrained else None
        result = distill.fit("baseline", None, model, train, val, test=test, epochs=epochs, seed=seed,
                             device=device, progress=progress, recipe=recipe_obj, max_steps=recipe["max_steps"])
        model.cpu()
        meta = {"recipe": recipe, "seed": seed, "test_acc": result.final_test_acc, "val_acc": result.final_val_acc,
                "epochs": epochs, "train_seconds": result.wall_s, "parameters": models.count_parameters(model)}
        save_weights(model, path, meta)
    model.eval()
    model.tas_lite_info = meta
    return model
