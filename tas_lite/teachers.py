"""Trained models, cached: `trained(name)` trains once with a fixed recipe and then loads from disk.

A cache entry is keyed by name, dataset, seed and a hash of everything its training depends on
(`cache_spec`: epochs, batch size, step cap, image size, augmentation, pretrained start, recipe version,
and for `imagefolder:` data a fingerprint of the folder), so a changed recipe or changed data never loads
stale weights. Teachers that cost too much to train on a cold start ship with the course
(`shipped_dir()`, made by `ship`): an entry found there is verified and loaded, never trained.
File names hold only letters, digits and `._-`. Train-and-cache runs under a file lock: a second
process asking for the same model waits for the first, then loads what it saved (an empty `<entry>.lock`
beside an entry is that lock's file). The sidecar records
the weights' sha256; a damaged entry is a clear error (`util.CorruptFile`) naming the file and saying
to delete it or pass `retrain=True`, never a silent retrain, since retraining a gpu-profile teacher
takes hours and a damaged file deserves a look. `prepare` is the teacher of a distillation run: a
cached model, or your own weights from a file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import checkpoints, config, data, distill, methods, models, profiles
from .recipes import Recipe
from .results import machine
from .util import NotWritable, atomic_write, check_writable

RECIPE_VERSION = 4  # 3: initial weights seeded inside trained(); 4: affine augmentation, tiny_vit 8 px patches, sidecar sha256
VAL_FRACTION = 0.1
CACHE_KEYS = ("sha256", "test_acc", "recipe")  # what a cache entry's sidecar must hold


def cache_spec(name: str, dataset: str, *, img_size: int, epochs: int, batch_size: int, max_steps: int | None,
               pretrained: bool) -> dict[str, Any]:
    """Everything a cache entry depends on besides the seed (the data's augmentation and fingerprint included)."""
    spec = {"name": name, "dataset": dataset, "img_size": img_size, "epochs": epochs, "batch_size": batch_size,
            "val_fraction": VAL_FRACTION, "method": "baseline", "pretrained": pretrained, "max_steps": max_steps,
            "data": data.fingerprint(dataset), "version": RECIPE_VERSION}
    if not pretrained:  # teachers fine-tuned from timm's weights take timm's transforms, not the dataset's own
        spec["augmentation"] = data.describe_augmentation(dataset, img_size)
    return spec


def shipped_dir() -> Path:
    """The teachers that ship with the course (`results/teachers`, in a checkout or in the installed package)."""
    return config.results_dir() / "teachers"


def _safe(text: str) -> str:
    """`text` with every run of characters other than letters, digits, `.`, `_`, `-` replaced by `_`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "data"


def cache_path(spec: dict[str, Any], seed: int) -> Path:
    """Cache file for one trained model, directly in the cache folder: name-dataset-seed-hash, where an
    `imagefolder:` dataset is named by its folder's last part (the hash tells two such folders apart)."""
    dataset = spec["dataset"]
    if dataset.startswith("imagefolder:"):
        dataset = "imagefolder-" + Path(dataset.split(":", 1)[1].rstrip("/\\")).name
    try:
        folder = config.checkpoints_dir()
    except OSError as err:
        raise NotWritable(f"cannot create the model cache folder ({err}); set TAS_LITE_HOME to a writable "
                          f"folder") from err
    return folder / f"{_safe(spec['name'])}-{_safe(dataset)}-s{seed}-{checkpoints.config_hash(spec)}.safetensors"


def _check_positive(**values: int | None) -> None:
    for key, value in values.items():
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"{key} must be a positive int{' or None' if key == 'max_steps' else ''}, got {value!r}")


def _fix(path: Path) -> str:
    """How to rebuild a damaged cache entry: the end of every CorruptFile message about it."""
    return f"delete {path} (and its .json) or pass retrain=True to train it again"


@contextmanager
def _cache_lock(path: Path, cached: bool, progress: bool) -> Iterator[None]:
    """The entry's lock, once the cache folder is known to be writable (checked before any training). A
    read-only cache still serves the entries it holds, unlocked: nothing can write there to race with."""
    writable = True
    try:
        check_writable(path.parent, "set TAS_LITE_HOME to a writable folder (the model cache lives in it)")
    except NotWritable:
        if not cached:
            raise
        writable = False
    with checkpoints.locked(path, progress=progress) if writable else nullcontext():
        yield


def trained(name: str, dataset: str | None = None, seed: int = 0, *, epochs: int | None = None,
            batch_size: int | None = None, max_steps: int | None = None, img_size: int | None = None,
            pretrained: bool = False, device: str = "auto", progress: bool = True, retrain: bool = False) -> nn.Module:
    """A model trained on `dataset` with a fixed recipe, cached; trains only when neither the cache nor the
    shipped teachers hold it (or `retrain=True`).

    Knobs left at None take the cpu profile's teacher recipe for `dataset` (read when called). A shipped
    teacher is verified and loaded from where it ships. `pretrained=True` starts from timm's ImageNet
    weights and fine-tunes (AdamW 1e-4, cosine): the gpu profile's teachers. Returns the model in eval
    mode; its accuracy and recipe are in `model.tas_lite_info`. An unwritable cache folder is an error
    before any training; a damaged entry is a `util.CorruptFile` naming it (delete it, or `retrain=True`).
    """
    cpu = profiles.resolve("cpu", dataset=dataset)
    epochs, batch_size = epochs or cpu.teacher_epochs, batch_size or cpu.teacher_batch_size
    _check_positive(epochs=epochs, batch_size=batch_size, max_steps=max_steps)
    size = img_size or models.default_img_size(name)
    spec = cache_spec(name, cpu.dataset, img_size=size, epochs=epochs, batch_size=batch_size, max_steps=max_steps,
                      pretrained=pretrained)
    path = cache_path(spec, seed)
    shipped = shipped_dir() / path.name
    if shipped.is_file() and not path.is_file() and not retrain:  # your own cache entry, when there is one, wins
        return _load(name, cpu.dataset, size, shipped, seed)
    with _cache_lock(path, path.is_file() and not retrain, progress):
        cached = path.is_file() and not retrain  # again: another process may have saved it while we waited
        if cached:
            return _load(name, cpu.dataset, size, path, seed)
        config.seed_everything(seed)  # the initial weights depend on the seed only, not on what ran before
        model = models.create(name, num_classes=data.num_classes(cpu.dataset), img_size=size, pretrained=pretrained)
        checkpoints.save_weights(model, path, _train(model, spec, seed, device=device, progress=progress))
        model.tas_lite_info = checkpoints.read_sidecar(path)
    return model.eval()


def _load(name: str, dataset: str, img_size: int, path: Path, seed: int) -> nn.Module:
    """The model in `path` (a cache entry or a shipped teacher), its sha256 checked, in eval mode."""
    config.seed_everything(seed)  # as when it trained: whatever runs next sees the same random stream
    model = models.create(name, num_classes=data.num_classes(dataset), img_size=img_size)
    model.tas_lite_info = checkpoints.load_weights(model, path, fix=_fix(path), required=CACHE_KEYS)
    return model.eval()


def _train(model: nn.Module, spec: dict[str, Any], seed: int, *, device: str, progress: bool) -> dict[str, Any]:
    """Train `model` by `spec` (from scratch, or fine-tuning when pretrained); return its sidecar."""
    train, val, test = data.loaders(spec["dataset"], batch_size=spec["batch_size"], img_size=spec["img_size"],
                                    val_fraction=spec["val_fraction"], seed=seed, download=True)
    plan = Recipe.fine_tune(spec["epochs"]) if spec["pretrained"] else Recipe.for_student(model, spec["epochs"])
    method = methods.build("baseline", None, model, img_size=spec["img_size"], label_smoothing=plan.label_smoothing)
    result = distill.fit(method, train, val, test=test, epochs=spec["epochs"], seed=seed, device=device,
                         progress=progress, recipe=plan, max_steps=spec["max_steps"])
    model.cpu()
    return {"recipe": spec, "seed": seed, "test_acc": result.final_test_acc, "val_acc": result.final_val_acc,
            "val_curve": [row["val_acc"] for row in result.history], "epochs": spec["epochs"],
            "train_seconds": result.wall_s, "parameters": models.count_parameters(model),
            "threads": torch.get_num_threads()}


def prepare(name: str, dataset: str | None = None, *, seed: int = 0, epochs: int | None = None,
            batch_size: int | None = None, max_steps: int | None = None, img_size: int | None = None,
            pretrained: bool = False, checkpoint: str | Path | None = None, device: str = "auto",
            progress: bool = True) -> nn.Module:
    """The teacher of a distillation run: `trained(...)`, or your own safetensors weights from `checkpoint`.

    The test accuracy is in `teacher.tas_lite_info["test_acc"]` (absent for your own weights unless
    their JSON sidecar holds it).
    """
    if checkpoint is None:
        return trained(name, dataset, seed, epochs=epochs, batch_size=batch_size, max_steps=max_steps,
                       img_size=img_size, pretrained=pretrained, device=device, progress=progress)
    dataset = dataset or profiles.resolve("cpu").dataset
    teacher = models.create(name, num_classes=data.num_classes(dataset), img_size=img_size)
    path = Path(checkpoint).with_suffix(".safetensors")
    if not path.is_file():
        raise ValueError(f"teacher checkpoint {path} does not exist; pass checkpoint=None to train and cache one")
    teacher.tas_lite_info = checkpoints.load_weights(teacher, path)
    return teacher.eval()


def from_settings(name: str, settings, *, seed: int = 0, epochs: int | None = None, progress: bool = True,
                  retrain: bool = False) -> nn.Module:
    """`trained` with a profile's resolved teacher knobs (`profiles.resolve(...)`); `epochs` overrides
    `settings.teacher_epochs` (e.g. `settings.analysis_epochs` for the models notebooks 01-03 look inside)."""
    return trained(name, settings.dataset, seed, epochs=epochs or settings.teacher_epochs,
                   batch_size=settings.teacher_batch_size, max_steps=settings.teacher_max_steps,
                   img_size=settings.img_size, pretrained=settings.pretrained, device=settings.device,
                   progress=progress, retrain=retrain)


def course_models(settings) -> list[str]:
    """Every model a profile's notebooks load through `from_settings`: its teacher, the three models notebooks
    01-02 look inside, the teachers of notebook 03's pairs and notebook 05's same-family teacher (a ViT)."""
    wanted = [settings.teacher, settings.cnn, settings.vit, settings.mlp,
              *(teacher for teacher, _ in settings.assistant_pairs), settings.vit]
    return list(dict.fromkeys(wanted))


def ship(names, settings, out_dir: str | Path | None = None, *, command: str, retrain: bool = False,
         progress: bool = True) -> list[Path]:
    """Train (or take from the cache) each named model with the profile's teacher recipe and copy its weights
    and sidecar into `out_dir` (default `shipped_dir()`), where `trained` finds them: the teachers a cold
    start loads instead of training. The sidecar records `command` (what makes them again) and where they
    were made. Returns the weights' paths."""
    out = check_writable(out_dir or shipped_dir(), "choose another out_dir, or fix its permissions")
    paths = []
    for name in names:
        model = from_settings(name, settings, progress=progress, retrain=retrain)
        source = cache_path(model.tas_lite_info["recipe"], model.tas_lite_info.get("seed", 0))
        target = out / source.name
        if source.is_file() and source.resolve() != target.resolve():  # else it was loaded from `out` itself
            atomic_write(target, source.read_bytes())
            sidecar = {**json.loads(source.with_suffix(".json").read_text()), "command": command,
                       "provenance": machine()}
            atomic_write(target.with_suffix(".json"), json.dumps(sidecar, indent=2))
        paths.append(target)
    return paths
